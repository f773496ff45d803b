//! The runner every controller runs, shared by all kinds.
//!
//! It claims due workflows of the kinds in its [`Registry`] in small
//! batches (`FOR UPDATE SKIP LOCKED`, a fresh fencing token each), and for
//! each one, while it holds the lease: delivers the inbox's events in
//! order to the kind's transition, fires a due timer, or runs the pending
//! step (renewing the lease meanwhile) and feeds its outcome to the
//! transition; records each transition under the fencing token. A step
//! that leads to another one due at once runs on the same claim (up to
//! [`RunnerConfig::steps_per_claim`]), without a round trip through the
//! queue. It wakes on `NOTIFY navette_workflows` (from any controller), on
//! a slot freed, at the earliest timer (read again at least every 250 ms,
//! so a timer fires at most that late), and at least every
//! [`RunnerConfig::poll`].
//!
//! A runner that loses its lease (its renewal fails, or another controller
//! claimed the workflow after the lease expired) stops the step if it can,
//! records nothing, and says so in its log and [`RunnerStats`]. A crash
//! mid-step leaves the lease to expire; the next claimant runs the step
//! again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use tokio::sync::{Notify, Semaphore, broadcast};

use super::audit::{self, NewEntry, What};
use super::store::{self, Claimed, PointOfNoReturn, Record};
use super::{
    CHANNEL, End, ErasedKind, Event, Next, Registry, StepContext, StoredStep, StoredTransition,
    WorkflowId, check_next,
};
use crate::db::Change;
use crate::error::Result;

/// How long the runner trusts its reading of the earliest timer: a timer
/// set meanwhile (by any controller) fires at most this late.
const NEXT_DUE_REFRESH: Duration = Duration::from_millis(250);

/// How a runner behaves.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// How long a claim is ours without renewal.
    pub lease: Duration,
    /// How often a running step renews its lease.
    pub renew_every: Duration,
    /// Workflows driven at once by this runner.
    pub concurrency: usize,
    /// Most workflows claimed by one query.
    pub claim_batch: usize,
    /// The safety net: claim at least this often, notification or not.
    pub poll: Duration,
    /// Most steps run one after the other on one claim.
    pub steps_per_claim: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        RunnerConfig {
            lease: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            concurrency: 16,
            claim_batch: 8,
            poll: Duration::from_secs(2),
            steps_per_claim: 32,
        }
    }
}

/// What a runner did, for tests, benchmarks and metrics.
#[derive(Debug, Default)]
pub struct RunnerStats {
    pub claims: AtomicU64,
    pub steps_recorded: AtomicU64,
    /// Results not recorded because the lease had been taken over.
    pub fenced_out: AtomicU64,
}

impl RunnerStats {
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// A runner over the kinds of a [`Registry`].
pub struct Runner {
    pool: Pool,
    registry: Arc<Registry>,
    owner: String,
    config: RunnerConfig,
    stats: Arc<RunnerStats>,
}

impl std::fmt::Debug for Runner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runner")
            .field("owner", &self.owner)
            .field("kinds", &self.registry)
            .finish_non_exhaustive()
    }
}

impl Runner {
    /// A runner named `owner` in leases (unique among the controllers
    /// sharing the database).
    pub fn new(pool: Pool, registry: Registry, owner: String, config: RunnerConfig) -> Runner {
        Runner {
            pool,
            registry: Arc::new(registry),
            owner,
            config,
            stats: Arc::new(RunnerStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<RunnerStats> {
        self.stats.clone()
    }

    /// Runs until the process ends, woken by `changes` (a broadcast of
    /// `navette_workflows`: `db::listen`). A runner with no kinds does
    /// nothing.
    pub fn spawn(self, changes: &broadcast::Sender<Change>) -> Arc<RunnerStats> {
        let stats = self.stats.clone();
        let changes = changes.subscribe();
        if self.registry.is_empty() {
            tracing::info!(message = "workflow engine: no kinds registered; runner idle");
            return stats;
        }
        tokio::spawn(Arc::new(self).run(changes));
        stats
    }

    async fn run(self: Arc<Self>, mut changes: broadcast::Receiver<Change>) {
        let kinds = self.registry.names();
        let slots = Arc::new(Semaphore::new(self.config.concurrency.max(1)));
        let freed = Arc::new(Notify::new());
        tracing::info!(message = "workflow runner started", owner = %self.owner, kinds = ?kinds);
        let mut next_due: Option<(Instant, Instant)> = None;
        loop {
            let free = slots
                .available_permits()
                .min(self.config.claim_batch.max(1));
            let mut full_batch = false;
            if free > 0 {
                match self.claim(&kinds, free).await {
                    Ok(claimed) => {
                        full_batch = claimed.len() == free;
                        for workflow in claimed {
                            let Ok(permit) = slots.clone().try_acquire_owned() else {
                                break;
                            };
                            let (runner, freed) = (self.clone(), freed.clone());
                            tokio::spawn(async move {
                                runner.drive(workflow).await;
                                drop(permit);
                                freed.notify_one();
                            });
                        }
                    }
                    Err(error) => {
                        tracing::warn!(message = "claiming workflows failed; retrying", %error);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            if full_batch && slots.available_permits() > 0 {
                continue;
            }
            let wait = if slots.available_permits() == 0 {
                self.config.poll
            } else {
                // The earliest timer or lease expiry, read again at most
                // every NEXT_DUE_REFRESH: every notification wakes every
                // runner, and one query per wake-up is enough.
                if next_due.is_none_or(|(read_at, _)| read_at.elapsed() >= NEXT_DUE_REFRESH) {
                    next_due = Some((
                        Instant::now(),
                        Instant::now() + self.until_next_due(&kinds).await,
                    ));
                }
                next_due
                    .map(|(_, at)| at.saturating_duration_since(Instant::now()))
                    .unwrap_or(self.config.poll)
                    .max(Duration::from_millis(5))
            };
            tokio::select! {
                _ = wait_for_workflow_change(&mut changes) => {}
                _ = freed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn claim(&self, kinds: &[String], limit: usize) -> Result<Vec<Claimed>> {
        let client = self.pool.get().await?;
        let limit = i64::try_from(limit).unwrap_or(1);
        let claimed = store::claim(&client, &self.owner, kinds, self.config.lease, limit).await?;
        self.stats
            .claims
            .fetch_add(claimed.len() as u64, Ordering::Relaxed);
        Ok(claimed)
    }

    async fn until_next_due(&self, kinds: &[String]) -> Duration {
        let next = async {
            let client = self.pool.get().await?;
            store::next_due_in(&**client, kinds).await
        }
        .await;
        match next {
            Ok(Some(due)) => due.clamp(Duration::from_millis(5), self.config.poll),
            Ok(None) => self.config.poll,
            Err(error) => {
                tracing::warn!(message = "reading the next due workflow failed", %error);
                self.config.poll
            }
        }
    }

    /// Everything this claim of `workflow` does, in a span naming it.
    async fn drive(&self, workflow: Claimed) {
        use tracing::Instrument;
        let span =
            tracing::info_span!("workflow", workflow_id = %workflow.id, kind = %workflow.kind);
        self.drive_in_span(workflow).instrument(span).await;
    }

    async fn drive_in_span(&self, claimed: Claimed) {
        let Some(kind) = self.registry.get(&claimed.kind) else {
            // Claims are filtered by kind: only a registry change in flight.
            self.release(&claimed.id, claimed.fencing).await;
            return;
        };
        let mut current = Current::from(claimed);
        let mut steps = 0;
        loop {
            let progress = if current.has_events {
                self.deliver_events(&*kind, &mut current).await
            } else if current.timer_due {
                current.timer_due = false;
                let transition = kind.on_event(&current.state, Event::Timer);
                let entry = NewEntry::new(What::Event, &self.owner, "timer fired");
                self.apply(&mut current, transition, Vec::new(), vec![entry], None)
                    .await
            } else if let Some(step) = current.step.clone() {
                if steps >= self.config.steps_per_claim {
                    break;
                }
                steps += 1;
                self.run_step(&*kind, &mut current, &step).await
            } else {
                break;
            };
            match progress {
                Progress::Continue => {}
                Progress::Released => return,
                Progress::LeaseLost => {
                    self.stats.fenced_out.fetch_add(1, Ordering::Relaxed);
                    crate::metrics::lease_lost(&current.kind);
                    tracing::warn!(
                        message = "the lease was taken over (expired, claimed by another controller): nothing recorded; the new holder runs the step"
                    );
                    return;
                }
                Progress::Failed => return,
            }
        }
        self.release(&current.id, current.fencing).await;
    }

    async fn release(&self, id: &WorkflowId, fencing: i64) {
        let result = async {
            let client = self.pool.get().await?;
            store::release(&**client, id, &self.owner, fencing).await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(message = "freeing a workflow lease failed; it expires by itself", %error);
        }
    }

    /// Delivers the inbox's events, oldest first, and records the result.
    async fn deliver_events(&self, kind: &dyn ErasedKind, current: &mut Current) -> Progress {
        let events = match async {
            let client = self.pool.get().await?;
            store::pending_events(&**client, &current.id).await
        }
        .await
        {
            Ok(events) => events,
            Err(error) => {
                tracing::warn!(message = "reading a workflow's inbox failed", %error);
                self.release(&current.id, current.fencing).await;
                return Progress::Failed;
            }
        };
        if events.is_empty() {
            current.has_events = false;
            return Progress::Continue;
        }
        let mut consumed = Vec::new();
        let mut audit_entries = Vec::new();
        let mut requested = None;
        let mut state = current.state.clone();
        let mut last: Option<Result<StoredTransition, String>> = None;
        let mut children = Vec::new();
        for stored in events {
            consumed.push(stored.id);
            let ended = matches!(
                last,
                Some(Ok(StoredTransition {
                    next: Next::Done(_),
                    ..
                }))
            );
            let mut detail = audit::event_text(&stored.event, &stored.sender);
            if ended || matches!(last, Some(Err(_))) {
                detail.push_str(" (not delivered: the workflow has ended)");
            } else if stored.event == Event::Cancel && current.point_of_no_return_passed {
                detail.push_str(" (not delivered: past the point of no return)");
            } else {
                if matches!(stored.event, Event::Command { .. }) {
                    requested = Some((stored.sender.clone(), stored.received_at));
                }
                let transition = kind.on_event(&state, stored.event);
                if let Ok(transition) = &transition {
                    state = transition.state.clone();
                    children.extend(transition.children.iter().cloned());
                }
                last = Some(transition);
            }
            audit_entries.push(NewEntry::new(What::Event, &self.owner, detail));
        }
        let Some(transition) = last else {
            // Every event was refused: record that they were consumed.
            let unchanged = StoredTransition {
                state: current.state.clone(),
                next: current.pending_next(),
                children: Vec::new(),
            };
            return self
                .apply(current, Ok(unchanged), consumed, audit_entries, None)
                .await;
        };
        let transition = transition.map(|mut t| {
            t.children = children;
            t
        });
        self.apply(current, transition, consumed, audit_entries, requested)
            .await
    }

    /// Runs `step` under a renewed lease, then records the transition its
    /// outcome leads to.
    async fn run_step(
        &self,
        kind: &dyn ErasedKind,
        current: &mut Current,
        step: &serde_json::Value,
    ) -> Progress {
        let flags = match kind.step(step) {
            Ok(flags) => flags,
            Err(error) => {
                return self
                    .apply(current, Err(error), Vec::new(), Vec::new(), None)
                    .await;
            }
        };
        if flags.point_of_no_return && !current.point_of_no_return_passed {
            let passed = async {
                let client = self.pool.get().await?;
                store::pass_point_of_no_return(
                    &**client,
                    &current.id,
                    &self.owner,
                    current.fencing,
                    step,
                )
                .await
            }
            .await;
            match passed {
                Ok(PointOfNoReturn::Passed) => {
                    tracing::info!(message = "point of no return passed", step = %step);
                    current.point_of_no_return_passed = true;
                }
                Ok(PointOfNoReturn::CancelWaiting) => {
                    current.has_events = true;
                    return Progress::Continue;
                }
                Ok(PointOfNoReturn::LeaseLost) => return Progress::LeaseLost,
                Err(error) => {
                    tracing::warn!(message = "recording the point of no return failed", %error);
                    self.release(&current.id, current.fencing).await;
                    return Progress::Failed;
                }
            }
        }
        // This run counts: a retry of the same step records one more.
        current.attempts = current.attempts.saturating_add(1);
        let attempt = u32::try_from(current.attempts).unwrap_or(1);
        let (cancel_sender, cancel_requested) = tokio::sync::watch::channel(false);
        let context = StepContext {
            workflow_id: current.id.clone(),
            attempt,
            controller_id: self.owner.clone(),
            cancel_requested,
        };
        let started_at = Utc::now();
        let began = std::time::Instant::now();
        let passed = current.point_of_no_return_passed;
        let outcome = tokio::select! {
            outcome = kind.perform(&current.state, step, &context) => Some(outcome),
            () = self.keep_lease(&current.id, current.fencing, &cancel_sender, passed) => None,
        };
        let Some(outcome) = outcome else {
            return Progress::LeaseLost;
        };
        let (outcome_text, failed, transition) = match outcome {
            Ok(performed) => (
                performed.outcome,
                performed.failed,
                Ok(performed.transition),
            ),
            Err(error) => (error.clone(), true, Err(error)),
        };
        crate::metrics::step_finished(&current.kind, step_label(step), began.elapsed(), !failed);
        let entry = NewEntry {
            what: if flags.compensates {
                What::Compensation
            } else {
                What::Step
            },
            step: Some(step.clone()),
            who: self.owner.clone(),
            detail: outcome_text,
            due_at: Some(current.due_at),
            started_at: Some(started_at),
        };
        let progress = self
            .apply(current, transition, Vec::new(), vec![entry], None)
            .await;
        if matches!(progress, Progress::Continue | Progress::Released) {
            self.stats.steps_recorded.fetch_add(1, Ordering::Relaxed);
        }
        progress
    }

    /// Renews the lease every `renew_every`; returns only when it is lost.
    /// A cancel waiting in the inbox (before the point of no return) is
    /// passed to the step through `cancel`.
    async fn keep_lease(
        &self,
        id: &WorkflowId,
        fencing: i64,
        cancel: &tokio::sync::watch::Sender<bool>,
        point_of_no_return_passed: bool,
    ) {
        loop {
            tokio::time::sleep(self.config.renew_every).await;
            let renewed = async {
                let client = self.pool.get().await?;
                store::renew(&**client, id, &self.owner, fencing, self.config.lease).await
            }
            .await;
            match renewed {
                Ok(Some(cancel_waiting)) => {
                    if cancel_waiting && !point_of_no_return_passed {
                        let _ = cancel.send(true);
                    }
                }
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(message = "renewing a workflow lease failed; retrying", %error)
                }
            }
        }
    }

    /// Records `transition` (or, if the kind could not decide, the
    /// workflow's failure) under the fencing token, and updates `current`.
    async fn apply(
        &self,
        current: &mut Current,
        transition: Result<StoredTransition, String>,
        consumed: Vec<i64>,
        mut audit_entries: Vec<NewEntry>,
        requested: Option<(String, DateTime<Utc>)>,
    ) -> Progress {
        let transition = match transition {
            Ok(transition) => match check_next(current.point_of_no_return_passed, &transition.next)
            {
                Ok(()) => transition,
                Err(refusal) => failed(&current.state, refusal.to_string()),
            },
            Err(error) => failed(&current.state, error),
        };
        let (step, run_in, timer, end, keep) = match &transition.next {
            Next::Run(step) => (Some(step), Some(Duration::ZERO), false, None, true),
            Next::RunAfter(step, delay) => (Some(step), Some(*delay), false, None, false),
            Next::Wait => (None, None, false, None, false),
            Next::WaitFor(delay) => (None, Some(*delay), true, None, false),
            Next::WaitUntil(_) => (None, None, true, None, false),
            Next::Done(end) => (None, None, false, Some(end), false),
        };
        let run_at = match &transition.next {
            Next::WaitUntil(at) => Some(*at),
            _ => None,
        };
        if let Some(end) = end {
            audit_entries.push(NewEntry::new(What::Done, &self.owner, audit::end_text(end)));
        }
        let children: Vec<_> = transition
            .children
            .iter()
            .map(|child| (WorkflowId::generate(child.kind), child.clone()))
            .collect();
        let step_value = step.map(|s| s.value.clone());
        let attempts = match (&step_value, &current.step) {
            (Some(next), Some(previous)) if next == previous => current.attempts,
            _ => 0,
        };
        let record = Record {
            id: &current.id,
            owner: &self.owner,
            fencing: current.fencing,
            state: &transition.state,
            step: step_value.as_ref(),
            attempts,
            run_in,
            run_at,
            timer,
            end,
            keep_lease: keep.then_some(self.config.lease),
            consumed: &consumed,
            requested: requested.as_ref().map(|(who, at)| (who.as_str(), *at)),
            audit: &audit_entries,
            children: &children,
        };
        let projection = self
            .registry
            .get(&current.kind)
            .filter(|kind| kind.projects());
        let recorded = async {
            let mut client = self.pool.get().await?;
            store::record_projected(&mut client, &record, projection.as_deref()).await
        }
        .await;
        match recorded {
            Ok(Some(recorded)) => {
                current.state = transition.state;
                current.step = step_value;
                current.attempts = attempts;
                current.has_events = recorded.has_events;
                // The record armed the timer again (or cleared it): a timer
                // due at the claim is this transition's to decide now.
                current.timer_due = false;
                current.due_at = Utc::now();
                if keep {
                    Progress::Continue
                } else {
                    Progress::Released
                }
            }
            Ok(None) => Progress::LeaseLost,
            Err(error) => {
                tracing::warn!(message = "recording a workflow transition failed; the step runs again", %error);
                Progress::Failed
            }
        }
    }
}

/// The failure a transition turns into when the kind cannot decide (an
/// unreadable state) or asks for something the engine refuses.
fn failed(state: &serde_json::Value, why: String) -> StoredTransition {
    tracing::error!(message = "workflow failed by the engine", %why);
    StoredTransition {
        state: state.clone(),
        next: Next::Done(End::Failed(why)),
        children: Vec::new(),
    }
}

/// What a claim knows of its workflow as it goes.
/// A step's name for the metrics: the variant of a kind's step enum
/// (`"copy"`, or the one key of `{"copy": {...}}`), never its data, so that
/// labels stay few.
fn step_label(step: &serde_json::Value) -> &str {
    match step {
        serde_json::Value::String(name) => name,
        serde_json::Value::Object(fields) if fields.len() == 1 => {
            fields.keys().next().map_or("step", String::as_str)
        }
        _ => "step",
    }
}

struct Current {
    id: WorkflowId,
    /// The kind's name, for the metrics.
    kind: String,
    fencing: i64,
    state: serde_json::Value,
    step: Option<serde_json::Value>,
    attempts: i32,
    due_at: DateTime<Utc>,
    timer_due: bool,
    point_of_no_return_passed: bool,
    has_events: bool,
}

impl From<Claimed> for Current {
    fn from(claimed: Claimed) -> Current {
        Current {
            id: claimed.id,
            kind: claimed.kind,
            fencing: claimed.fencing,
            state: claimed.state,
            step: claimed.step,
            attempts: claimed.attempts,
            due_at: claimed.due_at,
            timer_due: claimed.timer_due,
            point_of_no_return_passed: claimed.point_of_no_return_passed,
            has_events: claimed.has_events,
        }
    }
}

impl Current {
    /// What the workflow was going to do before its events were refused.
    fn pending_next(&self) -> Next<StoredStep> {
        match &self.step {
            Some(step) => Next::RunAfter(
                StoredStep {
                    value: step.clone(),
                    point_of_no_return: false,
                    compensates: false,
                },
                Duration::ZERO,
            ),
            None => Next::Wait,
        }
    }
}

/// What a claim does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Progress {
    /// Recorded; the lease is still ours.
    Continue,
    /// Recorded; the lease was freed.
    Released,
    /// Another runner holds the workflow now: nothing was recorded.
    LeaseLost,
    /// The database failed us; the lease expires and the work is redone.
    Failed,
}

/// Returns on a workflow notification, or when notifications may have
/// been missed (lagging, reconnection).
async fn wait_for_workflow_change(changes: &mut broadcast::Receiver<Change>) {
    loop {
        match changes.recv().await {
            Ok(Change::Notified { channel, .. }) if channel == CHANNEL => return,
            Ok(Change::Notified { .. }) => {}
            Ok(Change::Resynchronise) | Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => {
                // No notifications any more: the poll alone wakes us.
                std::future::pending::<()>().await;
            }
        }
    }
}
