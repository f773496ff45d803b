//! The transitions of the engine tests' kinds (`engine_kinds`), pure: no
//! database, no runner. Each (state, input) pair the kinds meet.

mod engine_kinds;

use engine_kinds::{
    Alarm, AlarmState, Child, ChildState, Parent, ParentState, Phase, Ran, Steps, StepsState,
    Switch, SwitchState, SwitchStep,
};
use navette_controller::engine::{End, Event, Input, Kind, Next, WorkflowId};

fn child_finished(id: &str, end: End) -> Input<()> {
    let child = WorkflowId::parse(id, "id").unwrap_or_else(|_| unreachable!("valid id"));
    Input::Event(Event::ChildFinished { child, end })
}

#[test]
fn steps_run_in_order_then_complete() {
    let state = StepsState::new(3, 0);
    let started = Steps.transition(&state, Input::Event(Event::Start));
    assert_eq!(started.next, Next::Run(0));
    let after = |state: &StepsState, step| {
        Steps.transition(
            state,
            Input::Outcome(Ran {
                step,
                by: "c1".to_owned(),
            }),
        )
    };
    let one = after(&started.state, 0);
    assert_eq!(one.next, Next::Run(1));
    assert_eq!(one.state.ran_by, ["c1"]);
    let two = after(&one.state, 1);
    assert_eq!(two.next, Next::Run(2));
    let three = after(&two.state, 2);
    assert_eq!(three.next, Next::Done(End::Completed));
    assert_eq!(three.state.ran_by.len(), 3);
    // No steps at all: done at once.
    assert_eq!(
        Steps
            .transition(&StepsState::new(0, 0), Input::Event(Event::Start))
            .next,
        Next::Done(End::Completed)
    );
}

#[test]
fn steps_are_cancelled_and_ignore_other_events() {
    let mut state = StepsState::new(3, 0);
    state.ran_by.push("c1".to_owned());
    assert_eq!(
        Steps.transition(&state, Input::Event(Event::Cancel)).next,
        Next::Done(End::Cancelled)
    );
    // A timer or a command changes nothing: the next step is still due.
    assert_eq!(
        Steps.transition(&state, Input::Event(Event::Timer)).next,
        Next::Run(1)
    );
}

#[test]
fn a_parent_starts_its_children_and_waits_for_all_of_them() {
    let state = ParentState {
        children: 3,
        finished: Vec::new(),
    };
    let started = Parent.transition(&state, Input::Event(Event::Start));
    assert_eq!(started.next, Next::Wait);
    assert_eq!(started.children.len(), 3);
    assert!(started.children.iter().all(|c| c.kind == Child::NAME));
    let one = Parent.transition(&started.state, child_finished("a", End::Completed));
    assert_eq!(one.next, Next::Wait);
    let two = Parent.transition(&one.state, child_finished("b", End::Failed("x".to_owned())));
    assert_eq!(two.next, Next::Wait);
    let three = Parent.transition(&two.state, child_finished("c", End::Completed));
    assert_eq!(three.next, Next::Done(End::Completed));
    assert_eq!(
        three.state.finished,
        ["a completed", "b failed", "c completed"]
    );
    assert!(three.children.is_empty());
    assert_eq!(
        Parent
            .transition(&one.state, Input::Event(Event::Cancel))
            .next,
        Next::Done(End::Cancelled)
    );
}

#[test]
fn a_child_works_when_told_to_finish() {
    let state = ChildState::default();
    assert_eq!(
        Child.transition(&state, Input::Event(Event::Start)).next,
        Next::Wait
    );
    let finish = Input::Event(Event::Command {
        name: "finish".to_owned(),
        payload: serde_json::json!({}),
    });
    assert_eq!(Child.transition(&state, finish).next, Next::Run(()));
    let done = Child.transition(&state, Input::Outcome(()));
    assert_eq!(done.next, Next::Done(End::Completed));
    assert!(done.state.worked);
    assert_eq!(
        Child.transition(&state, Input::Event(Event::Cancel)).next,
        Next::Done(End::Cancelled)
    );
}

fn confirm() -> Input<SwitchStep> {
    Input::Event(Event::Command {
        name: "confirm".to_owned(),
        payload: serde_json::json!({}),
    })
}

#[test]
fn a_switch_waits_for_confirmation_then_passes_its_point_of_no_return() {
    let state = SwitchState::new(0);
    let started = Switch.transition(&state, Input::Event(Event::Start));
    assert_eq!(started.next, Next::Run(SwitchStep::Prepare));
    let prepared = Switch.transition(&started.state, Input::Outcome(SwitchStep::Prepare));
    assert_eq!(prepared.next, Next::Wait);
    assert_eq!(prepared.state.phase, Phase::AwaitingConfirmation);
    let confirmed = Switch.transition(&prepared.state, confirm());
    assert_eq!(confirmed.next, Next::Run(SwitchStep::Switch));
    assert!(Switch.point_of_no_return(&SwitchStep::Switch));
    let switched = Switch.transition(&confirmed.state, Input::Outcome(SwitchStep::Switch));
    assert_eq!(switched.next, Next::Run(SwitchStep::Finish));
    let finished = Switch.transition(&switched.state, Input::Outcome(SwitchStep::Finish));
    assert_eq!(finished.next, Next::Done(End::Completed));
    assert_eq!(
        finished.state.done,
        [SwitchStep::Prepare, SwitchStep::Switch, SwitchStep::Finish]
    );
    // A confirmation before the preparation ended changes nothing.
    assert_eq!(
        Switch.transition(&started.state, confirm()).next,
        Next::Run(SwitchStep::Prepare)
    );
}

#[test]
fn a_switch_cancelled_before_its_point_of_no_return_rolls_back() {
    let state = SwitchState::new(0);
    let started = Switch.transition(&state, Input::Event(Event::Start));
    // While preparing.
    let cancelled = Switch.transition(&started.state, Input::Event(Event::Cancel));
    assert_eq!(cancelled.next, Next::Run(SwitchStep::RollBack));
    assert!(Switch.compensates(&SwitchStep::RollBack));
    // While awaiting confirmation.
    let prepared = Switch.transition(&started.state, Input::Outcome(SwitchStep::Prepare));
    let cancelled = Switch.transition(&prepared.state, Input::Event(Event::Cancel));
    assert_eq!(cancelled.next, Next::Run(SwitchStep::RollBack));
    let rolled_back = Switch.transition(&cancelled.state, Input::Outcome(SwitchStep::RollBack));
    assert_eq!(rolled_back.next, Next::Done(End::Cancelled));
    assert_eq!(
        rolled_back.state.done,
        [SwitchStep::Prepare, SwitchStep::RollBack]
    );
    // After the switch began, a cancel (never delivered by the engine)
    // would change nothing.
    let confirmed = Switch.transition(&prepared.state, confirm());
    assert_eq!(
        Switch
            .transition(&confirmed.state, Input::Event(Event::Cancel))
            .next,
        Next::Run(SwitchStep::Switch)
    );
}

#[test]
fn an_alarm_waits_for_its_timer_and_a_poke_sets_it_again() {
    let state = AlarmState {
        wait_ms: 300,
        ..AlarmState::default()
    };
    let wait = Next::WaitFor(std::time::Duration::from_millis(300));
    let started = Alarm.transition(&state, Input::Event(Event::Start));
    assert_eq!(started.next, wait);
    let poke = Input::Event(Event::Command {
        name: "poke".to_owned(),
        payload: serde_json::json!({}),
    });
    let poked = Alarm.transition(&started.state, poke);
    assert_eq!(poked.next, wait);
    assert_eq!(poked.state.pokes, 1);
    let rang = Alarm.transition(&poked.state, Input::Event(Event::Timer));
    assert_eq!(rang.next, Next::Done(End::Completed));
    assert!(rang.state.rang);
}
