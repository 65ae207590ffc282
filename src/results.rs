//! Waiting on jobs and watching them, pushed by the database.
//!
//! [`Results`] is a process's window on the jobs it waits for: [`Results::wait`] returns a
//! job's typed output (or how it failed), [`Results::watch`] streams its state and progress.
//! Create one per process and clone it (clones share everything): however many tasks wait on
//! however many jobs, one `LISTEN` connection hears of every change and one statement reads
//! the jobs that changed.
//!
//! How it is pushed: a waiter registers its jobs in `skiplock.job_waiters`; the statements that
//! record an attempt's outcome or store progress send a `skiplock_job` notification for each
//! registered job they change, and for no other (a job nobody waits on pays a probe of that
//! table). A notification is a hint only (any role may send one): the job is read from the
//! table. Waiters also poll every [`ResultsConfig::poll_interval`], which covers lost
//! notifications and the changes that do not notify: a job claimed, rescued, cancelled while
//! waiting, or
//! promoted by SQL, or deleted.
//!
//! ```no_run
//! # use serde::{Deserialize, Serialize};
//! # #[derive(Serialize, Deserialize)] struct Resize { width: u32 }
//! # impl skiplock::Job for Resize { const KIND: &'static str = "resize"; }
//! # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use skiplock::results::{Outcome, Results};
//!
//! let results = Results::new(pool.clone()); // once per process; clone it freely
//! let id = skiplock::enqueue(&pool, &Resize { width: 640 }).await?;
//! match results.wait::<String>(id, Duration::from_secs(30)).await? {
//!     Outcome::Completed(path) => println!("resized to {path}"),
//!     Outcome::Failed(error) | Outcome::Cancelled(error) => println!("no luck: {error:?}"),
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::Stream;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::db::{self, JOB_CHANNEL};
use crate::{AttemptError, Handler, JobState};

/// Default [`ResultsConfig::poll_interval`]: 1 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Default [`ResultsConfig::registration_ttl`]: 60 s.
pub const DEFAULT_REGISTRATION_TTL: Duration = Duration::from_secs(60);

/// Jobs read in one statement: 1,000.
const READ_CHUNK: usize = 1_000;

/// How long a new wait waits for the listener to be connected before relying on polling: 2 s.
const LISTEN_WAIT: Duration = Duration::from_secs(2);

/// How [`Results`] waits.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ResultsConfig {
    /// How often every awaited job is read whatever notifications say. Default:
    /// [`DEFAULT_POLL_INTERVAL`].
    pub poll_interval: Duration,
    /// How long a registration in `skiplock.job_waiters` lasts without renewal; renewed every
    /// third of it while waiting, so a process that dies leaves rows the pruner deletes after
    /// this long. Default: [`DEFAULT_REGISTRATION_TTL`].
    pub registration_ttl: Duration,
}

impl Default for ResultsConfig {
    fn default() -> Self {
        Self {
            poll_interval: DEFAULT_POLL_INTERVAL,
            registration_ttl: DEFAULT_REGISTRATION_TTL,
        }
    }
}

/// How an awaited job ended.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome<T> {
    /// It completed; its handler's output.
    Completed(T),
    /// It failed for good; its last error.
    Failed(Option<AttemptError>),
    /// It was cancelled; its last error, if an attempt was stopped.
    Cancelled(Option<AttemptError>),
}

/// The error of waiting on or watching a job.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// There is no such job (or it was deleted while awaited).
    #[error("job {0} does not exist")]
    NotFound(i64),
    /// The job did not finish in time.
    #[error("job {id} did not finish within {timeout:?} (last seen: {state:?})")]
    TimedOut {
        /// The job.
        id: i64,
        /// How long was waited.
        timeout: Duration,
        /// Its state when the wait gave up, if it was read at all.
        state: Option<JobState>,
    },
    /// The job completed, but its result does not deserialize as the awaited type.
    #[error("job {id}'s result does not decode as the awaited type")]
    Decode {
        /// The job.
        id: i64,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// Registering as a waiter or reading the jobs failed.
    #[error("waiting on jobs failed")]
    Database(#[from] sqlx::Error),
}

/// One job as a watcher sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct JobUpdate {
    /// The job.
    pub id: i64,
    /// Its kind.
    pub kind: String,
    /// Its queue.
    pub queue: String,
    /// Its state.
    pub state: JobState,
    /// Its attempt (1 for the first run; 0 before it ran).
    pub attempt: i32,
    /// Its most attempts.
    pub max_attempts: i32,
    /// What its handler last stored with `set_progress` (`None` also when the stored JSON
    /// does not parse).
    pub progress: Option<Value>,
    /// Its result, once finished.
    pub result: Option<Value>,
    /// Its last error, if any.
    pub last_error: Option<AttemptError>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
}

impl JobUpdate {
    /// Whether it completed, failed or was cancelled.
    pub fn is_finished(&self) -> bool {
        self.state.is_finished()
    }

    /// Its progress as a percentage, read as [`crate::inspect::percent_of`] does.
    pub fn percent(&self) -> Option<f64> {
        self.progress.as_ref().and_then(crate::inspect::percent_of)
    }

    fn from_row(row: db::waiter::JobSnapshot) -> Self {
        let parse = |text: Option<String>| text.and_then(|t| serde_json::from_str(&t).ok());
        Self {
            id: row.id,
            kind: row.kind,
            queue: row.queue,
            state: row.state,
            attempt: row.attempt,
            max_attempts: row.max_attempts,
            progress: parse(row.progress),
            result: parse(row.result),
            last_error: parse(row.last_error).map(|entry: Value| AttemptError::from_entry(&entry)),
            finished_at: row.finished_at,
        }
    }
}

/// What is known of an awaited job.
#[derive(Clone, Debug, PartialEq)]
enum Seen {
    Missing,
    Job(Box<JobUpdate>),
}

struct Watched {
    seen: watch::Sender<Option<Seen>>,
    /// The read (numbered by [`Inner::reads`]) whose rows `seen` holds, or the last number
    /// taken before the id was awaited.
    read: u64,
    subscribers: usize,
}

struct Inner {
    pool: PgPool,
    waiter: String,
    config: ResultsConfig,
    jobs: Mutex<HashMap<i64, Watched>>,
    /// Numbers the reads in the order they start (see [`Inner::publish`]).
    reads: AtomicU64,
    /// Ids no longer awaited, to unregister: shared with the listener task, which removes
    /// the last of them when the last clone is dropped.
    dropped: Arc<Mutex<Vec<i64>>>,
    work: Arc<Notify>,
    listening: watch::Sender<bool>,
    started: Mutex<bool>,
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Waits on jobs and watches them, for the whole process: see the [module](self).
#[derive(Clone)]
pub struct Results {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Results {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Results")
            .field("waiter", &self.inner.waiter)
            .finish_non_exhaustive()
    }
}

impl Results {
    /// Waits through `pool` with the default [`ResultsConfig`]. Takes one connection from the
    /// pool for `LISTEN` from the first wait on, while any clone lives.
    pub fn new(pool: PgPool) -> Self {
        Self::with_config(pool, ResultsConfig::default())
    }

    /// Waits through `pool` as `config` says.
    pub fn with_config(pool: PgPool, config: ResultsConfig) -> Self {
        let host = whoami::hostname().unwrap_or_else(|_| "unknown".to_owned());
        let waiter = format!(
            "{}:{}:{:08x}",
            host.chars().take(80).collect::<String>(),
            std::process::id(),
            fastrand::u32(..)
        );
        Self {
            inner: Arc::new(Inner {
                pool,
                waiter,
                config,
                jobs: Mutex::new(HashMap::new()),
                reads: AtomicU64::new(0),
                dropped: Arc::new(Mutex::new(Vec::new())),
                work: Arc::new(Notify::new()),
                listening: watch::Sender::new(false),
                started: Mutex::new(false),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// This process's name in `skiplock.job_waiters.waiter`: host, pid and a random part.
    pub fn waiter_id(&self) -> &str {
        &self.inner.waiter
    }

    /// Waits until job `id` finishes or `timeout` passes; its output deserialized as `T` (its
    /// handler's `Output`: see [`Results::wait_for`] to name the job type instead).
    ///
    /// # Errors
    /// [`WaitError::NotFound`], [`WaitError::TimedOut`], [`WaitError::Decode`], or
    /// [`WaitError::Database`] when registering or the first read fails.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future stops waiting (the registration goes at the next
    /// round of the listener task, or expires).
    pub async fn wait<T: DeserializeOwned>(
        &self,
        id: i64,
        timeout: Duration,
    ) -> Result<Outcome<T>, WaitError> {
        let mut outcomes = self.wait_many(&[id], timeout).await?;
        outcomes.pop().ok_or(WaitError::NotFound(id))
    }

    /// [`Results::wait`] for a job of type `J` run with state `S`: the output is `J`'s
    /// [`Handler::Output`].
    ///
    /// # Errors
    /// As [`Results::wait`].
    ///
    /// # Cancel safety
    /// As [`Results::wait`].
    pub async fn wait_for<J, S>(
        &self,
        id: i64,
        timeout: Duration,
    ) -> Result<Outcome<J::Output>, WaitError>
    where
        J: Handler<S>,
        J::Output: DeserializeOwned,
    {
        self.wait::<J::Output>(id, timeout).await
    }

    /// Waits until every job of `ids` finishes or `timeout` passes (one deadline for all);
    /// their outcomes in the order of `ids`. Registers and reads them in one statement each.
    ///
    /// # Errors
    /// As [`Results::wait`], for the first job that fails to give an outcome.
    ///
    /// # Cancel safety
    /// As [`Results::wait`].
    pub async fn wait_many<T: DeserializeOwned>(
        &self,
        ids: &[i64],
        timeout: Duration,
    ) -> Result<Vec<Outcome<T>>, WaitError> {
        // `Duration::MAX` means no deadline (an Instant that far out does not exist).
        let deadline = Instant::now()
            .checked_add(timeout)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        let subscription = match tokio::time::timeout_at(deadline, self.subscribe(ids)).await {
            Ok(subscription) => subscription?,
            Err(_) => {
                let id = ids.first().copied().unwrap_or_default();
                return Err(WaitError::TimedOut {
                    id,
                    timeout,
                    state: None,
                });
            }
        };
        let mut outcomes = Vec::with_capacity(ids.len());
        for (id, mut seen) in ids.iter().copied().zip(subscription.receivers()) {
            loop {
                match seen.borrow_and_update().clone() {
                    Some(Seen::Missing) => return Err(WaitError::NotFound(id)),
                    Some(Seen::Job(job)) if job.is_finished() => {
                        outcomes.push(outcome(*job)?);
                        break;
                    }
                    _ => {}
                }
                let changed = tokio::time::timeout_at(deadline, seen.changed()).await;
                if !matches!(changed, Ok(Ok(()))) {
                    let state = match &*seen.borrow() {
                        Some(Seen::Job(job)) => Some(job.state),
                        _ => None,
                    };
                    return Err(WaitError::TimedOut { id, timeout, state });
                }
            }
        }
        Ok(outcomes)
    }

    /// Job `id`'s state and progress as they change: its current state first, then each
    /// change seen (quick successive changes may come as one, the latest), ending after the
    /// update that shows it finished. Ends with [`WaitError::NotFound`] if there is no such
    /// job or it is deleted.
    pub fn watch(
        &self,
        id: i64,
    ) -> impl Stream<Item = Result<JobUpdate, WaitError>> + Send + 'static {
        enum Step {
            Start(Results),
            Watching(Subscription, watch::Receiver<Option<Seen>>),
            Done,
        }
        futures_util::stream::unfold(Step::Start(self.clone()), move |step| async move {
            // After the first update, wait for a change: the value seen last was sent already.
            let (subscription, mut seen, mut sent) = match step {
                Step::Done => return None,
                Step::Start(results) => match results.subscribe(&[id]).await {
                    Ok(subscription) => {
                        let seen = subscription.receivers().next()?;
                        (subscription, seen, false)
                    }
                    Err(error) => return Some((Err(error), Step::Done)),
                },
                Step::Watching(subscription, seen) => (subscription, seen, true),
            };
            loop {
                if sent && seen.changed().await.is_err() {
                    return None;
                }
                sent = true;
                let current = seen.borrow_and_update().clone();
                match current {
                    Some(Seen::Missing) => return Some((Err(WaitError::NotFound(id)), Step::Done)),
                    Some(Seen::Job(job)) if job.is_finished() => {
                        return Some((Ok(*job), Step::Done));
                    }
                    Some(Seen::Job(job)) => {
                        return Some((Ok(*job), Step::Watching(subscription, seen)));
                    }
                    None => {}
                }
            }
        })
    }

    /// Registers interest in `ids` and makes sure each has been read once.
    async fn subscribe(&self, ids: &[i64]) -> Result<Subscription, WaitError> {
        let inner = &self.inner;
        self.start();

        let mut fresh = Vec::new();
        let receivers = {
            let mut jobs = inner.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            ids.iter()
                .map(|&id| {
                    let watched = jobs.entry(id).or_insert_with(|| {
                        fresh.push(id);
                        Watched {
                            seen: watch::Sender::new(None),
                            // A read already under way when this id was (again) awaited
                            // publishes nothing for it: this wait's own read comes after.
                            read: inner.reads.load(Ordering::Relaxed),
                            subscribers: 0,
                        }
                    });
                    watched.subscribers += 1;
                    watched.seen.subscribe()
                })
                .collect()
        };
        let subscription = Subscription {
            inner: Arc::clone(inner),
            ids: ids.to_vec(),
            receivers,
        };
        if !fresh.is_empty() {
            let ttl = inner.config.registration_ttl.as_secs_f64();
            retrying_broken_connections(&inner.pool, || async {
                db::waiter::register(&inner.pool, &inner.waiter, &fresh, ttl).await?;
                inner.read(&fresh).await
            })
            .await?;
            // Not listening yet (first use, or reconnecting): a change notified meanwhile
            // would wait for the next poll. Unless every job has finished already, wait a
            // little for the listener and read once more after it is up.
            let mut listening = inner.listening.subscribe();
            let up_already = *listening.borrow();
            if !up_already && !inner.all_finished(&fresh) {
                let up = matches!(
                    tokio::time::timeout(LISTEN_WAIT, listening.wait_for(|on| *on)).await,
                    Ok(Ok(_))
                );
                if up {
                    retrying_broken_connections(&inner.pool, || inner.read(&fresh)).await?;
                }
            }
        }
        Ok(subscription)
    }

    /// Starts the listener task once, or again if it died (with the Tokio runtime it was
    /// spawned on, say).
    fn start(&self) {
        let mut started = self
            .inner
            .started
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if !*started {
            *started = true;
            let guard = Started(Arc::downgrade(&self.inner));
            tokio::spawn(listen(guard, self.inner.stop.clone()));
        }
    }

    /// A handle that does not keep these waits alive (nor their listener): the dashboard keeps
    /// one, and shares the `Results` while any of its streams holds it.
    #[cfg(feature = "web")]
    pub(crate) fn downgrade(&self) -> WeakResults {
        WeakResults(Arc::downgrade(&self.inner))
    }
}

/// A [`Results`] that may have been dropped (see [`Results::downgrade`]).
#[cfg(feature = "web")]
#[derive(Clone, Debug, Default)]
pub(crate) struct WeakResults(Weak<Inner>);

#[cfg(feature = "web")]
impl WeakResults {
    /// The `Results`, if a clone of it still lives.
    pub(crate) fn upgrade(&self) -> Option<Results> {
        self.0.upgrade().map(|inner| Results { inner })
    }
}

/// Held by the listener task: when the task ends (it returns, or is dropped with its
/// runtime), the next wait starts a new one.
struct Started(Weak<Inner>);

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(inner) = self.0.upgrade() {
            *inner.started.lock().unwrap_or_else(PoisonError::into_inner) = false;
            inner.listening.send_replace(false);
        }
    }
}

/// Awaited jobs; dropping it gives up interest in them.
struct Subscription {
    inner: Arc<Inner>,
    ids: Vec<i64>,
    receivers: Vec<watch::Receiver<Option<Seen>>>,
}

impl Subscription {
    fn receivers(&self) -> impl Iterator<Item = watch::Receiver<Option<Seen>>> + use<> {
        self.receivers.clone().into_iter()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut gone = Vec::new();
        {
            let mut jobs = self
                .inner
                .jobs
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for id in &self.ids {
                if let Some(watched) = jobs.get_mut(id) {
                    watched.subscribers = watched.subscribers.saturating_sub(1);
                    if watched.subscribers == 0 {
                        jobs.remove(id);
                        gone.push(*id);
                    }
                }
            }
        }
        if !gone.is_empty() {
            self.inner
                .dropped
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(gone);
            self.inner.work.notify_one();
        }
    }
}

fn outcome<T: DeserializeOwned>(job: JobUpdate) -> Result<Outcome<T>, WaitError> {
    match job.state {
        JobState::Completed => {
            let result = job.result.unwrap_or(Value::Null);
            serde_json::from_value(result)
                .map(Outcome::Completed)
                .map_err(|source| WaitError::Decode { id: job.id, source })
        }
        JobState::Cancelled => Ok(Outcome::Cancelled(job.last_error)),
        _ => Ok(Outcome::Failed(job.last_error)),
    }
}

impl Inner {
    /// Whether every one of `ids` is known to have finished.
    fn all_finished(&self, ids: &[i64]) -> bool {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        ids.iter().all(|id| {
            jobs.get(id).is_some_and(|watched| {
                matches!(&*watched.seen.borrow(), Some(Seen::Job(job)) if job.is_finished())
            })
        })
    }

    fn watched_ids(&self) -> Vec<i64> {
        let jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        jobs.keys().copied().collect()
    }

    /// Reads `ids` (those still awaited) and publishes what changed.
    async fn read(&self, ids: &[i64]) -> Result<(), sqlx::Error> {
        for chunk in ids.chunks(READ_CHUNK) {
            let read = self.reads.fetch_add(1, Ordering::Relaxed) + 1;
            let rows = db::waiter::snapshots(&self.pool, chunk).await?;
            self.publish(
                read,
                chunk,
                rows.into_iter()
                    .map(|row| (row.id, JobUpdate::from_row(row))),
            );
        }
        Ok(())
    }

    /// Publishes what read number `read` found of `ids` (an id it did not find is missing),
    /// unless a read numbered after it published first.
    ///
    /// Reads of one job overlap: a waiter's first read, the listener's after a notification.
    /// One that started earlier can have the earlier snapshot and still answer last; its rows
    /// must not replace newer ones (a job seen completed, then running again, would wait for
    /// the next poll to be seen finished). A read takes its number before it asks the pool
    /// for a connection, so a read numbered after a notification arrived has its snapshot
    /// after the change it announces committed: a notified change is never lost. A read that
    /// waited long for a connection can hold a newer snapshot than one numbered after it and
    /// be dropped: a change nobody notifies (a claim, a cancel in SQL) then shows at the next
    /// poll.
    fn publish(&self, read: u64, ids: &[i64], found: impl IntoIterator<Item = (i64, JobUpdate)>) {
        let mut found: HashMap<i64, JobUpdate> = found.into_iter().collect();
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        for id in ids {
            let Some(watched) = jobs.get_mut(id).filter(|watched| watched.read <= read) else {
                continue;
            };
            watched.read = read;
            let seen = found
                .remove(id)
                .map_or(Seen::Missing, |job| Seen::Job(Box::new(job)));
            watched.seen.send_if_modified(|current| {
                let changed = current.as_ref() != Some(&seen);
                if changed {
                    *current = Some(seen);
                }
                changed
            });
        }
    }
}

/// The listener task: hears `skiplock_job` notifications, polls, renews and removes
/// registrations, until the last [`Results`] clone is dropped (then removes the registrations
/// that are left).
async fn listen(started: Started, stop: CancellationToken) {
    let inner = started.0.clone();
    let Some((pool, config, work, waiter, dropped)) = inner.upgrade().map(|i| {
        (
            i.pool.clone(),
            i.config.clone(),
            Arc::clone(&i.work),
            i.waiter.clone(),
            Arc::clone(&i.dropped),
        )
    }) else {
        return;
    };
    // The last clone dropped: every registration left is in `dropped` (a subscription adds
    // its ids there before it lets go of the `Results`).
    let last_round = || async {
        let ids = std::mem::take(&mut *dropped.lock().unwrap_or_else(PoisonError::into_inner));
        if !ids.is_empty()
            && let Err(error) = db::waiter::unregister(&pool, &waiter, &ids).await
        {
            tracing::debug!(%error, "could not remove waiter registrations; they expire");
        }
    };
    let mut listener: Option<PgListener> = None;
    let mut poll = tokio::time::interval(config.poll_interval.max(Duration::from_millis(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut renew =
        tokio::time::interval((config.registration_ttl / 3).max(Duration::from_secs(1)));
    renew.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    renew.reset();
    loop {
        if listener.is_none() {
            match retrying_broken_connections(&pool, || connect(&pool)).await {
                Ok(connected) => {
                    listener = Some(connected);
                    if let Some(inner) = inner.upgrade() {
                        inner.listening.send_replace(true);
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "could not LISTEN for job changes; waiters poll");
                }
            }
        }
        let mut poll_all = false;
        let mut renew_now = false;
        let mut heard = Vec::new();
        {
            tokio::select! {
                () = stop.cancelled() => {
                    last_round().await;
                    return;
                }
                _ = poll.tick() => poll_all = true,
                _ = renew.tick() => renew_now = true,
                () = work.notified() => {}
                received = recv(listener.as_mut()) => match received {
                    Ok(Some(notification)) => heard.push(notification),
                    Ok(None) => {
                        // Lost and reconnected by sqlx: notifications meanwhile are gone.
                        poll_all = true;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "the job-change listener failed; reconnecting");
                        listener = None;
                        if let Some(inner) = inner.upgrade() {
                            inner.listening.send_replace(false);
                        }
                        poll_all = true;
                    }
                },
            }
        }
        if let Some(listener) = listener.as_mut() {
            while let Some(more) = listener.next_buffered() {
                heard.push(more);
            }
        }
        let Some(inner) = inner.upgrade() else {
            last_round().await;
            return;
        };
        let to_read: Vec<i64> = if poll_all {
            inner.watched_ids()
        } else {
            let jobs = inner.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            // A notification is only a hint, from anybody: ids nobody here awaits cost a lookup.
            let ids: HashSet<i64> = heard
                .iter()
                .filter_map(|n| n.payload().parse::<i64>().ok())
                .filter(|id| jobs.contains_key(id))
                .collect();
            ids.into_iter().collect()
        };
        if !to_read.is_empty()
            && let Err(error) =
                retrying_broken_connections(&inner.pool, || inner.read(&to_read)).await
        {
            tracing::warn!(%error, "could not read awaited jobs; retrying at the next poll");
        }
        let mut dropped: Vec<i64> =
            std::mem::take(&mut *inner.dropped.lock().unwrap_or_else(PoisonError::into_inner));
        {
            // Awaited again since: its registration must stay.
            let jobs = inner.jobs.lock().unwrap_or_else(PoisonError::into_inner);
            dropped.retain(|id| !jobs.contains_key(id));
        }
        if !dropped.is_empty()
            && let Err(error) = db::waiter::unregister(&inner.pool, &inner.waiter, &dropped).await
        {
            tracing::debug!(%error, "could not remove waiter registrations; they expire");
        }
        // Renewed as an upsert of every awaited id: a registration lost meanwhile (removed
        // by an unregister that raced a new wait, or pruned during an outage) comes back.
        let watched = if renew_now {
            inner.watched_ids()
        } else {
            Vec::new()
        };
        if !watched.is_empty()
            && let Err(error) = db::waiter::register(
                &inner.pool,
                &inner.waiter,
                &watched,
                inner.config.registration_ttl.as_secs_f64(),
            )
            .await
        {
            tracing::warn!(%error, "could not renew waiter registrations");
        }
    }
}

/// Runs `statements` through `pool`, again after a connection broke under them.
///
/// A pooled connection can break while idle (a server restart, or a pool shared with a
/// Tokio runtime that has ended) and still be handed out: a pool may skip its ping before
/// handing out, and the ping passes when the server's reply is already buffered. Each
/// such connection fails a statement and the pool discards it. Only the connections the
/// pool holds when the first attempt fails can be broken so: retried once more than that
/// many times, [`RETRY_PAUSE`] apart, for at most the pool's acquire timeout (30 s unless
/// set). A pool timeout is not retried: the pool has waited that long already.
async fn retrying_broken_connections<T, F, Fut>(
    pool: &PgPool,
    mut statements: F,
) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let started = Instant::now();
    let budget = pool.options().get_acquire_timeout();
    let mut most = None;
    let mut failures = 0_u32;
    loop {
        let error = match statements().await {
            Err(error) => error,
            done => return done,
        };
        let most = *most.get_or_insert_with(|| pool.size().saturating_add(1));
        if !worth_retrying(&error, failures, most) || started.elapsed() >= budget {
            return Err(error);
        }
        tracing::debug!(%error, failures, "a connection broke; retrying");
        failures += 1;
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}

/// The pause before each retry of a statement whose connection broke: 10 ms. A broken
/// connection fails at once and the pool discards it; the next attempt takes another, or
/// opens one, which waits as long as the pool needs.
const RETRY_PAUSE: Duration = Duration::from_millis(10);

/// Whether to try again after `error`, with `failures` failures before it: after a broken
/// connection (which the pool discards) while `failures` is under `most`.
fn worth_retrying(error: &sqlx::Error, failures: u32, most: u32) -> bool {
    failures < most
        && matches!(
            error,
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_)
        )
}

async fn connect(pool: &PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(JOB_CHANNEL).await?;
    Ok(listener)
}

/// The next notification, or never when there is no listener.
async fn recv(
    listener: Option<&mut PgListener>,
) -> Result<Option<sqlx::postgres::PgNotification>, sqlx::Error> {
    match listener {
        Some(listener) => listener.try_recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broken_connection_is_retried_as_often_as_the_pool_has_connections() {
        let broken = || sqlx::Error::Io(std::io::Error::other("runtime shut down"));
        assert!(worth_retrying(&broken(), 0, 11));
        assert!(worth_retrying(&broken(), 10, 11));
        assert!(!worth_retrying(&broken(), 11, 11));
        let tls = sqlx::Error::Tls("handshake".into());
        assert!(worth_retrying(&tls, 0, 1));
        // A pool timeout has waited already; an error of the statement is the answer.
        assert!(!worth_retrying(&sqlx::Error::PoolTimedOut, 0, 11));
        assert!(!worth_retrying(&sqlx::Error::RowNotFound, 0, 11));
    }

    fn update(state: JobState) -> JobUpdate {
        JobUpdate {
            id: 7,
            kind: "report".to_owned(),
            queue: "default".to_owned(),
            state,
            attempt: 1,
            max_attempts: 3,
            progress: None,
            result: None,
            last_error: None,
            finished_at: None,
        }
    }

    #[tokio::test]
    async fn a_read_that_started_earlier_and_answers_last_publishes_nothing() {
        let pool = PgPool::connect_lazy("postgres://127.0.0.1:1/none").expect("a lazy pool");
        let results = Results::new(pool);
        let inner = &results.inner;
        let seen = watch::Sender::new(None);
        let mut receiver = seen.subscribe();
        inner.jobs.lock().expect("jobs").insert(
            7,
            Watched {
                seen,
                read: 0,
                subscribers: 1,
            },
        );
        let state =
            |receiver: &mut watch::Receiver<Option<Seen>>| match &*receiver.borrow_and_update() {
                Some(Seen::Job(job)) => Some(job.state),
                _ => None,
            };
        // Read 2 (after the notification) answers first: completed.
        inner.publish(2, &[7], [(7, update(JobState::Completed))]);
        assert_eq!(state(&mut receiver), Some(JobState::Completed));
        // Read 1 (a waiter's first, its snapshot older) answers last: running. Not published.
        inner.publish(1, &[7], [(7, update(JobState::Running))]);
        assert!(!receiver.has_changed().expect("open"));
        assert_eq!(state(&mut receiver), Some(JobState::Completed));
        // Nor a job it did not find.
        inner.publish(1, &[7], []);
        assert_eq!(state(&mut receiver), Some(JobState::Completed));
        // A read started later is published, whatever it found.
        inner.publish(3, &[7], []);
        assert!(matches!(&*receiver.borrow(), Some(Seen::Missing)));
    }
}
