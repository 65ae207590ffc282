//! `skiplock jobs ...`: list, show, explain, cancel, retry, delete.

use std::fmt::Write as _;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use serde::Serialize;
use skiplock::JobState;
use skiplock::inspect::{self, Count, JobDetail, JobFilter, JobOrder, JobQuery, JobSummary};
use sqlx::PgPool;

use crate::cli_inspect::{ActionArgs, FilterArgs, JobIdArgs, JobsCommand, ListArgs};
use crate::exit::{self, Exit};
use crate::text::{self, Table, print, print_json};

/// How long `jobs list` goes on searching, page after page, for a filter that tests rows
/// (tags, arguments, schedule) before it stops and says where to continue.
const SCAN_BUDGET: Duration = Duration::from_secs(10);

/// Runs the command, checking its input before `pool` connects.
pub(crate) async fn run(
    command: JobsCommand,
    pool: impl Future<Output = anyhow::Result<PgPool>>,
) -> anyhow::Result<()> {
    match command {
        JobsCommand::List(args) => list(&pool.await?, args).await,
        JobsCommand::Show(args) => show(&pool.await?, args).await,
        JobsCommand::Explain(args) => explain(&pool.await?, args).await,
        JobsCommand::Cancel(args) => act(Action::Cancel, args, pool).await,
        JobsCommand::Retry(args) => act(Action::Retry, args, pool).await,
        JobsCommand::Delete(args) => act(Action::Delete, args, pool).await,
    }
}

fn filter_of(args: &FilterArgs) -> JobFilter {
    let mut filter = JobFilter::new();
    for state in &args.states {
        filter = filter.state(*state);
    }
    for queue in &args.queues {
        filter = filter.queue(queue);
    }
    for kind in &args.kinds {
        filter = filter.kind(kind);
    }
    for tag in &args.tags {
        filter = filter.tag(tag);
    }
    if let Some(json) = &args.args {
        filter = filter.args(json.clone());
    }
    if let Some(schedule) = &args.schedule {
        filter = filter.schedule(schedule);
    }
    if let Some(workflow) = args.workflow {
        filter = filter.workflow(workflow);
    }
    filter
}

async fn list(pool: &PgPool, args: ListArgs) -> anyhow::Result<()> {
    let filter = filter_of(&args.filter);
    let order = if args.oldest_first {
        JobOrder::OldestFirst
    } else {
        JobOrder::NewestFirst
    };
    let limit = args.limit as usize;
    let mut query = JobQuery::new(filter.clone()).order(order).limit(args.limit);
    if let Some(after) = args.after {
        query = query.after(after);
    }
    let started = Instant::now();
    let (mut page, total) = tokio::try_join!(
        inspect::jobs(pool, &query),
        inspect::count_jobs(pool, &filter)
    )?;
    let mut jobs = std::mem::take(&mut page.jobs);
    // A filter that tests rows searches a window of ids per page: go on until the page is
    // full, the jobs run out, or the time budget does.
    let mut stopped_early = false;
    while let (true, Some(next)) = (page.window_ended, page.next) {
        if jobs.len() >= limit {
            break;
        }
        if started.elapsed() >= SCAN_BUDGET {
            stopped_early = true;
            break;
        }
        let remaining = u32::try_from(limit - jobs.len()).unwrap_or(1);
        query = query.after(next).limit(remaining);
        page = inspect::jobs(pool, &query).await?;
        jobs.append(&mut page.jobs);
    }
    let next = page.next;
    if args.json {
        #[derive(Serialize)]
        struct List<'a> {
            jobs: &'a [JobSummary],
            next: Option<i64>,
            total: Count,
        }
        return print_json(&List {
            jobs: &jobs,
            next,
            total,
        });
    }
    let now = Utc::now();
    let mut out = String::new();
    if jobs.is_empty() {
        out.push_str("no matching jobs\n");
    } else {
        let mut table = Table::new(&[
            ">id",
            "state",
            "queue",
            "kind",
            ">attempt",
            "when",
            "last error",
        ]);
        for job in &jobs {
            table.row(vec![
                job.id.to_string(),
                job.state.to_string(),
                job.queue.clone(),
                job.kind.clone(),
                format!("{}/{}", job.attempt, job.max_attempts),
                when(job, now),
                job.last_error.as_ref().map_or_else(String::new, |error| {
                    text::truncate(&format!("{}: {}", error.kind, error.message), 60)
                }),
            ]);
        }
        out.push_str(&table.render());
        let order = if args.oldest_first {
            "oldest first"
        } else {
            "newest first"
        };
        let total = text::plural(total, "matching job");
        write!(out, "{} of {total}, {order}", jobs.len())?;
        match next {
            Some(next) if !stopped_early => writeln!(out, "; next page: --after {next}")?,
            _ => out.push('\n'),
        }
    }
    if let (true, Some(next)) = (stopped_early, next) {
        writeln!(
            out,
            "stopped searching after {}s with {} of {limit} jobs found; continue with --after {next}",
            SCAN_BUDGET.as_secs(),
            jobs.len(),
        )?;
    }
    print(&out)
}

/// The time that matters in the job's state, relative to now: `runs in 2h`, `started 3m ago`.
fn when(job: &JobSummary, now: DateTime<Utc>) -> String {
    let relative =
        |at: Option<DateTime<Utc>>| at.map_or_else(|| "?".to_owned(), |at| text::relative(at, now));
    let due = job.run_at.is_some_and(|at| at <= now);
    match job.state {
        JobState::Scheduled if !due => format!("runs {}", relative(job.run_at)),
        JobState::Retryable if !due => format!("retries {}", relative(job.run_at)),
        JobState::Running => format!("started {}", relative(job.attempted_at)),
        state if state.is_finished() => format!("ended {}", relative(job.finished_at)),
        _ => format!("due {}", relative(job.run_at)),
    }
}

async fn show(pool: &PgPool, args: JobIdArgs) -> anyhow::Result<()> {
    let Some(job) = inspect::job(pool, args.id).await? else {
        return Err(Exit::not_found(format!("no job {}", args.id)).into());
    };
    if args.json {
        return print_json(&job);
    }
    let now = Utc::now();
    let mut out = String::new();
    writeln!(out, "job {}: {} in queue {}", job.id, job.kind, job.queue)?;
    let mut field = |name: &str, value: String| writeln!(out, "{name:<14}{value}");
    field(
        "state",
        format!(
            "{}, attempt {} of {}",
            job.state, job.attempt, job.max_attempts
        ),
    )?;
    field("priority", job.priority.to_string())?;
    let times = [
        ("created", job.created_at),
        ("run at", job.run_at),
        ("attempted", job.attempted_at),
        ("lease expires", job.lease_expires_at),
        ("finished", job.finished_at),
        ("cancel asked", job.cancel_requested_at),
    ];
    for (name, at) in times {
        if at.is_some() {
            field(name, text::time(at, now))?;
        }
    }
    if !job.tags.is_empty() {
        field("tags", job.tags.join(", "))?;
    }
    if let Some(schedule) = &job.schedule {
        field("schedule", schedule.clone())?;
    }
    if let Some(key) = &job.unique_key {
        let states = job.unique_states.as_deref().unwrap_or_default().join(", ");
        field("unique key", format!("{key:?} (while {states})"))?;
    }
    if let Some(secs) = job.timeout_secs {
        field("timeout", format!("{secs}s"))?;
    }
    if let Some(worker) = &job.worker {
        let mut text = format!("{} ({}", worker.id, worker.status);
        if let Some(pid) = worker.pid {
            write!(text, ", pid {pid}")?;
        }
        if let Some(host) = &worker.host {
            write!(text, " on {host}")?;
        }
        if let Some(at) = worker.heartbeat_at {
            write!(text, ", heartbeat {}", text::relative(at, now))?;
        }
        text.push(')');
        field("worker", text)?;
    }
    if !job.attempted_by.is_empty() {
        field("attempted by", job.attempted_by.join(", "))?;
    }
    write_errors(&mut out, &job, now)?;
    for (name, value) in [
        ("args", Some(&job.args)),
        ("progress", job.progress.as_ref()),
        ("result", job.result.as_ref()),
    ] {
        if let Some(value) = value {
            writeln!(out, "{name}")?;
            write_indented(&mut out, &serde_json::to_string_pretty(value)?, "  ")?;
        }
    }
    print(&out)
}

/// Every attempt's error, oldest first, each with its message indented below it.
fn write_errors(out: &mut String, job: &JobDetail, now: DateTime<Utc>) -> anyhow::Result<()> {
    if job.errors.is_empty() {
        return Ok(());
    }
    writeln!(out, "errors (oldest first)")?;
    for error in &job.errors {
        write!(
            out,
            "  attempt {}  {}  {}",
            error.attempt,
            text::time(error.at, now),
            error.kind
        )?;
        match &error.worker {
            Some(worker) => writeln!(out, "  on {worker}")?,
            None => out.push('\n'),
        }
        write_indented(out, &error.message, "    ")?;
    }
    Ok(())
}

fn write_indented(out: &mut String, text: &str, indent: &str) -> std::fmt::Result {
    for line in text.lines() {
        writeln!(out, "{indent}{line}")?;
    }
    Ok(())
}

async fn explain(pool: &PgPool, args: JobIdArgs) -> anyhow::Result<()> {
    let Some(explanation) = inspect::explain(pool, args.id).await? else {
        return Err(Exit::not_found(format!("no job {}", args.id)).into());
    };
    if args.json {
        return print_json(&explanation);
    }
    let job = &explanation.job;
    let mut out = format!(
        "job {}: {} in queue {}, {}, attempt {} of {}\n",
        job.id, job.kind, job.queue, job.state, job.attempt, job.max_attempts
    );
    if explanation.reasons.is_empty() {
        out.push_str("- nothing holds it back: a worker takes it at its next claim\n");
    }
    for reason in &explanation.reasons {
        writeln!(out, "- {reason}")?;
    }
    print(&out)
}

#[derive(Clone, Copy)]
enum Action {
    Cancel,
    Retry,
    Delete,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::Retry => "retry",
            Self::Delete => "delete",
        }
    }

    fn past(self) -> &'static str {
        match self {
            Self::Cancel => "cancelled",
            Self::Retry => "retried",
            Self::Delete => "deleted",
        }
    }

    /// Its states in a word or two.
    fn states_word(self) -> &'static str {
        match self {
            Self::Cancel => "waiting or running",
            Self::Retry => "failed or cancelled",
            Self::Delete => "finished",
        }
    }

    /// The states of the jobs it acts on.
    fn states(self) -> &'static [JobState] {
        match self {
            Self::Cancel => &[
                JobState::Pending,
                JobState::Scheduled,
                JobState::Available,
                JobState::Running,
                JobState::Retryable,
            ],
            Self::Retry => &[JobState::Failed, JobState::Cancelled],
            Self::Delete => &[JobState::Completed, JobState::Failed, JobState::Cancelled],
        }
    }
}

async fn act(
    action: Action,
    args: ActionArgs,
    pool: impl Future<Output = anyhow::Result<PgPool>>,
) -> anyhow::Result<()> {
    if !args.ids.is_empty() {
        return by_ids(&pool.await?, action, &args.ids, args.json).await;
    }
    let mut filter = filter_of(&args.filter);
    if filter == JobFilter::new() && !args.all {
        bail!(
            "refusing to {} every job without --all: give job ids or a filter (--state, --queue, --kind, --tag, --args, --schedule, --workflow)",
            action.verb()
        );
    }
    // Count what the action would change: the states it acts on, of those asked for.
    let states: Vec<JobState> = if filter.states.is_empty() {
        action.states().to_vec()
    } else {
        let asked = std::mem::take(&mut filter.states);
        action
            .states()
            .iter()
            .copied()
            .filter(|state| asked.contains(state))
            .collect()
    };
    if states.is_empty() {
        bail!(
            "{} acts on {} jobs only, and --state names none of them",
            action.verb(),
            or_list(action.states())
        );
    }
    for state in states {
        filter = filter.state(state);
    }
    bulk(&pool.await?, action, &filter, &args).await
}

/// What `--json` prints for a bulk action.
#[derive(Serialize)]
struct BulkJson {
    action: &'static str,
    /// The jobs the filter matched when counted.
    matched: Count,
    dry_run: bool,
    /// Jobs changed (`null` on a dry run).
    changed: Option<u64>,
    /// Transactions taken (`null` on a dry run).
    batches: Option<u64>,
}

/// What `--json` prints for each id of an action by ids.
#[derive(Serialize)]
struct IdJson {
    id: i64,
    /// `cancelled`, `stop_requested`, `retried`, `deleted`, `not_applicable` or `not_found`.
    outcome: &'static str,
    message: String,
}

async fn bulk(
    pool: &PgPool,
    action: Action,
    filter: &JobFilter,
    args: &ActionArgs,
) -> anyhow::Result<()> {
    let matched = inspect::count_jobs(pool, filter).await?;
    let what = describe(filter, action, matched.value() != 1);
    let report = |changed: Option<u64>, batches: Option<u64>| BulkJson {
        action: action.verb(),
        matched,
        dry_run: args.dry_run,
        changed,
        batches,
    };
    if matched == Count::Exact(0) {
        if args.json {
            return print_json(&report(Some(0), Some(0)));
        }
        return print(&format!("no {what}: nothing to {}\n", action.verb()));
    }
    if args.dry_run {
        if args.json {
            return print_json(&report(None, None));
        }
        return print(&format!(
            "{matched} {what} would be {} (dry run: nothing changed)\n",
            action.past()
        ));
    }
    if !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to {} {matched} {what} without confirmation: there is no terminal to ask on; pass --yes (or --dry-run to count only)",
                action.verb()
            );
        }
        if !confirm(&format!(
            "{matched} {what} would be {}. Proceed? [y/N] ",
            action.past()
        ))? {
            return Err(Exit {
                code: exit::ERROR,
                message: Some("not confirmed: nothing changed".to_owned()),
            }
            .into());
        }
    }
    let done = match action {
        Action::Cancel => inspect::cancel_jobs(pool, filter).await?,
        Action::Retry => inspect::retry_jobs(pool, filter).await?,
        Action::Delete => inspect::delete_jobs(pool, filter).await?,
    };
    if args.json {
        return print_json(&report(Some(done.changed), Some(done.batches)));
    }
    let mut out = format!("{} {}", action.past(), text::plural(done.changed, "job"));
    if let Action::Cancel = action {
        out.push_str(" (running ones are asked to stop)");
    }
    out.push('\n');
    print(&out)
}

/// Asks on the terminal; whether the answer is yes.
pub(crate) fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::Write as _;
    let mut stderr = std::io::stderr().lock();
    stderr.write_all(question.as_bytes())?;
    stderr.flush()?;
    let mut answer = String::new();
    std::io::stdin()
        .read_line(&mut answer)
        .context("could not read the answer")?;
    Ok(matches!(
        answer.trim().to_ascii_lowercase().as_str(),
        "y" | "yes"
    ))
}

/// `failed jobs in queue "emails" of kind "send_email" tagged "vip"`; all the states `action`
/// acts on are said in a word (`finished jobs`).
fn describe(filter: &JobFilter, action: Action, plural: bool) -> String {
    let quoted = |names: &[String]| {
        names
            .iter()
            .map(|name| format!("{name:?}"))
            .collect::<Vec<_>>()
    };
    let states = if filter.states.len() == action.states().len() {
        action.states_word().to_owned()
    } else {
        or_list(&filter.states)
    };
    let mut text = format!("{states} job{}", if plural { "s" } else { "" });
    let mut part = |label: &str, plural: &str, names: Vec<String>, join: &str| {
        if !names.is_empty() {
            let label = if names.len() > 1 { plural } else { label };
            let _ = write!(text, " {label} {}", names.join(join));
        }
    };
    part("in queue", "in queues", quoted(&filter.queues), " or ");
    part("of kind", "of kinds", quoted(&filter.kinds), " or ");
    part("tagged", "tagged", quoted(&filter.tags), " and ");
    let schedule = filter.schedule.iter().cloned().collect::<Vec<_>>();
    part("of schedule", "of schedule", quoted(&schedule), "");
    if let Some(workflow) = filter.workflow {
        let _ = write!(text, " of workflow {workflow}");
    }
    if let Some(args) = &filter.args {
        let _ = write!(text, " with arguments containing {args}");
    }
    text
}

/// `failed or cancelled`, `scheduled, available or running`.
fn or_list(states: &[JobState]) -> String {
    let names: Vec<&str> = states.iter().map(|state| state.as_str()).collect();
    match names.split_last() {
        Some((last, [])) => (*last).to_owned(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

/// Acts on each job of `ids`, saying what became of each; exit code 1 if some job is in a
/// state the action does not apply to, else 3 if some job does not exist.
async fn by_ids(pool: &PgPool, action: Action, ids: &[i64], json: bool) -> anyhow::Result<()> {
    let mut results = Vec::new();
    let mut out = String::new();
    let (mut inapplicable, mut missing) = (false, false);
    for &id in ids {
        let done = match action {
            Action::Cancel => match skiplock::cancel(pool, id).await? {
                Some(JobState::Cancelled) => Ok(("cancelled", format!("job {id} cancelled"))),
                Some(JobState::Running) => Ok((
                    "stop_requested",
                    format!("job {id} is running: asked to stop"),
                )),
                Some(state) => Err(Some(state)),
                None => Err(None),
            },
            Action::Retry if skiplock::retry(pool, id).await? => {
                Ok(("retried", format!("job {id} put back to run now")))
            }
            Action::Delete if inspect::delete_job(pool, id).await? => {
                Ok(("deleted", format!("job {id} deleted")))
            }
            Action::Retry | Action::Delete => Err(inspect::job(pool, id).await?.map(|j| j.state)),
        };
        let (outcome, message) = match done {
            Ok((outcome, message)) => {
                writeln!(out, "{message}")?;
                (outcome, message)
            }
            Err(Some(state)) => {
                inapplicable = true;
                let message = match action {
                    // In a state the action applies to, and still refused: say why.
                    Action::Retry if action.states().contains(&state) => format!(
                        "job {id} is {state} but was not put back: a job it depends on failed \
                         or was cancelled (retry its workflow), or a duplicate holds its unique key"
                    ),
                    Action::Delete if action.states().contains(&state) => format!(
                        "job {id} is {state} but was not deleted: it belongs to a workflow, deleted whole by retention"
                    ),
                    _ => format!(
                        "job {id} is {state}: only {} jobs can be {}",
                        or_list(action.states()),
                        action.past()
                    ),
                };
                eprintln_error(&message);
                ("not_applicable", message)
            }
            Err(None) => {
                missing = true;
                let message = format!("no job {id}");
                eprintln_error(&message);
                ("not_found", message)
            }
        };
        results.push(IdJson {
            id,
            outcome,
            message,
        });
    }
    if json {
        print_json(&results)?;
    } else {
        print(&out)?;
    }
    match (inapplicable, missing) {
        (true, _) => Err(Exit::silent(exit::ERROR).into()),
        (false, true) => Err(Exit::silent(exit::NOT_FOUND).into()),
        (false, false) => Ok(()),
    }
}

#[allow(clippy::print_stderr)]
fn eprintln_error(message: &str) {
    eprintln!("error: {message}");
}
