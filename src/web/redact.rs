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

/// What an error message that mentions a redacted key is replaced with.
pub(crate) const REDACTED_MESSAGE: &str = "[redacted: the message mentions a redacted key]";

/// The length in bytes of `value` when it is JSON text `serde_json` could not read, which
/// `skiplock::inspect` gives as a string (a number beyond `f64`, nesting past 128 levels): a
/// string that starts as an object, array or number would and does not parse. A redactor
/// cannot see inside it, so it is not shown at all.
pub(crate) fn unparsed_text(value: &Value) -> Option<usize> {
    let Value::String(text) = value else {
        return None;
    };
    let first = text.trim_start().chars().next()?;
    let looks_like_json = matches!(first, '{' | '[' | '-' | '0'..='9');
    (looks_like_json && serde_json::from_str::<Value>(text).is_err()).then_some(text.len())
}

/// Replaces an error message (a JSON string) that mentions one of `keys` (lowercase),
/// ignoring case, with [`REDACTED_MESSAGE`]: a message is free text, in which a secret cannot
/// be told from the words around it. Any other value is redacted as by [`redact_keys`].
pub(crate) fn redact_message(value: &mut Value, keys: &[String]) {
    match value {
        Value::String(text) => {
            let lower = text.to_lowercase();
            if keys.iter().any(|key| lower.contains(key.as_str())) {
                *text = REDACTED_MESSAGE.to_owned();
            }
        }
        other => redact_keys(other, keys),
    }
}

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
    fn unparsed_json_text_is_recognised() {
        let text = |s: &str| Value::String(s.to_owned());
        assert_eq!(unparsed_text(&text(r#"{"a": 1e400}"#)), Some(12));
        assert_eq!(unparsed_text(&text("[[[")), Some(3));
        assert_eq!(unparsed_text(&text("1e400")), Some(5));
        // Strings that are text, or JSON that parses, are left to the redactor.
        assert_eq!(unparsed_text(&text("hello")), None);
        assert_eq!(unparsed_text(&text("[1, 2]")), None);
        assert_eq!(unparsed_text(&serde_json::json!({"a": 1})), None);
    }

    #[test]
    fn messages_that_mention_a_key_are_replaced_whole() {
        let keys = ["password".to_owned()];
        let mut message = Value::String("login failed: PASSWORD=hunter2".into());
        redact_message(&mut message, &keys);
        assert_eq!(message, Value::String(REDACTED_MESSAGE.into()));
        let mut message = Value::String("timed out".into());
        redact_message(&mut message, &keys);
        assert_eq!(message, Value::String("timed out".into()));
    }

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
