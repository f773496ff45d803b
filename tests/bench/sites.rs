//! `navette-bench-sites`: how long a customer waits from pressing *Test*
//! until their site answers on the test host, for the sample account (the
//! rig's sample PHP site reading one PostgreSQL and one MariaDB database).
//! Figures, not a pass/fail test: see docs/BENCHMARKS.md ("Sites on the
//! test host") for the latest output.
//!
//! Each run presses *Test* (`Tests/TestMigration`) as the control panel
//! does, polls `Tests/GetTest` until the test is ready, then runs the
//! preview's command (the answer's `curl --resolve ...`) from the client
//! namespace until the page answers 200 with the account's rows; then
//! *Delete*, and the next run starts from nothing on the test host. Beside
//! it, as the floor: `StartSites` of the same site on the source, cold
//! (its pool not running).
//!
//! Options (environment): NAVETTE_SITES_BENCH_RUNS (5), NAVETTE_BIN_DIR
//! (binaries to run; default target/debug, as tests/bench-sites.sh builds).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use navette_proto::v1::{self, test::State};
use navette_tests::{AccountSpec, AgentKind, AgentSpec, ControllerSpec, PgVersion, Rig};

const ACCOUNT: &str = "nvbench_site";

/// The preview's command, run as given, with a status line: (status, body).
fn try_preview(rig: &Rig, command: &str) -> anyhow::Result<(u16, String)> {
    ensure!(
        command.starts_with("curl ") && !command.contains(['\'', '"', ';', '|', '&', '`', '$']),
        "the preview's command is a plain curl: {command:?}"
    );
    let output: std::process::Output = rig
        .client()
        .command("sh")
        .arg("-c")
        .arg(format!(
            "{command} --silent --max-time 5 --write-out '\\n%{{http_code}}'"
        ))
        .output()
        .context("running the preview's command")?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", stdout.as_ref()));
    Ok((code.trim().parse().unwrap_or(0), body.to_owned()))
}

/// Calls the panel's `Tests` service from the client namespace.
fn tests_call<T: Send>(
    rig: &Rig,
    call: impl AsyncFnOnce(
        &mut v1::tests_client::TestsClient<tonic::transport::Channel>,
    ) -> Result<tonic::Response<T>, tonic::Status>
    + Send,
) -> anyhow::Result<T> {
    let access = rig.controller_access()?;
    rig.run_in(rig.client(), || async move {
        let mut tests = v1::tests_client::TestsClient::new(access.channel(&access.panel)?);
        Ok(call(&mut tests).await?.into_inner())
    })
}

fn get(rig: &Rig, id: &str) -> anyhow::Result<v1::Test> {
    let id = id.to_owned();
    tests_call(rig, async move |t| {
        t.get_test(v1::GetTestRequest { id: id.clone() }).await
    })
}

/// One run: (TestMigration to ready, TestMigration to the site answering).
fn one_run(rig: &Rig, run: usize) -> anyhow::Result<(Duration, Duration)> {
    let started = Instant::now();
    let pressed = tests_call(rig, async move |t| {
        t.test_migration(v1::TestMigrationRequest {
            request_id: format!("bench-sites-{run}"),
            account: ACCOUNT.to_owned(),
            migration_id: "postgresql-15-to-18".to_owned(),
            ttl_seconds: 0,
        })
        .await
    })?;
    let ready = loop {
        let test = get(rig, &pressed.id)?;
        match test.state() {
            State::Ready => break test,
            State::Failed => bail!("test {} failed: {}", test.id, test.error),
            _ if started.elapsed() > Duration::from_secs(300) => {
                bail!("test {} not ready after 300 s", test.id)
            }
            _ => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    let to_ready = started.elapsed();
    let command = ready
        .previews
        .first()
        .map(|p| p.command.clone())
        .with_context(|| format!("the ready test gives no preview: {ready:?}"))?;
    let to_answer = loop {
        let (status, body) = try_preview(rig, &command)?;
        if status == 200 && body.contains("mariadb: apple,banana,cherry") {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(300) {
            bail!("the preview does not answer: {status} {body}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let id = pressed.id.clone();
    tests_call(rig, async move |t| {
        t.delete_test(v1::DeleteTestRequest { id: id.clone() })
            .await
    })?;
    let deleting = Instant::now();
    while get(rig, &pressed.id)?.state() != State::Deleted {
        ensure!(
            deleting.elapsed() < Duration::from_secs(120),
            "test {} not deleted after 120 s",
            pressed.id
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok((to_ready, to_answer))
}

/// (median, max) of `times`.
fn median_max(times: &[Duration]) -> (Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort();
    (
        sorted.get(sorted.len() / 2).copied().unwrap_or_default(),
        sorted.last().copied().unwrap_or_default(),
    )
}

fn seconds(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64())
}

fn main() -> anyhow::Result<()> {
    let runs: usize = std::env::var("NAVETTE_SITES_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .max(1);
    let rig = Rig::new("bench-sites")?;
    let ctl = rig.add_namespace("ctl", Ipv4Addr::new(192, 0, 2, 2))?;
    let controller = rig.start_controller(&ctl, ControllerSpec::default())?;
    let source = rig.add_namespace("shared-old", Ipv4Addr::new(192, 0, 2, 10))?;
    let target = rig.add_namespace("test-1", Ipv4Addr::new(192, 0, 2, 12))?;
    source.start_postgres(&rig, PgVersion::V15, 5432)?;
    target.start_postgres(&rig, PgVersion::V18, 5432)?;
    source.start_mariadb(&rig)?;
    target.start_mariadb_11_8(&rig)?;
    source.start_web_server(&rig)?;
    target.start_web_server(&rig)?;
    rig.add_account(
        &source,
        AccountSpec {
            name: ACCOUNT.into(),
            password: "bench".into(),
            pg_databases: vec![ACCOUNT.into()],
            mariadb_databases: vec![format!("{ACCOUNT}_shop")],
            files: true,
        },
    )?;
    let mut agents = Vec::new();
    for (host, kind, stack) in [
        (&source, AgentKind::Shared, "2024.1"),
        (&target, AgentKind::Test, "2026.1"),
    ] {
        let token = rig.create_join_token(host.host(), kind)?;
        agents.push(rig.start_agent(
            host,
            AgentSpec {
                kind,
                stack_version: stack.to_owned(),
                token,
                ..AgentSpec::default()
            },
        )?);
    }
    rig.wait_until("both hosts serve sites", Duration::from_secs(60), || {
        let answer = rig.grpcurl_json("navette.v1.Hosts/ListHosts", &serde_json::json!({}))?;
        let hosts = answer["hosts"].as_array().cloned().unwrap_or_default();
        Ok(hosts.len() == 2 && hosts.iter().all(|h| h["inventoryUpdatedAt"].is_string()))
    })?;

    // The floor: the same site started cold on the source.
    let floor_started = Instant::now();
    rig.client().run_in(|| async {
        let channel = agents[0].controller_channel(&controller)?;
        v1::agent_client::AgentClient::new(channel)
            .start_sites(v1::StartSitesRequest {
                account: ACCOUNT.to_owned(),
                ..v1::StartSitesRequest::default()
            })
            .await
            .map_err(|status| anyhow::anyhow!("StartSites on the source: {status:?}"))
    })?;
    let domain = navette_tests::sample_domains(ACCOUNT)[0].clone();
    let floor = loop {
        let (status, _) = source.http_get(&rig, &domain, "/", Duration::from_secs(5))?;
        if status == 200 {
            break floor_started.elapsed();
        }
        ensure!(
            floor_started.elapsed() < Duration::from_secs(30),
            "the source's site does not answer"
        );
        std::thread::sleep(Duration::from_millis(20));
    };

    let mut readies = Vec::new();
    let mut answers = Vec::new();
    println!(
        "| run | TestMigration to ready (s) | TestMigration to the site answering on the test host (s) |"
    );
    println!("|---|---|---|");
    for run in 1..=runs {
        let (ready, answer) = one_run(&rig, run)?;
        println!("| {run} | {} | {} |", seconds(ready), seconds(answer));
        readies.push(ready);
        answers.push(answer);
    }
    let (ready_median, ready_max) = median_max(&readies);
    let (answer_median, answer_max) = median_max(&answers);
    println!(
        "| median / max | {} / {} | {} / {} |",
        seconds(ready_median),
        seconds(ready_max),
        seconds(answer_median),
        seconds(answer_max)
    );
    println!(
        "\nthe floor: StartSites of the same site, cold, on the source, to its first answer: {} s",
        seconds(floor)
    );
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}
