//! *Test* runs the account's sites on the test host, as if migrated: real
//! nginx and PHP-FPM on both hosts, real PostgreSQL and MariaDB, requests
//! from the client namespace by domain name.
//!
//! What a customer would check:
//! - after `TestMigration`, the site answers on the test host through the
//!   preview the answer gives (its exact command, run as given), with the
//!   rows of the copied databases: a row changed on the source after the
//!   copy is not shown there, a row changed in the copy is;
//! - after `DeleteTest`, it no longer answers there;
//! - the site on the source never stopped answering during the whole test
//!   (an HTTP client in a loop saw no error);
//! - for the stack migration, the same files answer on the test host's
//!   PHP 8.4, while the source's still run PHP 8.2;
//! - a refresh starts a site added since and stops one dropped since;
//! - sites the test host cannot start (their domain served there by
//!   another account) fail the test, saying which domain and why; the
//!   other account's site and the source's keep answering.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, bail, ensure};
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::{
    Account, AccountSpec, Agent, AgentKind, Controller, ControllerSpec, Netns, PgVersion, Rig,
    sample_domains,
};
use serde_json::{Value, json};
use support::{list, panel, str_of, wait_for_test};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The result of a server start on another thread.
fn join<T>(started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("a server start panicked"))?
}

/// `StartSites` of `account` with the host's definitions, as the host's
/// init would.
fn start_defined_sites(
    rig: &Rig,
    controller: &Controller,
    agent: &Agent,
    account: &str,
) -> anyhow::Result<()> {
    let request = StartSitesRequest {
        account: account.to_owned(),
        ..StartSitesRequest::default()
    };
    rig.client()
        .run_in(|| async {
            let channel = agent.controller_channel(controller)?;
            AgentClient::new(channel)
                .start_sites(request)
                .await
                .map_err(|status| anyhow::anyhow!("StartSites of {account}: {status:?}"))
        })
        .with_context(|| format!("starting the sites of {account}"))?;
    Ok(())
}

/// Starts `account`'s sites on its own host, and waits until its main
/// domain answers.
fn start_source_sites(
    rig: &Rig,
    controller: &Controller,
    agent: &Agent,
    account: &Account,
) -> anyhow::Result<()> {
    start_defined_sites(rig, controller, agent, &account.name)?;
    let domain = &sample_domains(&account.name)[0];
    rig.wait_until(
        &format!("{domain} answering on the source"),
        Duration::from_secs(15),
        || Ok(account.host.http_get(rig, domain, "/", REQUEST_TIMEOUT)?.0 == 200),
    )
}

/// Runs a preview's command exactly as given, from the client namespace,
/// with a status line appended: (status, body). A failed connection is 0.
fn try_preview(rig: &Rig, command: &str) -> anyhow::Result<(u16, String)> {
    ensure!(
        command.starts_with("curl ") && !command.contains(['\'', '"', ';', '|', '&', '`', '$']),
        "the preview's command is a plain curl: {command:?}"
    );
    let output = rig
        .client()
        .command("sh")
        .arg("-c")
        .arg(format!(
            "{command} --silent --max-time 10 --write-out '\\n%{{http_code}}'"
        ))
        .output()
        .context("running the preview's command")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_ref()));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// The one preview of the test's answer, checked against what the account
/// and the test host are: (command, body of the site through it).
fn the_preview(test: &Value, domains: &[String], address: Ipv4Addr) -> anyhow::Result<String> {
    let previews = list(test, "previews");
    ensure!(previews.len() == 1, "one site, one preview: {test}");
    let preview = &previews[0];
    let shown: Vec<String> = list(preview, "domains")
        .iter()
        .filter_map(|d| d.as_str().map(str::to_owned))
        .collect();
    ensure!(shown == domains, "the site's domains: {preview}");
    ensure!(
        str_of(preview, "address") == address.to_string(),
        "the test host's address: {preview}"
    );
    let command = str_of(preview, "command").to_owned();
    let domain = &domains[0];
    ensure!(
        command == format!("curl --resolve {domain}:80:{address} http://{domain}/"),
        "the command points the real domain at the test host: {command}"
    );
    Ok(command)
}

/// Asks the source's main domain in a loop until `stop`: (answers, errors).
fn keep_asking(rig: &Rig, account: &Account, stop: &AtomicBool) -> (u64, Vec<String>) {
    let domain = &sample_domains(&account.name)[0];
    let (mut answers, mut errors) = (0u64, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        match account.host.http_get(rig, domain, "/", REQUEST_TIMEOUT) {
            Ok((200, body)) if body.contains(&format!("Hello from {}", account.name)) => {
                answers += 1
            }
            Ok((status, body)) => errors.push(format!("status {status}: {body}")),
            Err(error) => errors.push(format!("{error:#}")),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    (answers, errors)
}

/// The source host (old stack, PostgreSQL 15, MariaDB 10.11) and the test
/// host (new stack, PostgreSQL 18, MariaDB 11.8), both with nginx and an
/// agent, and `account` on the source with its sites running.
struct World {
    rig: Rig,
    controller: Controller,
    source: Netns,
    test_host: Netns,
    test_agent: Agent,
    account: Account,
    source_pg: navette_tests::Postgres,
    source_maria: navette_tests::MariaDb,
    target_maria: navette_tests::MariaDb,
}

fn world(name: &str, spec: AccountSpec) -> anyhow::Result<World> {
    let rig = Rig::new(name)?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let source = rig.add_namespace("shared-1", Ipv4Addr::new(192, 0, 2, 10))?;
    let test_host = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    let (source_pg, _target_pg, source_maria, target_maria) = std::thread::scope(|s| {
        let a = s.spawn(|| source.start_postgres(&rig, PgVersion::V15, 5432));
        let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
        let c = s.spawn(|| source.start_mariadb(&rig));
        let d = s.spawn(|| test_host.start_mariadb_11_8(&rig));
        anyhow::Ok((
            join(a.join())?,
            join(b.join())?,
            join(c.join())?,
            join(d.join())?,
        ))
    })?;
    source.start_web_server(&rig)?;
    test_host.start_web_server(&rig)?;
    let account = rig.add_account(&source, spec)?;
    let agent = support::enrol(&rig, &source, AgentKind::Shared, "2024.1")?;
    let test_agent = support::enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    start_source_sites(&rig, &controller, &agent, &account)?;
    Ok(World {
        rig,
        controller,
        source,
        test_host,
        test_agent,
        account,
        source_pg,
        source_maria,
        target_maria,
    })
}

/// Waits until the inventory lists the account's site (the controller
/// plans the sites it knows).
fn wait_site_known(rig: &Rig, account: &str) -> anyhow::Result<()> {
    rig.wait_until(
        &format!("the sites of {account} in the inventory"),
        Duration::from_secs(60),
        || {
            let access = rig.controller_access()?;
            let answer = rig.grpcurl_json_as(
                &access.panel,
                "navette.v1.Accounts/ListAccounts",
                &json!({"host_id": "shared-1"}),
            )?;
            Ok(list(&answer, "accounts")
                .iter()
                .any(|a| str_of(a, "name") == account && !list(a, "sites").is_empty()))
        },
    )
}

#[test]
fn the_test_runs_the_site_on_the_copy_and_the_source_never_stops() -> anyhow::Result<()> {
    const ACCOUNT: &str = "nvs_sara";
    let w = world(
        "test_sites",
        AccountSpec {
            name: ACCOUNT.into(),
            password: "sara-pw".into(),
            pg_databases: vec!["nvs_sara".into()],
            mariadb_databases: vec!["nvs_sara_shop".into()],
            files: true,
        },
    )?;
    let rig = &w.rig;
    let domains = sample_domains(ACCOUNT);
    wait_site_known(rig, ACCOUNT)?;

    let stop = AtomicBool::new(false);
    let (answers, errors, result) = std::thread::scope(|s| {
        let asking = s.spawn(|| keep_asking(rig, &w.account, &stop));
        let result = (|| -> anyhow::Result<()> {
            let started = panel(
                rig,
                "TestMigration",
                json!({"request_id": "r-sites", "account": ACCOUNT,
                       "migration_id": "postgresql-15-to-18"}),
            )?;
            let id = str_of(&started, "id").to_owned();
            let ready = wait_for_test(rig, &id, "STATE_READY", Duration::from_secs(180))?;
            let command = the_preview(&ready, &domains, w.test_host.addr())?;

            // After the copy: a row changed on the source is not in the
            // copy; a row changed in the copy is what the preview shows.
            w.source_pg.psql(
                ACCOUNT,
                "SET ROLE nvs_sara; UPDATE items SET label = 'source-after-copy' WHERE id = 1",
            )?;
            w.target_maria
                .sql("UPDATE nvs_sara_shop.items SET label = 'changed-in-copy' WHERE id = 2")?;
            let (status, body) = try_preview(rig, &command)?;
            ensure!(status == 200, "the preview answers: {status} {body}");
            ensure!(
                body.contains(&format!("Hello from {ACCOUNT}"))
                    && body.contains("postgresql: apple,banana,cherry")
                    && body.contains("mariadb: apple,changed-in-copy,cherry"),
                "the preview shows the copy's rows: {body}"
            );
            ensure!(
                body.contains("php: 8.4."),
                "the test host runs the new stack: {body}"
            );
            let (_, source_body) = w.source.http_get(rig, &domains[0], "/", REQUEST_TIMEOUT)?;
            ensure!(
                source_body.contains("postgresql: source-after-copy,banana,cherry")
                    && source_body.contains("mariadb: apple,banana,cherry"),
                "the source shows its own rows: {source_body}"
            );
            // Every domain of the site answers there.
            let (status, body) = w
                .test_host
                .http_get(rig, &domains[1], "/", REQUEST_TIMEOUT)?;
            ensure!(
                status == 200 && body.contains("changed-in-copy"),
                "{}: {status} {body}",
                domains[1]
            );

            panel(rig, "DeleteTest", json!({"id": id}))?;
            wait_for_test(rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
            let (status, body) = try_preview(rig, &command)?;
            ensure!(
                status != 200 && !body.contains("Hello from"),
                "after DeleteTest the site no longer answers on the test host: {status} {body}"
            );
            let pools = std::fs::read_dir(w.test_host.sites_run_dir())
                .map(|entries| entries.count())
                .unwrap_or(0);
            ensure!(pools == 0, "no pool is left on the test host ({pools})");
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let (answers, errors) = asking
            .join()
            .unwrap_or_else(|_| (0, vec!["the client loop panicked".into()]));
        (answers, errors, result)
    });
    result?;
    if !errors.is_empty() {
        bail!(
            "the source's site failed {} times during the test (of {answers} answers): {:?}",
            errors.len(),
            errors
        );
    }
    ensure!(answers > 0, "the client loop saw answers from the source");
    let _ = &w.source_maria;
    Ok(())
}

#[test]
fn a_stack_test_shows_the_site_on_the_new_stack() -> anyhow::Result<()> {
    const ACCOUNT: &str = "nvs_tomi";
    let w = world(
        "test_sites_stack",
        AccountSpec {
            name: ACCOUNT.into(),
            password: "tomi-pw".into(),
            pg_databases: vec![],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let rig = &w.rig;
    let domains = sample_domains(ACCOUNT);
    wait_site_known(rig, ACCOUNT)?;
    let started = panel(
        rig,
        "TestMigration",
        json!({"request_id": "r-stack", "account": ACCOUNT,
               "migration_id": "stack-2024.1-to-2026.1"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    let ready = wait_for_test(rig, &id, "STATE_READY", Duration::from_secs(180))?;
    let command = the_preview(&ready, &domains, w.test_host.addr())?;
    let (status, body) = try_preview(rig, &command)?;
    ensure!(
        status == 200 && body.contains(&format!("Hello from {ACCOUNT}")),
        "the preview answers: {status} {body}"
    );
    ensure!(
        body.contains("php: 8.4."),
        "PHP 8.4 on the test host: {body}"
    );
    let (_, source_body) = w.source.http_get(rig, &domains[0], "/", REQUEST_TIMEOUT)?;
    ensure!(
        source_body.contains("php: 8.2."),
        "the source still runs PHP 8.2: {source_body}"
    );
    panel(rig, "DeleteTest", json!({"id": id}))?;
    wait_for_test(rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    let (status, _) = try_preview(rig, &command)?;
    ensure!(status != 200, "stopped with the test: {status}");
    Ok(())
}

/// Writes the account's site definitions as the hosting panel would: the
/// sample site, and a blog on `blog` domains when `with_blog`.
fn write_definitions(host: &Netns, account: &str, with_blog: bool) -> anyhow::Result<()> {
    let quoted = |domains: &[String]| {
        domains
            .iter()
            .map(|d| format!("{d:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut text = format!(
        "[[site]]\ndomains = [{}]\ndocument_root = \"www\"\nruntime = \"php\"\n",
        quoted(&sample_domains(account))
    );
    if with_blog {
        text.push_str(&format!(
            "\n[[site]]\ndomains = [{}]\ndocument_root = \"www\"\nruntime = \"php\"\n",
            quoted(&blog_domains(account))
        ));
    }
    let path = host.site_definitions_dir().join(format!("{account}.toml"));
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
}

fn blog_domains(account: &str) -> Vec<String> {
    vec![format!("blog-{}.example", account.replace('_', "-"))]
}

/// Has the source's agent report again, and waits until the controller
/// lists `count` sites for `account`.
fn wait_sites_listed(rig: &Rig, account: &str, count: usize) -> anyhow::Result<()> {
    rig.grpcurl_json(
        "navette.v1.Hosts/RefreshHostInventory",
        &json!({"id": "shared-1"}),
    )?;
    rig.wait_until(
        &format!("{count} sites of {account} listed"),
        Duration::from_secs(60),
        || {
            let access = rig.controller_access()?;
            let answer = rig.grpcurl_json_as(
                &access.panel,
                "navette.v1.Accounts/ListAccounts",
                &json!({"host_id": "shared-1"}),
            )?;
            Ok(list(&answer, "accounts")
                .iter()
                .any(|a| str_of(a, "name") == account && list(a, "sites").len() == count))
        },
    )
}

#[test]
fn a_refresh_runs_the_sites_the_account_has_now() -> anyhow::Result<()> {
    const ACCOUNT: &str = "nvs_umay";
    let w = world(
        "test_sites_refresh",
        AccountSpec {
            name: ACCOUNT.into(),
            password: "umay-pw".into(),
            pg_databases: vec!["nvs_umay".into()],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let rig = &w.rig;
    wait_site_known(rig, ACCOUNT)?;
    let started = panel(
        rig,
        "TestMigration",
        json!({"request_id": "r-sites-refresh", "account": ACCOUNT,
               "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    wait_for_test(rig, &id, "STATE_READY", Duration::from_secs(180))?;
    let blog = &blog_domains(ACCOUNT)[0];
    let (status, _) = w.test_host.http_get(rig, blog, "/", REQUEST_TIMEOUT)?;
    ensure!(status != 200, "no blog yet on the test host: {status}");

    // The customer adds a blog; a refresh starts it on the test host.
    write_definitions(&w.source, ACCOUNT, true)?;
    wait_sites_listed(rig, ACCOUNT, 2)?;
    panel(rig, "RefreshTest", json!({"id": id}))?;
    let mut refreshed = Value::Null;
    rig.wait_until("the refresh ready", Duration::from_secs(180), || {
        refreshed = panel(rig, "GetTest", json!({"id": id}))?;
        Ok(str_of(&refreshed, "state") == "STATE_READY"
            && refreshed.get("generation").and_then(Value::as_u64) == Some(2))
    })?;
    ensure!(
        list(&refreshed, "previews").len() == 2,
        "two previews after the refresh: {refreshed}"
    );
    let (status, body) = w.test_host.http_get(rig, blog, "/", REQUEST_TIMEOUT)?;
    ensure!(
        status == 200 && body.contains(&format!("Hello from {ACCOUNT}")),
        "the blog added since answers on the test host: {status} {body}"
    );

    // The customer drops it; the next refresh stops it there.
    write_definitions(&w.source, ACCOUNT, false)?;
    wait_sites_listed(rig, ACCOUNT, 1)?;
    panel(rig, "RefreshTest", json!({"id": id}))?;
    rig.wait_until("the second refresh ready", Duration::from_secs(180), || {
        let test = panel(rig, "GetTest", json!({"id": id}))?;
        Ok(str_of(&test, "state") == "STATE_READY"
            && test.get("generation").and_then(Value::as_u64) == Some(3))
    })?;
    let (status, body) = w.test_host.http_get(rig, blog, "/", REQUEST_TIMEOUT)?;
    ensure!(
        status != 200 && !body.contains("Hello from"),
        "the blog dropped since no longer answers on the test host: {status} {body}"
    );
    let main = &sample_domains(ACCOUNT)[0];
    let (status, body) = w.test_host.http_get(rig, main, "/", REQUEST_TIMEOUT)?;
    ensure!(
        status == 200 && body.contains("postgresql: apple,banana,cherry"),
        "the site kept answers on the test host: {status} {body}"
    );
    panel(rig, "DeleteTest", json!({"id": id}))?;
    wait_for_test(rig, &id, "STATE_DELETED", Duration::from_secs(60))?;
    Ok(())
}

#[test]
fn sites_that_cannot_start_on_the_test_host_fail_the_test_saying_why() -> anyhow::Result<()> {
    const ACCOUNT: &str = "nvs_vera";
    let w = world(
        "test_sites_refused",
        AccountSpec {
            name: ACCOUNT.into(),
            password: "vera-pw".into(),
            pg_databases: vec![],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    let rig = &w.rig;
    wait_site_known(rig, ACCOUNT)?;
    // Another account of the test host already serves the account's
    // domain there (as a panel's mistake could make it).
    let other = rig.add_account(
        &w.test_host,
        AccountSpec {
            name: "nvs_wren".into(),
            password: "wren-pw".into(),
            pg_databases: vec![],
            mariadb_databases: vec![],
            files: true,
        },
    )?;
    write_definitions(&w.test_host, &other.name, false)?;
    let path = w
        .test_host
        .site_definitions_dir()
        .join(format!("{}.toml", other.name));
    let text = std::fs::read_to_string(&path)?
        .replace(&sample_domains(&other.name)[0], &sample_domains(ACCOUNT)[0]);
    std::fs::write(&path, text)?;
    start_defined_sites(rig, &w.controller, &w.test_agent, &other.name)?;
    let domain = &sample_domains(ACCOUNT)[0];
    let mut served = String::new();
    rig.wait_until(
        "the other account serving the domain on the test host",
        Duration::from_secs(15),
        || {
            let (status, body) = w.test_host.http_get(rig, domain, "/", REQUEST_TIMEOUT)?;
            served = format!("{status} {body}");
            Ok(status == 200 && body.contains("Hello from nvs_wren"))
        },
    )
    .with_context(|| format!("last answer: {served}"))?;

    let started = panel(
        rig,
        "TestMigration",
        json!({"request_id": "r-sites-refused", "account": ACCOUNT,
               "migration_id": "stack-2024.1-to-2026.1"}),
    )?;
    let id = str_of(&started, "id").to_owned();
    let failed = wait_for_test(rig, &id, "STATE_FAILED", Duration::from_secs(180))?;
    let error = str_of(&failed, "error");
    ensure!(
        error.contains("sites could not be started on test host test-1")
            && error.contains(domain.as_str())
            && error.contains("nvs_wren"),
        "the test says which domain and why: {error}"
    );
    ensure!(
        list(&failed, "previews").is_empty(),
        "no preview for a failed test: {failed}"
    );
    // The other account's site is untouched; the source's still answers.
    let (status, body) = w.test_host.http_get(rig, domain, "/", REQUEST_TIMEOUT)?;
    ensure!(
        status == 200 && body.contains("Hello from nvs_wren"),
        "{status} {body}"
    );
    let (status, _) = w.source.http_get(rig, domain, "/", REQUEST_TIMEOUT)?;
    ensure!(status == 200, "the source's site: {status}");
    Ok(())
}
