//! When a role that reads its index from positions reads all of it again.
//!
//! The rescuer and the pruner read only the part of their index past where they last stood:
//! while a long transaction pins the xmin horizon, every entry behind that position (a lease
//! given, a job deleted) stays in the index, and a read from its head visits the heap for
//! each. What a positioned read cannot see (a row locked at the time, one that changed behind
//! the position) waits for a read of the whole index, which comes now and then: every
//! `every`, or [`SPACING`] times as long as the last whole read took, whichever is longer, so
//! that a hold that makes them slow also makes them rare. A whole read that fails or times out
//! counts the same way, for as long as it ran: under a hold, one that ran into its 10-s step
//! timeout is not tried again before 100 s.

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
    /// When the whole read under way began; `None` once it finished or failed.
    began: Option<Instant>,
}

impl WholeReads {
    /// Whole reads at least `every` apart; the first is due at once.
    pub(crate) const fn new(every: Duration) -> Self {
        Self {
            every,
            due: None,
            began: None,
        }
    }

    /// Whether a round that begins at `now` reads the whole index.
    pub(crate) fn due(&self, now: Instant) -> bool {
        self.due.is_none_or(|due| now >= due)
    }

    /// Records that a whole read begins at `now`. Until it finishes or fails, the next is due
    /// `every` later, and the rounds in between read from positions.
    pub(crate) fn begins(&mut self, now: Instant) {
        self.began = Some(now);
        self.due = Some(now + self.every);
    }

    /// Records that a whole read which took `took` finished at `now`.
    pub(crate) fn finished(&mut self, now: Instant, took: Duration) {
        self.began = None;
        self.due = Some(now + self.every.max(took.saturating_mul(SPACING)));
    }

    /// Records that the whole read which began at `began` failed or timed out at `now`: the
    /// next is spaced as after one that finished, by how long it ran. Nothing changes when
    /// another whole read began since (a clone's, or one after a read cut off by a panic or a
    /// cancel, which nobody reports): that one's schedule stands.
    pub(crate) fn failed(&mut self, now: Instant, began: Instant) {
        if self.began == Some(began) {
            self.finished(now, now.saturating_duration_since(began));
        }
    }

    /// Records that the whole read which began at `began` read nothing because another
    /// reader held the lock that lets one run at a time: it is due again at once. Nothing
    /// changes when another whole read began since.
    pub(crate) fn locked_out(&mut self, began: Instant) {
        if self.began == Some(began) {
            self.began = None;
            self.due = Some(began);
        }
    }

    /// Makes the next round read the whole index (tests).
    #[cfg(test)]
    pub(crate) fn make_due(&mut self) {
        self.due = None;
    }

    /// Whether a whole read began and has not finished or failed (tests).
    #[cfg(test)]
    pub(crate) fn under_way(&self) -> bool {
        self.began.is_some()
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

        // One still under way, or cut off unreported: tried again `every` after it began.
        reads.begins(at(31));
        assert!(!reads.due(at(60)));
        assert!(reads.due(at(61)));

        // One that took 20 s: the next 200 s after it finished.
        reads.begins(at(61));
        reads.finished(at(81), Duration::from_secs(20));
        assert!(!reads.due(at(280)));
        assert!(reads.due(at(281)));

        // A failure reported late, for a read that finished, changes nothing.
        reads.failed(at(290), at(61));
        assert!(reads.due(at(281)));
    }

    #[test]
    fn one_that_fails_is_spaced_by_how_long_it_ran() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut reads = WholeReads::new(Duration::from_secs(30));
        reads.begins(at(0));
        reads.failed(at(10), at(0));
        assert!(!reads.due(at(109)));
        assert!(reads.due(at(110)));

        // A quick failure: `every` after it.
        reads.begins(at(110));
        reads.failed(at(111), at(110));
        assert!(!reads.due(at(140)));
        assert!(reads.due(at(141)));

        // A read cut off at 141 and never reported; one begun at 150 stands whatever a
        // failure of the first would say.
        reads.begins(at(141));
        reads.begins(at(150));
        reads.failed(at(200), at(141));
        assert!(!reads.due(at(179)));
        assert!(reads.due(at(180)));
    }

    #[test]
    fn one_locked_out_is_due_again_at_once() {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut reads = WholeReads::new(Duration::from_secs(30));
        reads.begins(at(0));
        reads.locked_out(at(0));
        assert!(!reads.under_way());
        assert!(reads.due(at(1)));

        // Reported for a read that is no longer the one under way: the later one stands.
        reads.begins(at(5));
        reads.locked_out(at(0));
        assert!(reads.under_way());
        assert!(!reads.due(at(34)));
        assert!(reads.due(at(35)));
    }
}
