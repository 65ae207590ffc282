//! Periodic jobs (our Celery Beat): [`Schedule`]s of cron expressions in IANA time zones,
//! stored as data in `skiplock.schedules`.
//!
//! Declare schedules in code with [`WorkerBuilder::schedule`](crate::WorkerBuilder::schedule),
//! or at runtime with [`add`] (and the CLI's `skiplock schedules add`, or plain SQL). Any number
//! of processes may run the scheduler — every worker does by default, and `skiplock scheduler`
//! runs it alone — and each fire time still inserts exactly one job: a unique index on the
//! job's `(schedule, run_at)` refuses a second, in the same transaction as the insert. All
//! decisions use database time, and nothing lives only in memory, so a restart loses nothing.
//!
//! ```
//! use serde::{Deserialize, Serialize};
//! use skiplock::{Job, Misfire, Schedule};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SyncAccounts;
//!
//! impl Job for SyncAccounts {
//!     const KIND: &'static str = "sync_accounts";
//! }
//!
//! # fn main() -> Result<(), skiplock::ScheduleError> {
//! // Every night at 02:00, Brussels time; one catch-up run if the 02:00 run was missed.
//! let nightly = Schedule::new("nightly-sync", "0 2 * * *", &SyncAccounts)?
//!     .timezone("Europe/Brussels")?
//!     .misfire(Misfire::RunOnce);
//! # Ok(()) }
//! ```
//!
//! See `docs/schema.md` for the table, the misfire policies and the daylight-saving rules.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::cron::{CronError, CronSchedule};
use crate::db;
use crate::{EnqueueError, Job};

/// What to do about fire times that passed while no scheduler was running (more than the
/// scheduler's misfire grace ago). Fire times within the grace always fire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Misfire {
    /// Skip them; the schedule goes on from its next fire time. The default.
    #[default]
    Skip,
    /// Fire once, for the latest missed time.
    RunOnce,
    /// Fire for each missed time, the latest `n` at most.
    Backfill(u32),
}

impl Misfire {
    fn to_columns(self) -> (&'static str, i32) {
        match self {
            Self::Skip => ("skip", 0),
            Self::RunOnce => ("run_once", 1),
            Self::Backfill(n) => ("backfill", i32::try_from(n).unwrap_or(i32::MAX)),
        }
    }

    pub(crate) fn from_columns(policy: &str, limit: i32) -> Self {
        match policy {
            "run_once" => Self::RunOnce,
            "backfill" => Self::Backfill(u32::try_from(limit).unwrap_or(0)),
            _ => Self::Skip,
        }
    }
}

/// The error of declaring or changing a schedule.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ScheduleError {
    /// The cron expression or time zone is invalid.
    #[error(transparent)]
    Cron(#[from] CronError),
    /// The job's arguments do not serialize, or an option is out of range.
    #[error(transparent)]
    Job(#[from] EnqueueError),
    /// The name is empty or longer than 128 characters.
    #[error("schedule name {0:?} must be 1 to 128 characters")]
    InvalidName(String),
    /// The query failed.
    #[error("schedule query failed")]
    Database(#[from] sqlx::Error),
}

/// A periodic job: a name, a cron expression in a time zone, and the job to enqueue at each
/// fire time. Invalid expressions and zones are refused here, when the schedule is declared,
/// never at fire time.
#[derive(Clone, Debug)]
pub struct Schedule {
    name: String,
    cron: CronSchedule,
    kind: String,
    args: Value,
    queue: String,
    priority: i16,
    max_attempts: i32,
    misfire: Misfire,
    tags: Vec<String>,
    timeout: Option<Duration>,
}

impl Schedule {
    /// Fires `job` at every time `expression` matches, in UTC until
    /// [`timezone`](Self::timezone) says otherwise. Queue, priority, attempts and timeout are
    /// the kind's.
    ///
    /// The expression has 5 fields, `minute hour day-of-month month day-of-week`, read as
    /// crontab reads them (`0` or `7` is Sunday, `1` Monday; with both day fields restricted, a
    /// day matching either fires). Or it has 6 fields with a leading seconds field (7 with a
    /// trailing year), read as the `cron` crate reads them: there `1` is Sunday. Day names
    /// (`MON`, `SUN-SAT`) mean the same in both forms.
    ///
    /// # Errors
    /// [`ScheduleError`] when the name or expression is invalid or `job` does not serialize.
    pub fn new<J: Job>(name: &str, expression: &str, job: &J) -> Result<Self, ScheduleError> {
        let args = serde_json::to_value(job).map_err(|source| EnqueueError::Serialize {
            kind: J::KIND.to_owned(),
            source,
        })?;
        let mut schedule = Self::untyped(name, expression, J::KIND, args)?;
        schedule.queue = J::QUEUE.to_owned();
        schedule.priority = J::PRIORITY;
        schedule.max_attempts = J::MAX_ATTEMPTS;
        schedule.timeout = J::TIMEOUT;
        Ok(schedule)
    }

    /// As [`new`](Self::new), for a kind given by name with raw JSON arguments (the CLI's way),
    /// with the default queue, priority 0, the default attempts and no timeout.
    ///
    /// # Errors
    /// [`ScheduleError`] when the name or expression is invalid.
    pub fn untyped(
        name: &str,
        expression: &str,
        kind: &str,
        args: Value,
    ) -> Result<Self, ScheduleError> {
        if !(1..=128).contains(&name.chars().count()) {
            return Err(ScheduleError::InvalidName(name.to_owned()));
        }
        if !(1..=128).contains(&kind.chars().count()) {
            let message = format!("kind {kind:?} must be 1 to 128 characters");
            return Err(EnqueueError::Invalid(message).into());
        }
        Ok(Self {
            name: name.to_owned(),
            cron: CronSchedule::parse(expression, "UTC")?,
            kind: kind.to_owned(),
            args,
            queue: crate::DEFAULT_QUEUE.to_owned(),
            priority: 0,
            max_attempts: crate::DEFAULT_MAX_ATTEMPTS,
            misfire: Misfire::Skip,
            tags: Vec::new(),
            timeout: None,
        })
    }

    /// The IANA time zone the expression is read in, e.g. `"Europe/Brussels"`. Default: UTC.
    ///
    /// # Errors
    /// [`ScheduleError::Cron`] for an unknown zone.
    pub fn timezone(mut self, timezone: &str) -> Result<Self, ScheduleError> {
        self.cron = CronSchedule::parse(self.cron.expression(), timezone)?;
        Ok(self)
    }

    /// The queue of the jobs it enqueues. Default: the kind's.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = queue.into();
        self
    }

    /// The priority of the jobs it enqueues. Default: the kind's.
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = priority;
        self
    }

    /// Adds a free-form label to the jobs it enqueues (their `tags` column). Default: none.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// How long one attempt of the jobs it enqueues may run. Default: the kind's
    /// ([`Job::TIMEOUT`]); none for [`untyped`](Self::untyped).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// What to do about fire times missed while no scheduler ran. Default: [`Misfire::Skip`].
    pub fn misfire(mut self, misfire: Misfire) -> Self {
        self.misfire = misfire;
        self
    }

    /// The schedule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The first fire time strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron.next_after(after)
    }

    /// Stores the schedule: added at runtime when `owner` is `None`, declared in code by
    /// `owner` otherwise. Returns `false` when another owner's schedule holds the name.
    pub(crate) async fn store<'e>(
        &self,
        executor: impl PgExecutor<'e>,
        owner: Option<&str>,
    ) -> Result<bool, ScheduleError> {
        if !(1..=128).contains(&self.queue.chars().count()) || self.max_attempts < 1 {
            let message = "queue must be 1 to 128 characters and max_attempts at least 1";
            return Err(EnqueueError::Invalid(message.to_owned()).into());
        }
        if self.timeout.is_some_and(|timeout| timeout.is_zero()) {
            let message = "timeout must be greater than zero";
            return Err(EnqueueError::Invalid(message.to_owned()).into());
        }
        let (misfire, backfill_limit) = self.misfire.to_columns();
        let row = db::schedule::Upsert {
            name: &self.name,
            cron: self.cron.expression(),
            timezone: self.cron.timezone(),
            kind: &self.kind,
            args: &self.args,
            queue: &self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            misfire,
            backfill_limit,
            tags: &self.tags,
            timeout_secs: self.timeout.map(|timeout| timeout.as_secs_f64()),
            owner,
        };
        Ok(db::schedule::upsert(executor, &row).await?)
    }

    pub(crate) fn kind(&self) -> &str {
        &self.kind
    }
}

/// A schedule as stored in `skiplock.schedules`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct ScheduleRow {
    /// Its name.
    pub name: String,
    /// Its cron expression.
    pub cron: String,
    /// Its IANA time zone.
    pub timezone: String,
    /// The kind of the jobs it enqueues.
    pub kind: String,
    /// Their arguments.
    pub args: Value,
    /// Their queue.
    pub queue: String,
    /// Their priority.
    pub priority: i16,
    /// Their attempts.
    pub max_attempts: i32,
    /// What happens to missed fire times.
    pub misfire: Misfire,
    /// Whether it is paused.
    pub paused: bool,
    /// Whether it is active: `false` once removed from the code that declared it, or once the
    /// scheduler found its expression or zone invalid or no future fire time for it.
    pub active: bool,
    /// `"code"` (declared by a worker) or `"runtime"` (CLI, SQL, [`add`]).
    pub source: String,
    /// The owner that declared it in code
    /// ([`WorkerBuilder::schedule_owner`](crate::WorkerBuilder::schedule_owner)); `None` for
    /// runtime schedules and for code schedules stored before owners existed.
    pub owner: Option<String>,
    /// The tags of the jobs it enqueues.
    pub tags: Vec<String>,
    /// The timeout of the jobs it enqueues.
    pub timeout: Option<Duration>,
    /// When it fires next (computed by the scheduler; `None` until then).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// When it last fired.
    pub last_fire_at: Option<DateTime<Utc>>,
}

/// Creates or updates a schedule at runtime. A changed expression or zone takes effect from
/// its next fire time; a paused schedule stays paused.
///
/// # Errors
/// [`ScheduleError`] when an option is invalid or the query fails.
///
/// # Cancel safety
/// Cancel safe: one statement.
pub async fn add<'e>(
    executor: impl PgExecutor<'e>,
    schedule: &Schedule,
) -> Result<(), ScheduleError> {
    schedule.store(executor, None).await?;
    Ok(())
}

/// Every schedule, by name.
///
/// # Errors
/// [`ScheduleError::Database`] when the query fails.
pub async fn list<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<ScheduleRow>, ScheduleError> {
    Ok(db::schedule::list(executor).await?)
}

/// Deletes a schedule (its jobs stay); returns whether it existed.
///
/// # Errors
/// [`ScheduleError::Database`] when the query fails.
pub async fn remove<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<bool, ScheduleError> {
    Ok(db::schedule::delete(executor, name).await?)
}

/// Pauses a schedule; returns whether it exists. Nothing fires until [`resume`].
///
/// # Errors
/// [`ScheduleError::Database`] when the query fails.
pub async fn pause<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<bool, ScheduleError> {
    Ok(db::schedule::set_paused(executor, name, true).await?)
}

/// Resumes a paused schedule from its next fire time (times that passed while paused do not
/// fire); returns whether it exists.
///
/// # Errors
/// [`ScheduleError::Database`] when the query fails.
pub async fn resume<'e>(executor: impl PgExecutor<'e>, name: &str) -> Result<bool, ScheduleError> {
    Ok(db::schedule::set_paused(executor, name, false).await?)
}

/// Enqueues one job of the schedule now, without disturbing its cadence; returns the job's id,
/// or `None` if there is no such schedule.
///
/// # Errors
/// [`ScheduleError::Database`] when the query fails.
pub async fn run_now<'e>(
    executor: impl PgExecutor<'e>,
    name: &str,
) -> Result<Option<i64>, ScheduleError> {
    Ok(db::schedule::run_now(executor, name).await?)
}
