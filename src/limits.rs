//! Cluster-wide concurrency and rate limits on a queue or a kind.
//!
//! A [`Limit`] holds across every worker on every host: at most `max_running` of its scope's
//! jobs run at once (optionally per partition: per value of one top-level key of the job's
//! arguments, such as `customer_id`), and at most `max_starts` of them start per period. Celery's
//! `rate_limit` is per worker process; these are enforced in the claim itself, in the database,
//! so they hold however many workers run. Limits live in `skiplock.throttles` (visible with
//! `SELECT`), take effect from every worker's next claim (set and clear wake the scope's
//! workers), and survive restarts. Jobs already running when a limit is set or lowered finish.
//!
//! The same from SQL: `SELECT skiplock.set_limit(queue => 'emails', max_running => 3)`,
//! `SELECT skiplock.clear_limit(queue => 'emails')`; from a shell:
//! `skiplock limits set --queue emails --max-running 3`.
//!
//! ```no_run
//! # async fn example(pool: sqlx::PgPool) -> Result<(), skiplock::limits::LimitError> {
//! use std::time::Duration;
//! use skiplock::limits::{self, Limit, Scope};
//!
//! // At most 3 jobs of the queue `emails` at once, across the cluster.
//! limits::set(&pool, &Limit::queue("emails").max_running(3)).await?;
//! // At most one `charge` job per customer at once, and 100 charges a minute in all.
//! limits::set(&pool, &Limit::kind("charge").partition_by("customer_id").max_running(1)).await?;
//! limits::set(&pool, &Limit::kind("charge").rate(100, Duration::from_secs(60))).await?;
//! let busy = limits::list(&pool).await?.iter().filter(|l| l.running > 0).count();
//! # let _ = busy;
//! limits::clear(&pool, &Scope::Queue("emails".into()), None).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Cost: queues and kinds without a limit are claimed exactly as before, plus one probe of the
//! (empty) limits table per claim. A limited queue's claim takes a transaction-level advisory
//! lock per limit and counts the scope's running jobs under it (docs/schema.md, "Limits").

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgExecutor;

use crate::db;

/// The largest `max_running` and `max_starts`: 1,000,000.
pub const MAX_LIMIT: u32 = 1_000_000;
/// The shortest rate period: 1 second.
pub const MIN_PERIOD: Duration = Duration::from_secs(1);
/// The longest rate period: 1 day.
pub const MAX_PERIOD: Duration = Duration::from_secs(86_400);

/// What a limit applies to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "type", content = "name", rename_all = "snake_case")]
pub enum Scope {
    /// Every job of this queue, whatever its kind.
    Queue(String),
    /// Every job of this kind, in whatever queue.
    Kind(String),
}

impl Scope {
    fn parts(&self) -> (Option<&str>, Option<&str>) {
        match self {
            Self::Queue(queue) => (Some(queue), None),
            Self::Kind(kind) => (None, Some(kind)),
        }
    }

    fn check(&self) -> Result<(), LimitError> {
        let (Self::Queue(name) | Self::Kind(name)) = self;
        if (1..=128).contains(&name.chars().count()) {
            Ok(())
        } else {
            Err(LimitError::InvalidName(name.clone()))
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Queue(queue) => write!(f, "queue {queue}"),
            Self::Kind(kind) => write!(f, "kind {kind}"),
        }
    }
}

/// A rate: at most `max_starts` starts per `period`, as a token bucket that holds up to
/// `max_starts` tokens and refills continuously (so a burst of `max_starts` is allowed after a
/// quiet period).
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Rate {
    /// Starts per period, 1 to [`MAX_LIMIT`].
    pub max_starts: u32,
    /// The period, [`MIN_PERIOD`] to [`MAX_PERIOD`] (serialized in seconds).
    #[serde(rename = "period_secs", serialize_with = "as_secs")]
    pub period: Duration,
}

fn as_secs<S: serde::Serializer>(period: &Duration, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_f64(period.as_secs_f64())
}

/// A limit to [`set`]: built with [`Limit::queue`] or [`Limit::kind`], then
/// [`max_running`](Self::max_running) and/or [`rate`](Self::rate).
#[derive(Clone, Debug, PartialEq)]
pub struct Limit {
    scope: Scope,
    partition_key: Option<String>,
    max_running: Option<u32>,
    rate: Option<Rate>,
}

impl Limit {
    /// A limit on every job of `queue`.
    pub fn queue(queue: impl Into<String>) -> Self {
        Self::new(Scope::Queue(queue.into()))
    }

    /// A limit on every job of `kind` (in any queue).
    pub fn kind(kind: impl Into<String>) -> Self {
        Self::new(Scope::Kind(kind.into()))
    }

    /// A limit on `scope`.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            partition_key: None,
            max_running: None,
            rate: None,
        }
    }

    /// At most `n` of the scope's jobs running at once (per partition, with
    /// [`partition_by`](Self::partition_by)); 1 to [`MAX_LIMIT`].
    #[must_use]
    pub fn max_running(mut self, n: u32) -> Self {
        self.max_running = Some(n);
        self
    }

    /// At most `max_starts` starts per `period` across the scope (not per partition).
    #[must_use]
    pub fn rate(mut self, max_starts: u32, period: Duration) -> Self {
        self.rate = Some(Rate { max_starts, period });
        self
    }

    /// Makes the concurrency limit hold per value of `key`, a top-level key of the jobs'
    /// arguments (`{"customer_id": 7}`: `customer_id`). Jobs without the key share one
    /// partition. A limit per partition is a limit of its own, beside the scope's limit without
    /// a key, if any; it cannot have a rate.
    #[must_use]
    pub fn partition_by(mut self, key: impl Into<String>) -> Self {
        self.partition_key = Some(key.into());
        self
    }

    /// The scope.
    pub fn scope(&self) -> &Scope {
        &self.scope
    }

    fn check(&self) -> Result<(), LimitError> {
        self.scope.check()?;
        if let Some(key) = &self.partition_key
            && !(1..=128).contains(&key.chars().count())
        {
            return Err(LimitError::InvalidName(key.clone()));
        }
        if self.max_running.is_none() && self.rate.is_none() {
            return Err(LimitError::NoLimit);
        }
        if let Some(n) = self.max_running
            && !(1..=MAX_LIMIT).contains(&n)
        {
            return Err(LimitError::OutOfRange);
        }
        if let Some(rate) = self.rate {
            if !(1..=MAX_LIMIT).contains(&rate.max_starts)
                || rate.period < MIN_PERIOD
                || rate.period > MAX_PERIOD
            {
                return Err(LimitError::OutOfRange);
            }
            if self.partition_key.is_some() {
                return Err(LimitError::PartitionedRate);
            }
        }
        Ok(())
    }
}

/// The error of a limits call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LimitError {
    /// A queue, kind or partition key is empty or longer than 128 characters.
    #[error("{0:?} must be 1 to 128 characters")]
    InvalidName(String),
    /// The limit has neither a concurrency limit nor a rate.
    #[error("a limit needs max_running, a rate, or both")]
    NoLimit,
    /// `max_running` or `max_starts` is outside 1 to 1,000,000, or the period outside 1 s to 1 day.
    #[error("limits must be 1 to {MAX_LIMIT}, and a rate's period 1 s to 1 day")]
    OutOfRange,
    /// A rate on a limit with a partition key (rates hold for a whole scope).
    #[error("a rate cannot be set per partition")]
    PartitionedRate,
    /// The query failed (or the role may not change limits: see docs/security.md).
    #[error("limits query failed")]
    Database(#[from] sqlx::Error),
}

/// A limit as [`list`] shows it, with its scope's running jobs.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LimitStatus {
    /// Its id in `skiplock.throttles`.
    pub id: i64,
    /// What it applies to.
    pub scope: Scope,
    /// The arguments' key it holds per value of, if any.
    pub partition_key: Option<String>,
    /// Jobs running at once (per partition), if limited.
    pub max_running: Option<u32>,
    /// Starts per period, if limited.
    pub rate: Option<Rate>,
    /// The scope's jobs running now (all partitions together).
    pub running: i64,
    /// The most running in one partition now (equal to `running` without a partition key).
    pub busiest_partition: i64,
    /// When it was last set (database time).
    pub updated_at: DateTime<Utc>,
    /// The database role that set it last.
    pub updated_by: Option<String>,
}

/// Sets `limit` (replacing the scope's limit with the same partition key, if any); returns its id.
/// Changing a rate refills its bucket. The scope's workers are woken at commit.
///
/// Transactional: run it in a transaction and the limit holds from that transaction's commit
/// (claims already in flight at that instant may still start their jobs).
///
/// # Errors
/// [`LimitError::InvalidName`], [`LimitError::NoLimit`], [`LimitError::OutOfRange`],
/// [`LimitError::PartitionedRate`], or [`LimitError::Database`] when the query fails.
pub async fn set<'e>(executor: impl PgExecutor<'e>, limit: &Limit) -> Result<i64, LimitError> {
    limit.check()?;
    let (queue, kind) = limit.scope.parts();
    let to_i32 = |n: u32| i32::try_from(n).map_err(|_| LimitError::OutOfRange);
    Ok(db::throttle::set(
        executor,
        queue,
        kind,
        limit.partition_key.as_deref(),
        limit.max_running.map(to_i32).transpose()?,
        limit.rate.map(|rate| to_i32(rate.max_starts)).transpose()?,
        limit.rate.map(|rate| rate.period.as_secs_f64()),
    )
    .await?)
}

/// Removes the limit of `scope` with `partition_key` (`None`: the scope's limit without a key);
/// returns whether there was one. The scope's workers are woken at commit.
///
/// # Errors
/// [`LimitError::InvalidName`], or [`LimitError::Database`] when the query fails.
pub async fn clear<'e>(
    executor: impl PgExecutor<'e>,
    scope: &Scope,
    partition_key: Option<&str>,
) -> Result<bool, LimitError> {
    scope.check()?;
    let (queue, kind) = scope.parts();
    Ok(db::throttle::clear(executor, queue, kind, partition_key).await?)
}

/// Every limit, queues first, with the running jobs of each scope (one statement).
///
/// # Errors
/// [`LimitError::Database`] when the query fails.
pub async fn list<'e>(executor: impl PgExecutor<'e>) -> Result<Vec<LimitStatus>, LimitError> {
    Ok(db::throttle::list(executor)
        .await?
        .into_iter()
        .filter_map(status)
        .collect())
}

/// A listed row as the API shows it (`None` for a row without a scope, which a CHECK forbids).
pub(crate) fn status(row: db::throttle::Row) -> Option<LimitStatus> {
    let scope = match (row.queue, row.kind) {
        (Some(queue), _) => Scope::Queue(queue),
        (None, Some(kind)) => Scope::Kind(kind),
        (None, None) => return None,
    };
    Some(LimitStatus {
        id: row.id,
        scope,
        partition_key: row.partition_key,
        max_running: row.max_running.and_then(|n| u32::try_from(n).ok()),
        rate: rate(row.max_starts, row.period_secs),
        running: row.running,
        busiest_partition: row.busiest_partition,
        updated_at: row.updated_at,
        updated_by: row.updated_by,
    })
}

/// A stored rate, if both columns are set (a CHECK makes them set together).
pub(crate) fn rate(max_starts: Option<i32>, period_secs: Option<f64>) -> Option<Rate> {
    match (max_starts, period_secs) {
        (Some(max_starts), Some(period)) => Some(Rate {
            max_starts: u32::try_from(max_starts).unwrap_or(0),
            period: Duration::try_from_secs_f64(period).unwrap_or(MIN_PERIOD),
        }),
        _ => None,
    }
}
