//! The freeze's MariaDB verification pieces against real servers: a
//! 10.11 source with its binary log in ROW format, replicated with GTIDs
//! to an 11.8 target (two hosts of the rig).
//!
//! - the source's own binary log between two GTID positions (the second
//!   with a second replication domain) gives exactly the keys that
//!   inserts, updates (a key change: both keys), deletes and a multi-row
//!   update touched, in a table with a primary key, one with a composite
//!   key of odd names holding quotes, backslashes, a newline (both
//!   readings of the printed `\x0a`) and non-ASCII, one keyed by a unique
//!   key of NOT NULL columns, and one keyed by a column of each kind; a
//!   table without a key is reported whole; changes before the first
//!   position, after the second, and in another database are not
//!   included;
//! - the fingerprints of those keys are the same twice on the source, and
//!   the same on the 11.8 target as on the 10.11 source once replication
//!   has applied the second position (columns of most types: integers,
//!   DECIMAL, FLOAT, DOUBLE, dates and times, strings, binary strings,
//!   JSON, BIT, SET, ENUM, YEAR, POINT, UUID, INET6);
//! - from an empty position (a domain the start does not name), the log is
//!   read from its first file;
//! - rows altered behind replication's back (a changed row, a deleted row
//!   on the target, a row deleted on the source only) are each named;
//! - compared whole, the keyed table names the same rows, and a keyless
//!   table the row added on the target only;
//! - a range holding an ALTER TABLE and a TRUNCATE marks those tables
//!   whole; a stop the log never reaches, or a start whose logs were
//!   purged, is an error; a range of 10,000 inserted rows gives its 10,000
//!   keys (the timings are printed).

mod mariadb_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use mariadb_support::server_config;
use navette_agent::config::MariadbServer;
use navette_agent::verify::mariadb::{
    Catalog, KeyValue, TableName, Touched, VerifyError, compare, fingerprint, fingerprint_whole,
    read_catalog, touched_between,
};
use navette_tests::{MariaDb, MariaDbSpec, Netns, Rig};

const SOURCE_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 44);
const TARGET_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 45);
const WEIRD_DB: &str = "we`ird db";

const SCHEMA: &str = r#"
SET NAMES utf8mb4;
CREATE DATABASE shop CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
CREATE DATABASE `we``ird db` CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci;
CREATE DATABASE other;
CREATE TABLE shop.orders (
  id INT PRIMARY KEY, note TEXT, amount DECIMAL(10,2), at DATETIME, d DATE,
  raw VARBINARY(32), f DOUBLE, ts TIMESTAMP NULL DEFAULT NULL
) ENGINE=InnoDB;
CREATE TABLE `we``ird db`.`li"nes t` (
  `order` INT UNSIGNED NOT NULL, `k`` q` VARCHAR(40) NOT NULL, v BLOB,
  PRIMARY KEY (`order`, `k`` q`)
) ENGINE=InnoDB;
CREATE TABLE shop.log (at TEXT) ENGINE=InnoDB;
CREATE TABLE shop.ukey (a INT NOT NULL, b VARCHAR(10) NOT NULL, c INT, UNIQUE KEY bk (b, a)) ENGINE=InnoDB;
CREATE TABLE shop.typed (
  d DATE NOT NULL, dt DATETIME(3) NOT NULL, ts TIMESTAMP NOT NULL DEFAULT '2024-01-01 00:00:00', amount DECIMAL(6,2) NOT NULL,
  e ENUM('x','y') NOT NULL, bin BINARY(4) NOT NULL, ch CHAR(5) CHARACTER SET latin1 NOT NULL,
  big BIGINT UNSIGNED NOT NULL, n INT,
  f FLOAT, j JSON, bits BIT(5), s SET('a','b'), t TIME(2), y YEAR, g POINT, u UUID, ip INET6,
  PRIMARY KEY (d, dt, ts, amount, e, bin, ch, big)
) ENGINE=InnoDB;
CREATE TABLE other.orders (id INT PRIMARY KEY) ENGINE=InnoDB;
INSERT INTO shop.orders
  SELECT seq, CONCAT('note ', seq), seq * 1.5, '2024-01-02 03:04:05', '2024-01-02', X'00FF27', seq / 3, '2024-05-06 07:08:09'
  FROM shop.seq_1_to_20;
INSERT INTO `we``ird db`.`li"nes t` VALUES (1, 'x', X'01'), (4294967295, 'max', NULL);
INSERT INTO shop.ukey VALUES (1, 'b1', 10), (2, 'b2', 20);
INSERT INTO shop.typed VALUES
  ('2024-01-02', '2024-01-02 03:04:05.125', '2024-05-06 07:08:09', -12.50, 'y', 'ab', 'é', 18446744073709551615, 1,
   0.1, '{"a": [1, "é"]}', b'10101', 'a,b', '-01:02:03.45', 2024, POINT(1.5, -2), 'e3c9a8b2-1f4d-4c1e-9a7b-0123456789ab', '2001:db8::1'),
  ('2024-01-02', '2024-01-02 03:04:05.125', '2024-05-06 07:08:09', -12.50, 'y', 'ab', 'zz', 5, 1,
   NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL);
"#;

fn table(database: &str, name: &str) -> TableName {
    TableName {
        database: database.into(),
        name: name.into(),
    }
}

fn numbers(values: &[i64]) -> BTreeSet<Vec<KeyValue>> {
    values
        .iter()
        .map(|n| vec![KeyValue::Number(n.to_string())])
        .collect()
}

fn position(server: &MariaDb) -> anyhow::Result<String> {
    server.sql("SELECT @@GLOBAL.gtid_binlog_pos")
}

/// Waits until the target has applied `position`.
fn drained(target: &MariaDb, position: &str) -> anyhow::Result<()> {
    let answer = target.sql(&format!("SELECT MASTER_GTID_WAIT('{position}', 30)"))?;
    ensure!(
        answer == "0",
        "the target did not apply {position}: {answer}; {}",
        target.sql("SHOW SLAVE STATUS\\G")?
    );
    Ok(())
}

struct Sides<'a> {
    host: &'a Netns,
    source: MariadbServer,
    target: MariadbServer,
    databases: Vec<String>,
}

impl Sides<'_> {
    fn catalog(&self) -> anyhow::Result<Catalog> {
        self.host
            .run_in(|| async { Ok(read_catalog(&self.source, &self.databases).await?) })
    }

    fn touched(&self, catalog: &Catalog, from: &str, to: &str) -> anyhow::Result<Touched> {
        self.host.run_in(|| async {
            Ok(touched_between(&self.source, &self.databases, catalog, from, to).await?)
        })
    }

    /// The mismatches of `name` compared whole.
    fn whole(&self, catalog: &Catalog, name: &TableName) -> anyhow::Result<Vec<String>> {
        self.host.run_in(|| async {
            let shape = catalog.tables.get(name).context("not in the catalog")?;
            let source = fingerprint_whole(&self.source, name, shape).await?;
            let target = fingerprint_whole(&self.target, name, shape).await?;
            Ok(compare(name, shape, &source, &target))
        })
    }

    /// Every keyed table's mismatches, and the number of touched rows
    /// present on the source per table.
    fn mismatches(
        &self,
        catalog: &Catalog,
        touched: &Touched,
    ) -> anyhow::Result<(Vec<String>, BTreeMap<TableName, usize>)> {
        self.host.run_in(|| async {
            let mut mismatches = Vec::new();
            let mut rows = BTreeMap::new();
            for (name, keys) in &touched.keys {
                let shape = catalog
                    .tables
                    .get(name)
                    .context("a touched table not in the catalog")?;
                let source = fingerprint(&self.source, name, shape, keys).await?;
                let again = fingerprint(&self.source, name, shape, keys).await?;
                ensure!(
                    source == again,
                    "{name}: two fingerprints of the source differ"
                );
                let target = fingerprint(&self.target, name, shape, keys).await?;
                rows.insert(name.clone(), source.len());
                mismatches.extend(compare(name, shape, &source, &target));
            }
            Ok((mismatches, rows))
        })
    }
}

#[test]
fn the_binary_log_between_two_positions_gives_the_rows_to_compare() -> anyhow::Result<()> {
    let rig = Rig::new("verify_mariadb")?;
    let source_host = rig.add_namespace("mvsrc", SOURCE_ADDR)?;
    let target_host = rig.add_namespace("mvdst", TARGET_ADDR)?;
    let source = source_host.start_mariadb_with(&rig, MariaDbSpec::replication_source())?;
    let target = target_host.start_mariadb_with(&rig, MariaDbSpec::replica_11_8())?;
    // The whole binary log replicates, from its start.
    source.sql(
        "CREATE USER repl@'%' IDENTIFIED BY 'repl-pw'; GRANT REPLICATION SLAVE ON *.* TO repl@'%';",
    )?;
    target.sql(&format!(
        "SET GLOBAL gtid_slave_pos = ''; \
         CHANGE MASTER TO MASTER_HOST='{SOURCE_ADDR}', MASTER_PORT=3306, MASTER_USER='repl', \
         MASTER_PASSWORD='repl-pw', MASTER_USE_GTID=slave_pos, MASTER_SSL=0, MASTER_CONNECT_RETRY=1; \
         START SLAVE;"
    ))?;
    source.sql(SCHEMA)?;
    source.sql("UPDATE shop.orders SET note = 'before the range' WHERE id = 15")?;

    let from = position(&source)?;
    let sides = Sides {
        host: &source_host,
        source: server_config(&source),
        target: server_config(&target),
        databases: vec!["shop".to_owned(), WEIRD_DB.to_owned()],
    };
    let orders = table("shop", "orders");
    let catalog = sides.catalog()?;
    let from_start = sides.touched(&catalog, "", &from)?;
    let first_twenty: Vec<i64> = (1..=20).collect();
    ensure!(
        from_start.keys.get(&orders) == Some(&numbers(&first_twenty)),
        "shop.orders' keys from the start of the log: {:?}",
        from_start.keys.get(&orders)
    );

    source.sql(
        r#"SET NAMES utf8mb4;
        INSERT INTO shop.orders (id, note, raw) VALUES (100, 'it''s \\ a\nnew\tline', X'00FF2700');
        UPDATE shop.orders SET note = 'changed', ts = NULL WHERE id = 3;
        UPDATE shop.orders SET id = 200 WHERE id = 4;
        DELETE FROM shop.orders WHERE id = 5;
        START TRANSACTION;
        UPDATE shop.orders SET amount = amount + 1 WHERE id IN (6, 7);
        INSERT INTO `we``ird db`.`li"nes t` VALUES (7, 'a''b\\x0a\nc', X'DEADBEEF'), (7, 'é', NULL);
        COMMIT;
        UPDATE `we``ird db`.`li"nes t` SET v = X'00' WHERE `order` = 1;
        UPDATE `we``ird db`.`li"nes t` SET v = X'02' WHERE `order` = 4294967295;
        INSERT INTO shop.log VALUES ('now');
        UPDATE shop.ukey SET c = c + 1 WHERE a = 1;
        UPDATE shop.typed SET n = 2 WHERE big = 18446744073709551615;
        INSERT INTO other.orders VALUES (1);
        SET SESSION gtid_domain_id = 1;
        UPDATE shop.orders SET note = 'in another domain' WHERE id = 9;
        SET SESSION gtid_domain_id = 0;"#,
    )?;
    let to = position(&source)?;
    source.sql("UPDATE shop.orders SET note = 'after the range' WHERE id = 8")?;
    drained(&target, &position(&source)?)?;

    let started = Instant::now();
    let touched = sides.touched(&catalog, &from, &to)?;
    let read_in = started.elapsed();
    let weird = table(WEIRD_DB, "li\"nes t");
    let ukey = table("shop", "ukey");
    ensure!(
        touched.keys.get(&orders) == Some(&numbers(&[3, 4, 5, 6, 7, 9, 100, 200])),
        "shop.orders' touched keys: {:?}",
        touched.keys.get(&orders)
    );
    let weird_key =
        |n: &str, k: &[u8]| vec![KeyValue::Number(n.into()), KeyValue::Bytes(k.to_vec())];
    let expected: BTreeSet<Vec<KeyValue>> = [
        weird_key("1", b"x"),
        weird_key("4294967295", b"max"),
        // The row holds the four characters `\x0a` then a newline, both
        // printed `\x0a`: every reading of the two is a candidate.
        weird_key("7", b"a'b\\x0a\nc"),
        weird_key("7", b"a'b\n\nc"),
        weird_key("7", b"a'b\n\\x0ac"),
        weird_key("7", b"a'b\\x0a\\x0ac"),
        weird_key("7", "é".as_bytes()),
    ]
    .into();
    ensure!(
        touched.keys.get(&weird) == Some(&expected),
        "the weird table's touched keys: {:?}",
        touched.keys.get(&weird)
    );
    ensure!(
        touched.keys.get(&ukey)
            == Some(
                &[vec![
                    KeyValue::Bytes(b"b1".to_vec()),
                    KeyValue::Number("1".into())
                ]]
                .into()
            ),
        "shop.ukey's touched keys (its unique key is (b, a)): {:?}",
        touched.keys.get(&ukey)
    );
    let typed = table("shop", "typed");
    ensure!(
        touched.keys.get(&typed).map(BTreeSet::len) == Some(1),
        "shop.typed's touched keys: {:?}",
        touched.keys.get(&typed)
    );
    ensure!(
        touched.keys.len() == 4
            && touched.whole.keys().collect::<Vec<_>>() == [&table("shop", "log")]
            && touched.notes.is_empty(),
        "other tables or notes: {touched:?}"
    );

    let (mismatches, rows) = sides.mismatches(&catalog, &touched)?;
    ensure!(
        mismatches.is_empty(),
        "10.11 and 11.8 differ after replication: {mismatches:?}"
    );
    // The rows still there of the touched keys (orders 3, 6, 7, 9, 100,
    // 200), each found by the literals
    // built from the binary log (shop.typed's: one of each kind of key).
    let found: Vec<usize> = [&orders, &weird, &ukey, &typed]
        .iter()
        .map(|name| rows.get(*name).copied().unwrap_or(0))
        .collect();
    ensure!(
        found == [6, 4, 1, 1],
        "touched rows found on the source: {rows:?}"
    );

    // Behind replication's back.
    target.sql(
        "UPDATE shop.orders SET note = 'tampered' WHERE id = 3; \
         DELETE FROM `we``ird db`.`li\"nes t` WHERE `order` = 7 AND `k`` q` = 'é';",
    )?;
    source.sql("SET sql_log_bin = 0; DELETE FROM shop.orders WHERE id = 200;")?;
    let (mismatches, _) = sides.mismatches(&catalog, &touched)?;
    ensure!(
        mismatches
            == [
                "shop.orders id=200 (only on the target)",
                "shop.orders id=3 (row differs)",
                "we`ird db.li\"nes t order=7 k` q='é' (missing on the target)",
            ],
        "mismatches: {mismatches:?}"
    );

    // Compared whole, the keyed table shows the same two rows; the keyless
    // one its row added on the target only.
    let whole_orders = sides.whole(&catalog, &orders)?;
    ensure!(
        whole_orders == mismatches[..2],
        "shop.orders compared whole: {whole_orders:?}"
    );
    let log = table("shop", "log");
    ensure!(
        sides.whole(&catalog, &log)?.is_empty(),
        "shop.log differs before it is tampered with"
    );
    target.sql("INSERT INTO shop.log VALUES ('target only')")?;
    let whole_log = sides.whole(&catalog, &log)?;
    ensure!(
        whole_log.len() == 1 && whole_log[0].ends_with("(0 on the source, 1 on the target)"),
        "shop.log compared whole: {whole_log:?}"
    );

    // DDL in a range marks its tables whole.
    let ddl_from = to;
    source.sql("ALTER TABLE shop.orders ADD COLUMN extra INT; TRUNCATE shop.log;")?;
    let ddl_to = position(&source)?;
    let touched = sides.touched(&sides.catalog()?, &ddl_from, &ddl_to)?;
    ensure!(
        touched.keys.get(&orders) == Some(&numbers(&[8]))
            && touched
                .whole
                .get(&orders)
                .is_some_and(|r| r.contains("ALTER TABLE"))
            && touched
                .whole
                .get(&table("shop", "log"))
                .is_some_and(|r| r.contains("TRUNCATE")),
        "the DDL range: {touched:?}"
    );

    // A range of 10,000 rows: its keys, and the time it takes.
    let bulk_from = position(&source)?;
    source.sql(
        "INSERT INTO shop.orders (id, note) SELECT 1000 + seq, 'bulk' FROM shop.seq_1_to_10000",
    )?;
    let bulk_to = position(&source)?;
    drained(&target, &bulk_to)?;
    let catalog = sides.catalog()?;
    let started = Instant::now();
    let touched = sides.touched(&catalog, &bulk_from, &bulk_to)?;
    let bulk_read_in = started.elapsed();
    let keys = touched.keys.get(&orders).map_or(0, BTreeSet::len);
    ensure!(keys == 10_000, "{keys} keys for 10,000 inserted rows");
    let started = Instant::now();
    let (mismatches, rows) = sides.mismatches(&catalog, &touched)?;
    let fingerprinted_in = started.elapsed();
    ensure!(
        mismatches.is_empty() && rows.get(&orders) == Some(&10_000),
        "bulk: {rows:?} rows, {mismatches:?}"
    );
    // A stop position the log never reaches (the tool exits 0 there, with
    // a warning) is an error too.
    // (a domain the log never had).
    let beyond = format!("{bulk_to},5-1-1");
    let unreached = sides.host.run_in(|| async {
        Ok(touched_between(
            &sides.source,
            &sides.databases,
            &catalog,
            &bulk_from,
            &beyond,
        )
        .await)
    })?;
    ensure!(
        matches!(&unreached, Err(VerifyError::Binlog { stderr, .. }) if stderr.contains("stop position")),
        "an unreached stop gave {:?}",
        unreached.map(|touched| touched.keys.len())
    );

    // A start the server no longer has (its logs purged) is an error that
    // says so, not an empty range.
    source.sql("FLUSH BINARY LOGS")?;
    let last_log = source.sql("SHOW BINARY LOGS")?;
    let last_log = last_log
        .lines()
        .last()
        .and_then(|line| line.split('\t').next())
        .context("no binary log")?
        .to_owned();
    // A log is purged once the engines' checkpoint has passed it (within
    // a second or so here: InnoDB flushes its log once a second).
    rig.wait_until(
        "the older binary logs purged",
        Duration::from_secs(20),
        || {
            let logs = source.sql(&format!(
                "PURGE BINARY LOGS TO '{last_log}'; SHOW BINARY LOGS"
            ))?;
            Ok(logs.lines().count() == 1)
        },
    )?;
    let purged = sides.host.run_in(|| async {
        Ok(touched_between(&sides.source, &sides.databases, &catalog, &from, &bulk_to).await)
    })?;
    ensure!(
        matches!(&purged, Err(VerifyError::Binlog { stderr, .. }) if !stderr.is_empty()),
        "a purged start gave {:?}",
        purged.map(|touched| touched.keys.len())
    );

    println!(
        "verify_mariadb: small range read in {read_in:?}; 10,000-row range read in {bulk_read_in:?}, \
         fingerprinted (source twice, target once) in {fingerprinted_in:?}"
    );
    Ok(())
}
