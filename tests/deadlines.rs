//! Client-side deadlines: when the database stops answering in the middle of a call (here a proxy
//! that holds the progress write, as a half-open connection would), a handler's `set_progress`
//! gives up after the worker's `db_timeout` instead of hanging with it, and so does the
//! completer's write of an outcome (it then retries).

use std::sync::Arc;
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use skiplock::{ContextError, Handler, Job, JobContext, JobError, JobState, Worker};
use skiplock_testing::TestDatabase;
use sqlx::PgPool;
use sqlx::postgres::{PgPoolOptions, PgSslMode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};

/// A TCP proxy to the test database that, while frozen, holds every message carrying the
/// [`HELD`] progress value (held, not dropped: it flows again once thawed). Everything else passes, so the pool's
/// own checks (a ping before a connection is handed out) still succeed and only the write hangs.
struct Proxy {
    port: u16,
    frozen: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(host: &str, port: u16) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let local = listener.local_addr().expect("address").port();
        let frozen = Arc::new(AtomicBool::new(false));
        let upstream = format!("{host}:{port}");
        let flag = frozen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&upstream).await else {
                    continue;
                };
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::spawn(pump(client_read, server_write, flag.clone()));
                tokio::spawn(pump(server_read, client_write, flag.clone()));
            }
        });
        Self {
            port: local,
            frozen,
        }
    }

    /// A proxy to `db` and an application pool that connects through it.
    async fn pool(db: &TestDatabase) -> (Self, PgPool) {
        let direct = db.connect_options();
        let proxy = Self::start(direct.get_host(), direct.get_port()).await;
        // In plain text, so that the proxy can see which message it holds.
        let through_proxy = direct
            .clone()
            .host("127.0.0.1")
            .port(proxy.port)
            .ssl_mode(PgSslMode::Disable);
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(through_proxy);
        (proxy, pool)
    }

    fn freeze(&self, frozen: bool) {
        self.frozen.store(frozen, Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    frozen: Arc<AtomicBool>,
) {
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while frozen.load(Ordering::SeqCst) && holds_progress(&buffer[..n]) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            return;
        }
    }
}

/// The progress value whose write the frozen proxy holds.
const HELD: &str = "hold-this-write";

fn holds_progress(bytes: &[u8]) -> bool {
    bytes.windows(HELD.len()).any(|w| w == HELD.as_bytes())
}

/// What the test hands the handler: when to write progress, and where to report how it went.
#[derive(Clone)]
struct Probe {
    go: Arc<Notify>,
    report: mpsc::Sender<(Duration, Result<(), ContextError>)>,
}

#[derive(Serialize, Deserialize)]
struct Report;

impl Job for Report {
    const KIND: &'static str = "report";
}

impl Handler<Probe> for Report {
    type Output = ();

    async fn handle(self, ctx: JobContext<Probe>) -> Result<(), JobError> {
        // Opens the progress connection while the database still answers.
        ctx.set_progress(&serde_json::json!({"done": 0})).await?;
        ctx.state().go.notified().await;
        let started = Instant::now();
        let written = ctx
            .set_progress(&serde_json::json!({ "stage": HELD }))
            .await;
        let _ = ctx.state().report.send((started.elapsed(), written)).await;
        Ok(())
    }
}

async fn progress(pool: &PgPool, id: i64) -> Option<serde_json::Value> {
    sqlx::query_scalar::<_, Option<serde_json::Value>>(
        "SELECT progress FROM skiplock.jobs WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("progress")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_progress_gives_up_at_db_timeout_when_the_database_stops_answering() {
    const DB_TIMEOUT: Duration = Duration::from_millis(500);
    let db = TestDatabase::new().await.expect("database");
    let (proxy, pool) = Proxy::pool(&db).await;

    let (report, mut reports) = mpsc::channel(1);
    let probe = Probe {
        go: Arc::new(Notify::new()),
        report,
    };
    let id = skiplock::enqueue(db.pool(), &Report)
        .await
        .expect("enqueue");
    let worker = Worker::builder(pool, probe.clone())
        .register::<Report>()
        .db_timeout(DB_TIMEOUT)
        .poll_interval(Duration::from_millis(100))
        .build()
        .expect("worker")
        .start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while progress(db.pool(), id).await.is_none() {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.freeze(true);
    probe.go.notify_one();
    // Without a client-side deadline the write waits for an answer that never comes.
    let (took, written) = tokio::time::timeout(Duration::from_secs(20), reports.recv())
        .await
        .expect("set_progress returned")
        .expect("a report");
    proxy.freeze(false);
    assert!(
        matches!(written, Err(ContextError::Timeout(limit)) if limit == DB_TIMEOUT),
        "{written:?}"
    );
    assert!(took < DB_TIMEOUT * 4, "gave up after {took:?}");
    worker.shutdown().await.expect("shutdown");
}

/// Warnings of the completer, counted by a global subscriber (the worker's tasks run on every
/// thread of the runtime).
static COMPLETER_WARNINGS: AtomicUsize = AtomicUsize::new(0);

struct CountCompleterWarnings;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for CountCompleterWarnings {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let meta = event.metadata();
        if *meta.level() == tracing::Level::WARN && meta.target().ends_with("completer") {
            COMPLETER_WARNINGS.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn count_completer_warnings() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        let subscriber = tracing_subscriber::registry().with(CountCompleterWarnings);
        tracing::subscriber::set_global_default(subscriber).expect("global subscriber");
    });
}

/// Returns the held marker as its output once told to.
#[derive(Serialize, Deserialize)]
struct Finish;

impl Job for Finish {
    const KIND: &'static str = "finish";
}

impl Handler<Arc<Notify>> for Finish {
    type Output = String;

    async fn handle(self, ctx: JobContext<Arc<Notify>>) -> Result<String, JobError> {
        ctx.state().notified().await;
        Ok(HELD.to_owned())
    }
}

async fn job_state(pool: &PgPool, id: i64) -> JobState {
    sqlx::query_scalar("SELECT state FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("state")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outcome_write_gives_up_at_db_timeout_and_is_retried() {
    const DB_TIMEOUT: Duration = Duration::from_millis(500);
    count_completer_warnings();
    let db = TestDatabase::new().await.expect("database");
    let (proxy, pool) = Proxy::pool(&db).await;
    let go = Arc::new(Notify::new());
    let id = skiplock::enqueue(db.pool(), &Finish)
        .await
        .expect("enqueue");
    let worker = Worker::builder(pool, go.clone())
        .register::<Finish>()
        .db_timeout(DB_TIMEOUT)
        .poll_interval(Duration::from_millis(100))
        .build()
        .expect("worker")
        .start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_state(db.pool(), id).await != JobState::Running {
        assert!(Instant::now() < deadline, "the job never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.freeze(true);
    let before = COMPLETER_WARNINGS.load(Ordering::SeqCst);
    go.notify_one();
    // The write carrying the output is held: the completer must give up on it at db_timeout
    // and say it retries (with a hard-coded 30 s deadline it would still be waiting).
    let frozen_at = Instant::now();
    while COMPLETER_WARNINGS.load(Ordering::SeqCst) == before {
        assert!(
            frozen_at.elapsed() < DB_TIMEOUT * 8,
            "no retry of the held outcome within {:?}",
            DB_TIMEOUT * 8
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(job_state(db.pool(), id).await, JobState::Running);
    proxy.freeze(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    while job_state(db.pool(), id).await != JobState::Completed {
        assert!(Instant::now() < deadline, "the outcome was never recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worker.shutdown().await.expect("shutdown");
}
