//! `deployment.json`: the same fields as the original sample, validated in
//! full before any AWS call. Every problem is one line naming its field.

use serde::Deserialize;
use serde_json::Value as Json;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
pub struct Deployment {
    pub cluster: Cluster,
    pub certificates: Certificates,
    pub authentication: Authentication,
    #[serde(default)]
    pub device_role: DeviceRole,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Cluster {
    pub datacenter_name: String,
    pub instance_count: u32,
    pub nomad_region: String,
    pub discovery_tag_key: String,
    pub discovery_tag_value: String,
    /// EC2 type of the Nomad servers; Graviton types (`t4g.medium`) get the
    /// arm64 image.
    #[serde(default = "default_instance_type")]
    pub instance_type: String,
    /// Nomad release the servers install; default: the version the tests run.
    #[serde(default = "default_nomad_version")]
    pub nomad_version: String,
}

fn default_nomad_version() -> String {
    crate::cloud::server_config::DEFAULT_NOMAD_VERSION.to_string()
}

pub const DEFAULT_INSTANCE_TYPE: &str = "t3.medium";

fn default_instance_type() -> String {
    DEFAULT_INSTANCE_TYPE.to_string()
}

#[derive(Debug, Clone, Deserialize)]
pub struct Certificates {
    pub ca_cert_secret_name: String,
    pub server_cert_secret_name: String,
    pub server_private_key_secret_name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Authentication {
    pub username: String,
    pub email: String,
    pub domain_prefix: String,
}

/// What the devices may do with the credentials Roles Anywhere hands them.
/// Least privilege by default: pull images from ECR, connect and publish to
/// the demo topic.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct DeviceRole {
    #[serde(default)]
    pub managed_policy_arns: Vec<String>,
    #[serde(default = "default_topics")]
    pub iot_publish_topics: Vec<String>,
    #[serde(default = "yes")]
    pub ecr_pull: bool,
}

impl Default for DeviceRole {
    fn default() -> Self {
        DeviceRole {
            managed_policy_arns: Vec::new(),
            iot_publish_topics: default_topics(),
            ecr_pull: true,
        }
    }
}

fn default_topics() -> Vec<String> {
    vec!["hello/world".to_string()]
}

fn yes() -> bool {
    true
}

/// Everything wrong with a deployment file: each entry is one line for the user.
#[derive(Debug, thiserror::Error)]
#[error("{}", .problems.join("\n"))]
pub struct Invalid {
    pub problems: Vec<String>,
}

pub struct Loaded {
    pub deployment: Deployment,
    pub warnings: Vec<String>,
}

/// The schema as (section, field) pairs; anything else is warned about.
const KNOWN: &[(&str, &[&str])] = &[
    (
        "cluster",
        &[
            "datacenter_name",
            "instance_count",
            "nomad_region",
            "discovery_tag_key",
            "discovery_tag_value",
            "instance_type",
            "nomad_version",
        ],
    ),
    (
        "certificates",
        &[
            "ca_cert_secret_name",
            "server_cert_secret_name",
            "server_private_key_secret_name",
        ],
    ),
    ("authentication", &["username", "email", "domain_prefix"]),
    (
        "device_role",
        &["managed_policy_arns", "iot_publish_topics", "ecr_pull"],
    ),
];

pub fn load(path: &Path) -> Result<Loaded, Invalid> {
    let text = std::fs::read_to_string(path).map_err(|e| Invalid {
        problems: vec![format!("{}: cannot read: {e}", path.display())],
    })?;
    parse(&text, &path.display().to_string())
}

pub fn parse(text: &str, origin: &str) -> Result<Loaded, Invalid> {
    let json: Json = serde_json::from_str(text).map_err(|e| Invalid {
        problems: vec![format!(
            "{origin}:{}:{}: not valid JSON: {e}",
            e.line(),
            e.column()
        )],
    })?;
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    check_shape(&json, &mut problems, &mut warnings);
    if !problems.is_empty() {
        return Err(Invalid { problems });
    }
    let deployment: Deployment = serde_json::from_value(json).map_err(|e| Invalid {
        problems: vec![format!("{origin}: {e}")],
    })?;
    deployment.validate(&mut problems, &mut warnings);
    if problems.is_empty() {
        Ok(Loaded { deployment, warnings })
    } else {
        Err(Invalid { problems })
    }
}

/// Fields that may be left out (their default applies).
const OPTIONAL_FIELDS: &[(&str, &str)] = &[("cluster", "instance_type"), ("cluster", "nomad_version")];

/// Missing sections/fields, wrong JSON types and unknown keys, reported per
/// field before serde would stop at the first one.
fn check_shape(json: &Json, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
    let Some(top) = json.as_object() else {
        problems.push("deployment: expected a JSON object at the top level".into());
        return;
    };
    for key in top.keys() {
        if !KNOWN.iter().any(|(s, _)| s == key) {
            warnings.push(format!("{key}: unknown field, ignored"));
        }
    }
    for (section, fields) in KNOWN {
        let optional = *section == "device_role";
        let Some(value) = top.get(*section) else {
            if !optional {
                problems.push(format!("{section}: missing section"));
            }
            continue;
        };
        let Some(obj) = value.as_object() else {
            problems.push(format!("{section}: expected an object"));
            continue;
        };
        for key in obj.keys() {
            if !fields.contains(&key.as_str()) {
                warnings.push(format!("{section}.{key}: unknown field, ignored"));
            }
        }
        for field in *fields {
            let name = format!("{section}.{field}");
            match (obj.get(*field), expected_type(section, field)) {
                (None, _) if optional || OPTIONAL_FIELDS.contains(&(*section, *field)) => {}
                (None, _) => problems.push(format!("{name}: missing")),
                (Some(v), JsonType::Str) if !v.is_string() => {
                    problems.push(format!("{name}: expected a string, found {v}"))
                }
                (Some(v), JsonType::Count) if !v.is_u64() => {
                    problems.push(format!("{name}: expected a whole number, found {v}"))
                }
                // A u64 that is no u32 would fail in serde without naming the field.
                (Some(v), JsonType::Count) if v.as_u64().is_some_and(|n| u32::try_from(n).is_err()) => {
                    problems.push(format!(
                        "{name}: {v} is outside 1..9 (Nomad servers: 1, 3, 5, 7 or 9)"
                    ))
                }
                (Some(v), JsonType::Bool) if !v.is_boolean() => {
                    problems.push(format!("{name}: expected true or false, found {v}"))
                }
                (Some(v), JsonType::StrList)
                    if !v.as_array().is_some_and(|a| a.iter().all(Json::is_string)) =>
                {
                    problems.push(format!("{name}: expected a list of strings, found {v}"))
                }
                _ => {}
            }
        }
    }
}

enum JsonType {
    Str,
    Count,
    Bool,
    StrList,
}

fn expected_type(section: &str, field: &str) -> JsonType {
    match (section, field) {
        ("cluster", "instance_count") => JsonType::Count,
        ("device_role", "ecr_pull") => JsonType::Bool,
        ("device_role", _) => JsonType::StrList,
        _ => JsonType::Str,
    }
}

impl Deployment {
    fn validate(&self, problems: &mut Vec<String>, warnings: &mut Vec<String>) {
        let c = &self.cluster;
        let strings = [
            ("cluster.datacenter_name", &c.datacenter_name),
            ("cluster.nomad_region", &c.nomad_region),
            ("cluster.discovery_tag_key", &c.discovery_tag_key),
            ("cluster.discovery_tag_value", &c.discovery_tag_value),
            (
                "certificates.ca_cert_secret_name",
                &self.certificates.ca_cert_secret_name,
            ),
            (
                "certificates.server_cert_secret_name",
                &self.certificates.server_cert_secret_name,
            ),
            (
                "certificates.server_private_key_secret_name",
                &self.certificates.server_private_key_secret_name,
            ),
            ("authentication.username", &self.authentication.username),
            ("authentication.email", &self.authentication.email),
            ("authentication.domain_prefix", &self.authentication.domain_prefix),
        ];
        let mut bad = Vec::new();
        for (name, value) in strings {
            if value.trim().is_empty() {
                problems.push(format!("{name}: must not be empty"));
                bad.push(name);
            } else if is_placeholder(value) {
                problems.push(format!(
                    "{name}: placeholder value {value:?} left in; put a real value"
                ));
                bad.push(name);
            }
        }
        let ok = |name: &str| !bad.contains(&name);

        match c.instance_count {
            1 => warnings.push(
                "cluster.instance_count: 1 server works but is not highly available; use 3 or 5".into(),
            ),
            n if !(1..=9).contains(&n) => problems.push(format!(
                "cluster.instance_count: {n} is outside 1..9 (Nomad servers: 1, 3, 5, 7 or 9)"
            )),
            n if n % 2 == 0 => problems.push(format!(
                "cluster.instance_count: {n} is even; an odd count (3, 5, 7, 9) keeps a raft quorum"
            )),
            _ => {}
        }
        for (name, value) in [
            ("cluster.nomad_region", &c.nomad_region),
            ("cluster.datacenter_name", &c.datacenter_name),
        ] {
            if ok(name) && !nomad_name(value) {
                problems.push(format!(
                    "{name}: {value:?} may hold only letters, digits, '-' and '_'"
                ));
            }
        }
        for (name, value) in [
            (
                "certificates.ca_cert_secret_name",
                &self.certificates.ca_cert_secret_name,
            ),
            (
                "certificates.server_cert_secret_name",
                &self.certificates.server_cert_secret_name,
            ),
            (
                "certificates.server_private_key_secret_name",
                &self.certificates.server_private_key_secret_name,
            ),
        ] {
            if ok(name) && !ssm_leaf(value) {
                problems.push(format!(
                    "{name}: {value:?} may hold only letters, digits and '_', '.', '-' (it names an SSM parameter)"
                ));
            }
        }
        let a = &self.authentication;
        if ok("authentication.email") && !valid_email(&a.email) {
            problems.push(format!(
                "authentication.email: {:?} is not a valid email address; Cognito mails the temporary password there",
                a.email
            ));
        }
        if ok("authentication.domain_prefix") {
            if let Err(why) = valid_domain_prefix(&a.domain_prefix) {
                problems.push(format!(
                    "authentication.domain_prefix: {:?} {why}",
                    a.domain_prefix
                ));
            }
        }
        if ok("authentication.username") && a.username.chars().any(char::is_whitespace) {
            problems.push(format!(
                "authentication.username: {:?} must not contain spaces",
                a.username
            ));
        }
        if !valid_version(&c.nomad_version) {
            problems.push(format!(
                "cluster.nomad_version: {:?} is not a Nomad release like \"1.11.3\"",
                c.nomad_version
            ));
        }
        if !valid_instance_type(&c.instance_type) {
            problems.push(format!(
                "cluster.instance_type: {:?} is not an EC2 instance type like \"t3.medium\" or \"t4g.medium\"",
                c.instance_type
            ));
        }
        for (i, arn) in self.device_role.managed_policy_arns.iter().enumerate() {
            if !arn.starts_with("arn:aws") || !arn.contains(":policy/") {
                problems.push(format!(
                    "device_role.managed_policy_arns[{i}]: {arn:?} is not an IAM policy ARN"
                ));
            }
        }
        for (i, topic) in self.device_role.iot_publish_topics.iter().enumerate() {
            if topic.is_empty() || topic.starts_with('/') || topic.contains(['#', '+']) {
                problems.push(format!(
                    "device_role.iot_publish_topics[{i}]: {topic:?} must be a plain MQTT topic (no leading '/', no wildcards)"
                ));
            }
        }
    }
}

fn is_placeholder(value: &str) -> bool {
    value.contains('<') && value.contains('>')
}

fn nomad_name(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

fn ssm_leaf(value: &str) -> bool {
    value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// `<family>.<size>`, e.g. `t3.medium`, `m7i-flex.large`, `c6gn.16xlarge`.
/// `MAJOR.MINOR.PATCH`, digits only (HashiCorp's release directory names).
fn valid_version(v: &str) -> bool {
    let parts: Vec<&str> = v.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 4 && p.chars().all(|c| c.is_ascii_digit()))
}

fn valid_instance_type(t: &str) -> bool {
    let Some((family, size)) = t.split_once('.') else {
        return false;
    };
    family.starts_with(|c: char| c.is_ascii_lowercase())
        && family.chars().any(|c| c.is_ascii_digit())
        && family
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !size.is_empty()
        && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.rsplit_once('@') else {
        return false;
    };
    let labels: Vec<&str> = domain.split('.').collect();
    !local.is_empty()
        && local.len() <= 64
        && !local.contains(char::is_whitespace)
        && !local.contains('@')
        && labels.len() >= 2
        && labels.iter().all(|l| {
            !l.is_empty()
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// Cognito hosted-domain prefixes: an RFC 952 host label, lower case.
fn valid_domain_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.len() > 63 {
        return Err("is longer than 63 characters");
    }
    if !prefix
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return Err("may hold only lower-case letters, digits and '-' (RFC 952)");
    }
    if !prefix.starts_with(|c: char| c.is_ascii_lowercase()) {
        return Err("must start with a lower-case letter (RFC 952)");
    }
    if prefix.ends_with('-') {
        return Err("must not end with '-' (RFC 952)");
    }
    if ["aws", "amazon", "cognito"]
        .iter()
        .any(|reserved| prefix.contains(reserved))
    {
        return Err("must not contain the reserved words aws, amazon or cognito");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{
      "cluster": {"datacenter_name": "control-plane", "instance_count": 3, "nomad_region": "eu-west-1",
                  "discovery_tag_key": "nomad-type", "discovery_tag_value": "server"},
      "certificates": {"ca_cert_secret_name": "ca-caCertificate",
                       "server_cert_secret_name": "nomad-server-eu-west-1-Certificate",
                       "server_private_key_secret_name": "nomad-server-eu-west-1-PrivateKey"},
      "authentication": {"username": "admin", "email": "ops@example.com", "domain_prefix": "robot-fleet-7"}
    }"#;

    fn with(path: &[&str], value: Json) -> String {
        let mut json: Json = serde_json::from_str(GOOD).unwrap();
        let mut cur = &mut json;
        for p in &path[..path.len() - 1] {
            cur = cur.get_mut(*p).unwrap();
        }
        cur[path[path.len() - 1]] = value;
        json.to_string()
    }

    fn problems(text: &str) -> Vec<String> {
        match parse(text, "deployment.json") {
            Ok(_) => vec![],
            Err(e) => e.problems,
        }
    }

    #[test]
    fn good_file_loads_with_default_device_role() {
        let loaded = parse(GOOD, "d").unwrap();
        assert!(loaded.warnings.is_empty());
        assert_eq!(loaded.deployment.device_role, DeviceRole::default());
    }

    #[test]
    fn the_repository_example_has_only_placeholder_problems() {
        let text = include_str!("../../deployment.json");
        let p = problems(text);
        assert!(!p.is_empty(), "the example keeps placeholders for the user");
        assert!(p.iter().all(|l| l.contains("placeholder")), "{p:?}");
    }

    #[test]
    fn table_of_bad_values() {
        let cases: &[(&[&str], Json, &str)] = &[
            (
                &["cluster", "instance_count"],
                4.into(),
                "cluster.instance_count: 4 is even",
            ),
            (
                &["cluster", "instance_count"],
                11.into(),
                "cluster.instance_count: 11 is outside 1..9",
            ),
            (
                &["cluster", "instance_count"],
                0.into(),
                "cluster.instance_count: 0 is outside 1..9",
            ),
            (
                &["cluster", "instance_count"],
                "3".into(),
                "cluster.instance_count: expected a whole number",
            ),
            (
                &["authentication", "email"],
                "not-an-email".into(),
                "authentication.email: \"not-an-email\" is not a valid email",
            ),
            (
                &["authentication", "email"],
                "a@b".into(),
                "authentication.email:",
            ),
            (
                &["authentication", "email"],
                "<your email>".into(),
                "authentication.email: placeholder value",
            ),
            (
                &["authentication", "domain_prefix"],
                "Robot".into(),
                "authentication.domain_prefix: \"Robot\" may hold only lower-case",
            ),
            (
                &["authentication", "domain_prefix"],
                "-robot".into(),
                "must start with a lower-case letter",
            ),
            (
                &["authentication", "domain_prefix"],
                "robot-".into(),
                "must not end with '-'",
            ),
            (
                &["authentication", "domain_prefix"],
                "my_robots".into(),
                "may hold only lower-case",
            ),
            (
                &["authentication", "domain_prefix"],
                "awsrobots".into(),
                "reserved words",
            ),
            (
                &["cluster", "nomad_region"],
                "".into(),
                "cluster.nomad_region: must not be empty",
            ),
            (
                &["cluster", "nomad_region"],
                "eu west".into(),
                "cluster.nomad_region: \"eu west\" may hold only",
            ),
            (
                &["certificates", "ca_cert_secret_name"],
                "a/b".into(),
                "certificates.ca_cert_secret_name:",
            ),
        ];
        for (path, value, expected) in cases {
            let p = problems(&with(path, value.clone()));
            assert_eq!(p.len(), 1, "{path:?}={value}: {p:?}");
            assert!(
                p[0].starts_with(expected) || p[0].contains(expected),
                "{path:?}={value}: got {:?}, want {expected:?}",
                p[0]
            );
        }
    }

    #[test]
    fn one_instance_is_a_warning() {
        let loaded = parse(&with(&["cluster", "instance_count"], 1.into()), "d").unwrap();
        assert_eq!(loaded.warnings.len(), 1);
        assert!(loaded.warnings[0].starts_with("cluster.instance_count: 1"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"{"cluster": {"instance_count": 2}, "authentication": {"email": "x", "username": "a", "domain_prefix": "p"}}"#;
        let p = problems(text);
        assert!(p.contains(&"certificates: missing section".to_string()), "{p:?}");
        assert!(p.contains(&"cluster.nomad_region: missing".to_string()), "{p:?}");
        assert!(
            p.contains(&"cluster.datacenter_name: missing".to_string()),
            "{p:?}"
        );
    }

    #[test]
    fn unknown_fields_warn() {
        let loaded = parse(&with(&["cluster", "colour"], "blue".into()), "d").unwrap();
        assert_eq!(loaded.warnings, vec!["cluster.colour: unknown field, ignored"]);
    }

    #[test]
    fn syntax_errors_name_line_and_column() {
        let p = problems("{\n  \"cluster\": ,\n}");
        assert_eq!(p.len(), 1);
        assert!(p[0].starts_with("deployment.json:2:"), "{p:?}");
    }

    #[test]
    fn nomad_version_defaults_to_the_tested_one_and_is_checked() {
        let loaded = parse(GOOD, "d").unwrap();
        assert_eq!(
            loaded.deployment.cluster.nomad_version,
            crate::cloud::server_config::DEFAULT_NOMAD_VERSION
        );
        let loaded = parse(&with(&["cluster", "nomad_version"], "1.10.5".into()), "d").unwrap();
        assert_eq!(loaded.deployment.cluster.nomad_version, "1.10.5");
        for bad in ["1.10", "v1.10.5", "1.10.5-beta", "1.10.5; rm -rf /", ""] {
            let p = problems(&with(&["cluster", "nomad_version"], bad.into()));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(p[0].starts_with("cluster.nomad_version:"), "{bad}: {p:?}");
        }
    }

    #[test]
    fn instance_type_defaults_and_is_checked() {
        let loaded = parse(GOOD, "d").unwrap();
        assert_eq!(loaded.deployment.cluster.instance_type, "t3.medium");
        let loaded = parse(&with(&["cluster", "instance_type"], "t4g.large".into()), "d").unwrap();
        assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
        assert_eq!(loaded.deployment.cluster.instance_type, "t4g.large");
        for ok in ["m7i-flex.large", "c6gn.16xlarge", "u-6tb1.metal"] {
            assert!(
                problems(&with(&["cluster", "instance_type"], ok.into())).is_empty(),
                "{ok}"
            );
        }
        for bad in ["t3", "T3.medium", "t3.", ".medium", "t3 medium", "large.t3x"] {
            let p = problems(&with(&["cluster", "instance_type"], bad.into()));
            assert_eq!(p.len(), 1, "{bad}: {p:?}");
            assert!(p[0].starts_with("cluster.instance_type:"), "{bad}: {p:?}");
        }
        let p = problems(&with(&["cluster", "instance_type"], 3.into()));
        assert_eq!(p, vec!["cluster.instance_type: expected a string, found 3"]);
    }

    #[test]
    fn device_role_is_checked() {
        let p = problems(&with(
            &["device_role"],
            serde_json::json!({"managed_policy_arns": ["AdministratorAccess"], "iot_publish_topics": ["a/#"]}),
        ));
        assert_eq!(p.len(), 2, "{p:?}");
        assert!(p[0].starts_with("device_role.managed_policy_arns[0]"));
        assert!(p[1].starts_with("device_role.iot_publish_topics[0]"));
    }
}
