//! `cargo bench --profile dev --bench job [-- ROUNDS]`: what `edgectl job`
//! adds on top of Nomad's own waits. On one provisioned test host and a
//! real Nomad server, each round changes the heartbeat job once through
//! `edgectl job run` and once through the real `nomad job run` (same file,
//! same cluster, same deployment rules), then the same with `-detach` and
//! `job plan`. The difference of the medians is edgectl's overhead (SSM
//! reads and records, its parse/plan/register calls, its monitoring).
//! Prints a table; asserts only that every run succeeds.

#[path = "../tests/common/mod.rs"]
mod common;

use common::devices::{Fleet, REGION};
use common::Run;
use std::time::{Duration, Instant};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The real `nomad` CLI against the fleet's server, as the management
/// token, from the repository root (so `jobs/` is the same).
async fn nomad(fleet: &Fleet, args: &[&str]) -> Run {
    let dir = fleet.dir.path();
    let mut cmd = tokio::process::Command::new(testkit::tools::nomad_bin());
    cmd.args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("NOMAD_ADDR", &fleet.server.http_url)
        .env("NOMAD_CACERT", dir.join("ca.pem"))
        .env("NOMAD_CLIENT_CERT", dir.join("cli.pem"))
        .env("NOMAD_CLIENT_KEY", dir.join("cli-key.pem"))
        .env("NOMAD_TOKEN", &fleet.token)
        .env("NOMAD_TLS_SERVER_NAME", format!("server.{REGION}.nomad"));
    common::run(cmd).await
}

async fn timed<F: std::future::Future<Output = Run>>(f: F, code: i32) -> (Duration, Run) {
    let t = Instant::now();
    let run = f.await;
    let wall = t.elapsed();
    run.expect(code);
    (wall, run)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let rounds: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(5);
    let fleet = Fleet::start(1, "jobbench").await;
    let art = fleet.artifacts();
    fleet
        .device(&["provision", "--all", "--artifacts", art.to_str().unwrap()])
        .await
        .expect(0);
    let name = fleet.hosts[0].name.clone();
    fleet.wait_ready(&[name.as_str()]).await;
    // The first deployment of the job (and the files nomad reads below).
    fleet
        .edgectl_env(&["job", "run", "heartbeat", "--var", "message=start"], &[])
        .await
        .expect(0);

    let file = "jobs/heartbeat.nomad.hcl";
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>, u64)> = Vec::new();
    // edgectl's own account (--output json `timings`): total minus the
    // time inside Nomad's blocking queries and requested sleeps.
    let mut own: Vec<(&str, Vec<f64>)> = Vec::new();
    for (what, detach) in [("job run (until healthy)", false), ("job run -detach", true)] {
        let (mut ours, mut theirs, mut peak, mut overhead) = (Vec::new(), Vec::new(), 0, Vec::new());
        for i in 0..rounds {
            let e = format!("message=edgectl-{detach}-{i}");
            let mut args = vec!["--output", "json", "job", "run", "heartbeat", "--var", e.as_str()];
            if detach {
                args.insert(4, "--detach");
            }
            let (wall, run) = timed(fleet.edgectl_env(&args, &[]), 0).await;
            ours.push(wall.as_secs_f64());
            peak = peak.max(run.peak_kib());
            let t = &run.json()["timings"];
            overhead.push(t["overhead_ms"].as_f64().expect("timings.overhead_ms") / 1000.0);
            let n = format!("message=nomad-{detach}-{i}");
            let mut args = vec!["job", "run", "-var", n.as_str()];
            if detach {
                args.insert(2, "-detach");
            }
            args.push(file);
            let (wall, _) = timed(nomad(&fleet, &args), 0).await;
            theirs.push(wall.as_secs_f64());
        }
        rows.push((what, ours, theirs, peak));
        own.push((what, overhead));
    }
    let (mut ours, mut theirs, mut peak) = (Vec::new(), Vec::new(), 0);
    for i in 0..rounds {
        let v = format!("message=plan-{i}");
        let (wall, run) = timed(
            fleet.edgectl_env(&["job", "plan", "heartbeat", "--var", &v], &[]),
            1,
        )
        .await;
        ours.push(wall.as_secs_f64());
        peak = peak.max(run.peak_kib());
        let (wall, _) = timed(nomad(&fleet, &["job", "plan", "-var", &v, file]), 1).await;
        theirs.push(wall.as_secs_f64());
    }
    rows.push(("job plan (a change)", ours, theirs, peak));

    println!("{rounds} rounds, medians | edgectl | nomad CLI | edgectl overhead | edgectl peak RSS");
    println!("---|---|---|---|---");
    for (what, ours, theirs, peak) in rows {
        let (o, t) = (median(ours), median(theirs));
        println!(
            "{what} | {o:.2} s | {t:.2} s | {:+.2} s | {:.1} MiB",
            o - t,
            peak as f64 / 1024.0
        );
    }
    println!();
    println!("edgectl's own time (total minus Nomad's waits), median | seconds");
    println!("---|---");
    for (what, overhead) in own {
        println!("{what} | {:.3} s", median(overhead));
    }
    fleet.stop().await;
}
