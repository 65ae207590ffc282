//! Outcome counts for `skiplock.job_stats`: the completer adds each batch it records, the
//! heartbeat writes the sums every interval in a statement of its own.
//!
//! Never inside a completion: a stats row is shared by every worker of a queue and kind, and
//! updating it in each completion would serialize their completions on its lock.

use std::collections::HashMap;
use std::sync::Mutex;

use sqlx::PgExecutor;

use crate::db;

/// Counts by (queue, kind, outcome) since the last flush.
#[derive(Debug, Default)]
pub(crate) struct OutcomeStats {
    counts: Mutex<HashMap<(String, String, String), i64>>,
}

impl OutcomeStats {
    /// Adds what one completion statement recorded.
    pub(crate) fn add(&self, recorded: &[db::job::Recorded]) {
        let Ok(mut counts) = self.counts.lock() else {
            return;
        };
        for group in recorded {
            let key = (
                group.queue.clone(),
                group.kind.clone(),
                group.outcome.clone(),
            );
            *counts.entry(key).or_default() += group.ids.len() as i64;
        }
    }

    /// Writes the counts gathered so far; on failure they are kept for the next flush.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped while the statement runs, the counts it took may be lost.
    pub(crate) async fn flush<'e>(&self, executor: impl PgExecutor<'e>) -> Result<(), sqlx::Error> {
        let taken = match self.counts.lock() {
            Ok(mut counts) if !counts.is_empty() => std::mem::take(&mut *counts),
            _ => return Ok(()),
        };
        let mut columns: (Vec<String>, Vec<String>, Vec<String>, Vec<i64>) = Default::default();
        for ((queue, kind, outcome), jobs) in &taken {
            columns.0.push(queue.clone());
            columns.1.push(kind.clone());
            columns.2.push(outcome.clone());
            columns.3.push(*jobs);
        }
        let (queues, kinds, outcomes, jobs) = columns;
        let written = db::job::add_job_stats(executor, &queues, &kinds, &outcomes, &jobs).await;
        if written.is_err()
            && let Ok(mut counts) = self.counts.lock()
        {
            for (key, jobs) in taken {
                *counts.entry(key).or_default() += jobs;
            }
        }
        written
    }
}
