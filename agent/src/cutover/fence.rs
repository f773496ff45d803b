//! The account's fence across its database servers, its deadline, the
//! switch and the release: the bookkeeping around [`super::fence_postgres`]
//! and [`super::fence_mariadb`].
//!
//! One fence per account at a time, keyed by account and owned by one
//! migration id. A watchdog task releases it at its deadline unless the
//! switch came first (then the sessions it held are gone and the switch's
//! refusals stand until `ReleaseDatabases`).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::future::{join_all, try_join_all};

use super::fence_mariadb::{self, MyFence};
use super::fence_postgres::{self, PgFence};
use super::state::{self, SwitchRecord};
use super::{Cutover, CutoverError};
use crate::config::{MariadbServer, PostgresqlServer};

/// Tells fences apart, so that a watchdog never releases a later fence.
static FENCE_NUMBER: AtomicU64 = AtomicU64::new(1);

/// The databases of a fence or a switch: (server, database) per engine.
#[derive(Clone, Debug, Default)]
pub struct Databases {
    pub postgres: Vec<(String, String)>,
    pub mariadb: Vec<(String, String)>,
}

/// A fence in force.
#[derive(Debug)]
pub struct Fence {
    pub migration_id: String,
    number: u64,
    pub deadline: Instant,
    postgres: Vec<PgFence>,
    mariadb: Vec<MyFence>,
    /// (server, LSN) and (server, GTID position), in server order.
    pub postgres_positions: Vec<(String, String)>,
    pub mariadb_positions: Vec<(String, String)>,
}

/// What [`Cutover::fence`] answers.
#[derive(Clone, Debug)]
pub struct FenceOutcome {
    pub postgres_positions: Vec<(String, String)>,
    pub mariadb_positions: Vec<(String, String)>,
    pub took: Duration,
    pub remaining: Duration,
    pub already: bool,
}

/// What [`Cutover::switch`] answers.
#[derive(Clone, Debug)]
pub struct SwitchOutcome {
    pub ended_sessions: u32,
    pub postgres_refusal: String,
    pub mariadb_refusal: String,
}

impl Fence {
    async fn release(self) {
        futures_util::future::join(
            futures_util::future::join_all(self.postgres.into_iter().map(fence_postgres::release)),
            futures_util::future::join_all(self.mariadb.into_iter().map(fence_mariadb::release)),
        )
        .await;
    }
}

/// Groups `(server, database)` by server, keeping the first order.
fn by_server(list: &[(String, String)]) -> BTreeMap<String, Vec<String>> {
    let mut grouped: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (server, database) in list {
        let databases = grouped.entry(server.clone()).or_default();
        if !databases.contains(database) {
            databases.push(database.clone());
        }
    }
    grouped
}

impl Cutover {
    fn postgres_server(&self, name: &str) -> Result<PostgresqlServer, CutoverError> {
        self.config
            .postgresql
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                CutoverError::Precondition(format!(
                    "no PostgreSQL server {name:?} in this agent's configuration"
                ))
            })
    }

    fn mariadb_server(&self, name: &str) -> Result<MariadbServer, CutoverError> {
        self.config
            .mariadb
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| {
                CutoverError::Precondition(format!(
                    "no MariaDB server {name:?} in this agent's configuration"
                ))
            })
    }

    /// Fences `databases` of `account` for `migration_id` (see the parent
    /// module). Idempotent: the same migration's fence in force is
    /// answered with the positions taken then.
    pub async fn fence(
        &self,
        migration_id: &str,
        account: &str,
        databases: &Databases,
        deadline: Duration,
        acquire: Duration,
    ) -> Result<FenceOutcome, CutoverError> {
        if let Some(found) = in_force(&*self.fences.lock().await, migration_id, account) {
            return found;
        }
        // Taken without holding the map: another account's fence, or a
        // deadline's release, does not wait for this one's locks.
        let started = Instant::now();
        let mut fence = Fence {
            migration_id: migration_id.to_owned(),
            number: FENCE_NUMBER.fetch_add(1, Ordering::Relaxed),
            deadline: started + deadline,
            postgres: Vec::new(),
            mariadb: Vec::new(),
            postgres_positions: Vec::new(),
            mariadb_positions: Vec::new(),
        };
        let taken = self
            .take(&mut fence, migration_id, databases, deadline, acquire)
            .await;
        if let Err(error) = taken {
            fence.release().await;
            return Err(error);
        }
        let outcome = FenceOutcome {
            postgres_positions: fence.postgres_positions.clone(),
            mariadb_positions: fence.mariadb_positions.clone(),
            took: started.elapsed(),
            remaining: deadline.saturating_sub(started.elapsed()),
            already: false,
        };
        tracing::info!(
            message = "account's databases fenced",
            migration = %migration_id,
            %account,
            took_us = outcome.took.as_micros() as u64,
            postgres = ?outcome.postgres_positions,
            mariadb = ?outcome.mariadb_positions
        );
        let number = fence.number;
        let mut fences = self.fences.lock().await;
        if let Some(found) = in_force(&fences, migration_id, account) {
            // A concurrent call for the account won: this fence goes.
            drop(fences);
            fence.release().await;
            return found;
        }
        fences.insert(account.to_owned(), fence);
        drop(fences);
        self.watch_deadline(account, number, fence_deadline(started, deadline));
        Ok(outcome)
    }

    async fn take(
        &self,
        fence: &mut Fence,
        migration_id: &str,
        databases: &Databases,
        deadline: Duration,
        acquire: Duration,
    ) -> Result<(), CutoverError> {
        let mut postgres = Vec::new();
        for (server_name, names) in by_server(&databases.postgres) {
            postgres.push((self.postgres_server(&server_name)?, names));
        }
        let mut mariadb = Vec::new();
        for (server_name, names) in by_server(&databases.mariadb) {
            mariadb.push((self.mariadb_server(&server_name)?, names));
        }
        // Every database and server at once (their locks are on different
        // tables); a server's position only once all its databases are
        // fenced. Whatever was taken is kept in `fence`, even on an error,
        // so that the caller releases it.
        let postgres_fences = join_all(postgres.iter().map(|(server, names)| async move {
            let taken = join_all(names.iter().map(|database| {
                fence_postgres::fence(server, database, migration_id, deadline, acquire)
            }))
            .await;
            let mut held = Vec::with_capacity(taken.len());
            let mut failed = None;
            for result in taken {
                match result {
                    Ok(one) => held.push(one),
                    Err(error) => failed = failed.or(Some(error)),
                }
            }
            let position = match (failed, held.first()) {
                (Some(error), _) => Err(error),
                (None, Some(first)) => fence_postgres::position(first, migration_id).await,
                (None, None) => Err(CutoverError::BadRequest(format!(
                    "no database given for PostgreSQL server {}",
                    server.name
                ))),
            };
            (held, position.map(|lsn| (server.name.clone(), lsn)))
        }));
        let mariadb_fences = join_all(mariadb.iter().map(|(server, names)| async move {
            fence_mariadb::fence(server, names, migration_id, deadline, acquire)
                .await
                .map(|(held, position)| (held, (server.name.clone(), position)))
        }));
        let (postgres_taken, mariadb_taken) =
            futures_util::future::join(postgres_fences, mariadb_fences).await;
        let mut failed = None;
        for (held, position) in postgres_taken {
            fence.postgres.extend(held);
            match position {
                Ok(position) => fence.postgres_positions.push(position),
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        for taken in mariadb_taken {
            match taken {
                Ok((held, position)) => {
                    fence.mariadb.push(held);
                    fence.mariadb_positions.push(position);
                }
                Err(error) => failed = failed.or(Some(error)),
            }
        }
        match failed {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    /// Releases fence `number` of `account` at `at`, if still in force.
    fn watch_deadline(&self, account: &str, number: u64, at: tokio::time::Instant) {
        let (fences, account) = (self.fences.clone(), account.to_owned());
        tokio::spawn(async move {
            tokio::time::sleep_until(at).await;
            let mut fences = fences.lock().await;
            if fences.get(&account).is_some_and(|f| f.number == number)
                && let Some(fence) = fences.remove(&account)
            {
                tracing::warn!(
                    message = "a fence reached its deadline; the account's writers go on",
                    migration = %fence.migration_id,
                    %account
                );
                fence.release().await;
            }
        });
    }

    /// The switch of `account`'s databases for `migration_id`: new
    /// sessions refused, the account's sessions ended (the fence's held
    /// writers among them), then the fence released. Idempotent.
    pub async fn switch(
        &self,
        migration_id: &str,
        account: &str,
        new_address: &str,
        databases: &Databases,
    ) -> Result<SwitchOutcome, CutoverError> {
        let mut fences = self.fences.lock().await;
        if let Some(existing) = fences.get(account)
            && existing.migration_id != migration_id
        {
            return Err(CutoverError::OtherMigration {
                account: account.to_owned(),
                what: "fenced",
                other: existing.migration_id.clone(),
            });
        }
        let path = state::path(&self.config.state_dir, "switch", account);
        let mut record: SwitchRecord = match state::read::<SwitchRecord>(&path)? {
            Some(record) if record.migration_id != migration_id => {
                let record: SwitchRecord = record;
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "switched",
                    other: record.migration_id,
                });
            }
            Some(record) => record,
            None => SwitchRecord {
                migration_id: migration_id.to_owned(),
                account: account.to_owned(),
                ..SwitchRecord::default()
            },
        };
        let started = Instant::now();
        // What each step changes is recorded before the change, for every
        // server at once; then every database and server is switched at
        // once (each on its own sessions).
        // One session per PostgreSQL server, opened at once: it reads the
        // limits not recorded yet, then switches the server's databases.
        let mut postgres = Vec::new();
        for (server_name, names) in by_server(&databases.postgres) {
            postgres.push((self.postgres_server(&server_name)?, names));
        }
        let recorded = &record.postgres;
        let sessions = try_join_all(postgres.iter().map(|(server, names)| async move {
            let client = fence_postgres::switch_session(server, &names[0]).await?;
            let unknown: Vec<String> = names
                .iter()
                .filter(|database| {
                    !recorded
                        .iter()
                        .any(|(s, d, _)| *s == server.name && d == *database)
                })
                .cloned()
                .collect();
            let limits = match unknown.is_empty() {
                true => Vec::new(),
                false => fence_postgres::connection_limits(&client, &server.name, &unknown).await?,
            };
            Ok::<_, CutoverError>((client, unknown, limits))
        }));
        let mut mariadb = Vec::new();
        for server_name in by_server(&databases.mariadb).into_keys() {
            mariadb.push(self.mariadb_server(&server_name)?);
        }
        let to_lock = try_join_all(
            mariadb
                .iter()
                .map(|server| fence_mariadb::locked_by_switch(server, account)),
        );
        let (sessions, to_lock) = futures_util::future::try_join(sessions, to_lock).await?;
        let mut clients = Vec::with_capacity(sessions.len());
        for ((server, _), (client, unknown, limits)) in postgres.iter().zip(sessions) {
            for (database, limit) in unknown.into_iter().zip(limits) {
                record.postgres.push((server.name.clone(), database, limit));
            }
            clients.push(client);
        }
        for (server, (users, _)) in mariadb.iter().zip(&to_lock) {
            for (user, host) in users {
                let entry = (server.name.clone(), user.clone(), host.clone());
                if !record.mariadb.contains(&entry) {
                    record.mariadb.push(entry);
                }
            }
        }
        state::write(&path, &record)?;
        let recorded_us = started.elapsed().as_micros() as u64;
        let fence_sessions: BTreeMap<String, u64> = fences
            .get(account)
            .map(|f| {
                f.mariadb
                    .iter()
                    .map(|m| (m.server.clone(), m.connection_id))
                    .collect()
            })
            .unwrap_or_default();
        let postgres_switches = try_join_all(
            postgres
                .iter()
                .zip(&clients)
                .map(|((server, names), client)| {
                    fence_postgres::switch(client, &server.name, names)
                }),
        );
        let mariadb_switches = try_join_all(mariadb.iter().zip(&to_lock).map(
            |(server, (users, names))| {
                fence_mariadb::switch(
                    server,
                    account,
                    users,
                    names,
                    fence_sessions.get(&server.name).copied(),
                )
            },
        ));
        let (postgres_ended, mariadb_ended) =
            futures_util::future::try_join(postgres_switches, mariadb_switches).await?;
        let ended: u32 = postgres_ended.iter().chain(&mariadb_ended).sum();
        let switched_us = started.elapsed().as_micros() as u64;
        // The held writers are gone: the fence has nothing left to hold,
        // and no session of the account can come back to wait for it, so
        // its release does not hold up the answer.
        if let Some(fence) = fences.remove(account) {
            tokio::spawn(fence.release());
        }
        tracing::info!(
            message = "account's databases switched to the new host",
            migration = %migration_id,
            %account,
            new_address,
            ended_sessions = ended,
            recorded_us,
            switched_us,
            released_us = started.elapsed().as_micros() as u64
        );
        Ok(SwitchOutcome {
            ended_sessions: ended,
            postgres_refusal: format!(
                "FATAL: too many connections for database \"<name>\" (CONNECTION LIMIT 0; the databases are now at {new_address})"
            ),
            mariadb_refusal: format!(
                "ERROR 4151: Access denied, this account is locked (the databases are now at {new_address})"
            ),
        })
    }

    /// Rollback: releases `migration_id`'s fence of `account` (held
    /// writers go on) and undoes its switch. Returns (unfenced,
    /// unswitched). Idempotent.
    pub async fn release(
        &self,
        migration_id: &str,
        account: &str,
    ) -> Result<(bool, bool), CutoverError> {
        let mut fences = self.fences.lock().await;
        let mut unfenced = false;
        match fences.get(account) {
            Some(existing) if existing.migration_id != migration_id => {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "fenced",
                    other: existing.migration_id.clone(),
                });
            }
            Some(_) => {
                if let Some(fence) = fences.remove(account) {
                    fence.release().await;
                    unfenced = true;
                }
            }
            None => {}
        }
        let path = state::path(&self.config.state_dir, "switch", account);
        let unswitched = match state::read::<SwitchRecord>(&path)? {
            Some(record) if record.migration_id != migration_id => {
                return Err(CutoverError::OtherMigration {
                    account: account.to_owned(),
                    what: "switched",
                    other: record.migration_id,
                });
            }
            Some(record) => {
                for (server_name, database, limit) in &record.postgres {
                    let server = self.postgres_server(server_name)?;
                    fence_postgres::unswitch(&server, database, *limit).await?;
                }
                let mut by_server: BTreeMap<&str, Vec<(String, String)>> = BTreeMap::new();
                for (server_name, user, host) in &record.mariadb {
                    by_server
                        .entry(server_name)
                        .or_default()
                        .push((user.clone(), host.clone()));
                }
                for (server_name, users) in by_server {
                    let server = self.mariadb_server(server_name)?;
                    fence_mariadb::unswitch(&server, &users).await?;
                }
                state::remove(&path)?;
                true
            }
            None => false,
        };
        tracing::info!(message = "account's databases released", migration = %migration_id, %account, unfenced, unswitched);
        Ok((unfenced, unswitched))
    }
}

/// The answer for `account` if a fence is in force for it: the same
/// migration's positions, or a refusal naming the other migration.
fn in_force(
    fences: &std::collections::HashMap<String, Fence>,
    migration_id: &str,
    account: &str,
) -> Option<Result<FenceOutcome, CutoverError>> {
    let existing = fences.get(account)?;
    if existing.migration_id != migration_id {
        return Some(Err(CutoverError::OtherMigration {
            account: account.to_owned(),
            what: "fenced",
            other: existing.migration_id.clone(),
        }));
    }
    Some(Ok(FenceOutcome {
        postgres_positions: existing.postgres_positions.clone(),
        mariadb_positions: existing.mariadb_positions.clone(),
        took: Duration::ZERO,
        remaining: existing.deadline.saturating_duration_since(Instant::now()),
        already: true,
    }))
}

fn fence_deadline(started: Instant, deadline: Duration) -> tokio::time::Instant {
    tokio::time::Instant::from_std(started + deadline)
}
