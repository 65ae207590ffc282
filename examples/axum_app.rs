//! skiplock inside an axum service: handlers enqueue jobs in the same transaction as their own
//! writes, and the worker runs in the same process.
//!
//! ```text
//! cargo run --example axum_app
//! curl -s -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"email": "ada@example.com", "total_cents": 4200}'
//! curl -s localhost:3000/orders/1
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL (removed at exit). `PORT` picks the
//! port (default 3000). Ctrl-C stops the server and then the worker, gracefully.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use skiplock::{Handler, Job, JobContext, JobError, Worker};
use skiplock_testing::embedded::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Email the order confirmation. Enqueued by `POST /orders` in the order's own transaction.
#[derive(Serialize, Deserialize)]
struct SendOrderConfirmation {
    order_id: i64,
}

impl Job for SendOrderConfirmation {
    const KIND: &'static str = "send_order_confirmation";
    const QUEUE: &'static str = "mail";
}

impl Handler<PgPool> for SendOrderConfirmation {
    type Output = String;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<String, JobError> {
        let email: Option<String> = sqlx::query_scalar("SELECT email FROM orders WHERE id = $1")
            .bind(self.order_id)
            .fetch_optional(ctx.state())
            .await?;
        // The job only exists if the order committed, so a missing order is a real anomaly.
        let email = email.ok_or_else(|| JobError::permanent("order not found"))?;
        sqlx::query("UPDATE orders SET confirmed_at = now() WHERE id = $1")
            .bind(self.order_id)
            .execute(ctx.state())
            .await?;
        Ok(format!(
            "confirmation for order {} sent to {email}",
            self.order_id
        ))
    }
}

#[derive(Deserialize)]
struct NewOrder {
    email: String,
    total_cents: i64,
}

#[derive(Serialize)]
struct Created {
    order_id: i64,
    job_id: i64,
}

#[derive(Serialize)]
struct OrderView {
    order_id: i64,
    email: String,
    total_cents: i64,
    confirmed: bool,
    confirmation_job: Option<JobView>,
}

#[derive(Serialize)]
struct JobView {
    id: i64,
    state: String,
    attempt: i32,
    result: Option<serde_json::Value>,
}

/// Every handler error becomes a 500 with a one-line body, and is logged.
struct AppError(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %format!("{:#}", self.0), "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
    }
}

/// Inserts the order and enqueues its confirmation in ONE transaction: both or neither.
async fn create_order(
    State(pool): State<PgPool>,
    Json(order): Json<NewOrder>,
) -> Result<Response, AppError> {
    if !order.email.contains('@') || order.total_cents <= 0 {
        let message = "email must be an address and total_cents positive";
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, message).into_response());
    }
    let mut tx = pool.begin().await?;
    let order_id: i64 =
        sqlx::query_scalar("INSERT INTO orders (email, total_cents) VALUES ($1, $2) RETURNING id")
            .bind(&order.email)
            .bind(order.total_cents)
            .fetch_one(&mut *tx)
            .await?;
    let job_id = skiplock::enqueue(&mut *tx, &SendOrderConfirmation { order_id }).await?;
    sqlx::query("UPDATE orders SET confirmation_job = $1 WHERE id = $2")
        .bind(job_id)
        .bind(order_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(Created { order_id, job_id })).into_response())
}

async fn show_order(
    State(pool): State<PgPool>,
    Path(order_id): Path<i64>,
) -> Result<Response, AppError> {
    let row: Option<(String, i64, bool, i64)> = sqlx::query_as(
        "SELECT email, total_cents, confirmed_at IS NOT NULL, confirmation_job FROM orders WHERE id = $1",
    )
    .bind(order_id)
    .fetch_optional(&pool)
    .await?;
    let Some((email, total_cents, confirmed, job_id)) = row else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let confirmation_job = skiplock::get_job(&pool, job_id).await?.map(|job| JobView {
        id: job.id,
        state: job.state.to_string(),
        attempt: job.attempt,
        result: job.result,
    });
    Ok(Json(OrderView {
        order_id,
        email,
        total_cents,
        confirmed,
        confirmation_job,
    })
    .into_response())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skiplock=info,axum_app=info".into()),
        )
        .with_ansi(std::io::stdout().is_terminal())
        .init();

    let (url, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            (server.url(), Some(server))
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&url)
        .await
        .context("could not connect to the database")?;
    skiplock::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS orders (
             id bigserial PRIMARY KEY,
             email text NOT NULL,
             total_cents bigint NOT NULL,
             confirmation_job bigint,
             confirmed_at timestamptz
         )",
    )
    .execute(&pool)
    .await?;

    // The worker runs beside the HTTP server, in the same process. Handlers get the application's
    // pool as their state; the worker's own claims, completions and renewals use small pools of
    // its own, connected with the same options.
    let worker = Worker::builder(pool.clone(), pool.clone())
        .register::<SendOrderConfirmation>()
        .shutdown_timeout(Duration::from_secs(10))
        .build()?
        .start();

    let app = Router::new()
        .route("/orders", post(create_order))
        .route("/orders/{id}", get(show_order))
        .with_state(pool.clone());
    let port = std::env::var("PORT").unwrap_or_else(|_| "3000".into());
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("listening on http://{}", listener.local_addr()?);

    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            signal.cancel();
        }
    });
    axum::serve(listener, app)
        .with_graceful_shutdown(stop.cancelled_owned())
        .await?;
    // The server has drained its requests; now let running jobs finish.
    worker.shutdown().await?;
    pool.close().await;
    Ok(())
}
