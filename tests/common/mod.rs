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

/// A parameter's (decrypted) value as the stand's SSM has it.
pub async fn ssm(stand: &Stand, name: &str) -> Option<String> {
    let client = aws_sdk_ssm::Client::new(&stand.sdk().await);
    client
        .get_parameter()
        .name(name)
        .with_decryption(true)
        .send()
        .await
        .ok()
        .and_then(|o| o.parameter?.value)
}

pub struct Stand {
    pub moto: Moto,
    pub sim: rolesanywhere_sim::SimHandle,
    pub dir: tempfile::TempDir,
}

impl Stand {
    pub async fn start() -> Stand {
        Self::start_at("127.0.0.1".parse().unwrap()).await
    }

    /// The simulator (the AWS endpoint edgectl uses) listening on `ip`,
    /// e.g. where test hosts reach it too.
    pub async fn start_at(ip: std::net::IpAddr) -> Stand {
        let moto = Moto::start().await.expect("moto starts");
        let sim = rolesanywhere_sim::start(std::net::SocketAddr::new(ip, 0), moto.url.clone())
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
        run(cmd).await
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

/// The result of one edgectl run, with assertions that print everything on
/// failure, and its peak resident memory where [`run`] measured it.
pub struct Run(pub Output, pub Option<u64>);

/// Runs `cmd` to the end (stdin empty, output captured) and measures its
/// peak RSS with `wait4`, which `Command::output` cannot report.
pub async fn run(cmd: tokio::process::Command) -> Run {
    spawn_timed(cmd).await.expect("run task").run
}

/// A finished run and when each of its output lines appeared (offset from
/// the start, stdout or stderr, the line).
pub struct Timed {
    pub run: Run,
    pub lines: Vec<(std::time::Duration, Stream, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// Starts `cmd` (stdin empty, output captured line by line with the time
/// each line arrived) on a blocking thread; the handle yields it finished,
/// with its peak RSS from `wait4`.
pub fn spawn_timed(mut cmd: tokio::process::Command) -> tokio::task::JoinHandle<Timed> {
    let cmd = std::mem::replace(cmd.as_std_mut(), std::process::Command::new("true"));
    tokio::task::spawn_blocking(move || run_timed(cmd))
}

fn run_timed(mut cmd: std::process::Command) -> Timed {
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    let started = std::time::Instant::now();
    #[allow(clippy::zombie_processes)] // reaped by wait4 below
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("edgectl runs");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let reader = |pipe: Box<dyn Read + Send>, stream: Stream| {
        let lines = Arc::clone(&lines);
        std::thread::spawn(move || {
            let mut all = Vec::new();
            let mut pipe = BufReader::new(pipe);
            loop {
                let mut line = Vec::new();
                match pipe.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let text = String::from_utf8_lossy(&line).trim_end().to_string();
                        lines.lock().unwrap().push((started.elapsed(), stream, text));
                        all.extend_from_slice(&line);
                    }
                }
            }
            all
        })
    };
    let out = reader(
        Box::new(child.stdout.take().expect("stdout pipe")),
        Stream::Stdout,
    );
    let err = reader(
        Box::new(child.stderr.take().expect("stderr pipe")),
        Stream::Stderr,
    );
    let stdout = out.join().expect("stdout reader");
    let stderr = err.join().expect("stderr reader");
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; wait4 fills it for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let reaped = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert_eq!(reaped, pid, "wait4: {}", std::io::Error::last_os_error());
    let output = Output {
        status: std::process::ExitStatus::from_raw(status),
        stdout,
        stderr,
    };
    let lines = std::mem::take(&mut *lines.lock().unwrap());
    Timed {
        run: Run(output, Some(usage.ru_maxrss as u64)),
        lines,
    }
}

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

    /// Peak resident memory in KiB, where measured.
    pub fn peak_kib(&self) -> u64 {
        self.1.expect("run without a memory measurement")
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
    Run(out, None)
}

/// Everything in the account that still carries a deployment's tag (or
/// lives under its SSM paths), service by service: what `cloud down` must
/// leave empty.
pub async fn leftovers(stand: &Stand, deployment: &str) -> Vec<String> {
    let sdk = stand.sdk().await;
    let tagged = |tags: &[(Option<&str>, Option<&str>)]| {
        tags.iter()
            .any(|(k, v)| *k == Some("edgectl:deployment") && *v == Some(deployment))
    };
    let mut left = Vec::new();

    let pca = aws_sdk_acmpca::Client::new(&sdk);
    for ca in pca
        .list_certificate_authorities()
        .send()
        .await
        .unwrap()
        .certificate_authorities
        .unwrap_or_default()
    {
        let arn = ca.arn.clone().unwrap();
        let tags = pca
            .list_tags()
            .certificate_authority_arn(&arn)
            .send()
            .await
            .unwrap()
            .tags
            .unwrap_or_default();
        let pairs: Vec<_> = tags
            .iter()
            .map(|t| (Some(t.key.as_str()), t.value.as_deref()))
            .collect();
        if tagged(&pairs) && ca.status != Some(aws_sdk_acmpca::types::CertificateAuthorityStatus::Deleted) {
            left.push(format!("acm-pca {arn}"));
        }
    }
    let ra = aws_sdk_rolesanywhere::Client::new(&sdk);
    let anchors = ra
        .list_trust_anchors()
        .send()
        .await
        .unwrap()
        .trust_anchors
        .unwrap_or_default();
    let profiles = ra
        .list_profiles()
        .send()
        .await
        .unwrap()
        .profiles
        .unwrap_or_default();
    for arn in anchors
        .iter()
        .filter_map(|a| a.trust_anchor_arn.clone())
        .chain(profiles.iter().filter_map(|p| p.profile_arn.clone()))
    {
        let tags = ra
            .list_tags_for_resource()
            .resource_arn(&arn)
            .send()
            .await
            .unwrap()
            .tags
            .unwrap_or_default();
        let pairs: Vec<_> = tags
            .iter()
            .map(|t| (Some(t.key.as_str()), Some(t.value.as_str())))
            .collect();
        if tagged(&pairs) {
            left.push(format!("rolesanywhere {arn}"));
        }
    }
    let iam = aws_sdk_iam::Client::new(&sdk);
    for role in iam.list_roles().send().await.unwrap().roles {
        if role.role_name.starts_with("edgectl-") {
            left.push(format!("iam role {}", role.role_name));
        }
    }
    for p in iam
        .list_instance_profiles()
        .send()
        .await
        .unwrap()
        .instance_profiles
    {
        if p.instance_profile_name.starts_with("edgectl-") {
            left.push(format!("iam instance profile {}", p.instance_profile_name));
        }
    }
    let ssm = aws_sdk_ssm::Client::new(&sdk);
    let prefix = if deployment == "default" {
        "/infrastructure".to_string()
    } else {
        format!("/edgectl/{deployment}")
    };
    let params = ssm
        .get_parameters_by_path()
        .path(&prefix)
        .recursive(true)
        .send()
        .await
        .unwrap();
    for p in params.parameters.unwrap_or_default() {
        left.push(format!("ssm {}", p.name.unwrap_or_default()));
    }
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let filter = aws_sdk_ec2::types::Filter::builder()
        .name("tag:edgectl:deployment")
        .values(deployment)
        .build();
    let vpcs = ec2
        .describe_vpcs()
        .filters(filter.clone())
        .send()
        .await
        .unwrap()
        .vpcs
        .unwrap_or_default();
    left.extend(
        vpcs.iter()
            .map(|v| format!("ec2 vpc {}", v.vpc_id().unwrap_or_default())),
    );
    let subnets = ec2
        .describe_subnets()
        .filters(filter.clone())
        .send()
        .await
        .unwrap()
        .subnets
        .unwrap_or_default();
    left.extend(
        subnets
            .iter()
            .map(|s| format!("ec2 subnet {}", s.subnet_id().unwrap_or_default())),
    );
    let igws = ec2
        .describe_internet_gateways()
        .filters(filter.clone())
        .send()
        .await
        .unwrap();
    left.extend(
        igws.internet_gateways()
            .iter()
            .map(|g| format!("ec2 igw {}", g.internet_gateway_id().unwrap_or_default())),
    );
    let rts = ec2
        .describe_route_tables()
        .filters(filter.clone())
        .send()
        .await
        .unwrap();
    left.extend(
        rts.route_tables()
            .iter()
            .map(|r| format!("ec2 route table {}", r.route_table_id().unwrap_or_default())),
    );
    let sgs = ec2
        .describe_security_groups()
        .filters(filter.clone())
        .send()
        .await
        .unwrap();
    left.extend(
        sgs.security_groups()
            .iter()
            .map(|g| format!("ec2 security group {}", g.group_id().unwrap_or_default())),
    );
    let eips = ec2
        .describe_addresses()
        .filters(filter.clone())
        .send()
        .await
        .unwrap();
    left.extend(
        eips.addresses()
            .iter()
            .map(|a| format!("ec2 eip {}", a.allocation_id().unwrap_or_default())),
    );
    // moto ignores tag filters here: check the tags ourselves.
    let nats = ec2.describe_nat_gateways().send().await.unwrap();
    for n in nats.nat_gateways() {
        let pairs: Vec<_> = n.tags().iter().map(|t| (t.key(), t.value())).collect();
        if tagged(&pairs) && n.state().map(|s| s.as_str()) != Some("deleted") {
            left.push(format!(
                "ec2 nat gateway {}",
                n.nat_gateway_id().unwrap_or_default()
            ));
        }
    }
    let instances = ec2.describe_instances().filters(filter).send().await.unwrap();
    for i in instances.reservations().iter().flat_map(|r| r.instances()) {
        let state = i
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str())
            .unwrap_or_default();
        if state != "terminated" && state != "shutting-down" {
            left.push(format!("ec2 instance {}", i.instance_id().unwrap_or_default()));
        }
    }
    let elb = aws_sdk_elasticloadbalancingv2::Client::new(&sdk);
    for lb in elb
        .describe_load_balancers()
        .send()
        .await
        .unwrap()
        .load_balancers()
    {
        if lb
            .load_balancer_name()
            .unwrap_or_default()
            .starts_with("edgectl-")
        {
            left.push(format!(
                "elbv2 load balancer {}",
                lb.load_balancer_name().unwrap_or_default()
            ));
        }
    }
    for tg in elb.describe_target_groups().send().await.unwrap().target_groups() {
        if tg.target_group_name().unwrap_or_default().starts_with("edgectl-") {
            left.push(format!(
                "elbv2 target group {}",
                tg.target_group_name().unwrap_or_default()
            ));
        }
    }
    let cognito = aws_sdk_cognitoidentityprovider::Client::new(&sdk);
    let pools = cognito.list_user_pools().max_results(60).send().await.unwrap();
    for p in pools.user_pools() {
        let id = p.id().unwrap_or_default();
        let d = cognito
            .describe_user_pool()
            .user_pool_id(id)
            .send()
            .await
            .unwrap();
        let tags = d
            .user_pool()
            .and_then(|u| u.user_pool_tags())
            .cloned()
            .unwrap_or_default();
        if tags.get("edgectl:deployment").map(String::as_str) == Some(deployment) {
            left.push(format!("cognito user pool {id}"));
        }
    }
    let ecr = aws_sdk_ecr::Client::new(&sdk);
    let repos = ecr.describe_repositories().send().await.unwrap();
    for r in repos.repositories() {
        let arn = r.repository_arn().unwrap_or_default();
        let tags = ecr
            .list_tags_for_resource()
            .resource_arn(arn)
            .send()
            .await
            .unwrap();
        let pairs: Vec<_> = tags
            .tags()
            .iter()
            .map(|t| (Some(t.key()), Some(t.value())))
            .collect();
        if tagged(&pairs) {
            left.push(format!(
                "ecr repository {}",
                r.repository_name().unwrap_or_default()
            ));
        }
    }
    left
}
pub mod devices;
pub mod whole_cloud;
