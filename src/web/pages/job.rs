//! One job: its arguments and result, attempts and errors, live progress, why it is not
//! running, and the actions that apply.

use axum::extract::Path;
use axum::response::IntoResponse;
use maud::html;

use super::{Ctx, Nav, PageError, PageResult, json, layout, see_other, state_badge, when};
use crate::JobState;
use crate::inspect::{self, Explanation, JobDetail, Reason, percent_of};
use crate::web::redact::REDACTED;
use crate::web::{Field, Shared, State};

/// Applies the redactor to everything of a job that reaches a browser. With a redactor, the
/// unique key is hidden too: it is often derived from the arguments (`unique_by_args` is a
/// SHA-256 of them, unsalted), so a guess at a hidden value could be checked against it.
pub(crate) fn redact_detail(shared: &Shared, job: &mut JobDetail) {
    let kind = job.kind.clone();
    if shared.redacts()
        && let Some(key) = job.unique_key.as_mut()
    {
        REDACTED.clone_into(key);
    }
    shared.redacted(Field::Args, &kind, &mut job.args);
    if let Some(result) = job.result.as_mut() {
        shared.redacted(Field::Result, &kind, result);
    }
    if let Some(progress) = job.progress.as_mut() {
        shared.redacted(Field::Progress, &kind, progress);
    }
    for error in &mut job.errors {
        error.message = shared.redacted_message(&kind, &error.message);
    }
}

pub(crate) fn redact_explanation(shared: &Shared, explanation: &mut Explanation) {
    redact_detail(shared, &mut explanation.job);
    let kind = explanation.job.kind.clone();
    for reason in &mut explanation.reasons {
        if shared.redacts()
            && let Reason::UniqueKeyHeld { key, .. } = reason
        {
            REDACTED.clone_into(key);
        }
        // A limit's partition is the value of one of the arguments' keys: with a redactor it
        // is hidden, as the unique key is, whichever key the redactor hides.
        if shared.redacts()
            && let Reason::Throttled {
                partition: Some(partition),
                ..
            } = reason
        {
            REDACTED.clone_into(partition);
        }
        if let Reason::Finished {
            last_error: Some(error),
            ..
        }
        | Reason::BackingOff {
            last_error: Some(error),
            ..
        } = reason
        {
            error.message = shared.redacted_message(&kind, &error.message);
        }
    }
}

pub(crate) async fn page(state: State, ctx: Ctx, Path(id): Path<i64>) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let Some(mut explanation) = inspect::explain(&shared.pool, id).await? else {
        return Err(PageError::not_found(&format!("job {id}")));
    };
    redact_explanation(&shared, &mut explanation);
    let job = &explanation.job;
    let finished = job.state.is_finished();
    let percent = if job.state == JobState::Completed {
        Some(100.0)
    } else {
        job.progress.as_ref().and_then(percent_of)
    };
    let path = |action: &str| format!("/jobs/{id}/{action}");
    let body = html! {
        div.page-head {
            h1 { "Job " (job.id) " " span.kind { (job.kind) } }
            span id="job-state" data-state=(job.state.as_str()) { (state_badge(job.state)) }
            div.actions {
                @if !finished { (ctx.action(&path("cancel"), "cancel", "Cancel", Some("Cancel this job?"))) }
                @if matches!(job.state, JobState::Failed | JobState::Cancelled | JobState::Retryable) {
                    (ctx.action(&path("retry"), "retry", "Retry now", None))
                }
                // A workflow's jobs are deleted with their workflow (retention).
                @if finished && job.workflow_id.is_none() { (ctx.action(&path("delete"), "delete", "Delete", Some("Delete this job for good?"))) }
            }
        }
        // Every unfinished job has the bar, shown once it runs or reports progress (the
        // script shows it when the first progress arrives).
        @if percent.is_some() || !finished {
            div.card.progress-card hidden[percent.is_none() && job.state != JobState::Running] {
                div.card-head { h2 { "Progress" } span.muted id="job-progress-text" { @if let Some(p) = percent { (format!("{p:.0}%")) } @else { "no progress reported" } } }
                progress id="job-progress" max="100" value=(percent.unwrap_or(0.0)) data-percent=(percent.map_or(String::new(), |p| format!("{p:.1}"))) {}
            }
        }
        @if !explanation.reasons.is_empty() && job.state != JobState::Running {
            section.card.explain {
                h2 { @if finished { "Outcome" } @else { "Why it is not running" } }
                ol { @for reason in &explanation.reasons { li { (reason.to_string()) } } }
            }
        }
        div.columns {
            section.card {
                h2 { "Details" }
                dl.details {
                    dt { "Queue" } dd { a href=(ctx.link(&format!("/jobs?queue={}", super::overview::urlencode(&job.queue)))) { (job.queue) } }
                    dt { "Priority" } dd { (job.priority) }
                    dt { "Attempt" } dd { (job.attempt) " of " (job.max_attempts) }
                    dt { "Created" } dd { (when(job.created_at)) }
                    dt { "Run at" } dd { (when(job.run_at)) }
                    dt { "Last attempt" } dd { (when(job.attempted_at)) }
                    dt { "Finished" } dd { (when(job.finished_at)) }
                    @if job.lease_expires_at.is_some() { dt { "Lease expires" } dd { (when(job.lease_expires_at)) } }
                    @if job.cancel_requested_at.is_some() { dt { "Cancel requested" } dd { (when(job.cancel_requested_at)) } }
                    @if let Some(worker) = &job.worker {
                        dt { "Worker" } dd { code { (worker.id) } " " span class={"status status-" (worker.status.as_str())} { (worker.status.as_str()) } }
                    }
                    @if let Some(schedule) = &job.schedule {
                        dt { "Schedule" } dd { a href=(ctx.link(&format!("/jobs?schedule={}", super::overview::urlencode(schedule)))) { (schedule) } }
                    }
                    @if let Some(workflow) = job.workflow_id {
                        dt { "Workflow" } dd { a href=(ctx.link(&format!("/workflows/{workflow}"))) data-workflow=(workflow) { "#" (workflow) } }
                    }
                    @if !job.tags.is_empty() { dt { "Tags" } dd { @for tag in &job.tags { span.tag { (tag) } " " } } }
                    @if let Some(key) = &job.unique_key { dt { "Unique key" } dd { code { (key) } } }
                    @if let Some(timeout) = job.timeout_secs { dt { "Timeout" } dd { (format!("{timeout} s")) } }
                }
            }
            section.card {
                h2 { "Arguments" }
                (json(&job.args))
                @if let Some(result) = &job.result { h2 { "Result" } div id="job-result" { (json(result)) } }
                @if let Some(progress) = &job.progress { h2 { "Progress value" } div id="job-progress-json" { (json(progress)) } }
            }
        }
        section.card {
            h2 { "Attempts" }
            @if job.errors.is_empty() {
                p.muted { @if job.attempt == 0 { "Not attempted yet." } @else { "No errors." } }
            } @else {
                ol.timeline {
                    @for error in &job.errors {
                        li {
                            div.timeline-head {
                                strong { "Attempt " (error.attempt) } " "
                                span class={"error-kind error-" (error.kind.as_str())} { (error.kind.as_str()) } " "
                                (when(error.at))
                                @if let Some(worker) = &error.worker { " on " code { (worker) } }
                            }
                            pre.error { (error.message) }
                        }
                    }
                }
            }
        }
    };
    let live = (!finished).then(|| id.to_string());
    Ok(layout(&ctx, Nav::Jobs, &format!("Job {id}"), live.as_deref(), body).into_response())
}

pub(crate) async fn act(
    state: State,
    ctx: Ctx,
    Path((id, action)): Path<(i64, String)>,
) -> PageResult {
    let shared = state.0;
    match action.as_str() {
        "cancel" => {
            crate::cancel(&shared.pool, id).await?;
        }
        "retry" => {
            crate::retry(&shared.pool, id).await?;
        }
        "delete" => {
            if inspect::delete_job(&shared.pool, id).await? {
                tracing::info!(job = id, "dashboard: job deleted");
                return Ok(see_other(&ctx, "/jobs"));
            }
            // Not finished, or a workflow's (deleted with its workflow): the page shows it.
        }
        other => return Err(PageError::not_found(&format!("action {other:?}"))),
    }
    tracing::info!(job = id, action = %action, "dashboard: job action");
    Ok(see_other(&ctx, &format!("/jobs/{id}")))
}
