//! Nomad's ACL API types (`/v1/acl/...`), as far as edgectl uses them.
//! Deserialisation is lenient: every field defaults, unknown fields are
//! ignored and `null` reads as empty, so older and newer servers both parse.
//! Secrets (token SecretIDs, the OIDC client secret) are [`Secret`]s: sent
//! as they are, never shown.

use crate::secret::Secret;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;

fn nullable<'de, D: Deserializer<'de>, T: Default + Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn secret_in<'de, D: Deserializer<'de>>(d: D) -> Result<Secret, D::Error> {
    Ok(Secret::new(Option::<String>::deserialize(d)?.unwrap_or_default()))
}

fn secret_out<S: Serializer>(s: &Secret, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(s.expose())
}

/// `POST /v1/acl/bootstrap` body (Nomad ≥ 1.4).
#[derive(Serialize)]
pub struct BootstrapRequest<'a> {
    #[serde(rename = "BootstrapSecret", serialize_with = "secret_out")]
    pub bootstrap_secret: &'a Secret,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Token {
    #[serde(rename = "AccessorID", deserialize_with = "nullable")]
    pub accessor_id: String,
    #[serde(rename = "SecretID", deserialize_with = "secret_in")]
    pub secret_id: Secret,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub r#type: String,
    #[serde(deserialize_with = "nullable")]
    pub policies: Vec<String>,
    pub global: bool,
}

/// `GET /v1/acl/tokens` entries.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TokenStub {
    #[serde(rename = "AccessorID", deserialize_with = "nullable")]
    pub accessor_id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

/// `POST /v1/acl/token[/:accessor]` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TokenRequest {
    #[serde(rename = "AccessorID", skip_serializing_if = "String::is_empty")]
    pub accessor_id: String,
    pub name: String,
    pub r#type: String,
    pub policies: Vec<String>,
    pub global: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Policy {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub rules: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyLink {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Role {
    #[serde(
        rename = "ID",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub policies: Vec<PolicyLink>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindingRule {
    #[serde(
        rename = "ID",
        skip_serializing_if = "String::is_empty",
        deserialize_with = "nullable"
    )]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub description: String,
    #[serde(deserialize_with = "nullable")]
    pub auth_method: String,
    #[serde(deserialize_with = "nullable")]
    pub selector: String,
    #[serde(deserialize_with = "nullable")]
    pub bind_type: String,
    #[serde(deserialize_with = "nullable")]
    pub bind_name: String,
    /// Raft index of the rule's creation: the oldest of twins is kept.
    #[serde(skip_serializing)]
    pub create_index: u64,
}

/// `GET /v1/acl/binding-rules` entries (no selector or binding).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct BindingRuleStub {
    #[serde(rename = "ID", deserialize_with = "nullable")]
    pub id: String,
    #[serde(deserialize_with = "nullable")]
    pub auth_method: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct AuthMethod {
    #[serde(deserialize_with = "nullable")]
    pub name: String,
    #[serde(deserialize_with = "nullable")]
    pub r#type: String,
    #[serde(deserialize_with = "nullable")]
    pub token_locality: String,
    #[serde(rename = "MaxTokenTTL", deserialize_with = "nullable")]
    pub max_token_ttl: String,
    #[serde(deserialize_with = "nullable")]
    pub token_name_format: String,
    pub default: bool,
    #[serde(deserialize_with = "nullable")]
    pub config: AuthMethodConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct AuthMethodConfig {
    #[serde(rename = "OIDCDiscoveryURL", deserialize_with = "nullable")]
    pub oidc_discovery_url: String,
    #[serde(rename = "OIDCClientID", deserialize_with = "nullable")]
    pub oidc_client_id: String,
    #[serde(
        rename = "OIDCClientSecret",
        serialize_with = "secret_out",
        deserialize_with = "secret_in"
    )]
    pub oidc_client_secret: Secret,
    #[serde(rename = "OIDCScopes", deserialize_with = "nullable")]
    pub oidc_scopes: Vec<String>,
    #[serde(rename = "BoundAudiences", deserialize_with = "nullable")]
    pub bound_audiences: Vec<String>,
    #[serde(rename = "AllowedRedirectURIs", deserialize_with = "nullable")]
    pub allowed_redirect_uris: Vec<String>,
    #[serde(rename = "ClaimMappings", deserialize_with = "nullable")]
    pub claim_mappings: BTreeMap<String, String>,
    #[serde(rename = "ListClaimMappings", deserialize_with = "nullable")]
    pub list_claim_mappings: BTreeMap<String, String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenient_and_secret() {
        // Nulls, missing and unknown fields, as older or newer servers send.
        let t: Token = serde_json::from_str(
            r#"{"AccessorID":"a","SecretID":"s3cret","Name":"Bootstrap Token","Type":"management",
                "Policies":null,"Roles":null,"Global":true,"FutureField":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!((t.accessor_id.as_str(), t.secret_id.expose()), ("a", "s3cret"));
        assert!(t.policies.is_empty());
        assert!(!format!("{t:?}").contains("s3cret"));
        let m: AuthMethod = serde_json::from_str(r#"{"Name":"oidc-auth","Config":null}"#).unwrap();
        assert!(m.config.oidc_scopes.is_empty());
        let mut m = AuthMethod::default();
        m.config.oidc_client_secret = Secret::new("cs");
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""OIDCClientSecret":"cs""#), "{json}");
        assert!(!format!("{m:?}").contains("\"cs\""));
        let b = serde_json::to_string(&BootstrapRequest {
            bootstrap_secret: &Secret::new("u"),
        })
        .unwrap();
        assert_eq!(b, r#"{"BootstrapSecret":"u"}"#);
    }
}
