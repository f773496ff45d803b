//! How long a copy waits out an outage of what it copies from, and how it
//! says so while it waits.
//!
//! The rule, for files and databases alike: a *transient* failure (the
//! source's agent or one of its database servers cannot be reached, a
//! session was cut, the server is shutting down or starting up) is tried
//! again until the outage has lasted [`OUTAGE_BOUND`], counted from its
//! first failure; then the copy fails, saying what it could not reach and
//! for how long. A routine restart of a server (seconds) is waited out; a
//! host that stays down fails the copy in two minutes, and the controller
//! decides what follows. An attempt that reaches the source again ends the
//! outage: a later failure starts a new one. A refusal (not transient) is
//! never tried again.
//!
//! Database copies pause 1, 2, 4, then every 5 seconds between attempts
//! ([`Outages`]), and reach the source again when a new snapshot is held.
//! File copies (`files::pull`), which resume where they stopped, start at
//! 250 ms, also pause at most 5 seconds, and count their outage from their
//! last headway (bytes or files received). While a database copy waits,
//! its progress carries a [`TransferWaiting`] (what, the last error, since
//! when, until when) and the log says the same; a file copy says so in
//! the log only, for now.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use navette_proto::v1::TransferWaiting;

use super::progress::Progress;
use crate::gateway::Backoff;

/// How long a copy waits for a source that cannot be reached before it
/// fails. The same for files and databases.
pub const OUTAGE_BOUND: Duration = Duration::from_secs(120);
/// The first pause of a database copy after a transient failure; pauses
/// double up to [`LONGEST_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// The longest pause between two attempts.
pub const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// An outage being waited out.
#[derive(Debug)]
struct Outage {
    /// What cannot be reached, in words.
    what: String,
    since: Instant,
    since_at: DateTime<Utc>,
    backoff: Backoff,
    /// Failed attempts since it began.
    failures: u32,
}

/// The copy waited as long as the rule allows; it fails.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GaveUp {
    /// What could not be reached.
    pub what: String,
    /// How long the outage lasted.
    pub lasted: Duration,
    /// The bound it exceeded.
    pub bound: Duration,
}

/// The outages of one copy, one at a time, reported to its progress.
#[derive(Debug)]
pub struct Outages<'a> {
    progress: &'a Progress,
    transfer_id: String,
    bound: Duration,
    current: Option<Outage>,
    /// How many times [`Outages::reached`] was called.
    reaches: u32,
}

impl<'a> Outages<'a> {
    /// Outages of the copy that reports to `progress`, each waited out
    /// for at most `bound` (normally [`OUTAGE_BOUND`]).
    pub fn new(progress: &'a Progress, transfer_id: &str, bound: Duration) -> Outages<'a> {
        Outages {
            progress,
            transfer_id: transfer_id.to_owned(),
            bound,
            current: None,
            reaches: 0,
        }
    }

    /// The copy reached its source again: the outage, if any, is over.
    pub fn reached(&mut self) {
        self.reaches += 1;
        if let Some(outage) = self.current.take() {
            tracing::info!(
                message = "the copy reaches its source again",
                transfer = %self.transfer_id,
                waited_for = %outage.what,
                failures = outage.failures,
                seconds = outage.since.elapsed().as_secs_f64()
            );
            self.progress.set_waiting(None);
        }
    }

    /// How many times the copy reached its source: a caller that starts
    /// over compares it before and after an attempt.
    pub fn reaches(&self) -> u32 {
        self.reaches
    }

    /// An attempt failed on a transient `error` reaching `what`: waits
    /// before the next attempt, saying so in the progress and the log, or
    /// gives up when the outage has lasted longer than the bound.
    pub async fn wait(&mut self, what: &str, error: &str) -> Result<(), GaveUp> {
        let pause = self.next_pause(what, error, Instant::now())?;
        tokio::time::sleep(pause).await;
        Ok(())
    }

    /// [`Outages::wait`] without the sleep, at `now`: the pause before the
    /// next attempt.
    fn next_pause(&mut self, what: &str, error: &str, now: Instant) -> Result<Duration, GaveUp> {
        let outage = self.current.get_or_insert_with(|| Outage {
            what: what.to_owned(),
            since: now,
            since_at: Utc::now(),
            backoff: Backoff::new(FIRST_PAUSE, LONGEST_PAUSE),
            failures: 0,
        });
        outage.what = what.to_owned();
        outage.failures += 1;
        let lasted = now.saturating_duration_since(outage.since);
        let left = self.bound.saturating_sub(lasted);
        if left.is_zero() {
            tracing::warn!(
                message = "giving up: the source stayed unreachable too long",
                transfer = %self.transfer_id,
                waiting_for = %outage.what,
                since = %outage.since_at.to_rfc3339(),
                seconds = lasted.as_secs_f64(),
                bound_seconds = self.bound.as_secs(),
                failures = outage.failures,
                error
            );
            let gave_up = GaveUp {
                what: outage.what.clone(),
                lasted,
                bound: self.bound,
            };
            self.current = None;
            self.progress.set_waiting(None);
            return Err(gave_up);
        }
        let pause = outage.backoff.next_pause().min(left);
        let until_at = until(outage.since_at, self.bound);
        tracing::warn!(
            message = "the copy cannot reach its source; waiting and trying again",
            transfer = %self.transfer_id,
            waiting_for = %outage.what,
            since = %outage.since_at.to_rfc3339(),
            until = %until_at.to_rfc3339(),
            retry_in_ms = u64::try_from(pause.as_millis()).unwrap_or(u64::MAX),
            failures = outage.failures,
            error
        );
        self.progress.set_waiting(Some(TransferWaiting {
            what: outage.what.clone(),
            error: error.to_owned(),
            since: Some(navette_proto::timestamp(outage.since_at)),
            until: Some(navette_proto::timestamp(until_at)),
        }));
        Ok(pause)
    }
}

/// When an outage that began at `since` stops being waited out.
fn until(since: DateTime<Utc>, bound: Duration) -> DateTime<Utc> {
    since + chrono::Duration::from_std(bound).unwrap_or(chrono::Duration::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_five_seconds_and_the_bound_counts_from_the_first_failure() {
        let progress = Progress::new("t-1");
        let mut outages = Outages::new(&progress, "t-1", Duration::from_secs(20));
        let started = Instant::now();
        let mut now = started;
        let mut pauses = Vec::new();
        let gave_up = loop {
            match outages.next_pause("source server main", "connection refused", now) {
                Ok(pause) => pauses.push(pause.as_secs()),
                Err(gave_up) => break gave_up,
            }
            now += Duration::from_secs(*pauses.last().unwrap_or(&0));
            let waiting = progress.snapshot().waiting.expect("waiting while it waits");
            assert_eq!(waiting.what, "source server main");
            assert_eq!(waiting.error, "connection refused");
            let (since, until) = (waiting.since.expect("since"), waiting.until.expect("until"));
            assert_eq!(until.seconds - since.seconds, 20);
        };
        // 1 + 2 + 4 + 5 + 5 = 17, then the 3 s left, then the bound.
        assert_eq!(pauses, vec![1, 2, 4, 5, 5, 3]);
        assert_eq!(now - started, Duration::from_secs(20));
        assert_eq!(gave_up.lasted, Duration::from_secs(20));
        assert_eq!(gave_up.what, "source server main");
        assert!(progress.snapshot().waiting.is_none());
    }

    #[test]
    fn reaching_the_source_ends_the_outage() {
        let progress = Progress::new("t-1");
        let mut outages = Outages::new(&progress, "t-1", Duration::from_secs(10));
        let mut now = Instant::now();
        for _ in 0..3 {
            now += outages
                .next_pause("source", "refused", now)
                .expect("within the bound");
        }
        outages.reached();
        assert_eq!(outages.reaches(), 1);
        assert!(progress.snapshot().waiting.is_none());
        // 7 s later, a new outage has its own 10 s and starts with a short
        // pause again.
        let pause = outages
            .next_pause("source", "refused", now)
            .expect("a new outage");
        assert_eq!(pause, Duration::from_secs(1));
        now += Duration::from_secs(9);
        assert!(outages.next_pause("source", "refused", now).is_ok());
        now += Duration::from_secs(1);
        assert!(outages.next_pause("source", "refused", now).is_err());
    }
}
