//! [`Worker`]: starts every role of a running worker, and [`WorkerHandle`] to stop it.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::builder::{Config, TraceContextHook};
use super::completer::{Completer, CompleterConfig};
use super::connections::WorkerPools;
use super::executor::Executor;
use super::heartbeat::{Heartbeat, HeartbeatConfig};
use super::leader::Leader;
use super::listener::Listener;
use super::producer::{IDLE_PROBE_INTERVAL, Producer, ProducerConfig};
use super::promoter::{Promoter, PromoterConfig};
use super::pruner::{DEFAULT_PRUNE_BATCH, Pruner, PrunerConfig};
use super::registry::Registry;
use super::rescuer::{Rescuer, RescuerConfig};
use super::running::RunningAttempts;
use super::scheduler::{Scheduler, SchedulerConfig};
use super::service::{self, Health, Monitor};
use super::shutdown::{Running, shutdown_signal};
use super::stats::OutcomeStats;
use super::unrunnable::{Unrunnable, UnrunnableConfig};
use super::{declare, heartbeat, leader};
use crate::Schedule;
use crate::metrics::WorkerMetrics;

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
    pub(super) pools: WorkerPools,
    pub(super) state: S,
    pub(super) registry: Arc<Registry<S>>,
    pub(super) queues: Vec<(String, usize)>,
    pub(super) config: Config,
    pub(super) id: Arc<str>,
    pub(super) schedules: Arc<Vec<Schedule>>,
    pub(super) owner: declare::Owner,
    /// What the roles count, when the builder was given metrics.
    pub(super) metrics: Option<Arc<WorkerMetrics>>,
    pub(super) trace_context: Option<TraceContextHook>,
}

impl<S: Clone + Send + Sync + 'static> Worker<S> {
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
    /// docs](crate::runtime)).
    ///
    /// # Cancel safety
    /// Not cancel safe, as [`run`](Self::run).
    pub async fn run_until(self, shutdown: impl Future<Output = ()>) {
        let monitor = Monitor::new(self.metrics.clone());
        self.run_monitored(shutdown, monitor).await;
    }

    async fn run_monitored(self, shutdown: impl Future<Output = ()>, monitor: Monitor) {
        let stop = CancellationToken::new();
        if let Some(metrics) = &self.metrics {
            metrics.worker_started();
        }
        let running = self.spawn_roles(stop.clone(), &monitor);
        shutdown.await;
        tracing::info!(worker.id = %self.id, "worker stopping");
        stop.cancel();
        running.finish(&self.config).await;
        self.pools.close().await;
        if let Some(metrics) = &self.metrics {
            metrics.worker_stopped();
        }
        tracing::info!(worker.id = %self.id, "worker stopped");
    }

    /// Runs the worker on a new tokio task and returns a handle to stop it.
    pub fn start(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let id = self.id.clone();
        let signal = stop.clone();
        let monitor = Monitor::new(self.metrics.clone());
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
        let stats = Arc::new(OutcomeStats::default());
        let completer = Completer::new(
            pool.clone(),
            CompleterConfig {
                timeout: config.db_timeout,
                ..CompleterConfig::default()
            },
            receiver,
            running.clone(),
            stats.clone(),
        )
        .with_metrics(self.metrics.clone());
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
            metrics: self.metrics.clone(),
            trace_context: self.trace_context.clone(),
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
                // Without LISTEN no wake-up tells of a new limit: every empty claim looks.
                idle_probe_interval: if config.listen {
                    IDLE_PROBE_INTERVAL
                } else {
                    std::time::Duration::ZERO
                },
            };
            // The claims' own pool, on generic plans (see `connections`).
            let (pool, executor, jobs, stop) = (
                self.pools.claims.clone(),
                executor.clone(),
                jobs.clone(),
                stop.clone(),
            );
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
        // Followers ask on a claims connection, which is open anyway (see `runtime::leader`).
        let claims = &self.pools.claims;
        let leader = config.listen.then(|| {
            Leader::new(
                claims.clone(),
                key,
                config.rescue_interval,
                config.db_timeout,
            )
        });
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
        let identity = heartbeat::identity(self.id.clone(), &self.queues, kinds);
        let heartbeat = Arc::new(
            Heartbeat::new(
                self.pools.keeper.clone(),
                heartbeat,
                running.clone(),
                identity,
                stats,
                self.pools.internal.clone(),
            )
            .with_metrics(self.metrics.clone()),
        );
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
    /// role has failed [`UNHEALTHY_AFTER`](super::UNHEALTHY_AFTER) times in a row (the database is unreachable, or a
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
