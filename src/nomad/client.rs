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
use std::time::Duration;

/// Nomad's HTTP port, used when an address names none.
pub const DEFAULT_PORT: u16 = 4646;
const TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

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
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("addr", &self.addr)
            .field("server_name", &self.server_name)
            .field("token", &self.token)
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
        })
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
        let (text, index) = self.call_meta(Method::GET, path, None, None).await?;
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
        let timeout = wait + wait / 16 + TIMEOUT;
        let (text, got) = self.call_meta(Method::GET, &full, None, Some(timeout)).await?;
        Ok((decode(&Method::GET, &self.addr, path, &text)?, got))
    }

    /// A DELETE whose answer is JSON (e.g. the evaluation of a job stop).
    pub async fn delete_json<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        let text = self.call(Method::DELETE, path, None).await?;
        decode(&Method::DELETE, &self.addr, path, &text)
    }

    async fn call(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<String> {
        self.call_meta(method, path, body, None)
            .await
            .map(|(text, _)| text)
    }

    /// One request; the body and the `X-Nomad-Index` header (0 when absent).
    async fn call_meta(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Option<Duration>,
    ) -> Result<(String, u64)> {
        let what = || format!("{method} {}{path}", self.addr);
        let mut url = self.base.clone();
        let (p, q) = path.split_once('?').unwrap_or((path, ""));
        url.set_path(p);
        url.set_query((!q.is_empty()).then_some(q));
        let mut req = self.http.request(method.clone(), url);
        if let Some(t) = &self.token {
            req = req.header("X-Nomad-Token", t.expose());
        }
        if let Some(b) = body {
            req = req.header("Content-Type", "application/json").body(b);
        }
        if let Some(t) = timeout {
            req = req.timeout(t);
        }
        tracing::debug!("{method} {}{path}", self.addr);
        let resp = match req.send().await {
            Ok(r) => r,
            Err(e) => return Err(self.transport_error(e)).with_context(what),
        };
        let status = resp.status().as_u16();
        let index = resp
            .headers()
            .get("X-Nomad-Index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer to {}", what()))?;
        if !(200..300).contains(&status) {
            return Err(ApiError { status, body: text }).with_context(what);
        }
        Ok((text, index))
    }

    /// Sorts a failed request into TLS trouble (a user error with a hint),
    /// no connection ([`Unreachable`]), or anything else.
    fn transport_error(&self, e: reqwest::Error) -> anyhow::Error {
        let mut innermost: &dyn std::error::Error = &e;
        let mut tls = false;
        while let Some(s) = innermost.source() {
            innermost = s;
            tls |= s.to_string().contains("certificate");
        }
        let detail = innermost.to_string();
        if tls {
            User::new(
                format!("TLS with Nomad failed ({detail}); expected a certificate for {} issued by the Nomad CA", self.server_name),
                "the CA is /infrastructure/certificates/<ca_cert_secret_name> in SSM unless NOMAD_CACERT names \
                 another; set NOMAD_TLS_SERVER_NAME if the servers' certificates carry another name",
            )
            .into()
        } else if e.is_connect() || e.is_timeout() {
            Unreachable(detail).into()
        } else {
            anyhow::Error::new(e)
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
}
