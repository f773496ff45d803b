//! The controller refuses to start with a CA key that group or others can
//! read, and says how to fix it; with the key private again it goes on
//! (here to the database, which does not exist).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::ensure;
use navette_tests::install::{navette_binary, workspace_dir};

fn controller(config: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(navette_binary("navette-controller")?)
        .arg("--config")
        .arg(config)
        .args(args)
        .output()?)
}

#[test]
fn a_ca_key_others_can_read_stops_the_controller_with_the_fix() -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("navette-ca-key-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let ca_dir = dir.join("ca");
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"host=/nonexistent user=navette\"\nconnect_timeout_secs = 1\n[catalogue]\ndir = \"{}\"\n[tls]\nca_dir = \"{}\"\n",
            workspace_dir().join("controller/catalogue").display(),
            ca_dir.display()
        ),
    )?;
    let init = controller(&config, &["ca", "init"])?;
    ensure!(
        init.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    let key = ca_dir.join("ca.key");
    for mode in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode))?;
        let output = controller(&config, &["run"])?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        ensure!(
            !output.status.success(),
            "started with ca.key mode {mode:o}"
        );
        ensure!(
            stderr.contains(&format!("chmod 600 {}", key.display()))
                && stderr.contains(&format!("mode {mode:04o}")),
            "mode {mode:o}: the message says what is wrong and how to fix it: {stderr}"
        );
    }
    // Private again: the key is accepted, and start-up goes on to the
    // database.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))?;
    let output = controller(&config, &["run"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && !stderr.contains("ca.key") && stderr.contains("database"),
        "with ca.key 0600 the controller gets as far as the database: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
