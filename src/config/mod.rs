//! Inputs: `deployment.json` (parse + validate) and the settings every
//! command resolves once from flags and environment.

pub mod deployment;

pub use deployment::Deployment;
