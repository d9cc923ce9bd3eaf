//! `edgectl device provision` on real Debian hosts (systemd, sshd) that
//! join a real Nomad server over mTLS with their own certificates.

mod common;

use common::devices::{ssm, Fleet};

/// The number in the summary table's SSH EXECS column for `host`.
fn execs(stdout: &str, host: &str) -> u32 {
    let line = stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no summary row for {host}:\n{stdout}"));
    line.split_whitespace().nth(4).unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn three_hosts_join_then_a_second_run_changes_nothing() {
    let fleet = Fleet::start(3, "prov").await;
    let names: Vec<&str> = fleet.hosts.iter().map(|h| h.name.as_str()).collect();
    let first = fleet
        .device(&[
            "provision",
            "--all",
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await;
    first.expect(0);
    eprintln!("--- first run\n{}\n{}", first.stdout(), first.stderr());
    let ids = fleet.wait_ready(&names).await;
    assert_eq!(ids.len(), 3);
    for name in &names {
        // Each node presents its own certificate: CN = the device.
        let cert = fleet
            .host(name)
            .exec_ok("cat /root/certificates/device.pem")
            .await
            .unwrap();
        assert!(cert.contains("BEGIN CERTIFICATE"), "{cert}");
        let serial = ssm(&fleet.stand, &format!("/infrastructure/devices/{name}/serial")).await;
        assert!(serial.is_some(), "device record of {name} in SSM");
        let modes = fleet
            .host(name)
            .exec_ok("stat -c '%n %U:%G %a' /root/certificates/device-key.pem /root/certificates/device.pem /root/certificates/ca.pem /opt/nomad/config/nomad.hcl")
            .await
            .unwrap();
        assert_eq!(
            modes.trim(),
            "/root/certificates/device-key.pem nomad:nomad 440\n/root/certificates/device.pem nomad:nomad 440\n\
             /root/certificates/ca.pem root:root 400\n/opt/nomad/config/nomad.hcl root:nomad 644"
        );
    }
    let since = fleet
        .host(names[0])
        .exec_ok("systemctl show -p ActiveEnterTimestampMonotonic nomad")
        .await
        .unwrap();

    let second = fleet
        .device(&[
            "provision",
            "--all",
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await;
    second.expect(0);
    eprintln!("--- second run\n{}\n{}", second.stdout(), second.stderr());
    let out = second.stdout();
    for name in &names {
        assert_eq!(
            execs(&out, name),
            1,
            "a no-change run is one exec per host:\n{out}"
        );
    }
    assert!(out.contains("3 of 3 devices succeeded"), "{out}");
    assert!(!out.contains("changed") || out.contains(" 0 "), "{out}");
    let after = fleet
        .host(names[0])
        .exec_ok("systemctl show -p ActiveEnterTimestampMonotonic nomad")
        .await
        .unwrap();
    assert_eq!(since, after, "nomad was not restarted by a no-change run");
    fleet.stop().await;
}
