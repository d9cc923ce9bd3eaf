//! The Debian test hosts (systemd-nspawn): real systemd, real sshd, each a
//! separate machine; nothing left behind after drop. Needs root.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use testkit::hosts::{stop_all, HostOptions, TestHost};

/// What a dropped host must not leave behind. Other tests run at the same
/// time and may take the same slot (netns and veth names) right away, so
/// these are told apart by the netns inode and the veth ifindex.
struct Traces {
    netns: String,
    netns_ino: u64,
    veth: String,
    veth_ifindex: String,
    root_dir: PathBuf,
}

fn netns_ino(name: &str) -> Option<u64> {
    fs::metadata(format!("/run/netns/{name}")).ok().map(|m| m.ino())
}

fn ifindex(veth: &str) -> Option<String> {
    fs::read_to_string(format!("/sys/class/net/{veth}/ifindex"))
        .ok()
        .map(|s| s.trim().to_string())
}

fn traces(h: &TestHost) -> Traces {
    Traces {
        netns: h.netns(),
        netns_ino: netns_ino(&h.netns()).expect("the host's netns exists"),
        veth: h.veth(),
        veth_ifindex: ifindex(&h.veth()).expect("the host's veth exists"),
        root_dir: h.root_dir.clone(),
    }
}

impl Traces {
    fn to_line(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.netns,
            self.netns_ino,
            self.veth,
            self.veth_ifindex,
            self.root_dir.display()
        )
    }
    fn from_line(line: &str) -> Traces {
        let f: Vec<&str> = line.split(' ').collect();
        Traces {
            netns: f[0].to_string(),
            netns_ino: f[1].parse().unwrap(),
            veth: f[2].to_string(),
            veth_ifindex: f[3].to_string(),
            root_dir: PathBuf::from(f[4]),
        }
    }
}

fn assert_gone(t: &Traces) {
    let listed = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout);
    // Slot names and nsfs inode numbers are both reused by hosts that other
    // tests boot meanwhile; a netns under the old name only counts as left
    // behind while the dead host's own directory (named after its pid) is.
    let same_netns = listed.split_whitespace().any(|w| w == t.netns)
        && netns_ino(&t.netns) == Some(t.netns_ino)
        && t.root_dir.exists();
    assert!(!same_netns, "netns {} left behind:\n{listed}", t.netns);
    let links = Command::new("ip").args(["-o", "link"]).output().unwrap();
    let links = String::from_utf8_lossy(&links.stdout);
    let same_veth = links.lines().any(|l| {
        l.starts_with(&format!("{}: {}@", t.veth_ifindex, t.veth))
            || l.starts_with(&format!("{}: {}:", t.veth_ifindex, t.veth))
    });
    assert!(!same_veth, "veth {} left behind:\n{links}", t.veth);
    let mounts = fs::read_to_string("/proc/mounts").unwrap();
    let root = t.root_dir.display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&root)),
        "a mount under {root} left behind"
    );
    assert!(!t.root_dir.exists(), "{root} left behind");
}

async fn system_state(h: &TestHost) -> String {
    let state = h.exec("systemctl is-system-running").await.unwrap();
    let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
    if state != "running" {
        let failed = h.exec_ok("systemctl --failed --no-legend --plain").await.unwrap();
        eprintln!("{}: {state}; failed units:\n{failed}", h.name);
    }
    state
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_are_separate_machines_with_systemd_and_sshd() {
    let hosts = TestHost::boot_many(2, "pair", HostOptions::default())
        .await
        .expect("2 hosts boot");
    let (a, b) = (&hosts[0], &hosts[1]);
    assert_eq!((a.name.as_str(), b.name.as_str()), ("pair1", "pair2"));
    assert_ne!(a.ip, b.ip);

    // Distinct identities, as the hosts themselves see them.
    let key = |h: &TestHost| h.known_hosts_line.split_once(' ').unwrap().1.to_string();
    assert!(key(a).starts_with("ssh-ed25519 "));
    assert_ne!(key(a), key(b), "host keys must differ");
    for h in &hosts {
        let id = h.exec_ok("cat /etc/machine-id").await.unwrap();
        assert_eq!(id.trim(), h.machine_id);
        assert_eq!(h.exec_ok("hostname").await.unwrap().trim(), h.name);
        let own = h
            .exec_ok("cut -d' ' -f1,2 /etc/ssh/ssh_host_ed25519_key.pub")
            .await
            .unwrap();
        assert_eq!(own.trim(), key(h));
        let state = system_state(h).await;
        assert!(
            state == "running" || state == "degraded",
            "{}: systemd is {state}",
            h.name
        );
    }
    assert_ne!(a.machine_id, b.machine_id);
    // Separate cgroup trees (in a shared one their systemds fail units).
    let cgroup_root_a = a.exec_ok("stat -c %i /sys/fs/cgroup").await.unwrap();
    let cgroup_root_b = b.exec_ok("stat -c %i /sys/fs/cgroup").await.unwrap();
    assert_ne!(cgroup_root_a, cgroup_root_b, "the hosts share a cgroup");

    // sshd, strict host key checking: root and pi (passwordless sudo).
    for h in &hosts {
        let out = h.ssh_ok("root", "echo $(id -un) $(hostname)").await.unwrap();
        assert_eq!(out.trim(), format!("root {}", h.name));
        let out = h
            .ssh_ok("pi", "sudo -n true && echo $(id -un) $(sudo -n id -un)")
            .await
            .unwrap();
        assert_eq!(out.trim(), "pi root");
    }
    // ... and it really is strict: a's address with b's key is refused.
    let wrong = tempfile::NamedTempFile::new().unwrap();
    fs::write(wrong.path(), format!("{} {}\n", a.ip, key(b))).unwrap();
    let mut args = a.ssh_args("root");
    let dest = args.pop().unwrap(); // user@ip comes last
    for arg in args.iter_mut() {
        if arg.starts_with("UserKnownHostsFile=") {
            *arg = format!("UserKnownHostsFile={}", wrong.path().display());
        }
    }
    let out = tokio::process::Command::new("ssh")
        .args(&args)
        .args(["-o", "HostKeyAlgorithms=ssh-ed25519", &dest, "true"])
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("Host key verification failed"),
        "ssh must refuse a wrong host key ({}): {stderr}",
        out.status
    );

    // The network: each host reaches this machine (its gateway) and the other.
    for (h, other) in [(a, b), (b, a)] {
        h.exec_ok(&format!("ping -c1 -W5 {}", h.gateway_ip))
            .await
            .unwrap();
        h.exec_ok(&format!("ping -c1 -W5 {}", other.ip)).await.unwrap();
    }
    let banner = a
        .exec_ok(&format!(
            "bash -c 'exec 3<>/dev/tcp/{}/22 && head -c 7 <&3'",
            b.ip
        ))
        .await
        .unwrap();
    assert_eq!(banner, "SSH-2.0", "{} reaches {}'s sshd", a.name, b.name);

    let gone: Vec<Traces> = hosts.iter().map(traces).collect();
    stop_all(hosts).await;
    for t in &gone {
        assert_gone(t);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cgroups_inside_a_host() {
    let h = TestHost::boot("cgroups", HostOptions::default())
        .await
        .expect("host boots");
    let report = h
        .exec_ok(
            "findmnt -n -o FSTYPE,OPTIONS /sys/fs/cgroup; \
             echo controllers: $(cat /sys/fs/cgroup/cgroup.controllers); \
             echo subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control); \
             echo init: $(cat /proc/1/cgroup)",
        )
        .await
        .unwrap();
    eprintln!("cgroups in a test host:\n{report}");
    assert!(report.starts_with("cgroup2 "), "/sys/fs/cgroup is not cgroup2");
    // Writable: make a cgroup, put a process in it, remove it.
    let out = h
        .exec_ok(
            "set -e; mkdir /sys/fs/cgroup/edgectl-probe; \
             sh -c 'echo $$ > /sys/fs/cgroup/edgectl-probe/cgroup.procs; cat /proc/self/cgroup'; \
             rmdir /sys/fs/cgroup/edgectl-probe; echo ok",
        )
        .await
        .expect("cgroup2 is writable in the host");
    eprintln!("cgroup probe:\n{out}");
    assert!(out.contains("0::/edgectl-probe"), "{out}");
    let controllers = h.exec_ok("cat /sys/fs/cgroup/cgroup.controllers").await.unwrap();
    let nomad_needs = ["cpuset", "cpu", "io", "memory", "pids"];
    let missing: Vec<&str> = nomad_needs
        .iter()
        .copied()
        .filter(|c| !controllers.split_whitespace().any(|x| x == *c))
        .collect();
    eprintln!(
        "controllers {:?}; missing for Nomad's cgroup v2 mode: {missing:?}",
        controllers.trim()
    );
    let t = traces(&h);
    h.stop().await;
    assert_gone(&t);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boot_times() {
    // Not part of the boot time: building the image on a cold cache.
    tokio::task::spawn_blocking(testkit::hosts::image_rootfs)
        .await
        .unwrap()
        .expect("host image");
    let start = Instant::now();
    let one = TestHost::boot("timing", HostOptions::default())
        .await
        .expect("1 host boots");
    eprintln!("boot time, 1 host: {:?}", start.elapsed());
    let t0 = Instant::now();
    one.stop().await;
    eprintln!("stop time, 1 host: {:?}", t0.elapsed());

    let start = Instant::now();
    let four = TestHost::boot_many(4, "timing", HostOptions::default())
        .await
        .expect("4 hosts boot");
    eprintln!(
        "boot time, 4 hosts in parallel: {:?} (each: {:?})",
        start.elapsed(),
        four.iter().map(|h| h.boot_time).collect::<Vec<_>>()
    );
    for h in &four {
        h.ssh_ok("root", "true").await.unwrap();
    }
    let t0 = Instant::now();
    stop_all(four).await;
    eprintln!("stop time, 4 hosts: {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internet_only_when_asked_for() {
    let opts = HostOptions {
        internet: true,
        ..HostOptions::default()
    };
    let (online, offline) = tokio::join!(
        TestHost::boot("online", opts),
        TestHost::boot("offline", HostOptions::default())
    );
    let (online, offline) = (online.expect("online boots"), offline.expect("offline boots"));
    let start = Instant::now();
    let out = online
        .exec_ok("apt-get -q update 2>&1 && apt-cache policy jq | head -3")
        .await
        .expect("apt-get update in a host with internet");
    eprintln!("apt-get update: {:?}\n{out}", start.elapsed());
    // The mirror's address, as the online host resolved it: the offline host
    // must not get there (its packets are dropped on this machine).
    let mirror = online
        .exec_ok("getent ahostsv4 deb.debian.org | head -1 | cut -d' ' -f1")
        .await
        .unwrap();
    let out = offline
        .exec(&format!(
            "curl -sS -m 3 -o /dev/null http://{}/debian/",
            mirror.trim()
        ))
        .await
        .unwrap();
    assert!(
        !out.status.success(),
        "a host without HostOptions::internet reached {}",
        mirror.trim()
    );
    stop_all(vec![online, offline]).await;
}

/// Docker in a test host, with [`HostOptions::docker`]: Debian's docker.io
/// from the mirror, an image made locally with `docker import` (none can be
/// pulled here), and a container run with and without a network.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runs_in_a_host_prepared_for_it() {
    let var_lib_docker = tempfile::tempdir().unwrap();
    let opts = HostOptions {
        internet: true,
        ..HostOptions::default()
    }
    .docker(var_lib_docker.path());
    let h = TestHost::boot("docker", opts).await.expect("host boots");
    let start = Instant::now();
    h.exec_ok(
        "export DEBIAN_FRONTEND=noninteractive; apt-get -q update && \
         apt-get -q -y install --no-install-recommends docker.io",
    )
    .await
    .expect("apt-get install docker.io");
    eprintln!("docker.io installed in {:?}", start.elapsed());
    let active = h.exec("systemctl is-active docker").await.unwrap();
    let active = String::from_utf8_lossy(&active.stdout).trim().to_string();
    if active != "active" {
        let log = h
            .exec("journalctl -u docker --no-pager | tail -30")
            .await
            .unwrap();
        panic!("dockerd is {active}:\n{}", String::from_utf8_lossy(&log.stdout));
    }
    let info = h
        .exec_ok("docker info --format '{{.Driver}} cgroup v{{.CgroupVersion}} {{.CgroupDriver}}'")
        .await
        .unwrap();
    eprintln!("docker info: {}", info.trim());
    // A minimal image: cat and what it links to.
    h.exec_ok(
        "set -e; i=$(mktemp -d); mkdir -p $i/usr/bin $i/lib64 $i/lib/x86_64-linux-gnu $i/etc; \
         cp -L /usr/bin/cat $i/usr/bin/; cp -L /lib64/ld-linux-x86-64.so.2 $i/lib64/; \
         cp -L /lib/x86_64-linux-gnu/libc.so.6 $i/lib/x86_64-linux-gnu/; \
         tar -C $i -c . | docker import - local/cat",
    )
    .await
    .expect("docker import");
    let bridged = h
        .exec_ok("docker run --pull=never --rm local/cat /usr/bin/cat /proc/self/cgroup")
        .await
        .expect("docker run (bridge network)");
    eprintln!("a docker container's /proc/self/cgroup: {}", bridged.trim());
    let isolated = h
        .exec_ok("docker run --pull=never --rm --network none --hostname boxed local/cat /usr/bin/cat /etc/hostname")
        .await
        .expect("docker run --network none");
    assert_eq!(isolated.trim(), "boxed");
    h.stop().await;
}

/// Not a test by itself: boots a host, says where it lives, then waits to be
/// killed (by `leftovers_of_a_killed_process_are_removed`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process of leftovers_of_a_killed_process_are_removed"]
async fn helper_boot_and_wait_to_be_killed() {
    if std::env::var_os("EDGECTL_TESTHOST_HELPER").is_none() {
        return;
    }
    let h = TestHost::boot("doomed", HostOptions::default())
        .await
        .expect("helper host boots");
    println!("READY {}", traces(&h).to_line());
    tokio::time::sleep(Duration::from_secs(600)).await;
}

/// A test process killed with SIGKILL runs no Drop: the next boot (in any
/// process) removes its container, netns, veth, overlay mount and dirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leftovers_of_a_killed_process_are_removed() {
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_boot_and_wait_to_be_killed",
            "--ignored",
            "--nocapture",
        ])
        .env("EDGECTL_TESTHOST_HELPER", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("READY ").map(str::to_string))
    });
    let ready = tokio::time::timeout(Duration::from_secs(300), ready).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let ready = ready
        .expect("helper ready in time")
        .unwrap()
        .expect("helper printed READY");
    let t = Traces::from_line(&ready);
    assert!(
        t.root_dir.exists(),
        "the killed process left its host behind (as expected)"
    );
    let survivor = TestHost::boot("survivor", HostOptions::default())
        .await
        .expect("host boots");
    assert_gone(&t);
    survivor.stop().await;
}
