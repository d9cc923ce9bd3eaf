//! `edgectl device provision` when things go wrong on the way: a host that
//! is down, an unknown or changed host key, the connection cut in the
//! middle of a run, a user that is not root (with and without passwordless
//! sudo). Real Debian hosts, a real Nomad server (tests/common/devices.rs).

mod common;

use common::devices::Fleet;
use common::Run;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use testkit::hosts::TestHost;

/// `edgectl device ARGS`, printing its wall time (for the timings report).
async fn timed(fleet: &Fleet, label: &str, args: &[&str]) -> Run {
    let started = Instant::now();
    let run = fleet.device(args).await;
    eprintln!(
        "[timing] {label}: {:.1}s (exit {})",
        started.elapsed().as_secs_f64(),
        run.code()
    );
    run
}

/// `provision ARGS… --artifacts <fleet artifacts>`.
fn provision<'a>(extra: &[&'a str], artifacts: &'a str) -> Vec<&'a str> {
    let mut args = vec!["provision"];
    args.extend_from_slice(extra);
    args.extend(["--artifacts", artifacts]);
    args
}

/// A summary table row: (RESULT, CHANGES, SSH EXECS, ERROR).
#[derive(Debug)]
struct Row {
    result: String,
    changes: u32,
    execs: u32,
    error: String,
}

fn rows(stdout: &str) -> Vec<(String, Row)> {
    let mut lines = stdout.lines().skip_while(|l| !l.starts_with("HOST "));
    assert!(lines.next().is_some(), "no summary table:\n{stdout}");
    let mut out = Vec::new();
    for line in lines.take_while(|l| !l.trim().is_empty()) {
        // HOST RESULT CHANGES TIME EXECS, then the error (with spaces).
        let mut rest = line;
        let mut cols = Vec::new();
        for _ in 0..5 {
            rest = rest.trim_start();
            let end = rest.find(' ').unwrap_or(rest.len());
            cols.push(rest[..end].to_string());
            rest = &rest[end..];
        }
        out.push((
            cols[0].clone(),
            Row {
                result: cols[1].clone(),
                changes: cols[2].parse().unwrap(),
                execs: cols[4].parse().unwrap(),
                error: rest.trim().to_string(),
            },
        ));
    }
    out
}

fn row(stdout: &str, host: &str) -> Row {
    rows(stdout)
        .into_iter()
        .find(|(h, _)| h == host)
        .unwrap_or_else(|| panic!("no summary row for {host}:\n{stdout}"))
        .1
}

fn last_line(stdout: &str) -> &str {
    stdout.trim_end().lines().last().unwrap_or_default()
}

fn failed_hosts(fleet: &Fleet) -> String {
    std::fs::read_to_string(fleet.home().join(".local/state/edgectl/default/failed-hosts"))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_that_is_down_fails_alone() {
    let mut fleet = Fleet::start(3, "down").await;
    let artifacts = fleet.artifacts().to_str().unwrap().to_string();
    // The inventory (written by start) keeps down3 with its old address.
    // down3 goes down as a machine that is switched off: its link first
    // (so SYNs to it vanish, as on a LAN), then the machine. Not
    // `TestHost::stop`: that frees the host's slot, and then its address
    // is routed off this machine (here to a proxy that accepts and closes)
    // or taken by the next test host booted by a parallel test process.
    let dead = fleet.hosts.remove(2);
    let (dead_name, dead_ip) = (dead.name.clone(), dead.ip);
    assert_eq!(dead_name, "down3");
    let ns = dead.netns();
    let down = std::process::Command::new("ip")
        .args(["-n", &ns, "link", "set", "eth0", "down"])
        .output()
        .unwrap();
    assert!(down.status.success(), "{down:?}");
    dead.exec_ok("systemctl poweroff").await.unwrap();
    let inv = std::fs::read_to_string(fleet.inventory()).unwrap();
    assert!(inv.contains(&format!("ansible_host: {dead_ip}")), "{inv}");

    let run = timed(
        &fleet,
        "down: --all, one host down",
        &provision(&["--all", "--connect-timeout", "3"], &artifacts),
    )
    .await;
    let out = run.stdout();
    eprintln!("--- first run\n{out}\n{}", run.stderr());
    run.expect(1);
    for ok in ["down1", "down2"] {
        let r = row(&out, ok);
        assert_eq!(r.result, "changed", "{out}");
        assert!(r.changes > 0 && r.error.is_empty(), "{out}");
    }
    let r = row(&out, "down3");
    assert_eq!((r.result.as_str(), r.changes, r.execs), ("failed", 0, 0), "{out}");
    assert!(
        r.error.starts_with(&format!("down3 ({dead_ip}:22): ")),
        "the error names the host and its address: {out}"
    );
    assert!(
        [
            "connection refused",
            "timed out after 3s connecting",
            "cannot connect"
        ]
        .iter()
        .any(|m| r.error.contains(m)),
        "{out}"
    );
    assert_eq!(
        last_line(&out),
        "2 of 3 devices succeeded; to retry the failed ones: edgectl device provision down3"
    );
    assert_eq!(failed_hosts(&fleet), "down3\n");
    let ids = fleet.wait_ready(&["down1", "down2"]).await;
    assert_eq!(ids.len(), 2);

    // --retry-failed: only down3, still failing.
    let retry = timed(
        &fleet,
        "down: --retry-failed",
        &provision(&["--retry-failed", "--connect-timeout", "3"], &artifacts),
    )
    .await;
    let out = retry.stdout();
    eprintln!("--- retry\n{out}\n{}", retry.stderr());
    retry.expect(1);
    let table: Vec<String> = rows(&out).into_iter().map(|(h, _)| h).collect();
    assert_eq!(table, ["down3"], "{out}");
    assert_eq!(row(&out, "down3").result, "failed");
    assert_eq!(
        last_line(&out),
        "0 of 1 devices succeeded; to retry the failed ones: edgectl device provision down3"
    );
    assert_eq!(failed_hosts(&fleet), "down3\n");

    // JSON: schema 1, one result per host, the error on one line.
    let json = timed(
        &fleet,
        "down: --all --output json",
        &provision(
            &["--all", "--connect-timeout", "3", "--output", "json"],
            &artifacts,
        ),
    )
    .await;
    json.expect(1);
    let doc = json.json();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["command"], "device provision", "{doc:#}");
    assert_eq!(doc["dry_run"], false, "{doc:#}");
    let hosts = doc["hosts"].as_array().expect("hosts");
    let got: Vec<(&str, &str, u64)> = hosts
        .iter()
        .map(|h| {
            (
                h["host"].as_str().unwrap(),
                h["result"].as_str().unwrap(),
                h["round_trips"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [("down1", "ok", 1), ("down2", "ok", 1), ("down3", "failed", 0)],
        "{doc:#}"
    );
    for h in &hosts[..2] {
        assert!(h.get("error").is_none(), "{h:#}");
        assert_eq!(h["changes"].as_array().map(Vec::len), Some(0), "{h:#}");
    }
    let err = hosts[2]["error"].as_str().expect("an error for down3");
    assert!(err.starts_with("down3 (") && !err.contains('\n'), "{err:?}");
    fleet.stop().await;
    dead.stop().await;
}

/// `SHA256:…` of the host's ed25519 host key, as the device prints it.
async fn fingerprint(host: &TestHost) -> String {
    let out = host
        .exec_ok("ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub")
        .await
        .unwrap();
    out.split_whitespace().nth(1).unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_host_key_is_refused_then_accepted_on_request() {
    let fleet = Fleet::start(1, "hkey").await;
    let artifacts = fleet.artifacts().to_str().unwrap().to_string();
    let host = &fleet.hosts[0];
    let kh = fleet.known_hosts();
    std::fs::write(&kh, "").unwrap();
    let fp = fingerprint(host).await;
    assert!(fp.starts_with("SHA256:"), "{fp}");

    let run = timed(&fleet, "hostkey: unknown key", &provision(&["--all"], &artifacts)).await;
    let out = run.stdout();
    eprintln!("--- unknown\n{out}\n{}", run.stderr());
    run.expect(1);
    let r = row(&out, "hkey1");
    assert_eq!((r.result.as_str(), r.execs), ("failed", 0), "{out}");
    assert!(r.error.starts_with(&format!("hkey1 ({}:22): ", host.ip)), "{out}");
    assert!(r.error.contains(&format!("unknown host key {fp}")), "{out}");
    assert!(r.error.contains(&kh.display().to_string()), "{out}");
    assert!(r.error.contains("--accept-new-host-keys"), "{out}");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), "", "nothing recorded");
    let untouched = host
        .exec("test -e /opt/nomad || test -e /root/certificates || test -e /usr/bin/nomad")
        .await
        .unwrap();
    assert!(!untouched.status.success(), "nothing changed on the device");

    let run = timed(
        &fleet,
        "hostkey: --accept-new-host-keys",
        &provision(&["--all", "--accept-new-host-keys"], &artifacts),
    )
    .await;
    eprintln!("--- accept\n{}\n{}", run.stdout(), run.stderr());
    run.expect(0);
    let text = std::fs::read_to_string(&kh).unwrap();
    let key_of = |line: &str| line.split_whitespace().nth(2).map(str::to_string);
    assert_eq!(text.lines().count(), 1, "{text}");
    let line = text.lines().next().unwrap();
    assert!(line.starts_with(&format!("{} ssh-ed25519 ", host.ip)), "{text}");
    assert_eq!(key_of(line), key_of(&host.known_hosts_line), "{text}");
    fleet.wait_ready(&["hkey1"]).await;

    let run = timed(
        &fleet,
        "hostkey: known now, no flag",
        &provision(&["--all"], &artifacts),
    )
    .await;
    let out = run.stdout();
    run.expect(0);
    let r = row(&out, "hkey1");
    assert_eq!((r.result.as_str(), r.changes, r.execs), ("ok", 0, 1), "{out}");
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap(),
        text,
        "known_hosts unchanged"
    );

    // Another ed25519 key recorded for this address: refused even with
    // --accept-new-host-keys, and known_hosts is left alone.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other");
    let gen = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "", "-f"])
        .arg(&other)
        .output()
        .unwrap();
    assert!(gen.status.success(), "{gen:?}");
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let changed = format!("{} {}\n", host.ip, other_pub.trim());
    std::fs::write(&kh, &changed).unwrap();
    let run = timed(
        &fleet,
        "hostkey: changed key, --accept-new-host-keys",
        &provision(&["--all", "--accept-new-host-keys"], &artifacts),
    )
    .await;
    let out = run.stdout();
    eprintln!("--- changed\n{out}\n{}", run.stderr());
    run.expect(1);
    let r = row(&out, "hkey1");
    assert_eq!((r.result.as_str(), r.execs), ("failed", 0), "{out}");
    assert!(r.error.starts_with(&format!("hkey1 ({}:22): ", host.ip)), "{out}");
    assert!(r.error.contains("HOST KEY CHANGED"), "{out}");
    assert!(r.error.contains(&fp), "{out}");
    assert!(r.error.contains(&format!("{}:1", kh.display())), "{out}");
    assert!(r.error.contains("ssh-keygen -R"), "{out}");
    assert_eq!(std::fs::read_to_string(&kh).unwrap(), changed, "not overwritten");
    fleet.stop().await;
}

/// What the device should have at each managed path, when it has it.
const MANAGED: &[(&str, &str)] = &[
    ("/usr/bin/nomad", "root:root 755"),
    ("/opt/nomad/config/nomad.hcl", "root:nomad 644"),
    ("/etc/systemd/system/nomad.service", "root:root 644"),
    ("/root/certificates/ca.pem", "root:root 400"),
    ("/root/certificates/AmazonRootCA1.pem", "root:root 400"),
    ("/root/certificates/device.pem", "nomad:nomad 440"),
    ("/root/certificates/device-key.pem", "nomad:nomad 440"),
];

/// Every managed path is absent or whole, with its final owner and mode;
/// temp files left by the cut are private (0600) and named as such. With
/// `sums` (each path's sha256 once converged), a file other than the
/// device's own key and certificate (which a renewal changes) must be
/// exactly that.
async fn check_whole(
    host: &TestHost,
    nomad_sha: &str,
    when: &str,
    sums: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut present = Vec::new();
    for (path, want) in MANAGED {
        let st = host.exec(&format!("stat -c '%U:%G %a %s' {path}")).await.unwrap();
        if !st.status.success() {
            continue;
        }
        present.push(path.to_string());
        let st = String::from_utf8_lossy(&st.stdout).trim().to_string();
        let (meta, size) = st.rsplit_once(' ').unwrap();
        assert_eq!(meta, *want, "{when}: owner/mode of {path}");
        assert!(size.parse::<u64>().unwrap() > 0, "{when}: {path} is empty");
        if let Some(want) = sums.get(*path).filter(|_| !path.contains("/device")) {
            let sum = host.exec_ok(&format!("sha256sum {path}")).await.unwrap();
            assert_eq!(
                sum.split_whitespace().next(),
                Some(want.as_str()),
                "{when}: {path}"
            );
        }
        if *path == "/usr/bin/nomad" {
            let sum = host.exec_ok(&format!("sha256sum {path}")).await.unwrap();
            assert_eq!(
                sum.split_whitespace().next(),
                Some(nomad_sha),
                "{when}: {path} is not the artifact"
            );
        } else if path.ends_with(".pem") {
            let text = host.exec_ok(&format!("cat {path}")).await.unwrap();
            let begins = text.matches("-----BEGIN ").count();
            let ends = text.matches("-----END ").count();
            assert!(
                begins > 0 && begins == ends && text.trim_end().ends_with("-----"),
                "{when}: {path} is not whole PEM:\n{text}"
            );
        } else if path.ends_with(".hcl") {
            let text = host.exec_ok(&format!("cat {path}")).await.unwrap();
            assert!(
                text.trim_end().ends_with('}'),
                "{when}: {path} cut short:\n{text}"
            );
        } else if path.ends_with(".service") {
            let text = host.exec_ok(&format!("cat {path}")).await.unwrap();
            assert!(text.contains("[Install]"), "{when}: {path} cut short:\n{text}");
        }
    }
    let temps = host
        .exec_ok(
            "find /usr/bin /opt/nomad /etc/systemd/system /root/certificates -maxdepth 2 \
             \\( -name '*.edgectl-*' \\) -printf '%p %U %m\\n' 2>/dev/null || true",
        )
        .await
        .unwrap();
    for t in temps.lines() {
        assert!(
            t.ends_with(" 0 600") || t.ends_with(" 0 400"),
            "{when}: a temp file readable by others: {t}"
        );
    }
    eprintln!(
        "[cut] {when}: present {present:?}; temps {:?}",
        temps.lines().collect::<Vec<_>>()
    );
    present
}

/// sha256 of every managed path, as they are now.
async fn managed_sums(host: &TestHost) -> BTreeMap<String, String> {
    let mut sums = BTreeMap::new();
    for (path, _) in MANAGED {
        let sum = host.exec_ok(&format!("sha256sum {path}")).await.unwrap();
        let sum = sum.split_whitespace().next().unwrap().to_string();
        sums.insert(path.to_string(), sum);
    }
    sums
}

/// splitmix64, for the seeded cut points.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Kills the SSH sessions of root in the host (the process `sshd: root@notty`):
/// the connection drops. The bracket keeps pkill off its own shell.
const CUT: &str = "pkill -KILL -f '^sshd: roo[t]@'";

async fn sessions(host: &TestHost) -> bool {
    host.exec("pgrep -f '^sshd: roo[t]@'")
        .await
        .map(|o| o.status.success())
        .unwrap_or(false)
}

async fn tmp_size(host: &TestHost) -> u64 {
    host.exec_ok("stat -c %s /usr/bin/.nomad.edgectl-tmp 2>/dev/null || echo 0")
        .await
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Runs `edgectl device ARGS` while polling `ready` on the device; once it
/// says so, runs `kill` there (its output is returned with the time since
/// the start). Polling stops when edgectl is done first (`None`).
async fn run_with_cut<F, Fut>(
    fleet: &Fleet,
    args: &[&str],
    host: &TestHost,
    kill: &str,
    mut ready: F,
) -> (Run, Option<(Duration, String)>, Duration)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    let done = AtomicBool::new(false);
    let run = async {
        let r = fleet.device(args).await;
        done.store(true, Ordering::SeqCst);
        r
    };
    let cutter = async {
        while !done.load(Ordering::SeqCst) {
            if ready().await {
                let at = started.elapsed();
                let out = host.exec_ok(&format!("{kill}; true")).await.unwrap();
                return Some((at, out.trim().to_string()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    };
    let (run, cut) = tokio::join!(run, cutter);
    (run, cut, started.elapsed())
}

#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as the session exists (the facts exec, or the packages).
    Early,
    /// With part of /usr/bin/nomad streamed into its temp file.
    MidUpload,
    /// After the binary is in (the certificates, config, unit, restart).
    Late,
    /// With the new key made on the device (`.device-key.pem.edgectl-new`)
    /// while edgectl has the certificate issued, before the key moves in.
    Identity,
    /// A seeded point: this long after the run starts (with a session up).
    At(Duration),
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_cut_mid_run_converges_and_never_leaves_half_written_files() {
    let fleet = Fleet::start(1, "cut").await;
    let artifacts = fleet.artifacts().to_str().unwrap().to_string();
    let host = &fleet.hosts[0];
    let sum = std::process::Command::new("sha256sum")
        .arg(fleet.artifacts().join("nomad").canonicalize().unwrap())
        .output()
        .unwrap();
    let nomad_sha = String::from_utf8_lossy(&sum.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    let args = provision(&["--all"], &artifacts);
    let mut sums = BTreeMap::new();
    // Four chosen moments, then seeded points spread over a redo run's
    // length (EDGECTL_CUT_SEEDS="3 7" replays some; a point edgectl is
    // already past is a miss, not a failure).
    let seeds: Vec<u64> = match std::env::var("EDGECTL_CUT_SEEDS") {
        Ok(list) => list.split_whitespace().map(|s| s.parse().unwrap()).collect(),
        Err(_) => (0..6).collect(),
    };
    let mut moments = vec![Moment::MidUpload, Moment::Early, Moment::Identity, Moment::Late];
    moments.extend(
        seeds
            .iter()
            .map(|s| Moment::At(Duration::from_millis(mix(*s) % 3200))),
    );
    let mut random_cuts = Vec::new();

    for (i, moment) in moments.into_iter().enumerate() {
        let when = format!("cut {} ({moment:?})", i + 1);
        // A cut that misses its moment (edgectl was faster) is tried again.
        let mut attempt = 0;
        let (run, out) = loop {
            attempt += 1;
            if i > 0 || attempt > 1 {
                // Something to do again: the binary, the config and the
                // certificate (so a new key and certificate are issued too).
                host.exec_ok(
                    "systemctl stop nomad; rm -f /usr/bin/nomad /opt/nomad/config/nomad.hcl \
                     /root/certificates/device.pem",
                )
                .await
                .unwrap();
            }
            let t0 = Instant::now();
            let ready = || async move {
                match moment {
                    Moment::At(at) => t0.elapsed() >= at && sessions(host).await,
                    Moment::Early => sessions(host).await,
                    Moment::MidUpload => tmp_size(host).await > 1 << 20,
                    Moment::Late => {
                        host.exec("test -x /usr/bin/nomad")
                            .await
                            .map(|o| o.status.success())
                            .unwrap_or(false)
                            && sessions(host).await
                    }
                    Moment::Identity => host
                        .exec("test -e /root/certificates/.device-key.pem.edgectl-new")
                        .await
                        .map(|o| o.status.success())
                        .unwrap_or(false),
                }
            };
            let kill = format!("stat -c %s /usr/bin/.nomad.edgectl-tmp 2>/dev/null; {CUT}");
            let (run, cut, took) = run_with_cut(&fleet, &args, host, &kill, ready).await;
            eprintln!(
                "[timing] {when}, attempt {attempt}: provision with the cut: {:.1}s (exit {})",
                took.as_secs_f64(),
                run.code()
            );
            let out = run.stdout();
            eprintln!("--- {when}: cut at {cut:?}\n{out}\n{}", run.stderr());
            match cut.filter(|_| run.code() != 0) {
                Some((at, size)) => {
                    eprintln!(
                        "[cut] {when}: cut {:.1}s in, nomad temp file {size:?} bytes; edgectl ended {:.1}s later",
                        at.as_secs_f64(),
                        (took - at).as_secs_f64()
                    );
                    assert!(
                        took - at < Duration::from_secs(20),
                        "{when}: edgectl noticed the cut only after {:?}",
                        took - at
                    );
                    break (run, out);
                }
                None if matches!(moment, Moment::At(_)) => {
                    run.expect(0);
                    eprintln!("[cut] {when}: missed (edgectl was done first)");
                    break (run, String::new());
                }
                None if attempt < 3 => {
                    run.expect(0);
                    eprintln!("[cut] {when}: missed (edgectl was done first); again");
                }
                None => panic!("{when}: edgectl finished before the cut, {attempt} times:\n{out}"),
            }
        };
        if out.is_empty() {
            random_cuts.push((when, false));
            continue;
        }
        random_cuts.extend(matches!(moment, Moment::At(_)).then(|| (when.clone(), true)));
        run.expect(1);
        let r = row(&out, "cut1");
        assert_eq!(r.result, "failed", "{out}");
        assert!(r.error.starts_with(&format!("cut1 ({}:22): ", host.ip)), "{out}");
        assert!(
            ["connection", "closed", "disconnect"]
                .iter()
                .any(|w| r.error.to_lowercase().contains(w)),
            "{when}: the error says the connection went away: {out}"
        );
        assert_eq!(
            last_line(&out),
            "0 of 1 devices succeeded; to retry the failed ones: edgectl device provision cut1"
        );
        check_whole(host, &nomad_sha, &when, &sums).await;

        let again = timed(&fleet, &format!("{when}: provision again"), &args).await;
        eprintln!("--- {when}: again\n{}\n{}", again.stdout(), again.stderr());
        again.expect(0);
        fleet.wait_ready(&["cut1"]).await;
        let present = check_whole(host, &nomad_sha, &format!("{when}, converged"), &sums).await;
        if sums.is_empty() {
            sums = managed_sums(host).await;
        }
        assert_eq!(present.len(), MANAGED.len(), "{present:?}");
        let left = host
            .exec_ok(
                "find /usr/bin /opt/nomad /etc/systemd/system /root/certificates -maxdepth 2 \
                 -name '*.edgectl-*'",
            )
            .await
            .unwrap();
        assert_eq!(
            left, "",
            "{when}: temp files left (e.g. /usr/bin/.nomad.edgectl-tmp)"
        );
        // The key and the certificate belong together, and nomad runs.
        let pubkeys = host
            .exec_ok(
                "openssl x509 -in /root/certificates/device.pem -noout -pubkey; \
                 openssl pkey -in /root/certificates/device-key.pem -pubout; systemctl is-active nomad",
            )
            .await
            .unwrap();
        let blocks: Vec<&str> = pubkeys.split("-----END PUBLIC KEY-----").collect();
        assert_eq!(blocks.len(), 3, "{pubkeys}");
        assert_eq!(
            blocks[0].trim(),
            blocks[1].trim(),
            "{when}: key and certificate differ"
        );
        assert_eq!(blocks[2].trim(), "active", "{when}");
        assert_eq!(failed_hosts(&fleet), "");
    }
    eprintln!("[cut] seeded points: {random_cuts:?}");
    assert!(
        random_cuts.iter().any(|(_, cut)| *cut),
        "no seeded point cut a run: {random_cuts:?}"
    );
    fleet.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_root_user_with_sudo() {
    let fleet = Fleet::start(1, "sudo").await;
    let artifacts = fleet.artifacts().to_str().unwrap().to_string();
    let host = &fleet.hosts[0];
    fleet.write_inventory(&[("sudo1", "ansible_user: pi")]);
    let args = provision(&["--all"], &artifacts);

    let run = timed(&fleet, "sudo: as pi", &args).await;
    eprintln!("--- pi\n{}\n{}", run.stdout(), run.stderr());
    run.expect(0);
    fleet.wait_ready(&["sudo1"]).await;
    let modes = host
        .exec_ok("stat -c '%U:%G %a' /root/certificates/device-key.pem")
        .await
        .unwrap();
    assert_eq!(modes.trim(), "nomad:nomad 440");
    let owner = host
        .exec_ok("stat -c '%U:%G %a' /usr/bin/nomad /opt/nomad/config/nomad.hcl")
        .await
        .unwrap();
    assert_eq!(owner.trim(), "root:root 755\nroot:nomad 644");

    let run = timed(&fleet, "sudo: as pi, again", &args).await;
    let out = run.stdout();
    run.expect(0);
    let r = row(&out, "sudo1");
    assert_eq!((r.result.as_str(), r.changes, r.execs), ("ok", 0, 1), "{out}");

    // bob logs in with the same key but has no passwordless sudo.
    host.exec_ok(
        "useradd -m -s /bin/bash bob && install -d -m 700 -o bob -g bob /home/bob/.ssh && \
         install -m 600 -o bob -g bob /home/pi/.ssh/authorized_keys /home/bob/.ssh/authorized_keys",
    )
    .await
    .unwrap();
    fleet.write_inventory(&[("sudo1", "ansible_user: bob")]);
    let run = timed(&fleet, "sudo: as bob (no NOPASSWD)", &args).await;
    let out = run.stdout();
    eprintln!("--- bob\n{out}\n{}", run.stderr());
    run.expect(1);
    let r = row(&out, "sudo1");
    assert_eq!((r.result.as_str(), r.execs), ("failed", 1), "{out}");
    assert_eq!(
        r.error,
        format!(
            "sudo1 ({}:22): sudo needs a password for bob: nothing was run \
             (hint: give bob passwordless sudo (NOPASSWD) on the device, or connect as root)",
            host.ip
        ),
        "{out}"
    );
    fleet.stop().await;
}

/// nomad's main PID on the device.
async fn nomad_pid(host: &TestHost) -> String {
    host.exec_ok("/usr/bin/systemctl show -p MainPID --value nomad")
        .await
        .unwrap()
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_between_a_change_and_its_restart_still_restarts_nomad() {
    let fleet = Fleet::start(1, "lost").await;
    let artifacts = fleet.artifacts().to_str().unwrap().to_string();
    let host = &fleet.hosts[0];
    let args = provision(&["--all"], &artifacts);
    timed(&fleet, "lost: first provision", &args).await.expect(0);
    fleet.wait_ready(&["lost1"]).await;

    // nomad runs a drifted nomad.hcl; provision puts the right one back and
    // must restart nomad. A systemctl wrapper holds the restart back long
    // enough to cut the connection after the file changed and before the
    // restart ran (as when the network drops between the two execs).
    host.exec_ok(
        "echo '# drift' >> /opt/nomad/config/nomad.hcl && /usr/bin/systemctl restart nomad && \
         printf '#!/bin/sh\\ncase \"$1\" in restart|try-restart) sleep 4.5;; esac\\nexec /usr/bin/systemctl \"$@\"\\n' \
           > /usr/local/bin/systemctl && chmod 755 /usr/local/bin/systemctl",
    )
    .await
    .unwrap();
    let before = nomad_pid(host).await;
    assert_ne!(before, "0");
    let held = || async {
        host.exec("! grep -q '# drift' /opt/nomad/config/nomad.hcl && pgrep -f '^sleep 4.5'")
            .await
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    let kill = format!("{CUT}; pkill -KILL -f '^/bin/sh /usr/local/bin/systemct[l]'; pkill -f '^sleep 4.5'");
    let (run, cut, took) = run_with_cut(&fleet, &args, host, &kill, held).await;
    eprintln!(
        "[timing] lost: provision cut before the restart: {:.1}s (exit {}), cut at {cut:?}\n{}\n{}",
        took.as_secs_f64(),
        run.code(),
        run.stdout(),
        run.stderr()
    );
    host.exec_ok("rm -f /usr/local/bin/systemctl").await.unwrap();
    assert!(
        cut.is_some(),
        "edgectl finished before the cut:\n{}",
        run.stdout()
    );
    run.expect(1);
    assert_eq!(nomad_pid(host).await, before, "the cut came before the restart");
    let text = host.exec_ok("cat /opt/nomad/config/nomad.hcl").await.unwrap();
    assert!(!text.contains("# drift"), "nomad.hcl is the new one");

    let again = timed(&fleet, "lost: provision again", &args).await;
    let out = again.stdout();
    eprintln!("--- lost: again\n{out}\n{}", again.stderr());
    again.expect(0);
    let after = nomad_pid(host).await;
    assert_ne!(
        after, before,
        "nomad still runs the process started before nomad.hcl changed: the restart was lost\n{out}"
    );
    let r = row(&out, "lost1");
    assert_eq!((r.result.as_str(), r.changes), ("changed", 1), "{out}");
    assert!(out.contains("lost1/handler:restart nomad.service"), "{out}");
    let marker = host
        .exec("test -e /var/lib/edgectl/restart-pending/nomad.service")
        .await
        .unwrap();
    assert!(!marker.status.success(), "the pending restart is done");
    fleet.wait_ready(&["lost1"]).await;
    let third = timed(&fleet, "lost: third run", &args).await;
    third.expect(0);
    let r = row(&third.stdout(), "lost1");
    assert_eq!((r.changes, r.execs), (0, 1), "{}", third.stdout());
    assert_eq!(nomad_pid(host).await, after, "no restart without a change");
    fleet.stop().await;
}
