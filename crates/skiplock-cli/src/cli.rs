//! The command line, as clap types only.

use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

/// skiplock: background jobs in PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "skiplock", version, about, after_help = crate::exit::HELP)]
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
    /// List, show, explain, cancel, retry or delete jobs.
    #[command(subcommand)]
    Jobs(crate::cli_inspect::JobsCommand),
    /// List, show or cancel workflows (chains, groups and chords of jobs).
    #[command(subcommand)]
    Workflows(crate::cli_inspect::WorkflowsCommand),
    /// The queues: jobs by state, lag, throughput, workers.
    #[command(subcommand)]
    Queues(crate::cli_inspect::QueuesCommand),
    /// Cluster-wide concurrency and rate limits on queues and kinds: list, set, clear.
    #[command(subcommand)]
    Limits(crate::limits::LimitsCommand),
    /// The worker processes: status, heartbeat, jobs running, queues.
    #[command(subcommand)]
    Workers(crate::cli_inspect::WorkersCommand),
    /// One screen: the queues, the workers, the health checks that are not ok.
    Stats(crate::cli_inspect::JsonArgs),
    /// `stats` redrawn in place every --interval until q or Ctrl-C (on a terminal; otherwise
    /// one frame after another, like `top -b`).
    Top(crate::cli_inspect::TopArgs),
    /// Run every health check (PostgreSQL's and the queue's), each with its verdict and
    /// remedy; exit code 5 when one is critical (4 with --strict when one warns).
    Doctor(crate::cli_inspect::DoctorArgs),
    /// List, add, remove, pause, resume or run periodic jobs.
    #[command(subcommand)]
    Schedules(SchedulesCommand),
    /// Run the scheduler (enqueues the jobs of due schedules) until SIGINT or SIGTERM (Ctrl-C
    /// off Unix), then stop at once.
    Scheduler(SchedulerArgs),
    /// Measure skiplock on this server, each scenario in a fresh database of its own (the role
    /// needs CREATEDB). Use an otherwise idle server.
    Bench(BenchArgs),
    /// Serve the queue's database metrics (jobs waiting per queue and state, the oldest waiting
    /// job, recent outcomes, the xmin horizon, dead tuples) for Prometheus at /metrics, until
    /// SIGINT or SIGTERM. Workers export their own metrics from their process.
    Metrics(MetricsArgs),
    /// Serve the web dashboard (overview, jobs, queues, workers, schedules, health, live
    /// updates, and its JSON API) until SIGINT or SIGTERM. Read-only and loopback-only unless
    /// given credentials.
    Dashboard(DashboardArgs),
}

#[derive(Debug, Args)]
pub(crate) struct DashboardArgs {
    /// The address to serve on. Without credentials, only loopback addresses (unless
    /// --insecure-public).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub(crate) listen: std::net::SocketAddr,

    /// A token every request must carry (`Authorization: Bearer TOKEN`, or as the password of
    /// basic auth, with any user name, in a browser); 16 characters at least. Allows actions.
    #[arg(long, env = "SKIPLOCK_DASHBOARD_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,

    /// USER:PASSWORD every request must carry as basic auth (the browser asks); a password of
    /// 8 characters at least. Allows actions.
    #[arg(long, env = "SKIPLOCK_DASHBOARD_BASIC_AUTH", hide_env_values = true)]
    pub(crate) basic_auth: Option<String>,

    /// No actions, even with credentials.
    #[arg(long)]
    pub(crate) read_only: bool,

    /// Serve on an address other machines can reach without credentials (read-only, to
    /// anyone who can reach it).
    #[arg(long)]
    pub(crate) insecure_public: bool,

    /// Hide the values of object keys containing this text (any case) in job arguments,
    /// results and progress; repeat for more (e.g. --redact password --redact token).
    #[arg(long, value_name = "KEY")]
    pub(crate) redact: Vec<String>,

    /// The name in the page titles and header.
    #[arg(long, default_value = "skiplock")]
    pub(crate) title: String,
}

#[derive(Debug, Args)]
pub(crate) struct MetricsArgs {
    /// The address to serve on. Only loopback addresses unless --allow-public is given.
    #[arg(long, default_value = "127.0.0.1:9187")]
    pub(crate) listen: std::net::SocketAddr,

    /// Allow an address reachable from other machines (0.0.0.0, a LAN address). The metrics
    /// name your queues, and every scrape runs a query on the database: expose them only to
    /// your monitoring (a firewall, a private network), since /metrics has no authentication.
    #[arg(long)]
    pub(crate) allow_public: bool,

    /// How long one scrape's database query may take before it is abandoned and
    /// skiplock_db_up reports 0 (e.g. 5s, 500ms). Keep it under Prometheus's scrape_timeout.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) timeout: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    pub(crate) scenario: BenchScenario,

    /// Print one JSON object per line instead of a sentence.
    #[arg(long, global = true)]
    pub(crate) json: bool,

    /// Workers commit claims and completions with synchronous_commit = off (see
    /// WorkerBuilder::synchronous_commit for the trade-off).
    #[arg(long, global = true)]
    pub(crate) async_commit: bool,

    /// Run the scenario this many times, each in a fresh database.
    #[arg(long, global = true, default_value_t = 1)]
    pub(crate) repeat: u32,

    /// Workers count metrics (drain and steady; a drain also encodes them once a second, as a
    /// scrape would): `on`, `off`, or `compare`, which runs each repeat twice, without and with
    /// metrics, alternating which goes first, and ends with the medians and spreads of both.
    #[arg(long, global = true, value_enum, default_value = "off")]
    pub(crate) metrics: BenchMetrics,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum BenchMetrics {
    Off,
    On,
    Compare,
}

#[derive(Debug, Subcommand)]
pub(crate) enum BenchScenario {
    /// Enqueue throughput: one job per transaction (--single) or enqueue_many (--bulk).
    Insert(BenchInsertArgs),
    /// Insert N no-op jobs (untimed), then time from the first claim to the last completion.
    Drain(BenchDrainArgs),
    /// Offered load: completion rate, backlog and enqueue-to-start latency percentiles.
    Steady(BenchSteadyArgs),
    /// Idle system, one job at a time: from the insert's commit to the handler's start.
    Latency(BenchLatencyArgs),
    /// Time every inspection call (lists, counts, queues, health, ...) on a big table.
    Inspect(BenchInspectArgs),
}

#[derive(Debug, Args)]
pub(crate) struct BenchInsertArgs {
    /// One job per transaction.
    #[arg(long, conflicts_with = "bulk", required_unless_present = "bulk")]
    pub(crate) single: bool,

    /// enqueue_many with --batch jobs per call.
    #[arg(long)]
    pub(crate) bulk: bool,

    /// Jobs to enqueue.
    #[arg(long, default_value_t = 20_000)]
    pub(crate) jobs: u64,

    /// Jobs per enqueue_many call, with --bulk.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) batch: u32,

    /// Concurrent connections enqueueing.
    #[arg(long, default_value_t = 1)]
    pub(crate) clients: u32,
}

#[derive(Debug, Args)]
pub(crate) struct BenchDrainArgs {
    /// Jobs to drain.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) jobs: u64,

    /// Workers, all in this process.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: u32,

    /// Jobs each worker runs at once (also its largest claim).
    #[arg(long, default_value_t = 1_000)]
    pub(crate) concurrency: usize,

    /// Jobs scheduled a day ahead, waiting in the table during the drain.
    #[arg(long, default_value_t = 0)]
    pub(crate) scheduled: u64,

    /// Completed jobs retained in the table during the drain.
    #[arg(long, default_value_t = 0)]
    pub(crate) finished: u64,

    /// Available jobs of a kind no worker runs, waiting at the head of the same queue.
    #[arg(long, default_value_t = 0)]
    pub(crate) foreign: u64,

    /// Keep a dashboard open for the whole drain (its overview's live stream, read as a
    /// browser tab would), to measure what watching costs.
    #[arg(long)]
    pub(crate) dashboard: bool,

    /// Set a cluster-wide concurrency limit of N running jobs on the queue before the drain,
    /// to measure the limited claim.
    #[arg(long, value_name = "N")]
    pub(crate) concurrency_limit: Option<u32>,
}

#[derive(Debug, Args)]
pub(crate) struct BenchSteadyArgs {
    /// Jobs offered per second.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) rate: u32,

    /// How long to offer them (e.g. 30s, 3m).
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,

    /// Workers, all in this process.
    #[arg(long, default_value_t = 1)]
    pub(crate) workers: u32,

    /// Jobs each worker runs at once.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) concurrency: usize,

    /// Open a REPEATABLE READ transaction this long into the run (e.g. 30s)...
    #[arg(long, value_parser = humantime::parse_duration, requires = "hold_snapshot_for")]
    pub(crate) hold_snapshot_at: Option<Duration>,

    /// ...and keep it open this long (e.g. 60s). The report then gives the rates before,
    /// during and after it, and its lowest 10 s against the offered rate.
    #[arg(long, value_parser = humantime::parse_duration, requires = "hold_snapshot_at")]
    pub(crate) hold_snapshot_for: Option<Duration>,

    /// How often to sample throughput, pickup lag, backlog, table and index sizes, dead rows,
    /// autovacuum runs and the xmin horizon (a soak).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub(crate) sample_every: Duration,

    /// Write each sample as a JSON line to this file, as it is taken.
    #[arg(long)]
    pub(crate) samples: Option<std::path::PathBuf>,

    /// Draw the samples as an SVG chart into this file at the end.
    #[arg(long)]
    pub(crate) chart: Option<std::path::PathBuf>,

    /// Prune completed jobs this long after they finish during the run (e.g. 60s), as a
    /// production worker configured so would.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) retention: Option<Duration>,

    /// Completed jobs put in the table before the run, as a history like a production table's:
    /// finished evenly over one retention (--retention, or 24 hours) before the fill began, so
    /// pruned at a steady pace (but for what finished in the minutes the fill itself takes).
    #[arg(long, default_value_t = 0)]
    pub(crate) finished: u64,

    /// Reset the job table's own autovacuum settings to the server's before the run, to
    /// measure what skiplock's settings buy.
    #[arg(long)]
    pub(crate) server_autovacuum: bool,
}

#[derive(Debug, Args)]
pub(crate) struct BenchLatencyArgs {
    /// Jobs to time.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) samples: u32,

    /// Do not LISTEN for wake-ups: find jobs by polling only.
    #[arg(long)]
    pub(crate) no_notify: bool,

    /// The worker's poll interval.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub(crate) poll_interval: Duration,
}

#[derive(Debug, Args)]
pub(crate) struct BenchInspectArgs {
    /// Finished jobs in the table.
    #[arg(long, default_value_t = 10_000_000)]
    pub(crate) finished: u64,

    /// Waiting jobs in the table.
    #[arg(long, default_value_t = 1_000_000)]
    pub(crate) waiting: u64,

    /// Times each call is timed.
    #[arg(long, default_value_t = 5)]
    pub(crate) samples: u32,
}

#[derive(Debug, Subcommand)]
pub(crate) enum SchedulesCommand {
    /// Print every schedule, with its latest job; `overdue` when no scheduler fires it.
    List(crate::cli_inspect::JsonArgs),
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

    /// The job's arguments: a JSON object.
    #[arg(long, default_value = "{}")]
    pub(crate) args: String,

    /// Accept arguments that are any JSON value, not only an object (for a kind whose handler
    /// takes an array, a string or a number).
    #[arg(long)]
    pub(crate) any_json: bool,

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

    /// The job's arguments: a JSON object, e.g. '{"to": "ada@example.com"}'; `-` reads them from
    /// standard input and `@PATH` from a file (for arguments over the command-line limit).
    pub(crate) args: String,

    /// Accept arguments that are any JSON value, not only an object (for a kind whose handler
    /// takes an array, a string or a number).
    #[arg(long)]
    pub(crate) any_json: bool,

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

    /// How long one attempt may run before it is cancelled (e.g. 90s, 10m) [default: the
    /// worker's job_timeout].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeout: Option<Duration>,

    /// A tag to store with the job; repeat for more.
    #[arg(long = "tag")]
    pub(crate) tags: Vec<String>,
}
