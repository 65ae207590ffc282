//! The `skiplock` command-line tool.

mod bench;
mod cli;
mod enqueue;
mod migrate;
mod schedules;

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions as _, Connection as _, PgPool};
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {error:#}");
            }
            ExitCode::FAILURE
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
        Command::Schedules(command) => {
            let prepared = schedules::prepare(command)?;
            schedules::run(&connect(cli.database_url).await?, prepared).await
        }
        Command::Bench(args) => bench::run(server_options(cli.database_url)?, args).await,
        Command::Scheduler(args) => {
            schedules::scheduler(connect(cli.database_url).await?, args).await
        }
    }
}

fn server_options(url: Option<String>) -> anyhow::Result<PgConnectOptions> {
    let url = url.context("no database given: set DATABASE_URL or pass --database-url")?;
    url.parse().context("the database URL is not valid")
}

async fn connect(url: Option<String>) -> anyhow::Result<PgPool> {
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
        .max_connections(2)
        .acquire_timeout(std::time::Duration::from_secs(10))
        .connect_lazy_with(options))
}
