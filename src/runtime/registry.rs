//! Handlers by kind: type-erased so that one worker runs many job types.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::handler::{Handler, JobContext, JobError};

/// What running one attempt produced, before it is classified.
pub(crate) enum RunResult {
    /// The handler returned `Ok`; its output, serialized.
    Completed(Value),
    /// The handler returned `Err`.
    Failed(JobError),
    /// The stored arguments do not deserialize into the registered type.
    Undecodable(serde_json::Error),
    /// The output does not serialize to JSON.
    UnserializableOutput(serde_json::Error),
}

/// One registered kind, type-erased.
pub(crate) trait ErasedHandler<S>: Send + Sync {
    fn run(&self, args: Value, ctx: JobContext<S>) -> BoxFuture<'static, RunResult>;
    fn backoff(&self, attempt: i32) -> Duration;
}

struct Typed<J>(PhantomData<fn() -> J>);

impl<S, J> ErasedHandler<S> for Typed<J>
where
    S: Send + 'static,
    J: Handler<S>,
{
    fn run(&self, args: Value, ctx: JobContext<S>) -> BoxFuture<'static, RunResult> {
        Box::pin(async move {
            let job: J = match serde_json::from_value(args) {
                Ok(job) => job,
                Err(error) => return RunResult::Undecodable(error),
            };
            match job.handle(ctx).await {
                Ok(output) => match serde_json::to_value(output) {
                    Ok(value) => RunResult::Completed(value),
                    Err(error) => RunResult::UnserializableOutput(error),
                },
                Err(error) => RunResult::Failed(error),
            }
        })
    }

    fn backoff(&self, attempt: i32) -> Duration {
        J::backoff(attempt)
    }
}

/// Handlers by kind, plus the queue each kind defaults to.
pub(crate) struct Registry<S> {
    handlers: HashMap<&'static str, Arc<dyn ErasedHandler<S>>>,
    default_queues: Vec<&'static str>,
}

impl<S: Send + 'static> Registry<S> {
    pub(crate) fn new() -> Self {
        Self {
            handlers: HashMap::new(),
            default_queues: Vec::new(),
        }
    }

    /// Registers `J`; returns `false` when its kind is already taken.
    pub(crate) fn register<J: Handler<S>>(&mut self) -> bool {
        if self.handlers.contains_key(J::KIND) {
            return false;
        }
        self.handlers
            .insert(J::KIND, Arc::new(Typed::<J>(PhantomData)));
        if !self.default_queues.contains(&J::QUEUE) {
            self.default_queues.push(J::QUEUE);
        }
        true
    }

    pub(crate) fn get(&self, kind: &str) -> Option<&Arc<dyn ErasedHandler<S>>> {
        self.handlers.get(kind)
    }

    /// The registered kinds.
    pub(crate) fn kinds(&self) -> Vec<String> {
        self.handlers
            .keys()
            .map(|kind| (*kind).to_owned())
            .collect()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.handlers.is_empty()
    }

    /// The queues of the registered kinds, in registration order.
    pub(crate) fn default_queues(&self) -> &[&'static str] {
        &self.default_queues
    }
}
