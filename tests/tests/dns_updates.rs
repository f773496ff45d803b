//! The platform's DNS updated by the controller's `dns` module against a
//! real Knot server in the rig, with TSIG: an account's records get a
//! lowered TTL ahead of a move, are switched from the old host to the new
//! one, and a client resolving through the rig's DNS (glibc's resolver, as
//! curl, psql and mysql use it) reaches the new host; a retry of a switch
//! done changes nothing; a wrong key is refused with a clear error; a
//! record changed by someone else stops the switch with nothing written;
//! and the controller does not start with a TSIG secret others can read.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context, ensure};
use navette_controller::config;
use navette_controller::dns::{DnsError, PlatformDns, RecordType};
use navette_controller::model::{Account, Site};
use navette_tests::{DnsServer, Netns, Rig, ZoneSpec};

const OLD: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const NEW: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 11);
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 7);
const CONTROLLER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);

/// The account's zone, the platform's database zone (with another
/// account's name), all on the old host with a TTL of an hour.
fn zones() -> Vec<ZoneSpec> {
    vec![
        ZoneSpec::new(
            "alice-shop.example",
            &[
                "@ 3600 A 192.0.2.10",
                "www 3600 A 192.0.2.10",
                "mail 3600 A 203.0.113.25",
            ],
        ),
        ZoneSpec::new(
            "db.example",
            &["alice-shop 3600 A 192.0.2.10", "bob 3600 A 192.0.2.10"],
        ),
    ]
}

/// Account `alice_shop` as its host's agent reports it: one site with two
/// domains.
fn account() -> Account {
    Account {
        name: "alice_shop".into(),
        host_id: "old".into(),
        home: "/home/alice_shop".into(),
        uid: 2000,
        home_size_bytes: 0,
        home_files: 0,
        databases: Vec::new(),
        updated_at: SystemTime::now().into(),
        copy_of_test: None,
        sites: vec![Site {
            domains: vec!["alice-shop.example".into(), "www.alice-shop.example".into()],
            document_root: "www".into(),
            runtime: "php".into(),
        }],
    }
}

/// The controller's `[dns]` section for this server.
fn dns_config(dns: &DnsServer, key_name: &str, secret_file: PathBuf) -> config::Dns {
    config::Dns {
        server: Some(dns.addr()),
        tsig_key_name: Some(key_name.to_owned()),
        tsig_secret_file: Some(secret_file),
        database_zone: Some("db.example".into()),
        lowered_ttl_secs: 60,
        ..config::Dns::default()
    }
}

fn platform_dns(dns: &DnsServer) -> anyhow::Result<PlatformDns> {
    PlatformDns::from_config(&dns_config(
        dns,
        dns.key_name(),
        dns.secret_file().to_owned(),
    ))?
    .context("[dns] server is set, so DNS updates are on")
}

/// What the server answers for `name` A: (ttl, address) pairs.
fn a_records(dns: &DnsServer, from: &Netns, name: &str) -> anyhow::Result<Vec<(u32, String)>> {
    dns.query(from, name, "A")
}

fn ips(addresses: &[Ipv4Addr]) -> Vec<IpAddr> {
    addresses.iter().copied().map(IpAddr::V4).collect()
}

/// The address curl in the client namespace reaches `http://<domain>/` at,
/// resolving through /etc/netns (glibc's resolver).
fn curl_reaches(rig: &Rig, domain: &str) -> anyhow::Result<String> {
    let out = rig
        .client()
        .command("curl")
        .args(["--silent", "--max-time", "5", "--output", "/dev/null"])
        .args(["--write-out", "%{remote_ip} %{http_code}"])
        .arg(format!("http://{domain}/"))
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// What `getent ahostsv4` (the resolver psql, pgbench and mysql call)
/// answers for `name` in the client namespace.
fn resolves_to(rig: &Rig, name: &str) -> anyhow::Result<String> {
    let out = rig
        .client()
        .command("getent")
        .args(["ahostsv4", name])
        .output()
        .context("running getent")?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_owned())
}

#[test]
fn lowered_ttl_then_switch_points_the_accounts_names_at_the_new_host() -> anyhow::Result<()> {
    let rig = Rig::new("dns_updates_switch")?;
    let old = rig.add_namespace("old", OLD)?;
    let new = rig.add_namespace("new", NEW)?;
    let ctl = rig.add_namespace("ctl", CONTROLLER)?;
    let dns = rig.start_dns(&zones())?;
    rig.resolve_through(rig.client(), &dns)?;
    for host in [&old, &new] {
        let host_in = host.clone();
        rig.spawn(host, "http", move || {
            let mut command = host_in.command("python3");
            command
                .args(["-m", "http.server", "80", "--bind"])
                .arg(host_in.addr().to_string());
            command
        })?;
    }
    for host in [OLD, NEW] {
        rig.wait_until("the hosts' web servers", Duration::from_secs(10), || {
            rig.client()
                .tcp_connects((host, 80).into(), Duration::from_millis(500))
        })?;
    }
    ensure!(
        curl_reaches(&rig, "www.alice-shop.example")? == "192.0.2.10 200",
        "before the move, the site's name leads to the old host"
    );
    let platform = platform_dns(&dns)?;
    let account = account();

    let (before, lowering, first, again) = rig.run_in(&ctl, || async {
        let before = platform.read_account(&account).await?;
        let lowering = platform.lower_ttl(&before).await?;
        let first = platform
            .switch(&account, &ips(&[OLD]), &ips(&[NEW]))
            .await?;
        let again = platform
            .switch(&account, &ips(&[OLD]), &ips(&[NEW]))
            .await?;
        Ok((before, lowering, first, again))
    })?;

    // What was read: the site's two domains and the database host name,
    // each an A set at 3600 s on the old host; no AAAA.
    let read: Vec<(String, RecordType, u32)> = before
        .sets()
        .filter(|set| !set.addresses.is_empty())
        .map(|set| (set.name.to_string(), set.rtype, set.ttl))
        .collect();
    ensure!(
        read == [
            ("alice-shop.example.".to_owned(), RecordType::A, 3600),
            ("www.alice-shop.example.".to_owned(), RecordType::A, 3600),
            ("alice-shop.db.example.".to_owned(), RecordType::A, 3600),
        ],
        "read {read:?}"
    );
    ensure!(
        before.not_ours.is_empty(),
        "every name is on the platform's DNS"
    );
    // Lowered ahead of time by at least the old TTL.
    ensure!(lowering.sets.len() == 3 && lowering.sets.iter().all(|s| s.old_ttl == 3600));
    let wait = lowering
        .safe_at
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    ensure!(
        wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600),
        "the lowered TTL can be relied on an old TTL after the lowering, not {wait:?}"
    );
    eprintln!(
        "lowered {} record sets to {} s; safe to rely on in {:.0} s",
        lowering.sets.len(),
        lowering.lowered_ttl,
        wait.as_secs_f64()
    );
    ensure!(first.switched.len() == 3, "switched {:?}", first.switched);
    ensure!(
        again.switched.is_empty() && again.already_switched.len() == 3,
        "a retry of the switch changes nothing: {again:?}"
    );

    // The server answers with the new host's address at the lowered TTL.
    for name in [
        "alice-shop.example",
        "www.alice-shop.example",
        "alice-shop.db.example",
    ] {
        let answer = a_records(&dns, rig.client(), name)?;
        ensure!(
            answer == [(60, NEW.to_string())],
            "{name}: the server answers {answer:?}"
        );
    }
    // What is not the account's stayed as it was.
    ensure!(
        a_records(&dns, rig.client(), "mail.alice-shop.example")?
            == [(3600, "203.0.113.25".to_owned())]
    );
    ensure!(a_records(&dns, rig.client(), "bob.db.example")? == [(3600, OLD.to_string())]);
    // Clients resolving through the platform's DNS reach the new host.
    let reached = curl_reaches(&rig, "www.alice-shop.example")?;
    ensure!(reached == "192.0.2.11 200", "curl reached {reached:?}");
    let db_host = resolves_to(&rig, "alice-shop.db.example")?;
    ensure!(
        db_host == NEW.to_string(),
        "the database host name resolves to {db_host:?}"
    );

    // After the move, the TTL goes back to what it was.
    rig.run_in(&ctl, || async {
        platform.restore_ttl(&account, &lowering).await?;
        Ok(())
    })?;
    for name in [
        "alice-shop.example",
        "www.alice-shop.example",
        "alice-shop.db.example",
    ] {
        let answer = a_records(&dns, rig.client(), name)?;
        ensure!(
            answer == [(3600, NEW.to_string())],
            "{name} after restore: {answer:?}"
        );
    }
    Ok(())
}

#[test]
fn a_wrong_tsig_key_is_refused_with_a_clear_error() -> anyhow::Result<()> {
    let rig = Rig::new("dns_updates_key")?;
    let ctl = rig.add_namespace("ctl", CONTROLLER)?;
    let dns = rig.start_dns(&zones())?;
    let wrong_secret = rig.dir().join("wrong.secret");
    std::fs::write(
        &wrong_secret,
        "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n",
    )?;
    std::fs::set_permissions(
        &wrong_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )?;
    let wrong_secret_platform =
        PlatformDns::from_config(&dns_config(&dns, dns.key_name(), wrong_secret.clone()))?
            .context("DNS on")?;
    let unknown_key_platform = PlatformDns::from_config(&dns_config(
        &dns,
        "someone-else.",
        dns.secret_file().to_owned(),
    ))?
    .context("DNS on")?;
    let account = account();
    let (wrong_secret_error, unknown_key_error) = rig.run_in(&ctl, || async {
        let one = wrong_secret_platform
            .switch(&account, &ips(&[OLD]), &ips(&[NEW]))
            .await
            .err();
        let two = unknown_key_platform.read_account(&account).await.err();
        Ok((one, two))
    })?;
    for (what, error) in [
        ("a wrong secret", wrong_secret_error),
        ("an unknown key", unknown_key_error),
    ] {
        let error = error.with_context(|| format!("{what} was accepted"))?;
        ensure!(matches!(error, DnsError::Key { .. }), "{what}: {error:?}");
        let message = error.to_string();
        eprintln!("{what}: {message}");
        ensure!(
            message.contains("refused Navette's TSIG key") && message.contains("tsig_secret_file"),
            "{what}: {message}"
        );
    }
    ensure!(a_records(&dns, rig.client(), "www.alice-shop.example")? == [(3600, OLD.to_string())]);

    // A secret file others may read stops start-up, as ca.key does.
    std::fs::set_permissions(
        &wrong_secret,
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )?;
    let exposed = PlatformDns::from_config(&dns_config(&dns, dns.key_name(), wrong_secret))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    ensure!(exposed.contains("chmod 600"), "exposed secret: {exposed:?}");
    Ok(())
}

#[test]
fn a_record_changed_by_someone_else_stops_the_switch_with_nothing_written() -> anyhow::Result<()> {
    let rig = Rig::new("dns_updates_prerequisite")?;
    let ctl = rig.add_namespace("ctl", CONTROLLER)?;
    let dns = rig.start_dns(&zones())?;
    let platform = platform_dns(&dns)?;
    let account = account();

    // Someone points www elsewhere before the switch: the switch sees it
    // on its read and refuses as a whole.
    dns.nsupdate(
        rig.client(),
        "alice-shop.example.",
        &[
            "update delete www.alice-shop.example. A",
            &format!("update add www.alice-shop.example. 3600 A {ELSEWHERE}"),
        ],
    )?;
    let refused = rig.run_in(&ctl, || async {
        Ok(platform
            .switch(&account, &ips(&[OLD]), &ips(&[NEW]))
            .await
            .err())
    })?;
    let refused = refused.context("a switch over someone else's change was accepted")?;
    eprintln!("changed before the read: {refused}");
    ensure!(
        matches!(refused, DnsError::NotOnOldHost { .. }),
        "{refused:?}"
    );
    ensure!(
        refused
            .to_string()
            .contains("www.alice-shop.example. A (203.0.113.7)"),
        "{refused}"
    );
    for (name, expected) in [
        ("alice-shop.example", OLD),
        ("www.alice-shop.example", ELSEWHERE),
        ("alice-shop.db.example", OLD),
    ] {
        let answer = a_records(&dns, rig.client(), name)?;
        ensure!(
            answer == [(3600, expected.to_string())],
            "{name}: {answer:?}"
        );
    }

    // Someone changes a record between Navette's read and its write (a
    // stale controller): the server's prerequisite refuses the zone's
    // update, nothing of it written.
    dns.nsupdate(
        rig.client(),
        "alice-shop.example.",
        &[
            "update delete www.alice-shop.example. A",
            &format!("update add www.alice-shop.example. 3600 A {OLD}"),
        ],
    )?;
    let stale = rig.run_in(&ctl, || async {
        let read = platform.read_account(&account).await?;
        Ok(read)
    })?;
    dns.nsupdate(
        rig.client(),
        "alice-shop.example.",
        &["update add www.alice-shop.example. 3600 A 192.0.2.99"],
    )?;
    let raced = rig.run_in(&ctl, || async {
        Ok(platform
            .switch_records(&stale, &ips(&[OLD]), &ips(&[NEW]))
            .await
            .err())
    })?;
    let raced = raced.context("a switch on a stale read was accepted")?;
    eprintln!("changed after the read: {raced}");
    ensure!(
        matches!(raced, DnsError::ChangedMeanwhile { .. }),
        "{raced:?}"
    );
    ensure!(
        a_records(&dns, rig.client(), "alice-shop.example")? == [(3600, OLD.to_string())],
        "the apex, in the same update, was not written"
    );
    let mut www = a_records(&dns, rig.client(), "www.alice-shop.example")?;
    www.sort();
    ensure!(
        www == [(3600, OLD.to_string()), (3600, "192.0.2.99".to_owned())],
        "www: {www:?}"
    );
    Ok(())
}

#[test]
fn a_tsig_secret_others_can_read_stops_the_controller_with_the_fix() -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use navette_tests::install::{navette_binary, workspace_dir};

    let dir = std::env::temp_dir().join(format!("navette-dns-secret-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let secret = dir.join("tsig.secret");
    std::fs::write(&secret, "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\n")?;
    let config = dir.join("controller.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"host=/nonexistent user=navette\"\nconnect_timeout_secs = 1\n\
             [catalogue]\ndir = \"{}\"\n[tls]\nca_dir = \"{}\"\n\
             [dns]\nserver = \"192.0.2.53:53\"\ntsig_key_name = \"navette.\"\ntsig_secret_file = \"{}\"\n",
            workspace_dir().join("controller/catalogue").display(),
            dir.join("ca").display(),
            secret.display()
        ),
    )?;
    let controller = |args: &[&str]| -> anyhow::Result<std::process::Output> {
        Ok(Command::new(navette_binary("navette-controller")?)
            .arg("--config")
            .arg(&config)
            .args(args)
            .output()?)
    };
    let init = controller(&["ca", "init"])?;
    ensure!(
        init.status.success(),
        "ca init: {}",
        String::from_utf8_lossy(&init.stderr)
    );
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o640))?;
    let output = controller(&["run"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success(),
        "started with the TSIG secret mode 0640"
    );
    ensure!(
        stderr.contains(&format!("chmod 600 {}", secret.display())) && stderr.contains("mode 0640"),
        "the message says what is wrong and how to fix it: {stderr}"
    );
    // Private again: start-up goes on to the database.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600))?;
    let output = controller(&["run"])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        !output.status.success() && !stderr.contains("TSIG") && stderr.contains("database"),
        "with the secret 0600 the controller gets as far as the database: {stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
