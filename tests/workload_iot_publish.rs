//! The iot-publish workload (`jobs/iot-publish/app.py`, the container of
//! `jobs/iot-publish.nomad.hcl`), run as it runs in its container — Python
//! with boto3, the default AWS credential chain — against moto's iot-data.
//!
//! The app runs under the Python of moto's venv (scripts/install-moto), which
//! has boto3. Its iot-data calls go through `IotDataTap`, a loopback
//! forwarder that keeps each request and moto's answer: moto's server mode
//! has no endpoint that shows what iot-data received (its `published_payloads`
//! lives on the backend, which `/moto-api/data.json` does not list, and the
//! recorder writes into moto's working directory), so the tap is how the test
//! sees what moto accepted. Every other AWS call goes to the stand's simulator
//! (which forwards to moto and logs it). Nothing reaches a non-loopback
//! address: the environment is cleared, the instance metadata lookup is off
//! and every endpoint is on 127.0.0.1.
//!
//! Counters start at 1: the first message is `{"counter": 1}`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::Stand;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::process::Command;

/// What the iot-data endpoint got, and moto's answer.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    /// Path and query, as sent (`/topics/hello%2Fworld?qos=0`).
    target: String,
    authorization: String,
    body: Vec<u8>,
    status: u16,
}

impl Received {
    /// The topic of a Publish call (`POST /topics/{topic}`).
    fn topic(&self) -> Option<String> {
        let path = self.target.split('?').next()?;
        let topic = path.strip_prefix("/topics/")?;
        Some(topic.replace("%2F", "/").replace("%2f", "/"))
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "payload is not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }
}

/// A loopback HTTP forwarder to moto that keeps every request it passes on.
struct IotDataTap {
    url: String,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for IotDataTap {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl IotDataTap {
    async fn start(moto_url: &str) -> IotDataTap {
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = received.clone();
        let upstream = moto_url.trim_end_matches('/').to_string();
        let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (log, upstream, client) = (log.clone(), upstream.clone(), client.clone());
                tokio::spawn(async move {
                    let service =
                        hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                            let (log, upstream, client) = (log.clone(), upstream.clone(), client.clone());
                            async move {
                                let (parts, body) = req.into_parts();
                                let body = body.collect().await?.to_bytes();
                                let target =
                                    parts.uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
                                let mut fwd = hyper::Request::builder()
                                    .method(parts.method.clone())
                                    .uri(format!("{upstream}{target}"));
                                for (k, v) in &parts.headers {
                                    if *k != hyper::header::HOST {
                                        fwd = fwd.header(k, v);
                                    }
                                }
                                let fwd = fwd.body(Full::new(body.clone())).expect("a valid request");
                                let (status, answer) = match client.request(fwd).await {
                                    Ok(resp) => {
                                        let status = resp.status();
                                        let bytes = resp.into_body().collect().await?.to_bytes();
                                        (status, bytes)
                                    }
                                    Err(e) => (
                                        hyper::StatusCode::BAD_GATEWAY,
                                        Bytes::from(format!("tap: moto unreachable: {e}")),
                                    ),
                                };
                                log.lock().unwrap().push(Received {
                                    method: parts.method.to_string(),
                                    target,
                                    authorization: parts
                                        .headers
                                        .get(hyper::header::AUTHORIZATION)
                                        .and_then(|v| v.to_str().ok())
                                        .unwrap_or_default()
                                        .to_string(),
                                    body: body.to_vec(),
                                    status: status.as_u16(),
                                });
                                let resp = hyper::Response::builder()
                                    .status(status)
                                    .header("content-type", "application/json")
                                    .body(Full::new(answer))
                                    .expect("a valid response");
                                Ok::<_, hyper::Error>(resp)
                            }
                        });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        IotDataTap { url, received, task }
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// The Python of moto's venv (it has boto3), installed if missing.
fn python() -> PathBuf {
    let script = testkit::paths::repo_root().join("scripts/install-moto");
    let out = std::process::Command::new(&script)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let server = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    server.with_file_name("python")
}

fn app() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/iot-publish/app.py")
}

/// `python app.py` with nothing of this machine's environment but PATH, no
/// AWS configuration (HOME and the AWS files point into `home`), and no
/// instance metadata lookup. Callers add credentials and endpoints.
fn app_command(home: &Path) -> Command {
    let empty = home.join("empty-aws-file");
    std::fs::write(&empty, "").unwrap();
    let mut cmd = Command::new(python());
    cmd.arg(app())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// Runs to the end (at most a minute); (exit code, stdout, stderr).
async fn finish(mut cmd: Command) -> (i32, String, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("app.py finishes within a minute")
        .expect("app.py runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn published_lines(stdout: &str) -> Vec<&str> {
    stdout.lines().filter(|l| l.starts_with("published ")).collect()
}

/// The Publish calls the tap passed to moto, in order.
fn publishes(tap: &IotDataTap) -> Vec<Received> {
    tap.received()
        .into_iter()
        .filter(|r| r.method == "POST" && r.target.starts_with("/topics/"))
        .collect()
}

/// The default chain with environment credentials, no IOT_ENDPOINT: the app
/// looks the account's ATS endpoint up with DescribeEndpoint (the configured
/// endpoint URL then wins, as for any SDK client), and moto's iot-data
/// accepts exactly {"counter": 1}, 2, 3 on hello/world, one second apart.
#[tokio::test]
async fn publishes_counters_one_to_three_to_hello_world_once_a_second() {
    let stand = Stand::start().await;
    let tap = IotDataTap::start(&stand.moto.url).await;
    let mut cmd = app_command(stand.dir.path());
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL", &stand.sim.url)
        .env("AWS_ENDPOINT_URL_IOT_DATA_PLANE", &tap.url)
        .env("PUBLISH_COUNT", "3");
    let started = Instant::now();
    let (code, stdout, stderr) = finish(cmd).await;
    let took = started.elapsed();
    assert_eq!(code, 0, "exit code\n--- stdout\n{stdout}\n--- stderr\n{stderr}");

    // DescribeEndpoint(iot:Data-ATS) went to (the simulator in front of) moto.
    let described = stand
        .sim
        .requests()
        .into_iter()
        .any(|r| r.service.as_deref() == Some("iot") && r.method == "GET" && r.path == "/endpoint");
    assert!(
        described,
        "no iot DescribeEndpoint call: {:?}",
        stand.sim.requests()
    );
    let endpoint_line = stdout
        .lines()
        .find(|l| l.starts_with("IoT data endpoint "))
        .unwrap_or_else(|| panic!("no endpoint line in\n{stdout}"));
    assert!(
        endpoint_line.contains("-ats.iot.eu-west-1.amazonaws.com"),
        "{endpoint_line}"
    );

    let got = publishes(&tap);
    let topics: Vec<_> = got.iter().map(|r| r.topic()).collect();
    assert_eq!(topics, vec![Some("hello/world".to_string()); 3], "{got:?}");
    let payloads: Vec<Value> = got.iter().map(Received::json).collect();
    assert_eq!(
        payloads,
        vec![
            json!({"counter": 1}),
            json!({"counter": 2}),
            json!({"counter": 3})
        ]
    );
    assert!(got.iter().all(|r| r.status == 200), "moto refused some: {got:?}");
    assert!(
        got.iter()
            .all(|r| r.authorization.contains("Credential=testing/")),
        "not signed with the environment's credentials: {got:?}"
    );

    // One log line per message, and the messages a second apart.
    assert_eq!(
        published_lines(&stdout),
        vec![
            r#"published {"counter": 1} to hello/world"#,
            r#"published {"counter": 2} to hello/world"#,
            r#"published {"counter": 3} to hello/world"#,
        ],
        "{stdout}"
    );
    assert!(took >= Duration::from_secs(2), "3 messages in {took:?}");
    assert_eq!(stderr, "", "nothing went wrong, so nothing on stderr");
}

/// As in the container: no AWS_* variables, only ~/.aws/credentials with
/// the region and a credential_process (the device's Roles Anywhere line,
/// here a stand-in for aws_signing_helper), and IOT_ENDPOINT given: the app
/// signs with the process's credentials and looks nothing up.
#[tokio::test]
async fn signs_with_the_credential_process_of_the_mounted_aws_dir() {
    let stand = Stand::start().await;
    let tap = IotDataTap::start(&stand.moto.url).await;
    let home = tempfile::tempdir().unwrap();
    let helper = home.path().join("aws_signing_helper");
    let ran = home.path().join("helper-ran");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\necho \"$@\" >> '{}'\n\
             echo '{{\"Version\": 1, \"AccessKeyId\": \"ASIAHELPER\", \"SecretAccessKey\": \"helper-secret\", \
             \"SessionToken\": \"helper-token\", \"Expiration\": \"2099-01-01T00:00:00Z\"}}'\n",
            ran.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::create_dir(home.path().join(".aws")).unwrap();
    std::fs::write(
        home.path().join(".aws/credentials"),
        format!(
            "[default]\nregion=eu-west-1\ncredential_process = {} credential-process \
             --certificate /root/certificates/device.pem\n",
            helper.display()
        ),
    )
    .unwrap();

    let mut cmd = app_command(home.path());
    cmd.env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        // Only a safety net: with IOT_ENDPOINT set nothing else is called.
        .env("AWS_ENDPOINT_URL", &stand.sim.url)
        .env("IOT_ENDPOINT", &tap.url)
        .env("PUBLISH_COUNT", "2")
        .env("PUBLISH_INTERVAL", "0.2");
    let (code, stdout, stderr) = finish(cmd).await;
    assert_eq!(code, 0, "exit code\n--- stdout\n{stdout}\n--- stderr\n{stderr}");

    let args = std::fs::read_to_string(&ran).expect("the credential_process ran");
    assert!(args.starts_with("credential-process --certificate"), "{args}");
    let got = publishes(&tap);
    let payloads: Vec<Value> = got.iter().map(Received::json).collect();
    assert_eq!(payloads, vec![json!({"counter": 1}), json!({"counter": 2})]);
    assert!(got.iter().all(|r| r.status == 200), "{got:?}");
    assert!(
        got.iter()
            .all(|r| r.authorization.contains("Credential=ASIAHELPER/") && r.target.ends_with("qos=0")),
        "not signed with the credential_process's keys: {got:?}"
    );
    assert_eq!(
        stand.sim.requests(),
        vec![],
        "IOT_ENDPOINT is given: no DescribeEndpoint"
    );
}

/// Nomad stops a task with SIGTERM: the app stops at once (not after its
/// one-second wait) and exits 0.
#[tokio::test]
async fn sigterm_stops_it_promptly_with_status_0() {
    let stand = Stand::start().await;
    let tap = IotDataTap::start(&stand.moto.url).await;
    let mut cmd = app_command(stand.dir.path());
    cmd.env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ENDPOINT_URL", &stand.sim.url)
        .env("IOT_ENDPOINT", &tap.url);
    let mut child = cmd.spawn().expect("app.py starts");
    let mut stdout = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    let first = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stdout.next_line().await.unwrap() {
            seen.push(line.clone());
            if line.starts_with("published ") {
                return true;
            }
        }
        false
    })
    .await;
    assert!(matches!(first, Ok(true)), "no message published: {seen:?}");

    let pid = child.id().expect("still running").to_string();
    let killed = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let code = tokio::time::timeout(Duration::from_secs(5), child.wait())
        .await
        .expect("exits within 5 s of SIGTERM (Nomad's kill_timeout)")
        .unwrap();
    let took = killed.elapsed();
    while let Some(line) = stdout.next_line().await.unwrap() {
        seen.push(line);
    }
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .await
        .unwrap();
    assert_eq!(code.code(), Some(0), "{seen:?}\n--- stderr\n{stderr}");
    assert!(took < Duration::from_secs(2), "took {took:?} to stop");
    assert!(seen.iter().any(|l| l == "received SIGTERM, stopping"), "{seen:?}");
    assert_eq!(stderr, "");
    assert!(!publishes(&tap).is_empty());
}

/// No credentials anywhere (no AWS_* variables, empty AWS files, no instance
/// metadata): exit status 2 and one line on stderr saying so.
#[tokio::test]
async fn without_credentials_it_exits_2_with_one_line() {
    let home = tempfile::tempdir().unwrap();
    let mut cmd = app_command(home.path());
    cmd.env("AWS_REGION", "eu-west-1")
        // Nothing listens here: a call that got out would fail, not leak.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("PUBLISH_COUNT", "1");
    let (code, stdout, stderr) = finish(cmd).await;
    assert_eq!(code, 2, "exit code\n--- stdout\n{stdout}\n--- stderr\n{stderr}");
    assert_eq!(stdout, "");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with("iot-publish: no AWS credentials found"),
        "{stderr}"
    );
}
