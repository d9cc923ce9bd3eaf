//! Bad input never reaches AWS: one line per problem naming the field,
//! exit code 2. (The endpoint here is a closed port, so a test that got as
//! far as AWS would fail with a connection error and exit 1.)

mod common;

use common::{edgectl_offline, GOOD_CONFIG};
use serde_json::Value;

fn with(path: &[&str], value: Value) -> String {
    let mut json: Value = serde_json::from_str(GOOD_CONFIG).unwrap();
    let mut cur = &mut json;
    for p in &path[..path.len() - 1] {
        cur = cur.get_mut(*p).unwrap();
    }
    cur[path[path.len() - 1]] = value;
    json.to_string()
}

fn plan_with(config: &str) -> common::Run {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("deployment.json"), config).unwrap();
    edgectl_offline(dir.path(), &["cloud", "plan"])
}

#[test]
fn each_bad_field_is_named_with_exit_code_2() {
    let cases: Vec<(String, &str)> = vec![
        (
            with(&["cluster", "instance_count"], 4.into()),
            "cluster.instance_count: 4 is even",
        ),
        (
            with(&["cluster", "instance_count"], 10.into()),
            "cluster.instance_count: 10 is outside 1..9",
        ),
        (
            with(&["authentication", "email"], "<your email>".into()),
            "authentication.email: placeholder value",
        ),
        (
            with(&["authentication", "email"], "nobody".into()),
            "authentication.email: \"nobody\" is not a valid email",
        ),
        (
            with(&["authentication", "domain_prefix"], "My_Robots".into()),
            "authentication.domain_prefix: \"My_Robots\"",
        ),
        (
            r#"{"cluster": {}}"#.to_string(),
            "cluster.datacenter_name: missing",
        ),
        ("{ not json".to_string(), "deployment.json:1:3: not valid JSON"),
    ];
    for (config, expected) in cases {
        let run = plan_with(&config);
        run.expect(2);
        let err = run.stderr();
        assert!(err.contains(expected), "want {expected:?} in:\n{err}");
        assert!(
            err.lines().all(|l| !l.contains("127.0.0.1:9")),
            "must not reach AWS:\n{err}"
        );
    }
}

#[test]
fn all_problems_are_listed_together() {
    let mut json: Value = serde_json::from_str(GOOD_CONFIG).unwrap();
    json["cluster"]["instance_count"] = 2.into();
    json["authentication"]["email"] = "x".into();
    json["authentication"]["domain_prefix"] = "-bad".into();
    let run = plan_with(&json.to_string());
    run.expect(2);
    let err = run.stderr();
    for field in [
        "cluster.instance_count",
        "authentication.email",
        "authentication.domain_prefix",
    ] {
        assert!(err.contains(field), "{field} missing from:\n{err}");
    }
    assert_eq!(
        err.lines().filter(|l| l.contains("deployment.json: ")).count(),
        3,
        "{err}"
    );
}

#[test]
fn the_shipped_example_refuses_its_placeholders() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/deployment.json"),
        dir.path().join("deployment.json"),
    )
    .unwrap();
    let run = edgectl_offline(dir.path(), &["cloud", "plan"]);
    run.expect(2);
    assert!(
        run.stderr()
            .contains("authentication.email: placeholder value \"<your email>\" left in"),
        "{}",
        run.stderr()
    );
}

#[test]
fn missing_config_file_and_bad_deployment_name() {
    let dir = tempfile::tempdir().unwrap();
    let run = edgectl_offline(dir.path(), &["cloud", "plan"]);
    run.expect(2);
    assert!(
        run.stderr().contains("deployment.json: cannot read"),
        "{}",
        run.stderr()
    );

    std::fs::write(dir.path().join("deployment.json"), GOOD_CONFIG).unwrap();
    let run = edgectl_offline(dir.path(), &["--deployment", "Prod!", "cloud", "plan"]);
    run.expect(2);
    assert!(
        run.stderr().contains("--deployment: \"Prod!\""),
        "{}",
        run.stderr()
    );
}

#[test]
fn unknown_fields_warn_but_do_not_fail_validation() {
    let run = plan_with(&with(&["cluster", "colour"], "blue".into()));
    // Validation passed, so edgectl went on to AWS, which is unreachable here.
    run.expect(1);
    assert!(
        run.stderr().contains("warning: ") && run.stderr().contains("cluster.colour: unknown field"),
        "{}",
        run.stderr()
    );
}

#[test]
fn errors_in_json_mode_are_a_json_document_too() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("deployment.json"),
        with(&["cluster", "instance_count"], 4.into()),
    )
    .unwrap();
    let run = edgectl_offline(dir.path(), &["--output", "json", "cloud", "plan"]);
    run.expect(2);
    let doc = run.json();
    assert_eq!(doc["schema"], 1);
    assert!(doc["error"].as_str().unwrap().contains("cluster.instance_count"));
}

#[test]
fn usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    edgectl_offline(dir.path(), &["cloud", "launch"]).expect(2);
    edgectl_offline(dir.path(), &["--output", "yaml", "cloud", "plan"]).expect(2);
}
