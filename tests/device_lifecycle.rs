//! A provisioned device over its life: a config change restarts only
//! Nomad, `device status` reports it, `device deprovision` retires it, and
//! no run ever shows (or leaves on the operator's disk) a private key.

mod common;

use common::devices::{ssm, Fleet};
use common::Run;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `edgectl device ARGS`, its wall time printed for the report.
async fn timed(fleet: &Fleet, label: &str, args: &[&str]) -> Run {
    timed_env(fleet, label, args, &[]).await
}

async fn timed_env(fleet: &Fleet, label: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let started = Instant::now();
    let run = fleet.device_env(args, env).await;
    eprintln!(
        "[timing] {label}: `edgectl device {}` exit {} in {:.2}s",
        args.join(" "),
        run.code(),
        started.elapsed().as_secs_f64()
    );
    run
}

fn provision_args(fleet: &Fleet, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        "provision".into(),
        "--all".into(),
        "--artifacts".into(),
        fleet.artifacts().to_str().unwrap().into(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// The change addresses of every host in a `--output json` fleet report.
fn addresses(doc: &serde_json::Value) -> Vec<String> {
    doc["hosts"]
        .as_array()
        .unwrap_or_else(|| panic!("no hosts in {doc:#}"))
        .iter()
        .flat_map(|h| h["changes"].as_array().cloned().unwrap_or_default())
        .map(|c| c["address"].as_str().unwrap().to_string())
        .collect()
}

async fn sh(fleet: &Fleet, host: &str, cmd: &str) -> String {
    fleet
        .host(host)
        .exec_ok(cmd)
        .await
        .unwrap_or_else(|e| panic!("{host}: `{cmd}`: {e:#}"))
}

/// Every running service's last activation, by unit.
async fn service_starts(fleet: &Fleet, host: &str) -> BTreeMap<String, String> {
    let text = sh(
        fleet,
        host,
        "for u in $(systemctl list-units --type=service --state=running --no-legend --plain | awk '{print $1}'); do \
         echo \"$u $(systemctl show -p ActiveEnterTimestampMonotonic --value $u)\"; done",
    )
    .await;
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(u, t)| (u.to_string(), t.to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_changed_config_restarts_only_nomad_and_the_node_stays() {
    let fleet = Fleet::start(1, "cfg").await;
    let name = fleet.hosts[0].name.clone();
    let n = name.as_str();
    let args = provision_args(&fleet, &[]);
    timed(&fleet, "first provision", &strs(&args)).await.expect(0);
    let id = fleet.wait_ready(&[n]).await.remove(0);

    const NOMAD: &str = "systemctl show -p ActiveEnterTimestampMonotonic,MainPID nomad";
    const SHA: &str = "sha256sum /opt/nomad/config/nomad.hcl";
    let nomad_before = sh(&fleet, n, NOMAD).await;
    let sha_before = sh(&fleet, n, SHA).await;
    let services_before = service_starts(&fleet, n).await;
    assert!(
        services_before.contains_key("nomad.service"),
        "{services_before:?}"
    );

    fleet.write_inventory(&[(n, "nomad_node_class: edge-a")]);
    let file = format!("{n}/file:/opt/nomad/config/nomad.hcl");
    let handler = format!("{n}/handler:restart nomad.service");

    // The dry run: exactly the file and the restart, with a diff; nothing moves.
    let dry = timed(&fleet, "dry run", &strs(&provision_args(&fleet, &["--dry-run"]))).await;
    dry.expect(0);
    let out = dry.stdout();
    eprintln!("--- dry run\n{out}");
    let changed: Vec<&str> = out
        .lines()
        .filter(|l| {
            ["  + ", "  ~ ", "  - ", "  -/+ "]
                .iter()
                .any(|m| l.starts_with(m))
        })
        .collect();
    assert_eq!(changed.len(), 2, "exactly two changes:\n{out}");
    assert!(changed[0].contains(&file), "{out}");
    assert!(changed[1].contains(&handler), "{out}");
    assert!(
        out.lines().any(|l| {
            let t = l.trim_start();
            t.starts_with('+') && !t.starts_with("+++") && t.contains("node_class") && t.contains("edge-a")
        }),
        "a unified diff line adding node_class:\n{out}"
    );
    assert_eq!(
        out.lines().filter(|l| l.contains("node_class")).count(),
        1,
        "the diff is shown once:\n{out}"
    );
    let detailed = timed(
        &fleet,
        "dry run, detailed exit code, json",
        &strs(&provision_args(
            &fleet,
            &["--dry-run", "--detailed-exitcode", "--output", "json"],
        )),
    )
    .await;
    detailed.expect(2);
    let doc = detailed.json();
    assert_eq!(doc["dry_run"], true);
    assert_eq!(addresses(&doc), vec![file.clone(), handler.clone()], "{doc:#}");
    assert!(
        doc["hosts"][0]["diffs"][&file]
            .as_str()
            .is_some_and(|d| d.contains("node_class")),
        "{doc:#}"
    );
    assert_eq!(sh(&fleet, n, SHA).await, sha_before, "a dry run wrote nomad.hcl");
    assert_eq!(
        sh(&fleet, n, NOMAD).await,
        nomad_before,
        "a dry run restarted nomad"
    );

    // The real run.
    let real = timed(
        &fleet,
        "apply the config change",
        &strs(&provision_args(&fleet, &["--output", "json"])),
    )
    .await;
    real.expect(0);
    let doc = real.json();
    assert_eq!(doc["dry_run"], false);
    assert_eq!(addresses(&doc), vec![file.clone(), handler.clone()], "{doc:#}");
    assert_ne!(sh(&fleet, n, SHA).await, sha_before);
    let nomad_after = sh(&fleet, n, NOMAD).await;
    assert_ne!(nomad_after, nomad_before, "nomad restarted");
    let pid = |s: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix("MainPID="))
            .map(str::to_string)
            .unwrap()
    };
    assert_ne!(pid(&nomad_after), pid(&nomad_before), "{nomad_after}");
    let services_after = service_starts(&fleet, n).await;
    let restarted: Vec<&String> = services_before
        .iter()
        .filter(|(u, t)| services_after.get(*u).is_some_and(|a| a != *t))
        .map(|(u, _)| u)
        .collect();
    assert_eq!(
        restarted,
        vec!["nomad.service"],
        "only nomad restarted:\n{services_before:?}\n{services_after:?}"
    );

    // The same node comes back ready, in its new class.
    let deadline = Instant::now() + common::devices::READY_TIMEOUT;
    loop {
        let nodes = fleet.api().get("/v1/nodes").await.expect("listing nodes");
        let mine: Vec<&serde_json::Value> = nodes
            .as_array()
            .unwrap()
            .iter()
            .filter(|x| x["Name"] == n)
            .collect();
        assert_eq!(mine.len(), 1, "one node for {n}: {nodes:#}");
        let node = mine[0];
        assert_eq!(node["ID"], id.as_str(), "the node kept its ID");
        if node["Status"] == "ready" && node["NodeClass"] == "edge-a" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node not ready in class edge-a: {node:#}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    let again = timed(
        &fleet,
        "run after the change",
        &strs(&provision_args(&fleet, &["--output", "json"])),
    )
    .await;
    again.expect(0);
    let doc = again.json();
    assert!(addresses(&doc).is_empty(), "{doc:#}");
    assert_eq!(sh(&fleet, n, NOMAD).await, nomad_after);
    fleet.stop().await;
}

/// The whitespace-separated cells of `host`'s row in a status table.
fn row(stdout: &str, host: &str) -> Vec<String> {
    stdout
        .lines()
        .find(|l| l.split_whitespace().next() == Some(host))
        .unwrap_or_else(|| panic!("no row for {host}:\n{stdout}"))
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn is_date(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[tokio::test(flavor = "multi_thread")]
async fn device_status_reports_each_device() {
    let fleet = Fleet::start(2, "stat").await;
    let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
    let names: Vec<&str> = strs(&names);
    timed(&fleet, "provision two", &strs(&provision_args(&fleet, &[])))
        .await
        .expect(0);
    fleet.wait_ready(&names).await;

    let st = timed(&fleet, "status, healthy", &["status", "--all"]).await;
    st.expect(0);
    let out = st.stdout();
    eprintln!("--- status\n{out}");
    let header = out.lines().next().unwrap_or_default();
    assert!(
        header.starts_with("HOST") && header.contains("NOMAD") && header.contains("NODE"),
        "{out}"
    );
    for n in &names {
        let r = row(&out, n);
        // HOST SSH NOMAD DATE (N days) NODE
        assert_eq!(r[1], "reachable", "{out}");
        assert_eq!(r[2], "active", "{out}");
        assert!(is_date(&r[3]), "a certificate expiry date: {out}");
        assert!(r[4].starts_with('(') && r[5] == "days)", "{out}");
        assert_eq!(r[6], "ready", "{out}");
    }
    let js = timed(
        &fleet,
        "status, healthy, json",
        &["status", "--all", "--output", "json"],
    )
    .await;
    js.expect(0);
    let doc = js.json();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["command"], "device status", "{doc:#}");
    let devices = doc["devices"].as_array().unwrap();
    assert_eq!(devices.len(), 2, "{doc:#}");
    for (d, n) in devices.iter().zip(&names) {
        assert_eq!(d["host"], *n, "{doc:#}");
        assert_eq!(d["reachable"], true, "{doc:#}");
        assert_eq!(d["nomad_active"], true, "{doc:#}");
        assert_eq!(d["node_status"], "ready", "{doc:#}");
        assert!(
            d["certificate_days_left"].as_i64().is_some_and(|x| x > 0),
            "{doc:#}"
        );
        assert!(
            d["certificate_expires"]
                .as_str()
                .is_some_and(|s| is_date(&s[..10])),
            "{doc:#}"
        );
        assert!(d.get("error").is_none(), "{doc:#}");
    }

    sh(&fleet, names[1], "systemctl stop nomad").await;
    let st = timed(&fleet, "status, one stopped", &["status", "--all"]).await;
    st.expect(1);
    let out = st.stdout();
    eprintln!("--- status with nomad stopped on {}\n{out}", names[1]);
    assert_eq!(row(&out, names[0])[2], "active", "{out}");
    let r = row(&out, names[1]);
    assert_eq!(r[1], "reachable", "{out}");
    assert_eq!(r[2], "inactive", "{out}");
    let js = timed(
        &fleet,
        "status, one stopped, json",
        &["status", "--all", "--output", "json"],
    )
    .await;
    js.expect(1);
    let doc = js.json();
    assert_eq!(doc["schema"], 1, "{doc:#}");
    assert_eq!(doc["devices"][0]["nomad_active"], true, "{doc:#}");
    assert_eq!(doc["devices"][1]["nomad_active"], false, "{doc:#}");
    assert_eq!(doc["devices"][1]["reachable"], true, "{doc:#}");
    fleet.stop().await;
}

fn revoke_writes(fleet: &Fleet) -> Vec<String> {
    fleet
        .stand
        .writes()
        .into_iter()
        .filter(|a| a.ends_with("RevokeCertificate"))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn deprovision_removes_the_node_and_revokes_the_certificate() {
    let fleet = Fleet::start(1, "retire").await;
    let name = fleet.hosts[0].name.clone();
    let n = name.as_str();
    timed(&fleet, "provision", &strs(&provision_args(&fleet, &[])))
        .await
        .expect(0);
    fleet.wait_ready(&[n]).await;
    let arn = ssm(
        &fleet.stand,
        &format!("/infrastructure/devices/{n}/certificate_arn"),
    )
    .await
    .expect("certificate_arn in SSM");
    let serial = ssm(&fleet.stand, &format!("/infrastructure/devices/{n}/serial"))
        .await
        .expect("serial in SSM");
    let ca = ssm(&fleet.stand, "/infrastructure/pca/arn")
        .await
        .expect("the CA's ARN in SSM");
    let pca = aws_sdk_acmpca::Client::new(&fleet.stand.sdk().await);
    let get = || {
        pca.get_certificate()
            .certificate_authority_arn(&ca)
            .certificate_arn(&arn)
            .send()
    };
    get().await.expect("the device certificate before deprovision");
    eprintln!("device {n}: certificate {arn}, serial {serial}");

    // No --yes, no terminal: refused, nothing touched.
    fleet.stand.sim.reset_requests();
    let refused = timed(&fleet, "deprovision without --yes", &["deprovision", n]).await;
    refused.expect(1);
    assert!(refused.stderr().contains("refusing"), "{}", refused.stderr());
    assert_eq!(fleet.stand.writes(), Vec::<String>::new(), "no AWS writes");
    assert!(fleet.node(n).await.is_some(), "the node is still there");
    assert_eq!(sh(&fleet, n, "systemctl is-active nomad").await.trim(), "active");
    assert!(ssm(&fleet.stand, &format!("/infrastructure/devices/{n}/serial"))
        .await
        .is_some());
    sh(&fleet, n, "test -s /root/certificates/device-key.pem").await;

    let done = timed(&fleet, "deprovision --yes", &["deprovision", n, "--yes"]).await;
    done.expect(0);
    eprintln!("--- deprovision\n{}\n{}", done.stdout(), done.stderr());
    assert!(fleet.node(n).await.is_none(), "the node was purged");
    let active = fleet.host(n).exec("systemctl is-active nomad").await.unwrap();
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");
    let enabled = fleet.host(n).exec("systemctl is-enabled nomad").await.unwrap();
    assert!(
        !enabled.status.success() && !String::from_utf8_lossy(&enabled.stdout).contains("enabled"),
        "nomad is not enabled: {enabled:?}"
    );
    let left = sh(
        &fleet,
        n,
        "for f in /root/certificates/device-key.pem /usr/bin/nomad /opt/nomad /etc/systemd/system/nomad.service; do \
         [ -e \"$f\" ] && echo \"$f\"; done; true",
    )
    .await;
    assert_eq!(left.trim(), "", "left on the device");
    for f in ["uuid", "certificate_arn", "serial", "not_after", "provisioned_at"] {
        let p = format!("/infrastructure/devices/{n}/{f}");
        assert_eq!(ssm(&fleet.stand, &p).await, None, "{p} deleted");
    }
    assert_eq!(revoke_writes(&fleet).len(), 1, "{:?}", fleet.stand.writes());
    let err = get().await.expect_err("a revoked certificate is not returned");
    let text = format!("{}", aws_sdk_acmpca::error::DisplayErrorContext(&err));
    assert!(text.contains("revoked"), "{text}");

    fleet.stand.sim.reset_requests();
    let again = timed(
        &fleet,
        "deprovision again",
        &["deprovision", n, "--yes", "--output", "json"],
    )
    .await;
    again.expect(0);
    let doc = again.json();
    assert_eq!(doc["hosts"][0]["result"], "ok", "{doc:#}");
    assert!(addresses(&doc).is_empty(), "{doc:#}");
    assert!(revoke_writes(&fleet).is_empty(), "{:?}", fleet.stand.writes());
    fleet.stop().await;
}

/// Every regular file under `dir` (symlinks not followed) whose bytes
/// contain `needle`.
fn files_with(dir: &Path, needle: &[u8], out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            files_with(&p, needle, out);
        } else if meta.is_file() {
            if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    out.push(p);
                }
            }
        }
    }
}

/// The base64 lines of a PEM key: any one of them in an output is a leak.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("-----"))
        .map(str::to_string)
        .collect()
}

fn assert_clean(label: &str, run: &Run, keys: &[Vec<String>]) {
    for (stream, text) in [("stdout", run.stdout()), ("stderr", run.stderr())] {
        assert!(
            !text.contains("PRIVATE KEY"),
            "{label} {stream} shows a private key:\n{text}"
        );
        for key in keys {
            for line in key {
                assert!(
                    !text.contains(line.as_str()),
                    "{label} {stream} shows the device key's content ({line}):\n{text}"
                );
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn secrets_never_reach_output_or_the_operators_disk() {
    let fleet = Fleet::start(1, "secret").await;
    let n = fleet.hosts[0].name.clone();
    let tmp = fleet.dir.path().join("tmp");
    std::fs::create_dir_all(&tmp).unwrap();
    let tmp_s = tmp.to_str().unwrap().to_string();
    let env = [("TMPDIR", tmp_s.as_str())];
    const KEY: &str = "cat /root/certificates/device-key.pem";

    let mut runs: Vec<(&str, Run)> = Vec::new();
    let first = timed_env(
        &fleet,
        "provision -vv",
        &strs(&provision_args(&fleet, &["-vv"])),
        &env,
    )
    .await;
    first.expect(0);
    let key1 = sh(&fleet, &n, KEY).await;
    assert!(key1.contains("PRIVATE KEY"), "the device has its key");
    runs.push(("provision -vv", first));
    // A forced renewal makes (and installs) a new key, in JSON with -vv.
    let renew = timed_env(
        &fleet,
        "renew, json -vv",
        &strs(&provision_args(
            &fleet,
            &["--renew-within", "100000", "--output", "json", "-vv"],
        )),
        &env,
    )
    .await;
    renew.expect(0);
    let addrs = addresses(&renew.json());
    assert!(
        addrs.contains(&format!("{n}/identity:certificate")),
        "the certificate was renewed: {addrs:?}"
    );
    let key2 = sh(&fleet, &n, KEY).await;
    assert_ne!(key1, key2, "renewal made a new key");
    runs.push(("renew json -vv", renew));
    // Without openssl on the device edgectl makes the key and streams it.
    let openssl = sh(&fleet, &n, "command -v openssl").await.trim().to_string();
    sh(&fleet, &n, &format!("mv {openssl} {openssl}.hidden")).await;
    let streamed = timed_env(
        &fleet,
        "renew, key made by edgectl, -vv",
        &strs(&provision_args(&fleet, &["--renew-within", "100000", "-vv"])),
        &env,
    )
    .await;
    sh(&fleet, &n, &format!("mv {openssl}.hidden {openssl}")).await;
    streamed.expect(0);
    assert!(
        streamed.stdout().contains("identity:certificate"),
        "{}",
        streamed.stdout()
    );
    let key3 = sh(&fleet, &n, KEY).await;
    assert!(key3 != key1 && key3 != key2, "renewal made a new key");
    runs.push(("renew without openssl -vv", streamed));
    let dry = timed_env(
        &fleet,
        "dry run -vv",
        &strs(&provision_args(
            &fleet,
            &["--dry-run", "--renew-within", "100000", "-vv"],
        )),
        &env,
    )
    .await;
    dry.expect(0);
    runs.push(("dry run -vv", dry));
    let dry_json = timed_env(
        &fleet,
        "dry run json",
        &strs(&provision_args(
            &fleet,
            &["--dry-run", "--renew-within", "100000", "--output", "json"],
        )),
        &env,
    )
    .await;
    dry_json.expect(0);
    runs.push(("dry run json", dry_json));
    let status = timed_env(&fleet, "status -vv", &["status", "--all", "-vv"], &env).await;
    status.expect(0);
    runs.push(("status -vv", status));

    let keys = [key_lines(&key1), key_lines(&key2), key_lines(&key3)];
    assert!(keys.iter().all(|k| k.len() >= 2), "{keys:?}");
    for (label, run) in &runs {
        assert_clean(label, run, &keys);
    }

    // On the operator's side only the harness's own CLI key holds one.
    let harness: Vec<PathBuf> = vec![fleet.dir.path().join("cli-key.pem")];
    let mut found = Vec::new();
    for dir in [fleet.dir.path(), fleet.stand.dir.path()] {
        files_with(dir, b"PRIVATE KEY", &mut found);
        for key in &keys {
            files_with(dir, key[0].as_bytes(), &mut found);
        }
    }
    found.sort();
    found.dedup();
    eprintln!(
        "files with a private key under {} and {}: {found:?}",
        fleet.dir.path().display(),
        fleet.stand.dir.path().display()
    );
    assert!(found.contains(&harness[0]), "the scan sees the harness's own key");
    let others: Vec<&PathBuf> = found.iter().filter(|p| !harness.contains(p)).collect();
    assert!(
        others.is_empty(),
        "private keys on the operator's disk: {others:?}"
    );
    fleet.stop().await;
}
