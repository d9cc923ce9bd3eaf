//! `edgectl device deprovision`: the reverse of provision. On the device:
//! stop and disable nomad, remove edgectl's files and the key. In the
//! cloud: revoke the certificate, purge the node, delete the SSM record.
//! Each part that can be done is done even when another fails; a re-run
//! finishes the rest.

use super::{
    fleet, identity, node, ssh, target, FleetReport, HostReport, Outcome, Progress, Settings, DEVICE_FIELDS,
};
use crate::cloud::Ctx;
use crate::config::inventory::Host;
use crate::outputs;
use crate::plan::{Action, Change};
use anyhow::{Context, Result};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Files edgectl put on a device (users, groups and packages stay: other
/// software may use them).
const REMOVE: &[&str] = &[
    node::UNIT_FILE,
    node::CONFIG_FILE,
    node::CREDENTIALS_FILE,
    node::DOCKER_CONFIG,
    node::NOMAD_BIN,
    node::SIGNING_HELPER_BIN,
    identity::KEY_PATH,
    identity::NEW_KEY_PATH,
    identity::CERT_PATH,
    identity::CA_PATH,
    identity::AMAZON_ROOT_PATH,
];

fn device_script() -> String {
    let files: Vec<String> = REMOVE.iter().map(|f| f.to_string()).collect();
    format!(
        "set -e\nif [ -f {unit} ] || systemctl is-active --quiet {name}; then\n  \
         systemctl disable --now {name} >/dev/null 2>&1 || true\n  \
         # KillMode=process leaves tasks running: end them with the agent.\n  \
         systemctl kill -s KILL {name} >/dev/null 2>&1 || true\n  echo stopped\nfi\n\
         removed=0\nfor f in {files}; do\n  if [ -e \"$f\" ]; then rm -f \"$f\"; removed=$((removed+1)); fi\ndone\n\
         if [ -d /opt/nomad ]; then\n  grep -o ' /opt/nomad/[^ ]*' /proc/mounts | sort -r | while read -r m; do umount -l \"$m\" || true; done\n  \
         rm -rf /opt/nomad; removed=$((removed+1))\nfi\n\
         rm -rf /var/lib/edgectl\nsystemctl daemon-reload\n\
         # Stopped by SIGTERM, nomad exits 1: leave no `failed` unit behind.\n\
         systemctl reset-failed {name} >/dev/null 2>&1 || true\nsync\necho \"removed $removed\"\n",
        unit = node::UNIT_FILE,
        name = node::UNIT_NAME,
        files = files.join(" "),
    )
}

pub async fn deprovision(
    ctx: &Ctx,
    s: &Settings,
    hosts: Vec<Host>,
    progress: Arc<dyn Progress>,
) -> Result<FleetReport> {
    let names: Vec<String> = hosts
        .iter()
        .flat_map(|h| DEVICE_FIELDS.iter().map(|f| outputs::device(&h.name, f)))
        .chain([outputs::PCA_ARN.to_string()])
        .collect();
    let params = Arc::new(
        ctx.outputs
            .read(&names.iter().map(String::as_str).collect::<Vec<_>>())
            .await?,
    );
    let nomad = Arc::new(super::status::nomad(ctx).await.ok().flatten());
    let pca = aws_sdk_acmpca::Client::new(&ctx.aws.config);
    let store = ctx.outputs.clone();
    let opts = s.ssh.clone();
    let hosts = fleet(hosts, s.parallel, move |host| {
        let (params, nomad, pca, store, opts, progress) = (
            params.clone(),
            nomad.clone(),
            pca.clone(),
            store.clone(),
            opts.clone(),
            progress.clone(),
        );
        async move {
            let started = Instant::now();
            let mut changes = Vec::new();
            let mut errors = Vec::new();
            let mut trips = 0;
            let mut device_serial = None;
            // The device first: it may be the only place the serial is.
            progress.host(&host.name, "connecting");
            match ssh::Session::connect(&target(&host), &opts).await {
                Ok(session) => {
                    let cert = session
                        .run(&format!("cat {} 2>/dev/null || true", identity::CERT_PATH), None)
                        .await
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    device_serial = crate::pki::facts(&cert).ok().map(|f| f.serial_hex);
                    progress.host(&host.name, "stopping nomad and removing its files");
                    match session.run(&device_script(), None).await {
                        Ok(out) if out.ok() => {
                            let text = String::from_utf8_lossy(&out.stdout);
                            if text.contains("stopped") {
                                changes.push(Change::new(
                                    format!("{}/unit:{}", host.name, node::UNIT_NAME),
                                    Action::Delete,
                                    "stopped and disabled",
                                ));
                            }
                            if !text.contains("removed 0") {
                                changes.push(Change::new(
                                    format!("{}/files", host.name),
                                    Action::Delete,
                                    "edgectl's files and the key removed",
                                ));
                            }
                        }
                        Ok(out) => errors.push(format!("removing files: {}", out.stderr_line())),
                        Err(e) => errors.push(format!("{e:#}")),
                    }
                    trips = session.round_trips();
                    session.close().await;
                }
                Err(e) => errors.push(format!("{e:#}")),
            }
            let param = |f: &str| {
                params
                    .get(&outputs::device(&host.name, f))
                    .map(|v| v.expose().to_string())
            };
            if let (Some(serial), Some(ca)) =
                (param("serial").or(device_serial), params.get(outputs::PCA_ARN))
            {
                progress.host(&host.name, "revoking its certificate");
                match identity::revoke(&pca, ca.expose(), &serial, &host.name).await {
                    Ok(()) => changes.push(Change::new(
                        format!("{}/identity:certificate", host.name),
                        Action::Delete,
                        format!("revoked (serial {serial})"),
                    )),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            if let Some(nomad) = nomad.as_ref() {
                match purge(nomad, &host.name).await {
                    Ok(true) => changes.push(Change::new(
                        format!("{}/nomad-node", host.name),
                        Action::Delete,
                        "purged from Nomad",
                    )),
                    Ok(false) => {}
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            let record: Vec<String> = DEVICE_FIELDS
                .iter()
                .map(|f| outputs::device(&host.name, f))
                .filter(|n| params.contains_key(n))
                .collect();
            if !record.is_empty() {
                match store
                    .delete(&record.iter().map(String::as_str).collect::<Vec<_>>())
                    .await
                {
                    Ok(()) => changes.push(Change::new(
                        format!("ssm:/infrastructure/devices/{}", host.name),
                        Action::Delete,
                        "device record deleted",
                    )),
                    Err(e) => errors.push(format!("{e:#}")),
                }
            }
            progress.host(
                &host.name,
                if errors.is_empty() {
                    "deprovisioned"
                } else {
                    "failed"
                },
            );
            HostReport {
                host: host.name.clone(),
                result: if !errors.is_empty() {
                    Outcome::Failed
                } else if changes.is_empty() {
                    Outcome::Ok
                } else {
                    Outcome::Changed
                },
                changes,
                seconds: started.elapsed().as_secs_f64(),
                round_trips: trips,
                error: (!errors.is_empty()).then(|| errors.join("; ")),
                diffs: BTreeMap::new(),
            }
        }
    })
    .await;
    Ok(FleetReport {
        dry_run: false,
        hosts,
    })
}

/// Purges the node named `name`; false when Nomad has no such node.
async fn purge(nomad: &crate::nomad::client::Client, name: &str) -> Result<bool> {
    let nodes = super::status::nodes(nomad).await.context("listing Nomad nodes")?;
    let mut purged = false;
    for n in nodes.into_iter().filter(|n| n.name == name) {
        nomad
            .post_unit(&format!("/v1/node/{}/purge", n.id), &serde_json::json!({}))
            .await
            .with_context(|| format!("purging Nomad node {} ({name})", n.id))?;
        purged = true;
    }
    Ok(purged)
}
