//! Enrolment: trading a one-time join token and a CSR for the agent's first
//! certificate, on the controller's enrolment endpoint (TLS, server verified
//! with `ca_file`, no client certificate).
//!
//! The key is made here and never leaves the host. Nothing is written unless
//! the controller's answer passed the checks of
//! [`identity_store::accept_bundle`]; an enrolled agent is left alone unless
//! forced, so a second `enrol` does not burn a token.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use navette_proto::identity::CONTROLLER_SERVER_NAME;
use navette_proto::tls::{self, TlsError};
use navette_proto::v1::EnrolRequest;
use navette_proto::v1::enrolment_client::EnrolmentClient;

use crate::config::Config;
use crate::identity_store::{self, IdentityStore, StoreError};

/// How long the enrolment call may take.
const TIMEOUT: Duration = Duration::from_secs(30);

/// What `enrol` did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EnrolOutcome {
    /// A usable certificate was already there; the token was not used.
    AlreadyEnrolled {
        host_id: String,
        not_after: DateTime<Utc>,
    },
    /// The agent is now this host.
    Enrolled {
        host_id: String,
        not_after: DateTime<Utc>,
    },
}

/// Why enrolment failed.
#[derive(Debug, thiserror::Error)]
pub enum EnrolError {
    /// The join token is empty.
    #[error("the join token is empty")]
    EmptyToken,
    /// `ca_file` cannot be used.
    #[error("cannot use the controller CA (`ca_file` in the configuration)")]
    Ca {
        path: PathBuf,
        #[source]
        source: TlsError,
    },
    /// A certificate is present but unusable.
    #[error(
        "a certificate is present in {state_dir} but cannot be used; run `enrol --force` with a new token to replace it"
    )]
    Broken {
        state_dir: PathBuf,
        #[source]
        source: StoreError,
    },
    /// The controller could not be reached (or its certificate was refused).
    #[error("cannot reach the controller's enrolment endpoint {enrolment}: {detail}")]
    Unreachable {
        enrolment: SocketAddr,
        detail: String,
    },
    /// The controller answered no.
    #[error("the controller at {enrolment} refused the enrolment: {message} ({code:?})")]
    Refused {
        enrolment: SocketAddr,
        code: tonic::Code,
        message: String,
    },
    /// The controller's answer is unusable, or storing it failed.
    #[error("enrolment with {enrolment} failed")]
    Store {
        enrolment: SocketAddr,
        #[source]
        source: StoreError,
    },
}

/// Enrols with `token` unless already enrolled (or `force`).
pub async fn enrol(config: &Config, token: &str, force: bool) -> Result<EnrolOutcome, EnrolError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(EnrolError::EmptyToken);
    }
    let enrolment = config.enrolment;
    let store = IdentityStore::new(&config.state_dir);
    let store_error = |source| EnrolError::Store { enrolment, source };
    if !force && store.is_enrolled().map_err(store_error)? {
        return match store.load() {
            Ok(stored) => Ok(EnrolOutcome::AlreadyEnrolled {
                host_id: stored.host_id,
                not_after: stored.validity.not_after,
            }),
            Err(source) => Err(EnrolError::Broken {
                state_dir: config.state_dir.clone(),
                source,
            }),
        };
    }
    let roots = tls::load_ca_roots(&config.ca_file).map_err(|source| EnrolError::Ca {
        path: config.ca_file.clone(),
        source,
    })?;
    let client_config = tls::client_config(roots, None).map_err(|source| EnrolError::Ca {
        path: config.ca_file.clone(),
        source,
    })?;
    let channel =
        tls::channel(enrolment, CONTROLLER_SERVER_NAME, client_config).map_err(|error| {
            EnrolError::Unreachable {
                enrolment,
                detail: crate::error_chain(&error),
            }
        })?;
    let key = identity_store::new_key_and_csr().map_err(store_error)?;
    let request = EnrolRequest {
        token: token.to_owned(),
        csr_pem: key.csr_pem.clone(),
    };
    let mut client = EnrolmentClient::new(channel);
    let bundle = match tokio::time::timeout(TIMEOUT, client.enrol(request)).await {
        Err(_) => {
            return Err(EnrolError::Unreachable {
                enrolment,
                detail: format!("no answer within {} s", TIMEOUT.as_secs()),
            });
        }
        Ok(Err(status)) if is_transport_failure(&status) => {
            return Err(EnrolError::Unreachable {
                enrolment,
                detail: crate::describe_status(&status),
            });
        }
        Ok(Err(status)) => {
            return Err(EnrolError::Refused {
                enrolment,
                code: status.code(),
                message: status.message().to_owned(),
            });
        }
        Ok(Ok(response)) => response.into_inner(),
    };
    let accepted = identity_store::accept_bundle(bundle, &key, None).map_err(store_error)?;
    store.save_enrolment(&key, &accepted).map_err(store_error)?;
    tracing::info!(
        message = "enrolled",
        host_id = %accepted.host_id,
        controller = %enrolment,
        expires_at = %accepted.validity.not_after.to_rfc3339()
    );
    Ok(EnrolOutcome::Enrolled {
        host_id: accepted.host_id,
        not_after: accepted.validity.not_after,
    })
}

/// Whether the call never reached the controller's handler (connection
/// refused, TLS failure...), as opposed to the controller answering no.
fn is_transport_failure(status: &tonic::Status) -> bool {
    use std::error::Error;
    status.code() == tonic::Code::Unavailable
        || (status.code() == tonic::Code::Unknown && status.source().is_some())
}
