//! The private CA (ACM PCA): a ROOT CA activated with its own certificate,
//! the Nomad server and operator CLI certificates it issues, and their SSM
//! outputs.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::outputs::{self, plan_param, Kind};
use crate::pki::{self, Identity};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    Asn1Subject, CertificateAuthorityConfiguration, CertificateAuthorityStatus as Status,
    CertificateAuthorityType, KeyAlgorithm, SigningAlgorithm, Tag, Validity, ValidityPeriodType,
};
use std::collections::BTreeMap;
use std::time::Duration;

pub struct Pca;

pub const ADDRESS: &str = "pca/root";
const ROOT_TEMPLATE: &str = "arn:aws:acm-pca:::template/RootCACertificate/V1";
const ROOT_VALIDITY_YEARS: i64 = 10;
const LEAF_VALIDITY_DAYS: i64 = 365;
/// Certificates are re-issued when they expire within this many days.
pub const RENEW_WITHIN_DAYS: i64 = 30;
const POLL: Duration = Duration::from_secs(3);

// ---- desired -------------------------------------------------------------

/// The reference subject of the sample's CA.
fn subject() -> Asn1Subject {
    Asn1Subject::builder()
        .country("US")
        .organization("Robot Company")
        .organizational_unit("Robot Company Mission Department")
        .state("Washington")
        .common_name("Robot Company")
        .serial_number("001")
        .locality("Seattle")
        .build()
}

/// The two certificates the CA issues for the control plane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leaf {
    Server,
    Cli,
}

impl Leaf {
    const ALL: [Leaf; 2] = [Leaf::Server, Leaf::Cli];

    fn address(self) -> &'static str {
        match self {
            Leaf::Server => "pca/nomad-server-certificate",
            Leaf::Cli => "pca/nomad-cli-certificate",
        }
    }

    pub fn identity(self, nomad_region: &str) -> Identity {
        match self {
            Leaf::Server => {
                let cn = format!("*.elb.{nomad_region}.amazonaws.com");
                Identity {
                    dns: vec![
                        cn.clone(),
                        format!("server.{nomad_region}.nomad"),
                        "localhost".into(),
                    ],
                    common_name: cn,
                    serial_number: None,
                    ips: vec!["127.0.0.1".parse().expect("an IP")],
                }
            }
            Leaf::Cli => {
                let cn = format!("cli.{nomad_region}.nomad");
                Identity {
                    dns: vec![cn.clone(), "localhost".into()],
                    common_name: cn,
                    serial_number: None,
                    ips: Vec::new(),
                }
            }
        }
    }

    /// (certificate, private key) parameter names.
    pub fn params(self, ctx: &Ctx) -> (String, String) {
        let c = &ctx.config.certificates;
        match self {
            Leaf::Server => (
                outputs::certificate(&c.server_cert_secret_name),
                outputs::certificate(&c.server_private_key_secret_name),
            ),
            Leaf::Cli => {
                let region = &ctx.config.cluster.nomad_region;
                (
                    outputs::certificate(&format!("nomad-cli-{region}-Certificate")),
                    outputs::certificate(&format!("nomad-cli-{region}-PrivateKey")),
                )
            }
        }
    }
}

pub fn ca_chain_param(ctx: &Ctx) -> String {
    outputs::certificate(&ctx.config.certificates.ca_cert_secret_name)
}

fn param_names(ctx: &Ctx) -> Vec<String> {
    let mut names = vec![outputs::PCA_ARN.to_string(), ca_chain_param(ctx)];
    for leaf in Leaf::ALL {
        let (c, k) = leaf.params(ctx);
        names.extend([c, k]);
    }
    names
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone)]
pub struct Ca {
    pub arn: String,
    pub status: Status,
    pub cert_pem: Option<String>,
    /// Key algorithm, signing algorithm and subject as desired.
    pub config_matches: bool,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub ca: Option<Ca>,
    /// Further live CAs with our tag: twins from a crash, to be removed.
    pub twins: Vec<Ca>,
    /// Deleted (restorable) CAs with our tag; they seed the create token
    /// so that a create after `down` is not answered with the old CA.
    deleted: Vec<String>,
    params: BTreeMap<String, Secret>,
    /// A root certificate requested but not yet installed.
    root_cert_arn: Option<String>,
    /// A leaf requested but not yet fetched: its key and certificate ARN.
    leaf_in_flight: BTreeMap<&'static str, (Secret, String)>,
}

fn acmpca(ctx: &Ctx) -> aws_sdk_acmpca::Client {
    aws_sdk_acmpca::Client::new(&ctx.aws.config)
}

async fn observe_cas(ctx: &Ctx) -> Result<(Vec<Ca>, Vec<String>)> {
    let client = acmpca(ctx);
    let region = &ctx.aws.region;
    let mut live = Vec::new();
    let mut deleted = Vec::new();
    let mut pages = client.list_certificate_authorities().into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.op(|| format!("listing private CAs in {region}"))?;
        for ca in page.certificate_authorities.unwrap_or_default() {
            let Some(arn) = ca.arn.clone() else { continue };
            let tags = client
                .list_tags()
                .certificate_authority_arn(&arn)
                .send()
                .await
                .op(|| format!("reading the tags of {arn}"))?;
            let ours = tags
                .tags
                .unwrap_or_default()
                .iter()
                .any(|t| t.key == TAG_KEY && t.value.as_deref() == Some(ctx.deployment.as_str()));
            if !ours {
                continue;
            }
            let status = ca.status.clone().unwrap_or(Status::Creating);
            if status == Status::Deleted {
                deleted.push(arn);
                continue;
            }
            let config_matches = ca.certificate_authority_configuration.as_ref().is_some_and(|c| {
                c.key_algorithm == KeyAlgorithm::Rsa2048
                    && c.signing_algorithm == SigningAlgorithm::Sha256Withrsa
                    && c.subject.as_ref() == Some(&subject())
            }) && ca.r#type == Some(CertificateAuthorityType::Root);
            let cert_pem = match status {
                Status::Active | Status::Disabled | Status::Expired => {
                    match client
                        .get_certificate_authority_certificate()
                        .certificate_authority_arn(&arn)
                        .send()
                        .await
                    {
                        Ok(out) => out.certificate,
                        // Some CA states refuse to hand out the certificate;
                        // the plan then falls back to the copy in SSM.
                        Err(e) if code(&e) == Some("InvalidStateException") => None,
                        Err(e) => return Err(e).op(|| format!("reading the certificate of {arn}")),
                    }
                }
                _ => None,
            };
            live.push(Ca {
                arn,
                status,
                cert_pem,
                config_matches,
            });
        }
    }
    deleted.sort();
    Ok((live, deleted))
}

/// Prefer the CA furthest along; the rest are twins.
fn rank(status: &Status) -> u8 {
    match status {
        Status::Active => 0,
        Status::Disabled => 1,
        Status::PendingCertificate => 2,
        Status::Creating => 3,
        Status::Expired => 4,
        _ => 5,
    }
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone)]
pub enum Op {
    CreateCa,
    ReplaceCa(String),
    InstallRootCertificate,
    EnableCa,
    DeleteCa(String),
    Issue(Leaf),
    WriteParam(String),
    DeleteParam(String),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

impl Pca {
    /// The CA's state after the plan: its ARN and certificate when they
    /// stay as they are, `None` when they will only be known after apply.
    fn plan_ca(o: &Observed) -> (Vec<Planned<Op>>, Option<&Ca>) {
        let mut steps = Vec::new();
        let mut kept = None;
        match &o.ca {
            None => {
                steps.push(planned(
                    Change::new(ADDRESS, Action::Create, "no CA tagged for this deployment")
                        .field(
                            "subject",
                            None,
                            Value::known("CN=Robot Company, O=Robot Company, C=US"),
                        )
                        .field("key_algorithm", None, Value::known("RSA_2048")),
                    Op::CreateCa,
                ));
                steps.push(planned(
                    Change::new("pca/root-certificate", Action::Create, "activate the new CA").field(
                        "validity",
                        None,
                        Value::known("10 years"),
                    ),
                    Op::InstallRootCertificate,
                ));
            }
            Some(ca) if !ca.config_matches || matches!(ca.status, Status::Expired | Status::Failed) => {
                let why = if ca.config_matches {
                    "CA is expired or failed"
                } else {
                    "key algorithm, signing algorithm or subject differs"
                };
                steps.push(planned(
                    Change::new(ADDRESS, Action::Replace, why),
                    Op::ReplaceCa(ca.arn.clone()),
                ));
                steps.push(planned(
                    Change::new("pca/root-certificate", Action::Create, "activate the new CA"),
                    Op::InstallRootCertificate,
                ));
            }
            Some(ca) => match ca.status {
                Status::Creating | Status::PendingCertificate => steps.push(planned(
                    Change::new(
                        "pca/root-certificate",
                        Action::Create,
                        "CA awaits its certificate",
                    )
                    .field("ca", None, Value::known(&ca.arn)),
                    Op::InstallRootCertificate,
                )),
                Status::Disabled => {
                    steps.push(planned(
                        Change::new(ADDRESS, Action::Update, "CA is disabled").field(
                            "status",
                            Some(Value::known("DISABLED")),
                            Value::known("ACTIVE"),
                        ),
                        Op::EnableCa,
                    ));
                    kept = Some(ca);
                }
                _ => kept = Some(ca),
            },
        }
        for twin in &o.twins {
            steps.push(planned(
                Change::new(
                    format!("{ADDRESS}#{}", short_id(&twin.arn)),
                    Action::Delete,
                    "duplicate CA with this deployment's tag",
                ),
                Op::DeleteCa(twin.arn.clone()),
            ));
        }
        (steps, kept)
    }
}

fn short_id(arn: &str) -> &str {
    arn.rsplit('/').next().unwrap_or(arn)
}

impl Component for Pca {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "pca"
    }

    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let names = param_names(ctx);
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let ((mut live, deleted), params) = tokio::try_join!(observe_cas(ctx), ctx.outputs.read(&refs))?;
        live.sort_by_key(|ca| rank(&ca.status));
        let mut live = live.into_iter();
        Ok(Observed {
            ca: live.next(),
            twins: live.collect(),
            deleted,
            params,
            ..Observed::default()
        })
    }

    fn plan(&self, ctx: &Ctx, _inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        let (mut steps, kept) = Self::plan_ca(o);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        // A disabled CA may not hand out its certificate: judge the leaves by
        // the copy we stored; a wrong copy shows up once the CA is enabled.
        let ca_pem = kept.and_then(|ca| {
            ca.cert_pem
                .as_deref()
                .or_else(|| o.params.get(&ca_chain_param(ctx)).map(Secret::expose))
        });
        let region = &ctx.config.cluster.nomad_region;
        for leaf in Leaf::ALL {
            let (cert_name, key_name) = leaf.params(ctx);
            let cert = o.params.get(&cert_name).map(Secret::expose);
            let key = o.params.get(&key_name);
            let want = leaf.identity(region);
            if let Some(why) = pki::needs_reissue(cert, key, ca_pem, &want, now, RENEW_WITHIN_DAYS) {
                let action = if cert.is_none() {
                    Action::Create
                } else {
                    Action::Replace
                };
                steps.push(planned(
                    Change::new(leaf.address(), action, why)
                        .field("common_name", None, Value::known(&want.common_name))
                        .field("private_key", None, Value::Sensitive),
                    Op::Issue(leaf),
                ));
            }
        }
        let known = |v: Option<&str>| v.map(Value::known).unwrap_or(Value::KnownAfterApply);
        let desired = [
            (
                outputs::PCA_ARN.to_string(),
                known(kept.map(|ca| ca.arn.as_str())),
            ),
            (ca_chain_param(ctx), known(ca_pem)),
        ];
        for (name, value) in desired {
            if let Some(change) = plan_param(&name, &value, o.params.get(&name), Kind::Plain) {
                steps.push(planned(change, Op::WriteParam(name)));
            }
        }
        steps
    }

    fn exports(&self, o: &Observed, planned: &[Planned<Op>]) -> Exports {
        let replaced = planned
            .iter()
            .any(|p| matches!(p.op, Op::CreateCa | Op::ReplaceCa(_)));
        let arn = match &o.ca {
            Some(ca) if !replaced => Value::known(&ca.arn),
            _ => Value::KnownAfterApply,
        };
        Exports::from([("pca_arn", arn)])
    }

    async fn apply(&self, ctx: &Ctx, _inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let client = acmpca(ctx);
        match op {
            Op::ReplaceCa(old) => {
                delete_ca(&client, old).await?;
                o.deleted.push(old.clone());
                o.ca = None;
                create_ca(ctx, &client, o).await
            }
            Op::CreateCa => create_ca(ctx, &client, o).await,
            Op::InstallRootCertificate => install_root(ctx, &client, o).await,
            Op::EnableCa => {
                let ca = o.ca.as_mut().context("no CA to enable")?;
                client
                    .update_certificate_authority()
                    .certificate_authority_arn(&ca.arn)
                    .status(Status::Active)
                    .send()
                    .await
                    .op(|| format!("enabling {}", ca.arn))?;
                ca.status = Status::Active;
                if ca.cert_pem.is_none() {
                    ca.cert_pem = client
                        .get_certificate_authority_certificate()
                        .certificate_authority_arn(&ca.arn)
                        .send()
                        .await
                        .op(|| format!("reading the certificate of {}", ca.arn))?
                        .certificate;
                }
                Ok(Applied::Done)
            }
            Op::DeleteCa(arn) => {
                delete_ca(&client, arn).await?;
                if o.ca.as_ref().is_some_and(|ca| &ca.arn == arn) {
                    o.ca = None;
                }
                o.twins.retain(|t| &t.arn != arn);
                Ok(Applied::Done)
            }
            Op::Issue(leaf) => issue_leaf(ctx, &client, *leaf, o).await,
            Op::WriteParam(name) => {
                let ca = o.ca.as_ref().context("the CA must exist before its outputs")?;
                let value = if name == outputs::PCA_ARN {
                    ca.arn.clone()
                } else {
                    ca.cert_pem.clone().context("the CA has no certificate yet")?
                };
                let exists = o.params.contains_key(name);
                ctx.outputs.write(name, &value, Kind::Plain, exists).await?;
                o.params.insert(name.clone(), Secret::new(value));
                Ok(Applied::Done)
            }
            Op::DeleteParam(name) => {
                ctx.outputs.delete(&[name.as_str()]).await?;
                o.params.remove(name);
                Ok(Applied::Done)
            }
        }
    }

    fn plan_down(&self, o: &Observed) -> Vec<Planned<Op>> {
        let mut steps: Vec<Planned<Op>> = o
            .params
            .keys()
            .map(|name| planned(crate::outputs::param_removal(name), Op::DeleteParam(name.clone())))
            .collect();
        for ca in o.ca.iter().chain(&o.twins) {
            steps.push(planned(
                Change::new(
                    ADDRESS,
                    Action::Delete,
                    "cloud down: disable, then delete (restorable for 7 days)",
                )
                .field("arn", Some(Value::known(&ca.arn)), Value::known("(deleted)")),
                Op::DeleteCa(ca.arn.clone()),
            ));
        }
        steps
    }

    fn status(&self, o: &Observed) -> Vec<StatusRow> {
        let mut rows = Vec::new();
        match &o.ca {
            Some(ca) => rows.push(StatusRow {
                address: ADDRESS.into(),
                state: ca.status.as_str().to_string(),
                id: ca.arn.clone(),
            }),
            None => rows.push(StatusRow {
                address: ADDRESS.into(),
                state: "absent".into(),
                id: String::new(),
            }),
        }
        for (name, value) in &o.params {
            let state = match pki::facts(value.expose()) {
                Ok(f) if !name.ends_with("PrivateKey") => format!(
                    "certificate {}, expires {}",
                    f.serial_hex,
                    time::OffsetDateTime::from_unix_timestamp(f.not_after)
                        .map(|t| t.date().to_string())
                        .unwrap_or_default()
                ),
                _ if name.ends_with("PrivateKey") => "private key (sensitive)".into(),
                _ => "set".into(),
            };
            let id = if name == outputs::PCA_ARN {
                value.expose().to_string()
            } else {
                String::new()
            };
            rows.push(StatusRow {
                address: format!("ssm:{name}"),
                state,
                id,
            });
        }
        rows
    }
}

/// A new ROOT CA with the reference subject, tagged for this deployment.
async fn create_ca(ctx: &Ctx, client: &aws_sdk_acmpca::Client, o: &mut Observed) -> Result<Applied> {
    let mut seed: Vec<&str> = vec![ctx.deployment.as_str(), ADDRESS];
    seed.extend(o.deleted.iter().map(String::as_str));
    let out = client
        .create_certificate_authority()
        .certificate_authority_type(CertificateAuthorityType::Root)
        .certificate_authority_configuration(
            CertificateAuthorityConfiguration::builder()
                .key_algorithm(KeyAlgorithm::Rsa2048)
                .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
                .subject(subject())
                .build()?,
        )
        .tags(Tag::builder().key(TAG_KEY).value(&ctx.deployment).build()?)
        .idempotency_token(pki::token(&seed))
        .send()
        .await
        .op(|| format!("creating the private CA in {}", ctx.aws.region))?;
    let arn = out
        .certificate_authority_arn
        .context("CreateCertificateAuthority returned no ARN")?;
    o.ca = Some(Ca {
        arn,
        status: Status::Creating,
        cert_pem: None,
        config_matches: true,
    });
    Ok(Applied::Done)
}

/// CREATING → PENDING_CERTIFICATE → (CSR, root certificate issued) → ACTIVE.
async fn install_root(ctx: &Ctx, client: &aws_sdk_acmpca::Client, o: &mut Observed) -> Result<Applied> {
    let ca = o.ca.as_mut().context("no CA to activate")?;
    let arn = ca.arn.clone();
    let pending = |what: &str| Applied::Pending {
        what: what.to_string(),
        retry_after: POLL,
    };
    let csr = match client
        .get_certificate_authority_csr()
        .certificate_authority_arn(&arn)
        .send()
        .await
    {
        Ok(out) => out.csr.context("GetCertificateAuthorityCsr returned no CSR")?,
        Err(e) if code(&e) == Some("RequestInProgressException") => {
            return Ok(pending("waiting for the CA's CSR"))
        }
        Err(e) => return Err(e).op(|| format!("reading the CSR of {arn}")),
    };
    let cert_arn = match &o.root_cert_arn {
        Some(a) => a.clone(),
        None => {
            let out = client
                .issue_certificate()
                .certificate_authority_arn(&arn)
                .csr(Blob::new(csr.as_bytes()))
                .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
                .template_arn(ROOT_TEMPLATE)
                .validity(
                    Validity::builder()
                        .value(ROOT_VALIDITY_YEARS)
                        .r#type(ValidityPeriodType::Years)
                        .build()?,
                )
                .idempotency_token(pki::token(&[&arn, "root-certificate"]))
                .send()
                .await
                .op(|| format!("issuing the root certificate of {arn}"))?;
            let a = out.certificate_arn.context("IssueCertificate returned no ARN")?;
            o.root_cert_arn = Some(a.clone());
            a
        }
    };
    let Some(cert) = fetch_issued(client, &arn, &cert_arn).await? else {
        return Ok(pending("waiting for the root certificate"));
    };
    client
        .import_certificate_authority_certificate()
        .certificate_authority_arn(&arn)
        .certificate(Blob::new(cert.as_bytes()))
        .send()
        .await
        .op(|| format!("installing the root certificate of {arn}"))?;
    let _ = ctx;
    ca.status = Status::Active;
    ca.cert_pem = Some(cert);
    o.root_cert_arn = None;
    Ok(Applied::Done)
}

/// New key in memory, CSR, certificate from the CA; key then certificate
/// to SSM, so a crash between them shows as a mismatch and is re-issued.
async fn issue_leaf(
    ctx: &Ctx,
    client: &aws_sdk_acmpca::Client,
    leaf: Leaf,
    o: &mut Observed,
) -> Result<Applied> {
    let ca = o.ca.as_ref().context("the CA must exist before it issues")?;
    if ca.status != Status::Active {
        bail!("the CA {} is {}, not ACTIVE", ca.arn, ca.status.as_str());
    }
    let arn = ca.arn.clone();
    let (key, cert_arn) = match o.leaf_in_flight.get(leaf.address()) {
        Some(in_flight) => in_flight.clone(),
        None => {
            let id = leaf.identity(&ctx.config.cluster.nomad_region);
            let made = pki::rsa_csr(&id)?;
            let out = client
                .issue_certificate()
                .certificate_authority_arn(&arn)
                .csr(Blob::new(made.csr_pem.as_bytes()))
                .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
                .validity(
                    Validity::builder()
                        .value(LEAF_VALIDITY_DAYS)
                        .r#type(ValidityPeriodType::Days)
                        .build()?,
                )
                .idempotency_token(pki::token(&[&made.csr_pem]))
                .send()
                .await
                .op(|| format!("issuing {} from {arn}", id.common_name))?;
            let cert_arn = out.certificate_arn.context("IssueCertificate returned no ARN")?;
            o.leaf_in_flight
                .insert(leaf.address(), (made.key_pem.clone(), cert_arn.clone()));
            (made.key_pem, cert_arn)
        }
    };
    let Some(cert) = fetch_issued(client, &arn, &cert_arn).await? else {
        return Ok(Applied::Pending {
            what: "waiting for the certificate".into(),
            retry_after: Duration::from_secs(1),
        });
    };
    let (cert_name, key_name) = leaf.params(ctx);
    ctx.outputs
        .write(
            &key_name,
            key.expose(),
            Kind::Secure,
            o.params.contains_key(&key_name),
        )
        .await?;
    o.params.insert(key_name, key);
    ctx.outputs
        .write(&cert_name, &cert, Kind::Plain, o.params.contains_key(&cert_name))
        .await?;
    o.params.insert(cert_name, Secret::new(cert));
    o.leaf_in_flight.remove(leaf.address());
    Ok(Applied::Done)
}

/// An issued certificate, or None while the CA is still signing it.
pub(crate) async fn fetch_issued(
    client: &aws_sdk_acmpca::Client,
    ca_arn: &str,
    cert_arn: &str,
) -> Result<Option<String>> {
    match client
        .get_certificate()
        .certificate_authority_arn(ca_arn)
        .certificate_arn(cert_arn)
        .send()
        .await
    {
        Ok(out) => Ok(Some(
            out.certificate
                .context("GetCertificate returned no certificate")?,
        )),
        Err(e) if code(&e) == Some("RequestInProgressException") => Ok(None),
        Err(e) => Err(e).op(|| format!("reading certificate {cert_arn} of {ca_arn}")),
    }
}

/// Disable (AWS refuses to delete an ACTIVE CA), then delete with the
/// shortest restore window. Already deleted or gone counts as done.
async fn delete_ca(client: &aws_sdk_acmpca::Client, arn: &str) -> Result<()> {
    let described = client
        .describe_certificate_authority()
        .certificate_authority_arn(arn)
        .send()
        .await;
    let status = match described {
        Ok(out) => out.certificate_authority.and_then(|c| c.status),
        Err(e) if code(&e) == Some("ResourceNotFoundException") => return Ok(()),
        Err(e) => return Err(e).op(|| format!("describing {arn}")),
    };
    match status {
        Some(Status::Deleted) => return Ok(()),
        Some(Status::Active) => {
            client
                .update_certificate_authority()
                .certificate_authority_arn(arn)
                .status(Status::Disabled)
                .send()
                .await
                .op(|| format!("disabling {arn}"))?;
        }
        _ => {}
    }
    client
        .delete_certificate_authority()
        .certificate_authority_arn(arn)
        .permanent_deletion_time_in_days(7)
        .send()
        .await
        .op(|| format!("deleting {arn}"))?;
    Ok(())
}
