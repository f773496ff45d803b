//! The `host_accounts` table: customer accounts as each agent reports them,
//! and the copies of accounts tests made (`copy_of_test` set), which are
//! never taken for accounts.

use tokio_postgres::{GenericClient, Row};

use super::{to_i64, to_u64};
use crate::error::{Error, Result};
use crate::model::{Account, CopyPlan, Database};

fn from_row(row: &Row) -> Result<Account> {
    let databases: serde_json::Value = row.get("databases");
    let uid: i64 = row.get("uid");
    let copy_of_test: String = row.get("copy_of_test");
    let sites: serde_json::Value = row.get("sites");
    Ok(Account {
        name: row.get("name"),
        host_id: row.get("host_id"),
        home: row.get("home"),
        uid: u32::try_from(uid).unwrap_or(u32::MAX),
        home_size_bytes: to_u64(row.get("home_size_bytes")),
        home_files: to_u64(row.get("home_files")),
        databases: serde_json::from_value(databases)
            .map_err(|e| Error::Internal(format!("databases column: {e}")))?,
        updated_at: row.get("updated_at"),
        copy_of_test: (!copy_of_test.is_empty()).then_some(copy_of_test),
        sites: serde_json::from_value(sites)
            .map_err(|e| Error::Internal(format!("sites column: {e}")))?,
    })
}

const SELECT: &str = "SELECT host_id, name, home, uid, home_size_bytes, home_files, databases,
    updated_at, copy_of_test, sites FROM host_accounts";

/// Accounts (not copies), optionally on one host, by name.
pub async fn list(client: &impl GenericClient, host_id: Option<&str>) -> Result<Vec<Account>> {
    let sql = format!(
        "{SELECT} WHERE ($1::text IS NULL OR host_id = $1) AND copy_of_test = ''
         ORDER BY name, host_id"
    );
    client
        .query(&sql, &[&host_id])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// Copies of accounts made by tests, optionally on one host, by name.
pub async fn list_copies(
    client: &impl GenericClient,
    host_id: Option<&str>,
) -> Result<Vec<Account>> {
    let sql = format!(
        "{SELECT} WHERE ($1::text IS NULL OR host_id = $1) AND copy_of_test <> ''
         ORDER BY name, host_id"
    );
    client
        .query(&sql, &[&host_id])
        .await?
        .iter()
        .map(from_row)
        .collect()
}

/// The copies live tests plan, as accounts on their test hosts, read from
/// the tests' plans: a test's copy is in its test host's inventory only
/// once the agent reports it, and placement must keep the next test off
/// the names of one placed a moment before. Every test counts but those
/// deleted and those failed whose copy is removed already (step `none`).
/// Only the names count here (no sizes, no home).
pub async fn planned_copies(client: &impl GenericClient) -> Result<Vec<Account>> {
    let rows = client
        .query(
            "SELECT id, account, test_host_id, plan, updated_at FROM tests
              WHERE state <> 'deleted' AND NOT (state = 'failed' AND step = 'none')
              ORDER BY id",
            &[],
        )
        .await?;
    let mut copies = Vec::with_capacity(rows.len());
    for row in &rows {
        let plan: serde_json::Value = row.get("plan");
        let plan: CopyPlan =
            serde_json::from_value(plan).map_err(|e| Error::Internal(format!("test plan: {e}")))?;
        copies.push(Account {
            name: row.get("account"),
            host_id: row.get("test_host_id"),
            home: String::new(),
            uid: 0,
            home_size_bytes: 0,
            home_files: 0,
            databases: plan
                .databases
                .into_iter()
                .map(|d| Database {
                    engine: d.engine,
                    server: d.target_server,
                    name: d.name,
                    size_bytes: 0,
                    owner: d.owner,
                    extensions: Vec::new(),
                    md5_password_roles: Vec::new(),
                    unlogged_partitioned_tables: Vec::new(),
                    tables_not_innodb: Vec::new(),
                    inspected: false,
                })
                .collect(),
            updated_at: row.get("updated_at"),
            copy_of_test: Some(row.get("id")),
            sites: Vec::new(),
        });
    }
    Ok(copies)
}

/// The account called `name`, where it lives. An account lives on one
/// host; copies made by tests on test hosts do not count, nor the copy on
/// the target of a migration that has not switched (in flight, or rolled
/// back and being removed). If several other hosts report it, that is a
/// state an operator must look at, and it says so.
pub async fn get(client: &impl GenericClient, name: &str) -> Result<Account> {
    // A migration that switched the account decided where it lives: the
    // old host may still report its stopped copy for a grace period.
    if let Some((host_id, copy_id)) = super::migrations::placement(client, name).await? {
        let sql = format!(
            "{SELECT} WHERE name = $1 AND (copy_of_test = '' OR copy_of_test = $3)
             ORDER BY host_id = $2 DESC, updated_at DESC LIMIT 1"
        );
        if let Some(row) = client.query_opt(&sql, &[&name, &host_id, &copy_id]).await? {
            let mut account = from_row(&row)?;
            account.host_id = host_id;
            account.copy_of_test = None;
            return Ok(account);
        }
    }
    let sql = format!(
        "{SELECT} WHERE name = $1 AND copy_of_test = ''
           AND host_id NOT IN (SELECT id FROM hosts WHERE kind = 'test')
         ORDER BY host_id"
    );
    let mut accounts = client
        .query(&sql, &[&name])
        .await?
        .iter()
        .map(from_row)
        .collect::<Result<Vec<_>>>()?;
    if accounts.len() > 1 {
        // The target of a migration that has not switched holds a partial
        // copy (or one being removed after a rollback): it is not where
        // the account lives.
        let partial: Vec<String> = client
            .query(
                "SELECT DISTINCT target_host_id FROM migrations WHERE account = $1 \
                 AND state NOT IN ('switched', 'completed')",
                &[&name],
            )
            .await?
            .iter()
            .map(|row| row.get(0))
            .collect();
        let living: Vec<Account> = accounts
            .iter()
            .filter(|a| !partial.contains(&a.host_id))
            .cloned()
            .collect();
        if living.len() == 1 {
            accounts = living;
        }
    }
    match accounts.len() {
        0 => Err(Error::NotFound {
            what: "account",
            id: name.to_owned(),
        }),
        1 => Ok(accounts.remove(0)),
        _ => Err(Error::FailedPrecondition(format!(
            "account {name:?} is reported by several hosts ({}); check those hosts",
            accounts
                .iter()
                .map(|a| a.host_id.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// Replaces what is known of `host_id`'s accounts with `accounts`.
pub async fn replace_for_host(
    client: &impl GenericClient,
    host_id: &str,
    accounts: &[Account],
) -> Result<()> {
    let names: Vec<&str> = accounts.iter().map(|a| a.name.as_str()).collect();
    client
        .execute(
            "DELETE FROM host_accounts WHERE host_id = $1 AND NOT (name = ANY($2))",
            &[&host_id, &names],
        )
        .await?;
    let statement = client
        .prepare(
            "INSERT INTO host_accounts (host_id, name, home, uid, home_size_bytes, home_files,
                 databases, updated_at, copy_of_test, sites)
             VALUES ($1, $2, $3, $4, $5, $6, $7, now(), $8, $9)
             ON CONFLICT (host_id, name) DO UPDATE SET home = EXCLUDED.home, uid = EXCLUDED.uid,
                 home_size_bytes = EXCLUDED.home_size_bytes, home_files = EXCLUDED.home_files,
                 databases = EXCLUDED.databases, updated_at = now(),
                 copy_of_test = EXCLUDED.copy_of_test, sites = EXCLUDED.sites",
        )
        .await?;
    for account in accounts {
        let databases = serde_json::to_value(&account.databases)
            .map_err(|e| Error::Internal(format!("encoding databases: {e}")))?;
        let sites = serde_json::to_value(&account.sites)
            .map_err(|e| Error::Internal(format!("encoding sites: {e}")))?;
        client
            .execute(
                &statement,
                &[
                    &host_id,
                    &account.name,
                    &account.home,
                    &i64::from(account.uid),
                    &to_i64(account.home_size_bytes),
                    &to_i64(account.home_files),
                    &databases,
                    &account.copy_of_test.as_deref().unwrap_or(""),
                    &sites,
                ],
            )
            .await?;
    }
    Ok(())
}
