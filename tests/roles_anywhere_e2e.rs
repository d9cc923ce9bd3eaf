//! End to end: after `cloud up`, a certificate issued through edgectl's
//! PCA flow gets AWS credentials from Roles Anywhere (our simulator) for the
//! profile and role edgectl made; a certificate from another CA is refused
//! with 403. CreateSession is signed by the simulator's independent test
//! signer here; the same check with AWS's own `aws_signing_helper` is below.

mod common;

#[path = "../sim/tests/common/signer.rs"]
mod signer;

use common::{Stand, FOUNDATION};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use std::path::Path;
use testkit::pca::ForeignCa;

async fn param(stand: &Stand, name: &str) -> String {
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    ssm.get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{name}: {e:?}"))
        .parameter
        .unwrap()
        .value
        .unwrap()
}

struct Arns {
    anchor: String,
    profile: String,
    role: String,
}

async fn arns(stand: &Stand) -> Arns {
    Arns {
        anchor: param(stand, "/infrastructure/trust_anchor/arn").await,
        profile: param(stand, "/infrastructure/profile/arn").await,
        role: param(stand, "/infrastructure/role/arn").await,
    }
}

/// A signed `POST /sessions`: (HTTP status, JSON body).
async fn create_session(stand: &Stand, arns: &Arns, cert: &str, key: &str) -> (u16, Value) {
    let key = signer::Key::from_pem(key);
    let body = r#"{"durationSeconds":3600}"#;
    let host = stand.sim.url.trim_start_matches("http://").to_string();
    let signed = signer::sign(&signer::Input {
        host: &host,
        region: "eu-west-1",
        profile_arn: &arns.profile,
        role_arn: &arns.role,
        trust_anchor_arn: &arns.anchor,
        body,
        cert_pem: cert,
        chain_pem: None,
        key: &key,
        amz_date: signer::amz_date_now(),
    });
    let client: Client<_, Full<bytes::Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = hyper::Request::post(format!("{}/sessions?{}", stand.sim.url, signed.query))
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    for (k, v) in &signed.headers {
        req.headers_mut().append(
            hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let resp = client.request(req).await.expect("POST /sessions");
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_certificate_from_edgectls_ca_gets_credentials_and_a_foreign_one_does_not() {
    let stand = Stand::start().await;
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let arns = arns(&stand).await;

    // The operator CLI certificate: issued by edgectl's PCA flow.
    let cert = param(
        &stand,
        "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate",
    )
    .await;
    let key = param(
        &stand,
        "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey",
    )
    .await;
    let (status, body) = create_session(&stand, &arns, &cert, &key).await;
    assert_eq!(status, 201, "{body}");
    let set = &body["credentialSet"][0];
    assert_eq!(set["roleArn"], arns.role.as_str());
    assert_eq!(set["sourceIdentity"], "cli.eu-west-1.nomad");
    assert!(set["credentials"]["accessKeyId"]
        .as_str()
        .unwrap()
        .starts_with("ASIA"));

    // Same names, another CA: refused.
    let foreign = ForeignCa::new("Robot Company").issue("cli.eu-west-1.nomad", &["cli.eu-west-1.nomad"], &[]);
    let (status, body) = create_session(&stand, &arns, &foreign.cert_pem, &foreign.key_pem).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["message"], "Untrusted Signing Certificate");

    // After `down` the same certificate no longer gets credentials.
    stand
        .edgectl(&["cloud", "down", FOUNDATION, "--yes"])
        .await
        .expect(0);
    let (status, _) = create_session(&stand, &arns, &cert, &key).await;
    assert_ne!(status, 201);
}

/// `aws_signing_helper credential-process` with the ARNs edgectl stored.
async fn credential_process(
    helper: &Path,
    stand: &Stand,
    dir: &Path,
    cert: &str,
    key: &str,
) -> std::process::Output {
    std::fs::write(dir.join("cert.pem"), cert).unwrap();
    std::fs::write(dir.join("key.pem"), key).unwrap();
    let arns = arns(stand).await;
    tokio::process::Command::new(helper)
        .arg("credential-process")
        .arg("--certificate")
        .arg(dir.join("cert.pem"))
        .arg("--private-key")
        .arg(dir.join("key.pem"))
        .args([
            "--trust-anchor-arn",
            &arns.anchor,
            "--profile-arn",
            &arns.profile,
            "--role-arn",
            &arns.role,
        ])
        .args(["--endpoint", &stand.sim.url, "--region", "eu-west-1"])
        .output()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "needs aws_signing_helper, which the Go module proxy refuses here (see testkit::tools)"]
async fn the_real_signing_helper_gets_credentials_with_edgectls_outputs() {
    let helper = tokio::task::spawn_blocking(testkit::tools::signing_helper_bin)
        .await
        .unwrap();
    let stand = Stand::start().await;
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let dir = tempfile::tempdir().unwrap();

    let cert = param(
        &stand,
        "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate",
    )
    .await;
    let key = param(
        &stand,
        "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey",
    )
    .await;
    let out = credential_process(helper.as_ref(), &stand, dir.path(), &cert, &key).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    let creds: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(creds["Version"], 1);
    assert!(creds["AccessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert!(creds["Expiration"].as_str().unwrap().ends_with('Z'));

    let foreign = ForeignCa::new("Robot Company").issue("cli.eu-west-1.nomad", &["cli.eu-west-1.nomad"], &[]);
    let out = credential_process(
        helper.as_ref(),
        &stand,
        dir.path(),
        &foreign.cert_pem,
        &foreign.key_pem,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("AccessDeniedException") && stderr.contains("Untrusted Signing Certificate"),
        "{stderr}"
    );
}
