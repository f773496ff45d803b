//! Who a certificate belongs to.
//!
//! Every Navette certificate carries exactly one role as a URI subject
//! alternative name:
//!
//! | role | URI SAN |
//! |---|---|
//! | control panel | `spiffe://navette/panel` |
//! | operator | `spiffe://navette/operator` |
//! | controller | `spiffe://navette/controller` |
//! | agent of host `h` | `spiffe://navette/agent/h` |
//!
//! Servers are verified by DNS name: the controller always carries
//! [`CONTROLLER_SERVER_NAME`], an agent carries [`agent_server_name`] of its
//! host id. The TLS layer only proves that the CA signed a certificate; the
//! role read here decides what the holder may do.

use std::fmt;

use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// DNS name every controller certificate carries; agents dial it whatever
/// the controller's address.
pub const CONTROLLER_SERVER_NAME: &str = "controller.navette.internal";

const URI_PREFIX: &str = "spiffe://navette/";

/// The DNS name an agent's certificate carries, and that the controller and
/// peer agents expect when they dial it.
pub fn agent_server_name(host_id: &str) -> String {
    format!("{host_id}.agent.navette.internal")
}

/// What the holder of a certificate may act as.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// The control panel, acting for customers.
    Panel,
    /// A person operating the platform (grpcurl).
    Operator,
    /// A Navette controller.
    Controller,
    /// The agent of exactly one host.
    Agent { host_id: String },
}

impl Role {
    /// The URI SAN that encodes this role.
    pub fn uri(&self) -> String {
        match self {
            Role::Panel => format!("{URI_PREFIX}panel"),
            Role::Operator => format!("{URI_PREFIX}operator"),
            Role::Controller => format!("{URI_PREFIX}controller"),
            Role::Agent { host_id } => format!("{URI_PREFIX}agent/{host_id}"),
        }
    }

    /// Parses a URI SAN; `None` when it is not a Navette role.
    pub fn from_uri(uri: &str) -> Option<Role> {
        let rest = uri.strip_prefix(URI_PREFIX)?;
        match rest {
            "panel" => Some(Role::Panel),
            "operator" => Some(Role::Operator),
            "controller" => Some(Role::Controller),
            _ => {
                let host_id = rest.strip_prefix("agent/")?;
                validate_host_id(host_id).ok()?;
                Some(Role::Agent {
                    host_id: host_id.to_owned(),
                })
            }
        }
    }

    /// Short name of the role, as operators type it (`panel`, `agent`...).
    pub fn kind(&self) -> &'static str {
        match self {
            Role::Panel => "panel",
            Role::Operator => "operator",
            Role::Controller => "controller",
            Role::Agent { .. } => "agent",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Agent { host_id } => write!(f, "agent of host {host_id}"),
            other => f.write_str(other.kind()),
        }
    }
}

/// Why a certificate does not name a Navette role.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// the certificate could not be parsed: {0}
    #[error("the certificate could not be parsed: {0}")]
    Parse(String),
    /// no Navette role (spiffe://navette/...) in the certificate's URI SANs
    #[error("the certificate names no Navette role (a URI SAN spiffe://navette/...)")]
    NoRole,
    /// several roles in one certificate
    #[error("the certificate names several Navette roles; a certificate must have exactly one")]
    SeveralRoles,
}

/// Reads the role from a DER certificate.
pub fn role_from_der(der: &[u8]) -> Result<Role, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|error| IdentityError::Parse(error.to_string()))?;
    let mut found = None;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let GeneralName::URI(uri) = name
                && let Some(role) = Role::from_uri(uri)
            {
                if found.is_some() {
                    return Err(IdentityError::SeveralRoles);
                }
                found = Some(role);
            }
        }
    }
    found.ok_or(IdentityError::NoRole)
}

/// The serial number of a DER certificate, as lowercase hex: how the
/// controller records each certificate it issues, and how agents and the
/// controller recognise a superseded or revoked one.
pub fn serial_from_der(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    Some(
        cert.raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

/// The subject common name of a DER certificate (who holds it, for logs).
pub fn common_name_from_der(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_owned();
    Some(name)
}

/// Why a host id is not acceptable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "host id {0:?} is not valid: use 1 to 63 lowercase letters, digits and '-', not starting or ending with '-'"
)]
pub struct BadHostId(pub String);

/// Host ids are DNS labels, so they fit in certificate names.
pub fn validate_host_id(host_id: &str) -> Result<(), BadHostId> {
    let bytes = host_id.as_bytes();
    let ok = !bytes.is_empty()
        && bytes.len() <= 63
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-';
    if ok {
        Ok(())
    } else {
        Err(BadHostId(host_id.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_round_trip_through_uris() {
        for role in [
            Role::Panel,
            Role::Operator,
            Role::Controller,
            Role::Agent {
                host_id: "shared-1".into(),
            },
        ] {
            assert_eq!(Role::from_uri(&role.uri()), Some(role));
        }
    }

    #[test]
    fn foreign_and_malformed_uris_are_not_roles() {
        assert_eq!(Role::from_uri("spiffe://other/panel"), None);
        assert_eq!(Role::from_uri("spiffe://navette/root"), None);
        assert_eq!(Role::from_uri("spiffe://navette/agent/"), None);
        assert_eq!(Role::from_uri("spiffe://navette/agent/a/b"), None);
        assert_eq!(Role::from_uri("spiffe://navette/agent/UPPER"), None);
    }

    #[test]
    fn host_ids_are_dns_labels() {
        assert!(validate_host_id("dedicated-42").is_ok());
        assert!(validate_host_id("-a").is_err());
        assert!(validate_host_id("a-").is_err());
        assert!(validate_host_id("a.b").is_err());
        assert!(validate_host_id("").is_err());
        assert!(validate_host_id(&"a".repeat(64)).is_err());
    }
}
