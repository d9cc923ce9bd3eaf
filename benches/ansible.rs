//! `cargo bench --bench ansible [-- 1 4 8 16]`: `edgectl device provision`
//! against an Ansible playbook doing the same steps (bench/ansible/) on the
//! same kind of hosts (real Debian test hosts, systemd, sshd): wall time of
//! a first and a no-change run, and SSH execs per host (counted by each
//! host's sshd). Ansible from PyPI (`ansible-core`, installed into the
//! cache by this bench), forks 5 (its default) and forks N, pipelining and
//! ControlPersist on (its fastest settings). Prints a table and the ratios;
//! asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use common::devices::Fleet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ANSIBLE: &str = "ansible-core==2.17.7";

/// ansible-playbook from a venv in the cache (installed on first use).
fn ansible_playbook() -> PathBuf {
    let venv = testkit::paths::cache_dir().join("ansible-venv");
    let bin = venv.join("bin/ansible-playbook");
    if !bin.exists() {
        let ok = std::process::Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .unwrap();
        assert!(ok.success(), "python3 -m venv");
        let ok = std::process::Command::new(venv.join("bin/pip"))
            .args(["install", "-q", ANSIBLE])
            .status()
            .unwrap();
        assert!(ok.success(), "pip install {ANSIBLE}");
    }
    bin
}

/// Makes each host's sshd log every exec session (LogLevel VERBOSE).
async fn count_sessions(fleet: &Fleet) {
    for h in &fleet.hosts {
        h.exec_ok("echo 'LogLevel VERBOSE' >/etc/ssh/sshd_config.d/bench.conf && systemctl reload ssh")
            .await
            .unwrap();
    }
}

/// Exec sessions each host's sshd has started so far.
async fn sessions(fleet: &Fleet) -> u64 {
    let mut n = 0;
    for h in &fleet.hosts {
        let out = h
            .exec("journalctl -u ssh --no-pager -o cat | grep -c 'Starting session: command' || true")
            .await
            .unwrap();
        n += String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u64>()
            .unwrap_or(0);
    }
    n
}

/// The files the playbook copies: what edgectl would install.
fn files(fleet: &Fleet, dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("ca.pem"), &fleet.ca_pem).unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("templates");
    std::fs::copy(root.join("AmazonRootCA1.pem"), dir.join("AmazonRootCA1.pem")).unwrap();
    std::fs::copy(root.join("nomad-client.service"), dir.join("nomad.service")).unwrap();
    let ok = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .args(["-subj", "/CN=bench", "-days", "30", "-keyout"])
        .arg(dir.join("device-key.pem"))
        .arg("-out")
        .arg(dir.join("device.pem"))
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::os::unix::fs::symlink(testkit::tools::nomad_bin(), dir.join("nomad")).unwrap();
}

async fn playbook(fleet: &Fleet, forks: usize, files_dir: &Path) -> Duration {
    let bench = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/ansible");
    let tmp = fleet.dir.path().join("ansible-tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let started = Instant::now();
    let out = tokio::process::Command::new(ansible_playbook())
        .arg("-i")
        .arg(fleet.inventory())
        .arg(bench.join("provision.yml"))
        .env("BENCH_FILES", files_dir)
        .env("ANSIBLE_FORKS", forks.to_string())
        .env("ANSIBLE_PIPELINING", "True")
        .env("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3")
        .env("ANSIBLE_LOCAL_TEMP", &tmp)
        .env("ANSIBLE_HOME", &tmp)
        .env(
            "ANSIBLE_SSH_ARGS",
            format!(
                "-o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes",
                fleet.known_hosts().display()
            ),
        )
        .env("ANSIBLE_CONTROL_PATH_DIR", &tmp)
        .output()
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        out.status.success(),
        "ansible-playbook failed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    took
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() {
        vec![1, 4, 8, 16]
    } else {
        sizes
    };
    ansible_playbook();
    println!("hosts | tool | first run | execs/host | no-change run | execs/host");
    println!("---|---|---|---|---|---");
    let mut ratios = Vec::new();
    for n in sizes {
        // edgectl on fresh hosts.
        let fleet = Fleet::start(n, &format!("be{n}x")).await;
        let art = fleet.artifacts();
        let args = ["provision", "--all", "--artifacts", art.to_str().unwrap()];
        count_sessions(&fleet).await;
        let s0 = sessions(&fleet).await;
        let t = Instant::now();
        fleet.device(&args).await.expect(0);
        let e_first = t.elapsed();
        let s1 = sessions(&fleet).await;
        fleet.device(&args).await.expect(0); // fills the on-device checksum cache
        let s2 = sessions(&fleet).await;
        let t = Instant::now();
        fleet.device(&args).await.expect(0);
        let e_again = t.elapsed();
        let s3 = sessions(&fleet).await;
        println!(
            "{n} | edgectl | {} | {:.1} | {} | {:.1}",
            secs(e_first),
            (s1 - s0) as f64 / n as f64,
            secs(e_again),
            (s3 - s2) as f64 / n as f64
        );
        fleet.stop().await;

        // Ansible on fresh hosts of the same image (python3 added first,
        // untimed: Ansible needs it on the device, the sample installed it).
        let fleet = Fleet::start(n, &format!("ba{n}x")).await;
        for h in &fleet.hosts {
            h.exec_ok("DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3 >/dev/null")
                .await
                .unwrap();
        }
        let files_dir = fleet.dir.path().join("files");
        files(&fleet, &files_dir);
        count_sessions(&fleet).await;
        let s0 = sessions(&fleet).await;
        let a_first = playbook(&fleet, 5, &files_dir).await;
        let s1 = sessions(&fleet).await;
        let a_again5 = playbook(&fleet, 5, &files_dir).await;
        let s2 = sessions(&fleet).await;
        let a_again_n = playbook(&fleet, n.max(1), &files_dir).await;
        println!(
            "{n} | ansible forks=5 | {} | {:.1} | {} | {:.1}",
            secs(a_first),
            (s1 - s0) as f64 / n as f64,
            secs(a_again5),
            (s2 - s1) as f64 / n as f64
        );
        println!("{n} | ansible forks={n} | – | – | {} | –", secs(a_again_n));
        ratios.push((
            n,
            a_again5.as_secs_f64() / e_again.as_secs_f64(),
            a_again_n.as_secs_f64() / e_again.as_secs_f64(),
            a_first.as_secs_f64() / e_first.as_secs_f64(),
        ));
        fleet.stop().await;
    }
    println!();
    println!("hosts | no-change: ansible forks=5 / edgectl | ansible forks=N / edgectl | first run: ansible forks=5 / edgectl");
    println!("---|---|---|---");
    for (n, r5, rn, rf) in ratios {
        println!("{n} | {r5:.1}× | {rn:.1}× | {rf:.1}×");
    }
}
