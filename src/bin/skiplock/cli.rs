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
