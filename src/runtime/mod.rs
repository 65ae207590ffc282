//! The worker runtime: [`Worker`], built with [`WorkerBuilder`], controlled with [`WorkerHandle`].
//!
//! A worker process runs, for each of its queues, one *producer* that claims as many jobs as it
//! has free slots in a single statement and runs each on its own tokio task (the *executor*).
//! Outcomes go to one *completer*, which records them in batches. A *listener* holds a
//! dedicated connection that LISTENs for wake-ups, so idle producers start new jobs within
//! milliseconds, and for cancel requests. A *promoter* makes scheduled and retrying jobs
//! runnable when their time comes. Each role lives in its own module.
//!
//! # Maintenance: one elected worker per database
//! The promoter, the *rescuer*, the *pruner* and the embedded *scheduler* run in one worker of
//! the database at a time: the one holding a session-level advisory lock on a dedicated
//! connection. Others try to take it every [`WorkerBuilder::rescue_interval`], so when the
//! leader stops or dies one of them takes over within that interval (within four intervals
//! when the leader hangs or loses the network: the server ends its silent session). Measured:
//! 50 idle workers cost the server 75 statements/s in all with election, 435 without; most
//! of what is left is each producer's poll (`docs/performance.md`). Leadership saves work,
//! nothing relies on it: every maintenance role is safe with several instances at once. A worker
//! built with [`listen(false)`](WorkerBuilder::listen) does not elect and runs them itself.
//!
//! # Supervision and health
//! Every role is supervised: the periodic ones share one loop (`service.rs`: interval, a
//! deadline of `db_timeout` per step, prompt stop), and an error or a panic (caught) is logged,
//! counted and retried with backoff; long-running roles (producers, heartbeat, listener) are
//! restarted when they panic, and a panic while recording outcomes lets go of that batch only
//! (its jobs run again once their leases lapse). [`WorkerHandle::health`] reports each role.
//!
//! # Leases
//! A claimed job carries a lease (database time) and a fresh lease token. The *heartbeat*
//! renews the leases of running jobs every [`WorkerBuilder::heartbeat_interval`] and records
//! the worker in `skiplock.workers`; the *rescuer* of any worker takes back jobs whose lease
//! expired because their worker died or hung, so they run again within
//! `lease + rescue_interval`. Every write after a claim presents the lease token, so a worker
//! that lost a job can no longer change it, and a worker that cannot renew a lease stops the
//! job before the lease can expire. The worker claims, completes and listens on a small pool of
//! its own (one of its connections is held for LISTEN), renews leases on a second and writes
//! progress on a third; handler work cannot reach the first two, so handlers cannot starve
//! either. Every database call of these roles has a deadline (`db_timeout`; for a renewal, at
//! most the heartbeat interval).
//!
//! # Retention
//! The *pruner* deletes finished jobs once they are older than the
//! [`Retention`] for their state ([`WorkerBuilder::retention`]: completed jobs after 24 hours,
//! failed and cancelled ones after 7 days by default; [`Retention::keep_forever`] keeps them).
//!
//! # Shutdown
//! Two stages: first the worker stops claiming and lets running jobs finish for up to
//! [`WorkerBuilder::shutdown_timeout`], renewing their leases meanwhile; then it fires every
//! job's cancellation token and waits [`WorkerBuilder::cancel_timeout`] more; handlers still
//! running after that are dropped. Stopped jobs go straight back to `available` without using
//! up an attempt. The worker returns once their outcomes are written, or once it has given up
//! on writing them (after retrying for 2 minutes while the database stays unreachable); such
//! jobs stay `running` until their leases expire and the rescuer takes them back.

mod completer;
mod connections;
mod deadline;
mod declare;
mod executor;
mod heartbeat;
mod leader;
mod listener;
mod producer;
mod promoter;
mod pruner;
mod registry;
mod rescuer;
pub(crate) mod running;
mod scheduler;
mod service;
mod unrunnable;

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
use self::connections::{SessionSettings, WorkerPools};
use self::executor::Executor;
use self::heartbeat::{FENCE_AFTER, Heartbeat, HeartbeatConfig};
use self::leader::Leader;
use self::listener::Listener;
use self::producer::{Producer, ProducerConfig};
use self::promoter::{Promoter, PromoterConfig};
pub use self::pruner::{
    DEFAULT_CANCELLED_RETENTION, DEFAULT_COMPLETED_RETENTION, DEFAULT_FAILED_RETENTION,
    DEFAULT_PRUNE_BATCH, DEFAULT_PRUNE_INTERVAL, PruneError, PruneReport, Pruner, PrunerConfig,
    Retention,
};
use self::registry::Registry;
use self::rescuer::{Rescuer, RescuerConfig};
use self::running::{RunningAttempts, StopReason};
pub use self::scheduler::{
    DEFAULT_MISFIRE_GRACE, DEFAULT_SCHEDULER_INTERVAL, DEFAULT_SCHEDULER_TIMEOUT,
    MAX_COUNTED_MISSES, MAX_FIRES_PER_ROUND, Scheduler, SchedulerConfig, SchedulerError,
    SchedulerReport,
};
use self::service::Monitor;
pub use self::service::{Health, MAX_BACKOFF_FACTOR, RoleHealth, STEADY_AFTER, UNHEALTHY_AFTER};
use self::unrunnable::{Unrunnable, UnrunnableConfig};
use crate::{Handler, Schedule};

/// Jobs one queue runs at once unless [`WorkerBuilder::queue`] says otherwise: 10.
pub const DEFAULT_CONCURRENCY: usize = 10;

/// The most jobs one queue may run at once in one worker: 100,000.
pub const MAX_CONCURRENCY: usize = 100_000;

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

/// How long a running job's lease lasts from its claim or last renewal: 30 s. A job whose
/// worker died runs again within about `lease + rescue interval`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often the rescuer looks for jobs whose lease expired: 5 s.
pub const DEFAULT_RESCUE_INTERVAL: Duration = Duration::from_secs(5);

/// The deadline of each database call the worker's own roles make (claim, completion,
/// promotion, rescue, pruning, scheduling, progress; a lease renewal gets at most the heartbeat
/// interval), also set as their connections' `statement_timeout`: 10 s.
pub const DEFAULT_DB_TIMEOUT: Duration = Duration::from_secs(10);

/// The most bytes of stored job arguments one claim takes: 16 MiB. A claim takes at least one
/// job whatever its size; see [`WorkerBuilder::max_claim_bytes`].
pub const DEFAULT_MAX_CLAIM_BYTES: usize = 16 * 1024 * 1024;

/// The `application_name` of the worker's own connections, to find them in
/// `pg_stat_activity`.
pub const APPLICATION_NAME: &str = "skiplock-worker";

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
    /// A queue's concurrency is above [`MAX_CONCURRENCY`].
    #[error("queue {0:?} has a concurrency above {MAX_CONCURRENCY}")]
    ConcurrencyTooHigh(String),
    /// A duration that must be positive is zero.
    #[error("{0} must be greater than zero")]
    ZeroDuration(&'static str),
    /// Two schedules share a name.
    #[error("schedule {0:?} is declared twice")]
    DuplicateSchedule(String),
    /// The schedule owner's name is empty or longer than 128 characters.
    #[error("schedule owner {0:?} must be 1 to 128 characters")]
    InvalidScheduleOwner(String),
    /// The heartbeat is too slow for the lease: leases would expire between renewals.
    #[error("heartbeat_interval ({heartbeat:?}) must be under half the lease ({lease:?})")]
    HeartbeatTooSlow {
        /// The heartbeat interval.
        heartbeat: Duration,
        /// The lease.
        lease: Duration,
    },
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
    config: Config,
    id: Option<String>,
    schedules: Vec<Schedule>,
    schedule_owner: Option<String>,
    schedule_generation: i64,
}

/// Timings shared by the builder and the worker.
#[derive(Clone, Debug)]
struct Config {
    listen: bool,
    synchronous_commit: bool,
    poll_interval: Duration,
    fetch_cooldown: Duration,
    shutdown_timeout: Duration,
    cancel_timeout: Duration,
    promote_interval: Duration,
    lease: Duration,
    heartbeat_interval: Option<Duration>,
    rescue_interval: Duration,
    job_timeout: Option<Duration>,
    db_timeout: Duration,
    scheduler: Option<SchedulerConfig>,
    retention: Retention,
    prune_interval: Duration,
    max_claim_bytes: usize,
}

impl Config {
    fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.lease / 3)
    }
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
        self.config.poll_interval = interval;
        self
    }

    /// How long a busy producer lets slots free up between claims. Default:
    /// [`DEFAULT_FETCH_COOLDOWN`]; zero claims as soon as one slot is free.
    pub fn fetch_cooldown(mut self, cooldown: Duration) -> Self {
        self.config.fetch_cooldown = cooldown;
        self
    }

    /// How long a stopping worker lets running jobs finish before cancelling them. Default:
    /// [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Self {
        self.config.shutdown_timeout = timeout;
        self
    }

    /// How long cancelled jobs get to stop on their own before their handlers are dropped.
    /// Default: [`DEFAULT_CANCEL_TIMEOUT`].
    pub fn cancel_timeout(mut self, timeout: Duration) -> Self {
        self.config.cancel_timeout = timeout;
        self
    }

    /// The longest the promoter sleeps between looks for due scheduled and retrying jobs.
    /// Default: [`DEFAULT_PROMOTE_INTERVAL`].
    pub fn promote_interval(mut self, interval: Duration) -> Self {
        self.config.promote_interval = interval;
        self
    }

    /// How long a running job's lease lasts from its claim or last renewal. Shorter leases
    /// recover jobs of dead workers sooner; longer ones tolerate longer database outages
    /// before running jobs are stopped. Default: [`DEFAULT_LEASE`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.config.lease = lease;
        self
    }

    /// How often leases are renewed; must be under half the lease. Default: a third of the
    /// lease.
    pub fn heartbeat_interval(mut self, interval: Duration) -> Self {
        self.config.heartbeat_interval = Some(interval);
        self
    }

    /// How often this worker's rescuer looks for jobs whose lease expired, and how often it
    /// tries to take the maintenance leadership while another worker holds it (so also the
    /// bound on a failover). Default: [`DEFAULT_RESCUE_INTERVAL`].
    pub fn rescue_interval(mut self, interval: Duration) -> Self {
        self.config.rescue_interval = interval;
        self
    }

    /// How long finished jobs are kept before this worker's pruner deletes them, per state,
    /// counted from their `finished_at` (database time). Default: [`Retention::default`]:
    /// completed jobs 24 hours, failed and cancelled jobs 7 days. [`Retention::keep_forever`]
    /// turns pruning off.
    ///
    /// The pruner runs in the worker holding the maintenance leadership (in every worker with
    /// `listen(false)`), with that worker's retention: give all the workers of a database the
    /// same one.
    pub fn retention(mut self, retention: Retention) -> Self {
        self.config.retention = retention;
        self
    }

    /// How often this worker's pruner looks for finished jobs past their retention. Default:
    /// [`DEFAULT_PRUNE_INTERVAL`] (30 s).
    pub fn prune_interval(mut self, interval: Duration) -> Self {
        self.config.prune_interval = interval;
        self
    }

    /// Whether the worker LISTENs for wake-ups (`skiplock_wake`) and cancel requests. Default
    /// `true`: an enqueued job starts within milliseconds. Turn it off behind a connection pooler
    /// in transaction mode (PgBouncer), where LISTEN does not work: the worker then finds jobs
    /// by polling every [`poll_interval`](Self::poll_interval), and hears of cancel requests at
    /// its next lease renewal. Without LISTEN the worker also takes no part in the maintenance
    /// election (it needs a session, as LISTEN does) and runs the maintenance roles itself.
    pub fn listen(mut self, listen: bool) -> Self {
        self.config.listen = listen;
        self
    }

    /// Whether the commits of the worker's own connections (claims, completions, renewals,
    /// promotion, rescue, pruning, and the fires of its embedded scheduler) wait for their WAL
    /// to reach disk. Default `true`.
    ///
    /// With `false` they run with `synchronous_commit = off`: a commit returns before its WAL is
    /// flushed. That helps where commits are the bottleneck (slow disks, small batches); on the
    /// 2-core machine of `docs/performance.md` it added 4% to a drain, whose commits are already
    /// shared by about a thousand jobs each. The trade-off: if the *database server* crashes
    /// (not the worker), its last few hundred milliseconds of these commits (at most
    /// 3 × `wal_writer_delay`) are lost. A lost claim puts the job back where it was; a lost
    /// completion makes a job that ran run again; a lost scheduler fire is made up on restart
    /// according to the schedule's misfire policy (with `skip`, only if the server is back
    /// within the misfire grace). Nothing is corrupted, and enqueues made in your own
    /// transactions stay as durable as your connections make them. Handlers that complete with
    /// [`JobContext::complete_in`](crate::JobContext::complete_in) commit on your pool, so their
    /// effects and completion stay atomic and durable.
    pub fn synchronous_commit(mut self, synchronous: bool) -> Self {
        self.config.synchronous_commit = synchronous;
        self
    }

    /// The timeout of jobs that have none of their own ([`Job::TIMEOUT`](crate::Job::TIMEOUT)
    /// or [`EnqueueOptions::timeout`](crate::EnqueueOptions::timeout)). Default: none.
    pub fn job_timeout(mut self, timeout: Duration) -> Self {
        self.config.job_timeout = Some(timeout);
        self
    }

    /// The most bytes of stored arguments (`pg_column_size(args)`, compressed for large values)
    /// one claim takes, so that a batch of big jobs cannot balloon the worker's memory. A
    /// claim takes at least one job whatever its size. Default: [`DEFAULT_MAX_CLAIM_BYTES`].
    pub fn max_claim_bytes(mut self, bytes: usize) -> Self {
        self.config.max_claim_bytes = bytes;
        self
    }

    /// The deadline of each database call of the worker's own roles. Default:
    /// [`DEFAULT_DB_TIMEOUT`].
    pub fn db_timeout(mut self, timeout: Duration) -> Self {
        self.config.db_timeout = timeout;
        self
    }

    /// Declares a periodic job. At start the worker stores its schedules in
    /// `skiplock.schedules` under its [`schedule_owner`](Self::schedule_owner), and marks
    /// inactive the schedules that owner declared earlier and no longer declares (a schedule
    /// removed from the code stops firing rather than firing forever). Schedules of other
    /// owners, and those added at runtime, are never touched.
    pub fn schedule(mut self, schedule: Schedule) -> Self {
        self.schedules.push(schedule);
        self
    }

    /// The owner this worker declares its schedules under: one name per service (every process
    /// running the same code), 1 to 128 characters. Default: the executable's file name
    /// (`billing` for `/usr/bin/billing`). Give it explicitly when one service runs under
    /// several executable names, or two services share one.
    pub fn schedule_owner(mut self, owner: impl Into<String>) -> Self {
        self.schedule_owner = Some(owner.into());
        self
    }

    /// The generation of this worker's schedule declaration. A worker declares (stores its
    /// schedules and deactivates its owner's undeclared ones) only if no worker of its owner
    /// declared a higher generation: during a rolling deploy, give the new version a higher
    /// one (a build number, a release timestamp) and old processes starting meanwhile change
    /// nothing, so no schedule flaps. With equal generations the last worker to start wins.
    /// Default: 0.
    pub fn schedule_generation(mut self, generation: i64) -> Self {
        self.schedule_generation = generation;
        self
    }

    /// Whether this worker also runs the scheduler, which enqueues the jobs of due schedules
    /// (any number may run it: each fire time still enqueues one job). It runs while this worker
    /// holds the maintenance leadership, which workers with and without the scheduler elect
    /// separately. Default: `true`.
    pub fn run_scheduler(mut self, run: bool) -> Self {
        self.config.scheduler = run.then(SchedulerConfig::default);
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
        let config = &self.config;
        for (name, value) in [
            ("poll_interval", config.poll_interval),
            ("promote_interval", config.promote_interval),
            ("lease", config.lease),
            ("heartbeat_interval", config.heartbeat_interval()),
            ("rescue_interval", config.rescue_interval),
            ("prune_interval", config.prune_interval),
            ("db_timeout", config.db_timeout),
            ("job_timeout", config.job_timeout.unwrap_or(Duration::MAX)),
        ] {
            if value.is_zero() {
                return Err(BuildError::ZeroDuration(name));
            }
        }
        if config.heartbeat_interval() >= config.lease.mul_f64(FENCE_AFTER) {
            return Err(BuildError::HeartbeatTooSlow {
                heartbeat: config.heartbeat_interval(),
                lease: config.lease,
            });
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
            if *concurrency > MAX_CONCURRENCY {
                return Err(BuildError::ConcurrencyTooHigh(queue.clone()));
            }
            if seen.contains(&queue) {
                return Err(BuildError::DuplicateQueue(queue.clone()));
            }
            seen.push(queue);
        }
        let mut names: Vec<&str> = self.schedules.iter().map(Schedule::name).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            return Err(BuildError::DuplicateSchedule(twice[0].to_owned()));
        }
        let owner = declare::Owner {
            name: self.schedule_owner.unwrap_or_else(declare::default_owner),
            generation: self.schedule_generation,
        };
        if !(1..=128).contains(&owner.name.chars().count()) {
            return Err(BuildError::InvalidScheduleOwner(owner.name));
        }
        let id = self.id.unwrap_or_else(default_worker_id);
        let pools = internal_pool(&self.pool, &self.config, queues.len());
        Ok(Worker {
            pools,
            state: self.state,
            registry: Arc::new(self.registry),
            queues,
            config: self.config,
            id: id.into(),
            schedules: Arc::new(self.schedules),
            owner,
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
    /// The worker's own pools: claims, completions, promotion, rescue, pruning (`internal`);
    /// lease renewals (`keeper`); progress writes (`progress`).
    pools: WorkerPools,
    state: S,
    registry: Arc<Registry<S>>,
    queues: Vec<(String, usize)>,
    config: Config,
    id: Arc<str>,
    schedules: Arc<Vec<Schedule>>,
    owner: declare::Owner,
}

impl<S: Clone + Send + Sync + 'static> Worker<S> {
    /// Starts building a worker that claims jobs through `pool` and hands `state` to every
    /// handler (through [`JobContext::state`](crate::JobContext::state); it is cloned once per
    /// attempt, so keep it cheap to clone: a pool, `Arc`s). Use `()` when handlers need none.
    ///
    /// The worker connects with `pool`'s connect options, and follows them when the
    /// application replaces them ([`Pool::set_connect_options`](sqlx::Pool::set_connect_options),
    /// for a credential refresh), but on small pools of its own, opened lazily, with
    /// `application_name` [`APPLICATION_NAME`]: five connections plus one per queue for claims,
    /// completions and maintenance (one of them is held for LISTEN), two for lease renewals and
    /// cancel checks, two for [`JobContext::set_progress`](crate::JobContext::set_progress). So
    /// handlers exhausting `pool`, or writing progress in a loop, cannot delay claims,
    /// completions or lease renewals. Session settings (`statement_timeout`,
    /// `synchronous_commit`) are set after connecting, which poolers such as PgBouncer accept.
    /// `pool` itself is not used by the worker.
    pub fn builder(pool: PgPool, state: S) -> WorkerBuilder<S> {
        WorkerBuilder {
            pool,
            state,
            registry: Registry::new(),
            duplicate_kind: None,
            queues: Vec::new(),
            config: Config {
                poll_interval: DEFAULT_POLL_INTERVAL,
                fetch_cooldown: DEFAULT_FETCH_COOLDOWN,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                cancel_timeout: DEFAULT_CANCEL_TIMEOUT,
                promote_interval: DEFAULT_PROMOTE_INTERVAL,
                lease: DEFAULT_LEASE,
                heartbeat_interval: None,
                rescue_interval: DEFAULT_RESCUE_INTERVAL,
                job_timeout: None,
                listen: true,
                synchronous_commit: true,
                db_timeout: DEFAULT_DB_TIMEOUT,
                scheduler: Some(SchedulerConfig::default()),
                retention: Retention::default(),
                prune_interval: DEFAULT_PRUNE_INTERVAL,
                max_claim_bytes: DEFAULT_MAX_CLAIM_BYTES,
            },
            id: None,
            schedules: Vec::new(),
            schedule_owner: None,
            schedule_generation: 0,
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

    /// Runs until the process receives SIGINT (ctrl-c) or SIGTERM (on Unix; Ctrl-C elsewhere),
    /// then shuts down gracefully.
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
        self.run_monitored(shutdown, Monitor::default()).await;
    }

    async fn run_monitored(self, shutdown: impl Future<Output = ()>, monitor: Monitor) {
        let stop = CancellationToken::new();
        let running = self.spawn_roles(stop.clone(), &monitor);
        shutdown.await;
        tracing::info!(worker.id = %self.id, "worker stopping");
        stop.cancel();
        running.finish(&self.config).await;
        self.pools.close().await;
        tracing::info!(worker.id = %self.id, "worker stopped");
    }

    /// Runs the worker on a new tokio task and returns a handle to stop it.
    pub fn start(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let id = self.id.clone();
        let signal = stop.clone();
        let monitor = Monitor::default();
        let roles = monitor.clone();
        let task =
            tokio::spawn(async move { self.run_monitored(signal.cancelled_owned(), roles).await });
        WorkerHandle {
            id,
            stop,
            task,
            monitor,
        }
    }

    fn spawn_roles(&self, stop: CancellationToken, monitor: &Monitor) -> Running {
        let config = &self.config;
        let pool = &self.pools.internal;
        let capacity: usize = self.queues.iter().map(|(_, concurrency)| concurrency).sum();
        let (completions, receiver) = mpsc::channel(capacity.max(64) * 2);
        let running = Arc::new(RunningAttempts::default());
        let completer = Completer::new(
            pool.clone(),
            CompleterConfig {
                timeout: config.db_timeout,
                ..CompleterConfig::default()
            },
            receiver,
            running.clone(),
        );
        // Supervised batch by batch inside (it owns the channel's receiving end).
        let completer = tokio::spawn(completer.run(monitor.role("completer")));
        let executor = Arc::new(Executor {
            registry: self.registry.clone(),
            state: self.state.clone(),
            worker_id: self.id.clone(),
            completions,
            running: running.clone(),
            pool: crate::handler::ProgressWriter::new(
                self.pools.progress.clone(),
                config.db_timeout,
            ),
            cancel_timeout: config.cancel_timeout,
            lease: config.lease,
            default_timeout: config.job_timeout,
        });
        let kinds = self.registry.kinds();

        // Claimers stop at the first stage of shutdown; keepers (lease renewal, cancel
        // requests) go on until every running job has finished. Every role is supervised
        // (`service`): a panic or an early return is logged, counted and restarted.
        let jobs = TaskTracker::new();
        let claimers = TaskTracker::new();
        let keepers = TaskTracker::new();
        let keep = CancellationToken::new();
        let mut wakers = HashMap::new();
        for (queue, concurrency) in &self.queues {
            let wake = Arc::new(Notify::new());
            wakers.insert(queue.clone(), wake.clone());
            let producer = ProducerConfig {
                queue: queue.clone(),
                concurrency: *concurrency,
                poll_interval: config.poll_interval,
                fetch_cooldown: config.fetch_cooldown,
                lease: config.lease,
                timeout: config.db_timeout,
                kinds: kinds.clone(),
                max_claim_bytes: i64::try_from(config.max_claim_bytes).unwrap_or(i64::MAX),
            };
            let (pool, executor, jobs, stop) =
                (pool.clone(), executor.clone(), jobs.clone(), stop.clone());
            let health = monitor.role(format!("producer:{queue}"));
            // A restarted producer starts with all its slots free: until the jobs of the one
            // that panicked finish, the queue may run up to twice its concurrency.
            claimers.spawn(service::supervise(health, stop.clone(), move || {
                let producer = Producer::new(
                    producer.clone(),
                    pool.clone(),
                    executor.clone(),
                    wake.clone(),
                    jobs.clone(),
                );
                producer.run(stop.clone())
            }));
        }
        let maintenance = Maintenance {
            promoter: Promoter::new(
                pool.clone(),
                PromoterConfig {
                    interval: config.promote_interval,
                    timeout: config.db_timeout,
                },
            ),
            rescuer: Rescuer::new(
                pool.clone(),
                RescuerConfig {
                    interval: config.rescue_interval,
                    worker_ttl: config.lease * 2,
                    timeout: config.db_timeout,
                },
            ),
            // Returns at once when the retention keeps everything.
            pruner: Pruner::new(
                pool.clone(),
                PrunerConfig {
                    interval: config.prune_interval,
                    retention: config.retention,
                    batch_size: DEFAULT_PRUNE_BATCH,
                    timeout: config.db_timeout,
                },
            ),
            scheduler: config.scheduler.clone().map(|scheduler| {
                let timeout = config.db_timeout;
                Scheduler::new(
                    pool.clone(),
                    SchedulerConfig {
                        timeout,
                        ..scheduler
                    },
                )
            }),
            monitor: monitor.clone(),
        };
        let declare = declare::declare_schedules(
            pool.clone(),
            self.owner.clone(),
            self.schedules.clone(),
            kinds.clone(),
            config.db_timeout,
        );
        // One worker of the database runs maintenance, elected on a session lock; without
        // LISTEN (a transaction-mode pooler) there are no sessions to elect on, so each does.
        let key = match config.scheduler {
            Some(_) => leader::KEY,
            None => leader::KEY_WITHOUT_SCHEDULER,
        };
        let queues = self.queues.iter().map(|(queue, _)| queue.clone()).collect();
        let unrunnable = UnrunnableConfig::new(queues, config.db_timeout);
        let unrunnable = Unrunnable::new(pool.clone(), unrunnable);
        let health = monitor.role("unrunnable");
        let unrunnable_stop = stop.clone();
        claimers.spawn(async move {
            let stop = &unrunnable_stop;
            service::supervise(health, stop.clone(), || unrunnable.run(stop.clone())).await;
        });
        let leader = config
            .listen
            .then(|| Leader::new(pool.clone(), key, config.rescue_interval, config.db_timeout));
        claimers.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => return,
                () = declare => {}
            }
            let monitor = &maintenance.monitor;
            let Some(leader) = leader else {
                monitor.set_maintenance(true);
                return maintenance.run(&stop).await;
            };
            let health = monitor.role("leader");
            let leading = |on| monitor.set_maintenance(on);
            let maintenance = &maintenance;
            leader
                .run(&stop, &health, leading, |term| async move {
                    maintenance.run(&term).await;
                })
                .await;
        });
        claimers.close();

        if config.listen {
            let health = monitor.role("listener");
            let (pool, keeper, running, keep) = (
                pool.clone(),
                self.pools.keeper.clone(),
                running.clone(),
                keep.clone(),
            );
            let timeout = config.db_timeout;
            keepers.spawn(service::supervise(health, keep.clone(), move || {
                Listener::new(
                    pool.clone(),
                    keeper.clone(),
                    timeout,
                    wakers.clone(),
                    running.clone(),
                )
                .run(keep.clone())
            }));
        }
        let heartbeat = HeartbeatConfig {
            lease: config.lease,
            interval: config.heartbeat_interval(),
            timeout: config.db_timeout.min(config.heartbeat_interval()),
            connect_timeout: config.db_timeout,
        };
        let queues = self.queues.iter().map(|(queue, _)| queue.clone()).collect();
        let identity = heartbeat::identity(self.id.clone(), queues, kinds);
        let heartbeat = Arc::new(Heartbeat::new(
            self.pools.keeper.clone(),
            heartbeat,
            running.clone(),
            identity,
        ));
        keepers.spawn({
            let health = monitor.role("heartbeat");
            let heartbeat = heartbeat.clone();
            let keep = keep.clone();
            service::supervise(health, keep.clone(), move || {
                let heartbeat = heartbeat.clone();
                let keep = keep.clone();
                async move { heartbeat.run_loop(keep).await }
            })
        });
        keepers.close();
        tracing::info!(worker.id = %self.id, queues = ?self.queues, "worker started");
        Running {
            claimers,
            keepers,
            keep,
            jobs,
            running,
            completer,
            heartbeat,
        }
    }
}

/// The maintenance roles: promoter, rescuer, pruner, and the embedded scheduler.
struct Maintenance {
    promoter: Promoter,
    rescuer: Rescuer,
    pruner: Pruner,
    scheduler: Option<Scheduler>,
    monitor: Monitor,
}

impl Maintenance {
    /// Runs every maintenance role until `stop` fires.
    async fn run(&self, stop: &CancellationToken) {
        let promoter = self.monitor.role("promoter");
        let rescuer = self.monitor.role("rescuer");
        let pruner = self.monitor.role("pruner");
        let scheduler = async {
            let Some(scheduler) = &self.scheduler else {
                return;
            };
            let health = self.monitor.role("scheduler");
            service::supervise(health, stop.clone(), || scheduler.run(stop.clone())).await;
        };
        tokio::join!(
            self.promoter.run(stop, &promoter),
            self.rescuer.run(stop, &rescuer),
            self.pruner.run_supervised(stop, &pruner),
            scheduler,
        );
    }
}

/// The tasks of a running worker, for the shutdown sequence.
struct Running {
    claimers: TaskTracker,
    keepers: TaskTracker,
    keep: CancellationToken,
    jobs: TaskTracker,
    running: Arc<RunningAttempts>,
    completer: JoinHandle<()>,
    heartbeat: Arc<Heartbeat>,
}

impl Running {
    /// After `stop` fired: waits for the claimers, then for running jobs (stopping them once
    /// the shutdown timeout passes; each is dropped if it ignores that for the cancel timeout),
    /// then for the last outcomes to be recorded, and finally stops renewing and unregisters.
    async fn finish(self, config: &Config) {
        self.claimers.wait().await;
        self.jobs.close();
        if tokio::time::timeout(config.shutdown_timeout, self.jobs.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                running = self.running.len(),
                "jobs still running after the shutdown timeout; cancelling them"
            );
            self.running.stop_all(StopReason::Shutdown);
            self.jobs.wait().await;
        }
        // Every executor is gone now, so the completion channel closes once drained.
        if let Err(error) = self.completer.await {
            tracing::error!(%error, "completer task failed");
        }
        self.keep.cancel();
        self.keepers.wait().await;
        self.heartbeat.unregister().await;
    }
}

/// The worker's own pools: the application's connect options (followed when it changes
/// them), a few connections each, session settings set after connecting.
fn internal_pool(pool: &PgPool, config: &Config, queues: usize) -> WorkerPools {
    let settings = SessionSettings {
        db_timeout: config.db_timeout,
        synchronous_commit: config.synchronous_commit,
    };
    WorkerPools::new(pool, &settings, queues)
}

/// Controls a worker started with [`Worker::start`]. Dropping it leaves the worker running in
/// the background; call [`shutdown`](Self::shutdown) to stop it.
#[derive(Debug)]
#[must_use = "dropping the handle leaves the worker running; call `shutdown` to stop it"]
pub struct WorkerHandle {
    id: Arc<str>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    monitor: Monitor,
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

    /// How the worker's background roles are doing: per role, its consecutive and total
    /// failures, its last error and its last success. [`Health::is_healthy`] is false while a
    /// role has failed [`UNHEALTHY_AFTER`] times in a row (the database is unreachable, or a
    /// role keeps panicking); use it for a readiness probe. Every role is restarted after a
    /// failure, so a worker that is unhealthy for a while recovers by itself once the cause is
    /// gone.
    pub fn health(&self) -> Health {
        self.monitor.snapshot()
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
/// Runs `role` with a stop token that fires when `shutdown` completes: the `run_until` of the
/// roles that can also run on their own ([`Scheduler`], [`Pruner`]).
async fn run_until<F: Future<Output = ()>>(
    shutdown: impl Future<Output = ()>,
    role: impl FnOnce(CancellationToken) -> F,
) {
    let stop = CancellationToken::new();
    let signal = stop.clone();
    tokio::join!(role(stop), async move {
        shutdown.await;
        signal.cancel();
    });
}

/// SIGINT or SIGTERM on Unix; Ctrl-C elsewhere.
#[cfg(unix)]
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

/// SIGINT or SIGTERM on Unix; Ctrl-C elsewhere.
#[cfg(not(unix))]
fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        match tokio::signal::ctrl_c().await {
            Ok(()) => tracing::info!("received Ctrl-C"),
            // Without a handler there is nothing to wait for: run until stopped another way.
            Err(error) => {
                tracing::warn!(%error, "cannot listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        }
    })
}

fn default_worker_id() -> String {
    let host = heartbeat::host_name();
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        fastrand::u32(..0x0100_0000)
    )
}
