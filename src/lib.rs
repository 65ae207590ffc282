//! skiplock: a background job queue for Rust that keeps its jobs in PostgreSQL.
//!
//! Jobs are rows in `skiplock.jobs`, claimed with `FOR UPDATE SKIP LOCKED`, so any number of
//! worker processes on any number of hosts share a queue with nothing but the database you
//! already run. Enqueueing is transactional: insert a job in the same transaction as your own
//! writes, and it exists exactly when they do.
//!
//! # Quickstart
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//! use skiplock::{Handler, Job, JobContext, JobError, Worker};
//!
//! // 1. A job is a serde type with a stable kind string...
//! #[derive(Serialize, Deserialize)]
//! struct SendWelcome {
//!     user_id: i64,
//! }
//!
//! impl Job for SendWelcome {
//!     const KIND: &'static str = "send_welcome";
//! }
//!
//! // 2. ...and a handler, which gets the application's state (here its pool).
//! impl Handler<sqlx::PgPool> for SendWelcome {
//!     type Output = String;
//!
//!     async fn handle(self, ctx: JobContext<sqlx::PgPool>) -> Result<String, JobError> {
//!         let _pool = ctx.state();
//!         Ok(format!("welcomed user {} on attempt {}", self.user_id, ctx.attempt()))
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let pool = sqlx::PgPool::connect(&std::env::var("DATABASE_URL")?).await?;
//!     skiplock::migrate(&pool).await?; // creates or updates the `skiplock` schema
//!
//!     // 3. Enqueue in the same transaction as the application's own writes.
//!     let mut tx = pool.begin().await?;
//!     let user_id: i64 = sqlx::query_scalar("INSERT INTO users (name) VALUES ('ada') RETURNING id")
//!         .fetch_one(&mut *tx)
//!         .await?;
//!     skiplock::enqueue(&mut *tx, &SendWelcome { user_id }).await?;
//!     tx.commit().await?;
//!
//!     // 4. Run a worker until SIGINT or SIGTERM.
//!     Worker::builder(pool.clone(), pool)
//!         .register::<SendWelcome>()
//!         .build()?
//!         .run()
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! From any other language, enqueue with SQL inside your own transaction:
//!
//! ```sql
//! SELECT skiplock.enqueue('send_welcome', '{"user_id": 42}', queue => 'default');
//! ```
//!
//! # Where to go next
//! - [`Job`] and [`Handler`]: defining jobs, outcomes, retries and backoff.
//! - [`enqueue`], [`enqueue_with`], [`enqueue_many`]: enqueueing on a pool, a connection or a
//!   transaction.
//! - [`Worker`]: queues, concurrency, polling and graceful shutdown.
//! - [`Retention`]: how long finished jobs are kept before workers delete them.
//! - [`get_job`] and the SQL schema (`docs/schema.md`): what happened to a job.
//! - [`inspect`]: lists, counts, queues, workers, schedules, "why isn't my job running?"
//!   ([`inspect::explain`]), PostgreSQL health checks ([`inspect::health()`]) and bulk actions:
//!   what the `skiplock` CLI shows.
//! - `skiplock::metrics` (feature `metrics`) and [`TraceParent`]: watching skiplock in
//!   production (`docs/operations.md`).
//! - The `skiplock-testing` crate (a dev-dependency): a fresh, migrated database per test, on a
//!   throwaway PostgreSQL server when `DATABASE_URL` is unset.
//!
//! # Features
//! None is on by default. `metrics`: Prometheus metrics of workers and of the database, and an
//! axum handler serving them (`skiplock::metrics`; brings `prometheus-client` and axum's routing, no
//! HTTP server). `web`: the dashboard, an axum `Router` (`skiplock::web`). `bench`: the
//! benchmarks `skiplock bench` runs (`skiplock::bench`).
//! `tls-rustls`, `tls-native-tls`: TLS for connections to remote databases (sqlx's).

mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
mod cron;
mod db;
mod enqueue;
mod handler;
pub mod inspect;
mod job;
pub mod limits;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(not(feature = "metrics"))]
mod metrics;
mod migrate;
pub mod queue;
pub mod results;
pub mod runtime;
pub mod schedule;
mod trace;
#[cfg(feature = "web")]
pub mod web;
pub mod workflow;

pub use crate::backoff::Backoff;
pub use crate::cron::{CronError, CronSchedule, MAX_CRON_LENGTH};
pub use crate::enqueue::{
    DEFAULT_MAX_ARGS_BYTES, DEFAULT_MAX_TAG_CHARS, DEFAULT_MAX_TAGS, EnqueueError, EnqueueOptions,
    Limit, Limits, MAX_RUN_AT, MIN_RUN_AT, NewJob, Unique, enqueue, enqueue_many, enqueue_new,
    enqueue_with,
};
pub use crate::handler::{
    BoxError, ContextError, Dependency, Handler, JobContext, JobError, LeaseLost,
};
pub use crate::job::{
    AttemptError, DEFAULT_MAX_ATTEMPTS, DEFAULT_QUEUE, ErrorKind, Job, JobQueryError, JobRow,
    JobState, ParseJobStateError, cancel, get_job, retry,
};
pub use crate::migrate::{
    LOCK_ATTEMPTS, LOCK_TIMEOUT, MIGRATIONS, MigrateError, MigrateReport, Migration, MigrationKind,
    migrate, migrate_to, script,
};
pub use crate::runtime::{
    Health, Pruner, PrunerConfig, Retention, RoleHealth, Scheduler, SchedulerConfig,
    SchedulerError, Worker, WorkerBuilder, WorkerError, WorkerHandle,
};
pub use crate::schedule::{Misfire, Schedule, ScheduleError, ScheduleRow};
pub use crate::trace::{TRACEPARENT_LEN, TraceParent, TraceParentError};
