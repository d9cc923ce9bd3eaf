//! edgectl's rendered Nomad `server.hcl`, made runnable on this machine:
//! only the keys that differ between an EC2 instance and one process here
//! (addresses, ports, the paths of the TLS files and data dir, the join
//! list) are changed, and [`only_local_changes`] proves nothing else moved.
//! Used by the real-Nomad proof of the render (`tests/server_config_nomad.rs`)
//! and by the sandbox, which runs the `server.hcl` of the user data that
//! `edgectl cloud up` gave its (simulated) server instance.

use crate::nomad::ServerFiles;
use anyhow::{bail, Context};
use hcl::{Attribute, Block, Body, Expression, Structure};
use std::collections::BTreeMap;
use std::net::SocketAddr;

/// Keys replaced: addresses, local paths, and the join method
/// (`provider=aws …` → the servers' serf addresses here).
pub const REPLACED: &[&str] = &[
    "bind_addr",
    "data_dir",
    "advertise.http",
    "advertise.rpc",
    "server.server_join.retry_join",
    "tls.ca_file",
    "tls.cert_file",
    "tls.key_file",
];

/// Keys added because this is one machine, not one per server: distinct
/// node names and ports, serf advertised explicitly (Nomad refuses to
/// default its advertise address to loopback), and a short join retry.
pub const ADDED: &[&str] = &[
    "name",
    "ports",
    "ports.http",
    "ports.rpc",
    "ports.serf",
    "advertise.serf",
    "server.server_join.retry_interval",
];

/// The heredoc edgectl's user data writes `server.hcl` from.
const HEREDOC: &str = "EDGECTL_SERVER_HCL";

/// `server.hcl` as a server instance's user data (decoded) writes it.
pub fn from_user_data(user_data: &str) -> anyhow::Result<String> {
    let open = format!("<<'{HEREDOC}'\n");
    let start = user_data
        .find(&open)
        .map(|i| i + open.len())
        .context("the user data writes no server.hcl (no EDGECTL_SERVER_HCL heredoc)")?;
    let len = user_data[start..]
        .find(&format!("\n{HEREDOC}\n"))
        .context("the server.hcl heredoc of the user data is not closed")?;
    Ok(user_data[start..start + len].to_string())
}

/// `rendered` with this machine's addresses, paths and join list instead
/// of the instance's; every other key as rendered.
pub fn localize(rendered: &str, files: &ServerFiles, join: &[String]) -> anyhow::Result<String> {
    let mut body: Body = hcl::from_str(rendered).context("edgectl's server.hcl does not parse")?;
    let at = |port: u16| SocketAddr::new(files.bind, port).to_string();
    let path = |p: &std::path::Path| p.display().to_string();
    let replacements: [(&str, Expression); 8] = [
        ("bind_addr", files.bind.to_string().into()),
        ("data_dir", path(&files.data_dir).into()),
        ("advertise.http", at(files.ports.http).into()),
        ("advertise.rpc", at(files.ports.rpc).into()),
        (
            "server.server_join.retry_join",
            Expression::Array(join.iter().map(|a| a.as_str().into()).collect()),
        ),
        ("tls.ca_file", path(&files.ca_file).into()),
        ("tls.cert_file", path(&files.cert_file).into()),
        ("tls.key_file", path(&files.key_file).into()),
    ];
    for (key, value) in replacements {
        attribute_mut(&mut body, key)
            .with_context(|| format!("the render has no `{key}`"))?
            .expr = value;
    }
    body.0
        .push(Structure::Attribute(Attribute::new("name", files.name.as_str())));
    body.0.push(Structure::Block(
        Block::builder("ports")
            .add_attribute(("http", files.ports.http))
            .add_attribute(("rpc", files.ports.rpc))
            .add_attribute(("serf", files.ports.serf))
            .build(),
    ));
    block_mut(&mut body, "advertise")
        .context("the render has no advertise block")?
        .body
        .0
        .push(Structure::Attribute(Attribute::new("serf", at(files.ports.serf))));
    block_mut(&mut body, "server.server_join")
        .context("the render has no server.server_join block")?
        .body
        .0
        .push(Structure::Attribute(Attribute::new("retry_interval", "1s")));
    hcl::to_string(&body).context("serializing the localized server.hcl")
}

/// An error unless `local` differs from `rendered` only in [`REPLACED`]
/// and [`ADDED`] keys.
pub fn only_local_changes(rendered: &str, local: &str) -> anyhow::Result<()> {
    let before = flatten(&hcl::from_str(rendered).context("the render does not parse")?);
    let after = flatten(&hcl::from_str(local).context("the localized config does not parse")?);
    for (key, value) in &before {
        if REPLACED.contains(&key.as_str()) {
            if !after.contains_key(key) {
                bail!("`{key}` was dropped, not replaced");
            }
        } else if after.get(key) != Some(value) {
            bail!("`{key}` changed; only addresses may");
        }
    }
    if let Some(key) = after
        .keys()
        .find(|k| !before.contains_key(*k) && !ADDED.contains(&k.as_str()))
    {
        bail!("`{key}` was added; only addresses may be");
    }
    Ok(())
}

/// Every attribute and block of `body` by dotted path (blocks as `Null`).
pub fn flatten(body: &Body) -> BTreeMap<String, Expression> {
    fn walk(prefix: &str, body: &Body, out: &mut BTreeMap<String, Expression>) {
        for a in body.attributes() {
            out.insert(format!("{prefix}{}", a.key()), a.expr().clone());
        }
        for b in body.blocks() {
            let mut name = format!("{prefix}{}", b.identifier());
            for l in b.labels() {
                name.push_str(&format!(".{}", l.as_str()));
            }
            out.insert(name.clone(), Expression::Null);
            walk(&format!("{name}."), b.body(), out);
        }
    }
    let mut out = BTreeMap::new();
    walk("", body, &mut out);
    out
}

fn block_mut<'a>(body: &'a mut Body, path: &str) -> Option<&'a mut Block> {
    let mut parts = path.split('.');
    let first = parts.next()?;
    let mut block = body.blocks_mut().find(|b| b.identifier() == first)?;
    for part in parts {
        block = block.body.blocks_mut().find(|b| b.identifier() == part)?;
    }
    Some(block)
}

fn attribute_mut<'a>(body: &'a mut Body, path: &str) -> Option<&'a mut Attribute> {
    match path.rsplit_once('.') {
        None => body.attributes_mut().find(|a| a.key() == path),
        Some((blocks, key)) => block_mut(body, blocks)?
            .body
            .attributes_mut()
            .find(|a| a.key() == key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_heredoc_is_cut_out_of_the_user_data() {
        let ud = "#!/bin/bash\nwrite_file \"/opt/nomad/config/server.hcl\" 0640 \"root:$NOMAD_USER\" \
                  <<'EDGECTL_SERVER_HCL'\nregion = \"eu-west-1\"\nacl {\n  enabled = true\n}\nEDGECTL_SERVER_HCL\necho done\n";
        assert_eq!(
            from_user_data(ud).unwrap(),
            "region = \"eu-west-1\"\nacl {\n  enabled = true\n}"
        );
        let err = from_user_data("#!/bin/bash\necho hi\n").unwrap_err();
        assert!(err.to_string().contains("no server.hcl"), "{err}");
        let err = from_user_data("x <<'EDGECTL_SERVER_HCL'\nregion = 1\n").unwrap_err();
        assert!(err.to_string().contains("not closed"), "{err}");
    }
}
