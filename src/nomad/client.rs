//! One HTTPS connection setting for Nomad's API: trusts only the given CA,
//! presents an optional client certificate, checks the server against a
//! chosen name, sends `X-Nomad-Token`. Errors name the operation and the
//! address; Nomad's text/plain error bodies are kept as they are.

use crate::error::{InvalidInput, User};
use crate::secret::Secret;
use anyhow::{Context, Result};
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Nomad's HTTP port, used when an address names none.
pub const DEFAULT_PORT: u16 = 4646;
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long edgectl keeps retrying one request unless `EDGECTL_NOMAD_WAIT`
/// says otherwise.
const RETRY_DEADLINE: Duration = Duration::from_secs(60);
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// The least time a last attempt before the deadline is given.
const MIN_ATTEMPT: Duration = Duration::from_millis(100);
/// The least time one attempt is given when `EDGECTL_NOMAD_WAIT` is short.
const MIN_TIMEOUT: Duration = Duration::from_secs(6);

/// The `NOMAD_*` variables the nomad CLI reads, resolved once when a
/// command starts (files read, pairs checked). Everything else in edgectl
/// takes them from here.
#[derive(Debug, Clone, Default)]
pub struct NomadSettings {
    /// `NOMAD_ADDR`, e.g. `https://10.0.0.5:4646`.
    pub addr: Option<String>,
    /// The contents of `NOMAD_CACERT`.
    pub ca_pem: Option<String>,
    /// The contents of `NOMAD_CLIENT_CERT` and `NOMAD_CLIENT_KEY`.
    pub identity: Option<(String, Secret)>,
    /// `NOMAD_TOKEN`.
    pub token: Option<Secret>,
    /// `NOMAD_TLS_SERVER_NAME`.
    pub tls_server_name: Option<String>,
    /// `EDGECTL_NOMAD_WAIT` (seconds): give up waiting for Nomad to answer
    /// and elect a leader after this long, instead of the usual deadline.
    pub wait: Option<Duration>,
}

impl NomadSettings {
    /// `None` when no `NOMAD_*` variable is set. `var` reads one variable
    /// (empty counts as unset).
    pub fn resolve(var: impl Fn(&str) -> Option<String>) -> Result<Option<NomadSettings>> {
        let get = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        let read = |name: &str| -> Result<Option<String>> {
            match get(name) {
                None => Ok(None),
                Some(path) => std::fs::read_to_string(&path)
                    .map(Some)
                    .map_err(|e| InvalidInput(vec![format!("{name}: cannot read {path}: {e}")]).into()),
            }
        };
        let identity = match (read("NOMAD_CLIENT_CERT")?, read("NOMAD_CLIENT_KEY")?) {
            (Some(c), Some(k)) => Some((c, Secret::new(k))),
            (None, None) => None,
            _ => {
                return Err(InvalidInput(vec![
                    "NOMAD_CLIENT_CERT and NOMAD_CLIENT_KEY: both client cert and client key must be provided"
                        .into(),
                ])
                .into())
            }
        };
        let s = NomadSettings {
            addr: get("NOMAD_ADDR"),
            ca_pem: read("NOMAD_CACERT")?,
            identity,
            token: get("NOMAD_TOKEN").map(Secret::new),
            tls_server_name: get("NOMAD_TLS_SERVER_NAME"),
            wait: match get("EDGECTL_NOMAD_WAIT") {
                None => None,
                Some(v) => Some(Duration::from_secs(v.trim().parse().map_err(|_| {
                    InvalidInput(vec![format!(
                        "EDGECTL_NOMAD_WAIT: {v:?} is not a number of seconds"
                    )])
                })?)),
            },
        };
        if let Some(addr) = &s.addr {
            parse_addr(addr).map_err(|e| InvalidInput(vec![format!("NOMAD_ADDR: {e:#}")]))?;
        }
        let any = s.addr.is_some()
            || s.ca_pem.is_some()
            || s.identity.is_some()
            || s.token.is_some()
            || s.tls_server_name.is_some()
            || s.wait.is_some();
        Ok(any.then_some(s))
    }
}

/// `host[:port]` or `https://host[:port]`; plain `http://` is refused.
pub fn parse_addr(addr: &str) -> Result<reqwest::Url> {
    let with_scheme = if addr.contains("://") {
        addr.to_string()
    } else {
        format!("https://{addr}")
    };
    let mut url = reqwest::Url::parse(&with_scheme).with_context(|| format!("{addr:?} is not an address"))?;
    if url.scheme() != "https" {
        anyhow::bail!("{addr:?}: edgectl talks to Nomad over https only");
    }
    if url.host().is_none() {
        anyhow::bail!("{addr:?} names no host");
    }
    if url.port().is_none() {
        url.set_port(Some(DEFAULT_PORT)).ok();
    }
    url.set_path("");
    Ok(url)
}

/// The name a server certificate must carry: the override, else
/// `server.<region>.nomad` for an IP address (Nomad's own naming), else the
/// host itself.
pub fn server_name(url: &reqwest::Url, explicit: Option<&str>, nomad_region: &str) -> String {
    match (explicit, host_ip(url)) {
        (Some(n), _) => n.to_string(),
        (None, None) => url.host_str().unwrap_or_default().to_string(),
        (None, Some(_)) => format!("server.{nomad_region}.nomad"),
    }
}

/// The address's host when it is an IP address.
fn host_ip(url: &reqwest::Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.trim_start_matches('[').trim_end_matches(']').parse().ok()
}

/// How one request is retried: every request to Nomad goes through
/// [`Retry::run`], the one place that decides (issue 14).
///
/// A failure is retried while the deadline allows when the request is safe
/// to repeat: no connection was made (nothing was sent), or the request is
/// idempotent (reads, deletes, writes marked with [`Client::idempotent`])
/// and the failure is transient ([`classify`]). Waits between attempts
/// double from 200 ms to 5 s, with jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Start no attempt after this long (counted from the first).
    pub deadline: Duration,
    /// One attempt's limit: a slower answer counts as a failed attempt.
    pub attempt_timeout: Duration,
}

impl Default for Retry {
    fn default() -> Retry {
        Retry {
            deadline: RETRY_DEADLINE,
            attempt_timeout: TIMEOUT,
        }
    }
}

impl Retry {
    /// From `EDGECTL_NOMAD_WAIT`: it bounds the retries, and a quarter of it
    /// (6 s to 30 s) bounds one attempt. Unset: 60 s and 30 s. Nomad holds
    /// a request up to 5 s while it has no leader (`rpc_hold_timeout`):
    /// an attempt is not cut shorter than that.
    pub fn resolve(settings: Option<&NomadSettings>) -> Retry {
        match settings.and_then(|s| s.wait) {
            None => Retry::default(),
            Some(wait) => Retry {
                deadline: wait,
                attempt_timeout: (wait / 4).clamp(MIN_TIMEOUT, TIMEOUT),
            },
        }
    }

    /// A single attempt (probes that report rather than wait).
    pub fn once() -> Retry {
        Retry {
            deadline: Duration::ZERO,
            ..Retry::default()
        }
    }

    /// The wait before attempt `n + 1` (n ≥ 1): 200 ms doubling to 5 s,
    /// then between half and all of it (`jitter` in [0, 1)).
    fn backoff(n: u32, jitter: f64) -> Duration {
        let full = FIRST_BACKOFF
            .saturating_mul(1u32 << n.saturating_sub(1).min(16))
            .min(MAX_BACKOFF);
        full / 2 + full.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline
    /// (plus `extra`, a blocking query's own wait) leaves no room for
    /// another. `attempt` gets its time limit. Giving up after more than
    /// one attempt says so: `gave up after 7 attempts in 60s: <last cause>`.
    async fn run<T, F, Fut>(&self, idempotent: bool, extra: Duration, mut attempt: F) -> Result<T>
    where
        F: FnMut(Duration) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, Failed>>,
    {
        let start = Instant::now();
        let end = start + self.deadline + extra;
        let per_attempt = self.attempt_timeout + extra;
        let mut n = 0u32;
        loop {
            n += 1;
            // The first attempt gets its full time, later ones what is left.
            let limit = match n {
                1 => per_attempt,
                _ => per_attempt
                    .min(end.saturating_duration_since(Instant::now()))
                    .max(MIN_ATTEMPT),
            };
            let failed = match attempt(limit).await {
                Ok(v) => return Ok(v),
                Err(f) => f,
            };
            let retry = match failed.class {
                Class::NotSent => true,
                Class::Transient => idempotent,
                Class::Final => false,
            };
            // The last wait is cut short so that a last attempt ends at the deadline.
            let left = end.saturating_duration_since(Instant::now());
            let out_of_time = left < MIN_ATTEMPT * 2;
            if !retry || out_of_time {
                if n == 1 || !retry {
                    return Err(failed.error);
                }
                return Err(failed.error.context(format!(
                    "gave up after {n} attempts in {}",
                    seconds(start.elapsed())
                )));
            }
            let pause = Retry::backoff(n, jitter()).min(left - MIN_ATTEMPT);
            tracing::debug!("attempt {n} failed, retrying in {pause:?}: {:#}", failed.error);
            tokio::time::sleep(pause).await;
        }
    }
}

/// `60s`, `7.5s`.
fn seconds(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s >= 10.0 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

/// A number in [0, 1) that differs between calls and processes, without a
/// random number crate.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// What one failed attempt means for the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// No connection was made, so nothing was sent: any request may be repeated.
    NotSent,
    /// Nomad (or something in front of it) may have acted but may answer
    /// differently next time: repeat idempotent requests only.
    Transient,
    /// A final answer: repeating would get the same.
    Final,
}

/// Bodies of 500 answers that are Nomad's final word (spec A0: uncoded
/// errors become 500) rather than server trouble.
const FINAL_500: &[&str] = &[
    "Enforcing job modify index",
    "ACL bootstrap already done",
    "Permission denied",
    "ACL token not found",
    "job not found",
];

/// Sorts an error answer: 502, 503, 504 and a 500 whose body is not one of
/// Nomad's final errors are transient; everything else (any 4xx) is final.
pub fn classify(status: u16, body: &str) -> Class {
    match status {
        502..=504 => Class::Transient,
        500 if FINAL_500.iter().any(|f| body.contains(f)) => Class::Final,
        500 => Class::Transient,
        _ => Class::Final,
    }
}

/// One failed attempt: the error to report and what it means.
struct Failed {
    error: anyhow::Error,
    class: Class,
}

/// What TLS to use with one Nomad address.
pub struct Tls {
    pub ca_pem: String,
    pub identity: Option<(String, Secret)>,
    pub server_name: String,
}

/// An error answer from Nomad: its status and its (text/plain) body.
#[derive(Debug)]
pub struct ApiError {
    pub status: u16,
    pub body: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let body = self.body.trim();
        let body = if body.is_empty() { "(empty body)" } else { body };
        write!(f, "Nomad answered {}: {body}", self.status)
    }
}

impl std::error::Error for ApiError {}

/// Nomad's answer status when `err` is an error answer from Nomad.
pub fn api_error(err: &anyhow::Error) -> Option<&ApiError> {
    err.chain().find_map(|e| e.downcast_ref::<ApiError>())
}

/// The connection failed before Nomad could answer (refused, timed out,
/// unreachable), as opposed to TLS or an answer.
#[derive(Debug)]
pub struct Unreachable(pub String);

impl std::fmt::Display for Unreachable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unreachable {}

pub fn is_unreachable(err: &anyhow::Error) -> bool {
    err.chain().any(|e| e.is::<Unreachable>())
}

#[derive(Clone)]
pub struct Client {
    /// The address as the user gave it, for messages.
    pub addr: String,
    /// Where requests go: the address with its host replaced by the TLS
    /// name (resolved to the address's IPs), so that name is what rustls
    /// checks.
    base: reqwest::Url,
    server_name: String,
    http: reqwest::Client,
    token: Option<Secret>,
    retry: Retry,
    /// Writes are repeated after transient failures too.
    idempotent_writes: bool,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("token", &self.token)
            .field("retry", &self.retry)
            .field("idempotent_writes", &self.idempotent_writes)
            .finish()
    }
}

impl Client {
    pub async fn new(addr: &reqwest::Url, tls: &Tls) -> Result<Client> {
        let shown = addr.as_str().trim_end_matches('/').to_string();
        let ca = reqwest::Certificate::from_pem(tls.ca_pem.as_bytes())
            .with_context(|| format!("parsing the CA certificate for Nomad at {shown}"))?;
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .https_only(true)
            .no_proxy()
            .timeout(TIMEOUT)
            .connect_timeout(CONNECT_TIMEOUT);
        if let Some((cert, key)) = &tls.identity {
            let pem = format!("{}\n{}", cert.trim_end(), key.expose());
            builder = builder.identity(
                reqwest::Identity::from_pem(pem.as_bytes())
                    .with_context(|| format!("parsing the client certificate and key for {shown}"))?,
            );
        }
        let port = addr.port_or_known_default().unwrap_or(DEFAULT_PORT);
        let mut base = addr.clone();
        let host = addr.host_str().context("the address names no host")?;
        if host != tls.server_name {
            let ips: Vec<SocketAddr> = match host_ip(addr) {
                Some(ip) => vec![SocketAddr::new(ip, port)],
                None => tokio::net::lookup_host((host, port))
                    .await
                    .map_err(|e| Unreachable(format!("resolving {host}: {e}")))
                    .with_context(|| format!("connecting to Nomad at {shown}"))?
                    .collect(),
            };
            builder = builder.resolve_to_addrs(&tls.server_name, &ips);
            base.set_host(Some(&tls.server_name))
                .with_context(|| format!("{:?} is not a host name", tls.server_name))?;
        }
        Ok(Client {
            addr: shown,
            base,
            server_name: tls.server_name.clone(),
            http: builder.build().context("building the HTTP client for Nomad")?,
            token: None,
            retry: Retry::default(),
            idempotent_writes: false,
        })
    }

    /// The same connection, retrying as `retry` says.
    pub fn with_retry(&self, retry: Retry) -> Client {
        Client {
            retry,
            ..self.clone()
        }
    }

    /// The same connection, for writes that are safe to repeat (an upsert
    /// by name or id, registering the same job again): they are retried
    /// after transient failures like reads. Other writes are retried only
    /// when nothing was sent.
    pub fn idempotent(&self) -> Client {
        Client {
            idempotent_writes: true,
            ..self.clone()
        }
    }

    /// The same connection, sending `token` as `X-Nomad-Token`.
    pub fn with_token(&self, token: &Secret) -> Client {
        Client {
            token: Some(token.clone()),
            ..self.clone()
        }
    }

    pub fn without_token(&self) -> Client {
        Client {
            token: None,
            ..self.clone()
        }
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.call(Method::GET, path, None).await?;
        decode(&Method::GET, &self.addr, path, &text)
    }

    /// A write (Nomad takes POST and PUT alike) whose answer is JSON.
    pub async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T> {
        let json = serde_json::to_vec(body).context("encoding a request body")?;
        let text = self.call(Method::POST, path, Some(json)).await?;
        decode(&Method::POST, &self.addr, path, &text)
    }

    /// A write whose answer carries nothing we need (policy upserts answer
    /// with an empty body).
    pub async fn post_unit<B: Serialize>(&self, path: &str, body: &B) -> Result<()> {
        let json = serde_json::to_vec(body).context("encoding a request body")?;
        self.call(Method::POST, path, Some(json)).await.map(|_| ())
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        self.call(Method::DELETE, path, None).await.map(|_| ())
    }

    /// A read and its `X-Nomad-Index` (0 when absent).
    pub async fn get_indexed<T: DeserializeOwned>(&self, path: &str) -> Result<(T, u64)> {
        let (text, index) = self.call_meta(Method::GET, path, None, Duration::ZERO).await?;
        Ok((decode(&Method::GET, &self.addr, path, &text)?, index))
    }

    /// A blocking query: GET `path` with `index=` and `wait=`, which Nomad
    /// answers once its data moved past `index` or `wait` passed (plus up
    /// to wait/16 of jitter). The answer and its `X-Nomad-Index`, to pass
    /// as the next `index`.
    pub async fn get_blocking<T: DeserializeOwned>(
        &self,
        path: &str,
        index: u64,
        wait: Duration,
    ) -> Result<(T, u64)> {
        let sep = if path.contains('?') { '&' } else { '?' };
        let full = format!("{path}{sep}index={index}&wait={}ms", wait.as_millis().max(1));
        // Longer than Nomad's own wait, so the server answers first.
        let (text, got) = self.call_meta(Method::GET, &full, None, wait + wait / 16).await?;
        Ok((decode(&Method::GET, &self.addr, path, &text)?, got))
    }

    /// A DELETE whose answer is JSON (e.g. the evaluation of a job stop).
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.call(Method::DELETE, path, None).await?;
        decode(&Method::DELETE, &self.addr, path, &text)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<String> {
        self.call_meta(method, path, body, Duration::ZERO)
            .await
            .map(|(text, _)| text)
    }

    /// One request, retried as [`Retry`] says; the body and the
    /// `X-Nomad-Index` header (0 when absent). `extra`: how long Nomad may
    /// hold a blocking query before answering.
    async fn call_meta(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        extra: Duration,
    ) -> Result<(String, u64)> {
        let what = || format!("{method} {}{path}", self.addr);
        let idempotent =
            self.idempotent_writes || matches!(method, Method::GET | Method::HEAD | Method::DELETE);
        self.retry
            .run(idempotent, extra, |limit| {
                self.attempt(&method, path, body.clone(), limit)
            })
            .await
            .with_context(what)
    }

    /// One attempt of a request, within `limit`.
    async fn attempt(
        &self,
        method: &Method,
        path: &str,
        body: Option<Vec<u8>>,
        limit: Duration,
    ) -> std::result::Result<(String, u64), Failed> {
        let mut url = self.base.clone();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        url.set_path(p);
        url.set_query((!q.is_empty()).then_some(q));
        let mut req = self.http.request(method.clone(), url).timeout(limit);
        if let Some(t) = &self.token {
            req = req.header("X-Nomad-Token", t.expose());
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        tracing::debug!("{method} {}{path}", self.addr);
        let resp = req.send().await.map_err(|e| self.transport_error(e, limit))?;
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // Cut or too slow mid-answer: Nomad may have acted.
        let text = resp.text().await.map_err(|e| Failed {
            class: Class::Transient,
            error: anyhow::Error::new(e).context("reading the answer"),
        })?;
        if !(200..300).contains(&status) {
            return Err(Failed {
                class: classify(status, &text),
                error: ApiError { status, body: text }.into(),
            });
        }
        Ok((text, index))
    }

    /// Sorts a failed request into TLS trouble (a user error with a hint,
    /// final), no connection ([`Unreachable`]; a timeout is one too, but
    /// the request may have been sent), or anything else (a connection cut
    /// mid-request: transient).
    fn transport_error(&self, e: reqwest::Error, limit: Duration) -> Failed {
        let mut innermost: &dyn std::error::Error = &e;
        let mut tls = false;
        while let Some(s) = innermost.source() {
            innermost = s;
            tls |= s.to_string().contains("certificate");
        }
        let detail = innermost.to_string();
        if tls {
            let error = User::new(
                format!("TLS with Nomad failed ({detail}); expected a certificate for {} issued by the Nomad CA", self.server_name),
                "the CA is /infrastructure/certificates/<ca_cert_secret_name> in SSM unless NOMAD_CACERT names \
                 another; set NOMAD_TLS_SERVER_NAME if the servers' certificates carry another name",
            )
            .into();
            Failed {
                error,
                class: Class::Final,
            }
        } else if e.is_connect() {
            Failed {
                error: Unreachable(detail).into(),
                class: Class::NotSent,
            }
        } else if e.is_timeout() {
            Failed {
                error: Unreachable(format!("no answer within {}", seconds(limit))).into(),
                class: Class::Transient,
            }
        } else {
            Failed {
                error: anyhow::Error::new(e),
                class: Class::Transient,
            }
        }
    }
}

fn decode<T: DeserializeOwned>(method: &Method, addr: &str, path: &str, text: &str) -> Result<T> {
    let text = if text.trim().is_empty() { "null" } else { text };
    serde_json::from_str(text).with_context(|| {
        let shown: String = text.chars().take(300).collect();
        format!("{method} {addr}{path}: unexpected answer: {shown}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(parse_addr("10.0.0.1").unwrap().as_str(), "https://10.0.0.1:4646/");
        assert_eq!(
            parse_addr("https://nomad.example:1234").unwrap().as_str(),
            "https://nomad.example:1234/"
        );
        assert!(parse_addr("http://10.0.0.1:4646").is_err());
        let ip = parse_addr("https://127.0.0.1:99").unwrap();
        assert_eq!(server_name(&ip, None, "eu-west-1"), "server.eu-west-1.nomad");
        assert_eq!(server_name(&ip, Some("x.y"), "eu-west-1"), "x.y");
        let dns = parse_addr("lb-1.elb.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(
            server_name(&dns, None, "eu-west-1"),
            "lb-1.elb.eu-west-1.amazonaws.com"
        );
    }

    #[test]
    fn settings_from_variables() {
        assert!(NomadSettings::resolve(|_| None).unwrap().is_none());
        let s = NomadSettings::resolve(|k| (k == "NOMAD_ADDR").then(|| "127.0.0.1:1".to_string()))
            .unwrap()
            .unwrap();
        assert_eq!(s.addr.as_deref(), Some("127.0.0.1:1"));
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("c.pem");
        std::fs::write(&cert, "x").unwrap();
        let cert = cert.display().to_string();
        let err = NomadSettings::resolve(|k| (k == "NOMAD_CLIENT_CERT").then(|| cert.clone())).unwrap_err();
        assert!(
            format!("{err:#}").contains("both client cert and client key"),
            "{err:#}"
        );
        let err =
            NomadSettings::resolve(|k| (k == "NOMAD_ADDR").then(|| "http://x".to_string())).unwrap_err();
        assert!(format!("{err:#}").contains("https only"), "{err:#}");
    }

    #[test]
    fn api_errors_show_the_body() {
        let e = anyhow::Error::new(ApiError {
            status: 403,
            body: "Permission denied".into(),
        })
        .context("GET https://x:1/v1/acl/tokens");
        assert_eq!(
            format!("{e:#}"),
            "GET https://x:1/v1/acl/tokens: Nomad answered 403: Permission denied"
        );
        assert_eq!(api_error(&e).unwrap().status, 403);
    }

    #[test]
    fn failures_are_classified() {
        use Class::*;
        let cases: &[(&str, u16, &str, Class)] = &[
            ("server_trouble", 500, "rpc error: EOF", Transient),
            ("no_leader", 500, "No cluster leader", Transient),
            ("empty_500", 500, "", Transient),
            ("bad_gateway", 502, "", Transient),
            ("unavailable", 503, "no healthy upstream", Transient),
            ("gateway_timeout", 504, "", Transient),
            (
                "check_index",
                500,
                "Enforcing job modify index 0: job already exists",
                Final,
            ),
            (
                "bootstrap_done",
                500,
                "ACL bootstrap already done (reset index: 7)",
                Final,
            ),
            ("permission_500", 500, "rpc error: Permission denied", Final),
            ("token_not_found_500", 500, "ACL token not found", Final),
            ("job_not_found_500", 500, "job not found", Final),
            ("bad_request", 400, "Job ID hasn't been provided", Final),
            ("forbidden", 403, "Permission denied", Final),
            ("not_found", 404, "deployment not found", Final),
            ("method", 405, "Invalid method", Final),
            ("throttled", 429, "", Final),
            ("not_implemented", 501, "", Final),
        ];
        for (name, status, body, want) in cases {
            assert_eq!(classify(*status, body), *want, "{name}");
        }
    }

    #[test]
    fn backoff_doubles_to_five_seconds_with_jitter() {
        let ms = |n, j| Retry::backoff(n, j).as_millis();
        assert_eq!([ms(1, 0.0), ms(1, 0.999_999)], [100, 199]);
        assert_eq!(ms(2, 0.0), 200);
        assert_eq!(ms(3, 0.0), 400);
        assert_eq!([ms(6, 0.0), ms(6, 0.999_999)], [2500, 4999]);
        assert_eq!(ms(40, 0.0), 2500);
        let j = jitter();
        assert!((0.0..1.0).contains(&j), "{j}");
    }

    #[test]
    fn settings_shorten_the_retries() {
        assert_eq!(Retry::resolve(None), Retry::default());
        let s = NomadSettings {
            wait: Some(Duration::from_secs(8)),
            ..NomadSettings::default()
        };
        let r = Retry::resolve(Some(&s));
        assert_eq!(r.deadline, Duration::from_secs(8));
        assert_eq!(r.attempt_timeout, Duration::from_secs(6));
        let s = NomadSettings {
            wait: Some(Duration::from_secs(40)),
            ..NomadSettings::default()
        };
        assert_eq!(Retry::resolve(Some(&s)).attempt_timeout, Duration::from_secs(10));
    }

    fn failed(status: u16, body: &str) -> Failed {
        Failed {
            class: classify(status, body),
            error: ApiError {
                status,
                body: body.into(),
            }
            .into(),
        }
    }

    /// Runs `retry` over attempts that fail as `script` says, then
    /// succeed; the result and the number of attempts.
    async fn scripted(retry: Retry, idempotent: bool, script: Vec<Failed>) -> (Result<()>, usize) {
        let script = std::sync::Mutex::new(script.into_iter());
        let count = std::sync::atomic::AtomicUsize::new(0);
        let out = retry
            .run(idempotent, Duration::ZERO, |_| {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let next = script.lock().unwrap().next();
                async move { next.map_or(Ok(()), Err) }
            })
            .await;
        (out, count.into_inner())
    }

    #[tokio::test]
    async fn transient_failures_are_retried_until_the_deadline() {
        let r = Retry {
            deadline: Duration::from_secs(2),
            attempt_timeout: Duration::from_secs(1),
        };
        let (out, n) = scripted(r, true, vec![failed(500, "rpc error: EOF"), failed(503, "")]).await;
        assert!(out.is_ok());
        assert_eq!(n, 3);
        // A write not marked idempotent: once.
        let (out, n) = scripted(r, false, vec![failed(503, "")]).await;
        assert_eq!(n, 1);
        assert_eq!(
            format!("{:#}", out.unwrap_err()),
            "Nomad answered 503: (empty body)"
        );
        // Nothing sent: any request is repeated.
        let refused = Failed {
            class: Class::NotSent,
            error: Unreachable("Connection refused".into()).into(),
        };
        let (out, n) = scripted(r, false, vec![refused]).await;
        assert!(out.is_ok());
        assert_eq!(n, 2);
        // Final answers are not repeated, whatever the method.
        let (out, n) = scripted(
            r,
            true,
            vec![failed(500, "Enforcing job modify index 3: job does not exist")],
        )
        .await;
        assert_eq!(n, 1);
        assert!(api_error(&out.unwrap_err()).is_some());
        // Always failing: gives up once the deadline leaves no room.
        let start = Instant::now();
        let always = (0..1000).map(|_| failed(500, "rpc error: test fault")).collect();
        let (out, n) = scripted(r, true, always).await;
        let took = start.elapsed();
        let err = out.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.starts_with(&format!("gave up after {n} attempts in ")),
            "{text}"
        );
        assert!(
            text.ends_with("s: Nomad answered 500: rpc error: test fault"),
            "{text}"
        );
        assert!(took <= Duration::from_millis(2300), "{took:?}");
        assert!(took >= Duration::from_millis(1800), "{took:?}");
        assert!((3..=9).contains(&n), "{n}");
        assert_eq!(api_error(&err).unwrap().status, 500);
        // A single attempt.
        let (_, n) = scripted(Retry::once(), true, vec![failed(503, "")]).await;
        assert_eq!(n, 1);
    }
}
