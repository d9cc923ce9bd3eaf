//! `edgectl job plan|run|status|stop` against a real Nomad server and a
//! real provisioned client (raw_exec, no docker): one fleet, one host, the
//! checks in the order a user would meet them.

mod common;

use common::devices::{ssm, Fleet};
use common::Run;
use std::time::Instant;

const JOB: &str = "/infrastructure/jobs/heartbeat";

fn puts(fleet: &Fleet) -> Vec<String> {
    fleet
        .stand
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.action().ends_with("PutParameter"))
        .map(|r| r.action())
        .collect()
}

fn show(r: &Run) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", r.stdout(), r.stderr())
}

/// Runs edgectl, printing how long it took and its own timing split.
async fn timed(fleet: &Fleet, what: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let t = Instant::now();
    let r = fleet.edgectl_env(args, env).await;
    let wall = t.elapsed();
    let timings = serde_json::from_str::<serde_json::Value>(&r.stdout())
        .ok()
        .map(|v| v["timings"].clone())
        .unwrap_or_default();
    eprintln!(
        "TIMING {what}: exit {} after {:.2}s wall; edgectl timings {timings}",
        r.code(),
        wall.as_secs_f64()
    );
    r
}

async fn nomad_validate(fleet: &Fleet) {
    let dir = fleet.dir.path();
    let jobs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs");
    let mut files: Vec<_> = std::fs::read_dir(&jobs)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".nomad.hcl"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    for f in files {
        let mut cmd = tokio::process::Command::new(testkit::tools::nomad_bin());
        cmd.arg("job")
            .arg("validate")
            .arg("-address")
            .arg(&fleet.server.http_url)
            .arg("-ca-cert")
            .arg(dir.join("ca.pem"))
            .arg("-client-cert")
            .arg(dir.join("cli.pem"))
            .arg("-client-key")
            .arg(dir.join("cli-key.pem"))
            .arg("-tls-server-name")
            .arg("server.eu-west-1.nomad");
        if f.ends_with("iot-publish.nomad.hcl") {
            cmd.arg("-var").arg("image=x");
        }
        let out = cmd
            .arg(&f)
            .env("NOMAD_TOKEN", &fleet.token)
            .env_remove("NOMAD_ADDR")
            .output()
            .await
            .expect("nomad runs");
        assert!(
            out.status.success(),
            "nomad job validate {}:\n{}\n{}",
            f.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn heartbeat_runs_reruns_fails_and_rolls_back_and_iot_publish_cannot_be_placed() {
    let fleet = Fleet::start(1, "job").await;
    let host = fleet.hosts[0].name.clone();
    let provision = fleet
        .device(&[
            "provision",
            "--all",
            "--artifacts",
            fleet.artifacts().to_str().unwrap(),
        ])
        .await;
    provision.expect(0);

    // Invalid input never reaches Nomad: as `nomad job run`, exit 1.
    let missing = fleet.edgectl_env(&["job", "run", "nope"], &[]).await;
    missing.expect(1);
    assert!(
        missing.stderr().contains("no job \"nope\"") && missing.stderr().contains("heartbeat, iot-publish"),
        "{}",
        show(&missing)
    );
    let missing_plan = fleet.edgectl_env(&["job", "plan", "nope"], &[]).await;
    missing_plan.expect(255);
    // Bad usage of `job plan` is 255 too (nomad's), of `job run` clap's 2.
    fleet
        .edgectl_env(&["job", "plan", "heartbeat", "--bogus"], &[])
        .await
        .expect(255);
    fleet
        .edgectl_env(&["job", "run", "--bogus", "x"], &[])
        .await
        .expect(2);

    // The real nomad CLI accepts every job file as it is.
    nomad_validate(&fleet).await;

    // A syntax error: Nomad's message, with the line shown.
    let bad = fleet.dir.path().join("bad.nomad.hcl");
    std::fs::write(&bad, "job \"bad\" {\n  group \"g\" {\n    count = \n  }\n}\n").unwrap();
    let r = fleet
        .edgectl_env(&["job", "run", bad.to_str().unwrap()], &[])
        .await;
    eprintln!("--- parse error\n{}", show(&r));
    r.expect(1);
    assert!(
        r.stderr().contains("Nomad could not parse the job") && r.stderr().contains("3 |     count ="),
        "{}",
        show(&r)
    );

    fleet.wait_ready(&[host.as_str()]).await;

    // Plan of a new job: changes (exit 1) and the check-index 0 command.
    let plan = fleet.edgectl_env(&["job", "plan", "heartbeat"], &[]).await;
    plan.expect(1);
    assert!(
        plan.stdout().contains("+ Job: \"heartbeat\"")
            && plan
                .stdout()
                .contains("edgectl job run --check-index 0 heartbeat"),
        "{}",
        show(&plan)
    );

    // First run: deployed, outputs written.
    fleet.stand.sim.reset_requests();
    let first = timed(
        &fleet,
        "first job run heartbeat",
        &["--output", "json", "job", "run", "heartbeat"],
        &[],
    )
    .await;
    first.expect(0);
    let doc = first.json();
    assert_eq!(doc["schema"], 1);
    assert_eq!(doc["outcome"], "deployed", "{}", show(&first));
    assert_eq!(doc["deployment"]["status"], "successful");
    assert_eq!(doc["version"], 0);
    assert_eq!(doc["outputs_written"].as_array().unwrap().len(), 5, "{doc}");
    assert_eq!(puts(&fleet).len(), 5);
    assert_eq!(
        ssm(&fleet.stand, &format!("{JOB}/version")).await.as_deref(),
        Some("0")
    );
    assert_eq!(
        ssm(&fleet.stand, &format!("{JOB}/deployment_status"))
            .await
            .as_deref(),
        Some("successful")
    );
    assert_eq!(
        ssm(&fleet.stand, &format!("{JOB}/deployment_id"))
            .await
            .as_deref(),
        doc["deployment"]["id"].as_str()
    );
    let index = ssm(&fleet.stand, &format!("{JOB}/job_modify_index"))
        .await
        .unwrap();
    assert!(ssm(&fleet.stand, &format!("{JOB}/submitted_at"))
        .await
        .unwrap()
        .ends_with('Z'));

    // Plan again: nothing to do (exit 0), and the index to check.
    let plan = fleet.edgectl_env(&["job", "plan", "heartbeat"], &[]).await;
    plan.expect(0);
    assert!(
        plan.stdout()
            .contains(&format!("--check-index {index} heartbeat")),
        "{}",
        show(&plan)
    );
    let changed = fleet
        .edgectl_env(&["job", "plan", "heartbeat", "--var", "message=changed"], &[])
        .await;
    changed.expect(1);
    assert!(
        changed.stdout().contains("+/- Env[MESSAGE]"),
        "{}",
        show(&changed)
    );
    eprintln!("--- job plan (changed)\n{}", show(&changed));

    // Unchanged re-run with the CI token from SSM (NOMAD_TOKEN unset):
    // no new version, no SSM write.
    let ssm_client = aws_sdk_ssm::Client::new(&fleet.stand.sdk().await);
    ssm_client
        .put_parameter()
        .name("/infrastructure/nomad/token/ci")
        .value(&fleet.token)
        .r#type(aws_sdk_ssm::types::ParameterType::SecureString)
        .overwrite(true)
        .send()
        .await
        .unwrap();
    fleet.stand.sim.reset_requests();
    let again = timed(
        &fleet,
        "unchanged job run heartbeat",
        &["--output", "json", "job", "run", "heartbeat"],
        &[("NOMAD_TOKEN", "")],
    )
    .await;
    again.expect(0);
    let doc = again.json();
    assert_eq!(doc["changed"], false, "{doc}");
    assert_eq!(doc["version"], 0);
    assert_eq!(doc["outputs_written"].as_array().unwrap().len(), 0, "{doc}");
    assert_eq!(puts(&fleet), Vec::<String>::new());

    // --check-index 0 on an existing job: Nomad's refusal on one line.
    let r = fleet
        .edgectl_env(&["job", "run", "--check-index", "0", "heartbeat"], &[])
        .await;
    r.expect(1);
    let stderr = r.stderr();
    let err_lines: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("hint:")).collect();
    assert_eq!(err_lines.len(), 1, "{}", show(&r));
    eprintln!("--- check-index 0\n{}", show(&r));
    assert!(
        err_lines[0].contains("Enforcing job modify index 0: job already exists"),
        "{}",
        show(&r)
    );

    // Status: the allocation on the device.
    let status = fleet.edgectl_env(&["job", "status", "heartbeat"], &[]).await;
    status.expect(0);
    let row = status
        .stdout()
        .lines()
        .find(|l| l.contains(&host))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no allocation on {host}:\n{}", show(&status)));
    assert!(row.contains("running") && row.contains("healthy"), "{row}");
    assert!(status.stdout().contains("successful"), "{}", show(&status));
    eprintln!("--- job status\n{}", show(&status));

    // A token that may only read nodes: a clear 403.
    let api = fleet.api();
    api.put(
        "/v1/acl/policy/node-read",
        &serde_json::json!({"Name": "node-read", "Rules": "node { policy = \"read\" }"}),
    )
    .await
    .unwrap();
    let token = api
        .put(
            "/v1/acl/token",
            &serde_json::json!({"Name": "node-reader", "Type": "client", "Policies": ["node-read"]}),
        )
        .await
        .unwrap();
    let secret = token["SecretID"].as_str().unwrap().to_string();
    let r = fleet
        .edgectl_env(&["job", "run", "heartbeat"], &[("NOMAD_TOKEN", secret.as_str())])
        .await;
    eprintln!("--- 403\n{}", show(&r));
    r.expect(1);
    assert!(
        r.stderr()
            .contains("Nomad refused to parse the job with NOMAD_TOKEN (403 Permission denied)")
            && r.stderr().contains("hint:"),
        "{}",
        show(&r)
    );

    // A version whose task exits at once: the deployment fails (exit 1),
    // auto-revert rolls back to version 0's spec, and the run follows it.
    fleet.stand.sim.reset_requests();
    let failing = timed(
        &fleet,
        "failing job run heartbeat",
        &[
            "--output",
            "json",
            "job",
            "run",
            "heartbeat",
            "--var",
            "script=exit 1",
        ],
        &[],
    )
    .await;
    failing.expect(1);
    let doc = failing.json();
    assert_eq!(doc["outcome"], "deployment_failed", "{}", show(&failing));
    assert_eq!(doc["deployment"]["status"], "failed");
    assert_eq!(doc["deployment"]["job_version"], 1);
    assert_eq!(doc["rollback"]["status"], "successful", "{doc}");
    assert_eq!(doc["rollback"]["job_version"], 2);
    assert_eq!(doc["version"], 2);
    assert!(!doc["failed_allocations"].as_array().unwrap().is_empty(), "{doc}");
    assert_eq!(
        ssm(&fleet.stand, &format!("{JOB}/version")).await.as_deref(),
        Some("2")
    );
    assert_eq!(
        ssm(&fleet.stand, &format!("{JOB}/deployment_id"))
            .await
            .as_deref(),
        doc["rollback"]["id"].as_str()
    );
    // The human form says so too.
    let human = fleet
        .edgectl_env(&["job", "run", "heartbeat", "--var", "script=exit 1"], &[])
        .await;
    human.expect(1);
    assert!(
        human.stdout().contains("rollback")
            && human.stderr().contains("auto-revert rolled back as version 4"),
        "{}",
        show(&human)
    );

    eprintln!("--- job run (failed deployment, human)\n{}", show(&human));

    // --detach with a var file: registered, not followed (exit 0).
    let vars = fleet.dir.path().join("beat.vars.hcl");
    std::fs::write(&vars, "message = \"from a var file\"\n").unwrap();
    let detached = fleet
        .edgectl_env(
            &[
                "--output",
                "json",
                "job",
                "run",
                "heartbeat",
                "--var-file",
                vars.to_str().unwrap(),
                "--detach",
            ],
            &[],
        )
        .await;
    detached.expect(0);
    let doc = detached.json();
    assert_eq!(doc["outcome"], "registered", "{doc}");
    // 3 and 4 were the human run's failed version and its revert.
    assert_eq!(doc["version"], 5);
    let job = api.get("/v1/job/heartbeat").await.unwrap();
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Env"]["MESSAGE"],
        "from a var file"
    );

    // --timeout shorter than the deployment: exit 1, saying what it waited for.
    let slow = fleet
        .edgectl_env(
            &[
                "job",
                "run",
                "heartbeat",
                "--var",
                "message=slow",
                "--timeout",
                "1s",
            ],
            &[],
        )
        .await;
    slow.expect(1);
    assert!(
        slow.stderr().contains("timed out waiting for deployment"),
        "{}",
        show(&slow)
    );
    eprintln!("--- job run --timeout 1s\n{}", show(&slow));

    // Docker job on a node without docker: placement failure, exit 2.
    let t = Instant::now();
    let iot = fleet.edgectl_env(&["job", "run", "iot-publish"], &[]).await;
    eprintln!("TIMING placement failure: {:.2}s", t.elapsed().as_secs_f64());
    eprintln!("--- job run iot-publish\n{}", show(&iot));
    iot.expect(2);
    assert!(
        iot.stderr().contains("missing drivers") && iot.stderr().contains("driver docker"),
        "{}",
        show(&iot)
    );
    let image = ssm(&fleet.stand, "/infrastructure/jobs/iot-publish/version").await;
    assert_eq!(image.as_deref(), Some("0"));
    let job = api.get("/v1/job/iot-publish").await.unwrap();
    assert_eq!(
        job["TaskGroups"][0]["Tasks"][0]["Config"]["image"],
        "123456789012.dkr.ecr.eu-west-1.amazonaws.com/iot-publish:latest"
    );

    // Stop: purge both; a job that is gone is an error.
    for name in ["iot-publish", "heartbeat"] {
        let r = fleet.edgectl_env(&["job", "stop", name, "--purge"], &[]).await;
        r.expect(0);
        assert!(r.stdout().contains("stopped and purged"), "{}", show(&r));
    }
    let r = fleet.edgectl_env(&["job", "stop", "heartbeat"], &[]).await;
    r.expect(1);
    assert!(
        r.stderr().contains("job `heartbeat` is not registered"),
        "{}",
        show(&r)
    );
    let r = fleet.edgectl_env(&["job", "status", "heartbeat"], &[]).await;
    r.expect(1);

    fleet.stop().await;
}
