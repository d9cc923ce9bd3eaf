//! Shared set-up for the simulator's integration tests: moto, a CA in its
//! ACM PCA, the simulator in front of moto, and an IAM role.

#![allow(dead_code)]

pub mod signer;

use std::fmt::Debug;

use aws_sdk_rolesanywhere::config::http::HttpResponse;
use aws_sdk_rolesanywhere::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_rolesanywhere::types::{Source, SourceData, Tag, TrustAnchorType};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rolesanywhere_sim::SimHandle;
use serde_json::{json, Value};
use testkit::moto::Moto;
use testkit::pca::TestCa;

pub const REGION: &str = "eu-west-1";

/// moto, the simulator in front of it, and SDK configs for both.
pub struct World {
    pub moto: Moto,
    pub sim: SimHandle,
    /// Every SDK call through the simulator (the way edgectl is tested).
    pub cfg: aws_config::SdkConfig,
}

pub async fn world() -> World {
    let moto = Moto::start().await.expect("starting moto");
    let sim = rolesanywhere_sim::start("127.0.0.1:0".parse().unwrap(), moto.url.clone())
        .await
        .expect("starting the simulator");
    let cfg = moto
        .sdk_config()
        .await
        .to_builder()
        .endpoint_url(&sim.url)
        .build();
    World { moto, sim, cfg }
}

impl World {
    pub fn ra(&self) -> aws_sdk_rolesanywhere::Client {
        aws_sdk_rolesanywhere::Client::new(&self.cfg)
    }

    /// A root CA in moto's PCA, made through the simulator (so forwarded).
    pub async fn ca(&self, cn: &str) -> TestCa {
        TestCa::create(&self.cfg, cn)
            .await
            .expect("creating a CA in moto")
    }

    /// An IAM role (through the simulator) with this trust policy; its ARN.
    pub async fn role(&self, name: &str, trust_policy: &Value) -> String {
        aws_sdk_iam::Client::new(&self.cfg)
            .create_role()
            .role_name(name)
            .assume_role_policy_document(trust_policy.to_string())
            .send()
            .await
            .expect("CreateRole")
            .role
            .expect("a role")
            .arn
    }

    /// An enabled AWS_ACM_PCA trust anchor and an enabled profile for `role`.
    pub async fn anchor_and_profile(&self, ca_arn: &str, role_arn: &str) -> (String, String) {
        let ra = self.ra();
        let anchor = ra
            .create_trust_anchor()
            .name("edge fleet")
            .enabled(true)
            .source(pca_source(ca_arn))
            .send()
            .await
            .expect("CreateTrustAnchor")
            .trust_anchor
            .unwrap()
            .trust_anchor_arn
            .unwrap();
        let profile = ra
            .create_profile()
            .name("edge-devices")
            .enabled(true)
            .role_arns(role_arn)
            .duration_seconds(3600)
            .send()
            .await
            .expect("CreateProfile")
            .profile
            .unwrap()
            .profile_arn
            .unwrap();
        (anchor, profile)
    }
}

pub fn pca_source(ca_arn: &str) -> Source {
    Source::builder()
        .source_type(TrustAnchorType::AwsAcmPca)
        .source_data(SourceData::AcmPcaArn(ca_arn.to_string()))
        .build()
}

pub fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build().unwrap()
}

/// The trust policy edgectl writes (REFERENCE.md, Stack 2).
pub fn trust_policy(anchor_arn: &str) -> Value {
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

/// (HTTP status, error code, message) of a failed SDK call.
pub fn failure<T: Debug, E: ProvideErrorMetadata + Debug>(
    r: Result<T, SdkError<E, HttpResponse>>,
) -> (u16, String, String) {
    let e = r.expect_err("the call should fail");
    let status = e.raw_response().map(|r| r.status().as_u16()).unwrap_or(0);
    (
        status,
        e.code().unwrap_or("?").to_string(),
        e.message().unwrap_or("").to_string(),
    )
}

/// POSTs a signed CreateSession request to `sim_url`: (status, headers, JSON body).
pub async fn post_session(
    sim_url: &str,
    signed: &signer::Signed,
    body: &str,
) -> (u16, hyper::HeaderMap, Value) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::post(format!("{sim_url}/sessions?{}", signed.query))
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    for (k, v) in &signed.headers {
        req.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = client.request(req).await.expect("POST /sessions");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let json =
        serde_json::from_slice(&bytes).unwrap_or_else(|_| json!({"raw": String::from_utf8_lossy(&bytes)}));
    (status, headers, json)
}

/// `host:port` of a URL such as `http://127.0.0.1:1234`.
pub fn host_of(url: &str) -> &str {
    url.trim_start_matches("http://").trim_end_matches('/')
}
