//! A device's identity: its own key, made on the device, and a certificate
//! for it from the deployment's private CA (CN = device name, serialNumber =
//! the device's UUID, SANs `client.<region>.nomad`, `localhost`, 127.0.0.1).
//! The private key never reaches the operator's disk: with openssl on the
//! device it never leaves the device; without, it is made in memory and
//! streamed to the device over SSH.

use crate::aws::{code, SdkResultExt};
use crate::pki::{self, Identity};
use crate::secret::Secret;
use anyhow::{bail, Context, Result};
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{SigningAlgorithm, Validity, ValidityPeriodType};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

pub const CERT_DIR: &str = "/root/certificates";
pub const KEY_PATH: &str = "/root/certificates/device-key.pem";
pub const CERT_PATH: &str = "/root/certificates/device.pem";
pub const CA_PATH: &str = "/root/certificates/ca.pem";
pub const AMAZON_ROOT_PATH: &str = "/root/certificates/AmazonRootCA1.pem";
/// Where a new key waits (0400, root) until its certificate is issued; on
/// the same filesystem as the final path, so moving it in is a rename.
pub const NEW_KEY_PATH: &str = "/root/certificates/.device-key.pem.edgectl-new";
/// As the original sample: device certificates last five years.
pub const VALIDITY_DAYS: i64 = 5 * 365;
/// The device key and certificate are read by the nomad group (REFERENCE).
pub const OWNER: &str = "nomad";
pub const MODE: u32 = 0o440;

/// The names a device's certificate must carry.
pub fn identity(device: &str, uuid: &str, nomad_region: &str) -> Identity {
    Identity {
        common_name: device.to_string(),
        serial_number: Some(uuid.to_string()),
        dns: vec![format!("client.{nomad_region}.nomad"), "localhost".into()],
        ips: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
    }
}

/// What the device says about its key, from the facts exec.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFacts {
    /// sha256 of the key's SubjectPublicKeyInfo DER (needs openssl).
    pub spki_sha256: Option<String>,
    pub exists: bool,
    /// owner:group and octal mode, when it exists.
    pub owner: String,
    pub group: String,
    pub mode: u32,
}

/// Shell lines (run as root, inside the facts exec) that print `key\t…`
/// records parsed by [`parse_key_facts`].
pub fn key_facts_script() -> String {
    format!(
        r#"if [ -f {KEY_PATH} ]; then
  printf 'key\tstat\t%s\n' "$(stat -c '%U:%G:%a' {KEY_PATH})"
  if command -v openssl >/dev/null 2>&1; then
    printf 'key\tspki\t%s\n' "$(openssl pkey -in {KEY_PATH} -pubout -outform DER 2>/dev/null | sha256sum | cut -d' ' -f1)"
  fi
fi
"#
    )
}

/// Reads the `key\t…` lines of a facts output (other lines are ignored).
pub fn parse_key_facts(out: &str) -> Result<KeyFacts> {
    let mut k = KeyFacts::default();
    for line in out.lines() {
        let mut parts = line.splitn(3, '\t');
        if parts.next() != Some("key") {
            continue;
        }
        match (parts.next(), parts.next()) {
            (Some("stat"), Some(v)) => {
                let f: Vec<&str> = v.split(':').collect();
                let [owner, group, mode] = f[..] else {
                    bail!("device key facts: bad stat `{v}`");
                };
                k.exists = true;
                k.owner = owner.into();
                k.group = group.into();
                k.mode = u32::from_str_radix(mode, 8)
                    .with_context(|| format!("device key facts: mode `{mode}`"))?;
            }
            // sha256sum of nothing: openssl could not read the key.
            (Some("spki"), Some(v)) if v == EMPTY_SHA256 => {}
            (Some("spki"), Some(v)) if v.len() == 64 => k.spki_sha256 = Some(v.into()),
            _ => bail!("device key facts: unexpected line `{line}`"),
        }
    }
    Ok(k)
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Why the device needs a new certificate, or None. `cert_pem` is the
/// device's current device.pem (certificate first, then the chain).
pub fn renewal_reason(
    cert_pem: Option<&str>,
    key: &KeyFacts,
    ca_pem: &str,
    want: &Identity,
    now: i64,
    renew_within_days: i64,
) -> Option<String> {
    let Some(cert_pem) = cert_pem else {
        return Some("no certificate on the device".into());
    };
    if let Some(reason) = pki::cert_needs_reissue(cert_pem, Some(ca_pem), want, now, renew_within_days) {
        return Some(reason.into());
    }
    if !key.exists {
        return Some("private key missing on the device".into());
    }
    match (&key.spki_sha256, pki::facts(cert_pem)) {
        (Some(have), Ok(cert)) if *have != cert.spki_sha256 => {
            Some("private key does not match the certificate".into())
        }
        _ => None,
    }
}

/// A script that makes a P-256 key at NEW_KEY_PATH (0400, never printed)
/// and prints a CSR for `id` on stdout. Needs openssl ≥ 1.1.1 (-addext).
pub fn csr_script(id: &Identity) -> String {
    let mut subject = format!("/CN={}", id.common_name);
    if let Some(serial) = &id.serial_number {
        subject.push_str(&format!("/serialNumber={serial}"));
    }
    let mut sans: Vec<String> = id.dns.iter().map(|d| format!("DNS:{d}")).collect();
    sans.extend(id.ips.iter().map(|ip| format!("IP:{ip}")));
    format!(
        "set -e\ninstall -d -m 0755 {CERT_DIR}\numask 077\nrm -f {NEW_KEY_PATH}\n\
         openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
         -keyout {NEW_KEY_PATH} -subj {subject} -addext {san} -outform PEM 2>/dev/null\n",
        subject = sh_quote(&subject),
        san = sh_quote(&format!("subjectAltName=critical,{}", sans.join(","))),
    )
}

/// Moves the new key in place (made on the device, or `streamed` from
/// memory on stdin), owned and moded as REFERENCE says; then syncs.
pub fn install_key_script(streamed: bool) -> String {
    let write = if streamed {
        format!("install -d -m 0755 {CERT_DIR}\numask 077\ncat > {NEW_KEY_PATH}\n")
    } else {
        format!("test -s {NEW_KEY_PATH}\n")
    };
    format!(
        "set -e\n{write}chown {OWNER}:{OWNER} {NEW_KEY_PATH}\nchmod {MODE:o} {NEW_KEY_PATH}\n\
         sync {NEW_KEY_PATH}\nmv -f {NEW_KEY_PATH} {KEY_PATH}\nsync {CERT_DIR}\n"
    )
}

/// Fixes the key's owner and mode in place.
pub fn fix_key_mode_script() -> String {
    format!("set -e\nchown {OWNER}:{OWNER} {KEY_PATH}\nchmod {MODE:o} {KEY_PATH}\n")
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// A key and CSR made in memory, for a device without openssl.
pub fn csr_in_memory(id: &Identity) -> Result<(Secret, String)> {
    let made = pki::ec_csr(id)?;
    Ok((made.key_pem, made.csr_pem))
}

/// What the CA issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub arn: String,
    /// Certificate followed by its chain: the content of device.pem.
    pub pem_with_chain: String,
    pub serial_hex: String,
    pub not_after: i64,
}

/// Issues a certificate for `csr_pem` from the CA and waits (bounded) for
/// it. The idempotency token is the CSR's hash: a retried call returns the
/// same certificate instead of a twin.
pub async fn issue(
    client: &aws_sdk_acmpca::Client,
    ca_arn: &str,
    ca_chain: &str,
    device: &str,
    csr_pem: &str,
) -> Result<Issued> {
    let out = client
        .issue_certificate()
        .certificate_authority_arn(ca_arn)
        .csr(Blob::new(csr_pem.as_bytes()))
        .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
        .validity(
            Validity::builder()
                .value(VALIDITY_DAYS)
                .r#type(ValidityPeriodType::Days)
                .build()?,
        )
        .idempotency_token(pki::token(&[csr_pem]))
        .send()
        .await
        .op(|| format!("issuing the certificate of {device} from {ca_arn}"))?;
    let arn = out.certificate_arn.context("IssueCertificate returned no ARN")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    // The certificate and its chain: GetCertificate answers both; the
    // shared fetch gives the certificate, the chain is the CA's own.
    let cert = loop {
        match crate::cloud::pca::fetch_issued(client, ca_arn, &arn).await? {
            Some(cert) => break cert,
            None if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(500)).await,
            None => bail!("the CA did not issue the certificate of {device} ({arn}) within a minute"),
        }
    };
    let f = pki::facts(&cert).with_context(|| format!("the certificate issued for {device}"))?;
    Ok(Issued {
        arn,
        pem_with_chain: format!("{}\n{}\n", cert.trim_end(), ca_chain.trim_end()),
        serial_hex: f.serial_hex,
        not_after: f.not_after,
    })
}

/// Revokes a device certificate (deprovision). Already revoked counts as done.
pub async fn revoke(
    client: &aws_sdk_acmpca::Client,
    ca_arn: &str,
    serial_hex: &str,
    device: &str,
) -> Result<()> {
    let serial = colon_serial(serial_hex);
    match client
        .revoke_certificate()
        .certificate_authority_arn(ca_arn)
        .certificate_serial(serial)
        .revocation_reason(aws_sdk_acmpca::types::RevocationReason::CessationOfOperation)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if code(&e) == Some("RequestAlreadyProcessedException") => Ok(()),
        Err(e) => Err(e).op(|| format!("revoking the certificate of {device} ({serial_hex})")),
    }
}

/// A serial as ACM PCA prints it: the number in upper-case hex without
/// leading zeros, colon-separated in pairs from the left.
fn colon_serial(hex: &str) -> String {
    let digits = hex.trim_start_matches('0').to_ascii_uppercase();
    digits
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    #[test]
    fn serials_as_pca_prints_them() {
        assert_eq!(super::colon_serial("00a1b2c3"), "A1:B2:C3");
        assert_eq!(super::colon_serial("0a1b2"), "A1:B2");
        assert_eq!(super::colon_serial("0f1b2"), "F1:B2");
    }

    use super::*;

    #[test]
    fn key_facts_parse() {
        let out = format!(
            "pkg\tunzip\t6.0\nkey\tstat\tnomad:nomad:440\nkey\tspki\t{}\n",
            "a".repeat(64)
        );
        let k = parse_key_facts(&out).unwrap();
        assert!(k.exists);
        assert_eq!(
            (k.owner.as_str(), k.group.as_str(), k.mode),
            ("nomad", "nomad", 0o440)
        );
        assert_eq!(k.spki_sha256, Some("a".repeat(64)));
        // openssl failed to read the key: no fingerprint, not a match.
        let k = parse_key_facts(&format!("key\tstat\troot:root:600\nkey\tspki\t{EMPTY_SHA256}\n")).unwrap();
        assert_eq!(k.spki_sha256, None);
        assert!(parse_key_facts("key\tstat\tnomad:440\n").is_err());
        assert!(parse_key_facts("key\twhat\tx\n").is_err());
    }

    #[test]
    fn csr_script_quotes_names_and_keeps_the_key_private() {
        let id = identity("pi-01", "0f8b6f3c-1c1e-4c7e-9d0e-2d1b0f5b3a11", "eu-west-1");
        let s = csr_script(&id);
        assert!(s.contains("umask 077"), "{s}");
        assert!(
            s.contains("-subj '/CN=pi-01/serialNumber=0f8b6f3c-1c1e-4c7e-9d0e-2d1b0f5b3a11'"),
            "{s}"
        );
        assert!(
            s.contains("'subjectAltName=critical,DNS:client.eu-west-1.nomad,DNS:localhost,IP:127.0.0.1'"),
            "{s}"
        );
        assert!(s.contains(&format!("-keyout {NEW_KEY_PATH}")), "{s}");
    }

    #[test]
    fn install_moves_the_key_in_after_fixing_its_mode() {
        let s = install_key_script(false);
        let chmod = s.find("chmod 440").unwrap();
        let mv = s.find(&format!("mv -f {NEW_KEY_PATH} {KEY_PATH}")).unwrap();
        assert!(chmod < mv, "{s}");
        assert!(install_key_script(true).contains(&format!("cat > {NEW_KEY_PATH}")));
    }

    #[test]
    fn renewal_reasons() {
        let want = identity("pi-01", "u-1", "eu-west-1");
        let none = KeyFacts::default();
        assert_eq!(
            renewal_reason(None, &none, "", &want, 0, 30).as_deref(),
            Some("no certificate on the device")
        );
        assert_eq!(
            renewal_reason(Some("garbage"), &none, "", &want, 0, 30).as_deref(),
            Some("stored certificate does not parse")
        );
    }
}
