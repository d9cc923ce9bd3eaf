//! Where the test stand-ins live on disk and which versions are pinned.

use std::path::PathBuf;

const VERSIONS: &str = include_str!("../../tests/versions.env");

/// A pinned version from `tests/versions.env`, e.g. `version("NOMAD_VERSION")`.
pub fn version(key: &str) -> &'static str {
    VERSIONS
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
        .unwrap_or_else(|| panic!("{key} is not pinned in tests/versions.env"))
}

/// `${XDG_CACHE_HOME:-$HOME/.cache}/edgectl`, shared with the scripts in `scripts/`.
pub fn cache_dir() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME is not set")).join(".cache"));
    base.join("edgectl")
}

/// The repository root (for scripts and fixtures).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("testkit lives one level below the repository root")
        .to_path_buf()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pinned_versions_are_readable() {
        assert_eq!(super::version("MOTO_VERSION"), "5.2.5");
        assert!(super::version("NOMAD_VERSION").starts_with('v'));
    }
}
