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
//! the database at a time: the one holding a session-level advisory lock on a connection of its
//! own. Others try to take it every [`WorkerBuilder::rescue_interval`] on a borrowed connection,
//! so when the leader stops or dies one of them takes over within that interval (within four
//! intervals when the leader hangs or loses the network: the server ends its silent session).
//! Measured: 50 idle workers cost the server 83 statements/s in all with election, 435
//! without; most of what is left is each producer's poll (`docs/performance.md`). Leadership
//! saves work, nothing relies on it: every maintenance role is safe with several instances at
//! once. A worker built with [`listen(false)`](WorkerBuilder::listen) does not elect and runs
//! them itself.
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

mod builder;
mod completer;
mod connections;
mod cursor;
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
mod shutdown;
mod stats;
mod unrunnable;
mod whole_reads;
mod worker;

pub use self::builder::{
    APPLICATION_NAME, BuildError, DEFAULT_CANCEL_TIMEOUT, DEFAULT_CONCURRENCY, DEFAULT_DB_TIMEOUT,
    DEFAULT_FETCH_COOLDOWN, DEFAULT_LEASE, DEFAULT_MAX_CLAIM_BYTES, DEFAULT_POLL_INTERVAL,
    DEFAULT_PROMOTE_INTERVAL, DEFAULT_RESCUE_INTERVAL, DEFAULT_SHUTDOWN_TIMEOUT, MAX_CONCURRENCY,
    WorkerBuilder,
};
pub use self::pruner::{
    DEFAULT_CANCELLED_RETENTION, DEFAULT_COMPLETED_RETENTION, DEFAULT_FAILED_RETENTION,
    DEFAULT_PRUNE_BATCH, DEFAULT_PRUNE_INTERVAL, PruneError, PruneReport, Pruner, PrunerConfig,
    Retention,
};
pub use self::scheduler::{
    DEFAULT_MISFIRE_GRACE, DEFAULT_SCHEDULER_INTERVAL, DEFAULT_SCHEDULER_TIMEOUT,
    MAX_COUNTED_MISSES, MAX_FIRES_PER_ROUND, Scheduler, SchedulerConfig, SchedulerError,
    SchedulerReport,
};
pub use self::service::{Health, MAX_BACKOFF_FACTOR, RoleHealth, STEADY_AFTER, UNHEALTHY_AFTER};
use self::shutdown::run_until;
pub use self::worker::{Worker, WorkerError, WorkerHandle};
