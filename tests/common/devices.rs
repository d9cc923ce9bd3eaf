//! A fleet to provision: the AWS stand-in with edgectl's CA and Roles
//! Anywhere set up by `cloud up`, a real Nomad server (mTLS + ACL, the
//! server certificate edgectl issued) on an address every test host
//! reaches, real Debian hosts with systemd and sshd, and an Ansible
//! inventory naming them.

pub use super::ssm;
use super::{Run, Stand, FOUNDATION};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use testkit::hosts::{HostOptions, TestHost};
use testkit::nomad::{GivenTls, NomadHttp, NomadServer, ServerOpts};
use testkit::pca::Issued;

pub const REGION: &str = "eu-west-1";
pub const CA: &str = "/infrastructure/certificates/ca-caCertificate";
const SERVER_CERT: &str = "/infrastructure/certificates/nomad-server-eu-west-1-Certificate";
const SERVER_KEY: &str = "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey";
const CLI_CERT: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-Certificate";
const CLI_KEY: &str = "/infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey";
/// Nomad's own fingerprinters that probe cloud metadata addresses: tests
/// contact nothing but this machine and the test hosts.
const DENYLIST: &str = "env_aws,env_gce,env_azure,env_digitalocean";
/// From `device provision` ending to the node `ready` on the server.
pub const READY_TIMEOUT: Duration = Duration::from_secs(90);

pub struct Fleet {
    pub stand: Stand,
    pub server: NomadServer,
    pub token: String,
    pub hosts: Vec<TestHost>,
    pub dir: tempfile::TempDir,
    pub ca_pem: String,
    cli: Issued,
}

fn issued(cert: String, key: String, ca: &str) -> Issued {
    Issued {
        cert_pem: cert,
        chain_pem: ca.to_string(),
        key_pem: key,
        serial_hex: String::new(),
    }
}

impl Fleet {
    /// `n` hosts named `<prefix>-1..n`, the control plane's foundation,
    /// and one Nomad server; nothing provisioned yet.
    pub async fn start(n: usize, prefix: &str) -> Fleet {
        Self::start_with(
            n,
            prefix,
            HostOptions {
                internet: true,
                ..HostOptions::default()
            },
        )
        .await
    }

    pub async fn start_with(n: usize, prefix: &str, opts: HostOptions) -> Fleet {
        // The simulator where the hosts reach it: their credential_process
        // calls CreateSession there.
        let ip = testkit::hosts::ensure_services_ip().expect("the services address");
        let stand = Stand::start_at(ip.into()).await;
        let boot = TestHost::boot_many(n, prefix, opts);
        let up = stand.edgectl(&["cloud", "up", FOUNDATION]);
        let (hosts, up) = tokio::join!(boot, up);
        let hosts = hosts.expect("test hosts boot");
        up.expect(0);
        let mut pems = Vec::new();
        for name in [CA, SERVER_CERT, SERVER_KEY, CLI_CERT, CLI_KEY] {
            pems.push(
                ssm(&stand, name)
                    .await
                    .unwrap_or_else(|| panic!("{name} in SSM after cloud up")),
            );
        }
        let [ca, cert, key, cli_cert, cli_key]: [String; 5] = pems.try_into().unwrap();
        let cli = issued(cli_cert, cli_key, &ca);
        let cli_copy = issued(cli.cert_pem.clone(), cli.key_pem.clone(), &ca);
        let mut server = NomadServer::spawn_with_tls(
            GivenTls {
                ca_pem: ca.clone(),
                server: issued(cert, key, &ca),
                cli: cli_copy,
                region: REGION.into(),
            },
            ServerOpts {
                bind: IpAddr::V4(ip),
                bootstrap_expect: 1,
                ..ServerOpts::default()
            },
        )
        .await
        .expect("a Nomad server starts with edgectl's certificate");
        server
            .wait_leader(testkit::nomad::LEADER_TIMEOUT)
            .await
            .expect("leader");
        let token = server.bootstrap_acl().await.expect("ACL bootstrap");
        let dir = tempfile::tempdir().unwrap();
        let fleet = Fleet {
            stand,
            server,
            token,
            hosts,
            dir,
            ca_pem: ca,
            cli,
        };
        fleet.write_known_hosts();
        std::fs::create_dir_all(fleet.artifacts()).unwrap();
        let nomad = testkit::tools::nomad_bin();
        std::os::unix::fs::symlink(&nomad, fleet.artifacts().join("nomad")).unwrap();
        fleet.write_inventory(
            &fleet
                .hosts
                .iter()
                .map(|h| (h.name.as_str(), ""))
                .collect::<Vec<_>>(),
        );
        fleet
    }

    pub fn inventory(&self) -> PathBuf {
        self.dir.path().join("inventory.yml")
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.dir.path().join("known_hosts")
    }

    pub fn artifacts(&self) -> PathBuf {
        self.dir.path().join("artifacts")
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn host(&self, name: &str) -> &TestHost {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .expect("a host of the fleet")
    }

    pub fn write_known_hosts(&self) {
        let lines: String = self
            .hosts
            .iter()
            .map(|h| format!("{}\n", h.known_hosts_line))
            .collect();
        std::fs::write(self.known_hosts(), lines).unwrap();
    }

    /// The inventory: every host in group `robot1` (its datacenter),
    /// reached as root with the test key; `extra` adds YAML lines to a
    /// host's entry (indented by the caller's 8 spaces).
    pub fn write_inventory(&self, hosts: &[(&str, &str)]) {
        let rpc = SocketAddr::new(self.server.bind, self.server.ports.rpc);
        let mut y = format!(
            "all:\n  vars:\n    ansible_user: root\n    container_runtime: none\n    aws_credentials: false\n    \
             nomad_servers: [\"{rpc}\"]\n    nomad_fingerprint_denylist: {DENYLIST}\n  children:\n    robot1:\n      hosts:\n"
        );
        for (name, extra) in hosts {
            let h = self.host(name);
            y.push_str(&format!(
                "        {name}:\n          ansible_host: {}\n          ansible_ssh_private_key_file: {}\n",
                h.ip,
                h.client_key_path.display()
            ));
            for line in extra.lines().filter(|l| !l.trim().is_empty()) {
                y.push_str(&format!("          {}\n", line.trim()));
            }
        }
        std::fs::write(self.inventory(), y).unwrap();
    }

    /// `edgectl device ARGS -i <inventory> --known-hosts <file>` with a
    /// HOME of its own (the failed-hosts state lives there) and NOMAD_*
    /// pointing at the test server with the management token.
    pub async fn device(&self, args: &[&str]) -> Run {
        self.device_env(args, &[]).await
    }

    pub async fn device_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let ca = self.dir.path().join("ca.pem");
        let cert = self.dir.path().join("cli.pem");
        let key = self.dir.path().join("cli-key.pem");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        std::fs::write(&cert, &self.cli.cert_pem).unwrap();
        std::fs::write(&key, &self.cli.key_pem).unwrap();
        std::fs::create_dir_all(self.home()).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.arg("--config")
            .arg(self.stand.config_path())
            .arg("device")
            .args(args);
        cmd.arg("-i")
            .arg(self.inventory())
            .arg("--known-hosts")
            .arg(self.known_hosts());
        self.stand.env(&mut cmd);
        cmd.env("HOME", self.home())
            .env("USER", "root")
            .env("NOMAD_ADDR", &self.server.http_url)
            .env("NOMAD_CACERT", &ca)
            .env("NOMAD_CLIENT_CERT", &cert)
            .env("NOMAD_CLIENT_KEY", &key)
            .env("NOMAD_TOKEN", &self.token)
            .env("NOMAD_TLS_SERVER_NAME", format!("server.{REGION}.nomad"))
            .env_remove("SSH_AUTH_SOCK");
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::run(cmd).await
    }

    pub fn api(&self) -> NomadHttp {
        self.server.api().with_token(&self.token)
    }

    /// The node called `name` as the server lists it, if any.
    pub async fn node(&self, name: &str) -> Option<serde_json::Value> {
        let nodes = self.api().get("/v1/nodes").await.expect("listing nodes");
        nodes.as_array()?.iter().find(|n| n["Name"] == name).cloned()
    }

    /// Waits until every named node is `ready`; their IDs.
    pub async fn wait_ready(&self, names: &[&str]) -> Vec<String> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let mut ids = Vec::new();
            for name in names {
                match self.node(name).await {
                    Some(n) if n["Status"] == "ready" => ids.push(n["ID"].as_str().unwrap().to_string()),
                    _ => break,
                }
            }
            if ids.len() == names.len() {
                return ids;
            }
            if Instant::now() > deadline {
                let mut logs = String::new();
                for name in names {
                    let h = self.host(name);
                    logs.push_str(&format!(
                        "--- {name}: {:?}\n{}\n",
                        self.node(name).await.map(|n| n["Status"].clone()),
                        h.exec("journalctl -u nomad --no-pager -o cat -n 30")
                            .await
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default()
                    ));
                }
                panic!(
                    "nodes not ready within {READY_TIMEOUT:?}:\n{logs}\nserver:\n{}",
                    self.server.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    pub async fn stop(self) {
        testkit::hosts::stop_all(self.hosts).await;
    }
}

impl Fleet {
    /// `edgectl ARGS` (any subcommand, e.g. `job run heartbeat`) against
    /// the stand-in and the test server, with the same NOMAD_* as
    /// [`Fleet::device_env`] (management token); `env` overrides, and an
    /// empty value counts as unset for edgectl. Runs in the crate root, so
    /// `jobs/` is the repository's.
    pub async fn edgectl_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let ca = self.dir.path().join("ca.pem");
        let cert = self.dir.path().join("cli.pem");
        let key = self.dir.path().join("cli-key.pem");
        std::fs::write(&ca, &self.ca_pem).unwrap();
        std::fs::write(&cert, &self.cli.cert_pem).unwrap();
        std::fs::write(&key, &self.cli.key_pem).unwrap();
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.arg("--config").arg(self.stand.config_path()).args(args);
        self.stand.env(&mut cmd);
        cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("NOMAD_ADDR", &self.server.http_url)
            .env("NOMAD_CACERT", &ca)
            .env("NOMAD_CLIENT_CERT", &cert)
            .env("NOMAD_CLIENT_KEY", &key)
            .env("NOMAD_TOKEN", &self.token)
            .env("NOMAD_TLS_SERVER_NAME", format!("server.{REGION}.nomad"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        super::run(cmd).await
    }
}
