//! The rig's own smoke test: two hosts and the client on one bridge,
//! PostgreSQL 15 and MariaDB 10.11 on one host, PostgreSQL 18 and MariaDB
//! 11.8 (chrooted Debian 13) on the other, an account on each; customers (the client namespace) log in over TCP with
//! their passwords and read their rows. Then the rig is dropped and nothing
//! of it is left. Uses no Navette binary, so it runs before they exist.

use std::net::Ipv4Addr;
use std::time::Instant;

use anyhow::{Context, ensure};
use navette_tests::{AccountSpec, PgVersion, Rig, SAMPLE_ROWS, sweep};

const OLD_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NEW_HOST: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);

#[test]
fn two_hosts_serve_their_accounts_over_the_bridge_and_vanish_at_drop() -> anyhow::Result<()> {
    let started = Instant::now();
    let rig = Rig::new("rig_smoke")?;
    let old = rig.add_namespace("old", OLD_HOST)?;
    let new = rig.add_namespace("new", NEW_HOST)?;
    let (pg15, pg18, mariadb, mariadb_11) = std::thread::scope(|scope| -> anyhow::Result<_> {
        let pg15 = scope.spawn(|| old.start_postgres(&rig, PgVersion::V15, 5432));
        let pg18 = scope.spawn(|| new.start_postgres(&rig, PgVersion::V18, 5432));
        let mariadb = scope.spawn(|| old.start_mariadb(&rig));
        let mariadb_11 = scope.spawn(|| new.start_mariadb_11_8(&rig));
        Ok((
            join("PostgreSQL 15", pg15.join())?,
            join("PostgreSQL 18", pg18.join())?,
            join("MariaDB", mariadb.join())?,
            join("MariaDB 11.8", mariadb_11.join())?,
        ))
    })?;
    let alice = rig.add_account(
        &old,
        AccountSpec {
            name: "nvsmoke_alice".into(),
            password: "alice's secret".into(),
            pg_databases: vec!["nvsmoke_alice".into(), "nvsmoke_alice_shop".into()],
            mariadb_databases: vec!["nvsmoke_alice_blog".into()],
            files: true,
        },
    )?;
    let bob = rig.add_account(
        &new,
        AccountSpec {
            name: "nvsmoke_bob".into(),
            password: "bob-pw-2".into(),
            pg_databases: vec!["nvsmoke_bob".into()],
            mariadb_databases: vec!["nvsmoke_bob_blog".into()],
            files: false,
        },
    )?;
    eprintln!("rig {} up in {:.2?}", rig.prefix(), started.elapsed());

    ensure!(
        pg15.server_version()?.starts_with("15."),
        "old host runs PostgreSQL 15"
    );
    ensure!(
        pg18.server_version()?.starts_with("18."),
        "new host runs PostgreSQL 18"
    );
    ensure!(
        alice.home.join("www/index.php").is_file(),
        "alice has her site"
    );
    ensure!(
        bob.home.is_dir() && !bob.home.join("www").exists(),
        "bob has a bare home"
    );

    // Customers connect from the client namespace over TCP, with passwords.
    let expected: Vec<String> = SAMPLE_ROWS.iter().map(|row| row.to_string()).collect();
    let logins = [
        (&pg15, &alice, "nvsmoke_alice", "15."),
        (&pg15, &alice, "nvsmoke_alice_shop", "15."),
        (&pg18, &bob, "nvsmoke_bob", "18."),
    ];
    rig.run_in(rig.client(), || async {
        for (server, account, db, version) in logins {
            let config = server.tcp_config(&account.name, &account.password, db);
            let (client, connection) = tokio_postgres::connect(&config, tokio_postgres::NoTls)
                .await
                .with_context(|| {
                    format!(
                        "{} logging in to {db} on {}",
                        account.name,
                        server.address()
                    )
                })?;
            let connection = tokio::spawn(connection);
            let shown: String = client.query_one("SHOW server_version", &[]).await?.get(0);
            ensure!(shown.starts_with(version), "{db}: server_version {shown}");
            let labels: Vec<String> = client
                .query("SELECT label FROM items ORDER BY id", &[])
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            ensure!(labels == expected, "{db}: rows {labels:?}");
            drop(client);
            connection.await??;
        }
        // A wrong password is refused: scram-sha-256 over TCP is enforced.
        let wrong = pg18.tcp_config("nvsmoke_bob", "not-the-password", "nvsmoke_bob");
        ensure!(
            tokio_postgres::connect(&wrong, tokio_postgres::NoTls)
                .await
                .is_err(),
            "a wrong password must be refused"
        );
        Ok(())
    })?;

    ensure!(
        mariadb.server_version()?.starts_with("10.11."),
        "old host runs MariaDB 10.11"
    );
    ensure!(
        mariadb_11.server_version()?.starts_with("11.8."),
        "new host runs MariaDB 11.8"
    );
    for (server, account, db) in [
        (&mariadb, &alice, "nvsmoke_alice_blog"),
        (&mariadb_11, &bob, "nvsmoke_bob_blog"),
    ] {
        let rows = rig
            .client()
            .command("mariadb")
            .args([
                "--no-defaults",
                "-h",
                &server.address().to_string(),
                "-u",
                &account.name,
            ])
            .arg(format!("-p{}", account.password))
            .args(["--batch", "--skip-column-names", "-e"])
            .arg(format!("SELECT label FROM {db}.items ORDER BY id"))
            .output()?;
        ensure!(
            rows.status.success(),
            "mariadb login to {db} from the client: {}",
            String::from_utf8_lossy(&rows.stderr)
        );
        let labels: Vec<String> = String::from_utf8_lossy(&rows.stdout)
            .lines()
            .map(str::to_owned)
            .collect();
        ensure!(labels == expected, "MariaDB rows of {db} {labels:?}");
    }

    // Cutting a host's link makes it unreachable; plugging it back heals.
    let pg_port = std::net::SocketAddr::from((NEW_HOST, 5432));
    let timeout = std::time::Duration::from_millis(300);
    new.link_down()?;
    ensure!(
        !rig.client().tcp_connects(pg_port, timeout)?,
        "host reachable with its link down"
    );
    new.link_up()?;
    rig.wait_until(
        "the new host back on the bridge",
        std::time::Duration::from_secs(5),
        || rig.client().tcp_connects(pg_port, timeout),
    )?;

    // Teardown removes every namespace and the working directory.
    let namespaces = rig.namespace_names();
    let dir = rig.dir().to_path_buf();
    ensure!(
        namespaces.len() == 4,
        "switch, client and two hosts: {namespaces:?}"
    );
    let teardown = Instant::now();
    drop(rig);
    eprintln!("teardown in {:.2?}", teardown.elapsed());
    let left: Vec<String> = sweep::list_namespaces()
        .into_iter()
        .filter(|namespace| namespaces.contains(namespace))
        .collect();
    ensure!(left.is_empty(), "namespaces left after drop: {left:?}");
    if std::env::var("NAVETTE_RIG_KEEP").as_deref() != Ok("1") {
        ensure!(!dir.exists(), "{} left after drop", dir.display());
    }
    Ok(())
}

/// A scoped thread's result, its panic turned into an error.
fn join<T>(name: &str, result: std::thread::Result<anyhow::Result<T>>) -> anyhow::Result<T> {
    result.map_err(|_| anyhow::anyhow!("starting {name} panicked"))?
}
