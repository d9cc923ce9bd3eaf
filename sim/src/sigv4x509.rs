//! SigV4-X509: the signature IAM Roles Anywhere's CreateSession carries
//! (specs/rolesanywhere.md C2, after the signing helper's signer.go).
//!
//! This module checks only that the request was signed by the key of the
//! certificate in `X-Amz-X509` and is fresh; whether that certificate is
//! trusted is `chain`'s job.

use std::time::Duration;

use ::time::macros::format_description;
use ::time::{OffsetDateTime, PrimitiveDateTime};
use aws_lc_rs::digest;
use aws_lc_rs::signature::{self, UnparsedPublicKey, VerificationAlgorithm};
use base64::Engine as _;
use hyper::HeaderMap;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
};
use x509_parser::prelude::*;

use crate::query;
use crate::response::ApiError;

pub const RSA_SHA256: &str = "AWS4-X509-RSA-SHA256";
pub const ECDSA_SHA256: &str = "AWS4-X509-ECDSA-SHA256";
/// The signing name in the credential scope.
pub const SERVICE: &str = "rolesanywhere";
/// Headers a signature must cover: without them a signature could be
/// replayed with another certificate, host or time.
const REQUIRED_SIGNED_HEADERS: [&str; 3] = ["host", "x-amz-date", "x-amz-x509"];

/// The parsed `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub algorithm: String,
    /// The leaf certificate's serial number, in decimal.
    pub serial: String,
    /// `yyyymmdd`
    pub date: String,
    pub region: String,
    pub service: String,
    /// As sent (lowercase, `;`-separated): the canonical request uses it verbatim.
    pub signed_headers: String,
    pub signature: Vec<u8>,
}

impl Authorization {
    pub fn scope(&self) -> String {
        format!("{}/{}/{}/aws4_request", self.date, self.region, self.service)
    }
}

/// `ALG Credential=SERIAL/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b, Signature=hex`
pub fn parse_authorization(value: &str) -> Result<Authorization, ApiError> {
    let bad = |why: &str| ApiError::validation(format!("Malformed Authorization header: {why}"));
    let (algorithm, rest) = value.split_once(' ').ok_or_else(|| bad("no credentials"))?;
    let mut credential = None;
    let mut signed_headers = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=').ok_or_else(|| bad(part.trim()))?;
        match k {
            "Credential" => credential = Some(v),
            "SignedHeaders" => signed_headers = Some(v),
            "Signature" => signature = Some(v),
            _ => return Err(bad(&format!("unknown field {k}"))),
        }
    }
    let credential = credential.ok_or_else(|| bad("no Credential"))?;
    let [serial, date, region, service, "aws4_request"] = credential.split('/').collect::<Vec<_>>()[..]
    else {
        return Err(bad("Credential is not SERIAL/DATE/REGION/SERVICE/aws4_request"));
    };
    let signature = hex::decode(signature.ok_or_else(|| bad("no Signature"))?)
        .map_err(|_| bad("Signature is not hex"))?;
    Ok(Authorization {
        algorithm: algorithm.to_string(),
        serial: serial.to_string(),
        date: date.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers.ok_or_else(|| bad("no SignedHeaders"))?.to_string(),
        signature,
    })
}

/// `name:value` lines for the signed headers, in the order given, as
/// signer.go builds them: all values of a header joined with `,`, the line
/// trimmed and runs of spaces collapsed. `None` names a missing header.
pub fn canonical_headers(headers: &HeaderMap, signed_headers: &str) -> Result<String, String> {
    let mut lines = Vec::new();
    for name in signed_headers.split(';') {
        let values: Vec<String> = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        if values.is_empty() {
            return Err(name.to_string());
        }
        lines.push(strip_excess_spaces(&format!("{name}:{}", values.join(","))));
    }
    Ok(lines.join("\n"))
}

/// Go's stripExcessSpaces: trim spaces at both ends, collapse inner runs.
fn strip_excess_spaces(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut last_space = false;
    for c in s.trim_matches(' ').chars() {
        if c == ' ' {
            if !last_space {
                out.push(c);
            }
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
    }
    out
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(digest::digest(&digest::SHA256, data))
}

/// The canonical request. Method and path are fixed (`POST /sessions`)
/// whatever the URL was: the helper hard-codes them, even behind an
/// `--endpoint` with a path prefix.
pub fn canonical_request(
    canonical_query: &str,
    canonical_headers: &str,
    signed_headers: &str,
    body: &[u8],
) -> String {
    format!(
        "POST\n/sessions\n{canonical_query}\n{canonical_headers}\n\n{signed_headers}\n{}",
        sha256_hex(body)
    )
}

pub fn string_to_sign(algorithm: &str, amz_date: &str, scope: &str, canonical_request: &str) -> String {
    format!(
        "{algorithm}\n{amz_date}\n{scope}\n{}",
        sha256_hex(canonical_request.as_bytes())
    )
}

/// A request whose signature verified.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub authorization: Authorization,
    pub leaf_der: Vec<u8>,
    /// `X-Amz-X509-Chain`, in the order sent.
    pub chain_der: Vec<Vec<u8>>,
    pub signed_at: OffsetDateTime,
}

/// Verifies a CreateSession request's SigV4-X509 signature against the key
/// in its `X-Amz-X509` certificate. `max_skew` is AWS's ±5 minutes for the
/// request date; `None` turns that check off.
pub fn verify(
    headers: &HeaderMap,
    raw_query: &str,
    body: &[u8],
    now: OffsetDateTime,
    max_skew: Option<Duration>,
) -> Result<SignedRequest, ApiError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let auth = parse_authorization(
        header("authorization").ok_or_else(|| ApiError::validation("Missing Authorization header"))?,
    )?;
    if auth.algorithm != RSA_SHA256 && auth.algorithm != ECDSA_SHA256 {
        return Err(ApiError::validation(format!(
            "Unsupported signing algorithm {}",
            auth.algorithm
        )));
    }
    if auth.service != SERVICE {
        return Err(ApiError::validation(format!(
            "Credential should be scoped to correct service: '{SERVICE}'"
        )));
    }
    let signed: Vec<&str> = auth.signed_headers.split(';').collect();
    let must_sign = REQUIRED_SIGNED_HEADERS.iter().copied().chain(
        headers
            .contains_key("x-amz-x509-chain")
            .then_some("x-amz-x509-chain"),
    );
    for required in must_sign {
        if !signed.contains(&required) {
            return Err(ApiError::validation(format!(
                "The request signature must cover the {required} header"
            )));
        }
    }

    let amz_date = header("x-amz-date").ok_or_else(|| ApiError::validation("Missing X-Amz-Date"))?;
    let signed_at = parse_amz_date(amz_date)
        .ok_or_else(|| ApiError::validation(format!("X-Amz-Date '{amz_date}' is not YYYYMMDDTHHMMSSZ")))?;
    if !amz_date.starts_with(&auth.date) || auth.date.len() != 8 {
        return Err(ApiError::access_denied(
            "Credential scope date does not match X-Amz-Date",
        ));
    }
    if let Some(skew) = max_skew {
        if (now - signed_at).unsigned_abs() > skew {
            return Err(ApiError::access_denied(format!(
                "Signature expired: {amz_date} is not within {} seconds of the server time {}",
                skew.as_secs(),
                now.format(format_description!("[year][month][day]T[hour][minute][second]Z"))
                    .unwrap_or_default()
            )));
        }
    }

    let b64 = base64::engine::general_purpose::STANDARD;
    let leaf_der = b64
        .decode(header("x-amz-x509").ok_or_else(|| ApiError::validation("Missing X-Amz-X509"))?)
        .map_err(|_| ApiError::validation("X-Amz-X509 is not base64"))?;
    let chain_der = match header("x-amz-x509-chain") {
        None => Vec::new(),
        Some(chain) => chain
            .split(',')
            .map(|c| b64.decode(c.trim()))
            .collect::<Result<_, _>>()
            .map_err(|_| ApiError::validation("X-Amz-X509-Chain is not comma-separated base64"))?,
    };
    let (_, leaf) = X509Certificate::from_der(&leaf_der)
        .map_err(|_| ApiError::validation("X-Amz-X509 is not a DER X.509 certificate"))?;
    if leaf.tbs_certificate.serial.to_string() != auth.serial {
        return Err(ApiError::access_denied(
            "Credential serial number does not match the certificate's",
        ));
    }

    let canonical_headers = canonical_headers(headers, &auth.signed_headers).map_err(|missing| {
        ApiError::validation(format!("Signed header {missing} is missing from the request"))
    })?;
    let canonical = canonical_request(
        &query::canonical(raw_query),
        &canonical_headers,
        &auth.signed_headers,
        body,
    );
    let to_sign = string_to_sign(&auth.algorithm, amz_date, &auth.scope(), &canonical);
    verify_signature(
        &auth.algorithm,
        leaf.public_key(),
        to_sign.as_bytes(),
        &auth.signature,
    )
    .map_err(ApiError::access_denied)?;
    Ok(SignedRequest {
        authorization: auth,
        leaf_der: leaf_der.clone(),
        chain_der,
        signed_at,
    })
}

fn parse_amz_date(s: &str) -> Option<OffsetDateTime> {
    PrimitiveDateTime::parse(
        s,
        format_description!("[year][month][day]T[hour][minute][second]Z"),
    )
    .ok()
    .map(PrimitiveDateTime::assume_utc)
}

/// Checks `signature` over `message` (SHA-256 inside) with the certificate's
/// key: RSA PKCS#1 v1.5, or ECDSA P-256/P-384 with a DER (r, s), as the
/// algorithm name demands.
pub fn verify_signature(
    algorithm: &str,
    key: &SubjectPublicKeyInfo,
    message: &[u8],
    signature: &[u8],
) -> Result<(), String> {
    let key_oid = &key.algorithm.algorithm;
    let verifier: &'static dyn VerificationAlgorithm = if *key_oid == OID_PKCS1_RSAENCRYPTION {
        if algorithm != RSA_SHA256 {
            return Err(format!("{algorithm} does not match the certificate's RSA key"));
        }
        &signature::RSA_PKCS1_2048_8192_SHA256
    } else if *key_oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        if algorithm != ECDSA_SHA256 {
            return Err(format!("{algorithm} does not match the certificate's EC key"));
        }
        let curve = key.algorithm.parameters.as_ref().and_then(|p| p.as_oid().ok());
        match curve {
            Some(c) if c == OID_EC_P256 => &signature::ECDSA_P256_SHA256_ASN1,
            Some(c) if c == OID_NIST_EC_P384 => &signature::ECDSA_P384_SHA256_ASN1,
            _ => return Err("Unsupported elliptic curve in the signing certificate".into()),
        }
    } else {
        return Err(format!(
            "Unsupported key type {key_oid} in the signing certificate"
        ));
    };
    UnparsedPublicKey::new(verifier, &key.subject_public_key.data)
        .verify(message, signature)
        .map_err(|_| "Signature validation failed".to_string())
}

#[cfg(test)]
mod tests;
