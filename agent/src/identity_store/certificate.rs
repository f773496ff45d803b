//! What the agent checks in certificates: their validity and renewal
//! point, the new key and CSR it sends, and the controller's answers
//! (the certificate names this host and carries the key we sent).
//!
//! Pure functions over PEM text; no files (see the parent module).

use chrono::{DateTime, Utc};
use navette_proto::identity::{Role, role_from_der, validate_host_id};
use navette_proto::tls;
use navette_proto::v1::CertificateBundle;
use rcgen::PublicKeyData;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::StoreError;

/// When a certificate may be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

impl Validity {
    /// When two thirds of the lifetime have passed: time to renew. The
    /// lifetime counts from `not_before`, or from when the agent obtained the
    /// certificate if that is later: controllers backdate `not_before` to
    /// absorb clock skew, and with short lifetimes the two-thirds point of
    /// the backdated span can already be past when the certificate arrives.
    pub fn renew_at(&self, obtained_at: DateTime<Utc>) -> DateTime<Utc> {
        let start = obtained_at.clamp(self.not_before, self.not_after);
        start + (self.not_after - start) * 2 / 3
    }

    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        now >= self.not_after
    }
}

/// What the agent reads from a certificate.
#[derive(Clone, Debug)]
pub struct CertificateFacts {
    pub role: Role,
    pub validity: Validity,
    /// DER SubjectPublicKeyInfo, to match the certificate with its key.
    pub public_key: Vec<u8>,
}

/// Parses the leaf certificate of `pem`; `what` names it in errors.
pub fn inspect_certificate(pem: &str, what: &str) -> Result<CertificateFacts, StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        what: what.to_owned(),
        message,
    };
    let chain = tls::certificates_from_pem(pem, what)?;
    let leaf = chain
        .first()
        .ok_or_else(|| invalid("no certificate".into()))?;
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|error| invalid(format!("cannot parse the certificate: {error}")))?;
    let role = role_from_der(leaf).map_err(|error| invalid(error.to_string()))?;
    let time = |seconds: i64| {
        DateTime::from_timestamp(seconds, 0)
            .ok_or_else(|| invalid(format!("validity time {seconds} out of range")))
    };
    let validity = Validity {
        not_before: time(cert.validity().not_before.timestamp())?,
        not_after: time(cert.validity().not_after.timestamp())?,
    };
    Ok(CertificateFacts {
        role,
        validity,
        public_key: cert.public_key().raw.to_vec(),
    })
}

/// A freshly generated key and the certificate request for it.
pub struct NewKey {
    pub key_pem: String,
    pub csr_pem: String,
    public_key: Vec<u8>,
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey").finish_non_exhaustive()
    }
}

/// Makes an ECDSA P-256 key and a CSR with CN `navette-agent` (the
/// controller sets the real subject and names itself).
pub fn new_key_and_csr() -> Result<NewKey, StoreError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(StoreError::KeyGeneration)?;
    let mut params = rcgen::CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "navette-agent");
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(StoreError::KeyGeneration)?;
    Ok(NewKey {
        key_pem: key.serialize_pem(),
        csr_pem,
        public_key: key.subject_public_key_info(),
    })
}

/// A controller answer that passed the checks.
#[derive(Clone, Debug)]
pub struct AcceptedBundle {
    pub host_id: String,
    pub certificate_pem: String,
    pub ca_pem: String,
    pub validity: Validity,
}

/// Checks a `CertificateBundle`: a valid host id, a certificate for the agent
/// of that host (and of `expected_host_id` when renewing) that carries our new
/// public key, and a usable CA.
pub fn accept_bundle(
    bundle: CertificateBundle,
    key: &NewKey,
    expected_host_id: Option<&str>,
) -> Result<AcceptedBundle, StoreError> {
    let invalid = |message: String| StoreError::Invalid {
        what: "the controller's certificate bundle".to_owned(),
        message,
    };
    validate_host_id(&bundle.host_id).map_err(|error| invalid(error.to_string()))?;
    match expected_host_id {
        Some(expected) if bundle.host_id != expected => {
            return Err(invalid(format!(
                "it is for host {}, but this agent is host {expected}",
                bundle.host_id
            )));
        }
        _ => {}
    }
    let facts = inspect_certificate(&bundle.certificate_pem, "the controller's certificate")?;
    let expected_role = Role::Agent {
        host_id: bundle.host_id.clone(),
    };
    if facts.role != expected_role {
        return Err(invalid(format!(
            "the certificate is for {}, not for {expected_role}",
            facts.role
        )));
    }
    if facts.validity.is_expired_at(Utc::now()) {
        return Err(invalid(format!(
            "the certificate expired at {}",
            facts.validity.not_after.to_rfc3339()
        )));
    }
    if facts.public_key != key.public_key {
        return Err(invalid(
            "the certificate does not carry the key this agent sent".into(),
        ));
    }
    tls::ca_roots(
        &bundle.ca_certificate_pem,
        "the controller's CA certificate",
    )?;
    Ok(AcceptedBundle {
        host_id: bundle.host_id,
        certificate_pem: bundle.certificate_pem,
        ca_pem: bundle.ca_certificate_pem,
        validity: facts.validity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(seconds, 0).expect("test time")
    }

    #[test]
    fn renewal_comes_at_two_thirds_of_the_lifetime() {
        let validity = Validity {
            not_before: at(0),
            not_after: at(900),
        };
        assert_eq!(validity.renew_at(at(0)), at(600));
        // Obtained before not_before (clock skew): the span still counts.
        assert_eq!(validity.renew_at(at(-50)), at(600));
    }

    #[test]
    fn a_backdated_certificate_is_not_renewed_at_once() {
        // 30 s certificate backdated by 300 s: the nominal two-thirds point
        // (t = 220) is past when it arrives at t = 300.
        let validity = Validity {
            not_before: at(0),
            not_after: at(330),
        };
        assert_eq!(validity.renew_at(at(300)), at(320));
        assert!(!validity.is_expired_at(at(329)));
        assert!(validity.is_expired_at(at(330)));
    }

    #[test]
    fn a_csr_and_key_are_made_together() {
        let key = new_key_and_csr().expect("key and CSR");
        assert!(key.key_pem.contains("PRIVATE KEY"));
        assert!(key.csr_pem.contains("CERTIFICATE REQUEST"));
        let csr =
            rcgen::CertificateSigningRequestParams::from_pem(&key.csr_pem).expect("parse CSR");
        assert_eq!(csr.public_key.subject_public_key_info(), key.public_key);
    }
}
