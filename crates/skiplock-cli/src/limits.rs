//! `skiplock limits list|set|clear`: cluster-wide concurrency and rate limits.

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::bail;
use clap::{Args, Subcommand};
use skiplock::limits::{self, Limit, LimitStatus, Scope};
use sqlx::PgPool;

use crate::cli_inspect::JsonArgs;
use crate::exit::{self, Exit};
use crate::text::{Table, print, print_json};

#[derive(Debug, Subcommand)]
pub(crate) enum LimitsCommand {
    /// Every limit with its scope's running jobs now.
    List(JsonArgs),
    /// Set (or replace) the limit of a queue or a kind: at most --max-running of its jobs
    /// running at once across every worker (per value of --partition-key in the jobs' args, if
    /// given), and/or at most --max-starts starts per --period seconds. Takes effect from every
    /// worker's next claim; running jobs finish.
    Set(SetArgs),
    /// Remove the limit of a queue or a kind (with --partition-key: its per-partition limit).
    Clear(ClearArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ScopeArgs {
    /// The queue the limit applies to.
    #[arg(long, conflicts_with = "kind", required_unless_present = "kind")]
    pub(crate) queue: Option<String>,
    /// The kind the limit applies to (in every queue).
    #[arg(long)]
    pub(crate) kind: Option<String>,
    /// A top-level key of the jobs' args: the limit holds per value of it (e.g. customer_id).
    #[arg(long)]
    pub(crate) partition_key: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.queue, &self.kind) {
            (Some(queue), _) => Scope::Queue(queue.clone()),
            (None, kind) => Scope::Kind(kind.clone().unwrap_or_default()),
        }
    }

    fn describe(&self) -> String {
        match &self.partition_key {
            Some(key) => format!("the limit on {} per {key}", self.scope()),
            None => format!("the limit on {}", self.scope()),
        }
    }
}

#[derive(Debug, Args)]
pub(crate) struct SetArgs {
    #[command(flatten)]
    pub(crate) scope: ScopeArgs,
    /// At most this many running at once (per partition with --partition-key).
    #[arg(long)]
    pub(crate) max_running: Option<u32>,
    /// At most this many starts per --period (not with --partition-key).
    #[arg(long, requires = "period")]
    pub(crate) max_starts: Option<u32>,
    /// The rate's period in seconds, 1 to 86400.
    #[arg(long, requires = "max_starts")]
    pub(crate) period: Option<f64>,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long, short)]
    pub(crate) yes: bool,
}

#[derive(Debug, Args)]
pub(crate) struct ClearArgs {
    #[command(flatten)]
    pub(crate) scope: ScopeArgs,
    /// Do not ask for confirmation (needed without a terminal).
    #[arg(long, short)]
    pub(crate) yes: bool,
}

pub(crate) async fn run(command: LimitsCommand, pool: &PgPool) -> anyhow::Result<()> {
    match command {
        LimitsCommand::List(args) => list(pool, args).await,
        LimitsCommand::Set(args) => set(pool, args).await,
        LimitsCommand::Clear(args) => clear(pool, args).await,
    }
}

/// Asks on a terminal unless `yes`; refuses without one.
fn confirmed(yes: bool, what: &str) -> anyhow::Result<()> {
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "refusing to change {what} without confirmation: there is no terminal to ask on; pass --yes"
        );
    }
    if !crate::jobs::confirm(&format!(
        "{what} changes for every worker from its next claim. Proceed? [y/N] "
    ))? {
        return Err(Exit {
            code: exit::ERROR,
            message: Some("not confirmed: nothing changed".to_owned()),
        }
        .into());
    }
    Ok(())
}

async fn list(pool: &PgPool, args: JsonArgs) -> anyhow::Result<()> {
    let limits = limits::list(pool).await?;
    if args.json {
        return print_json(&limits);
    }
    if limits.is_empty() {
        return print("no limits\n");
    }
    let mut table = Table::new(&[
        "scope",
        "name",
        "partition key",
        ">max running",
        ">running",
        ">busiest partition",
        "rate",
    ]);
    for limit in &limits {
        table.row(row(limit));
    }
    print(&table.render())
}

fn row(limit: &LimitStatus) -> Vec<String> {
    let (scope, name) = match &limit.scope {
        Scope::Queue(queue) => ("queue", queue.clone()),
        Scope::Kind(kind) => ("kind", kind.clone()),
    };
    vec![
        scope.to_owned(),
        name,
        limit
            .partition_key
            .clone()
            .unwrap_or_else(|| "-".to_owned()),
        limit
            .max_running
            .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        limit.running.to_string(),
        if limit.partition_key.is_some() {
            limit.busiest_partition.to_string()
        } else {
            "-".to_owned()
        },
        limit.rate.map_or_else(
            || "-".to_owned(),
            |rate| format!("{}/{}s", rate.max_starts, rate.period.as_secs_f64()),
        ),
    ]
}

async fn set(pool: &PgPool, args: SetArgs) -> anyhow::Result<()> {
    let mut limit = Limit::new(args.scope.scope());
    if let Some(key) = &args.scope.partition_key {
        limit = limit.partition_by(key.clone());
    }
    if let Some(n) = args.max_running {
        limit = limit.max_running(n);
    }
    if let (Some(starts), Some(period)) = (args.max_starts, args.period) {
        let Ok(period) = Duration::try_from_secs_f64(period) else {
            bail!("--period must be 1 to 86400 seconds");
        };
        limit = limit.rate(starts, period);
    }
    let what = args.scope.describe();
    confirmed(args.yes, &what)?;
    limits::set(pool, &limit).await?;
    print(&format!("{what} is set\n"))
}

async fn clear(pool: &PgPool, args: ClearArgs) -> anyhow::Result<()> {
    let what = args.scope.describe();
    confirmed(args.yes, &what)?;
    let scope = args.scope.scope();
    if limits::clear(pool, &scope, args.scope.partition_key.as_deref()).await? {
        print(&format!("{what} is cleared\n"))
    } else {
        Err(Exit::not_found(format!("there is no {what}")).into())
    }
}
