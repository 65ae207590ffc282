//! When a role that reads its index from positions reads all of it again.
//!
//! The rescuer and the pruner read only the part of their index past where they last stood:
//! while a long transaction pins the xmin horizon, every entry behind that position (a lease
//! given, a job deleted) stays in the index, and a read from its head visits the heap for
//! each. What a positioned read cannot see (a row locked at the time, one that changed behind
//! the position) waits for a read of the whole index, which comes now and then: every
//! `every`, or [`SPACING`] times as long as the last whole read took, whichever is longer, so
//! that a hold that makes them slow also makes them rare.

use std::time::Duration;

use tokio::time::Instant;

/// How many times as long as the last read of the whole index took the next one waits, at
/// least: 10.
pub(crate) const SPACING: u32 = 10;

/// When the next read of the whole index is due.
#[derive(Debug)]
pub(crate) struct WholeReads {
    every: Duration,
    due: Option<Instant>,
}

impl WholeReads {
    /// Whole reads at least `every` apart; the first is due at once.
    pub(crate) const fn new(every: Duration) -> Self {
        Self { every, due: None }
    }

    /// Whether a round that begins at `now` reads the whole index.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.due.is_none_or(|due| now >= due)
    }

    /// Records that a whole read begins at `now`: should it fail or time out, the next is
    /// tried `every` later, and the rounds in between read from positions.
    pub(crate) fn begins(&mut self, now: Instant) {
        self.due = Some(now + self.every);
    }

    /// Records that a whole read which took `took` finished at `now`.
    pub(crate) fn finished(&mut self, now: Instant, took: Duration) {
        self.due = Some(now + self.every.max(took.saturating_mul(SPACING)));
    }

    /// Makes the next round read the whole index (tests).
    #[cfg(test)]
    pub(crate) fn make_due(&mut self) {
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_every_or_spaced_by_the_last_one() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut reads = WholeReads::new(Duration::from_secs(30));
        assert!(reads.due(at(0)));
        reads.begins(at(0));
        reads.finished(at(1), Duration::from_secs(1));
        assert!(!reads.due(at(30)));
        assert!(reads.due(at(31)));

        // One that never finished: tried again `every` after it began.
        reads.begins(at(31));
        assert!(!reads.due(at(60)));
        assert!(reads.due(at(61)));

        // One that took 20 s: the next 200 s after it finished.
        reads.begins(at(61));
        reads.finished(at(81), Duration::from_secs(20));
        assert!(!reads.due(at(280)));
        assert!(reads.due(at(281)));
    }
}
