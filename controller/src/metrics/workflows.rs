//! `navette_workflows{kind, state}`: how many workflows of each kind are in
//! each state, counted in the database at scrape time (every controller
//! sharing the database reports the same numbers; take one, or the `max`).
//!
//! Every state a kind can be in is listed, at 0 when none is in it, so a
//! state that empties shows 0 rather than vanishing. A new kind adds its
//! states to [`known_states`] and its table to
//! `store::workflow_counts::by_kind_and_state`.

use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::model::TestState;
use crate::store::workflow_counts::WorkflowCount;

/// Every (kind, state) pair a workflow can be in.
pub fn known_states() -> Vec<(&'static str, &'static str)> {
    TestState::ALL
        .iter()
        .map(|state| ("test", state.as_str()))
        .collect()
}

/// The gauge family for `counts`, in the Prometheus text format.
pub fn render(counts: &[WorkflowCount]) -> String {
    let family = Family::<[(&'static str, String); 2], Gauge>::default();
    for (kind, state) in known_states() {
        family
            .get_or_create(&[("kind", kind.to_owned()), ("state", state.to_owned())])
            .set(0);
    }
    for count in counts {
        family
            .get_or_create(&[("kind", count.kind.clone()), ("state", count.state.clone())])
            .set(count.workflows);
    }
    let mut registry = Registry::with_prefix("navette");
    registry.register(
        "workflows",
        "Workflows in the database, by kind and state",
        family,
    );
    let mut text = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_text::encode(&mut text, &registry);
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(kind: &str, state: &str, workflows: i64) -> WorkflowCount {
        WorkflowCount {
            kind: kind.to_owned(),
            state: state.to_owned(),
            workflows,
        }
    }

    #[test]
    fn every_known_state_is_listed_and_counts_are_set() {
        let text = render(&[count("test", "copying", 2), count("test", "ready", 5)]);
        assert!(text.contains("# TYPE navette_workflows gauge\n"), "{text}");
        for line in [
            "navette_workflows{kind=\"test\",state=\"copying\"} 2",
            "navette_workflows{kind=\"test\",state=\"ready\"} 5",
            "navette_workflows{kind=\"test\",state=\"placing\"} 0",
            "navette_workflows{kind=\"test\",state=\"deleted\"} 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        let series = text.lines().filter(|l| !l.starts_with('#')).count();
        assert_eq!(series, TestState::ALL.len(), "{text}");
    }

    #[test]
    fn a_state_the_code_does_not_know_is_still_shown() {
        // A newer controller sharing the database may have written it.
        let text = render(&[count("test", "archived", 1)]);
        assert!(
            text.lines()
                .any(|l| l == "navette_workflows{kind=\"test\",state=\"archived\"} 1"),
            "{text}"
        );
    }
}
