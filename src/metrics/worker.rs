//! What workers count: the metric families, registered once per [`Metrics`](super::Metrics),
//! and each worker's handles into them, made before it starts so that its roles never build a
//! label set (nor allocate) while they work.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use super::AttemptOutcome;

/// Bucket bounds of handler durations and pickup lags, in seconds: 1 ms to 1 h.
const JOB_SECONDS: [f64; 20] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// Bucket bounds of claim and completion statements, in seconds: 0.5 ms to 10 s.
const STATEMENT_SECONDS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Bucket bounds of batch sizes, in jobs.
const BATCH_SIZES: [f64; 12] = [
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0,
];

fn job_histogram() -> Histogram {
    Histogram::new(JOB_SECONDS)
}

fn statement_histogram() -> Histogram {
    Histogram::new(STATEMENT_SECONDS)
}

fn batch_histogram() -> Histogram {
    Histogram::new(BATCH_SIZES)
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct JobLabels {
    queue: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    queue: String,
    kind: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every worker metric family of one registry, shared by the workers given it.
#[derive(Debug)]
pub(crate) struct Families {
    started: Family<JobLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    duration: HistogramFamily<JobLabels>,
    pickup_lag: HistogramFamily<JobLabels>,
    in_flight: Family<QueueLabels, Gauge>,
    slots: Family<QueueLabels, Gauge>,
    claim_size: HistogramFamily<QueueLabels>,
    claim_duration: HistogramFamily<QueueLabels>,
    completion_size: Histogram,
    completion_duration: Histogram,
    renewals_failed: Counter,
    role_restarts: Family<RoleLabels, Counter>,
}

impl Families {
    /// Creates the families and registers them in `registry`; names and help texts are the ones
    /// documented in the module docs (counters get their `_total` when encoded).
    pub(crate) fn register(registry: &mut Registry) -> Self {
        let families = Self {
            started: Family::default(),
            outcomes: Family::default(),
            duration: Family::new_with_constructor(job_histogram),
            pickup_lag: Family::new_with_constructor(job_histogram),
            in_flight: Family::default(),
            slots: Family::default(),
            claim_size: Family::new_with_constructor(batch_histogram),
            claim_duration: Family::new_with_constructor(statement_histogram),
            completion_size: batch_histogram(),
            completion_duration: statement_histogram(),
            renewals_failed: Counter::default(),
            role_restarts: Family::default(),
        };
        registry.register(
            "skiplock_jobs_started",
            "Attempts started",
            families.started.clone(),
        );
        registry.register(
            "skiplock_job_outcomes",
            "Attempts ended, by outcome: completed, retried, failed, cancelled, snoozed, \
             interrupted (worker shutdown) or lost (lease lost)",
            families.outcomes.clone(),
        );
        registry.register_with_unit(
            "skiplock_job_duration",
            "How long handlers ran",
            Unit::Seconds,
            families.duration.clone(),
        );
        registry.register_with_unit(
            "skiplock_job_pickup_lag",
            "From a job's run_at to its claim (database time)",
            Unit::Seconds,
            families.pickup_lag.clone(),
        );
        registry.register(
            "skiplock_jobs_in_flight",
            "Attempts running now",
            families.in_flight.clone(),
        );
        registry.register(
            "skiplock_queue_slots",
            "How many attempts of the queue may run at once (the workers' concurrency)",
            families.slots.clone(),
        );
        registry.register(
            "skiplock_claim_batch_size",
            "Jobs per claim statement that found any",
            families.claim_size.clone(),
        );
        registry.register_with_unit(
            "skiplock_claim_duration",
            "How long each claim statement took, whether it found jobs or not",
            Unit::Seconds,
            families.claim_duration.clone(),
        );
        registry.register(
            "skiplock_completion_batch_size",
            "Outcomes written per completion statement",
            families.completion_size.clone(),
        );
        registry.register_with_unit(
            "skiplock_completion_duration",
            "How long writing one batch of outcomes took, retries included",
            Unit::Seconds,
            families.completion_duration.clone(),
        );
        registry.register(
            "skiplock_lease_renewals_failed",
            "Heartbeats that could not renew the leases of running jobs",
            families.renewals_failed.clone(),
        );
        registry.register(
            "skiplock_role_restarts",
            "Failures (errors and panics) after which a background role was restarted or its \
             round retried",
            families.role_restarts.clone(),
        );
        families
    }
}

/// One worker's handles: everything its roles update, by queue and kind.
#[derive(Debug)]
pub(crate) struct WorkerMetrics {
    families: Arc<Families>,
    queues: HashMap<String, QueueMetrics>,
}

#[derive(Debug)]
struct QueueMetrics {
    claim_size: Histogram,
    claim_duration: Histogram,
    in_flight: Gauge,
    slots: Gauge,
    concurrency: i64,
    /// By kind: made at the first attempt of that kind in this queue, so that only the pairs
    /// that run have series.
    jobs: HashMap<String, OnceLock<JobMetrics>>,
}

/// The handles of one queue and kind.
#[derive(Debug)]
pub(crate) struct JobMetrics {
    started: Counter,
    outcomes: [Counter; AttemptOutcome::ALL.len()],
    duration: Histogram,
    pickup_lag: Histogram,
    in_flight: Gauge,
}

impl WorkerMetrics {
    /// The handles of a worker working `queues` (with their concurrency) for `kinds`.
    pub(crate) fn new(
        families: Arc<Families>,
        queues: &[(String, usize)],
        kinds: &[String],
    ) -> Self {
        let queues = queues
            .iter()
            .map(|(queue, concurrency)| {
                let labels = QueueLabels {
                    queue: queue.clone(),
                };
                let handles = QueueMetrics {
                    claim_size: families.claim_size.get_or_create_owned(&labels),
                    claim_duration: families.claim_duration.get_or_create_owned(&labels),
                    in_flight: families.in_flight.get_or_create_owned(&labels),
                    slots: families.slots.get_or_create_owned(&labels),
                    concurrency: i64::try_from(*concurrency).unwrap_or(i64::MAX),
                    jobs: kinds
                        .iter()
                        .map(|kind| (kind.clone(), OnceLock::new()))
                        .collect(),
                };
                (queue.clone(), handles)
            })
            .collect();
        Self { families, queues }
    }

    /// The handles of jobs of `kind` in `queue`; `None` for a queue or kind this worker does not
    /// run (which it never claims).
    pub(crate) fn job(&self, queue: &str, kind: &str) -> Option<&JobMetrics> {
        let handles = self.queues.get(queue)?;
        let cell = handles.jobs.get(kind)?;
        Some(cell.get_or_init(|| {
            let labels = JobLabels {
                queue: queue.to_owned(),
                kind: kind.to_owned(),
            };
            let outcome = |outcome: AttemptOutcome| {
                self.families.outcomes.get_or_create_owned(&OutcomeLabels {
                    queue: queue.to_owned(),
                    kind: kind.to_owned(),
                    outcome: outcome.as_str(),
                })
            };
            JobMetrics {
                started: self.families.started.get_or_create_owned(&labels),
                outcomes: AttemptOutcome::ALL.map(outcome),
                duration: self.families.duration.get_or_create_owned(&labels),
                pickup_lag: self.families.pickup_lag.get_or_create_owned(&labels),
                in_flight: handles.in_flight.clone(),
            }
        }))
    }

    /// One claim of `queue` that took `took` and claimed `jobs`.
    pub(crate) fn claimed(&self, queue: &str, jobs: usize, took: Duration) {
        if let Some(handles) = self.queues.get(queue) {
            handles.claim_duration.observe(took.as_secs_f64());
            if jobs > 0 {
                handles.claim_size.observe(jobs as f64);
            }
        }
    }

    /// One batch of `outcomes` written in `took`.
    pub(crate) fn completed_batch(&self, outcomes: usize, took: Duration) {
        self.families.completion_size.observe(outcomes as f64);
        self.families
            .completion_duration
            .observe(took.as_secs_f64());
    }

    /// A heartbeat that could not renew leases.
    pub(crate) fn renewal_failed(&self) {
        self.families.renewals_failed.inc();
    }

    /// Background role `role` started: its restarts count from 0 (a series that appears at its
    /// first restart would hide that restart from `increase()`).
    pub(crate) fn role_started(&self, role: &str) {
        let labels = RoleLabels {
            role: role.to_owned(),
        };
        let _ = self.families.role_restarts.get_or_create(&labels);
    }

    /// A failure of background role `role`, after which it is restarted or retried.
    pub(crate) fn role_restarted(&self, role: &str) {
        let labels = RoleLabels {
            role: role.to_owned(),
        };
        self.families.role_restarts.get_or_create(&labels).inc();
    }

    /// The worker started: its slots count in `skiplock_queue_slots`.
    pub(crate) fn worker_started(&self) {
        for handles in self.queues.values() {
            handles.slots.inc_by(handles.concurrency);
        }
    }

    /// The worker stopped: its slots no longer count.
    pub(crate) fn worker_stopped(&self) {
        for handles in self.queues.values() {
            handles.slots.dec_by(handles.concurrency);
        }
    }
}

impl JobMetrics {
    /// An attempt started, `pickup_lag_secs` after its job's `run_at`.
    pub(crate) fn started(&self, pickup_lag_secs: f64) {
        self.started.inc();
        self.in_flight.inc();
        self.pickup_lag.observe(pickup_lag_secs.max(0.0));
    }

    /// The attempt ended with `outcome` after its handler ran for `ran`.
    pub(crate) fn ended(&self, outcome: AttemptOutcome, ran: Duration) {
        self.in_flight.dec();
        self.outcomes[outcome.index()].inc();
        self.duration.observe(ran.as_secs_f64());
    }
}
