//! An account's sites, run by the real agent through its gRPC API: real
//! nginx, real PHP-FPM (Debian 12's 8.2, or Debian 13's 8.4 chrooted),
//! real PostgreSQL and MariaDB, the account's processes in a cgroup v1
//! freezer group, requests from the client namespace by domain name.
//!
//! What a customer and an operator would check:
//! - the sample site answers by its domain with its rows from both of its
//!   databases, from a pool running as the account in the account's own
//!   group, behind a socket only the web server's user may open, and a
//!   customer's script cannot read outside its home; starting it again
//!   changes nothing;
//! - frozen, a request waits instead of failing, and completes once
//!   thawed;
//! - the agent restarted, the site never stopped answering;
//! - a hostile domain, a document root leaving the home, a domain another
//!   account serves: each refused with a message saying so, nothing
//!   written;
//! - stopped, the site no longer answers while another account's still
//!   does;
//! - on a new-stack host, the same files run on PHP 8.4.

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use navette_proto::v1::agent_client::AgentClient;
use navette_proto::v1::{
    GetInventoryRequest, SetSitesFrozenRequest, Site, StartSitesRequest, StartSitesResponse,
    StopSitesRequest,
};
use navette_tests::{
    Account, AccountSpec, Agent, AgentKind, AgentSpec, Controller, ControllerSpec, Netns, Rig,
    sample_domains,
};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// A host with PostgreSQL, MariaDB, nginx, an enrolled agent and accounts
/// with the sample site.
struct World {
    rig: Rig,
    controller: Controller,
    host: Netns,
    agent: Agent,
    accounts: Vec<Account>,
}

impl World {
    fn new(test: &str, stack_version: &str, accounts: &[&str]) -> anyhow::Result<World> {
        let rig = Rig::new(test)?;
        let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
        let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
        let host = rig.add_namespace("web-1", Ipv4Addr::new(192, 0, 2, 11))?;
        host.start_postgres(&rig, navette_tests::PgVersion::V15, 5432)?;
        host.start_mariadb(&rig)?;
        host.start_web_server(&rig)?;
        let mut created = Vec::new();
        for name in accounts {
            created.push(rig.add_account(
                &host,
                AccountSpec {
                    name: (*name).to_owned(),
                    password: format!("{name}-secret"),
                    pg_databases: vec![format!("{name}_pg")],
                    mariadb_databases: vec![format!("{name}_shop")],
                    files: true,
                },
            )?);
        }
        let token = rig.create_join_token("web-1", AgentKind::Shared)?;
        let agent = rig.start_agent(
            &host,
            AgentSpec {
                token,
                stack_version: stack_version.to_owned(),
                ..AgentSpec::default()
            },
        )?;
        Ok(World {
            rig,
            controller,
            host,
            agent,
            accounts: created,
        })
    }

    /// Calls the agent from the client namespace as the controller does.
    fn call<T: Send>(
        &self,
        call: impl AsyncFnOnce(&mut AgentClient<tonic::transport::Channel>) -> Result<T, tonic::Status>
        + Send,
    ) -> anyhow::Result<Result<T, tonic::Status>> {
        self.rig.client().run_in(|| async {
            let channel = self.agent.controller_channel(&self.controller)?;
            let mut client = AgentClient::new(channel);
            Ok(call(&mut client).await)
        })
    }

    fn start(
        &self,
        request: StartSitesRequest,
    ) -> anyhow::Result<Result<StartSitesResponse, tonic::Status>> {
        self.call(async move |client| client.start_sites(request).await.map(|r| r.into_inner()))
    }

    fn start_defined(&self, account: &str) -> anyhow::Result<StartSitesResponse> {
        let request = StartSitesRequest {
            account: account.to_owned(),
            ..StartSitesRequest::default()
        };
        self.start(request)?
            .map_err(|status| anyhow::anyhow!("StartSites {account}: {status:?}"))
    }

    /// GET `/` of `domain` on the host: (status, body).
    fn get(&self, domain: &str) -> anyhow::Result<(u16, String)> {
        self.host.http_get(&self.rig, domain, "/", REQUEST_TIMEOUT)
    }

    /// Waits until `domain` answers 200 (nginx reloads asynchronously).
    fn wait_answering(&self, domain: &str) -> anyhow::Result<String> {
        let mut body = String::new();
        self.rig.wait_until(
            &format!("{domain} answering"),
            Duration::from_secs(10),
            || {
                let (status, text) = self.get(domain)?;
                body = text;
                ensure!(status == 200, "status {status}: {body}");
                Ok(true)
            },
        )?;
        Ok(body)
    }

    /// Server block files and run directories now on the host.
    fn written(&self) -> anyhow::Result<Vec<String>> {
        let mut names = Vec::new();
        for dir in [self.host.server_blocks_dir(), self.host.sites_run_dir()] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                names.push(entry?.file_name().to_string_lossy().into_owned());
            }
        }
        names.sort();
        Ok(names)
    }
}

/// What the sample page must print for `account` on PHP `php_prefix`.
fn check_page(body: &str, account: &str, php_prefix: &str) -> anyhow::Result<()> {
    let rows = navette_tests::SAMPLE_ROWS.join(",");
    for line in [
        format!("account: {account}"),
        format!("postgresql: {rows}"),
        format!("mariadb: {rows}"),
    ] {
        ensure!(
            body.lines().any(|l| l == line),
            "{line:?} missing from the page:\n{body}"
        );
    }
    ensure!(
        body.lines()
            .any(|l| l.starts_with(&format!("php: {php_prefix}"))),
        "the page does not run on PHP {php_prefix}:\n{body}"
    );
    Ok(())
}

#[test]
fn an_accounts_site_runs_freezes_survives_an_agent_restart_and_stops() -> anyhow::Result<()> {
    let world = World::new("sites_lifecycle", "2024.1", &["sitealice", "sitebob"])?;
    let [alice, bob] = [&world.accounts[0], &world.accounts[1]];
    let alice_domain = &sample_domains(&alice.name)[0];
    let bob_domain = &sample_domains(&bob.name)[0];

    // Before: nothing serves the domain (the default server's 404).
    ensure!(
        world.get(alice_domain)?.0 == 404,
        "a site answered before StartSites"
    );

    // The inventory reports the sites the definitions give.
    let inventory = world
        .call(async |client| client.get_inventory(GetInventoryRequest::default()).await)??
        .into_inner();
    let reported = inventory
        .accounts
        .iter()
        .find(|a| a.name == alice.name)
        .context("alice missing from the inventory")?;
    ensure!(
        reported.sites
            == [Site {
                domains: sample_domains(&alice.name),
                document_root: "www".into(),
                runtime: "php".into(),
            }],
        "inventory sites: {:?}",
        reported.sites
    );

    // Started from the host's definitions: the page shows both databases.
    let started_at = Instant::now();
    let started = world.start_defined(&alice.name)?;
    ensure!(!started.already_running, "{started:?}");
    let body = world.wait_answering(alice_domain)?;
    eprintln!(
        "alice's site answered {:?} after StartSites:\n{body}",
        started_at.elapsed()
    );
    check_page(&body, &alice.name, "8.2.")?;
    let www = &sample_domains(&alice.name)[1];
    check_page(&world.wait_answering(www)?, &alice.name, "8.2.")?;

    // The pool runs as the account, in the account's own group.
    let group = std::path::Path::new("/sys/fs/cgroup/freezer")
        .join(world.host.cgroup_base())
        .join(&alice.name);
    let procs = std::fs::read_to_string(group.join("cgroup.procs"))
        .with_context(|| format!("reading {}", group.display()))?;
    let pids: Vec<&str> = procs.lines().collect();
    ensure!(!pids.is_empty(), "no process in {}", group.display());
    let workers = pids
        .iter()
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|status| {
                status.lines().any(|l| {
                    l.starts_with("Uid:")
                        && l.split_whitespace().nth(1) == Some(&alice.uid.to_string())
                })
            })
        })
        .count();
    ensure!(
        workers >= 1,
        "no worker of the group runs as uid {}: {pids:?}",
        alice.uid
    );

    // Only the web server's user may connect to the pool.
    let socket = world
        .host
        .sites_run_dir()
        .join(&alice.name)
        .join("php-fpm.sock");
    let meta = std::fs::metadata(&socket).with_context(|| format!("{}", socket.display()))?;
    let www_data = nix::unistd::User::from_name("www-data")?.context("no www-data")?;
    ensure!(
        meta.mode() & 0o777 == 0o600 && meta.uid() == www_data.uid.as_raw(),
        "socket {} has mode {:o}, owner {}",
        socket.display(),
        meta.mode() & 0o777,
        meta.uid()
    );
    // A customer's script reads nothing outside its home and private tmp.
    let peek = alice.home.join("www/peek.php");
    std::fs::write(
        &peek,
        "<?php\nvar_dump(@file_get_contents('/etc/hostname'));\necho ini_get('open_basedir');\n",
    )?;
    std::os::unix::fs::chown(&peek, Some(alice.uid), Some(alice.gid))?;
    let (status, body) =
        world
            .host
            .http_get(&world.rig, alice_domain, "/peek.php", REQUEST_TIMEOUT)?;
    ensure!(status == 200, "peek.php: {status} {body}");
    ensure!(
        body.starts_with("bool(false)"),
        "a script read /etc/hostname: {body}"
    );
    ensure!(
        body.contains(&format!("{}/", alice.home.display())),
        "open_basedir: {body}"
    );

    // Again: harmless.
    let again = world.start_defined(&alice.name)?;
    ensure!(
        again.already_running,
        "a second start did not find the pool: {again:?}"
    );
    check_page(&world.wait_answering(alice_domain)?, &alice.name, "8.2.")?;

    // Frozen: a request waits, and completes once thawed.
    world.call(async |client| {
        client
            .set_sites_frozen(SetSitesFrozenRequest {
                account: alice.name.clone(),
                frozen: true,
                max_frozen_ms: 8000,
            })
            .await
    })??;
    let waiting = std::thread::scope(|scope| -> anyhow::Result<(u16, String, Duration)> {
        let sent = Instant::now();
        let world_ref = &world;
        let request = scope.spawn(move || {
            let world = world_ref;
            world
                .host
                .http_get(&world.rig, alice_domain, "/", Duration::from_secs(15))
                .map(|(status, body)| (status, body, sent.elapsed()))
        });
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(
            !request.is_finished(),
            "a request to a frozen site did not wait"
        );
        world.call(async |client| {
            client
                .set_sites_frozen(SetSitesFrozenRequest {
                    account: alice.name.clone(),
                    frozen: false,
                    max_frozen_ms: 0,
                })
                .await
        })??;
        request
            .join()
            .map_err(|_| anyhow::anyhow!("the request thread panicked"))?
    })?;
    eprintln!(
        "a request sent while frozen completed after {:?}",
        waiting.2
    );
    ensure!(
        waiting.0 == 200,
        "the waiting request failed: {} {}",
        waiting.0,
        waiting.1
    );
    check_page(&waiting.1, &alice.name, "8.2.")?;
    ensure!(
        waiting.2 >= Duration::from_millis(1400),
        "it did not wait: {:?}",
        waiting.2
    );

    // The agent restarted: the site never stopped answering, and its
    // pool is the same process.
    let pid_file = world
        .host
        .sites_run_dir()
        .join(&alice.name)
        .join("php-fpm.pid");
    let master_before = std::fs::read_to_string(&pid_file)?;
    let stop = AtomicBool::new(false);
    let (ok, failed) = (
        AtomicU32::new(0),
        Arc::new(std::sync::Mutex::new(Vec::new())),
    );
    std::thread::scope(|scope| -> anyhow::Result<()> {
        scope.spawn(|| {
            while !stop.load(Ordering::Acquire) {
                match world.get(alice_domain) {
                    Ok((200, _)) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    other => failed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let restarted = world.agent.restart();
        // Requests go on for a while after the restart too.
        let after = (ok.load(Ordering::Relaxed), Instant::now());
        while ok.load(Ordering::Relaxed) < after.0 + 10
            && after.1.elapsed() < Duration::from_secs(5)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Release);
        restarted
    })?;
    let failed = failed.lock().unwrap_or_else(|p| p.into_inner()).clone();
    eprintln!(
        "during the agent restart: {} answers, {} failures",
        ok.load(Ordering::Relaxed),
        failed.len()
    );
    ensure!(
        failed.is_empty(),
        "the site failed during the agent restart: {failed:?}"
    );
    ensure!(ok.load(Ordering::Relaxed) >= 10, "too few requests to tell");
    let master_after = std::fs::read_to_string(&pid_file)?;
    ensure!(
        master_before == master_after,
        "the pool was restarted: {master_before} then {master_after}"
    );
    let adopted = world.start_defined(&alice.name)?;
    ensure!(
        adopted.already_running,
        "the restarted agent did not find the pool: {adopted:?}"
    );

    // Bob's site, on the same host.
    world.start_defined(&bob.name)?;
    check_page(&world.wait_answering(bob_domain)?, &bob.name, "8.2.")?;

    // Hostile input: refused, nothing written.
    let before = world.written()?;
    // A customer's link to another account's files, given as its root.
    std::os::unix::fs::symlink("../sitealice/www", bob.home.join("www-alice"))?;
    let hostile = |domains: Vec<String>, document_root: &str| StartSitesRequest {
        account: bob.name.clone(),
        sites: vec![Site {
            domains,
            document_root: document_root.into(),
            runtime: "php".into(),
        }],
        ..StartSitesRequest::default()
    };
    for (request, expected, code) in [
        (
            hostile(vec!["a.example; include /etc/shadow".into()], "www"),
            "\"a.example; include /etc/shadow\" is not a host name",
            tonic::Code::InvalidArgument,
        ),
        (
            hostile(vec!["bob-two.example".into()], "../sitealice/www"),
            "leaves the home",
            tonic::Code::InvalidArgument,
        ),
        (
            hostile(vec!["bob-three.example".into()], "www-alice"),
            "outside the home",
            tonic::Code::FailedPrecondition,
        ),
        (
            hostile(vec![alice_domain.clone()], "www"),
            &format!(
                "domain {alice_domain} is already served on this host by account {}",
                alice.name
            ),
            tonic::Code::AlreadyExists,
        ),
    ] {
        let status = world
            .start(request)?
            .expect_err("a hostile start was accepted");
        eprintln!("refused: {status:?}");
        ensure!(status.code() == code, "{status:?}");
        ensure!(
            status.message().contains(expected),
            "{:?} does not say {expected:?}",
            status.message()
        );
    }
    // A definition file the panel got wrong is refused the same way.
    let definitions = world.host.site_definitions_dir();
    let bob_definition = definitions.join(format!("{}.toml", bob.name));
    let bob_sites = std::fs::read_to_string(&bob_definition)?;
    std::fs::write(
        &bob_definition,
        "[[site]]\ndomains = [\"bob.example\\\"; include /etc/shadow; #\"]\n",
    )?;
    let status = world
        .start(StartSitesRequest {
            account: bob.name.clone(),
            ..StartSitesRequest::default()
        })?
        .expect_err("a hostile definition was accepted");
    ensure!(
        status.message().contains("is not a host name"),
        "{status:?}"
    );
    std::fs::write(&bob_definition, bob_sites)?;
    ensure!(
        world.written()? == before,
        "a refused start wrote something: {:?} then {:?}",
        before,
        world.written()?
    );
    // A copy this host does not hold.
    let status = world
        .start(StartSitesRequest {
            account: bob.name.clone(),
            copy_id: "t-unknown".into(),
            ..StartSitesRequest::default()
        })?
        .expect_err("a start from a copy that is not here was accepted");
    ensure!(status.code() == tonic::Code::NotFound, "{status:?}");
    ensure!(status.message().contains("no copy t-unknown"), "{status:?}");
    // Every refusal is counted; none was a failure.
    let metrics = world.agent.scrape_metrics()?;
    let count = |outcome: &str| {
        metrics.value(
            "navette_agent_sites_operations_total",
            &[("operation", "start"), ("outcome", outcome)],
        )
    };
    ensure!(
        count("refused") == Some(6.0),
        "refused starts: {:?}",
        count("refused")
    );
    ensure!(
        count("failed") == Some(0.0),
        "failed starts: {:?}",
        count("failed")
    );
    // Alice's own domain is still hers.
    check_page(&world.wait_answering(alice_domain)?, &alice.name, "8.2.")?;

    // Stopped: alice's site no longer answers; bob's still does.
    let stopped = world
        .call(async |client| {
            client
                .stop_sites(StopSitesRequest {
                    account: alice.name.clone(),
                })
                .await
        })??
        .into_inner();
    ensure!(stopped.stopped, "{stopped:?}");
    world
        .rig
        .wait_until("alice's site gone", Duration::from_secs(10), || {
            Ok(world.get(alice_domain)?.0 == 404)
        })?;
    check_page(&world.wait_answering(bob_domain)?, &bob.name, "8.2.")?;
    let group_left = std::fs::read_to_string(group.join("cgroup.procs")).unwrap_or_default();
    ensure!(
        group_left.trim().is_empty(),
        "processes left in alice's group: {group_left}"
    );
    // Stopping again is harmless.
    let again = world
        .call(async |client| {
            client
                .stop_sites(StopSitesRequest {
                    account: alice.name.clone(),
                })
                .await
        })??
        .into_inner();
    ensure!(!again.stopped, "{again:?}");
    Ok(())
}

#[test]
fn the_new_stack_runs_the_same_site_on_php_8_4() -> anyhow::Result<()> {
    let world = World::new("sites_new_stack", "2026.1", &["sitenew"])?;
    let account = &world.accounts[0];
    let domain = &sample_domains(&account.name)[0];
    world.start_defined(&account.name)?;
    let body = world.wait_answering(domain)?;
    eprintln!("{body}");
    check_page(&body, &account.name, "8.4.")?;
    Ok(())
}
