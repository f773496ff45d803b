//! What an operator meets before anything runs: a catalogue file with a
//! mistake stops the controller at start-up with the file, the field and
//! the reason; `--help` explains; the systemd units pass
//! `systemd-analyze verify`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};
use navette_tests::install::{navette_binary, workspace_dir};

fn scratch(name: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("navette-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// Runs `navette-controller run` on a catalogue directory holding the
/// shipped PostgreSQL entry changed by `edit`; returns its exit status and
/// standard error.
fn start_with_catalogue_entry(edit: impl Fn(&str) -> String) -> anyhow::Result<(bool, String)> {
    let dir = scratch("catalogue")?;
    let shipped = workspace_dir().join("controller/catalogue/postgresql-15-to-18.toml");
    let text = std::fs::read_to_string(&shipped)?;
    let catalogue = dir.join("catalogue");
    std::fs::create_dir_all(&catalogue)?;
    std::fs::write(catalogue.join("postgresql-15-to-18.toml"), edit(&text))?;
    let config = dir.join("controller.toml");
    // The database is never reached: the catalogue is checked first.
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"host=/nonexistent user=navette\"\nconnect_timeout_secs = 1\n[catalogue]\ndir = \"{}\"\n[tls]\nca_dir = \"{}\"\n",
            catalogue.display(),
            dir.join("ca").display()
        ),
    )?;
    let output = Command::new(navette_binary("navette-controller")?)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()?;
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn a_bad_catalogue_file_stops_the_controller_with_the_field_named() -> anyhow::Result<()> {
    type Edit = Box<dyn Fn(&str) -> String>;
    let cases: [(&str, Edit, &[&str]); 3] = [
        (
            "missing field",
            Box::new(|text: &str| {
                text.replacen("title = \"PostgreSQL 15 to PostgreSQL 18\"\n", "", 1)
            }),
            &["missing field `title`"],
        ),
        (
            "unknown key",
            Box::new(|text: &str| {
                text.replacen("[target]\n", "[target]\nflavour = \"vanilla\"\n", 1)
            }),
            &["unknown field `flavour`"],
        ),
        (
            "bad version",
            Box::new(|text: &str| text.replacen("version = \"18\"", "version = \"18-beta\"", 1)),
            &["target.version", "\"18-beta\" is not a version"],
        ),
    ];
    for (case, edit, expected) in cases {
        let (succeeded, stderr) = start_with_catalogue_entry(edit)?;
        ensure!(!succeeded, "{case}: the controller started");
        ensure!(
            stderr.contains("postgresql-15-to-18.toml"),
            "{case}: the file is named: {stderr}"
        );
        for needle in expected {
            ensure!(stderr.contains(needle), "{case}: {needle:?} in: {stderr}");
        }
    }
    // The same file unchanged passes the catalogue check and fails later,
    // on the database, which shows the check above is about the file.
    let (succeeded, stderr) = start_with_catalogue_entry(|text| text.to_owned())?;
    ensure!(
        !succeeded && !stderr.contains("catalogue file"),
        "unchanged file: {stderr}"
    );
    Ok(())
}

#[test]
fn every_binary_explains_itself() -> anyhow::Result<()> {
    for (binary, words) in [
        ("navette-controller", ["run", "ca", "cert", "catalogue"]),
        ("navette-agent", ["run", "enrol", "--config", "token"]),
    ] {
        let output = Command::new(navette_binary(binary)?)
            .arg("--help")
            .output()?;
        let help = String::from_utf8_lossy(&output.stdout);
        ensure!(output.status.success(), "{binary} --help failed");
        for word in words {
            ensure!(
                help.contains(word),
                "{binary} --help mentions {word}: {help}"
            );
        }
    }
    Ok(())
}

#[test]
fn an_agent_that_is_not_enrolled_says_how_to_enrol() -> anyhow::Result<()> {
    let dir = scratch("unenrolled")?;
    let config = dir.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "kind = \"shared\"\nstack_version = \"2024.1\"\ncontroller = \"192.0.2.2:7443\"\n\
             enrolment = \"192.0.2.2:7444\"\nca_file = \"{dir}/ca.pem\"\nlisten = \"127.0.0.1:0\"\n\
             state_dir = \"{dir}/state\"\naccounts_dir = \"{dir}/home\"\n",
            dir = dir.display()
        ),
    )?;
    let output = Command::new(navette_binary("navette-agent")?)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "an agent without a certificate ran"
    );
    ensure!(
        stderr.contains("not enrolled") && stderr.contains("enrol --token"),
        "the error says how to enrol: {stderr}"
    );
    // A typo in the configuration is refused with the key named.
    std::fs::write(
        &config,
        std::fs::read_to_string(&config)?.replace("accounts_dir", "acounts_dir"),
    )?;
    let output = Command::new(navette_binary("navette-agent")?)
        .arg("--config")
        .arg(&config)
        .arg("run")
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("acounts_dir"),
        "typo named: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

#[test]
fn systemd_accepts_both_units() -> anyhow::Result<()> {
    let dir = scratch("units")?;
    let bin_dir = navette_binary("navette-controller")?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    for unit in ["navette-controller.service", "navette-agent.service"] {
        // Installed, the binaries are in /usr/bin; here they are where cargo
        // built them. Nothing else in the unit changes.
        let text = std::fs::read_to_string(workspace_dir().join("systemd").join(unit))?;
        ensure!(
            text.contains("ExecStart=/usr/bin/"),
            "{unit} starts /usr/bin/..."
        );
        let text = text.replace("/usr/bin/", &format!("{}/", bin_dir.display()));
        std::fs::write(dir.join(unit), text)?;
    }
    let verify = |paths: &[&Path]| -> anyhow::Result<(bool, String)> {
        let output = Command::new("systemd-analyze")
            .arg("verify")
            .args(paths)
            .output()?;
        Ok((
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        ))
    };
    let controller = dir.join("navette-controller.service");
    let agent = dir.join("navette-agent.service");
    let (ok, said) = verify(&[&controller, &agent])?;
    ensure!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // The check notices a broken unit (it only warns, so silence matters).
    std::fs::write(
        &agent,
        std::fs::read_to_string(&agent)?.replace("Type=notify", "Type=notfy"),
    )?;
    let (_, said) = verify(&[&agent])?;
    ensure!(said.contains("notfy"), "a broken unit is reported: {said}");
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
