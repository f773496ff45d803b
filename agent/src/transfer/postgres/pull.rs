//! The target side: [`pull`] copies the databases of a transfer from the
//! source agent into this host's PostgreSQL servers, step by step as the
//! module documentation of [`super`] describes, and checks the result.
//!
//! Before anything is changed, every database of the transfer is checked
//! (`preflight`): versions (the target must be the same major or newer),
//! extensions the target lacks, client programs, and that the target is
//! not the source itself. In the snapshot, what the source sends is checked
//! against the target ([`acceptance`](super::acceptance)) before the first
//! statement changes it, and everything that can run the customer's code
//! runs as the copy's loader ([`Loader`]), which is dropped however the
//! copy ends.
//!
//! A copy waits out an outage of the source (its agent or its server
//! cannot be reached, a session was cut: a restart) as the rule of
//! [`outage`](crate::transfer::outage) says: preflight is tried again, and
//! the database is copied again with a new snapshot, until the outage has
//! lasted [`PullOptions::outage_bound`]; the progress and the log say what
//! it waits for meanwhile. Refusals fail at once, and so does a copy cut
//! `INTERRUPTIONS` times after it had reached the source again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use navette_proto::v1::postgres_source_client::PostgresSourceClient;
use navette_proto::v1::{
    CopyLargeObjectsRequest, DatabaseCopy, DescribeDatabaseRequest, DescribeScope,
    DumpSchemaRequest, PostgresDatabaseDescription,
};
use tokio_postgres::Client;
use tonic::transport::Channel;

mod preflight;
mod sequences;
mod snapshot;

use preflight::{Planned, preflight, totals};
use sequences::{check_sequences, set_sequences};
use snapshot::HeldSnapshot;

use super::acceptance::{self, AcceptedArchive, AccountRoles, TargetFacts};
use super::digest::RowHash;
use super::error::PostgresCopyError;
use super::loader::Loader;
use super::session;
use super::tables::{DataCheck, DataCopy};
use super::tally::Tally;
use super::target::{RolesOutcome, Target};
use super::tools::PgTools;
use super::{large_objects, restore, schema_objects, target};
use crate::config::PostgresqlServer;
use crate::transfer::outage::{OUTAGE_BOUND, Outages};
use crate::transfer::progress::Progress;

/// Largest message accepted from the source (chunks are 1 MiB).
const MAX_MESSAGE: usize = 64 << 20;
/// How many times a database copy may be interrupted after it reached the
/// source (held a snapshot): each such interruption ends an outage, so
/// without this a source that keeps cutting the copy would be copied from
/// forever.
const INTERRUPTIONS: u32 = 5;

/// How a pull runs.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Parallel table copies, and jobs of pg_restore's post-data section.
    /// Default 4.
    pub workers: usize,
    /// How long the source may stay unreachable, from the first failure,
    /// before the copy fails. Default [`OUTAGE_BOUND`] (as files).
    pub outage_bound: Duration,
    /// The target's client programs (pg_restore) per target
    /// server name, overriding the configuration's `bin_dir`; a server with
    /// neither uses [`PgTools::locate`] of its major version.
    pub tools: BTreeMap<String, PgTools>,
    /// Where schema archives are written during a copy. Default: the
    /// system's temporary directory.
    pub work_dir: PathBuf,
    /// Tables bigger than this are copied as several block ranges at once
    /// (source 14 or later). Default 1 GiB: below that, one stream per table
    /// keeps up with the target, and a whole-table copy can use
    /// `COPY FREEZE`.
    pub split_bytes: u64,
    /// Tables (or block ranges) of at least this size are read on the
    /// source through a bulk session: one more connection to the source
    /// server, much less CPU per row. Default 16 MiB.
    pub bulk_bytes: u64,
    /// How every table is checked. Default: row digests
    /// ([`DataCheck::RowDigest`]).
    pub check: DataCheck,
    /// Planner statistics like the source's: `ANALYZE` of each table as
    /// soon as it is loaded (while it is checked), and after the post-data
    /// section of what needs its objects (expression indexes, extended
    /// statistics, partitioned tables, materialized views). Default on.
    pub analyze: bool,
    /// `maintenance_work_mem` of the index builds: each table's, as soon
    /// as it is loaded, and the post-data restore's, per job. Default
    /// `256MB`.
    pub maintenance_work_mem: String,
    /// The account the copy is for: when set, only roles that do not exist
    /// on the target, or that the target server's role ledger gives this
    /// account, are accepted as its own, and the roles the copy creates
    /// are recorded there for it (see [`acceptance`], [`super::ledger`]).
    /// Default none: every role the database refers to is taken for the
    /// account's, as long as it has no powers.
    pub account: Option<String>,
    /// The row hash of the transfer's protocol version
    /// ([`crate::transfer::protocol`]): the source digests with the same.
    /// Default: the newest ([`RowHash::Xxh3`]).
    pub row_hash: RowHash,
    /// Source databases (by name) to copy from a logical replication
    /// slot's snapshot, and the slot to create for each (see
    /// [`crate::replication::postgres`]): the copy then holds exactly what
    /// committed before the slot's consistent point, and a subscription
    /// from the slot brings the rest. Default none: a snapshot of a plain
    /// transaction.
    pub replication_slots: BTreeMap<String, String>,
}

impl Default for PullOptions {
    fn default() -> PullOptions {
        PullOptions {
            workers: 4,
            outage_bound: OUTAGE_BOUND,
            tools: BTreeMap::new(),
            work_dir: std::env::temp_dir(),
            split_bytes: 1 << 30,
            bulk_bytes: 16 << 20,
            check: DataCheck::default(),
            analyze: true,
            maintenance_work_mem: "256MB".to_owned(),
            account: None,
            row_hash: RowHash::Xxh3,
            replication_slots: BTreeMap::new(),
        }
    }
}

/// What a pull did.
#[derive(Clone, Debug, Default)]
pub struct PostgresReport {
    pub databases: Vec<DatabaseReport>,
}

/// What the copy of one database did.
#[derive(Clone, Debug, Default)]
pub struct DatabaseReport {
    pub source_server: String,
    pub source_database: String,
    pub target_server: String,
    pub target_database: String,
    /// server_version_num of each side.
    pub source_version: u32,
    pub target_version: u32,
    pub roles: RolesOutcome,
    pub tables: usize,
    pub rows: u64,
    /// COPY bytes received.
    pub data_bytes: u64,
    /// Tables whose count and checksum were compared (all, unless
    /// verification was turned off).
    pub tables_verified: usize,
    /// Tables copied in text format.
    pub text_tables: Vec<String>,
    /// Indexes built as soon as their table was loaded (the others are
    /// built by the post-data section).
    pub indexes_built_early: usize,
    pub sequences: usize,
    pub large_objects: u64,
    pub schema_objects: usize,
    /// How many times the copy started (more than 1: the link, the
    /// source's server or the snapshot was lost, and the database was
    /// copied again).
    pub attempts: u32,
    pub timings: Timings,
    /// Copied from a replication slot's snapshot: the slot and its
    /// consistent point (empty otherwise).
    pub slot_name: String,
    pub consistent_lsn: String,
}

/// Where the time went, per step.
#[derive(Clone, Debug, Default)]
pub struct Timings {
    /// Snapshot, description, roles, database, schema archive, pre-data.
    pub prepare: Duration,
    /// Tables (with their checksums), large objects, sequences.
    pub data: Duration,
    /// Indexes, constraints, triggers, materialized views.
    pub post_data: Duration,
    /// What is analyzed after the post-data section (tables are analyzed
    /// in `data`, while they are checked).
    pub analyze: Duration,
    /// Sequences, large objects and schema checks (table checksums are in
    /// `data`).
    pub verify: Duration,
    pub total: Duration,
}

/// Copies `copies` (databases of `transfer_id`) from the source agent
/// behind `channel` into `target_servers` of this host. Reports progress to
/// `progress` (phase `postgresql <database>`).
pub async fn pull(
    channel: Channel,
    transfer_id: &str,
    copies: &[DatabaseCopy],
    target_servers: &[PostgresqlServer],
    options: &PullOptions,
    progress: &Progress,
) -> Result<PostgresReport, PostgresCopyError> {
    let source = PostgresSourceClient::new(channel).max_decoding_message_size(MAX_MESSAGE);
    let mut outages = Outages::new(progress, transfer_id, options.outage_bound);
    let mut planned = Vec::with_capacity(copies.len());
    for copy in copies {
        let plan = loop {
            match preflight(&source, transfer_id, copy, target_servers, options).await {
                Ok(plan) => break plan,
                Err(error) if error.is_transient() => wait_out(&mut outages, copy, error).await?,
                Err(error) => return Err(error),
            }
        };
        outages.reached();
        progress.add(
            &progress.tables_total,
            plan.counted_tables.load(Ordering::Relaxed),
        );
        progress.add(
            &progress.bytes_total,
            plan.counted_bytes.load(Ordering::Relaxed),
        );
        planned.push(plan);
    }
    let mut report = PostgresReport::default();
    for plan in &planned {
        let (mut attempt, mut interrupted) = (0, 0);
        let database = loop {
            attempt += 1;
            let reaches = outages.reaches();
            let tally = Tally::new(progress);
            let copied = copy_database(
                &source,
                transfer_id,
                plan,
                options,
                progress,
                &tally,
                &mut outages,
            );
            match copied.await {
                Ok(mut database) => {
                    database.attempts = attempt;
                    break database;
                }
                Err(error) if error.is_transient() => {
                    tally.undo();
                    if outages.reaches() > reaches {
                        interrupted += 1;
                    }
                    if interrupted >= INTERRUPTIONS {
                        tracing::warn!(
                            message = "PostgreSQL copy interrupted too often; giving up",
                            transfer = %transfer_id,
                            database = %plan.copy.target_database,
                            interrupted,
                            error = %crate::error_chain(&error)
                        );
                        return Err(error);
                    }
                    tracing::info!(
                        message = "PostgreSQL copy interrupted; the database will be copied again",
                        transfer = %transfer_id,
                        database = %plan.copy.target_database,
                        attempt,
                        error = %crate::error_chain(&error)
                    );
                    wait_out(&mut outages, plan.copy, error).await?;
                }
                Err(error) => return Err(error),
            }
        };
        tracing::info!(
            message = "PostgreSQL database copied",
            transfer = %transfer_id,
            database = %plan.copy.target_database,
            tables = database.tables,
            rows = database.rows,
            bytes = database.data_bytes,
            attempts = database.attempts,
            seconds = database.timings.total.as_secs_f64(),
            prepare_seconds = database.timings.prepare.as_secs_f64(),
            data_seconds = database.timings.data.as_secs_f64(),
            post_data_seconds = database.timings.post_data.as_secs_f64(),
            analyze_seconds = database.timings.analyze.as_secs_f64(),
            verify_seconds = database.timings.verify.as_secs_f64()
        );
        report.databases.push(database);
    }
    Ok(report)
}

/// After a transient `error`: waits before the next attempt (saying what
/// for), or fails with it once the source has been unreachable for longer
/// than the bound.
async fn wait_out(
    outages: &mut Outages<'_>,
    copy: &DatabaseCopy,
    error: PostgresCopyError,
) -> Result<(), PostgresCopyError> {
    let what = format!(
        "source PostgreSQL server {}, database {}",
        copy.source_server, copy.source_database
    );
    match outages.wait(&what, &crate::error_chain(&error)).await {
        Ok(()) => Ok(()),
        Err(gave_up) => Err(PostgresCopyError::Unreachable {
            database: copy.target_database.clone(),
            what: gave_up.what,
            lasted_seconds: gave_up.lasted.as_secs(),
            bound_seconds: gave_up.bound.as_secs(),
            last: Box::new(error),
        }),
    }
}

fn source_error(copy: &DatabaseCopy, what: &str, status: &tonic::Status) -> PostgresCopyError {
    PostgresCopyError::from_source(&copy.source_server, &copy.source_database, what, status)
}

fn target_error(
    server: &PostgresqlServer,
    database: &str,
    what: &str,
) -> impl FnOnce(tokio_postgres::Error) -> PostgresCopyError + use<> {
    let server = server.name.clone();
    let database = database.to_owned();
    let what = what.to_owned();
    move |source| PostgresCopyError::Target {
        server,
        database,
        what,
        source,
    }
}

async fn connect(
    server: &PostgresqlServer,
    database: &str,
    target_database: &str,
) -> Result<Client, PostgresCopyError> {
    session::connect(server, database)
        .await
        .map_err(target_error(
            server,
            target_database,
            &super::loader::connecting(server, "connecting"),
        ))
}

/// A file name for work files: the transfer and database, in safe
/// characters.
fn work_file(options: &PullOptions, transfer_id: &str, copy: &DatabaseCopy) -> PathBuf {
    let safe = |text: &str| -> String {
        text.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect()
    };
    options.work_dir.join(format!(
        "navette-pg-{}-{}-{}.dump",
        safe(transfer_id),
        safe(&copy.target_server),
        safe(&copy.target_database)
    ))
}

/// One attempt at copying one database; `outages` hears when the source's
/// snapshot is held (the source is reached again).
async fn copy_database(
    source: &PostgresSourceClient<Channel>,
    transfer_id: &str,
    plan: &Planned<'_>,
    options: &PullOptions,
    progress: &Progress,
    tally: &Tally<'_>,
    outages: &mut Outages<'_>,
) -> Result<DatabaseReport, PostgresCopyError> {
    let started = Instant::now();
    let (copy, server) = (plan.copy, plan.server);
    let database = copy.target_database.as_str();
    progress.set_phase(format!("postgresql {database}"));

    let slot = options.replication_slots.get(&copy.source_database);
    let snapshot = HeldSnapshot::open(source, transfer_id, copy, slot).await?;
    outages.reached();
    tracing::debug!(
        message = "snapshot held",
        database,
        seconds = started.elapsed().as_secs_f64()
    );
    // The source describes the database while it dumps the schema.
    let admin = connect(server, "postgres", database).await?;
    let target = Target {
        client: &admin,
        server,
        database,
        account: options.account.as_deref(),
        transfer_id,
    };
    let describe = async {
        let description = source
            .clone()
            .describe_database(describe_request(
                transfer_id,
                copy,
                &snapshot.name,
                DescribeScope::Copy,
            ))
            .await
            .map_err(|status| source_error(copy, "describing the database", &status))?
            .into_inner();
        tracing::debug!(
            message = "described in the snapshot",
            database,
            seconds = started.elapsed().as_secs_f64()
        );
        // The totals came from the description outside the snapshot.
        adjust(
            &progress.tables_total,
            &plan.counted_tables,
            description.tables.len() as u64,
        );
        adjust(
            &progress.bytes_total,
            &plan.counted_bytes,
            totals(&description),
        );
        Ok::<_, PostgresCopyError>(description)
    };
    let mut schema_source = source.clone();
    let fetch_schema = restore::fetch_schema(
        &mut schema_source,
        DumpSchemaRequest {
            transfer_id: transfer_id.to_owned(),
            server: copy.source_server.clone(),
            database: copy.source_database.clone(),
            snapshot_name: snapshot.name.clone(),
        },
        work_file(options, transfer_id, copy),
        database,
    );
    let (description, archive) = tokio::try_join!(describe, fetch_schema)?;
    tracing::debug!(
        message = "schema fetched",
        database,
        seconds = started.elapsed().as_secs_f64()
    );
    tally.sent(archive.bytes);

    // What the target accepts of it, before anything is applied.
    let (account, accepted) = accept(
        plan,
        options.account.as_deref(),
        &admin,
        &description,
        &archive.path,
    )
    .await?;
    let properties = description.properties.clone().unwrap_or_default();
    let roles = target
        .ensure_roles(&description.roles, &description.memberships)
        .await?;
    target
        .recreate_database(&properties, session::major(plan.target_version))
        .await?;
    // From here on, everything of the customer's schema runs in sessions
    // of the loader, which is dropped however the copy ends.
    let loader = Loader::create(&admin, server, database, &account.names).await?;
    let loaded = load(Loading {
        source,
        transfer_id,
        plan,
        options,
        tally,
        snapshot,
        description: &description,
        archive,
        accepted: &accepted,
        loader: &loader,
        started,
    })
    .await;
    let dropped = loader
        .drop_role(&admin, server, database)
        .await
        .map_err(target_error(server, database, "dropping the loader role"));
    let mut report = loaded?;
    dropped?;
    target
        .set_database_properties(&properties, &description.roles)
        .await?;
    report.roles = roles;
    report.timings.total = started.elapsed();
    Ok(report)
}

/// Checks the description and the archive's table of contents against
/// the target ([`acceptance`]): the account's roles and the entries to
/// restore, or every finding.
async fn accept(
    plan: &Planned<'_>,
    account: Option<&str>,
    admin: &Client,
    description: &PostgresDatabaseDescription,
    archive: &std::path::Path,
) -> Result<(AccountRoles, AcceptedArchive), PostgresCopyError> {
    let (server, database) = (plan.server, plan.copy.target_database.as_str());
    let names: Vec<String> = description.roles.iter().map(|r| r.name.clone()).collect();
    let facts = TargetFacts::read(admin, &server.user, account, &names)
        .await
        .map_err(target_error(
            server,
            database,
            "reading the target's roles and settings",
        ))?;
    let toc = restore::table_of_contents(&plan.tools, server, database, archive).await?;
    let mut findings = Vec::new();
    let account = acceptance::check_description(description, &facts).unwrap_or_else(|refused| {
        findings.extend(refused);
        AccountRoles {
            names: names.iter().cloned().collect(),
        }
    });
    let accepted = acceptance::check_archive(&toc, &account).unwrap_or_else(|refused| {
        findings.extend(refused);
        AcceptedArchive::default()
    });
    if !findings.is_empty() {
        tracing::warn!(
            message = "PostgreSQL copy refused",
            database,
            findings = %findings.join("; ")
        );
        return Err(PostgresCopyError::NotAccepted {
            database: database.to_owned(),
            findings,
        });
    }
    Ok((account, accepted))
}

/// What [`load`] needs.
struct Loading<'a> {
    source: &'a PostgresSourceClient<Channel>,
    transfer_id: &'a str,
    plan: &'a Planned<'a>,
    options: &'a PullOptions,
    tally: &'a Tally<'a>,
    snapshot: HeldSnapshot,
    description: &'a PostgresDatabaseDescription,
    archive: restore::Archive,
    accepted: &'a AcceptedArchive,
    loader: &'a Loader,
    started: Instant,
}

/// Everything after the database is created, as the loader (but the
/// extensions, created by the superuser): pre-data, data, post-data,
/// statistics and verification.
async fn load(loading: Loading<'_>) -> Result<DatabaseReport, PostgresCopyError> {
    let Loading {
        source,
        transfer_id,
        plan,
        options,
        tally,
        mut snapshot,
        description,
        archive,
        accepted,
        loader,
        started,
    } = loading;
    let (copy, server) = (plan.copy, plan.server);
    let database = copy.target_database.as_str();
    let workers = options.workers.max(1);
    // Pre-data in three steps: the schemas (empty), the extensions in
    // them, the rest.
    let list = archive.path.with_extension("list");
    let pre_data = restore::Section {
        name: "pre-data",
        jobs: 1,
        maintenance_work_mem: None,
        list: Some(&list),
    };
    let restored = async {
        restore::write_list(&list, &accepted.list(|entry| entry.kind == "SCHEMA")).await?;
        restore::pg_restore(
            &plan.tools,
            &loader.server,
            database,
            &archive.path,
            pre_data,
        )
        .await?;
        let superuser = connect(server, database, database).await?;
        // Those of the description the archive creates too.
        let extensions: Vec<_> = description
            .extensions
            .iter()
            .filter(|e| accepted.extensions.contains(&e.name))
            .cloned()
            .collect();
        target::create_extensions(&superuser, server, database, &extensions).await?;
        drop(superuser);
        restore::write_list(&list, &accepted.list(|entry| entry.kind != "SCHEMA")).await?;
        restore::pg_restore(
            &plan.tools,
            &loader.server,
            database,
            &archive.path,
            pre_data,
        )
        .await
    }
    .await;
    let _ = std::fs::remove_file(&list);
    restored?;
    let prepared = started.elapsed();
    let server = &loader.server;
    // Data: tables (in parallel, each checked) and large objects, then
    // sequences, all in the snapshot.
    let data_started = Instant::now();
    let objects = connect(server, database, database).await?;
    let data = DataCopy {
        source,
        transfer_id,
        source_server: &copy.source_server,
        source_database: &copy.source_database,
        snapshot: &snapshot.name,
        target_server: server,
        target_database: database,
        workers,
        split_bytes: options.split_bytes,
        bulk_bytes: options.bulk_bytes,
        ranges: session::major(snapshot.server_version_num) >= 14,
        check: options.check,
        analyze: options.analyze,
        index_memory: &options.maintenance_work_mem,
        row_hash: options.row_hash,
        tally,
    };
    let large_objects_copy = async {
        if description.large_objects == 0 {
            return Ok(large_objects::Copied::default());
        }
        large_objects::copy(
            source,
            CopyLargeObjectsRequest {
                transfer_id: transfer_id.to_owned(),
                server: copy.source_server.clone(),
                database: copy.source_database.clone(),
                snapshot_name: snapshot.name.clone(),
            },
            &objects,
            &server.name,
            database,
            tally,
        )
        .await
    };
    // What the schema must look like at the end, read in the snapshot while
    // the data flows.
    let source_schema = async {
        source
            .clone()
            .describe_database(describe_request(
                transfer_id,
                copy,
                &snapshot.name,
                DescribeScope::SchemaObjects,
            ))
            .await
            .map(|answer| answer.into_inner().schema_objects)
            .map_err(|status| source_error(copy, "listing the schema's objects", &status))
    };
    let (data, copied_objects, source_schema) = tokio::try_join!(
        data.run(&description.tables),
        large_objects_copy,
        source_schema
    )?;
    set_sequences(&objects, server, database, description).await?;
    snapshot.check(database).await?;
    let (slot_name, consistent_lsn) = (snapshot.slot_name.clone(), snapshot.consistent_lsn.clone());
    drop(snapshot);
    let data_time = data_started.elapsed();

    let post_started = Instant::now();
    // What the data phase built as soon as each table was loaded is left
    // out of the post-data section, as is what the target did not accept.
    let list = archive.path.with_extension("list");
    restore::write_list(
        &list,
        &accepted.list(|entry| !data.built_early.contains(&(entry.catalog, entry.oid))),
    )
    .await?;
    let restored = restore::pg_restore(
        &plan.tools,
        server,
        database,
        &archive.path,
        restore::Section {
            name: "post-data",
            jobs: workers,
            maintenance_work_mem: Some(&options.maintenance_work_mem),
            list: Some(&list),
        },
    )
    .await;
    let _ = std::fs::remove_file(&list);
    restored?;
    drop(archive);
    let post_data = post_started.elapsed();
    let analyze_started = Instant::now();
    if options.analyze {
        restore::analyze_after_post_data(&objects)
            .await
            .map_err(target_error(server, database, "analyzing after post-data"))?;
    }
    let analyze = analyze_started.elapsed();

    let verify_started = Instant::now();
    let mut problems = data.problems.clone();
    problems.extend(check_sequences(&objects, server, database, description).await?);
    problems.extend(
        large_objects::verify(&objects, &copied_objects)
            .await
            .map_err(target_error(server, database, "reading large objects back"))?,
    );
    let on_target =
        schema_objects::read(&objects)
            .await
            .map_err(|error| PostgresCopyError::Target {
                server: server.name.clone(),
                database: database.to_owned(),
                what: error.what,
                source: error.source,
            })?;
    problems.extend(schema_objects::compare(&source_schema, &on_target));
    if !problems.is_empty() {
        return Err(PostgresCopyError::Mismatch {
            database: database.to_owned(),
            problems,
        });
    }
    let verify = verify_started.elapsed();

    Ok(DatabaseReport {
        source_server: copy.source_server.clone(),
        source_database: copy.source_database.clone(),
        target_server: copy.target_server.clone(),
        target_database: copy.target_database.clone(),
        source_version: description.server_version_num,
        target_version: plan.target_version,
        roles: RolesOutcome::default(),
        tables: description.tables.len(),
        rows: data.rows,
        data_bytes: data.bytes,
        tables_verified: data.tables_verified,
        indexes_built_early: data
            .built_early
            .iter()
            .filter(|(catalog, _)| *catalog == super::tables::PG_CLASS)
            .count(),
        text_tables: data.text_tables,
        sequences: description.sequences.len(),
        large_objects: copied_objects.digests.len() as u64,
        schema_objects: on_target.len(),
        attempts: 1,
        timings: Timings {
            prepare: prepared,
            data: data_time,
            post_data,
            analyze,
            verify,
            total: started.elapsed(),
        },
        slot_name,
        consistent_lsn,
    })
}

/// What to ask the source for a description of `copy`'s database, in
/// `snapshot` (empty: outside any snapshot).
fn describe_request(
    transfer_id: &str,
    copy: &DatabaseCopy,
    snapshot: &str,
    scope: DescribeScope,
) -> DescribeDatabaseRequest {
    DescribeDatabaseRequest {
        transfer_id: transfer_id.to_owned(),
        server: copy.source_server.clone(),
        database: copy.source_database.clone(),
        snapshot_name: snapshot.to_owned(),
        scope: scope.into(),
    }
}

/// Moves a progress total from what was counted to the real figure.
fn adjust(counter: &AtomicU64, counted: &AtomicU64, actual: u64) {
    let estimate = counted.swap(actual, Ordering::Relaxed);
    if actual >= estimate {
        counter.fetch_add(actual - estimate, Ordering::Relaxed);
    } else {
        counter.fetch_sub(estimate - actual, Ordering::Relaxed);
    }
}
