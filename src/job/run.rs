//! `edgectl job run`: register the job the server parsed, then follow it
//! as `nomad job run` does — the evaluation (and the ones after it), then
//! the deployment with blocking queries, following an auto-revert — and
//! record version, modify index and deployment in SSM.

use super::{connect, describe_failure, explain, group_drivers, job_id, parse, Progress, SourceSettings};
use crate::cloud::Ctx;
use crate::error::User;
use crate::nomad::client::{api_error, Client};
use crate::nomad::jobs::{self, AllocMetric, Deployment};
use crate::outputs;
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The longest single blocking query; Nomad caps `wait` at 10 minutes.
const MAX_WAIT: Duration = Duration::from_secs(300);

#[derive(Debug, Clone)]
pub struct RunSettings {
    /// `--check-index N`: register only when the job's modify index is N
    /// (0: only when the job does not exist).
    pub check_index: Option<u64>,
    pub detach: bool,
    pub timeout: Duration,
}

/// How a run ended; decides the exit code (as `nomad job run`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The deployment finished successfully (or the job needed none).
    Deployed,
    /// `--detach`, or a periodic/parameterized job: registered, not followed.
    Registered,
    /// The scheduler could not place some allocations.
    PlacementFailed,
    /// The deployment failed or was cancelled.
    DeploymentFailed,
    /// `--timeout` passed first.
    TimedOut,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Deployed | Outcome::Registered => 0,
            Outcome::PlacementFailed => 2,
            Outcome::DeploymentFailed | Outcome::TimedOut => 1,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupHealth {
    pub desired: u64,
    pub placed: u64,
    pub healthy: u64,
    pub unhealthy: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct DeploymentSummary {
    pub id: String,
    pub status: String,
    pub description: String,
    pub job_version: u64,
    pub groups: BTreeMap<String, GroupHealth>,
}

impl From<&Deployment> for DeploymentSummary {
    fn from(d: &Deployment) -> Self {
        DeploymentSummary {
            id: d.id.clone(),
            status: d.status.clone(),
            description: d.status_description.clone(),
            job_version: d.job_version,
            groups: d
                .task_groups
                .iter()
                .map(|(g, s)| {
                    (
                        g.clone(),
                        GroupHealth {
                            desired: s.desired_total,
                            placed: s.placed_allocs,
                            healthy: s.healthy_allocs,
                            unhealthy: s.unhealthy_allocs,
                        },
                    )
                })
                .collect(),
        }
    }
}

impl DeploymentSummary {
    /// `heartbeat 1/1 healthy`, one per group.
    pub fn health(&self) -> String {
        self.groups
            .iter()
            .map(|(g, h)| {
                let mut s = format!("{g} {}/{} healthy", h.healthy, h.desired);
                if h.unhealthy > 0 {
                    s.push_str(&format!(", {} unhealthy", h.unhealthy));
                }
                s
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PlacementFailure {
    pub group: String,
    pub drivers: Vec<String>,
    pub message: String,
    pub metrics: AllocMetric,
}

/// Where the time went: Nomad's work (blocking queries and the waits it
/// asked for) against everything edgectl did around it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub total_ms: u64,
    /// Connect, parse and register.
    pub register_ms: u64,
    pub evaluation_ms: u64,
    pub deployment_ms: u64,
    /// Time inside blocking queries and Nomad-requested sleeps.
    pub nomad_wait_ms: u64,
    /// SSM: comparing and writing the outputs.
    pub outputs_ms: u64,
    /// total minus nomad_wait.
    pub overhead_ms: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub job: String,
    pub file: String,
    pub outcome: Outcome,
    /// The job's version once the run ended (after a rollback: the revert's).
    pub version: Option<u64>,
    pub job_modify_index: u64,
    /// Whether the register changed the job (a new modify index).
    pub changed: bool,
    pub eval_id: String,
    pub deployment: Option<DeploymentSummary>,
    /// The auto-revert deployment that followed a failed one.
    pub rollback: Option<DeploymentSummary>,
    pub placement_failures: Vec<PlacementFailure>,
    /// Failed allocations of a failed deployment, with their last task event.
    pub failed_allocations: Vec<String>,
    /// With a timeout: what the run was waiting for.
    pub waiting_for: Option<String>,
    pub warnings: Vec<String>,
    /// SSM parameters written (none when nothing changed).
    pub outputs_written: Vec<String>,
    pub timings: Timings,
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

struct Clock {
    start: Instant,
    deadline: Instant,
    nomad_wait: Duration,
}

impl Clock {
    fn left(&self) -> Option<Duration> {
        let now = Instant::now();
        (now < self.deadline).then(|| (self.deadline - now).min(MAX_WAIT))
    }
}

pub async fn run(
    ctx: &Ctx,
    src: &SourceSettings,
    s: &RunSettings,
    progress: &dyn Progress,
) -> Result<RunReport> {
    let mut clock = Clock {
        start: Instant::now(),
        deadline: Instant::now() + s.timeout,
        nomad_wait: Duration::ZERO,
    };
    let source = super::load(src, &super::image_repository(ctx))?;
    let (c, token) = connect(ctx).await?;
    let job = parse(&c, &source, token).await?;
    let id = job_id(&job)?;
    let before = jobs::job(&c, &id)
        .await
        .map_err(|e| explain(e, &format!("read job `{id}`"), token))?;
    let submission = jobs::Submission {
        source: &source.hcl,
        format: "hcl2",
        variables: &source.variables,
    };
    let reg = match jobs::register(&c, &job, s.check_index, Some(&submission)).await {
        Ok(r) => r,
        Err(e) => return Err(register_error(e, &id, s.check_index, token)),
    };
    // Nomad's answer to an unchanged job need not carry the old modify
    // index: whether it changed is decided from the job itself, afterwards.
    let before_index = before.as_ref().map(|b| b.job_modify_index);
    progress.line(&format!(
        "registered job `{id}`, evaluation {}",
        short(&reg.eval_id)
    ));
    let register_ms = ms(clock.start.elapsed());
    let mut report = RunReport {
        job: id.clone(),
        file: source.path.display().to_string(),
        outcome: Outcome::Registered,
        version: None,
        job_modify_index: reg.job_modify_index,
        changed: true,
        eval_id: reg.eval_id.clone(),
        deployment: None,
        rollback: None,
        placement_failures: Vec::new(),
        failed_allocations: Vec::new(),
        waiting_for: None,
        warnings: reg
            .warnings
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        outputs_written: Vec::new(),
        timings: Timings {
            register_ms,
            ..Timings::default()
        },
    };
    let template = ["Periodic", "ParameterizedJob", "Multiregion"]
        .iter()
        .any(|k| !job[*k].is_null());
    if !(s.detach || template || reg.eval_id.is_empty()) {
        let t = Instant::now();
        let deployment_id = follow_eval(&c, &reg.eval_id, &job, &mut clock, &mut report, progress).await?;
        report.timings.evaluation_ms = ms(t.elapsed());
        if report.outcome != Outcome::TimedOut && report.placement_failures.is_empty() {
            let t = Instant::now();
            let followed = follow_deployment(&c, &id, deployment_id, &mut clock, &mut report, progress).await;
            progress.waiting(None);
            followed?;
            report.timings.deployment_ms = ms(t.elapsed());
        }
    }
    let t = Instant::now();
    record(ctx, &c, &id, &mut report).await?;
    report.changed = before_index != Some(report.job_modify_index);
    report.timings.outputs_ms = ms(t.elapsed());
    report.timings.total_ms = ms(clock.start.elapsed());
    report.timings.nomad_wait_ms = ms(clock.nomad_wait);
    report.timings.overhead_ms = report
        .timings
        .total_ms
        .saturating_sub(report.timings.nomad_wait_ms);
    Ok(report)
}

/// Nomad's check-index refusal as one line; a 403 as a token problem.
fn register_error(
    e: anyhow::Error,
    id: &str,
    check: Option<u64>,
    token: super::TokenSource,
) -> anyhow::Error {
    if let Some(a) = api_error(&e) {
        let body = a.body.trim();
        if let Some(pos) = body.find("Enforcing job modify index") {
            let hint = match check {
                Some(0) => format!("the job exists already: drop `--check-index 0`, or take the index from `edgectl job plan {id}`"),
                _ => format!("the job changed since it was planned: run `edgectl job plan {id}` again and use the index it prints"),
            };
            return User::new(format!("job `{id}` not registered: {}", &body[pos..]), hint).into();
        }
    }
    explain(e, &format!("register job `{id}`"), token)
}

/// Follows the evaluation and the ones it hands over to until the last is
/// done; records placement failures; the deployment it created, if any.
async fn follow_eval(
    c: &Client,
    first: &str,
    job: &serde_json::Value,
    clock: &mut Clock,
    report: &mut RunReport,
    progress: &dyn Progress,
) -> Result<Option<String>> {
    let mut eval_id = first.to_string();
    let mut index = 0;
    let mut last_status = String::new();
    let mut deployment = None;
    loop {
        let Some(wait) = clock.left() else {
            report.outcome = Outcome::TimedOut;
            report.waiting_for = Some(format!("evaluation {eval_id} ({last_status})"));
            return Ok(deployment);
        };
        let t = Instant::now();
        let (ev, idx) = jobs::evaluation(c, &eval_id, index, wait).await?;
        if index > 0 {
            clock.nomad_wait += t.elapsed();
        }
        if ev.status != last_status {
            progress.line(&format!("evaluation {}: {}", short(&eval_id), ev.status));
            last_status = ev.status.clone();
        }
        if !ev.done() {
            index = idx.max(1);
            continue;
        }
        if !ev.deployment_id.is_empty() {
            deployment = Some(ev.deployment_id.clone());
        }
        for (group, m) in &ev.failed_tg_allocs {
            let drivers = group_drivers(job, group);
            let message = describe_failure(group, &drivers, m);
            progress.line(&format!("placement failed: {message}"));
            report.placement_failures.push(super::run::PlacementFailure {
                group: group.clone(),
                drivers,
                message,
                metrics: m.clone(),
            });
        }
        if !report.placement_failures.is_empty() {
            report.outcome = Outcome::PlacementFailed;
            return Ok(deployment);
        }
        if ev.next_eval.is_empty() {
            return Ok(deployment);
        }
        let pause = Duration::from_nanos(ev.wait);
        let t = Instant::now();
        tokio::time::sleep(pause.min(clock.left().unwrap_or_default())).await;
        clock.nomad_wait += t.elapsed();
        eval_id = ev.next_eval.clone();
        index = 0;
        last_status.clear();
    }
}

/// Blocking queries on the deployment until it is done; a failed one with
/// auto-revert is followed by its rollback.
async fn follow_deployment(
    c: &Client,
    job: &str,
    from_eval: Option<String>,
    clock: &mut Clock,
    report: &mut RunReport,
    progress: &dyn Progress,
) -> Result<()> {
    let current = jobs::job(c, job).await?;
    let mut id = match from_eval {
        Some(d) => d,
        // An unchanged job makes no deployment: report the latest one of
        // this version (following it if still running).
        None => match (jobs::latest_deployment(c, job).await?, &current) {
            (Some(d), Some(j)) if d.job_version == j.version => d.id,
            _ => {
                report.outcome = Outcome::Deployed;
                return Ok(());
            }
        },
    };
    let mut index = 0;
    let mut shown = String::new();
    let mut rolling_back = false;
    loop {
        let Some(wait) = clock.left() else {
            report.outcome = Outcome::TimedOut;
            report.waiting_for = Some(format!("deployment {id} ({shown})"));
            return Ok(());
        };
        if !shown.is_empty() {
            let what = if rolling_back { "rollback" } else { "deployment" };
            progress.waiting(Some(&format!("{what} {}: {shown}", short(&id))));
        }
        let t = Instant::now();
        let (d, idx) = jobs::deployment(c, &id, index, wait).await?;
        if index > 0 {
            clock.nomad_wait += t.elapsed();
        }
        let summary = DeploymentSummary::from(&d);
        let line = format!("{}: {}", summary.status, summary.health());
        if line != shown {
            progress.line(&format!(
                "{} {}: {line}",
                if rolling_back { "rollback" } else { "deployment" },
                short(&id)
            ));
            shown = line;
        }
        if rolling_back {
            report.rollback = Some(summary);
        } else {
            report.deployment = Some(summary);
        }
        if !d.done() {
            index = idx.max(1);
            continue;
        }
        if rolling_back {
            break;
        }
        if d.status != "successful" {
            report.failed_allocations = failed_allocations(c, &d.id).await;
        }
        if d.status == "failed" && d.auto_revert() {
            if let Some(next) = rollback(c, job, &d.id, clock).await? {
                progress.line(&format!(
                    "deployment {} failed; following the auto-revert rollback {}",
                    short(&d.id),
                    short(&next)
                ));
                id = next;
                index = 0;
                shown.clear();
                rolling_back = true;
                continue;
            }
            report.warnings.push(
                "the deployment failed and auto_revert is set, but Nomad started no rollback (no stable version to revert to)"
                    .into(),
            );
        }
        break;
    }
    report.outcome = match report.deployment.as_ref().map(|d| d.status.as_str()) {
        Some("successful") => Outcome::Deployed,
        _ => Outcome::DeploymentFailed,
    };
    Ok(())
}

/// The deployment Nomad starts when it reverts a failed one (it appears
/// about a second later); `None` when none came.
async fn rollback(c: &Client, job: &str, failed: &str, clock: &mut Clock) -> Result<Option<String>> {
    for _ in 0..5 {
        let t = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        clock.nomad_wait += t.elapsed();
        if let Some(d) = jobs::latest_deployment(c, job).await? {
            if d.id != failed {
                return Ok(Some(d.id));
            }
        }
        if clock.left().is_none() {
            break;
        }
    }
    Ok(None)
}

async fn failed_allocations(c: &Client, deployment: &str) -> Vec<String> {
    match jobs::deployment_allocations(c, deployment).await {
        Ok(allocs) => allocs
            .iter()
            .filter(|a| {
                a.client_status == "failed"
                    || a.deployment_status.as_ref().and_then(|h| h.healthy) == Some(false)
            })
            .map(|a| {
                format!(
                    "{} on {}: {}{}",
                    short(&a.id),
                    if a.node_name.is_empty() {
                        short(&a.node_id)
                    } else {
                        &a.node_name
                    },
                    a.client_status,
                    a.why().map(|w| format!(" ({w})")).unwrap_or_default()
                )
            })
            .collect(),
        Err(e) => {
            tracing::debug!("listing the allocations of deployment {deployment}: {e:#}");
            Vec::new()
        }
    }
}

/// `/infrastructure/jobs/<job>/<field>` as the job stands now; only values
/// that differ from what SSM holds are written.
async fn record(ctx: &Ctx, c: &Client, id: &str, report: &mut RunReport) -> Result<()> {
    let Some(job) = jobs::job(c, id).await? else {
        return Ok(());
    };
    report.version = Some(job.version);
    report.job_modify_index = job.job_modify_index;
    // Not followed (--detach): the latest deployment, if it is this version's.
    let latest = match report.rollback.as_ref().or(report.deployment.as_ref()) {
        Some(d) => Some((d.id.clone(), d.status.clone())),
        None => jobs::latest_deployment(c, id)
            .await?
            .filter(|d| d.job_version == job.version)
            .map(|d| (d.id, d.status)),
    };
    let desired = desired_outputs(
        job.version,
        job.job_modify_index,
        job.submit_time,
        latest.as_ref().map(|(i, s)| (i.as_str(), s.as_str())),
    );
    let names: Vec<String> = desired.iter().map(|(f, _)| outputs::job(id, f)).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let stored = ctx.outputs.read(&refs).await?;
    for (name, (_, value)) in names.iter().zip(&desired) {
        let old = stored.get(name);
        if old.map(|o| o.expose()) == Some(value.as_str()) {
            continue;
        }
        ctx.outputs
            .write(name, value, outputs::Kind::Plain, old.is_some())
            .await?;
        report.outputs_written.push(name.clone());
    }
    Ok(())
}

/// The values `job run` records, by field name.
pub fn desired_outputs(
    version: u64,
    modify_index: u64,
    submit_time_ns: i64,
    deployment: Option<(&str, &str)>,
) -> Vec<(&'static str, String)> {
    let mut out = vec![
        (outputs::JOB_VERSION, version.to_string()),
        (outputs::JOB_MODIFY_INDEX, modify_index.to_string()),
        (outputs::JOB_SUBMITTED_AT, rfc3339(submit_time_ns)),
    ];
    if let Some((id, status)) = deployment {
        out.push((outputs::JOB_DEPLOYMENT_ID, id.to_string()));
        out.push((outputs::JOB_DEPLOYMENT_STATUS, status.to_string()));
    }
    out
}

/// Unix nanoseconds as RFC 3339 UTC with seconds (`2026-11-23T16:45:32Z`).
pub fn rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub fn short(id: &str) -> &str {
    id.get(..8).unwrap_or(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_452_332_123_456_789), "2026-11-23T16:45:32Z");
        assert_eq!(rfc3339(951_782_400_000_000_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn outputs_without_a_deployment() {
        let o = desired_outputs(3, 42, 0, None);
        let names: Vec<&str> = o.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["version", "job_modify_index", "submitted_at"]);
        assert_eq!(desired_outputs(1, 2, 0, Some(("d", "successful"))).len(), 5);
    }

    #[test]
    fn exit_codes_as_nomad() {
        assert_eq!(Outcome::Deployed.exit_code(), 0);
        assert_eq!(Outcome::Registered.exit_code(), 0);
        assert_eq!(Outcome::PlacementFailed.exit_code(), 2);
        assert_eq!(Outcome::DeploymentFailed.exit_code(), 1);
        assert_eq!(Outcome::TimedOut.exit_code(), 1);
    }
}
