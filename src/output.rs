//! Everything the user sees: human or JSON rendering of reports, progress
//! on stderr, and the choices made once (format, colour, terminal).
//! Logic never prints; it returns reports or calls a [`Reporter`].

use crate::cloud::{Report, StatusRow};
use crate::plan::{count, Change};
use crate::progress::{Mode, Waits};
use serde::Serialize;
use std::io::{IsTerminal, Write};
use std::time::Duration;

/// Bumped whenever a JSON document changes shape.
pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Clone, Copy)]
pub struct Printer {
    pub format: Format,
    pub color: bool,
    /// Live on a terminal, plain lines in CI logs, none for JSON or under
    /// `-v` (where they would interleave with logs).
    pub progress: Mode,
}

impl Printer {
    pub fn new(format: Format, verbose: u8) -> Self {
        let tty = std::io::stderr().is_terminal();
        Printer {
            format,
            // NO_COLOR counts when set and not empty (no-color.org).
            color: tty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
            progress: match (format, verbose, tty) {
                (Format::Json, _, _) | (_, 1.., _) => Mode::Off,
                (_, _, true) => Mode::Live,
                (_, _, false) => Mode::Lines,
            },
        }
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.color {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    pub fn warn(&self, message: &str) {
        eprintln!("{} {message}", self.paint("33", "warning:"));
    }

    pub fn error(&self, message: &str, hints: &[String]) {
        for (i, line) in message.lines().enumerate() {
            let label = if i == 0 { "error:" } else { "      " };
            eprintln!("{} {line}", self.paint("31", label));
        }
        for hint in hints {
            eprintln!("{} {hint}", self.paint("36", "hint:"));
        }
        if self.format == Format::Json {
            let doc = serde_json::json!({"schema": SCHEMA, "error": message, "hints": hints});
            println!("{doc}");
        }
    }

    /// Writes one document to stdout; a closed pipe is not an error.
    fn out(&self, text: &str) {
        let mut stdout = std::io::stdout().lock();
        let _ = writeln!(stdout, "{text}");
    }

    pub fn json<T: Serialize>(&self, command: &str, body: &T) {
        let mut doc = serde_json::to_value(body).expect("reports serialize");
        if let Some(obj) = doc.as_object_mut() {
            obj.insert("schema".into(), SCHEMA.into());
            obj.insert("command".into(), command.into());
        }
        self.out(&serde_json::to_string_pretty(&doc).expect("json"));
    }

    pub fn plan_text(&self, changes: &[Change], tense: Tense) -> String {
        if changes.is_empty() {
            return "No changes.".to_string();
        }
        let mut s = String::new();
        for c in changes {
            let marker = match c.action.marker() {
                "+" => self.paint("32", "+"),
                "-" => self.paint("31", "-"),
                "~" => self.paint("33", "~"),
                m => self.paint("35", m),
            };
            s.push_str(&format!("  {marker} {} ({})\n", c.address, c.reason));
            for f in &c.fields {
                match &f.old {
                    Some(old) => s.push_str(&format!("      {}: {old} -> {}\n", f.name, f.new)),
                    None => s.push_str(&format!("      {}: {}\n", f.name, f.new)),
                }
            }
        }
        let n = count(changes);
        s.push_str(&match tense {
            Tense::Will => format!(
                "\nPlan: {} to create, {} to update, {} to replace, {} to delete.",
                n.create, n.update, n.replace, n.delete
            ),
            Tense::Did => format!(
                "\nApplied: {} created, {} updated, {} replaced, {} deleted.",
                n.create, n.update, n.replace, n.delete
            ),
        });
        s
    }

    pub fn report(&self, command: &str, report: &Report, tense: Tense) {
        match self.format {
            Format::Json => self.json(command, &JsonReport::new(report)),
            Format::Human => {
                let header = format!(
                    "deployment {} in {} (account {})",
                    report.deployment, report.region, report.account
                );
                match tense {
                    Tense::Will => self.out(&format!(
                        "{header}\n\n{}",
                        self.plan_text(&report.planned, Tense::Will)
                    )),
                    Tense::Did if report.planned.is_empty() => self.out(&format!("{header}: no changes.")),
                    Tense::Did => self.out(&format!(
                        "\n{header}: {}",
                        self.plan_text(&report.applied, Tense::Did)
                            .lines()
                            .last()
                            .unwrap_or_default()
                    )),
                }
            }
        }
    }

    pub fn status(&self, rows: &[StatusRow]) {
        match self.format {
            Format::Json => self.json("cloud status", &serde_json::json!({ "resources": rows })),
            Format::Human => {
                let w0 = rows.iter().map(|r| r.address.len()).max().unwrap_or(0).max(8);
                let w1 = rows.iter().map(|r| r.state.len()).max().unwrap_or(0).max(5);
                let mut s = format!("{:w0$}  {:w1$}  ID\n", "RESOURCE", "STATE");
                for r in rows {
                    s.push_str(&format!("{:w0$}  {:w1$}  {}\n", r.address, r.state, r.id));
                }
                self.out(s.trim_end());
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tense {
    Will,
    Did,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    deployment: &'a str,
    region: &'a str,
    account: &'a str,
    changes: &'a [Change],
    applied: &'a [Change],
    summary: crate::plan::Counts,
}

impl<'a> JsonReport<'a> {
    fn new(r: &'a Report) -> Self {
        JsonReport {
            deployment: &r.deployment,
            region: &r.region,
            account: &r.account,
            changes: &r.planned,
            applied: &r.applied,
            summary: count(&r.planned),
        }
    }
}

/// Live progress of an apply. Terminal and silent implementations below.
pub trait Reporter: Sync {
    fn plan(&self, changes: &[Change]);
    fn started(&self, change: &Change);
    fn waiting(&self, change: &Change, what: &str);
    fn finished(&self, change: &Change, elapsed: Duration);
    fn failed(&self, change: &Change);
}

/// Human output: the plan to stdout, one stderr line per step, its waits
/// as progress.
pub struct Terminal(pub Printer, Waits);

impl Terminal {
    pub fn new(printer: Printer) -> Terminal {
        Terminal(printer, Waits::new(printer.progress))
    }
}

impl Reporter for Terminal {
    fn plan(&self, changes: &[Change]) {
        if !changes.is_empty() {
            self.0.out(&self.0.plan_text(changes, Tense::Will));
            self.0.out("");
        }
    }

    fn started(&self, change: &Change) {
        self.1.line(&format!("  {} {}...", ing(change), change.address));
    }

    fn waiting(&self, change: &Change, what: &str) {
        self.1.wait(&change.address, what);
    }

    fn finished(&self, change: &Change, elapsed: Duration) {
        self.1.done(&change.address);
        self.0.out(&format!(
            "  {} {} ({:.1}s)",
            change.action.done(),
            change.address,
            elapsed.as_secs_f64()
        ));
    }

    fn failed(&self, change: &Change) {
        self.1.done(&change.address);
        eprintln!("  {} {}: failed", ing(change), change.address);
    }
}

fn ing(change: &Change) -> &'static str {
    use crate::plan::Action::*;
    match change.action {
        Create => "creating",
        Update => "updating",
        Replace => "replacing",
        Delete => "deleting",
    }
}

/// JSON output: nothing until the final document.
pub struct Quiet;

impl Reporter for Quiet {
    fn plan(&self, _: &[Change]) {}
    fn started(&self, _: &Change) {}
    fn waiting(&self, _: &Change, _: &str) {}
    fn finished(&self, _: &Change, _: Duration) {}
    fn failed(&self, _: &Change) {}
}

/// Per-host lines on stderr during a fleet run.
pub struct HostLines(pub Printer, Waits);

impl HostLines {
    pub fn new(printer: Printer) -> HostLines {
        HostLines(printer, Waits::new(printer.progress))
    }
}

impl crate::device::Progress for HostLines {
    fn host(&self, host: &str, line: &str) {
        self.1
            .line(&format!("{} {line}", self.0.paint("1", &format!("{host}:"))));
    }
}

impl Printer {
    /// A fleet run: per-host changes (dry run: with file diffs), then the
    /// summary table, then a ready-to-paste retry line when some failed.
    pub fn fleet(&self, command: &str, report: &crate::device::FleetReport) {
        use crate::device::Outcome;
        if self.format == Format::Json {
            return self.json(command, report);
        }
        let mut s = String::new();
        for h in &report.hosts {
            if h.changes.is_empty() {
                continue;
            }
            let tense = if report.dry_run { Tense::Will } else { Tense::Did };
            s.push_str(&format!("{}:\n", h.host));
            for line in self.plan_text(&h.changes, tense).lines() {
                // After a real run the addresses say enough; the fields
                // (and diffs) are for the dry run that comes before it.
                if !report.dry_run && line.starts_with("      ") {
                    continue;
                }
                // The diff is shown as lines below its change, not again
                // as one escaped field.
                if line.starts_with("      diff: ") {
                    continue;
                }
                s.push_str(&format!("{line}\n"));
                if let Some(addr) = line.trim_start().split(' ').nth(1) {
                    if let Some(diff) = h.diffs.get(addr) {
                        for d in diff.lines() {
                            s.push_str(&format!("        {d}\n"));
                        }
                    }
                }
            }
            s.push('\n');
        }
        let header = ["HOST", "RESULT", "CHANGES", "TIME", "SSH EXECS", "ERROR"].map(String::from);
        s.push_str(&table_text(&header, &h_rows(report)));
        s.push('\n');
        let failed: Vec<&str> = report.failed();
        let ok = report.hosts.len() - failed.len();
        s.push_str(&format!(
            "\n{ok} of {} devices {}{}",
            report.hosts.len(),
            if report.dry_run { "checked" } else { "succeeded" },
            if report.hosts.iter().any(|h| h.result == Outcome::Failed) {
                format!(
                    "; to retry the failed ones: edgectl device provision {}",
                    failed.join(" ")
                )
            } else {
                String::new()
            }
        ));
        self.out(&s);
    }
}

fn h_rows(report: &crate::device::FleetReport) -> Vec<[String; 6]> {
    report
        .hosts
        .iter()
        .map(|h| {
            [
                h.host.clone(),
                format!("{:?}", h.result).to_lowercase(),
                h.changes.len().to_string(),
                format!("{:.1}s", h.seconds),
                h.round_trips.to_string(),
                h.error.clone().unwrap_or_default(),
            ]
        })
        .collect()
}

impl Printer {
    pub fn device_status(&self, rows: &[crate::device::status::DeviceStatus]) {
        if self.format == Format::Json {
            return self.json("device status", &serde_json::json!({ "devices": rows }));
        }
        let yes_no = |b: Option<bool>, yes: &str, no: &str| match b {
            Some(true) => yes.to_string(),
            Some(false) => no.to_string(),
            None => "-".to_string(),
        };
        let table: Vec<[String; 6]> = rows
            .iter()
            .map(|r| {
                [
                    r.host.clone(),
                    yes_no(Some(r.reachable), "reachable", "unreachable"),
                    yes_no(r.nomad_active, "active", "inactive"),
                    match (&r.certificate_expires, r.certificate_days_left) {
                        (Some(at), Some(d)) => format!("{} ({d} days)", &at[..at.len().min(10)]),
                        _ => "-".into(),
                    },
                    r.node_status
                        .clone()
                        .unwrap_or_else(|| "(control plane not reachable)".into()),
                    r.error.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let header = ["HOST", "SSH", "NOMAD", "CERTIFICATE EXPIRES", "NODE", "ERROR"].map(String::from);
        self.out(&table_text(&header, &table));
    }
}

/// Left-aligned columns two spaces apart, trailing blanks trimmed.
fn table_text<const N: usize>(header: &[String; N], rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in std::iter::once(header).chain(rows) {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut s = String::new();
    for r in std::iter::once(header).chain(rows) {
        let line: Vec<String> = r.iter().zip(widths).map(|(c, w)| format!("{c:w$}")).collect();
        s.push_str(line.join("  ").trim_end());
        s.push('\n');
    }
    s.trim_end().to_string()
}

/// Events of a `job run` on stderr, and its wait for the deployment.
pub struct JobLines(Waits);

impl JobLines {
    pub fn new(printer: Printer) -> JobLines {
        JobLines(Waits::new(printer.progress))
    }
}

impl crate::job::Progress for JobLines {
    fn line(&self, line: &str) {
        self.0.line(&format!("  {line}"));
    }

    fn waiting(&self, what: Option<&str>) {
        match what {
            Some(what) => self.0.wait("job", what),
            None => self.0.done("job"),
        }
    }
}

impl Printer {
    /// `job run`: the result on stdout; what went wrong also on stderr.
    pub fn job_run(&self, r: &crate::job::RunReport) {
        use crate::job::run::Outcome;
        if self.format == Format::Json {
            return self.json("job run", r);
        }
        let mut lines = Vec::new();
        let version = r.version.map(|v| format!(" version {v}")).unwrap_or_default();
        let what = match r.outcome {
            Outcome::Deployed => "deployed",
            Outcome::Registered => "registered",
            Outcome::PlacementFailed => "placement failed",
            Outcome::DeploymentFailed => "deployment failed",
            Outcome::TimedOut => "timed out",
        };
        lines.push(format!(
            "Job `{}`{version}: {what}{} ({:.1}s)",
            r.job,
            if r.changed { "" } else { " (unchanged)" },
            r.timings.total_ms as f64 / 1000.0
        ));
        lines.push(format!("  evaluation   {}", r.eval_id));
        if let Some(d) = &r.deployment {
            lines.push(format!(
                "  deployment   {} {} (version {}): {}",
                d.id,
                d.status,
                d.job_version,
                d.health()
            ));
            if !d.description.is_empty() {
                lines.push(format!("               {}", d.description));
            }
        }
        for a in &r.failed_allocations {
            lines.push(format!("  failed alloc {a}"));
        }
        if let Some(d) = &r.rollback {
            lines.push(format!(
                "  rollback     {} {} (version {}): {}",
                d.id,
                d.status,
                d.job_version,
                d.health()
            ));
        }
        for f in &r.placement_failures {
            lines.push(format!("  placement    {}", f.message));
        }
        for w in &r.warnings {
            lines.push(format!("  warning      {w}"));
        }
        lines.push(format!(
            "  outputs      {}",
            if r.outputs_written.is_empty() {
                "unchanged".to_string()
            } else {
                r.outputs_written.join(", ")
            }
        ));
        self.out(&lines.join("\n"));
        let (message, hint) = match r.outcome {
            Outcome::PlacementFailed => (
                format!(
                    "job `{}`: placement failed: {}",
                    r.job,
                    r.placement_failures.iter().map(|f| f.message.as_str()).collect::<Vec<_>>().join("; ")
                ),
                "see which nodes have which drivers with `nomad node status -verbose`; the docker driver needs \
                 `container_runtime: docker` in the inventory"
                    .to_string(),
            ),
            Outcome::DeploymentFailed => (
                format!(
                    "job `{}`: deployment {}{}",
                    r.job,
                    r.deployment.as_ref().map(|d| format!("{} {}", d.id, d.status)).unwrap_or_default(),
                    match &r.rollback {
                        Some(rb) => format!(
                            "; auto-revert rolled back as version {} (deployment {} {})",
                            rb.job_version, rb.id, rb.status
                        ),
                        None => String::new(),
                    }
                ),
                format!("see the allocations with `edgectl job status {}`", r.job),
            ),
            Outcome::TimedOut => (
                format!(
                    "job `{}`: timed out waiting for {}",
                    r.job,
                    r.waiting_for.as_deref().unwrap_or("Nomad")
                ),
                format!(
                    "the job is registered; follow it with `edgectl job status {}`, or raise --timeout",
                    r.job
                ),
            ),
            Outcome::Deployed | Outcome::Registered => return,
        };
        self.error(&message, &[hint]);
    }

    /// `job plan`: the diff, the scheduler's verdict, the command to run next.
    pub fn job_plan(&self, r: &crate::job::PlanReport) {
        if self.format == Format::Json {
            return self.json("job plan", r);
        }
        let mut lines = Vec::new();
        match &r.diff {
            Some(d) => lines.extend(crate::job::plan::diff_lines(d, &r.desired_tg_updates)),
            None => lines.push(format!("  Job: {:?}", r.job)),
        }
        lines.push(String::new());
        lines.push("Scheduler dry-run:".into());
        if r.placement_failures.is_empty() {
            lines.push("- All tasks successfully allocated.".into());
        } else {
            lines.push("- WARNING: Failed to place all allocations.".into());
            for f in &r.placement_failures {
                lines.push(format!("  {}", f.message));
            }
        }
        for w in &r.warnings {
            lines.push(format!("- warning: {w}"));
        }
        lines.push(String::new());
        lines.push(format!("Job Modify Index: {}", r.job_modify_index));
        lines.push(if r.changes {
            "Changes: yes".to_string()
        } else {
            "Changes: none".to_string()
        });
        lines.push("To submit the job with version verification run:".into());
        lines.push(String::new());
        lines.push(r.next.clone());
        self.out(&lines.join("\n"));
    }

    pub fn job_status(&self, r: &crate::job::StatusReport) {
        if self.format == Format::Json {
            return self.json("job status", r);
        }
        let mut out = format!(
            "Job `{}` ({}): {}{}, version {}\n",
            r.job,
            r.r#type,
            r.status,
            if r.stopped { " (stopped)" } else { "" },
            r.version
        );
        if let Some(d) = &r.deployment {
            out.push_str(&format!(
                "Latest deployment {} (version {}): {} - {}\n",
                d.id,
                d.job_version,
                d.status,
                d.health()
            ));
        }
        out.push('\n');
        if r.allocations.is_empty() {
            out.push_str("No allocations.");
        } else {
            let rows: Vec<[String; 7]> = r
                .allocations
                .iter()
                .map(|a| {
                    [
                        a.id.clone(),
                        a.node.clone(),
                        a.group.clone(),
                        a.version.to_string(),
                        a.desired.clone(),
                        a.status.clone(),
                        match a.healthy {
                            Some(true) => "healthy".into(),
                            Some(false) => a.why.clone().unwrap_or_else(|| "unhealthy".into()),
                            None => a.why.clone().unwrap_or_else(|| "-".into()),
                        },
                    ]
                })
                .collect();
            let header =
                ["ALLOC", "NODE", "GROUP", "VERSION", "DESIRED", "STATUS", "HEALTH"].map(String::from);
            out.push_str(&table_text(&header, &rows));
        }
        self.out(&out);
    }

    pub fn job_stop(&self, r: &crate::job::StopReport) {
        if self.format == Format::Json {
            return self.json("job stop", r);
        }
        self.out(&format!(
            "Job `{}` {} (evaluation {})",
            r.job,
            if r.purged { "stopped and purged" } else { "stopped" },
            if r.eval_id.is_empty() { "-" } else { &r.eval_id }
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Value};

    fn printer() -> Printer {
        Printer {
            format: Format::Human,
            color: false,
            progress: Mode::Off,
        }
    }

    #[test]
    fn plan_text_renders_markers_fields_and_footer() {
        let changes = vec![
            Change::new("pca/root", Action::Create, "missing").field("arn", None, Value::KnownAfterApply),
            Change::new("ssm:/k", Action::Update, "value differs").field(
                "value",
                Some(Value::Sensitive),
                Value::Sensitive,
            ),
            Change::new("pca/old", Action::Delete, "duplicate"),
        ];
        let text = printer().plan_text(&changes, Tense::Will);
        assert!(
            text.contains("  + pca/root (missing)\n      arn: (known after apply)\n"),
            "{text}"
        );
        assert!(
            text.contains("  ~ ssm:/k (value differs)\n      value: (sensitive) -> (sensitive)\n"),
            "{text}"
        );
        assert!(text.contains("  - pca/old (duplicate)"));
        assert!(
            text.ends_with("Plan: 1 to create, 1 to update, 0 to replace, 1 to delete."),
            "{text}"
        );
        assert_eq!(printer().plan_text(&[], Tense::Will), "No changes.");
    }
}
