//! The README's first command: `tests/platform.sh` brings up a whole local
//! platform and presses *Test* for a sample account. Here its binary runs
//! with `--check` (up, Test, down) exactly as the script runs it, and the
//! newcomer's view of it is checked: every host enrolled, the test copy
//! ready, how to connect to it, alice's site answering on the test host
//! (PHP 8.4, her copied rows) through the preview command; then erin's
//! migration under load: completed, its freeze window printed, no HTTP
//! error, every transaction pgbench committed found on the new host, the
//! site and the DNS on the new host afterwards; and nothing left behind.

use std::process::Command;

use anyhow::{Context, ensure};

#[test]
fn the_readme_platform_comes_up_tests_and_migrates_accounts_and_goes_away() -> anyhow::Result<()> {
    let output = Command::new(env!("CARGO_BIN_EXE_navette-platform"))
        .arg("--check")
        .output()
        .context("running navette-platform --check")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.success(),
        "navette-platform --check failed:\n{stdout}\n{stderr}"
    );
    for expected in [
        "Navette is up",
        "shared-old",
        "transit-1",
        "dedicated-1",
        "navette.v1.Hosts/ListHosts",
        "alice's test copy is ready",
        "psql",
        "192.0.2.12",
        "navette.v1.Tests/DeleteTest",
        // Her site, run on the test host from the copy, as the preview
        // command the answer gives shows it.
        "curl --resolve alice.example:80:192.0.2.12 http://alice.example/",
        "php: 8.4.",
        "postgresql: apple,banana,cherry",
        "mariadb: apple,banana,cherry",
        // erin's migration under load.
        "Pressing Migrate for erin",
        "DNS before: erin.example -> 192.0.2.10 (shared-old)",
        "erin's migration completed in",
        "Freeze window: ",
        " 0 errors, longest wait",
        "answered by 192.0.2.10 (shared-old) before, 192.0.2.11 (shared-new) after",
        "are on shared-new: pgbench_history holds",
        "all in her new home, in order",
        "DNS after:  erin.example -> 192.0.2.11 (shared-new); erin.db.example -> 192.0.2.11 (shared-new)",
        "--check: tearing the platform down.",
    ] {
        ensure!(
            stdout.contains(expected),
            "the platform's output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
    let phases: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("  [") && l.contains(" s] "))
        .collect();
    ensure!(
        phases.len() >= 3 && phases.last().is_some_and(|l| l.contains("completed")),
        "the migration's phases from WatchMigration are printed, up to completed:\n{stdout}"
    );
    ensure!(
        stdout.contains("MariaDB client: ") && stdout.contains(" 0 missing on shared-new"),
        "no acknowledged MariaDB row is missing on the new host:\n{stdout}"
    );
    // The rig's prefix is printed; nothing with it survives the teardown.
    let prefix = stdout
        .lines()
        .find_map(|l| l.split("(rig ").nth(1))
        .and_then(|rest| rest.split(')').next())
        .context("the output names its rig")?
        .to_owned();
    let namespaces = Command::new("ip").args(["netns", "list"]).output()?;
    let namespaces = String::from_utf8_lossy(&namespaces.stdout);
    ensure!(
        !namespaces.contains(&prefix),
        "namespaces of rig {prefix} left behind:\n{namespaces}"
    );
    Ok(())
}
