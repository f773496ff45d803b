//! What one attempt at copying a database added to the transfer's
//! progress, so that a new attempt (after the snapshot was lost) can take
//! it back and count again from zero.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::transfer::progress::Progress;

/// Progress counters of one attempt, mirrored into the transfer's.
#[derive(Debug)]
pub struct Tally<'a> {
    progress: &'a Progress,
    bytes_done: AtomicU64,
    tables_done: AtomicU64,
}

impl<'a> Tally<'a> {
    pub fn new(progress: &'a Progress) -> Tally<'a> {
        Tally {
            progress,
            bytes_done: AtomicU64::new(0),
            tables_done: AtomicU64::new(0),
        }
    }

    /// Bytes that went over the network (counted once, even if the attempt
    /// is taken back: they were sent).
    pub fn sent(&self, bytes: u64) {
        self.progress.add(&self.progress.bytes_sent, bytes);
        crate::metrics::copied_bytes(crate::metrics::Engine::Postgresql, bytes);
    }

    /// Bytes of the database's size now copied.
    pub fn done(&self, bytes: u64) {
        self.bytes_done.fetch_add(bytes, Ordering::Relaxed);
        self.progress.add(&self.progress.bytes_done, bytes);
    }

    /// One more table copied (and checked).
    pub fn table_done(&self) {
        self.tables_done.fetch_add(1, Ordering::Relaxed);
        self.progress.add(&self.progress.tables_done, 1);
    }

    /// Takes back what this attempt counted as done.
    pub fn undo(&self) {
        let bytes = self.bytes_done.swap(0, Ordering::Relaxed);
        let tables = self.tables_done.swap(0, Ordering::Relaxed);
        self.progress.bytes_done.fetch_sub(bytes, Ordering::Relaxed);
        self.progress
            .tables_done
            .fetch_sub(tables, Ordering::Relaxed);
        self.progress.add(&self.progress.bytes_done, 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_taken_back_but_not_what_it_sent() {
        let progress = Progress::new("t-1");
        progress.add(&progress.bytes_done, 10);
        let tally = Tally::new(&progress);
        tally.sent(7);
        tally.done(5);
        tally.table_done();
        tally.undo();
        let now = progress.snapshot();
        assert_eq!(
            (now.bytes_done, now.tables_done, now.bytes_sent),
            (10, 0, 7)
        );
    }
}
