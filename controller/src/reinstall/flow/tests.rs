//! Every (stage, input) pair of the reinstall that moves it, and the ones
//! that must not.

use chrono::{TimeZone, Utc};
use serde_json::json;

use super::*;

fn at(secs: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(1_800_000_000 + secs, 0)
        .single()
        .unwrap_or_default()
}

fn fresh() -> Reinstall {
    Reinstall::new("reinstall-1", "r-1", "ded-1", "2026.1", "operator", 60)
}

fn in_stage(stage: Stage) -> Reinstall {
    let mut state = fresh();
    state.stage = stage;
    state.attempt = 1;
    state.token_id = Some("00aa".to_owned());
    state
}

fn outcome(state: &Reinstall, outcome: Outcome) -> Decision {
    decide(state, Input::Outcome(outcome))
}

fn command_of(state: &Reinstall, name: &str, payload: serde_json::Value) -> Decision {
    decide(
        state,
        Input::Event(Event::Command {
            name: name.to_owned(),
            payload,
        }),
    )
}

#[test]
fn start_checks_the_host_first() {
    let d = decide(&fresh(), Input::Event(Event::Start));
    assert_eq!(d.next, Next::Run(Step::Check));
    assert_eq!(d.state.stage, Stage::Checking);
}

#[test]
fn an_empty_host_gets_a_token_then_the_provisioner() {
    let d = outcome(&fresh(), Outcome::Checked { accounts: vec![] });
    assert_eq!(
        (d.state.stage, d.next),
        (Stage::MintingToken, Next::Run(Step::MintToken))
    );
    let d = outcome(
        &d.state,
        Outcome::TokenMinted {
            token_id: "00bb".to_owned(),
        },
    );
    assert_eq!(d.state.stage, Stage::Provisioning);
    assert_eq!(d.state.attempt, 1);
    assert_eq!(d.state.token_id.as_deref(), Some("00bb"));
    assert_eq!(d.next, Next::Run(Step::Provision));
}

#[test]
fn accounts_on_the_host_refuse_the_reinstall_with_their_names() {
    let d = outcome(
        &fresh(),
        Outcome::Checked {
            accounts: vec!["ann".to_owned(), "bob".to_owned()],
        },
    );
    assert_eq!(d.state.stage, Stage::Refused);
    let refusal = d.state.refusal.clone().unwrap_or_default();
    assert!(
        refusal.starts_with("a reinstall requested while accounts still live on the server"),
        "{refusal}"
    );
    assert!(refusal.contains("2 accounts (ann, bob)"), "{refusal}");
    assert_eq!(d.next, Next::Done(End::Failed(refusal)));
}

#[test]
fn a_silent_agent_leaves_the_check_stuck_and_a_retry_checks_again() {
    let d = outcome(&fresh(), Outcome::CannotCheck("no answer".to_owned()));
    assert_eq!((d.state.stage, d.next.clone()), (Stage::Stuck, Next::Wait));
    let stuck = d.state.stuck.clone().map(|s| s.step);
    assert_eq!(stuck, Some(Step::Check));
    let d = command_of(&d.state, RETRY, json!({"by": "operator"}));
    assert_eq!(
        (d.state.stage, d.next),
        (Stage::Checking, Next::Run(Step::Check))
    );
    assert_eq!(d.state.stuck, None);
}

#[test]
fn the_provisioner_accepting_starts_the_wait_with_its_deadline() {
    let d = outcome(
        &in_stage(Stage::Provisioning),
        Outcome::Provisioned {
            at: at(0),
            output: "accepted".to_owned(),
        },
    );
    assert_eq!(d.state.stage, Stage::AwaitingEnrolment);
    assert_eq!(d.state.deadline, Some(at(60)));
    assert_eq!(d.state.provisioner_output.as_deref(), Some("accepted"));
    assert_eq!(d.next, Next::Run(Step::AwaitEnrolment));
}

#[test]
fn a_failed_provisioner_leaves_it_stuck_with_the_reason() {
    let d = outcome(
        &in_stage(Stage::Provisioning),
        Outcome::ProvisionerFailed("exit status 1: server locked".to_owned()),
    );
    assert_eq!((d.state.stage, d.next.clone()), (Stage::Stuck, Next::Wait));
    let reason = d.state.stuck.map(|s| s.reason).unwrap_or_default();
    assert!(
        reason.starts_with(
            "the provisioner failed for host ded-1 (attempt 1): exit status 1: server locked"
        ),
        "{reason}"
    );
}

#[test]
fn the_wait_goes_on_until_the_deadline_then_sticks() {
    let mut waiting = in_stage(Stage::AwaitingEnrolment);
    waiting.deadline = Some(at(60));
    let d = outcome(
        &waiting,
        Outcome::NotBack {
            at: at(59),
            seen: None,
        },
    );
    assert_eq!(d.next, Next::RunAfter(Step::AwaitEnrolment, AWAIT_AGAIN));
    assert_eq!(d.state.stage, Stage::AwaitingEnrolment);
    let d = outcome(
        &waiting,
        Outcome::NotBack {
            at: at(60),
            seen: None,
        },
    );
    assert_eq!((d.state.stage, d.next.clone()), (Stage::Stuck, Next::Wait));
    let reason = d.state.stuck.map(|s| s.reason).unwrap_or_default();
    assert!(
        reason.starts_with(
            "host ded-1 did not come back: its agent did not enrol with join token 00aa within 60 s"
        ),
        "{reason}"
    );
}

#[test]
fn a_host_back_on_another_stack_is_stuck_saying_so() {
    let mut waiting = in_stage(Stage::AwaitingEnrolment);
    waiting.deadline = Some(at(60));
    let d = outcome(
        &waiting,
        Outcome::NotBack {
            at: at(61),
            seen: Some(Seen {
                enrolled_at: at(30),
                stack_version: Some("2024.1".to_owned()),
            }),
        },
    );
    assert_eq!(d.state.stage, Stage::Stuck);
    assert_eq!(d.state.reported_stack_version.as_deref(), Some("2024.1"));
    let reason = d.state.stuck.map(|s| s.reason).unwrap_or_default();
    assert!(
        reason.contains("reports stack version \"2024.1\", not \"2026.1\""),
        "{reason}"
    );
}

#[test]
fn the_host_back_on_the_stack_ends_it() {
    let mut waiting = in_stage(Stage::AwaitingEnrolment);
    waiting.deadline = Some(at(60));
    let d = outcome(
        &waiting,
        Outcome::Back {
            enrolled_at: at(20),
        },
    );
    assert_eq!(d.state.stage, Stage::Done);
    assert_eq!(d.state.enrolled_at, Some(at(20)));
    assert_eq!(d.state.reported_stack_version.as_deref(), Some("2026.1"));
    assert_eq!(d.next, Next::Done(End::Completed));
}

#[test]
fn a_retry_after_a_timeout_mints_a_new_token_and_may_wait_longer() {
    let stuck = outcome(
        &in_stage(Stage::Provisioning),
        Outcome::ProvisionerFailed("boom".to_owned()),
    )
    .state;
    let d = command_of(
        &stuck,
        RETRY,
        json!({"by": "operator", "enrolment_timeout_secs": 300}),
    );
    assert_eq!(
        (d.state.stage, d.next),
        (Stage::MintingToken, Next::Run(Step::MintToken))
    );
    assert_eq!(d.state.enrolment_timeout_secs, 300);
    let d = outcome(
        &d.state,
        Outcome::TokenMinted {
            token_id: "00cc".to_owned(),
        },
    );
    assert_eq!(d.state.attempt, 2);
}

#[test]
fn retry_and_mark_done_apply_only_to_a_stuck_reinstall() {
    for stage in [
        Stage::Checking,
        Stage::MintingToken,
        Stage::Provisioning,
        Stage::AwaitingEnrolment,
    ] {
        let state = in_stage(stage);
        for name in [RETRY, MARK_DONE, "frobnicate"] {
            let d = command_of(&state, name, json!({"by": "operator"}));
            assert_eq!(d.state, state, "{name} in {stage:?}");
            assert_eq!(d, resume(state.clone()), "{name} in {stage:?}");
        }
    }
}

#[test]
fn mark_done_revokes_the_token_then_ends_completed() {
    let stuck = in_stage(Stage::Stuck);
    let d = command_of(
        &stuck,
        MARK_DONE,
        json!({"by": "operator", "note": "reinstalled by hand"}),
    );
    assert_eq!(
        (d.state.stage, d.next.clone()),
        (Stage::MarkingDone, Next::Run(Step::RevokeToken))
    );
    assert_eq!(d.state.note.as_deref(), Some("reinstalled by hand"));
    let d = outcome(&d.state, Outcome::TokenRevoked);
    assert_eq!(
        (d.state.stage, d.next),
        (Stage::MarkedDone, Next::Done(End::Completed))
    );
}

#[test]
fn abort_from_any_live_stage_revokes_the_token_then_ends_cancelled() {
    for stage in [
        Stage::Checking,
        Stage::MintingToken,
        Stage::Provisioning,
        Stage::AwaitingEnrolment,
        Stage::Stuck,
    ] {
        let state = in_stage(stage);
        let d = command_of(&state, ABORT, json!({"by": "ops", "note": "wrong host"}));
        assert_eq!(d.state.stage, Stage::Aborting, "{stage:?}");
        assert_eq!(d.state.ended_by.as_deref(), Some("ops"));
        assert_eq!(d.next, Next::Run(Step::RevokeToken));
        // The engine's cancel that follows the command changes nothing.
        let again = decide(&d.state, Input::Event(Event::Cancel));
        assert_eq!(again, d);
        let d = outcome(&d.state, Outcome::TokenRevoked);
        assert_eq!(
            (d.state.stage, d.next),
            (Stage::Aborted, Next::Done(End::Cancelled))
        );
    }
    // Without a token there is nothing to revoke.
    let d = decide(&fresh(), Input::Event(Event::Cancel));
    assert_eq!(
        (d.state.stage, d.next),
        (Stage::Aborted, Next::Done(End::Cancelled))
    );
}

#[test]
fn a_stopped_step_or_trouble_runs_the_stage_again() {
    let state = in_stage(Stage::Provisioning);
    assert_eq!(outcome(&state, Outcome::Stopped), resume(state.clone()));
    let d = outcome(&state, Outcome::Trouble("database".to_owned()));
    assert_eq!(d.next, Next::RunAfter(Step::Provision, TROUBLE_RETRY));
    assert_eq!(d.state, state);
}

#[test]
fn an_outcome_the_stage_does_not_expect_changes_nothing() {
    let state = in_stage(Stage::Aborting);
    let d = outcome(
        &state,
        Outcome::Provisioned {
            at: at(0),
            output: String::new(),
        },
    );
    assert_eq!(d, resume(state));
}

#[test]
fn an_ended_reinstall_stays_ended() {
    for stage in [
        Stage::Done,
        Stage::MarkedDone,
        Stage::Aborted,
        Stage::Refused,
    ] {
        let state = in_stage(stage);
        for input in [
            Input::Event(Event::Cancel),
            Input::Event(Event::Command {
                name: ABORT.to_owned(),
                payload: json!({"by": "ops"}),
            }),
            Input::Outcome(Outcome::TokenRevoked),
        ] {
            assert_eq!(decide(&state, input), resume(state.clone()), "{stage:?}");
        }
    }
}

#[test]
fn the_state_survives_its_storage() -> Result<(), serde_json::Error> {
    let mut state = in_stage(Stage::AwaitingEnrolment);
    state.deadline = Some(at(60));
    state.stuck = Some(Stuck {
        reason: "r".to_owned(),
        step: Step::Provision,
    });
    let stored = serde_json::to_value(&state)?;
    assert_eq!(stored["stage"], "awaiting_enrolment");
    assert_eq!(serde_json::from_value::<Reinstall>(stored)?, state);
    Ok(())
}
