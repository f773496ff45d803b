//! The controller's Prometheus metrics and their `/metrics` endpoint.
//!
//! Owns the process-wide registry of counters the workflow runner updates
//! ([`step_finished`], [`lease_lost`]: one call where the event happens, no
//! handle to pass around) and the scrape: those counters, the build, and
//! the workflows by kind and state counted in the database at that moment
//! ([`workflows`]). The endpoint is off unless `[metrics] listen` is set;
//! [`bind`] listens before the controller says it is ready, so a bad
//! address stops start-up.
//!
//! Names follow Prometheus' conventions: `navette_` first, counters end in
//! `_total`, durations are `_seconds`. Labels are low-cardinality only:
//! a workflow kind, a step, a state; never an account, a test or a host
//! id (the endpoint has no authentication, and every label value is a new
//! series).

pub mod workflows;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use navette_proto::metrics_http;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::state::Controller;

/// A workflow kind and one of its steps, as labels.
type StepLabels = [(&'static str, String); 2];
/// A workflow kind, as a label.
type KindLabels = [(&'static str, String); 1];

/// The counters of this process, registered once.
pub struct Metrics {
    registry: Registry,
    step_runs: Family<StepLabels, Counter>,
    step_failures: Family<StepLabels, Counter>,
    step_durations: Family<StepLabels, Histogram, fn() -> Histogram>,
    lease_losses: Family<KindLabels, Counter>,
}

/// Step durations from 50 ms to about an hour (a copy step lasts as long
/// as its copy).
fn step_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.05, 4.0, 9))
}

impl Metrics {
    /// A registry with every family of the controller, all at zero.
    pub fn new() -> Metrics {
        let mut registry = metrics_http::registry(
            "The running controller's version (always 1)",
            env!("CARGO_PKG_VERSION"),
        );
        let step_runs = Family::default();
        registry.register(
            "workflow_step_runs",
            "Workflow steps this controller ran to an outcome, by kind and step",
            step_runs.clone(),
        );
        let step_failures = Family::default();
        registry.register(
            "workflow_step_failures",
            "Workflow steps whose outcome was a failure (refused, host unreachable, copy failed), by kind and step",
            step_failures.clone(),
        );
        let step_durations =
            Family::<StepLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                step_histogram,
            );
        registry.register(
            "workflow_step_duration_seconds",
            "How long workflow steps ran, by kind and step",
            step_durations.clone(),
        );
        let lease_losses = Family::default();
        registry.register(
            "workflow_lease_losses",
            "Steps whose lease this controller lost (another controller runs them again), by kind",
            lease_losses.clone(),
        );
        Metrics {
            registry,
            step_runs,
            step_failures,
            step_durations,
            lease_losses,
        }
    }

    /// Counts a step of `kind` that ran for `elapsed` to an outcome,
    /// successful or not.
    pub fn step_finished(&self, kind: &str, step: &str, elapsed: Duration, ok: bool) {
        let labels = [("kind", kind.to_owned()), ("step", step.to_owned())];
        self.step_runs.get_or_create(&labels).inc();
        if !ok {
            self.step_failures.get_or_create(&labels).inc();
        }
        self.step_durations
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a step of `kind` whose lease was lost.
    pub fn lease_lost(&self, kind: &str) {
        self.lease_losses
            .get_or_create(&[("kind", kind.to_owned())])
            .inc();
    }

    /// The registry in the Prometheus text format.
    pub fn render(&self) -> String {
        metrics_http::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

/// This process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts a finished step (see [`Metrics::step_finished`]).
pub fn step_finished(kind: &str, step: &str, elapsed: Duration, ok: bool) {
    global().step_finished(kind, step, elapsed, ok);
}

/// Counts a lost lease (see [`Metrics::lease_lost`]).
pub fn lease_lost(kind: &str) {
    global().lease_lost(kind);
}

pub use metrics_http::BindError as MetricsError;

/// Listens on `[metrics] listen`, if set.
pub async fn bind(controller: &Controller) -> Result<Option<TcpListener>, MetricsError> {
    let Some(address) = controller.config.metrics.listen else {
        return Ok(None);
    };
    let listener = metrics_http::bind(address).await?;
    tracing::info!(message = "serving metrics", address = %listener.local_addr().unwrap_or(address), path = metrics_http::PATH);
    Ok(Some(listener))
}

/// Serves the metrics on `listener` until `stopped` turns true.
pub fn spawn_serving(
    controller: Arc<Controller>,
    listener: TcpListener,
    mut stopped: tokio::sync::watch::Receiver<bool>,
) {
    let render = move || {
        let controller = controller.clone();
        async move { scrape(&controller).await }
    };
    tokio::spawn(metrics_http::serve(listener, render, async move {
        let _ = stopped.wait_for(|stopped| *stopped).await;
    }));
}

/// One scrape: the counters, then the workflows as the database counts
/// them now. A database that cannot answer leaves the workflows out (and
/// says so in the log) rather than failing the whole scrape.
async fn scrape(controller: &Controller) -> String {
    let mut text = global().render();
    let counted = async {
        let client = controller.db.get().await?;
        crate::store::workflow_counts::by_kind_and_state(&**client).await
    }
    .await;
    match counted {
        Ok(counts) => text.push_str(&workflows::render(&counts)),
        Err(error) => {
            tracing::warn!(message = "counting workflows for a metrics scrape failed", %error)
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_render_by_kind_and_step() {
        let metrics = Metrics::new();
        metrics.step_finished("test", "copy", Duration::from_millis(300), true);
        metrics.step_finished("test", "copy", Duration::from_secs(2), false);
        metrics.step_finished("test", "grant", Duration::from_millis(10), true);
        metrics.lease_lost("test");
        let text = metrics.render();
        for line in [
            "# TYPE navette_workflow_step_runs_total counter",
            "navette_workflow_step_runs_total{kind=\"test\",step=\"copy\"} 2",
            "navette_workflow_step_runs_total{kind=\"test\",step=\"grant\"} 1",
            "navette_workflow_step_failures_total{kind=\"test\",step=\"copy\"} 1",
            "# TYPE navette_workflow_step_duration_seconds histogram",
            "navette_workflow_step_duration_seconds_count{kind=\"test\",step=\"copy\"} 2",
            "navette_workflow_step_duration_seconds_sum{kind=\"test\",step=\"copy\"} 2.3",
            "navette_workflow_step_duration_seconds_bucket{kind=\"test\",step=\"copy\",le=\"0.8\"} 1",
            "navette_workflow_step_duration_seconds_bucket{kind=\"test\",step=\"copy\",le=\"+Inf\"} 2",
            "navette_workflow_lease_losses_total{kind=\"test\"} 1",
            &format!(
                "navette_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        // A step that never failed has no failure series.
        assert!(
            !text.contains("navette_workflow_step_failures_total{kind=\"test\",step=\"grant\"}"),
            "{text}"
        );
    }
}
