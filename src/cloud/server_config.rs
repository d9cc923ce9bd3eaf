//! What runs on a Nomad server instance: its agent configuration
//! (`templates/server.hcl`), its systemd unit and the first-boot user data
//! that installs Nomad (HashiCorp's signature of SHA256SUMS, the zip's
//! sha256 against it and against edgectl's pin), fetches the TLS files from
//! SSM with the instance role and starts it. Pure rendering, no I/O; the
//! `servers` component passes [`render_user_data`] to EC2.
//!
//! Templates use plain `{{name}}` placeholders, filled by [`render`]: a
//! placeholder without a value, or a value without a placeholder, is an
//! error, so a template and its inputs cannot drift apart silently.
//!
//! This file depends on std and anyhow only: `tests/server_config_nomad.rs`
//! includes it to start real Nomad servers from what it renders.

use anyhow::{bail, ensure, Context, Result};
use std::collections::BTreeMap;

const SERVER_HCL: &str = include_str!("../../templates/server.hcl");
const UNIT: &str = include_str!("../../templates/nomad-server.service");
const USER_DATA: &str = include_str!("../../templates/server-user-data.sh");
/// HashiCorp's release signing key (primary C874 011F 0AB4 0511 0D02 1055
/// 3436 5D94 72D7 468F, as <https://www.hashicorp.com/trust/security>
/// publishes it), exported with only its current signing subkey from the
/// copy in hashicorp/hc-install (`internal/pubkey/pubkey.go`). User data
/// checks the signature of a release's SHA256SUMS with it, for any version.
const RELEASE_KEY: &str = include_str!("../../templates/hashicorp-release-key.asc");
pub const RELEASE_KEY_FINGERPRINT: &str = "C874011F0AB405110D02105534365D9472D7468F";

/// The Nomad version a server installs unless the operator picks another:
/// the one the tests run (`tests/versions.env`, checked by a unit test).
pub const DEFAULT_NOMAD_VERSION: &str = "1.11.3";

/// (version, arch, sha256) of HashiCorp's release zips that edgectl pins,
/// checked on top of the signed SHA256SUMS: the published values for
/// `nomad_1.11.3_linux_{amd64,arm64}.zip` as HashiCorp's own Homebrew tap
/// (hashicorp/homebrew-tap, Formula/nomad.rb) lists them; the amd64 value
/// also agrees with independent pins elsewhere. A version not listed here
/// is checked against its signed SHA256SUMS only.
pub const PINNED_NOMAD_SHA256: &[(&str, &str, &str)] = &[
    (
        "1.11.3",
        "amd64",
        "19dac5642a2ba5305e6ff8efee06a708d760ebe4d1cd7936bc3dc526f477dc12",
    ),
    (
        "1.11.3",
        "arm64",
        "902e44260fcd9297af7042fb33ccd5a29cc2202b57199724f17c96fcd67414d2",
    ),
];

/// The architectures user data can install (`uname -m` x86_64, aarch64).
pub const ARCHES: [&str; 2] = ["amd64", "arm64"];

// Paths on the instance. One place, so the config, the unit and the user
// data that writes the files cannot disagree.
pub const NOMAD_BIN: &str = "/usr/local/bin/nomad";
pub const NOMAD_USER: &str = "nomad";
pub const CONFIG_DIR: &str = "/opt/nomad/config";
pub const CONFIG_FILE: &str = "/opt/nomad/config/server.hcl";
pub const DATA_DIR: &str = "/opt/nomad/data";
pub const TLS_DIR: &str = "/opt/nomad/tls";
pub const TLS_CA_FILE: &str = "/opt/nomad/tls/ca.pem";
pub const TLS_CERT_FILE: &str = "/opt/nomad/tls/server.pem";
pub const TLS_KEY_FILE: &str = "/opt/nomad/tls/server-key.pem";

/// EC2 refuses user data above 16 KB (before base64).
pub const USER_DATA_LIMIT: usize = 16 * 1024;

/// Everything a server's files depend on.
#[derive(Clone, Debug)]
pub struct ServerConfigInputs {
    /// Nomad datacenter of the servers (`cluster.datacenter_name`).
    pub datacenter: String,
    /// Nomad's own region name (`cluster.nomad_region`).
    pub nomad_region: String,
    /// The AWS region the instances run in (for cloud auto-join and SSM).
    pub aws_region: String,
    /// Servers expected to form the cluster (`bootstrap_expect`).
    pub instance_count: u8,
    pub discovery_tag_key: String,
    pub discovery_tag_value: String,
    /// The load balancer's DNS name, advertised for HTTP and RPC.
    pub advertise_addr: String,
    /// e.g. `1.11.3` (no `v`).
    pub nomad_version: String,
    /// Pinned sha256 of the release zip per architecture (`amd64`,
    /// `arm64`); an architecture missing here is checked against the
    /// signed SHA256SUMS only. See [`pinned_sha256`].
    pub nomad_sha256: BTreeMap<String, String>,
    /// Full SSM parameter names (as `outputs::Store::path` gives them).
    pub ssm_ca_cert: String,
    pub ssm_server_cert: String,
    pub ssm_server_key: String,
}

/// edgectl's pinned sha256 of `version`'s zips, by architecture (empty for
/// a version it pins nothing for).
pub fn pinned_sha256(version: &str) -> BTreeMap<String, String> {
    PINNED_NOMAD_SHA256
        .iter()
        .filter(|(v, _, _)| *v == version)
        .map(|(_, arch, sum)| (arch.to_string(), sum.to_string()))
        .collect()
}

impl ServerConfigInputs {
    /// Every value ends up inside an HCL string, a go-discover `key=value`
    /// list or a shell word: refuse what could break out of them.
    fn check(&self) -> Result<()> {
        fn only(field: &str, value: &str, allowed: impl Fn(char) -> bool) -> Result<()> {
            ensure!(!value.is_empty(), "server config: {field} is empty");
            if let Some(c) = value.chars().find(|&c| !allowed(c)) {
                bail!("server config: {field} `{value}` contains `{c}`, which the Nomad server files cannot carry");
            }
            Ok(())
        }
        let name = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        // EC2 tags allow more, but go-discover splits its argument on spaces.
        let tag = |c: char| name(c) || matches!(c, ':' | '/' | '=' | '+' | '@');
        let path = |c: char| name(c) || c == '/';
        only("datacenter", &self.datacenter, name)?;
        only("nomad_region", &self.nomad_region, name)?;
        only("aws_region", &self.aws_region, |c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'
        })?;
        only("discovery_tag_key", &self.discovery_tag_key, tag)?;
        only("discovery_tag_value", &self.discovery_tag_value, tag)?;
        only("advertise_addr", &self.advertise_addr, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '-' | '.')
        })?;
        only("nomad_version", &self.nomad_version, |c| name(c) || c == '+')?;
        only("ssm_ca_cert", &self.ssm_ca_cert, path)?;
        only("ssm_server_cert", &self.ssm_server_cert, path)?;
        only("ssm_server_key", &self.ssm_server_key, path)?;
        ensure!(
            self.instance_count >= 1,
            "server config: instance_count must be at least 1"
        );
        for (arch, sum) in &self.nomad_sha256 {
            ensure!(
                ARCHES.contains(&arch.as_str()),
                "server config: no Nomad build for architecture `{arch}` (expected one of {ARCHES:?})"
            );
            ensure!(
                sum.len() == 64 && sum.chars().all(|c| c.is_ascii_digit() || matches!(c, 'a'..='f')),
                "server config: sha256 for {arch} `{sum}` is not 64 lowercase hex digits"
            );
        }
        Ok(())
    }
}

/// The Nomad server agent's configuration (`/opt/nomad/config/server.hcl`).
pub fn render_server_hcl(inputs: &ServerConfigInputs) -> Result<String> {
    inputs.check()?;
    render(
        "server.hcl",
        SERVER_HCL,
        &[
            ("config_file", CONFIG_FILE),
            ("datacenter", &inputs.datacenter),
            ("nomad_region", &inputs.nomad_region),
            ("data_dir", DATA_DIR),
            ("advertise_addr", &inputs.advertise_addr),
            ("bootstrap_expect", &inputs.instance_count.to_string()),
            ("aws_region", &inputs.aws_region),
            ("discovery_tag_key", &inputs.discovery_tag_key),
            ("discovery_tag_value", &inputs.discovery_tag_value),
            ("tls_ca_file", TLS_CA_FILE),
            ("tls_cert_file", TLS_CERT_FILE),
            ("tls_key_file", TLS_KEY_FILE),
        ],
    )
}

/// The systemd unit (`/etc/systemd/system/nomad.service`).
pub fn render_unit() -> Result<String> {
    render(
        "nomad-server.service",
        UNIT,
        &[
            ("config_file", CONFIG_FILE),
            ("user", NOMAD_USER),
            ("nomad_bin", NOMAD_BIN),
        ],
    )
}

/// The instance's first-boot script (EC2 user data), embedding the config
/// and the unit above.
pub fn render_user_data(inputs: &ServerConfigInputs) -> Result<String> {
    let server_hcl = render_server_hcl(inputs)?;
    let unit = render_unit()?;
    let sha = |arch: &str| inputs.nomad_sha256.get(arch).cloned().unwrap_or_default();
    let script = render(
        "server-user-data.sh",
        USER_DATA,
        &[
            ("nomad_version", &inputs.nomad_version),
            ("aws_region", &inputs.aws_region),
            ("user", NOMAD_USER),
            ("nomad_bin", NOMAD_BIN),
            ("nomad_sha256_amd64", &sha("amd64")),
            ("nomad_sha256_arm64", &sha("arm64")),
            ("release_key_base64", &release_key_base64()?),
            ("release_key_fingerprint", RELEASE_KEY_FINGERPRINT),
            ("config_dir", CONFIG_DIR),
            ("tls_dir", TLS_DIR),
            ("data_dir", DATA_DIR),
            ("ssm_ca_cert", &inputs.ssm_ca_cert),
            ("ssm_server_cert", &inputs.ssm_server_cert),
            ("ssm_server_key", &inputs.ssm_server_key),
            ("tls_ca_file", TLS_CA_FILE),
            ("tls_cert_file", TLS_CERT_FILE),
            ("tls_key_file", TLS_KEY_FILE),
            ("config_file", CONFIG_FILE),
            ("server_hcl", server_hcl.trim_end()),
            ("nomad_unit", unit.trim_end()),
        ],
    )?;
    ensure!(
        script.len() <= USER_DATA_LIMIT,
        "server user data is {} bytes, EC2 accepts at most {USER_DATA_LIMIT}",
        script.len()
    );
    Ok(script)
}

/// The release key as base64 of its binary form (what `gpgv --keyring`
/// reads): the armour's body without headers and checksum line.
fn release_key_base64() -> Result<String> {
    let body = RELEASE_KEY
        .split_once("\n\n")
        .map(|(_, b)| b)
        .context("the release key has no armour header")?;
    let lines: Vec<&str> = body
        .lines()
        .take_while(|l| !l.starts_with('=') && !l.starts_with("-----END"))
        .collect();
    ensure!(!lines.is_empty(), "the release key is empty");
    Ok(lines.join("\n"))
}

/// Replaces every `{{name}}` in `template` by its value, in one pass (a
/// value is never scanned for placeholders). Errors on a placeholder with
/// no value, a malformed one, and a value no placeholder uses.
pub fn render(template_name: &str, template: &str, values: &[(&str, &str)]) -> Result<String> {
    let mut out = String::with_capacity(template.len() * 2);
    let mut used = vec![false; values.len()];
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find("}}")
            .with_context(|| format!("template {template_name}: `{{{{` without `}}}}`"))?;
        let key = &after[..end];
        ensure!(
            !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "template {template_name}: malformed placeholder `{{{{{key}}}}}`"
        );
        let i = values
            .iter()
            .position(|(k, _)| *k == key)
            .with_context(|| format!("template {template_name}: no value for `{{{{{key}}}}}`"))?;
        out.push_str(values[i].1);
        used[i] = true;
        rest = &after[end + 2..];
    }
    out.push_str(rest);
    if let Some(i) = used.iter().position(|u| !u) {
        bail!(
            "template {template_name}: value `{}` has no placeholder",
            values[i].0
        );
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hcl::{Body, Expression};

    fn inputs() -> ServerConfigInputs {
        ServerConfigInputs {
            datacenter: "control-plane".into(),
            nomad_region: "eu-west-1".into(),
            aws_region: "eu-central-1".into(),
            instance_count: 3,
            discovery_tag_key: "nomad-type".into(),
            discovery_tag_value: "server".into(),
            advertise_addr: "edgectl-nomad-0123456789.elb.eu-central-1.amazonaws.com".into(),
            nomad_version: DEFAULT_NOMAD_VERSION.into(),
            nomad_sha256: pinned_sha256(DEFAULT_NOMAD_VERSION),
            ssm_ca_cert: "/infrastructure/certificates/ca-caCertificate".into(),
            ssm_server_cert: "/infrastructure/certificates/nomad-server-eu-west-1-Certificate".into(),
            ssm_server_key: "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey".into(),
        }
    }

    /// Every attribute of an HCL body by its dotted path (`tls.ca_file`,
    /// `server.server_join.retry_join`), as HCL text of its expression.
    fn flatten(body: &Body) -> BTreeMap<String, Expression> {
        fn walk(prefix: &str, body: &Body, out: &mut BTreeMap<String, Expression>) {
            for a in body.attributes() {
                let key = format!("{prefix}{}", a.key());
                assert!(out.insert(key.clone(), a.expr().clone()).is_none(), "{key} twice");
            }
            for b in body.blocks() {
                let mut name = b.identifier().to_string();
                for l in b.labels() {
                    name.push_str(&format!(".{}", l.as_str()));
                }
                assert!(
                    out.insert(format!("{prefix}{name}"), Expression::Null).is_none(),
                    "{name} twice"
                );
                walk(&format!("{prefix}{name}."), b.body(), out);
            }
        }
        let mut out = BTreeMap::new();
        walk("", body, &mut out);
        out
    }

    fn s(v: &str) -> Expression {
        Expression::String(v.to_string())
    }

    #[test]
    fn server_hcl_has_every_key_and_nothing_else() {
        let text = render_server_hcl(&inputs()).unwrap();
        let body: Body = hcl::from_str(&text).expect("rendered server.hcl parses");
        let got = flatten(&body);
        let retry = "provider=aws region=eu-central-1 tag_key=nomad-type tag_value=server";
        let lb = "edgectl-nomad-0123456789.elb.eu-central-1.amazonaws.com";
        let block = Expression::Null;
        let want: BTreeMap<String, Expression> = [
            ("bind_addr", s("0.0.0.0")),
            ("datacenter", s("control-plane")),
            ("region", s("eu-west-1")),
            ("data_dir", s("/opt/nomad/data")),
            ("log_level", s("INFO")),
            ("disable_update_check", Expression::Bool(true)),
            ("advertise", block.clone()),
            ("advertise.http", s(&format!("{lb}:4646"))),
            ("advertise.rpc", s(&format!("{lb}:4647"))),
            ("acl", block.clone()),
            ("acl.enabled", Expression::Bool(true)),
            ("server", block.clone()),
            ("server.enabled", Expression::Bool(true)),
            ("server.bootstrap_expect", Expression::Number(3.into())),
            ("server.raft_protocol", Expression::Number(3.into())),
            ("server.server_join", block.clone()),
            ("server.server_join.retry_join", Expression::Array(vec![s(retry)])),
            ("tls", block.clone()),
            ("tls.http", Expression::Bool(true)),
            ("tls.rpc", Expression::Bool(true)),
            ("tls.ca_file", s("/opt/nomad/tls/ca.pem")),
            ("tls.cert_file", s("/opt/nomad/tls/server.pem")),
            ("tls.key_file", s("/opt/nomad/tls/server-key.pem")),
            ("tls.verify_server_hostname", Expression::Bool(true)),
            ("tls.verify_https_client", Expression::Bool(true)),
            ("autopilot", block.clone()),
            ("autopilot.cleanup_dead_servers", Expression::Bool(true)),
            ("autopilot.last_contact_threshold", s("5s")),
            ("consul", block.clone()),
            ("consul.server_auto_join", Expression::Bool(false)),
            ("consul.client_auto_join", Expression::Bool(false)),
            ("consul.auto_advertise", Expression::Bool(false)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        assert_eq!(got, want, "rendered:\n{text}");
    }

    #[test]
    fn server_hcl_follows_the_inputs() {
        let mut i = inputs();
        i.instance_count = 1;
        i.datacenter = "dc-x".into();
        i.discovery_tag_value = "srv_2".into();
        let body: Body = hcl::from_str(&render_server_hcl(&i).unwrap()).unwrap();
        let got = flatten(&body);
        assert_eq!(got["server.bootstrap_expect"], Expression::Number(1.into()));
        assert_eq!(got["datacenter"], s("dc-x"));
        assert_eq!(
            got["server.server_join.retry_join"],
            Expression::Array(vec![s(
                "provider=aws region=eu-central-1 tag_key=nomad-type tag_value=srv_2"
            )])
        );
    }

    #[test]
    fn unit_runs_the_rendered_config_as_nomad() {
        let unit = render_unit().unwrap();
        for line in [
            "User=nomad",
            "Group=nomad",
            "Type=notify",
            "ExecStart=/usr/local/bin/nomad agent -config /opt/nomad/config/server.hcl",
            "ExecReload=/bin/kill -HUP $MAINPID",
            "ConditionFileNotEmpty=/opt/nomad/config/server.hcl",
            "Wants=network-online.target",
            "After=network-online.target",
            "Restart=on-failure",
            "KillSignal=SIGINT",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "no `{line}` in:\n{unit}");
        }
        assert!(!unit.contains("{{"), "{unit}");
    }

    #[test]
    fn unit_passes_systemd_analyze_verify() {
        // verify insists that ExecStart's binary exists; Nomad is not
        // installed here, so that path alone points at a stand-in.
        let unit = render_unit().unwrap().replace(NOMAD_BIN, "/bin/true");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nomad.service");
        std::fs::write(&path, unit).unwrap();
        let out = std::process::Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap_or_else(|e| panic!("systemd-analyze (package systemd) checks the unit: {e}"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        // Unknown keys are only warnings: refuse any output.
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "systemd-analyze verify: {stderr}"
        );
    }

    #[test]
    fn user_data_installs_verified_nomad_and_writes_the_files() {
        let ud = render_user_data(&inputs()).unwrap();
        assert!(
            !ud.contains("{{") && !ud.contains("}}"),
            "leftover placeholder:\n{ud}"
        );
        assert!(ud.starts_with("#!/bin/bash\n"));
        assert!(ud.lines().any(|l| l == "set -euo pipefail"));
        assert!(ud.len() <= USER_DATA_LIMIT);
        // The download and both checks.
        for needle in [
            r#"readonly NOMAD_VERSION="1.11.3""#,
            r#"readonly RELEASES="https://releases.hashicorp.com/nomad""#,
            r#"zip="nomad_${NOMAD_VERSION}_linux_${arch}.zip""#,
            r#"sums="nomad_${NOMAD_VERSION}_SHA256SUMS""#,
            r#"[[ "$actual" == "$published" ]] || die"#,
            r#"[[ "$actual" == "$pinned" ]] || die"#,
            r#"amd64) echo "19dac5642a2ba5305e6ff8efee06a708d760ebe4d1cd7936bc3dc526f477dc12" ;;"#,
            r#"arm64) echo "902e44260fcd9297af7042fb33ccd5a29cc2202b57199724f17c96fcd67414d2" ;;"#,
            r#"fetch "$dir" "$sums.sig""#,
            r#"gpgv --keyring "$dir/hashicorp.gpg" "$dir/$sums.sig" "$dir/$sums""#,
            r#"install -m 0755 -o root -g root "$work/nomad" "$NOMAD_BIN""#,
            r#"readonly NOMAD_BIN="/usr/local/bin/nomad""#,
        ] {
            assert!(ud.contains(needle), "no `{needle}` in:\n{ud}");
        }
        // The SSM reads with the instance role, and the files they make.
        for needle in [
            r#"aws ssm get-parameter --region "$AWS_REGION" --name "$1" --with-decryption"#,
            r#"readonly AWS_REGION="eu-central-1""#,
            r#"ca_pem="$(ssm_get "/infrastructure/certificates/ca-caCertificate")""#,
            r#"cert_pem="$(ssm_get "/infrastructure/certificates/nomad-server-eu-west-1-Certificate")""#,
            r#"key_pem="$(ssm_get "/infrastructure/certificates/nomad-server-eu-west-1-PrivateKey")""#,
            r#"write_file "/opt/nomad/tls/ca.pem" 0644 "root:$NOMAD_USER""#,
            r#"write_file "/opt/nomad/tls/server.pem" 0644 "root:$NOMAD_USER""#,
            r#"write_file "/opt/nomad/tls/server-key.pem" 0640 "root:$NOMAD_USER""#,
            r#"install -d -m 0700 -o "$NOMAD_USER" -g "$NOMAD_USER" "/opt/nomad/data""#,
            r#"write_file "/opt/nomad/config/server.hcl" 0640 "root:$NOMAD_USER""#,
            "systemctl enable --now nomad.service",
        ] {
            assert!(ud.contains(needle), "no `{needle}` in:\n{ud}");
        }
        // The config and unit are embedded verbatim (quoted heredocs).
        let hcl = render_server_hcl(&inputs()).unwrap();
        assert!(ud.contains(&format!(
            "<<'EDGECTL_SERVER_HCL'\n{}\nEDGECTL_SERVER_HCL\n",
            hcl.trim_end()
        )));
        let unit = render_unit().unwrap();
        assert!(ud.contains(&format!(
            "<<'EDGECTL_NOMAD_UNIT'\n{}\nEDGECTL_NOMAD_UNIT\n",
            unit.trim_end()
        )));
    }

    #[test]
    fn user_data_without_pins_checks_the_signed_sums_file_only() {
        let mut i = inputs();
        i.nomad_version = "1.10.5".into();
        i.nomad_sha256 = pinned_sha256("1.10.5");
        assert!(i.nomad_sha256.is_empty());
        let ud = render_user_data(&i).unwrap();
        assert!(ud.contains(r#"amd64) echo "" ;;"#), "{ud}");
        assert!(ud.contains("gpgv --keyring"));
        assert!(ud.contains(r#"[[ "$actual" == "$published" ]] || die"#));
    }

    #[test]
    fn user_data_passes_shellcheck() {
        let ud = render_user_data(&inputs()).unwrap();
        let out = std::process::Command::new("shellcheck")
            .args(["--shell=bash", "--severity=style", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().expect("piped").write_all(ud.as_bytes())?;
                child.wait_with_output()
            });
        let out = match out {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                panic!("shellcheck is not installed (apt-get install shellcheck): it checks the server user data")
            }
            Err(e) => panic!("running shellcheck: {e}"),
        };
        assert!(
            out.status.success(),
            "shellcheck found problems in the server user data:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Runs `cmd` with `GNUPGHOME`; panics with its output when it fails.
    fn gpg(home: &std::path::Path, args: &[&str]) -> Vec<u8> {
        let out = std::process::Command::new("gpg")
            .env("GNUPGHOME", home)
            .args([
                "--batch",
                "--quiet",
                "--pinentry-mode",
                "loopback",
                "--passphrase",
                "",
            ])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("gpg (apt-get install gnupg) checks the release key: {e}"));
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    fn sha256_hex(path: &std::path::Path) -> String {
        let out = std::process::Command::new("sha256sum")
            .arg(path)
            .output()
            .unwrap();
        String::from_utf8(out.stdout).unwrap()[..64].to_string()
    }

    /// A stand-in for releases.hashicorp.com signed by a key of the test's
    /// own, and a way to run the user data's `download_verified` against it
    /// (the script sourced, `curl` and optionally `release_key` replaced).
    struct Release {
        dir: tempfile::TempDir,
        gnupg: std::path::PathBuf,
    }

    impl Release {
        const ZIP: &'static str = "nomad_1.11.3_linux_amd64.zip";
        const SUMS: &'static str = "nomad_1.11.3_SHA256SUMS";

        fn new() -> Release {
            let dir = tempfile::tempdir().unwrap();
            let gnupg = dir.path().join("gnupg");
            std::fs::create_dir(&gnupg).unwrap();
            std::fs::set_permissions(&gnupg, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
            gpg(
                &gnupg,
                &[
                    "--quick-gen-key",
                    "edgectl test release <test@invalid>",
                    "ed25519",
                    "sign",
                    "never",
                ],
            );
            let key = gpg(&gnupg, &["--export"]);
            let b64 = std::process::Command::new("base64")
                .arg("-w0")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(&key)?;
                    c.wait_with_output()
                })
                .unwrap();
            std::fs::write(dir.path().join("test-key.b64"), b64.stdout).unwrap();
            let rel = dir.path().join("release/1.11.3");
            std::fs::create_dir_all(&rel).unwrap();
            std::fs::write(rel.join(Self::ZIP), b"not really a zip").unwrap();
            let r = Release { dir, gnupg };
            let sums = format!("{}  {}\n", r.zip_sha256(), Self::ZIP);
            r.write_sums(&sums, true);
            r
        }

        fn rel(&self) -> std::path::PathBuf {
            self.dir.path().join("release/1.11.3")
        }

        fn zip_sha256(&self) -> String {
            sha256_hex(&self.rel().join(Self::ZIP))
        }

        /// Writes SHA256SUMS; signs it when `sign`, else keeps the old signature.
        fn write_sums(&self, sums: &str, sign: bool) {
            let path = self.rel().join(Self::SUMS);
            std::fs::write(&path, sums).unwrap();
            if sign {
                let sig = self.rel().join(format!("{}.sig", Self::SUMS));
                let _ = std::fs::remove_file(&sig);
                gpg(
                    &self.gnupg,
                    &[
                        "--detach-sign",
                        "-o",
                        sig.to_str().unwrap(),
                        path.to_str().unwrap(),
                    ],
                );
            }
        }

        /// `download_verified` of the user data rendered with `pins`:
        /// Ok(printed path) or Err(stderr).
        fn download(&self, pins: BTreeMap<String, String>, test_key: bool) -> Result<String, String> {
            let mut i = inputs();
            i.nomad_sha256 = pins;
            let script = self.dir.path().join("user-data.sh");
            std::fs::write(&script, render_user_data(&i).unwrap()).unwrap();
            let work = tempfile::tempdir_in(self.dir.path()).unwrap();
            let driver = format!(
                r#"source {script:?}
curl() {{
  local out="" url=""
  while [[ $# -gt 0 ]]; do
    case "$1" in --output) out="$2"; shift 2 ;; *) url="$1"; shift ;; esac
  done
  cp "{release}/${{url#https://releases.hashicorp.com/nomad/}}" "$out"
}}
{key}
download_verified {work:?} amd64
"#,
                release = self.dir.path().join("release").display(),
                key = if test_key {
                    format!(
                        "release_key() {{ base64 -d {:?}; }}",
                        self.dir.path().join("test-key.b64")
                    )
                } else {
                    String::new()
                },
                work = work.path(),
            );
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(driver)
                .output()
                .unwrap();
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
            } else {
                Err(String::from_utf8_lossy(&out.stderr).into_owned())
            }
        }
    }

    impl Drop for Release {
        fn drop(&mut self) {
            // The agent gpg started for this home; ours to stop.
            let _ = std::process::Command::new("gpgconf")
                .env("GNUPGHOME", &self.gnupg)
                .args(["--kill", "gpg-agent"])
                .output();
        }
    }

    #[test]
    fn download_is_accepted_only_when_signed_and_matching() {
        let r = Release::new();
        let pin = |sum: &str| -> BTreeMap<String, String> {
            ARCHES.iter().map(|a| (a.to_string(), sum.to_string())).collect()
        };
        let good = r.zip_sha256();

        // signed_and_pinned
        let path = r
            .download(pin(&good), true)
            .expect("a signed, pinned zip is accepted");
        assert!(path.ends_with(Release::ZIP), "{path}");
        // signed_no_pin (a version edgectl pins nothing for)
        r.download(BTreeMap::new(), true)
            .expect("signed sums suffice without a pin");
        // pin_mismatch
        let e = r.download(pin(&"0".repeat(64)), true).unwrap_err();
        assert!(e.contains("edgectl pins"), "{e}");
        // not_hashicorps_key: the embedded HashiCorp key refuses our signature
        let e = r.download(pin(&good), false).unwrap_err();
        assert!(e.contains("is not signed by HashiCorp's release key"), "{e}");
        // sums_edited_after_signing
        let forged = format!("{}  {}\n", "1".repeat(64), Release::ZIP);
        r.write_sums(&forged, false);
        let e = r.download(BTreeMap::new(), true).unwrap_err();
        assert!(e.contains("is not signed"), "{e}");
        // zip_differs_from_signed_sums
        r.write_sums(&forged, true);
        let e = r.download(BTreeMap::new(), true).unwrap_err();
        assert!(
            e.contains(&format!("{} says {}", Release::SUMS, "1".repeat(64))),
            "{e}"
        );
        // zip_missing_from_sums
        r.write_sums("abc  nomad_1.11.3_linux_arm64.zip\n", true);
        let e = r.download(BTreeMap::new(), true).unwrap_err();
        assert!(e.contains("lists no nomad_1.11.3_linux_amd64.zip"), "{e}");
    }

    #[test]
    fn embedded_release_key_is_hashicorps() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("user-data.sh");
        std::fs::write(&script, render_user_data(&inputs()).unwrap()).unwrap();
        // What the script hands gpgv, decoded by the script itself.
        let keyring = dir.path().join("key.gpg");
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(format!("source {script:?}; release_key > {keyring:?}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let home = dir.path().join("gnupg");
        std::fs::create_dir(&home).unwrap();
        let listing = String::from_utf8(gpg(
            &home,
            &["--with-colons", "--show-keys", keyring.to_str().unwrap()],
        ))
        .unwrap();
        let fprs: Vec<&str> = listing
            .lines()
            .filter_map(|l| l.strip_prefix("fpr:"))
            .map(|l| l.trim_matches(':'))
            .collect();
        assert_eq!(
            fprs,
            [
                RELEASE_KEY_FINGERPRINT,
                "374EC75B485913604A831CC7C820C6D5CD27AB87"
            ],
            "{listing}"
        );
    }

    #[test]
    fn default_version_is_the_tested_one_and_pinned() {
        let env = include_str!("../../tests/versions.env");
        let tested = env
            .lines()
            .find_map(|l| l.strip_prefix("NOMAD_VERSION="))
            .expect("NOMAD_VERSION in tests/versions.env");
        assert_eq!(tested.trim().trim_start_matches('v'), DEFAULT_NOMAD_VERSION);
        let pins = pinned_sha256(DEFAULT_NOMAD_VERSION);
        assert_eq!(pins.keys().map(String::as_str).collect::<Vec<_>>(), ARCHES);
    }

    #[test]
    fn render_refuses_drift_between_template_and_values() {
        assert_eq!(render("t", "a {{x}} b", &[("x", "1")]).unwrap(), "a 1 b");
        // A value is not scanned again.
        assert_eq!(render("t", "{{x}}", &[("x", "{{y}}")]).unwrap(), "{{y}}");
        let err = |t: &str, v: &[(&str, &str)]| format!("{:#}", render("t", t, v).unwrap_err());
        assert!(err("a {{y}}", &[]).contains("no value for `{{y}}`"));
        assert!(err("{{x}}", &[("x", "1"), ("z", "2")]).contains("value `z` has no placeholder"));
        assert!(err("{{ x }}", &[("x", "1")]).contains("malformed placeholder"));
        assert!(err("{{x", &[("x", "1")]).contains("without"));
    }

    #[test]
    fn inputs_that_would_break_the_files_are_refused() {
        type Case = (&'static str, fn(&mut ServerConfigInputs), &'static str);
        let cases: &[Case] = &[
            (
                "tag_with_space",
                |i| i.discovery_tag_value = "a b".into(),
                "discovery_tag_value",
            ),
            (
                "quote_in_region",
                |i| i.nomad_region = "eu\"".into(),
                "nomad_region",
            ),
            (
                "empty_lb",
                |i| i.advertise_addr.clear(),
                "advertise_addr is empty",
            ),
            (
                "shell_in_version",
                |i| i.nomad_version = "1.0$(x)".into(),
                "nomad_version",
            ),
            ("zero_servers", |i| i.instance_count = 0, "instance_count"),
            (
                "bad_sha",
                |i| {
                    i.nomad_sha256.insert("amd64".into(), "XY".into());
                },
                "sha256 for amd64",
            ),
            (
                "bad_arch",
                |i| {
                    i.nomad_sha256.insert("mips".into(), "0".repeat(64));
                },
                "`mips`",
            ),
        ];
        for (name, edit, want) in cases {
            let mut i = inputs();
            edit(&mut i);
            let e = format!("{:#}", render_user_data(&i).unwrap_err());
            assert!(e.contains(want), "{name}: {e}");
        }
    }
}
