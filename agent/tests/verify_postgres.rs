//! The verification of a migration's PostgreSQL rows against real servers:
//! a source on PostgreSQL 15 (the verification slot made by the
//! replication's `prepare`) and a copy on PostgreSQL 18, given the same
//! statements as the source (as its subscription would apply them) or
//! different ones (a copy gone wrong).
//!
//! Checked: a round names exactly the rows the source's changes touched
//! (inserts, updates, a key changed, deletes, a table without a key and its
//! NULLs, quoted names) and the copy compares equal; a row of the copy that
//! differs, one the copy lacks, one only the copy has, are each named; the
//! keys that differed, carried as pending, are checked again after the slot
//! moved past their changes, and pass once the copy is right; a round with
//! a cap on its lines leaves the rest, and its unread bytes, to the next.

mod postgres_support;

use std::net::Ipv4Addr;

use anyhow::{Context, ensure};
use navette_agent::replication::postgres::source;
use navette_agent::verify::postgres_rows::{source_round, target_compare};
use navette_proto::v1::{TableRows, VerifyRowsRequest, VerifyRowsResponse};
use navette_tests::{PgVersion, Postgres, Rig};
use postgres_support::{run_multi_threaded, server_config};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);
const MIGRATION: &str = "m-verify-rows-1";
const DATABASE: &str = "nvv_shop";

/// The account's schema and rows, the same on both servers.
const SCHEMA: &str = r#"
CREATE ROLE nvv_owner LOGIN;
CREATE SCHEMA "Shop" AUTHORIZATION nvv_owner;
SET ROLE nvv_owner;
CREATE TABLE "Shop"."my orders" (id int PRIMARY KEY, note text, tags text[], paid boolean);
CREATE TABLE "Shop".hist (a int, b text, at timestamptz);
ALTER TABLE "Shop".hist REPLICA IDENTITY FULL;
CREATE TABLE "Shop".lines (order_id int, n int, qty int, PRIMARY KEY (order_id, n));
INSERT INTO "Shop"."my orders" SELECT g, 'old', '{a}', false FROM generate_series(1, 50) g;
INSERT INTO "Shop".hist SELECT g, NULL, '2026-12-01 10:00:00+00' FROM generate_series(1, 20) g;
INSERT INTO "Shop".lines SELECT g / 4, g % 4, 1 FROM generate_series(4, 100) g;
RESET ROLE;
"#;

/// The customer's writes during the migration.
const CHANGES: &str = r#"
SET ROLE nvv_owner;
INSERT INTO "Shop"."my orders" VALUES (100, 'it''s new', '{x,"y z"}', true);
UPDATE "Shop"."my orders" SET note = 'changed' WHERE id = 3;
UPDATE "Shop"."my orders" SET id = 200 WHERE id = 4;
DELETE FROM "Shop"."my orders" WHERE id = 5;
UPDATE "Shop".hist SET b = 'seen' WHERE a = 7;
DELETE FROM "Shop".hist WHERE a = 8;
UPDATE "Shop".lines SET qty = 3 WHERE order_id = 2 AND n = 1;
"#;

fn run(
    host: &navette_tests::Netns,
    server: &Postgres,
    ask: VerifyRowsRequest,
) -> anyhow::Result<VerifyRowsResponse> {
    let config = server_config(server);
    run_multi_threaded(host, || async move {
        Ok(if ask.compare {
            target_compare(&config, &ask).await?
        } else {
            source_round(&config, &ask).await?
        })
    })
}

fn on_source(advance_to: &str, max_changes: u32, pending: Vec<TableRows>) -> VerifyRowsRequest {
    VerifyRowsRequest {
        migration_id: MIGRATION.into(),
        server: "main".into(),
        database: DATABASE.into(),
        advance_to: advance_to.into(),
        max_changes,
        pending,
        ..VerifyRowsRequest::default()
    }
}

fn on_target(source: &VerifyRowsResponse) -> VerifyRowsRequest {
    VerifyRowsRequest {
        migration_id: MIGRATION.into(),
        server: "main".into(),
        database: DATABASE.into(),
        compare: true,
        source: source.tables.clone(),
        ..VerifyRowsRequest::default()
    }
}

/// The touched keys of `table`, each key's values joined with `,`.
fn keys_of(answer: &VerifyRowsResponse, table: &str) -> Vec<String> {
    let mut keys: Vec<String> = answer
        .tables
        .iter()
        .filter(|rows| rows.name == table)
        .flat_map(|rows| rows.keys.iter())
        .map(|key| {
            key.values
                .iter()
                .map(|value| value.text.clone().unwrap_or_else(|| "NULL".into()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .collect();
    keys.sort();
    keys
}

/// Commits flushed: a slot decodes only flushed WAL (the rig runs with
/// synchronous_commit off).
fn apply(server: &Postgres, sql: &str) -> anyhow::Result<()> {
    server.psql(DATABASE, &format!("SET synchronous_commit = on; {sql}"))?;
    Ok(())
}

#[test]
fn the_rows_a_migration_changed_are_verified_on_the_copy() -> anyhow::Result<()> {
    let rig = Rig::new("verify_postgres")?;
    let host = rig.add_namespace("pgv", HOST)?;
    let old = host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let new = host.start_postgres(&rig, PgVersion::V18, 5433)?;
    for server in [&old, &new] {
        server.psql("postgres", &format!("CREATE DATABASE {DATABASE}"))?;
        server.psql(DATABASE, SCHEMA)?;
    }
    let old_config = server_config(&old);
    run_multi_threaded(&host, || async {
        Ok(source::prepare(&old_config, MIGRATION, DATABASE).await?)
    })
    .context("preparing the source (publication, identities, verification slot)")?;
    for server in [&old, &new] {
        apply(server, CHANGES)?;
    }

    // What the changes touched, and a copy that matches.
    let first = run(&host, &old, on_source("", 10_000, Vec::new()))?;
    ensure!(
        keys_of(&first, "my orders") == ["100", "200", "3", "4", "5"],
        "touched orders {:?} in {first:?}",
        keys_of(&first, "my orders")
    );
    ensure!(
        keys_of(&first, "lines") == ["2,1"],
        "touched lines {:?}",
        keys_of(&first, "lines")
    );
    // The table without a key: every column is its key, NULLs included.
    let hist = keys_of(&first, "hist");
    ensure!(
        hist.len() == 3
            && hist.contains(&"7,NULL,2026-12-01 10:00:00+00".to_owned())
            && hist.contains(&"7,seen,2026-12-01 10:00:00+00".to_owned())
            && hist.contains(&"8,NULL,2026-12-01 10:00:00+00".to_owned()),
        "touched hist rows {hist:?}"
    );
    ensure!(
        first
            .tables
            .iter()
            .all(|t| t.unverified.is_empty() && !t.whole),
        "every table verified by key: {first:?}"
    );
    let same = run(&host, &new, on_target(&first))?;
    ensure!(
        same.mismatches.is_empty() && same.differing.is_empty(),
        "an equal copy compares equal: {:?}",
        same.mismatches
    );

    // The copy goes wrong: a row differs, one is missing, one is extra.
    let round = "UPDATE \"Shop\".\"my orders\" SET paid = true WHERE id = 10; \
                 INSERT INTO \"Shop\".\"my orders\" VALUES (300, 'later', NULL, false); \
                 DELETE FROM \"Shop\".hist WHERE a = 9; \
                 DELETE FROM \"Shop\".\"my orders\" WHERE id = 11;";
    apply(&old, round)?;
    apply(
        &new,
        "UPDATE \"Shop\".\"my orders\" SET paid = true, note = 'tampered' WHERE id = 10; \
         INSERT INTO \"Shop\".\"my orders\" VALUES (300, 'later', NULL, false);",
    )?;
    let second = run(
        &host,
        &old,
        on_source(&first.through_lsn, 10_000, Vec::new()),
    )?;
    ensure!(
        keys_of(&second, "my orders") == ["10", "11", "300"],
        "only the new round's keys: {:?}",
        keys_of(&second, "my orders")
    );
    let differs = run(&host, &new, on_target(&second))?;
    let words = differs.mismatches.join("; ");
    ensure!(
        differs.mismatches.len() == 3
            && words.contains("Shop.my orders id=\"10\" (row differs)")
            && words.contains("Shop.my orders id=\"11\" (only on the target)")
            && words.contains("Shop.hist a=\"9\", b=NULL")
            && words.matches("(only on the target)").count() == 2
            && !words.contains("id=\"300\""),
        "mismatches: {words}"
    );

    // Carried as pending past the slot's move, checked again: still wrong,
    // then right once the copy is repaired.
    let pending = differs.differing.clone();
    let third = run(
        &host,
        &old,
        on_source(&second.through_lsn, 10_000, pending.clone()),
    )?;
    ensure!(third.changes == 0, "no new change: {third:?}");
    let again = run(&host, &new, on_target(&third))?;
    ensure!(
        again.mismatches.len() == 3,
        "the pending rows still differ: {:?}",
        again.mismatches
    );
    apply(
        &new,
        "UPDATE \"Shop\".\"my orders\" SET note = 'old' WHERE id = 10; \
         DELETE FROM \"Shop\".\"my orders\" WHERE id = 11; \
         DELETE FROM \"Shop\".hist WHERE a = 9;",
    )?;
    let fourth = run(&host, &old, on_source(&third.through_lsn, 10_000, pending))?;
    let repaired = run(&host, &new, on_target(&fourth))?;
    ensure!(
        repaired.mismatches.is_empty(),
        "a repaired copy compares equal: {:?}",
        repaired.mismatches
    );

    // A cap on the lines read: the rest waits for the next round.
    for id in 400..405 {
        apply(
            &old,
            &format!("INSERT INTO \"Shop\".\"my orders\" VALUES ({id}, 'n', NULL, false)"),
        )?;
    }
    let capped = run(&host, &old, on_source(&fourth.through_lsn, 3, Vec::new()))?;
    let rest = run(
        &host,
        &old,
        on_source(&capped.through_lsn, 10_000, Vec::new()),
    )?;
    let mut both = keys_of(&capped, "my orders");
    both.extend(keys_of(&rest, "my orders"));
    both.sort();
    ensure!(
        keys_of(&capped, "my orders").len() < 5
            && capped.unread_bytes > 0
            && both == ["400", "401", "402", "403", "404"],
        "capped round {:?} (unread {} bytes), then {:?}",
        keys_of(&capped, "my orders"),
        capped.unread_bytes,
        keys_of(&rest, "my orders")
    );
    Ok(())
}
