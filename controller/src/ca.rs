//! The controller's certificate authority.
//!
//! Owns `ca.pem`/`ca.key` and every certificate Navette issues: operator and
//! panel certificates (CLI), agent certificates (from a CSR at enrolment and
//! renewal, bound to one host id), and the controller's own serving and
//! client certificate. It also derives the key that authenticates join
//! tokens, so no token secret is ever stored.
//!
//! Roles are written into certificates only here; the subject and names
//! requested in a CSR are ignored.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use navette_proto::identity::{CONTROLLER_SERVER_NAME, Role, agent_server_name};
use navette_proto::tls::Identity;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;

/// Errors of the certificate authority.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no certificate authority in {dir}: run `navette-controller --config <file> ca init` first"
    )]
    Missing { dir: PathBuf },
    #[error(
        "{path} has mode {mode:04o}: the CA key must be readable by its owner only (anyone who can read it can make certificates for any host or operator); run `chmod 600 {path}`, check who could have read it, and start again"
    )]
    KeyExposed { path: PathBuf, mode: u32 },
    #[error("certificate authority in {dir} is unusable: {reason}")]
    Unusable { dir: PathBuf, reason: String },
    #[error("the certificate signing request is invalid: {0}")]
    BadCsr(rcgen::Error),
    #[error("issuing a certificate: {0}")]
    Issue(#[from] rcgen::Error),
    #[error("{0}")]
    Name(String),
}

/// A certificate just issued.
#[derive(Debug, Clone)]
pub struct Issued {
    pub certificate_pem: String,
    pub not_after: chrono::DateTime<chrono::Utc>,
    pub serial: String,
}

/// The Navette CA, loaded in memory.
pub struct CertificateAuthority {
    dir: PathBuf,
    certificate_pem: String,
    key: KeyPair,
    issuer_params: CertificateParams,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca.key";
/// How long the CA itself is valid: ten years.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Tolerated clock skew between hosts: certificates start this long ago.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// How far back a certificate's validity starts, for hosts whose clocks are
/// a little behind: five minutes, but never more than a tenth of the
/// lifetime, so that short-lived certificates are renewed on time (agents
/// renew two thirds into the validity period).
fn skew_allowance(lifetime: Duration) -> Duration {
    CLOCK_SKEW.min(lifetime / 10)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_owned(),
        source,
    }
}

fn offset(at: chrono::DateTime<chrono::Utc>) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(at.timestamp())
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn span(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// Writes `contents` to `path` atomically with the given mode.
pub fn write_private(path: &Path, contents: &[u8], mode: u32) -> Result<(), CaError> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io(&tmp))?;
    file.write_all(contents).map_err(io(&tmp))?;
    file.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

impl CertificateAuthority {
    /// Creates the CA in `dir` unless one is there. Returns the CA and
    /// whether it was created now.
    pub fn init(dir: &Path) -> Result<(CertificateAuthority, bool), CaError> {
        if dir.join(CA_CERT).exists() || dir.join(CA_KEY).exists() {
            return Ok((CertificateAuthority::load(dir)?, false));
        }
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = chrono::Utc::now();
        // A name of its own, so that a certificate from another Navette CA is
        // refused as "unknown issuer", not as a bad signature.
        let mut id = [0u8; 6];
        let _ = ring::rand::SystemRandom::new().fill(&mut id);
        let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
        let mut self_params = ca_params(&format!("Navette CA {id}"));
        self_params.not_before = offset(now - span(CLOCK_SKEW));
        self_params.not_after = offset(now + span(CA_LIFETIME));
        self_params.serial_number = Some(random_serial());
        let certificate = self_params.self_signed(&key)?;
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes(), 0o600)?;
        write_private(&dir.join(CA_CERT), certificate.pem().as_bytes(), 0o644)?;
        Ok((CertificateAuthority::load(dir)?, true))
    }

    /// Loads the CA from `dir`.
    pub fn load(dir: &Path) -> Result<CertificateAuthority, CaError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if !cert_path.exists() || !key_path.exists() {
            return Err(CaError::Missing {
                dir: dir.to_owned(),
            });
        }
        check_key_is_private(&key_path)?;
        let certificate_pem = std::fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
        let key_pem = std::fs::read_to_string(&key_path).map_err(io(&key_path))?;
        let unusable = |reason: String| CaError::Unusable {
            dir: dir.to_owned(),
            reason,
        };
        let key = KeyPair::from_pem(&key_pem).map_err(|e| unusable(format!("ca.key: {e}")))?;
        let (common_name, public_key) = read_ca_certificate(&certificate_pem).map_err(unusable)?;
        if public_key != rcgen::PublicKeyData::der_bytes(&key) {
            return Err(unusable("ca.key does not belong to ca.pem".to_owned()));
        }
        Ok(CertificateAuthority {
            dir: dir.to_owned(),
            certificate_pem,
            key,
            issuer_params: ca_params(&common_name),
        })
    }

    /// The CA certificate, PEM.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    /// Issues a certificate for `role` over `public_key`, valid from
    /// `not_before` to `not_after`. `dns_names` go into the SAN beside the
    /// role (IP addresses are recognised).
    pub fn issue(
        &self,
        role: &Role,
        common_name: &str,
        public_key: &impl rcgen::PublicKeyData,
        dns_names: &[String],
        not_before: chrono::DateTime<chrono::Utc>,
        not_after: chrono::DateTime<chrono::Utc>,
    ) -> Result<Issued, CaError> {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::OrganizationName, "Navette");
        name.push(DnType::CommonName, common_name);
        params.distinguished_name = name;
        params.not_before = offset(not_before);
        params.not_after = offset(not_after);
        let serial = random_serial();
        let serial_text = serial
            .to_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>();
        params.serial_number = Some(serial);
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let uri = role
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| CaError::Name(format!("role URI: {e}")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        for name in dns_names {
            params.subject_alt_names.push(san(name)?);
        }
        let issuer = Issuer::from_params(&self.issuer_params, &self.key);
        let certificate = params.signed_by(public_key, &issuer)?;
        Ok(Issued {
            certificate_pem: certificate.pem(),
            not_after,
            serial: serial_text,
        })
    }

    /// Issues a certificate and a fresh key for `role`, valid for `lifetime`
    /// from now. Returns (certificate, key) PEM.
    pub fn issue_with_new_key(
        &self,
        role: &Role,
        common_name: &str,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<(Issued, String), CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let now = chrono::Utc::now();
        let issued = self.issue(
            role,
            common_name,
            &key,
            dns_names,
            now - span(skew_allowance(lifetime)),
            now + span(lifetime),
        )?;
        Ok((issued, key.serialize_pem()))
    }

    /// Signs an agent's CSR: the certificate binds the CSR's key to `host_id`
    /// whatever the CSR asked for.
    pub fn sign_agent_csr(
        &self,
        host_id: &str,
        csr_pem: &str,
        lifetime: Duration,
    ) -> Result<Issued, CaError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(CaError::BadCsr)?;
        let now = chrono::Utc::now();
        self.issue(
            &Role::Agent {
                host_id: host_id.to_owned(),
            },
            &format!("navette-agent {host_id}"),
            &csr.public_key,
            &[agent_server_name(host_id)],
            now - span(skew_allowance(lifetime)),
            now + span(lifetime),
        )
    }

    /// A fresh serving and client identity for the controller itself.
    pub fn controller_identity(
        &self,
        server_names: &[String],
        lifetime: Duration,
    ) -> Result<(Identity, chrono::DateTime<chrono::Utc>), CaError> {
        let mut names = vec![CONTROLLER_SERVER_NAME.to_owned(), "localhost".to_owned()];
        for name in server_names {
            if !names.contains(name) {
                names.push(name.clone());
            }
        }
        let (issued, key_pem) =
            self.issue_with_new_key(&Role::Controller, "navette-controller", &names, lifetime)?;
        let chain = format!("{}{}", issued.certificate_pem, self.certificate_pem);
        let identity = Identity::from_pem(&chain, &key_pem, "controller certificate")
            .map_err(|e| CaError::Name(e.to_string()))?;
        Ok((identity, issued.not_after))
    }

    /// The key that authenticates join tokens, derived from the CA key so
    /// that token secrets are never stored.
    pub fn join_token_key(&self) -> ring::hmac::Key {
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"navette join tokens");
        let prk = salt.extract(&self.key.serialize_der());
        let mut bytes = [0u8; 32];
        if let Ok(okm) = prk.expand(&[b"v1"], ring::hkdf::HKDF_SHA256) {
            // 32 bytes is HKDF_SHA256's own length, so fill cannot fail.
            let _ = okm.fill(&mut bytes);
        }
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)
    }
}

/// Refuses a CA key that group or others may read or write.
fn check_key_is_private(path: &Path) -> Result<(), CaError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map_err(io(path))?
        .permissions()
        .mode()
        & 0o7777;
    if mode & 0o077 != 0 {
        return Err(CaError::KeyExposed {
            path: path.to_owned(),
            mode,
        });
    }
    Ok(())
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Navette");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

fn san(name: &str) -> Result<SanType, CaError> {
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let dns = name
        .to_owned()
        .try_into()
        .map_err(|e: rcgen::Error| CaError::Name(format!("server name {name:?}: {e}")))?;
    Ok(SanType::DnsName(dns))
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    // Positive, non-zero first byte: a well-formed 127-bit serial.
    bytes[0] = (bytes[0] & 0x7f) | 0x01;
    SerialNumber::from_slice(&bytes)
}

/// The common name of the CA certificate and its public key bits.
fn read_ca_certificate(pem: &str) -> Result<(String, Vec<u8>), String> {
    let certs =
        navette_proto::tls::certificates_from_pem(pem, "ca.pem").map_err(|e| e.to_string())?;
    let first = certs.first().ok_or("ca.pem holds no certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(first).map_err(|e| format!("ca.pem: {e}"))?;
    if !cert.is_ca() {
        return Err("ca.pem is not a CA certificate".to_owned());
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .ok_or("ca.pem has no common name")?
        .to_owned();
    Ok((
        common_name,
        cert.public_key().subject_public_key.data.to_vec(),
    ))
}

/// Not before / not after of a PEM certificate.
pub fn validity(
    pem: &str,
) -> Option<(chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> {
    let certs = navette_proto::tls::certificates_from_pem(pem, "certificate").ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(certs.first()?).ok()?;
    let from = chrono::DateTime::from_timestamp(cert.validity().not_before.timestamp(), 0)?;
    let to = chrono::DateTime::from_timestamp(cert.validity().not_after.timestamp(), 0)?;
    Some((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("navette-ca-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn init_is_idempotent_and_keeps_the_key_private() -> Result<(), CaError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("init");
        let (first, created) = CertificateAuthority::init(&dir)?;
        assert!(created);
        let (second, created) = CertificateAuthority::init(&dir)?;
        assert!(!created);
        assert_eq!(first.certificate_pem(), second.certificate_pem());
        let mode = std::fs::metadata(dir.join(CA_KEY))
            .map_err(io(&dir))?
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "ca.key must not be readable by others");
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn agent_certificates_carry_only_the_controllers_choice_of_identity() -> Result<(), CaError> {
        let dir = temp_dir("agent");
        let (ca, _) = CertificateAuthority::init(&dir)?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        // The CSR asks to be the controller; the CA must ignore that.
        let mut asked = CertificateParams::new(vec![CONTROLLER_SERVER_NAME.to_owned()])?;
        asked
            .subject_alt_names
            .push(SanType::URI(Role::Controller.uri().try_into()?));
        let csr = asked.serialize_request(&key)?.pem()?;
        let issued = ca.sign_agent_csr("shared-1", &csr, Duration::from_secs(3600))?;
        let der = navette_proto::tls::certificates_from_pem(&issued.certificate_pem, "t")
            .map_err(|e| CaError::Name(e.to_string()))?;
        let role = navette_proto::identity::role_from_der(&der[0])
            .map_err(|e| CaError::Name(e.to_string()))?;
        assert_eq!(
            role,
            Role::Agent {
                host_id: "shared-1".into()
            }
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() -> Result<(), CaError> {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir("exposed");
        CertificateAuthority::init(&dir)?;
        let key = dir.join(CA_KEY);
        for mode in [0o644, 0o640, 0o602] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))
                .map_err(io(&key))?;
            let error = CertificateAuthority::load(&dir)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                error.contains(&format!("chmod 600 {}", key.display())),
                "{error}"
            );
            assert!(error.contains(&format!("{mode:04o}")), "{error}");
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).map_err(io(&key))?;
        CertificateAuthority::load(&dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }

    #[test]
    fn a_key_from_another_ca_is_refused() -> Result<(), CaError> {
        let a = temp_dir("mix-a");
        let b = temp_dir("mix-b");
        CertificateAuthority::init(&a)?;
        CertificateAuthority::init(&b)?;
        std::fs::copy(b.join(CA_KEY), a.join(CA_KEY)).map_err(io(&a))?;
        let error = CertificateAuthority::load(&a)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("does not belong"), "{error}");
        let _ = std::fs::remove_dir_all(&a);
        let _ = std::fs::remove_dir_all(&b);
        Ok(())
    }
}
