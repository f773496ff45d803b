//! A customer's PostgreSQL copy never gains power on the host it lands on,
//! for real: PostgreSQL 15 sources, a PostgreSQL 18 target, the real
//! `PostgresSourceService` over mutual TLS and `pull` in the target host.
//!
//! - A hostile schema whose CHECK constraints, domain check, generated
//!   column, expression index and materialized view call the customer's
//!   own function, which tries (also after `RESET ROLE` and `SET SESSION
//!   AUTHORIZATION`) to make the customer's role a superuser: the copy
//!   completes, the function ran on the target (the target's log says as
//!   whom), and the role has exactly the attributes it has on the source.
//! - A source that sends a membership in `pg_read_all_data`, a
//!   REPLICATION attribute, a `session_preload_libraries` setting, an
//!   event trigger, a role the target's role ledger gives another
//!   customer's copy, a role of the target no copy made, or a role that
//!   exists on the target with CREATEROLE:
//!   each copy is refused with a finding naming it, and nothing is applied
//!   on the target; nor is anything when the target's role ledger is not
//!   owned by its administrator.
//! - A compromised source agent (the real service, its description
//!   changed) sends index definitions with a second statement: refused with
//!   a finding naming the index, nothing applied. The extended query
//!   protocol, through which index definitions are executed, refuses a
//!   second statement too (the validator's own cases are unit tests of
//!   `acceptance::check_index`).

mod postgres_support;

use std::net::Ipv4Addr;

use anyhow::{Context, bail, ensure};
use navette_agent::transfer::postgres::{PostgresCopyError, PostgresSourceService, PullOptions};
use navette_proto::v1::PostgresDatabaseDescription;
use navette_tests::{AccountSpec, PgVersion, Postgres, Rig};
use postgres_support::{
    AlteredSource, Pki, PullSpec, SourceAgent, grants, pull_in, same_name, server_config,
};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

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

/// The account's schema: its own function, called by everything that runs
/// while a copy is restored and loaded, tries to make the account's role a
/// superuser; `grab_reset` first tries to become the session's original
/// user again. Each records in the server's log as whom it ran, with the
/// value it was called for (100s: a CHECK constraint, 200s: a domain's
/// check, 300s: a generated column, 400s: an expression index, 500s: a
/// CHECK calling `grab_reset`, 600: a materialized view).
fn hostile_schema(account: &str) -> String {
    format!(
        r#"
CREATE FUNCTION public.grab_volatile(v int, reset boolean) RETURNS boolean LANGUAGE plpgsql AS $f$
BEGIN
  IF reset THEN
    BEGIN EXECUTE 'RESET ROLE'; EXCEPTION WHEN OTHERS THEN NULL; END;
    BEGIN EXECUTE 'SET SESSION AUTHORIZATION postgres'; EXCEPTION WHEN OTHERS THEN NULL; END;
  END IF;
  RAISE WARNING 'nvpgt grab v=% current_user=% session_user=% superuser=%',
    v, current_user, session_user, (SELECT rolsuper FROM pg_roles WHERE rolname = current_user);
  BEGIN
    EXECUTE 'ALTER ROLE {account} SUPERUSER';
  EXCEPTION WHEN insufficient_privilege THEN NULL;
  END;
  RETURN true;
END $f$;
-- Generated columns and index expressions take only immutable functions;
-- one that calls a volatile one passes.
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
CREATE TABLE public.by_check_reset (id int CHECK (public.grab_reset(id)));
INSERT INTO public.by_check VALUES (100), (101);
INSERT INTO public.by_domain VALUES (200), (201);
INSERT INTO public.by_generated VALUES (300), (301);
INSERT INTO public.by_index VALUES (400), (401);
INSERT INTO public.by_check_reset VALUES (500), (501);
CREATE MATERIALIZED VIEW public.by_view AS SELECT public.grab(600) AS g;
"#
    )
}

#[test]
fn a_customer_s_functions_never_run_with_more_than_the_customer_s_power() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_tenant_escalation")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let account = "nvpgt_mallory";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: account.to_owned(),
            password: "mallory pw".to_owned(),
            pg_databases: vec![account.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    // Written by the customer, logged in as the account's role (in a
    // superuser's session, grab_reset would escalate on the source).
    rig.run_in(rig.client(), || async {
        let (client, connection) = tokio_postgres::connect(
            &pg15.tcp_config(account, "mallory pw", account),
            tokio_postgres::NoTls,
        )
        .await
        .context("the customer logs in to the source")?;
        tokio::spawn(connection);
        client
            .batch_execute(&hostile_schema(account))
            .await
            .context("the customer writes the schema")
    })?;
    let on_source = attributes(&pg15, account)?;
    ensure!(
        on_source.starts_with("super=f "),
        "the source role: {on_source}"
    );

    let pki = Pki::new()?;
    let transfer_id = "t-pg-tenant-1";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[account],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    // The target agent reaches its server over TCP, where every login
    // needs a password (SCRAM): the loader sends its own.
    pg18.psql("postgres", "ALTER ROLE postgres PASSWORD 'target admin pw'")?;
    let mut target_server = server_config(&pg18);
    target_server.host = TARGET.to_string();
    target_server.password = Some("target admin pw".to_owned());
    let (result, _) = pull_in(PullSpec {
        target: &target_host,
        identity: pki.agent("dst")?,
        pki: &pki,
        source: &source,
        transfer_id,
        copies: vec![same_name(account)],
        target_servers: vec![target_server],
        options: PullOptions {
            work_dir: rig.dir().to_owned(),
            ..PullOptions::default()
        },
    })?;
    let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    eprintln!("copied: {report:#?}");

    // The role has on the target exactly what it has on the source.
    let on_target = attributes(&pg18, account)?;
    ensure!(
        on_target == on_source,
        "the customer's role on the target: {on_target}; on the source: {on_source}"
    );
    // The copy is complete.
    for (table, rows) in [
        ("by_check", "2"),
        ("by_domain", "2"),
        ("by_generated", "2"),
        ("by_index", "2"),
        ("by_check_reset", "2"),
        ("by_view", "1"),
        ("items", "3"),
    ] {
        let count = pg18.psql(account, &format!("SELECT count(*) FROM public.{table}"))?;
        ensure!(count == rows, "{table}: {count} rows on the target");
    }
    // The function did run on the target, for every kind of call, and
    // never as a superuser: as the table's owner, in a session of the
    // copy's loader (or as the loader itself, after RESET ROLE).
    let log = std::fs::read_to_string(pg18.process().log_path())
        .context("reading the target server's log")?;
    let calls: Vec<&str> = log
        .lines()
        .filter_map(|line| {
            line.split_once("WARNING:  nvpgt grab ")
                .map(|(_, call)| call)
        })
        .collect();
    eprintln!("the customer's function on the target: {calls:#?}");
    for (first, what) in [
        (100, "a CHECK constraint"),
        (200, "a domain's CHECK"),
        (300, "a generated column"),
        (400, "an expression index"),
        (500, "a CHECK whose function resets its role"),
        (600, "a materialized view"),
    ] {
        let value = |v: u32| format!("v={v} ");
        ensure!(
            calls
                .iter()
                .any(|c| c.starts_with(&value(first)) || c.starts_with(&value(first + 1))),
            "the customer's function never ran on the target for {what}: {calls:#?}"
        );
    }
    for call in &calls {
        ensure!(
            call.ends_with("superuser=f")
                && call.contains("session_user=navette_load_")
                && (call.contains(&format!("current_user={account} "))
                    || call.contains("current_user=navette_load_")),
            "the customer's function ran with more than the account's power: {call}"
        );
    }
    // The loader is gone.
    let loaders = pg18.psql(
        "postgres",
        "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'navette\\_load\\_%'",
    )?;
    ensure!(loaders == "0", "loader roles left on the target: {loaders}");
    Ok(())
}

/// What a copy of `account` was refused for, and the target untouched.
struct Refusal<'a> {
    /// What the source's superuser does first (as a compromised old host
    /// would), in the account's database.
    on_source: &'a str,
    /// What puts it back.
    undo_on_source: &'a str,
    /// What the target has already (in its `postgres` database).
    on_target: &'a str,
    undo_on_target: &'a str,
    /// The finding the refusal must hold.
    finding: &'a str,
}

#[test]
fn what_a_source_sends_beyond_the_account_is_refused_and_nothing_applied() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_tenant_refusals")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let account = "nvpgr_eve";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: account.to_owned(),
            password: "eve pw".to_owned(),
            pg_databases: vec![account.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-tenant-2";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[account],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let copy = || {
        let (result, _) = pull_in(PullSpec {
            target: &target_host,
            identity: pki.agent("dst")?,
            pki: &pki,
            source: &source,
            transfer_id,
            copies: vec![same_name(account)],
            target_servers: vec![server_config(&pg18)],
            options: PullOptions {
                work_dir: rig.dir().to_owned(),
                account: Some(account.to_owned()),
                ..PullOptions::default()
            },
        })?;
        Ok::<_, anyhow::Error>(result)
    };
    // What the target holds of the account's: roles, their settings, the
    // database.
    let footprint = || -> anyhow::Result<String> {
        pg18.psql(
            "postgres",
            "SELECT format('roles=%s settings=%s databases=%s', \
               (SELECT string_agg(format('%s:%s:%s:%s', rolname, rolcreaterole, rolreplication, \
                                         rolpassword IS NOT NULL), ',' ORDER BY rolname) \
                FROM pg_authid WHERE rolname LIKE 'nvpgr%'), \
               (SELECT count(*) FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole \
                WHERE r.rolname LIKE 'nvpgr%'), \
               (SELECT count(*) FROM pg_database WHERE datname LIKE 'nvpgr%'))",
        )
    };
    let cases = [
        Refusal {
            on_source: "GRANT pg_read_all_data TO nvpgr_eve",
            undo_on_source: "REVOKE pg_read_all_data FROM nvpgr_eve",
            on_target: "",
            undo_on_target: "",
            finding: "membership of role nvpgr_eve in pg_read_all_data: pg_read_all_data is a predefined role of PostgreSQL; a copy never grants it",
        },
        Refusal {
            on_source: "CREATE ROLE nvpgr_eve_repl REPLICATION; GRANT SELECT ON items TO nvpgr_eve_repl",
            undo_on_source: "REVOKE SELECT ON items FROM nvpgr_eve_repl; DROP ROLE nvpgr_eve_repl",
            on_target: "",
            undo_on_target: "",
            finding: "role nvpgr_eve_repl: it has the REPLICATION attribute on the source; a copy never grants it",
        },
        Refusal {
            on_source: "ALTER ROLE nvpgr_eve SET session_preload_libraries = 'auto_explain'",
            undo_on_source: "ALTER ROLE nvpgr_eve RESET session_preload_libraries",
            on_target: "",
            undo_on_target: "",
            finding: "role nvpgr_eve: setting session_preload_libraries = \"auto_explain\" is not one a user may set on the target (its context is superuser)",
        },
        Refusal {
            on_source: "CREATE FUNCTION public.on_ddl() RETURNS event_trigger LANGUAGE plpgsql \
                        AS $$ BEGIN NULL; END $$; \
                        CREATE EVENT TRIGGER grab ON ddl_command_end EXECUTE FUNCTION public.on_ddl()",
            undo_on_source: "DROP EVENT TRIGGER grab; DROP FUNCTION public.on_ddl()",
            on_target: "",
            undo_on_target: "",
            finding: "the schema's EVENT TRIGGER - grab postgres: event triggers run for every role and need a superuser; not restored",
        },
        // Another customer's role on the target, as the role ledger records
        // it (bob's copy made it there).
        Refusal {
            on_source: "CREATE ROLE nvpgr_bob LOGIN PASSWORD 'bob pw'; GRANT SELECT ON items TO nvpgr_bob",
            undo_on_source: "REVOKE SELECT ON items FROM nvpgr_bob; DROP ROLE nvpgr_bob",
            on_target: "CREATE ROLE nvpgr_bob LOGIN; \
                        CREATE SCHEMA IF NOT EXISTS navette; \
                        CREATE TABLE IF NOT EXISTS navette.copy_roles (role text PRIMARY KEY, \
                          account text NOT NULL, transfer text NOT NULL, \
                          created timestamptz NOT NULL DEFAULT now()); \
                        INSERT INTO navette.copy_roles (role, account, transfer) \
                          VALUES ('nvpgr_bob', 'nvpgr_bob', 't-bob')",
            undo_on_target: "DELETE FROM navette.copy_roles WHERE role = 'nvpgr_bob'; DROP ROLE nvpgr_bob",
            finding: "role nvpgr_bob on the target belongs to another account's copy; a copy of nvpgr_eve does not take it over",
        },
        // A role of the target no copy made (the operator's, or a role of
        // the server).
        Refusal {
            on_source: "CREATE ROLE nvpgr_ops NOLOGIN; GRANT SELECT ON items TO nvpgr_ops",
            undo_on_source: "REVOKE SELECT ON items FROM nvpgr_ops; DROP ROLE nvpgr_ops",
            on_target: "CREATE ROLE nvpgr_ops NOLOGIN",
            undo_on_target: "DROP ROLE nvpgr_ops",
            finding: "role nvpgr_ops already exists on the target and no copy of nvpgr_eve made it",
        },
        Refusal {
            on_source: "",
            undo_on_source: "",
            on_target: "CREATE ROLE nvpgr_eve CREATEROLE",
            undo_on_target: "DROP ROLE nvpgr_eve",
            finding: "role nvpgr_eve already exists on the target with CREATEROLE; a copy does not take it over",
        },
    ];
    for case in &cases {
        if !case.on_source.is_empty() {
            pg15.psql(account, case.on_source)?;
        }
        if !case.on_target.is_empty() {
            pg18.psql("postgres", case.on_target)?;
        }
        let before = footprint()?;
        let findings = match copy()? {
            Ok(report) => bail!("the copy was allowed ({}): {report:?}", case.finding),
            Err(PostgresCopyError::NotAccepted { findings, .. }) => findings,
            Err(other) => bail!(
                "{}: unexpected error: {}",
                case.finding,
                navette_agent::error_chain(&other)
            ),
        };
        ensure!(
            findings.iter().any(|f| f.starts_with(case.finding)),
            "no finding {:?} in {findings:#?}",
            case.finding
        );
        let after = footprint()?;
        ensure!(
            after == before,
            "{}: the target changed: {before} before, {after} after",
            case.finding
        );
        if !case.undo_on_source.is_empty() {
            pg15.psql(account, case.undo_on_source)?;
        }
        if !case.undo_on_target.is_empty() {
            pg18.psql("postgres", case.undo_on_target)?;
        }
    }
    ensure!(
        footprint()? == "roles= settings=0 databases=0",
        "the target before the copy: {}",
        footprint()?
    );
    // A ledger that is not the administrator's (a customer could write
    // into it that anyone's role is theirs) stops the copy before any role
    // is made.
    pg18.psql(
        "postgres",
        "CREATE ROLE nvpgr_mallory NOLOGIN; ALTER TABLE navette.copy_roles OWNER TO nvpgr_mallory",
    )?;
    let before = footprint()?;
    match copy()? {
        Err(error @ PostgresCopyError::Target { .. })
            if navette_agent::error_chain(&error).contains("is not owned by a superuser") => {}
        other => bail!("a copy with a customer's ledger: {other:?}"),
    }
    ensure!(
        footprint()? == before,
        "the target changed: {}",
        footprint()?
    );
    pg18.psql(
        "postgres",
        "ALTER TABLE navette.copy_roles OWNER TO postgres; DROP ROLE nvpgr_mallory",
    )?;
    // With the source as it was, the same copy is accepted: the refusals
    // came from what was added.
    copy()?.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    ensure!(
        attributes(&pg18, account)? == attributes(&pg15, account)?,
        "the role on the target: {}",
        attributes(&pg18, account)?
    );
    // The role ledger gives the role the copy made to its account.
    let ledger = pg18.psql(
        "postgres",
        "SELECT string_agg(role || ':' || account, ',' ORDER BY role) FROM navette.copy_roles",
    )?;
    ensure!(ledger == "nvpgr_eve:nvpgr_eve", "the ledger: {ledger}");
    Ok(())
}

/// Index definitions are executed through the extended query protocol
/// (tokio-postgres's `execute`), as the data phase does: a definition with
/// a second statement is refused by the server itself, and the second
/// statement does not run.
#[test]
fn the_extended_protocol_refuses_a_second_statement() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_tenant_protocol")?;
    let host = rig.add_namespace("dst", TARGET)?;
    let pg18 = host.start_postgres(&rig, PgVersion::V18, 5432)?;
    pg18.psql(
        "postgres",
        "CREATE ROLE nvpgp_victim NOLOGIN; CREATE TABLE public.t (id int)",
    )?;
    let server = server_config(&pg18);
    let refused = postgres_support::run_multi_threaded(&host, || async {
        let client =
            navette_agent::transfer::postgres::session::connect(&server, "postgres").await?;
        let error = client
            .execute(
                "CREATE INDEX t_id ON public.t USING btree (id); ALTER ROLE nvpgp_victim SUPERUSER",
                &[],
            )
            .await
            .err()
            .map(|e| navette_agent::error_chain(&e));
        Ok(error)
    })?;
    let refused = refused.context("the server ran two statements sent as one")?;
    ensure!(
        refused.contains("cannot insert multiple commands into a prepared statement"),
        "{refused}"
    );
    ensure!(
        pg18.psql(
            "postgres",
            "SELECT rolsuper FROM pg_roles WHERE rolname = 'nvpgp_victim'"
        )? == "f",
        "the second statement ran"
    );
    ensure!(
        pg18.psql(
            "postgres",
            "SELECT count(*) FROM pg_class WHERE relname = 't_id'"
        )? == "0",
        "the index was built"
    );
    Ok(())
}

/// A source whose description of an index carries a second statement (as
/// a compromised old host could send): the copy is refused with a finding
/// naming the index, before the target is changed.
#[test]
fn an_index_definition_with_a_second_statement_is_refused() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_tenant_index")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let account = "nvpgi_oscar";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: account.to_owned(),
            password: "oscar pw".to_owned(),
            pg_databases: vec![account.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-tenant-3";
    let inner = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[account],
        )?,
        vec![server_config(&pg15)],
    );
    let tamper: fn(&mut PostgresDatabaseDescription) = |description| {
        for index in description
            .tables
            .iter_mut()
            .flat_map(|t| t.indexes.iter_mut())
        {
            index.definition = format!("{}; ALTER ROLE nvpgi_oscar SUPERUSER", index.definition);
        }
    };
    let source = SourceAgent::start(
        &source_host,
        SOURCE,
        AlteredSource {
            tamper,
            ..AlteredSource::new(inner)
        },
        &pki,
    )?;
    let (result, _) = pull_in(PullSpec {
        target: &target_host,
        identity: pki.agent("dst")?,
        pki: &pki,
        source: &source,
        transfer_id,
        copies: vec![same_name(account)],
        target_servers: vec![server_config(&pg18)],
        options: PullOptions {
            work_dir: rig.dir().to_owned(),
            ..PullOptions::default()
        },
    })?;
    let findings = match result {
        Ok(report) => bail!("the copy was allowed: {report:?}"),
        Err(PostgresCopyError::NotAccepted { findings, .. }) => findings,
        Err(other) => bail!("unexpected error: {}", navette_agent::error_chain(&other)),
    };
    ensure!(
        findings.iter().any(|f| f.starts_with(
            "index items_pkey of table public.items: it holds a second statement (;)"
        )),
        "{findings:#?}"
    );
    let footprint = pg18.psql(
        "postgres",
        "SELECT (SELECT count(*) FROM pg_roles WHERE rolname LIKE 'nvpgi%') || ' ' || \
                (SELECT count(*) FROM pg_database WHERE datname LIKE 'nvpgi%')",
    )?;
    ensure!(
        footprint == "0 0",
        "roles and databases on the target: {footprint}"
    );
    Ok(())
}

/// The loader is dropped however a copy ends: one left by an earlier
/// attempt (as a crash would leave it) is dropped before the copy, as is
/// an expired one of another database, and a
/// copy that fails mid-data (here a source that describes a column the
/// table does not have) leaves none behind; the same copy from an honest
/// source then succeeds, and leaves none either.
#[test]
fn no_loader_outlives_its_copy() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_tenant_loader")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let account = "nvpgl_lena";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: account.to_owned(),
            password: "lena pw".to_owned(),
            pg_databases: vec![account.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let stale = navette_agent::transfer::postgres::loader::loader_name("main", account);
    // This database's, and an expired one of another database.
    pg18.psql(
        "postgres",
        &format!(
            "CREATE ROLE {stale} LOGIN PASSWORD 'left over'; \
             CREATE ROLE navette_load_0123456789abcdef LOGIN VALID UNTIL '2000-01-01'"
        ),
    )?;
    let loaders = || {
        pg18.psql(
            "postgres",
            "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'navette\\_load\\_%'",
        )
    };
    ensure!(loaders()? == "2", "the stale loaders are there");
    let pki = Pki::new()?;
    let transfer_id = "t-pg-tenant-4";
    let service = || -> anyhow::Result<PostgresSourceService> {
        Ok(PostgresSourceService::new(
            grants(
                &rig.dir().join("src-agent-state"),
                transfer_id,
                "dst",
                &[account],
            )?,
            vec![server_config(&pg15)],
        ))
    };
    let copy = |source: &SourceAgent| -> anyhow::Result<_> {
        let (result, _) = pull_in(PullSpec {
            target: &target_host,
            identity: pki.agent("dst")?,
            pki: &pki,
            source,
            transfer_id,
            copies: vec![same_name(account)],
            target_servers: vec![server_config(&pg18)],
            options: PullOptions {
                work_dir: rig.dir().to_owned(),
                ..PullOptions::default()
            },
        })?;
        Ok(result)
    };
    {
        let tamper: fn(&mut PostgresDatabaseDescription) = |description| {
            for table in &mut description.tables {
                table.columns.push("no_such_column".to_owned());
            }
        };
        let source = SourceAgent::start(
            &source_host,
            SOURCE,
            AlteredSource {
                tamper,
                ..AlteredSource::new(service()?)
            },
            &pki,
        )?;
        let failed = match copy(&source)? {
            Ok(report) => bail!("the copy succeeded: {report:?}"),
            Err(error) => navette_agent::error_chain(&error),
        };
        eprintln!("the copy failed: {failed}");
        ensure!(
            failed.contains("table public.items") && failed.contains("no_such_column"),
            "{failed}"
        );
        ensure!(loaders()? == "0", "a loader is left after a failed copy");
    }
    let source = SourceAgent::start(&source_host, SOURCE, service()?, &pki)?;
    copy(&source)?.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    ensure!(loaders()? == "0", "a loader is left after the copy");
    ensure!(
        pg18.psql(account, "SELECT count(*) FROM items")? == "3",
        "the copy's items"
    );
    Ok(())
}
