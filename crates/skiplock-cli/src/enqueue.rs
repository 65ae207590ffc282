//! `skiplock enqueue`.

use std::io::{Read as _, Write as _};

use anyhow::Context as _;
use skiplock::{EnqueueOptions, NewJob};
use sqlx::PgPool;

use crate::cli::EnqueueArgs;

/// Checks the arguments and builds the job, before any connection is made.
pub(crate) fn prepare(args: EnqueueArgs) -> anyhow::Result<NewJob> {
    let text = match args.args.as_str() {
        "-" => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("could not read the job's arguments from standard input")?;
            text
        }
        arg => match arg.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("could not read the job's arguments from {path:?}"))?,
            None => args.args,
        },
    };
    let json = arguments(&text, args.any_json)?;
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
    if let Some(timeout) = args.timeout {
        options = options.timeout(timeout);
    }
    for tag in args.tags {
        options = options.tag(tag);
    }
    Ok(NewJob::untyped(args.kind, json, options))
}

/// The job's arguments parsed from `text`: a JSON object, or with `any_json` any JSON value.
pub(crate) fn arguments(text: &str, any_json: bool) -> anyhow::Result<serde_json::Value> {
    let json: serde_json::Value =
        serde_json::from_str(text).context("the job's arguments are not valid JSON")?;
    if !any_json && !json.is_object() {
        let found = match json {
            serde_json::Value::Null => "null",
            serde_json::Value::Bool(_) => "a boolean",
            serde_json::Value::Number(_) => "a number",
            serde_json::Value::String(_) => "a string",
            serde_json::Value::Array(_) => "an array",
            serde_json::Value::Object(_) => "an object",
        };
        anyhow::bail!(
            "the job's arguments must be a JSON object, not {found} (pass --any-json if its handler takes another JSON value)"
        );
    }
    Ok(json)
}

pub(crate) async fn run(pool: &PgPool, job: NewJob) -> anyhow::Result<()> {
    let id = skiplock::enqueue_new(pool, &job).await?;
    writeln!(std::io::stdout().lock(), "{id}")?;
    Ok(())
}
