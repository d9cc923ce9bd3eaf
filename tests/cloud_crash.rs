//! A `cloud up` killed halfway converges on the next run: killed after the
//! CA was created but before it was activated, the next `up` activates that
//! CA and ends with exactly one ACTIVE CA.

mod common;

use aws_sdk_acmpca::types::CertificateAuthorityStatus as Status;
use common::{Stand, FOUNDATION};
use std::time::{Duration, Instant};

const CSR: &str = "acm-pca:GetCertificateAuthorityCsr";

async fn cas(stand: &Stand) -> Vec<Status> {
    let pca = aws_sdk_acmpca::Client::new(&stand.sdk().await);
    let out = pca.list_certificate_authorities().send().await.unwrap();
    out.certificate_authorities
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| c.status)
        .collect()
}

#[tokio::test]
async fn killed_after_ca_create_before_activation_converges_to_one_active_ca() {
    let stand = Stand::start().await;
    // The first activation step waits in the simulator, so the kill lands
    // after CreateCertificateAuthority and before the CA is activated.
    stand.sim.hold(CSR);
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.arg("--config")
        .arg(stand.config_path())
        .args(["cloud", "up", FOUNDATION]);
    stand.env(&mut cmd);
    let mut child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while stand.sim.held() == 0 {
        assert!(Instant::now() < deadline, "edgectl never asked for the CA's CSR");
        assert!(
            child.try_wait().unwrap().is_none(),
            "edgectl ended before the hold"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    child.kill().await.unwrap();
    stand.sim.release(CSR);
    assert_eq!(cas(&stand).await, vec![Status::PendingCertificate]);
    assert!(stand
        .writes()
        .iter()
        .any(|w| w == "acm-pca:CreateCertificateAuthority"));

    // The next plan adopts that CA rather than making a second one.
    let plan = stand.edgectl(&["cloud", "plan", FOUNDATION]).await;
    plan.expect(0);
    let text = plan.stdout();
    assert!(
        text.contains("+ pca/root-certificate (CA awaits its certificate)"),
        "{text}"
    );
    assert!(
        !text.contains("+ pca/root ("),
        "must not create another CA:\n{text}"
    );

    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    assert_eq!(cas(&stand).await, vec![Status::Active]);
    let again = stand.edgectl(&["cloud", "up", FOUNDATION]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
}
