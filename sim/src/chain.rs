//! Does a client certificate chain to a trust anchor's CA? (User guide,
//! "trust model": an X.509 v3 end-entity certificate, signed with SHA-256
//! or stronger, valid now, issued — directly or through the intermediates
//! the client sent in `X-Amz-X509-Chain` — by a CA of the trust anchor.)

use ::time::OffsetDateTime;
use x509_parser::prelude::*;

/// The message AWS sends when no chain to the anchor is found.
pub const UNTRUSTED: &str = "Untrusted Signing Certificate";
/// Longest path leaf → anchor we follow (AWS allows up to 5 intermediates).
const MAX_DEPTH: usize = 6;

/// DER certificates in a PEM bundle, in order.
pub fn pem_bundle_to_der(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    let mut ders = Vec::new();
    for item in Pem::iter_from_buffer(pem.as_bytes()) {
        let item = item.map_err(|e| format!("not PEM: {e}"))?;
        if item.label != "CERTIFICATE" {
            return Err(format!("unexpected PEM block {}", item.label));
        }
        X509Certificate::from_der(&item.contents).map_err(|e| format!("not X.509: {e}"))?;
        ders.push(item.contents);
    }
    if ders.is_empty() {
        return Err("no certificate in the PEM data".into());
    }
    Ok(ders)
}

fn valid_at(cert: &X509Certificate, now: OffsetDateTime) -> bool {
    let t = now.unix_timestamp();
    cert.validity().not_before.timestamp() <= t && t <= cert.validity().not_after.timestamp()
}

fn is_ca(cert: &X509Certificate) -> bool {
    matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca)
}

fn weak_signature(cert: &X509Certificate) -> bool {
    // md5WithRSA, sha1WithRSA (PKCS#1 and OIW), ecdsa-with-SHA1.
    const WEAK: [&str; 4] = [
        "1.2.840.113549.1.1.4",
        "1.2.840.113549.1.1.5",
        "1.3.14.3.2.29",
        "1.2.840.10045.4.1",
    ];
    WEAK.contains(&cert.signature_algorithm.algorithm.to_id_string().as_str())
}

/// `issuer` issued and signed `cert`.
fn issued_by(cert: &X509Certificate, issuer: &X509Certificate) -> bool {
    cert.issuer().as_raw() == issuer.subject().as_raw()
        && cert.verify_signature(Some(issuer.public_key())).is_ok()
}

/// The end-entity certificate's own requirements.
pub fn check_leaf(leaf: &X509Certificate, now: OffsetDateTime) -> Result<(), String> {
    if leaf.version() != X509Version::V3 {
        return Err("The signing certificate must be X.509 v3".into());
    }
    if is_ca(leaf) {
        return Err("The signing certificate must be an end-entity certificate (CA:FALSE)".into());
    }
    if let Ok(Some(ku)) = leaf.key_usage() {
        if !ku.value.digital_signature() {
            return Err("The signing certificate's key usage must include digitalSignature".into());
        }
    }
    if weak_signature(leaf) {
        return Err("The signing certificate must be signed with SHA-256 or stronger".into());
    }
    if !valid_at(leaf, now) {
        return Err("The signing certificate is expired or not yet valid".into());
    }
    Ok(())
}

fn parse(der: &[u8]) -> Option<X509Certificate<'_>> {
    X509Certificate::from_der(der).map(|(_, c)| c).ok()
}

/// Whether `leaf` chains to one of `anchors` through `intermediates`, every
/// certificate on the path valid at `now`. The error is AWS's message.
pub fn verify_chain(
    leaf_der: &[u8],
    intermediates_der: &[Vec<u8>],
    anchors_der: &[Vec<u8>],
    now: OffsetDateTime,
) -> Result<(), String> {
    let leaf = parse(leaf_der).ok_or(UNTRUSTED)?;
    let intermediates: Vec<_> = intermediates_der.iter().filter_map(|d| parse(d)).collect();
    let anchors: Vec<_> = anchors_der.iter().filter_map(|d| parse(d)).collect();

    if !valid_at(&leaf, now) {
        return Err(UNTRUSTED.to_string());
    }
    let mut current = &leaf;
    for _ in 0..MAX_DEPTH {
        if anchors.iter().any(|a| valid_at(a, now) && issued_by(current, a)) {
            return Ok(());
        }
        match intermediates
            .iter()
            .find(|i| is_ca(i) && valid_at(i, now) && !weak_signature(i) && issued_by(current, i))
        {
            Some(next) if !std::ptr::eq(next, current) => current = next,
            _ => break,
        }
    }
    Err(UNTRUSTED.to_string())
}

/// The CN of a distinguished name (the first one), if any.
pub fn common_name(name: &X509Name) -> Option<String> {
    name.iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string)
}

/// Principal tags Roles Anywhere derives from a certificate
/// (`x509Subject/CN`, `x509Issuer/O`, `x509SAN/DNS`, ...), for trust
/// policy conditions.
pub fn principal_tags(cert: &X509Certificate) -> Vec<(String, String)> {
    let mut tags = Vec::new();
    for (prefix, name) in [("x509Subject", cert.subject()), ("x509Issuer", cert.issuer())] {
        for attr in name.iter_attributes() {
            let key = match attr.attr_type().to_id_string().as_str() {
                "2.5.4.3" => "CN",
                "2.5.4.10" => "O",
                "2.5.4.11" => "OU",
                "2.5.4.6" => "C",
                "2.5.4.8" => "ST",
                "2.5.4.7" => "L",
                _ => continue,
            };
            if let Ok(v) = attr.as_str() {
                tags.push((format!("{prefix}/{key}"), v.to_string()));
            }
        }
    }
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for gn in &san.value.general_names {
            match gn {
                GeneralName::DNSName(d) => tags.push(("x509SAN/DNS".into(), d.to_string())),
                GeneralName::URI(u) => tags.push(("x509SAN/URI".into(), u.to_string())),
                _ => {}
            }
        }
    }
    tags
}
