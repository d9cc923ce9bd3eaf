//! edgectl: parse the command line, set up logging, dispatch, and turn the
//! result into an exit code and a printed error. Nothing else exits.

mod aws;
mod cli;
mod cloud;
mod config;
mod device;
mod doctor;
mod error;
#[cfg(test)]
mod fuzz_tests;
mod image;
mod job;
mod nomad;
mod nomad_env;
mod output;
mod outputs;
mod pki;
mod plan;
mod progress;
mod secret;

use anyhow::Result;
use clap::{CommandFactory, Parser};
use cli::{Cli, CloudCommand, Command, DeviceCommand, ImageCommand, JobCommand};
use error::{Exit, InvalidInput, User};
use output::{Format, Printer, Tense};
use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // `job plan` exits 255 on bad usage too, as `nomad job plan` does;
        // help and version are no errors.
        Err(e) if e.use_stderr() && job::is_job_plan(std::env::args().skip(1)) => {
            let _ = e.print();
            return ExitCode::from(255);
        }
        Err(e) => e.exit(),
    };
    let printer = Printer::new(cli.global.output, cli.global.verbose);
    init_tracing(cli.global.verbose, printer.color);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    // `job` adopts nomad's exit codes whole, errors included.
    if let Command::Job(cmd) = &cli.command {
        return runtime.block_on(run_job(&cli, cmd, printer));
    }
    match runtime.block_on(run(&cli, printer)) {
        Ok(code) => ExitCode::from(code as u8),
        Err(err) => {
            let invalid = error::is_invalid_input(&err);
            if !invalid && !error::is_user(&err) {
                tracing::debug!("unexpected error: {err:?}");
            }
            printer.error(&format!("{err:#}"), &error::hints(&err));
            ExitCode::from(if invalid { Exit::Two } else { Exit::Failed } as u8)
        }
    }
}

fn init_tracing(verbose: u8, color: bool) {
    let filter = match verbose {
        0 => "warn",
        1 => "edgectl=debug,warn",
        _ => "edgectl=trace,aws_smithy_runtime=debug,aws_config=debug,info",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(verbose > 1)
        .init();
}

async fn run(cli: &Cli, printer: Printer) -> Result<Exit> {
    match &cli.command {
        Command::Cloud(cmd) => run_cloud(cli, cmd, printer).await,
        Command::Device(cmd) => run_device(cli, cmd, printer).await,
        Command::Image(cmd) => run_image(cli, cmd, printer).await,
        Command::Job(_) => unreachable!("`job` is dispatched by main with nomad's exit codes"),
        Command::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "edgectl", &mut out);
            write_stdout(&out)?;
            Ok(Exit::Ok)
        }
        Command::Man { out_dir } => {
            man(out_dir.as_deref())?;
            Ok(Exit::Ok)
        }
        Command::Doctor {
            inventory,
            known_hosts,
            connect_timeout,
        } => run_doctor(cli, inventory, known_hosts.as_deref(), *connect_timeout, printer).await,
        Command::Env { token, client_cert } => {
            let ctx = context(cli, printer).await?;
            let settings = nomad_env::EnvSettings {
                dir: config_dir()?.join("edgectl").join(&cli.global.deployment),
                token: *token,
                client_cert: *client_cert,
            };
            let env = nomad_env::resolve(&ctx, &settings).await?;
            match printer.format {
                Format::Human => print!("{}", nomad_env::render(&env)),
                // The token never goes into JSON: it only exists for `eval`.
                Format::Json => printer.json(
                    "env",
                    &serde_json::json!({
                        "variables": env.vars.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<std::collections::BTreeMap<_, _>>(),
                        "token": env.token.as_ref().map(|_| "(sensitive)"),
                    }),
                ),
            }
            Ok(Exit::Ok)
        }
    }
}

/// Bytes to stdout; a closed pipe is no error.
fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

/// `edgectl man`: the top page to stdout, or every page into `dir`
/// (`edgectl.1`, `edgectl-cloud-up.1`, …), titles in capitals.
fn man(dir: Option<&std::path::Path>) -> Result<()> {
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let page = |c: &clap::Command| {
        let name = c.get_display_name().unwrap_or_else(|| c.get_name()).to_string();
        (
            name.clone(),
            clap_mangen::Man::new(c.clone())
                .title(name.to_uppercase())
                .source(format!("edgectl {}", env!("CARGO_PKG_VERSION"))),
        )
    };
    let Some(dir) = dir else {
        let mut out = Vec::new();
        page(&cmd).1.render(&mut out)?;
        return write_stdout(&out);
    };
    std::fs::create_dir_all(dir).map_err(|e| {
        User::new(
            format!("{}: cannot create: {e}", dir.display()),
            "pass a writable `--out-dir`",
        )
    })?;
    fn all(c: &clap::Command, into: &mut Vec<clap::Command>) {
        into.push(c.clone());
        for s in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            all(s, into);
        }
    }
    let mut cmds = Vec::new();
    all(&cmd, &mut cmds);
    for c in &cmds {
        let (name, man) = page(c);
        let path = dir.join(format!("{name}.1"));
        let mut out = Vec::new();
        man.render(&mut out)?;
        std::fs::write(&path, out).map_err(|e| {
            User::new(
                format!("{}: cannot write: {e}", path.display()),
                "pass a writable `--out-dir`",
            )
        })?;
    }
    Ok(())
}

async fn run_doctor(
    cli: &Cli,
    inventory: &std::path::Path,
    known_hosts: Option<&std::path::Path>,
    connect_timeout: u64,
    printer: Printer,
) -> Result<Exit> {
    let g = &cli.global;
    check_deployment_name(&g.deployment)?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/".into());
    let mut ssh = device::ssh::Options::default_for(&home);
    if let Some(k) = known_hosts {
        ssh.known_hosts = k.to_path_buf();
    }
    ssh.connect_timeout = std::time::Duration::from_secs(connect_timeout.max(1));
    let settings = doctor::Settings {
        aws: aws::AwsSettings {
            region: g.region.clone(),
            profile: g.profile.clone(),
            endpoint_url: g.endpoint_url.clone(),
        },
        config: g.config.clone(),
        deployment: g.deployment.clone(),
        // Read here once; nothing deeper reads the environment.
        nomad: nomad::NomadSettings::resolve(|k| std::env::var(k).ok()).map_err(|e| format!("{e:#}")),
        inventory: inventory.to_path_buf(),
        ssh,
        local_user: std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into()),
        home,
    };
    let report = doctor::run(&settings).await;
    match printer.format {
        Format::Json => printer.json("doctor", &report),
        Format::Human => {
            // Symbols only where they will be seen in colour.
            let style = if printer.color && std::io::stdout().is_terminal() {
                doctor::Style::Symbols
            } else {
                doctor::Style::Ascii
            };
            write_stdout(format!("{}\n", doctor::render(&report, style)).as_bytes())?;
        }
    }
    Ok(if report.passed() { Exit::Ok } else { Exit::Failed })
}

/// `$XDG_CONFIG_HOME`, else `~/.config`.
fn config_dir() -> Result<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(dir.into());
    }
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .ok_or_else(|| {
            User::new(
                "neither XDG_CONFIG_HOME nor HOME is set",
                "set HOME, or XDG_CONFIG_HOME to a writable directory",
            )
        })?;
    Ok(std::path::PathBuf::from(home).join(".config"))
}

fn check_deployment_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(InvalidInput(vec![format!(
            "--deployment: {name:?} must be 1-32 lower-case letters, digits or '-' (it is part of resource names)"
        )])
        .into())
    }
}

async fn context(cli: &Cli, printer: Printer) -> Result<cloud::Ctx> {
    let g = &cli.global;
    check_deployment_name(&g.deployment)?;
    let loaded = config::deployment::load(&g.config).map_err(|e| {
        InvalidInput(
            e.problems
                .into_iter()
                .map(|p| {
                    if p.starts_with(&g.config.display().to_string()) {
                        p
                    } else {
                        format!("{}: {p}", g.config.display())
                    }
                })
                .collect(),
        )
    })?;
    for w in &loaded.warnings {
        printer.warn(&format!("{}: {w}", g.config.display()));
    }
    let aws = aws::load(&aws::AwsSettings {
        region: g.region.clone(),
        profile: g.profile.clone(),
        endpoint_url: g.endpoint_url.clone(),
    })
    .await?;
    let outputs = outputs::Store::new(&aws.config, &aws.region, &g.deployment);
    // The nomad CLI's variables, read here once; nothing deeper reads them.
    let nomad = nomad::NomadSettings::resolve(|k| std::env::var(k).ok())?;
    Ok(cloud::Ctx {
        aws,
        deployment: g.deployment.clone(),
        config: loaded.deployment,
        outputs,
        nomad,
    })
}

async fn run_cloud(cli: &Cli, cmd: &CloudCommand, printer: Printer) -> Result<Exit> {
    cloud::check(&cmd.only().selection())?;
    let ctx = context(cli, printer).await?;
    let reporter: Box<dyn output::Reporter> = match printer.format {
        Format::Human => Box::new(output::Terminal::new(printer)),
        Format::Json => Box::new(output::Quiet),
    };
    match cmd {
        CloudCommand::Plan {
            detailed_exitcode,
            only,
        } => {
            let report = cloud::plan(&ctx, &only.selection()).await?;
            printer.report("cloud plan", &report, Tense::Will);
            Ok(if *detailed_exitcode && !report.planned.is_empty() {
                Exit::Two
            } else {
                Exit::Ok
            })
        }
        CloudCommand::Up { only } => {
            let report = cloud::up(&ctx, &only.selection(), reporter.as_ref()).await?;
            printer.report("cloud up", &report, Tense::Did);
            Ok(Exit::Ok)
        }
        CloudCommand::Status { only } => {
            printer.status(&cloud::status(&ctx, &only.selection()).await?);
            Ok(Exit::Ok)
        }
        CloudCommand::Down { yes, only } => {
            let deployment = ctx.deployment.clone();
            let confirm = |changes: &[plan::Change]| confirm_down(*yes, &deployment, changes.len());
            let report = cloud::down(&ctx, &only.selection(), reporter.as_ref(), confirm).await?;
            printer.report("cloud down", &report, Tense::Did);
            Ok(Exit::Ok)
        }
    }
}

/// `image publish`: the flags, the build context, docker and buildx are
/// checked before any AWS call.
async fn run_image(cli: &Cli, cmd: &ImageCommand, printer: Printer) -> Result<Exit> {
    let ImageCommand::Publish {
        name,
        tag,
        platform,
        context: dir,
        dry_run,
    } = cmd;
    let settings = image::PublishSettings {
        name: name.clone(),
        tag: tag.clone(),
        platform: platform.clone(),
        context: dir
            .clone()
            .unwrap_or_else(|| std::path::Path::new("jobs").join(name)),
        // Read here once; nothing deeper reads the environment.
        docker: std::env::var_os("EDGECTL_DOCKER")
            .filter(|d| !d.is_empty())
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| "docker".into()),
        dry_run: *dry_run,
    };
    image::validate(&settings)?;
    image::preflight(&settings).await?;
    let ctx = context(cli, printer).await?;
    let report = image::publish(&ctx, &settings, &image::StderrProgress).await?;
    match printer.format {
        Format::Human if report.dry_run => {
            println!("Would run:");
            for c in &report.commands {
                println!("  {c}");
            }
        }
        Format::Human => println!("Pushed {} ({})", report.image, report.platform),
        Format::Json => printer.json("image publish", &report),
    }
    Ok(Exit::Ok)
}

fn device_settings(
    cli: &Cli,
    select: &cli::DeviceSelect,
    ssh: &cli::SshFlags,
    parallel: u16,
    retry_failed: bool,
) -> Result<device::Settings> {
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(std::path::PathBuf::from)
        .ok_or_else(|| {
            User::new(
                "HOME is not set",
                "set HOME (edgectl reads ~/.ssh and keeps its state there)",
            )
        })?;
    let selection = match (&select.names[..], &select.group, select.all) {
        (_, _, true) => config::inventory::Selection::All,
        (_, Some(g), _) => config::inventory::Selection::Group(g.clone()),
        ([], None, false) if !retry_failed => {
            return Err(InvalidInput(vec![
                "device: name the devices (`pi-01 pi-02`), or use `--group G`, `--all` or `--retry-failed`"
                    .into(),
            ])
            .into())
        }
        (names, None, false) => config::inventory::Selection::Names(names.to_vec()),
    };
    let mut ssh_opts = device::ssh::Options::default_for(&home);
    if let Some(k) = &ssh.known_hosts {
        ssh_opts.known_hosts = k.clone();
    }
    ssh_opts.accept_new_host_keys = ssh.accept_new_host_keys;
    ssh_opts.connect_timeout = std::time::Duration::from_secs(ssh.connect_timeout.max(1));
    let state_home = std::env::var_os("XDG_STATE_HOME")
        .filter(|d| !d.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| home.join(".local/state"));
    Ok(device::Settings {
        inventory: select.inventory.clone(),
        selection,
        retry_failed,
        parallel: parallel as usize,
        ssh: ssh_opts,
        local_user: std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".into()),
        home,
        state_dir: state_home.join("edgectl").join(&cli.global.deployment),
    })
}

async fn run_device(cli: &Cli, cmd: &DeviceCommand, printer: Printer) -> Result<Exit> {
    match cmd {
        DeviceCommand::Provision {
            select,
            ssh,
            dry_run,
            detailed_exitcode,
            artifacts,
            parallel,
            retry_failed,
            nomad_servers,
            renew_within,
        } => {
            let s = device_settings(cli, select, ssh, *parallel, *retry_failed)?;
            // The inventory before AWS: bad input is refused offline.
            let hosts = device::select(&s)?;
            let ctx = context(cli, printer).await?;
            let p = device::ProvisionSettings {
                dry_run: *dry_run,
                artifacts: artifacts.clone(),
                nomad_servers: nomad_servers.clone(),
                renew_within_days: *renew_within as i64,
            };
            let progress = std::sync::Arc::new(output::HostLines::new(printer));
            let report = device::provision(&ctx, &s, hosts, &p, progress).await?;
            printer.fleet("device provision", &report);
            Ok(if !report.failed().is_empty() {
                Exit::Failed
            } else if *detailed_exitcode && report.changed() {
                Exit::Two
            } else {
                Exit::Ok
            })
        }
        DeviceCommand::Status {
            select,
            ssh,
            parallel,
        } => {
            let s = device_settings(cli, select, ssh, *parallel, false)?;
            let hosts = device::select(&s)?;
            let ctx = context(cli, printer).await?;
            let report = device::status(&ctx, &s, hosts).await?;
            printer.device_status(&report);
            Ok(if report.iter().all(|r| r.healthy()) {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
        DeviceCommand::Deprovision { select, ssh, yes } => {
            let s = device_settings(cli, select, ssh, 16, false)?;
            let hosts = device::select(&s)?;
            confirm_deprovision(*yes, &hosts)?;
            let ctx = context(cli, printer).await?;
            let progress = std::sync::Arc::new(output::HostLines::new(printer));
            let report = device::deprovision(&ctx, &s, hosts, progress).await?;
            printer.fleet("device deprovision", &report);
            Ok(if report.failed().is_empty() {
                Exit::Ok
            } else {
                Exit::Failed
            })
        }
    }
}

fn confirm_deprovision(yes: bool, hosts: &[config::inventory::Host]) -> Result<()> {
    if yes {
        return Ok(());
    }
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    if !std::io::stdin().is_terminal() {
        return Err(User::new(
            format!(
                "refusing to deprovision {} without confirmation",
                names.join(", ")
            ),
            "pass `--yes` to confirm non-interactively",
        )
        .into());
    }
    eprint!(
        "Deprovision {} (stop Nomad, remove its files and key, revoke the certificate)? [y/N] ",
        names.join(", ")
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(User::new("deprovision not confirmed", "answer `y`, or pass `--yes`").into())
    }
}

/// `down` deletes a CA that devices trust: ask, unless told not to.
fn confirm_down(yes: bool, deployment: &str, n: usize) -> Result<bool> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(User::new(
            format!("refusing to delete {n} resources of deployment `{deployment}` without confirmation"),
            "pass `--yes` to confirm non-interactively",
        )
        .into());
    }
    eprint!(
        "Delete {n} resources of deployment `{deployment}`? A deleted private CA stays restorable (and billed) for 7 days.\nType the deployment name to confirm: "
    );
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(answer.trim() == deployment)
}

/// `edgectl job …`, with nomad's exit codes: `job plan` exits 255 on any
/// error, `job run` 1 (2 is its placement failure); `status`/`stop` keep
/// the general table (2 invalid input).
async fn run_job(cli: &Cli, cmd: &JobCommand, printer: Printer) -> ExitCode {
    match job_command(cli, cmd, printer).await {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            let invalid = error::is_invalid_input(&err);
            if !invalid && !error::is_user(&err) {
                tracing::debug!("unexpected error: {err:?}");
            }
            printer.error(&format!("{err:#}"), &error::hints(&err));
            ExitCode::from(match cmd {
                JobCommand::Plan { .. } => 255,
                JobCommand::Run { .. } => Exit::Failed as u8,
                _ if invalid => Exit::Two as u8,
                _ => Exit::Failed as u8,
            })
        }
    }
}

fn job_source(s: &cli::JobSource) -> job::SourceSettings {
    job::SourceSettings {
        name: s.name.clone(),
        jobs_dir: s.jobs_dir.clone(),
        vars: s.vars.clone(),
        var_files: s.var_files.clone(),
        tag: s.tag.clone(),
    }
}

async fn job_command(cli: &Cli, cmd: &JobCommand, printer: Printer) -> Result<u8> {
    // A missing job file is found before any AWS call.
    let source = match cmd {
        JobCommand::Plan { source } | JobCommand::Run { source, .. } => {
            let s = job_source(source);
            job::locate(&s.name, &s.jobs_dir)?;
            Some(s)
        }
        _ => None,
    };
    let ctx = context(cli, printer).await?;
    match (cmd, source) {
        (JobCommand::Plan { .. }, Some(s)) => {
            let report = job::plan::plan(&ctx, &s).await?;
            printer.job_plan(&report);
            Ok(u8::from(report.changes))
        }
        (
            JobCommand::Run {
                check_index,
                detach,
                timeout,
                ..
            },
            Some(s),
        ) => {
            let settings = job::run::RunSettings {
                check_index: *check_index,
                detach: *detach,
                timeout: *timeout,
            };
            let report = job::run::run(&ctx, &s, &settings, &output::JobLines::new(printer)).await?;
            printer.job_run(&report);
            Ok(report.outcome.exit_code())
        }
        (JobCommand::Status { name }, _) => {
            printer.job_status(&job::status::status(&ctx, name).await?);
            Ok(0)
        }
        (JobCommand::Stop { name, purge }, _) => {
            printer.job_stop(&job::status::stop(&ctx, name, *purge).await?);
            Ok(0)
        }
        _ => unreachable!("plan and run carry their source"),
    }
}
