//! CreateSession (specs/rolesanywhere.md C2): a SigV4-X509-signed request
//! for temporary credentials, granted when the certificate chains to an
//! enabled trust anchor, the profile is enabled and lists the role, and the
//! role trusts Roles Anywhere for that anchor.

use ::time::format_description::well_known::Rfc3339;
use ::time::{Duration, OffsetDateTime};
use hyper::HeaderMap;
use serde_json::{json, Value};
use x509_parser::prelude::*;

use crate::arn::Arn;
use crate::chain;
use crate::control_plane::store::Source;
use crate::query;
use crate::response::ApiError;
use crate::sigv4x509;
use crate::trust_policy;
use crate::upstream::UpstreamError;
use crate::{State, ACCOUNT};

/// Session length bounds of the API (seconds).
const MIN_DURATION: i64 = 900;
const MAX_DURATION: i64 = 43200;

/// The three ARNs, from the query (what the helper sends) or the JSON body
/// (which the user guide also allows).
fn arns(query: &[(String, String)], body: &Value) -> Result<(String, String, String), ApiError> {
    let get = |k: &str| {
        query::get(query, k)
            .map(str::to_string)
            .or_else(|| body.get(k).and_then(Value::as_str).map(str::to_string))
    };
    let missing: Vec<&str> = ["profileArn", "roleArn", "trustAnchorArn"]
        .into_iter()
        .filter(|k| get(k).is_none())
        .collect();
    if !missing.is_empty() {
        let errors: Vec<String> = missing
            .iter()
            .map(|k| format!("Value null at '{k}' failed to satisfy constraint: Member must not be null"))
            .collect();
        return Err(ApiError::validation(format!(
            "{} validation error{} detected: {}",
            errors.len(),
            if errors.len() == 1 { "" } else { "s" },
            errors.join("; ")
        )));
    }
    Ok((
        get("profileArn").expect("checked"),
        get("roleArn").expect("checked"),
        get("trustAnchorArn").expect("checked"),
    ))
}

fn rolesanywhere_arn(s: &str, field: &str, kind: &str) -> Result<Arn, ApiError> {
    Arn::parse(s)
        .filter(|a| a.service == "rolesanywhere" && a.resource.starts_with(&format!("{kind}/")))
        .ok_or_else(|| ApiError::validation(format!("Invalid {field}: {s}")))
}

pub(crate) async fn create_session(
    state: &State,
    headers: &HeaderMap,
    raw_query: &str,
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let now = OffsetDateTime::now_utc();
    let signed = sigv4x509::verify(headers, raw_query, body, now, state.options.max_clock_skew)?;

    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("Request body is not valid JSON: {e}")))?
    };
    let (profile_arn, role_arn, anchor_arn) = arns(&query::parse(raw_query), &body)?;
    let anchor_region = rolesanywhere_arn(&anchor_arn, "trustAnchorArn", "trust-anchor")?.region;
    let profile_region = rolesanywhere_arn(&profile_arn, "profileArn", "profile")?.region;
    if anchor_region != profile_region {
        return Err(ApiError::validation(
            "trust anchor and profile regions don't match",
        ));
    }
    let requested = match body.get("durationSeconds").filter(|v| !v.is_null()) {
        None => 3600,
        Some(d) => match d.as_i64() {
            Some(n) if (MIN_DURATION..=MAX_DURATION).contains(&n) => n,
            _ => {
                return Err(ApiError::validation(format!(
                    "1 validation error detected: Value '{d}' at 'durationSeconds' failed to satisfy \
                     constraint: Member must be between {MIN_DURATION} and {MAX_DURATION}"
                )))
            }
        },
    };
    let role_session_name = body.get("roleSessionName").and_then(Value::as_str);

    // Resources live in a region: the request's region must be theirs.
    let region = &signed.authorization.region;
    let (anchor, profile) = {
        let store = state.store.lock().expect("store lock");
        (
            store.anchor_by_arn(&anchor_arn).filter(|a| &a.region == region),
            store.profile_by_arn(&profile_arn).filter(|p| &p.region == region),
        )
    };
    let anchor = anchor.ok_or_else(|| ApiError::not_found(format!("Trust anchor {anchor_arn} not found")))?;
    let profile = profile.ok_or_else(|| ApiError::not_found(format!("Profile {profile_arn} not found")))?;

    // Trust: the certificate chains to the anchor's CA.
    if !anchor.enabled {
        return Err(ApiError::access_denied("Trust anchor is disabled"));
    }
    let anchors_der = match &anchor.source {
        Source::Bundle { pem, .. } => {
            chain::pem_bundle_to_der(pem).map_err(|_| ApiError::access_denied(chain::UNTRUSTED))?
        }
        Source::AcmPca { arn } => match state.upstream.ca_certificate(arn).await {
            Ok(der) => vec![der],
            // The CA is gone or not active: nothing can chain to it.
            Err(UpstreamError::Refused(_)) => return Err(ApiError::access_denied(chain::UNTRUSTED)),
            Err(UpstreamError::Broken(why)) => return Err(ApiError::internal(why)),
        },
    };
    chain::verify_chain(&signed.leaf_der, &signed.chain_der, &anchors_der, now)
        .map_err(ApiError::access_denied)?;
    let (_, leaf) = X509Certificate::from_der(&signed.leaf_der).expect("parsed by sigv4x509::verify");
    chain::check_leaf(&leaf, now).map_err(ApiError::access_denied)?;

    // Authorisation: profile, then the role's own trust policy.
    if !profile.enabled {
        return Err(ApiError::access_denied("Profile is disabled"));
    }
    if !profile.role_arns.contains(&role_arn) {
        return Err(ApiError::access_denied(format!(
            "Role {role_arn} is not in the profile's roleArns"
        )));
    }
    if role_session_name.is_some() && !profile.accept_role_session_name {
        return Err(ApiError::validation(
            "The profile does not accept a custom roleSessionName",
        ));
    }
    let role = match state.upstream.role(&role_arn).await {
        Ok(Some(role)) if role.arn == role_arn => role,
        Ok(_) => {
            return Err(ApiError::access_denied(format!(
                "Unable to assume role {role_arn}: the role does not exist"
            )))
        }
        Err(UpstreamError::Refused(why) | UpstreamError::Broken(why)) => return Err(ApiError::internal(why)),
    };
    let policy = trust_policy::parse_document(&role.trust_policy)
        .map_err(|e| ApiError::access_denied(format!("Unable to assume role {role_arn}: {e}")))?;
    let principal_tags = chain::principal_tags(&leaf);
    trust_policy::check(
        &policy,
        &trust_policy::RequestContext {
            source_arn: &anchor.arn,
            source_account: ACCOUNT,
            principal_tags: &principal_tags,
        },
    )
    .map_err(|e| ApiError::access_denied(format!("Unable to assume role {role_arn}: {e}")))?;

    // Grant.
    let serial_hex = leaf.tbs_certificate.serial.to_str_radix(16);
    let session_name = role_session_name
        .map(str::to_string)
        .unwrap_or_else(|| serial_hex.clone());
    let role_name = role_arn.rsplit('/').next().unwrap_or(&role_arn);
    let duration = requested.min(profile.duration_seconds);
    let expiration = (now + Duration::seconds(duration))
        .replace_nanosecond(0)
        .expect("0 is a valid nanosecond")
        .format(&Rfc3339)
        .expect("UTC times format as RFC 3339");
    let subject_id = state
        .store
        .lock()
        .expect("store lock")
        .subject_id(leaf.issuer().as_raw(), &serial_hex);
    let mut credential = json!({
        "assumedRoleUser": {
            "arn": format!("arn:aws:sts::{ACCOUNT}:assumed-role/{role_name}/{session_name}"),
            "assumedRoleId": format!("{}:{session_name}", role.role_id),
        },
        "credentials": {
            "accessKeyId": crate::ids::temporary_access_key_id(),
            "secretAccessKey": crate::ids::secret_access_key(),
            "sessionToken": crate::ids::session_token(),
            "expiration": expiration,
        },
        "packedPolicySize": 0,
        "roleArn": role_arn,
    });
    if let Some(cn) = chain::common_name(leaf.subject()) {
        credential["sourceIdentity"] = json!(cn);
    }
    Ok((
        201,
        json!({
            "credentialSet": [credential],
            "subjectArn": format!("arn:aws:rolesanywhere:{region}:{ACCOUNT}:subject/{subject_id}"),
        }),
    ))
}
