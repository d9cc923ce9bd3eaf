//! The verifier against the independent test signer (tests/common/signer.rs),
//! with keys and certificates made by rcgen.

use hyper::header::{HeaderName, HeaderValue};
use hyper::HeaderMap;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SignatureAlgorithm,
};

use super::*;
use crate::chain;
use crate::test_signer::{self as signer, Key};

const PROFILE: &str =
    "arn:aws:rolesanywhere:eu-west-1:123456789012:profile/0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d";
const ROLE: &str = "arn:aws:iam::123456789012:role/edge device";
const ANCHOR: &str =
    "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/1b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d";
const BODY: &str = r#"{"durationSeconds":3600}"#;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(cn: &str) -> Ca {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, cn);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

impl Ca {
    fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let pem = params.signed_by(&key, &self.issuer).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// (cert PEM, key PEM) of an end-entity certificate for a new key.
    fn leaf(&self, alg: &'static SignatureAlgorithm, cn: &str) -> (String, String) {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut params = CertificateParams::new(vec!["device.example".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - ::time::Duration::hours(1);
        params.not_after = now + ::time::Duration::days(1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn der(&self) -> Vec<u8> {
        chain::pem_bundle_to_der(&self.pem).unwrap().remove(0)
    }
}

fn input<'a>(cert: &'a str, key: &'a Key, amz_date: String) -> signer::Input<'a> {
    signer::Input {
        host: "127.0.0.1:4567",
        region: "eu-west-1",
        profile_arn: PROFILE,
        role_arn: ROLE,
        trust_anchor_arn: ANCHOR,
        body: BODY,
        cert_pem: cert,
        chain_pem: None,
        key,
        amz_date,
    }
}

fn header_map(headers: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(
            HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    map
}

fn set(headers: &mut HeaderMap, name: &'static str, value: &str) {
    headers.insert(name, HeaderValue::from_str(value).unwrap());
}

fn check(headers: &HeaderMap, query: &str, body: &str) -> Result<SignedRequest, ApiError> {
    verify(
        headers,
        query,
        body.as_bytes(),
        OffsetDateTime::now_utc(),
        Some(Duration::from_secs(300)),
    )
}

#[test]
fn rsa_p256_and_p384_signatures_verify() {
    let root = ca("Root");
    for alg in [
        &rcgen::PKCS_RSA_SHA256,
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
    ] {
        let (cert, key_pem) = root.leaf(alg, "pi-01");
        let key = Key::from_pem(&key_pem);
        let signed = signer::sign(&input(&cert, &key, signer::amz_date_now()));
        let headers = header_map(&signed.headers);
        let ok = check(&headers, &signed.query, BODY)
            .unwrap_or_else(|e| panic!("{alg:?}: {e}\n{}", signed.canonical_request));
        assert_eq!(ok.authorization.algorithm, key.algorithm());
        assert_eq!(ok.authorization.region, "eu-west-1");
        chain::verify_chain(
            &ok.leaf_der,
            &ok.chain_der,
            &[root.der()],
            OffsetDateTime::now_utc(),
        )
        .unwrap();
    }
}

#[test]
fn tampering_is_refused() {
    let root = ca("Root");
    let (cert, key_pem) = root.leaf(&rcgen::PKCS_RSA_SHA256, "pi-01");
    let key = Key::from_pem(&key_pem);
    let signed = signer::sign(&input(&cert, &key, signer::amz_date_now()));
    let good = header_map(&signed.headers);
    assert!(check(&good, &signed.query, BODY).is_ok());

    let denied = |r: Result<SignedRequest, ApiError>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.status, 403, "{what}: {e}");
    };
    denied(
        check(&good, &signed.query, r#"{"durationSeconds":43200}"#),
        "body",
    );
    denied(
        check(&good, &signed.query.replace("edge%20device", "admin"), BODY),
        "query",
    );

    let mut h = good.clone();
    set(&mut h, "host", "127.0.0.1:9999");
    denied(check(&h, &signed.query, BODY), "host header");

    let mut h = good.clone();
    set(&mut h, "amz-sdk-invocation-id", "something-else");
    denied(check(&h, &signed.query, BODY), "extra signed header");

    // Another certificate (same CA) in X-Amz-X509: its serial is not the credential's.
    let (other, _) = root.leaf(&rcgen::PKCS_RSA_SHA256, "pi-02");
    let other_der = chain::pem_bundle_to_der(&other).unwrap().remove(0);
    let mut h = good.clone();
    set(
        &mut h,
        "x-amz-x509",
        &base64::engine::general_purpose::STANDARD.encode(&other_der),
    );
    let e = check(&h, &signed.query, BODY).unwrap_err();
    assert!(e.message.contains("serial"), "{e}");

    // The right serial but a signature that does not verify.
    let auth = good["authorization"].to_str().unwrap();
    let (head, sig) = auth.rsplit_once("Signature=").unwrap();
    let mut flipped = hex::decode(sig).unwrap();
    flipped[10] ^= 1;
    let mut h = good.clone();
    set(
        &mut h,
        "authorization",
        &format!("{head}Signature={}", hex::encode(flipped)),
    );
    let e = check(&h, &signed.query, BODY).unwrap_err();
    assert_eq!(
        (e.status, e.message.as_str()),
        (403, "Signature validation failed")
    );

    // The RSA key with the ECDSA algorithm name.
    let mut h = good.clone();
    set(
        &mut h,
        "authorization",
        &auth.replacen(signer::RSA, signer::ECDSA, 1),
    );
    denied(check(&h, &signed.query, BODY), "algorithm");

    // A signature that leaves out x-amz-x509 is malformed.
    let mut h = good.clone();
    set(
        &mut h,
        "authorization",
        &auth.replace(";x-amz-x509", "").replace("x-amz-x509;", ""),
    );
    assert_eq!(check(&h, &signed.query, BODY).unwrap_err().status, 400);
}

#[test]
fn stale_dates_are_refused_unless_the_check_is_off() {
    let root = ca("Root");
    let (cert, key_pem) = root.leaf(&rcgen::PKCS_ECDSA_P256_SHA256, "pi-01");
    let key = Key::from_pem(&key_pem);
    let old = OffsetDateTime::now_utc() - ::time::Duration::minutes(10);
    let amz_date = old
        .format(format_description!("[year][month][day]T[hour][minute][second]Z"))
        .unwrap();
    let signed = signer::sign(&input(&cert, &key, amz_date.clone()));
    let h = header_map(&signed.headers);
    let e = check(&h, &signed.query, BODY).unwrap_err();
    assert_eq!(e.status, 403);
    assert!(e.message.contains("Signature expired"), "{e}");
    assert!(verify(
        &h,
        &signed.query,
        BODY.as_bytes(),
        OffsetDateTime::now_utc(),
        None
    )
    .is_ok());

    // A date changed after signing breaks the signature even without the skew check.
    let mut h2 = h.clone();
    let newer = format!(
        "{}{}",
        &amz_date[..13],
        if &amz_date[13..14] == "0" { "1" } else { "0" }
    );
    set(&mut h2, "x-amz-date", &format!("{newer}{}", &amz_date[14..]));
    let e = verify(
        &h2,
        &signed.query,
        BODY.as_bytes(),
        OffsetDateTime::now_utc(),
        None,
    )
    .unwrap_err();
    assert_eq!(e.status, 403, "{e}");
}

#[test]
fn chains_through_sent_intermediates_only_to_the_anchor() {
    let now = OffsetDateTime::now_utc();
    let root = ca("Root");
    let sub = root.intermediate("Issuing CA");
    let (cert, key_pem) = sub.leaf(&rcgen::PKCS_RSA_SHA256, "pi-01");
    let key = Key::from_pem(&key_pem);

    let mut with_chain = input(&cert, &key, signer::amz_date_now());
    with_chain.chain_pem = Some(&sub.pem);
    let signed = signer::sign(&with_chain);
    let ok = check(&header_map(&signed.headers), &signed.query, BODY).unwrap();
    assert_eq!(ok.chain_der.len(), 1);
    chain::verify_chain(&ok.leaf_der, &ok.chain_der, &[root.der()], now).unwrap();
    // The intermediate itself may also be the anchor.
    chain::verify_chain(&ok.leaf_der, &[], &[sub.der()], now).unwrap();
    // Without the intermediate there is no path to the root.
    assert_eq!(
        chain::verify_chain(&ok.leaf_der, &[], &[root.der()], now),
        Err(chain::UNTRUSTED.to_string())
    );
    // Another CA with the same name is not the anchor.
    let impostor = ca("Root");
    assert_eq!(
        chain::verify_chain(&ok.leaf_der, &ok.chain_der, &[impostor.der()], now),
        Err(chain::UNTRUSTED.to_string())
    );
    // Past the leaf's validity.
    let later = now + ::time::Duration::days(2);
    assert!(chain::verify_chain(&ok.leaf_der, &ok.chain_der, &[root.der()], later).is_err());

    // A CA certificate cannot sign sessions.
    let (_, leaf) = X509Certificate::from_der(&ok.leaf_der).unwrap();
    chain::check_leaf(&leaf, now).unwrap();
    let sub_der = sub.der();
    let (_, sub_cert) = X509Certificate::from_der(&sub_der).unwrap();
    assert!(chain::check_leaf(&sub_cert, now).is_err());
}

#[test]
fn canonical_headers_join_values_and_collapse_spaces() {
    let mut h = HeaderMap::new();
    h.append("x-b", HeaderValue::from_static("one  two"));
    h.append("x-b", HeaderValue::from_static("three"));
    h.append("host", HeaderValue::from_static("127.0.0.1:1"));
    assert_eq!(
        canonical_headers(&h, "host;x-b").unwrap(),
        "host:127.0.0.1:1\nx-b:one two,three"
    );
    assert_eq!(canonical_headers(&h, "host;x-missing"), Err("x-missing".into()));
}

#[test]
fn authorization_header_parsing() {
    let a = parse_authorization(
        "AWS4-X509-RSA-SHA256 Credential=123/20260101/eu-west-1/rolesanywhere/aws4_request, \
         SignedHeaders=host;x-amz-date;x-amz-x509, Signature=00ff",
    )
    .unwrap();
    assert_eq!(a.serial, "123");
    assert_eq!(a.scope(), "20260101/eu-west-1/rolesanywhere/aws4_request");
    assert_eq!(a.signature, vec![0, 255]);
    for bad in [
        "AWS4-X509-RSA-SHA256",
        "AWS4-X509-RSA-SHA256 Credential=123/20260101/eu-west-1/rolesanywhere, SignedHeaders=host, Signature=00",
        "AWS4-X509-RSA-SHA256 Credential=1/2/3/4/aws4_request, SignedHeaders=host, Signature=zz",
    ] {
        assert_eq!(parse_authorization(bad).unwrap_err().status, 400, "{bad}");
    }
}
