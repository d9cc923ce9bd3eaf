//! AWS's own client against the simulator: `aws_signing_helper
//! credential-process` (rolesanywhere-credential-helper, built from source)
//! signs CreateSession for real, and the simulator must verify it.
//!
//! The binary is testkit's `signing_helper_bin()`: `$AWS_SIGNING_HELPER` or
//! the build of scripts/build-test-tools. Ignored by default because that
//! build is refused by the Go module proxy on these machines; run it with
//! `AWS_SIGNING_HELPER=/path cargo test -p rolesanywhere-sim -- --ignored`.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{pca_source, trust_policy, world};
use serde_json::Value;
use testkit::pca::Issued;

fn helper() -> PathBuf {
    testkit::tools::signing_helper_bin()
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn credential_process(
    dir: &std::path::Path,
    cert: &Issued,
    anchor: &str,
    profile: &str,
    role: &str,
    endpoint: &str,
) -> Run {
    let cert_path = dir.join(format!("{}.pem", cert.serial_hex));
    let key_path = dir.join(format!("{}-key.pem", cert.serial_hex));
    std::fs::write(&cert_path, &cert.cert_pem).unwrap();
    std::fs::write(&key_path, &cert.key_pem).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(helper())
            .arg("credential-process")
            .arg("--certificate")
            .arg(&cert_path)
            .arg("--private-key")
            .arg(&key_path)
            .args([
                "--trust-anchor-arn",
                anchor,
                "--profile-arn",
                profile,
                "--role-arn",
                role,
            ])
            .args(["--endpoint", endpoint, "--region", "eu-west-1"])
            // Nothing of the developer's AWS set-up may leak in.
            .env_clear()
            .env("HOME", dir)
            .env("PATH", "/usr/bin:/bin")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("aws_signing_helper timed out")
    .expect("running aws_signing_helper");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs aws_signing_helper, which the Go module proxy refuses here (see testkit::tools)"]
async fn the_real_signing_helper_gets_credentials_for_pca_certificates_only() {
    let w = world().await;
    let ca = w.ca("Edge Root CA").await;
    let ra = w.ra();
    let anchor = ra
        .create_trust_anchor()
        .name("edge fleet")
        .enabled(true)
        .source(pca_source(&ca.arn))
        .send()
        .await
        .unwrap()
        .trust_anchor
        .unwrap()
        .trust_anchor_arn
        .unwrap();
    let role = w.role("edge-device", &trust_policy(&anchor)).await;
    let profile = ra
        .create_profile()
        .name("edge-devices")
        .enabled(true)
        .role_arns(&role)
        .duration_seconds(3600)
        .send()
        .await
        .unwrap()
        .profile
        .unwrap()
        .profile_arn
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ip = "127.0.0.1".parse().unwrap();

    let rsa = ca
        .issue(&w.cfg, "pi-01", &["client.eu-west-1.nomad", "localhost"], &[ip])
        .await
        .unwrap();
    let ec = ca.issue_ec(&w.cfg, "pi-02", &["localhost"], &[]).await.unwrap();
    for (what, cert) in [("RSA", &rsa), ("ECDSA P-256", &ec)] {
        w.sim.reset_requests();
        let run = credential_process(dir.path(), cert, &anchor, &profile, &role, &w.sim.url).await;
        assert!(run.ok, "{what}: the helper failed:\n{}", run.stderr);
        let out: Value = serde_json::from_str(&run.stdout)
            .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {}", run.stdout));
        assert_eq!(out["Version"], 1, "{out}");
        assert!(out["AccessKeyId"].as_str().unwrap().starts_with("ASIA"), "{out}");
        assert!(!out["SecretAccessKey"].as_str().unwrap().is_empty());
        assert!(!out["SessionToken"].as_str().unwrap().is_empty());
        let expiration = out["Expiration"].as_str().unwrap();
        assert!(expiration.ends_with('Z'), "{expiration}");
        let log = w.sim.requests();
        assert_eq!(log.len(), 1, "{log:?}");
        assert_eq!(
            (log[0].action(), log[0].status),
            ("rolesanywhere:CreateSession".to_string(), 201)
        );
    }

    // A certificate from another CA: the simulator's 403 reaches the helper.
    let foreign = testkit::pca::ForeignCa::new("Edge Root CA");
    for cert in [
        foreign.issue("pi-01", &["localhost"], &[]),
        foreign.issue_ec("pi-03", &[], &[]),
    ] {
        w.sim.reset_requests();
        let run = credential_process(dir.path(), &cert, &anchor, &profile, &role, &w.sim.url).await;
        assert!(!run.ok, "a foreign certificate got credentials: {}", run.stdout);
        assert!(run.stdout.trim().is_empty(), "{}", run.stdout);
        assert!(run.stderr.contains("AccessDeniedException"), "{}", run.stderr);
        assert!(
            run.stderr.contains("Untrusted Signing Certificate"),
            "{}",
            run.stderr
        );
        let log = w.sim.requests();
        assert_eq!(log.last().map(|r| r.status), Some(403), "{log:?}");
    }
}
