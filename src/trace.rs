//! Trace context that travels with a job: [`TraceParent`], a W3C `traceparent`.
//!
//! A job enqueued with [`EnqueueOptions::traceparent`](crate::EnqueueOptions::traceparent) (or
//! `skiplock.enqueue(..., traceparent => ...)` from SQL) stores it in its `metadata` column;
//! each attempt's `skiplock.job` span records it as the field `traceparent`, the handler reads
//! it with [`JobContext::traceparent`](crate::JobContext::traceparent), and
//! [`WorkerBuilder::trace_context`](crate::WorkerBuilder::trace_context) hands it to whatever
//! links the attempt's span to the enqueuer's trace (with `tracing-opentelemetry`:
//! `span.set_parent(...)`; `examples/opentelemetry` shows it end to end).
//!
//! skiplock depends on no tracing backend: it only carries the 55 characters of the W3C
//! format, and refuses anything else, so a job cannot smuggle a large or malformed value into
//! every worker's logs and spans.

use std::fmt;
use std::str::FromStr;

/// The length of a `traceparent` in the W3C version-00 form, in bytes: 55.
pub const TRACEPARENT_LEN: usize = 55;

/// A W3C Trace Context `traceparent`
/// (`<version>-<trace-id>-<parent-id>-<flags>`, e.g.
/// `00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01`), validated.
///
/// Accepted: exactly [`TRACEPARENT_LEN`] characters in that form, lowercase hexadecimal, a
/// version other than `ff`, and neither the trace id nor the parent id all zeros (the W3C
/// recommendation's rules; a later version's extra fields are not accepted). The database
/// checks the same rules (`jobs_metadata_valid`), whatever writes the job.
///
/// ```
/// use skiplock::TraceParent;
///
/// let parent: TraceParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".parse()?;
/// assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// assert!(parent.is_sampled());
/// assert!("00-not-a-trace-context".parse::<TraceParent>().is_err());
/// # Ok::<(), skiplock::TraceParentError>(())
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent([u8; TRACEPARENT_LEN]);

/// Why a string is not a [`TraceParent`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// It is not [`TRACEPARENT_LEN`] bytes long (the length it has).
    #[error("a traceparent is {TRACEPARENT_LEN} characters long, not {0}")]
    Length(usize),
    /// It is not `xx-<32 hex>-<16 hex>-xx` in lowercase hexadecimal.
    #[error("a traceparent is <version>-<trace id>-<parent id>-<flags> in lowercase hex")]
    Format,
    /// Its version is `ff`, which the W3C format forbids.
    #[error("traceparent version ff is invalid")]
    Version,
    /// Its trace id or parent id is all zeros, which the W3C format forbids.
    #[error("a traceparent's trace id and parent id must not be all zeros")]
    ZeroId,
}

impl TraceParent {
    /// Parses and validates `value`; see the [type docs](Self) for the rules.
    ///
    /// # Errors
    /// [`TraceParentError`] saying which rule `value` breaks.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let bytes: [u8; TRACEPARENT_LEN] = value
            .as_bytes()
            .try_into()
            .map_err(|_| TraceParentError::Length(value.len()))?;
        let hex = |range: std::ops::Range<usize>| {
            bytes[range]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
        };
        let dashes = [2, 35, 52].iter().all(|&i| bytes[i] == b'-');
        if !(dashes && hex(0..2) && hex(3..35) && hex(36..52) && hex(53..55)) {
            return Err(TraceParentError::Format);
        }
        if &bytes[0..2] == b"ff" {
            return Err(TraceParentError::Version);
        }
        let zeros = |range: std::ops::Range<usize>| bytes[range].iter().all(|&b| b == b'0');
        if zeros(3..35) || zeros(36..52) {
            return Err(TraceParentError::ZeroId);
        }
        Ok(Self(bytes))
    }

    /// The whole value, as stored and as the `traceparent` HTTP header carries it.
    pub fn as_str(&self) -> &str {
        // Validated as ASCII by `parse`, the only constructor.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The format version: two hex digits, `00` today.
    pub fn version(&self) -> &str {
        &self.as_str()[0..2]
    }

    /// The trace id: 32 hex digits.
    pub fn trace_id(&self) -> &str {
        &self.as_str()[3..35]
    }

    /// The id of the span that enqueued the job (the parent of the attempts): 16 hex digits.
    pub fn parent_id(&self) -> &str {
        &self.as_str()[36..52]
    }

    /// The trace flags byte (bit 0: sampled).
    pub fn flags(&self) -> u8 {
        u8::from_str_radix(&self.as_str()[53..55], 16).unwrap_or_default()
    }

    /// Whether the enqueuer's trace was sampled (flag bit 0).
    pub fn is_sampled(&self) -> bool {
        self.flags() & 1 == 1
    }
}

impl FromStr for TraceParent {
    type Err = TraceParentError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::parse(value)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("TraceParent").field(&self.as_str()).finish()
    }
}

impl AsRef<str> for TraceParent {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let parent = TraceParent::parse(VALID).expect("valid");
        assert_eq!(parent.as_str(), VALID);
        assert_eq!(parent.to_string(), VALID);
        assert_eq!(parent.version(), "00");
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.parent_id(), "00f067aa0ba902b7");
        assert_eq!(parent.flags(), 1);
        assert!(parent.is_sampled());
        let unsampled = TraceParent::parse(&VALID.replace("-01", "-00")).expect("valid");
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn refuses_garbage() {
        let cases = [
            ("", TraceParentError::Length(0)),
            ("00-", TraceParentError::Length(3)),
            // A later version's extra field, or anything long, is refused by length.
            (
                &format!("{VALID}-extra"),
                TraceParentError::Length(TRACEPARENT_LEN + 6),
            ),
            (&"0".repeat(100_000), TraceParentError::Length(100_000)),
            (&VALID.to_uppercase(), TraceParentError::Format),
            (&VALID.replace('-', "_"), TraceParentError::Format),
            (&VALID.replacen('4', "g", 1), TraceParentError::Format),
            // Multi-byte characters are not hex, even at the right byte length.
            (&VALID.replacen("4b", "é", 1), TraceParentError::Format),
            (&VALID.replacen("00", "ff", 1), TraceParentError::Version),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroId,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(TraceParent::parse(input), Err(expected), "{input:?}");
        }
    }
}
