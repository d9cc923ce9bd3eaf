//! A typed client for Nomad's HTTP API (reqwest + rustls, mTLS), and the
//! API types edgectl uses.

pub mod acl;
pub mod client;
pub mod jobs;

pub use client::NomadSettings;
