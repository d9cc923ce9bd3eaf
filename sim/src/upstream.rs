//! moto, behind us: the HTTP client requests are forwarded with, and the two
//! reads the simulator itself needs (a PCA's CA certificate, an IAM role).

use std::collections::HashMap;
use std::sync::Mutex;

use aws_sdk_acmpca::config::timeout::TimeoutConfig;
use aws_sdk_acmpca::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_acmpca::error::{ProvideErrorMetadata, SdkError};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Why moto did not give us what we asked for.
#[derive(Debug)]
pub(crate) enum UpstreamError {
    /// moto answered with an error (no such CA, CA not active, ...).
    Refused(String),
    /// moto did not answer properly (down, timeout, garbage).
    Broken(String),
}

fn classify<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    what: &str,
    e: SdkError<E, R>,
) -> UpstreamError {
    match &e {
        SdkError::ServiceError(se) => UpstreamError::Refused(format!(
            "{what}: {}: {}",
            se.err().code().unwrap_or("error"),
            se.err().message().unwrap_or("")
        )),
        _ => UpstreamError::Broken(format!("{what}: {e:?}")),
    }
}

/// An IAM role as GetRole shows it.
pub(crate) struct Role {
    pub arn: String,
    pub role_id: String,
    /// As IAM returns it: JSON, or URL-encoded JSON in real AWS.
    pub trust_policy: String,
}

pub(crate) struct Upstream {
    pub base_url: String,
    pub http: Client<HttpConnector, Full<Bytes>>,
    pca_clients: Mutex<HashMap<String, aws_sdk_acmpca::Client>>,
    iam_client: aws_sdk_iam::Client,
}

impl Upstream {
    pub(crate) fn new(base_url: String) -> Self {
        let base_url = base_url.trim_end_matches('/').to_string();
        let iam_client = aws_sdk_iam::Client::from_conf(
            aws_sdk_iam::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .credentials_provider(dummy_credentials())
                .endpoint_url(&base_url)
                .timeout_config(timeouts())
                .build(),
        );
        Upstream {
            http: Client::builder(TokioExecutor::new()).build_http(),
            pca_clients: Mutex::default(),
            iam_client,
            base_url,
        }
    }

    /// ACM PCA is regional: one client per region, made on first use.
    fn pca(&self, region: &str) -> aws_sdk_acmpca::Client {
        let mut clients = self.pca_clients.lock().expect("pca client lock");
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                aws_sdk_acmpca::Client::from_conf(
                    aws_sdk_acmpca::Config::builder()
                        .behavior_version(BehaviorVersion::latest())
                        .region(Region::new(region.to_string()))
                        .credentials_provider(dummy_credentials())
                        .endpoint_url(&self.base_url)
                        .timeout_config(timeouts())
                        .build(),
                )
            })
            .clone()
    }

    /// The CA certificate (DER) of a private CA, as the trust anchor sees it.
    pub(crate) async fn ca_certificate(&self, pca_arn: &str) -> Result<Vec<u8>, UpstreamError> {
        let region = crate::arn::Arn::parse(pca_arn)
            .map(|a| a.region)
            .ok_or_else(|| UpstreamError::Refused(format!("{pca_arn} is not an ARN")))?;
        let out = self
            .pca(&region)
            .get_certificate_authority_certificate()
            .certificate_authority_arn(pca_arn)
            .send()
            .await
            .map_err(|e| classify("GetCertificateAuthorityCertificate", e))?;
        let pem = out
            .certificate
            .ok_or_else(|| UpstreamError::Refused(format!("{pca_arn} has no CA certificate yet")))?;
        let ders = crate::chain::pem_bundle_to_der(&pem)
            .map_err(|e| UpstreamError::Broken(format!("the CA certificate of {pca_arn}: {e}")))?;
        Ok(ders
            .into_iter()
            .next()
            .expect("pem_bundle_to_der returns at least one"))
    }

    /// The role named by `role_arn`, or `None` if IAM has no such role.
    pub(crate) async fn role(&self, role_arn: &str) -> Result<Option<Role>, UpstreamError> {
        let name = role_arn.rsplit('/').next().unwrap_or(role_arn);
        match self.iam_client.get_role().role_name(name).send().await {
            Ok(out) => {
                let role = out
                    .role
                    .ok_or_else(|| UpstreamError::Broken("GetRole returned no role".into()))?;
                Ok(Some(Role {
                    arn: role.arn,
                    role_id: role.role_id,
                    trust_policy: role.assume_role_policy_document.unwrap_or_default(),
                }))
            }
            Err(SdkError::ServiceError(se)) if se.err().is_no_such_entity_exception() => Ok(None),
            Err(e) => Err(classify("GetRole", e)),
        }
    }
}

/// A hung moto must fail the call, not hang the test that made it.
fn timeouts() -> TimeoutConfig {
    TimeoutConfig::builder()
        .operation_timeout(std::time::Duration::from_secs(30))
        .build()
}

/// moto checks no signatures; these only make the SDK sign at all.
fn dummy_credentials() -> Credentials {
    Credentials::new("testing", "testing", None, None, "rolesanywhere-sim")
}
