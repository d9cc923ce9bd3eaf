//! `rolesanywhere-sim --listen 127.0.0.1:PORT --upstream http://127.0.0.1:MOTO_PORT`
//!
//! Prints the URL it serves on (`http://127.0.0.1:PORT`, useful with port 0)
//! as the first line on stdout, then serves until killed.

use std::io::Write;
use std::net::SocketAddr;

use anyhow::{bail, Context};

const USAGE: &str =
    "usage: rolesanywhere-sim [--listen 127.0.0.1:PORT] --upstream http://127.0.0.1:MOTO_PORT";

fn parse_args() -> anyhow::Result<(SocketAddr, String)> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse().expect("valid address");
    let mut upstream = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => {
                let v = args.next().context("--listen needs an address")?;
                listen = v
                    .parse()
                    .with_context(|| format!("--listen {v}: not an IP:PORT"))?;
            }
            "--upstream" => upstream = Some(args.next().context("--upstream needs a URL")?),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other}\n{USAGE}"),
        }
    }
    let upstream = upstream.context(USAGE)?;
    if !upstream.starts_with("http://") {
        bail!("--upstream must be an http:// URL (moto), got {upstream}");
    }
    Ok((listen, upstream))
}

#[tokio::main]
async fn main() {
    let result = async {
        let (listen, upstream) = parse_args()?;
        let sim = rolesanywhere_sim::start(listen, upstream).await?;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", sim.url)?;
        out.flush()?;
        drop(out);
        // Serve until killed: the handle stops the server when dropped.
        std::future::pending::<()>().await;
        drop(sim);
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = result {
        eprintln!("rolesanywhere-sim: {e:#}");
        std::process::exit(1);
    }
}
