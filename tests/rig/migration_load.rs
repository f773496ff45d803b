//! *Migrate* under load, as `tests/migrate_load.rs` checks it and the local
//! platform (`navette-platform`) shows it: an account with files, two
//! PostgreSQL databases, one MariaDB database and a PHP site that writes
//! to them, whose domains and database host name the platform's DNS
//! serves, migrates from `shared-old` to `shared-new` while pgbench, a
//! MariaDB writer, a process appending to a file in the home and an HTTP
//! loop run; afterwards what each client was told is looked up on the new
//! host.
//!
//! Owns: the DNS zones and the controller's `[migrations]`/`[dns]`
//! sections for it, the source and target server settings (durable
//! commits on the source, a distinct MariaDB server id on the target),
//! the account and its load, following the migration with
//! `WatchMigration`, and gathering the [`Outcome`]. It judges nothing: the
//! test checks the outcome, the platform prints it.

use std::collections::BTreeMap;
use std::io::BufReader;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::{Value, json};

use crate::install::GRPCURL;
use crate::load::{
    Acknowledged, HttpLoop, HttpRequest, LineAppender, MariadbTarget, PgbenchLoad, PgbenchTally,
    PgbenchTarget, RowInserter, check_lines, parse_history_counts, pgbench_init,
};
use crate::{
    Account, AccountSpec, DnsServer, MariaDb, MariaDbSpec, Netns, PgSpec, PgVersion, Postgres, Rig,
    ZoneSpec, sample_domains,
};

/// The source host's address, and the target's.
pub const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
pub const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
/// The platform's zone of database host names.
pub const DB_ZONE: &str = "db.example";
/// The records' TTL before the migration lowers it (seconds): the freeze
/// waits this long after the lowering.
pub const OLD_TTL: u32 = 3;

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

/// The source's PostgreSQL 15: a commit is acknowledged once durable.
pub fn source_pg_spec() -> PgSpec {
    let mut spec = PgSpec::new(PgVersion::V15, 5432);
    spec.extra_conf.push("synchronous_commit = on".into());
    spec
}

/// The source's MariaDB 10.11: a row binary log (server id 1), durable
/// commits.
pub fn source_mariadb_spec() -> MariaDbSpec {
    MariaDbSpec {
        extra_args: vec!["--innodb-flush-log-at-trx-commit=1".into()],
        ..MariaDbSpec::replication_source()
    }
}

/// The target's MariaDB 11.8, with a server id of its own (the source's
/// events would be skipped as its own otherwise).
pub fn target_mariadb_spec() -> MariaDbSpec {
    MariaDbSpec::replica_11_8()
}

/// The zones the platform's DNS serves for `account` on the source: its
/// site's domain (and `www`) and its database host name in [`DB_ZONE`].
pub fn zones(account: &str) -> Vec<ZoneSpec> {
    let domain = sample_domains(account)[0].clone();
    vec![
        ZoneSpec::new(
            &domain,
            &[
                &format!("@ {OLD_TTL} A {OLD}"),
                &format!("www {OLD_TTL} A {OLD}"),
            ],
        ),
        ZoneSpec::new(
            DB_ZONE,
            &[&format!("{} {OLD_TTL} A {OLD}", db_label(account))],
        ),
    ]
}

/// The controller's `extra_config`: migrations without a recent test, the
/// old copy retired 2 s after the switch, records updated on `dns`.
pub fn controller_config(dns: &DnsServer) -> String {
    format!(
        "\n[migrations]\nrequire_recent_test = false\nretire_after_secs = 2\nforward_for_secs = 2\n\
         [dns]\nserver = \"{addr}\"\ntsig_key_name = \"{key}\"\ntsig_secret_file = \"{secret}\"\n\
         database_zone = \"{DB_ZONE}\"\nlowered_ttl_secs = 1\n",
        addr = dns.addr(),
        key = dns.key_name(),
        secret = dns.secret_file().display(),
    )
}

fn db_label(account: &str) -> String {
    account.replace('_', "-")
}

/// The account that migrates, created on the source.
#[derive(Debug, Clone)]
pub struct LoadedAccount {
    pub account: Account,
    /// Its site's domains (the first one is requested).
    pub domains: Vec<String>,
    /// Its database host name (`<account>.db.example`).
    pub db_name: String,
    /// The site's database (the sample site reads its `items`).
    pub shop: String,
    /// pgbench's database.
    pub bench: String,
    /// The MariaDB database (`visits`, and `numbers` for the row writer).
    pub blog: String,
    pub pg_port: u16,
    pub mariadb_port: u16,
}

impl LoadedAccount {
    /// Creates `name` on `old` (databases on `pg` and `mariadb`) with the
    /// writing page `www/visit.php` and its tables, and pgbench's tables
    /// through the database host name (the client resolves through the
    /// platform's DNS).
    pub fn create(
        rig: &Rig,
        old: &Netns,
        pg: &Postgres,
        mariadb: &MariaDb,
        name: &str,
        password: &str,
    ) -> anyhow::Result<LoadedAccount> {
        let shop = format!("{name}_shop");
        let bench = format!("{name}_bench");
        let blog = format!("{name}_blog");
        let account = rig.add_account(
            old,
            AccountSpec {
                name: name.into(),
                password: password.into(),
                pg_databases: vec![shop.clone(), bench.clone()],
                mariadb_databases: vec![blog.clone()],
                files: true,
            },
        )?;
        let visit = account.home.join("www/visit.php");
        std::fs::write(&visit, VISIT_PHP)?;
        std::os::unix::fs::chown(&visit, Some(account.uid), Some(account.gid))?;
        pg.psql(
            &shop,
            &format!(
                "SET ROLE {name}; CREATE TABLE visits (id bigserial PRIMARY KEY, at timestamptz NOT NULL);"
            ),
        )?;
        mariadb.sql(&format!(
            "CREATE TABLE {blog}.visits (id BIGINT PRIMARY KEY AUTO_INCREMENT, at DATETIME NOT NULL);
             CREATE TABLE {blog}.numbers (n BIGINT NOT NULL);"
        ))?;
        let loaded = LoadedAccount {
            domains: sample_domains(name),
            db_name: format!("{}.{DB_ZONE}", db_label(name)),
            account,
            shop,
            bench,
            blog,
            pg_port: pg.port(),
            mariadb_port: mariadb.port(),
        };
        pgbench_init(rig.client(), PgVersion::V15, &loaded.pgbench_target())?;
        Ok(loaded)
    }

    pub fn name(&self) -> &str {
        &self.account.name
    }

    /// pgbench's database through the database host name.
    pub fn pgbench_target(&self) -> PgbenchTarget {
        PgbenchTarget {
            host: self.db_name.clone(),
            port: self.pg_port,
            user: self.account.name.clone(),
            password: self.account.password.clone(),
            dbname: self.bench.clone(),
        }
    }

    /// The writing page, through the site's domain name.
    pub fn url(&self) -> String {
        format!("http://{}/visit.php", self.domains[0])
    }

    /// Starts the load from the client namespace (pgbench, 2 clients in
    /// 2 s runs; the MariaDB writer; the HTTP loop) and the line appender
    /// in the account's control group on `old`.
    pub fn start_load(&self, rig: &Rig, old: &Netns) -> anyhow::Result<RunningLoad> {
        let pgbench = PgbenchLoad::start(
            rig,
            rig.client(),
            PgVersion::V15,
            &self.pgbench_target(),
            2,
            2,
        )?;
        let rows = RowInserter::start(
            rig,
            rig.client(),
            &MariadbTarget {
                host: self.db_name.clone(),
                port: self.mariadb_port,
                user: self.account.name.clone(),
                password: self.account.password.clone(),
                database: self.blog.clone(),
                table: "numbers".into(),
            },
        )?;
        let cgroup = account_cgroup(old, &self.account.name);
        let lines = LineAppender::start(
            rig,
            old,
            self.account.uid,
            self.account.gid,
            Some(&cgroup),
            &self.account.home.join("lines.txt"),
            Duration::from_millis(10),
        )?;
        let http = HttpLoop::start(rig, rig.client(), &self.url(), &[], Duration::from_secs(10))?;
        Ok(RunningLoad {
            pgbench,
            rows,
            lines,
            http,
        })
    }
}

/// The account's control group on `host`, as the agent names it
/// (`[sites] cgroup_mount`, `cgroup_base`, the account).
fn account_cgroup(host: &Netns, account: &str) -> PathBuf {
    let mount = Path::new(crate::web::AGENT_CGROUP_MOUNT);
    let root = if mount.join("freezer").join("cgroup.procs").exists() {
        mount.join("freezer")
    } else {
        mount.to_path_buf()
    };
    root.join(host.cgroup_base()).join(account)
}

/// The four clients, running.
#[derive(Debug)]
pub struct RunningLoad {
    pgbench: PgbenchLoad,
    rows: RowInserter,
    lines: LineAppender,
    http: HttpLoop,
}

/// What each client was told.
#[derive(Debug, Clone)]
pub struct LoadSeen {
    pub pgbench: PgbenchTally,
    pub pgbench_tail: String,
    pub rows: Acknowledged,
    pub rows_tail: String,
    pub lines: Acknowledged,
    pub requests: Vec<HttpRequest>,
}

impl RunningLoad {
    /// Stops every client (all of them, even when one fails) and reads
    /// their tallies.
    pub fn stop(self) -> anyhow::Result<LoadSeen> {
        let pgbench = self.pgbench.stop();
        let rows = self.rows.stop();
        let lines = self.lines.stop();
        let requests = self.http.stop();
        Ok(LoadSeen {
            pgbench: pgbench.context("stopping pgbench")?,
            pgbench_tail: self.pgbench.output_tail(),
            rows: rows.context("stopping the MariaDB writer")?,
            rows_tail: self.rows.output_tail(),
            lines: lines.context("stopping the line appender")?,
            requests: requests.context("stopping the HTTP loop")?,
        })
    }
}

fn panel_call(rig: &Rig, method: &str, request: &Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Migrations/{method}"),
        request,
    )
}

fn is_terminal(run: &Value) -> bool {
    matches!(
        run["state"].as_str().unwrap_or(""),
        "STATE_COMPLETED" | "STATE_FAILED" | "STATE_CANCELLED"
    )
}

/// Presses *Migrate* for `account` (as the panel, the irreversibility
/// acknowledged, any target the controller picks) and follows it with
/// `WatchMigration`, handing every message to `on_change`, until it ends
/// or `timeout` passes. Its last state; an error unless it completed.
pub fn migrate(
    rig: &Rig,
    account: &str,
    request_id: &str,
    timeout: Duration,
    mut on_change: impl FnMut(&Value),
) -> anyhow::Result<Value> {
    let started = panel_call(
        rig,
        "Migrate",
        &json!({"request_id": request_id, "account": account,
                "migration_id": "postgresql-15-to-18", "acknowledge_irreversible": true}),
    )?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    on_change(&started);
    let deadline = Instant::now() + timeout;
    let access = rig.controller_access()?;
    let api = access.api.to_string();
    let body = json!({"id": id}).to_string();
    let mut last = started;
    // The stream ends with the migration; if it breaks off, it is opened
    // again (it starts with the migration as it is now).
    while !is_terminal(&last) && Instant::now() < deadline {
        let mut watch = rig.client().command(GRPCURL);
        watch
            .arg("-cacert")
            .arg(&access.ca_file)
            .arg("-cert")
            .arg(&access.panel.cert)
            .arg("-key")
            .arg(&access.panel.key)
            .args([
                "-servername",
                navette_proto::identity::CONTROLLER_SERVER_NAME,
            ])
            .args(["-connect-timeout", "5", "-d", &body, &api])
            .arg("navette.v1.Migrations/WatchMigration")
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = watch.spawn().context("running grpcurl WatchMigration")?;
        let stdout = child.stdout.take().context("grpcurl's stdout")?;
        let (send, receive) = std::sync::mpsc::channel::<Value>();
        let reader = std::thread::spawn(move || {
            for message in
                serde_json::Deserializer::from_reader(BufReader::new(stdout)).into_iter::<Value>()
            {
                let Ok(message) = message else { break };
                if send.send(message).is_err() {
                    break;
                }
            }
        });
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match receive.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(message) => {
                    on_change(&message);
                    last = message;
                    if is_terminal(&last) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        let _ = reader.join();
        if !is_terminal(&last) {
            last = panel_call(rig, "GetMigration", &json!({"id": id}))?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    match last["state"].as_str().unwrap_or("") {
        "STATE_COMPLETED" => Ok(last),
        "STATE_FAILED" | "STATE_CANCELLED" => anyhow::bail!("the migration failed: {last}"),
        _ => anyhow::bail!(
            "the migration did not complete within {} s; last seen: {last}",
            timeout.as_secs()
        ),
    }
}

/// A one-line account of a migration message: its phase, after its state
/// unless the phase names its step.
pub fn progress_line(run: &Value) -> String {
    let state = run["state"]
        .as_str()
        .unwrap_or("")
        .trim_start_matches("STATE_")
        .to_lowercase();
    let phase = run["phase"].as_str().unwrap_or("");
    let phase_word = phase.split(':').next().unwrap_or("");
    if phase.is_empty() {
        state
    } else if phase_word == state || phase_word.ends_with("ing") || phase_word == "switched" {
        // The phase names its step already ("copying: the durable copy
        // runs while the account works").
        phase.to_owned()
    } else {
        format!("{state}: {phase}")
    }
}

/// What the clients' tallies come to on the new host.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The freeze window that switched the account, and its parts.
    pub freeze_ms: Option<u64>,
    pub freeze_parts: Vec<(String, u64)>,
    pub freeze_attempts: u64,
    pub missed_freezes: usize,
    /// `pgbench_history` on the new host, per (run, client).
    pub pgbench_history: BTreeMap<(i64, i64), u64>,
    /// It equals what pgbench's log counted as committed.
    pub pgbench_all_found: bool,
    /// The balances sum to the history's deltas on the new host.
    pub pgbench_sums_agree: bool,
    /// Acknowledged MariaDB rows that the new host lacks.
    pub rows_missing: Vec<u64>,
    /// Why the home's `lines.txt` on the new host misses an acknowledged
    /// line, if it does.
    pub lines_error: Option<String>,
    /// HTTP requests that got no 200.
    pub http_failed: Vec<HttpRequest>,
    pub http_longest: Duration,
    pub http_first_host: Option<IpAddr>,
    pub http_last_host: Option<IpAddr>,
    pub http_on_new: usize,
    /// Visits the site wrote that the new host's PostgreSQL holds.
    pub visits_on_new: u64,
    /// The DNS answers (A records) for the site's domain and the database
    /// host name now.
    pub dns_after: Vec<(String, Vec<String>)>,
}

/// The A records `dns` answers for the account's domain and database host
/// name.
pub fn dns_answers(
    rig: &Rig,
    dns: &DnsServer,
    account: &LoadedAccount,
) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    [account.domains[0].as_str(), account.db_name.as_str()]
        .into_iter()
        .map(|name| {
            let answers = dns.query(rig.client(), name, "A")?;
            Ok((
                name.to_owned(),
                answers.into_iter().map(|(_, address)| address).collect(),
            ))
        })
        .collect()
}

impl Outcome {
    /// Looks up, on the new host's servers and home, what the clients were
    /// told, and reads the completed `migration`'s freeze window.
    pub fn gather(
        rig: &Rig,
        dns: &DnsServer,
        account: &LoadedAccount,
        migration: &Value,
        seen: &LoadSeen,
        pg_new: &Postgres,
        mariadb_new: &MariaDb,
    ) -> anyhow::Result<Outcome> {
        let window = &migration["freezeWindow"];
        let freeze_ms = window["totalMs"].as_str().and_then(|t| t.parse().ok());
        let freeze_parts = window["parts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|part| {
                (
                    part["name"].as_str().unwrap_or("").to_owned(),
                    part["ms"]
                        .as_str()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0),
                )
            })
            .collect();
        let pgbench_history = parse_history_counts(&pg_new.psql(
            &account.bench,
            "SELECT bid, tid, count(*) FROM pgbench_history GROUP BY 1, 2 ORDER BY 1, 2",
        )?)?;
        let sums = pg_new.psql(
            &account.bench,
            "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)",
        )?;
        let stored: Vec<u64> = mariadb_new
            .sql(&format!(
                "SELECT DISTINCT n FROM {}.numbers ORDER BY n",
                account.blog
            ))?
            .lines()
            .filter_map(|line| line.trim().parse().ok())
            .collect();
        let rows_missing = seen
            .rows
            .numbers
            .iter()
            .filter(|n| stored.binary_search(n).is_err())
            .copied()
            .collect();
        let home = migration["progress"]["targetHome"]
            .as_str()
            .unwrap_or_default();
        let lines_error = match std::fs::read_to_string(Path::new(home).join("lines.txt")) {
            Ok(copied) => check_lines(&copied, &seen.lines)
                .err()
                .map(|e| format!("{e:#}")),
            Err(error) => Some(format!("lines.txt in the new home {home:?}: {error}")),
        };
        let requests = &seen.requests;
        let new_address = IpAddr::V4(NEW);
        let visits_on_new = pg_new
            .psql(&account.shop, "SELECT count(*) FROM visits")?
            .trim()
            .parse()
            .unwrap_or(0);
        Ok(Outcome {
            freeze_ms,
            freeze_parts,
            freeze_attempts: migration["freezeAttempts"].as_u64().unwrap_or(0),
            missed_freezes: migration["missedFreezes"].as_array().map_or(0, Vec::len),
            pgbench_all_found: pgbench_history == seen.pgbench.committed,
            pgbench_history,
            pgbench_sums_agree: sums.trim() == "t",
            rows_missing,
            lines_error,
            http_failed: requests
                .iter()
                .filter(|r| r.status != 200 || r.curl_exit != 0)
                .cloned()
                .collect(),
            http_longest: requests.iter().map(|r| r.took).max().unwrap_or_default(),
            http_first_host: requests.first().and_then(|r| r.remote),
            http_last_host: requests.last().and_then(|r| r.remote),
            http_on_new: requests
                .iter()
                .filter(|r| r.remote == Some(new_address))
                .count(),
            visits_on_new,
            dns_after: dns_answers(rig, dns, account)?,
        })
    }
}

/// Starts the source's and the target's database servers in parallel:
/// (source PostgreSQL 15, target PostgreSQL 18, source MariaDB 10.11,
/// target MariaDB 11.8).
pub fn start_servers(
    rig: &Rig,
    old: &Netns,
    new: &Netns,
) -> anyhow::Result<(Postgres, Postgres, MariaDb, MariaDb)> {
    fn join<T>(what: &str, started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
        started.map_err(|_| anyhow::anyhow!("starting {what} panicked"))?
    }
    std::thread::scope(|s| {
        let a = s.spawn(|| old.start_postgres_with(rig, source_pg_spec()));
        let b = s.spawn(|| new.start_postgres(rig, PgVersion::V18, 5432));
        let c = s.spawn(|| old.start_mariadb_with(rig, source_mariadb_spec()));
        let d = s.spawn(|| new.start_mariadb_with(rig, target_mariadb_spec()));
        Ok((
            join("PostgreSQL 15", a.join())?,
            join("PostgreSQL 18", b.join())?,
            join("MariaDB 10.11", c.join())?,
            join("MariaDB 11.8", d.join())?,
        ))
    })
}
