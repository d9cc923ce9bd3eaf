//! Command-line definitions only (clap). Each subcommand's help says what it
//! reads, what it changes and its exit codes.

use crate::output::Format;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "edgectl",
    version,
    about = "Stand up and run a containerised edge fleet on AWS: private CA, IAM Roles Anywhere, Nomad",
    long_about = "Stand up and run a containerised edge fleet on AWS.\n\n\
        Every subcommand is an idempotent reconciler: it observes what exists, shows the \
        difference, changes only that, and records its outputs in SSM Parameter Store \
        under /infrastructure/. A second run changes nothing.\n\n\
        Exit codes: 0 success, 1 runtime error, 2 invalid input (flags, deployment.json)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct Global {
    /// The deployment inputs (same fields as the original sample's deployment.json)
    #[arg(long, global = true, default_value = "deployment.json", value_name = "FILE")]
    pub config: PathBuf,
    /// AWS region (default: AWS_REGION or the profile's region)
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// AWS profile from ~/.aws/config (default: AWS_PROFILE)
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// Send every AWS request to this endpoint (local stand-ins such as moto)
    #[arg(long, global = true, env = "AWS_ENDPOINT_URL", value_name = "URL")]
    pub endpoint_url: Option<String>,
    /// Deployment name: the value of the `edgectl:deployment` tag on everything edgectl makes
    #[arg(long, global = true, default_value = "default", value_name = "NAME")]
    pub deployment: String,
    /// Output format: human tables on a terminal, or one JSON document (schema 1) for CI
    #[arg(long, global = true, value_enum, default_value = "human")]
    pub output: Format,
    /// More diagnostics on stderr (-v, -vv)
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The AWS side: private CA, IAM Roles Anywhere, the Nomad control plane and its ACLs
    #[command(subcommand)]
    Cloud(CloudCommand),
    /// Print the nomad CLI's environment for this deployment: `eval "$(edgectl env)"`.
    ///
    /// Reads the load balancer's name and the CA from SSM, writes the CA to
    /// `${XDG_CONFIG_HOME:-~/.config}/edgectl/<deployment>/ca.pem`, and prints
    /// `export NOMAD_ADDR=… NOMAD_CACERT=… NOMAD_TLS_SERVER_NAME=…`. With `--token`,
    /// also NOMAD_TOKEN (needs permission to read that SecureString).
    ///
    /// Examples:
    ///   eval "$(edgectl env)"
    ///   eval "$(edgectl env --token ci)"
    ///   edgectl env --client-cert --output json
    ///
    /// Exit codes: 0 success, 1 error (e.g. the control plane is not up), 2 invalid input.
    #[command(verbatim_doc_comment)]
    Env {
        /// Also export NOMAD_TOKEN: the CI token (submit-job) or the management token
        #[arg(long, value_enum)]
        token: Option<crate::nomad_env::TokenKind>,
        /// Also write the operator's CLI certificate and key (0600) and export
        /// NOMAD_CLIENT_CERT/NOMAD_CLIENT_KEY; a private key lands on this disk only then
        #[arg(long)]
        client_cert: bool,
    },
    /// Edge devices over SSH: make them mTLS Nomad clients, check them, retire them
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Nomad jobs from `jobs/<name>.nomad.hcl`: plan, run and follow the deployment, status, stop
    #[command(subcommand)]
    Job(JobCommand),
    /// Container images for the devices: build with docker buildx and push to ECR
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a shell completion script to stdout.
    ///
    /// Reads and changes nothing.
    ///
    /// Examples:
    ///   edgectl completions bash > ~/.local/share/bash-completion/completions/edgectl
    ///   edgectl completions zsh > "${fpath[1]}/_edgectl"
    ///   edgectl completions fish > ~/.config/fish/completions/edgectl.fish
    ///
    /// Exit codes: 0 success, 2 invalid input (an unknown shell).
    #[command(verbatim_doc_comment)]
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, or write one page per subcommand.
    ///
    /// Without --out-dir, the page of `edgectl` itself goes to stdout. With it,
    /// edgectl.1, edgectl-cloud.1, edgectl-cloud-up.1, ... are written into DIR
    /// (created if missing). Reads nothing else.
    ///
    /// Examples:
    ///   edgectl man | man -l -
    ///   edgectl man --out-dir /usr/local/share/man/man1
    ///
    /// Exit codes: 0 success, 1 error (DIR not writable), 2 invalid input.
    #[command(verbatim_doc_comment)]
    Man {
        /// Write edgectl.1 and one page per subcommand into this directory
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Check that this machine can run edgectl: AWS, SSM outputs, Nomad, clock, SSH.
    ///
    /// One line per check, and a hint for each failure:
    ///   region             a region is configured (--region, AWS_REGION, the profile)
    ///   aws credentials    STS GetCallerIdentity answers
    ///   deployment config  deployment.json (--config) reads and validates
    ///   outputs            the SSM outputs of `cloud up`: PCA ARN, CA chain,
    ///                      trust anchor, profile, role, Nomad endpoint, CI token
    ///   nomad              /v1/status/leader names a leader, over TLS with the CA
    ///                      (NOMAD_* variables when set, else the SSM outputs)
    ///   clock              local time against AWS's Date header; more than 60s off
    ///                      fails (Roles Anywhere refuses signatures beyond 5 minutes)
    ///   ssh <host>         when the inventory exists: each device accepts an SSH
    ///                      connection, host key checked against known_hosts
    /// Reads only; changes nothing (SSH connects and disconnects).
    ///
    /// Examples:
    ///   edgectl doctor
    ///   edgectl doctor -i inventory/lab.yml --known-hosts ./known_hosts
    ///   edgectl doctor --output json | jq '.checks[] | select(.ok == false)'
    ///
    /// Exit codes: 0 every check passed, 1 some failed, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Doctor {
        /// The inventory (Ansible YAML); its devices are checked only when it exists
        #[arg(
            long,
            short = 'i',
            default_value = "inventory/inventory.yml",
            value_name = "FILE"
        )]
        inventory: PathBuf,
        /// known_hosts file (default ~/.ssh/known_hosts)
        #[arg(long, value_name = "FILE")]
        known_hosts: Option<PathBuf>,
        /// Seconds to wait for a device to answer
        #[arg(long, default_value_t = 10, value_name = "SECS")]
        connect_timeout: u64,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the image for the devices and push it to its ECR repository.
    ///
    /// Needs docker with the buildx plugin on this machine (EDGECTL_DOCKER names
    /// another docker binary). Reads the repository URI from SSM
    /// (/infrastructure/ecr/<NAME>/uri, written by `edgectl cloud up --only registry`),
    /// gets a login token from ECR (GetAuthorizationToken), runs
    /// `docker login --username AWS --password-stdin <registry>` (the password goes
    /// to docker's stdin only), then
    /// `docker buildx build --platform <PLATFORM> -t <uri>:<TAG> --push <CONTEXT>`.
    /// Docker's output streams to stderr. Changes nothing in AWS besides the pushed
    /// image (and docker's stored login).
    ///
    /// Examples:
    ///   edgectl image publish iot-publish
    ///   edgectl image publish iot-publish --tag v2 --dry-run
    ///
    /// Exit codes: 0 pushed (or --dry-run), 1 error (docker or buildx missing, no
    /// repository in SSM, login or build failed: the message ends with docker's
    /// last line), 2 invalid input.
    #[command(verbatim_doc_comment)]
    Publish {
        /// The image: its repository output in SSM and its default build context
        name: String,
        /// Image tag to push
        #[arg(long, default_value = "latest")]
        tag: String,
        /// Target platform(s) for buildx
        #[arg(long, default_value = "linux/arm64")]
        platform: String,
        /// Build context (a directory with a Dockerfile); default jobs/NAME
        #[arg(long, value_name = "DIR")]
        context: Option<PathBuf>,
        /// Check docker and the repository, print the docker commands (password
        /// masked); log in, build and push nothing
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Show what running the job would change (the server's dry run); changes nothing.
    ///
    /// The Nomad server parses the file (with the variables) and diffs it against
    /// the registered job: `+` added, `-` deleted, `+/-` edited, with what the
    /// scheduler would do per group. Ends with the `edgectl job run --check-index N`
    /// that registers exactly this plan.
    /// Reaches Nomad at NOMAD_ADDR, else the load balancer in SSM; token NOMAD_TOKEN,
    /// else the CI token in SSM.
    ///
    /// Examples:
    ///   edgectl job plan iot-publish --tag v2
    ///   edgectl job plan jobs/heartbeat.nomad.hcl --var message=hi
    ///
    /// Exit codes (as `nomad job plan`): 0 no changes, 1 changes, 255 error
    /// (including invalid input).
    #[command(verbatim_doc_comment)]
    Plan {
        #[command(flatten)]
        source: JobSource,
    },
    /// Register the job and follow it until its deployment is healthy.
    ///
    /// The Nomad server parses the file (HCL2, `variable "image"` defaults to
    /// `<account>.dkr.ecr.<region>.amazonaws.com/iot-publish:<tag>`), then edgectl
    /// follows the evaluation and the deployment (blocking queries), reporting an
    /// auto-revert rollback. Records version, modify index, deployment and
    /// submission time under /infrastructure/jobs/<job>/ in SSM (only what changed).
    /// A placement failure stops the run at once (nomad would wait for the
    /// deployment's progress deadline).
    ///
    /// Examples:
    ///   edgectl job run iot-publish --tag v2
    ///   edgectl job run --check-index 0 iot-publish
    ///   edgectl job run jobs/heartbeat.nomad.hcl --var message=hi --detach
    ///
    /// Exit codes (as `nomad job run`): 0 deployed and healthy (or --detach),
    /// 1 error, failed deployment, timeout or invalid input, 2 placement failure.
    #[command(verbatim_doc_comment)]
    Run {
        #[command(flatten)]
        source: JobSource,
        /// Register only if the job's modify index is N (0: only if the job does not exist)
        #[arg(long, value_name = "N")]
        check_index: Option<u64>,
        /// Register and exit without following the evaluation and deployment
        #[arg(long)]
        detach: bool,
        /// Give up following after this long (e.g. 90s, 10m, 1h)
        #[arg(long, default_value = "10m", value_parser = parse_duration, value_name = "DURATION")]
        timeout: std::time::Duration,
    },
    /// The job's allocations (node, status, version) and its latest deployment.
    ///
    /// Examples:
    ///   edgectl job status iot-publish
    ///   edgectl job status iot-publish --output json
    ///
    /// Exit codes: 0 success, 1 error (e.g. the job is not registered), 2 invalid input.
    #[command(verbatim_doc_comment)]
    Status {
        /// The job's ID in Nomad
        name: String,
    },
    /// Stop the job (its allocations stop); with --purge Nomad also forgets it.
    ///
    /// Examples:
    ///   edgectl job stop iot-publish
    ///   edgectl job stop heartbeat --purge
    ///
    /// Exit codes: 0 stopped, 1 error (e.g. the job is not registered), 2 invalid input.
    #[command(verbatim_doc_comment)]
    Stop {
        /// The job's ID in Nomad
        name: String,
        /// Remove the job from Nomad, not only stop it
        #[arg(long)]
        purge: bool,
    },
}

#[derive(Debug, Args)]
pub struct JobSource {
    /// A job under --jobs-dir (`iot-publish` is `jobs/iot-publish.nomad.hcl`) or a path to an HCL file
    pub name: String,
    /// Set a variable the job declares (repeatable; wins over --var-file)
    #[arg(long = "var", value_name = "NAME=VALUE")]
    pub vars: Vec<String>,
    /// HCL file of variable values (repeatable)
    #[arg(long = "var-file", value_name = "FILE")]
    pub var_files: Vec<PathBuf>,
    /// Image tag for the default `image` variable
    #[arg(long, default_value = "latest")]
    pub tag: String,
    /// Where job names are looked up
    #[arg(long, default_value = "jobs", value_name = "DIR")]
    pub jobs_dir: PathBuf,
}

/// `90`, `90s`, `10m`, `1h`, `500ms`.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a duration such as 90s, 10m or 1h"))?;
    let secs = |k: u64| std::time::Duration::from_secs(n.saturating_mul(k));
    match unit {
        "" | "s" => Ok(secs(1)),
        "m" => Ok(secs(60)),
        "h" => Ok(secs(3600)),
        "ms" => Ok(std::time::Duration::from_millis(n)),
        _ => Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
    }
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// Make devices mTLS Nomad clients with their own certificate and AWS credentials.
    ///
    /// Reads the inventory (Ansible YAML), the CA, Roles Anywhere and load balancer
    /// outputs from SSM; connects to each device over SSH (host keys checked against
    /// known_hosts), observes it in one exec, and changes only what differs: packages,
    /// the nomad user, certificates (key made on the device), the Nomad and
    /// aws_signing_helper binaries, nomad.hcl, the unit. Nomad restarts only when
    /// something it reads changed. Devices run in parallel; one failing does not
    /// stop the others.
    ///
    /// Examples:
    ///   edgectl device provision pi-01
    ///   edgectl device provision --group robot1 --dry-run
    ///   edgectl device provision --all --artifacts ./bin --parallel 32
    ///   edgectl device provision --retry-failed
    ///
    /// Exit codes: 0 every device succeeded, 1 some failed, 2 invalid input
    /// (with --dry-run --detailed-exitcode: 0 no changes, 2 changes, 1 error).
    #[command(verbatim_doc_comment)]
    Provision {
        #[command(flatten)]
        select: DeviceSelect,
        #[command(flatten)]
        ssh: SshFlags,
        /// Show what would change on each device (file diffs, secrets masked); change nothing
        #[arg(long)]
        dry_run: bool,
        /// With --dry-run: exit 2 when some device would change
        #[arg(long, requires = "dry_run")]
        detailed_exitcode: bool,
        /// Upload nomad and aws_signing_helper from DIR (`DIR/linux_<arch>/<name>` or
        /// `DIR/<name>`) instead of downloading the official releases on the device
        #[arg(long, value_name = "DIR")]
        artifacts: Option<std::path::PathBuf>,
        /// Devices at once
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        parallel: u16,
        /// Re-run only the devices that failed in the last provision of this deployment
        #[arg(long, conflicts_with_all = ["names", "group", "all"])]
        retry_failed: bool,
        /// Nomad servers the devices join (host[:port], repeatable); default: the
        /// load balancer from SSM, or the host's `nomad_servers` var
        #[arg(long = "nomad-server", value_name = "ADDR")]
        nomad_servers: Vec<String>,
        /// Renew a device certificate that expires within this many days
        #[arg(long, default_value_t = 30, value_name = "DAYS")]
        renew_within: u32,
    },
    /// Per device: reachable, nomad active, certificate expiry, Nomad node status.
    ///
    /// Examples:
    ///   edgectl device status --all
    ///   edgectl device status pi-01 pi-02 --output json
    ///
    /// Exit codes: 0 every device is healthy, 1 some are not, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        select: DeviceSelect,
        #[command(flatten)]
        ssh: SshFlags,
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(1..=1024))]
        parallel: u16,
    },
    /// Retire devices: stop and disable nomad, remove edgectl's files and the key,
    /// revoke the certificate, purge the Nomad node, delete the SSM record.
    ///
    /// Examples:
    ///   edgectl device deprovision pi-03 --yes
    ///   edgectl device deprovision --group robot1
    ///
    /// Exit codes: 0 success, 1 error or refused confirmation, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Deprovision {
        #[command(flatten)]
        select: DeviceSelect,
        #[command(flatten)]
        ssh: SshFlags,
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Args)]
pub struct DeviceSelect {
    /// Devices by inventory name
    pub names: Vec<String>,
    /// Every device of this inventory group
    #[arg(long, conflicts_with = "names")]
    pub group: Option<String>,
    /// Every device in the inventory
    #[arg(long, conflicts_with_all = ["names", "group"])]
    pub all: bool,
    /// The inventory (Ansible YAML)
    #[arg(
        long,
        short = 'i',
        default_value = "inventory/inventory.yml",
        value_name = "FILE"
    )]
    pub inventory: std::path::PathBuf,
}

#[derive(Debug, Args)]
pub struct SshFlags {
    /// Record unknown host keys in known_hosts instead of refusing (a changed key is always refused)
    #[arg(long)]
    pub accept_new_host_keys: bool,
    /// known_hosts file (default ~/.ssh/known_hosts)
    #[arg(long, value_name = "FILE")]
    pub known_hosts: Option<std::path::PathBuf>,
    /// Seconds to wait for a device to answer
    #[arg(long, default_value_t = 10, value_name = "SECS")]
    pub connect_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum CloudCommand {
    /// Show what `up` would change; touches nothing.
    ///
    /// Reads deployment.json and the AWS account.
    ///
    /// Examples:
    ///   edgectl cloud plan
    ///   edgectl cloud plan --only pca,roles-anywhere --detailed-exitcode
    ///
    /// Exit codes: 0 success (with --detailed-exitcode: 0 no changes, 2 changes
    /// pending), 1 error, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Plan {
        /// Exit 2 when there are changes (as terraform's -detailed-exitcode)
        #[arg(long)]
        detailed_exitcode: bool,
        #[command(flatten)]
        only: Only,
    },
    /// Create or repair everything so AWS matches deployment.json.
    ///
    /// Components: pca (root CA, Nomad server and CLI certificates), roles-anywhere
    /// (trust anchor, device role, profile), network (VPC, subnets, NAT, security
    /// group), ingress (load balancer), servers (Nomad servers on EC2), auth (Cognito),
    /// acl (Nomad ACLs; reached at the load balancer, or at NOMAD_ADDR when set),
    /// registry (the ECR repository for `edgectl image publish`).
    /// Outputs go to SSM under /infrastructure/. Components that do not need each
    /// other apply at the same time. A second run prints "no changes" and makes no
    /// write call.
    ///
    /// Examples:
    ///   edgectl cloud up
    ///   edgectl cloud up --only pca,roles-anywhere
    ///   edgectl cloud up --deployment staging --region eu-central-1
    ///
    /// Exit codes: 0 success, 1 error, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Up {
        #[command(flatten)]
        only: Only,
    },
    /// Show each component's resources and outputs.
    ///
    /// Examples:
    ///   edgectl cloud status
    ///   edgectl cloud status --only servers --output json
    ///
    /// Exit codes: 0, 1 error, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Status {
        #[command(flatten)]
        only: Only,
    },
    /// Delete everything this deployment made (the CA is disabled, then deleted; the
    /// ECR repository goes with the images in it).
    ///
    /// Asks for confirmation unless --yes. A second run is a no-op.
    ///
    /// Examples:
    ///   edgectl cloud down
    ///   edgectl cloud down --only registry --yes
    ///
    /// Exit codes: 0 success, 1 error or refused confirmation, 2 invalid input.
    #[command(verbatim_doc_comment)]
    Down {
        /// Do not ask for confirmation
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        only: Only,
    },
}

#[derive(Debug, Args)]
pub struct Only {
    /// Only these components (comma-separated: pca, roles-anywhere, network, ingress,
    /// servers, auth, acl, registry), with the ones they need — for `down`, with the ones
    /// that need them
    #[arg(long, value_delimiter = ',', value_name = "COMPONENTS")]
    pub only: Option<Vec<String>>,
}

impl CloudCommand {
    pub fn only(&self) -> &Only {
        match self {
            CloudCommand::Plan { only, .. }
            | CloudCommand::Up { only }
            | CloudCommand::Status { only }
            | CloudCommand::Down { only, .. } => only,
        }
    }
}

impl Only {
    pub fn selection(&self) -> crate::cloud::Selection {
        crate::cloud::Selection(self.only.clone())
    }
}
