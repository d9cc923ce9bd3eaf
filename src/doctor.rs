//! `edgectl doctor`: can this machine run edgectl? A fixed list of checks
//! (region, AWS credentials, deployment.json, the SSM outputs, Nomad, the
//! clock, SSH to each device), each observed once and reported as a value.
//! One failing check never stops the others; a check whose prerequisite
//! failed is skipped, saying which one.
//!
//! Observing is async and lives in [`run`]; deciding (`outputs_check`,
//! `clock_check`, `leader_check`) and rendering ([`render`]) are pure.

use crate::config::inventory::Host;
use crate::device::ssh;
use crate::error::hints;
use crate::nomad::client::{self, Client};
use crate::outputs;
use crate::secret::Secret;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Clock skew above this fails the check; Roles Anywhere refuses
/// signatures beyond 5 minutes, so this leaves room.
pub const MAX_SKEW: Duration = Duration::from_secs(60);

/// How many devices are dialled at once.
const SSH_PARALLEL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Fail,
    /// Not run because a check it needs failed (the detail says which).
    Skip,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub name: String,
    /// False only for a failure; a skipped check is no failure by itself
    /// (the one that caused it is).
    pub ok: bool,
    pub status: Status,
    pub detail: String,
    pub hint: Option<String>,
}

impl Check {
    pub fn pass(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            status: Status::Ok,
            detail: detail.into(),
            hint: None,
        }
    }

    pub fn fail(name: impl Into<String>, detail: impl Into<String>, hint: Option<String>) -> Check {
        Check {
            name: name.into(),
            ok: false,
            status: Status::Fail,
            detail: detail.into(),
            hint,
        }
    }

    pub fn skip(name: impl Into<String>, detail: impl Into<String>) -> Check {
        Check {
            name: name.into(),
            ok: true,
            status: Status::Skip,
            detail: detail.into(),
            hint: None,
        }
    }
}

/// The whole report: what `--output json` serializes.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
}

impl Report {
    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }
}

/// Everything `doctor` needs, resolved once by main.
pub struct Settings {
    pub aws: crate::aws::AwsSettings,
    pub config: PathBuf,
    pub deployment: String,
    /// `NOMAD_*`, or why they could not be read.
    pub nomad: Result<Option<crate::nomad::NomadSettings>, String>,
    pub inventory: PathBuf,
    pub ssh: ssh::Options,
    pub local_user: String,
    pub home: PathBuf,
}

/// The outputs `cloud up` leaves in SSM, as (label, parameter name).
fn output_names(ca_chain: &str) -> Vec<(&'static str, String)> {
    vec![
        ("PCA ARN", outputs::PCA_ARN.to_string()),
        ("CA chain", ca_chain.to_string()),
        ("trust anchor", outputs::TRUST_ANCHOR_ARN.to_string()),
        ("profile", outputs::PROFILE_ARN.to_string()),
        ("role", outputs::ROLE_ARN.to_string()),
        ("Nomad endpoint", outputs::NOMAD_ENDPOINT.to_string()),
        ("CI token", outputs::NOMAD_CI_TOKEN.to_string()),
    ]
}

/// Which outputs are there. Split in two: the foundation (`pca`,
/// `roles-anywhere`) and the control plane (ingress, acl), so a deployment
/// that only has its foundation says exactly that.
pub fn outputs_check(ca_chain: &str, present: &dyn Fn(&str) -> bool) -> Vec<Check> {
    let names = output_names(ca_chain);
    let (foundation, control) = names.split_at(5);
    let one = |name: &str, part: &[(&'static str, String)], only: &str| {
        let missing: Vec<String> = part
            .iter()
            .filter(|(_, p)| !present(p))
            .map(|(label, p)| format!("{label} (`{p}`)"))
            .collect();
        if missing.is_empty() {
            Check::pass(
                name,
                format!(
                    "{} present",
                    part.iter().map(|(l, _)| *l).collect::<Vec<_>>().join(", ")
                ),
            )
        } else {
            Check::fail(
                name,
                format!("missing: {}", missing.join(", ")),
                Some(format!("run `edgectl cloud up{only}` first")),
            )
        }
    };
    vec![
        one("outputs: foundation", foundation, " --only pca,roles-anywhere"),
        one("outputs: control plane", control, ""),
    ]
}

/// `/v1/status/leader` answers `"10.0.1.5:4647"`, or `""` without a leader.
pub fn leader_check(addr: &str, answer: Result<String, (String, Option<String>)>) -> Check {
    match answer {
        Ok(leader) if !leader.trim().is_empty() => Check::pass("nomad", format!("{addr}: leader {leader}")),
        Ok(_) => Check::fail(
            "nomad",
            format!("{addr} answers but has no leader"),
            Some(
                "the servers have not elected one: check them with `edgectl cloud status --only servers`"
                    .into(),
            ),
        ),
        Err((e, hint)) => Check::fail(
            "nomad",
            e,
            Some(hint.unwrap_or_else(|| {
                "check NOMAD_ADDR (unset it to use the load balancer from SSM), or run `edgectl cloud up`"
                    .into()
            })),
        ),
    }
}

/// `local` and `server` in seconds since the epoch; `source` names where
/// the server time came from.
pub fn clock_check(local: i64, server: Option<i64>, source: &str) -> Check {
    let Some(server) = server else {
        return Check::skip("clock", format!("{source} sent no Date header to compare with"));
    };
    let skew = local - server;
    let ahead = if skew >= 0 { "ahead of" } else { "behind" };
    let detail = format!("{}s {ahead} {source}", skew.abs());
    if skew.unsigned_abs() <= MAX_SKEW.as_secs() {
        Check::pass("clock", detail)
    } else {
        Check::fail(
            "clock",
            detail,
            Some(
                "synchronise the clock (`timedatectl set-ntp true`); Roles Anywhere refuses signatures \
                 more than 5 minutes off"
                    .into(),
            ),
        )
    }
}

/// An HTTP date (`Mon, 23 Nov 2026 17:16:45 GMT`, RFC 7231's IMF-fixdate)
/// as seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, clock, "GMT"] = parts[..] else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == month)? as u8 + 1;
    let month = time::Month::try_from(month).ok()?;
    let date = time::Date::from_calendar_date(year.parse().ok()?, month, day.parse().ok()?).ok()?;
    let hms: Vec<u8> = clock.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let [h, m, sec] = hms[..] else { return None };
    let t = time::Time::from_hms(h, m, sec).ok()?;
    Some(
        time::PrimitiveDateTime::new(date, t)
            .assume_utc()
            .unix_timestamp(),
    )
}

/// How each status is drawn: symbols on a colour terminal, words otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Symbols,
    Ascii,
}

/// One line per check, then `hint:` under each failure, then a summary.
pub fn render(report: &Report, style: Style) -> String {
    let mark = |s: Status| match (style, s) {
        (Style::Symbols, Status::Ok) => "\x1b[32m✓\x1b[0m",
        (Style::Symbols, Status::Fail) => "\x1b[31m✗\x1b[0m",
        (Style::Symbols, Status::Skip) => "\x1b[2m-\x1b[0m",
        (Style::Ascii, Status::Ok) => "ok  ",
        (Style::Ascii, Status::Fail) => "FAIL",
        (Style::Ascii, Status::Skip) => "skip",
    };
    let width = report
        .checks
        .iter()
        .map(|c| c.name.chars().count())
        .max()
        .unwrap_or(0);
    let mut s = String::new();
    for c in &report.checks {
        // A detail of several lines keeps its own column.
        let detail = c.detail.replace('\n', &format!("\n{:pad$}", "", pad = width + 7));
        s.push_str(format!("{} {:width$}  {detail}", mark(c.status), c.name).trim_end());
        s.push('\n');
        if let (Status::Fail, Some(h)) = (c.status, &c.hint) {
            s.push_str(&format!("  hint: {h}\n"));
        }
    }
    let failed = report.checks.iter().filter(|c| c.status == Status::Fail).count();
    s.push('\n');
    s.push_str(&if failed == 0 {
        format!("All {} checks passed.", report.checks.len())
    } else {
        format!("{failed} of {} checks failed.", report.checks.len())
    });
    s
}

/// Runs every check. SSH runs alongside the AWS and Nomad checks.
pub async fn run(s: &Settings) -> Report {
    let (mut checks, ssh) = tokio::join!(cloud_checks(s), ssh_checks(s));
    checks.extend(ssh);
    Report { checks }
}

/// Region, credentials, config, outputs, Nomad, clock, in that order;
/// each skipped when what it needs failed.
async fn cloud_checks(s: &Settings) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
    if let Some(p) = &s.aws.profile {
        loader = loader.profile_name(p);
    }
    if let Some(r) = &s.aws.region {
        loader = loader.region(aws_config::Region::new(r.clone()));
    }
    if let Some(u) = &s.aws.endpoint_url {
        loader = loader.endpoint_url(u);
    }
    let sdk = loader.load().await;

    // The deployment config needs no AWS: it is checked whatever AWS says.
    let (config, config_check) = match crate::config::deployment::load(&s.config) {
        Ok(loaded) => (
            Some(loaded.deployment),
            Check::pass("deployment config", s.config.display().to_string()),
        ),
        Err(e) => (
            None,
            Check::fail(
                "deployment config",
                e.problems.join("\n"),
                Some("write deployment.json (see the README), or point `--config` at it".into()),
            ),
        ),
    };

    let Some(region) = sdk.region().map(|r| r.to_string()) else {
        checks.push(Check::fail(
            "region",
            "no AWS region configured",
            Some("pass `--region eu-west-1` or set `AWS_REGION`".into()),
        ));
        checks.push(Check::skip("aws credentials", "needs a region"));
        checks.push(config_check);
        for name in ["outputs", "nomad", "clock"] {
            checks.push(Check::skip(name, "needs a region"));
        }
        return checks;
    };
    checks.push(Check::pass("region", region.clone()));

    let date = Arc::new(Mutex::new(None));
    let sts = aws_sdk_sts::Client::new(&sdk);
    let identity = sts
        .get_caller_identity()
        .customize()
        .interceptor(DateHeader(date.clone()))
        .send()
        .await;
    let local = time::OffsetDateTime::now_utc().unix_timestamp();
    let account = match identity {
        Ok(id) => {
            let account = id.account.unwrap_or_default();
            checks.push(Check::pass(
                "aws credentials",
                format!("account {account} as {}", id.arn.unwrap_or_default()),
            ));
            checks.push(config_check);
            account
        }
        Err(e) => {
            checks.push(Check::fail(
                "aws credentials",
                format!("STS GetCallerIdentity in {region}: {}", crate::aws::describe(&e)),
                Some("check your AWS credentials (`AWS_PROFILE`, `--profile`) and `--endpoint-url`".into()),
            ));
            checks.push(config_check);
            for name in ["outputs", "nomad"] {
                checks.push(Check::skip(name, "needs AWS credentials"));
            }
            // A service that answered (even "denied") still told the time.
            checks.push(clock_from(local, &date));
            return checks;
        }
    };

    let Some(config) = config else {
        for name in ["outputs", "nomad"] {
            checks.push(Check::skip(name, "needs deployment config"));
        }
        checks.push(clock_from(local, &date));
        return checks;
    };
    let store = outputs::Store::new(&sdk, &region, &s.deployment);
    let ctx = crate::cloud::Ctx {
        aws: crate::aws::Aws {
            config: sdk.clone(),
            region: region.clone(),
            account,
        },
        deployment: s.deployment.clone(),
        config,
        outputs: store,
        nomad: s.nomad.clone().ok().flatten(),
    };
    let chain = crate::cloud::pca::ca_chain_param(&ctx);
    let (cert, key) = crate::cloud::pca::Leaf::Cli.params(&ctx);
    let mut names: Vec<String> = output_names(&chain).into_iter().map(|(_, p)| p).collect();
    names.extend([cert, key]);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    match ctx.outputs.read(&refs).await {
        Ok(params) => {
            checks.extend(outputs_check(&chain, &|p| params.contains_key(p)));
            checks.push(nomad_check(&ctx, s, &params).await);
        }
        Err(e) => {
            checks.push(Check::fail(
                "outputs",
                format!("{e:#}"),
                Some("the credentials need ssm:GetParameters on /infrastructure/*".into()),
            ));
            checks.push(Check::skip("nomad", "needs the outputs"));
        }
    }
    checks.push(clock_from(local, &date));
    checks
}

fn clock_from(local: i64, date: &Mutex<Option<String>>) -> Check {
    let header = date.lock().expect("not poisoned").clone();
    clock_check(local, header.as_deref().and_then(parse_http_date), "AWS STS")
}

async fn nomad_check(ctx: &crate::cloud::Ctx, s: &Settings, params: &BTreeMap<String, Secret>) -> Check {
    if let Err(e) = &s.nomad {
        return Check::fail(
            "nomad",
            e.clone(),
            Some("fix or unset the NOMAD_* variable named".into()),
        );
    }
    let url = match crate::cloud::acl::target(ctx, params) {
        Ok(Some(u)) => u,
        Ok(None) => {
            return Check::fail(
                "nomad",
                format!(
                    "no address: NOMAD_ADDR is unset and `{}` is missing",
                    outputs::NOMAD_ENDPOINT
                ),
                Some("run `edgectl cloud up`, or set NOMAD_ADDR".into()),
            )
        }
        Err(e) => return Check::fail("nomad", format!("{e:#}"), Some("fix NOMAD_ADDR".into())),
    };
    let addr = url.as_str().trim_end_matches('/').to_string();
    let Some(tls) = crate::cloud::acl::tls(ctx, params, &url) else {
        return Check::fail(
            "nomad",
            format!("{addr}: no CA to check the server with (NOMAD_CACERT unset, CA chain missing in SSM)"),
            Some("run `edgectl cloud up --only pca`, or set NOMAD_CACERT".into()),
        );
    };
    let answer = match Client::new(&url, &tls).await {
        // A check reports what it sees now: one attempt.
        Ok(c) => {
            c.with_retry(client::Retry::once())
                .get::<String>("/v1/status/leader")
                .await
        }
        Err(e) => Err(e),
    };
    let answer = answer.map_err(|e| {
        let hint = hints(&e).into_iter().next().or_else(|| {
            client::is_unreachable(&e).then(|| {
                if ctx.nomad.as_ref().is_some_and(|n| n.addr.is_some()) {
                    "nothing answers at NOMAD_ADDR: check it, or unset it to use the load balancer from SSM"
                        .to_string()
                } else {
                    "the load balancer does not answer: check `edgectl cloud status --only ingress,servers`"
                        .to_string()
                }
            })
        });
        (format!("{e:#}"), hint)
    });
    leader_check(&addr, answer)
}

/// Records the `Date` header of the answer (the clock check's reference).
#[derive(Debug)]
struct DateHeader(Arc<Mutex<Option<String>>>);

impl aws_sdk_sts::config::Intercept for DateHeader {
    fn name(&self) -> &'static str {
        "DateHeader"
    }

    fn read_before_deserialization(
        &self,
        context: &aws_sdk_sts::config::interceptors::BeforeDeserializationInterceptorContextRef<'_>,
        _: &aws_sdk_sts::config::RuntimeComponents,
        _: &mut aws_sdk_sts::config::ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(d) = context.response().headers().get("date") {
            *self.0.lock().expect("not poisoned") = Some(d.to_string());
        }
        Ok(())
    }
}

/// One check per device when the inventory exists (connect only; the host
/// key is checked against known_hosts), bounded, in inventory order.
async fn ssh_checks(s: &Settings) -> Vec<Check> {
    use futures::StreamExt;
    if !s.inventory.exists() {
        return Vec::new();
    }
    let inv = match crate::config::inventory::load(&s.inventory, &s.local_user, &s.home) {
        Ok(inv) => inv,
        Err(e) => {
            return vec![Check::fail(
                "inventory",
                format!("{e:#}"),
                hints(&e).into_iter().next(),
            )]
        }
    };
    futures::stream::iter(inv.hosts)
        .map(|h| {
            let opts = s.ssh.clone();
            async move { ssh_check(&h, &opts).await }
        })
        .buffered(SSH_PARALLEL)
        .collect()
        .await
}

async fn ssh_check(host: &Host, opts: &ssh::Options) -> Check {
    let target = ssh::Target {
        name: host.name.clone(),
        host: host.address.clone(),
        port: host.port,
        user: host.user.clone(),
        key_file: host.key_file.clone(),
    };
    let name = format!("ssh {}", host.name);
    match ssh::Session::connect(&target, opts).await {
        Ok(session) => {
            session.close().await;
            Check::pass(name, format!("{}@{}:{}", host.user, host.address, host.port))
        }
        Err(e) => Check::fail(name, format!("{e:#}"), hints(&e).into_iter().next()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(checks: Vec<Check>) -> Report {
        Report { checks }
    }

    #[test]
    fn doctor_outputs_all_missing_names_each_and_hints_cloud_up() {
        let checks = outputs_check("/infrastructure/certificates/ca", &|_| false);
        assert_eq!(checks.len(), 2);
        assert!(checks.iter().all(|c| c.status == Status::Fail));
        assert!(
            checks[0].detail.contains("PCA ARN (`/infrastructure/pca/arn`)"),
            "{:?}",
            checks[0]
        );
        assert!(checks[0]
            .detail
            .contains("CA chain (`/infrastructure/certificates/ca`)"));
        assert!(checks[1].detail.contains("CI token"));
        assert!(checks[0].hint.as_deref().unwrap().contains("`edgectl cloud up"));
    }

    #[test]
    fn doctor_outputs_foundation_only() {
        let checks = outputs_check("/ca", &|p| !p.starts_with("/infrastructure/nomad/"));
        assert_eq!(checks[0].status, Status::Ok, "{:?}", checks[0]);
        assert_eq!(checks[1].status, Status::Fail);
        assert_eq!(
            checks[1].detail,
            "missing: Nomad endpoint (`/infrastructure/nomad/endpoint`), CI token (`/infrastructure/nomad/token/ci`)"
        );
    }

    #[test]
    fn doctor_clock_cases() {
        assert_eq!(clock_check(1000, Some(1000), "AWS STS").status, Status::Ok);
        let ahead = clock_check(1060, Some(1000), "AWS STS");
        assert_eq!(
            (ahead.status, ahead.detail.as_str()),
            (Status::Ok, "60s ahead of AWS STS")
        );
        let behind = clock_check(1000, Some(1400), "AWS STS");
        assert_eq!(behind.status, Status::Fail);
        assert_eq!(behind.detail, "400s behind AWS STS");
        assert!(behind.hint.unwrap().contains("5 minutes"));
        assert_eq!(clock_check(1000, None, "AWS STS").status, Status::Skip);
    }

    #[test]
    fn doctor_http_date() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:10 GMT"), Some(10));
        assert_eq!(
            parse_http_date("Mon, 23 Nov 2026 17:16:45 GMT"),
            Some(1_795_454_205)
        );
        assert_eq!(parse_http_date("Mon, 23 Nov 2026 17:16:45 +0100"), None);
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Mon, 31 Feb 2026 00:00:00 GMT"), None);
    }

    #[test]
    fn doctor_leader_cases() {
        assert_eq!(
            leader_check("https://a:4646", Ok("10.0.0.1:4647".into())).status,
            Status::Ok
        );
        let none = leader_check("https://a:4646", Ok(String::new()));
        assert_eq!(none.status, Status::Fail);
        assert!(none.detail.contains("no leader"));
        let down = leader_check("https://a:4646", Err(("connection refused".into(), None)));
        assert_eq!(down.status, Status::Fail);
        assert!(down.hint.unwrap().contains("NOMAD_ADDR"));
    }

    #[test]
    fn doctor_render_ascii_has_no_escapes_and_hints_only_failures() {
        let r = report(vec![
            Check::pass("region", "eu-west-1"),
            Check::fail("aws credentials", "denied", Some("check `AWS_PROFILE`".into())),
            Check::skip("nomad", "needs AWS credentials"),
            Check::fail("inventory", "a.yml: one\na.yml: two", None),
        ]);
        let text = render(&r, Style::Ascii);
        assert!(!text.contains('\x1b'), "{text}");
        assert_eq!(
            text,
            "ok   region           eu-west-1\n\
             FAIL aws credentials  denied\n  hint: check `AWS_PROFILE`\n\
             skip nomad            needs AWS credentials\n\
             FAIL inventory        a.yml: one\n                      a.yml: two\n\n\
             2 of 4 checks failed."
        );
        assert!(!r.passed());
        let sym = render(&r, Style::Symbols);
        assert!(sym.contains('✓') && sym.contains('✗'), "{sym}");
    }

    #[test]
    fn doctor_passed_ignores_skips_without_failures() {
        let r = report(vec![Check::pass("a", "x"), Check::skip("clock", "no Date")]);
        assert!(r.passed());
        assert!(render(&r, Style::Ascii).ends_with("All 2 checks passed."));
    }

    #[test]
    fn doctor_json_shape() {
        let v = serde_json::to_value(report(vec![Check::fail(
            "clock",
            "400s behind",
            Some("h".into()),
        )]))
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"checks": [{"name": "clock", "ok": false, "status": "fail", "detail": "400s behind", "hint": "h"}]})
        );
    }
}
