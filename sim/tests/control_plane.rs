//! The control plane through the official `aws-sdk-rolesanywhere` client,
//! with moto behind the simulator (the PCA a trust anchor names must exist).

mod common;

use aws_sdk_rolesanywhere::types::{
    NotificationEvent, NotificationSettingDetail, Source, SourceData, TrustAnchorType,
};
use common::{failure, pca_source, tag, world};

const MISSING_ID: &str = "0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_anchors_profiles_and_tags_round_trip_through_the_official_sdk() {
    let w = world().await;
    let ca = w.ca("Edge Root CA").await;
    let ra = w.ra();

    // --- trust anchors ---
    let created = ra
        .create_trust_anchor()
        .name("edge fleet")
        .enabled(true)
        .source(pca_source(&ca.arn))
        .tags(tag("edgectl:deployment", "test"))
        .send()
        .await
        .expect("CreateTrustAnchor")
        .trust_anchor
        .unwrap();
    let anchor_id = created.trust_anchor_id.clone().unwrap();
    let anchor_arn = created.trust_anchor_arn.clone().unwrap();
    assert_eq!(anchor_id.len(), 36);
    assert_eq!(
        anchor_arn,
        format!("arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/{anchor_id}")
    );
    assert_eq!(created.enabled, Some(true));
    assert_eq!(created.name.as_deref(), Some("edge fleet"));
    let source = created.source.clone().unwrap();
    assert_eq!(source.source_type, Some(TrustAnchorType::AwsAcmPca));
    assert_eq!(source.source_data, Some(SourceData::AcmPcaArn(ca.arn.clone())));
    assert!(created.created_at.is_some() && created.updated_at.is_some());
    let events: Vec<NotificationEvent> = created
        .notification_settings
        .unwrap_or_default()
        .into_iter()
        .map(|n: NotificationSettingDetail| n.event)
        .collect();
    assert_eq!(events.len(), 2, "AWS's two default notification settings");

    // A PCA that does not exist, and bad input, are refused.
    let (status, code, _) = failure(
        ra.create_trust_anchor()
            .name("ghost")
            .enabled(true)
            .source(pca_source(&ca.arn.replace(&ca.arn[ca.arn.len() - 6..], "000000")))
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "ValidationException"));
    let (status, code, message) = failure(
        ra.create_trust_anchor()
            .name("bad/name")
            .enabled(true)
            .source(pca_source(&ca.arn))
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "ValidationException"));
    assert!(
        message.contains("at 'name' failed to satisfy constraint"),
        "{message}"
    );
    let (status, code, _) = failure(
        ra.create_trust_anchor()
            .name("bundle")
            .enabled(true)
            .source(
                Source::builder()
                    .source_type(TrustAnchorType::CertificateBundle)
                    .source_data(SourceData::X509CertificateData("not a certificate".into()))
                    .build(),
            )
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "ValidationException"));
    // A CERTIFICATE_BUNDLE anchor with the CA's PEM is fine.
    let bundle = ra
        .create_trust_anchor()
        .name("bundle")
        .enabled(false)
        .source(
            Source::builder()
                .source_type(TrustAnchorType::CertificateBundle)
                .source_data(SourceData::X509CertificateData(ca.cert_pem.clone()))
                .build(),
        )
        .send()
        .await
        .expect("CreateTrustAnchor (bundle)")
        .trust_anchor
        .unwrap();
    assert_eq!(bundle.enabled, Some(false));
    ra.create_trust_anchor()
        .name("third")
        .enabled(true)
        .source(pca_source(&ca.arn))
        .send()
        .await
        .expect("CreateTrustAnchor (third)");

    // Paged listing sees each anchor exactly once.
    let mut seen = Vec::new();
    let mut token = None;
    loop {
        let page = ra
            .list_trust_anchors()
            .page_size(2)
            .set_next_token(token)
            .send()
            .await
            .expect("ListTrustAnchors");
        seen.extend(
            page.trust_anchors
                .unwrap_or_default()
                .into_iter()
                .map(|a| a.name.unwrap()),
        );
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    assert_eq!(seen, ["edge fleet", "bundle", "third"]);
    // The SDK's paginator agrees.
    let all: Vec<_> = ra
        .list_trust_anchors()
        .page_size(1)
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("paginated ListTrustAnchors");
    assert_eq!(all.len(), 3);

    let got = ra
        .get_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    assert_eq!(
        got.trust_anchor.unwrap().trust_anchor_arn.as_deref(),
        Some(anchor_arn.as_str())
    );
    let (status, code, _) = failure(ra.get_trust_anchor().trust_anchor_id(MISSING_ID).send().await);
    assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
    let (status, code, _) = failure(ra.get_trust_anchor().trust_anchor_id("not-an-id").send().await);
    assert_eq!((status, code.as_str()), (400, "ValidationException"));

    let disabled = ra
        .disable_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    assert_eq!(disabled.trust_anchor.unwrap().enabled, Some(false));
    let enabled = ra
        .enable_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    assert_eq!(enabled.trust_anchor.unwrap().enabled, Some(true));
    let updated = ra
        .update_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .name("edge fleet 2")
        .send()
        .await
        .unwrap()
        .trust_anchor
        .unwrap();
    assert_eq!(updated.name.as_deref(), Some("edge fleet 2"));
    assert!(updated.updated_at.unwrap().secs() >= updated.created_at.unwrap().secs());

    // --- profiles ---
    let role = "arn:aws:iam::123456789012:role/edge-device";
    let profile = ra
        .create_profile()
        .name("edge-devices")
        .enabled(true)
        .role_arns(role)
        .duration_seconds(3600)
        .tags(tag("edgectl:deployment", "test"))
        .send()
        .await
        .expect("CreateProfile")
        .profile
        .unwrap();
    let profile_id = profile.profile_id.clone().unwrap();
    let profile_arn = profile.profile_arn.clone().unwrap();
    assert_eq!(
        profile_arn,
        format!("arn:aws:rolesanywhere:eu-west-1:123456789012:profile/{profile_id}")
    );
    assert_eq!(profile.role_arns.unwrap_or_default(), [role]);
    assert_eq!(profile.duration_seconds, Some(3600));
    assert_eq!(profile.enabled, Some(true));

    for (what, result) in [
        (
            "role ARN pattern",
            ra.create_profile()
                .name("p")
                .role_arns("arn:aws:s3:::bucket")
                .send()
                .await
                .map(|_| ()),
        ),
        (
            "duration below 900",
            ra.create_profile()
                .name("p")
                .role_arns(role)
                .duration_seconds(100)
                .send()
                .await
                .map(|_| ()),
        ),
        (
            "missing roleArns",
            ra.create_profile().name("p").send().await.map(|_| ()),
        ),
    ] {
        let (status, code, message) = failure(result);
        assert_eq!(
            (status, code.as_str()),
            (400, "ValidationException"),
            "{what}: {message}"
        );
    }

    let updated = ra
        .update_profile()
        .profile_id(&profile_id)
        .duration_seconds(7200)
        .role_arns(role)
        .role_arns("arn:aws:iam::123456789012:role/other")
        .send()
        .await
        .expect("UpdateProfile")
        .profile
        .unwrap();
    assert_eq!(updated.duration_seconds, Some(7200));
    assert_eq!(updated.role_arns.unwrap_or_default().len(), 2);
    assert_eq!(
        updated.name.as_deref(),
        Some("edge-devices"),
        "fields not sent stay"
    );
    let listed = ra
        .list_profiles()
        .send()
        .await
        .unwrap()
        .profiles
        .unwrap_or_default();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].duration_seconds, Some(7200));
    let off = ra.disable_profile().profile_id(&profile_id).send().await.unwrap();
    assert_eq!(off.profile.unwrap().enabled, Some(false));
    let on = ra.enable_profile().profile_id(&profile_id).send().await.unwrap();
    assert_eq!(on.profile.unwrap().enabled, Some(true));

    // --- tags ---
    let tags = |arn: String| {
        let ra = ra.clone();
        async move {
            let mut t: Vec<(String, String)> = ra
                .list_tags_for_resource()
                .resource_arn(arn)
                .send()
                .await
                .expect("ListTagsForResource")
                .tags
                .unwrap_or_default()
                .into_iter()
                .map(|t| (t.key, t.value))
                .collect();
            t.sort();
            t
        }
    };
    assert_eq!(
        tags(anchor_arn.clone()).await,
        [("edgectl:deployment".to_string(), "test".to_string())]
    );
    ra.tag_resource()
        .resource_arn(&anchor_arn)
        .tags(tag("owner", "ops"))
        .tags(tag("edgectl:deployment", "prod"))
        .send()
        .await
        .expect("TagResource");
    assert_eq!(
        tags(anchor_arn.clone()).await,
        [
            ("edgectl:deployment".to_string(), "prod".to_string()),
            ("owner".to_string(), "ops".to_string())
        ]
    );
    ra.untag_resource()
        .resource_arn(&anchor_arn)
        .tag_keys("owner")
        .send()
        .await
        .expect("UntagResource");
    assert_eq!(tags(anchor_arn.clone()).await.len(), 1);
    assert_eq!(tags(profile_arn.clone()).await.len(), 1);
    let missing_arn = anchor_arn.replace(&anchor_id, MISSING_ID);
    let (status, code, _) = failure(
        ra.tag_resource()
            .resource_arn(&missing_arn)
            .tags(tag("a", "b"))
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
    let mut too_many = ra.tag_resource().resource_arn(&anchor_arn);
    for i in 0..50 {
        too_many = too_many.tags(tag(&format!("k{i}"), "v"));
    }
    let (status, code, _) = failure(too_many.send().await);
    assert_eq!((status, code.as_str()), (400, "TooManyTagsException"));
    let (status, code, _) = failure(
        ra.tag_resource()
            .resource_arn(&anchor_arn)
            .tags(tag("aws:reserved", "x"))
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (400, "ValidationException"));

    // --- the request log: reads are not writes ---
    w.sim.reset_requests();
    ra.list_profiles().send().await.unwrap();
    ra.get_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    let log = w.sim.requests();
    assert_eq!(
        log.iter().map(|r| r.action()).collect::<Vec<_>>(),
        ["rolesanywhere:ListProfiles", "rolesanywhere:GetTrustAnchor"]
    );
    assert!(log.iter().all(|r| !r.is_write() && r.status == 200));

    // --- delete ---
    let deleted = ra
        .delete_profile()
        .profile_id(&profile_id)
        .send()
        .await
        .expect("DeleteProfile");
    assert_eq!(
        deleted.profile.unwrap().profile_id.as_deref(),
        Some(profile_id.as_str())
    );
    let (status, code, _) = failure(ra.get_profile().profile_id(&profile_id).send().await);
    assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
    ra.delete_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .expect("DeleteTrustAnchor");
    let (status, code, _) = failure(ra.delete_trust_anchor().trust_anchor_id(&anchor_id).send().await);
    assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
    let (status, code, _) = failure(ra.list_tags_for_resource().resource_arn(&anchor_arn).send().await);
    assert_eq!((status, code.as_str()), (404, "ResourceNotFoundException"));
    let writes: Vec<String> = w
        .sim
        .requests()
        .iter()
        .filter(|r| r.is_write())
        .map(|r| r.action())
        .collect();
    assert_eq!(
        writes,
        [
            "rolesanywhere:DeleteProfile",
            "rolesanywhere:DeleteTrustAnchor",
            "rolesanywhere:DeleteTrustAnchor"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_services_are_forwarded_to_moto_and_logged() {
    let w = world().await;
    // ACM PCA (JSON, X-Amz-Target) and IAM (query protocol) through the simulator.
    let ca = w.ca("Forwarded CA").await;
    let role = w
        .role(
            "forwarded",
            &common::trust_policy("arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/x"),
        )
        .await;
    assert!(role.starts_with("arn:aws:iam::123456789012:role/forwarded"));
    let log = w.sim.requests();
    let actions: Vec<String> = log.iter().map(|r| r.action()).collect();
    for expected in [
        "acm-pca:CreateCertificateAuthority",
        "acm-pca:GetCertificateAuthorityCsr",
        "acm-pca:IssueCertificate",
        "acm-pca:ImportCertificateAuthorityCertificate",
        "acm-pca:DescribeCertificateAuthority",
        "iam:CreateRole",
    ] {
        assert!(
            actions.contains(&expected.to_string()),
            "{expected} missing from {actions:?}"
        );
    }
    let describe = log
        .iter()
        .find(|r| r.action() == "acm-pca:DescribeCertificateAuthority")
        .unwrap();
    assert!(!describe.is_write());
    assert_eq!(describe.status, 200);
    assert!(log
        .iter()
        .find(|r| r.action() == "iam:CreateRole")
        .unwrap()
        .is_write());
    // What moto says is passed through unchanged, errors included.
    let (status, code, _) = failure(
        aws_sdk_iam::Client::new(&w.cfg)
            .get_role()
            .role_name("nope")
            .send()
            .await,
    );
    assert_eq!((status, code.as_str()), (404, "NoSuchEntity"));
    assert!(!ca.arn.is_empty());

    // The same log over HTTP, for the CLI sandbox; /__sim/ calls are not logged.
    let client: hyper_util::client::legacy::Client<_, http_body_util::Full<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http();
    use http_body_util::BodyExt;
    let body = client
        .get(format!("{}/__sim/requests", w.sim.url).parse().unwrap())
        .await
        .unwrap()
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes();
    let over_http: Vec<rolesanywhere_sim::RequestRecord> = serde_json::from_slice(&body).unwrap();
    assert_eq!(over_http, w.sim.requests());
    let reset = hyper::Request::post(format!("{}/__sim/requests/reset", w.sim.url))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(reset).await.unwrap().status(), 200);
    assert!(w.sim.requests().is_empty());
}
