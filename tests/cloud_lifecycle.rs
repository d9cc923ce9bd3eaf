//! `cloud plan|up|status|down` against moto and the Roles Anywhere
//! simulator: convergence, zero writes on a second run, outputs in SSM,
//! repair of a CA left in an unexpected state, and a clean `down`.

mod common;

use aws_sdk_acmpca::types::CertificateAuthorityStatus;
use common::{Stand, FOUNDATION};

const OUTPUTS: [&str; 9] = [
    "/infrastructure/pca/arn",
    "/infrastructure/trust_anchor/arn",
    "/infrastructure/profile/arn",
    "/infrastructure/role/arn",
    "/infrastructure/roles_anywhere/credential_process",
    "/infrastructure/certificates/ca-caCertificate",
    "/infrastructure/certificates/nomad-server-eu-west-1-Certificate",
    "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey",
    "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate",
];

async fn live_cas(stand: &Stand) -> Vec<(String, CertificateAuthorityStatus)> {
    let pca = aws_sdk_acmpca::Client::new(&stand.sdk().await);
    pca.list_certificate_authorities()
        .send()
        .await
        .unwrap()
        .certificate_authorities
        .unwrap_or_default()
        .into_iter()
        .filter(|ca| ca.status != Some(CertificateAuthorityStatus::Deleted))
        .map(|ca| (ca.arn.unwrap(), ca.status.unwrap()))
        .collect()
}

#[tokio::test]
async fn up_converges_then_changes_nothing_and_down_removes_everything() {
    let stand = Stand::start().await;

    // An empty account: every resource is a create.
    let plan = stand
        .edgectl(&["cloud", "plan", FOUNDATION, "--detailed-exitcode"])
        .await;
    plan.expect(2);
    let text = plan.stdout();
    for address in [
        "+ pca/root",
        "+ pca/root-certificate",
        "+ pca/nomad-server-certificate",
        "+ pca/nomad-cli-certificate",
        "+ rolesanywhere/trust-anchor",
        "+ iam/device-role ",
        "+ iam/device-role-policy",
        "+ rolesanywhere/profile",
        "+ ssm:/infrastructure/pca/arn",
        "+ ssm:/infrastructure/roles_anywhere/credential_process",
    ] {
        assert!(text.contains(address), "{address} missing from the plan:\n{text}");
    }
    assert!(text.contains("(known after apply)"), "{text}");
    assert!(stand.writes().is_empty(), "plan wrote: {:?}", stand.writes());

    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let first_up = stand.sim.requests().len();
    let first_writes = stand.writes().len();
    assert!(first_writes > 0);

    // Everything is there, found by tag, exactly once.
    let cas = live_cas(&stand).await;
    assert_eq!(cas.len(), 1, "{cas:?}");
    assert_eq!(cas[0].1, CertificateAuthorityStatus::Active);
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    for name in OUTPUTS {
        let p = ssm
            .get_parameter()
            .name(name)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{name}: {e:?}"));
        assert!(p.parameter.unwrap().value.is_some());
    }
    let key = ssm
        .get_parameter()
        .name("/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey")
        .send()
        .await
        .unwrap()
        .parameter
        .unwrap();
    assert_eq!(key.r#type, Some(aws_sdk_ssm::types::ParameterType::SecureString));
    let line = ssm
        .get_parameter()
        .name("/infrastructure/roles_anywhere/credential_process")
        .send()
        .await
        .unwrap()
        .parameter
        .unwrap()
        .value
        .unwrap();
    assert!(
        line.starts_with("aws_signing_helper credential-process --certificate /root/certificates/device.pem"),
        "{line}"
    );
    assert!(
        line.contains("--trust-anchor-arn arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/"),
        "{line}"
    );

    // A second up: "no changes", and not one write call reaches AWS.
    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "up", FOUNDATION]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert_eq!(stand.writes(), Vec::<String>::new(), "a no-op up must not write");
    let noop_up = stand.sim.requests().len();
    stand
        .edgectl(&["cloud", "plan", FOUNDATION, "--detailed-exitcode"])
        .await
        .expect(0);

    // Status lists every component's resources and outputs; JSON carries no secret.
    let status = stand
        .edgectl(&["--output", "json", "cloud", "status", FOUNDATION])
        .await;
    status.expect(0);
    let doc = status.json();
    assert_eq!(doc["schema"], 1);
    let rows = doc["resources"].as_array().unwrap();
    for address in [
        "pca/root",
        "rolesanywhere/trust-anchor",
        "iam/device-role",
        "rolesanywhere/profile",
        "ssm:/infrastructure/pca/arn",
    ] {
        assert!(
            rows.iter().any(|r| r["address"] == address),
            "{address} missing: {doc}"
        );
    }
    assert!(!status.stdout().contains("PRIVATE KEY"), "status leaked a key");
    let human = stand.edgectl(&["cloud", "status", FOUNDATION]).await;
    assert!(!human.stdout().contains("PRIVATE KEY") && human.stdout().contains("private key (sensitive)"));

    // down without --yes and without a terminal refuses and deletes nothing.
    stand.sim.reset_requests();
    let refused = stand.edgectl(&["cloud", "down", FOUNDATION]).await;
    refused.expect(1);
    assert!(refused.stderr().contains("--yes"), "{}", refused.stderr());
    assert!(stand.writes().is_empty());

    stand.sim.reset_requests();
    stand
        .edgectl(&["cloud", "down", FOUNDATION, "--yes"])
        .await
        .expect(0);
    let down = stand.sim.requests().len();
    let down_writes = stand.writes().len();
    assert!(live_cas(&stand).await.is_empty(), "the CA must be deleted");
    for name in OUTPUTS {
        assert!(
            ssm.get_parameter().name(name).send().await.is_err(),
            "{name} survived down"
        );
    }
    let ra = aws_sdk_rolesanywhere::Client::new(&stand.sdk().await);
    assert!(ra
        .list_trust_anchors()
        .send()
        .await
        .unwrap()
        .trust_anchors
        .unwrap_or_default()
        .is_empty());
    assert!(ra
        .list_profiles()
        .send()
        .await
        .unwrap()
        .profiles
        .unwrap_or_default()
        .is_empty());
    let iam = aws_sdk_iam::Client::new(&stand.sdk().await);
    assert!(iam
        .get_role()
        .role_name("edgectl-default-device")
        .send()
        .await
        .is_err());
    assert_eq!(common::leftovers(&stand, "default").await, Vec::<String>::new());

    // A second down is a no-op.
    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "down", FOUNDATION, "--yes"]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());

    eprintln!("requests: first up {first_up} ({first_writes} writes), no-op up {noop_up} (0 writes), down {down} ({down_writes} writes)");
}

#[tokio::test]
async fn a_disabled_ca_is_enabled_not_duplicated() {
    let stand = Stand::start().await;
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let (arn, _) = live_cas(&stand).await.remove(0);
    let pca = aws_sdk_acmpca::Client::new(&stand.sdk().await);
    pca.update_certificate_authority()
        .certificate_authority_arn(&arn)
        .status(CertificateAuthorityStatus::Disabled)
        .send()
        .await
        .unwrap();

    let plan = stand.edgectl(&["cloud", "plan", FOUNDATION]).await;
    plan.expect(0);
    assert!(
        plan.stdout().contains("~ pca/root (CA is disabled)"),
        "{}",
        plan.stdout()
    );
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    assert_eq!(
        live_cas(&stand).await,
        vec![(arn, CertificateAuthorityStatus::Active)]
    );
}

#[tokio::test]
async fn deployments_are_kept_apart_by_tag() {
    let stand = Stand::start().await;
    stand
        .edgectl(&["--deployment", "blue", "cloud", "up", FOUNDATION])
        .await
        .expect(0);
    // Another deployment sees none of blue's CA, anchor or profile.
    let plan = stand
        .edgectl(&["--deployment", "green", "cloud", "plan", FOUNDATION])
        .await;
    plan.expect(0);
    assert!(
        plan.stdout()
            .contains("+ pca/root (no CA tagged for this deployment)"),
        "{}",
        plan.stdout()
    );
    assert!(
        plan.stdout().contains("+ rolesanywhere/trust-anchor"),
        "{}",
        plan.stdout()
    );
}
