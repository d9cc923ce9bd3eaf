//! `edgectl device provision|status|deprovision`: turn hosts from an Ansible
//! inventory into mTLS Nomad clients over SSH, in parallel. Each host: one
//! connection, one facts exec, a pure plan, then only the steps that
//! differ; a failing host never stops the others.

pub mod identity;
pub mod node;
pub mod retire;
pub mod ssh;
pub mod state;
pub mod status;

pub use retire::deprovision;
pub use status::status;

use crate::cloud::Ctx;
use crate::config::inventory::{self, Host, Selection};
use crate::error::{InvalidInput, User};
use crate::outputs::{self, Kind};
use crate::plan::{Action, Change, FieldChange, Value};
use crate::secret::Secret;
use anyhow::{anyhow, Context, Result};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Everything a device command needs, resolved once from flags and env.
#[derive(Debug, Clone)]
pub struct Settings {
    pub inventory: PathBuf,
    pub selection: Selection,
    pub retry_failed: bool,
    pub parallel: usize,
    pub ssh: ssh::Options,
    /// `$USER`: Ansible's default `ansible_user`.
    pub local_user: String,
    pub home: PathBuf,
    /// Where the last run's failed hosts are kept (per deployment).
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct ProvisionSettings {
    pub dry_run: bool,
    pub artifacts: Option<PathBuf>,
    pub nomad_servers: Vec<String>,
    pub renew_within_days: i64,
}

/// Live progress, one line per host (implemented next to the renderers).
pub trait Progress: Send + Sync {
    fn host(&self, host: &str, line: &str);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Changed,
    Failed,
}

#[derive(Debug, Clone, Serialize)]
pub struct HostReport {
    pub host: String,
    pub result: Outcome,
    /// Changes made (or, in a dry run, that would be made).
    pub changes: Vec<Change>,
    pub seconds: f64,
    /// SSH execs on this host's one connection.
    pub round_trips: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Unified diffs of text files, by address (dry run only; secrets never).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub diffs: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FleetReport {
    pub dry_run: bool,
    pub hosts: Vec<HostReport>,
}

impl FleetReport {
    pub fn failed(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| h.result == Outcome::Failed)
            .map(|h| h.host.as_str())
            .collect()
    }

    pub fn changed(&self) -> bool {
        self.hosts.iter().any(|h| !h.changes.is_empty())
    }
}

/// SSM parameters kept per device under `/infrastructure/devices/<name>/`.
pub const DEVICE_FIELDS: [&str; 5] = ["uuid", "certificate_arn", "serial", "not_after", "provisioned_at"];

/// The hosts the command works on.
pub fn select(s: &Settings) -> Result<Vec<Host>> {
    let inv = inventory::load(&s.inventory, &s.local_user, &s.home)?;
    let selection = if s.retry_failed {
        let failed = read_failed(s)?;
        if failed.is_empty() {
            return Err(User::new(
                "no failed devices recorded for this deployment",
                "the last `edgectl device provision` succeeded everywhere (or never ran)",
            )
            .into());
        }
        Selection::Names(failed)
    } else {
        s.selection.clone()
    };
    Ok(inv.select(&selection)?.into_iter().cloned().collect())
}

fn failed_file(s: &Settings) -> PathBuf {
    s.state_dir.join("failed-hosts")
}

fn read_failed(s: &Settings) -> Result<Vec<String>> {
    match std::fs::read_to_string(failed_file(s)) {
        Ok(t) => Ok(t
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(str::to_string)
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(vec![]),
        Err(e) => Err(e).with_context(|| format!("reading {}", failed_file(s).display())),
    }
}

/// Keeps the hosts that failed in this run; a later `--retry-failed`
/// runs exactly those. Hosts not in this run keep their earlier state.
fn write_failed(s: &Settings, report: &FleetReport) -> Result<()> {
    let mut failed: std::collections::BTreeSet<String> = read_failed(s)?.into_iter().collect();
    for h in &report.hosts {
        if h.result == Outcome::Failed {
            failed.insert(h.host.clone());
        } else {
            failed.remove(&h.host);
        }
    }
    std::fs::create_dir_all(&s.state_dir).with_context(|| format!("creating {}", s.state_dir.display()))?;
    let text: String = failed.iter().map(|h| format!("{h}\n")).collect();
    std::fs::write(failed_file(s), text).with_context(|| format!("writing {}", failed_file(s).display()))
}

/// What every host needs from SSM, read once.
struct Inputs {
    shared: node::Shared,
    ca_arn: String,
    device_params: BTreeMap<String, Secret>,
}

async fn read_inputs(ctx: &Ctx, hosts: &[Host], p: &ProvisionSettings) -> Result<Inputs> {
    let chain = crate::cloud::pca::ca_chain_param(ctx);
    let names = [
        outputs::PCA_ARN,
        chain.as_str(),
        outputs::NOMAD_ENDPOINT,
        outputs::TRUST_ANCHOR_ARN,
        outputs::PROFILE_ARN,
        outputs::ROLE_ARN,
    ];
    let found = ctx.outputs.read(&names).await?;
    let need = |name: &str| {
        found.get(name).map(|s| s.expose().to_string()).ok_or_else(|| {
            anyhow::Error::from(User::new(
                format!(
                    "{name} is not in SSM for deployment `{}` in {}",
                    ctx.deployment, ctx.aws.region
                ),
                "run `edgectl cloud up` first",
            ))
        })
    };
    let ca_arn = need(outputs::PCA_ARN)?;
    let ca_pem = need(&chain)?;
    let roles_anywhere = match (
        found.get(outputs::TRUST_ANCHOR_ARN),
        found.get(outputs::PROFILE_ARN),
        found.get(outputs::ROLE_ARN),
    ) {
        (Some(ta), Some(p), Some(r)) => Some(node::RolesAnywhere {
            trust_anchor_arn: ta.expose().into(),
            profile_arn: p.expose().into(),
            role_arn: r.expose().into(),
            endpoint: None,
        }),
        _ => None,
    };
    if roles_anywhere.is_none() && hosts.iter().any(|h| h.aws_credentials) {
        need(outputs::TRUST_ANCHOR_ARN)?;
    }
    let servers = if !p.nomad_servers.is_empty() {
        p.nomad_servers.clone()
    } else {
        found
            .get(outputs::NOMAD_ENDPOINT)
            .map(|e| vec![e.expose().to_string()])
            .unwrap_or_default()
    };
    let device_names: Vec<String> = hosts
        .iter()
        .flat_map(|h| DEVICE_FIELDS.iter().map(|f| outputs::device(&h.name, f)))
        .collect();
    let device_params = ctx
        .outputs
        .read(&device_names.iter().map(String::as_str).collect::<Vec<_>>())
        .await?;
    Ok(Inputs {
        shared: node::Shared {
            nomad_region: ctx.config.cluster.nomad_region.clone(),
            aws_region: ctx.aws.region.clone(),
            nomad_version: ctx.config.cluster.nomad_version.clone(),
            servers,
            ca_pem,
            roles_anywhere,
            source: match &p.artifacts {
                Some(dir) => node::Source::Artifacts(dir.clone()),
                None => node::Source::Release,
            },
        },
        ca_arn,
        device_params,
    })
}

/// Runs `work` on every host, at most `parallel` at once; results in
/// inventory order.
async fn fleet<F, Fut>(hosts: Vec<Host>, parallel: usize, work: F) -> Vec<HostReport>
where
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = HostReport> + Send + 'static,
{
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let started = Instant::now();
    fleet_map(hosts, parallel, work)
        .await
        .into_iter()
        .zip(names)
        .map(|(r, name)| r.unwrap_or_else(|e| failed(&name, started, 0, anyhow!("internal error: {e}"))))
        .collect()
}

/// The same for any result type: a task that panicked is an `Err`.
async fn fleet_map<T, F, Fut>(
    hosts: Vec<Host>,
    parallel: usize,
    work: F,
) -> Vec<std::result::Result<T, String>>
where
    T: Send + 'static,
    F: Fn(Host) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let limit = Arc::new(tokio::sync::Semaphore::new(parallel.max(1)));
    let mut tasks = Vec::new();
    for host in hosts {
        let fut = work(host);
        let limit = limit.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = limit
                .acquire_owned()
                .await
                .expect("the semaphore is never closed");
            fut.await
        }));
    }
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.map_err(|e| e.to_string()));
    }
    out
}

fn failed(host: &str, started: Instant, round_trips: u32, err: anyhow::Error) -> HostReport {
    let mut msg = format!("{err:#}");
    for hint in crate::error::hints(&err) {
        msg.push_str(&format!(" (hint: {hint})"));
    }
    HostReport {
        host: host.into(),
        result: Outcome::Failed,
        changes: vec![],
        seconds: started.elapsed().as_secs_f64(),
        round_trips,
        error: Some(msg),
        diffs: BTreeMap::new(),
    }
}

pub async fn provision(
    ctx: &Ctx,
    s: &Settings,
    hosts: Vec<Host>,
    p: &ProvisionSettings,
    progress: Arc<dyn Progress>,
) -> Result<FleetReport> {
    let inputs = Arc::new(read_inputs(ctx, &hosts, p).await?);
    if let Some(dir) = &p.artifacts {
        if !dir.is_dir() {
            return Err(
                InvalidInput(vec![format!("--artifacts: {} is not a directory", dir.display())]).into(),
            );
        }
    }
    let run = Arc::new(Run {
        ctx: ctx.clone_for_devices(),
        ssh: s.ssh.clone(),
        p: p.clone(),
        sums: Mutex::new(node::ShaCache::default()),
    });
    let hosts_out = fleet(hosts, s.parallel, |host| {
        let run = run.clone();
        let inputs = inputs.clone();
        let progress = progress.clone();
        async move {
            let progress = progress.as_ref();
            let started = Instant::now();
            progress.host(&host.name, "connecting");
            let r = provision_host(&run, &inputs, &host, progress).await;
            match r {
                Ok(mut report) => {
                    report.seconds = started.elapsed().as_secs_f64();
                    progress.host(&host.name, &summary_line(&report, run.p.dry_run));
                    report
                }
                Err((err, trips)) => {
                    let report = failed(&host.name, started, trips, err);
                    progress.host(
                        &host.name,
                        &format!("failed: {}", report.error.as_deref().unwrap_or("")),
                    );
                    report
                }
            }
        }
    })
    .await;
    let report = FleetReport {
        dry_run: p.dry_run,
        hosts: hosts_out,
    };
    if !p.dry_run {
        write_failed(s, &report)?;
    }
    Ok(report)
}

fn summary_line(r: &HostReport, dry_run: bool) -> String {
    match (r.changes.len(), dry_run) {
        (0, _) => "no changes".into(),
        (n, true) => format!("{n} to change"),
        (n, false) => format!("{n} changed"),
    }
}

/// What the host tasks share.
struct Run {
    ctx: DeviceCtx,
    ssh: ssh::Options,
    p: ProvisionSettings,
    sums: Mutex<node::ShaCache>,
}

/// The parts of the command context the host tasks use (cheap clones).
#[derive(Clone)]
pub struct DeviceCtx {
    pub outputs: crate::outputs::Store,
    pub acmpca: aws_sdk_acmpca::Client,
    pub nomad_region: String,
}

impl Ctx {
    pub fn clone_for_devices(&self) -> DeviceCtx {
        DeviceCtx {
            outputs: self.outputs.clone(),
            acmpca: aws_sdk_acmpca::Client::new(&self.aws.config),
            nomad_region: self.config.cluster.nomad_region.clone(),
        }
    }
}

fn target(host: &Host) -> ssh::Target {
    ssh::Target {
        name: host.name.clone(),
        host: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        key_file: host.key_file.clone(),
    }
}

/// The separator between the engine's facts and edgectl's own in the one
/// facts exec.
const EXTRA: &str = "--- edgectl extra facts ---";

/// Lines that print the installed binaries' versions (first line each).
fn version_facts_script() -> String {
    format!(
        "printf 'version\\tnomad\\t%s\\n' \"$({} version 2>/dev/null | head -n1)\"\n\
         printf 'version\\thelper\\t%s\\n' \"$({} version 2>/dev/null | head -n1)\"\n",
        node::NOMAD_BIN,
        node::SIGNING_HELPER_BIN
    )
}

fn parse_versions(extra: &str) -> BTreeMap<String, String> {
    extra
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, '\t');
            (p.next() == Some("version")).then(|| {
                (
                    p.next().unwrap_or("").to_string(),
                    p.next().unwrap_or("").to_string(),
                )
            })
        })
        .collect()
}

type HostError = (anyhow::Error, u32);

async fn provision_host(
    run: &Run,
    inputs: &Inputs,
    host: &Host,
    progress: &dyn Progress,
) -> std::result::Result<HostReport, HostError> {
    let session = ssh::Session::connect(&target(host), &run.ssh)
        .await
        .map_err(|e| (e, 0))?;
    let result = provision_on(run, inputs, host, &session, progress).await;
    let trips = session.round_trips();
    session.close().await;
    match result {
        Ok(mut r) => {
            r.round_trips = trips;
            Ok(r)
        }
        Err(e) => Err((e, trips)),
    }
}

async fn provision_on(
    run: &Run,
    inputs: &Inputs,
    host: &Host,
    session: &ssh::Session,
    progress: &dyn Progress,
) -> Result<HostReport> {
    let started = Instant::now();
    let shared = &inputs.shared;
    let with_helper = host.aws_credentials && shared.roles_anywhere.is_some();
    let mut shared_host = shared.clone();
    if let Some(ra) = shared_host.roles_anywhere.as_mut() {
        ra.endpoint = host.vars.get("rolesanywhere_endpoint").cloned();
    }

    // 1. Observe: one exec for the engine's facts, the key and the versions.
    progress.host(&host.name, "observing");
    let skeleton = node::spec(
        host,
        &shared_host,
        "",
        node::Binary {
            content: state::Content::Text(String::new()),
            version: None,
        },
        with_helper.then(|| node::Binary {
            content: state::Content::Text(String::new()),
            version: None,
        }),
    )?;
    let script = format!(
        "{}\necho '{EXTRA}'\n{}{}",
        // The configs edgectl renders are read too: a dry run diffs them.
        state::facts_script(
            &skeleton,
            &["openssl"],
            &[identity::CERT_PATH, node::CONFIG_FILE, node::UNIT_FILE]
        ),
        identity::key_facts_script(),
        version_facts_script()
    );
    let out = session.run(&script, None).await?;
    if !out.ok() {
        anyhow::bail!(
            "{}: observing the device failed: {}",
            host.name,
            out.stderr_line()
        );
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let (engine_out, extra) = text
        .split_once(&format!("{EXTRA}\n"))
        .with_context(|| format!("{}: the facts output is cut short", host.name))?;
    let facts = state::parse_facts(engine_out).with_context(|| format!("{}: reading facts", host.name))?;
    let key = identity::parse_key_facts(extra).with_context(|| format!("{}: reading facts", host.name))?;
    let versions = parse_versions(extra);
    if !facts.systemd {
        anyhow::bail!(
            "{}: systemd is not PID 1 on the device; edgectl runs Nomad as a systemd unit",
            host.name
        );
    }
    let arch = node::release_arch(&facts.arch).with_context(|| host.name.clone())?;

    // 2. Identity: renew when due.
    let param = |f: &str| {
        inputs
            .device_params
            .get(&outputs::device(&host.name, f))
            .map(|s| s.expose().to_string())
    };
    let current_pem = facts
        .reads
        .iter()
        .find(|(p, _)| p == identity::CERT_PATH)
        .map(|(_, c)| c.clone());
    let uuid = param("uuid")
        .or_else(|| {
            current_pem
                .as_deref()
                .and_then(|c| crate::pki::facts(c).ok()?.subject_serial)
        })
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let want = identity::identity(&host.name, &uuid, &run.ctx.nomad_region);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let reason = identity::renewal_reason(
        current_pem.as_deref(),
        &key,
        &shared.ca_pem,
        &want,
        now,
        run.p.renew_within_days,
    );
    let mut id_changes = Vec::new();
    let mut id_steps = Vec::new();
    let mut issued = None;
    let mut device_pem = current_pem.clone().unwrap_or_default();
    if let Some(reason) = &reason {
        let mut change = Change::new(
            format!("{}/identity:certificate", host.name),
            Action::Create,
            reason.clone(),
        );
        if current_pem.is_some() {
            change.action = Action::Replace;
        }
        change.fields.push(FieldChange {
            name: "common_name".into(),
            old: None,
            new: Value::known(host.name.clone()),
        });
        change.fields.push(FieldChange {
            name: "private_key".into(),
            old: None,
            new: Value::Sensitive,
        });
        id_changes.push(change);
        if !run.p.dry_run {
            progress.host(&host.name, "issuing its certificate");
            let openssl = facts.commands.iter().any(|c| c == "openssl");
            let (csr, streamed_key) = if openssl {
                let out = session.run(&identity::csr_script(&want), None).await?;
                if !out.ok() {
                    anyhow::bail!(
                        "{}: making the key and CSR on the device: {}",
                        host.name,
                        out.stderr_line()
                    );
                }
                (String::from_utf8_lossy(&out.stdout).into_owned(), None)
            } else {
                let (key, csr) = identity::csr_in_memory(&want)?;
                (csr, Some(key))
            };
            let got =
                identity::issue(&run.ctx.acmpca, &inputs.ca_arn, &shared.ca_pem, &host.name, &csr).await?;
            device_pem = got.pem_with_chain.clone();
            id_steps.push(state::Step {
                address: format!("{}/identity:certificate", host.name),
                script: identity::install_key_script(streamed_key.is_some()),
                stdin: streamed_key.map(state::Payload::Secret),
            });
            issued = Some(got);
        }
    } else if key.exists
        && (key.owner != identity::OWNER || key.group != identity::OWNER || key.mode != identity::MODE)
    {
        let mut change = Change::new(
            format!("{}/file:{}", host.name, identity::KEY_PATH),
            Action::Update,
            "owner or mode drifted",
        );
        change.fields.push(FieldChange {
            name: "mode".into(),
            old: Some(Value::known(format!(
                "{}:{} {:04o}",
                key.owner, key.group, key.mode
            ))),
            new: Value::known(format!("{o}:{o} {:04o}", identity::MODE, o = identity::OWNER)),
        });
        id_changes.push(change);
        id_steps.push(state::Step {
            address: format!("{}/file:{}", host.name, identity::KEY_PATH),
            script: identity::fix_key_mode_script(),
            stdin: None,
        });
    }

    // 3. Plan the rest against the same facts.
    let (nomad, helper) = {
        let mut sums = run.sums.lock().expect("sha cache");
        node::binaries(&shared_host, arch, with_helper, &mut sums)?
    };
    let nomad = keep_installed(nomad, &facts, node::NOMAD_BIN, versions.get("nomad"));
    let helper = helper.map(|h| keep_installed(h, &facts, node::SIGNING_HELPER_BIN, versions.get("helper")));
    let spec = node::spec(host, &shared_host, &device_pem, nomad, helper)?;
    state::validate(&spec).with_context(|| format!("{}: desired state", host.name))?;
    let plan = state::plan_host(&host.name, &spec, &facts);
    let mut changes = id_changes;
    changes.extend(plan.changes.iter().cloned());
    // The key moves in after users and directories exist, before the files
    // (and the restart) that use it.
    let mut steps = plan.steps.clone();
    let at = steps
        .iter()
        .position(|s| {
            s.address.contains("/file:") || s.address.contains("/unit:") || s.address.contains("/handler:")
        })
        .unwrap_or(steps.len());
    for (i, st) in id_steps.into_iter().enumerate() {
        steps.insert(at + i, st);
    }
    if run.p.dry_run {
        return Ok(host_report(&host.name, changes, started, true));
    }

    // 4. Apply, in order; the first failing step stops this host. Steps
    // without stdin run together in one exec (few round trips).
    let batches = batch(&steps);
    for (i, b) in batches.iter().enumerate() {
        progress.host(
            &host.name,
            &format!("applying {}/{}: {}", i + 1, batches.len(), b.addresses.join(", ")),
        );
        let stdin = match b.stdin {
            None => None,
            Some(state::Payload::Bytes(b)) => Some(ssh::Stdin::Bytes(b)),
            Some(state::Payload::Secret(s)) => Some(ssh::Stdin::Bytes(s.expose().as_bytes())),
            Some(state::Payload::Local(p)) => Some(ssh::Stdin::File(p)),
        };
        let out = session.run(&b.script, stdin).await?;
        if !out.ok() {
            let (address, message) = failed_step(b, &out);
            anyhow::bail!("{}: {address} failed: {message}", host.name);
        }
    }

    // 5. Record what was issued, and when the device last changed.
    if let Some(got) = &issued {
        let write = |f: &'static str, v: String| {
            let name = outputs::device(&host.name, f);
            let exists = inputs.device_params.contains_key(&name);
            (name, v, exists)
        };
        let not_after = time::OffsetDateTime::from_unix_timestamp(got.not_after)
            .ok()
            .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
            .unwrap_or_default();
        for (name, value, exists) in [
            write("uuid", uuid.clone()),
            write("certificate_arn", got.arn.clone()),
            write("serial", got.serial_hex.clone()),
            write("not_after", not_after),
        ] {
            if inputs.device_params.get(&name).map(|s| s.expose()) != Some(value.as_str()) {
                run.ctx.outputs.write(&name, &value, Kind::Plain, exists).await?;
            }
        }
    }
    if !changes.is_empty() {
        let name = outputs::device(&host.name, "provisioned_at");
        let now = time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        run.ctx
            .outputs
            .write(&name, &now, Kind::Plain, inputs.device_params.contains_key(&name))
            .await?;
    }
    Ok(host_report(&host.name, changes, started, false))
}

/// The report of a host that succeeded. Text diffs move out of the change
/// fields (where they would print as one escaped line) into `diffs`, kept
/// for a dry run only.
fn host_report(host: &str, mut changes: Vec<Change>, started: Instant, dry_run: bool) -> HostReport {
    let mut diffs = BTreeMap::new();
    for c in &mut changes {
        if let Some(i) = c.fields.iter().position(|f| f.name == "diff") {
            if let Value::Known(text) = c.fields.remove(i).new {
                if dry_run {
                    diffs.insert(c.address.clone(), text);
                }
            }
        }
    }
    HostReport {
        host: host.into(),
        result: if changes.is_empty() {
            Outcome::Ok
        } else {
            Outcome::Changed
        },
        changes,
        seconds: started.elapsed().as_secs_f64(),
        round_trips: 0,
        error: None,
        diffs,
    }
}

/// One exec: a step with stdin alone, or a run of steps without stdin.
struct Batch<'a> {
    addresses: Vec<String>,
    script: String,
    stdin: Option<&'a state::Payload>,
}

/// Marks, on stderr, which step of a batch failed.
const FAILED_MARK: &str = "edgectl-step-failed";

fn batch(steps: &[state::Step]) -> Vec<Batch<'_>> {
    let mut out: Vec<Batch> = Vec::new();
    for st in steps {
        match (&st.stdin, out.last_mut()) {
            (None, Some(b)) if b.stdin.is_none() => {
                b.addresses.push(st.address.clone());
                b.script.push_str(&guarded(st));
            }
            (None, _) => out.push(Batch {
                addresses: vec![st.address.clone()],
                script: guarded(st),
                stdin: None,
            }),
            (Some(p), _) => out.push(Batch {
                addresses: vec![st.address.clone()],
                script: st.script.clone(),
                stdin: Some(p),
            }),
        }
    }
    out
}

/// A step in its own shell (its `set -e` holds; inside `( ) ||` it would
/// not), stopping the batch when it fails.
fn guarded(st: &state::Step) -> String {
    format!(
        "sh -c {} || {{ printf '%s\\t%s\\n' {FAILED_MARK} {} >&2; exit 1; }}\n",
        state::sh_quote(&st.script),
        state::sh_quote(&st.address)
    )
}

/// Which step of a failed batch failed, and its last message.
fn failed_step(b: &Batch, out: &ssh::Output) -> (String, String) {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.iter().position(|l| l.starts_with(FAILED_MARK)) {
        Some(i) => (
            lines[i].split('\t').nth(1).unwrap_or_default().to_string(),
            lines[..i]
                .last()
                .map_or_else(|| format!("exit status {}", out.status), |l| l.to_string()),
        ),
        None => (b.addresses.join(", "), out.stderr_line()),
    }
}

/// A release download is skipped when the installed binary already prints
/// the wanted version (its current sha256 is then what "installed" means),
/// and replaced when it prints another one.
fn keep_installed(
    mut bin: node::Binary,
    facts: &state::Facts,
    path: &str,
    installed: Option<&String>,
) -> node::Binary {
    if let state::Content::Download {
        installed_sha256,
        stale,
        ..
    } = &mut bin.content
    {
        let current = facts
            .paths
            .iter()
            .find(|p| p.path == path)
            .and_then(|p| p.sha256.clone());
        match (
            current,
            installed.filter(|v| !v.trim().is_empty()),
            bin.version.as_deref(),
        ) {
            (Some(sum), Some(have), Some(want)) if have.contains(want) => *installed_sha256 = Some(sum),
            (Some(_), have, Some(want)) => {
                *stale = Some(format!(
                    "installed version `{}`, wanted `{want}`",
                    have.map_or("unknown", |h| h.trim())
                ))
            }
            _ => {}
        }
    }
    bin
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(address: &str, script: &str, stdin: bool) -> state::Step {
        state::Step {
            address: address.into(),
            script: script.into(),
            stdin: stdin.then(|| state::Payload::Bytes(b"x".to_vec())),
        }
    }

    #[test]
    fn steps_without_stdin_share_an_exec() {
        let steps = [
            step("h/group:nomad", "groupadd nomad", false),
            step("h/user:nomad", "useradd nomad", false),
            step("h/file:/a", "cat > /a", true),
            step("h/file:/b", "cat > /b", true),
            step("h/unit:nomad.service", "systemctl enable nomad", false),
        ];
        let b = batch(&steps);
        let addrs: Vec<Vec<String>> = b.iter().map(|b| b.addresses.clone()).collect();
        assert_eq!(
            addrs,
            [
                vec!["h/group:nomad".to_string(), "h/user:nomad".into()],
                vec!["h/file:/a".into()],
                vec!["h/file:/b".into()],
                vec!["h/unit:nomad.service".into()],
            ]
        );
        assert!(
            b[0].script.contains("sh -c 'groupadd nomad' ||"),
            "{}",
            b[0].script
        );
        assert_eq!(b[1].script, "cat > /a");
    }

    #[test]
    fn a_failed_batch_names_its_step_and_message() {
        let steps = [step("h/group:g", "true", false), step("h/user:u", "false", false)];
        let b = batch(&steps);
        let out = ssh::Output {
            status: 1,
            stdout: vec![],
            stderr: b"useradd: group 'x' does not exist\nedgectl-step-failed\th/user:u\n".to_vec(),
        };
        assert_eq!(
            failed_step(&b[0], &out),
            (
                "h/user:u".to_string(),
                "useradd: group 'x' does not exist".to_string()
            )
        );
    }

    #[test]
    fn a_batch_really_stops_at_its_failing_step() {
        let steps = [
            step("h/a", "set -e\nfalse\necho not-reached", false),
            step("h/b", "echo not-run", false),
        ];
        let script = &batch(&steps)[0].script;
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert_eq!(String::from_utf8_lossy(&out.stdout), "");
        assert!(String::from_utf8_lossy(&out.stderr).contains("edgectl-step-failed\th/a"));
    }

    fn release(version: &str) -> node::Binary {
        node::Binary {
            content: state::Content::Download {
                url: "https://releases.example/nomad.zip".into(),
                sha256: "a".repeat(64),
                unzip_member: Some("nomad".into()),
                installed_sha256: None,
                stale: None,
            },
            version: Some(version.into()),
        }
    }

    fn installed(sha: Option<&str>) -> state::Facts {
        state::Facts {
            paths: vec![state::PathFact {
                path: node::NOMAD_BIN.into(),
                kind: if sha.is_some() {
                    state::PathKind::File
                } else {
                    state::PathKind::Missing
                },
                owner: "root".into(),
                group: "root".into(),
                mode: 0o755,
                sha256: sha.map(str::to_string),
            }],
            ..state::Facts::default()
        }
    }

    #[test]
    fn an_installed_release_of_the_wanted_version_is_kept_and_another_replaced() {
        let same = "Nomad v1.11.3".to_string();
        let other = "Nomad v1.9.0".to_string();
        type Case<'a> = (
            &'a str,
            Option<&'a str>,
            Option<&'a String>,
            Option<&'a str>,
            Option<&'a str>,
        );
        let cases: [Case; 4] = [
            ("same version", Some("b"), Some(&same), Some("b"), None),
            (
                "other version",
                Some("b"),
                Some(&other),
                None,
                Some("installed version `Nomad v1.9.0`, wanted `Nomad v1.11.3`"),
            ),
            (
                "does not run",
                Some("b"),
                None,
                None,
                Some("installed version `unknown`, wanted `Nomad v1.11.3`"),
            ),
            ("missing", None, None, None, None),
        ];
        for (name, sha, version, want_sum, want_stale) in cases {
            let got = keep_installed(
                release("Nomad v1.11.3"),
                &installed(sha),
                node::NOMAD_BIN,
                version,
            );
            let state::Content::Download {
                installed_sha256,
                stale,
                ..
            } = got.content
            else {
                unreachable!()
            };
            assert_eq!(installed_sha256.as_deref(), want_sum, "{name}");
            assert_eq!(stale.as_deref(), want_stale, "{name}");
        }
    }
}
