//! Test certificate authorities.
//!
//! `TestCa` is a root CA inside moto's ACM PCA, made exactly as edgectl makes
//! one in real AWS (CSR → self-issued root via the RootCACertificate/V1
//! template → import → ACTIVE). It gives real certificates for TLS between
//! real Nomad agents and for the Roles Anywhere simulator. `ForeignCa` is a
//! local CA that moto knows nothing about, for "wrong CA is refused" tests.

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use aws_config::SdkConfig;
use aws_sdk_acmpca::error::ProvideErrorMetadata;
use aws_sdk_acmpca::primitives::Blob;
use aws_sdk_acmpca::types::{
    Asn1Subject, CertificateAuthorityConfiguration, CertificateAuthorityStatus, CertificateAuthorityType,
    KeyAlgorithm, SigningAlgorithm, Validity, ValidityPeriodType,
};
use aws_sdk_acmpca::Client;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SignatureAlgorithm,
};

const ROOT_TEMPLATE: &str = "arn:aws:acm-pca:::template/RootCACertificate/V1";
const END_ENTITY_TEMPLATE: &str = "arn:aws:acm-pca:::template/EndEntityCertificate/V1";

/// A root CA in moto's ACM PCA, ACTIVE, with its certificate imported.
pub struct TestCa {
    pub arn: String,
    pub cert_pem: String,
}

/// A certificate with its private key.
pub struct Issued {
    pub cert_pem: String,
    /// The issuing chain up to the root (for a `TestCa`: the root itself).
    pub chain_pem: String,
    /// PKCS#8 PEM.
    pub key_pem: String,
    /// Lowercase hex, no separators, no leading zeros (as `openssl x509
    /// -serial` prints it, lowercased).
    pub serial_hex: String,
}

impl TestCa {
    /// Creates and activates a root CA (RSA_2048, SHA256WITHRSA) named `common_name`.
    pub async fn create(cfg: &SdkConfig, common_name: &str) -> anyhow::Result<TestCa> {
        let pca = Client::new(cfg);
        let config = CertificateAuthorityConfiguration::builder()
            .key_algorithm(KeyAlgorithm::Rsa2048)
            .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
            .subject(Asn1Subject::builder().common_name(common_name).build())
            .build()
            .context("building the CA configuration")?;
        let arn = pca
            .create_certificate_authority()
            .certificate_authority_type(CertificateAuthorityType::Root)
            .certificate_authority_configuration(config)
            .send()
            .await
            .context("CreateCertificateAuthority")?
            .certificate_authority_arn
            .context("CreateCertificateAuthority returned no ARN")?;

        // Real AWS creates the CA key asynchronously; the CSR is there when it is done.
        let csr = retry_in_progress("GetCertificateAuthorityCsr", || async {
            pca.get_certificate_authority_csr()
                .certificate_authority_arn(&arn)
                .send()
                .await
        })
        .await?
        .csr
        .context("GetCertificateAuthorityCsr returned no CSR")?;

        let cert_arn = pca
            .issue_certificate()
            .certificate_authority_arn(&arn)
            .csr(Blob::new(csr))
            .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
            .template_arn(ROOT_TEMPLATE)
            .validity(validity(ValidityPeriodType::Years, 10)?)
            .send()
            .await
            .context("IssueCertificate (root CA certificate)")?
            .certificate_arn
            .context("IssueCertificate returned no certificate ARN")?;
        let (cert_pem, _) = get_certificate(&pca, &arn, &cert_arn).await?;

        pca.import_certificate_authority_certificate()
            .certificate_authority_arn(&arn)
            .certificate(Blob::new(cert_pem.as_bytes()))
            .send()
            .await
            .context("ImportCertificateAuthorityCertificate")?;
        let status = pca
            .describe_certificate_authority()
            .certificate_authority_arn(&arn)
            .send()
            .await
            .context("DescribeCertificateAuthority")?
            .certificate_authority
            .and_then(|ca| ca.status);
        if status != Some(CertificateAuthorityStatus::Active) {
            bail!("CA {arn} is {status:?} after importing its certificate, not ACTIVE");
        }
        Ok(TestCa { arn, cert_pem })
    }

    /// Issues an end-entity certificate for a new RSA-2048 key.
    pub async fn issue(
        &self,
        cfg: &SdkConfig,
        cn: &str,
        dns_sans: &[&str],
        ip_sans: &[IpAddr],
    ) -> anyhow::Result<Issued> {
        self.issue_for(cfg, &rcgen::PKCS_RSA_SHA256, cn, dns_sans, ip_sans)
            .await
    }

    /// Issues an end-entity certificate for a new ECDSA P-256 key.
    pub async fn issue_ec(
        &self,
        cfg: &SdkConfig,
        cn: &str,
        dns_sans: &[&str],
        ip_sans: &[IpAddr],
    ) -> anyhow::Result<Issued> {
        self.issue_for(cfg, &rcgen::PKCS_ECDSA_P256_SHA256, cn, dns_sans, ip_sans)
            .await
    }

    async fn issue_for(
        &self,
        cfg: &SdkConfig,
        alg: &'static SignatureAlgorithm,
        cn: &str,
        dns_sans: &[&str],
        ip_sans: &[IpAddr],
    ) -> anyhow::Result<Issued> {
        let key = KeyPair::generate_for(alg).context("generating a key")?;
        let csr = leaf_params(cn, dns_sans, ip_sans)?
            .serialize_request(&key)
            .and_then(|r| r.pem())
            .context("building the CSR")?;
        let pca = Client::new(cfg);
        let cert_arn = pca
            .issue_certificate()
            .certificate_authority_arn(&self.arn)
            .csr(Blob::new(csr))
            // The CA's key is RSA, so this is about the CA, whatever the leaf key is.
            .signing_algorithm(SigningAlgorithm::Sha256Withrsa)
            .template_arn(END_ENTITY_TEMPLATE)
            .validity(validity(ValidityPeriodType::Days, 365)?)
            .send()
            .await
            .with_context(|| format!("IssueCertificate for {cn}"))?
            .certificate_arn
            .context("IssueCertificate returned no certificate ARN")?;
        let (cert_pem, chain_pem) = get_certificate(&pca, &self.arn, &cert_arn).await?;
        Ok(Issued {
            serial_hex: serial_hex(&cert_pem)?,
            cert_pem,
            chain_pem: chain_pem.unwrap_or_else(|| self.cert_pem.clone()),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A self-signed RSA root CA that exists only here, not in moto.
pub struct ForeignCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
}

impl ForeignCa {
    pub fn new(cn: &str) -> ForeignCa {
        let key = KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("generating an RSA key");
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        set_validity(&mut params, 3650);
        let cert_pem = params
            .self_signed(&key)
            .expect("self-signing the foreign CA")
            .pem();
        ForeignCa {
            issuer: Issuer::new(params, key),
            cert_pem,
        }
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a certificate for a new RSA-2048 key, shaped like moto's
    /// (serverAuth+clientAuth), so only the issuer tells it apart.
    pub fn issue(&self, cn: &str, dns_sans: &[&str], ip_sans: &[IpAddr]) -> Issued {
        self.issue_for(&rcgen::PKCS_RSA_SHA256, cn, dns_sans, ip_sans)
    }

    /// As `issue`, for a new ECDSA P-256 key.
    pub fn issue_ec(&self, cn: &str, dns_sans: &[&str], ip_sans: &[IpAddr]) -> Issued {
        self.issue_for(&rcgen::PKCS_ECDSA_P256_SHA256, cn, dns_sans, ip_sans)
    }

    fn issue_for(
        &self,
        alg: &'static SignatureAlgorithm,
        cn: &str,
        dns_sans: &[&str],
        ip_sans: &[IpAddr],
    ) -> Issued {
        let key = KeyPair::generate_for(alg).expect("generating a key");
        let mut params = leaf_params(cn, dns_sans, ip_sans).expect("valid names");
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        set_validity(&mut params, 365);
        let cert_pem = params
            .signed_by(&key, &self.issuer)
            .expect("signing with the foreign CA")
            .pem();
        Issued {
            serial_hex: serial_hex(&cert_pem).expect("rcgen writes parseable certificates"),
            cert_pem,
            chain_pem: self.cert_pem.clone(),
            key_pem: key.serialize_pem(),
        }
    }
}

/// Subject CN plus DNS and IP SANs, for CSRs and local certificates alike.
fn leaf_params(cn: &str, dns_sans: &[&str], ip_sans: &[IpAddr]) -> anyhow::Result<CertificateParams> {
    let dns: Vec<String> = dns_sans.iter().map(|s| s.to_string()).collect();
    let mut params = CertificateParams::new(dns).context("invalid DNS SAN")?;
    params.distinguished_name.push(DnType::CommonName, cn);
    params
        .subject_alt_names
        .extend(ip_sans.iter().map(|ip| SanType::IpAddress(*ip)));
    Ok(params)
}

/// Valid from an hour ago (clock skew between us and the verifier) for `days`.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(days);
}

fn validity(kind: ValidityPeriodType, value: i64) -> anyhow::Result<Validity> {
    Validity::builder()
        .r#type(kind)
        .value(value)
        .build()
        .context("building a validity")
}

/// GetCertificate, waiting while real AWS is still issuing: (cert, chain).
async fn get_certificate(
    pca: &Client,
    ca_arn: &str,
    cert_arn: &str,
) -> anyhow::Result<(String, Option<String>)> {
    let out = retry_in_progress("GetCertificate", || async {
        pca.get_certificate()
            .certificate_authority_arn(ca_arn)
            .certificate_arn(cert_arn)
            .send()
            .await
    })
    .await?;
    let cert = out
        .certificate
        .with_context(|| format!("GetCertificate {cert_arn} returned no certificate"))?;
    Ok((cert, out.certificate_chain))
}

/// Runs `op` again while it fails with RequestInProgressException (ACM PCA's
/// "not ready yet"), for up to ~30 s; any other error ends it at once.
async fn retry_in_progress<T, E, F, Fut>(what: &str, mut op: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    for _ in 0..60 {
        match op().await {
            Err(e) if e.code() == Some("RequestInProgressException") => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            other => return other.with_context(|| what.to_string()),
        }
    }
    bail!("{what}: still RequestInProgressException after 30 s")
}

fn serial_hex(cert_pem: &str) -> anyhow::Result<String> {
    let (_, pem) =
        x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).context("the certificate is not PEM")?;
    let cert = pem.parse_x509().context("the certificate is not X.509")?;
    Ok(cert.tbs_certificate.serial.to_str_radix(16))
}
