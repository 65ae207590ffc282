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
//! So the producer remembers, per kind, the [`Position`] of the last job it claimed, and a claim
//! may read from there on. Jobs that sort before a position (a job of a higher priority
//! enqueued meanwhile, a batch whose transaction committed after later ones, a retry, snoozed,
//! interrupted or rescued job that keeps its earlier `run_at`, rows another claimer locked and
//! let go) are found by a claim from the head.
//!
//! Which to make is decided by what they cost, per job claimed (a claim of none counts as one),
//! so that batch sizes do not confuse the comparison. A claim from the head is made whenever the
//! last one cost no more than [`TOLERANCE`] times a claim from the positions, which on a healthy
//! server is nearly always: the order is then the strict one, but for the one claim from the
//! positions made every [`REMEASURE`] to keep the comparison current (and at once after a claim
//! from the head that took far longer than the last from the positions: per job, a small claim
//! looks dear, see [`OUTGROWN`]). When the head costs more,
//! the next claim from it waits [`HEAD_SPACING`] times the extra cost of the last one, so that
//! claims from the head take about a tenth of the producer's time, and a job before a position
//! waits that long: seconds while the horizon stays pinned for minutes. A claim from the
//! positions that comes back short is followed by one from the head as soon as that is due,
//! not at the next poll.
//!
//! A claim that failed tells nothing about the positions, and is not counted against them. A
//! claim from the head that failed or timed out counts as that expensive: the next one waits
//! ten times as long, and claims from the positions go on meanwhile. While a horizon stays
//! pinned for hours, claims from the head may keep timing out; jobs before the positions then
//! wait until it moves.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::db::job::{Claimed, Position};

/// How many times longer than its extra cost a claim from the head waits before the next.
pub(crate) const HEAD_SPACING: u32 = 10;

/// How much dearer per job than a claim from the positions a claim from the head may be and
/// still be made every time: 1.25.
pub(crate) const TOLERANCE: f64 = 1.25;

/// Extra costs below this are noise: 1 ms.
const NOISE: Duration = Duration::from_millis(1);

/// How old the cost of a claim from the positions may be before one is made to measure it
/// again: 10 s.
pub(crate) const REMEASURE: Duration = Duration::from_secs(10);

/// A claim from the head that took more than this many times as long as the last claim from
/// the positions, and more than [`OUTGROWN_BY`] longer, has the positions measured again by
/// the next claim: 4.
const OUTGROWN: u32 = 4;

/// See [`OUTGROWN`]: 10 ms.
const OUTGROWN_BY: Duration = Duration::from_millis(10);

/// What one claim cost.
#[derive(Clone, Copy, Debug)]
struct Cost {
    /// When it was sent.
    at: Instant,
    /// How long it took.
    took: Duration,
    /// How many jobs it claimed, at least one.
    jobs: u32,
}

impl Cost {
    fn per_job(&self) -> f64 {
        self.took.as_secs_f64() / f64::from(self.jobs)
    }

    /// Whether this claim from the head, made after `position`, took so much longer that the
    /// per-job cost of `position` no longer tells whether the head is cheap.
    ///
    /// A claim's time is mostly the statement's own (a round trip, planning, the commit) when
    /// it claims few jobs, so a small claim from the positions looks dear per job: 3 jobs in
    /// 3 ms is 1 ms each, and a claim of 1,000 from the head that walks a pinned horizon's
    /// entries for 190 ms looks cheap beside it. Trusted until the next [`REMEASURE`], that
    /// one small claim kept every claim reading the head, each as slow, for 10 s: a quarter of
    /// the offered rate at 14,000 jobs/s. Measured again at once, the positions claim the
    /// jobs the slow claim left waiting, as many as the free slots allow: with many slots, a
    /// batch big enough to give a fair cost per job; with few, the measure stays flattering.
    fn outgrew(&self, position: &Cost) -> bool {
        self.at > position.at
            && self.took > position.took * OUTGROWN
            && self.took.saturating_sub(position.took) > OUTGROWN_BY
    }
}

/// One producer's positions and what its claims cost.
#[derive(Debug, Default)]
pub(crate) struct Cursor {
    /// Per kind, the last job claimed of it.
    positions: HashMap<String, Position>,
    /// The last claim from the head.
    head: Option<Cost>,
    /// The last claim from the positions that did not fail.
    position: Option<Cost>,
}

impl Cursor {
    /// Whether the claim sent at `now` reads from the head of every kind.
    pub(crate) fn reads_head(&self, now: Instant) -> bool {
        if self.positions.is_empty() {
            return true;
        }
        let measured = self.position.is_some_and(|position| {
            now.saturating_duration_since(position.at) < REMEASURE
                && !self.head.is_some_and(|head| head.outgrew(&position))
        });
        measured && self.head_due_in(now).is_zero()
    }

    /// How long after `now` the next claim from the head is due: zero when it is.
    pub(crate) fn head_due_in(&self, now: Instant) -> Duration {
        let Some(head) = self.head else {
            return Duration::ZERO;
        };
        let position = self.position.map_or(0.0, |position| position.per_job());
        let extra = (head.per_job() - TOLERANCE * position) * f64::from(head.jobs);
        // At most the claim's own duration; NaN and negatives count as nothing.
        let extra = Duration::from_secs_f64(extra.clamp(0.0, head.took.as_secs_f64()));
        if extra < NOISE {
            return Duration::ZERO;
        }
        (extra * HEAD_SPACING).saturating_sub(now.saturating_duration_since(head.at))
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

    /// Records a claim sent at `sent` that took `took` and returned `jobs`, or failed (`None`).
    pub(crate) fn record(
        &mut self,
        from_head: bool,
        sent: Instant,
        took: Duration,
        jobs: Option<&[Claimed]>,
    ) {
        let count = jobs.map_or(0, <[Claimed]>::len);
        let cost = Cost {
            at: sent,
            took,
            jobs: u32::try_from(count).unwrap_or(u32::MAX).max(1),
        };
        if from_head {
            self.head = Some(cost);
        } else if jobs.is_some() {
            self.position = Some(cost);
        }
        // A kind's claimed jobs are the first of its scan, so the greatest is where the next
        // scan starts. After a claim from the head it may lie before the old position: jobs
        // between the two may still wait, and are read again.
        let mut last: HashMap<&str, Position> = HashMap::new();
        for job in jobs.unwrap_or_default() {
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
        cursor.record(true, start, MS, Some(&jobs));
        // Claim order is priority, run_at, id: (0, 12, 2) is a's last; c has none.
        let expected = [position(0, 12, 2), position(1, 5, 3), None];
        assert_eq!(cursor.after(&kinds, false), expected);
        assert_eq!(cursor.after(&kinds, true), [None, None, None]);
        // A claim from the head that found an earlier job of `a` moves its position back.
        cursor.record(true, start, MS, Some(&[job("a", -5, 1, 99)]));
        assert_eq!(cursor.after(&kinds, false)[0], position(-5, 1, 99));
        // A job whose run_at did not decode leaves its kind where it was.
        let mut odd = job("b", 0, 0, 1);
        odd.run_at = None;
        cursor.record(false, start, MS, Some(&[odd]));
        assert_eq!(cursor.after(&kinds, false)[1], position(1, 5, 3));
    }

    fn jobs(n: i64) -> Vec<Claimed> {
        (1..=n).map(|id| job("a", 0, 10, id)).collect()
    }

    #[test]
    fn claims_from_the_head_while_that_is_cheap_per_job() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        cursor.record(true, start, 3 * MS, Some(&jobs(1)));
        // No claim from the positions measured yet: one comes next, to compare.
        assert!(!cursor.reads_head(start + 10 * MS));
        // An empty one, 2 ms.
        cursor.record(false, start + 10 * MS, 2 * MS, Some(&[]));
        // 3 ms against 2 ms: within the tolerance (plus noise), so every claim reads the head.
        assert!(cursor.reads_head(start + 10 * MS));
        // A big claim from the head (800 jobs, 40 ms) against a small one from the positions
        // (100 jobs, 5 ms): the same per job.
        cursor.record(true, start + 20 * MS, 40 * MS, Some(&jobs(800)));
        cursor.record(false, start + 60 * MS, 5 * MS, Some(&jobs(100)));
        assert!(cursor.reads_head(start + 70 * MS));
        // Ten seconds on, the cost of the positions is measured again.
        assert!(!cursor.reads_head(start + REMEASURE + 70 * MS));
    }

    #[test]
    fn spaces_out_dear_claims_from_the_head() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        // A pinned horizon: the head costs 80 ms for 800 jobs, the positions 40 ms for as many.
        // Batches of the same size: twice as dear is too dear.
        cursor.record(true, start, 80 * MS, Some(&jobs(800)));
        cursor.record(false, start + 80 * MS, 40 * MS, Some(&jobs(800)));
        // Extra: 80 - 1.25 * 40 = 30 ms; the next claim from the head waits 300 ms.
        assert!(!cursor.reads_head(start + 299 * MS));
        assert_eq!(cursor.head_due_in(start + 200 * MS), 100 * MS);
        assert!(cursor.reads_head(start + 300 * MS));
        // Once the head is cheap again (the horizon moved), so are claims from it.
        cursor.record(true, start + 300 * MS, 41 * MS, Some(&jobs(800)));
        assert!(cursor.reads_head(start + 341 * MS));
    }

    #[test]
    fn a_small_claim_from_the_positions_does_not_keep_a_dear_head_in_use() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        // A pinned horizon. The positions' last claim found 3 jobs (3 ms: 1 ms per job), the
        // head's 1,000 (190 ms: 0.19 ms per job), which looks cheap beside it.
        cursor.record(false, start, 3 * MS, Some(&jobs(3)));
        cursor.record(true, start + 10 * MS, 190 * MS, Some(&jobs(1000)));
        assert!(cursor.head_due_in(start + 200 * MS).is_zero());
        // But it took 63 times as long: the positions are measured again at once.
        assert!(!cursor.reads_head(start + 200 * MS));
        // With the jobs the slow claim left waiting: 1,000 in 20 ms. The head was 165 ms
        // dearer (190 - 1.25 * 20): its next claim comes ten times that after it, 1.65 s.
        cursor.record(false, start + 200 * MS, 20 * MS, Some(&jobs(1000)));
        assert!(!cursor.reads_head(start + 1_655 * MS));
        assert!(cursor.reads_head(start + 1_660 * MS));
        // A head claim only a little slower than a small one from the positions (4 ms against
        // 2 ms) or many times as slow but by less than 10 ms (9 ms against 1 ms) is trusted.
        let later = start + Duration::from_secs(2);
        cursor.record(false, later, 2 * MS, Some(&jobs(2)));
        cursor.record(true, later + 2 * MS, 4 * MS, Some(&jobs(200)));
        assert!(cursor.reads_head(later + 6 * MS));
        cursor.record(false, later + 6 * MS, MS, Some(&jobs(2)));
        cursor.record(true, later + 7 * MS, 9 * MS, Some(&jobs(200)));
        assert!(cursor.reads_head(later + 16 * MS));
    }

    #[test]
    fn failed_claims_do_not_stick() {
        let mut cursor = Cursor::default();
        let start = Instant::now();
        cursor.record(true, start, 3 * MS, Some(&jobs(10)));
        cursor.record(false, start + 5 * MS, 3 * MS, Some(&jobs(10)));
        // A claim from the positions that timed out after 10 s says nothing about them.
        cursor.record(false, start + 10 * MS, Duration::from_secs(10), None);
        assert!(cursor.reads_head(start + Duration::from_secs(1)));
        // A claim from the head that timed out counts as that dear: claims from the positions
        // go on for ten times as long.
        let failed_at = start + Duration::from_secs(1);
        cursor.record(true, failed_at, Duration::from_secs(10), None);
        cursor.record(
            false,
            failed_at + Duration::from_secs(10),
            3 * MS,
            Some(&jobs(10)),
        );
        assert!(!cursor.reads_head(failed_at + Duration::from_secs(11)));
        assert!(
            !cursor
                .head_due_in(failed_at + Duration::from_secs(99))
                .is_zero()
        );
        assert!(
            cursor
                .head_due_in(failed_at + Duration::from_secs(100))
                .is_zero()
        );
    }
}
