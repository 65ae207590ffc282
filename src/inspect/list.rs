//! Lists of jobs, a page at a time.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{Acquire, Postgres, Row as _};

use super::{InspectError, JobOrder, JobQuery, MAX_PAGE_SIZE, SCAN_WINDOW, begin};
use crate::db::job_list::{self, Scan};
use crate::{AttemptError, JobState};

/// One job in a list: what a table row shows. [`job`](super::job()) has everything.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobSummary {
    /// The job's id.
    pub id: i64,
    /// Its queue.
    pub queue: String,
    /// Its kind.
    pub kind: String,
    /// Its state.
    pub state: JobState,
    /// Its priority (lower runs first).
    pub priority: i16,
    /// Attempts started.
    pub attempt: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// When it may run (next). `None` only for a value a foreign writer stored that cannot be
    /// represented (`infinity`), as for every time below.
    pub run_at: Option<DateTime<Utc>>,
    /// When it was enqueued.
    pub created_at: Option<DateTime<Utc>>,
    /// When its latest attempt started.
    pub attempted_at: Option<DateTime<Utc>>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// While running: when its lease runs out.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When somebody asked to cancel it.
    pub cancel_requested_at: Option<DateTime<Utc>>,
    /// Its tags.
    pub tags: Vec<String>,
    /// The schedule that enqueued it.
    pub schedule: Option<String>,
    /// The worker running it, or that ran it last.
    pub worker: Option<String>,
    /// Its latest error, if any attempt failed.
    pub last_error: Option<AttemptError>,
    /// The start of its arguments' JSON text: at most 256 characters.
    pub args_preview: String,
    /// The size of its arguments' JSON text, in bytes.
    pub args_bytes: i64,
}

impl JobSummary {
    fn from_row(row: &PgRow) -> Result<Self, sqlx::Error> {
        let last_error: Option<Value> = row.try_get("last_error")?;
        Ok(Self {
            id: row.try_get("id")?,
            queue: row.try_get("queue")?,
            kind: row.try_get("kind")?,
            state: row.try_get("state")?,
            priority: row.try_get("priority")?,
            attempt: row.try_get("attempt")?,
            max_attempts: row.try_get("max_attempts")?,
            run_at: row.try_get("run_at")?,
            created_at: row.try_get("created_at")?,
            attempted_at: row.try_get("attempted_at")?,
            finished_at: row.try_get("finished_at")?,
            lease_expires_at: row.try_get("lease_expires_at")?,
            cancel_requested_at: row.try_get("cancel_requested_at")?,
            tags: row.try_get("tags")?,
            schedule: row.try_get("schedule")?,
            worker: row.try_get("worker")?,
            last_error: last_error
                .as_ref()
                .map(|entry| AttemptError::from_column(&Value::Array(vec![entry.clone()])))
                .and_then(|mut errors| errors.pop()),
            args_preview: row.try_get("args_preview")?,
            args_bytes: row
                .try_get::<Option<i32>, _>("args_bytes")?
                .unwrap_or(0)
                .into(),
        })
    }
}

/// One page of a list.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobPage {
    /// The jobs, in the order asked for.
    pub jobs: Vec<JobSummary>,
    /// Where the next page starts ([`JobQuery::after`]); `None` when there is no more.
    pub next: Option<i64>,
    /// Whether the page stopped at the end of its scan window ([`SCAN_WINDOW`]) rather than
    /// at its size: it may hold fewer jobs than asked for, and the search goes on from `next`.
    pub window_ended: bool,
}

/// Lists one page of the jobs `query` asks for.
///
/// # Errors
/// [`InspectError::Invalid`] for a limit of 0 or over [`MAX_PAGE_SIZE`];
/// [`InspectError::Database`] when a statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn jobs<'c, A>(conn: A, query: &JobQuery) -> Result<JobPage, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    if query.limit == 0 || query.limit > MAX_PAGE_SIZE {
        return Err(InspectError::Invalid(format!(
            "a page holds 1 to {MAX_PAGE_SIZE} jobs, not {}",
            query.limit
        )));
    }
    let mut tx = begin(conn, true).await?;
    let filter = &query.filter;
    // A filter that tests rows reads one window of ids per page, from the cursor (or the
    // table's end) on.
    let mut window = None;
    // A workflow's jobs are read through their own index, which bounds the search already.
    if filter.workflow.is_none() && (filter.tests_rows() || job_list::reads_primary_key(filter)) {
        let (lowest, highest) = job_list::id_bounds(&mut *tx).await?;
        let (Some(lowest), Some(highest)) = (lowest, highest) else {
            tx.commit().await?;
            return Ok(JobPage {
                jobs: Vec::new(),
                next: None,
                window_ended: false,
            });
        };
        window = Some(match query.order {
            JobOrder::NewestFirst => {
                let start = query.after.unwrap_or(highest.saturating_add(1));
                let end = start.saturating_sub(SCAN_WINDOW);
                (end, end > lowest.max(filter.min_id.unwrap_or(i64::MIN)))
            }
            JobOrder::OldestFirst => {
                let start = query.after.unwrap_or(lowest.saturating_sub(1));
                let end = start.saturating_add(SCAN_WINDOW);
                (end, end < highest.min(filter.max_id.unwrap_or(i64::MAX)))
            }
        });
    }
    let scan = Scan {
        order: query.order,
        after: query.after,
        window_end: window.map(|(end, _)| end),
        limit: i64::from(query.limit),
    };
    let rows = job_list::list(&mut *tx, filter, scan).await?;
    tx.commit().await?;
    let jobs = rows
        .iter()
        .map(JobSummary::from_row)
        .collect::<Result<Vec<_>, _>>()?;
    let full = jobs.len() == query.limit as usize;
    let (next, window_ended) = match (full, window) {
        (true, _) => (jobs.last().map(|job| job.id), false),
        // The window's end was included: the next page starts after it.
        (false, Some((end, true))) => (Some(end), true),
        _ => (None, false),
    };
    Ok(JobPage {
        jobs,
        next,
        window_ended,
    })
}
