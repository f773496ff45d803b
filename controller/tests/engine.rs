//! The workflow engine against a real PostgreSQL (the rig's), with kinds
//! that exist only here (`engine_kinds`).
//!
//! This binary has its own `main` (no libtest harness): started with
//! `NAVETTE_ENGINE_TEST_DATABASE` set, it is a "controller" that only runs
//! the engine's runner over the test kinds, until its stdin closes or it
//! is killed. The tests start two of them as child processes, so that one
//! can be killed with SIGKILL mid-run.
//!
//! `cargo test -p navette-controller --test engine` runs every test;
//! `... -- <part of a name>` some; `... -- bench` the benchmark instead
//! (see docs/BENCHMARKS.md and tests/bench-engine.sh).

mod engine_kinds;

use std::io::{BufRead, BufReader, Read};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child as Process, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use deadpool_postgres::Pool;
use engine_kinds::{
    Alarm, AlarmState, Child, ChildState, Parent, ParentState, Phase, Steps, StepsState, Switch,
    SwitchState, SwitchStep,
};
use navette_controller::engine::store::{self, Filter, NewWorkflow};
use navette_controller::engine::{
    End, Kind, Registry, Runner, RunnerConfig, RunnerStats, WorkflowId,
};
use navette_controller::{config, db};
use navette_tests::{PgVersion, Postgres, Rig};
use tokio::sync::broadcast;

const DATABASE_ENV: &str = "NAVETTE_ENGINE_TEST_DATABASE";
const OWNER_ENV: &str = "NAVETTE_ENGINE_TEST_OWNER";
const LEASE_ENV: &str = "NAVETTE_ENGINE_TEST_LEASE_MS";
const STEPS_PER_CLAIM_ENV: &str = "NAVETTE_ENGINE_BENCH_STEPS_PER_CLAIM";

type Test = fn(&Databases) -> anyhow::Result<()>;

const TESTS: &[(&str, Test)] = &[
    (
        "two_controllers_run_every_step_once_even_when_one_is_killed",
        two_controllers_run_every_step_once_even_when_one_is_killed,
    ),
    (
        "a_runner_whose_lease_was_taken_over_records_nothing",
        a_runner_whose_lease_was_taken_over_records_nothing,
    ),
    (
        "a_parent_ends_after_its_children_and_its_cancel_reaches_them",
        a_parent_ends_after_its_children_and_its_cancel_reaches_them,
    ),
    (
        "a_cancel_is_compensated_before_the_point_of_no_return_and_refused_after",
        a_cancel_is_compensated_before_the_point_of_no_return_and_refused_after,
    ),
    (
        "timers_fire_on_time_and_an_event_before_them_comes_first",
        timers_fire_on_time_and_an_event_before_them_comes_first,
    ),
];

fn main() -> ExitCode {
    if let Ok(url) = std::env::var(DATABASE_ENV) {
        return match controller_process(&url) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("engine test controller: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| !arg.starts_with('-'))
        .collect();
    if filters.first().map(String::as_str) == Some("bench") {
        return match Databases::start().and_then(|databases| bench(&databases)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("benchmark failed: {error:#}");
                ExitCode::FAILURE
            }
        };
    }
    let chosen: Vec<&(&str, Test)> = TESTS
        .iter()
        .filter(|(name, _)| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str())))
        .collect();
    println!("\nrunning {} tests", chosen.len());
    if chosen.is_empty() {
        return ExitCode::SUCCESS;
    }
    let databases = match Databases::start() {
        Ok(databases) => databases,
        Err(error) => {
            eprintln!("starting PostgreSQL for the engine tests: {error:#}");
            return ExitCode::FAILURE;
        }
    };
    let mut failed = Vec::new();
    for (name, test) in chosen {
        let started = Instant::now();
        match test(&databases) {
            Ok(()) => println!(
                "test {name} ... ok ({:.1} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(error) => {
                println!("test {name} ... FAILED\n{error:#}");
                failed.push(*name);
            }
        }
    }
    if failed.is_empty() {
        println!("\ntest result: ok");
        ExitCode::SUCCESS
    } else {
        println!("\ntest result: FAILED: {}", failed.join(", "));
        println!("{}", databases.rig.log_tails(30));
        ExitCode::FAILURE
    }
}

/// Every test kind, as the test controllers run them.
fn registry() -> Registry {
    Registry::new()
        .register(Steps)
        .register(Parent)
        .register(Child)
        .register(Switch)
        .register(Alarm)
}

/// A PostgreSQL 15 of the rig; a database of its own per test.
struct Databases {
    rig: Rig,
    postgres: Postgres,
}

impl Databases {
    fn start() -> anyhow::Result<Databases> {
        let rig = Rig::new("engine")?;
        let host = rig.add_namespace("db", Ipv4Addr::new(192, 0, 2, 2))?;
        let postgres = host.start_postgres(&rig, PgVersion::V15, 5432)?;
        postgres.psql("postgres", "CREATE ROLE navette LOGIN")?;
        Ok(Databases { rig, postgres })
    }

    /// A new empty database `name`; its connection string.
    fn database(&self, name: &str) -> anyhow::Result<String> {
        self.postgres
            .psql("postgres", &format!("CREATE DATABASE {name} OWNER navette"))?;
        Ok(format!(
            "host={} port={} user=navette dbname={name}",
            self.postgres.socket_dir().display(),
            self.postgres.port()
        ))
    }

    fn log(&self, name: &str) -> PathBuf {
        self.rig.dir().join("logs").join(format!("{name}.log"))
    }
}

fn database_config(url: &str) -> anyhow::Result<config::Database> {
    let text = format!("[database]\nurl = {url:?}\npool_size = 16\n");
    Ok(config::Config::parse(&text, Path::new("engine-test.toml"))?.database)
}

/// The pool (schema migrated) and the change listener, as a controller
/// has them.
async fn connect(url: &str) -> anyhow::Result<(Pool, broadcast::Sender<db::Change>)> {
    navette_proto::tls::install_crypto_provider();
    let settings = database_config(url)?;
    let pool = db::connect(&settings).await?;
    db::migrate(&pool).await?;
    let (changes, _) = broadcast::channel(1024);
    db::listen(
        &settings,
        &[navette_controller::engine::CHANNEL],
        changes.clone(),
    )?;
    Ok((pool, changes))
}

/// The child process: a runner over the test kinds; says `ready` on
/// stdout once running, ends when stdin closes.
fn controller_process(url: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter("warn,navette_controller=info")
        .init();
    let owner = std::env::var(OWNER_ENV).context(OWNER_ENV)?;
    let lease_ms: u64 = std::env::var(LEASE_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let steps_per_claim: usize = std::env::var(STEPS_PER_CLAIM_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(RunnerConfig::default().steps_per_claim);
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(async {
        let (pool, changes) = connect(url).await?;
        let config = RunnerConfig {
            lease: Duration::from_millis(lease_ms),
            renew_every: Duration::from_millis(lease_ms / 4),
            concurrency: 32,
            claim_batch: 16,
            poll: Duration::from_millis(500),
            steps_per_claim,
        };
        Runner::new(pool, registry(), owner, config).spawn(&changes);
        println!("ready");
        tokio::task::spawn_blocking(|| {
            let mut sink = Vec::new();
            let _ = std::io::stdin().read_to_end(&mut sink);
        })
        .await?;
        Ok(())
    })
}

/// A test controller process; killed with SIGKILL when dropped.
struct TestController {
    process: Process,
}

impl TestController {
    fn start(
        databases: &Databases,
        url: &str,
        name: &str,
        extra: &[(&str, String)],
    ) -> anyhow::Result<TestController> {
        let log = std::fs::File::create(databases.log(name))?;
        let mut command = Command::new(std::env::current_exe()?);
        command
            .env(DATABASE_ENV, url)
            .env(OWNER_ENV, name)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log);
        for (key, value) in extra {
            command.env(key, value);
        }
        let mut process = command.spawn().context("starting a test controller")?;
        let stdout = process.stdout.take().context("test controller stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        ensure!(
            line.trim() == "ready",
            "test controller {name} did not start (see {})",
            databases.log(name).display()
        );
        Ok(TestController { process })
    }

    /// `kill -9`.
    fn kill9(&mut self) -> anyhow::Result<()> {
        self.process.kill()?;
        self.process.wait()?;
        Ok(())
    }
}

impl Drop for TestController {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

async fn create<K: Kind>(pool: &Pool, id: &str, state: &K::State) -> anyhow::Result<WorkflowId> {
    let id = WorkflowId::parse(id, "id")?;
    let state = serde_json::to_value(state)?;
    let client = pool.get().await?;
    store::create(
        &**client,
        &NewWorkflow {
            id: &id,
            kind: K::NAME,
            state: &state,
            parent: None,
            sender: "engine test",
        },
    )
    .await?;
    Ok(id)
}

async fn count(pool: &Pool, sql: &str) -> anyhow::Result<i64> {
    let client = pool.get().await?;
    Ok(client.query_one(sql, &[]).await?.get(0))
}

async fn wait_for(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        if check().await? {
            return Ok(());
        }
        if started.elapsed() > timeout {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workflow(pool: &Pool, id: &WorkflowId) -> anyhow::Result<store::Workflow> {
    let client = pool.get().await?;
    Ok(store::get(&**client, id).await?)
}

async fn audit(
    pool: &Pool,
    id: &WorkflowId,
) -> anyhow::Result<Vec<navette_controller::engine::audit::Entry>> {
    let client = pool.get().await?;
    Ok(store::audit_trail(&**client, id, 10_000).await?)
}

fn block_on<T>(future: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    let runtime = tokio::runtime::Runtime::new()?;
    let result = runtime.block_on(future);
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

/// Must show 1: 200 workflows of 5 steps on two controllers, one killed
/// with SIGKILL while it holds leases mid-step: the audit trail has every
/// step of every workflow recorded exactly once, and every workflow ends.
fn two_controllers_run_every_step_once_even_when_one_is_killed(
    databases: &Databases,
) -> anyhow::Result<()> {
    let url = databases.database("engine_kill")?;
    block_on(async {
        let (pool, _) = connect(&url).await?;
        let mut first = TestController::start(databases, &url, "first", &[])?;
        let second = TestController::start(databases, &url, "second", &[])?;
        for n in 0..200 {
            create::<Steps>(&pool, &format!("steps-{n:03}"), &StepsState::new(5, 40)).await?;
        }
        wait_for(
            "300 of the 1000 steps",
            Duration::from_secs(60),
            async || {
                Ok(count(
                    &pool,
                    "SELECT count(*) FROM workflow_audit WHERE what = 'step'",
                )
                .await?
                    >= 300)
            },
        )
        .await?;
        first.kill9()?;
        let killed_at = chrono::Utc::now();
        let held = count(
            &pool,
            "SELECT count(*) FROM workflows WHERE lease_owner = 'first' AND lease_expires_at > now() AND NOT done",
        )
        .await?;
        ensure!(
            held > 0,
            "the first controller held no lease when killed: nothing was taken over"
        );
        wait_for(
            "every workflow to end",
            Duration::from_secs(120),
            async || Ok(count(&pool, "SELECT count(*) FROM workflows WHERE NOT done").await? == 0),
        )
        .await?;

        let client = pool.get().await?;
        let repeated = client
            .query(
                "SELECT workflow_id, step::text, count(*) FROM workflow_audit WHERE what = 'step'
                 GROUP BY 1, 2 HAVING count(*) <> 1",
                &[],
            )
            .await?;
        ensure!(
            repeated.is_empty(),
            "steps recorded more than once: {:?}",
            repeated
                .iter()
                .map(|r| (
                    r.get::<_, String>(0),
                    r.get::<_, String>(1),
                    r.get::<_, i64>(2)
                ))
                .collect::<Vec<_>>()
        );
        let steps = count(&pool, "SELECT count(DISTINCT (workflow_id, step::text)) FROM workflow_audit WHERE what = 'step'").await?;
        ensure!(steps == 1000, "{steps} distinct steps recorded, not 1000");
        let completed = count(
            &pool,
            "SELECT count(*) FROM workflows WHERE outcome = 'completed'",
        )
        .await?;
        ensure!(completed == 200, "{completed} of 200 workflows completed");
        for row in client.query("SELECT id, state FROM workflows", &[]).await? {
            let state: StepsState = serde_json::from_value(row.get(1))?;
            ensure!(
                state.ran_by.len() == 5,
                "{}: {:?}",
                row.get::<_, String>(0),
                state.ran_by
            );
        }
        let by_first = count(
            &pool,
            "SELECT count(*) FROM workflow_audit WHERE what = 'step' AND who = 'first'",
        )
        .await?;
        ensure!(
            by_first > 0,
            "the first controller recorded no step before it was killed"
        );
        let taken_over = client
            .query_one(
                "SELECT count(*) FROM workflow_audit WHERE what = 'step' AND who = 'second' AND at > $1",
                &[&killed_at],
            )
            .await?
            .get::<_, i64>(0);
        ensure!(
            taken_over > 0,
            "the second controller recorded nothing after the kill"
        );
        println!(
            "    steps recorded: {by_first} by the killed controller, {} by the other; {held} leases held at the kill",
            1000 - by_first
        );
        drop(second);
        Ok(())
    })
}

/// Must show 2: runner `slow` claims a step that takes longer than its
/// lease (it does not renew); runner `fast` takes the workflow over when
/// the lease expires and records the step; `slow`'s result is refused.
/// (`slow` may also claim it again once its own lease expired, and be
/// refused again: what counts is that it never records.)
fn a_runner_whose_lease_was_taken_over_records_nothing(
    databases: &Databases,
) -> anyhow::Result<()> {
    let url = databases.database("engine_fencing")?;
    block_on(async {
        let (pool, changes) = connect(&url).await?;
        let mut state = StepsState::new(1, 0);
        state.slow_owner = Some("slow".to_owned());
        state.slow_ms = 3000;
        let id = create::<Steps>(&pool, "fenced", &state).await?;
        let quick = |lease_ms: u64, renew_ms: u64| RunnerConfig {
            lease: Duration::from_millis(lease_ms),
            renew_every: Duration::from_millis(renew_ms),
            poll: Duration::from_millis(100),
            ..RunnerConfig::default()
        };
        let slow: std::sync::Arc<RunnerStats> = Runner::new(
            pool.clone(),
            registry(),
            "slow".to_owned(),
            quick(1000, 60_000),
        )
        .spawn(&changes);
        wait_for(
            "the slow runner to claim the step",
            Duration::from_secs(10),
            async || Ok(workflow(&pool, &id).await?.lease_owner.as_deref() == Some("slow")),
        )
        .await?;
        let fast = Runner::new(
            pool.clone(),
            registry(),
            "fast".to_owned(),
            quick(15_000, 5_000),
        )
        .spawn(&changes);
        wait_for("the workflow to end", Duration::from_secs(15), async || {
            Ok(workflow(&pool, &id).await?.end.is_some())
        })
        .await?;
        wait_for(
            "the slow runner's refused result",
            Duration::from_secs(10),
            async || Ok(RunnerStats::get(&slow.fenced_out) >= 1),
        )
        .await?;
        let done = workflow(&pool, &id).await?;
        ensure!(done.end == Some(End::Completed), "{done:?}");
        let state: StepsState = serde_json::from_value(done.state.clone())?;
        ensure!(
            state.ran_by == ["fast"],
            "the recorded state says {:?}",
            state.ran_by
        );
        let steps: Vec<_> = audit(&pool, &id)
            .await?
            .into_iter()
            .filter(|e| e.what == navette_controller::engine::audit::What::Step)
            .map(|e| e.who)
            .collect();
        ensure!(
            steps == ["fast"],
            "step entries in the audit trail: {steps:?}"
        );
        ensure!(
            RunnerStats::get(&slow.steps_recorded) == 0,
            "the slow runner recorded a step"
        );
        ensure!(RunnerStats::get(&fast.steps_recorded) == 1);
        // The same at the store: claims by "a", then (its lease expired)
        // by "b"; "a"'s token records nothing, "b"'s does.
        // A kind no runner drives, so that only this test claims it.
        let other = WorkflowId::parse("fenced-store", "id")?;
        let kinds = ["nobody-runs-this".to_owned()];
        let state = serde_json::to_value(StepsState::new(1, 0))?;
        {
            let client = pool.get().await?;
            store::create(
                &**client,
                &NewWorkflow {
                    id: &other,
                    kind: &kinds[0],
                    state: &state,
                    parent: None,
                    sender: "engine test",
                },
            )
            .await?;
        }
        let mut client = pool.get().await?;
        let a = store::claim(&client, "a", &kinds, Duration::from_millis(200), 1).await?;
        ensure!(a.len() == 1, "{a:?}");
        ensure!(
            store::claim(&client, "b", &kinds, Duration::from_secs(10), 1)
                .await?
                .is_empty(),
            "claimed while leased"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        let b = store::claim(&client, "b", &kinds, Duration::from_secs(10), 1).await?;
        ensure!(b.len() == 1 && b[0].fencing == a[0].fencing + 1, "{b:?}");
        let record = |owner, fencing| store::Record {
            id: &other,
            owner,
            fencing,
            state: &state,
            step: None,
            attempts: 0,
            run_in: None,
            run_at: None,
            timer: false,
            end: Some(&End::Completed),
            keep_lease: None,
            consumed: &[],
            requested: None,
            audit: &[],
            children: &[],
        };
        ensure!(
            store::record(&mut client, &record("a", a[0].fencing))
                .await?
                .is_none(),
            "a stale token recorded"
        );
        ensure!(workflow(&pool, &other).await?.end.is_none());
        ensure!(
            store::record(&mut client, &record("b", b[0].fencing))
                .await?
                .is_some(),
            "the current token did not record"
        );
        ensure!(workflow(&pool, &other).await?.end == Some(End::Completed));
        Ok(())
    })
}

/// Must show 3: a parent starts three children and ends only when the
/// third has; cancelling another parent cancels its unfinished children.
fn a_parent_ends_after_its_children_and_its_cancel_reaches_them(
    databases: &Databases,
) -> anyhow::Result<()> {
    let url = databases.database("engine_children")?;
    block_on(async {
        let (pool, changes) = connect(&url).await?;
        let config = RunnerConfig {
            poll: Duration::from_millis(200),
            ..RunnerConfig::default()
        };
        Runner::new(pool.clone(), registry(), "runner".to_owned(), config).spawn(&changes);
        let children_of = async |parent: &WorkflowId| -> anyhow::Result<Vec<store::Workflow>> {
            let client = pool.get().await?;
            Ok(store::list(
                &**client,
                &Filter {
                    parent: Some(parent),
                    include_ended: true,
                    limit: 10,
                    ..Filter::default()
                },
            )
            .await?)
        };
        let finish = async |child: &WorkflowId| -> anyhow::Result<()> {
            let client = pool.get().await?;
            store::command(
                &**client,
                child,
                "finish",
                &serde_json::json!({}),
                "engine test",
            )
            .await?;
            Ok(())
        };
        let parent_state =
            |w: &store::Workflow| serde_json::from_value::<ParentState>(w.state.clone());

        let parent = create::<Parent>(
            &pool,
            "parent",
            &ParentState {
                children: 3,
                finished: Vec::new(),
            },
        )
        .await?;
        wait_for("three children", Duration::from_secs(10), async || {
            Ok(children_of(&parent).await?.len() == 3)
        })
        .await?;
        let children: Vec<WorkflowId> = children_of(&parent)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        for child in &children[..2] {
            finish(child).await?;
        }
        wait_for(
            "the parent to hear of two children",
            Duration::from_secs(10),
            async || {
                Ok(parent_state(&workflow(&pool, &parent).await?)?
                    .finished
                    .len()
                    == 2)
            },
        )
        .await?;
        let waiting = workflow(&pool, &parent).await?;
        ensure!(
            waiting.end.is_none(),
            "the parent ended with a child still running: {waiting:?}"
        );
        finish(&children[2]).await?;
        wait_for("the parent to end", Duration::from_secs(10), async || {
            Ok(workflow(&pool, &parent).await?.end.is_some())
        })
        .await?;
        ensure!(workflow(&pool, &parent).await?.end == Some(End::Completed));
        for child in &children {
            let child = workflow(&pool, child).await?;
            ensure!(child.end == Some(End::Completed), "{child:?}");
            ensure!(serde_json::from_value::<ChildState>(child.state)?.worked);
        }

        let cancelled = create::<Parent>(
            &pool,
            "cancelled-parent",
            &ParentState {
                children: 3,
                finished: Vec::new(),
            },
        )
        .await?;
        wait_for("three children", Duration::from_secs(10), async || {
            Ok(children_of(&cancelled).await?.len() == 3)
        })
        .await?;
        let children: Vec<WorkflowId> = children_of(&cancelled)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        finish(&children[0]).await?;
        wait_for(
            "the parent to hear of its first child",
            Duration::from_secs(10),
            async || {
                Ok(parent_state(&workflow(&pool, &cancelled).await?)?
                    .finished
                    .len()
                    == 1)
            },
        )
        .await?;
        let delivered = {
            let mut client = pool.get().await?;
            store::cancel(&mut client, &cancelled, "operator alice").await?
        };
        let mut expected = vec![cancelled.clone(), children[1].clone(), children[2].clone()];
        expected[1..].sort();
        ensure!(delivered == expected, "cancel delivered to {delivered:?}");
        wait_for(
            "the parent and its children to end",
            Duration::from_secs(10),
            async || {
                for id in delivered.iter() {
                    if workflow(&pool, id).await?.end.is_none() {
                        return Ok(false);
                    }
                }
                Ok(true)
            },
        )
        .await?;
        for id in &delivered {
            let ended = workflow(&pool, id).await?;
            ensure!(ended.end == Some(End::Cancelled), "{ended:?}");
        }
        ensure!(workflow(&pool, &children[0]).await?.end == Some(End::Completed));
        let trail = audit(&pool, &children[1]).await?;
        ensure!(
            trail
                .iter()
                .any(|e| e.who == "operator alice (cancelling cancelled-parent)"
                    && e.detail.contains("ancestor cancelled-parent was cancelled")),
            "the child's trail does not say why it was cancelled: {trail:#?}"
        );
        Ok(())
    })
}

/// Must show 4: before the point of no return a cancel runs the
/// compensation; after it, the cancel is refused with FAILED_PRECONDITION
/// (as the operator API returns it) and the workflow completes; the trail
/// says who asked for the irreversible step.
fn a_cancel_is_compensated_before_the_point_of_no_return_and_refused_after(
    databases: &Databases,
) -> anyhow::Result<()> {
    use navette_controller::engine::audit::What;
    let url = databases.database("engine_switch")?;
    block_on(async {
        let (pool, changes) = connect(&url).await?;
        let config = RunnerConfig {
            poll: Duration::from_millis(200),
            ..RunnerConfig::default()
        };
        Runner::new(pool.clone(), registry(), "runner".to_owned(), config).spawn(&changes);
        let phase = async |id: &WorkflowId| -> anyhow::Result<Phase> {
            Ok(serde_json::from_value::<SwitchState>(workflow(&pool, id).await?.state)?.phase)
        };

        // Cancelled while awaiting confirmation: rolled back.
        let early = create::<Switch>(&pool, "early", &SwitchState::new(2000)).await?;
        wait_for(
            "the confirmation wait",
            Duration::from_secs(10),
            async || Ok(phase(&early).await? == Phase::AwaitingConfirmation),
        )
        .await?;
        {
            let mut client = pool.get().await?;
            store::cancel(&mut client, &early, "customer bob").await?;
        }
        wait_for("the rollback", Duration::from_secs(10), async || {
            Ok(workflow(&pool, &early).await?.end.is_some())
        })
        .await?;
        let ended = workflow(&pool, &early).await?;
        ensure!(ended.end == Some(End::Cancelled), "{ended:?}");
        ensure!(ended.point_of_no_return_at.is_none());
        let state: SwitchState = serde_json::from_value(ended.state)?;
        ensure!(
            state.done == [SwitchStep::Prepare, SwitchStep::RollBack],
            "{:?}",
            state.done
        );
        let trail = audit(&pool, &early).await?;
        ensure!(
            trail
                .iter()
                .any(|e| e.what == What::Compensation && e.step == "RollBack"),
            "{trail:#?}"
        );
        ensure!(
            trail
                .iter()
                .any(|e| e.what == What::Command && e.who == "customer bob"),
            "{trail:#?}"
        );

        // Confirmed, then cancelled during the switch: refused.
        let late = create::<Switch>(&pool, "late", &SwitchState::new(2000)).await?;
        wait_for(
            "the confirmation wait",
            Duration::from_secs(10),
            async || Ok(phase(&late).await? == Phase::AwaitingConfirmation),
        )
        .await?;
        {
            let client = pool.get().await?;
            store::command(
                &**client,
                &late,
                "confirm",
                &serde_json::json!({}),
                "customer alice",
            )
            .await?;
        }
        wait_for(
            "the point of no return",
            Duration::from_secs(10),
            async || {
                Ok(workflow(&pool, &late)
                    .await?
                    .point_of_no_return_at
                    .is_some())
            },
        )
        .await?;
        let refused = {
            let mut client = pool.get().await?;
            store::cancel(&mut client, &late, "operator carol").await
        };
        let Err(error) = refused else {
            bail!("a cancel after the point of no return was accepted: {refused:?}");
        };
        let status = navette_controller::api::status(error);
        ensure!(
            status.code() == tonic::Code::FailedPrecondition,
            "{status:?}"
        );
        ensure!(
            status.message().contains("passed its point of no return")
                && status.message().contains("asked by customer alice")
                && status.message().contains("can no longer be cancelled"),
            "{}",
            status.message()
        );
        wait_for(
            "the switch to complete",
            Duration::from_secs(10),
            async || Ok(workflow(&pool, &late).await?.end.is_some()),
        )
        .await?;
        let ended = workflow(&pool, &late).await?;
        ensure!(ended.end == Some(End::Completed), "{ended:?}");
        let state: SwitchState = serde_json::from_value(ended.state)?;
        ensure!(
            state.done == [SwitchStep::Prepare, SwitchStep::Switch, SwitchStep::Finish],
            "{:?}",
            state.done
        );
        let trail = audit(&pool, &late).await?;
        let passed: Vec<_> = trail
            .iter()
            .filter(|e| e.what == What::PointOfNoReturn)
            .collect();
        ensure!(
            passed.len() == 1 && passed[0].who == "customer alice" && passed[0].step == "Switch",
            "{trail:#?}"
        );
        ensure!(
            passed[0].detail.starts_with("asked at "),
            "{}",
            passed[0].detail
        );
        ensure!(
            trail
                .iter()
                .any(|e| e.what == What::CommandRefused && e.who == "operator carol"),
            "{trail:#?}"
        );
        ensure!(
            !trail.iter().any(|e| e.what == What::Compensation),
            "{trail:#?}"
        );
        Ok(())
    })
}

/// A workflow waiting on a timer (no notification announces it) is woken
/// when it is due; a command before it is delivered first.
fn timers_fire_on_time_and_an_event_before_them_comes_first(
    databases: &Databases,
) -> anyhow::Result<()> {
    let url = databases.database("engine_timers")?;
    block_on(async {
        let (pool, changes) = connect(&url).await?;
        Runner::new(
            pool.clone(),
            registry(),
            "runner".to_owned(),
            RunnerConfig::default(),
        )
        .spawn(&changes);
        let state = AlarmState {
            wait_ms: 1500,
            ..AlarmState::default()
        };
        let started = Instant::now();
        let alarm = create::<Alarm>(&pool, "alarm", &state).await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        {
            let client = pool.get().await?;
            store::command(
                &**client,
                &alarm,
                "poke",
                &serde_json::json!({}),
                "engine test",
            )
            .await?;
        }
        let poked_at = Instant::now();
        wait_for("the alarm to ring", Duration::from_secs(10), async || {
            Ok(workflow(&pool, &alarm).await?.end.is_some())
        })
        .await?;
        let rang_after = poked_at.elapsed();
        let ended = workflow(&pool, &alarm).await?;
        ensure!(ended.end == Some(End::Completed), "{ended:?}");
        let state: AlarmState = serde_json::from_value(ended.state)?;
        ensure!(state.rang && state.pokes == 1, "{state:?}");
        // Set again by the poke: 1.5 s after it, not after the start; and
        // on time although the runner's poll is 2 s.
        ensure!(
            rang_after >= Duration::from_millis(1450) && rang_after < Duration::from_millis(2500),
            "rang {rang_after:?} after the poke ({:?} after the start)",
            started.elapsed()
        );
        let trail = audit(&pool, &alarm).await?;
        ensure!(
            trail.iter().any(|e| e.detail == "timer fired"),
            "{trail:#?}"
        );
        Ok(())
    })
}

/// The benchmark: 1,000 workflows of 10 no-op steps on two test
/// controllers sharing the database; steps per second and pickup delays.
fn bench(databases: &Databases) -> anyhow::Result<()> {
    let workflows: usize = env_number("NAVETTE_ENGINE_BENCH_WORKFLOWS", 1000);
    let steps: u32 = env_number("NAVETTE_ENGINE_BENCH_STEPS", 10);
    // Workflows created per second; 0: all at once.
    let rate: f64 = env_number("NAVETTE_ENGINE_BENCH_RATE", 0.0);
    let steps_per_claim = std::env::var(STEPS_PER_CLAIM_ENV)
        .unwrap_or_else(|_| RunnerConfig::default().steps_per_claim.to_string());
    let url = databases.database("engine_bench")?;
    block_on(async {
        let (pool, _) = connect(&url).await?;
        let extra = [
            (STEPS_PER_CLAIM_ENV, steps_per_claim.clone()),
            (LEASE_ENV, "15000".to_owned()),
        ];
        let first = TestController::start(databases, &url, "first", &extra)?;
        let second = TestController::start(databases, &url, "second", &extra)?;
        let postmaster = databases.postgres.process().pid().unwrap_or(0);
        let database_cpu_before = backends_cpu_seconds(postmaster);
        let started = Instant::now();
        if rate > 0.0 {
            // Paced: one workflow every 1/rate s, below what the runners
            // can take, so that pickup delays are wake-ups, not a queue.
            let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
            for n in 0..workflows {
                ticks.tick().await;
                create::<Steps>(&pool, &format!("bench-{n:05}"), &StepsState::new(steps, 0))
                    .await?;
            }
        } else {
            // A burst: as fast as four connections can create them.
            let mut creators = tokio::task::JoinSet::new();
            for part in 0..4 {
                let pool = pool.clone();
                creators.spawn(async move {
                    for n in (part..workflows).step_by(4) {
                        create::<Steps>(
                            &pool,
                            &format!("bench-{n:05}"),
                            &StepsState::new(steps, 0),
                        )
                        .await?;
                    }
                    anyhow::Ok(())
                });
            }
            while let Some(created) = creators.join_next().await {
                created??;
            }
        }
        let created_in = started.elapsed();
        wait_for(
            "every workflow to end",
            Duration::from_secs(600),
            async || Ok(count(&pool, "SELECT count(*) FROM workflows WHERE NOT done").await? == 0),
        )
        .await?;
        let took = started.elapsed();
        let database_cpu = backends_cpu_seconds(postmaster) - database_cpu_before;
        let controllers_cpu: f64 = [first.process.id(), second.process.id()]
            .into_iter()
            .filter_map(|pid| cpu_seconds(pid).map(|(seconds, _)| seconds))
            .sum();
        let client = pool.get().await?;
        let total = count(
            &pool,
            "SELECT count(*) FROM workflow_audit WHERE what = 'step'",
        )
        .await?;
        let delays = |sql: &'static str| {
            let client = &client;
            async move {
                let row = client.query_one(sql, &[]).await?;
                anyhow::Ok((
                    row.get::<_, Option<f64>>(0).unwrap_or(0.0),
                    row.get::<_, Option<f64>>(1).unwrap_or(0.0),
                    row.get::<_, Option<f64>>(2).unwrap_or(0.0),
                ))
            }
        };
        let every = delays(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
             FROM (SELECT 1000 * EXTRACT(EPOCH FROM started_at - due_at)::float8 AS d
                   FROM workflow_audit WHERE what = 'step') s",
        )
        .await?;
        let first_steps = delays(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY d), percentile_cont(0.99) WITHIN GROUP (ORDER BY d), max(d)
             FROM (SELECT 1000 * EXTRACT(EPOCH FROM a.started_at - w.created_at)::float8 AS d
                   FROM workflow_audit a JOIN workflows w ON w.id = a.workflow_id
                   WHERE a.what = 'step' AND a.step = '0') s",
        )
        .await?;
        let by: Vec<(String, i64)> = client
            .query("SELECT who, count(*) FROM workflow_audit WHERE what = 'step' GROUP BY who ORDER BY who", &[])
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        let pace = if rate > 0.0 {
            format!("{rate} workflows created per second")
        } else {
            "all created at once".to_owned()
        };
        let rate = total as f64 / took.as_secs_f64();
        println!(
            "engine benchmark: {workflows} workflows x {steps} no-op steps, 2 controllers, steps per claim {steps_per_claim}, {pace}"
        );
        println!(
            "  created in {:.2} s; all ended {:.2} s after the first was created",
            created_in.as_secs_f64(),
            took.as_secs_f64()
        );
        println!("  steps recorded: {total} ({by:?})");
        println!("  steps per second:                      {rate:8.0}   (goal >= 500)");
        println!(
            "  pickup, every step (due -> start), ms: p50 {:6.2}  p99 {:6.2}  max {:7.2}   (goal p99 < 100)",
            every.0, every.1, every.2
        );
        println!(
            "  pickup, first step (created -> start): p50 {:6.2}  p99 {:6.2}  max {:7.2}",
            first_steps.0, first_steps.1, first_steps.2
        );
        println!(
            "  CPU used: PostgreSQL {database_cpu:.1} s, the two controllers {controllers_cpu:.1} s, in {:.1} s (load average {})",
            took.as_secs_f64(),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .split(' ')
                .next()
                .unwrap_or("?")
        );
        drop((first, second));
        Ok(())
    })
}

/// CPU seconds (user + system) used so far by process `pid`, from
/// `/proc/<pid>/stat` (clock ticks of 1/100 s), and its parent's pid.
fn cpu_seconds(pid: u32) -> Option<(f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let parent = fields.get(1)?.parse().ok()?;
    let user: f64 = fields.get(11)?.parse().ok()?;
    let system: f64 = fields.get(12)?.parse().ok()?;
    Some(((user + system) / 100.0, parent))
}

/// CPU seconds used so far by the backends of the PostgreSQL server whose
/// postmaster is `postmaster`.
fn backends_cpu_seconds(postmaster: u32) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(cpu_seconds_of_child(postmaster))
        .sum()
}

fn cpu_seconds_of_child(parent: u32) -> impl Fn(u32) -> Option<f64> {
    move |pid| match cpu_seconds(pid) {
        Some((seconds, of)) if of == parent => Some(seconds),
        _ => None,
    }
}

fn env_number<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
