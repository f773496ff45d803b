//! `navette-platform`: a whole local Navette platform on this machine, for
//! newcomers and demonstrations. Built on the test rig: a controller and
//! five hosts (network namespaces on one bridge) with real PostgreSQL and
//! MariaDB servers, sample customer accounts whose PHP sites run behind
//! each host's nginx, and enrolled agents. It presses *Test* for alice and
//! shows her site answering on the test host, prints what to type next,
//! then keeps everything up until Ctrl-C, and removes it all on the way
//! out.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::{
    AccountSpec, AgentKind, AgentSpec, ControllerSpec, MariaDbRelease, MariaDbSpec, Netns,
    PgVersion, Rig,
};
use nix::sys::signal::{SigSet, Signal};

struct HostPlan {
    id: &'static str,
    address: Ipv4Addr,
    kind: AgentKind,
    stack: &'static str,
    postgres: PgVersion,
    mariadb: Option<MariaDbRelease>,
    what: &'static str,
}

const HOSTS: [HostPlan; 5] = [
    HostPlan {
        id: "shared-old",
        address: Ipv4Addr::new(192, 0, 2, 10),
        kind: AgentKind::Shared,
        stack: "2024.1",
        postgres: PgVersion::V15,
        mariadb: Some(MariaDbRelease::V10_11),
        what: "shared hosting, old stack (PostgreSQL 15, MariaDB 10.11)",
    },
    HostPlan {
        id: "shared-new",
        address: Ipv4Addr::new(192, 0, 2, 11),
        kind: AgentKind::Shared,
        stack: "2026.1",
        postgres: PgVersion::V18,
        mariadb: Some(MariaDbRelease::V11_8),
        what: "shared hosting, new stack (PostgreSQL 18, MariaDB 11.8)",
    },
    HostPlan {
        id: "test-1",
        address: Ipv4Addr::new(192, 0, 2, 12),
        kind: AgentKind::Test,
        stack: "2026.1",
        postgres: PgVersion::V18,
        mariadb: Some(MariaDbRelease::V11_8),
        what: "test host for the Test button (PostgreSQL 18, MariaDB 11.8)",
    },
    HostPlan {
        id: "transit-1",
        address: Ipv4Addr::new(192, 0, 2, 13),
        kind: AgentKind::Transit,
        stack: "2026.1",
        postgres: PgVersion::V18,
        mariadb: None,
        what: "transit host for dedicated servers and VPS",
    },
    HostPlan {
        id: "dedicated-1",
        address: Ipv4Addr::new(192, 0, 2, 20),
        kind: AgentKind::Dedicated,
        stack: "2024.1",
        postgres: PgVersion::V15,
        mariadb: Some(MariaDbRelease::V10_11),
        what: "a customer's dedicated server, old stack",
    },
];

fn main() {
    // Ctrl-C and SIGTERM are waited for below, so that the rig is torn
    // down; block them before any thread starts.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGINT);
    signals.add(Signal::SIGTERM);
    if let Err(error) = signals.thread_block() {
        eprintln!("navette-platform: blocking signals: {error}");
    }
    if let Err(error) = run(&signals) {
        eprintln!("navette-platform: {error:#}");
        std::process::exit(1);
    }
}

fn run(signals: &SigSet) -> anyhow::Result<()> {
    let started = Instant::now();
    let check_only = std::env::args().any(|a| a == "--check");
    say("Starting a local Navette platform (controller + 5 hosts)...");
    let rig = Rig::new("platform")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
    let hosts: Vec<Netns> = HOSTS
        .iter()
        .map(|plan| rig.add_namespace(plan.id, plan.address))
        .collect::<anyhow::Result<_>>()?;
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let mut starts = Vec::new();
        for (plan, host) in HOSTS.iter().zip(&hosts) {
            let rig = &rig;
            starts
                .push(scope.spawn(move || host.start_postgres(rig, plan.postgres, 5432).map(drop)));
            if let Some(release) = plan.mariadb {
                let spec = MariaDbSpec {
                    release,
                    ..MariaDbSpec::default()
                };
                starts.push(scope.spawn(move || host.start_mariadb_with(rig, spec).map(drop)));
            }
        }
        for start in starts {
            start
                .join()
                .map_err(|_| anyhow::anyhow!("a server start panicked"))??;
        }
        Ok(())
    })?;
    // The web servers of the old-stack host, whose sites run from the
    // start, and of the test host, where a test starts the copy's sites.
    let web_hosts = [&hosts[0], &hosts[2]];
    for host in web_hosts {
        host.start_web_server(&rig)?;
    }
    say("Database servers and web servers are up. Creating sample accounts...");
    let accounts = [
        (0, "alice", vec!["alice", "alice_shop"], vec!["alice_blog"]),
        (0, "bruno", vec!["bruno"], vec![]),
        (1, "chloe", vec!["chloe"], vec!["chloe_wiki"]),
        (4, "dmitri", vec!["dmitri_crm"], vec!["dmitri"]),
    ];
    for (host, name, pg, maria) in accounts {
        rig.add_account(
            &hosts[host],
            AccountSpec {
                name: name.to_owned(),
                password: format!("{name}-password"),
                pg_databases: pg.into_iter().map(str::to_owned).collect(),
                mariadb_databases: maria.into_iter().map(str::to_owned).collect(),
                files: true,
            },
        )?;
    }
    say("Enrolling the agents with one-time join tokens...");
    let mut agents = Vec::new();
    for (plan, host) in HOSTS.iter().zip(&hosts) {
        let token = rig.create_join_token(plan.id, plan.kind)?;
        agents.push(rig.start_agent(
            host,
            AgentSpec {
                kind: plan.kind,
                stack_version: plan.stack.to_owned(),
                token,
                ..AgentSpec::default()
            },
        )?);
    }
    rig.wait_until(
        "every host online",
        std::time::Duration::from_secs(60),
        || {
            let answer = rig.grpcurl_json("navette.v1.Hosts/ListHosts", &serde_json::json!({}))?;
            let hosts = answer["hosts"].as_array().cloned().unwrap_or_default();
            Ok(hosts.len() == HOSTS.len()
                && hosts.iter().all(|h| {
                    h["state"] == "HOST_STATE_ONLINE" && h.get("inventoryUpdatedAt").is_some()
                }))
        },
    )?;

    say("Starting the sites of the old-stack host's accounts (PHP 8.2 FPM behind nginx)...");
    for account in ["alice", "bruno"] {
        let request = StartSitesRequest {
            account: account.to_owned(),
            ..StartSitesRequest::default()
        };
        rig.client()
            .run_in(|| async {
                let channel = agents[0].controller_channel(&controller)?;
                AgentClient::new(channel)
                    .start_sites(request)
                    .await
                    .map_err(|status| anyhow::anyhow!("StartSites of {account}: {status:?}"))
            })
            .with_context(|| format!("starting the sites of {account} on shared-old"))?;
    }
    rig.wait_until(
        "alice's site answering on shared-old",
        std::time::Duration::from_secs(20),
        || {
            Ok(hosts[0]
                .http_get(
                    &rig,
                    "alice.example",
                    "/",
                    std::time::Duration::from_secs(5),
                )?
                .0
                == 200)
        },
    )?;

    let access = rig.controller_access()?;
    let wrapper = rig.dir().join("nv");
    write_wrapper(&wrapper, &rig, &access)?;
    println!();
    println!(
        "Navette is up in {:.1?} (rig {}):",
        started.elapsed(),
        rig.prefix()
    );
    println!(
        "  controller   {}  (API {}, enrolment {})",
        ctl.addr(),
        access.api,
        access.enrolment
    );
    for plan in &HOSTS {
        println!("  {:<12} {}  {}", plan.id, plan.address, plan.what);
    }
    println!();
    println!("Talk to it as an operator with grpcurl (the wrapper adds the client certificate):");
    let nv = wrapper.display();
    println!("  {nv} list                                  # services, through reflection");
    println!("  {nv} navette.v1.Hosts/ListHosts            # hosts and what they run");
    println!(
        "  {nv} navette.v1.Accounts/ListAccounts      # customer accounts and their databases"
    );
    println!("  {nv} navette.v1.Catalogue/ListMigrations '{{\"account\":\"alice\"}}'");
    println!("  {nv} navette.v1.Catalogue/GetMigration '{{\"id\":\"postgresql-15-to-18\"}}'");
    println!("  {nv} navette.v1.Hosts/WatchHosts           # live host events (Ctrl-C to stop)");
    println!(
        "alice's site on her own host, from the platform's client namespace (as a visitor would):"
    );
    println!(
        "  ip netns exec {} curl --resolve alice.example:80:{} http://alice.example/",
        rig.client().name(),
        HOSTS[0].address
    );
    println!();
    press_test(&rig, &wrapper)?;
    println!();
    println!(
        "Logs: {}/logs/   Controller config: {}",
        rig.dir().display(),
        controller.config_path().display()
    );
    if check_only {
        say("--check: tearing the platform down.");
        return Ok(());
    }
    println!("Press Ctrl-C to stop the platform and remove everything it created.");
    let _ = std::io::stdout().flush();
    let signal = signals.wait().context("waiting for Ctrl-C")?;
    say(&format!(
        "{signal:?}: stopping and removing the platform..."
    ));
    drop(rig);
    Ok(())
}

/// Presses *Test* for alice, as the control panel would, and follows it.
fn press_test(rig: &Rig, wrapper: &Path) -> anyhow::Result<()> {
    let access = rig.controller_access()?;
    let call = |method: &str, request: serde_json::Value| {
        rig.grpcurl_json_as(
            &access.panel,
            &format!("navette.v1.Tests/{method}"),
            &request,
        )
    };
    say(
        "Pressing Test for alice: a copy of her files and databases on test-1, which runs PostgreSQL 18...",
    );
    let started = call(
        "TestMigration",
        serde_json::json!({"request_id": "platform-demo", "account": "alice", "migration_id": "postgresql-15-to-18"}),
    )?;
    let id = started["id"].as_str().unwrap_or_default().to_owned();
    let deadline = Instant::now() + std::time::Duration::from_secs(300);
    let mut last_line = String::new();
    let test = loop {
        let test = call("GetTest", serde_json::json!({"id": id}))?;
        let state = test["state"]
            .as_str()
            .unwrap_or("")
            .trim_start_matches("STATE_")
            .to_lowercase();
        let progress = &test["progress"];
        let line = format!(
            "  test {id}: {state} {} {}/{} bytes, {}/{} files, {}/{} tables",
            progress["phase"].as_str().unwrap_or(""),
            progress["bytesDone"].as_str().unwrap_or("0"),
            progress["bytesTotal"].as_str().unwrap_or("0"),
            progress["filesDone"].as_str().unwrap_or("0"),
            progress["filesTotal"].as_str().unwrap_or("0"),
            progress["tablesDone"].as_str().unwrap_or("0"),
            progress["tablesTotal"].as_str().unwrap_or("0"),
        );
        if line != last_line {
            println!("{line}");
            last_line = line;
        }
        if matches!(state.as_str(), "ready" | "failed") || Instant::now() > deadline {
            break test;
        }
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    if test["state"] != "STATE_READY" {
        anyhow::bail!(
            "the test of alice did not finish: {}",
            test["error"]
                .as_str()
                .unwrap_or("still running after 5 minutes")
        );
    }
    println!();
    println!(
        "alice's test copy is ready; her account was not touched. Connect as her applications would:"
    );
    for line in test["connection"]["instructions"]
        .as_str()
        .unwrap_or("")
        .lines()
    {
        println!("  {line}");
    }
    println!(
        "  (password alice-password; from the platform's client namespace, e.g. ip netns exec {} psql -h 192.0.2.12 -U alice alice)",
        rig.client().name()
    );
    let previews = test["previews"].as_array().cloned().unwrap_or_default();
    if previews.is_empty() {
        anyhow::bail!(
            "alice's test has no site preview: {}",
            test["previewsNote"].as_str().unwrap_or("no reason given")
        );
    }
    println!("Her site runs on the test host, on the copy of her files and databases. Try it:");
    for preview in &previews {
        println!(
            "  ip netns exec {} {}",
            rig.client().name(),
            preview["command"].as_str().unwrap_or("")
        );
    }
    let domain = previews[0]["domains"][0]
        .as_str()
        .unwrap_or("alice.example");
    let test_host = rig
        .client()
        .command("curl")
        .args(["--silent", "--show-error", "--max-time", "10", "--resolve"])
        .arg(format!(
            "{domain}:80:{}",
            previews[0]["address"].as_str().unwrap_or("")
        ))
        .arg(format!("http://{domain}/"))
        .output()
        .context("running curl against the preview")?;
    let page = String::from_utf8_lossy(&test_host.stdout);
    if !test_host.status.success() || !page.contains("alice") {
        anyhow::bail!(
            "alice's site does not answer on the test host: {page} {}",
            String::from_utf8_lossy(&test_host.stderr)
        );
    }
    println!("  which answers (the page reads her copied databases):");
    for line in page.lines().filter(|l| !l.trim().is_empty()).take(6) {
        println!("    {line}");
    }
    let nv = wrapper.display();
    println!("Refresh it, watch it, or delete it:");
    println!("  {nv} navette.v1.Tests/RefreshTest '{{\"id\":\"{id}\"}}'");
    println!("  {nv} navette.v1.Tests/WatchTest '{{\"id\":\"{id}\"}}'");
    println!("  {nv} navette.v1.Tests/DeleteTest '{{\"id\":\"{id}\"}}'");
    Ok(())
}

fn say(text: &str) {
    println!("navette-platform: {text}");
    let _ = std::io::stdout().flush();
}

/// A tiny script that runs grpcurl as the operator from the platform's
/// client namespace.
fn write_wrapper(
    path: &Path,
    rig: &Rig,
    access: &navette_tests::ControllerAccess,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let script = format!(
        "#!/bin/sh\n\
         # grpcurl as the operator, from the Navette platform's client namespace.\n\
         #   nv list | nv describe SYMBOL | nv METHOD ['JSON request']\n\
         set -e\n\
         grpcurl() {{ ip netns exec {ns} grpcurl -cacert {ca} -cert {cert} -key {key} -servername controller.navette.internal \"$@\"; }}\n\
         case \"$1\" in\n\
           list|describe) grpcurl {api} \"$@\" ;;\n\
           *) method=$1; body=${{2:-}}; [ -n \"$body\" ] || body='{{}}'; grpcurl -d \"$body\" {api} \"$method\" ;;\n\
         esac\n",
        api = access.api,
        ns = rig.client().name(),
        ca = access.ca_file.display(),
        cert = access.operator.cert.display(),
        key = access.operator.key.display(),
    );
    std::fs::write(path, script)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(())
}
