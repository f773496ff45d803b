//! Grants end and copies are owned, end to end: the test host's own agent
//! certificate, through grpcurl, can no longer read the account once its
//! test is ready, failed or deleted, and never holds more snapshot sessions
//! than the bound; a test copy is listed as a copy of its test, not as a
//! second account; deleting a test leaves none of the customer's logins on
//! the test host; a home or database the copy did not create is never
//! written into (the test fails, saying so); the removal of an old failed
//! test, retried while a newer test of the same account copies, leaves the
//! newer copy alone; a deletion during a copy wins over the copy's result;
//! and a test host that goes away mid-copy is shown on WatchTest at once.

mod support;

use std::net::Ipv4Addr;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::install::GRPCURL;
use navette_tests::{
    AccountSpec, Agent, AgentKind, Controller, ControllerSpec, MariaDb, Netns, PgVersion, Postgres,
    Rig,
};
use serde_json::{Value, json};
use support::{list, panel, str_of};

const SOURCE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const TEST_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);
const ACCOUNT: &str = "nvg_alice";
const MIGRATION: &str = "postgresql-15-to-18";
/// `MAX_SNAPSHOT_SESSIONS` of the agent's grants.
const SESSION_BOUND: usize = 4;

/// grpcurl's arguments to call `method` with `body` on the agent of `to`,
/// presenting `caller`'s own agent certificate (its files in the agent's
/// state directory), for at most `max_time` seconds.
fn as_agent(caller: &Agent, to: &Netns, method: &str, body: &Value, max_time: u32) -> Vec<String> {
    let state = caller.state_dir();
    let file = |name: &str| state.join(name).display().to_string();
    vec![
        "-cacert".to_owned(),
        file("ca.pem"),
        "-cert".to_owned(),
        file("agent.pem"),
        "-key".to_owned(),
        file("agent.key"),
        "-servername".to_owned(),
        navette_proto::identity::agent_server_name(to.host()),
        "-max-time".to_owned(),
        max_time.to_string(),
        "-d".to_owned(),
        body.to_string(),
        format!("{}:7445", to.addr()),
        method.to_owned(),
    ]
}

/// grpcurl with `args`, in the rig's client namespace (every host's agent
/// is reachable from there).
fn grpcurl(rig: &Rig, args: &[String]) -> anyhow::Result<Output> {
    rig.client()
        .command(GRPCURL)
        .args(args)
        .output()
        .context("running grpcurl")
}

/// [`grpcurl`], left running.
fn spawn_grpcurl(rig: &Rig, args: &[String]) -> anyhow::Result<Child> {
    rig.client()
        .command(GRPCURL)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting grpcurl")
}

/// `FileSource/ListTree` of `transfer_id` as the test host's agent.
fn list_tree(
    rig: &Rig,
    test_agent: &Agent,
    source: &Netns,
    transfer_id: &str,
) -> anyhow::Result<Output> {
    let args = as_agent(
        test_agent,
        source,
        "navette.v1.FileSource/ListTree",
        &json!({"transfer_id": transfer_id}),
        10,
    );
    grpcurl(rig, &args)
}

/// The result of a server start on another thread.
fn join<T>(started: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    started.map_err(|_| anyhow::anyhow!("a server start panicked"))?
}

fn start_test(rig: &Rig, request_id: &str) -> anyhow::Result<String> {
    let started = panel(
        rig,
        "TestMigration",
        json!({"request_id": request_id, "account": ACCOUNT, "migration_id": MIGRATION}),
    )?;
    Ok(str_of(&started, "id").to_owned())
}

fn wait_state(rig: &Rig, id: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    rig.wait_until(&format!("test {id} {state}"), timeout, || {
        last = panel(rig, "GetTest", json!({"id": id}))?;
        Ok(str_of(&last, "state") == state)
    })
    .with_context(|| format!("last seen: {last}"))?;
    Ok(last)
}

/// Waits until failed test `id` has run its removal of the partial copy
/// (the controller's audit of steps says so).
fn wait_failed_and_removed(rig: &Rig, controller: &Controller, id: &str) -> anyhow::Result<()> {
    rig.wait_until(
        &format!("test {id} failed and removed"),
        Duration::from_secs(60),
        || {
            let test = panel(rig, "GetTest", json!({"id": id}))?;
            let steps = controller.state_db().psql(
                "navette",
                &format!(
                    "SELECT count(*) FROM step_runs WHERE workflow_id = '{id}'
                 AND step = 'remove' AND finished_at IS NOT NULL"
                ),
            )?;
            Ok(str_of(&test, "state") == "STATE_FAILED" && steps.trim() == "1")
        },
    )
}

/// The customer's logins on the test host: PostgreSQL roles, MariaDB users.
fn logins(pg: &Postgres, maria: &MariaDb) -> anyhow::Result<(String, String)> {
    let roles = pg.psql(
        "postgres",
        &format!("SELECT string_agg(rolname, ',') FROM pg_roles WHERE rolname LIKE '{ACCOUNT}%'"),
    )?;
    let users = maria.sql(&format!(
        "SELECT COUNT(*) FROM mysql.user WHERE User LIKE '{ACCOUNT}%'"
    ))?;
    Ok((roles.trim().to_owned(), users.trim().to_owned()))
}

/// Shapes the source's outgoing link to `rate` (a copy then takes a while).
fn shape(host: &Netns, rate: &str) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.name(),
            "tc",
            "qdisc",
            "replace",
            "dev",
            "eth0",
        ])
        .args([
            "root", "tbf", "rate", rate, "burst", "256kb", "latency", "50ms",
        ])
        .status()?;
    ensure!(status.success(), "shaping the link of {}", host.host());
    Ok(())
}

fn unshape(host: &Netns) -> anyhow::Result<()> {
    let status = Command::new("ip")
        .args([
            "netns",
            "exec",
            host.name(),
            "tc",
            "qdisc",
            "del",
            "dev",
            "eth0",
            "root",
        ])
        .status()?;
    ensure!(status.success(), "unshaping the link of {}", host.host());
    Ok(())
}

/// What `ListAccounts` says of the account.
struct Listed {
    /// The hosts it is listed on as an account.
    accounts: Vec<String>,
    /// (host, test) of each copy of it.
    copies: Vec<(String, String)>,
}

fn listed(rig: &Rig) -> anyhow::Result<Listed> {
    let answer = rig.grpcurl_json_as(
        &rig.controller_access()?.panel,
        "navette.v1.Accounts/ListAccounts",
        &json!({}),
    )?;
    let accounts = list(&answer, "accounts")
        .iter()
        .filter(|a| str_of(a, "name") == ACCOUNT)
        .map(|a| str_of(a, "hostId").to_owned())
        .collect();
    let copies = list(&answer, "copies")
        .iter()
        .filter(|a| str_of(a, "name") == ACCOUNT)
        .map(|a| {
            (
                str_of(a, "hostId").to_owned(),
                str_of(a, "copyOfTest").to_owned(),
            )
        })
        .collect();
    Ok(Listed { accounts, copies })
}

#[test]
fn grants_end_and_copies_are_owned() -> anyhow::Result<()> {
    let rig = Rig::new("grants_copies")?;
    let controller = support::controller(&rig, ControllerSpec::default())?;
    let shared = rig.add_namespace("shared-1", SOURCE)?;
    let test_host = rig.add_namespace("test-1", TEST_HOST)?;
    let (_source_pg, target_pg, _source_maria, target_maria) =
        std::thread::scope(|s| -> anyhow::Result<_> {
            let a = s.spawn(|| shared.start_postgres(&rig, PgVersion::V15, 5432));
            let b = s.spawn(|| test_host.start_postgres(&rig, PgVersion::V18, 5432));
            let c = s.spawn(|| shared.start_mariadb(&rig));
            let d = s.spawn(|| test_host.start_mariadb_11_8(&rig));
            Ok((
                join(a.join())?,
                join(b.join())?,
                join(c.join())?,
                join(d.join())?,
            ))
        })?;
    let alice = rig.add_account(
        &shared,
        AccountSpec {
            name: ACCOUNT.into(),
            password: "alice-pw".into(),
            pg_databases: vec![ACCOUNT.into()],
            mariadb_databases: vec![format!("{ACCOUNT}_blog")],
            files: true,
        },
    )?;
    // 120 MiB at 64 Mbit/s: about 15 s of copying files, before the
    // databases.
    support::random_file(&alice.home.join("video.bin"), 120, &alice.name)?;
    support::enrol(&rig, &shared, AgentKind::Shared, "2024.1")?;
    let test_agent = support::enrol(&rig, &test_host, AgentKind::Test, "2026.1")?;
    support::wait_online_with_inventory(&rig, &["shared-1", "test-1"])?;
    rig.wait_until(
        "alice's databases in the inventory",
        Duration::from_secs(30),
        || {
            let account =
                rig.grpcurl_json("navette.v1.Accounts/GetAccount", &json!({"name": ACCOUNT}))?;
            Ok(list(&account, "databases").len() == 2)
        },
    )?;
    let copy_home = test_host.accounts_dir().join(ACCOUNT);

    // A first test. While its files copy, the test host's certificate
    // may hold the grant's bound of snapshot sessions, and no more.
    shape(&shared, "64mbit")?;
    let first = start_test(&rig, "g-1")?;
    let transfer = format!("{first}-g1");
    wait_state(&rig, &first, "STATE_COPYING", Duration::from_secs(30))?;
    let hold = as_agent(
        &test_agent,
        &shared,
        "navette.v1.PostgresSource/HoldSnapshot",
        &json!({"transfer_id": transfer, "server": "main", "database": ACCOUNT}),
        6,
    );
    // The copy itself may hold some of the grant's sessions at this moment
    // (its PostgreSQL snapshot, its MariaDB dump): ask for one more than
    // the bound, one at a time, and count what was held and refused.
    let mut asked = Vec::new();
    for _ in 0..=SESSION_BOUND {
        asked.push(spawn_grpcurl(&rig, &hold)?);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (mut held, mut refused) = (0, 0);
    for child in asked {
        let output = child.wait_with_output()?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if stderr.contains("Code: ResourceExhausted") && stderr.contains("snapshot sessions") {
            refused += 1;
        } else {
            ensure!(
                stderr.contains("DeadlineExceeded") || stderr.is_empty(),
                "a session within the bound is held until grpcurl leaves: {stderr}"
            );
            held += 1;
        }
    }
    ensure!(
        refused >= 1 && (SESSION_BOUND - 2..=SESSION_BOUND).contains(&held),
        "{held} sessions held and {refused} refused: a grant holds at most {SESSION_BOUND}, the copy's own included"
    );
    let progress = panel(&rig, "GetTest", json!({"id": first}))?;
    ensure!(
        str_of(&progress, "state") == "STATE_COPYING",
        "the bound was shown while the copy ran: {progress}"
    );
    let ready = support::wait_for_test(&rig, &first, "STATE_READY", Duration::from_secs(180))?;
    unshape(&shared)?;

    // Ready: the grant is gone, from memory and disk.
    support::expect_refusal(
        &list_tree(&rig, &test_agent, &shared, &transfer)?,
        "PermissionDenied",
        "was revoked",
    )?;
    ensure!(
        !shared
            .root()
            .join("agent/grants")
            .join(format!("{transfer}.json"))
            .exists(),
        "the grant file is removed on the source"
    );
    let (roles, users) = logins(&target_pg, &target_maria)?;
    ensure!(
        roles == ACCOUNT && users == "1",
        "the copy has the customer's logins while it lives: roles {roles:?}, users {users}"
    );
    // One account, where it lives; the test host holds a copy of the test.
    rig.wait_until("the copy listed as a copy", Duration::from_secs(30), || {
        let Listed { accounts, copies } = listed(&rig)?;
        Ok(accounts == ["shared-1"] && copies == [("test-1".to_owned(), first.clone())])
    })?;
    ensure!(
        str_of(&ready["connection"], "home") == copy_home.display().to_string(),
        "the copy's home: {ready}"
    );

    // Deleted: the copy goes, with the customer's logins.
    panel(&rig, "DeleteTest", json!({"id": first}))?;
    wait_state(&rig, &first, "STATE_DELETED", Duration::from_secs(60))?;
    ensure!(!copy_home.exists(), "the copy's home is removed");
    let (roles, users) = logins(&target_pg, &target_maria)?;
    ensure!(
        roles.is_empty() && users == "0",
        "no login of the customer is left on the test host: roles {roles:?}, MariaDB users {users}"
    );
    support::expect_refusal(
        &list_tree(&rig, &test_agent, &shared, &transfer)?,
        "PermissionDenied",
        "was revoked",
    )?;
    rig.wait_until("the copy no longer listed", Duration::from_secs(30), || {
        let Listed { accounts, copies } = listed(&rig)?;
        Ok(accounts == ["shared-1"] && copies.is_empty())
    })?;

    // A database the copy did not create is never written into: the test
    // fails, saying so, and the database is as it was.
    target_maria.sql(&format!(
        "CREATE DATABASE {ACCOUNT}_blog; CREATE TABLE {ACCOUNT}_blog.mine (v int);
         INSERT INTO {ACCOUNT}_blog.mine VALUES (42);"
    ))?;
    let failed = start_test(&rig, "g-2")?;
    let failure = wait_state(&rig, &failed, "STATE_FAILED", Duration::from_secs(120))?;
    ensure!(
        str_of(&failure, "error").contains("is not a copy made by Navette"),
        "the failure says why: {failure}"
    );
    wait_failed_and_removed(&rig, &controller, &failed)?;
    ensure!(
        target_maria.sql(&format!("SELECT v FROM {ACCOUNT}_blog.mine"))? == "42",
        "the database the copy did not create is untouched"
    );
    support::expect_refusal(
        &list_tree(&rig, &test_agent, &shared, &format!("{failed}-g1"))?,
        "PermissionDenied",
        "was revoked",
    )?;
    target_maria.sql(&format!("DROP DATABASE {ACCOUNT}_blog"))?;

    // Nor a home the copy did not create.
    std::fs::create_dir_all(&copy_home)?;
    std::fs::write(copy_home.join("mine.txt"), "not a copy\n")?;
    let refused_home = start_test(&rig, "g-2b")?;
    let failure = wait_state(&rig, &refused_home, "STATE_FAILED", Duration::from_secs(60))?;
    ensure!(
        str_of(&failure, "error").contains("is not a copy made by Navette"),
        "the failure says why: {failure}"
    );
    wait_failed_and_removed(&rig, &controller, &refused_home)?;
    ensure!(
        std::fs::read_dir(&copy_home)?.count() == 1
            && std::fs::read_to_string(copy_home.join("mine.txt"))? == "not a copy\n",
        "the home the copy did not create is as it was"
    );
    std::fs::remove_dir_all(&copy_home)?;

    // A new test copies; meanwhile the failed test is deleted, so its
    // removal runs again: the new copy is not touched.
    shape(&shared, "64mbit")?;
    let newer = start_test(&rig, "g-3")?;
    rig.wait_until(
        "the new copy writing files",
        Duration::from_secs(60),
        || {
            let test = panel(&rig, "GetTest", json!({"id": newer}))?;
            Ok(support::counter(&test, "bytesDone") > 8 << 20)
        },
    )?;
    panel(&rig, "DeleteTest", json!({"id": failed}))?;
    wait_state(&rig, &failed, "STATE_DELETED", Duration::from_secs(60))?;
    let during = panel(&rig, "GetTest", json!({"id": newer}))?;
    ensure!(
        str_of(&during, "state") == "STATE_COPYING",
        "the old removal ran while the new copy was copying: {during}"
    );
    support::wait_for_test(&rig, &newer, "STATE_READY", Duration::from_secs(180))?;
    let copied = std::fs::metadata(copy_home.join("video.bin"))
        .map(|m| m.len())
        .unwrap_or(0);
    ensure!(
        copied == 120 << 20,
        "the new copy is complete ({copied} bytes of video.bin)"
    );
    let tables = target_pg.psql(ACCOUNT, "SELECT count(*) FROM items")?;
    ensure!(tables.trim() != "0", "the new copy's database is there");
    panel(&rig, "DeleteTest", json!({"id": newer}))?;
    wait_state(&rig, &newer, "STATE_DELETED", Duration::from_secs(60))?;

    // A deletion during a copy wins: the copy's end does not make the test
    // ready, and the removal, refused while the transfer runs, is retried
    // until the copy is gone.
    let deleted = start_test(&rig, "g-4")?;
    rig.wait_until(
        "the last copy writing files",
        Duration::from_secs(60),
        || {
            let test = panel(&rig, "GetTest", json!({"id": deleted}))?;
            Ok(support::counter(&test, "bytesDone") > 8 << 20)
        },
    )?;
    panel(&rig, "DeleteTest", json!({"id": deleted}))?;
    let mut states = Vec::new();
    rig.wait_until("the test deleted", Duration::from_secs(180), || {
        let test = panel(&rig, "GetTest", json!({"id": deleted}))?;
        let state = str_of(&test, "state").to_owned();
        if states.last() != Some(&state) {
            states.push(state.clone());
        }
        Ok(state == "STATE_DELETED")
    })?;
    unshape(&shared)?;
    ensure!(
        !states.iter().any(|s| s == "STATE_READY"),
        "the deleted test was never ready: {states:?}"
    );
    ensure!(!copy_home.exists(), "the copy deleted mid-copy is removed");
    let (roles, users) = logins(&target_pg, &target_maria)?;
    ensure!(
        roles.is_empty() && users == "0",
        "no login left after a deletion mid-copy: roles {roles:?}, users {users}"
    );

    // The test host's agent dies mid-copy: WatchTest says so at once, with
    // the host, since when and until when the copy is retried; once the
    // agent is back the copy completes and the outage is cleared.
    shape(&shared, "64mbit")?;
    let cut = start_test(&rig, "g-5")?;
    rig.wait_until("the copy writing files", Duration::from_secs(60), || {
        let test = panel(&rig, "GetTest", json!({"id": cut}))?;
        Ok(support::counter(&test, "bytesDone") > 8 << 20)
    })?;
    let access = rig.controller_access()?;
    let (body, api) = (json!({"id": cut}).to_string(), access.api.to_string());
    let (watched, killed_at) = std::thread::scope(|s| -> anyhow::Result<_> {
        let watcher = s.spawn(|| {
            rig.grpcurl_as(
                &access.panel,
                &[
                    "-max-time",
                    "15",
                    "-d",
                    &body,
                    &api,
                    "navette.v1.Tests/WatchTest",
                ],
            )
        });
        std::thread::sleep(Duration::from_secs(2));
        let killed_at = chrono::Utc::now();
        test_agent.kill9();
        let output = join(watcher.join())?;
        Ok((output, killed_at))
    })?;
    let messages = serde_json::Deserializer::from_slice(&watched.stdout)
        .into_iter::<Value>()
        .collect::<Result<Vec<_>, _>>()?;
    let outage = messages
        .iter()
        .find_map(|m| m.get("outage").filter(|o| str_of(o, "hostId") == "test-1"))
        .cloned()
        .with_context(|| format!("WatchTest never said test-1 is out: {messages:?}"))?;
    let time = |name: &str| -> anyhow::Result<chrono::DateTime<chrono::Utc>> {
        Ok(chrono::DateTime::parse_from_rfc3339(str_of(&outage, name))
            .with_context(|| format!("{name} in {outage}"))?
            .to_utc())
    };
    let (since, until) = (time("since")?, time("retriedUntil")?);
    ensure!(
        since >= killed_at - chrono::Duration::seconds(1)
            && since - killed_at < chrono::Duration::seconds(10)
            && until > since + chrono::Duration::minutes(5),
        "the outage is shown at once, with how long it is retried: {outage} (agent killed at {killed_at})"
    );
    test_agent.restart()?;
    let ready = support::wait_for_test(&rig, &cut, "STATE_READY", Duration::from_secs(180))?;
    unshape(&shared)?;
    ensure!(
        ready.get("outage").is_none(),
        "the outage is cleared once the copy got through: {ready}"
    );
    Ok(())
}
