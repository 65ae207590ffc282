//! Serving [`Metrics`] over HTTP with axum: [`router`] and [`handler`].

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::Metrics;
use super::registry::Format;

/// A router with `GET /metrics` serving `metrics`, to merge into the application's own:
/// `app.merge(skiplock::metrics::router(metrics))`. It fits any router state.
///
/// Each scrape answers in the format its `Accept` header asks for (OpenMetrics for
/// Prometheus, otherwise the Prometheus text format) and, with
/// [`Metrics::with_database`], runs the database query first. Mount it where only your
/// monitoring can reach it: the metrics name your queues and job kinds.
pub fn router<S>(metrics: Metrics) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    Router::new()
        .route("/metrics", get(handler))
        .with_state(metrics)
}

/// The handler behind [`router`], for a route of your own:
/// `.route("/internal/metrics", get(skiplock::metrics::handler)).with_state(metrics)`.
///
/// Answers `500 Internal Server Error` only when a metric fails to encode.
pub async fn handler(State(metrics): State<Metrics>, headers: HeaderMap) -> Response {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|accept| accept.to_str().ok());
    let format = Format::from_accept(accept);
    match metrics.render(format).await {
        Ok(text) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            )],
            text,
        )
            .into_response(),
        Err(error) => {
            tracing::error!(%error, "could not encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not encode metrics\n",
            )
                .into_response()
        }
    }
}
