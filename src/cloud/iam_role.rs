//! The IAM roles edgectl makes (the devices' role, the servers' role): found
//! by their fixed name, and refused unless they carry our tag.

use super::Ctx;
use crate::aws::{code, SdkResultExt, TAG_KEY};
use anyhow::{bail, Context, Result};
use serde_json::Value as Json;

#[derive(Debug, Clone, PartialEq)]
pub struct Role {
    pub arn: String,
    pub trust: Json,
    /// The one inline policy edgectl writes, if present.
    pub inline: Option<Json>,
    pub attached: Vec<String>,
}

pub async fn observe(ctx: &Ctx, name: &str, inline_policy: &str) -> Result<Option<Role>> {
    let client = aws_sdk_iam::Client::new(&ctx.aws.config);
    let role = match client.get_role().role_name(name).send().await {
        Ok(out) => out.role.context("GetRole returned no role")?,
        Err(e) if code(&e) == Some("NoSuchEntity") => return Ok(None),
        Err(e) => return Err(e).op(|| format!("reading IAM role {name}")),
    };
    let tags = client
        .list_role_tags()
        .role_name(name)
        .send()
        .await
        .op(|| format!("reading the tags of IAM role {name}"))?;
    if !tags
        .tags
        .iter()
        .any(|t| t.key == TAG_KEY && t.value == ctx.deployment)
    {
        bail!(crate::error::User::new(
            format!("IAM role {name} exists but is not tagged {TAG_KEY}={}", ctx.deployment),
            "edgectl does not adopt resources it did not create; rename or delete that role, or pick another `--deployment`"
        ));
    }
    let trust = decode_policy(role.assume_role_policy_document().unwrap_or("{}"))?;
    let names = client
        .list_role_policies()
        .role_name(name)
        .send()
        .await
        .op(|| format!("listing inline policies of {name}"))?
        .policy_names;
    let inline = if names.iter().any(|n| n == inline_policy) {
        let doc = client
            .get_role_policy()
            .role_name(name)
            .policy_name(inline_policy)
            .send()
            .await
            .op(|| format!("reading policy {inline_policy} of {name}"))?
            .policy_document;
        Some(decode_policy(&doc)?)
    } else {
        None
    };
    let attached = client
        .list_attached_role_policies()
        .role_name(name)
        .send()
        .await
        .op(|| format!("listing managed policies of {name}"))?
        .attached_policies
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| p.policy_arn)
        .collect();
    Ok(Some(Role {
        arn: role.arn,
        trust,
        inline,
        attached,
    }))
}

/// IAM returns policy documents URL-encoded (RFC 3986); moto sometimes not.
pub fn decode_policy(doc: &str) -> Result<Json> {
    let text = if doc.trim_start().starts_with('{') {
        doc.to_string()
    } else {
        percent_decode(doc)?
    };
    serde_json::from_str(&text).with_context(|| format!("policy document is not JSON: {text}"))
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = bytes
                    .get(i + 1..i + 3)
                    .context("truncated %-escape in policy document")?;
                let hex = std::str::from_utf8(hex)?;
                out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad escape %{hex}"))?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    Ok(String::from_utf8(out)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_decode_url_encoded_or_plain() {
        let plain = r#"{"Version":"2012-10-17"}"#;
        assert_eq!(decode_policy(plain).unwrap()["Version"], "2012-10-17");
        let encoded = "%7B%22Version%22%3A%222012-10-17%22%7D";
        assert_eq!(decode_policy(encoded).unwrap()["Version"], "2012-10-17");
        assert!(decode_policy("%7B%2").is_err());
    }
}
