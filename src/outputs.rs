//! Every SSM parameter edgectl reads or writes, and typed access to them.
//! Other commands (device, job) read their inputs from here, so they work
//! from any machine with AWS access.

use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::secret::Secret;
use anyhow::Result;
use aws_sdk_ssm::types::{ParameterTier, ParameterType, Tag};
use std::collections::BTreeMap;

pub const PCA_ARN: &str = "/infrastructure/pca/arn";
pub const TRUST_ANCHOR_ARN: &str = "/infrastructure/trust_anchor/arn";
pub const PROFILE_ARN: &str = "/infrastructure/profile/arn";
pub const ROLE_ARN: &str = "/infrastructure/role/arn";
pub const CREDENTIAL_PROCESS: &str = "/infrastructure/roles_anywhere/credential_process";
pub const COGNITO_USER_POOL_ID: &str = "/infrastructure/cognito/user_pool_id";
pub const COGNITO_CLIENT_ID: &str = "/infrastructure/cognito/client_id";
/// The app client's secret (SecureString); the Nomad OIDC auth method needs it.
pub const COGNITO_CLIENT_SECRET: &str = "/infrastructure/cognito/client_secret";
/// The hosted UI's host name, `<domain_prefix>.auth.<region>.amazoncognito.com`.
pub const COGNITO_DOMAIN: &str = "/infrastructure/cognito/domain";
/// DNS name of the load balancer in front of Nomad (the ingress output).
pub const NOMAD_ENDPOINT: &str = "/infrastructure/nomad/endpoint";
/// Nomad's ACL management token (SecureString), stored before the bootstrap call.
pub const NOMAD_BOOTSTRAP_TOKEN: &str = "/infrastructure/nomad/token/bootstrap";
/// A client token bound to `submit-job`, for CI (SecureString).
pub const NOMAD_CI_TOKEN: &str = "/infrastructure/nomad/token/ci";
/// The text of the Nomad ACL policy `submit-job`.
pub const NOMAD_POLICY_SUBMIT_JOB: &str = "/infrastructure/nomad/policies/submit-job";

/// The `iot-publish` image's ECR repository URI (the registry component);
/// `edgectl image publish` pushes there.
pub const ECR_IOT_PUBLISH_URI: &str = "/infrastructure/ecr/iot-publish/uri";

/// An image's repository URI: `/infrastructure/ecr/<image>/uri`.
pub fn ecr_uri(image: &str) -> String {
    format!("/infrastructure/ecr/{image}/uri")
}

/// Certificates and keys live under one folder, named as in deployment.json's
/// `certificates` section (the sample's Secrets Manager names).
pub fn certificate(name: &str) -> String {
    format!("/infrastructure/certificates/{name}")
}

/// A device's record: `/infrastructure/devices/<name>/<field>`.
pub fn device(name: &str, field: &str) -> String {
    format!("/infrastructure/devices/{name}/{field}")
}

/// A job's record after `edgectl job run`: `/infrastructure/jobs/<job>/<field>`,
/// the fields being the `JOB_*` names below.
pub fn job(name: &str, field: &str) -> String {
    format!("/infrastructure/jobs/{name}/{field}")
}

/// The job's version (Nomad's `Version`) after the last `job run`.
pub const JOB_VERSION: &str = "version";
/// The job's `JobModifyIndex`: what `--check-index` compares.
pub const JOB_MODIFY_INDEX: &str = "job_modify_index";
pub const JOB_DEPLOYMENT_ID: &str = "deployment_id";
/// `successful`, `failed`, `running` (a detached or timed-out run), …
pub const JOB_DEPLOYMENT_STATUS: &str = "deployment_status";
/// When Nomad took this version of the job (its `SubmitTime`, RFC 3339).
pub const JOB_SUBMITTED_AT: &str = "submitted_at";

/// SSM's Standard tier holds 4 KB; above that AWS demands Advanced (moto
/// does not check, so we decide it ourselves).
const STANDARD_TIER_LIMIT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Plain,
    Secure,
}

/// SSM access for one deployment: reads decrypt, creates tag. Callers use
/// the reference names (`/infrastructure/...`); a deployment other than
/// `default` keeps its own copy under `/edgectl/<name>/infrastructure/...`
/// so two deployments in one account never overwrite each other's keys.
#[derive(Clone)]
pub struct Store {
    client: aws_sdk_ssm::Client,
    region: String,
    deployment: String,
}

impl Store {
    pub fn new(config: &aws_config::SdkConfig, region: &str, deployment: &str) -> Self {
        Store {
            client: aws_sdk_ssm::Client::new(config),
            region: region.to_string(),
            deployment: deployment.to_string(),
        }
    }

    /// Where parameter `name` lives for this deployment.
    pub fn path(&self, name: &str) -> String {
        if self.deployment == "default" {
            name.to_string()
        } else {
            format!("/edgectl/{}{name}", self.deployment)
        }
    }

    /// The current values of `names`; absent parameters are simply missing
    /// from the map. Values are secrets until a caller says otherwise.
    pub async fn read(&self, names: &[&str]) -> Result<BTreeMap<String, Secret>> {
        let paths: Vec<String> = names.iter().map(|n| self.path(n)).collect();
        let raw = self
            .read_paths(&paths.iter().map(String::as_str).collect::<Vec<_>>())
            .await?;
        Ok(names
            .iter()
            .zip(&paths)
            .filter_map(|(n, p)| raw.get(p).map(|v| (n.to_string(), v.clone())))
            .collect())
    }

    async fn read_paths(&self, names: &[&str]) -> Result<BTreeMap<String, Secret>> {
        let mut found = BTreeMap::new();
        // GetParameters takes at most 10 names per call.
        for chunk in names.chunks(10) {
            let out = self
                .client
                .get_parameters()
                .set_names(Some(chunk.iter().map(|s| s.to_string()).collect()))
                .with_decryption(true)
                .send()
                .await
                .op(|| format!("reading {} from SSM in {}", chunk.join(", "), self.region))?;
            for p in out.parameters.unwrap_or_default() {
                if let (Some(n), Some(v)) = (p.name, p.value) {
                    found.insert(n, Secret::new(v));
                }
            }
        }
        Ok(found)
    }

    /// Creates (tagged) or overwrites one parameter. AWS refuses Tags
    /// together with Overwrite, so an update keeps the tags of the create.
    pub async fn write(&self, name: &str, value: &str, kind: Kind, exists: bool) -> Result<()> {
        let name = &self.path(name);
        let mut req = self
            .client
            .put_parameter()
            .name(name)
            .value(value)
            .tier(tier_for(value))
            .r#type(type_for(kind));
        req = if exists {
            req.overwrite(true)
        } else {
            req.tags(Tag::builder().key(TAG_KEY).value(&self.deployment).build()?)
        };
        match req.send().await {
            Ok(_) => Ok(()),
            // Created by a run that died before it could say so: overwrite.
            Err(e) if !exists && code(&e) == Some("ParameterAlreadyExists") => self
                .client
                .put_parameter()
                .name(name)
                .value(value)
                .tier(tier_for(value))
                .r#type(type_for(kind))
                .overwrite(true)
                .send()
                .await
                .map(|_| ())
                .op(|| format!("writing {name} to SSM in {}", self.region)),
            Err(e) => Err(e).op(|| format!("writing {name} to SSM in {}", self.region)),
        }
    }

    /// Deletes parameters; ones already gone count as deleted.
    pub async fn delete(&self, names: &[&str]) -> Result<()> {
        let names: Vec<String> = names.iter().map(|n| self.path(n)).collect();
        for chunk in names.chunks(10) {
            self.client
                .delete_parameters()
                .set_names(Some(chunk.iter().map(|s| s.to_string()).collect()))
                .send()
                .await
                .op(|| format!("deleting {} from SSM in {}", chunk.join(", "), self.region))?;
        }
        Ok(())
    }
}

fn tier_for(value: &str) -> ParameterTier {
    if value.len() > STANDARD_TIER_LIMIT {
        ParameterTier::Advanced
    } else {
        ParameterTier::Standard
    }
}

fn type_for(kind: Kind) -> ParameterType {
    match kind {
        Kind::Plain => ParameterType::String,
        Kind::Secure => ParameterType::SecureString,
    }
}

/// `cloud down`'s change for an output parameter of a component.
pub fn param_removal(name: &str) -> crate::plan::Change {
    crate::plan::Change::new(format!("ssm:{name}"), crate::plan::Action::Delete, "cloud down")
}

/// The change (if any) that makes parameter `name` hold `desired`.
pub fn plan_param(
    name: &str,
    desired: &crate::plan::Value,
    observed: Option<&Secret>,
    kind: Kind,
) -> Option<crate::plan::Change> {
    use crate::plan::{Action, Change, Value};
    let address = format!("ssm:{name}");
    let show = |v: &Secret| match kind {
        Kind::Plain => Value::known(v.expose()),
        Kind::Secure => Value::Sensitive,
    };
    let new = match (desired, kind) {
        (Value::Known(_), Kind::Secure) => Value::Sensitive,
        (v, _) => v.clone(),
    };
    match (desired, observed) {
        (Value::Known(d), Some(o)) if o.expose() == d => None,
        (_, None) => Some(Change::new(address, Action::Create, "missing").field("value", None, new)),
        (_, Some(o)) => {
            Some(Change::new(address, Action::Update, "value differs").field("value", Some(show(o)), new))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Action, Value};

    #[test]
    fn ecr_uri_names_the_registry_output() {
        assert_eq!(ecr_uri("iot-publish"), ECR_IOT_PUBLISH_URI);
    }

    #[test]
    fn plan_param_cases() {
        let same = Secret::new("arn:x");
        assert!(plan_param("/a", &Value::known("arn:x"), Some(&same), Kind::Plain).is_none());
        let c = plan_param("/a", &Value::known("arn:y"), Some(&same), Kind::Plain).unwrap();
        assert_eq!((c.action, c.address.as_str()), (Action::Update, "ssm:/a"));
        assert_eq!(c.fields[0].old, Some(Value::known("arn:x")));
        let c = plan_param("/a", &Value::KnownAfterApply, None, Kind::Plain).unwrap();
        assert_eq!(c.action, Action::Create);
        assert_eq!(c.fields[0].new, Value::KnownAfterApply);
        let c = plan_param("/k", &Value::known("secret"), Some(&same), Kind::Secure).unwrap();
        assert_eq!(c.fields[0].old, Some(Value::Sensitive));
        assert_eq!(c.fields[0].new, Value::Sensitive);
    }
}
