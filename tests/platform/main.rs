//! `navette-platform`: a whole local Navette platform on this machine, for
//! newcomers and demonstrations. Built on the test rig: a controller and
//! five hosts (network namespaces on one bridge) with real PostgreSQL and
//! MariaDB servers, sample customer accounts whose PHP sites run behind
//! each host's nginx, and enrolled agents. It presses *Test* for alice and
//! shows her site answering on the test host; then it presses *Migrate*
//! for erin, whose databases and site are under load the whole time
//! (pgbench and an HTTP loop through the platform's DNS names, among
//! others), and prints the migration's phases, its freeze window and what
//! each client saw. It prints what to type next, then keeps everything up
//! until Ctrl-C, and removes it all on the way out.

use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use navette_proto::v1::StartSitesRequest;
use navette_proto::v1::agent_client::AgentClient;
use navette_tests::migration_load::{self, LoadedAccount, Outcome};
use navette_tests::{
    AccountSpec, AgentKind, AgentSpec, ControllerSpec, DnsServer, MariaDb, MariaDbRelease,
    MariaDbSpec, Netns, PgSpec, PgVersion, Postgres, Rig,
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
    // The platform's DNS serves the domain and database host name of erin,
    // the account that migrates; the controller updates it when she moves.
    let dns = rig.start_dns(&migration_load::zones(MIGRATING))?;
    rig.resolve_through(rig.client(), &dns)?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let controller = rig.start_controller(
        &ctl,
        ControllerSpec {
            extra_config: migration_load::controller_config(&dns),
            ..ControllerSpec::default()
        },
    )?;
    let hosts: Vec<Netns> = HOSTS
        .iter()
        .map(|plan| rig.add_namespace(plan.id, plan.address))
        .collect::<anyhow::Result<_>>()?;
    // Each host's servers: (PostgreSQL, MariaDB). The shared hosts' are
    // set up as migrate_load's (durable commits on the source, a MariaDB
    // server id of its own on the target).
    let servers = std::thread::scope(
        |scope| -> anyhow::Result<Vec<(Postgres, Option<MariaDb>)>> {
            let mut starts = Vec::new();
            for (plan, host) in HOSTS.iter().zip(&hosts) {
                let rig = &rig;
                let pg = match plan.id {
                    "shared-old" => migration_load::source_pg_spec(),
                    _ => PgSpec::new(plan.postgres, 5432),
                };
                let maria = plan.mariadb.map(|release| match plan.id {
                    "shared-old" => migration_load::source_mariadb_spec(),
                    "shared-new" => migration_load::target_mariadb_spec(),
                    _ => MariaDbSpec {
                        release,
                        ..MariaDbSpec::default()
                    },
                });
                starts.push(scope.spawn(move || -> anyhow::Result<_> {
                    let pg = host.start_postgres_with(rig, pg)?;
                    let maria = maria
                        .map(|spec| host.start_mariadb_with(rig, spec))
                        .transpose()?;
                    Ok((pg, maria))
                }));
            }
            starts
                .into_iter()
                .map(|start| {
                    start
                        .join()
                        .map_err(|_| anyhow::anyhow!("a server start panicked"))?
                })
                .collect()
        },
    )?;
    // The web servers of the shared hosts, whose sites run from the start
    // on the old one and after her migration on the new one, and of the
    // test host, where a test starts the copy's sites.
    let web_hosts = [&hosts[0], &hosts[1], &hosts[2]];
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
    let (old_pg, Some(old_maria)) = &servers[0] else {
        anyhow::bail!("shared-old has no MariaDB");
    };
    let erin = LoadedAccount::create(
        &rig,
        &hosts[0],
        old_pg,
        old_maria,
        MIGRATING,
        "erin-password",
    )?;
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
    for account in ["alice", "bruno", MIGRATING] {
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
    println!(
        "  {:<12} {}  the platform's DNS (knotd): the sites' domains and databases' host names",
        "dns",
        dns.host().addr()
    );
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
    rig.wait_until(
        "erin's site answering and her databases in the inventory",
        std::time::Duration::from_secs(30),
        || {
            let found = rig.grpcurl_json(
                "navette.v1.Accounts/GetAccount",
                &serde_json::json!({"name": MIGRATING}),
            )?;
            let listed = |field: &str| found[field].as_array().map_or(0, Vec::len);
            Ok(listed("databases") == 3
                && listed("sites") > 0
                && hosts[0]
                    .http_get(
                        &rig,
                        &erin.domains[0],
                        "/visit.php",
                        std::time::Duration::from_secs(5),
                    )?
                    .0
                    == 200)
        },
    )?;
    let (new_pg, Some(new_maria)) = &servers[1] else {
        anyhow::bail!("shared-new has no MariaDB");
    };
    migrate_under_load(&rig, &dns, &hosts[0], &erin, new_pg, new_maria, &wrapper)?;
    println!();
    println!(
        "Logs: {}/logs/   Controller config: {}",
        rig.dir().display(),
        controller.config_path().display()
    );
    println!(
        "All of the above took {:.0?}.",
        std::time::Duration::from_secs(started.elapsed().as_secs())
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

/// The account that migrates under load.
const MIGRATING: &str = "erin";

/// The host id of `address`, for the newcomer ("192.0.2.11 (shared-new)").
fn host_of(address: &str) -> String {
    match HOSTS
        .iter()
        .find(|plan| plan.address.to_string() == address)
    {
        Some(plan) => format!("{address} ({})", plan.id),
        None => address.to_owned(),
    }
}

fn dns_line(answers: &[(String, Vec<String>)]) -> String {
    answers
        .iter()
        .map(|(name, addresses)| {
            let hosts: Vec<String> = addresses.iter().map(|a| host_of(a)).collect();
            format!("{name} -> {}", hosts.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Presses *Migrate* for erin while her clients run, follows it with
/// WatchMigration, and prints the freeze window and what each client saw,
/// checked on the new host. An error, after printing, when a client lost
/// something or saw an error.
fn migrate_under_load(
    rig: &Rig,
    dns: &DnsServer,
    old: &Netns,
    erin: &LoadedAccount,
    new_pg: &Postgres,
    new_maria: &MariaDb,
    wrapper: &Path,
) -> anyhow::Result<()> {
    say(&format!(
        "Pressing Migrate for {MIGRATING}: her account moves to shared-new (PostgreSQL 18, MariaDB 11.8) while her clients run:"
    ));
    println!(
        "  pgbench on her database {} through {} (2 clients, a new connection per transaction, started again after an error)",
        erin.bench, erin.db_name
    );
    println!(
        "  an HTTP client requesting {} in a loop (each visit writes a row in her PostgreSQL and MariaDB)",
        erin.url()
    );
    println!(
        "  a MariaDB client inserting numbered rows, and a process of hers appending numbered lines to a file in her home"
    );
    let dns_before = migration_load::dns_answers(rig, dns, erin)?;
    println!("  DNS before: {}", dns_line(&dns_before));
    let load = erin.start_load(rig, old)?;
    std::thread::sleep(std::time::Duration::from_secs(2));
    let pressed = Instant::now();
    let mut last_line = String::new();
    let mut id = String::new();
    let migrated = migration_load::migrate(
        rig,
        MIGRATING,
        "platform-migrate",
        std::time::Duration::from_secs(300),
        |run| {
            if id.is_empty() {
                id = run["id"].as_str().unwrap_or_default().to_owned();
            }
            let line = migration_load::progress_line(run);
            if line != last_line {
                println!("  [{:5.1} s] {line}", pressed.elapsed().as_secs_f64());
                let _ = std::io::stdout().flush();
                last_line = line;
            }
        },
    );
    let took = pressed.elapsed();
    // The clients keep going a little past the switch, onto the new host.
    std::thread::sleep(std::time::Duration::from_secs(3));
    let seen = load.stop()?;
    let migration = migrated.with_context(|| {
        format!(
            "migrating {MIGRATING} (logs: {}/logs/)",
            rig.dir().display()
        )
    })?;
    let outcome = Outcome::gather(rig, dns, erin, &migration, &seen, new_pg, new_maria)?;
    println!();
    println!(
        "{MIGRATING}'s migration completed in {:.1} s: she now runs on shared-new.",
        took.as_secs_f64()
    );
    match outcome.freeze_ms {
        Some(ms) => println!(
            "Freeze window: {ms} ms, from her first frozen process to the new host's first accepted write ({} freeze attempt(s)):",
            outcome.freeze_attempts
        ),
        None => println!("Freeze window: not recorded"),
    }
    for (part, ms) in &outcome.freeze_parts {
        println!("  {part:<32} {ms:>6} ms");
    }
    let mut problems = Vec::new();
    let tally = &seen.pgbench;
    println!(
        "pgbench: {} transactions committed; {} errors, each followed by a reconnect (pgbench started again)",
        tally.total(),
        tally.failed_runs
    );
    let history: u64 = outcome.pgbench_history.values().sum();
    if outcome.pgbench_all_found && outcome.pgbench_sums_agree {
        println!(
            "  all {} committed are on shared-new: pgbench_history holds {history} rows, per run and client as pgbench's log counted, and the balances sum to its deltas",
            tally.total()
        );
    } else {
        println!(
            "  NOT all committed found on shared-new: pgbench_history holds {history} rows for {} committed (balances agree: {})",
            tally.total(),
            outcome.pgbench_sums_agree
        );
        problems.push("pgbench's committed transactions on the new host");
    }
    let before = outcome.http_first_host.map(|a| host_of(&a.to_string()));
    let after = outcome.http_last_host.map(|a| host_of(&a.to_string()));
    println!(
        "HTTP: {} requests, {} errors, longest wait {} ms; answered by {} before, {} after ({} requests by the new host)",
        seen.requests.len(),
        outcome.http_failed.len(),
        outcome.http_longest.as_millis(),
        before.as_deref().unwrap_or("nobody"),
        after.as_deref().unwrap_or("nobody"),
        outcome.http_on_new
    );
    if !outcome.http_failed.is_empty() {
        problems.push("HTTP errors");
    }
    println!(
        "MariaDB client: {} rows acknowledged, {} missing on shared-new; her file: {} lines acknowledged, {}",
        seen.rows.numbers.len(),
        outcome.rows_missing.len(),
        seen.lines.numbers.len(),
        outcome
            .lines_error
            .as_deref()
            .unwrap_or("all in her new home, in order")
    );
    if !outcome.rows_missing.is_empty() {
        problems.push("MariaDB rows missing on the new host");
    }
    if outcome.lines_error.is_some() {
        problems.push("lines missing in the new home");
    }
    println!("DNS after:  {}", dns_line(&outcome.dns_after));
    let nv = wrapper.display();
    println!("Look at it again:");
    println!("  {nv} navette.v1.Migrations/GetMigration '{{\"id\":\"{id}\"}}'");
    if !problems.is_empty() {
        anyhow::bail!(
            "the migration under load went wrong: {}",
            problems.join(", ")
        );
    }
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
