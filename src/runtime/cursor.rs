//! Where a producer's claims start reading the queue.
//!
//! A claim reads each kind's runnable jobs in claim order (`priority, run_at, id`) from the
//! claim index. Reading from the head every time gives the strict order, and costs nothing as
//! long as the entries of claimed jobs go away: a scan marks an entry dead once no snapshot can
//! see its row version, and vacuum removes it. While a long transaction pins the xmin horizon,
//! neither can happen, and a scan from the head visits the heap for every job claimed since
//! that transaction began before it reaches one it may take: at 10,000 jobs a second, 600,000
//! visits per claim after a minute. Claims then slow down until the worker falls behind.
//!
//! So the producer remembers, per kind, the [`Position`] of the last job it claimed, and most
//! claims read from there on. Jobs that sort before a position (a job of a higher priority
//! enqueued meanwhile, a batch whose transaction committed after later ones, a retry promoted
//! with its original `run_at`, rows another claimer locked and let go) are found by a claim
//! from the head. The producer claims from the head whenever that is cheap: unless the last
//! claim from the head cost more than twice a claim from the positions, every claim is one,
//! and the order is the strict one. When it did cost more, the next claim from the head waits
//! [`HEAD_SPACING`] times the difference, so claims from the head take about a tenth of the
//! producer's time whatever the horizon does, and a job before a position waits that long
//! (seconds while the horizon stays pinned for minutes). A claim from the positions that comes
//! back short is followed by one from the head as soon as that is due, not at the next poll.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::db::job::{Claimed, Position};

/// How many times longer than its extra cost a claim from the head waits before the next.
pub(crate) const HEAD_SPACING: u32 = 10;

/// One producer's positions and what its claims cost.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// Per kind, the last job claimed of it.
    positions: HashMap<String, Position>,
    /// When the last claim from the head was sent.
    head_at: Option<Instant>,
    /// How long the last claim from the head took.
    head_cost: Duration,
    /// How long the last claim from the positions took.
    position_cost: Duration,
}

impl Cursor {
    /// Whether the claim sent at `now` reads from the head of every kind.
    pub(crate) fn reads_head(&self, now: Instant) -> bool {
        self.positions.is_empty() || self.head_due_in(now).is_zero()
    }

    /// How long after `now` the next claim from the head is due: zero when it is.
    pub(crate) fn head_due_in(&self, now: Instant) -> Duration {
        let Some(head_at) = self.head_at else {
            return Duration::ZERO;
        };
        let extra = self.head_cost.saturating_sub(self.position_cost * 2);
        (extra * HEAD_SPACING).saturating_sub(now.saturating_duration_since(head_at))
    }

    /// Where each of `kinds` is read from: `None` for the head.
    pub(crate) fn after(&self, kinds: &[String], from_head: bool) -> Vec<Option<Position>> {
        kinds
            .iter()
            .map(|kind| {
                (!from_head)
                    .then(|| self.positions.get(kind).copied())
                    .flatten()
            })
            .collect()
    }

    /// Records a claim sent at `sent` that took `cost` and returned `jobs` (none when it failed).
    pub(crate) fn record(
        &mut self,
        from_head: bool,
        sent: Instant,
        cost: Duration,
        jobs: &[Claimed],
    ) {
        if from_head {
            self.head_at = Some(sent);
            self.head_cost = cost;
        } else {
            self.position_cost = cost;
        }
        // A kind's claimed jobs are the first of its scan, so the greatest is where the next
        // scan starts. After a claim from the head it may lie before the old position: jobs
        // between the two may still wait, and are read again.
        let mut last: HashMap<&str, Position> = HashMap::new();
        for job in jobs {
            if let Some(position) = Position::of(job) {
                last.entry(&job.kind)
                    .and_modify(|last| *last = (*last).max(position))
                    .or_insert(position);
            }
        }
        for (kind, position) in last {
            self.positions.insert(kind.to_owned(), position);
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    use super::*;

    fn job(kind: &str, priority: i16, second: i64, id: i64) -> Claimed {
        Claimed {
            id,
            kind: kind.to_owned(),
            queue: "default".to_owned(),
            args: "{}".to_owned(),
            priority,
            attempt: 1,
            max_attempts: 25,
            created_at: None,
            tags: Vec::new(),
            lease_token: 1,
            timeout_secs: None,
            traceparent: None,
            pickup_lag_secs: 0.0,
            run_at: Utc.timestamp_opt(second, 0).single(),
            cut_by_bytes: false,
        }
    }

    fn position(priority: i16, second: i64, id: i64) -> Option<Position> {
        Some(Position {
            priority,
            run_at: Utc.timestamp_opt(second, 0).single()?,
            id,
        })
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn reads_from_the_last_job_claimed_of_each_kind() {
        let kinds = ["a".to_owned(), "b".to_owned(), "c".to_owned()];
        let mut cursor = Cursor::default();
        let start = Instant::now();
        assert!(cursor.reads_head(start));
        assert_eq!(cursor.after(&kinds, true), [None, None, None]);
        let jobs = [
            job("a", 0, 10, 7),
            job("b", 1, 5, 3),
            job("a", 0, 12, 2),
            job("a", 0, 12, 1),
        ];
        cursor.record(true, start, MS, &jobs);
        // Claim order is priority, run_at, id: (0, 12, 2) is a's last; c has none.
        let expected = [position(0, 12, 2), position(1, 5, 3), None];
        assert_eq!(cursor.after(&kinds, false), expected);
        assert_eq!(cursor.after(&kinds, true), [None, None, None]);
        // A claim from the head that found an earlier job of `a` moves its position back.
        cursor.record(true, start, MS, &[job("a", -5, 1, 99)]);
        assert_eq!(cursor.after(&kinds, false)[0], position(-5, 1, 99));
        // A job whose run_at did not decode leaves its kind where it was.
        let mut odd = job("b", 0, 0, 1);
        odd.run_at = None;
        cursor.record(false, start, MS, &[odd]);
        assert_eq!(cursor.after(&kinds, false)[1], position(1, 5, 3));
    }

    #[test]
    fn claims_from_the_head_while_that_is_cheap() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        cursor.record(true, start, 3 * MS, &[job("a", 0, 10, 1)]);
        // No claim from the positions measured yet: one comes next, to compare.
        assert!(!cursor.reads_head(start + 10 * MS));
        cursor.record(false, start + 10 * MS, 2 * MS, &[]);
        // 3 ms against 2 ms: no dearer than twice, so every claim reads from the head.
        assert!(cursor.reads_head(start + 10 * MS));
        assert!(cursor.reads_head(start + 11 * MS));
    }

    #[test]
    fn spaces_out_dear_claims_from_the_head() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        // A pinned horizon: the head costs 2 s, a position 5 ms.
        cursor.record(true, start, Duration::from_secs(2), &[job("a", 0, 10, 1)]);
        cursor.record(false, start + Duration::from_secs(2), 5 * MS, &[]);
        // The next claim from the head waits ten times the 1,990 ms extra.
        assert!(!cursor.reads_head(start + Duration::from_secs(19)));
        let due_in = cursor.head_due_in(start + Duration::from_secs(19));
        assert_eq!(due_in, Duration::from_millis(900));
        assert!(cursor.reads_head(start + Duration::from_millis(19_900)));
        // Once the head is cheap again (the horizon moved), so are claims from it.
        cursor.record(true, start + Duration::from_secs(20), 4 * MS, &[]);
        assert!(cursor.reads_head(start + Duration::from_secs(20)));
    }
}
