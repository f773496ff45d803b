//! What a workflow kind is: a serialisable state, a pure transition from
//! (state, input) to a [`Transition`], and the I/O of its steps
//! ([`Kind::perform`]). The engine owns everything else: storage, leases,
//! fencing, the inbox, timers, children, the audit trail.
//!
//! Invariant: [`Kind::transition`] does no I/O and reads no clock; the same
//! state and input give the same transition, so every transition is
//! unit-tested and a transition replayed after a crash decides the same.

use std::future::Future;
use std::time::Duration;

use chrono::{DateTime, Utc};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::WorkflowId;

/// A workflow kind. Register it in a [`super::Registry`] under
/// [`Kind::NAME`]; see ARCHITECTURE.md, *How to add a workflow kind*.
pub trait Kind: Send + Sync + 'static {
    /// Stored in `workflows.kind`; never change it once shipped.
    const NAME: &'static str;
    /// Everything the kind remembers between steps (stored as jsonb).
    type State: Serialize + DeserializeOwned + Clone + std::fmt::Debug + Send + Sync;
    /// What a step is (stored as jsonb): usually an enum of step names.
    type Step: Serialize + DeserializeOwned + Clone + std::fmt::Debug + PartialEq + Send + Sync;
    /// What performing a step can come to.
    type Outcome: Serialize + std::fmt::Debug + Send;

    /// The pure decision: no I/O.
    fn transition(
        &self,
        state: &Self::State,
        input: Input<Self::Outcome>,
    ) -> Transition<Self::State, Self::Step>;

    /// Runs `step` (all the I/O of the kind is here). Called at least once
    /// per step attempt: a controller that dies mid-step leaves it to the
    /// next claimant, so a step that touches a host must be idempotent.
    fn perform(
        &self,
        state: &Self::State,
        step: &Self::Step,
        context: &StepContext,
    ) -> impl Future<Output = Self::Outcome> + Send;

    /// Whether `step` is the kind's point of no return: once it starts,
    /// cancels are refused and no compensation runs.
    fn point_of_no_return(&self, _step: &Self::Step) -> bool {
        false
    }

    /// Whether `step` undoes earlier steps (a rollback): never accepted
    /// after the point of no return.
    fn compensates(&self, _step: &Self::Step) -> bool {
        false
    }

    /// Whether `outcome` is a failure of its step (an agent refused, a copy
    /// failed, a host could not be reached), for the metrics' step
    /// failures; the transition decides what comes of it.
    fn failed(&self, _outcome: &Self::Outcome) -> bool {
        false
    }

    /// Whether the kind keeps a view of its state outside the engine's
    /// tables ([`Kind::project`]).
    fn projects(&self) -> bool {
        false
    }

    /// Writes the kind's own view of `state` (a row an API reads), in the
    /// transaction that records the transition leading to it, under the
    /// fencing token: the view never shows a state the engine did not
    /// record. Skipped while commands wait in the inbox: their sender
    /// wrote their effect already, and the runner writes it again when it
    /// delivers them. Only called when [`Kind::projects`].
    fn project<'a>(
        &'a self,
        _client: &'a tokio_postgres::Transaction<'_>,
        _id: &'a WorkflowId,
        _state: &'a Self::State,
    ) -> impl Future<Output = Result<(), crate::error::Error>> + Send + 'a {
        async { Ok(()) }
    }
}

/// What a transition is computed from.
#[derive(Clone, Debug, PartialEq)]
pub enum Input<O> {
    /// An event from the inbox.
    Event(Event),
    /// The outcome of the step just performed.
    Outcome(O),
}

/// The events of a workflow's inbox.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The workflow was created: the first transition.
    Start,
    /// Someone asked to cancel it. Only delivered before the point of no
    /// return (afterwards the engine refuses the request).
    Cancel,
    /// A command from outside (an operator's or customer's "confirm",
    /// "refresh"...), with its payload.
    Command {
        name: String,
        payload: serde_json::Value,
    },
    /// The timer set by [`Next::WaitFor`] fired.
    Timer,
    /// A child workflow ended.
    ChildFinished { child: WorkflowId, end: End },
}

/// How a workflow ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub enum End {
    Completed,
    Failed(String),
    Cancelled,
}

impl End {
    /// `workflows.outcome`.
    pub fn as_str(&self) -> &'static str {
        match self {
            End::Completed => "completed",
            End::Failed(_) => "failed",
            End::Cancelled => "cancelled",
        }
    }
}

/// What a transition decides.
#[derive(Clone, Debug, PartialEq)]
pub struct Transition<S, St> {
    pub state: S,
    pub next: Next<St>,
    /// Children to start, in the same transaction that records this.
    pub children: Vec<NewChild>,
}

impl<S, St> Transition<S, St> {
    pub fn new(state: S, next: Next<St>) -> Self {
        Transition {
            state,
            next,
            children: Vec::new(),
        }
    }

    /// Also starts `children`.
    pub fn with_children(mut self, children: Vec<NewChild>) -> Self {
        self.children = children;
        self
    }
}

/// What the workflow does next.
#[derive(Clone, Debug, PartialEq)]
pub enum Next<St> {
    /// Run this step now.
    Run(St),
    /// Run this step after a delay (a retry).
    RunAfter(St, Duration),
    /// Wait for an event (a command, a child's end).
    Wait,
    /// Wait for an event, or deliver [`Event::Timer`] after this long.
    WaitFor(Duration),
    /// Wait for an event, or deliver [`Event::Timer`] at this time (read
    /// on the database's clock, shared by every controller): a deadline
    /// the state holds, such as a test's expiry, without the kind reading
    /// a clock.
    WaitUntil(DateTime<Utc>),
    /// The workflow is over.
    Done(End),
}

/// A child to start: its kind and initial state (serialised), started
/// with [`Event::Start`]. Its end is an [`Event::ChildFinished`] in the
/// parent's inbox.
#[derive(Clone, Debug, PartialEq)]
pub struct NewChild {
    pub kind: &'static str,
    pub state: serde_json::Value,
}

impl NewChild {
    /// A child of kind `K` starting from `state`.
    pub fn of<K: Kind>(state: &K::State) -> Result<NewChild, serde_json::Error> {
        Ok(NewChild {
            kind: K::NAME,
            state: serde_json::to_value(state)?,
        })
    }
}

/// What a step knows of its run.
#[derive(Clone, Debug)]
pub struct StepContext {
    pub workflow_id: WorkflowId,
    /// 1 for the first run of this step, 2 for the next...
    pub attempt: u32,
    /// The controller running it.
    pub controller_id: String,
    /// Becomes `true` when a cancel arrives while the step runs (before
    /// the point of no return): a long step may stop early.
    pub cancel_requested: tokio::sync::watch::Receiver<bool>,
}
