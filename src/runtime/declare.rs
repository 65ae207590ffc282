//! A worker's schedule declaration: the schedules in its code, stored under its owner.
//!
//! Each owner (a service: every process running the same code) declares its schedules with a
//! generation. A declaration applies only if its generation is at least the owner's stored one;
//! it stores the declared schedules and marks inactive the owner's code schedules it no longer
//! declares. Owners never touch each other's schedules. During a rolling deploy, give the new
//! version a higher generation: an old process starting after a new one then changes nothing,
//! so no schedule flaps. With equal generations the last process to start wins, as before
//! owners existed.

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;

use super::deadline::{DbCallError, deadline};
use crate::db;
use crate::{Schedule, ScheduleError};

/// Who declares a worker's schedules.
#[derive(Clone, Debug)]
pub(crate) struct Owner {
    pub(crate) name: String,
    pub(crate) generation: i64,
}

/// The default owner: the name of the running executable (`billing` for `/usr/bin/billing`),
/// or `skiplock` when it has none.
pub(crate) fn default_owner() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|path| path.file_stem()?.to_str().map(str::to_owned))
        .filter(|name| (1..=128).contains(&name.chars().count()))
        .unwrap_or_else(|| "skiplock".to_owned())
}

/// Stores the worker's declared schedules and deactivates those its owner no longer declares,
/// retrying until the database answers (each call within `timeout`).
pub(crate) async fn declare_schedules(
    pool: PgPool,
    owner: Owner,
    schedules: Arc<Vec<Schedule>>,
    kinds: Vec<String>,
    timeout: Duration,
) {
    let mut delay = Duration::from_millis(100);
    loop {
        match try_declare(&pool, &owner, &schedules, &kinds, timeout).await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, "could not store this worker's schedules; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// The error of one declaration attempt.
#[derive(Debug, thiserror::Error)]
enum DeclareError {
    #[error(transparent)]
    Call(#[from] DbCallError),
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
}

impl From<sqlx::Error> for DeclareError {
    fn from(error: sqlx::Error) -> Self {
        Self::Call(error.into())
    }
}

async fn try_declare(
    pool: &PgPool,
    owner: &Owner,
    schedules: &[Schedule],
    kinds: &[String],
    timeout: Duration,
) -> Result<(), DeclareError> {
    let mut tx = deadline(timeout, db::begin(pool)).await?;
    let claim = db::schedule::claim_owner(&mut tx, &owner.name, owner.generation);
    if !deadline(timeout, claim).await? {
        tracing::warn!(
            owner = %owner.name,
            generation = owner.generation,
            "a newer generation of this owner declared its schedules; leaving them as they are \
             (to roll back, deploy with a generation at least as high)"
        );
        return Ok(());
    }
    for schedule in schedules {
        let store = schedule.store(&mut *tx, Some(&owner.name));
        match tokio::time::timeout(timeout, store).await {
            Ok(Ok(true)) => {}
            Ok(Ok(false)) => tracing::warn!(
                schedule = %schedule.name(),
                owner = %owner.name,
                "schedule name is held by another owner's active schedule; not declared"
            ),
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => return Err(DbCallError::Timeout(timeout).into()),
        }
    }
    // Ownerless code schedules (stored before owners existed) of the kinds this worker runs or
    // declares go by the old rule.
    let mut legacy_kinds = kinds.to_vec();
    legacy_kinds.extend(schedules.iter().map(|s| s.kind().to_owned()));
    let names: Vec<String> = schedules.iter().map(|s| s.name().to_owned()).collect();
    let undeclared =
        db::schedule::deactivate_undeclared(&mut tx, &owner.name, &legacy_kinds, &names);
    let gone = deadline(timeout, undeclared).await?;
    deadline(timeout, tx.commit()).await?;
    for name in gone {
        tracing::info!(schedule = %name, owner = %owner.name, "schedule no longer declared in code; marked inactive");
    }
    Ok(())
}
