//! `edgectl-sandbox serve`: the long-lived supervisor behind
//! `scripts/sandbox up`. It owns every stand-in (they die with it, through
//! PR_SET_PDEATHSIG): moto (AWS, simulated), the Roles Anywhere simulator,
//! a real Nomad server (mTLS + ACL, edgectl's own certificates from SSM)
//! and two device hosts (systemd-nspawn), and drives edgectl against them:
//! `cloud up --only pca,roles-anywhere,servers` (the server.hcl of the
//! instance's user data is what the Nomad server runs), `cloud up --only acl`,
//! `device provision --all`, `job run heartbeat`.
//!
//! State (`$EDGECTL_SANDBOX_STATE`, set by the script): `ready` or `error`
//! when setup ends, `summary.txt`, `sandbox.env`, `deployment.json`,
//! `known_hosts`, `artifacts/`, `nomad/` (TLS files, token). SIGTERM or
//! SIGINT tears everything down and removes the state's contents.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use testkit::hosts::{HostOptions, TestHost};
use testkit::moto::Moto;
use testkit::nomad::{GivenTls, NomadHttp, NomadServer, Ports};
use testkit::pca::Issued;
use testkit::server_hcl;

const REGION: &str = "eu-west-1";
const HOSTS: usize = 2;
const HOST_PREFIX: &str = "sandbox-device";
/// Nomad's own ports: `edgectl env` names `https://<endpoint>:4646`.
const PORTS: Ports = Ports {
    http: 4646,
    rpc: 4647,
    serf: 4648,
};
const CONFIG: &str = r#"{
  "cluster": {"datacenter_name": "control-plane", "instance_count": 1, "nomad_region": "eu-west-1",
              "discovery_tag_key": "nomad-type", "discovery_tag_value": "server"},
  "certificates": {"ca_cert_secret_name": "ca-caCertificate",
                   "server_cert_secret_name": "nomad-server-eu-west-1-Certificate",
                   "server_private_key_secret_name": "nomad-server-eu-west-1-PrivateKey"},
  "authentication": {"username": "admin", "email": "sandbox@example.com", "domain_prefix": "edgectl-sandbox"}
}"#;
const CA: &str = "/infrastructure/certificates/ca-caCertificate";
const SERVER_CERT: &str = "/infrastructure/certificates/nomad-server-eu-west-1-Certificate";
const SERVER_KEY: &str = "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey";
const CLI_CERT: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate";
const CLI_KEY: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey";
const NOMAD_ENDPOINT: &str = "/infrastructure/nomad/endpoint";
const NOMAD_BOOTSTRAP_TOKEN: &str = "/infrastructure/nomad/token/bootstrap";
const DENYLIST: &str = "env_aws,env_gce,env_azure,env_digitalocean";
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything that runs; dropped (in reverse) on the way out.
struct Sandbox {
    state: PathBuf,
    repo: PathBuf,
    edgectl: PathBuf,
    moto: Option<Moto>,
    sim: Option<rolesanywhere_sim::SimHandle>,
    server: Option<NomadServer>,
    hosts: Vec<TestHost>,
    token: String,
    lines: Vec<String>,
    started: Instant,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("serve") => {}
        Some("check") => match precheck() {
            Ok(()) => return,
            Err(e) => {
                eprintln!("sandbox: {e:#}");
                std::process::exit(1);
            }
        },
        _ => {
            eprintln!("usage: edgectl-sandbox serve|check  (run through scripts/sandbox)");
            std::process::exit(2);
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let code = rt.block_on(serve());
    std::process::exit(code);
}

fn env_path(name: &str) -> anyhow::Result<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .with_context(|| format!("{name} is not set (start the sandbox with scripts/sandbox up)"))
}

/// What must hold before anything starts, each failure one line.
fn precheck() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("must run as root (systemd-nspawn hosts, an address on lo, nftables): try sudo");
    }
    for tool in ["systemd-nspawn", "ip", "nft"] {
        if !on_path(tool) {
            bail!("`{tool}` is missing: run scripts/install-test-deps (Debian/Ubuntu)");
        }
    }
    let ip = testkit::hosts::services_ip();
    for port in [PORTS.http, PORTS.rpc, PORTS.serf] {
        // 0.0.0.0 catches a listener on any address, ours included.
        if TcpListener::bind(("0.0.0.0", port)).is_err() {
            bail!("port {port} is in use (Nomad's server needs {ip}:{port}): stop what listens there (ss -ltnp 'sport = :{port}')");
        }
    }
    Ok(())
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

async fn serve() -> i32 {
    let mut sb = match Sandbox::new() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sandbox: {e:#}");
            return 1;
        }
    };
    let _ = std::fs::remove_file(sb.state.join("ready"));
    let _ = std::fs::remove_file(sb.state.join("error"));
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    let mut int =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()).expect("SIGINT handler");
    let setup = sb.up();
    let result = tokio::select! {
        r = setup => r,
        _ = term.recv() => Err(anyhow::anyhow!("stopped (SIGTERM) during setup")),
        _ = int.recv() => Err(anyhow::anyhow!("stopped (SIGINT) during setup")),
    };
    let code = match result {
        Ok(summary) => {
            let _ = std::fs::write(sb.state.join("summary.txt"), &summary);
            let _ = std::fs::write(sb.state.join("ready"), "");
            eprintln!("{summary}");
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("sandbox: stopping");
            0
        }
        Err(e) => {
            let msg = format!("{e:#}");
            eprintln!("sandbox: setup failed: {msg}");
            let _ = std::fs::write(
                sb.state.join("error"),
                format!("{}\n{msg}\n", sb.lines.join("\n")),
            );
            1
        }
    };
    sb.down().await;
    code
}

impl Sandbox {
    fn new() -> anyhow::Result<Sandbox> {
        let state = env_path("EDGECTL_SANDBOX_STATE")?;
        let edgectl = env_path("EDGECTL_BIN")?;
        std::fs::create_dir_all(&state).with_context(|| format!("creating {}", state.display()))?;
        Ok(Sandbox {
            state,
            repo: testkit::paths::repo_root(),
            edgectl,
            moto: None,
            sim: None,
            server: None,
            hosts: Vec::new(),
            token: String::new(),
            lines: Vec::new(),
            started: Instant::now(),
        })
    }

    fn step(&mut self, line: String) {
        eprintln!("sandbox: {line}");
        self.lines.push(line);
    }

    fn inventory(&self) -> PathBuf {
        self.repo.join("inventory").join("sandbox.yml")
    }

    fn nomad_dir(&self) -> PathBuf {
        self.state.join("nomad")
    }

    fn sim_url(&self) -> String {
        self.sim.as_ref().map(|s| s.url.clone()).unwrap_or_default()
    }

    async fn up(&mut self) -> anyhow::Result<String> {
        precheck()?;
        let ip = testkit::hosts::ensure_services_ip().context("adding the services address")?;
        let t = Instant::now();
        let moto = Moto::start().await.context("starting moto")?;
        self.step(format!(
            "moto (SIMULATED AWS, in memory) at {} ({:.1}s)",
            moto.url,
            t.elapsed().as_secs_f64()
        ));
        let sim = rolesanywhere_sim::start(SocketAddr::new(ip.into(), 0), moto.url.clone())
            .await
            .context("starting the Roles Anywhere simulator")?;
        self.step(format!(
            "Roles Anywhere simulator (SIMULATED IAM Roles Anywhere, in front of moto) at {}",
            sim.url
        ));
        self.moto = Some(moto);
        self.sim = Some(sim);
        std::fs::write(self.state.join("deployment.json"), CONFIG)?;
        std::fs::write(self.state.join("aws-config"), "")?;
        std::fs::create_dir_all(self.state.join("home"))?;

        // Hosts boot while cloud up runs.
        let t = Instant::now();
        let boot = TestHost::boot_many(
            HOSTS,
            HOST_PREFIX,
            HostOptions {
                internet: true,
                ..HostOptions::default()
            },
        );
        // `servers` brings the network and load balancer it needs: all only
        // in moto. Its instance's user data holds the server.hcl run below.
        let up = self.edgectl(&["cloud", "up", "--only", "pca,roles-anywhere,servers"], &[]);
        let (hosts, up) = tokio::join!(boot, up);
        self.hosts = hosts.context("booting the device hosts (systemd-nspawn)")?;
        up?;
        let names: Vec<String> = self
            .hosts
            .iter()
            .map(|h| format!("{} {}", h.name, h.ip))
            .collect();
        self.step(format!(
            "edgectl cloud up --only pca,roles-anywhere,servers: ok (CA, Roles Anywhere; VPC, load balancer and one server instance SIMULATED in moto); device hosts booted (SIMULATED devices: systemd-nspawn containers): {} ({:.1}s)",
            names.join(", "),
            t.elapsed().as_secs_f64()
        ));

        // The control plane: one real Nomad server running the server.hcl of
        // the user data edgectl gave the (never booting) instance, with
        // edgectl's certificates.
        let t = Instant::now();
        let sdk = self.sdk().await;
        let ssm = aws_sdk_ssm::Client::new(&sdk);
        let rendered = server_hcl_of_the_instance(&aws_sdk_ec2::Client::new(&sdk)).await?;
        let mut pems = Vec::new();
        for name in [CA, SERVER_CERT, SERVER_KEY, CLI_CERT, CLI_KEY] {
            pems.push(
                ssm_get(&ssm, name)
                    .await?
                    .with_context(|| format!("{name} is not in SSM after cloud up"))?,
            );
        }
        let [ca, cert, key, cli_cert, cli_key]: [String; 5] = pems.try_into().expect("five");
        let nd = self.nomad_dir();
        std::fs::create_dir_all(&nd)?;
        write_mode(&nd.join("ca.pem"), &ca, 0o644)?;
        write_mode(&nd.join("cli.pem"), &cli_cert, 0o644)?;
        write_mode(&nd.join("cli-key.pem"), &cli_key, 0o600)?;
        let files = NomadServer::prepare_with_tls(
            GivenTls {
                ca_pem: ca.clone(),
                server: issued(cert, key, &ca),
                cli: issued(cli_cert, cli_key, &ca),
                region: REGION.into(),
            },
            IpAddr::V4(ip),
            PORTS,
        )?;
        let join = [SocketAddr::new(IpAddr::V4(ip), PORTS.serf).to_string()];
        let local = server_hcl::localize(&rendered, &files, &join)?;
        server_hcl::only_local_changes(&rendered, &local)
            .context("the sandbox changed more of edgectl's server.hcl than addresses and paths")?;
        write_mode(&nd.join("server.hcl"), &local, 0o644)?;
        let mut server = NomadServer::spawn_from_config(files, &local)
            .await
            .context("starting the Nomad server")?;
        // edgectl's server certificate names server.<region>.nomad, not this address.
        server.tls_name = Some(format!("server.{REGION}.nomad"));
        let wait = server.wait_leader(testkit::nomad::LEADER_TIMEOUT).await;
        let log = server.log_path().display().to_string();
        self.server = Some(server);
        wait.context("the Nomad server electing itself leader")?;
        self.step(format!(
            "Nomad server (real; stands in for the SIMULATED EC2 instance) at https://{ip}:{}: the server.hcl of the user data `cloud up` gave the instance, \
             only addresses, ports, paths and the join list changed ({}), edgectl's certificates from SSM ({:.1}s; log {log})",
            PORTS.http,
            nd.join("server.hcl").display(),
            t.elapsed().as_secs_f64()
        ));

        // ACLs: edgectl's own acl component against this server (NOMAD_ADDR).
        // `--only acl` brings the components it needs; auth (Cognito) is
        // new here, and like the rest only in moto.
        let t = Instant::now();
        self.edgectl(&["cloud", "up", "--only", "acl"], &self.nomad_env(false))
            .await
            .context("edgectl's acl component against the sandbox's Nomad server")?;
        let how = "edgectl cloud up --only acl: ok, against the local Nomad server (NOMAD_ADDR): bootstrap token, submit-job policy, \
                   OIDC auth method, CI token; with Cognito, which acl needs, SIMULATED in moto";
        self.token = ssm_get(&ssm, NOMAD_BOOTSTRAP_TOKEN)
            .await?
            .context("no bootstrap token in SSM after the ACL step")?;
        write_mode(&nd.join("token"), &self.token, 0o600)?;
        self.step(format!("{how} ({:.1}s)", t.elapsed().as_secs_f64()));
        // Where Nomad answers, in place of the simulated load balancer's
        // made-up name (which resolves nowhere): `edgectl env` and `job run`
        // read it.
        ssm.put_parameter()
            .name(NOMAD_ENDPOINT)
            .value(ip.to_string())
            .r#type(aws_sdk_ssm::types::ParameterType::String)
            .overwrite(true)
            .send()
            .await
            .context("writing the Nomad endpoint to SSM")?;
        self.step(format!(
            "set {NOMAD_ENDPOINT} = {ip} in SSM (the simulated load balancer's DNS name resolves nowhere; a later `edgectl cloud up` puts it back)"
        ));

        // The fleet's files.
        let helper = signing_helper();
        self.write_files(ip, helper.as_deref())?;
        self.step(format!(
            "wrote {} and {}",
            self.inventory().display(),
            self.state.join("sandbox.env").display()
        ));

        let t = Instant::now();
        let inv = self.inventory().display().to_string();
        let kh = self.state.join("known_hosts").display().to_string();
        let art = self.state.join("artifacts").display().to_string();
        self.edgectl(
            &[
                "device",
                "provision",
                "--all",
                "-i",
                &inv,
                "--known-hosts",
                &kh,
                "--artifacts",
                &art,
            ],
            &self.nomad_env(true),
        )
        .await?;
        let names: Vec<String> = self.hosts.iter().map(|h| h.name.clone()).collect();
        self.wait_ready(&names).await?;
        self.step(format!(
            "edgectl device provision --all: ok; nodes ready: {} ({:.1}s)",
            names.join(", "),
            t.elapsed().as_secs_f64()
        ));

        let t = Instant::now();
        let count = HOSTS.to_string();
        let var = format!("count={count}");
        self.edgectl(&["job", "run", "heartbeat", "--var", &var], &self.nomad_env(true))
            .await?;
        let allocs = self.running_allocs("heartbeat").await?;
        self.step(format!(
            "edgectl job run heartbeat --var {var}: ok; running on {} ({:.1}s)",
            allocs.join(", "),
            t.elapsed().as_secs_f64()
        ));
        Ok(self.summary(ip, helper.as_deref()))
    }

    async fn sdk(&self) -> aws_config::SdkConfig {
        let base = self.moto.as_ref().expect("started").sdk_config().await;
        base.into_builder().endpoint_url(self.sim_url()).build()
    }

    /// NOMAD_* for edgectl against the sandbox's server (the token once known).
    fn nomad_env(&self, token: bool) -> Vec<(String, String)> {
        let nd = self.nomad_dir();
        let ip = testkit::hosts::services_ip();
        let mut v = vec![
            ("NOMAD_ADDR".into(), format!("https://{ip}:{}", PORTS.http)),
            ("NOMAD_CACERT".into(), nd.join("ca.pem").display().to_string()),
            (
                "NOMAD_CLIENT_CERT".into(),
                nd.join("cli.pem").display().to_string(),
            ),
            (
                "NOMAD_CLIENT_KEY".into(),
                nd.join("cli-key.pem").display().to_string(),
            ),
            ("NOMAD_TLS_SERVER_NAME".into(), format!("server.{REGION}.nomad")),
        ];
        if token {
            v.push(("NOMAD_TOKEN".into(), self.token.clone()));
        }
        v
    }

    /// `edgectl --config <state>/deployment.json ARGS` against the
    /// stand-ins, run in the repository (for `jobs/`); output to the log.
    async fn edgectl(&self, args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
        let mut cmd = tokio::process::Command::new(&self.edgectl);
        cmd.arg("--config")
            .arg(self.state.join("deployment.json"))
            .args(args);
        cmd.env_clear()
            .kill_on_drop(true)
            .current_dir(&self.repo)
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.state.join("home"))
            .env("USER", "root")
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", REGION)
            .env("AWS_ENDPOINT_URL", self.sim_url())
            .env("AWS_CONFIG_FILE", self.state.join("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.state.join("aws-config"))
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        eprintln!("sandbox: running edgectl {}", args.join(" "));
        let out = cmd.output().await.context("running edgectl")?;
        eprint!("{}", String::from_utf8_lossy(&out.stdout));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            let tail: Vec<&str> = std::str::from_utf8(&out.stderr)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(15)
                .collect();
            bail!(
                "edgectl {} exited {}:\n{}",
                args.join(" "),
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        Ok(())
    }

    fn write_files(&self, ip: std::net::Ipv4Addr, helper: Option<&Path>) -> anyhow::Result<()> {
        let kh: String = self
            .hosts
            .iter()
            .map(|h| format!("{}\n", h.known_hosts_line))
            .collect();
        std::fs::write(self.state.join("known_hosts"), kh)?;
        let art = self.state.join("artifacts");
        let _ = std::fs::remove_dir_all(&art);
        std::fs::create_dir_all(&art)?;
        std::os::unix::fs::symlink(testkit::tools::nomad_bin(), art.join("nomad"))?;
        if let Some(h) = helper {
            std::os::unix::fs::symlink(h, art.join("aws_signing_helper"))?;
        }
        let mut y = format!(
            "# Generated by scripts/sandbox up: the sandbox's two device hosts\n\
             # (systemd-nspawn containers). Removed by scripts/sandbox down.\n\
             all:\n  vars:\n    ansible_user: root\n    container_runtime: none\n    aws_credentials: {}\n    \
             nomad_servers: [\"{ip}:{}\"]\n    nomad_fingerprint_denylist: {DENYLIST}\n  children:\n    sandbox:\n      hosts:\n",
            helper.is_some(),
            PORTS.rpc
        );
        for h in &self.hosts {
            let _ = write!(
                y,
                "        {}:\n          ansible_host: {}\n          ansible_ssh_private_key_file: {}\n",
                h.name,
                h.ip,
                h.client_key_path.display()
            );
        }
        std::fs::write(self.inventory(), y)?;
        let nd = self.nomad_dir();
        let bin_dir = self.edgectl.parent().map(Path::to_path_buf).unwrap_or_default();
        let nomad_dir = testkit::tools::nomad_bin()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let env = format!(
            "# edgectl sandbox: `. {state}/sandbox.env` (removed by scripts/sandbox down)\n\
             export AWS_ENDPOINT_URL={sim}  # the Roles Anywhere simulator (SIMULATED), forwarding to moto (SIMULATED AWS)\n\
             export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing AWS_REGION={REGION}\n\
             export AWS_CONFIG_FILE={state}/aws-config AWS_SHARED_CREDENTIALS_FILE={state}/aws-config\n\
             export NOMAD_ADDR=https://{ip}:{http}\n\
             export NOMAD_CACERT={nd}/ca.pem NOMAD_CLIENT_CERT={nd}/cli.pem NOMAD_CLIENT_KEY={nd}/cli-key.pem\n\
             export NOMAD_TLS_SERVER_NAME=server.{REGION}.nomad\n\
             export NOMAD_TOKEN_FILE={nd}/token\n\
             NOMAD_TOKEN=$(cat {nd}/token); export NOMAD_TOKEN\n\
             export PATH=\"{bin}:{nomad}:$PATH\"\n\
             edgectl() {{ command edgectl --config {state}/deployment.json \"$@\"; }}\n",
            state = self.state.display(),
            sim = self.sim_url(),
            http = PORTS.http,
            nd = nd.display(),
            bin = bin_dir.display(),
            nomad = nomad_dir.display(),
        );
        write_mode(&self.state.join("sandbox.env"), &env, 0o600)?;
        Ok(())
    }

    fn api(&self) -> NomadHttp {
        self.server
            .as_ref()
            .expect("started")
            .api()
            .with_token(&self.token)
    }

    async fn wait_ready(&self, names: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let nodes = self.api().get("/v1/nodes").await.context("listing nodes")?;
            let status = |name: &str| {
                nodes
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|n| n["Name"] == name)
                    .map(|n| n["Status"].as_str().unwrap_or("?").to_string())
            };
            let states: Vec<(String, Option<String>)> =
                names.iter().map(|n| (n.clone(), status(n))).collect();
            if states.iter().all(|(_, s)| s.as_deref() == Some("ready")) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("nodes not ready within {READY_TIMEOUT:?}: {states:?}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// `<node name>` of each running allocation of `job`, waiting for at least one.
    async fn running_allocs(&self, job: &str) -> anyhow::Result<Vec<String>> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let allocs = self.api().get(&format!("/v1/job/{job}/allocations")).await?;
            let running: Vec<String> = allocs
                .as_array()
                .into_iter()
                .flatten()
                .filter(|a| a["ClientStatus"] == "running")
                .map(|a| a["NodeName"].as_str().unwrap_or("?").to_string())
                .collect();
            if !running.is_empty() {
                return Ok(running);
            }
            if Instant::now() > deadline {
                bail!("no running allocation of {job} within {READY_TIMEOUT:?}: {allocs}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    fn summary(&self, ip: std::net::Ipv4Addr, helper: Option<&Path>) -> String {
        let state = self.state.display();
        let mut s = format!(
            "edgectl sandbox is up ({:.0}s)\n\nWhat happened:\n",
            self.started.elapsed().as_secs_f64()
        );
        for l in &self.lines {
            let _ = writeln!(s, "  - {l}");
        }
        let nomad = testkit::tools::nomad_bin();
        let _ = write!(
            s,
            "\nSimulated (nothing here reaches AWS):\n\
             \x20 AWS                 moto, in memory, on 127.0.0.1 (gone after `down`)\n\
             \x20 IAM Roles Anywhere  our simulator at {sim}\n\
             \x20 EC2, ELB, Cognito    in moto only (`cloud up` made the VPC, load balancer, server instance\n\
             \x20                     and user pool): moto never boots the instance; one local Nomad server\n\
             \x20                     on {ip}, running the server.hcl of its user data, stands in for it\n\
             \x20 devices             systemd-nspawn containers on this machine, not Raspberry Pis\n\
             Real:\n\
             \x20 Nomad {nv} server (mTLS + ACL) https://{ip}:{http}  binary {nomad} ({src})\n\
             \x20 signing helper      {helper}\n\
             \n\
             Try next:\n\
             \x20 . {state}/sandbox.env          # AWS_*, NOMAD_* (management token), PATH, an `edgectl` function\n\
             \x20 nomad node status\n\
             \x20 nomad job status heartbeat\n\
             \x20 edgectl device status --all -i inventory/sandbox.yml --known-hosts {state}/known_hosts\n\
             \x20 eval \"$(edgectl env --client-cert --token management)\"   # as an operator does (endpoint and certificates from SSM)\n\
             \x20 edgectl job run heartbeat --var count=2 --var message=hello\n\
             \x20 Nomad API/UI: https://{ip}:{http} (mTLS; the certificate names server.{REGION}.nomad, not the IP):\n\
             \x20   curl --resolve server.{REGION}.nomad:{http}:{ip} --cacert {nd}/ca.pem --cert {nd}/cli.pem \\\n\
             \x20        --key {nd}/cli-key.pem -H \"X-Nomad-Token: $NOMAD_TOKEN\" https://server.{REGION}.nomad:{http}/v1/nodes\n\
             \x20   UI in a browser: map server.{REGION}.nomad to {ip} (/etc/hosts), trust {nd}/ca.pem, import the\n\
             \x20   client certificate {nd}/cli.pem + cli-key.pem, open https://server.{REGION}.nomad:{http}/ui\n\
             \x20 log: {state}/log\n\
             Stop and remove everything: scripts/sandbox down\n",
            sim = self.sim_url(),
            http = PORTS.http,
            nv = testkit::paths::version("NOMAD_VERSION"),
            src = std::env::var("EDGECTL_SANDBOX_NOMAD_SOURCE").unwrap_or_else(|_| "the test-tools cache".into()),
            nomad = nomad.display(),
            nd = self.nomad_dir().display(),
            helper = match helper {
                Some(h) => format!("{} (devices get AWS credentials through Roles Anywhere)", h.display()),
                None => "none found (aws_signing_helper not on PATH, $AWS_SIGNING_HELPER unset): devices get no AWS credentials (aws_credentials: false)".into(),
            },
        );
        s
    }

    /// Stops the hosts, Nomad, the simulator and moto; removes the state's
    /// contents (not the pid/log the script owns) and the inventory.
    async fn down(&mut self) {
        let hosts = std::mem::take(&mut self.hosts);
        testkit::hosts::stop_all(hosts).await;
        drop(self.server.take());
        drop(self.sim.take());
        drop(self.moto.take());
        let _ = std::fs::remove_file(self.inventory());
        for name in [
            "summary.txt",
            "sandbox.env",
            "deployment.json",
            "aws-config",
            "known_hosts",
            "ready",
        ] {
            let _ = std::fs::remove_file(self.state.join(name));
        }
        for dir in ["artifacts", "nomad", "home"] {
            let _ = std::fs::remove_dir_all(self.state.join(dir));
        }
        eprintln!("sandbox: stopped");
    }
}

/// `aws_signing_helper`: `$AWS_SIGNING_HELPER`, else one on PATH.
fn signing_helper() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("AWS_SIGNING_HELPER").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join("aws_signing_helper"))
            .find(|f| f.is_file())
    })
}

fn issued(cert: String, key: String, ca: &str) -> Issued {
    Issued {
        cert_pem: cert,
        chain_pem: ca.to_string(),
        key_pem: key,
        serial_hex: String::new(),
    }
}

/// The `server.hcl` that the user data of the deployment's server instance
/// (launched in moto by `cloud up`, never booted) writes.
async fn server_hcl_of_the_instance(ec2: &aws_sdk_ec2::Client) -> anyhow::Result<String> {
    use aws_sdk_ec2::types::{Filter, InstanceAttributeName};
    use base64::Engine;
    let out = ec2
        .describe_instances()
        .filters(
            Filter::builder()
                .name("tag:edgectl:deployment")
                .values("default")
                .build(),
        )
        .filters(
            Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .build(),
        )
        .send()
        .await
        .context("listing the server instance in moto")?;
    let id = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find_map(|i| i.instance_id())
        .context("`cloud up --only servers` left no server instance in moto")?;
    let data = ec2
        .describe_instance_attribute()
        .instance_id(id)
        .attribute(InstanceAttributeName::UserData)
        .send()
        .await
        .with_context(|| format!("reading the user data of {id}"))?
        .user_data()
        .and_then(|u| u.value())
        .map(str::to_string)
        .with_context(|| format!("instance {id} has no user data"))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .with_context(|| format!("the user data of {id} is not base64"))?;
    server_hcl::from_user_data(&String::from_utf8_lossy(&bytes))
        .with_context(|| format!("the user data of {id}"))
}

async fn ssm_get(c: &aws_sdk_ssm::Client, name: &str) -> anyhow::Result<Option<String>> {
    match c.get_parameter().name(name).with_decryption(true).send().await {
        Ok(o) => Ok(o.parameter.and_then(|p| p.value)),
        Err(e) if e.as_service_error().is_some_and(|e| e.is_parameter_not_found()) => Ok(None),
        Err(e) => Err(anyhow::Error::from(e).context(format!("reading {name} from SSM"))),
    }
}

fn write_mode(path: &Path, content: &str, mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(content.as_bytes())?;
    Ok(())
}
