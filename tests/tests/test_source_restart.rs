//! The *Test* button while the source's PostgreSQL restarts: the account's
//! database is being copied onto the test host when the source host's
//! PostgreSQL server stops, stays down 10 s, and starts again. The test
//! still ends ready, its copy holds what the source does, and the test
//! host's agent said in its log what it was waiting for meanwhile. While
//! the source is down, `GetTest` names the source host as out, since when
//! and until when the copy keeps trying; once the test is ready, it no
//! longer does.

mod support;

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Postgres, Rig};
use serde_json::json;
use support::{enrol, list, panel, str_of};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const ACCOUNT: &str = "nvr_gina";
/// Tables of the account's database, and rows of each.
const TABLES: u32 = 4;
const ROWS: u32 = 250_000;
/// How long the source server stays down.
const DOWN: Duration = Duration::from_secs(10);

/// Each table's row count and a digest of its rows in order.
fn contents(server: &Postgres) -> anyhow::Result<Vec<String>> {
    (1..=TABLES)
        .map(|n| {
            server.psql(
                ACCOUNT,
                &format!(
                    "SELECT count(*) || ' ' || md5(string_agg(id || ':' || label, ',' ORDER BY id)) \
                     FROM part{n}"
                ),
            )
        })
        .collect()
}

#[test]
fn a_test_completes_when_the_source_postgresql_restarts_during_its_copy() -> anyhow::Result<()> {
    let rig = Rig::new("test_source_restart")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", SOURCE)?;
    let test_host = rig.add_namespace("test-1", TEST_HOST)?;
    let source_pg = shared.start_postgres(&rig, PgVersion::V15, 5432)?;
    let target_pg = test_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(
        &shared,
        AccountSpec {
            name: ACCOUNT.into(),
            password: "gina-S3cret".into(),
            pg_databases: vec![ACCOUNT.into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let mut fill = format!("SET ROLE {ACCOUNT};\n");
    for n in 1..=TABLES {
        fill.push_str(&format!(
            "CREATE TABLE part{n} AS SELECT g AS id, md5(g::text) || md5((g * {n})::text) AS label \
             FROM generate_series(1, {ROWS}) g;\n\
             ALTER TABLE part{n} ADD PRIMARY KEY (id);\n"
        ));
    }
    source_pg.psql(ACCOUNT, &fill)?;
    let on_source = contents(&source_pg)?;
    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    let test_agent = enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;
    rig.wait_until(
        "gina's database in the inventory",
        Duration::from_secs(30),
        || {
            let account =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
            Ok(list(&account, "databases").len() == 1)
        },
    )?;

    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-restart", "account": ACCOUNT, "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    // As soon as the source serves a table's COPY to the test host, its
    // server stops (fast shutdown, as a restart does), stays down, and
    // starts again.
    let deadline = Instant::now() + Duration::from_secs(120);
    // The server itself watches for the COPY, every 2 ms for up to a
    // second per call (a poll from here, a process per look, could miss a
    // copy that takes two seconds in all).
    loop {
        let copying = source_pg.psql(
            "postgres",
            "CREATE FUNCTION pg_temp.copy_seen() RETURNS boolean LANGUAGE plpgsql AS $f$ \
             DECLARE started timestamptz := clock_timestamp(); \
             BEGIN \
               LOOP \
                 PERFORM pg_stat_clear_snapshot(); \
                 IF EXISTS (SELECT 1 FROM pg_stat_activity \
                            WHERE application_name = 'navette-agent copy' AND state = 'active' \
                              AND query LIKE 'COPY%') THEN RETURN true; END IF; \
                 IF clock_timestamp() - started > interval '1 second' THEN RETURN false; END IF; \
                 PERFORM pg_sleep(0.002); \
               END LOOP; \
             END $f$; \
             SELECT pg_temp.copy_seen();",
        )?;
        if copying.trim().ends_with('t') {
            break;
        }
        let test = panel(&rig, "GetTest", json!({"id": id}))?;
        if str_of(&test, "state") != "STATE_COPYING" && str_of(&test, "state") != "STATE_PENDING" {
            bail!("the test left copying before its data flowed: {test}");
        }
        if Instant::now() > deadline {
            bail!("the copy never read a table: {test}");
        }
    }
    let stopped = Instant::now();
    let stopped_at = chrono::Utc::now();
    source_pg.stop();
    let during = panel(&rig, "GetTest", json!({"id": id}))?;
    // While the source is down, the test says which host it cannot reach,
    // since when and until when it keeps trying.
    let mut shown = None;
    while stopped.elapsed() < DOWN {
        if shown.is_none() {
            let test = panel(&rig, "GetTest", json!({"id": id}))?;
            if test.get("outage").is_some() {
                shown = Some((stopped.elapsed(), test));
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    source_pg.start()?;
    let down = stopped.elapsed();
    ensure!(
        str_of(&during, "state") == "STATE_COPYING",
        "the restart did not land in the copy: {during}"
    );
    let Some((after, waiting)) = shown else {
        bail!("GetTest never showed an outage while the source was down");
    };
    eprintln!("the outage was shown {after:.1?} after the source stopped: {waiting}");
    let outage = &waiting["outage"];
    ensure!(
        str_of(outage, "hostId") == "shared-old",
        "the outage names the source host: {outage}"
    );
    ensure!(
        str_of(outage, "error").contains(&format!(
            "source PostgreSQL server main, database {ACCOUNT}"
        )),
        "the outage says what cannot be reached: {outage}"
    );
    let time = |name: &str| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        Ok(chrono::DateTime::parse_from_rfc3339(str_of(outage, name))
            .with_context(|| format!("{name} in {outage}"))?
            .with_timezone(&chrono::Utc))
    };
    let (since, until) = (time("since")?, time("retriedUntil")?);
    ensure!(
        since >= stopped_at - chrono::Duration::seconds(1)
            && since <= stopped_at + chrono::Duration::from_std(DOWN)?,
        "the outage began when the source stopped ({stopped_at}): {outage}"
    );
    ensure!(
        until - since == chrono::Duration::seconds(120),
        "the copy keeps trying for the documented 120 s: {outage}"
    );
    ensure!(
        str_of(&waiting["progress"]["waiting"], "what")
            == format!("source PostgreSQL server main, database {ACCOUNT}"),
        "the progress says what the copy waits for: {waiting}"
    );

    let test = support::wait_for_test(&rig, &id, "STATE_READY", Duration::from_secs(300))?;
    eprintln!("source down {down:.1?}; test: {test}");
    ensure!(
        test.get("outage").is_none() && test["progress"].get("waiting").is_none(),
        "the outage is gone once the test is ready: {test}"
    );
    ensure!(
        contents(&target_pg)? == on_source,
        "the test's copy differs from the source"
    );
    // The test host's agent waited out the outage and said so.
    let log = std::fs::read_to_string(test_agent.process().log_path())
        .context("reading the test host agent's log")?;
    let waiting: Vec<&str> = log
        .lines()
        .filter(|line| line.contains("the copy cannot reach its source"))
        .collect();
    ensure!(
        !waiting.is_empty(),
        "the test host's agent never waited for its source"
    );
    eprintln!(
        "the agent logged {} waits; the first: {}",
        waiting.len(),
        waiting[0]
    );
    ensure!(
        waiting.iter().all(|line| line.contains(&format!(
            "source PostgreSQL server main, database {ACCOUNT}"
        )) && line.contains("until")),
        "what the agent logged while waiting: {waiting:#?}"
    );
    Ok(())
}
