//! [`Metrics`]: the registry every source writes to, and its encoding.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::registry::Registry;
use sqlx::PgPool;

use super::database::{DatabaseCollector, DatabaseGauges};
use super::worker::{Families, WorkerMetrics};

/// The `Content-Type` of [`Format::OpenMetrics`].
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The `Content-Type` of [`Format::Prometheus`].
pub const PROMETHEUS_CONTENT_TYPE: &str =
    prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// skiplock's metrics, and any of the application's own: a
/// [`prometheus_client` registry](Registry) that workers and the database gauges write to.
///
/// Cheap to clone: clones share the registry. Give it to workers with
/// [`WorkerBuilder::metrics`](crate::WorkerBuilder::metrics) (their families are registered at
/// the first), to the database gauges with [`with_database`](Self::with_database), and serve
/// it with [`router`](super::router); see the [module docs](super) for the metrics themselves.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Mutex<Registry>,
    workers: OnceLock<Arc<Families>>,
    database: Arc<DatabaseGauges>,
    /// The database collector is registered at the first `with_database`.
    database_registered: OnceLock<()>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics")
            .field("workers", &self.inner.workers.get().is_some())
            .field("database", &self.inner.database_registered.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The text format of a scrape.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Format {
    /// The Prometheus text format, version 0.0.4 ([`PROMETHEUS_CONTENT_TYPE`]): what
    /// `promtool check metrics` and most tools read. The default.
    #[default]
    Prometheus,
    /// OpenMetrics 1.0 ([`OPENMETRICS_CONTENT_TYPE`]): what Prometheus asks for first.
    OpenMetrics,
}

impl Format {
    /// The format an HTTP `Accept` header asks for: OpenMetrics when it names
    /// `application/openmetrics-text` (as Prometheus's scrapes do), else Prometheus text.
    pub fn from_accept(accept: Option<&str>) -> Self {
        let wants_openmetrics = accept.is_some_and(|accept| {
            accept.split(',').any(|range| {
                let mut parts = range.split(';').map(str::trim);
                let media = parts.next().unwrap_or_default();
                let refused = parts.any(|param| {
                    param
                        .strip_prefix("q=")
                        .and_then(|q| q.parse::<f64>().ok())
                        .is_some_and(|q| q <= 0.0)
                });
                media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
            })
        });
        if wants_openmetrics {
            Self::OpenMetrics
        } else {
            Self::Prometheus
        }
    }

    /// Its `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Prometheus => PROMETHEUS_CONTENT_TYPE,
            Self::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
        }
    }
}

/// The error of [`Metrics::render`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// A metric could not be encoded (one of the application's own, which may fail; skiplock's
    /// never do).
    #[error("could not encode the metrics")]
    Encode(#[from] fmt::Error),
}

impl Metrics {
    /// An empty registry of its own. skiplock's metrics are named `skiplock_...`.
    pub fn new() -> Self {
        Self::from_registry(Registry::default())
    }

    /// Wraps the application's own registry (with whatever it holds already): skiplock's
    /// metrics are added to it, so one scrape serves both. A prefix the registry was made with
    /// ([`Registry::with_prefix`]) is put before skiplock's names too.
    pub fn from_registry(registry: Registry) -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(registry),
                workers: OnceLock::new(),
                database: Arc::new(DatabaseGauges::default()),
                database_registered: OnceLock::new(),
            }),
        }
    }

    /// Adds the database-derived gauges (`skiplock_db_...`), read from `pool` at each scrape by
    /// one statement (see the [module docs](super)) that gives up after
    /// [`database_timeout`](Self::database_timeout). The scrape holds one of `pool`'s
    /// connections while it runs: give it a pool that workers do not claim from (a worker
    /// never uses the pool it is built with for its own work, so the application's pool is
    /// fine). The role needs `SELECT` on `skiplock.jobs` (the `observer` access of
    /// docs/security.md); unless it is a member of `pg_read_all_stats` (or `pg_monitor`),
    /// PostgreSQL hides when other roles' transactions started, so
    /// `skiplock_db_oldest_transaction_age_seconds` counts only its own sessions (the horizon's
    /// age in transactions counts all). Calling it again replaces the pool.
    pub fn with_database(self, pool: PgPool) -> Self {
        self.inner.database.set_pool(pool);
        self.inner.database_registered.get_or_init(|| {
            let collector = DatabaseCollector(self.inner.database.clone());
            self.registry().register_collector(Box::new(collector));
        });
        self
    }

    /// How long a scrape's database query may take before it is abandoned and
    /// `skiplock_db_up` reports 0. Default:
    /// [`DEFAULT_DATABASE_TIMEOUT`](super::DEFAULT_DATABASE_TIMEOUT) (5 s). Keep it under
    /// Prometheus's `scrape_timeout` (10 s by default).
    pub fn database_timeout(self, timeout: Duration) -> Self {
        self.inner.database.set_timeout(timeout);
        self
    }

    /// The registry, to register the application's own metrics in:
    /// `metrics.registry().register("orders_created", "Orders created", counter.clone())`.
    /// Do not hold the guard across an `.await`: scrapes wait for it.
    pub fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner
            .registry
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Reads the database gauges (when [`with_database`](Self::with_database) was called;
    /// their query's failure only sets `skiplock_db_up` to 0) and encodes every metric of the
    /// registry in `format`.
    ///
    /// # Errors
    /// [`MetricsError::Encode`] when a metric fails to encode.
    ///
    /// # Cancel safety
    /// Cancel safe: dropped during the database read, that read is rolled back and the
    /// previous values stay.
    pub async fn render(&self, format: Format) -> Result<String, MetricsError> {
        self.inner.database.refresh().await;
        let registry = self.registry();
        let mut text = String::new();
        match format {
            Format::Prometheus => {
                prometheus_client::encoding::prometheus_text::encode(&mut text, &registry)?;
            }
            Format::OpenMetrics => prometheus_client::encoding::text::encode(&mut text, &registry)?,
        }
        Ok(text)
    }

    /// The handles of a worker working `queues` for `kinds`; the worker families are
    /// registered by the first worker.
    pub(crate) fn worker(&self, queues: &[(String, usize)], kinds: &[String]) -> WorkerMetrics {
        let families = self
            .inner
            .workers
            .get_or_init(|| Arc::new(Families::register(&mut self.registry())))
            .clone();
        WorkerMetrics::new(families, queues, kinds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                          version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert_eq!(Format::from_accept(Some(prometheus)), Format::OpenMetrics);
        assert_eq!(Format::from_accept(None), Format::Prometheus);
        assert_eq!(Format::from_accept(Some("*/*")), Format::Prometheus);
        assert_eq!(
            Format::from_accept(Some("text/plain;version=0.0.4")),
            Format::Prometheus
        );
        assert_eq!(
            Format::from_accept(Some("application/openmetrics-text;q=0, text/plain")),
            Format::Prometheus
        );
    }
}
