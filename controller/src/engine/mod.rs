//! The durable workflow engine, shared by every kind of workflow (tests
//! next, migrations and server plans after).
//!
//! A workflow is a row of `workflows` (kind, serialised state, the step to
//! run next, attempts, next run time, lease and fencing token, parent,
//! point of no return, end) with an inbox (`workflow_events`) and an audit
//! trail (`workflow_audit`). A kind supplies a pure transition and the I/O
//! of its steps ([`Kind`]); the engine does the rest.
//!
//! # Layout
//!
//! - [`kind`]: the [`Kind`] trait, its inputs (events, step outcomes) and
//!   outputs ([`Transition`], [`Next`]);
//! - [`store`]: the SQL of the workflow tables (create here; leases,
//!   recording, the inbox and reading in its own files): create, claim, record
//!   (fenced), renew, cancel, commands, reading;
//! - [`runner`]: the loop every controller runs: claims due workflows in
//!   batches, performs steps under a renewed lease, feeds the inbox and
//!   outcomes through the transition, records results;
//! - [`audit`]: the audit trail's entries, and how events and outcomes
//!   are described in it;
//! - here: [`WorkflowId`], the [`Registry`] of kinds, the type erasure that
//!   lets one runner drive kinds of different state types, and the pure
//!   rules the runner applies to every transition ([`check_next`]).
//!
//! Invariants:
//! - a step's outcome, the state it leads to, the events it consumed, the
//!   children it starts and its audit entry are recorded in one statement
//!   or transaction, and only while the runner's fencing token is the
//!   workflow's current one: a runner whose lease was taken over records
//!   nothing;
//! - a step is run at least once per attempt; with no crash, exactly once
//!   (the audit trail holds one `step` entry per recorded run);
//! - after the point of no return, cancels are refused (the refusal is
//!   audited) and no compensating step runs;
//! - the engine speaks domain types only; protobuf stays in `api`;
//! - `NOTIFY navette_workflows` only wakes runners early; the tables are
//!   the truth, and a slow poll catches anything a lost notification hid.

pub mod audit;
pub mod kind;
pub mod runner;
pub mod store;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub use kind::{End, Event, Input, Kind, NewChild, Next, StepContext, Transition};
pub use runner::{Runner, RunnerConfig, RunnerStats};

use crate::error::Error;

/// The notification channel of workflow changes.
pub const CHANNEL: &str = "navette_workflows";

/// Longest accepted workflow id.
const MAX_ID_LEN: usize = 128;

/// A workflow's id: 1 to 128 characters of `[A-Za-z0-9._-]`, parsed once
/// at the edge.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkflowId(String);

impl WorkflowId {
    /// Checks `text`; the error names `field` and quotes at most a short
    /// prefix of what was sent.
    pub fn parse(text: &str, field: &str) -> Result<WorkflowId, Error> {
        let valid = !text.is_empty()
            && text.len() <= MAX_ID_LEN
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if valid {
            Ok(WorkflowId(text.to_owned()))
        } else {
            let prefix: String = text.chars().take(32).collect();
            Err(Error::InvalidArgument(format!(
                "{field} must be 1 to {MAX_ID_LEN} characters among A-Z a-z 0-9 . _ - (got {prefix:?}{})",
                if text.chars().count() > 32 { "..." } else { "" }
            )))
        }
    }

    /// A new random id for a workflow of `kind`: `<kind>-<16 hex>`.
    pub fn generate(kind: &str) -> WorkflowId {
        use ring::rand::SecureRandom;
        let mut random = [0u8; 8];
        // The system generator does not fail on Linux; a zero id would
        // collide on insert and be reported, not reused silently.
        let _ = ring::rand::SystemRandom::new().fill(&mut random);
        let hex: String = random.iter().map(|b| format!("{b:02x}")).collect();
        WorkflowId(format!("{kind}-{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Ids read back from the database were checked when written.
    pub(crate) fn from_stored(text: String) -> WorkflowId {
        WorkflowId(text)
    }
}

impl std::fmt::Display for WorkflowId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The kinds a runner drives, by name. Adding a kind is one
/// [`Registry::register`] line where the runner is built.
#[derive(Default)]
pub struct Registry {
    kinds: BTreeMap<&'static str, Arc<dyn ErasedKind>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.kinds.keys()).finish()
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Adds `kind` under [`Kind::NAME`] (a second kind of the same name
    /// replaces the first).
    pub fn register<K: Kind>(mut self, kind: K) -> Registry {
        self.kinds.insert(K::NAME, Arc::new(kind));
        self
    }

    pub fn names(&self) -> Vec<String> {
        self.kinds.keys().map(|name| (*name).to_owned()).collect()
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<dyn ErasedKind>> {
        self.kinds.get(name).cloned()
    }

    pub fn is_empty(&self) -> bool {
        self.kinds.is_empty()
    }
}

/// A transition with the kind's types serialised, as the runner stores it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoredTransition {
    pub state: serde_json::Value,
    pub next: Next<StoredStep>,
    pub children: Vec<NewChild>,
}

/// A step, serialised, with what the engine must know of it.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StoredStep {
    pub value: serde_json::Value,
    pub point_of_no_return: bool,
    pub compensates: bool,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A step performed: its outcome as the audit trail shows it, whether it
/// is a failure ([`Kind::failed`]), and the transition it leads to.
pub(crate) struct Performed {
    pub outcome: String,
    pub failed: bool,
    pub transition: StoredTransition,
}

/// [`Kind`] over serialised values, so one registry holds every kind.
/// Errors are a state or step the kind cannot read (a bug, or a stored
/// value from an incompatible version): the runner fails the workflow.
pub(crate) trait ErasedKind: Send + Sync {
    fn on_event(&self, state: &serde_json::Value, event: Event)
    -> Result<StoredTransition, String>;

    fn step(&self, step: &serde_json::Value) -> Result<StoredStep, String>;

    /// Performs `step`, then computes the transition from its outcome;
    /// also the outcome, as the audit trail shows it.
    fn perform<'a>(
        &'a self,
        state: &'a serde_json::Value,
        step: &'a serde_json::Value,
        context: &'a StepContext,
    ) -> BoxFuture<'a, Result<Performed, String>>;

    /// [`Kind::projects`].
    fn projects(&self) -> bool;

    /// [`Kind::project`] of a stored state.
    fn project<'a>(
        &'a self,
        client: &'a tokio_postgres::Transaction<'_>,
        id: &'a WorkflowId,
        state: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), Error>>;
}

fn read<T: serde::de::DeserializeOwned>(
    value: &serde_json::Value,
    what: &str,
) -> Result<T, String> {
    serde_json::from_value(value.clone()).map_err(|error| format!("unreadable {what}: {error}"))
}

fn stored<K: Kind>(
    kind: &K,
    transition: Transition<K::State, K::Step>,
) -> Result<StoredTransition, String> {
    let state = serde_json::to_value(&transition.state)
        .map_err(|error| format!("state cannot be stored: {error}"))?;
    let step = |step: K::Step| -> Result<StoredStep, String> {
        Ok(StoredStep {
            value: serde_json::to_value(&step)
                .map_err(|error| format!("step cannot be stored: {error}"))?,
            point_of_no_return: kind.point_of_no_return(&step),
            compensates: kind.compensates(&step),
        })
    };
    let next = match transition.next {
        Next::Run(s) => Next::Run(step(s)?),
        Next::RunAfter(s, delay) => Next::RunAfter(step(s)?, delay),
        Next::Wait => Next::Wait,
        Next::WaitFor(delay) => Next::WaitFor(delay),
        Next::WaitUntil(at) => Next::WaitUntil(at),
        Next::Done(end) => Next::Done(end),
    };
    Ok(StoredTransition {
        state,
        next,
        children: transition.children,
    })
}

impl<K: Kind> ErasedKind for K {
    fn on_event(
        &self,
        state: &serde_json::Value,
        event: Event,
    ) -> Result<StoredTransition, String> {
        let state: K::State = read(state, "state")?;
        stored(self, self.transition(&state, Input::Event(event)))
    }

    fn step(&self, step: &serde_json::Value) -> Result<StoredStep, String> {
        let typed: K::Step = read(step, "step")?;
        Ok(StoredStep {
            value: step.clone(),
            point_of_no_return: self.point_of_no_return(&typed),
            compensates: self.compensates(&typed),
        })
    }

    fn perform<'a>(
        &'a self,
        state: &'a serde_json::Value,
        step: &'a serde_json::Value,
        context: &'a StepContext,
    ) -> BoxFuture<'a, Result<Performed, String>> {
        Box::pin(async move {
            let state: K::State = read(state, "state")?;
            let step: K::Step = read(step, "step")?;
            let outcome = Kind::perform(self, &state, &step, context).await;
            let text = audit::outcome_text(&outcome);
            let failed = Kind::failed(self, &outcome);
            let transition = self.transition(&state, Input::Outcome(outcome));
            Ok(Performed {
                outcome: text,
                failed,
                transition: stored(self, transition)?,
            })
        })
    }

    fn projects(&self) -> bool {
        Kind::projects(self)
    }

    fn project<'a>(
        &'a self,
        client: &'a tokio_postgres::Transaction<'_>,
        id: &'a WorkflowId,
        state: &'a serde_json::Value,
    ) -> BoxFuture<'a, Result<(), Error>> {
        Box::pin(async move {
            let state: K::State = read(state, "state").map_err(Error::Internal)?;
            Kind::project(self, client, id, &state).await
        })
    }
}

/// Why the engine refuses what a transition asks for.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "the kind asked for the compensating step {step} after the point of no return; refused: the workflow fails instead"
    )]
    CompensationAfterPointOfNoReturn { step: String },
}

/// The engine's rule on every transition: after the point of no return,
/// no compensating step.
pub(crate) fn check_next(
    point_of_no_return_passed: bool,
    next: &Next<StoredStep>,
) -> Result<(), Refusal> {
    match next {
        Next::Run(step) | Next::RunAfter(step, _)
            if point_of_no_return_passed && step.compensates =>
        {
            Err(Refusal::CompensationAfterPointOfNoReturn {
                step: step.value.to_string(),
            })
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kind of two steps, the second irreversible, the third a rollback.
    struct TwoSteps;

    impl Kind for TwoSteps {
        const NAME: &'static str = "two-steps";
        type State = u32;
        type Step = String;
        type Outcome = u32;

        fn transition(&self, state: &u32, input: Input<u32>) -> Transition<u32, String> {
            match input {
                Input::Event(Event::Start) => Transition::new(*state, Next::Run("a".to_owned())),
                Input::Event(Event::Cancel) => {
                    Transition::new(*state, Next::Run("undo".to_owned()))
                }
                Input::Outcome(n) if n < 2 => {
                    Transition::new(state + n, Next::Run("switch".to_owned()))
                }
                _ => Transition::new(*state, Next::Done(End::Completed)),
            }
        }

        async fn perform(&self, _state: &u32, _step: &String, context: &StepContext) -> u32 {
            context.attempt
        }

        fn point_of_no_return(&self, step: &String) -> bool {
            step == "switch"
        }

        fn compensates(&self, step: &String) -> bool {
            step == "undo"
        }
    }

    #[test]
    fn stored_transitions_carry_what_the_engine_must_know_of_the_next_step() {
        let erased: &dyn ErasedKind = &TwoSteps;
        let started = erased.on_event(&serde_json::json!(1), Event::Start);
        let Ok(StoredTransition {
            state,
            next: Next::Run(step),
            ..
        }) = started
        else {
            panic!("{started:?}");
        };
        assert_eq!(state, serde_json::json!(1));
        assert_eq!(step.value, serde_json::json!("a"));
        assert!(!step.point_of_no_return && !step.compensates);
        let switch = erased.step(&serde_json::json!("switch"));
        assert!(matches!(
            switch,
            Ok(StoredStep {
                point_of_no_return: true,
                compensates: false,
                ..
            })
        ));
        let cancelled = erased.on_event(&serde_json::json!(1), Event::Cancel);
        let Ok(StoredTransition {
            next: Next::Run(undo),
            ..
        }) = cancelled
        else {
            panic!("{cancelled:?}");
        };
        assert!(undo.compensates);
        assert!(check_next(true, &Next::Run(undo)).is_err());
    }

    #[test]
    fn unreadable_states_and_steps_are_errors_not_panics() {
        let erased: &dyn ErasedKind = &TwoSteps;
        let error = erased.on_event(&serde_json::json!("not a number"), Event::Start);
        assert!(
            matches!(&error, Err(why) if why.starts_with("unreadable state")),
            "{error:?}"
        );
        let error = erased.step(&serde_json::json!(7));
        assert!(
            matches!(&error, Err(why) if why.starts_with("unreadable step")),
            "{error:?}"
        );
    }

    #[test]
    fn registries_know_their_kinds_by_name() {
        let registry = Registry::new().register(TwoSteps);
        assert_eq!(registry.names(), ["two-steps"]);
        assert!(registry.get("two-steps").is_some());
        assert!(registry.get("other").is_none());
        assert!(Registry::new().is_empty());
    }

    fn step(compensates: bool) -> StoredStep {
        StoredStep {
            value: serde_json::json!("rollback"),
            point_of_no_return: false,
            compensates,
        }
    }

    #[test]
    fn compensation_is_refused_only_after_the_point_of_no_return() {
        assert_eq!(check_next(false, &Next::Run(step(true))), Ok(()));
        assert_eq!(check_next(true, &Next::Run(step(false))), Ok(()));
        assert!(matches!(
            check_next(true, &Next::RunAfter(step(true), std::time::Duration::ZERO)),
            Err(Refusal::CompensationAfterPointOfNoReturn { .. })
        ));
        assert_eq!(check_next(true, &Next::Done(End::Cancelled)), Ok(()));
    }

    #[test]
    fn workflow_ids_are_checked_and_refusals_quote_a_short_prefix() {
        assert!(WorkflowId::parse("test-1.a_b", "id").is_ok());
        for bad in ["", "a b", "a\0b", " bruno", "bruno\n", "é"] {
            assert!(WorkflowId::parse(bad, "id").is_err(), "{bad:?}");
        }
        let long = "x".repeat(1 << 20);
        let error = WorkflowId::parse(&long, "workflow_id")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.starts_with("workflow_id must be"), "{error}");
        assert!(error.len() < 200, "{}", error.len());
        let generated = WorkflowId::generate("bench");
        assert!(WorkflowId::parse(generated.as_str(), "id").is_ok());
        assert!(generated.as_str().starts_with("bench-"));
    }
}
