//! The IAM roles edgectl makes (the devices' role, the servers' role): found
//! by their fixed name, and refused unless they carry our tag.

use super::Ctx;
use crate::aws::{code, SdkResultExt, TAG_KEY};
use crate::plan::{Action, Change, Value};
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

/// What a component wants of its role, for [`plan`].
pub struct Want<'a> {
    /// Addresses of the role and of its inline policy in the plan.
    pub address: &'a str,
    pub policy_address: &'a str,
    pub name: &'a str,
    /// Who may assume it, as shown on create (and on update when
    /// `show_trust_on_update`).
    pub trusts: Value,
    pub show_trust_on_update: bool,
    /// The trust policy; `None` while it depends on something not created yet.
    pub trust: Option<&'a Json>,
    /// The inline policy; `None` when nothing is granted inline.
    pub policy: Option<&'a Json>,
    pub managed: &'a [String],
    /// Why a managed policy is attached, and why one is detached.
    pub attach_reason: &'a str,
    pub detach_reason: &'a str,
}

/// One change to a role; each component maps it onto its own `Op`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Create,
    SetTrust,
    PutPolicy,
    DeletePolicy,
    Attach(String),
    Detach(String),
}

/// The changes that make the observed role (if any) the wanted one.
pub fn plan(want: &Want, have: Option<&Role>) -> Vec<(Change, Step)> {
    let attachment = |arn: &str| format!("{}/attachment:{arn}", want.address);
    let mut steps = Vec::new();
    let Some(r) = have else {
        steps.push((
            Change::new(want.address, Action::Create, "missing")
                .field("name", None, Value::known(want.name))
                .field("trusts", None, want.trusts.clone()),
            Step::Create,
        ));
        if want.policy.is_some() {
            steps.push((
                Change::new(want.policy_address, Action::Create, "missing"),
                Step::PutPolicy,
            ));
        }
        for arn in want.managed {
            steps.push((
                Change::new(attachment(arn), Action::Create, want.attach_reason),
                Step::Attach(arn.clone()),
            ));
        }
        return steps;
    };
    if want.trust != Some(&r.trust) {
        let mut change = Change::new(want.address, Action::Update, "trust policy differs");
        if want.show_trust_on_update {
            change = change.field("trusts", None, want.trusts.clone());
        }
        steps.push((change, Step::SetTrust));
    }
    match (want.policy, &r.inline) {
        (Some(w), Some(h)) if w == h => {}
        (Some(_), Some(_)) => steps.push((
            Change::new(want.policy_address, Action::Update, "permissions differ"),
            Step::PutPolicy,
        )),
        (Some(_), None) => steps.push((
            Change::new(want.policy_address, Action::Create, "missing"),
            Step::PutPolicy,
        )),
        (None, Some(_)) => steps.push((
            Change::new(
                want.policy_address,
                Action::Delete,
                "no inline permissions configured",
            ),
            Step::DeletePolicy,
        )),
        (None, None) => {}
    }
    for arn in want.managed.iter().filter(|a| !r.attached.contains(a)) {
        steps.push((
            Change::new(attachment(arn), Action::Create, want.attach_reason),
            Step::Attach(arn.clone()),
        ));
    }
    for arn in r.attached.iter().filter(|a| !want.managed.contains(a)) {
        steps.push((
            Change::new(attachment(arn), Action::Delete, want.detach_reason),
            Step::Detach(arn.clone()),
        ));
    }
    steps
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

    #[test]
    fn role_plan_cases() {
        let trust = serde_json::json!({"t": 1});
        let policy = serde_json::json!({"p": 1});
        let managed = vec!["arn:aws:iam::aws:policy/A".to_string()];
        let want = Want {
            address: "iam/r",
            policy_address: "iam/r-policy",
            name: "r",
            trusts: Value::known("x"),
            show_trust_on_update: true,
            trust: Some(&trust),
            policy: Some(&policy),
            managed: &managed,
            attach_reason: "configured",
            detach_reason: "not configured",
        };
        let steps = |have: Option<&Role>, want: &Want| {
            plan(want, have).into_iter().map(|(_, s)| s).collect::<Vec<_>>()
        };
        assert_eq!(
            steps(None, &want),
            [Step::Create, Step::PutPolicy, Step::Attach(managed[0].clone())]
        );
        let same = Role {
            arn: "a".into(),
            trust: trust.clone(),
            inline: Some(policy.clone()),
            attached: managed.clone(),
        };
        assert!(steps(Some(&same), &want).is_empty());
        let drifted = Role {
            trust: serde_json::json!({}),
            inline: Some(serde_json::json!({})),
            attached: vec!["arn:aws:iam::aws:policy/B".into()],
            ..same.clone()
        };
        assert_eq!(
            steps(Some(&drifted), &want),
            [
                Step::SetTrust,
                Step::PutPolicy,
                Step::Attach(managed[0].clone()),
                Step::Detach("arn:aws:iam::aws:policy/B".into())
            ]
        );
        let none = Want {
            policy: None,
            trust: None,
            ..want
        };
        assert_eq!(steps(Some(&same), &none), [Step::SetTrust, Step::DeletePolicy]);
    }
}
