//! Keys, CSRs and certificate facts. Keys are made in memory and only ever
//! leave as a `Secret`.

use crate::secret::Secret;
use anyhow::{anyhow, Context, Result};
use rcgen::{CertificateParams, CustomExtension, DistinguishedName, DnType, KeyPair};
use std::net::IpAddr;
use x509_parser::prelude::*;

/// OID 2.5.4.5, the X.520 serialNumber attribute.
const SERIAL_NUMBER: &[u64] = &[2, 5, 4, 5];
/// OID 2.5.29.17, subjectAltName.
const SUBJECT_ALT_NAME: &[u64] = &[2, 5, 29, 17];

pub struct KeyAndCsr {
    pub key_pem: Secret,
    pub csr_pem: String,
}

/// The subject and names a certificate must carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub common_name: String,
    pub serial_number: Option<String>,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

/// A new RSA-2048 key and a CSR for `id`, the SAN extension marked
/// critical as the original sample did.
pub fn rsa_csr(id: &Identity) -> Result<KeyAndCsr> {
    let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).context("generating an RSA-2048 key")?;
    csr_with(id, key)
}

/// A new ECDSA P-256 key and a CSR for `id` (device identities: small keys
/// that the AWS signing helper and Nomad both take).
pub fn ec_csr(id: &Identity) -> Result<KeyAndCsr> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).context("generating a P-256 key")?;
    csr_with(id, key)
}

fn csr_with(id: &Identity, key: KeyPair) -> Result<KeyAndCsr> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, id.common_name.as_str());
    if let Some(serial) = &id.serial_number {
        dn.push(DnType::CustomDnType(SERIAL_NUMBER.to_vec()), serial.as_str());
    }
    params.distinguished_name = dn;
    if !id.dns.is_empty() || !id.ips.is_empty() {
        let mut ext = CustomExtension::from_oid_content(SUBJECT_ALT_NAME, san_der(&id.dns, &id.ips));
        ext.set_criticality(true);
        params.custom_extensions.push(ext);
    }
    let csr = params.serialize_request(&key).context("building a CSR")?;
    Ok(KeyAndCsr {
        key_pem: Secret::new(key.serialize_pem()),
        csr_pem: csr.pem().context("encoding the CSR")?,
    })
}

/// DER of GeneralNames: dNSName [2] and iPAddress [7], both implicit.
fn san_der(dns: &[String], ips: &[IpAddr]) -> Vec<u8> {
    let mut body = Vec::new();
    for name in dns {
        der(&mut body, 0x82, name.as_bytes());
    }
    for ip in ips {
        match ip {
            IpAddr::V4(v4) => der(&mut body, 0x87, &v4.octets()),
            IpAddr::V6(v6) => der(&mut body, 0x87, &v6.octets()),
        }
    }
    let mut out = Vec::new();
    der(&mut out, 0x30, &body);
    out
}

fn der(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
}

/// What we check about a certificate we hold.
#[derive(Debug, Clone)]
pub struct CertFacts {
    pub subject_cn: Option<String>,
    /// The subject's serialNumber attribute (a device's UUID).
    pub subject_serial: Option<String>,
    pub not_after: i64,
    pub serial_hex: String,
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
    /// The subjectPublicKey bits (RSAPublicKey or EC point).
    pub public_key: Vec<u8>,
    /// sha256 (hex) of the whole SubjectPublicKeyInfo DER, as
    /// `openssl pkey -pubout -outform DER | sha256sum` prints it for the key.
    pub spki_sha256: String,
}

pub fn facts(cert_pem: &str) -> Result<CertFacts> {
    let (_, pem) = parse_x509_pem(cert_pem.as_bytes()).map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => dns.push(d.to_string()),
                GeneralName::IPAddress(b) => match b.len() {
                    4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                    16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                    _ => {}
                },
                _ => {}
            }
        }
    }
    let facts = CertFacts {
        subject_cn: cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        subject_serial: cert
            .subject()
            .iter_by_oid(&x509_parser::oid_registry::OID_X509_SERIALNUMBER)
            .next()
            .and_then(|a| a.as_str().ok())
            .map(str::to_string),
        not_after: cert.validity().not_after.timestamp(),
        serial_hex: cert.raw_serial_as_string().replace(':', ""),
        dns,
        ips,
        public_key: cert.public_key().subject_public_key.data.to_vec(),
        spki_sha256: hex_sha256(cert.public_key().raw),
    };
    Ok(facts)
}

/// True when `ca_pem`'s key signed `cert_pem` and the issuer name matches.
pub fn issued_by(cert_pem: &str, ca_pem: &str) -> bool {
    let parse = |pem: &str| parse_x509_pem(pem.as_bytes()).ok().map(|(_, p)| p);
    let (Some(cert_pem), Some(ca_pem)) = (parse(cert_pem), parse(ca_pem)) else {
        return false;
    };
    let (Ok(cert), Ok(ca)) = (cert_pem.parse_x509(), ca_pem.parse_x509()) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
}

/// True when the private key belongs to the certificate.
pub fn key_matches(key_pem: &Secret, cert: &CertFacts) -> bool {
    KeyPair::from_pem(key_pem.expose())
        .map(|k| k.public_key_raw() == cert.public_key.as_slice())
        .unwrap_or(false)
}

/// Why a held certificate must be re-issued, or None when it is fine.
pub fn needs_reissue(
    cert_pem: Option<&str>,
    key_pem: Option<&Secret>,
    ca_pem: Option<&str>,
    want: &Identity,
    now: i64,
    renew_within_days: i64,
) -> Option<&'static str> {
    let Some(cert_pem) = cert_pem else {
        return Some("missing");
    };
    if let Some(reason) = cert_needs_reissue(cert_pem, ca_pem, want, now, renew_within_days) {
        return Some(reason);
    }
    let Ok(f) = facts(cert_pem) else {
        return Some("stored certificate does not parse");
    };
    match key_pem {
        None => Some("private key missing"),
        Some(k) if !key_matches(k, &f) => Some("private key does not match the certificate"),
        Some(_) => None,
    }
}

/// The certificate half of [`needs_reissue`], for keys edgectl never holds
/// (a device's key stays on the device).
pub fn cert_needs_reissue(
    cert_pem: &str,
    ca_pem: Option<&str>,
    want: &Identity,
    now: i64,
    renew_within_days: i64,
) -> Option<&'static str> {
    let Ok(f) = facts(cert_pem) else {
        return Some("stored certificate does not parse");
    };
    match ca_pem {
        Some(ca) if issued_by(cert_pem, ca) => {}
        _ => return Some("not issued by the current CA"),
    }
    if f.not_after - now < renew_within_days * 86_400 {
        return Some("expires within the renewal window");
    }
    if f.subject_cn.as_deref() != Some(want.common_name.as_str()) {
        return Some("common name differs");
    }
    let mut have_dns = f.dns.clone();
    let mut want_dns = want.dns.clone();
    have_dns.sort();
    want_dns.sort();
    let mut have_ips = f.ips.clone();
    let mut want_ips = want.ips.clone();
    have_ips.sort();
    want_ips.sort();
    if have_dns != want_dns || have_ips != want_ips {
        return Some("subject alternative names differ");
    }
    if want.serial_number.is_some() && f.subject_serial != want.serial_number {
        return Some("serial number differs");
    }
    None
}

/// Standard base64 with padding, strictly (what `base64 -w 0` prints).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let b = s.as_bytes();
    if b.len() % 4 != 0 {
        return None;
    }
    let mut out = Vec::with_capacity(b.len() / 4 * 3);
    for (ci, chunk) in b.chunks(4).enumerate() {
        let last = ci == b.len() / 4 - 1;
        let pad = chunk.iter().rev().take_while(|&&c| c == b'=').count();
        if pad > 2 || (pad > 0 && !last) {
            return None;
        }
        let mut n = 0u32;
        for &c in &chunk[..4 - pad] {
            n = (n << 6) | val(c)?;
        }
        n <<= 6 * pad as u32;
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    Some(out)
}

/// Lower-case hex sha256, as `sha256sum` prints it.
pub fn hex_sha256(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A stable idempotency token (≤ 36 chars) for requests derived from `parts`.
pub fn token(parts: &[&str]) -> String {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    for p in parts {
        ctx.update(p.as_bytes());
        ctx.update(&[0]);
    }
    ctx.finish().as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_round_trips() {
        for (enc, dec) in [
            ("", ""),
            ("YQ==", "a"),
            ("YWI=", "ab"),
            ("YWJj", "abc"),
            ("aGVsbG8K", "hello\n"),
        ] {
            assert_eq!(base64_decode(enc).unwrap(), dec.as_bytes(), "{enc}");
        }
        for bad in ["Y", "Y===", "YQ==YQ==", "Y!=="] {
            assert!(base64_decode(bad).is_none(), "{bad}");
        }
    }

    fn id() -> Identity {
        Identity {
            common_name: "*.elb.eu-west-1.amazonaws.com".into(),
            serial_number: None,
            dns: vec![
                "*.elb.eu-west-1.amazonaws.com".into(),
                "server.eu-west-1.nomad".into(),
                "localhost".into(),
            ],
            ips: vec!["127.0.0.1".parse().unwrap()],
        }
    }

    #[test]
    fn csr_carries_names_with_a_critical_san() {
        let k = rsa_csr(&id()).unwrap();
        let (_, pem) = parse_x509_pem(k.csr_pem.as_bytes()).unwrap();
        let (_, csr) = X509CertificationRequest::from_der(&pem.contents).unwrap();
        assert_eq!(
            csr.certification_request_info
                .subject
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap(),
            "*.elb.eu-west-1.amazonaws.com"
        );
        let exts = csr.requested_extensions().unwrap().collect::<Vec<_>>();
        let san = exts.iter().find_map(|e| match e {
            ParsedExtension::SubjectAlternativeName(s) => Some(s),
            _ => None,
        });
        let names = &san.unwrap().general_names;
        assert_eq!(names.len(), 4, "{names:?}");
        assert!(names.contains(&GeneralName::DNSName("server.eu-west-1.nomad")));
        assert!(names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
        // OID 2.5.29.17 followed by BOOLEAN TRUE: the extension is critical.
        let critical_san = [0x06, 0x03, 0x55, 0x1d, 0x11, 0x01, 0x01, 0xff];
        assert!(pem
            .contents
            .windows(critical_san.len())
            .any(|w| w == critical_san));
        assert!(k.key_pem.expose().contains("PRIVATE KEY"));
    }

    /// A self-signed certificate for `id` signed by a fresh key, standing in
    /// for a CA-issued one.
    fn self_signed(id: &Identity, days: i64) -> (String, Secret) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut p = CertificateParams::new(id.dns.clone()).unwrap();
        for ip in &id.ips {
            p.subject_alt_names.push(rcgen::SanType::IpAddress(*ip));
        }
        p.distinguished_name
            .push(DnType::CommonName, id.common_name.as_str());
        p.not_after = ::time::OffsetDateTime::now_utc() + ::time::Duration::days(days);
        let cert = p.self_signed(&key).unwrap();
        (cert.pem(), Secret::new(key.serialize_pem()))
    }

    #[test]
    fn reissue_reasons() {
        let now = ::time::OffsetDateTime::now_utc().unix_timestamp();
        let (cert, key) = self_signed(&id(), 365);
        // A self-signed certificate is its own CA here.
        assert_eq!(
            needs_reissue(Some(&cert), Some(&key), Some(&cert), &id(), now, 30),
            None
        );
        assert_eq!(
            needs_reissue(None, None, Some(&cert), &id(), now, 30),
            Some("missing")
        );
        let (other, other_key) = self_signed(&id(), 365);
        assert_eq!(
            needs_reissue(Some(&cert), Some(&key), Some(&other), &id(), now, 30),
            Some("not issued by the current CA")
        );
        assert_eq!(
            needs_reissue(Some(&cert), Some(&other_key), Some(&cert), &id(), now, 30),
            Some("private key does not match the certificate")
        );
        assert_eq!(
            needs_reissue(Some(&cert), None, Some(&cert), &id(), now, 30),
            Some("private key missing")
        );
        let (soon, soon_key) = self_signed(&id(), 10);
        assert_eq!(
            needs_reissue(Some(&soon), Some(&soon_key), Some(&soon), &id(), now, 30),
            Some("expires within the renewal window")
        );
        let mut more = id();
        more.dns.push("extra.example".into());
        assert_eq!(
            needs_reissue(Some(&cert), Some(&key), Some(&cert), &more, now, 30),
            Some("subject alternative names differ")
        );
        assert_eq!(
            needs_reissue(Some("junk"), Some(&key), Some(&cert), &id(), now, 30),
            Some("stored certificate does not parse")
        );
    }

    #[test]
    fn tokens_are_stable_and_short() {
        assert_eq!(token(&["a", "b"]), token(&["a", "b"]));
        assert_ne!(token(&["a", "b"]), token(&["ab"]));
        assert_eq!(token(&["x"]).len(), 32);
    }

    #[test]
    fn long_der_lengths() {
        let names: Vec<String> = (0..8).map(|i| format!("host-{i}.example.com")).collect();
        let der = san_der(&names, &[]);
        assert_eq!(der[0], 0x30);
        assert_eq!(der[1], 0x81, "long form for lengths of 128..255");
    }
}
