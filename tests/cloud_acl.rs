//! The acl component against real Nomad servers over real mTLS, with the
//! certificates edgectl itself issued and stored in SSM. As in a real
//! `cloud up`, the servers boot while edgectl waits for them: the test
//! starts `cloud up` with NOMAD_ADDR at free ports, waits until the server
//! certificate appears in SSM, then starts Nomad with it on those ports.

mod common;

use common::{ssm, Run, Stand};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use testkit::nomad::{GivenTls, NomadServer, Ports, ServerOpts, LEADER_TIMEOUT};
use testkit::pca::Issued;

const REGION: &str = "eu-west-1";
const CA: &str = "/infrastructure/certificates/ca-caCertificate";
const SERVER_CERT: &str = "/infrastructure/certificates/nomad-server-eu-west-1-Certificate";
const SERVER_KEY: &str = "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey";
const CLI_CERT: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate";
const CLI_KEY: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey";
const BOOTSTRAP: &str = "/infrastructure/nomad/token/bootstrap";
const CI: &str = "/infrastructure/nomad/token/ci";
const POLICY: &str = "/infrastructure/nomad/policies/submit-job";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// A whole `cloud up` on a busy two-core machine, servers included.
const UP_TIMEOUT: Duration = Duration::from_secs(300);

fn issued(cert: &str, key: &str, ca: &str) -> Issued {
    Issued {
        cert_pem: cert.to_string(),
        chain_pem: ca.to_string(),
        key_pem: key.to_string(),
        serial_hex: String::new(),
    }
}

/// The PEMs edgectl stored: CA, server certificate and key, CLI
/// certificate and key.
struct Pems(Vec<String>);

impl Pems {
    fn given(&self) -> GivenTls {
        let p = &self.0;
        GivenTls {
            ca_pem: p[0].clone(),
            server: issued(&p[1], &p[2], &p[0]),
            cli: issued(&p[3], &p[4], &p[0]),
            region: REGION.into(),
        }
    }
}

/// Waits until edgectl (still running) has stored the CA and the Nomad
/// certificates in SSM.
async fn wait_for_certs(stand: &Stand, child: &mut tokio::process::Child) -> Pems {
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        let mut got = Vec::new();
        for name in [CA, SERVER_CERT, SERVER_KEY, CLI_CERT, CLI_KEY] {
            match ssm(stand, name).await {
                Some(v) => got.push(v),
                None => break,
            }
        }
        if got.len() == 5 {
            return Pems(got);
        }
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output_ref().await;
            panic!("edgectl ended ({status}) before the certificates were in SSM:\n{out}");
        }
        assert!(
            Instant::now() < deadline,
            "no certificates in SSM after {UP_TIMEOUT:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

trait ChildExt {
    async fn wait_with_output_ref(&mut self) -> String;
}

impl ChildExt for tokio::process::Child {
    async fn wait_with_output_ref(&mut self) -> String {
        use tokio::io::AsyncReadExt;
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            s.read_to_string(&mut out).await.ok();
        }
        if let Some(mut s) = self.stderr.take() {
            out.push_str("\n--- stderr\n");
            s.read_to_string(&mut out).await.ok();
        }
        out
    }
}

fn up(stand: &Stand, env: &[(&str, &str)]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.arg("--config").arg(stand.config_path()).args(["cloud", "up"]);
    stand.env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("edgectl starts")
}

async fn finish(child: tokio::process::Child) -> Run {
    let out = tokio::time::timeout(UP_TIMEOUT, child.wait_with_output())
        .await
        .expect("cloud up finishes in time")
        .expect("edgectl runs");
    Run(out, None)
}

async fn edgectl_with(stand: &Stand, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.arg("--config").arg(stand.config_path()).args(args);
    stand.env(&mut cmd);
    for (k, v) in env {
        cmd.env(k, v);
    }
    common::run(cmd).await
}

fn server_opts(ports: &[Ports], i: usize) -> ServerOpts {
    ServerOpts {
        bind: LOCALHOST,
        bootstrap_expect: ports.len() as u8,
        retry_join: ports
            .iter()
            .map(|q| SocketAddr::new(LOCALHOST, q.serf).to_string())
            .collect(),
        ports: Some(ports[i]),
        ..ServerOpts::default()
    }
}

/// The highest ModifyIndex over every ACL object: unchanged means Nomad
/// saw no ACL write.
async fn acl_index(api: &testkit::nomad::NomadHttp) -> u64 {
    let mut max = 0;
    for path in [
        "/v1/acl/policies",
        "/v1/acl/roles",
        "/v1/acl/tokens",
        "/v1/acl/binding-rules",
        "/v1/acl/auth-methods",
    ] {
        let list = api.get(path).await.unwrap_or_else(|e| panic!("{path}: {e:#}"));
        for item in list.as_array().into_iter().flatten() {
            max = max.max(item["ModifyIndex"].as_u64().unwrap_or(0));
        }
    }
    max
}

#[tokio::test]
async fn up_waits_for_a_leader_bootstraps_and_a_second_up_writes_nothing() {
    let stand = Stand::start().await;
    let ports = Ports::free_many(LOCALHOST, 3).unwrap();
    let addr = format!("https://127.0.0.1:{}", ports[0].http);
    let mut child = up(&stand, &[("NOMAD_ADDR", &addr)]);
    let pems = wait_for_certs(&stand, &mut child).await;

    // One server of three: up, but no leader.
    let mut first = NomadServer::spawn_with_tls(pems.given(), server_opts(&ports, 0))
        .await
        .unwrap();
    let deadline = Instant::now() + UP_TIMEOUT;
    while ssm(&stand, BOOTSTRAP).await.is_none() {
        assert!(
            Instant::now() < deadline,
            "the bootstrap secret never reached SSM"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            child.wait_with_output_ref().await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // The secret is in SSM while Nomad cannot have been bootstrapped yet.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        child.try_wait().unwrap().is_none(),
        "{}",
        child.wait_with_output_ref().await
    );
    let (status, leader) = first
        .api()
        .send(reqwest::Method::GET, "/v1/status/leader", None)
        .await
        .unwrap();
    assert!(
        leader.contains("No cluster leader") || leader == "\"\"",
        "one of three servers must not elect itself: {status} {leader}"
    );

    let _others = [
        NomadServer::spawn_with_tls(pems.given(), server_opts(&ports, 1))
            .await
            .unwrap(),
        NomadServer::spawn_with_tls(pems.given(), server_opts(&ports, 2))
            .await
            .unwrap(),
    ];
    first.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let run = finish(child).await;
    eprintln!("--- edgectl said:\n{}\n{}", run.stdout(), run.stderr());
    run.expect(0);

    // The stored secret is the management token.
    let token = ssm(&stand, BOOTSTRAP).await.unwrap();
    let api = first.api().with_token(&token);
    let me = api.get("/v1/acl/token/self").await.unwrap();
    assert_eq!(me["Type"], "management");
    let policy = api.get("/v1/acl/policy/submit-job").await.unwrap();
    let text = ssm(&stand, POLICY).await.unwrap();
    assert_eq!(policy["Rules"].as_str(), Some(text.as_str()));
    assert!(
        text.contains(r#"capabilities = ["submit-job", "read-logs"]"#),
        "{text}"
    );
    let roles = api.get("/v1/acl/roles").await.unwrap();
    assert!(
        roles
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["Name"] == "engineering-role"),
        "{roles}"
    );

    // The CI token submits a job and cannot read ACL tokens.
    let ci = ssm(&stand, CI).await.expect("CI token in SSM");
    let ci_api = first.api().with_token(&ci);
    let job = json!({"Job": {"ID": "acl-probe", "Name": "acl-probe", "Type": "batch", "Datacenters": ["*"],
        "TaskGroups": [{"Name": "g", "Count": 1, "Tasks": [{"Name": "t", "Driver": "raw_exec",
            "Config": {"command": "/bin/true"}}]}]}});
    let submitted = ci_api
        .put("/v1/jobs", &job)
        .await
        .expect("CI token submits a job");
    assert!(submitted["EvalID"].is_string(), "{submitted}");
    let (status, body) = ci_api
        .send(reqwest::Method::GET, "/v1/acl/tokens", None)
        .await
        .unwrap();
    assert_eq!(status, 403, "CI token must not list tokens: {body}");

    // With an ingress, the UI redirect names it, not this run's NOMAD_ADDR.
    if let (Ok(m), Some(lb)) = (
        api.get("/v1/acl/auth-method/oidc-auth").await,
        ssm(&stand, "/infrastructure/nomad/endpoint").await,
    ) {
        let uris = &m["Config"]["AllowedRedirectURIs"];
        assert_eq!(
            uris,
            &json!([
                format!("https://{lb}:4646/ui/settings/tokens"),
                "http://localhost:4649/oidc/callback"
            ]),
            "{m}"
        );
        assert_eq!(
            m["Config"]["OIDCScopes"],
            json!(["aws.cognito.signin.user.admin"])
        );
        assert_eq!(
            m["Config"]["ListClaimMappings"],
            json!({"cognito:groups": "roles"})
        );
    }
    // A second run: no AWS write, no Nomad ACL write, one binding rule at most.
    let before = acl_index(&api).await;
    stand.sim.reset_requests();
    let again = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    eprintln!("--- second up:\n{}\n{}", again.stdout(), again.stderr());
    again.expect(0);
    assert_eq!(stand.writes(), Vec::<String>::new(), "{}", again.stdout());
    assert_eq!(acl_index(&api).await, before, "{}", again.stdout());
    let rules = api.get("/v1/acl/binding-rules").await.unwrap();
    assert!(rules.as_array().unwrap().len() <= 1, "{rules}");
    let methods = api.get("/v1/acl/auth-methods").await.unwrap();
    if !methods.as_array().unwrap().is_empty() {
        assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
        assert!(again.stdout().contains("no changes"), "{}", again.stdout());

        // A twin binding rule (Nomad does not deduplicate) is removed.
        let twin = api
            .put(
                "/v1/acl/binding-rule",
                &json!({"AuthMethod": "oidc-auth", "BindType": "role", "BindName": "engineering-role"}),
            )
            .await
            .unwrap();
        let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
        run.expect(0);
        assert!(
            run.stdout().contains("- nomad:acl/binding-rule/oidc-auth#"),
            "{}",
            run.stdout()
        );
        let rules = api.get("/v1/acl/binding-rules").await.unwrap();
        assert_eq!(rules.as_array().unwrap().len(), 1, "{rules}");
        assert_ne!(rules[0]["ID"], twin["ID"], "the original rule stays");
    }

    let status = edgectl_with(&stand, &["cloud", "status"], &[("NOMAD_ADDR", &addr)]).await;
    status.expect(0);
    assert!(
        status.stdout().contains("nomad:acl/token/edgectl-ci"),
        "{}",
        status.stdout()
    );

    // `down` of the ACLs alone removes the CI token and policy text, and
    // keeps the management token while the servers may still run.
    let down = edgectl_with(
        &stand,
        &["cloud", "down", "--yes", "--only", "acl"],
        &[("NOMAD_ADDR", &addr)],
    )
    .await;
    eprintln!("--- down:\n{}\n{}", down.stdout(), down.stderr());
    down.expect(0);
    assert_eq!(ssm(&stand, CI).await, None);
    assert_eq!(ssm(&stand, POLICY).await, None);
    assert_eq!(ssm(&stand, BOOTSTRAP).await.as_deref(), Some(token.as_str()));
    // The whole `down` takes the servers, and the token goes with them.
    let down = edgectl_with(&stand, &["cloud", "down", "--yes"], &[("NOMAD_ADDR", &addr)]).await;
    down.expect(0);
    assert!(
        down.stdout().contains(&format!("- ssm:{BOOTSTRAP}")),
        "{}",
        down.stdout()
    );
    assert_eq!(ssm(&stand, BOOTSTRAP).await, None);
}

/// Runs `cloud up` against a dead port until it gives up waiting: the CA,
/// certificates and bootstrap secret are in SSM, Nomad was never reached.
async fn first_up_without_nomad(stand: &Stand) -> (Pems, Ports) {
    let ports = Ports::free(LOCALHOST).unwrap();
    let addr = format!("https://127.0.0.1:{}", ports.http);
    let run = edgectl_with(
        stand,
        &["cloud", "up"],
        &[("NOMAD_ADDR", &addr), ("EDGECTL_NOMAD_WAIT", "2")],
    )
    .await;
    run.expect(1);
    let err = run.stderr();
    eprintln!("--- edgectl said:\n{err}");
    assert!(
        err.contains(&format!("waiting for Nomad at {addr} to answer")),
        "{err}"
    );
    assert!(err.contains("onnection refused"), "{err}");
    assert!(
        ssm(stand, BOOTSTRAP).await.is_some(),
        "the secret is stored before any Nomad call"
    );
    let mut pems = Vec::new();
    for name in [CA, SERVER_CERT, SERVER_KEY, CLI_CERT, CLI_KEY] {
        pems.push(ssm(stand, name).await.unwrap());
    }
    (Pems(pems), ports)
}

#[tokio::test]
async fn bootstrapped_by_a_killed_run_converges_and_a_foreign_bootstrap_is_a_clear_error() {
    let stand = Stand::start().await;
    // Unreachable endpoint: a clear error once the (short) wait is over.
    let (pems, ports) = first_up_without_nomad(&stand).await;
    let addr = format!("https://127.0.0.1:{}", ports.http);
    let opts = ServerOpts {
        ports: Some(ports),
        ..ServerOpts::default()
    };
    let mut server = NomadServer::spawn_with_tls(pems.given(), opts).await.unwrap();
    server.wait_leader(LEADER_TIMEOUT).await.unwrap();

    // TLS name mismatch: refused before anything is sent.
    let run = edgectl_with(
        &stand,
        &["cloud", "up"],
        &[
            ("NOMAD_ADDR", &addr),
            ("NOMAD_TLS_SERVER_NAME", "nomad.example.org"),
        ],
    )
    .await;
    run.expect(1);
    eprintln!("--- edgectl said:\n{}", run.stderr());
    assert!(run.stderr().contains("TLS with Nomad failed"), "{}", run.stderr());
    assert!(run.stderr().contains("nomad.example.org"), "{}", run.stderr());

    // A run killed right after `POST /v1/acl/bootstrap`: Nomad holds the
    // stored secret, nothing else exists yet.
    let secret = ssm(&stand, BOOTSTRAP).await.unwrap();
    let (status, body) = server
        .api()
        .send(
            reqwest::Method::POST,
            "/v1/acl/bootstrap",
            Some(&json!({ "BootstrapSecret": secret })),
        )
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let api = server.api().with_token(&secret);

    // Nomad refuses a second default auth method: its (text/plain) answer
    // reaches the user with the operation and the address.
    let other = json!({"Name": "other", "Type": "OIDC", "TokenLocality": "local", "MaxTokenTTL": "1h0m0s",
        "Default": true, "Config": {"OIDCDiscoveryURL": "https://idp.example.org", "OIDCClientID": "x",
        "OIDCClientSecret": "y", "BoundAudiences": ["x"],
        "AllowedRedirectURIs": ["http://localhost:4649/oidc/callback"]}});
    api.put("/v1/acl/auth-method", &other).await.unwrap();
    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    run.expect(1);
    let err = run.stderr();
    eprintln!("--- edgectl said:\n{err}");
    assert!(
        err.contains(&format!("POST {addr}/v1/acl/auth-method: Nomad answered 400:")),
        "{err}"
    );
    assert!(err.contains("default method already exists"), "{err}");
    api.send(reqwest::Method::DELETE, "/v1/acl/auth-method/other", None)
        .await
        .unwrap();

    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    run.expect(0);
    assert_eq!(api.get("/v1/acl/token/self").await.unwrap()["Type"], "management");
    assert!(api.get("/v1/acl/policy/submit-job").await.is_ok());
    assert!(ssm(&stand, CI).await.is_some());

    // Bootstrapped, but the token is nowhere: the clear error.
    let client = aws_sdk_ssm::Client::new(&stand.sdk().await);
    client.delete_parameter().name(BOOTSTRAP).send().await.unwrap();
    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    run.expect(1);
    let err = run.stderr();
    eprintln!("--- edgectl said:\n{err}");
    assert!(err.contains("already ACL-bootstrapped"), "{err}");
    assert!(err.contains("acl-bootstrap-reset"), "{err}");
    assert!(err.contains("NOMAD_TOKEN"), "{err}");

    // The procedure the hint gives works: the reset index into the data
    // dir, and the next up bootstraps with the secret it stored.
    let index: String = err
        .split("reset index: ")
        .nth(1)
        .unwrap()
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    let data = server.log_path().parent().unwrap().join("data/server");
    std::fs::write(data.join("acl-bootstrap-reset"), &index).unwrap();
    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    run.expect(0);
    let reset = ssm(&stand, BOOTSTRAP).await.unwrap();
    let me = server
        .api()
        .with_token(&reset)
        .get("/v1/acl/token/self")
        .await
        .unwrap();
    assert_eq!(me["Type"], "management");

    // The other way out: a management token in NOMAD_TOKEN is adopted into
    // SSM, and later runs need no variable.
    client.delete_parameter().name(BOOTSTRAP).send().await.unwrap();
    let run = edgectl_with(
        &stand,
        &["cloud", "up"],
        &[("NOMAD_ADDR", &addr), ("NOMAD_TOKEN", &secret)],
    )
    .await;
    run.expect(0);
    assert!(
        run.stdout()
            .contains("adopt the management token from NOMAD_TOKEN"),
        "{}",
        run.stdout()
    );
    assert!(!run.stdout().contains(&secret), "the token must not be printed");
    assert_eq!(ssm(&stand, BOOTSTRAP).await.as_deref(), Some(secret.as_str()));
    let again = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
}

#[tokio::test]
async fn a_server_from_another_ca_is_refused() {
    let stand = Stand::start().await;
    let (_, _) = first_up_without_nomad(&stand).await;
    // A Nomad whose certificates come from the harness's own CA.
    let cfg = stand.sdk().await;
    let ca = testkit::pca::TestCa::create(&cfg, "Other CA").await.unwrap();
    let other = NomadServer::start(&cfg, &ca).await.unwrap();
    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &other.http_url)]).await;
    run.expect(1);
    let err = run.stderr();
    eprintln!("--- edgectl said:\n{err}");
    assert!(err.contains("TLS with Nomad failed"), "{err}");
    assert!(
        err.contains("UnknownIssuer") || err.contains("unknown issuer"),
        "{err}"
    );
}

#[tokio::test]
async fn killed_right_after_the_bootstrap_call_the_next_up_converges() {
    let stand = Stand::start().await;
    let (pems, ports) = first_up_without_nomad(&stand).await;
    let addr = format!("https://127.0.0.1:{}", ports.http);
    let opts = ServerOpts {
        ports: Some(ports),
        ..ServerOpts::default()
    };
    let mut server = NomadServer::spawn_with_tls(pems.given(), opts).await.unwrap();
    server.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let secret = ssm(&stand, BOOTSTRAP).await.unwrap();
    let api = server.api().with_token(&secret);

    // Kill edgectl the moment Nomad knows the stored secret.
    let mut child = up(&stand, &[("NOMAD_ADDR", &addr)]);
    let deadline = Instant::now() + UP_TIMEOUT;
    loop {
        if api.get("/v1/acl/token/self").await.is_ok() {
            child.kill().await.unwrap();
            break;
        }
        assert!(Instant::now() < deadline, "Nomad was never bootstrapped");
        assert!(
            child.try_wait().unwrap().is_none(),
            "{}",
            child.wait_with_output_ref().await
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ci_before = ssm(&stand, CI).await;
    eprintln!("killed; CI token stored before the kill: {}", ci_before.is_some());

    // The stored secret still manages the cluster, and the next up finishes.
    let run = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    eprintln!("--- after the kill:\n{}\n{}", run.stdout(), run.stderr());
    run.expect(0);
    assert_eq!(ssm(&stand, BOOTSTRAP).await.as_deref(), Some(secret.as_str()));
    assert_eq!(api.get("/v1/acl/token/self").await.unwrap()["Type"], "management");
    let ci = ssm(&stand, CI).await.expect("CI token stored");
    let tokens = api.get("/v1/acl/tokens").await.unwrap();
    let ours: Vec<_> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["Name"] == "edgectl-ci")
        .collect();
    assert_eq!(ours.len(), 1, "{tokens}");
    let me = server
        .api()
        .with_token(&ci)
        .get("/v1/acl/token/self")
        .await
        .unwrap();
    assert_eq!(me["Policies"], json!(["submit-job"]));
    let again = edgectl_with(&stand, &["cloud", "up"], &[("NOMAD_ADDR", &addr)]).await;
    again.expect(0);
    assert!(again.stdout().contains("no changes"), "{}", again.stdout());
}

/// The `error:` and `hint:` lines of a failed run: one error line, no
/// debug output. Before any apply (`progress` false) they must be all of
/// stderr; an apply also reports its steps there.
fn error_and_hints(run: &Run, progress: bool) -> (String, Vec<String>) {
    let err = run.stderr();
    let mut errors = Vec::new();
    let mut hints = Vec::new();
    for line in err.lines() {
        if let Some(e) = line.strip_prefix("error: ") {
            errors.push(e.to_string());
        } else if let Some(h) = line.strip_prefix("hint: ") {
            hints.push(h.to_string());
        } else {
            assert!(
                progress && (line.is_empty() || line.starts_with("  ")),
                "stderr holds more than the error and its hints: {line:?}\n{err}"
            );
        }
    }
    assert_eq!(errors.len(), 1, "one error line:\n{err}");
    for noise in ["Caused by", "ApiError", "backtrace", "panicked", "{ status"] {
        assert!(!err.contains(noise), "{noise:?} in:\n{err}");
    }
    (errors.remove(0), hints)
}

/// Writes `text` into the stand's directory; the path.
fn file(stand: &Stand, name: &str, text: &str) -> String {
    let path = stand.dir.path().join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// A token Nomad accepts but that lacks ACL write (a client token with a
/// read-only policy), on a cluster bootstrapped outside edgectl: edgectl
/// uses it (there is no token of its own), does not try to bootstrap
/// (Nomad knows the token, so ACLs are bootstrapped), and stops at the
/// first ACL read with Nomad's 403 and the way out, before any write to
/// SSM or Nomad.
#[tokio::test]
async fn a_nomad_token_without_acl_write_fails_with_nomads_403_and_writes_nothing() {
    let stand = Stand::start().await;
    let cfg = stand.sdk().await;
    let ca = testkit::pca::TestCa::create(&cfg, "Nomad CA").await.unwrap();
    let server = NomadServer::start(&cfg, &ca).await.unwrap();
    let management = server.bootstrap_acl().await.unwrap();
    let api = server.api().with_token(&management);
    let rules = "node { policy = \"read\" }\nagent { policy = \"read\" }\n";
    api.put(
        "/v1/acl/policy/read-only",
        &json!({"Name": "read-only", "Rules": rules}),
    )
    .await
    .unwrap();
    let reader = api
        .put(
            "/v1/acl/token",
            &json!({"Name": "reader", "Type": "client", "Policies": ["read-only"]}),
        )
        .await
        .unwrap();
    let secret = reader["SecretID"].as_str().unwrap().to_string();
    let env = [
        ("NOMAD_ADDR", server.http_url.clone()),
        ("NOMAD_CACERT", file(&stand, "nomad-ca.pem", &server.ca_pem)),
        ("NOMAD_CLIENT_CERT", file(&stand, "cli.pem", &server.cli.cert_pem)),
        (
            "NOMAD_CLIENT_KEY",
            file(&stand, "cli-key.pem", &server.cli.key_pem),
        ),
        ("NOMAD_TOKEN", secret.clone()),
        // The harness's servers are in Nomad's default region.
        ("NOMAD_TLS_SERVER_NAME", "server.global.nomad".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let before = acl_index(&api).await;
    stand.sim.reset_requests();

    for command in [&["cloud", "up"][..], &["cloud", "plan"]] {
        let run = edgectl_with(&stand, command, &env).await;
        eprintln!("--- {command:?} said:\n{}\n{}", run.stdout(), run.stderr());
        run.expect(1);
        let (error, hints) = error_and_hints(&run, false);
        assert_eq!(
            error,
            format!(
                "observing acl: NOMAD_TOKEN is a client token (policies: read-only) without ACL write, and \
                 edgectl needs a management token: GET {}/v1/acl/tokens: Nomad answered 403: Permission denied",
                server.http_url
            )
        );
        assert_eq!(hints.len(), 1, "{hints:?}");
        let hint = &hints[0];
        assert!(
            hint.contains("managing Nomad's ACLs takes a management token (no token in /infrastructure/nomad/token/bootstrap)"),
            "{hint}"
        );
        assert!(hint.contains("run again with NOMAD_TOKEN set to"), "{hint}");
        for out in [run.stdout(), run.stderr()] {
            assert!(!out.contains(&secret), "the token must not be printed");
            assert!(!out.contains(&management), "no token must be printed");
        }
        assert!(run.stdout().trim().is_empty(), "no plan shown: {}", run.stdout());
    }

    // Nothing written anywhere: no AWS write (no bootstrap secret, policy
    // text or CI token in SSM), no ACL write in Nomad.
    assert_eq!(stand.writes(), Vec::<String>::new());
    for name in [BOOTSTRAP, CI, POLICY] {
        assert_eq!(ssm(&stand, name).await, None, "{name}");
    }
    assert_eq!(acl_index(&api).await, before);
    let tokens = api.get("/v1/acl/tokens").await.unwrap();
    let names: Vec<&str> = tokens
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["Name"].as_str())
        .collect();
    assert!(!names.contains(&"edgectl-ci"), "{tokens}");
    let (status, _) = api
        .send(reqwest::Method::GET, "/v1/acl/policy/submit-job", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
}

/// A stand-in Nomad over TLS: `/v1/status/leader` names a leader, every
/// ACL call answers 500 `rpc error: test fault`. It logs `METHOD path`.
struct FaultyNomad {
    url: String,
    ca_pem: String,
    calls: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultyNomad {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const FAULT: &str = "rpc error: test fault";

impl FaultyNomad {
    async fn start() -> FaultyNomad {
        use http_body_util::Full;
        use hyper::body::Bytes;
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

        let ca = testkit::pca::ForeignCa::new("Faulty Nomad CA");
        let cert = ca.issue_ec(
            "server.eu-west-1.nomad",
            &["server.eu-west-1.nomad"],
            &[LOCALHOST],
        );
        let chain =
            vec![rustls::pki_types::CertificateDer::from_pem_slice(cert.cert_pem.as_bytes()).unwrap()];
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let calls = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = calls.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let path = req.uri().path().to_string();
                            log.lock().unwrap().push(format!("{} {path}", req.method()));
                            let (status, body) = if path == "/v1/status/leader" {
                                (200, "\"127.0.0.1:4647\"")
                            } else if path.starts_with("/v1/acl/") {
                                (500, FAULT)
                            } else {
                                (404, "404 page not found")
                            };
                            let resp = hyper::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(body.as_bytes())))
                                .unwrap();
                            async move { Ok::<_, std::convert::Infallible>(resp) }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        FaultyNomad {
            url,
            ca_pem: ca.cert_pem().to_string(),
            calls,
            task,
        }
    }

    fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
}

/// Nomad's 500 answers reach the user as one error line with the
/// operation, the status and Nomad's own text; nothing is written.
#[tokio::test]
async fn nomads_500_answers_are_shown_with_the_operation_and_nothing_is_written() {
    let stand = Stand::start().await;
    let nomad = FaultyNomad::start().await;
    let ca = file(&stand, "faulty-ca.pem", &nomad.ca_pem);
    let base = [("NOMAD_ADDR", nomad.url.as_str()), ("NOMAD_CACERT", ca.as_str())];

    // No token anywhere: nothing to ask Nomad's ACLs yet, and the leader
    // answer over TLS is accepted (the plan is to bootstrap).
    let plan = edgectl_with(&stand, &["cloud", "plan"], &base).await;
    plan.expect(0);
    assert!(
        plan.stdout()
            .contains("+ nomad:acl/bootstrap (no management token in SSM)"),
        "{}",
        plan.stdout()
    );
    assert_eq!(nomad.calls(), ["GET /v1/status/leader"]);

    // A token to check: the check is an ACL call, and Nomad fails it.
    let mut env = base.to_vec();
    env.push(("NOMAD_TOKEN", "00000000-0000-0000-0000-000000000001"));
    stand.sim.reset_requests();
    let run = edgectl_with(&stand, &["cloud", "up"], &env).await;
    eprintln!("--- edgectl said:\n{}\n{}", run.stdout(), run.stderr());
    run.expect(1);
    let (error, hints) = error_and_hints(&run, false);
    // A 500 of server trouble is retried until EDGECTL_NOMAD_WAIT (issue 14).
    let (head, tail) = error
        .split_once(" attempts in ")
        .unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        head.rsplit_once("gave up after ").map(|(h, _)| h),
        Some(format!("observing acl: GET {}/v1/acl/token/self: ", nomad.url).as_str()),
        "{error}"
    );
    assert!(
        tail.ends_with(&format!("s: Nomad answered 500: {FAULT}")),
        "{error}"
    );
    assert_eq!(hints, Vec::<String>::new());
    assert!(!run.stderr().contains("00000000-0000-0000-0000-000000000001"));
    assert_eq!(stand.writes(), Vec::<String>::new());
    for name in [BOOTSTRAP, CI, POLICY] {
        assert_eq!(ssm(&stand, name).await, None, "{name}");
    }
    assert!(
        nomad.calls().iter().all(|c| c.starts_with("GET ")),
        "no write reached Nomad: {:?}",
        nomad.calls()
    );

    // No token at all: the AWS side is made and the bootstrap secret
    // stored (before any bootstrap, by design); the bootstrap step's first
    // ACL call fails, and nothing after it runs: no policy text, no CI
    // token in SSM, no write sent to Nomad.
    let run = edgectl_with(&stand, &["cloud", "up"], &base).await;
    eprintln!("--- edgectl said:\n{}\n{}", run.stdout(), run.stderr());
    run.expect(1);
    let (error, hints) = error_and_hints(&run, true);
    // A 500 of server trouble is retried until EDGECTL_NOMAD_WAIT (issue 14).
    let (head, tail) = error
        .split_once(" attempts in ")
        .unwrap_or_else(|| panic!("{error}"));
    assert_eq!(
        head.rsplit_once("gave up after ").map(|(h, _)| h),
        Some(format!("+ nomad:acl/bootstrap: GET {}/v1/acl/token/self: ", nomad.url).as_str()),
        "{error}"
    );
    assert!(
        tail.ends_with(&format!("s: Nomad answered 500: {FAULT}")),
        "{error}"
    );
    assert_eq!(hints, Vec::<String>::new());
    assert!(
        run.stderr().contains("  creating nomad:acl/bootstrap: failed"),
        "{}",
        run.stderr()
    );
    let secret = ssm(&stand, BOOTSTRAP).await.expect("stored before the bootstrap");
    assert!(!run.stdout().contains(&secret) && !run.stderr().contains(&secret));
    assert_eq!(ssm(&stand, CI).await, None);
    assert_eq!(ssm(&stand, POLICY).await, None);
    assert!(
        nomad.calls().iter().all(|c| c.starts_with("GET ")),
        "no write reached Nomad: {:?}",
        nomad.calls()
    );
}
