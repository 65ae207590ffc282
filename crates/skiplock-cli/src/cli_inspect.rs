//! The command line of the commands that look into the queue and act on its jobs (`jobs`,
//! `queues`, `workers`, `stats`, `top`, `doctor`), as clap types only.

use std::time::Duration;

use clap::builder::{PossibleValuesParser, TypedValueParser as _};
use clap::{Args, Subcommand};
use skiplock::JobState;

#[derive(Debug, Subcommand)]
pub(crate) enum JobsCommand {
    /// List jobs, newest first, as an aligned table (or JSON), a page at a time.
    ///
    /// The `when` column: `runs in 2h` (scheduled), `due 3m ago` (available), `started 3m ago`
    /// (running), `retries in 30s` (retryable), `ended 3m ago` (finished). The footer gives the
    /// total (exact up to 10000, then `10000+` or an estimate `~N`) and the --after of the next
    /// page. A filter on tags, arguments or schedule searches one window of ids per page: the
    /// command goes on from window to window until it has --limit jobs, for at most 10
    /// seconds, then says where to continue.
    List(ListArgs),
    /// Everything about one job: its fields, every attempt's error, its arguments, progress and
    /// result.
    Show(JobIdArgs),
    /// Why a job is not running (yet), one reason a line.
    Explain(JobIdArgs),
    /// Cancel jobs, by id or every waiting or running job a filter matches (running ones are
    /// asked to stop).
    #[command(after_long_help = ACTION_HELP)]
    Cancel(ActionArgs),
    /// Put failed or cancelled jobs back to run now, by id or every one a filter matches.
    #[command(after_long_help = ACTION_HELP)]
    Retry(ActionArgs),
    /// Delete finished (completed, failed, cancelled) jobs, by id or every one a filter matches
    /// (not jobs of workflows: retention deletes them with their workflow).
    #[command(after_long_help = ACTION_HELP)]
    Delete(ActionArgs),
}

const ACTION_HELP: &str = "\
With ids: one line per job; exit code 1 if a job is in a state the action does not apply to,
3 if an id has no job (the others are acted on).

With a filter: prints how many jobs match, then asks `Proceed? [y/N]` on a terminal; --yes
skips the question and is needed without a terminal (a script, cron); --dry-run only counts.
No filter at all is refused unless --all is given. The action works through the jobs in
batches of 1000, each its own transaction.";

/// Which jobs: every condition given must hold.
#[derive(Debug, Args)]
#[group(id = "filter", multiple = true)]
pub(crate) struct FilterArgs {
    /// Jobs in this state; repeat (or separate with commas) for several.
    #[arg(long = "state", value_name = "STATE", value_delimiter = ',', value_parser = state())]
    pub(crate) states: Vec<JobState>,

    /// Jobs of this queue; repeat for several.
    #[arg(long = "queue", value_name = "QUEUE")]
    pub(crate) queues: Vec<String>,

    /// Jobs of this kind; repeat for several.
    #[arg(long = "kind", value_name = "KIND")]
    pub(crate) kinds: Vec<String>,

    /// Jobs carrying this tag; repeat: jobs carrying every one.
    #[arg(long = "tag", value_name = "TAG")]
    pub(crate) tags: Vec<String>,

    /// Jobs whose arguments contain this JSON, as PostgreSQL's @> means it: '{"user_id": 7}'
    /// matches {"user_id": 7, "plan": "pro"}.
    #[arg(long, value_name = "JSON", value_parser = json)]
    pub(crate) args: Option<serde_json::Value>,

    /// Jobs enqueued by this schedule.
    #[arg(long, value_name = "NAME")]
    pub(crate) schedule: Option<String>,

    /// Jobs of this workflow (`skiplock workflows list` gives the ids).
    #[arg(long, value_name = "ID")]
    pub(crate) workflow: Option<i64>,
}

fn state() -> impl clap::builder::TypedValueParser<Value = JobState> {
    PossibleValuesParser::new(JobState::ALL.map(JobState::as_str))
        .try_map(|name| name.parse::<JobState>())
}

fn json(text: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|error| format!("not valid JSON: {error}"))
}

#[derive(Debug, Args)]
pub(crate) struct ListArgs {
    #[command(flatten)]
    pub(crate) filter: FilterArgs,

    /// Start after this job id: the `--after` the footer of the page before gives.
    #[arg(long, value_name = "ID")]
    pub(crate) after: Option<i64>,

    /// Oldest (lowest id) first instead of newest first.
    #[arg(long)]
    pub(crate) oldest_first: bool,

    /// At most this many jobs (1 to 1000).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(crate) limit: u32,

    /// Print one JSON document, {"jobs": [...], "next": ID or null, "total": COUNT}, instead of
    /// a table; pass `next` to --after for the next page.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct JobIdArgs {
    /// The job's id.
    pub(crate) id: i64,

    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ActionArgs {
    /// The jobs' ids. Without ids, the filter flags choose the jobs: the command counts them,
    /// says how many and asks to proceed.
    #[arg(value_name = "ID", conflicts_with_all = ["filter", "all", "dry_run"])]
    pub(crate) ids: Vec<i64>,

    #[command(flatten)]
    pub(crate) filter: FilterArgs,

    /// Without ids or a filter: act on every job the action applies to (refused otherwise).
    #[arg(long)]
    pub(crate) all: bool,

    /// Only count the jobs the filter matches; change nothing.
    #[arg(long)]
    pub(crate) dry_run: bool,

    /// Do not ask for confirmation. Without a terminal to ask on, a filtered action is refused
    /// unless this is given.
    #[arg(long, short)]
    pub(crate) yes: bool,

    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkflowsCommand {
    /// List workflows, newest first, as an aligned table (or JSON), a page at a time: id,
    /// name, state (running, completed, failed, cancelled), jobs and how many are unfinished.
    List(WorkflowListArgs),
    /// One workflow: its state, times, jobs per state, and its jobs (1000 at a time) with
    /// their states and the jobs each waits for.
    Show(WorkflowShowArgs),
    /// Cancel every unfinished job of a workflow (running ones are asked to stop). Says how
    /// many jobs that is and asks `Proceed? [y/N]` on a terminal; --yes skips the question and
    /// is needed without a terminal. Exit code 3 when there is no such workflow.
    Cancel(WorkflowCancelArgs),
    /// Put a failed or cancelled workflow's failed and cancelled jobs back, so it runs on from
    /// where it stopped (completed jobs keep their results).
    Retry(WorkflowRetryArgs),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum WorkflowPhaseArg {
    /// A job has not finished.
    Running,
    /// Every job finished.
    Finished,
}

#[derive(Debug, Args)]
pub(crate) struct WorkflowListArgs {
    /// Only running or only finished workflows.
    #[arg(long, value_enum)]
    pub(crate) state: Option<WorkflowPhaseArg>,

    /// Start after this workflow id: the `--after` the footer of the page before gives.
    #[arg(long, value_name = "ID")]
    pub(crate) after: Option<i64>,

    /// At most this many workflows (1 to 200).
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=200))]
    pub(crate) limit: u32,

    /// Print one JSON document, {"workflows": [...], "next": ID or null}, instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkflowShowArgs {
    /// The workflow's id.
    pub(crate) id: i64,

    /// List its jobs of id above this (the footer gives it when there are more than 1000).
    #[arg(long, value_name = "JOB_ID")]
    pub(crate) after: Option<i64>,

    /// Print JSON instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkflowCancelArgs {
    /// The workflow's id.
    pub(crate) id: i64,

    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long, short)]
    pub(crate) yes: bool,

    /// Print JSON, {"cancelled": N, "stopping": M}, instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct WorkflowRetryArgs {
    /// The workflow's id.
    pub(crate) id: i64,

    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long, short)]
    pub(crate) yes: bool,

    /// Print JSON, {"retried": N}, instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Subcommand)]
pub(crate) enum QueuesCommand {
    /// Every queue with jobs, live workers or schedules: jobs by state, pickup lag, jobs done
    /// and failed in the last minute and hour, workers and slots.
    List(JsonArgs),
    /// Pause a queue: no worker claims its jobs until it is resumed (from each worker's next
    /// claim on); running jobs finish. The pause is stored and survives restarts.
    Pause(PauseArgs),
    /// Resume a paused queue and wake its workers.
    Resume(QueueName),
}

#[derive(Debug, Args)]
pub(crate) struct PauseArgs {
    /// The queue.
    pub(crate) queue: String,
    /// Why (shown by `queues list`, `jobs explain` and the dashboard; at most 1,000 characters).
    #[arg(long)]
    pub(crate) reason: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct QueueName {
    /// The queue.
    pub(crate) queue: String,
}

#[derive(Debug, Subcommand)]
pub(crate) enum WorkersCommand {
    /// Live workers, then those stopped or lost in the last hour: status, heartbeat, jobs
    /// running, queues with their concurrency.
    List(JsonArgs),
}

#[derive(Debug, Args)]
pub(crate) struct JsonArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub(crate) json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// Time between frames (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,

    /// Stop after this many frames (for scripts).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) iterations: Option<u64>,
}

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Exit with code 4 when a check gives a warning (not only 5 on a critical one).
    #[arg(long)]
    pub(crate) strict: bool,

    /// A transaction holding back the xmin horizon this long is a warning [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) horizon_warning: Option<Duration>,

    /// ... and this long critical [default: 30m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) horizon_critical: Option<Duration>,

    /// A transaction holding back the xmin horizon this long is a warning already while
    /// skiplock's tables hold over 100,000 dead rows (a busy queue) [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) horizon_busy_warning: Option<Duration>,

    /// An available job waiting this long for a worker is a warning [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) pickup_lag_warning: Option<Duration>,

    /// A running job this long past its lease, that nobody rescues, is critical [default: 1m].
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub(crate) stuck_grace: Option<Duration>,

    /// Print JSON, {"worst": SEVERITY, "checks": [...]}, instead of text.
    #[arg(long)]
    pub(crate) json: bool,
}
