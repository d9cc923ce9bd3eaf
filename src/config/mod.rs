//! Inputs: `deployment.json` (parse + validate) and the settings every
//! command resolves once from flags and environment.

pub mod deployment;
pub mod inventory;

pub use deployment::Deployment;
