//! PostgreSQL 15 to 18, for real: an account's two databases on a
//! PostgreSQL 15 host (a rich schema, a few hundred thousand rows, large
//! objects, roles with passwords) are copied by the real
//! `PostgresSourceService`, served over mutual TLS behind the role gate in
//! the source host's namespace, and `pull` running in the target host's
//! namespace, while a customer keeps inserting into the source.
//!
//! Checked independently of the code under test: row counts and contents
//! of every table (a sorted dump of each, on both servers), the schema
//! (PostgreSQL 18's pg_dump of both servers, normalised), sequences, large
//! objects, the roles logging in to the copy over TCP with their original
//! passwords, and the writer's errors (none). Then a second copy replaces
//! the first, and grants are shown to be enforced.

mod postgres_support;

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_agent::transfer::postgres::session::SESSION_SETTINGS;
use navette_agent::transfer::postgres::wire::BulkSession;
use navette_agent::transfer::postgres::{
    DataCheck, PostgresCopyError, PostgresSourceService, PullOptions,
};
use navette_tests::{AccountSpec, Netns, PgVersion, Postgres, Rig};
use postgres_support::{Pki, PullSpec, SourceAgent, grants, pull_in, same_name, server_config};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TARGET: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ACCOUNT: &str = "nvpgc_alice";
const SHOP: &str = "nvpgc_alice_shop";
const READER: &str = "nvpgc_alice_ro";
const READER_PASSWORD: &str = "reader's pw";
/// Rows of the biggest table.
const ORDERS: u32 = 300_000;

/// The account's shop: every kind of object the copy must carry.
fn shop_schema() -> String {
    format!(
        r#"
CREATE EXTENSION citext;
CREATE EXTENSION hstore;
CREATE EXTENSION btree_gist;
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{READER}') THEN
    CREATE ROLE {READER} LOGIN;
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'nvpgc_alice_app') THEN
    CREATE ROLE nvpgc_alice_app NOLOGIN;
  END IF;
END $$;
ALTER ROLE {READER} PASSWORD '{reader_password}' CONNECTION LIMIT 7;
GRANT nvpgc_alice_app TO {READER};
COMMENT ON ROLE {READER} IS 'read-only user of the shop';
ALTER ROLE {ACCOUNT} SET search_path = shop, public, "$user";
ALTER ROLE {READER} IN DATABASE {SHOP} SET statement_timeout = '5min';
ALTER DATABASE {SHOP} SET work_mem = '8MB';
COMMENT ON DATABASE {SHOP} IS 'the shop';
REVOKE CONNECT, TEMPORARY ON DATABASE {SHOP} FROM PUBLIC;
GRANT CONNECT ON DATABASE {SHOP} TO {READER};

SET ROLE {ACCOUNT};
CREATE SCHEMA shop;
CREATE SCHEMA audit;
COMMENT ON SCHEMA shop IS 'the shop''s tables';
CREATE TYPE shop.status AS ENUM ('new', 'paid', 'shipped');
CREATE DOMAIN shop.price AS numeric(12,2) CHECK (VALUE >= 0);
CREATE TABLE shop.customers (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  email citext UNIQUE NOT NULL,
  name text,
  tags text[],
  prefs hstore,
  created timestamptz DEFAULT now());
CREATE TABLE shop.orders (
  id bigserial PRIMARY KEY,
  customer_id bigint NOT NULL REFERENCES shop.customers (id),
  status shop.status NOT NULL DEFAULT 'new',
  total shop.price,
  items jsonb,
  placed timestamptz CHECK (placed > '2000-01-01'),
  token uuid,
  history shop.status[],
  note bytea,
  amount_small smallint,
  ratio double precision,
  total_cents bigint GENERATED ALWAYS AS ((total * 100)::bigint) STORED);
ALTER TABLE shop.orders DROP COLUMN amount_small;
CREATE TABLE shop.events (id bigserial PRIMARY KEY, at timestamptz DEFAULT now(), what text);
CREATE TABLE shop.log_without_key (at timestamp, line text, amount real, d date, i interval,
  flag boolean, n numeric, c char(3), vc varchar(10), ip inet, money_spent money, bits bit(4));
CREATE TABLE shop.measures (id int, at date, value numeric) PARTITION BY RANGE (at);
CREATE TABLE shop.measures_2023 PARTITION OF shop.measures
  FOR VALUES FROM ('2023-01-01') TO ('2024-01-01');
CREATE TABLE shop.measures_2024 PARTITION OF shop.measures
  FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE INDEX measures_at ON shop.measures (at);
CREATE TABLE shop.bookings (room int, during tstzrange,
  EXCLUDE USING gist (room WITH =, during WITH &&));
CREATE TABLE audit.changes (id bigserial PRIMARY KEY, tab regclass, at timestamptz DEFAULT now(),
  old jsonb);
CREATE UNLOGGED TABLE shop.cache (k text PRIMARY KEY, v text);
ALTER TABLE shop.cache ENABLE ROW LEVEL SECURITY;
CREATE POLICY only_x ON shop.cache FOR SELECT TO {READER} USING (k LIKE 'x%');
CREATE SEQUENCE shop.invoice_no START 1000;
SELECT setval('shop.invoice_no', 4242);
CREATE SEQUENCE shop.never_used;
CREATE INDEX orders_items ON shop.orders USING gin (items);
CREATE INDEX orders_open ON shop.orders (placed) WHERE status <> 'shipped';
CREATE INDEX customers_lower_name ON shop.customers (lower(name));
CREATE FUNCTION shop.order_total(bigint) RETURNS numeric LANGUAGE sql STABLE
  AS $f$ SELECT total FROM shop.orders WHERE id = $1 $f$;
COMMENT ON FUNCTION shop.order_total(bigint) IS 'total of one order';
CREATE FUNCTION audit.log_change() RETURNS trigger LANGUAGE plpgsql AS $f$
BEGIN
  INSERT INTO audit.changes (tab, old) VALUES (TG_RELID::regclass, to_jsonb(OLD));
  RETURN NEW;
END $f$;
CREATE TRIGGER orders_audit AFTER UPDATE ON shop.orders
  FOR EACH ROW EXECUTE FUNCTION audit.log_change();
CREATE PROCEDURE shop.touch(p_id bigint) LANGUAGE sql
  BEGIN ATOMIC UPDATE shop.orders SET placed = now() WHERE id = p_id; END;
CREATE VIEW shop.open_orders AS
  SELECT o.id, c.email, o.total FROM shop.orders o JOIN shop.customers c ON c.id = o.customer_id
  WHERE o.status <> 'shipped';
CREATE MATERIALIZED VIEW shop.sales_by_status AS
  SELECT status, count(*) AS n, sum(total) AS amount FROM shop.orders GROUP BY status;
CREATE UNIQUE INDEX sales_by_status_status ON shop.sales_by_status (status);
COMMENT ON TABLE shop.orders IS 'orders, one per basket';
COMMENT ON COLUMN shop.orders.total IS 'in euros';
GRANT USAGE ON SCHEMA shop TO {READER};
GRANT SELECT ON shop.orders, shop.customers, shop.cache TO {READER};
GRANT SELECT (id, email) ON shop.customers TO nvpgc_alice_app;
REVOKE EXECUTE ON FUNCTION shop.order_total(bigint) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION shop.order_total(bigint) TO {READER};
ALTER DEFAULT PRIVILEGES IN SCHEMA shop GRANT SELECT ON TABLES TO {READER};

INSERT INTO shop.customers (email, name, tags, prefs)
  SELECT 'C' || g || '@Example.org', 'Customer ' || g || E' \u00e9\u00e8 \t tab', ARRAY['t' || g % 5, NULL],
         hstore('lang', CASE WHEN g % 2 = 0 THEN 'fr' ELSE 'en' END)
  FROM generate_series(1, 2000) g;
INSERT INTO shop.orders (customer_id, status, total, items, placed, token, history, note, ratio)
  SELECT 1 + g % 2000, (ARRAY['new', 'paid', 'shipped']::shop.status[])[1 + g % 3],
         (g % 1000) + 0.25, jsonb_build_object('sku', g, 'qty', g % 7, 'tags', jsonb_build_array('a', g)),
         '2024-01-01'::timestamptz + g * interval '1 minute', md5(g::text)::uuid,
         ARRAY['new', 'paid']::shop.status[], decode(md5(g::text), 'hex'),
         CASE WHEN g % 1000 = 0 THEN 'NaN'::float8 WHEN g % 1001 = 0 THEN 'Infinity' ELSE g / 7.0 END
  FROM generate_series(1, {ORDERS}) g;
INSERT INTO shop.log_without_key
  SELECT '2024-02-29 12:00'::timestamp + g * interval '1 second', E'line\\with\\backslash\nand newline ' || g,
         g / 3.0, 'infinity'::date, g * interval '1 day 1 second', g % 2 = 0, 'NaN', 'ab', 'x', '192.0.2.1',
         g, B'1010'
  FROM generate_series(1, 1000) g;
INSERT INTO shop.log_without_key SELECT * FROM shop.log_without_key WHERE amount < 4;
INSERT INTO shop.log_without_key (line) VALUES (NULL), (NULL);
INSERT INTO shop.measures SELECT g, '2023-06-01'::date + (g % 400), g * 1.5 FROM generate_series(1, 5000) g;
INSERT INTO shop.bookings VALUES (1, tstzrange('2024-01-01', '2024-01-02')),
  (1, tstzrange('2024-01-02', '2024-01-03')), (2, 'empty');
UPDATE shop.orders SET status = 'paid' WHERE id <= 3;
INSERT INTO shop.cache VALUES ('x1', 'a'), ('y1', 'b');
REFRESH MATERIALIZED VIEW shop.sales_by_status;
SELECT lo_from_bytea(0, convert_to(repeat('large object ', 200000), 'UTF8'));
SELECT lo_from_bytea(31337, decode(repeat(md5('x'), 1000), 'hex'));
SELECT lo_from_bytea(31338, '');
GRANT SELECT ON LARGE OBJECT 31337 TO {READER};
COMMENT ON LARGE OBJECT 31337 IS 'a picture';
RESET ROLE;
ANALYZE;
"#,
        reader_password = READER_PASSWORD.replace('\'', "''")
    )
}

/// A customer inserting into the source, one row per transaction, over
/// TCP with the account's password, until told to stop.
struct Writer {
    stop: Arc<AtomicBool>,
    inserted: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<anyhow::Result<Vec<String>>>,
}

impl Writer {
    fn start(client: &Netns, connection: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let inserted = Arc::new(AtomicU64::new(0));
        let (netns, flag, count) = (client.clone(), stop.clone(), inserted.clone());
        let thread = std::thread::spawn(move || {
            netns.run_in(|| async move {
                let (client, connection) =
                    tokio_postgres::connect(&connection, tokio_postgres::NoTls).await?;
                tokio::spawn(connection);
                let mut errors = Vec::new();
                while !flag.load(Ordering::Relaxed) {
                    match client
                        .execute(
                            "INSERT INTO shop.events (what) VALUES ('written during the copy')",
                            &[],
                        )
                        .await
                    {
                        Ok(_) => {
                            count.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(error) => errors.push(navette_agent::error_chain(&error)),
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
                Ok(errors)
            })
        });
        Writer {
            stop,
            inserted,
            thread,
        }
    }

    fn inserted(&self) -> u64 {
        self.inserted.load(Ordering::Relaxed)
    }

    /// Stops it; the errors it saw.
    fn stop(self) -> anyhow::Result<Vec<String>> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.join() {
            Ok(result) => result,
            Err(_) => bail!("the writer panicked"),
        }
    }
}

/// The tables of a database, schema-qualified.
fn tables(server: &Postgres, database: &str) -> anyhow::Result<Vec<String>> {
    Ok(server
        .psql(
            database,
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
             ORDER BY 1",
        )?
        .lines()
        .map(str::to_owned)
        .collect())
}

/// Row count and a digest of the sorted rows' text, as the test computes
/// it (not as the code under test does).
fn table_contents(server: &Postgres, database: &str, table: &str) -> anyhow::Result<String> {
    server.psql(
        database,
        &format!(
            "SET TimeZone = 'UTC'; SET DateStyle = 'ISO'; SET extra_float_digits = 1; \
             SET lc_monetary = 'C'; SET search_path = pg_catalog; \
             SELECT count(*) || ' ' || coalesce(md5(string_agg(r, E'\\n' ORDER BY r)), '-') \
             FROM (SELECT t::text AS r FROM ONLY {table} t) s"
        ),
    )
}

/// Removes `name.` qualifiers: PostgreSQL 16 stopped qualifying columns
/// in views over one table (`SELECT orders.status` became `SELECT
/// status`), and pg_dump prints what the server renders.
fn unqualified(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut word = String::new();
    for c in line.chars() {
        if c.is_ascii_lowercase() || c == '_' || (!word.is_empty() && c.is_ascii_digit()) {
            word.push(c);
            continue;
        }
        if c == '.' && !word.is_empty() {
            word.clear();
            continue;
        }
        out.push_str(&word);
        word.clear();
        out.push(c);
    }
    out.push_str(&word);
    out
}

/// The schema as PostgreSQL 18's pg_dump prints it, without comments,
/// blank lines and the per-run \restrict key; in the bodies of views
/// (indented lines), without qualifiers.
fn schema_dump(server: &Postgres, database: &str) -> anyhow::Result<Vec<String>> {
    let output = PgVersion::V18
        .command("pg_dump")
        .arg("--schema-only")
        .arg("-h")
        .arg(server.socket_dir())
        .args([
            "-p",
            &server.port().to_string(),
            "-U",
            "postgres",
            "-d",
            database,
        ])
        .output()
        .context("running pg_dump 18")?;
    ensure!(
        output.status.success(),
        "pg_dump of {database}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| {
            !line.is_empty()
                && !line.starts_with("--")
                && !line.starts_with("\\restrict")
                && !line.starts_with("\\unrestrict")
        })
        .map(|line| {
            if line.starts_with(' ') {
                unqualified(line)
            } else {
                line.to_owned()
            }
        })
        .collect())
}

fn large_objects(server: &Postgres, database: &str) -> anyhow::Result<String> {
    server.psql(
        database,
        "SELECT string_agg(oid || ':' || pg_get_userbyid(lomowner) || ':' || md5(lo_get(oid)) \
                || ':' || coalesce(lomacl::text, '-'), ',' ORDER BY oid) \
         FROM pg_largeobject_metadata",
    )
}

#[test]
fn an_account_is_copied_from_15_to_18_faithfully_while_it_is_written() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_copy")?;
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
            password: "alice's secret".to_owned(),
            pg_databases: vec![ACCOUNT.to_owned(), SHOP.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let started = Instant::now();
    pg15.psql(SHOP, &shop_schema())?;
    eprintln!("source filled in {:.1?}", started.elapsed());

    let pki = Pki::new()?;
    let transfer_id = "t-pg-1";
    let state = rig.dir().join("src-agent-state");
    let service = PostgresSourceService::new(
        grants(&state, transfer_id, "dst", &[ACCOUNT, SHOP])?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;

    let writer = Writer::start(
        rig.client(),
        pg15.tcp_config(ACCOUNT, &account.password, SHOP),
    );
    rig.wait_until("the writer writes", Duration::from_secs(10), || {
        Ok(writer.inserted() > 10)
    })?;
    let before = writer.inserted();
    let options = PullOptions {
        // Small enough that the orders table goes as several block ranges.
        split_bytes: 8 << 20,
        work_dir: rig.dir().to_owned(),
        ..PullOptions::default()
    };
    let spec = || -> anyhow::Result<PullSpec<'_>> {
        Ok(PullSpec {
            target: &target_host,
            identity: pki.agent("dst")?,
            pki: &pki,
            source: &source,
            transfer_id,
            copies: vec![same_name(ACCOUNT), same_name(SHOP)],
            target_servers: vec![server_config(&pg18)],
            options: options.clone(),
        })
    };
    let started = Instant::now();
    let (result, progress) = pull_in(spec()?)?;
    let copy_time = started.elapsed();
    let during = writer.inserted() - before;
    let errors = writer.stop()?;
    let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    eprintln!("copied in {copy_time:.1?}: {report:#?}");

    // The customer kept writing, and never saw an error.
    ensure!(errors.is_empty(), "the writer saw errors: {errors:?}");
    ensure!(during > 0, "the writer wrote nothing during the copy");

    // What pull reports.
    let shop = report
        .databases
        .iter()
        .find(|d| d.target_database == SHOP)
        .context("the shop is in the report")?;
    ensure!(
        shop.tables_verified == shop.tables,
        "every table checked: {shop:?}"
    );
    ensure!(shop.rows > u64::from(ORDERS), "rows copied: {}", shop.rows);
    // Indexes and the keys they back are built as each table is loaded
    // (the schema comparison below and the copy's own check find them
    // identical to the source's).
    ensure!(
        shop.indexes_built_early >= 3,
        "indexes built early: {}",
        shop.indexes_built_early
    );
    ensure!(
        shop.large_objects == 3,
        "large objects: {}",
        shop.large_objects
    );
    // regclass travels as an OID in binary; an array of a user enum
    // carries the enum's OID, which differs on the target.
    let mut text_tables = shop.text_tables.clone();
    text_tables.sort();
    ensure!(
        text_tables == ["audit.changes", "shop.orders"],
        "tables that go as text: {text_tables:?}"
    );
    ensure!(
        shop.roles.created.contains(&READER.to_owned())
            && shop.roles.created.contains(&"nvpgc_alice_app".to_owned()),
        "roles created: {:?}",
        shop.roles
    );
    ensure!(
        progress.tables_done == progress.tables_total && progress.tables_total > 10,
        "tables {}/{}",
        progress.tables_done,
        progress.tables_total
    );
    ensure!(
        progress.bytes_done == progress.bytes_total && progress.bytes_sent > 0,
        "bytes {}/{} (sent {})",
        progress.bytes_done,
        progress.bytes_total,
        progress.bytes_sent
    );

    // Every table's rows, as the test reads them; the writer's table on
    // the target is what the source had when the snapshot was taken.
    for database in [ACCOUNT, SHOP] {
        let names = tables(&pg15, database)?;
        ensure!(names == tables(&pg18, database)?, "{database}: same tables");
        for table in names.iter().filter(|t| *t != "shop.events") {
            let (on_source, on_target) = (
                table_contents(&pg15, database, table)?,
                table_contents(&pg18, database, table)?,
            );
            ensure!(
                on_source == on_target,
                "{database}.{table}: source {on_source}, target {on_target}"
            );
        }
    }
    let events = |server: &Postgres| -> anyhow::Result<u64> {
        Ok(server
            .psql(SHOP, "SELECT count(*) FROM shop.events")?
            .parse()?)
    };
    let (source_events, target_events) = (events(&pg15)?, events(&pg18)?);
    ensure!(
        target_events > 0 && target_events < source_events,
        "events: {target_events} copied, {source_events} on the source now"
    );
    let missing = pg18.psql(
        SHOP,
        &format!(
            "SELECT count(*) FROM shop.events WHERE id > {}",
            pg15.psql(SHOP, "SELECT max(id) FROM shop.events")?
        ),
    )?;
    ensure!(missing == "0", "the copy has events the source never had");

    // The schema, object for object, as PostgreSQL 18's pg_dump sees both.
    for database in [ACCOUNT, SHOP] {
        let (on_source, on_target) = (schema_dump(&pg15, database)?, schema_dump(&pg18, database)?);
        let only_source: Vec<_> = on_source
            .iter()
            .filter(|l| !on_target.contains(l))
            .collect();
        let only_target: Vec<_> = on_target
            .iter()
            .filter(|l| !on_source.contains(l))
            .collect();
        ensure!(
            only_source.is_empty() && only_target.is_empty(),
            "{database}: schemas differ:\nonly on the source: {only_source:#?}\nonly on the target: {only_target:#?}"
        );
    }

    // Sequences, large objects, materialized views, database properties.
    let sequences = "SELECT string_agg(format('%s=%s/%s', s, last_value, is_called), ',' ORDER BY s) \
         FROM (SELECT 'invoice_no' s, last_value, is_called FROM shop.invoice_no \
               UNION ALL SELECT 'never_used', last_value, is_called FROM shop.never_used \
               UNION ALL SELECT 'orders', last_value, is_called FROM shop.orders_id_seq \
               UNION ALL SELECT 'customers', last_value, is_called FROM shop.customers_id_seq) q";
    let on_target = pg18.psql(SHOP, sequences)?;
    ensure!(
        on_target == pg15.psql(SHOP, sequences)?,
        "sequences: {on_target}"
    );
    ensure!(on_target.contains("invoice_no=4242/t") && on_target.contains("never_used=1/f"));
    ensure!(
        large_objects(&pg15, SHOP)? == large_objects(&pg18, SHOP)?,
        "large objects"
    );
    let sales =
        "SELECT string_agg(status || '=' || n, ',' ORDER BY status) FROM shop.sales_by_status";
    ensure!(
        pg15.psql(SHOP, sales)? == pg18.psql(SHOP, sales)?,
        "materialized view"
    );
    let properties = format!(
        "SELECT pg_get_userbyid(datdba), pg_encoding_to_char(encoding), datcollate, datacl::text, \
                shobj_description(oid, 'pg_database'), \
                (SELECT setconfig::text FROM pg_db_role_setting WHERE setdatabase = d.oid AND setrole = 0) \
         FROM pg_database d WHERE datname = '{SHOP}'"
    );
    ensure!(
        pg15.psql("postgres", &properties)? == pg18.psql("postgres", &properties)?,
        "database properties: {}",
        pg18.psql("postgres", &properties)?
    );
    let role = format!(
        "SELECT rolname, rolcanlogin, rolconnlimit, rolpassword, \
                (SELECT string_agg(setconfig::text, ' ') FROM pg_db_role_setting WHERE setrole = a.oid) \
         FROM pg_authid a WHERE rolname IN ('{ACCOUNT}', '{READER}', 'nvpgc_alice_app') ORDER BY 1"
    );
    ensure!(
        pg15.psql("postgres", &role)? == pg18.psql("postgres", &role)?,
        "roles: {}",
        pg18.psql("postgres", &role)?
    );

    // The customer's own users log in to the copy with their passwords.
    let logins = [
        (
            ACCOUNT,
            account.password.as_str(),
            SHOP,
            "SELECT count(*) FROM shop.orders",
        ),
        (
            ACCOUNT,
            account.password.as_str(),
            ACCOUNT,
            "SELECT string_agg(label, ',' ORDER BY id) FROM items",
        ),
        (
            READER,
            READER_PASSWORD,
            SHOP,
            "SELECT count(*) FROM shop.cache",
        ),
    ];
    let answers = rig.run_in(rig.client(), || async {
        let mut answers = Vec::new();
        for (user, password, database, query) in logins {
            let (client, connection) = tokio_postgres::connect(
                &pg18.tcp_config(user, password, database),
                tokio_postgres::NoTls,
            )
            .await
            .with_context(|| format!("{user} logs in to {database} on the copy"))?;
            tokio::spawn(connection);
            let row = client.query_one(query, &[]).await?;
            answers.push(match row.try_get::<_, i64>(0) {
                Ok(n) => n.to_string(),
                Err(_) => row.try_get::<_, String>(0)?,
            });
        }
        Ok(answers)
    })?;
    ensure!(
        answers
            == [
                ORDERS.to_string(),
                "apple,banana,cherry".to_owned(),
                "1".to_owned()
            ],
        "what the users read: {answers:?}"
    );

    // A second copy (a refresh) replaces the first and matches again, this
    // time checked by SQL checksums on both sides.
    let mut second = spec()?;
    second.options.check = DataCheck::Sql;
    let (again, _) = pull_in(second)?;
    let again = again.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    ensure!(
        again
            .databases
            .iter()
            .all(|d| d.roles.created.is_empty() && d.tables_verified == d.tables),
        "second copy: {again:#?}"
    );
    // A third copy, as for a test: rows checked as they arrive, against
    // the source's digests and row counts, instead of read back; every
    // table read through a bulk session on the source.
    let mut third = spec()?;
    third.options.check = DataCheck::Stream;
    third.options.bulk_bytes = 0;
    let (streamed, _) = pull_in(third)?;
    let streamed = streamed.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    ensure!(
        streamed
            .databases
            .iter()
            .all(|d| d.tables_verified == d.tables && d.tables > 0),
        "third copy: {streamed:#?}"
    );
    for database in [ACCOUNT, SHOP] {
        for table in tables(&pg15, database)?
            .iter()
            .filter(|t| *t != "shop.events")
        {
            ensure!(
                table_contents(&pg15, database, table)? == table_contents(&pg18, database, table)?,
                "third copy, {database}.{table} differs"
            );
        }
    }
    // The source was not written by the copy: it still has its data.
    ensure!(
        pg15.psql(SHOP, "SELECT count(*) FROM shop.orders")? == ORDERS.to_string(),
        "source orders"
    );
    Ok(())
}

/// Grants are enforced: a database the grant does not name, and a host the
/// grant does not name, are refused, before anything is written.
#[test]
fn a_copy_reads_only_what_was_granted_to_whom() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_copy_grants")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    rig.add_account(
        &source_host,
        AccountSpec {
            name: "nvpgg_bob".to_owned(),
            password: "bob pw".to_owned(),
            pg_databases: vec!["nvpgg_bob".to_owned(), "nvpgg_bob_secret".to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-2";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &["nvpgg_bob"],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;
    let options = PullOptions {
        work_dir: rig.dir().to_owned(),
        ..PullOptions::default()
    };
    let attempt = |host: &str, database: &str| -> anyhow::Result<String> {
        let (result, _) = pull_in(PullSpec {
            target: &target_host,
            identity: pki.agent(host)?,
            pki: &pki,
            source: &source,
            transfer_id,
            copies: vec![same_name(database)],
            target_servers: vec![server_config(&pg18)],
            options: options.clone(),
        })?;
        match result {
            Ok(report) => bail!("the copy of {database} by {host} was allowed: {report:?}"),
            Err(error @ PostgresCopyError::Source { .. }) => Ok(navette_agent::error_chain(&error)),
            Err(other) => bail!("unexpected error: {}", navette_agent::error_chain(&other)),
        }
    };
    let other_database = attempt("dst", "nvpgg_bob_secret")?;
    ensure!(
        other_database.contains("PermissionDenied")
            && other_database.contains("does not grant database \"nvpgg_bob_secret\""),
        "{other_database}"
    );
    let other_host = attempt("stranger", "nvpgg_bob")?;
    ensure!(
        other_host.contains("PermissionDenied")
            && other_host.contains("granted to host dst; the caller is agent of host stranger"),
        "{other_host}"
    );
    let listed = pg18.psql(
        "postgres",
        "SELECT count(*) FROM pg_database WHERE datname LIKE 'nvpgg%'",
    )?;
    ensure!(listed == "0", "nothing was created on the target");
    Ok(())
}

/// The source loses the snapshot mid-copy (its session is terminated, as
/// in a source server restart): the tables still to copy cannot be read in
/// it, so the target copies the database again with a new snapshot, and
/// the copy is complete and checked.
#[test]
fn a_lost_snapshot_means_the_database_is_copied_again() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_copy_again")?;
    let source_host = rig.add_namespace("src", SOURCE)?;
    let target_host = rig.add_namespace("dst", TARGET)?;
    let pg15 = source_host.start_postgres(&rig, PgVersion::V15, 5432)?;
    let pg18 = target_host.start_postgres(&rig, PgVersion::V18, 5432)?;
    let database = "nvpga_carol";
    rig.add_account(
        &source_host,
        AccountSpec {
            name: database.to_owned(),
            password: "carol pw".to_owned(),
            pg_databases: vec![database.to_owned()],
            ..AccountSpec::default()
        },
    )?;
    let mut fill = format!("SET ROLE {database};\n");
    for n in 1..=4 {
        fill.push_str(&format!(
            "CREATE TABLE part{n} AS SELECT g AS id, md5(g::text) AS label \
             FROM generate_series(1, 200000) g;\n"
        ));
    }
    pg15.psql(database, &fill)?;
    let pki = Pki::new()?;
    let transfer_id = "t-pg-3";
    let service = PostgresSourceService::new(
        grants(
            &rig.dir().join("src-agent-state"),
            transfer_id,
            "dst",
            &[database],
        )?,
        vec![server_config(&pg15)],
    );
    let source = SourceAgent::start(&source_host, SOURCE, service, &pki)?;

    // As soon as the first table streams, end the session that holds the
    // snapshot (the one that locked the tables).
    let killed = std::thread::scope(|scope| -> anyhow::Result<_> {
        let killer = scope.spawn(|| -> anyhow::Result<String> {
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(60) {
                let copying = pg15.psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE application_name = 'navette-agent copy' \
                       AND state = 'active' AND query LIKE 'COPY%'",
                )?;
                if copying != "0" {
                    return pg15.psql(
                        "postgres",
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
                         WHERE application_name = 'navette-agent copy' \
                           AND query LIKE '%LOCK TABLE%'",
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            bail!("the copy never started")
        });
        let (result, progress) = pull_in(PullSpec {
            target: &target_host,
            identity: pki.agent("dst")?,
            pki: &pki,
            source: &source,
            transfer_id,
            copies: vec![same_name(database)],
            target_servers: vec![server_config(&pg18)],
            options: PullOptions {
                workers: 1,
                work_dir: rig.dir().to_owned(),
                // Every table through a bulk session on the source.
                bulk_bytes: 0,
                ..PullOptions::default()
            },
        })?;
        let killed = match killer.join() {
            Ok(killed) => killed?,
            Err(_) => bail!("the killer panicked"),
        };
        Ok((killed, result, progress))
    })?;
    let (killed, result, progress) = killed;
    ensure!(killed == "1", "terminated {killed} snapshot sessions");
    let report = result.map_err(|e| anyhow::anyhow!(navette_agent::error_chain(&e)))?;
    let copied = &report.databases[0];
    ensure!(copied.attempts == 2, "attempts: {}", copied.attempts);
    ensure!(
        copied.tables_verified == copied.tables && copied.tables == 5,
        "{copied:?}"
    );
    ensure!(
        progress.tables_done == progress.tables_total
            && progress.bytes_done == progress.bytes_total,
        "progress after a second attempt: {progress:?}"
    );
    for n in 1..=4 {
        let query = format!("SELECT count(*) FROM part{n}");
        ensure!(
            pg18.psql(database, &query)? == "200000",
            "part{n} on the target"
        );
    }
    Ok(())
}

/// The bulk sessions big tables are read through speak the protocol
/// themselves: over TCP with SCRAM-SHA-256, they read exactly what COPY
/// outputs, and a refusal is the server's own message with its SQLSTATE.
#[test]
fn bulk_sessions_authenticate_read_copy_and_report_refusals() -> anyhow::Result<()> {
    let rig = Rig::new("postgres_copy_bulk")?;
    let host = rig.add_namespace("src", SOURCE)?;
    let pg15 = host.start_postgres(&rig, PgVersion::V15, 5432)?;
    pg15.psql(
        "postgres",
        "CREATE ROLE nvpgw_bulk LOGIN PASSWORD 'bulk pw'; \
         CREATE TABLE words AS SELECT g AS n, repeat('x', g % 7) || 'é' AS word \
         FROM generate_series(1, 50000) g; \
         GRANT SELECT ON words TO nvpgw_bulk",
    )?;
    let expected = pg15.psql(
        "postgres",
        "SELECT string_agg(n || E'\\t' || word, E'\\n' ORDER BY n) FROM words",
    )?;
    let mut server = server_config(&pg15);
    server.host = SOURCE.to_string();
    server.user = "nvpgw_bulk".to_owned();
    server.password = Some("bulk pw".to_owned());
    let (copied, refused, after, wrong_password) =
        postgres_support::run_multi_threaded(&host, || async {
            let mut session = BulkSession::connect(&server, "postgres", SESSION_SETTINGS).await?;
            session
                .copy_out("COPY (SELECT * FROM public.words ORDER BY n) TO STDOUT")
                .await?;
            let mut copied = Vec::new();
            // Small pieces: rows are appended whole, across many reads.
            while session.read_rows(&mut copied, 4096).await? {}
            let refused = session
                .copy_out("COPY no_such_table TO STDOUT")
                .await
                .err()
                .map(|e| (e.code().map(str::to_owned), e.to_string()));
            // The session is still usable after a refusal.
            let after = session.execute("SELECT 1").await.is_ok();
            let mut wrong = server.clone();
            wrong.password = Some("not it".to_owned());
            let wrong_password = BulkSession::connect(&wrong, "postgres", SESSION_SETTINGS)
                .await
                .err()
                .and_then(|e| e.code().map(str::to_owned));
            Ok((copied, refused, after, wrong_password))
        })?;
    ensure!(
        String::from_utf8(copied)? == format!("{expected}\n"),
        "the bulk session read what COPY outputs"
    );
    let (code, message) = refused.context("COPY of a missing table was refused")?;
    ensure!(
        code.as_deref() == Some("42P01") && message.contains("no_such_table"),
        "refusal: {code:?} {message}"
    );
    ensure!(after, "the session works after a refusal");
    ensure!(
        wrong_password.as_deref() == Some("28P01"),
        "a wrong password: {wrong_password:?}"
    );
    Ok(())
}
