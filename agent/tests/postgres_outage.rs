//! A copy waits out a routine outage of the source's PostgreSQL server, to
//! the bound of `navette_agent::transfer::outage`, and says so while it
//! waits; what cannot succeed by waiting fails at once.
//!
//! The source server (PostgreSQL 15) is stopped while the data of the copy
//! flows into the target (PostgreSQL 18), stays down 10 s and starts
//! again: the copy completes and is verified (by the copy itself, and here
//! by each table's count and contents on both servers), the progress said
//! what it was waiting for while the server was down, and the database was
//! copied again. A server that stays down longer than the bound fails the
//! copy, saying so; a server that refuses the agent's login fails it at
//! once; a source that keeps cutting the copy once it is reached again is
//! given up after five copies.

mod postgres_support;

use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail, ensure};
use navette_agent::transfer::outage::OUTAGE_BOUND;
use navette_agent::transfer::postgres::{
    PostgresCopyError, PostgresReport, PostgresSourceService, PullOptions, pull,
};
use navette_agent::transfer::progress::Progress;
use navette_proto::identity::agent_server_name;
use navette_proto::tls;
use navette_proto::v1::{TransferProgress, TransferWaiting};
use navette_tests::{AccountSpec, PgVersion, Postgres, Rig};
use postgres_support::{
    AlteredSource, Pki, PullSpec, SourceAgent, grants, pull_in, run_multi_threaded, same_name,
    server_config,
};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// How long the source server stays down in the restart test.
const DOWN: Duration = Duration::from_secs(10);
/// Tables of the database, and rows of each.
const TABLES: u32 = 4;
const ROWS: u32 = 250_000;

/// What the test saw of the progress while `pull` ran.
#[derive(Debug, Default)]
struct Seen {
    /// Every distinct waiting the progress showed, in order.
    waiting: Vec<TransferWaiting>,
    /// The most bytes done before the progress first showed a waiting.
    bytes_done_before_waiting: u64,
}

/// Runs `pull` inside the target host like `postgres_support::pull_in`,
/// following its progress: `first_bytes` hears when the first bytes of
/// data are counted done.
fn pull_watching(
    spec: PullSpec<'_>,
    first_bytes: std::sync::mpsc::Sender<()>,
) -> anyhow::Result<(
    Result<PostgresReport, PostgresCopyError>,
    TransferProgress,
    Seen,
)> {
    let roots = spec.pki.roots()?;
    let config = tls::client_config(roots, Some(spec.identity))?;
    let source = (spec.source.address, agent_server_name(&spec.source.host_id));
    run_multi_threaded(spec.target, || async move {
        let channel = tls::channel(source.0, &source.1, config)?;
        let progress = Progress::new(spec.transfer_id);
        let seen = Mutex::new(Seen::default());
        let watch = async {
            let mut changes = progress.subscribe();
            let mut told = false;
            while changes.changed().await.is_ok() {
                let now = progress.snapshot();
                if !told && now.bytes_done > 0 {
                    told = true;
                    let _ = first_bytes.send(());
                }
                let mut seen = seen.lock().unwrap_or_else(|p| p.into_inner());
                match now.waiting {
                    Some(waiting) if seen.waiting.last() != Some(&waiting) => {
                        seen.waiting.push(waiting);
                    }
                    Some(_) => {}
                    None if seen.waiting.is_empty() => {
                        seen.bytes_done_before_waiting =
                            seen.bytes_done_before_waiting.max(now.bytes_done);
                    }
                    None => {}
                }
            }
        };
        let pulled = pull(
            channel,
            spec.transfer_id,
            &spec.copies,
            &spec.target_servers,
            &spec.options,
            &progress,
        );
        let result = tokio::select! {
            result = pulled => result,
            () = watch => bail!("the progress stopped being watchable"),
        };
        let seen = seen.into_inner().unwrap_or_else(|p| p.into_inner());
        Ok((result, progress.snapshot(), seen))
    })
}

/// Each table's row count and a digest of its rows in order, as psql
/// reads them.
fn contents(server: &Postgres, database: &str) -> anyhow::Result<Vec<String>> {
    (1..=TABLES)
        .map(|n| {
            server.psql(
                database,
                &format!(
                    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || label, ',' ORDER BY id)) \
                     FROM part{n}"
                ),
            )
        })
        .collect()
}

/// Seconds since the epoch, as the progress's timestamps count them.
fn epoch_seconds(at: SystemTime) -> i64 {
    at.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

#[test]
fn a_restart_of_the_source_server_during_the_data_is_waited_out() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_outage")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let database = "nvpgo_dave";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: database.to_owned(),
            password: "dave pw".to_owned(),
            pg_databases: vec![database.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let mut fill = format!("SET ROLE {database};\n");
    for n in 1..=TABLES {
        fill.push_str(&format!(
            "CREATE TABLE part{n} AS SELECT g AS id, md5(g::text) || md5((g * {n})::text) AS label \
             FROM generate_series(1, {ROWS}) g;\n\
             ALTER TABLE part{n} ADD PRIMARY KEY (id);\n\
             CREATE INDEX part{n}_label ON part{n} (label);\n"
        ));
    }
    pg15.psql(database, &fill)?;
    let on_source = contents(&pg15, database)?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-outage";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[database],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;

    // As soon as the first data is counted on the target, the source
    // server stops (fast shutdown: the sessions are ended, as a restart
    // ends them), stays down, and starts again.
    let (first_bytes, data_flows) = std::sync::mpsc::channel();
    let source_server = &pg15;
    let (outage, result, progress, seen) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let restarter = scope.spawn(move || -> anyhow::Result<(SystemTime, SystemTime)> {
            data_flows
                .recv_timeout(Duration::from_secs(120))
                .context("no data reached the target")?;
            let stopped = SystemTime::now();
            source_server.stop();
            std::thread::sleep(DOWN);
            source_server.start()?;
            Ok((stopped, SystemTime::now()))
        });
        let (result, progress, seen) = pull_watching(
            PullSpec {
                target: &target_host,
                identity: pki.agent("dst")?,
                pki: &pki,
                source: &source,
                transfer_id,
                copies: vec![same_name(database)],
                target_servers: vec![server_config(&pg18)],
                options: PullOptions {
                    // One table at a time, so that the data phase outlasts
                    // the stop.
                    workers: 1,
                    work_dir: rig.dir().to_owned(),
                    ..PullOptions::default()
                },
            },
            first_bytes,
        )?;
        let outage = match restarter.join() {
            Ok(outage) => outage?,
            Err(_) => bail!("the restarter panicked"),
        };
        Ok((outage, result, progress, seen))
    })?;
    let (stopped, started) = outage;
    let down = started.duration_since(stopped).unwrap_or_default();
    eprintln!("source server down for {down:.1?}; seen: {seen:#?}");
    let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    eprintln!("copied: {report:#?}");

    // The restart landed in the data phase, and was waited out.
    ensure!(down >= DOWN, "the source server was down {down:?} only");
    ensure!(
        seen.bytes_done_before_waiting > 0 && seen.bytes_done_before_waiting < progress.bytes_total,
        "the first attempt had copied {} of {} bytes when the server stopped",
        seen.bytes_done_before_waiting,
        progress.bytes_total
    );
    let copied = &report.databases[0];
    ensure!(
        copied.attempts >= 2,
        "the database was copied {} times: the outage did not interrupt it",
        copied.attempts
    );
    // While it waited, the progress said what for, since when and until
    // when, and the bound counts from the outage's first failure.
    let first = seen
        .waiting
        .first()
        .context("the progress never said the copy was waiting")?;
    let since = first.since.context("waiting since")?.seconds;
    ensure!(
        since >= epoch_seconds(stopped) - 1 && since <= epoch_seconds(started),
        "the outage began at {since}, the server stopped at {} and started at {}",
        epoch_seconds(stopped),
        epoch_seconds(started)
    );
    for waiting in &seen.waiting {
        ensure!(
            waiting.what == format!("source PostgreSQL server main, database {database}"),
            "waiting for {:?}",
            waiting.what
        );
        ensure!(!waiting.error.is_empty(), "no error while waiting");
        let (since, until) = (
            waiting.since.context("since")?.seconds,
            waiting.until.context("until")?.seconds,
        );
        ensure!(
            u64::try_from(until - since).ok() == Some(OUTAGE_BOUND.as_secs()),
            "waiting from {since} until {until}"
        );
    }
    ensure!(
        progress.waiting.is_none(),
        "still waiting at the end: {:?}",
        progress.waiting
    );

    // The copy completed and was verified, and holds what the source does.
    // The partN tables, and the rig's sample `items`.
    ensure!(
        copied.tables == TABLES as usize + 1 && copied.tables_verified == copied.tables,
        "{copied:?}"
    );
    ensure!(
        progress.tables_done == progress.tables_total
            && progress.bytes_done == progress.bytes_total,
        "progress after the outage: {progress:?}"
    );
    ensure!(
        contents(&pg18, database)? == on_source,
        "the copy's tables differ from the source's"
    );
    let indexes = "SELECT string_agg(indexdef, '; ' ORDER BY indexname) FROM pg_indexes \
                   WHERE schemaname = 'public'";
    let (source_indexes, copy_indexes) =
        (pg15.psql(database, indexes)?, pg18.psql(database, indexes)?);
    ensure!(
        source_indexes == copy_indexes,
        "indexes differ: source {source_indexes}; copy {copy_indexes}"
    );
    Ok(())
}

#[test]
fn a_longer_outage_fails_after_the_bound_and_a_refusal_fails_at_once() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_outage_bound")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let database = "nvpgo_erin";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: database.to_owned(),
            password: "erin pw".to_owned(),
            pg_databases: vec![database.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    pg15.psql(
        database,
        &format!("SET ROLE {database}; CREATE TABLE t AS SELECT 1 AS id;"),
    )?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-bound";
    let granted = grants(
        &rig.dir().join("src-agent-state"),
        transfer_id,
        "dst",
        &[database],
    )?;
    let bound = Duration::from_secs(6);
    let options = PullOptions {
        outage_bound: bound,
        work_dir: rig.dir().to_owned(),
        ..PullOptions::default()
    };
    let copy = |source: &SourceAgent| -> anyhow::Result<_> {
        let (first_bytes, _) = std::sync::mpsc::channel();
        let started = Instant::now();
        let (result, progress, seen) = pull_watching(
            PullSpec {
                target: &target_host,
                identity: pki.agent("dst")?,
                pki: &pki,
                source,
                transfer_id,
                copies: vec![same_name(database)],
                target_servers: vec![server_config(&pg18)],
                options: options.clone(),
            },
            first_bytes,
        )?;
        Ok((result, started.elapsed(), progress, seen))
    };

    // The source agent logs in to its server as a role the server does
    // not know: a refusal that no wait can cure, so the copy fails at
    // once (the bound is 6 s).
    let mut refused_login = server_config(&pg15);
    refused_login.user = "nvpgo_nobody".to_owned();
    let service = PostgresSourceService::new(granted.clone(), vec![refused_login]);
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let (result, took, _, seen) = copy(&source)?;
    let error = match result {
        Ok(report) => bail!("a copy through a refused login succeeded: {report:?}"),
        Err(error) => error,
    };
    let text = navette_agent::error_chain(&error);
    eprintln!("refused in {took:.1?}: {text}");
    ensure!(
        !error.is_transient() && !matches!(error, PostgresCopyError::Unreachable { .. }),
        "a refused login is waited out: {text}"
    );
    ensure!(text.contains("nvpgo_nobody"), "the error: {text}");
    ensure!(took < bound, "a refusal took {took:?}");
    ensure!(seen.waiting.is_empty(), "waited on a refusal: {seen:?}");
    drop(source);

    // The server stops and stays down: the copy waits, then fails once
    // the outage has lasted the bound, saying what it could not reach.
    let service = PostgresSourceService::new(granted, vec![server_config(&pg15)]);
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    pg15.stop();
    let (result, took, progress, seen) = copy(&source)?;
    let error = match result {
        Ok(report) => bail!("a copy from a stopped server succeeded: {report:?}"),
        Err(error) => error,
    };
    let text = navette_agent::error_chain(&error);
    eprintln!("gave up after {took:.1?}: {text}");
    ensure!(
        matches!(error, PostgresCopyError::Unreachable { .. }),
        "not an outage: {text}"
    );
    ensure!(
        took >= bound && took < bound + Duration::from_secs(10),
        "gave up after {took:?}, the bound is {bound:?}"
    );
    ensure!(
        text.contains("source PostgreSQL server main, database nvpgo_erin stayed unreachable")
            && text.contains("cannot connect"),
        "the error: {text}"
    );
    let waiting = seen
        .waiting
        .first()
        .context("the progress never said the copy was waiting")?;
    ensure!(
        waiting.what == format!("source PostgreSQL server main, database {database}")
            && waiting.error.contains("cannot connect"),
        "waiting: {waiting:?}"
    );
    ensure!(progress.waiting.is_none(), "still waiting after giving up");
    // Nothing was created on the target: preflight never passed.
    let exists = pg18.psql(
        "postgres",
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{database}'"),
    )?;
    ensure!(exists == "0", "the target has the database");
    Ok(())
}

#[test]
fn a_source_that_keeps_cutting_the_copy_is_given_up_after_five_copies() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_outage_cut")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let database = "nvpgo_fred";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: database.to_owned(),
            password: "fred pw".to_owned(),
            pg_databases: vec![database.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-cut";
    // A link cut during every table's copy, as a flaky network between
    // the hosts would; the snapshots asked for are counted.
    let service = AlteredSource {
        cut_copies: true,
        ..AlteredSource::new(PostgresSourceService::new(
            grants(
                &rig.dir().join("src-agent-state"),
                transfer_id,
                "dst",
                &[database],
            )?,
            vec![server_config(&pg15)],
        ))
    };
    let snapshots = service.snapshots.clone();
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let started = Instant::now();
    let (result, progress) = pull_in(PullSpec {
        target: &target_host,
        identity: pki.agent("dst")?,
        pki: &pki,
        source: &source,
        transfer_id,
        copies: vec![same_name(database)],
        target_servers: vec![server_config(&pg18)],
        options: PullOptions {
            work_dir: rig.dir().to_owned(),
            ..PullOptions::default()
        },
    })?;
    let took = started.elapsed();
    let error = match result {
        Ok(report) => bail!("a copy whose every table was cut succeeded: {report:?}"),
        Err(error) => error,
    };
    let text = navette_agent::error_chain(&error);
    eprintln!("gave up after {took:.1?}: {text}");
    // Each copy reached the source (held a snapshot), so no outage lasted
    // long; the copy ended after five, well within the outage bound.
    let held = snapshots.load(Ordering::Relaxed);
    ensure!(held == 5, "the source held {held} snapshots");
    ensure!(text.contains("the link was cut"), "the error: {text}");
    ensure!(took < OUTAGE_BOUND, "gave up after {took:?}");
    ensure!(
        progress.waiting.is_none(),
        "the progress still says the copy waits: {progress:?}"
    );
    Ok(())
}
