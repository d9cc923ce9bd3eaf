//! The in-memory Roles Anywhere resources (one simulator = one account,
//! any number of regions), and their JSON shapes (TrustAnchorDetail,
//! ProfileDetail) as the service returns them.

use std::collections::HashMap;

use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// What a trust anchor trusts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `CERTIFICATE_BUNDLE` (or `SELF_SIGNED_REPOSITORY`): PEM in the anchor.
    Bundle { source_type: String, pem: String },
    /// `AWS_ACM_PCA`: the CA certificate is read from ACM PCA when needed.
    AcmPca { arn: String },
}

impl Source {
    fn to_json(&self) -> Value {
        match self {
            Source::Bundle { source_type, pem } => json!({
                "sourceType": source_type,
                "sourceData": {"x509CertificateData": pem},
            }),
            Source::AcmPca { arn } => json!({
                "sourceType": "AWS_ACM_PCA",
                "sourceData": {"acmPcaArn": arn},
            }),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct TrustAnchor {
    pub id: String,
    pub arn: String,
    pub region: String,
    pub name: String,
    pub source: Source,
    pub enabled: bool,
    pub notification_settings: Vec<Value>,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    /// Creation order, for stable pagination.
    pub seq: u64,
}

impl TrustAnchor {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "trustAnchorId": self.id,
            "trustAnchorArn": self.arn,
            "name": self.name,
            "source": self.source.to_json(),
            "enabled": self.enabled,
            "notificationSettings": self.notification_settings,
            "createdAt": timestamp(self.created_at),
            "updatedAt": timestamp(self.updated_at),
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub id: String,
    pub arn: String,
    pub region: String,
    pub name: String,
    pub enabled: bool,
    pub created_by: String,
    pub session_policy: Option<String>,
    pub role_arns: Vec<String>,
    pub managed_policy_arns: Vec<String>,
    pub duration_seconds: i64,
    pub accept_role_session_name: bool,
    pub require_instance_properties: bool,
    pub created_at: OffsetDateTime,
    pub updated_at: OffsetDateTime,
    pub seq: u64,
}

impl Profile {
    pub(crate) fn to_json(&self) -> Value {
        let mut v = json!({
            "profileId": self.id,
            "profileArn": self.arn,
            "name": self.name,
            "enabled": self.enabled,
            "createdBy": self.created_by,
            "roleArns": self.role_arns,
            "managedPolicyArns": self.managed_policy_arns,
            "durationSeconds": self.duration_seconds,
            "acceptRoleSessionName": self.accept_role_session_name,
            "requireInstanceProperties": self.require_instance_properties,
            // The mappings AWS gives every new profile.
            "attributeMappings": [
                {"certificateField": "x509Subject", "mappingRules": [{"specifier": "*"}]},
                {"certificateField": "x509Issuer", "mappingRules": [{"specifier": "*"}]},
                {"certificateField": "x509SAN", "mappingRules": [
                    {"specifier": "DNS"}, {"specifier": "URI"}, {"specifier": "Name"}
                ]},
            ],
            "createdAt": timestamp(self.created_at),
            "updatedAt": timestamp(self.updated_at),
        });
        if let Some(p) = &self.session_policy {
            v["sessionPolicy"] = json!(p);
        }
        v
    }
}

/// ISO 8601 with microseconds, as the service prints them (the SDKs parse
/// these as `date-time`).
pub(crate) fn timestamp(t: OffsetDateTime) -> String {
    let t = t
        .replace_nanosecond(t.nanosecond() / 1000 * 1000)
        .expect("a truncated nanosecond is in range");
    t.format(&Rfc3339).expect("UTC times format as RFC 3339")
}

/// Now, in UTC.
pub(crate) fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[derive(Default)]
pub(crate) struct Store {
    pub anchors: Vec<TrustAnchor>,
    pub profiles: Vec<Profile>,
    /// Resource ARN → tags, in the order they were added.
    pub tags: HashMap<String, Vec<(String, String)>>,
    /// Certificate (issuer DER + serial) → subject id, so the same
    /// certificate always maps to the same `subjectArn`.
    pub subjects: HashMap<(Vec<u8>, String), String>,
    next_seq: u64,
}

impl Store {
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    pub(crate) fn anchor_mut(&mut self, region: &str, id: &str) -> Option<&mut TrustAnchor> {
        self.anchors.iter_mut().find(|a| a.region == region && a.id == id)
    }

    pub(crate) fn profile_mut(&mut self, region: &str, id: &str) -> Option<&mut Profile> {
        self.profiles
            .iter_mut()
            .find(|p| p.region == region && p.id == id)
    }

    pub(crate) fn anchor_by_arn(&self, arn: &str) -> Option<TrustAnchor> {
        self.anchors.iter().find(|a| a.arn == arn).cloned()
    }

    pub(crate) fn profile_by_arn(&self, arn: &str) -> Option<Profile> {
        self.profiles.iter().find(|p| p.arn == arn).cloned()
    }

    /// Whether a taggable resource (anchor or profile) with this ARN exists.
    pub(crate) fn resource_exists(&self, arn: &str) -> bool {
        self.anchors.iter().any(|a| a.arn == arn) || self.profiles.iter().any(|p| p.arn == arn)
    }

    /// The subject id for a certificate, made on first sight.
    pub(crate) fn subject_id(&mut self, issuer_der: &[u8], serial: &str) -> String {
        self.subjects
            .entry((issuer_der.to_vec(), serial.to_string()))
            .or_insert_with(crate::ids::uuid_v4)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339_utc_with_microseconds() {
        let t = OffsetDateTime::from_unix_timestamp_nanos(1_767_225_600_123_456_789).unwrap();
        assert_eq!(timestamp(t), "2026-01-01T00:00:00.123456Z");
    }
}
