//! Issue 14: a proxy between edgectl and a real Nomad server answers some
//! requests with a 500, answers some too slowly and cuts some connections
//! after reading the request. `cloud up` (the acl step) and `job run` get
//! through by retrying; with every request failing, edgectl gives up after
//! the (shortened) deadline with one error line.
//!
//! Writes Nomad cannot take twice (creating a role, a binding rule or a
//! token: each POST makes a new one) are passed through untouched: edgectl
//! does not repeat them, and the test checks each was made exactly once.

mod common;

use common::devices::Fleet;
use common::{ssm, Run, Stand, FOUNDATION};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use testkit::nomad::{GivenTls, NomadServer, ServerOpts, LEADER_TIMEOUT};
use testkit::pca::Issued;

const REGION: &str = "eu-west-1";
const TLS_NAME: &str = "server.eu-west-1.nomad";
const CA: &str = "/infrastructure/certificates/ca-caCertificate";
const SERVER_CERT: &str = "/infrastructure/certificates/nomad-server-eu-west-1-Certificate";
const SERVER_KEY: &str = "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey";
const CLI_CERT: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate";
const CLI_KEY: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey";
const BOOTSTRAP: &str = "/infrastructure/nomad/token/bootstrap";
const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// `EDGECTL_NOMAD_WAIT` while faults come and go: each request may be
/// retried for 8 s, one attempt may take 6 s (no less: Nomad holds
/// requests up to 5 s while it has no leader).
const WAIT: u64 = 8;
/// `EDGECTL_NOMAD_WAIT` when every request fails.
const GIVE_UP_WAIT: u64 = 4;
/// Longer than one attempt may take with `WAIT`.
const SLOW: Duration = Duration::from_secs(7);
const FAULT: &str = "rpc error: test fault";
/// What edgectl may spend beyond the deadline (AWS calls, start-up).
const SLACK: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// 500 with a body Nomad uses for server trouble.
    Error500,
    /// No answer for longer than an attempt may take, then a cut.
    Slow,
    /// The connection closed right after the request was read.
    Cut,
}

const CYCLE: [Fault; 3] = [Fault::Error500, Fault::Slow, Fault::Cut];
/// Every third request that may be faulted gets the next fault.
const EVERY_THIRD: u8 = 0;
/// Every request fails (the faults in turn).
const ALL: u8 = 1;
/// Every request a 500.
const ALL_500: u8 = 2;

#[derive(Default, Debug)]
struct Stats {
    requests: usize,
    faultable: usize,
    faults: Vec<(Fault, String)>,
    log: Vec<String>,
}

impl Stats {
    fn count(&self, f: Fault) -> usize {
        self.faults.iter().filter(|(g, _)| *g == f).count()
    }

    fn summary(&self) -> String {
        format!(
            "{} requests, {} faults ({} x 500, {} slow, {} cut)",
            self.requests,
            self.faults.len(),
            self.count(Fault::Error500),
            self.count(Fault::Slow),
            self.count(Fault::Cut)
        )
    }
}

/// The loopback TLS proxy: presents edgectl's server certificate, forwards
/// to Nomad with the CLI certificate, injects faults as `mode` says.
struct Proxy {
    url: String,
    stats: Arc<Mutex<Stats>>,
    mode: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The PEMs `cloud up` stored in SSM.
struct Pems {
    ca: String,
    server_cert: String,
    server_key: String,
    cli_cert: String,
    cli_key: String,
}

impl Pems {
    async fn read(stand: &Stand) -> Pems {
        let get = |name: &'static str| async move {
            ssm(stand, name)
                .await
                .unwrap_or_else(|| panic!("{name} in SSM after cloud up"))
        };
        Pems {
            ca: get(CA).await,
            server_cert: get(SERVER_CERT).await,
            server_key: get(SERVER_KEY).await,
            cli_cert: get(CLI_CERT).await,
            cli_key: get(CLI_KEY).await,
        }
    }

    fn given(&self) -> GivenTls {
        let issued = |cert: &str, key: &str| Issued {
            cert_pem: cert.into(),
            chain_pem: self.ca.clone(),
            key_pem: key.into(),
            serial_hex: String::new(),
        };
        GivenTls {
            ca_pem: self.ca.clone(),
            server: issued(&self.server_cert, &self.server_key),
            cli: issued(&self.cli_cert, &self.cli_key),
            region: REGION.into(),
        }
    }
}

/// Writes Nomad makes anew on every POST: never faulted.
fn repeatable(method: &hyper::Method, path: &str) -> bool {
    !(method == hyper::Method::POST
        && matches!(path, "/v1/acl/role" | "/v1/acl/binding-rule" | "/v1/acl/token"))
}

impl Proxy {
    async fn start(pems: &Pems, upstream: SocketAddr) -> Proxy {
        use tokio_rustls::rustls::{self, pki_types::pem::PemObject};

        let chain = rustls::pki_types::CertificateDer::pem_slice_iter(pems.server_cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = rustls::pki_types::PrivateKeyDer::from_pem_slice(pems.server_key.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let upstream_client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(pems.ca.as_bytes()).unwrap()])
            .identity(
                reqwest::Identity::from_pem(
                    format!("{}\n{}", pems.cli_cert.trim_end(), pems.cli_key).as_bytes(),
                )
                .unwrap(),
            )
            .resolve(TLS_NAME, upstream)
            .no_proxy()
            .build()
            .unwrap();
        let base = format!("https://{TLS_NAME}:{}", upstream.port());
        let listener = tokio::net::TcpListener::bind((LOCALHOST, 0)).await.unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let stats = Arc::new(Mutex::new(Stats::default()));
        let mode = Arc::new(AtomicU8::new(EVERY_THIRD));
        let (st, md) = (stats.clone(), mode.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, st, md, up, base) = (
                    acceptor.clone(),
                    st.clone(),
                    md.clone(),
                    upstream_client.clone(),
                    base.clone(),
                );
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (st, md, up, base) = (st.clone(), md.clone(), up.clone(), base.clone());
                            handle(req, st, md, up, base)
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        Proxy {
            url,
            stats,
            mode,
            task,
        }
    }

    fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    /// The figures so far, and a fresh count.
    fn take(&self) -> Stats {
        std::mem::take(&mut *self.stats.lock().unwrap())
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// One request through the proxy: a fault, or Nomad's answer.
async fn handle(
    req: hyper::Request<hyper::body::Incoming>,
    st: Arc<Mutex<Stats>>,
    md: Arc<AtomicU8>,
    up: reqwest::Client,
    base: String,
) -> Result<hyper::Response<http_body_util::Full<hyper::body::Bytes>>, BoxError> {
    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    let (parts, body) = req.into_parts();
    // Read the whole request first: a cut comes after it.
    let body = body.collect().await?.to_bytes();
    let path = parts.uri.path().to_string();
    let shown = format!("{} {path}", parts.method);
    let fault = {
        let mut s = st.lock().unwrap();
        s.requests += 1;
        s.log.push(shown.clone());
        let fault = if repeatable(&parts.method, &path) {
            let i = s.faultable;
            s.faultable += 1;
            match md.load(Ordering::SeqCst) {
                EVERY_THIRD => (i % 3 == 2).then(|| CYCLE[(i / 3) % 3]),
                ALL => Some(CYCLE[i % 3]),
                _ => Some(Fault::Error500),
            }
        } else {
            None
        };
        if let Some(f) = fault {
            s.faults.push((f, shown.clone()));
        }
        fault
    };
    let cut = || Err::<hyper::Response<Full<Bytes>>, BoxError>("injected: connection cut".into());
    match fault {
        // An error from the service makes hyper drop
        // the connection without an answer.
        Some(Fault::Cut) => return cut(),
        Some(Fault::Slow) => {
            tokio::time::sleep(SLOW).await;
            return cut();
        }
        Some(Fault::Error500) => {
            return Ok(hyper::Response::builder()
                .status(500)
                .body(Full::new(Bytes::from_static(FAULT.as_bytes())))
                .unwrap())
        }
        None => {}
    }
    let pq = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let method = reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap();
    let mut fwd = up.request(method, format!("{base}{pq}")).body(body.to_vec());
    for name in ["X-Nomad-Token", "Content-Type"] {
        if let Some(v) = parts.headers.get(name) {
            fwd = fwd.header(name, v.as_bytes());
        }
    }
    let answer = fwd.send().await?;
    let mut resp = hyper::Response::builder().status(answer.status().as_u16());
    for name in [
        "X-Nomad-Index",
        "X-Nomad-KnownLeader",
        "X-Nomad-LastContact",
        "Content-Type",
    ] {
        if let Some(v) = answer.headers().get(name) {
            resp = resp.header(name, v.as_bytes());
        }
    }
    let bytes = answer.bytes().await?;
    Ok(resp.body(Full::new(bytes)).unwrap())
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

fn show(r: &Run) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", r.stdout(), r.stderr())
}

/// The one `error: ` line of a failed run; nothing of a Debug chain.
fn error_line(r: &Run) -> String {
    let err = r.stderr();
    let errors: Vec<&str> = err.lines().filter_map(|l| l.strip_prefix("error: ")).collect();
    assert_eq!(errors.len(), 1, "one error line:\n{err}");
    for noise in ["Caused by", "ApiError", "panicked", "{ status"] {
        assert!(!err.contains(noise), "{noise:?} in:\n{err}");
    }
    errors[0].to_string()
}

/// The highest ModifyIndex over every ACL object, and the number of
/// binding rules and tokens.
async fn acl_state(api: &testkit::nomad::NomadHttp) -> (u64, usize, usize) {
    let mut max = 0;
    let mut counts = Vec::new();
    for path in [
        "/v1/acl/policies",
        "/v1/acl/roles",
        "/v1/acl/tokens",
        "/v1/acl/binding-rules",
        "/v1/acl/auth-methods",
    ] {
        let list = api.get(path).await.unwrap_or_else(|e| panic!("{path}: {e:#}"));
        let items = list.as_array().cloned().unwrap_or_default();
        counts.push(items.len());
        for item in &items {
            max = max.max(item["ModifyIndex"].as_u64().unwrap_or(0));
        }
    }
    (max, counts[3], counts[2])
}

/// Every request fails: the run ends with exit 1 and one error line
/// naming the attempts, within the deadline and some slack.
fn assert_gave_up(what: &str, r: &Run, took: Duration, stats: &Stats) -> String {
    eprintln!(
        "--- {what}, every request failing: {} in {took:.1?}\n{}",
        stats.summary(),
        show(r)
    );
    r.expect(1);
    let line = error_line(r);
    assert!(
        line.contains("gave up after ") && line.contains(" attempts in "),
        "{line}"
    );
    let limit = Duration::from_secs(GIVE_UP_WAIT) + SLACK;
    assert!(took < limit, "{what} took {took:?}, more than {limit:?}");
    // The client stops once less than two minimal attempts (2 × 100 ms)
    // are left before the deadline: another could not end in time.
    assert!(
        took + Duration::from_millis(200) >= Duration::from_secs(GIVE_UP_WAIT),
        "{what} gave up after {took:?}"
    );
    line
}

#[tokio::test(flavor = "multi_thread")]
async fn acl_step_converges_through_faults_and_gives_up_after_the_deadline() {
    let stand = Stand::start().await;
    stand.edgectl(&["cloud", "up", FOUNDATION]).await.expect(0);
    let pems = Pems::read(&stand).await;
    let mut server = NomadServer::spawn_with_tls(
        pems.given(),
        ServerOpts {
            bind: LOCALHOST,
            bootstrap_expect: 1,
            ..ServerOpts::default()
        },
    )
    .await
    .unwrap();
    server.wait_leader(LEADER_TIMEOUT).await.unwrap();
    let proxy = Proxy::start(&pems, SocketAddr::new(server.bind, server.ports.http)).await;
    let wait = WAIT.to_string();
    let env = [
        ("NOMAD_ADDR", proxy.url.as_str()),
        ("EDGECTL_NOMAD_WAIT", wait.as_str()),
    ];

    // (a) Faults on every third request: the acl step converges in one run.
    let t = Instant::now();
    let first = edgectl_with(&stand, &["cloud", "up", "--only=acl"], &env).await;
    let stats = proxy.take();
    eprintln!(
        "--- cloud up through faults: {} in {:.1?}\n{}",
        stats.summary(),
        t.elapsed(),
        show(&first)
    );
    eprintln!("faulted: {:?}", stats.faults);
    first.expect(0);
    for f in CYCLE {
        assert!(stats.count(f) > 0, "no {f:?} injected: {stats:?}");
    }
    let token = ssm(&stand, BOOTSTRAP).await.expect("the bootstrap token in SSM");
    let api = server.api().with_token(&token);
    let (index, rules, tokens) = acl_state(&api).await;
    // Each non-repeatable create reached Nomad once: no duplicates.
    assert!(rules <= 1, "{rules} binding rules");
    for create in [
        "POST /v1/acl/role",
        "POST /v1/acl/binding-rule",
        "POST /v1/acl/token",
    ] {
        let n = stats.log.iter().filter(|l| *l == create).count();
        assert!(n <= 1, "{create} sent {n} times: {:?}", stats.log);
    }

    // A second run writes nothing, to Nomad or to SSM, faults or not.
    stand.sim.reset_requests();
    let again = edgectl_with(&stand, &["cloud", "up", "--only=acl"], &env).await;
    let stats = proxy.take();
    eprintln!("--- second cloud up: {}\n{}", stats.summary(), show(&again));
    again.expect(0);
    assert_eq!(stand.writes(), Vec::<String>::new());
    assert!(
        stats.log.iter().all(|l| l.starts_with("GET ")),
        "only reads reached Nomad: {:?}",
        stats.log
    );
    assert_eq!(acl_state(&api).await, (index, rules, tokens));

    // (c) Every request a 500: one line with the attempts and Nomad's text.
    proxy.set_mode(ALL_500);
    let wait = GIVE_UP_WAIT.to_string();
    let env = [
        ("NOMAD_ADDR", proxy.url.as_str()),
        ("EDGECTL_NOMAD_WAIT", wait.as_str()),
    ];
    let t = Instant::now();
    let r = edgectl_with(&stand, &["cloud", "up", "--only=acl"], &env).await;
    let took = t.elapsed();
    let line = assert_gave_up("cloud up", &r, took, &proxy.take());
    assert!(
        line.contains(&format!("GET {}/v1/", proxy.url))
            && line.ends_with(&format!("s: Nomad answered 500: {FAULT}")),
        "{line}"
    );
    assert_eq!(acl_state(&api).await, (index, rules, tokens));
}

#[tokio::test(flavor = "multi_thread")]
async fn job_run_succeeds_through_faults_and_gives_up_after_the_deadline() {
    let fleet = Fleet::start(1, "fault").await;
    let host = fleet.hosts[0].name.clone();
    fleet
        .device(&[
            "provision",
            "--all",
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await
        .expect(0);
    fleet.wait_ready(&[host.as_str()]).await;
    let pems = Pems::read(&fleet.stand).await;
    let proxy = Proxy::start(&pems, SocketAddr::new(fleet.server.bind, fleet.server.ports.http)).await;
    let wait = WAIT.to_string();
    let env = [
        ("NOMAD_ADDR", proxy.url.as_str()),
        ("EDGECTL_NOMAD_WAIT", wait.as_str()),
    ];

    // (b) Faults on every third request: deployed and healthy.
    let t = Instant::now();
    let run = fleet
        .edgectl_env(&["--output", "json", "job", "run", "heartbeat"], &env)
        .await;
    let stats = proxy.take();
    eprintln!(
        "--- job run through faults: {} in {:.1?}\n{}",
        stats.summary(),
        t.elapsed(),
        show(&run)
    );
    eprintln!("faulted: {:?}", stats.faults);
    run.expect(0);
    let doc = run.json();
    assert_eq!(doc["outcome"], "deployed", "{}", show(&run));
    assert_eq!(doc["deployment"]["status"], "successful");
    assert!(
        stats.count(Fault::Error500) > 0 && stats.count(Fault::Cut) > 0,
        "{stats:?}"
    );
    // Registered once or again with the same spec: one version.
    let job = fleet.api().get("/v1/job/heartbeat").await.unwrap();
    assert_eq!(job["Version"], 0, "{job}");

    // (c) Every request fails, in turn 500, slow and cut.
    proxy.set_mode(ALL);
    let wait = GIVE_UP_WAIT.to_string();
    let env = [
        ("NOMAD_ADDR", proxy.url.as_str()),
        ("EDGECTL_NOMAD_WAIT", wait.as_str()),
    ];
    let t = Instant::now();
    let r = fleet.edgectl_env(&["job", "run", "heartbeat"], &env).await;
    let took = t.elapsed();
    let line = assert_gave_up("job run", &r, took, &proxy.take());
    assert!(line.contains(&format!("{}/v1/", proxy.url)), "{line}");
    fleet.stop().await;
}
