//! One trace from the code that enqueues a job to the worker that runs it, with OpenTelemetry.
//!
//! A "checkout" span enqueues a job with its W3C trace context
//! (`EnqueueOptions::traceparent`); the worker's `trace_context` hook makes each attempt's
//! `skiplock.job` span a child of it (`tracing-opentelemetry`'s `set_parent`), so a tracing
//! backend shows the request and the job it caused as one trace. Spans are printed by
//! OpenTelemetry's stdout exporter (no collector needed); swap in OTLP for a real backend.
//! Exits by itself in a few seconds.
//!
//! ```text
//! cargo run -p skiplock-example-opentelemetry
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL from the server binaries installed on
//! this machine and removes it at exit; with `DATABASE_URL` it uses that database.
#![allow(clippy::print_stdout)]

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use serde::{Deserialize, Serialize};
use skiplock::{EnqueueOptions, Handler, Job, JobContext, JobError, JobState, TraceParent, Worker};
use skiplock_testing::embedded::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Sent after a checkout; runs in the checkout's trace.
#[derive(Serialize, Deserialize)]
struct SendReceipt {
    order_id: i64,
}

impl Job for SendReceipt {
    const KIND: &'static str = "send_receipt";
}

impl Handler<PgPool> for SendReceipt {
    /// The trace id the handler ran in, to compare with the checkout's.
    type Output = String;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<String, JobError> {
        // Inside the attempt's span: a child span shows up in the same trace.
        let render = tracing::info_span!("render_receipt", order_id = self.order_id);
        async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tracing::info!(
                traceparent = ctx.traceparent().map(TraceParent::as_str),
                "receipt rendered"
            );
        }
        .instrument(render)
        .await;
        Ok(trace_id(&tracing::Span::current()))
    }
}

/// The OpenTelemetry trace id of `span`.
fn trace_id(span: &tracing::Span) -> String {
    span.context().span().span_context().trace_id().to_string()
}

/// The W3C `traceparent` of the current span, as the propagator writes it into a carrier.
fn current_traceparent() -> anyhow::Result<TraceParent> {
    let mut carrier = HashMap::new();
    TraceContextPropagator::new().inject_context(&tracing::Span::current().context(), &mut carrier);
    let value = carrier
        .get("traceparent")
        .context("no trace context: is the span sampled?")?;
    Ok(value.parse()?)
}

/// Makes `span` (an attempt's) a child of the span that enqueued the job.
fn link(span: &tracing::Span, parent: &TraceParent) {
    let carrier = HashMap::from([("traceparent".to_owned(), parent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    if let Err(error) = span.set_parent(context) {
        tracing::warn!(%error, "could not link the job's span to its trace");
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(opentelemetry_stdout::SpanExporter::default())
        .build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info,sqlx=warn"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("skiplock-example")))
        .init();

    // A database: DATABASE_URL, or a throwaway server removed when `_server` is dropped.
    let (url, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL...");
            let server = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            (server.url(), Some(server))
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(5)
        .connect(&url)
        .await
        .context("could not connect")?;
    skiplock::migrate(&pool).await?;

    // The request: a span, and a job enqueued inside it with its trace context.
    let checkout = tracing::info_span!("checkout", order_id = 42);
    let (id, checkout_trace) = async {
        let options = EnqueueOptions::new().traceparent(current_traceparent()?);
        let id = skiplock::enqueue_with(&pool, &SendReceipt { order_id: 42 }, options).await?;
        anyhow::Ok((id, trace_id(&tracing::Span::current())))
    }
    .instrument(checkout)
    .await?;

    // The worker: each attempt's span joins the trace its job carries.
    let worker = Worker::builder(pool.clone(), pool.clone())
        .register::<SendReceipt>()
        .trace_context(link)
        .build()?
        .start();
    let job = loop {
        let job = skiplock::get_job(&pool, id).await?.context("the job")?;
        if job.state == JobState::Completed {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    worker.shutdown().await?;
    provider.shutdown()?;

    let handler_trace: String = serde_json::from_value(job.result.unwrap_or_default())?;
    println!("checkout trace: {checkout_trace}");
    println!("job trace:      {handler_trace}");
    anyhow::ensure!(
        handler_trace == checkout_trace,
        "the job ran in another trace"
    );
    println!("the job ran in the checkout's trace");
    Ok(())
}
