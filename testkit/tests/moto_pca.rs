//! The moto stand-in and the test CAs that every other integration test builds on.

use std::net::IpAddr;
use std::time::Instant;

use aws_sdk_ssm::error::ProvideErrorMetadata;
use testkit::moto::Moto;
use testkit::pca::{ForeignCa, Issued, TestCa};
use x509_parser::extensions::GeneralName;
use x509_parser::pem::Pem;

async fn start() -> Moto {
    let t = Instant::now();
    let moto = Moto::start().await.expect("moto starts");
    eprintln!("moto started on {} in {:?}", moto.url, t.elapsed());
    moto
}

async fn put(ssm: &aws_sdk_ssm::Client, name: &str) {
    ssm.put_parameter()
        .name(name)
        .value("v")
        .r#type(aws_sdk_ssm::types::ParameterType::String)
        .send()
        .await
        .expect("PutParameter");
}

/// Some(value) if the parameter exists, None on ParameterNotFound, panics otherwise.
async fn get(ssm: &aws_sdk_ssm::Client, name: &str) -> Option<String> {
    match ssm.get_parameter().name(name).send().await {
        Ok(out) => out.parameter.and_then(|p| p.value),
        Err(e) if e.code() == Some("ParameterNotFound") => None,
        Err(e) => panic!("GetParameter {name}: {e:?}"),
    }
}

#[tokio::test]
async fn two_servers_are_independent() {
    let (a, b) = tokio::join!(start(), start());
    assert_ne!(a.url, b.url);
    let ssm_a = aws_sdk_ssm::Client::new(&a.sdk_config().await);
    let ssm_b = aws_sdk_ssm::Client::new(&b.sdk_config().await);
    put(&ssm_a, "/edgectl/test/only-in-a").await;
    assert_eq!(get(&ssm_a, "/edgectl/test/only-in-a").await.as_deref(), Some("v"));
    assert_eq!(get(&ssm_b, "/edgectl/test/only-in-a").await, None);
}

#[tokio::test]
async fn reset_wipes_state() {
    let moto = start().await;
    let ssm = aws_sdk_ssm::Client::new(&moto.sdk_config().await);
    put(&ssm, "/edgectl/test/wiped").await;
    assert!(get(&ssm, "/edgectl/test/wiped").await.is_some());
    moto.reset().await.expect("reset");
    assert_eq!(get(&ssm, "/edgectl/test/wiped").await, None);
}

#[tokio::test]
async fn dropping_moto_stops_the_server() {
    let moto = start().await;
    let port = moto.port;
    drop(moto);
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err());
}

fn pem_der(pem: &str) -> Vec<u8> {
    Pem::iter_from_buffer(pem.as_bytes())
        .next()
        .expect("one PEM block")
        .expect("valid PEM")
        .contents
}

/// Checks `issued` against the CA certificate `ca_pem` with x509-parser:
/// issuer name, SANs, key match, and the signature under the CA's key.
fn check_signed_by(issued: &Issued, ca_pem: &str, dns: &[&str], ips: &[IpAddr]) {
    let ca_der = pem_der(ca_pem);
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
    let der = pem_der(&issued.cert_pem);
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();

    assert_eq!(cert.issuer(), ca.subject());
    let sans = &cert
        .subject_alternative_name()
        .unwrap()
        .expect("SANs")
        .value
        .general_names;
    for d in dns {
        assert!(
            sans.contains(&GeneralName::DNSName(d)),
            "{d} missing from {sans:?}"
        );
    }
    for ip in ips {
        let octets = match ip {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        assert!(
            sans.contains(&GeneralName::IPAddress(&octets)),
            "{ip} missing from {sans:?}"
        );
    }
    let key = rcgen::KeyPair::from_pem(&issued.key_pem).unwrap();
    assert_eq!(
        &*cert.public_key().subject_public_key.data,
        key.public_key_raw(),
        "key does not match certificate"
    );
    assert_eq!(issued.serial_hex, cert.tbs_certificate.serial.to_str_radix(16));
    cert.verify_signature(Some(ca.public_key()))
        .expect("signature verifies with the CA key");
    assert!(!issued.chain_pem.is_empty());
}

/// `openssl verify` against `ca_pem` only, for the TLS purpose both ends use.
fn openssl_verify(cert_pem: &str, ca_pem: &str, purpose: &str) -> bool {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.path().join("cert.pem"), cert_pem).unwrap();
    let out = std::process::Command::new("openssl")
        .current_dir(dir.path())
        .args([
            "verify",
            "-no-CAfile",
            "-no-CApath",
            "-CAfile",
            "ca.pem",
            "-purpose",
            purpose,
            "cert.pem",
        ])
        .output()
        .expect("openssl runs");
    out.status.success()
}

#[tokio::test]
async fn test_ca_issues_certificates_that_verify() {
    let moto = start().await;
    let cfg = moto.sdk_config().await;
    let t = Instant::now();
    let ca = TestCa::create(&cfg, "edgectl test CA").await.expect("CA");
    eprintln!("TestCa created in {:?}", t.elapsed());
    assert!(ca
        .arn
        .starts_with("arn:aws:acm-pca:eu-west-1:123456789012:certificate-authority/"));

    let dns = ["server.global.nomad", "localhost"];
    let ips: [IpAddr; 2] = ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()];
    let t = Instant::now();
    let rsa = ca
        .issue(&cfg, "server.global.nomad", &dns, &ips)
        .await
        .expect("issue RSA");
    eprintln!("RSA certificate issued in {:?}", t.elapsed());
    check_signed_by(&rsa, &ca.cert_pem, &dns, &ips);
    assert!(rsa.key_pem.contains("BEGIN PRIVATE KEY"));
    for purpose in ["sslserver", "sslclient"] {
        assert!(openssl_verify(&rsa.cert_pem, &ca.cert_pem, purpose), "{purpose}");
    }

    let ec = ca
        .issue_ec(&cfg, "client.global.nomad", &["client.global.nomad"], &[])
        .await
        .expect("issue EC");
    check_signed_by(&ec, &ca.cert_pem, &["client.global.nomad"], &[]);
    assert!(openssl_verify(&ec.cert_pem, &ca.cert_pem, "sslclient"));
    assert_ne!(rsa.serial_hex, ec.serial_hex);
}

#[tokio::test]
async fn foreign_ca_certificates_do_not_verify_against_the_test_ca() {
    let moto = start().await;
    let cfg = moto.sdk_config().await;
    let ca = TestCa::create(&cfg, "edgectl test CA").await.expect("CA");
    // Same subject name as the TestCa, so only the signature can tell them apart.
    let foreign = ForeignCa::new("edgectl test CA");
    let ips: [IpAddr; 1] = ["10.0.0.7".parse().unwrap()];

    for issued in [
        foreign.issue("node-7", &["node-7.edge"], &ips),
        foreign.issue_ec("node-7", &["node-7.edge"], &ips),
    ] {
        // Positive control: the foreign certificate is well formed and
        // verifies against its own CA...
        check_signed_by(&issued, foreign.cert_pem(), &["node-7.edge"], &ips);
        assert!(openssl_verify(&issued.cert_pem, foreign.cert_pem(), "sslclient"));
        // ...but not against the TestCa.
        let der = pem_der(&issued.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        let ca_der = pem_der(&ca.cert_pem);
        let (_, ca_cert) = x509_parser::parse_x509_certificate(&ca_der).unwrap();
        assert!(cert.verify_signature(Some(ca_cert.public_key())).is_err());
        assert!(!openssl_verify(&issued.cert_pem, &ca.cert_pem, "sslclient"));
    }
}
