//! The README's first command: `tests/platform.sh` brings up a whole local
//! platform and presses *Test* for a sample account. Here its binary runs
//! with `--check` (up, Test, down) exactly as the script runs it, and the
//! newcomer's view of it is checked: every host enrolled, the test copy
//! ready, how to connect to it, alice's site answering on the test host
//! (PHP 8.4, her copied rows) through the preview command, and nothing
//! left behind.

use std::process::Command;

use anyhow::{Context, ensure};

#[test]
fn the_readme_platform_comes_up_tests_an_account_and_goes_away() -> anyhow::Result<()> {
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
        "--check: tearing the platform down.",
    ] {
        ensure!(
            stdout.contains(expected),
            "the platform's output lacks {expected:?}:\n{stdout}\n{stderr}"
        );
    }
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
