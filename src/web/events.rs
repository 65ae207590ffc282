//! The live view: one poller per dashboard feeds every open event stream.
//!
//! Streams subscribe to a `watch` channel (the overview) or to one per watched job. The poller
//! runs only while a stream is open; each round it reads the overview once (if anyone
//! watches it) and the progress of every watched job in one statement, serializes each
//! answer once, and every stream sends the same text. A hundred open tabs cost the database
//! what one does.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream;
use serde::Serialize;
use sqlx::PgPool;
use tokio::sync::{Notify, watch};

use super::Shared;
use super::pages::overview::{self, Overview};
use crate::inspect::{self, JobProgress, MAX_PROGRESS_IDS};

/// How long a stream stays silent before it sends a comment (proxies close idle connections).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// The day chart is read again every this many rounds.
const DAY_EVERY: u64 = 30;

type Latest = watch::Sender<Option<Arc<str>>>;

/// The shared poller's channels.
pub(crate) struct Hub {
    inner: Arc<Inner>,
}

struct Inner {
    pool: PgPool,
    interval: Duration,
    overview: Latest,
    jobs: Mutex<HashMap<i64, Latest>>,
    started: AtomicBool,
    wake: Notify,
    rounds: AtomicU64,
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
    pub(crate) fn new(pool: PgPool, interval: Duration) -> Self {
        Self {
            inner: Arc::new(Inner {
                pool,
                interval,
                overview: watch::Sender::new(None),
                jobs: Mutex::new(HashMap::new()),
                started: AtomicBool::new(false),
                wake: Notify::new(),
                rounds: AtomicU64::new(0),
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
        stream(receiver, "overview")
    }

    /// A stream of job `id`'s state and progress, as `job` events; `None` when the dashboard
    /// already watches as many jobs as it may.
    pub(crate) fn job(
        &self,
        shared: &Arc<Shared>,
        id: i64,
    ) -> Option<impl Stream<Item = Result<Event, Infallible>> + use<>> {
        let receiver = {
            let mut jobs = lock(&self.inner.jobs);
            if !jobs.contains_key(&id) && jobs.len() >= MAX_PROGRESS_IDS {
                jobs.retain(|_, sender| sender.receiver_count() > 0);
                if jobs.len() >= MAX_PROGRESS_IDS {
                    return None;
                }
            }
            jobs.entry(id)
                .or_insert_with(|| watch::Sender::new(None))
                .subscribe()
        };
        self.start(shared);
        Some(stream(receiver, "job"))
    }

    /// Starts the poller on first use, and wakes it.
    fn start(&self, shared: &Arc<Shared>) {
        if !self.inner.started.swap(true, Ordering::AcqRel) {
            // Both weakly: the router owns them, and a dropped router ends the poller.
            tokio::spawn(poll(Arc::downgrade(&self.inner), Arc::downgrade(shared)));
        }
        self.inner.wake.notify_one();
    }
}

/// The poller: runs rounds while anyone watches, sleeps until woken otherwise; ends when the
/// dashboard is dropped.
async fn poll(inner: Weak<Inner>, shared: Weak<Shared>) {
    let mut day: Option<Arc<Vec<inspect::ThroughputBucket>>> = None;
    loop {
        let Some(hub) = inner.upgrade() else { return };
        let watch_overview = hub.overview.receiver_count() > 0;
        let ids: Vec<i64> = {
            let mut jobs = lock(&hub.jobs);
            jobs.retain(|_, sender| sender.receiver_count() > 0);
            jobs.keys().copied().collect()
        };
        if !watch_overview && ids.is_empty() {
            // Woken by a new stream; the timeout lets a dropped dashboard end the task.
            let _ = tokio::time::timeout(hub.interval * 30, hub.wake.notified()).await;
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
        if !ids.is_empty() {
            match inspect::job_progress(&hub.pool, &ids).await {
                Ok(progress) => publish_jobs(&hub, &owner, progress),
                Err(error) => tracing::warn!(%error, "dashboard: reading job progress failed"),
            }
        }
        drop(owner);
        let interval = hub.interval;
        drop(hub);
        tokio::time::sleep(interval).await;
    }
}

fn publish_overview(sender: &Latest, view: &Overview) {
    if let Ok(json) = serde_json::to_string(view) {
        let json: Arc<str> = json.into();
        sender.send_if_modified(|latest| {
            let changed = latest.as_deref() != Some(&*json);
            *latest = Some(json);
            changed
        });
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
        let event = JobEvent {
            finished: job.state.is_finished(),
            job: &job,
            percent,
        };
        if let Ok(json) = serde_json::to_string(&event) {
            let json: Arc<str> = json.into();
            sender.send_if_modified(|latest| {
                let changed = latest.as_deref() != Some(&*json);
                *latest = Some(json);
                changed
            });
        }
    }
}

/// Sends the channel's value now (if it has one) and on every change, with a comment after
/// [`KEEP_ALIVE`] of silence.
fn stream(
    receiver: watch::Receiver<Option<Arc<str>>>,
    name: &'static str,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((receiver, true), move |(mut receiver, first)| async move {
        loop {
            if !first || receiver.borrow().is_none() {
                match tokio::time::timeout(KEEP_ALIVE, receiver.changed()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => return None,
                    Err(_) => return Some((Ok(Event::default().comment("")), (receiver, false))),
                }
            }
            let latest = receiver.borrow_and_update().clone();
            if let Some(data) = latest {
                return Some((
                    Ok(Event::default().event(name).data(&*data)),
                    (receiver, false),
                ));
            }
        }
    })
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
