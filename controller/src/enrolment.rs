//! Join tokens and agent certificates: how a host becomes known and stays
//! trusted.
//!
//! A join token is `<id>.<secret>` where the secret is an HMAC of the id
//! under a key derived from the CA key; only the id is stored. Enrolment
//! checks the token, marks it used and signs the agent's CSR for the token's
//! host, all in one transaction: a token can never enrol two hosts.
//!
//! What the host is (kind, pool, class) comes from the token, that is from
//! the operator; the agent's own report never decides it. Each host has one
//! current certificate: enrolment replaces it (so a re-enrolled host's old
//! key stops working), renewal replaces it only when asked with it, and
//! `Hosts/RemoveHost` revokes them all.

use std::time::Duration;

use deadpool_postgres::Pool;
use navette_proto::identity::validate_host_id;
use ring::rand::SecureRandom;

use crate::ca::{CertificateAuthority, Issued};
use crate::error::{Error, Result};
use crate::model::{HostKind, JoinToken};
use crate::store;

/// The secret to hand to the agent for token `id`.
pub fn token_secret(ca: &CertificateAuthority, id: &str) -> String {
    let tag = ring::hmac::sign(&ca.join_token_key(), id.as_bytes());
    format!("{id}.{}", hex(tag.as_ref()))
}

/// The token id in `secret`, if the secret is authentic.
fn verify_secret(ca: &CertificateAuthority, secret: &str) -> Option<String> {
    let (id, tag) = secret.trim().split_once('.')?;
    let tag = unhex(tag)?;
    ring::hmac::verify(&ca.join_token_key(), id.as_bytes(), &tag).ok()?;
    Some(id.to_owned())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

fn new_token_id() -> String {
    let mut bytes = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut bytes);
    hex(&bytes)
}

/// What an operator asks a join token for.
#[derive(Clone, Debug)]
pub struct TokenRequest<'a> {
    pub request_id: &'a str,
    pub host_id: &'a str,
    pub pool: Option<&'a str>,
    /// What the host is for; `None`: it receives nothing until an operator
    /// sets it.
    pub kind: Option<HostKind>,
    /// The host's class: its disk size.
    pub declared_disk_bytes: Option<u64>,
    pub created_by: &'a str,
    pub ttl_secs: u64,
}

/// Creates (or, for a retried request id, returns again) a join token.
pub async fn create_join_token(
    pool: &Pool,
    ca: &CertificateAuthority,
    request: &TokenRequest<'_>,
) -> Result<(JoinToken, String)> {
    let TokenRequest {
        request_id,
        host_id,
        pool: host_pool,
        ..
    } = *request;
    if request_id.trim().is_empty() {
        return Err(Error::InvalidArgument(
            "request_id is required: choose a unique id per token so that a retried call does not create two"
                .to_owned(),
        ));
    }
    validate_host_id(host_id).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    if let Some(name) = host_pool
        && !store::pools::exists(&*transaction, name).await?
    {
        return Err(Error::FailedPrecondition(format!(
            "host pool {name:?} does not exist; create it first (HostPools/CreateHostPool)"
        )));
    }
    let id = new_token_id();
    let token = store::tokens::create(
        &*transaction,
        &store::tokens::NewToken {
            id: &id,
            request_id,
            host_id,
            pool: host_pool,
            kind: request.kind,
            declared_disk_bytes: request.declared_disk_bytes,
            created_by: request.created_by,
            ttl_secs: request.ttl_secs,
        },
    )
    .await?;
    store::hosts::ensure_awaiting_enrolment(
        &*transaction,
        host_id,
        host_pool,
        request.kind,
        request.declared_disk_bytes,
    )
    .await?;
    transaction.commit().await?;
    let secret = token_secret(ca, &token.id);
    Ok((token, secret))
}

/// Trades a join token and a CSR for an agent certificate.
pub async fn enrol(
    pool: &Pool,
    ca: &CertificateAuthority,
    secret: &str,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<(String, Issued)> {
    let id = verify_secret(ca, secret).ok_or_else(|| {
        Error::Unauthenticated(
            "the join token is not valid for this controller; check that it was copied whole"
                .to_owned(),
        )
    })?;
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    let token = store::tokens::claim(&*transaction, &id).await?;
    let issued = ca
        .sign_agent_csr(&token.host_id, csr_pem, lifetime)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    store::tokens::mark_used(&*transaction, &id).await?;
    store::hosts::record_enrolment(
        &*transaction,
        &token.host_id,
        &store::hosts::EnrolmentRecord {
            pool: token.pool.as_deref(),
            kind: token.kind,
            declared_disk_bytes: token.declared_disk_bytes,
            serial: &issued.serial,
            not_after: issued.not_after,
        },
    )
    .await?;
    transaction.commit().await?;
    tracing::info!(message = "agent enrolled", host_id = %token.host_id, token = %token.id, not_after = %issued.not_after);
    Ok((token.host_id, issued))
}

/// Signs a new certificate for an agent that presented its host's current
/// one (`presented_serial`); any other, superseded or revoked, is refused,
/// so a stolen key cannot renew itself once the host has moved on.
pub async fn renew(
    pool: &Pool,
    ca: &CertificateAuthority,
    host_id: &str,
    presented_serial: &str,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<Issued> {
    let mut client = pool.get().await?;
    let transaction = client.transaction().await?;
    // Locks the host row: two renewals with one certificate issue one.
    let current: Option<String> = transaction
        .query_opt(
            "SELECT certificate_serial FROM hosts WHERE id = $1 AND state <> 'removed' FOR UPDATE",
            &[&host_id],
        )
        .await?
        .and_then(|row| row.get(0));
    if current.as_deref() != Some(presented_serial) {
        return Err(
            store::hosts::refused_certificate(&*transaction, host_id, presented_serial).await,
        );
    }
    let issued = ca
        .sign_agent_csr(host_id, csr_pem, lifetime)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    store::hosts::record_renewal(
        &*transaction,
        host_id,
        presented_serial,
        &issued.serial,
        issued.not_after,
    )
    .await?;
    transaction.commit().await?;
    tracing::info!(message = "agent certificate renewed", %host_id, not_after = %issued.not_after);
    Ok(issued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_verify_only_for_their_id() -> Result<(), crate::ca::CaError> {
        let dir = std::env::temp_dir().join(format!("navette-token-{}", std::process::id()));
        let (ca, _) = CertificateAuthority::init(&dir)?;
        let secret = token_secret(&ca, "0123abcd");
        assert_eq!(verify_secret(&ca, &secret).as_deref(), Some("0123abcd"));
        let forged = secret.replacen("0123abcd", "0123abce", 1);
        assert_eq!(verify_secret(&ca, &forged), None);
        assert_eq!(verify_secret(&ca, "nonsense"), None);
        assert_eq!(verify_secret(&ca, "a.zz"), None);
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    }
}
