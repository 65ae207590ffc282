//! The completer: records the outcomes of finished attempts, many per statement.
//!
//! Executors send outcomes over a bounded channel (when it is full they wait, which holds their
//! slot and so slows claiming: backpressure). The completer writes whatever has accumulated in
//! ONE fenced `UPDATE … FROM unnest(…)`: when it is idle an outcome is written at once, and while
//! a write is in flight the next batch builds up, so batches grow with load without a timer
//! adding latency. A failed write is retried with backoff for up to [`RETRY_FOR`]: a pool
//! hiccup or a database restart delays completions, it does not lose them.

use std::time::Duration;

use std::sync::Arc;

use serde_json::Value;
use sqlx::pool::PoolConnection;
use sqlx::{PgPool, Postgres};
use tokio::sync::mpsc;

use super::running::RunningAttempts;
use super::stats::OutcomeStats;
use crate::metrics::WorkerMetrics;
use crate::{ErrorKind, JobState, db};

/// The most outcomes written by one statement.
pub(crate) const DEFAULT_MAX_BATCH: usize = 2_000;

/// How long a failed write is retried before the batch is given up (its jobs then stay
/// `running` until their lease expires and they are rescued).
pub(crate) const RETRY_FOR: Duration = Duration::from_secs(120);

/// How long the completer keeps its connection without outcomes to write.
const KEEP_IDLE: Duration = Duration::from_secs(1);

/// The longest the completer keeps one checkout, busy or not: the pool then sees the
/// connection again (its `max_lifetime`, a credential change the worker follows).
const KEEP_AT_MOST: Duration = Duration::from_secs(60);

/// The first retry delay of a failed write; it doubles up to [`MAX_RETRY_DELAY`].
const FIRST_RETRY_DELAY: Duration = Duration::from_millis(50);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(5);

/// The end of one attempt, fenced by its lease token.
#[derive(Debug)]
pub(crate) struct Completion {
    pub(crate) id: i64,
    pub(crate) lease_token: i64,
    pub(crate) outcome: Outcome,
}

/// How an attempt ended.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Success, with the handler's output.
    Completed(Value),
    /// Run again after `after` (`Duration::ZERO`: straight back to `available`).
    Retry {
        error_kind: ErrorKind,
        message: String,
        after: Duration,
    },
    /// Finished for good.
    Failed {
        error_kind: ErrorKind,
        message: String,
    },
    /// Cancelled while running.
    Cancelled {
        error_kind: ErrorKind,
        message: String,
    },
    /// Stopped by a worker shutdown: straight back to `available`, attempt given back.
    Interrupted {
        error_kind: ErrorKind,
        message: String,
    },
    /// Run again after `after`, attempt given back, no error recorded.
    Snoozed { after: Duration },
}

/// Configuration of the [`Completer`].
#[derive(Clone, Debug)]
pub(crate) struct CompleterConfig {
    /// The most outcomes per statement. Default: [`DEFAULT_MAX_BATCH`].
    pub(crate) max_batch: usize,
    /// How long one write may take before it counts as failed (and is retried): the worker's
    /// `db_timeout`. Default: [`DEFAULT_DB_TIMEOUT`](super::DEFAULT_DB_TIMEOUT).
    pub(crate) timeout: Duration,
}

impl Default for CompleterConfig {
    fn default() -> Self {
        Self {
            max_batch: DEFAULT_MAX_BATCH,
            timeout: super::DEFAULT_DB_TIMEOUT,
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
    /// The connection kept between writes while outcomes keep coming, and when it was taken;
    /// given back to the pool after [`KEEP_IDLE`] without outcomes or [`KEEP_AT_MOST`] after it
    /// was taken. A checkout per write would cost a round trip more (sqlx pings a connection it
    /// takes back), and the next checkout would often find the last connection not yet back
    /// and open another: busy workers held three for one completer.
    conn: Option<(PoolConnection<Postgres>, tokio::time::Instant)>,
    config: CompleterConfig,
    receiver: mpsc::Receiver<Completion>,
    /// Attempts are unregistered (their leases no longer renewed) once their outcome is written.
    running: Arc<RunningAttempts>,
    /// Where recorded outcomes are counted, for `skiplock.job_stats`.
    stats: Arc<OutcomeStats>,
    metrics: Option<Arc<WorkerMetrics>>,
}

impl Completer {
    pub(crate) fn new(
        pool: PgPool,
        config: CompleterConfig,
        receiver: mpsc::Receiver<Completion>,
        running: Arc<RunningAttempts>,
        stats: Arc<OutcomeStats>,
    ) -> Self {
        Self {
            pool,
            conn: None,
            config,
            receiver,
            running,
            stats,
            metrics: None,
        }
    }

    /// Counts batch sizes and write times in `metrics` (`skiplock_completion_...`).
    pub(crate) fn with_metrics(mut self, metrics: Option<Arc<WorkerMetrics>>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records outcomes until every sender is gone and the channel is drained. A batch whose
    /// write panics is counted in `health` and let go: its attempts are unregistered, so their
    /// leases lapse and the rescuer runs the jobs again; the completer goes on with the next.
    pub(crate) async fn run(mut self, health: super::service::RoleMonitor) {
        use futures_util::FutureExt as _;
        let mut batch = Vec::with_capacity(self.config.max_batch);
        while self.receive(&mut batch).await > 0 {
            let attempts: Vec<(i64, i64)> = batch.iter().map(|c| (c.id, c.lease_token)).collect();
            let flush = std::panic::AssertUnwindSafe(self.flush(&mut batch));
            if flush.catch_unwind().await.is_ok() {
                health.succeeded();
                continue;
            }
            // Perhaps mid-statement: closed, not given back.
            if let Some((mut conn, _)) = self.conn.take() {
                conn.close_on_drop();
            }
            batch.clear();
            health.failed("panicked while recording outcomes".to_owned(), true);
            tracing::error!(job.ids = ?attempts.iter().map(|(id, _)| id).collect::<Vec<_>>(), "panicked while recording outcomes; their jobs run again once their leases lapse");
            for (id, lease_token) in attempts {
                self.running.remove(id, lease_token);
            }
        }
        tracing::debug!("completer finished");
    }

    /// Waits for the next outcomes (at most one batch); 0 once every sender is gone. The kept
    /// connection goes back to the pool after [`KEEP_IDLE`] without any.
    async fn receive(&mut self, batch: &mut Vec<Completion>) -> usize {
        let max = self.config.max_batch;
        if self
            .conn
            .as_ref()
            .is_some_and(|(_, taken)| taken.elapsed() >= KEEP_AT_MOST)
        {
            self.conn = None;
        }
        if self.conn.is_some() {
            match tokio::time::timeout(KEEP_IDLE, self.receiver.recv_many(batch, max)).await {
                Ok(received) => return received,
                Err(_) => self.conn = None,
            }
        }
        self.receiver.recv_many(batch, max).await
    }

    /// Writes what is waiting in the channel now (at most one batch); for tests.
    #[cfg(test)]
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

    /// Writes `batch` (draining it). A batch the database refuses for its data (one outcome it
    /// cannot store must not hold back the others) is written row by row; a row that still
    /// cannot be stored is recorded as failed with kind `unrecordable_outcome`.
    async fn flush(&mut self, batch: &mut Vec<Completion>) -> CompleterReport {
        let outcomes = to_columns(batch.drain(..));
        let started = self.metrics.as_ref().map(|_| tokio::time::Instant::now());
        let report = self.write_all(&outcomes).await;
        if let (Some(metrics), Some(started)) = (&self.metrics, started) {
            metrics.completed_batch(outcomes.len(), started.elapsed());
        }
        for (id, lease_token) in outcomes.ids.iter().zip(&outcomes.lease_tokens) {
            self.running.remove(*id, *lease_token);
        }
        report
    }

    async fn write_all(&mut self, outcomes: &db::job::Outcomes) -> CompleterReport {
        match self.write(outcomes).await {
            Ok(report) => report,
            Err(error) if db::is_data_error(&error) && outcomes.len() > 1 => {
                tracing::warn!(%error, "a batch of outcomes was refused; writing them one by one");
                let mut report = CompleterReport::default();
                for i in 0..outcomes.len() {
                    let one = outcomes.row(i);
                    let written = match self.write(&one).await {
                        Err(error) if is_unique_violation(&error) => {
                            self.write(&one.superseded()).await
                        }
                        Err(error) if db::is_data_error(&error) => {
                            self.write(&one.unrecordable(&error)).await
                        }
                        other => other,
                    };
                    let written = written.unwrap_or_default();
                    report.recorded += written.recorded;
                    report.stale += written.stale;
                }
                report
            }
            Err(error) if is_unique_violation(&error) => {
                let written = self.write(&outcomes.superseded()).await;
                written.unwrap_or_default()
            }
            Err(error) if db::is_data_error(&error) => {
                let written = self.write(&outcomes.unrecordable(&error)).await;
                written.unwrap_or_default()
            }
            Err(_) => CompleterReport::default(),
        }
    }

    /// Writes `outcomes` in one statement, retrying connection-level failures for up to
    /// [`RETRY_FOR`]; a data error is returned at once, for [`flush`](Self::flush) to split.
    async fn write(
        &mut self,
        outcomes: &db::job::Outcomes,
    ) -> Result<CompleterReport, sqlx::Error> {
        let started = tokio::time::Instant::now();
        let mut delay = FIRST_RETRY_DELAY;
        loop {
            // A client-side deadline too: a half-open connection never answers, and the
            // server's statement_timeout cannot help with that.
            let limit = self.config.timeout;
            let (pool, kept) = (&self.pool, &mut self.conn);
            let write = async {
                let (conn, _) = match kept {
                    Some(kept) => kept,
                    None => kept.insert((pool.acquire().await?, tokio::time::Instant::now())),
                };
                db::job::complete_many(&mut **conn, outcomes).await
            };
            let written = tokio::time::timeout(limit, write)
                .await
                .unwrap_or_else(|_| {
                    let timeout = std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no answer within {limit:?}"),
                    );
                    Err(sqlx::Error::Io(timeout))
                });
            if written
                .as_ref()
                .is_err_and(|error| !db::is_data_error(error))
            {
                // Timed out mid-statement or broken: never reused.
                if let Some((mut conn, _)) = self.conn.take() {
                    conn.close_on_drop();
                }
            }
            match written {
                Ok(recorded) => {
                    self.stats.add(&recorded);
                    let written: usize = recorded.iter().map(|group| group.ids.len()).sum();
                    let stale = outcomes.len().saturating_sub(written);
                    // Which ones, only when some were refused: not on every batch.
                    if stale > 0 {
                        let changed: std::collections::HashSet<i64> = recorded
                            .iter()
                            .flat_map(|group| group.ids.iter().copied())
                            .collect();
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
                    return Ok(CompleterReport {
                        recorded: written,
                        stale,
                    });
                }
                Err(error) if db::is_data_error(&error) => return Err(error),
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
                        "could not record job outcomes; giving up (their leases expire and the rescuer takes them back)"
                    );
                    return Err(error);
                }
            }
        }
    }
}

/// A unique job going back to a state it is unique in while a duplicate holds its key.
fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|error| error.is_unique_violation())
}

/// The longest delay stored: about 31 years, far below what `make_interval` can hold.
const MAX_DELAY_SECS: f64 = 1e9;

fn to_columns(batch: impl Iterator<Item = Completion>) -> db::job::Outcomes {
    let mut columns = db::job::Outcomes::default();
    for completion in batch {
        let (state, result, error, after, give_back) = match completion.outcome {
            Outcome::Completed(output) => (
                JobState::Completed,
                Some(output),
                None,
                Duration::ZERO,
                false,
            ),
            Outcome::Retry {
                error_kind,
                message,
                after,
            } => {
                let state = if after.is_zero() {
                    JobState::Available
                } else {
                    JobState::Retryable
                };
                (state, None, Some((error_kind, message)), after, false)
            }
            Outcome::Failed {
                error_kind,
                message,
            } => (
                JobState::Failed,
                None,
                Some((error_kind, message)),
                Duration::ZERO,
                false,
            ),
            Outcome::Cancelled {
                error_kind,
                message,
            } => (
                JobState::Cancelled,
                None,
                Some((error_kind, message)),
                Duration::ZERO,
                false,
            ),
            Outcome::Interrupted {
                error_kind,
                message,
            } => (
                JobState::Available,
                None,
                Some((error_kind, message)),
                Duration::ZERO,
                true,
            ),
            Outcome::Snoozed { after } => {
                let state = if after.is_zero() {
                    JobState::Available
                } else {
                    JobState::Scheduled
                };
                (state, None, None, after, true)
            }
        };
        let (error_kind, message) = error.unzip();
        columns.ids.push(completion.id);
        columns.lease_tokens.push(completion.lease_token);
        columns.states.push(state);
        columns.results.push(result);
        columns
            .error_kinds
            .push(error_kind.map(|kind| kind.as_str().to_owned()));
        // PostgreSQL text cannot hold NUL characters.
        columns
            .error_messages
            .push(message.map(|message| message.replace('\0', "\\0")));
        columns
            .retry_in_secs
            .push(after.as_secs_f64().min(MAX_DELAY_SECS));
        columns.give_back.push(give_back);
    }
    columns
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{EnqueueOptions, NewJob};
    use skiplock_testing::TestDatabase;

    /// Claims `n` new jobs; returns their (id, lease token).
    async fn claimed(db: &TestDatabase, n: usize) -> Vec<(i64, i64)> {
        let jobs = (0..n).map(|_| NewJob::untyped("k", json!({}), EnqueueOptions::new()));
        crate::enqueue_many(db.pool(), jobs).await.expect("enqueue");
        let kinds = ["k".to_owned()];
        let scans = db::job::Scans {
            kinds: &kinds,
            after: &[None],
        };
        let claimed = db::job::claim(db.pool(), "default", n as i64, "w", 60.0, scans, i64::MAX)
            .await
            .expect("claim");
        claimed
            .into_iter()
            .map(|job| (job.id, job.lease_token))
            .collect()
    }

    fn completer(db: &TestDatabase) -> (mpsc::Sender<Completion>, Completer) {
        let (sender, receiver) = mpsc::channel(8);
        let config = CompleterConfig::default();
        let running = Arc::default();
        (
            sender,
            Completer::new(db.pool().clone(), config, receiver, running, Arc::default()),
        )
    }

    async fn row(db: &TestDatabase, id: i64) -> crate::JobRow {
        crate::get_job(db.pool(), id)
            .await
            .expect("get")
            .expect("row")
    }

    #[tokio::test]
    async fn records_every_outcome_in_one_batch() {
        let db = TestDatabase::new().await.expect("database");
        let jobs = claimed(&db, 5).await;
        let (sender, mut completer) = completer(&db);
        let outcomes = [
            Outcome::Completed(json!({"ok": true})),
            Outcome::Retry {
                error_kind: ErrorKind::Error,
                message: "try later".into(),
                after: Duration::from_secs(60),
            },
            Outcome::Failed {
                error_kind: ErrorKind::Permanent,
                message: "no".into(),
            },
            Outcome::Interrupted {
                error_kind: ErrorKind::Interrupted,
                message: "shutdown".into(),
            },
            Outcome::Snoozed {
                after: Duration::from_secs(60),
            },
        ];
        for ((id, lease_token), outcome) in jobs.iter().zip(outcomes) {
            let completion = Completion {
                id: *id,
                lease_token: *lease_token,
                outcome,
            };
            sender.send(completion).await.expect("send");
        }

        let report = completer.run_once().await;
        assert_eq!(
            report,
            CompleterReport {
                recorded: 5,
                stale: 0
            }
        );
        let completed = row(&db, jobs[0].0).await;
        assert_eq!(completed.state, JobState::Completed);
        assert_eq!(completed.result, Some(json!({"ok": true})));
        let retryable = row(&db, jobs[1].0).await;
        assert_eq!(retryable.state, JobState::Retryable);
        assert!(retryable.run_at > retryable.attempted_at.expect("attempted"));
        assert_eq!(retryable.errors[0].message, "try later");
        assert_eq!(retryable.attempt, 1);
        assert_eq!(row(&db, jobs[2].0).await.state, JobState::Failed);
        // Interrupted and snoozed attempts give their attempt back.
        let interrupted = row(&db, jobs[3].0).await;
        assert_eq!(
            (interrupted.state, interrupted.attempt),
            (JobState::Available, 0)
        );
        assert_eq!(interrupted.errors[0].kind.as_str(), "interrupted");
        let snoozed = row(&db, jobs[4].0).await;
        assert_eq!((snoozed.state, snoozed.attempt), (JobState::Scheduled, 0));
        assert!(snoozed.errors.is_empty());
        for (id, _) in jobs {
            assert_eq!(row(&db, id).await.lease_expires_at, None);
        }
    }

    /// A cancel requested while the job ran, reaching the worker too late to stop it: an
    /// outcome that would put the job back (retry, interruption, snooze) records it cancelled
    /// instead, so that it never runs again; one that finishes it stands.
    #[tokio::test]
    async fn a_cancel_requested_while_running_makes_a_job_put_back_cancelled() {
        let db = TestDatabase::new().await.expect("database");
        let jobs = claimed(&db, 5).await;
        for (id, _) in &jobs {
            let state = crate::cancel(db.pool(), *id).await.expect("cancel");
            assert_eq!(state, Some(JobState::Running));
        }
        let (sender, mut completer) = completer(&db);
        let outcomes = [
            Outcome::Retry {
                error_kind: ErrorKind::Error,
                message: "try later".into(),
                after: Duration::ZERO,
            },
            Outcome::Interrupted {
                error_kind: ErrorKind::Interrupted,
                message: "shutdown".into(),
            },
            Outcome::Snoozed {
                after: Duration::ZERO,
            },
            Outcome::Completed(json!("done")),
            Outcome::Failed {
                error_kind: ErrorKind::Permanent,
                message: "no".into(),
            },
        ];
        for ((id, lease_token), outcome) in jobs.iter().zip(outcomes) {
            let completion = Completion {
                id: *id,
                lease_token: *lease_token,
                outcome,
            };
            sender.send(completion).await.expect("send");
        }
        assert_eq!(completer.run_once().await.recorded, 5);

        let mut put_back = Vec::new();
        for (id, _) in &jobs[..3] {
            let job = row(&db, *id).await;
            assert!(job.finished_at.is_some());
            let last = job.errors.last().expect("an error entry");
            put_back.push((job.state, job.attempt, last.kind.as_str().to_owned()));
        }
        let cancelled = (JobState::Cancelled, 1, "cancelled".to_owned());
        assert_eq!(put_back, [cancelled.clone(), cancelled.clone(), cancelled]);
        assert_eq!(row(&db, jobs[0].0).await.errors[0].message, "try later");
        assert_eq!(row(&db, jobs[3].0).await.state, JobState::Completed);
        assert_eq!(row(&db, jobs[4].0).await.state, JobState::Failed);
        let available: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM skiplock.jobs WHERE state NOT IN ('completed', 'failed', 'cancelled')",
        )
        .fetch_one(db.pool())
        .await
        .expect("count");
        assert_eq!(available, 0);
    }

    /// Outcomes arriving one at a time, each just after the last was written: one connection
    /// writes them all. (Checked out per write, the next checkout found the last connection
    /// still on its way back to the pool and opened another.)
    #[tokio::test]
    async fn a_busy_completer_keeps_one_connection() {
        let db = TestDatabase::new().await.expect("database");
        let jobs = claimed(&db, 30).await;
        let options = (*db.pool().connect_options()).clone();
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(5)
            .connect_lazy_with(options);
        let (sender, receiver) = mpsc::channel(8);
        let running = Arc::new(RunningAttempts::default());
        let completer = Completer::new(
            pool.clone(),
            CompleterConfig::default(),
            receiver,
            running.clone(),
            Arc::default(),
        );
        let health = crate::runtime::service::Monitor::default().role("completer");
        let task = tokio::spawn(completer.run(health));
        for (id, lease_token) in jobs {
            let completion = Completion {
                id,
                lease_token,
                outcome: Outcome::Completed(json!(null)),
            };
            sender.send(completion).await.expect("send");
            while row(&db, id).await.state == JobState::Running {
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(pool.size(), 1, "connections opened for 30 writes");
        drop(sender);
        task.await.expect("completer");
    }

    #[tokio::test]
    async fn refuses_outcomes_of_stale_leases() {
        let db = TestDatabase::new().await.expect("database");
        let (id, lease_token) = claimed(&db, 1).await[0];
        let (sender, mut completer) = completer(&db);
        // Another lease's outcome must not land; the current lease's must.
        let stale = Completion {
            id,
            lease_token: lease_token + 1,
            outcome: Outcome::Completed(json!(1)),
        };
        sender.send(stale).await.expect("send");
        let refused = CompleterReport {
            recorded: 0,
            stale: 1,
        };
        assert_eq!(completer.run_once().await, refused);
        assert_eq!(row(&db, id).await.state, JobState::Running);

        let current = Completion {
            id,
            lease_token,
            outcome: Outcome::Completed(json!(2)),
        };
        sender.send(current).await.expect("send");
        let recorded = CompleterReport {
            recorded: 1,
            stale: 0,
        };
        assert_eq!(completer.run_once().await, recorded);
        // A second outcome for the same lease (the job is no longer running) is refused too.
        let late = Completion {
            id,
            lease_token,
            outcome: Outcome::Completed(json!(3)),
        };
        sender.send(late).await.expect("send");
        assert_eq!(completer.run_once().await, refused);
        assert_eq!(row(&db, id).await.result, Some(json!(2)));
    }
}
