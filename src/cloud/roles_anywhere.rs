//! IAM Roles Anywhere: a trust anchor on the private CA, the IAM role the
//! devices assume (least privilege), the profile that links them, and the
//! ARNs plus the device's `credential_process` line in SSM.

use super::iam_role::{self, Role};
use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::config::deployment::DeviceRole;
use crate::outputs::{self, plan_param, Kind};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{Context, Result};
use aws_sdk_rolesanywhere::types::{Source, SourceData, Tag, TrustAnchorType};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

pub struct RolesAnywhere;

const ANCHOR: &str = "rolesanywhere/trust-anchor";
const ROLE: &str = "iam/device-role";
const ROLE_POLICY: &str = "iam/device-role-policy";
const PROFILE: &str = "rolesanywhere/profile";
const INLINE_POLICY_NAME: &str = "edgectl-device";
const SESSION_SECONDS: i32 = 3600;

// ---- desired -------------------------------------------------------------

fn anchor_name(ctx: &Ctx) -> String {
    format!("edgectl-{}", ctx.deployment)
}

fn profile_name(ctx: &Ctx) -> String {
    format!("edgectl-{}", ctx.deployment)
}

/// IAM role names are unique per account, so the role is found by name.
pub fn role_name(deployment: &str) -> String {
    format!("edgectl-{deployment}-device")
}

/// Only Roles Anywhere may assume the role, and only through our anchor.
pub fn trust_policy(anchor_arn: &str) -> Json {
    json!({
        "Version": "2012-10-17",
        "Statement": [{
            "Effect": "Allow",
            "Principal": {"Service": "rolesanywhere.amazonaws.com"},
            "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
            "Condition": {"ArnEquals": {"aws:SourceArn": anchor_arn}}
        }]
    })
}

/// What a device may do: pull images from ECR, connect to IoT Core and
/// publish to the configured topics. `None` when nothing is granted inline.
pub fn device_policy(role: &DeviceRole, region: &str, account: &str) -> Option<Json> {
    let mut statements = Vec::new();
    if role.ecr_pull {
        statements.push(json!({"Sid": "EcrLogin", "Effect": "Allow", "Action": "ecr:GetAuthorizationToken", "Resource": "*"}));
        statements.push(json!({
            "Sid": "EcrPull", "Effect": "Allow",
            "Action": ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"],
            "Resource": format!("arn:aws:ecr:{region}:{account}:repository/*")
        }));
    }
    if !role.iot_publish_topics.is_empty() {
        statements.push(json!({"Sid": "IotConnect", "Effect": "Allow", "Action": "iot:Connect", "Resource": format!("arn:aws:iot:{region}:{account}:client/*")}));
        // The workload finds the account's data endpoint itself; the API
        // has no resource-level permissions.
        statements.push(json!({"Sid": "IotEndpoint", "Effect": "Allow", "Action": "iot:DescribeEndpoint", "Resource": "*"}));
        let topics: Vec<String> = role
            .iot_publish_topics
            .iter()
            .map(|t| format!("arn:aws:iot:{region}:{account}:topic/{t}"))
            .collect();
        statements.push(
            json!({"Sid": "IotPublish", "Effect": "Allow", "Action": "iot:Publish", "Resource": topics}),
        );
    }
    (!statements.is_empty()).then(|| json!({"Version": "2012-10-17", "Statement": statements}))
}

pub fn credential_process(anchor: &str, profile: &str, role: &str) -> String {
    format!(
        "aws_signing_helper credential-process --certificate /root/certificates/device.pem \
         --private-key /root/certificates/device-key.pem --trust-anchor-arn {anchor} \
         --profile-arn {profile} --role-arn {role}"
    )
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Anchor {
    pub id: String,
    pub arn: String,
    pub enabled: bool,
    pub pca_arn: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub id: String,
    pub arn: String,
    pub enabled: bool,
    pub role_arns: Vec<String>,
    pub duration: Option<i32>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub anchor: Option<Anchor>,
    pub extra_anchors: Vec<Anchor>,
    pub role: Option<Role>,
    pub profile: Option<Profile>,
    pub extra_profiles: Vec<Profile>,
    params: BTreeMap<String, Secret>,
}

const PARAMS: [&str; 4] = [
    outputs::TRUST_ANCHOR_ARN,
    outputs::PROFILE_ARN,
    outputs::ROLE_ARN,
    outputs::CREDENTIAL_PROCESS,
];

fn ra(ctx: &Ctx) -> aws_sdk_rolesanywhere::Client {
    aws_sdk_rolesanywhere::Client::new(&ctx.aws.config)
}

fn iam(ctx: &Ctx) -> aws_sdk_iam::Client {
    aws_sdk_iam::Client::new(&ctx.aws.config)
}

async fn has_our_tag(client: &aws_sdk_rolesanywhere::Client, ctx: &Ctx, arn: &str) -> Result<bool> {
    let out = client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await
        .op(|| format!("reading the tags of {arn}"))?;
    Ok(out
        .tags
        .unwrap_or_default()
        .iter()
        .any(|t| t.key == TAG_KEY && t.value == ctx.deployment))
}

async fn observe_anchors(ctx: &Ctx) -> Result<Vec<Anchor>> {
    let client = ra(ctx);
    let mut found = Vec::new();
    let mut pages = client.list_trust_anchors().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing trust anchors in {}", ctx.aws.region))?;
        for a in page.trust_anchors.unwrap_or_default() {
            let (Some(id), Some(arn)) = (a.trust_anchor_id.clone(), a.trust_anchor_arn.clone()) else {
                continue;
            };
            if !has_our_tag(&client, ctx, &arn).await? {
                continue;
            }
            let pca_arn = match a.source.as_ref().and_then(|s| s.source_data.as_ref()) {
                Some(SourceData::AcmPcaArn(p)) => Some(p.clone()),
                _ => None,
            };
            found.push(Anchor {
                id,
                arn,
                enabled: a.enabled.unwrap_or(false),
                pca_arn,
            });
        }
    }
    Ok(found)
}

async fn observe_profiles(ctx: &Ctx) -> Result<Vec<Profile>> {
    let client = ra(ctx);
    let mut found = Vec::new();
    let mut pages = client.list_profiles().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing Roles Anywhere profiles in {}", ctx.aws.region))?;
        for p in page.profiles.unwrap_or_default() {
            let (Some(id), Some(arn)) = (p.profile_id.clone(), p.profile_arn.clone()) else {
                continue;
            };
            if !has_our_tag(&client, ctx, &arn).await? {
                continue;
            }
            found.push(Profile {
                id,
                arn,
                enabled: p.enabled.unwrap_or(false),
                role_arns: p.role_arns.clone().unwrap_or_default(),
                duration: p.duration_seconds,
            });
        }
    }
    Ok(found)
}

async fn observe_role(ctx: &Ctx) -> Result<Option<Role>> {
    iam_role::observe(ctx, &role_name(&ctx.deployment), INLINE_POLICY_NAME).await
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Op {
    CreateAnchor,
    SetAnchorSource,
    EnableAnchor,
    DeleteAnchor(String),
    CreateRole,
    SetTrustPolicy,
    PutRolePolicy,
    DeleteRolePolicy,
    AttachPolicy(String),
    DetachPolicy(String),
    DeleteRole,
    CreateProfile,
    UpdateProfile,
    EnableProfile,
    DeleteProfile(String),
    WriteParam(&'static str),
    DeleteParam(&'static str),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn known_or_later(v: Option<&str>) -> Value {
    v.map(Value::known).unwrap_or(Value::KnownAfterApply)
}

impl Component for RolesAnywhere {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "roles-anywhere"
    }

    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&["pca"])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let (anchors, profiles, role, params) = tokio::try_join!(
            observe_anchors(ctx),
            observe_profiles(ctx),
            observe_role(ctx),
            ctx.outputs.read(&PARAMS)
        )?;
        let mut anchors = anchors.into_iter();
        let mut profiles = profiles.into_iter();
        Ok(Observed {
            anchor: anchors.next(),
            extra_anchors: anchors.collect(),
            role,
            profile: profiles.next(),
            extra_profiles: profiles.collect(),
            params,
        })
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        let mut steps = Vec::new();
        let pca = inputs.get("pca_arn").cloned().unwrap_or(Value::KnownAfterApply);

        // Trust anchor on the CA.
        match &o.anchor {
            None => steps.push(planned(
                Change::new(
                    ANCHOR,
                    Action::Create,
                    "no trust anchor tagged for this deployment",
                )
                .field("name", None, Value::known(anchor_name(ctx)))
                .field("source", None, pca.clone()),
                Op::CreateAnchor,
            )),
            Some(a) => {
                if pca.as_known() != a.pca_arn.as_deref() {
                    steps.push(planned(
                        Change::new(ANCHOR, Action::Update, "trusts another CA").field(
                            "source",
                            a.pca_arn.as_deref().map(Value::known),
                            pca.clone(),
                        ),
                        Op::SetAnchorSource,
                    ));
                }
                if !a.enabled {
                    steps.push(planned(
                        Change::new(ANCHOR, Action::Update, "trust anchor is disabled").field(
                            "enabled",
                            Some(Value::known("false")),
                            Value::known("true"),
                        ),
                        Op::EnableAnchor,
                    ));
                }
            }
        }
        for extra in &o.extra_anchors {
            steps.push(planned(
                Change::new(
                    format!("{ANCHOR}#{}", extra.id),
                    Action::Delete,
                    "duplicate trust anchor with this deployment's tag",
                ),
                Op::DeleteAnchor(extra.id.clone()),
            ));
        }
        let anchor_arn = o.anchor.as_ref().map(|a| a.arn.as_str());

        // The device role.
        let trust = anchor_arn.map(trust_policy);
        let policy = device_policy(&ctx.config.device_role, &ctx.aws.region, &ctx.aws.account);
        let role = iam_role::Want {
            address: ROLE,
            policy_address: ROLE_POLICY,
            name: &role_name(&ctx.deployment),
            trusts: known_or_later(anchor_arn),
            show_trust_on_update: true,
            trust: trust.as_ref(),
            policy: policy.as_ref(),
            managed: &ctx.config.device_role.managed_policy_arns,
            attach_reason: "configured in device_role",
            detach_reason: "not in device_role",
        };
        for (change, step) in iam_role::plan(&role, o.role.as_ref()) {
            let op = match step {
                iam_role::Step::Create => Op::CreateRole,
                iam_role::Step::SetTrust => Op::SetTrustPolicy,
                iam_role::Step::PutPolicy => Op::PutRolePolicy,
                iam_role::Step::DeletePolicy => Op::DeleteRolePolicy,
                iam_role::Step::Attach(arn) => Op::AttachPolicy(arn),
                iam_role::Step::Detach(arn) => Op::DetachPolicy(arn),
            };
            steps.push(planned(change, op));
        }
        let role_arn = o.role.as_ref().map(|r| r.arn.as_str());

        // The profile that lets the anchor's certificates assume the role.
        match &o.profile {
            None => steps.push(planned(
                Change::new(PROFILE, Action::Create, "no profile tagged for this deployment")
                    .field("roles", None, known_or_later(role_arn))
                    .field("session", None, Value::known(format!("{SESSION_SECONDS} s"))),
                Op::CreateProfile,
            )),
            Some(p) => {
                let roles_ok = role_arn.is_some_and(|r| p.role_arns == [r]);
                if !roles_ok || p.duration != Some(SESSION_SECONDS) {
                    steps.push(planned(
                        Change::new(PROFILE, Action::Update, "roles or session duration differ")
                            .field(
                                "roles",
                                Some(Value::known(p.role_arns.join(","))),
                                known_or_later(role_arn),
                            )
                            .field(
                                "session",
                                p.duration.map(|d| Value::known(format!("{d} s"))),
                                Value::known(format!("{SESSION_SECONDS} s")),
                            ),
                        Op::UpdateProfile,
                    ));
                }
                if !p.enabled {
                    steps.push(planned(
                        Change::new(PROFILE, Action::Update, "profile is disabled").field(
                            "enabled",
                            Some(Value::known("false")),
                            Value::known("true"),
                        ),
                        Op::EnableProfile,
                    ));
                }
            }
        }
        for extra in &o.extra_profiles {
            steps.push(planned(
                Change::new(
                    format!("{PROFILE}#{}", extra.id),
                    Action::Delete,
                    "duplicate profile with this deployment's tag",
                ),
                Op::DeleteProfile(extra.id.clone()),
            ));
        }

        // Outputs.
        let profile_arn = o.profile.as_ref().map(|p| p.arn.as_str());
        let line = match (anchor_arn, profile_arn, role_arn) {
            (Some(a), Some(p), Some(r)) => Value::known(credential_process(a, p, r)),
            _ => Value::KnownAfterApply,
        };
        let desired = [
            (outputs::TRUST_ANCHOR_ARN, known_or_later(anchor_arn)),
            (outputs::PROFILE_ARN, known_or_later(profile_arn)),
            (outputs::ROLE_ARN, known_or_later(role_arn)),
            (outputs::CREDENTIAL_PROCESS, line),
        ];
        for (name, value) in desired {
            if let Some(change) = plan_param(name, &value, o.params.get(name), Kind::Plain) {
                steps.push(planned(change, Op::WriteParam(name)));
            }
        }
        steps
    }

    fn exports(&self, _o: &Observed, _planned: &[Planned<Op>]) -> Exports {
        Exports::new()
    }

    async fn apply(&self, ctx: &Ctx, inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let client = ra(ctx);
        let iam = iam(ctx);
        let name = role_name(&ctx.deployment);
        let pca = || -> Result<String> {
            inputs
                .get("pca_arn")
                .and_then(Value::as_known)
                .map(str::to_string)
                .context("the private CA's ARN is not known; the pca component must come first")
        };
        let anchor_id = |o: &Observed| o.anchor.as_ref().map(|a| a.id.clone()).context("no trust anchor");
        match op {
            Op::CreateAnchor => {
                let pca = pca()?;
                let out = client
                    .create_trust_anchor()
                    .name(anchor_name(ctx))
                    .source(pca_source(&pca))
                    .enabled(true)
                    .tags(Tag::builder().key(TAG_KEY).value(&ctx.deployment).build()?)
                    .send()
                    .await
                    .op(|| format!("creating trust anchor {} in {}", anchor_name(ctx), ctx.aws.region))?;
                let a = out
                    .trust_anchor
                    .context("CreateTrustAnchor returned no trust anchor")?;
                o.anchor = Some(Anchor {
                    id: a.trust_anchor_id.context("no trust anchor id")?,
                    arn: a.trust_anchor_arn.context("no trust anchor ARN")?,
                    enabled: true,
                    pca_arn: Some(pca),
                });
            }
            Op::SetAnchorSource => {
                let pca = pca()?;
                let id = anchor_id(o)?;
                client
                    .update_trust_anchor()
                    .trust_anchor_id(&id)
                    .source(pca_source(&pca))
                    .send()
                    .await
                    .op(|| format!("pointing trust anchor {id} at {pca}"))?;
                o.anchor.as_mut().expect("checked").pca_arn = Some(pca);
            }
            Op::EnableAnchor => {
                let id = anchor_id(o)?;
                client
                    .enable_trust_anchor()
                    .trust_anchor_id(&id)
                    .send()
                    .await
                    .op(|| format!("enabling trust anchor {id}"))?;
                o.anchor.as_mut().expect("checked").enabled = true;
            }
            Op::DeleteAnchor(id) => {
                ignore_missing(client.delete_trust_anchor().trust_anchor_id(id).send().await)
                    .op(|| format!("deleting trust anchor {id}"))?;
                if o.anchor.as_ref().is_some_and(|a| &a.id == id) {
                    o.anchor = None;
                }
                o.extra_anchors.retain(|a| &a.id != id);
            }
            Op::CreateRole => {
                let anchor = o
                    .anchor
                    .as_ref()
                    .context("the trust anchor must exist before the role")?;
                let out = iam
                    .create_role()
                    .role_name(&name)
                    .description("Assumed by edge devices through IAM Roles Anywhere (edgectl)")
                    .assume_role_policy_document(trust_policy(&anchor.arn).to_string())
                    .tags(
                        aws_sdk_iam::types::Tag::builder()
                            .key(TAG_KEY)
                            .value(&ctx.deployment)
                            .build()?,
                    )
                    .send()
                    .await
                    .op(|| format!("creating IAM role {name}"))?;
                let role = out.role.context("CreateRole returned no role")?;
                o.role = Some(Role {
                    arn: role.arn,
                    trust: trust_policy(&anchor.arn),
                    inline: None,
                    attached: Vec::new(),
                });
            }
            Op::SetTrustPolicy => {
                let anchor = o
                    .anchor
                    .as_ref()
                    .context("the trust anchor must exist before the role")?;
                let doc = trust_policy(&anchor.arn);
                iam.update_assume_role_policy()
                    .role_name(&name)
                    .policy_document(doc.to_string())
                    .send()
                    .await
                    .op(|| format!("updating the trust policy of {name}"))?;
                o.role.as_mut().context("no role")?.trust = doc;
            }
            Op::PutRolePolicy => {
                let doc = device_policy(&ctx.config.device_role, &ctx.aws.region, &ctx.aws.account)
                    .context("no inline permissions configured")?;
                iam.put_role_policy()
                    .role_name(&name)
                    .policy_name(INLINE_POLICY_NAME)
                    .policy_document(doc.to_string())
                    .send()
                    .await
                    .op(|| format!("writing policy {INLINE_POLICY_NAME} of {name}"))?;
                o.role.as_mut().context("no role")?.inline = Some(doc);
            }
            Op::DeleteRolePolicy => {
                ignore_missing(
                    iam.delete_role_policy()
                        .role_name(&name)
                        .policy_name(INLINE_POLICY_NAME)
                        .send()
                        .await,
                )
                .op(|| format!("deleting policy {INLINE_POLICY_NAME} of {name}"))?;
                if let Some(r) = o.role.as_mut() {
                    r.inline = None;
                }
            }
            Op::AttachPolicy(arn) => {
                iam.attach_role_policy()
                    .role_name(&name)
                    .policy_arn(arn)
                    .send()
                    .await
                    .op(|| format!("attaching {arn} to {name}"))?;
                o.role.as_mut().context("no role")?.attached.push(arn.clone());
            }
            Op::DetachPolicy(arn) => {
                ignore_missing(
                    iam.detach_role_policy()
                        .role_name(&name)
                        .policy_arn(arn)
                        .send()
                        .await,
                )
                .op(|| format!("detaching {arn} from {name}"))?;
                if let Some(r) = o.role.as_mut() {
                    r.attached.retain(|a| a != arn);
                }
            }
            Op::DeleteRole => {
                // IAM refuses to delete a role that still has policies.
                if let Some(r) = o.role.clone() {
                    if r.inline.is_some() {
                        ignore_missing(
                            iam.delete_role_policy()
                                .role_name(&name)
                                .policy_name(INLINE_POLICY_NAME)
                                .send()
                                .await,
                        )
                        .op(|| format!("deleting policy {INLINE_POLICY_NAME} of {name}"))?;
                    }
                    for arn in &r.attached {
                        ignore_missing(
                            iam.detach_role_policy()
                                .role_name(&name)
                                .policy_arn(arn)
                                .send()
                                .await,
                        )
                        .op(|| format!("detaching {arn} from {name}"))?;
                    }
                }
                ignore_missing(iam.delete_role().role_name(&name).send().await)
                    .op(|| format!("deleting IAM role {name}"))?;
                o.role = None;
            }
            Op::CreateProfile => {
                let role = o
                    .role
                    .as_ref()
                    .context("the role must exist before the profile")?;
                let out = client
                    .create_profile()
                    .name(profile_name(ctx))
                    .role_arns(&role.arn)
                    .duration_seconds(SESSION_SECONDS)
                    .enabled(true)
                    .tags(Tag::builder().key(TAG_KEY).value(&ctx.deployment).build()?)
                    .send()
                    .await
                    .op(|| format!("creating profile {} in {}", profile_name(ctx), ctx.aws.region))?;
                let p = out.profile.context("CreateProfile returned no profile")?;
                o.profile = Some(Profile {
                    id: p.profile_id.context("no profile id")?,
                    arn: p.profile_arn.context("no profile ARN")?,
                    enabled: true,
                    role_arns: vec![role.arn.clone()],
                    duration: Some(SESSION_SECONDS),
                });
            }
            Op::UpdateProfile => {
                let role = o
                    .role
                    .as_ref()
                    .context("the role must exist before the profile")?
                    .arn
                    .clone();
                let p = o.profile.as_mut().context("no profile")?;
                client
                    .update_profile()
                    .profile_id(&p.id)
                    .role_arns(&role)
                    .duration_seconds(SESSION_SECONDS)
                    .send()
                    .await
                    .op(|| format!("updating profile {}", p.id))?;
                p.role_arns = vec![role];
                p.duration = Some(SESSION_SECONDS);
            }
            Op::EnableProfile => {
                let p = o.profile.as_mut().context("no profile")?;
                client
                    .enable_profile()
                    .profile_id(&p.id)
                    .send()
                    .await
                    .op(|| format!("enabling profile {}", p.id))?;
                p.enabled = true;
            }
            Op::DeleteProfile(id) => {
                ignore_missing(client.delete_profile().profile_id(id).send().await)
                    .op(|| format!("deleting profile {id}"))?;
                if o.profile.as_ref().is_some_and(|p| &p.id == id) {
                    o.profile = None;
                }
                o.extra_profiles.retain(|p| &p.id != id);
            }
            Op::WriteParam(param) => {
                let (a, p, r) = (
                    o.anchor.as_ref().map(|a| a.arn.clone()),
                    o.profile.as_ref().map(|p| p.arn.clone()),
                    o.role.as_ref().map(|r| r.arn.clone()),
                );
                let value = match *param {
                    outputs::TRUST_ANCHOR_ARN => a,
                    outputs::PROFILE_ARN => p,
                    outputs::ROLE_ARN => r,
                    _ => match (a, p, r) {
                        (Some(a), Some(p), Some(r)) => Some(credential_process(&a, &p, &r)),
                        _ => None,
                    },
                }
                .with_context(|| format!("{param}: its resource does not exist"))?;
                ctx.outputs
                    .write(param, &value, Kind::Plain, o.params.contains_key(*param))
                    .await?;
                o.params.insert(param.to_string(), Secret::new(value));
            }
            Op::DeleteParam(param) => {
                ctx.outputs.delete(&[param]).await?;
                o.params.remove(*param);
            }
        }
        Ok(Applied::Done)
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        let mut steps = Vec::new();
        for name in PARAMS {
            if o.params.contains_key(name) {
                steps.push(planned(
                    crate::outputs::param_removal(name),
                    Op::DeleteParam(name),
                ));
            }
        }
        for p in o.profile.iter().chain(&o.extra_profiles) {
            steps.push(planned(
                Change::new(PROFILE, Action::Delete, "cloud down").field(
                    "arn",
                    Some(Value::known(&p.arn)),
                    Value::known("(deleted)"),
                ),
                Op::DeleteProfile(p.id.clone()),
            ));
        }
        if let Some(r) = &o.role {
            steps.push(planned(
                Change::new(ROLE, Action::Delete, "cloud down").field(
                    "arn",
                    Some(Value::known(&r.arn)),
                    Value::known("(deleted)"),
                ),
                Op::DeleteRole,
            ));
        }
        for a in o.anchor.iter().chain(&o.extra_anchors) {
            steps.push(planned(
                Change::new(ANCHOR, Action::Delete, "cloud down").field(
                    "arn",
                    Some(Value::known(&a.arn)),
                    Value::known("(deleted)"),
                ),
                Op::DeleteAnchor(a.id.clone()),
            ));
        }
        steps
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let row = |address: &str, state: Option<(bool, &str)>| StatusRow {
            address: address.to_string(),
            state: match state {
                Some((true, _)) => "enabled".into(),
                Some((false, _)) => "disabled".into(),
                None => "absent".into(),
            },
            id: state.map(|(_, id)| id.to_string()).unwrap_or_default(),
        };
        let mut rows = vec![
            row(ANCHOR, o.anchor.as_ref().map(|a| (a.enabled, a.arn.as_str()))),
            StatusRow {
                address: ROLE.into(),
                state: if o.role.is_some() {
                    "present".into()
                } else {
                    "absent".into()
                },
                id: o.role.as_ref().map(|r| r.arn.clone()).unwrap_or_default(),
            },
            row(PROFILE, o.profile.as_ref().map(|p| (p.enabled, p.arn.as_str()))),
        ];
        for (name, value) in &o.params {
            rows.push(StatusRow {
                address: format!("ssm:{name}"),
                state: "set".into(),
                id: value.expose().to_string(),
            });
        }
        rows
    }
}

fn pca_source(pca_arn: &str) -> Source {
    Source::builder()
        .source_type(TrustAnchorType::AwsAcmPca)
        .source_data(SourceData::AcmPcaArn(pca_arn.to_string()))
        .build()
}

/// Deletes treat "already gone" as done (the cleanup contract).
fn ignore_missing<T, E, R>(
    result: std::result::Result<T, aws_sdk_ssm::error::SdkError<E, R>>,
) -> std::result::Result<Option<T>, aws_sdk_ssm::error::SdkError<E, R>>
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    match result {
        Ok(v) => Ok(Some(v)),
        Err(e) if matches!(code(&e), Some("NoSuchEntity" | "ResourceNotFoundException")) => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_policy_matches_the_reference() {
        let p = trust_policy("arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/abc");
        let st = &p["Statement"][0];
        assert_eq!(st["Principal"]["Service"], "rolesanywhere.amazonaws.com");
        let actions: Vec<&str> = st["Action"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert_eq!(
            actions,
            ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"]
        );
        assert_eq!(
            st["Condition"]["ArnEquals"]["aws:SourceArn"],
            "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/abc"
        );
        assert_eq!(p["Version"], "2012-10-17");
    }

    #[test]
    fn device_policy_is_least_privilege() {
        let p = device_policy(&DeviceRole::default(), "eu-west-1", "123456789012").unwrap();
        let text = p.to_string();
        assert!(text.contains("arn:aws:iot:eu-west-1:123456789012:topic/hello/world"));
        // Resource "*" only where the API has no resource-level permissions.
        for st in p["Statement"].as_array().unwrap() {
            if st["Resource"] == "*" {
                assert!(
                    ["ecr:GetAuthorizationToken", "iot:DescribeEndpoint"]
                        .contains(&st["Action"].as_str().unwrap_or("")),
                    "{st}"
                );
            }
            assert!(
                !st["Action"].to_string().contains('*'),
                "no wildcard action: {st}"
            );
        }
        assert!(!text.contains("FullAccess") && !text.contains("kinesis") && !text.contains("s3:"));
        let none = DeviceRole {
            managed_policy_arns: vec![],
            iot_publish_topics: vec![],
            ecr_pull: false,
        };
        assert!(device_policy(&none, "eu-west-1", "1").is_none());
    }

    #[test]
    fn credential_process_line_is_the_reference_one() {
        assert_eq!(
            credential_process("TA", "P", "R"),
            "aws_signing_helper credential-process --certificate /root/certificates/device.pem --private-key /root/certificates/device-key.pem --trust-anchor-arn TA --profile-arn P --role-arn R"
        );
    }
}
