//! Working a full queue to empty: `skiplock bench drain`.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgConnection;

use super::probe::{KIND, Noop, Probe};
use super::{BenchConfig, BenchDatabase, BenchError, Progress, QUEUE, Report, cost, reporting};
use crate::db;
use crate::metrics::{Format, Metrics};
use crate::{Retention, Worker, WorkerHandle};

/// How often a drain with metrics encodes them, as a scrape would (Prometheus scrapes every
/// 15 s by default: this is the pessimistic end).
const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// The kind of filler rows, which no benchmark worker runs.
pub(super) const FILLER_KIND: &str = "bench_filler";

/// How long the completer may take to record the last outcomes once every handler has run.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A queue of `jobs` no-op jobs, inserted before the clock starts, worked to empty by
/// `workers` workers. Timed from the first claim to the last completion, both read from the
/// jobs table, so worker start-up is not counted.
#[derive(Clone, Debug)]
pub struct Drain {
    /// Jobs to drain. Default 100,000.
    pub jobs: u64,
    /// Workers (each with its own producer, completer and connections), all in this process.
    /// Default 1.
    pub workers: u32,
    /// Jobs each worker runs at once. Default 1,000: claims are sized to free slots, so this
    /// is also the largest claim.
    pub concurrency: usize,
    /// Jobs scheduled a day ahead, inserted first and left waiting: they must not slow the
    /// claim. Default 0.
    pub scheduled: u64,
    /// Completed jobs inserted first and retained: history must not slow the claim. Default 0.
    pub finished: u64,
    /// Available jobs of a kind no benchmark worker runs, inserted first into the same queue
    /// (so they sit at its head) and left waiting: they must not slow the claim. Default 0.
    pub foreign: u64,
    /// An open dashboard for the whole drain: its overview's live stream read as a browser tab
    /// would (the dashboard polls every [`LIVE_INTERVAL`](crate::web::LIVE_INTERVAL) on
    /// connections of its own). Default off.
    pub dashboard: bool,
    /// A cluster-wide concurrency limit ([`crate::limits`]) on the queue, set before the clock
    /// starts, so the drain goes through the limited claim. Default none.
    pub concurrency_limit: Option<u32>,
}

impl Default for Drain {
    fn default() -> Self {
        Self {
            jobs: 100_000,
            workers: 1,
            concurrency: 1_000,
            scheduled: 0,
            finished: 0,
            foreign: 0,
            dashboard: false,
            concurrency_limit: None,
        }
    }
}

impl Drain {
    pub(super) async fn run(
        &self,
        config: &BenchConfig,
        database: &BenchDatabase,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Report, BenchError> {
        if self.workers == 0 || self.concurrency == 0 || self.jobs == 0 {
            return Err(BenchError::Invalid(
                "jobs, workers and concurrency must be at least 1".into(),
            ));
        }
        let mut conn = database.connect().await?;
        let finished = self.fill(&mut conn, progress).await?;
        if let Some(limit) = self.concurrency_limit {
            crate::limits::set(
                &mut conn,
                &crate::limits::Limit::queue(QUEUE).max_running(limit),
            )
            .await
            .map_err(|error| match error {
                crate::limits::LimitError::Database(source) => BenchError::Database {
                    action: "set the concurrency limit",
                    source,
                },
                other => BenchError::Invalid(other.to_string()),
            })?;
        }
        let before = cost::Before::read(&mut conn).await?;

        let probe = Probe::counting();
        let pool = database.pool(2).await?;
        let metrics = config.metrics.then(Metrics::new);
        let workers = start_workers(
            config,
            &pool,
            &probe,
            self.concurrency,
            self.workers,
            metrics.as_ref(),
            None,
        )?;
        let dashboard = if self.dashboard {
            Some(open_dashboard(database.pool(2).await?).await?)
        } else {
            None
        };
        let total = self.jobs;
        let mut scrapes = 0_u64;
        let all_started = async {
            let (mut seen, mut since) = (0, tokio::time::Instant::now());
            let mut scraped = tokio::time::Instant::now();
            while probe.started() < total {
                if let Some(metrics) = &metrics
                    && scraped.elapsed() >= SCRAPE_EVERY
                {
                    scraped = tokio::time::Instant::now();
                    scrapes += 1;
                    metrics
                        .render(Format::Prometheus)
                        .await
                        .map_err(|error| BenchError::Incomplete(error.to_string()))?;
                }
                if probe.started() != seen {
                    (seen, since) = (probe.started(), tokio::time::Instant::now());
                } else if since.elapsed() > SETTLE_TIMEOUT {
                    return Err(BenchError::Incomplete(format!(
                        "{seen} of {total} jobs started; none for {SETTLE_TIMEOUT:?}"
                    )));
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(())
        };
        let started = reporting(
            "draining",
            Some(total),
            || probe.started(),
            progress,
            all_started,
        )
        .await;
        // Every handler ran; now wait for the database to say every job is completed.
        let completed = match started {
            Ok(()) => settle(&mut conn, total).await,
            Err(error) => Err(error),
        };
        let stopped = stop_all(workers).await;
        let events = dashboard.map(|(reader, pool)| {
            reader.abort();
            pool
        });
        if let Some(pool) = events {
            pool.close().await;
        }
        pool.close().await;
        let completed = completed?;
        stopped?;

        let seconds = match (completed.first_attempt, completed.last_finish) {
            (Some(first), Some(last)) => (last - first).as_seconds_f64(),
            _ => 0.0,
        };
        let report = Report::new("drain", completed.count as u64, seconds)
            .detail("workers", self.workers)
            .detail("concurrency", self.concurrency)
            .detail("scheduled", self.scheduled)
            .detail("finished", finished)
            .detail("foreign", self.foreign)
            .detail("scrapes", scrapes)
            .detail("dashboard", self.dashboard);
        before.finish(&mut conn, report).await
    }

    /// Inserts the jobs (and any filler) untimed, then vacuums and checkpoints so the timed part
    /// starts from a clean table. Returns how many completed jobs it put in.
    async fn fill(
        &self,
        conn: &mut PgConnection,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<u64, BenchError> {
        let action = "fill the queue";
        let to_i64 =
            |n: u64| i64::try_from(n).map_err(|_| BenchError::Invalid(format!("{n} is too many")));
        let (jobs, scheduled, finished, foreign) = (
            to_i64(self.jobs)?,
            to_i64(self.scheduled)?,
            to_i64(self.finished)?,
            to_i64(self.foreign)?,
        );
        let fill = async {
            let mut inserted = 0;
            if finished > 0 {
                inserted = db::bench::fill_completed(&mut *conn, FILLER_KIND, QUEUE, finished, 0.0)
                    .await?;
            }
            if scheduled > 0 {
                db::bench::fill_scheduled(&mut *conn, FILLER_KIND, QUEUE, scheduled).await?;
            }
            if foreign > 0 {
                db::bench::fill_available(&mut *conn, FILLER_KIND, QUEUE, foreign).await?;
            }
            db::bench::fill_available(&mut *conn, KIND, QUEUE, jobs).await?;
            db::bench::vacuum_jobs(&mut *conn).await?;
            Ok::<_, sqlx::Error>(inserted)
        };
        let total = self.jobs + self.scheduled + self.finished + self.foreign;
        let finished = reporting("filling", Some(total), || 0, progress, fill)
            .await
            .map_err(BenchError::database(action))?;
        if let Err(error) = db::bench::checkpoint(&mut *conn).await {
            tracing::info!(%error, "no CHECKPOINT before the timed part");
        }
        Ok(finished)
    }
}

/// Builds `count` benchmark workers on queue [`QUEUE`] (counting in `metrics`, if given), then
/// starts them all (so that none is left running when building another fails).
pub(super) fn start_workers(
    config: &BenchConfig,
    pool: &sqlx::PgPool,
    probe: &Arc<Probe>,
    concurrency: usize,
    count: u32,
    metrics: Option<&Metrics>,
    retention: Option<Duration>,
) -> Result<Vec<WorkerHandle>, BenchError> {
    let workers = (0..count)
        .map(|index| {
            let builder = Worker::builder(pool.clone(), probe.clone())
                .register::<Noop>()
                .queue(QUEUE, concurrency)
                .id(format!("bench-{}-{index}", std::process::id()))
                .synchronous_commit(!config.async_commit)
                .run_scheduler(false);
            let builder = match retention {
                Some(kept) => builder
                    .retention(Retention {
                        completed: Some(kept),
                        ..Retention::default()
                    })
                    .prune_interval(kept.clamp(Duration::from_secs(1), Duration::from_secs(30))),
                None => builder,
            };
            match metrics {
                Some(metrics) => builder.metrics(metrics),
                None => builder,
            }
            .build()
            .map_err(BenchError::Worker)
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(workers.into_iter().map(Worker::start).collect())
}

/// Shuts every worker down; the first failure is returned once all have stopped.
pub(super) async fn stop_all(workers: Vec<WorkerHandle>) -> Result<(), BenchError> {
    let mut outcome = Ok(());
    for worker in workers {
        if let Err(error) = worker.shutdown().await {
            outcome = outcome.and(Err(BenchError::WorkerFailed(error)));
        }
    }
    outcome
}

/// Waits until the table shows `total` completed benchmark jobs.
async fn settle(conn: &mut PgConnection, total: u64) -> Result<db::bench::Completed, BenchError> {
    let deadline = tokio::time::Instant::now() + SETTLE_TIMEOUT;
    loop {
        let completed = db::bench::completed(&mut *conn, KIND)
            .await
            .map_err(BenchError::database("count completed jobs"))?;
        if completed.count as u64 >= total {
            return Ok(completed);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(BenchError::Incomplete(format!(
                "{} of {total} jobs completed {SETTLE_TIMEOUT:?} after every handler ran",
                completed.count
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dashboard on `pool` with its overview stream open and read by a task (abort it to close
/// the stream).
async fn open_dashboard(
    pool: sqlx::PgPool,
) -> Result<(tokio::task::JoinHandle<()>, sqlx::PgPool), BenchError> {
    use futures_util::StreamExt as _;
    use tower::ServiceExt as _;

    let app = crate::web::Dashboard::new(pool.clone()).router();
    let request = axum::http::Request::get("/api/v1/events")
        .body(axum::body::Body::empty())
        .map_err(|error| BenchError::Invalid(error.to_string()))?;
    let response = app
        .oneshot(request)
        .await
        .map_err(|error| BenchError::Invalid(error.to_string()))?;
    let mut body = response.into_body().into_data_stream();
    let reader = tokio::spawn(async move { while let Some(Ok(_event)) = body.next().await {} });
    Ok((reader, pool))
}
