//! The real Nomad agent, configured as edgectl's control plane: TLS from
//! moto's ACM PCA, mTLS on the API, ACLs, leader election and failover, and
//! a client in a test host running a raw_exec job.

use std::time::{Duration, Instant};

use aws_config::SdkConfig;
use serde_json::{json, Value};
use std::net::IpAddr;

use testkit::hosts::TestHost;
use testkit::moto::Moto;
use testkit::nomad::{self, NomadClient, NomadCluster, NomadHttp, NomadServer, ServerOpts, REGION};
use testkit::pca::{ForeignCa, TestCa};

/// moto with a root CA in its ACM PCA; keep `_moto` alive for the test.
struct Pki {
    _moto: Moto,
    cfg: SdkConfig,
    ca: TestCa,
}

async fn pki() -> Pki {
    let moto = Moto::start().await.expect("moto starts");
    let cfg = moto.sdk_config().await;
    let ca = TestCa::create(&cfg, "edgectl test nomad CA")
        .await
        .expect("CA in moto");
    Pki { _moto: moto, cfg, ca }
}

async fn server(p: &Pki) -> NomadServer {
    let s = NomadServer::start(&p.cfg, &p.ca)
        .await
        .expect("nomad server starts and elects itself");
    eprintln!(
        "nomad server {} leader after {:?}",
        s.http_url,
        s.start_to_leader.expect("set by start")
    );
    s
}

#[tokio::test]
async fn server_runs_tls_and_acl_and_bootstraps_once() {
    let p = pki().await;
    let s = server(&p).await;
    let api = s.api();

    // ACLs are on: no token, no agent info.
    let (status, body) = api
        .send(reqwest::Method::GET, "/v1/agent/self", None)
        .await
        .expect("mTLS request");
    assert_eq!(
        (status, body.trim()),
        (403, "Permission denied"),
        "anonymous /v1/agent/self"
    );

    let token = s.bootstrap_acl().await.expect("first bootstrap");
    let admin = api.with_token(&token);
    let me = admin.get("/v1/acl/token/self").await.expect("token/self");
    assert_eq!(me["Type"], "management", "{me}");
    assert_eq!(me["SecretID"], token.as_str());

    let agent = admin.get("/v1/agent/self").await.expect("agent/self");
    let c = &agent["config"];
    assert_eq!(c["ACL"]["Enabled"], true, "{c}");
    let tls = &c["TLSConfig"];
    for key in [
        "EnableHTTP",
        "EnableRPC",
        "VerifyHTTPSClient",
        "VerifyServerHostname",
    ] {
        assert_eq!(tls[key], true, "TLSConfig.{key} in {tls}");
    }
    eprintln!("nomad version {}", c["Version"]["Version"]);

    // A second bootstrap is refused with Nomad's own message.
    let (status, body) = api
        .send(reqwest::Method::POST, "/v1/acl/bootstrap", None)
        .await
        .expect("second bootstrap answers");
    assert_eq!(status, 400, "second bootstrap: {body}");
    assert!(
        body.starts_with("ACL bootstrap already done (reset index: "),
        "second bootstrap said: {body}"
    );
}

#[tokio::test]
async fn server_refuses_plain_http_and_foreign_client_certificates() {
    let p = pki().await;
    let s = server(&p).await;
    let leader = "/v1/status/leader";

    // Control: our own CLI certificate works, so the refusals below are about
    // the certificate, not the server.
    let ok = s.api().get(leader).await.expect("own client certificate");
    assert_eq!(ok, Value::String(s.rpc_addr()));

    // Plain HTTP on the HTTPS port gets Go's TLS listener's refusal, not the API.
    let plain = format!("http://127.0.0.1:{}{leader}", s.ports.http);
    let r = reqwest::get(&plain).await.expect("plain HTTP gets an answer");
    let status = r.status().as_u16();
    let body = r.text().await.unwrap_or_default();
    assert_eq!(
        (status, body.trim()),
        (400, "Client sent an HTTP request to an HTTPS server."),
        "plain HTTP"
    );

    // A certificate from a CA the server does not trust, and none at all.
    let foreign = ForeignCa::new("not the nomad CA");
    let cert = foreign.issue(&format!("cli.{REGION}.nomad"), &[], &[]);
    let with_foreign = NomadHttp::new(&s.http_url, &s.ca_pem, Some(&cert)).unwrap();
    let err = with_foreign
        .get(leader)
        .await
        .expect_err("foreign client certificate must be refused");
    // The server's TLS alert reaches us: it is the certificate it refused.
    assert!(format!("{err:#}").contains("UnknownCA"), "{err:#}");
    let anonymous = NomadHttp::new(&s.http_url, &s.ca_pem, None).unwrap();
    let err = anonymous
        .get(leader)
        .await
        .expect_err("no client certificate must be refused");
    assert!(format!("{err:#}").contains("CertificateRequired"), "{err:#}");

    // And we refuse a server whose certificate our CA did not issue.
    let wrong_trust = NomadHttp::new(&s.http_url, foreign.cert_pem(), Some(&s.cli)).unwrap();
    wrong_trust
        .get(leader)
        .await
        .expect_err("server certificate must not verify against another CA");
}

#[tokio::test]
async fn three_servers_elect_a_leader_and_fail_over() {
    let p = pki().await;
    let mut c = NomadCluster::start3(&p.cfg, &p.ca)
        .await
        .expect("three servers elect a leader");
    eprintln!("3-server cluster: leader after {:?}", c.start_to_leader);
    let old = c.leader().await.expect("a leader");
    let old_addr = c.servers[old].rpc_addr();

    let t = Instant::now();
    c.servers[old].kill();
    let survivor = (old + 1) % 3;
    let new = c.servers[survivor]
        .wait_leader_other_than(Some(&old_addr), Duration::from_secs(60))
        .await
        .expect("a new leader after the old one died");
    eprintln!("failover: {old_addr} killed, {new} leads after {:?}", t.elapsed());
    assert_ne!(new, old_addr);
    let idx = c.leader().await.expect("leader");
    assert_ne!(idx, old);
    // The other survivor agrees.
    let third = 3 - old - survivor;
    let seen = c.servers[third]
        .wait_leader_other_than(Some(&old_addr), Duration::from_secs(30))
        .await
        .expect("the other survivor sees the new leader");
    assert_eq!(seen, new);
}

/// A raw_exec task that records its allocation ID in the host and stays up.
const SMOKE_JOB: &str = r#"
job "smoke" {
  type = "service"
  group "g" {
    update {
      min_healthy_time  = "1s"
      healthy_deadline  = "1m"
      progress_deadline = "2m"
    }
    task "t" {
      driver = "raw_exec"
      config {
        command = "/bin/sh"
        args    = ["-c", "echo $NOMAD_ALLOC_ID > /run/smoke-alloc && exec sleep 3600"]
      }
      resources {
        cpu    = 50
        memory = 32
      }
    }
  }
}
"#;

#[tokio::test]
async fn client_in_a_test_host_joins_and_runs_a_raw_exec_job() {
    let (p, opts) = tokio::join!(pki(), nomad::host_options());
    let host = TestHost::boot("nomad-c1", opts.expect("nomad binary"))
        .await
        .expect("test host boots");
    eprintln!(
        "test host {} ({}) booted in {:?}",
        host.name, host.ip, host.boot_time
    );

    // The server listens where the host can reach it: this machine's end of
    // the host's veth.
    let opts = ServerOpts {
        bind: IpAddr::V4(host.gateway_ip),
        ..ServerOpts::default()
    };
    let s = NomadServer::start_with(&p.cfg, &p.ca, opts)
        .await
        .expect("nomad server starts");
    eprintln!(
        "nomad server {} leader after {:?}",
        s.http_url,
        s.start_to_leader.unwrap()
    );
    let token = s.bootstrap_acl().await.expect("bootstrap");
    let api = s.api().with_token(&token);

    let client = NomadClient::start_on(&host, &s, &p.cfg, &p.ca, &token)
        .await
        .expect("client joins and becomes ready");
    eprintln!(
        "node {} ({}) ready after {:?}",
        client.name, client.node_id, client.join_time
    );
    let drivers = client.drivers(&api).await.expect("node drivers");
    for d in &drivers {
        eprintln!(
            "driver {:<12} detected={:<5} healthy={:<5} {}",
            d.name, d.detected, d.healthy, d.description
        );
    }
    let raw_exec = drivers.iter().find(|d| d.name == "raw_exec");
    assert!(
        raw_exec.is_some_and(|d| d.detected && d.healthy),
        "raw_exec must be healthy: {drivers:?}"
    );

    // Let the server parse the HCL, then register it.
    let job = api
        .put(
            "/v1/jobs/parse",
            &json!({"JobHCL": SMOKE_JOB, "Canonicalize": true}),
        )
        .await
        .expect("parse");
    let t = Instant::now();
    let reg = api.put("/v1/jobs", &json!({"Job": job})).await.expect("register");
    assert!(reg["EvalID"].as_str().is_some_and(|e| !e.is_empty()), "{reg}");

    let deadline = Instant::now() + Duration::from_secs(120);
    let deployment = loop {
        let d = api.get("/v1/job/smoke/deployment").await.expect("deployment");
        match d["Status"].as_str() {
            Some("successful") => break d,
            Some("failed" | "cancelled") => panic!(
                "deployment ended {d}\nallocations: {}\nclient log:\n{}",
                api.get("/v1/job/smoke/allocations?all=true")
                    .await
                    .unwrap_or_default(),
                NomadClient::log_tail(&host, 40).await
            ),
            _ if Instant::now() > deadline => panic!(
                "no successful deployment within 120 s: {d}\nallocations: {}\nclient log:\n{}",
                api.get("/v1/job/smoke/allocations").await.unwrap_or_default(),
                NomadClient::log_tail(&host, 40).await
            ),
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    eprintln!(
        "deployment {} successful after {:?}",
        deployment["ID"],
        t.elapsed()
    );

    let allocs = api.get("/v1/job/smoke/allocations").await.expect("allocations");
    let allocs = allocs.as_array().expect("a list");
    assert_eq!(allocs.len(), 1, "{allocs:?}");
    let a = &allocs[0];
    assert_eq!(a["NodeID"], client.node_id.as_str(), "{a}");
    assert_eq!(a["ClientStatus"], "running", "{a}");
    // The task really ran in the host, as that allocation.
    let seen = host.exec_ok("cat /run/smoke-alloc").await.expect("marker file");
    assert_eq!(seen.trim(), a["ID"].as_str().unwrap());
}
