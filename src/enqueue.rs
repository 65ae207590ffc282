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
use crate::{Job, JobState, TraceParent};

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
    /// The job is over one of its [`Limits`]; nothing was sent to the database.
    #[error("{limit} of a {kind:?} job is {value}, over the limit of {max}")]
    TooLarge {
        /// The job's kind.
        kind: String,
        /// Which limit.
        limit: Limit,
        /// The job's value: bytes, tags or characters as `limit` says.
        value: usize,
        /// The limit.
        max: usize,
    },
    /// `run_at` (or now plus the delay) is not between [`MIN_RUN_AT`] and [`MAX_RUN_AT`].
    #[error("run_at of a {kind:?} job is {run_at}, outside 1970-01-01 to 9999-12-31 UTC")]
    RunAtOutOfRange {
        /// The job's kind.
        kind: String,
        /// The requested time, or `now + <delay>` for a delay too long to add.
        run_at: String,
    },
    /// The insert failed.
    #[error("could not insert the job")]
    Database(#[from] sqlx::Error),
}

/// The default of [`Limits::args_bytes`]: 1 MiB.
pub const DEFAULT_MAX_ARGS_BYTES: usize = 1_048_576;
/// The default of [`Limits::tags`]: 100 tags.
pub const DEFAULT_MAX_TAGS: usize = 100;
/// The default of [`Limits::tag_chars`]: 200 characters.
pub const DEFAULT_MAX_TAG_CHARS: usize = 200;

/// The earliest `run_at` a job may have: 1970-01-01 00:00:00 UTC.
pub const MIN_RUN_AT: DateTime<Utc> = DateTime::UNIX_EPOCH;
/// The latest `run_at` a job may have: 9999-12-31 23:59:59.999999 UTC. The database refuses
/// anything later (`jobs_run_at_range`), `'infinity'` included.
pub const MAX_RUN_AT: DateTime<Utc> = match DateTime::from_timestamp(253_402_300_799, 999_999_000) {
    Some(max) => max,
    None => panic!("9999-12-31 is a valid instant"),
};

/// How big a job may be, checked before anything is sent to the database.
///
/// The database enforces the same limits with CHECK constraints (`jobs_args_max_bytes`,
/// `jobs_tags_max_count`, `jobs_tag_max_chars`), whatever inserts the job; their defaults are
/// the ones here, and `SELECT skiplock.set_limits(args_bytes, tags, tag_chars)`, run by the
/// schema's owner, changes them (docs/schema.md). Raise them on both sides together: the
/// database refuses what it does not allow whatever these say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The largest `args`, in bytes of their JSON text as PostgreSQL prints a `jsonb` value
    /// (`octet_length(args::text)`: a space after each `,` and `:`). Default:
    /// [`DEFAULT_MAX_ARGS_BYTES`] (1 MiB).
    pub args_bytes: usize,
    /// The most tags. Default: [`DEFAULT_MAX_TAGS`] (100).
    pub tags: usize,
    /// The longest tag, in characters. Default: [`DEFAULT_MAX_TAG_CHARS`] (200).
    pub tag_chars: usize,
}

impl Limits {
    /// The defaults, equal to the database's after migration 0008.
    pub const DEFAULT: Self = Self {
        args_bytes: DEFAULT_MAX_ARGS_BYTES,
        tags: DEFAULT_MAX_TAGS,
        tag_chars: DEFAULT_MAX_TAG_CHARS,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which of the [`Limits`] a job is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Limit {
    /// [`Limits::args_bytes`].
    ArgsBytes,
    /// [`Limits::tags`].
    Tags,
    /// [`Limits::tag_chars`].
    TagChars,
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ArgsBytes => "the size of the args in bytes",
            Self::Tags => "the number of tags",
            Self::TagChars => "the length of a tag in characters",
        })
    }
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
    limits: Option<Limits>,
    traceparent: Option<TraceParent>,
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
    ///
    /// The order is strict while the database is healthy. While a long transaction pins the
    /// xmin horizon, a job that sorts before those a worker just claimed (a higher priority)
    /// may wait a few seconds (docs/schema.md, "Order").
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

    /// The limits the job is checked against before it is sent. Default: [`Limits::DEFAULT`],
    /// the database's own defaults; raise them only together with the database's
    /// (`skiplock.set_limits`).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = Some(limits);
        self
    }

    /// The trace context of the code enqueueing the job, stored in its `metadata` column: each
    /// attempt's span records it, [`JobContext::traceparent`](crate::JobContext::traceparent)
    /// returns it, and [`WorkerBuilder::trace_context`](crate::WorkerBuilder::trace_context)
    /// can make the attempt's span a child of the enqueuing span. Default: none.
    pub fn traceparent(mut self, traceparent: TraceParent) -> Self {
        self.traceparent = Some(traceparent);
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
    ///
    /// The enqueue refuses ([`EnqueueError::Invalid`]) an empty set, and one with
    /// [`JobState::Running`] but not [`JobState::Available`]: duplicates could then wait side
    /// by side, and a claim that made two of them running at once would fail.
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
    limits: Limits,
    traceparent: Option<TraceParent>,
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
            limits: options.limits.unwrap_or_default(),
            traceparent: options.traceparent,
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
        if let Some(unique) = &self.unique {
            if unique.states.is_empty() {
                return Err(EnqueueError::Invalid(
                    "a unique job needs at least one state to be unique in".to_owned(),
                ));
            }
            // Claims move jobs from available to running in batches: a job unique while
            // running but not while waiting could be claimed together with its duplicate (or
            // while it runs), and the unique index would fail the whole claim, again and again.
            if unique.states.contains(&JobState::Running)
                && !unique.states.contains(&JobState::Available)
            {
                return Err(EnqueueError::Invalid(
                    "a job unique while running must be unique while available too".to_owned(),
                ));
            }
        }
        if self.max_attempts < 1 {
            return Err(EnqueueError::Invalid(format!(
                "max_attempts must be at least 1, got {}",
                self.max_attempts
            )));
        }
        self.check_run_at()?;
        self.check_limits()
    }

    /// Refuses a `run_at` the database would refuse (`jobs_run_at_range`).
    fn check_run_at(&self) -> Result<(), EnqueueError> {
        let out_of_range = |run_at: String| EnqueueError::RunAtOutOfRange {
            kind: self.kind.clone(),
            run_at,
        };
        if let Some(run_at) = self.run_at {
            if !(MIN_RUN_AT..=MAX_RUN_AT).contains(&run_at) {
                return Err(out_of_range(run_at.to_rfc3339()));
            }
        } else if let Some(delay) = self.delay_secs {
            // The database adds the delay to its own now(); the local clock is close enough
            // for a bound eight thousand years away.
            let latest = (MAX_RUN_AT - Utc::now()).num_seconds() as f64;
            if delay > latest {
                return Err(out_of_range(format!("now + {delay} s")));
            }
        }
        Ok(())
    }

    /// Refuses a job over its [`Limits`], before its args travel to the database.
    fn check_limits(&self) -> Result<(), EnqueueError> {
        let over = |limit, value, max| EnqueueError::TooLarge {
            kind: self.kind.clone(),
            limit,
            value,
            max,
        };
        let limits = &self.limits;
        if self.tags.len() > limits.tags {
            return Err(over(Limit::Tags, self.tags.len(), limits.tags));
        }
        if let Some(longest) = self.tags.iter().map(|tag| tag.chars().count()).max()
            && longest > limits.tag_chars
        {
            return Err(over(Limit::TagChars, longest, limits.tag_chars));
        }
        let bytes = pg_text_len(&self.args);
        if bytes > limits.args_bytes {
            return Err(over(Limit::ArgsBytes, bytes, limits.args_bytes));
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
            metadata: self.metadata(),
            traceparent: self.traceparent.as_ref().map(TraceParent::as_str),
        }
    }

    /// The job as one entry of `skiplock.enqueue_workflow`'s `jobs` array, waiting for the
    /// entries at `depends_on` (0-based, all earlier). Validated as [`enqueue_new`] validates;
    /// unique jobs are refused (a workflow's jobs are its own).
    pub(crate) fn workflow_entry(&self, depends_on: &[usize]) -> Result<Value, EnqueueError> {
        self.validate()?;
        if self.unique.is_some() {
            return Err(EnqueueError::Invalid(format!(
                "unique {:?} job in a workflow: a workflow's jobs cannot be unique",
                self.kind
            )));
        }
        let mut entry = serde_json::json!({
            "kind": self.kind,
            "args": self.args,
            "queue": self.queue,
            "priority": self.priority,
            "max_attempts": self.max_attempts,
            "tags": self.tags,
        });
        let fields = [
            ("run_at", self.run_at.map(|at| Value::from(at.to_rfc3339()))),
            ("delay_secs", self.delay_secs.map(Value::from)),
            ("timeout_secs", self.timeout_secs.map(Value::from)),
            ("metadata", self.metadata()),
            (
                "depends_on",
                (!depends_on.is_empty()).then(|| Value::from(depends_on.to_vec())),
            ),
        ];
        if let Value::Object(map) = &mut entry {
            for (key, value) in fields {
                if let Some(value) = value {
                    map.insert(key.to_owned(), value);
                }
            }
        }
        Ok(entry)
    }

    /// The job's `metadata` column: `{"traceparent": ...}`, or none.
    fn metadata(&self) -> Option<Value> {
        self.traceparent
            .map(|parent| serde_json::json!({ "traceparent": parent.as_str() }))
    }
}

/// The length in bytes of `value` as PostgreSQL prints it as `jsonb` (`args::text`): the
/// compact JSON plus a space after every `:` and every `,`, computed without building the text.
/// Numbers may print a few characters differently (`1e3` is `1000` there).
fn pg_text_len(value: &Value) -> usize {
    /// Counts the bytes serde writes.
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    /// One space after each `,` and `:` between the elements of `value`'s arrays and objects.
    fn spaces(value: &Value) -> usize {
        match value {
            Value::Array(items) => {
                items.len().saturating_sub(1) + items.iter().map(spaces).sum::<usize>()
            }
            Value::Object(map) => {
                2 * map.len() - usize::from(!map.is_empty())
                    + map.values().map(spaces).sum::<usize>()
            }
            _ => 0,
        }
    }
    let mut count = Count(0);
    // Writing a `Value` to a counter cannot fail: its keys are strings, and the writer never
    // refuses bytes.
    let _ = serde_json::to_writer(&mut count, value);
    count.0 + spaces(value)
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
    let id = db::job::insert_unique(
        executor,
        job.as_row(),
        unique.key.as_deref(),
        &unique.states,
    )
    .await?;
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
        columns.metadata.push(job.metadata());
        columns.timeout_secs.push(job.timeout_secs);
        columns.kinds.push(job.kind);
        columns.args.push(job.args);
        columns.queues.push(job.queue);
        columns.priorities.push(job.priority);
        columns.max_attempts.push(job.max_attempts);
        columns.run_ats.push(job.run_at);
        columns.delay_secs.push(job.delay_secs);
        columns
            .tags
            .push((!job.tags.is_empty()).then(|| Value::from(job.tags)));
    }
    if columns.kinds.is_empty() {
        return Ok(Vec::new());
    }
    if columns.metadata.iter().all(Option::is_none) {
        // unnest pads a shorter array with NULLs: a batch without trace context sends none.
        columns.metadata.clear();
    }
    Ok(db::job::insert_many(executor, &columns).await?)
}
