//! `edgectl cloud plan|up|status|down`: the order of the components, the
//! polling of long waits, and nothing component-specific.
//!
//! Each component reads top-down: desired state, observe (read-only, finds
//! resources by tag or fixed name), plan (pure), apply (one write per
//! change). Adding a component is one file and one line in [`components`].

pub mod pca;
pub mod roles_anywhere;

use crate::aws::Aws;
use crate::config::Deployment;
use crate::output::Reporter;
use crate::plan::{Change, Value};
use anyhow::{bail, Result};
use futures::future::BoxFuture;
use serde::Serialize;
use std::any::Any;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The components in dependency order: each may read what the ones before
/// it export. `down` walks the list backwards.
fn components() -> Vec<Box<dyn Erased>> {
    vec![
        Box::new(pca::Pca),                      // root CA, Nomad server and CLI certificates
        Box::new(roles_anywhere::RolesAnywhere), // trust anchor, device role, profile
    ]
}

/// What every component may read.
pub struct Ctx {
    pub aws: Aws,
    pub deployment: String,
    pub config: Deployment,
    pub outputs: crate::outputs::Store,
}

/// Values a component hands to the ones after it, e.g. the CA's ARN.
pub type Exports = BTreeMap<&'static str, Value>;

/// A change and the component's own instruction for carrying it out.
pub struct Planned<Op> {
    pub change: Change,
    pub op: Op,
}

/// What one apply step achieved. Long AWS waits (CA activation, load
/// balancers) say when to look again; this module does the waiting.
#[derive(Debug)]
pub enum Applied {
    Done,
    Pending { what: String, retry_after: Duration },
}

/// One line of `cloud status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    pub address: String,
    pub state: String,
    pub id: String,
}

pub trait Component: Send + Sync {
    type Observed: Send + Sync + 'static;
    type Op: Send + Sync;

    fn name(&self) -> &'static str;
    fn observe(&self, ctx: &Ctx) -> impl std::future::Future<Output = Result<Self::Observed>> + Send;
    fn plan(&self, ctx: &Ctx, inputs: &Exports, observed: &Self::Observed) -> Vec<Planned<Self::Op>>;
    /// Exports as they will be once `planned` is applied.
    fn exports(&self, observed: &Self::Observed, planned: &[Planned<Self::Op>]) -> Exports;
    fn apply(
        &self,
        ctx: &Ctx,
        inputs: &Exports,
        op: &Self::Op,
        observed: &mut Self::Observed,
    ) -> impl std::future::Future<Output = Result<Applied>> + Send;
    fn plan_down(&self, observed: &Self::Observed) -> Vec<Planned<Self::Op>>;
    fn status(&self, observed: &Self::Observed) -> Vec<StatusRow>;
}

/// How long one change may stay pending before we give up on it.
const PENDING_DEADLINE: Duration = Duration::from_secs(15 * 60);

type Observed = Box<dyn Any + Send + Sync>;

/// [`Component`] without its types, so the list above can hold them all.
trait Erased: Send + Sync {
    fn name(&self) -> &'static str;
    fn observe<'a>(&'a self, ctx: &'a Ctx) -> BoxFuture<'a, Result<Observed>>;
    fn plan(&self, ctx: &Ctx, inputs: &Exports, observed: &Observed) -> (Vec<Change>, Exports);
    fn status(&self, observed: &Observed) -> Vec<StatusRow>;
    fn plan_down(&self, observed: &Observed) -> Vec<Change>;
    fn apply<'a>(
        &'a self,
        ctx: &'a Ctx,
        inputs: &'a Exports,
        observed: &'a mut Observed,
        down: bool,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<(Vec<Change>, Exports)>>;
}

impl<C: Component> Erased for C {
    fn name(&self) -> &'static str {
        Component::name(self)
    }

    fn observe<'a>(&'a self, ctx: &'a Ctx) -> BoxFuture<'a, Result<Observed>> {
        Box::pin(async move { Ok(Box::new(Component::observe(self, ctx).await?) as Observed) })
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, observed: &Observed) -> (Vec<Change>, Exports) {
        let observed = observed
            .downcast_ref::<C::Observed>()
            .expect("observed by this component");
        let planned = Component::plan(self, ctx, inputs, observed);
        let exports = Component::exports(self, observed, &planned);
        (planned.into_iter().map(|p| p.change).collect(), exports)
    }

    fn status(&self, observed: &Observed) -> Vec<StatusRow> {
        Component::status(self, observed.downcast_ref().expect("observed by this component"))
    }

    fn plan_down(&self, observed: &Observed) -> Vec<Change> {
        let observed = observed
            .downcast_ref::<C::Observed>()
            .expect("observed by this component");
        Component::plan_down(self, observed)
            .into_iter()
            .map(|p| p.change)
            .collect()
    }

    fn apply<'a>(
        &'a self,
        ctx: &'a Ctx,
        inputs: &'a Exports,
        observed: &'a mut Observed,
        down: bool,
        reporter: &'a dyn Reporter,
    ) -> BoxFuture<'a, Result<(Vec<Change>, Exports)>> {
        Box::pin(async move {
            let observed = observed
                .downcast_mut::<C::Observed>()
                .expect("observed by this component");
            // Planned again with the inputs as they are now: upstream values
            // that were "known after apply" are known at this point.
            let planned = if down {
                Component::plan_down(self, observed)
            } else {
                Component::plan(self, ctx, inputs, observed)
            };
            let mut done = Vec::new();
            for step in &planned {
                let started = Instant::now();
                reporter.started(&step.change);
                loop {
                    match Component::apply(self, ctx, inputs, &step.op, observed).await {
                        Ok(Applied::Done) => break,
                        Ok(Applied::Pending { what, retry_after }) => {
                            if started.elapsed() > PENDING_DEADLINE {
                                bail!(
                                    "{}: still {what} after {PENDING_DEADLINE:?}; run again later",
                                    step.change.address
                                );
                            }
                            reporter.waiting(&step.change, &what);
                            tokio::time::sleep(retry_after).await;
                        }
                        Err(e) => {
                            reporter.failed(&step.change);
                            return Err(e.context(format!(
                                "{} {}",
                                step.change.action.marker(),
                                step.change.address
                            )));
                        }
                    }
                }
                reporter.finished(&step.change, started.elapsed());
                done.push(step.change.clone());
            }
            let exports = Component::exports(self, observed, &[]);
            Ok((done, exports))
        })
    }
}

/// The result of `plan`, `up` and `down`, rendered by `output.rs`.
#[derive(Debug, Serialize)]
pub struct Report {
    pub deployment: String,
    pub region: String,
    pub account: String,
    pub planned: Vec<Change>,
    pub applied: Vec<Change>,
}

struct World {
    items: Vec<(Box<dyn Erased>, Observed)>,
}

async fn observe_all(ctx: &Ctx) -> Result<World> {
    let comps = components();
    let observed = futures::future::try_join_all(comps.iter().map(|c| async move {
        c.observe(ctx)
            .await
            .map_err(|e| e.context(format!("observing {}", c.name())))
    }))
    .await?;
    Ok(World {
        items: comps.into_iter().zip(observed).collect(),
    })
}

fn plan_all(ctx: &Ctx, world: &World) -> Vec<Change> {
    let mut inputs = Exports::new();
    let mut changes = Vec::new();
    for (c, observed) in &world.items {
        let (mut ch, exports) = c.plan(ctx, &inputs, observed);
        changes.append(&mut ch);
        inputs.extend(exports);
    }
    changes
}

fn report(ctx: &Ctx, planned: Vec<Change>, applied: Vec<Change>) -> Report {
    Report {
        deployment: ctx.deployment.clone(),
        region: ctx.aws.region.clone(),
        account: ctx.aws.account.clone(),
        planned,
        applied,
    }
}

pub async fn plan(ctx: &Ctx) -> Result<Report> {
    let world = observe_all(ctx).await?;
    Ok(report(ctx, plan_all(ctx, &world), Vec::new()))
}

/// Observe, show the plan, apply exactly that. An empty plan makes no
/// write call at all.
pub async fn up(ctx: &Ctx, reporter: &dyn Reporter) -> Result<Report> {
    let mut world = observe_all(ctx).await?;
    let planned = plan_all(ctx, &world);
    reporter.plan(&planned);
    let mut applied = Vec::new();
    if !planned.is_empty() {
        let mut inputs = Exports::new();
        for (c, observed) in &mut world.items {
            let (mut done, exports) = c.apply(ctx, &inputs, observed, false, reporter).await?;
            applied.append(&mut done);
            inputs.extend(exports);
        }
    }
    Ok(report(ctx, planned, applied))
}

fn plan_down_all(world: &World) -> Vec<Change> {
    world
        .items
        .iter()
        .rev()
        .flat_map(|(c, observed)| c.plan_down(observed))
        .collect()
}

/// Delete everything this deployment made, in reverse order. Tolerates
/// half-made and already-deleted resources; a second run plans nothing.
pub async fn down(
    ctx: &Ctx,
    reporter: &dyn Reporter,
    confirm: impl FnOnce(&[Change]) -> Result<bool>,
) -> Result<Report> {
    let mut world = observe_all(ctx).await?;
    let planned = plan_down_all(&world);
    reporter.plan(&planned);
    let mut applied = Vec::new();
    if !planned.is_empty() {
        if !confirm(&planned)? {
            bail!(crate::error::User::new(
                "not confirmed; nothing was deleted",
                "type the deployment name, or pass `--yes`"
            ));
        }
        let inputs = Exports::new();
        for (c, observed) in world.items.iter_mut().rev() {
            let (mut done, _) = c.apply(ctx, &inputs, observed, true, reporter).await?;
            applied.append(&mut done);
        }
    }
    Ok(report(ctx, planned, applied))
}

pub async fn status(ctx: &Ctx) -> Result<Vec<StatusRow>> {
    let world = observe_all(ctx).await?;
    Ok(world.items.iter().flat_map(|(c, o)| c.status(o)).collect())
}
