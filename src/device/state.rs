//! The desired-state engine for one host: what must be there (packages,
//! groups, users, directories, files, systemd units), observed in one exec,
//! diffed by a pure planner, applied as a few scripts. Nothing here does I/O:
//! the fleet driver (`device/mod.rs`) runs the scripts over SSH.
//!
//! CONTRACT (types below are shared with node.rs and mod.rs; keep their
//! shape): facts_script → (one exec) → parse_facts → plan_host → run each
//! Step in order; a Step that fails stops the host.

use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::Context as _;
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
    /// The device key itself is installed by `identity` (it may never leave
    /// the device), so no device file uses this yet.
    #[cfg_attr(not(test), allow(dead_code))]
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
        /// Why an existing file must be replaced although no sha256 can say
        /// so (e.g. the installed binary reports another version).
        stale: Option<String>,
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
    /// Units whose files an earlier run changed without restarting them
    /// (it was cut off in between): markers in [`PENDING_DIR`].
    pub pending_restarts: Vec<String>,
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

// ---------------------------------------------------------------------------
// Validation
// ---------------------------------------------------------------------------

/// Directories whose files are systemd units (or `<unit>.d/` drop-ins): a
/// content change there needs a `daemon-reload` even if nothing notifies it.
const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system",
    "/run/systemd/system",
    "/lib/systemd/system",
    "/usr/lib/systemd/system",
    "/usr/local/lib/systemd/system",
];

/// Suffix of the temp file an atomic write leaves beside its target.
const TMP_SUFFIX: &str = ".edgectl-tmp";
/// A file here, named after a unit, says that a file the unit reads was
/// changed and the unit not restarted yet: made before the change, removed
/// by the restart, so a run cut off in between still restarts it later.
pub const PENDING_DIR: &str = "/var/lib/edgectl/restart-pending";
/// Suffix of the temp directory a download uses beside its target.
const DL_SUFFIX: &str = ".edgectl-dl";

/// Checks what the shell scripts and the fact format rely on: absolute,
/// normalised paths without control characters, quotes or backslashes;
/// user/group names `[a-z_][a-z0-9_-]*`; modes ≤ 0o7777; no duplicates.
pub fn validate(spec: &HostSpec) -> anyhow::Result<()> {
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.packages {
        check_package(p)?;
        anyhow::ensure!(seen.insert(format!("pkg:{p}")), "package `{p}` is listed twice");
    }
    for g in &spec.groups {
        check_name("group", g)?;
        anyhow::ensure!(seen.insert(format!("group:{g}")), "group `{g}` is listed twice");
    }
    for u in &spec.users {
        check_name("user", &u.name)?;
        if let Some(g) = &u.group {
            check_name("group", g).with_context(|| format!("user `{}`", u.name))?;
        }
        for g in &u.groups {
            check_name("group", g).with_context(|| format!("user `{}`", u.name))?;
        }
        anyhow::ensure!(
            seen.insert(format!("user:{}", u.name)),
            "user `{}` is listed twice",
            u.name
        );
    }
    for d in &spec.dirs {
        check_path(&d.path)?;
        check_owner(&d.path, &d.owner, &d.group, d.mode)?;
        anyhow::ensure!(
            seen.insert(format!("path:{}", d.path)),
            "path `{}` is listed twice",
            d.path
        );
    }
    for f in &spec.files {
        check_path(&f.path)?;
        check_owner(&f.path, &f.owner, &f.group, f.mode)?;
        anyhow::ensure!(
            seen.insert(format!("path:{}", f.path)),
            "path `{}` is listed twice",
            f.path
        );
        let ctx = || format!("file `{}`", f.path);
        match &f.content {
            Content::Text(_) | Content::Secret(_) => {}
            Content::Local { sha256, .. } => check_sha256(sha256).with_context(ctx)?,
            Content::Download {
                url,
                sha256,
                unzip_member,
                installed_sha256,
                ..
            } => {
                anyhow::ensure!(
                    (url.starts_with("https://") || url.starts_with("http://"))
                        && !url.chars().any(|c| c.is_whitespace() || c.is_control()),
                    "file `{}`: url `{url}` must be http(s) without spaces or control characters",
                    f.path
                );
                check_sha256(sha256).with_context(ctx)?;
                if let Some(s) = installed_sha256 {
                    check_sha256(s).with_context(ctx)?;
                }
                if let Some(m) = unzip_member {
                    anyhow::ensure!(
                        !m.is_empty()
                            && !m.starts_with('/')
                            && !m.starts_with('-')
                            && !m.chars().any(|c| c.is_control() || "*?[]\\".contains(c)),
                        "file `{}`: unzip member `{m}` must be a relative name without wildcards",
                        f.path
                    );
                }
            }
        }
        for h in &f.notify {
            if let Handler::Restart(u) = h {
                check_unit(u).with_context(ctx)?;
            }
        }
    }
    for u in &spec.units {
        check_unit(&u.name)?;
        anyhow::ensure!(
            seen.insert(format!("unit:{}", u.name)),
            "unit `{}` is listed twice",
            u.name
        );
    }
    Ok(())
}

fn check_name(what: &str, n: &str) -> anyhow::Result<()> {
    let mut chars = n.chars();
    let ok = n.len() <= 32
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    anyhow::ensure!(
        ok,
        "{what} name `{n}` must match [a-z_][a-z0-9_-]* (at most 32 characters)"
    );
    Ok(())
}

fn check_package(n: &str) -> anyhow::Result<()> {
    let ok = n.len() >= 2
        && n.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && n.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.:".contains(c));
    anyhow::ensure!(
        ok,
        "package name `{n}` is not a Debian package name ([a-z0-9][a-z0-9+.-]+)"
    );
    Ok(())
}

fn check_unit(n: &str) -> anyhow::Result<()> {
    let ok = !n.is_empty()
        && !n.starts_with('-')
        && n.contains('.')
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || ":_.@-\\".contains(c));
    anyhow::ensure!(
        ok,
        "unit name `{n}` is not a systemd unit name (e.g. `nomad.service`)"
    );
    Ok(())
}

fn check_path(p: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        p.starts_with('/') && p.len() > 1,
        "path `{p}` must be absolute (and not `/`)"
    );
    anyhow::ensure!(
        !p.chars().any(|c| c.is_control() || "'\"\\`".contains(c)),
        "path {p:?} must not contain control characters (tab, newline), quotes or backslashes"
    );
    anyhow::ensure!(
        p[1..].split('/').all(|c| !c.is_empty() && c != "." && c != ".."),
        "path `{p}` must be normalised (no `//`, `.`, `..` or trailing `/`)"
    );
    Ok(())
}

fn check_owner(path: &str, owner: &str, group: &str, mode: u32) -> anyhow::Result<()> {
    check_name("owner", owner).with_context(|| format!("path `{path}`"))?;
    check_name("group", group).with_context(|| format!("path `{path}`"))?;
    anyhow::ensure!(mode <= 0o7777, "path `{path}`: mode {mode:o} is more than 7777");
    Ok(())
}

fn check_sha256(s: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        s.len() == 64 && s.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "sha256 `{s}` must be 64 lower-case hex digits"
    );
    Ok(())
}

// ---------------------------------------------------------------------------
// Shell helpers
// ---------------------------------------------------------------------------

/// Quotes `s` as one POSIX sh word: `'…'`, with each `'` as `'\''`.
pub fn sh_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+:=@,%".contains(c))
        && !s.starts_with('=');
    if safe {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The parent directory and base name of a validated absolute path.
fn split_path(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (".", path),
    }
}

fn sibling(path: &str, suffix: &str) -> String {
    let (dir, base) = split_path(path);
    let dir = if dir == "/" { "" } else { dir };
    format!("{dir}/.{base}{suffix}")
}

/// `chmod` wants 5 digits to clear setuid/setgid on directories (GNU
/// chmod keeps them on `0755`), so modes are always written as `0NNNN`.
fn chmod_arg(mode: u32) -> String {
    format!("0{mode:04o}")
}

fn mode_str(mode: u32) -> String {
    format!("{mode:04o}")
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

// ---------------------------------------------------------------------------
// Facts
// ---------------------------------------------------------------------------

/// First line of the facts output; bump when the format changes.
const FACTS_HEADER: &str = "edgectl-facts\t1";

/// The one script that observes everything `spec` names (run as root under
/// `sh -c`). Output: one tab-separated record per line, between a header
/// and an `end` line (so a truncated output is an error, not missing facts);
/// ` ⇥ ` below is one tab:
///
/// ```text
/// edgectl-facts ⇥ 1
/// arch ⇥ aarch64
/// os ⇥ debian
/// systemd ⇥ 1
/// cmd ⇥ <name> ⇥ 1|0
/// pkg ⇥ <name> ⇥ 1 ⇥ <version>        (installed)   | pkg ⇥ <name> ⇥ 0
/// group ⇥ <name> ⇥ 1|0
/// user ⇥ <name> ⇥ 1 ⇥ <primary> ⇥ <id -Gn> | user ⇥ <name> ⇥ 0
/// path ⇥ <path> ⇥ file|dir|other ⇥ <owner> ⇥ <group> ⇥ <octal mode> ⇥ <sha256|->
/// path ⇥ <path> ⇥ missing          | path ⇥ <path> ⇥ error
/// unit ⇥ <name> ⇥ <is-enabled> ⇥ <is-active>   (only when systemd is PID 1)
/// read ⇥ <path> ⇥ 1 ⇥ <base64>       | read ⇥ <path> ⇥ 0
/// end
/// ```
///
/// It also removes temp files an interrupted atomic write or download left
/// beside managed files (`.<name>.edgectl-tmp`, `.<name>.edgectl-dl/`):
/// they are never part of the desired state, so this is not a change.
pub fn facts_script(spec: &HostSpec, commands: &[&str], reads: &[&str]) -> String {
    let mut s = String::from(FACTS_PRELUDE);
    let q = |v: &str| sh_quote(v);
    for c in dedup(commands.iter().copied()) {
        s += &format!("c {}\n", q(c));
    }
    for p in dedup(spec.packages.iter().map(String::as_str)) {
        s += &format!("pkg {}\n", q(p));
    }
    for g in dedup(spec.groups.iter().map(String::as_str)) {
        s += &format!("grp {}\n", q(g));
    }
    for u in dedup(spec.users.iter().map(|u| u.name.as_str())) {
        s += &format!("usr {}\n", q(u));
    }
    for f in &spec.files {
        s += &format!(
            "rm -f -- {}; rm -rf -- {}\n",
            q(&sibling(&f.path, TMP_SUFFIX)),
            q(&sibling(&f.path, DL_SUFFIX))
        );
    }
    let paths = spec.dirs.iter().map(|d| d.path.as_str());
    for p in dedup(paths.chain(spec.files.iter().map(|f| f.path.as_str()))) {
        s += &format!("pth {}\n", q(p));
    }
    if !spec.units.is_empty() {
        s += "if [ \"$sd\" = 1 ]; then\n";
        for u in dedup(spec.units.iter().map(|u| u.name.as_str())) {
            s += &format!("  unt {}\n", q(u));
        }
        s += "fi\n";
    }
    for r in dedup(reads.iter().copied()) {
        s += &format!("rd {}\n", q(r));
    }
    s += &format!(
        "for f in {PENDING_DIR}/*; do [ -f \"$f\" ] && printf 'pending\\t%s\\n' \"${{f##*/}}\"; done\n"
    );
    s += "printf 'end\\n'\n";
    s
}

fn dedup<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen = std::collections::BTreeSet::new();
    items.filter(|i| seen.insert(*i)).collect()
}

const FACTS_PRELUDE: &str = r#"set -u
export LC_ALL=C
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
T=$(printf '\t')
printf 'edgectl-facts\t1\n'
printf 'arch\t%s\n' "$(uname -m)"
printf 'os\t%s\n' "$( (. /etc/os-release && printf '%s' "${ID:-}") 2>/dev/null)"
if [ -d /run/systemd/system ]; then sd=1; else sd=0; fi
printf 'systemd\t%s\n' "$sd"
c() {
  if command -v "$1" >/dev/null 2>&1; then printf 'cmd\t%s\t1\n' "$1"; else printf 'cmd\t%s\t0\n' "$1"; fi
}
pkg() {
  v=
  if command -v dpkg-query >/dev/null 2>&1; then
    v=$(dpkg-query -W -f '${Status}\t${Version}\n' "$1" 2>/dev/null | while IFS="$T" read -r st ver; do
      case $st in *' installed') printf '1\t%s' "$ver"; break ;; esac
    done)
  fi
  if [ -n "$v" ]; then printf 'pkg\t%s\t%s\n' "$1" "$v"; else printf 'pkg\t%s\t0\n' "$1"; fi
}
grp() {
  if getent group "$1" >/dev/null 2>&1; then printf 'group\t%s\t1\n' "$1"; else printf 'group\t%s\t0\n' "$1"; fi
}
usr() {
  if getent passwd "$1" >/dev/null 2>&1; then
    printf 'user\t%s\t1\t%s\t%s\n' "$1" "$(id -gn "$1" 2>/dev/null)" "$(id -Gn "$1" 2>/dev/null)"
  else
    printf 'user\t%s\t0\n' "$1"
  fi
}
pth() {
  if [ -L "$1" ]; then k=other
  elif [ -f "$1" ]; then k=file
  elif [ -d "$1" ]; then k=dir
  elif [ -e "$1" ]; then k=other
  else printf 'path\t%s\tmissing\n' "$1"; return; fi
  st=$(stat -c "%U$T%G$T%a" -- "$1" 2>/dev/null) || { printf 'path\t%s\terror\n' "$1"; return; }
  h=-
  if [ "$k" = file ]; then
    h=$(sum256 "$1") || { printf 'path\t%s\terror\n' "$1"; return; }
  fi
  printf 'path\t%s\t%s\t%s\t%s\n' "$1" "$k" "$st" "$h"
}
# sha256 of a file; for big files (binaries) kept in a cache keyed by size,
# inode, mtime and ctime (ns), so a no-change run does not read 150 MB.
# Any write or chmod changes the ctime, an atomic rename the inode.
sum256() {
  sz=$(stat -c %s -- "$1" 2>/dev/null) || return 1
  if [ "$sz" -lt 1048576 ]; then
    h=$(sha256sum <"$1" 2>/dev/null) || return 1
    printf '%s' "${h%% *}"
    return 0
  fi
  id=$(stat -c '%s:%i:%y:%z' -- "$1" 2>/dev/null | tr ' ' _) || return 1
  cf=/var/lib/edgectl/sha256-cache/$(printf '%s' "$1" | sha256sum | cut -c1-32)
  if [ -f "$cf" ] && read -r cid csum <"$cf" && [ "$cid" = "$id" ]; then
    printf '%s' "$csum"
    return 0
  fi
  h=$(sha256sum <"$1" 2>/dev/null) || return 1
  h=${h%% *}
  { mkdir -p /var/lib/edgectl/sha256-cache && printf '%s %s\n' "$id" "$h" >"$cf.tmp" && mv -f "$cf.tmp" "$cf"; } 2>/dev/null || true
  printf '%s' "$h"
}
unt() {
  e=$(systemctl is-enabled -- "$1" 2>/dev/null | head -n 1)
  a=$(systemctl is-active -- "$1" 2>/dev/null | head -n 1)
  printf 'unit\t%s\t%s\t%s\n' "$1" "${e:-not-found}" "${a:-unknown}"
}
rd() {
  if [ -f "$1" ]; then
    b=$(base64 -w 0 <"$1") || { printf 'path\t%s\terror\n' "$1"; return; }
    printf 'read\t%s\t1\t%s\n' "$1" "$b"
  else
    printf 'read\t%s\t0\n' "$1"
  fi
}
"#;

/// `systemctl is-enabled` states that count as enabled: `systemctl enable`
/// cannot change static/indirect/generated units, so treating them as not
/// enabled would plan the same no-op on every run.
const ENABLED_STATES: &[&str] = &[
    "enabled",
    "enabled-runtime",
    "static",
    "indirect",
    "generated",
    "alias",
];
/// `systemctl is-active` states that count as started.
const ACTIVE_STATES: &[&str] = &["active", "reloading", "activating"];

/// Parses the output of [`facts_script`]. Strict: a line it does not
/// understand, a path it could not read, a missing header or `end` is an
/// error naming the line.
pub fn parse_facts(out: &str) -> anyhow::Result<Facts> {
    let mut facts = Facts::default();
    let mut lines = out.lines().enumerate();
    match lines.next() {
        Some((_, l)) if l == FACTS_HEADER => {}
        Some((_, l)) => anyhow::bail!("facts: expected `edgectl-facts\t1` as the first line, got {l:?}"),
        None => anyhow::bail!("facts: the output is empty"),
    }
    let mut ended = false;
    let mut seen = std::collections::BTreeSet::new();
    for (i, line) in lines {
        let n = i + 1;
        anyhow::ensure!(!ended, "facts line {n}: {line:?} after `end`");
        let f: Vec<&str> = line.split('\t').collect();
        let bad = || anyhow::anyhow!("facts line {n}: cannot parse {line:?}");
        if f[0] != "end" && f.len() >= 2 {
            anyhow::ensure!(
                seen.insert((f[0], f[1])),
                "facts line {n}: second `{}` record for {:?}",
                f[0],
                f[1]
            );
        }
        let flag = |v: &str| match v {
            "1" => Ok(true),
            "0" => Ok(false),
            _ => Err(bad()),
        };
        match f.as_slice() {
            ["end"] => ended = true,
            ["arch", v] => facts.arch = v.to_string(),
            ["os", v] => facts.os_id = v.to_string(),
            ["systemd", v] => facts.systemd = flag(v)?,
            ["cmd", name, found] => {
                if flag(found)? {
                    facts.commands.push(name.to_string());
                }
            }
            ["pkg", name, "1", version] => facts.packages.push((name.to_string(), version.to_string())),
            ["pkg", _, "0"] => {}
            ["group", name, present] => {
                if flag(present)? {
                    facts.groups.push(name.to_string());
                }
            }
            ["user", name, "1", primary, all] => {
                let mut supp: Vec<String> = all.split_whitespace().map(str::to_string).collect();
                if let Some(i) = supp.iter().position(|g| g == primary) {
                    supp.remove(i);
                }
                facts.users.push((name.to_string(), primary.to_string(), supp));
            }
            ["user", _, "0"] => {}
            ["path", p, "missing"] => facts.paths.push(PathFact {
                path: p.to_string(),
                kind: PathKind::Missing,
                owner: String::new(),
                group: String::new(),
                mode: 0,
                sha256: None,
            }),
            ["path", p, "error"] => {
                anyhow::bail!("facts line {n}: could not read `{p}` (stat/sha256sum failed)")
            }
            ["path", p, kind, owner, group, mode, sha] => {
                let kind = match *kind {
                    "file" => PathKind::File,
                    "dir" => PathKind::Dir,
                    "other" => PathKind::Other,
                    _ => return Err(bad()),
                };
                let mode = u32::from_str_radix(mode, 8).map_err(|_| bad())?;
                let sha256 = match (kind, *sha) {
                    (PathKind::File, s) if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        Some(s.to_ascii_lowercase())
                    }
                    (PathKind::File, _) => return Err(bad()),
                    (_, "-") => None,
                    _ => return Err(bad()),
                };
                if owner.is_empty() || group.is_empty() || mode > 0o7777 {
                    return Err(bad());
                }
                facts.paths.push(PathFact {
                    path: p.to_string(),
                    kind,
                    owner: owner.to_string(),
                    group: group.to_string(),
                    mode,
                    sha256,
                });
            }
            ["unit", name, enabled, active] => facts.units.push((
                name.to_string(),
                ENABLED_STATES.contains(enabled),
                ACTIVE_STATES.contains(active),
            )),
            ["read", p, "1", b64] => {
                let bytes = crate::pki::base64_decode(b64).ok_or_else(bad)?;
                // Lossy: a garbled public file is shown (and replaced), not fatal.
                facts
                    .reads
                    .push((p.to_string(), String::from_utf8_lossy(&bytes).into_owned()));
            }
            ["read", _, "0"] => {}
            ["pending", unit] => facts.pending_restarts.push(unit.to_string()),
            _ => return Err(bad()),
        }
    }
    anyhow::ensure!(ended, "facts: the output was cut short (no `end` line)");
    Ok(facts)
}

// ---------------------------------------------------------------------------
// Plan
// ---------------------------------------------------------------------------

/// The changes that make `host` look like `spec`, and the steps that apply
/// them, in apply order: packages, groups, users, dirs, files, units, then
/// handlers. Nothing differs → empty plan (no changes, no steps).
///
/// Steps run in the order of the changes, except that a `daemon-reload`
/// runs right after the files, before units are enabled/started (a new or
/// changed unit file must be loaded first); it is still listed with the
/// handlers. Restarts run last.
pub fn plan_host(host: &str, spec: &HostSpec, facts: &Facts) -> HostPlan {
    let mut p = Planner {
        host,
        plan: HostPlan::default(),
        pending: facts.pending_restarts.clone(),
    };
    p.packages(spec, facts);
    p.groups(spec, facts);
    p.users(spec, facts);
    p.dirs(spec, facts);
    let handlers = p.files(spec, facts);
    let reload_at = p.plan.steps.len();
    let started_now = p.units(spec, facts);
    p.handlers(spec, &handlers, &started_now, reload_at);
    p.plan
}

/// Changes to show; handlers count as changes too.
#[cfg(test)]
pub fn changed_count(plan: &HostPlan) -> usize {
    plan.changes.len()
}

struct Planner<'a> {
    host: &'a str,
    plan: HostPlan,
    /// Units with a restart left pending by an earlier run.
    pending: Vec<String>,
}

/// Files whose content changes, by the handler they notify (in order of
/// first appearance).
#[derive(Default)]
struct Notified {
    daemon_reload: Vec<String>,
    restarts: Vec<(String, Vec<String>)>,
}

/// Runs only where systemd is PID 1 (a clear error elsewhere).
const NEEDS_SYSTEMD: &str =
    "[ -d /run/systemd/system ] || { echo 'systemd is not running as PID 1 on this host' >&2; exit 1; }\n";

impl Planner<'_> {
    fn addr(&self, kind: &str, name: &str) -> String {
        format!("{}/{kind}:{name}", self.host)
    }

    fn push(&mut self, change: Change, script: String, stdin: Option<Payload>) {
        self.plan.steps.push(Step {
            address: change.address.clone(),
            script,
            stdin,
        });
        self.plan.changes.push(change);
    }

    /// All missing packages in one apt step. `apt-get update` runs first
    /// only when the package lists are absent (fresh or slim images clean
    /// them), and otherwise only as a retry when install fails in a way
    /// stale lists explain (unknown package, no candidate, 404 on fetch):
    /// a converged or nearly converged host then never pays for an update
    /// round trip to the mirror.
    fn packages(&mut self, spec: &HostSpec, facts: &Facts) {
        let missing: Vec<&String> = spec
            .packages
            .iter()
            .filter(|p| !facts.packages.iter().any(|(n, _)| n == *p))
            .collect();
        let Some(first) = missing.first() else { return };
        let names: Vec<String> = missing.iter().map(|p| sh_quote(p)).collect();
        let script = format!(
            r#"set -u
export DEBIAN_FRONTEND=noninteractive LC_ALL=C
inst() {{ apt-get -q -o DPkg::Lock::Timeout=300 install -y --no-install-recommends {names}; }}
upd() {{ apt-get -q -o DPkg::Lock::Timeout=300 update >&2 || {{ echo 'apt-get update failed' >&2; exit 1; }}; }}
set -- /var/lib/apt/lists/*_Packages*
[ -e "$1" ] || upd
if out=$(inst 2>&1); then printf '%s\n' "$out"; exit 0; fi
case $out in
  *'Unable to locate package'*|*'has no installation candidate'*|*'Failed to fetch'*)
    upd
    inst || {{ echo 'apt-get install {list} failed (after apt-get update)' >&2; exit 1; }} ;;
  *) printf '%s\n' "$out" >&2; echo 'apt-get install {list} failed' >&2; exit 1 ;;
esac
"#,
            names = names.join(" "),
            list = missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "),
        );
        let address = self.addr("pkg", first);
        for p in &missing {
            let c = Change::new(self.addr("pkg", p), Action::Create, "missing");
            self.plan.changes.push(c);
        }
        self.plan.steps.push(Step {
            address,
            script,
            stdin: None,
        });
    }

    /// Missing groups are created as system groups (`groupadd --system`):
    /// the groups a device needs are for daemons, not people.
    fn groups(&mut self, spec: &HostSpec, facts: &Facts) {
        for g in &spec.groups {
            if facts.groups.contains(g) {
                continue;
            }
            let c = Change::new(self.addr("group", g), Action::Create, "missing");
            self.push(c, format!("set -eu\ngroupadd --system {}\n", sh_quote(g)), None);
        }
    }

    fn users(&mut self, spec: &HostSpec, facts: &Facts) {
        for u in &spec.users {
            let fact = facts.users.iter().find(|(n, _, _)| *n == u.name);
            let name = sh_quote(&u.name);
            let Some((_, primary, supp)) = fact else {
                let mut args = Vec::new();
                if u.system {
                    args.extend(["--system", "--no-create-home", "--home-dir", "/nonexistent"]);
                    args.extend(["--shell", "/usr/sbin/nologin"]);
                } else {
                    args.push("--create-home");
                }
                let group = match &u.group {
                    Some(g) => format!("--gid {}", sh_quote(g)),
                    // A group named like the user already there (or planned):
                    // useradd --user-group would refuse it.
                    None if spec.groups.contains(&u.name) || facts.groups.contains(&u.name) => {
                        format!("--gid {name}")
                    }
                    None => "--user-group".to_string(),
                };
                let mut c = Change::new(self.addr("user", &u.name), Action::Create, "missing");
                let mut cmd = format!("useradd {} {group}", args.join(" "));
                if let Some(g) = &u.group {
                    c = c.field("group", None, Value::known(g));
                }
                if !u.groups.is_empty() {
                    cmd += &format!(" --groups {}", sh_quote(&u.groups.join(",")));
                    c = c.field("groups", None, Value::known(u.groups.join(",")));
                }
                if u.system {
                    c = c.field("system", None, Value::known("true"));
                }
                self.push(c, format!("set -eu\n{cmd} {name}\n"), None);
                continue;
            };
            let mut reasons = Vec::new();
            let mut fields = Vec::new();
            let mut script = String::from("set -eu\n");
            let mut new_primary = primary.as_str();
            if let Some(g) = u.group.as_ref().filter(|g| *g != primary) {
                reasons.push(format!("primary group {primary} -> {g}"));
                fields.push(("group", Some(Value::known(primary)), Value::known(g)));
                script += &format!("usermod -g {} {name}\n", sh_quote(g));
                new_primary = g;
            }
            let missing: Vec<&String> = u
                .groups
                .iter()
                .filter(|g| *g != new_primary && !supp.contains(g))
                .collect();
            if !missing.is_empty() {
                let list: Vec<&str> = missing.iter().map(|g| g.as_str()).collect();
                reasons.push(format!("not in group {}", list.join(", ")));
                let mut all: Vec<&str> = supp.iter().map(String::as_str).collect();
                let old = Value::known(all.join(","));
                all.extend(&list);
                fields.push(("groups", Some(old), Value::known(all.join(","))));
                script += &format!("usermod -aG {} {name}\n", sh_quote(&list.join(",")));
            }
            if reasons.is_empty() {
                continue;
            }
            let mut c = Change::new(self.addr("user", &u.name), Action::Update, reasons.join("; "));
            for (n, old, new) in fields {
                c = c.field(n, old, new);
            }
            self.push(c, script, None);
        }
    }

    fn dirs(&mut self, spec: &HostSpec, facts: &Facts) {
        for d in &spec.dirs {
            let address = self.addr("dir", &d.path);
            let q = sh_quote(&d.path);
            let fact = path_fact(facts, &d.path);
            match fact.kind {
                PathKind::Missing => {
                    let c = Change::new(address, Action::Create, "missing")
                        .field("owner", None, Value::known(format!("{}:{}", d.owner, d.group)))
                        .field("mode", None, Value::known(mode_str(d.mode)));
                    let script = format!(
                        "set -eu\nmkdir -p -- {q}\n{}",
                        chown_chmod(&d.path, &d.owner, &d.group, d.mode)
                    );
                    self.push(c, script, None);
                }
                PathKind::Dir => {
                    if let Some((c, script)) = drift(address, &d.path, &d.owner, &d.group, d.mode, &fact) {
                        self.push(c, script, None);
                    }
                }
                PathKind::File | PathKind::Other => {
                    let c = Change::new(address, Action::Update, "exists and is not a directory");
                    let script = format!(
                        "echo {} >&2\nexit 1\n",
                        sh_quote(&format!(
                            "{} exists and is not a directory; move it away first",
                            d.path
                        ))
                    );
                    self.push(c, script, None);
                }
            }
        }
    }

    fn files(&mut self, spec: &HostSpec, facts: &Facts) -> Notified {
        let mut notified = Notified::default();
        for f in &spec.files {
            let address = self.addr("file", &f.path);
            let fact = path_fact(facts, &f.path);
            let want = desired_sha256(&f.content);
            let (action, reason) = match fact.kind {
                PathKind::Missing => (Action::Create, "missing"),
                PathKind::Other => (Action::Update, "not a regular file"),
                PathKind::Dir => {
                    let c = Change::new(address, Action::Update, "is a directory");
                    let msg = format!("{} is a directory, expected a file; move it away first", f.path);
                    self.push(c, format!("echo {} >&2\nexit 1\n", sh_quote(&msg)), None);
                    continue;
                }
                // Download of a zip member whose installed sha256 is not
                // pinned: an existing file is taken as the right one (the
                // archive's sha256 cannot be compared with the member's).
                PathKind::File => match (&want, &f.content) {
                    (_, Content::Download { stale: Some(why), .. }) => (Action::Update, why.as_str()),
                    (Some(w), _) if fact.sha256.as_deref() != Some(w.as_str()) => {
                        (Action::Update, "content differs")
                    }
                    _ => {
                        let d = drift(address, &f.path, &f.owner, &f.group, f.mode, &fact);
                        if let Some((c, script)) = d {
                            self.push(c, script, None);
                        }
                        continue;
                    }
                },
            };
            let exists = fact.kind != PathKind::Missing;
            let mut c = Change::new(address, action, reason);
            let old_sha = fact.sha256.clone().map(Value::Known);
            let (script, stdin) = match &f.content {
                Content::Text(text) => {
                    let old = facts.reads.iter().find(|(p, _)| *p == f.path).map(|(_, t)| t);
                    if let (Some(old), true) = (old, exists) {
                        c = c.field("diff", None, Value::known(text_diff(old, text)));
                    }
                    let sha = sha256_hex(text.as_bytes());
                    c = c.field("sha256", old_sha, Value::known(&sha));
                    let check = StdinCheck::Sha256(&sha);
                    (
                        write_script(f, check),
                        Some(Payload::Bytes(text.as_bytes().to_vec())),
                    )
                }
                Content::Secret(secret) => {
                    let old = exists.then_some(Value::Sensitive);
                    c = c.field("content", old, Value::Sensitive);
                    let check = StdinCheck::Len(secret.expose().len());
                    (write_script(f, check), Some(Payload::Secret(secret.clone())))
                }
                Content::Local { path, sha256 } => {
                    c = c.field("source", None, Value::known(path.display().to_string()));
                    c = c.field("sha256", old_sha, Value::known(sha256));
                    let check = StdinCheck::Sha256(sha256);
                    (write_script(f, check), Some(Payload::Local(path.clone())))
                }
                Content::Download { url, sha256, .. } => {
                    c = c.field("url", None, Value::known(url));
                    let new = want.clone().unwrap_or_else(|| sha256.clone());
                    c = c.field("sha256", old_sha, Value::known(new));
                    (download_script(f), None)
                }
            };
            let owner = format!("{}:{}", f.owner, f.group);
            let old_owner = format!("{}:{}", fact.owner, fact.group);
            if !exists || old_owner != owner {
                c = c.field(
                    "owner",
                    exists.then(|| Value::known(old_owner)),
                    Value::known(owner),
                );
            }
            if !exists || fact.mode != f.mode {
                let old = exists.then(|| Value::known(mode_str(fact.mode)));
                c = c.field("mode", old, Value::known(mode_str(f.mode)));
            }
            let mut script = script;
            for h in &f.notify {
                if let Handler::Restart(u) = h {
                    script = format!(
                        "mkdir -p -- {PENDING_DIR} && : > {} || exit 1\n{script}",
                        sh_quote(&format!("{PENDING_DIR}/{u}"))
                    );
                }
            }
            self.push(c, script, stdin);
            let mut reload = is_unit_file(&f.path);
            for h in &f.notify {
                match h {
                    Handler::DaemonReload => reload = true,
                    Handler::Restart(u) => match notified.restarts.iter_mut().find(|(n, _)| n == u) {
                        Some((_, paths)) => paths.push(f.path.clone()),
                        None => notified.restarts.push((u.clone(), vec![f.path.clone()])),
                    },
                }
            }
            if reload {
                notified.daemon_reload.push(f.path.clone());
            }
        }
        notified
    }

    /// Enables and starts what is wanted and is not. `enabled: false` /
    /// `started: false` mean "leave as is": the engine never disables or
    /// stops a unit. Returns the units started by this plan.
    fn units(&mut self, spec: &HostSpec, facts: &Facts) -> Vec<String> {
        let mut started = Vec::new();
        for u in &spec.units {
            let (enabled, active) = facts
                .units
                .iter()
                .find(|(n, _, _)| *n == u.name)
                .map_or((false, false), |(_, e, a)| (*e, *a));
            let enable = u.enabled && !enabled;
            let start = u.started && !active;
            if !enable && !start {
                continue;
            }
            let q = sh_quote(&u.name);
            let mut script = format!("set -eu\n{NEEDS_SYSTEMD}");
            let mut reasons = Vec::new();
            let mut fields = Vec::new();
            if enable {
                reasons.push("not enabled");
                fields.push(("enabled", "false", "true"));
                script += &format!("systemctl enable -- {q}\n");
            }
            if start {
                reasons.push("not active");
                fields.push(("active", "false", "true"));
                script += &format!("systemctl start -- {q}\n");
                script += &format!("rm -f -- {}\n", sh_quote(&format!("{PENDING_DIR}/{}", u.name)));
                started.push(u.name.clone());
            }
            let action = if enabled || active {
                Action::Update
            } else {
                Action::Create
            };
            let mut c = Change::new(self.addr("unit", &u.name), action, reasons.join(", "));
            for (n, old, new) in fields {
                c = c.field(n, Some(Value::known(old)), Value::known(new));
            }
            self.push(c, script, None);
        }
        started
    }

    fn handlers(&mut self, spec: &HostSpec, n: &Notified, started_now: &[String], reload_at: usize) {
        if !n.daemon_reload.is_empty() {
            let c = Change::new(
                self.addr("handler", "daemon-reload"),
                Action::Update,
                changed_reason(&n.daemon_reload),
            );
            let step = Step {
                address: c.address.clone(),
                script: format!("set -eu\n{NEEDS_SYSTEMD}systemctl daemon-reload\n"),
                stdin: None,
            };
            self.plan.steps.insert(reload_at, step);
            self.plan.changes.push(c);
        }
        let mut restarts: Vec<(String, String)> = n
            .restarts
            .iter()
            .map(|(u, paths)| (u.clone(), changed_reason(paths)))
            .collect();
        for u in &self.pending {
            let known = spec.units.iter().any(|w| w.name == *u)
                || spec
                    .files
                    .iter()
                    .any(|f| f.notify.contains(&Handler::Restart(u.clone())));
            if known && !restarts.iter().any(|(r, _)| r == u) {
                restarts.push((
                    u.clone(),
                    "an earlier run changed its files and was cut off before restarting it".into(),
                ));
            }
        }
        for (unit, reason) in &restarts {
            // Started for the first time by this plan: it reads the new files.
            if started_now.contains(unit) {
                continue;
            }
            let wanted = spec.units.iter().find(|u| u.name == *unit);
            let verb = match wanted {
                Some(u) if u.started => "restart",
                Some(_) => continue,
                // Not managed here: restart only if it runs, never start it.
                None => "try-restart",
            };
            let c = Change::new(
                self.addr("handler", &format!("restart {unit}")),
                Action::Update,
                reason.clone(),
            );
            let script = format!(
                "set -eu\n{NEEDS_SYSTEMD}systemctl {verb} -- {}\nrm -f -- {}\n",
                sh_quote(unit),
                sh_quote(&format!("{PENDING_DIR}/{unit}"))
            );
            self.push(c, script, None);
        }
    }
}

fn changed_reason(paths: &[String]) -> String {
    format!("content of {} changed", paths.join(", "))
}

fn is_unit_file(path: &str) -> bool {
    let (dir, _) = split_path(path);
    let (parent, base) = split_path(dir);
    UNIT_DIRS.contains(&dir) || (UNIT_DIRS.contains(&parent) && base.ends_with(".d"))
}

/// The fact for `path`; a path the facts do not mention counts as missing.
fn path_fact(facts: &Facts, path: &str) -> PathFact {
    facts
        .paths
        .iter()
        .find(|p| p.path == path)
        .cloned()
        .unwrap_or(PathFact {
            path: path.to_string(),
            kind: PathKind::Missing,
            owner: String::new(),
            group: String::new(),
            mode: 0,
            sha256: None,
        })
}

/// The sha256 the file must have, when known up front (see [`Content`]).
fn desired_sha256(c: &Content) -> Option<String> {
    match c {
        Content::Text(t) => Some(sha256_hex(t.as_bytes())),
        Content::Secret(s) => Some(sha256_hex(s.expose().as_bytes())),
        Content::Local { sha256, .. } => Some(sha256.to_ascii_lowercase()),
        Content::Download {
            sha256,
            unzip_member: None,
            ..
        } => Some(sha256.to_ascii_lowercase()),
        Content::Download { installed_sha256, .. } => {
            installed_sha256.as_ref().map(|s| s.to_ascii_lowercase())
        }
    }
}

fn chown_chmod(path: &str, owner: &str, group: &str, mode: u32) -> String {
    // chown clears setuid/setgid bits, so chmod comes after it.
    let q = sh_quote(path);
    format!(
        "chown -- {} {q}\nchmod -- {} {q}\n",
        sh_quote(&format!("{owner}:{group}")),
        chmod_arg(mode)
    )
}

/// An owner/mode-only change of an existing path (no rewrite, no handlers).
fn drift(
    address: String,
    path: &str,
    owner: &str,
    group: &str,
    mode: u32,
    fact: &PathFact,
) -> Option<(Change, String)> {
    let (want, have) = (
        format!("{owner}:{group}"),
        format!("{}:{}", fact.owner, fact.group),
    );
    let mut reasons = Vec::new();
    let mut fields = Vec::new();
    let q = sh_quote(path);
    let mut script = String::from("set -eu\n");
    if want != have {
        reasons.push(format!("owner {have} -> {want}"));
        fields.push(("owner", have, want.clone()));
        script += &format!("chown -- {} {q}\n", sh_quote(&want));
    }
    // A chown may clear setuid/setgid bits: chmod after any chown.
    if fact.mode != mode || !fields.is_empty() {
        if fact.mode != mode {
            reasons.push(format!("mode {} -> {}", mode_str(fact.mode), mode_str(mode)));
            fields.push(("mode", mode_str(fact.mode), mode_str(mode)));
        }
        script += &format!("chmod -- {} {q}\n", chmod_arg(mode));
    }
    if reasons.is_empty() {
        return None;
    }
    let mut c = Change::new(address, Action::Update, reasons.join(", "));
    for (n, old, new) in fields {
        c = c.field(n, Some(Value::known(old)), Value::known(new));
    }
    Some((c, script))
}

/// How a write step checks that stdin arrived whole before installing it.
/// A secret is checked by length only: its hash does not go into a script.
enum StdinCheck<'a> {
    Sha256(&'a str),
    Len(usize),
}

/// Atomic write of stdin to `f.path`: a temp file beside it (umask 077, so
/// never readable by others while incomplete), checked, fsynced, chowned,
/// chmodded, renamed over the target, then the directory fsynced. Parent
/// directories that are missing are created 0755 root:root (as `install
/// -D`); manage them in `dirs` for anything else.
fn write_script(f: &File, check: StdinCheck) -> String {
    let (dir, _) = split_path(&f.path);
    let (p, d, t) = (
        sh_quote(&f.path),
        sh_quote(dir),
        sh_quote(&sibling(&f.path, TMP_SUFFIX)),
    );
    let check = match check {
        StdinCheck::Sha256(sha) => format!(
            "h=$(sha256sum <\"$t\"); h=${{h%% *}}\n[ \"$h\" = {sha} ] || {{ echo \"$p: received content has sha256 $h, expected {sha} (input cut short or changed?)\" >&2; exit 1; }}\n"
        ),
        StdinCheck::Len(n) => format!(
            "n=$(wc -c <\"$t\")\n[ \"$n\" -eq {n} ] || {{ echo \"$p: received $n bytes, expected {n} (input cut short?)\" >&2; exit 1; }}\n"
        ),
    };
    format!(
        "set -eu\np={p}; d={d}; t={t}\n[ -d \"$d\" ] || (umask 022 && mkdir -p -- \"$d\")\numask 077\ntrap 'rm -f -- \"$t\"' EXIT\nrm -f -- \"$t\"\nset -C\ncat >\"$t\"\nset +C\n{check}{}",
        install_tail(f, "$t")
    )
}

/// fsync, chown, chmod, rename over the target, fsync the directory.
fn install_tail(f: &File, src: &str) -> String {
    format!(
        "sync -- \"{src}\"\nchown -- {} \"{src}\"\nchmod -- {} \"{src}\"\nmv -f -T -- \"{src}\" \"$p\"\nsync -- \"$d\"\n",
        sh_quote(&format!("{}:{}", f.owner, f.group)),
        chmod_arg(f.mode)
    )
}

/// Download on the host into a temp dir beside the target, check the pinned
/// sha256, take the zip member out if asked, then install atomically.
fn download_script(f: &File) -> String {
    let Content::Download {
        url,
        sha256,
        unzip_member,
        installed_sha256,
        ..
    } = &f.content
    else {
        unreachable!("download_script of a file that is not a download")
    };
    let (dir, _) = split_path(&f.path);
    let (p, d, w) = (
        sh_quote(&f.path),
        sh_quote(dir),
        sh_quote(&sibling(&f.path, DL_SUFFIX)),
    );
    let u = sh_quote(url);
    let tools = if unzip_member.is_some() {
        "curl sha256sum unzip"
    } else {
        "curl sha256sum"
    };
    let mut s = format!(
        r#"set -eu
p={p}; d={d}; w={w}; u={u}
for c in {tools}; do
  command -v "$c" >/dev/null 2>&1 || {{ echo "$p: $c is not installed (needed to download $u)" >&2; exit 1; }}
done
[ -d "$d" ] || (umask 022 && mkdir -p -- "$d")
umask 077
trap 'rm -rf -- "$w"' EXIT
rm -rf -- "$w"
mkdir -- "$w"
curl -fsSL --retry 3 -o "$w/download" "$u" || {{ echo "download of $u failed" >&2; exit 1; }}
if ! printf '%s  %s\n' {sha256} "$w/download" | sha256sum -c --status -; then
  h=$(sha256sum <"$w/download"); h=${{h%% *}}
  echo "download of $u: sha256 mismatch: expected {sha256}, got $h" >&2
  exit 1
fi
"#
    );
    match unzip_member {
        Some(m) => {
            let m = sh_quote(m);
            s += &format!(
                "unzip -p \"$w/download\" {m} >\"$w/file\" || {{ echo \"$p: cannot extract \"{m}\" from $u\" >&2; exit 1; }}\n"
            );
            if let Some(want) = installed_sha256 {
                s += &format!(
                    "h=$(sha256sum <\"$w/file\"); h=${{h%% *}}\n[ \"$h\" = {want} ] || {{ echo \"$p: member \"{m}\" of $u has sha256 $h, expected {want}\" >&2; exit 1; }}\n"
                );
            }
            s += &install_tail(f, "$w/file");
        }
        None => s += &install_tail(f, "$w/download"),
    }
    s
}

// ---------------------------------------------------------------------------
// Text diff
// ---------------------------------------------------------------------------

/// Lines of context around each hunk.
const DIFF_CONTEXT: usize = 3;
/// Above this many LCS cells the diff is "all old lines out, all new in".
const DIFF_MAX_CELLS: usize = 4_000_000;

/// A unified diff (hunks only, `@@ -a,b +c,d @@`, no `---`/`+++` header) of
/// two texts by lines, from a longest-common-subsequence table. Empty when
/// the lines are equal.
pub fn text_diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let ops = diff_ops(&a, &b);
    let n = ops.len();
    // (old line, new line) before each op, 0-based.
    let mut pos = Vec::with_capacity(n + 1);
    let (mut i, mut j) = (0, 0);
    for (op, _) in &ops {
        pos.push((i, j));
        match op {
            ' ' => (i, j) = (i + 1, j + 1),
            '-' => i += 1,
            _ => j += 1,
        }
    }
    pos.push((i, j));
    let mut out = String::new();
    let mut k = 0;
    while let Some(first) = (k..n).find(|&x| ops[x].0 != ' ') {
        let start = first.saturating_sub(DIFF_CONTEXT).max(k);
        let mut end = first;
        loop {
            while end < n && ops[end].0 != ' ' {
                end += 1;
            }
            let mut eq = end;
            while eq < n && ops[eq].0 == ' ' {
                eq += 1;
            }
            if eq < n && eq - end <= 2 * DIFF_CONTEXT {
                end = eq;
            } else {
                break;
            }
        }
        let stop = (end + DIFF_CONTEXT).min(n);
        let (oa, na) = pos[start];
        let (ob, nb) = pos[stop];
        let range = |s: usize, len: usize| {
            if len == 0 {
                format!("{s},0")
            } else {
                format!("{},{len}", s + 1)
            }
        };
        out += &format!("@@ -{} +{} @@\n", range(oa, ob - oa), range(na, nb - na));
        for (op, line) in &ops[start..stop] {
            out.push(*op);
            out += line;
            out.push('\n');
        }
        k = stop;
    }
    out
}

fn diff_ops<'a>(a: &[&'a str], b: &[&'a str]) -> Vec<(char, &'a str)> {
    let pre = a.iter().zip(b).take_while(|(x, y)| x == y).count();
    let suf = a[pre..]
        .iter()
        .rev()
        .zip(b[pre..].iter().rev())
        .take_while(|(x, y)| x == y)
        .count();
    let (ma, mb) = (&a[pre..a.len() - suf], &b[pre..b.len() - suf]);
    let mut ops: Vec<(char, &str)> = a[..pre].iter().map(|l| (' ', *l)).collect();
    if ma.len().saturating_mul(mb.len()) > DIFF_MAX_CELLS {
        ops.extend(ma.iter().map(|l| ('-', *l)));
        ops.extend(mb.iter().map(|l| ('+', *l)));
    } else {
        // lcs[i][j]: LCS length of ma[i..] and mb[j..].
        let w = mb.len() + 1;
        let mut lcs = vec![0u32; (ma.len() + 1) * w];
        for i in (0..ma.len()).rev() {
            for j in (0..mb.len()).rev() {
                lcs[i * w + j] = if ma[i] == mb[j] {
                    lcs[(i + 1) * w + j + 1] + 1
                } else {
                    lcs[(i + 1) * w + j].max(lcs[i * w + j + 1])
                };
            }
        }
        let (mut i, mut j) = (0, 0);
        while i < ma.len() || j < mb.len() {
            if i < ma.len() && j < mb.len() && ma[i] == mb[j] {
                ops.push((' ', ma[i]));
                (i, j) = (i + 1, j + 1);
            } else if i < ma.len() && (j == mb.len() || lcs[(i + 1) * w + j] >= lcs[i * w + j + 1]) {
                ops.push(('-', ma[i]));
                i += 1;
            } else {
                ops.push(('+', mb[j]));
                j += 1;
            }
        }
    }
    ops.extend(a[a.len() - suf..].iter().map(|l| (' ', *l)));
    ops
}

#[cfg(test)]
mod tests {
    use super::*;

    const UNIT: &str = "[Service]\nExecStart=/bin/sleep infinity\n";
    const SECRET: &str = "-----BEGIN PRIVATE KEY-----\nhunter2-very-secret\n-----END PRIVATE KEY-----\n";
    const TOOL_ZIP_SHA: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const TOOL_SHA: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    fn s(v: &str) -> String {
        v.to_string()
    }

    fn spec() -> HostSpec {
        let file = |path: &str, content, group: &str, mode, notify| File {
            path: s(path),
            content,
            owner: s("root"),
            group: s(group),
            mode,
            notify,
        };
        HostSpec {
            packages: vec![s("less"), s("unzip")],
            groups: vec![s("demo")],
            users: vec![User {
                name: s("demo"),
                group: Some(s("demo")),
                groups: vec![s("adm")],
                system: true,
            }],
            dirs: vec![Dir {
                path: s("/opt/demo"),
                owner: s("root"),
                group: s("demo"),
                mode: 0o755,
            }],
            files: vec![
                file(
                    "/opt/demo/demo.conf",
                    Content::Text(s("a = 1\n")),
                    "demo",
                    0o644,
                    vec![Handler::Restart(s("demo.service")), Handler::DaemonReload],
                ),
                file(
                    "/opt/demo/key.pem",
                    Content::Secret(Secret::new(SECRET)),
                    "demo",
                    0o440,
                    vec![Handler::Restart(s("demo.service"))],
                ),
                file(
                    "/etc/systemd/system/demo.service",
                    Content::Text(s(UNIT)),
                    "root",
                    0o644,
                    vec![],
                ),
                file(
                    "/opt/demo/tool",
                    Content::Download {
                        url: s("https://example.com/tool.zip"),
                        sha256: s(TOOL_ZIP_SHA),
                        unzip_member: Some(s("tool")),
                        installed_sha256: Some(s(TOOL_SHA)),
                        stale: None,
                    },
                    "root",
                    0o755,
                    vec![Handler::Restart(s("demo.service"))],
                ),
            ],
            units: vec![Unit {
                name: s("demo.service"),
                enabled: true,
                started: true,
            }],
        }
    }

    /// What the host looks like once `spec` is applied.
    fn converged(spec: &HostSpec) -> Facts {
        let mut paths: Vec<PathFact> = spec
            .dirs
            .iter()
            .map(|d| PathFact {
                path: d.path.clone(),
                kind: PathKind::Dir,
                owner: d.owner.clone(),
                group: d.group.clone(),
                mode: d.mode,
                sha256: None,
            })
            .collect();
        paths.extend(spec.files.iter().map(|f| PathFact {
            path: f.path.clone(),
            kind: PathKind::File,
            owner: f.owner.clone(),
            group: f.group.clone(),
            mode: f.mode,
            sha256: Some(desired_sha256(&f.content).unwrap_or_else(|| s(TOOL_SHA))),
        }));
        Facts {
            arch: s("aarch64"),
            os_id: s("debian"),
            systemd: true,
            commands: vec![],
            packages: spec.packages.iter().map(|p| (p.clone(), s("1.0"))).collect(),
            groups: spec.groups.clone(),
            users: spec
                .users
                .iter()
                .map(|u| {
                    (
                        u.name.clone(),
                        u.group.clone().unwrap_or(u.name.clone()),
                        u.groups.clone(),
                    )
                })
                .collect(),
            paths,
            units: spec
                .units
                .iter()
                .map(|u| (u.name.clone(), u.enabled, u.started))
                .collect(),
            reads: vec![],
            pending_restarts: vec![],
        }
    }

    fn path<'a>(f: &'a mut Facts, p: &str) -> &'a mut PathFact {
        f.paths.iter_mut().find(|x| x.path == p).expect("path in facts")
    }

    const CONF: &str = "/opt/demo/demo.conf";
    const OTHER_SHA: &str = "3333333333333333333333333333333333333333333333333333333333333333";

    type Mutate = fn(&mut HostSpec, &mut Facts);

    /// (situation, what differs, expected (address, action, reason) in order)
    type Expected = Vec<(&'static str, Action, &'static str)>;

    fn cases() -> Vec<(&'static str, Mutate, Expected)> {
        use Action::{Create, Update};
        vec![
            ("no_change", |_, _| {}, vec![]),
            (
                "pkg_missing",
                |_, f| f.packages.retain(|(n, _)| n == "less"),
                vec![("pi-01/pkg:unzip", Create, "missing")],
            ),
            (
                "pkgs_missing",
                |_, f| f.packages.clear(),
                vec![
                    ("pi-01/pkg:less", Create, "missing"),
                    ("pi-01/pkg:unzip", Create, "missing"),
                ],
            ),
            (
                "group_missing",
                |_, f| f.groups.clear(),
                vec![("pi-01/group:demo", Create, "missing")],
            ),
            (
                "user_missing",
                |_, f| f.users.clear(),
                vec![("pi-01/user:demo", Create, "missing")],
            ),
            (
                "user_not_in_group",
                |_, f| f.users[0].2.clear(),
                vec![("pi-01/user:demo", Update, "not in group adm")],
            ),
            (
                "user_primary_group_differs",
                |_, f| f.users[0].1 = s("users"),
                vec![("pi-01/user:demo", Update, "primary group users -> demo")],
            ),
            (
                "dir_missing",
                |_, f| path(f, "/opt/demo").kind = PathKind::Missing,
                vec![("pi-01/dir:/opt/demo", Create, "missing")],
            ),
            (
                "dir_owner_drift",
                |_, f| path(f, "/opt/demo").group = s("root"),
                vec![("pi-01/dir:/opt/demo", Update, "owner root:root -> root:demo")],
            ),
            (
                "dir_setgid_drift",
                |_, f| path(f, "/opt/demo").mode = 0o2755,
                vec![("pi-01/dir:/opt/demo", Update, "mode 2755 -> 0755")],
            ),
            (
                "mode_drift",
                |_, f| path(f, CONF).mode = 0o600,
                vec![("pi-01/file:/opt/demo/demo.conf", Update, "mode 0600 -> 0644")],
            ),
            (
                "owner_and_mode_drift",
                |_, f| {
                    let p = path(f, "/opt/demo/key.pem");
                    (p.owner, p.mode) = (s("demo"), 0o644);
                },
                vec![(
                    "pi-01/file:/opt/demo/key.pem",
                    Update,
                    "owner demo:demo -> root:demo, mode 0644 -> 0440",
                )],
            ),
            (
                "content_drift",
                |_, f| path(f, CONF).sha256 = Some(s(OTHER_SHA)),
                vec![
                    ("pi-01/file:/opt/demo/demo.conf", Update, "content differs"),
                    (
                        "pi-01/handler:daemon-reload",
                        Update,
                        "content of /opt/demo/demo.conf changed",
                    ),
                    (
                        "pi-01/handler:restart demo.service",
                        Update,
                        "content of /opt/demo/demo.conf changed",
                    ),
                ],
            ),
            (
                "file_missing",
                |_, f| path(f, "/opt/demo/key.pem").kind = PathKind::Missing,
                vec![
                    ("pi-01/file:/opt/demo/key.pem", Create, "missing"),
                    (
                        "pi-01/handler:restart demo.service",
                        Update,
                        "content of /opt/demo/key.pem changed",
                    ),
                ],
            ),
            (
                "handlers_deduplicated",
                |_, f| {
                    path(f, CONF).sha256 = Some(s(OTHER_SHA));
                    path(f, "/opt/demo/key.pem").sha256 = Some(s(OTHER_SHA));
                },
                vec![
                    ("pi-01/file:/opt/demo/demo.conf", Update, "content differs"),
                    ("pi-01/file:/opt/demo/key.pem", Update, "content differs"),
                    (
                        "pi-01/handler:daemon-reload",
                        Update,
                        "content of /opt/demo/demo.conf changed",
                    ),
                    (
                        "pi-01/handler:restart demo.service",
                        Update,
                        "content of /opt/demo/demo.conf, /opt/demo/key.pem changed",
                    ),
                ],
            ),
            (
                "unit_file_drift",
                |_, f| path(f, "/etc/systemd/system/demo.service").sha256 = Some(s(OTHER_SHA)),
                vec![
                    (
                        "pi-01/file:/etc/systemd/system/demo.service",
                        Update,
                        "content differs",
                    ),
                    (
                        "pi-01/handler:daemon-reload",
                        Update,
                        "content of /etc/systemd/system/demo.service changed",
                    ),
                ],
            ),
            (
                "file_is_directory",
                |_, f| path(f, CONF).kind = PathKind::Dir,
                vec![("pi-01/file:/opt/demo/demo.conf", Update, "is a directory")],
            ),
            (
                "unit_missing",
                |_, f| f.units.clear(),
                vec![("pi-01/unit:demo.service", Create, "not enabled, not active")],
            ),
            (
                "unit_not_active",
                |_, f| f.units[0].2 = false,
                vec![("pi-01/unit:demo.service", Update, "not active")],
            ),
            (
                "unit_not_wanted_enabled_is_left_alone",
                |sp, f| {
                    sp.units[0].enabled = false;
                    f.units[0].1 = false;
                },
                vec![],
            ),
            (
                "restart_not_needed_when_started_now",
                |_, f| {
                    path(f, CONF).sha256 = Some(s(OTHER_SHA));
                    f.units[0].2 = false;
                },
                vec![
                    ("pi-01/file:/opt/demo/demo.conf", Update, "content differs"),
                    ("pi-01/unit:demo.service", Update, "not active"),
                    (
                        "pi-01/handler:daemon-reload",
                        Update,
                        "content of /opt/demo/demo.conf changed",
                    ),
                ],
            ),
            (
                "restart_of_unmanaged_unit",
                |sp, f| {
                    sp.files[0].notify = vec![Handler::Restart(s("ssh.service"))];
                    path(f, CONF).sha256 = Some(s(OTHER_SHA));
                },
                vec![
                    ("pi-01/file:/opt/demo/demo.conf", Update, "content differs"),
                    (
                        "pi-01/handler:restart ssh.service",
                        Update,
                        "content of /opt/demo/demo.conf changed",
                    ),
                ],
            ),
            (
                "download_missing",
                |_, f| path(f, "/opt/demo/tool").kind = PathKind::Missing,
                vec![
                    ("pi-01/file:/opt/demo/tool", Create, "missing"),
                    (
                        "pi-01/handler:restart demo.service",
                        Update,
                        "content of /opt/demo/tool changed",
                    ),
                ],
            ),
            (
                "download_member_unpinned_exists",
                |sp, f| {
                    if let Content::Download { installed_sha256, .. } = &mut sp.files[3].content {
                        *installed_sha256 = None;
                    }
                    path(f, "/opt/demo/tool").sha256 = Some(s(OTHER_SHA));
                },
                vec![],
            ),
            (
                "download_member_unpinned_missing",
                |sp, f| {
                    if let Content::Download { installed_sha256, .. } = &mut sp.files[3].content {
                        *installed_sha256 = None;
                    }
                    path(f, "/opt/demo/tool").kind = PathKind::Missing;
                },
                vec![
                    ("pi-01/file:/opt/demo/tool", Create, "missing"),
                    (
                        "pi-01/handler:restart demo.service",
                        Update,
                        "content of /opt/demo/tool changed",
                    ),
                ],
            ),
            (
                "path_not_in_facts_counts_as_missing",
                |_, f| f.paths.retain(|p| p.path != "/opt/demo"),
                vec![("pi-01/dir:/opt/demo", Create, "missing")],
            ),
        ]
    }

    #[test]
    fn plan_cases() {
        for (name, mutate, want) in cases() {
            let mut sp = spec();
            let mut facts = converged(&sp);
            mutate(&mut sp, &mut facts);
            validate(&sp).unwrap_or_else(|e| panic!("{name}: {e:#}"));
            let plan = plan_host("pi-01", &sp, &facts);
            let got: Vec<(&str, Action, &str)> = plan
                .changes
                .iter()
                .map(|c| (c.address.as_str(), c.action, c.reason.as_str()))
                .collect();
            assert_eq!(got, want, "{name}");
            assert_eq!(changed_count(&plan), want.len(), "{name}");
            if want.is_empty() {
                assert!(plan.steps.is_empty(), "{name}: steps {:?}", plan.steps);
            }
            // Every step applies a planned change.
            for st in &plan.steps {
                assert!(
                    plan.changes.iter().any(|c| c.address == st.address),
                    "{name}: {}",
                    st.address
                );
            }
        }
    }

    fn addrs(plan: &HostPlan) -> Vec<&str> {
        plan.steps.iter().map(|sp| sp.address.as_str()).collect()
    }

    #[test]
    fn steps_run_daemon_reload_before_units_and_restarts_last() {
        let sp = spec();
        let mut facts = converged(&sp);
        path(&mut facts, "/etc/systemd/system/demo.service").kind = PathKind::Missing;
        path(&mut facts, CONF).sha256 = Some(s(OTHER_SHA));
        facts.units[0].1 = false;
        let plan = plan_host("h", &sp, &facts);
        assert_eq!(
            addrs(&plan),
            [
                "h/file:/opt/demo/demo.conf",
                "h/file:/etc/systemd/system/demo.service",
                "h/handler:daemon-reload",
                "h/unit:demo.service",
                "h/handler:restart demo.service",
            ]
        );
        assert!(plan.steps[3].script.contains("systemctl enable -- demo.service"));
        assert!(!plan.steps[3].script.contains("systemctl start"));
        assert!(plan.steps[4].script.contains("systemctl restart -- demo.service"));
    }

    #[test]
    fn a_restart_left_pending_by_a_cut_off_run_is_done_later() {
        let sp = spec();
        // A change that notifies: the marker is made before the file moves
        // in, and the restart removes it.
        let mut facts = converged(&sp);
        path(&mut facts, CONF).sha256 = Some(s(OTHER_SHA));
        let plan = plan_host("h", &sp, &facts);
        let marker = format!("{PENDING_DIR}/demo.service");
        let write = &plan.steps[0].script;
        assert!(
            write.find(&marker).unwrap() < write.find("mv -f").unwrap(),
            "{write}"
        );
        let restart = &plan.steps.last().unwrap().script;
        assert!(restart.contains(&format!("rm -f -- {marker}")), "{restart}");
        // The files are right but the marker is there: restart only.
        let mut facts = converged(&sp);
        facts.pending_restarts = vec![s("demo.service"), s("unknown.service")];
        let plan = plan_host("h", &sp, &facts);
        assert_eq!(addrs(&plan), ["h/handler:restart demo.service"]);
        assert!(
            plan.changes[0].reason.contains("cut off"),
            "{}",
            plan.changes[0].reason
        );
        // Parsed from the facts.
        let f = parse_facts("edgectl-facts\t1\npending\tdemo.service\nend\n").unwrap();
        assert_eq!(f.pending_restarts, [s("demo.service")]);
    }

    #[test]
    fn everything_missing_in_apply_order() {
        let sp = spec();
        let plan = plan_host("h", &sp, &Facts::default());
        let kinds: Vec<&str> = plan
            .changes
            .iter()
            .map(|c| c.address.split_once('/').unwrap().1.split(':').next().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["pkg", "pkg", "group", "user", "dir", "file", "file", "file", "file", "unit", "handler"]
        );
        // One apt step for both packages; no restart of a unit started now.
        assert_eq!(
            plan.steps
                .iter()
                .filter(|sp| sp.script.contains("apt-get"))
                .count(),
            1
        );
        assert!(!plan.changes.iter().any(|c| c.address.contains("restart")));
        let user = &plan.steps[2].script;
        assert!(user.contains("useradd --system --no-create-home"), "{user}");
        assert!(user.contains("--gid demo --groups adm demo"), "{user}");
        let dir = &plan.steps[3].script;
        assert!(dir.contains("mkdir -p -- /opt/demo\nchown -- root:demo /opt/demo\nchmod -- 00755 /opt/demo"));
    }

    #[test]
    fn pkg_missing_script_updates_lists_only_when_needed() {
        let sp = spec();
        let mut facts = converged(&sp);
        facts.packages.clear();
        let plan = plan_host("h", &sp, &facts);
        let sc = &plan.steps[0].script;
        assert!(sc.contains("DEBIAN_FRONTEND=noninteractive"));
        assert!(sc.contains("install -y --no-install-recommends less unzip"));
        assert!(sc.contains("*'Unable to locate package'*"));
        assert!(sc.contains("/var/lib/apt/lists/*_Packages*"));
    }

    #[test]
    fn content_drift_writes_atomically_and_shows_a_diff_when_old_text_is_known() {
        let sp = spec();
        let mut facts = converged(&sp);
        path(&mut facts, CONF).sha256 = Some(s(OTHER_SHA));
        let plan = plan_host("h", &sp, &facts);
        assert!(!plan.changes[0].fields.iter().any(|f| f.name == "diff"));
        facts.reads.push((s(CONF), s("a = 0\n")));
        let plan = plan_host("h", &sp, &facts);
        let diff = plan.changes[0]
            .fields
            .iter()
            .find(|f| f.name == "diff")
            .expect("diff field");
        assert_eq!(diff.new, Value::known("@@ -1,1 +1,1 @@\n-a = 0\n+a = 1\n"));
        let st = &plan.steps[0];
        assert!(matches!(&st.stdin, Some(Payload::Bytes(b)) if b == b"a = 1\n"));
        let sc = &st.script;
        assert!(!sc.contains("a = 1"), "content on a command line: {sc}");
        for want in [
            "t=/opt/demo/.demo.conf.edgectl-tmp",
            "umask 077",
            "cat >\"$t\"",
            "sync -- \"$t\"",
            "chown -- root:demo \"$t\"",
            "chmod -- 00644 \"$t\"",
            "mv -f -T -- \"$t\" \"$p\"",
            "sync -- \"$d\"",
            &sha256_hex(b"a = 1\n"),
        ] {
            assert!(sc.contains(want), "{want:?} not in:\n{sc}");
        }
        let order: Vec<usize> = [
            "cat >",
            "sync -- \"$t\"",
            "chown",
            "chmod",
            "mv -f",
            "sync -- \"$d\"",
        ]
        .iter()
        .map(|w| sc.find(w).unwrap())
        .collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{sc}");
    }

    #[test]
    fn mode_drift_is_a_chmod_without_rewrite_or_handlers() {
        let sp = spec();
        let mut facts = converged(&sp);
        path(&mut facts, CONF).mode = 0o666;
        let plan = plan_host("h", &sp, &facts);
        assert_eq!(plan.steps.len(), 1);
        assert_eq!(
            plan.steps[0].script,
            "set -eu\nchmod -- 00644 /opt/demo/demo.conf\n"
        );
        assert!(plan.steps[0].stdin.is_none());
        let f = &plan.changes[0].fields[0];
        assert_eq!(
            (f.name.as_str(), f.old.clone(), f.new.clone()),
            ("mode", Some(Value::known("0666")), Value::known("0644"))
        );
    }

    #[test]
    fn secret_never_shown() {
        let sp = spec();
        let mut facts = converged(&sp);
        facts.reads.push((s("/opt/demo/key.pem"), s("old secret text")));
        for kind in [PathKind::Missing, PathKind::File] {
            let p = path(&mut facts, "/opt/demo/key.pem");
            (p.kind, p.sha256) = (kind, Some(s(OTHER_SHA)));
            let plan = plan_host("h", &sp, &facts);
            let change = plan
                .changes
                .iter()
                .find(|c| c.address.ends_with("key.pem"))
                .unwrap();
            let content = change.fields.iter().find(|f| f.name == "content").unwrap();
            assert_eq!(content.new, Value::Sensitive);
            assert!(!change
                .fields
                .iter()
                .any(|f| f.name == "diff" || f.name == "sha256"));
            let shown = format!("{plan:?} {}", serde_json::to_string(&plan.changes).unwrap());
            let scripts: String = plan.steps.iter().map(|sp| sp.script.as_str()).collect();
            for needle in ["hunter2", "old secret", &sha256_hex(SECRET.as_bytes())] {
                assert!(!shown.contains(needle), "{needle} shown: {shown}");
                assert!(!scripts.contains(needle), "{needle} in a script");
            }
            let st = plan
                .steps
                .iter()
                .find(|sp| sp.address.ends_with("key.pem"))
                .unwrap();
            assert!(matches!(&st.stdin, Some(Payload::Secret(x)) if x.expose() == SECRET));
            assert!(st.script.contains(&format!("-eq {} ]", SECRET.len())));
        }
    }

    #[test]
    fn download_checks_the_pin_and_installs_the_member_atomically() {
        let sp = spec();
        let mut facts = converged(&sp);
        path(&mut facts, "/opt/demo/tool").kind = PathKind::Missing;
        let plan = plan_host("h", &sp, &facts);
        let st = plan
            .steps
            .iter()
            .find(|sp| sp.address.ends_with("/tool"))
            .unwrap();
        assert!(st.stdin.is_none());
        let sc = &st.script;
        for want in [
            "w=/opt/demo/.tool.edgectl-dl",
            "curl -fsSL --retry 3 -o \"$w/download\" \"$u\"",
            &format!("printf '%s  %s\\n' {TOOL_ZIP_SHA} \"$w/download\" | sha256sum -c --status -"),
            &format!("sha256 mismatch: expected {TOOL_ZIP_SHA}, got $h"),
            "unzip -p \"$w/download\" tool >\"$w/file\"",
            TOOL_SHA,
            "mv -f -T -- \"$w/file\" \"$p\"",
        ] {
            assert!(sc.contains(want), "{want:?} not in:\n{sc}");
        }
    }

    #[test]
    fn sh_quote_cases() {
        for (input, want) in [
            ("plain", "plain"),
            ("/opt/a b", "'/opt/a b'"),
            ("it's", r"'it'\''s'"),
            ("", "''"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("a;b", "'a;b'"),
        ] {
            assert_eq!(sh_quote(input), want, "{input}");
        }
    }

    #[test]
    fn validate_cases() {
        type Bad = fn(&mut HostSpec);
        let cases: Vec<(&str, Bad, &str)> = vec![
            (
                "relative path",
                |sp| sp.dirs[0].path = s("opt/demo"),
                "must be absolute",
            ),
            (
                "tab in path",
                |sp| sp.files[0].path = s("/opt/a\tb"),
                "control characters",
            ),
            (
                "newline in path",
                |sp| sp.files[0].path = s("/opt/a\nb"),
                "control characters",
            ),
            ("quote in path", |sp| sp.files[0].path = s("/opt/a'b"), "quotes"),
            ("dot-dot", |sp| sp.dirs[0].path = s("/opt/../etc"), "normalised"),
            (
                "trailing slash",
                |sp| sp.dirs[0].path = s("/opt/demo/"),
                "normalised",
            ),
            (
                "upper-case user",
                |sp| sp.users[0].name = s("Demo"),
                "[a-z_][a-z0-9_-]*",
            ),
            (
                "group starting with a digit",
                |sp| sp.groups[0] = s("1demo"),
                "[a-z_][a-z0-9_-]*",
            ),
            ("mode too big", |sp| sp.files[0].mode = 0o17777, "more than 7777"),
            ("duplicate path", |sp| sp.dirs[0].path = s(CONF), "listed twice"),
            (
                "bad package",
                |sp| sp.packages[0] = s("-o=foo"),
                "Debian package name",
            ),
            ("bad unit", |sp| sp.units[0].name = s("demo"), "systemd unit name"),
            (
                "bad sha",
                |sp| sp.files.push(local("/x", "abc")),
                "64 lower-case hex",
            ),
            ("ftp url", |sp| set_url(sp, "ftp://x/y"), "must be http(s)"),
        ];
        validate(&spec()).unwrap();
        for (name, bad, want) in cases {
            let mut sp = spec();
            bad(&mut sp);
            let err = format!("{:#}", validate(&sp).expect_err(name));
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    fn local(p: &str, sha: &str) -> File {
        File {
            path: s(p),
            content: Content::Local {
                path: PathBuf::from("/tmp/x"),
                sha256: s(sha),
            },
            owner: s("root"),
            group: s("root"),
            mode: 0o644,
            notify: vec![],
        }
    }

    fn set_url(sp: &mut HostSpec, u: &str) {
        if let Content::Download { url, .. } = &mut sp.files[3].content {
            *url = s(u);
        }
    }

    #[test]
    fn text_diff_cases() {
        for (name, old, new, want) in [
            ("equal", "a\nb\n", "a\nb\n", ""),
            (
                "one line changed",
                "a\nb\nc\n",
                "a\nB\nc\n",
                "@@ -1,3 +1,3 @@\n a\n-b\n+B\n c\n",
            ),
            ("added at end", "a\n", "a\nb\n", "@@ -1,1 +1,2 @@\n a\n+b\n"),
            ("from empty", "", "x\n", "@@ -0,0 +1,1 @@\n+x\n"),
            (
                "two hunks",
                "1\n2\n3\n4\n5\n6\n7\n8\n9\n10\n11\n12\n",
                "1\nX\n3\n4\n5\n6\n7\n8\n9\n10\n11\nY\n",
                "@@ -1,5 +1,5 @@\n 1\n-2\n+X\n 3\n 4\n 5\n@@ -9,4 +9,4 @@\n 9\n 10\n 11\n-12\n+Y\n",
            ),
        ] {
            assert_eq!(text_diff(old, new), want, "{name}");
        }
    }

    /// Captured from a Debian bookworm test host by `converges_on_a_real_host`
    /// (`EDGECTL_DUMP_FACTS=<dir>`): before anything was applied, and at the end.
    const FRESH: &str = include_str!("testdata/facts-bookworm-fresh.txt");
    const CONVERGED: &str = include_str!("testdata/facts-bookworm-converged.txt");

    #[test]
    fn parse_captured_facts() {
        let spec = on_a_real_host::demo_spec("greeting = hi\n");
        let fresh = parse_facts(FRESH).unwrap();
        assert_eq!(
            (fresh.arch.as_str(), fresh.os_id.as_str(), fresh.systemd),
            ("x86_64", "debian", true)
        );
        assert_eq!(fresh.packages, [(s("less"), s("590-2.1~deb12u2"))]);
        assert_eq!(fresh.units, [(s("edgectl-demo.service"), false, false)]);
        assert!(fresh.paths.iter().all(|p| p.kind == PathKind::Missing) && fresh.reads.is_empty());
        assert_eq!(changed_count(&plan_host("h", &spec, &fresh)), 8);

        let done = parse_facts(CONVERGED).unwrap();
        assert_eq!(done.users, [(s("edgedemo"), s("edgedemo"), vec![s("adm")])]);
        assert_eq!(
            done.reads,
            [(s("/etc/edgectl demo/demo.conf"), s("greeting = hi\n"))]
        );
        let key = done.paths.iter().find(|p| p.path.ends_with("key.pem")).unwrap();
        assert_eq!(
            (key.owner.as_str(), key.group.as_str(), key.mode),
            ("root", "edgedemo", 0o440)
        );
        let plan = plan_host("h", &spec, &done);
        assert!(
            plan.changes.is_empty() && plan.steps.is_empty(),
            "{:?}",
            plan.changes
        );
    }

    #[test]
    fn parse_records() {
        let sha = sha256_hex(b"x");
        let out = format!(
            "edgectl-facts\t1\narch\taarch64\nos\traspbian\nsystemd\t0\ncmd\topenssl\t1\ncmd\tnomad\t0\n\
             pkg\tless\t1\t590-2\npkg\tunzip\t0\ngroup\tdemo\t1\ngroup\tnope\t0\n\
             user\tdemo\t1\tdemo\tdemo adm\nuser\tnope\t0\n\
             path\t/opt/a b\tdir\troot\tdemo\t2755\t-\npath\t/opt/f\tfile\tdemo\tdemo\t440\t{sha}\n\
             path\t/opt/m\tmissing\nunit\tdemo.service\tenabled\tactive\nunit\tx.service\tnot-found\tinactive\n\
             read\t/etc/c.pem\t1\taGVsbG8K\nread\t/etc/e\t1\t\nread\t/etc/none\t0\nend\n"
        );
        let f = parse_facts(&out).unwrap();
        let want = Facts {
            arch: s("aarch64"),
            os_id: s("raspbian"),
            systemd: false,
            commands: vec![s("openssl")],
            packages: vec![(s("less"), s("590-2"))],
            groups: vec![s("demo")],
            users: vec![(s("demo"), s("demo"), vec![s("adm")])],
            paths: vec![
                PathFact {
                    path: s("/opt/a b"),
                    kind: PathKind::Dir,
                    owner: s("root"),
                    group: s("demo"),
                    mode: 0o2755,
                    sha256: None,
                },
                PathFact {
                    path: s("/opt/f"),
                    kind: PathKind::File,
                    owner: s("demo"),
                    group: s("demo"),
                    mode: 0o440,
                    sha256: Some(sha),
                },
                PathFact {
                    path: s("/opt/m"),
                    kind: PathKind::Missing,
                    owner: s(""),
                    group: s(""),
                    mode: 0,
                    sha256: None,
                },
            ],
            units: vec![(s("demo.service"), true, true), (s("x.service"), false, false)],
            reads: vec![(s("/etc/c.pem"), s("hello\n")), (s("/etc/e"), s(""))],
            pending_restarts: vec![],
        };
        assert_eq!(f, want);
    }

    #[test]
    fn parse_rejects_garbled_output() {
        let h = "edgectl-facts\t1\n";
        for (name, out, want) in [
            ("empty", String::new(), "empty"),
            ("no header", "arch\tx86_64\nend\n".to_string(), "first line"),
            ("cut short", format!("{h}arch\tx86_64\n"), "cut short"),
            (
                "unknown record",
                format!("{h}bogus\tx\nend\n"),
                "line 2: cannot parse \"bogus\\tx\"",
            ),
            (
                "bad mode",
                format!("{h}path\t/x\tdir\troot\troot\t9z\t-\nend\n"),
                "line 2",
            ),
            (
                "file without sha",
                format!("{h}path\t/x\tfile\troot\troot\t644\t-\nend\n"),
                "line 2",
            ),
            (
                "unreadable path",
                format!("{h}path\t/x\terror\nend\n"),
                "could not read `/x`",
            ),
            ("bad flag", format!("{h}systemd\tyes\nend\n"), "line 2"),
            ("bad base64", format!("{h}read\t/x\t1\t@@@@\nend\n"), "line 2"),
            ("after end", format!("{h}end\narch\tx\n"), "after `end`"),
            (
                "duplicate",
                format!("{h}group\ta\t1\ngroup\ta\t0\nend\n"),
                "line 3: second `group`",
            ),
            ("motd noise", format!("{h}Welcome to Raspbian\nend\n"), "line 2"),
        ] {
            let err = format!("{:#}", parse_facts(&out).expect_err(name));
            assert!(err.contains(want), "{name}: {err}");
        }
    }

    #[test]
    fn facts_script_names_exactly_the_spec_and_is_valid_sh() {
        let mut sp = spec();
        sp.dirs[0].path = s("/opt/with space");
        let sc = facts_script(&sp, &["openssl"], &["/etc/edgectl/device.pem"]);
        for want in [
            "c openssl\n",
            "pkg less\npkg unzip\n",
            "grp demo\n",
            "usr demo\n",
            "pth '/opt/with space'\n",
            "rm -f -- /opt/demo/.demo.conf.edgectl-tmp; rm -rf -- /opt/demo/.demo.conf.edgectl-dl\n",
            "  unt demo.service\n",
            "rd /etc/edgectl/device.pem\n",
        ] {
            assert!(sc.contains(want), "{want:?} not in:\n{sc}");
        }
        let ok = std::process::Command::new("sh")
            .args(["-n", "-c", &sc])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    mod on_a_real_host {
        use super::*;
        use testkit::hosts::{HostOptions, TestHost};
        use tokio::io::AsyncWriteExt;

        const DEMO_UNIT: &str =
            "[Unit]\nDescription=edgectl demo\n[Service]\nExecStart=/bin/sleep infinity\n\
                                 [Install]\nWantedBy=multi-user.target\n";
        const UNIT_NAME: &str = "edgectl-demo.service";
        const CONF_PATH: &str = "/etc/edgectl demo/demo.conf";

        pub(super) fn demo_spec(conf: &str) -> HostSpec {
            let file = |path: &str, content, group: &str, mode, notify| File {
                path: s(path),
                content,
                owner: s("root"),
                group: s(group),
                mode,
                notify,
            };
            HostSpec {
                packages: vec![s("less")],
                groups: vec![s("edgedemo")],
                users: vec![User {
                    name: s("edgedemo"),
                    group: Some(s("edgedemo")),
                    groups: vec![s("adm")],
                    system: true,
                }],
                dirs: vec![Dir {
                    path: s("/etc/edgectl demo"),
                    owner: s("root"),
                    group: s("edgedemo"),
                    mode: 0o755,
                }],
                files: vec![
                    file(
                        CONF_PATH,
                        Content::Text(s(conf)),
                        "root",
                        0o644,
                        vec![Handler::Restart(s(UNIT_NAME)), Handler::DaemonReload],
                    ),
                    file(
                        "/etc/edgectl demo/key.pem",
                        Content::Secret(Secret::new(SECRET)),
                        "edgedemo",
                        0o440,
                        vec![],
                    ),
                    file(
                        "/etc/systemd/system/edgectl-demo.service",
                        Content::Text(s(DEMO_UNIT)),
                        "root",
                        0o644,
                        vec![],
                    ),
                ],
                units: vec![Unit {
                    name: s(UNIT_NAME),
                    enabled: true,
                    started: true,
                }],
            }
        }

        /// Runs `script` as root over SSH with `stdin`, as the fleet driver does.
        async fn run(host: &TestHost, script: &str, stdin: Option<&Payload>) -> anyhow::Result<String> {
            let mut child = tokio::process::Command::new("ssh")
                .args(host.ssh_args("root"))
                .arg(format!("sh -c {}", sh_quote(script)))
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()?;
            let bytes = match stdin {
                Some(Payload::Bytes(b)) => b.clone(),
                Some(Payload::Secret(sec)) => sec.expose().as_bytes().to_vec(),
                Some(Payload::Local(p)) => std::fs::read(p)?,
                None => vec![],
            };
            let mut pipe = child.stdin.take().expect("stdin");
            pipe.write_all(&bytes).await?;
            drop(pipe);
            let out = child.wait_with_output().await?;
            anyhow::ensure!(
                out.status.success(),
                "{}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr),
                script
            );
            Ok(String::from_utf8(out.stdout)?)
        }

        async fn observe(host: &TestHost, spec: &HostSpec) -> Facts {
            let out = run(
                host,
                &facts_script(spec, &["systemctl", "nomad"], &[CONF_PATH]),
                None,
            )
            .await
            .expect("facts script runs");
            // How testdata/facts-*.txt were captured: EDGECTL_DUMP_FACTS=<dir>.
            if let Some(dir) = std::env::var_os("EDGECTL_DUMP_FACTS") {
                static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
                let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                std::fs::write(std::path::Path::new(&dir).join(format!("facts-{n}.txt")), &out).unwrap();
            }
            parse_facts(&out).unwrap_or_else(|e| panic!("{e:#}\n{out}"))
        }

        async fn apply(host: &TestHost, plan: &HostPlan) {
            for st in &plan.steps {
                run(host, &st.script, st.stdin.as_ref())
                    .await
                    .unwrap_or_else(|e| panic!("{}: {e:#}", st.address));
            }
        }

        fn addresses(plan: &HostPlan) -> Vec<String> {
            plan.changes
                .iter()
                .map(|c| c.address.replace("state-1/", ""))
                .collect()
        }

        async fn entered(host: &TestHost) -> String {
            let cmd = format!("systemctl show -p ActiveEnterTimestampMonotonic --value {UNIT_NAME}");
            host.exec_ok(&cmd).await.unwrap().trim().to_string()
        }

        #[tokio::test]
        async fn converges_on_a_real_host() {
            let host = TestHost::boot("state-1", HostOptions::default())
                .await
                .expect("host boots");
            let spec = demo_spec("greeting = hello\n");
            validate(&spec).unwrap();

            // From scratch: everything but the package (already in the image).
            let facts = observe(&host, &spec).await;
            assert!(facts.systemd && facts.commands == ["systemctl"], "{facts:?}");
            let plan = plan_host("state-1", &spec, &facts);
            assert_eq!(
                addresses(&plan),
                [
                    "group:edgedemo",
                    "user:edgedemo",
                    "dir:/etc/edgectl demo",
                    "file:/etc/edgectl demo/demo.conf",
                    "file:/etc/edgectl demo/key.pem",
                    "file:/etc/systemd/system/edgectl-demo.service",
                    "unit:edgectl-demo.service",
                    "handler:daemon-reload",
                ]
            );
            apply(&host, &plan).await;
            let plan = plan_host("state-1", &spec, &observe(&host, &spec).await);
            assert!(
                plan.changes.is_empty() && plan.steps.is_empty(),
                "{:?}",
                plan.changes
            );
            let key = host
                .exec_ok("stat -c '%U:%G %a' '/etc/edgectl demo/key.pem'; id -Gn edgedemo")
                .await;
            assert_eq!(key.unwrap(), "root:edgedemo 440\nedgedemo adm\n");
            let t0 = entered(&host).await;
            assert_ne!(t0, "0");

            // A temp file left by an interrupted write is removed, not a change.
            host.exec_ok("echo partial > '/etc/edgectl demo/.demo.conf.edgectl-tmp'")
                .await
                .unwrap();
            let plan = plan_host("state-1", &spec, &observe(&host, &spec).await);
            assert!(plan.changes.is_empty(), "{:?}", plan.changes);
            let left = host
                .exec("test -e '/etc/edgectl demo/.demo.conf.edgectl-tmp'")
                .await
                .unwrap();
            assert!(!left.status.success(), "stale temp file not removed");

            // Mode drift: a chmod, no handler, no restart.
            host.exec_ok("chmod 0600 '/etc/edgectl demo/demo.conf'")
                .await
                .unwrap();
            let plan = plan_host("state-1", &spec, &observe(&host, &spec).await);
            assert_eq!(addresses(&plan), ["file:/etc/edgectl demo/demo.conf"]);
            assert_eq!(plan.changes[0].reason, "mode 0600 -> 0644");
            apply(&host, &plan).await;
            assert_eq!(entered(&host).await, t0, "restarted on a mode change");

            // Content change: the file, daemon-reload and a restart, with a diff.
            let spec = demo_spec("greeting = hi\n");
            let plan = plan_host("state-1", &spec, &observe(&host, &spec).await);
            assert_eq!(
                addresses(&plan),
                [
                    "file:/etc/edgectl demo/demo.conf",
                    "handler:daemon-reload",
                    "handler:restart edgectl-demo.service",
                ]
            );
            let diff = plan.changes[0]
                .fields
                .iter()
                .find(|f| f.name == "diff")
                .expect("diff");
            assert_eq!(
                diff.new,
                Value::known("@@ -1,1 +1,1 @@\n-greeting = hello\n+greeting = hi\n")
            );
            apply(&host, &plan).await;
            assert_ne!(entered(&host).await, t0, "not restarted after a content change");
            let plan = plan_host("state-1", &spec, &observe(&host, &spec).await);
            assert!(
                plan.changes.is_empty() && plan.steps.is_empty(),
                "{:?}",
                plan.changes
            );
            let conf = host.exec_ok("cat '/etc/edgectl demo/demo.conf'").await.unwrap();
            assert_eq!(conf, "greeting = hi\n");

            host.stop().await;
        }

        /// Serves `files` (path → bytes) over plain HTTP on the test hosts'
        /// services address, as a release site would.
        async fn serve(files: Vec<(&'static str, Vec<u8>)>) -> String {
            use tokio::io::AsyncReadExt;
            let ip = testkit::hosts::ensure_services_ip().expect("services address");
            let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
            let addr = listener.local_addr().unwrap();
            tokio::spawn(async move {
                loop {
                    let Ok((mut sock, _)) = listener.accept().await else {
                        return;
                    };
                    let files = files.clone();
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 4096];
                        let n = sock.read(&mut buf).await.unwrap_or(0);
                        let req = String::from_utf8_lossy(&buf[..n]).to_string();
                        let path = req.split_whitespace().nth(1).unwrap_or("").to_string();
                        let resp = match files.iter().find(|(p, _)| *p == path) {
                            Some((_, body)) => {
                                let mut r = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                                    body.len()
                                )
                                .into_bytes();
                                r.extend_from_slice(body);
                                r
                            }
                            None => {
                                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                                    .to_vec()
                            }
                        };
                        let _ = sock.write_all(&resp).await;
                    });
                }
            });
            format!("http://{addr}")
        }

        /// A zip holding `member` with `content`, made by Python's zipfile
        /// (no zip crate in the tree for one test).
        fn zip_of(member: &str, content: &[u8]) -> Vec<u8> {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(member), content).unwrap();
            let out = std::process::Command::new("python3")
                .current_dir(dir.path())
                .args([
                    "-c",
                    &format!(
                        "import zipfile; z = zipfile.ZipFile('a.zip', 'w'); z.write('{member}'); z.close()"
                    ),
                ])
                .output()
                .expect("python3 runs");
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            std::fs::read(dir.path().join("a.zip")).unwrap()
        }

        #[tokio::test]
        async fn downloads_are_checked_before_they_are_installed() {
            let tool = b"#!/bin/sh\necho tool v2\n".to_vec();
            let zip = zip_of("tool", &tool);
            let base = serve(vec![("/tool.zip", zip.clone()), ("/plain", tool.clone())]).await;
            let host = TestHost::boot("state-dl", HostOptions::default())
                .await
                .expect("host boots");
            let download =
                |path: &str, url: String, sha: String, member: Option<&str>, stale: Option<&str>| File {
                    path: path.into(),
                    content: Content::Download {
                        url,
                        sha256: sha,
                        unzip_member: member.map(str::to_string),
                        installed_sha256: None,
                        stale: stale.map(str::to_string),
                    },
                    owner: "root".into(),
                    group: "root".into(),
                    mode: 0o755,
                    notify: vec![],
                };
            let good = HostSpec {
                files: vec![
                    download(
                        "/usr/local/bin/edgectl-tool",
                        format!("{base}/tool.zip"),
                        sha256_hex(&zip),
                        Some("tool"),
                        None,
                    ),
                    download(
                        "/usr/local/bin/edgectl-plain",
                        format!("{base}/plain"),
                        sha256_hex(&tool),
                        None,
                        None,
                    ),
                ],
                ..HostSpec::default()
            };
            validate(&good).unwrap();
            let plan = plan_host("h", &good, &observe(&host, &good).await);
            assert_eq!(plan.changes.len(), 2, "{:?}", plan.changes);
            apply(&host, &plan).await;
            let out = host.exec_ok("/usr/local/bin/edgectl-tool; /usr/local/bin/edgectl-plain; stat -c %a /usr/local/bin/edgectl-tool").await.unwrap();
            assert_eq!(out, "tool v2\ntool v2\n755\n");
            assert!(
                plan_host("h", &good, &observe(&host, &good).await)
                    .changes
                    .is_empty(),
                "converged"
            );

            // A sum that does not match: refused, nothing installed, no leftovers.
            let bad = HostSpec {
                files: vec![download(
                    "/usr/local/bin/edgectl-bad",
                    format!("{base}/tool.zip"),
                    "0".repeat(64),
                    Some("tool"),
                    None,
                )],
                ..HostSpec::default()
            };
            let plan = plan_host("h", &bad, &observe(&host, &bad).await);
            let err = run(&host, &plan.steps[0].script, None)
                .await
                .expect_err("a bad sum fails");
            assert!(format!("{err:#}").contains("sha256 mismatch"), "{err:#}");
            let left = host.exec_ok("ls -a /usr/local/bin").await.unwrap();
            assert!(!left.contains("edgectl-bad"), "{left}");

            // An installed file of another version: replaced though no sum says so.
            std::fs::write(host.root_dir.join("usr/local/bin/edgectl-tool"), "old").unwrap();
            let mut stale = good.clone();
            stale.files.truncate(1);
            if let Content::Download { stale: s, .. } = &mut stale.files[0].content {
                *s = Some("installed version `v1`, wanted `v2`".into());
            }
            let plan = plan_host("h", &stale, &observe(&host, &stale).await);
            assert_eq!(plan.changes[0].reason, "installed version `v1`, wanted `v2`");
            apply(&host, &plan).await;
            assert_eq!(
                host.exec_ok("/usr/local/bin/edgectl-tool").await.unwrap(),
                "tool v2\n"
            );
            host.stop().await;
        }
    }
}
