//! `edgectl cloud plan|up|status|down`: the order of the components, the
//! polling of long waits, and nothing component-specific.
//!
//! Each component reads top-down: desired state, observe (read-only, finds
//! resources by tag or fixed name), plan (pure), apply (one write per
//! change). Adding a component is one file and one line in [`components`].

pub mod acl;
pub mod auth;
pub mod iam_role;
pub mod ingress;
pub mod network;
pub mod pca;
pub mod registry;
pub mod roles_anywhere;
pub mod server_config;
pub mod servers;

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
        Box::new(network::Network),              // VPC, subnets, gateways, routes, server SG
        Box::new(ingress::Ingress),              // NLB, target groups and listeners 4646/4647
        Box::new(servers::Servers),              // server role, profile, instances, targets
        Box::new(auth::Auth),                    // Cognito pool, client, domain, admin user
        Box::new(acl::Acl),                      // Nomad ACLs: bootstrap, policy, OIDC, CI token
        Box::new(registry::Registry),            // ECR repository iot-publish (needs nothing)
    ]
}

/// What every component may read.
pub struct Ctx {
    pub aws: Aws,
    pub deployment: String,
    pub config: Deployment,
    pub outputs: crate::outputs::Store,
    /// `NOMAD_ADDR` and friends, when set: where and how to reach Nomad
    /// instead of the ingress output.
    pub nomad: Option<crate::nomad::NomadSettings>,
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
    /// The components whose exports this one reads (by name). `None`: all
    /// the components before it in the list. Those it does not need run
    /// their changes at the same time as it.
    fn needs(&self) -> Option<&'static [&'static str]> {
        None
    }
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
    fn needs(&self) -> Option<&'static [&'static str]>;
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

    fn needs(&self) -> Option<&'static [&'static str]> {
        Component::needs(self)
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

/// `--only a,b`: a subset of the components. `plan`, `up` and `status` add
/// what the chosen ones need; `down` adds what needs them, so nothing is
/// left pointing at a deleted resource.
#[derive(Debug, Clone, Default)]
pub struct Selection(pub Option<Vec<String>>);

/// Rejects unknown component names before anything else happens.
pub fn check(only: &Selection) -> Result<()> {
    selected(only, false).map(|_| ())
}

fn selected(only: &Selection, down: bool) -> Result<Vec<Box<dyn Erased>>> {
    let all = components();
    let Some(names) = &only.0 else {
        return Ok(all);
    };
    let known: Vec<&str> = all.iter().map(|c| c.name()).collect();
    let index = |n: &str| known.iter().position(|k| *k == n);
    let mut stack = Vec::new();
    for n in names {
        match index(n) {
            Some(i) => stack.push(i),
            None => {
                return Err(crate::error::InvalidInput(vec![format!(
                    "--only: unknown component {n:?}; the components are {}",
                    known.join(", ")
                )])
                .into())
            }
        }
    }
    let needs: Vec<Vec<usize>> = all
        .iter()
        .enumerate()
        .map(|(i, c)| match c.needs() {
            None => (0..i).collect(),
            Some(deps) => deps.iter().filter_map(|d| index(d)).collect(),
        })
        .collect();
    let mut keep = vec![false; all.len()];
    while let Some(i) = stack.pop() {
        if std::mem::replace(&mut keep[i], true) {
            continue;
        }
        if down {
            stack.extend((0..all.len()).filter(|&j| needs[j].contains(&i)));
        } else {
            stack.extend(&needs[i]);
        }
    }
    Ok(all
        .into_iter()
        .zip(keep)
        .filter(|(_, k)| *k)
        .map(|(c, _)| c)
        .collect())
}

async fn observe_all(ctx: &Ctx, comps: Vec<Box<dyn Erased>>) -> Result<World> {
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

pub async fn plan(ctx: &Ctx, only: &Selection) -> Result<Report> {
    let world = observe_all(ctx, selected(only, false)?).await?;
    Ok(report(ctx, plan_all(ctx, &world), Vec::new()))
}

/// Passes of `up` after the first: each observes again what the previous
/// one changed. A write whose answer was lost and that the SDK repeated can
/// leave a twin that only a fresh look shows (a Cognito pool or client has
/// no idempotency token; not every endpoint honours the ones we send).
const RECHECKS: usize = 2;

/// Observe, show the plan, apply exactly that, then look again until
/// nothing is left to do. An empty plan makes no write call at all.
pub async fn up(ctx: &Ctx, only: &Selection, reporter: &dyn Reporter) -> Result<Report> {
    let mut planned = Vec::new();
    let mut applied = Vec::new();
    for pass in 0..=RECHECKS {
        let world = observe_all(ctx, selected(only, false)?).await?;
        let mut changes = plan_all(ctx, &world);
        if pass == 0 || !changes.is_empty() {
            reporter.plan(&changes);
        }
        if changes.is_empty() {
            break;
        }
        let order = Order::new(&world);
        applied.append(&mut apply_all(ctx, world, &order.needs, false, reporter).await?);
        planned.append(&mut changes);
    }
    Ok(report(ctx, planned, applied))
}

/// Who waits for whom: `needs[i]` are the components `i` reads from, and
/// `needed_by[i]` the ones that read from `i` (what `down` waits for).
struct Order {
    needs: Vec<Vec<usize>>,
    needed_by: Vec<Vec<usize>>,
}

impl Order {
    fn new(world: &World) -> Order {
        let names: Vec<&str> = world.items.iter().map(|(c, _)| c.name()).collect();
        let mut needs: Vec<Vec<usize>> = Vec::new();
        for (i, (c, _)) in world.items.iter().enumerate() {
            needs.push(match c.needs() {
                None => (0..i).collect(),
                // A need outside this selection (`down --only`) is not
                // being changed, so there is nothing to wait for.
                Some(deps) => deps
                    .iter()
                    .filter_map(|d| names[..i].iter().position(|n| n == d))
                    .collect(),
            });
        }
        let mut needed_by = vec![Vec::new(); needs.len()];
        for (i, deps) in needs.iter().enumerate() {
            for &d in deps {
                needed_by[d].push(i);
            }
        }
        Order { needs, needed_by }
    }
}

/// Applies every component as soon as the ones it waits for are done, so
/// independent long waits (CA activation, NAT gateway, load balancer)
/// overlap. After a failure nothing new starts, the running ones finish,
/// and the first error is returned.
async fn apply_all(
    ctx: &Ctx,
    world: World,
    waits_for: &[Vec<usize>],
    down: bool,
    reporter: &dyn Reporter,
) -> Result<Vec<Change>> {
    use futures::stream::{FuturesUnordered, StreamExt};
    let n = world.items.len();
    let mut slots: Vec<Option<(Box<dyn Erased>, Observed)>> = world.items.into_iter().map(Some).collect();
    let mut done = vec![false; n];
    let mut exports = Exports::new();
    let mut applied = Vec::new();
    let mut failure: Option<anyhow::Error> = None;
    let mut running = FuturesUnordered::new();
    loop {
        if failure.is_none() {
            for i in 0..n {
                if slots[i].is_some() && !done[i] && waits_for[i].iter().all(|&d| done[d]) {
                    let (c, mut observed) = slots[i].take().expect("checked");
                    let inputs = exports.clone();
                    running.push(async move {
                        let result = c.apply(ctx, &inputs, &mut observed, down, reporter).await;
                        (i, result)
                    });
                }
            }
        }
        match running.next().await {
            None => break,
            Some((i, Ok((mut changes, out)))) => {
                done[i] = true;
                applied.append(&mut changes);
                exports.extend(out);
            }
            Some((_, Err(e))) => {
                failure.get_or_insert(e);
            }
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(applied),
    }
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
    only: &Selection,
    reporter: &dyn Reporter,
    confirm: impl FnOnce(&[Change]) -> Result<bool>,
) -> Result<Report> {
    let world = observe_all(ctx, selected(only, true)?).await?;
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
        let order = Order::new(&world);
        applied = apply_all(ctx, world, &order.needed_by, true, reporter).await?;
    }
    Ok(report(ctx, planned, applied))
}

pub async fn status(ctx: &Ctx, only: &Selection) -> Result<Vec<StatusRow>> {
    let world = observe_all(ctx, selected(only, false)?).await?;
    Ok(world.items.iter().flat_map(|(c, o)| c.status(o)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(only: &[&str], down: bool) -> Vec<&'static str> {
        let sel = Selection(Some(only.iter().map(|s| s.to_string()).collect()));
        selected(&sel, down).unwrap().iter().map(|c| c.name()).collect()
    }

    #[test]
    fn only_adds_what_is_needed_or_what_needs_it() {
        assert_eq!(names(&["pca"], false), ["pca"]);
        assert_eq!(names(&["roles-anywhere"], false), ["pca", "roles-anywhere"]);
        let down = names(&["roles-anywhere"], true);
        assert!(
            down.contains(&"roles-anywhere") && !down.contains(&"pca"),
            "{down:?}"
        );
        assert!(names(&["pca"], true).contains(&"roles-anywhere"));
        let all: Vec<&str> = components().iter().map(|c| c.name()).collect();
        assert_eq!(selected(&Selection(None), false).unwrap().len(), all.len());
    }

    #[test]
    fn unknown_components_are_invalid_input() {
        let err = check(&Selection(Some(vec!["dns".into()]))).unwrap_err();
        assert!(crate::error::is_invalid_input(&err));
        assert!(
            err.to_string().contains("--only: unknown component \"dns\""),
            "{err}"
        );
    }

    #[test]
    fn every_declared_need_comes_earlier_in_the_list() {
        let all = components();
        for (i, c) in all.iter().enumerate() {
            for need in c.needs().unwrap_or(&[]) {
                assert!(
                    all[..i].iter().any(|e| e.name() == *need),
                    "{} needs {need}",
                    c.name()
                );
            }
        }
    }
}
