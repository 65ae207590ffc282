//! The producer: one per queue and worker; claims as many jobs as it has free slots, in one
//! statement, and starts an executor task for each.
//!
//! It claims again as soon as a slot frees up while the queue has work, and otherwise sleeps
//! until a wake-up notification for its queue arrives or the poll interval passes, whichever
//! comes first.
//!
//! A queue or kind with a cluster-wide limit ([`crate::limits`]) is claimed through the limited
//! claim (`db::throttle::claim`). Which claim to use is remembered between claims and looked up
//! again (one small probe) only after a claim that came back short: the plain claim refuses a
//! limited queue, so a limit set meanwhile shows as an empty claim, followed by the probe and an
//! immediate limited claim; a limit cleared shows at the next short limited claim. A claim held
//! back by a rate sleeps until the next start is due (or a wake-up), never polling faster.
//!
//! A plain claim reads each kind from the head of the queue, or from where this producer's last
//! claim of it ended when claims from the head cost more per job ([`super::cursor`]): a long
//! transaction pinning the xmin horizon then slows only the claims from the head, which are
//! spaced out.
//!
//! An empty plain claim is the idle queue's poll, once a second per queue and worker: probing
//! after each one made an idle fleet cost the server half as much again (50 idle workers: 128
//! statements/s, 83 without). `skiplock.set_limit` wakes the workers of its scope, so an empty
//! claim is followed by a probe when a wake-up came since the last claim, and otherwise only
//! once per [`ProducerConfig::idle_probe_interval`] (a limit written by hand, a lost wake-up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sqlx::PgPool;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::cursor::Cursor;
use super::deadline::{DbCallError, deadline};
use super::executor::Executor;
use crate::db;

/// The first wait after a failed claim; it doubles up to the poll interval.
const FIRST_ERROR_DELAY: Duration = Duration::from_millis(100);

/// Configuration of one [`Producer`].
#[derive(Clone, Debug)]
pub(crate) struct ProducerConfig {
    /// The queue to claim from.
    pub(crate) queue: String,
    /// How many of its jobs may run at once.
    pub(crate) concurrency: usize,
    /// The longest sleep without a wake-up before claiming again.
    pub(crate) poll_interval: Duration,
    /// After a claim that filled every free slot, how long to let more slots free up before
    /// claiming again, so that a busy queue is claimed in batches rather than one job at a time.
    pub(crate) fetch_cooldown: Duration,
    /// How long a claimed job's lease lasts.
    pub(crate) lease: Duration,
    /// The deadline of one claim.
    pub(crate) timeout: Duration,
    /// The kinds this worker can run; only those are claimed.
    pub(crate) kinds: Vec<String>,
    /// The most bytes of stored arguments one claim takes (at least one job whatever its size).
    pub(crate) max_claim_bytes: i64,
    /// How often an empty claim without a wake-up since the last one looks for a new limit
    /// (see the [module docs](self)); zero after every empty claim, as a worker without LISTEN
    /// does, whose wake-ups never come. Default: [`IDLE_PROBE_INTERVAL`].
    pub(crate) idle_probe_interval: Duration,
}

/// How often an idle producer of a worker with LISTEN looks for a limit set without a wake-up.
pub(crate) const IDLE_PROBE_INTERVAL: Duration = Duration::from_secs(10);

pub(crate) struct Producer<S> {
    config: ProducerConfig,
    pool: PgPool,
    executor: Arc<Executor<S>>,
    wake: Arc<Notify>,
    slots: Arc<Semaphore>,
    tracker: TaskTracker,
    /// Whether a limit applied at the last probe: claims go through `db::throttle::claim`.
    throttled: AtomicBool,
    /// A wake-up came since the last claim (perhaps from `skiplock.set_limit`).
    woken: AtomicBool,
    /// When the last probe ran; `None` before the first.
    probed_at: std::sync::Mutex<Option<Instant>>,
    /// Where plain claims start.
    cursor: std::sync::Mutex<Cursor>,
}

impl<S: Clone + Send + Sync + 'static> Producer<S> {
    pub(crate) fn new(
        config: ProducerConfig,
        pool: PgPool,
        executor: Arc<Executor<S>>,
        wake: Arc<Notify>,
        tracker: TaskTracker,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.concurrency));
        Self {
            config,
            pool,
            executor,
            wake,
            slots,
            tracker,
            throttled: AtomicBool::new(false),
            woken: AtomicBool::new(false),
            probed_at: std::sync::Mutex::new(None),
            cursor: std::sync::Mutex::new(Cursor::default()),
        }
    }

    /// Claims and starts jobs until `stop` fires. Jobs already started keep running on the
    /// tracker; the worker waits for them.
    pub(crate) async fn run(self, stop: CancellationToken) {
        let mut error_delay = FIRST_ERROR_DELAY;
        loop {
            // Wait for a free slot: claiming with none would only lock rows we cannot run.
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                permit = self.slots.acquire() => drop(permit),
            }
            let wait = match self.run_once().await {
                Ok(Claim {
                    claimed,
                    requested,
                    cut_by_bytes,
                    retry_in,
                }) => {
                    error_delay = FIRST_ERROR_DELAY;
                    if claimed == requested || cut_by_bytes {
                        // Every free slot got a job, or the byte bound left some behind, so
                        // more are probably waiting.
                        Wait::Sleep(self.config.fetch_cooldown)
                    } else if let Some(retry_in) = retry_in {
                        // A limit was just found (claim again at once) or a rate holds the
                        // queue back (until its next start is due).
                        Wait::Idle(retry_in.min(self.config.poll_interval))
                    } else {
                        Wait::Idle(self.config.poll_interval)
                    }
                }
                Err(error) => {
                    tracing::warn!(
                        %error,
                        queue = %self.config.queue,
                        retry_in_ms = error_delay.as_millis() as u64,
                        "could not claim jobs; retrying"
                    );
                    let delay = error_delay;
                    error_delay = (error_delay * 2).min(self.config.poll_interval);
                    Wait::Sleep(delay)
                }
            };
            match wait {
                Wait::Sleep(delay) => tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(delay) => {}
                },
                Wait::Idle(delay) => tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    () = self.wake.notified() => self.woken.store(true, Ordering::Relaxed),
                    () = tokio::time::sleep(delay) => {}
                },
            }
        }
        tracing::debug!(queue = %self.config.queue, "producer stopped");
    }

    /// Claims up to the number of free slots in one statement and starts each job.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped while the claim is in flight, claimed jobs would stay `running`
    /// with nobody running them until their lease expires.
    pub(crate) async fn run_once(&self) -> Result<Claim, DbCallError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(Claim::default());
        }
        // Hold the slots while claiming; only this producer takes permits from its semaphore.
        let Ok(mut permits) = self.slots.clone().try_acquire_many_owned(free as u32) else {
            return Ok(Claim::default());
        };
        // A connection first: opening one may take a while (a reconnect, a busy server), and
        // that wait must not count against the leases of the jobs about to be claimed.
        let mut conn = deadline(self.config.timeout, self.pool.acquire()).await?;
        // Taken before the statement is sent: the lease is at least this fresh.
        let leased_at = Instant::now();
        let throttled = self.throttled.load(Ordering::Relaxed);
        let mut head_due_in = None;
        let jobs = if throttled {
            let claim = db::throttle::claim(
                &mut *conn,
                &self.config.queue,
                i32::try_from(free).unwrap_or(i32::MAX),
                &self.executor.worker_id,
                self.config.lease.as_secs_f64(),
                &self.config.kinds,
                self.config.max_claim_bytes,
            );
            deadline(self.config.timeout, claim).await
        } else {
            let (from_head, after) = {
                let cursor = self.cursor();
                let from_head = cursor.reads_head(leased_at);
                (from_head, cursor.after(&self.config.kinds, from_head))
            };
            let claim = db::job::claim(
                &mut *conn,
                &self.config.queue,
                free as i64,
                &self.executor.worker_id,
                self.config.lease.as_secs_f64(),
                db::job::Scans {
                    kinds: &self.config.kinds,
                    after: &after,
                },
                self.config.max_claim_bytes,
            );
            // A claim that times out may still commit; its jobs then wait for their lease to
            // expire and are rescued. Better than a producer hung on a dead connection.
            let jobs = deadline(self.config.timeout, claim).await;
            let claimed = jobs.as_deref().ok();
            let mut cursor = self.cursor();
            cursor.record(from_head, leased_at, leased_at.elapsed(), claimed);
            let short = claimed.is_some_and(|claimed| {
                claimed.len() < free && claimed.first().is_none_or(|job| !job.cut_by_bytes)
            });
            if !from_head && short {
                // Jobs before the positions are not for the next poll to find.
                head_due_in = Some(cursor.head_due_in(Instant::now()));
            }
            jobs
        };
        if let Some(metrics) = &self.executor.metrics {
            let claimed = jobs.as_ref().map_or(0, Vec::len);
            metrics.claimed(&self.config.queue, claimed, leased_at.elapsed());
        }
        let jobs = jobs?;
        let claimed = jobs.len();
        let cut_by_bytes = jobs.first().is_some_and(|job| job.cut_by_bytes);
        for job in jobs {
            // Always `Some`: the claim returns at most `free` rows. Were it ever `None`, the job
            // would still run, one over the limit, rather than be left claimed and idle.
            let permit = permits.split(1);
            let executor = self.executor.clone();
            self.tracker.spawn(async move {
                executor.execute(job, leased_at).await;
                drop(permit);
            });
        }
        if claimed > 0 {
            tracing::trace!(queue = %self.config.queue, claimed, free, "claimed jobs");
        }
        // Which claim to use next: looked up after a short limited claim (a limit cleared? a
        // rate holding us back?) or an empty plain claim (a limit set?). A full plain claim, the
        // unlimited hot path, costs nothing more.
        let mut retry_in = head_due_in;
        let woken = self.woken.swap(false, Ordering::Relaxed);
        if (throttled && claimed < free) || (claimed == 0 && self.probe_due(woken)) {
            let probe = deadline(
                self.config.timeout,
                db::throttle::probe(&mut *conn, &self.config.queue, &self.config.kinds),
            )
            .await
            .inspect_err(|_| {
                // The wake-up is not used up by a probe that failed: the next claim looks.
                self.woken.fetch_or(woken, Ordering::Relaxed);
            })?;
            self.probed(Instant::now());
            self.throttled.store(probe.applies, Ordering::Relaxed);
            if probe.applies && !throttled && claimed == 0 {
                retry_in = Some(Duration::ZERO);
            } else if let Some(wait) = probe.wait_secs.filter(|wait| *wait > 0.0) {
                let wait = Duration::from_secs_f64(wait.min(86_400.0));
                retry_in = Some(retry_in.map_or(wait, |due| due.min(wait)));
            }
        }
        Ok(Claim {
            claimed,
            requested: free,
            cut_by_bytes,
            retry_in,
        })
    }
}

impl<S> Producer<S> {
    /// Whether an empty plain claim should look for a new limit.
    fn probe_due(&self, woken: bool) -> bool {
        let probed_at = *self
            .probed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        woken || probed_at.is_none_or(|at| at.elapsed() >= self.config.idle_probe_interval)
    }

    fn cursor(&self) -> std::sync::MutexGuard<'_, Cursor> {
        self.cursor
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn probed(&self, at: Instant) {
        *self
            .probed_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(at);
    }
}

/// What one claim did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Claim {
    /// Jobs claimed and started.
    pub(crate) claimed: usize,
    /// Free slots at the time, i.e. the most it could have claimed.
    pub(crate) requested: usize,
    /// The claim's byte bound left out jobs it could otherwise have taken.
    pub(crate) cut_by_bytes: bool,
    /// When to claim again although the claim came back short: at once after a limit was found,
    /// when a rate limit allows the next start, or when a claim from the head is due after a
    /// claim from the positions ([`super::cursor`]).
    pub(crate) retry_in: Option<Duration>,
}

/// How the producer waits before its next claim.
enum Wait {
    /// This long, whatever happens.
    Sleep(Duration),
    /// Until a wake-up for the queue, or this long.
    Idle(Duration),
}

#[cfg(test)]
mod tests {
    use serde::{Deserialize, Serialize};
    use serde_json::json;
    use tokio::sync::mpsc;

    use super::*;
    use crate::runtime::registry::Registry;
    use crate::{EnqueueOptions, Handler, Job, JobContext, JobError, NewJob};
    use skiplock_testing::TestDatabase;

    /// Runs until the test says so.
    #[derive(Serialize, Deserialize)]
    struct Hold;

    impl Job for Hold {
        const KIND: &'static str = "hold";
    }

    impl Handler<Arc<Notify>> for Hold {
        type Output = ();

        async fn handle(self, ctx: JobContext<Arc<Notify>>) -> Result<(), JobError> {
            ctx.state().notified().await;
            Ok(())
        }
    }

    async fn available(pool: &PgPool) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs WHERE state = 'available'")
            .fetch_one(pool)
            .await
            .expect("count")
    }

    /// A producer of `hold` jobs on the default queue with `concurrency` slots.
    fn producer(
        db: &TestDatabase,
        concurrency: usize,
        idle_probe_interval: Duration,
    ) -> (
        Producer<Arc<Notify>>,
        Arc<Notify>,
        mpsc::Receiver<super::super::completer::Completion>,
        TaskTracker,
    ) {
        let mut registry = Registry::new();
        registry.register::<Hold>();
        let release = Arc::new(Notify::new());
        let (completions, outcomes) = mpsc::channel(8);
        let executor = Arc::new(Executor {
            registry: Arc::new(registry),
            state: release.clone(),
            worker_id: "test".into(),
            completions,
            running: Arc::default(),
            pool: crate::handler::ProgressWriter::new(db.pool().clone(), Duration::from_secs(10)),
            cancel_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(60),
            default_timeout: None,
            metrics: None,
            trace_context: None,
        });
        let config = ProducerConfig {
            queue: "default".into(),
            concurrency,
            poll_interval: Duration::from_secs(1),
            fetch_cooldown: Duration::ZERO,
            lease: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            kinds: vec!["hold".to_owned()],
            max_claim_bytes: i64::MAX,
            idle_probe_interval,
        };
        let tracker = TaskTracker::new();
        let producer = Producer::new(
            config,
            db.pool().clone(),
            executor,
            Arc::new(Notify::new()),
            tracker.clone(),
        );
        (producer, release, outcomes, tracker)
    }

    /// An idle queue's empty claims look for a new limit only after a wake-up (which
    /// `skiplock.set_limit` sends) or once per `idle_probe_interval`, not at every poll.
    #[tokio::test]
    async fn an_idle_queue_looks_for_limits_after_a_wake_up() {
        let db = TestDatabase::new().await.expect("database");
        let (producer, _release, _outcomes, _tracker) = producer(&db, 3, Duration::from_secs(3600));
        producer.run_once().await.expect("first claim");
        assert!(!producer.throttled.load(Ordering::Relaxed));
        // A limit, its wake-up lost: the polls do not look for it within the interval.
        let limit = crate::limits::Limit::queue("default").max_running(1);
        crate::limits::set(db.pool(), &limit).await.expect("limit");
        for _ in 0..3 {
            producer.run_once().await.expect("idle claim");
        }
        assert!(
            !producer.throttled.load(Ordering::Relaxed),
            "probed without a wake-up"
        );
        // The wake-up arrives (the run loop records it): the next empty claim looks.
        producer.woken.store(true, Ordering::Relaxed);
        producer.run_once().await.expect("woken claim");
        assert!(
            producer.throttled.load(Ordering::Relaxed),
            "the limit was not found"
        );
    }

    /// A job that sorts before where the last claim ended (here: of a higher priority) is left
    /// by claims from the positions, and taken by the next claim from the head, which a short
    /// claim from the positions schedules instead of leaving it to the poll.
    #[tokio::test]
    async fn a_job_before_the_positions_waits_only_for_the_next_claim_from_the_head() {
        let db = TestDatabase::new().await.expect("database");
        let hold = || NewJob::untyped("hold", json!(null), EnqueueOptions::new());
        crate::enqueue_many(db.pool(), [hold(), hold()])
            .await
            .expect("enqueue");
        let (producer, release, mut outcomes, tracker) =
            producer(&db, 10, Duration::from_secs(3600));
        assert_eq!(producer.run_once().await.expect("claim").claimed, 2);
        // As under a pinned horizon: the head cost 5 s, so the next claims read from the
        // positions for a while.
        let dear = Duration::from_secs(5);
        producer
            .cursor()
            .record(true, Instant::now(), dear, Some(&[]));
        let urgent = NewJob::untyped("hold", json!(null), EnqueueOptions::new().priority(-1));
        crate::enqueue_many(db.pool(), [urgent])
            .await
            .expect("enqueue");

        let short = producer.run_once().await.expect("claim");
        assert_eq!(short.claimed, 0, "{short:?}");
        let due = short.retry_in.expect("a claim from the head, scheduled");
        assert!(due > Duration::ZERO && due <= dear * 10, "{due:?}");
        // The horizon moves: the head is cheap again, and the next claim reads it.
        producer
            .cursor()
            .record(true, Instant::now(), Duration::ZERO, Some(&[]));
        assert_eq!(producer.run_once().await.expect("claim").claimed, 1);

        for _ in 0..3 {
            release.notify_one();
            outcomes.recv().await.expect("an outcome");
        }
        tracker.close();
        tracker.wait().await;
    }

    #[tokio::test]
    async fn claims_no_more_than_its_free_slots() {
        let db = TestDatabase::new().await.expect("database");
        let jobs = (0..5).map(|_| NewJob::untyped("hold", json!(null), EnqueueOptions::new()));
        crate::enqueue_many(db.pool(), jobs).await.expect("enqueue");

        let (producer, release, mut outcomes, tracker) = producer(&db, 3, Duration::ZERO);

        let first = producer.run_once().await.expect("claim");
        assert_eq!(
            first,
            Claim {
                claimed: 3,
                requested: 3,
                cut_by_bytes: false,
                retry_in: None,
            }
        );
        // Every slot is busy: nothing more is claimed, however much is waiting.
        let busy = producer.run_once().await.expect("claim");
        assert_eq!(
            busy,
            Claim {
                claimed: 0,
                requested: 0,
                cut_by_bytes: false,
                retry_in: None,
            }
        );
        assert_eq!(available(db.pool()).await, 2);

        // One job finishes: exactly one slot frees up and one more job is claimed.
        release.notify_one();
        let finished = outcomes.recv().await.expect("an outcome");
        assert!(matches!(
            finished.outcome,
            crate::runtime::completer::Outcome::Completed(_)
        ));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let next = producer.run_once().await.expect("claim");
        assert_eq!(
            next,
            Claim {
                claimed: 1,
                requested: 1,
                cut_by_bytes: false,
                retry_in: None,
            }
        );
        assert_eq!(available(db.pool()).await, 1);

        for _ in 0..3 {
            release.notify_one();
            outcomes.recv().await.expect("an outcome");
        }
        tracker.close();
        tracker.wait().await;
    }
}
