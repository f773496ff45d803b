//! A database that stops answering does not stall the controller's
//! handlers: with the hosts table locked by another session, `ListHosts`
//! is answered "unavailable" once the statement timeout passes, instead of
//! waiting for the lock; when the lock goes, the same call works again.

mod support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::ensure;
use navette_tests::{ControllerSpec, Rig};

#[test]
fn a_stuck_database_is_answered_unavailable_within_the_statement_timeout() -> anyhow::Result<()> {
    let rig = Rig::new("database_timeouts")?;
    let controller = support::controller(
        &rig,
        ControllerSpec {
            statement_timeout_secs: 2,
            pool_wait_timeout_secs: 2,
            ..ControllerSpec::default()
        },
    )?;
    let access = rig.controller_access()?;
    let api = access.api.to_string();
    let list_hosts = || {
        rig.grpcurl_as(
            &access.operator,
            &[
                "-max-time",
                "30",
                "-d",
                "{}",
                &api,
                "navette.v1.Hosts/ListHosts",
            ],
        )
    };
    let output = list_hosts()?;
    ensure!(
        output.status.success(),
        "ListHosts before: {}",
        String::from_utf8_lossy(&output.stderr)
    );

    // Another session takes the hosts table and keeps it for a minute.
    let db = controller.state_db();
    let mut locker = db
        .version()
        .command("psql")
        .arg("-h")
        .arg(db.socket_dir())
        .args([
            "-p",
            &db.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "navette",
        ])
        .args([
            "-X",
            "-c",
            "BEGIN; LOCK TABLE hosts IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60); COMMIT;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let waited = rig.wait_until("the lock is held", Duration::from_secs(10), || {
        let granted = db.psql(
            "navette",
            "SELECT count(*) FROM pg_locks WHERE relation = 'hosts'::regclass \
             AND mode = 'AccessExclusiveLock' AND granted",
        )?;
        Ok(granted == "1")
    });
    let result = waited.and_then(|()| {
        let started = Instant::now();
        let output = list_hosts()?;
        let elapsed = started.elapsed();
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success()
                && stderr.contains("Unavailable")
                && stderr.contains("cannot reach its database"),
            "ListHosts on a stuck database: {stderr}"
        );
        ensure!(
            elapsed < Duration::from_secs(10),
            "answered after {elapsed:?}, not within the 2 s statement timeout (plus grpcurl's own start)"
        );
        Ok(())
    });
    // The lock goes (the server only notices a vanished client when it
    // next writes to it: end the session itself).
    let released = db.psql(
        "navette",
        "SELECT count(pg_terminate_backend(pid)) FROM pg_locks \
         WHERE relation = 'hosts'::regclass AND mode = 'AccessExclusiveLock'",
    );
    let _ = locker.kill();
    let _ = locker.wait();
    result?;
    released?;

    rig.wait_until("ListHosts works again", Duration::from_secs(20), || {
        Ok(list_hosts()?.status.success())
    })?;
    Ok(())
}
