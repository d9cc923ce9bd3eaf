//! Real Nomad agents for the tests (no simulator): the binary built from
//! Nomad's Go module by `scripts/build-test-tools`, configured as edgectl's
//! control plane is — TLS on HTTP and RPC with certificates from a `TestCa`
//! (moto's ACM PCA), `verify_https_client`, `verify_server_hostname`, ACLs on.
//!
//! - `NomadServer::start`: one server (bootstrap_expect 1) on loopback.
//! - `NomadCluster::start3`: three servers joined by address, for leader and
//!   failover tests.
//! - `NomadClient::start_on`: a client agent inside a test host
//!   (systemd-nspawn), joining a server over mTLS with its own certificate.
//! - `NomadHttp`: an mTLS HTTP client (the "CLI" certificate) for the API.
//!
//! Every agent gets OS-chosen free ports and a temp data dir, so tests run in
//! parallel; dropping a value kills its agent and removes its files. Every
//! wait is bounded and its error carries the agent's log tail.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use aws_config::SdkConfig;
use serde_json::Value;

use crate::hosts::{HostOptions, TestHost};
use crate::pca::{Issued, TestCa};
use crate::tools;

/// Nomad's default region; certificates name `server.<region>.nomad`.
pub const REGION: &str = "global";
pub const DATACENTER: &str = "dc1";
/// From spawn to an elected leader. A single server needs a few seconds on
/// an idle machine; the test machines are small and busy.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(90);
/// Attempts with fresh ports when another process took ours between picking
/// them and Nomad binding them.
const PORT_ATTEMPTS: usize = 4;

/// The three ports of an agent.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub http: u16,
    pub rpc: u16,
    pub serf: u16,
}

impl Ports {
    /// Three distinct ports that were free a moment ago on `ip`.
    pub fn free(ip: IpAddr) -> anyhow::Result<Ports> {
        Ok(Self::free_many(ip, 1)?[0])
    }

    /// `n` agents' worth of distinct ports: all listeners are held together
    /// while picking, so no two agents get the same port.
    pub fn free_many(ip: IpAddr, n: usize) -> anyhow::Result<Vec<Ports>> {
        let bind = |_| std::net::TcpListener::bind((ip, 0)).with_context(|| format!("binding {ip}:0"));
        let held: Vec<_> = (0..3 * n).map(bind).collect::<Result<_, _>>()?;
        let ports: Vec<u16> = held
            .iter()
            .map(|l| l.local_addr().map(|a| a.port()))
            .collect::<Result<_, _>>()?;
        Ok(ports
            .chunks(3)
            .map(|p| Ports {
                http: p[0],
                rpc: p[1],
                serf: p[2],
            })
            .collect())
    }
}

/// How to run one server.
#[derive(Clone, Debug)]
pub struct ServerOpts {
    /// Address to bind and advertise. Loopback unless clients in test hosts
    /// must reach it (then the host side of their network).
    pub bind: IpAddr,
    pub bootstrap_expect: u8,
    /// Serf addresses (`ip:port`) of the other servers.
    pub retry_join: Vec<String>,
    /// Pre-chosen ports (a cluster needs them before it starts); `None`
    /// picks free ones.
    pub ports: Option<Ports>,
    /// Nomad's `log_level`.
    pub log_level: &'static str,
}

impl Default for ServerOpts {
    fn default() -> Self {
        ServerOpts {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            bootstrap_expect: 1,
            retry_join: Vec::new(),
            ports: None,
            log_level: "INFO",
        }
    }
}

/// A running Nomad server agent, killed (and its data dir removed) on drop.
pub struct NomadServer {
    pub name: String,
    /// `https://<bind>:<http port>`
    pub http_url: String,
    pub ports: Ports,
    pub bind: IpAddr,
    /// The CA every agent and API client trusts (PEM).
    pub ca_pem: String,
    /// A certificate for API calls (`cli.global.nomad`), as an operator has.
    pub cli: Issued,
    /// Time from spawning the agent to its first view of a leader (set by
    /// `start`/`wait_leader`).
    pub start_to_leader: Option<Duration>,
    /// The name the server certificate carries, when API clients must
    /// check that name rather than the bind address (edgectl's own
    /// certificates name `server.<region>.nomad`, 127.0.0.1 and localhost).
    pub tls_name: Option<String>,
    agent: Agent,
}

impl NomadServer {
    /// Starts a single server (bootstrap_expect 1) and waits for it to
    /// elect itself leader.
    pub async fn start(cfg: &SdkConfig, ca: &TestCa) -> anyhow::Result<NomadServer> {
        Self::start_with(cfg, ca, ServerOpts::default()).await
    }

    /// As `start`, with options. With `bootstrap_expect > 1` use `spawn`
    /// for every server first, then `wait_leader` (as `NomadCluster` does).
    pub async fn start_with(cfg: &SdkConfig, ca: &TestCa, opts: ServerOpts) -> anyhow::Result<NomadServer> {
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let mut server = Self::spawn(cfg, ca, opts.clone()).await?;
            match server.wait_leader(LEADER_TIMEOUT).await {
                Ok(_) => return Ok(server),
                Err(e) if opts.ports.is_none() && server.agent.port_was_taken() => last_err = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last_err.expect("at least one attempt")).context(format!(
            "nomad could not bind free ports in {PORT_ATTEMPTS} attempts"
        ))
    }

    /// Writes the config and certificates and spawns the agent; does not wait.
    pub async fn spawn(cfg: &SdkConfig, ca: &TestCa, opts: ServerOpts) -> anyhow::Result<NomadServer> {
        let bin = nomad_bin().await?;
        let ports = match opts.ports {
            Some(p) => p,
            None => Ports::free(opts.bind)?,
        };
        // server.<region>.nomad is what verify_server_hostname checks on
        // RPC; the IP SAN is what our HTTPS client checks.
        let cert = ca
            .issue(
                cfg,
                &format!("server.{REGION}.nomad"),
                &[&format!("server.{REGION}.nomad"), "localhost"],
                &[opts.bind, IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .await
            .context("issuing the server certificate")?;
        let cli = ca
            .issue(
                cfg,
                &format!("cli.{REGION}.nomad"),
                &[&format!("cli.{REGION}.nomad")],
                &[],
            )
            .await
            .context("issuing the CLI certificate")?;
        Self::spawn_issued(&bin, &ca.cert_pem, &cert, cli, REGION, opts, ports).await
    }

    /// As `spawn`, with certificates made elsewhere (e.g. edgectl's own CA
    /// and the server certificate it stored in SSM): does not wait.
    pub async fn spawn_with_tls(tls: GivenTls, opts: ServerOpts) -> anyhow::Result<NomadServer> {
        let bin = nomad_bin().await?;
        let ports = match opts.ports {
            Some(p) => p,
            None => Ports::free(opts.bind)?,
        };
        let loopback = opts.bind.is_loopback();
        let mut server =
            Self::spawn_issued(&bin, &tls.ca_pem, &tls.server, tls.cli, &tls.region, opts, ports).await?;
        // Given certificates name the loopback address, not other binds.
        if !loopback {
            server.tls_name = Some(format!("server.{}.nomad", tls.region));
        }
        Ok(server)
    }

    async fn spawn_issued(
        bin: &Path,
        ca_pem: &str,
        cert: &Issued,
        cli: Issued,
        region: &str,
        opts: ServerOpts,
        ports: Ports,
    ) -> anyhow::Result<NomadServer> {
        let name = format!("server-{}", ports.rpc);
        let dir = tempdir(&name)?;
        let tls = write_tls(dir.path(), ca_pem, cert, "server")?;
        let join = opts
            .retry_join
            .iter()
            .map(|a| format!("{a:?}"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = format!(
            r#"
name       = "{name}"
region     = "{region}"
datacenter = "{DATACENTER}"
data_dir   = {data_dir:?}
bind_addr  = "{bind}"
log_level  = "{log_level}"
disable_update_check = true

ports {{
  http = {http}
  rpc  = {rpc}
  serf = {serf}
}}
advertise {{
  http = "{bind}:{http}"
  rpc  = "{bind}:{rpc}"
  serf = "{bind}:{serf}"
}}

server {{
  enabled          = true
  bootstrap_expect = {expect}
  server_join {{
    retry_join     = [{join}]
    retry_interval = "1s"
  }}
}}

acl {{
  enabled = true
}}

{tls}

# No Consul here: keep the agent from looking for one.
consul {{
  server_auto_join = false
  client_auto_join = false
  auto_advertise   = false
}}
"#,
            data_dir = dir.path().join("data"),
            bind = opts.bind,
            log_level = opts.log_level,
            http = ports.http,
            rpc = ports.rpc,
            serf = ports.serf,
            expect = opts.bootstrap_expect,
        );
        let agent = Agent::spawn(bin, dir, &name, &config)?;
        let http_url = format!("https://{}", SocketAddr::new(opts.bind, ports.http));
        Ok(NomadServer {
            name,
            http_url,
            ports,
            bind: opts.bind,
            ca_pem: ca_pem.to_string(),
            cli,
            start_to_leader: None,
            tls_name: None,
            agent,
        })
    }

    /// An mTLS API client (CLI certificate), without a token.
    pub fn api(&self) -> NomadHttp {
        match &self.tls_name {
            Some(name) => NomadHttp::named(
                name,
                SocketAddr::new(self.bind, self.ports.http),
                &self.ca_pem,
                Some(&self.cli),
            ),
            None => NomadHttp::new(&self.http_url, &self.ca_pem, Some(&self.cli)),
        }
        .expect("the harness's own certificates make a valid TLS client")
    }

    /// `host:port` of Nomad's RPC listener, as `/v1/status/leader` names it.
    pub fn rpc_addr(&self) -> String {
        SocketAddr::new(self.bind, self.ports.rpc).to_string()
    }

    /// `host:port` of the serf (gossip) listener, for `retry_join`.
    pub fn serf_addr(&self) -> String {
        SocketAddr::new(self.bind, self.ports.serf).to_string()
    }

    /// Waits until this server knows a leader; returns the leader's RPC
    /// address (`/v1/status/leader`).
    pub async fn wait_leader(&mut self, timeout: Duration) -> anyhow::Result<String> {
        let leader = self.wait_leader_other_than(None, timeout).await?;
        self.start_to_leader
            .get_or_insert_with(|| self.agent.started.elapsed());
        Ok(leader)
    }

    /// Waits until this server knows a leader other than `old` (after a
    /// failover); returns its RPC address.
    pub async fn wait_leader_other_than(
        &mut self,
        old: Option<&str>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        let api = self.api();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(exit) = self.agent.exited() {
                bail!(
                    "nomad {} exited ({exit}) before it saw a leader; log {}:\n{}",
                    self.name,
                    self.agent.log_path.display(),
                    self.log_tail()
                );
            }
            let last = match api.get("/v1/status/leader").await {
                Ok(Value::String(l)) if !l.is_empty() && Some(l.as_str()) != old => return Ok(l),
                Ok(v) => format!("leader {v}"),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > deadline {
                bail!(
                    "nomad {} saw no new leader within {timeout:?} (last: {last}); log {}:\n{}",
                    self.name,
                    self.agent.log_path.display(),
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// `POST /v1/acl/bootstrap`: the management token's SecretID. Retries
    /// while the cluster has no leader yet (as edgectl does).
    pub async fn bootstrap_acl(&self) -> anyhow::Result<String> {
        let api = self.api();
        let deadline = Instant::now() + LEADER_TIMEOUT;
        loop {
            let (status, body) = api.send(reqwest::Method::POST, "/v1/acl/bootstrap", None).await?;
            if status == 200 {
                let token: Value = serde_json::from_str(&body)
                    .with_context(|| format!("bootstrap answered 200 with {body}"))?;
                return token["SecretID"]
                    .as_str()
                    .map(str::to_string)
                    .with_context(|| format!("bootstrap token has no SecretID: {body}"));
            }
            let no_leader = body.contains("No cluster leader") || body.contains("no leader");
            if !no_leader || Instant::now() > deadline {
                bail!(
                    "POST /v1/acl/bootstrap answered {status}: {body}\nlog tail:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Kills the agent at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        self.agent.kill();
    }

    pub fn log_path(&self) -> &Path {
        &self.agent.log_path
    }

    /// The last lines of the agent's log, for error messages.
    pub fn log_tail(&self) -> String {
        self.agent.log_tail()
    }
}

/// Certificates, directories and ports for a server whose configuration the
/// test writes itself (e.g. edgectl's rendered `server.hcl`): see
/// [`NomadServer::prepare`] and [`NomadServer::spawn_from_config`].
pub struct ServerFiles {
    /// The agent's name (for logs and errors); not put in any config.
    pub name: String,
    pub region: String,
    pub bind: IpAddr,
    pub ports: Ports,
    /// Trusted CA (PEM), the server's certificate (+ chain) and key.
    pub ca_file: PathBuf,
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// An empty directory for Nomad's `data_dir`.
    pub data_dir: PathBuf,
    ca_pem: String,
    cli: Issued,
    dir: tempfile::TempDir,
}

impl NomadServer {
    /// Issues a server certificate as edgectl's pca component does (CN
    /// `*.elb.<region>.amazonaws.com`, SANs `server.<region>.nomad`,
    /// `localhost`, `bind` and 127.0.0.1) and a CLI certificate
    /// (`cli.<region>.nomad`) from `ca`, writes the TLS files into a temp
    /// dir and makes an empty data dir there. `ports` are the agent's.
    pub async fn prepare(
        cfg: &SdkConfig,
        ca: &TestCa,
        region: &str,
        bind: IpAddr,
        ports: Ports,
    ) -> anyhow::Result<ServerFiles> {
        let server_name = format!("server.{region}.nomad");
        let cert = ca
            .issue(
                cfg,
                &format!("*.elb.{region}.amazonaws.com"),
                &[
                    &format!("*.elb.{region}.amazonaws.com"),
                    &server_name,
                    "localhost",
                ],
                &[bind, IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .await
            .context("issuing the server certificate")?;
        let cli_name = format!("cli.{region}.nomad");
        let cli = ca
            .issue(cfg, &cli_name, &[&cli_name, "localhost"], &[])
            .await
            .context("issuing the CLI certificate")?;
        let tls = GivenTls {
            ca_pem: ca.cert_pem.clone(),
            server: cert,
            cli,
            region: region.to_string(),
        };
        Self::prepare_with_tls(tls, bind, ports)
    }

    /// As [`prepare`](Self::prepare), with certificates made elsewhere
    /// (edgectl's CA and the server certificate it stored in SSM).
    pub fn prepare_with_tls(tls: GivenTls, bind: IpAddr, ports: Ports) -> anyhow::Result<ServerFiles> {
        let name = format!("server-{}", ports.rpc);
        let dir = tempdir(&name)?;
        write_tls(dir.path(), &tls.ca_pem, &tls.server, "server")?;
        let data_dir = dir.path().join("data");
        std::fs::create_dir(&data_dir).with_context(|| format!("creating {}", data_dir.display()))?;
        Ok(ServerFiles {
            name,
            region: tls.region,
            bind,
            ports,
            ca_file: dir.path().join("ca.pem"),
            cert_file: dir.path().join("server.pem"),
            key_file: dir.path().join("server-key.pem"),
            data_dir,
            ca_pem: tls.ca_pem,
            cli: tls.cli,
            dir,
        })
    }

    /// Spawns an agent from `config`, the caller's complete agent
    /// configuration (it must use `files`' paths and ports and bind where
    /// `files` says); does not wait. The harness adds nothing to it.
    pub async fn spawn_from_config(files: ServerFiles, config: &str) -> anyhow::Result<NomadServer> {
        let bin = nomad_bin().await?;
        let agent = Agent::spawn(&bin, files.dir, &files.name, config)?;
        Ok(NomadServer {
            name: files.name,
            http_url: format!("https://{}", SocketAddr::new(files.bind, files.ports.http)),
            ports: files.ports,
            bind: files.bind,
            ca_pem: files.ca_pem,
            cli: files.cli,
            start_to_leader: None,
            tls_name: None,
            agent,
        })
    }

    /// Whether the agent's log says it could not bind one of its ports
    /// (another process took it between picking and binding): then the
    /// caller may retry with fresh ports.
    pub fn port_was_taken(&self) -> bool {
        self.agent.port_was_taken()
    }
}

/// Certificates made outside the harness (edgectl's own CA from SSM): the
/// server's certificate (its `chain_pem` is appended in the agent's
/// cert file), a client certificate for [`NomadServer::api`], and the Nomad
/// region the server certificate names (`server.<region>.nomad`).
pub struct GivenTls {
    pub ca_pem: String,
    pub server: Issued,
    pub cli: Issued,
    pub region: String,
}

/// Three servers (bootstrap_expect 3) on loopback, joined by address.
pub struct NomadCluster {
    pub servers: Vec<NomadServer>,
    /// Spawn to the moment every server knew the leader.
    pub start_to_leader: Duration,
}

impl NomadCluster {
    /// Starts three servers on loopback and waits until all of them know
    /// one leader.
    pub async fn start3(cfg: &SdkConfig, ca: &TestCa) -> anyhow::Result<NomadCluster> {
        Self::start3_on(cfg, ca, IpAddr::V4(Ipv4Addr::LOCALHOST)).await
    }

    /// As `start3`, all three bound to `ip` (e.g. a test host's
    /// `gateway_ip`, so that clients in test hosts can join).
    pub async fn start3_on(cfg: &SdkConfig, ca: &TestCa, ip: IpAddr) -> anyhow::Result<NomadCluster> {
        let started = Instant::now();
        let ports = Ports::free_many(ip, 3)?;
        let mut servers = Vec::new();
        for &p in &ports {
            let opts = ServerOpts {
                bind: ip,
                bootstrap_expect: 3,
                retry_join: ports
                    .iter()
                    .map(|q| SocketAddr::new(ip, q.serf).to_string())
                    .collect(),
                ports: Some(p),
                ..ServerOpts::default()
            };
            servers.push(NomadServer::spawn(cfg, ca, opts).await?);
        }
        let mut cluster = NomadCluster {
            servers,
            start_to_leader: Duration::ZERO,
        };
        let first = cluster.servers[0].wait_leader(LEADER_TIMEOUT).await?;
        for s in &mut cluster.servers[1..] {
            let other = s.wait_leader(LEADER_TIMEOUT).await?;
            if other != first {
                bail!("servers disagree on the leader: {first} and {other}");
            }
        }
        cluster.start_to_leader = started.elapsed();
        Ok(cluster)
    }

    /// Index into `servers` of the current leader, as server 0 (or the first
    /// live one) reports it.
    pub async fn leader(&self) -> anyhow::Result<usize> {
        let mut errs = Vec::new();
        for s in self.servers.iter().filter(|s| s.agent.waiter.is_some()) {
            match s.api().get("/v1/status/leader").await {
                Ok(Value::String(l)) if !l.is_empty() => {
                    return self
                        .servers
                        .iter()
                        .position(|s| s.rpc_addr() == l)
                        .with_context(|| format!("leader {l} is none of our servers"));
                }
                Ok(v) => errs.push(format!("{}: leader {v}", s.name)),
                Err(e) => errs.push(format!("{}: {e:#}", s.name)),
            }
        }
        bail!("no server reports a leader: {}", errs.join("; "))
    }
}

/// Where test hosts see the nomad binary (bind-mounted read-only).
const BIN_IN_HOST: &str = "/opt/nomad-test/bin";
/// A client's config and certificates inside its host, as on a device.
const CONFIG_IN_HOST: &str = "/etc/nomad.d";
/// From `systemctl start nomad` to the node being `ready` on the server.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(90);

/// Boot options for a test host that will run a Nomad client: the pinned
/// nomad binary's directory bind-mounted read-only (building it if needed).
pub async fn host_options() -> anyhow::Result<HostOptions> {
    let bin = nomad_bin().await?;
    let dir = bin.parent().context("the nomad binary has a directory")?;
    Ok(HostOptions {
        bind_ro: vec![(dir.to_path_buf(), PathBuf::from(BIN_IN_HOST))],
        ..HostOptions::default()
    })
}

/// A Nomad client agent running as the systemd unit `nomad` in a test host,
/// with its own certificate (`client.global.nomad` plus the host's IP). It
/// lives as long as its host: dropping the host tears it down.
pub struct NomadClient {
    /// The test host's name, which is also the Nomad node name.
    pub name: String,
    pub node_id: String,
    /// From `systemctl start nomad` to the node `ready` on the server.
    pub join_time: Duration,
}

impl NomadClient {
    /// Starts a client in `host` (booted with [`host_options`]) that joins
    /// `server` (which must be bound where the host can reach it: its
    /// `gateway_ip`, see `ServerOpts::bind`) over mTLS; waits until the
    /// server lists the node as `ready`. `token` reads nodes (management).
    pub async fn start_on(
        host: &TestHost,
        server: &NomadServer,
        cfg: &SdkConfig,
        ca: &TestCa,
        token: &str,
    ) -> anyhow::Result<NomadClient> {
        let bin = format!("{BIN_IN_HOST}/nomad");
        host.exec_ok(&format!("test -x {bin}"))
            .await
            .context("no nomad binary in the host: boot it with nomad::host_options()")?;
        let cert = ca
            .issue(
                cfg,
                &format!("client.{REGION}.nomad"),
                &[&format!("client.{REGION}.nomad"), "localhost"],
                &[IpAddr::V4(host.ip), IpAddr::V4(Ipv4Addr::LOCALHOST)],
            )
            .await
            .with_context(|| format!("issuing the client certificate of {}", host.name))?;
        // Files written under root_dir appear in the host; the paths in the
        // config are the host's own.
        let etc = host.root_dir.join(CONFIG_IN_HOST.trim_start_matches('/'));
        std::fs::create_dir_all(etc.join("tls")).with_context(|| format!("creating {}", etc.display()))?;
        write_tls(&etc.join("tls"), &ca.cert_pem, &cert, "client")?;
        let tls_dir = Path::new(CONFIG_IN_HOST).join("tls");
        let tls = tls_block(
            &tls_dir.join("ca.pem"),
            &tls_dir.join("client.pem"),
            &tls_dir.join("client-key.pem"),
        );
        let config = format!(
            r#"
name       = "{name}"
region     = "{REGION}"
datacenter = "{DATACENTER}"
data_dir   = "/var/lib/nomad"
bind_addr  = "{ip}"
log_level  = "INFO"
disable_update_check = true

client {{
  enabled = true
  servers = ["{server}"]
  options {{
    # These probe cloud metadata addresses; the tests contact nothing
    # but this machine and the test hosts.
    "fingerprint.denylist" = "env_aws,env_gce,env_azure,env_digitalocean"
  }}
}}

plugin "raw_exec" {{
  config {{
    enabled = true
  }}
}}

{tls}

consul {{
  client_auto_join = false
  auto_advertise   = false
}}
"#,
            name = host.name,
            ip = host.ip,
            server = server.rpc_addr(),
        );
        std::fs::write(etc.join("nomad.hcl"), config)?;
        let started = Instant::now();
        // A transient unit, so the agent and its tasks live in the host's
        // own cgroup tree under systemd, as on a device.
        host.exec_ok(&format!(
            "systemd-run --unit=nomad --property=KillMode=process {bin} agent -config {CONFIG_IN_HOST}/nomad.hcl"
        ))
        .await?;
        let api = server.api().with_token(token);
        let deadline = started + JOIN_TIMEOUT;
        loop {
            let nodes = api.get("/v1/nodes").await?;
            let node = nodes
                .as_array()
                .into_iter()
                .flatten()
                .find(|n| n["Name"] == host.name.as_str());
            if let Some(n) = node.filter(|n| n["Status"] == "ready") {
                return Ok(NomadClient {
                    name: host.name.clone(),
                    node_id: n["ID"].as_str().unwrap_or_default().to_string(),
                    join_time: started.elapsed(),
                });
            }
            if Instant::now() > deadline {
                bail!(
                    "node {} not ready on {} within {JOIN_TIMEOUT:?} (server sees: {}); client log:\n{}\nserver log:\n{}",
                    host.name,
                    server.name,
                    node.map_or("nothing".to_string(), |n| n["Status"].to_string()),
                    Self::log_tail(host, 40).await,
                    server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// The client agent's journal in `host`, for error messages.
    pub async fn log_tail(host: &TestHost, lines: usize) -> String {
        match host
            .exec(&format!("journalctl -u nomad --no-pager -o cat -n {lines}"))
            .await
        {
            Ok(out) => String::from_utf8_lossy(&out.stdout).into_owned(),
            Err(e) => format!("(no journal: {e:#})"),
        }
    }

    /// The node's task drivers as the server sees them: (name, detected,
    /// healthy, health description), sorted by name.
    pub async fn drivers(&self, api: &NomadHttp) -> anyhow::Result<Vec<Driver>> {
        let node = api.get(&format!("/v1/node/{}", self.node_id)).await?;
        let mut drivers: Vec<Driver> = node["Drivers"]
            .as_object()
            .context("node has no Drivers")?
            .iter()
            .map(|(name, d)| Driver {
                name: name.clone(),
                detected: d["Detected"] == true,
                healthy: d["Healthy"] == true,
                description: d["HealthDescription"].as_str().unwrap_or_default().to_string(),
            })
            .collect();
        drivers.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(drivers)
    }
}

/// One task driver of a node, as fingerprinted by its client.
#[derive(Clone, Debug)]
pub struct Driver {
    pub name: String,
    pub detected: bool,
    pub healthy: bool,
    pub description: String,
}

/// An mTLS client for Nomad's HTTP API: trusts only the given CA, presents
/// the given certificate, and sends `X-Nomad-Token` when it has one.
#[derive(Clone)]
pub struct NomadHttp {
    pub url: String,
    client: reqwest::Client,
    token: Option<String>,
}

impl NomadHttp {
    pub fn new(url: &str, ca_pem: &str, identity: Option<&Issued>) -> anyhow::Result<NomadHttp> {
        Self::build(url, None, ca_pem, identity)
    }

    /// A client for `https://<name>:<port>` that connects to `addr`: the
    /// certificate is checked against `name`.
    pub fn named(
        name: &str,
        addr: SocketAddr,
        ca_pem: &str,
        identity: Option<&Issued>,
    ) -> anyhow::Result<NomadHttp> {
        let url = format!("https://{name}:{}", addr.port());
        Self::build(&url, Some((name, addr)), ca_pem, identity)
    }

    fn build(
        url: &str,
        resolve: Option<(&str, SocketAddr)>,
        ca_pem: &str,
        identity: Option<&Issued>,
    ) -> anyhow::Result<NomadHttp> {
        let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).context("parsing the CA")?;
        let mut builder = reqwest::Client::builder()
            .tls_certs_only([ca])
            .timeout(Duration::from_secs(30))
            .connect_timeout(Duration::from_secs(5));
        if let Some((name, addr)) = resolve {
            builder = builder.resolve(name, addr);
        }
        if let Some(id) = identity {
            let pem = format!("{}\n{}", id.cert_pem.trim_end(), id.key_pem);
            builder = builder
                .identity(reqwest::Identity::from_pem(pem.as_bytes()).context("parsing the identity")?);
        }
        Ok(NomadHttp {
            url: url.trim_end_matches('/').to_string(),
            client: builder.build().context("building the HTTP client")?,
            token: None,
        })
    }

    /// The same client, sending `token` as `X-Nomad-Token`.
    pub fn with_token(&self, token: &str) -> NomadHttp {
        NomadHttp {
            token: Some(token.to_string()),
            ..self.clone()
        }
    }

    /// One request: `(status, body)`; transport and TLS failures are `Err`.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<(u16, String)> {
        let mut req = self.client.request(method.clone(), format!("{}{path}", self.url));
        if let Some(t) = &self.token {
            req = req.header("X-Nomad-Token", t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {}{path}", self.url))?;
        let status = resp.status().as_u16();
        let text = resp
            .text()
            .await
            .with_context(|| format!("reading the answer to {method} {path}"))?;
        Ok((status, text))
    }

    /// GET, expecting 2xx JSON.
    pub async fn get(&self, path: &str) -> anyhow::Result<Value> {
        self.json(reqwest::Method::GET, path, None).await
    }

    /// PUT (Nomad's write verb), expecting 2xx JSON (`null` for an empty body).
    pub async fn put(&self, path: &str, body: &Value) -> anyhow::Result<Value> {
        self.json(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn json(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        let (status, text) = self.send(method.clone(), path, body).await?;
        if !(200..300).contains(&status) {
            bail!("{method} {path} answered {status}: {text}");
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text).with_context(|| format!("{method} {path} answered non-JSON: {text:.300}"))
    }
}

/// Writes `ca.pem`, `<name>.pem` (cert + chain) and `<name>-key.pem` into
/// `dir`; returns the agent's `tls { }` block.
fn write_tls(dir: &Path, ca_pem: &str, cert: &Issued, name: &str) -> anyhow::Result<String> {
    let ca = dir.join("ca.pem");
    let crt = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&ca, ca_pem)?;
    std::fs::write(&crt, format!("{}\n{}", cert.cert_pem.trim_end(), cert.chain_pem))?;
    std::fs::write(&key, &cert.key_pem)?;
    Ok(tls_block(&ca, &crt, &key))
}

/// Nomad's `tls { }` as edgectl's servers and devices use it.
fn tls_block(ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        r#"tls {{
  http      = true
  rpc       = true
  ca_file   = {ca:?}
  cert_file = {cert:?}
  key_file  = {key:?}
  verify_server_hostname = true
  verify_https_client    = true
}}"#
    )
}

fn tempdir(name: &str) -> anyhow::Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(&format!("edgectl-nomad-{name}-"))
        .tempdir()
        .context("creating a temp dir for a nomad agent")
}

/// The pinned Nomad binary; building it (minutes, once) off the async runtime.
async fn nomad_bin() -> anyhow::Result<PathBuf> {
    tokio::task::spawn_blocking(tools::nomad_bin)
        .await
        .context("building the nomad binary")
}

/// A Nomad agent process on this machine, its config and log in a temp dir.
struct Agent {
    log_path: PathBuf,
    started: Instant,
    pid: i32,
    /// The thread that spawned the agent and waits for it: it reaps the
    /// child, and it must outlive it because PR_SET_PDEATHSIG fires when the
    /// spawning *thread* exits, not the process.
    waiter: Option<JoinHandle<std::io::Result<ExitStatus>>>,
    exit: Option<String>,
    _dir: tempfile::TempDir,
}

impl Agent {
    fn spawn(bin: &Path, dir: tempfile::TempDir, name: &str, config: &str) -> anyhow::Result<Agent> {
        let config_path = dir.path().join("agent.hcl");
        std::fs::write(&config_path, config).with_context(|| format!("writing {}", config_path.display()))?;
        let log_path = dir.path().join("nomad.log");
        let log =
            std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
        let mut cmd = Command::new(bin);
        cmd.arg("agent")
            .arg(format!("-config={}", config_path.display()))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().context("duplicating the log file handle")?)
            .stderr(log)
            .process_group(0);
        // The developer's own NOMAD_* settings must not reach the agent.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("NOMAD_") {
                cmd.env_remove(k);
            }
        }
        let (pid, waiter) = crate::process::spawn_tied(cmd, libc::SIGKILL)
            .with_context(|| format!("spawning {} for {name}", bin.display()))?;
        Ok(Agent {
            log_path,
            started: Instant::now(),
            pid,
            waiter: Some(waiter),
            exit: None,
            _dir: dir,
        })
    }

    /// `Some(how)` once the process has ended.
    fn exited(&mut self) -> Option<String> {
        if self.waiter.as_ref().is_some_and(|w| w.is_finished()) {
            let status = self.waiter.take().expect("checked").join();
            self.exit = Some(format!("{status:?}"));
        }
        self.exit.clone()
    }

    fn kill(&mut self) {
        if let Some(waiter) = self.waiter.take() {
            if !waiter.is_finished() {
                // Its own process group: the group also holds any helper
                // processes it started. The waiter thread then reaps it.
                unsafe { libc::kill(-self.pid, libc::SIGKILL) };
            }
            self.exit = Some(format!("killed: {:?}", waiter.join()));
        }
    }

    fn port_was_taken(&self) -> bool {
        std::fs::read_to_string(&self.log_path).is_ok_and(|l| l.contains("address already in use"))
    }

    fn log_tail(&self) -> String {
        log_tail(&self.log_path, 40)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill();
    }
}

fn log_tail(path: &Path, n: usize) -> String {
    let log = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
