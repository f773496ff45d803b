//! Customers' load while an account moves, and what each client saw.
//!
//! *Migrate* promises that nothing a client was told is done gets lost, and
//! that no request is refused while the account moves. These are the
//! clients that check it, each a loop in a host of the rig (usually the
//! client namespace, which stands for the internet) that keeps its own
//! tally of what it was told, so a test compares that tally with what the
//! new host holds afterwards:
//!
//! - [`PgbenchLoad`]: `pgbench` with one connection per transaction (so
//!   every transaction resolves the database's host name again), run again
//!   whenever it stops on an error. Each transaction updates an account row
//!   and inserts a history row tagged with the run and the client, and
//!   pgbench's per-transaction log (`-l`) lists those it saw committed.
//!   [`PgbenchTally`] counts them per (run, client), to compare with
//!   `pgbench_history` grouped the same way.
//! - [`RowInserter`]: a MariaDB client inserting numbered rows, one
//!   connection per row; a number is acknowledged once the client exited
//!   successfully.
//! - [`LineAppender`]: a customer's process (the account's uid and gid,
//!   optionally in the account's control group, so a freeze holds it)
//!   appending numbered lines to a file in the home; a number is
//!   acknowledged once the append returned.
//! - [`HttpLoop`]: `curl` in a loop, one connection per request, with the
//!   status, the address that answered and how long each request took.
//!
//! Every loop stops by itself once its stop file exists, between two
//! operations, so that nothing it acknowledged is cut from its tally
//! (pgbench's log is flushed when its run ends, never killed). The tallies
//! live in the rig's directory, outside every host's data.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::Netns;
use crate::postgres::PgVersion;
use crate::process::ChildProcess;
use crate::rig::Rig;

/// How long [`Load::stop`] waits for a loop to notice its stop file.
const STOP_WAIT: Duration = Duration::from_secs(30);

/// A loop started by this module: its process, its stop file and its
/// directory of tallies.
#[derive(Debug)]
struct Load {
    process: ChildProcess,
    dir: PathBuf,
}

impl Load {
    /// Starts `script` with bash in `netns`, in a fresh directory
    /// `<rig>/load/<label>` (its working directory, passed as `$1`).
    fn start(rig: &Rig, netns: &Netns, label: &str, script: String) -> anyhow::Result<Load> {
        let dir = rig.dir().join("load").join(label);
        // Fresh: an earlier loop of the same label (one test, two
        // scenarios) left its stop request and its tallies.
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let script_path = dir.join("loop.sh");
        std::fs::write(&script_path, script)
            .with_context(|| format!("writing {}", script_path.display()))?;
        let (ns, run_dir) = (netns.clone(), dir.clone());
        let process = rig.spawn(netns, &format!("load-{label}"), move || {
            let mut command = ns.command("bash");
            command
                .arg(run_dir.join("loop.sh"))
                .arg(&run_dir)
                .current_dir(&run_dir);
            command
        })?;
        Ok(Load { process, dir })
    }

    /// Asks the loop to stop and waits until it has.
    fn stop(&self) -> anyhow::Result<()> {
        let stop = self.dir.join("stop");
        std::fs::write(&stop, b"").with_context(|| format!("writing {}", stop.display()))?;
        let deadline = Instant::now() + STOP_WAIT;
        while self.process.is_running() {
            if Instant::now() > deadline {
                self.process.kill9();
                anyhow::bail!(
                    "{} did not stop within {STOP_WAIT:?} of its stop file: {}",
                    self.process.label(),
                    self.process.log_tail_message()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    fn read(&self, name: &str) -> anyhow::Result<String> {
        let path = self.dir.join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }
}

/// Quotes `value` for a bash script.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The transaction [`PgbenchLoad`] runs: pgbench's own TPC-B-like update of
/// an account row, with a history row tagged by `:run` (the loop's run
/// number) and `:client_id` (pgbench's client), so that every committed
/// transaction is countable on the new host.
const PGBENCH_SCRIPT: &str = "\
\\set aid random(1, 100000)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:client_id, :run, :aid, :delta, CURRENT_TIMESTAMP);
END;
";

/// Where [`PgbenchLoad`] connects and as whom.
#[derive(Debug, Clone)]
pub struct PgbenchTarget {
    /// A host name (resolved again for every transaction) or an address.
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

/// `pgbench` against one database, restarted whenever it stops.
#[derive(Debug)]
pub struct PgbenchLoad {
    load: Load,
}

/// What pgbench said it committed, per (run, client).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PgbenchTally {
    pub committed: BTreeMap<(i64, i64), u64>,
    /// pgbench runs that ended on an error (each was started again).
    pub failed_runs: u64,
}

impl PgbenchTally {
    /// All committed transactions.
    pub fn total(&self) -> u64 {
        self.committed.values().sum()
    }
}

/// Creates pgbench's tables (scale 1) in `target.dbname` as `target.user`,
/// with every balance at zero, so that afterwards the sum of the balances
/// equals the sum of the history's deltas.
pub fn pgbench_init(
    netns: &Netns,
    version: PgVersion,
    target: &PgbenchTarget,
) -> anyhow::Result<()> {
    pgbench_init_scaled(netns, version, target, 1)
}

/// [`pgbench_init`] at pgbench scale `scale` (scale 1 is about 15 MB).
pub fn pgbench_init_scaled(
    netns: &Netns,
    version: PgVersion,
    target: &PgbenchTarget,
    scale: u32,
) -> anyhow::Result<()> {
    let mut command = netns.command(version.bin_dir().join("pgbench"));
    command
        .args(["--initialize", "--quiet", "--no-vacuum"])
        .arg(format!("--scale={scale}"))
        .args(["--host", &target.host, "--port", &target.port.to_string()])
        .args(["--username", &target.user, &target.dbname])
        .env("PGPASSWORD", &target.password);
    if let Some(path) = version.ld_library_path() {
        command.env("LD_LIBRARY_PATH", path);
    }
    crate::install::run_checked(&mut command, "pgbench --initialize").map(drop)
}

impl PgbenchLoad {
    /// Starts the loop in `netns` with `clients` connections at a time, each
    /// pgbench run lasting `run_seconds`.
    pub fn start(
        rig: &Rig,
        netns: &Netns,
        version: PgVersion,
        target: &PgbenchTarget,
        clients: u32,
        run_seconds: u32,
    ) -> anyhow::Result<PgbenchLoad> {
        let pgbench = version.bin_dir().join("pgbench");
        let library = version
            .ld_library_path()
            .map(|path| format!("export LD_LIBRARY_PATH={}\n", quote(&path)))
            .unwrap_or_default();
        let script = format!(
            "set -u\ncd \"$1\"\n{library}export PGPASSWORD={password}\n\
             cat > tx.sql <<'EOF'\n{PGBENCH_SCRIPT}EOF\n\
             run=0\n\
             while [ ! -e stop ]; do\n\
             \x20 run=$((run + 1))\n\
             \x20 if ! {pgbench} --no-vacuum --connect --client={clients} --time={run_seconds} \
             --file=tx.sql --define=run=$run --log --log-prefix=log.$run \
             --host={host} --port={port} --username={user} {dbname} >> pgbench.out 2>&1; then\n\
             \x20   echo $run >> failed-runs\n\
             \x20   sleep 0.05\n\
             \x20 fi\n\
             done\n",
            password = quote(&target.password),
            pgbench = quote(&pgbench.to_string_lossy()),
            host = quote(&target.host),
            port = target.port,
            user = quote(&target.user),
            dbname = quote(&target.dbname),
        );
        Ok(PgbenchLoad {
            load: Load::start(rig, netns, "pgbench", script)?,
        })
    }

    /// Stops the loop (its current run finishes) and reads its logs.
    pub fn stop(&self) -> anyhow::Result<PgbenchTally> {
        self.load.stop()?;
        let mut tally = PgbenchTally {
            failed_runs: self.load.read("failed-runs")?.lines().count() as u64,
            ..PgbenchTally::default()
        };
        for entry in std::fs::read_dir(&self.load.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // log.<run>.<pid>, or log.<run>.<pid>.<thread> with threads.
            let Some(rest) = name.strip_prefix("log.") else {
                continue;
            };
            let run: i64 = rest
                .split('.')
                .next()
                .and_then(|run| run.parse().ok())
                .with_context(|| format!("pgbench log {name}: no run number"))?;
            let text = std::fs::read_to_string(entry.path())?;
            for line in text.lines() {
                // client_id transaction_no time script_no time_epoch time_us ...
                let fields: Vec<&str> = line.split_whitespace().collect();
                let (Some(client), Some(time)) = (fields.first(), fields.get(2)) else {
                    anyhow::bail!("pgbench log {name}: unreadable line {line:?}");
                };
                if *time == "failed" || *time == "skipped" {
                    continue;
                }
                let client: i64 = client
                    .parse()
                    .with_context(|| format!("pgbench log {name}: client in {line:?}"))?;
                *tally.committed.entry((run, client)).or_default() += 1;
            }
        }
        Ok(tally)
    }

    /// pgbench's own output, for a failing test's message.
    pub fn output_tail(&self) -> String {
        tail(&self.load.read("pgbench.out").unwrap_or_default(), 20)
    }
}

/// Reads `pgbench_history` the way [`PgbenchTally`] counts: rows per (run,
/// client), from `psql` output of
/// `SELECT bid, tid, count(*) FROM pgbench_history GROUP BY 1, 2`.
pub fn parse_history_counts(psql_output: &str) -> anyhow::Result<BTreeMap<(i64, i64), u64>> {
    let mut counts = BTreeMap::new();
    for line in psql_output.lines().filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split('|').map(str::trim).collect();
        let [run, client, count] = fields[..] else {
            anyhow::bail!("history counts: unreadable line {line:?}");
        };
        counts.insert(
            (run.parse()?, client.parse()?),
            count.parse().context("history count")?,
        );
    }
    Ok(counts)
}

/// Where [`RowInserter`] connects and what it fills.
#[derive(Debug, Clone)]
pub struct MariadbTarget {
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub database: String,
    /// A table with an integer column `n`, created by the test.
    pub table: String,
}

/// A MariaDB client inserting numbered rows, one connection per row.
#[derive(Debug)]
pub struct RowInserter {
    load: Load,
}

/// The numbers a loop was told are done, in the order it was told, and
/// how many of its tries failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acknowledged {
    pub numbers: Vec<u64>,
    pub failures: u64,
}

impl Acknowledged {
    fn read(load: &Load) -> anyhow::Result<Acknowledged> {
        let numbers = load
            .read("acked")?
            .lines()
            .map(|line| line.trim().parse().context("acknowledged number"))
            .collect::<anyhow::Result<_>>()?;
        Ok(Acknowledged {
            numbers,
            failures: load.read("failures")?.lines().count() as u64,
        })
    }
}

impl RowInserter {
    pub fn start(rig: &Rig, netns: &Netns, target: &MariadbTarget) -> anyhow::Result<RowInserter> {
        let script = format!(
            "set -u\ncd \"$1\"\nexport MYSQL_PWD={password}\nn=0\n\
             while [ ! -e stop ]; do\n\
             \x20 n=$((n + 1))\n\
             \x20 until [ -e stop ] || mariadb --connect-timeout=5 --host={host} --port={port} \
             --user={user} {database} -e \"INSERT INTO {table} (n) VALUES ($n)\" >> client.out 2>&1; do\n\
             \x20   echo $n >> failures\n\
             \x20   sleep 0.05\n\
             \x20 done\n\
             \x20 [ -e stop ] || echo $n >> acked\n\
             done\n",
            password = quote(&target.password),
            host = quote(&target.host),
            port = target.port,
            user = quote(&target.user),
            database = quote(&target.database),
            table = checked_identifier(&target.table)?,
        );
        Ok(RowInserter {
            load: Load::start(rig, netns, "mariadb-rows", script)?,
        })
    }

    /// Stops the loop and reads what it was told.
    ///
    /// A row whose insert was retried after an error may be on the server
    /// twice (the error may have come after the commit): its number is
    /// acknowledged once.
    pub fn stop(&self) -> anyhow::Result<Acknowledged> {
        self.load.stop()?;
        Acknowledged::read(&self.load)
    }

    pub fn output_tail(&self) -> String {
        tail(&self.load.read("client.out").unwrap_or_default(), 20)
    }
}

fn checked_identifier(name: &str) -> anyhow::Result<&str> {
    anyhow::ensure!(
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
        "{name:?} is not a plain table name"
    );
    Ok(name)
}

/// A customer's process appending numbered lines to a file in its home.
#[derive(Debug)]
pub struct LineAppender {
    load: Load,
}

impl LineAppender {
    /// Starts, in `netns`, as `uid`:`gid`, a loop appending `1`, `2`, ...
    /// (one per line) to `file`, every `interval`. With `cgroup`, the
    /// process first joins that control group (its `cgroup.procs`), as the
    /// account's own processes do.
    pub fn start(
        rig: &Rig,
        netns: &Netns,
        uid: u32,
        gid: u32,
        cgroup: Option<&Path>,
        file: &Path,
        interval: Duration,
    ) -> anyhow::Result<LineAppender> {
        let join = cgroup
            .map(|group| {
                format!(
                    "echo $$ > {}\n",
                    quote(&group.join("cgroup.procs").to_string_lossy())
                )
            })
            .unwrap_or_default();
        // The tally is written by the unprivileged loop, through a file
        // descriptor the root wrapper opened (the rig's directory is
        // root's).
        let script = format!(
            "set -u\ncd \"$1\"\n{join}exec 3>> acked\n\
             exec setpriv --reuid={uid} --regid={gid} --clear-groups -- bash -c '\n\
             n=0\n\
             while [ ! -e \"$0/stop\" ]; do\n\
             \x20 n=$((n + 1))\n\
             \x20 echo $n >> \"$1\" && echo $n >&3\n\
             \x20 sleep {interval:.3}\n\
             done' \"$1\" {file}\n",
            interval = interval.as_secs_f64(),
            file = quote(&file.to_string_lossy()),
        );
        Ok(LineAppender {
            load: Load::start(rig, netns, "home-lines", script)?,
        })
    }

    /// The loop's process (to find it, freeze it, or kill it).
    pub fn process(&self) -> &ChildProcess {
        &self.load.process
    }

    /// Stops the loop and reads what it was told. A loop that was killed
    /// (its host moved on) counts as stopped.
    pub fn stop(&self) -> anyhow::Result<Acknowledged> {
        if self.load.process.is_running() {
            self.load.stop()?;
        }
        Acknowledged::read(&self.load)
    }
}

/// Checks a file [`LineAppender`] wrote, as read on the new host: its lines
/// are 1, 2, 3, ... in order, and hold every acknowledged number. A last
/// line past the acknowledged ones is allowed (appended, then the loop was
/// frozen or stopped before it said so).
pub fn check_lines(content: &str, acknowledged: &Acknowledged) -> anyhow::Result<()> {
    for (index, line) in content.lines().enumerate() {
        let expected = index as u64 + 1;
        anyhow::ensure!(
            line == expected.to_string(),
            "line {expected} of the appended file is {line:?}, not {expected}"
        );
    }
    let lines = content.lines().count() as u64;
    if let Some(last) = acknowledged.numbers.last() {
        anyhow::ensure!(
            *last <= lines,
            "line {last} was acknowledged but the file holds only {lines} lines"
        );
    }
    Ok(())
}

/// `curl` in a loop against one URL.
#[derive(Debug)]
pub struct HttpLoop {
    load: Load,
}

/// One request as the client saw it.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpRequest {
    /// When it started, in milliseconds since the Unix epoch.
    pub started_ms: u64,
    /// 0 when no answer came (curl's exit status says why).
    pub status: u16,
    pub curl_exit: i32,
    /// The address that answered, if any.
    pub remote: Option<IpAddr>,
    pub took: Duration,
}

impl HttpLoop {
    /// Requests `url` in a loop from `netns`, one connection per request,
    /// giving each `max_time` (a request held during a freeze waits, it
    /// does not fail). `curl_args` come before the URL (e.g.
    /// `--resolve` where no DNS serves the name).
    pub fn start(
        rig: &Rig,
        netns: &Netns,
        url: &str,
        curl_args: &[&str],
        max_time: Duration,
    ) -> anyhow::Result<HttpLoop> {
        let args: Vec<String> = curl_args.iter().map(|arg| quote(arg)).collect();
        let script = format!(
            "set -u\ncd \"$1\"\n\
             while [ ! -e stop ]; do\n\
             \x20 start=$(date +%s%3N)\n\
             \x20 out=$(curl --silent --output /dev/null --max-time {max_time:.3} {args} \
             --write-out '%{{http_code}} %{{remote_ip}} %{{time_total}}' {url})\n\
             \x20 echo \"$start $? $out\" >> requests\n\
             done\n",
            max_time = max_time.as_secs_f64(),
            args = args.join(" "),
            url = quote(url),
        );
        Ok(HttpLoop {
            load: Load::start(rig, netns, "http", script)?,
        })
    }

    /// Stops the loop and reads every request it made.
    pub fn stop(&self) -> anyhow::Result<Vec<HttpRequest>> {
        self.load.stop()?;
        parse_requests(&self.load.read("requests")?)
    }
}

/// Parses [`HttpLoop`]'s lines: `<start ms> <curl exit> <status> <remote
/// address> <seconds>` (the address empty when nothing answered).
pub fn parse_requests(text: &str) -> anyhow::Result<Vec<HttpRequest>> {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let field = |index: usize| {
                fields
                    .get(index)
                    .copied()
                    .with_context(|| format!("request line {line:?}: field {index} missing"))
            };
            let (remote, took) = if fields.len() >= 5 {
                (field(3)?, field(4)?)
            } else {
                ("", field(3)?)
            };
            Ok(HttpRequest {
                started_ms: field(0)?.parse().context("start")?,
                curl_exit: field(1)?.parse().context("curl exit")?,
                status: field(2)?.parse().unwrap_or(0),
                remote: remote.parse().ok(),
                took: Duration::from_secs_f64(took.parse().context("time")?),
            })
        })
        .collect()
}

/// The last `lines` lines of `text`.
fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Runs `command` and returns its stdout, an error naming `what` unless it
/// succeeded. For tests reading what the new host holds.
pub fn output_of(command: &mut Command, what: &str) -> anyhow::Result<String> {
    crate::install::run_checked(command, what)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_with_and_without_an_answer() -> anyhow::Result<()> {
        let requests = parse_requests(
            "1700000000123 0 200 192.0.2.10 0.004512\n1700000000200 7 000  0.000100\n",
        )?;
        assert_eq!(requests.len(), 2);
        assert_eq!(requests[0].status, 200);
        assert_eq!(requests[0].remote, Some("192.0.2.10".parse()?));
        assert_eq!(requests[1].curl_exit, 7);
        assert_eq!(requests[1].remote, None);
        Ok(())
    }

    #[test]
    fn lines_must_be_consecutive_and_hold_every_acknowledged_number() {
        let acked = Acknowledged {
            numbers: vec![1, 2, 3],
            failures: 0,
        };
        assert!(check_lines("1\n2\n3\n", &acked).is_ok());
        assert!(check_lines("1\n2\n3\n4\n", &acked).is_ok());
        assert!(check_lines("1\n2\n", &acked).is_err());
        assert!(check_lines("1\n3\n4\n", &acked).is_err());
    }

    #[test]
    fn history_counts_parse_psql_rows() -> anyhow::Result<()> {
        let counts = parse_history_counts("1|0|12\n1|1|9\n2|0|3\n")?;
        assert_eq!(counts.get(&(1, 1)), Some(&9));
        assert_eq!(counts.len(), 3);
        Ok(())
    }
}
