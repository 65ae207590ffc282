//! Trace context travels with a job: from every enqueue path (Rust and SQL) through the
//! `metadata` column to the attempt's span, its `JobContext` and the worker's `trace_context`
//! hook; garbage is refused by the database and ignored by workers.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use skiplock::{
    EnqueueOptions, Handler, Job, JobContext, JobError, NewJob, TraceParent, Unique, Worker,
};
use sqlx::PgPool;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt as _};

const PARENTS: [&str; 4] = [
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-11111111111111111111111111111111-2222222222222222-00",
    "00-abcdefabcdefabcdefabcdefabcdef01-0123456789abcdef-01",
];

/// What handlers and the hook saw, by job id.
#[derive(Default)]
struct Seen {
    contexts: Mutex<HashMap<i64, Option<String>>>,
    linked: Mutex<Vec<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Serialize, Deserialize)]
struct Traced {}

impl Job for Traced {
    const KIND: &'static str = "traced";
}

impl Handler<Arc<Seen>> for Traced {
    type Output = ();

    async fn handle(self, ctx: JobContext<Arc<Seen>>) -> Result<(), JobError> {
        let parent = ctx.traceparent().map(ToString::to_string);
        lock(&ctx.state().contexts).insert(ctx.id(), parent);
        Ok(())
    }
}

/// Records the fields of every `skiplock.job` span.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<HashMap<String, String>>>>);

struct Fields<'a>(&'a mut HashMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        if attrs.metadata().name() == "skiplock.job" {
            let mut fields = HashMap::new();
            attrs.record(&mut Fields(&mut fields));
            lock(&self.0).push(fields);
        }
    }
}

/// The spans of this test binary, recorded by a global subscriber: a scoped one (`set_default`)
/// misses spans whose callsite another test's thread registered first.
fn spans() -> &'static Spans {
    static SPANS: OnceLock<Spans> = OnceLock::new();
    SPANS.get_or_init(|| {
        let spans = Spans::default();
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(spans.clone()))
            .expect("the only global subscriber");
        spans
    })
}

fn parent(n: usize) -> TraceParent {
    PARENTS[n].parse().expect("a valid traceparent")
}

async fn metadata(pool: &PgPool, id: i64) -> Option<serde_json::Value> {
    sqlx::query_scalar("SELECT metadata FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("metadata")
}

#[tokio::test]
async fn a_traceparent_travels_from_every_enqueue_path_to_the_attempt() {
    let spans = spans();
    let db = common::database().await;
    let pool = db.pool();

    let traced = |n| EnqueueOptions::new().traceparent(parent(n));
    let single = skiplock::enqueue_with(pool, &Traced {}, traced(0))
        .await
        .expect("enqueue");
    let many = skiplock::enqueue_many(
        pool,
        [
            NewJob::with_options(&Traced {}, traced(1)).expect("job"),
            NewJob::new(&Traced {}).expect("job"),
        ],
    )
    .await
    .expect("enqueue_many");
    let unique = skiplock::enqueue_with(pool, &Traced {}, traced(2).unique(Unique::key("once")))
        .await
        .expect("unique enqueue");
    let from_sql: i64 =
        sqlx::query_scalar("SELECT skiplock.enqueue('traced', '{}', traceparent => $1)")
            .bind(PARENTS[3])
            .fetch_one(pool)
            .await
            .expect("enqueue from SQL");
    let expected = [
        (single, Some(PARENTS[0])),
        (many[0], Some(PARENTS[1])),
        (many[1], None),
        (unique, Some(PARENTS[2])),
        (from_sql, Some(PARENTS[3])),
    ];
    for (id, parent) in expected {
        let stored = parent.map(|parent| json!({ "traceparent": parent }));
        assert_eq!(metadata(pool, id).await, stored, "job {id}");
    }

    let seen = Arc::new(Seen::default());
    let hook = seen.clone();
    let worker = Worker::builder(pool.clone(), seen.clone())
        .register::<Traced>()
        .id("tracing-worker")
        .poll_interval(Duration::from_millis(100))
        .trace_context(move |span, parent| {
            assert!(!span.is_disabled(), "the span exists when the hook runs");
            lock(&hook.linked).push(parent.to_string());
        })
        .build()
        .expect("worker");
    common::with_worker_of(worker, async {
        common::wait_for_state(pool, "completed", 5, Duration::from_secs(20)).await;
    })
    .await;

    let contexts = lock(&seen.contexts).clone();
    for (id, parent) in expected {
        assert_eq!(contexts[&id].as_deref(), parent, "job {id}");
    }
    let mut linked = lock(&seen.linked).clone();
    linked.sort();
    let mut carried: Vec<&str> = expected.iter().filter_map(|(_, parent)| *parent).collect();
    carried.sort_unstable();
    assert_eq!(
        linked, carried,
        "the hook runs for each job with trace context"
    );

    let spans: Vec<_> = lock(&spans.0)
        .iter()
        .filter(|span| span.get("worker.id").map(String::as_str) == Some("tracing-worker"))
        .cloned()
        .collect();
    assert_eq!(spans.len(), 5, "{spans:?}");
    for (id, parent) in expected {
        let span = spans
            .iter()
            .find(|span| span.get("job.id") == Some(&id.to_string()))
            .unwrap_or_else(|| panic!("no span of job {id}: {spans:?}"));
        assert_eq!(span["job.kind"], "traced");
        assert_eq!(span["job.queue"], "default");
        assert_eq!(span["job.attempt"], "1");
        assert_eq!(span["worker.id"], "tracing-worker");
        assert_eq!(span.get("traceparent").map(String::as_str), parent);
    }
}

#[tokio::test]
async fn garbage_trace_context_is_refused_by_the_database_and_ignored_by_workers() {
    spans();
    let db = common::database().await;
    let pool = db.pool();
    let refused = |sql: &'static str| async move {
        let error = sqlx::raw_sql(sql).execute(pool).await.expect_err("refused");
        let code = error
            .as_database_error()
            .and_then(|error| error.code())
            .map(|code| code.into_owned());
        assert_eq!(code.as_deref(), Some("23514"), "{sql}: {error}");
    };
    refused("SELECT skiplock.enqueue('k', '{}', traceparent => 'garbage')").await;
    refused(
        "SELECT skiplock.enqueue('k', '{}', \
         traceparent => '00-00000000000000000000000000000000-00f067aa0ba902b7-01')",
    )
    .await;
    refused(
        "SELECT skiplock.enqueue('k', '{}', \
         traceparent => 'ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01')",
    )
    .await;
    refused("INSERT INTO skiplock.jobs (kind, metadata) VALUES ('k', '{\"traceparent\": 5}')")
        .await;
    refused("INSERT INTO skiplock.jobs (kind, metadata) VALUES ('k', '[]')").await;
    refused(
        "INSERT INTO skiplock.jobs (kind, metadata) \
         VALUES ('k', jsonb_build_object('padding', repeat('x', 2000)))",
    )
    .await;

    // A row the database no longer checks (as if written before 0013, or by hand with the
    // constraint dropped): the worker ignores what is not a valid traceparent.
    sqlx::raw_sql(
        "ALTER TABLE skiplock.jobs DROP CONSTRAINT jobs_metadata_valid;
         INSERT INTO skiplock.jobs (kind, metadata)
         VALUES ('traced', jsonb_build_object('traceparent', 'x' || repeat('y', 10000)));",
    )
    .execute(pool)
    .await
    .expect("plant a malformed traceparent");
    let seen = Arc::new(Seen::default());
    let linked = seen.clone();
    let worker = Worker::builder(pool.clone(), seen.clone())
        .register::<Traced>()
        .poll_interval(Duration::from_millis(100))
        .trace_context(move |_, parent| lock(&linked.linked).push(parent.to_string()))
        .build()
        .expect("worker");
    common::with_worker_of(worker, async {
        common::wait_for_state(pool, "completed", 1, Duration::from_secs(20)).await;
    })
    .await;
    let contexts = lock(&seen.contexts).clone();
    assert_eq!(contexts.values().collect::<Vec<_>>(), [&None]);
    assert!(lock(&seen.linked).is_empty());
}
