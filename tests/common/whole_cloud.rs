//! A whole `cloud up` (every component, acl last) against the stand-in
//! and one real Nomad server on loopback: moto's instances never boot, so
//! the test starts Nomad itself, with the certificates `up` put in SSM,
//! while `up` waits for a leader.

use super::{spawn_timed, ssm, Stand, Timed};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};
use testkit::nomad::{GivenTls, NomadServer, Ports, ServerOpts};
use testkit::pca::Issued;

pub const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A whole `cloud up` on a busy two-core machine.
pub const UP_TIMEOUT: Duration = Duration::from_secs(300);
const CERTS: [&str; 5] = [
    "/infrastructure/certificates/ca-caCertificate",
    "/infrastructure/certificates/nomad-server-eu-west-1-Certificate",
    "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey",
    "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate",
    "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey",
];

/// The Nomad ports of a whole-cloud test and the environment that points
/// `edgectl` at them (with time for the test to start Nomad).
pub fn nomad_env(ports: &Ports) -> Vec<(String, String)> {
    vec![
        ("NOMAD_ADDR".into(), format!("https://127.0.0.1:{}", ports.http)),
        ("EDGECTL_NOMAD_WAIT".into(), "240".into()),
    ]
}

/// `edgectl --config <stand> ARGS` with the stand's environment plus `env`.
pub fn command<K: AsRef<str>, V: AsRef<str>>(
    stand: &Stand,
    args: &[&str],
    env: &[(K, V)],
) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.arg("--config").arg(stand.config_path()).args(args);
    stand.env(&mut cmd);
    for (k, v) in env {
        cmd.env(k.as_ref(), v.as_ref());
    }
    cmd
}

/// The first `cloud up` (`args`, e.g. `["cloud", "up", "-vv"]`): it makes
/// the certificates, then waits for Nomad at NOMAD_ADDR, which this starts
/// with those certificates.
pub async fn first_up<K: AsRef<str>, V: AsRef<str>>(
    stand: &Stand,
    args: &[&str],
    env: &[(K, V)],
    ports: Ports,
) -> (Timed, NomadServer) {
    let up = spawn_timed(command(stand, args, env));
    let deadline = Instant::now() + UP_TIMEOUT;
    let pems = loop {
        let mut got = Vec::new();
        for name in CERTS {
            match ssm(stand, name).await {
                Some(v) => got.push(v),
                None => break,
            }
        }
        if got.len() == CERTS.len() {
            break got;
        }
        if up.is_finished() {
            let run = up.await.expect("run task").run;
            panic!(
                "edgectl ended before the certificates were in SSM:\n{}\n--- stderr\n{}",
                run.stdout(),
                run.stderr()
            );
        }
        assert!(
            Instant::now() < deadline,
            "no certificates in SSM after {UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let issued = |cert: &str, key: &str| Issued {
        cert_pem: cert.to_string(),
        chain_pem: pems[0].clone(),
        key_pem: key.to_string(),
        serial_hex: String::new(),
    };
    let tls = GivenTls {
        ca_pem: pems[0].clone(),
        server: issued(&pems[1], &pems[2]),
        cli: issued(&pems[3], &pems[4]),
        region: "eu-west-1".into(),
    };
    let nomad = NomadServer::spawn_with_tls(
        tls,
        ServerOpts {
            bind: LOCALHOST,
            ports: Some(ports),
            ..ServerOpts::default()
        },
    )
    .await
    .expect("nomad starts");
    let timed = tokio::time::timeout(UP_TIMEOUT, up)
        .await
        .expect("cloud up finishes in time")
        .expect("run task");
    (timed, nomad)
}
