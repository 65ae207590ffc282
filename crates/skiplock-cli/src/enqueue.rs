//! `skiplock enqueue`.

use std::io::Write as _;

use anyhow::Context as _;
use skiplock::{EnqueueOptions, NewJob};
use sqlx::PgPool;

use crate::cli::EnqueueArgs;

/// Checks the arguments and builds the job, before any connection is made.
pub(crate) fn prepare(args: EnqueueArgs) -> anyhow::Result<NewJob> {
    let json: serde_json::Value =
        serde_json::from_str(&args.args).context("the job's arguments are not valid JSON")?;
    let mut options = EnqueueOptions::new();
    if let Some(queue) = args.queue {
        options = options.queue(queue);
    }
    if let Some(priority) = args.priority {
        options = options.priority(priority);
    }
    if let Some(run_at) = args.run_at {
        options = options.run_at(run_at);
    }
    if let Some(delay) = args.delay {
        options = options.delay(delay);
    }
    if let Some(max_attempts) = args.max_attempts {
        options = options.max_attempts(max_attempts);
    }
    for tag in args.tags {
        options = options.tag(tag);
    }
    Ok(NewJob::untyped(args.kind, json, options))
}

pub(crate) async fn run(pool: &PgPool, job: NewJob) -> anyhow::Result<()> {
    let id = skiplock::enqueue_new(pool, &job).await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}
