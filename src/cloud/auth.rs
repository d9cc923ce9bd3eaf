//! Cognito for the Nomad UI and CLI login: a user pool, an app client with
//! a secret and the OAuth flows Nomad's OIDC auth method uses, the hosted
//! domain, the group `engineering`, the administrator (invited once by
//! EMAIL) and their membership, plus the ids and the secret in SSM.
//!
//! Found again by tag where Cognito has tags (the pool's `UserPoolTags`),
//! by fixed name inside the pool otherwise (client `edgectl-<deployment>`,
//! group `engineering`, the domain by its prefix, the user by name).
//!
//! People are never re-invited and never deleted: a user is created only
//! when AdminGetUser says UserNotFound, a changed email is updated in place
//! (no invitation), and when `authentication.username` changes the new user
//! is created while the old one is left as it is (shown by `cloud status`
//! as unmanaged). Only `cloud down` removes users, with the pool.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::outputs::{self, plan_param, Kind};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use aws_sdk_cognitoidentityprovider::types::{
    AdminCreateUserConfigType, AttributeType, DeliveryMediumType, OAuthFlowType, VerifiedAttributeType,
};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

pub struct Auth;

const POOL: &str = "cognito/user-pool";
const CLIENT: &str = "cognito/client";
const DOMAIN: &str = "cognito/domain";
pub const GROUP_NAME: &str = "engineering";
/// What the Nomad UI and `nomad login` ask for.
pub const SCOPES: [&str; 4] = ["aws.cognito.signin.user.admin", "email", "openid", "profile"];
const FLOWS: [&str; 2] = ["code", "implicit"];
const IDENTITY_PROVIDERS: [&str; 1] = ["COGNITO"];
/// `nomad login` listens here for the OIDC redirect.
pub const CLI_CALLBACK: &str = "http://localhost:4649/oidc/callback";
/// The ingress component's export: the load balancer's DNS name.
pub const LB_EXPORT: &str = "nomad_endpoint";

const PARAMS: [&str; 4] = [
    outputs::COGNITO_USER_POOL_ID,
    outputs::COGNITO_CLIENT_ID,
    outputs::COGNITO_CLIENT_SECRET,
    outputs::COGNITO_DOMAIN,
];

// ---- desired -------------------------------------------------------------

/// The load balancer in front of Nomad, as far as the ingress component
/// says: not there at all (no ingress component, leave the UI callback as
/// it is), to be made in this run, or known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lb {
    Absent,
    Later,
    Known(String),
}

impl Lb {
    fn from_inputs(inputs: &Exports) -> Lb {
        match inputs.get(LB_EXPORT) {
            None => Lb::Absent,
            Some(Value::Known(dns)) => Lb::Known(dns.clone()),
            Some(_) => Lb::Later,
        }
    }
}

/// The Nomad UI's callback behind the load balancer.
pub fn ui_callback(lb_dns: &str) -> String {
    format!("https://{lb_dns}:4646/ui/settings/tokens")
}

fn is_ui_callback(url: &str) -> bool {
    url.starts_with("https://") && url.ends_with(":4646/ui/settings/tokens")
}

/// The issuer (and discovery base) Nomad's OIDC auth method is given. Real
/// AWS serves discovery under it; moto serves it elsewhere and is not used.
pub fn discovery_url(region: &str, pool_id: &str) -> String {
    format!("https://cognito-idp.{region}.amazonaws.com/{pool_id}")
}

pub fn hosted_domain(prefix: &str, region: &str) -> String {
    format!("{prefix}.auth.{region}.amazoncognito.com")
}

#[derive(Debug, Clone)]
pub struct Desired {
    pub pool_name: String,
    pub client_name: String,
    pub region: String,
    pub domain_prefix: String,
    pub username: String,
    pub email: String,
    pub lb: Lb,
}

pub fn desired(ctx: &Ctx, inputs: &Exports) -> Desired {
    let a = &ctx.config.authentication;
    Desired {
        // The reference's pool name; other deployments get their own.
        pool_name: if ctx.deployment == "default" {
            "administrator".into()
        } else {
            format!("administrator-{}", ctx.deployment)
        },
        client_name: format!("edgectl-{}", ctx.deployment),
        region: ctx.aws.region.clone(),
        domain_prefix: a.domain_prefix.clone(),
        username: a.username.clone(),
        email: a.email.clone(),
        lb: Lb::from_inputs(inputs),
    }
}

impl Desired {
    /// The callback URLs to write now, given what the client has: the UI
    /// one only once the load balancer is known; with no ingress at all an
    /// existing UI callback is kept.
    fn callbacks(&self, have: Option<&AppClient>) -> BTreeSet<String> {
        let mut urls = BTreeSet::from([CLI_CALLBACK.to_string()]);
        match &self.lb {
            Lb::Known(dns) => {
                urls.insert(ui_callback(dns));
            }
            Lb::Later => {}
            Lb::Absent => {
                if let Some(c) = have {
                    urls.extend(c.callbacks.iter().filter(|u| is_ui_callback(u)).cloned());
                }
            }
        }
        urls
    }

    fn ui_callback_value(&self, have: Option<&AppClient>) -> Option<Value> {
        match &self.lb {
            Lb::Known(dns) => Some(Value::known(ui_callback(dns))),
            Lb::Later => Some(Value::KnownAfterApply),
            Lb::Absent => have
                .and_then(|c| c.callbacks.iter().find(|u| is_ui_callback(u)))
                .map(Value::known),
        }
    }
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Pool {
    pub id: String,
    /// The prefix domain this pool has, if any.
    pub domain: Option<String>,
    /// A custom domain someone added by hand: it too must go before the
    /// pool can, so `down` removes it.
    pub custom_domain: Option<String>,
    pub created: i64,
}

#[derive(Debug, Clone)]
pub struct AppClient {
    pub id: String,
    pub secret: Option<Secret>,
    pub flows: BTreeSet<String>,
    pub scopes: BTreeSet<String>,
    pub callbacks: BTreeSet<String>,
    pub identity_providers: BTreeSet<String>,
    pub oauth_enabled: bool,
}

/// Who holds the configured domain prefix in this account and region.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Prefix {
    #[default]
    Free,
    Pool {
        pool_id: String,
        status: String,
    },
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub email: Option<String>,
    pub status: String,
    pub enabled: bool,
    pub in_group: bool,
}

#[derive(Debug, Default)]
pub struct Observed {
    region: String,
    pub pool: Option<Pool>,
    /// Further pools with our tag (a retried create): removed.
    pub twin_pools: Vec<Pool>,
    pub prefix: Prefix,
    pub client: Option<AppClient>,
    /// Further clients named like ours: removed.
    pub twin_clients: Vec<String>,
    pub group: bool,
    /// `authentication.username`, by AdminGetUser.
    pub user: Option<User>,
    /// Other users in the pool: never touched, reported by status.
    pub other_users: Vec<User>,
    params: BTreeMap<String, Secret>,
}

type Idp = aws_sdk_cognitoidentityprovider::Client;

fn idp(ctx: &Ctx) -> Idp {
    Idp::new(&ctx.aws.config)
}

/// Pools with our tag: ListUserPools has no tags, so each is described.
async fn observe_pools(ctx: &Ctx) -> Result<Vec<Pool>> {
    let client = idp(ctx);
    let mut found = Vec::new();
    let mut pages = client.list_user_pools().max_results(60).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing Cognito user pools in {}", ctx.aws.region))?;
        for p in page.user_pools.unwrap_or_default() {
            let Some(id) = p.id else { continue };
            let pool = match client.describe_user_pool().user_pool_id(&id).send().await {
                Ok(out) => out.user_pool.context("DescribeUserPool returned no pool")?,
                // Deleted between the list and now.
                Err(e) if code(&e) == Some("ResourceNotFoundException") => continue,
                Err(e) => return Err(e).op(|| format!("describing user pool {id}")),
            };
            let ours = pool
                .user_pool_tags
                .as_ref()
                .and_then(|t| t.get(TAG_KEY))
                .is_some_and(|v| v == &ctx.deployment);
            if ours {
                found.push(Pool {
                    id,
                    domain: pool.domain.filter(|d| !d.is_empty()),
                    custom_domain: pool.custom_domain.filter(|d| !d.is_empty()),
                    created: pool.creation_date.map(|d| d.secs()).unwrap_or(i64::MAX),
                });
            }
        }
    }
    Ok(found)
}

/// The pool to keep: the one holding our prefix, else the oldest.
fn choose(mut pools: Vec<Pool>, prefix: &str) -> (Option<Pool>, Vec<Pool>) {
    pools.sort_by_key(|p| (p.domain.as_deref() != Some(prefix), p.created, p.id.clone()));
    let mut it = pools.into_iter();
    (it.next(), it.collect())
}

async fn observe_prefix(ctx: &Ctx) -> Result<Prefix> {
    let prefix = &ctx.config.authentication.domain_prefix;
    let out = idp(ctx)
        .describe_user_pool_domain()
        .domain(prefix)
        .send()
        .await
        .op(|| format!("looking up Cognito domain {prefix} in {}", ctx.aws.region))?;
    // A free prefix comes back as an empty description, not an error.
    Ok(
        match out.domain_description.and_then(|d| {
            let status = d.status.map(|s| s.as_str().to_string()).unwrap_or_default();
            d.user_pool_id.filter(|id| !id.is_empty()).map(|id| (id, status))
        }) {
            Some((pool_id, status)) => Prefix::Pool { pool_id, status },
            None => Prefix::Free,
        },
    )
}

fn strings<T: AsRef<str>>(v: Option<Vec<T>>) -> BTreeSet<String> {
    v.unwrap_or_default()
        .iter()
        .map(|s| s.as_ref().to_string())
        .collect()
}

async fn observe_clients(ctx: &Ctx, pool: &str, name: &str) -> Result<(Option<AppClient>, Vec<String>)> {
    let client = idp(ctx);
    let mut found = Vec::new();
    let mut pages = client
        .list_user_pool_clients()
        .user_pool_id(pool)
        .max_results(60)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing app clients of user pool {pool}"))?;
        for c in page.user_pool_clients.unwrap_or_default() {
            if c.client_name.as_deref() != Some(name) {
                continue;
            }
            let Some(id) = c.client_id else { continue };
            let c = client
                .describe_user_pool_client()
                .user_pool_id(pool)
                .client_id(&id)
                .send()
                .await
                .op(|| format!("describing app client {id} of user pool {pool}"))?
                .user_pool_client
                .context("DescribeUserPoolClient returned no client")?;
            found.push(AppClient {
                id,
                secret: c.client_secret.map(Secret::new),
                flows: strings(c.allowed_o_auth_flows),
                scopes: strings(c.allowed_o_auth_scopes),
                callbacks: strings(c.callback_urls),
                identity_providers: strings(c.supported_identity_providers),
                oauth_enabled: c.allowed_o_auth_flows_user_pool_client.unwrap_or(false),
            });
        }
    }
    // Keep one with a secret if there is one.
    found.sort_by_key(|c| (c.secret.is_none(), c.id.clone()));
    let mut it = found.into_iter();
    Ok((it.next(), it.map(|c| c.id).collect()))
}

async fn observe_group(ctx: &Ctx, pool: &str) -> Result<bool> {
    match idp(ctx)
        .get_group()
        .user_pool_id(pool)
        .group_name(GROUP_NAME)
        .send()
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(false),
        Err(e) => Err(e).op(|| format!("reading group {GROUP_NAME} of user pool {pool}")),
    }
}

fn email_of(attrs: &[AttributeType]) -> Option<String> {
    attrs
        .iter()
        .find(|a| a.name == "email")
        .and_then(|a| a.value.clone())
}

/// The configured user by AdminGetUser: only "UserNotFoundException" means
/// absent (moto answers some errors with HTTP 500; those stay errors).
async fn observe_user(ctx: &Ctx, pool: &str, name: &str) -> Result<Option<User>> {
    let client = idp(ctx);
    let out = match client
        .admin_get_user()
        .user_pool_id(pool)
        .username(name)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if code(&e) == Some("UserNotFoundException") => return Ok(None),
        Err(e) => return Err(e).op(|| format!("reading user {name} of user pool {pool}")),
    };
    let mut in_group = false;
    let mut pages = client
        .admin_list_groups_for_user()
        .user_pool_id(pool)
        .username(name)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing the groups of user {name}"))?;
        in_group |= page
            .groups
            .unwrap_or_default()
            .iter()
            .any(|g| g.group_name.as_deref() == Some(GROUP_NAME));
    }
    Ok(Some(User {
        name: out.username,
        email: email_of(out.user_attributes.as_deref().unwrap_or_default()),
        status: out
            .user_status
            .map(|s| s.as_str().to_string())
            .unwrap_or_default(),
        enabled: out.enabled,
        in_group,
    }))
}

/// Everyone else in the pool, for `status` only.
async fn observe_other_users(ctx: &Ctx, pool: &str, name: &str) -> Result<Vec<User>> {
    let mut others = Vec::new();
    let mut pages = idp(ctx).list_users().user_pool_id(pool).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing the users of user pool {pool}"))?;
        for u in page.users.unwrap_or_default() {
            let Some(username) = u.username.clone() else {
                continue;
            };
            if username == name {
                continue;
            }
            others.push(User {
                name: username,
                email: email_of(u.attributes.as_deref().unwrap_or_default()),
                status: u.user_status.map(|s| s.as_str().to_string()).unwrap_or_default(),
                enabled: u.enabled,
                in_group: false,
            });
        }
    }
    Ok(others)
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    CreatePool,
    DeletePool(String),
    CreateDomain,
    /// The pool has another prefix: remove it, then add ours.
    ReplaceDomain(String),
    DeleteDomain {
        domain: String,
        pool: String,
    },
    CreateClient,
    UpdateClient,
    /// A client without a secret cannot get one: delete and create.
    ReplaceClient(String),
    DeleteClient(String),
    CreateGroup,
    /// AdminCreateUser with an EMAIL invitation; only for a user that
    /// AdminGetUser did not find.
    CreateUser,
    /// AdminUpdateUserAttributes: no invitation.
    UpdateEmail,
    AddToGroup,
    WriteParam(&'static str),
    DeleteParam(&'static str),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn known_or_later(v: Option<&str>) -> Value {
    v.map(Value::known).unwrap_or(Value::KnownAfterApply)
}

fn join(s: &BTreeSet<String>) -> Value {
    Value::known(s.iter().cloned().collect::<Vec<_>>().join(","))
}

/// Why the client's settings differ from the desired ones, field by field.
fn client_diff(want: &Desired, c: &AppClient) -> Vec<(&'static str, Value, Value)> {
    let mut diff = Vec::new();
    let callbacks = want.callbacks(Some(c));
    let ui_old = c.callbacks.iter().find(|u| is_ui_callback(u)).map(Value::known);
    let ui_new = want.ui_callback_value(Some(c));
    // "Later": the UI callback is added once the load balancer exists.
    let ui_pending = want.lb == Lb::Later && ui_old.is_none();
    if callbacks != c.callbacks || ui_pending {
        if ui_old != ui_new {
            diff.push((
                "callback_url:nomad-ui",
                ui_old.unwrap_or(Value::known("(none)")),
                ui_new.unwrap_or(Value::known("(none)")),
            ));
        }
        let others = |s: &BTreeSet<String>| -> BTreeSet<String> {
            s.iter().filter(|u| !is_ui_callback(u)).cloned().collect()
        };
        if others(&callbacks) != others(&c.callbacks) {
            diff.push((
                "callback_urls",
                join(&others(&c.callbacks)),
                join(&others(&callbacks)),
            ));
        }
    }
    if c.flows != set(&FLOWS) {
        diff.push(("oauth_flows", join(&c.flows), join(&set(&FLOWS))));
    }
    if c.scopes != set(&SCOPES) {
        diff.push(("oauth_scopes", join(&c.scopes), join(&set(&SCOPES))));
    }
    if c.identity_providers != set(&IDENTITY_PROVIDERS) {
        diff.push((
            "identity_providers",
            join(&c.identity_providers),
            join(&set(&IDENTITY_PROVIDERS)),
        ));
    }
    if !c.oauth_enabled {
        diff.push(("oauth_enabled", Value::known("false"), Value::known("true")));
    }
    diff
}

/// The whole plan for `up`, pure: desired state against observed state.
pub fn plan(want: &Desired, o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let user_address = format!("cognito/user:{}", want.username);
    let membership = format!("cognito/membership:{}/{GROUP_NAME}", want.username);

    // The pool.
    let pool = o.pool.as_ref();
    if pool.is_none() {
        steps.push(planned(
            Change::new(POOL, Action::Create, "no user pool tagged for this deployment").field(
                "name",
                None,
                Value::known(&want.pool_name),
            ),
            Op::CreatePool,
        ));
    }
    for twin in &o.twin_pools {
        for domain in twin.domain.iter().chain(&twin.custom_domain) {
            steps.push(planned(
                Change::new(
                    format!("{DOMAIN}#{domain}"),
                    Action::Delete,
                    "domain of a duplicate user pool",
                ),
                Op::DeleteDomain {
                    domain: domain.clone(),
                    pool: twin.id.clone(),
                },
            ));
        }
        steps.push(planned(
            Change::new(
                format!("{POOL}#{}", twin.id),
                Action::Delete,
                "duplicate user pool with this deployment's tag",
            ),
            Op::DeletePool(twin.id.clone()),
        ));
    }

    // The hosted domain.
    let prefix = &want.domain_prefix;
    let holder = match &o.prefix {
        Prefix::Pool { pool_id, .. } => Some(pool_id.as_str()),
        Prefix::Free => None,
    };
    let ours = pool.is_some_and(|p| holder == Some(p.id.as_str()));
    if !ours {
        let taken_by = holder.filter(|h| !o.twin_pools.iter().any(|t| t.id == *h));
        let reason = match taken_by {
            Some(other) => format!(
                "prefix {prefix:?} belongs to user pool {other}; apply will fail: choose another authentication.domain_prefix"
            ),
            None => "missing".to_string(),
        };
        let current = pool.and_then(|p| p.domain.clone());
        let (action, op) = match &current {
            Some(old) => (Action::Replace, Op::ReplaceDomain(old.clone())),
            None => (Action::Create, Op::CreateDomain),
        };
        let reason = if current.is_some() && taken_by.is_none() {
            "domain prefix changed".to_string()
        } else {
            reason
        };
        steps.push(planned(
            Change::new(DOMAIN, action, reason).field(
                "domain",
                current.as_deref().map(Value::known),
                Value::known(hosted_domain(prefix, &want.region)),
            ),
            op,
        ));
    }

    // The app client.
    match &o.client {
        None => {
            let mut change = Change::new(CLIENT, Action::Create, "missing")
                .field("name", None, Value::known(&want.client_name))
                .field("oauth_flows", None, join(&set(&FLOWS)))
                .field("oauth_scopes", None, join(&set(&SCOPES)))
                .field("secret", None, Value::Sensitive);
            if let Some(ui) = want.ui_callback_value(None) {
                change = change.field("callback_url:nomad-ui", None, ui);
            }
            change = change.field("callback_url:nomad-cli", None, Value::known(CLI_CALLBACK));
            steps.push(planned(change, Op::CreateClient));
        }
        Some(c) if c.secret.is_none() => steps.push(planned(
            Change::new(
                CLIENT,
                Action::Replace,
                "client has no secret; Cognito cannot add one",
            )
            .field("secret", None, Value::Sensitive),
            Op::ReplaceClient(c.id.clone()),
        )),
        Some(c) => {
            let diff = client_diff(want, c);
            if !diff.is_empty() {
                let mut change = Change::new(CLIENT, Action::Update, "settings differ");
                for (name, old, new) in diff {
                    change = change.field(name, Some(old), new);
                }
                steps.push(planned(change, Op::UpdateClient));
            }
        }
    }
    for id in &o.twin_clients {
        steps.push(planned(
            Change::new(
                format!("{CLIENT}#{id}"),
                Action::Delete,
                "duplicate app client with this deployment's name",
            ),
            Op::DeleteClient(id.clone()),
        ));
    }

    // Group, user, membership.
    if !o.group {
        steps.push(planned(
            Change::new(format!("cognito/group:{GROUP_NAME}"), Action::Create, "missing"),
            Op::CreateGroup,
        ));
    }
    match &o.user {
        None => steps.push(planned(
            Change::new(&user_address, Action::Create, "missing; invited by email").field(
                "email",
                None,
                Value::known(&want.email),
            ),
            Op::CreateUser,
        )),
        Some(u) if u.email.as_deref() != Some(want.email.as_str()) => steps.push(planned(
            Change::new(&user_address, Action::Update, "email differs; not invited again").field(
                "email",
                u.email.as_deref().map(Value::known),
                Value::known(&want.email),
            ),
            Op::UpdateEmail,
        )),
        Some(_) => {}
    }
    if !o.user.as_ref().is_some_and(|u| u.in_group) {
        steps.push(planned(
            Change::new(membership, Action::Create, "not in the group"),
            Op::AddToGroup,
        ));
    }

    // Outputs.
    let client_stays = steps
        .iter()
        .all(|s| !matches!(s.op, Op::CreateClient | Op::ReplaceClient(_)));
    let client = o.client.as_ref().filter(|_| client_stays);
    let desired = [
        (
            outputs::COGNITO_USER_POOL_ID,
            known_or_later(pool.map(|p| p.id.as_str())),
            Kind::Plain,
        ),
        (
            outputs::COGNITO_CLIENT_ID,
            known_or_later(client.map(|c| c.id.as_str())),
            Kind::Plain,
        ),
        (
            outputs::COGNITO_CLIENT_SECRET,
            known_or_later(client.and_then(|c| c.secret.as_ref()).map(Secret::expose)),
            Kind::Secure,
        ),
        (
            outputs::COGNITO_DOMAIN,
            Value::known(hosted_domain(prefix, &want.region)),
            Kind::Plain,
        ),
    ];
    for (name, value, kind) in desired {
        if let Some(change) = plan_param(name, &value, o.params.get(name), kind) {
            steps.push(planned(change, Op::WriteParam(name)));
        }
    }
    steps
}

/// `cloud down`: outputs, then each pool's domain before the pool (AWS
/// refuses to delete a pool that still has one). The pool takes its
/// clients, group and users with it.
pub fn plan_down(o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    for name in PARAMS {
        if o.params.contains_key(name) {
            steps.push(planned(
                crate::outputs::param_removal(name),
                Op::DeleteParam(name),
            ));
        }
    }
    for (i, p) in o.pool.iter().chain(&o.twin_pools).enumerate() {
        let suffix = if i == 0 {
            String::new()
        } else {
            format!("#{}", p.id)
        };
        for domain in p.domain.iter().chain(&p.custom_domain) {
            steps.push(planned(
                Change::new(format!("{DOMAIN}{suffix}"), Action::Delete, "cloud down").field(
                    "domain",
                    Some(Value::known(domain)),
                    Value::known("(deleted)"),
                ),
                Op::DeleteDomain {
                    domain: domain.clone(),
                    pool: p.id.clone(),
                },
            ));
        }
        steps.push(planned(
            Change::new(
                format!("{POOL}{suffix}"),
                Action::Delete,
                "cloud down; removes its clients, groups and users",
            )
            .field("id", Some(Value::known(&p.id)), Value::known("(deleted)")),
            Op::DeletePool(p.id.clone()),
        ));
    }
    steps
}

/// What the ACL component reads: the OIDC issuer and the client id.
pub fn exports_of(o: &Observed, planned: &[Planned<Op>]) -> Exports {
    let pool_later = planned.iter().any(|p| p.op == Op::CreatePool);
    let client_later = planned
        .iter()
        .any(|p| matches!(p.op, Op::CreateClient | Op::ReplaceClient(_)));
    let pool = o.pool.as_ref().filter(|_| !pool_later);
    let client = o.client.as_ref().filter(|_| !client_later && !pool_later);
    Exports::from([
        (
            "cognito_discovery_url",
            known_or_later(pool.map(|p| discovery_url(&o.region, &p.id)).as_deref()),
        ),
        ("cognito_client_id", known_or_later(client.map(|c| c.id.as_str()))),
    ])
}

// ---- apply ---------------------------------------------------------------

fn attributes(email: &str) -> Result<Vec<AttributeType>> {
    // The administrator typed this address: no verification mail on top of
    // the invitation.
    Ok(vec![
        AttributeType::builder().name("email").value(email).build()?,
        AttributeType::builder()
            .name("email_verified")
            .value("true")
            .build()?,
    ])
}

fn flows() -> Vec<OAuthFlowType> {
    FLOWS.iter().map(|f| OAuthFlowType::from(*f)).collect()
}

fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// Callback URLs in the reference's order: the UI's, then the CLI's.
fn ordered(urls: &BTreeSet<String>) -> Vec<String> {
    let mut v: Vec<String> = urls.iter().cloned().collect();
    v.sort_by_key(|u| (!is_ui_callback(u), u.clone()));
    v
}

/// Deletes treat "already gone" as done (the cleanup contract).
fn gone<T, E, R>(
    result: std::result::Result<T, aws_sdk_ssm::error::SdkError<E, R>>,
) -> std::result::Result<(), aws_sdk_ssm::error::SdkError<E, R>>
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    match result {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some("ResourceNotFoundException") => Ok(()),
        Err(e) => Err(e),
    }
}

fn pool_id(o: &Observed) -> Result<String> {
    o.pool
        .as_ref()
        .map(|p| p.id.clone())
        .context("the user pool must exist first")
}

async fn create_domain(ctx: &Ctx, want: &Desired, o: &mut Observed) -> Result<()> {
    let pool = pool_id(o)?;
    let prefix = &want.domain_prefix;
    // moto hands a taken prefix to the new pool; AWS refuses. Check first
    // so both behave the same and the user gets the reason.
    if let Prefix::Pool { pool_id: other, .. } = &o.prefix {
        if *other != pool {
            bail!(crate::error::User::new(
                format!("Cognito domain prefix {prefix:?} already belongs to user pool {other}"),
                "choose another `authentication.domain_prefix` in deployment.json"
            ));
        }
    }
    idp(ctx)
        .create_user_pool_domain()
        .user_pool_id(&pool)
        .domain(prefix)
        .send()
        .await
        .op(|| format!("creating Cognito domain {prefix} for user pool {pool}"))?;
    o.prefix = Prefix::Pool {
        pool_id: pool.clone(),
        status: "CREATING".into(),
    };
    if let Some(p) = o.pool.as_mut() {
        p.domain = Some(prefix.clone());
    }
    Ok(())
}

async fn create_client(ctx: &Ctx, want: &Desired, o: &mut Observed) -> Result<()> {
    let pool = pool_id(o)?;
    let callbacks = want.callbacks(None);
    let out = idp(ctx)
        .create_user_pool_client()
        .user_pool_id(&pool)
        .client_name(&want.client_name)
        .generate_secret(true)
        .set_allowed_o_auth_flows(Some(flows()))
        .allowed_o_auth_flows_user_pool_client(true)
        .set_allowed_o_auth_scopes(Some(strs(&SCOPES)))
        .set_callback_urls(Some(ordered(&callbacks)))
        .set_supported_identity_providers(Some(strs(&IDENTITY_PROVIDERS)))
        .send()
        .await
        .op(|| format!("creating app client {} in user pool {pool}", want.client_name))?;
    let c = out
        .user_pool_client
        .context("CreateUserPoolClient returned no client")?;
    o.client = Some(AppClient {
        id: c.client_id.context("no client id")?,
        secret: Some(Secret::new(c.client_secret.context("no client secret")?)),
        flows: set(&FLOWS),
        scopes: set(&SCOPES),
        callbacks,
        identity_providers: set(&IDENTITY_PROVIDERS),
        oauth_enabled: true,
    });
    Ok(())
}

impl Component for Auth {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "auth"
    }

    /// Only the load balancer's DNS name (for the UI callback): Cognito
    /// does not wait for the CA, the network or the servers.
    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&["ingress"])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let (pools, prefix, params) =
            tokio::try_join!(observe_pools(ctx), observe_prefix(ctx), ctx.outputs.read(&PARAMS))?;
        let (pool, twin_pools) = choose(pools, &ctx.config.authentication.domain_prefix);
        let mut o = Observed {
            region: ctx.aws.region.clone(),
            pool,
            twin_pools,
            prefix,
            params,
            ..Observed::default()
        };
        if let Some(pool) = &o.pool {
            let client_name = format!("edgectl-{}", ctx.deployment);
            let username = &ctx.config.authentication.username;
            let ((client, twin_clients), group, user, other_users) = tokio::try_join!(
                observe_clients(ctx, &pool.id, &client_name),
                observe_group(ctx, &pool.id),
                observe_user(ctx, &pool.id, username),
                observe_other_users(ctx, &pool.id, username),
            )?;
            o.client = client;
            o.twin_clients = twin_clients;
            o.group = group;
            o.user = user;
            o.other_users = other_users;
        }
        Ok(o)
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        plan(&desired(ctx, inputs), o)
    }

    fn exports(&self, o: &Observed, planned: &[Planned<Op>]) -> Exports {
        exports_of(o, planned)
    }

    async fn apply(&self, ctx: &Ctx, inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let want = desired(ctx, inputs);
        let client = idp(ctx);
        match op {
            Op::CreatePool => {
                // CreateUserPool takes no idempotency token: a twin from a
                // retried create is found by tag and removed by the next plan.
                let out = client
                    .create_user_pool()
                    .pool_name(&want.pool_name)
                    .user_pool_tags(TAG_KEY, &ctx.deployment)
                    .admin_create_user_config(
                        AdminCreateUserConfigType::builder()
                            .allow_admin_create_user_only(true)
                            .build(),
                    )
                    .auto_verified_attributes(VerifiedAttributeType::Email)
                    .send()
                    .await
                    .op(|| format!("creating user pool {} in {}", want.pool_name, ctx.aws.region))?;
                let p = out.user_pool.context("CreateUserPool returned no pool")?;
                o.pool = Some(Pool {
                    id: p.id.context("no user pool id")?,
                    domain: None,
                    custom_domain: None,
                    created: p.creation_date.map(|d| d.secs()).unwrap_or(0),
                });
                // A new pool has nothing inside yet.
                o.client = None;
                o.twin_clients.clear();
                o.group = false;
                o.user = None;
            }
            Op::DeletePool(id) => {
                match gone(client.delete_user_pool().user_pool_id(id).send().await) {
                    Ok(()) => {}
                    // AWS refuses while a domain is still attached; the
                    // domain's deletion may take a moment to register.
                    Err(e)
                        if code(&e) == Some("InvalidParameterException")
                            && crate::aws::describe(&e).to_lowercase().contains("domain") =>
                    {
                        return Ok(Applied::Pending {
                            what: format!("waiting for the domain of user pool {id} to go"),
                            retry_after: Duration::from_secs(5),
                        });
                    }
                    Err(e) => return Err(e).op(|| format!("deleting user pool {id}")),
                }
                if o.pool.as_ref().is_some_and(|p| &p.id == id) {
                    o.pool = None;
                }
                o.twin_pools.retain(|p| &p.id != id);
            }
            Op::CreateDomain => create_domain(ctx, &want, o).await?,
            Op::ReplaceDomain(old) => {
                let pool = pool_id(o)?;
                gone(
                    client
                        .delete_user_pool_domain()
                        .user_pool_id(&pool)
                        .domain(old)
                        .send()
                        .await,
                )
                .op(|| format!("deleting Cognito domain {old} of user pool {pool}"))?;
                if let Some(p) = o.pool.as_mut() {
                    p.domain = None;
                }
                create_domain(ctx, &want, o).await?;
            }
            Op::DeleteDomain { domain, pool } => {
                gone(
                    client
                        .delete_user_pool_domain()
                        .user_pool_id(pool)
                        .domain(domain)
                        .send()
                        .await,
                )
                .op(|| format!("deleting Cognito domain {domain} of user pool {pool}"))?;
                for p in o.pool.iter_mut().chain(o.twin_pools.iter_mut()) {
                    if &p.id == pool {
                        if p.domain.as_ref() == Some(domain) {
                            p.domain = None;
                        }
                        if p.custom_domain.as_ref() == Some(domain) {
                            p.custom_domain = None;
                        }
                    }
                }
                if matches!(&o.prefix, Prefix::Pool { pool_id, .. } if pool_id == pool) {
                    o.prefix = Prefix::Free;
                }
            }
            Op::CreateClient => create_client(ctx, &want, o).await?,
            Op::UpdateClient => {
                let pool = pool_id(o)?;
                let c = o.client.as_mut().context("no app client")?;
                let callbacks = want.callbacks(Some(c));
                let settled = c.callbacks == callbacks
                    && c.flows == set(&FLOWS)
                    && c.scopes == set(&SCOPES)
                    && c.identity_providers == set(&IDENTITY_PROVIDERS)
                    && c.oauth_enabled;
                // Planned while the load balancer was still to come and it
                // did not come: nothing to write yet.
                if !settled {
                    // UpdateUserPoolClient resets every field it is not
                    // given (moto merges instead): always send them all.
                    client
                        .update_user_pool_client()
                        .user_pool_id(&pool)
                        .client_id(&c.id)
                        .client_name(&want.client_name)
                        .set_allowed_o_auth_flows(Some(flows()))
                        .allowed_o_auth_flows_user_pool_client(true)
                        .set_allowed_o_auth_scopes(Some(strs(&SCOPES)))
                        .set_callback_urls(Some(ordered(&callbacks)))
                        .set_supported_identity_providers(Some(strs(&IDENTITY_PROVIDERS)))
                        .send()
                        .await
                        .op(|| format!("updating app client {} of user pool {pool}", c.id))?;
                    c.callbacks = callbacks;
                    c.flows = set(&FLOWS);
                    c.scopes = set(&SCOPES);
                    c.identity_providers = set(&IDENTITY_PROVIDERS);
                    c.oauth_enabled = true;
                }
            }
            Op::ReplaceClient(old) => {
                let pool = pool_id(o)?;
                gone(
                    client
                        .delete_user_pool_client()
                        .user_pool_id(&pool)
                        .client_id(old)
                        .send()
                        .await,
                )
                .op(|| format!("deleting app client {old} of user pool {pool}"))?;
                o.client = None;
                create_client(ctx, &want, o).await?;
            }
            Op::DeleteClient(id) => {
                let pool = pool_id(o)?;
                gone(
                    client
                        .delete_user_pool_client()
                        .user_pool_id(&pool)
                        .client_id(id)
                        .send()
                        .await,
                )
                .op(|| format!("deleting app client {id} of user pool {pool}"))?;
                o.twin_clients.retain(|c| c != id);
            }
            Op::CreateGroup => {
                let pool = pool_id(o)?;
                match client
                    .create_group()
                    .user_pool_id(&pool)
                    .group_name(GROUP_NAME)
                    .description("Nomad operators: mapped to the ACL role engineering-role (edgectl)")
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if code(&e) == Some("GroupExistsException") => {}
                    Err(e) => {
                        return Err(e).op(|| format!("creating group {GROUP_NAME} in user pool {pool}"))
                    }
                }
                o.group = true;
            }
            Op::CreateUser => {
                let pool = pool_id(o)?;
                let name = &want.username;
                // Never RESEND: one invitation per user, ever. A user made
                // by a run that died before it could say so is adopted.
                match client
                    .admin_create_user()
                    .user_pool_id(&pool)
                    .username(name)
                    .set_user_attributes(Some(attributes(&want.email)?))
                    .desired_delivery_mediums(DeliveryMediumType::Email)
                    .send()
                    .await
                {
                    Ok(_) => {}
                    Err(e) if code(&e) == Some("UsernameExistsException") => {}
                    Err(e) => return Err(e).op(|| format!("creating user {name} in user pool {pool}")),
                }
                o.user = Some(User {
                    name: name.clone(),
                    email: Some(want.email.clone()),
                    status: "FORCE_CHANGE_PASSWORD".into(),
                    enabled: true,
                    in_group: false,
                });
            }
            Op::UpdateEmail => {
                let pool = pool_id(o)?;
                let name = &want.username;
                client
                    .admin_update_user_attributes()
                    .user_pool_id(&pool)
                    .username(name)
                    .set_user_attributes(Some(attributes(&want.email)?))
                    .send()
                    .await
                    .op(|| format!("updating the email of user {name} in user pool {pool}"))?;
                o.user.as_mut().context("no user")?.email = Some(want.email.clone());
            }
            Op::AddToGroup => {
                let pool = pool_id(o)?;
                let name = &want.username;
                client
                    .admin_add_user_to_group()
                    .user_pool_id(&pool)
                    .username(name)
                    .group_name(GROUP_NAME)
                    .send()
                    .await
                    .op(|| format!("adding user {name} to group {GROUP_NAME} in user pool {pool}"))?;
                o.user.as_mut().context("no user")?.in_group = true;
            }
            Op::WriteParam(param) => {
                let (value, kind) = match *param {
                    outputs::COGNITO_USER_POOL_ID => (o.pool.as_ref().map(|p| p.id.clone()), Kind::Plain),
                    outputs::COGNITO_CLIENT_ID => (o.client.as_ref().map(|c| c.id.clone()), Kind::Plain),
                    outputs::COGNITO_CLIENT_SECRET => (
                        o.client
                            .as_ref()
                            .and_then(|c| c.secret.as_ref())
                            .map(|s| s.expose().to_string()),
                        Kind::Secure,
                    ),
                    _ => (
                        Some(hosted_domain(&want.domain_prefix, &want.region)),
                        Kind::Plain,
                    ),
                };
                let value = value.with_context(|| format!("{param}: its resource does not exist"))?;
                ctx.outputs
                    .write(param, &value, kind, o.params.contains_key(*param))
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
        plan_down(o)
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let row = |address: String, state: String, id: String| StatusRow { address, state, id };
        let mut rows = vec![row(
            POOL.into(),
            if o.pool.is_some() { "present" } else { "absent" }.into(),
            o.pool.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
        )];
        let Some(pool) = &o.pool else {
            return rows;
        };
        rows.push(match &o.prefix {
            Prefix::Pool { pool_id, status } if *pool_id == pool.id => row(
                DOMAIN.into(),
                if status.is_empty() {
                    "present".into()
                } else {
                    status.to_lowercase()
                },
                hosted_domain(pool.domain.as_deref().unwrap_or_default(), &o.region),
            ),
            Prefix::Pool { pool_id, .. } => row(
                DOMAIN.into(),
                "prefix taken".into(),
                format!("by user pool {pool_id}"),
            ),
            Prefix::Free => row(DOMAIN.into(), "absent".into(), String::new()),
        });
        rows.push(row(
            CLIENT.into(),
            match &o.client {
                Some(c) if c.secret.is_some() => "present".into(),
                Some(_) => "present, no secret".into(),
                None => "absent".into(),
            },
            o.client.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
        ));
        rows.push(row(
            format!("cognito/group:{GROUP_NAME}"),
            if o.group { "present" } else { "absent" }.into(),
            String::new(),
        ));
        let describe = |u: &User| {
            let mut s = u.status.to_lowercase();
            if !u.enabled {
                s.push_str(", disabled");
            }
            s
        };
        if let Some(u) = &o.user {
            rows.push(row(
                format!("cognito/user:{}", u.name),
                format!(
                    "{}{}",
                    describe(u),
                    if u.in_group {
                        format!(", in {GROUP_NAME}")
                    } else {
                        String::new()
                    }
                ),
                u.email.clone().unwrap_or_default(),
            ));
        }
        for u in &o.other_users {
            rows.push(row(
                format!("cognito/user:{}", u.name),
                format!("{}, unmanaged: left alone", describe(u)),
                u.email.clone().unwrap_or_default(),
            ));
        }
        for (name, value) in &o.params {
            let id = if *name == outputs::COGNITO_CLIENT_SECRET {
                "(sensitive)".to_string()
            } else {
                value.expose().to_string()
            };
            rows.push(row(format!("ssm:{name}"), "set".into(), id));
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL_ID: &str = "eu-west-1_abc";

    fn want(lb: Lb) -> Desired {
        Desired {
            pool_name: "administrator".into(),
            client_name: "edgectl-default".into(),
            region: "eu-west-1".into(),
            domain_prefix: "robot-fleet-7".into(),
            username: "admin".into(),
            email: "ops@example.com".into(),
            lb,
        }
    }

    fn client(callbacks: &[&str]) -> AppClient {
        AppClient {
            id: "client1".into(),
            secret: Some(Secret::new("s3cret")),
            flows: set(&FLOWS),
            scopes: set(&SCOPES),
            callbacks: set(callbacks),
            identity_providers: set(&IDENTITY_PROVIDERS),
            oauth_enabled: true,
        }
    }

    fn user(name: &str, email: &str, in_group: bool) -> User {
        User {
            name: name.into(),
            email: Some(email.into()),
            status: "FORCE_CHANGE_PASSWORD".into(),
            enabled: true,
            in_group,
        }
    }

    /// Everything in place, with the CLI callback only (no ingress yet).
    fn converged() -> Observed {
        let params = [
            (outputs::COGNITO_USER_POOL_ID, POOL_ID),
            (outputs::COGNITO_CLIENT_ID, "client1"),
            (outputs::COGNITO_CLIENT_SECRET, "s3cret"),
            (
                outputs::COGNITO_DOMAIN,
                "robot-fleet-7.auth.eu-west-1.amazoncognito.com",
            ),
        ];
        Observed {
            region: "eu-west-1".into(),
            pool: Some(Pool {
                id: POOL_ID.into(),
                domain: Some("robot-fleet-7".into()),
                custom_domain: None,
                created: 1,
            }),
            twin_pools: vec![],
            prefix: Prefix::Pool {
                pool_id: POOL_ID.into(),
                status: "ACTIVE".into(),
            },
            client: Some(client(&[CLI_CALLBACK])),
            twin_clients: vec![],
            group: true,
            user: Some(user("admin", "ops@example.com", true)),
            other_users: vec![],
            params: params
                .into_iter()
                .map(|(k, v)| (k.to_string(), Secret::new(v)))
                .collect(),
        }
    }

    fn lines(steps: &[Planned<Op>]) -> Vec<String> {
        steps
            .iter()
            .map(|s| format!("{} {}", s.change.action.marker(), s.change.address))
            .collect()
    }

    fn ops(steps: &[Planned<Op>]) -> Vec<Op> {
        steps.iter().map(|s| s.op.clone()).collect()
    }

    #[test]
    fn empty_account_creates_everything() {
        let o = Observed {
            region: "eu-west-1".into(),
            ..Observed::default()
        };
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(
            lines(&steps),
            [
                "+ cognito/user-pool",
                "+ cognito/domain",
                "+ cognito/client",
                "+ cognito/group:engineering",
                "+ cognito/user:admin",
                "+ cognito/membership:admin/engineering",
                "+ ssm:/infrastructure/cognito/user_pool_id",
                "+ ssm:/infrastructure/cognito/client_id",
                "+ ssm:/infrastructure/cognito/client_secret",
                "+ ssm:/infrastructure/cognito/domain",
            ]
        );
        let secret = &steps[8].change.fields[0];
        assert_eq!(secret.new, Value::KnownAfterApply);
        let domain = &steps[9].change.fields[0];
        assert_eq!(
            domain.new,
            Value::known("robot-fleet-7.auth.eu-west-1.amazoncognito.com")
        );
        // No ingress at all: only the CLI callback is planned.
        let client = &steps[2].change;
        assert!(!client.fields.iter().any(|f| f.name == "callback_url:nomad-ui"));
        let exports = exports_of(&o, &steps);
        assert_eq!(exports["cognito_discovery_url"], Value::KnownAfterApply);
        assert_eq!(exports["cognito_client_id"], Value::KnownAfterApply);
    }

    #[test]
    fn known_after_apply_load_balancer_on_create() {
        let steps = plan(&want(Lb::Later), &Observed::default());
        let client = steps.iter().find(|s| s.op == Op::CreateClient).unwrap();
        let ui = client
            .change
            .fields
            .iter()
            .find(|f| f.name == "callback_url:nomad-ui")
            .unwrap();
        assert_eq!(ui.new, Value::KnownAfterApply);
        // At apply, only what is known is written.
        assert_eq!(want(Lb::Later).callbacks(None), set(&[CLI_CALLBACK]));
    }

    #[test]
    fn no_change() {
        let o = converged();
        assert!(lines(&plan(&want(Lb::Absent), &o)).is_empty());
        let exports = exports_of(&o, &[]);
        assert_eq!(
            exports["cognito_discovery_url"],
            Value::known("https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_abc")
        );
        assert_eq!(exports["cognito_client_id"], Value::known("client1"));
    }

    #[test]
    fn no_change_with_both_callbacks() {
        let mut o = converged();
        let ui = ui_callback("lb-1.elb.eu-west-1.amazonaws.com");
        o.client = Some(client(&[CLI_CALLBACK, &ui]));
        assert!(plan(&want(Lb::Known("lb-1.elb.eu-west-1.amazonaws.com".into())), &o).is_empty());
        // An ingress that is not there (yet) never removes the UI callback.
        assert!(plan(&want(Lb::Absent), &o).is_empty());
    }

    #[test]
    fn load_balancer_becomes_known() {
        let o = converged();
        let steps = plan(&want(Lb::Known("lb-1.example".into())), &o);
        assert_eq!(lines(&steps), ["~ cognito/client"]);
        assert_eq!(steps[0].op, Op::UpdateClient);
        let f = &steps[0].change.fields[0];
        assert_eq!(f.name, "callback_url:nomad-ui");
        assert_eq!(f.old, Some(Value::known("(none)")));
        assert_eq!(
            f.new,
            Value::known("https://lb-1.example:4646/ui/settings/tokens")
        );
        // The reference's order: the UI's callback first.
        let urls = ordered(&want(Lb::Known("lb-1.example".into())).callbacks(o.client.as_ref()));
        assert_eq!(urls, [ui_callback("lb-1.example"), CLI_CALLBACK.to_string()]);
    }

    #[test]
    fn load_balancer_made_in_this_run() {
        let steps = plan(&want(Lb::Later), &converged());
        assert_eq!(lines(&steps), ["~ cognito/client"]);
        assert_eq!(steps[0].change.fields[0].new, Value::KnownAfterApply);
    }

    #[test]
    fn load_balancer_moved() {
        let mut o = converged();
        o.client = Some(client(&[CLI_CALLBACK, &ui_callback("old.example")]));
        let steps = plan(&want(Lb::Known("new.example".into())), &o);
        assert_eq!(lines(&steps), ["~ cognito/client"]);
        let f = &steps[0].change.fields[0];
        assert_eq!(f.old, Some(Value::known(ui_callback("old.example"))));
    }

    #[test]
    fn client_settings_drift() {
        let mut o = converged();
        let c = o.client.as_mut().unwrap();
        c.scopes = set(&["openid"]);
        c.flows = set(&["code"]);
        c.oauth_enabled = false;
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(lines(&steps), ["~ cognito/client"]);
        let names: Vec<&str> = steps[0].change.fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["oauth_flows", "oauth_scopes", "oauth_enabled"]);
    }

    #[test]
    fn client_without_secret_is_replaced() {
        let mut o = converged();
        o.client.as_mut().unwrap().secret = None;
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(
            lines(&steps),
            [
                "-/+ cognito/client",
                "~ ssm:/infrastructure/cognito/client_id",
                "~ ssm:/infrastructure/cognito/client_secret",
            ]
        );
        assert_eq!(steps[0].op, Op::ReplaceClient("client1".into()));
        assert_eq!(steps[1].change.fields[0].new, Value::KnownAfterApply);
        assert_eq!(
            exports_of(&o, &steps)["cognito_client_id"],
            Value::KnownAfterApply
        );
    }

    #[test]
    fn twin_clients_are_removed() {
        let mut o = converged();
        o.twin_clients = vec!["client2".into()];
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(ops(&steps), [Op::DeleteClient("client2".into())]);
    }

    #[test]
    fn existing_user_is_never_invited_again() {
        let mut o = converged();
        o.user = Some(user("admin", "ops@example.com", false));
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(ops(&steps), [Op::AddToGroup]);
    }

    #[test]
    fn email_differs_updates_in_place() {
        let mut o = converged();
        o.user = Some(user("admin", "old@example.com", true));
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(lines(&steps), ["~ cognito/user:admin"]);
        assert_eq!(steps[0].op, Op::UpdateEmail);
        assert_eq!(
            steps[0].change.fields[0].old,
            Some(Value::known("old@example.com"))
        );
        assert!(!ops(&steps).contains(&Op::CreateUser));
    }

    #[test]
    fn username_changed_creates_the_new_user_and_leaves_the_old_one() {
        let mut o = converged();
        o.user = None;
        o.other_users = vec![user("admin", "ops@example.com", true)];
        let mut w = want(Lb::Absent);
        w.username = "alice".into();
        let steps = plan(&w, &o);
        assert_eq!(
            lines(&steps),
            ["+ cognito/user:alice", "+ cognito/membership:alice/engineering"]
        );
        let rows = Auth.status(&o);
        let old = rows.iter().find(|r| r.address == "cognito/user:admin").unwrap();
        assert!(old.state.contains("unmanaged"), "{old:?}");
    }

    #[test]
    fn group_missing() {
        let mut o = converged();
        o.group = false;
        assert_eq!(ops(&plan(&want(Lb::Absent), &o)), [Op::CreateGroup]);
    }

    #[test]
    fn domain_prefix_taken_by_another_pool() {
        let mut o = converged();
        o.pool.as_mut().unwrap().domain = None;
        o.prefix = Prefix::Pool {
            pool_id: "eu-west-1_other".into(),
            status: "ACTIVE".into(),
        };
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(lines(&steps), ["+ cognito/domain"]);
        assert!(
            steps[0].change.reason.contains("eu-west-1_other")
                && steps[0].change.reason.contains("authentication.domain_prefix"),
            "{}",
            steps[0].change.reason
        );
    }

    #[test]
    fn domain_prefix_changed() {
        let mut o = converged();
        o.pool.as_mut().unwrap().domain = Some("old-prefix".into());
        o.prefix = Prefix::Free;
        o.params.insert(
            outputs::COGNITO_DOMAIN.into(),
            Secret::new("old-prefix.auth.eu-west-1.amazoncognito.com"),
        );
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(
            lines(&steps),
            ["-/+ cognito/domain", "~ ssm:/infrastructure/cognito/domain"]
        );
        assert_eq!(steps[0].op, Op::ReplaceDomain("old-prefix".into()));
    }

    #[test]
    fn twin_pools_are_removed_domain_first() {
        let mut o = converged();
        o.twin_pools = vec![Pool {
            id: "eu-west-1_twin".into(),
            domain: Some("x".into()),
            custom_domain: None,
            created: 2,
        }];
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(
            ops(&steps),
            [
                Op::DeleteDomain {
                    domain: "x".into(),
                    pool: "eu-west-1_twin".into()
                },
                Op::DeletePool("eu-west-1_twin".into()),
            ]
        );
    }

    #[test]
    fn the_pool_holding_our_prefix_is_kept() {
        let pool = |id: &str, domain: Option<&str>, created| Pool {
            id: id.into(),
            domain: domain.map(Into::into),
            custom_domain: None,
            created,
        };
        let (kept, twins) = choose(
            vec![
                pool("a", None, 1),
                pool("b", Some("robot-fleet-7"), 5),
                pool("c", None, 0),
            ],
            "robot-fleet-7",
        );
        assert_eq!(kept.unwrap().id, "b");
        assert_eq!(
            twins.iter().map(|p| p.id.as_str()).collect::<Vec<_>>(),
            ["c", "a"]
        );
    }

    #[test]
    fn down_removes_outputs_then_domain_then_pool() {
        let steps = plan_down(&converged());
        assert_eq!(
            lines(&steps),
            [
                "- ssm:/infrastructure/cognito/user_pool_id",
                "- ssm:/infrastructure/cognito/client_id",
                "- ssm:/infrastructure/cognito/client_secret",
                "- ssm:/infrastructure/cognito/domain",
                "- cognito/domain",
                "- cognito/user-pool",
            ]
        );
        assert!(plan_down(&Observed::default()).is_empty());
    }

    #[test]
    fn status_and_plans_never_show_the_secret() {
        let o = converged();
        let rows = Auth.status(&o);
        let text = format!("{rows:?}");
        assert!(!text.contains("s3cret"), "{text}");
        let mut o = converged();
        o.client.as_mut().unwrap().secret = Some(Secret::new("new-secret"));
        let steps = plan(&want(Lb::Absent), &o);
        assert_eq!(lines(&steps), ["~ ssm:/infrastructure/cognito/client_secret"]);
        let text = serde_json::to_string(&steps[0].change).unwrap();
        assert!(!text.contains("s3cret") && !text.contains("new-secret"), "{text}");
    }
}
