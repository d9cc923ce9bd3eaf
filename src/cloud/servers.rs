//! The Nomad servers: an instance role and profile (cloud auto-join, the
//! TLS files from SSM, SSM managed-instance core), `instance_count` EC2
//! instances spread over the private subnets, and their registration in the
//! target groups that `ingress` exports.
//!
//! Each instance fills a numbered slot (tag `edgectl:slot`). A slot without
//! a pending/running/stopping/stopped instance is filled again; slots at or
//! above `instance_count` are emptied, highest first. RunInstances carries a
//! ClientToken made of (deployment, slot, generation), so a retried launch
//! never makes a twin, and a replacement (a new generation) is a new launch.
//!
//! User data runs only at first boot, so a change to it (a new Nomad
//! version, a new load balancer to advertise) replaces the instances, one
//! at a time: the new server must be running and registered before the old
//! one is deregistered and terminated. The AMI is read from the public
//! Amazon Linux 2023 parameter at launch; a newer AMI alone replaces nothing.

use super::iam_role::{self, Role};
use super::server_config::{self, ServerConfigInputs};
use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::outputs;
use crate::plan::{Action, Change, Value};
use anyhow::{bail, Context, Result};
use aws_sdk_ec2::types::{
    BlockDeviceMapping, EbsBlockDevice, Filter, HttpTokensState, IamInstanceProfileSpecification,
    InstanceMetadataEndpointState, InstanceMetadataOptionsRequest, InstanceStateName, InstanceType,
    ResourceType, Tag as Ec2Tag, TagSpecification, VolumeType,
};
use aws_sdk_elasticloadbalancingv2::types::{TargetDescription, TargetHealthStateEnum};
use serde_json::{json, Value as Json};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub struct Servers;

const ROLE: &str = "iam/server-role";
const ROLE_POLICY: &str = "iam/server-role-policy";
const PROFILE: &str = "iam/server-instance-profile";
const INLINE_POLICY_NAME: &str = "edgectl-server";
const SLOT_TAG: &str = "edgectl:slot";
const GENERATION_TAG: &str = "edgectl:generation";
const USER_DATA_TAG: &str = "edgectl:user-data-sha256";
const ROOT_VOLUME_GIB: i32 = 20;
/// How often to look again while an instance starts or stops.
const POLL: Duration = Duration::from_secs(5);

/// What `network` and `ingress` export for us.
const IN_PRIVATE_SUBNETS: &str = "private_subnet_ids";
const IN_SECURITY_GROUP: &str = "server_security_group_id";

// ---- desired -------------------------------------------------------------

pub fn role_name(deployment: &str) -> String {
    format!("edgectl-{deployment}-server")
}

/// The instance profile has the role's name.
pub fn profile_name(deployment: &str) -> String {
    role_name(deployment)
}

fn instance_address(slot: u32) -> String {
    format!("servers/instance:{slot}")
}

fn targets_address(port: u16) -> String {
    format!("servers/targets:{port}")
}

pub fn partition(region: &str) -> &'static str {
    if region.starts_with("cn-") {
        "aws-cn"
    } else if region.starts_with("us-gov-") {
        "aws-us-gov"
    } else {
        "aws"
    }
}

pub fn ssm_core_policy(region: &str) -> String {
    format!(
        "arn:{}:iam::aws:policy/AmazonSSMManagedInstanceCore",
        partition(region)
    )
}

/// Only EC2 may assume the role.
pub fn trust_policy() -> Json {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "ec2.amazonaws.com"},
            "Action": "sts:AssumeRole"
        }]
    })
}

/// Cloud auto-join (`ec2:DescribeInstances` takes no resource) and the
/// certificates of this deployment, nothing else. `cert_glob` is the SSM
/// name pattern, e.g. `/infrastructure/certificates/*`.
pub fn server_policy(region: &str, account: &str, cert_glob: &str) -> Json {
    let p = partition(region);
    json!({
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "NomadCloudAutoJoin", "Effect": "Allow", "Action": "ec2:DescribeInstances", "Resource": "*"},
            {
                "Sid": "NomadTlsFiles", "Effect": "Allow", "Action": "ssm:GetParameter",
                "Resource": format!("arn:{p}:ssm:{region}:{account}:parameter{cert_glob}")
            }
        ]
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    X86_64,
    Arm64,
}

/// Graviton types carry a `g` after the generation digit of their family
/// (`t4g`, `m6gd`, `c7gn`, `im4gn`); `a1` is the first Graviton.
pub fn arch(instance_type: &str) -> Arch {
    let family = instance_type.split('.').next().unwrap_or_default();
    let after_digit = family
        .find(|c: char| c.is_ascii_digit())
        .map(|i| family[i..].trim_start_matches(|c: char| c.is_ascii_digit()))
        .unwrap_or_default();
    if family == "a1" || after_digit.split('-').next().unwrap_or_default().contains('g') {
        Arch::Arm64
    } else {
        Arch::X86_64
    }
}

pub fn ami_parameter(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-x86_64",
        Arch::Arm64 => "/aws/service/ami-amazon-linux-latest/al2023-ami-kernel-default-arm64",
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stable across retries of one launch, different for every slot and
/// generation (at most 64 ASCII characters, as EC2 wants).
pub fn client_token(deployment: &str, slot: u32, generation: u32) -> String {
    format!(
        "edgectl-{}-s{slot}-g{generation}",
        &sha256_hex(deployment.as_bytes())[..16]
    )
}

fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The user data, when everything it depends on is known.
#[derive(Debug, Clone, PartialEq)]
pub enum UserData {
    Ready {
        text: String,
        sha: String,
    },
    /// The load balancer is yet to be made.
    KnownAfterApply,
    /// The inputs cannot be rendered (the reason).
    Invalid(String),
}

impl UserData {
    fn sha(&self) -> Value {
        match self {
            UserData::Ready { sha, .. } => Value::known(sha),
            _ => Value::KnownAfterApply,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Desired {
    pub deployment: String,
    pub count: u32,
    pub instance_type: String,
    pub private_subnets: Option<Vec<String>>,
    pub security_group: Value,
    pub user_data: UserData,
    pub role_name: String,
    pub profile_name: String,
    pub trust: Json,
    pub policy: Json,
    pub managed: Vec<String>,
    pub discovery: (String, String),
    /// (port, target group ARN), 4646 then 4647; `None` until ingress made them.
    pub target_groups: Option<Vec<(u16, String)>>,
}

fn desired(ctx: &Ctx, inputs: &Exports) -> Desired {
    let get = |k| inputs.get(k).cloned().unwrap_or(Value::KnownAfterApply);
    let list = |v: Value| {
        v.as_known().map(|s| {
            s.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect::<Vec<_>>()
        })
    };
    let c = &ctx.config.cluster;
    let user_data = match get(super::ingress::OUT_ENDPOINT).as_known() {
        None => UserData::KnownAfterApply,
        Some(endpoint) => {
            let certs = &ctx.config.certificates;
            let param = |name: &str| ctx.outputs.path(&outputs::certificate(name));
            let version = c.nomad_version.as_str();
            let inputs = ServerConfigInputs {
                datacenter: c.datacenter_name.clone(),
                nomad_region: c.nomad_region.clone(),
                aws_region: ctx.aws.region.clone(),
                instance_count: u8::try_from(c.instance_count).unwrap_or(u8::MAX),
                discovery_tag_key: c.discovery_tag_key.clone(),
                discovery_tag_value: c.discovery_tag_value.clone(),
                advertise_addr: endpoint.to_string(),
                nomad_version: version.to_string(),
                nomad_sha256: server_config::pinned_sha256(version),
                ssm_ca_cert: param(&certs.ca_cert_secret_name),
                ssm_server_cert: param(&certs.server_cert_secret_name),
                ssm_server_key: param(&certs.server_private_key_secret_name),
            };
            match server_config::render_user_data(&inputs) {
                Ok(text) => UserData::Ready {
                    sha: sha256_hex(text.as_bytes()),
                    text,
                },
                Err(e) => UserData::Invalid(format!("{e:#}")),
            }
        }
    };
    let target_groups = list(get(super::ingress::OUT_TARGET_GROUPS))
        .filter(|arns| arns.len() == super::ingress::PORTS.len())
        .map(|arns| super::ingress::PORTS.iter().copied().zip(arns).collect());
    Desired {
        deployment: ctx.deployment.clone(),
        count: c.instance_count,
        instance_type: c.instance_type.clone(),
        private_subnets: list(get(IN_PRIVATE_SUBNETS)).filter(|s| !s.is_empty()),
        security_group: get(IN_SECURITY_GROUP),
        user_data,
        role_name: role_name(&ctx.deployment),
        profile_name: profile_name(&ctx.deployment),
        trust: trust_policy(),
        policy: server_policy(
            &ctx.aws.region,
            &ctx.aws.account,
            &ctx.outputs.path(&outputs::certificate("*")),
        ),
        managed: vec![ssm_core_policy(&ctx.aws.region)],
        discovery: (c.discovery_tag_key.clone(), c.discovery_tag_value.clone()),
        target_groups,
    }
}

impl Desired {
    fn subnet(&self, slot: u32) -> Option<&str> {
        let s = self.private_subnets.as_ref()?;
        Some(&s[slot as usize % s.len()])
    }
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    pub arn: String,
    /// Names of the roles in it.
    pub roles: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub slot: u32,
    pub generation: u32,
    /// pending, running, stopping, stopped, shutting-down, terminated.
    pub state: String,
    pub instance_type: String,
    pub subnet: Option<String>,
    pub security_groups: BTreeSet<String>,
    pub profile_arn: Option<String>,
    pub user_data_sha: Option<String>,
    pub imds_v2: bool,
    pub az: String,
    pub private_ip: String,
}

impl Instance {
    fn live(&self) -> bool {
        matches!(
            self.state.as_str(),
            "pending" | "running" | "stopping" | "stopped"
        )
    }
}

#[derive(Debug, Default)]
pub struct Observed {
    pub role: Option<Role>,
    pub profile: Option<Profile>,
    /// Every instance with our tags, live or not, by (slot, generation).
    pub instances: Vec<Instance>,
    /// The AMI the public parameter names now, for the configured arch.
    pub ami: Option<String>,
    /// Registered targets per target group ARN (found by name): instance
    /// id → health state. Draining targets are left out.
    pub targets: BTreeMap<String, BTreeMap<String, String>>,
    /// Launched by this run and not yet running, by slot.
    launched: BTreeMap<u32, String>,
    /// Generations this run found taken (a token EC2 still remembers).
    skip: BTreeMap<u32, u32>,
    terminating: BTreeSet<String>,
    /// Whether the cluster's ACL management token is in SSM: it lives as
    /// long as the servers do (the acl component makes it, `down` of the
    /// servers forgets it).
    pub bootstrap_token: bool,
}

impl Observed {
    fn live(&self) -> impl Iterator<Item = &Instance> {
        self.instances
            .iter()
            .filter(|i| i.live() && !self.terminating.contains(&i.id))
    }

    fn next_generation(&self, slot: u32) -> u32 {
        let seen = self
            .instances
            .iter()
            .filter(|i| i.slot == slot)
            .map(|i| i.generation + 1)
            .max()
            .unwrap_or(0);
        seen.max(self.skip.get(&slot).copied().unwrap_or(0))
    }
}

fn ec2(ctx: &Ctx) -> aws_sdk_ec2::Client {
    aws_sdk_ec2::Client::new(&ctx.aws.config)
}

fn iam(ctx: &Ctx) -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&ctx.aws.config)
}

fn elb(ctx: &Ctx) -> aws_sdk_elasticloadbalancingv2::Client {
    aws_sdk_elasticloadbalancingv2::Client::new(&ctx.aws.config)
}

fn to_instance(i: &aws_sdk_ec2::types::Instance) -> Option<Instance> {
    let tag = |k: &str| {
        i.tags()
            .iter()
            .find(|t| t.key.as_deref() == Some(k))
            .and_then(|t| t.value.clone())
    };
    Some(Instance {
        id: i.instance_id.clone()?,
        slot: tag(SLOT_TAG)?.parse().ok()?,
        generation: tag(GENERATION_TAG).and_then(|g| g.parse().ok()).unwrap_or(0),
        state: i
            .state
            .as_ref()
            .and_then(|s| s.name.as_ref())
            .map(|n| n.as_str().to_string())
            .unwrap_or_default(),
        instance_type: i
            .instance_type
            .as_ref()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default(),
        subnet: i.subnet_id.clone(),
        security_groups: i
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id.clone())
            .collect(),
        profile_arn: i.iam_instance_profile.as_ref().and_then(|p| p.arn.clone()),
        user_data_sha: tag(USER_DATA_TAG),
        imds_v2: i
            .metadata_options
            .as_ref()
            .is_some_and(|m| m.http_tokens == Some(HttpTokensState::Required)),
        az: i
            .placement
            .as_ref()
            .and_then(|p| p.availability_zone.clone())
            .unwrap_or_default(),
        private_ip: i.private_ip_address.clone().unwrap_or_default(),
    })
}

async fn describe_instances(ctx: &Ctx, ids: Option<Vec<String>>) -> Result<Vec<Instance>> {
    let client = ec2(ctx);
    let mut req = client
        .describe_instances()
        .filters(
            Filter::builder()
                .name(format!("tag:{TAG_KEY}"))
                .values(&ctx.deployment)
                .build(),
        )
        .filters(Filter::builder().name("tag-key").values(SLOT_TAG).build());
    if ids.is_some() {
        req = req.set_instance_ids(ids);
    }
    let mut found = Vec::new();
    let mut pages = req.into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing the server instances in {}", ctx.aws.region))?;
        for r in page.reservations.unwrap_or_default() {
            found.extend(r.instances().iter().filter_map(to_instance));
        }
    }
    found.sort_by(|a, b| (a.slot, a.generation, &a.id).cmp(&(b.slot, b.generation, &b.id)));
    Ok(found)
}

async fn observe_role(ctx: &Ctx) -> Result<Option<Role>> {
    iam_role::observe(ctx, &role_name(&ctx.deployment), INLINE_POLICY_NAME).await
}

async fn observe_profile(ctx: &Ctx) -> Result<Option<Profile>> {
    let name = profile_name(&ctx.deployment);
    match iam(ctx)
        .get_instance_profile()
        .instance_profile_name(&name)
        .send()
        .await
    {
        Ok(out) => {
            let p = out
                .instance_profile
                .context("GetInstanceProfile returned no profile")?;
            Ok(Some(Profile {
                arn: p.arn,
                roles: p.roles.into_iter().map(|r| r.role_name).collect(),
            }))
        }
        Err(e) if code(&e) == Some("NoSuchEntity") => Ok(None),
        Err(e) => Err(e).op(|| format!("reading instance profile {name}")),
    }
}

/// The AMI id the public Amazon Linux 2023 parameter names now.
async fn observe_ami(ctx: &Ctx) -> Result<Option<String>> {
    let name = ami_parameter(arch(&ctx.config.cluster.instance_type));
    let ssm = aws_sdk_ssm::Client::new(&ctx.aws.config);
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => Ok(out.parameter.and_then(|p| p.value)),
        Err(e) if code(&e) == Some("ParameterNotFound") => Ok(None),
        Err(e) => Err(e).op(|| format!("reading {name} from SSM in {}", ctx.aws.region)),
    }
}

/// The registered targets of our target groups, found by their fixed names
/// (observe sees no exports; plan matches the ARNs with ingress's).
async fn observe_targets(ctx: &Ctx) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let client = elb(ctx);
    let names: BTreeSet<String> = super::ingress::PORTS
        .iter()
        .map(|p| super::ingress::target_group_name(&ctx.deployment, *p))
        .collect();
    let mut arns = Vec::new();
    let mut pages = client.describe_target_groups().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing target groups in {}", ctx.aws.region))?;
        for t in page.target_groups.unwrap_or_default() {
            if t.target_group_name.as_ref().is_some_and(|n| names.contains(n)) {
                arns.extend(t.target_group_arn);
            }
        }
    }
    let mut out = BTreeMap::new();
    for arn in arns {
        let health = client
            .describe_target_health()
            .target_group_arn(&arn)
            .send()
            .await
            .op(|| format!("reading the targets of {arn}"))?;
        let targets = health
            .target_health_descriptions
            .unwrap_or_default()
            .into_iter()
            .filter_map(|t| {
                let state = t
                    .target_health
                    .and_then(|h| h.state)
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_default();
                Some((t.target?.id?, state))
            })
            .filter(|(_, state)| state != TargetHealthStateEnum::Draining.as_str())
            .collect();
        out.insert(arn, targets);
    }
    Ok(out)
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    CreateRole,
    SetTrustPolicy,
    PutRolePolicy,
    AttachPolicy(String),
    DetachPolicy(String),
    DeleteRole,
    /// Create the profile (if missing) and put exactly our role in it.
    PutProfile,
    DeleteProfile,
    /// Launch an instance for this slot and wait until it runs.
    Launch(u32),
    /// Launch the slot's next generation, wait until it runs, move the
    /// targets over, then terminate `old`.
    Replace {
        slot: u32,
        old: String,
    },
    Start(String),
    SetSecurityGroup(String),
    RequireImdsV2(String),
    /// Terminate; with `wait`, also wait until every instance this run
    /// terminated is gone (before `network` deletes their subnets).
    Terminate {
        id: String,
        wait: bool,
    },
    /// Register the running servers in the target group of this port and
    /// deregister everything else.
    SyncTargets(u16),
    /// The servers are gone, and with them the ACL state the token opened.
    ForgetBootstrapToken,
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn known(v: impl Into<String>) -> Value {
    Value::known(v)
}

fn plan_iam(d: &Desired, o: &Observed, steps: &mut Vec<Planned<Op>>) {
    let want = iam_role::Want {
        address: ROLE,
        policy_address: ROLE_POLICY,
        name: &d.role_name,
        trusts: known("ec2.amazonaws.com"),
        show_trust_on_update: false,
        trust: Some(&d.trust),
        policy: Some(&d.policy),
        managed: &d.managed,
        attach_reason: "missing",
        detach_reason: "not ours to grant",
    };
    for (change, step) in iam_role::plan(&want, o.role.as_ref()) {
        let op = match step {
            iam_role::Step::Create => Op::CreateRole,
            iam_role::Step::SetTrust => Op::SetTrustPolicy,
            iam_role::Step::PutPolicy => Op::PutRolePolicy,
            iam_role::Step::DeletePolicy => unreachable!("the servers' inline policy is always wanted"),
            iam_role::Step::Attach(arn) => Op::AttachPolicy(arn),
            iam_role::Step::Detach(arn) => Op::DetachPolicy(arn),
        };
        steps.push(planned(change, op));
    }
    match &o.profile {
        None => steps.push(planned(
            Change::new(PROFILE, Action::Create, "missing")
                .field("name", None, known(&d.profile_name))
                .field("role", None, known(&d.role_name)),
            Op::PutProfile,
        )),
        Some(p) if p.roles != [d.role_name.clone()] => steps.push(planned(
            Change::new(PROFILE, Action::Update, "holds other roles").field(
                "role",
                Some(known(p.roles.join(","))),
                known(&d.role_name),
            ),
            Op::PutProfile,
        )),
        Some(_) => {}
    }
}

/// Why `i` cannot serve as slot `slot`'s server any more (empty: it can).
/// Each of these is fixed only by a new instance.
fn replace_reasons(d: &Desired, i: &Instance, slot: u32) -> Vec<String> {
    let mut why = Vec::new();
    match (&d.user_data, &i.user_data_sha) {
        (UserData::Ready { sha, .. }, Some(have)) if sha == have => {}
        (UserData::Ready { .. }, _) => why.push("user data changed".to_string()),
        (UserData::KnownAfterApply, _) => why.push("user data changes: the load balancer is new".into()),
        (UserData::Invalid(_), _) => {}
    }
    if i.instance_type != d.instance_type {
        why.push(format!("instance type {} → {}", i.instance_type, d.instance_type));
    }
    match (d.subnet(slot), &i.subnet) {
        (Some(want), Some(have)) if want == have => {}
        (Some(want), _) => why.push(format!("belongs in subnet {want}")),
        (None, _) => why.push("the private subnets are new".into()),
    }
    let profile_suffix = format!(":instance-profile/{}", d.profile_name);
    if !i
        .profile_arn
        .as_ref()
        .is_some_and(|a| a.ends_with(&profile_suffix))
    {
        why.push("not running with the server instance profile".into());
    }
    why
}

fn launch_fields(d: &Desired, o: &Observed, slot: u32, change: Change) -> Change {
    change
        .field("instance_type", None, known(&d.instance_type))
        .field(
            "subnet",
            None,
            d.subnet(slot).map(known).unwrap_or(Value::KnownAfterApply),
        )
        .field(
            "ami",
            None,
            o.ami.as_deref().map(known).unwrap_or(Value::KnownAfterApply),
        )
        .field("user_data_sha256", None, d.user_data.sha())
        .field("instance_id", None, Value::KnownAfterApply)
}

/// The pure plan: what makes AWS match `d`, given `o`.
pub fn plan(d: &Desired, o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    plan_iam(d, o, &mut steps);
    let invalid = match &d.user_data {
        UserData::Invalid(e) => Some(format!(" (cannot render user data: {e})")),
        _ => None,
    };
    let mut updates = Vec::new();
    let mut replaces = Vec::new();
    let mut removals = Vec::new();
    // Instances that stay as they are and serve: the known targets.
    let mut keep = BTreeSet::new();
    let mut changed = false;
    for slot in 0..d.count {
        let live: Vec<&Instance> = o
            .instances
            .iter()
            .filter(|i| i.slot == slot && i.live())
            .collect();
        let Some(keeper) = live
            .iter()
            .rev()
            .find(|i| replace_reasons(d, i, slot).is_empty())
            .or(live.last())
        else {
            let gone = o.instances.iter().rev().find(|i| i.slot == slot);
            let why = match gone {
                Some(g) => format!("{} is {}", g.id, g.state),
                None => "missing".into(),
            };
            changed = true;
            steps.push(planned(
                launch_fields(
                    d,
                    o,
                    slot,
                    Change::new(
                        instance_address(slot),
                        Action::Create,
                        format!("{why}{}", invalid.clone().unwrap_or_default()),
                    ),
                ),
                Op::Launch(slot),
            ));
            continue;
        };
        for other in live.iter().filter(|i| i.id != keeper.id) {
            changed = true;
            removals.push(planned(
                Change::new(
                    format!("{}#{}", instance_address(slot), other.id),
                    Action::Delete,
                    "a second instance in the same slot",
                ),
                Op::Terminate {
                    id: other.id.clone(),
                    wait: false,
                },
            ));
        }
        let why = replace_reasons(d, keeper, slot);
        if !why.is_empty() {
            changed = true;
            replaces.push(planned(
                launch_fields(
                    d,
                    o,
                    slot,
                    Change::new(
                        instance_address(slot),
                        Action::Replace,
                        format!(
                            "{}; one at a time: the new server runs and is registered before {} stops{}",
                            why.join(", "),
                            keeper.id,
                            invalid.clone().unwrap_or_default()
                        ),
                    ),
                ),
                Op::Replace {
                    slot,
                    old: keeper.id.clone(),
                },
            ));
            continue;
        }
        keep.insert(keeper.id.clone());
        if let Some(sg) = d.security_group.as_known() {
            if keeper.security_groups != BTreeSet::from([sg.to_string()]) {
                updates.push(planned(
                    Change::new(instance_address(slot), Action::Update, "security groups differ").field(
                        "security_groups",
                        Some(known(
                            keeper
                                .security_groups
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(","),
                        )),
                        known(sg),
                    ),
                    Op::SetSecurityGroup(keeper.id.clone()),
                ));
            }
        }
        if !keeper.imds_v2 {
            updates.push(planned(
                Change::new(instance_address(slot), Action::Update, "IMDSv2 not required").field(
                    "http_tokens",
                    Some(known("optional")),
                    known("required"),
                ),
                Op::RequireImdsV2(keeper.id.clone()),
            ));
        }
        if matches!(keeper.state.as_str(), "stopped" | "stopping") {
            updates.push(planned(
                Change::new(
                    instance_address(slot),
                    Action::Update,
                    format!("{} is {}", keeper.id, keeper.state),
                )
                .field("state", Some(known(&keeper.state)), known("running")),
                Op::Start(keeper.id.clone()),
            ));
        }
    }
    let mut extra: Vec<&Instance> = o
        .instances
        .iter()
        .filter(|i| i.slot >= d.count && i.live())
        .collect();
    extra.sort_by_key(|i| std::cmp::Reverse((i.slot, i.generation)));
    for i in extra {
        changed = true;
        removals.push(planned(
            Change::new(
                instance_address(i.slot),
                Action::Delete,
                format!("instance_count is {}", d.count),
            )
            .field("instance_id", Some(known(&i.id)), known("(terminated)")),
            Op::Terminate {
                id: i.id.clone(),
                wait: false,
            },
        ));
    }
    steps.append(&mut updates);
    steps.append(&mut replaces);
    steps.append(&mut removals);

    match &d.target_groups {
        None if d.count > 0 => {
            for port in super::ingress::PORTS {
                steps.push(planned(
                    Change::new(targets_address(port), Action::Update, "the target group is new").field(
                        "targets",
                        None,
                        Value::KnownAfterApply,
                    ),
                    Op::SyncTargets(port),
                ));
            }
        }
        None => {}
        Some(tgs) => {
            for (port, arn) in tgs {
                let registered: BTreeSet<&String> =
                    o.targets.get(arn).map(|t| t.keys().collect()).unwrap_or_default();
                let wanted: BTreeSet<&String> = keep.iter().collect();
                if !changed && registered == wanted {
                    continue;
                }
                let show =
                    |s: &BTreeSet<&String>| known(s.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(","));
                let new = if changed {
                    Value::KnownAfterApply
                } else {
                    show(&wanted)
                };
                steps.push(planned(
                    Change::new(
                        targets_address(*port),
                        Action::Update,
                        "registered servers differ",
                    )
                    .field("targets", Some(show(&registered)), new),
                    Op::SyncTargets(*port),
                ));
            }
        }
    }
    steps
}

pub fn plan_down(o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let live: Vec<&Instance> = o.instances.iter().filter(|i| i.live()).collect();
    for (n, i) in live.iter().enumerate() {
        steps.push(planned(
            Change::new(
                format!("{}#{}", instance_address(i.slot), i.id),
                Action::Delete,
                "cloud down",
            ),
            Op::Terminate {
                id: i.id.clone(),
                wait: n + 1 == live.len(),
            },
        ));
    }
    if o.bootstrap_token {
        steps.push(planned(
            Change::new(
                format!("ssm:{}", crate::outputs::NOMAD_BOOTSTRAP_TOKEN),
                Action::Delete,
                "the servers are gone, and the ACL state it opened with them",
            ),
            Op::ForgetBootstrapToken,
        ));
    }
    if let Some(p) = &o.profile {
        steps.push(planned(
            Change::new(PROFILE, Action::Delete, "cloud down").field(
                "arn",
                Some(known(&p.arn)),
                known("(deleted)"),
            ),
            Op::DeleteProfile,
        ));
    }
    if let Some(r) = &o.role {
        steps.push(planned(
            Change::new(ROLE, Action::Delete, "cloud down").field(
                "arn",
                Some(known(&r.arn)),
                known("(deleted)"),
            ),
            Op::DeleteRole,
        ));
    }
    steps
}

// ---- apply ---------------------------------------------------------------

fn ignore_missing<T, E, R>(
    result: std::result::Result<T, aws_sdk_ssm::error::SdkError<E, R>>,
) -> std::result::Result<Option<T>, aws_sdk_ssm::error::SdkError<E, R>>
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(code(&e), Some("NoSuchEntity" | "InvalidInstanceID.NotFound")) => Ok(None),
        Err(e) => Err(e),
    }
}

fn ec2_tag(k: &str, v: &str) -> Ec2Tag {
    Ec2Tag::builder().key(k).value(v).build()
}

/// The root device of the AMI (AL2023: `/dev/xvda`).
async fn root_device(ctx: &Ctx, ami: &str) -> Result<String> {
    let out = ec2(ctx)
        .describe_images()
        .image_ids(ami)
        .send()
        .await
        .op(|| format!("reading AMI {ami}"))?;
    out.images
        .unwrap_or_default()
        .into_iter()
        .find_map(|i| i.root_device_name)
        .with_context(|| {
            format!(
                "AMI {ami} has no root device (is it available in {}?)",
                ctx.aws.region
            )
        })
}

/// Launches slot `slot`'s next generation (once per run), then reports
/// whether it runs yet.
async fn launch(ctx: &Ctx, d: &Desired, o: &mut Observed, slot: u32) -> Result<Option<Applied>> {
    if !o.launched.contains_key(&slot) {
        let text = match &d.user_data {
            UserData::Ready { text, .. } => text,
            UserData::KnownAfterApply => {
                bail!("the load balancer's DNS name is not known: ingress must run first")
            }
            UserData::Invalid(e) => bail!("cannot render the server user data: {e}"),
        };
        let subnet = d
            .subnet(slot)
            .context("the private subnets are not known: the network component must run first")?;
        let sg = d
            .security_group
            .as_known()
            .context("the server security group is not known: the network component must run first")?;
        let ami = o.ami.clone().with_context(|| {
            format!(
                "no AMI in {} (SSM {} is missing)",
                ctx.aws.region,
                ami_parameter(arch(&d.instance_type))
            )
        })?;
        let device = root_device(ctx, &ami).await?;
        let name = format!("edgectl-{}-server-{slot}", d.deployment);
        let sha = sha256_hex(text.as_bytes());
        let generation = o.next_generation(slot);
        let tags = vec![
            ec2_tag(TAG_KEY, &d.deployment),
            ec2_tag("Name", &name),
            ec2_tag(&d.discovery.0, &d.discovery.1),
            ec2_tag(SLOT_TAG, &slot.to_string()),
            ec2_tag(GENERATION_TAG, &generation.to_string()),
            ec2_tag(USER_DATA_TAG, &sha),
        ];
        let result = ec2(ctx)
            .run_instances()
            .image_id(&ami)
            .instance_type(InstanceType::from(d.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .subnet_id(subnet)
            .security_group_ids(sg)
            .user_data(base64(text.as_bytes()))
            .iam_instance_profile(
                IamInstanceProfileSpecification::builder()
                    .name(&d.profile_name)
                    .build(),
            )
            .metadata_options(
                InstanceMetadataOptionsRequest::builder()
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .build(),
            )
            .block_device_mappings(
                BlockDeviceMapping::builder()
                    .device_name(device)
                    .ebs(
                        EbsBlockDevice::builder()
                            .volume_size(ROOT_VOLUME_GIB)
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .set_tags(Some(tags))
                    .build(),
            )
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Volume)
                    .tags(ec2_tag(TAG_KEY, &d.deployment))
                    .tags(ec2_tag("Name", &name))
                    .build(),
            )
            .client_token(client_token(&d.deployment, slot, generation))
            .send()
            .await;
        let out = match result {
            Ok(out) => out,
            // A new instance profile takes a while to reach EC2.
            Err(e)
                if code(&e) == Some("InvalidParameterValue")
                    && crate::aws::describe(&e).contains("iamInstanceProfile") =>
            {
                return Ok(Some(Applied::Pending {
                    what: format!("waiting for instance profile {} to reach EC2", d.profile_name),
                    retry_after: POLL,
                }));
            }
            // The token was used for other parameters (EC2 remembers tokens
            // of instances long gone): take the next generation.
            Err(e) if code(&e) == Some("IdempotentParameterMismatch") => {
                o.skip.insert(slot, generation + 1);
                return Ok(Some(Applied::Pending {
                    what: format!("generation {generation} of slot {slot} was taken"),
                    retry_after: Duration::ZERO,
                }));
            }
            Err(e) => return Err(e).op(|| format!("launching {name} in {subnet}")),
        };
        let instance = out
            .instances()
            .iter()
            .find_map(to_instance)
            .context("RunInstances returned no instance")?;
        if !instance.live() {
            // Same token, an instance from long ago: move on.
            o.skip.insert(slot, generation + 1);
            return Ok(Some(Applied::Pending {
                what: format!("generation {generation} of slot {slot} was taken"),
                retry_after: Duration::ZERO,
            }));
        }
        o.launched.insert(slot, instance.id.clone());
        o.instances.retain(|i| i.id != instance.id);
        o.instances.push(instance);
    }
    let id = o.launched[&slot].clone();
    let now = describe_instances(ctx, Some(vec![id.clone()])).await?;
    let Some(now) = now.into_iter().next() else {
        // Not visible yet (EC2 is eventually consistent).
        return Ok(Some(Applied::Pending {
            what: format!("waiting for {id} to appear"),
            retry_after: POLL,
        }));
    };
    let state = now.state.clone();
    if let Some(i) = o.instances.iter_mut().find(|i| i.id == id) {
        *i = now;
    }
    match state.as_str() {
        "running" => {
            o.launched.remove(&slot);
            Ok(None)
        }
        "pending" => Ok(Some(Applied::Pending {
            what: format!("waiting for {id} to run"),
            retry_after: POLL,
        })),
        other => bail!("{id} is {other} right after launch; see its console output in EC2"),
    }
}

async fn register(ctx: &Ctx, tg: &str, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    elb(ctx)
        .register_targets()
        .target_group_arn(tg)
        .set_targets(Some(
            ids.iter()
                .map(|id| TargetDescription::builder().id(id).build())
                .collect(),
        ))
        .send()
        .await
        .op(|| format!("registering {} in {tg}", ids.join(", ")))?;
    Ok(())
}

async fn deregister(ctx: &Ctx, tg: &str, ids: &[String]) -> Result<()> {
    if ids.is_empty() {
        return Ok(());
    }
    match elb(ctx)
        .deregister_targets()
        .target_group_arn(tg)
        .set_targets(Some(
            ids.iter()
                .map(|id| TargetDescription::builder().id(id).build())
                .collect(),
        ))
        .send()
        .await
    {
        Ok(_) => Ok(()),
        // Already gone from the group (terminated instances leave it).
        Err(e) if code(&e) == Some("InvalidTarget") => Ok(()),
        Err(e) => Err(e).op(|| format!("deregistering {} from {tg}", ids.join(", "))),
    }
}

async fn terminate(ctx: &Ctx, o: &mut Observed, id: &str) -> Result<()> {
    if o.terminating.contains(id) {
        return Ok(());
    }
    ignore_missing(ec2(ctx).terminate_instances().instance_ids(id).send().await)
        .op(|| format!("terminating {id}"))?;
    o.terminating.insert(id.to_string());
    Ok(())
}

async fn delete_role(ctx: &Ctx, o: &mut Observed) -> Result<()> {
    let client = iam(ctx);
    let name = role_name(&ctx.deployment);
    // IAM refuses to delete a role that still has policies.
    if let Some(r) = o.role.clone() {
        if r.inline.is_some() {
            ignore_missing(
                client
                    .delete_role_policy()
                    .role_name(&name)
                    .policy_name(INLINE_POLICY_NAME)
                    .send()
                    .await,
            )
            .op(|| format!("deleting policy {INLINE_POLICY_NAME} of {name}"))?;
        }
        for arn in &r.attached {
            ignore_missing(
                client
                    .detach_role_policy()
                    .role_name(&name)
                    .policy_arn(arn)
                    .send()
                    .await,
            )
            .op(|| format!("detaching {arn} from {name}"))?;
        }
    }
    ignore_missing(client.delete_role().role_name(&name).send().await)
        .op(|| format!("deleting IAM role {name}"))?;
    o.role = None;
    Ok(())
}

impl Component for Servers {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "servers"
    }

    /// Subnets and security group, the load balancer (advertised in the
    /// user data) and its target groups; and the CA, whose certificates
    /// the instances read from SSM when they first boot.
    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&["pca", "network", "ingress"])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let (role, profile, instances, ami, targets, token) = tokio::try_join!(
            observe_role(ctx),
            observe_profile(ctx),
            describe_instances(ctx, None),
            observe_ami(ctx),
            observe_targets(ctx),
            ctx.outputs.read(&[crate::outputs::NOMAD_BOOTSTRAP_TOKEN]),
        )?;
        Ok(Observed {
            role,
            profile,
            instances,
            ami,
            targets,
            bootstrap_token: !token.is_empty(),
            ..Observed::default()
        })
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        plan(&desired(ctx, inputs), o)
    }

    fn exports(&self, _o: &Observed, _planned: &[Planned<Op>]) -> Exports {
        Exports::new()
    }

    async fn apply(&self, ctx: &Ctx, inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let d = desired(ctx, inputs);
        let client = iam(ctx);
        let name = &d.role_name;
        match op {
            Op::CreateRole => {
                let out = client
                    .create_role()
                    .role_name(name)
                    .description("Nomad servers of edgectl: cloud auto-join and their TLS files")
                    .assume_role_policy_document(d.trust.to_string())
                    .tags(
                        aws_sdk_iam::types::Tag::builder()
                            .key(TAG_KEY)
                            .value(&ctx.deployment)
                            .build()?,
                    )
                    .send()
                    .await
                    .op(|| format!("creating IAM role {name}"))?;
                o.role = Some(Role {
                    arn: out.role.context("CreateRole returned no role")?.arn,
                    trust: d.trust.clone(),
                    inline: None,
                    attached: Vec::new(),
                });
            }
            Op::SetTrustPolicy => {
                client
                    .update_assume_role_policy()
                    .role_name(name)
                    .policy_document(d.trust.to_string())
                    .send()
                    .await
                    .op(|| format!("updating the trust policy of {name}"))?;
                o.role.as_mut().context("no role")?.trust = d.trust.clone();
            }
            Op::PutRolePolicy => {
                client
                    .put_role_policy()
                    .role_name(name)
                    .policy_name(INLINE_POLICY_NAME)
                    .policy_document(d.policy.to_string())
                    .send()
                    .await
                    .op(|| format!("writing policy {INLINE_POLICY_NAME} of {name}"))?;
                o.role.as_mut().context("no role")?.inline = Some(d.policy.clone());
            }
            Op::AttachPolicy(arn) => {
                client
                    .attach_role_policy()
                    .role_name(name)
                    .policy_arn(arn)
                    .send()
                    .await
                    .op(|| format!("attaching {arn} to {name}"))?;
                o.role.as_mut().context("no role")?.attached.push(arn.clone());
            }
            Op::DetachPolicy(arn) => {
                ignore_missing(
                    client
                        .detach_role_policy()
                        .role_name(name)
                        .policy_arn(arn)
                        .send()
                        .await,
                )
                .op(|| format!("detaching {arn} from {name}"))?;
                if let Some(r) = o.role.as_mut() {
                    r.attached.retain(|a| a != arn);
                }
            }
            Op::DeleteRole => delete_role(ctx, o).await?,
            Op::PutProfile => {
                let profile = &d.profile_name;
                if o.profile.is_none() {
                    let out = client
                        .create_instance_profile()
                        .instance_profile_name(profile)
                        .tags(
                            aws_sdk_iam::types::Tag::builder()
                                .key(TAG_KEY)
                                .value(&ctx.deployment)
                                .build()?,
                        )
                        .send()
                        .await
                        .op(|| format!("creating instance profile {profile}"))?;
                    o.profile = Some(Profile {
                        arn: out
                            .instance_profile
                            .context("CreateInstanceProfile returned no profile")?
                            .arn,
                        roles: Vec::new(),
                    });
                }
                let p = o.profile.as_mut().expect("set above");
                for other in p.roles.clone().iter().filter(|r| *r != name) {
                    ignore_missing(
                        client
                            .remove_role_from_instance_profile()
                            .instance_profile_name(profile)
                            .role_name(other)
                            .send()
                            .await,
                    )
                    .op(|| format!("removing {other} from instance profile {profile}"))?;
                    p.roles.retain(|r| r != other);
                }
                if !p.roles.contains(name) {
                    client
                        .add_role_to_instance_profile()
                        .instance_profile_name(profile)
                        .role_name(name)
                        .send()
                        .await
                        .op(|| format!("adding {name} to instance profile {profile}"))?;
                    p.roles.push(name.clone());
                }
            }
            Op::DeleteProfile => {
                let profile = &d.profile_name;
                for role in o.profile.as_ref().map(|p| p.roles.clone()).unwrap_or_default() {
                    ignore_missing(
                        client
                            .remove_role_from_instance_profile()
                            .instance_profile_name(profile)
                            .role_name(&role)
                            .send()
                            .await,
                    )
                    .op(|| format!("removing {role} from instance profile {profile}"))?;
                }
                ignore_missing(
                    client
                        .delete_instance_profile()
                        .instance_profile_name(profile)
                        .send()
                        .await,
                )
                .op(|| format!("deleting instance profile {profile}"))?;
                o.profile = None;
            }
            Op::Launch(slot) => {
                if let Some(pending) = launch(ctx, &d, o, *slot).await? {
                    return Ok(pending);
                }
            }
            Op::Replace { slot, old } => {
                if !o.terminating.contains(old) {
                    if let Some(pending) = launch(ctx, &d, o, *slot).await? {
                        return Ok(pending);
                    }
                    let new = o
                        .live()
                        .filter(|i| i.slot == *slot && &i.id != old)
                        .max_by_key(|i| i.generation)
                        .map(|i| i.id.clone())
                        .context("the replacement instance vanished")?;
                    for (_, tg) in d.target_groups.iter().flatten() {
                        register(ctx, tg, std::slice::from_ref(&new)).await?;
                        o.targets
                            .entry(tg.clone())
                            .or_default()
                            .insert(new.clone(), "initial".into());
                        if o.targets.get(tg).is_some_and(|t| t.contains_key(old)) {
                            deregister(ctx, tg, std::slice::from_ref(old)).await?;
                            o.targets.entry(tg.clone()).or_default().remove(old);
                        }
                    }
                    terminate(ctx, o, old).await?;
                }
            }
            Op::Start(id) => {
                // Started once it is stopped, then waited for, so that the
                // targets step of this run registers it.
                let now = describe_instances(ctx, Some(vec![id.clone()]))
                    .await?
                    .into_iter()
                    .next()
                    .with_context(|| format!("{id} vanished"))?;
                let state = now.state.clone();
                if let Some(i) = o.instances.iter_mut().find(|i| &i.id == id) {
                    *i = now;
                }
                match state.as_str() {
                    "running" => {}
                    "stopped" => {
                        ec2(ctx)
                            .start_instances()
                            .instance_ids(id)
                            .send()
                            .await
                            .op(|| format!("starting {id}"))?;
                        return Ok(Applied::Pending {
                            what: format!("waiting for {id} to run"),
                            retry_after: POLL,
                        });
                    }
                    "stopping" | "pending" => {
                        return Ok(Applied::Pending {
                            what: format!("waiting for {id} ({state})"),
                            retry_after: POLL,
                        })
                    }
                    other => bail!("{id} is {other}; the next `up` replaces it"),
                }
            }
            Op::SetSecurityGroup(id) => {
                let sg = d
                    .security_group
                    .as_known()
                    .context("the server security group is not known")?;
                ec2(ctx)
                    .modify_instance_attribute()
                    .instance_id(id)
                    .groups(sg)
                    .send()
                    .await
                    .op(|| format!("setting the security group of {id}"))?;
                if let Some(i) = o.instances.iter_mut().find(|i| &i.id == id) {
                    i.security_groups = BTreeSet::from([sg.to_string()]);
                }
            }
            Op::RequireImdsV2(id) => {
                ec2(ctx)
                    .modify_instance_metadata_options()
                    .instance_id(id)
                    .http_tokens(HttpTokensState::Required)
                    .http_endpoint(InstanceMetadataEndpointState::Enabled)
                    .send()
                    .await
                    .op(|| format!("requiring IMDSv2 on {id}"))?;
                if let Some(i) = o.instances.iter_mut().find(|i| &i.id == id) {
                    i.imds_v2 = true;
                }
            }
            Op::Terminate { id, wait } => {
                terminate(ctx, o, id).await?;
                if *wait {
                    let ids: Vec<String> = o.terminating.iter().cloned().collect();
                    let now = describe_instances(ctx, Some(ids)).await?;
                    let left: Vec<&str> = now
                        .iter()
                        .filter(|i| i.state != InstanceStateName::Terminated.as_str())
                        .map(|i| i.id.as_str())
                        .collect();
                    if !left.is_empty() {
                        return Ok(Applied::Pending {
                            what: format!("waiting for {} to terminate", left.join(", ")),
                            retry_after: POLL,
                        });
                    }
                }
            }
            Op::ForgetBootstrapToken => {
                ctx.outputs
                    .delete(&[crate::outputs::NOMAD_BOOTSTRAP_TOKEN])
                    .await?;
                o.bootstrap_token = false;
            }
            Op::SyncTargets(port) => {
                let tg = d
                    .target_groups
                    .iter()
                    .flatten()
                    .find(|(p, _)| p == port)
                    .map(|(_, arn)| arn.clone())
                    .context("the target groups are not known: ingress must run first")?;
                let wanted: BTreeSet<String> = o
                    .live()
                    .filter(|i| i.slot < d.count && i.state == "running")
                    .map(|i| i.id.clone())
                    .collect();
                let have: BTreeSet<String> = o
                    .targets
                    .get(&tg)
                    .map(|t| t.keys().cloned().collect())
                    .unwrap_or_default();
                let add: Vec<String> = wanted.difference(&have).cloned().collect();
                let remove: Vec<String> = have.difference(&wanted).cloned().collect();
                register(ctx, &tg, &add).await?;
                deregister(ctx, &tg, &remove).await?;
                let t = o.targets.entry(tg).or_default();
                t.retain(|id, _| !remove.contains(id));
                for id in add {
                    t.insert(id, "initial".into());
                }
            }
        }
        Ok(Applied::Done)
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        plan_down(o)
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let present = |b: bool| if b { "present" } else { "absent" }.to_string();
        let mut rows = vec![
            StatusRow {
                address: ROLE.into(),
                state: present(o.role.is_some()),
                id: o.role.as_ref().map(|r| r.arn.clone()).unwrap_or_default(),
            },
            StatusRow {
                address: PROFILE.into(),
                state: present(o.profile.is_some()),
                id: o.profile.as_ref().map(|p| p.arn.clone()).unwrap_or_default(),
            },
        ];
        for i in o.instances.iter().filter(|i| i.live()) {
            rows.push(StatusRow {
                address: instance_address(i.slot),
                state: i.state.clone(),
                id: format!("{} {} {} {}", i.id, i.instance_type, i.az, i.private_ip),
            });
        }
        for (arn, targets) in &o.targets {
            let port = super::ingress::PORTS
                .iter()
                .find(|p| arn.contains(&format!("-{p}/")))
                .map(|p| p.to_string())
                .unwrap_or_else(|| arn.clone());
            let mut by_state: BTreeMap<&str, usize> = BTreeMap::new();
            for state in targets.values() {
                *by_state.entry(state.as_str()).or_default() += 1;
            }
            rows.push(StatusRow {
                address: format!("servers/targets:{port}"),
                state: if by_state.is_empty() {
                    "none registered".into()
                } else {
                    by_state
                        .iter()
                        .map(|(s, n)| format!("{n} {s}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                },
                id: targets.keys().cloned().collect::<Vec<_>>().join(","),
            });
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TG: [&str; 2] = ["arn:tg/4646", "arn:tg/4647"];

    fn d() -> Desired {
        Desired {
            deployment: "default".into(),
            count: 3,
            instance_type: "t3.medium".into(),
            private_subnets: Some(vec!["subnet-a".into(), "subnet-b".into(), "subnet-c".into()]),
            security_group: known("sg-1"),
            user_data: UserData::Ready {
                text: "#!/bin/bash\n".into(),
                sha: "sha-1".into(),
            },
            role_name: role_name("default"),
            profile_name: profile_name("default"),
            trust: trust_policy(),
            policy: server_policy("eu-west-1", "123456789012", "/infrastructure/certificates/*"),
            managed: vec![ssm_core_policy("eu-west-1")],
            discovery: ("nomad-type".into(), "server".into()),
            target_groups: Some(vec![(4646, TG[0].into()), (4647, TG[1].into())]),
        }
    }

    fn instance(slot: u32, id: &str) -> Instance {
        Instance {
            id: id.into(),
            slot,
            generation: 0,
            state: "running".into(),
            instance_type: "t3.medium".into(),
            subnet: Some(["subnet-a", "subnet-b", "subnet-c"][slot as usize % 3].into()),
            security_groups: BTreeSet::from(["sg-1".to_string()]),
            profile_arn: Some("arn:aws:iam::123456789012:instance-profile/edgectl-default-server".into()),
            user_data_sha: Some("sha-1".into()),
            imds_v2: true,
            az: "eu-west-1a".into(),
            private_ip: "10.0.1.10".into(),
        }
    }

    fn complete() -> Observed {
        let d = d();
        let instances = vec![instance(0, "i-0"), instance(1, "i-1"), instance(2, "i-2")];
        let targets = TG
            .iter()
            .map(|tg| {
                (
                    tg.to_string(),
                    instances
                        .iter()
                        .map(|i| (i.id.clone(), "healthy".to_string()))
                        .collect(),
                )
            })
            .collect();
        Observed {
            role: Some(Role {
                arn: "arn:aws:iam::123456789012:role/edgectl-default-server".into(),
                trust: d.trust.clone(),
                inline: Some(d.policy.clone()),
                attached: d.managed.clone(),
            }),
            profile: Some(Profile {
                arn: "arn:aws:iam::123456789012:instance-profile/edgectl-default-server".into(),
                roles: vec![d.role_name.clone()],
            }),
            instances,
            ami: Some("ami-1".into()),
            targets,
            ..Observed::default()
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
    fn plan_table() {
        type Case = (&'static str, Desired, Observed, Vec<(String, Action)>);
        let mut terminated = complete();
        terminated.instances[1].state = "terminated".into();
        let mut one_too_many = complete();
        one_too_many.instances.push(instance(3, "i-3"));
        let mut twins_in_slot = complete();
        twins_in_slot.instances.insert(
            1,
            Instance {
                generation: 1,
                ..instance(0, "i-0b")
            },
        );
        let new_version = Desired {
            user_data: UserData::Ready {
                text: "#!/bin/bash\n# 1.12\n".into(),
                sha: "sha-2".into(),
            },
            ..d()
        };
        let mut stopped = complete();
        stopped.instances[2].state = "stopped".into();
        let mut not_registered = complete();
        not_registered.targets.get_mut(TG[1]).unwrap().remove("i-2");
        let cases: Vec<Case> = vec![
            (
                "empty",
                Desired {
                    private_subnets: None,
                    security_group: Value::KnownAfterApply,
                    user_data: UserData::KnownAfterApply,
                    target_groups: None,
                    ..d()
                },
                Observed::default(),
                vec![
                    s(ROLE, Action::Create),
                    s(ROLE_POLICY, Action::Create),
                    s(
                        "iam/server-role/attachment:arn:aws:iam::aws:policy/AmazonSSMManagedInstanceCore",
                        Action::Create,
                    ),
                    s(PROFILE, Action::Create),
                    s("servers/instance:0", Action::Create),
                    s("servers/instance:1", Action::Create),
                    s("servers/instance:2", Action::Create),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
            ("complete", d(), complete(), vec![]),
            (
                "a_terminated_server",
                d(),
                terminated,
                vec![
                    s("servers/instance:1", Action::Create),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
            (
                "one_too_many",
                d(),
                one_too_many,
                vec![
                    s("servers/instance:3", Action::Delete),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
            (
                "two_in_one_slot",
                d(),
                twins_in_slot,
                vec![
                    s("servers/instance:0#i-0", Action::Delete),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
            (
                "user_data_changed",
                new_version,
                complete(),
                vec![
                    s("servers/instance:0", Action::Replace),
                    s("servers/instance:1", Action::Replace),
                    s("servers/instance:2", Action::Replace),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
            (
                "stopped_is_started",
                d(),
                stopped,
                vec![s("servers/instance:2", Action::Update)],
            ),
            (
                "target_not_registered",
                d(),
                not_registered,
                vec![s("servers/targets:4647", Action::Update)],
            ),
            (
                "instance_type_changed",
                Desired {
                    instance_type: "t4g.medium".into(),
                    count: 1,
                    ..d()
                },
                Observed {
                    instances: vec![instance(0, "i-0")],
                    ..complete()
                },
                vec![
                    s("servers/instance:0", Action::Replace),
                    s("servers/targets:4646", Action::Update),
                    s("servers/targets:4647", Action::Update),
                ],
            ),
        ];
        for (name, d, o, want) in cases {
            assert_eq!(summary(&plan(&d, &o)), want, "{name}");
        }
    }

    #[test]
    fn replace_says_one_at_a_time_and_why() {
        let d = Desired {
            user_data: UserData::Ready {
                text: "x".into(),
                sha: "sha-2".into(),
            },
            ..d()
        };
        let steps = plan(&d, &complete());
        let r = &steps[0].change;
        assert!(r.reason.contains("user data changed"), "{}", r.reason);
        assert!(r.reason.contains("one at a time"), "{}", r.reason);
        assert_eq!(
            steps[0].op,
            Op::Replace {
                slot: 0,
                old: "i-0".into()
            }
        );
    }

    #[test]
    fn terminated_slot_reuses_the_slot_with_a_new_generation() {
        let mut o = complete();
        o.instances[1].state = "terminated".into();
        assert_eq!(o.next_generation(1), 1);
        assert_eq!(o.next_generation(0), 1);
        o.skip.insert(1, 5);
        assert_eq!(o.next_generation(1), 5);
        assert_eq!(Observed::default().next_generation(0), 0);
        let steps = plan(&d(), &o);
        assert_eq!(steps[0].op, Op::Launch(1));
        assert!(steps[0].change.reason.contains("i-1 is terminated"));
    }

    #[test]
    fn extra_servers_go_highest_slot_first() {
        let mut o = complete();
        o.instances.push(instance(3, "i-3"));
        o.instances.push(instance(4, "i-4"));
        let ops: Vec<Op> = plan(&Desired { count: 3, ..d() }, &o)
            .into_iter()
            .map(|p| p.op)
            .filter(|op| matches!(op, Op::Terminate { .. }))
            .collect();
        assert_eq!(
            ops,
            vec![
                Op::Terminate {
                    id: "i-4".into(),
                    wait: false
                },
                Op::Terminate {
                    id: "i-3".into(),
                    wait: false
                }
            ]
        );
    }

    #[test]
    fn down_terminates_waits_then_removes_iam() {
        let ops: Vec<Op> = plan_down(&complete()).into_iter().map(|p| p.op).collect();
        assert_eq!(
            ops,
            vec![
                Op::Terminate {
                    id: "i-0".into(),
                    wait: false
                },
                Op::Terminate {
                    id: "i-1".into(),
                    wait: false
                },
                Op::Terminate {
                    id: "i-2".into(),
                    wait: true
                },
                Op::DeleteProfile,
                Op::DeleteRole,
            ]
        );
        assert!(plan_down(&Observed::default()).is_empty());
    }

    #[test]
    fn arm64_types_pick_the_arm64_ami() {
        for t in [
            "t4g.medium",
            "m6g.large",
            "c7g.xlarge",
            "m6gd.large",
            "c6gn.large",
            "im4gn.large",
            "a1.large",
            "g5g.xlarge",
        ] {
            assert_eq!(arch(t), Arch::Arm64, "{t}");
        }
        for t in [
            "t3.medium",
            "m5.large",
            "c7i.large",
            "g4dn.xlarge",
            "m7i-flex.large",
            "inf2.xlarge",
            "t3a.small",
        ] {
            assert_eq!(arch(t), Arch::X86_64, "{t}");
        }
        assert!(ami_parameter(Arch::Arm64).ends_with("al2023-ami-kernel-default-arm64"));
        assert!(ami_parameter(Arch::X86_64).ends_with("al2023-ami-kernel-default-x86_64"));
    }

    #[test]
    fn policies_are_least_privilege() {
        let t = trust_policy();
        assert_eq!(t["Statement"][0]["Principal"]["Service"], "ec2.amazonaws.com");
        assert_eq!(t["Statement"][0]["Action"], "sts:AssumeRole");
        let p = server_policy("eu-west-1", "123456789012", "/infrastructure/certificates/*");
        let st = p["Statement"].as_array().unwrap();
        assert_eq!(st.len(), 2);
        assert_eq!(st[0]["Action"], "ec2:DescribeInstances");
        assert_eq!(st[1]["Action"], "ssm:GetParameter");
        assert_eq!(
            st[1]["Resource"],
            "arn:aws:ssm:eu-west-1:123456789012:parameter/infrastructure/certificates/*"
        );
        assert_eq!(
            ssm_core_policy("cn-north-1"),
            "arn:aws-cn:iam::aws:policy/AmazonSSMManagedInstanceCore"
        );
    }

    #[test]
    fn client_tokens_are_stable_and_distinct() {
        let a = client_token("default", 0, 0);
        assert_eq!(a, client_token("default", 0, 0));
        assert!(a.len() <= 64 && a.is_ascii());
        assert_ne!(a, client_token("default", 0, 1));
        assert_ne!(a, client_token("default", 1, 0));
        assert_ne!(a, client_token("other", 0, 0));
        assert!(client_token(&"x".repeat(32), 8, u32::MAX).len() <= 64);
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (raw, enc) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(raw.as_bytes()), enc);
        }
    }

    #[test]
    fn servers_spread_round_robin_over_the_subnets() {
        let d = d();
        let subnets: Vec<&str> = (0..5).map(|s| d.subnet(s).unwrap()).collect();
        assert_eq!(
            subnets,
            ["subnet-a", "subnet-b", "subnet-c", "subnet-a", "subnet-b"]
        );
    }
}
