//! Does a role's trust policy let Roles Anywhere assume it for this trust
//! anchor? (User guide, "trust model": the service principal
//! `rolesanywhere.amazonaws.com` needs `sts:AssumeRole`, `sts:TagSession`
//! and `sts:SetSourceIdentity`.)
//!
//! A small IAM evaluator: Allow/Deny statements, `Principal` (Service or
//! `*`), `Action`/`NotAction` with wildcards, and the condition operators
//! String*/Arn* (with `IfExists`) on `aws:SourceArn`, `aws:SourceAccount`
//! and `aws:PrincipalTag/…`. A statement with an operator or key it does
//! not know never applies — an Allow then grants nothing (fail closed).

use serde_json::Value;

use crate::query;

pub const SERVICE_PRINCIPAL: &str = "rolesanywhere.amazonaws.com";
pub const REQUIRED_ACTIONS: [&str; 3] = ["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"];

/// What the request brings to condition keys.
pub struct RequestContext<'a> {
    /// The trust anchor's ARN.
    pub source_arn: &'a str,
    pub source_account: &'a str,
    /// `x509Subject/CN` → value, ... (without the `aws:PrincipalTag/` prefix).
    pub principal_tags: &'a [(String, String)],
}

/// The policy document as IAM returns it: JSON, or (real AWS's GetRole)
/// URL-encoded JSON.
pub fn parse_document(doc: &str) -> Result<Value, String> {
    if let Ok(v) = serde_json::from_str(doc) {
        return Ok(v);
    }
    let decoded = query::percent_decode(doc).ok_or("the trust policy is not JSON")?;
    serde_json::from_str(&decoded).map_err(|e| format!("the trust policy is not JSON: {e}"))
}

/// Ok when every required action is allowed and none denied.
pub fn check(policy: &Value, ctx: &RequestContext) -> Result<(), String> {
    let statements: Vec<&Value> = match policy.get("Statement") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        _ => return Err("the trust policy has no Statement".into()),
    };
    for action in REQUIRED_ACTIONS {
        let applies = |effect: &str| {
            statements.iter().any(|s| {
                s.get("Effect").and_then(Value::as_str) == Some(effect)
                    && principal_matches(s)
                    && action_matches(s, action)
                    && conditions_hold(s.get("Condition"), ctx)
            })
        };
        if applies("Deny") || !applies("Allow") {
            return Err(format!(
                "the role's trust policy does not allow {SERVICE_PRINCIPAL} to perform {action} for {}",
                ctx.source_arn
            ));
        }
    }
    Ok(())
}

fn strings(v: Option<&Value>) -> Vec<&str> {
    match v {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    }
}

fn principal_matches(statement: &Value) -> bool {
    match statement.get("Principal") {
        Some(Value::String(s)) => s == "*",
        Some(p @ Value::Object(_)) => {
            strings(p.get("Service")).contains(&SERVICE_PRINCIPAL) || strings(p.get("AWS")).contains(&"*")
        }
        _ => false,
    }
}

fn action_matches(statement: &Value, action: &str) -> bool {
    let hit = |patterns: Vec<&str>| {
        patterns
            .iter()
            .any(|p| wildcard(&p.to_ascii_lowercase(), &action.to_ascii_lowercase()))
    };
    if let Some(a) = statement.get("Action") {
        hit(strings(Some(a)))
    } else if let Some(na) = statement.get("NotAction") {
        !hit(strings(Some(na)))
    } else {
        false
    }
}

fn context_value(key: &str, ctx: &RequestContext) -> Option<Vec<String>> {
    let lower = key.to_ascii_lowercase();
    if lower == "aws:sourcearn" {
        Some(vec![ctx.source_arn.to_string()])
    } else if lower == "aws:sourceaccount" {
        Some(vec![ctx.source_account.to_string()])
    } else if let Some(tag) = lower.strip_prefix("aws:principaltag/") {
        let values: Vec<String> = ctx
            .principal_tags
            .iter()
            .filter(|(k, _)| k.to_ascii_lowercase() == tag)
            .map(|(_, v)| v.clone())
            .collect();
        Some(values)
    } else {
        None
    }
}

/// Every operator block, and every key in it, must hold.
fn conditions_hold(condition: Option<&Value>, ctx: &RequestContext) -> bool {
    let Some(condition) = condition else {
        return true;
    };
    let Some(blocks) = condition.as_object() else {
        return false;
    };
    blocks.iter().all(|(operator, keys)| {
        let Some(keys) = keys.as_object() else {
            return false;
        };
        let (op, if_exists) = match operator.strip_suffix("IfExists") {
            Some(op) => (op, true),
            None => (operator.as_str(), false),
        };
        keys.iter().all(|(key, expected)| {
            let expected = strings(Some(expected));
            let Some(actual) = context_value(key, ctx) else {
                return false; // a key we cannot evaluate
            };
            if actual.is_empty() {
                // Missing key: IfExists and the negated operators hold.
                return if_exists || op.contains("Not");
            }
            let any =
                |f: &dyn Fn(&str, &str) -> bool| actual.iter().any(|a| expected.iter().any(|e| f(e, a)));
            match op {
                "StringEquals" | "ArnEquals" => any(&|e, a| e == a),
                "StringNotEquals" | "ArnNotEquals" => !any(&|e, a| e == a),
                "StringEqualsIgnoreCase" => any(&|e, a| e.eq_ignore_ascii_case(a)),
                "StringNotEqualsIgnoreCase" => !any(&|e, a| e.eq_ignore_ascii_case(a)),
                "StringLike" | "ArnLike" => any(&wildcard),
                "StringNotLike" | "ArnNotLike" => !any(&wildcard),
                _ => false,
            }
        })
    })
}

/// IAM wildcards: `*` any run, `?` one character.
fn wildcard(pattern: &str, text: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pattern.chars().collect(), text.chars().collect());
    let (mut pi, mut ti, mut star, mut mark) = (0, 0, None, 0);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ANCHOR: &str =
        "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/11111111-2222-4333-8444-555555555555";

    fn ctx() -> RequestContext<'static> {
        static TAGS: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
        RequestContext {
            source_arn: ANCHOR,
            source_account: "123456789012",
            principal_tags: TAGS.get_or_init(|| vec![("x509Subject/CN".into(), "pi-01".into())]),
        }
    }

    fn policy(actions: Value, condition: Option<Value>) -> Value {
        let mut s = json!({
            "Effect": "Allow",
            "Principal": {"Service": SERVICE_PRINCIPAL},
            "Action": actions,
        });
        if let Some(c) = condition {
            s["Condition"] = c;
        }
        json!({"Version": "2012-10-17", "Statement": [s]})
    }

    fn all_actions() -> Value {
        json!(["sts:AssumeRole", "sts:TagSession", "sts:SetSourceIdentity"])
    }

    #[test]
    fn the_edgectl_policy_is_accepted() {
        let p = policy(
            all_actions(),
            Some(json!({"ArnEquals": {"aws:SourceArn": ANCHOR}})),
        );
        assert_eq!(check(&p, &ctx()), Ok(()));
    }

    #[test]
    fn a_missing_action_is_refused() {
        let p = policy(json!(["sts:AssumeRole", "sts:TagSession"]), None);
        let err = check(&p, &ctx()).unwrap_err();
        assert!(err.contains("sts:SetSourceIdentity"), "{err}");
    }

    #[test]
    fn another_anchor_is_refused_and_arn_like_matches_wildcards() {
        let other = ANCHOR.replace("1111", "9999");
        let p = policy(
            all_actions(),
            Some(json!({"ArnEquals": {"aws:SourceArn": other}})),
        );
        assert!(check(&p, &ctx()).is_err());
        let p = policy(
            all_actions(),
            Some(
                json!({"ArnLike": {"aws:SourceArn": "arn:aws:rolesanywhere:eu-west-1:123456789012:trust-anchor/*"}}),
            ),
        );
        assert_eq!(check(&p, &ctx()), Ok(()));
        let p = policy(
            all_actions(),
            Some(json!({"ArnLike": {"aws:SourceArn": "arn:aws:rolesanywhere:us-east-1:*"}})),
        );
        assert!(check(&p, &ctx()).is_err());
    }

    #[test]
    fn wrong_principal_deny_and_unknown_keys_are_refused() {
        let mut p = policy(all_actions(), None);
        p["Statement"][0]["Principal"] = json!({"Service": "ec2.amazonaws.com"});
        assert!(check(&p, &ctx()).is_err());

        let mut p = policy(all_actions(), None);
        p["Statement"]
            .as_array_mut()
            .unwrap()
            .push(json!({"Effect": "Deny", "Principal": "*", "Action": "sts:TagSession"}));
        assert!(check(&p, &ctx()).is_err());

        let p = policy(
            all_actions(),
            Some(json!({"StringEquals": {"aws:SomethingElse": "x"}})),
        );
        assert!(check(&p, &ctx()).is_err());
    }

    #[test]
    fn wildcard_actions_and_principal_tags() {
        let p = policy(
            json!("sts:*"),
            Some(json!({"StringEquals": {"aws:PrincipalTag/x509Subject/CN": "pi-01"}})),
        );
        assert_eq!(check(&p, &ctx()), Ok(()));
        let p = policy(
            json!("sts:*"),
            Some(json!({"StringEquals": {"aws:PrincipalTag/x509Subject/CN": "pi-02"}})),
        );
        assert!(check(&p, &ctx()).is_err());
    }

    #[test]
    fn url_encoded_documents_as_real_iam_returns_them() {
        let p = policy(
            all_actions(),
            Some(json!({"ArnEquals": {"aws:SourceArn": ANCHOR}})),
        );
        let encoded: String = p
            .to_string()
            .bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        assert!(encoded.starts_with("%7B"));
        assert_eq!(parse_document(&encoded).unwrap(), p);
        assert_eq!(check(&parse_document(&encoded).unwrap(), &ctx()), Ok(()));
        assert!(parse_document("%7Bnot json").is_err());
    }

    #[test]
    fn wildcard_matching() {
        assert!(wildcard("a*c", "abbbc"));
        assert!(wildcard("a?c", "abc"));
        assert!(!wildcard("a?c", "abbc"));
        assert!(wildcard("*", ""));
        assert!(!wildcard("abc", "abcd"));
    }
}
