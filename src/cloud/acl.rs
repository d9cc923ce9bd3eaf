//! Nomad's ACL system over HTTPS (mTLS, the server checked against the CA
//! from SSM): wait for a leader, bootstrap crash-safely, then the policy
//! `submit-job`, the OIDC auth method on Cognito, the role
//! `engineering-role`, one binding rule, and a CI token.
//!
//! Crash safety of the bootstrap: the management secret is generated here
//! and stored in SSM *before* Nomad sees it (`BootstrapSecret`), so a run
//! killed at any point leaves either an unbootstrapped cluster or one whose
//! token is in SSM. Nomad's ACL objects carry no tags: they have fixed names.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::error::User;
use crate::nomad::acl::{
    AuthMethod, AuthMethodConfig, BindingRule, BindingRuleStub, BootstrapRequest, Policy, PolicyLink, Role,
    Token, TokenRequest, TokenStub,
};
use crate::nomad::client::{self, api_error, is_unreachable, Client, Retry, Tls};
use crate::outputs::{self, plan_param, Kind};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub struct Acl;

// ---- desired -------------------------------------------------------------

pub const POLICY: &str = "submit-job";
/// The reference's policy, also stored as text in SSM.
pub const POLICY_RULES: &str = r#"agent { policy = "read" }
node  { policy = "read" }
namespace "*" { policy = "write" capabilities = ["submit-job", "read-logs"] }
"#;
pub const AUTH_METHOD: &str = "oidc-auth";
pub const ROLE: &str = "engineering-role";
pub const CI_TOKEN: &str = "edgectl-ci";
const SCOPE: &str = "aws.cognito.signin.user.admin";
const CLI_REDIRECT: &str = "http://localhost:4649/oidc/callback";
const MAX_TOKEN_TTL: &str = "1h0m0s";
const TOKEN_NAME_FORMAT: &str = "${auth_method_type}-${auth_method_name}";
/// Members of the Cognito group `engineering` get the role.
const SELECTOR: &str = r#""engineering" in list.roles"#;
/// How often to look for a leader while the servers elect one.
const POLL: Duration = Duration::from_secs(2);

/// What the auth (Cognito) component exports for us.
const IN_DISCOVERY_URL: &str = "cognito_discovery_url";
const IN_CLIENT_ID: &str = "cognito_client_id";

fn desired_policy() -> Policy {
    Policy {
        name: POLICY.into(),
        description: "Submit jobs and read logs in every namespace (edgectl)".into(),
        rules: POLICY_RULES.into(),
    }
}

fn desired_role() -> Role {
    Role {
        id: String::new(),
        name: ROLE.into(),
        description: "Engineers signed in through Cognito (edgectl)".into(),
        policies: vec![PolicyLink { name: POLICY.into() }],
    }
}

fn desired_rule() -> BindingRule {
    BindingRule {
        id: String::new(),
        description: "Cognito group engineering gets engineering-role (edgectl)".into(),
        auth_method: AUTH_METHOD.into(),
        selector: SELECTOR.into(),
        bind_type: "role".into(),
        bind_name: ROLE.into(),
        create_index: 0,
    }
}

fn desired_ci_token() -> TokenRequest {
    TokenRequest {
        accessor_id: String::new(),
        name: CI_TOKEN.into(),
        r#type: "client".into(),
        policies: vec![POLICY.into()],
        global: false,
    }
}

/// The Cognito inputs of the auth method, each known or not (yet).
struct Oidc {
    discovery_url: Value,
    client_id: Value,
    client_secret: Option<Secret>,
    redirect_uris: Option<Vec<String>>,
}

impl Oidc {
    fn new(inputs: &Exports, o: &Observed, ctx: &Ctx) -> Oidc {
        let get = |k| inputs.get(k).cloned().unwrap_or(Value::KnownAfterApply);
        Oidc {
            discovery_url: get(IN_DISCOVERY_URL),
            client_id: get(IN_CLIENT_ID),
            client_secret: o.params.get(outputs::COGNITO_CLIENT_SECRET).cloned(),
            redirect_uris: ui_url(ctx, &o.params)
                .map(|ui| vec![format!("{ui}/ui/settings/tokens"), CLI_REDIRECT.into()]),
        }
    }

    /// The method when every input is known.
    fn method(&self) -> Option<AuthMethod> {
        let client_id = self.client_id.as_known()?.to_string();
        Some(AuthMethod {
            name: AUTH_METHOD.into(),
            r#type: "OIDC".into(),
            token_locality: "local".into(),
            max_token_ttl: MAX_TOKEN_TTL.into(),
            token_name_format: TOKEN_NAME_FORMAT.into(),
            default: true,
            config: AuthMethodConfig {
                oidc_discovery_url: self.discovery_url.as_known()?.to_string(),
                oidc_client_id: client_id.clone(),
                oidc_client_secret: self.client_secret.clone()?,
                oidc_scopes: vec![SCOPE.into()],
                bound_audiences: vec![client_id],
                allowed_redirect_uris: self.redirect_uris.clone()?,
                claim_mappings: BTreeMap::from([("username".into(), "username".into())]),
                list_claim_mappings: BTreeMap::from([("cognito:groups".into(), "roles".into())]),
            },
        })
    }
}

/// The fields of an auth method edgectl sets, in one comparable value.
fn method_key(m: &AuthMethod) -> impl PartialEq + '_ {
    let c = &m.config;
    (
        (
            &m.r#type,
            &m.token_locality,
            &m.max_token_ttl,
            &m.token_name_format,
            m.default,
        ),
        (&c.oidc_discovery_url, &c.oidc_client_id),
        (&c.oidc_scopes, &c.bound_audiences, &c.allowed_redirect_uris),
        (&c.claim_mappings, &c.list_claim_mappings),
    )
}

/// Whether the observed method is the desired one. Nomad (1.5+) answers
/// `"redacted"` for the client secret: then only the other fields can be
/// compared. A new Cognito client comes with a new client id, which is.
fn method_matches(have: &AuthMethod, want: &AuthMethod) -> bool {
    let secret = have.config.oidc_client_secret.expose();
    let secret_ok =
        secret == "redacted" || secret.is_empty() || secret == want.config.oidc_client_secret.expose();
    secret_ok && method_key(have) == method_key(want)
}

fn rule_matches(a: &BindingRule, b: &BindingRule) -> bool {
    (
        &a.description,
        &a.auth_method,
        &a.selector,
        &a.bind_type,
        &a.bind_name,
    ) == (
        &b.description,
        &b.auth_method,
        &b.selector,
        &b.bind_type,
        &b.bind_name,
    )
}

fn role_matches(a: &Role, b: &Role) -> bool {
    let names = |r: &Role| {
        let mut n: Vec<String> = r.policies.iter().map(|p| p.name.clone()).collect();
        n.sort();
        n
    };
    a.description == b.description && names(a) == names(b)
}

fn token_matches(t: &Token) -> bool {
    let want = desired_ci_token();
    let mut have = t.policies.clone();
    have.sort();
    t.r#type == want.r#type && have == want.policies
}

// ---- where Nomad is ------------------------------------------------------

fn param_names(ctx: &Ctx) -> Vec<String> {
    let (cli_cert, cli_key) = super::pca::Leaf::Cli.params(ctx);
    vec![
        outputs::NOMAD_ENDPOINT.into(),
        outputs::NOMAD_BOOTSTRAP_TOKEN.into(),
        outputs::NOMAD_CI_TOKEN.into(),
        outputs::NOMAD_POLICY_SUBMIT_JOB.into(),
        outputs::COGNITO_CLIENT_SECRET.into(),
        super::pca::ca_chain_param(ctx),
        cli_cert,
        cli_key,
    ]
}

async fn read_params(ctx: &Ctx) -> Result<BTreeMap<String, Secret>> {
    let names = param_names(ctx);
    ctx.outputs
        .read(&names.iter().map(String::as_str).collect::<Vec<_>>())
        .await
}

/// `NOMAD_ADDR`, else the ingress output on Nomad's port; `None` before
/// the control plane exists.
pub(crate) fn target(ctx: &Ctx, params: &BTreeMap<String, Secret>) -> Result<Option<reqwest::Url>> {
    let addr = match ctx.nomad.as_ref().and_then(|n| n.addr.clone()) {
        Some(a) => a,
        None => match params.get(outputs::NOMAD_ENDPOINT) {
            Some(e) => format!("https://{}:{}", e.expose(), client::DEFAULT_PORT),
            None => return Ok(None),
        },
    };
    client::parse_addr(&addr).map(Some)
}

/// Where browsers reach the UI: the ingress (as Cognito's callback URLs
/// name it) even when NOMAD_ADDR points this run elsewhere; NOMAD_ADDR
/// only when there is no ingress.
fn ui_url(ctx: &Ctx, params: &BTreeMap<String, Secret>) -> Option<String> {
    let url = match params.get(outputs::NOMAD_ENDPOINT) {
        Some(e) => client::parse_addr(&format!("https://{}:{}", e.expose(), client::DEFAULT_PORT)).ok()?,
        None => client::parse_addr(ctx.nomad.as_ref()?.addr.as_deref()?).ok()?,
    };
    Some(url.as_str().trim_end_matches('/').to_string())
}

/// The CA and client certificate: `NOMAD_*` files, else edgectl's own from
/// SSM. `None` until the CA exists.
pub(crate) fn tls(ctx: &Ctx, params: &BTreeMap<String, Secret>, url: &reqwest::Url) -> Option<Tls> {
    let env = ctx.nomad.as_ref();
    let ca_pem = env.and_then(|n| n.ca_pem.clone()).or_else(|| {
        params
            .get(&super::pca::ca_chain_param(ctx))
            .map(|s| s.expose().to_string())
    })?;
    let identity = env.and_then(|n| n.identity.clone()).or_else(|| {
        let (cert, key) = super::pca::Leaf::Cli.params(ctx);
        Some((params.get(&cert)?.expose().to_string(), params.get(&key)?.clone()))
    });
    // Our own ingress: its name is the load balancer's, which the server
    // certificate matches only when the regions agree; the certificate
    // always names server.<region>.nomad (as `edgectl env` checks too).
    let region = &ctx.config.cluster.nomad_region;
    let ours = format!("server.{region}.nomad");
    let explicit = env.and_then(|n| n.tls_server_name.as_deref());
    let from_env = env.is_some_and(|n| n.addr.is_some());
    let server_name = client::server_name(url, explicit.or((!from_env).then_some(ours.as_str())), region);
    Some(Tls {
        ca_pem,
        identity,
        server_name,
    })
}

/// Where the management token that works came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Ssm,
    /// `NOMAD_TOKEN`, while the one in SSM is missing or refused: adopted
    /// into SSM so that later runs need no variable.
    Env,
}

/// The first management token Nomad accepts: ours from SSM, else
/// `NOMAD_TOKEN`; or why there is none. A `NOMAD_TOKEN` that Nomad accepts
/// but that is no management token is an error, not a reason to bootstrap:
/// the cluster is bootstrapped (Nomad knows the token), and the user asked
/// for that token. Nomad's own refusal of the first ACL read edgectl makes
/// with it is shown, with the way out.
async fn find_management(
    c: &Client,
    ctx: &Ctx,
    params: &BTreeMap<String, Secret>,
) -> Result<std::result::Result<(Secret, Source), String>> {
    let candidates = [
        (params.get(outputs::NOMAD_BOOTSTRAP_TOKEN).cloned(), Source::Ssm),
        (ctx.nomad.as_ref().and_then(|n| n.token.clone()), Source::Env),
    ];
    let mut why = Vec::new();
    let mut limited = None;
    for (token, source) in candidates {
        let Some(token) = token else { continue };
        let w = match check_token(c, &token).await? {
            TokenCheck::Management => return Ok(Ok((token, source))),
            TokenCheck::Limited(t) => {
                let w = format!("the stored token is a {} token, not management", t.r#type);
                if source == Source::Env {
                    limited = Some((token, t));
                }
                w
            }
            TokenCheck::Refused => "no management token that Nomad accepts".to_string(),
        };
        why.push(match source {
            Source::Ssm => format!("SSM: {w}"),
            Source::Env => format!("NOMAD_TOKEN: {w}"),
        });
    }
    if let Some((token, t)) = limited {
        let ours = why
            .iter()
            .find(|w| w.starts_with("SSM: "))
            .map(|w| format!("{}: {}", outputs::NOMAD_BOOTSTRAP_TOKEN, &w[5..]))
            .unwrap_or_else(|| format!("no token in {}", outputs::NOMAD_BOOTSTRAP_TOKEN));
        return Err(limited_token(c, &token, &t, &ours).await);
    }
    if why.is_empty() {
        why.push("no management token in SSM".into());
    }
    Ok(Err(why.join("; ")))
}

/// NOMAD_TOKEN is a valid token without ACL write (Nomad's ACL endpoints
/// take a management token): the answer Nomad gives it for the first ACL
/// read edgectl needs (listing the tokens), with the way out.
async fn limited_token(c: &Client, token: &Secret, t: &Token, ours: &str) -> anyhow::Error {
    let policies = if t.policies.is_empty() {
        "no policies".to_string()
    } else {
        format!("policies: {}", t.policies.join(", "))
    };
    let user = User::new(
        format!(
            "NOMAD_TOKEN is a {} token ({policies}) without ACL write, and edgectl needs a management token",
            t.r#type
        ),
        format!(
            "managing Nomad's ACLs takes a management token ({ours}): run again with NOMAD_TOKEN set to \
             the cluster's management (bootstrap) token; edgectl stores it in {} and later runs need no \
             NOMAD_TOKEN",
            outputs::NOMAD_BOOTSTRAP_TOKEN
        ),
    );
    match c
        .with_token(token)
        .get::<serde_json::Value>("/v1/acl/tokens")
        .await
    {
        Err(e) => e.context(user),
        // Nomad lists tokens for management tokens only; should that ever
        // change, the token is still no management token.
        Ok(_) => anyhow::Error::new(user),
    }
}

// ---- observed ------------------------------------------------------------

/// Nomad's ACL objects with our names.
#[derive(Debug, Default)]
pub struct Acls {
    policy: Option<Policy>,
    auth_method: Option<AuthMethod>,
    role: Option<Role>,
    /// Binding rules on our auth method; more than one are twins.
    rules: Vec<BindingRule>,
    /// Tokens named [`CI_TOKEN`]; more than one are twins.
    ci: Vec<Token>,
}

#[derive(Debug, Default)]
pub struct Observed {
    params: BTreeMap<String, Secret>,
    /// Why Nomad's ACL objects could not be read (`acls` is then empty).
    unknown: Option<String>,
    acls: Acls,
    /// NOMAD_TOKEN manages the cluster and the token in SSM does not.
    adopt_env_token: bool,
    /// The connection, once apply has made it, and with a valid management
    /// token once we have one.
    conn: Option<Client>,
    management: Option<Client>,
    leader: bool,
    waiting_since: Option<Instant>,
}

fn is_status(err: &anyhow::Error, status: u16) -> bool {
    api_error(err).is_some_and(|e| e.status == status)
}

async fn get_opt<T: serde::de::DeserializeOwned>(c: &Client, path: &str) -> Result<Option<T>> {
    match c.get(path).await {
        Ok(v) => Ok(Some(v)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Everything with our names, read with a management token.
async fn read_acls(m: &Client) -> Result<Acls> {
    let policy_path = format!("/v1/acl/policy/{POLICY}");
    let method_path = format!("/v1/acl/auth-method/{AUTH_METHOD}");
    let (policy, auth_method, roles, rule_stubs, token_stubs) = tokio::try_join!(
        get_opt::<Policy>(m, &policy_path),
        get_opt::<AuthMethod>(m, &method_path),
        m.get::<Vec<Role>>("/v1/acl/roles"),
        m.get::<Vec<BindingRuleStub>>("/v1/acl/binding-rules"),
        m.get::<Vec<TokenStub>>("/v1/acl/tokens"),
    )?;
    let rules =
        futures::future::try_join_all(rule_stubs.iter().filter(|r| r.auth_method == AUTH_METHOD).map(
            |r| async move {
                m.get::<BindingRule>(&format!("/v1/acl/binding-rule/{}", r.id))
                    .await
            },
        ));
    let ci = futures::future::try_join_all(
        token_stubs
            .iter()
            .filter(|t| t.name == CI_TOKEN)
            .map(|t| async move { m.get::<Token>(&format!("/v1/acl/token/{}", t.accessor_id)).await }),
    );
    let (mut rules, mut ci) = tokio::try_join!(rules, ci)?;
    // The oldest rule is the one kept; later ones are twins.
    rules.sort_by(|a, b| (a.create_index, &a.id).cmp(&(b.create_index, &b.id)));
    ci.sort_by(|a, b| a.accessor_id.cmp(&b.accessor_id));
    Ok(Acls {
        policy,
        auth_method,
        role: roles.into_iter().find(|r| r.name == ROLE),
        rules,
        ci,
    })
}

/// `Ok(None)` when Nomad answers and knows a leader; else what we wait for.
/// Without a leader, `/v1/status/leader` answers `""` (older servers) or
/// 500 `No cluster leader`.
async fn no_leader(c: &Client) -> Result<Option<String>> {
    match c.get::<String>("/v1/status/leader").await {
        Ok(l) if !l.is_empty() => Ok(None),
        Ok(_) => Ok(Some(format!("waiting for a Nomad leader at {}", c.addr))),
        Err(e) if is_leaderless(&e) => Ok(Some(format!("waiting for a Nomad leader at {}", c.addr))),
        Err(e) if is_unreachable(&e) => Ok(Some(format!(
            "waiting for Nomad at {} to answer ({})",
            c.addr,
            e.root_cause()
        ))),
        Err(e) => Err(e),
    }
}

fn is_leaderless(e: &anyhow::Error) -> bool {
    api_error(e).is_some_and(|a| a.status == 500 && a.body.to_lowercase().contains("no cluster leader"))
}

/// What Nomad says of one token.
enum TokenCheck {
    Management,
    /// Accepted (so the ACLs are bootstrapped), but no management token.
    Limited(Token),
    /// Unknown to Nomad (or no ACL token at all).
    Refused,
}

/// Whether `token` is a valid management token here.
async fn check_token(c: &Client, token: &Secret) -> Result<TokenCheck> {
    match c.with_token(token).get::<Token>("/v1/acl/token/self").await {
        Ok(t) if t.r#type == "management" => Ok(TokenCheck::Management),
        Ok(t) => Ok(TokenCheck::Limited(t)),
        Err(e) if is_status(&e, 403) || is_status(&e, 404) => Ok(TokenCheck::Refused),
        Err(e) if api_error(&e).is_some_and(|a| a.body.contains("ACL support disabled")) => {
            Err(e.context(User::new(
                format!("ACLs are disabled on Nomad at {}", c.addr),
                "enable them in the servers' configuration: acl { enabled = true }",
            )))
        }
        Err(e) => Err(e),
    }
}

/// Reads what it can: a missing endpoint, CA, leader or token is data (the
/// reason), not an error; TLS failures and Nomad errors are errors.
async fn observe_nomad(
    ctx: &Ctx,
    params: &BTreeMap<String, Secret>,
) -> Result<std::result::Result<(Acls, Source), String>> {
    let Some(url) = target(ctx, params)? else {
        return Ok(Err("no Nomad endpoint yet".into()));
    };
    let Some(tls) = tls(ctx, params, &url) else {
        return Ok(Err("no CA for Nomad yet".into()));
    };
    let retry = Retry::resolve(ctx.nomad.as_ref());
    let c = match Client::new(&url, &tls).await.map(|c| c.with_retry(retry)) {
        Ok(c) => c,
        Err(e) if is_unreachable(&e) => return Ok(Err(format!("{:#}", e))),
        Err(e) => return Err(e),
    };
    if let Some(why) = no_leader(&c).await? {
        return Ok(Err(why));
    }
    match find_management(&c, ctx, params).await? {
        Ok((token, source)) => Ok(Ok((read_acls(&c.with_token(&token)).await?, source))),
        Err(why) => Ok(Err(why)),
    }
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Op {
    StoreBootstrapSecret,
    AdoptEnvToken,
    Bootstrap,
    Policy,
    PolicyParam,
    AuthMethod,
    Role,
    BindingRule,
    DeleteBindingRule(String),
    CiToken,
    DeleteCiToken(String),
    CiParam,
    DeleteParam(String),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn addr(kind: &str, name: &str) -> String {
    format!("nomad:acl/{kind}/{name}")
}

impl Acl {
    fn plan_auth(inputs: &Exports, ctx: &Ctx, o: &Observed, steps: &mut Vec<Planned<Op>>) {
        let oidc = Oidc::new(inputs, o, ctx);
        let want = oidc.method();
        let have = o.acls.auth_method.as_ref();
        if let (Some(w), Some(h)) = (&want, have) {
            if method_matches(h, w) {
                return;
            }
        }
        let (action, why) = match (have, &want) {
            (None, _) if o.unknown.is_some() => (Action::Create, "ACLs not readable yet"),
            (None, _) => (Action::Create, "missing"),
            (Some(_), Some(_)) => (Action::Update, "configuration differs"),
            (Some(_), None) => (Action::Update, "Cognito values known after apply"),
        };
        let secret = if oidc.client_secret.is_some() {
            Value::Sensitive
        } else {
            Value::KnownAfterApply
        };
        let uris = oidc
            .redirect_uris
            .as_ref()
            .map(|u| Value::known(u.join(", ")))
            .unwrap_or(Value::KnownAfterApply);
        steps.push(planned(
            Change::new(addr("auth-method", AUTH_METHOD), action, why)
                .field("type", None, Value::known("OIDC"))
                .field("discovery_url", None, oidc.discovery_url.clone())
                .field("client_id", None, oidc.client_id.clone())
                .field("client_secret", None, secret)
                .field("redirect_uris", None, uris),
            Op::AuthMethod,
        ));
    }
}

impl Component for Acl {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "acl"
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let params = read_params(ctx).await?;
        let (acls, unknown, adopt) = match observe_nomad(ctx, &params).await? {
            Ok((a, source)) => (a, None, source == Source::Env),
            Err(why) => (Acls::default(), Some(why), false),
        };
        Ok(Observed {
            params,
            unknown,
            acls,
            adopt_env_token: adopt,
            ..Observed::default()
        })
    }

    fn plan(&self, ctx: &Ctx, inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        let mut steps = Vec::new();
        let p = &o.params;
        let a = &o.acls;
        let why = |missing: &'static str| o.unknown.clone().unwrap_or_else(|| missing.to_string());
        if let Some(reason) = &o.unknown {
            if !p.contains_key(outputs::NOMAD_BOOTSTRAP_TOKEN) {
                steps.push(planned(
                    Change::new(
                        format!("ssm:{}", outputs::NOMAD_BOOTSTRAP_TOKEN),
                        Action::Create,
                        "the management secret, stored before the bootstrap",
                    )
                    .field("value", None, Value::Sensitive),
                    Op::StoreBootstrapSecret,
                ));
            }
            steps.push(planned(
                Change::new("nomad:acl/bootstrap", Action::Create, reason.clone()).field(
                    "management_token",
                    None,
                    Value::Sensitive,
                ),
                Op::Bootstrap,
            ));
        }
        if o.adopt_env_token {
            let action = if p.contains_key(outputs::NOMAD_BOOTSTRAP_TOKEN) {
                Action::Update
            } else {
                Action::Create
            };
            steps.push(planned(
                Change::new(
                    format!("ssm:{}", outputs::NOMAD_BOOTSTRAP_TOKEN),
                    action,
                    "adopt the management token from NOMAD_TOKEN (the stored one is missing or refused)",
                )
                .field("value", None, Value::Sensitive),
                Op::AdoptEnvToken,
            ));
        }
        let policy = desired_policy();
        match &a.policy {
            Some(have) if have.rules == policy.rules && have.description == policy.description => {}
            have => steps.push(planned(
                Change::new(
                    addr("policy", POLICY),
                    if have.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    },
                    if have.is_some() {
                        "rules differ".into()
                    } else {
                        why("missing")
                    },
                )
                .field(
                    "rules",
                    have.as_ref().map(|h| Value::known(&h.rules)),
                    Value::known(POLICY_RULES),
                ),
                Op::Policy,
            )),
        }
        if let Some(change) = plan_param(
            outputs::NOMAD_POLICY_SUBMIT_JOB,
            &Value::known(POLICY_RULES),
            p.get(outputs::NOMAD_POLICY_SUBMIT_JOB),
            Kind::Plain,
        ) {
            steps.push(planned(change, Op::PolicyParam));
        }
        Self::plan_auth(inputs, ctx, o, &mut steps);
        let role = desired_role();
        match &a.role {
            Some(have) if role_matches(have, &role) => {}
            have => steps.push(planned(
                Change::new(
                    addr("role", ROLE),
                    if have.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    },
                    if have.is_some() {
                        "policies differ".into()
                    } else {
                        why("missing")
                    },
                )
                .field("policies", None, Value::known(POLICY)),
                Op::Role,
            )),
        }
        let rule = desired_rule();
        match a.rules.first() {
            Some(have) if rule_matches(have, &rule) => {}
            have => steps.push(planned(
                Change::new(
                    addr("binding-rule", AUTH_METHOD),
                    if have.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    },
                    if have.is_some() {
                        "fields differ".into()
                    } else {
                        why("missing")
                    },
                )
                .field("selector", None, Value::known(SELECTOR))
                .field("bind", None, Value::known(format!("role {ROLE}"))),
                Op::BindingRule,
            )),
        }
        for twin in a.rules.iter().skip(1) {
            steps.push(planned(
                Change::new(
                    format!("{}#{}", addr("binding-rule", AUTH_METHOD), twin.id),
                    Action::Delete,
                    "a second binding rule on the auth method",
                ),
                Op::DeleteBindingRule(twin.id.clone()),
            ));
        }
        match a.ci.first() {
            Some(t) if token_matches(t) => {}
            have => steps.push(planned(
                Change::new(
                    addr("token", CI_TOKEN),
                    if have.is_some() {
                        Action::Update
                    } else {
                        Action::Create
                    },
                    if have.is_some() {
                        "policies differ".into()
                    } else {
                        why("missing")
                    },
                )
                .field("policies", None, Value::known(POLICY))
                .field("secret", None, Value::Sensitive),
                Op::CiToken,
            )),
        }
        for twin in a.ci.iter().skip(1) {
            steps.push(planned(
                Change::new(
                    format!("{}#{}", addr("token", CI_TOKEN), twin.accessor_id),
                    Action::Delete,
                    "a second token with the CI token's name",
                ),
                Op::DeleteCiToken(twin.accessor_id.clone()),
            ));
        }
        let ci_secret =
            a.ci.first()
                .map(|t| Value::known(t.secret_id.expose()))
                .unwrap_or(Value::KnownAfterApply);
        if let Some(change) = plan_param(
            outputs::NOMAD_CI_TOKEN,
            &ci_secret,
            p.get(outputs::NOMAD_CI_TOKEN),
            Kind::Secure,
        ) {
            steps.push(planned(change, Op::CiParam));
        }
        steps
    }

    fn exports(&self, _o: &Observed, _planned: &[Planned<Op>]) -> Exports {
        Exports::new()
    }

    async fn apply(&self, ctx: &Ctx, inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        match op {
            Op::StoreBootstrapSecret => {
                if !o.params.contains_key(outputs::NOMAD_BOOTSTRAP_TOKEN) {
                    let secret = Secret::new(uuid::Uuid::new_v4().to_string());
                    ctx.outputs
                        .write(
                            outputs::NOMAD_BOOTSTRAP_TOKEN,
                            secret.expose(),
                            Kind::Secure,
                            false,
                        )
                        .await?;
                    o.params.insert(outputs::NOMAD_BOOTSTRAP_TOKEN.into(), secret);
                }
                return Ok(Applied::Done);
            }
            Op::AdoptEnvToken => {
                adopt_env_token(ctx, o).await?;
                return Ok(Applied::Done);
            }
            Op::PolicyParam => {
                let exists = o.params.contains_key(outputs::NOMAD_POLICY_SUBMIT_JOB);
                ctx.outputs
                    .write(
                        outputs::NOMAD_POLICY_SUBMIT_JOB,
                        POLICY_RULES,
                        Kind::Plain,
                        exists,
                    )
                    .await?;
                o.params
                    .insert(outputs::NOMAD_POLICY_SUBMIT_JOB.into(), Secret::new(POLICY_RULES));
                return Ok(Applied::Done);
            }
            Op::DeleteParam(name) => {
                ctx.outputs.delete(&[name.as_str()]).await?;
                o.params.remove(name);
                return Ok(Applied::Done);
            }
            _ => {}
        }
        let conn = match reach(ctx, o).await? {
            Ok(c) => c,
            Err(pending) => return Ok(pending),
        };
        if let Op::Bootstrap = op {
            return bootstrap(ctx, &conn, o).await;
        }
        let m = management(ctx, &conn, o).await?;
        match op {
            Op::Policy => {
                let want = desired_policy();
                if o.acls.policy.as_ref() != Some(&want) {
                    m.idempotent()
                        .post_unit(&format!("/v1/acl/policy/{POLICY}"), &want)
                        .await?;
                    o.acls.policy = Some(want);
                }
            }
            Op::AuthMethod => {
                // Cognito's values, known now if the auth component ran.
                o.params
                    .extend(ctx.outputs.read(&[outputs::COGNITO_CLIENT_SECRET]).await?);
                let Some(want) = Oidc::new(inputs, o, ctx).method() else {
                    tracing::warn!(
                        "{}: waiting for auth: the Cognito user pool, its client and secret are not there yet; \
                         run `edgectl cloud up` again once they are",
                        addr("auth-method", AUTH_METHOD)
                    );
                    return Ok(Applied::Done);
                };
                let same = o
                    .acls
                    .auth_method
                    .as_ref()
                    .is_some_and(|h| method_matches(h, &want));
                if !same {
                    let path = match o.acls.auth_method {
                        Some(_) => format!("/v1/acl/auth-method/{AUTH_METHOD}"),
                        None => "/v1/acl/auth-method".to_string(),
                    };
                    // By name: a repeat updates the same method.
                    let made: AuthMethod = m.idempotent().post(&path, &want).await?;
                    o.acls.auth_method = Some(made);
                }
            }
            Op::Role => {
                let want = desired_role();
                match &o.acls.role {
                    Some(have) if role_matches(have, &want) => {}
                    Some(have) => {
                        let body = Role {
                            id: have.id.clone(),
                            ..want
                        };
                        o.acls.role = Some(
                            m.idempotent()
                                .post(&format!("/v1/acl/role/{}", have.id), &body)
                                .await?,
                        );
                    }
                    None => o.acls.role = Some(m.post("/v1/acl/role", &want).await?),
                }
            }
            Op::BindingRule => {
                if o.acls.auth_method.is_none() {
                    tracing::warn!(
                        "{}: waiting for auth: the auth method {AUTH_METHOD} does not exist yet",
                        addr("binding-rule", AUTH_METHOD)
                    );
                    return Ok(Applied::Done);
                }
                let want = desired_rule();
                // Nomad does not deduplicate binding rules: always update ours.
                match o.acls.rules.first() {
                    Some(have) if rule_matches(have, &want) => {}
                    Some(have) => {
                        let body = BindingRule {
                            id: have.id.clone(),
                            ..want
                        };
                        o.acls.rules[0] = m
                            .idempotent()
                            .post(&format!("/v1/acl/binding-rule/{}", have.id), &body)
                            .await?;
                    }
                    None => o.acls.rules.push(m.post("/v1/acl/binding-rule", &want).await?),
                }
            }
            Op::DeleteBindingRule(id) => {
                m.delete(&format!("/v1/acl/binding-rule/{id}")).await?;
                o.acls.rules.retain(|r| &r.id != id);
            }
            Op::CiToken => match o.acls.ci.first() {
                Some(have) if token_matches(have) => {}
                Some(have) => {
                    let body = TokenRequest {
                        accessor_id: have.accessor_id.clone(),
                        ..desired_ci_token()
                    };
                    o.acls.ci[0] = m
                        .idempotent()
                        .post(&format!("/v1/acl/token/{}", have.accessor_id), &body)
                        .await?;
                }
                None => o
                    .acls
                    .ci
                    .push(m.post("/v1/acl/token", &desired_ci_token()).await?),
            },
            Op::DeleteCiToken(accessor) => {
                m.delete(&format!("/v1/acl/token/{accessor}")).await?;
                o.acls.ci.retain(|t| &t.accessor_id != accessor);
            }
            Op::CiParam => {
                let token = o
                    .acls
                    .ci
                    .first()
                    .context("the CI token must exist before its output")?;
                let secret = token.secret_id.clone();
                if o.params.get(outputs::NOMAD_CI_TOKEN) != Some(&secret) {
                    let exists = o.params.contains_key(outputs::NOMAD_CI_TOKEN);
                    ctx.outputs
                        .write(outputs::NOMAD_CI_TOKEN, secret.expose(), Kind::Secure, exists)
                        .await?;
                    o.params.insert(outputs::NOMAD_CI_TOKEN.into(), secret);
                }
            }
            Op::StoreBootstrapSecret
            | Op::AdoptEnvToken
            | Op::Bootstrap
            | Op::PolicyParam
            | Op::DeleteParam(_) => {
                unreachable!("handled above")
            }
        }
        Ok(Applied::Done)
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        // The ACL objects go with the servers. The bootstrap token stays:
        // deleted while the servers still run, it would leave a cluster no
        // one can administer; it goes when the servers go.
        [outputs::NOMAD_CI_TOKEN, outputs::NOMAD_POLICY_SUBMIT_JOB]
            .into_iter()
            .filter(|n| o.params.contains_key(*n))
            .map(|n| planned(crate::outputs::param_removal(n), Op::DeleteParam(n.to_string())))
            .collect()
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let row = |address: String, state: String, id: String| StatusRow { address, state, id };
        let present = |yes: bool| if yes { "present" } else { "absent" }.to_string();
        let mut rows = vec![row(
            "nomad:acl/bootstrap".into(),
            o.unknown
                .clone()
                .unwrap_or_else(|| "bootstrapped, token in SSM".into()),
            String::new(),
        )];
        if o.unknown.is_none() {
            let a = &o.acls;
            rows.push(row(
                addr("policy", POLICY),
                present(a.policy.is_some()),
                String::new(),
            ));
            rows.push(row(
                addr("auth-method", AUTH_METHOD),
                present(a.auth_method.is_some()),
                String::new(),
            ));
            rows.push(row(
                addr("role", ROLE),
                present(a.role.is_some()),
                a.role.as_ref().map(|r| r.id.clone()).unwrap_or_default(),
            ));
            rows.push(row(
                addr("binding-rule", AUTH_METHOD),
                format!("{} rule(s)", a.rules.len()),
                a.rules.first().map(|r| r.id.clone()).unwrap_or_default(),
            ));
            rows.push(row(
                addr("token", CI_TOKEN),
                present(!a.ci.is_empty()),
                a.ci.first().map(|t| t.accessor_id.clone()).unwrap_or_default(),
            ));
        }
        rows
    }
}

// ---- apply helpers ---------------------------------------------------------

/// A connection to a Nomad with a leader, or the pending wait for one.
/// Reads the endpoint and certificates again: this run may just have
/// made them.
async fn reach(ctx: &Ctx, o: &mut Observed) -> Result<std::result::Result<Client, Applied>> {
    if o.conn.is_none() {
        o.params = read_params(ctx).await?;
        let Some(url) = target(ctx, &o.params)? else {
            bail!(User::new(
                "no Nomad endpoint yet: the control plane is not up",
                format!(
                    "set NOMAD_ADDR to reach an existing cluster (edgectl reads {} once the ingress exists)",
                    outputs::NOMAD_ENDPOINT
                )
            ));
        };
        let Some(tls) = tls(ctx, &o.params, &url) else {
            bail!(User::new(
                format!("no CA certificate to check Nomad at {url} against"),
                format!(
                    "the pca component stores it as {}; or set NOMAD_CACERT",
                    super::pca::ca_chain_param(ctx)
                )
            ));
        };
        match Client::new(&url, &tls).await {
            Ok(c) => o.conn = Some(c.with_retry(Retry::resolve(ctx.nomad.as_ref()))),
            // The load balancer's name may not resolve yet.
            Err(e) if is_unreachable(&e) => {
                return pending(ctx, o, format!("waiting for Nomad at {url}: {}", e.root_cause()))
            }
            Err(e) => return Err(e),
        }
    }
    let conn = o.conn.clone().expect("connected above");
    if o.leader {
        return Ok(Ok(conn));
    }
    let Some(waiting) = no_leader(&conn).await? else {
        o.leader = true;
        o.waiting_since = None;
        return Ok(Ok(conn));
    };
    pending(ctx, o, waiting)
}

/// A wait for Nomad, bounded by `EDGECTL_NOMAD_WAIT` when set (else by
/// `cloud/mod.rs`'s deadline).
fn pending(ctx: &Ctx, o: &mut Observed, waiting: String) -> Result<std::result::Result<Client, Applied>> {
    let since = *o.waiting_since.get_or_insert_with(Instant::now);
    if let Some(limit) = ctx.nomad.as_ref().and_then(|n| n.wait) {
        if since.elapsed() > limit {
            bail!(User::new(
                format!("still {waiting} after {limit:?}"),
                "check that the Nomad servers run and reach each other, or that NOMAD_ADDR is right"
            ));
        }
    }
    Ok(Err(Applied::Pending {
        what: waiting,
        retry_after: POLL,
    }))
}

/// A client with a management token that Nomad accepts; the first time,
/// also re-reads the ACL objects (the plan may have been made blind).
async fn management(ctx: &Ctx, conn: &Client, o: &mut Observed) -> Result<Client> {
    if let Some(m) = &o.management {
        return Ok(m.clone());
    }
    match find_management(conn, ctx, &o.params).await? {
        Ok((token, _)) => {
            let m = conn.with_token(&token);
            o.acls = read_acls(&m).await?;
            o.unknown = None;
            o.management = Some(m.clone());
            Ok(m)
        }
        Err(why) => bail!(lost_token(conn, &why, None)),
    }
}

/// Stores NOMAD_TOKEN as the management token, once it is known to work.
async fn adopt_env_token(ctx: &Ctx, o: &mut Observed) -> Result<()> {
    let token = ctx
        .nomad
        .as_ref()
        .and_then(|n| n.token.clone())
        .context("NOMAD_TOKEN is no longer set")?;
    if o.params.get(outputs::NOMAD_BOOTSTRAP_TOKEN) != Some(&token) {
        let exists = o.params.contains_key(outputs::NOMAD_BOOTSTRAP_TOKEN);
        ctx.outputs
            .write(
                outputs::NOMAD_BOOTSTRAP_TOKEN,
                token.expose(),
                Kind::Secure,
                exists,
            )
            .await?;
        o.params.insert(outputs::NOMAD_BOOTSTRAP_TOKEN.into(), token);
    }
    o.adopt_env_token = false;
    Ok(())
}

/// `POST /v1/acl/bootstrap` with the secret already in SSM. Already done
/// and our secret works: done. Already done and it does not: the token is
/// lost, and only Nomad's reset procedure helps.
async fn bootstrap(ctx: &Ctx, conn: &Client, o: &mut Observed) -> Result<Applied> {
    if let Ok((_, source)) = find_management(conn, ctx, &o.params).await? {
        if source == Source::Env {
            adopt_env_token(ctx, o).await?;
        }
        management(ctx, conn, o).await?;
        return Ok(Applied::Done);
    }
    let secret = o
        .params
        .get(outputs::NOMAD_BOOTSTRAP_TOKEN)
        .cloned()
        .context("the bootstrap secret must be in SSM before the bootstrap")?;
    let body = BootstrapRequest {
        bootstrap_secret: &secret,
    };
    // A repeat after an unseen success answers `already done`, handled below.
    match conn
        .without_token()
        .idempotent()
        .post::<_, Token>("/v1/acl/bootstrap", &body)
        .await
    {
        Ok(_) => {}
        Err(e) if api_error(&e).is_some_and(|a| a.body.contains("already done")) => {
            if !matches!(check_token(conn, &secret).await?, TokenCheck::Management) {
                let body = api_error(&e).map(|a| a.body.clone()).unwrap_or_default();
                bail!(lost_token(conn, "the token in SSM is not accepted", Some(&body)));
            }
        }
        Err(e) if is_leaderless(&e) => {
            o.leader = false;
            return Ok(Applied::Pending {
                what: format!("waiting for a Nomad leader at {}", conn.addr),
                retry_after: POLL,
            });
        }
        Err(e) => return Err(e),
    }
    management(ctx, conn, o).await?;
    Ok(Applied::Done)
}

/// N from Nomad's `ACL bootstrap already done (reset index: N)`.
fn reset_index(answer: &str) -> Option<String> {
    let digits: String = answer
        .split("reset index: ")
        .nth(1)?
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    (!digits.is_empty()).then_some(digits)
}

/// Bootstrapped by someone else, or with a token since lost.
fn lost_token(conn: &Client, why: &str, answer: Option<&str>) -> User {
    let index = answer.and_then(reset_index).unwrap_or_else(|| "<N>".into());
    User::new(
        format!(
            "Nomad at {} is already ACL-bootstrapped, but edgectl has no management token for it ({why}; looked in {} and NOMAD_TOKEN)",
            conn.addr,
            outputs::NOMAD_BOOTSTRAP_TOKEN
        ),
        format!(
            "if you hold a management token, run again with NOMAD_TOKEN set to it; otherwise reset the bootstrap: \
             on the leader server run `echo {index} > <data_dir>/server/acl-bootstrap-reset` (the reset index from \
             Nomad's answer `ACL bootstrap already done (reset index: {index})`) and run `edgectl cloud up` \
             again: it bootstraps with the secret stored in {}",
            outputs::NOMAD_BOOTSTRAP_TOKEN
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_text_is_the_reference() {
        assert!(POLICY_RULES.contains(r#"capabilities = ["submit-job", "read-logs"]"#));
    }

    #[test]
    fn reset_index_from_nomads_answer() {
        assert_eq!(
            reset_index("ACL bootstrap already done (reset index: 17)").as_deref(),
            Some("17")
        );
        assert_eq!(reset_index("Permission denied"), None);
    }

    #[test]
    fn a_redacted_client_secret_is_not_a_change() {
        let want = AuthMethod {
            name: AUTH_METHOD.into(),
            config: AuthMethodConfig {
                oidc_client_id: "c1".into(),
                oidc_client_secret: Secret::new("s1"),
                ..AuthMethodConfig::default()
            },
            ..AuthMethod::default()
        };
        let mut have = want.clone();
        have.config.oidc_client_secret = Secret::new("redacted");
        assert!(method_matches(&have, &want));
        have.config.oidc_client_secret = Secret::new("old");
        assert!(!method_matches(&have, &want));
        have.config.oidc_client_secret = Secret::new("redacted");
        have.config.oidc_client_id = "c2".into();
        assert!(!method_matches(&have, &want));
    }

    #[test]
    fn rule_and_role_comparisons() {
        let mut r = desired_rule();
        r.id = "abc".into();
        assert!(rule_matches(&r, &desired_rule()));
        r.selector = "true".into();
        assert!(!rule_matches(&r, &desired_rule()));
        let mut role = desired_role();
        role.id = "x".into();
        assert!(role_matches(&role, &desired_role()));
        role.policies.push(PolicyLink { name: "other".into() });
        assert!(!role_matches(&role, &desired_role()));
        let t = Token {
            r#type: "client".into(),
            policies: vec![POLICY.into()],
            ..Token::default()
        };
        assert!(token_matches(&t));
    }
}
