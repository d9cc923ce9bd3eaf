//! `edgectl env`: the operator's shell environment for the `nomad` CLI
//! (replaces the sample's set-nomad-env.sh). The CA goes to a file under the
//! user's config dir; a client key is written only when asked for.

use crate::cloud::pca::{ca_chain_param, Leaf};
use crate::cloud::Ctx;
use crate::error::User;
use crate::outputs;
use crate::secret::Secret;
use anyhow::{Context, Result};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenKind {
    /// The CI token bound to the `submit-job` policy
    Ci,
    /// The ACL management (bootstrap) token
    Management,
}

pub struct EnvSettings {
    /// `<config dir>/edgectl/<deployment>`
    pub dir: PathBuf,
    pub token: Option<TokenKind>,
    pub client_cert: bool,
}

/// The variables to export, in order. The token stays a `Secret` until it is
/// rendered for `eval`.
pub struct Env {
    pub vars: Vec<(&'static str, String)>,
    pub token: Option<Secret>,
}

pub async fn resolve(ctx: &Ctx, s: &EnvSettings) -> Result<Env> {
    let (cert_name, key_name) = Leaf::Cli.params(ctx);
    let chain = ca_chain_param(ctx);
    let token_name = match s.token {
        Some(TokenKind::Ci) => Some(outputs::NOMAD_CI_TOKEN),
        Some(TokenKind::Management) => Some(outputs::NOMAD_BOOTSTRAP_TOKEN),
        None => None,
    };
    let mut names = vec![outputs::NOMAD_ENDPOINT, chain.as_str()];
    if s.client_cert {
        names.extend([cert_name.as_str(), key_name.as_str()]);
    }
    names.extend(token_name);
    let found = ctx.outputs.read(&names).await?;
    let need = |name: &str| {
        found.get(name).cloned().ok_or_else(|| {
            anyhow::Error::from(User::new(
                format!(
                    "{name} is not in SSM for deployment `{}` in {}",
                    ctx.deployment, ctx.aws.region
                ),
                "run `edgectl cloud up` first",
            ))
        })
    };
    let endpoint = need(outputs::NOMAD_ENDPOINT)?;
    let ca = need(&chain)?;
    std::fs::create_dir_all(&s.dir).with_context(|| format!("creating {}", s.dir.display()))?;
    let ca_path = s.dir.join("ca.pem");
    write_file(&ca_path, ca.expose(), 0o644)?;
    let mut vars = vec![
        ("NOMAD_ADDR", format!("https://{}:4646", endpoint.expose())),
        ("NOMAD_CACERT", ca_path.display().to_string()),
        // The servers' certificate names the region's server, whatever
        // address the load balancer has.
        (
            "NOMAD_TLS_SERVER_NAME",
            format!("server.{}.nomad", ctx.config.cluster.nomad_region),
        ),
    ];
    if s.client_cert {
        let cert_path = s.dir.join("cli.pem");
        let key_path = s.dir.join("cli-key.pem");
        write_file(&cert_path, need(&cert_name)?.expose(), 0o644)?;
        write_file(&key_path, need(&key_name)?.expose(), 0o600)?;
        vars.push(("NOMAD_CLIENT_CERT", cert_path.display().to_string()));
        vars.push(("NOMAD_CLIENT_KEY", key_path.display().to_string()));
    }
    let token = match token_name {
        Some(name) => Some(need(name).map_err(|e| {
            e.context(format!(
                "reading the {} token",
                if name == outputs::NOMAD_CI_TOKEN {
                    "CI"
                } else {
                    "management"
                }
            ))
        })?),
        None => None,
    };
    Ok(Env { vars, token })
}

/// Written to a temporary file beside it, then renamed: never half a key,
/// and the mode is set before any byte is written.
fn write_file(path: &Path, content: &str, mode: u32) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(content.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

/// `export NAME='value'` lines for a POSIX shell.
pub fn render(env: &Env) -> String {
    let mut out = String::new();
    for (k, v) in &env.vars {
        out.push_str(&format!("export {k}={}\n", quote(v)));
    }
    if let Some(t) = &env.token {
        out.push_str(&format!("export NOMAD_TOKEN={}\n", quote(t.expose())));
    }
    out
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_quoted_exports() {
        let env = Env {
            vars: vec![
                ("NOMAD_ADDR", "https://lb:4646".into()),
                ("NOMAD_CACERT", "/x/it's/ca.pem".into()),
            ],
            token: Some(Secret::new("s3cr3t")),
        };
        assert_eq!(
            render(&env),
            "export NOMAD_ADDR='https://lb:4646'\nexport NOMAD_CACERT='/x/it'\\''s/ca.pem'\nexport NOMAD_TOKEN='s3cr3t'\n"
        );
    }

    #[test]
    fn key_files_are_private_from_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        write_file(&p, "KEY", 0o600).unwrap();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "KEY");
    }
}
