//! The unrunnable-jobs watch: warns about jobs that no worker can run.
//!
//! A job whose kind no worker of its queue has a handler for (a typo in a kind, a worker not
//! deployed yet, a kind retired while jobs of it still wait) is never claimed. It costs the
//! claim nothing (claims read only their own kinds' rows), so nothing else would ever say so.
//! Every `interval`, this role asks `skiplock.unrunnable_jobs(grace)` for available jobs waiting
//! longer than `grace` whose queue and kind no worker in `skiplock.workers` runs, and logs one
//! warning per queue and kind, for the queues this worker serves (each worker speaks for its
//! own queues, so a queue nobody serves is reported by nobody: no worker is there to log it).

use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::deadline::{DbCallError, deadline};
use crate::db;

/// How often the watch looks: 60 s.
pub(crate) const DEFAULT_UNRUNNABLE_INTERVAL: Duration = Duration::from_secs(60);

/// How long an available job must have been waiting before it counts as unrunnable: 60 s. A
/// job of a kind whose worker is still starting is not reported.
pub(crate) const DEFAULT_UNRUNNABLE_GRACE: Duration = Duration::from_secs(60);

/// Configuration of the [`Unrunnable`] watch.
#[derive(Clone, Debug)]
pub(crate) struct UnrunnableConfig {
    /// How often to look; also the least time between two warnings about one queue and kind.
    pub(crate) interval: Duration,
    /// How long a job must have been available to count.
    pub(crate) grace: Duration,
    /// The queues this worker serves: only their jobs are reported.
    pub(crate) queues: Vec<String>,
    /// The deadline of one look.
    pub(crate) timeout: Duration,
}

impl UnrunnableConfig {
    /// The defaults, for a worker serving `queues` with deadline `timeout`.
    pub(crate) fn new(queues: Vec<String>, timeout: Duration) -> Self {
        Self {
            interval: DEFAULT_UNRUNNABLE_INTERVAL,
            grace: DEFAULT_UNRUNNABLE_GRACE,
            queues,
            timeout,
        }
    }
}

/// Jobs of one queue and kind that nobody runs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UnrunnableKind {
    pub(crate) queue: String,
    pub(crate) kind: String,
    pub(crate) jobs: i64,
}

pub(crate) struct Unrunnable {
    pool: PgPool,
    config: UnrunnableConfig,
}

impl Unrunnable {
    pub(crate) fn new(pool: PgPool, config: UnrunnableConfig) -> Self {
        Self { pool, config }
    }

    /// Looks every interval until `stop` fires; the first look is one interval after the start,
    /// once this worker's heartbeat has recorded its kinds.
    pub(crate) async fn run(&self, stop: CancellationToken) {
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(self.config.interval) => {}
            }
            if let Err(error) = self.run_once().await {
                tracing::warn!(%error, "could not look for jobs nobody can run; retrying");
            }
        }
    }

    /// Looks once and warns about each queue and kind of this worker's queues that nobody runs.
    pub(crate) async fn run_once(&self) -> Result<Vec<UnrunnableKind>, DbCallError> {
        let found = deadline(
            self.config.timeout,
            db::job::unrunnable(&self.pool, self.config.grace.as_secs_f64()),
        )
        .await?;
        let mut report = Vec::new();
        for row in found {
            if !self.config.queues.contains(&row.queue) {
                continue;
            }
            tracing::warn!(
                queue = %row.queue,
                kind = %row.kind,
                jobs = row.jobs,
                oldest_run_at = %row.oldest_run_at,
                "jobs of kind {:?} wait in queue {:?}, but no worker runs that kind there",
                row.kind,
                row.queue,
            );
            report.push(UnrunnableKind {
                queue: row.queue,
                kind: row.kind,
                jobs: row.jobs,
            });
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiplock_testing::TestDatabase;

    #[tokio::test]
    async fn warns_about_its_own_queues_only() {
        let db = TestDatabase::new().await.expect("database");
        sqlx::raw_sql(
            "INSERT INTO skiplock.jobs (kind, queue, run_at)
             SELECT 'ghost', q, now() - interval '1 hour'
             FROM unnest(ARRAY['mine', 'mine', 'theirs']) AS q;
             INSERT INTO skiplock.workers (id, host, pid, queues, kinds)
             VALUES ('w', 'h', 1, '{mine}', '{record}');",
        )
        .execute(db.pool())
        .await
        .expect("fill");
        let config = UnrunnableConfig::new(vec!["mine".to_owned()], Duration::from_secs(10));
        let watch = Unrunnable::new(db.pool().clone(), config);
        let found = watch.run_once().await.expect("look");
        assert_eq!(
            found,
            [UnrunnableKind {
                queue: "mine".to_owned(),
                kind: "ghost".to_owned(),
                jobs: 2,
            }]
        );
    }
}
