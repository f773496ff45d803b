//! Every transition of the test kind: each (state, step) a test can be in,
//! against each input the engine delivers (start, cancel, the refresh
//! command, another command, the timer, a child's end, each step outcome,
//! a stopped step), and what the engine is told to do next.

use super::*;
use crate::model::CopyPlan;
use TestState as S;
use TestStep as P;

fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("a time")
}

fn test(state: TestState, step: TestStep) -> Test {
    let mut test = Test {
        id: "t1".into(),
        account: "alice".into(),
        migration_id: "postgresql-15-to-18".into(),
        source_host_id: "shared-old".into(),
        test_host_id: "test-1".into(),
        state,
        step,
        generation: 1,
        plan: CopyPlan {
            source_endpoint: String::new(),
            target_endpoint: String::new(),
            source_home: String::new(),
            databases: vec![],
            target_address: String::new(),
            protocol_version: 2,
            runs_sites: false,
            sites: vec![],
        },
        progress: None,
        error: String::new(),
        ttl_seconds: 60,
        created_at: now(),
        updated_at: now(),
        ready_at: None,
        expires_at: None,
        attempts: 2,
        outage: None,
    };
    if matches!(state, S::Ready | S::Refreshing | S::Deleting | S::Deleted) {
        test.ready_at = Some(now());
    }
    test.expires_at = test_flow::expiry(&test);
    test
}

/// Every (state, step) a test can be in.
const EVERY_STAGE: [(TestState, TestStep); 9] = [
    (S::Placing, P::Grant),
    (S::Copying, P::Copy),
    (S::Refreshing, P::Grant),
    (S::Refreshing, P::Copy),
    (S::Ready, P::None),
    (S::Failed, P::Remove),
    (S::Failed, P::None),
    (S::Deleting, P::Remove),
    (S::Deleted, P::None),
];

fn refresh_at(at: DateTime<Utc>) -> Input<TestOutcome> {
    Input::Event(Event::Command {
        name: REFRESH.to_owned(),
        payload: serde_json::to_value(Asked { at, plan: None }).expect("a payload"),
    })
}

fn finished(outcome: StepOutcome) -> Input<TestOutcome> {
    Input::Outcome(TestOutcome::Finished {
        outcome,
        at: now(),
        reached_target: false,
    })
}

/// Every input the engine may deliver, named.
fn every_input() -> Vec<(&'static str, Input<TestOutcome>)> {
    vec![
        ("start", Input::Event(Event::Start)),
        ("cancel", Input::Event(Event::Cancel)),
        ("refresh", refresh_at(now())),
        (
            "refresh without a time",
            Input::Event(Event::Command {
                name: REFRESH.to_owned(),
                payload: serde_json::json!({}),
            }),
        ),
        (
            "other command",
            Input::Event(Event::Command {
                name: "confirm".to_owned(),
                payload: serde_json::json!({}),
            }),
        ),
        ("timer", Input::Event(Event::Timer)),
        (
            "child finished",
            Input::Event(Event::ChildFinished {
                child: WorkflowId::from_stored("c-1".to_owned()),
                end: End::Completed,
            }),
        ),
        ("stopped", Input::Outcome(TestOutcome::Stopped)),
        ("granted", finished(StepOutcome::Granted)),
        (
            "copied",
            finished(StepOutcome::Copied(CopyProgress::default())),
        ),
        (
            "copy failed",
            finished(StepOutcome::CopyFailed("disk full".into())),
        ),
        ("removed", finished(StepOutcome::Removed)),
        (
            "unreachable",
            finished(StepOutcome::Unreachable("link down".into())),
        ),
        (
            "refused",
            finished(StepOutcome::Refused("no such account".into())),
        ),
    ]
}

/// What the engine does next, without its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Then {
    Run,
    RunLater,
    /// Wait for a command until the test's expiry.
    WaitForExpiry,
    Done,
}

fn then_of(next: &Next<TestStep>, test: &Test) -> Then {
    match next {
        Next::Run(step) => {
            assert_eq!(*step, test.step, "the engine runs the test's step");
            Then::Run
        }
        Next::RunAfter(step, _) => {
            assert_eq!(*step, test.step);
            Then::RunLater
        }
        Next::WaitUntil(at) => {
            assert_eq!(Some(*at), test.expires_at, "the timer is the expiry");
            Then::WaitForExpiry
        }
        Next::Done(End::Completed) => Then::Done,
        other => panic!("a test never goes on with {other:?}"),
    }
}

/// Where `input` leaves a test at (state, step): the new (state, step) and
/// what the engine does next.
fn expected(stage: (TestState, TestStep), input: &str) -> (TestState, TestStep, Then) {
    // What the engine does with a test that stays as it is.
    let stays = |(state, step): (TestState, TestStep)| {
        let then = match (state, step) {
            (S::Deleted, _) => Then::Done,
            (_, P::None) => Then::WaitForExpiry,
            _ => Then::Run,
        };
        (state, step, then)
    };
    let retried = |(state, step): (TestState, TestStep)| match step {
        P::None => stays((state, step)),
        _ => (state, step, Then::RunLater),
    };
    let ending = matches!(stage.0, S::Deleting | S::Deleted);
    match input {
        "cancel" | "timer" if !ending => (S::Deleting, P::Remove, Then::Run),
        "refresh" if stage == (S::Ready, P::None) => (S::Refreshing, P::Grant, Then::Run),
        "start"
        | "cancel"
        | "timer"
        | "refresh"
        | "refresh without a time"
        | "other command"
        | "child finished"
        | "stopped" => stays(stage),
        outcome => match (stage, outcome) {
            ((S::Placing, P::Grant), "granted") => (S::Copying, P::Copy, Then::Run),
            ((S::Refreshing, P::Grant), "granted") => (S::Refreshing, P::Copy, Then::Run),
            ((S::Copying | S::Refreshing, P::Copy), "copied") => {
                (S::Ready, P::None, Then::WaitForExpiry)
            }
            ((S::Copying | S::Refreshing, P::Copy), "copy failed" | "refused")
            | ((S::Placing | S::Refreshing, P::Grant), "refused") => {
                (S::Failed, P::Remove, Then::Run)
            }
            ((S::Failed, P::Remove), "removed") => (S::Failed, P::None, Then::WaitForExpiry),
            ((S::Deleting, P::Remove), "removed") => (S::Deleted, P::None, Then::Done),
            // Unreachable, a removal refused, or an outcome the step
            // cannot have: the same step, later; no step: nothing.
            _ => retried(stage),
        },
    }
}

#[test]
fn every_input_in_every_stage() {
    let mut pairs = 0;
    for stage in EVERY_STAGE {
        for (name, input) in every_input() {
            let before = test(stage.0, stage.1);
            let transition = decide(&before, input);
            let after = &transition.state;
            let got = (after.state, after.step, then_of(&transition.next, after));
            assert_eq!(got, expected(stage, name), "{stage:?} {name}");
            assert!(transition.children.is_empty());
            assert_eq!(
                after.expires_at,
                test_flow::expiry(after),
                "{stage:?} {name}: the expiry is recorded with every transition"
            );
            pairs += 1;
        }
    }
    assert_eq!(pairs, EVERY_STAGE.len() * every_input().len());
}

#[test]
fn a_refresh_during_a_copy_changes_nothing_and_the_copy_goes_on() {
    for stage in [(S::Copying, P::Copy), (S::Refreshing, P::Copy)] {
        let copying = test(stage.0, stage.1);
        let transition = decide(&copying, refresh_at(now()));
        assert_eq!(transition.state, copying);
        assert_eq!(transition.next, Next::Run(P::Copy));
    }
}

#[test]
fn a_refresh_starts_a_new_generation_with_the_copy_grace_from_when_it_was_asked() {
    let ready = test(S::Ready, P::None);
    let asked = now() + chrono::Duration::hours(1);
    let refreshing = decide(&ready, refresh_at(asked)).state;
    assert_eq!(refreshing.generation, 2);
    assert_eq!(refreshing.transfer_id(), "t1-g2");
    assert_eq!(refreshing.attempts, 0);
    assert_eq!(
        refreshing.expires_at,
        Some(now() + chrono::Duration::days(1)),
        "the grace counts from the last ready"
    );
}

#[test]
fn a_delete_during_a_refresh_wins_over_its_step() {
    for step in [P::Grant, P::Copy] {
        let refreshing = test(S::Refreshing, step);
        let deleting = decide(&refreshing, Input::Event(Event::Cancel));
        assert_eq!(
            (deleting.state.state, deleting.state.step, deleting.next),
            (S::Deleting, P::Remove, Next::Run(P::Remove))
        );
        // The copy the deletion stopped, or one that ended meanwhile:
        // the deletion, delivered next, still wins.
        let copied = decide(
            &refreshing,
            finished(StepOutcome::Copied(CopyProgress::default())),
        );
        let then_deleted = decide(&copied.state, Input::Event(Event::Cancel));
        assert_eq!(
            (then_deleted.state.state, then_deleted.state.step),
            (S::Deleting, P::Remove)
        );
        let stopped = decide(&refreshing, Input::Outcome(TestOutcome::Stopped));
        assert_eq!(stopped.state, refreshing, "a stopped step records nothing");
    }
}

#[test]
fn the_expiry_of_a_deleted_test_changes_nothing() {
    let deleted = test(S::Deleted, P::None);
    let fired = decide(&deleted, Input::Event(Event::Timer));
    assert_eq!(fired.state, deleted);
    assert_eq!(fired.next, Next::Done(End::Completed));
    let deleting = test(S::Deleting, P::Remove);
    let fired = decide(&deleting, Input::Event(Event::Timer));
    assert_eq!((fired.state, fired.next), (deleting, Next::Run(P::Remove)));
}

#[test]
fn a_timer_armed_for_an_older_expiry_is_armed_again_not_obeyed() {
    for stage in EVERY_STAGE {
        let armed = test(stage.0, stage.1);
        let Some(expiry) = armed.expires_at else {
            continue;
        };
        for stale in [None, Some(expiry - chrono::Duration::hours(1))] {
            let mut old = armed.clone();
            old.expires_at = stale;
            let fired = decide(&old, Input::Event(Event::Timer));
            assert_eq!(fired.state.state, stage.0, "{stage:?} {stale:?}");
            assert_eq!(fired.state.expires_at, Some(expiry), "{stage:?}");
            if stage.1 == P::None {
                assert_eq!(fired.next, Next::WaitUntil(expiry));
            }
        }
    }
}

#[test]
fn a_step_that_ends_after_the_expiry_leads_to_the_removal() {
    let mut copying = test(S::Copying, P::Copy);
    copying.ttl_seconds = 0;
    copying.expires_at = test_flow::expiry(&copying);
    let late = copying.expires_at.expect("an expiry") + chrono::Duration::seconds(1);
    let transition = decide(
        &copying,
        Input::Outcome(TestOutcome::Finished {
            outcome: StepOutcome::Unreachable("link down".into()),
            at: late,
            reached_target: false,
        }),
    );
    assert_eq!(
        (transition.state.state, transition.next),
        (S::Deleting, Next::Run(P::Remove))
    );
}

#[test]
fn an_outage_of_the_test_host_ends_when_the_step_reached_it() {
    let mut copying = test(S::Copying, P::Copy);
    let since = now() - chrono::Duration::minutes(5);
    copying.outage = Some(("test-1".into(), since));
    let outcome = |reached_target| {
        Input::Outcome(TestOutcome::Finished {
            outcome: StepOutcome::Unreachable("link down".into()),
            at: now(),
            reached_target,
        })
    };
    assert_eq!(
        decide(&copying, outcome(false)).state.outage,
        Some(("test-1".into(), since)),
        "still out: since when it was first seen out"
    );
    assert_eq!(
        decide(&copying, outcome(true)).state.outage,
        Some(("test-1".into(), now())),
        "out again after the copy got through: a new outage"
    );
}

#[test]
fn the_state_round_trips_through_its_stored_form() {
    let mut ready = test(S::Ready, P::None);
    ready.outage = Some(("test-1".into(), now()));
    let stored = serde_json::to_value(&ready).expect("stored");
    let read: Test = serde_json::from_value(stored.clone()).expect("read back");
    assert_eq!(read, ready);
    assert_eq!(stored["step"], "none");
    assert_eq!(stored["state"], "ready");
    // As the upgrade writes it (PostgreSQL's jsonb timestamps).
    let mut upgraded = stored;
    upgraded["created_at"] = serde_json::json!("2026-09-21T16:13:20.123456+02:00");
    upgraded["outage"] = serde_json::json!(["test-1", "2026-09-21T14:13:20+00:00"]);
    let read: Test = serde_json::from_value(upgraded).expect("an upgraded state");
    assert_eq!(read.created_at.timestamp(), 1_790_000_000);
}

#[test]
fn a_refresh_copies_the_plan_it_carries_and_a_refused_one_keeps_the_old() {
    let mut plan = test(S::Ready, P::None).plan;
    plan.databases.push(crate::model::DatabasePlan {
        engine: crate::model::Engine::Postgresql,
        name: "notes".into(),
        owner: "alice".into(),
        source_server: "main".into(),
        target_server: "main".into(),
        target_address: "192.0.2.12".into(),
        target_port: 5432,
        target_version: "18.6".into(),
    });
    let refresh = || {
        Input::Event(Event::Command {
            name: REFRESH.to_owned(),
            payload: serde_json::to_value(Asked {
                at: now(),
                plan: Some(plan.clone()),
            })
            .expect("a payload"),
        })
    };
    let refreshed = decide(&test(S::Ready, P::None), refresh()).state;
    assert_eq!(
        refreshed.plan, plan,
        "the new generation copies the account as it is now"
    );
    let copying = test(S::Copying, P::Copy);
    assert_eq!(decide(&copying, refresh()).state, copying);
}

#[test]
fn the_sites_run_from_the_copy_with_the_servers_the_copy_landed_on() {
    use crate::model::{DatabasePlan, DatabaseServer, Engine, Host, HostState, Site};
    let mut copying = test(S::Copying, P::Sites);
    copying.plan.runs_sites = true;
    copying.plan.sites = vec![Site {
        domains: vec!["alice.example".into()],
        document_root: "www".into(),
        runtime: "php".into(),
    }];
    copying.plan.databases = vec![DatabasePlan {
        engine: Engine::Postgresql,
        name: "alice".into(),
        owner: "alice".into(),
        source_server: "pg15".into(),
        target_server: "pg18-second".into(),
        target_address: "192.0.2.12".into(),
        target_port: 5433,
        target_version: "18".into(),
    }];
    let server = |name: &str, engine, port| DatabaseServer {
        name: name.into(),
        engine,
        version: String::new(),
        address: "192.0.2.12".into(),
        port,
        reachable: true,
        error: String::new(),
        available_extensions: vec![],
        data_directory_free_bytes: None,
        available_engines: vec![],
        replication_ready: true,
        replication_reason: String::new(),
    };
    let host = Host {
        id: "test-1".into(),
        kind: None,
        reported_kind: None,
        declared_disk_bytes: None,
        certificate_serial: None,
        removed: None,
        state: HostState::Online,
        draining: false,
        pool: None,
        stack_version: "2026.1".into(),
        agent_version: String::new(),
        agent_endpoint: String::new(),
        addresses: vec!["192.0.2.12".into()],
        disk_total_bytes: 0,
        disk_free_bytes: 0,
        database_servers: vec![
            server("pg18", Engine::Postgresql, 5432),
            server("mariadb", Engine::Mariadb, 3306),
        ],
        account_count: 0,
        enrolled_at: None,
        last_heartbeat_at: None,
        inventory_updated_at: None,
        certificate_expires_at: None,
        source_protocols: vec![],
        target_protocols: vec![],
        serves_sites: true,
    };
    let spec = sites_spec(&copying, &host);
    assert_eq!(spec.copy_id.as_deref(), Some("t1"), "from the copy's home");
    assert_eq!(spec.sites, copying.plan.sites);
    let databases = spec.databases.expect("the copy's endpoints");
    assert_eq!(
        databases.postgres,
        Some(("192.0.2.12".into(), 5433)),
        "the server the copy's database landed on, not the host's first"
    );
    assert_eq!(
        databases.mariadb,
        Some(("192.0.2.12".into(), 3306, String::new())),
        "no MariaDB database: the test host's first server"
    );
}

#[test]
fn the_sites_step_runs_between_the_copy_and_readiness() {
    let mut copying = test(S::Copying, P::Copy);
    copying.plan.runs_sites = true;
    let copied = decide(
        &copying,
        finished(StepOutcome::Copied(CopyProgress::default())),
    );
    assert_eq!(
        (copied.state.state, copied.state.step),
        (S::Copying, P::Sites)
    );
    assert_eq!(copied.next, Next::Run(P::Sites), "the sites start at once");
    let running = decide(&copied.state, finished(StepOutcome::SitesRunning(1)));
    assert_eq!(running.state.state, S::Ready);
    assert_eq!(
        running.next,
        Next::WaitUntil(running.state.expires_at.expect("a ready test expires")),
        "ready: waits for a command until its expiry"
    );
    // A delete while the sites start: the removal (which stops them) next.
    let deleted = decide(&copied.state, Input::Event(Event::Cancel));
    assert_eq!(deleted.state.state, S::Deleting);
    assert_eq!(deleted.next, Next::Run(P::Remove));
}
