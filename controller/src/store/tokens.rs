//! The `join_tokens` table. Secrets are not stored (see `enrolment`).

use tokio_postgres::{GenericClient, Row};

use super::{to_i64, to_u64};
use crate::error::{Error, Result};
use crate::model::{HostKind, JoinToken};

const COLUMNS: &str = "id, host_id, pool, kind, declared_disk_bytes, created_by, created_at, expires_at, used_at, revoked_at";

fn from_row(row: &Row) -> JoinToken {
    let kind: Option<String> = row.get("kind");
    let disk: Option<i64> = row.get("declared_disk_bytes");
    JoinToken {
        id: row.get("id"),
        host_id: row.get("host_id"),
        pool: row.get("pool"),
        kind: kind.as_deref().and_then(HostKind::parse),
        declared_disk_bytes: disk.map(to_u64),
        created_by: row.get("created_by"),
        created_at: row.get("created_at"),
        expires_at: row.get("expires_at"),
        used_at: row.get("used_at"),
        revoked_at: row.get("revoked_at"),
    }
}

/// What a new token makes of the host that enrols with it.
#[derive(Clone, Debug)]
pub struct NewToken<'a> {
    pub id: &'a str,
    pub request_id: &'a str,
    pub host_id: &'a str,
    pub pool: Option<&'a str>,
    pub kind: Option<HostKind>,
    pub declared_disk_bytes: Option<u64>,
    pub created_by: &'a str,
    pub ttl_secs: u64,
}

/// A new token row. A retry with the same request id returns the row made
/// the first time, provided it asked for the same host, pool, kind and
/// class.
pub async fn create(client: &impl GenericClient, new: &NewToken<'_>) -> Result<JoinToken> {
    let ttl = new.ttl_secs as f64;
    let kind = new.kind.map(HostKind::as_str);
    let disk = new.declared_disk_bytes.map(to_i64);
    let (request_id, host_id, pool) = (new.request_id, new.host_id, new.pool);
    let inserted = client
        .query_opt(
            &format!(
                "INSERT INTO join_tokens (id, request_id, host_id, pool, kind, declared_disk_bytes,
                     created_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8))
                 ON CONFLICT (request_id) DO NOTHING
                 RETURNING {COLUMNS}"
            ),
            &[
                &new.id,
                &request_id,
                &host_id,
                &pool,
                &kind,
                &disk,
                &new.created_by,
                &ttl,
            ],
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
    if existing.host_id != host_id
        || existing.pool.as_deref() != pool
        || existing.kind != new.kind
        || existing.declared_disk_bytes != new.declared_disk_bytes
    {
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
