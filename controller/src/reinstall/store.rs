//! The reinstall's SQL: a reinstall is a `workflows` row of kind
//! `reinstall` (its state is [`Reinstall`]), so there is no table of its
//! own; these read it by host and by request id, and read what the wait
//! for the host watches (its token and its row).

use chrono::{DateTime, Utc};
use tokio_postgres::GenericClient;

use super::flow::Reinstall;
use super::{KIND, View};
use crate::error::{Error, Result};

fn view_from(row: &tokio_postgres::Row) -> Result<View> {
    let state: serde_json::Value = row.get("state");
    let reinstall: Reinstall = serde_json::from_value(state)
        .map_err(|error| Error::Internal(format!("unreadable reinstall state: {error}")))?;
    Ok(View {
        reinstall,
        created_at: row.get("created_at"),
        updated_at: row.get("updated_at"),
    })
}

const COLUMNS: &str = "state, created_at, updated_at";

/// The reinstall `id`.
pub async fn get(client: &impl GenericClient, id: &str) -> Result<View> {
    let row = client
        .query_opt(
            &format!("SELECT {COLUMNS} FROM workflows WHERE id = $1 AND kind = $2"),
            &[&id, &KIND],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "reinstall",
            id: id.to_owned(),
        })?;
    view_from(&row)
}

/// The reinstall created for `request_id`, if any.
pub async fn by_request(client: &impl GenericClient, request_id: &str) -> Result<Option<View>> {
    client
        .query_opt(
            &format!(
                "SELECT {COLUMNS} FROM workflows WHERE kind = $1 AND state->>'request_id' = $2"
            ),
            &[&KIND, &request_id],
        )
        .await?
        .as_ref()
        .map(view_from)
        .transpose()
}

/// Reinstalls, newest first (at most 1000): of `host` (or every host),
/// those that ended too when `include_ended`.
pub async fn list(
    client: &impl GenericClient,
    host: Option<&str>,
    include_ended: bool,
) -> Result<Vec<View>> {
    client
        .query(
            &format!(
                "SELECT {COLUMNS} FROM workflows
                 WHERE kind = $1 AND ($2::text IS NULL OR state->>'host_id' = $2)
                   AND ($3 OR NOT done)
                 ORDER BY created_at DESC, id LIMIT 1000"
            ),
            &[&KIND, &host, &include_ended],
        )
        .await?
        .iter()
        .map(view_from)
        .collect()
}

/// Locks host `id`'s row for the rest of the transaction (so that two
/// requests for one host are decided one after the other) and returns
/// whether it was removed; `NotFound` when there is no such host.
pub async fn lock_host(client: &impl GenericClient, id: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "SELECT state = 'removed' FROM hosts WHERE id = $1 FOR UPDATE",
            &[&id],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "host",
            id: id.to_owned(),
        })?;
    Ok(row.get(0))
}

/// The accounts (and copies) Navette knows on host `id`, by name.
pub async fn accounts_on(client: &impl GenericClient, id: &str) -> Result<Vec<String>> {
    Ok(client
        .query(
            "SELECT name FROM host_accounts WHERE host_id = $1 ORDER BY name",
            &[&id],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// What the wait for the host watches: when the token was used, and the
/// host's enrolment, stack version and last inventory.
#[derive(Clone, Debug, PartialEq)]
pub struct Watched {
    pub token_used_at: Option<DateTime<Utc>>,
    pub token_expires_at: DateTime<Utc>,
    pub enrolled_at: Option<DateTime<Utc>>,
    pub stack_version: String,
    pub inventory_updated_at: Option<DateTime<Utc>>,
}

pub async fn watch(client: &impl GenericClient, token_id: &str) -> Result<Watched> {
    let row = client
        .query_opt(
            "SELECT t.used_at, t.expires_at, h.enrolled_at, h.stack_version, h.inventory_updated_at
             FROM join_tokens t JOIN hosts h ON h.id = t.host_id WHERE t.id = $1",
            &[&token_id],
        )
        .await?
        .ok_or_else(|| Error::NotFound {
            what: "join token",
            id: token_id.to_owned(),
        })?;
    Ok(Watched {
        token_used_at: row.get(0),
        token_expires_at: row.get(1),
        enrolled_at: row.get(2),
        stack_version: row.get(3),
        inventory_updated_at: row.get(4),
    })
}
