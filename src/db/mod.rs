//! The database layer: every SQL statement skiplock runs outside `migrations/`.
//!
//! One named function per statement, each checked at compile time by `sqlx::query!` against the
//! schema (the offline cache lives in `.sqlx/`). Functions are named noun-first
//! (`job::claim`, `job::complete_many`) and take any executor, so callers decide whether a
//! statement runs on the pool, a connection or the caller's own transaction.
//!
//! Time is always the database's `now()`: leases, schedules and backoff never depend on the
//! clock of the machine a worker happens to run on.

#[cfg(feature = "bench")]
pub(crate) mod bench;
#[cfg(feature = "bench")]
pub(crate) mod database;
pub(crate) mod inspect;
pub(crate) mod job;
pub(crate) mod job_list;
pub(crate) mod leader;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
pub(crate) mod migration;
pub(crate) mod queue;
pub(crate) mod schedule;
pub(crate) mod session;
pub(crate) mod throttle;
pub(crate) mod waiter;
pub(crate) mod workflow;

/// The channel idle workers LISTEN on; the payload of each notification is a queue name.
pub(crate) const WAKE_CHANNEL: &str = "skiplock_wake";

/// The channel outcome and progress writes notify for jobs registered in
/// `skiplock.job_waiters`; the payload is the job's id.
pub(crate) const JOB_CHANNEL: &str = "skiplock_job";

/// The channel `skiplock.cancel()` notifies when it asks a running job to stop; the payload is
/// the job's id.
pub(crate) const CANCEL_CHANNEL: &str = "skiplock_cancel";
