//! Progress of a transfer on the target: counters every pull updates, and
//! the snapshots `WatchTransfer` streams (with rate and ETA).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use navette_proto::v1::{TransferProgress, TransferState, TransferWaiting};

/// Counters of one transfer. Cheap to update from many tasks.
#[derive(Debug)]
pub struct Progress {
    transfer_id: String,
    started: Instant,
    pub bytes_total: AtomicU64,
    pub bytes_done: AtomicU64,
    pub bytes_sent: AtomicU64,
    pub files_total: AtomicU64,
    pub files_done: AtomicU64,
    pub files_unchanged: AtomicU64,
    pub tables_total: AtomicU64,
    pub tables_done: AtomicU64,
    phase: Mutex<String>,
    /// Where the copy of the home goes (reported to the controller).
    target_home: Mutex<String>,
    outcome: Mutex<Option<Result<(), String>>>,
    /// What the copy waits for while an outage lasts ([`super::outage`]).
    waiting: Mutex<Option<TransferWaiting>>,
    /// Where each database's copy was read, for a migration's replication
    /// to start there (`TransferProgress.snapshot_positions`).
    snapshot_positions: Mutex<BTreeMap<String, String>>,
    changed: tokio::sync::watch::Sender<u64>,
}

impl Progress {
    pub fn new(transfer_id: &str) -> Progress {
        Progress {
            transfer_id: transfer_id.to_owned(),
            started: Instant::now(),
            bytes_total: AtomicU64::new(0),
            bytes_done: AtomicU64::new(0),
            bytes_sent: AtomicU64::new(0),
            files_total: AtomicU64::new(0),
            files_done: AtomicU64::new(0),
            files_unchanged: AtomicU64::new(0),
            tables_total: AtomicU64::new(0),
            tables_done: AtomicU64::new(0),
            phase: Mutex::new(String::new()),
            target_home: Mutex::new(String::new()),
            outcome: Mutex::new(None),
            waiting: Mutex::new(None),
            snapshot_positions: Mutex::new(BTreeMap::new()),
            changed: tokio::sync::watch::channel(0).0,
        }
    }

    /// Adds to a counter and wakes watchers.
    pub fn add(&self, counter: &AtomicU64, amount: u64) {
        counter.fetch_add(amount, Ordering::Relaxed);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_phase(&self, phase: impl Into<String>) {
        *self.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase.into();
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn set_target_home(&self, home: impl Into<String>) {
        *self.target_home.lock().unwrap_or_else(|p| p.into_inner()) = home.into();
    }

    /// Says what the copy waits for (`None`: it is not waiting).
    pub fn set_waiting(&self, waiting: Option<TransferWaiting>) {
        *self.waiting.lock().unwrap_or_else(|p| p.into_inner()) = waiting;
        self.changed.send_modify(|n| *n += 1);
    }

    /// What the copy waits for now, if anything.
    pub fn waiting(&self) -> Option<TransferWaiting> {
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Records where the copy of `key` ("postgresql:shop") was read.
    pub fn set_snapshot_position(&self, key: String, position: String) {
        self.snapshot_positions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, position);
    }

    pub fn finish(&self, outcome: Result<(), String>) {
        *self.outcome.lock().unwrap_or_else(|p| p.into_inner()) = Some(outcome);
        self.changed.send_modify(|n| *n += 1);
    }

    pub fn is_finished(&self) -> bool {
        self.outcome
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Wakes when anything changes.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changed.subscribe()
    }

    pub fn snapshot(&self) -> TransferProgress {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (state, error) = match &*self.outcome.lock().unwrap_or_else(|p| p.into_inner()) {
            None => (TransferState::Running, String::new()),
            Some(Ok(())) => (TransferState::Succeeded, String::new()),
            Some(Err(error)) => (TransferState::Failed, error.clone()),
        };
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let done = load(&self.bytes_done);
        let total = load(&self.bytes_total);
        let rate = (done as f64 / elapsed) as u64;
        let eta = if rate > 0 && total > done {
            u32::try_from((total - done) / rate).unwrap_or(u32::MAX)
        } else {
            0
        };
        TransferProgress {
            transfer_id: self.transfer_id.clone(),
            state: state.into(),
            phase: self.phase.lock().unwrap_or_else(|p| p.into_inner()).clone(),
            bytes_total: total,
            bytes_done: done,
            files_total: load(&self.files_total),
            files_done: load(&self.files_done),
            tables_total: load(&self.tables_total),
            tables_done: load(&self.tables_done),
            bytes_sent: load(&self.bytes_sent),
            files_unchanged: load(&self.files_unchanged),
            bytes_per_second: rate,
            eta_seconds: eta,
            error,
            updated_at: Some(navette_proto::timestamp(chrono::Utc::now())),
            target_home: self
                .target_home
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            waiting: self
                .waiting
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            snapshot_positions: self
                .snapshot_positions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}
