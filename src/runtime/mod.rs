//! The worker runtime: [`Worker`], built with [`WorkerBuilder`], controlled with [`WorkerHandle`].
//!
//! A worker process runs, for each of its queues, one *producer* that claims as many jobs as it
//! has free slots in a single statement and runs each on its own tokio task (the *executor*).
//! Outcomes go to one *completer*, which records them in batches. A *listener* holds a
//! dedicated connection that LISTENs for wake-ups so idle producers start new jobs within
//! milliseconds, and a *promoter* makes scheduled and retrying jobs runnable when their time
//! comes. Each role lives in its own module.
//!
//! Shutdown has two stages: first the worker stops claiming and lets running jobs finish for up
//! to [`WorkerBuilder::shutdown_timeout`]; then it fires every job's cancellation token and
//! waits [`WorkerBuilder::cancel_timeout`] more; handlers still running after that are dropped
//! and their jobs go straight back to `available`. Outcomes are flushed before the worker
//! returns. Nothing is lost at any stage.

mod completer;
mod executor;
mod listener;
mod producer;
mod promoter;
mod registry;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::completer::{Completer, CompleterConfig};
use self::executor::Executor;
use self::listener::Listener;
use self::producer::{Producer, ProducerConfig};
use self::promoter::{Promoter, PromoterConfig};
use self::registry::Registry;
use crate::Handler;

/// Jobs one queue runs at once unless [`WorkerBuilder::queue`] says otherwise: 10.
pub const DEFAULT_CONCURRENCY: usize = 10;

/// The longest an idle producer waits before claiming again without a wake-up: 1 s.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How long a stopping worker lets running jobs finish before cancelling them: 30 s.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long cancelled jobs get to stop on their own before they are dropped: 5 s.
pub const DEFAULT_CANCEL_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest the promoter sleeps between looks for due scheduled and retrying jobs: 1 s.
pub const DEFAULT_PROMOTE_INTERVAL: Duration = Duration::from_secs(1);

/// After a claim that filled every free slot, how long a producer lets slots free up before it
/// claims again: 2 ms. Busy queues are then claimed in batches instead of one job at a time.
pub const DEFAULT_FETCH_COOLDOWN: Duration = Duration::from_millis(2);

/// The error of [`WorkerBuilder::build`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// No job kind was registered.
    #[error("no job kinds registered: call `register` at least once")]
    NoHandlers,
    /// Two job types share one kind string.
    #[error("job kind {0:?} is registered twice")]
    DuplicateKind(&'static str),
    /// A queue was configured twice.
    #[error("queue {0:?} is configured twice")]
    DuplicateQueue(String),
    /// A queue name is empty or longer than 128 characters.
    #[error("queue name {0:?} must be 1 to 128 characters")]
    InvalidQueueName(String),
    /// A queue's concurrency is zero.
    #[error("queue {0:?} has a concurrency of zero")]
    ZeroConcurrency(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
}

/// The error of running a [`Worker`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// Listening for SIGINT or SIGTERM failed.
    #[error("could not listen for shutdown signals")]
    Signal(#[source] std::io::Error),
    /// The worker's task panicked or was aborted (a bug in skiplock: please report it).
    #[error("worker task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Builds a [`Worker`]; see [`Worker::builder`].
#[must_use = "a builder does nothing until `build` is called"]
pub struct WorkerBuilder<S = ()> {
    pool: PgPool,
    state: S,
    registry: Registry<S>,
    duplicate_kind: Option<&'static str>,
    queues: Vec<(String, usize)>,
    poll_interval: Duration,
    fetch_cooldown: Duration,
    shutdown_timeout: Duration,
    cancel_timeout: Duration,
    promote_interval: Duration,
    id: Option<String>,
}

impl<S: Clone + Send + Sync + 'static> WorkerBuilder<S> {
    /// Registers the handler of job type `J`. A kind may be registered once per worker.
    pub fn register<J: Handler<S>>(mut self) -> Self {
        if !self.registry.register::<J>() {
            self.duplicate_kind.get_or_insert(J::KIND);
        }
        self
    }

    /// Works `queue`, running at most `concurrency` of its jobs at once.
    ///
    /// Without any call to `queue`, the worker works the default queue of every registered kind
    /// ([`Job::QUEUE`](crate::Job::QUEUE)) with [`DEFAULT_CONCURRENCY`]. With calls, it works
    /// exactly the queues named.
    pub fn queue(mut self, queue: impl Into<String>, concurrency: usize) -> Self {
        self.queues.push((queue.into(), concurrency));
        self
    }

    /// The longest an idle producer waits before claiming again when no wake-up arrives
    /// (wake-ups are lost, for instance, behind PgBouncer in transaction mode). Default:
    /// [`DEFAULT_POLL_INTERVAL`].
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// How long a busy producer lets slots free up between claims. Default:
    /// [`DEFAULT_FETCH_COOLDOWN`]; zero claims as soon as one slot is free.
    pub fn fetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.fetch_cooldown = cooldown;
        self
    }

    /// How long a stopping worker lets running jobs finish before cancelling them. Default:
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long cancelled jobs get to stop on their own before their handlers are dropped.
    /// Default: [`DEFAULT_CANCEL_TIMEOUT`].
    pub fn cancel_timeout(mut self, timeout: Duration) -> Self {
        self.cancel_timeout = timeout;
        self
    }

    /// The longest the promoter sleeps between looks for due scheduled and retrying jobs.
    /// Default: [`DEFAULT_PROMOTE_INTERVAL`].
    pub fn promote_interval(mut self, interval: Duration) -> Self {
        self.promote_interval = interval;
        self
    }

    /// The worker's id, recorded in `attempted_by` of every job it claims. Default:
    /// `<hostname>:<pid>:<random>`, unique per process and worker.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Checks the configuration and builds the worker.
    ///
    /// # Errors
    /// [`BuildError`] when no kind is registered, a kind is registered twice, or a queue or
    /// interval is invalid.
    pub fn build(self) -> Result<Worker<S>, BuildError> {
        if let Some(kind) = self.duplicate_kind {
            return Err(BuildError::DuplicateKind(kind));
        }
        if self.registry.is_empty() {
            return Err(BuildError::NoHandlers);
        }
        for (name, value) in [
            ("poll_interval", self.poll_interval),
            ("promote_interval", self.promote_interval),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        let queues = if self.queues.is_empty() {
            self.registry
                .default_queues()
                .iter()
                .map(|queue| ((*queue).to_owned(), DEFAULT_CONCURRENCY))
                .collect()
        } else {
            self.queues
        };
        let mut seen = Vec::with_capacity(queues.len());
        for (queue, concurrency) in &queues {
            if !(1..=128).contains(&queue.chars().count()) {
                return Err(BuildError::InvalidQueueName(queue.clone()));
            }
            if *concurrency == 0 {
                return Err(BuildError::ZeroConcurrency(queue.clone()));
            }
            if seen.contains(&queue) {
                return Err(BuildError::DuplicateQueue(queue.clone()));
            }
            seen.push(queue);
        }
        let id = self.id.unwrap_or_else(default_worker_id);
        Ok(Worker {
            pool: self.pool,
            state: self.state,
            registry: Arc::new(self.registry),
            queues,
            poll_interval: self.poll_interval,
            fetch_cooldown: self.fetch_cooldown,
            shutdown_timeout: self.shutdown_timeout,
            cancel_timeout: self.cancel_timeout,
            promote_interval: self.promote_interval,
            id: id.into(),
        })
    }
}

/// A worker: runs the jobs of its queues until it is told to stop.
///
/// ```no_run
/// # use serde::{Deserialize, Serialize};
/// # use skiplock::{Handler, Job, JobContext, JobError};
/// # #[derive(Serialize, Deserialize)] struct SendEmail { to: String }
/// # impl Job for SendEmail { const KIND: &'static str = "send_email"; }
/// # impl Handler<sqlx::PgPool> for SendEmail {
/// #     type Output = ();
/// #     async fn handle(self, _: JobContext<sqlx::PgPool>) -> Result<(), JobError> { Ok(()) }
/// # }
/// # async fn example(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use skiplock::Worker;
///
/// let worker = Worker::builder(pool.clone(), pool) // the pool is also the handlers' state
///     .register::<SendEmail>()
///     .queue("default", 20)
///     .build()?;
/// worker.run().await?; // until SIGINT or SIGTERM, then a graceful shutdown
/// # Ok(()) }
/// ```
pub struct Worker<S = ()> {
    pool: PgPool,
    state: S,
    registry: Arc<Registry<S>>,
    queues: Vec<(String, usize)>,
    poll_interval: Duration,
    fetch_cooldown: Duration,
    shutdown_timeout: Duration,
    cancel_timeout: Duration,
    promote_interval: Duration,
    id: Arc<str>,
}

impl<S: Clone + Send + Sync + 'static> Worker<S> {
    /// Starts building a worker that claims jobs through `pool` and hands `state` to every
    /// handler (through [`JobContext::state`](crate::JobContext::state); it is cloned once per
    /// attempt, so keep it cheap to clone: a pool, `Arc`s). Use `()` when handlers need none.
    ///
    /// The worker takes a few connections from `pool` (one per claim, completion batch and
    /// promotion, each held briefly) plus one dedicated LISTEN connection of its own; size the
    /// pool for the handlers' own queries on top.
    pub fn builder(pool: PgPool, state: S) -> WorkerBuilder<S> {
        WorkerBuilder {
            pool,
            state,
            registry: Registry::new(),
            duplicate_kind: None,
            queues: Vec::new(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            fetch_cooldown: DEFAULT_FETCH_COOLDOWN,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
            promote_interval: DEFAULT_PROMOTE_INTERVAL,
            id: None,
        }
    }

    /// This worker's id, as recorded in `attempted_by`.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The queues this worker works, with their concurrency.
    pub fn queues(&self) -> &[(String, usize)] {
        &self.queues
    }

    /// Runs until the process receives SIGINT (ctrl-c) or SIGTERM, then shuts down gracefully.
    ///
    /// # Errors
    /// [`WorkerError::Signal`] when the signal handlers cannot be installed.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future abandons running jobs (they stay `running` until
    /// their lease expires). Use [`run_until`](Self::run_until) or [`start`](Self::start) to stop
    /// a worker from code.
    pub async fn run(self) -> Result<(), WorkerError> {
        let signal = shutdown_signal().map_err(WorkerError::Signal)?;
        self.run_until(signal).await;
        Ok(())
    }

    /// Runs until `shutdown` completes, then shuts down gracefully (see the [module
    /// docs](self)).
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`run`](Self::run).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let stop = CancellationToken::new();
        let running = self.spawn_roles(stop.clone());
        shutdown.await;
        tracing::info!(worker.id = %self.id, "worker stopping");
        stop.cancel();
        running
            .finish(self.shutdown_timeout, self.cancel_timeout)
            .await;
        tracing::info!(worker.id = %self.id, "worker stopped");
    }

    /// Runs the worker on a new tokio task and returns a handle to stop it.
    pub fn start(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let id = self.id.clone();
        let signal = stop.clone();
        let task = tokio::spawn(async move { self.run_until(signal.cancelled_owned()).await });
        WorkerHandle { id, stop, task }
    }

    fn spawn_roles(&self, stop: CancellationToken) -> Running {
        let capacity: usize = self.queues.iter().map(|(_, concurrency)| concurrency).sum();
        let (completions, receiver) = mpsc::channel(capacity.max(64) * 2);
        let completer = tokio::spawn(
            Completer::new(self.pool.clone(), CompleterConfig::default(), receiver).run(),
        );
        let cancel = CancellationToken::new();
        let abort = CancellationToken::new();
        let executor = Arc::new(Executor {
            registry: self.registry.clone(),
            state: self.state.clone(),
            worker_id: self.id.clone(),
            completions,
            cancel: cancel.clone(),
            abort: abort.clone(),
        });
        let jobs = TaskTracker::new();
        let roles = TaskTracker::new();
        let mut wakers = HashMap::new();
        for (queue, concurrency) in &self.queues {
            let wake = Arc::new(Notify::new());
            wakers.insert(queue.clone(), wake.clone());
            let config = ProducerConfig {
                queue: queue.clone(),
                concurrency: *concurrency,
                poll_interval: self.poll_interval,
                fetch_cooldown: self.fetch_cooldown,
            };
            let producer = Producer::new(
                config,
                self.pool.clone(),
                executor.clone(),
                wake,
                jobs.clone(),
            );
            roles.spawn(producer.run(stop.clone()));
        }
        roles.spawn(Listener::new(self.pool.clone(), wakers).run(stop.clone()));
        let promoter = PromoterConfig {
            interval: self.promote_interval,
        };
        roles.spawn(Promoter::new(self.pool.clone(), promoter).run(stop));
        roles.close();
        tracing::info!(worker.id = %self.id, queues = ?self.queues, "worker started");
        Running {
            roles,
            jobs,
            cancel,
            abort,
            completer,
        }
    }
}

/// The tasks of a running worker, for the shutdown sequence.
struct Running {
    roles: TaskTracker,
    jobs: TaskTracker,
    cancel: CancellationToken,
    abort: CancellationToken,
    completer: JoinHandle<()>,
}

impl Running {
    /// After `stop` fired: waits for the roles, then for running jobs (cancelling and then
    /// dropping them as the timeouts pass), then for the last outcomes to be recorded.
    async fn finish(self, shutdown_timeout: Duration, cancel_timeout: Duration) {
        self.roles.wait().await;
        self.jobs.close();
        if tokio::time::timeout(shutdown_timeout, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.jobs.len(),
                "jobs still running after the shutdown timeout; cancelling them"
            );
            self.cancel.cancel();
            if tokio::time::timeout(cancel_timeout, self.jobs.wait())
                .await
                .is_err()
            {
                tracing::warn!(
                    running = self.jobs.len(),
                    "jobs ignored cancellation; dropping them (they will run again)"
                );
                self.abort.cancel();
                self.jobs.wait().await;
            }
        }
        // Every executor is gone now, so the completion channel closes once drained.
        if let Err(error) = self.completer.await {
            tracing::error!(%error, "completer task failed");
        }
    }
}

/// Controls a worker started with [`Worker::start`].
#[derive(Debug)]
pub struct WorkerHandle {
    id: Arc<str>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Whether the worker has stopped.
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker gracefully and waits until it has: no more claims, running jobs
    /// finished (or cancelled and put back, per the timeouts), outcomes recorded.
    ///
    /// # Errors
    /// [`WorkerError::Task`] if the worker's task panicked.
    ///
    /// # Cancel safety
    /// Cancel safe: the shutdown, once begun, goes on in the background; only the wait for it
    /// is dropped.
    pub async fn shutdown(self) -> Result<(), WorkerError> {
        self.stop.cancel();
        self.task.await.map_err(WorkerError::Task)
    }
}

/// Completes on SIGINT or SIGTERM.
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT"),
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
        }
    })
}

fn default_worker_id() -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        fastrand::u32(..0x0100_0000)
    )
}
