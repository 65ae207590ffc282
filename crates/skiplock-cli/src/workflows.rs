//! `skiplock workflows ...`: list, show, cancel, retry.

use std::fmt::Write as _;
use std::io::IsTerminal as _;

use anyhow::bail;
use chrono::Utc;
use skiplock::JobState;
use skiplock::inspect::{self, WorkflowInfo, WorkflowPhase, WorkflowQuery};
use sqlx::PgPool;

use crate::cli_inspect::{
    WorkflowCancelArgs, WorkflowListArgs, WorkflowPhaseArg, WorkflowRetryArgs, WorkflowShowArgs,
    WorkflowsCommand,
};
use crate::exit::{self, Exit};
use crate::text::{self, Table, print, print_json};

/// How many of the jobs a job waits for `show` names; the rest are counted.
const WAITS_FOR_SHOWN: usize = 10;

pub(crate) async fn run(command: WorkflowsCommand, pool: &PgPool) -> anyhow::Result<()> {
    match command {
        WorkflowsCommand::List(args) => list(pool, args).await,
        WorkflowsCommand::Show(args) => show(pool, args).await,
        WorkflowsCommand::Cancel(args) => cancel(pool, args).await,
        WorkflowsCommand::Retry(args) => retry(pool, args).await,
    }
}

async fn list(pool: &PgPool, args: WorkflowListArgs) -> anyhow::Result<()> {
    let mut query = WorkflowQuery::new().limit(args.limit);
    match args.state {
        Some(WorkflowPhaseArg::Running) => query = query.phase(WorkflowPhase::Running),
        Some(WorkflowPhaseArg::Finished) => query = query.phase(WorkflowPhase::Finished),
        None => {}
    }
    if let Some(after) = args.after {
        query = query.after(after);
    }
    let page = inspect::workflows(pool, &query).await?;
    if args.json {
        return print_json(&page);
    }
    let now = Utc::now();
    let mut out = String::new();
    if page.workflows.is_empty() {
        out.push_str("no workflows\n");
        return print(&out);
    }
    let mut table = Table::new(&[
        ">id",
        "state",
        ">jobs",
        ">unfinished",
        "created",
        "finished",
        "name",
    ]);
    for w in &page.workflows {
        table.row(vec![
            w.id.to_string(),
            w.state.to_string(),
            w.jobs.to_string(),
            w.unfinished.to_string(),
            text::relative(w.created_at, now),
            w.finished_at
                .map_or_else(|| "-".to_owned(), |at| text::relative(at, now)),
            text::truncate(&w.name, 60),
        ]);
    }
    out.push_str(&table.render());
    write!(
        out,
        "{}, newest first",
        text::plural(page.workflows.len(), "workflow")
    )?;
    match page.next {
        Some(next) => writeln!(out, "; next page: --after {next}")?,
        None => out.push('\n'),
    }
    print(&out)
}

async fn show(pool: &PgPool, args: WorkflowShowArgs) -> anyhow::Result<()> {
    let after = args.after.unwrap_or(0);
    let Some(workflow) = inspect::workflow(pool, args.id, after).await? else {
        return Err(Exit::not_found(format!("no workflow {}", args.id)).into());
    };
    if args.json {
        return print_json(&workflow);
    }
    print(&render(&workflow)?)
}

/// The text `show` prints: the workflow's fields, then its jobs as a table.
fn render(workflow: &WorkflowInfo) -> anyhow::Result<String> {
    let now = Utc::now();
    let mut out = String::new();
    writeln!(out, "workflow {}: {:?}", workflow.id, workflow.name)?;
    let mut field = |name: &str, value: String| writeln!(out, "{name:<14}{value}");
    field(
        "state",
        format!(
            "{}, {} of {} unfinished",
            workflow.state,
            workflow.unfinished,
            text::plural(workflow.jobs, "job")
        ),
    )?;
    field("on failure", workflow.on_failure.clone())?;
    field("created", text::time(Some(workflow.created_at), now))?;
    if workflow.finished_at.is_some() {
        field("finished", text::time(workflow.finished_at, now))?;
    }
    if workflow.cancelled_at.is_some() {
        field("cancelled", text::time(workflow.cancelled_at, now))?;
    }
    let states: Vec<String> = workflow
        .states
        .iter()
        .map(|(state, n)| format!("{state} {n}"))
        .collect();
    field("jobs by state", states.join(", "))?;
    if workflow.members.is_empty() {
        out.push_str("no jobs left (deleted, or pruned)\n");
        return Ok(out);
    }
    let mut table = Table::new(&[">id", "state", "queue", "kind", ">attempt", "waits for"]);
    for job in &workflow.members {
        let mut waits: Vec<String> = job
            .depends_on
            .iter()
            .take(WAITS_FOR_SHOWN)
            .map(i64::to_string)
            .collect();
        if job.depends_on.len() > WAITS_FOR_SHOWN {
            waits.push(format!("+{} more", job.depends_on.len() - WAITS_FOR_SHOWN));
        }
        table.row(vec![
            job.id.to_string(),
            job.state.to_string(),
            job.queue.clone(),
            job.kind.clone(),
            job.attempt.to_string(),
            if waits.is_empty() {
                "-".to_owned()
            } else {
                waits.join(", ")
            },
        ]);
    }
    out.push_str(&table.render());
    if workflow.members.len() == inspect::WORKFLOW_JOBS_PAGE as usize
        && let Some(last) = workflow.members.last()
    {
        writeln!(
            out,
            "the first {} jobs from there; more: --after {}",
            workflow.members.len(),
            last.id
        )?;
    }
    Ok(out)
}

async fn cancel(pool: &PgPool, args: WorkflowCancelArgs) -> anyhow::Result<()> {
    let Some(workflow) = inspect::workflow(pool, args.id, i64::MAX).await? else {
        return Err(Exit::not_found(format!("no workflow {}", args.id)).into());
    };
    let what = format!(
        "the {} of workflow {} ({:?})",
        text::plural(workflow.unfinished, "unfinished job"),
        workflow.id,
        workflow.name,
    );
    if workflow.unfinished > 0 && !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to cancel {what} without confirmation: there is no terminal to ask on; pass --yes"
            );
        }
        if !crate::jobs::confirm(&format!(
            "{what} would be cancelled (running ones asked to stop). Proceed? [y/N] "
        ))? {
            return Err(Exit {
                code: exit::ERROR,
                message: Some("not confirmed: nothing changed".to_owned()),
            }
            .into());
        }
    }
    let Some(done) = skiplock::workflow::cancel(pool, args.id).await? else {
        return Err(Exit::not_found(format!("no workflow {}", args.id)).into());
    };
    if args.json {
        return print_json(&done);
    }
    print(&format!(
        "workflow {}: {} cancelled, {} running asked to stop\n",
        args.id,
        text::plural(done.cancelled, "job"),
        done.stopping
    ))
}

async fn retry(pool: &PgPool, args: WorkflowRetryArgs) -> anyhow::Result<()> {
    let Some(workflow) = inspect::workflow(pool, args.id, i64::MAX).await? else {
        return Err(Exit::not_found(format!("no workflow {}", args.id)).into());
    };
    let stopped = workflow
        .states
        .iter()
        .filter(|(state, _)| matches!(state, JobState::Failed | JobState::Cancelled))
        .map(|(_, n)| n)
        .sum::<u64>();
    let what = format!(
        "the {} of workflow {} ({:?})",
        text::plural(stopped, "failed or cancelled job"),
        workflow.id,
        workflow.name,
    );
    if stopped > 0 && !args.yes {
        if !std::io::stdin().is_terminal() {
            bail!(
                "refusing to retry {what} without confirmation: there is no terminal to ask on; pass --yes"
            );
        }
        if !crate::jobs::confirm(&format!("{what} would run again. Proceed? [y/N] "))? {
            return Err(Exit {
                code: exit::ERROR,
                message: Some("not confirmed: nothing changed".to_owned()),
            }
            .into());
        }
    }
    let Some(retried) = skiplock::workflow::retry(pool, args.id).await? else {
        return Err(Exit::not_found(format!("no workflow {}", args.id)).into());
    };
    if args.json {
        return print_json(&serde_json::json!({ "retried": retried }));
    }
    print(&format!(
        "workflow {}: {} put back\n",
        args.id,
        text::plural(retried, "job")
    ))
}
