//! Every transition of the test workflow: each (state, step) a test can be
//! in, against each command, the timer and each step outcome.

use super::*;
use crate::model::CopyPlan;

/// A fixed "now": the tests do not depend on the clock.
fn now() -> DateTime<Utc> {
    DateTime::from_timestamp(1_790_000_000, 0).expect("a time")
}

fn test(state: TestState, step: TestStep, attempts: u32) -> Test {
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
        attempts,
        outage: None,
    };
    if matches!(
        state,
        TestState::Ready | TestState::Refreshing | TestState::Deleting | TestState::Deleted
    ) {
        test.ready_at = Some(now());
    }
    // As recorded: the timer is the test's expiry.
    test.expires_at = expiry(&test);
    test
}

/// Every (state, step) a test can be in.
const EVERY_STAGE: [(TestState, TestStep); 9] = [
    (TestState::Placing, TestStep::Grant),
    (TestState::Copying, TestStep::Copy),
    (TestState::Refreshing, TestStep::Grant),
    (TestState::Refreshing, TestStep::Copy),
    (TestState::Ready, TestStep::None),
    (TestState::Failed, TestStep::Remove),
    (TestState::Failed, TestStep::None),
    (TestState::Deleting, TestStep::Remove),
    (TestState::Deleted, TestStep::None),
];

fn every_outcome() -> Vec<StepOutcome> {
    vec![
        StepOutcome::Granted,
        StepOutcome::Copied(CopyProgress::default()),
        StepOutcome::CopyFailed("disk full".into()),
        StepOutcome::Removed,
        StepOutcome::Unreachable("link down".into()),
        StepOutcome::Refused("no such account".into()),
    ]
}

fn finished(test: &Test, outcome: StepOutcome) -> Input {
    Input::Finished(Finished {
        step: test.step,
        generation: test.generation,
        outcome,
    })
}

/// The transition `input` records on `test`; a test failure if none.
fn recorded(test: &Test, input: Input, at: DateTime<Utc>) -> Transition {
    match next(Some(test), input.clone(), at) {
        Decision::Record(transition) => transition,
        other => panic!("{:?} on {:?}: {other:?}", input, (test.state, test.step)),
    }
}

fn step(test: &Test, outcome: StepOutcome) -> Transition {
    recorded(test, finished(test, outcome), now())
}

/// `test` after `input`, as the store records it.
fn after_input(test: &Test, input: Input, at: DateTime<Utc>) -> Test {
    recorded(test, input, at).applied(test, at)
}

fn event(event: Event) -> Input {
    Input::Event(event)
}

#[test]
fn create_starts_a_test_once() {
    let created = match next(None, event(Event::Create { ttl_seconds: 60 }), now()) {
        Decision::Record(transition) => transition,
        other => panic!("create: {other:?}"),
    };
    assert_eq!(
        (created.state, created.step, created.run),
        (Some(TestState::Placing), Some(TestStep::Grant), Run::Now)
    );
    assert_eq!(
        created.expires_at,
        Some(now() + chrono::Duration::days(1)),
        "a test not ready yet has the copy's grace (ttl is 60 s)"
    );
    // The same request again, whatever the test became: nothing changes.
    for (state, stage) in EVERY_STAGE {
        assert_eq!(
            next(
                Some(&test(state, stage, 0)),
                event(Event::Create { ttl_seconds: 60 }),
                now()
            ),
            Decision::Unchanged,
            "{state:?}"
        );
    }
    // Nothing but a create applies to a test that does not exist.
    for input in [
        event(Event::Refresh),
        event(Event::Delete),
        event(Event::Expire),
        Input::Finished(Finished {
            step: TestStep::Grant,
            generation: 1,
            outcome: StepOutcome::Granted,
        }),
    ] {
        assert!(matches!(next(None, input, now()), Decision::Refused(_)));
    }
}

#[test]
fn only_a_ready_test_is_refreshed() {
    for (state, stage) in EVERY_STAGE {
        let before = test(state, stage, 3);
        let decision = next(Some(&before), event(Event::Refresh), now());
        if state == TestState::Ready {
            let after = after_input(&before, event(Event::Refresh), now());
            assert_eq!(
                (after.state, after.step, after.generation, after.attempts),
                (TestState::Refreshing, TestStep::Grant, 2, 0),
                "a new generation into the same copy"
            );
            assert_eq!(after.expires_at, expiry(&after));
            assert_eq!(
                after.expires_at,
                Some(now() + chrono::Duration::days(1)),
                "a refresh has the copy's grace from the last ready"
            );
        } else {
            // A refresh during a copy, a refresh or a deletion: refused,
            // saying what the test is.
            match decision {
                Decision::Refused(why) => assert!(
                    why.contains(state.as_str()) && why.contains("only a ready test"),
                    "{why}"
                ),
                other => panic!("refresh of {state:?}: {other:?}"),
            }
        }
    }
}

#[test]
fn delete_removes_the_copy_from_every_state_once() {
    for (state, stage) in EVERY_STAGE {
        let mut before = test(state, stage, 5);
        before.outage = Some(("test-1".into(), now()));
        match state {
            TestState::Deleting | TestState::Deleted => assert_eq!(
                next(Some(&before), event(Event::Delete), now()),
                Decision::Unchanged,
                "deleting {state:?} again changes nothing"
            ),
            _ => {
                let transition = recorded(&before, event(Event::Delete), now());
                assert_eq!(transition.run, Run::Now, "the removal runs at once");
                let after = transition.applied(&before, now());
                assert_eq!(
                    (after.state, after.step, after.attempts, after.expires_at),
                    (TestState::Deleting, TestStep::Remove, 0, None),
                    "delete of {state:?}[{stage:?}]"
                );
                assert_eq!(
                    after.outage, before.outage,
                    "what the running step saw stays until it ends"
                );
            }
        }
    }
}

#[test]
fn a_due_timer_expires_every_test_not_already_ending() {
    let much_later = now() + chrono::Duration::days(400);
    for (state, stage) in EVERY_STAGE {
        let before = test(state, stage, 0);
        let decision = next(Some(&before), event(Event::Expire), much_later);
        match state {
            // Expiry of a deleted (or deleting) test: nothing.
            TestState::Deleting | TestState::Deleted => {
                assert_eq!(decision, Decision::Unchanged, "{state:?}")
            }
            _ => {
                let after = after_input(&before, event(Event::Expire), much_later);
                assert_eq!(
                    (after.state, after.step, after.expires_at),
                    (TestState::Deleting, TestStep::Remove, None),
                    "expiry of {state:?}[{stage:?}]"
                );
            }
        }
    }
}

#[test]
fn a_timer_that_fires_early_or_was_never_set_is_set_not_obeyed() {
    for (state, stage) in EVERY_STAGE {
        let armed = test(state, stage, 2);
        // Early: nothing to do, the timer is right.
        assert_eq!(
            next(Some(&armed), event(Event::Expire), now()),
            Decision::Unchanged,
            "{state:?}"
        );
        if armed.expires_at.is_none() {
            continue;
        }
        // A test recorded before timers existed: its timer is set, and
        // nothing else changes (its retry stays when it was due).
        let mut unarmed = armed.clone();
        unarmed.expires_at = None;
        let transition = recorded(&unarmed, event(Event::Expire), now());
        assert_eq!(
            transition,
            Transition {
                expires_at: armed.expires_at,
                ..Transition::default()
            }
        );
        assert_eq!(
            transition.applied(&unarmed, now()).expires_at,
            armed.expires_at
        );
    }
}

#[test]
fn every_test_that_is_not_deleted_expires() {
    let failed = test(TestState::Failed, TestStep::None, 0);
    assert_eq!(
        expiry(&failed),
        Some(failed.created_at + chrono::Duration::days(1)),
        "a failed test that was never ready expires, after the copy's grace (ttl is 60 s)"
    );
    let mut stuck = test(TestState::Copying, TestStep::Copy, 7);
    stuck.ttl_seconds = 30 * 86_400;
    assert_eq!(
        expiry(&stuck),
        Some(stuck.created_at + chrono::Duration::days(30)),
        "a stuck copy expires, ttl after its creation when longer than the grace"
    );
    let mut refreshing = test(TestState::Refreshing, TestStep::Copy, 0);
    let ready_at = refreshing.created_at + chrono::Duration::days(2);
    refreshing.ready_at = Some(ready_at);
    assert_eq!(
        expiry(&refreshing),
        Some(ready_at + chrono::Duration::days(1)),
        "a stuck refresh expires counted from the last copy"
    );
    let mut ready = test(TestState::Ready, TestStep::None, 0);
    let later_ready = ready.created_at + chrono::Duration::days(3);
    ready.ready_at = Some(later_ready);
    assert_eq!(
        expiry(&ready),
        Some(later_ready + chrono::Duration::seconds(60)),
        "a ready test expires ttl after it was ready"
    );
    for state in [TestState::Placing, TestState::Refreshing] {
        assert!(expiry(&test(state, TestStep::Grant, 0)).is_some());
    }
    for state in [TestState::Deleting, TestState::Deleted] {
        assert_eq!(expiry(&test(state, TestStep::None, 0)), None);
    }
    // A ttl beyond what a clock can count still expires, at the end of time.
    let mut forever = test(TestState::Ready, TestStep::None, 0);
    forever.ttl_seconds = u64::MAX;
    assert_eq!(expiry(&forever), Some(DateTime::<Utc>::MAX_UTC));
}

/// Where an outcome leads from one (state, step): the new (state, step),
/// `None` for "the same step, later".
type Leads = fn(&StepOutcome) -> Option<(TestState, TestStep)>;

/// What each step outcome does in each (state, step).
#[test]
fn every_outcome_of_every_step() {
    use StepOutcome as O;
    use TestState as S;
    use TestStep as P;
    let table: Vec<((S, P), Leads)> = vec![
        ((S::Placing, P::Grant), |o| match o {
            O::Granted => Some((S::Copying, P::Copy)),
            O::Unreachable(_) => None,
            O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None, // internal: retried
        }),
        ((S::Copying, P::Copy), |o| match o {
            O::Copied(_) => Some((S::Ready, P::None)),
            O::CopyFailed(_) | O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
        ((S::Refreshing, P::Grant), |o| match o {
            O::Granted => Some((S::Refreshing, P::Copy)),
            O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
        ((S::Refreshing, P::Copy), |o| match o {
            O::Copied(_) => Some((S::Ready, P::None)),
            O::CopyFailed(_) | O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
        ((S::Failed, P::Remove), |o| match o {
            O::Removed => Some((S::Failed, P::None)),
            _ => None, // a removal is never given up, refusals included
        }),
        ((S::Deleting, P::Remove), |o| match o {
            O::Removed => Some((S::Deleted, P::None)),
            _ => None,
        }),
        // No step: nothing to finish.
        ((S::Ready, P::None), |_| None),
        ((S::Failed, P::None), |_| None),
        ((S::Deleted, P::None), |_| None),
    ];
    assert_eq!(
        table.len(),
        EVERY_STAGE.len(),
        "every stage is in the table"
    );
    for ((state, stage), expected) in table {
        for outcome in every_outcome() {
            let before = test(state, stage, 2);
            let transition = step(&before, outcome.clone());
            let after = transition.applied(&before, now());
            let want = expected(&outcome);
            match want {
                Some((to_state, to_step)) => {
                    assert_eq!(
                        (after.state, after.step, after.attempts),
                        (to_state, to_step, 0),
                        "{state:?}[{stage:?}] {outcome:?}"
                    );
                    assert_eq!(transition.run, Run::Now, "{state:?} {outcome:?}");
                }
                None => {
                    assert_eq!(
                        (after.state, after.step),
                        (state, stage),
                        "{state:?}[{stage:?}] {outcome:?} stays"
                    );
                    if stage != P::None {
                        assert!(
                            matches!(transition.run, Run::After(_)),
                            "{state:?}[{stage:?}] {outcome:?} is retried later"
                        );
                        assert_eq!(after.attempts, 3, "one more attempt");
                    }
                }
            }
            assert_eq!(
                after.expires_at,
                expiry(&after),
                "the timer is recorded with every step"
            );
        }
    }
}

#[test]
fn a_test_goes_from_grant_to_copy_to_ready_and_expires_ttl_later() {
    let created = match next(None, event(Event::Create { ttl_seconds: 60 }), now()) {
        Decision::Record(transition) => transition,
        other => panic!("{other:?}"),
    };
    let mut live = test(TestState::Placing, TestStep::Grant, 0);
    assert_eq!(live.expires_at, created.expires_at);
    for outcome in [
        StepOutcome::Granted,
        StepOutcome::Copied(CopyProgress::default()),
    ] {
        live = after_input(&live, finished(&live, outcome), now());
    }
    assert_eq!((live.state, live.step), (TestState::Ready, TestStep::None));
    assert_eq!(live.ready_at, Some(now()));
    assert_eq!(
        live.expires_at,
        Some(now() + chrono::Duration::seconds(60)),
        "ready: the ttl counts from now"
    );
    // The timer is due: the copy goes.
    let due = live.expires_at.expect("a timer");
    assert_eq!(
        next(
            Some(&live),
            event(Event::Expire),
            due - chrono::Duration::seconds(1)
        ),
        Decision::Unchanged
    );
    live = after_input(&live, event(Event::Expire), due);
    assert_eq!(
        (live.state, live.step),
        (TestState::Deleting, TestStep::Remove)
    );
    live = after_input(&live, finished(&live, StepOutcome::Removed), due);
    assert_eq!(
        (live.state, live.step),
        (TestState::Deleted, TestStep::None)
    );
}

#[test]
fn a_refresh_stays_refreshing_until_ready() {
    let ready = test(TestState::Ready, TestStep::None, 0);
    let mut refreshing = after_input(&ready, event(Event::Refresh), now());
    refreshing = after_input(
        &refreshing,
        finished(&refreshing, StepOutcome::Granted),
        now(),
    );
    assert_eq!(
        (refreshing.state, refreshing.step, refreshing.generation),
        (TestState::Refreshing, TestStep::Copy, 2)
    );
    // A refresh during the refresh's copy is refused.
    assert!(matches!(
        next(Some(&refreshing), event(Event::Refresh), now()),
        Decision::Refused(_)
    ));
    let done = after_input(
        &refreshing,
        finished(&refreshing, StepOutcome::Copied(CopyProgress::default())),
        now(),
    );
    assert_eq!((done.state, done.generation), (TestState::Ready, 2));
}

#[test]
fn a_failed_copy_removes_the_partial_copy_and_stays_failed() {
    let failed = step(
        &test(TestState::Copying, TestStep::Copy, 0),
        StepOutcome::CopyFailed("disk full".into()),
    );
    assert_eq!(
        (failed.state, failed.step),
        (Some(TestState::Failed), Some(TestStep::Remove))
    );
    assert!(
        failed
            .error
            .as_deref()
            .is_some_and(|e| e.contains("disk full"))
    );
    let removed = step(
        &test(TestState::Failed, TestStep::Remove, 0),
        StepOutcome::Removed,
    );
    assert_eq!(
        (removed.state, removed.step),
        (Some(TestState::Failed), Some(TestStep::None))
    );
    assert_eq!(removed.error, None, "the failure's reason is kept");
}

#[test]
fn unreachable_agents_are_retried_with_backoff_then_given_up() {
    let retried = step(
        &test(TestState::Copying, TestStep::Copy, 2),
        StepOutcome::Unreachable("link down".into()),
    );
    assert_eq!((retried.state, retried.step), (None, None));
    assert_eq!(retried.run, Run::After(Duration::from_secs(4)));
    assert_eq!(
        retried.outage,
        Outage::Host("test-1".into()),
        "the copy waits for the test host"
    );
    let granting = step(
        &test(TestState::Placing, TestStep::Grant, 0),
        StepOutcome::Unreachable("down".into()),
    );
    assert_eq!(
        granting.outage,
        Outage::Host("shared-old".into()),
        "the grant waits for the source"
    );
    // The outage is recorded since it was first seen, kept while it lasts.
    let mut out = test(TestState::Copying, TestStep::Copy, 2);
    let first_seen = now() - chrono::Duration::seconds(30);
    out.outage = Some(("test-1".into(), first_seen));
    let still_out = retried.applied(&out, now());
    assert_eq!(still_out.outage, Some(("test-1".into(), first_seen)));
    let through = step(
        &test(TestState::Copying, TestStep::Copy, 2),
        StepOutcome::Copied(CopyProgress::default()),
    );
    assert_eq!(
        through.outage,
        Outage::Clear,
        "an outage ends when the step gets through"
    );
    assert_eq!(through.applied(&out, now()).outage, None);
    let since = chrono::Utc::now();
    let copying = test(TestState::Copying, TestStep::Copy, 2);
    assert_eq!(
        retried_until(&copying, since),
        Some(since + chrono::Duration::from_std(retried_for()).unwrap_or_default())
    );
    assert_eq!(
        retried_until(&test(TestState::Deleting, TestStep::Remove, 2), since),
        None
    );
    let given_up = step(
        &test(TestState::Copying, TestStep::Copy, MAX_ATTEMPTS - 1),
        StepOutcome::Unreachable("link down".into()),
    );
    assert_eq!(given_up.state, Some(TestState::Failed));
    assert!(
        given_up
            .error
            .as_deref()
            .is_some_and(|e| e.contains("gave up after 40 attempts")),
        "{:?}",
        given_up.error
    );
    let cleanup = step(
        &test(TestState::Deleting, TestStep::Remove, 100),
        StepOutcome::Unreachable("down".into()),
    );
    assert_eq!(cleanup.state, None, "removal is retried for ever");
    assert_eq!(cleanup.run, Run::After(Duration::from_secs(30)));
}

#[test]
fn a_refused_removal_is_retried_with_backoff_never_given_up() {
    let deleting = test(TestState::Deleting, TestStep::Remove, 3);
    let refused = step(
        &deleting,
        StepOutcome::Refused("transfer t1-g1 is still running".into()),
    );
    assert_eq!((refused.state, refused.step), (None, None));
    assert_eq!(refused.run, Run::After(Duration::from_secs(8)));
    assert!(
        refused
            .error
            .as_deref()
            .is_some_and(|e| e.contains("not removed yet (retried)")),
        "{:?}",
        refused.error
    );
    let later = step(
        &test(TestState::Failed, TestStep::Remove, 500),
        StepOutcome::Refused("still running".into()),
    );
    assert_eq!((later.state, later.step), (None, None), "never given up");
    assert_eq!(later.run, Run::After(Duration::from_secs(300)));
    // Retried: the removal runs again and, once the agent agrees, ends.
    let retried = refused.applied(&deleting, now());
    assert_eq!(retried.attempts, 4);
    let removed = after_input(&retried, finished(&retried, StepOutcome::Removed), now());
    assert_eq!(
        (removed.state, removed.step, removed.attempts),
        (TestState::Deleted, TestStep::None, 0)
    );
}

#[test]
fn step_outcomes_arriving_after_a_deletion_are_dropped() {
    // A step of every kind ran while DeleteTest (or expiry) was recorded.
    for (state, stage) in [
        (TestState::Placing, TestStep::Grant),
        (TestState::Copying, TestStep::Copy),
        (TestState::Refreshing, TestStep::Grant),
        (TestState::Refreshing, TestStep::Copy),
    ] {
        for deletion in [Event::Delete, Event::Expire] {
            let claimed = test(state, stage, 2);
            let at = match deletion {
                Event::Expire => claimed.expires_at.expect("a timer"),
                _ => now(),
            };
            let deleting = after_input(&claimed, event(deletion), at);
            for outcome in every_outcome() {
                let transition = recorded(&deleting, finished(&claimed, outcome.clone()), at);
                let settled = transition.applied(&deleting, at);
                assert_eq!(
                    (settled.state, settled.step, settled.expires_at),
                    (TestState::Deleting, TestStep::Remove, None),
                    "{state:?}[{stage:?}] then {deletion:?}, then {outcome:?}: the deletion wins"
                );
                assert_eq!(transition.run, Run::Now, "the removal runs at once");
                assert_eq!(settled.ready_at, deleting.ready_at, "not ready");
                assert_eq!(transition.error, None);
            }
        }
    }
    // A failed test's removal that ran when DeleteTest came: deleted.
    let failed = test(TestState::Failed, TestStep::Remove, 0);
    let deleting = after_input(&failed, event(Event::Delete), now());
    let removed = after_input(&deleting, finished(&failed, StepOutcome::Removed), now());
    assert_eq!(
        (removed.state, removed.step),
        (TestState::Deleted, TestStep::None)
    );
}

#[test]
fn delete_during_a_refresh_and_refresh_during_a_copy() {
    // Delete during a refresh: the copy goes, whatever the refresh did.
    let ready = test(TestState::Ready, TestStep::None, 0);
    let refreshing = after_input(&ready, event(Event::Refresh), now());
    let deleting = after_input(&refreshing, event(Event::Delete), now());
    assert_eq!(
        (deleting.state, deleting.step, deleting.generation),
        (TestState::Deleting, TestStep::Remove, 2)
    );
    let late_grant = after_input(
        &deleting,
        finished(&refreshing, StepOutcome::Granted),
        now(),
    );
    assert_eq!(
        (late_grant.state, late_grant.step),
        (TestState::Deleting, TestStep::Remove)
    );
    // Refresh during a copy: refused, the copy goes on.
    let copying = test(TestState::Copying, TestStep::Copy, 0);
    assert!(matches!(
        next(Some(&copying), event(Event::Refresh), now()),
        Decision::Refused(_)
    ));
}

#[test]
fn a_copy_waiting_for_its_source_shows_the_source_host_out() {
    use crate::model::CopyWaiting;
    let since = chrono::Utc::now() - chrono::Duration::seconds(4);
    let until = since + chrono::Duration::seconds(120);
    let waiting = CopyWaiting {
        what: "source PostgreSQL server main, database shop".into(),
        error: "connection refused".into(),
        since,
        until: Some(until),
    };
    let mut copying = test(TestState::Copying, TestStep::Copy, 0);
    copying.progress = Some(CopyProgress {
        tables_done: 2,
        waiting: Some(waiting.clone()),
        ..CopyProgress::default()
    });
    let shown = outage(&copying).expect("the copy waits for its source");
    assert_eq!(
        shown.host_id, "shared-old",
        "the source host, not the test host"
    );
    assert_eq!(
        (shown.since, shown.retried_until),
        (since, Some(until)),
        "the agent's own since and until"
    );
    assert!(
        shown
            .error
            .contains("source PostgreSQL server main, database shop")
            && shown.error.contains("connection refused"),
        "{}",
        shown.error
    );
    // The copy reaches its source again: the next progress has no
    // waiting, and the outage is gone.
    let mut through = copying.clone();
    through.progress = Some(CopyProgress {
        tables_done: 3,
        ..CopyProgress::default()
    });
    assert_eq!(outage(&through), None);
    // A refresh waits the same way.
    let mut refreshing = copying.clone();
    refreshing.state = TestState::Refreshing;
    assert_eq!(
        outage(&refreshing).map(|o| o.host_id),
        Some("shared-old".into())
    );
    // A test past its copy shows no outage from its last progress.
    for (state, stage) in [
        (TestState::Ready, TestStep::None),
        (TestState::Failed, TestStep::Remove),
        (TestState::Deleting, TestStep::Remove),
    ] {
        let mut past = copying.clone();
        (past.state, past.step) = (state, stage);
        assert_eq!(outage(&past), None, "{state:?}");
    }
    // A step that cannot reach the test host says so first, with its
    // own retry bound.
    let step_since = chrono::Utc::now();
    let mut cut_off = copying.clone();
    cut_off.outage = Some(("test-1".into(), step_since));
    cut_off.error = "link down".into();
    assert_eq!(
        outage(&cut_off),
        Some(HostOutage {
            host_id: "test-1".into(),
            since: step_since,
            retried_until: retried_until(&cut_off, step_since),
            error: "link down".into(),
        })
    );
}

/// A test whose plan runs sites (its test host serves them).
fn with_sites(state: TestState, step: TestStep, attempts: u32) -> Test {
    let mut test = test(state, step, attempts);
    test.plan.runs_sites = true;
    test.plan.sites = vec![crate::model::Site {
        domains: vec!["alice.example".into()],
        document_root: "www".into(),
        runtime: "php".into(),
    }];
    test
}

#[test]
fn every_outcome_of_the_sites_step() {
    use StepOutcome as O;
    use TestState as S;
    use TestStep as P;
    let table: Vec<((S, P), Leads)> = vec![
        // The copy is there: the sites are started from it, in the same state.
        ((S::Copying, P::Copy), |o| match o {
            O::Copied(_) => Some((S::Copying, P::Sites)),
            O::CopyFailed(_) | O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
        ((S::Refreshing, P::Copy), |o| match o {
            O::Copied(_) => Some((S::Refreshing, P::Sites)),
            O::CopyFailed(_) | O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
        ((S::Copying, P::Sites), |o| match o {
            O::SitesRunning(_) => Some((S::Ready, P::None)),
            O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None, // unreachable: retried; others: internal, retried
        }),
        ((S::Refreshing, P::Sites), |o| match o {
            O::SitesRunning(_) => Some((S::Ready, P::None)),
            O::Refused(_) => Some((S::Failed, P::Remove)),
            _ => None,
        }),
    ];
    let mut outcomes = every_outcome();
    outcomes.push(O::SitesRunning(1));
    for ((state, stage), expected) in table {
        for outcome in &outcomes {
            let before = with_sites(state, stage, 2);
            let transition = step(&before, outcome.clone());
            let after = transition.applied(&before, now());
            match expected(outcome) {
                Some((to_state, to_step)) => {
                    assert_eq!(
                        (after.state, after.step, after.attempts),
                        (to_state, to_step, 0),
                        "{state:?}[{stage:?}] {outcome:?}"
                    );
                    assert_eq!(transition.run, Run::Now, "{state:?} {outcome:?}");
                }
                None => {
                    assert_eq!(
                        (after.state, after.step),
                        (state, stage),
                        "{state:?}[{stage:?}] {outcome:?} stays"
                    );
                    assert!(
                        matches!(transition.run, Run::After(_)),
                        "{state:?}[{stage:?}] {outcome:?} is retried later"
                    );
                    assert_eq!(after.attempts, 3, "one more attempt");
                }
            }
            assert_eq!(after.expires_at, expiry(&after), "the timer is recorded");
        }
    }
    // A plan that runs no sites: the sites step never comes.
    let copied = step(
        &test(TestState::Copying, TestStep::Copy, 0),
        O::SitesRunning(1),
    );
    assert_eq!(copied.state, None, "an outcome the copy cannot have");
}

#[test]
fn a_test_with_sites_is_ready_once_they_run() {
    let mut live = with_sites(TestState::Placing, TestStep::Grant, 0);
    for outcome in [
        StepOutcome::Granted,
        StepOutcome::Copied(CopyProgress::default()),
    ] {
        live = after_input(&live, finished(&live, outcome), now());
    }
    assert_eq!(
        (live.state, live.step),
        (TestState::Copying, TestStep::Sites)
    );
    assert_eq!(live.ready_at, None, "not ready while the sites start");
    assert_eq!(
        host_of_step(&live),
        "test-1",
        "the sites run on the test host"
    );
    live = after_input(&live, finished(&live, StepOutcome::SitesRunning(1)), now());
    assert_eq!((live.state, live.step), (TestState::Ready, TestStep::None));
    assert_eq!(live.ready_at, Some(now()));
    // A refresh starts what the account has now, then is ready again.
    live = after_input(&live, event(Event::Refresh), now());
    for outcome in [
        StepOutcome::Granted,
        StepOutcome::Copied(CopyProgress::default()),
    ] {
        live = after_input(&live, finished(&live, outcome), now());
    }
    assert_eq!(
        (live.state, live.step, live.generation),
        (TestState::Refreshing, TestStep::Sites, 2)
    );
    live = after_input(&live, finished(&live, StepOutcome::SitesRunning(0)), now());
    assert_eq!((live.state, live.generation), (TestState::Ready, 2));
}

#[test]
fn sites_that_cannot_start_fail_the_test_with_the_reason() {
    let refused = step(
        &with_sites(TestState::Copying, TestStep::Sites, 0),
        StepOutcome::Refused("domain alice.example is already served".into()),
    );
    assert_eq!(
        (refused.state, refused.step),
        (Some(TestState::Failed), Some(TestStep::Remove))
    );
    let error = refused.error.unwrap_or_default();
    assert!(
        error.contains("sites could not be started on test host test-1")
            && error.contains("already served"),
        "{error}"
    );
    // Unreachable: retried, with the test host out, then given up.
    let retried = step(
        &with_sites(TestState::Copying, TestStep::Sites, 0),
        StepOutcome::Unreachable("down".into()),
    );
    assert_eq!((retried.state, retried.step), (None, None));
    assert_eq!(retried.outage, Outage::Host("test-1".into()));
    let given_up = step(
        &with_sites(TestState::Refreshing, TestStep::Sites, MAX_ATTEMPTS - 1),
        StepOutcome::Unreachable("down".into()),
    );
    assert_eq!(given_up.state, Some(TestState::Failed));
}

#[test]
fn a_deletion_during_the_sites_step_wins() {
    let starting = with_sites(TestState::Copying, TestStep::Sites, 0);
    let deleting = after_input(&starting, event(Event::Delete), now());
    assert_eq!(
        (deleting.state, deleting.step),
        (TestState::Deleting, TestStep::Remove)
    );
    // The sites step's outcome arrives after: dropped, the removal runs.
    let late = Input::Finished(Finished {
        step: TestStep::Sites,
        generation: starting.generation,
        outcome: StepOutcome::SitesRunning(1),
    });
    let after = recorded(&deleting, late, now());
    assert_eq!((after.state, after.step, after.run), (None, None, Run::Now));
}
