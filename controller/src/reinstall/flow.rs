//! The reinstall's state machine: what a reinstall remembers
//! ([`Reinstall`]), its steps ([`Step`]), what a step comes to
//! ([`Outcome`]), and [`decide`], the one pure function from (state,
//! engine input) to the next state and step. No I/O and no clock here:
//! times come with the outcomes (`at`), stamped by the step that saw them.
//!
//! ```text
//!  Start ─▶ Checking ─(no account)─▶ MintingToken ─▶ Provisioning ─(exit 0)─▶ AwaitingEnrolment ─(back on the stack)─▶ Done
//!              │  └─(accounts)─▶ Refused                 │ (failed)                 │ (deadline passed)
//!              └─(agent silent)──────────────────────────┴────────▶ Stuck ◀─────────┘
//!                                                                   │ retry: MintingToken (Checking if the check is what failed)
//!                                                                   │ mark_done: MarkingDone ─▶ MarkedDone
//!  abort / cancel, from any stage that has not ended: Aborting ─▶ Aborted
//! ```
//!
//! A token is revoked when the next attempt mints its own, and when the
//! reinstall is aborted or marked done (`RevokeToken`), so no token of a
//! reinstall outlives it unused.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::engine::{End, Event, Input, Next, Transition};

/// The command that runs a stuck reinstall's provisioner again; payload
/// [`RetryPayload`].
pub const RETRY: &str = "retry";
/// The command by which an operator declares a stuck reinstall done;
/// payload [`OperatorPayload`].
pub const MARK_DONE: &str = "mark_done";
/// The command by which an operator aborts a reinstall; payload
/// [`OperatorPayload`]. The API follows it with the engine's cancel, so a
/// running step stops.
pub const ABORT: &str = "abort";

/// How long a step that met trouble of the controller's own (its
/// database) waits before it runs again.
pub const TROUBLE_RETRY: Duration = Duration::from_secs(5);
/// How long the wait for the host pauses between two of its watches.
pub const AWAIT_AGAIN: Duration = Duration::from_millis(500);

/// Where a reinstall stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Checking,
    MintingToken,
    Provisioning,
    AwaitingEnrolment,
    Stuck,
    Aborting,
    MarkingDone,
    Done,
    MarkedDone,
    Aborted,
    Refused,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Checking => "checking",
            Stage::MintingToken => "minting_token",
            Stage::Provisioning => "provisioning",
            Stage::AwaitingEnrolment => "awaiting_enrolment",
            Stage::Stuck => "stuck",
            Stage::Aborting => "aborting",
            Stage::MarkingDone => "marking_done",
            Stage::Done => "done",
            Stage::MarkedDone => "marked_done",
            Stage::Aborted => "aborted",
            Stage::Refused => "refused",
        }
    }

    /// Whether the reinstall is over.
    pub fn ended(self) -> bool {
        matches!(
            self,
            Stage::Done | Stage::MarkedDone | Stage::Aborted | Stage::Refused
        )
    }
}

/// The steps of a reinstall.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// Ask the host's agent for its inventory: no account may live there.
    Check,
    /// Revoke the previous attempt's token, mint this attempt's.
    MintToken,
    /// Run the provisioner.
    Provision,
    /// Watch for the host's enrolment with the token and its new stack.
    AwaitEnrolment,
    /// Revoke the current token (abort, mark done).
    RevokeToken,
}

/// Why a reinstall waits for an operator, and what a retry runs again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stuck {
    pub reason: String,
    /// The step that could not go on.
    pub step: Step,
}

/// Everything a reinstall remembers (the workflow's state).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Reinstall {
    /// The workflow's id.
    pub id: String,
    pub request_id: String,
    pub host_id: String,
    /// The stack version to install.
    pub stack_version: String,
    pub requested_by: String,
    pub stage: Stage,
    /// Tokens minted (provisioner attempts) so far.
    pub attempt: u32,
    /// How long the host is waited for after the provisioner accepted.
    pub enrolment_timeout_secs: u64,
    /// The current attempt's join token (its id; the secret is derived).
    pub token_id: Option<String>,
    /// When waiting for the host gives up.
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub deadline: Option<DateTime<Utc>>,
    pub stuck: Option<Stuck>,
    /// Why it was refused (accounts still lived on the host).
    pub refusal: Option<String>,
    /// What the provisioner last wrote on its standard output.
    pub provisioner_output: Option<String>,
    #[serde(default, with = "crate::model::rfc3339::option")]
    pub enrolled_at: Option<DateTime<Utc>>,
    pub reported_stack_version: Option<String>,
    /// Who marked it done or aborted it, and their note.
    pub ended_by: Option<String>,
    pub note: Option<String>,
}

impl Reinstall {
    /// A reinstall about to start with its check.
    pub fn new(
        id: &str,
        request_id: &str,
        host_id: &str,
        stack_version: &str,
        requested_by: &str,
        enrolment_timeout_secs: u64,
    ) -> Reinstall {
        Reinstall {
            id: id.to_owned(),
            request_id: request_id.to_owned(),
            host_id: host_id.to_owned(),
            stack_version: stack_version.to_owned(),
            requested_by: requested_by.to_owned(),
            stage: Stage::Checking,
            attempt: 0,
            enrolment_timeout_secs,
            token_id: None,
            deadline: None,
            stuck: None,
            refusal: None,
            provisioner_output: None,
            enrolled_at: None,
            reported_stack_version: None,
            ended_by: None,
            note: None,
        }
    }
}

/// What the host showed of itself after enrolling with the token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    #[serde(with = "crate::model::rfc3339")]
    pub enrolled_at: DateTime<Utc>,
    /// The stack version of its first inventory after the enrolment
    /// (`None`: no inventory yet).
    pub stack_version: Option<String>,
}

/// What performing a step came to.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub enum Outcome {
    /// The host's accounts (and copies), by name: none allows the
    /// reinstall.
    Checked {
        accounts: Vec<String>,
    },
    /// Whether accounts live on the host could not be confirmed.
    CannotCheck(String),
    TokenMinted {
        token_id: String,
    },
    /// The provisioner accepted at `at`, writing `output`.
    Provisioned {
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
        output: String,
    },
    ProvisionerFailed(String),
    /// The host enrolled with the token and reported the stack version.
    Back {
        #[serde(with = "crate::model::rfc3339")]
        enrolled_at: DateTime<Utc>,
    },
    /// Not (yet) back at `at`; what it showed, if it enrolled.
    NotBack {
        #[serde(with = "crate::model::rfc3339")]
        at: DateTime<Utc>,
        seen: Option<Seen>,
    },
    TokenRevoked,
    /// A cancel arrived while the step ran: it stopped early.
    Stopped,
    /// The controller's own trouble (its database): the step runs again.
    Trouble(String),
}

/// What an operator's command carries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorPayload {
    pub by: String,
    #[serde(default)]
    pub note: String,
}

/// The payload of [`RETRY`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPayload {
    pub by: String,
    /// A new wait for the host; `None` keeps the reinstall's.
    #[serde(default)]
    pub enrolment_timeout_secs: Option<u64>,
}

type Decision = Transition<Reinstall, Step>;

/// The transition of a reinstall for an engine input. Pure.
pub fn decide(state: &Reinstall, input: Input<Outcome>) -> Decision {
    if state.stage.ended() {
        return resume(state.clone());
    }
    match input {
        Input::Event(Event::Start) => resume(state.clone()),
        Input::Event(Event::Cancel) => abort(state, None),
        Input::Event(Event::Command { name, payload }) => command(state, &name, payload),
        Input::Event(Event::Timer | Event::ChildFinished { .. }) => resume(state.clone()),
        Input::Outcome(outcome) => outcome_of(state, outcome),
    }
}

/// What `state` does next, as its stage says: the one place stages map
/// to steps, so an input that changes nothing leaves the workflow as it
/// was.
pub fn resume(state: Reinstall) -> Decision {
    let next = match state.stage {
        Stage::Checking => Next::Run(Step::Check),
        Stage::MintingToken => Next::Run(Step::MintToken),
        Stage::Provisioning => Next::Run(Step::Provision),
        Stage::AwaitingEnrolment => Next::Run(Step::AwaitEnrolment),
        Stage::Aborting | Stage::MarkingDone => Next::Run(Step::RevokeToken),
        Stage::Stuck => Next::Wait,
        Stage::Done | Stage::MarkedDone => Next::Done(End::Completed),
        Stage::Aborted => Next::Done(End::Cancelled),
        Stage::Refused => Next::Done(End::Failed(state.refusal.clone().unwrap_or_default())),
    };
    Transition::new(state, next)
}

fn command(state: &Reinstall, name: &str, payload: serde_json::Value) -> Decision {
    match name {
        RETRY if state.stage == Stage::Stuck => {
            let Ok(retry) = serde_json::from_value::<RetryPayload>(payload) else {
                return resume(state.clone());
            };
            let mut next = state.clone();
            if let Some(secs) = retry.enrolment_timeout_secs {
                next.enrolment_timeout_secs = secs;
            }
            next.stage = match next.stuck.take().map(|stuck| stuck.step) {
                Some(Step::Check) => Stage::Checking,
                _ => Stage::MintingToken,
            };
            next.deadline = None;
            resume(next)
        }
        MARK_DONE if state.stage == Stage::Stuck => {
            let Ok(operator) = serde_json::from_value::<OperatorPayload>(payload) else {
                return resume(state.clone());
            };
            let mut next = state.clone();
            next.stage = Stage::MarkingDone;
            next.ended_by = Some(operator.by);
            next.note = (!operator.note.is_empty()).then_some(operator.note);
            resume(next)
        }
        ABORT => {
            let operator = serde_json::from_value::<OperatorPayload>(payload).unwrap_or_default();
            abort(state, Some(operator))
        }
        _ => resume(state.clone()),
    }
}

/// An abort (the operator's command, or the engine's cancel): the token
/// goes, then the reinstall ends. An abort that found the reinstall
/// aborting already changes nothing.
fn abort(state: &Reinstall, operator: Option<OperatorPayload>) -> Decision {
    if matches!(state.stage, Stage::Aborting | Stage::MarkingDone) {
        return resume(state.clone());
    }
    let mut next = state.clone();
    next.stage = Stage::Aborting;
    next.stuck = None;
    next.deadline = None;
    match operator {
        Some(operator) => {
            next.ended_by = Some(operator.by);
            next.note = (!operator.note.is_empty()).then_some(operator.note);
        }
        None => next.note = Some("cancelled through Workflows/CancelWorkflow".to_owned()),
    }
    if next.token_id.is_none() {
        next.stage = Stage::Aborted;
    }
    resume(next)
}

fn stuck(state: &Reinstall, step: Step, reason: String) -> Decision {
    let mut next = state.clone();
    next.stage = Stage::Stuck;
    next.stuck = Some(Stuck { reason, step });
    next.deadline = None;
    resume(next)
}

fn outcome_of(state: &Reinstall, outcome: Outcome) -> Decision {
    let host = &state.host_id;
    match (state.stage, outcome) {
        (_, Outcome::Stopped) => resume(state.clone()),
        (_, Outcome::Trouble(_)) => match resume(state.clone()) {
            Transition {
                state,
                next: Next::Run(step),
                ..
            } => Transition::new(state, Next::RunAfter(step, TROUBLE_RETRY)),
            other => other,
        },
        (Stage::Checking, Outcome::Checked { accounts }) if accounts.is_empty() => {
            let mut next = state.clone();
            next.stage = Stage::MintingToken;
            resume(next)
        }
        (Stage::Checking, Outcome::Checked { accounts }) => {
            let mut next = state.clone();
            next.stage = Stage::Refused;
            next.refusal = Some(accounts_still_live(host, &accounts));
            resume(next)
        }
        (Stage::Checking, Outcome::CannotCheck(why)) => stuck(
            state,
            Step::Check,
            format!(
                "cannot confirm that no account lives on host {host}: {why}; bring its agent back and retry, or abort"
            ),
        ),
        (Stage::MintingToken, Outcome::TokenMinted { token_id }) => {
            let mut next = state.clone();
            next.stage = Stage::Provisioning;
            next.attempt = state.attempt.saturating_add(1);
            next.token_id = Some(token_id);
            next.provisioner_output = None;
            resume(next)
        }
        (Stage::Provisioning, Outcome::Provisioned { at, output }) => {
            let mut next = state.clone();
            next.stage = Stage::AwaitingEnrolment;
            next.provisioner_output = (!output.is_empty()).then_some(output);
            let wait = chrono::Duration::seconds(
                i64::try_from(state.enrolment_timeout_secs).unwrap_or(i64::MAX / 1000),
            );
            next.deadline = Some(at + wait);
            resume(next)
        }
        (Stage::Provisioning, Outcome::ProvisionerFailed(why)) => stuck(
            state,
            Step::Provision,
            format!(
                "the provisioner failed for host {host} (attempt {}): {why}; retry once its cause is fixed, mark the reinstall done if the host was reinstalled by other means, or abort",
                state.attempt
            ),
        ),
        (Stage::AwaitingEnrolment, Outcome::Back { enrolled_at }) => {
            let mut next = state.clone();
            next.stage = Stage::Done;
            next.enrolled_at = Some(enrolled_at);
            next.reported_stack_version = Some(state.stack_version.clone());
            next.deadline = None;
            resume(next)
        }
        (Stage::AwaitingEnrolment, Outcome::NotBack { at, seen }) => {
            let mut next = state.clone();
            if let Some(seen) = &seen {
                next.enrolled_at = Some(seen.enrolled_at);
                next.reported_stack_version = seen.stack_version.clone();
            }
            match state.deadline {
                Some(deadline) if at < deadline => {
                    Transition::new(next, Next::RunAfter(Step::AwaitEnrolment, AWAIT_AGAIN))
                }
                _ => {
                    let reason = not_back(state, seen.as_ref());
                    stuck(&next, Step::AwaitEnrolment, reason)
                }
            }
        }
        (Stage::Aborting, Outcome::TokenRevoked) => {
            let mut next = state.clone();
            next.stage = Stage::Aborted;
            resume(next)
        }
        (Stage::MarkingDone, Outcome::TokenRevoked) => {
            let mut next = state.clone();
            next.stage = Stage::MarkedDone;
            resume(next)
        }
        // An outcome of a step the stage no longer runs (a command moved
        // it on meanwhile): the stage decides.
        _ => resume(state.clone()),
    }
}

/// The refusal of a reinstall while accounts live on the host.
pub fn accounts_still_live(host: &str, accounts: &[String]) -> String {
    const SHOWN: usize = 5;
    let mut names = accounts
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if accounts.len() > SHOWN {
        names.push_str(&format!(" and {} more", accounts.len() - SHOWN));
    }
    format!(
        "a reinstall requested while accounts still live on the server: host {host} holds {} account{} ({names}); move every account off it (to its transit host) before reinstalling it",
        accounts.len(),
        if accounts.len() == 1 { "" } else { "s" },
    )
}

/// Why the host did not come back by the deadline.
fn not_back(state: &Reinstall, seen: Option<&Seen>) -> String {
    let host = &state.host_id;
    let token = state.token_id.as_deref().unwrap_or("-");
    let waited = state.enrolment_timeout_secs;
    match seen {
        Some(Seen {
            enrolled_at,
            stack_version: Some(reported),
        }) => format!(
            "host {host} enrolled again with join token {token} at {} but reports stack version {reported:?}, not {:?}, after {waited} s; check what the provisioner installed, then retry or mark the reinstall done",
            enrolled_at.to_rfc3339(),
            state.stack_version
        ),
        Some(Seen { enrolled_at, .. }) => format!(
            "host {host} enrolled again with join token {token} at {} but sent no inventory within {waited} s; check its agent, then retry or mark the reinstall done",
            enrolled_at.to_rfc3339()
        ),
        None => format!(
            "host {host} did not come back: its agent did not enrol with join token {token} within {waited} s of the provisioner accepting (attempt {}); check the reinstall at the provider, then retry (a new token), mark it done, or abort",
            state.attempt
        ),
    }
}

#[cfg(test)]
mod tests;
