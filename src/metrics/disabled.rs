//! Without the `metrics` feature: the workers' metric handles cannot exist. The types are
//! uninhabited, so the `Option`s that hold them are always `None` and the roles' hooks compile
//! to nothing.

use std::time::Duration;

use super::AttemptOutcome;

/// Never constructed.
#[derive(Debug)]
pub(crate) enum WorkerMetrics {}

/// Never constructed.
#[derive(Debug)]
pub(crate) enum JobMetrics {}

impl WorkerMetrics {
    pub(crate) fn job(&self, _: &str, _: &str) -> Option<&JobMetrics> {
        match *self {}
    }

    pub(crate) fn claimed(&self, _: &str, _: usize, _: Duration) {
        match *self {}
    }

    pub(crate) fn completed_batch(&self, _: usize, _: Duration) {
        match *self {}
    }

    pub(crate) fn renewal_failed(&self) {
        match *self {}
    }

    pub(crate) fn role_started(&self, _: &str) {
        match *self {}
    }

    pub(crate) fn role_restarted(&self, _: &str) {
        match *self {}
    }

    pub(crate) fn worker_started(&self) {
        match *self {}
    }

    pub(crate) fn worker_stopped(&self) {
        match *self {}
    }
}

impl JobMetrics {
    pub(crate) fn started(&self, _: f64) {
        match *self {}
    }

    pub(crate) fn ended(&self, _: AttemptOutcome, _: Duration) {
        match *self {}
    }
}
