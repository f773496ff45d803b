//! The old copy's retirement at the end of a migration's grace period:
//! [`new_copy_in_place`], asked of the target before anything goes (its
//! agent answers and reports the account's home and databases), then
//! [`retire_account`] on the old host (`Agent/RetireAccount`, which
//! removes only what its own switch record of the migration backs).

use navette_proto::v1;

use super::{CALL_TIMEOUT, CallFailure, call_outcome, client, get_inventory};
use crate::model::{Engine, Host};
use crate::state::Controller;

/// What the old host removed, and what it kept on purpose.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RetiredCopy {
    pub removed: Vec<String>,
    pub kept: Vec<String>,
    pub already: bool,
}

/// Whether the target's agent answers now and its inventory holds
/// `account`'s home and each of `databases` (engine, server, name). A
/// target that does not answer, or has not got it all, is a retry:
/// nothing of the old copy goes while the new one cannot be seen.
pub async fn new_copy_in_place(
    controller: &Controller,
    target: &Host,
    account: &str,
    databases: &[(Engine, String, String)],
) -> Result<(), CallFailure> {
    let inventory = get_inventory(controller, target).await.map_err(|e| {
        CallFailure::Retry(format!(
            "the new copy on {} cannot be checked ({e}); the old copy is kept",
            target.id
        ))
    })?;
    if !inventory
        .accounts
        .iter()
        .any(|a| a.name == account && !a.home.is_empty())
    {
        return Err(CallFailure::Retry(format!(
            "host {} reports no home for {account}; the old copy is kept",
            target.id
        )));
    }
    for (engine, server, name) in databases {
        let found = inventory.accounts.iter().any(|a| {
            a.databases
                .iter()
                .any(|d| d.engine == *engine && d.server == *server && d.name == *name)
        });
        if !found {
            return Err(CallFailure::Retry(format!(
                "host {} does not report the database {name} on {server}; the old copy is kept",
                target.id
            )));
        }
    }
    Ok(())
}

/// Removes the old copy of `account` from `source` for `migration_id`;
/// `mariadb` is the plan's (source server, database) list. Idempotent.
pub async fn retire_account(
    controller: &Controller,
    source: &Host,
    migration_id: &str,
    account: &str,
    mariadb: &[(String, String)],
) -> Result<RetiredCopy, CallFailure> {
    let mut request = tonic::Request::new(v1::RetireAccountRequest {
        migration_id: migration_id.to_owned(),
        account: account.to_owned(),
        mariadb: mariadb
            .iter()
            .map(|(server, database)| v1::CutoverDatabase {
                server: server.clone(),
                database: database.clone(),
            })
            .collect(),
    });
    // Dropping databases and a large home may take longer than a call.
    request.set_timeout(CALL_TIMEOUT * 10);
    let answer = client(controller, source)
        .map_err(|e| CallFailure::Refused(e.to_string()))?
        .retire_account(request)
        .await
        .map_err(|status| call_outcome(source, &status))?
        .into_inner();
    Ok(RetiredCopy {
        removed: answer.removed,
        kept: answer.kept,
        already: answer.already,
    })
}
