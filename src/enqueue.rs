//! Enqueueing: [`enqueue`], [`enqueue_with`] and [`enqueue_many`], on any executor.
//!
//! Every function takes an `impl PgExecutor`: a `&PgPool`, a `&mut PgConnection`, or
//! `&mut *tx` for the caller's open [`sqlx::Transaction`]. Inside a transaction the job becomes
//! visible to workers only when the transaction commits, and disappears with a rollback: the
//! job and the application's own writes succeed or fail together.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgExecutor;

use crate::Job;
use crate::db;

/// The error of enqueueing.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnqueueError {
    /// The job's arguments could not be serialized to JSON.
    #[error("could not serialize the arguments of a {kind:?} job")]
    Serialize {
        /// The job's kind.
        kind: String,
        /// Why serde failed.
        #[source]
        source: serde_json::Error,
    },
    /// An option is out of range: the message says which and why.
    #[error("invalid job: {0}")]
    Invalid(String),
    /// The insert failed.
    #[error("could not insert the job")]
    Database(#[from] sqlx::Error),
}

/// Options for one job; every option left unset falls back to the job kind's default.
///
/// ```
/// use std::time::Duration;
/// use skiplock::EnqueueOptions;
///
/// let options = EnqueueOptions::new()
///     .queue("mail")
///     .priority(-10)
///     .delay(Duration::from_secs(60))
///     .tag("signup");
/// ```
#[derive(Clone, Debug, Default)]
pub struct EnqueueOptions {
    queue: Option<String>,
    priority: Option<i16>,
    max_attempts: Option<i32>,
    run_at: Option<DateTime<Utc>>,
    delay: Option<Duration>,
    tags: Vec<String>,
}

impl EnqueueOptions {
    /// No options: every value comes from the job kind.
    pub fn new() -> Self {
        Self::default()
    }

    /// The queue (1 to 128 characters). Default: [`Job::QUEUE`].
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queue = Some(queue.into());
        self
    }

    /// The priority; lower runs first within a queue. Default: [`Job::PRIORITY`].
    pub fn priority(mut self, priority: i16) -> Self {
        self.priority = Some(priority);
        self
    }

    /// How many attempts, the first included (at least 1). Default: [`Job::MAX_ATTEMPTS`].
    pub fn max_attempts(mut self, max_attempts: i32) -> Self {
        self.max_attempts = Some(max_attempts);
        self
    }

    /// Do not run before this instant. Wins over [`delay`](Self::delay). Default: now.
    pub fn run_at(mut self, run_at: DateTime<Utc>) -> Self {
        self.run_at = Some(run_at);
        self
    }

    /// Do not run before this long after the enqueueing transaction's database time
    /// (`now() + delay`). Default: no delay.
    pub fn delay(mut self, delay: Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// Adds a free-form label, stored in the `tags` column. Default: no tags.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }
}

/// A job ready to insert: its kind, serialized arguments and options. Built with
/// [`NewJob::new`], [`NewJob::with_options`] or [`NewJob::untyped`], and inserted with
/// [`enqueue_many`].
#[derive(Clone, Debug)]
pub struct NewJob {
    kind: String,
    args: Value,
    queue: String,
    priority: i16,
    max_attempts: i32,
    run_at: Option<DateTime<Utc>>,
    delay_secs: Option<f64>,
    tags: Vec<String>,
}

impl NewJob {
    /// Serializes `job` with its kind's defaults.
    ///
    /// # Errors
    /// [`EnqueueError::Serialize`] when serde fails.
    pub fn new<J: Job>(job: &J) -> Result<Self, EnqueueError> {
        Self::with_options(job, EnqueueOptions::new())
    }

    /// Serializes `job`; `options` override its kind's defaults.
    ///
    /// # Errors
    /// [`EnqueueError::Serialize`] when serde fails.
    pub fn with_options<J: Job>(job: &J, options: EnqueueOptions) -> Result<Self, EnqueueError> {
        let args = serde_json::to_value(job).map_err(|source| EnqueueError::Serialize {
            kind: J::KIND.to_owned(),
            source,
        })?;
        Ok(Self::build(
            J::KIND,
            args,
            J::QUEUE,
            J::PRIORITY,
            J::MAX_ATTEMPTS,
            options,
        ))
    }

    /// A job of any kind from raw JSON arguments, with the global defaults ([`DEFAULT_QUEUE`],
    /// priority 0, [`DEFAULT_MAX_ATTEMPTS`]) where `options` are unset. For tools that enqueue
    /// kinds they have no Rust type for, such as the CLI.
    ///
    /// [`DEFAULT_QUEUE`]: crate::DEFAULT_QUEUE
    /// [`DEFAULT_MAX_ATTEMPTS`]: crate::DEFAULT_MAX_ATTEMPTS
    pub fn untyped(kind: impl Into<String>, args: Value, options: EnqueueOptions) -> Self {
        let kind = kind.into();
        Self::build(
            &kind,
            args,
            crate::DEFAULT_QUEUE,
            0,
            crate::DEFAULT_MAX_ATTEMPTS,
            options,
        )
    }

    fn build(
        kind: &str,
        args: Value,
        queue: &str,
        priority: i16,
        max_attempts: i32,
        options: EnqueueOptions,
    ) -> Self {
        Self {
            kind: kind.to_owned(),
            args,
            queue: options.queue.unwrap_or_else(|| queue.to_owned()),
            priority: options.priority.unwrap_or(priority),
            max_attempts: options.max_attempts.unwrap_or(max_attempts),
            run_at: options.run_at,
            delay_secs: options.delay.map(|delay| delay.as_secs_f64()),
            tags: options.tags,
        }
    }

    /// The job's kind.
    pub fn kind(&self) -> &str {
        &self.kind
    }

    /// The queue it will go to.
    pub fn queue_name(&self) -> &str {
        &self.queue
    }

    /// Checks what the database would refuse, to fail with a precise message instead.
    fn validate(&self) -> Result<(), EnqueueError> {
        let length_ok = |s: &str| (1..=128).contains(&s.chars().count());
        if !length_ok(&self.kind) {
            return Err(EnqueueError::Invalid(format!(
                "kind {:?} must be 1 to 128 characters",
                self.kind
            )));
        }
        if !length_ok(&self.queue) {
            return Err(EnqueueError::Invalid(format!(
                "queue {:?} must be 1 to 128 characters",
                self.queue
            )));
        }
        if self.max_attempts < 1 {
            return Err(EnqueueError::Invalid(format!(
                "max_attempts must be at least 1, got {}",
                self.max_attempts
            )));
        }
        Ok(())
    }

    fn as_row(&self) -> db::job::InsertRow<'_> {
        db::job::InsertRow {
            kind: &self.kind,
            args: &self.args,
            queue: &self.queue,
            priority: self.priority,
            max_attempts: self.max_attempts,
            run_at: self.run_at,
            delay_secs: self.delay_secs,
            tags: &self.tags,
        }
    }
}

/// Enqueues `job` with its kind's defaults; returns the new job's id.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct SendEmail { to: String }
/// # impl skiplock::Job for SendEmail { const KIND: &'static str = "send_email"; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// let mut tx = pool.begin().await?;
/// // ... the application's own writes on `tx` ...
/// skiplock::enqueue(&mut *tx, &SendEmail { to: "ada@example.com".into() }).await?;
/// tx.commit().await?; // the job exists only from here on
/// # Ok(()) }
/// ```
///
/// # Errors
/// [`EnqueueError`] when the arguments do not serialize, an option is invalid, or the insert
/// fails.
///
/// # Cancel safety
/// Not cancel safe on a pool: dropped after the statement was sent, the job may or may not exist.
/// Inside a transaction nothing is committed until the caller commits.
pub async fn enqueue<'e, J: Job>(
    executor: impl PgExecutor<'e>,
    job: &J,
) -> Result<i64, EnqueueError> {
    enqueue_new(executor, &NewJob::new(job)?).await
}

/// Enqueues `job`; `options` override its kind's defaults. Returns the new job's id.
///
/// # Errors
/// As [`enqueue`].
///
/// # Cancel safety
/// As [`enqueue`].
pub async fn enqueue_with<'e, J: Job>(
    executor: impl PgExecutor<'e>,
    job: &J,
    options: EnqueueOptions,
) -> Result<i64, EnqueueError> {
    enqueue_new(executor, &NewJob::with_options(job, options)?).await
}

/// Enqueues a prepared [`NewJob`]; returns the new job's id.
///
/// # Errors
/// As [`enqueue`].
///
/// # Cancel safety
/// As [`enqueue`].
pub async fn enqueue_new<'e>(
    executor: impl PgExecutor<'e>,
    job: &NewJob,
) -> Result<i64, EnqueueError> {
    job.validate()?;
    Ok(db::job::insert(executor, job.as_row()).await?)
}

/// Enqueues many jobs, of any kinds and queues, in ONE statement and round trip; returns their
/// ids in input order. All of them or none are inserted.
///
/// Each column travels as a single array parameter, so there is no limit on the batch size
/// but memory; batches of a few thousand keep each statement short. Workers are woken once per
/// queue, not once per job.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Serialize, Deserialize)] struct Resize { image: u32 }
/// # impl skiplock::Job for Resize { const KIND: &'static str = "resize"; }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use skiplock::NewJob;
///
/// let jobs = (0..1000)
///     .map(|image| NewJob::new(&Resize { image }))
///     .collect::<Result<Vec<_>, _>>()?;
/// let ids = skiplock::enqueue_many(&pool, jobs).await?;
/// assert_eq!(ids.len(), 1000);
/// # Ok(()) }
/// ```
///
/// # Errors
/// As [`enqueue`]; an invalid job fails the whole batch before anything is sent.
///
/// # Cancel safety
/// As [`enqueue`].
pub async fn enqueue_many<'e>(
    executor: impl PgExecutor<'e>,
    jobs: impl IntoIterator<Item = NewJob>,
) -> Result<Vec<i64>, EnqueueError> {
    let mut columns = db::job::InsertColumns::default();
    for job in jobs {
        job.validate()?;
        columns.kinds.push(job.kind);
        columns.args.push(job.args);
        columns.queues.push(job.queue);
        columns.priorities.push(job.priority);
        columns.max_attempts.push(job.max_attempts);
        columns.run_ats.push(job.run_at);
        columns.delay_secs.push(job.delay_secs);
        columns.tags.push(Value::from(job.tags));
    }
    if columns.kinds.is_empty() {
        return Ok(Vec::new());
    }
    Ok(db::job::insert_many(executor, &columns).await?)
}
