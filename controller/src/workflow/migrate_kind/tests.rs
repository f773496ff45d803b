//! Every edge of the migration's transition ([`decide`]), and every
//! (step, input) pair checked against the rules that hold for all of them:
//! nothing past the switch rolls back, a rollback and the steps after the
//! switch are never given up, and a cancel before the switch always leads
//! to the rollback.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};

use super::*;
use crate::model::{CopyPlan, CopyProgress};
use crate::workflow::migrate_run::{Backlog, DnsPlan, FreezePart, FreezeWindow, MigrateSettings};

fn at(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + seconds, 0)
        .single()
        .unwrap_or_default()
}

fn settings() -> MigrateSettings {
    MigrateSettings {
        freeze_deadline_ms: 5_000,
        freeze_tries: 3,
        backlog_threshold_bytes: 1 << 20,
        backlog_threshold_transactions: 100,
        converge_poll_ms: 500,
        retire_after_secs: 3_600,
        backlog_threshold_paths: 1_000,
        forward_for_secs: 600,
    }
}

fn run(state: MigrateState, step: MigrateStep) -> MigrationRun {
    MigrationRun {
        id: "m0123456789abcdef".into(),
        request_id: "r-1".into(),
        account: "alice".into(),
        migration_id: "postgresql-15-to-18".into(),
        source_host_id: "shared-old".into(),
        target_host_id: "shared-new".into(),
        plan: CopyPlan {
            source_endpoint: "192.0.2.10:7443".into(),
            target_endpoint: "192.0.2.11:7443".into(),
            source_home: "/home/alice".into(),
            databases: Vec::new(),
            target_address: "192.0.2.11".into(),
            protocol_version: 2,
            runs_sites: false,
            sites: Vec::new(),
        },
        settings: settings(),
        state,
        step,
        attempts: 0,
        phase: String::new(),
        error: String::new(),
        slots: BTreeMap::new(),
        journal_epoch: 0,
        dns: None,
        snapshot_positions: BTreeMap::new(),
        progress: None,
        backlog: None,
        freeze_tries: 0,
        freeze: None,
        missed_freezes: Vec::new(),
        cancelled: false,
        retire_at: None,
        forward_until: None,
        retired_at: None,
        unforwarded_at: None,
        removed: Vec::new(),
        created_at: at(0),
        updated_at: at(0),
    }
}

fn backlog(bytes: u64, transactions: u64) -> Backlog {
    Backlog {
        postgres_lag_bytes: bytes,
        mariadb_transactions: transactions,
        files_pending: 0,
        files_full_comparison: false,
        journal: None,
        rows: Default::default(),
        mariadb_rows: Default::default(),
        unverified: Vec::new(),
        measured_at: at(10),
    }
}

fn window(missed: &str) -> FreezeWindow {
    FreezeWindow {
        frozen_at: at(20),
        total_ms: 300,
        parts: vec![FreezePart {
            name: "freeze sites".into(),
            ms: 1,
        }],
        missed_because: missed.into(),
        sites_frozen: false,
        unverified: Vec::new(),
    }
}

fn outcome(o: MigrateOutcome) -> Input<MigrateOutcome> {
    Input::Outcome(o)
}

/// Every outcome a step can come to, one of each.
fn every_outcome() -> Vec<MigrateOutcome> {
    vec![
        MigrateOutcome::Prepared {
            slots: [("shop".to_owned(), "navette_slot".to_owned())].into(),
            journal_epoch: 7,
            dns: None,
        },
        MigrateOutcome::Copied {
            positions: [("mariadb:blog".to_owned(), "0-1-9".to_owned())].into(),
            progress: CopyProgress::default(),
        },
        MigrateOutcome::CopyFailed("disk full".into()),
        MigrateOutcome::Replicating,
        MigrateOutcome::Measured(backlog(10, 0)),
        MigrateOutcome::Measured(backlog(10 << 20, 0)),
        MigrateOutcome::Frozen(window("")),
        MigrateOutcome::FreezeMissed(window("deadline")),
        MigrateOutcome::VerifyMismatch(window("www/index.php (contents)")),
        MigrateOutcome::Switched {
            parts: Vec::new(),
            accepted_at: at(21),
        },
        MigrateOutcome::Finished { at: at(22) },
        MigrateOutcome::Retired {
            at: at(3_700),
            removed: Vec::new(),
        },
        MigrateOutcome::Unforwarded { at: at(700) },
        MigrateOutcome::RolledBack,
        MigrateOutcome::Unreachable("no answer".into()),
        MigrateOutcome::Refused("no".into()),
        MigrateOutcome::Stopped,
    ]
}

/// Every (state, step) a migration can be in.
fn every_position() -> Vec<(MigrateState, MigrateStep)> {
    use MigrateState as St;
    use MigrateStep as S;
    vec![
        (St::Preparing, S::Prepare),
        (St::Copying, S::Copy),
        (St::Replicating, S::Replicate),
        (St::Converging, S::Converge),
        (St::Freezing, S::Freeze),
        (St::Freezing, S::Switch),
        (St::Switched, S::Finish),
        (St::Switched, S::None),
        (St::Switched, S::Retire),
        (St::Switched, S::Unforward),
        (St::Completed, S::None),
        (St::RollingBack, S::Rollback),
        (St::Failed, S::None),
        (St::Cancelled, S::None),
    ]
}

fn events() -> Vec<Event> {
    vec![
        Event::Start,
        Event::Cancel,
        Event::Timer,
        Event::Command {
            name: "x".into(),
            payload: serde_json::json!({}),
        },
    ]
}

#[test]
fn the_happy_path_runs_every_step_in_order() {
    let start = run(MigrateState::Preparing, MigrateStep::Prepare);
    let t = decide(&start, Input::Event(Event::Start));
    assert_eq!(t.next, Next::Run(MigrateStep::Prepare));

    let t = decide(
        &start,
        outcome(MigrateOutcome::Prepared {
            slots: [("shop".to_owned(), "slot_shop".to_owned())].into(),
            journal_epoch: 7,
            dns: None,
        }),
    );
    assert_eq!(
        (t.state.state, t.state.step),
        (MigrateState::Copying, MigrateStep::Copy)
    );
    assert_eq!(t.state.slots["shop"], "slot_shop");

    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Copied {
            positions: [("mariadb:blog".to_owned(), "0-1-9".to_owned())].into(),
            progress: CopyProgress::default(),
        }),
    );
    assert_eq!(t.next, Next::Run(MigrateStep::Replicate));
    assert_eq!(t.state.snapshot_positions["mariadb:blog"], "0-1-9");

    let t = decide(&t.state, outcome(MigrateOutcome::Replicating));
    assert_eq!(
        (t.state.state, t.next.clone()),
        (MigrateState::Converging, Next::Run(MigrateStep::Converge))
    );

    let t = decide(&t.state, outcome(MigrateOutcome::Measured(backlog(100, 2))));
    assert_eq!(
        (t.state.state, t.next.clone()),
        (MigrateState::Freezing, Next::Run(MigrateStep::Freeze))
    );
    assert_eq!(t.state.freeze_tries, 1);

    let t = decide(&t.state, outcome(MigrateOutcome::Frozen(window(""))));
    assert_eq!(
        (t.state.state, t.next.clone()),
        (MigrateState::Freezing, Next::Run(MigrateStep::Switch))
    );

    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Switched {
            parts: vec![FreezePart {
                name: "placement recorded".into(),
                ms: 2,
            }],
            accepted_at: at(21),
        }),
    );
    assert_eq!(
        (t.state.state, t.next.clone()),
        (MigrateState::Switched, Next::Run(MigrateStep::Finish))
    );
    let freeze = t.state.freeze.clone().unwrap_or_else(|| window("none"));
    assert_eq!(
        freeze.total_ms, 1_000,
        "from the first frozen process to the first write"
    );
    assert_eq!(freeze.parts.len(), 2, "the freeze's parts and the switch's");
    assert_eq!(t.state.retire_at, Some(at(21 + 3_600)));

    // Without `[dns]` the old host forwards for `forward_for_secs` from
    // the finish; here that ends before the grace period.
    let t = decide(&t.state, outcome(MigrateOutcome::Finished { at: at(22) }));
    assert_eq!(t.state.forward_until, Some(at(22 + 600)));
    assert_eq!(t.next, Next::WaitUntil(at(22 + 600)));
    let t = decide(&t.state, Input::Event(Event::Timer));
    assert_eq!(t.next, Next::Run(MigrateStep::Unforward));
    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Unforwarded { at: at(623) }),
    );
    assert_eq!(t.state.unforwarded_at, Some(at(623)));
    assert_eq!(t.state.state, MigrateState::Switched);
    assert_eq!(t.next, Next::WaitUntil(at(21 + 3_600)));
    let t = decide(&t.state, Input::Event(Event::Timer));
    assert_eq!(t.next, Next::Run(MigrateStep::Retire));
    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Retired {
            at: at(3_622),
            removed: Vec::new(),
        }),
    );
    assert_eq!(t.state.retired_at, Some(at(3_622)));
    assert_eq!(t.state.state, MigrateState::Completed);
    assert_eq!(t.next, Next::Done(End::Completed));
}

#[test]
fn a_forward_longer_than_the_grace_period_outlives_the_retirement() {
    let mut finishing = run(MigrateState::Switched, MigrateStep::Finish);
    finishing.retire_at = Some(at(100));
    finishing.settings.forward_for_secs = 1_000;
    let t = decide(&finishing, outcome(MigrateOutcome::Finished { at: at(30) }));
    assert_eq!(t.state.forward_until, Some(at(1_030)));
    assert_eq!(
        t.next,
        Next::WaitUntil(at(100)),
        "the retirement comes first"
    );
    let t = decide(&t.state, Input::Event(Event::Timer));
    assert_eq!(t.next, Next::Run(MigrateStep::Retire));
    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Retired {
            at: at(101),
            removed: Vec::new(),
        }),
    );
    assert_eq!(
        (t.state.state, t.state.step, t.next.clone()),
        (
            MigrateState::Switched,
            MigrateStep::None,
            Next::WaitUntil(at(1_030))
        ),
        "the forward stays until its own time"
    );
    assert!(
        t.state.phase.contains("the forward ends"),
        "{}",
        t.state.phase
    );
    let t = decide(&t.state, Input::Event(Event::Timer));
    assert_eq!(t.next, Next::Run(MigrateStep::Unforward));
    let t = decide(
        &t.state,
        outcome(MigrateOutcome::Unforwarded { at: at(1_031) }),
    );
    assert_eq!(t.state.state, MigrateState::Completed);
    assert_eq!(t.next, Next::Done(End::Completed));
    // A retried step after both are done changes nothing recorded.
    assert_eq!(next_timer(&t.state), None);
}

#[test]
fn the_forward_lasts_the_switched_records_ttl_with_dns() {
    use crate::dns::{AccountRecords, Name, RecordSet, RecordType, TtlLowering, ZoneRecords};
    let name = |n: &str| Name::parse(n).unwrap_or_else(|_| unreachable!("a valid name"));
    let set = |ttl| RecordSet {
        name: name("www.example.test."),
        rtype: RecordType::A,
        ttl,
        addresses: Default::default(),
    };
    let plan = |sets: Vec<RecordSet>, not_ours: Vec<_>| DnsPlan {
        records: AccountRecords {
            account: "alice".into(),
            zones: vec![ZoneRecords {
                zone: name("example.test."),
                sets,
            }],
            not_ours,
        },
        lowering: TtlLowering {
            lowered_ttl: 60,
            sets: Vec::new(),
            safe_at: std::time::SystemTime::UNIX_EPOCH,
        },
    };
    let mut finishing = run(MigrateState::Switched, MigrateStep::Finish);
    finishing.retire_at = Some(at(5_000));
    // Lowered to 60 s (and one set at 30 s): a minute after the switch.
    finishing.dns = Some(plan(vec![set(3_600), set(30)], Vec::new()));
    let t = decide(&finishing, outcome(MigrateOutcome::Finished { at: at(40) }));
    assert_eq!(t.state.forward_until, Some(at(100)));
    // A name the customer's DNS holds: the configured time.
    finishing.dns = Some(plan(vec![set(30)], vec![name("shop.example.")]));
    let t = decide(&finishing, outcome(MigrateOutcome::Finished { at: at(40) }));
    assert_eq!(t.state.forward_until, Some(at(640)));
}

#[test]
fn a_large_backlog_keeps_converging_and_says_so() {
    let converging = run(MigrateState::Converging, MigrateStep::Converge);
    let t = decide(
        &converging,
        outcome(MigrateOutcome::Measured(backlog(5 << 20, 0))),
    );
    assert_eq!(t.state.state, MigrateState::Converging);
    assert_eq!(
        t.next,
        Next::RunAfter(MigrateStep::Converge, Duration::from_millis(500))
    );
    assert!(
        t.state.phase.contains("above the threshold"),
        "{}",
        t.state.phase
    );
    assert_eq!(t.state.freeze_tries, 0);
    let t = decide(
        &converging,
        outcome(MigrateOutcome::Measured(backlog(0, 101))),
    );
    assert_eq!(
        t.state.state,
        MigrateState::Converging,
        "MariaDB's backlog counts too"
    );
}

#[test]
fn wal_the_rows_verification_has_not_read_keeps_converging_and_the_marks_are_kept() {
    let converging = run(MigrateState::Converging, MigrateStep::Converge);
    let mut unread = backlog(0, 0);
    unread.rows.insert(
        "shop".into(),
        crate::agents::verify::RowsMark {
            through_lsn: "0/1A2B3C4".into(),
            pending: Vec::new(),
            unread_bytes: 2 << 20,
        },
    );
    let t = decide(
        &converging,
        outcome(MigrateOutcome::Measured(unread.clone())),
    );
    assert_eq!(t.state.state, MigrateState::Converging);
    assert!(
        t.state
            .phase
            .contains("the rows' verification has not read"),
        "{}",
        t.state.phase
    );
    // The next round reads from the recorded position.
    assert_eq!(t.state.rows_mark("shop").through_lsn, "0/1A2B3C4");
    if let Some(mark) = unread.rows.get_mut("shop") {
        mark.unread_bytes = 10;
    }
    let t = decide(&converging, outcome(MigrateOutcome::Measured(unread)));
    assert_eq!(t.state.state, MigrateState::Freezing);
    assert_eq!(t.state.rows_mark("shop").through_lsn, "0/1A2B3C4");
}

#[test]
fn the_files_backlog_and_an_untrusted_journal_keep_converging() {
    let converging = run(MigrateState::Converging, MigrateStep::Converge);
    let mut pending = backlog(0, 0);
    pending.files_pending = 1_001;
    let t = decide(&converging, outcome(MigrateOutcome::Measured(pending)));
    assert_eq!(t.state.state, MigrateState::Converging);
    assert!(t.state.phase.contains("1001 paths"), "{}", t.state.phase);
    let mut compared = backlog(0, 0);
    compared.files_full_comparison = true;
    let t = decide(&converging, outcome(MigrateOutcome::Measured(compared)));
    assert_eq!(
        t.state.state,
        MigrateState::Converging,
        "a pass that compared the whole tree is not one to freeze on"
    );
    assert!(t.state.phase.contains("whole tree"), "{}", t.state.phase);
}

#[test]
fn the_freeze_waits_for_the_lowered_dns_ttl() {
    use crate::dns::{AccountRecords, TtlLowering};
    let mut converging = run(MigrateState::Converging, MigrateStep::Converge);
    converging.dns = Some(crate::workflow::migrate_run::DnsPlan {
        records: AccountRecords {
            account: "alice".into(),
            zones: Vec::new(),
            not_ours: Vec::new(),
        },
        lowering: TtlLowering {
            lowered_ttl: 5,
            sets: Vec::new(),
            safe_at: at(20).into(),
        },
    });
    // Measured at 10 s, safe at 20 s: not yet.
    let t = decide(
        &converging,
        outcome(MigrateOutcome::Measured(backlog(0, 0))),
    );
    assert_eq!(t.state.state, MigrateState::Converging);
    assert!(t.state.phase.contains("DNS TTL"), "{}", t.state.phase);
    let mut later = backlog(0, 0);
    later.measured_at = at(21);
    let t = decide(&converging, outcome(MigrateOutcome::Measured(later)));
    assert_eq!(t.state.state, MigrateState::Freezing);
}

#[test]
fn a_missed_freeze_goes_back_to_converging_then_rolls_back_after_the_last_try() {
    let mut freezing = run(MigrateState::Freezing, MigrateStep::Freeze);
    freezing.freeze_tries = 1;
    let t = decide(
        &freezing,
        outcome(MigrateOutcome::FreezeMissed(window("deadline passed"))),
    );
    assert_eq!(t.state.state, MigrateState::Converging);
    assert_eq!(
        t.next,
        Next::RunAfter(MigrateStep::Converge, Duration::from_millis(500))
    );
    assert_eq!(t.state.missed_freezes.len(), 1);
    assert!(t.state.phase.contains("deadline passed"));

    freezing.freeze_tries = 3;
    let t = decide(
        &freezing,
        outcome(MigrateOutcome::FreezeMissed(window("deadline passed"))),
    );
    assert_eq!(
        (t.state.state, t.state.step),
        (MigrateState::RollingBack, MigrateStep::Rollback)
    );
    assert!(!t.state.cancelled);
    assert!(t.state.error.contains("3 freezes"), "{}", t.state.error);
    let t = decide(&t.state, outcome(MigrateOutcome::RolledBack));
    assert_eq!(t.state.state, MigrateState::Failed);
    assert!(matches!(t.next, Next::Done(End::Failed(_))));
}

#[test]
fn a_verification_mismatch_rolls_back_at_once_naming_the_path() {
    let mut freezing = run(MigrateState::Freezing, MigrateStep::Freeze);
    freezing.freeze_tries = 1;
    let t = decide(
        &freezing,
        outcome(MigrateOutcome::VerifyMismatch(window(
            "www/index.php (contents)",
        ))),
    );
    assert_eq!(
        (t.state.state, t.state.step),
        (MigrateState::RollingBack, MigrateStep::Rollback)
    );
    assert_eq!(t.next, Next::Run(MigrateStep::Rollback));
    assert!(!t.state.cancelled);
    assert!(t.state.error.contains("www/index.php"), "{}", t.state.error);
    assert_eq!(t.state.missed_freezes.len(), 1);
    assert!(t.state.freeze.is_none());
    let t = decide(&t.state, outcome(MigrateOutcome::RolledBack));
    assert_eq!(t.state.state, MigrateState::Failed);
    assert!(matches!(t.next, Next::Done(End::Failed(_))));
}

#[test]
fn a_cancel_before_the_switch_rolls_back_and_ends_cancelled() {
    for (state, step) in every_position() {
        let before = run(state, step);
        let t = decide(&before, Input::Event(Event::Cancel));
        let before_switch =
            !before.switched() && !state.ended() && state != MigrateState::RollingBack;
        if before_switch {
            assert_eq!(
                (t.state.state, t.state.step),
                (MigrateState::RollingBack, MigrateStep::Rollback),
                "{state:?}[{step:?}]"
            );
            assert!(t.state.cancelled);
            let done = decide(&t.state, outcome(MigrateOutcome::RolledBack));
            assert_eq!(done.next, Next::Done(End::Cancelled));
        } else {
            assert_eq!(
                t.state, before,
                "{state:?}[{step:?}]: a cancel changes nothing"
            );
        }
    }
}

#[test]
fn failures_before_the_switch_roll_back_and_after_it_are_retried() {
    let copying = run(MigrateState::Copying, MigrateStep::Copy);
    let t = decide(
        &copying,
        outcome(MigrateOutcome::CopyFailed("disk full".into())),
    );
    assert_eq!(t.state.step, MigrateStep::Rollback);
    assert!(t.state.error.contains("disk full"));

    let t = decide(&copying, outcome(MigrateOutcome::Unreachable("cut".into())));
    assert_eq!(t.state.step, MigrateStep::Copy);
    assert!(matches!(t.next, Next::RunAfter(MigrateStep::Copy, _)));
    let mut tired = copying.clone();
    tired.attempts = MAX_ATTEMPTS - 1;
    let t = decide(&tired, outcome(MigrateOutcome::Unreachable("cut".into())));
    assert_eq!(
        t.state.step,
        MigrateStep::Rollback,
        "given up before the switch"
    );

    for step in [
        MigrateStep::Switch,
        MigrateStep::Finish,
        MigrateStep::Retire,
        MigrateStep::Unforward,
        MigrateStep::Rollback,
    ] {
        let state = match step {
            MigrateStep::Switch => MigrateState::Freezing,
            MigrateStep::Rollback => MigrateState::RollingBack,
            _ => MigrateState::Switched,
        };
        let mut stuck = run(state, step);
        stuck.attempts = MAX_ATTEMPTS + 5;
        for failure in [
            MigrateOutcome::Unreachable("cut".into()),
            MigrateOutcome::Refused("busy".into()),
        ] {
            let t = decide(&stuck, outcome(failure));
            assert_eq!(t.state.step, step, "{step:?} is never given up");
            assert!(matches!(t.next, Next::RunAfter(s, _) if s == step));
        }
    }
}

#[test]
fn a_stopped_step_changes_nothing_and_an_odd_outcome_is_retried() {
    let copying = run(MigrateState::Copying, MigrateStep::Copy);
    let t = decide(&copying, outcome(MigrateOutcome::Stopped));
    assert_eq!(t.state, copying);
    assert_eq!(t.next, Next::Run(MigrateStep::Copy));
    let t = decide(
        &copying,
        outcome(MigrateOutcome::Retired {
            at: at(1),
            removed: Vec::new(),
        }),
    );
    assert_eq!(t.state.step, MigrateStep::Copy);
    assert!(t.state.error.starts_with("internal"));
}

#[test]
fn every_step_and_input_keeps_the_rules() {
    for (state, step) in every_position() {
        let before = run(state, step);
        let inputs: Vec<Input<MigrateOutcome>> = events()
            .into_iter()
            .map(Input::Event)
            .chain(every_outcome().into_iter().map(Input::Outcome))
            .collect();
        for input in inputs {
            let t = decide(&before, input.clone());
            let what = format!("{state:?}[{step:?}] on {input:?}");
            // Past the switch, nothing rolls back.
            if before.switched() {
                assert!(t.state.switched(), "{what}: left the switched state");
                assert_ne!(t.state.step, MigrateStep::Rollback, "{what}");
            }
            // Only the switch's own outcome passes the point of no return.
            if !before.switched() && t.state.switched() {
                assert_eq!(step, MigrateStep::Switch, "{what}");
            }
            // A rollback ends in failed or cancelled, never elsewhere.
            if state == MigrateState::RollingBack {
                assert!(
                    matches!(
                        t.state.state,
                        MigrateState::RollingBack | MigrateState::Failed | MigrateState::Cancelled
                    ),
                    "{what}: {:?}",
                    t.state.state
                );
            }
            // An ended migration stays ended.
            if state.ended() {
                assert_eq!(t.state.state, state, "{what}");
                assert!(matches!(t.next, Next::Done(_)), "{what}");
            }
            // What the engine does next agrees with the step recorded.
            match &t.next {
                Next::Run(s) | Next::RunAfter(s, _) => assert_eq!(*s, t.state.step, "{what}"),
                Next::Done(_) => assert!(t.state.state.ended(), "{what}"),
                Next::WaitUntil(_) | Next::Wait | Next::WaitFor(_) => {
                    assert_eq!(t.state.step, MigrateStep::None, "{what}")
                }
            }
        }
    }
}

#[test]
fn only_the_switch_and_what_follows_are_past_the_point_of_no_return() {
    use MigrateStep as S;
    for step in [
        S::Prepare,
        S::Copy,
        S::Replicate,
        S::Converge,
        S::Freeze,
        S::Rollback,
        S::None,
    ] {
        assert!(
            !past_point_of_no_return(step),
            "{step:?} can still be undone"
        );
    }
    for step in [S::Switch, S::Finish, S::Retire, S::Unforward] {
        assert!(past_point_of_no_return(step), "{step:?} cannot be undone");
    }
    // A timer in any state but a switched one waiting changes nothing.
    let converging = run(MigrateState::Converging, MigrateStep::Converge);
    assert_eq!(
        decide(&converging, Input::Event(Event::Timer)).state,
        converging
    );
}
