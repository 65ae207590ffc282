//! Which jobs a list, a count or a bulk action is about.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::JobState;

/// The most jobs one page holds: 1,000.
pub const MAX_PAGE_SIZE: u32 = 1_000;

/// How many ids one page reads at most when the list reads the primary key rather than an
/// index of states, queues and kinds: when it asks for `available` or `running` jobs (which that
/// index leaves out), or tests columns no index holds (tags, arguments, schedule, times):
/// 25,000 (about 15 ms of reading on a small server). Such a page may hold fewer jobs than
/// asked for and still have a [`next`](super::JobPage::next) page: the search goes on from
/// where it stopped. This bounds each call on a table of millions (a rare argument value is
/// otherwise a scan of every row).
pub const SCAN_WINDOW: i64 = 25_000;

/// Which jobs: every condition given must hold (all jobs when none is).
///
/// For scheduled, retrying and finished jobs, states, queues and kinds are answered from an
/// index whatever the table's size; lists of available or running jobs, and tags, arguments,
/// schedule and time ranges, read a window of [`SCAN_WINDOW`] ids per page. A filter on a
/// [`workflow`](Self::workflow) reads that workflow's jobs through their own index instead (at
/// most [`MAX_WORKFLOW_JOBS`](crate::workflow::MAX_WORKFLOW_JOBS) of them), whatever else it asks.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobFilter {
    /// Jobs in any of these states (any state when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<JobState>,
    /// Jobs of any of these queues (any queue when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub queues: Vec<String>,
    /// Jobs of any of these kinds (any kind when empty).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kinds: Vec<String>,
    /// Jobs carrying every one of these tags.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// Jobs enqueued by this schedule.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// Jobs whose id is at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_id: Option<i64>,
    /// Jobs whose id is at most this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_id: Option<i64>,
    /// Jobs enqueued at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Jobs enqueued before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// Jobs whose `run_at` is at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_after: Option<DateTime<Utc>>,
    /// Jobs whose `run_at` is before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_before: Option<DateTime<Utc>>,
    /// Jobs that finished at or after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_after: Option<DateTime<Utc>>,
    /// Jobs that finished before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_before: Option<DateTime<Utc>>,
    /// Jobs whose arguments contain this JSON value, as PostgreSQL's `@>` means it:
    /// `{"user": {"id": 7}}` matches `{"user": {"id": 7, "name": "ada"}, "n": 1}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    /// Jobs of this workflow (`skiplock.jobs.workflow_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<i64>,
}

impl JobFilter {
    /// A filter matching every job.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a state the job may be in.
    pub fn state(mut self, state: JobState) -> Self {
        self.states.push(state);
        self
    }

    /// Adds a queue the job may belong to.
    pub fn queue(mut self, queue: impl Into<String>) -> Self {
        self.queues.push(queue.into());
        self
    }

    /// Adds a kind the job may be of.
    pub fn kind(mut self, kind: impl Into<String>) -> Self {
        self.kinds.push(kind.into());
        self
    }

    /// Adds a tag the job must carry.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Only jobs of this schedule.
    pub fn schedule(mut self, schedule: impl Into<String>) -> Self {
        self.schedule = Some(schedule.into());
        self
    }

    /// Only jobs whose arguments contain `args` (PostgreSQL's `@>`).
    pub fn args(mut self, args: Value) -> Self {
        self.args = Some(args);
        self
    }

    /// Only jobs of workflow `id` ([`crate::workflow`]).
    pub fn workflow(mut self, id: i64) -> Self {
        self.workflow = Some(id);
        self
    }

    /// Only jobs with ids in `min..=max`.
    pub fn ids(mut self, min: i64, max: i64) -> Self {
        self.min_id = Some(min);
        self.max_id = Some(max);
        self
    }

    /// Only jobs enqueued in `[after, before)` (either bound may be `None`).
    pub fn created(mut self, after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Self {
        self.created_after = after;
        self.created_before = before;
        self
    }

    /// Only jobs whose `run_at` is in `[after, before)`.
    pub fn run_at(mut self, after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Self {
        self.run_after = after;
        self.run_before = before;
        self
    }

    /// Only jobs that finished in `[after, before)`.
    pub fn finished(mut self, after: Option<DateTime<Utc>>, before: Option<DateTime<Utc>>) -> Self {
        self.finished_after = after;
        self.finished_before = before;
        self
    }

    /// The states to read: those asked for, or all of them.
    pub(crate) fn effective_states(&self) -> Vec<JobState> {
        if self.states.is_empty() {
            JobState::ALL.to_vec()
        } else {
            let mut states = self.states.clone();
            states.sort_by_key(|state| state.as_str());
            states.dedup();
            states
        }
    }

    /// Whether some condition is tested on rows rather than answered from the index.
    pub(crate) fn tests_rows(&self) -> bool {
        !self.tags.is_empty()
            || self.schedule.is_some()
            || self.args.is_some()
            || self.created_after.is_some()
            || self.created_before.is_some()
            || self.run_after.is_some()
            || self.run_before.is_some()
            || self.finished_after.is_some()
            || self.finished_before.is_some()
    }
}

/// The order of a list.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobOrder {
    /// Highest id (latest enqueued) first. The default.
    #[default]
    NewestFirst,
    /// Lowest id first.
    OldestFirst,
}

/// One page of a list: which jobs, in which order, from where, how many.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct JobQuery {
    /// Which jobs.
    pub filter: JobFilter,
    /// In which order. Default: [`JobOrder::NewestFirst`].
    #[serde(default)]
    pub order: JobOrder,
    /// Start after this id (exclusive): the [`next`](super::JobPage::next) of the page before.
    #[serde(default)]
    pub after: Option<i64>,
    /// At most this many jobs, 1 to [`MAX_PAGE_SIZE`]. Default: 50.
    #[serde(default = "default_limit")]
    pub limit: u32,
}

fn default_limit() -> u32 {
    JobQuery::DEFAULT_LIMIT
}

impl JobQuery {
    /// The page size when none is given: 50.
    pub const DEFAULT_LIMIT: u32 = 50;

    /// The first page of `filter`, newest first, 50 jobs.
    pub fn new(filter: JobFilter) -> Self {
        Self {
            filter,
            order: JobOrder::default(),
            after: None,
            limit: Self::DEFAULT_LIMIT,
        }
    }

    /// Sets the order.
    pub fn order(mut self, order: JobOrder) -> Self {
        self.order = order;
        self
    }

    /// Continues after this id (a page's [`next`](super::JobPage::next)).
    pub fn after(mut self, id: i64) -> Self {
        self.after = Some(id);
        self
    }

    /// Sets the page size (1 to [`MAX_PAGE_SIZE`]).
    pub fn limit(mut self, limit: u32) -> Self {
        self.limit = limit;
        self
    }
}
