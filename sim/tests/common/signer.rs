//! A test-side SigV4-X509 signer, written from specs/rolesanywhere.md C2
//! (after the signing helper's signer.go) independently of the simulator's
//! verifier, so a shared misreading of the spec cannot make both agree.
//! Used by the unit tests (through `#[path]`) and the integration tests.

#![allow(dead_code)]

use aws_lc_rs::digest;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{self, EcdsaKeyPair, RsaKeyPair};
use base64::Engine as _;

pub const RSA: &str = "AWS4-X509-RSA-SHA256";
pub const ECDSA: &str = "AWS4-X509-ECDSA-SHA256";

/// A private key that signs SHA-256 digests of messages.
pub enum Key {
    Rsa(RsaKeyPair),
    P256(EcdsaKeyPair),
    /// Anything else, signed by `openssl dgst -sha256` (P-384 here: aws-lc-rs
    /// pairs P-384 with SHA-384 only, the helper pairs it with SHA-256).
    Openssl(std::path::PathBuf),
}

impl Key {
    /// From a PKCS#8 PEM (rcgen's `serialize_pem`, testkit's `key_pem`).
    pub fn from_pem(pem: &str) -> Key {
        let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .expect("PEM body is base64");
        if let Ok(k) = RsaKeyPair::from_pkcs8(&der) {
            return Key::Rsa(k);
        }
        if let Ok(k) = EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_ASN1_SIGNING, &der) {
            return Key::P256(k);
        }
        let path = std::env::temp_dir().join(format!(
            "rolesanywhere-sim-key-{}-{}.pem",
            std::process::id(),
            hex::encode(&digest::digest(&digest::SHA256, &der).as_ref()[..8])
        ));
        std::fs::write(&path, pem).expect("writing the key for openssl");
        Key::Openssl(path)
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Key::Rsa(_) => RSA,
            Key::P256(_) | Key::Openssl(_) => ECDSA,
        }
    }

    pub fn sign(&self, message: &[u8]) -> Vec<u8> {
        match self {
            Key::Rsa(k) => {
                let mut sig = vec![0; k.public_modulus_len()];
                k.sign(
                    &signature::RSA_PKCS1_SHA256,
                    &SystemRandom::new(),
                    message,
                    &mut sig,
                )
                .expect("RSA signing");
                sig
            }
            Key::P256(k) => k
                .sign(&SystemRandom::new(), message)
                .expect("ECDSA signing")
                .as_ref()
                .to_vec(),
            Key::Openssl(path) => {
                use std::io::Write;
                let mut child = std::process::Command::new("openssl")
                    .args(["dgst", "-sha256", "-sign"])
                    .arg(path)
                    .stdin(std::process::Stdio::piped())
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .expect("running openssl");
                child.stdin.take().unwrap().write_all(message).unwrap();
                let out = child.wait_with_output().unwrap();
                assert!(out.status.success(), "openssl dgst -sign failed");
                out.stdout
            }
        }
    }
}

/// What to sign.
pub struct Input<'a> {
    /// `Host` as the client sends it, port included.
    pub host: &'a str,
    pub region: &'a str,
    pub profile_arn: &'a str,
    pub role_arn: &'a str,
    pub trust_anchor_arn: &'a str,
    pub body: &'a str,
    pub cert_pem: &'a str,
    /// Intermediates for `X-Amz-X509-Chain` (PEM), if any.
    pub chain_pem: Option<&'a str>,
    pub key: &'a Key,
    /// `YYYYMMDDTHHMMSSZ`
    pub amz_date: String,
}

/// A signed request: the query string (without `?`) and the headers to send.
pub struct Signed {
    pub query: String,
    pub headers: Vec<(String, String)>,
    pub canonical_request: String,
    pub string_to_sign: String,
}

pub fn amz_date_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        now.year(),
        now.month() as u8,
        now.day(),
        now.hour(),
        now.minute(),
        now.second()
    )
}

fn pem_to_der(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut b64 = String::new();
    let mut inside = false;
    for line in pem.lines() {
        if line.starts_with("-----BEGIN") {
            inside = true;
            b64.clear();
        } else if line.starts_with("-----END") {
            inside = false;
            out.push(base64::engine::general_purpose::STANDARD.decode(&b64).unwrap());
        } else if inside {
            b64.push_str(line.trim());
        }
    }
    out
}

/// Go's `url.QueryEscape`, then the spec's `+` → `%20`.
fn escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// The decimal form of a big-endian unsigned integer (the serial number).
fn decimal(mut n: Vec<u8>) -> String {
    let mut digits = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = (rem << 8) | *b as u32;
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap()
}

pub fn serial_decimal(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    decimal(cert.raw_serial().to_vec())
}

pub fn sign(input: &Input) -> Signed {
    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf = pem_to_der(input.cert_pem).remove(0);
    let mut params = [
        ("profileArn", input.profile_arn),
        ("roleArn", input.role_arn),
        ("trustAnchorArn", input.trust_anchor_arn),
    ];
    params.sort();
    // Empty ARNs are left out (to test ARNs sent in the body instead).
    let query: String = params
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| format!("{k}={}", escape(v)))
        .collect::<Vec<_>>()
        .join("&");

    let mut headers: Vec<(String, String)> = vec![
        ("Content-Type".into(), "application/json".into()),
        ("Host".into(), input.host.into()),
        ("X-Amz-Date".into(), input.amz_date.clone()),
        ("X-Amz-X509".into(), b64.encode(&leaf)),
        // The Go SDK adds headers of its own, and signs them too.
        (
            "Amz-Sdk-Invocation-Id".into(),
            "7d2c4a39-0b7e-4c8e-9f00-5a8a6e1c3b21".into(),
        ),
    ];
    if let Some(chain) = input.chain_pem {
        let chain: Vec<String> = pem_to_der(chain).iter().map(|d| b64.encode(d)).collect();
        headers.push(("X-Amz-X509-Chain".into(), chain.join(",")));
    }
    let mut lower: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    lower.sort();
    let canonical_headers: String = lower
        .iter()
        .map(|(k, v)| format!("{k}:{v}"))
        .collect::<Vec<_>>()
        .join("\n");
    let signed_headers: String = lower
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");

    let canonical_request = format!(
        "POST\n/sessions\n{query}\n{canonical_headers}\n\n{signed_headers}\n{}",
        sha256_hex(input.body.as_bytes())
    );
    let scope = format!(
        "{}/{}/rolesanywhere/aws4_request",
        &input.amz_date[..8],
        input.region
    );
    let alg = input.key.algorithm();
    let string_to_sign = format!(
        "{alg}\n{}\n{scope}\n{}",
        input.amz_date,
        sha256_hex(canonical_request.as_bytes())
    );
    let signature = hex::encode(input.key.sign(string_to_sign.as_bytes()));
    headers.push((
        "Authorization".into(),
        format!(
            "{alg} Credential={}/{scope}, SignedHeaders={signed_headers}, Signature={signature}",
            serial_decimal(&leaf)
        ),
    ));
    Signed {
        query,
        headers,
        canonical_request,
        string_to_sign,
    }
}

#[test]
fn decimal_conversion() {
    assert_eq!(decimal(vec![0x01, 0x00]), "256");
    assert_eq!(decimal(vec![0x00]), "0");
    assert_eq!(decimal(vec![0xff, 0xff, 0xff, 0xff, 0xff]), "1099511627775");
}
