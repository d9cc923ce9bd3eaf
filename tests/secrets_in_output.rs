//! Nothing secret reaches the screen or a log: a whole `cloud up` (every
//! component, a real Nomad server for the ACL bootstrap) and the commands
//! an operator and CI run after it, in every output mode (human, JSON) and
//! log level (none, `-v`, `-vv`: edgectl trace plus the AWS SDK's debug
//! logs), are searched for every SecureString the deployment holds in SSM
//! (the private keys of the server and CLI certificates, the Nomad
//! management and CI tokens, the Cognito client secret, …). The device side
//! (device keys, `provision -vv`, JSON) is `device_lifecycle.rs`'s
//! `secrets_never_reach_output_or_the_operators_disk`.

mod common;

use common::whole_cloud::{command, first_up, nomad_env, LOCALHOST};
use common::{Run, Stand};
use testkit::nomad::Ports;

/// Every SecureString under /infrastructure, decrypted: (name, value).
async fn secure_strings(stand: &Stand) -> Vec<(String, String)> {
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    let mut pages = ssm
        .get_parameters_by_path()
        .path("/infrastructure")
        .recursive(true)
        .with_decryption(true)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().parameters.unwrap_or_default() {
            if p.r#type == Some(aws_sdk_ssm::types::ParameterType::SecureString) {
                found.push((p.name.unwrap_or_default(), p.value.unwrap_or_default()));
            }
        }
    }
    found
}

/// What must never be shown of a secret: each line of a PEM body, or the
/// whole value.
fn needles(value: &str) -> Vec<String> {
    if value.contains("-----BEGIN") {
        value
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("-----"))
            .map(str::to_string)
            .collect()
    } else {
        vec![value.trim().to_string()]
    }
}

async fn edgectl(stand: &Stand, env: &[(String, String)], args: &[&str]) -> Run {
    let mut cmd = command(stand, args, env);
    // jobs/ of the repository.
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    common::run(cmd).await
}

#[tokio::test(flavor = "multi_thread")]
async fn no_secret_in_any_output_mode_or_log_level() {
    let stand = Stand::start().await;
    let ports = Ports::free(LOCALHOST).unwrap();
    let env = nomad_env(&ports);
    let mut runs: Vec<(String, Run)> = Vec::new();

    let (up, _nomad) = first_up(&stand, &["cloud", "up", "-vv"], &env, ports).await;
    up.run.expect(0);
    assert!(
        up.run.stderr().contains(" DEBUG ") && up.run.stderr().contains("aws_smithy_runtime"),
        "-vv logs the SDK's debug lines:\n{}",
        up.run.stderr()
    );
    runs.push(("cloud up -vv (first)".into(), up.run));

    let commands: &[(&[&str], Option<i32>)] = &[
        (&["cloud", "up"], Some(0)),
        (&["cloud", "up", "-v"], Some(0)),
        (&["cloud", "up", "-vv", "--output", "json"], Some(0)),
        (&["cloud", "plan", "-vv"], Some(0)),
        (&["cloud", "plan", "--output", "json"], Some(0)),
        (&["cloud", "status", "-vv"], Some(0)),
        (&["cloud", "status", "--output", "json", "-v"], Some(0)),
        (&["env"], Some(0)),
        (&["env", "-vv"], Some(0)),
        // No NOMAD_TOKEN: the CI token comes from SSM.
        (&["job", "plan", "heartbeat", "-vv"], None),
        (&["job", "run", "--detach", "heartbeat", "-vv"], Some(0)),
        (
            &["job", "run", "--detach", "heartbeat", "--output", "json", "-vv"],
            Some(0),
        ),
        (&["job", "status", "heartbeat", "-vv"], None),
        (&["job", "status", "heartbeat", "--output", "json"], None),
        (&["job", "stop", "heartbeat", "--purge", "-vv"], Some(0)),
    ];
    for (args, code) in commands {
        let run = edgectl(&stand, &env, args).await;
        if let Some(code) = code {
            run.expect(*code);
        }
        runs.push((args.join(" "), run));
    }

    // Read before `down` deletes them.
    let secrets = secure_strings(&stand).await;
    let names: Vec<&str> = secrets.iter().map(|(n, _)| n.as_str()).collect();
    eprintln!("SecureStrings searched for: {names:?}");
    for wanted in ["PrivateKey", "token", "client_secret"] {
        assert!(
            names.iter().any(|n| n.contains(wanted)),
            "no SecureString named *{wanted}* to search for: {names:?}"
        );
    }
    assert!(secrets.len() >= 5, "{names:?}");

    let down = edgectl(&stand, &env, &["cloud", "down", "--yes", "-vv"]).await;
    down.expect(0);
    runs.push(("cloud down --yes -vv".into(), down));

    let mut shown = Vec::new();
    for (label, run) in &runs {
        for (stream, text) in [("stdout", run.stdout()), ("stderr", run.stderr())] {
            if text.contains("PRIVATE KEY") {
                shown.push(format!("{label} {stream}: a PEM private key"));
            }
            for (name, value) in &secrets {
                if needles(value)
                    .iter()
                    .any(|n| n.len() >= 8 && text.contains(n.as_str()))
                {
                    shown.push(format!("{label} {stream}: {name}"));
                }
            }
        }
    }
    let bytes: usize = runs
        .iter()
        .map(|(_, r)| r.0.stdout.len() + r.0.stderr.len())
        .sum();
    eprintln!("searched {} runs, {bytes} bytes of output", runs.len());
    assert!(shown.is_empty(), "secrets shown:\n{}", shown.join("\n"));
}
