//! `edgectl job`: plain Nomad HCL2 job files under `jobs/`, parsed by the
//! Nomad server (never by us), planned, registered and followed to a
//! healthy deployment, the way `nomad job plan|run|status|stop` do.
//!
//! Nothing here prints: commands return reports, and live progress goes
//! through [`Progress`].

pub mod plan;
pub mod run;
pub mod status;

use crate::cloud::Ctx;
use crate::error::{InvalidInput, User};
use crate::nomad::client::{api_error, Client};
use crate::nomad::jobs;
use crate::outputs;
use anyhow::{Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub use plan::PlanReport;
pub use run::RunReport;
pub use status::{StatusReport, StopReport};

/// Live progress of a job run (stderr lines on a terminal; nothing in JSON).
pub trait Progress: Sync {
    fn line(&self, line: &str);
    /// What the run is waiting for now; `None` when it stops waiting.
    fn waiting(&self, _what: Option<&str>) {}
}

/// What names the job and the values of its variables, as given on the
/// command line.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// A job name under `jobs_dir` (`iot-publish`) or a path to a file.
    pub name: String,
    pub jobs_dir: PathBuf,
    /// `--var k=v`, in order.
    pub vars: Vec<String>,
    pub var_files: Vec<PathBuf>,
    /// The image tag for the default `image`.
    pub tag: String,
}

/// A job file and the variables to parse it with.
#[derive(Debug, Clone)]
pub struct Source {
    pub path: PathBuf,
    pub hcl: String,
    /// HCL var-file text, as `/v1/jobs/parse` takes it.
    pub variables: String,
}

/// The file a job name means: a path as given, else
/// `<jobs_dir>/<name>.nomad.hcl` (or `.hcl`, `.nomad`).
pub fn locate(name: &str, jobs_dir: &Path) -> Result<PathBuf> {
    let given = Path::new(name);
    let looks_like_path = name.contains('/') || name.ends_with(".hcl") || name.ends_with(".nomad");
    if looks_like_path {
        if given.is_file() {
            return Ok(given.to_path_buf());
        }
        let in_dir = jobs_dir.join(name);
        if !name.contains('/') && in_dir.is_file() {
            return Ok(in_dir);
        }
        return Err(InvalidInput(vec![format!("job file {name} does not exist")]).into());
    }
    for ext in ["nomad.hcl", "hcl", "nomad"] {
        let p = jobs_dir.join(format!("{name}.{ext}"));
        if p.is_file() {
            return Ok(p);
        }
    }
    let known = known_jobs(jobs_dir);
    let listing = if known.is_empty() {
        format!("{} holds no *.nomad.hcl files", jobs_dir.display())
    } else {
        format!("jobs in {}: {}", jobs_dir.display(), known.join(", "))
    };
    Err(InvalidInput(vec![format!(
        "no job {name:?}: {} does not exist ({listing}); pass a job name or a path to an HCL file",
        jobs_dir.join(format!("{name}.nomad.hcl")).display()
    )])
    .into())
}

fn known_jobs(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".nomad.hcl").map(str::to_string)
        })
        .collect();
    names.sort();
    names
}

/// Reads the job file and builds its variables: the default image when the
/// file declares `variable "image"`, then `--var-file`s, then `--var`s
/// (later ones win, as with the nomad CLI).
/// This deployment's ECR repository for the iot-publish image (as the
/// `registry` component names it).
pub fn image_repository(ctx: &crate::cloud::Ctx) -> String {
    format!(
        "{}.dkr.ecr.{}.amazonaws.com/{}",
        ctx.aws.account,
        ctx.aws.region,
        crate::cloud::registry::repository_name(&ctx.deployment)
    )
}

pub fn load(s: &SourceSettings, image_repository: &str) -> Result<Source> {
    let path = locate(&s.name, &s.jobs_dir)?;
    let hcl = std::fs::read_to_string(&path)
        .map_err(|e| InvalidInput(vec![format!("{}: cannot read: {e}", path.display())]))?;
    let mut files = Vec::new();
    for f in &s.var_files {
        let text = std::fs::read_to_string(f)
            .map_err(|e| InvalidInput(vec![format!("--var-file {}: cannot read: {e}", f.display())]))?;
        files.push(text);
    }
    let mut vars = Vec::new();
    for v in &s.vars {
        match v.split_once('=') {
            Some((k, val)) if is_ident(k.trim()) => vars.push((k.trim().to_string(), val.to_string())),
            _ => {
                return Err(InvalidInput(vec![format!(
                    "--var {v:?}: expected NAME=VALUE, NAME a variable the job declares"
                )])
                .into())
            }
        }
    }
    let image = declares_variable(&hcl, "image").then(|| format!("{image_repository}:{}", s.tag));
    let variables = variables_text(image.as_deref(), &files, &vars);
    Ok(Source { path, hcl, variables })
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// Whether the HCL declares `variable "<name>"` (or `variable <name>`).
pub fn declares_variable(hcl: &str, name: &str) -> bool {
    hcl.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some("variable")
            && words
                .next()
                .is_some_and(|label| label.trim_end_matches('{').trim_matches('"') == name)
    })
}

/// Top-level attribute names a var file assigns (`name = …` at depth 0).
fn assigned(text: &str) -> Vec<String> {
    let mut depth: i32 = 0;
    let mut names = Vec::new();
    for line in text.lines() {
        if depth == 0 {
            if let Some((k, _)) = line.split_once('=') {
                let k = k.trim();
                if is_ident(k) {
                    names.push(k.to_string());
                }
            }
        }
        for c in line.chars() {
            match c {
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth -= 1,
                _ => {}
            }
        }
    }
    names
}

/// A `--var` value as HCL: lists and objects as written, anything else a
/// string (Nomad converts it to the declared type, as for `-var`).
fn hcl_value(v: &str) -> String {
    let t = v.trim_start();
    if t.starts_with('[') || t.starts_with('{') {
        return v.to_string();
    }
    let mut out = String::from("\"");
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' | '%' if chars.peek() == Some(&'{') => {
                out.push(c);
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// One var-file text from the default image, the var files and the
/// `--var`s. An attribute may appear once in HCL, so a later source's
/// value replaces an earlier one's: a var file that sets `image` drops the
/// default, a `--var` drops the var files' line for that name.
pub fn variables_text(default_image: Option<&str>, files: &[String], vars: &[(String, String)]) -> String {
    let mut out = String::new();
    let overridden = |name: &str| vars.iter().any(|(k, _)| k == name);
    let in_files = files.iter().any(|f| assigned(f).iter().any(|n| n == "image"));
    if let Some(img) = default_image {
        if !overridden("image") && !in_files {
            out.push_str(&format!("image = {}\n", hcl_value(img)));
        }
    }
    for f in files {
        let mut depth: i32 = 0;
        let mut skipping = false;
        for line in f.lines() {
            if depth == 0 {
                skipping = line
                    .split_once('=')
                    .is_some_and(|(k, _)| is_ident(k.trim()) && overridden(k.trim()));
            }
            for c in line.chars() {
                match c {
                    '{' | '[' | '(' => depth += 1,
                    '}' | ']' | ')' => depth -= 1,
                    _ => {}
                }
            }
            if !skipping {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for (k, v) in vars {
        seen.insert(k.clone(), v.clone());
    }
    // The last `--var` of a name wins; keep the command line's order.
    let mut written = std::collections::BTreeSet::new();
    for (k, _) in vars.iter().rev() {
        written.insert(k.clone());
    }
    let mut emitted = std::collections::BTreeSet::new();
    for (k, _) in vars {
        if written.contains(k) && emitted.insert(k.clone()) {
            out.push_str(&format!("{k} = {}\n", hcl_value(&seen[k])));
        }
    }
    out
}

/// Whether a command line (without the program name) is `job plan …`:
/// its first two words, global options and their values skipped.
pub fn is_job_plan(args: impl Iterator<Item = String>) -> bool {
    const WITH_VALUE: [&str; 6] = [
        "--config",
        "--region",
        "--profile",
        "--endpoint-url",
        "--deployment",
        "--output",
    ];
    let mut words = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
        } else if a.starts_with('-') {
            skip = WITH_VALUE.contains(&a.as_str());
        } else {
            words.push(a);
            if words.len() == 2 {
                break;
            }
        }
    }
    words == ["job", "plan"]
}

/// Where the token came from, for messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    Env,
    Ssm,
    None,
}

impl TokenSource {
    pub fn describe(self) -> &'static str {
        match self {
            TokenSource::Env => "NOMAD_TOKEN",
            TokenSource::Ssm => "the CI token from SSM",
            TokenSource::None => "no token",
        }
    }
}

/// A Nomad client for job commands: address, CA and client certificate
/// from `NOMAD_*` when set, else from SSM (the load balancer, the CA chain,
/// the CLI certificate); the token from `NOMAD_TOKEN`, else the CI token
/// in SSM (bound to `submit-job`).
pub async fn connect(ctx: &Ctx) -> Result<(Client, TokenSource)> {
    let chain = crate::cloud::pca::ca_chain_param(ctx);
    let (cert, key) = crate::cloud::pca::Leaf::Cli.params(ctx);
    let env_token = ctx.nomad.as_ref().and_then(|n| n.token.clone());
    let mut names = vec![
        outputs::NOMAD_ENDPOINT,
        chain.as_str(),
        cert.as_str(),
        key.as_str(),
    ];
    if env_token.is_none() {
        names.push(outputs::NOMAD_CI_TOKEN);
    }
    let params = ctx.outputs.read(&names).await?;
    let url = crate::cloud::acl::target(ctx, &params)?.ok_or_else(|| {
        User::new(
            "no Nomad address: NOMAD_ADDR is not set and SSM has no load balancer (/infrastructure/nomad/endpoint)",
            "run `edgectl cloud up`, or set NOMAD_ADDR (and NOMAD_CACERT) to reach Nomad directly",
        )
    })?;
    let tls = crate::cloud::acl::tls(ctx, &params, &url).ok_or_else(|| {
        User::new(
            "no CA to check Nomad's certificate: NOMAD_CACERT is not set and SSM has no CA chain",
            "run `edgectl cloud up --only=pca`, or set NOMAD_CACERT",
        )
    })?;
    let client = Client::new(&url, &tls)
        .await?
        .with_retry(crate::nomad::client::Retry::resolve(ctx.nomad.as_ref()));
    Ok(match (env_token, params.get(outputs::NOMAD_CI_TOKEN)) {
        (Some(t), _) => (client.with_token(&t), TokenSource::Env),
        (None, Some(t)) => (client.with_token(t), TokenSource::Ssm),
        (None, None) => (client, TokenSource::None),
    })
}

/// Nomad's refusal of a request, as an error the user can act on: 403
/// names the token; other answers keep Nomad's text.
pub fn explain(err: anyhow::Error, what: &str, token: TokenSource) -> anyhow::Error {
    match api_error(&err).map(|a| (a.status, a.body.trim().to_string())) {
        Some((403, body)) => {
            let msg = format!("Nomad refused to {what} with {} (403 {body})", token.describe());
            err.context(User::new(
                msg,
                "the token needs the `submit-job` policy (capabilities submit-job, read-job, parse-job): set NOMAD_TOKEN, \
                 or leave it unset to use the CI token in SSM (/infrastructure/nomad/token/ci)",
            ))
        }
        _ => err.context(format!("trying to {what}")),
    }
}

/// `POST /v1/jobs/parse`; a syntax error comes back as Nomad's message
/// with the offending line of the file shown under it.
pub async fn parse(c: &Client, src: &Source, token: TokenSource) -> Result<Value> {
    match jobs::parse(c, &src.hcl, &src.variables).await {
        Ok(job) => Ok(job),
        Err(e) => match api_error(&e) {
            Some(a) if a.status == 400 => {
                let body = a.body.trim().to_string();
                let mut msg = format!("{}: Nomad could not parse the job: {body}", src.path.display());
                if let Some((line, text)) = error_line(&body, &src.hcl) {
                    msg.push_str(&format!("\n  {line} | {text}"));
                }
                Err(User::new(
                    msg,
                    "fix the job file; `nomad fmt -check` also points at HCL syntax errors",
                )
                .into())
            }
            _ => Err(explain(e, "parse the job", token)),
        },
    }
}

/// The first `name:LINE,COL` position in a diagnostic, and that line of the source.
pub fn error_line(diag: &str, hcl: &str) -> Option<(usize, String)> {
    let bytes = diag.as_bytes();
    for (i, _) in diag.match_indices(':') {
        let rest = &diag[i + 1..];
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        if digits.is_empty() || bytes.get(i + 1 + digits.len()) != Some(&b',') {
            continue;
        }
        let line: usize = digits.parse().ok()?;
        let text = hcl.lines().nth(line.checked_sub(1)?)?;
        return Some((line, text.trim_end().to_string()));
    }
    None
}

/// The job's ID and whether it runs to a deployment (services and system
/// jobs do; periodic and parameterized jobs only register a template).
pub fn job_id(job: &Value) -> Result<String> {
    job.get("ID")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .context("the parsed job has no ID")
}

/// The drivers of a group's tasks, e.g. `["docker"]`.
pub fn group_drivers(job: &Value, group: &str) -> Vec<String> {
    let mut out: Vec<String> = job["TaskGroups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["Name"] == group)
        .flat_map(|g| g["Tasks"].as_array().into_iter().flatten())
        .filter_map(|t| t["Driver"].as_str().map(str::to_string))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// A placement failure in words: which group, why, and what the metrics say.
pub fn describe_failure(group: &str, drivers: &[String], m: &jobs::AllocMetric) -> String {
    let mut why = Vec::new();
    for (c, n) in &m.constraint_filtered {
        let extra = if c == "missing drivers" && !drivers.is_empty() {
            format!(" (the group needs driver {})", drivers.join(", "))
        } else {
            String::new()
        };
        why.push(format!("constraint {c:?} filtered {n} node{}{extra}", plural(*n)));
    }
    for (c, n) in &m.class_filtered {
        why.push(format!("class {c:?} filtered {n} node{}", plural(*n)));
    }
    for (d, n) in &m.dimension_exhausted {
        why.push(format!("resources exhausted on {n} node{}: {d}", plural(*n)));
    }
    if m.nodes_exhausted > 0 && m.dimension_exhausted.is_empty() {
        why.push(format!(
            "{} node{} exhausted",
            m.nodes_exhausted,
            plural(m.nodes_exhausted)
        ));
    }
    for q in &m.quota_exhausted {
        why.push(format!("quota exhausted: {q}"));
    }
    if m.nodes_evaluated == 0 {
        why.push("no node was eligible (none in the job's datacenters and node pool)".into());
    }
    let unplaced = m.coalesced_failures + 1;
    format!(
        "group {group:?}: {unplaced} allocation{} not placed; {} of {} node{} evaluated: {}",
        plural(unplaced),
        m.nodes_filtered + m.nodes_exhausted,
        m.nodes_evaluated,
        plural(m.nodes_evaluated),
        if why.is_empty() {
            "no reason given".to_string()
        } else {
            why.join("; ")
        }
    )
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_image_only_when_not_given() {
        let t = variables_text(Some("1.dkr/x:latest"), &[], &[]);
        assert_eq!(t, "image = \"1.dkr/x:latest\"\n");
        let t = variables_text(Some("d"), &[], &[("image".into(), "mine".into())]);
        assert_eq!(t, "image = \"mine\"\n");
        let t = variables_text(Some("d"), &["image = \"f\"\n".into()], &[]);
        assert_eq!(t, "image = \"f\"\n");
        assert_eq!(variables_text(None, &[], &[]), "");
    }

    #[test]
    fn vars_override_var_files_and_quote() {
        let file = "count = 2\nmessage = \"a\"\nmeta = {\n  a = 1\n}\n".to_string();
        let t = variables_text(
            None,
            &[file],
            &[
                ("message".into(), "say \"hi\" ${x}".into()),
                ("count".into(), "3".into()),
                ("count".into(), "4".into()),
            ],
        );
        assert_eq!(
            t,
            "meta = {\n  a = 1\n}\nmessage = \"say \\\"hi\\\" $${x}\"\ncount = \"4\"\n"
        );
        assert_eq!(hcl_value("[\"a\"]"), "[\"a\"]");
    }

    #[test]
    fn job_plan_command_lines() {
        let args = |s: &str| {
            s.split_whitespace()
                .map(str::to_string)
                .collect::<Vec<_>>()
                .into_iter()
        };
        assert!(is_job_plan(args("job plan x --bogus")));
        assert!(is_job_plan(args("--config job --output json job plan")));
        assert!(is_job_plan(args("-v job plan")));
        assert!(!is_job_plan(args("job run plan")));
        assert!(!is_job_plan(args("--deployment job plan")));
    }

    #[test]
    fn declared_variables() {
        assert!(declares_variable("variable \"image\" {\n}", "image"));
        assert!(declares_variable("  variable image {}", "image"));
        assert!(!declares_variable("variable \"images\" {}", "image"));
        assert!(!declares_variable("# variable", "image"));
    }

    #[test]
    fn missing_job_lists_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.nomad.hcl"), "").unwrap();
        std::fs::write(dir.path().join("b.nomad.hcl"), "").unwrap();
        assert_eq!(locate("a", dir.path()).unwrap(), dir.path().join("a.nomad.hcl"));
        assert_eq!(
            locate("b.nomad.hcl", dir.path()).unwrap(),
            dir.path().join("b.nomad.hcl")
        );
        assert!(locate("x/none.hcl", dir.path()).is_err());
        let err = locate("nope", dir.path()).unwrap_err();
        assert!(crate::error::is_invalid_input(&err));
        assert!(format!("{err:#}").contains("a, b"), "{err:#}");
    }

    #[test]
    fn error_line_from_diagnostics() {
        let hcl = "job \"x\" {\n  group \"g\" {\n    count = \n  }\n}\n";
        let diag = "Failed to parse job: input.hcl:3,12-4,3: Invalid expression; Expected the start of an expression";
        assert_eq!(error_line(diag, hcl), Some((3, "    count =".to_string())));
        assert_eq!(error_line("no position", hcl), None);
    }

    #[test]
    fn placement_failure_in_words() {
        let m = jobs::AllocMetric {
            nodes_evaluated: 1,
            nodes_filtered: 1,
            constraint_filtered: [("missing drivers".to_string(), 1)].into(),
            ..Default::default()
        };
        let s = describe_failure("iot-publish", &["docker".into()], &m);
        assert_eq!(
            s,
            "group \"iot-publish\": 1 allocation not placed; 1 of 1 node evaluated: constraint \"missing drivers\" filtered 1 node (the group needs driver docker)"
        );
    }
}
