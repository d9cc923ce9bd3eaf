//! `edgectl device status`: per device, reachable over SSH, nomad active,
//! certificate expiry, and the node as the Nomad servers see it.

use super::{fleet_map, identity, node, ssh, target, Settings};
use crate::cloud::Ctx;
use crate::config::inventory::Host;
use crate::nomad::client::Client;
use crate::outputs;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone, Serialize)]
pub struct DeviceStatus {
    pub host: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nomad_active: Option<bool>,
    /// RFC 3339, and whole days left.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_expires: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_days_left: Option<i64>,
    /// As the servers see the node (`ready`, `down`, `initializing`), or
    /// `absent`; None when the control plane could not be asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl DeviceStatus {
    pub fn healthy(&self) -> bool {
        self.reachable
            && self.nomad_active == Some(true)
            && self.certificate_days_left.is_some_and(|d| d > 0)
            && self.node_status.as_deref().is_none_or(|s| s == "ready")
    }
}

/// A node as `/v1/nodes` lists it.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeStub {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub status: String,
}

/// The Nomad API with a token that reads nodes: NOMAD_TOKEN, else the
/// management token in SSM. None when the control plane is not reachable
/// from here (status then says nothing about nodes).
pub async fn nomad(ctx: &Ctx) -> Result<Option<Client>> {
    let chain = crate::cloud::pca::ca_chain_param(ctx);
    let (cert, key) = crate::cloud::pca::Leaf::Cli.params(ctx);
    let names = [
        outputs::NOMAD_ENDPOINT,
        chain.as_str(),
        cert.as_str(),
        key.as_str(),
        outputs::NOMAD_BOOTSTRAP_TOKEN,
    ];
    let params = ctx.outputs.read(&names).await?;
    let Some(url) = crate::cloud::acl::target(ctx, &params)? else {
        return Ok(None);
    };
    let Some(tls) = crate::cloud::acl::tls(ctx, &params, &url) else {
        return Ok(None);
    };
    let token = ctx
        .nomad
        .as_ref()
        .and_then(|n| n.token.clone())
        .or_else(|| params.get(outputs::NOMAD_BOOTSTRAP_TOKEN).cloned());
    let client = Client::new(&url, &tls).await?;
    Ok(Some(match token {
        Some(t) => client.with_token(&t),
        None => client,
    }))
}

pub async fn nodes(nomad: &Client) -> Result<Vec<NodeStub>> {
    nomad.get("/v1/nodes").await
}

pub async fn status(ctx: &Ctx, s: &Settings, hosts: Vec<Host>) -> Result<Vec<DeviceStatus>> {
    let nodes: Option<BTreeMap<String, String>> = match nomad(ctx).await {
        Ok(Some(c)) => match nodes(&c).await {
            Ok(list) => Some(list.into_iter().map(|n| (n.name, n.status)).collect()),
            Err(e) => {
                tracing::debug!("listing Nomad nodes: {e:#}");
                None
            }
        },
        _ => None,
    };
    let nodes = Arc::new(nodes);
    let opts = s.ssh.clone();
    let names: Vec<String> = hosts.iter().map(|h| h.name.clone()).collect();
    let done = fleet_map(hosts, s.parallel, move |host| {
        let opts = opts.clone();
        let nodes = nodes.clone();
        async move { one(&host, &opts, nodes.as_ref().as_ref()).await }
    })
    .await;
    Ok(done
        .into_iter()
        .zip(names)
        .map(|(r, host)| {
            r.unwrap_or_else(|e| DeviceStatus {
                host,
                reachable: false,
                nomad_active: None,
                certificate_expires: None,
                certificate_days_left: None,
                node_status: None,
                error: Some(format!("internal error: {e}")),
            })
        })
        .collect())
}

async fn one(host: &Host, opts: &ssh::Options, nodes: Option<&BTreeMap<String, String>>) -> DeviceStatus {
    let mut st = DeviceStatus {
        host: host.name.clone(),
        reachable: false,
        nomad_active: None,
        certificate_expires: None,
        certificate_days_left: None,
        node_status: nodes.map(|n| n.get(&host.name).cloned().unwrap_or_else(|| "absent".into())),
        error: None,
    };
    let session = match ssh::Session::connect(&target(host), opts).await {
        Ok(s) => s,
        Err(e) => {
            st.error = Some(format!("{e:#}"));
            return st;
        }
    };
    st.reachable = true;
    let script = format!(
        "systemctl is-active {unit} || true\necho ---\ncat {cert} 2>/dev/null || true\n",
        unit = node::UNIT_NAME,
        cert = identity::CERT_PATH
    );
    match session.run(&script, None).await {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            let (active, cert) = text.split_once("---\n").unwrap_or((&text, ""));
            st.nomad_active = Some(active.trim() == "active");
            if let Ok(f) = crate::pki::facts(cert) {
                let now = time::OffsetDateTime::now_utc().unix_timestamp();
                st.certificate_days_left = Some((f.not_after - now).div_euclid(86_400));
                st.certificate_expires = time::OffsetDateTime::from_unix_timestamp(f.not_after)
                    .ok()
                    .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok());
            }
        }
        Err(e) => st.error = Some(format!("{e:#}")),
    }
    session.close().await;
    st
}
