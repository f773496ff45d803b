//! *Migrate* under load, the must-show (R4, R5): an account with
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
//! customers' servers do. The scenario itself (account, zones, clients,
//! what they come to on the new host) is the rig's
//! `navette_tests::migration_load`, which the local platform shows too.

mod support;

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::migration_load::{
    LoadedAccount, NEW, OLD, Outcome, controller_config, migrate, start_servers, zones,
};
use navette_tests::{AgentKind, ControllerSpec, Rig};
use serde_json::json;
use support::list;

const ACCOUNT: &str = "nvml_ann";

#[test]
fn an_account_migrates_under_load_with_a_short_freeze_and_nothing_lost() -> anyhow::Result<()> {
    let rig = Rig::new("migrate_load")?;
    let dns = rig.start_dns(&zones(ACCOUNT))?;
    rig.resolve_through(rig.client(), &dns)?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            extra_config: controller_config(&dns),
            ..ControllerSpec::default()
        },
    )?;
    let old = rig.add_namespace("shared-old", OLD)?;
    let new = rig.add_namespace("shared-new", NEW)?;
    let (pg15, pg18, maria_old, maria_new) = start_servers(&rig, &old, &new)?;
    old.start_web_server(&rig)?;
    new.start_web_server(&rig)?;
    let account = LoadedAccount::create(&rig, &old, &pg15, &maria_old, ACCOUNT, "ann-S3cret-9")?;

    let agent = support::enrol(&rig, &old, AgentKind::Shared, "2024.1")?;
    support::enrol(&rig, &new, AgentKind::Shared, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-old", "shared-new"])?;
    // The account's sites run on the source, as its host's init starts them.
    rig.client()
        .run_in(|| async {
            let channel = agent.controller_channel(&controller)?;
            AgentClient::new(channel)
                .start_sites(StartSitesRequest {
                    account: ACCOUNT.to_owned(),
                    ..StartSitesRequest::default()
                })
                .await
                .map_err(|status| anyhow::anyhow!("StartSites: {status:?}"))
        })
        .context("starting the account's sites on the source")?;
    rig.wait_until("the site answering", Duration::from_secs(20), || {
        Ok(old
            .http_get(
                &rig,
                &account.domains[0],
                "/visit.php",
                Duration::from_secs(5),
            )?
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
    let load = account.start_load(&rig, &old)?;
    std::thread::sleep(Duration::from_secs(2));
    let migrated = migrate(&rig, ACCOUNT, "m-load", Duration::from_secs(300), |_| {});
    // Keep the load a little past the switch, so it shows the new host.
    std::thread::sleep(Duration::from_secs(3));
    let seen = load.stop()?;
    let migration = migrated.with_context(|| rig.log_tails(40))?;
    let outcome = Outcome::gather(&rig, &dns, &account, &migration, &seen, &pg18, &maria_new)?;

    let total_ms = outcome.freeze_ms.unwrap_or(u64::MAX);
    eprintln!(
        "freeze window: {total_ms} ms; parts: {:?}",
        outcome.freeze_parts
    );
    eprintln!(
        "freeze attempts: {}, missed: {}",
        outcome.freeze_attempts, outcome.missed_freezes
    );
    let mut failures: Vec<String> = Vec::new();
    let mut check = |ok: bool, what: String| {
        if !ok {
            failures.push(what);
        }
    };
    check(
        !outcome.freeze_parts.is_empty(),
        format!("the freeze window is recorded with its parts: {migration}"),
    );
    check(
        total_ms < 2_000,
        format!("the freeze window is under 2 s: {total_ms} ms"),
    );

    // pgbench: on the NEW host, what it counted, and balances = deltas.
    eprintln!(
        "pgbench: {} transactions committed, {} runs ended on an error",
        seen.pgbench.total(),
        seen.pgbench.failed_runs
    );
    check(
        seen.pgbench.total() > 0,
        format!("pgbench committed: {}", seen.pgbench_tail),
    );
    check(
        outcome.pgbench_all_found,
        format!(
            "pgbench_history on the new host per (run, client) {:?} equals pgbench's log {:?}",
            outcome.pgbench_history, seen.pgbench.committed
        ),
    );
    check(
        outcome.pgbench_sums_agree,
        "balances and history deltas agree on the new host".to_owned(),
    );

    // MariaDB rows on the new host.
    eprintln!(
        "mariadb: {} rows acknowledged, {} tries failed",
        seen.rows.numbers.len(),
        seen.rows.failures
    );
    check(
        !seen.rows.numbers.is_empty() && outcome.rows_missing.is_empty(),
        format!(
            "every acknowledged MariaDB row is on the new host; missing: {:?} ({})",
            outcome.rows_missing, seen.rows_tail
        ),
    );

    // The home's lines on the new host.
    eprintln!("lines: {} acknowledged", seen.lines.numbers.len());
    if let Some(error) = &outcome.lines_error {
        check(
            false,
            format!("every acknowledged line is on the new host, in order: {error}"),
        );
    }

    // The HTTP client: never an error, the new host after the switch.
    let new_address = IpAddr::V4(NEW);
    eprintln!(
        "http: {} requests, {} failed, longest wait {} ms, {} answered by the new host",
        seen.requests.len(),
        outcome.http_failed.len(),
        outcome.http_longest.as_millis(),
        outcome.http_on_new
    );
    check(
        outcome.http_failed.is_empty(),
        format!(
            "no request failed: {:?}",
            outcome.http_failed.iter().take(5).collect::<Vec<_>>()
        ),
    );
    check(
        outcome.http_last_host == Some(new_address),
        format!(
            "the last request reached the new host: {:?}",
            seen.requests.last()
        ),
    );
    eprintln!(
        "site visits written on the new host's PostgreSQL: {}",
        outcome.visits_on_new
    );

    // The DNS answers the new host.
    for (name, answers) in &outcome.dns_after {
        check(
            answers.contains(&NEW.to_string()) && !answers.contains(&OLD.to_string()),
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
