//! The `host_pools` table.

use tokio_postgres::{GenericClient, Row};

use crate::error::{Error, Result};
use crate::model::HostPool;

fn from_row(row: &Row) -> HostPool {
    HostPool {
        name: row.get("name"),
        description: row.get("description"),
        created_at: row.get("created_at"),
    }
}

/// Creates a pool; a retry with the same request id returns the same pool.
pub async fn create(
    client: &impl GenericClient,
    request_id: &str,
    name: &str,
    description: &str,
) -> Result<HostPool> {
    let inserted = client
        .query_opt(
            "INSERT INTO host_pools (name, description, request_id) VALUES ($1, $2, $3)
             ON CONFLICT DO NOTHING
             RETURNING name, description, created_at",
            &[&name, &description, &request_id],
        )
        .await?;
    if let Some(row) = inserted {
        return Ok(from_row(&row));
    }
    let existing = client
        .query_opt(
            "SELECT name, description, created_at, request_id FROM host_pools
             WHERE request_id = $1 OR name = $2",
            &[&request_id, &name],
        )
        .await?;
    match existing {
        Some(row)
            if row.get::<_, String>("request_id") == request_id
                && row.get::<_, String>("name") == name =>
        {
            Ok(from_row(&row))
        }
        Some(row) if row.get::<_, String>("request_id") == request_id => {
            Err(Error::AlreadyExists(format!(
                "request id {request_id:?} already created pool {:?}; use a new request id for a new pool",
                row.get::<_, String>("name")
            )))
        }
        _ => Err(Error::AlreadyExists(format!(
            "host pool {name:?} already exists"
        ))),
    }
}

pub async fn list(client: &impl GenericClient) -> Result<Vec<HostPool>> {
    Ok(client
        .query(
            "SELECT name, description, created_at FROM host_pools ORDER BY name",
            &[],
        )
        .await?
        .iter()
        .map(from_row)
        .collect())
}

pub async fn exists(client: &impl GenericClient, name: &str) -> Result<bool> {
    Ok(client
        .query_opt("SELECT 1 FROM host_pools WHERE name = $1", &[&name])
        .await?
        .is_some())
}
