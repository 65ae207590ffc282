//! The HTML pages, rendered on the server with `maud` (every interpolated value is escaped).

mod fleet;
pub(crate) mod health;
pub(crate) mod job;
pub(crate) mod jobs;
pub(crate) mod overview;
pub(crate) mod workflows;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::Access;
use super::Shared;
use super::security::{Base, CSRF_FIELD, Csrf, Granted};
use crate::JobState;
use crate::inspect::{Count, InspectError};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/", get(overview::page))
        .route("/jobs", get(jobs::page))
        .route("/jobs/bulk", post(jobs::bulk))
        .route("/jobs/{id}", get(job::page))
        .route("/jobs/{id}/{action}", post(job::act))
        .route("/workflows", get(workflows::list))
        .route("/workflows/{id}", get(workflows::page))
        .route("/workflows/{id}/cancel", post(workflows::cancel))
        .route("/workflows/{id}/retry", post(workflows::retry))
        .route("/queues", get(fleet::queues))
        .route("/workers", get(fleet::workers))
        .route("/schedules", get(fleet::schedules))
        .route("/schedules/{name}/{action}", post(fleet::act))
        .route("/queues/{name}/{action}", post(fleet::queue_act))
        .route("/health", get(health::page))
}

/// What every page knows about its request.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub(crate) base: String,
    pub(crate) csrf: String,
    pub(crate) access: Access,
    pub(crate) title: String,
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ctx {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let ext = &parts.extensions;
        Ok(Self {
            base: ext.get::<Base>().map(|b| b.0.clone()).unwrap_or_default(),
            csrf: ext.get::<Csrf>().map(|c| c.0.clone()).unwrap_or_default(),
            access: ext.get::<Granted>().map_or(Access::ReadOnly, |g| g.0),
            title: String::new(),
        })
    }
}

impl Ctx {
    pub(crate) fn with_title(mut self, shared: &Shared) -> Self {
        self.title.clone_from(&shared.title);
        self
    }

    /// A link below the dashboard's root.
    pub(crate) fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(crate) fn can_act(&self) -> bool {
        self.access == Access::Full
    }

    /// A form posting to `path` with one button, when the request may act.
    pub(crate) fn action(
        &self,
        path: &str,
        action: &str,
        label: &str,
        confirm: Option<&str>,
    ) -> Markup {
        if !self.can_act() {
            return html! {};
        }
        html! {
            form.inline method="post" action=(self.link(path)) data-confirm=[confirm] {
                input type="hidden" name=(CSRF_FIELD) value=(self.csrf);
                button type="submit" class={"btn btn-" (action)} data-action=(action) { (label) }
            }
        }
    }
}

/// Which navigation entry is current.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Nav {
    Overview,
    Jobs,
    Workflows,
    Queues,
    Workers,
    Schedules,
    Health,
}

/// The page around `body`. `live` names what the page's script streams (`overview` or a job
/// id), if anything.
pub(crate) fn layout(
    ctx: &Ctx,
    nav: Nav,
    title: &str,
    live: Option<&str>,
    body: Markup,
) -> Html<String> {
    let entries = [
        (Nav::Overview, "/", "Overview"),
        (Nav::Jobs, "/jobs", "Jobs"),
        (Nav::Workflows, "/workflows", "Workflows"),
        (Nav::Queues, "/queues", "Queues"),
        (Nav::Workers, "/workers", "Workers"),
        (Nav::Schedules, "/schedules", "Schedules"),
        (Nav::Health, "/health", "Health"),
    ];
    // Nested at `/admin/jobs`, the overview is `/admin/jobs` (axum routes no trailing slash).
    let root = if ctx.base.is_empty() {
        "/".to_owned()
    } else {
        ctx.base.clone()
    };
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                // No favicon request to the host's root (a 404 there is a console error).
                link rel="icon" href="data:,";
                title { (title) " · " (ctx.title) }
                link rel="stylesheet" href=(ctx.link(&format!("/assets/app.css?v={}", super::assets::VERSION)));
                script src=(ctx.link(&format!("/assets/app.js?v={}", super::assets::VERSION))) defer {}
            }
            body data-base=(ctx.base) data-live=[live] {
                header.top {
                    a.brand href=(root) { span.logo { "◆" } (ctx.title) }
                    nav {
                        @for (entry, path, label) in entries {
                            @let href = if path == "/" { root.clone() } else { ctx.link(path) };
                            a href=(href) class=[(entry == nav).then_some("current")] { (label) }
                        }
                    }
                    @if !ctx.can_act() {
                        span.badge.readonly title="Actions need an authorizer that grants full access" { "read-only" }
                    }
                    span.live-dot hidden[live.is_none()] title="Live: updates as it happens" { "live" }
                }
                main { (body) }
            }
        }
    };
    Html(markup.into_string())
}

/// A page's answer to a failure.
pub(crate) struct PageError {
    status: StatusCode,
    message: String,
}

impl PageError {
    pub(crate) fn not_found(what: &str) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: format!("{what} not found"),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl From<InspectError> for PageError {
    fn from(error: InspectError) -> Self {
        match error {
            InspectError::Invalid(message) => Self::bad_request(message),
            error => {
                tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard query failed");
                Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the database did not answer: see the server's log".to_owned(),
                }
            }
        }
    }
}

impl From<crate::JobQueryError> for PageError {
    fn from(error: crate::JobQueryError) -> Self {
        tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard action failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the database did not answer: see the server's log".to_owned(),
        }
    }
}

impl From<crate::workflow::WorkflowError> for PageError {
    fn from(error: crate::workflow::WorkflowError) -> Self {
        tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard workflow action failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the database did not answer: see the server's log".to_owned(),
        }
    }
}

impl From<crate::ScheduleError> for PageError {
    fn from(error: crate::ScheduleError) -> Self {
        tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard schedule action failed");
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: "the database did not answer: see the server's log".to_owned(),
        }
    }
}

impl From<crate::queue::QueueError> for PageError {
    fn from(error: crate::queue::QueueError) -> Self {
        match error {
            crate::queue::QueueError::Database(_) => {
                tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard queue action failed");
                Self {
                    status: StatusCode::SERVICE_UNAVAILABLE,
                    message: "the database did not answer: see the server's log".to_owned(),
                }
            }
            invalid => Self::bad_request(invalid.to_string()),
        }
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = html! {
            (DOCTYPE)
            html lang="en" {
                head { meta charset="utf-8"; title { "Error" } }
                body { h1 { (self.status.as_u16()) " " (self.status.canonical_reason().unwrap_or("")) } p { (self.message) } }
            }
        };
        (self.status, Html(body.into_string())).into_response()
    }
}

pub(crate) type PageResult = Result<Response, PageError>;

/// Back to `path` after an action.
pub(crate) fn see_other(ctx: &Ctx, path: &str) -> Response {
    Redirect::to(&ctx.link(path)).into_response()
}

// ----- formatting -----

/// `1,234,567`.
pub(crate) fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// A count: exact, `10,000+` or `~1,234,567`, with a title saying which.
pub(crate) fn count(c: Count) -> Markup {
    let (text, title) = match c {
        Count::Exact(n) => (grouped(n), None),
        Count::AtLeast(n) => (format!("{}+", grouped(n)), Some("counted up to here")),
        Count::Estimate(n) => (
            format!("~{}", grouped(n)),
            Some("an estimate from table statistics"),
        ),
    };
    html! { span.num.zero[c.value() == 0] title=[title] { (text) } }
}

/// `3 min ago` or `in 5 s`, with the instant in the title; `—` for none.
pub(crate) fn when(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        None => html! { span.muted { "—" } },
        Some(at) => {
            let delta = Utc::now().signed_duration_since(at);
            let secs = delta.num_seconds();
            let text = if secs >= 0 {
                format!("{} ago", span(secs.unsigned_abs()))
            } else {
                format!("in {}", span(secs.unsigned_abs()))
            };
            html! { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S%.3f UTC")) { (text) } }
        }
    }
}

/// `42 s`, `3 min`, `2 h 5 min`, `3 d 4 h`.
pub(crate) fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

pub(crate) fn duration(d: Option<Duration>) -> Markup {
    match d {
        None => html! { span.muted { "—" } },
        Some(d) if d.as_secs() == 0 => html! { (format!("{} ms", d.as_millis())) },
        Some(d) => html! { (span(d.as_secs())) },
    }
}

pub(crate) fn state_badge(state: JobState) -> Markup {
    html! { span class={"state state-" (state.as_str())} { (state.as_str()) } }
}

/// A health check's name for people (`xmin_horizon` → "Oldest transaction").
pub(crate) fn check_title(name: &str) -> &str {
    match name {
        "xmin_horizon" => "Oldest transaction (xmin horizon)",
        "autovacuum" => "Autovacuum",
        "dead_rows" => "Dead rows",
        "bloat" => "Bloat",
        "index_bloat" => "Index bloat",
        "table_sizes" => "Table sizes",
        "stuck_jobs" => "Stuck jobs",
        "unrunnable_jobs" => "Jobs no worker runs",
        "overdue_schedules" => "Overdue schedules",
        "pickup_lag" => "Pickup lag",
        "migrations" => "Migrations",
        other => other,
    }
}

/// Pretty JSON in a `<pre>`.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string());
    html! { pre.json { (text) } }
}

/// A JSON value for a `data-` attribute (maud escapes it for the attribute).
pub(crate) fn data_json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}
