//! The `skiplock` command-line tool.

mod bench;
mod cli;
mod cli_inspect;
mod dashboard;
mod doctor;
mod enqueue;
mod exit;
mod fleet;
mod jobs;
mod limits;
mod metrics;
mod migrate;
mod schedules;
mod text;
mod workflows;

use std::error::Error as StdError;
use std::io::IsTerminal as _;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            // Not sqlx's slow-statement warnings (a statement over 1 s, printed whole, tens of
            // lines): on a big or busy table an inspection query may take that long, and the
            // command's own output says what it found. `RUST_LOG=warn` shows them again.
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("warn,sqlx::query=error")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // A command that has said what there was to say ends with its own code, silently.
            let status = error.downcast_ref::<exit::Exit>();
            if status.is_none_or(|status| status.message.is_some()) {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("error: {}", one_line(&error));
                }
            }
            ExitCode::from(status.map_or(exit::ERROR, |status| status.code))
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Migrate(args) if args.print_sql => migrate::print_sql(args.since),
        Command::Migrate(_) => migrate::run(&connect(cli.database_url).await?).await,
        Command::Enqueue(args) => {
            let job = enqueue::prepare(args)?;
            enqueue::run(&connect(cli.database_url).await?, job).await
        }
        Command::Jobs(command) => jobs::run(command, connect(cli.database_url)).await,
        Command::Workflows(command) => {
            workflows::run(command, &connect(cli.database_url).await?).await
        }
        Command::Queues(cli_inspect::QueuesCommand::List(args)) => {
            fleet::queues(&connect(cli.database_url).await?, args).await
        }
        Command::Queues(cli_inspect::QueuesCommand::Pause(args)) => {
            fleet::pause(&connect(cli.database_url).await?, args).await
        }
        Command::Queues(cli_inspect::QueuesCommand::Resume(args)) => {
            fleet::resume(&connect(cli.database_url).await?, args).await
        }
        Command::Limits(command) => limits::run(command, &connect(cli.database_url).await?).await,
        Command::Workers(cli_inspect::WorkersCommand::List(args)) => {
            fleet::workers(&connect(cli.database_url).await?, args).await
        }
        Command::Stats(args) => fleet::stats(&connect(cli.database_url).await?, args).await,
        Command::Top(args) => fleet::top(&connect(cli.database_url).await?, args).await,
        Command::Doctor(args) => doctor::run(&connect(cli.database_url).await?, args).await,
        Command::Schedules(command) => {
            let prepared = schedules::prepare(command)?;
            schedules::run(&connect(cli.database_url).await?, prepared).await
        }
        Command::Bench(args) => {
            // sqlx's per-statement logs (a warning for each statement over 1 s) would interleave
            // with the report; the benchmark measures its statements itself.
            let server = server_options(cli.database_url)?.disable_statement_logging();
            bench::run(server, args).await
        }
        Command::Scheduler(args) => {
            schedules::scheduler(connect(cli.database_url).await?, args).await
        }
        Command::Metrics(args) => metrics::run(cli.database_url, args).await,
        Command::Dashboard(args) => dashboard::run(cli.database_url, args).await,
    }
}

fn server_options(url: Option<String>) -> anyhow::Result<PgConnectOptions> {
    let url = url.context("no database given: set DATABASE_URL or pass --database-url")?;
    url.parse().context("the database URL is not valid")
}

async fn connect(url: Option<String>) -> anyhow::Result<PgPool> {
    connect_with(url, 2).await
}

/// [`connect`], with a pool of at most `max_connections`.
async fn connect_with(url: Option<String>, max_connections: u32) -> anyhow::Result<PgPool> {
    let options = server_options(url)?;
    // One direct connection first: a pool retries until its acquire timeout, while a refused
    // or misconfigured connection should be reported at once.
    options
        .connect()
        .await
        .context("could not connect to the database")?
        .close()
        .await
        .context("could not connect to the database")?;
    Ok(PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy_with(options))
}

/// The error and its causes on one line, each said once: a level's own words without the cause
/// its message already repeats, and PostgreSQL's errors as the server's message with its detail
/// and hint (not sqlx's rendering, which repeats itself and appends "at line N", a line of
/// PostgreSQL's C source).
fn one_line(error: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut chain = error.chain().peekable();
    while let Some(level) = chain.next() {
        if let Some((raw, message)) = database_error(level) {
            // An outer level may have spliced sqlx's rendering into its own message.
            for part in &mut parts {
                *part = part.replace(&raw, &message);
            }
            parts.push(message);
            break;
        }
        let mut own = level.to_string();
        if let Some(cause) = chain.peek().map(ToString::to_string)
            && let Some(stripped) = own.strip_suffix(cause.as_str())
        {
            own = stripped.trim_end_matches([':', ' ']).to_owned();
        }
        let own = own.split_whitespace().collect::<Vec<_>>().join(" ");
        if !own.is_empty() && !parts.iter().any(|part| part.contains(&own)) {
            parts.push(own);
        }
    }
    parts.join(": ")
}

/// sqlx's rendering of a PostgreSQL error in `level`, and the server's message with its detail
/// and hint.
fn database_error(level: &(dyn StdError + 'static)) -> Option<(String, String)> {
    let postgres = match level.downcast_ref::<sqlx::Error>() {
        Some(error) => error
            .as_database_error()?
            .try_downcast_ref::<PgDatabaseError>()?,
        None => level.downcast_ref::<PgDatabaseError>()?,
    };
    let mut message = postgres.message().to_owned();
    if let Some(detail) = postgres.detail() {
        message.push_str(&format!(" ({})", detail.trim_end_matches('.')));
    }
    if let Some(hint) = postgres.hint() {
        message.push_str(&format!(" (hint: {})", hint.trim_end_matches('.')));
    }
    let message = message.split_whitespace().collect::<Vec<_>>().join(" ");
    Some((postgres.to_string(), message))
}
