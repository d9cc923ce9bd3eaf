//! edgectl's Nomad server configuration, proven on real Nomad: the
//! `server.hcl` that edgectl renders for a server's user data starts the
//! harness's real Nomad servers (1, then 3), which elect a leader and show
//! in `/v1/agent/self` the ACL, TLS, region and datacenter of the render.
//!
//! The test changes the render only where this machine differs from an EC2
//! instance: addresses, ports, paths of the TLS files and data dir, and the
//! join method (cloud auto-join needs EC2). [`localize`] makes exactly those
//! changes and [`assert_only_local_changes`] checks that nothing else moved,
//! so a key Nomad rejects, a TLS setting that does not hold or a missing
//! ACL block fails here.

#[path = "../src/cloud/server_config.rs"]
#[allow(dead_code)] // user data and unit rendering: tested in the module itself
mod server_config;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use aws_config::SdkConfig;
use hcl::{Body, Structure};
use serde_json::Value;
use server_config::{render_server_hcl, ServerConfigInputs};
use testkit::moto::Moto;
use testkit::nomad::{NomadServer, Ports, ServerFiles, LEADER_TIMEOUT};
use testkit::pca::TestCa;
use testkit::server_hcl::{self, flatten, ADDED, REPLACED};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Inputs as the `servers` component will pass them (deployment.json's
/// sample values), with `instance_count` servers.
fn inputs(instance_count: u8) -> ServerConfigInputs {
    ServerConfigInputs {
        datacenter: "control-plane".into(),
        nomad_region: "eu-west-1".into(),
        aws_region: "eu-west-1".into(),
        instance_count,
        discovery_tag_key: "nomad-type".into(),
        discovery_tag_value: "server".into(),
        advertise_addr: "edgectl-nomad-0123456789abcdef.elb.eu-west-1.amazonaws.com".into(),
        nomad_version: server_config::DEFAULT_NOMAD_VERSION.into(),
        nomad_sha256: server_config::pinned_sha256(server_config::DEFAULT_NOMAD_VERSION),
        ssm_ca_cert: "/infrastructure/certificates/ca-caCertificate".into(),
        ssm_server_cert: "/infrastructure/certificates/nomad-server-eu-west-1-Certificate".into(),
        ssm_server_key: "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey".into(),
    }
}

// ---- the test's substitutions: testkit::server_hcl ------------------------

fn localize(rendered: &str, files: &ServerFiles, join: &[String]) -> String {
    server_hcl::localize(rendered, files, join).expect("localizing edgectl's server.hcl")
}

fn assert_only_local_changes(rendered: &str, local: &str) {
    if let Err(e) = server_hcl::only_local_changes(rendered, local) {
        panic!("{e}");
    }
}

/// The render without its `acl { }` block: what the proof must catch.
fn without_acl(rendered: &str) -> String {
    let mut body: Body = hcl::from_str(rendered).expect("render parses");
    body.0
        .retain(|s| !matches!(s, Structure::Block(b) if b.identifier() == "acl"));
    hcl::to_string(&body).expect("HCL serializes")
}

// ---- the proof ------------------------------------------------------------

/// What a server started from edgectl's render must show: the anonymous
/// answer to `GET /v1/agent/self` (403 with ACLs on) and the agent's config.
/// Every mismatch is listed.
fn check_agent_self(inputs: &ServerConfigInputs, anonymous_status: u16, agent: &Value) -> Result<(), String> {
    let c = &agent["config"];
    let mut problems = Vec::new();
    let mut want = |what: &str, got: &Value, expected: Value| {
        if *got != expected {
            problems.push(format!("{what} is {got}, expected {expected}"));
        }
    };
    want("ACL.Enabled", &c["ACL"]["Enabled"], true.into());
    want(
        "anonymous GET /v1/agent/self status",
        &anonymous_status.into(),
        403.into(),
    );
    for key in [
        "EnableHTTP",
        "EnableRPC",
        "VerifyServerHostname",
        "VerifyHTTPSClient",
    ] {
        want(&format!("TLSConfig.{key}"), &c["TLSConfig"][key], true.into());
    }
    want("Region", &c["Region"], inputs.nomad_region.as_str().into());
    want("Datacenter", &c["Datacenter"], inputs.datacenter.as_str().into());
    want("Server.Enabled", &c["Server"]["Enabled"], true.into());
    want(
        "Server.BootstrapExpect",
        &c["Server"]["BootstrapExpect"],
        inputs.instance_count.into(),
    );
    want("Server.RaftProtocol", &c["Server"]["RaftProtocol"], 3.into());
    want(
        "Autopilot.CleanupDeadServers",
        &c["Autopilot"]["CleanupDeadServers"],
        true.into(),
    );
    // A Go time.Duration: nanoseconds.
    want(
        "Autopilot.LastContactThreshold",
        &c["Autopilot"]["LastContactThreshold"],
        5_000_000_000u64.into(),
    );
    want("DisableUpdateCheck", &c["DisableUpdateCheck"], true.into());
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

/// `GET /v1/agent/self` anonymously, then (when ACLs refuse it) with the
/// bootstrap token; returns (anonymous status, agent self, token).
async fn agent_self(server: &NomadServer) -> (u16, Value, Option<String>) {
    let api = server.api();
    let (status, body) = api
        .send(reqwest::Method::GET, "/v1/agent/self", None)
        .await
        .expect("mTLS request to the agent");
    if status == 200 {
        return (
            status,
            serde_json::from_str(&body).expect("agent/self JSON"),
            None,
        );
    }
    let token = server.bootstrap_acl().await.expect("ACL bootstrap");
    let agent = get_with_token(server, &token, "/v1/agent/self").await;
    (status, agent, Some(token))
}

/// GET with `token`, waiting (bounded) until raft has brought the token to
/// this server: a follower may not know a just-bootstrapped token yet.
async fn get_with_token(server: &NomadServer, token: &str, path: &str) -> Value {
    let api = server.api().with_token(token);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        match api.get(path).await {
            Ok(v) => return v,
            Err(e) if std::time::Instant::now() > deadline => panic!("{}: GET {path}: {e:#}", server.name),
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
        }
    }
}

// ---- harness --------------------------------------------------------------

struct Pki {
    _moto: Moto,
    cfg: SdkConfig,
    ca: TestCa,
}

async fn pki() -> Pki {
    let moto = Moto::start().await.expect("moto starts");
    let cfg = moto.sdk_config().await;
    let ca = TestCa::create(&cfg, "edgectl server config test CA")
        .await
        .expect("CA in moto");
    Pki { _moto: moto, cfg, ca }
}

/// Starts `rendered` (edgectl's server.hcl with bootstrap_expect 1) as one
/// server on loopback and waits for it to lead; fresh ports if another
/// process took ours in between.
async fn start_single(p: &Pki, inputs: &ServerConfigInputs, rendered: &str) -> NomadServer {
    let mut last = String::new();
    for _ in 0..3 {
        let ports = Ports::free(LOOPBACK).expect("free ports");
        let files = NomadServer::prepare(&p.cfg, &p.ca, &inputs.nomad_region, LOOPBACK, ports)
            .await
            .expect("certificates and directories");
        let join = vec![SocketAddr::new(LOOPBACK, ports.serf).to_string()];
        let local = localize(rendered, &files, &join);
        assert_only_local_changes(rendered, &local);
        let mut server = NomadServer::spawn_from_config(files, &local)
            .await
            .expect("nomad spawns");
        match server.wait_leader(LEADER_TIMEOUT).await {
            Ok(leader) => {
                assert_eq!(leader, server.rpc_addr(), "a lone server leads itself");
                return server;
            }
            Err(e) if server.port_was_taken() => last = format!("{e:#}"),
            Err(e) => panic!("nomad from edgectl's server.hcl:\n{local}\n{e:#}"),
        }
    }
    panic!("no free ports in 3 attempts: {last}")
}

#[tokio::test]
async fn one_server_runs_from_the_rendered_config() {
    let p = pki().await;
    let inputs = inputs(1);
    let rendered = render_server_hcl(&inputs).expect("render");
    let server = start_single(&p, &inputs, &rendered).await;
    let (anonymous, agent, token) = agent_self(&server).await;
    assert!(token.is_some(), "ACLs on: bootstrap gave a token");
    if let Err(problems) = check_agent_self(&inputs, anonymous, &agent) {
        panic!("{problems}\nlog:\n{}", server.log_tail());
    }
}

#[tokio::test]
async fn three_servers_from_the_rendered_config_elect_one_leader() {
    let p = pki().await;
    let inputs = inputs(3);
    let rendered = render_server_hcl(&inputs).expect("render");
    let ports = Ports::free_many(LOOPBACK, 3).expect("free ports");
    let join: Vec<String> = ports
        .iter()
        .map(|q| SocketAddr::new(LOOPBACK, q.serf).to_string())
        .collect();
    let mut servers = Vec::new();
    for &port in &ports {
        let files = NomadServer::prepare(&p.cfg, &p.ca, &inputs.nomad_region, LOOPBACK, port)
            .await
            .expect("certificates and directories");
        let local = localize(&rendered, &files, &join);
        assert_only_local_changes(&rendered, &local);
        servers.push(
            NomadServer::spawn_from_config(files, &local)
                .await
                .expect("nomad spawns"),
        );
    }
    let mut leaders = Vec::new();
    for s in &mut servers {
        let leader = s.wait_leader(LEADER_TIMEOUT).await.expect("a leader");
        leaders.push(leader);
    }
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "servers disagree: {leaders:?}"
    );
    assert!(
        servers.iter().any(|s| s.rpc_addr() == leaders[0]),
        "leader {} is none of ours",
        leaders[0]
    );

    let (anonymous, agent, token) = agent_self(&servers[0]).await;
    if let Err(problems) = check_agent_self(&inputs, anonymous, &agent) {
        panic!("{problems}\nlog:\n{}", servers[0].log_tail());
    }
    // bootstrap_expect 3 made a three-voter raft.
    let token = token.expect("ACLs on: bootstrap gave a token");
    let raft = get_with_token(&servers[0], &token, "/v1/operator/raft/configuration").await;
    let voters = raft["Servers"]
        .as_array()
        .expect("Servers")
        .iter()
        .filter(|s| s["Voter"] == true)
        .count();
    assert_eq!(voters, 3, "{raft}");
    // Every server runs the same settings from the same render.
    for s in &servers[1..] {
        let (anonymous, _) = s
            .api()
            .send(reqwest::Method::GET, "/v1/agent/self", None)
            .await
            .expect("mTLS request to the agent");
        let agent = get_with_token(s, &token, "/v1/agent/self").await;
        if let Err(problems) = check_agent_self(&inputs, anonymous, &agent) {
            panic!("{}: {problems}", s.name);
        }
    }
}

/// The proof can fail: the same render without its `acl` block starts, and
/// the check above rejects it.
#[tokio::test]
async fn the_check_rejects_a_render_without_acl() {
    let p = pki().await;
    let inputs = inputs(1);
    let rendered = without_acl(&render_server_hcl(&inputs).expect("render"));
    let server = start_single(&p, &inputs, &rendered).await;
    let (anonymous, agent, token) = agent_self(&server).await;
    assert_eq!(token, None, "no ACLs: no bootstrap needed");
    let problems =
        check_agent_self(&inputs, anonymous, &agent).expect_err("the check must fail without ACLs");
    assert!(
        problems.contains("ACL.Enabled is false")
            && problems.contains("anonymous GET /v1/agent/self status is 200"),
        "{problems}"
    );
}

#[test]
fn localize_changes_only_addresses_paths_and_join() {
    // Pure: no agent, the files' paths only.
    let rendered = render_server_hcl(&inputs(3)).expect("render");
    let body: Body = hcl::from_str(&rendered).unwrap();
    let keys = flatten(&body);
    for key in REPLACED {
        assert!(keys.contains_key(*key), "the render has no `{key}` to replace");
    }
    for key in ADDED {
        assert!(!keys.contains_key(*key), "the render already has `{key}`");
    }
    // An edited render (a non-address key changed) is caught.
    let tampered = rendered.replace("verify_https_client    = true", "verify_https_client    = false");
    assert_ne!(tampered, rendered);
    let caught = std::panic::catch_unwind(|| assert_only_local_changes(&rendered, &tampered));
    assert!(caught.is_err(), "a changed TLS flag must not pass as local");
}
