//! The freeze's PostgreSQL verification pieces against a real server
//! (PostgreSQL 15 in the rig): a `test_decoding` slot's own lines for
//! inserts, key-changing updates, deletes and quoted names are read into
//! the touched keys, and the fingerprint query over those keys, prepared
//! and run by psql, counts the touched rows and changes when one of them
//! is altered behind its back.

use std::net::Ipv4Addr;

use anyhow::{Context, ensure};
use navette_agent::verify::postgres::{TableName, Touched, fingerprint_sql, parse_change};
use navette_tests::{PgVersion, Rig};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 40);

#[test]
fn a_slot_s_changes_give_the_touched_keys_and_their_fingerprint() -> anyhow::Result<()> {
    let rig = Rig::new("verify_postgres")?;
    let host = rig.add_namespace("pgv", HOST)?;
    let server = host.start_postgres(&rig, PgVersion::V15, 5432)?;
    server.psql(
        "postgres",
        "CREATE SCHEMA \"Shop\"; \
         CREATE TABLE \"Shop\".\"my orders\" (id int PRIMARY KEY, note text, tags text[]); \
         INSERT INTO \"Shop\".\"my orders\" SELECT g, 'old', '{a}' FROM generate_series(1, 50) g; \
         SELECT 1 FROM pg_create_logical_replication_slot('navette_verify_t', 'test_decoding');",
    )?;
    server.psql(
        "postgres",
        // Committed and flushed: a slot decodes only flushed WAL (the rig
        // runs with synchronous_commit off).
        "SET synchronous_commit = on; \
         INSERT INTO \"Shop\".\"my orders\" VALUES (100, 'it''s new', '{x,\"y z\"}'); \
         UPDATE \"Shop\".\"my orders\" SET note = 'changed' WHERE id = 3; \
         UPDATE \"Shop\".\"my orders\" SET id = 200 WHERE id = 4; \
         DELETE FROM \"Shop\".\"my orders\" WHERE id = 5;",
    )?;
    let lines = server.psql(
        "postgres",
        "SELECT data FROM pg_logical_slot_peek_changes('navette_verify_t', NULL, NULL)",
    )?;
    let key = vec!["id".to_owned()];
    let mut touched = Touched::default();
    for line in lines.lines() {
        if let Some(change) = parse_change(line).with_context(|| format!("line {line:?}"))? {
            touched.add(&change, Some(&key));
        }
    }
    let table = TableName {
        schema: "Shop".into(),
        name: "my orders".into(),
    };
    let keys: Vec<String> = touched
        .keys
        .get(&table)
        .with_context(|| format!("no touched keys in {touched:?} from:\n{lines}"))?
        .iter()
        .map(|key| key[0].clone())
        .collect();
    let mut sorted: Vec<i64> = keys.iter().map(|k| k.parse()).collect::<Result<_, _>>()?;
    sorted.sort();
    ensure!(
        sorted == [3, 4, 5, 100, 200] && touched.whole.is_empty(),
        "touched keys {sorted:?}, whole tables {:?}, from:\n{lines}",
        touched.whole
    );

    let sql = fingerprint_sql(&table, &[("id".into(), "integer".into())], keys.len());
    let arguments: Vec<String> = keys.iter().map(|key| format!("'{key}'")).collect();
    let types = vec!["text"; keys.len()].join(", ");
    let fingerprint = || {
        server.psql(
            "postgres",
            &format!(
                "PREPARE f({types}) AS {sql}; EXECUTE f({});",
                arguments.join(", ")
            ),
        )
    };
    let before = fingerprint()?;
    // Independently: the rows still present among the touched keys.
    let expected = server.psql(
        "postgres",
        "SELECT count(*) || '|' || md5(string_agg(t::text, E'\\n' ORDER BY id)) \
         FROM \"Shop\".\"my orders\" t WHERE id IN (3, 4, 5, 100, 200)",
    )?;
    ensure!(
        before == expected,
        "fingerprint {before:?}, expected {expected:?}"
    );
    ensure!(
        before.starts_with("3|"),
        "three touched rows remain: {before}"
    );
    server.psql(
        "postgres",
        "UPDATE \"Shop\".\"my orders\" SET tags = '{tampered}' WHERE id = 3",
    )?;
    let after = fingerprint()?;
    ensure!(
        after != before,
        "a tampered row leaves the fingerprint {after}"
    );
    Ok(())
}
