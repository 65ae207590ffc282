//! The live view: one poller per dashboard feeds every open event stream.
//!
//! Streams subscribe to a `watch` channel (the overview) or to one per watched job. The poller
//! runs only while a stream is open; each round it reads the overview once (if anyone
//! watches it) and the progress of the watched jobs ([`MAX_PROGRESS_IDS`] per statement),
//! serializes each answer once, and every stream sends the same text. A hundred open tabs cost
//! the database what one does.
//!
//! Every stream ends when the hub's shutdown token is cancelled (a server's graceful shutdown
//! waits for open responses); a job's stream also ends after the event that says the job
//! finished.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::pages::overview::{self, Overview};
use super::{MAX_WATCHED_JOBS, Shared};
use crate::inspect::{self, JobProgress, MAX_PROGRESS_IDS};

/// How long a stream stays silent before it sends a comment (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The day chart is read again every this many rounds.
const DAY_EVERY: u64 = 30;
/// An idle poller looks again after this many intervals even if nothing woke it.
const IDLE_ROUNDS: u32 = 30;

/// What a channel holds: the text every stream sends, what decides whether it changed, and
/// whether it is the last event of its stream.
#[derive(Clone)]
struct Snapshot {
    /// The event's data.
    data: Arc<str>,
    /// What is compared to decide whether the data changed: the data without what changes on
    /// every read (the overview's `at`).
    key: Arc<str>,
    /// The stream ends after sending it (a job that finished).
    last: bool,
}

type Latest = watch::Sender<Option<Snapshot>>;

/// Why a stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// As many jobs as [`MAX_WATCHED_JOBS`] are watched already.
    TooManyJobs,
}

/// The shared poller's channels.
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    interval: Duration,
    overview: Latest,
    jobs: Mutex<HashMap<i64, Latest>>,
    /// Whether a poller task runs (reset by the task when it ends, however it ends).
    started: AtomicBool,
    /// Wakes an idle poller: a new stream, or this hub dropped. Held by the poller on its own
    /// so that an idle poller holds the hub only weakly.
    wake: Arc<Notify>,
    rounds: AtomicU64,
    /// Cancelled: every stream ends and the poller stops.
    shutdown: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // An idle poller ends now rather than after its timeout.
        self.wake.notify_one();
    }
}

/// What a job stream sends.
#[derive(Serialize)]
struct JobEvent<'a> {
    #[serde(flatten)]
    job: &'a JobProgress,
    percent: Option<f64>,
    finished: bool,
}

impl Hub {
    pub(crate) fn new(pool: PgPool, interval: Duration, shutdown: CancellationToken) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                overview: watch::Sender::new(None),
                jobs: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                wake: Arc::new(Notify::new()),
                rounds: AtomicU64::new(0),
                shutdown,
            }),
        }
    }

    /// A stream of the overview, as `overview` events.
    pub(crate) fn overview(
        &self,
        shared: &Arc<Shared>,
    ) -> impl Stream<Item = Result<Event, Infallible>> + use<> {
        let receiver = self.inner.overview.subscribe();
        self.start(shared);
        stream(receiver, "overview", self.inner.shutdown.clone())
    }

    /// A stream of job `id`'s state and progress, as `job` events, ending after the event
    /// that says it finished.
    pub(crate) fn job(
        &self,
        shared: &Arc<Shared>,
        id: i64,
    ) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, Refused> {
        let receiver = {
            let mut jobs = lock(&self.inner.jobs);
            if !jobs.contains_key(&id) && jobs.len() >= MAX_WATCHED_JOBS {
                jobs.retain(|_, sender| sender.receiver_count() > 0);
                if jobs.len() >= MAX_WATCHED_JOBS {
                    return Err(Refused::TooManyJobs);
                }
            }
            jobs.entry(id)
                .or_insert_with(|| watch::Sender::new(None))
                .subscribe()
        };
        self.start(shared);
        Ok(stream(receiver, "job", self.inner.shutdown.clone()))
    }

    /// Starts the poller on first use (or again, if its task died), and wakes it.
    fn start(&self, shared: &Arc<Shared>) {
        if self.inner.shutdown.is_cancelled() {
            return;
        }
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            // Both weakly: the router owns them, and a dropped router ends the poller.
            let started = Started(Arc::downgrade(&self.inner));
            tokio::spawn(poll(
                started,
                Arc::downgrade(shared),
                self.inner.wake.clone(),
                self.inner.shutdown.clone(),
            ));
        }
        self.inner.wake.notify_one();
    }
}

/// Held by the poller task: when the task ends, returns, panics, or is dropped with its
/// runtime, the next stream starts a new one.
struct Started(Weak<Inner>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            inner.started.store(false, Ordering::Release);
        }
    }
}

/// How long an idle poller waits before it looks again on its own.
fn idle_wait(interval: Duration) -> Duration {
    interval.saturating_mul(IDLE_ROUNDS)
}

/// The poller: runs rounds while anyone watches, sleeps until woken otherwise; ends when the
/// dashboard is dropped or shut down.
async fn poll(started: Started, shared: Weak<Shared>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut day: Option<Arc<Vec<inspect::ThroughputBucket>>> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(hub) = started.0.upgrade() else {
            return;
        };
        let watch_overview = hub.overview.receiver_count() > 0;
        let ids: Vec<i64> = {
            let mut jobs = lock(&hub.jobs);
            jobs.retain(|_, sender| sender.receiver_count() > 0);
            jobs.keys().copied().collect()
        };
        let interval = hub.interval;
        if !watch_overview && ids.is_empty() {
            // Idle: hold the hub only weakly. A new stream or the hub's drop wakes us.
            drop(hub);
            tokio::select! {
                () = wake.notified() => {}
                () = stop.cancelled() => return,
                () = tokio::time::sleep(idle_wait(interval)) => {}
            }
            continue;
        }
        let round = hub.rounds.fetch_add(1, Ordering::Relaxed);
        let Some(owner) = shared.upgrade() else {
            return;
        };
        if watch_overview {
            if round % DAY_EVERY == 0 || day.is_none() {
                day = inspect::throughput(&hub.pool, 144, 10)
                    .await
                    .ok()
                    .map(Arc::new);
            }
            match overview::read(&hub.pool, day.clone()).await {
                Ok(view) => publish_overview(&hub.overview, &view),
                Err(error) => tracing::warn!(%error, "dashboard: reading the overview failed"),
            }
        }
        for chunk in ids.chunks(MAX_PROGRESS_IDS) {
            match inspect::job_progress(&hub.pool, chunk).await {
                Ok(progress) => publish_jobs(&hub, &owner, progress),
                Err(error) => tracing::warn!(%error, "dashboard: reading job progress failed"),
            }
        }
        drop(owner);
        drop(hub);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Stores `snapshot`, and wakes the streams only when its key differs from the last one (a
/// new stream still starts from the newest data).
fn publish(sender: &Latest, snapshot: Snapshot) {
    sender.send_if_modified(|latest| {
        let changed = latest.as_ref().is_none_or(|l| l.key != snapshot.key);
        *latest = Some(snapshot);
        changed
    });
}

fn publish_overview(sender: &Latest, view: &Overview) {
    let Ok(Value::Object(mut fields)) = serde_json::to_value(view) else {
        return;
    };
    // The time of the read changes every round: compare what was read.
    let at = fields.remove("at");
    let Ok(key) = serde_json::to_string(&fields) else {
        return;
    };
    if let Some(at) = at {
        fields.insert("at".to_owned(), at);
    }
    if let Ok(data) = serde_json::to_string(&fields) {
        publish(
            sender,
            Snapshot {
                data: data.into(),
                key: key.into(),
                last: false,
            },
        );
    }
}

fn publish_jobs(hub: &Inner, shared: &Shared, progress: Vec<JobProgress>) {
    let jobs = lock(&hub.jobs);
    for mut job in progress {
        let Some(sender) = jobs.get(&job.id) else {
            continue;
        };
        let percent = job.percent();
        if let Some(value) = job.progress.as_mut() {
            shared.redacted(super::Field::Progress, &job.kind, value);
        }
        let finished = job.state.is_finished();
        let event = JobEvent {
            finished,
            job: &job,
            percent,
        };
        if let Ok(json) = serde_json::to_string(&event) {
            let json: Arc<str> = json.into();
            publish(
                sender,
                Snapshot {
                    key: json.clone(),
                    data: json,
                    last: finished,
                },
            );
        }
    }
}

/// Sends the channel's value now (if it has one) and on every change, with a comment after
/// [`KEEP_ALIVE`] of silence; ends after a last snapshot, when the channel closes, or when
/// `stop` is cancelled.
fn stream(
    receiver: watch::Receiver<Option<Snapshot>>,
    name: &'static str,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (receiver, stop, true, false);
    futures_util::stream::unfold(
        state,
        move |(mut receiver, stop, first, ended)| async move {
            if ended || stop.is_cancelled() {
                return None;
            }
            loop {
                if !first || receiver.borrow().is_none() {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => return None,
                        changed = tokio::time::timeout(KEEP_ALIVE, receiver.changed()) => match changed {
                            Ok(Ok(())) => {}
                            Ok(Err(_)) => return None,
                            Err(_) => {
                                let comment = Ok(Event::default().comment(""));
                                return Some((comment, (receiver, stop, false, false)));
                            }
                        },
                    }
                }
                let latest = receiver.borrow_and_update().clone();
                if let Some(snapshot) = latest {
                    let event = Ok(Event::default().event(name).data(&*snapshot.data));
                    return Some((event, (receiver, stop, false, snapshot.last)));
                }
            }
        },
    )
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_wait_never_overflows() {
        assert_eq!(idle_wait(Duration::MAX), Duration::MAX);
        assert_eq!(idle_wait(Duration::from_secs(2)), Duration::from_secs(60));
    }

    /// A lazy pool: nothing here connects.
    fn pool() -> PgPool {
        sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool")
    }

    #[tokio::test]
    async fn an_idle_poller_holds_the_dashboard_only_weakly() {
        let shared = Arc::new(Shared::new(
            super::super::Dashboard::new(pool()).live_interval(Duration::from_secs(3600)),
        ));
        let inner = Arc::downgrade(&shared.hub.inner);
        shared.hub.start(&shared);
        // Let the poller reach its idle wait.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(shared);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            inner.upgrade().is_none(),
            "the idle poller keeps the dropped dashboard alive"
        );
    }
}
