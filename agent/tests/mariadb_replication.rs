//! MariaDB replication for *Migrate*, 10.11 to 11.8, over the rig's
//! namespaces: the account's database is copied (through the source
//! agent's real `MariadbSource` over mutual TLS) while a customer inserts,
//! updates and deletes numbered rows in a loop, in a table with a primary
//! key and in one without, and places orders (whose trigger writes the
//! audit table); replication starts from the copy's own snapshot position,
//! filtered to the account's database, while the customer keeps writing.
//! After the writer stops and the drain completes:
//!
//! - every table of the account is the same on both sides (`mariadb-dump`
//!   of the rows, a tool independent of Navette), and the numbered rows
//!   are exactly the ones the writer's acknowledged transactions leave,
//!   each once;
//! - the trigger's rows are not doubled on the target (row events do not
//!   fire its triggers);
//! - another account's database on the same source, written during the
//!   whole test, is not on the target;
//! - the backlog counts the transactions a held replica has not applied,
//!   a drain of it stops at its deadline, and after the drain the backlog
//!   is 0;
//! - teardown twice is harmless, leaves no connection and no replication
//!   user, and leaves the copy's data.

mod mariadb_support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use mariadb_support::{
    ACCOUNT, BUSY_TABLE, PASSWORD, QUIET_TABLES, SOURCE_ADDR, TARGET_ADDR, TRANSFER, World,
    copy_of, customer_sql, rows_dump, server_config,
};
use navette_agent::replication::mariadb::{
    self as replication, ReplicaSpec, ReplicationError, USER_PREFIX,
};
use navette_agent::transfer::mariadb::{PullOptions, pull_with_options};
use navette_agent::transfer::progress::Progress;
use navette_tests::{MariaDb, MariaDbSpec, Netns};

const MIGRATION: &str = "m-repl-1";
/// Another account's database on the same source.
const OTHER_DATABASE: &str = "otheracct";

/// The account's tables the writer changes, created before the copy.
const WRITER_SCHEMA: &str = "
CREATE TABLE numbered (n INT PRIMARY KEY, v VARCHAR(20) NOT NULL) ENGINE=InnoDB;
CREATE TABLE nopk (n INT NOT NULL, v VARCHAR(20) NOT NULL) ENGINE=InnoDB;
";

/// The final content both tables must hold: n -> v.
type Expected = BTreeMap<i64, String>;

/// The customer: one transaction per round over TCP, inserting round `i`,
/// updating round `i-1`, deleting round `i-3` every fifth round, in both
/// tables, and placing an order every fourth round. Another account's
/// database gets a row each round (as root, over the socket). Keeps what
/// the acknowledged rounds leave.
struct Writer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<anyhow::Result<(Expected, u64)>>>,
}

impl Writer {
    fn start(client: &Netns, source: &MariaDb) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (client, source) = (client.clone(), source.clone());
        let thread = {
            let (stop, rounds) = (stop.clone(), rounds.clone());
            std::thread::spawn(move || -> anyhow::Result<(Expected, u64)> {
                let mut expected = Expected::new();
                let mut orders = 0u64;
                let mut i: i64 = 0;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let mut sql = format!(
                        "START TRANSACTION;\
                         INSERT INTO numbered VALUES ({i}, 'new');\
                         UPDATE numbered SET v = 'updated' WHERE n = {prev};\
                         INSERT INTO nopk VALUES ({i}, 'new');\
                         UPDATE nopk SET v = 'updated' WHERE n = {prev};",
                        prev = i - 1
                    );
                    let delete = i % 5 == 0;
                    if delete {
                        sql.push_str(&format!(
                            "DELETE FROM numbered WHERE n = {gone};\
                             DELETE FROM nopk WHERE n = {gone};",
                            gone = i - 3
                        ));
                    }
                    let order = i % 4 == 0;
                    if order {
                        sql.push_str("CALL place_order(1, 1.00);");
                    }
                    sql.push_str("COMMIT;");
                    customer_sql(&client, SOURCE_ADDR, ACCOUNT, PASSWORD, &sql)
                        .with_context(|| format!("the writer's round {i}"))?;
                    // Acknowledged: what the round leaves.
                    expected.insert(i, "new".to_owned());
                    if let Some(v) = expected.get_mut(&(i - 1)) {
                        *v = "updated".to_owned();
                    }
                    if delete {
                        expected.remove(&(i - 3));
                    }
                    if order {
                        orders += 1;
                    }
                    source
                        .sql(&format!("INSERT INTO {OTHER_DATABASE}.t VALUES ({i})"))
                        .context("writing the other account's database")?;
                    rounds.fetch_add(1, Ordering::Relaxed);
                }
                Ok((expected, orders))
            })
        };
        Writer {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    fn stop(&mut self) -> anyhow::Result<(Expected, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(std::thread::JoinHandle::join) {
            Some(Ok(outcome)) => outcome,
            Some(Err(_)) => bail!("the writer panicked"),
            None => bail!("the writer was already stopped"),
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// `n -> v` of `table` on `server`, and whether some `n` appears twice.
fn content(server: &MariaDb, table: &str) -> anyhow::Result<(Expected, bool)> {
    let out = server.sql(&format!("SELECT n, v FROM {ACCOUNT}.{table} ORDER BY n"))?;
    let mut rows = Expected::new();
    let mut twice = false;
    for line in out.lines().filter(|line| !line.is_empty()) {
        let (n, v) = line
            .split_once('\t')
            .with_context(|| format!("odd row {line:?}"))?;
        twice |= rows.insert(n.parse()?, v.to_owned()).is_some();
    }
    Ok((rows, twice))
}

/// A table's rows as `mariadb-dump` prints them, sorted (one table has no
/// primary key, so no order to rely on).
fn sorted_rows(server: &MariaDb, tables: &[&str]) -> anyhow::Result<Vec<String>> {
    let mut lines: Vec<String> = rows_dump(server, tables)?
        .lines()
        .filter(|line| line.starts_with("INSERT"))
        .map(str::to_owned)
        .collect();
    lines.sort();
    Ok(lines)
}

#[test]
fn a_copy_converges_by_replication_from_its_snapshot_and_tears_down() -> anyhow::Result<()> {
    let world = World::with_specs(
        "mariadb_replication",
        MariaDbSpec::replication_source(),
        MariaDbSpec::replica_11_8(),
    )?;
    let (source_db, target_db) = (&world.source_db, &world.target_db);
    let source_server = server_config(source_db);
    let target_server = server_config(target_db);
    source_db.sql(&format!("USE {ACCOUNT};{WRITER_SCHEMA}"))?;
    source_db.sql(&format!(
        "CREATE DATABASE {OTHER_DATABASE}; CREATE TABLE {OTHER_DATABASE}.t (n INT PRIMARY KEY)"
    ))?;

    // The source is ready for replication, as the inventory reports it.
    let readiness = world
        .source
        .run_in(|| async { Ok(replication::row_binlog_readiness(&source_server).await?) })?;
    ensure!(
        readiness.ready,
        "the source is not ready: {}",
        readiness.reason
    );

    // The copy, while the customer writes, reporting its snapshot.
    let mut writer = Writer::start(world.rig.client(), source_db);
    world
        .rig
        .wait_until("the writer's first rounds", Duration::from_secs(20), || {
            Ok(writer.rounds() >= 5)
        })?;
    let rounds_before = writer.rounds();
    let progress = Progress::new(TRANSFER);
    let report = world.target.run_in(|| async {
        let channel = world.channel(mariadb_support::TARGET_HOST)?;
        Ok(pull_with_options(
            channel,
            TRANSFER,
            ACCOUNT,
            &[copy_of(ACCOUNT)],
            std::slice::from_ref(&target_server),
            &progress,
            PullOptions {
                snapshot_position: true,
            },
        )
        .await?)
    })?;
    let position = report
        .databases
        .first()
        .and_then(|database| database.snapshot_gtid_position.clone())
        .context("the copy reported no snapshot position")?;
    ensure!(
        position.starts_with("0-1-"),
        "the snapshot position {position:?} is not the source's (domain 0, server 1)"
    );
    ensure!(
        writer.rounds() > rounds_before,
        "the writer wrote nothing while the copy ran; the test proves nothing"
    );

    // Replication from the snapshot, while the customer keeps writing.
    let user = world.source.run_in(|| async {
        Ok(
            replication::ensure_source_user(&source_server, MIGRATION, &TARGET_ADDR.to_string())
                .await?,
        )
    })?;
    let grants = source_db.sql(&format!("SHOW GRANTS FOR '{}'@'{}'", user.user, user.host))?;
    ensure!(
        grants.contains("GRANT REPLICATION SLAVE ON *.*") && !grants.contains("ALL PRIVILEGES"),
        "the replication user has more than REPLICATION SLAVE: {grants}"
    );
    let spec = ReplicaSpec {
        migration: MIGRATION.to_owned(),
        source_host: SOURCE_ADDR.to_string(),
        source_port: source_db.port(),
        user: user.user.clone(),
        password: user.password.clone(),
        snapshot_positions: vec![position.clone()],
        databases: vec![ACCOUNT.to_owned()],
        source_ca: None,
    };
    let started = world.target.run_in(|| async {
        let first = replication::start_replica(&target_server, &spec).await?;
        // Idempotent: a second start keeps the connection and its position.
        let again = replication::start_replica(&target_server, &spec).await?;
        Ok((first, again))
    })?;
    ensure!(
        started.1.connection == replication::connection_name(MIGRATION)?,
        "the connection is not named after the migration: {:?}",
        started.1
    );
    // A second migration onto the same target server is refused.
    let other = world.target.run_in(|| async {
        let spec = ReplicaSpec {
            migration: "m-other".to_owned(),
            ..spec.clone()
        };
        Ok(replication::start_replica(&target_server, &spec).await)
    })?;
    ensure!(
        matches!(other, Err(ReplicationError::OtherConnection { .. })),
        "a second connection on the same target was not refused: {other:?}"
    );

    // The backlog while the writer runs: measured against the source.
    let mut max_backlog = 0u64;
    let rounds_at_start = writer.rounds();
    world.rig.wait_until(
        "replication applying while the writer runs",
        Duration::from_secs(30),
        || {
            let backlog = world.target.run_in(|| async {
                let now = replication::source_position(&source_server).await?;
                Ok(replication::backlog(&target_server, MIGRATION, &now).await?)
            })?;
            ensure!(
                backlog.status.last_error.is_empty(),
                "replication failed: {}",
                backlog.status.last_error
            );
            max_backlog = max_backlog.max(backlog.transactions);
            Ok(backlog.status.running() && writer.rounds() >= rounds_at_start + 20)
        },
    )?;
    let (expected, orders) = writer.stop()?;
    // A replica that falls behind (its SQL thread held, as a slow target
    // would): the backlog counts what waits, and a drain respects its
    // deadline.
    let connection = replication::connection_name(MIGRATION)?;
    target_db.sql(&format!("STOP SLAVE '{connection}' SQL_THREAD"))?;
    for n in 1..=5 {
        source_db.sql(&format!("INSERT INTO {OTHER_DATABASE}.t VALUES (-{n})"))?;
    }
    let (held, timed_out) = world.target.run_in(|| async {
        let fence = replication::source_position(&source_server).await?;
        let held = replication::backlog(&target_server, MIGRATION, &fence).await?;
        let timed_out =
            replication::drain(&target_server, MIGRATION, &fence, Duration::from_secs(1)).await;
        Ok((held, timed_out))
    })?;
    max_backlog = max_backlog.max(held.transactions);
    ensure!(
        held.transactions >= 5,
        "5 transactions wait and the backlog says {held:?}"
    );
    ensure!(
        matches!(timed_out, Err(ReplicationError::DrainTimeout { .. })),
        "a drain of a held replica did not time out: {timed_out:?}"
    );
    target_db.sql(&format!("START SLAVE '{connection}' SQL_THREAD"))?;

    // The drain: the source's last transactions are another account's
    // (filtered out), which must not stall it.
    let (drained, after) = world.target.run_in(|| async {
        let fence = replication::source_position(&source_server).await?;
        let took =
            replication::drain(&target_server, MIGRATION, &fence, Duration::from_secs(30)).await?;
        let after = replication::backlog(&target_server, MIGRATION, &fence).await?;
        Ok((took, after))
    })?;
    println!(
        "rounds: {} acknowledged, {orders} orders; backlog: at most {max_backlog} transactions \
         ({} held); drain took {drained:?}; after: {after:?}",
        expected.len(),
        held.transactions,
    );
    ensure!(
        after.transactions == 0 && after.status.running(),
        "backlog after the drain: {after:?}"
    );

    // Every table matches; every acknowledged row is there once.
    let mut tables: Vec<&str> = QUIET_TABLES.to_vec();
    tables.extend([BUSY_TABLE, "numbered", "nopk"]);
    for table in &tables {
        ensure!(
            sorted_rows(source_db, &[table])? == sorted_rows(target_db, &[table])?,
            "table {table} differs between the source and the target"
        );
    }
    for table in ["numbered", "nopk"] {
        let (rows, twice) = content(target_db, table)?;
        ensure!(!twice, "a row of {table} is on the target twice");
        ensure!(
            rows == expected,
            "{table} on the target is not what the acknowledged rounds left ({} rows, expected {})",
            rows.len(),
            expected.len()
        );
    }
    let audit_source = source_db.sql(&format!("SELECT COUNT(*) FROM {ACCOUNT}.audit"))?;
    let audit_target = target_db.sql(&format!("SELECT COUNT(*) FROM {ACCOUNT}.audit"))?;
    ensure!(
        audit_source == audit_target,
        "the trigger's audit rows differ: {audit_source} on the source, {audit_target} on the target"
    );
    ensure!(
        target_db
            .sql(&format!("SHOW DATABASES LIKE '{OTHER_DATABASE}'"))?
            .is_empty(),
        "another account's database arrived on the target"
    );

    // Teardown, twice.
    let outcomes = world.target.run_in(|| async {
        let mut outcomes = Vec::new();
        for _ in 0..2 {
            outcomes.push((
                replication::teardown_replica(&target_server, MIGRATION).await?,
                replication::drop_source_user(&source_server, MIGRATION).await?,
            ));
        }
        Ok(outcomes)
    })?;
    ensure!(
        outcomes == [(true, true), (false, false)],
        "teardown twice: {outcomes:?}"
    );
    ensure!(
        target_db.sql("SHOW ALL SLAVES STATUS")?.is_empty(),
        "a replication connection is left on the target"
    );
    ensure!(
        source_db
            .sql(&format!(
                "SELECT User FROM mysql.user WHERE User LIKE '{USER_PREFIX}%'"
            ))?
            .is_empty(),
        "a replication user is left on the source"
    );
    let (rows, _) = content(target_db, "numbered")?;
    ensure!(rows == expected, "teardown changed the copy's data");
    Ok(())
}

/// A database of the same schema on both servers, for the API test.
const API_DATABASE: &str = "apiacct";

/// The replication rpcs through the real agents' `Agent` API over mutual
/// TLS, called as the controller: the source's readiness and position, the
/// user, the connection started at the source's position, rows arriving,
/// the drain and the backlog, bad input refused with a status saying what
/// is wrong, and teardown twice harmless.
#[test]
fn the_agents_api_runs_replication_idempotently() -> anyhow::Result<()> {
    use navette_proto::v1::agent_client::AgentClient;
    use navette_proto::v1::{
        DrainMariadbReplicationRequest, GetInventoryRequest, MariadbReplicationStatusRequest,
        MariadbReplicationUserRequest, MariadbSourcePositionRequest,
        StartMariadbReplicationRequest, StopMariadbReplicationRequest,
    };
    use navette_tests::{AgentKind, AgentSpec, ControllerSpec, Rig};
    use std::net::Ipv4Addr;

    let rig = Rig::new("mariadb_replication_api")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
    let source_addr = Ipv4Addr::new(192, 0, 2, 61);
    let target_addr = Ipv4Addr::new(192, 0, 2, 62);
    let source = rig.add_namespace("repl-src", source_addr)?;
    let target = rig.add_namespace("repl-dst", target_addr)?;
    let source_db = source.start_mariadb_with(&rig, MariaDbSpec::replication_source())?;
    let target_db = target.start_mariadb_with(&rig, MariaDbSpec::replica_11_8())?;
    let schema = format!(
        "CREATE DATABASE {API_DATABASE}; CREATE TABLE {API_DATABASE}.t (n INT PRIMARY KEY) ENGINE=InnoDB"
    );
    source_db.sql(&schema)?;
    target_db.sql(&schema)?;
    let mut agents = Vec::new();
    for host in [&source, &target] {
        let token = rig.create_join_token(host.host(), AgentKind::Shared)?;
        agents.push(rig.start_agent(
            host,
            AgentSpec {
                token,
                ..AgentSpec::default()
            },
        )?);
    }
    let (source_agent, target_agent) = (&agents[0], &agents[1]);
    let call = |agent: &navette_tests::Agent| -> anyhow::Result<AgentClient<_>> {
        Ok(AgentClient::new(agent.controller_channel(&controller)?))
    };

    rig.client().run_in(|| async {
        let mut src = call(source_agent)?;
        let mut dst = call(target_agent)?;
        // The inventory says which server can be a replication source.
        for (client, ready) in [(&mut src, true), (&mut dst, false)] {
            let inventory = client
                .get_inventory(GetInventoryRequest::default())
                .await?
                .into_inner();
            let server = inventory
                .database_servers
                .iter()
                .find(|server| server.name == "main" && server.port == 3306)
                .context("no MariaDB server in the inventory")?;
            let readiness = server
                .row_binlog
                .clone()
                .context("the inventory has no row_binlog readiness")?;
            ensure!(
                readiness.ready == ready && (ready || readiness.reason.contains("--log-bin")),
                "inventory readiness of {}: {readiness:?}",
                inventory.host_id
            );
        }
        let position = src
            .get_mariadb_source_position(MariadbSourcePositionRequest {
                server: "main".to_owned(),
            })
            .await?
            .into_inner();
        ensure!(
            position.row_binlog_ready && position.row_binlog_reason.is_empty(),
            "the source is not reported ready: {position:?}"
        );
        let user_request = MariadbReplicationUserRequest {
            migration_id: MIGRATION.to_owned(),
            server: "main".to_owned(),
            target_address: target_addr.to_string(),
        };
        // A wildcard host would let any host read the binlog.
        let wildcard = src
            .ensure_mariadb_replication_user(MariadbReplicationUserRequest {
                target_address: "%".to_owned(),
                ..user_request.clone()
            })
            .await;
        ensure!(
            matches!(&wildcard, Err(s) if s.code() == tonic::Code::InvalidArgument
                && s.message().contains("target_address")),
            "a wildcard host was not refused: {wildcard:?}"
        );
        let user = src
            .ensure_mariadb_replication_user(user_request.clone())
            .await?
            .into_inner();
        let start = StartMariadbReplicationRequest {
            migration_id: MIGRATION.to_owned(),
            server: "main".to_owned(),
            source_host: source_addr.to_string(),
            source_port: 3306,
            user: user.user.clone(),
            password: user.password.clone(),
            snapshot_gtid_positions: vec![position.gtid_position.clone()],
            databases: vec![API_DATABASE.to_owned()],
            source_ca_path: String::new(),
        };
        let bad = dst
            .start_mariadb_replication(StartMariadbReplicationRequest {
                migration_id: "Not An Id".to_owned(),
                ..start.clone()
            })
            .await;
        ensure!(
            matches!(&bad, Err(s) if s.code() == tonic::Code::InvalidArgument
                && s.message().contains("migration id")),
            "a bad migration id was not refused: {bad:?}"
        );
        for _ in 0..2 {
            dst.start_mariadb_replication(start.clone()).await?;
        }

        source_db.sql(&format!(
            "USE {API_DATABASE}; INSERT INTO t SELECT seq FROM seq_1_to_10"
        ))?;
        let fence = src
            .get_mariadb_source_position(MariadbSourcePositionRequest {
                server: "main".to_owned(),
            })
            .await?
            .into_inner()
            .gtid_position;
        dst.drain_mariadb_replication(DrainMariadbReplicationRequest {
            migration_id: MIGRATION.to_owned(),
            server: "main".to_owned(),
            source_gtid_position: fence.clone(),
            timeout_ms: 30_000,
        })
        .await?;
        let status = dst
            .get_mariadb_replication_status(MariadbReplicationStatusRequest {
                migration_id: MIGRATION.to_owned(),
                server: "main".to_owned(),
                source_gtid_position: fence.clone(),
            })
            .await?
            .into_inner();
        ensure!(
            status.running && status.backlog_transactions == 0 && status.last_error.is_empty(),
            "after the drain: {status:?}"
        );
        let rows = target_db.sql(&format!("SELECT COUNT(*) FROM {API_DATABASE}.t"))?;
        ensure!(
            rows == "10",
            "the target has {rows} rows of the 10 inserted"
        );

        let stop = StopMariadbReplicationRequest {
            migration_id: MIGRATION.to_owned(),
            server: "main".to_owned(),
        };
        let mut removed = Vec::new();
        for _ in 0..2 {
            removed.push(
                dst.stop_mariadb_replication(stop.clone())
                    .await?
                    .into_inner()
                    .removed,
            );
            removed.push(
                src.drop_mariadb_replication_user(user_request.clone())
                    .await?
                    .into_inner()
                    .dropped,
            );
        }
        ensure!(
            removed == [true, true, false, false],
            "teardown twice: {removed:?}"
        );
        let gone = dst
            .drain_mariadb_replication(DrainMariadbReplicationRequest {
                migration_id: MIGRATION.to_owned(),
                server: "main".to_owned(),
                source_gtid_position: fence,
                timeout_ms: 1_000,
            })
            .await;
        ensure!(
            matches!(&gone, Err(s) if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains("start it first")),
            "a drain without a connection: {gone:?}"
        );
        Ok(())
    })?;
    ensure!(
        target_db.sql("SHOW ALL SLAVES STATUS")?.is_empty(),
        "a replication connection is left on the target"
    );
    ensure!(
        target_db.sql(&format!("SELECT COUNT(*) FROM {API_DATABASE}.t"))? == "10",
        "teardown changed the target's data"
    );
    Ok(())
}
