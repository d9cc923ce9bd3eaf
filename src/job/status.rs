//! `edgectl job status` and `edgectl job stop`.

use super::run::{short, DeploymentSummary};
use super::{connect, explain};
use crate::cloud::Ctx;
use crate::error::User;
use crate::nomad::jobs;
use anyhow::Result;
use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct AllocRow {
    pub id: String,
    pub node: String,
    pub group: String,
    pub version: u64,
    pub desired: String,
    pub status: String,
    /// The deployment's health verdict, when it gave one.
    pub healthy: Option<bool>,
    /// The last event of a failed task.
    pub why: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub job: String,
    pub r#type: String,
    pub status: String,
    pub version: u64,
    pub stopped: bool,
    pub job_modify_index: u64,
    pub allocations: Vec<AllocRow>,
    pub deployment: Option<DeploymentSummary>,
}

fn not_registered(id: &str) -> anyhow::Error {
    User::new(
        format!("job `{id}` is not registered in Nomad"),
        format!("run it with `edgectl job run {id}`; `nomad job status` lists the jobs there are"),
    )
    .into()
}

pub async fn status(ctx: &Ctx, id: &str) -> Result<StatusReport> {
    let (c, token) = connect(ctx).await?;
    let job = jobs::job(&c, id)
        .await
        .map_err(|e| explain(e, &format!("read job `{id}`"), token))?
        .ok_or_else(|| not_registered(id))?;
    let mut allocs = jobs::allocations(&c, id).await?;
    allocs.sort_by_key(|a| std::cmp::Reverse(a.create_time));
    let deployment = jobs::latest_deployment(&c, id).await?;
    Ok(StatusReport {
        job: job.id,
        r#type: job.r#type,
        status: job.status,
        version: job.version,
        stopped: job.stop,
        job_modify_index: job.job_modify_index,
        allocations: allocs
            .iter()
            .map(|a| AllocRow {
                id: short(&a.id).to_string(),
                node: if a.node_name.is_empty() {
                    short(&a.node_id).to_string()
                } else {
                    a.node_name.clone()
                },
                group: a.task_group.clone(),
                version: a.job_version,
                desired: a.desired_status.clone(),
                status: a.client_status.clone(),
                healthy: a.deployment_status.as_ref().and_then(|h| h.healthy),
                why: a.why(),
            })
            .collect(),
        deployment: deployment.as_ref().map(DeploymentSummary::from),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct StopReport {
    pub job: String,
    pub purged: bool,
    pub eval_id: String,
}

/// Stops the job (with `purge`, also forgets it); a job Nomad does not
/// know is an error.
pub async fn stop(ctx: &Ctx, id: &str, purge: bool) -> Result<StopReport> {
    let (c, token) = connect(ctx).await?;
    if jobs::job(&c, id)
        .await
        .map_err(|e| explain(e, &format!("read job `{id}`"), token))?
        .is_none()
    {
        return Err(not_registered(id));
    }
    let r = jobs::stop(&c, id, purge)
        .await
        .map_err(|e| explain(e, &format!("stop job `{id}`"), token))?;
    Ok(StopReport {
        job: id.to_string(),
        purged: purge,
        eval_id: r.eval_id,
    })
}
