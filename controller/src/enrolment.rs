//! Join tokens and agent certificates: how a host becomes known and stays
//! trusted.
//!
//! A join token is `<id>.<secret>` where the secret is an HMAC of the id
//! under a key derived from the CA key; only the id is stored. Enrolment
//! checks the token, marks it used and signs the agent's CSR for the token's
//! host, all in one transaction: a token can never enrol two hosts.

use std::time::Duration;

use deadpool_postgres::Pool;
use navette_proto::identity::validate_host_id;
use ring::rand::SecureRandom;

use crate::ca::{CertificateAuthority, Issued};
use crate::error::{Error, Result};
use crate::model::JoinToken;
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

/// Creates (or, for a retried request id, returns again) a join token.
pub async fn create_join_token(
    pool: &Pool,
    ca: &CertificateAuthority,
    request_id: &str,
    host_id: &str,
    host_pool: Option<&str>,
    created_by: &str,
    ttl_secs: u64,
) -> Result<(JoinToken, String)> {
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
    let token = store::tokens::create(
        &*transaction,
        &new_token_id(),
        request_id,
        host_id,
        host_pool,
        created_by,
        ttl_secs,
    )
    .await?;
    store::hosts::ensure_awaiting_enrolment(&*transaction, host_id, host_pool).await?;
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
        token.pool.as_deref(),
        &issued.serial,
        issued.not_after,
    )
    .await?;
    transaction.commit().await?;
    tracing::info!(message = "agent enrolled", host_id = %token.host_id, token = %token.id, not_after = %issued.not_after);
    Ok((token.host_id, issued))
}

/// Signs a new certificate for an agent that holds a valid one.
pub async fn renew(
    pool: &Pool,
    ca: &CertificateAuthority,
    host_id: &str,
    csr_pem: &str,
    lifetime: Duration,
) -> Result<Issued> {
    let client = pool.get().await?;
    // The host must still exist: deleting a host stops its renewals.
    store::hosts::get(&**client, host_id).await?;
    let issued = ca
        .sign_agent_csr(host_id, csr_pem, lifetime)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    store::hosts::record_renewal(&**client, host_id, &issued.serial, issued.not_after).await?;
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
