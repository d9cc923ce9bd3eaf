//! AWS plumbing shared by every component: SDK configuration from the
//! standard chain plus our flags, the deployment tag, and error classes.

use anyhow::{bail, Context, Result};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ssm::config::http::HttpResponse;

/// The tag key every resource edgectl makes carries; its value is the
/// deployment name. Resources are found again by it, never by remembered ids.
pub const TAG_KEY: &str = "edgectl:deployment";

#[derive(Debug, Clone, Default)]
pub struct AwsSettings {
    pub region: Option<String>,
    pub profile: Option<String>,
    pub endpoint_url: Option<String>,
}

/// Everything a component needs to talk to AWS, resolved once per command.
pub struct Aws {
    pub config: SdkConfig,
    pub region: String,
    pub account: String,
}

pub async fn load(settings: &AwsSettings) -> Result<Aws> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(profile) = &settings.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(region) = &settings.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let Some(url) = &settings.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let Some(region) = config.region().map(|r| r.to_string()) else {
        bail!(crate::error::User::new(
            "no AWS region configured",
            "pass `--region eu-west-1` or set `AWS_REGION`"
        ));
    };
    let sts = aws_sdk_sts::Client::new(&config);
    let identity = sts.get_caller_identity().send().await.map_err(|e| {
        anyhow::Error::from(crate::error::User::new(
            format!("cannot reach AWS in {region}: {}", describe(&e)),
            "check your AWS credentials (`AWS_PROFILE`, `--profile`) and `--endpoint-url`",
        ))
    })?;
    let account = identity
        .account
        .context("STS GetCallerIdentity returned no account")?;
    Ok(Aws {
        config,
        region,
        account,
    })
}

/// The error code of an SDK error, if the service sent one.
pub fn code<E, R>(err: &aws_sdk_ssm::error::SdkError<E, R>) -> Option<&str>
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata,
{
    match err {
        aws_sdk_ssm::error::SdkError::ServiceError(s) => s.err().code(),
        _ => None,
    }
}

/// One line for an SDK error: the service's code and message when there is
/// one, the transport failure otherwise.
pub fn describe<E>(err: &aws_sdk_ssm::error::SdkError<E, HttpResponse>) -> String
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + 'static,
{
    use aws_sdk_ssm::error::SdkError;
    match err {
        SdkError::ServiceError(s) => match (s.err().code(), s.err().message()) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(c), None) => c.to_string(),
            _ => format!(
                "HTTP {} without an error code (the service failed or is not what --endpoint-url should point at)",
                s.raw().status().as_u16()
            ),
        },
        _ => format!("{}", aws_sdk_ssm::error::DisplayErrorContext(err)),
    }
}

/// Turns an SDK result into anyhow with a one-line message, keeping the
/// service code readable for callers that match on it.
pub trait SdkResultExt<T> {
    fn op(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E> SdkResultExt<T> for std::result::Result<T, aws_sdk_ssm::error::SdkError<E, HttpResponse>>
where
    E: aws_sdk_ssm::error::ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    fn op(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| anyhow::anyhow!("{}: {}", what(), describe(&e)))
    }
}
