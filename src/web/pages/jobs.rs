//! The job list: filters, keyset pages, and bulk actions on a filter.

use axum::Form;
use axum::extract::Query;
use axum::response::IntoResponse;
use maud::{Markup, html};
use serde::Deserialize;

use super::{
    Ctx, Nav, PageError, PageResult, count, grouped, layout, see_other, state_badge, when,
};
use crate::JobState;
use crate::inspect::{self, JobSummary};
use crate::web::params::{JobParams, matches_everything};
use crate::web::security::CSRF_FIELD;
use crate::web::{Field, Shared, State};

const STATES: [JobState; 8] = [
    JobState::Pending,
    JobState::Scheduled,
    JobState::Available,
    JobState::Running,
    JobState::Retryable,
    JobState::Completed,
    JobState::Failed,
    JobState::Cancelled,
];

/// What a bulk action did, in the query string of the list it redirects to:
/// `?…&done=5&batches=1&action=retry`. Only shown, never acted on (a link may forge it).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Flash {
    #[serde(default)]
    done: Option<String>,
    #[serde(default)]
    batches: Option<String>,
    #[serde(default)]
    action: Option<String>,
}

impl Flash {
    /// The past tense of a known action, how many jobs changed and in how many batches.
    fn message(&self) -> Option<(&'static str, u64, Option<u64>)> {
        let done = self.done.as_deref()?.parse().ok()?;
        let batches = self.batches.as_deref().and_then(|b| b.parse().ok());
        let verb = match self.action.as_deref()? {
            "cancel" => "cancelled",
            "retry" => "retried",
            "delete" => "deleted",
            _ => return None,
        };
        Some((verb, done, batches))
    }
}

pub(crate) async fn page(
    state: State,
    ctx: Ctx,
    Query(params): Query<JobParams>,
    Query(flash): Query<Flash>,
) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let query = params.query().map_err(PageError::bad_request)?;
    shared
        .check_filter(&query.filter)
        .map_err(PageError::bad_request)?;
    let mut page = inspect::jobs(&shared.pool, &query).await?;
    let total = inspect::count_jobs(&shared.pool, &query.filter).await?;
    for job in &mut page.jobs {
        redact_summary(&shared, job);
    }
    let filtered = !matches_everything(&query.filter);
    let body = html! {
        div.page-head {
            h1 { "Jobs" }
            span.muted { (count(total)) " matching" }
        }
        @if let Some((verb, changed, batches)) = flash.message() {
            div.card.flash role="status" data-bulk-changed=(changed) {
                strong { (grouped(changed)) } " jobs " (verb)
                @if let Some(batches) = batches { ", in " (batches) " batches" }
                "."
            }
        }
        (filter_form(&ctx, &params))
        @if page.jobs.is_empty() {
            p.empty { "No job matches." }
        } @else {
            table.grid.jobs {
                thead { tr {
                    th.n { "ID" } th { "State" } th { "Kind" } th { "Queue" } th { "Arguments" }
                    th.n { "Attempt" } th { "Created" } th { "Last activity" } th { "Last error" }
                } }
                tbody {
                    @for job in &page.jobs {
                        tr data-job=(job.id) {
                            td.n { a href=(ctx.link(&format!("/jobs/{}", job.id))) { (job.id) } }
                            td { (state_badge(job.state)) }
                            td.kind { (job.kind) }
                            td { (job.queue) }
                            td.args { code { (job.args_preview) } }
                            td.n { (job.attempt) "/" (job.max_attempts) }
                            td { (when(job.created_at)) }
                            td { (when(job.finished_at.or(job.attempted_at).or(job.run_at))) }
                            td.error { @if let Some(error) = &job.last_error { (error.message) } }
                        }
                    }
                }
            }
        }
        div.pager {
            @if query.after.is_some() {
                a.btn href=(ctx.link(&format!("/jobs?{}", params.with_after(None)))) { "← first page" }
            }
            @if let Some(next) = page.next {
                a.btn href=(ctx.link(&format!("/jobs?{}", params.with_after(Some(next))))) { "next page →" }
            }
            @if page.window_ended && page.next.is_some() {
                span.muted { "(searched a window of ids: the next page goes on from there)" }
            }
        }
        @if ctx.can_act() && filtered {
            (bulk_form(&ctx, &params))
        }
    };
    Ok(layout(&ctx, Nav::Jobs, "Jobs", None, body).into_response())
}

/// Removes what a redactor would have to see whole: the argument preview is cut text.
pub(crate) fn redact_summary(shared: &Shared, job: &mut JobSummary) {
    if shared.redacts() {
        job.args_preview = format!("({} bytes: open the job)", job.args_bytes);
    }
    if let Some(error) = job.last_error.as_mut() {
        error.message = shared.redacted_message(&job.kind, &error.message);
    }
    let _ = Field::Args;
}

fn filter_form(ctx: &Ctx, p: &JobParams) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let chosen = value(&p.state);
    html! {
        form.filters method="get" action=(ctx.link("/jobs")) {
            label { "State"
                select name="state" {
                    option value="" selected[chosen.is_empty()] { "any" }
                    @for s in STATES {
                        option value=(s.as_str()) selected[chosen == s.as_str()] { (s.as_str()) }
                    }
                    @if !chosen.is_empty() && !STATES.iter().any(|s| s.as_str() == chosen) {
                        option value=(chosen) selected { (chosen) }
                    }
                }
            }
            label { "Queue" input type="text" name="queue" value=(value(&p.queue)) placeholder="any"; }
            label { "Kind" input type="text" name="kind" value=(value(&p.kind)) placeholder="any"; }
            label { "Tag" input type="text" name="tag" value=(value(&p.tag)) placeholder="any"; }
            label.wide { "Arguments contain (JSON)" input type="text" name="args" value=(value(&p.args)) placeholder=r#"{"user_id": 42}"#; }
            label { "Order"
                select name="order" {
                    option value="newest" selected[p.order.as_deref() != Some("oldest")] { "newest first" }
                    option value="oldest" selected[p.order.as_deref() == Some("oldest")] { "oldest first" }
                }
            }
            @if let Some(schedule) = &p.schedule { input type="hidden" name="schedule" value=(schedule); }
            @if let Some(workflow) = p.workflow.as_deref().map(str::trim).filter(|w| !w.is_empty()) {
                input type="hidden" name="workflow" value=(workflow);
                span.filter-chip { "workflow " a href=(ctx.link(&format!("/workflows/{}", super::overview::urlencode(workflow)))) { (workflow) } }
            }
            button.btn.primary type="submit" { "Filter" }
            a.btn href=(ctx.link("/jobs")) { "Clear" }
        }
    }
}

fn hidden_filter(p: &JobParams) -> Markup {
    let fields = [
        ("state", &p.state),
        ("queue", &p.queue),
        ("kind", &p.kind),
        ("tag", &p.tag),
        ("schedule", &p.schedule),
        ("workflow", &p.workflow),
        ("args", &p.args),
    ];
    html! {
        @for (name, value) in fields {
            @if let Some(value) = value { input type="hidden" name=(name) value=(value); }
        }
    }
}

fn bulk_form(ctx: &Ctx, p: &JobParams) -> Markup {
    html! {
        form.bulk.card method="post" action=(ctx.link("/jobs/bulk")) {
            input type="hidden" name=(CSRF_FIELD) value=(ctx.csrf);
            (hidden_filter(p))
            span { "Every job matching this filter:" }
            button.btn.btn-retry type="submit" name="action" value="retry" data-action="bulk-retry" { "Retry…" }
            button.btn.btn-cancel type="submit" name="action" value="cancel" data-action="bulk-cancel" { "Cancel…" }
            button.btn.btn-delete type="submit" name="action" value="delete" data-action="bulk-delete" { "Delete finished…" }
            span.muted { "You confirm on the next page, with the count." }
        }
    }
}

/// A bulk action's form: the filter, the action, and `confirm=yes` once confirmed.
#[derive(Deserialize)]
pub(crate) struct BulkForm {
    #[serde(flatten)]
    params: JobParams,
    action: String,
    #[serde(default)]
    confirm: Option<String>,
}

pub(crate) async fn bulk(state: State, ctx: Ctx, Form(form): Form<BulkForm>) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let filter = form.params.filter().map_err(PageError::bad_request)?;
    shared
        .check_filter(&filter)
        .map_err(PageError::bad_request)?;
    if matches_everything(&filter) {
        return Err(PageError::bad_request(
            "an empty filter matches every job: give at least one condition",
        ));
    }
    let (verb, applies) = match form.action.as_str() {
        "cancel" => (
            "Cancel",
            "pending, scheduled, available, retryable and running jobs (running ones are asked to stop)",
        ),
        "retry" => (
            "Retry",
            "failed and cancelled jobs (and retryable ones, now)",
        ),
        "delete" => (
            "Delete",
            "finished jobs only: completed, failed and cancelled",
        ),
        other => {
            return Err(PageError::bad_request(format!(
                "no bulk action is called {other:?}"
            )));
        }
    };
    let back = format!("/jobs?{}", form.params.with_after(None));
    if form.confirm.as_deref() != Some("yes") {
        let matching = inspect::count_jobs(&shared.pool, &filter).await?;
        let body = html! {
            h1 { (verb) " jobs" }
            div.card.confirm {
                p { "The filter matches " strong { (count(matching)) } " jobs. " (verb) " applies to " (applies) "; the others are left as they are." }
                p.muted { "It runs in batches of " (grouped(inspect::BATCH_SIZE as u64)) ", each its own short transaction." }
                form method="post" action=(ctx.link("/jobs/bulk")) {
                    input type="hidden" name=(CSRF_FIELD) value=(ctx.csrf);
                    (hidden_filter(&form.params))
                    input type="hidden" name="action" value=(form.action);
                    input type="hidden" name="confirm" value="yes";
                    button type="submit" class={"btn btn-" (form.action)} data-action={"confirm-" (form.action)} { (verb) " them" }
                    " "
                    a.btn href=(ctx.link(&back)) { "Back" }
                }
            }
        };
        return Ok(layout(&ctx, Nav::Jobs, "Confirm", None, body).into_response());
    }
    let report = match form.action.as_str() {
        "cancel" => inspect::cancel_jobs(&shared.pool, &filter).await?,
        "retry" => inspect::retry_jobs(&shared.pool, &filter).await?,
        _ => inspect::delete_jobs(&shared.pool, &filter).await?,
    };
    tracing::info!(action = %form.action, changed = report.changed, "dashboard bulk action");
    // 303 to the list, which says what was done: reloading it does not act again.
    let mut done = form_urlencoded::Serializer::new(form.params.with_after(None));
    done.append_pair("done", &report.changed.to_string());
    done.append_pair("batches", &report.batches.to_string());
    done.append_pair("action", &form.action);
    Ok(see_other(&ctx, &format!("/jobs?{}", done.finish())))
}
