//! Converging while live, PostgreSQL 15 to 18, for real: an account's
//! database on a PostgreSQL 15 host is copied from a logical replication
//! slot's snapshot (the real `PostgresSourceService` over mutual TLS, and
//! `pull` in the target host's namespace) while a customer inserts,
//! updates and deletes continuously, including in a table without a
//! primary key; then a subscription on the PostgreSQL 18 host streams
//! from that slot.
//!
//! Checked independently of the code under test: after the writer stops
//! and the drain completes, every table's row count and sorted contents
//! (a digest computed here) are the same on both servers, so no row was
//! copied twice or missed; the lag reported in bytes is about zero; the
//! sequences, once carried, have the source's values; a customer trigger
//! enabled for replication runs on the target as the customer's role;
//! teardown twice leaves no slot, publication, subscription or role.

mod postgres_support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_agent::replication::postgres::{Names, source, target};
use navette_agent::transfer::postgres::{PostgresSourceService, PullOptions};
use navette_tests::{AccountSpec, Netns, PgVersion, Postgres, Rig};
use postgres_support::{
    Pki, PullSpec, SourceAgent, grants, pull_in, run_multi_threaded, same_name, server_config,
};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ACCOUNT: &str = "nvpgr_carol";
const SHOP: &str = "nvpgr_carol_shop";
const MIGRATION: &str = "m-pgrepl-1";

/// The account's tables: one with a sequence-backed key, one without any
/// key, and a trigger enabled `ALWAYS` that records, only when rows are
/// applied by replication, which role it ran as.
fn schema() -> String {
    format!(
        r#"
SET ROLE {ACCOUNT};
CREATE SCHEMA shop;
CREATE TABLE shop.items (id bigserial PRIMARY KEY, n int NOT NULL, note text);
CREATE TABLE shop.nokey (k bigint, v text, at timestamptz DEFAULT now());
CREATE TABLE shop.trigger_seen (id bigserial PRIMARY KEY, who text, item bigint);
CREATE SEQUENCE shop.invoice_no START 1000;
CREATE FUNCTION shop.note_applier() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  IF current_setting('session_replication_role') = 'replica' THEN
    INSERT INTO shop.trigger_seen (who, item) VALUES (current_user, NEW.id);
  END IF;
  RETURN NEW;
END $f$;
CREATE TRIGGER items_applied AFTER INSERT ON shop.items
  FOR EACH ROW EXECUTE FUNCTION shop.note_applier();
ALTER TABLE shop.items ENABLE ALWAYS TRIGGER items_applied;
INSERT INTO shop.items (n, note) SELECT g, repeat('x', g % 50) FROM generate_series(1, 20000) g;
INSERT INTO shop.nokey (k, v) SELECT g, 'row ' || g FROM generate_series(1, 3000) g;
"#
    )
}

/// A customer inserting, updating and deleting on the source (items and
/// the table without a key), and drawing invoice numbers, one statement
/// per transaction, over TCP, until told to stop.
struct Writer {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<String>>>,
}

impl Writer {
    fn start(client: &Netns, connection: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (netns, flag, count) = (client.clone(), stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            netns.run_in(|| async move {
                let (client, connection) =
                    tokio_postgres::connect(&connection, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let mut errors = Vec::new();
                let mut round: i64 = 0;
                while !flag.load(Ordering::Relaxed) {
                    round += 1;
                    let k = 3000 + round;
                    let statements = [
                        format!("INSERT INTO shop.items (n, note) VALUES ({round}, 'live')"),
                        format!(
                            "UPDATE shop.items SET n = n + 1 WHERE id = {}",
                            round * 7 % 20000 + 1
                        ),
                        format!(
                            "DELETE FROM shop.items WHERE id = {}",
                            round * 13 % 20000 + 1
                        ),
                        format!("INSERT INTO shop.nokey (k, v) VALUES ({k}, 'live {round}')"),
                        format!(
                            "UPDATE shop.nokey SET v = v || '!' WHERE k = {}",
                            round * 11 % 3000 + 1
                        ),
                        format!("DELETE FROM shop.nokey WHERE k = {}", round * 17 % 3000 + 1),
                        "SELECT nextval('shop.invoice_no')".to_owned(),
                    ];
                    for statement in &statements {
                        if let Err(error) = client.batch_execute(statement).await {
                            errors.push(navette_agent::error_chain(&error));
                        }
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(errors)
            })
        });
        Writer {
            stop,
            rounds,
            thread,
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stops it; the rounds it completed and the errors it saw.
    fn stop(self) -> anyhow::Result<(u64, Vec<String>)> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => Ok((self.rounds.load(Ordering::Relaxed), result?)),
            Err(_) => bail!("the writer panicked"),
        }
    }
}

/// Row count and a digest of the sorted rows' text, as the test computes
/// it (not as the code under test does).
fn table_contents(server: &Postgres, table: &str) -> anyhow::Result<String> {
    server.psql(
        SHOP,
        &format!(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 1; \
             SELECT count(*) || ' ' || coalesce(md5(string_agg(r, E'\\n' ORDER BY r)), '-') \
             FROM (SELECT t::text AS r FROM ONLY {table} t) s"
        ),
    )
}

/// Rows that appear more than once (the test's own check for duplicates).
fn duplicates(server: &Postgres, table: &str) -> anyhow::Result<String> {
    server.psql(
        SHOP,
        &format!(
            "SELECT count(*) FROM (SELECT t::text FROM ONLY {table} t GROUP BY 1 HAVING count(*) > 1) d"
        ),
    )
}

fn sequence_state(server: &Postgres, sequence: &str) -> anyhow::Result<String> {
    server.psql(
        SHOP,
        &format!("SELECT last_value, is_called FROM {sequence}"),
    )
}

/// What replication objects are left on a server (none expected).
fn leftovers(server: &Postgres) -> anyhow::Result<String> {
    server.psql(
        SHOP,
        "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || \
                (SELECT count(*) FROM pg_publication) || ' publications, ' || \
                (SELECT count(*) FROM pg_subscription) || ' subscriptions, ' || \
                (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'navette\\_r\\_%') || ' roles'",
    )
}

#[test]
fn a_copy_from_the_slot_snapshot_converges_with_a_live_source() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_replication")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let (pg15, pg18) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let pg15 = scope.spawn(|| source_host.start_postgres(&rig, PgVersion::V15, 5432));
        let pg18 = scope.spawn(|| target_host.start_postgres(&rig, PgVersion::V18, 5432));
        let joined = |h: std::thread::ScopedJoinHandle<'_, anyhow::Result<Postgres>>| match h.join()
        {
            Ok(result) => result,
            Err(_) => bail!("starting PostgreSQL panicked"),
        };
        Ok((joined(pg15)?, joined(pg18)?))
    })?;
    let account = rig.add_account(
        &source_host,
        AccountSpec {
            name: ACCOUNT.to_owned(),
            password: "carol's secret".to_owned(),
            pg_databases: vec![SHOP.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    pg15.psql(SHOP, &schema())?;
    let source_server = server_config(&pg15);
    let target_server = server_config(&pg18);

    // Source: publication, replica identities, the replication role.
    let prepared = run_multi_threaded(&source_host, || async {
        Ok(source::prepare(&source_server, MIGRATION, SHOP).await?)
    })?;
    ensure!(
        prepared.full_identity == vec!["shop.nokey".to_owned()],
        "tables given REPLICA IDENTITY FULL: {:?}",
        prepared.full_identity
    );
    let names = Names::new(MIGRATION, SHOP);

    let writer = Writer::start(
        rig.client(),
        pg15.tcp_config(ACCOUNT, &account.password, SHOP),
    );
    rig.wait_until("the writer writes", Duration::from_secs(10), || {
        Ok(writer.rounds() > 20)
    })?;

    // The copy, from the slot's snapshot, while the writer goes on.
    let pki = Pki::new()?;
    let transfer_id = "t-pgrepl-1";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[SHOP],
        )?,
        vec![source_server.clone()],
    );
    let source_agent = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let started = Instant::now();
    let (result, _) = pull_in(PullSpec {
        target: &target_host,
        identity: pki.agent("dst")?,
        pki: &pki,
        source: &source_agent,
        transfer_id,
        copies: vec![same_name(SHOP)],
        target_servers: vec![target_server.clone()],
        options: PullOptions {
            work_dir: rig.dir().to_owned(),
            account: Some(ACCOUNT.to_owned()),
            replication_slots: [(SHOP.to_owned(), names.slot.clone())].into(),
            ..PullOptions::default()
        },
    })?;
    let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    let database = &report.databases[0];
    ensure!(
        database.slot_name == names.slot && !database.consistent_lsn.is_empty(),
        "the copy did not start from the slot: {database:?}"
    );
    eprintln!(
        "copied from slot {} at {} in {:.1?}, writer at round {}",
        database.slot_name,
        database.consistent_lsn,
        started.elapsed(),
        writer.rounds()
    );

    // Target: the subscription, from the slot, as the replication role.
    let password = run_multi_threaded(&source_host, || async {
        Ok(source::admit_subscriber(&source_server, MIGRATION, SHOP).await?)
    })?;
    let endpoint = target::SourceEndpoint {
        host: SOURCE.to_string(),
        port: pg15.port(),
        database: SHOP.to_owned(),
        password,
    };
    run_multi_threaded(&target_host, || async {
        Ok(target::subscribe(&target_server, MIGRATION, SHOP, &endpoint).await?)
    })?;
    // Subscribing again is harmless.
    run_multi_threaded(&target_host, || async {
        Ok(target::subscribe(&target_server, MIGRATION, SHOP, &endpoint).await?)
    })?;
    let lag_while_writing = run_multi_threaded(&source_host, || async {
        Ok(source::lag(&source_server, MIGRATION, SHOP).await?)
    })?;
    // Each applied transaction flushed before it is confirmed (as for the
    // freeze), and not (converging): the apply goes on through both.
    for (flush, wanted) in [(true, "on"), (false, "off"), (true, "on")] {
        run_multi_threaded(&target_host, || async {
            Ok(target::set_apply_flush(&target_server, MIGRATION, SHOP, SHOP, flush).await?)
        })?;
        let set = pg18.psql(SHOP, "SELECT subsynccommit FROM pg_subscription")?;
        ensure!(set == wanted, "synchronous_commit {set}, wanted {wanted}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let (rounds, errors) = writer.stop()?;
    ensure!(errors.is_empty(), "the writer saw errors: {errors:?}");
    eprintln!("writer stopped after {rounds} rounds; lag while writing {lag_while_writing:?}");

    let drain_started = Instant::now();
    let drained = run_multi_threaded(&source_host, || async {
        Ok(source::drain(&source_server, MIGRATION, SHOP, "", Duration::from_secs(30)).await?)
    })?;
    let lag = run_multi_threaded(&source_host, || async {
        Ok(source::lag(&source_server, MIGRATION, SHOP).await?)
    })?;
    eprintln!(
        "drained to {drained} in {:.1?}; lag afterwards {lag:?}",
        drain_started.elapsed()
    );
    ensure!(lag.bytes < 16 * 1024, "lag after the drain: {lag:?}");

    // Every table the account has (the rig's own public.items too), but
    // the one the target's trigger writes to.
    let tables: Vec<String> = pg15
        .psql(
            SHOP,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             AND c.relname <> 'trigger_seen' ORDER BY 1",
        )?
        .lines()
        .map(str::to_owned)
        .collect();
    ensure!(tables.len() >= 2, "tables: {tables:?}");
    for table in &tables {
        let (on_source, on_target) = (table_contents(&pg15, table)?, table_contents(&pg18, table)?);
        ensure!(
            on_source == on_target,
            "{table}: source {on_source}, target {on_target}"
        );
        ensure!(
            duplicates(&pg18, table)? == "0",
            "{table} has duplicated rows on the target"
        );
        eprintln!("{table}: {on_source} on both");
    }
    let live_rows = pg18.psql(SHOP, "SELECT count(*) FROM shop.items WHERE note = 'live'")?;
    ensure!(
        live_rows.parse::<u64>()? == rounds,
        "only {live_rows} of the writer's {rounds} rows reached the target"
    );

    // The customer's trigger ran on the target, as the customer.
    let seen = pg18.psql(
        SHOP,
        "SELECT count(*) || ' ' || string_agg(DISTINCT who, ',') FROM shop.trigger_seen",
    )?;
    ensure!(
        seen.ends_with(&format!(" {ACCOUNT}")),
        "trigger ran as: {seen}"
    );
    ensure!(!seen.starts_with("0 "), "the trigger never ran: {seen}");

    // Sequences, carried over.
    let values = run_multi_threaded(&source_host, || async {
        Ok(source::read_sequences(&source_server, SHOP).await?)
    })?;
    run_multi_threaded(&target_host, || async {
        Ok(target::write_sequences(&target_server, SHOP, &values).await?)
    })?;
    let sequences: Vec<String> = values
        .iter()
        .map(|v| format!("\"{}\".\"{}\"", v.schema, v.name))
        .collect();
    ensure!(
        sequences.len() >= 3 && sequences.iter().any(|s| s == "\"shop\".\"invoice_no\""),
        "sequences read: {values:?}"
    );
    for sequence in &sequences {
        let (a, b) = (
            sequence_state(&pg15, sequence)?,
            sequence_state(&pg18, sequence)?,
        );
        ensure!(a == b, "{sequence}: source {a}, target {b}");
    }
    let invoice = sequence_state(&pg18, "shop.invoice_no")?;
    ensure!(
        invoice == format!("{}|t", 999 + rounds),
        "invoice_no on the target: {invoice}"
    );

    // Teardown, twice.
    for _ in 0..2 {
        run_multi_threaded(&target_host, || async {
            Ok(target::teardown(&target_server, MIGRATION, SHOP, SHOP).await?)
        })?;
        run_multi_threaded(&source_host, || async {
            Ok(source::teardown(&source_server, MIGRATION, SHOP).await?)
        })?;
    }
    for (side, server) in [("source", &pg15), ("target", &pg18)] {
        let left = leftovers(server)?;
        ensure!(
            left == "0 slots, 0 publications, 0 subscriptions, 0 roles",
            "{side}: {left}"
        );
    }
    ensure!(
        table_contents(&pg18, "shop.items")? == table_contents(&pg15, "shop.items")?,
        "teardown changed the copied rows"
    );
    Ok(())
}

/// The replication calls through the real agent's `Agent` API, as the
/// controller makes them (over mutual TLS, with the controller's
/// certificate): preparing is idempotent and reports the table without a
/// key; bad input and calls out of order are refused with what to do; the
/// role admitted logs in for replication with its one-time password and
/// nothing else; teardown twice leaves nothing.
#[test]
fn the_agent_api_prepares_refuses_and_tears_down() -> anyhow::Result<()> {
    use navette_proto::v1::agent_client::AgentClient;
    use navette_proto::v1::{
        PostgresReplicationRequest, ReplicationSide, TeardownPostgresReplicationRequest,
    };
    use navette_tests::{AgentKind, AgentSpec, ControllerSpec};

    let rig = Rig::new("postgres_replication_api")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
    let host = rig.add_namespace("src", SOURCE)?;
    let pg15 = host.start_postgres(&rig, PgVersion::V15, 5432)?;
    rig.add_account(
        &host,
        AccountSpec {
            name: ACCOUNT.to_owned(),
            password: "carol's secret".to_owned(),
            pg_databases: vec![SHOP.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    pg15.psql(SHOP, &schema())?;
    let token = rig.create_join_token("src", AgentKind::Shared)?;
    let agent = rig.start_agent(
        &host,
        AgentSpec {
            token,
            ..AgentSpec::default()
        },
    )?;
    let request = |migration: &str, server: &str| PostgresReplicationRequest {
        migration_id: migration.to_owned(),
        server: server.to_owned(),
        database: SHOP.to_owned(),
    };
    let teardown = TeardownPostgresReplicationRequest {
        migration_id: MIGRATION.to_owned(),
        server: "main".to_owned(),
        side: ReplicationSide::Source.into(),
        source_database: SHOP.to_owned(),
        target_database: String::new(),
    };
    let (first, again, no_slot, bad_id, no_server, admitted) = rig.client().run_in(|| async {
        let channel = agent.controller_channel(&controller)?;
        let mut client = AgentClient::new(channel);
        let first = client
            .prepare_postgres_replication(request(MIGRATION, "main"))
            .await?
            .into_inner();
        let again = client
            .prepare_postgres_replication(request(MIGRATION, "main"))
            .await?
            .into_inner();
        let no_slot = client
            .get_postgres_replication_lag(request(MIGRATION, "main"))
            .await;
        let bad_id = client
            .prepare_postgres_replication(request("../etc", "main"))
            .await;
        let no_server = client
            .prepare_postgres_replication(request(MIGRATION, "elsewhere"))
            .await;
        let admitted = client
            .admit_postgres_subscriber(request(MIGRATION, "main"))
            .await?
            .into_inner();
        Ok((first, again, no_slot, bad_id, no_server, admitted))
    })?;
    let names = Names::new(MIGRATION, SHOP);
    ensure!(
        first.publication == names.publication && first.slot_name == names.slot,
        "{first:?}"
    );
    ensure!(
        first.full_identity_tables == ["shop.nokey"] && again.full_identity_tables.is_empty(),
        "REPLICA IDENTITY FULL given: first {first:?}, again {again:?}"
    );
    let status = no_slot.err().context("lag without a slot was answered")?;
    ensure!(
        status.code() == tonic::Code::NotFound
            && status.message().contains("start the replication"),
        "{status:?}"
    );
    let status = bad_id.err().context("a bad migration id was accepted")?;
    ensure!(status.code() == tonic::Code::InvalidArgument, "{status:?}");
    let status = no_server.err().context("an unknown server was accepted")?;
    ensure!(
        status.code() == tonic::Code::NotFound && status.message().contains("elsewhere"),
        "{status:?}"
    );
    // The admitted role: replication connections with its password only.
    let attributes = pg15.psql(
        SHOP,
        &format!(
            "SELECT rolreplication, rolsuper, rolcreaterole, rolcreatedb, rolbypassrls \
             FROM pg_roles WHERE rolname = '{}'",
            admitted.role
        ),
    )?;
    ensure!(attributes == "t|f|f|f|f", "role attributes: {attributes}");
    let tables = pg15.psql(
        SHOP,
        &format!(
            "SELECT count(*) FROM information_schema.role_table_grants WHERE grantee = '{}'",
            admitted.role
        ),
    )?;
    ensure!(
        tables == "0",
        "the replication role holds table privileges: {tables}"
    );
    let login = |password: &str| -> anyhow::Result<bool> {
        let connection = pg15.tcp_config(&admitted.role, password, SHOP);
        rig.client().run_in(|| async move {
            Ok(tokio_postgres::connect(&connection, tokio_postgres::NoTls)
                .await
                .is_ok())
        })
    };
    ensure!(
        login(&admitted.password)?,
        "the admitted role cannot log in"
    );
    ensure!(
        !login("guessed")?,
        "the admitted role logs in with any password"
    );

    rig.client().run_in(|| async {
        let channel = agent.controller_channel(&controller)?;
        let mut client = AgentClient::new(channel);
        for _ in 0..2 {
            client
                .teardown_postgres_replication(teardown.clone())
                .await?;
        }
        Ok(())
    })?;
    let left = leftovers(&pg15)?;
    ensure!(
        left == "0 slots, 0 publications, 0 subscriptions, 0 roles",
        "after teardown: {left}"
    );
    Ok(())
}

/// A source server without `wal_level = logical` (as a server not set up
/// for migrations runs): the inventory says it is not ready and why, and
/// preparing a replication is refused with what the operator changes,
/// before anything is created.
#[test]
fn a_server_without_logical_wal_is_reported_and_refused() -> anyhow::Result<()> {
    use navette_agent::inventory::postgres::{ExtensionCache, inspect};
    use navette_tests::PgSpec;

    let rig = Rig::new("postgres_replication_wal")?;
    let host = rig.add_namespace("src", SOURCE)?;
    let mut spec = PgSpec::new(PgVersion::V15, 5432);
    // The rig's servers are logical; a later line wins.
    spec.extra_conf.push("wal_level = replica".to_owned());
    let pg15 = host.start_postgres_with(&rig, spec)?;
    rig.add_account(
        &host,
        AccountSpec {
            name: ACCOUNT.to_owned(),
            password: "carol's secret".to_owned(),
            pg_databases: vec![SHOP.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let server = server_config(&pg15);
    let (report, refused) = run_multi_threaded(&host, || async {
        let found = inspect(
            &server,
            SOURCE.to_string(),
            &ExtensionCache::default(),
            Duration::from_secs(60),
        )
        .await;
        let refused = source::prepare(&server, MIGRATION, SHOP).await;
        Ok((found.server, refused))
    })?;
    ensure!(report.reachable, "{report:?}");
    ensure!(
        !report.logical_replication_ready
            && report
                .logical_replication_reason
                .starts_with("wal_level is replica, not logical")
            && report
                .logical_replication_reason
                .contains("sets wal_level = logical"),
        "inventory: {report:?}"
    );
    let error = match refused {
        Ok(prepared) => bail!("prepared anyway: {prepared:?}"),
        Err(error) => navette_agent::error_chain(&error),
    };
    ensure!(
        error.contains("wal_level is replica, not logical")
            && error.contains("sets wal_level = logical"),
        "{error}"
    );
    ensure!(
        pg15.psql(SHOP, "SELECT count(*) FROM pg_publication")? == "0",
        "a publication was created on a server that cannot replicate"
    );
    Ok(())
}
