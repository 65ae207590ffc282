//! A fixed offered load: `skiplock bench steady`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgPool};

use super::drain::{start_workers, stop_all};
use super::probe::{KIND, Noop, Probe};
use super::{BenchConfig, BenchDatabase, BenchError, Progress, QUEUE, Report, reporting};
use crate::{NewJob, db, enqueue_many};

/// How often the enqueuer inserts what is due, in one statement.
const TICK: Duration = Duration::from_millis(10);

/// Offered load: `rate` jobs per second enqueued for `duration` (in batches every 10 ms, each
/// its own transaction) while `workers` workers run them. Reports the completion rate, the
/// backlog, enqueue-to-start latency and a per-second timeline.
#[derive(Clone, Debug)]
pub struct Steady {
    /// Jobs per second offered. Default 1,000.
    pub rate: u32,
    /// How long to offer them. Default 30 s.
    pub duration: Duration,
    /// Workers, all in this process. Default 1.
    pub workers: u32,
    /// Jobs each worker runs at once. Default 1,000.
    pub concurrency: usize,
    /// A `REPEATABLE READ` transaction held open during the run, pinning the xmin horizon.
    pub hold_snapshot: Option<HoldSnapshot>,
}

impl Default for Steady {
    fn default() -> Self {
        Self {
            rate: 1_000,
            duration: Duration::from_secs(30),
            workers: 1,
            concurrency: 1_000,
            hold_snapshot: None,
        }
    }
}

/// When a long reader holds its snapshot during [`Steady`]; `at + hold` must not exceed the
/// run's duration.
#[derive(Clone, Copy, Debug)]
pub struct HoldSnapshot {
    /// Time from the start of the run until the transaction opens.
    pub at: Duration,
    /// How long it stays open.
    pub hold: Duration,
}

/// One second of the run, from in-process counters.
#[derive(Clone, Copy, Debug, Default)]
struct Second {
    started: u64,
    backlog: u64,
}

impl Steady {
    pub(super) async fn run(
        &self,
        config: &BenchConfig,
        database: &BenchDatabase,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Report, BenchError> {
        if self.rate == 0 || self.workers == 0 || self.concurrency == 0 || self.duration.is_zero() {
            return Err(BenchError::Invalid(
                "rate, duration, workers and concurrency must be above zero".into(),
            ));
        }
        if let Some(hold) = self.hold_snapshot
            && hold.at + hold.hold > self.duration
        {
            return Err(BenchError::Invalid(format!(
                "the snapshot ({:?} + {:?}) must be released within the duration ({:?})",
                hold.at, hold.hold, self.duration
            )));
        }
        let mut conn = database.connect().await?;
        let before = super::cost::Before::read(&mut conn).await?;
        let probe = Probe::recording();
        let worker_pool = database.pool(2).await?;
        let enqueue_pool = database.pool(2).await?;
        let holder = match self.hold_snapshot {
            Some(_) => Some(database.connect().await?),
            None => None,
        };
        // Last, so that no fallible step comes after the workers are running.
        let metrics = config.metrics.then(crate::metrics::Metrics::new);
        let workers = start_workers(
            config,
            &worker_pool,
            &probe,
            self.concurrency,
            self.workers,
            metrics.as_ref(),
        )?;

        let enqueued = Arc::new(AtomicU64::new(0));
        let started = Instant::now();
        let run = async {
            let enqueuer = enqueue_for(&enqueue_pool, self.rate, self.duration, enqueued.clone());
            let timeline = sample(&probe, &enqueued, self.duration);
            let hold = async {
                if let (Some(hold), Some(mut conn)) = (self.hold_snapshot, holder) {
                    tokio::time::sleep(hold.at).await;
                    let mut tx = conn
                        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ")
                        .await?;
                    db::bench::take_snapshot(&mut *tx).await?;
                    tokio::time::sleep(hold.hold).await;
                    tx.commit().await?;
                }
                Ok::<_, sqlx::Error>(())
            };
            let (commits, timeline, hold) = tokio::join!(enqueuer, timeline, hold);
            hold.map_err(BenchError::database("hold a snapshot"))?;
            Ok::<_, BenchError>((commits?, timeline))
        };
        let total = u64::from(self.rate) * self.duration.as_secs();
        let outcome = reporting("steady", Some(total), || probe.started(), progress, run).await;
        let seconds = started.elapsed().as_secs_f64();
        // Read the backlog and completions as the offered load stops, before the workers drain.
        let completed = db::bench::completed(&mut conn, KIND).await;
        let backlog_end = db::bench::backlog(&mut conn, QUEUE).await;
        let stopped = stop_all(workers).await;
        worker_pool.close().await;
        enqueue_pool.close().await;
        let (commits, timeline) = outcome?;
        stopped?;
        let completed = completed.map_err(BenchError::database("count completed jobs"))?;
        let backlog_end = backlog_end.map_err(BenchError::database("count the backlog"))?;

        let latencies = probe
            .take_starts()
            .into_iter()
            .filter_map(|(id, began)| {
                let committed = commits.get(&id)?;
                Some(began.saturating_duration_since(*committed).as_secs_f64() * 1_000.0)
            })
            .collect();
        let rates: Vec<u64> = timeline.iter().map(|second| second.started).collect();
        let backlogs: Vec<u64> = timeline.iter().map(|second| second.backlog).collect();
        let mut report = Report::new("steady", completed.count as u64, seconds)
            .latencies(latencies)
            .detail("offered_per_s", self.rate)
            .detail("enqueued", enqueued.load(Ordering::Relaxed))
            .detail("workers", self.workers)
            .detail("concurrency", self.concurrency)
            .detail("backlog_end", backlog_end)
            .detail("backlog_max", backlogs.iter().copied().max().unwrap_or(0))
            .detail("started_per_s", rates.clone())
            .detail("backlog_per_s", backlogs.clone());
        if let Some(hold) = self.hold_snapshot {
            report = hold_summary(report, hold, &rates, &backlogs);
        }
        before.finish(&mut conn, report).await
    }
}

/// Enqueues `rate` jobs a second for `duration`, every [`TICK`] whatever is due; returns when
/// each job's insert committed.
async fn enqueue_for(
    pool: &PgPool,
    rate: u32,
    duration: Duration,
    enqueued: Arc<AtomicU64>,
) -> Result<HashMap<i64, Instant>, BenchError> {
    let mut commits = HashMap::new();
    let started = Instant::now();
    let mut ticks = tokio::time::interval(TICK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sent = 0_u64;
    loop {
        ticks.tick().await;
        let elapsed = started.elapsed().min(duration);
        let due = (elapsed.as_secs_f64() * f64::from(rate)) as u64;
        if due > sent {
            let jobs = (sent..due)
                .map(|n| NewJob::new(&Noop::new(n as i64)))
                .collect::<Result<Vec<_>, _>>()?;
            let ids = enqueue_many(pool, jobs).await?;
            let committed = Instant::now();
            commits.extend(ids.into_iter().map(|id| (id, committed)));
            sent = due;
            enqueued.store(sent, Ordering::Relaxed);
        }
        if elapsed >= duration {
            return Ok(commits);
        }
    }
}

/// Samples, once a second for `duration`, the jobs started during that second and the backlog
/// (enqueued but not yet started) at its end.
async fn sample(probe: &Probe, enqueued: &AtomicU64, duration: Duration) -> Vec<Second> {
    let mut timeline = Vec::new();
    let mut last = 0;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.tick().await;
    for _ in 0..duration.as_secs() {
        ticks.tick().await;
        let started = probe.started();
        timeline.push(Second {
            started: started - last,
            backlog: enqueued.load(Ordering::Relaxed).saturating_sub(started),
        });
        last = started;
    }
    timeline
}

/// Throughput before, during and after the held snapshot, and how long after its end the
/// backlog took to fall back to its level before it.
fn hold_summary(report: Report, hold: HoldSnapshot, rates: &[u64], backlogs: &[u64]) -> Report {
    let (from, to) = (
        hold.at.as_secs() as usize,
        (hold.at + hold.hold).as_secs() as usize,
    );
    let mean = |range: &[u64]| {
        if range.is_empty() {
            None
        } else {
            Some(range.iter().sum::<u64>() as f64 / range.len() as f64)
        }
    };
    let clamp = |i: usize| i.min(rates.len());
    let before = mean(&rates[..clamp(from)]);
    let during = mean(&rates[clamp(from)..clamp(to)]);
    let after = mean(&rates[clamp(to)..]);
    let normal = backlogs[..clamp(from)].iter().copied().max().unwrap_or(0);
    let recovered = backlogs[clamp(to)..]
        .iter()
        .position(|&backlog| backlog <= normal.max(1) * 2)
        .map(|seconds| seconds as u64);
    report
        .detail("hold_at_s", hold.at.as_secs())
        .detail("hold_for_s", hold.hold.as_secs())
        .detail("per_s_before_hold", before)
        .detail("per_s_during_hold", during)
        .detail("per_s_after_hold", after)
        .detail("recovered_after_s", recovered)
}
