//! Fault injection: every injected error shape is one the official SDK
//! retries; an `After` fault loses the answer of a call that took effect;
//! `freeze_after` holds exactly the requests past the Nth.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_iam::error::ProvideErrorMetadata;
use bytes::Bytes;
use common::world;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rolesanywhere_sim::{FaultKind, FaultPhase, FaultPlan};

fn plan(kind: FaultKind, phase: FaultPhase, max: u32) -> FaultPlan {
    FaultPlan {
        seed: 1,
        rate: 1.0,
        kinds: vec![kind],
        phases: vec![phase],
        max_per_invocation: Some(max),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_kind_is_retried_by_the_sdk_in_every_protocol() {
    let w = world().await;
    let iam = aws_sdk_iam::Client::new(&w.cfg); // awsQuery
    let pca = aws_sdk_acmpca::Client::new(&w.cfg); // awsJson1.1
    let ra = w.ra(); // restJson1, answered by the simulator itself
    for kind in [
        FaultKind::Throttle,
        FaultKind::TooManyRequests,
        FaultKind::Unavailable,
        FaultKind::Drop,
    ] {
        // Two faults per call: the SDK's third (last default) attempt passes.
        w.sim.inject_faults(plan(kind, FaultPhase::Before, 2));
        w.sim.reset_fault_counters();
        iam.list_roles()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} iam: {e:?}"));
        pca.list_certificate_authorities()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} pca: {e:?}"));
        ra.list_trust_anchors()
            .send()
            .await
            .unwrap_or_else(|e| panic!("{kind:?} rolesanywhere: {e:?}"));
        let injected = w.sim.injected_faults();
        assert_eq!(injected.len(), 6, "{kind:?}: {injected:?}");
        assert!(injected.iter().all(|f| f.kind == kind), "{injected:?}");
        assert_eq!(w.sim.retries_seen(), 6, "{kind:?}");
        let attempts: Vec<_> = injected.iter().map(|f| f.attempt).collect();
        assert_eq!(
            attempts,
            [1, 2, 1, 2, 1, 2].map(Some),
            "{kind:?}: the SDK numbers its attempts"
        );
    }
    w.sim.clear_faults();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_after_fault_loses_the_answer_of_a_write_that_took_effect() {
    let w = world().await;
    let iam = aws_sdk_iam::Client::new(&w.cfg);
    w.sim
        .inject_faults(plan(FaultKind::Unavailable, FaultPhase::After, 1));
    let err = iam
        .create_role()
        .role_name("twice")
        .assume_role_policy_document("{}")
        .send()
        .await
        .expect_err("the retry finds the role the lost attempt made");
    assert_eq!(err.code(), Some("EntityAlreadyExists"), "{err:?}");
    w.sim.clear_faults();
    iam.get_role().role_name("twice").send().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttles_have_each_protocols_shape() {
    let w = world().await;
    w.sim.inject_faults(FaultPlan {
        max_per_invocation: None,
        ..plan(FaultKind::Throttle, FaultPhase::Before, 0)
    });
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let post = |service: &str, headers: &[(&str, &str)], body: &'static str| {
        let mut req = hyper::Request::post(format!("{}/", w.sim.url)).header(
            "authorization",
            format!("AWS4-HMAC-SHA256 Credential=testing/20260101/eu-west-1/{service}/aws4_request, SignedHeaders=host, Signature=00"),
        );
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        client.request(req.body(Full::new(Bytes::from(body))).unwrap())
    };
    let form = [("content-type", "application/x-www-form-urlencoded")];
    for (service, headers, body, status, code) in [
        (
            "ec2",
            &form[..],
            "Action=DescribeVpcs&Version=2016-11-15",
            400,
            "<Code>RequestLimitExceeded</Code>",
        ),
        (
            "iam",
            &form[..],
            "Action=ListRoles&Version=2010-05-08",
            400,
            "<Code>Throttling</Code>",
        ),
        (
            "ssm",
            &[
                ("x-amz-target", "AmazonSSM.GetParameter"),
                ("content-type", "application/x-amz-json-1.1"),
            ][..],
            "{}",
            400,
            "\"__type\":\"ThrottlingException\"",
        ),
    ] {
        let resp = post(service, headers, body).await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{service}");
        if service == "ssm" {
            assert_eq!(resp.headers()["x-amzn-errortype"], "ThrottlingException");
        }
        let text = resp.into_body().collect().await.unwrap().to_bytes();
        let text = String::from_utf8_lossy(&text);
        assert!(text.contains(code), "{service}: {text}");
    }

    // A dropped connection has no answer at all.
    w.sim.inject_faults(FaultPlan {
        max_per_invocation: None,
        ..plan(FaultKind::Drop, FaultPhase::Before, 0)
    });
    let err = post("iam", &form, "Action=ListRoles&Version=2010-05-08")
        .await
        .expect_err("no response");
    assert!(
        format!("{err:?}").contains("IncompleteMessage")
            || err.is_connect()
            || format!("{err:?}").contains("closed"),
        "{err:?}"
    );
    assert_eq!(w.sim.requests().last().unwrap().status, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn freeze_after_holds_every_request_past_the_nth() {
    let w = world().await;
    let iam = aws_sdk_iam::Client::new(&w.cfg);
    w.sim.freeze_after(1);
    iam.list_roles().send().await.unwrap();
    let held = tokio::spawn({
        let iam = iam.clone();
        async move { iam.list_roles().send().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.sim.held() == 0 {
        assert!(Instant::now() < deadline, "the second request was not held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        w.sim.requests().len(),
        1,
        "a held request is logged when answered"
    );
    w.sim.unfreeze();
    held.await.unwrap().unwrap();
    assert_eq!(w.sim.held(), 0);
    assert_eq!(w.sim.seen(), 2);
}

/// After a kill: held requests are dropped, and so is a request that
/// arrives later (one the dead client had sent), until `resume`.
#[tokio::test]
async fn discarding_drops_held_and_late_requests_until_resumed() {
    let w = world().await;
    let sts = aws_sdk_iam::Client::new(&w.cfg);
    w.sim.freeze_after(0);
    let held = tokio::spawn({
        let c = sts.clone();
        async move { c.list_roles().send().await }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while w.sim.held() == 0 {
        assert!(Instant::now() < deadline, "the request was not held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    w.sim.unfreeze_discarding();
    assert!(held.await.unwrap().is_err(), "a held request is dropped");
    assert!(sts.list_roles().send().await.is_err(), "a late one too");
    assert_eq!(w.sim.held(), 0);
    w.sim.resume();
    sts.list_roles().send().await.expect("requests go through again");
}
