//! The Roles Anywhere control plane (REST-JSON, specs/rolesanywhere.md C1):
//! trust anchors, profiles and their tags, held in memory.

pub(crate) mod store;
pub(crate) mod validation;

use serde_json::{json, Value};

use crate::query;
use crate::response::ApiError;
use crate::upstream::UpstreamError;
use crate::{State, ACCOUNT};
use store::{now, Profile, Source, TrustAnchor};
use validation::{is_id, is_name, is_role_arn, tags, Validator, ID_PATTERN, NAME_PATTERN, ROLE_ARN_PATTERN};

/// The operations served here; `Debug` gives the AWS operation name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    CreateTrustAnchor,
    ListTrustAnchors,
    GetTrustAnchor,
    UpdateTrustAnchor,
    DeleteTrustAnchor,
    EnableTrustAnchor,
    DisableTrustAnchor,
    CreateProfile,
    ListProfiles,
    GetProfile,
    UpdateProfile,
    DeleteProfile,
    EnableProfile,
    DisableProfile,
    TagResource,
    UntagResource,
    ListTagsForResource,
}

impl Op {
    pub(crate) fn name(self) -> String {
        format!("{self:?}")
    }
}

/// The operation (and path id) of a REST route, as in the service model.
pub(crate) fn route(method: &str, path: &str) -> Option<(Op, Option<String>)> {
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let id = |s: &str| query::unescape(s).unwrap_or_else(|| s.to_string());
    use Op::*;
    let op = match (method, segments.as_slice()) {
        ("POST", ["trustanchors"]) => (CreateTrustAnchor, None),
        ("GET", ["trustanchors"]) => (ListTrustAnchors, None),
        ("GET", ["trustanchor", i]) => (GetTrustAnchor, Some(id(i))),
        ("PATCH", ["trustanchor", i]) => (UpdateTrustAnchor, Some(id(i))),
        ("DELETE", ["trustanchor", i]) => (DeleteTrustAnchor, Some(id(i))),
        ("POST", ["trustanchor", i, "enable"]) => (EnableTrustAnchor, Some(id(i))),
        ("POST", ["trustanchor", i, "disable"]) => (DisableTrustAnchor, Some(id(i))),
        ("POST", ["profiles"]) => (CreateProfile, None),
        ("GET", ["profiles"]) => (ListProfiles, None),
        ("GET", ["profile", i]) => (GetProfile, Some(id(i))),
        ("PATCH", ["profile", i]) => (UpdateProfile, Some(id(i))),
        ("DELETE", ["profile", i]) => (DeleteProfile, Some(id(i))),
        ("POST", ["profile", i, "enable"]) => (EnableProfile, Some(id(i))),
        ("POST", ["profile", i, "disable"]) => (DisableProfile, Some(id(i))),
        ("POST", ["TagResource"]) => (TagResource, None),
        ("POST", ["UntagResource"]) => (UntagResource, None),
        ("GET", ["ListTagsForResource"]) => (ListTagsForResource, None),
        _ => return None,
    };
    Some(op)
}

/// Serves one control-plane call in `region`: (HTTP status, JSON body).
pub(crate) async fn handle(
    state: &State,
    region: &str,
    op: Op,
    id: Option<String>,
    query: &[(String, String)],
    body: &[u8],
) -> Result<(u16, Value), ApiError> {
    let body: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::serialization(format!("Request body is not valid JSON: {e}")))?
    };
    if !body.is_object() {
        return Err(ApiError::serialization("Request body must be a JSON object"));
    }
    let id = id.unwrap_or_default();
    use Op::*;
    match op {
        CreateTrustAnchor => create_trust_anchor(state, region, &body).await,
        UpdateTrustAnchor => update_trust_anchor(state, region, &id, &body).await,
        GetTrustAnchor | DeleteTrustAnchor | EnableTrustAnchor | DisableTrustAnchor => {
            check_id(&id, "trustAnchorId")?;
            let mut store = state.store.lock().expect("store lock");
            let anchor = store.anchor_mut(region, &id).ok_or_else(not_found)?;
            match op {
                EnableTrustAnchor | DisableTrustAnchor => {
                    anchor.enabled = op == EnableTrustAnchor;
                    anchor.updated_at = now();
                }
                _ => {}
            }
            let out = json!({"trustAnchor": anchor.to_json()});
            if op == DeleteTrustAnchor {
                let arn = anchor.arn.clone();
                store.anchors.retain(|a| a.arn != arn);
                store.tags.remove(&arn);
            }
            Ok((200, out))
        }
        ListTrustAnchors => {
            let store = state.store.lock().expect("store lock");
            let items: Vec<(u64, Value)> = store
                .anchors
                .iter()
                .filter(|a| a.region == region)
                .map(|a| (a.seq, a.to_json()))
                .collect();
            list_page(items, query, "trustAnchors")
        }
        CreateProfile => create_profile(state, region, &body),
        UpdateProfile => update_profile(state, region, &id, &body),
        GetProfile | DeleteProfile | EnableProfile | DisableProfile => {
            check_id(&id, "profileId")?;
            let mut store = state.store.lock().expect("store lock");
            let profile = store.profile_mut(region, &id).ok_or_else(not_found)?;
            match op {
                EnableProfile | DisableProfile => {
                    profile.enabled = op == EnableProfile;
                    profile.updated_at = now();
                }
                _ => {}
            }
            let out = json!({"profile": profile.to_json()});
            if op == DeleteProfile {
                let arn = profile.arn.clone();
                store.profiles.retain(|p| p.arn != arn);
                store.tags.remove(&arn);
            }
            Ok((200, out))
        }
        ListProfiles => {
            let store = state.store.lock().expect("store lock");
            let items: Vec<(u64, Value)> = store
                .profiles
                .iter()
                .filter(|p| p.region == region)
                .map(|p| (p.seq, p.to_json()))
                .collect();
            list_page(items, query, "profiles")
        }
        TagResource => tag_resource(state, &body),
        UntagResource => untag_resource(state, &body),
        ListTagsForResource => {
            let arn = query::get(query, "resourceArn").map(|a| json!(a));
            let mut v = Validator::default();
            let arn = v
                .required(&json!({"resourceArn": arn}), "resourceArn", "resourceArn")
                .and_then(|a| v.string(a, "resourceArn", 1, 1011, None));
            v.finish()?;
            let arn = arn.expect("validated");
            let store = state.store.lock().expect("store lock");
            if !store.resource_exists(&arn) {
                return Err(not_found());
            }
            let tags: Vec<Value> = store
                .tags
                .get(&arn)
                .into_iter()
                .flatten()
                .map(|(k, v)| json!({"key": k, "value": v}))
                .collect();
            Ok((200, json!({"tags": tags})))
        }
    }
}

fn not_found() -> ApiError {
    ApiError::not_found("Resource not found")
}

fn check_id(id: &str, field: &str) -> Result<(), ApiError> {
    let mut v = Validator::default();
    v.string(&json!(id), field, 36, 36, Some((ID_PATTERN, is_id)));
    v.finish()
}

/// The default page of a List call, when `pageSize` is not given.
const DEFAULT_PAGE_SIZE: usize = 50;

/// One page of `items` (ordered by creation) after `nextToken`.
fn list_page(
    mut items: Vec<(u64, Value)>,
    query: &[(String, String)],
    field: &str,
) -> Result<(u16, Value), ApiError> {
    let mut v = Validator::default();
    let page_size = match query::get(query, "pageSize") {
        None => DEFAULT_PAGE_SIZE,
        Some(s) => match s.parse::<i64>() {
            Ok(n) if n >= 1 => n as usize,
            _ => {
                v.fail(Some(s), "pageSize", "be a positive integer");
                0
            }
        },
    };
    let after = match query::get(query, "nextToken") {
        None => 0,
        Some(token) => match decode_token(token) {
            Some(seq) => seq,
            None => {
                v.fail(Some(token), "nextToken", "be a token from a previous response");
                0
            }
        },
    };
    v.finish()?;
    items.sort_by_key(|(seq, _)| *seq);
    let rest: Vec<(u64, Value)> = items.into_iter().filter(|(seq, _)| *seq > after).collect();
    let mut out = json!({});
    if rest.len() > page_size {
        out["nextToken"] = json!(encode_token(rest[page_size - 1].0));
    }
    out[field] = Value::Array(rest.into_iter().take(page_size).map(|(_, v)| v).collect());
    Ok((200, out))
}

/// Opaque to clients; here the sequence number of the last item returned.
fn encode_token(seq: u64) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("after:{seq}"))
}

fn decode_token(token: &str) -> Option<u64> {
    use base64::Engine as _;
    let raw = base64::engine::general_purpose::STANDARD.decode(token).ok()?;
    String::from_utf8(raw).ok()?.strip_prefix("after:")?.parse().ok()
}

fn arn(region: &str, kind: &str, id: &str) -> String {
    format!("arn:aws:rolesanywhere:{region}:{ACCOUNT}:{kind}/{id}")
}

/// An optional member that is present and not null.
fn opt<'a>(body: &'a Value, key: &str) -> Option<&'a Value> {
    body.get(key).filter(|v| !v.is_null())
}

// ---- trust anchors ---------------------------------------------------------

const SOURCE_TYPES: &[&str] = &["AWS_ACM_PCA", "CERTIFICATE_BUNDLE", "SELF_SIGNED_REPOSITORY"];
const EVENTS: &[&str] = &["CA_CERTIFICATE_EXPIRY", "END_ENTITY_CERTIFICATE_EXPIRY"];

fn parse_source(v: &mut Validator, source: &Value) -> Option<Source> {
    let source_type = v
        .required(source, "sourceType", "source.sourceType")
        .and_then(|t| v.one_of(t, "source.sourceType", SOURCE_TYPES));
    let data = v.required(source, "sourceData", "source.sourceData")?;
    let pem = opt(data, "x509CertificateData");
    let pca = opt(data, "acmPcaArn");
    let source_type = source_type?;
    match (source_type.as_str(), pem, pca) {
        ("AWS_ACM_PCA", None, Some(arn)) => v
            .string(arn, "source.sourceData.acmPcaArn", 1, 1011, None)
            .map(|arn| Source::AcmPca { arn }),
        (_, Some(pem), None) if source_type != "AWS_ACM_PCA" => v
            .string(pem, "source.sourceData.x509CertificateData", 1, 16000, None)
            .map(|pem| Source::Bundle { source_type, pem }),
        _ => {
            v.fail(
                Some(&data.to_string()),
                "source.sourceData",
                format!("hold exactly the member that sourceType {source_type} needs"),
            );
            None
        }
    }
}

/// The settings a new anchor gets, with the caller's overrides.
fn notification_settings(v: &mut Validator, given: Option<&Value>) -> Vec<Value> {
    let mut settings: Vec<Value> = EVENTS
        .iter()
        .map(|event| {
            json!({"enabled": true, "event": event, "threshold": 45, "channel": "ALL",
                   "configuredBy": "rolesanywhere.amazonaws.com"})
        })
        .collect();
    let Some(items) = given.and_then(|g| v.list(g, "notificationSettings", 50)) else {
        return settings;
    };
    for (i, item) in items.iter().enumerate() {
        let f = |m: &str| format!("notificationSettings.{}.member.{m}", i + 1);
        let enabled = v
            .required(item, "enabled", &f("enabled"))
            .and_then(|e| v.boolean(e, &f("enabled")));
        let event = v
            .required(item, "event", &f("event"))
            .and_then(|e| v.one_of(e, &f("event"), EVENTS));
        let threshold = opt(item, "threshold").and_then(|t| v.integer(t, &f("threshold"), 1, 360));
        if let Some(c) = opt(item, "channel") {
            v.one_of(c, &f("channel"), &["ALL"]);
        }
        if let (Some(enabled), Some(event)) = (enabled, event) {
            let s = settings
                .iter_mut()
                .find(|s| s["event"] == event.as_str())
                .expect("every event has a default");
            *s = json!({"enabled": enabled, "event": event, "channel": "ALL",
                        "threshold": threshold.unwrap_or(45)});
        }
    }
    settings
}

/// The CA certificate material must be usable: a PEM CA certificate, or a
/// private CA that exists and has its certificate.
async fn check_source(state: &State, source: &Source) -> Result<(), ApiError> {
    match source {
        Source::Bundle { pem, .. } => {
            let ders = crate::chain::pem_bundle_to_der(pem)
                .map_err(|e| ApiError::validation(format!("Invalid x509CertificateData: {e}")))?;
            for der in ders {
                let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parsed before");
                if !matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca) {
                    return Err(ApiError::validation(
                        "Invalid x509CertificateData: the certificate is not a CA certificate",
                    ));
                }
            }
            Ok(())
        }
        Source::AcmPca { arn } => match state.upstream.ca_certificate(arn).await {
            Ok(_) => Ok(()),
            Err(UpstreamError::Refused(why)) => Err(ApiError::validation(format!(
                "Unable to retrieve the CA certificate of {arn}: {why}"
            ))),
            Err(UpstreamError::Broken(why)) => Err(ApiError::internal(why)),
        },
    }
}

async fn create_trust_anchor(state: &State, region: &str, body: &Value) -> Result<(u16, Value), ApiError> {
    let mut v = Validator::default();
    let name = v
        .required(body, "name", "name")
        .and_then(|n| v.string(n, "name", 1, 255, Some((NAME_PATTERN, is_name))));
    let source = v
        .required(body, "source", "source")
        .and_then(|s| parse_source(&mut v, s));
    // Undocumented default: we say disabled, so a client that forgets to
    // send `enabled` finds out here rather than in production.
    let enabled = opt(body, "enabled").and_then(|e| v.boolean(e, "enabled"));
    let tags = opt(body, "tags").and_then(|t| tags(&mut v, t, "tags"));
    let notifications = notification_settings(&mut v, opt(body, "notificationSettings"));
    v.finish()?;
    let (name, source, tags) = (
        name.expect("validated"),
        source.expect("validated"),
        tags.unwrap_or_default(),
    );
    if tags.len() > MAX_TAGS {
        return Err(ApiError::too_many_tags("Too many tags"));
    }
    check_source(state, &source).await?;

    let id = crate::ids::uuid_v4();
    let t = now();
    let mut store = state.store.lock().expect("store lock");
    let anchor = TrustAnchor {
        arn: arn(region, "trust-anchor", &id),
        id,
        region: region.to_string(),
        name,
        source,
        enabled: enabled.unwrap_or(false),
        notification_settings: notifications,
        created_at: t,
        updated_at: t,
        seq: store.next_seq(),
    };
    if !tags.is_empty() {
        store.tags.insert(anchor.arn.clone(), tags);
    }
    let out = json!({"trustAnchor": anchor.to_json()});
    store.anchors.push(anchor);
    Ok((201, out))
}

async fn update_trust_anchor(
    state: &State,
    region: &str,
    id: &str,
    body: &Value,
) -> Result<(u16, Value), ApiError> {
    check_id(id, "trustAnchorId")?;
    let mut v = Validator::default();
    let name = opt(body, "name").and_then(|n| v.string(n, "name", 1, 255, Some((NAME_PATTERN, is_name))));
    let source = opt(body, "source").and_then(|s| parse_source(&mut v, s));
    v.finish()?;
    if state
        .store
        .lock()
        .expect("store lock")
        .anchor_mut(region, id)
        .is_none()
    {
        return Err(not_found());
    }
    if let Some(source) = &source {
        check_source(state, source).await?;
    }
    let mut store = state.store.lock().expect("store lock");
    let anchor = store.anchor_mut(region, id).ok_or_else(not_found)?;
    if let Some(name) = name {
        anchor.name = name;
    }
    if let Some(source) = source {
        anchor.source = source;
    }
    anchor.updated_at = now();
    Ok((200, json!({"trustAnchor": anchor.to_json()})))
}

// ---- profiles --------------------------------------------------------------

/// The profile fields CreateProfile and UpdateProfile share.
#[derive(Default)]
struct ProfileFields {
    name: Option<String>,
    role_arns: Option<Vec<String>>,
    managed_policy_arns: Option<Vec<String>>,
    session_policy: Option<String>,
    duration_seconds: Option<i64>,
    accept_role_session_name: Option<bool>,
}

fn profile_fields(v: &mut Validator, body: &Value, creating: bool) -> ProfileFields {
    let name = if creating {
        v.required(body, "name", "name")
    } else {
        opt(body, "name")
    }
    .and_then(|n| v.string(n, "name", 1, 255, Some((NAME_PATTERN, is_name))));
    let role_arns = if creating {
        v.required(body, "roleArns", "roleArns")
    } else {
        opt(body, "roleArns")
    }
    .and_then(|r| v.list(r, "roleArns", 250))
    .map(|items| {
        items
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                v.string(
                    r,
                    &format!("roleArns.{}.member", i + 1),
                    1,
                    1011,
                    Some((ROLE_ARN_PATTERN, is_role_arn)),
                )
            })
            .collect()
    });
    let managed_policy_arns = opt(body, "managedPolicyArns")
        .and_then(|m| v.list(m, "managedPolicyArns", 50))
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, m)| {
                    v.string(m, &format!("managedPolicyArns.{}.member", i + 1), 1, 1011, None)
                })
                .collect()
        });
    let session_policy = opt(body, "sessionPolicy")
        .and_then(|p| v.string(p, "sessionPolicy", 0, 100_000, None))
        .filter(|p| {
            let ok = serde_json::from_str::<Value>(p).is_ok_and(|j| j.is_object());
            if !ok {
                v.fail(Some(p), "sessionPolicy", "be a JSON policy document");
            }
            ok
        });
    let duration_seconds =
        opt(body, "durationSeconds").and_then(|d| v.integer(d, "durationSeconds", 900, 43200));
    let accept_role_session_name =
        opt(body, "acceptRoleSessionName").and_then(|a| v.boolean(a, "acceptRoleSessionName"));
    ProfileFields {
        name,
        role_arns,
        managed_policy_arns,
        session_policy,
        duration_seconds,
        accept_role_session_name,
    }
}

fn create_profile(state: &State, region: &str, body: &Value) -> Result<(u16, Value), ApiError> {
    let mut v = Validator::default();
    let fields = profile_fields(&mut v, body, true);
    let enabled = opt(body, "enabled").and_then(|e| v.boolean(e, "enabled"));
    let require_instance_properties =
        opt(body, "requireInstanceProperties").and_then(|r| v.boolean(r, "requireInstanceProperties"));
    let tags = opt(body, "tags")
        .and_then(|t| tags(&mut v, t, "tags"))
        .unwrap_or_default();
    v.finish()?;
    if tags.len() > MAX_TAGS {
        return Err(ApiError::too_many_tags("Too many tags"));
    }
    let id = crate::ids::uuid_v4();
    let t = now();
    let mut store = state.store.lock().expect("store lock");
    let profile = Profile {
        arn: arn(region, "profile", &id),
        id,
        region: region.to_string(),
        name: fields.name.expect("validated"),
        // Undocumented default, as for trust anchors.
        enabled: enabled.unwrap_or(false),
        created_by: format!("arn:aws:iam::{ACCOUNT}:root"),
        session_policy: fields.session_policy,
        role_arns: fields.role_arns.expect("validated"),
        managed_policy_arns: fields.managed_policy_arns.unwrap_or_default(),
        duration_seconds: fields.duration_seconds.unwrap_or(3600),
        accept_role_session_name: fields.accept_role_session_name.unwrap_or(false),
        require_instance_properties: require_instance_properties.unwrap_or(false),
        created_at: t,
        updated_at: t,
        seq: store.next_seq(),
    };
    if !tags.is_empty() {
        store.tags.insert(profile.arn.clone(), tags);
    }
    let out = json!({"profile": profile.to_json()});
    store.profiles.push(profile);
    Ok((201, out))
}

fn update_profile(state: &State, region: &str, id: &str, body: &Value) -> Result<(u16, Value), ApiError> {
    check_id(id, "profileId")?;
    let mut v = Validator::default();
    let f = profile_fields(&mut v, body, false);
    v.finish()?;
    let mut store = state.store.lock().expect("store lock");
    let p = store.profile_mut(region, id).ok_or_else(not_found)?;
    if let Some(x) = f.name {
        p.name = x;
    }
    if let Some(x) = f.role_arns {
        p.role_arns = x;
    }
    if let Some(x) = f.managed_policy_arns {
        p.managed_policy_arns = x;
    }
    if let Some(x) = f.session_policy {
        p.session_policy = Some(x);
    }
    if let Some(x) = f.duration_seconds {
        p.duration_seconds = x;
    }
    if let Some(x) = f.accept_role_session_name {
        p.accept_role_session_name = x;
    }
    p.updated_at = now();
    Ok((200, json!({"profile": p.to_json()})))
}

// ---- tags ------------------------------------------------------------------

/// Tags per resource (the service quota).
const MAX_TAGS: usize = 50;

fn resource_arn(v: &mut Validator, body: &Value) -> Option<String> {
    v.required(body, "resourceArn", "resourceArn")
        .and_then(|a| v.string(a, "resourceArn", 1, 1011, None))
}

fn tag_resource(state: &State, body: &Value) -> Result<(u16, Value), ApiError> {
    let mut v = Validator::default();
    let arn = resource_arn(&mut v, body);
    let new = v
        .required(body, "tags", "tags")
        .and_then(|t| tags(&mut v, t, "tags"));
    v.finish()?;
    let (arn, new) = (arn.expect("validated"), new.expect("validated"));
    let mut store = state.store.lock().expect("store lock");
    if !store.resource_exists(&arn) {
        return Err(not_found());
    }
    let mut merged = store.tags.get(&arn).cloned().unwrap_or_default();
    for (k, val) in new {
        match merged.iter_mut().find(|(mk, _)| *mk == k) {
            Some(existing) => existing.1 = val,
            None => merged.push((k, val)),
        }
    }
    if merged.len() > MAX_TAGS {
        return Err(ApiError::too_many_tags(format!(
            "A resource can have at most {MAX_TAGS} tags"
        )));
    }
    store.tags.insert(arn, merged);
    Ok((201, json!({})))
}

fn untag_resource(state: &State, body: &Value) -> Result<(u16, Value), ApiError> {
    let mut v = Validator::default();
    let arn = resource_arn(&mut v, body);
    let keys: Option<Vec<String>> = v
        .required(body, "tagKeys", "tagKeys")
        .and_then(|k| v.list(k, "tagKeys", 200))
        .map(|items| {
            items
                .iter()
                .enumerate()
                .filter_map(|(i, k)| v.string(k, &format!("tagKeys.{}.member", i + 1), 1, 128, None))
                .collect()
        });
    v.finish()?;
    let (arn, keys) = (arn.expect("validated"), keys.expect("validated"));
    let mut store = state.store.lock().expect("store lock");
    if !store.resource_exists(&arn) {
        return Err(not_found());
    }
    if let Some(tags) = store.tags.get_mut(&arn) {
        tags.retain(|(k, _)| !keys.contains(k));
    }
    Ok((200, json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let id = "0b0f9b0c-1f2e-4d3c-8b4a-5e6f7a8b9c0d";
        assert_eq!(
            route("POST", "/trustanchors"),
            Some((Op::CreateTrustAnchor, None))
        );
        assert_eq!(
            route("POST", &format!("/trustanchor/{id}/disable")),
            Some((Op::DisableTrustAnchor, Some(id.into())))
        );
        assert_eq!(
            route("PATCH", &format!("/profile/{id}")),
            Some((Op::UpdateProfile, Some(id.into())))
        );
        assert_eq!(
            route("GET", "/ListTagsForResource"),
            Some((Op::ListTagsForResource, None))
        );
        assert_eq!(route("PUT", "/profiles"), None);
        assert_eq!(Op::ListTagsForResource.name(), "ListTagsForResource");
    }

    #[test]
    fn page_tokens_round_trip_and_reject_garbage() {
        assert_eq!(decode_token(&encode_token(42)), Some(42));
        assert_eq!(decode_token("garbage!"), None);
        let items: Vec<(u64, Value)> = (1..=5).map(|i| (i, json!(i))).collect();
        let q = vec![("pageSize".to_string(), "2".to_string())];
        let (_, page) = list_page(items.clone(), &q, "x").unwrap();
        assert_eq!(page["x"], json!([1, 2]));
        let token = page["nextToken"].as_str().unwrap().to_string();
        let q = vec![("pageSize".into(), "3".into()), ("nextToken".into(), token)];
        let (_, page) = list_page(items.clone(), &q, "x").unwrap();
        assert_eq!(page["x"], json!([3, 4, 5]));
        assert!(page.get("nextToken").is_none());
        let q = vec![("pageSize".to_string(), "0".to_string())];
        assert_eq!(list_page(items, &q, "x").unwrap_err().kind, "ValidationException");
    }
}
