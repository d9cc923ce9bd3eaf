//! The real Go programs the tests run (Nomad, AWS's signing helper), built
//! from their Go modules by `scripts/build-test-tools` into the cache at the
//! versions pinned in `tests/versions.env`.

use std::path::PathBuf;
use std::process::Command;

use crate::paths;

/// The Nomad agent binary at `NOMAD_VERSION`, built first if missing.
pub fn nomad_bin() -> PathBuf {
    tool("nomad", "nomad", "NOMAD_VERSION")
}

/// `aws_signing_helper` (rolesanywhere-credential-helper): `$AWS_SIGNING_HELPER`
/// when set, else the build at `SIGNING_HELPER_VERSION`, built first if
/// missing. (The Go module proxy here refuses that module with 403, so the
/// build fails on these machines; the tests that need it are `#[ignore]`d.)
pub fn signing_helper_bin() -> PathBuf {
    match std::env::var_os("AWS_SIGNING_HELPER") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => tool("signing-helper", "aws_signing_helper", "SIGNING_HELPER_VERSION"),
    }
}

/// `<cache>/test-tools/<name>-<version>/<name>`, as the script installs it.
fn tool(target: &str, name: &str, version_key: &str) -> PathBuf {
    let bin = paths::cache_dir()
        .join("test-tools")
        .join(format!("{name}-{}", paths::version(version_key)))
        .join(name);
    if bin.exists() {
        return bin;
    }
    // The script holds a flock, so parallel tests build it only once; the
    // later ones wait and then find it cached. It installs by rename, so an
    // existing path is always a complete binary.
    let script = paths::repo_root().join("scripts/build-test-tools");
    let out = Command::new(&script)
        .arg(target)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    if !out.status.success() || !bin.exists() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(40).collect();
        panic!(
            "{} {target} failed ({}), {} is missing; last output:\n{}",
            script.display(),
            out.status,
            bin.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    bin
}
