//! `edgectl device provision|status|deprovision`: turn hosts from an Ansible
//! inventory into mTLS Nomad clients over SSH, in parallel.
// Being built: the modules land one by one before the command uses them.
#![allow(dead_code)]

pub mod ssh;
pub mod state;
