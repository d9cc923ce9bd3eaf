//! `cloud up` against an AWS that fails like a busy one: the simulator
//! (between edgectl and moto) injects throttling, 429, 503 and dropped
//! connections at a set rate, before or after forwarding; and `cloud up`
//! killed with SIGKILL after the Nth request, 20 times. Every test ends
//! with a run that changes nothing, exactly the resources of a fault-free
//! deployment (no twins) and a `down` that leaves nothing.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{leftovers, Stand};
use rolesanywhere_sim::{FaultKind, FaultPhase, FaultPlan};

/// Every component that needs no Nomad (`acl` does).
const ONLY: &str = "--only=pca,roles-anywhere,network,ingress,servers,auth,registry";

const ALL_KINDS: [FaultKind; 4] = [
    FaultKind::Throttle,
    FaultKind::TooManyRequests,
    FaultKind::Unavailable,
    FaultKind::Drop,
];

/// What a fault-free `cloud up --only ONLY` leaves in the account, by kind
/// (the `leftovers` sweep grouped by `kind`).
const EXPECTED: &[(&str, usize)] = &[
    ("acm-pca certificate-authority", 1),
    ("cognito user pool", 1),
    ("ec2 eip", 1),
    ("ec2 igw", 1),
    ("ec2 instance", 3),
    ("ec2 nat gateway", 1),
    ("ec2 route table", 2),
    ("ec2 security group", 1),
    ("ec2 subnet", 6),
    ("ec2 vpc", 1),
    ("ecr repository iot-publish", 1),
    ("elbv2 load balancer edgectl-default", 1),
    ("elbv2 target group edgectl-default-4646", 1),
    ("elbv2 target group edgectl-default-4647", 1),
    ("iam instance profile edgectl-default-server", 1),
    ("iam role edgectl-default-device", 1),
    ("iam role edgectl-default-server", 1),
    ("rolesanywhere profile", 1),
    ("rolesanywhere trust-anchor", 1),
    ("ssm /infrastructure/certificates/ca-caCertificate", 1),
    (
        "ssm /infrastructure/certificates/nomad-cli-eu-west-1-Certificate",
        1,
    ),
    (
        "ssm /infrastructure/certificates/nomad-cli-eu-west-1-PrivateKey",
        1,
    ),
    (
        "ssm /infrastructure/certificates/nomad-server-eu-west-1-Certificate",
        1,
    ),
    (
        "ssm /infrastructure/certificates/nomad-server-eu-west-1-PrivateKey",
        1,
    ),
    ("ssm /infrastructure/cognito/client_id", 1),
    ("ssm /infrastructure/cognito/client_secret", 1),
    ("ssm /infrastructure/cognito/domain", 1),
    ("ssm /infrastructure/cognito/user_pool_id", 1),
    ("ssm /infrastructure/ecr/iot-publish/uri", 1),
    ("ssm /infrastructure/nomad/endpoint", 1),
    ("ssm /infrastructure/pca/arn", 1),
    ("ssm /infrastructure/profile/arn", 1),
    ("ssm /infrastructure/role/arn", 1),
    ("ssm /infrastructure/roles_anywhere/credential_process", 1),
    ("ssm /infrastructure/trust_anchor/arn", 1),
];

/// A sweep line's kind: named resources are their own kind (a twin would
/// be a second line), generated ids are dropped (a twin counts 2).
fn kind(line: &str) -> String {
    if let Some(arn) = line.strip_prefix("rolesanywhere ") {
        let resource = arn.rsplit(':').next().unwrap_or(arn);
        return format!("rolesanywhere {}", resource.split('/').next().unwrap_or(resource));
    }
    if line.starts_with("acm-pca ") {
        return "acm-pca certificate-authority".into();
    }
    if line.starts_with("ec2 ") || line.starts_with("cognito ") {
        return line.rsplit_once(' ').map_or(line, |(k, _)| k).to_string();
    }
    line.to_string()
}

/// The `leftovers` sweep by kind; SSM listed here instead, page by page
/// (the sweep reads only GetParametersByPath's first page: 10 names).
async fn counts(stand: &Stand) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for line in leftovers(stand, "default").await {
        if !line.starts_with("ssm ") {
            *out.entry(kind(&line)).or_default() += 1;
        }
    }
    let ssm = aws_sdk_ssm::Client::new(&stand.sdk().await);
    let mut pages = ssm
        .get_parameters_by_path()
        .path("/infrastructure")
        .recursive(true)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        for p in page.unwrap().parameters.unwrap_or_default() {
            *out.entry(format!("ssm {}", p.name.unwrap_or_default()))
                .or_default() += 1;
        }
    }
    out
}

/// Elastic IPs and NAT gateways as moto has them, for a failure message.
async fn network_dump(stand: &Stand) -> String {
    let ec2 = aws_sdk_ec2::Client::new(&stand.sdk().await);
    let eips = ec2.describe_addresses().send().await.unwrap();
    let nats = ec2.describe_nat_gateways().send().await.unwrap();
    format!("{:#?}\n{:#?}", eips.addresses(), nats.nat_gateways())
}

fn expected() -> BTreeMap<String, usize> {
    EXPECTED.iter().map(|(k, n)| (k.to_string(), *n)).collect()
}

/// Faults off: a further `up` changes nothing and writes nothing, and the
/// account holds exactly the fault-free resources. Returns how many.
async fn assert_converged(stand: &Stand, what: &str) -> usize {
    stand.sim.clear_faults();
    stand.sim.reset_requests();
    let again = stand.edgectl(&["cloud", "up", ONLY]).await;
    again.expect(0);
    assert!(
        again.stdout().contains("no changes"),
        "{what}:\n{}",
        again.stdout()
    );
    assert_eq!(
        stand.writes(),
        Vec::<String>::new(),
        "{what}: the converged run wrote"
    );
    let got = counts(stand).await;
    if got != expected() {
        eprintln!("{what}: the account's network:\n{}", network_dump(stand).await);
    }
    assert_eq!(got, expected(), "{what}: twins or missing resources");
    got.values().sum()
}

async fn down_leaves_nothing(stand: &Stand) {
    stand.sim.clear_faults();
    stand.edgectl(&["cloud", "down", ONLY, "--yes"]).await.expect(0);
    let left = leftovers(stand, "default").await;
    assert!(left.is_empty(), "orphans after down: {left:#?}");
}

/// Runs `up` until it exits 0 (at most `max` runs); how many it took.
async fn up_until_converged(stand: &Stand, max: usize) -> usize {
    for run in 1..=max {
        let r = stand.edgectl(&["cloud", "up", ONLY]).await;
        if r.code() == 0 {
            return run;
        }
        let err = r.stderr();
        if std::env::var_os("FAULTS_DEBUG").is_some() {
            for q in stand.sim.requests() {
                eprintln!("  {} {}", q.action(), q.status);
            }
            for f in stand.sim.injected_faults() {
                eprintln!("  F {f:?}");
            }
        }
        eprintln!(
            "run {run} exited {}: {}",
            r.code(),
            err.lines()
                .filter(|l| l.contains("error"))
                .take(3)
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    panic!("cloud up did not converge in {max} runs");
}

fn report(
    stand: &Stand,
    title: &str,
    rate: f64,
    requests: usize,
    wall: Duration,
    runs: usize,
    resources: usize,
) {
    let faults = stand.sim.injected_faults();
    let mut by: BTreeMap<String, usize> = BTreeMap::new();
    for f in &faults {
        *by.entry(format!("{:?}/{:?}", f.kind, f.phase)).or_default() += 1;
    }
    eprintln!("┌─ {title}");
    eprintln!("│ fault rate        {:.0}%", rate * 100.0);
    eprintln!("│ requests          {requests}");
    eprintln!("│ injected faults   {}", faults.len());
    for (k, n) in &by {
        eprintln!("│   {k:<24} {n}");
    }
    eprintln!("│ retries seen      {}", stand.sim.retries_seen());
    eprintln!("│ runs to converge  {runs}");
    eprintln!("│ wall time         {:.1} s", wall.as_secs_f64());
    eprintln!("│ resources counted {resources} (each kind as a fault-free up leaves it)");
    eprintln!("└─");
}

/// 25% of requests fail before reaching moto, at most twice per SDK call:
/// the SDK's own retries (3 attempts, edgectl keeps the default) absorb
/// every fault, so the FIRST `up` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_converges_in_one_run_when_the_sdk_retries_absorb_the_faults() {
    let stand = Stand::start().await;
    let rate = 0.25;
    stand.sim.inject_faults(FaultPlan {
        seed: 0x5eed_0001,
        rate,
        kinds: ALL_KINDS.to_vec(),
        phases: vec![FaultPhase::Before],
        max_per_invocation: Some(2),
    });
    let started = Instant::now();
    let runs = up_until_converged(&stand, 1).await;
    let wall = started.elapsed();
    let requests = stand.sim.seen();
    let faults = stand.sim.injected_faults();
    assert!(
        faults.len() * 10 >= requests,
        "too few faults to mean anything: {}",
        faults.len()
    );
    for kind in ALL_KINDS {
        assert!(faults.iter().any(|f| f.kind == kind), "no {kind:?} injected");
    }
    assert!(stand.sim.retries_seen() >= faults.len(), "every fault is retried");
    let resources = assert_converged(&stand, "after faults").await;
    report(
        &stand,
        "before-forwarding faults, ≤2 per SDK call",
        rate,
        requests,
        wall,
        runs,
        resources,
    );
    down_leaves_nothing(&stand).await;
}

/// 25% of requests fail, half of them AFTER moto acted (the write took
/// effect, its answer is lost, the SDK repeats it), at most twice per SDK
/// call so no call fails for lack of attempts: a repeated create meets its
/// own first attempt (EntityAlreadyExists, InvalidGroup.Duplicate,
/// RouteAlreadyExists, ...). `up` may fail on that, but re-runs converge
/// without twins. (Uncapped, 25% makes one call in 64 fail all three
/// attempts; a run of ~150 calls then rarely succeeds at all.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_converges_without_twins_when_answers_of_writes_are_lost() {
    let stand = Stand::start().await;
    let rate = 0.25;
    stand.sim.inject_faults(FaultPlan {
        seed: 0x5eed_0002,
        rate,
        kinds: ALL_KINDS.to_vec(),
        phases: vec![FaultPhase::Before, FaultPhase::After],
        max_per_invocation: Some(2),
    });
    let started = Instant::now();
    let runs = up_until_converged(&stand, 6).await;
    let wall = started.elapsed();
    let requests = stand.sim.seen();
    assert!(
        stand
            .sim
            .injected_faults()
            .iter()
            .any(|f| f.phase == FaultPhase::After),
        "no after-forwarding fault"
    );
    // A repeated non-idempotent create can leave a twin that the run
    // exits 0 with; the NEXT `up` sees it (by tag/name) and removes it.
    // Seen: Cognito CreateUserPool / CreateUserPoolClient (no idempotency
    // token on AWS either: a real gap), ELBv2 CreateLoadBalancer (AWS
    // returns the existing LB for the same name, moto makes a second) and
    // RunInstances (moto ignores ClientToken). Faults off, re-run until
    // "no changes": the only changes allowed are removing twins and
    // re-creating what hung off a removed twin (listeners).
    stand.sim.clear_faults();
    let mut repairs = Vec::new();
    for _ in 0..3 {
        let repair = stand.edgectl(&["cloud", "up", ONLY]).await;
        repair.expect(0);
        let text = repair.stdout();
        if text.contains("no changes") {
            break;
        }
        for line in text
            .lines()
            .filter(|l| l.starts_with("  - ") || l.starts_with("  + "))
        {
            let twin = line.starts_with("  - ")
                && (line.contains("twin") || line.contains("duplicate") || line.contains("second instance"));
            let rehung = line.starts_with("  + ingress/listener:") && line.ends_with("(missing)");
            assert!(
                twin || rehung,
                "after faults, an unexpected repair: {line}\n{text}"
            );
            repairs.push(line.trim().to_string());
        }
    }
    let resources = assert_converged(&stand, "after faults").await;
    report(
        &stand,
        "before+after faults, ≤2 per SDK call",
        rate,
        requests,
        wall,
        runs,
        resources,
    );
    eprintln!(
        "repairs by the next up (twins a successful run left): {}",
        repairs.len()
    );
    for r in &repairs {
        eprintln!("  {r}");
    }
    down_leaves_nothing(&stand).await;
}

/// splitmix64, for the kill points.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// `cloud up` from an empty account, killed with SIGKILL after its Nth
/// request (N seeded, spread over a fault-free run's request count; the
/// requests past N are held, then dropped unforwarded), then re-run: 20
/// times, each from an empty account. Every re-run converges with exactly
/// one of everything, and `down` leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_killed_at_20_points_converges_on_rerun_without_twins_or_orphans() {
    let stand = Stand::start().await;
    let started = Instant::now();
    // One fault-free run measures the request count (and checks EXPECTED).
    let before = stand.sim.seen();
    stand.edgectl(&["cloud", "up", ONLY]).await.expect(0);
    let full = stand.sim.seen() - before;
    assert_converged(&stand, "fault-free baseline").await;
    down_leaves_nothing(&stand).await;

    let mut rows = Vec::new();
    // EDGECTL_KILL_SEEDS="3 12" replays chosen seeds (same kill points).
    let seeds: Vec<u64> = match std::env::var("EDGECTL_KILL_SEEDS") {
        Ok(list) => list.split_whitespace().map(|s| s.parse().unwrap()).collect(),
        Err(_) => (0..20).collect(),
    };
    for seed in seeds {
        // Spread: one point in each twentieth of the run, seeded within it.
        let lo = full * seed as usize / 20;
        let width = (full / 20).max(1);
        let n = 1 + lo + (mix(seed) as usize % width);
        stand.sim.reset_requests();
        stand.sim.freeze_after(n);
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_edgectl"));
        cmd.arg("--config")
            .arg(stand.config_path())
            .args(["cloud", "up", ONLY]);
        stand.env(&mut cmd);
        let mut child = cmd
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut exited = None;
        while stand.sim.held() == 0 {
            assert!(
                Instant::now() < deadline,
                "seed {seed}: never reached request {n}"
            );
            if let Some(status) = child.try_wait().unwrap() {
                exited = Some(status);
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        child.kill().await.unwrap(); // SIGKILL
        let _ = child.wait().await;
        stand.sim.unfreeze_discarding();
        // Dropped: what was held, and what the dead process had sent that
        // the simulator reads only now (until nothing new came for 300 ms).
        let settle = Instant::now() + Duration::from_secs(10);
        let mut last = (stand.sim.seen(), Instant::now());
        while stand.sim.held() > 0 || last.1.elapsed() < Duration::from_millis(300) {
            assert!(Instant::now() < settle, "seed {seed}: held requests never ended");
            tokio::time::sleep(Duration::from_millis(5)).await;
            if stand.sim.seen() != last.0 {
                last = (stand.sim.seen(), Instant::now());
            }
        }
        stand.sim.resume();
        let killed = stand.writes();
        let killed_writes = killed.len();
        stand.sim.reset_requests();
        let rerun = stand.edgectl(&["cloud", "up", ONLY]).await;
        rerun.expect(0);
        let rerun_writes = stand.writes().len();
        if std::env::var_os("EDGECTL_KILL_SEEDS").is_some() {
            eprintln!("seed {seed}: writes before the kill: {killed:?}");
            eprintln!("seed {seed}: re-run:\n{}", rerun.stdout());
        }
        let last: Vec<&String> = killed.iter().rev().take(8).rev().collect();
        let what = format!("seed {seed}, killed after request {n} (last writes before: {last:?})");
        let resources = assert_converged(&stand, &what).await;
        rows.push((seed, n, exited.is_some(), killed_writes, rerun_writes, resources));
        down_leaves_nothing(&stand).await;
    }
    eprintln!("┌─ kill -9 after request N of {full} (fault-free run), then re-run");
    eprintln!("│ seed    N  ended-first  writes-before-kill  rerun-writes  resources");
    for (seed, n, ended, before, rerun, resources) in &rows {
        eprintln!("│ {seed:>4} {n:>4}  {ended:>11}  {before:>18}  {rerun:>12}  {resources:>9}");
    }
    eprintln!("│ wall time {:.1} s", started.elapsed().as_secs_f64());
    eprintln!("└─");
    assert!(rows.iter().all(|r| !r.2), "every kill landed mid-run");
}
