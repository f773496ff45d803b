//! The *Test* button cannot be used to gain power on the test host
//! (issue 7), end to end: controller, agents, a PostgreSQL 15 shared host
//! and a PostgreSQL 18 test host.
//!
//! - An account whose CHECK constraint, domain check, generated column
//!   and expression index call its own function, which tries to make the
//!   account's role a superuser when it can (also after `RESET ROLE`):
//!   the test becomes ready, and on the test host the role has exactly the
//!   attributes it has on the shared host; no loader role is left.
//! - An account whose role the old host's superuser made a member of
//!   `pg_read_all_data`: the test fails, its error names the membership,
//!   and the test host has no role or database of that account.

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, AgentKind, ControllerSpec, PgVersion, Postgres, Rig};
use serde_json::json;
use support::{enrol, list, panel, str_of};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("{what} panicked"))?
}

/// The attributes a role must keep, as the test reads them.
fn attributes(server: &Postgres, role: &str) -> anyhow::Result<String> {
    server.psql(
        "postgres",
        &format!(
            "SELECT format('super=%s createrole=%s createdb=%s replication=%s bypassrls=%s login=%s', \
                    rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin) \
             FROM pg_roles WHERE rolname = '{role}'"
        ),
    )
}

/// The account's schema: everything that runs while a copy is loaded
/// calls the account's function, which makes the account's role a
/// superuser whenever it runs as one (the attack reported in issue 7).
fn hostile_schema(account: &str) -> String {
    format!(
        r#"
CREATE FUNCTION public.grab_volatile(v int, reset boolean) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF reset THEN
    BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN OTHERS THEN NULL; END;
  END IF;
  IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
    EXECUTE 'ALTER ROLE {account} SUPERUSER';
  END IF;
  RETURN true;
END $f$;
CREATE FUNCTION public.grab(v int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
  $f$ BEGIN RETURN public.grab_volatile(v, false); END $f$;
CREATE FUNCTION public.grab_reset(v int) RETURNS boolean LANGUAGE plpgsql IMMUTABLE AS
  $f$ BEGIN RETURN public.grab_volatile(v, true); END $f$;
CREATE TABLE public.by_check (id int CHECK (public.grab(id)));
CREATE DOMAIN public.grabbed AS int CHECK (public.grab_reset(VALUE));
CREATE TABLE public.by_domain (id public.grabbed);
CREATE TABLE public.by_generated (id int, g boolean GENERATED ALWAYS AS (public.grab(id)) STORED);
CREATE TABLE public.by_index (id int);
CREATE INDEX by_index_grab ON public.by_index ((public.grab_reset(id)));
INSERT INTO public.by_check VALUES (1), (2);
INSERT INTO public.by_domain VALUES (1), (2);
INSERT INTO public.by_generated VALUES (1), (2);
INSERT INTO public.by_index VALUES (1), (2);
"#
    )
}

#[test]
fn a_test_gives_a_customer_no_power_on_the_test_host() -> anyhow::Result<()> {
    let rig = Rig::new("tenant_postgres")?;
    let _controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-old", SOURCE)?;
    let test_host = rig.add_namespace("test-1", TEST_HOST)?;
    let (source_pg, target_pg) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
        Ok((join("pg15", a.join())?, join("pg18", b.join())?))
    })?;
    let (mallory, eve) = ("nvtt_mallory", "nvtt_eve");
    for name in [mallory, eve] {
        rig.add_account(
            &shared,
            AccountSpec {
                name: name.into(),
                password: format!("{name} pw"),
                pg_databases: vec![name.into()],
                ..AccountSpec::default()
            },
        )?;
    }
    // Mallory writes her schema, logged in as herself.
    rig.run_in(rig.client(), || async {
        let (client, connection) = tokio_postgres::connect(
            &source_pg.tcp_config(mallory, &format!("{mallory} pw"), mallory),
            tokio_postgres::NoTls,
        )
        .await
        .context("mallory logs in to the shared host")?;
        tokio::spawn(connection);
        client
            .batch_execute(&hostile_schema(mallory))
            .await
            .context("mallory writes her schema")
    })?;
    // Eve's role was made a reader of every table by the old host's
    // superuser (or by whoever owned the old host).
    source_pg.psql("postgres", &format!("GRANT pg_read_all_data TO {eve}"))?;

    enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "test-1"])?;
    for name in [mallory, eve] {
        rig.wait_until(
            &format!("{name}'s database in the inventory"),
            Duration::from_secs(30),
            || {
                let account =
                    rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": name}))?;
                Ok(list(&account, "databases").len() == 1)
            },
        )?;
    }

    // Mallory's test: ready, and her role no stronger than at home.
    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-mallory", "account": mallory, "migration_id": "postgresql-15-to-18"}),
    )?;
    support::wait_for_test(
        &rig,
        str_of(&started, "id"),
        "STATE_READY",
        Duration::from_secs(120),
    )?;
    let (at_home, on_test_host) = (
        attributes(&source_pg, mallory)?,
        attributes(&target_pg, mallory)?,
    );
    ensure!(
        at_home.starts_with("super=f ") && on_test_host == at_home,
        "mallory's role on the test host: {on_test_host}; on the shared host: {at_home}"
    );
    for table in ["by_check", "by_domain", "by_generated", "by_index"] {
        let rows = target_pg.psql(mallory, &format!("SELECT count(*) FROM public.{table}"))?;
        ensure!(rows == "2", "{table} on the test host: {rows} rows");
    }

    // Eve's test: refused, saying why, and nothing of hers on the test host.
    let started = panel(
        &rig,
        "TestMigration",
        json!({"request_id": "r-eve", "account": eve, "migration_id": "postgresql-15-to-18"}),
    )?;
    let failed = support::wait_for_test(
        &rig,
        str_of(&started, "id"),
        "STATE_FAILED",
        Duration::from_secs(120),
    )?;
    let error = str_of(&failed, "error");
    ensure!(
        error.contains(&format!(
            "membership of role {eve} in pg_read_all_data: pg_read_all_data is a predefined role"
        )),
        "the failed test's error: {error}"
    );
    let left = target_pg.psql(
        "postgres",
        &format!(
            "SELECT (SELECT count(*) FROM pg_roles WHERE rolname = '{eve}') || ' ' || \
                    (SELECT count(*) FROM pg_database WHERE datname = '{eve}') || ' ' || \
                    (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'navette\\_load\\_%')"
        ),
    )?;
    ensure!(
        left == "0 0 0",
        "eve's roles, databases, and loaders on the test host: {left}"
    );
    Ok(())
}
