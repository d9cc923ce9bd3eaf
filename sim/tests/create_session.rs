//! CreateSession end to end: certificates issued by moto's ACM PCA (through
//! the simulator), signed by the test signer, verified by the simulator.

mod common;

use aws_sdk_rolesanywhere::types::{Source, SourceData, TrustAnchorType};
use common::signer::{self, Key};
use common::{host_of, pca_source, post_session, trust_policy, world, World, REGION};
use serde_json::{json, Value};
use testkit::pca::Issued;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

struct Call<'a> {
    w: &'a World,
    anchor: &'a str,
    profile: &'a str,
    role: &'a str,
}

impl Call<'_> {
    async fn send(&self, cert: &Issued, chain: Option<&str>, body: &str) -> (u16, hyper::HeaderMap, Value) {
        let key = Key::from_pem(&cert.key_pem);
        let signed = signer::sign(&signer::Input {
            host: host_of(&self.w.sim.url),
            region: REGION,
            profile_arn: self.profile,
            role_arn: self.role,
            trust_anchor_arn: self.anchor,
            body,
            cert_pem: &cert.cert_pem,
            chain_pem: chain,
            key: &key,
            amz_date: signer::amz_date_now(),
        });
        post_session(&self.w.sim.url, &signed, body).await
    }
}

fn seconds_until(expiration: &str) -> i64 {
    assert!(
        expiration.ends_with('Z') && !expiration.contains('.'),
        "{expiration}"
    );
    (OffsetDateTime::parse(expiration, &Rfc3339).unwrap() - OffsetDateTime::now_utc()).whole_seconds()
}

fn assert_denied(resp: &(u16, hyper::HeaderMap, Value), message: &str) {
    let (status, headers, body) = resp;
    assert_eq!(*status, 403, "{body}");
    assert_eq!(headers["x-amzn-errortype"], "AccessDeniedException");
    let got = body["message"].as_str().unwrap_or_default();
    assert!(got.contains(message), "expected {message:?} in {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pca_certificates_get_credentials_and_others_are_refused() {
    let w = world().await;
    let ca = w.ca("Edge Root CA").await;
    let ra = w.ra();
    let anchor = ra
        .create_trust_anchor()
        .name("edge fleet")
        .enabled(true)
        .source(pca_source(&ca.arn))
        .send()
        .await
        .unwrap()
        .trust_anchor
        .unwrap();
    let (anchor_arn, anchor_id) = (anchor.trust_anchor_arn.unwrap(), anchor.trust_anchor_id.unwrap());
    let role = w.role("edge-device", &trust_policy(&anchor_arn)).await;
    let profile = ra
        .create_profile()
        .name("edge-devices")
        .enabled(true)
        .role_arns(&role)
        .duration_seconds(3600)
        .send()
        .await
        .unwrap()
        .profile
        .unwrap();
    let (profile_arn, profile_id) = (profile.profile_arn.unwrap(), profile.profile_id.unwrap());
    let call = Call {
        w: &w,
        anchor: &anchor_arn,
        profile: &profile_arn,
        role: &role,
    };
    let ip = "127.0.0.1".parse().unwrap();
    let rsa = ca
        .issue(&w.cfg, "pi-01", &["client.eu-west-1.nomad", "localhost"], &[ip])
        .await
        .unwrap();
    let ec = ca.issue_ec(&w.cfg, "pi-02", &["localhost"], &[]).await.unwrap();
    let body = r#"{"durationSeconds":3600}"#;

    // RSA: credentials, in the exact shape of the API.
    w.sim.reset_requests();
    let (status, headers, out) = call.send(&rsa, None, body).await;
    assert_eq!(status, 201, "{out}");
    assert_eq!(headers["content-type"], "application/json");
    let set = &out["credentialSet"][0];
    let creds = &set["credentials"];
    assert!(creds["accessKeyId"].as_str().unwrap().starts_with("ASIA"));
    assert_eq!(creds["secretAccessKey"].as_str().unwrap().len(), 40);
    assert!(!creds["sessionToken"].as_str().unwrap().is_empty());
    let left = seconds_until(creds["expiration"].as_str().unwrap());
    assert!((3590..=3600).contains(&left), "{left}");
    assert_eq!(set["roleArn"], json!(role));
    assert_eq!(set["sourceIdentity"], "pi-01");
    assert_eq!(set["packedPolicySize"], 0);
    assert_eq!(
        set["assumedRoleUser"]["arn"],
        json!(format!(
            "arn:aws:sts::123456789012:assumed-role/edge-device/{}",
            rsa.serial_hex
        ))
    );
    let role_id = set["assumedRoleUser"]["assumedRoleId"].as_str().unwrap();
    assert!(
        role_id.starts_with("AROA") && role_id.ends_with(&format!(":{}", rsa.serial_hex)),
        "{role_id}"
    );
    let subject = out["subjectArn"].as_str().unwrap().to_string();
    assert!(
        subject.starts_with("arn:aws:rolesanywhere:eu-west-1:123456789012:subject/"),
        "{subject}"
    );
    let log = w.sim.requests();
    assert_eq!(
        log.len(),
        1,
        "GetRole and the CA lookup go to moto directly: {log:?}"
    );
    assert_eq!(log[0].action(), "rolesanywhere:CreateSession");
    assert_eq!((log[0].status, log[0].is_write()), (201, true));

    // The same certificate is the same subject; sessions last min(requested, profile).
    let (status, _, again) = call.send(&rsa, None, r#"{"durationSeconds":900}"#).await;
    assert_eq!(status, 201, "{again}");
    assert_eq!(again["subjectArn"], json!(subject));
    assert!((890..=900).contains(&seconds_until(
        again["credentialSet"][0]["credentials"]["expiration"]
            .as_str()
            .unwrap()
    )));
    let (status, _, capped) = call.send(&rsa, None, r#"{"durationSeconds":7200}"#).await;
    assert_eq!(status, 201, "{capped}");
    assert!(
        seconds_until(
            capped["credentialSet"][0]["credentials"]["expiration"]
                .as_str()
                .unwrap()
        ) <= 3600
    );
    let (status, headers, _) = call.send(&rsa, None, r#"{"durationSeconds":60}"#).await;
    assert_eq!(
        (status, &headers["x-amzn-errortype"]),
        (
            400,
            &"ValidationException"
                .parse::<hyper::header::HeaderValue>()
                .unwrap()
        )
    );

    // ECDSA P-256.
    let (status, _, out) = call.send(&ec, None, body).await;
    assert_eq!(status, 201, "{out}");
    assert_eq!(out["credentialSet"][0]["sourceIdentity"], "pi-02");

    // A certificate from a CA moto does not know — even with the anchor's
    // own CA certificate sent as its "chain".
    let foreign = testkit::pca::ForeignCa::new("Edge Root CA");
    let stranger = foreign.issue("pi-01", &["localhost"], &[]);
    assert_denied(
        &call.send(&stranger, None, body).await,
        "Untrusted Signing Certificate",
    );
    assert_denied(
        &call.send(&stranger, Some(&ca.cert_pem), body).await,
        "Untrusted Signing Certificate",
    );
    assert_denied(
        &call.send(&foreign.issue_ec("pi-09", &[], &[]), None, body).await,
        "Untrusted Signing Certificate",
    );

    // The profile and anchor must be enabled and list the role.
    ra.disable_profile().profile_id(&profile_id).send().await.unwrap();
    assert_denied(&call.send(&rsa, None, body).await, "Profile is disabled");
    ra.enable_profile().profile_id(&profile_id).send().await.unwrap();
    ra.disable_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    assert_denied(&call.send(&rsa, None, body).await, "Trust anchor is disabled");
    ra.enable_trust_anchor()
        .trust_anchor_id(&anchor_id)
        .send()
        .await
        .unwrap();
    let other_role = "arn:aws:iam::123456789012:role/not-in-profile";
    let wrong_role = Call {
        role: other_role,
        ..call
    };
    assert_denied(&wrong_role.send(&rsa, None, body).await, "not in the profile");

    // The role must trust Roles Anywhere for *this* anchor.
    let strict = w
        .role(
            "other-anchor-only",
            &trust_policy(&anchor_arn.replace(&anchor_id, "0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d")),
        )
        .await;
    let missing_action = w
        .role(
            "no-source-identity",
            &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "rolesanywhere.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession"]}]}),
        )
        .await;
    ra.update_profile()
        .profile_id(&profile_id)
        .role_arns(&role)
        .role_arns(&strict)
        .role_arns(&missing_action)
        .role_arns("arn:aws:iam::123456789012:role/does-not-exist")
        .send()
        .await
        .unwrap();
    assert_denied(
        &Call {
            role: &strict,
            ..call
        }
        .send(&rsa, None, body)
        .await,
        "sts:AssumeRole",
    );
    assert_denied(
        &Call {
            role: &missing_action,
            ..call
        }
        .send(&rsa, None, body)
        .await,
        "sts:SetSourceIdentity",
    );
    assert_denied(
        &Call {
            role: "arn:aws:iam::123456789012:role/does-not-exist",
            ..call
        }
        .send(&rsa, None, body)
        .await,
        "does not exist",
    );

    // Unknown resources, malformed input.
    let unknown = profile_arn.replace(&profile_id, "0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d");
    let (status, headers, _) = Call {
        profile: &unknown,
        ..call
    }
    .send(&rsa, None, body)
    .await;
    assert_eq!(
        (status, headers["x-amzn-errortype"].to_str().unwrap()),
        (404, "ResourceNotFoundException")
    );
    let (status, _, out) = Call { role: "", ..call }.send(&rsa, None, body).await;
    assert_eq!(status, 400, "{out}");
    assert!(out["message"].as_str().unwrap().contains("'roleArn'"), "{out}");
    let other_region = anchor_arn.replace("eu-west-1", "us-east-1");
    let (status, _, out) = Call {
        anchor: &other_region,
        ..call
    }
    .send(&rsa, None, body)
    .await;
    assert_eq!(status, 400, "{out}");
    assert_eq!(out["message"], "trust anchor and profile regions don't match");

    // The ARNs may come in the JSON body instead of the query.
    let in_body = json!({"durationSeconds": 900, "profileArn": profile_arn, "roleArn": role,
                         "trustAnchorArn": anchor_arn})
    .to_string();
    let (status, _, out) = Call {
        anchor: "",
        profile: "",
        role: "",
        ..call
    }
    .send(&rsa, None, &in_body)
    .await;
    assert_eq!(status, 201, "{out}");

    // A CERTIFICATE_BUNDLE anchor holding the CA's PEM trusts the same certificates.
    let bundle = ra
        .create_trust_anchor()
        .name("bundle")
        .enabled(true)
        .source(
            Source::builder()
                .source_type(TrustAnchorType::CertificateBundle)
                .source_data(SourceData::X509CertificateData(ca.cert_pem.clone()))
                .build(),
        )
        .send()
        .await
        .unwrap()
        .trust_anchor
        .unwrap()
        .trust_anchor_arn
        .unwrap();
    let any_anchor = w
        .role(
            "any-anchor",
            &json!({"Version": "2012-10-17", "Statement": [{"Effect": "Allow",
                "Principal": {"Service": "rolesanywhere.amazonaws.com"},
                "Action": ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"],
                "Condition": {"ArnLike": {"aws:SourceArn": "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/*"}}}]}),
        )
        .await;
    ra.update_profile()
        .profile_id(&profile_id)
        .role_arns(&any_anchor)
        .send()
        .await
        .unwrap();
    let via_bundle = Call {
        anchor: &bundle,
        role: &any_anchor,
        ..call
    };
    let (status, _, out) = via_bundle.send(&ec, None, body).await;
    assert_eq!(status, 201, "{out}");
    assert_denied(
        &via_bundle.send(&stranger, None, body).await,
        "Untrusted Signing Certificate",
    );
}
