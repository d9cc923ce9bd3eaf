//! Real Debian test hosts: systemd + sshd booted with `systemd-nspawn --boot`.
//!
//! Each [`TestHost`] is a separate machine as far as a test can tell: its own
//! network namespace with a veth pair (`10.213.<slot>.2`, the host side is
//! `10.213.<slot>.1`), its own overlayfs upper dir on top of a shared
//! read-only Debian root filesystem (built once by `scripts/build-host-image`
//! and cached), its own SSH host keys, machine-id and hostname. root and `pi`
//! (passwordless sudo, as on a Raspberry Pi) accept one ed25519 client key
//! generated per test process.
//!
//! Parallel-safe: tests run as threads of one process and several test
//! processes run at once, so every host takes a *slot* (1..=254) by holding a
//! flock on `/run/edgectl-testhosts/slot-<n>.lock` for its lifetime. A slot
//! whose lock is free but whose state file remains belongs to a dead
//! process: its container, overlay mount, netns, veth and dirs are removed by
//! the next boot in any process. nspawn itself gets PR_SET_PDEATHSIG=SIGTERM,
//! so a killed test process also shuts its containers down.
//!
//! Host setup that outlives the tests (done once, idempotent):
//! `net.ipv4.ip_forward=1` (so hosts reach each other through the host) and
//! an nftables table `ip edgectl_testhosts` that drops forwarded traffic from
//! 10.213.0.0/16 to anywhere else, unless the host was booted with
//! [`HostOptions::internet`] (then it is masqueraded, for apt).
//!
//! Cgroups: nspawn runs with `SYSTEMD_NSPAWN_UNIFIED_HIERARCHY=1`. On a host
//! with hybrid cgroups (v1 controllers) the container then gets a writable
//! cgroup2 mount with *no* controllers; on a host with unified cgroups it gets
//! whatever the host delegates.
//!
//! Needs root and these commands: systemd-nspawn (systemd-container), ip
//! (iproute2), nft (nftables), nsenter (util-linux), ssh and ssh-keygen
//! (openssh-client), mmdebstrap for the first image build.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::paths;

/// All test hosts live in 10.213.0.0/16; slot n is 10.213.n.0/24.
const NET: [u8; 2] = [10, 213];
const NET_CIDR: &str = "10.213.0.0/16";
const SLOTS: std::ops::RangeInclusive<u16> = 1..=254;
/// Locks and state files (per boot of the machine, not per user).
const STATE_DIR: &str = "/run/edgectl-testhosts";
const NFT_TABLE: &str = "edgectl_testhosts";
/// systemd `running`/`degraded` and sshd accepting. One host needs ~1 s on
/// an idle machine; CI machines are small and busy.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// SIGTERM (poweroff) to exit; a booted host needs ~1.5 s.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
const PATH_INSIDE: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How to boot a [`TestHost`].
#[derive(Clone, Debug, Default)]
pub struct HostOptions {
    /// (path on this machine, path in the container), bind-mounted read-only.
    pub bind_ro: Vec<(PathBuf, PathBuf)>,
    /// (path on this machine, path in the container), bind-mounted
    /// read-write (e.g. a plain directory for /var/lib/docker, which cannot
    /// live on the overlay root).
    pub bind_rw: Vec<(PathBuf, PathBuf)>,
    /// NAT to the outside (for `apt-get` from the Debian mirror). Without it,
    /// the host reaches only this machine and the other test hosts.
    pub internet: bool,
    /// More `systemd-nspawn` arguments, e.g. `--capability=CAP_NET_ADMIN`.
    pub nspawn_args: Vec<String>,
}

impl HostOptions {
    /// What dockerd needs in a host (measured): `/var/lib/docker` on a plain
    /// directory of this machine (overlay2 cannot live on the overlayfs
    /// root), CAP_NET_ADMIN (bridge, iptables) and, for runc with cgroup v2,
    /// CAP_BPF and the bpf and keyring system calls, which nspawn withholds.
    /// `var_lib_docker` must outlive the host.
    pub fn docker(mut self, var_lib_docker: &Path) -> Self {
        self.bind_rw
            .push((var_lib_docker.to_path_buf(), "/var/lib/docker".into()));
        self.nspawn_args.extend([
            "--capability=CAP_NET_ADMIN,CAP_BPF".to_string(),
            "--system-call-filter=@keyring bpf".to_string(),
        ]);
        self
    }
}

/// A booted Debian host (systemd running, sshd accepting). Dropping it stops
/// the container and removes its netns, veth, overlay mount and dirs.
pub struct TestHost {
    /// Its hostname (`/etc/hostname`).
    pub name: String,
    /// Its address, reachable from this machine and from the other hosts.
    pub ip: Ipv4Addr,
    /// This machine's end of the host's veth: the host reaches servers bound
    /// there (or on 0.0.0.0; not on 127.0.0.1).
    pub gateway_ip: Ipv4Addr,
    pub ssh_port: u16,
    /// An ed25519 private key (one per test process), authorized for root
    /// and pi.
    pub client_key_path: PathBuf,
    /// `<ip> ssh-ed25519 <key>`: this host's own ed25519 host key.
    pub known_hosts_line: String,
    /// A known_hosts file with this host's keys (all types).
    pub known_hosts_path: PathBuf,
    /// `/etc/machine-id` (32 hex digits).
    pub machine_id: String,
    /// The container's root directory on this machine (the overlay mount):
    /// files written here appear in the host.
    pub root_dir: PathBuf,
    /// nspawn's output: the container's console.
    pub console_log: PathBuf,
    /// How long `boot` took, from taking a slot to sshd accepting.
    pub boot_time: Duration,
    slot: Slot,
    nspawn: Option<Nspawn>,
    /// The container's init (found once it runs).
    init: OnceLock<i32>,
}

struct Nspawn {
    pid: i32,
    /// Spawned and waits for nspawn; must live as long as nspawn because
    /// PR_SET_PDEATHSIG fires when the spawning *thread* exits.
    waiter: JoinHandle<io::Result<ExitStatus>>,
}

/// A slot taken by this process: the lock is held until drop.
struct Slot {
    n: u16,
    _lock: File,
    state: SlotState,
}

/// What a slot's resources are; written to `slot-<n>.state` so that the
/// leftovers of a dead process can be removed.
#[derive(Default, Debug)]
struct SlotState {
    dir: Option<PathBuf>,
    nspawn_pid: Option<i32>,
    internet: bool,
}

impl TestHost {
    /// Boots one host named `name` (a hostname: a-z, 0-9, '-'), waiting
    /// (bounded) until systemd is running or degraded and sshd accepts.
    pub async fn boot(name: &str, opts: HostOptions) -> anyhow::Result<TestHost> {
        // The first boot may build the image (minutes); not part of the boot.
        let rootfs = tokio::task::spawn_blocking(image_rootfs)
            .await
            .context("image task")??;
        let started = Instant::now();
        let name = name.to_string();
        let mut host = tokio::task::spawn_blocking(move || start(&name, &opts, &rootfs))
            .await
            .context("boot task")??;
        host.wait_ready(Instant::now() + BOOT_TIMEOUT).await?;
        host.boot_time = started.elapsed();
        Ok(host)
    }

    /// Boots `n` hosts named `<prefix>1` … `<prefix>n` in parallel.
    pub async fn boot_many(n: usize, prefix: &str, opts: HostOptions) -> anyhow::Result<Vec<TestHost>> {
        let mut set = tokio::task::JoinSet::new();
        for i in 1..=n {
            let (name, opts) = (format!("{prefix}{i}"), opts.clone());
            set.spawn(async move { (i, TestHost::boot(&name, opts).await) });
        }
        let mut hosts = Vec::with_capacity(n);
        let mut first_err = None;
        while let Some(joined) = set.join_next().await {
            match joined.context("boot task") {
                Ok((i, Ok(h))) => hosts.push((i, h)),
                Ok((_, Err(e))) | Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        if let Some(e) = first_err {
            stop_all(hosts.into_iter().map(|(_, h)| h).collect()).await;
            return Err(e);
        }
        hosts.sort_by_key(|(i, _)| *i);
        Ok(hosts.into_iter().map(|(_, h)| h).collect())
    }

    /// Runs `sh -c cmd` as root inside the host, without SSH (nsenter into
    /// the namespaces of the container's init). The process is not in the
    /// container's cgroup tree: start daemons with `systemd-run` or units.
    pub async fn exec(&self, cmd: &str) -> anyhow::Result<Output> {
        let init = self.init_pid()?;
        let mut c = tokio::process::Command::new("nsenter");
        c.args(["-t", &init.to_string(), "-a", "--", "/bin/sh", "-c", cmd])
            .env_clear()
            .env("PATH", PATH_INSIDE)
            .env("HOME", "/root")
            .env("LANG", "C.UTF-8")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        c.output()
            .await
            .with_context(|| format!("nsenter into {} to run {cmd:?}", self.name))
    }

    /// [`exec`](Self::exec), failing unless the command exits 0; its stdout.
    pub async fn exec_ok(&self, cmd: &str) -> anyhow::Result<String> {
        let out = self.exec(cmd).await?;
        check_output(&self.name, cmd, &out)
    }

    /// The `ssh` arguments (before the remote command) to log in as `user`
    /// with this run's client key and strict host key checking against
    /// [`known_hosts_path`](Self::known_hosts_path), ignoring any ssh config.
    pub fn ssh_args(&self, user: &str) -> Vec<String> {
        let o = |s: String| ["-o".to_string(), s];
        let mut args = vec!["-F".into(), "/dev/null".into()];
        args.extend(["-i".into(), self.client_key_path.display().to_string()]);
        args.extend(["-p".into(), self.ssh_port.to_string()]);
        for opt in [
            "IdentitiesOnly=yes".to_string(),
            "BatchMode=yes".into(),
            "StrictHostKeyChecking=yes".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path.display()),
            "GlobalKnownHostsFile=/dev/null".into(),
            "ConnectTimeout=10".into(),
            "LogLevel=ERROR".into(),
        ] {
            args.extend(o(opt));
        }
        args.push(format!("{user}@{}", self.ip));
        args
    }

    /// Runs `cmd` as `user` over SSH (the system `ssh` client, see
    /// [`ssh_args`](Self::ssh_args)).
    pub async fn ssh(&self, user: &str, cmd: &str) -> anyhow::Result<Output> {
        tokio::process::Command::new("ssh")
            .args(self.ssh_args(user))
            .arg(cmd)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .with_context(|| format!("ssh {user}@{} ({})", self.ip, self.name))
    }

    /// [`ssh`](Self::ssh), failing unless the command exits 0; its stdout.
    pub async fn ssh_ok(&self, user: &str, cmd: &str) -> anyhow::Result<String> {
        let out = self.ssh(user, cmd).await?;
        check_output(&format!("{user}@{}", self.name), cmd, &out)
    }

    /// The last `lines` lines of the container's console.
    pub fn console_tail(&self, lines: usize) -> String {
        tail(&self.console_log, lines)
    }

    /// The netns (`/run/netns/<name>`) and host-side veth of this host.
    pub fn netns(&self) -> String {
        netns_name(self.slot.n)
    }
    pub fn veth(&self) -> String {
        veth_name(self.slot.n)
    }

    /// Stops the host without blocking the async runtime (same as drop).
    pub async fn stop(self) {
        let _ = tokio::task::spawn_blocking(move || drop(self)).await;
    }

    /// PID of the container's init (systemd) in this machine's PID namespace.
    fn init_pid(&self) -> anyhow::Result<i32> {
        let nspawn = self.nspawn.as_ref().context("container not started")?;
        if nspawn.waiter.is_finished() {
            bail!(
                "{}: the container has exited; console:\n{}",
                self.name,
                self.console_tail(30)
            );
        }
        if let Some(pid) = self.init.get() {
            return Ok(*pid);
        }
        let pid = init_of(nspawn.pid).with_context(|| {
            format!(
                "{}: container init not found (nspawn pid {}); console:\n{}",
                self.name,
                nspawn.pid,
                self.console_tail(30)
            )
        })?;
        Ok(*self.init.get_or_init(|| pid))
    }

    async fn wait_ready(&mut self, deadline: Instant) -> anyhow::Result<()> {
        let mut state = String::from("(init not started)");
        let mut ssh_up = false;
        loop {
            let exited = self.nspawn.as_ref().is_none_or(|n| n.waiter.is_finished());
            if exited {
                bail!(
                    "{}: systemd-nspawn exited during boot; console:\n{}",
                    self.name,
                    self.console_tail(40)
                );
            }
            if self.init_pid().is_ok() {
                if let Ok(out) = self.exec("systemctl is-system-running").await {
                    state = String::from_utf8_lossy(&out.stdout).trim().to_string();
                }
                // "offline" is also what systemctl says before systemd has
                // exec'd as PID 1 or opened its socket, so it is not fatal;
                // the deadline bounds a boot that never gets further.
                if matches!(state.as_str(), "maintenance" | "stopping") {
                    bail!(
                        "{}: systemd is {state}; console:\n{}",
                        self.name,
                        self.console_tail(40)
                    );
                }
                let addr = SocketAddr::from((self.ip, self.ssh_port));
                ssh_up = ssh_up
                    || tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
                        .await
                        .is_ok_and(|r| r.is_ok());
                if ssh_up && (state == "running" || state == "degraded") {
                    if state == "degraded" {
                        let failed = self
                            .exec(
                                "systemctl --failed --no-legend --plain; \
                                 for u in $(systemctl --failed --no-legend --plain | cut -d' ' -f1); \
                                 do journalctl -b -u \"$u\" --no-pager | tail -n 15; done",
                            )
                            .await
                            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                            .unwrap_or_default();
                        eprintln!(
                            "testhost {}: degraded; failed units and their logs:\n{failed}",
                            self.name
                        );
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "{}: not ready after {BOOT_TIMEOUT:?} (systemd: {state}, sshd accepting: \
                     {ssh_up}); console:\n{}",
                    self.name,
                    self.console_tail(40)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM to nspawn (it powers the container off), a bounded wait, then
    /// SIGKILL to the container's init and nspawn.
    fn stop_container(&mut self) {
        let Some(nspawn) = self.nspawn.take() else {
            return;
        };
        unsafe { libc::kill(nspawn.pid, libc::SIGTERM) };
        if !wait_until(STOP_TIMEOUT, || nspawn.waiter.is_finished()) {
            eprintln!(
                "testhost {}: still running {STOP_TIMEOUT:?} after SIGTERM; killing it",
                self.name
            );
            if let Some(init) = init_of(nspawn.pid) {
                unsafe { libc::kill(init, libc::SIGKILL) };
            }
            if !wait_until(Duration::from_secs(5), || nspawn.waiter.is_finished()) {
                unsafe { libc::kill(nspawn.pid, libc::SIGKILL) };
            }
        }
        let _ = nspawn.waiter.join();
    }
}

impl Drop for TestHost {
    fn drop(&mut self) {
        self.stop_container();
        if let Err(e) = cleanup_slot(self.slot.n, &self.slot.state) {
            eprintln!("testhost {}: cleanup: {e:#}", self.name);
        }
    }
}

/// Stops several hosts at once (each shutdown takes ~1.5 s).
pub async fn stop_all(hosts: Vec<TestHost>) {
    let mut set = tokio::task::JoinSet::new();
    for h in hosts {
        set.spawn(h.stop());
    }
    while set.join_next().await.is_some() {}
}

/// The cached root filesystem, built by `scripts/build-host-image` if
/// missing (its flock serialises builds across processes).
pub fn image_rootfs() -> anyhow::Result<PathBuf> {
    static ROOTFS: OnceLock<PathBuf> = OnceLock::new();
    if let Some(p) = ROOTFS.get() {
        return Ok(p.clone());
    }
    let script = paths::repo_root().join("scripts/build-host-image");
    let out = Command::new(&script)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    if !out.status.success() || !path.join("sbin/init").exists() {
        let tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        bail!(
            "{} failed ({}); last output:\n{}",
            script.display(),
            out.status,
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        );
    }
    // Its own progress lines (a build's timing), not mmdebstrap's.
    for line in stderr.lines().filter(|l| l.starts_with("build-host-image:")) {
        eprintln!("{line}");
    }
    Ok(ROOTFS.get_or_init(|| path).clone())
}

/// The per-process client key pair: (private key path, public key line).
fn client_key() -> anyhow::Result<&'static (PathBuf, String)> {
    static KEY: OnceLock<(PathBuf, String)> = OnceLock::new();
    static INIT: Mutex<()> = Mutex::new(());
    let _g = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = KEY.get() {
        return Ok(k);
    }
    let dir = Path::new(STATE_DIR).join(format!("client-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o700))?;
    let key = dir.join("id_ed25519");
    run(Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "edgectl-testhosts", "-f"])
        .arg(&key))?;
    let public = fs::read_to_string(dir.join("id_ed25519.pub"))?;
    Ok(KEY.get_or_init(|| (key, public.trim().to_string())))
}

/// Creates what every host needs, once per process: the state dir,
/// ip_forward, the nftables table.
fn host_setup() -> anyhow::Result<()> {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return Ok(());
    }
    if unsafe { libc::geteuid() } != 0 {
        bail!("test hosts need root (systemd-nspawn, ip netns, mount)");
    }
    fs::create_dir_all(STATE_DIR)?;
    let _global = lock(&Path::new(STATE_DIR).join("global.lock"), true)?;
    fs::write("/proc/sys/net/ipv4/ip_forward", "1\n").context("enabling net.ipv4.ip_forward")?;
    let listed = Command::new("nft")
        .args(["list", "table", "ip", NFT_TABLE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running nft (apt-get install nftables)")?;
    if !listed.success() {
        let rules = format!(
            "table ip {NFT_TABLE} {{
  set internet {{ type ipv4_addr; }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    ip saddr {NET_CIDR} ip daddr {NET_CIDR} accept
    ip saddr @internet accept
    ip saddr {NET_CIDR} drop
  }}
  chain postrouting {{
    type nat hook postrouting priority srcnat; policy accept;
    ip saddr @internet ip daddr != {NET_CIDR} masquerade
  }}
}}
"
        );
        run_stdin(Command::new("nft").args(["-f", "-"]), &rules)?;
    }
    // The services address (see `services_ip`): on the loopback link, so
    // it outlives any one host's veth (no dummy links in every kernel).
    let addr = format!("{}/32", services_ip());
    let shown = Command::new("ip")
        .args(["-4", "addr", "show", "dev", SERVICES_LINK])
        .output()
        .context("running ip (apt-get install iproute2)")?;
    if !String::from_utf8_lossy(&shown.stdout).contains(&format!("inet {addr} ")) {
        run(Command::new("ip").args(["addr", "add", &addr, "dev", SERVICES_LINK]))?;
    }
    *done = true;
    Ok(())
}

const SERVICES_LINK: &str = "lo";

/// An address of this machine that every test host reaches through its
/// default route, whichever hosts come and go: where tests put services
/// the hosts use (a Nomad server, the Roles Anywhere simulator). Bind
/// there after [`ensure_services_ip`].
pub fn services_ip() -> Ipv4Addr {
    Ipv4Addr::new(NET[0], NET[1], 0, 1)
}

/// Makes sure [`services_ip`] exists on this machine (idempotent, needs root).
pub fn ensure_services_ip() -> anyhow::Result<Ipv4Addr> {
    host_setup()?;
    Ok(services_ip())
}

/// Removes the leftovers of dead processes: slots with a state file whose
/// lock is free, and client key dirs of dead pids.
fn sweep_leftovers() -> anyhow::Result<()> {
    let _global = lock(&Path::new(STATE_DIR).join("global.lock"), true)?;
    for n in SLOTS {
        if !slot_state_path(n).exists() {
            continue;
        }
        if let Ok(Some(_lock)) = lock(&slot_lock_path(n), false) {
            let state = SlotState::read(n);
            eprintln!("testhosts: removing leftovers of slot {n}: {state:?}");
            if let Err(e) = cleanup_slot(n, &state) {
                eprintln!("testhosts: {e:#}");
            }
        }
    }
    for entry in fs::read_dir(STATE_DIR)?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("client-").and_then(|p| p.parse::<i32>().ok()) {
            if !pid_alive(pid) {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    Ok(())
}

/// Takes a free slot (lock held by the returned `Slot`), after removing
/// anything a dead owner left in it.
fn take_slot() -> anyhow::Result<Slot> {
    for n in SLOTS {
        if let Some(lock) = lock(&slot_lock_path(n), false)? {
            // Normally nothing to do; a slot that cannot be cleaned is skipped.
            if let Err(e) = cleanup_slot(n, &SlotState::read(n)) {
                eprintln!("testhosts: {e:#}");
                continue;
            }
            return Ok(Slot {
                n,
                _lock: lock,
                state: SlotState::default(),
            });
        }
    }
    bail!("all {} test host slots are taken", SLOTS.count())
}

/// Sets up and starts the container; `wait_ready` follows.
fn start(name: &str, opts: &HostOptions, rootfs: &Path) -> anyhow::Result<TestHost> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid {
        bail!("test host name {name:?} is not a hostname (a-z, 0-9, '-')");
    }
    host_setup()?;
    sweep_leftovers()?;
    let (client_key_path, client_pub) = client_key()?.clone();
    let slot = take_slot()?;
    let n = slot.n;
    let ip = Ipv4Addr::new(NET[0], NET[1], n as u8, 2);
    let gateway_ip = Ipv4Addr::new(NET[0], NET[1], n as u8, 1);
    // A fresh dir per boot (not just per slot), so no trace of an earlier
    // host in this slot can be mistaken for this one's.
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let dir = paths::cache_dir().join("hosts/run").join(format!(
        "slot-{n}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let root_dir = dir.join("root");
    let mut host = TestHost {
        name: name.to_string(),
        ip,
        gateway_ip,
        ssh_port: 22,
        client_key_path,
        known_hosts_line: String::new(),
        known_hosts_path: dir.join("known_hosts"),
        machine_id: String::new(),
        root_dir: root_dir.clone(),
        console_log: dir.join("console.log"),
        boot_time: Duration::ZERO,
        slot,
        nspawn: None,
        init: OnceLock::new(),
    };
    // From here on, dropping `host` removes whatever was made.
    host.slot.state.dir = Some(dir.clone());
    host.slot.state.internet = opts.internet;
    host.slot.state.write(n)?;

    // The overlay root.
    for d in ["upper", "work", "root"] {
        fs::create_dir_all(dir.join(d))?;
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        rootfs.display(),
        dir.join("upper").display(),
        dir.join("work").display()
    );
    mount_overlay(&root_dir, &data)?;

    // Per-host identity.
    let r = &root_dir;
    host.machine_id = fs::read_to_string("/proc/sys/kernel/random/uuid")?
        .trim()
        .replace('-', "");
    fs::write(r.join("etc/machine-id"), format!("{}\n", host.machine_id))?;
    fs::write(r.join("etc/hostname"), format!("{name}\n"))?;
    fs::write(
        r.join("etc/hosts"),
        format!(
            "127.0.0.1\tlocalhost\n127.0.1.1\t{name}\n{ip}\t{name}\n\
             ::1\t\tlocalhost ip6-localhost ip6-loopback\n"
        ),
    )?;
    fs::write(r.join("etc/resolv.conf"), resolv_conf(opts.internet))?;
    if opts.internet {
        let mut hosts = OpenOptions::new().append(true).open(r.join("etc/hosts"))?;
        hosts.write_all(mirror_hosts().as_bytes())?;
    }
    run(Command::new("ssh-keygen").arg("-A").arg("-f").arg(r))?;
    let mut known = String::new();
    for t in ["ed25519", "ecdsa", "rsa"] {
        let public = fs::read_to_string(r.join(format!("etc/ssh/ssh_host_{t}_key.pub")))?;
        let mut f = public.split_whitespace();
        let line = format!(
            "{ip} {} {}",
            f.next().unwrap_or_default(),
            f.next().unwrap_or_default()
        );
        if t == "ed25519" {
            host.known_hosts_line = line.clone();
        }
        known.push_str(&line);
        known.push('\n');
    }
    fs::write(&host.known_hosts_path, known)?;
    let (pi_uid, pi_gid) = passwd_ids(r, "pi")?;
    for (home, uid, gid) in [("root", 0, 0), ("home/pi", pi_uid, pi_gid)] {
        let f = r.join(home).join(".ssh/authorized_keys");
        fs::write(&f, format!("{client_pub}\n"))?;
        chown(&f, Some(uid), Some(gid))?;
        fs::set_permissions(&f, fs::Permissions::from_mode(0o600))?;
    }

    // The network: netns with eth0 (veth peer) addressed from here, because
    // nspawn drops CAP_NET_ADMIN in a given netns.
    let (ns, veth) = (netns_name(n), veth_name(n));
    {
        // `ip netns add` makes /run/netns a shared mount; parallel first
        // calls have raced in the past.
        let _global = lock(&Path::new(STATE_DIR).join("global.lock"), true)?;
        run(Command::new("ip").args(["netns", "add", &ns]))?;
    }
    let gw_cidr = format!("{gateway_ip}/24");
    let ip_cidr = format!("{ip}/24");
    let gw = gateway_ip.to_string();
    for args in [
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ][..],
        &["addr", "add", &gw_cidr, "dev", &veth],
        &["link", "set", &veth, "up"],
        &["-n", &ns, "link", "set", "lo", "up"],
        &["-n", &ns, "addr", "add", &ip_cidr, "dev", "eth0"],
        &["-n", &ns, "link", "set", "eth0", "up"],
        &["-n", &ns, "route", "add", "default", "via", &gw],
    ] {
        run(Command::new("ip").args(args))?;
    }
    if opts.internet {
        run(Command::new("nft").args([
            "add",
            "element",
            "ip",
            NFT_TABLE,
            "internet",
            &format!("{{ {ip} }}"),
        ]))?;
    }

    // The container.
    let mut cmd = Command::new("systemd-nspawn");
    cmd.arg("-D")
        .arg(r)
        .args([
            "--boot",
            "--register=no",
            "--link-journal=no",
            "--resolv-conf=off",
        ])
        .arg(format!("--machine={}", machine_name(n)))
        .arg(format!("--network-namespace-path=/run/netns/{ns}"));
    let mut cgroup_procs = Vec::new();
    if !Path::new("/run/systemd/system").exists() {
        // No systemd on this machine to make a scope unit per container, so
        // nspawn stays in its caller's cgroup and makes `payload` and
        // `supervisor` there: containers of one process would share one
        // cgroup tree (their systemds then fail units with 219/CGROUP). So
        // each nspawn starts in a cgroup of its own, per slot.
        cmd.arg("--keep-unit");
        for cg in slot_cgroups(n) {
            fs::create_dir_all(&cg).with_context(|| format!("mkdir {}", cg.display()))?;
            cgroup_procs.push(cg.join("cgroup.procs"));
        }
    }
    for (flag, binds) in [("--bind-ro", &opts.bind_ro), ("--bind", &opts.bind_rw)] {
        for (from, to) in binds {
            cmd.arg(format!("{flag}={}:{}", from.display(), to.display()));
        }
    }
    cmd.args(&opts.nspawn_args)
        .env("SYSTEMD_NSPAWN_UNIFIED_HIERARCHY", "1")
        .stdin(Stdio::null());
    let console = File::create(&host.console_log)?;
    cmd.stdout(console.try_clone()?).stderr(console);
    let nspawn = spawn_with_waiter(cmd, &cgroup_procs).context("starting systemd-nspawn")?;
    host.slot.state.nspawn_pid = Some(nspawn.pid);
    host.nspawn = Some(nspawn);
    host.slot.state.write(n)?;
    Ok(host)
}

/// Spawns nspawn tied to the test process (SIGTERM when it dies), moved into
/// the slot's own cgroups before it execs.
fn spawn_with_waiter(mut cmd: Command, cgroup_procs: &[PathBuf]) -> anyhow::Result<Nspawn> {
    let procs: Vec<std::ffi::CString> = cgroup_procs
        .iter()
        .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
        .collect::<Result<_, _>>()?;
    unsafe {
        // Only async-signal-safe calls here (after fork, before exec).
        cmd.pre_exec(move || {
            for p in &procs {
                // "0": the writing process itself.
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                let err = io::Error::last_os_error();
                libc::close(fd);
                if written != 1 {
                    return Err(err);
                }
            }
            Ok(())
        });
    }
    let (pid, waiter) = crate::process::spawn_tied(cmd, libc::SIGTERM)?;
    Ok(Nspawn { pid, waiter })
}

/// Removes everything of slot `n` described by `state` (and the netns and
/// veth, which are named by slot): idempotent.
fn cleanup_slot(n: u16, state: &SlotState) -> anyhow::Result<()> {
    if let Some(pid) = state.nspawn_pid {
        // A dead process's nspawn (not ours: ours are stopped via the
        // waiter): check it still is that nspawn before killing.
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let needle = format!("--machine={}", machine_name(n));
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            if let Some(init) = init_of(pid) {
                unsafe { libc::kill(init, libc::SIGKILL) };
            }
            wait_until(Duration::from_secs(5), || !pid_alive(pid));
            unsafe { libc::kill(pid, libc::SIGKILL) };
            wait_until(Duration::from_secs(5), || !pid_alive(pid));
        }
    }
    let mut errors = Vec::new();
    let mut mounted = false;
    if let Some(dir) = &state.dir {
        let root = dir.join("root");
        if is_mounted(&root) {
            let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes())?;
            if unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) } != 0 {
                errors.push(format!(
                    "umount {}: {}",
                    root.display(),
                    io::Error::last_os_error()
                ));
            }
            mounted = is_mounted(&root);
        }
    }
    for cg in slot_cgroups(n) {
        // The container's last processes may take a moment to leave.
        wait_until(Duration::from_secs(3), || remove_cgroup_tree(&cg).is_ok());
        if let Err(e) = remove_cgroup_tree(&cg) {
            errors.push(format!("rmdir {}: {e}", cg.display()));
        }
    }
    let ns = netns_name(n);
    if Path::new("/run/netns").join(&ns).exists() {
        if let Err(e) = run(Command::new("ip").args(["netns", "delete", &ns])) {
            errors.push(format!("{e:#}"));
        }
    }
    // Deleting the netns destroys eth0 and so its veth peer, asynchronously.
    let veth = veth_name(n);
    let veth_path = Path::new("/sys/class/net").join(&veth);
    if !wait_until(Duration::from_secs(2), || !veth_path.exists()) {
        if let Err(e) = run(Command::new("ip").args(["link", "delete", &veth])) {
            if veth_path.exists() {
                errors.push(format!("{e:#}"));
            }
        }
    }
    if state.internet {
        let _ = Command::new("nft")
            .args(["delete", "element", "ip", NFT_TABLE, "internet"])
            .arg(format!("{{ 10.213.{n}.2 }}"))
            .stderr(Stdio::null())
            .status();
    }
    if let Some(dir) = &state.dir {
        // Never recurse into a still-mounted root (the lower dir is shared).
        if !mounted && dir.exists() {
            if let Err(e) = fs::remove_dir_all(dir) {
                errors.push(format!("rm -r {}: {e}", dir.display()));
            }
        }
    }
    if errors.is_empty() {
        let _ = fs::remove_file(slot_state_path(n));
        Ok(())
    } else {
        bail!("slot {n}: {}", errors.join("; "))
    }
}

impl SlotState {
    fn write(&self, n: u16) -> io::Result<()> {
        let mut s = String::new();
        if let Some(d) = &self.dir {
            s.push_str(&format!("dir={}\n", d.display()));
        }
        if let Some(p) = self.nspawn_pid {
            s.push_str(&format!("nspawn_pid={p}\n"));
        }
        s.push_str(&format!("internet={}\n", self.internet));
        let path = slot_state_path(n);
        let tmp = path.with_extension("tmp");
        fs::write(&tmp, s)?;
        fs::rename(tmp, path)
    }

    fn read(n: u16) -> SlotState {
        let text = fs::read_to_string(slot_state_path(n)).unwrap_or_default();
        let mut st = SlotState::default();
        for (k, v) in text.lines().filter_map(|l| l.split_once('=')) {
            match k {
                "dir" => st.dir = Some(PathBuf::from(v)),
                "nspawn_pid" => st.nspawn_pid = v.parse().ok(),
                "internet" => st.internet = v == "true",
                _ => {}
            }
        }
        st
    }
}

fn netns_name(n: u16) -> String {
    format!("edgectl-th{n}")
}
fn veth_name(n: u16) -> String {
    format!("edgth{n}")
}
fn machine_name(n: u16) -> String {
    format!("edgectl-th{n}")
}
/// The per-slot cgroups a container starts in when nspawn runs with
/// --keep-unit: one in every hierarchy where systemd tracks processes (the
/// cgroup2 one, and the v1 name=systemd one of a hybrid setup).
fn slot_cgroups(n: u16) -> Vec<PathBuf> {
    [
        "/sys/fs/cgroup/unified",
        "/sys/fs/cgroup/systemd",
        "/sys/fs/cgroup",
    ]
    .iter()
    .map(Path::new)
    .filter(|h| h.join("cgroup.procs").exists())
    .map(|h| h.join("edgectl-testhosts").join(format!("slot-{n}")))
    .collect()
}

/// rmdir a cgroup and its children, depth first (a cgroup's control files
/// go with its directory); fails while processes are in it.
fn remove_cgroup_tree(cg: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(cg) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    fs::remove_dir(cg)
}

fn slot_lock_path(n: u16) -> PathBuf {
    Path::new(STATE_DIR).join(format!("slot-{n}.lock"))
}
fn slot_state_path(n: u16) -> PathBuf {
    Path::new(STATE_DIR).join(format!("slot-{n}.state"))
}

/// flock(LOCK_EX) on `path`; `None` when `blocking` is false and another
/// open file description holds it (another process or thread).
fn lock(path: &Path, blocking: bool) -> anyhow::Result<Option<File>> {
    let f = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    let op = if blocking {
        libc::LOCK_EX
    } else {
        libc::LOCK_EX | libc::LOCK_NB
    };
    loop {
        if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
            return Ok(Some(f));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EWOULDBLOCK) if !blocking => return Ok(None),
            _ => return Err(e).with_context(|| format!("flock {}", path.display())),
        }
    }
}

fn mount_overlay(target: &Path, data: &str) -> anyhow::Result<()> {
    let c = |s: &[u8]| std::ffi::CString::new(s).expect("no NUL in paths");
    let (src, fstype) = (c(b"overlay"), c(b"overlay"));
    let (tgt, data_c) = (c(target.as_os_str().as_encoded_bytes()), c(data.as_bytes()));
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            tgt.as_ptr(),
            fstype.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("mount -t overlay -o {data} {}", target.display()));
    }
    Ok(())
}

fn is_mounted(path: &Path) -> bool {
    let want = path.to_string_lossy();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|mp| unescape_mount(mp) == want)
}

/// mountinfo escapes space, tab, newline and backslash as \ooo.
fn unescape_mount(s: &str) -> String {
    let mut out = Vec::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            let octal = std::str::from_utf8(&b[i + 1..i + 4]).ok();
            if let Some(v) = octal.and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The container's init: nspawn's child that runs systemd.
fn init_of(nspawn_pid: i32) -> Option<i32> {
    let self_pidns = fs::read_link("/proc/self/ns/pid").ok()?;
    for entry in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // pid (comm) state ppid ...; comm may contain spaces and parens.
        let Some((comm_part, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        let comm = comm_part.split_once('(').map(|(_, c)| c).unwrap_or("");
        if ppid == Some(nspawn_pid)
            && comm == "systemd"
            && fs::read_link(format!("/proc/{pid}/ns/pid")).ok().as_ref() != Some(&self_pidns)
        {
            return Some(pid);
        }
    }
    None
}

fn pid_alive(pid: i32) -> bool {
    // A zombie is dead for our purposes.
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z"),
        Err(_) => false,
    }
}

fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// uid and gid of `user` in the image's /etc/passwd.
fn passwd_ids(root: &Path, user: &str) -> anyhow::Result<(u32, u32)> {
    let passwd = fs::read_to_string(root.join("etc/passwd"))?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&user) && f.len() > 3)
        .and_then(|f| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
        .with_context(|| format!("no user {user} in the image's /etc/passwd"))
}

/// With internet, this machine's nameservers unless they are loopback-only
/// (e.g. systemd-resolved), which a host cannot reach.
fn resolv_conf(internet: bool) -> String {
    if !internet {
        return String::new();
    }
    fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            let mut f = l.split_whitespace();
            f.next() != Some("nameserver")
                || f.next()
                    .and_then(|a| a.parse::<std::net::IpAddr>().ok())
                    .is_some_and(|a| !a.is_loopback())
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// /etc/hosts lines for the Debian mirror as this machine resolves it, so apt
/// works in a host even when this machine's resolver is not reachable.
fn mirror_hosts() -> String {
    static LINES: OnceLock<String> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let mut s = String::new();
            for name in ["deb.debian.org"] {
                if let Ok(addrs) = (name, 80).to_socket_addrs() {
                    for a in addrs.filter(|a| a.is_ipv4()) {
                        s.push_str(&format!("{}\t{name}\n", a.ip()));
                    }
                }
            }
            s
        })
        .clone()
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn run_stdin(cmd: &mut Command, input: &str) -> anyhow::Result<()> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {cmd:?}"))?;
    child.stdin.take().expect("piped").write_all(input.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn check_output(who: &str, cmd: &str, out: &Output) -> anyhow::Result<String> {
    if !out.status.success() {
        bail!(
            "{who}: {cmd:?} failed ({}): stdout: {} stderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
