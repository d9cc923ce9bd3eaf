//! The desired-state engine for one host: what must be there (packages,
//! groups, users, directories, files, systemd units), observed in one exec,
//! diffed by a pure planner, applied as a few scripts. Nothing here does I/O:
//! the fleet driver (`device/mod.rs`) runs the scripts over SSH.
//!
//! CONTRACT (types below are shared with node.rs and mod.rs; keep their
//! shape): facts_script → (one exec) → parse_facts → plan_host → run each
//! Step in order; a Step that fails stops the host.

use crate::plan::Change;
use crate::secret::Secret;
use std::path::PathBuf;

/// Everything one host must have. Order inside each list is apply order.
#[derive(Debug, Clone, Default)]
pub struct HostSpec {
    /// Debian packages installed with apt (`apt-get install -y --no-install-recommends`).
    pub packages: Vec<String>,
    pub groups: Vec<String>,
    pub users: Vec<User>,
    pub dirs: Vec<Dir>,
    pub files: Vec<File>,
    pub units: Vec<Unit>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    /// Primary group; created by `groups` or already present.
    pub group: Option<String>,
    /// Supplementary groups the user must be in (others are left alone).
    pub groups: Vec<String>,
    /// A system account (no home, nologin shell) when created.
    pub system: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dir {
    pub path: String,
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

#[derive(Debug, Clone)]
pub struct File {
    pub path: String,
    pub content: Content,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// Handlers to run (once, after every file is written) when this file's
    /// content changes. A mode/owner-only change notifies nothing.
    pub notify: Vec<Handler>,
}

/// Where a file's bytes come from. The desired sha256 is always known up
/// front, so the plan can compare it with the host's.
#[derive(Debug, Clone)]
pub enum Content {
    /// Text rendered by edgectl (configs, units, certificates).
    Text(String),
    /// Secret bytes (a private key): never diffed, never shown, `(sensitive)`.
    Secret(Secret),
    /// A file on the operator's machine streamed as is (`--artifacts`).
    Local { path: PathBuf, sha256: String },
    /// Downloaded on the host, checked against a pinned sha256 before it is
    /// installed. `unzip_member`: the file to take out of a zip archive
    /// (then `sha256` is the archive's and `installed_sha256`, when known,
    /// the member's); None: the download is the file itself.
    Download {
        url: String,
        sha256: String,
        unzip_member: Option<String>,
        installed_sha256: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Handler {
    DaemonReload,
    /// `systemctl restart <unit>` (only if the unit is wanted started).
    Restart(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unit {
    /// e.g. `nomad.service`
    pub name: String,
    pub enabled: bool,
    pub started: bool,
}

/// What the host looked like, from the one facts exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    /// `uname -m`
    pub arch: String,
    /// `ID` from /etc/os-release (debian, raspbian, ubuntu …)
    pub os_id: String,
    /// PID 1 is systemd (`/run/systemd/system` exists)
    pub systemd: bool,
    /// Commands found on PATH among those the spec asked about (openssl …).
    pub commands: Vec<String>,
    /// Installed package name → version, for the spec's packages only.
    pub packages: Vec<(String, String)>,
    pub groups: Vec<String>,
    /// user → (primary group, supplementary groups)
    pub users: Vec<(String, String, Vec<String>)>,
    pub paths: Vec<PathFact>,
    /// unit → (enabled, active)
    pub units: Vec<(String, bool, bool)>,
    /// Contents of small public files the caller asked for (the device
    /// certificate), by path; absent when the file does not exist.
    pub reads: Vec<(String, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathFact {
    pub path: String,
    pub kind: PathKind,
    pub owner: String,
    pub group: String,
    pub mode: u32,
    /// sha256 of a regular file's content
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Missing,
    File,
    Dir,
    Other,
}

/// One exec on the host. `stdin` carries file content so it never appears
/// on a command line or in a process list.
#[derive(Debug, Clone)]
pub struct Step {
    /// The address of the change this step applies (for error messages).
    pub address: String,
    pub script: String,
    pub stdin: Option<Payload>,
}

#[derive(Debug, Clone)]
pub enum Payload {
    Bytes(Vec<u8>),
    Secret(Secret),
    Local(PathBuf),
}

/// The plan for one host: changes to show (addresses like
/// `pi-01/file:/opt/nomad/config/nomad.hcl`, `pi-01/pkg:unzip`,
/// `pi-01/unit:nomad.service`, `pi-01/handler:restart nomad.service`) and
/// the steps that make them so.
#[derive(Debug, Clone, Default)]
pub struct HostPlan {
    pub changes: Vec<Change>,
    pub steps: Vec<Step>,
}
