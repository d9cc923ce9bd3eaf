//! The local stand-in for AWS that every edgectl integration test uses:
//! a fresh moto server behind our Roles Anywhere simulator (which forwards
//! every other service to moto and logs each request), and a way to run the
//! real edgectl binary against it.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use testkit::moto::Moto;

pub const GOOD_CONFIG: &str = r#"{
  "cluster": {"datacenter_name": "control-plane", "instance_count": 3, "nomad_region": "eu-west-1",
              "discovery_tag_key": "nomad-type", "discovery_tag_value": "server"},
  "certificates": {"ca_cert_secret_name": "ca-caCertificate",
                   "server_cert_secret_name": "nomad-server-eu-west-1-Certificate",
                   "server_private_key_secret_name": "nomad-server-eu-west-1-PrivateKey"},
  "authentication": {"username": "admin", "email": "ops@example.com", "domain_prefix": "robot-fleet-7"}
}"#;

/// The foundation's components alone: tests of them need no Nomad.
pub const FOUNDATION: &str = "--only=pca,roles-anywhere";

pub struct Stand {
    pub moto: Moto,
    pub sim: rolesanywhere_sim::SimHandle,
    pub dir: tempfile::TempDir,
}

impl Stand {
    pub async fn start() -> Stand {
        let moto = Moto::start().await.expect("moto starts");
        let sim = rolesanywhere_sim::start("127.0.0.1:0".parse().unwrap(), moto.url.clone())
            .await
            .expect("the Roles Anywhere simulator starts");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("deployment.json"), GOOD_CONFIG).unwrap();
        // An empty AWS config so the developer's own profile never leaks in.
        std::fs::write(dir.path().join("aws-config"), "").unwrap();
        Stand { moto, sim, dir }
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("deployment.json")
    }

    /// The SDK configuration of a test talking to the same stand-in.
    pub async fn sdk(&self) -> aws_config::SdkConfig {
        let base = self.moto.sdk_config().await;
        base.into_builder().endpoint_url(&self.sim.url).build()
    }

    /// Runs `edgectl --config <stand config> ARGS` against the stand-in.
    pub async fn edgectl(&self, args: &[&str]) -> Run {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.arg("--config").arg(self.config_path()).args(args);
        self.env(&mut cmd);
        Run(cmd.output().await.expect("edgectl runs"))
    }

    pub fn env(&self, cmd: &mut tokio::process::Command) {
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env("AWS_REGION", "eu-west-1")
            .env("AWS_ENDPOINT_URL", &self.sim.url)
            .env("AWS_CONFIG_FILE", self.dir.path().join("aws-config"))
            .env("AWS_SHARED_CREDENTIALS_FILE", self.dir.path().join("aws-config"))
            .env("NO_COLOR", "1")
            // moto's load balancers have made-up DNS names: without this a
            // test that reaches the acl component would resolve one outside
            // this machine. Tests with a real Nomad set their own.
            .env("NOMAD_ADDR", "https://127.0.0.1:1")
            .env("EDGECTL_NOMAD_WAIT", "3");
    }

    /// Write calls that reached the stand-in since the last reset.
    pub fn writes(&self) -> Vec<String> {
        self.sim
            .requests()
            .into_iter()
            .filter(|r| r.is_write())
            .map(|r| r.action())
            .collect()
    }
}

/// The result of one edgectl run, with assertions that print everything on failure.
pub struct Run(pub Output);

impl Run {
    pub fn code(&self) -> i32 {
        self.0.status.code().unwrap_or(-1)
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    pub fn expect(&self, code: i32) -> &Self {
        assert_eq!(
            self.code(),
            code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout(),
            self.stderr()
        );
        self
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", self.stdout()))
    }
}

/// Runs edgectl with no AWS at all (for input validation).
pub fn edgectl_offline(dir: &Path, args: &[&str]) -> Run {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_edgectl"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .env("HOME", dir)
        .env("NO_COLOR", "1")
        // Nothing listens here: a test that reaches AWS fails loudly.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_REGION", "eu-west-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .output()
        .expect("edgectl runs");
    Run(out)
}
