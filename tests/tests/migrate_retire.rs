//! After a migration's switch, the old host's two timers (issue 10, item
//! 5): the old copy is retired at the end of its grace period
//! (`[migrations] retire_after_secs`) and the old host forwards the
//! account's domains to the new host until the old DNS records' TTL has
//! passed (here, without `[dns]`, `forward_for_secs`, longer than the
//! grace period).
//!
//! An account with a PHP site, a PostgreSQL 15 and a MariaDB 10.11
//! database migrates to a PostgreSQL 18 / MariaDB 11.8 host. Once the
//! migration finished, the new host's agent is stopped before the grace
//! period ends: the retirement is retried and nothing of the old copy
//! goes while the new copy cannot be seen. Once the agent runs again the
//! old copy is retired (`retiredAt`, `removed`): the old host's home and
//! databases of the account are gone, the migration is still switched,
//! with its `forwardUntil`, a request for the site's domain sent to the
//! old host's address is answered by the new host, which has the data.
//! Once the forward's time has passed the migration completes
//! (`unforwardedAt`): the old host no longer sends the domain to the new
//! host, which still serves it.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::{
    AccountSpec, AgentKind, ControllerSpec, MariaDbSpec, PgVersion, Rig, sample_domains,
};
use serde_json::{Value, json};
use support::{list, str_of};

const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ACCOUNT: &str = "nvmr_rita";
const SHOP: &str = "nvmr_rita_shop";
const BLOG: &str = "nvmr_rita_blog";
/// The grace period and the forward's time, in seconds.
const RETIRE_AFTER: u64 = 15;
const FORWARD_FOR: u64 = 70;

/// A page that says which address of which host answered.
const WHO_PHP: &str = "<?php header('Content-Type: text/plain'); echo 'served by ', $_SERVER['SERVER_ADDR'], \"\\n\";\n";

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

fn migrations(rig: &Rig, method: &str, request: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Migrations/{method}"),
        &request,
    )
}

/// Polls migration `id` until `done` says so; fails early if it failed.
fn wait_migration(
    rig: &Rig,
    id: &str,
    what: &str,
    timeout: Duration,
    done: impl Fn(&Value) -> anyhow::Result<bool>,
) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    rig.wait_until(what, timeout, || {
        last = migrations(rig, "GetMigration", json!({"id": id}))?;
        let state = str_of(&last, "state");
        ensure!(
            !matches!(state, "STATE_FAILED" | "STATE_CANCELLED"),
            "the migration failed: {last}"
        );
        done(&last)
    })
    .with_context(|| format!("last seen: {last}"))?;
    Ok(last)
}

#[test]
fn the_old_host_forwards_past_the_retirement_until_its_own_time() -> anyhow::Result<()> {
    let rig = Rig::new("migrate_retire")?;
    let domain = sample_domains(ACCOUNT)[0].clone();
    let _controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: format!(
                "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = {RETIRE_AFTER}\n\
                 forward_for_secs = {FORWARD_FOR}\n"
            ),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", OLD)?;
    let new = rig.add_namespace("shared-new", NEW)?;
    let (pg15, pg18, maria_old, maria_new) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        let c = s.spawn(|| old.start_mariadb_with(&rig, MariaDbSpec::replication_source()));
        let d = s.spawn(|| new.start_mariadb_with(&rig, MariaDbSpec::replica_11_8()));
        Ok((
            join("pg15", a.join())?,
            join("pg18", b.join())?,
            join("mariadb 10.11", c.join())?,
            join("mariadb 11.8", d.join())?,
        ))
    })?;
    old.start_web_server(&rig)?;
    new.start_web_server(&rig)?;
    let account = rig.add_account(
        &old,
        AccountSpec {
            name: ACCOUNT.into(),
            password: "rita-S3cret-4".into(),
            pg_databases: vec![SHOP.into()],
            mariadb_databases: vec![BLOG.into()],
            files: true,
        },
    )?;
    let who = account.home.join("www/who.php");
    std::fs::write(&who, WHO_PHP)?;
    std::os::unix::fs::chown(&who, Some(account.uid), Some(account.gid))?;
    maria_old.sql(&format!(
        "CREATE TABLE {BLOG}.posts (id INT PRIMARY KEY AUTO_INCREMENT, n INT NOT NULL);\
         INSERT INTO {BLOG}.posts (n) VALUES (7);"
    ))?;
    let pg_database = |pg: &navette_tests::Postgres| {
        pg.psql(
            "postgres",
            &format!("SELECT count(*) FROM pg_database WHERE datname = '{SHOP}'"),
        )
    };
    let maria_database = |maria: &navette_tests::MariaDb| {
        maria.sql(&format!(
            "SELECT count(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = '{BLOG}'"
        ))
    };

    let agent = support::enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    let new_agent = support::enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "shared-new"])?;
    rig.client()
        .run_in(|| async {
            let channel = agent.controller_channel(&_controller)?;
            AgentClient::new(channel)
                .start_sites(StartSitesRequest {
                    account: ACCOUNT.to_owned(),
                    ..StartSitesRequest::default()
                })
                .await
                .map_err(|status| anyhow::anyhow!("StartSites: {status:?}"))
        })
        .context("starting the account's sites on the source")?;
    let served_by_old = format!("served by {OLD}");
    let served_by_new = format!("served by {NEW}");
    rig.wait_until(
        "the old host serving the site",
        Duration::from_secs(20),
        || {
            let (status, body) = old.http_get(&rig, &domain, "/who.php", Duration::from_secs(5))?;
            Ok(status == 200 && body.contains(&served_by_old))
        },
    )?;
    rig.wait_until(
        "the account's sites and databases in the inventory",
        Duration::from_secs(30),
        || {
            let found =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
            Ok(list(&found, "databases").len() == 2 && !list(&found, "sites").is_empty())
        },
    )?;

    let started = migrations(
        &rig,
        "Migrate",
        json!({"request_id": "m-retire", "account": ACCOUNT, "migration_id": "postgresql-15-to-18",
               "acknowledge_irreversible": true}),
    )?;
    let id = str_of(&started, "id").to_owned();

    // The migration finishes; the new host's agent stops before the
    // grace period ends: the retirement waits, the old copy stays.
    wait_migration(
        &rig,
        &id,
        "the migration finished",
        Duration::from_secs(240),
        |now| Ok(!str_of(now, "forwardUntil").is_empty()),
    )
    .with_context(|| rig.log_tails(40))?;
    new_agent.stop();
    let waiting = wait_migration(
        &rig,
        &id,
        "the retirement waiting for the new host",
        Duration::from_secs(RETIRE_AFTER + 30),
        |now| Ok(str_of(now, "error").contains("the old copy is kept")),
    )?;
    ensure!(
        str_of(&waiting, "retiredAt").is_empty(),
        "not retired while the new host's agent is down: {waiting}"
    );
    // A few more retry periods (1, 2, 4 s ...).
    std::thread::sleep(Duration::from_secs(8));
    let still = migrations(&rig, "GetMigration", json!({"id": id}))?;
    ensure!(
        str_of(&still, "retiredAt").is_empty()
            && account.home.join("www/who.php").exists()
            && pg_database(&pg15)? == "1"
            && maria_database(&maria_old)? == "1",
        "while the new host's agent is down the old home and databases stay: {still}"
    );
    new_agent.restart()?;

    // Then the old copy is retired, the forward stays.
    let retired = wait_migration(
        &rig,
        &id,
        "the old copy retired",
        Duration::from_secs(240),
        |now| Ok(!str_of(now, "retiredAt").is_empty()),
    )
    .with_context(|| rig.log_tails(40))?;
    ensure!(
        str_of(&retired, "state") == "STATE_SWITCHED"
            && !str_of(&retired, "forwardUntil").is_empty()
            && str_of(&retired, "unforwardedAt").is_empty(),
        "retired, still forwarding until its own time: {retired}"
    );
    let (status, body) = old.http_get(&rig, &domain, "/who.php", Duration::from_secs(10))?;
    ensure!(
        status == 200 && body.contains(&served_by_new),
        "after the retirement, the old host forwards {domain} to the new host: {status} {body}"
    );
    ensure!(
        std::fs::symlink_metadata(&account.home).is_err(),
        "the old home is gone from the old host: {}",
        account.home.display()
    );
    ensure!(
        pg_database(&pg15)? == "0" && maria_database(&maria_old)? == "0",
        "the old host's databases of the account are gone"
    );
    // The switch is over for good: its record goes, so that the account
    // may one day come back and be switched away by another migration.
    let cutover = agent.state_dir().join("cutover");
    ensure!(
        !cutover.join(format!("switch-{ACCOUNT}.json")).exists()
            && cutover.join(format!("retired-{ACCOUNT}.json")).exists(),
        "the old host keeps a retired record, not the switch's: {:?}",
        std::fs::read_dir(&cutover).map(|dir| dir
            .filter_map(|entry| entry.ok().map(|e| e.file_name()))
            .collect::<Vec<_>>())
    );
    let removed = list(&retired, "removed");
    let removed: Vec<&str> = removed.iter().filter_map(|v| v.as_str()).collect();
    ensure!(
        removed.iter().any(|r| r.starts_with("home "))
            && removed.iter().any(|r| r.ends_with(&format!("/{SHOP}")))
            && removed.iter().any(|r| r.ends_with(&format!("/{BLOG}"))),
        "the migration records what went: {retired}"
    );
    ensure!(
        pg_database(&pg18)? == "1" && maria_new.sql(&format!("SELECT n FROM {BLOG}.posts"))? == "7",
        "the new host has the account's data"
    );

    // Then the forward's time: the migration completes, the old host no
    // longer forwards, the new host still serves.
    let completed = wait_migration(
        &rig,
        &id,
        "the forward ended",
        Duration::from_secs(FORWARD_FOR + 60),
        |now| Ok(str_of(now, "state") == "STATE_COMPLETED"),
    )?;
    ensure!(
        !str_of(&completed, "unforwardedAt").is_empty(),
        "the forward's end is recorded: {completed}"
    );
    let forwarded = old.http_get(&rig, &domain, "/who.php", Duration::from_secs(5));
    ensure!(
        !matches!(&forwarded, Ok((_, body)) if body.contains(&served_by_new)),
        "the old host no longer forwards {domain}: {forwarded:?}"
    );
    let (status, body) = new.http_get(&rig, &domain, "/who.php", Duration::from_secs(10))?;
    ensure!(
        status == 200 && body.contains(&served_by_new),
        "the new host serves {domain}: {status} {body}"
    );
    let placed = rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
    ensure!(
        str_of(&placed, "hostId") == "shared-new",
        "the account lives on the new host: {placed}"
    );
    Ok(())
}
