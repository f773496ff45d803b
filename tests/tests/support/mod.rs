//! What several end-to-end tests share: a controller plus enrolled hosts,
//! and reading the controller's answers (grpcurl's proto3 JSON).

#![allow(dead_code)]

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, bail};
use navette_tests::{Agent, AgentKind, AgentSpec, Controller, ControllerSpec, Netns, Rig};
use serde_json::Value;

pub const CONTROLLER_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// Starts the controller in its own namespace.
pub fn controller(rig: &Rig, spec: ControllerSpec) -> anyhow::Result<Controller> {
    let ctl = rig.add_namespace("ctl", CONTROLLER_ADDR)?;
    rig.start_controller(&ctl, spec)
}

/// Creates a join token for `host` (its namespace's host name is the host
/// id) and starts its agent.
pub fn enrol(
    rig: &Rig,
    host: &Netns,
    kind: AgentKind,
    stack_version: &str,
) -> anyhow::Result<Agent> {
    let token = rig.create_join_token(host.host(), kind)?;
    rig.start_agent(
        host,
        AgentSpec {
            kind,
            stack_version: stack_version.to_owned(),
            token,
            ..AgentSpec::default()
        },
    )
}

/// `Hosts/ListHosts` as the operator, by host id.
pub fn hosts(rig: &Rig) -> anyhow::Result<Vec<Value>> {
    let answer = rig.grpcurl_json("navette.v1.Hosts/ListHosts", &serde_json::json!({}))?;
    Ok(list(&answer, "hosts"))
}

pub fn host(rig: &Rig, id: &str) -> anyhow::Result<Value> {
    hosts(rig)?
        .into_iter()
        .find(|h| str_of(h, "id") == id)
        .with_context(|| format!("host {id} is not listed"))
}

/// The repeated field `name` of a grpcurl answer (absent when empty).
pub fn list(value: &Value, name: &str) -> Vec<Value> {
    value
        .get(name)
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// A string field of a grpcurl answer ("" when absent, as proto3 omits
/// defaults).
pub fn str_of<'a>(value: &'a Value, name: &str) -> &'a str {
    value.get(name).and_then(Value::as_str).unwrap_or("")
}

/// Waits until every host in `ids` is online and has reported an inventory.
pub fn wait_online_with_inventory(rig: &Rig, ids: &[&str]) -> anyhow::Result<()> {
    rig.wait_until(
        "hosts online with an inventory",
        Duration::from_secs(60),
        || {
            let hosts = hosts(rig)?;
            Ok(ids.iter().all(|id| {
                hosts.iter().any(|h| {
                    str_of(h, "id") == *id
                        && str_of(h, "state") == "HOST_STATE_ONLINE"
                        && !str_of(h, "inventoryUpdatedAt").is_empty()
                })
            }))
        },
    )
}

/// grpcurl's error output must show `code` and contain `reason`.
pub fn expect_refusal(
    output: &std::process::Output,
    code: &str,
    reason: &str,
) -> anyhow::Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    if output.status.success() {
        bail!(
            "expected {code} ({reason}), but the call succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
    }
    if !stderr.contains(&format!("Code: {code}")) || !stderr.contains(reason) {
        bail!("expected {code} with {reason:?}, got: {stderr}");
    }
    Ok(())
}

/// Calls a `navette.v1.Tests` method as the control panel.
pub fn panel(rig: &Rig, method: &str, request: Value) -> anyhow::Result<Value> {
    let access = rig.controller_access()?;
    rig.grpcurl_json_as(
        &access.panel,
        &format!("navette.v1.Tests/{method}"),
        &request,
    )
}

/// Waits until test `id` reaches `state`; fails early if it fails.
pub fn wait_for_test(rig: &Rig, id: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
    let mut last = Value::Null;
    rig.wait_until(&format!("test {id} {state}"), timeout, || {
        last = panel(rig, "GetTest", serde_json::json!({"id": id}))?;
        if str_of(&last, "state") == "STATE_FAILED" && state != "STATE_FAILED" {
            bail!("the test failed: {}", str_of(&last, "error"));
        }
        Ok(str_of(&last, "state") == state)
    })
    .with_context(|| format!("last seen: {last}"))?;
    Ok(last)
}

/// A progress counter of a test (proto3 JSON writes 64-bit numbers as
/// strings).
pub fn counter(test: &Value, name: &str) -> u64 {
    test["progress"][name]
        .as_str()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// A file of random bytes (incompressible, like customer uploads), owned
/// by `owner`.
pub fn random_file(path: &std::path::Path, megabytes: u64, owner: &str) -> anyhow::Result<()> {
    use std::process::Command;
    let status = Command::new("dd")
        .args([
            "if=/dev/urandom",
            "bs=1M",
            &format!("count={megabytes}"),
            "status=none",
        ])
        .arg(format!("of={}", path.display()))
        .status()?;
    anyhow::ensure!(status.success(), "writing {}", path.display());
    let status = Command::new("chown")
        .arg(format!("{owner}:{owner}"))
        .arg(path)
        .status()?;
    anyhow::ensure!(status.success(), "chown {}", path.display());
    Ok(())
}

/// `account`'s control group on `host`, as the agent makes it under the
/// rig's cgroup mount (where the freeze freezes it).
pub fn account_cgroup(host: &Netns, account: &str) -> std::path::PathBuf {
    let mount = std::path::Path::new(navette_tests::web::AGENT_CGROUP_MOUNT);
    let root = if mount.join("freezer").join("cgroup.procs").exists() {
        mount.join("freezer")
    } else {
        mount.to_path_buf()
    };
    root.join(host.cgroup_base()).join(account)
}

/// Whether the control group at `group` is frozen now (cgroup v2's
/// `cgroup.freeze`, or v1's `freezer.state`).
pub fn group_frozen(group: &std::path::Path) -> bool {
    if let Ok(state) = std::fs::read_to_string(group.join("cgroup.freeze")) {
        return state.trim() == "1";
    }
    std::fs::read_to_string(group.join("freezer.state"))
        .map(|state| state.trim() != "THAWED")
        .unwrap_or(false)
}

/// Watches a control group's freezer every 5 ms on a thread until
/// dropped: the longest time it stayed frozen, as seen from outside.
pub struct FrozenWatch {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    longest: std::sync::Arc<std::sync::Mutex<Duration>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FrozenWatch {
    pub fn start(group: std::path::PathBuf) -> FrozenWatch {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let longest = std::sync::Arc::new(std::sync::Mutex::new(Duration::ZERO));
        let (s, l) = (stop.clone(), longest.clone());
        let thread = std::thread::spawn(move || {
            let mut since: Option<std::time::Instant> = None;
            while !s.load(Ordering::Relaxed) {
                match (group_frozen(&group), since) {
                    (true, None) => since = Some(std::time::Instant::now()),
                    (false, Some(_)) => since = None,
                    _ => {}
                }
                if let Some(at) = since {
                    let mut longest = l.lock().unwrap_or_else(|p| p.into_inner());
                    *longest = (*longest).max(at.elapsed());
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        FrozenWatch {
            stop,
            longest,
            thread: Some(thread),
        }
    }

    /// The longest frozen span seen so far (one still frozen counts up to
    /// now).
    pub fn longest(&self) -> Duration {
        *self.longest.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FrozenWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Waits (inside the controller's state database, so without a poll's
/// delay) until migration `id`'s freeze step recorded that its freeze
/// begins; at most `timeout`.
pub fn wait_freeze_started(
    controller: &Controller,
    id: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    wait_migration_row(controller, id, "freeze_started IS NOT NULL", timeout)
}

/// Waits inside the controller's state database until migration `id`'s
/// row meets `condition` (SQL on `migrations`); at most `timeout`.
pub fn wait_migration_row(
    controller: &Controller,
    id: &str,
    condition: &str,
    timeout: Duration,
) -> anyhow::Result<()> {
    let answer = controller.state_db().psql(
        "navette",
        &format!(
            "DO $$ DECLARE until timestamptz := clock_timestamp() + interval '{} ms'; BEGIN
               LOOP
                 EXIT WHEN EXISTS (SELECT 1 FROM migrations WHERE id = '{id}' AND {condition});
                 IF clock_timestamp() > until THEN RAISE EXCEPTION 'not reached in time'; END IF;
                 PERFORM pg_sleep(0.002);
               END LOOP;
             END $$; SELECT 'begun'",
            timeout.as_millis()
        ),
    );
    let answer = answer.with_context(|| format!("waiting for migration {id}: {condition}"))?;
    if !answer.contains("begun") {
        bail!("migration {id} did not reach {condition}: {answer}");
    }
    Ok(())
}

/// Waits until the controller's inventory lists `count` databases for
/// `account` (its host reported them).
pub fn wait_account_databases(rig: &Rig, account: &str, count: usize) -> anyhow::Result<()> {
    rig.wait_until(
        "the account's database in the inventory",
        Duration::from_secs(60),
        || {
            let answer = rig.grpcurl_json(
                "navette.v1.Accounts/GetAccount",
                &serde_json::json!({"name": account}),
            )?;
            Ok(list(&answer, "databases").len() == count)
        },
    )
}

/// The numbers of the `live <n>:...` orders in `database`'s `orders`
/// table (the rows a test's writer committed).
pub fn live_orders(server: &navette_tests::Postgres, database: &str) -> anyhow::Result<Vec<u64>> {
    Ok(server
        .psql(
            database,
            "SELECT substr(item, 6, strpos(item, ':') - 6) FROM orders WHERE item LIKE 'live %'",
        )?
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect())
}

/// The account's own process appending numbered lines to `lines.txt` in
/// its home every 10 ms, in the account's group on `host`.
pub fn account_lines(
    rig: &Rig,
    host: &Netns,
    account: &navette_tests::Account,
) -> anyhow::Result<navette_tests::load::LineAppender> {
    let group = account_cgroup(host, &account.name);
    navette_tests::load::LineAppender::start(
        rig,
        host,
        account.uid,
        account.gid,
        Some(&group),
        &account.home.join("lines.txt"),
        Duration::from_millis(10),
    )
}
