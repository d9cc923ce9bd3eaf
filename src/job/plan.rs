//! `edgectl job plan`: the server's dry run of a job file, its diff drawn
//! as `nomad job plan` draws it, and the `job run --check-index` to run next.

use super::run::PlacementFailure;
use super::{connect, describe_failure, explain, group_drivers, job_id, parse, SourceSettings};
use crate::cloud::Ctx;
use crate::nomad::jobs::{self, DesiredUpdates, FieldDiff, JobDiff, ObjectDiff};
use anyhow::Result;
use serde::Serialize;
use std::collections::BTreeMap;

#[derive(Debug, Clone, Serialize)]
pub struct PlanReport {
    pub job: String,
    pub file: String,
    /// 0 when the job does not exist yet.
    pub job_modify_index: u64,
    /// Whether running it would place, stop, migrate or replace allocations.
    pub changes: bool,
    pub diff: Option<JobDiff>,
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
    pub placement_failures: Vec<PlacementFailure>,
    pub warnings: Vec<String>,
    /// The command that registers exactly this plan.
    pub next: String,
}

pub async fn plan(ctx: &Ctx, src: &SourceSettings) -> Result<PlanReport> {
    let source = super::load(src, &super::image_repository(ctx))?;
    let (c, token) = connect(ctx).await?;
    let job = parse(&c, &source, token).await?;
    let id = job_id(&job)?;
    let resp = jobs::plan(&c, &id, &job)
        .await
        .map_err(|e| explain(e, &format!("plan job `{id}`"), token))?;
    let updates = resp.annotations.map(|a| a.desired_tg_updates).unwrap_or_default();
    let changes = has_changes(resp.diff.as_ref(), &updates);
    Ok(PlanReport {
        job: id,
        file: source.path.display().to_string(),
        job_modify_index: resp.job_modify_index,
        changes,
        placement_failures: resp
            .failed_tg_allocs
            .iter()
            .map(|(g, m)| {
                let drivers = group_drivers(&job, g);
                PlacementFailure {
                    group: g.clone(),
                    message: describe_failure(g, &drivers, m),
                    drivers,
                    metrics: m.clone(),
                }
            })
            .collect(),
        diff: resp.diff,
        desired_tg_updates: updates,
        warnings: resp
            .warnings
            .lines()
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string)
            .collect(),
        next: next_command(src, resp.job_modify_index),
    })
}

/// `nomad job plan`'s exit rule: changes when the diff is not `None` and
/// some group would place, stop, migrate, be replaced or get canaries.
pub fn has_changes(diff: Option<&JobDiff>, updates: &BTreeMap<String, DesiredUpdates>) -> bool {
    match diff {
        None => false,
        Some(d) if d.r#type == "None" => false,
        Some(_) => updates
            .values()
            .any(|u| u.stop + u.place + u.migrate + u.destructive_update + u.canary > 0),
    }
}

fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+".contains(c));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// `edgectl job run --check-index N NAME …` with the same variables.
pub fn next_command(src: &SourceSettings, index: u64) -> String {
    let mut parts = vec!["edgectl job run --check-index".to_string(), index.to_string()];
    if src.tag != "latest" {
        parts.push(format!("--tag {}", shell_quote(&src.tag)));
    }
    for f in &src.var_files {
        parts.push(format!("--var-file {}", shell_quote(&f.display().to_string())));
    }
    for v in &src.vars {
        parts.push(format!("--var {}", shell_quote(v)));
    }
    if src.jobs_dir != std::path::Path::new("jobs") {
        parts.push(format!(
            "--jobs-dir {}",
            shell_quote(&src.jobs_dir.display().to_string())
        ));
    }
    parts.push(shell_quote(&src.name));
    parts.join(" ")
}

fn marker(kind: &str) -> &'static str {
    match kind {
        "Added" => "+",
        "Deleted" => "-",
        "Edited" => "+/-",
        _ => "",
    }
}

fn field_line(f: &FieldDiff) -> String {
    let value = match f.r#type.as_str() {
        "Added" => format!("{:?}", f.new),
        "Deleted" => format!("{:?}", f.old),
        _ => format!("{:?} => {:?}", f.old, f.new),
    };
    let ann = if f.annotations.is_empty() {
        String::new()
    } else {
        format!(" ({})", f.annotations.join(", "))
    };
    format!("{} {}: {value}{ann}", marker(&f.r#type), f.name)
}

fn fields_and_objects(fields: &[FieldDiff], objects: &[ObjectDiff], indent: usize, out: &mut Vec<String>) {
    let pad = " ".repeat(indent);
    for f in fields.iter().filter(|f| f.r#type != "None") {
        out.push(format!("{pad}{}", field_line(f)));
    }
    for o in objects.iter().filter(|o| o.r#type != "None") {
        out.push(format!("{pad}{} {} {{", marker(&o.r#type), o.name));
        fields_and_objects(&o.fields, &o.objects, indent + 2, out);
        out.push(format!("{pad}}}"));
    }
}

/// The diff as `nomad job plan` draws it: `+` added, `-` deleted, `+/-`
/// edited, unchanged parts left out; each group with the scheduler's counts.
pub fn diff_lines(diff: &JobDiff, updates: &BTreeMap<String, DesiredUpdates>) -> Vec<String> {
    let mut out = Vec::new();
    let m = marker(&diff.r#type);
    let job_marker = if m.is_empty() { " " } else { m };
    out.push(format!("{job_marker} Job: {:?}", diff.id));
    fields_and_objects(&diff.fields, &diff.objects, 0, &mut out);
    for g in &diff.task_groups {
        let counts = group_counts(
            g.updates.iter().map(|(k, v)| (k.as_str(), *v)),
            updates.get(&g.name),
        );
        let gm = if marker(&g.r#type).is_empty() {
            " "
        } else {
            marker(&g.r#type)
        };
        out.push(format!("{gm} Task Group: {:?}{counts}", g.name));
        fields_and_objects(&g.fields, &g.objects, 2, &mut out);
        for t in &g.tasks {
            if t.r#type == "None" {
                continue;
            }
            let ann = if t.annotations.is_empty() {
                String::new()
            } else {
                format!(" ({})", t.annotations.join(", "))
            };
            out.push(format!("  {} Task: {:?}{ann}", marker(&t.r#type), t.name));
            fields_and_objects(&t.fields, &t.objects, 4, &mut out);
        }
    }
    out
}

/// ` (1 create, 1 ignore)` from the diff's per-group updates, else the
/// scheduler's annotations.
fn group_counts<'a>(
    diff_updates: impl Iterator<Item = (&'a str, u64)>,
    ann: Option<&DesiredUpdates>,
) -> String {
    let mut parts: Vec<String> = diff_updates
        .filter(|(_, n)| *n > 0)
        .map(|(k, n)| format!("{n} {k}"))
        .collect();
    if parts.is_empty() {
        if let Some(u) = ann {
            for (n, k) in [
                (u.place, "create"),
                (u.destructive_update, "create/destroy update"),
                (u.in_place_update, "in-place update"),
                (u.stop, "destroy"),
                (u.migrate, "migrate"),
                (u.canary, "canary"),
                (u.ignore, "ignore"),
            ] {
                if n > 0 {
                    parts.push(format!("{n} {k}"));
                }
            }
        }
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!(" ({})", parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nomad::jobs::{TaskDiff, TaskGroupDiff};

    fn field(t: &str, name: &str, old: &str, new: &str) -> FieldDiff {
        FieldDiff {
            r#type: t.into(),
            name: name.into(),
            old: old.into(),
            new: new.into(),
            annotations: vec![],
        }
    }

    #[test]
    fn no_change_exits_zero() {
        let none = JobDiff {
            r#type: "None".into(),
            ..Default::default()
        };
        let mut u = BTreeMap::new();
        u.insert(
            "g".to_string(),
            DesiredUpdates {
                ignore: 1,
                ..Default::default()
            },
        );
        assert!(!has_changes(Some(&none), &u));
        assert!(!has_changes(None, &u));
        let edited = JobDiff {
            r#type: "Edited".into(),
            ..Default::default()
        };
        assert!(
            !has_changes(Some(&edited), &u),
            "in-place/ignore only is no change"
        );
        u.get_mut("g").unwrap().destructive_update = 1;
        assert!(has_changes(Some(&edited), &u));
    }

    #[test]
    fn edited_task_is_drawn_like_nomad() {
        let diff = JobDiff {
            r#type: "Edited".into(),
            id: "heartbeat".into(),
            task_groups: vec![TaskGroupDiff {
                r#type: "Edited".into(),
                name: "heartbeat".into(),
                updates: [("create/destroy update".to_string(), 1)].into(),
                tasks: vec![TaskDiff {
                    r#type: "Edited".into(),
                    name: "beat".into(),
                    annotations: vec!["forces create/destroy update".into()],
                    fields: vec![field("Edited", "Env[MESSAGE]", "alive", "hello")],
                    objects: vec![ObjectDiff {
                        r#type: "Added".into(),
                        name: "Constraint".into(),
                        fields: vec![field("Added", "LTarget", "", "${attr.kernel.name}")],
                        objects: vec![],
                    }],
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        assert_eq!(
            diff_lines(&diff, &BTreeMap::new()),
            [
                "+/- Job: \"heartbeat\"",
                "+/- Task Group: \"heartbeat\" (1 create/destroy update)",
                "  +/- Task: \"beat\" (forces create/destroy update)",
                "    +/- Env[MESSAGE]: \"alive\" => \"hello\"",
                "    + Constraint {",
                "      + LTarget: \"${attr.kernel.name}\"",
                "    }",
            ]
        );
    }

    #[test]
    fn next_command_keeps_the_variables() {
        let s = SourceSettings {
            name: "heartbeat".into(),
            jobs_dir: "jobs".into(),
            vars: vec!["message=hello world".into()],
            var_files: vec![],
            tag: "latest".into(),
        };
        assert_eq!(
            next_command(&s, 12),
            "edgectl job run --check-index 12 --var 'message=hello world' heartbeat"
        );
    }
}
