//! `cargo bench --profile dev --bench cloud`: a whole `cloud up` against
//! moto (through our simulator, which counts every AWS request) and one
//! real Nomad server on loopback for the acl component: API calls, writes,
//! wall time and peak memory of a first run, a no-change run and `down`;
//! then the first run's timeline, step by step and per component, to show
//! which AWS waits overlap. Prints tables; asserts only that the no-change
//! run writes nothing.

#[path = "../tests/common/mod.rs"]
mod common;

use common::whole_cloud::{command, first_up, nomad_env, LOCALHOST};
use common::{Run, Stand, Stream, Timed};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use testkit::nomad::Ports;

/// Which component a step's address belongs to (SSM records and Nomad
/// objects are written by the component that owns them; we only need the
/// big ones for the timeline).
fn component(address: &str) -> &'static str {
    let prefixes = [
        ("pca/", "pca"),
        ("rolesanywhere/", "roles-anywhere"),
        ("iam/device", "roles-anywhere"),
        ("network/", "network"),
        ("ingress/", "ingress"),
        ("servers/", "servers"),
        ("iam/server", "servers"),
        ("cognito/", "auth"),
        ("ecr/", "registry"),
        ("nomad/", "acl"),
        ("nomad:", "acl"),
    ];
    prefixes
        .iter()
        .find(|(p, _)| address.starts_with(p))
        .map_or("(ssm records)", |(_, c)| c)
}

/// Steps of a run as (address, start, end): each `created X (1.2s)` line
/// on stdout arrives when the step ends and carries its duration.
fn steps(timed: &Timed) -> Vec<(String, f64, f64)> {
    timed
        .lines
        .iter()
        .filter(|(_, s, _)| *s == Stream::Stdout)
        .filter_map(|(at, _, line)| {
            let line = line.trim();
            let (head, secs) = line.rsplit_once(" (")?;
            let secs: f64 = secs.strip_suffix("s)")?.parse().ok()?;
            let address = head.split_once(' ')?.1.to_string();
            let end = at.as_secs_f64();
            Some((address, (end - secs).max(0.0), end))
        })
        .collect()
}

struct Figures {
    wall: Duration,
    requests: usize,
    writes: usize,
    peak_mib: f64,
}

fn figures(stand: &Stand, run: &Run, wall: Duration) -> Figures {
    Figures {
        wall,
        requests: stand.sim.requests().len(),
        writes: stand.writes().len(),
        peak_mib: run.peak_kib() as f64 / 1024.0,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let stand = Stand::start().await;
    let ports = Ports::free(LOCALHOST).unwrap();
    let env = nomad_env(&ports);

    stand.sim.reset_requests();
    let t0 = Instant::now();
    let (timed, _nomad) = first_up(&stand, &["cloud", "up"], &env, ports).await;
    let first_wall = t0.elapsed();
    timed.run.expect(0);
    let first = figures(&stand, &timed.run, first_wall);

    stand.sim.reset_requests();
    let t1 = Instant::now();
    let again = common::run(command(&stand, &["cloud", "up"], &env)).await;
    let again_wall = t1.elapsed();
    again.expect(0);
    let noop = figures(&stand, &again, again_wall);
    assert_eq!(stand.writes(), Vec::<String>::new(), "the no-change run wrote");

    stand.sim.reset_requests();
    let t2 = Instant::now();
    let down = common::run(command(&stand, &["cloud", "down", "--yes"], &env)).await;
    let down_wall = t2.elapsed();
    down.expect(0);
    let down = figures(&stand, &down, down_wall);

    println!("cloud (moto + 1 real Nomad server) | wall | AWS requests | AWS writes | peak RSS");
    println!("---|---|---|---|---");
    for (what, f) in [
        ("first `cloud up`", &first),
        ("no-change `cloud up`", &noop),
        ("`cloud down`", &down),
    ] {
        println!(
            "{what} | {:.2} s | {} | {} | {:.1} MiB",
            f.wall.as_secs_f64(),
            f.requests,
            f.writes,
            f.peak_mib
        );
    }

    let steps = steps(&timed);
    let mut windows: BTreeMap<&str, (f64, f64, usize)> = BTreeMap::new();
    for (address, start, end) in &steps {
        let w = windows.entry(component(address)).or_insert((f64::MAX, 0.0, 0));
        w.0 = w.0.min(*start);
        w.1 = w.1.max(*end);
        w.2 += 1;
    }
    let mut windows: Vec<_> = windows.into_iter().collect();
    windows.sort_by(|a, b| a.1 .0.total_cmp(&b.1 .0));
    println!();
    println!("first run, per component | from | to | steps");
    println!("---|---|---|---");
    for (c, (from, to, n)) in &windows {
        println!("{c} | {from:.2} s | {to:.2} s | {n}");
    }
    let mut longest = steps.clone();
    longest.sort_by(|a, b| (b.2 - b.1).total_cmp(&(a.2 - a.1)));
    println!();
    println!("first run, longest steps | from | to | runs alongside");
    println!("---|---|---|---");
    for (address, start, end) in longest.iter().take(8) {
        let mut beside: Vec<&str> = longest
            .iter()
            .filter(|(a, s, e)| a != address && s < end && e > start && e - s > 0.2)
            .map(|(a, _, _)| component(a))
            .collect();
        beside.sort();
        beside.dedup();
        println!("{address} | {start:.2} s | {end:.2} s | {}", beside.join(", "));
    }
}
