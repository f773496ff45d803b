//! What a MariaDB target refuses of what its source describes and sends,
//! so that one customer's copy never gains power over the target server
//! or another customer's data (see `mariadb_support` for the hosts and the
//! account's database). The source here is a real Navette source reading
//! a real server on which the account holds more than a copy may carry:
//!
//! - a grant on another account's database, and a global privilege: the
//!   copy is refused before anything is created, with a finding naming
//!   the user and the privilege;
//! - a view and a procedure whose DEFINER is root: refused with a finding
//!   naming the definer; what the copy had made is gone;
//! - a user name that already exists on the target and that no copy of the
//!   account created (another customer's): refused, and that user is left
//!   as it was (same password hash, same grants);
//! - a MERGE table over another customer's table on the target: the load
//!   runs as the copy's loader, which may not touch another database, so
//!   the server refuses it, naming the loader;
//!
//! after each refusal the target has no user, database, grant or loader
//! of the copy; once the source is back to normal, the copy succeeds (and
//! sweeps a loader an earlier agent left); removing the account's users
//! afterwards drops exactly the users its copies created.

mod mariadb_support;

use anyhow::ensure;
use mariadb_support::{
    ACCOUNT, PASSWORD, RO_USER, TARGET_ADDR, World, account_users, customer_sql, loaders_left,
    nothing_applied, server_config,
};
use navette_agent::transfer::mariadb::{MariadbCopyError, remove_account_users};
use navette_agent::transfer::progress::Progress;

/// Pulls the account's database and expects a refusal whose findings
/// include `expected`; the findings.
fn expect_refused(world: &World, expected: &str) -> anyhow::Result<Vec<String>> {
    let outcome = world.pull(ACCOUNT, &Progress::new(mariadb_support::TRANSFER))?;
    let findings = match outcome {
        Err(MariadbCopyError::Refused { findings, .. }) => findings,
        other => anyhow::bail!("expected a refusal naming {expected:?}, got {other:?}"),
    };
    eprintln!("refused: {findings:?}");
    ensure!(
        findings.iter().any(|finding| finding.contains(expected)),
        "no finding names {expected:?}: {findings:?}"
    );
    Ok(findings)
}

#[test]
fn a_copy_that_would_give_the_account_more_than_its_own_is_refused_and_leaves_nothing()
-> anyhow::Result<()> {
    let world = World::new("mariadb_tenancy")?;
    let (source_db, target_db) = (&world.source_db, &world.target_db);

    // A grant on another account's database.
    source_db.sql("GRANT SELECT ON mdbbob_private.* TO 'mdbalice_ro'@'%'")?;
    expect_refused(
        &world,
        "mdbalice_ro@%: privileges on database mdbbob_private, which is not account mdbalice's",
    )?;
    nothing_applied(target_db)?;
    source_db.sql("REVOKE SELECT ON mdbbob_private.* FROM 'mdbalice_ro'@'%'")?;

    // Global privileges.
    source_db.sql("GRANT PROCESS, FILE ON *.* TO 'mdbalice'@'%'")?;
    expect_refused(&world, "mdbalice@%: global privilege PROCESS, FILE on *.*")?;
    nothing_applied(target_db)?;
    source_db.sql("REVOKE PROCESS, FILE ON *.* FROM 'mdbalice'@'%'")?;

    // A view that would read the server's users as root.
    source_db.sql(
        "CREATE DEFINER = 'root'@'localhost' SQL SECURITY DEFINER VIEW mdbalice.all_users AS \
           SELECT User, Host FROM mysql.user",
    )?;
    expect_refused(
        &world,
        "DEFINER root@localhost, which is not one of the account's users",
    )?;
    nothing_applied(target_db)?;
    source_db.sql("DROP VIEW mdbalice.all_users")?;

    // A procedure that would make the account an administrator.
    source_db.sql(
        "CREATE DEFINER = 'root'@'localhost' PROCEDURE mdbalice.promote() SQL SECURITY DEFINER \
           GRANT ALL PRIVILEGES ON *.* TO 'mdbalice'@'%' WITH GRANT OPTION",
    )?;
    expect_refused(
        &world,
        "DEFINER root@localhost, which is not one of the account's users",
    )?;
    nothing_applied(target_db)?;
    source_db.sql("DROP PROCEDURE mdbalice.promote")?;

    // A user of the same name already on the target, someone else's.
    target_db.sql("CREATE USER 'mdbalice_ro'@'%' IDENTIFIED BY 'someone else'")?;
    let definition = "SHOW CREATE USER 'mdbalice_ro'@'%'; SHOW GRANTS FOR 'mdbalice_ro'@'%'";
    let before = target_db.sql(definition)?;
    expect_refused(
        &world,
        "user mdbalice_ro@% already exists on this server and no copy of account mdbalice created it",
    )?;
    ensure!(
        target_db.sql(definition)? == before,
        "the other user changed: {before:?} became {:?}",
        target_db.sql(definition)?
    );
    ensure!(
        account_users(target_db)? == ["mdbalice_ro@%"],
        "users on the target: {:?}",
        account_users(target_db)?
    );
    target_db.sql("DROP USER 'mdbalice_ro'@'%'")?;
    nothing_applied(target_db)?;

    // A MERGE table over another customer's table, which on the target
    // holds that customer's secret.
    let other = "CREATE DATABASE mdbbob_private;\n\
                 CREATE TABLE mdbbob_private.ledger (id INT, note VARCHAR(40)) ENGINE=MyISAM;\n";
    source_db.sql(
        "CREATE TABLE mdbbob_private.ledger (id INT, note VARCHAR(40)) ENGINE=MyISAM;\n\
         CREATE TABLE mdbalice.peek (id INT, note VARCHAR(40)) ENGINE=MERGE \
           UNION=(mdbbob_private.ledger);\n",
    )?;
    target_db.sql(&format!(
        "{other}INSERT INTO mdbbob_private.ledger VALUES (1, 'bob''s secret');"
    ))?;
    let outcome = world.pull(ACCOUNT, &Progress::new(mariadb_support::TRANSFER))?;
    let message = outcome.as_ref().err().map(ToString::to_string);
    eprintln!("merge table: {message:?}");
    ensure!(
        matches!(&outcome, Err(MariadbCopyError::Load { .. }))
            && message.as_deref().is_some_and(|m| {
                m.contains("denied to user 'navette_load_") && m.contains("ledger")
            }),
        "a MERGE table over another database: {message:?}"
    );
    nothing_applied(target_db)?;
    ensure!(
        target_db.sql("SELECT note FROM mdbbob_private.ledger")? == "bob's secret",
        "the other customer's table changed"
    );
    source_db.sql("DROP TABLE mdbalice.peek")?;

    // Back to normal: the copy goes through, and its users log in. A
    // loader left by an agent that stopped mid-load is swept.
    target_db.sql(
        "CREATE USER 'navette_load_0123456789ab'@'localhost' IDENTIFIED BY 'lost';\n\
         GRANT SET USER ON *.* TO 'navette_load_0123456789ab'@'localhost';",
    )?;
    let report = world.pull(ACCOUNT, &Progress::new(mariadb_support::TRANSFER))??;
    ensure!(
        report
            .databases
            .first()
            .is_some_and(|d| d.tables.len() == 8),
        "{report:?}"
    );
    let who = customer_sql(
        world.rig.client(),
        TARGET_ADDR,
        ACCOUNT,
        PASSWORD,
        "SELECT CURRENT_USER()",
    )?;
    ensure!(who == format!("{ACCOUNT}@%"), "logged in as {who:?}");
    ensure!(loaders_left(target_db)?.is_empty(), "a loader is left");
    let bob = target_db.sql("SELECT note FROM mdbbob_private.ledger")?;
    ensure!(bob == "bob's secret", "the other customer's table: {bob:?}");

    // Removing the account's users drops the ones its copies created, and
    // nobody else.
    target_db.sql("CREATE USER 'mdbbob'@'%' IDENTIFIED BY 'bob-pw'")?;
    let server = server_config(target_db);
    let removed = world
        .target
        .run_in(|| async { Ok(remove_account_users(&server, ACCOUNT).await) })??;
    ensure!(
        removed == [format!("{ACCOUNT}@%"), format!("{RO_USER}@%")],
        "removed {removed:?}"
    );
    ensure!(
        account_users(target_db)?.is_empty(),
        "left: {:?}",
        account_users(target_db)?
    );
    ensure!(
        target_db.sql(
            "SELECT COUNT(*) FROM mysql.user WHERE (User, Host) IN (('mdbbob', '%'), ('root', 'localhost'))"
        )? == "2",
        "another user was dropped"
    );
    let again = world
        .target
        .run_in(|| async { Ok(remove_account_users(&server, ACCOUNT).await) })??;
    ensure!(again.is_empty(), "removed again: {again:?}");
    Ok(())
}
