//! `container_runtime: docker` (the default) on a test host that can run
//! dockerd: Debian's docker.io and amazon-ecr-credential-helper installed
//! with apt, docker's config.json pointing at the ECR helper, and the Nomad
//! client's docker driver as the server sees it.

mod common;

use common::devices::Fleet;
use std::time::{Duration, Instant};
use testkit::hosts::HostOptions;

#[tokio::test(flavor = "multi_thread")]
async fn a_docker_device_gets_docker_and_the_ecr_helper() {
    let var_lib_docker = tempfile::tempdir().unwrap();
    let opts = HostOptions {
        internet: true,
        ..HostOptions::default()
    }
    .docker(var_lib_docker.path());
    let fleet = Fleet::start_with(1, "dock", opts).await;
    let name = fleet.hosts[0].name.clone();
    fleet.write_inventory(&[(name.as_str(), "container_runtime: docker")]);
    let started = Instant::now();
    let run = fleet
        .device(&[
            "provision",
            &name,
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await;
    eprintln!(
        "first run {:?}\n{}\n{}",
        started.elapsed(),
        run.stdout(),
        run.stderr()
    );
    run.expect(0);
    let out = run.stdout();
    for pkg in [
        "docker.io",
        "amazon-ecr-credential-helper",
        "containernetworking-plugins",
    ] {
        assert!(
            out.contains(&format!("/pkg:{pkg} ")),
            "{pkg} installed by this run:\n{out}"
        );
    }
    fleet.wait_ready(&[name.as_str()]).await;
    let host = fleet.host(&name);
    let cfg = host
        .exec_ok("cat /root/.docker/config.json; stat -c '%U:%G %a' /root/.docker/config.json; command -v docker-credential-ecr-login")
        .await
        .unwrap();
    assert!(cfg.contains("\"credsStore\": \"ecr-login\""), "{cfg}");
    assert!(cfg.contains("root:root 600"), "{cfg}");
    assert!(
        cfg.trim_end().ends_with("/usr/bin/docker-credential-ecr-login"),
        "{cfg}"
    );
    let hcl = host.exec_ok("cat /opt/nomad/config/nomad.hcl").await.unwrap();
    assert!(
        hcl.contains("plugin \"docker\"") && hcl.contains("helper = \"ecr-login\""),
        "{hcl}"
    );
    assert!(!hcl.contains("raw_exec"), "{hcl}");
    // The node's docker driver as the server sees it: detected; healthy
    // when dockerd runs in this host.
    let deadline = Instant::now() + Duration::from_secs(60);
    let driver = loop {
        let node = fleet.node(&name).await.expect("the node");
        let id = node["ID"].as_str().unwrap().to_string();
        let full = fleet.api().get(&format!("/v1/node/{id}")).await.unwrap();
        let docker = full["Drivers"]["docker"].clone();
        if docker["Healthy"] == true || Instant::now() > deadline {
            break docker;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let active = host.exec("systemctl is-active docker").await.unwrap();
    eprintln!(
        "docker driver: {driver}\ndockerd: {}",
        String::from_utf8_lossy(&active.stdout)
    );
    assert_eq!(driver["Detected"], true, "{driver}");
    assert_eq!(driver["Healthy"], true, "{driver}");
    let again = fleet
        .device(&[
            "provision",
            &name,
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await;
    again.expect(0);
    assert!(
        again.stdout().contains("1 of 1 devices succeeded"),
        "{}",
        again.stdout()
    );
    assert!(
        !again.stdout().contains("/pkg:"),
        "nothing to install the second time:\n{}",
        again.stdout()
    );
    fleet.stop().await;
}
