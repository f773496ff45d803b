//! What the inventory reads for the compatibility report, from real
//! servers: on PostgreSQL 15, the roles of a database's owner whose
//! password is stored as MD5 (the owner's members too, other accounts'
//! roles not), the unlogged partitioned tables (not their partitions, not
//! unlogged plain tables), the free space of the data directory, and the
//! database marked as inspected; on MariaDB, the engines the server offers,
//! the tables not on InnoDB with their engine, and the data directory's
//! free space.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::ensure;
use navette_agent::config::{MariadbServer, PostgresqlServer};
use navette_agent::inventory::{mariadb, postgres};
use navette_tests::{PgVersion, Rig};

#[test]
fn postgres_reports_md5_roles_unlogged_partitioned_tables_and_room() -> anyhow::Result<()> {
    let rig = Rig::new("inv_findings_pg")?;
    let host = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let pg = host.start_postgres(&rig, PgVersion::V15, 5432)?;
    pg.psql(
        "postgres",
        "SET password_encryption = 'md5'; \
         CREATE ROLE nvif_alice LOGIN PASSWORD 'a'; \
         CREATE ROLE nvif_alice_old LOGIN PASSWORD 'b'; \
         CREATE ROLE nvif_bob LOGIN PASSWORD 'c'; \
         SET password_encryption = 'scram-sha-256'; \
         CREATE ROLE nvif_alice_new LOGIN PASSWORD 'd'; \
         GRANT nvif_alice TO nvif_alice_old, nvif_alice_new; \
         CREATE DATABASE nvif_alice OWNER nvif_alice; \
         CREATE DATABASE nvif_clean OWNER nvif_alice_new",
    )?;
    pg.psql(
        "nvif_alice",
        "CREATE UNLOGGED TABLE public.events (id int, at date) PARTITION BY RANGE (at); \
         CREATE UNLOGGED TABLE public.events_2026 PARTITION OF public.events \
           FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
         CREATE UNLOGGED TABLE public.scratch (id int); \
         CREATE SCHEMA logs; \
         CREATE UNLOGGED TABLE logs.hits (id int) PARTITION BY HASH (id)",
    )?;
    let server = PostgresqlServer {
        name: "main".to_owned(),
        host: pg.socket_dir().display().to_string(),
        port: pg.port(),
        user: "postgres".to_owned(),
        password: None,
        public_address: None,
        bin_dir: Some(PgVersion::V15.bin_dir()),
        library_path: PgVersion::V15.ld_library_path(),
    };
    let findings = tokio::runtime::Runtime::new()?.block_on(postgres::inspect(
        &server,
        "192.0.2.10".into(),
        &postgres::ExtensionCache::default(),
        Duration::ZERO,
    ));
    ensure!(findings.server.reachable, "{:?}", findings.server);
    let free = findings.server.data_directory_free_bytes.unwrap_or(0);
    // What df says of the data directory's filesystem, within 64 MiB
    // (other tests write to the disk meanwhile).
    let df = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(pg.data_dir())
        .output()?;
    let expected: u64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|line| line.trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("df printed {:?}", df))?;
    ensure!(
        free > 0 && free.abs_diff(expected) < 64 << 20,
        "the data directory's free bytes: {free}, df says {expected}"
    );
    let database = |name: &str| {
        findings
            .databases
            .iter()
            .find(|d| d.name == name)
            .cloned()
            .ok_or_else(|| anyhow::anyhow!("no database {name}: {:?}", findings.databases))
    };
    let alice = database("nvif_alice")?;
    ensure!(alice.inspected, "{alice:?}");
    ensure!(
        alice.md5_password_roles == ["nvif_alice", "nvif_alice_old"],
        "the owner and its MD5 member, not bob nor the SCRAM member: {:?}",
        alice.md5_password_roles
    );
    ensure!(
        alice.unlogged_partitioned_tables == ["logs.hits", "public.events"],
        "the partitioned tables only: {:?}",
        alice.unlogged_partitioned_tables
    );
    let clean = database("nvif_clean")?;
    ensure!(
        clean.inspected
            && clean.md5_password_roles.is_empty()
            && clean.unlogged_partitioned_tables.is_empty(),
        "{clean:?}"
    );
    Ok(())
}

#[test]
fn mariadb_reports_engines_tables_not_on_innodb_and_room() -> anyhow::Result<()> {
    let rig = Rig::new("inv_findings_my")?;
    let host = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let db = host.start_mariadb(&rig)?;
    db.sql(
        "CREATE DATABASE nvif_alice_blog; \
         CREATE TABLE nvif_alice_blog.posts (id int) ENGINE=InnoDB; \
         CREATE TABLE nvif_alice_blog.cache (id int) ENGINE=Aria; \
         CREATE TABLE nvif_alice_blog.hits (id int) ENGINE=MyISAM; \
         CREATE VIEW nvif_alice_blog.recent AS SELECT id FROM nvif_alice_blog.posts",
    )?;
    let server = MariadbServer {
        name: "main".to_owned(),
        socket: db.socket().to_owned(),
        user: "root".to_owned(),
        password: None,
        client: "mariadb".into(),
        public_address: None,
        port: db.port(),
    };
    let findings =
        tokio::runtime::Runtime::new()?.block_on(mariadb::inspect(&server, "192.0.2.10".into()));
    ensure!(findings.server.reachable, "{:?}", findings.server);
    let engines = &findings.server.available_engines;
    ensure!(
        ["InnoDB", "Aria", "MyISAM"]
            .iter()
            .all(|e| engines.iter().any(|o| o == e)),
        "the engines offered: {engines:?}"
    );
    ensure!(
        findings
            .server
            .data_directory_free_bytes
            .is_some_and(|free| free > 0),
        "{:?}",
        findings.server
    );
    let blog = findings
        .databases
        .iter()
        .find(|d| d.name == "nvif_alice_blog")
        .ok_or_else(|| anyhow::anyhow!("no blog database: {:?}", findings.databases))?;
    let tables: Vec<(&str, &str)> = blog
        .tables_not_innodb
        .iter()
        .map(|t| (t.table.as_str(), t.engine.as_str()))
        .collect();
    ensure!(
        blog.inspected && tables == [("cache", "Aria"), ("hits", "MyISAM")],
        "the tables not on InnoDB, views left out: {tables:?}"
    );
    Ok(())
}
