//! *Migrate* under load, the issue's must-show (R4, R5): an account with
//! files, two PostgreSQL 15 databases, one MariaDB 10.11 database and a
//! PHP site that reads and writes them, whose domains and database host
//! name the platform's DNS (Knot) serves, migrates to a PostgreSQL 18 /
//! MariaDB 11.8 shared host while
//!
//! - pgbench runs against one database through its DNS name the whole
//!   time, reconnecting on error: afterwards `pgbench_history` on the NEW
//!   host holds, per (run, client), what pgbench's log counted as
//!   committed, and the balances sum to the history's deltas;
//! - a customer's process appends numbered lines to a file in the home,
//!   as the account, in the account's control group: every acknowledged
//!   line is on the new host, in order;
//! - an HTTP client requests the site (a page that writes a row in each
//!   database) in a loop through its domain name: never an error or a
//!   refused connection; it reaches the new host after the switch; its
//!   longest wait is printed;
//! - a MariaDB client inserts numbered rows through the DNS name: every
//!   acknowledged row is on the new host.
//!
//! The recorded freeze window, printed with its parts, is under 2 s, and
//! the DNS server answers the new host's address afterwards. The source
//! servers acknowledge a commit only once it is durable
//! (`synchronous_commit = on`, `innodb_flush_log_at_trx_commit = 1`), as
//! customers' servers do.

mod support;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::load::{
    HttpLoop, LineAppender, MariadbTarget, PgbenchLoad, PgbenchTarget, RowInserter, check_lines,
    parse_history_counts, pgbench_init,
};
use navette_tests::{
    AccountSpec, AgentKind, ControllerSpec, MariaDbRelease, MariaDbSpec, PgSpec, PgVersion, Rig,
    ZoneSpec, sample_domains,
};
use serde_json::{Value, json};
use support::{list, str_of};

const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ACCOUNT: &str = "nvml_ann";
/// The site's database (the sample site reads its `items`) and pgbench's.
const SHOP: &str = "nvml_ann_shop";
const BENCH: &str = "nvml_ann_bench";
const BLOG: &str = "nvml_ann_blog";
/// The platform's zone of database host names.
const DB_ZONE: &str = "db.example";
/// The records' TTL before the migration lowers it (seconds): the freeze
/// waits this long after the lowering.
const OLD_TTL: u32 = 3;

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

/// A page that writes a row in the account's PostgreSQL and MariaDB
/// databases and reads them back: the site's writes must reach the new
/// host too.
const VISIT_PHP: &str = r#"<?php
require __DIR__ . '/../private/config.php';
header('Content-Type: text/plain');
$pg = pg_connect("dbname=$pg_database user=$db_user password=$db_password");
if ($pg === false) { http_response_code(500); exit("postgresql: cannot connect\n"); }
if (pg_query($pg, "INSERT INTO visits (at) VALUES (now())") === false) {
    http_response_code(500); exit("postgresql: " . pg_last_error($pg) . "\n");
}
$n = pg_fetch_result(pg_query($pg, 'SELECT count(*) FROM visits'), 0, 0);
$my = new mysqli(null, $db_user, $db_password, $mariadb_database);
if (!$my->query('INSERT INTO visits (at) VALUES (now())')) {
    http_response_code(500); exit("mariadb: " . $my->error . "\n");
}
echo "visits: $n\n";
"#;

/// The account's control group on `host`, as the agent names it
/// (`[sites] cgroup_mount`, `cgroup_base`, the account).
fn account_cgroup(host: &navette_tests::Netns, account: &str) -> PathBuf {
    let mount = Path::new(navette_tests::web::AGENT_CGROUP_MOUNT);
    let root = if mount.join("freezer").join("cgroup.procs").exists() {
        mount.join("freezer")
    } else {
        mount.to_path_buf()
    };
    root.join(host.cgroup_base()).join(account)
}

#[test]
fn an_account_migrates_under_load_with_a_short_freeze_and_nothing_lost() -> anyhow::Result<()> {
    let rig = Rig::new("migrate_load")?;
    let domains = sample_domains(ACCOUNT);
    let db_label = ACCOUNT.replace('_', "-");
    let site_zone = domains[0].clone();
    let dns = rig.start_dns(&[
        ZoneSpec::new(
            &site_zone,
            &[
                &format!("@ {OLD_TTL} A {OLD}"),
                &format!("www {OLD_TTL} A {OLD}"),
            ],
        ),
        ZoneSpec::new(DB_ZONE, &[&format!("{db_label} {OLD_TTL} A {OLD}")]),
    ])?;
    rig.resolve_through(rig.client(), &dns)?;
    let _controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: format!(
                "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 2\nforward_for_secs = 2\n\
                 [dns]\nserver = \"{addr}\"\ntsig_key_name = \"{key}\"\ntsig_secret_file = \"{secret}\"\n\
                 database_zone = \"{DB_ZONE}\"\nlowered_ttl_secs = 1\n",
                addr = dns.addr(),
                key = dns.key_name(),
                secret = dns.secret_file().display(),
            ),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", OLD)?;
    let new = rig.add_namespace("shared-new", NEW)?;
    let (pg15, pg18, maria_old, maria_new) = std::thread::scope(|s| -> anyhow::Result<_> {
        let a = s.spawn(|| {
            let mut spec = PgSpec::new(PgVersion::V15, 5432);
            spec.extra_conf.push("synchronous_commit = on".into());
            old.start_postgres_with(&rig, spec)
        });
        let b = s.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        let c = s.spawn(|| {
            old.start_mariadb_with(
                &rig,
                MariaDbSpec {
                    row_binlog: Some(1),
                    extra_args: vec!["--innodb-flush-log-at-trx-commit=1".into()],
                    ..MariaDbSpec::default()
                },
            )
        });
        let d = s.spawn(|| {
            new.start_mariadb_with(
                &rig,
                MariaDbSpec {
                    release: MariaDbRelease::V11_8,
                    extra_args: vec!["--server-id=2".to_owned()],
                    ..MariaDbSpec::default()
                },
            )
        });
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
            password: "ann-S3cret-9".into(),
            pg_databases: vec![SHOP.into(), BENCH.into()],
            mariadb_databases: vec![BLOG.into()],
            files: true,
        },
    )?;
    let visit = account.home.join("www/visit.php");
    std::fs::write(&visit, VISIT_PHP)?;
    std::os::unix::fs::chown(&visit, Some(account.uid), Some(account.gid))?;
    pg15.psql(
        SHOP,
        &format!("SET ROLE {ACCOUNT}; CREATE TABLE visits (id bigserial PRIMARY KEY, at timestamptz NOT NULL);"),
    )?;
    maria_old.sql(&format!(
        "CREATE TABLE {BLOG}.visits (id BIGINT PRIMARY KEY AUTO_INCREMENT, at DATETIME NOT NULL);
         CREATE TABLE {BLOG}.numbers (n BIGINT NOT NULL);"
    ))?;
    let db_name = format!("{db_label}.{DB_ZONE}");
    let pg_target = PgbenchTarget {
        host: db_name.clone(),
        port: pg15.port(),
        user: ACCOUNT.into(),
        password: account.password.clone(),
        dbname: BENCH.into(),
    };
    pgbench_init(rig.client(), PgVersion::V15, &pg_target)?;

    let agent = support::enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    support::enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "shared-new"])?;
    // The account's sites run on the source, as its host's init starts them.
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
    let url = format!("http://{}/visit.php", domains[0]);
    rig.wait_until("the site answering", Duration::from_secs(20), || {
        Ok(old
            .http_get(&rig, &domains[0], "/visit.php", Duration::from_secs(5))?
            .0
            == 200)
    })?;
    rig.wait_until(
        "the account's sites and databases in the inventory",
        Duration::from_secs(30),
        || {
            let found =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
            Ok(list(&found, "databases").len() == 3 && !list(&found, "sites").is_empty())
        },
    )?;

    // The load, the whole time.
    let pgbench = PgbenchLoad::start(&rig, rig.client(), PgVersion::V15, &pg_target, 2, 2)?;
    let rows = RowInserter::start(
        &rig,
        rig.client(),
        &MariadbTarget {
            host: db_name.clone(),
            port: maria_old.port(),
            user: ACCOUNT.into(),
            password: account.password.clone(),
            database: BLOG.into(),
            table: "numbers".into(),
        },
    )?;
    let lines_file = account.home.join("lines.txt");
    let cgroup = account_cgroup(&old, ACCOUNT);
    let lines = LineAppender::start(
        &rig,
        &old,
        account.uid,
        account.gid,
        Some(&cgroup),
        &lines_file,
        Duration::from_millis(10),
    )?;
    let http = HttpLoop::start(&rig, rig.client(), &url, &[], Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(2));

    let migrated = (|| -> anyhow::Result<Value> {
        let started = migrations(
            &rig,
            "Migrate",
            json!({"request_id": "m-load", "account": ACCOUNT, "migration_id": "postgresql-15-to-18",
                   "acknowledge_irreversible": true}),
        )?;
        let id = str_of(&started, "id").to_owned();
        let mut last = Value::Null;
        rig.wait_until("the migration completed", Duration::from_secs(300), || {
            last = migrations(&rig, "GetMigration", json!({"id": id}))?;
            let state = str_of(&last, "state");
            ensure!(
                !matches!(state, "STATE_FAILED" | "STATE_CANCELLED"),
                "the migration failed: {last}"
            );
            Ok(state == "STATE_COMPLETED")
        })
        .with_context(|| format!("last seen: {last}"))?;
        Ok(last)
    })();
    // Keep the load a little past the switch, so it shows the new host.
    std::thread::sleep(Duration::from_secs(3));
    let tally = pgbench.stop()?;
    let acked_rows = rows.stop()?;
    let acked_lines = lines.stop()?;
    let requests = http.stop()?;
    let migration = migrated.with_context(|| rig.log_tails(40))?;

    let window = &migration["freezeWindow"];
    let total_ms: u64 = window["totalMs"]
        .as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or(u64::MAX);
    eprintln!("freeze window: {total_ms} ms; parts: {}", window["parts"]);
    eprintln!(
        "freeze attempts: {}, missed: {}",
        migration["freezeAttempts"], migration["missedFreezes"]
    );
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        !list(window, "parts").is_empty(),
        format!("the freeze window is recorded with its parts: {migration}"),
    );
    check(
        total_ms < 2_000,
        format!("the freeze window is under 2 s: {total_ms} ms"),
    );

    // pgbench: on the NEW host, what it counted, and balances = deltas.
    let history = parse_history_counts(&pg18.psql(
        BENCH,
        "SELECT bid, tid, count(*) FROM pgbench_history GROUP BY 1, 2 ORDER BY 1, 2",
    )?)?;
    eprintln!(
        "pgbench: {} transactions committed, {} runs ended on an error",
        tally.total(),
        tally.failed_runs
    );
    check(
        tally.total() > 0,
        format!("pgbench committed: {}", pgbench.output_tail()),
    );
    check(
        history == tally.committed,
        format!(
            "pgbench_history on the new host per (run, client) {history:?} equals pgbench's log {:?}",
            tally.committed
        ),
    );
    let sums = pg18.psql(
        BENCH,
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)",
    )?;
    check(
        sums.trim() == "t",
        format!("balances and history deltas agree on the new host: {sums}"),
    );

    // MariaDB rows on the new host.
    let stored: Vec<u64> = maria_new
        .sql(&format!("SELECT DISTINCT n FROM {BLOG}.numbers ORDER BY n"))?
        .lines()
        .filter_map(|line| line.trim().parse().ok())
        .collect();
    eprintln!(
        "mariadb: {} rows acknowledged, {} tries failed",
        acked_rows.numbers.len(),
        acked_rows.failures
    );
    let missing_rows: Vec<u64> = acked_rows
        .numbers
        .iter()
        .filter(|n| stored.binary_search(n).is_err())
        .copied()
        .collect();
    check(
        !acked_rows.numbers.is_empty() && missing_rows.is_empty(),
        format!(
            "every acknowledged MariaDB row is on the new host; missing: {missing_rows:?} ({})",
            rows.output_tail()
        ),
    );

    // The home's lines on the new host.
    let home = migration["progress"]["targetHome"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let copied = std::fs::read_to_string(Path::new(&home).join("lines.txt"))
        .with_context(|| format!("lines.txt in the new home {home}"))?;
    eprintln!("lines: {} acknowledged", acked_lines.numbers.len());
    if let Err(error) = check_lines(&copied, &acked_lines) {
        check(
            false,
            format!("every acknowledged line is on the new host, in order: {error:#}"),
        );
    }

    // The HTTP client: never an error, the new host after the switch.
    let longest = requests.iter().map(|r| r.took).max().unwrap_or_default();
    let failed: Vec<_> = requests
        .iter()
        .filter(|r| r.status != 200 || r.curl_exit != 0)
        .collect();
    let new_address = IpAddr::V4(NEW);
    eprintln!(
        "http: {} requests, {} failed, longest wait {} ms, {} answered by the new host",
        requests.len(),
        failed.len(),
        longest.as_millis(),
        requests
            .iter()
            .filter(|r| r.remote == Some(new_address))
            .count()
    );
    check(
        failed.is_empty(),
        format!(
            "no request failed: {:?}",
            failed.iter().take(5).collect::<Vec<_>>()
        ),
    );
    check(
        requests
            .last()
            .is_some_and(|r| r.remote == Some(new_address)),
        format!(
            "the last request reached the new host: {:?}",
            requests.last()
        ),
    );
    let visits_new = pg18.psql(SHOP, "SELECT count(*) FROM visits")?;
    eprintln!("site visits written on the new host's PostgreSQL: {visits_new}");

    // The DNS answers the new host.
    for name in [domains[0].as_str(), db_name.as_str()] {
        let answers = dns.query(rig.client(), name, "A")?;
        check(
            answers
                .iter()
                .any(|(_, address)| address == &NEW.to_string())
                && !answers
                    .iter()
                    .any(|(_, address)| address == &OLD.to_string()),
            format!("{name} points at the new host: {answers:?}"),
        );
    }
    ensure!(
        failures.is_empty(),
        "{} checks failed:\n- {}",
        failures.len(),
        failures.join("\n- ")
    );
    Ok(())
}
