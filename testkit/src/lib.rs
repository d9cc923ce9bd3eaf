//! Test-only support: starts the real stand-ins (moto, real Nomad agents,
//! systemd-nspawn Debian hosts) for the integration tests, and issues test
//! certificates through moto's ACM PCA. Never a dependency of the edgectl
//! binary.

pub mod hosts;
pub mod moto;
pub mod nomad;
pub mod paths;
pub mod pca;
mod process;
pub mod server_hcl;
pub mod tools;
