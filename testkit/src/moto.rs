//! A private moto server (the AWS stand-in, see specs/moto.md) per test.
//!
//! Tests run in parallel, so every `Moto::start()` gets its own server on its
//! own port: no test sees another's state. The server dies with the `Moto`
//! value, and (through PR_SET_PDEATHSIG) with the test process if that is
//! killed before it can run `Drop`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_acmpca::config::{Credentials, SharedCredentialsProvider};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::paths;

/// How long a server may take to answer HTTP. It needs ~1 s on an idle
/// machine, but the test machines are small and busy.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a fresh port when another process took ours between
/// picking it and moto binding it.
const PORT_ATTEMPTS: usize = 5;

/// A running moto server on 127.0.0.1, killed on drop.
pub struct Moto {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub port: u16,
    /// moto's stdout and stderr (in a temp dir removed on drop).
    pub log_path: PathBuf,
    pid: i32,
    /// The thread that spawned moto and waits for it: it reaps the child, and
    /// it must outlive the child because PR_SET_PDEATHSIG fires when the
    /// spawning *thread* exits, not the process.
    waiter: Option<JoinHandle<std::io::Result<ExitStatus>>>,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts a fresh moto server (installing moto first if needed).
    pub async fn start() -> anyhow::Result<Moto> {
        let server = ensure_installed().await?;
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut moto = spawn(&server, free_port()?)?;
            match moto.wait_ready().await {
                Ok(()) => return Ok(moto),
                Err(e) if moto.port_was_taken() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt")).context(format!(
            "moto could not bind a free port in {PORT_ATTEMPTS} attempts"
        ))
    }

    /// An SDK config pointing at this server: eu-west-1, dummy credentials,
    /// and no environment or profile lookups, so the developer's own AWS
    /// setup (AWS_PROFILE, AWS_ENDPOINT_URL_*, ...) cannot leak in.
    pub async fn sdk_config(&self) -> SdkConfig {
        SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("eu-west-1"))
            .credentials_provider(SharedCredentialsProvider::new(Credentials::new(
                "testing", "testing", None, None, "moto",
            )))
            .endpoint_url(&self.url)
            .build()
    }

    /// Wipes all state in this server (`POST /moto-api/reset`).
    pub async fn reset(&self) -> anyhow::Result<()> {
        let (status, body) = http(self.port, "POST", "/moto-api/reset")
            .await
            .context("POST /moto-api/reset")?;
        if status != 200 {
            bail!("POST /moto-api/reset answered HTTP {status}: {body}");
        }
        Ok(())
    }

    /// The last lines of moto's log, for error messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log_path)
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if self.waiter.as_ref().is_some_and(|w| w.is_finished()) {
                let status = self.waiter.take().expect("checked").join();
                bail!(
                    "moto_server exited before answering on port {} ({status:?}); log {}:\n{}",
                    self.port,
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            // Werkzeug logs "Running on" only after *our* server bound the
            // port; without that check a server of a parallel test that
            // grabbed the same port could answer in its place.
            if std::fs::read_to_string(&self.log_path).is_ok_and(|l| l.contains("Running on"))
                && http(self.port, "GET", "/").await.is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "moto_server did not answer HTTP on port {} within {READY_TIMEOUT:?}; log {}:\n{}",
                    self.port,
                    self.log_path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(&self.log_path)
            .is_ok_and(|l| l.contains("Address already in use") || l.contains("is in use"))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(waiter) = self.waiter.take().filter(|w| !w.is_finished()) {
            // moto runs in its own process group; kill the whole group in
            // case it ever forks helpers. The waiter thread then reaps it.
            unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            let _ = waiter.join();
        }
    }
}

/// The venv's moto_server, installed by scripts/install-moto if missing.
async fn ensure_installed() -> anyhow::Result<PathBuf> {
    let version = paths::version("MOTO_VERSION");
    let server = paths::cache_dir()
        .join(format!("moto-{version}"))
        .join("bin/moto_server");
    if server.exists() {
        return Ok(server);
    }
    // The script holds a flock, so parallel tests install it only once.
    let script = paths::repo_root().join("scripts/install-moto");
    let out = tokio::process::Command::new(&script)
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() || !server.exists() {
        bail!(
            "{} failed ({}):\n{}",
            script.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(server)
}

fn spawn(server: &Path, port: u16) -> anyhow::Result<Moto> {
    let dir = tempfile::Builder::new()
        .prefix("edgectl-moto-")
        .tempdir()
        .context("creating a temp dir for the moto log")?;
    let log_path = dir.path().join("moto.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(server);
    cmd.args(["-H", "127.0.0.1", "-p", &port.to_string()])
        // Stricter validation, as specs/moto.md asks.
        .env("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
        .env("MOTO_ENABLE_AMI_VALIDATION", "true")
        .env("MOTO_EC2_ENABLE_INSTANCE_TYPE_VALIDATION", "true")
        // So the log is complete when we show its tail.
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(log.try_clone().context("duplicating the log file handle")?)
        .stderr(log);
    let (pid, waiter) = crate::process::spawn_tied(cmd, libc::SIGKILL)
        .with_context(|| format!("spawning {}", server.display()))?;
    Ok(Moto {
        url: format!("http://127.0.0.1:{port}"),
        port,
        log_path,
        pid,
        waiter: Some(waiter),
        _dir: dir,
    })
}

/// A port that was free a moment ago (the OS picks it; we release it for moto).
fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("binding 127.0.0.1:0")?;
    Ok(l.local_addr().context("reading the bound address")?.port())
}

/// A minimal HTTP/1.0 request (the server closes the connection, so reading
/// to EOF gives the whole response): returns the status code and body.
async fn http(port: u16, method: &str, path: &str) -> anyhow::Result<(u16, String)> {
    let io = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        let req = format!("{method} {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\n\r\n");
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .context("timed out")??;
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.")
        .and_then(|r| r.get(2..5))
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("not an HTTP response: {:.200}", text))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_string()))
}

fn log_tail(path: &Path) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}
