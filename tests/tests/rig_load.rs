//! The rig's load clients count what they were told, even when their
//! server goes away under them: pgbench, a MariaDB client inserting rows
//! and a customer's process appending lines to a file in its home run
//! against one host while its PostgreSQL and MariaDB servers are killed and
//! started again; afterwards each tally matches what the host holds. The
//! migration tests rely on these tallies to say that nothing acknowledged
//! was lost, so they must be exact. Uses no Navette binary.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::load::{
    LineAppender, MariadbTarget, PgbenchLoad, PgbenchTarget, RowInserter, check_lines,
    parse_history_counts, pgbench_init,
};
use navette_tests::{AccountSpec, MariaDbSpec, PgSpec, PgVersion, Rig};

const HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);

#[test]
fn tallies_match_the_server_across_restarts() -> anyhow::Result<()> {
    let rig = Rig::new("rig_load")?;
    let host = rig.add_namespace("shared", HOST)?;
    // The rig's servers acknowledge commits before writing them
    // (`synchronous_commit = off`, for speed): a crash loses the last ones.
    // Customers' servers do not, and this test kills the server.
    let mut spec = PgSpec::new(PgVersion::V15, 5432);
    spec.extra_conf.push("synchronous_commit = on".into());
    let postgres = host.start_postgres_with(&rig, spec)?;
    // Likewise `--innodb-flush-log-at-trx-commit=0`; the later option wins.
    let mariadb = host.start_mariadb_with(
        &rig,
        MariaDbSpec {
            extra_args: vec!["--innodb-flush-log-at-trx-commit=1".into()],
            ..MariaDbSpec::default()
        },
    )?;
    let account = rig.add_account(
        &host,
        AccountSpec {
            name: "nvload_ann".into(),
            password: "ann-pw-1".into(),
            pg_databases: vec!["nvload_ann".into()],
            mariadb_databases: vec!["nvload_ann".into()],
            files: true,
        },
    )?;
    let pg_target = PgbenchTarget {
        host: HOST.to_string(),
        port: postgres.port(),
        user: account.name.clone(),
        password: account.password.clone(),
        dbname: "nvload_ann".into(),
    };
    pgbench_init(rig.client(), PgVersion::V15, &pg_target)?;
    mariadb.sql("CREATE TABLE nvload_ann.numbers (n BIGINT NOT NULL)")?;
    let my_target = MariadbTarget {
        host: HOST.to_string(),
        port: mariadb.port(),
        user: account.name.clone(),
        password: account.password.clone(),
        database: "nvload_ann".into(),
        table: "numbers".into(),
    };
    let lines_file = account.home.join("lines.txt");

    let pgbench = PgbenchLoad::start(&rig, rig.client(), PgVersion::V15, &pg_target, 2, 2)?;
    let rows = RowInserter::start(&rig, rig.client(), &my_target)?;
    let lines = LineAppender::start(
        &rig,
        &host,
        account.uid,
        account.gid,
        None,
        &lines_file,
        Duration::from_millis(5),
    )?;
    std::thread::sleep(Duration::from_secs(2));
    // Both servers die under their clients, then come back.
    postgres.process().restart()?;
    mariadb.process().restart()?;
    postgres.wait_ready()?;
    mariadb.wait_ready()?;
    std::thread::sleep(Duration::from_secs(3));
    let tally = pgbench.stop()?;
    let acked_rows = rows.stop()?;
    let acked_lines = lines.stop()?;

    // pgbench: every transaction it logged is in the history, and nothing
    // else is; it was started again after the restart.
    let history = parse_history_counts(&postgres.psql(
        "nvload_ann",
        "SELECT bid, tid, count(*) FROM pgbench_history GROUP BY 1, 2 ORDER BY 1, 2",
    )?)?;
    eprintln!(
        "pgbench: {} transactions committed over {} runs, {} runs ended on an error",
        tally.total(),
        tally
            .committed
            .keys()
            .map(|(run, _)| run)
            .max()
            .unwrap_or(&0),
        tally.failed_runs
    );
    ensure!(
        tally.total() > 0,
        "pgbench committed nothing: {}",
        pgbench.output_tail()
    );
    ensure!(
        tally.failed_runs >= 1,
        "the restart did not stop a pgbench run: {}",
        pgbench.output_tail()
    );
    ensure!(
        history == tally.committed,
        "pgbench_history per (run, client) {history:?} differs from pgbench's log {:?}",
        tally.committed
    );
    let sums = postgres.psql(
        "nvload_ann",
        "SELECT (SELECT sum(abalance) FROM pgbench_accounts) = (SELECT sum(delta) FROM pgbench_history)",
    )?;
    ensure!(
        sums.trim() == "t",
        "balances and history deltas disagree: {sums}"
    );

    // MariaDB: every acknowledged number is there.
    let stored = mariadb.sql("SELECT DISTINCT n FROM nvload_ann.numbers ORDER BY n")?;
    let stored: Vec<u64> = stored
        .lines()
        .map(|line| line.trim().parse().context("a stored number"))
        .collect::<anyhow::Result<_>>()?;
    eprintln!(
        "mariadb: {} rows acknowledged, {} tries failed",
        acked_rows.numbers.len(),
        acked_rows.failures
    );
    ensure!(
        !acked_rows.numbers.is_empty(),
        "no row was acknowledged: {}",
        rows.output_tail()
    );
    ensure!(acked_rows.failures >= 1, "the restart failed no insert");
    for number in &acked_rows.numbers {
        ensure!(
            stored.binary_search(number).is_ok(),
            "row {number} was acknowledged but is missing"
        );
    }

    // The home: consecutive lines holding every acknowledged one.
    let content = std::fs::read_to_string(&lines_file)?;
    ensure!(!acked_lines.numbers.is_empty(), "no line was acknowledged");
    check_lines(&content, &acked_lines)?;
    Ok(())
}
