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

use crate::db;
use crate::{Job, JobState};

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
    timeout: Option<Duration>,
    unique: Option<Unique>,
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

    /// How long one attempt may run before it is cancelled (and, after the worker's cancel
    /// timeout, dropped) and counted as a failed attempt. Wins over
    /// [`Job::TIMEOUT`]. Default: the kind's timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Makes the job unique: while a job with the same key is in one of the chosen states,
    /// enqueueing returns that job's id instead of inserting another. Default: not unique.
    pub fn unique(mut self, unique: Unique) -> Self {
        self.unique = Some(unique);
        self
    }
}

/// How a job is unique: its key and the states in which it blocks duplicates.
///
/// Uniqueness is enforced by a partial unique index, so concurrent enqueuers (other
/// transactions, processes, hosts) cannot both insert: one inserts, the others get its id.
///
/// ```
/// use skiplock::{EnqueueOptions, JobState, Unique};
///
/// // At most one unfinished job per set of arguments:
/// let options = EnqueueOptions::new().unique(Unique::by_args());
/// // At most one "sync account 7" job waiting to run; a running one does not block a new one:
/// let options = EnqueueOptions::new()
///     .unique(Unique::key("sync:7").states([JobState::Scheduled, JobState::Available]));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unique {
    key: Option<String>,
    states: Vec<JobState>,
}

impl Unique {
    /// The states in which a job blocks duplicates unless [`states`](Self::states) says
    /// otherwise: every unfinished state (scheduled, available, running, retryable).
    pub const DEFAULT_STATES: [JobState; 4] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
    ];

    /// Unique by kind and arguments: the key is `kind:sha256(args)`, computed by the database
    /// from the canonical form of the JSON, so equal arguments always collide.
    pub fn by_args() -> Self {
        Self {
            key: None,
            states: Self::DEFAULT_STATES.to_vec(),
        }
    }

    /// Unique by an explicit key, shared across kinds.
    pub fn key(key: impl Into<String>) -> Self {
        Self {
            key: Some(key.into()),
            states: Self::DEFAULT_STATES.to_vec(),
        }
    }

    /// The states in which a job blocks duplicates. Default: [`Unique::DEFAULT_STATES`].
    pub fn states(mut self, states: impl IntoIterator<Item = JobState>) -> Self {
        self.states = states.into_iter().collect();
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
    timeout_secs: Option<f64>,
    unique: Option<Unique>,
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
        let defaults = Defaults {
            queue: J::QUEUE,
            priority: J::PRIORITY,
            max_attempts: J::MAX_ATTEMPTS,
            timeout: J::TIMEOUT,
        };
        Ok(Self::build(J::KIND, args, defaults, options))
    }

    /// A job of any kind from raw JSON arguments, with the global defaults ([`DEFAULT_QUEUE`],
    /// priority 0, [`DEFAULT_MAX_ATTEMPTS`]) where `options` are unset. For tools that enqueue
    /// kinds they have no Rust type for, such as the CLI.
    ///
    /// [`DEFAULT_QUEUE`]: crate::DEFAULT_QUEUE
    /// [`DEFAULT_MAX_ATTEMPTS`]: crate::DEFAULT_MAX_ATTEMPTS
    pub fn untyped(kind: impl Into<String>, args: Value, options: EnqueueOptions) -> Self {
        let defaults = Defaults {
            queue: crate::DEFAULT_QUEUE,
            priority: 0,
            max_attempts: crate::DEFAULT_MAX_ATTEMPTS,
            timeout: None,
        };
        Self::build(&kind.into(), args, defaults, options)
    }

    fn build(kind: &str, args: Value, defaults: Defaults, options: EnqueueOptions) -> Self {
        Self {
            kind: kind.to_owned(),
            args,
            queue: options.queue.unwrap_or_else(|| defaults.queue.to_owned()),
            priority: options.priority.unwrap_or(defaults.priority),
            max_attempts: options.max_attempts.unwrap_or(defaults.max_attempts),
            run_at: options.run_at,
            delay_secs: options.delay.map(|delay| delay.as_secs_f64()),
            tags: options.tags,
            timeout_secs: options
                .timeout
                .or(defaults.timeout)
                .map(|timeout| timeout.as_secs_f64()),
            unique: options.unique,
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
        if self.timeout_secs.is_some_and(|secs| secs <= 0.0) {
            return Err(EnqueueError::Invalid(
                "timeout must be greater than zero".to_owned(),
            ));
        }
        if self
            .unique
            .as_ref()
            .is_some_and(|unique| unique.states.is_empty())
        {
            return Err(EnqueueError::Invalid(
                "a unique job needs at least one state to be unique in".to_owned(),
            ));
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
            timeout_secs: self.timeout_secs,
        }
    }
}

/// A kind's defaults, for [`NewJob::build`].
struct Defaults {
    queue: &'static str,
    priority: i16,
    max_attempts: i32,
    timeout: Option<Duration>,
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
    let Some(unique) = &job.unique else {
        return Ok(db::job::insert(executor, job.as_row()).await?);
    };
    let states: Vec<String> = unique
        .states
        .iter()
        .map(|s| s.as_str().to_owned())
        .collect();
    let id = db::job::insert_unique(executor, job.as_row(), unique.key.as_deref(), &states).await?;
    Ok(id)
}

/// Enqueues many jobs, of any kinds and queues, in ONE statement and round trip; returns their
/// ids in input order. All of them or none are inserted. Unique jobs
/// ([`EnqueueOptions::unique`]) are refused here: enqueue them one at a time with
/// [`enqueue_new`], which can return the id of the job that already exists.
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
        if job.unique.is_some() {
            return Err(EnqueueError::Invalid(format!(
                "unique {:?} job in enqueue_many: enqueue unique jobs one at a time",
                job.kind
            )));
        }
        columns.timeout_secs.push(job.timeout_secs);
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
