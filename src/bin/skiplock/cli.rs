//! The command line, as clap types only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

/// skiplock: background jobs in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "skiplock", version, about)]
pub(crate) struct Cli {
    /// The database to use.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub(crate) database_url: Option<String>,

    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Create or update the `skiplock` schema (idempotent; safe to run from many processes).
    Migrate(MigrateArgs),
    /// Enqueue one job and print its id.
    Enqueue(EnqueueArgs),
    /// List, add, remove, pause, resume or run periodic jobs.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Run the scheduler (enqueues the jobs of due schedules) until SIGINT or SIGTERM.
    Scheduler(SchedulerArgs),
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesCommand {
    /// Print every schedule.
    List,
    /// Create or update a schedule.
    Add(AddScheduleArgs),
    /// Delete a schedule (its jobs stay).
    Remove(ScheduleName),
    /// Stop a schedule from firing until it is resumed.
    Pause(ScheduleName),
    /// Resume a paused schedule from its next fire time.
    Resume(ScheduleName),
    /// Enqueue one job of the schedule now, without disturbing its cadence; prints the job's id.
    RunNow(ScheduleName),
}

#[derive(Debug, Args)]
pub(crate) struct ScheduleName {
    /// The schedule's name.
    pub(crate) name: String,
}

#[derive(Debug, Args)]
pub(crate) struct AddScheduleArgs {
    /// The schedule's name.
    pub(crate) name: String,

    /// The cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with a
    /// leading seconds field.
    #[arg(long)]
    pub(crate) cron: String,

    /// The kind of the job to enqueue at each fire time.
    #[arg(long)]
    pub(crate) kind: String,

    /// The job's arguments as JSON.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,

    /// The IANA time zone the expression is read in.
    #[arg(long, default_value = "UTC")]
    pub(crate) tz: String,

    /// The queue of its jobs [default: default].
    #[arg(long)]
    pub(crate) queue: Option<String>,

    /// The priority of its jobs [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) priority: Option<i16>,

    /// Fire times missed while no scheduler ran: skip, run-once, or backfill=N.
    #[arg(long, default_value = "skip")]
    pub(crate) misfire: String,
}

#[derive(Debug, Args)]
pub(crate) struct SchedulerArgs {
    /// The longest sleep between rounds (e.g. 1s, 250ms).
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) interval: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct MigrateArgs {
    /// Print the schema's SQL instead of applying it (no database needed), for a DBA to review
    /// or apply with `psql -1 -f`.
    #[arg(long)]
    pub(crate) print_sql: bool,

    /// With --print-sql: leave out migrations up to and including this version.
    #[arg(long, default_value_t = 0, requires = "print_sql")]
    pub(crate) since: i32,
}

#[derive(Debug, Args)]
pub(crate) struct EnqueueArgs {
    /// The job's kind, as its handler registers it.
    pub(crate) kind: String,

    /// The job's arguments as JSON, e.g. '{"to": "ada@example.com"}'.
    pub(crate) args: String,

    /// The queue [default: default].
    #[arg(long)]
    pub(crate) queue: Option<String>,

    /// The priority; lower runs first [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub(crate) priority: Option<i16>,

    /// Do not run before this instant (RFC 3339, e.g. 2026-12-24T18:00:00Z).
    #[arg(long, conflicts_with = "delay")]
    pub(crate) run_at: Option<DateTime<Utc>>,

    /// Do not run before this long from now (e.g. 30s, 5m, 2h 30m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) delay: Option<Duration>,

    /// How many attempts, the first included [default: 25].
    #[arg(long)]
    pub(crate) max_attempts: Option<i32>,

    /// A tag to store with the job; repeat for more.
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
}
