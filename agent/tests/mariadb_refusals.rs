//! What a MariaDB copy refuses, and how it fails (see `mariadb_support` for
//! the hosts and the account's database):
//!
//! - a database the transfer does not grant, an unknown transfer, and a
//!   caller that is not the host the transfer was granted to are refused by
//!   the source with PermissionDenied, and nothing reaches the target;
//! - a "copy" onto the source's own database is refused before anything
//!   is dropped;
//! - a source server that is down gives an error that says so, and the
//!   copy already on the target is left as it was;
//! - a dump that breaks once the target database was recreated leaves no
//!   partial database on the target;
//! - through all of it, the source's rows never change.

mod mariadb_support;

use anyhow::{Context, ensure};
use mariadb_support::{
    ACCOUNT, PASSWORD, QUIET_TABLES, TARGET_ADDR, TARGET_HOST, TRANSFER, World, customer_sql,
    rows_dump, server_config,
};
use navette_agent::transfer::mariadb::MariadbCopyError;
use navette_agent::transfer::progress::Progress;
use navette_proto::v1::MariadbDatabaseRequest;
use navette_proto::v1::mariadb_source_client::MariadbSourceClient;

fn ask(transfer: &str, database: &str) -> MariadbDatabaseRequest {
    MariadbDatabaseRequest {
        transfer_id: transfer.to_owned(),
        server: "main".to_owned(),
        database: database.to_owned(),
        snapshot_position: false,
    }
}

#[test]
fn copies_outside_the_grant_onto_the_source_or_from_a_broken_source_are_refused_cleanly()
-> anyhow::Result<()> {
    let world = World::new("mariadb_refusals")?;
    let (source_db, target_db) = (&world.source_db, &world.target_db);
    let source_rows = rows_dump(source_db, &QUIET_TABLES)?;

    // The source serves the granted host, for the granted database only.
    world.target.run_in(|| async {
        let mut as_target = MariadbSourceClient::new(world.channel(TARGET_HOST)?);
        let status = as_target
            .describe_database(ask(TRANSFER, "mdbbob_private"))
            .await
            .err()
            .context("a database outside the grant was described")?;
        ensure!(
            status.code() == tonic::Code::PermissionDenied
                && status
                    .message()
                    .contains("does not grant MariaDB database mdbbob_private"),
            "{status:?}"
        );
        let dump = as_target.dump(ask(TRANSFER, "mdbbob_private")).await;
        ensure!(
            dump.err().map(|s| s.code()) == Some(tonic::Code::PermissionDenied),
            "a database outside the grant was dumped"
        );
        let unknown = as_target.describe_database(ask("t-unknown", ACCOUNT)).await;
        ensure!(
            unknown.err().map(|s| s.code()) == Some(tonic::Code::PermissionDenied),
            "an unknown transfer was served"
        );

        let status = MariadbSourceClient::new(world.channel("mdb-other")?)
            .describe_database(ask(TRANSFER, ACCOUNT))
            .await
            .err()
            .context("a host the transfer was not granted to was served")?;
        ensure!(
            status.code() == tonic::Code::PermissionDenied
                && status
                    .message()
                    .contains("granted to host mdb-dst; the caller is agent of host mdb-other"),
            "{status:?}"
        );
        Ok(())
    })?;
    let outside = world.pull("mdbbob_private", &Progress::new(TRANSFER))?;
    ensure!(
        matches!(
            &outside,
            Err(MariadbCopyError::Source {
                call: "DescribeDatabase",
                ..
            })
        ),
        "pulling a database outside the grant: {outside:?}"
    );
    ensure!(
        target_db.sql("SHOW DATABASES LIKE 'mdbbob%'")?.is_empty(),
        "a refused database reached the target"
    );

    // A "copy" onto the source's own database is refused before anything
    // is dropped.
    let onto_itself = world.pull_on(
        &world.source,
        &[server_config(source_db)],
        ACCOUNT,
        &Progress::new(TRANSFER),
    )?;
    ensure!(
        matches!(onto_itself, Err(MariadbCopyError::SameDatabase { .. })),
        "copying onto the source itself: {onto_itself:?}"
    );
    ensure!(
        rows_dump(source_db, &QUIET_TABLES)? == source_rows,
        "the source's rows changed"
    );

    // A good copy, then the source goes down: the error says why, and the
    // copy on the target stays as it was.
    world.pull(ACCOUNT, &Progress::new(TRANSFER))??;
    source_db.stop();
    let down = world.pull(ACCOUNT, &Progress::new(TRANSFER))?;
    let message = down.as_ref().err().map(ToString::to_string);
    eprintln!("source down: {message:?}");
    ensure!(
        matches!(&down, Err(MariadbCopyError::Source { .. }))
            && message
                .as_deref()
                .is_some_and(|m| m.contains("Unavailable") && m.contains("Can't connect")),
        "pulling from a source that is down: {message:?}"
    );
    source_db.start()?;
    ensure!(
        rows_dump(target_db, &QUIET_TABLES)? == source_rows,
        "the copy on the target changed when the source was down"
    );
    ensure!(
        customer_sql(
            world.rig.client(),
            TARGET_ADDR,
            ACCOUNT,
            PASSWORD,
            "SELECT COUNT(*) FROM big"
        )? == "200000",
        "the customer cannot read the copy"
    );

    // A dump that breaks once the target database was recreated (the data
    // file of one table is gone) leaves no partial copy on the target.
    source_db.sql(&format!("FLUSH TABLES {ACCOUNT}.legacy_notes"))?;
    let data_file = source_db.data_dir().join(ACCOUNT).join("legacy_notes.MAD");
    std::fs::remove_file(&data_file)
        .with_context(|| format!("removing {}", data_file.display()))?;
    let broken = world.pull(ACCOUNT, &Progress::new(TRANSFER))?;
    let message = broken.as_ref().err().map(ToString::to_string);
    eprintln!("broken table: {message:?}");
    ensure!(
        matches!(&broken, Err(MariadbCopyError::Source { call: "Dump", .. }))
            && message
                .as_deref()
                .is_some_and(|m| m.contains("legacy_notes")),
        "pulling a broken table: {message:?}"
    );
    ensure!(
        target_db
            .sql(&format!("SHOW DATABASES LIKE '{ACCOUNT}'"))?
            .is_empty(),
        "the partial copy is still on the target"
    );
    let others: Vec<&str> = QUIET_TABLES
        .iter()
        .copied()
        .filter(|table| *table != "legacy_notes")
        .collect();
    ensure!(
        inserts(&rows_dump(source_db, &others)?, &others) == inserts(&source_rows, &others),
        "the source's rows changed"
    );
    Ok(())
}

/// The INSERT lines of a `rows_dump` that concern `tables`.
fn inserts(dump: &str, tables: &[&str]) -> Vec<String> {
    dump.lines()
        .filter(|line| {
            tables
                .iter()
                .any(|table| line.starts_with(&format!("INSERT INTO `{table}` ")))
        })
        .map(str::to_owned)
        .collect()
}
