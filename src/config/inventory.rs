//! The device inventory, in the Ansible YAML format the original sample used.
//!
//! An existing Ansible YAML inventory loads unchanged: groups under
//! `all.children` (nested to any depth) or at the top level, ungrouped hosts
//! under `all.hosts`, `vars` at every level, `host:port` keys. Jinja templates,
//! host ranges (`pi-[01:03]`) and `!vault` values are not evaluated.
//!
//! Variable precedence is Ansible's: `all.vars` < group vars, ordered by group
//! depth (a child group beats its parent), then `ansible_group_priority`, then
//! group name (alphabetically later wins) < host vars. A host listed in several
//! places gets the union of its groups; its own vars from each listing are
//! applied in file order, so the later listing wins.
//!
//! Connection vars: `ansible_host` (default: the host name), `ansible_port`
//! (default 22), `ansible_user` (default: the caller's local user) and
//! `ansible_ssh_private_key_file`; the old `ansible_ssh_*` and
//! `ansible_private_key_file` spellings are accepted. Other `ansible_*` vars
//! are ignored. edgectl's own vars are typed and validated:
//! `nomad_datacenter` (default: the name of the group that lists the host),
//! `container_runtime` (`docker` or `none`), `nomad_servers` (list of
//! `host[:port]`), `aws_credentials` (bool) and `nomad_node_class`.
//!
//! Every problem is one line, `FILE: PATH.TO.FIELD: what is wrong`, all of
//! them at once, as [`InvalidInput`] (exit 2).

use crate::error::{InvalidInput, User};
use serde_yaml::{Mapping, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

pub const DEFAULT_PORT: u16 = 22;

/// How many names an "unknown host/group" error lists before "… and N more".
const LIST_CAP: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inventory {
    pub path: PathBuf,
    /// Sorted by name.
    pub hosts: Vec<Host>,
    /// Every group named in the file (not the implicit `all`), sorted.
    pub groups: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    /// Every group the host is in, directly or through nested groups (not
    /// `all`), sorted.
    pub groups: Vec<String>,
    /// `ansible_host`, else the name.
    pub address: String,
    pub port: u16,
    pub user: String,
    /// `~/` expanded; a relative path is resolved against the inventory's directory.
    pub key_file: Option<PathBuf>,
    pub datacenter: String,
    pub container_runtime: Runtime,
    /// `None`: use the servers' load balancer.
    pub nomad_servers: Option<Vec<String>>,
    pub aws_credentials: bool,
    pub node_class: Option<String>,
    /// The remaining scalar vars (not `ansible_*`, not edgectl's own), stringified.
    pub vars: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Runtime {
    /// Docker is installed and Nomad's docker driver enabled.
    #[default]
    Docker,
    /// No container runtime: the device runs only `raw_exec`/`exec` tasks.
    None,
}

impl Runtime {
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::None => "none",
        }
    }
}

impl fmt::Display for Runtime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which hosts a command acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    Names(Vec<String>),
    /// A group, matching hosts in it directly or through nested groups;
    /// `all` is every host.
    Group(String),
    All,
}

/// Read and parse `path`; a missing file is a [`User`] error with a hint.
pub fn load(path: &Path, default_user: &str, home: &Path) -> anyhow::Result<Inventory> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(User::new(
                format!("{}: inventory not found", path.display()),
                "create it in the Ansible YAML inventory format; inventory/inventory.yml in the \
                 edgectl repository is a commented example",
            )
            .into())
        }
        Err(e) => anyhow::bail!("{}: cannot read the inventory: {e}", path.display()),
    };
    parse(&text, path, default_user, home)
}

/// Parse inventory text; `source` names the file in messages and anchors
/// relative key paths.
pub fn parse(text: &str, source: &Path, default_user: &str, home: &Path) -> anyhow::Result<Inventory> {
    let origin = source.display().to_string();
    let invalid = |problems: Vec<String>| -> anyhow::Error {
        let mut seen = BTreeSet::new();
        let lines = problems
            .into_iter()
            .filter(|p| seen.insert(p.clone()))
            // A key with a line break in it (`"h\nx":`) still makes one line.
            .map(|p| format!("{origin}: {}", p.replace('\n', "\\n").replace('\r', "\\r")))
            .collect();
        InvalidInput(lines).into()
    };
    let mut doc: Value = match serde_yaml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => return Err(InvalidInput(vec![yaml_error(&origin, &e)]).into()),
    };
    if let Err(e) = doc.apply_merge() {
        return Err(InvalidInput(vec![yaml_error(&origin, &e)]).into());
    }
    let top = match doc {
        Value::Null => {
            return Err(invalid(vec![
                "the inventory is empty; expected an `all:` group (the Ansible YAML inventory format)".into(),
            ]))
        }
        Value::Mapping(m) => m,
        other => {
            return Err(invalid(vec![format!(
            "expected a mapping of groups starting with `all:` (the Ansible YAML inventory format), got {}",
            show(&other)
        )]))
        }
    };
    let mut walk = Walk {
        base: source.parent().map(Path::to_path_buf).unwrap_or_default(),
        home,
        problems: Vec::new(),
        groups: BTreeMap::new(),
        hosts: BTreeMap::new(),
    };
    walk.groups.insert(ALL.to_string(), Group::default());
    for (key, value) in &top {
        let Some(name) = walk.name(key, "", "a group name") else {
            continue;
        };
        // Ansible: top-level keys other than `all` are groups under `all`.
        let parent = (name != ALL).then_some(ALL);
        walk.group(&name, value, &name, parent);
    }
    let inventory = walk.finish(source, default_user);
    match inventory {
        Ok(inv) if inv.hosts.is_empty() => Err(invalid(vec![
            "the inventory lists no hosts; add them under all.children.<group>.hosts".into(),
        ])),
        Ok(inv) => Ok(inv),
        Err(problems) => Err(invalid(problems)),
    }
}

impl Inventory {
    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts
            .binary_search_by(|h| h.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.hosts[i])
    }

    /// The hosts `sel` names: in the order given for [`Selection::Names`]
    /// (duplicates dropped), else sorted by name. Unknown names or groups and
    /// empty selections are [`InvalidInput`].
    pub fn select(&self, sel: &Selection) -> anyhow::Result<Vec<&Host>> {
        let origin = self.path.display();
        match sel {
            Selection::Names(names) => {
                let mut unknown = Vec::new();
                let mut picked: Vec<&Host> = Vec::new();
                for name in names {
                    match self.host(name) {
                        Some(h) if picked.iter().any(|p| p.name == h.name) => {}
                        Some(h) => picked.push(h),
                        None => unknown.push(format!("{name:?}")),
                    }
                }
                if !unknown.is_empty() {
                    let what = if unknown.len() == 1 { "host" } else { "hosts" };
                    let known = listing(self.hosts.iter().map(|h| h.name.as_str()));
                    return Err(InvalidInput(vec![format!(
                        "unknown {what} {} in {origin}; hosts: {known}",
                        unknown.join(", ")
                    )])
                    .into());
                }
                if picked.is_empty() {
                    return Err(InvalidInput(vec![format!("no hosts selected from {origin}")]).into());
                }
                Ok(picked)
            }
            Selection::All => {
                if self.hosts.is_empty() {
                    return Err(InvalidInput(vec![format!("{origin} lists no hosts")]).into());
                }
                Ok(self.hosts.iter().collect())
            }
            Selection::Group(group) if group == ALL => self.select(&Selection::All),
            Selection::Group(group) => {
                if !self.groups.contains(group) {
                    let known = listing(self.groups.iter().map(String::as_str));
                    return Err(InvalidInput(vec![format!(
                        "unknown group {group:?} in {origin}; groups: {known}"
                    )])
                    .into());
                }
                let hosts: Vec<&Host> = self.hosts.iter().filter(|h| h.groups.contains(group)).collect();
                if hosts.is_empty() {
                    return Err(
                        InvalidInput(vec![format!("group {group:?} in {origin} has no hosts")]).into(),
                    );
                }
                Ok(hosts)
            }
        }
    }
}

/// `a, b, c`, capped at [`LIST_CAP`] names; `(none)` if empty.
fn listing<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    if names.is_empty() {
        return "(none)".into();
    }
    let mut out = names
        .iter()
        .take(LIST_CAP)
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    if names.len() > LIST_CAP {
        out.push_str(&format!(" … and {} more", names.len() - LIST_CAP));
    }
    out
}

const ALL: &str = "all";

/// One line: `FILE:LINE:COLUMN: not valid YAML: …`.
fn yaml_error(origin: &str, e: &serde_yaml::Error) -> String {
    let mut msg = e.to_string().replace('\n', " ");
    match e.location() {
        Some(loc) => {
            let at = format!(" at line {} column {}", loc.line(), loc.column());
            msg = msg.replacen(&at, "", 1);
            format!("{origin}:{}:{}: not valid YAML: {msg}", loc.line(), loc.column())
        }
        None => format!("{origin}: not valid YAML: {msg}"),
    }
}

/// A typed variable, validated where it is defined.
#[derive(Debug, Clone, PartialEq)]
enum Var {
    Address(String),
    Port(u16),
    User(String),
    KeyFile(PathBuf),
    Datacenter(String),
    Runtime(Runtime),
    Servers(Vec<String>),
    Aws(bool),
    NodeClass(String),
    /// `ansible_group_priority`: orders groups of the same depth.
    Priority(i64),
    /// Anything else; `None` for lists, mappings, tagged values and null.
    Other(Option<String>),
}

/// One `vars:` block or a host's inline vars: canonical name → value.
type VarSet = BTreeMap<String, Var>;

#[derive(Debug, Default)]
struct Group {
    /// Where the group is defined (it may be listed more than once).
    paths: Vec<String>,
    vars: VarSet,
    parents: BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Listed {
    /// (group that lists the host directly, path of the listing), file order.
    by: Vec<(String, String)>,
    vars: VarSet,
}

struct Walk<'a> {
    base: PathBuf,
    home: &'a Path,
    problems: Vec<String>,
    groups: BTreeMap<String, Group>,
    hosts: BTreeMap<String, Listed>,
}

impl Walk<'_> {
    /// A mapping key as a name (strings and numbers), else a problem.
    fn name(&mut self, key: &Value, path: &str, what: &str) -> Option<String> {
        match key {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            other => {
                let at = if path.is_empty() {
                    String::new()
                } else {
                    format!("{path}: ")
                };
                self.problems
                    .push(format!("{at}expected {what}, got {}", show(other)));
                None
            }
        }
    }

    fn group(&mut self, name: &str, value: &Value, path: &str, parent: Option<&str>) {
        let group = self.groups.entry(name.to_string()).or_default();
        group.paths.push(path.to_string());
        if let Some(parent) = parent {
            group.parents.insert(parent.to_string());
        }
        let body = match value {
            Value::Null => return,
            Value::Mapping(m) => m,
            other => {
                self.problems.push(format!(
                    "{path}: expected a group (a mapping with vars, hosts or children), got {}",
                    show(other)
                ));
                return;
            }
        };
        for (key, value) in body {
            let Some(key) = self.name(key, path, "vars, hosts or children") else {
                continue;
            };
            let here = format!("{path}.{key}");
            match (key.as_str(), value) {
                (_, Value::Null) => {}
                ("vars", Value::Mapping(vars)) => {
                    let vars = self.vars(vars, &here);
                    let group = self.groups.get_mut(name).expect("registered above");
                    group.vars.extend(vars);
                }
                ("hosts", Value::Mapping(hosts)) => self.hosts(name, hosts, &here),
                ("children", Value::Mapping(children)) => {
                    for (child, value) in children {
                        let Some(child) = self.name(child, &here, "a group name") else {
                            continue;
                        };
                        let child_path = format!("{here}.{child}");
                        if child == ALL {
                            self.problems.push(format!(
                                "{child_path}: `all` is the top group and cannot be nested"
                            ));
                            continue;
                        }
                        self.group(&child, value, &child_path, Some(name));
                    }
                }
                ("hosts", other) => self.problems.push(format!(
                    "{here}: expected a mapping of host names (`pi-01:` on its own line), got {}",
                    show(other)
                )),
                ("vars" | "children", other) => self
                    .problems
                    .push(format!("{here}: expected a mapping, got {}", show(other))),
                _ => self.problems.push(format!(
                    "{here}: unknown key; a group holds only vars, hosts and children"
                )),
            }
        }
    }

    fn hosts(&mut self, group: &str, hosts: &Mapping, path: &str) {
        for (key, value) in hosts {
            let Some(key) = self.name(key, path, "a host name") else {
                continue;
            };
            let here = format!("{path}.{key}");
            // Ansible's `name:port` form.
            let (name, port) = match key.rsplit_once(':') {
                Some((name, port)) if !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()) => {
                    match port.parse::<u16>() {
                        Ok(p) if p > 0 => (name.to_string(), Some(p)),
                        _ => {
                            self.problems
                                .push(format!("{here}: port {port:?} in the host name is not 1-65535"));
                            continue;
                        }
                    }
                }
                _ => (key.clone(), None),
            };
            if let Err(why) = host_name(&name) {
                self.problems.push(format!("{here}: host name {name:?} {why}"));
                continue;
            }
            let mut vars = VarSet::new();
            if let Some(port) = port {
                vars.insert("ansible_port".into(), Var::Port(port));
            }
            match value {
                Value::Null => {}
                Value::Mapping(m) => vars.extend(self.vars(m, &here)),
                other => self.problems.push(format!(
                    "{here}: expected the host's vars as a mapping (or nothing), got {}",
                    show(other)
                )),
            }
            let listed = self.hosts.entry(name).or_default();
            listed.by.push((group.to_string(), here));
            listed.vars.extend(vars);
        }
    }

    /// Parse and validate one vars mapping; problems name `path.var`.
    fn vars(&mut self, vars: &Mapping, path: &str) -> VarSet {
        let mut set = VarSet::new();
        // canonical name → the spelling that set it, to catch conflicting aliases.
        let mut spelled: BTreeMap<&'static str, String> = BTreeMap::new();
        for (key, value) in vars {
            let Some(key) = self.name(key, path, "a variable name") else {
                continue;
            };
            let canonical: &'static str = match key.as_str() {
                "ansible_host" | "ansible_ssh_host" => "ansible_host",
                "ansible_port" | "ansible_ssh_port" => "ansible_port",
                "ansible_user" | "ansible_ssh_user" => "ansible_user",
                "ansible_ssh_private_key_file" | "ansible_private_key_file" => "ansible_ssh_private_key_file",
                "ansible_group_priority" => "ansible_group_priority",
                k if k.starts_with("ansible_") => continue,
                "nomad_datacenter" => "nomad_datacenter",
                "container_runtime" => "container_runtime",
                "nomad_servers" => "nomad_servers",
                "aws_credentials" => "aws_credentials",
                "nomad_node_class" => "nomad_node_class",
                _ => {
                    set.insert(key, Var::Other(scalar(value)));
                    continue;
                }
            };
            let var = match self.typed(canonical, value) {
                Ok(var) => var,
                Err(why) => {
                    self.problems.push(format!("{path}.{key}{why}"));
                    continue;
                }
            };
            if let Some(first) = spelled.get(canonical) {
                if set.get(canonical) != Some(&var) {
                    self.problems.push(format!(
                        "{path}.{key}: conflicts with {first} in the same vars; keep one"
                    ));
                }
                continue;
            }
            spelled.insert(canonical, key);
            set.insert(canonical.to_string(), var);
        }
        set
    }

    /// Err is the rest of the problem line after the var's path: `: why` or `[i]: why`.
    fn typed(&self, canonical: &str, value: &Value) -> Result<Var, String> {
        let bad = |why: String| format!(": {why}");
        match canonical {
            "ansible_host" => {
                let s = text(value).map_err(bad)?;
                address(&s).map_err(|why| bad(format!("{s:?} {why}")))?;
                Ok(Var::Address(s))
            }
            "ansible_port" => port(value).map(Var::Port).map_err(bad),
            "ansible_user" => {
                let s = text(value).map_err(bad)?;
                if s.is_empty()
                    || s.starts_with('-')
                    || s.contains(|c: char| c.is_whitespace() || c.is_control())
                {
                    return Err(bad(format!(
                        "{s:?} is not a user name (no spaces, not starting with '-')"
                    )));
                }
                Ok(Var::User(s))
            }
            "ansible_ssh_private_key_file" => {
                let s = text(value).map_err(bad)?;
                self.key_path(&s).map(Var::KeyFile).map_err(bad)
            }
            "ansible_group_priority" => match value {
                Value::Number(n) if n.as_i64().is_some() => Ok(Var::Priority(n.as_i64().unwrap_or(1))),
                Value::String(s) if s.trim().parse::<i64>().is_ok() => {
                    Ok(Var::Priority(s.trim().parse().unwrap_or(1)))
                }
                other => Err(bad(format!("expected a whole number, got {}", show(other)))),
            },
            "nomad_datacenter" => {
                let s = text(value).map_err(bad)?;
                if !nomad_name(&s) {
                    return Err(bad(format!("{s:?} may hold only letters, digits, '-' and '_'")));
                }
                Ok(Var::Datacenter(s))
            }
            "container_runtime" => match value {
                Value::String(s) if s == "docker" => Ok(Var::Runtime(Runtime::Docker)),
                Value::String(s) if s == "none" => Ok(Var::Runtime(Runtime::None)),
                other => Err(bad(format!(
                    "expected \"docker\" or \"none\", got {}",
                    show(other)
                ))),
            },
            "nomad_servers" => {
                let Value::Sequence(items) = value else {
                    return Err(bad(format!(
                        "expected a list of host[:port] strings, got {}",
                        show(value)
                    )));
                };
                if items.is_empty() {
                    return Err(bad(
                        "empty list; name at least one server, or leave it out to use the load balancer"
                            .into(),
                    ));
                }
                let mut servers = Vec::new();
                for (i, item) in items.iter().enumerate() {
                    let s = text(item).map_err(|why| format!("[{i}]: {why}"))?;
                    server(&s).map_err(|why| format!("[{i}]: {s:?} {why}"))?;
                    servers.push(s);
                }
                Ok(Var::Servers(servers))
            }
            "aws_credentials" => boolean(value).map(Var::Aws).map_err(bad),
            "nomad_node_class" => {
                let s = text(value).map_err(bad)?;
                if s.is_empty()
                    || s.contains(|c: char| c.is_whitespace() || c.is_control() || c == '"' || c == '\\')
                {
                    return Err(bad(format!(
                        "{s:?} must be non-empty, without spaces, quotes or backslashes"
                    )));
                }
                Ok(Var::NodeClass(s))
            }
            _ => unreachable!("every canonical name is handled"),
        }
    }

    fn key_path(&self, s: &str) -> Result<PathBuf, String> {
        if s.is_empty() {
            return Err("must not be empty".into());
        }
        if s == "~" {
            return Ok(self.home.to_path_buf());
        }
        if let Some(rest) = s.strip_prefix("~/") {
            return Ok(self.home.join(rest));
        }
        if s.starts_with('~') {
            return Err(format!("{s:?}: only ~/ (your own home) is expanded"));
        }
        let path = Path::new(s);
        Ok(if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        })
    }

    /// Depth of every group below `all` (Ansible: the longest path from
    /// `all`); a cycle is a problem.
    fn depths(&mut self) -> BTreeMap<String, usize> {
        fn depth(
            name: &str,
            groups: &BTreeMap<String, Group>,
            memo: &mut BTreeMap<String, usize>,
            stack: &mut Vec<String>,
            cycles: &mut Vec<Vec<String>>,
        ) -> usize {
            if name == ALL {
                return 0;
            }
            if let Some(d) = memo.get(name) {
                return *d;
            }
            if let Some(at) = stack.iter().position(|g| g == name) {
                let mut cycle = stack[at..].to_vec();
                cycle.push(name.to_string());
                cycles.push(cycle);
                return 0;
            }
            stack.push(name.to_string());
            let parents = &groups[name].parents;
            let d = parents
                .iter()
                .map(|p| depth(p, groups, memo, stack, cycles) + 1)
                .max()
                .unwrap_or(1);
            stack.pop();
            memo.insert(name.to_string(), d);
            d
        }
        let mut memo = BTreeMap::new();
        let mut cycles = Vec::new();
        for name in self.groups.keys() {
            depth(name, &self.groups, &mut memo, &mut Vec::new(), &mut cycles);
        }
        let mut seen = BTreeSet::new();
        for cycle in cycles {
            let members: BTreeSet<&String> = cycle.iter().collect();
            if !seen.insert(members.into_iter().cloned().collect::<Vec<_>>()) {
                continue;
            }
            let path = &self.groups[&cycle[0]].paths[0];
            self.problems.push(format!(
                "{path}: group {:?} contains itself ({})",
                cycle[0],
                cycle.join(" → ")
            ));
        }
        memo.insert(ALL.to_string(), 0);
        memo
    }

    /// `name` and every group above it, `all` included.
    fn ancestors(&self, name: &str, out: &mut BTreeSet<String>) {
        if out.insert(name.to_string()) {
            for parent in &self.groups[name].parents {
                self.ancestors(parent, out);
            }
        }
        out.insert(ALL.to_string());
    }

    fn finish(mut self, source: &Path, default_user: &str) -> Result<Inventory, Vec<String>> {
        let depths = self.depths();
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        // The same host spelled in two cases is one device listed twice by mistake.
        let mut lower: BTreeMap<String, &str> = BTreeMap::new();
        for name in self.hosts.keys() {
            if let Some(other) = lower.insert(name.to_ascii_lowercase(), name) {
                self.problems.push(format!(
                    "{}: host {name:?} differs from {other:?} only in case; use one spelling",
                    self.hosts[name].by[0].1
                ));
            }
        }
        let priority = |g: &Group| match g.vars.get("ansible_group_priority") {
            Some(Var::Priority(p)) => *p,
            _ => 1,
        };
        // Groups whose names became a datacenter but are not valid ones: group → hosts.
        let mut bad_dc: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut hosts = Vec::new();
        for (name, listed) in &self.hosts {
            let mut member = BTreeSet::new();
            for (group, _) in &listed.by {
                self.ancestors(group, &mut member);
            }
            let mut chain: Vec<&String> = member.iter().collect();
            chain.sort_by_key(|g| {
                (
                    depths.get(*g).copied().unwrap_or(1),
                    priority(&self.groups[*g]),
                    *g,
                )
            });
            let mut vars = VarSet::new();
            for g in chain {
                vars.extend(
                    self.groups[g]
                        .vars
                        .iter()
                        .filter(|(k, _)| *k != "ansible_group_priority")
                        .map(|(k, v)| (k.clone(), v.clone())),
                );
            }
            vars.extend(listed.vars.iter().map(|(k, v)| (k.clone(), v.clone())));
            let at = &listed.by[0].1;

            let direct: BTreeSet<&str> = listed
                .by
                .iter()
                .map(|(g, _)| g.as_str())
                .filter(|g| *g != ALL)
                .collect();
            let datacenter = match (vars.remove("nomad_datacenter"), direct.len()) {
                (Some(Var::Datacenter(dc)), _) => dc,
                (_, 0) => {
                    self.problems.push(format!(
                        "{at}: ungrouped host {name:?} has no nomad_datacenter; list it under a group (the group \
                         name becomes its datacenter) or set nomad_datacenter"
                    ));
                    continue;
                }
                (_, 1) => {
                    let group = direct.first().expect("one").to_string();
                    if !nomad_name(&group) {
                        bad_dc.entry(group.clone()).or_default().push(name.clone());
                    }
                    group
                }
                (_, _) => {
                    let groups: Vec<&str> = direct.iter().copied().collect();
                    self.problems.push(format!(
                        "{at}: host {name:?} is listed directly by groups {}, so its datacenter is ambiguous; \
                         set nomad_datacenter for it",
                        and_list(&groups)
                    ));
                    continue;
                }
            };
            let mut host = Host {
                name: name.clone(),
                groups: member.into_iter().filter(|g| g != ALL).collect(),
                address: name.clone(),
                port: DEFAULT_PORT,
                user: default_user.to_string(),
                key_file: None,
                datacenter,
                container_runtime: Runtime::Docker,
                nomad_servers: None,
                aws_credentials: true,
                node_class: None,
                vars: BTreeMap::new(),
            };
            for (key, var) in vars {
                match var {
                    Var::Address(a) => host.address = a,
                    Var::Port(p) => host.port = p,
                    Var::User(u) => host.user = u,
                    Var::KeyFile(k) => host.key_file = Some(k),
                    Var::Runtime(r) => host.container_runtime = r,
                    Var::Servers(s) => host.nomad_servers = Some(s),
                    Var::Aws(b) => host.aws_credentials = b,
                    Var::NodeClass(c) => host.node_class = Some(c),
                    Var::Other(Some(s)) => {
                        host.vars.insert(key, s);
                    }
                    Var::Other(None) | Var::Datacenter(_) | Var::Priority(_) => {}
                }
            }
            if host.user.is_empty() {
                self.problems.push(format!(
                    "{at}: no ansible_user for host {name:?} and the local user name is unknown; set ansible_user"
                ));
            }
            hosts.push(host);
        }
        for (group, names) in bad_dc {
            let path = &self.groups[&group].paths[0];
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            self.problems.push(format!(
                "{path}: group name {group:?} is the Nomad datacenter of {} but may hold only letters, digits, \
                 '-' and '_'; rename the group or set nomad_datacenter",
                and_list(&names)
            ));
        }
        if !self.problems.is_empty() {
            return Err(self.problems);
        }
        Ok(Inventory {
            path: source.to_path_buf(),
            hosts,
            groups: self.groups.into_keys().filter(|g| g != ALL).collect(),
        })
    }
}

fn and_list(items: &[&str]) -> String {
    match items {
        [] => String::new(),
        [one] => one.to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// A value for messages: strings quoted, scalars as written, others by kind.
fn show(v: &Value) -> String {
    match v {
        Value::Null => "nothing".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a {} value", t.tag),
    }
}

/// A scalar var stringified, as Ansible would template it.
fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::Bool(b) => Some(if *b { "True" } else { "False" }.into()),
        Value::Number(n) => Some(n.to_string()),
        Value::String(s) => Some(s.clone()),
        _ => None,
    }
}

/// A string (or number) value for a typed var; templates are refused.
fn text(v: &Value) -> Result<String, String> {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Tagged(t) => {
            return Err(format!(
                "{} values are not supported; put the value itself",
                t.tag
            ))
        }
        other => return Err(format!("expected a string, got {}", show(other))),
    };
    if s.contains("{{") || s.contains("{%") {
        return Err(format!(
            "{s:?}: Jinja templates are not evaluated by edgectl; put the value itself"
        ));
    }
    Ok(s)
}

fn port(v: &Value) -> Result<u16, String> {
    let p = match v {
        Value::Number(n) => n.as_u64().and_then(|n| u16::try_from(n).ok()),
        Value::String(s) => s.trim().parse::<u16>().ok(),
        _ => None,
    };
    match p {
        Some(p) if p > 0 => Ok(p),
        _ => Err(format!("expected a port 1-65535, got {}", show(v))),
    }
}

/// Ansible's booleans: true/false, yes/no, on/off, 1/0.
fn boolean(v: &Value) -> Result<bool, String> {
    match v {
        Value::Bool(b) => return Ok(*b),
        Value::Number(n) if n.as_u64() == Some(1) => return Ok(true),
        Value::Number(n) if n.as_u64() == Some(0) => return Ok(false),
        Value::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => return Ok(true),
            "false" | "no" | "off" | "0" => return Ok(false),
            _ => {}
        },
        _ => {}
    }
    Err(format!("expected true or false, got {}", show(v)))
}

/// `[A-Za-z0-9][A-Za-z0-9.-]*`, at most 253 characters.
fn host_name(name: &str) -> Result<(), String> {
    if name.contains('[') && name.contains(']') {
        return Err("is a host range; edgectl does not expand ranges, list each host".into());
    }
    let ok = name.len() <= 253
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("may hold only letters, digits, '.' and '-', starting with a letter or digit".into())
    }
}

/// A host name or IP address to connect to.
fn address(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && !s.starts_with('-')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_' | '%'));
    if ok {
        Ok(())
    } else {
        Err("is not a host name or IP address".into())
    }
}

/// `host[:port]` or `[ipv6][:port]`, no scheme.
fn server(s: &str) -> Result<(), String> {
    if s.contains("://") {
        return Err("must be host[:port] without a scheme (like 10.0.1.5:4647)".into());
    }
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((ip, after)) = rest.split_once(']') else {
            return Err("has an unclosed '['".into());
        };
        if ip.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("is not an [IPv6]:port address".into());
        }
        match after {
            "" => (None, None),
            _ => match after.strip_prefix(':') {
                Some(port) => (None, Some(port)),
                None => return Err("has text after ']' that is not :port".into()),
            },
        }
    } else {
        match s.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(s), None),
        }
    };
    if let Some(host) = host {
        if host_name(host).is_err() {
            return Err("is not host[:port] (write IPv6 as [addr]:port)".into());
        }
    }
    if let Some(port) = port {
        if !matches!(port.parse::<u16>(), Ok(p) if p > 0) {
            return Err(format!("has port {port:?}, not 1-65535"));
        }
    }
    Ok(())
}

/// What Nomad accepts as a datacenter name.
fn nomad_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOME: &str = "/home/me";
    const SOURCE: &str = "/etc/edge/inventory.yml";

    const SAMPLE: &str = "
all:
  vars: {ansible_user: pi}
  children:
    robot1:
      vars: {nomad_datacenter: dc-robot1}
      hosts:
        pi-01: {ansible_host: 192.168.1.50, ansible_port: 22, ansible_user: pi, ansible_ssh_private_key_file: ~/.ssh/pi_ed25519}
        pi-02:
    robot2:
      hosts:
        pi-03: {ansible_port: '2222', ansible_python_interpreter: /usr/bin/python3, camera: true, site: lab}
";

    fn inv(text: &str) -> Inventory {
        parse(text, Path::new(SOURCE), "me", Path::new(HOME)).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The problem lines, without the file prefix.
    fn problems(text: &str) -> Vec<String> {
        let err = parse(text, Path::new("inventory.yml"), "me", Path::new(HOME)).expect_err("invalid");
        let invalid = err.downcast_ref::<InvalidInput>().expect("InvalidInput");
        invalid
            .0
            .iter()
            .map(|p| {
                p.strip_prefix("inventory.yml: ")
                    .unwrap_or_else(|| panic!("no prefix: {p}"))
                    .to_string()
            })
            .collect()
    }

    fn host<'a>(inv: &'a Inventory, name: &str) -> &'a Host {
        inv.host(name).unwrap_or_else(|| panic!("no host {name}"))
    }

    #[test]
    fn the_sample_inventory() {
        let inv = inv(SAMPLE);
        assert_eq!(inv.path, PathBuf::from(SOURCE));
        assert_eq!(inv.groups, ["robot1", "robot2"]);
        let names: Vec<&str> = inv.hosts.iter().map(|h| h.name.as_str()).collect();
        assert_eq!(names, ["pi-01", "pi-02", "pi-03"]);
        assert_eq!(
            inv.hosts[0],
            Host {
                name: "pi-01".into(),
                groups: vec!["robot1".into()],
                address: "192.168.1.50".into(),
                port: 22,
                user: "pi".into(),
                key_file: Some("/home/me/.ssh/pi_ed25519".into()),
                datacenter: "dc-robot1".into(),
                container_runtime: Runtime::Docker,
                nomad_servers: None,
                aws_credentials: true,
                node_class: None,
                vars: BTreeMap::new(),
            }
        );
        let pi02 = host(&inv, "pi-02");
        assert_eq!(
            (pi02.address.as_str(), pi02.port, pi02.user.as_str()),
            ("pi-02", 22, "pi")
        );
        assert_eq!(pi02.key_file, None);
        let pi03 = host(&inv, "pi-03");
        assert_eq!((pi03.port, pi03.datacenter.as_str()), (2222, "robot2"));
        let vars: Vec<(&str, &str)> = pi03.vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            vars,
            [("camera", "True"), ("site", "lab")],
            "ansible_* dropped, others kept"
        );
    }

    #[test]
    fn the_repository_example_parses() {
        let text = include_str!("../../inventory/inventory.yml");
        let inv = parse(text, Path::new("inventory/inventory.yml"), "me", Path::new(HOME)).unwrap();
        assert_eq!(inv.groups, ["robot1", "robot2"]);
        let summary: Vec<_> = inv
            .hosts
            .iter()
            .map(|h| {
                (
                    h.name.as_str(),
                    h.datacenter.as_str(),
                    h.user.as_str(),
                    h.container_runtime,
                    h.port,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                ("pi-01", "robot1", "pi", Runtime::Docker, 22),
                ("pi-02", "robot1", "pi", Runtime::None, 22),
                ("pi-03", "robot2", "pi", Runtime::Docker, 2222),
            ]
        );
        assert!(inv
            .hosts
            .iter()
            .all(|h| h.key_file == Some("/home/me/.ssh/pi_ed25519".into())));
        assert_eq!(host(&inv, "pi-03").node_class.as_deref(), Some("arm-camera"));
    }

    #[test]
    fn nested_groups_and_precedence() {
        let text = "
all:
  vars: {ansible_user: all-user, ansible_port: 1001, site: all, level: all, aws_credentials: 'no'}
  children:
    fleet:
      vars: {ansible_port: 1002, level: fleet, container_runtime: none}
      children:
        robot2:
          vars: {level: robot2, nomad_node_class: cam}
          children:
            arm:
              vars: {level: arm}
              hosts:
                pi-10: {level: host}
                pi-11:
          hosts:
            pi-12:
    other:
      hosts:
        pi-13: {ansible_ssh_user: old, ansible_ssh_port: 2200, ansible_ssh_host: 10.0.0.13}
";
        let inv = inv(text);
        assert_eq!(inv.groups, ["arm", "fleet", "other", "robot2"]);
        // name, groups, datacenter, var `level`, port, user, runtime
        type Case<'a> = (&'a str, &'a [&'a str], &'a str, &'a str, u16, &'a str, Runtime);
        let cases: &[Case] = &[
            (
                "pi-10",
                &["arm", "fleet", "robot2"],
                "arm",
                "host",
                1002,
                "all-user",
                Runtime::None,
            ),
            (
                "pi-11",
                &["arm", "fleet", "robot2"],
                "arm",
                "arm",
                1002,
                "all-user",
                Runtime::None,
            ),
            (
                "pi-12",
                &["fleet", "robot2"],
                "robot2",
                "robot2",
                1002,
                "all-user",
                Runtime::None,
            ),
            ("pi-13", &["other"], "other", "all", 2200, "old", Runtime::Docker),
        ];
        for (name, groups, dc, level, port, user, runtime) in cases {
            let h = host(&inv, name);
            assert_eq!(h.groups, *groups, "{name}");
            assert_eq!(h.datacenter, *dc, "{name}");
            assert_eq!(h.vars["level"], *level, "{name}");
            assert_eq!(h.vars["site"], "all", "{name}");
            assert_eq!(h.port, *port, "{name}");
            assert_eq!(h.user, *user, "{name}");
            assert_eq!(h.container_runtime, *runtime, "{name}");
            assert!(!h.aws_credentials, "{name}");
        }
        assert_eq!(host(&inv, "pi-13").address, "10.0.0.13");
        assert_eq!(host(&inv, "pi-12").node_class.as_deref(), Some("cam"));
        assert_eq!(host(&inv, "pi-13").node_class, None);
    }

    #[test]
    fn a_host_in_several_groups_merges_deeper_then_later_groups() {
        // pi-01 is in a (depth 1), b (depth 1) and inner (depth 2, under a).
        let text = "
all:
  children:
    b:
      vars: {x: b, y: b, z: b, nomad_datacenter: dc-b}
      hosts:
        pi-01: {h: first}
    a:
      vars: {x: a, y: a, z: a}
      children:
        inner:
          vars: {x: inner}
          hosts:
            pi-01: {h: second}
    prio:
      vars: {ansible_group_priority: 10, z: prio}
      hosts:
        pi-01:
";
        let inv = inv(text);
        let h = host(&inv, "pi-01");
        assert_eq!(h.groups, ["a", "b", "inner", "prio"]);
        assert_eq!(h.vars["x"], "inner", "a deeper group wins");
        assert_eq!(
            h.vars["y"], "b",
            "same depth: the alphabetically later group wins"
        );
        assert_eq!(h.vars["z"], "prio", "ansible_group_priority beats the name");
        assert_eq!(h.vars["h"], "second", "host vars: the later listing wins");
        assert_eq!(
            h.datacenter, "dc-b",
            "nomad_datacenter settles several direct groups"
        );
        assert!(!h.vars.contains_key("ansible_group_priority"));
    }

    #[test]
    fn ungrouped_hosts_and_top_level_groups() {
        let inv = inv("
all:
  hosts:
    pi-01: {nomad_datacenter: lab}
    pi-02:
robot1:
  hosts:
    pi-02:
    pi-03:2222:
");
        assert_eq!(host(&inv, "pi-01").datacenter, "lab");
        assert!(host(&inv, "pi-01").groups.is_empty());
        assert_eq!(
            host(&inv, "pi-02").datacenter,
            "robot1",
            "all.hosts does not count as a group"
        );
        assert_eq!(host(&inv, "pi-03").port, 2222, "Ansible's name:port form");
        assert_eq!(host(&inv, "pi-03").address, "pi-03");
    }

    #[test]
    fn key_paths_expand_home_and_resolve_against_the_inventory() {
        let cases = [
            ("~/.ssh/id", "/home/me/.ssh/id"),
            ("~", "/home/me"),
            ("keys/pi", "/etc/edge/keys/pi"),
            ("./keys/pi", "/etc/edge/./keys/pi"),
            ("/abs/key", "/abs/key"),
        ];
        for (written, want) in cases {
            for var in ["ansible_ssh_private_key_file", "ansible_private_key_file"] {
                let inv = inv(&format!(
                    "all:\n  children:\n    g:\n      hosts:\n        pi-01: {{{var}: '{written}'}}\n"
                ));
                assert_eq!(
                    inv.hosts[0].key_file,
                    Some(PathBuf::from(want)),
                    "{var}: {written}"
                );
            }
        }
        let inv = parse(
            "all: {children: {g: {hosts: {pi-01: {ansible_ssh_private_key_file: k}}}}}",
            Path::new("inventory.yml"),
            "me",
            Path::new(HOME),
        )
        .unwrap();
        assert_eq!(inv.hosts[0].key_file, Some(PathBuf::from("k")));
    }

    #[test]
    fn default_user_is_the_callers() {
        let inv = inv("all: {children: {g: {hosts: {pi-01: }}}}");
        assert_eq!(inv.hosts[0].user, "me");
        let p = parse(
            "all: {children: {g: {hosts: {pi-01: }}}}",
            Path::new("i.yml"),
            "",
            Path::new(HOME),
        );
        assert!(format!("{:#}", p.unwrap_err()).contains("set ansible_user"));
    }

    #[test]
    fn nomad_servers_and_flags() {
        let inv = inv("
all:
  children:
    g:
      vars: {nomad_servers: ['10.0.1.5:4647', nomad.internal, '[fd00::1]:4647'], aws_credentials: false}
      hosts: {pi-01: , pi-02: {aws_credentials: yes}}
");
        let servers = ["10.0.1.5:4647", "nomad.internal", "[fd00::1]:4647"]
            .map(String::from)
            .to_vec();
        assert_eq!(host(&inv, "pi-01").nomad_servers, Some(servers));
        assert!(!host(&inv, "pi-01").aws_credentials);
        assert!(host(&inv, "pi-02").aws_credentials);
    }

    /// Each case is a whole inventory and the problem lines it must produce.
    #[test]
    fn table_of_invalid_inventories() {
        let group = |hosts: &str| format!("all:\n  children:\n    robot1:\n      hosts:\n{hosts}");
        let cases: Vec<(String, Vec<&str>)> = vec![
            (
                group("        pi-01: {ansible_port: abc}\n"),
                vec![r#"all.children.robot1.hosts.pi-01.ansible_port: expected a port 1-65535, got "abc""#],
            ),
            (
                group("        pi-01: {ansible_port: 70000}\n        pi-02: {ansible_ssh_port: 0}\n"),
                vec![
                    "all.children.robot1.hosts.pi-01.ansible_port: expected a port 1-65535, got 70000",
                    "all.children.robot1.hosts.pi-02.ansible_ssh_port: expected a port 1-65535, got 0",
                ],
            ),
            (
                group("        pi-01: {container_runtime: podman}\n"),
                vec![r#"all.children.robot1.hosts.pi-01.container_runtime: expected "docker" or "none", got "podman""#],
            ),
            (
                "all:\n  vars: {nomad_datacenter: 'dc 1'}\n  children: {g: {hosts: {pi-01: }}}\n".into(),
                vec![r#"all.vars.nomad_datacenter: "dc 1" may hold only letters, digits, '-' and '_'"#],
            ),
            (
                "all:\n  children:\n    robot.1:\n      hosts: {pi-01: , pi-02: }\n".into(),
                vec![
                    "all.children.robot.1: group name \"robot.1\" is the Nomad datacenter of pi-01 and pi-02 but may hold \
                     only letters, digits, '-' and '_'; rename the group or set nomad_datacenter",
                ],
            ),
            (
                "all:\n  hosts:\n    pi-01:\n".into(),
                vec![
                    "all.hosts.pi-01: ungrouped host \"pi-01\" has no nomad_datacenter; list it under a group (the \
                     group name becomes its datacenter) or set nomad_datacenter",
                ],
            ),
            (
                "all:\n  children:\n    robot1: {hosts: {pi-01: }}\n    robot2: {hosts: {pi-01: }}\n".into(),
                vec![
                    "all.children.robot1.hosts.pi-01: host \"pi-01\" is listed directly by groups robot1 and \
                     robot2, so its datacenter is ambiguous; set nomad_datacenter for it",
                ],
            ),
            (
                group("        pi_01:\n        -pi:\n        pi-[01:03]:\n"),
                vec![
                    "all.children.robot1.hosts.pi_01: host name \"pi_01\" may hold only letters, digits, '.' and \
                     '-', starting with a letter or digit",
                    "all.children.robot1.hosts.-pi: host name \"-pi\" may hold only letters, digits, '.' and '-', \
                     starting with a letter or digit",
                    "all.children.robot1.hosts.pi-[01:03]: host name \"pi-[01:03]\" is a host range; edgectl does \
                     not expand ranges, list each host",
                ],
            ),
            (
                "all:\n  children:\n    a: {hosts: {pi-01: }}\n    b: {hosts: {PI-01: }}\n".into(),
                vec![r#"all.children.a.hosts.pi-01: host "pi-01" differs from "PI-01" only in case; use one spelling"#],
            ),
            (
                group("        pi-01: {aws_credentials: maybe, nomad_node_class: 'a b', nomad_servers: 'x:1'}\n"),
                vec![
                    r#"all.children.robot1.hosts.pi-01.aws_credentials: expected true or false, got "maybe""#,
                    r#"all.children.robot1.hosts.pi-01.nomad_node_class: "a b" must be non-empty, without spaces, quotes or backslashes"#,
                    r#"all.children.robot1.hosts.pi-01.nomad_servers: expected a list of host[:port] strings, got "x:1""#,
                ],
            ),
            (
                group("        pi-01: {nomad_servers: [ok.example, 'http://x:4647', 'y:99999']}\n"),
                vec![
                    r#"all.children.robot1.hosts.pi-01.nomad_servers[1]: "http://x:4647" must be host[:port] without a scheme (like 10.0.1.5:4647)"#,
                ],
            ),
            (
                group("        pi-01: {ansible_host: 'a b', ansible_user: '-oProxyCommand=x', ansible_ssh_private_key_file: '~bob/k'}\n"),
                vec![
                    r#"all.children.robot1.hosts.pi-01.ansible_host: "a b" is not a host name or IP address"#,
                    r#"all.children.robot1.hosts.pi-01.ansible_user: "-oProxyCommand=x" is not a user name (no spaces, not starting with '-')"#,
                    r#"all.children.robot1.hosts.pi-01.ansible_ssh_private_key_file: "~bob/k": only ~/ (your own home) is expanded"#,
                ],
            ),
            (
                group("        pi-01: {ansible_host: a.example, ansible_ssh_host: b.example}\n"),
                vec!["all.children.robot1.hosts.pi-01.ansible_ssh_host: conflicts with ansible_host in the same vars; keep one"],
            ),
            (
                group("        pi-01: {ansible_host: '{{ lookup(\"env\", \"IP\") }}'}\n"),
                vec![
                    r#"all.children.robot1.hosts.pi-01.ansible_host: "{{ lookup(\"env\", \"IP\") }}": Jinja templates are not evaluated by edgectl; put the value itself"#,
                ],
            ),
            (
                "all:\n  children:\n    robot1:\n      host:\n        pi-01:\n    robot2: [pi-02]\n".into(),
                vec![
                    "all.children.robot1.host: unknown key; a group holds only vars, hosts and children",
                    "all.children.robot2: expected a group (a mapping with vars, hosts or children), got a list",
                ],
            ),
            (
                "all:\n  children:\n    robot1:\n      hosts: [pi-01]\n".into(),
                vec!["all.children.robot1.hosts: expected a mapping of host names (`pi-01:` on its own line), got a list"],
            ),
            (
                "all:\n  children:\n    a: {children: {b: {hosts: {pi-01: }}}}\n    b: {children: {a: }}\n".into(),
                vec![r#"all.children.a: group "a" contains itself (a → b → a)"#],
            ),
            (
                "all:\n  children:\n    g:\n      children: {all: }\n      hosts: {pi-01: }\n".into(),
                vec!["all.children.g.children.all: `all` is the top group and cannot be nested"],
            ),
            ("".into(), vec!["the inventory is empty; expected an `all:` group (the Ansible YAML inventory format)"]),
            ("# only a comment\n".into(), vec!["the inventory is empty; expected an `all:` group (the Ansible YAML inventory format)"]),
            (
                "- pi-01\n".into(),
                vec!["expected a mapping of groups starting with `all:` (the Ansible YAML inventory format), got a list"],
            ),
            ("all:\n".into(), vec!["the inventory lists no hosts; add them under all.children.<group>.hosts"]),
            (
                "robot1:\n  vars: {x: 1}\n".into(),
                vec!["the inventory lists no hosts; add them under all.children.<group>.hosts"],
            ),
        ];
        for (text, want) in cases {
            assert_eq!(problems(&text), want, "inventory:\n{text}");
        }
    }

    #[test]
    fn a_bad_group_var_is_reported_once_and_all_problems_together() {
        let p = problems(
            "all:\n  children:\n    g:\n      vars: {ansible_port: x}\n      hosts: {pi-01: , pi-02: {container_runtime: x}}\n",
        );
        assert_eq!(
            p,
            [
                r#"all.children.g.vars.ansible_port: expected a port 1-65535, got "x""#,
                r#"all.children.g.hosts.pi-02.container_runtime: expected "docker" or "none", got "x""#,
            ]
        );
    }

    #[test]
    fn yaml_syntax_errors_are_one_line_with_line_and_column() {
        let cases = [
            ("all:\n  children:\n    robot1: {hosts: [}\n", "inventory.yml:3:"),
            (
                "all:\n  hosts:\n    pi-01:\n    pi-01:\n",
                "inventory.yml:3:5: not valid YAML: all.hosts: duplicate entry with key \"pi-01\"",
            ),
            ("all:\n\tchildren:\n", "inventory.yml:2:"),
        ];
        for (text, prefix) in cases {
            let err = parse(text, Path::new("inventory.yml"), "me", Path::new(HOME)).unwrap_err();
            let lines = &err.downcast_ref::<InvalidInput>().expect("InvalidInput").0;
            assert_eq!(lines.len(), 1, "{lines:?}");
            assert!(lines[0].starts_with(prefix), "{text:?}: {}", lines[0]);
            assert!(lines[0].contains("not valid YAML"), "{}", lines[0]);
            assert!(!lines[0].contains('\n'));
        }
    }

    #[test]
    fn a_missing_file_has_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let err = load(&dir.path().join("inventory.yml"), "me", Path::new(HOME)).unwrap_err();
        assert!(
            err.to_string().ends_with("inventory.yml: inventory not found"),
            "{err}"
        );
        let hints = crate::error::hints(&err);
        assert_eq!(hints.len(), 1);
        assert!(hints[0].contains("inventory/inventory.yml"), "{hints:?}");

        let path = dir.path().join("inventory.yml");
        std::fs::write(
            &path,
            "all: {children: {g: {hosts: {pi-01: {ansible_ssh_private_key_file: k}}}}}",
        )
        .unwrap();
        let inv = load(&path, "me", Path::new(HOME)).unwrap();
        assert_eq!(inv.hosts[0].key_file, Some(dir.path().join("k")));
    }

    #[test]
    fn selection() {
        let inv = inv("
all:
  hosts:
    solo: {nomad_datacenter: lab}
  children:
    fleet:
      children:
        robot1: {hosts: {pi-01: , pi-02: }}
        robot2: {hosts: {pi-03: }}
    spare:
");
        let names = |sel: Selection| -> Vec<String> {
            inv.select(&sel).unwrap().iter().map(|h| h.name.clone()).collect()
        };
        let s = |v: &[&str]| v.iter().map(|n| n.to_string()).collect::<Vec<_>>();
        assert_eq!(names(Selection::All), s(&["pi-01", "pi-02", "pi-03", "solo"]));
        assert_eq!(
            names(Selection::Group("all".into())),
            s(&["pi-01", "pi-02", "pi-03", "solo"])
        );
        assert_eq!(
            names(Selection::Group("fleet".into())),
            s(&["pi-01", "pi-02", "pi-03"])
        );
        assert_eq!(names(Selection::Group("robot2".into())), s(&["pi-03"]));
        assert_eq!(
            names(Selection::Names(s(&["pi-03", "pi-01", "pi-03"]))),
            s(&["pi-03", "pi-01"])
        );

        let err = |sel: Selection| -> String {
            let e = inv.select(&sel).unwrap_err();
            assert!(crate::error::is_invalid_input(&e));
            e.to_string()
        };
        let cases = [
            (
                Selection::Names(s(&["pi-9"])),
                r#"unknown host "pi-9" in /etc/edge/inventory.yml; hosts: pi-01, pi-02, pi-03, solo"#,
            ),
            (
                Selection::Names(s(&["pi-9", "pi-01", "x"])),
                r#"unknown hosts "pi-9", "x" in /etc/edge/inventory.yml; hosts: pi-01, pi-02, pi-03, solo"#,
            ),
            (
                Selection::Names(vec![]),
                "no hosts selected from /etc/edge/inventory.yml",
            ),
            (
                Selection::Group("robot3".into()),
                r#"unknown group "robot3" in /etc/edge/inventory.yml; groups: fleet, robot1, robot2, spare"#,
            ),
            (
                Selection::Group("spare".into()),
                r#"group "spare" in /etc/edge/inventory.yml has no hosts"#,
            ),
        ];
        for (sel, want) in cases {
            assert_eq!(err(sel.clone()), want, "{sel:?}");
        }
    }

    #[test]
    fn long_name_lists_are_capped() {
        let hosts: String = (0..25).map(|i| format!("        pi-{i:02}:\n")).collect();
        let inv = inv(&format!("all:\n  children:\n    g:\n      hosts:\n{hosts}"));
        let e = inv
            .select(&Selection::Names(vec!["nope".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.ends_with("pi-18, pi-19 … and 5 more"), "{e}");
    }
}
