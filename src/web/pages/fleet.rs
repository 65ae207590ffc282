//! Queues, workers and schedules.

use axum::extract::Path;
use axum::response::IntoResponse;
use maud::html;

use super::overview::{queue_table, urlencode};
use super::{Ctx, Nav, PageError, PageResult, layout, see_other, state_badge, when};
use crate::inspect::{self, WorkerStatus};
use crate::web::{Field, State};

pub(crate) async fn queues(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let queues = inspect::queues(&shared.pool).await?;
    let limits = inspect::limits(&shared.pool).await?;
    let body = html! {
        div.page-head { h1 { "Queues" } span.muted { (queues.len()) " queues" } }
        section.card { (queue_table(&ctx, &queues, true)) }
        h2 id="limits" { "Limits" }
        @if limits.is_empty() {
            p.empty { "No concurrency or rate limit. Set one with skiplock::limits::set, skiplock.set_limit(…) in SQL, or skiplock limits set." }
        } @else {
            section.card {
                table.grid.limits {
                    thead { tr { th { "Scope" } th { "Partition key" } th.n { "Max running" } th.n { "Running" } th.n { "Busiest partition" } th { "Rate" } th { "Set" } } }
                    tbody {
                        @for l in &limits {
                            tr data-limit=(l.id) {
                                td { @match &l.scope {
                                    crate::limits::Scope::Queue(q) => { span.muted { "queue " } strong { (q) } },
                                    crate::limits::Scope::Kind(k) => { span.muted { "kind " } strong.kind { (k) } },
                                } }
                                td { @if let Some(key) = &l.partition_key { code { (key) } } @else { span.muted { "-" } } }
                                td.n { @if let Some(n) = l.max_running { (n) } @else { span.muted { "-" } } }
                                td.n { (l.running) @if l.max_running.is_some_and(|n| l.partition_key.is_none() && l.running >= i64::from(n)) { " " span.badge.warn { "full" } } }
                                td.n { @if l.partition_key.is_some() { (l.busiest_partition) } @else { span.muted { "-" } } }
                                td { @if let Some(r) = l.rate { (r.max_starts) " per " (r.period.as_secs_f64()) " s" } @else { span.muted { "-" } } }
                                td { (when(Some(l.updated_at))) @if let Some(by) = &l.updated_by { " " span.muted { "by " (by) } } }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Limits hold across every worker: at most Max running of the scope's jobs at once (per value of the partition key in the jobs' arguments, if set), at most Rate starts per period. Running: the scope's jobs running now." }
        p.muted { "Counts of waiting jobs are exact up to " (super::grouped(inspect::QUEUE_WAITING_EXACT_UP_TO as u64))
            ", of finished jobs up to " (super::grouped(inspect::QUEUE_FINISHED_EXACT_UP_TO as u64))
            "; past that they are PostgreSQL's estimates (shown with ~). Pickup lag: how long the oldest runnable job has waited." }
    };
    Ok(layout(&ctx, Nav::Queues, "Queues", None, body).into_response())
}

pub(crate) async fn workers(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let workers = inspect::workers(&shared.pool).await?;
    let alive = workers
        .iter()
        .filter(|w| w.status == WorkerStatus::Alive)
        .count();
    let body = html! {
        div.page-head { h1 { "Workers" } span.muted { (alive) " alive of " (workers.len()) } }
        @if workers.is_empty() {
            p.empty { "No worker has registered. Start one with Worker::builder(…).build()?.run()." }
        } @else {
            section.card {
                table.grid {
                    thead { tr { th { "Worker" } th { "Status" } th { "Host" } th.n { "PID" } th { "Queues (slots)" } th { "Kinds" } th.n { "Running" } th { "Heartbeat" } th { "Started" } th { "Version" } } }
                    tbody {
                        @for w in &workers {
                            tr data-worker=(w.id) {
                                td { code { (w.id) } }
                                td { span class={"status status-" (w.status.as_str())} { (w.status.as_str()) } }
                                td { (w.host) }
                                td.n { (w.pid) }
                                td { @for q in &w.queues { span.tag { (q.name) @if let Some(c) = q.concurrency { " (" (c) ")" } } " " } }
                                td.kinds { @match &w.kinds { Some(kinds) => { (sorted(kinds).join(", ")) }, None => { span.muted { "any" } } } }
                                td.n { (w.running) }
                                td { (when(Some(w.heartbeat_at))) }
                                td { (when(Some(w.started_at))) }
                                td { @if let Some(v) = &w.version { (v) } }
                            }
                        }
                    }
                }
            }
        }
        p.muted { "Alive: renewing its heartbeat. Unresponsive: it stopped (its jobs return once their leases expire). Stopped and lost workers stay listed for an hour." }
    };
    Ok(layout(&ctx, Nav::Workers, "Workers", None, body).into_response())
}

pub(crate) async fn schedules(state: State, ctx: Ctx) -> PageResult {
    let shared = state.0;
    let ctx = ctx.with_title(&shared);
    let mut schedules = inspect::schedules(&shared.pool).await?;
    for s in &mut schedules {
        let kind = s.schedule.kind.clone();
        shared.redacted(Field::Args, &kind, &mut s.schedule.args);
    }
    let body = html! {
        div.page-head { h1 { "Schedules" } span.muted { (schedules.len()) " schedules" } }
        @if schedules.is_empty() {
            p.empty { "No schedule. Add one with Schedule::new(…) on a worker, or skiplock.add_schedule(…) in SQL." }
        } @else {
            section.card {
                table.grid {
                    thead { tr { th { "Name" } th { "Cron" } th { "Kind" } th { "Queue" } th { "Next fire" } th { "Last fire" } th { "Last job" } th { "" } } }
                    tbody {
                        @for s in &schedules {
                            @let row = &s.schedule;
                            @let path = |action: &str| format!("/schedules/{}/{action}", urlencode(&row.name).replace('+', "%20"));
                            tr data-schedule=(row.name) {
                                td { strong { (row.name) }
                                    @if row.paused { " " span.badge.paused data-paused="true" { "paused" } }
                                    @if !row.active { " " span.badge.muted { "inactive" } }
                                    @if s.overdue { " " span.badge.warn { "overdue" } } }
                                td { code { (row.cron) } " " span.muted { (row.timezone) } }
                                td.kind { (row.kind) }
                                td { (row.queue) }
                                td { @if row.paused { span.muted { "paused" } } @else { (when(row.next_fire_at)) } }
                                td { (when(row.last_fire_at)) }
                                td { @if let Some(job) = &s.last_job {
                                    a href=(ctx.link(&format!("/jobs/{}", job.id))) { "#" (job.id) } " " (state_badge(job.state))
                                } }
                                td.actions {
                                    @if row.paused { (ctx.action(&path("resume"), "resume", "Resume", None)) }
                                    @else { (ctx.action(&path("pause"), "pause", "Pause", None)) }
                                    (ctx.action(&path("run"), "run", "Run now", Some("Enqueue a job of this schedule now?")))
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    Ok(layout(&ctx, Nav::Schedules, "Schedules", None, body).into_response())
}

pub(crate) async fn act(
    state: State,
    ctx: Ctx,
    Path((name, action)): Path<(String, String)>,
) -> PageResult {
    let shared = state.0;
    let found = match action.as_str() {
        "pause" => crate::schedule::pause(&shared.pool, &name).await?,
        "resume" => crate::schedule::resume(&shared.pool, &name).await?,
        "run" => crate::schedule::run_now(&shared.pool, &name)
            .await?
            .is_some(),
        other => return Err(PageError::not_found(&format!("action {other:?}"))),
    };
    if !found {
        return Err(PageError::not_found(&format!("schedule {name:?}")));
    }
    tracing::info!(schedule = %name, action = %action, "dashboard: schedule action");
    Ok(see_other(&ctx, "/schedules"))
}

pub(crate) async fn queue_act(
    state: State,
    ctx: Ctx,
    Path((name, action)): Path<(String, String)>,
) -> PageResult {
    let shared = state.0;
    let changed = match action.as_str() {
        "pause" => {
            crate::queue::pause(&shared.pool, &name, Some("paused from the dashboard")).await?
        }
        "resume" => crate::queue::resume(&shared.pool, &name).await?,
        other => return Err(PageError::not_found(&format!("action {other:?}"))),
    };
    tracing::info!(queue = %name, action = %action, changed, "dashboard: queue action");
    Ok(see_other(&ctx, "/queues"))
}

fn sorted(kinds: &[String]) -> Vec<&str> {
    let mut kinds: Vec<&str> = kinds.iter().map(String::as_str).collect();
    kinds.sort_unstable();
    kinds
}
