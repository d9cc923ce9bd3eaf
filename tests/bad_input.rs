//! Bad input at the command line, end to end: the real binary, no AWS (the
//! endpoint is a closed port, so a call would fail with a connection error
//! instead). Each case: the documented exit code, one `error:` line naming
//! the field, no panic or backtrace. The README's "Bad input" table lists
//! these cases.

mod common;

use common::GOOD_CONFIG;
use std::path::Path;
use std::process::Command;

const GOOD_INVENTORY: &str =
    "all:\n  children:\n    robot1:\n      hosts:\n        pi-01:\n          ansible_host: 192.168.1.50\n";

struct Case {
    name: &'static str,
    /// Files written into a fresh directory first.
    files: &'static [(&'static str, &'static str)],
    args: &'static [&'static str],
    code: i32,
    /// Text the `error:` line carries (the field it names).
    names: &'static str,
}

fn run(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "1")
        // Nothing listens here: a call that went out would fail with a
        // connection error, not the input error asserted below.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_CONFIG_FILE", dir.join("no-aws-config"))
        .env("AWS_SHARED_CREDENTIALS_FILE", dir.join("no-aws-config"))
        .env("NOMAD_ADDR", "https://127.0.0.1:1")
        .output()
        .expect("edgectl runs")
}

fn config_with(field: &str, value: &str) -> String {
    let mut json: serde_json::Value = serde_json::from_str(GOOD_CONFIG).unwrap();
    let (s, f) = field.split_once('.').unwrap();
    json[s][f] = serde_json::from_str(value).unwrap();
    json.to_string()
}

fn cases() -> Vec<Case> {
    // Leaked so the table can hold &'static str built at run time.
    let leak = |s: String| -> &'static str { Box::leak(s.into_boxed_str()) };
    let with = |f: &str, v: &str| -> &'static [(&'static str, &'static str)] {
        Box::leak(vec![("deployment.json", leak(config_with(f, v)))].into_boxed_slice())
    };
    let inv = |text: &'static str| -> &'static [(&'static str, &'static str)] {
        Box::leak(vec![("deployment.json", GOOD_CONFIG), ("inv.yml", text)].into_boxed_slice())
    };
    let plan: &[&str] = &["cloud", "plan"];
    vec![
        Case {
            name: "deployment.json not JSON",
            files: &[("deployment.json", "{\"cluster\": ")],
            args: plan,
            code: 2,
            names: "deployment.json:1:12: not valid JSON",
        },
        Case {
            name: "deployment.json a JSON list",
            files: &[("deployment.json", "[1, 2]")],
            args: plan,
            code: 2,
            names: "deployment: expected a JSON object",
        },
        Case {
            name: "deployment.json with a NUL byte",
            files: &[("deployment.json", "{\u{0}}")],
            args: plan,
            code: 2,
            names: "not valid JSON",
        },
        Case {
            name: "wrong type",
            files: with("cluster.instance_count", "\"three\""),
            args: plan,
            code: 2,
            names: "cluster.instance_count: expected a whole number, found \"three\"",
        },
        Case {
            name: "number too large",
            files: with("cluster.instance_count", "18446744073709551615"),
            args: plan,
            code: 2,
            names: "cluster.instance_count: 18446744073709551615 is outside 1..9",
        },
        Case {
            name: "missing field",
            files: &[(
                "deployment.json",
                r#"{"cluster": {}, "certificates": {}, "authentication": {}}"#,
            )],
            args: plan,
            code: 2,
            names: "cluster.datacenter_name: missing",
        },
        Case {
            name: "placeholder left in",
            files: with("authentication.email", "\"<your email>\""),
            args: plan,
            code: 2,
            names: "authentication.email: placeholder value",
        },
        Case {
            name: "very long string",
            files: with(
                "authentication.domain_prefix",
                &format!("\"{}\"", "a".repeat(10_000)),
            ),
            args: plan,
            code: 2,
            names: "authentication.domain_prefix:",
        },
        Case {
            name: "job: missing file",
            files: &[("deployment.json", GOOD_CONFIG)],
            args: &["job", "run", "jobs/missing.nomad.hcl"],
            code: 1,
            names: "missing.nomad.hcl",
        },
        Case {
            name: "--parallel 0",
            files: inv(GOOD_INVENTORY),
            args: &[
                "device",
                "provision",
                "--dry-run",
                "-i",
                "inv.yml",
                "--parallel",
                "0",
                "pi-01",
            ],
            code: 2,
            names: "--parallel",
        },
        Case {
            name: "bad --deployment name",
            files: &[("deployment.json", GOOD_CONFIG)],
            args: &["--deployment", "Prod!", "cloud", "plan"],
            code: 2,
            names: "--deployment: \"Prod!\"",
        },
        Case {
            name: "unknown component in --only",
            files: &[("deployment.json", GOOD_CONFIG)],
            args: &["cloud", "plan", "--only", "pca,nope"],
            code: 2,
            names: "nope",
        },
        Case {
            name: "bad --timeout",
            files: &[("deployment.json", GOOD_CONFIG)],
            args: &["job", "run", "--timeout", "10d", "heartbeat"],
            code: 2,
            names: "unknown unit \"d\"",
        },
    ]
}

/// The inventory cases: the inventory is parsed only after the AWS
/// context is built (`device_settings` then `context` in main.rs), so
/// today these exit 1 with "cannot reach AWS" when AWS is unreachable.
fn inventory_cases() -> Vec<Case> {
    let inv = |text: &'static str| -> &'static [(&'static str, &'static str)] {
        Box::leak(vec![("deployment.json", GOOD_CONFIG), ("inv.yml", text)].into_boxed_slice())
    };
    let provision: &[&str] = &["device", "provision", "--dry-run", "-i", "inv.yml", "pi-01"];
    vec![
        Case {
            name: "inventory: bad port",
            files: inv("all:\n  hosts:\n    pi-01:\n      ansible_port: 70000\n"),
            args: provision,
            code: 2,
            names: "inv.yml: all.hosts.pi-01.ansible_port",
        },
        Case {
            name: "inventory: unknown group",
            files: inv(GOOD_INVENTORY),
            args: &[
                "device",
                "provision",
                "--dry-run",
                "-i",
                "inv.yml",
                "--group",
                "nope",
            ],
            code: 2,
            names: "nope",
        },
        Case {
            name: "inventory: YAML error",
            files: inv("all:\n  hosts: [\n"),
            args: provision,
            code: 2,
            names: "inv.yml:",
        },
        Case {
            name: "inventory: a host name with a line break",
            files: inv("all:\n  hosts:\n    \"pi\\n01\":\n"),
            args: provision,
            code: 2,
            names: "all.hosts.pi\\n01: host name",
        },
    ]
}

#[test]
fn each_bad_input_is_one_error_line_with_its_exit_code() {
    check(cases());
}

#[test]
fn bad_inventories_are_refused_before_any_aws_call() {
    check(inventory_cases());
}

fn check(cases: Vec<Case>) {
    let mut failures = Vec::new();
    for case in cases {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in case.files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        let out = run(dir.path(), case.args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        let code = out.status.code().unwrap_or(-1);
        let mut wrong = Vec::new();
        if code != case.code {
            wrong.push(format!("exit code {code}, want {}", case.code));
        }
        if errors.len() != 1 || !errors[0].contains(case.names) {
            wrong.push(format!("want one `error:` line containing {:?}", case.names));
        }
        for bad in ["panicked", "RUST_BACKTRACE", "stack backtrace"] {
            if stderr.contains(bad) {
                wrong.push(format!("{bad:?} in stderr"));
            }
        }
        // An AWS call would have failed on the closed port.
        for call in ["dispatch failure", "127.0.0.1:1", "Connection refused"] {
            if stderr.contains(call) {
                wrong.push(format!("an outside call was attempted ({call:?})"));
            }
        }
        if !wrong.is_empty() {
            failures.push(format!(
                "{}: {}\n--- stderr\n{stderr}",
                case.name,
                wrong.join("; ")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
