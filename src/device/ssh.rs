//! SSH sessions to devices (russh): host keys checked against known_hosts,
//! one connection per host reused for every step.
//!
//! Errors name the target: `{:#}` of an error from here reads
//! `pi-01 (10.0.0.5:22): connection refused`. The refusals callers branch on
//! are an [`SshError`] (find it with `err.downcast_ref::<SshError>()`) over a
//! [`crate::error::User`] with the hint, whose message is the consequence:
//! `pi-01 (10.0.0.5:22): unknown host key SHA256:…; not in /root/.ssh/known_hosts: not connecting`
//! (see `user_error` for why the hint cannot ride on a `.context()`).

use std::fmt;
use std::io::{ErrorKind, Read as _, Seek as _, SeekFrom, Write as _};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use russh::client;
use russh::keys::agent::client::AgentClient;
use russh::keys::{HashAlg, PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{ChannelMsg, Disconnect};
use tokio::io::AsyncReadExt as _;

use crate::error::User;

/// Stdin of a streamed file is sent in chunks of this size.
const CHUNK: usize = 64 * 1024;
/// Default identity files, in the order tried (as OpenSSH does).
const DEFAULT_KEYS: [&str; 3] = ["id_ed25519", "id_ecdsa", "id_rsa"];

/// Where and as whom to connect.
#[derive(Clone, Debug)]
pub struct Target {
    /// The inventory name, for messages.
    pub name: String,
    pub host: String,
    pub port: u16,
    pub user: String,
    /// A private key file (tilde already expanded).
    pub key_file: Option<PathBuf>,
}

impl Target {
    /// `pi-01 (10.0.0.5:22)`: how errors name the target.
    pub fn label(&self) -> String {
        format!("{} ({})", self.name, host_port(&self.host, self.port))
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub known_hosts: PathBuf,
    /// Record unknown host keys instead of refusing them. A changed key is
    /// refused regardless.
    pub accept_new_host_keys: bool,
    /// TCP connect, handshake and authentication.
    pub connect_timeout: Duration,
    /// Each [`Session::run`].
    pub exec_timeout: Duration,
    pub keepalive: Duration,
}

impl Options {
    pub fn default_for(home: &Path) -> Options {
        Options {
            known_hosts: home.join(".ssh").join("known_hosts"),
            accept_new_host_keys: false,
            connect_timeout: Duration::from_secs(10),
            exec_timeout: Duration::from_secs(600),
            keepalive: Duration::from_secs(15),
        }
    }
}

/// A finished command.
#[derive(Clone, PartialEq, Eq)]
pub struct Output {
    pub status: u32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
}

impl Output {
    pub fn ok(&self) -> bool {
        self.status == 0
    }

    /// The last non-empty line of stderr, trimmed (for one-line errors).
    pub fn stderr_line(&self) -> String {
        String::from_utf8_lossy(&self.stderr)
            .lines()
            .map(str::trim)
            .rfind(|l| !l.is_empty())
            .unwrap_or_default()
            .to_string()
    }
}

impl fmt::Debug for Output {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Output")
            .field("status", &self.status)
            .field("stdout", &String::from_utf8_lossy(&self.stdout))
            .field("stderr", &String::from_utf8_lossy(&self.stderr))
            .finish()
    }
}

/// What to feed a command on stdin (never logged: it can hold private keys).
#[derive(Clone, Copy)]
pub enum Stdin<'a> {
    Bytes(&'a [u8]),
    /// Streamed in 64 KiB chunks, never read whole into memory.
    File(&'a Path),
}

impl fmt::Debug for Stdin<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stdin::Bytes(b) => write!(f, "Bytes({} bytes)", b.len()),
            Stdin::File(p) => write!(f, "File({})", p.display()),
        }
    }
}

/// Errors callers branch on. Each is wrapped in a [`User`] naming the
/// target and giving a hint; see the module docs. `host` is the address as
/// `host:port` (`[host]:port` for IPv6).
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    #[error("unknown host key {fingerprint}; not in {}", known_hosts.display())]
    UnknownHostKey {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
    },
    #[error(
        "HOST KEY CHANGED: the device presents {fingerprint}, but {}:{line} has another key of \
         that type for it",
        known_hosts.display()
    )]
    HostKeyChanged {
        host: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("authentication as {user} failed; tried {}", tried_list(tried))]
    AuthFailed {
        user: String,
        host: String,
        tried: Vec<String>,
    },
    #[error("sudo needs a password for {user}")]
    SudoPassword { user: String, host: String },
    #[error("the key {} is encrypted (passphrase-protected)", path.display())]
    EncryptedKey { path: PathBuf },
    /// TCP connect failed (refused, no route, DNS) or timed out during
    /// connect, handshake or authentication.
    #[error("{reason}")]
    Unreachable { host: String, reason: String },
    #[error("timed out after {} running `{command}`", secs(*after))]
    ExecTimeout {
        host: String,
        command: String,
        after: Duration,
    },
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "no key: no key file given, no ssh-agent identity, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa".into()
    } else {
        tried.join(", ")
    }
}

fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{d:?}")
    }
}

fn host_port(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The known_hosts name of a host: `host`, or `[host]:port` off port 22.
fn known_hosts_name(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The error for `err` at the target `label`, as `label: err[: consequence]`.
///
/// `crate::error::hints` finds only a [`User`] that is a real link of the
/// chain (a `.context(User)` is not), and every link shows in `{:#}`; so a
/// hinted error is `User { message: consequence, hint }` under `err` (which
/// `downcast_ref::<SshError>()` finds) under the label.
fn user_error(label: &str, err: SshError, target: &Target) -> anyhow::Error {
    let kh_name = known_hosts_name(&target.host, target.port);
    let (consequence, hint) = match &err {
        SshError::UnknownHostKey { .. } => (
            "not connecting",
            format!(
                "check the fingerprint on the device (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`), \
             then record it: `edgectl device provision {} --accept-new-host-keys`",
                target.name
            ),
        ),
        SshError::HostKeyChanged { known_hosts, .. } => (
            "not connecting",
            format!(
                "if the device was reinstalled, check its new fingerprint on the device \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub`) and remove the old key with \
                 `ssh-keygen -R '{kh_name}' -f {}`; otherwise someone may be intercepting the connection",
                known_hosts.display()
            ),
        ),
        SshError::AuthFailed { user, .. } => (
            "not logged in",
            format!(
                "authorize your public key for {user} on the device (~{user}/.ssh/authorized_keys), \
                 load the right key into ssh-agent (`ssh-add`), or set the key file in the inventory \
                 (`ansible_ssh_private_key_file`)"
            ),
        ),
        SshError::SudoPassword { user, .. } => (
            "nothing was run",
            format!("give {user} passwordless sudo (NOPASSWD) on the device, or connect as root"),
        ),
        SshError::EncryptedKey { path } => (
            "edgectl does not ask for passphrases",
            format!(
                "load it into ssh-agent (`ssh-add {}`): edgectl then signs with the agent's copy",
                path.display()
            ),
        ),
        SshError::Unreachable { .. } | SshError::ExecTimeout { .. } => {
            return anyhow::Error::new(err).context(label.to_string())
        }
    };
    anyhow::Error::new(User::new(consequence, hint))
        .context(err)
        .context(label.to_string())
}

/// russh's host key verdicts come back through the handler's error type.
#[derive(Debug)]
enum HandlerError {
    Ssh(russh::Error),
    HostKey(SshError),
    Other(anyhow::Error),
}

impl From<russh::Error> for HandlerError {
    fn from(e: russh::Error) -> Self {
        HandlerError::Ssh(e)
    }
}

struct Client {
    host: String,
    port: u16,
    known_hosts: PathBuf,
    accept_new: bool,
}

impl client::Handler for Client {
    type Error = HandlerError;

    async fn check_server_key(&mut self, key: &PublicKey) -> Result<bool, Self::Error> {
        check_host_key(&self.host, self.port, key, &self.known_hosts, self.accept_new)?;
        Ok(true)
    }
}

/// Serialises appends to known_hosts by the sessions of this process.
static LEARN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Ok when `key` is recorded for the host; records it when unknown and
/// `accept_new`; refuses a changed key always.
fn check_host_key(
    host: &str,
    port: u16,
    key: &PublicKey,
    known_hosts: &Path,
    accept_new: bool,
) -> Result<(), HandlerError> {
    let fingerprint = key.fingerprint(HashAlg::Sha256).to_string();
    let recorded = russh::keys::known_hosts::known_host_keys_path(host, port, known_hosts)
        .map_err(|e| HandlerError::Other(anyhow!("reading {}: {e}", known_hosts.display())))?;
    if recorded.iter().any(|(_, k)| k.key_data() == key.key_data()) {
        return Ok(());
    }
    if let Some((n, _)) = recorded.iter().find(|(_, k)| key_type(k) == key_type(key)) {
        return Err(HandlerError::HostKey(SshError::HostKeyChanged {
            host: host_port(host, port),
            fingerprint,
            known_hosts: known_hosts.to_path_buf(),
            line: file_line(known_hosts, *n),
        }));
    }
    if !accept_new {
        return Err(HandlerError::HostKey(SshError::UnknownHostKey {
            host: host_port(host, port),
            fingerprint,
            known_hosts: known_hosts.to_path_buf(),
        }));
    }
    let _g = LEARN.lock().unwrap_or_else(|e| e.into_inner());
    learn(host, port, key, known_hosts)
        .with_context(|| {
            format!(
                "recording the host key {fingerprint} in {}",
                known_hosts.display()
            )
        })
        .map_err(HandlerError::Other)?;
    tracing::info!(
        "{}: recorded new host key {fingerprint} in {}",
        host_port(host, port),
        known_hosts.display()
    );
    Ok(())
}

/// Appends the host key, creating the file (0600) and its directory (0700)
/// when missing.
fn learn(host: &str, port: u16, key: &PublicKey, known_hosts: &Path) -> anyhow::Result<()> {
    if let Some(dir) = known_hosts.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)?;
        }
    }
    // Not russh's learn_known_hosts_path: it starts an empty file with a
    // blank line and writes in several pieces.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .mode(0o600)
        .open(known_hosts)?;
    let mut line = String::new();
    let len = f.metadata()?.len();
    if len > 0 {
        let mut last = [0u8; 1];
        f.seek(SeekFrom::Start(len - 1))?;
        f.read_exact(&mut last)?;
        if last[0] != b'\n' {
            line.push('\n');
        }
    }
    let mut key = key.clone();
    key.set_comment("");
    line.push_str(&format!(
        "{} {}\n",
        known_hosts_name(host, port),
        key.to_openssh()?.trim()
    ));
    // One write of an O_APPEND file: concurrent appends do not interleave.
    f.write_all(line.as_bytes())?;
    Ok(())
}

/// Host key types as known_hosts compares them (RSA regardless of hash).
fn key_type(k: &PublicKey) -> String {
    alg_type(&k.algorithm())
}

fn alg_type(alg: &russh::keys::Algorithm) -> String {
    match alg {
        russh::keys::Algorithm::Rsa { .. } => "ssh-rsa".into(),
        a => a.as_str().to_string(),
    }
}

/// russh numbers known_hosts lines skipping comment lines; the real line.
fn file_line(path: &Path, russh_line: usize) -> usize {
    let Ok(text) = std::fs::read(path) else {
        return russh_line;
    };
    let mut counted = 0;
    for (i, line) in text.split(|b| *b == b'\n').enumerate() {
        if line.first() == Some(&b'#') {
            continue;
        }
        counted += 1;
        if counted == russh_line {
            return i + 1;
        }
    }
    russh_line
}

/// One SSH connection to a device.
pub struct Session {
    handle: client::Handle<Client>,
    label: String,
    target: Target,
    exec_timeout: Duration,
    round_trips: AtomicU32,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session").field("target", &self.label).finish()
    }
}

impl Session {
    /// Connects and authenticates (bounded by `opts.connect_timeout`).
    pub async fn connect(target: &Target, opts: &Options) -> anyhow::Result<Session> {
        let label = target.label();
        let handle = match tokio::time::timeout(opts.connect_timeout, connect(target, opts)).await {
            Ok(Ok(h)) => h,
            Ok(Err(Failure::Ssh(e))) => return Err(user_error(&label, e, target)),
            Ok(Err(Failure::Other(e))) => return Err(e.context(label)),
            Err(_) => {
                let e = SshError::Unreachable {
                    host: host_port(&target.host, target.port),
                    reason: format!("timed out after {} connecting", secs(opts.connect_timeout)),
                };
                return Err(user_error(&label, e, target));
            }
        };
        Ok(Session {
            handle,
            label,
            target: target.clone(),
            exec_timeout: opts.exec_timeout,
            round_trips: AtomicU32::new(0),
        })
    }

    /// Runs `script` with /bin/sh as root: `sh -c '<script>'` when the user
    /// is root, `sudo -n sh -c '<script>'` otherwise. `stdin`: bytes sent
    /// then EOF (None: EOF at once). A non-zero status is not an error.
    pub async fn run(&self, script: &str, stdin: Option<Stdin<'_>>) -> anyhow::Result<Output> {
        let root = self.target.user == "root";
        let command = if root {
            format!("sh -c {}", shell_quote(script))
        } else {
            format!("sudo -n sh -c {}", shell_quote(script))
        };
        let first_line = script.trim_start().lines().next().unwrap_or_default();
        tracing::debug!("{}: run `{first_line}`", self.label);
        // Open a file to stream before asking the device for anything.
        let stdin = match stdin {
            None => Input::None,
            Some(Stdin::Bytes(b)) => Input::Bytes(b),
            Some(Stdin::File(p)) => Input::File(
                tokio::fs::File::open(p)
                    .await
                    .with_context(|| format!("opening {} for stdin", p.display()))?,
                p,
            ),
        };
        self.round_trips.fetch_add(1, Ordering::Relaxed);
        let out = match self.exec(&command, stdin).await {
            Ok(Some(out)) => out,
            Ok(None) => {
                let e = SshError::ExecTimeout {
                    host: host_port(&self.target.host, self.target.port),
                    command: first_line.to_string(),
                    after: self.exec_timeout,
                };
                return Err(user_error(&self.label, e, &self.target));
            }
            Err(e) => return Err(e.context(self.label.clone())),
        };
        if !root && sudo_wants_password(&out) {
            let e = SshError::SudoPassword {
                user: self.target.user.clone(),
                host: host_port(&self.target.host, self.target.port),
            };
            return Err(user_error(&self.label, e, &self.target));
        }
        tracing::debug!("{}: exit status {}", self.label, out.status);
        Ok(out)
    }

    /// Exec requests made so far on this session (the handshake is not counted).
    pub fn round_trips(&self) -> u32 {
        self.round_trips.load(Ordering::Relaxed)
    }

    pub async fn close(self) {
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.handle.disconnect(Disconnect::ByApplication, "", "en"),
        )
        .await;
    }

    /// One exec channel; `None` when `exec_timeout` passed (the channel is
    /// then closed).
    async fn exec(&self, command: &str, stdin: Input<'_>) -> anyhow::Result<Option<Output>> {
        let deadline = tokio::time::Instant::now() + self.exec_timeout;
        let channel = tokio::time::timeout_at(deadline, self.handle.channel_open_session()).await;
        let Ok(channel) = channel else {
            return Ok(None);
        };
        // russh reports a connection that is gone as "Channel send error".
        let channel = channel.map_err(|e| {
            if self.handle.is_closed() {
                anyhow!("the connection closed before the command started")
            } else {
                anyhow::Error::new(e).context("opening an SSH session channel")
            }
        })?;
        let (mut rd, wr) = channel.split();
        let io = async {
            wr.exec(true, command).await.context("sending the exec request")?;
            let write = async {
                let sent = match stdin {
                    Input::None => Ok(()),
                    Input::Bytes(b) => wr.data(b).await,
                    Input::File(mut f, path) => {
                        let mut buf = vec![0u8; CHUNK];
                        loop {
                            let n = f
                                .read(&mut buf)
                                .await
                                .with_context(|| format!("reading {} for stdin", path.display()));
                            match n {
                                Err(e) => return Err(e),
                                Ok(0) => break Ok(()),
                                Ok(n) => {
                                    if let Err(e) = wr.data(&buf[..n]).await {
                                        break Err(e);
                                    }
                                }
                            }
                        }
                    }
                };
                match sent {
                    Ok(()) => {
                        // The remote may already be gone; the reader tells.
                        let _ = wr.eof().await;
                    }
                    Err(e) => tracing::debug!("sending stdin stopped: {e:?}"),
                }
                Ok(())
            };
            let read = async {
                let mut out = Output {
                    status: 0,
                    stdout: Vec::new(),
                    stderr: Vec::new(),
                };
                let mut status = None;
                let mut signal = None;
                let mut refused = false;
                while let Some(msg) = rd.wait().await {
                    match msg {
                        ChannelMsg::Data { data } => out.stdout.extend_from_slice(&data),
                        ChannelMsg::ExtendedData { data, ext: 1 } => out.stderr.extend_from_slice(&data),
                        ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                        ChannelMsg::ExitSignal {
                            signal_name,
                            error_message,
                            ..
                        } => signal = Some((signal_name, error_message)),
                        ChannelMsg::Failure => refused = true,
                        ChannelMsg::Close => break,
                        _ => {}
                    }
                }
                if refused {
                    anyhow::bail!("the device refused to run a command (exec request failed)");
                }
                out.status = match (status, signal) {
                    (Some(s), _) => s,
                    (None, Some((sig, msg))) => {
                        let note = format!("\nkilled by signal {sig:?} {msg}");
                        out.stderr.extend_from_slice(note.trim_end().as_bytes());
                        128 + signal_number(&sig)
                    }
                    (None, None) => anyhow::bail!("the connection closed before the command exited"),
                };
                Ok(out)
            };
            tokio::pin!(write, read);
            let mut writing = true;
            loop {
                tokio::select! {
                    w = &mut write, if writing => {
                        w?;
                        writing = false;
                    }
                    r = &mut read => break r,
                }
            }
        };
        match tokio::time::timeout_at(deadline, io).await {
            Ok(r) => r.map(Some),
            Err(_) => {
                let _ = tokio::time::timeout(Duration::from_secs(2), wr.close()).await;
                Ok(None)
            }
        }
    }
}

enum Input<'a> {
    None,
    Bytes(&'a [u8]),
    File(tokio::fs::File, &'a Path),
}

fn signal_number(sig: &russh::Sig) -> u32 {
    use russh::Sig;
    match sig {
        Sig::HUP => 1,
        Sig::INT => 2,
        Sig::QUIT => 3,
        Sig::ILL => 4,
        Sig::ABRT => 6,
        Sig::FPE => 8,
        Sig::KILL => 9,
        Sig::USR1 => 10,
        Sig::SEGV => 11,
        Sig::PIPE => 13,
        Sig::ALRM => 14,
        Sig::TERM => 15,
        _ => 127,
    }
}

/// sudo -n refused because it would need a password (or the user may not
/// sudo at all).
fn sudo_wants_password(out: &Output) -> bool {
    if out.status != 1 || !out.stdout.is_empty() {
        return false;
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.lines().any(|l| {
        l.starts_with("sudo:")
            && (l.contains("a password is required")
                || l.contains("a terminal is required")
                || l.contains("is not in the sudoers file")
                || l.contains("may not run sudo"))
    })
}

/// `s` in single quotes for sh: `'` becomes `'\''`.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

enum Failure {
    /// Refusals with a typed cause and hint.
    Ssh(SshError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Failure::Other(e)
    }
}

/// TCP, handshake (host key check), authentication.
async fn connect(target: &Target, opts: &Options) -> Result<client::Handle<Client>, Failure> {
    let hp = host_port(&target.host, target.port);
    let stream = tokio::net::TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(|e| {
            let reason = match e.kind() {
                ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => format!("cannot connect: {e}"),
            };
            Failure::Ssh(SshError::Unreachable {
                host: hp.clone(),
                reason,
            })
        })?;
    let _ = stream.set_nodelay(true);
    let config = Arc::new(client::Config {
        preferred: preferred(&target.host, target.port, &opts.known_hosts),
        keepalive_interval: Some(opts.keepalive),
        keepalive_max: 3,
        inactivity_timeout: None,
        ..Default::default()
    });
    let handler = Client {
        host: target.host.clone(),
        port: target.port,
        known_hosts: opts.known_hosts.clone(),
        accept_new: opts.accept_new_host_keys,
    };
    let mut handle = client::connect_stream(config, stream, handler)
        .await
        .map_err(|e| match e {
            HandlerError::HostKey(e) => Failure::Ssh(e),
            HandlerError::Other(e) => Failure::Other(e),
            HandlerError::Ssh(e) => Failure::Other(anyhow!("SSH handshake failed: {e}")),
        })?;
    authenticate(&mut handle, target).await?;
    Ok(handle)
}

/// russh's algorithms with the host key types known_hosts has for this
/// host first (as OpenSSH does), so a host recorded with, say, only its
/// ECDSA key is not reported unknown because it also has an ed25519 key.
fn preferred(host: &str, port: u16, known_hosts: &Path) -> russh::Preferred {
    let known: Vec<String> = russh::keys::known_hosts::known_host_keys_path(host, port, known_hosts)
        .unwrap_or_default()
        .iter()
        .map(|(_, k)| key_type(k))
        .collect();
    let default = russh::Preferred::default();
    let (mut keys, rest): (Vec<_>, Vec<_>) = default
        .key
        .iter()
        .cloned()
        .partition(|a| known.contains(&alg_type(a)));
    keys.extend(rest);
    russh::Preferred {
        key: keys.into(),
        ..default
    }
}

/// key_file if given, else every ssh-agent identity, else the default
/// identity files that exist.
async fn authenticate(handle: &mut client::Handle<Client>, target: &Target) -> Result<(), Failure> {
    let user = target.user.as_str();
    let mut tried = Vec::new();
    let mut rsa_hash: Option<Option<HashAlg>> = None;
    if let Some(path) = &target.key_file {
        match load_key(path)? {
            Loaded::Key(key) => {
                tried.push(path.display().to_string());
                if try_key(handle, user, key, &mut rsa_hash).await? {
                    return Ok(());
                }
            }
            Loaded::Encrypted(public) => {
                // The agent may hold this very key.
                let mut agent = match AgentClient::connect_env().await {
                    Ok(a) => a,
                    Err(_) => return Err(Failure::Ssh(SshError::EncryptedKey { path: path.clone() })),
                };
                let ids = agent.request_identities().await.unwrap_or_default();
                let Some(public) = public.filter(|p| ids.iter().any(|i| i.key_data() == p.key_data())) else {
                    return Err(Failure::Ssh(SshError::EncryptedKey { path: path.clone() }));
                };
                tried.push(format!("{} (via ssh-agent)", path.display()));
                if try_agent_key(handle, user, &mut agent, public, &mut rsa_hash).await? {
                    return Ok(());
                }
            }
        }
    } else {
        let mut agent_had_keys = false;
        if std::env::var_os("SSH_AUTH_SOCK").is_some() {
            match AgentClient::connect_env().await {
                Ok(mut agent) => {
                    let ids = agent.request_identities().await.unwrap_or_else(|e| {
                        tracing::debug!("ssh-agent: listing identities: {e}");
                        Vec::new()
                    });
                    agent_had_keys = !ids.is_empty();
                    for id in ids {
                        let name = if id.comment().is_empty() {
                            id.fingerprint(HashAlg::Sha256).to_string()
                        } else {
                            id.comment().to_string()
                        };
                        tried.push(format!("agent key {name}"));
                        if try_agent_key(handle, user, &mut agent, id, &mut rsa_hash).await? {
                            return Ok(());
                        }
                    }
                }
                Err(e) => tracing::debug!("ssh-agent at SSH_AUTH_SOCK: {e}"),
            }
        }
        if !agent_had_keys {
            let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_default();
            for name in DEFAULT_KEYS {
                let path = home.join(".ssh").join(name);
                if !path.exists() {
                    continue;
                }
                match load_key(&path) {
                    Ok(Loaded::Key(key)) => {
                        tried.push(path.display().to_string());
                        if try_key(handle, user, key, &mut rsa_hash).await? {
                            return Ok(());
                        }
                    }
                    Ok(Loaded::Encrypted(_)) => tried.push(format!(
                        "{} (encrypted: not used; load it into ssh-agent)",
                        path.display()
                    )),
                    Err(e) => tried.push(format!("{} (unreadable: {})", path.display(), failure_text(&e))),
                }
            }
        }
    }
    Err(Failure::Ssh(SshError::AuthFailed {
        user: user.to_string(),
        host: host_port(&target.host, target.port),
        tried,
    }))
}

fn failure_text(f: &Failure) -> String {
    match f {
        Failure::Ssh(e) => e.to_string(),
        Failure::Other(e) => format!("{e:#}"),
    }
}

enum Loaded {
    Key(Box<PrivateKey>),
    /// Passphrase-protected; its public half if the file shows it.
    Encrypted(Option<PublicKey>),
}

fn load_key(path: &Path) -> Result<Loaded, Failure> {
    match russh::keys::load_secret_key(path, None) {
        Ok(k) => Ok(Loaded::Key(Box::new(k))),
        Err(russh::keys::Error::KeyIsEncrypted) => Ok(Loaded::Encrypted(public_of_encrypted(path))),
        Err(e) => {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains("ENCRYPTED") {
                return Ok(Loaded::Encrypted(public_of_encrypted(path)));
            }
            Err(Failure::Other(anyhow!(
                "cannot load the key {}: {e}",
                path.display()
            )))
        }
    }
}

/// An OpenSSH private key file holds its public key in the clear; else
/// `<path>.pub`.
fn public_of_encrypted(path: &Path) -> Option<PublicKey> {
    let text = std::fs::read_to_string(path).ok()?;
    if let Ok(k) = PrivateKey::from_openssh(text.as_bytes()) {
        return Some(k.public_key().clone());
    }
    let mut pub_path = path.as_os_str().to_owned();
    pub_path.push(".pub");
    PublicKey::from_openssh(std::fs::read_to_string(pub_path).ok()?.trim()).ok()
}

/// The hash for RSA signatures: the best the server announces, else
/// rsa-sha2-256 (asked once per connection).
async fn rsa_hash_for(
    handle: &client::Handle<Client>,
    cached: &mut Option<Option<HashAlg>>,
) -> Result<Option<HashAlg>, Failure> {
    if let Some(h) = cached {
        return Ok(*h);
    }
    let h = match handle.best_supported_rsa_hash().await {
        Ok(Some(h)) => h,
        Ok(None) => Some(HashAlg::Sha256),
        Err(e) => return Err(Failure::Other(anyhow!("SSH: {e}"))),
    };
    *cached = Some(h);
    Ok(h)
}

async fn try_key(
    handle: &mut client::Handle<Client>,
    user: &str,
    key: Box<PrivateKey>,
    rsa_hash: &mut Option<Option<HashAlg>>,
) -> Result<bool, Failure> {
    let hash = if key.algorithm().is_rsa() {
        rsa_hash_for(handle, rsa_hash).await?
    } else {
        None
    };
    let key = PrivateKeyWithHashAlg::new(Arc::new(*key), hash);
    match handle.authenticate_publickey(user, key).await {
        Ok(r) => Ok(r.success()),
        Err(e) => Err(Failure::Other(anyhow!("SSH authentication: {e}"))),
    }
}

async fn try_agent_key<S>(
    handle: &mut client::Handle<Client>,
    user: &str,
    agent: &mut AgentClient<S>,
    key: PublicKey,
    rsa_hash: &mut Option<Option<HashAlg>>,
) -> Result<bool, Failure>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let hash = if key.algorithm().is_rsa() {
        rsa_hash_for(handle, rsa_hash).await?
    } else {
        None
    };
    match handle.authenticate_publickey_with(user, key, hash, agent).await {
        Ok(r) => Ok(r.success()),
        Err(e) => Err(Failure::Other(anyhow!("SSH authentication with ssh-agent: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;
    use std::time::Instant;

    use sha2::{Digest, Sha256};
    use testkit::hosts::{HostOptions, TestHost};

    use super::*;

    fn target(host: &TestHost, user: &str) -> Target {
        Target {
            name: host.name.clone(),
            host: host.ip.to_string(),
            port: host.ssh_port,
            user: user.to_string(),
            key_file: Some(host.client_key_path.clone()),
        }
    }

    fn opts(known_hosts: &Path) -> Options {
        Options {
            known_hosts: known_hosts.to_path_buf(),
            connect_timeout: Duration::from_secs(20),
            exec_timeout: Duration::from_secs(60),
            ..Options::default_for(Path::new("/nonexistent"))
        }
    }

    /// A new ed25519 key (with a passphrase when given): its path.
    fn keygen(dir: &Path, name: &str, passphrase: &str) -> PathBuf {
        let path = dir.join(name);
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-C", name, "-N", passphrase, "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(out.status.success(), "ssh-keygen: {out:?}");
        path
    }

    fn ssh_error(err: &anyhow::Error) -> &SshError {
        err.downcast_ref::<SshError>()
            .unwrap_or_else(|| panic!("not an SshError: {err:#}"))
    }

    fn hints(err: &anyhow::Error) -> String {
        crate::error::hints(err).join("\n")
    }

    /// The fingerprint of the host's ed25519 key, from the testkit.
    fn ed25519_fingerprint(host: &TestHost) -> String {
        let (_, key) = host.known_hosts_line.split_once(' ').unwrap();
        PublicKey::from_openssh(key)
            .unwrap()
            .fingerprint(HashAlg::Sha256)
            .to_string()
    }

    #[test]
    fn quoting_and_helpers() {
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
        let out = Output {
            status: 1,
            stdout: vec![],
            stderr: b"warning\n  sudo: a password is required  \n\n".to_vec(),
        };
        assert_eq!(out.stderr_line(), "sudo: a password is required");
        assert!(!out.ok());
        // Only sudo's own line counts.
        assert!(!sudo_wants_password(&out));
        let sudo = Output {
            stderr: b"sudo: a password is required\n".to_vec(),
            ..out.clone()
        };
        assert!(sudo_wants_password(&sudo));
        assert!(!sudo_wants_password(&Output { status: 2, ..sudo }));
        assert_eq!(known_hosts_name("10.0.0.5", 22), "10.0.0.5");
        assert_eq!(known_hosts_name("10.0.0.5", 2222), "[10.0.0.5]:2222");
        let t = Target {
            name: "pi-01".into(),
            host: "10.0.0.5".into(),
            port: 22,
            user: "pi".into(),
            key_file: None,
        };
        assert_eq!(t.label(), "pi-01 (10.0.0.5:22)");
        let o = Options::default_for(Path::new("/root"));
        assert_eq!(o.known_hosts, Path::new("/root/.ssh/known_hosts"));
        assert!(!o.accept_new_host_keys);
        assert_eq!(
            (o.connect_timeout, o.exec_timeout, o.keepalive),
            (
                Duration::from_secs(10),
                Duration::from_secs(600),
                Duration::from_secs(15)
            )
        );
    }

    #[test]
    fn changed_key_line_counts_comment_lines() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("kh");
        // russh numbers lines without the comments: its 2nd is the 4th.
        std::fs::write(&f, "# a\na b c\n#b\nd e f\n").unwrap();
        assert_eq!(file_line(&f, 2), 4);
        assert_eq!(file_line(&f, 1), 2);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn runs_scripts_as_root_with_stdin_and_via_sudo() {
        let host = TestHost::boot("ssh-run", HostOptions::default()).await.unwrap();
        let result = async {
            let o = opts(&host.known_hosts_path);
            let s = Session::connect(&target(&host, "root"), &o).await?;
            assert_eq!(s.round_trips(), 0);

            let out = s.run("echo out; echo err >&2; id -u; exit 3", None).await?;
            assert_eq!(out.status, 3);
            assert!(!out.ok());
            assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n0\n");
            assert_eq!(out.stderr_line(), "err");

            // Quotes survive; the script runs under sh.
            let out = s.run("printf '%s|' \"it's\" 'a  b' \"$0\"", None).await?;
            assert!(out.ok(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "it's|a  b|sh|");

            // No stdin: EOF at once (cat does not hang).
            let out = s.run("cat; echo done", None).await?;
            assert_eq!(out.stdout, b"done\n");

            let bytes = b"secret\0key\nmaterial";
            let out = s.run("cat", Some(Stdin::Bytes(bytes))).await?;
            assert_eq!(out.stdout, bytes);

            // 5 MiB streamed from a file, checked on the far side.
            let dir = tempfile::tempdir()?;
            let file = dir.path().join("big");
            let mut data = vec![0u8; 5 * 1024 * 1024];
            let mut x: u32 = 0x1234_5678;
            for b in data.iter_mut() {
                x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                *b = (x >> 24) as u8;
            }
            std::fs::write(&file, &data)?;
            let want = format!("{:x}", Sha256::digest(&data));
            let out = s
                .run(
                    "cat > /tmp/big && sha256sum /tmp/big | cut -d' ' -f1 && stat -c %s /tmp/big",
                    Some(Stdin::File(&file)),
                )
                .await?;
            assert!(out.ok(), "{out:?}");
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                format!("{want}\n{}\n", data.len())
            );

            // A command that exits without reading its stdin.
            let out = s.run("exit 0", Some(Stdin::File(&file))).await?;
            assert!(out.ok());

            // Much output (beyond the channel window).
            let out = s
                .run("head -c 3000000 /dev/zero; head -c 100000 /dev/zero >&2", None)
                .await?;
            assert_eq!((out.stdout.len(), out.stderr.len()), (3_000_000, 100_000));
            assert_eq!(s.round_trips(), 7);
            s.close().await;

            // pi runs as root through sudo -n.
            let s = Session::connect(&target(&host, "pi"), &o).await?;
            let out = s.run("id -u; echo \"it's $(whoami)\"", None).await?;
            assert!(out.ok(), "{out:?}");
            assert_eq!(String::from_utf8_lossy(&out.stdout), "0\nit's root\n");
            let out = s.run("cat", Some(Stdin::Bytes(b"via sudo"))).await?;
            assert_eq!(out.stdout, b"via sudo");
            assert_eq!(s.round_trips(), 2);
            s.close().await;

            // bob has no passwordless sudo.
            host.exec_ok(
                "useradd -m -s /bin/bash bob && install -d -m 700 -o bob -g bob /home/bob/.ssh && \
                 install -m 600 -o bob -g bob /root/.ssh/authorized_keys /home/bob/.ssh/authorized_keys",
            )
            .await?;
            let s = Session::connect(&target(&host, "bob"), &o).await?;
            let err = s.run("id -u", None).await.unwrap_err();
            assert!(
                matches!(ssh_error(&err), SshError::SudoPassword { user, .. } if user == "bob"),
                "{err:#}"
            );
            assert_eq!(
                format!("{err:#}"),
                "ssh-run (".to_string()
                    + &host.ip.to_string()
                    + ":22): sudo needs a password for bob: nothing was run"
            );
            assert!(
                hints(&err).contains("give bob passwordless sudo (NOPASSWD)"),
                "{}",
                hints(&err)
            );
            s.close().await;

            // exec_timeout: the run fails, the session stays usable.
            let short = Options {
                exec_timeout: Duration::from_secs(1),
                ..o.clone()
            };
            let s = Session::connect(&target(&host, "root"), &short).await?;
            let started = Instant::now();
            let err = s.run("sleep 30", None).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(5));
            assert!(matches!(ssh_error(&err), SshError::ExecTimeout { .. }), "{err:#}");
            assert!(
                format!("{err:#}").ends_with("timed out after 1s running `sleep 30`"),
                "{err:#}"
            );
            assert!(s.run("true", None).await?.ok());
            s.close().await;
            anyhow::Ok(())
        }
        .await;
        host.stop().await;
        result.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn host_keys_and_authentication() {
        let host = TestHost::boot("ssh-keys", HostOptions::default()).await.unwrap();
        let result = async {
            let dir = tempfile::tempdir()?;
            let t = target(&host, "root");
            let fingerprint = ed25519_fingerprint(&host);

            // Unknown: refused, nothing written.
            let kh = dir.path().join("new/.ssh/known_hosts");
            let err = Session::connect(&t, &opts(&kh)).await.unwrap_err();
            let SshError::UnknownHostKey { fingerprint: fp, .. } = ssh_error(&err) else {
                panic!("{err:#}");
            };
            assert_eq!(fp, &fingerprint);
            assert_eq!(
                format!("{err:#}"),
                format!(
                    "ssh-keys ({}:22): unknown host key {fingerprint}; not in {}: not connecting",
                    host.ip,
                    kh.display()
                )
            );
            assert!(hints(&err).contains("--accept-new-host-keys"));
            assert!(!kh.exists());

            // accept_new records it (0600 file in a 0700 dir); then known.
            let accept = Options {
                accept_new_host_keys: true,
                ..opts(&kh)
            };
            let s = Session::connect(&t, &accept).await?;
            assert!(s.run("true", None).await?.ok());
            s.close().await;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!((mode(&kh), mode(kh.parent().unwrap())), (0o600, 0o700));
            let text = std::fs::read_to_string(&kh)?;
            assert_eq!(text.lines().count(), 1, "{text}");
            assert!(text.starts_with(&format!("{} ssh-ed25519 ", host.ip)), "{text}");
            Session::connect(&t, &opts(&kh)).await?.close().await;
            // Accepting again adds nothing.
            Session::connect(&t, &accept).await?.close().await;
            assert_eq!(std::fs::read_to_string(&kh)?, text);

            // Changed: refused even with accept_new, naming file and line.
            let other = keygen(dir.path(), "other", "");
            let other_pub = std::fs::read_to_string(other.with_extension("pub"))?;
            let changed = dir.path().join("changed");
            std::fs::write(&changed, format!("# old entries\n{} {}", host.ip, other_pub))?;
            let err = Session::connect(
                &t,
                &Options {
                    accept_new_host_keys: true,
                    ..opts(&changed)
                },
            )
            .await
            .unwrap_err();
            let SshError::HostKeyChanged { line, fingerprint: fp, .. } = ssh_error(&err) else {
                panic!("{err:#}");
            };
            assert_eq!((*line, fp), (2, &fingerprint));
            assert!(format!("{err:#}").contains(&format!("{}:2", changed.display())), "{err:#}");
            assert!(hints(&err).contains("ssh-keygen -R"), "{}", hints(&err));
            assert_eq!(std::fs::read_to_string(&changed)?.lines().count(), 2);

            // Hashed entries (ssh-keygen -H) match.
            let hashed = dir.path().join("hashed");
            std::fs::copy(&host.known_hosts_path, &hashed)?;
            let out = Command::new("ssh-keygen").arg("-H").arg("-f").arg(&hashed).output()?;
            assert!(out.status.success(), "{out:?}");
            let text = std::fs::read_to_string(&hashed)?;
            assert!(text.starts_with("|1|") && !text.contains(&host.ip.to_string()), "{text}");
            Session::connect(&t, &opts(&hashed)).await?.close().await;

            // Only an ECDSA key recorded: the device is asked for that one.
            let ecdsa = dir.path().join("ecdsa");
            let all = std::fs::read_to_string(&host.known_hosts_path)?;
            let line = all.lines().find(|l| l.contains("ecdsa-sha2")).unwrap();
            std::fs::write(&ecdsa, format!("{line}\n"))?;
            Session::connect(&t, &opts(&ecdsa)).await?.close().await;

            // A wrong key: AuthFailed naming it.
            let wrong = keygen(dir.path(), "wrong", "");
            let bad = Target {
                key_file: Some(wrong.clone()),
                ..t.clone()
            };
            let err = Session::connect(&bad, &opts(&host.known_hosts_path)).await.unwrap_err();
            let SshError::AuthFailed { tried, user, .. } = ssh_error(&err) else {
                panic!("{err:#}");
            };
            assert_eq!((tried.clone(), user.as_str()), (vec![wrong.display().to_string()], "root"));
            assert!(format!("{err:#}").contains("authentication as root failed"), "{err:#}");
            assert!(hints(&err).contains("authorized_keys"));

            // An encrypted key (not in any agent): a clear error.
            let locked = keygen(dir.path(), "locked", "passphrase");
            let enc = Target {
                key_file: Some(locked.clone()),
                ..t.clone()
            };
            let err = Session::connect(&enc, &opts(&host.known_hosts_path)).await.unwrap_err();
            assert!(matches!(ssh_error(&err), SshError::EncryptedKey { .. }), "{err:#}");
            assert!(hints(&err).contains("ssh-add"), "{}", hints(&err));

            // Another port: recorded as [host]:port.
            host.exec_ok(
                "printf 'Port 22\\nPort 2222\\n' > /etc/ssh/sshd_config.d/ports.conf && systemctl restart ssh",
            )
            .await?;
            let t2222 = Target { port: 2222, ..t.clone() };
            let kh2 = dir.path().join("kh2");
            let deadline = Instant::now() + Duration::from_secs(10);
            let s = loop {
                match Session::connect(&t2222, &Options { accept_new_host_keys: true, ..opts(&kh2) }).await {
                    Ok(s) => break s,
                    Err(e) if Instant::now() < deadline && format!("{e:#}").contains("refused") => {
                        tokio::time::sleep(Duration::from_millis(100)).await
                    }
                    Err(e) => return Err(e),
                }
            };
            s.close().await;
            let text = std::fs::read_to_string(&kh2)?;
            assert!(text.starts_with(&format!("[{}]:2222 ssh-ed25519 ", host.ip)), "{text}");
            Session::connect(&t2222, &opts(&kh2)).await?.close().await;
            let err = Session::connect(&t, &opts(&kh2)).await.unwrap_err();
            assert!(matches!(ssh_error(&err), SshError::UnknownHostKey { .. }), "{err:#}");
            anyhow::Ok(())
        }
        .await;
        host.stop().await;
        result.unwrap();
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn unreachable_targets_fail_fast() {
        let dir = tempfile::tempdir().unwrap();
        let o = Options {
            connect_timeout: Duration::from_millis(500),
            ..opts(&dir.path().join("known_hosts"))
        };
        // Nothing listening.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let t = Target {
            name: "pi-01".into(),
            host: "127.0.0.1".into(),
            port,
            user: "root".into(),
            key_file: None,
        };
        let started = Instant::now();
        let err = Session::connect(&t, &o).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(ssh_error(&err), SshError::Unreachable { .. }));
        assert_eq!(
            format!("{err:#}"),
            format!("pi-01 (127.0.0.1:{port}): connection refused")
        );

        // Accepts TCP but never speaks SSH.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let t = Target {
            port: silent.local_addr().unwrap().port(),
            ..t
        };
        let started = Instant::now();
        let err = Session::connect(&t, &o).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            format!("{err:#}").ends_with(": timed out after 500ms connecting"),
            "{err:#}"
        );
    }
}
