//! Nomad's job, evaluation, deployment and allocation endpoints: the
//! requests `edgectl job` makes and the parts of the answers it reads.
//! Answers are decoded leniently (missing or `null` fields default), so
//! older and newer servers both work.

use super::client::{api_error, Client};
use anyhow::Result;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::Duration;

/// `null` (Go's nil slice or map) reads as empty.
fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// `/` and other reserved characters inside a job ID stay one path segment.
pub fn escape(id: &str) -> String {
    let mut out = String::new();
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Submission<'a> {
    pub source: &'a str,
    pub format: &'a str,
    pub variables: &'a str,
}

/// `POST /v1/jobs/parse`: the server parses HCL2 with the given var-file
/// text and canonicalizes; the job as JSON, ready to register.
pub async fn parse(c: &Client, hcl: &str, variables: &str) -> Result<Value> {
    // Reads nothing, writes nothing: safe to repeat.
    c.idempotent()
        .post(
            "/v1/jobs/parse",
            &serde_json::json!({"JobHCL": hcl, "Canonicalize": true, "Variables": variables}),
        )
        .await
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct RegisterResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    #[serde(rename = "EvalCreateIndex")]
    pub eval_create_index: u64,
    #[serde(rename = "JobModifyIndex")]
    pub job_modify_index: u64,
    #[serde(rename = "Warnings")]
    pub warnings: String,
}

/// `POST /v1/jobs`; with `check_index`, only when the job's modify index
/// is that (0: only when the job does not exist).
pub async fn register(
    c: &Client,
    job: &Value,
    check_index: Option<u64>,
    submission: Option<&Submission<'_>>,
) -> Result<RegisterResponse> {
    let mut body = serde_json::json!({"Job": job});
    if let Some(i) = check_index {
        body["EnforceIndex"] = true.into();
        body["JobModifyIndex"] = i.into();
    }
    if let Some(s) = submission {
        body["Submission"] = serde_json::to_value(s)?;
    }
    // The same job again is no new version; with a check index, a repeat
    // after an unseen success would report a false conflict, so no retry.
    let c = if check_index.is_none() {
        c.idempotent()
    } else {
        c.clone()
    };
    c.post("/v1/jobs", &body).await
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct FieldDiff {
    pub r#type: String,
    pub name: String,
    pub old: String,
    pub new: String,
    #[serde(deserialize_with = "nullable")]
    pub annotations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ObjectDiff {
    pub r#type: String,
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "nullable")]
    pub objects: Vec<ObjectDiff>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskDiff {
    pub r#type: String,
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "nullable")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "nullable")]
    pub annotations: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskGroupDiff {
    pub r#type: String,
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "nullable")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "nullable")]
    pub tasks: Vec<TaskDiff>,
    #[serde(deserialize_with = "nullable")]
    pub updates: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobDiff {
    pub r#type: String,
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub fields: Vec<FieldDiff>,
    #[serde(deserialize_with = "nullable")]
    pub objects: Vec<ObjectDiff>,
    #[serde(deserialize_with = "nullable")]
    pub task_groups: Vec<TaskGroupDiff>,
}

/// What the scheduler would do to one task group.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DesiredUpdates {
    pub ignore: u64,
    pub place: u64,
    pub migrate: u64,
    pub stop: u64,
    pub in_place_update: u64,
    pub destructive_update: u64,
    pub canary: u64,
    pub preemptions: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlanAnnotations {
    #[serde(rename = "DesiredTGUpdates", deserialize_with = "nullable")]
    pub desired_tg_updates: BTreeMap<String, DesiredUpdates>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PlanResponse {
    pub job_modify_index: u64,
    pub diff: Option<JobDiff>,
    pub annotations: Option<PlanAnnotations>,
    #[serde(rename = "FailedTGAllocs", deserialize_with = "nullable")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
    pub warnings: String,
}

/// `POST /v1/job/:id/plan` with the diff.
pub async fn plan(c: &Client, id: &str, job: &Value) -> Result<PlanResponse> {
    // A dry run: safe to repeat.
    c.idempotent()
        .post(
            &format!("/v1/job/{}/plan", escape(id)),
            &serde_json::json!({"Job": job, "Diff": true, "PolicyOverride": false}),
        )
        .await
}

/// Why the scheduler could not place a task group.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocMetric {
    pub nodes_evaluated: u64,
    pub nodes_filtered: u64,
    pub nodes_in_pool: u64,
    #[serde(deserialize_with = "nullable")]
    pub nodes_available: BTreeMap<String, i64>,
    #[serde(deserialize_with = "nullable")]
    pub class_filtered: BTreeMap<String, u64>,
    #[serde(deserialize_with = "nullable")]
    pub constraint_filtered: BTreeMap<String, u64>,
    pub nodes_exhausted: u64,
    #[serde(deserialize_with = "nullable")]
    pub dimension_exhausted: BTreeMap<String, u64>,
    #[serde(deserialize_with = "nullable")]
    pub quota_exhausted: Vec<String>,
    pub coalesced_failures: u64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Evaluation {
    #[serde(rename = "ID")]
    pub id: String,
    pub status: String,
    pub status_description: String,
    #[serde(rename = "DeploymentID")]
    pub deployment_id: String,
    pub next_eval: String,
    pub blocked_eval: String,
    /// Nanoseconds to wait before the next evaluation runs.
    pub wait: u64,
    #[serde(rename = "FailedTGAllocs", deserialize_with = "nullable")]
    pub failed_tg_allocs: BTreeMap<String, AllocMetric>,
}

impl Evaluation {
    pub fn done(&self) -> bool {
        matches!(
            self.status.as_str(),
            "complete" | "failed" | "canceled" | "cancelled"
        )
    }
}

pub async fn evaluation(c: &Client, id: &str, index: u64, wait: Duration) -> Result<(Evaluation, u64)> {
    let path = format!("/v1/evaluation/{}", escape(id));
    if index == 0 {
        c.get_indexed(&path).await
    } else {
        c.get_blocking(&path, index, wait).await
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeploymentState {
    pub auto_revert: bool,
    pub desired_total: u64,
    pub placed_allocs: u64,
    pub healthy_allocs: u64,
    pub unhealthy_allocs: u64,
    pub desired_canaries: u64,
    pub promoted: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Deployment {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "JobID")]
    pub job_id: String,
    pub job_version: u64,
    pub status: String,
    pub status_description: String,
    #[serde(deserialize_with = "nullable")]
    pub task_groups: BTreeMap<String, DeploymentState>,
}

impl Deployment {
    /// `successful`, `failed`, `cancelled` or `blocked`: nothing more will happen by itself.
    pub fn done(&self) -> bool {
        matches!(
            self.status.as_str(),
            "successful" | "failed" | "cancelled" | "blocked"
        )
    }

    pub fn auto_revert(&self) -> bool {
        self.task_groups.values().any(|g| g.auto_revert)
    }
}

/// `GET /v1/deployment/:id`, blocking once `index` is known.
pub async fn deployment(c: &Client, id: &str, index: u64, wait: Duration) -> Result<(Deployment, u64)> {
    let path = format!("/v1/deployment/{}?stale", escape(id));
    if index == 0 {
        c.get_indexed(&path).await
    } else {
        c.get_blocking(&path, index, wait).await
    }
}

/// The job's latest deployment, if any.
pub async fn latest_deployment(c: &Client, job: &str) -> Result<Option<Deployment>> {
    c.get(&format!("/v1/job/{}/deployment", escape(job))).await
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct JobInfo {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub r#type: String,
    pub status: String,
    pub stop: bool,
    pub stable: bool,
    pub version: u64,
    pub job_modify_index: u64,
    /// Unix nanoseconds.
    pub submit_time: i64,
    pub periodic: Option<Value>,
    pub parameterized_job: Option<Value>,
    pub multiregion: Option<Value>,
}

/// `GET /v1/job/:id`; `None` when Nomad does not know the job.
pub async fn job(c: &Client, id: &str) -> Result<Option<JobInfo>> {
    match c.get(&format!("/v1/job/{}", escape(id))).await {
        Ok(j) => Ok(Some(j)),
        Err(e) if api_error(&e).is_some_and(|a| a.status == 404) => Ok(None),
        Err(e) => Err(e),
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskEvent {
    pub r#type: String,
    pub display_message: String,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TaskState {
    pub state: String,
    pub failed: bool,
    #[serde(deserialize_with = "nullable")]
    pub events: Vec<TaskEvent>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocHealth {
    pub healthy: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AllocStub {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "NodeID")]
    pub node_id: String,
    pub node_name: String,
    pub task_group: String,
    pub job_version: u64,
    pub desired_status: String,
    pub client_status: String,
    pub client_description: String,
    pub deployment_status: Option<AllocHealth>,
    #[serde(deserialize_with = "nullable")]
    pub task_states: BTreeMap<String, TaskState>,
    /// Unix nanoseconds.
    pub create_time: i64,
}

impl AllocStub {
    /// The last event message of a failed task, e.g. "Exit Code: 1".
    pub fn why(&self) -> Option<String> {
        self.task_states.iter().find_map(|(task, s)| {
            // The task's end says most ("Exit Code: 1"), else its last word.
            let ev = s
                .events
                .iter()
                .rev()
                .find(|e| {
                    matches!(
                        e.r#type.as_str(),
                        "Terminated" | "Driver Failure" | "Failed Validation"
                    )
                })
                .or_else(|| s.events.iter().rev().find(|e| !e.display_message.is_empty()))?;
            (s.failed || self.client_status == "failed").then(|| format!("{task}: {}", ev.display_message))
        })
    }
}

pub async fn allocations(c: &Client, job: &str) -> Result<Vec<AllocStub>> {
    c.get(&format!("/v1/job/{}/allocations?all=true", escape(job)))
        .await
}

pub async fn deployment_allocations(c: &Client, deployment: &str) -> Result<Vec<AllocStub>> {
    c.get(&format!("/v1/deployment/allocations/{}", escape(deployment)))
        .await
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StopResponse {
    #[serde(rename = "EvalID")]
    pub eval_id: String,
    #[serde(rename = "JobModifyIndex")]
    pub job_modify_index: u64,
}

/// `DELETE /v1/job/:id`, with `purge` also forgetting its history.
pub async fn stop(c: &Client, id: &str, purge: bool) -> Result<StopResponse> {
    c.delete_json(&format!("/v1/job/{}?purge={purge}", escape(id)))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nulls_decode_as_empty() {
        let e: Evaluation = serde_json::from_str(
            r#"{"ID":"e1","Status":"complete","FailedTGAllocs":{"g":{"NodesEvaluated":1,"ConstraintFiltered":{"missing drivers":1},"NodesAvailable":null}},"NextEval":""}"#,
        )
        .unwrap();
        assert!(e.done());
        assert_eq!(e.failed_tg_allocs["g"].constraint_filtered["missing drivers"], 1);
        let d: Deployment =
            serde_json::from_str(r#"{"ID":"d","Status":"failed","TaskGroups":null}"#).unwrap();
        assert!(d.done() && !d.auto_revert());
        let p: PlanResponse = serde_json::from_str(
            r#"{"JobModifyIndex":7,"Diff":{"Type":"None","Fields":null,"Objects":null,"TaskGroups":null},"Annotations":{"DesiredTGUpdates":null},"FailedTGAllocs":null}"#,
        )
        .unwrap();
        assert_eq!(p.job_modify_index, 7);
        assert_eq!(p.diff.unwrap().r#type, "None");
    }

    #[test]
    fn ids_are_one_path_segment() {
        assert_eq!(escape("iot-publish"), "iot-publish");
        assert_eq!(escape("a/b c"), "a%2Fb%20c");
    }
}
