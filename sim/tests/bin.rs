//! The `rolesanywhere-sim` binary, as the CLI sandbox runs it.

use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::io::{AsyncBufReadExt, BufReader};

#[tokio::test]
async fn prints_its_url_then_serves_and_logs() {
    // Nothing listens on the upstream: forwarded calls fail with 502, which
    // is all this test needs (the moto-backed tests cover forwarding).
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let upstream = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_rolesanywhere-sim"))
        .args(["--listen", "127.0.0.1:0", "--upstream", &upstream])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let url = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
        .await
        .expect("the URL within 10 s")
        .unwrap()
        .expect("a first line");
    assert!(
        url.starts_with("http://127.0.0.1:") && !url.ends_with(":0"),
        "{url}"
    );

    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = hyper::Request::post(format!("{url}/"))
        .header(
            "authorization",
            "AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/sts/aws4_request, SignedHeaders=host, Signature=00",
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from("Action=GetCallerIdentity&Version=2011-06-15")))
        .unwrap();
    assert_eq!(client.request(req).await.unwrap().status(), 502);

    let body = client
        .get(format!("{url}/__sim/requests").parse().unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let log: Vec<rolesanywhere_sim::RequestRecord> = serde_json::from_slice(&body).unwrap();
    assert_eq!(log.len(), 1, "{log:?}");
    assert_eq!(log[0].action(), "sts:GetCallerIdentity");
    assert_eq!((log[0].status, log[0].is_write()), (502, false));
    child.kill().await.unwrap();
}

#[test]
fn rejects_bad_arguments() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rolesanywhere-sim"))
        .args(["--listen", "127.0.0.1:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--upstream"));
}
