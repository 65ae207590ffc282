//! Metrics for Prometheus (OpenMetrics or Prometheus text), with the `metrics` feature.
//!
//! Two sources, in one [`Metrics`] registry (from the [`prometheus-client`](prometheus_client)
//! crate, which does the encoding):
//!
//! - **Workers** count what they do, in process: give the registry to each worker with
//!   [`WorkerBuilder::metrics`](crate::WorkerBuilder::metrics). Labels are bounded: `queue`
//!   (the worker's queues), `kind` (its registered kinds), `outcome` and `role` (fixed sets);
//!   never a job id or arguments.
//! - **The database**: with [`Metrics::with_database`], every scrape reads the queue's state
//!   (jobs waiting per queue and state, the oldest waiting job, expired leases, recent
//!   completions, the xmin horizon, dead tuples) in ONE statement, with a deadline, on the pool
//!   you give it (not a worker's). These describe the database, not the process: serve them from
//!   one place (one replica, or the standalone `skiplock metrics --listen` exporter), or
//!   aggregate them with `max`, never `sum`.
//!
//! Serve it with [`router`] (or [`handler`]) in your own axum application, or run `skiplock
//! metrics --listen 127.0.0.1:9187` for the database gauges alone.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! # #[derive(serde::Serialize, serde::Deserialize)] struct SendEmail;
//! # impl skiplock::Job for SendEmail { const KIND: &'static str = "send_email"; }
//! # impl skiplock::Handler<sqlx::PgPool> for SendEmail {
//! #     type Output = ();
//! #     async fn handle(self, _: skiplock::JobContext<sqlx::PgPool>) -> Result<(), skiplock::JobError> { Ok(()) }
//! # }
//! use skiplock::metrics::Metrics;
//!
//! let metrics = Metrics::new().with_database(pool.clone());
//! let worker = skiplock::Worker::builder(pool.clone(), pool)
//!     .register::<SendEmail>()
//!     .metrics(&metrics)
//!     .build()?
//!     .start();
//! // The application's router, with GET /metrics:
//! let app: axum::Router = axum::Router::new().merge(skiplock::metrics::router(metrics));
//! # let _ = (app, worker);
//! # Ok(()) }
//! ```
//!
//! # The metrics
//!
//! Names, labels and meanings are stable; `docs/operations.md` says what each means in
//! production and what to do about it. Durations are in seconds, sizes in jobs or bytes.
//!
//! From each worker (summed over the workers given the same [`Metrics`]):
//!
//! | name | type | labels | what |
//! |---|---|---|---|
//! | `skiplock_jobs_started_total` | counter | queue, kind | attempts started |
//! | `skiplock_job_outcomes_total` | counter | queue, kind, outcome | attempts ended, by [`outcome`](#outcomes) |
//! | `skiplock_job_duration_seconds` | histogram | queue, kind | how long handlers ran |
//! | `skiplock_job_pickup_lag_seconds` | histogram | queue, kind | from a job's `run_at` to its claim (database time) |
//! | `skiplock_jobs_in_flight` | gauge | queue | attempts running now |
//! | `skiplock_queue_slots` | gauge | queue | how many may run at once (the workers' concurrency) |
//! | `skiplock_claim_batch_size` | histogram | queue | jobs per claim that found any |
//! | `skiplock_claim_duration_seconds` | histogram | queue | one claim statement, every claim |
//! | `skiplock_completion_batch_size` | histogram | | outcomes per completion statement |
//! | `skiplock_completion_duration_seconds` | histogram | | writing one batch of outcomes, retries included |
//! | `skiplock_lease_renewals_failed_total` | counter | | heartbeats that could not renew leases |
//! | `skiplock_role_restarts_total` | counter | role | failures after which a background role was restarted or its round retried |
//!
//! # Outcomes
//! `completed` (the handler returned `Ok`, or completed the job in its own transaction),
//! `retried` (a failed attempt that runs again after backoff: an error, a panic, a timeout),
//! `failed` (for good), `cancelled`, `snoozed`, `interrupted` (stopped by a worker shutdown,
//! runs again at once) and `lost` (the lease was lost: another worker may run the job now).
//! Counted when the attempt ends, before its outcome is written.
//!
//! From the database, per scrape (with [`Metrics::with_database`]):
//!
//! | name | labels | what |
//! |---|---|---|
//! | `skiplock_db_up` | | 1 when the last scrape's query succeeded, else 0 (and no other `skiplock_db_` gauge) |
//! | `skiplock_db_scrape_duration_seconds` | | how long that query took |
//! | `skiplock_db_jobs` | queue, state | jobs waiting or running: state `scheduled`, `available`, `running`, `retryable` |
//! | `skiplock_db_oldest_available_age_seconds` | queue | now minus the `run_at` of the queue's oldest `available` job (at most 1e9: a `run_at` written as `-infinity`) |
//! | `skiplock_db_expired_leases` | queue | `running` jobs whose lease expired: their worker is gone, the rescuer will take them back |
//! | `skiplock_db_jobs_finished_last_minute` | state | attempts that ended `completed`, `failed` or `cancelled` in this minute and the one before (`skiplock.job_stats`) |
//! | `skiplock_db_last_completed_age_seconds` | | since the newest completion (absent when no completed job is kept) |
//! | `skiplock_db_xmin_horizon_age_transactions` | holder | how many transactions the oldest snapshot held by a `session`, a `prepared_transaction` or a `replication_slot` lags behind: vacuum cannot remove rows younger than it |
//! | `skiplock_db_oldest_transaction_age_seconds` | holder | how long the oldest `session` or `prepared_transaction` holding one has been open |
//! | `skiplock_db_dead_tuples` | table | dead tuples (an estimate) in each `skiplock` table |
//! | `skiplock_db_live_tuples` | table | live tuples (an estimate) |
//! | `skiplock_db_table_size_bytes` | table | size on disk, indexes and TOAST included |
//! | `skiplock_db_workers` | status | worker processes `alive` or `unresponsive` (heartbeat late, not yet declared lost) |
//!
//! Queue labels of database gauges come from the table: at most [`MAX_DATABASE_QUEUES`] queues
//! are reported one by one, the rest together as `queue="_other"`.

mod outcome;
pub(crate) use self::outcome::AttemptOutcome;

#[cfg(feature = "metrics")]
mod database;
#[cfg(feature = "metrics")]
mod http;
#[cfg(feature = "metrics")]
mod registry;
#[cfg(feature = "metrics")]
mod worker;

#[cfg(feature = "metrics")]
pub use self::database::{DEFAULT_DATABASE_TIMEOUT, MAX_DATABASE_QUEUES};
#[cfg(feature = "metrics")]
pub use self::http::{handler, router};
#[cfg(feature = "metrics")]
pub use self::registry::{
    Format, Metrics, MetricsError, OPENMETRICS_CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE,
};
#[cfg(feature = "metrics")]
pub(crate) use self::worker::WorkerMetrics;

#[cfg(not(feature = "metrics"))]
mod disabled;
#[cfg(not(feature = "metrics"))]
pub(crate) use self::disabled::WorkerMetrics;

#[cfg(feature = "metrics")]
/// The name of every metric skiplock exports, without the `_total`, `_bucket`, `_sum` and
/// `_count` suffixes of the samples: for dashboards and alert rules to be checked against.
pub const METRIC_NAMES: &[&str] = &[
    "skiplock_jobs_started",
    "skiplock_job_outcomes",
    "skiplock_job_duration_seconds",
    "skiplock_job_pickup_lag_seconds",
    "skiplock_jobs_in_flight",
    "skiplock_queue_slots",
    "skiplock_claim_batch_size",
    "skiplock_claim_duration_seconds",
    "skiplock_completion_batch_size",
    "skiplock_completion_duration_seconds",
    "skiplock_lease_renewals_failed",
    "skiplock_role_restarts",
    "skiplock_db_up",
    "skiplock_db_scrape_duration_seconds",
    "skiplock_db_jobs",
    "skiplock_db_oldest_available_age_seconds",
    "skiplock_db_expired_leases",
    "skiplock_db_jobs_finished_last_minute",
    "skiplock_db_last_completed_age_seconds",
    "skiplock_db_xmin_horizon_age_transactions",
    "skiplock_db_oldest_transaction_age_seconds",
    "skiplock_db_dead_tuples",
    "skiplock_db_live_tuples",
    "skiplock_db_table_size_bytes",
    "skiplock_db_workers",
];
