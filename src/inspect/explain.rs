//! "Why isn't my job running?"

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{Acquire, Postgres};

use super::{Count, InspectError, JobDetail, WorkerStatus, begin};
use crate::limits::{Rate, Scope};
use crate::{AttemptError, JobState, db};

/// Counts in explanations (jobs running, jobs ahead) stop at this many: 10,000.
const CAP: i64 = 10_000;

/// Why a job is where it is, reasons in the order they apply.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Explanation {
    /// The job.
    pub job: JobDetail,
    /// The reasons it is not running (or, running, whose it is), most decisive first. Empty
    /// only for an available job nothing holds back: a worker takes it at its next claim.
    pub reasons: Vec<Reason>,
}

/// One reason a job is not running (yet).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Reason {
    /// It finished: it runs again only if retried.
    Finished {
        /// `completed`, `failed` or `cancelled`.
        state: JobState,
        /// When.
        at: Option<DateTime<Utc>>,
        /// Its last error, for failed and cancelled jobs.
        last_error: Option<AttemptError>,
    },
    /// A workflow job waiting for jobs it depends on: it becomes runnable when the last of
    /// them finishes.
    WaitingForJobs {
        /// The unfinished ones (the first [`WAITING_FOR_SHOWN`] by id), with their states.
        jobs: Vec<AwaitedJob>,
        /// How many it still waits for in all.
        total: u64,
    },
    /// It is running, under a worker's lease.
    HeldByWorker {
        /// The worker.
        worker: String,
        /// Whether that worker is alive (`None`: its row is gone).
        status: Option<WorkerStatus>,
        /// When the lease runs out; a dead worker's job is rescued after that.
        lease_expires_at: Option<DateTime<Utc>>,
        /// Whether the lease has already run out (and no rescuer has taken the job back yet).
        lease_expired: bool,
        /// Whether somebody asked to cancel it.
        cancel_requested: bool,
    },
    /// Its `run_at` is in the future.
    NotYetDue {
        /// When it becomes runnable.
        run_at: Option<DateTime<Utc>>,
    },
    /// It is waiting out its backoff after a failed attempt.
    BackingOff {
        /// The attempt that failed.
        attempt: i32,
        /// When it runs again.
        until: Option<DateTime<Utc>>,
        /// That attempt's error.
        last_error: Option<AttemptError>,
    },
    /// It is due but still waiting to be made available: no live worker runs the maintenance
    /// that promotes due jobs.
    NotPromoted {
        /// When it became due.
        due_since: Option<DateTime<Utc>>,
    },
    /// Its queue is paused: no worker claims from it until it is resumed.
    QueuePaused {
        /// The queue.
        queue: String,
        /// Since when.
        since: DateTime<Utc>,
        /// The database role that paused it.
        by: Option<String>,
        /// Why, if a reason was given.
        why: Option<String>,
    },
    /// A unique job: another job holds its unique key, so it cannot become runnable again.
    UniqueKeyHeld {
        /// Its unique key.
        key: String,
        /// The job holding it.
        holder: i64,
    },
    /// No live worker works its queue.
    NoWorkerForQueue {
        /// The queue.
        queue: String,
    },
    /// Live workers work its queue, but none has a handler for its kind.
    NoWorkerForKind {
        /// The queue.
        queue: String,
        /// The kind.
        kind: String,
    },
    /// Every slot of its queue is busy.
    SlotsBusy {
        /// Jobs of the queue running now.
        running: Count,
        /// The slots live workers have for the queue.
        slots: u64,
    },
    /// Jobs of its queue and kind that will be claimed before it (lower priority value, or
    /// the same priority and an earlier `run_at`).
    JobsAhead {
        /// How many.
        jobs: Count,
    },
    /// A cluster-wide limit ([`crate::limits`]) holds it back: its scope (or its partition) has
    /// as many jobs running as the limit allows, or the limit's rate allows no start yet.
    Throttled {
        /// The limit's scope.
        scope: Scope,
        /// The arguments' key the limit holds per value of, if any.
        partition_key: Option<String>,
        /// The job's partition: the value of that key, as JSON (`null` without the key).
        partition: Option<String>,
        /// The limit's most running at once, if it has one.
        max_running: Option<u32>,
        /// Jobs of the scope (of the job's partition) running now.
        running: u64,
        /// The limit's rate, if it has one.
        rate: Option<Rate>,
        /// Seconds until the rate allows the next start, when it is what holds the job back.
        next_start_in_secs: Option<f64>,
    },
}

/// How many of the jobs a pending job waits for [`Reason::WaitingForJobs`] lists: 20.
pub const WAITING_FOR_SHOWN: i64 = 20;

/// A job a pending job waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct AwaitedJob {
    /// Its id.
    pub id: i64,
    /// Its state now.
    pub state: JobState,
}

fn at(time: Option<DateTime<Utc>>) -> String {
    time.map_or_else(
        || "an unreadable time".to_owned(),
        |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
    )
}

impl fmt::Display for Reason {
    /// One line for a person.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Finished {
                state,
                at: when,
                last_error,
            } => {
                write!(f, "finished: {state} at {}", at(*when))?;
                if let Some(error) = last_error {
                    write!(f, " ({}: {})", error.kind, error.message)?;
                }
                Ok(())
            }
            Self::HeldByWorker {
                worker,
                status,
                lease_expires_at,
                lease_expired,
                cancel_requested,
            } => {
                let status = status.map_or("gone", WorkerStatus::as_str);
                write!(f, "running on worker {worker} ({status}); ")?;
                if *lease_expired {
                    write!(
                        f,
                        "its lease expired at {} and no rescuer has taken it back (is any worker running?)",
                        at(*lease_expires_at)
                    )?;
                } else {
                    write!(f, "its lease expires at {}", at(*lease_expires_at))?;
                }
                if *cancel_requested {
                    write!(f, "; cancel requested")?;
                }
                Ok(())
            }
            Self::WaitingForJobs { jobs, total } => {
                write!(f, "waiting for {total} job(s) of its workflow to finish:")?;
                for job in jobs {
                    write!(f, " {} ({})", job.id, job.state)?;
                }
                if *total > jobs.len() as u64 {
                    write!(f, " …")?;
                }
                Ok(())
            }
            Self::NotYetDue { run_at } => write!(f, "not due until {}", at(*run_at)),
            Self::BackingOff {
                attempt,
                until,
                last_error,
            } => {
                write!(
                    f,
                    "backing off after attempt {attempt} until {}",
                    at(*until)
                )?;
                if let Some(error) = last_error {
                    write!(f, " ({}: {})", error.kind, error.message)?;
                }
                Ok(())
            }
            Self::NotPromoted { due_since } => write!(
                f,
                "due since {} but not yet made available: no live worker runs maintenance",
                at(*due_since)
            ),
            Self::QueuePaused {
                queue,
                since,
                by,
                why,
            } => {
                write!(f, "queue {queue:?} is paused since {}", at(Some(*since)))?;
                if let Some(by) = by {
                    write!(f, " by {by}")?;
                }
                if let Some(why) = why {
                    write!(f, " ({why})")?;
                }
                write!(f, "; resume it with `skiplock queues resume {queue}`")
            }
            Self::UniqueKeyHeld { key, holder } => {
                write!(f, "unique key {key:?} is held by job {holder}")
            }
            Self::NoWorkerForQueue { queue } => {
                write!(f, "no live worker works queue {queue:?}")
            }
            Self::NoWorkerForKind { queue, kind } => write!(
                f,
                "no live worker of queue {queue:?} has a handler for kind {kind:?}"
            ),
            Self::SlotsBusy { running, slots } => {
                write!(f, "every slot is busy: {running} running in {slots} slots")
            }
            Self::JobsAhead { jobs } => write!(f, "{jobs} jobs ahead of it in its queue"),
            Self::Throttled {
                scope,
                partition_key,
                partition,
                max_running,
                running,
                rate,
                next_start_in_secs,
            } => {
                write!(f, "held back by the limit on {scope}")?;
                if let (Some(key), Some(value)) = (partition_key, partition) {
                    write!(f, " per {key} (here {value})")?;
                }
                if let Some(max) = max_running {
                    write!(f, ": {running} running of {max}")?;
                }
                if let (Some(rate), Some(wait)) = (rate, next_start_in_secs) {
                    write!(
                        f,
                        "; rate {} per {} s, next start in {wait:.1} s",
                        rate.max_starts,
                        rate.period.as_secs_f64()
                    )?;
                }
                Ok(())
            }
        }
    }
}

/// Explains why job `id` is not running; `None` when there is no such job.
///
/// # Errors
/// [`InspectError::Database`] when a statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn explain<'c, A>(conn: A, id: i64) -> Result<Option<Explanation>, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let Some(row) = db::inspect::job_detail(&mut *tx, id).await? else {
        return Ok(None);
    };
    let facts = db::inspect::explain_facts(&mut *tx, id, CAP).await?;
    let limits = if row.state == JobState::Available {
        db::throttle::for_job(&mut *tx, id).await?
    } else {
        Vec::new()
    };
    let awaited = if row.state == JobState::Pending {
        Some(db::workflow::awaited(&mut *tx, id, WAITING_FOR_SHOWN).await?)
    } else {
        None
    };
    tx.commit().await?;
    let job = JobDetail::from_row(row);
    if let Some(awaited) = awaited {
        let jobs = awaited
            .ids
            .into_iter()
            .zip(awaited.states)
            .map(|(id, state)| AwaitedJob { id, state })
            .collect();
        let total = u64::try_from(awaited.total).unwrap_or(0);
        let reasons = vec![Reason::WaitingForJobs { jobs, total }];
        return Ok(Some(Explanation { job, reasons }));
    }
    let mut reasons = facts.map(|facts| reasons(&job, &facts)).unwrap_or_default();
    reasons.extend(limits.into_iter().filter_map(throttled));
    Ok(Some(Explanation { job, reasons }))
}

/// The reason a limit holds an available job back, if it does.
fn throttled(limit: db::throttle::JobLimit) -> Option<Reason> {
    let scope = match (limit.queue, limit.kind) {
        (Some(queue), _) => Scope::Queue(queue),
        (None, Some(kind)) => Scope::Kind(kind),
        (None, None) => return None,
    };
    let full = limit
        .max_running
        .is_some_and(|max| limit.running >= i64::from(max));
    let waiting = limit.next_start_secs.filter(|wait| *wait > 0.0);
    if !full && waiting.is_none() {
        return None;
    }
    let rate = crate::limits::rate(limit.max_starts, limit.period_secs);
    Some(Reason::Throttled {
        scope,
        partition_key: limit.partition_key,
        partition: limit.partition,
        max_running: limit.max_running.and_then(|max| u32::try_from(max).ok()),
        running: u64::try_from(limit.running).unwrap_or(0),
        rate,
        next_start_in_secs: waiting,
    })
}

fn reasons(job: &JobDetail, facts: &db::inspect::ExplainFacts) -> Vec<Reason> {
    let last_error = || job.errors.last().cloned();
    let mut reasons = Vec::new();
    let due = job.run_at.is_some_and(|run_at| run_at <= facts.now);
    match job.state {
        JobState::Completed | JobState::Failed | JobState::Cancelled => {
            reasons.push(Reason::Finished {
                state: job.state,
                at: job.finished_at,
                last_error: (job.state != JobState::Completed)
                    .then(last_error)
                    .flatten(),
            });
            return reasons;
        }
        JobState::Running => {
            let worker = job.attempted_by.last().cloned().unwrap_or_default();
            reasons.push(Reason::HeldByWorker {
                status: job.worker.as_ref().map(|w| w.status),
                worker,
                lease_expires_at: job.lease_expires_at,
                lease_expired: job.lease_expires_at.is_some_and(|at| at < facts.now),
                cancel_requested: job.cancel_requested_at.is_some(),
            });
            return reasons;
        }
        JobState::Scheduled if !due => reasons.push(Reason::NotYetDue { run_at: job.run_at }),
        JobState::Retryable if !due => reasons.push(Reason::BackingOff {
            attempt: job.attempt,
            until: job.run_at,
            last_error: last_error(),
        }),
        JobState::Scheduled | JobState::Retryable => {
            if let (Some(key), Some(holder)) = (&job.unique_key, facts.unique_holder) {
                reasons.push(Reason::UniqueKeyHeld {
                    key: key.clone(),
                    holder,
                });
            } else if !facts.any_live_worker {
                reasons.push(Reason::NotPromoted {
                    due_since: job.run_at,
                });
            }
        }
        JobState::Available | JobState::Pending => {}
    }
    if let Some(since) = facts.paused_at {
        reasons.push(Reason::QueuePaused {
            queue: job.queue.clone(),
            since,
            by: facts.paused_by.clone(),
            why: facts.pause_reason.clone(),
        });
    }
    // Who could run it once it is available.
    if facts.queue_workers == 0 {
        reasons.push(Reason::NoWorkerForQueue {
            queue: job.queue.clone(),
        });
    } else if facts.kind_workers == 0 {
        reasons.push(Reason::NoWorkerForKind {
            queue: job.queue.clone(),
            kind: job.kind.clone(),
        });
    } else if job.state == JobState::Available {
        if facts.slots > 0 && facts.running >= facts.slots {
            reasons.push(Reason::SlotsBusy {
                running: Count::capped(facts.running, CAP),
                slots: u64::try_from(facts.slots).unwrap_or(0),
            });
        }
        if facts.ahead > 0 {
            reasons.push(Reason::JobsAhead {
                jobs: Count::capped(facts.ahead, CAP),
            });
        }
    }
    reasons
}
