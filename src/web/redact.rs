//! Hiding secrets in job data before it reaches a browser.

use serde_json::Value;

/// Which piece of a job a [redactor](super::Dashboard::redact) is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Field {
    /// The job's arguments.
    Args,
    /// What its handler returned.
    Result,
    /// What its handler stored with `set_progress`.
    Progress,
    /// Its metadata (trace context and what the enqueuer added).
    Metadata,
    /// An attempt's error message (a JSON string).
    Error,
}

/// What a redacted value is replaced with.
pub(crate) const REDACTED: &str = "[redacted]";

/// Replaces the value of every object key containing one of `keys` (lowercase), at any depth.
pub(crate) fn redact_keys(value: &mut Value, keys: &[String]) {
    match value {
        Value::Object(map) => {
            for (key, inner) in map.iter_mut() {
                let key = key.to_lowercase();
                if keys.iter().any(|k| key.contains(k.as_str())) {
                    *inner = Value::String(REDACTED.to_owned());
                } else {
                    redact_keys(inner, keys);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| redact_keys(item, keys)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_redacted_at_any_depth_ignoring_case() {
        let mut value = serde_json::json!({
            "user": "ann",
            "DB_Password": "hunter2",
            "nested": [{"api_token": {"a": 1}}, {"note": "password"}],
        });
        redact_keys(&mut value, &["password".to_owned(), "token".to_owned()]);
        assert_eq!(
            value,
            serde_json::json!({
                "user": "ann",
                "DB_Password": REDACTED,
                "nested": [{"api_token": REDACTED}, {"note": "password"}],
            })
        );
    }
}
