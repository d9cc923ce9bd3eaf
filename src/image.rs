//! `edgectl image publish NAME`: build an image for the devices with
//! `docker buildx` and push it to the ECR repository the registry component
//! made. Optional: only operators who build images need docker.
//!
//! Steps, each failing with its own one-line error: the build context is a
//! directory, `docker` runs, `docker buildx version` runs (all before any
//! AWS call); the repository URI is in SSM; ECR hands out a login token
//! (GetAuthorizationToken); `docker login --username AWS --password-stdin
//! <registry>` with the password on stdin only; `docker buildx build
//! --platform <platform> -t <uri>:<tag> --push <context>`. Docker's own
//! output streams to stderr. `--dry-run` stops before the token and shows
//! the two commands.

use crate::aws::SdkResultExt;
use crate::cloud::Ctx;
use crate::error::{InvalidInput, User};
use crate::outputs;
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Everything `image publish` needs, resolved once by `main`.
#[derive(Debug, Clone)]
pub struct PublishSettings {
    pub name: String,
    pub tag: String,
    pub platform: String,
    pub context: PathBuf,
    /// The docker CLI: `EDGECTL_DOCKER` when set, else `docker` on PATH.
    pub docker: PathBuf,
    pub dry_run: bool,
}

/// One docker invocation: its arguments and what goes to its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerRun {
    pub args: Vec<String>,
    pub stdin: Option<Secret>,
}

impl DockerRun {
    /// The command line as shown to the user; stdin is never shown.
    pub fn render(&self, docker: &Path) -> String {
        let mut s = docker.display().to_string();
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if let Some(secret) = &self.stdin {
            s.push_str(&format!(" < {secret}"));
        }
        s
    }
}

/// What `image publish` did (or, with `--dry-run`, would do).
#[derive(Debug, Serialize)]
pub struct PublishReport {
    pub image: String,
    pub registry: String,
    pub platform: String,
    pub dry_run: bool,
    /// The docker commands, as rendered (stdin as `(sensitive)`).
    pub commands: Vec<String>,
}

/// Live progress: which command starts, and each line docker prints.
pub trait Progress: Sync {
    fn running(&self, command: &str);
    fn docker(&self, line: &str);
}

// ---- pure parts ----------------------------------------------------------

/// Checks the flags; a bad value is invalid input (exit 2).
pub fn validate(s: &PublishSettings) -> Result<()> {
    let mut problems = Vec::new();
    let alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let name_ok = !s.name.is_empty()
        && s.name.len() <= 128
        && s.name.starts_with(alnum)
        && s.name.ends_with(alnum)
        && s.name.chars().all(|c| alnum(c) || "._-".contains(c));
    if !name_ok {
        problems.push(format!(
            "image publish: NAME {:?} must be lower-case letters, digits, '.', '_' or '-', starting and ending with a letter or digit",
            s.name
        ));
    }
    let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let tag_ok = s.tag.len() <= 128
        && s.tag.starts_with(word)
        && s.tag.chars().all(|c| word(c) || c == '.' || c == '-');
    if !tag_ok {
        problems.push(format!(
            "--tag: {:?} must be 1-128 letters, digits, '_', '.' or '-', not starting with '.' or '-'",
            s.tag
        ));
    }
    if s.platform.is_empty() || s.platform.chars().any(char::is_whitespace) {
        problems.push(format!(
            "--platform: {:?} must be a platform such as linux/arm64",
            s.platform
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(InvalidInput(problems).into())
    }
}

/// The registry host of a repository URI (`<account>.dkr.ecr.<region>.amazonaws.com`).
pub fn registry_of(uri: &str) -> &str {
    uri.split('/').next().unwrap_or(uri)
}

pub fn login(registry: &str, password: Secret) -> DockerRun {
    DockerRun {
        args: ["login", "--username", "AWS", "--password-stdin", registry]
            .map(String::from)
            .to_vec(),
        stdin: Some(password),
    }
}

pub fn build(uri: &str, tag: &str, platform: &str, context: &Path) -> DockerRun {
    DockerRun {
        args: vec![
            "buildx".into(),
            "build".into(),
            "--platform".into(),
            platform.into(),
            "-t".into(),
            format!("{uri}:{tag}"),
            "--push".into(),
            context.display().to_string(),
        ],
        stdin: None,
    }
}

/// An ECR authorization token is base64 of `AWS:<password>`.
pub fn password_of(token: &str) -> Result<Secret> {
    let raw = decode_base64(token).context("the ECR authorization token is not base64")?;
    let text =
        String::from_utf8(raw).map_err(|_| anyhow::anyhow!("the ECR authorization token is not text"))?;
    match text.split_once(':') {
        Some(("AWS", password)) if !password.is_empty() => Ok(Secret::new(password)),
        _ => bail!("the ECR authorization token is not `AWS:<password>`"),
    }
}

/// Standard base64, padding optional: the strict decoder after padding.
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    let s = s.trim().trim_end_matches('=');
    crate::pki::base64_decode(&format!("{s}{}", "=".repeat((4 - s.len() % 4) % 4)))
}

// ---- docker --------------------------------------------------------------

fn docker_missing(docker: &Path, why: &std::io::Error) -> anyhow::Error {
    User::new(
        format!("docker not found: cannot run `{}` ({why})", docker.display()),
        "install Docker (https://docs.docker.com/engine/install/), or set `EDGECTL_DOCKER` to the docker binary",
    )
    .into()
}

/// Runs `docker ARGS` quietly and returns (success, first line of output).
async fn probe(docker: &Path, args: &[&str]) -> Result<(bool, String)> {
    let out = tokio::process::Command::new(docker)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| docker_missing(docker, &e))?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), first_line(&text)))
}

/// The first line that says something: docker puts its reason there
/// ("docker: 'buildx' is not a docker command.").
fn first_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no output)")
        .to_string()
}

/// Before anything else: the build context, docker, and buildx.
pub async fn preflight(s: &PublishSettings) -> Result<()> {
    if !s.context.is_dir() {
        bail!(User::new(
            format!("the build context `{}` is not a directory", s.context.display()),
            "pass `--context DIR`, a directory with a Dockerfile",
        ));
    }
    let docker = &s.docker;
    let (ok, why) = probe(docker, &["--version"]).await?;
    if !ok {
        bail!(User::new(
            format!("docker does not work: `{} --version` failed: {why}", docker.display()),
            "install Docker (https://docs.docker.com/engine/install/), or set `EDGECTL_DOCKER` to the docker binary",
        ));
    }
    let (ok, why) = probe(docker, &["buildx", "version"]).await?;
    if !ok {
        bail!(User::new(
            format!("docker buildx is not available: `{} buildx version` failed: {why}", docker.display()),
            "install the buildx plugin (Debian/Ubuntu: `apt-get install docker-buildx-plugin`; see https://docs.docker.com/go/buildx/)",
        ));
    }
    Ok(())
}

/// Runs one docker command, streaming its stdout and stderr line by line
/// to `progress`; a failure carries docker's last line (on stderr).
async fn run(docker: &Path, cmd: &DockerRun, progress: &dyn Progress) -> Result<()> {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let words: Vec<&str> = cmd
        .args
        .iter()
        .map(String::as_str)
        .take_while(|a| !a.starts_with('-'))
        .collect();
    let what = format!("docker {}", words.join(" "));
    progress.running(&cmd.render(docker));
    let mut child = tokio::process::Command::new(docker)
        .args(&cmd.args)
        .stdin(if cmd.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| docker_missing(docker, &e))?;
    if let Some(secret) = &cmd.stdin {
        let mut stdin = child.stdin.take().context("docker's stdin")?;
        // A docker that exits without reading is reported by its status.
        let _ = stdin.write_all(secret.expose().as_bytes()).await;
        drop(stdin);
    }
    let mut out = BufReader::new(child.stdout.take().context("docker's stdout")?).split(b'\n');
    let mut err = BufReader::new(child.stderr.take().context("docker's stderr")?).split(b'\n');
    let (mut out_open, mut err_open) = (true, true);
    // Docker's reason for a failure is its last line on stderr (stdout only
    // when stderr said nothing); the streams interleave in no fixed order.
    let (mut last_out, mut last_err) = (String::new(), String::new());
    while out_open || err_open {
        let (from_out, line) = tokio::select! {
            l = out.next_segment(), if out_open => (true, l),
            l = err.next_segment(), if err_open => (false, l),
        };
        match line.with_context(|| format!("reading the output of `{what}`"))? {
            Some(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let text = text.trim_end_matches('\r');
                progress.docker(text);
                if !text.trim().is_empty() {
                    let last = if from_out { &mut last_out } else { &mut last_err };
                    *last = text.trim().to_string();
                }
            }
            None if from_out => out_open = false,
            None => err_open = false,
        }
    }
    let status = child
        .wait()
        .await
        .with_context(|| format!("waiting for `{what}`"))?;
    if !status.success() {
        let code = status
            .code()
            .map(|c| format!("exit status {c}"))
            .unwrap_or_else(|| "killed by a signal".into());
        let last = [last_err, last_out]
            .into_iter()
            .find(|l| !l.is_empty())
            .unwrap_or_else(|| "(no output)".into());
        bail!("`{what}` failed ({code}): {last}");
    }
    Ok(())
}

// ---- publish -------------------------------------------------------------

/// The repository URI the registry component wrote to SSM.
async fn repository_uri(ctx: &Ctx, name: &str) -> Result<String> {
    let param = outputs::ecr_uri(name);
    let found = ctx.outputs.read(&[param.as_str()]).await?;
    match found.get(&param) {
        Some(uri) if !uri.expose().is_empty() => Ok(uri.expose().to_string()),
        _ => Err(User::new(
            format!(
                "no ECR repository for `{name}`: `{}` is not in SSM in {}",
                ctx.outputs.path(&param),
                ctx.aws.region
            ),
            if ctx.deployment == "default" {
                "run `edgectl cloud up --only registry` first (it makes the repository for `iot-publish`)".to_string()
            } else {
                format!(
                    "run `edgectl --deployment {} cloud up --only registry` first (it makes the repository for `iot-publish`)",
                    ctx.deployment
                )
            },
        )
        .into()),
    }
}

/// The registry's login password from ECR (GetAuthorizationToken).
async fn ecr_password(ctx: &Ctx) -> Result<Secret> {
    let out = aws_sdk_ecr::Client::new(&ctx.aws.config)
        .get_authorization_token()
        .send()
        .await
        .op(|| format!("getting an ECR login token in {}", ctx.aws.region))?;
    let token = out
        .authorization_data
        .unwrap_or_default()
        .into_iter()
        .find_map(|d| d.authorization_token)
        .context("GetAuthorizationToken returned no token")?;
    password_of(&token)
}

/// Logs in to the repository's registry and builds and pushes the image.
/// [`preflight`] has run already.
pub async fn publish(ctx: &Ctx, s: &PublishSettings, progress: &dyn Progress) -> Result<PublishReport> {
    let uri = repository_uri(ctx, &s.name).await?;
    let registry = registry_of(&uri).to_string();
    let build = build(&uri, &s.tag, &s.platform, &s.context);
    let mut report = PublishReport {
        image: format!("{uri}:{}", s.tag),
        registry: registry.clone(),
        platform: s.platform.clone(),
        dry_run: s.dry_run,
        commands: Vec::new(),
    };
    if s.dry_run {
        // The password is a placeholder: a dry run asks ECR for nothing.
        let login = login(&registry, Secret::new(""));
        report.commands = vec![login.render(&s.docker), build.render(&s.docker)];
        return Ok(report);
    }
    let login = login(&registry, ecr_password(ctx).await?);
    run(&s.docker, &login, progress)
        .await
        .with_context(|| format!("logging in to {registry}"))?;
    report.commands.push(login.render(&s.docker));
    run(&s.docker, &build, progress).await?;
    report.commands.push(build.render(&s.docker));
    Ok(report)
}

// ---- terminal ------------------------------------------------------------

/// Progress on stderr: the command about to run, then docker's lines as
/// they come, indented.
pub struct StderrProgress;

impl Progress for StderrProgress {
    fn running(&self, command: &str) {
        eprintln!("$ {command}");
    }

    fn docker(&self, line: &str) {
        eprintln!("  {line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> PublishSettings {
        PublishSettings {
            name: "iot-publish".into(),
            tag: "latest".into(),
            platform: "linux/arm64".into(),
            context: "jobs/iot-publish".into(),
            docker: "docker".into(),
            dry_run: false,
        }
    }

    #[test]
    fn commands_are_the_documented_ones() {
        let uri = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/iot-publish";
        let l = login(registry_of(uri), Secret::new("hunter2"));
        assert_eq!(
            l.args,
            [
                "login",
                "--username",
                "AWS",
                "--password-stdin",
                "123456789012.dkr.ecr.eu-west-1.amazonaws.com"
            ]
        );
        assert_eq!(
            l.render(Path::new("docker")),
            "docker login --username AWS --password-stdin 123456789012.dkr.ecr.eu-west-1.amazonaws.com < (sensitive)"
        );
        assert!(!format!("{l:?}").contains("hunter2"));
        let b = build(uri, "v2", "linux/arm64", Path::new("jobs/iot-publish"));
        assert_eq!(
            b.render(Path::new("/usr/bin/docker")),
            "/usr/bin/docker buildx build --platform linux/arm64 -t 123456789012.dkr.ecr.eu-west-1.amazonaws.com/iot-publish:v2 --push jobs/iot-publish"
        );
        assert_eq!(
            registry_of("1.dkr.ecr.eu-west-1.amazonaws.com/blue/iot-publish"),
            "1.dkr.ecr.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn the_password_comes_from_the_token() {
        // base64("AWS:123456789012-auth-token"), what moto hands out.
        let p = password_of("QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu").unwrap();
        assert_eq!(p.expose(), "123456789012-auth-token");
        assert_eq!(decode_base64("YQ==").unwrap(), b"a");
        assert_eq!(decode_base64("YWI=").unwrap(), b"ab");
        assert_eq!(decode_base64("YWJj").unwrap(), b"abc");
        assert!(decode_base64("a").is_none() && decode_base64("YW!j").is_none());
        // base64("user:pw") and base64("AWS:"): not an ECR token.
        assert!(password_of("dXNlcjpwdw==").is_err());
        assert!(password_of("QVdTOg==").is_err());
        assert!(password_of("not base64!").is_err());
    }

    #[test]
    fn bad_flags_are_invalid_input() {
        assert!(validate(&settings()).is_ok());
        type Edit = fn(&mut PublishSettings);
        let cases: [(&str, Edit); 5] = [
            ("NAME", |s| s.name = "Iot".into()),
            ("NAME", |s| s.name = "iot-".into()),
            ("--tag", |s| s.tag = "-x".into()),
            ("--tag", |s| s.tag = "a b".into()),
            ("--platform", |s| s.platform = String::new()),
        ];
        for (flag, edit) in cases {
            let mut s = settings();
            edit(&mut s);
            let err = validate(&s).unwrap_err();
            assert!(crate::error::is_invalid_input(&err), "{err}");
            assert!(err.to_string().contains(flag), "{flag}: {err}");
        }
    }

    #[test]
    fn first_line_skips_blank_ones() {
        assert_eq!(
            first_line("\ndocker: 'buildx' is not a docker command.\nSee 'docker --help'\n"),
            "docker: 'buildx' is not a docker command."
        );
        assert_eq!(first_line("\n"), "(no output)");
    }
}
