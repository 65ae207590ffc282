//! Workflows: the recent ones, and one with its jobs and what each waits for.

use axum::extract::{Path, Query};
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::{Ctx, Nav, PageError, PageResult, grouped, layout, see_other, state_badge, when};
use crate::inspect::{self, WORKFLOW_JOBS_PAGE, WorkflowState};
use crate::web::State;
use crate::web::params::{MembersParams, WorkflowParams};

/// How many of the jobs a job waits for its row links to; the rest are counted.
const WAITS_FOR_SHOWN: usize = 10;

/// A workflow's state as a badge, coloured as the job state of the same name.
pub(crate) fn workflow_badge(state: WorkflowState) -> Markup {
    html! { span class={"state state-" (state.as_str())} data-workflow-state=(state.as_str()) { (state.as_str()) } }
}

pub(crate) async fn list(
    state: State,
    ctx: Ctx,
    Query(params): Query<WorkflowParams>,
) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let query = params.query().map_err(PageError::bad_request)?;
    let page = inspect::workflows(&shared.pool, &query).await?;
    let chosen = params.state.as_deref().map(str::trim).unwrap_or_default();
    let body = html! {
        div.page-head {
            h1 { "Workflows" }
            span.muted { "newest first" }
        }
        form.filters method="get" action=(ctx.link("/workflows")) {
            label { "State"
                select name="state" {
                    option value="" selected[chosen.is_empty()] { "any" }
                    option value="running" selected[chosen == "running"] { "running" }
                    option value="finished" selected[chosen == "finished"] { "finished" }
                }
            }
            button.btn.primary type="submit" { "Filter" }
        }
        @if page.workflows.is_empty() {
            p.empty { "No workflow. Enqueue one with Workflow::new(name, chain([…])).enqueue(…), or skiplock.enqueue_workflow(…) in SQL." }
        } @else {
            section.card {
                table.grid.workflows {
                    thead { tr {
                        th.n { "ID" } th { "Name" } th { "State" } th.n { "Jobs" } th.n { "Unfinished" }
                        th { "Created" } th { "Finished" } th { "Cancelled" }
                    } }
                    tbody {
                        @for w in &page.workflows {
                            tr data-workflow=(w.id) {
                                td.n { a href=(ctx.link(&format!("/workflows/{}", w.id))) { (w.id) } }
                                td.name { a href=(ctx.link(&format!("/workflows/{}", w.id))) { (w.name) } }
                                td { (workflow_badge(w.state)) }
                                td.n { a href=(ctx.link(&format!("/jobs?workflow={}", w.id))) { (grouped(w.jobs)) } }
                                td.n { (grouped(w.unfinished)) }
                                td { (when(Some(w.created_at))) }
                                td { (when(w.finished_at)) }
                                td { (when(w.cancelled_at)) }
                            }
                        }
                    }
                }
            }
        }
        div.pager {
            @if query.after.is_some() {
                a.btn href=(ctx.link(&format!("/workflows?{}", params.with_after(None)))) { "← first page" }
            }
            @if let Some(next) = page.next {
                a.btn href=(ctx.link(&format!("/workflows?{}", params.with_after(Some(next))))) { "next page →" }
            }
        }
    };
    Ok(layout(&ctx, Nav::Workflows, "Workflows", None, body).into_response())
}

/// What a cancel did, in the query string of the page it redirects to:
/// `?cancelled=3&stopping=1`. Only shown, never acted on (a link may forge it).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    cancelled: Option<String>,
    #[serde(default)]
    stopping: Option<String>,
}

impl Flash {
    fn message(&self) -> Option<(u64, u64)> {
        let cancelled = self.cancelled.as_deref()?.parse().ok()?;
        let stopping = self.stopping.as_deref()?.parse().ok()?;
        Some((cancelled, stopping))
    }
}

pub(crate) async fn page(
    state: State,
    ctx: Ctx,
    Path(id): Path<i64>,
    Query(params): Query<MembersParams>,
    Query(flash): Query<Flash>,
) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let after = params.after().map_err(PageError::bad_request)?;
    let Some(workflow) = inspect::workflow(&shared.pool, id, after).await? else {
        return Err(PageError::not_found(&format!("workflow {id}")));
    };
    let jobs_link = |state: Option<&str>| match state {
        Some(state) => ctx.link(&format!("/jobs?workflow={id}&state={state}")),
        None => ctx.link(&format!("/jobs?workflow={id}")),
    };
    let next = (workflow.members.len() == WORKFLOW_JOBS_PAGE as usize)
        .then(|| workflow.members.last().map(|m| m.id))
        .flatten();
    let body = html! {
        div.page-head {
            h1 { "Workflow " (workflow.id) " " span.kind { (workflow.name) } }
            span id="workflow-state" data-state=(workflow.state.as_str()) { (workflow_badge(workflow.state)) }
            div.actions {
                @if !workflow.state.is_finished() {
                    (ctx.action(
                        &format!("/workflows/{id}/cancel"),
                        "cancel",
                        "Cancel workflow",
                        Some("Cancel every unfinished job of this workflow? Running jobs are asked to stop."),
                    ))
                }
                @if matches!(workflow.state, WorkflowState::Failed | WorkflowState::Cancelled) {
                    (ctx.action(
                        &format!("/workflows/{id}/retry"),
                        "retry",
                        "Retry workflow",
                        Some("Run this workflow on from where it stopped? Its failed and cancelled jobs are put back; completed ones keep their results."),
                    ))
                }
            }
        }
        @if let Some((cancelled, stopping)) = flash.message() {
            div.card.flash role="status" data-workflow-cancelled=(cancelled) {
                strong { (grouped(cancelled)) } " jobs cancelled"
                @if stopping > 0 { ", " strong { (grouped(stopping)) } " running jobs asked to stop" }
                "."
            }
        }
        div.columns {
            section.card {
                h2 { "Details" }
                dl.details {
                    dt { "Jobs" } dd { a href=(jobs_link(None)) { (grouped(workflow.jobs)) } }
                    dt { "Unfinished" } dd data-field="unfinished" { (grouped(workflow.unfinished)) }
                    dt { "On failure" } dd { (workflow.on_failure) }
                    dt { "Created" } dd { (when(Some(workflow.created_at))) }
                    dt { "Finished" } dd { (when(workflow.finished_at)) }
                    @if workflow.cancelled_at.is_some() { dt { "Cancelled" } dd { (when(workflow.cancelled_at)) } }
                }
            }
            section.card {
                h2 { "Jobs by state" }
                div.state-counts {
                    @for (state, n) in &workflow.states {
                        a.state-count href=(jobs_link(Some(state.as_str()))) data-state-count=(state.as_str()) {
                            (state_badge(*state)) " " span.num { (grouped(*n)) }
                        }
                    }
                }
            }
        }
        section.card {
            div.card-head {
                h2 { "Jobs" }
                span.muted { "by id" @if after > 0 { ", after " (after) } }
            }
            @if workflow.members.is_empty() {
                p.muted { "No job left (deleted, or pruned)." }
            } @else {
                table.grid.members {
                    thead { tr {
                        th.n { "ID" } th { "Kind" } th { "Queue" } th { "State" } th.n { "Attempt" }
                        th { "Finished" } th { "Waits for" }
                    } }
                    tbody {
                        @for job in &workflow.members {
                            tr data-job=(job.id) {
                                td.n { a href=(ctx.link(&format!("/jobs/{}", job.id))) { (job.id) } }
                                td.kind { (job.kind) }
                                td { (job.queue) }
                                td { (state_badge(job.state)) }
                                td.n { (job.attempt) }
                                td { (when(job.finished_at)) }
                                td.waits {
                                    @for dependency in job.depends_on.iter().take(WAITS_FOR_SHOWN) {
                                        a href=(ctx.link(&format!("/jobs/{dependency}"))) data-waits-for=(dependency) { (dependency) } " "
                                    }
                                    @if job.depends_on.len() > WAITS_FOR_SHOWN {
                                        span.muted { "+" (grouped((job.depends_on.len() - WAITS_FOR_SHOWN) as u64)) " more" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            div.pager {
                @if after > 0 {
                    a.btn href=(ctx.link(&format!("/workflows/{id}"))) { "← first jobs" }
                }
                @if let Some(next) = next {
                    a.btn href=(ctx.link(&format!("/workflows/{id}?after={next}"))) { "next jobs →" }
                }
            }
        }
    };
    Ok(layout(&ctx, Nav::Workflows, &format!("Workflow {id}"), None, body).into_response())
}

pub(crate) async fn retry(state: State, ctx: Ctx, Path(id): Path<i64>) -> PageResult {
    let shared = state.0;
    let Some(retried) = crate::workflow::retry(&shared.pool, id).await? else {
        return Err(PageError::not_found(&format!("workflow {id}")));
    };
    tracing::info!(workflow = id, retried, "dashboard: workflow retried");
    Ok(see_other(&ctx, &format!("/workflows/{id}")))
}

pub(crate) async fn cancel(state: State, ctx: Ctx, Path(id): Path<i64>) -> PageResult {
    let shared = state.0;
    let Some(done) = crate::workflow::cancel(&shared.pool, id).await? else {
        return Err(PageError::not_found(&format!("workflow {id}")));
    };
    tracing::info!(
        workflow = id,
        cancelled = done.cancelled,
        stopping = done.stopping,
        "dashboard: workflow cancelled"
    );
    Ok(see_other(
        &ctx,
        &format!(
            "/workflows/{id}?cancelled={}&stopping={}",
            done.cancelled, done.stopping
        ),
    ))
}
