//! The way in to Nomad: an internet-facing network load balancer in the
//! public subnets, one TCP target group and one TCP listener per Nomad port
//! (4646 HTTP API/UI, 4647 RPC), and the load balancer's DNS name in SSM
//! (`/infrastructure/nomad/endpoint`). The targets themselves belong to the
//! `servers` component, which registers its instances in the target groups
//! exported here.
//!
//! Everything is found by its fixed name and checked for our tag before it
//! is adopted. AWS answers CreateLoadBalancer with an existing name by
//! returning that load balancer; moto makes a twin instead, so we look up
//! first and delete twins (same name, our tag) if any appear.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::outputs::{self, plan_param, Kind};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use aws_sdk_elasticloadbalancingv2::types::{
    Action as LbAction, ActionTypeEnum, LoadBalancerSchemeEnum, LoadBalancerStateEnum, LoadBalancerTypeEnum,
    ProtocolEnum, Tag, TargetTypeEnum,
};
use aws_sdk_elasticloadbalancingv2::Client as Elb;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub struct Ingress;

/// Nomad's HTTP API/UI and RPC ports, in the order of the
/// `nomad_target_group_arns` export.
pub const PORTS: [u16; 2] = [4646, 4647];
pub const HEALTH_CHECK_SECONDS: i32 = 30;
const LB: &str = "ingress/nlb";
/// How often to look again while a load balancer is provisioned or deleted.
const POLL: Duration = Duration::from_secs(10);

/// What `network` exports for us.
const IN_VPC: &str = "vpc_id";
const IN_PUBLIC_SUBNETS: &str = "public_subnet_ids";
/// What we export for `servers` (and anyone after it).
pub const OUT_ENDPOINT: &str = "nomad_endpoint";
pub const OUT_TARGET_GROUPS: &str = "nomad_target_group_arns";

// ---- desired -------------------------------------------------------------

/// ELBv2 names: at most 32 letters, digits and '-', not starting or ending
/// with '-'. `edgectl-<deployment><suffix>` when that fits, else a shortened
/// deployment plus a hash of the whole name so two long names never clash.
pub fn elb_name(deployment: &str, suffix: &str) -> String {
    const MAX: usize = 32;
    let plain = format!("edgectl-{deployment}{suffix}");
    if plain.len() <= MAX && !plain.ends_with('-') {
        return plain;
    }
    let hash = &super::servers::sha256_hex(plain.as_bytes())[..6];
    let room = MAX - "edgectl-".len() - 1 - hash.len() - suffix.len();
    let short: String = deployment.chars().take(room).collect();
    let short = short.trim_end_matches('-');
    format!("edgectl-{short}-{hash}{suffix}")
}

pub fn lb_name(deployment: &str) -> String {
    elb_name(deployment, "")
}

pub fn target_group_name(deployment: &str, port: u16) -> String {
    elb_name(deployment, &format!("-{port}"))
}

fn tg_address(port: u16) -> String {
    format!("ingress/target-group:{port}")
}

fn listener_address(port: u16) -> String {
    format!("ingress/listener:{port}")
}

/// Everything the plan needs, taken from the context and the inputs, so the
/// plan itself is a pure function that tests can feed.
#[derive(Debug, Clone)]
pub struct Desired {
    pub lb_name: String,
    pub tg_names: BTreeMap<u16, String>,
    pub vpc: Value,
    /// The public subnets, comma-separated in AZ order.
    pub subnets: Value,
}

pub fn desired(deployment: &str, inputs: &Exports) -> Desired {
    let get = |k| inputs.get(k).cloned().unwrap_or(Value::KnownAfterApply);
    Desired {
        lb_name: lb_name(deployment),
        tg_names: PORTS
            .iter()
            .map(|p| (*p, target_group_name(deployment, *p)))
            .collect(),
        vpc: get(IN_VPC),
        subnets: get(IN_PUBLIC_SUBNETS),
    }
}

fn split(list: &str) -> BTreeSet<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Lb {
    pub arn: String,
    pub dns: String,
    /// `provisioning`, `active`, `failed`…
    pub state: String,
    pub internet_facing: bool,
    pub network: bool,
    pub vpc: Option<String>,
    pub subnets: BTreeSet<String>,
    pub created: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TargetGroup {
    pub arn: String,
    pub port: i32,
    pub tcp: bool,
    pub instance_targets: bool,
    pub vpc: Option<String>,
    pub health_tcp: bool,
    pub health_interval: Option<i32>,
    pub health_enabled: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub arn: String,
    pub port: i32,
    pub tcp: bool,
    /// Where its default action forwards (empty for anything but forward).
    pub forwards_to: Vec<String>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub lb: Option<Lb>,
    /// Load balancers with our name and tag beyond the first (moto's twins,
    /// or a lost race): deleted.
    pub twins: Vec<Lb>,
    pub target_groups: BTreeMap<u16, TargetGroup>,
    /// The listeners of `lb`.
    pub listeners: Vec<Listener>,
    pub endpoint: Option<Secret>,
    /// A load balancer deleted by this run, until it is gone.
    deleting: Option<String>,
}

fn elb(ctx: &Ctx) -> Elb {
    Elb::new(&ctx.aws.config)
}

fn to_lb(l: &aws_sdk_elasticloadbalancingv2::types::LoadBalancer) -> Option<Lb> {
    Some(Lb {
        arn: l.load_balancer_arn.clone()?,
        dns: l.dns_name.clone().unwrap_or_default(),
        state: l
            .state
            .as_ref()
            .and_then(|s| s.code.as_ref())
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        internet_facing: l.scheme == Some(LoadBalancerSchemeEnum::InternetFacing),
        network: l.r#type == Some(LoadBalancerTypeEnum::Network),
        vpc: l.vpc_id.clone(),
        subnets: l
            .availability_zones()
            .iter()
            .filter_map(|az| az.subnet_id.clone())
            .collect(),
        created: l.created_time.map(|t| t.secs()).unwrap_or_default(),
    })
}

/// The tags of up to 20 resources, by ARN.
async fn tags(client: &Elb, arns: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let mut out = BTreeMap::new();
    for chunk in arns.chunks(20) {
        let res = client
            .describe_tags()
            .set_resource_arns(Some(chunk.to_vec()))
            .send()
            .await
            .op(|| format!("reading the tags of {}", chunk.join(", ")))?;
        for d in res.tag_descriptions.unwrap_or_default() {
            let tags = d
                .tags
                .unwrap_or_default()
                .into_iter()
                .filter_map(|t| Some((t.key?, t.value.unwrap_or_default())))
                .collect();
            if let Some(arn) = d.resource_arn {
                out.insert(arn, tags);
            }
        }
    }
    Ok(out)
}

fn not_ours(what: &str, name: &str, deployment: &str) -> anyhow::Error {
    crate::error::User::new(
        format!("{what} {name} exists but is not tagged {TAG_KEY}={deployment}"),
        "edgectl does not adopt resources it did not create; delete or rename it, or pick another `--deployment`",
    )
    .into()
}

async fn observe_lbs(ctx: &Ctx, client: &Elb, name: &str) -> Result<Vec<Lb>> {
    let mut found = Vec::new();
    let mut pages = client.describe_load_balancers().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing load balancers in {}", ctx.aws.region))?;
        for l in page.load_balancers.unwrap_or_default() {
            if l.load_balancer_name.as_deref() == Some(name) {
                found.extend(to_lb(&l));
            }
        }
    }
    if found.is_empty() {
        return Ok(found);
    }
    let tags = tags(client, &found.iter().map(|l| l.arn.clone()).collect::<Vec<_>>()).await?;
    let ours = |l: &Lb| tags.get(&l.arn).and_then(|t| t.get(TAG_KEY)) == Some(&ctx.deployment);
    if !found.iter().any(ours) {
        return Err(not_ours("load balancer", name, &ctx.deployment));
    }
    found.retain(ours);
    found.sort_by(|a, b| (a.created, &a.arn).cmp(&(b.created, &b.arn)));
    Ok(found)
}

async fn observe_target_groups(ctx: &Ctx, client: &Elb) -> Result<BTreeMap<u16, TargetGroup>> {
    let names: BTreeMap<String, u16> = PORTS
        .iter()
        .map(|p| (target_group_name(&ctx.deployment, *p), *p))
        .collect();
    let mut found = BTreeMap::new();
    let mut pages = client.describe_target_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing target groups in {}", ctx.aws.region))?;
        for t in page.target_groups.unwrap_or_default() {
            let (Some(port), Some(arn)) = (
                t.target_group_name.as_ref().and_then(|n| names.get(n)),
                t.target_group_arn.clone(),
            ) else {
                continue;
            };
            found.insert(
                *port,
                TargetGroup {
                    arn,
                    port: t.port.unwrap_or_default(),
                    tcp: t.protocol == Some(ProtocolEnum::Tcp),
                    instance_targets: t.target_type.is_none()
                        || t.target_type == Some(TargetTypeEnum::Instance),
                    vpc: t.vpc_id.clone(),
                    health_tcp: t.health_check_protocol == Some(ProtocolEnum::Tcp),
                    health_interval: t.health_check_interval_seconds,
                    health_enabled: t.health_check_enabled.unwrap_or(true),
                },
            );
        }
    }
    if !found.is_empty() {
        let tags = tags(client, &found.values().map(|t| t.arn.clone()).collect::<Vec<_>>()).await?;
        for (port, tg) in &found {
            if tags.get(&tg.arn).and_then(|t| t.get(TAG_KEY)) != Some(&ctx.deployment) {
                return Err(not_ours(
                    "target group",
                    &target_group_name(&ctx.deployment, *port),
                    &ctx.deployment,
                ));
            }
        }
    }
    Ok(found)
}

async fn observe_listeners(client: &Elb, lb_arn: &str) -> Result<Vec<Listener>> {
    let mut found = Vec::new();
    let mut pages = client
        .describe_listeners()
        .load_balancer_arn(lb_arn)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing the listeners of {lb_arn}"))?;
        for l in page.listeners.unwrap_or_default() {
            let Some(arn) = l.listener_arn.clone() else {
                continue;
            };
            found.push(Listener {
                arn,
                port: l.port.unwrap_or_default(),
                tcp: l.protocol == Some(ProtocolEnum::Tcp),
                forwards_to: l
                    .default_actions()
                    .iter()
                    .filter(|a| a.r#type == Some(ActionTypeEnum::Forward))
                    .filter_map(|a| a.target_group_arn.clone())
                    .collect(),
            });
        }
    }
    Ok(found)
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Create the load balancer, then wait until it is active.
    CreateLb,
    /// Delete this one (wrong scheme, type or VPC), wait until it is gone,
    /// then create ours.
    ReplaceLb(String),
    SetSubnets,
    /// Delete a load balancer and wait until it is gone.
    DeleteLb(String),
    CreateTargetGroup(u16),
    SetHealthCheck(u16),
    /// Delete (with the listeners that use it) and create again.
    ReplaceTargetGroup(u16),
    DeleteTargetGroup(String),
    /// Create the listener on this port, or point the existing one at the
    /// target group over TCP.
    PutListener(u16),
    DeleteListener(String),
    WriteEndpoint,
    DeleteEndpoint,
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn known(v: impl Into<String>) -> Value {
    Value::known(v)
}

/// Why the load balancer must be made again, if it must.
fn lb_replace_reason(d: &Desired, lb: &Lb) -> Option<String> {
    if !lb.network {
        return Some("not a network load balancer".into());
    }
    if !lb.internet_facing {
        return Some("not internet-facing".into());
    }
    match (d.vpc.as_known(), &lb.vpc) {
        (Some(want), Some(have)) if want != have => Some(format!("in VPC {have}, not {want}")),
        (None, _) => Some("its VPC is known after apply".into()),
        _ => None,
    }
}

fn tg_replace_reason(d: &Desired, tg: &TargetGroup, port: u16) -> Option<String> {
    if !tg.tcp || tg.port != i32::from(port) || !tg.instance_targets {
        return Some(format!("not a TCP:{port} instance target group"));
    }
    match (d.vpc.as_known(), &tg.vpc) {
        (Some(want), Some(have)) if want != have => Some(format!("in VPC {have}, not {want}")),
        (None, _) => Some("its VPC is known after apply".into()),
        _ => None,
    }
}

fn health_ok(tg: &TargetGroup) -> bool {
    tg.health_tcp && tg.health_enabled && tg.health_interval == Some(HEALTH_CHECK_SECONDS)
}

/// The pure plan: what makes AWS match `d`, given `o`.
pub fn plan(d: &Desired, o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let mut lb_new = false;
    match &o.lb {
        None => {
            lb_new = true;
            steps.push(planned(
                Change::new(
                    LB,
                    Action::Create,
                    "no load balancer with this deployment's name and tag",
                )
                .field("name", None, known(&d.lb_name))
                .field("scheme", None, known("internet-facing"))
                .field("subnets", None, d.subnets.clone())
                .field("dns_name", None, Value::KnownAfterApply),
                Op::CreateLb,
            ));
        }
        Some(lb) => {
            if let Some(why) = lb_replace_reason(d, lb) {
                lb_new = true;
                steps.push(planned(
                    Change::new(LB, Action::Replace, why).field(
                        "dns_name",
                        Some(known(&lb.dns)),
                        Value::KnownAfterApply,
                    ),
                    Op::ReplaceLb(lb.arn.clone()),
                ));
            } else if let Some(want) = d.subnets.as_known() {
                let want = split(want);
                if want != lb.subnets {
                    let show = |s: &BTreeSet<String>| known(s.iter().cloned().collect::<Vec<_>>().join(","));
                    steps.push(planned(
                        Change::new(LB, Action::Update, "public subnets differ").field(
                            "subnets",
                            Some(show(&lb.subnets)),
                            show(&want),
                        ),
                        Op::SetSubnets,
                    ));
                }
            }
        }
    }
    for twin in &o.twins {
        steps.push(planned(
            Change::new(
                format!("{LB}#{}", short_arn(&twin.arn)),
                Action::Delete,
                "a second load balancer with this deployment's name (twin)",
            )
            .field("dns_name", Some(known(&twin.dns)), known("(deleted)")),
            Op::DeleteLb(twin.arn.clone()),
        ));
    }

    let mut tg_new = BTreeSet::new();
    for port in PORTS {
        match o.target_groups.get(&port) {
            None => {
                tg_new.insert(port);
                steps.push(planned(
                    Change::new(tg_address(port), Action::Create, "missing")
                        .field("name", None, known(&d.tg_names[&port]))
                        .field("protocol", None, known(format!("TCP:{port}")))
                        .field(
                            "health_check",
                            None,
                            known(format!("TCP every {HEALTH_CHECK_SECONDS}s")),
                        ),
                    Op::CreateTargetGroup(port),
                ));
            }
            Some(tg) => {
                if let Some(why) = tg_replace_reason(d, tg, port) {
                    tg_new.insert(port);
                    steps.push(planned(
                        Change::new(tg_address(port), Action::Replace, why),
                        Op::ReplaceTargetGroup(port),
                    ));
                } else if !health_ok(tg) {
                    steps.push(planned(
                        Change::new(tg_address(port), Action::Update, "health check differs").field(
                            "health_check",
                            Some(known(format!(
                                "{} every {}s{}",
                                if tg.health_tcp { "TCP" } else { "other" },
                                tg.health_interval.unwrap_or_default(),
                                if tg.health_enabled { "" } else { " (disabled)" }
                            ))),
                            known(format!("TCP every {HEALTH_CHECK_SECONDS}s")),
                        ),
                        Op::SetHealthCheck(port),
                    ));
                }
            }
        }
    }

    // Listeners of the load balancer we keep; a new one has none.
    let listeners: &[Listener] = if lb_new { &[] } else { &o.listeners };
    for port in PORTS {
        let have = listeners.iter().find(|l| l.port == i32::from(port));
        let tg = o.target_groups.get(&port).map(|t| t.arn.as_str());
        let change = match have {
            None => Some(Change::new(listener_address(port), Action::Create, "missing")),
            Some(_) if tg_new.contains(&port) => Some(Change::new(
                listener_address(port),
                Action::Replace,
                "its target group is made again",
            )),
            Some(l) if !l.tcp || l.forwards_to.len() != 1 || Some(l.forwards_to[0].as_str()) != tg => {
                Some(Change::new(
                    listener_address(port),
                    Action::Update,
                    "does not forward TCP to its target group",
                ))
            }
            Some(_) => None,
        };
        if let Some(change) = change {
            let target = match tg {
                Some(arn) if !tg_new.contains(&port) => known(arn),
                _ => Value::KnownAfterApply,
            };
            steps.push(planned(
                change.field("forward_to", None, target),
                Op::PutListener(port),
            ));
        }
    }
    for extra in listeners
        .iter()
        .filter(|l| !PORTS.iter().any(|p| i32::from(*p) == l.port))
    {
        steps.push(planned(
            Change::new(
                format!("ingress/listener:{}", extra.port),
                Action::Delete,
                "not a Nomad port",
            ),
            Op::DeleteListener(extra.arn.clone()),
        ));
    }

    let endpoint = match &o.lb {
        Some(lb) if !lb_new => known(&lb.dns),
        _ => Value::KnownAfterApply,
    };
    if let Some(change) = plan_param(
        outputs::NOMAD_ENDPOINT,
        &endpoint,
        o.endpoint.as_ref(),
        Kind::Plain,
    ) {
        steps.push(planned(change, Op::WriteEndpoint));
    }
    steps
}

fn short_arn(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

fn exports(o: &Observed, planned: &[Planned<Op>]) -> Exports {
    let lb_new = planned
        .iter()
        .any(|p| matches!(p.op, Op::CreateLb | Op::ReplaceLb(_)));
    let endpoint = match &o.lb {
        Some(lb) if !lb_new && !lb.dns.is_empty() => known(&lb.dns),
        _ => Value::KnownAfterApply,
    };
    let tg_new = planned
        .iter()
        .any(|p| matches!(p.op, Op::CreateTargetGroup(_) | Op::ReplaceTargetGroup(_)));
    let arns: Option<Vec<&str>> = PORTS
        .iter()
        .map(|p| o.target_groups.get(p).map(|t| t.arn.as_str()))
        .collect();
    let tgs = match arns {
        Some(arns) if !tg_new => known(arns.join(",")),
        _ => Value::KnownAfterApply,
    };
    Exports::from([(OUT_ENDPOINT, endpoint), (OUT_TARGET_GROUPS, tgs)])
}

pub fn plan_down(o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    if o.endpoint.is_some() {
        steps.push(planned(
            Change::new(
                format!("ssm:{}", outputs::NOMAD_ENDPOINT),
                Action::Delete,
                "cloud down",
            ),
            Op::DeleteEndpoint,
        ));
    }
    for l in &o.listeners {
        steps.push(planned(
            Change::new(
                format!("ingress/listener:{}", l.port),
                Action::Delete,
                "cloud down",
            ),
            Op::DeleteListener(l.arn.clone()),
        ));
    }
    for lb in o.lb.iter().chain(&o.twins) {
        steps.push(planned(
            Change::new(LB, Action::Delete, "cloud down").field(
                "dns_name",
                Some(known(&lb.dns)),
                known("(deleted)"),
            ),
            Op::DeleteLb(lb.arn.clone()),
        ));
    }
    for (port, tg) in &o.target_groups {
        steps.push(planned(
            Change::new(tg_address(*port), Action::Delete, "cloud down"),
            Op::DeleteTargetGroup(tg.arn.clone()),
        ));
    }
    steps
}

// ---- apply ---------------------------------------------------------------

fn our_tag(ctx: &Ctx) -> Tag {
    Tag::builder().key(TAG_KEY).value(&ctx.deployment).build()
}

fn required(v: &Value, what: &str) -> Result<String> {
    v.as_known()
        .map(String::from)
        .with_context(|| format!("{what} is not known yet: the network component must run first"))
}

/// The load balancer as AWS sees it now; `None` once it is gone.
async fn describe_lb(client: &Elb, arn: &str) -> Result<Option<Lb>> {
    match client
        .describe_load_balancers()
        .load_balancer_arns(arn)
        .send()
        .await
    {
        Ok(out) => Ok(out.load_balancers.unwrap_or_default().iter().find_map(to_lb)),
        Err(e) if code(&e) == Some("LoadBalancerNotFound") => Ok(None),
        Err(e) => Err(e).op(|| format!("reading load balancer {arn}")),
    }
}

/// Creates the load balancer if this run has not yet, then waits until it
/// is active.
async fn create_lb(ctx: &Ctx, client: &Elb, d: &Desired, o: &mut Observed) -> Result<Applied> {
    if o.lb.is_none() {
        let subnets: Vec<String> = split(&required(&d.subnets, "the public subnets")?)
            .into_iter()
            .collect();
        let out = client
            .create_load_balancer()
            .name(&d.lb_name)
            .r#type(LoadBalancerTypeEnum::Network)
            .scheme(LoadBalancerSchemeEnum::InternetFacing)
            .set_subnets(Some(subnets))
            .tags(our_tag(ctx))
            .tags(Tag::builder().key("Name").value(&d.lb_name).build())
            .send()
            .await
            .op(|| format!("creating load balancer {} in {}", d.lb_name, ctx.aws.region))?;
        let lb = out
            .load_balancers
            .unwrap_or_default()
            .iter()
            .find_map(to_lb)
            .context("CreateLoadBalancer returned no load balancer")?;
        o.listeners.clear();
        o.lb = Some(lb);
    }
    let lb = o.lb.as_mut().expect("set above");
    if lb.state != LoadBalancerStateEnum::Active.as_str() {
        let now = describe_lb(client, &lb.arn)
            .await?
            .with_context(|| format!("load balancer {} vanished while being created", lb.arn))?;
        *lb = now;
    }
    match lb.state.as_str() {
        "active" => Ok(Applied::Done),
        "failed" => bail!("load balancer {} failed to provision", lb.arn),
        state => Ok(Applied::Pending {
            what: format!("load balancer {state}"),
            retry_after: POLL,
        }),
    }
}

/// Deletes a load balancer once, then waits until AWS no longer lists it
/// (its network interfaces hold the subnets until then).
async fn delete_lb(client: &Elb, arn: &str, o: &mut Observed) -> Result<Applied> {
    if o.deleting.as_deref() != Some(arn) {
        match client.delete_load_balancer().load_balancer_arn(arn).send().await {
            Ok(_) => {}
            Err(e) if code(&e) == Some("LoadBalancerNotFound") => {}
            Err(e) => return Err(e).op(|| format!("deleting load balancer {arn}")),
        }
        o.deleting = Some(arn.to_string());
    }
    if describe_lb(client, arn).await?.is_some() {
        return Ok(Applied::Pending {
            what: "load balancer deleting".into(),
            retry_after: POLL,
        });
    }
    o.deleting = None;
    if o.lb.as_ref().is_some_and(|l| l.arn == arn) {
        o.lb = None;
        o.listeners.clear();
    }
    o.twins.retain(|l| l.arn != arn);
    Ok(Applied::Done)
}

async fn delete_listener(client: &Elb, arn: &str, o: &mut Observed) -> Result<()> {
    match client.delete_listener().listener_arn(arn).send().await {
        Ok(_) => {}
        Err(e) if code(&e) == Some("ListenerNotFound") => {}
        Err(e) => return Err(e).op(|| format!("deleting listener {arn}")),
    }
    o.listeners.retain(|l| l.arn != arn);
    Ok(())
}

async fn delete_target_group(client: &Elb, arn: &str, o: &mut Observed) -> Result<()> {
    match client.delete_target_group().target_group_arn(arn).send().await {
        Ok(_) => {}
        Err(e) if code(&e) == Some("TargetGroupNotFound") => {}
        Err(e) => return Err(e).op(|| format!("deleting target group {arn}")),
    }
    o.target_groups.retain(|_, t| t.arn != arn);
    Ok(())
}

async fn create_target_group(
    ctx: &Ctx,
    client: &Elb,
    d: &Desired,
    port: u16,
    o: &mut Observed,
) -> Result<()> {
    let name = &d.tg_names[&port];
    let vpc = required(&d.vpc, "the VPC")?;
    let out = client
        .create_target_group()
        .name(name)
        .protocol(ProtocolEnum::Tcp)
        .port(i32::from(port))
        .vpc_id(&vpc)
        .target_type(TargetTypeEnum::Instance)
        .health_check_enabled(true)
        .health_check_protocol(ProtocolEnum::Tcp)
        .health_check_port("traffic-port")
        .health_check_interval_seconds(HEALTH_CHECK_SECONDS)
        .tags(our_tag(ctx))
        .send()
        .await
        .op(|| format!("creating target group {name} in {}", ctx.aws.region))?;
    let arn = out
        .target_groups
        .unwrap_or_default()
        .into_iter()
        .find_map(|t| t.target_group_arn)
        .context("CreateTargetGroup returned no target group")?;
    o.target_groups.insert(
        port,
        TargetGroup {
            arn,
            port: i32::from(port),
            tcp: true,
            instance_targets: true,
            vpc: Some(vpc),
            health_tcp: true,
            health_interval: Some(HEALTH_CHECK_SECONDS),
            health_enabled: true,
        },
    );
    Ok(())
}

fn forward(tg: &str) -> LbAction {
    LbAction::builder()
        .r#type(ActionTypeEnum::Forward)
        .target_group_arn(tg)
        .build()
}

async fn put_listener(client: &Elb, port: u16, o: &mut Observed) -> Result<()> {
    let lb =
        o.lb.as_ref()
            .context("the load balancer must exist before its listeners")?;
    let tg = o
        .target_groups
        .get(&port)
        .with_context(|| format!("the target group for {port} must exist before its listener"))?
        .arn
        .clone();
    let listener = Listener {
        arn: String::new(),
        port: i32::from(port),
        tcp: true,
        forwards_to: vec![tg.clone()],
    };
    if let Some(have) = o.listeners.iter_mut().find(|l| l.port == i32::from(port)) {
        client
            .modify_listener()
            .listener_arn(&have.arn)
            .protocol(ProtocolEnum::Tcp)
            .port(i32::from(port))
            .default_actions(forward(&tg))
            .send()
            .await
            .op(|| format!("pointing listener {} at {tg}", have.arn))?;
        *have = Listener {
            arn: have.arn.clone(),
            ..listener
        };
    } else {
        let out = client
            .create_listener()
            .load_balancer_arn(&lb.arn)
            .protocol(ProtocolEnum::Tcp)
            .port(i32::from(port))
            .default_actions(forward(&tg))
            .send()
            .await
            .op(|| format!("creating listener {port} on {}", lb.arn))?;
        let arn = out
            .listeners
            .unwrap_or_default()
            .into_iter()
            .find_map(|l| l.listener_arn)
            .context("CreateListener returned no listener")?;
        o.listeners.push(Listener { arn, ..listener });
    }
    Ok(())
}

impl Component for Ingress {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "ingress"
    }

    /// The VPC and the public subnets.
    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&["network"])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let client = elb(ctx);
        let name = lb_name(&ctx.deployment);
        let (lbs, target_groups, params) = tokio::try_join!(
            observe_lbs(ctx, &client, &name),
            observe_target_groups(ctx, &client),
            ctx.outputs.read(&[outputs::NOMAD_ENDPOINT]),
        )?;
        let mut lbs = lbs.into_iter();
        let lb = lbs.next();
        let listeners = match &lb {
            Some(lb) => observe_listeners(&client, &lb.arn).await?,
            None => Vec::new(),
        };
        Ok(Observed {
            lb,
            twins: lbs.collect(),
            target_groups,
            listeners,
            endpoint: params.get(outputs::NOMAD_ENDPOINT).cloned(),
            deleting: None,
        })
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        plan(&desired(&ctx.deployment, inputs), o)
    }

    fn exports(&self, o: &Observed, planned: &[Planned<Op>]) -> Exports {
        exports(o, planned)
    }

    async fn apply(&self, ctx: &Ctx, inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let client = elb(ctx);
        let d = desired(&ctx.deployment, inputs);
        match op {
            Op::CreateLb => return create_lb(ctx, &client, &d, o).await,
            Op::ReplaceLb(old) => {
                if o.lb.as_ref().is_some_and(|l| &l.arn == old) || o.deleting.as_deref() == Some(old) {
                    if let Applied::Pending { what, retry_after } = delete_lb(&client, old, o).await? {
                        return Ok(Applied::Pending { what, retry_after });
                    }
                }
                return create_lb(ctx, &client, &d, o).await;
            }
            Op::DeleteLb(arn) => return delete_lb(&client, arn, o).await,
            Op::SetSubnets => {
                let lb = o.lb.as_mut().context("no load balancer")?;
                let want = split(&required(&d.subnets, "the public subnets")?);
                client
                    .set_subnets()
                    .load_balancer_arn(&lb.arn)
                    .set_subnets(Some(want.iter().cloned().collect()))
                    .send()
                    .await
                    .op(|| format!("setting the subnets of {}", lb.arn))?;
                lb.subnets = want;
            }
            Op::CreateTargetGroup(port) => create_target_group(ctx, &client, &d, *port, o).await?,
            Op::SetHealthCheck(port) => {
                let tg = o.target_groups.get_mut(port).context("no target group")?;
                client
                    .modify_target_group()
                    .target_group_arn(&tg.arn)
                    .health_check_enabled(true)
                    .health_check_protocol(ProtocolEnum::Tcp)
                    .health_check_port("traffic-port")
                    .health_check_interval_seconds(HEALTH_CHECK_SECONDS)
                    .send()
                    .await
                    .op(|| format!("setting the health check of {}", tg.arn))?;
                tg.health_tcp = true;
                tg.health_enabled = true;
                tg.health_interval = Some(HEALTH_CHECK_SECONDS);
            }
            Op::ReplaceTargetGroup(port) => {
                if let Some(old) = o.target_groups.get(port).map(|t| t.arn.clone()) {
                    let users: Vec<String> = o
                        .listeners
                        .iter()
                        .filter(|l| l.forwards_to.contains(&old))
                        .map(|l| l.arn.clone())
                        .collect();
                    for l in users {
                        delete_listener(&client, &l, o).await?;
                    }
                    delete_target_group(&client, &old, o).await?;
                }
                create_target_group(ctx, &client, &d, *port, o).await?;
            }
            Op::DeleteTargetGroup(arn) => delete_target_group(&client, arn, o).await?,
            Op::PutListener(port) => put_listener(&client, *port, o).await?,
            Op::DeleteListener(arn) => delete_listener(&client, arn, o).await?,
            Op::WriteEndpoint => {
                let dns =
                    o.lb.as_ref()
                        .map(|l| l.dns.clone())
                        .filter(|d| !d.is_empty())
                        .context("the load balancer has no DNS name yet")?;
                ctx.outputs
                    .write(outputs::NOMAD_ENDPOINT, &dns, Kind::Plain, o.endpoint.is_some())
                    .await?;
                o.endpoint = Some(Secret::new(dns));
            }
            Op::DeleteEndpoint => {
                ctx.outputs.delete(&[outputs::NOMAD_ENDPOINT]).await?;
                o.endpoint = None;
            }
        }
        Ok(Applied::Done)
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        plan_down(o)
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let mut rows = vec![StatusRow {
            address: LB.into(),
            state: o
                .lb
                .as_ref()
                .map(|l| l.state.clone())
                .unwrap_or_else(|| "absent".into()),
            id: o.lb.as_ref().map(|l| l.dns.clone()).unwrap_or_default(),
        }];
        for twin in &o.twins {
            rows.push(StatusRow {
                address: format!("{LB}#{}", short_arn(&twin.arn)),
                state: format!("{} (twin, removed by up)", twin.state),
                id: twin.dns.clone(),
            });
        }
        for port in PORTS {
            let tg = o.target_groups.get(&port);
            rows.push(StatusRow {
                address: tg_address(port),
                state: if tg.is_some() { "present" } else { "absent" }.into(),
                id: tg.map(|t| t.arn.clone()).unwrap_or_default(),
            });
            let l = o.listeners.iter().find(|l| l.port == i32::from(port));
            rows.push(StatusRow {
                address: listener_address(port),
                state: if l.is_some() { "present" } else { "absent" }.into(),
                id: l.map(|l| l.arn.clone()).unwrap_or_default(),
            });
        }
        rows.push(StatusRow {
            address: format!("ssm:{}", outputs::NOMAD_ENDPOINT),
            state: if o.endpoint.is_some() { "set" } else { "absent" }.into(),
            id: o
                .endpoint
                .as_ref()
                .map(|e| e.expose().to_string())
                .unwrap_or_default(),
        });
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VPC: &str = "vpc-1";
    const SUBNETS: &str = "subnet-a,subnet-b,subnet-c";
    const DNS: &str = "edgectl-default-1.elb.eu-west-1.amazonaws.com";

    fn d() -> Desired {
        desired(
            "default",
            &Exports::from([(IN_VPC, known(VPC)), (IN_PUBLIC_SUBNETS, known(SUBNETS))]),
        )
    }

    fn lb(arn: &str, created: i64) -> Lb {
        Lb {
            arn: arn.into(),
            dns: DNS.into(),
            state: "active".into(),
            internet_facing: true,
            network: true,
            vpc: Some(VPC.into()),
            subnets: split(SUBNETS),
            created,
        }
    }

    fn tg(port: u16) -> TargetGroup {
        TargetGroup {
            arn: format!("arn:tg/{port}"),
            port: i32::from(port),
            tcp: true,
            instance_targets: true,
            vpc: Some(VPC.into()),
            health_tcp: true,
            health_interval: Some(30),
            health_enabled: true,
        }
    }

    fn listener(port: u16) -> Listener {
        Listener {
            arn: format!("arn:listener/{port}"),
            port: i32::from(port),
            tcp: true,
            forwards_to: vec![format!("arn:tg/{port}")],
        }
    }

    fn complete() -> Observed {
        Observed {
            lb: Some(lb("arn:lb/1", 1)),
            twins: vec![],
            target_groups: PORTS.iter().map(|p| (*p, tg(*p))).collect(),
            listeners: PORTS.iter().map(|p| listener(*p)).collect(),
            endpoint: Some(Secret::new(DNS)),
            deleting: None,
        }
    }

    fn summary(steps: &[Planned<Op>]) -> Vec<(String, Action)> {
        steps
            .iter()
            .map(|s| (s.change.address.clone(), s.change.action))
            .collect()
    }

    fn s(a: &str, act: Action) -> (String, Action) {
        (a.to_string(), act)
    }

    #[test]
    fn names_fit_elbv2_limits() {
        assert_eq!(lb_name("default"), "edgectl-default");
        assert_eq!(target_group_name("default", 4646), "edgectl-default-4646");
        let long = "a-very-long-deployment-name-32ch";
        assert_eq!(long.len(), 32);
        for name in [
            lb_name(long),
            target_group_name(long, 4647),
            lb_name("ends-with-"),
        ] {
            assert!(name.len() <= 32, "{name}");
            assert!(!name.ends_with('-') && !name.contains("--"), "{name}");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
                "{name}"
            );
        }
        assert!(target_group_name(long, 4647).ends_with("-4647"));
        assert_ne!(lb_name(long), lb_name("a-very-long-deployment-name-32cx"));
    }

    #[test]
    fn plan_table() {
        type Case = (&'static str, Desired, Observed, Vec<(String, Action)>);
        let unknown = desired("default", &Exports::new());
        let cases: Vec<Case> = vec![
            (
                "empty",
                d(),
                Observed::default(),
                vec![
                    s(LB, Action::Create),
                    s("ingress/target-group:4646", Action::Create),
                    s("ingress/target-group:4647", Action::Create),
                    s("ingress/listener:4646", Action::Create),
                    s("ingress/listener:4647", Action::Create),
                    s("ssm:/infrastructure/nomad/endpoint", Action::Create),
                ],
            ),
            (
                "empty_network_known_after_apply",
                unknown.clone(),
                Observed::default(),
                vec![
                    s(LB, Action::Create),
                    s("ingress/target-group:4646", Action::Create),
                    s("ingress/target-group:4647", Action::Create),
                    s("ingress/listener:4646", Action::Create),
                    s("ingress/listener:4647", Action::Create),
                    s("ssm:/infrastructure/nomad/endpoint", Action::Create),
                ],
            ),
            ("complete", d(), complete(), vec![]),
            (
                "lb_twin_present",
                d(),
                Observed {
                    twins: vec![lb("arn:lb/2", 2)],
                    ..complete()
                },
                vec![s("ingress/nlb#2", Action::Delete)],
            ),
            (
                "listener_missing",
                d(),
                Observed {
                    listeners: vec![listener(4646)],
                    ..complete()
                },
                vec![s("ingress/listener:4647", Action::Create)],
            ),
            (
                "listener_forwards_elsewhere",
                d(),
                Observed {
                    listeners: vec![
                        listener(4646),
                        Listener {
                            forwards_to: vec!["arn:tg/other".into()],
                            ..listener(4647)
                        },
                    ],
                    ..complete()
                },
                vec![s("ingress/listener:4647", Action::Update)],
            ),
            (
                "health_check_drift",
                d(),
                Observed {
                    target_groups: BTreeMap::from([
                        (4646, tg(4646)),
                        (
                            4647,
                            TargetGroup {
                                health_interval: Some(10),
                                ..tg(4647)
                            },
                        ),
                    ]),
                    ..complete()
                },
                vec![s("ingress/target-group:4647", Action::Update)],
            ),
            (
                "target_group_in_other_vpc",
                d(),
                Observed {
                    target_groups: BTreeMap::from([
                        (
                            4646,
                            TargetGroup {
                                vpc: Some("vpc-old".into()),
                                ..tg(4646)
                            },
                        ),
                        (4647, tg(4647)),
                    ]),
                    ..complete()
                },
                vec![
                    s("ingress/target-group:4646", Action::Replace),
                    s("ingress/listener:4646", Action::Replace),
                ],
            ),
            (
                "internal_lb_is_replaced",
                d(),
                Observed {
                    lb: Some(Lb {
                        internet_facing: false,
                        ..lb("arn:lb/1", 1)
                    }),
                    ..complete()
                },
                vec![
                    s(LB, Action::Replace),
                    s("ingress/listener:4646", Action::Create),
                    s("ingress/listener:4647", Action::Create),
                    s("ssm:/infrastructure/nomad/endpoint", Action::Update),
                ],
            ),
            (
                "subnets_differ",
                d(),
                Observed {
                    lb: Some(Lb {
                        subnets: split("subnet-a,subnet-b"),
                        ..lb("arn:lb/1", 1)
                    }),
                    ..complete()
                },
                vec![s(LB, Action::Update)],
            ),
            (
                "endpoint_param_stale",
                d(),
                Observed {
                    endpoint: Some(Secret::new("old.example")),
                    ..complete()
                },
                vec![s("ssm:/infrastructure/nomad/endpoint", Action::Update)],
            ),
        ];
        for (name, d, o, want) in cases {
            assert_eq!(summary(&plan(&d, &o)), want, "{name}");
        }
    }

    #[test]
    fn exports_follow_the_plan() {
        let o = complete();
        let e = exports(&o, &plan(&d(), &o));
        assert_eq!(e[OUT_ENDPOINT], known(DNS));
        assert_eq!(e[OUT_TARGET_GROUPS], known("arn:tg/4646,arn:tg/4647"));
        let empty = Observed::default();
        let e = exports(&empty, &plan(&d(), &empty));
        assert_eq!(e[OUT_ENDPOINT], Value::KnownAfterApply);
        assert_eq!(e[OUT_TARGET_GROUPS], Value::KnownAfterApply);
    }

    #[test]
    fn down_removes_listeners_then_lbs_then_target_groups() {
        let o = Observed {
            twins: vec![lb("arn:lb/2", 2)],
            ..complete()
        };
        let ops: Vec<Op> = plan_down(&o).into_iter().map(|p| p.op).collect();
        assert_eq!(
            ops,
            vec![
                Op::DeleteEndpoint,
                Op::DeleteListener("arn:listener/4646".into()),
                Op::DeleteListener("arn:listener/4647".into()),
                Op::DeleteLb("arn:lb/1".into()),
                Op::DeleteLb("arn:lb/2".into()),
                Op::DeleteTargetGroup("arn:tg/4646".into()),
                Op::DeleteTargetGroup("arn:tg/4647".into()),
            ]
        );
        assert!(plan_down(&Observed::default()).is_empty());
    }
}
