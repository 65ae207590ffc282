//! The JSON API under `/api/v1/`: everything the pages show and do.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::Sse;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::Shared;
use super::pages::job::{redact_detail, redact_explanation};
use super::pages::jobs::redact_summary;
use super::pages::{Ctx, overview};
use super::params::{JobParams, MembersParams, WorkflowParams, check_args_len, matches_everything};
use crate::inspect::{self, BulkReport, HealthOptions, InspectError, JobFilter};

pub(crate) fn routes() -> Router<Arc<Shared>> {
    Router::new()
        .route("/api/v1/overview", get(overview_json))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/count", get(count))
        .route("/api/v1/jobs/{id}", get(job))
        // Their own paths (not `POST /api/v1/jobs/{id}`): `GET` on them answers 405.
        .route("/api/v1/jobs/cancel", post(bulk_cancel))
        .route("/api/v1/jobs/retry", post(bulk_retry))
        .route("/api/v1/jobs/delete", post(bulk_delete))
        .route("/api/v1/jobs/{id}/explain", get(explain))
        .route("/api/v1/jobs/{id}/{action}", post(act))
        .route("/api/v1/workflows", get(workflows))
        .route("/api/v1/workflows/{id}", get(workflow))
        .route("/api/v1/workflows/{id}/cancel", post(workflow_cancel))
        .route("/api/v1/workflows/{id}/retry", post(workflow_retry))
        .route("/api/v1/queues", get(queues))
        .route("/api/v1/queues/{name}/{action}", post(queue_act))
        .route("/api/v1/limits", get(limits))
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/schedules", get(schedules))
        .route("/api/v1/schedules/{name}/{action}", post(schedule_act))
        .route("/api/v1/health", get(health))
        .route("/api/v1/events", get(events))
        .route("/api/v1/openapi.json", get(openapi))
        // A path with other methods: 405 (with `Allow`, which the router adds), as JSON.
        .method_not_allowed_fallback(|| async {
            ApiError(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed: see the Allow header".to_owned(),
            )
        })
}

/// The answer for a path nothing serves: `{"error"}` below `/api/`, text elsewhere.
pub(crate) async fn not_found(uri: axum::http::Uri) -> Response {
    if uri.path().starts_with("/api/") {
        ApiError::not_found("no such API path").into_response()
    } else {
        (StatusCode::NOT_FOUND, "not found").into_response()
    }
}

/// The API's OpenAPI 3.1 document (written by hand; a test checks it against the routes).
const OPENAPI: &str = include_str!("assets/openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// An API failure: `{"error": "..."}` with its status.
pub(crate) struct ApiError(StatusCode, String);

impl ApiError {
    fn bad(message: impl Into<String>) -> Self {
        Self(StatusCode::BAD_REQUEST, message.into())
    }

    fn not_found(what: impl Into<String>) -> Self {
        Self(StatusCode::NOT_FOUND, format!("{} not found", what.into()))
    }

    fn unavailable(error: &(dyn std::error::Error + 'static)) -> Self {
        tracing::warn!(error = %crate::handler::error_chain(error), "dashboard API query failed");
        Self(
            StatusCode::SERVICE_UNAVAILABLE,
            "the database did not answer: see the server's log".to_owned(),
        )
    }
}

impl From<InspectError> for ApiError {
    fn from(error: InspectError) -> Self {
        match error {
            InspectError::Invalid(message) => Self::bad(message),
            error => Self::unavailable(&error),
        }
    }
}

impl From<crate::JobQueryError> for ApiError {
    fn from(error: crate::JobQueryError) -> Self {
        Self::unavailable(&error)
    }
}

impl From<crate::workflow::WorkflowError> for ApiError {
    fn from(error: crate::workflow::WorkflowError) -> Self {
        Self::unavailable(&error)
    }
}

impl From<crate::ScheduleError> for ApiError {
    fn from(error: crate::ScheduleError) -> Self {
        Self::unavailable(&error)
    }
}

impl From<crate::queue::QueueError> for ApiError {
    fn from(error: crate::queue::QueueError) -> Self {
        match error {
            crate::queue::QueueError::Database(_) => Self::unavailable(&error),
            invalid => Self::bad(invalid.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

type ApiResult<T> = Result<Json<T>, ApiError>;
type Shared_ = State<Arc<Shared>>;

async fn overview_json(State(shared): Shared_) -> Result<Response, ApiError> {
    let view = overview::read(&shared.pool, None).await?;
    Ok(Json(view).into_response())
}

async fn jobs(
    State(shared): Shared_,
    Query(params): Query<JobParams>,
) -> ApiResult<inspect::JobPage> {
    let query = params.query().map_err(ApiError::bad)?;
    shared.check_filter(&query.filter).map_err(ApiError::bad)?;
    let mut page = inspect::jobs(&shared.pool, &query).await?;
    for job in &mut page.jobs {
        redact_summary(&shared, job);
    }
    Ok(Json(page))
}

#[derive(Serialize)]
struct CountAnswer {
    count: inspect::Count,
}

async fn count(State(shared): Shared_, Query(params): Query<JobParams>) -> ApiResult<CountAnswer> {
    let filter = params.filter().map_err(ApiError::bad)?;
    shared.check_filter(&filter).map_err(ApiError::bad)?;
    let count = inspect::count_jobs(&shared.pool, &filter).await?;
    Ok(Json(CountAnswer { count }))
}

async fn job(State(shared): Shared_, Path(id): Path<i64>) -> ApiResult<inspect::JobDetail> {
    let mut job = inspect::job(&shared.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    redact_detail(&shared, &mut job);
    Ok(Json(job))
}

async fn explain(State(shared): Shared_, Path(id): Path<i64>) -> ApiResult<inspect::Explanation> {
    let mut explanation = inspect::explain(&shared.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("job {id}")))?;
    redact_explanation(&shared, &mut explanation);
    Ok(Json(explanation))
}

#[derive(Serialize)]
struct Changed {
    changed: bool,
}

async fn act(
    State(shared): Shared_,
    Path((id, action)): Path<(i64, String)>,
) -> ApiResult<Changed> {
    let changed = match action.as_str() {
        "cancel" => crate::cancel(&shared.pool, id).await?.is_some(),
        "retry" => crate::retry(&shared.pool, id).await?,
        "delete" => inspect::delete_job(&shared.pool, id).await?,
        other => return Err(ApiError::not_found(format!("action {other:?}"))),
    };
    tracing::info!(job = id, action = %action, changed, "dashboard API: job action");
    Ok(Json(Changed { changed }))
}

/// The body of a bulk action: the filter (see `inspect::JobFilter`); it may not be empty.
#[derive(Deserialize)]
struct BulkBody {
    filter: JobFilter,
}

type BulkJson = Result<Json<BulkBody>, axum::extract::rejection::JsonRejection>;

async fn bulk_cancel(state: Shared_, body: BulkJson) -> ApiResult<BulkReport> {
    bulk(state, "cancel", body).await
}

async fn bulk_retry(state: Shared_, body: BulkJson) -> ApiResult<BulkReport> {
    bulk(state, "retry", body).await
}

async fn bulk_delete(state: Shared_, body: BulkJson) -> ApiResult<BulkReport> {
    bulk(state, "delete", body).await
}

async fn bulk(State(shared): Shared_, action: &str, body: BulkJson) -> ApiResult<BulkReport> {
    let Json(body) = body.map_err(|rejection| ApiError::bad(rejection.body_text()))?;
    check_args_len(&body.filter).map_err(ApiError::bad)?;
    shared.check_filter(&body.filter).map_err(ApiError::bad)?;
    if matches_everything(&body.filter) {
        return Err(ApiError::bad(
            "an empty filter matches every job: give at least one condition",
        ));
    }
    let report = match action {
        "cancel" => inspect::cancel_jobs(&shared.pool, &body.filter).await?,
        "retry" => inspect::retry_jobs(&shared.pool, &body.filter).await?,
        "delete" => inspect::delete_jobs(&shared.pool, &body.filter).await?,
        other => return Err(ApiError::not_found(format!("action {other:?}"))),
    };
    tracing::info!(action = %action, changed = report.changed, "dashboard API: bulk action");
    Ok(Json(report))
}

async fn workflows(
    State(shared): Shared_,
    Query(params): Query<WorkflowParams>,
) -> ApiResult<inspect::WorkflowPage> {
    let query = params.query().map_err(ApiError::bad)?;
    Ok(Json(inspect::workflows(&shared.pool, &query).await?))
}

async fn workflow(
    State(shared): Shared_,
    Path(id): Path<i64>,
    Query(params): Query<MembersParams>,
) -> ApiResult<inspect::WorkflowInfo> {
    let after = params.after().map_err(ApiError::bad)?;
    let workflow = inspect::workflow(&shared.pool, id, after)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {id}")))?;
    Ok(Json(workflow))
}

async fn workflow_cancel(
    State(shared): Shared_,
    Path(id): Path<i64>,
) -> ApiResult<crate::workflow::Cancelled> {
    let done = crate::workflow::cancel(&shared.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {id}")))?;
    tracing::info!(
        workflow = id,
        cancelled = done.cancelled,
        stopping = done.stopping,
        "dashboard API: workflow cancelled"
    );
    Ok(Json(done))
}

/// What `POST /api/v1/workflows/{id}/retry` answers.
#[derive(serde::Serialize)]
struct Retried {
    retried: u64,
}

async fn workflow_retry(State(shared): Shared_, Path(id): Path<i64>) -> ApiResult<Retried> {
    let retried = crate::workflow::retry(&shared.pool, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workflow {id}")))?;
    tracing::info!(workflow = id, retried, "dashboard API: workflow retried");
    Ok(Json(Retried { retried }))
}

async fn queues(State(shared): Shared_) -> ApiResult<Vec<inspect::QueueInfo>> {
    Ok(Json(inspect::queues(&shared.pool).await?))
}

async fn limits(State(shared): Shared_) -> ApiResult<Vec<inspect::LimitStatus>> {
    Ok(Json(inspect::limits(&shared.pool).await?))
}

async fn workers(State(shared): Shared_) -> ApiResult<Vec<inspect::WorkerInfo>> {
    Ok(Json(inspect::workers(&shared.pool).await?))
}

async fn schedules(State(shared): Shared_) -> ApiResult<Vec<inspect::ScheduleInfo>> {
    let mut schedules = inspect::schedules(&shared.pool).await?;
    for s in &mut schedules {
        let kind = s.schedule.kind.clone();
        shared.redacted(super::Field::Args, &kind, &mut s.schedule.args);
    }
    Ok(Json(schedules))
}

#[derive(Serialize)]
struct ScheduleAnswer {
    /// The job `run` enqueued.
    #[serde(skip_serializing_if = "Option::is_none")]
    job: Option<i64>,
}

async fn schedule_act(
    State(shared): Shared_,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<ScheduleAnswer> {
    let (found, job) = match action.as_str() {
        "pause" => (crate::schedule::pause(&shared.pool, &name).await?, None),
        "resume" => (crate::schedule::resume(&shared.pool, &name).await?, None),
        "run" => {
            let job = crate::schedule::run_now(&shared.pool, &name).await?;
            (job.is_some(), job)
        }
        other => return Err(ApiError::not_found(format!("action {other:?}"))),
    };
    if !found {
        return Err(ApiError::not_found(format!("schedule {name:?}")));
    }
    tracing::info!(schedule = %name, action = %action, "dashboard API: schedule action");
    Ok(Json(ScheduleAnswer { job }))
}

#[derive(Serialize)]
struct QueueAnswer {
    /// Whether the call changed the queue (false: it was paused, or running, already).
    changed: bool,
}

async fn queue_act(
    State(shared): Shared_,
    Path((name, action)): Path<(String, String)>,
) -> ApiResult<QueueAnswer> {
    let changed = match action.as_str() {
        "pause" => {
            crate::queue::pause(&shared.pool, &name, Some("paused from the dashboard")).await?
        }
        "resume" => crate::queue::resume(&shared.pool, &name).await?,
        other => return Err(ApiError::not_found(format!("action {other:?}"))),
    };
    tracing::info!(queue = %name, action = %action, changed, "dashboard API: queue action");
    Ok(Json(QueueAnswer { changed }))
}

/// The checks; other sessions' queries and client addresses only for [`Access::Full`](super::Access::Full).
async fn health(State(shared): Shared_, ctx: Ctx) -> ApiResult<inspect::HealthReport> {
    let mut report = inspect::health(&shared.pool, &HealthOptions::default()).await?;
    shared.store_health(report.clone()).await;
    super::pages::health::scrub(ctx.access, &mut report);
    Ok(Json(report))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    job: Option<i64>,
}

/// `text/event-stream`: `overview` events, or `job` events with `?job=ID` (404 for a job that
/// does not exist; the stream ends after the event that says the job finished).
async fn events(State(shared): Shared_, Query(query): Query<EventsQuery>) -> Response {
    match query.job {
        None => Sse::new(shared.hub.overview(&shared)).into_response(),
        Some(id) => match super::job_stream(&shared, id).await {
            Ok(stream) => stream,
            Err((status, message)) => ApiError(status, message.to_owned()).into_response(),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route this file declares is in the OpenAPI document, and nothing else is.
    #[test]
    fn the_openapi_document_lists_every_route() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI).expect("valid JSON");
        let documented: BTreeSet<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .cloned()
            .collect();
        // The routes as declared below `routes()`; `{id}` and `{name}` actions expand to the
        // paths the document lists one by one.
        let source = include_str!("api.rs");
        let declared: BTreeSet<String> = source
            .split(".route(\"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_owned)
            .collect();
        let expand = |path: &str| -> Vec<String> {
            match path {
                "/api/v1/jobs/{id}/{action}" => ["cancel", "retry", "delete"]
                    .map(|a| format!("/api/v1/jobs/{{id}}/{a}"))
                    .to_vec(),
                "/api/v1/schedules/{name}/{action}" => ["pause", "resume", "run"]
                    .map(|a| format!("/api/v1/schedules/{{name}}/{a}"))
                    .to_vec(),
                "/api/v1/queues/{name}/{action}" => ["pause", "resume"]
                    .map(|a| format!("/api/v1/queues/{{name}}/{a}"))
                    .to_vec(),
                other => vec![other.to_owned()],
            }
        };
        let expanded: BTreeSet<String> = declared.iter().flat_map(|p| expand(p)).collect();
        assert_eq!(expanded, documented);
    }
}
