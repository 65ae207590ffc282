//! Exit codes, and the error that ends a command with one.

use std::fmt;

/// An error: bad input, no database, a failed statement, an action refused or not confirmed.
pub(crate) const ERROR: u8 = 1;
/// No job (or schedule, or workflow) by that id or name.
pub(crate) const NOT_FOUND: u8 = 3;
/// `doctor --strict`: a check gave a warning.
pub(crate) const WARNING: u8 = 4;
/// `doctor`: a check is critical.
pub(crate) const CRITICAL: u8 = 5;

/// The exit codes, for the top-level `--help` (README's "The `skiplock` command" says the same).
pub(crate) const HELP: &str = "\
Exit codes:
  0  success (doctor: every check ok or info, or warnings without --strict)
  1  error: bad input, no database, a failed statement, an action refused or not confirmed
  2  the command line is wrong (clap's usage message)
  3  not found: no job, schedule or workflow by that id or name
  4  doctor --strict: a check gave a warning
  5  doctor: a check is critical";

/// Ends the command with `code`; with a message, printed as any error (`error: ...`), without
/// one silently (the command has said what there was to say).
#[derive(Debug)]
pub(crate) struct Exit {
    pub(crate) code: u8,
    pub(crate) message: Option<String>,
}

impl Exit {
    /// Exit code 3 with `message`.
    pub(crate) fn not_found(message: String) -> Self {
        Self {
            code: NOT_FOUND,
            message: Some(message),
        }
    }

    /// `code`, without a message.
    pub(crate) fn silent(code: u8) -> Self {
        Self {
            code,
            message: None,
        }
    }
}

impl fmt::Display for Exit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.message {
            Some(message) => f.write_str(message),
            None => write!(f, "exit code {}", self.code),
        }
    }
}

impl std::error::Error for Exit {}
