//! The database-derived gauges: read by one statement per scrape (`db::metrics::gauges`), kept
//! as a snapshot, and encoded from it by a collector.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;
use sqlx::PgPool;
use tokio::time::Instant;

use crate::db;
use crate::db::metrics::GaugeRow;

/// How long one scrape's query may take before it is abandoned (`skiplock_db_up` 0): 5 s.
/// [`Metrics::database_timeout`](super::Metrics::database_timeout) changes it.
pub const DEFAULT_DATABASE_TIMEOUT: Duration = Duration::from_secs(5);

/// The most queues the database gauges report one by one: 100. Beyond that (a queue per
/// tenant, a bug minting queue names), the queues with the fewest jobs are reported together
/// as `queue="_other"` (counts added up, ages the largest), so that the number of series stays
/// bounded whatever the table holds.
pub const MAX_DATABASE_QUEUES: usize = 100;

/// The label value of the queues beyond [`MAX_DATABASE_QUEUES`].
const OTHER_QUEUES: &str = "_other";

/// How long a statement waits for a lock before the scrape gives up: 1 s. The query takes only
/// `ACCESS SHARE` locks, which conflict with nothing but `ACCESS EXCLUSIVE` (a migration's
/// `ALTER TABLE`, a `VACUUM FULL`).
const LOCK_TIMEOUT: Duration = Duration::from_secs(1);

/// A scrape that comes within this long of the previous one's query uses its result: several
/// Prometheus servers, or a scrape retried at once, cost one query.
const REUSE_WITHIN: Duration = Duration::from_secs(1);

/// A database gauge: its name after `skiplock_db_`, help, unit, and the keys of its labels
/// (the row's `a` and `b`).
struct Gauge {
    name: &'static str,
    help: &'static str,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    /// Whether queues beyond the cap fold by `max` (ages) rather than by sum (counts).
    fold_max: bool,
}

/// Every gauge the query produces, in the order they are encoded.
fn gauges() -> [Gauge; 11] {
    let gauge = |name, help, unit, labels, fold_max| Gauge {
        name,
        help,
        unit,
        labels,
        fold_max,
    };
    [
        gauge(
            "jobs",
            "Jobs waiting or running, by queue and state (scheduled, available, running, retryable).",
            None,
            &["queue", "state"],
            false,
        ),
        gauge(
            "oldest_available_age",
            "Now minus the run_at of the oldest available job, by queue.",
            Some(Unit::Seconds),
            &["queue"],
            true,
        ),
        gauge(
            "expired_leases",
            "Running jobs whose lease expired and that wait for the rescuer, by queue.",
            None,
            &["queue"],
            false,
        ),
        gauge(
            "jobs_finished_last_minute",
            "Attempts that ended completed, failed or cancelled in this minute and the one \
             before, as workers recorded them (skiplock.job_stats), by state.",
            None,
            &["state"],
            false,
        ),
        gauge(
            "workers",
            "Worker processes by status: alive (heartbeat current) or unresponsive (heartbeat \
             late, not yet declared lost by a rescuer).",
            None,
            &["status"],
            false,
        ),
        gauge(
            "last_completed_age",
            "Time since the newest completion of a job still kept.",
            Some(Unit::Seconds),
            &[],
            false,
        ),
        gauge(
            "xmin_horizon_age_transactions",
            "Transactions the oldest snapshot or transaction id held by a session, a prepared \
             transaction or a replication slot lags behind; vacuum keeps every row version \
             younger than it.",
            None,
            &["holder"],
            false,
        ),
        gauge(
            "oldest_transaction_age",
            "How long the oldest session or prepared transaction holding back the xmin horizon \
             has been open.",
            Some(Unit::Seconds),
            &["holder"],
            false,
        ),
        gauge(
            "dead_tuples",
            "Dead tuples in each skiplock table (the statistics collector's estimate).",
            None,
            &["table"],
            false,
        ),
        gauge(
            "live_tuples",
            "Live tuples in each skiplock table (the statistics collector's estimate).",
            None,
            &["table"],
            false,
        ),
        gauge(
            "table_size",
            "Size of each skiplock table on disk, indexes and TOAST included.",
            Some(Unit::Bytes),
            &["table"],
            false,
        ),
    ]
}

/// The name the query uses for a gauge: its name with the unit, as encoded.
fn row_name(gauge: &Gauge) -> String {
    match &gauge.unit {
        Some(unit) => format!("{}_{}", gauge.name, unit.as_str()),
        None => gauge.name.to_owned(),
    }
}

/// What the last scrape read.
#[derive(Debug, Default)]
struct Snapshot {
    /// Whether the query succeeded; no gauge rows when it did not.
    up: bool,
    /// How long the query took, in seconds.
    seconds: f64,
    rows: Vec<GaugeRow>,
}

/// The database source of one [`Metrics`](super::Metrics): where to read, and what was read.
#[derive(Debug)]
pub(crate) struct DatabaseGauges {
    pool: Mutex<Option<PgPool>>,
    timeout_ms: AtomicU64,
    /// Held while a refresh runs, so concurrent scrapes wait for it instead of each running the
    /// query; holds when the last query started.
    refreshing: tokio::sync::Mutex<Option<Instant>>,
    snapshot: Mutex<Snapshot>,
}

impl Default for DatabaseGauges {
    fn default() -> Self {
        Self {
            pool: Mutex::new(None),
            timeout_ms: AtomicU64::new(DEFAULT_DATABASE_TIMEOUT.as_millis() as u64),
            refreshing: tokio::sync::Mutex::new(None),
            snapshot: Mutex::new(Snapshot::default()),
        }
    }
}

impl DatabaseGauges {
    /// Reads from `pool` from now on; returns whether a pool was set before.
    pub(crate) fn set_pool(&self, pool: PgPool) -> bool {
        lock(&self.pool).replace(pool).is_some()
    }

    pub(crate) fn set_timeout(&self, timeout: Duration) {
        let ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        self.timeout_ms.store(ms, Ordering::Relaxed);
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.load(Ordering::Relaxed))
    }

    /// Runs the query (unless another scrape just did) and keeps what it read. A failure or a
    /// timeout is logged and leaves `skiplock_db_up` at 0; it never fails the scrape.
    ///
    /// # Cancel safety
    /// Cancel safe: a dropped refresh rolls its transaction back with its connection.
    pub(crate) async fn refresh(&self) {
        let Some(pool) = lock(&self.pool).clone() else {
            return;
        };
        let mut last = self.refreshing.lock().await;
        if last.is_some_and(|at| at.elapsed() < REUSE_WITHIN) {
            return;
        }
        let started = Instant::now();
        *last = Some(started);
        let timeout = self.timeout();
        let read = tokio::time::timeout(timeout, read(&pool, timeout)).await;
        let seconds = started.elapsed().as_secs_f64();
        let snapshot = match read {
            Ok(Ok(rows)) => Snapshot {
                up: true,
                seconds,
                rows: fold_queues(rows),
            },
            Ok(Err(error)) => {
                tracing::warn!(%error, "could not read skiplock's database metrics");
                Snapshot {
                    up: false,
                    seconds,
                    rows: Vec::new(),
                }
            }
            Err(_) => {
                tracing::warn!(
                    timeout_ms = timeout.as_millis() as u64,
                    "skiplock's database metrics took too long; abandoned"
                );
                Snapshot {
                    up: false,
                    seconds,
                    rows: Vec::new(),
                }
            }
        };
        *lock(&self.snapshot) = snapshot;
    }
}

/// The query, in a transaction of its own whose statements give up after `timeout` (on the
/// server as well, so an abandoned query does not run on) and wait at most [`LOCK_TIMEOUT`] for
/// a lock. Rolled back: it writes nothing.
async fn read(pool: &PgPool, timeout: Duration) -> Result<Vec<GaugeRow>, sqlx::Error> {
    let mut tx = db::begin(pool).await?;
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).max(1);
    db::metrics::limit_transaction(&mut tx, ms(timeout), ms(LOCK_TIMEOUT.min(timeout))).await?;
    let rows = db::metrics::gauges(&mut *tx).await?;
    tx.rollback().await?;
    Ok(rows)
}

/// Keeps the [`MAX_DATABASE_QUEUES`] queues with the most jobs, and folds the others into
/// `queue="_other"`.
fn fold_queues(rows: Vec<GaugeRow>) -> Vec<GaugeRow> {
    let gauges = gauges();
    let queue_gauge = |row: &GaugeRow| {
        gauges
            .iter()
            .find(|gauge| row_name(gauge) == row.metric && gauge.labels.first() == Some(&"queue"))
    };
    let mut jobs_per_queue: HashMap<&str, f64> = HashMap::new();
    for row in rows.iter().filter(|row| row.metric == "jobs") {
        *jobs_per_queue.entry(&row.a).or_default() += row.value;
    }
    if jobs_per_queue.len() <= MAX_DATABASE_QUEUES {
        return rows;
    }
    let mut ranked: Vec<(&str, f64)> = jobs_per_queue.into_iter().collect();
    ranked.sort_by(|x, y| y.1.total_cmp(&x.1).then(x.0.cmp(y.0)));
    let kept: std::collections::HashSet<String> = ranked
        .iter()
        .take(MAX_DATABASE_QUEUES)
        .map(|(queue, _)| (*queue).to_owned())
        .collect();
    let mut folded: BTreeMap<(String, String), (f64, bool)> = BTreeMap::new();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        match queue_gauge(&row) {
            Some(gauge) if !kept.contains(&row.a) => {
                let entry = folded
                    .entry((row.metric.clone(), row.b.clone()))
                    .or_insert((0.0, gauge.fold_max));
                entry.0 = if gauge.fold_max {
                    entry.0.max(row.value)
                } else {
                    entry.0 + row.value
                };
            }
            _ => out.push(row),
        }
    }
    out.extend(
        folded
            .into_iter()
            .map(|((metric, b), (value, _))| GaugeRow {
                metric,
                a: OTHER_QUEUES.to_owned(),
                b,
                value,
            }),
    );
    out
}

/// Encodes the snapshot of a [`DatabaseGauges`] at each scrape.
#[derive(Debug)]
pub(crate) struct DatabaseCollector(pub(crate) Arc<DatabaseGauges>);

impl Collector for DatabaseCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let snapshot = lock(&self.0.snapshot);
        let up = ConstGauge::new(i64::from(snapshot.up));
        up.encode(encoder.encode_descriptor(
            "skiplock_db_up",
            "1 when the last read of skiplock's database metrics succeeded, else 0.",
            None,
            up.metric_type(),
        )?)?;
        let took = ConstGauge::new(snapshot.seconds);
        took.encode(encoder.encode_descriptor(
            "skiplock_db_scrape_duration",
            "How long the last read of skiplock's database metrics took.",
            Some(&Unit::Seconds),
            took.metric_type(),
        )?)?;
        if !snapshot.up {
            return Ok(());
        }
        for gauge in gauges() {
            let name = row_name(&gauge);
            let full = format!("skiplock_db_{}", gauge.name);
            let mut family = encoder.encode_descriptor(
                &full,
                gauge.help,
                gauge.unit.as_ref(),
                prometheus_client::metrics::MetricType::Gauge,
            )?;
            for row in snapshot.rows.iter().filter(|row| row.metric == name) {
                let values = [row.a.as_str(), row.b.as_str()];
                let labels: Vec<(&str, &str)> = gauge.labels.iter().copied().zip(values).collect();
                ConstGauge::new(row.value).encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(metric: &str, a: &str, b: &str, value: f64) -> GaugeRow {
        GaugeRow {
            metric: metric.to_owned(),
            a: a.to_owned(),
            b: b.to_owned(),
            value,
        }
    }

    #[test]
    fn every_gauge_name_the_query_uses_is_documented() {
        let documented = super::super::METRIC_NAMES;
        for gauge in gauges() {
            let name = format!("skiplock_db_{}", row_name(&gauge));
            assert!(documented.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn queues_beyond_the_cap_are_folded_into_other() {
        let mut rows = Vec::new();
        for n in 0..MAX_DATABASE_QUEUES + 2 {
            let queue = format!("q{n:03}");
            rows.push(row("jobs", &queue, "available", n as f64 + 1.0));
            rows.push(row("oldest_available_age_seconds", &queue, "", n as f64));
        }
        rows.push(row("dead_tuples", "jobs", "", 7.0));
        let folded = fold_queues(rows);
        let queues: std::collections::HashSet<&str> = folded
            .iter()
            .filter(|row| row.metric == "jobs")
            .map(|row| row.a.as_str())
            .collect();
        assert_eq!(queues.len(), MAX_DATABASE_QUEUES + 1);
        // The two smallest queues (1 and 2 jobs, ages 0 and 1) are folded: summed, and the max.
        assert!(folded.contains(&row("jobs", OTHER_QUEUES, "available", 3.0)));
        assert!(folded.contains(&row("oldest_available_age_seconds", OTHER_QUEUES, "", 1.0)));
        assert!(!queues.contains("q000") && !queues.contains("q001"));
        assert!(folded.contains(&row("dead_tuples", "jobs", "", 7.0)));
    }
}
