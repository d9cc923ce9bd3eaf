//! `edgectl image publish`: one test per failure mode (docker missing,
//! buildx missing, no build context, no repository in SSM, a failing
//! build) and the happy path, checking the exact docker invocations.
//!
//! Real docker and buildx cannot run here, so docker is a test double: a
//! shell script (named by `EDGECTL_DOCKER`) that records its argv and stdin
//! to a file and prints what docker would. It stands in only for the
//! external program edgectl shells out to; the AWS side (SSM, ECR's
//! GetAuthorizationToken) is moto through the simulator as everywhere else.

mod common;

use base64::Engine;
use common::{Run, Stand};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, PartialEq)]
enum Fake {
    Works,
    NoBuildx,
    BuildFails,
}

const BUILD_ERROR: &str = r#"ERROR: failed to solve: process "/bin/sh -c pip install -r requirements.txt" did not complete successfully: exit code: 1"#;

/// A fake docker in `dir/bin/docker` logging to `dir/docker.log`.
fn fake_docker(dir: &Path, mode: Fake) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let buildx_version = match mode {
        Fake::NoBuildx => {
            "echo \"docker: 'buildx' is not a docker command.\" >&2; echo \"See 'docker --help'\" >&2; exit 1"
        }
        _ => "echo 'github.com/docker/buildx v0.17.1 fake'; exit 0",
    };
    let build = match mode {
        Fake::BuildFails => format!(
            "echo '#1 [internal] load build definition from Dockerfile'; echo '#8 ERROR: exit code: 1' >&2; echo '{BUILD_ERROR}' >&2; exit 1"
        ),
        _ => "echo '#1 [internal] load build definition from Dockerfile'; echo '#9 pushing layers 0.4s done' >&2; exit 0"
            .to_string(),
    };
    let script = r#"#!/bin/sh
log='LOG'
{ echo '--- argv'; for a in "$@"; do printf '%s\n' "$a"; done; } >> "$log"
case "$1" in
  --version) echo 'Docker version 27.3.1, build fake'; exit 0 ;;
  login)
    printf -- '--- stdin\n' >> "$log"
    cat >> "$log"
    printf '\n' >> "$log"
    echo 'Login Succeeded'
    exit 0 ;;
  buildx)
    case "$2" in
      version) BUILDX_VERSION ;;
      build) BUILD ;;
    esac ;;
esac
echo "fake docker: unexpected arguments: $*" >&2
exit 3
"#
    .replace("LOG", &dir.join("docker.log").display().to_string())
    .replace("BUILDX_VERSION", buildx_version)
    .replace("BUILD", &build);
    let path = bin.join("docker");
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// One docker invocation as the fake recorded it.
#[derive(Debug, Default, Clone)]
struct Call {
    argv: Vec<String>,
    stdin: Option<String>,
}

fn calls(dir: &Path) -> Vec<Call> {
    let text = std::fs::read_to_string(dir.join("docker.log")).unwrap_or_default();
    let mut calls: Vec<Call> = Vec::new();
    let mut in_stdin = false;
    for line in text.lines() {
        match line {
            "--- argv" => {
                calls.push(Call::default());
                in_stdin = false;
            }
            "--- stdin" => {
                in_stdin = true;
                calls.last_mut().unwrap().stdin = Some(String::new());
            }
            l if in_stdin => calls.last_mut().unwrap().stdin.as_mut().unwrap().push_str(l),
            l => calls.last_mut().unwrap().argv.push(l.to_string()),
        }
    }
    calls
}

fn argvs(calls: &[Call]) -> Vec<Vec<String>> {
    calls.iter().map(|c| c.argv.clone()).collect()
}

fn strings(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

/// A build context with a Dockerfile.
fn context(dir: &Path) -> PathBuf {
    let ctx = dir.join("app");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("Dockerfile"), "FROM scratch\n").unwrap();
    ctx
}

/// `edgectl image publish ARGS` with no AWS reachable at all: for the
/// checks that must fail before any AWS call.
fn publish_offline(dir: &Path, docker: Option<&Path>, path: &Path, args: &[&str]) -> Run {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.args(["image", "publish"])
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("PATH", path)
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing");
    if let Some(d) = docker {
        cmd.env("EDGECTL_DOCKER", d);
    }
    Run(cmd.output().expect("edgectl runs"), None)
}

/// `edgectl image publish ARGS` against the stand, with this docker.
async fn publish(stand: &Stand, docker: &Path, args: &[&str]) -> Run {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
    cmd.arg("--config")
        .arg(stand.config_path())
        .args(["image", "publish"])
        .args(args);
    stand.env(&mut cmd);
    cmd.env("EDGECTL_DOCKER", docker);
    common::run(cmd).await
}

#[test]
fn missing_docker_is_one_error_line_with_an_install_hint() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let ctx = ctx.to_str().unwrap();

    let run = publish_offline(
        dir.path(),
        Some(Path::new("/nonexistent")),
        dir.path(),
        &["iot-publish", "--context", ctx],
    );
    run.expect(1);
    let err = run.stderr();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(
        lines[0].starts_with("error: docker not found: cannot run `/nonexistent` ("),
        "{err}"
    );
    assert_eq!(
        lines[1],
        "hint: install Docker (https://docs.docker.com/engine/install/), or set `EDGECTL_DOCKER` to the docker binary"
    );

    // Without EDGECTL_DOCKER, `docker` on a PATH that has none.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let run = publish_offline(dir.path(), None, &empty, &["iot-publish", "--context", ctx]);
    run.expect(1);
    assert!(
        run.stderr()
            .starts_with("error: docker not found: cannot run `docker` ("),
        "{}",
        run.stderr()
    );
}

#[test]
fn missing_buildx_names_the_plugin() {
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let docker = fake_docker(dir.path(), Fake::NoBuildx);
    let run = publish_offline(
        dir.path(),
        Some(&docker),
        dir.path(),
        &["iot-publish", "--context", ctx.to_str().unwrap()],
    );
    run.expect(1);
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "error: docker buildx is not available: `{} buildx version` failed: docker: 'buildx' is not a docker command.",
            docker.display()
        )),
        "{err}"
    );
    assert!(
        err.contains(
            "hint: install the buildx plugin (Debian/Ubuntu: `apt-get install docker-buildx-plugin`"
        ),
        "{err}"
    );
    assert_eq!(
        argvs(&calls(dir.path())),
        [strings(&["--version"]), strings(&["buildx", "version"])]
    );
}

#[test]
fn a_missing_build_context_is_named_before_docker_runs() {
    let dir = tempfile::tempdir().unwrap();
    let docker = fake_docker(dir.path(), Fake::Works);
    // The default context is jobs/NAME under the working directory.
    let run = publish_offline(dir.path(), Some(&docker), dir.path(), &["iot-publish"]);
    run.expect(1);
    assert!(
        run.stderr()
            .contains("error: the build context `jobs/iot-publish` is not a directory"),
        "{}",
        run.stderr()
    );
    assert!(
        run.stderr().contains("hint: pass `--context DIR`"),
        "{}",
        run.stderr()
    );
    assert!(calls(dir.path()).is_empty());
    // A bad tag is invalid input (exit 2).
    publish_offline(
        dir.path(),
        Some(&docker),
        dir.path(),
        &["iot-publish", "--tag", "-x"],
    )
    .expect(2);
}

#[tokio::test]
async fn publish_logs_in_on_stdin_then_builds_and_pushes_for_arm64() {
    let stand = Stand::start().await;
    let dir = tempfile::tempdir().unwrap();
    let ctx = context(dir.path());
    let ctx_arg = ctx.to_str().unwrap();
    let docker = fake_docker(dir.path(), Fake::Works);

    // No repository yet: a clear error that says how to make one, and
    // neither login nor build.
    let run = publish(&stand, &docker, &["iot-publish", "--context", ctx_arg]).await;
    run.expect(1);
    let err = run.stderr();
    assert!(
        err.contains(
            "error: no ECR repository for `iot-publish`: `/infrastructure/ecr/iot-publish/uri` is not in SSM in eu-west-1"
        ),
        "{err}"
    );
    assert!(
        err.contains("hint: run `edgectl cloud up --only registry` first"),
        "{err}"
    );
    assert_eq!(
        argvs(&calls(dir.path())),
        [strings(&["--version"]), strings(&["buildx", "version"])]
    );

    stand.edgectl(&["cloud", "up", "--only=registry"]).await.expect(0);
    let uri = common::ssm(&stand, "/infrastructure/ecr/iot-publish/uri")
        .await
        .expect("the registry's output");
    let registry = uri.split('/').next().unwrap().to_string();

    // Dry run: the two commands, the password masked; docker is asked only
    // for its version, and nothing is written anywhere.
    std::fs::remove_file(dir.path().join("docker.log")).unwrap();
    stand.sim.reset_requests();
    let dry = publish(
        &stand,
        &docker,
        &["iot-publish", "--context", ctx_arg, "--dry-run"],
    )
    .await;
    dry.expect(0);
    let d = docker.display();
    assert_eq!(
        dry.stdout(),
        format!(
            "Would run:\n  {d} login --username AWS --password-stdin {registry} < (sensitive)\n  {d} buildx build --platform linux/arm64 -t {uri}:latest --push {ctx_arg}\n"
        )
    );
    assert_eq!(
        argvs(&calls(dir.path())),
        [strings(&["--version"]), strings(&["buildx", "version"])]
    );
    assert!(stand.writes().is_empty(), "{:?}", stand.writes());

    // The real thing.
    std::fs::remove_file(dir.path().join("docker.log")).unwrap();
    let run = publish(&stand, &docker, &["iot-publish", "--context", ctx_arg]).await;
    run.expect(0);
    let calls = calls(dir.path());
    assert_eq!(
        argvs(&calls),
        [
            strings(&["--version"]),
            strings(&["buildx", "version"]),
            strings(&["login", "--username", "AWS", "--password-stdin", &registry]),
            strings(&[
                "buildx",
                "build",
                "--platform",
                "linux/arm64",
                "-t",
                &format!("{uri}:latest"),
                "--push",
                ctx_arg
            ]),
        ]
    );
    // The password ECR hands out reached docker login's stdin, and only that.
    let token = aws_sdk_ecr::Client::new(&stand.sdk().await)
        .get_authorization_token()
        .send()
        .await
        .unwrap()
        .authorization_data
        .unwrap()
        .remove(0)
        .authorization_token
        .unwrap();
    let decoded = base64::engine::general_purpose::STANDARD.decode(token).unwrap();
    let password = String::from_utf8(decoded)
        .unwrap()
        .strip_prefix("AWS:")
        .unwrap()
        .to_string();
    assert!(!password.is_empty());
    assert_eq!(calls[2].stdin.as_deref(), Some(password.as_str()));
    for c in &calls {
        assert!(
            c.argv.iter().all(|a| !a.contains(&password)),
            "password on a command line: {c:?}"
        );
        if c.argv[0] != "login" {
            assert_eq!(c.stdin, None, "{c:?}");
        }
    }
    assert!(!run.stdout().contains(&password), "{}", run.stdout());
    assert!(!run.stderr().contains(&password), "{}", run.stderr());
    // Docker's output, both streams, went to stderr; the result to stdout.
    let err = run.stderr();
    for line in [
        "Login Succeeded",
        "#1 [internal] load build definition from Dockerfile",
        "#9 pushing layers 0.4s done",
    ] {
        assert!(err.contains(line), "{line} missing from stderr:\n{err}");
    }
    assert_eq!(run.stdout(), format!("Pushed {uri}:latest (linux/arm64)\n"));

    // Another tag and platform list go to buildx as given.
    std::fs::remove_file(dir.path().join("docker.log")).unwrap();
    publish(
        &stand,
        &docker,
        &[
            "iot-publish",
            "--context",
            ctx_arg,
            "--tag",
            "v2",
            "--platform",
            "linux/arm64,linux/amd64",
        ],
    )
    .await
    .expect(0);
    let build = calls_of(dir.path(), "build");
    assert_eq!(
        build,
        strings(&[
            "buildx",
            "build",
            "--platform",
            "linux/arm64,linux/amd64",
            "-t",
            &format!("{uri}:v2"),
            "--push",
            ctx_arg
        ])
    );

    // A failing build: exit 1, and the error ends with docker's last line.
    let failing_dir = tempfile::tempdir().unwrap();
    let failing = fake_docker(failing_dir.path(), Fake::BuildFails);
    let run = publish(&stand, &failing, &["iot-publish", "--context", ctx_arg]).await;
    run.expect(1);
    let err = run.stderr();
    assert!(
        err.contains(&format!(
            "error: `docker buildx build` failed (exit status 1): {BUILD_ERROR}"
        )),
        "{err}"
    );
    assert!(!err.contains(&password), "{err}");
}

/// The argv of the one `buildx build` (or other second word) call.
fn calls_of(dir: &Path, second: &str) -> Vec<String> {
    let found: Vec<Call> = calls(dir)
        .into_iter()
        .filter(|c| c.argv.get(1).map(String::as_str) == Some(second))
        .collect();
    assert_eq!(found.len(), 1, "{found:?}");
    found[0].argv.clone()
}
