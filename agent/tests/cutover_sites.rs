//! The cutover's freeze and forward, through the real agents over mutual
//! TLS: real nginx and PHP-FPM on two hosts, the account's processes in a
//! cgroup v1 freezer group, requests from the client namespace.
//!
//! - FreezeAccount stops every process of the account's user, also one
//!   the customer started outside its sites (a shell loop): it writes
//!   nothing while frozen, goes on when thawed, a freeze nobody thaws
//!   ends by itself at its deadline, and one whose agent was killed ends
//!   when the agent starts again;
//! - ForwardSites on the old host: a request held by the frozen pool is
//!   answered, without error, by the new host once the switch happened;
//!   new requests to the old host's address for the account's domain are
//!   answered by the new host, which sees the client's address;
//!   UnforwardSites brings the old host's own site back.

mod cutover_support;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use cutover_support::World;
use navette_proto::v1::{
    ForwardSitesRequest, FreezeAccountRequest, FreezeAccountResponse, StartSitesRequest,
    ThawAccountRequest, UnforwardSitesRequest,
};
use navette_tests::rig::CLIENT_ADDR;
use navette_tests::{AccountSpec, sample_domains};

const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 12);

/// A page saying which host answered and what it was told of the client.
const WHOAMI: &str = "<?php\nheader('Content-Type: text/plain');\n\
echo 'server: ', $_SERVER['SERVER_ADDR'], \"\\n\";\n\
echo 'real-ip: ', $_SERVER['HTTP_X_REAL_IP'] ?? '', \"\\n\";\n\
echo 'forwarded-for: ', $_SERVER['HTTP_X_FORWARDED_FOR'] ?? '', \"\\n\";\n";

fn write_owned(path: &Path, text: &str, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    Ok(())
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let (_, rest) = stat.rsplit_once(')')?;
                    rest.split_whitespace().nth(1)?.parse::<u32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

fn freeze(migration: &str, account: &str, deadline_ms: u32) -> FreezeAccountRequest {
    FreezeAccountRequest {
        migration_id: migration.into(),
        account: account.into(),
        deadline_ms,
    }
}

/// Freezes `account` for `migration`. A freeze the kernel could not
/// complete within the agent's time (a task of the loop caught in an
/// uninterruptible wait on a loaded machine) is refused and thawed, and is
/// asked once more, as the migration's freeze step does. Returns the answer
/// and when the call that held began.
fn freeze_held(
    world: &World,
    agent: &navette_tests::Agent,
    migration: &str,
    account: &str,
    deadline_ms: u32,
) -> anyhow::Result<(FreezeAccountResponse, Instant)> {
    let ask = || {
        world.call(agent, async |c| {
            c.freeze_account(freeze(migration, account, deadline_ms))
                .await
                .map(|r| r.into_inner())
        })
    };
    let started = Instant::now();
    match ask()? {
        Err(status) if status.message().contains("did not freeze within") => {
            eprintln!(
                "freeze {migration} refused, asked again: {}",
                status.message()
            );
            let started = Instant::now();
            Ok((ask()??, started))
        }
        answer => Ok((answer?, started)),
    }
}

fn thaw(migration: &str, account: &str) -> ThawAccountRequest {
    ThawAccountRequest {
        migration_id: migration.into(),
        account: account.into(),
        end_processes: false,
    }
}

#[test]
fn every_process_of_the_account_freezes_and_thaws_and_a_freeze_ends_at_its_deadline()
-> anyhow::Result<()> {
    let world = World::new("cutover_freeze")?;
    let host = world.rig.add_namespace("old-1", OLD)?;
    let account = world.rig.add_account(
        &host,
        AccountSpec {
            name: "cutfrank".into(),
            password: "cutfrank-secret".into(),
            files: false,
            ..AccountSpec::default()
        },
    )?;
    let agent = world.agent(&host, "old-1")?;

    // A loop the customer runs by hand on the host, outside any site: as
    // its user.
    let ticks = account.home.join("ticks");
    let mut looping = host
        .command("runuser")
        .args(["-u", &account.name, "--", "sh", "-c"])
        .arg("while :; do echo x >> \"$0\"; sleep 0.02; done")
        .arg(&ticks)
        .stdin(Stdio::null())
        .spawn()?;
    let size = || std::fs::metadata(&ticks).map(|m| m.len()).unwrap_or(0);
    let grows = |within: Duration| {
        let before = size();
        std::thread::sleep(within);
        size() > before
    };
    world
        .rig
        .wait_until("the loop writes", Duration::from_secs(5), || Ok(size() > 0))?;
    ensure!(grows(Duration::from_millis(300)), "the loop does not write");

    let (frozen, _) = freeze_held(&world, &agent, "m-frz-1", &account.name, 10_000)?;
    eprintln!("frozen: {frozen:?}");
    ensure!(
        frozen.moved_processes >= 1,
        "the loop was not moved into the group: {frozen:?}"
    );
    ensure!(!grows(Duration::from_millis(600)), "a frozen loop wrote");
    let group = Path::new("/sys/fs/cgroup/freezer")
        .join(host.cgroup_base())
        .join(&account.name);
    if group.exists() {
        let state = std::fs::read_to_string(group.join("freezer.state"))?;
        ensure!(state.trim() == "FROZEN", "freezer.state: {state}");
    }
    // Idempotent; another migration is refused.
    let again = world.call(&agent, async |c| {
        c.freeze_account(freeze("m-frz-1", &account.name, 10_000))
            .await
            .map(|r| r.into_inner())
    })??;
    ensure!(again.already_frozen, "{again:?}");
    let other = world
        .call(&agent, async |c| {
            c.freeze_account(freeze("m-frz-other", &account.name, 10_000))
                .await
        })?
        .expect_err("another migration froze the account");
    ensure!(other.code() == tonic::Code::FailedPrecondition, "{other:?}");

    let thawed = world.call(&agent, async |c| {
        c.thaw_account(thaw("m-frz-1", &account.name))
            .await
            .map(|r| r.into_inner())
    })??;
    ensure!(thawed.thawed, "{thawed:?}");
    // The loop is back where it was: the account's group (which
    // StopSites empties; this account has no sites) empties again (a
    // `sleep` the loop forked inside it before the freeze ends by itself).
    if group.exists() {
        world.rig.wait_until(
            "the loop out of the account's group",
            Duration::from_secs(5),
            || {
                Ok(std::fs::read_to_string(group.join("cgroup.procs"))?
                    .trim()
                    .is_empty())
            },
        )?;
    }
    eprintln!("thawed in {} µs", thawed.took_us);
    ensure!(
        grows(Duration::from_millis(400)),
        "a thawed loop does not write"
    );

    // Nobody thaws: the deadline does.
    let (_, started) = freeze_held(&world, &agent, "m-frz-2", &account.name, 1200)?;
    ensure!(
        !grows(Duration::from_millis(500)),
        "the short freeze did not hold"
    );
    world
        .rig
        .wait_until("the deadline thaws", Duration::from_secs(10), || {
            Ok(grows(Duration::from_millis(100)))
        })?;
    let resumed = started.elapsed();
    eprintln!("a 1200 ms freeze ended by itself; the loop resumed after {resumed:?}");
    ensure!(
        resumed >= Duration::from_millis(1100),
        "thawed before its deadline: {resumed:?}"
    );
    let late = world.call(&agent, async |c| {
        c.thaw_account(thaw("m-frz-2", &account.name))
            .await
            .map(|r| r.into_inner())
    })??;
    ensure!(!late.thawed, "{late:?}");

    // The agent killed while the account is frozen: its restart thaws it.
    world.call(&agent, async |c| {
        c.freeze_account(freeze("m-frz-3", &account.name, 30_000))
            .await
    })??;
    ensure!(
        !grows(Duration::from_millis(300)),
        "the third freeze did not hold"
    );
    agent.kill9();
    ensure!(
        !grows(Duration::from_millis(300)),
        "the freeze ended with the agent"
    );
    agent.restart()?;
    world
        .rig
        .wait_until("the restarted agent thaws", Duration::from_secs(10), || {
            Ok(grows(Duration::from_millis(100)))
        })?;
    eprintln!("the restarted agent thawed what the killed one had frozen");

    // The loop's shell (runuser's child), then runuser.
    for pid in children_of(looping.id()) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let _ = looping.kill();
    let _ = looping.wait();
    Ok(())
}

#[test]
fn a_held_request_is_answered_by_the_new_host_and_forwarding_keeps_the_client_address()
-> anyhow::Result<()> {
    let world = World::new("cutover_forward")?;
    let name = "cutsite";
    let domain = sample_domains(name)[0].clone();
    let mut hosts = Vec::new();
    for (label, address) in [("old-1", OLD), ("new-1", NEW)] {
        let host = world.rig.add_namespace(label, address)?;
        host.start_web_server(&world.rig)?;
        let account = world.rig.add_account(
            &host,
            AccountSpec {
                name: name.into(),
                password: "cutsite-secret".into(),
                files: true,
                ..AccountSpec::default()
            },
        )?;
        write_owned(
            &account.home.join("www/whoami.php"),
            WHOAMI,
            account.uid,
            account.gid,
        )?;
        let agent = world.agent(&host, label)?;
        world.call(&agent, async |c| {
            c.start_sites(StartSitesRequest {
                account: name.into(),
                ..StartSitesRequest::default()
            })
            .await
        })??;
        hosts.push((host, agent));
    }
    let [(old, old_agent), (new, _new_agent)] = &hosts[..] else {
        anyhow::bail!("two hosts expected");
    };
    let whoami = |host: &navette_tests::Netns, timeout: Duration| {
        host.http_get(&world.rig, &domain, "/whoami.php", timeout)
    };
    for (host, address) in [(old, OLD), (new, NEW)] {
        world
            .rig
            .wait_until("the site answers", Duration::from_secs(10), || {
                let (status, body) = whoami(host, Duration::from_secs(5))?;
                Ok(status == 200 && body.contains(&format!("server: {address}")))
            })?;
    }

    // The freeze: a request to the old host waits in the frozen pool.
    world.call(old_agent, async |c| {
        c.freeze_account(freeze("m-fw-1", name, 15_000)).await
    })??;
    let held = std::thread::scope(|scope| -> anyhow::Result<(u16, String, Duration)> {
        let sent = Instant::now();
        let whoami = &whoami;
        let request = scope.spawn(move || {
            whoami(old, Duration::from_secs(25))
                .map(|(status, body)| (status, body, sent.elapsed()))
        });
        std::thread::sleep(Duration::from_millis(1000));
        ensure!(
            !request.is_finished(),
            "a request to the frozen site did not wait"
        );

        // The switch: the old host forwards to the new one.
        let forwarded = world.call(old_agent, async |c| {
            c.forward_sites(ForwardSitesRequest {
                migration_id: "m-fw-1".into(),
                account: name.into(),
                new_address: NEW.to_string(),
                new_port: 0,
            })
            .await
            .map(|r| r.into_inner())
        })??;
        eprintln!("forwarded: {forwarded:?}");
        ensure!(forwarded.domains.contains(&domain), "{forwarded:?}");
        // New requests to the old address reach the new host, client
        // address kept, while the account is still frozen.
        let (status, body) = whoami(old, Duration::from_secs(5))?;
        ensure!(status == 200, "a forwarded request failed: {status} {body}");
        ensure!(
            body.contains(&format!("server: {NEW}")),
            "not answered by the new host:\n{body}"
        );
        ensure!(
            body.contains(&format!("real-ip: {CLIENT_ADDR}"))
                && body.contains(&format!("forwarded-for: {CLIENT_ADDR}")),
            "the client's address was lost:\n{body}"
        );
        let again = world.call(old_agent, async |c| {
            c.forward_sites(ForwardSitesRequest {
                migration_id: "m-fw-1".into(),
                account: name.into(),
                new_address: NEW.to_string(),
                new_port: 80,
            })
            .await
            .map(|r| r.into_inner())
        })??;
        ensure!(again.already_forwarded, "{again:?}");
        ensure!(
            !request.is_finished(),
            "the held request ended before the thaw"
        );
        world.call(old_agent, async |c| {
            c.thaw_account(thaw("m-fw-1", name)).await
        })??;
        request
            .join()
            .map_err(|_| anyhow::anyhow!("the request thread panicked"))?
    })?;
    eprintln!(
        "the request held during the freeze was answered after {:?}: {} {}",
        held.2, held.0, held.1
    );
    ensure!(
        held.0 == 200,
        "the held request failed: {} {}",
        held.0,
        held.1
    );
    ensure!(
        held.1.contains(&format!("server: {NEW}")),
        "the held request was not answered by the new host:\n{}",
        held.1
    );
    ensure!(
        held.1.contains(&format!("real-ip: {CLIENT_ADDR}")),
        "the held request lost the client's address:\n{}",
        held.1
    );

    // Rollback: the old host serves its own site again.
    let restored = world.call(old_agent, async |c| {
        c.unforward_sites(UnforwardSitesRequest {
            migration_id: "m-fw-1".into(),
            account: name.into(),
            end_for_good: false,
        })
        .await
        .map(|r| r.into_inner())
    })??;
    ensure!(restored.restored && restored.pool_started, "{restored:?}");
    world
        .rig
        .wait_until("the old host's own site", Duration::from_secs(10), || {
            let (status, body) = whoami(old, Duration::from_secs(5))?;
            Ok(status == 200 && body.contains(&format!("server: {OLD}")))
        })?;
    Ok(())
}
