//! What a Nomad client device must have (REFERENCE "Edge device"), as a
//! desired state for the engine: packages, the nomad user and group,
//! directories, certificates, binaries, configuration and the unit.

use super::identity::{AMAZON_ROOT_PATH, CA_PATH, CERT_DIR, CERT_PATH};
use super::state::{Content, Dir, File, Handler, HostSpec, Unit, User};
use crate::cloud::server_config::{pinned_sha256, render};
use crate::config::inventory::{Host, Runtime};
use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};

const CLIENT_HCL: &str = include_str!("../../templates/nomad-client.hcl");
const UNIT: &str = include_str!("../../templates/nomad-client.service");
const AMAZON_ROOT_CA1: &str = include_str!("../../templates/AmazonRootCA1.pem");

pub const NOMAD_BIN: &str = "/usr/bin/nomad";
pub const SIGNING_HELPER_BIN: &str = "/usr/bin/aws_signing_helper";
pub const CONFIG_FILE: &str = "/opt/nomad/config/nomad.hcl";
pub const UNIT_FILE: &str = "/etc/systemd/system/nomad.service";
pub const UNIT_NAME: &str = "nomad.service";
pub const CREDENTIALS_FILE: &str = "/root/aws/credentials";
pub const DOCKER_CONFIG: &str = "/root/.docker/config.json";
/// Debian's containernetworking-plugins install here.
pub const CNI_PATH: &str = "/usr/lib/cni";

/// The aws_signing_helper release edgectl downloads by default, with the
/// SHA256 sums AWS publishes in the IAM Roles Anywhere user guide.
pub const SIGNING_HELPER_VERSION: &str = "1.4.0";
const SIGNING_HELPER_SHA256: &[(&str, &str)] = &[
    (
        "amd64",
        "4166504134ffd368023b50a2c6f960d22e9be06ad4b4d03ecd9e647bf9d9a17b",
    ),
    (
        "arm64",
        "37d0ba5f8fecae8922424625541aaef38697ed44c20f729f4be62af7c0c0d324",
    ),
];

/// The Go/release name of a `uname -m` architecture.
pub fn release_arch(uname_m: &str) -> Result<&'static str> {
    Ok(match uname_m {
        "x86_64" | "amd64" => "amd64",
        "aarch64" | "arm64" => "arm64",
        "armv7l" | "armv6l" | "armhf" => "arm",
        other => bail!("unsupported architecture `{other}` (edgectl knows x86_64, aarch64, armv7l)"),
    })
}

/// Where a binary comes from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `--artifacts DIR`: streamed from the operator's machine.
    Artifacts(PathBuf),
    /// The official release, downloaded on the device.
    Release,
}

/// The deployment's values every device shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub nomad_region: String,
    pub aws_region: String,
    pub nomad_version: String,
    /// Default `retry_join` (the load balancer), unless the host says otherwise.
    pub servers: Vec<String>,
    /// The PCA's certificate chain: ca.pem.
    pub ca_pem: String,
    pub roles_anywhere: Option<RolesAnywhere>,
    pub source: Source,
}

#[derive(Debug, Clone)]
pub struct RolesAnywhere {
    pub trust_anchor_arn: String,
    pub profile_arn: String,
    pub role_arn: String,
    /// CreateSession endpoint other than the region's (`rolesanywhere_endpoint` var).
    pub endpoint: Option<String>,
}

/// A binary chosen for one architecture.
#[derive(Debug, Clone)]
pub struct Binary {
    pub content: Content,
    /// A version string the installed binary prints (`Nomad v1.11.3`),
    /// when the source is a release: an installed binary of that version
    /// is left alone.
    pub version: Option<String>,
}

/// Picks nomad and aws_signing_helper for `arch` from the source. With
/// artifacts, `DIR/linux_<arch>/<name>` wins over `DIR/<name>`.
pub fn binaries(
    shared: &Shared,
    arch: &str,
    need_helper: bool,
    sums: &mut ShaCache,
) -> Result<(Binary, Option<Binary>)> {
    match &shared.source {
        Source::Artifacts(dir) => {
            let nomad = artifact(dir, arch, "nomad", sums)?;
            let helper = if need_helper {
                Some(artifact(dir, arch, "aws_signing_helper", sums)?)
            } else {
                None
            };
            Ok((nomad, helper))
        }
        Source::Release => {
            let v = &shared.nomad_version;
            let Some(sum) = pinned_sha256(v).remove(arch) else {
                bail!(
                    "edgectl has no pinned checksum for nomad {v} on linux_{arch}; give the binary with `--artifacts DIR`"
                );
            };
            let nomad = Binary {
                content: Content::Download {
                    url: format!("https://releases.hashicorp.com/nomad/{v}/nomad_{v}_linux_{arch}.zip"),
                    sha256: sum,
                    unzip_member: Some("nomad".into()),
                    installed_sha256: None,
                    stale: None,
                },
                version: Some(format!("Nomad v{v}")),
            };
            let helper = if need_helper {
                let Some((_, sum)) = SIGNING_HELPER_SHA256.iter().find(|(a, _)| *a == arch) else {
                    bail!(
                        "AWS publishes no aws_signing_helper for linux_{arch}; build it and give it with `--artifacts DIR`"
                    );
                };
                let dir = if arch == "amd64" { "X86_64" } else { "Aarch64" };
                Some(Binary {
                    content: Content::Download {
                        url: format!(
                            "https://rolesanywhere.amazonaws.com/releases/{SIGNING_HELPER_VERSION}/{dir}/Linux/aws_signing_helper"
                        ),
                        sha256: sum.to_string(),
                        unzip_member: None,
                        installed_sha256: None,
                    stale: None,
                    },
                    version: Some(SIGNING_HELPER_VERSION.into()),
                })
            } else {
                None
            };
            Ok((nomad, helper))
        }
    }
}

/// sha256 of artifact files, computed once per run however many hosts.
#[derive(Debug, Default)]
pub struct ShaCache(std::collections::BTreeMap<PathBuf, String>);

impl ShaCache {
    fn get(&mut self, path: &Path) -> Result<String> {
        if let Some(s) = self.0.get(path) {
            return Ok(s.clone());
        }
        use sha2::Digest;
        use std::io::Read;
        let mut f = std::fs::File::open(path).with_context(|| format!("reading {}", path.display()))?;
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f
                .read(&mut buf)
                .with_context(|| format!("reading {}", path.display()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        let sum: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        self.0.insert(path.to_path_buf(), sum.clone());
        Ok(sum)
    }
}

fn artifact(dir: &Path, arch: &str, name: &str, sums: &mut ShaCache) -> Result<Binary> {
    let per_arch = dir.join(format!("linux_{arch}")).join(name);
    let path = if per_arch.is_file() {
        per_arch
    } else {
        dir.join(name)
    };
    if !path.is_file() {
        return Err(crate::error::User::new(
            format!(
                "--artifacts {}: no `{name}` (looked for linux_{arch}/{name} and {name})",
                dir.display()
            ),
            format!("put the linux_{arch} `{name}` binary there"),
        )
        .into());
    }
    let sha256 = sums.get(&path)?;
    Ok(Binary {
        content: Content::Local { path, sha256 },
        version: None,
    })
}

/// The device's desired state. `device_pem`: the certificate and chain the
/// device must hold (the current one when no renewal is due).
pub fn spec(
    host: &Host,
    shared: &Shared,
    device_pem: &str,
    nomad: Binary,
    helper: Option<Binary>,
) -> Result<HostSpec> {
    let restart = || vec![Handler::Restart(UNIT_NAME.into())];
    let docker = host.container_runtime == Runtime::Docker;
    let mut s = HostSpec {
        packages: vec!["ca-certificates".into(), "containernetworking-plugins".into()],
        ..HostSpec::default()
    };
    if matches!(shared.source, Source::Release) {
        s.packages.push("unzip".into());
    }
    if docker {
        s.packages
            .extend(["docker.io".into(), "amazon-ecr-credential-helper".into()]);
    }
    s.groups = vec!["nomad".into()];
    s.users = vec![
        User {
            name: "nomad".into(),
            group: Some("nomad".into()),
            groups: vec![],
            system: true,
        },
        User {
            name: "nobody".into(),
            group: None,
            groups: vec!["nomad".into()],
            system: true,
        },
    ];
    let dir = |path: &str, owner: &str, group: &str, mode| Dir {
        path: path.into(),
        owner: owner.into(),
        group: group.into(),
        mode,
    };
    s.dirs = vec![
        dir(CERT_DIR, "root", "root", 0o755),
        dir("/opt/nomad", "root", "root", 0o755),
        dir("/opt/nomad/data", "nomad", "nomad", 0o755),
        dir("/opt/nomad/config", "root", "nomad", 0o755),
        // Nomad refuses to start when a host volume's path is missing.
        dir("/root/aws", "root", "root", 0o755),
    ];
    let file = |path: &str, content: Content, owner: &str, group: &str, mode, notify| File {
        path: path.into(),
        content,
        owner: owner.into(),
        group: group.into(),
        mode,
        notify,
    };
    s.files = vec![
        file(
            CA_PATH,
            Content::Text(pem_text(&shared.ca_pem)),
            "root",
            "root",
            0o400,
            restart(),
        ),
        file(
            AMAZON_ROOT_PATH,
            Content::Text(AMAZON_ROOT_CA1.into()),
            "root",
            "root",
            0o400,
            vec![],
        ),
        file(
            CERT_PATH,
            Content::Text(device_pem.into()),
            "nomad",
            "nomad",
            0o440,
            restart(),
        ),
        file(NOMAD_BIN, nomad.content, "root", "root", 0o755, restart()),
        file(
            CONFIG_FILE,
            Content::Text(client_hcl(host, shared)?),
            "root",
            "nomad",
            0o644,
            restart(),
        ),
        file(
            UNIT_FILE,
            Content::Text(UNIT.into()),
            "root",
            "root",
            0o644,
            vec![Handler::DaemonReload, Handler::Restart(UNIT_NAME.into())],
        ),
    ];
    if let (Some(helper), Some(ra)) = (
        helper,
        shared.roles_anywhere.as_ref().filter(|_| host.aws_credentials),
    ) {
        s.files.push(file(
            SIGNING_HELPER_BIN,
            helper.content,
            "root",
            "root",
            0o755,
            vec![],
        ));
        s.files.push(file(
            CREDENTIALS_FILE,
            Content::Text(credentials(&shared.aws_region, ra)),
            "root",
            "nomad",
            0o644,
            vec![],
        ));
    }
    if docker {
        s.dirs.push(dir("/root/.docker", "root", "root", 0o700));
        s.files.push(file(
            DOCKER_CONFIG,
            Content::Text("{\"credsStore\": \"ecr-login\"}\n".into()),
            "root",
            "root",
            0o600,
            vec![],
        ));
    }
    s.units = vec![Unit {
        name: UNIT_NAME.into(),
        enabled: true,
        started: true,
    }];
    Ok(s)
}

fn pem_text(pem: &str) -> String {
    format!("{}\n", pem.trim_end())
}

/// The AWS shared credentials file: the SDKs run the signing helper.
pub fn credentials(aws_region: &str, ra: &RolesAnywhere) -> String {
    let endpoint = ra
        .endpoint
        .as_ref()
        .map(|e| format!(" --endpoint {e}"))
        .unwrap_or_default();
    format!(
        "[default]\nregion={aws_region}\ncredential_process = {SIGNING_HELPER_BIN} credential-process \
         --certificate {CERT_PATH} --private-key {key} --trust-anchor-arn {ta} --profile-arn {p} \
         --role-arn {r}{endpoint}\n",
        key = super::identity::KEY_PATH,
        ta = ra.trust_anchor_arn,
        p = ra.profile_arn,
        r = ra.role_arn,
    )
}

/// nomad.hcl for `host`. Every value is checked before it lands inside an
/// HCL string.
pub fn client_hcl(host: &Host, shared: &Shared) -> Result<String> {
    let servers = host
        .nomad_servers
        .clone()
        .unwrap_or_else(|| shared.servers.clone());
    if servers.is_empty() {
        bail!(
            "{}: no Nomad server address (the load balancer output is missing, and no `nomad_servers` var)",
            host.name
        );
    }
    for v in servers
        .iter()
        .chain([&host.datacenter, &shared.nomad_region, &host.name])
    {
        if v.chars()
            .any(|c| c == '"' || c == '\\' || c == '$' || c.is_control())
        {
            bail!("{}: `{v}` cannot go into nomad.hcl", host.name);
        }
    }
    let servers = servers
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ");
    let node_class = match &host.node_class {
        Some(c) if c.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) => {
            format!("  node_class        = \"{c}\"\n")
        }
        Some(c) => bail!(
            "{}: nomad_node_class `{c}` may hold letters, digits, - _ . only",
            host.name
        ),
        None => String::new(),
    };
    let options = match host.vars.get("nomad_fingerprint_denylist") {
        Some(list)
            if list
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ",_.-".contains(c)) =>
        {
            format!("\n  options {{\n    \"fingerprint.denylist\" = \"{list}\"\n  }}\n")
        }
        Some(list) => bail!(
            "{}: nomad_fingerprint_denylist `{list}` is not a comma-separated list of names",
            host.name
        ),
        None => String::new(),
    };
    let plugins = match host.container_runtime {
        Runtime::Docker => "\n# Images from the deployment's ECR through the credential helper.\n\
             plugin \"docker\" {\n  config {\n    auth {\n      helper = \"ecr-login\"\n    }\n\n    \
             volumes {\n      enabled = true\n    }\n  }\n}\n"
            .to_string(),
        // A device without a container runtime runs its tasks with raw_exec.
        Runtime::None => "\nplugin \"raw_exec\" {\n  config {\n    enabled = true\n  }\n}\n".to_string(),
    };
    render(
        "nomad-client.hcl",
        CLIENT_HCL,
        &[
            ("name", &host.name),
            ("datacenter", &host.datacenter),
            ("region", &shared.nomad_region),
            ("cni_path", CNI_PATH),
            ("node_class", &node_class),
            ("servers", &servers),
            ("options", &options),
            ("plugins", &plugins),
        ],
    )
}
