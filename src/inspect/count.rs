//! How many jobs a filter matches, exact where that is cheap and labelled an estimate where it
//! is not.

use std::fmt;

use serde::{Deserialize, Serialize};
use sqlx::{Acquire, Postgres};

use super::{InspectError, JobFilter, begin};
use crate::db::job_list;

/// Counts up to this many jobs exactly: 10,000. Past it, a count reads the planner's
/// estimate instead (a `count(*)` of millions of rows takes seconds).
pub const COUNT_EXACT_UP_TO: i64 = 10_000;

/// A number of jobs, and how sure it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum Count {
    /// Exactly this many.
    Exact(u64),
    /// More than this many (the count stopped there).
    AtLeast(u64),
    /// About this many: PostgreSQL's planner estimate, from the table's statistics.
    Estimate(u64),
}

impl Count {
    /// The number, whatever its kind.
    pub fn value(self) -> u64 {
        match self {
            Self::Exact(n) | Self::AtLeast(n) | Self::Estimate(n) => n,
        }
    }

    /// Whether it is exact.
    pub fn is_exact(self) -> bool {
        matches!(self, Self::Exact(_))
    }

    /// `n` counted with a cap: `Exact(n)` up to `cap`, `AtLeast(cap)` beyond.
    pub(crate) fn capped(n: i64, cap: i64) -> Self {
        let n = u64::try_from(n).unwrap_or(0);
        let cap = u64::try_from(cap).unwrap_or(0);
        if n > cap {
            Self::AtLeast(cap)
        } else {
            Self::Exact(n)
        }
    }
}

impl fmt::Display for Count {
    /// `1234`, `10000+` or `~1234567`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Self::Exact(n) => n.to_string(),
            Self::AtLeast(n) => format!("{n}+"),
            Self::Estimate(n) => format!("~{n}"),
        };
        f.pad(&text)
    }
}

/// Counts the jobs `filter` matches: [`Count::Exact`] up to [`COUNT_EXACT_UP_TO`], else the
/// planner's [`Count::Estimate`].
///
/// # Errors
/// [`InspectError::Database`] when a statement fails.
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn count_jobs<'c, A>(conn: A, filter: &JobFilter) -> Result<Count, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    // What the index alone answers first: when that is small, the rows it selects are few
    // enough to test every condition on.
    let indexed = job_list::count_capped(&mut *tx, filter, true, COUNT_EXACT_UP_TO).await?;
    let count = if indexed <= COUNT_EXACT_UP_TO {
        if filter.tests_rows() {
            let n = job_list::count_capped(&mut *tx, filter, false, COUNT_EXACT_UP_TO).await?;
            Count::capped(n, COUNT_EXACT_UP_TO)
        } else {
            Count::capped(indexed, COUNT_EXACT_UP_TO)
        }
    } else {
        let estimate = job_list::count_estimate(&mut *tx, filter).await?;
        // The planner can guess low; the index already said more than the cap.
        let floor = if filter.tests_rows() {
            0
        } else {
            COUNT_EXACT_UP_TO
        };
        Count::Estimate(u64::try_from(estimate.max(floor)).unwrap_or(0))
    };
    tx.commit().await?;
    Ok(count)
}
