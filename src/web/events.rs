//! The live view: one poller per dashboard feeds every open overview stream, and one
//! [`Results`] per dashboard every open job stream.
//!
//! Overview streams subscribe to a `watch` channel. The poller runs only while one is open;
//! each round it reads the overview once, serializes it once, and every stream sends the same
//! text. A hundred open tabs cost the database what one does.
//!
//! A job stream watches its job through [`Results::watch`]: the job is registered as awaited,
//! so the statements that store its progress or its outcome send a `skiplock_job`
//! notification, which the `Results`' one `LISTEN` connection hears and answers with one read
//! of the jobs that changed; every awaited job is also read every interval whatever
//! notifications say (changes that do not notify: a claim, a state changed by hand). Streams of
//! the same job share its registration and its reads. The `Results` (and its connection) lives
//! while a job stream is open, unless the application gave its own
//! ([`Dashboard::results`](super::Dashboard::results)).
//!
//! Every stream ends when the hub's shutdown token is cancelled (a server's graceful shutdown
//! waits for open responses); a job's stream also ends after the event that says the job
//! finished, or when the job is deleted.

use std::collections::HashMap;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::{Stream, StreamExt as _};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::pages::overview::{self, Overview};
use super::{MAX_WATCHED_JOBS, Shared};
use crate::inspect::{self, JobProgress};
use crate::results::{JobUpdate, Results, ResultsConfig, WaitError, WeakResults};

/// How long a stream stays silent before it sends a comment (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The day chart is read again every this many rounds.
const DAY_EVERY: u64 = 30;
/// An idle poller looks again after this many intervals even if nothing woke it.
const IDLE_ROUNDS: u32 = 30;

/// What the overview channel holds: the text every stream sends, and what decides whether it
/// changed.
#[derive(Clone)]
struct Snapshot {
    /// The event's data.
    data: Arc<str>,
    /// What is compared to decide whether the data changed: the data without what changes on
    /// every read (the overview's `at`).
    key: Arc<str>,
}

type Latest = watch::Sender<Option<Snapshot>>;

/// Why a job stream was not opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// As many jobs as [`MAX_WATCHED_JOBS`] are watched already.
    TooManyJobs,
    /// There is no such job.
    NotFound,
    /// Registering as a waiter or reading the job failed (logged).
    Unavailable,
}

/// The shared poller's channel, and the job streams' `Results`.
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    interval: Duration,
    overview: Latest,
    jobs: Mutex<Jobs>,
    /// Whether a poller task runs (reset by the task when it ends, however it ends).
    started: AtomicBool,
    /// Wakes an idle poller: a new stream, or this hub dropped. Held by the poller on its own
    /// so that an idle poller holds the hub only weakly.
    wake: Arc<Notify>,
    rounds: AtomicU64,
    /// Cancelled: every stream ends and the poller stops.
    shutdown: CancellationToken,
}

/// What the job streams share.
struct Jobs {
    /// The application's own `Results`, held for as long as the hub lives.
    given: Option<Results>,
    /// Otherwise the one the open streams hold (and share), made by the first of them.
    shared: WeakResults,
    /// How many streams watch each job.
    watched: HashMap<i64, usize>,
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

/// A job stream's place among the watched jobs, given back when the stream ends.
struct Watching {
    hub: Weak<Inner>,
    id: i64,
}

impl Drop for Watching {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            let mut jobs = lock(&hub.jobs);
            if let Some(streams) = jobs.watched.get_mut(&self.id) {
                *streams -= 1;
                if *streams == 0 {
                    jobs.watched.remove(&self.id);
                }
            }
        }
    }
}

type Updates = Pin<Box<dyn Stream<Item = Result<JobUpdate, WaitError>> + Send>>;

impl Hub {
    /// A hub polling the overview every `interval`; job streams share `results` when given,
    /// else a `Results` of their own that polls every `interval` too.
    pub(crate) fn new(
        pool: PgPool,
        interval: Duration,
        shutdown: CancellationToken,
        results: Option<Results>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                overview: watch::Sender::new(None),
                jobs: Mutex::new(Jobs {
                    given: results,
                    shared: WeakResults::default(),
                    watched: HashMap::new(),
                }),
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
        overview_stream(receiver, self.inner.shutdown.clone())
    }

    /// A stream of job `id`'s state and progress, as `job` events, from its state now (read
    /// before this returns) to the event that says it finished.
    pub(crate) async fn job(
        &self,
        shared: &Arc<Shared>,
        id: i64,
    ) -> Result<impl Stream<Item = Result<Event, Infallible>> + use<>, Refused> {
        let stop = self.inner.shutdown.clone();
        let (watching, results) = {
            let mut jobs = lock(&self.inner.jobs);
            if !jobs.watched.contains_key(&id) && jobs.watched.len() >= MAX_WATCHED_JOBS {
                return Err(Refused::TooManyJobs);
            }
            *jobs.watched.entry(id).or_insert(0) += 1;
            let watching = Watching {
                hub: Arc::downgrade(&self.inner),
                id,
            };
            (watching, self.results(&mut jobs))
        };
        let mut updates: Updates = Box::pin(results.watch(id));
        drop(results);
        let first = if stop.is_cancelled() {
            None
        } else {
            tokio::select! {
                () = stop.cancelled() => None,
                first = updates.next() => first,
            }
        };
        let first = match first {
            Some(Ok(update)) => Some(update),
            Some(Err(WaitError::NotFound(_))) => return Err(Refused::NotFound),
            Some(Err(error)) => {
                tracing::warn!(error = %crate::handler::error_chain(&error), "dashboard: watching a job failed");
                return Err(Refused::Unavailable);
            }
            // Shut down meanwhile: a stream that ends at once.
            None => None,
        };
        let state = JobStream {
            ended: first.is_none(),
            shared: shared.clone(),
            first,
            updates,
            last: None,
            stop,
            _watching: watching,
        };
        Ok(futures_util::stream::unfold(state, JobStream::next))
    }

    /// The `Results` job streams share: the application's, or the one open streams hold, or a
    /// new one.
    fn results(&self, jobs: &mut Jobs) -> Results {
        if let Some(results) = &jobs.given {
            return results.clone();
        }
        if let Some(results) = jobs.shared.upgrade() {
            return results;
        }
        let config = ResultsConfig {
            poll_interval: self.inner.interval,
            ..ResultsConfig::default()
        };
        let results = Results::with_config(self.inner.pool.clone(), config);
        jobs.shared = results.downgrade();
        results
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

/// One job stream: its first event, then each update `Results` sees.
struct JobStream {
    shared: Arc<Shared>,
    first: Option<JobUpdate>,
    updates: Updates,
    /// The last event sent: an update that changes nothing it shows sends nothing.
    last: Option<String>,
    /// After the event that says the job finished.
    ended: bool,
    stop: CancellationToken,
    _watching: Watching,
}

impl JobStream {
    async fn next(mut self) -> Option<(Result<Event, Infallible>, Self)> {
        if self.ended || self.stop.is_cancelled() {
            return None;
        }
        loop {
            let update = match self.first.take() {
                Some(first) => first,
                None => {
                    let next = tokio::select! {
                        biased;
                        () = self.stop.cancelled() => return None,
                        next = tokio::time::timeout(KEEP_ALIVE, self.updates.next()) => next,
                    };
                    match next {
                        Err(_) => return Some((Ok(Event::default().comment("")), self)),
                        Ok(Some(Ok(update))) => update,
                        // Deleted, or the updates ended.
                        Ok(Some(Err(_)) | None) => return None,
                    }
                }
            };
            let (data, finished) = job_event(&self.shared, update)?;
            if self.last.as_deref() == Some(data.as_str()) && !finished {
                continue;
            }
            let event = Event::default().event("job").data(&data);
            self.last = Some(data);
            self.ended = finished;
            return Some((Ok(event), self));
        }
    }
}

/// A `job` event's data (the progress redacted), and whether the job finished.
fn job_event(shared: &Shared, update: JobUpdate) -> Option<(String, bool)> {
    let mut job = JobProgress {
        id: update.id,
        queue: update.queue,
        kind: update.kind,
        state: update.state,
        attempt: update.attempt,
        max_attempts: update.max_attempts,
        progress: update.progress,
        finished_at: update.finished_at,
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
    serde_json::to_string(&event)
        .ok()
        .map(|data| (data, finished))
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

/// The poller: runs rounds while an overview is watched, sleeps until woken otherwise; ends
/// when the dashboard is dropped or shut down.
async fn poll(started: Started, shared: Weak<Shared>, wake: Arc<Notify>, stop: CancellationToken) {
    let mut day: Option<Arc<Vec<inspect::ThroughputBucket>>> = None;
    loop {
        if stop.is_cancelled() {
            return;
        }
        let Some(hub) = started.0.upgrade() else {
            return;
        };
        let interval = hub.interval;
        if hub.overview.receiver_count() == 0 {
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
        if shared.strong_count() == 0 {
            return;
        }
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
            },
        );
    }
}

/// Sends the overview now (if it has been read) and on every change, with a comment after
/// [`KEEP_ALIVE`] of silence; ends when the channel closes or `stop` is cancelled.
fn overview_stream(
    receiver: watch::Receiver<Option<Snapshot>>,
    stop: CancellationToken,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = (receiver, stop, true);
    futures_util::stream::unfold(state, move |(mut receiver, stop, first)| async move {
        if stop.is_cancelled() {
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
                            return Some((comment, (receiver, stop, false)));
                        }
                    },
                }
            }
            let latest = receiver.borrow_and_update().clone();
            if let Some(snapshot) = latest {
                let event = Ok(Event::default().event("overview").data(&*snapshot.data));
                return Some((event, (receiver, stop, false)));
            }
        }
    })
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
    async fn a_stream_for_one_job_too_many_is_refused_and_a_failed_one_gives_its_place_back() {
        let unreachable = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(200))
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let shared = Arc::new(Shared::new(super::super::Dashboard::new(unreachable)));
        {
            let mut jobs = lock(&shared.hub.inner.jobs);
            for id in 0..MAX_WATCHED_JOBS as i64 {
                jobs.watched.insert(id, 1);
            }
        }
        assert_eq!(
            shared.hub.job(&shared, -1).await.err(),
            Some(Refused::TooManyJobs)
        );
        // A job watched already is not one more: refused here only because nothing answers.
        assert_eq!(
            shared.hub.job(&shared, 5).await.err(),
            Some(Refused::Unavailable)
        );
        let jobs = lock(&shared.hub.inner.jobs);
        assert_eq!(jobs.watched.len(), MAX_WATCHED_JOBS);
        assert_eq!(
            jobs.watched.get(&5),
            Some(&1),
            "the failed stream kept its place"
        );
        assert!(!jobs.watched.contains_key(&-1));
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
