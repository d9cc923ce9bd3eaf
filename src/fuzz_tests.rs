//! Property tests ("fuzzing" with proptest) of every parser edgectl runs on
//! outside input: deployment.json, the inventory, the device facts, device
//! certificates, Nomad's and IAM's answers, job variables, NOMAD_* settings
//! and durations. Two properties throughout: arbitrary input is `Ok` or
//! `Err`, never a panic; a mutated valid document that fails says so in one
//! line per problem, naming the field where the input had one.
//!
//! Deterministic: a fixed seed, 256 cases a property, no persistence files.

use crate::error::InvalidInput;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value as Json};
use std::path::Path;

fn config() -> Config {
    Config {
        cases: 256,
        failure_persistence: None,
        rng_seed: RngSeed::Fixed(0x0ed6_ec71),
        ..Config::default()
    }
}

/// Text that looks a little like the formats parsed here, or nothing like them.
fn junk() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        vec(any::<u8>(), 0..256).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[\\{\\}\\[\\]\":,'\\-\\\\#&*!|>%0-9a-zA-Z \t\r\n\u{0}\u{feff}é漢<>.=]{0,128}",
    ]
}

/// Arbitrary JSON, nested, with the awkward scalars.
fn any_json() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::from),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        Just(json!(u64::MAX)),
        Just(json!(-1)),
        Just(json!(1e308)),
        junk().prop_map(Json::from),
        Just(Json::from("x".repeat(100_000))),
        Just(Json::from("a\u{0}b\r\nc")),
        Just(Json::from("<your value>")),
    ];
    leaf.prop_recursive(4, 32, 4, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..4).prop_map(Json::Array),
            vec(("[a-zA-Z_]{0,12}", inner), 0..4).prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// `depth` nested arrays: deeper than serde's recursion limit when large.
fn deep(depth: usize) -> String {
    format!("{}{}", "[".repeat(depth), "]".repeat(depth))
}

/// Every line of an error, each asserted to be a single line.
fn assert_one_line_each(lines: &[String]) {
    for l in lines {
        assert!(!l.is_empty(), "empty problem in {lines:?}");
        assert!(
            !l.contains('\n') && !l.contains('\r'),
            "problem spans lines: {l:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// deployment.json
// ---------------------------------------------------------------------------

const GOOD_DEPLOYMENT: &str = r#"{
  "cluster": {"datacenter_name": "control-plane", "instance_count": 3, "nomad_region": "eu-west-1",
              "discovery_tag_key": "nomad-type", "discovery_tag_value": "server"},
  "certificates": {"ca_cert_secret_name": "ca-caCertificate",
                   "server_cert_secret_name": "nomad-server-eu-west-1-Certificate",
                   "server_private_key_secret_name": "nomad-server-eu-west-1-PrivateKey"},
  "authentication": {"username": "admin", "email": "ops@example.com", "domain_prefix": "robot-fleet-7"}
}"#;

const DEPLOYMENT_FIELDS: &[(&str, &str)] = &[
    ("cluster", "datacenter_name"),
    ("cluster", "instance_count"),
    ("cluster", "nomad_region"),
    ("cluster", "discovery_tag_key"),
    ("cluster", "discovery_tag_value"),
    ("cluster", "instance_type"),
    ("cluster", "nomad_version"),
    ("certificates", "ca_cert_secret_name"),
    ("certificates", "server_cert_secret_name"),
    ("certificates", "server_private_key_secret_name"),
    ("authentication", "username"),
    ("authentication", "email"),
    ("authentication", "domain_prefix"),
    ("device_role", "managed_policy_arns"),
    ("device_role", "iot_publish_topics"),
    ("device_role", "ecr_pull"),
];

#[derive(Debug, Clone)]
enum Edit {
    /// Remove a field.
    Drop(usize),
    /// Give a field another value (any type).
    Set(usize, Json),
    /// Replace a whole section.
    Section(usize, Json),
}

fn edit() -> impl Strategy<Value = Edit> {
    let n = DEPLOYMENT_FIELDS.len();
    prop_oneof![
        (0..n).prop_map(Edit::Drop),
        (0..n, any_json()).prop_map(|(i, v)| Edit::Set(i, v)),
        (0..4usize, any_json()).prop_map(|(i, v)| Edit::Section(i, v)),
    ]
}

fn apply(edit: &Edit) -> (Json, String) {
    let mut doc: Json = serde_json::from_str(GOOD_DEPLOYMENT).unwrap();
    doc["device_role"] = json!({});
    match edit {
        Edit::Drop(i) => {
            let (s, f) = DEPLOYMENT_FIELDS[*i];
            doc[s].as_object_mut().unwrap().remove(f);
            (doc, format!("{s}.{f}"))
        }
        Edit::Set(i, v) => {
            let (s, f) = DEPLOYMENT_FIELDS[*i];
            doc[s][f] = v.clone();
            (doc, format!("{s}.{f}"))
        }
        Edit::Section(i, v) => {
            let s = ["cluster", "certificates", "authentication", "device_role"][*i];
            doc[s] = v.clone();
            (doc, s.to_string())
        }
    }
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn deployment_arbitrary_text_never_panics(text in junk()) {
        if let Err(e) = crate::config::deployment::parse(&text, "deployment.json") {
            assert_one_line_each(&e.problems);
        }
    }

    #[test]
    fn deployment_arbitrary_json_never_panics(doc in any_json()) {
        if let Err(e) = crate::config::deployment::parse(&doc.to_string(), "deployment.json") {
            assert_one_line_each(&e.problems);
        }
    }

    /// One field of a valid file changed: any problem names that field.
    #[test]
    fn deployment_mutation_names_the_field(e in edit()) {
        let (doc, path) = apply(&e);
        for text in [doc.to_string(), serde_json::to_string_pretty(&doc).unwrap().replace('\n', "\r\n")] {
            if let Err(err) = crate::config::deployment::parse(&text, "deployment.json") {
                assert_one_line_each(&err.problems);
                for p in &err.problems {
                    prop_assert!(p.starts_with(&path), "{e:?}: {p:?} does not name {path}");
                }
            }
        }
    }

    /// Text damage: truncation, a NUL, a stray byte, CRLF, deep nesting.
    #[test]
    fn deployment_damaged_text_is_one_line_errors(cut in 0..GOOD_DEPLOYMENT.len(), ins in prop_oneof![
        Just("\u{0}".to_string()), Just("\r\n".to_string()), Just(",".to_string()),
        Just(deep(200)), Just("\u{feff}".to_string()), junk()
    ]) {
        let cut = (0..=cut).rev().find(|&i| GOOD_DEPLOYMENT.is_char_boundary(i)).unwrap();
        for text in [
            GOOD_DEPLOYMENT[..cut].to_string(),
            format!("{}{ins}{}", &GOOD_DEPLOYMENT[..cut], &GOOD_DEPLOYMENT[cut..]),
        ] {
            if let Err(e) = crate::config::deployment::parse(&text, "deployment.json") {
                assert_one_line_each(&e.problems);
            }
        }
    }
}

#[test]
fn deployment_fixed_bad_inputs() {
    let parse = |t: &str| {
        crate::config::deployment::parse(t, "deployment.json")
            .err()
            .map(|e| e.problems)
    };
    // Deeper than serde_json's recursion limit: an error, no stack overflow.
    let p = parse(&deep(100_000)).expect("deep nesting is an error");
    assert!(p[0].starts_with("deployment.json:1:"), "{p:?}");
    let (mut doc, _) = apply(&Edit::Drop(0));
    doc["cluster"]["datacenter_name"] = Json::from(deep(10));
    doc["cluster"]["instance_count"] = json!(u64::MAX);
    let p = parse(&doc.to_string()).unwrap();
    assert!(
        p.iter().any(|l| l.starts_with("cluster.instance_count:")),
        "{p:?}"
    );
    // Larger than u32 but a u64: named, not a bare serde message.
    let (mut doc, _) = apply(&Edit::Drop(5));
    doc["cluster"]["instance_count"] = json!(4_294_967_299u64);
    let p = parse(&doc.to_string()).unwrap();
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].starts_with("cluster.instance_count: 4294967299"), "{p:?}");
    assert!(parse("").unwrap()[0].contains("not valid JSON"));
    assert!(parse("\u{0}").unwrap()[0].contains("not valid JSON"));
}

// ---------------------------------------------------------------------------
// inventory
// ---------------------------------------------------------------------------

const GOOD_INVENTORY: &str = "\
all:
  vars:
    ansible_user: pi
    ansible_ssh_private_key_file: ~/.ssh/pi_ed25519
  children:
    robot1:
      vars:
        nomad_node_class: arm-camera
      hosts:
        pi-01:
          ansible_host: 192.168.1.50
          ansible_port: 2222
        pi-02:
          container_runtime: none
          aws_credentials: false
          nomad_servers: [10.0.1.10:4647]
";

/// Vars a mutation may set, on a host, a group or `all`.
const INVENTORY_VARS: &[&str] = &[
    "ansible_host",
    "ansible_port",
    "ansible_user",
    "ansible_ssh_private_key_file",
    "nomad_datacenter",
    "container_runtime",
    "nomad_servers",
    "aws_credentials",
    "nomad_node_class",
    "ansible_group_priority",
];

fn any_yaml() -> impl Strategy<Value = serde_yaml::Value> {
    any_json().prop_map(|j| serde_yaml::to_value(j).unwrap())
}

fn inventory(text: &str) -> anyhow::Result<crate::config::inventory::Inventory> {
    crate::config::inventory::parse(text, Path::new("/inv/inventory.yml"), "me", Path::new("/home/me"))
}

/// An inventory error is [`InvalidInput`] (exit 2), one line a problem, each
/// starting with the file.
fn inventory_lines(err: &anyhow::Error) -> Vec<String> {
    let inv = err
        .downcast_ref::<InvalidInput>()
        .unwrap_or_else(|| panic!("not InvalidInput: {err:#}"));
    assert_one_line_each(&inv.0);
    for l in &inv.0 {
        assert!(l.starts_with("/inv/inventory.yml"), "{l:?}");
    }
    inv.0.clone()
}

fn yaml_at<'a>(doc: &'a mut serde_yaml::Value, path: &[&str]) -> &'a mut serde_yaml::Value {
    path.iter().fold(doc, |v, k| v.get_mut(*k).unwrap())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn inventory_arbitrary_text_never_panics(text in junk()) {
        if let Err(e) = inventory(&text) {
            inventory_lines(&e);
        }
    }

    #[test]
    fn inventory_arbitrary_yaml_never_panics(doc in any_yaml()) {
        let text = serde_yaml::to_string(&doc).unwrap();
        if let Err(e) = inventory(&text) {
            inventory_lines(&e);
        }
    }

    /// A var set to anything, on a host, a group or `all`: a problem names it.
    #[test]
    fn inventory_bad_var_names_the_var(at in 0..3usize, var in 0..INVENTORY_VARS.len(), v in any_yaml()) {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(GOOD_INVENTORY).unwrap();
        let path: &[&str] = match at {
            0 => &["all", "children", "robot1", "hosts", "pi-01"],
            1 => &["all", "children", "robot1", "vars"],
            _ => &["all", "vars"],
        };
        let name = INVENTORY_VARS[var];
        yaml_at(&mut doc, path)[name] = v;
        let text = serde_yaml::to_string(&doc).unwrap();
        if let Err(e) = inventory(&text) {
            let lines = inventory_lines(&e);
            prop_assert!(lines.iter().any(|l| l.contains(name)), "{lines:?} do not name {name}");
        }
    }

    /// A structural piece replaced by anything, or the text damaged.
    #[test]
    fn inventory_mutations_are_one_line_errors(at in 0..5usize, v in any_yaml(), cut in 0..GOOD_INVENTORY.len(),
        ins in prop_oneof![Just("\u{0}".to_string()), Just("\t".to_string()), Just(": :".to_string()),
            Just("&a [*a]".to_string()), Just(deep(300)), junk()]) {
        let mut doc: serde_yaml::Value = serde_yaml::from_str(GOOD_INVENTORY).unwrap();
        let path: &[&str] = match at {
            0 => &["all"],
            1 => &["all", "children"],
            2 => &["all", "children", "robot1"],
            3 => &["all", "children", "robot1", "hosts"],
            _ => &["all", "vars"],
        };
        *yaml_at(&mut doc, path) = v;
        let cut = (0..=cut).rev().find(|&i| GOOD_INVENTORY.is_char_boundary(i)).unwrap();
        for text in [
            serde_yaml::to_string(&doc).unwrap(),
            GOOD_INVENTORY[..cut].to_string(),
            format!("{}{ins}{}", &GOOD_INVENTORY[..cut], &GOOD_INVENTORY[cut..]),
            GOOD_INVENTORY.replace('\n', "\r\n"),
        ] {
            if let Err(e) = inventory(&text) {
                inventory_lines(&e);
            }
        }
    }
}

#[test]
fn inventory_fixed_bad_inputs() {
    let cases = [
        // Alias bomb: serde_yaml's repetition limit, not memory.
        "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n\
         c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n\
         e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n\
         g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n",
        // A merge key that points at itself, and at a list.
        "all: &a\n  <<: *a\n",
        "all:\n  <<: [1, 2]\n",
        "all:\n  children:\n    g:\n      hosts:\n        \"h\\nx\":\n",
        "all:\n  children:\n    g:\n      children:\n        g:\n",
        "all:\n  children:\n    a:\n      children:\n        b:\n    b:\n      children:\n        a:\n      hosts:\n        h:\n",
        "all:\n  hosts:\n    h:\n      ansible_port: 99999999999999999999999\n",
        "all:\n  hosts:\n    h:\n      ansible_port: -1\n",
        "all:\n  hosts:\n    h:\n      ansible_port: .nan\n",
        "all:\n  hosts:\n    h:\n      ansible_host: !vault |\n        abc\n",
        "all:\n  hosts:\n    h:\n      nomad_servers: [\"\", \":\", \"[::1]:\", \"a:b:c\", \"h:70000\"]\n",
        "all:\n  hosts:\n    \"[::1]:22\":\n    \"h:\":\n    \":22\":\n",
        "---\nall: {}\n---\nall: {}\n",
        "\u{feff}all:\n  hosts:\n    h:\n",
    ];
    for text in cases {
        let deep_text = format!("all:\n  hosts: {}\n", deep(1000));
        for t in [text, deep_text.as_str()] {
            if let Err(e) = inventory(t) {
                inventory_lines(&e);
            }
        }
    }
}

// ---------------------------------------------------------------------------
// device facts
// ---------------------------------------------------------------------------

const FACTS: &str = include_str!("device/testdata/facts-bookworm-converged.txt");

proptest! {
    #![proptest_config(config())]

    #[test]
    fn facts_arbitrary_text_never_panics(text in junk()) {
        let with_header = format!("edgectl-facts\t1\n{text}\nend\n");
        for t in [text.as_str(), with_header.as_str()] {
            if let Err(e) = crate::device::state::parse_facts(t) {
                let msg = format!("{e:#}");
                prop_assert!(!msg.contains('\n'), "{}", msg);
            }
            if let Err(e) = crate::device::identity::parse_key_facts(t) {
                let msg = format!("{e:#}");
                prop_assert!(!msg.contains('\n'), "{}", msg);
            }
        }
    }

    /// Records of the captured output with fields changed, dropped or added.
    #[test]
    fn facts_mutated_records(line in 0usize..200, field in 0usize..8, op in 0..5u8, v in junk()) {
        let mut lines: Vec<String> = FACTS.lines().map(str::to_string).collect();
        let i = line % lines.len();
        let mut f: Vec<String> = lines[i].split('\t').map(str::to_string).collect();
        let j = field % f.len();
        match op {
            0 => f[j] = v.replace('\n', " "),
            1 => { f.remove(j); }
            2 => f.insert(j, v.replace('\n', " ")),
            3 => { lines.insert(i, lines[i].clone()); }
            _ => { lines.truncate(i); }
        }
        if op < 3 {
            lines[i] = f.join("\t");
        }
        let text = lines.join("\n");
        for t in [text.clone(), text.replace('\n', "\r\n")] {
            if let Err(e) = crate::device::state::parse_facts(&t) {
                let msg = format!("{e:#}");
                prop_assert!(!msg.contains('\n'), "{}", msg);
            }
        }
        let key = format!("key\tstat\t{}\nkey\tspki\t{}\n", v.replace('\n', ""), v.replace('\n', ""));
        if let Err(e) = crate::device::identity::parse_key_facts(&key) {
            let msg = format!("{e:#}");
            prop_assert!(!msg.contains('\n'), "{}", msg);
        }
    }
}

// ---------------------------------------------------------------------------
// certificates (PEM from the device and from SSM)
// ---------------------------------------------------------------------------

fn base64(bytes: &[u8]) -> String {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            out.push(if k <= c.len() {
                A[(n >> (18 - 6 * k)) as usize & 63] as char
            } else {
                '='
            });
        }
    }
    out
}

fn pem(der: &[u8]) -> String {
    let body: Vec<String> = base64(der)
        .as_bytes()
        .chunks(64)
        .map(|c| String::from_utf8(c.to_vec()).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        body.join("\n")
    )
}

fn cert_der() -> &'static [u8] {
    static DER: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    DER.get_or_init(|| {
        let mut params = rcgen::CertificateParams::new(vec!["client.eu-west-1.nomad".into()]).unwrap();
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()));
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn cert_facts_of_junk_is_an_error(text in junk()) {
        prop_assert!(crate::pki::facts(&text).is_err());
        prop_assert!(!crate::pki::issued_by(&text, &text));
    }

    /// A real certificate with bytes flipped, cut off or inserted.
    #[test]
    fn cert_facts_of_damaged_der(at in any::<prop::sample::Index>(), byte in any::<u8>(), op in 0..3u8) {
        let mut der = cert_der().to_vec();
        let i = at.index(der.len());
        match op {
            0 => der[i] ^= byte | 1,
            1 => der.truncate(i),
            _ => der.insert(i, byte),
        }
        let text = pem(&der);
        let _ = crate::pki::facts(&text);
        let _ = crate::pki::issued_by(&text, &pem(cert_der()));
    }
}

#[test]
fn cert_pem_round_trips() {
    let facts = crate::pki::facts(&pem(cert_der())).unwrap();
    assert_eq!(facts.dns, ["client.eu-west-1.nomad"]);
}

// ---------------------------------------------------------------------------
// Nomad's answers (what `Client::decode` does: serde_json::from_str)
// ---------------------------------------------------------------------------

/// Decodes `text` as each typed answer edgectl reads; only Ok or Err.
fn decode_all(text: &str) {
    use crate::nomad::{acl, jobs};
    macro_rules! each {
        ($($t:ty),*) => {$(
            let _ = serde_json::from_str::<$t>(text);
            let _ = serde_json::from_str::<Vec<$t>>(text);
            let _ = serde_json::from_str::<Option<$t>>(text);
        )*};
    }
    each!(
        acl::Token,
        acl::TokenStub,
        acl::Policy,
        acl::Role,
        acl::BindingRule,
        acl::BindingRuleStub,
        acl::AuthMethod,
        jobs::RegisterResponse,
        jobs::PlanResponse,
        jobs::Evaluation,
        jobs::Deployment,
        jobs::JobInfo,
        jobs::AllocStub
    );
}

/// Plausible Nomad answers, then each value replaced by anything.
fn nomad_answer() -> impl Strategy<Value = Json> {
    let base: Json = serde_json::from_str(
        r#"{
        "AccessorID": "a", "SecretID": "s", "Name": "n", "Type": "management", "Policies": ["p"],
        "Roles": [{"ID": "r", "Name": "n"}], "Global": true, "CreateIndex": 1, "ModifyIndex": 2,
        "ID": "id", "Description": null, "Rules": "node { policy = \"read\" }",
        "AuthMethod": "m", "Selector": "", "BindType": "role", "BindName": "n",
        "Config": {"BoundAudiences": ["a"], "ClaimMappings": {"a": "b"}, "JWKSURL": "u"},
        "EvalID": "e", "JobModifyIndex": 3, "Warnings": "",
        "Diff": {"Type": "Edited", "TaskGroups": [{"Name": "g", "Type": "Added", "Updates": {"create": 1},
            "Tasks": [{"Name": "t", "Type": "None", "Fields": [{"Name": "f", "Old": "1", "New": "2", "Type": "Edited"}],
            "Objects": [{"Name": "o", "Type": "Added", "Fields": null, "Objects": null}]}]}]},
        "Annotations": {"DesiredTGUpdates": {"g": {"Place": 1, "Stop": 0}}},
        "FailedTGAllocs": {"g": {"NodesEvaluated": 1, "ConstraintFiltered": {"c": 1}, "DimensionExhausted": {"memory": 1}}},
        "Status": "complete", "StatusDescription": "", "DeploymentID": "d", "BlockedEval": "",
        "TaskGroups": {"g": {"DesiredTotal": 1, "HealthyAllocs": 1, "UnhealthyAllocs": 0, "AutoRevert": true}},
        "Version": 4, "Stop": false, "Stable": true, "JobVersion": 1, "SubmitTime": 1700000000000000000,
        "ClientStatus": "running", "DesiredStatus": "run", "NodeName": "pi-01", "TaskGroup": "g",
        "TaskStates": {"t": {"State": "dead", "Failed": true, "Events": [{"Type": "Driver Failure", "DisplayMessage": "x"}]}},
        "DeploymentStatus": {"Healthy": false}
    }"#,
    )
    .unwrap();
    let keys: Vec<String> = base.as_object().unwrap().keys().cloned().collect();
    (vec((prop::sample::select(keys), any_json()), 0..4), any::<bool>()).prop_map(move |(edits, drop)| {
        let mut doc = base.clone();
        for (k, v) in edits {
            if drop {
                doc.as_object_mut().unwrap().remove(&k);
            } else {
                doc[k] = v;
            }
        }
        doc
    })
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn nomad_answers_of_junk_never_panic(text in junk()) {
        decode_all(&text);
    }

    #[test]
    fn nomad_answers_of_any_json_never_panic(doc in any_json()) {
        decode_all(&doc.to_string());
    }

    #[test]
    fn nomad_answers_mutated_never_panic(doc in nomad_answer()) {
        let text = doc.to_string();
        decode_all(&text);
        decode_all(&format!("[{text}, {text}]"));
    }

    /// NOMAD_* as the user may set them: an error is InvalidInput naming the variable.
    #[test]
    fn nomad_settings_resolve(addr in junk(), token in junk(), name in junk(), wait in junk(),
        files in vec(0..4u8, 3)) {
        let dir = std::env::temp_dir();
        let garbage = dir.join(format!("edgectl-fuzz-{}.pem", std::process::id()));
        std::fs::write(&garbage, "\u{0}not a pem\r\n").unwrap();
        let file = |k: u8| match k {
            0 => None,
            1 => Some("/nonexistent/edgectl/ca.pem".to_string()),
            2 => Some(dir.display().to_string()),
            _ => Some(garbage.display().to_string()),
        };
        let (ca, cert, key) = (file(files[0]), file(files[1]), file(files[2]));
        let var = |n: &str| match n {
            "NOMAD_ADDR" => Some(addr.clone()),
            "NOMAD_TOKEN" => Some(token.clone()),
            "NOMAD_TLS_SERVER_NAME" => Some(name.clone()),
            "EDGECTL_NOMAD_WAIT" => Some(wait.clone()),
            "NOMAD_CACERT" => ca.clone(),
            "NOMAD_CLIENT_CERT" => cert.clone(),
            "NOMAD_CLIENT_KEY" => key.clone(),
            _ => None,
        };
        let _ = crate::nomad::client::parse_addr(&addr);
        if let Err(e) = crate::nomad::NomadSettings::resolve(var) {
            let inv = e.downcast_ref::<InvalidInput>().unwrap_or_else(|| panic!("not InvalidInput: {e:#}"));
            for l in &inv.0 {
                prop_assert!(l.starts_with("NOMAD_") || l.starts_with("EDGECTL_NOMAD_WAIT"), "{l:?}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// job variables, IAM policies, durations
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn job_variables_never_panic(hcl in junk(), name in junk(), image in proptest::option::of(junk()),
        files in vec(junk(), 0..3), vars in vec(("[a-z_]{1,6}", junk()), 0..4)) {
        let _ = crate::job::declares_variable(&hcl, &name);
        let _ = crate::job::error_line(&name, &hcl);
        let text = crate::job::variables_text(image.as_deref(), &files, &vars);
        // The last --var of each name is written once.
        for (k, _) in &vars {
            let n = text.lines().filter(|l| l.starts_with(&format!("{k} = "))).count();
            prop_assert!(n >= 1, "{k} missing from {text:?}");
        }
    }

    #[test]
    fn policy_documents(text in junk(), doc in any_json()) {
        let _ = crate::cloud::iam_role::decode_policy(&text);
        // IAM's URL-encoded form decodes to the same document.
        let encoded: String = doc.to_string().bytes().map(|b| format!("%{b:02X}")).collect();
        let want: Json = serde_json::from_str(&doc.to_string()).unwrap();
        prop_assert_eq!(crate::cloud::iam_role::decode_policy(&encoded).unwrap(), want);
    }

    #[test]
    fn durations(text in junk(), n in any::<u64>(), unit in prop::sample::select(vec!["", "s", "m", "h", "ms", "d", "µs"])) {
        let _ = crate::cli::parse_duration(&text);
        let s = format!("{n}{unit}");
        match (crate::cli::parse_duration(&s), unit) {
            (Ok(_), "" | "s" | "m" | "h" | "ms") => {}
            (Err(e), "d" | "µs") => prop_assert!(e.contains("unknown unit"), "{e}"),
            (r, _) => prop_assert!(false, "{s}: {r:?}"),
        }
    }
}
