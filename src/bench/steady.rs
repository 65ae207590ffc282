//! A fixed offered load: `skiplock bench steady`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use sqlx::{Connection as _, PgConnection, PgPool};

use super::drain::{FILLER_KIND, start_workers, stop_all};
use super::probe::{KIND, Noop, Probe};
use super::soak::{self, Commits, Sample};
use super::{BenchConfig, BenchDatabase, BenchError, Progress, QUEUE, Report, reporting};
use crate::runtime::DEFAULT_COMPLETED_RETENTION;
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
    /// How often the soak samples (throughput, pickup-lag percentiles, backlog, table and index
    /// sizes, dead rows, autovacuum runs, the xmin horizon). Default 5 s; at least 100 ms.
    pub sample_every: Duration,
    /// Where to write the samples as JSON lines, each as soon as it is taken. Default: nowhere.
    pub samples: Option<PathBuf>,
    /// Where to draw the samples as an SVG chart at the end. Default: nowhere.
    pub chart: Option<PathBuf>,
    /// How long the workers keep completed jobs before their pruner deletes them (every
    /// `min(retention, 30 s)`). Default `None`: the worker's default retention (24 hours), so
    /// no job the run completes is pruned during a run shorter than that (a `finished` history
    /// is, from the start).
    pub retention: Option<Duration>,
    /// Completed jobs put in the table before the run, as a history like a production table's
    /// (of another kind, so not counted in the results), then vacuumed and, if the role may,
    /// checkpointed. They finished evenly over one retention (`retention`, or 24 hours) before
    /// the fill began, the newest as it began: the pruner deletes them at the pace a table in
    /// its steady state would, all of them by one retention into the run. The fill, vacuum
    /// and checkpoint of millions of rows take minutes, and what finished in the first of them
    /// has passed its retention when the run starts and goes at once. Default 0.
    pub finished: u64,
    /// Whether to reset `skiplock.jobs`' own autovacuum settings (the migrations' scale factors
    /// and cost delay) to the server's before the run, to measure what those settings buy.
    /// Default `false`: the table as migrated.
    pub server_autovacuum: bool,
}

impl Default for Steady {
    fn default() -> Self {
        Self {
            rate: 1_000,
            duration: Duration::from_secs(30),
            workers: 1,
            concurrency: 1_000,
            hold_snapshot: None,
            sample_every: Duration::from_secs(5),
            samples: None,
            chart: None,
            retention: None,
            finished: 0,
            server_autovacuum: false,
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
        if self.sample_every < Duration::from_millis(100) {
            return Err(BenchError::Invalid(
                "samples must be at least 100 ms apart".into(),
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
        let finished = self.prepare_table(&mut conn, progress).await?;
        let before = super::cost::Before::read(&mut conn).await?;
        let probe = Probe::recording();
        let worker_pool = database.pool(2).await?;
        let enqueue_pool = database.pool(2).await?;
        let holder = match self.hold_snapshot {
            Some(_) => Some(database.connect().await?),
            None => None,
        };
        let mut sampler_conn = database.connect().await?;
        let mut lines = soak::Lines::create(self.samples.as_deref())?;
        // Last, so that no fallible step comes after the workers are running.
        let metrics = config.metrics.then(crate::metrics::Metrics::new);
        let workers = start_workers(
            config,
            &worker_pool,
            &probe,
            self.concurrency,
            self.workers,
            metrics.as_ref(),
            self.retention,
        )?;

        let enqueued = Arc::new(AtomicU64::new(0));
        let commits = Arc::new(Commits::default());
        let started = Instant::now();
        let run = async {
            let enqueuer = enqueue_for(
                &enqueue_pool,
                self.rate,
                self.duration,
                enqueued.clone(),
                commits.clone(),
            );
            let timeline = sample(&probe, &enqueued, self.duration);
            let soak = soak_samples(
                &probe,
                &enqueued,
                &commits,
                self.duration,
                self.sample_every,
                &mut sampler_conn,
                &mut lines,
            );
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
            let (enqueued, timeline, hold, soak) = tokio::join!(enqueuer, timeline, hold, soak);
            hold.map_err(BenchError::database("hold a snapshot"))?;
            enqueued?;
            Ok::<_, BenchError>((timeline, soak?))
        };
        let total = u64::from(self.rate) * self.duration.as_secs();
        let outcome = reporting("steady", Some(total), || probe.started(), progress, run).await;
        let seconds = started.elapsed().as_secs_f64();
        // Read the backlog and completions as the offered load stops, before the workers drain.
        let started_by_end = probe.started();
        let completed = db::bench::completed(&mut conn, KIND).await;
        let backlog_end = db::bench::backlog(&mut conn, QUEUE).await;
        let stopped = stop_all(workers).await;
        worker_pool.close().await;
        enqueue_pool.close().await;
        let (timeline, (samples, mut latencies)) = outcome?;
        stopped?;
        let completed = completed.map_err(BenchError::database("count completed jobs"))?;
        let backlog_end = backlog_end.map_err(BenchError::database("count the backlog"))?;

        latencies.extend(commits.lags(probe.take_starts()));
        let rates: Vec<u64> = timeline.iter().map(|second| second.started).collect();
        let backlogs: Vec<u64> = timeline.iter().map(|second| second.backlog).collect();
        // With retention the pruner deletes completed rows during the run: count the handlers'
        // starts instead (the benchmark's handler does nothing, so each start completes).
        let jobs = match self.retention {
            Some(_) => started_by_end,
            None => completed.count as u64,
        };
        let mut report = Report::new("steady", jobs, seconds)
            .latencies(latencies)
            .detail("offered_per_s", self.rate)
            .detail("enqueued", enqueued.load(Ordering::Relaxed))
            .detail("workers", self.workers)
            .detail("concurrency", self.concurrency)
            .detail("backlog_end", backlog_end)
            .detail("backlog_max", backlogs.iter().copied().max().unwrap_or(0))
            .detail(
                "lowest_10s_started_to_offered",
                lowest_window(&rates, f64::from(self.rate)),
            )
            .detail("started_per_s", rates.clone())
            .detail("backlog_per_s", backlogs.clone());
        if let Some(hold) = self.hold_snapshot {
            report = hold_summary(report, hold, &rates, &backlogs, f64::from(self.rate));
        }
        report = soak_summary(report, &samples, self.sample_every);
        if let Some(path) = &self.chart {
            let title = format!(
                "skiplock bench steady: {} jobs/s offered for {:?}",
                self.rate, self.duration
            );
            soak::chart(path, &title, &samples)?;
        }
        before
            .finish(&mut conn, report.detail("finished", finished))
            .await
    }

    /// Resets the table's autovacuum settings and puts in the history, if asked, before anything
    /// is timed or sampled. Returns how many completed jobs it put in.
    async fn prepare_table(
        &self,
        conn: &mut PgConnection,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<u64, BenchError> {
        if self.server_autovacuum {
            db::bench::reset_autovacuum(&mut *conn)
                .await
                .map_err(BenchError::database(
                    "reset the table's autovacuum settings",
                ))?;
        }
        if self.finished == 0 {
            return Ok(0);
        }
        let count = i64::try_from(self.finished)
            .map_err(|_| BenchError::Invalid(format!("{} is too many", self.finished)))?;
        let fill = async {
            let spread = self
                .retention
                .unwrap_or(DEFAULT_COMPLETED_RETENTION)
                .as_secs_f64();
            let filled =
                db::bench::fill_completed(&mut *conn, FILLER_KIND, QUEUE, count, spread).await?;
            db::bench::vacuum_jobs(&mut *conn).await?;
            Ok::<_, sqlx::Error>(filled)
        };
        let filled = reporting("filling", Some(self.finished), || 0, progress, fill)
            .await
            .map_err(BenchError::database("fill and vacuum the history"))?;
        if let Err(error) = db::bench::checkpoint(&mut *conn).await {
            tracing::info!(%error, "no CHECKPOINT before the timed part");
        }
        Ok(filled)
    }
}

/// Enqueues `rate` jobs a second for `duration`, every [`TICK`] whatever is due, recording
/// when each job's insert committed in `commits`.
async fn enqueue_for(
    pool: &PgPool,
    rate: u32,
    duration: Duration,
    enqueued: Arc<AtomicU64>,
    commits: Arc<Commits>,
) -> Result<(), BenchError> {
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
            commits.record(ids, Instant::now());
            sent = due;
            enqueued.store(sent, Ordering::Relaxed);
        }
        if elapsed >= duration {
            return Ok(());
        }
    }
}

/// Takes a [`Sample`] every `every` for `duration`, writing each to `lines`; returns them and
/// every pickup lag measured (ms).
async fn soak_samples(
    probe: &Probe,
    enqueued: &AtomicU64,
    commits: &Commits,
    duration: Duration,
    every: Duration,
    conn: &mut sqlx::PgConnection,
    lines: &mut soak::Lines,
) -> Result<(Vec<Sample>, Vec<f64>), BenchError> {
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut all_lags = Vec::new();
    let (mut last_at, mut last_offered, mut last_started) = (0.0, 0, 0);
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    while started.elapsed() < duration {
        ticks.tick().await;
        let t_s = started.elapsed().as_secs_f64();
        let (offered, begun) = (enqueued.load(Ordering::Relaxed), probe.started());
        let mut lags = commits.lags(probe.take_starts());
        all_lags.extend_from_slice(&lags);
        let (lag_p50_ms, lag_p99_ms, lag_max_ms) = soak::percentiles(&mut lags);
        let span = (t_s - last_at).max(f64::EPSILON);
        let mut sample = Sample {
            t_s,
            offered_per_s: (offered - last_offered) as f64 / span,
            started_per_s: begun.saturating_sub(last_started) as f64 / span,
            backlog: offered.saturating_sub(begun),
            lag_p50_ms,
            lag_p99_ms,
            lag_max_ms,
            ..Sample::default()
        };
        soak::read_table(conn, &mut sample).await?;
        lines.write(&sample)?;
        samples.push(sample);
        (last_at, last_offered, last_started) = (t_s, offered, begun);
    }
    Ok((samples, all_lags))
}

/// What a soak's samples say: the worst sample against the offered rate, pickup lag at the
/// start and the end of the run, and where the table's size went.
fn soak_summary(report: Report, samples: &[Sample], every: Duration) -> Report {
    if samples.is_empty() {
        return report;
    }
    // The first and last five minutes, or fifths of shorter runs.
    let window = ((300.0 / every.as_secs_f64()) as usize)
        .min(samples.len() / 5)
        .max(1);
    let p99_of = |part: &[Sample]| {
        let mut p99s: Vec<f64> = part.iter().filter_map(|s| s.lag_p99_ms).collect();
        soak::percentiles(&mut p99s).2
    };
    let lowest_ratio = samples
        .iter()
        .filter(|s| s.offered_per_s > 0.0)
        .map(|s| s.started_per_s / s.offered_per_s)
        .fold(f64::INFINITY, f64::min);
    let max_of = |f: fn(&Sample) -> i64| samples.iter().map(f).max().unwrap_or(0);
    let last = samples.last().cloned().unwrap_or_default();
    report
        .detail("samples", samples.len())
        .detail("sample_every_s", every.as_secs_f64())
        .detail(
            "lowest_started_to_offered",
            lowest_ratio.is_finite().then_some(lowest_ratio),
        )
        .detail("lag_p99_ms_start_window", p99_of(&samples[..window]))
        .detail(
            "lag_p99_ms_end_window",
            p99_of(&samples[samples.len() - window..]),
        )
        .detail("table_bytes_max", max_of(|s| s.table_bytes))
        .detail("index_bytes_max", max_of(|s| s.index_bytes))
        .detail("table_bytes_end", last.table_bytes)
        .detail("index_bytes_end", last.index_bytes)
        .detail("dead_rows_max", max_of(|s| s.dead_rows))
        .detail("autovacuums", last.autovacuums)
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

/// Throughput before, during and after the held snapshot, its lowest 10 s while the snapshot
/// was held (against `offered`, in jobs/s), and how long after its end the backlog took to
/// fall back to its level before it for good (see [`recovered_after`]).
fn hold_summary(
    report: Report,
    hold: HoldSnapshot,
    rates: &[u64],
    backlogs: &[u64],
    offered: f64,
) -> Report {
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
    let recovered = recovered_after(&backlogs[..clamp(from)], &backlogs[clamp(to)..]);
    report
        .detail("hold_at_s", hold.at.as_secs())
        .detail("hold_for_s", hold.hold.as_secs())
        .detail("per_s_before_hold", before)
        .detail("per_s_during_hold", during)
        .detail("per_s_after_hold", after)
        .detail(
            "lowest_10s_during_hold",
            lowest_window(&rates[clamp(from)..clamp(to)], offered),
        )
        .detail("recovered_after_s", recovered)
}

/// The lowest share of `offered` (jobs/s) at which jobs started over any [`WINDOW_SECS`]
/// consecutive entries of `rates` (jobs started in each tick of the once-a-second sampler; a
/// late tick holds more than a second): issue 13's "throughput at any 10-s sample", read
/// sliding by the second rather than in windows aligned to multiples of 10 s, which can
/// straddle a dip and halve it. `None` for fewer seconds than a window, or no offered load.
/// During a hold, only windows wholly inside it count: the run's figure covers the falls that
/// come just after one.
fn lowest_window(rates: &[u64], offered: f64) -> Option<f64> {
    if offered <= 0.0 {
        return None;
    }
    rates
        .windows(WINDOW_SECS)
        .map(|window| window.iter().sum::<u64>() as f64 / WINDOW_SECS as f64 / offered)
        .min_by(f64::total_cmp)
}

/// The window of [`lowest_window`]: 10 s.
const WINDOW_SECS: usize = 10;

/// How many seconds into `after` (the backlog each second after the hold) the backlog fell
/// back to at most twice the highest of `before` and stayed there to the end of the run:
/// what autovacuum's pass after a hold does to the claims counts too. `None` if it was still
/// above at the end, or the run ended with the hold.
fn recovered_after(before: &[u64], after: &[u64]) -> Option<u64> {
    if after.is_empty() {
        return None;
    }
    let limit = before.iter().copied().max().unwrap_or(0).max(1) * 2;
    match after.iter().rposition(|&backlog| backlog > limit) {
        None => Some(0),
        Some(last) if last + 1 < after.len() => Some(last as u64 + 1),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sliding by the second: a dip across a multiple of 10 s is found whole.
    #[test]
    fn the_lowest_window_slides_by_the_second() {
        let mut rates = vec![100; 30];
        rates[8..13].fill(0);
        assert_eq!(lowest_window(&rates, 100.0), Some(0.5));
        assert_eq!(lowest_window(&rates, 200.0), Some(0.25));
        assert_eq!(lowest_window(&[100; 30], 100.0), Some(1.0));
        assert_eq!(lowest_window(&[100; 9], 100.0), None);
        assert_eq!(lowest_window(&rates, 0.0), None);
    }

    /// Back for good: a backlog that falls back, then climbs again (autovacuum after the
    /// hold), recovers only once it stays back.
    #[test]
    fn the_backlog_recovers_once_it_stays_back() {
        let before = [10, 50, 20];
        assert_eq!(recovered_after(&before, &[90, 100, 60]), Some(0));
        assert_eq!(recovered_after(&before, &[500, 100, 80]), Some(1));
        assert_eq!(recovered_after(&before, &[90, 500, 300, 99, 100]), Some(3));
        assert_eq!(recovered_after(&before, &[90, 500, 101]), None);
        assert_eq!(recovered_after(&[], &[3, 2]), Some(1));
        assert_eq!(recovered_after(&before, &[]), None);
    }
}
