//! The benchmark's job: a no-op that counts its starts, and optionally records when each began.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::QUEUE;
use crate::{Handler, Job, JobContext, JobError};

/// The kind of every benchmark job.
pub(super) const KIND: &str = "bench_noop";

/// A job that does nothing. Its args (a counter) are what the fill queries generate.
#[derive(Serialize, Deserialize)]
pub(super) struct Noop {
    #[serde(default)]
    n: i64,
}

impl Noop {
    pub(super) fn new(n: i64) -> Self {
        Self { n }
    }
}

impl Job for Noop {
    const KIND: &'static str = KIND;
    const QUEUE: &'static str = QUEUE;
}

/// What the handlers report to the benchmark.
#[derive(Default)]
pub(super) struct Probe {
    /// Handler starts so far.
    pub(super) started: AtomicU64,
    /// When each job's handler started, when the scenario measures latency.
    pub(super) starts: Option<Mutex<Vec<(i64, Instant)>>>,
    /// Told of every start, when the scenario waits for each job.
    pub(super) signal: Option<mpsc::UnboundedSender<(i64, Instant)>>,
}

impl Probe {
    pub(super) fn counting() -> Arc<Self> {
        Arc::default()
    }

    pub(super) fn recording() -> Arc<Self> {
        Arc::new(Self {
            starts: Some(Mutex::default()),
            ..Self::default()
        })
    }

    pub(super) fn signalling(signal: mpsc::UnboundedSender<(i64, Instant)>) -> Arc<Self> {
        Arc::new(Self {
            signal: Some(signal),
            ..Self::default()
        })
    }

    pub(super) fn started(&self) -> u64 {
        self.started.load(Ordering::Relaxed)
    }

    /// The recorded starts, leaving none behind.
    pub(super) fn take_starts(&self) -> Vec<(i64, Instant)> {
        self.starts
            .as_ref()
            .map(|starts| {
                std::mem::take(&mut *starts.lock().unwrap_or_else(PoisonError::into_inner))
            })
            .unwrap_or_default()
    }
}

impl Handler<Arc<Probe>> for Noop {
    type Output = ();

    async fn handle(self, ctx: JobContext<Arc<Probe>>) -> Result<(), JobError> {
        let now = Instant::now();
        let probe = ctx.state();
        probe.started.fetch_add(1, Ordering::Relaxed);
        if let Some(starts) = &probe.starts {
            starts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push((ctx.id(), now));
        }
        if let Some(signal) = &probe.signal {
            let _ = signal.send((ctx.id(), now));
        }
        Ok(())
    }
}
