//! The device's AWS credentials: after `device provision`, the real
//! `aws_signing_helper` on the device, run as its credentials file says,
//! gets credentials from IAM Roles Anywhere (our simulator, which checks the
//! device certificate's signature and chain to edgectl's CA).
//!
//! Needs the real helper, which the Go module proxy refuses here (see
//! testkit::tools): run with `AWS_SIGNING_HELPER=/path/to/aws_signing_helper
//! cargo test --test device_credentials -- --ignored`.

mod common;

use common::devices::Fleet;

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs aws_signing_helper, which the Go module proxy refuses here (see testkit::tools)"]
async fn the_device_gets_aws_credentials_through_roles_anywhere() {
    let helper = tokio::task::spawn_blocking(testkit::tools::signing_helper_bin)
        .await
        .unwrap();
    let fleet = Fleet::start(1, "cred").await;
    let name = fleet.hosts[0].name.clone();
    let sim = &fleet.stand.sim;
    std::os::unix::fs::symlink(&helper, fleet.artifacts().join("aws_signing_helper")).unwrap();
    fleet.write_inventory(&[(
        name.as_str(),
        &format!("aws_credentials: true\nrolesanywhere_endpoint: {}", sim.url),
    )]);
    fleet
        .device(&[
            "provision",
            &name,
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await
        .expect(0);
    fleet.wait_ready(&[name.as_str()]).await;
    let host = fleet.host(&name);
    let creds = host
        .exec_ok("cat /root/aws/credentials; stat -c '%U:%G %a' /root/aws/credentials")
        .await
        .unwrap();
    assert!(
        creds.contains("credential_process = /usr/bin/aws_signing_helper credential-process"),
        "{creds}"
    );
    assert!(creds.trim_end().ends_with("root:nomad 644"), "{creds}");
    // What an SDK on the device does with that file.
    let out = host
        .exec_ok("sh -c \"$(sed -n 's/^credential_process = //p' /root/aws/credentials)\"")
        .await
        .unwrap();
    let doc: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(doc["Version"], 1, "{doc}");
    assert!(
        doc["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()),
        "{doc}"
    );
    let actions: Vec<String> = sim.requests().iter().map(|r| r.action()).collect();
    assert!(
        actions.iter().any(|a| a.ends_with("CreateSession")),
        "the device called CreateSession: {actions:?}"
    );
    fleet.stop().await;
}
