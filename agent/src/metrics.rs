//! The agent's Prometheus metrics and their `/metrics` endpoint.
//!
//! Owns the process-wide registry that the transfer code updates with one
//! call where it already counts progress ([`copied_bytes`],
//! [`copied_files`], [`transfer_started`]: no handle to pass around), and
//! the endpoint, off unless `[metrics] listen` is set; [`bind`] listens
//! before the agent says it is ready, so a bad address stops start-up.
//!
//! Names follow Prometheus' conventions: `navette_agent_` first (the
//! controller's are `navette_`), counters end in `_total`, sizes are
//! bytes. Labels are low-cardinality only (the engine of a copy); never an
//! account, a transfer id or a host (the endpoint has no authentication).
//! Counters count what happened on this host since the agent started;
//! only the target of a transfer counts it.

use std::sync::OnceLock;

use navette_proto::metrics_http;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What kind of data a copy moved: the `engine` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Engine {
    Files,
    Postgresql,
    Mariadb,
}

impl Engine {
    pub fn as_str(self) -> &'static str {
        match self {
            Engine::Files => "files",
            Engine::Postgresql => "postgresql",
            Engine::Mariadb => "mariadb",
        }
    }
}

type EngineLabel = [(&'static str, &'static str); 1];
type SitesLabels = [(&'static str, &'static str); 2];

/// The sites operations (`operation` label).
pub const SITES_OPERATIONS: [&str; 4] = ["start", "stop", "freeze", "thaw"];
/// How a sites operation ended (`outcome` label): done, refused (bad input
/// or a precondition: nothing was changed), or failed.
pub const SITES_OUTCOMES: [&str; 3] = ["done", "refused", "failed"];

/// The counters of this process, registered once.
pub struct Metrics {
    registry: Registry,
    copied_bytes: Family<EngineLabel, Counter>,
    copied_files: Counter,
    transfers_running: Gauge,
    transfers_finished: Counter,
    transfers_failed: Counter,
    sites_operations: Family<SitesLabels, Counter>,
}

impl Metrics {
    /// A registry with every family of the agent, all at zero.
    pub fn new() -> Metrics {
        let mut registry = metrics_http::registry(
            "The running agent's version (always 1)",
            env!("CARGO_PKG_VERSION"),
        );
        let copied_bytes = Family::<EngineLabel, Counter>::default();
        for engine in [Engine::Files, Engine::Postgresql, Engine::Mariadb] {
            copied_bytes
                .get_or_create(&[("engine", engine.as_str())])
                .inc_by(0);
        }
        registry.register(
            "agent_copied_bytes",
            "Bytes pulled into copies on this host from their sources (file contents, database rows as sent), by engine",
            copied_bytes.clone(),
        );
        let copied_files = Counter::default();
        registry.register(
            "agent_copied_files",
            "Files whose content was pulled into copies on this host (unchanged files not counted)",
            copied_files.clone(),
        );
        let transfers_running = Gauge::default();
        registry.register(
            "agent_transfers_running",
            "Transfers pulling into this host now",
            transfers_running.clone(),
        );
        let transfers_finished = Counter::default();
        registry.register(
            "agent_transfers_finished",
            "Transfers into this host that ended, whether they succeeded or failed",
            transfers_finished.clone(),
        );
        let transfers_failed = Counter::default();
        registry.register(
            "agent_transfers_failed",
            "Transfers into this host that ended in failure",
            transfers_failed.clone(),
        );
        let sites_operations = Family::<SitesLabels, Counter>::default();
        for operation in SITES_OPERATIONS {
            for outcome in SITES_OUTCOMES {
                sites_operations
                    .get_or_create(&[("operation", operation), ("outcome", outcome)])
                    .inc_by(0);
            }
        }
        registry.register(
            "agent_sites_operations",
            "Calls to start, stop, freeze or thaw an account's sites on this host, by operation and outcome",
            sites_operations.clone(),
        );
        Metrics {
            sites_operations,
            registry,
            copied_bytes,
            copied_files,
            transfers_running,
            transfers_finished,
            transfers_failed,
        }
    }

    /// `bytes` more arrived from a source for a copy of `engine`.
    pub fn copied_bytes(&self, engine: Engine, bytes: u64) {
        self.copied_bytes
            .get_or_create(&[("engine", engine.as_str())])
            .inc_by(bytes);
    }

    /// `files` more files' content arrived.
    pub fn copied_files(&self, files: u64) {
        self.copied_files.inc_by(files);
    }

    /// A transfer started: counted as running until the guard drops.
    pub fn transfer_started(&'static self) -> RunningTransfer {
        self.transfers_running.inc();
        RunningTransfer { metrics: self }
    }

    /// A sites `operation` ended with `outcome` (see [`SITES_OUTCOMES`]).
    pub fn sites_operation(&self, operation: &'static str, outcome: &'static str) {
        self.sites_operations
            .get_or_create(&[("operation", operation), ("outcome", outcome)])
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

/// A running transfer, as the metrics count it: [`RunningTransfer::finished`]
/// counts its end; dropping it (however the task ends) stops counting it
/// as running.
#[must_use = "the transfer counts as running while this lives"]
pub struct RunningTransfer {
    metrics: &'static Metrics,
}

impl RunningTransfer {
    /// The transfer ended, successfully when `ok`.
    pub fn finished(self, ok: bool) {
        self.metrics.transfers_finished.inc();
        if !ok {
            self.metrics.transfers_failed.inc();
        }
    }
}

impl Drop for RunningTransfer {
    fn drop(&mut self) {
        self.metrics.transfers_running.dec();
    }
}

/// This process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Counts bytes copied (see [`Metrics::copied_bytes`]).
pub fn copied_bytes(engine: Engine, bytes: u64) {
    global().copied_bytes(engine, bytes);
}

/// Counts files copied (see [`Metrics::copied_files`]).
pub fn copied_files(files: u64) {
    global().copied_files(files);
}

/// Counts a transfer as running (see [`Metrics::transfer_started`]).
pub fn transfer_started() -> RunningTransfer {
    global().transfer_started()
}

/// Counts a sites operation (see [`Metrics::sites_operation`]).
pub fn sites_operation(operation: &'static str, outcome: &'static str) {
    global().sites_operation(operation, outcome);
}

pub use metrics_http::{BindError as MetricsError, bind};

/// Serves the metrics on `listener` until `shutdown` completes.
pub async fn serve(listener: TcpListener, shutdown: impl std::future::Future<Output = ()>) {
    metrics_http::serve(listener, || async { global().render() }, shutdown).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(metrics: &Metrics) -> Vec<String> {
        metrics.render().lines().map(str::to_owned).collect()
    }

    #[test]
    fn copies_render_by_engine() {
        let metrics = Metrics::new();
        metrics.copied_bytes(Engine::Files, 1000);
        metrics.copied_bytes(Engine::Files, 24);
        metrics.copied_bytes(Engine::Postgresql, 7);
        metrics.copied_files(3);
        let lines = lines(&metrics);
        for line in [
            "# TYPE navette_agent_copied_bytes_total counter",
            "navette_agent_copied_bytes_total{engine=\"files\"} 1024",
            "navette_agent_copied_bytes_total{engine=\"postgresql\"} 7",
            "navette_agent_copied_bytes_total{engine=\"mariadb\"} 0",
            "navette_agent_copied_files_total 3",
            "navette_agent_transfers_running 0",
            &format!(
                "navette_build_info{{version=\"{}\"}} 1",
                env!("CARGO_PKG_VERSION")
            ),
        ] {
            assert!(
                lines.iter().any(|l| l == line),
                "missing {line:?} in {lines:#?}"
            );
        }
    }

    #[test]
    fn a_transfer_runs_until_its_guard_drops() {
        // 'static, as the guard needs: leaked once, in a test.
        let metrics: &'static Metrics = Box::leak(Box::new(Metrics::new()));
        let first = metrics.transfer_started();
        let second = metrics.transfer_started();
        assert!(lines(metrics).contains(&"navette_agent_transfers_running 2".to_owned()));
        first.finished(true);
        second.finished(false);
        let abandoned = metrics.transfer_started();
        drop(abandoned);
        let lines = lines(metrics);
        for line in [
            "navette_agent_transfers_running 0",
            "navette_agent_transfers_finished_total 2",
            "navette_agent_transfers_failed_total 1",
        ] {
            assert!(
                lines.iter().any(|l| l == line),
                "missing {line:?} in {lines:#?}"
            );
        }
    }
}
