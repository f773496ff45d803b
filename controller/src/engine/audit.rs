//! The audit trail of workflows: what each entry is, and how outcomes and
//! events are written in it. Entries are written by [`super::store`] in the
//! statement that records what they describe (a step's entry with the
//! step's outcome, under the fencing token), so the trail never shows a
//! step whose result was not kept.

use chrono::{DateTime, Utc};

use super::{End, Event, WorkflowId};

/// Longest outcome or detail kept in an entry.
const MAX_DETAIL: usize = 2000;

/// What an entry records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum What {
    /// The workflow was created.
    Created,
    /// A step ran and its outcome was recorded.
    Step,
    /// A compensating step (a rollback) ran and its outcome was recorded.
    Compensation,
    /// An event of the inbox was delivered to the kind.
    Event,
    /// A command (cancel, confirm...) was received.
    Command,
    /// A command was refused (a cancel after the point of no return).
    CommandRefused,
    /// The point of no return was passed.
    PointOfNoReturn,
    /// The workflow ended.
    Done,
}

impl What {
    pub fn as_str(self) -> &'static str {
        match self {
            What::Created => "created",
            What::Step => "step",
            What::Compensation => "compensation",
            What::Event => "event",
            What::Command => "command",
            What::CommandRefused => "command_refused",
            What::PointOfNoReturn => "point_of_no_return",
            What::Done => "done",
        }
    }

    pub fn parse(text: &str) -> Option<What> {
        [
            What::Created,
            What::Step,
            What::Compensation,
            What::Event,
            What::Command,
            What::CommandRefused,
            What::PointOfNoReturn,
            What::Done,
        ]
        .into_iter()
        .find(|what| what.as_str() == text)
    }
}

/// An entry to write.
#[derive(Clone, Debug, PartialEq)]
pub struct NewEntry {
    pub what: What,
    pub step: Option<serde_json::Value>,
    /// The controller (for steps and events) or the caller (commands).
    pub who: String,
    pub detail: String,
    /// For steps: when it became due, and when it started.
    pub due_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
}

impl NewEntry {
    pub fn new(what: What, who: &str, detail: impl Into<String>) -> NewEntry {
        NewEntry {
            what,
            step: None,
            who: who.to_owned(),
            detail: bounded(detail.into()),
            due_at: None,
            started_at: None,
        }
    }
}

/// An entry as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    pub id: i64,
    pub workflow_id: WorkflowId,
    pub at: DateTime<Utc>,
    pub what: What,
    /// The step, as the kind serialises it (`"grant"`), or empty.
    pub step: String,
    pub who: String,
    pub detail: String,
    pub due_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
}

/// An outcome as the trail shows it (its `Debug` form, bounded).
pub fn outcome_text(outcome: &impl std::fmt::Debug) -> String {
    bounded(format!("{outcome:?}"))
}

/// An event as the trail shows it.
pub fn event_text(event: &Event, sender: &str) -> String {
    let text = match event {
        Event::Start => format!("start, asked by {sender}"),
        Event::Cancel => format!("cancel, asked by {sender}"),
        Event::Command { name, payload } => format!("command {name} {payload}, from {sender}"),
        Event::Timer => "timer fired".to_owned(),
        Event::ChildFinished { child, end } => format!("child {child} {}", end_text(end)),
    };
    bounded(text)
}

/// An end as the trail and the operator API show it.
pub fn end_text(end: &End) -> String {
    match end {
        End::Completed => "completed".to_owned(),
        End::Failed(why) => format!("failed: {why}"),
        End::Cancelled => "cancelled".to_owned(),
    }
}

/// `text`, cut at [`MAX_DETAIL`] bytes (on a character boundary).
pub(crate) fn bounded(mut text: String) -> String {
    if text.len() > MAX_DETAIL {
        let mut cut = MAX_DETAIL;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn details_are_bounded_on_a_character_boundary() {
        let long = "é".repeat(MAX_DETAIL);
        let cut = bounded(long);
        assert!(cut.len() <= MAX_DETAIL + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(bounded("short".to_owned()), "short");
    }

    #[test]
    fn every_kind_of_entry_reads_back() {
        for what in [
            What::Created,
            What::Step,
            What::Compensation,
            What::Event,
            What::Command,
            What::CommandRefused,
            What::PointOfNoReturn,
            What::Done,
        ] {
            assert_eq!(What::parse(what.as_str()), Some(what));
        }
        assert_eq!(What::parse("other"), None);
    }

    #[test]
    fn events_say_who_sent_them() {
        assert_eq!(
            event_text(&Event::Cancel, "operator"),
            "cancel, asked by operator"
        );
        let child = WorkflowId::from_stored("c-1".to_owned());
        assert_eq!(
            event_text(
                &Event::ChildFinished {
                    child,
                    end: End::Failed("disk full".to_owned())
                },
                "engine"
            ),
            "child c-1 failed: disk full"
        );
    }
}
