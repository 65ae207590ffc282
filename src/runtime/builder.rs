//! [`WorkerBuilder`]: the worker's settings, their defaults and their checks.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::connections::{SessionSettings, WorkerPools};
use super::heartbeat::FENCE_AFTER;
use super::registry::Registry;
use super::{DEFAULT_PRUNE_INTERVAL, Retention, SchedulerConfig, Worker, declare, heartbeat};
use crate::{Handler, Schedule, TraceParent};

/// What [`WorkerBuilder::trace_context`] is given.
pub(crate) type TraceContextHook = Arc<dyn Fn(&tracing::Span, &TraceParent) + Send + Sync>;

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
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
    trace_context: Option<TraceContextHook>,
}

/// Timings shared by the builder and the worker.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) listen: bool,
    pub(super) synchronous_commit: bool,
    pub(super) poll_interval: Duration,
    pub(super) fetch_cooldown: Duration,
    pub(super) shutdown_timeout: Duration,
    pub(super) cancel_timeout: Duration,
    pub(super) promote_interval: Duration,
    pub(super) lease: Duration,
    pub(super) heartbeat_interval: Option<Duration>,
    pub(super) rescue_interval: Duration,
    pub(super) job_timeout: Option<Duration>,
    pub(super) db_timeout: Duration,
    pub(super) scheduler: Option<SchedulerConfig>,
    pub(super) retention: Retention,
    pub(super) prune_interval: Duration,
    pub(super) max_claim_bytes: usize,
}

impl Config {
    pub(super) fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval.unwrap_or(self.lease / 3)
    }
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
            #[cfg(feature = "metrics")]
            metrics: None,
            trace_context: None,
        }
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
    /// turns pruning off. A job that finished after jobs enqueued later were deleted may
    /// outlive its retention by up to that retention again, at most 5 minutes and a prune
    /// interval, while the pruner's rounds are fast (see
    /// [`Pruner`](crate::Pruner)).
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
    /// election (it needs a session, as LISTEN does) and runs the maintenance roles itself, and
    /// its claim connections do not `SET plan_cache_mode` (a session setting that would outlive
    /// the transaction behind such a pooler), so each claim is planned anew (about 0.3 ms of
    /// server time more per claim).
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

    /// Counts what this worker does in `metrics` (the `skiplock_jobs_...`, `skiplock_claim_...`
    /// and other worker metrics of [`skiplock::metrics`](crate::metrics)). Several workers may
    /// share one [`Metrics`](crate::metrics::Metrics): their counts add up. Handles for every
    /// queue are made by [`build`](Self::build), those of a kind at its first attempt in a
    /// queue, so the worker never builds label sets while it works. Default: no metrics, and
    /// the worker's roles do no metrics work at all.
    #[cfg(feature = "metrics")]
    pub fn metrics(mut self, metrics: &crate::metrics::Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Called for each attempt of a job that carries trace context
    /// ([`EnqueueOptions::traceparent`](crate::EnqueueOptions::traceparent)), with the
    /// attempt's `skiplock.job` span before it is entered and the job's [`TraceParent`]: the
    /// place to make that span a child of the enqueuer's, for instance with
    /// `tracing-opentelemetry`'s `span.set_parent(...)` (see `examples/opentelemetry`). The span
    /// records the value as its field `traceparent` either way. A panic in `link` is caught and
    /// logged; the attempt runs. Default: none.
    pub fn trace_context(
        mut self,
        link: impl Fn(&tracing::Span, &TraceParent) + Send + Sync + 'static,
    ) -> Self {
        self.trace_context = Some(Arc::new(link));
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
        #[cfg(feature = "metrics")]
        let metrics = self
            .metrics
            .map(|metrics| Arc::new(metrics.worker(&queues, &self.registry.kinds())));
        #[cfg(not(feature = "metrics"))]
        let metrics = None;
        Ok(Worker {
            pools,
            state: self.state,
            registry: Arc::new(self.registry),
            queues,
            config: self.config,
            id: id.into(),
            schedules: Arc::new(self.schedules),
            owner,
            metrics,
            trace_context: self.trace_context,
        })
    }
}

/// The worker's own pools: the application's connect options (followed when it changes
/// them), a few connections each, session settings set after connecting.
fn internal_pool(pool: &PgPool, config: &Config, queues: usize) -> WorkerPools {
    let settings = SessionSettings {
        db_timeout: config.db_timeout,
        synchronous_commit: config.synchronous_commit,
        // Without LISTEN the worker is presumably behind a transaction-mode pooler, where a
        // session setting lands on a server connection other clients use next: the claims then
        // keep the server's plan choice rather than hand generic plans to the application.
        generic_claim_plans: config.listen,
    };
    WorkerPools::new(pool, &settings, queues)
}

fn default_worker_id() -> String {
    let host = heartbeat::host_name();
    format!(
        "{host}:{}:{:06x}",
        std::process::id(),
        fastrand::u32(..0x0100_0000)
    )
}
