//! `edgectl env`: exports for the nomad CLI from the deployment's SSM
//! outputs; the CA lands in the config dir, a token only when asked for and
//! never in JSON.

mod common;

use common::Stand;

async fn put(stand: &Stand, name: &str, value: &str, secure: bool) {
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    ssm.put_parameter()
        .name(name)
        .value(value)
        .r#type(if secure {
            aws_sdk_ssm::types::ParameterType::SecureString
        } else {
            aws_sdk_ssm::types::ParameterType::String
        })
        .send()
        .await
        .unwrap();
}

#[tokio::test]
async fn env_prints_exports_and_writes_the_ca() {
    let stand = Stand::start().await;
    let missing = stand.edgectl(&["env"]).await;
    missing.expect(1);
    assert!(
        missing
            .stderr()
            .contains("/infrastructure/nomad/endpoint is not in SSM"),
        "{}",
        missing.stderr()
    );
    assert!(
        missing.stderr().contains("hint: run `edgectl cloud up` first"),
        "{}",
        missing.stderr()
    );

    put(
        &stand,
        "/infrastructure/nomad/endpoint",
        "edgectl-default-1.elb.eu-west-1.amazonaws.com",
        false,
    )
    .await;
    put(
        &stand,
        "/infrastructure/certificates/ca-caCertificate",
        "-----BEGIN CERTIFICATE-----\nCA\n",
        false,
    )
    .await;
    put(
        &stand,
        "/infrastructure/nomad/token/ci",
        "11111111-2222-3333-4444-555555555555",
        true,
    )
    .await;

    let run = stand.edgectl(&["env"]).await;
    run.expect(0);
    let ca = stand.dir.path().join(".config/edgectl/default/ca.pem");
    assert_eq!(
        run.stdout(),
        format!(
            "export NOMAD_ADDR='https://edgectl-default-1.elb.eu-west-1.amazonaws.com:4646'\n\
             export NOMAD_CACERT='{}'\n\
             export NOMAD_TLS_SERVER_NAME='server.eu-west-1.nomad'\n",
            ca.display()
        )
    );
    assert_eq!(
        std::fs::read_to_string(&ca).unwrap(),
        "-----BEGIN CERTIFICATE-----\nCA\n"
    );

    let with_token = stand.edgectl(&["env", "--token", "ci"]).await;
    with_token.expect(0);
    assert!(with_token
        .stdout()
        .ends_with("export NOMAD_TOKEN='11111111-2222-3333-4444-555555555555'\n"));

    let json = stand.edgectl(&["--output", "json", "env", "--token", "ci"]).await;
    json.expect(0);
    assert!(
        !json.stdout().contains("11111111"),
        "a token in JSON: {}",
        json.stdout()
    );
    assert_eq!(json.json()["token"], "(sensitive)");

    let no_mgmt = stand.edgectl(&["env", "--token", "management"]).await;
    no_mgmt.expect(1);
    assert!(
        no_mgmt.stderr().contains("management token"),
        "{}",
        no_mgmt.stderr()
    );
}
