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
    Undecodable(DecodeError),
    /// The output does not serialize to JSON.
    UnserializableOutput(serde_json::Error),
}

/// One registered kind, type-erased.
pub(crate) trait ErasedHandler<S>: Send + Sync {
    /// Decodes `args` (JSON text) into the handler's type and runs it.
    fn run(&self, args: String, ctx: JobContext<S>) -> BoxFuture<'static, RunResult>;
    fn backoff(&self, attempt: i32) -> Duration;
}

struct Typed<J>(PhantomData<fn() -> J>);

impl<S, J> ErasedHandler<S> for Typed<J>
where
    S: Send + 'static,
    J: Handler<S>,
{
    fn run(&self, args: String, ctx: JobContext<S>) -> BoxFuture<'static, RunResult> {
        Box::pin(async move {
            let job: J = match decode(&args) {
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

/// Deserializes a job's arguments from JSON text.
fn decode<J: serde::de::DeserializeOwned>(args: &str) -> Result<J, DecodeError> {
    let mut json = serde_json::Deserializer::from_str(args);
    let job = serde_path_to_error::deserialize(&mut json).map_err(|error| {
        let reason = redact(error.inner());
        let mut segments: Vec<_> = error.path().iter().collect();
        if reason.starts_with("unknown field") {
            // The last segment is the unknown key itself: input, not the type's.
            segments.pop();
        }
        DecodeError {
            path: render_path(&segments),
            reason,
        }
    })?;
    json.end().map_err(|error| DecodeError {
        path: ".".to_owned(),
        reason: redact(&error),
    })?;
    Ok(job)
}

/// A path as `serde_path_to_error` shows one: `user.emails[2]`, `.` for the top level.
fn render_path(segments: &[&serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;

    let mut path = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => path.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(key);
            }
            Segment::Enum { variant } => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(variant);
            }
            Segment::Unknown => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push('?');
            }
        }
    }
    if path.is_empty() {
        path.push('.');
    }
    path
}

/// Why stored arguments do not decode: where, and what was expected there, but never the
/// value found (arguments may hold secrets, and this is stored in `errors` and logged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeError {
    /// Where in the arguments: `.` for the top level, `user.emails[2]` deeper.
    pub(crate) path: String,
    /// What went wrong, without the value.
    pub(crate) reason: String,
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "at {}: {}", self.path, self.reason)
    }
}

/// A `serde_json` error's message without the values it may quote.
///
/// Syntax errors are `serde_json`'s own words (`number out of range`, `recursion limit
/// exceeded`) and quote nothing. Data errors come from `serde`'s helpers, whose messages quote
/// the value found (`invalid type: string "hunter2", expected u32`): of those, only the kind of
/// value found and what was expected are kept. A message of any other shape (a custom error of
/// a `Deserialize` impl, which may say anything) is withheld entirely.
fn redact(error: &serde_json::Error) -> String {
    use serde_json::error::Category;

    let position = format!("line {} column {}", error.line(), error.column());
    if error.classify() != Category::Data {
        // Display is "<message> at line L column C"; keep it as it is.
        return error.to_string();
    }
    let message = error.to_string();
    let message = message
        .strip_suffix(&format!(" at {position}"))
        .unwrap_or(&message);
    // The expected part is the code's own words, after the value: the last ", expected " is
    // the one serde wrote, whatever the value contains.
    let expected = message
        .rfind(", expected ")
        .map(|at| &message[at + ", expected ".len()..]);
    let found = |prefix: &str| {
        message.strip_prefix(prefix).map(|rest| {
            // "string \"...\"", "integer `5`", "unit value": the words before any quote.
            let end = rest.find(['"', '`', ',']).unwrap_or(rest.len());
            rest[..end].trim().to_owned()
        })
    };
    let reason = if let Some(found) = found("invalid type: ") {
        format!(
            "invalid type: {found}, expected {}",
            expected.unwrap_or("?")
        )
    } else if let Some(found) = found("invalid value: ") {
        format!(
            "invalid value: {found}, expected {}",
            expected.unwrap_or("?")
        )
    } else if message.starts_with("invalid length ") {
        // "invalid length 3, expected ...": a length, not a value.
        message.to_owned()
    } else if message.starts_with("missing field `") || message.starts_with("duplicate field `") {
        // The field is one the type declares.
        message.to_owned()
    } else if message.starts_with("unknown variant `") {
        format!("unknown variant, expected {}", expected.unwrap_or("?"))
    } else if message.starts_with("unknown field `") {
        format!("unknown field, expected {}", expected.unwrap_or("?"))
    } else {
        "the value was rejected (message withheld: it may quote the value)".to_owned()
    };
    format!("{reason} at {position}")
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Args {
        user: User,
        mode: Mode,
        #[serde(default)]
        headers: HashMap<String, u8>,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct User {
        age: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(rename_all = "snake_case")]
    enum Mode {
        Fast,
    }

    const SECRET: &str = "hunter2, expected nothing";

    fn error(args: &str) -> String {
        decode::<Args>(args).expect_err("undecodable").to_string()
    }

    #[test]
    fn decode_errors_name_the_place_and_the_expectation_but_not_the_value() {
        let cases = [
            (
                format!(r#"{{"user": {{"age": "{SECRET}"}}, "mode": "fast"}}"#),
                "at user.age: invalid type: string, expected u32 at line 1",
            ),
            (
                r#"{"user": {"age": -1}, "mode": "fast", "x": 1}"#.to_owned(),
                "at user.age: invalid value: integer, expected u32 at line 1",
            ),
            (
                format!(r#"{{"user": {{"age": 1}}, "mode": "{SECRET}"}}"#),
                "at mode: unknown variant, expected `fast` at line 1",
            ),
            (
                format!(r#"{{"user": {{"age": 1}}, "mode": "fast", "{SECRET}": 1}}"#),
                "at .: unknown field, expected one of `user`, `mode`, `headers` at line 1",
            ),
            (
                format!(r#"{{"mode": "fast", "headers": {{"a": "{SECRET}"}}}}"#),
                "at headers.a: invalid type: string, expected u8 at line 1",
            ),
            (
                r#"{"user": {"age": 1e400}, "mode": "fast"}"#.to_owned(),
                "at user.age: number out of range at line 1",
            ),
        ];
        for (args, expected) in cases {
            let message = error(&args);
            assert!(message.starts_with(expected), "{message:?} for {args}");
            assert!(!message.contains("hunter2"), "{message:?}");
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let message = decode::<Value>(&deep).expect_err("too deep").to_string();
        assert!(
            message.contains("recursion limit exceeded at line 1"),
            "{message}"
        );
    }
}
