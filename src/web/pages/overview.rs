//! The overview: every queue's counts, throughput and failures, pickup lag, workers and
//! health warnings. The same data feeds `/api/v1/overview` and the live stream.

use std::sync::Arc;

use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use maud::html;
use serde::Serialize;
use sqlx::PgPool;

use super::{Ctx, Nav, PageResult, count, data_json, duration, grouped, layout};
use crate::inspect::{
    self, Count, HealthReport, InspectError, QueueInfo, Severity, ThroughputBucket, WorkerStatus,
};
use crate::web::State;

/// Counts over every queue.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Totals {
    pending: u64,
    scheduled: u64,
    available: u64,
    running: u64,
    retryable: u64,
    completed: u64,
    failed: u64,
    cancelled: u64,
    /// Whether every count summed is exact.
    exact: bool,
}

/// Workers by status.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Workers {
    alive: u64,
    unresponsive: u64,
    slots: u64,
}

/// What the overview shows.
#[derive(Debug, Serialize)]
pub(crate) struct Overview {
    at: DateTime<Utc>,
    queues: Vec<QueueInfo>,
    totals: Totals,
    workers: Workers,
    /// The last hour, by minute.
    minutes: Vec<ThroughputBucket>,
    /// The last day, by ten minutes.
    days: Option<Arc<Vec<ThroughputBucket>>>,
}

/// Reads the overview; `day` is the day chart when the caller has a recent one.
pub(crate) async fn read(
    pool: &PgPool,
    day: Option<Arc<Vec<ThroughputBucket>>>,
) -> Result<Overview, InspectError> {
    let queues = inspect::queues(pool).await?;
    let fleet = inspect::workers(pool).await?;
    let minutes = inspect::throughput(pool, 60, 1).await?;
    let days = match day {
        Some(day) => Some(day),
        None => Some(Arc::new(inspect::throughput(pool, 144, 10).await?)),
    };
    let mut totals = Totals {
        exact: true,
        ..Totals::default()
    };
    for q in &queues {
        let add = |total: &mut u64, c: Count| *total += c.value();
        add(&mut totals.pending, q.pending);
        add(&mut totals.scheduled, q.scheduled);
        add(&mut totals.available, q.available);
        add(&mut totals.running, q.running);
        add(&mut totals.retryable, q.retryable);
        add(&mut totals.completed, q.completed);
        add(&mut totals.failed, q.failed);
        add(&mut totals.cancelled, q.cancelled);
        totals.exact &= [
            q.pending,
            q.scheduled,
            q.available,
            q.running,
            q.retryable,
            q.completed,
            q.failed,
            q.cancelled,
        ]
        .iter()
        .all(|c| c.is_exact());
    }
    let mut workers = Workers::default();
    for w in &fleet {
        match w.status {
            WorkerStatus::Alive => {
                workers.alive += 1;
                workers.slots += w
                    .queues
                    .iter()
                    .filter_map(|q| q.concurrency)
                    .map(u64::from)
                    .sum::<u64>();
            }
            WorkerStatus::Unresponsive => workers.unresponsive += 1,
            _ => {}
        }
    }
    Ok(Overview {
        at: Utc::now(),
        queues,
        totals,
        workers,
        minutes,
        days,
    })
}

pub(crate) async fn page(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let view = read(&shared.pool, None).await?;
    let health = shared.cached_health().await.map(|report| {
        let mut report = HealthReport::clone(&report);
        super::health::scrub(ctx.access, &mut report);
        report
    });
    let t = &view.totals;
    let tiles = [
        ("available", "Waiting", t.available),
        ("running", "Running", t.running),
        ("scheduled", "Scheduled", t.scheduled),
        ("pending", "Waiting on jobs", t.pending),
        ("retryable", "Retrying", t.retryable),
        ("failed", "Failed", t.failed),
        ("completed", "Completed", t.completed),
    ];
    let hour_done: u64 = view.minutes.iter().map(|b| b.completed).sum();
    let hour_failed: u64 = view.minutes.iter().map(|b| b.failed).sum();
    let body = html! {
        h1 { "Overview" }
        @if let Some(report) = &health {
            @let warnings: Vec<_> = report.checks.iter().filter(|c| matches!(c.severity, Severity::Warning | Severity::Critical)).collect();
            @if !warnings.is_empty() {
                section.alerts {
                    @for check in warnings {
                        a class={"alert alert-" (check.severity.as_str())} href=(ctx.link("/health")) {
                            strong { (super::check_title(check.name)) } ": " (check.summary)
                        }
                    }
                }
            }
        }
        section.tiles {
            @for (key, label, n) in tiles {
                a class={"tile tile-" (key)} href=(ctx.link(&format!("/jobs?state={key}"))) {
                    span.tile-label { (label) }
                    span.tile-value.bad[key == "failed" && n > 0] data-total=(key) { (grouped(n)) }
                }
            }
            div.tile.tile-workers {
                span.tile-label { "Workers" }
                span.tile-value data-workers="alive" { (view.workers.alive) }
                span.tile-sub {
                    span data-workers="slots" { (view.workers.slots) } " slots"
                    @if view.workers.unresponsive > 0 { " · " span.warn data-workers="unresponsive" { (view.workers.unresponsive) " unresponsive" } }
                }
            }
        }
        section.charts {
            div.card {
                div.card-head {
                    h2 { "Last hour" }
                    span.muted { span data-sum="minutes-completed" { (grouped(hour_done)) } " completed · "
                        span data-sum="minutes-failed" { (grouped(hour_failed)) } " failed" }
                }
                div.chart data-chart="minutes" data-series=(data_json(&view.minutes)) {}
            }
            div.card {
                div.card-head { h2 { "Last day" } span.muted { "per 10 minutes" } }
                div.chart data-chart="days" data-series=(data_json(&view.days)) {}
            }
        }
        section.card {
            div.card-head { h2 { "Queues" } a href=(ctx.link("/queues")) { "details →" } }
            (queue_table(&ctx, &view.queues, false))
        }
    };
    Ok(layout(&ctx, Nav::Overview, "Overview", Some("overview"), body).into_response())
}

/// The table of queues, shared with the queues page.
/// With `actions`, each row has pause/resume buttons (for [`Access::Full`](crate::web::Access::Full)).
pub(crate) fn queue_table(ctx: &Ctx, queues: &[QueueInfo], actions: bool) -> maud::Markup {
    html! {
        @if queues.is_empty() {
            p.empty { "No jobs yet. Enqueue one and it shows up here." }
        } @else {
            table.grid {
                thead { tr {
                    th { "Queue" } th.n { "Waiting" } th.n { "Running" } th.n { "Scheduled" }
                    th.n title="Workflow jobs waiting for the jobs they depend on" { "Pending" } th.n { "Retrying" }
                    th.n { "Failed" } th.n { "Completed" } th.n { "Done / min" } th.n { "Failed / h" } th.n { "Pickup lag" } th.n { "Workers" }
                    @if actions { th { "" } }
                } }
                tbody {
                    @for q in queues {
                        @let jobs = |state: &str| ctx.link(&format!("/jobs?queue={}&state={state}", urlencode(&q.name)));
                        tr data-queue=(q.name) {
                            @let path = |action: &str| format!("/queues/{}/{action}", urlencode(&q.name).replace('+', "%20"));
                            td { a href=(ctx.link(&format!("/jobs?queue={}", urlencode(&q.name)))) { (q.name) }
                                @if let Some(pause) = &q.paused {
                                    " " span.badge.paused data-paused="true"
                                        title={ "paused " (pause.since.format("%Y-%m-%d %H:%M:%S UTC"))
                                            @if let Some(by) = &pause.by { " by " (by) }
                                            @if let Some(reason) = &pause.reason { ": " (reason) } } { "paused" }
                                } }
                            td.n { a href=(jobs("available")) data-count="available" { (count(q.available)) } }
                            td.n { a href=(jobs("running")) data-count="running" { (count(q.running)) } }
                            td.n { a href=(jobs("scheduled")) data-count="scheduled" { (count(q.scheduled)) } }
                            td.n { a href=(jobs("pending")) data-count="pending" { (count(q.pending)) } }
                            td.n { a href=(jobs("retryable")) data-count="retryable" { (count(q.retryable)) } }
                            td.n { a href=(jobs("failed")) class=[(q.failed.value() > 0).then_some("bad")] data-count="failed" { (count(q.failed)) } }
                            td.n { a href=(jobs("completed")) data-count="completed" { (count(q.completed)) } }
                            td.n data-field="completed_last_minute" { (grouped(q.completed_last_minute)) }
                            td.n data-field="failed_last_hour" { (grouped(q.failed_last_hour)) }
                            td.n data-field="lag" { (duration(q.oldest_available_age)) }
                            td.n { (q.workers) " · " (q.concurrency) " slots" }
                            @if actions {
                                td.actions {
                                    @if q.paused.is_some() { (ctx.action(&path("resume"), "resume", "Resume", None)) }
                                    @else { (ctx.action(&path("pause"), "pause", "Pause", Some("Pause this queue? No worker claims its jobs until it is resumed."))) }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Percent-encodes a query value.
pub(crate) fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}
