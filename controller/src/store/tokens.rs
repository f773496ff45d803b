//! The `join_tokens` table. Secrets are not stored (see `enrolment`).

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::JoinToken;

const COLUMNS: &str = "id, host_id, pool, created_by, created_at, expires_at, used_at, revoked_at";

fn from_row(row: &Row) -> JoinToken {
    JoinToken {
        id: row.get("id"),
        host_id: row.get("host_id"),
        pool: row.get("pool"),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        used_at: row.get("used_at"),
        revoked_at: row.get("revoked_at"),
    }
}

/// A new token row. A retry with the same request id returns the row made
/// the first time, provided it asked for the same host and pool.
pub async fn create(
    client: &impl GenericClient,
    id: &str,
    request_id: &str,
    host_id: &str,
    pool: Option<&str>,
    created_by: &str,
    ttl_secs: u64,
) -> Result<JoinToken> {
    let ttl = ttl_secs as f64;
    let inserted = client
        .query_opt(
            &format!(
                "INSERT INTO join_tokens (id, request_id, host_id, pool, created_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6))
                 ON CONFLICT (request_id) DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[&id, &request_id, &host_id, &pool, &created_by, &ttl],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(from_row(&row));
    }
    let row = client
        .query_one(
            &format!("SELECT {COLUMNS} FROM join_tokens WHERE request_id = $1"),
            &[&request_id],
        )
        .await?;
    let existing = from_row(&row);
    if existing.host_id != host_id || existing.pool.as_deref() != pool {
        return Err(Error::AlreadyExists(format!(
            "request id {request_id:?} was already used to create a join token for host {:?}; use a new request id",
            existing.host_id
        )));
    }
    Ok(existing)
}

/// Locks the token for the rest of the transaction and checks that it can
/// still be used: not used, not revoked, not expired (by the database's
/// clock).
pub async fn claim(client: &impl GenericClient, id: &str) -> Result<JoinToken> {
    let row = client
        .query_opt(
            &format!(
                "SELECT {COLUMNS}, expires_at <= now() AS expired FROM join_tokens
                 WHERE id = $1 FOR UPDATE"
            ),
            &[&id],
        )
        .await?
        .ok_or_else(|| {
            Error::Unauthenticated(
                "unknown join token; ask an operator for a new one (JoinTokens/CreateJoinToken)"
                    .to_owned(),
            )
        })?;
    let token = from_row(&row);
    let expired: bool = row.get("expired");
    if let Some(used_at) = token.used_at {
        return Err(Error::Unauthenticated(format!(
            "join token {} was already used at {} (host {}); a token works once: create a new one",
            token.id,
            used_at.to_rfc3339(),
            token.host_id
        )));
    }
    if let Some(revoked_at) = token.revoked_at {
        return Err(Error::Unauthenticated(format!(
            "join token {} was revoked at {}; create a new one",
            token.id,
            revoked_at.to_rfc3339()
        )));
    }
    if expired {
        return Err(Error::Unauthenticated(format!(
            "join token {} expired at {}; create a new one",
            token.id,
            token.expires_at.to_rfc3339()
        )));
    }
    Ok(token)
}

pub async fn mark_used(client: &impl GenericClient, id: &str) -> Result<()> {
    client
        .execute(
            "UPDATE join_tokens SET used_at = now() WHERE id = $1",
            &[&id],
        )
        .await?;
    Ok(())
}

pub async fn list(client: &impl GenericClient) -> Result<Vec<JoinToken>> {
    Ok(client
        .query(
            &format!("SELECT {COLUMNS} FROM join_tokens ORDER BY created_at DESC"),
            &[],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

pub async fn revoke(client: &impl GenericClient, id: &str) -> Result<JoinToken> {
    client
        .query_opt(
            &format!(
                "UPDATE join_tokens SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1
                 RETURNING {COLUMNS}"
            ),
            &[&id],
        )
        .await?
        .map(|row| from_row(&row))
        .ok_or_else(|| Error::NotFound {
            what: "join token",
            id: id.to_owned(),
        })
}
