//! Test support for [skiplock](https://docs.rs/skiplock): a fresh database with the skiplock
//! schema for every test, on a throwaway PostgreSQL server when no `DATABASE_URL` is set.
//!
//! Add it as a dev-dependency, next to `skiplock` itself:
//!
//! ```toml
//! [dev-dependencies]
//! skiplock-testing = "0.1"
//! ```
//!
//! - [`TestDatabase`]: a new, migrated database per call, dropped with the value.
//! - [`embedded::EmbeddedPostgres`]: the throwaway server itself, started from the PostgreSQL
//!   server binaries installed on the machine (Unix only).

mod database;
pub mod embedded;
mod test_database;

pub use crate::test_database::{TestDatabase, TestDatabaseError};
