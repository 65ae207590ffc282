//! The completer: records the outcomes of finished attempts, many per statement.
//!
//! Executors send outcomes over a bounded channel (when it is full they wait, which holds their
//! slot and so slows claiming: backpressure). The completer writes whatever has accumulated in
//! ONE fenced `UPDATE … FROM unnest(…)`: when it is idle an outcome is written at once, and while
//! a write is in flight the next batch builds up, so batches grow with load without a timer
//! adding latency. A failed write is retried with backoff for up to [`RETRY_FOR`]: a pool
//! hiccup or a database restart delays completions, it does not lose them.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::mpsc;

use crate::db;

/// The most outcomes written by one statement.
pub(crate) const DEFAULT_MAX_BATCH: usize = 2_000;

/// How long a failed write is retried before the batch is given up (its jobs then stay
/// `running` until their lease expires and they are rescued).
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(120);

/// The first retry delay of a failed write; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The end of one attempt, fenced by `(id, attempt)`.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) id: i64,
    pub(crate) attempt: i32,
    pub(crate) outcome: Outcome,
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Success, with the handler's output.
    Completed(Value),
    /// Run again after `after` (`Duration::ZERO`: straight back to `available`).
    Retry {
        error_kind: &'static str,
        message: String,
        after: Duration,
    },
    /// Finished for good.
    Failed {
        error_kind: &'static str,
        message: String,
    },
}

/// Configuration of the [`Completer`].
#[derive(Clone, Debug)]
pub(crate) struct CompleterConfig {
    /// The most outcomes per statement. Default: [`DEFAULT_MAX_BATCH`].
    pub(crate) max_batch: usize,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
        }
    }
}

/// What one flush did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct CompleterReport {
    /// Outcomes recorded.
    pub(crate) recorded: usize,
    /// Outcomes refused by the fence: the job was no longer running that attempt.
    pub(crate) stale: usize,
}

pub(crate) struct Completer {
    pool: PgPool,
    config: CompleterConfig,
    receiver: mpsc::Receiver<Completion>,
}

impl Completer {
    pub(crate) fn new(
        pool: PgPool,
        config: CompleterConfig,
        receiver: mpsc::Receiver<Completion>,
    ) -> Self {
        Self {
            pool,
            config,
            receiver,
        }
    }

    /// Records outcomes until every sender is gone and the channel is drained.
    pub(crate) async fn run(mut self) {
        let mut batch = Vec::with_capacity(self.config.max_batch);
        while self
            .receiver
            .recv_many(&mut batch, self.config.max_batch)
            .await
            > 0
        {
            self.flush(&mut batch).await;
        }
        tracing::debug!("completer finished");
    }

    /// Writes what is waiting in the channel now (at most one batch); for tests.
    #[cfg(all(test, feature = "embedded"))]
    pub(crate) async fn run_once(&mut self) -> CompleterReport {
        let mut batch = Vec::new();
        while batch.len() < self.config.max_batch {
            match self.receiver.try_recv() {
                Ok(completion) => batch.push(completion),
                Err(_) => break,
            }
        }
        self.flush(&mut batch).await
    }

    /// Writes `batch` (draining it), retrying failed writes for up to [`RETRY_FOR`].
    async fn flush(&self, batch: &mut Vec<Completion>) -> CompleterReport {
        let outcomes = to_columns(batch.drain(..));
        let started = tokio::time::Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            match db::job::complete_many(&self.pool, &outcomes).await {
                Ok(changed) => {
                    let stale = outcomes.len() - changed.len();
                    if stale > 0 {
                        let refused: Vec<i64> = outcomes
                            .ids
                            .iter()
                            .copied()
                            .filter(|id| !changed.contains(id))
                            .collect();
                        tracing::warn!(
                            job.ids = ?refused,
                            "outcomes refused: the jobs were no longer running these attempts"
                        );
                    }
                    return CompleterReport {
                        recorded: changed.len(),
                        stale,
                    };
                }
                Err(error) if started.elapsed() + delay <= RETRY_FOR => {
                    tracing::warn!(
                        %error,
                        jobs = outcomes.len(),
                        retry_in_ms = delay.as_millis() as u64,
                        "could not record job outcomes; retrying"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(MAX_RETRY_DELAY);
                }
                Err(error) => {
                    tracing::error!(
                        %error,
                        job.ids = ?outcomes.ids,
                        "could not record job outcomes; giving up (the jobs stay running until their lease expires)"
                    );
                    return CompleterReport::default();
                }
            }
        }
    }
}

fn to_columns(batch: impl Iterator<Item = Completion>) -> db::job::Outcomes {
    let mut columns = db::job::Outcomes::default();
    for completion in batch {
        let (state, result, error_kind, message, after) = match completion.outcome {
            Outcome::Completed(output) => ("completed", Some(output), None, None, 0.0),
            Outcome::Retry {
                error_kind,
                message,
                after,
            } => {
                let state = if after.is_zero() {
                    "available"
                } else {
                    "retryable"
                };
                let after = after.as_secs_f64();
                (state, None, Some(error_kind), Some(message), after)
            }
            Outcome::Failed {
                error_kind,
                message,
            } => ("failed", None, Some(error_kind), Some(message), 0.0),
        };
        columns.ids.push(completion.id);
        columns.attempts.push(completion.attempt);
        columns.states.push(state.to_owned());
        columns.results.push(result);
        columns.error_kinds.push(error_kind.map(str::to_owned));
        columns.error_messages.push(message);
        columns.retry_in_secs.push(after);
    }
    columns
}

#[cfg(all(test, feature = "embedded"))]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::testing::TestDatabase;
    use crate::{EnqueueOptions, JobState, NewJob};

    async fn claimed(db: &TestDatabase, n: usize) -> Vec<i64> {
        let jobs = (0..n).map(|_| NewJob::untyped("k", json!({}), EnqueueOptions::new()));
        crate::enqueue_many(db.pool(), jobs).await.expect("enqueue");
        let claimed = db::job::claim(db.pool(), "default", n as i64, "w", 60.0)
            .await
            .expect("claim");
        claimed.into_iter().map(|job| job.id).collect()
    }

    #[tokio::test]
    async fn records_every_outcome_in_one_batch() {
        let db = TestDatabase::new().await.expect("database");
        let ids = claimed(&db, 3).await;
        let (sender, receiver) = mpsc::channel(8);
        let mut completer = Completer::new(db.pool().clone(), CompleterConfig::default(), receiver);
        let outcomes = [
            Outcome::Completed(json!({"ok": true})),
            Outcome::Retry {
                error_kind: "error",
                message: "try later".into(),
                after: Duration::from_secs(60),
            },
            Outcome::Failed {
                error_kind: "permanent",
                message: "no".into(),
            },
        ];
        for (id, outcome) in ids.iter().zip(outcomes) {
            let completion = Completion {
                id: *id,
                attempt: 1,
                outcome,
            };
            sender.send(completion).await.expect("send");
        }

        let report = completer.run_once().await;
        assert_eq!(
            report,
            CompleterReport {
                recorded: 3,
                stale: 0
            }
        );
        let rows =
            futures_util::future::try_join_all(ids.iter().map(|id| crate::get_job(db.pool(), *id)))
                .await
                .expect("rows");
        let rows: Vec<_> = rows.into_iter().map(|row| row.expect("row")).collect();
        assert_eq!(rows[0].state, JobState::Completed);
        assert_eq!(rows[0].result, Some(json!({"ok": true})));
        assert_eq!(rows[1].state, JobState::Retryable);
        assert!(rows[1].run_at > rows[1].attempted_at.expect("attempted"));
        assert_eq!(rows[1].errors[0]["message"], json!("try later"));
        assert_eq!(rows[2].state, JobState::Failed);
        assert!(rows.iter().all(|row| row.lease_expires_at.is_none()));
    }

    #[tokio::test]
    async fn refuses_outcomes_of_stale_attempts() {
        let db = TestDatabase::new().await.expect("database");
        let ids = claimed(&db, 1).await;
        let (sender, receiver) = mpsc::channel(8);
        let mut completer = Completer::new(db.pool().clone(), CompleterConfig::default(), receiver);
        // Attempt 2 is not running, so its outcome must not land; attempt 1's must.
        let stale = Completion {
            id: ids[0],
            attempt: 2,
            outcome: Outcome::Completed(json!(1)),
        };
        sender.send(stale).await.expect("send");
        assert_eq!(
            completer.run_once().await,
            CompleterReport {
                recorded: 0,
                stale: 1
            }
        );
        let row = crate::get_job(db.pool(), ids[0])
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row.state, JobState::Running);

        let current = Completion {
            id: ids[0],
            attempt: 1,
            outcome: Outcome::Completed(json!(2)),
        };
        sender.send(current).await.expect("send");
        assert_eq!(
            completer.run_once().await,
            CompleterReport {
                recorded: 1,
                stale: 0
            }
        );
        // A second outcome for the same attempt (the job is no longer running) is refused too.
        let late = Completion {
            id: ids[0],
            attempt: 1,
            outcome: Outcome::Completed(json!(3)),
        };
        sender.send(late).await.expect("send");
        assert_eq!(
            completer.run_once().await,
            CompleterReport {
                recorded: 0,
                stale: 1
            }
        );
        let row = crate::get_job(db.pool(), ids[0])
            .await
            .expect("get")
            .expect("row");
        assert_eq!(row.result, Some(json!(2)));
    }
}
