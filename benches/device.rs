//! `cargo bench --bench device [-- 1 8 16]`: wall time and SSH execs of
//! `edgectl device provision` on N real test hosts (systemd-nspawn, sshd)
//! joining a real Nomad server: the first run, a no-change run, and the
//! time from the first run's start to every node `ready`. Prints a table;
//! asserts nothing about time.

#[path = "../tests/common/mod.rs"]
mod common;

use common::devices::Fleet;
use std::time::{Duration, Instant};

/// (wall, mean SSH execs per host, max per-host time) of one run.
fn figures(run: &common::Run, wall: Duration) -> (Duration, f64, f64) {
    let out = run.stdout();
    let rows: Vec<(f64, u32)> = out
        .lines()
        .skip_while(|l| !l.starts_with("HOST"))
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some((
                f.get(3)?.trim_end_matches('s').parse().ok()?,
                f.get(4)?.parse().ok()?,
            ))
        })
        .collect();
    let execs = rows.iter().map(|r| r.1 as f64).sum::<f64>() / rows.len().max(1) as f64;
    let slowest = rows.iter().map(|r| r.0).fold(0.0, f64::max);
    (wall, execs, slowest)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 8] } else { sizes };
    println!(
        "hosts | first run | SSH execs/host | to all ready | no-change run | SSH execs/host | per 8 hosts | peak RSS first / no-change"
    );
    println!("---|---|---|---|---|---|---|---");
    for n in sizes {
        let fleet = Fleet::start(n, &format!("bench{n}x")).await;
        let names: Vec<String> = fleet.hosts.iter().map(|h| h.name.clone()).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let art = fleet.artifacts();
        let args = ["provision", "--all", "--artifacts", art.to_str().unwrap()];
        let t0 = Instant::now();
        let first = fleet.device(&args).await;
        let first_wall = t0.elapsed();
        first.expect(0);
        fleet.wait_ready(&refs).await;
        let ready = t0.elapsed();
        // The second run fills the devices' checksum cache; the third is
        // the steady no-change run.
        fleet.device(&args).await.expect(0);
        let t1 = Instant::now();
        let again = fleet.device(&args).await;
        let again_wall = t1.elapsed();
        again.expect(0);
        let (fw, fe, _) = figures(&first, first_wall);
        let (aw, ae, _) = figures(&again, again_wall);
        println!(
            "{n} | {:.2} s | {fe:.1} | {:.2} s | {:.2} s | {ae:.1} | {:.2} s | {:.1} / {:.1} MiB",
            fw.as_secs_f64(),
            ready.as_secs_f64(),
            aw.as_secs_f64(),
            aw.as_secs_f64() * 8.0 / n as f64,
            first.peak_kib() as f64 / 1024.0,
            again.peak_kib() as f64 / 1024.0
        );
        fleet.stop().await;
    }
}
