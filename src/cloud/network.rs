//! The network the Nomad servers live in: a VPC over up to three AZs, a
//! public (/28) and a private (/24) subnet in each, an internet gateway, one
//! NAT gateway with its Elastic IP, a public and a private route table, and
//! the servers' security group (Nomad ports only: no SSH, operators use SSM
//! Session Manager).
//!
//! Layout, chosen once and never renumbered (AZ `i` is the i-th available
//! AZ by name, at most three):
//! - VPC `10.0.0.0/16`
//! - public subnet in AZ `i`: `10.0.<i>.0/28` (NAT gateway in AZ 0, the load
//!   balancer in all)
//! - private subnet in AZ `i`: `10.0.<128+i>.0/24` (the servers)
//!
//! Every resource carries `edgectl:deployment=<name>` and
//! `Name=edgectl-<name>-<what>`; observe finds them by that tag only.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::plan::{Action, Change, Value};
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::{
    DomainType, Filter, IpPermission, IpRange, NatGatewayState, ResourceType, RouteState, Tag,
    TagSpecification, UserIdGroupPair,
};
use std::time::Duration;

pub struct Network;

pub const VPC_CIDR: &str = "10.0.0.0/16";
const ANYWHERE: &str = "0.0.0.0/0";
const MAX_AZS: usize = 3;
/// NAT gateways take a few minutes to become available or to go away.
const NAT_POLL: Duration = Duration::from_secs(15);
/// Network interfaces of deleted load balancers and NAT gateways linger.
const ENI_POLL: Duration = Duration::from_secs(20);

const VPC: &str = "network/vpc";
const IGW: &str = "network/internet-gateway";
const EIP: &str = "network/nat-eip";
const NAT: &str = "network/nat-gateway";
const SG: &str = "network/security-group/servers";

// ---- desired -------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tier {
    Public,
    Private,
}

impl Tier {
    fn as_str(self) -> &'static str {
        match self {
            Tier::Public => "public",
            Tier::Private => "private",
        }
    }

    /// The subnet CIDR of this tier in the `i`-th AZ.
    pub fn cidr(self, i: usize) -> String {
        match self {
            Tier::Public => format!("10.0.{i}.0/28"),
            Tier::Private => format!("10.0.{}.0/24", 128 + i),
        }
    }
}

/// One ingress rule of the servers' security group, flattened to a single
/// source. Rules we did not ask for (IPv6, prefix lists, other groups) are
/// kept as observed so that they can be revoked exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Rule {
    pub protocol: String,
    pub from: Option<i32>,
    pub to: Option<i32>,
    pub source: Source,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Source {
    Cidr(String),
    Ipv6(String),
    PrefixList(String),
    Group(String),
}

impl Rule {
    fn new(protocol: &str, from: i32, to: i32, cidr: &str) -> Self {
        Rule {
            protocol: protocol.into(),
            from: Some(from),
            to: Some(to),
            source: Source::Cidr(cidr.into()),
        }
    }

    /// A stable, readable key: `tcp:4646-4648:10.0.0.0/16`.
    pub fn key(&self) -> String {
        let ports = match (self.from, self.to) {
            (Some(f), Some(t)) if f == t => f.to_string(),
            (Some(f), Some(t)) => format!("{f}-{t}"),
            _ => "all".into(),
        };
        let proto = if self.protocol == "-1" {
            "all"
        } else {
            &self.protocol
        };
        let source = match &self.source {
            Source::Cidr(c) | Source::Ipv6(c) | Source::PrefixList(c) | Source::Group(c) => c,
        };
        format!("{proto}:{ports}:{source}")
    }

    fn permission(&self) -> IpPermission {
        let mut p = IpPermission::builder().ip_protocol(&self.protocol);
        if let Some(f) = self.from {
            p = p.from_port(f);
        }
        if let Some(t) = self.to {
            p = p.to_port(t);
        }
        match &self.source {
            Source::Cidr(c) => p = p.ip_ranges(IpRange::builder().cidr_ip(c).build()),
            Source::Ipv6(c) => {
                p = p.ipv6_ranges(aws_sdk_ec2::types::Ipv6Range::builder().cidr_ipv6(c).build())
            }
            Source::PrefixList(id) => {
                p = p.prefix_list_ids(
                    aws_sdk_ec2::types::PrefixListId::builder()
                        .prefix_list_id(id)
                        .build(),
                )
            }
            Source::Group(id) => p = p.user_id_group_pairs(UserIdGroupPair::builder().group_id(id).build()),
        }
        p.build()
    }
}

/// The reference rules: Nomad HTTP, RPC and Serf (TCP 4646–4648) from the
/// VPC and from anywhere (the NLB passes client addresses through), Serf
/// gossip (UDP 4648) from the VPC. No port 22.
pub fn server_rules() -> Vec<Rule> {
    vec![
        Rule::new("tcp", 4646, 4648, VPC_CIDR),
        Rule::new("tcp", 4646, 4648, ANYWHERE),
        Rule::new("udp", 4648, 4648, VPC_CIDR),
    ]
}

/// What the network should look like for one deployment.
#[derive(Debug, Clone)]
pub struct Desired {
    pub deployment: String,
    /// At most three available AZs, sorted by name.
    pub azs: Vec<String>,
}

impl Desired {
    pub fn new(deployment: &str, available: &[String]) -> Self {
        let mut azs = available.to_vec();
        azs.sort();
        azs.dedup();
        azs.truncate(MAX_AZS);
        Desired {
            deployment: deployment.into(),
            azs,
        }
    }

    fn name(&self, what: &str) -> String {
        format!("edgectl-{}-{what}", self.deployment)
    }

    /// Each AZ with its index, which picks the subnets' CIDRs.
    fn subnets(&self) -> impl Iterator<Item = (usize, &String)> {
        self.azs.iter().enumerate()
    }

    fn route_table_name(&self, tier: Tier) -> String {
        self.name(tier.as_str())
    }

    fn sg_name(&self) -> String {
        self.name("servers")
    }
}

fn subnet_address(tier: Tier, az: &str) -> String {
    format!("network/subnet/{}-{az}", tier.as_str())
}

fn rt_address(tier: Tier) -> String {
    format!("network/route-table/{}", tier.as_str())
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vpc {
    pub id: String,
    pub cidr: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub vpc_id: String,
    pub az: String,
    pub cidr: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Igw {
    pub id: String,
    pub attached_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eip {
    pub allocation_id: String,
    pub public_ip: String,
    pub associated: bool,
    /// An association left by a deleted NAT gateway (see
    /// [`release_eips_of_dead_nats`]): undone before the address is reused.
    pub stale_association: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NatState {
    Pending,
    Available,
    Deleting,
    Failed,
}

impl NatState {
    fn as_str(self) -> &'static str {
        match self {
            NatState::Pending => "pending",
            NatState::Available => "available",
            NatState::Deleting => "deleting",
            NatState::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nat {
    pub id: String,
    pub state: NatState,
    pub vpc_id: String,
    pub subnet_id: String,
    pub allocation_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub destination: String,
    /// The gateway, NAT gateway or other target id.
    pub target: Option<String>,
    pub blackhole: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Association {
    pub id: String,
    pub subnet_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteTable {
    pub id: String,
    pub vpc_id: String,
    pub name: Option<String>,
    pub routes: Vec<Route>,
    pub associations: Vec<Association>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecurityGroup {
    pub id: String,
    pub vpc_id: String,
    pub name: String,
    pub rules: Vec<Rule>,
}

/// Everything tagged for this deployment, as found. Which of several is
/// "ours" (and which are strays to remove) is decided by the plan.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The deployment these resources belong to.
    pub deployment: String,
    /// Available AZs of the region, by name.
    pub azs: Vec<String>,
    pub vpcs: Vec<Vpc>,
    pub subnets: Vec<Subnet>,
    pub igws: Vec<Igw>,
    pub eips: Vec<Eip>,
    /// NAT gateways not yet `deleted`.
    pub nats: Vec<Nat>,
    /// Ids of deleted or failed NAT gateways, which seed the create token
    /// so that a new NAT gateway is never answered with a dead one.
    pub dead_nats: Vec<String>,
    pub route_tables: Vec<RouteTable>,
    pub sgs: Vec<SecurityGroup>,
}

impl Observed {
    /// The VPC the deployment uses: the tagged one with most of our subnets
    /// (a twin from an interrupted create has none), then the lowest id.
    pub fn vpc(&self) -> Option<&Vpc> {
        self.vpcs.iter().max_by(|a, b| {
            let count = |v: &Vpc| self.subnets.iter().filter(|s| s.vpc_id == v.id).count();
            count(a).cmp(&count(b)).then_with(|| b.id.cmp(&a.id))
        })
    }

    fn vpc_id(&self) -> Option<&str> {
        self.vpc().map(|v| v.id.as_str())
    }

    fn subnet(&self, tier: Tier, i: usize, az: &str) -> Option<&Subnet> {
        let vpc = self.vpc_id()?;
        let cidr = tier.cidr(i);
        self.subnets
            .iter()
            .find(|s| s.vpc_id == vpc && s.cidr == cidr && s.az == az)
    }

    /// The internet gateway attached to our VPC, else a free one of ours.
    fn igw(&self) -> Option<&Igw> {
        let vpc = self.vpc_id();
        self.igws
            .iter()
            .find(|g| vpc.is_some_and(|v| g.attached_to.iter().any(|a| a == v)))
            .or_else(|| self.igws.iter().find(|g| g.attached_to.is_empty()))
    }

    /// The live NAT gateway in our VPC: available before pending.
    fn nat(&self) -> Option<&Nat> {
        let vpc = self.vpc_id()?;
        let live = |state| {
            self.nats
                .iter()
                .find(move |n| n.vpc_id == vpc && n.state == state)
        };
        live(NatState::Available).or_else(|| live(NatState::Pending))
    }

    /// The NAT gateway's address, else a free one of ours.
    fn eip(&self) -> Option<&Eip> {
        let used = self.nat().and_then(|n| n.allocation_id.as_deref());
        self.eips
            .iter()
            .find(|e| Some(e.allocation_id.as_str()) == used)
            .or_else(|| self.eips.iter().find(|e| !e.associated))
    }

    fn route_table(&self, d: &Desired, tier: Tier) -> Option<&RouteTable> {
        let vpc = self.vpc_id()?;
        let name = d.route_table_name(tier);
        self.route_tables
            .iter()
            .find(|rt| rt.vpc_id == vpc && rt.name.as_deref() == Some(name.as_str()))
    }

    fn sg(&self, d: &Desired) -> Option<&SecurityGroup> {
        let vpc = self.vpc_id()?;
        let name = d.sg_name();
        self.sgs.iter().find(|g| g.vpc_id == vpc && g.name == name)
    }
}

fn ec2(ctx: &Ctx) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&ctx.aws.config)
}

fn tag_filter(ctx: &Ctx) -> Filter {
    Filter::builder()
        .name(format!("tag:{TAG_KEY}"))
        .values(&ctx.deployment)
        .build()
}

/// The server-side tag filter is checked again here: some EC2 stand-ins
/// ignore filters on some calls, and a resource of another deployment must
/// never be touched.
fn ours(ctx: &Ctx, tags: &[Tag]) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(TAG_KEY) && t.value() == Some(ctx.deployment.as_str()))
}

fn name_tag(tags: &[Tag]) -> Option<String> {
    tags.iter()
        .find(|t| t.key() == Some("Name"))
        .and_then(|t| t.value())
        .map(str::to_string)
}

async fn observe_azs(ctx: &Ctx) -> Result<Vec<String>> {
    let out = ec2(ctx)
        .describe_availability_zones()
        .filters(Filter::builder().name("state").values("available").build())
        .send()
        .await
        .op(|| format!("listing availability zones in {}", ctx.aws.region))?;
    let mut azs: Vec<String> = out
        .availability_zones()
        .iter()
        .filter(|z| z.zone_type().is_none_or(|t| t == "availability-zone"))
        .filter_map(|z| z.zone_name().map(str::to_string))
        .collect();
    azs.sort();
    Ok(azs)
}

async fn observe_vpcs(ctx: &Ctx) -> Result<Vec<Vpc>> {
    let mut found = Vec::new();
    let mut pages = ec2(ctx)
        .describe_vpcs()
        .filters(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing VPCs in {}", ctx.aws.region))?;
        for v in page.vpcs() {
            if !ours(ctx, v.tags()) {
                continue;
            }
            found.push(Vpc {
                id: v.vpc_id().context("VPC without id")?.to_string(),
                cidr: v.cidr_block().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(found)
}

async fn observe_subnets(ctx: &Ctx) -> Result<Vec<Subnet>> {
    let mut found = Vec::new();
    let mut pages = ec2(ctx)
        .describe_subnets()
        .filters(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing subnets in {}", ctx.aws.region))?;
        for s in page.subnets() {
            if !ours(ctx, s.tags()) {
                continue;
            }
            found.push(Subnet {
                id: s.subnet_id().context("subnet without id")?.to_string(),
                vpc_id: s.vpc_id().unwrap_or_default().to_string(),
                az: s.availability_zone().unwrap_or_default().to_string(),
                cidr: s.cidr_block().unwrap_or_default().to_string(),
            });
        }
    }
    Ok(found)
}

async fn observe_igws(ctx: &Ctx) -> Result<Vec<Igw>> {
    let mut found = Vec::new();
    let mut pages = ec2(ctx)
        .describe_internet_gateways()
        .filters(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing internet gateways in {}", ctx.aws.region))?;
        for g in page.internet_gateways() {
            if !ours(ctx, g.tags()) {
                continue;
            }
            found.push(Igw {
                id: g
                    .internet_gateway_id()
                    .context("internet gateway without id")?
                    .to_string(),
                attached_to: g
                    .attachments()
                    .iter()
                    .filter(|a| !matches!(a.state(), Some(aws_sdk_ec2::types::AttachmentStatus::Detached)))
                    .filter_map(|a| a.vpc_id().map(str::to_string))
                    .collect(),
            });
        }
    }
    Ok(found)
}

async fn observe_eips(ctx: &Ctx) -> Result<Vec<Eip>> {
    let out = ec2(ctx)
        .describe_addresses()
        .filters(tag_filter(ctx))
        .send()
        .await
        .op(|| format!("listing Elastic IPs in {}", ctx.aws.region))?;
    Ok(out
        .addresses()
        .iter()
        .filter(|a| ours(ctx, a.tags()))
        .filter_map(|a| {
            Some(Eip {
                allocation_id: a.allocation_id()?.to_string(),
                public_ip: a.public_ip().unwrap_or_default().to_string(),
                associated: non_empty(a.association_id())
                    .or(non_empty(a.network_interface_id()))
                    .is_some(),
                stale_association: None,
            })
        })
        .collect())
}

/// An id that names something: moto answers `""` for "none" (e.g. an
/// address's interface once it has been freed).
fn non_empty(id: Option<&str>) -> Option<&str> {
    id.filter(|s| !s.is_empty())
}

/// Live NAT gateways, ids of dead ones, and the Elastic IPs the dead ones
/// still name (allocation, association).
#[allow(clippy::type_complexity)]
async fn observe_nats(ctx: &Ctx) -> Result<(Vec<Nat>, Vec<String>, Vec<(String, Option<String>)>)> {
    let mut live = Vec::new();
    let mut dead = Vec::new();
    let mut dead_eips = Vec::new();
    let mut pages = ec2(ctx)
        .describe_nat_gateways()
        .filter(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing NAT gateways in {}", ctx.aws.region))?;
        for n in page.nat_gateways() {
            if !ours(ctx, n.tags()) {
                continue;
            }
            let id = n.nat_gateway_id().context("NAT gateway without id")?.to_string();
            let address = n
                .nat_gateway_addresses()
                .iter()
                .find(|a| a.allocation_id().is_some());
            let allocation_id = address.and_then(|a| a.allocation_id()).map(str::to_string);
            let association = address
                .and_then(|a| non_empty(a.association_id()))
                .map(str::to_string);
            let state = match n.state() {
                Some(NatGatewayState::Pending) => NatState::Pending,
                Some(NatGatewayState::Available) => NatState::Available,
                Some(NatGatewayState::Deleting) => NatState::Deleting,
                Some(NatGatewayState::Failed) => NatState::Failed,
                _ => {
                    dead.push(id);
                    dead_eips.extend(allocation_id.map(|a| (a, association)));
                    continue;
                }
            };
            if state == NatState::Failed {
                dead.push(id.clone());
            }
            live.push(Nat {
                id,
                state,
                vpc_id: n.vpc_id().unwrap_or_default().to_string(),
                subnet_id: n.subnet_id().unwrap_or_default().to_string(),
                allocation_id,
            });
        }
    }
    dead.sort();
    Ok((live, dead, dead_eips))
}

/// AWS frees a deleted NAT gateway's address; some endpoints (moto) keep
/// it associated with the dead gateway's interface forever, which would keep
/// it from ever being released. An address only a dead gateway names is
/// unused.
fn release_eips_of_dead_nats(eips: &mut [Eip], live: &[Nat], dead_eips: &[(String, Option<String>)]) {
    for e in eips.iter_mut() {
        let held_by_live = live
            .iter()
            .any(|n| n.allocation_id.as_deref() == Some(e.allocation_id.as_str()));
        let dead = dead_eips.iter().find(|(a, _)| *a == e.allocation_id);
        if let (true, false, Some((_, association))) = (e.associated, held_by_live, dead) {
            e.associated = false;
            e.stale_association = association.clone();
        }
    }
}

async fn observe_route_tables(ctx: &Ctx) -> Result<Vec<RouteTable>> {
    let mut found = Vec::new();
    let mut pages = ec2(ctx)
        .describe_route_tables()
        .filters(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing route tables in {}", ctx.aws.region))?;
        for rt in page.route_tables() {
            if !ours(ctx, rt.tags()) {
                continue;
            }
            found.push(RouteTable {
                id: rt.route_table_id().context("route table without id")?.to_string(),
                vpc_id: rt.vpc_id().unwrap_or_default().to_string(),
                name: name_tag(rt.tags()),
                routes: rt
                    .routes()
                    .iter()
                    .filter_map(|r| {
                        Some(Route {
                            destination: r.destination_cidr_block()?.to_string(),
                            target: [
                                r.nat_gateway_id(),
                                r.gateway_id(),
                                r.network_interface_id(),
                                r.transit_gateway_id(),
                                r.vpc_peering_connection_id(),
                            ]
                            .into_iter()
                            .find_map(non_empty)
                            .map(str::to_string),
                            blackhole: r.state() == Some(&RouteState::Blackhole),
                        })
                    })
                    .collect(),
                associations: rt
                    .associations()
                    .iter()
                    .filter(|a| !a.main().unwrap_or(false))
                    .filter_map(|a| {
                        Some(Association {
                            id: a.route_table_association_id()?.to_string(),
                            subnet_id: a.subnet_id()?.to_string(),
                        })
                    })
                    .collect(),
            });
        }
    }
    Ok(found)
}

fn flatten(p: &IpPermission) -> Vec<Rule> {
    let protocol = p.ip_protocol().unwrap_or("-1").to_string();
    let rule = |source| Rule {
        protocol: protocol.clone(),
        from: p.from_port(),
        to: p.to_port(),
        source,
    };
    let mut rules = Vec::new();
    rules.extend(
        p.ip_ranges()
            .iter()
            .filter_map(|r| r.cidr_ip())
            .map(|c| rule(Source::Cidr(c.into()))),
    );
    rules.extend(
        p.ipv6_ranges()
            .iter()
            .filter_map(|r| r.cidr_ipv6())
            .map(|c| rule(Source::Ipv6(c.into()))),
    );
    rules.extend(
        p.prefix_list_ids()
            .iter()
            .filter_map(|r| r.prefix_list_id())
            .map(|c| rule(Source::PrefixList(c.into()))),
    );
    rules.extend(
        p.user_id_group_pairs()
            .iter()
            .filter_map(|r| r.group_id())
            .map(|c| rule(Source::Group(c.into()))),
    );
    rules
}

async fn observe_sgs(ctx: &Ctx) -> Result<Vec<SecurityGroup>> {
    let mut found = Vec::new();
    let mut pages = ec2(ctx)
        .describe_security_groups()
        .filters(tag_filter(ctx))
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing security groups in {}", ctx.aws.region))?;
        for g in page.security_groups() {
            if !ours(ctx, g.tags()) {
                continue;
            }
            let mut rules: Vec<Rule> = g.ip_permissions().iter().flat_map(flatten).collect();
            rules.sort();
            found.push(SecurityGroup {
                id: g.group_id().context("security group without id")?.to_string(),
                vpc_id: g.vpc_id().unwrap_or_default().to_string(),
                name: g.group_name().unwrap_or_default().to_string(),
                rules,
            });
        }
    }
    Ok(found)
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreateVpc,
    DeleteVpc(String),
    CreateSubnet {
        tier: Tier,
        index: usize,
        az: String,
    },
    DeleteSubnet(String),
    /// Create and attach to the VPC.
    CreateIgw,
    AttachIgw,
    /// Detach from every VPC, then delete.
    DeleteIgw(String),
    AllocateEip,
    ReleaseEip(String),
    /// Create, then wait until available.
    CreateNat,
    /// Wait for a pending NAT gateway.
    AwaitNat,
    /// Delete, then wait until deleted.
    DeleteNat(String),
    CreateRouteTable(Tier),
    DeleteRouteTable(String),
    /// 0.0.0.0/0 via the internet gateway (public) or the NAT gateway (private).
    PutDefaultRoute(Tier),
    Associate {
        tier: Tier,
        index: usize,
        az: String,
    },
    Disassociate(String),
    CreateSg,
    DeleteSg(String),
    Authorize(Rule),
    Revoke(Rule),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn known_or_later(v: Option<&str>) -> Value {
    v.map(Value::known).unwrap_or(Value::KnownAfterApply)
}

/// The pure plan for `up`: what to create, fix or remove so that the
/// network matches `d`. Steps come in dependency order.
pub fn plan_up(d: &Desired, o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let vpc = o.vpc();

    // VPC, and twins left by an interrupted create.
    match vpc {
        None => steps.push(planned(
            Change::new(VPC, Action::Create, "no VPC tagged for this deployment")
                .field("cidr", None, Value::known(VPC_CIDR))
                .field("name", None, Value::known(d.name("vpc"))),
            Op::CreateVpc,
        )),
        Some(v) if v.cidr != VPC_CIDR => steps.push(planned(
            // A VPC's primary CIDR cannot change; say so rather than guess.
            Change::new(
                VPC,
                Action::Update,
                format!(
                    "CIDR is {}, expected {VPC_CIDR}; run `edgectl cloud down` first",
                    v.cidr
                ),
            ),
            Op::CreateVpc,
        )),
        Some(_) => {}
    }
    let vpc_id = vpc.map(|v| v.id.as_str());
    for v in &o.vpcs {
        if Some(v.id.as_str()) != vpc_id {
            steps.push(planned(
                Change::new(
                    format!("{VPC}#{}", v.id),
                    Action::Delete,
                    "duplicate VPC with this deployment's tag",
                ),
                Op::DeleteVpc(v.id.clone()),
            ));
        }
    }

    // Subnets: one public and one private per AZ; anything else of ours in
    // the VPC goes.
    let mut wanted_subnets = Vec::new();
    for tier in [Tier::Public, Tier::Private] {
        for (i, az) in d.subnets() {
            match o.subnet(tier, i, az) {
                Some(s) => wanted_subnets.push(s.id.clone()),
                None => steps.push(planned(
                    Change::new(
                        subnet_address(tier, az),
                        Action::Create,
                        format!("no {} subnet in {az}", tier.as_str()),
                    )
                    .field("cidr", None, Value::known(tier.cidr(i)))
                    .field("vpc", None, known_or_later(vpc_id)),
                    Op::CreateSubnet {
                        tier,
                        index: i,
                        az: az.clone(),
                    },
                )),
            }
        }
    }

    // Internet gateway.
    let igw = o.igw();
    match igw {
        None => steps.push(planned(
            Change::new(
                IGW,
                Action::Create,
                "no internet gateway tagged for this deployment",
            )
            .field("vpc", None, known_or_later(vpc_id)),
            Op::CreateIgw,
        )),
        Some(g) if !vpc_id.is_some_and(|v| g.attached_to.iter().any(|a| a == v)) => steps.push(planned(
            Change::new(IGW, Action::Update, "not attached to the VPC").field(
                "vpc",
                None,
                known_or_later(vpc_id),
            ),
            Op::AttachIgw,
        )),
        Some(_) => {}
    }
    for g in &o.igws {
        if Some(&g.id) != igw.map(|i| &i.id) {
            steps.push(planned(
                Change::new(
                    format!("{IGW}#{}", g.id),
                    Action::Delete,
                    "duplicate internet gateway with this deployment's tag",
                ),
                Op::DeleteIgw(g.id.clone()),
            ));
        }
    }
    let igw_id = igw.map(|g| g.id.as_str());

    // Public route table.
    plan_route_table(d, o, Tier::Public, igw_id, &mut steps);

    // NAT gateway and its address. A NAT gateway still being deleted holds
    // its address until it is gone: wait for it first.
    let nat = o.nat();
    for n in &o.nats {
        if Some(&n.id) == nat.map(|x| &x.id) {
            continue;
        }
        if n.state == NatState::Deleting {
            steps.push(planned(
                Change::new(
                    format!("{NAT}#{}", n.id),
                    Action::Delete,
                    "still being deleted; waiting for it",
                ),
                Op::DeleteNat(n.id.clone()),
            ));
        } else {
            steps.push(planned(
                Change::new(
                    format!("{NAT}#{}", n.id),
                    Action::Delete,
                    if n.state == NatState::Failed {
                        "NAT gateway failed"
                    } else {
                        "duplicate NAT gateway with this deployment's tag"
                    },
                ),
                Op::DeleteNat(n.id.clone()),
            ));
        }
    }
    let eip = o.eip();
    if eip.is_none() {
        steps.push(planned(
            Change::new(EIP, Action::Create, "no Elastic IP tagged for this deployment").field(
                "public_ip",
                None,
                Value::KnownAfterApply,
            ),
            Op::AllocateEip,
        ));
    }
    let public0 = d.azs.first().and_then(|az| o.subnet(Tier::Public, 0, az));
    match nat {
        None => steps.push(planned(
            Change::new(NAT, Action::Create, "no NAT gateway tagged for this deployment")
                .field("subnet", None, known_or_later(public0.map(|s| s.id.as_str())))
                .field(
                    "public_ip",
                    None,
                    known_or_later(eip.map(|e| e.public_ip.as_str())),
                ),
            Op::CreateNat,
        )),
        Some(n) if n.state == NatState::Pending => steps.push(planned(
            Change::new(
                NAT,
                Action::Update,
                "NAT gateway is still pending; waiting for it",
            ),
            Op::AwaitNat,
        )),
        Some(_) => {}
    }
    // Addresses of ours that nothing uses, e.g. from an interrupted create.
    for e in &o.eips {
        if Some(&e.allocation_id) != eip.map(|x| &x.allocation_id) && !e.associated {
            steps.push(planned(
                Change::new(
                    format!("{EIP}#{}", e.allocation_id),
                    Action::Delete,
                    "unused Elastic IP with this deployment's tag",
                ),
                Op::ReleaseEip(e.allocation_id.clone()),
            ));
        }
    }
    let nat_id = nat.map(|n| n.id.as_str());

    // Private route table.
    plan_route_table(d, o, Tier::Private, nat_id, &mut steps);

    // Route tables of ours that are neither.
    let kept: Vec<&str> = [Tier::Public, Tier::Private]
        .iter()
        .filter_map(|t| o.route_table(d, *t).map(|rt| rt.id.as_str()))
        .collect();
    for rt in &o.route_tables {
        if !kept.contains(&rt.id.as_str()) && Some(rt.vpc_id.as_str()) == vpc_id {
            for a in &rt.associations {
                steps.push(planned(
                    Change::new(
                        format!("network/route-table#{}/association:{}", rt.id, a.subnet_id),
                        Action::Delete,
                        "route table not in the desired layout",
                    ),
                    Op::Disassociate(a.id.clone()),
                ));
            }
            steps.push(planned(
                Change::new(
                    format!("network/route-table#{}", rt.id),
                    Action::Delete,
                    "route table not in the desired layout",
                ),
                Op::DeleteRouteTable(rt.id.clone()),
            ));
        }
    }

    // Subnets of ours that are not in the layout (after their associations).
    for s in &o.subnets {
        if Some(s.vpc_id.as_str()) == vpc_id && !wanted_subnets.contains(&s.id) {
            steps.push(planned(
                Change::new(
                    format!("network/subnet#{}", s.id),
                    Action::Delete,
                    format!("{} in {} is not in the desired layout", s.cidr, s.az),
                ),
                Op::DeleteSubnet(s.id.clone()),
            ));
        }
    }

    // The servers' security group: exactly the reference rules.
    let sg = o.sg(d);
    let want = server_rules();
    match sg {
        None => {
            steps.push(planned(
                Change::new(SG, Action::Create, "no security group tagged for this deployment")
                    .field("name", None, Value::known(d.sg_name()))
                    .field("vpc", None, known_or_later(vpc_id)),
                Op::CreateSg,
            ));
            for r in &want {
                steps.push(planned(
                    Change::new(
                        format!("{SG}/ingress:{}", r.key()),
                        Action::Create,
                        "new security group",
                    ),
                    Op::Authorize(r.clone()),
                ));
            }
        }
        Some(g) => {
            for r in &want {
                if !g.rules.contains(r) {
                    steps.push(planned(
                        Change::new(
                            format!("{SG}/ingress:{}", r.key()),
                            Action::Create,
                            "rule missing from the security group",
                        ),
                        Op::Authorize(r.clone()),
                    ));
                }
            }
            for r in &g.rules {
                if !want.contains(r) {
                    steps.push(planned(
                        Change::new(
                            format!("{SG}/ingress:{}", r.key()),
                            Action::Delete,
                            "rule not in the reference (the group is edgectl's alone)",
                        ),
                        Op::Revoke(r.clone()),
                    ));
                }
            }
        }
    }
    for g in &o.sgs {
        if Some(&g.id) != sg.map(|s| &s.id) {
            steps.push(planned(
                Change::new(
                    format!("network/security-group#{}", g.id),
                    Action::Delete,
                    "security group with this deployment's tag not in the desired layout",
                ),
                Op::DeleteSg(g.id.clone()),
            ));
        }
    }
    steps
}

/// One route table: the table, its default route to `target` and one
/// association per subnet of its tier.
fn plan_route_table(
    d: &Desired,
    o: &Observed,
    tier: Tier,
    target: Option<&str>,
    steps: &mut Vec<Planned<Op>>,
) {
    let address = rt_address(tier);
    let via = match tier {
        Tier::Public => "internet gateway",
        Tier::Private => "NAT gateway",
    };
    let rt = o.route_table(d, tier);
    if rt.is_none() {
        steps.push(planned(
            Change::new(
                &address,
                Action::Create,
                format!("no {} route table tagged for this deployment", tier.as_str()),
            )
            .field("name", None, Value::known(d.route_table_name(tier))),
            Op::CreateRouteTable(tier),
        ));
    }
    let route = rt.and_then(|rt| rt.routes.iter().find(|r| r.destination == ANYWHERE));
    let route_address = format!("{address}/route:{ANYWHERE}");
    match route {
        None => steps.push(planned(
            Change::new(
                &route_address,
                Action::Create,
                format!("no default route via the {via}"),
            )
            .field("target", None, known_or_later(target)),
            Op::PutDefaultRoute(tier),
        )),
        Some(r) if r.blackhole || target.is_none() || r.target.as_deref() != target => steps.push(planned(
            Change::new(
                &route_address,
                Action::Update,
                if r.blackhole {
                    format!("default route is a blackhole; point it at the {via}")
                } else {
                    format!("default route does not go via the {via}")
                },
            )
            .field(
                "target",
                r.target.as_deref().map(Value::known),
                known_or_later(target),
            ),
            Op::PutDefaultRoute(tier),
        )),
        Some(_) => {}
    }
    let mut wanted = Vec::new();
    for (i, az) in d.subnets() {
        let subnet = o.subnet(tier, i, az);
        if let Some(s) = subnet {
            wanted.push(s.id.as_str());
        }
        let associated = match (rt, subnet) {
            (Some(rt), Some(s)) => rt.associations.iter().any(|a| a.subnet_id == s.id),
            _ => false,
        };
        if !associated {
            steps.push(planned(
                Change::new(
                    format!("{address}/association:{}-{az}", tier.as_str()),
                    Action::Create,
                    format!("{} subnet in {az} does not use this route table", tier.as_str()),
                )
                .field("subnet", None, known_or_later(subnet.map(|s| s.id.as_str()))),
                Op::Associate {
                    tier,
                    index: i,
                    az: az.clone(),
                },
            ));
        }
    }
    if let Some(rt) = rt {
        for a in &rt.associations {
            if !wanted.contains(&a.subnet_id.as_str()) {
                steps.push(planned(
                    Change::new(
                        format!("{address}/association:{}", a.subnet_id),
                        Action::Delete,
                        format!("subnet is not a {} subnet of this deployment", tier.as_str()),
                    ),
                    Op::Disassociate(a.id.clone()),
                ));
            }
        }
    }
}

/// The pure plan for `down`: everything tagged, in reverse dependency
/// order. NAT gateway (wait until deleted), its address, route table
/// associations, route tables, subnets, internet gateway, security group,
/// VPC.
pub fn plan_down(o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let gone = |address: String, id: &str| {
        Change::new(address, Action::Delete, "cloud down").field(
            "id",
            Some(Value::known(id)),
            Value::known("(deleted)"),
        )
    };
    for n in &o.nats {
        steps.push(planned(
            gone(format!("{NAT}#{}", n.id), &n.id),
            Op::DeleteNat(n.id.clone()),
        ));
    }
    for e in &o.eips {
        steps.push(planned(
            gone(format!("{EIP}#{}", e.allocation_id), &e.public_ip),
            Op::ReleaseEip(e.allocation_id.clone()),
        ));
    }
    for rt in &o.route_tables {
        for a in &rt.associations {
            steps.push(planned(
                gone(
                    format!("network/route-table#{}/association:{}", rt.id, a.subnet_id),
                    &a.id,
                ),
                Op::Disassociate(a.id.clone()),
            ));
        }
    }
    for rt in &o.route_tables {
        steps.push(planned(
            gone(format!("network/route-table#{}", rt.id), &rt.id),
            Op::DeleteRouteTable(rt.id.clone()),
        ));
    }
    for s in &o.subnets {
        steps.push(planned(
            gone(format!("network/subnet#{}", s.id), &s.id),
            Op::DeleteSubnet(s.id.clone()),
        ));
    }
    for g in &o.igws {
        steps.push(planned(
            gone(format!("{IGW}#{}", g.id), &g.id),
            Op::DeleteIgw(g.id.clone()),
        ));
    }
    for g in &o.sgs {
        steps.push(planned(
            gone(format!("network/security-group#{}", g.id), &g.id),
            Op::DeleteSg(g.id.clone()),
        ));
    }
    for v in &o.vpcs {
        steps.push(planned(
            gone(format!("{VPC}#{}", v.id), &v.id),
            Op::DeleteVpc(v.id.clone()),
        ));
    }
    steps
}

/// What later components read: ids once they exist, "known after apply"
/// while something they name is still to be created.
pub fn exports(d: &Desired, o: &Observed, planned: &[Planned<Op>]) -> Exports {
    let creates = |f: &dyn Fn(&Op) -> bool| planned.iter().any(|p| f(&p.op));
    let vpc = match o.vpc() {
        Some(v) if !creates(&|op| matches!(op, Op::CreateVpc)) => Value::known(&v.id),
        _ => Value::KnownAfterApply,
    };
    let subnets = |tier: Tier| {
        let ids: Option<Vec<&str>> = d
            .subnets()
            .map(|(i, az)| o.subnet(tier, i, az).map(|s| s.id.as_str()))
            .collect();
        match ids {
            Some(ids) if !ids.is_empty() => Value::known(ids.join(",")),
            _ => Value::KnownAfterApply,
        }
    };
    let sg = match o.sg(d) {
        Some(g) => Value::known(&g.id),
        None => Value::KnownAfterApply,
    };
    Exports::from([
        ("vpc_id", vpc),
        ("public_subnet_ids", subnets(Tier::Public)),
        ("private_subnet_ids", subnets(Tier::Private)),
        ("server_security_group_id", sg),
        ("availability_zones", Value::known(d.azs.join(","))),
    ])
}

// ---- apply ---------------------------------------------------------------

fn tags(ctx: &Ctx, kind: ResourceType, what: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(Tag::builder().key(TAG_KEY).value(&ctx.deployment).build())
        .tags(
            Tag::builder()
                .key("Name")
                .value(format!("edgectl-{}-{what}", ctx.deployment))
                .build(),
        )
        .build()
}

/// "Already gone" counts as done (the cleanup contract).
fn gone<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    code(err).is_some_and(|c| c.ends_with(".NotFound") || c == "NatGatewayNotFound")
}

fn dependency_violation<E, R>(err: &aws_sdk_ec2::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_ec2::error::ProvideErrorMetadata,
{
    code(err) == Some("DependencyViolation")
}

/// What still uses a subnet, security group or VPC: its network interfaces
/// (instances, load balancers, endpoints), and for a group, the groups whose
/// rules name it. `Ok(Pending)` when all that is left are interfaces AWS
/// itself is still releasing (a deleted load balancer or NAT gateway).
async fn still_used(ctx: &Ctx, what: &str, filter: &str, id: &str) -> Result<Applied> {
    let client = ec2(ctx);
    let enis = client
        .describe_network_interfaces()
        .filters(Filter::builder().name(filter).values(id).build())
        .send()
        .await
        .op(|| format!("listing the network interfaces that use {id}"))?;
    let mut users = Vec::new();
    let mut all_managed = true;
    for eni in enis.network_interfaces() {
        let owner = eni
            .attachment()
            .and_then(|a| a.instance_id())
            .map(|i| format!("instance {i}"))
            .or_else(|| {
                eni.description()
                    .filter(|d| !d.is_empty())
                    .map(|d| format!("\"{d}\""))
            })
            .unwrap_or_else(|| "no description".into());
        users.push(format!("{} ({owner})", eni.network_interface_id().unwrap_or("?")));
        all_managed &= eni.requester_managed().unwrap_or(false);
    }
    if filter == "group-id" {
        let referencing = client
            .describe_security_groups()
            .filters(
                Filter::builder()
                    .name("ip-permission.group-id")
                    .values(id)
                    .build(),
            )
            .send()
            .await
            .op(|| format!("listing the security groups that refer to {id}"))?;
        for g in referencing.security_groups() {
            if g.group_id() != Some(id) {
                all_managed = false;
                users.push(format!(
                    "security group {} ({})",
                    g.group_id().unwrap_or("?"),
                    g.group_name().unwrap_or("?")
                ));
            }
        }
    }
    if filter == "vpc-id" {
        // By the time the VPC goes, our own subnets and groups are gone:
        // whatever is left was made by someone else.
        let vpc = Filter::builder().name("vpc-id").values(id).build();
        let (subnets, groups) = tokio::try_join!(
            async {
                client
                    .describe_subnets()
                    .filters(vpc.clone())
                    .send()
                    .await
                    .op(|| format!("listing the subnets of {id}"))
            },
            async {
                client
                    .describe_security_groups()
                    .filters(vpc.clone())
                    .send()
                    .await
                    .op(|| format!("listing the security groups of {id}"))
            },
        )?;
        for s in subnets.subnets() {
            all_managed = false;
            users.push(format!(
                "subnet {} ({})",
                s.subnet_id().unwrap_or("?"),
                s.cidr_block().unwrap_or("?")
            ));
        }
        for g in groups.security_groups() {
            if g.group_name() != Some("default") {
                all_managed = false;
                users.push(format!(
                    "security group {} ({})",
                    g.group_id().unwrap_or("?"),
                    g.group_name().unwrap_or("?")
                ));
            }
        }
    }
    if !users.is_empty() && all_managed {
        return Ok(Applied::Pending {
            what: format!("waiting for AWS to release {}", users.join(", ")),
            retry_after: ENI_POLL,
        });
    }
    let used_by = if users.is_empty() {
        "resources edgectl did not create (look for subnets, gateways, endpoints or security groups in it)"
            .to_string()
    } else {
        users.join(", ")
    };
    bail!(crate::error::User::new(
        format!("{what} {id} is still in use by {used_by}"),
        "delete those first (or, if they are edgectl's, run `edgectl cloud down` again)"
    ))
}

async fn describe_nat(ctx: &Ctx, id: &str) -> Result<Option<(Option<NatGatewayState>, Option<String>)>> {
    let out = ec2(ctx).describe_nat_gateways().nat_gateway_ids(id).send().await;
    match out {
        Ok(out) => Ok(out
            .nat_gateways()
            .first()
            .map(|n| (n.state().cloned(), n.failure_message().map(str::to_string)))),
        Err(e) if gone(&e) => Ok(None),
        Err(e) => Err(e).op(|| format!("describing NAT gateway {id}")),
    }
}

/// Looks at a NAT gateway we are waiting for and records what it is now.
async fn nat_progress(ctx: &Ctx, o: &mut Observed, id: &str) -> Result<Applied> {
    let (state, why) = describe_nat(ctx, id).await?.unwrap_or((None, None));
    let nat = o.nats.iter_mut().find(|n| n.id == id);
    match state {
        Some(NatGatewayState::Available) => {
            if let Some(n) = nat {
                n.state = NatState::Available;
            }
            Ok(Applied::Done)
        }
        Some(NatGatewayState::Pending) | None if nat.is_some() => Ok(Applied::Pending {
            what: format!("NAT gateway {id} is pending"),
            retry_after: NAT_POLL,
        }),
        Some(NatGatewayState::Failed) => {
            bail!(
                "NAT gateway {id} failed: {}; the next `edgectl cloud up` replaces it",
                why.unwrap_or_default()
            )
        }
        other => bail!("NAT gateway {id} is {other:?}, expected it to become available"),
    }
}

fn subnet_id(o: &Observed, d: &Desired, tier: Tier, index: usize) -> Result<String> {
    let az = d.azs.get(index).context("no such availability zone")?;
    o.subnet(tier, index, az)
        .map(|s| s.id.clone())
        .with_context(|| format!("the {} subnet in {az} does not exist yet", tier.as_str()))
}

async fn apply_op(ctx: &Ctx, d: &Desired, op: &Op, o: &mut Observed) -> Result<Applied> {
    let client = ec2(ctx);
    let region = &ctx.aws.region;
    let vpc_id = |o: &Observed| -> Result<String> {
        o.vpc().map(|v| v.id.clone()).context("the VPC must exist first")
    };
    match op {
        Op::CreateVpc => {
            if let Some(v) = o.vpc() {
                bail!(crate::error::User::new(
                    format!("VPC {} has CIDR {}, not {VPC_CIDR}", v.id, v.cidr),
                    "a VPC's CIDR cannot change: run `edgectl cloud down`, then `edgectl cloud up`"
                ));
            }
            let out = client
                .create_vpc()
                .cidr_block(VPC_CIDR)
                .tag_specifications(tags(ctx, ResourceType::Vpc, "vpc"))
                .send()
                .await
                .op(|| format!("creating VPC {VPC_CIDR} in {region}"))?;
            let v = out.vpc().context("CreateVpc returned no VPC")?;
            o.vpcs.push(Vpc {
                id: v.vpc_id().context("CreateVpc returned no id")?.to_string(),
                cidr: VPC_CIDR.into(),
            });
        }
        Op::DeleteVpc(id) => match client.delete_vpc().vpc_id(id).send().await {
            Ok(_) => o.vpcs.retain(|v| &v.id != id),
            Err(e) if gone(&e) => o.vpcs.retain(|v| &v.id != id),
            Err(e) if dependency_violation(&e) => return still_used(ctx, "VPC", "vpc-id", id).await,
            Err(e) => return Err(e).op(|| format!("deleting VPC {id}")),
        },
        Op::CreateSubnet { tier, index, az } => {
            let vpc = vpc_id(o)?;
            let cidr = tier.cidr(*index);
            let out = client
                .create_subnet()
                .vpc_id(&vpc)
                .cidr_block(&cidr)
                .availability_zone(az)
                .tag_specifications(tags(
                    ctx,
                    ResourceType::Subnet,
                    &format!("{}-{az}", tier.as_str()),
                ))
                .send()
                .await
                .op(|| format!("creating {} subnet {cidr} in {az}", tier.as_str()))?;
            let s = out.subnet().context("CreateSubnet returned no subnet")?;
            o.subnets.push(Subnet {
                id: s.subnet_id().context("CreateSubnet returned no id")?.to_string(),
                vpc_id: vpc,
                az: az.clone(),
                cidr,
            });
        }
        Op::DeleteSubnet(id) => match client.delete_subnet().subnet_id(id).send().await {
            Ok(_) => o.subnets.retain(|s| &s.id != id),
            Err(e) if gone(&e) => o.subnets.retain(|s| &s.id != id),
            Err(e) if dependency_violation(&e) => return still_used(ctx, "subnet", "subnet-id", id).await,
            Err(e) => return Err(e).op(|| format!("deleting subnet {id}")),
        },
        Op::CreateIgw => {
            let vpc = vpc_id(o)?;
            let out = client
                .create_internet_gateway()
                .tag_specifications(tags(ctx, ResourceType::InternetGateway, "igw"))
                .send()
                .await
                .op(|| format!("creating an internet gateway in {region}"))?;
            let id = out
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .context("CreateInternetGateway returned no id")?
                .to_string();
            o.igws.push(Igw {
                id: id.clone(),
                attached_to: Vec::new(),
            });
            client
                .attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(&vpc)
                .send()
                .await
                .op(|| format!("attaching internet gateway {id} to {vpc}"))?;
            if let Some(g) = o.igws.iter_mut().find(|g| g.id == id) {
                g.attached_to.push(vpc);
            }
        }
        Op::AttachIgw => {
            let vpc = vpc_id(o)?;
            let id = o.igw().context("no internet gateway")?.id.clone();
            client
                .attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(&vpc)
                .send()
                .await
                .op(|| format!("attaching internet gateway {id} to {vpc}"))?;
            if let Some(g) = o.igws.iter_mut().find(|g| g.id == id) {
                g.attached_to.push(vpc);
            }
        }
        Op::DeleteIgw(id) => {
            let attached = o
                .igws
                .iter()
                .find(|g| &g.id == id)
                .map(|g| g.attached_to.clone())
                .unwrap_or_default();
            for vpc in attached {
                match client
                    .detach_internet_gateway()
                    .internet_gateway_id(id)
                    .vpc_id(&vpc)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if gone(&e) || code(&e) == Some("Gateway.NotAttached") => {}
                    Err(e) if dependency_violation(&e) => {
                        // Public addresses still mapped in the VPC (a NAT
                        // gateway, a load balancer, an instance).
                        return still_used(ctx, "VPC (public addresses)", "vpc-id", &vpc)
                            .await
                            .map_err(|err| err.context(format!("detaching internet gateway {id}")));
                    }
                    Err(e) => return Err(e).op(|| format!("detaching internet gateway {id} from {vpc}")),
                }
                if let Some(g) = o.igws.iter_mut().find(|g| &g.id == id) {
                    g.attached_to.retain(|a| a != &vpc);
                }
            }
            match client
                .delete_internet_gateway()
                .internet_gateway_id(id)
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).op(|| format!("deleting internet gateway {id}")),
            }
            o.igws.retain(|g| &g.id != id);
        }
        Op::AllocateEip => {
            let out = client
                .allocate_address()
                .domain(DomainType::Vpc)
                .tag_specifications(tags(ctx, ResourceType::ElasticIp, "nat"))
                .send()
                .await
                .op(|| format!("allocating an Elastic IP in {region}"))?;
            o.eips.push(Eip {
                allocation_id: out
                    .allocation_id()
                    .context("AllocateAddress returned no allocation id")?
                    .to_string(),
                public_ip: out.public_ip().unwrap_or_default().to_string(),
                associated: false,
                stale_association: None,
            });
        }
        Op::ReleaseEip(id) => {
            match client.release_address().allocation_id(id).send().await {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) if code(&e) == Some("InvalidIPAddress.InUse") => {
                    return Ok(Applied::Pending {
                        what: format!("Elastic IP {id} is still in use (a NAT gateway being deleted?)"),
                        retry_after: NAT_POLL,
                    })
                }
                Err(e) => return Err(e).op(|| format!("releasing Elastic IP {id}")),
            }
            o.eips.retain(|e| &e.allocation_id != id);
        }
        Op::CreateNat => {
            // A retried step finds the NAT gateway it made and only waits.
            if let Some(n) = o.nat() {
                let id = n.id.clone();
                return nat_progress(ctx, o, &id).await;
            }
            let subnet = subnet_id(o, d, Tier::Public, 0)?;
            let chosen = o.eip().context("the NAT gateway's Elastic IP must exist first")?;
            let eip = chosen.allocation_id.clone();
            // Only where the endpoint kept a deleted gateway's association
            // (moto); on AWS the address is free once the gateway is gone.
            if let Some(association) = chosen.stale_association.clone() {
                match client
                    .disassociate_address()
                    .association_id(&association)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => {
                        return Err(e).op(|| format!("freeing Elastic IP {eip} from a deleted NAT gateway"))
                    }
                }
                if let Some(e) = o.eips.iter_mut().find(|e| e.allocation_id == eip) {
                    e.stale_association = None;
                }
            }
            let mut seed = vec![ctx.deployment.as_str(), NAT, subnet.as_str(), eip.as_str()];
            seed.extend(o.dead_nats.iter().map(String::as_str));
            let out = client
                .create_nat_gateway()
                .subnet_id(&subnet)
                .allocation_id(&eip)
                .client_token(crate::pki::token(&seed))
                .tag_specifications(tags(ctx, ResourceType::Natgateway, "nat"))
                .send()
                .await
                .op(|| format!("creating the NAT gateway in {subnet}"))?;
            let n = out
                .nat_gateway()
                .context("CreateNatGateway returned no gateway")?;
            let id = n
                .nat_gateway_id()
                .context("CreateNatGateway returned no id")?
                .to_string();
            let state = match n.state() {
                Some(NatGatewayState::Available) => NatState::Available,
                _ => NatState::Pending,
            };
            o.nats.push(Nat {
                id: id.clone(),
                state,
                vpc_id: vpc_id(o)?,
                subnet_id: subnet,
                allocation_id: Some(eip.clone()),
            });
            if let Some(e) = o.eips.iter_mut().find(|e| e.allocation_id == eip) {
                e.associated = true;
            }
            if state == NatState::Available {
                return Ok(Applied::Done);
            }
            return nat_progress(ctx, o, &id).await;
        }
        Op::AwaitNat => {
            let id = o.nat().context("no NAT gateway to wait for")?.id.clone();
            return nat_progress(ctx, o, &id).await;
        }
        Op::DeleteNat(id) => {
            let state = o.nats.iter().find(|n| &n.id == id).map(|n| n.state);
            if state != Some(NatState::Deleting) {
                match client.delete_nat_gateway().nat_gateway_id(id).send().await {
                    Ok(_) => {}
                    Err(e) if gone(&e) => {}
                    Err(e) => return Err(e).op(|| format!("deleting NAT gateway {id}")),
                }
                if let Some(n) = o.nats.iter_mut().find(|n| &n.id == id) {
                    n.state = NatState::Deleting;
                }
            }
            match describe_nat(ctx, id).await? {
                Some((Some(NatGatewayState::Deleted), _)) | None => {
                    o.nats.retain(|n| &n.id != id);
                    o.dead_nats.push(id.clone());
                }
                Some((state, _)) => {
                    return Ok(Applied::Pending {
                        what: format!(
                            "NAT gateway {id} is {}",
                            state.map(|s| s.as_str().to_string()).unwrap_or_default()
                        ),
                        retry_after: NAT_POLL,
                    })
                }
            }
        }
        Op::CreateRouteTable(tier) => {
            let vpc = vpc_id(o)?;
            let out = client
                .create_route_table()
                .vpc_id(&vpc)
                .client_token(crate::pki::token(&[&ctx.deployment, &rt_address(*tier), &vpc]))
                .tag_specifications(tags(ctx, ResourceType::RouteTable, tier.as_str()))
                .send()
                .await
                .op(|| format!("creating the {} route table in {vpc}", tier.as_str()))?;
            let id = out
                .route_table()
                .and_then(|rt| rt.route_table_id())
                .context("CreateRouteTable returned no id")?;
            o.route_tables.push(RouteTable {
                id: id.to_string(),
                vpc_id: vpc,
                name: Some(d.route_table_name(*tier)),
                routes: Vec::new(),
                associations: Vec::new(),
            });
        }
        Op::DeleteRouteTable(id) => {
            match client.delete_route_table().route_table_id(id).send().await {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).op(|| format!("deleting route table {id}")),
            }
            o.route_tables.retain(|rt| &rt.id != id);
        }
        Op::PutDefaultRoute(tier) => {
            let rt = o
                .route_table(d, *tier)
                .with_context(|| format!("the {} route table must exist first", tier.as_str()))?;
            let rt_id = rt.id.clone();
            let exists = rt.routes.iter().any(|r| r.destination == ANYWHERE);
            let target = match tier {
                Tier::Public => o
                    .igw()
                    .context("the internet gateway must exist first")?
                    .id
                    .clone(),
                Tier::Private => o.nat().context("the NAT gateway must exist first")?.id.clone(),
            };
            let sent = if exists {
                let req = client
                    .replace_route()
                    .route_table_id(&rt_id)
                    .destination_cidr_block(ANYWHERE);
                match tier {
                    Tier::Public => req.gateway_id(&target),
                    Tier::Private => req.nat_gateway_id(&target),
                }
                .send()
                .await
                .map(|_| ())
                .op(|| format!("pointing the default route of {rt_id} at {target}"))
            } else {
                let req = client
                    .create_route()
                    .route_table_id(&rt_id)
                    .destination_cidr_block(ANYWHERE);
                match tier {
                    Tier::Public => req.gateway_id(&target),
                    Tier::Private => req.nat_gateway_id(&target),
                }
                .send()
                .await
                .map(|_| ())
                .op(|| format!("adding a default route via {target} to {rt_id}"))
            };
            sent?;
            if let Some(rt) = o.route_tables.iter_mut().find(|rt| rt.id == rt_id) {
                rt.routes.retain(|r| r.destination != ANYWHERE);
                rt.routes.push(Route {
                    destination: ANYWHERE.into(),
                    target: Some(target),
                    blackhole: false,
                });
            }
        }
        Op::Associate { tier, index, az: _ } => {
            let subnet = subnet_id(o, d, *tier, *index)?;
            let rt_id = o
                .route_table(d, *tier)
                .with_context(|| format!("the {} route table must exist first", tier.as_str()))?
                .id
                .clone();
            // A subnet has one route table: move it if another of ours has it.
            let current = o.route_tables.iter().find_map(|rt| {
                rt.associations
                    .iter()
                    .find(|a| a.subnet_id == subnet)
                    .map(|a| (rt.id.clone(), a.id.clone()))
            });
            let association = match current {
                Some((_, assoc)) => client
                    .replace_route_table_association()
                    .association_id(&assoc)
                    .route_table_id(&rt_id)
                    .send()
                    .await
                    .op(|| format!("moving {subnet} to route table {rt_id}"))?
                    .new_association_id()
                    .context("ReplaceRouteTableAssociation returned no id")?
                    .to_string(),
                None => client
                    .associate_route_table()
                    .route_table_id(&rt_id)
                    .subnet_id(&subnet)
                    .send()
                    .await
                    .op(|| format!("associating {subnet} with route table {rt_id}"))?
                    .association_id()
                    .context("AssociateRouteTable returned no id")?
                    .to_string(),
            };
            for rt in &mut o.route_tables {
                rt.associations.retain(|a| a.subnet_id != subnet);
            }
            if let Some(rt) = o.route_tables.iter_mut().find(|rt| rt.id == rt_id) {
                rt.associations.push(Association {
                    id: association,
                    subnet_id: subnet,
                });
            }
        }
        Op::Disassociate(id) => {
            match client.disassociate_route_table().association_id(id).send().await {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).op(|| format!("removing route table association {id}")),
            }
            for rt in &mut o.route_tables {
                rt.associations.retain(|a| &a.id != id);
            }
        }
        Op::CreateSg => {
            let vpc = vpc_id(o)?;
            let name = d.sg_name();
            let out = client
                .create_security_group()
                .group_name(&name)
                .description("Nomad servers (edgectl): Nomad ports only, no SSH")
                .vpc_id(&vpc)
                .tag_specifications(tags(ctx, ResourceType::SecurityGroup, "servers"))
                .send()
                .await
                .op(|| format!("creating security group {name} in {vpc}"))?;
            o.sgs.push(SecurityGroup {
                id: out
                    .group_id()
                    .context("CreateSecurityGroup returned no id")?
                    .to_string(),
                vpc_id: vpc,
                name,
                rules: Vec::new(),
            });
        }
        Op::DeleteSg(id) => match client.delete_security_group().group_id(id).send().await {
            Ok(_) => o.sgs.retain(|g| &g.id != id),
            Err(e) if gone(&e) => o.sgs.retain(|g| &g.id != id),
            Err(e) if dependency_violation(&e) => {
                return still_used(ctx, "security group", "group-id", id).await
            }
            Err(e) => return Err(e).op(|| format!("deleting security group {id}")),
        },
        Op::Authorize(rule) => {
            let id = o.sg(d).context("the security group must exist first")?.id.clone();
            match client
                .authorize_security_group_ingress()
                .group_id(&id)
                .ip_permissions(rule.permission())
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if code(&e) == Some("InvalidPermission.Duplicate") => {}
                Err(e) => return Err(e).op(|| format!("allowing {} into {id}", rule.key())),
            }
            if let Some(g) = o.sgs.iter_mut().find(|g| g.id == id) {
                g.rules.push(rule.clone());
                g.rules.sort();
            }
        }
        Op::Revoke(rule) => {
            let id = o.sg(d).context("no security group")?.id.clone();
            match client
                .revoke_security_group_ingress()
                .group_id(&id)
                .ip_permissions(rule.permission())
                .send()
                .await
            {
                Ok(_) => {}
                Err(e) if gone(&e) => {}
                Err(e) => return Err(e).op(|| format!("revoking {} from {id}", rule.key())),
            }
            if let Some(g) = o.sgs.iter_mut().find(|g| g.id == id) {
                g.rules.retain(|r| r != rule);
            }
        }
    }
    Ok(Applied::Done)
}

impl Component for Network {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "network"
    }

    /// The network reads no other component's exports.
    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let (azs, vpcs, subnets, igws, mut eips, (nats, dead_nats, dead_eips), route_tables, sgs) = tokio::try_join!(
            observe_azs(ctx),
            observe_vpcs(ctx),
            observe_subnets(ctx),
            observe_igws(ctx),
            observe_eips(ctx),
            observe_nats(ctx),
            observe_route_tables(ctx),
            observe_sgs(ctx),
        )?;
        release_eips_of_dead_nats(&mut eips, &nats, &dead_eips);
        Ok(Observed {
            deployment: ctx.deployment.clone(),
            azs,
            vpcs,
            subnets,
            igws,
            eips,
            nats,
            dead_nats,
            route_tables,
            sgs,
        })
    }

    fn plan(&self, ctx: &Ctx, _inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        plan_up(&Desired::new(&ctx.deployment, &o.azs), o)
    }

    fn exports(&self, o: &Observed, planned: &[Planned<Op>]) -> Exports {
        exports(&Desired::new(&o.deployment, &o.azs), o, planned)
    }

    async fn apply(&self, ctx: &Ctx, _inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let d = Desired::new(&ctx.deployment, &o.azs);
        apply_op(ctx, &d, op, o).await
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        plan_down(o)
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let row = |address: String, state: &str, id: &str| StatusRow {
            address,
            state: state.into(),
            id: id.into(),
        };
        let mut rows = Vec::new();
        match o.vpc() {
            Some(v) => rows.push(row(VPC.into(), &format!("present {}", v.cidr), &v.id)),
            None => rows.push(row(VPC.into(), "absent", "")),
        }
        for s in &o.subnets {
            let tier = if s.cidr.ends_with("/28") {
                "public"
            } else {
                "private"
            };
            rows.push(row(
                format!("network/subnet/{tier}-{}", s.az),
                &format!("present {}", s.cidr),
                &s.id,
            ));
        }
        match o.igw() {
            Some(g) if !g.attached_to.is_empty() => rows.push(row(IGW.into(), "attached", &g.id)),
            Some(g) => rows.push(row(IGW.into(), "detached", &g.id)),
            None => rows.push(row(IGW.into(), "absent", "")),
        }
        match o.eip() {
            Some(e) => rows.push(row(
                EIP.into(),
                &format!("allocated {}", e.public_ip),
                &e.allocation_id,
            )),
            None => rows.push(row(EIP.into(), "absent", "")),
        }
        if o.nats.is_empty() {
            rows.push(row(NAT.into(), "absent", ""));
        }
        for n in &o.nats {
            rows.push(row(NAT.into(), n.state.as_str(), &n.id));
        }
        for rt in &o.route_tables {
            let name = rt
                .name
                .as_deref()
                .and_then(|n| n.rsplit('-').next())
                .unwrap_or("?");
            rows.push(row(
                format!("network/route-table/{name}"),
                &format!("{} subnets", rt.associations.len()),
                &rt.id,
            ));
        }
        if o.sgs.is_empty() {
            rows.push(row(SG.into(), "absent", ""));
        }
        for g in &o.sgs {
            rows.push(row(SG.into(), &format!("{} ingress rules", g.rules.len()), &g.id));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AZS: [&str; 3] = ["eu-west-1a", "eu-west-1b", "eu-west-1c"];

    fn desired() -> Desired {
        Desired::new("default", &AZS.map(String::from))
    }

    /// A complete network, as `up` leaves it.
    fn complete() -> Observed {
        let mut o = Observed {
            deployment: "default".into(),
            azs: AZS.map(String::from).to_vec(),
            vpcs: vec![Vpc {
                id: "vpc-1".into(),
                cidr: VPC_CIDR.into(),
            }],
            igws: vec![Igw {
                id: "igw-1".into(),
                attached_to: vec!["vpc-1".into()],
            }],
            eips: vec![Eip {
                allocation_id: "eipalloc-1".into(),
                public_ip: "203.0.113.7".into(),
                associated: true,
                stale_association: None,
            }],
            nats: vec![Nat {
                id: "nat-1".into(),
                state: NatState::Available,
                vpc_id: "vpc-1".into(),
                subnet_id: "subnet-public-0".into(),
                allocation_id: Some("eipalloc-1".into()),
            }],
            ..Observed::default()
        };
        for tier in [Tier::Public, Tier::Private] {
            let mut associations = Vec::new();
            for (i, az) in AZS.iter().enumerate() {
                let id = format!("subnet-{}-{i}", tier.as_str());
                o.subnets.push(Subnet {
                    id: id.clone(),
                    vpc_id: "vpc-1".into(),
                    az: az.to_string(),
                    cidr: tier.cidr(i),
                });
                associations.push(Association {
                    id: format!("rtbassoc-{}-{i}", tier.as_str()),
                    subnet_id: id,
                });
            }
            o.route_tables.push(RouteTable {
                id: format!("rtb-{}", tier.as_str()),
                vpc_id: "vpc-1".into(),
                name: Some(format!("edgectl-default-{}", tier.as_str())),
                routes: vec![
                    Route {
                        destination: VPC_CIDR.into(),
                        target: Some("local".into()),
                        blackhole: false,
                    },
                    Route {
                        destination: ANYWHERE.into(),
                        target: Some(match tier {
                            Tier::Public => "igw-1".into(),
                            Tier::Private => "nat-1".into(),
                        }),
                        blackhole: false,
                    },
                ],
                associations,
            });
        }
        o.sgs.push(SecurityGroup {
            id: "sg-1".into(),
            vpc_id: "vpc-1".into(),
            name: "edgectl-default-servers".into(),
            rules: server_rules(),
        });
        o
    }

    fn summary(steps: &[Planned<Op>]) -> Vec<String> {
        steps
            .iter()
            .map(|p| format!("{} {}", p.change.action.marker(), p.change.address))
            .collect()
    }

    #[test]
    fn layout_is_deterministic_and_in_the_vpc() {
        assert_eq!(Tier::Public.cidr(0), "10.0.0.0/28");
        assert_eq!(Tier::Public.cidr(2), "10.0.2.0/28");
        assert_eq!(Tier::Private.cidr(0), "10.0.128.0/24");
        assert_eq!(Tier::Private.cidr(2), "10.0.130.0/24");
        let d = Desired::new(
            "x",
            &["b", "d", "a", "c"].map(String::from), // unsorted, four AZs
        );
        assert_eq!(d.azs, ["a", "b", "c"]);
        assert_eq!(Desired::new("x", &["z".to_string()]).azs, ["z"]);
    }

    #[test]
    fn server_rules_follow_the_reference_without_ssh() {
        let keys: Vec<String> = server_rules().iter().map(Rule::key).collect();
        assert_eq!(
            keys,
            [
                "tcp:4646-4648:10.0.0.0/16",
                "tcp:4646-4648:0.0.0.0/0",
                "udp:4648:10.0.0.0/16"
            ]
        );
        assert!(server_rules()
            .iter()
            .all(|r| !(r.from.unwrap() <= 22 && 22 <= r.to.unwrap())));
    }

    #[test]
    fn empty_account_creates_everything_in_dependency_order() {
        let o = Observed {
            azs: AZS.map(String::from).to_vec(),
            ..Observed::default()
        };
        let steps = plan_up(&desired(), &o);
        let s = summary(&steps);
        assert!(steps.iter().all(|p| p.change.action == Action::Create), "{s:?}");
        let pos = |a: &str| {
            s.iter()
                .position(|x| x == a)
                .unwrap_or_else(|| panic!("{a} missing: {s:?}"))
        };
        assert!(pos("+ network/vpc") < pos("+ network/subnet/public-eu-west-1a"));
        assert!(pos("+ network/subnet/private-eu-west-1c") < pos("+ network/internet-gateway"));
        assert!(pos("+ network/internet-gateway") < pos("+ network/route-table/public/route:0.0.0.0/0"));
        assert!(pos("+ network/nat-eip") < pos("+ network/nat-gateway"));
        assert!(pos("+ network/nat-gateway") < pos("+ network/route-table/private/route:0.0.0.0/0"));
        assert!(
            pos("+ network/security-group/servers")
                < pos("+ network/security-group/servers/ingress:udp:4648:10.0.0.0/16")
        );
        // 1 VPC, 6 subnets, IGW, 2 tables with a route and 3 associations
        // each, EIP, NAT, SG with 3 rules.
        assert_eq!(steps.len(), 1 + 6 + 1 + 2 * 5 + 2 + 1 + 3, "{s:?}");
        let ex = exports(&desired(), &o, &steps);
        assert_eq!(ex["vpc_id"], Value::KnownAfterApply);
        assert_eq!(ex["public_subnet_ids"], Value::KnownAfterApply);
        assert_eq!(ex["server_security_group_id"], Value::KnownAfterApply);
        assert_eq!(
            ex["availability_zones"],
            Value::known("eu-west-1a,eu-west-1b,eu-west-1c")
        );
    }

    #[test]
    fn complete_network_plans_nothing_and_exports_ids_in_az_order() {
        let o = complete();
        let steps = plan_up(&desired(), &o);
        assert!(steps.is_empty(), "{:?}", summary(&steps));
        let ex = exports(&desired(), &o, &steps);
        assert_eq!(ex["vpc_id"], Value::known("vpc-1"));
        assert_eq!(
            ex["public_subnet_ids"],
            Value::known("subnet-public-0,subnet-public-1,subnet-public-2")
        );
        assert_eq!(
            ex["private_subnet_ids"],
            Value::known("subnet-private-0,subnet-private-1,subnet-private-2")
        );
        assert_eq!(ex["server_security_group_id"], Value::known("sg-1"));
    }

    #[test]
    fn nat_missing_is_recreated_and_the_route_repointed() {
        let mut o = complete();
        o.nats.clear();
        o.eips[0].associated = false;
        for rt in &mut o.route_tables {
            for r in &mut rt.routes {
                if r.target.as_deref() == Some("nat-1") {
                    r.blackhole = true;
                }
            }
        }
        let s = summary(&plan_up(&desired(), &o));
        assert_eq!(
            s,
            [
                "+ network/nat-gateway",
                "~ network/route-table/private/route:0.0.0.0/0"
            ]
        );
    }

    #[test]
    fn pending_nat_is_waited_for() {
        let mut o = complete();
        o.nats[0].state = NatState::Pending;
        let steps = plan_up(&desired(), &o);
        assert_eq!(summary(&steps), ["~ network/nat-gateway"]);
        assert_eq!(steps[0].op, Op::AwaitNat);
    }

    #[test]
    fn failed_nat_is_replaced() {
        let mut o = complete();
        o.nats[0].state = NatState::Failed;
        o.eips[0].associated = false;
        let s = summary(&plan_up(&desired(), &o));
        assert_eq!(
            s,
            [
                "- network/nat-gateway#nat-1",
                "+ network/nat-gateway",
                "~ network/route-table/private/route:0.0.0.0/0"
            ]
        );
    }

    #[test]
    fn subnet_missing_in_one_az_is_created_and_associated() {
        let mut o = complete();
        o.subnets.retain(|s| s.id != "subnet-private-1");
        for rt in &mut o.route_tables {
            rt.associations.retain(|a| a.subnet_id != "subnet-private-1");
        }
        let steps = plan_up(&desired(), &o);
        assert_eq!(
            summary(&steps),
            [
                "+ network/subnet/private-eu-west-1b",
                "+ network/route-table/private/association:private-eu-west-1b"
            ]
        );
        assert!(steps[0].change.reason.contains("eu-west-1b"));
        let ex = exports(&desired(), &o, &steps);
        assert_eq!(ex["private_subnet_ids"], Value::KnownAfterApply);
        assert_eq!(
            ex["public_subnet_ids"],
            Value::known("subnet-public-0,subnet-public-1,subnet-public-2")
        );
    }

    #[test]
    fn missing_route_is_created() {
        let mut o = complete();
        o.route_tables[0].routes.retain(|r| r.destination != ANYWHERE);
        let steps = plan_up(&desired(), &o);
        assert_eq!(summary(&steps), ["+ network/route-table/public/route:0.0.0.0/0"]);
        assert!(steps[0].change.reason.contains("internet gateway"));
    }

    #[test]
    fn detached_internet_gateway_is_attached() {
        let mut o = complete();
        o.igws[0].attached_to.clear();
        assert_eq!(summary(&plan_up(&desired(), &o)), ["~ network/internet-gateway"]);
    }

    #[test]
    fn security_group_rule_drift() {
        let mut o = complete();
        // One reference rule removed by hand, SSH and an IPv6 rule added.
        o.sgs[0].rules.retain(|r| r.protocol != "udp");
        o.sgs[0].rules.push(Rule::new("tcp", 22, 22, ANYWHERE));
        o.sgs[0].rules.push(Rule {
            protocol: "tcp".into(),
            from: Some(4646),
            to: Some(4646),
            source: Source::Ipv6("::/0".into()),
        });
        let steps = plan_up(&desired(), &o);
        assert_eq!(
            summary(&steps),
            [
                "+ network/security-group/servers/ingress:udp:4648:10.0.0.0/16",
                "- network/security-group/servers/ingress:tcp:22:0.0.0.0/0",
                "- network/security-group/servers/ingress:tcp:4646:::/0",
            ]
        );
        assert!(matches!(&steps[1].op, Op::Revoke(r) if r.from == Some(22)));
    }

    #[test]
    fn half_deleted_network_is_completed_by_up() {
        // `down` stopped after the NAT gateway, its address and the public
        // route table were gone.
        let mut o = complete();
        o.nats.clear();
        o.eips.clear();
        o.route_tables.retain(|rt| rt.id != "rtb-public");
        let s = summary(&plan_up(&desired(), &o));
        assert_eq!(
            s,
            [
                "+ network/route-table/public",
                "+ network/route-table/public/route:0.0.0.0/0",
                "+ network/route-table/public/association:public-eu-west-1a",
                "+ network/route-table/public/association:public-eu-west-1b",
                "+ network/route-table/public/association:public-eu-west-1c",
                "+ network/nat-eip",
                "+ network/nat-gateway",
                "~ network/route-table/private/route:0.0.0.0/0",
            ]
        );
    }

    #[test]
    fn half_deleted_network_is_finished_by_down_in_order() {
        let mut o = complete();
        o.nats[0].state = NatState::Deleting;
        o.route_tables[0].associations.clear();
        let steps = plan_down(&o);
        let ops: Vec<&Op> = steps.iter().map(|p| &p.op).collect();
        let first = |f: fn(&Op) -> bool| ops.iter().position(|op| f(op)).unwrap();
        let last = |f: fn(&Op) -> bool| ops.iter().rposition(|op| f(op)).unwrap();
        assert_eq!(first(|op| matches!(op, Op::DeleteNat(_))), 0);
        assert!(last(|op| matches!(op, Op::DeleteNat(_))) < first(|op| matches!(op, Op::ReleaseEip(_))));
        assert!(last(|op| matches!(op, Op::ReleaseEip(_))) < first(|op| matches!(op, Op::Disassociate(_))));
        assert!(
            last(|op| matches!(op, Op::Disassociate(_))) < first(|op| matches!(op, Op::DeleteRouteTable(_)))
        );
        assert!(
            last(|op| matches!(op, Op::DeleteRouteTable(_))) < first(|op| matches!(op, Op::DeleteSubnet(_)))
        );
        assert!(last(|op| matches!(op, Op::DeleteSubnet(_))) < first(|op| matches!(op, Op::DeleteIgw(_))));
        assert!(first(|op| matches!(op, Op::DeleteIgw(_))) < first(|op| matches!(op, Op::DeleteSg(_))));
        assert_eq!(ops.last(), Some(&&Op::DeleteVpc("vpc-1".into())));
        // 3 associations left (private table), 6 subnets.
        assert_eq!(steps.len(), 1 + 1 + 3 + 2 + 6 + 1 + 1 + 1);
        assert!(plan_down(&Observed::default()).is_empty());
    }

    #[test]
    fn strays_from_an_interrupted_create_are_removed() {
        let mut o = complete();
        // A twin VPC with nothing in it, a spare address, a second SG.
        o.vpcs.push(Vpc {
            id: "vpc-0".into(),
            cidr: VPC_CIDR.into(),
        });
        o.eips.push(Eip {
            allocation_id: "eipalloc-2".into(),
            public_ip: "203.0.113.8".into(),
            associated: false,
            stale_association: None,
        });
        assert_eq!(o.vpc().unwrap().id, "vpc-1", "the VPC with our subnets wins");
        let s = summary(&plan_up(&desired(), &o));
        assert_eq!(s, ["- network/vpc#vpc-0", "- network/nat-eip#eipalloc-2"]);
    }

    #[test]
    fn the_address_of_a_deleted_twin_nat_is_released() {
        let mut o = complete();
        // The twin's address still shows associated with its dead gateway.
        o.eips.push(Eip {
            allocation_id: "eipalloc-2".into(),
            public_ip: "203.0.113.8".into(),
            associated: true,
            stale_association: None,
        });
        let dead = [
            ("eipalloc-2".to_string(), Some("eipassoc-2".to_string())),
            ("eipalloc-1".to_string(), None),
        ];
        let live = o.nats.clone();
        release_eips_of_dead_nats(&mut o.eips, &live, &dead);
        assert!(o.eips[0].associated, "the live gateway's address stays in use");
        assert_eq!(o.eips[1].stale_association.as_deref(), Some("eipassoc-2"));
        let s = summary(&plan_up(&desired(), &o));
        assert_eq!(s, ["- network/nat-eip#eipalloc-2"]);
    }

    #[test]
    fn fewer_azs_mean_fewer_subnets() {
        let d = Desired::new("default", &["eu-west-1a".to_string()]);
        let mut o = complete();
        o.azs = vec!["eu-west-1a".into()];
        let s = summary(&plan_up(&d, &o));
        // The subnets in b and c go, after leaving their route tables.
        assert!(
            s.contains(&"- network/subnet#subnet-private-2".to_string()),
            "{s:?}"
        );
        assert!(
            s.contains(&"- network/route-table/public/association:subnet-public-1".to_string()),
            "{s:?}"
        );
    }
}
