//! The device inventory, in the Ansible YAML format the original sample used.
#![allow(dead_code)]
