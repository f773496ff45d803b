//! Workflow kinds that exist only in the tests of the engine: steps that
//! sleep, a parent with children, and a switch with a point of no return.
//! Their steps touch no host; what they do is written in their state (who
//! ran which step), so the tests can check it against the audit trail.

use std::time::Duration;

use navette_controller::engine::{
    End, Event, Input, Kind, NewChild, Next, StepContext, Transition,
};
use serde::{Deserialize, Serialize};

/// `steps` steps in a row, each sleeping `sleep_ms` (longer, `slow_ms`,
/// on the controller named `slow_owner`: how the fencing test keeps a
/// step running past its lease).
#[derive(Debug)]
pub struct Steps;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepsState {
    pub steps: u32,
    pub sleep_ms: u64,
    pub slow_owner: Option<String>,
    pub slow_ms: u64,
    /// Who recorded each step, in order.
    pub ran_by: Vec<String>,
}

impl StepsState {
    pub fn new(steps: u32, sleep_ms: u64) -> StepsState {
        StepsState {
            steps,
            sleep_ms,
            slow_owner: None,
            slow_ms: 0,
            ran_by: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Ran {
    pub step: u32,
    pub by: String,
}

impl Kind for Steps {
    const NAME: &'static str = "test-steps";
    type State = StepsState;
    type Step = u32;
    type Outcome = Ran;

    fn transition(&self, state: &StepsState, input: Input<Ran>) -> Transition<StepsState, u32> {
        let mut state = state.clone();
        let next = match input {
            Input::Event(Event::Start) if state.steps == 0 => Next::Done(End::Completed),
            Input::Event(Event::Start) => Next::Run(0),
            Input::Event(Event::Cancel) => Next::Done(End::Cancelled),
            Input::Outcome(ran) => {
                state.ran_by.push(ran.by);
                if ran.step + 1 < state.steps {
                    Next::Run(ran.step + 1)
                } else {
                    Next::Done(End::Completed)
                }
            }
            // Nothing else concerns it: carry on where it was.
            Input::Event(_) => match u32::try_from(state.ran_by.len()) {
                Ok(done) if done < state.steps => Next::Run(done),
                _ => Next::Done(End::Completed),
            },
        };
        Transition::new(state, next)
    }

    async fn perform(&self, state: &StepsState, step: &u32, context: &StepContext) -> Ran {
        let slow = state.slow_owner.as_deref() == Some(context.controller_id.as_str());
        let sleep = if slow { state.slow_ms } else { state.sleep_ms };
        if sleep > 0 {
            tokio::time::sleep(Duration::from_millis(sleep)).await;
        }
        Ran {
            step: *step,
            by: context.controller_id.clone(),
        }
    }
}

/// Starts `children` children and ends when all of them have.
#[derive(Debug)]
pub struct Parent;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ParentState {
    pub children: u32,
    pub finished: Vec<String>,
}

impl Kind for Parent {
    const NAME: &'static str = "test-parent";
    type State = ParentState;
    type Step = ();
    type Outcome = ();

    fn transition(&self, state: &ParentState, input: Input<()>) -> Transition<ParentState, ()> {
        let mut state = state.clone();
        match input {
            Input::Event(Event::Start) => {
                let children = (0..state.children)
                    .filter_map(|_| NewChild::of::<Child>(&ChildState::default()).ok())
                    .collect();
                Transition::new(state, Next::Wait).with_children(children)
            }
            Input::Event(Event::ChildFinished { child, end }) => {
                state.finished.push(format!("{child} {}", end.as_str()));
                let all = u32::try_from(state.finished.len()).is_ok_and(|n| n >= state.children);
                let next = if all {
                    Next::Done(End::Completed)
                } else {
                    Next::Wait
                };
                Transition::new(state, next)
            }
            // The engine delivers the cancel to the children too.
            Input::Event(Event::Cancel) => Transition::new(state, Next::Done(End::Cancelled)),
            Input::Event(_) | Input::Outcome(()) => Transition::new(state, Next::Wait),
        }
    }

    async fn perform(&self, _state: &ParentState, _step: &(), _context: &StepContext) {}
}

/// Waits for a `finish` command, then runs one step and ends.
#[derive(Debug)]
pub struct Child;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChildState {
    pub worked: bool,
}

impl Kind for Child {
    const NAME: &'static str = "test-child";
    type State = ChildState;
    type Step = ();
    type Outcome = ();

    fn transition(&self, state: &ChildState, input: Input<()>) -> Transition<ChildState, ()> {
        let mut state = state.clone();
        let next = match input {
            Input::Event(Event::Command { name, .. }) if name == "finish" => Next::Run(()),
            Input::Event(Event::Cancel) => Next::Done(End::Cancelled),
            Input::Outcome(()) => {
                state.worked = true;
                Next::Done(End::Completed)
            }
            Input::Event(_) => Next::Wait,
        };
        Transition::new(state, next)
    }

    async fn perform(&self, _state: &ChildState, _step: &(), _context: &StepContext) {}
}

/// Prepares, waits for `confirm`, then switches (its point of no return,
/// taking `switch_ms`) and finishes. A cancel before the switch rolls the
/// preparation back (the compensation).
#[derive(Debug)]
pub struct Switch;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum SwitchStep {
    Prepare,
    Switch,
    Finish,
    RollBack,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    Preparing,
    AwaitingConfirmation,
    Switching,
    Finishing,
    RollingBack,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SwitchState {
    pub phase: Phase,
    pub switch_ms: u64,
    /// What was done, in order.
    pub done: Vec<SwitchStep>,
}

impl SwitchState {
    pub fn new(switch_ms: u64) -> SwitchState {
        SwitchState {
            phase: Phase::Preparing,
            switch_ms,
            done: Vec::new(),
        }
    }
}

impl Kind for Switch {
    const NAME: &'static str = "test-switch";
    type State = SwitchState;
    type Step = SwitchStep;
    type Outcome = SwitchStep;

    fn transition(
        &self,
        state: &SwitchState,
        input: Input<SwitchStep>,
    ) -> Transition<SwitchState, SwitchStep> {
        let mut state = state.clone();
        let next = match (state.phase, input) {
            (_, Input::Event(Event::Start)) => Next::Run(SwitchStep::Prepare),
            (Phase::Preparing | Phase::AwaitingConfirmation, Input::Event(Event::Cancel)) => {
                state.phase = Phase::RollingBack;
                Next::Run(SwitchStep::RollBack)
            }
            (Phase::AwaitingConfirmation, Input::Event(Event::Command { name, .. }))
                if name == "confirm" =>
            {
                state.phase = Phase::Switching;
                Next::Run(SwitchStep::Switch)
            }
            (_, Input::Outcome(done)) => {
                state.done.push(done);
                match done {
                    SwitchStep::Prepare if state.phase == Phase::Preparing => {
                        state.phase = Phase::AwaitingConfirmation;
                        Next::Wait
                    }
                    // A cancel came while preparing: roll back.
                    SwitchStep::Prepare => Next::Run(SwitchStep::RollBack),
                    SwitchStep::Switch => {
                        state.phase = Phase::Finishing;
                        Next::Run(SwitchStep::Finish)
                    }
                    SwitchStep::Finish => Next::Done(End::Completed),
                    SwitchStep::RollBack => Next::Done(End::Cancelled),
                }
            }
            // Anything else changes nothing.
            (phase, Input::Event(_)) => match phase {
                Phase::Preparing => Next::Run(SwitchStep::Prepare),
                Phase::AwaitingConfirmation => Next::Wait,
                Phase::Switching => Next::Run(SwitchStep::Switch),
                Phase::Finishing => Next::Run(SwitchStep::Finish),
                Phase::RollingBack => Next::Run(SwitchStep::RollBack),
            },
        };
        Transition::new(state, next)
    }

    async fn perform(
        &self,
        state: &SwitchState,
        step: &SwitchStep,
        _context: &StepContext,
    ) -> SwitchStep {
        if *step == SwitchStep::Switch {
            tokio::time::sleep(Duration::from_millis(state.switch_ms)).await;
        }
        *step
    }

    fn point_of_no_return(&self, step: &SwitchStep) -> bool {
        *step == SwitchStep::Switch
    }

    fn compensates(&self, step: &SwitchStep) -> bool {
        *step == SwitchStep::RollBack
    }
}

/// Waits `wait_ms` (a timer), then ends; a `poke` command meanwhile is
/// noted and the timer set again.
#[derive(Debug)]
pub struct Alarm;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AlarmState {
    pub wait_ms: u64,
    pub pokes: u32,
    pub rang: bool,
}

impl Kind for Alarm {
    const NAME: &'static str = "test-alarm";
    type State = AlarmState;
    type Step = ();
    type Outcome = ();

    fn transition(&self, state: &AlarmState, input: Input<()>) -> Transition<AlarmState, ()> {
        let mut state = state.clone();
        let wait = Next::WaitFor(Duration::from_millis(state.wait_ms));
        let next = match input {
            Input::Event(Event::Timer) => {
                state.rang = true;
                Next::Done(End::Completed)
            }
            Input::Event(Event::Command { name, .. }) if name == "poke" => {
                state.pokes += 1;
                wait
            }
            Input::Event(Event::Cancel) => Next::Done(End::Cancelled),
            Input::Event(_) | Input::Outcome(()) => wait,
        };
        Transition::new(state, next)
    }

    async fn perform(&self, _state: &AlarmState, _step: &(), _context: &StepContext) {}
}
