//! The ECR repository `edgectl image publish` pushes the `iot-publish`
//! image to: scanned on push, tags mutable (the job runs `latest`),
//! encrypted with AES256, a lifecycle policy keeping the last 20 images,
//! and its URI in SSM (`/infrastructure/ecr/iot-publish/uri`).
//!
//! ECR names are unique per account and region, so the repository is found
//! by its fixed name and is ours only when it carries our `edgectl:deployment`
//! tag (ListTagsForResource). A repository of that name without the tag is
//! someone else's: the plan says so, `up` refuses to adopt it, `down` leaves
//! it alone.
//!
//! The deployment `default` owns `iot-publish` (the name the reference job's
//! image points at); any other deployment `<name>` owns `<name>/iot-publish`,
//! so two deployments in one account never share a repository.
//!
//! `cloud down` deletes the repository with `force`: the images in it go too.

use super::{Applied, Component, Ctx, Exports, Planned, StatusRow};
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::outputs::{self, plan_param, Kind};
use crate::plan::{Action, Change, Value};
use crate::secret::Secret;
use anyhow::{Context, Result};
use aws_sdk_ecr::types::{
    EncryptionConfiguration, EncryptionType, ImageScanningConfiguration, ImageTagMutability, Tag,
};
use serde_json::{json, Value as Json};
use std::collections::BTreeMap;

pub struct Registry;

/// The image (and repository) the reference job runs.
pub const IMAGE: &str = "iot-publish";
/// Images the lifecycle policy keeps; older ones expire.
pub const KEEP_IMAGES: u32 = 20;
const SCAN_ON_PUSH: bool = true;
const MUTABILITY: &str = "MUTABLE";
const ENCRYPTION: &str = "AES256";
const PARAMS: [&str; 1] = [outputs::ECR_IOT_PUBLISH_URI];

// ---- desired -------------------------------------------------------------

/// The repository's name for a deployment: `iot-publish` for `default`,
/// `<deployment>/iot-publish` otherwise. ECR allows no leading, trailing or
/// doubled `-` in a path component, which deployment names may have: those
/// are folded (`a--b-` → `a-b/iot-publish`); a clash this makes is caught
/// by the tag check like any other.
pub fn repository_name(deployment: &str) -> String {
    if deployment == "default" {
        return IMAGE.to_string();
    }
    let folded: Vec<&str> = deployment.split('-').filter(|p| !p.is_empty()).collect();
    format!("{}/{IMAGE}", folded.join("-"))
}

/// Expire everything but the newest [`KEEP_IMAGES`] images.
pub fn lifecycle_policy() -> Json {
    json!({
        "rules": [{
            "rulePriority": 1,
            "description": format!("keep the last {KEEP_IMAGES} images"),
            "selection": {
                "tagStatus": "any",
                "countType": "imageCountMoreThan",
                "countNumber": KEEP_IMAGES
            },
            "action": {"type": "expire"}
        }]
    })
}

#[derive(Debug, Clone)]
pub struct Desired {
    pub name: String,
    pub lifecycle: Json,
}

pub fn desired(deployment: &str) -> Desired {
    Desired {
        name: repository_name(deployment),
        lifecycle: lifecycle_policy(),
    }
}

// ---- observed ------------------------------------------------------------

#[derive(Debug, Clone, PartialEq)]
pub struct Repo {
    pub arn: String,
    pub uri: String,
    pub scan_on_push: bool,
    pub mutability: String,
    pub encryption: String,
    /// The lifecycle policy as JSON (text that is no JSON is kept as a
    /// string, so it differs from ours); `None`: no policy.
    pub lifecycle: Option<Json>,
}

/// A repository with our name that is not ours.
#[derive(Debug, Clone, PartialEq)]
pub struct Foreign {
    pub arn: String,
    /// The `edgectl:deployment` tag it has (another deployment's), if any.
    pub owner: Option<String>,
}

#[derive(Debug, Default)]
pub struct Observed {
    pub name: String,
    pub repo: Option<Repo>,
    pub foreign: Option<Foreign>,
    params: BTreeMap<String, Secret>,
}

type Ecr = aws_sdk_ecr::Client;

fn ecr(ctx: &Ctx) -> Ecr {
    Ecr::new(&ctx.aws.config)
}

enum Found {
    Absent,
    Ours(Repo),
    Foreign(Foreign),
}

/// The repository called `name`, by DescribeRepositories, and whose it is.
async fn observe_repo(ctx: &Ctx, name: &str) -> Result<Found> {
    let client = ecr(ctx);
    let out = match client.describe_repositories().repository_names(name).send().await {
        Ok(out) => out,
        Err(e) if code(&e) == Some("RepositoryNotFoundException") => return Ok(Found::Absent),
        Err(e) => return Err(e).op(|| format!("describing ECR repository {name} in {}", ctx.aws.region)),
    };
    let Some(r) = out
        .repositories
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.repository_name.as_deref() == Some(name))
    else {
        return Ok(Found::Absent);
    };
    let arn = r
        .repository_arn
        .clone()
        .context("DescribeRepositories returned no ARN")?;
    let tags = client
        .list_tags_for_resource()
        .resource_arn(&arn)
        .send()
        .await
        .op(|| format!("reading the tags of ECR repository {name}"))?
        .tags
        .unwrap_or_default();
    let owner = tags.iter().find(|t| t.key == TAG_KEY).map(|t| t.value.clone());
    if owner.as_deref() != Some(ctx.deployment.as_str()) {
        return Ok(Found::Foreign(Foreign { arn, owner }));
    }
    let lifecycle = match client.get_lifecycle_policy().repository_name(name).send().await {
        Ok(out) => out.lifecycle_policy_text.map(|t| parse_policy(&t)),
        Err(e) if code(&e) == Some("LifecyclePolicyNotFoundException") => None,
        Err(e) => return Err(e).op(|| format!("reading the lifecycle policy of ECR repository {name}")),
    };
    Ok(Found::Ours(Repo {
        arn,
        uri: r.repository_uri.context("DescribeRepositories returned no URI")?,
        scan_on_push: r
            .image_scanning_configuration
            .map(|c| c.scan_on_push)
            .unwrap_or(false),
        mutability: r
            .image_tag_mutability
            .map(|m| m.as_str().to_string())
            .unwrap_or_default(),
        encryption: r
            .encryption_configuration
            .map(|c| c.encryption_type.as_str().to_string())
            .unwrap_or_default(),
        lifecycle,
    }))
}

fn parse_policy(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|_| Json::String(text.to_string()))
}

// ---- plan ----------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Create,
    /// Delete (with its images) and create again: encryption cannot change
    /// in place.
    Replace,
    SetScanOnPush,
    SetMutability,
    PutLifecycle,
    WriteParam(&'static str),
    Delete,
    DeleteParam(&'static str),
}

fn planned(change: Change, op: Op) -> Planned<Op> {
    Planned { change, op }
}

fn repo_address(name: &str) -> String {
    format!("ecr/repository:{name}")
}

fn lifecycle_address(name: &str) -> String {
    format!("ecr/lifecycle-policy:{name}")
}

fn keep_text() -> Value {
    Value::known(format!("the last {KEEP_IMAGES} images"))
}

/// What a policy keeps, in words, when it is one rule like ours.
fn describe_policy(p: &Json) -> Value {
    let sel = &p["rules"][0]["selection"];
    match (sel["countType"].as_str(), sel["countNumber"].as_u64()) {
        (Some("imageCountMoreThan"), Some(n)) if p["rules"].as_array().is_some_and(|r| r.len() == 1) => {
            Value::known(format!("the last {n} images"))
        }
        _ => Value::known(p.to_string()),
    }
}

fn who(f: &Foreign) -> String {
    match &f.owner {
        Some(o) => format!("tagged {TAG_KEY}={o}"),
        None => format!("without an {TAG_KEY} tag"),
    }
}

pub fn plan(d: &Desired, o: &Observed) -> Vec<Planned<Op>> {
    let mut steps = Vec::new();
    let repo = repo_address(&d.name);
    let lifecycle = lifecycle_address(&d.name);
    let create_fields = |c: Change| {
        c.field("name", None, Value::known(&d.name))
            .field("scan_on_push", None, Value::known(SCAN_ON_PUSH.to_string()))
            .field("tag_mutability", None, Value::known(MUTABILITY))
            .field("encryption", None, Value::known(ENCRYPTION))
            .field("uri", None, Value::KnownAfterApply)
    };
    // Whether the lifecycle policy has to be (re)written: always after a
    // create or replace, since the repository is new then.
    let mut fresh = false;
    match (&o.repo, &o.foreign) {
        (None, Some(f)) => {
            steps.push(planned(
                create_fields(Change::new(
                    &repo,
                    Action::Create,
                    format!("{} exists {}; apply will refuse to adopt it", d.name, who(f)),
                )),
                Op::Create,
            ));
            fresh = true;
        }
        (None, None) => {
            steps.push(planned(
                create_fields(Change::new(&repo, Action::Create, "missing")),
                Op::Create,
            ));
            fresh = true;
        }
        (Some(r), _) => {
            if r.encryption != ENCRYPTION {
                steps.push(planned(
                    Change::new(
                        &repo,
                        Action::Replace,
                        "encryption cannot change in place; the images are deleted with it",
                    )
                    .field(
                        "encryption",
                        Some(Value::known(&r.encryption)),
                        Value::known(ENCRYPTION),
                    )
                    .field("uri", Some(Value::known(&r.uri)), Value::known(&r.uri)),
                    Op::Replace,
                ));
                fresh = true;
            } else {
                if r.scan_on_push != SCAN_ON_PUSH {
                    steps.push(planned(
                        Change::new(&repo, Action::Update, "image scanning on push is off").field(
                            "scan_on_push",
                            Some(Value::known(r.scan_on_push.to_string())),
                            Value::known(SCAN_ON_PUSH.to_string()),
                        ),
                        Op::SetScanOnPush,
                    ));
                }
                if r.mutability != MUTABILITY {
                    steps.push(planned(
                        Change::new(
                            &repo,
                            Action::Update,
                            "tags must be mutable (the job runs `latest`)",
                        )
                        .field(
                            "tag_mutability",
                            Some(Value::known(&r.mutability)),
                            Value::known(MUTABILITY),
                        ),
                        Op::SetMutability,
                    ));
                }
            }
        }
    }
    match o.repo.as_ref().and_then(|r| r.lifecycle.as_ref()) {
        Some(p) if !fresh => {
            if *p != d.lifecycle {
                steps.push(planned(
                    Change::new(&lifecycle, Action::Update, "policy differs").field(
                        "keep",
                        Some(describe_policy(p)),
                        keep_text(),
                    ),
                    Op::PutLifecycle,
                ));
            }
        }
        _ => steps.push(planned(
            Change::new(&lifecycle, Action::Create, "missing").field("keep", None, keep_text()),
            Op::PutLifecycle,
        )),
    }
    let uri = match &o.repo {
        Some(r) => Value::known(&r.uri),
        None => Value::KnownAfterApply,
    };
    for name in PARAMS {
        if let Some(change) = plan_param(name, &uri, o.params.get(name), Kind::Plain) {
            steps.push(planned(change, Op::WriteParam(name)));
        }
    }
    steps
}

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
    if let Some(r) = &o.repo {
        steps.push(planned(
            Change::new(
                repo_address(&o.name),
                Action::Delete,
                "cloud down; forced: the images in it are deleted too",
            )
            .field("uri", Some(Value::known(&r.uri)), Value::known("(deleted)")),
            Op::Delete,
        ));
    }
    steps
}

// ---- apply ---------------------------------------------------------------

fn not_ours(name: &str, f: &Foreign, deployment: &str) -> anyhow::Error {
    crate::error::User::new(
        format!(
            "ECR repository {name} exists {} (not {TAG_KEY}={deployment})",
            who(f)
        ),
        "edgectl does not adopt repositories it did not create; delete or rename it, or pick another `--deployment`",
    )
    .into()
}

async fn create(ctx: &Ctx, name: &str, o: &mut Observed) -> Result<()> {
    if let Some(f) = &o.foreign {
        return Err(not_ours(name, f, &ctx.deployment));
    }
    let out = ecr(ctx)
        .create_repository()
        .repository_name(name)
        .image_tag_mutability(ImageTagMutability::from(MUTABILITY))
        .image_scanning_configuration(
            ImageScanningConfiguration::builder()
                .scan_on_push(SCAN_ON_PUSH)
                .build(),
        )
        .encryption_configuration(
            EncryptionConfiguration::builder()
                .encryption_type(EncryptionType::from(ENCRYPTION))
                .build()?,
        )
        .tags(Tag::builder().key(TAG_KEY).value(&ctx.deployment).build()?)
        .send()
        .await;
    match out {
        Ok(out) => {
            let r = out
                .repository
                .context("CreateRepository returned no repository")?;
            o.repo = Some(Repo {
                arn: r.repository_arn.context("CreateRepository returned no ARN")?,
                uri: r.repository_uri.context("CreateRepository returned no URI")?,
                scan_on_push: SCAN_ON_PUSH,
                mutability: MUTABILITY.into(),
                encryption: ENCRYPTION.into(),
                lifecycle: None,
            });
            Ok(())
        }
        // Made by a run that died before it could say so, or by someone
        // else since we looked: only ours is taken over.
        Err(e) if code(&e) == Some("RepositoryAlreadyExistsException") => {
            match observe_repo(ctx, name).await? {
                Found::Ours(r) => {
                    o.repo = Some(r);
                    Ok(())
                }
                Found::Foreign(f) => Err(not_ours(name, &f, &ctx.deployment)),
                Found::Absent => anyhow::bail!("ECR repository {name} exists and does not; run again"),
            }
        }
        Err(e) => Err(e).op(|| format!("creating ECR repository {name} in {}", ctx.aws.region)),
    }
}

async fn delete(ctx: &Ctx, name: &str) -> Result<()> {
    match ecr(ctx)
        .delete_repository()
        .repository_name(name)
        .force(true)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some("RepositoryNotFoundException") => Ok(()),
        Err(e) => Err(e).op(|| format!("deleting ECR repository {name} in {}", ctx.aws.region)),
    }
}

impl Component for Registry {
    type Observed = Observed;
    type Op = Op;

    fn name(&self) -> &'static str {
        "registry"
    }

    fn needs(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    async fn observe(&self, ctx: &Ctx) -> Result<Observed> {
        let name = repository_name(&ctx.deployment);
        let (found, params) = tokio::try_join!(observe_repo(ctx, &name), ctx.outputs.read(&PARAMS))?;
        let (repo, foreign) = match found {
            Found::Absent => (None, None),
            Found::Ours(r) => (Some(r), None),
            Found::Foreign(f) => (None, Some(f)),
        };
        Ok(Observed {
            name,
            repo,
            foreign,
            params,
        })
    }

    fn plan(&self, ctx: &Ctx, _inputs: &Exports, o: &Observed) -> Vec<Planned<Op>> {
        plan(&desired(&ctx.deployment), o)
    }

    fn exports(&self, _o: &Observed, _planned: &[Planned<Op>]) -> Exports {
        Exports::new()
    }

    async fn apply(&self, ctx: &Ctx, _inputs: &Exports, op: &Op, o: &mut Observed) -> Result<Applied> {
        let name = o.name.clone();
        let client = ecr(ctx);
        match op {
            Op::Create => create(ctx, &name, o).await?,
            Op::Replace => {
                delete(ctx, &name).await?;
                o.repo = None;
                create(ctx, &name, o).await?;
            }
            Op::SetScanOnPush => {
                client
                    .put_image_scanning_configuration()
                    .repository_name(&name)
                    .image_scanning_configuration(
                        ImageScanningConfiguration::builder()
                            .scan_on_push(SCAN_ON_PUSH)
                            .build(),
                    )
                    .send()
                    .await
                    .op(|| format!("turning on scan on push for ECR repository {name}"))?;
                o.repo.as_mut().context("no repository")?.scan_on_push = SCAN_ON_PUSH;
            }
            Op::SetMutability => {
                client
                    .put_image_tag_mutability()
                    .repository_name(&name)
                    .image_tag_mutability(ImageTagMutability::from(MUTABILITY))
                    .send()
                    .await
                    .op(|| format!("making the tags of ECR repository {name} mutable"))?;
                o.repo.as_mut().context("no repository")?.mutability = MUTABILITY.into();
            }
            Op::PutLifecycle => {
                let policy = lifecycle_policy();
                client
                    .put_lifecycle_policy()
                    .repository_name(&name)
                    .lifecycle_policy_text(policy.to_string())
                    .send()
                    .await
                    .op(|| format!("writing the lifecycle policy of ECR repository {name}"))?;
                o.repo.as_mut().context("no repository")?.lifecycle = Some(policy);
            }
            Op::WriteParam(param) => {
                let uri = o
                    .repo
                    .as_ref()
                    .map(|r| r.uri.clone())
                    .with_context(|| format!("{param}: the repository does not exist"))?;
                ctx.outputs
                    .write(param, &uri, Kind::Plain, o.params.contains_key(*param))
                    .await?;
                o.params.insert(param.to_string(), Secret::new(uri));
            }
            Op::Delete => {
                delete(ctx, &name).await?;
                o.repo = None;
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
        let mut rows = vec![match (&o.repo, &o.foreign) {
            (Some(r), _) => StatusRow {
                address: repo_address(&o.name),
                state: "present".into(),
                id: r.uri.clone(),
            },
            (None, Some(f)) => StatusRow {
                address: repo_address(&o.name),
                state: format!("not ours ({})", who(f)),
                id: f.arn.clone(),
            },
            (None, None) => StatusRow {
                address: repo_address(&o.name),
                state: "absent".into(),
                id: String::new(),
            },
        }];
        if let Some(r) = &o.repo {
            rows.push(StatusRow {
                address: lifecycle_address(&o.name),
                state: match &r.lifecycle {
                    Some(p) if *p == lifecycle_policy() => "present".into(),
                    Some(_) => "differs".into(),
                    None => "absent".into(),
                },
                id: String::new(),
            });
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    const URI: &str = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/iot-publish";

    fn repo() -> Repo {
        Repo {
            arn: "arn:aws:ecr:eu-west-1:123456789012:repository/iot-publish".into(),
            uri: URI.into(),
            scan_on_push: true,
            mutability: "MUTABLE".into(),
            encryption: "AES256".into(),
            lifecycle: Some(lifecycle_policy()),
        }
    }

    fn observed(repo: Option<Repo>, foreign: Option<Foreign>, uri_param: Option<&str>) -> Observed {
        Observed {
            name: IMAGE.into(),
            repo,
            foreign,
            params: uri_param
                .map(|v| (outputs::ECR_IOT_PUBLISH_URI.to_string(), Secret::new(v)))
                .into_iter()
                .collect(),
        }
    }

    fn converged() -> Observed {
        observed(Some(repo()), None, Some(URI))
    }

    fn with(f: impl FnOnce(&mut Repo)) -> Observed {
        let mut r = repo();
        f(&mut r);
        observed(Some(r), None, Some(URI))
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
    fn plan_cases() {
        let d = desired("default");
        let foreign = Foreign {
            arn: "arn:aws:ecr:eu-west-1:123456789012:repository/iot-publish".into(),
            owner: None,
        };
        let cases: Vec<(&str, Observed, Vec<&str>, Vec<Op>)> = vec![
            (
                "absent",
                observed(None, None, None),
                vec![
                    "+ ecr/repository:iot-publish",
                    "+ ecr/lifecycle-policy:iot-publish",
                    "+ ssm:/infrastructure/ecr/iot-publish/uri",
                ],
                vec![
                    Op::Create,
                    Op::PutLifecycle,
                    Op::WriteParam(outputs::ECR_IOT_PUBLISH_URI),
                ],
            ),
            ("no_change", converged(), vec![], vec![]),
            (
                "lifecycle_drift",
                with(|r| r.lifecycle = Some(json!({"rules": []}))),
                vec!["~ ecr/lifecycle-policy:iot-publish"],
                vec![Op::PutLifecycle],
            ),
            (
                "lifecycle_missing",
                with(|r| r.lifecycle = None),
                vec!["+ ecr/lifecycle-policy:iot-publish"],
                vec![Op::PutLifecycle],
            ),
            (
                "scan_off_and_immutable",
                with(|r| {
                    r.scan_on_push = false;
                    r.mutability = "IMMUTABLE".into();
                }),
                vec!["~ ecr/repository:iot-publish", "~ ecr/repository:iot-publish"],
                vec![Op::SetScanOnPush, Op::SetMutability],
            ),
            (
                "kms_encryption",
                with(|r| r.encryption = "KMS".into()),
                vec![
                    "-/+ ecr/repository:iot-publish",
                    "+ ecr/lifecycle-policy:iot-publish",
                ],
                vec![Op::Replace, Op::PutLifecycle],
            ),
            (
                "uri_param_missing",
                observed(Some(repo()), None, None),
                vec!["+ ssm:/infrastructure/ecr/iot-publish/uri"],
                vec![Op::WriteParam(outputs::ECR_IOT_PUBLISH_URI)],
            ),
            (
                "uri_param_stale",
                observed(Some(repo()), None, Some("elsewhere/iot-publish")),
                vec!["~ ssm:/infrastructure/ecr/iot-publish/uri"],
                vec![Op::WriteParam(outputs::ECR_IOT_PUBLISH_URI)],
            ),
            (
                "someone_elses",
                observed(None, Some(foreign), None),
                vec![
                    "+ ecr/repository:iot-publish",
                    "+ ecr/lifecycle-policy:iot-publish",
                    "+ ssm:/infrastructure/ecr/iot-publish/uri",
                ],
                vec![
                    Op::Create,
                    Op::PutLifecycle,
                    Op::WriteParam(outputs::ECR_IOT_PUBLISH_URI),
                ],
            ),
        ];
        for (case, o, want_lines, want_ops) in cases {
            let steps = plan(&d, &o);
            assert_eq!(lines(&steps), want_lines, "{case}");
            assert_eq!(ops(&steps), want_ops, "{case}");
        }
    }

    #[test]
    fn a_create_shows_every_setting_and_the_uri_known_after_apply() {
        let steps = plan(&desired("default"), &observed(None, None, None));
        let fields: Vec<(String, Value)> = steps[0]
            .change
            .fields
            .iter()
            .map(|f| (f.name.clone(), f.new.clone()))
            .collect();
        assert_eq!(
            fields,
            [
                ("name".to_string(), Value::known("iot-publish")),
                ("scan_on_push".to_string(), Value::known("true")),
                ("tag_mutability".to_string(), Value::known("MUTABLE")),
                ("encryption".to_string(), Value::known("AES256")),
                ("uri".to_string(), Value::KnownAfterApply),
            ]
        );
        assert_eq!(steps[2].change.fields[0].new, Value::KnownAfterApply);
    }

    #[test]
    fn lifecycle_drift_says_what_is_kept() {
        let p = json!({"rules": [{"rulePriority": 1, "selection": {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 5}, "action": {"type": "expire"}}]});
        let steps = plan(&desired("default"), &with(|r| r.lifecycle = Some(p)));
        let f = &steps[0].change.fields[0];
        assert_eq!(
            (f.old.clone(), f.new.clone()),
            (
                Some(Value::known("the last 5 images")),
                Value::known("the last 20 images")
            )
        );
        // Same JSON, other formatting: no change.
        let text = serde_json::to_string_pretty(&lifecycle_policy()).unwrap();
        assert!(plan(
            &desired("default"),
            &with(|r| r.lifecycle = Some(parse_policy(&text)))
        )
        .is_empty());
        // Not JSON at all: a difference, never a panic.
        assert_eq!(
            lines(&plan(
                &desired("default"),
                &with(|r| r.lifecycle = Some(parse_policy("{oops")))
            )),
            ["~ ecr/lifecycle-policy:iot-publish"]
        );
    }

    #[test]
    fn someone_elses_repository_is_named_in_the_plan_and_left_alone_by_down() {
        let f = Foreign {
            arn: "arn:x".into(),
            owner: Some("blue".into()),
        };
        let steps = plan(&desired("default"), &observed(None, Some(f.clone()), None));
        assert_eq!(
            steps[0].change.reason,
            "iot-publish exists tagged edgectl:deployment=blue; apply will refuse to adopt it"
        );
        assert!(plan_down(&observed(None, Some(f), None)).is_empty());
    }

    #[test]
    fn down_deletes_the_output_then_the_repository_with_its_images() {
        let steps = plan_down(&converged());
        assert_eq!(
            lines(&steps),
            [
                "- ssm:/infrastructure/ecr/iot-publish/uri",
                "- ecr/repository:iot-publish"
            ]
        );
        assert!(
            steps[1].change.reason.contains("images in it are deleted"),
            "{:?}",
            steps[1].change
        );
        assert!(plan_down(&observed(None, None, None)).is_empty());
    }

    #[test]
    fn repository_names_per_deployment() {
        assert_eq!(repository_name("default"), "iot-publish");
        assert_eq!(repository_name("blue"), "blue/iot-publish");
        assert_eq!(repository_name("eu-1"), "eu-1/iot-publish");
        assert_eq!(repository_name("a--b-"), "a-b/iot-publish");
    }

    #[test]
    fn the_lifecycle_policy_keeps_twenty_images() {
        let p = lifecycle_policy();
        assert_eq!(p["rules"][0]["selection"]["countNumber"], 20);
        assert_eq!(p["rules"][0]["selection"]["countType"], "imageCountMoreThan");
        assert_eq!(p["rules"][0]["action"]["type"], "expire");
        assert_eq!(describe_policy(&p), keep_text());
    }
}
