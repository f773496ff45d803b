//! The controller reaches its database over TLS when told to: with
//! `sslmode = "verify-full"` and the right CA it connects (the server shows
//! its sessions encrypted) and migrates the schema; with another CA it
//! refuses the server and stops, saying why; an `sslmode` inside the URL is
//! refused so that one setting says it. Real PostgreSQL with `ssl = on`.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use navette_tests::install::{navette_binary, workspace_dir};
use navette_tests::{Netns, PgSpec, PgVersion, Rig};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

const DB_ADDR: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 20);

/// A CA: (certificate PEM, issuer).
fn ca(name: &str) -> anyhow::Result<(String, Issuer<'static, KeyPair>)> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let pem = params.self_signed(&key)?.pem();
    Ok((pem, Issuer::new(params, key)))
}

fn chown_postgres(path: &Path) -> anyhow::Result<()> {
    let status = std::process::Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()?;
    ensure!(status.success(), "chown {}", path.display());
    Ok(())
}

/// Writes the controller's config for `url` and `tls` lines.
fn config(dir: &Path, url: &str, tls: &str) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(format!("controller-{}.toml", url.len() + tls.len()));
    std::fs::write(
        &path,
        format!(
            "[listen]\napi = \"192.0.2.2:7443\"\nenrolment = \"192.0.2.2:7444\"\n\
             [database]\nurl = \"{url}\"\nconnect_timeout_secs = 2\n{tls}\n\
             [catalogue]\ndir = \"{}\"\n[tls]\nca_dir = \"{}\"\n",
            workspace_dir().join("controller/catalogue").display(),
            dir.join("ca").display()
        ),
    )?;
    Ok(path)
}

fn controller(ctl: &Netns, config: &Path, args: &[&str]) -> anyhow::Result<std::process::Command> {
    let mut command = ctl.command(navette_binary("navette-controller")?);
    command.arg("--config").arg(config).args(args);
    Ok(command)
}

#[test]
fn the_database_connection_uses_tls_and_checks_the_server() -> anyhow::Result<()> {
    let rig = Rig::new("database_tls")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let db_host = rig.add_namespace("db", DB_ADDR)?;
    let dir = rig.dir().join("database-tls");
    std::fs::create_dir_all(&dir)?;

    // The database server's certificate, from a CA of its own.
    let (ca_pem, issuer) = ca("Database CA")?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, "db.navette.test");
    params.subject_alt_names = vec![
        SanType::DnsName("db.navette.test".try_into()?),
        SanType::IpAddress(DB_ADDR.into()),
    ];
    let server_cert = params.signed_by(&server_key, &issuer)?;
    let (cert_file, key_file) = (dir.join("server.crt"), dir.join("server.key"));
    std::fs::write(&cert_file, server_cert.pem())?;
    std::fs::write(&key_file, server_key.serialize_pem())?;
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600))?;
    }
    chown_postgres(&cert_file)?;
    chown_postgres(&key_file)?;
    let ca_file = dir.join("database-ca.pem");
    std::fs::write(&ca_file, &ca_pem)?;
    let (other_ca_pem, _) = ca("Some other CA")?;
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&other_ca_file, other_ca_pem)?;

    let mut spec = PgSpec::new(PgVersion::V15, 5432);
    spec.extra_conf = vec![
        "ssl = on".into(),
        format!("ssl_cert_file = '{}'", cert_file.display()),
        format!("ssl_key_file = '{}'", key_file.display()),
    ];
    let db = db_host.start_postgres_with(&rig, spec)?;
    db.psql(
        "postgres",
        "CREATE ROLE navette LOGIN PASSWORD 'navette-pw'; CREATE DATABASE navette OWNER navette;",
    )?;
    let output = controller(
        &ctl,
        &config(&dir, "host=/nonexistent", "")?,
        &["ca", "init"],
    )?
    .output()?;
    ensure!(
        output.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let url = format!("host={DB_ADDR} port=5432 user=navette password=navette-pw dbname=navette");

    // Another CA: the server is refused, and start-up stops saying so.
    let wrong = config(
        &dir,
        &url,
        &format!(
            "sslmode = \"verify-full\"\nca_file = \"{}\"",
            other_ca_file.display()
        ),
    )?;
    let output = controller(&ctl, &wrong, &["run"])?.output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("UnknownIssuer"),
        "a server certificate from another CA is refused: {stderr}"
    );
    // sslmode in the URL is refused.
    let output = controller(
        &ctl,
        &config(&dir, &format!("{url} sslmode=require"), "")?,
        &["run"],
    )?
    .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && stderr.contains("set database.sslmode instead"),
        "sslmode in the url: {stderr}"
    );

    // The right CA: connected over TLS, schema migrated.
    let right = config(
        &dir,
        &url,
        &format!(
            "sslmode = \"verify-full\"\nca_file = \"{}\"",
            ca_file.display()
        ),
    )?;
    let command = {
        let (ctl, right) = (ctl.clone(), right.clone());
        let binary = navette_binary("navette-controller")?;
        move || {
            let mut command = ctl.command(&binary);
            command.arg("--config").arg(&right).arg("run");
            command
        }
    };
    let process = rig.spawn(&ctl, "controller", command)?;
    let mut last = String::new();
    rig.wait_until(
        "the controller's sessions are encrypted",
        Duration::from_secs(30),
        || {
            ensure!(
                process.is_running(),
                "the controller stopped: {}",
                process.log_tail(20)
            );
            last = db.psql(
                "navette",
                "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) FROM pg_stat_ssl s \
                 JOIN pg_stat_activity a USING (pid) WHERE a.usename = 'navette'",
            )?;
            let (encrypted, all) = last.split_once('/').context("count/count")?;
            Ok(all != "0" && encrypted == all)
        },
    )
    .with_context(|| format!("last seen: {last}"))?;
    rig.wait_until(
        "the schema migrated over TLS",
        Duration::from_secs(30),
        || {
            let version = db.psql(
                "navette",
                "SELECT coalesce(max(version), 0) FROM schema_migrations",
            )?;
            Ok(version.trim().parse::<i32>()? >= 3)
        },
    )?;
    Ok(())
}
