//! The doctor: PostgreSQL's health as a queue needs it, and the queue's own.

use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use sqlx::{Acquire, PgConnection, Postgres};

use super::{InspectError, begin, queues};
use crate::{MIGRATIONS, db};

mod vacuum;

use vacuum::{bloat_check, dead_rows_check, holds, index_bloat_check, sizes_check};

/// How bad a check's finding is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Nothing to do.
    Ok,
    /// Worth knowing; nothing is wrong yet.
    Info,
    /// Will hurt if left alone.
    Warning,
    /// Hurting now: jobs are stuck, lost to sight, or the queue is slowing down.
    Critical,
}

impl Severity {
    /// `ok`, `info`, `warning` or `critical`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Info => "info",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

/// One health check's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct Check {
    /// The check's stable name, e.g. `xmin_horizon` (docs/operations.md lists them).
    pub name: &'static str,
    /// How bad.
    pub severity: Severity,
    /// What was found, in one line.
    pub summary: String,
    /// What to do about it, in one line (`None` when nothing is to be done).
    pub remedy: Option<String>,
    /// The figures behind the verdict.
    pub details: Value,
}

impl Check {
    fn new(name: &'static str, severity: Severity, summary: String) -> Self {
        Self {
            name,
            severity,
            summary,
            remedy: None,
            details: Value::Null,
        }
    }

    fn remedy(mut self, remedy: impl Into<String>) -> Self {
        self.remedy = Some(remedy.into());
        self
    }

    fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// Every check's verdict.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[non_exhaustive]
pub struct HealthReport {
    /// The checks, in a fixed order.
    pub checks: Vec<Check>,
}

impl HealthReport {
    /// The worst severity found ([`Severity::Ok`] when there are no checks).
    pub fn worst(&self) -> Severity {
        self.checks
            .iter()
            .map(|check| check.severity)
            .max()
            .unwrap_or(Severity::Ok)
    }

    /// The check of that name.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|check| check.name == name)
    }
}

/// The thresholds of [`health`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct HealthOptions {
    /// A transaction (or prepared transaction) holding back the xmin horizon this long is a
    /// warning. Default: 5 minutes: by then a busy queue's dead rows pile up where no vacuum
    /// can remove them.
    pub horizon_warning: Duration,
    /// ... and this long critical. Default: 30 minutes.
    pub horizon_critical: Duration,
    /// A holder this old is a warning already while skiplock's tables hold more than
    /// [`dead_rows_warning`](Self::dead_rows_warning) dead rows: a busy queue. Default: 1
    /// minute: on a stock server at 17,000 jobs/s, a snapshot held for two minutes had cut
    /// throughput to a quarter (`docs/performance.md`), long before the 5-minute threshold.
    pub horizon_busy_warning: Duration,
    /// An available job waiting this long is a warning (pickup lag). Default: 5 minutes.
    pub pickup_lag_warning: Duration,
    /// A running job past its lease for this long means nobody rescues it. Default: 1
    /// minute (rescuers look every 5 s).
    pub stuck_grace: Duration,
    /// A table with more dead rows than this, and more than a fifth of its live ones, is a
    /// warning. Default: 100,000.
    pub dead_rows_warning: i64,
    /// A table or index over this size whose estimated bloat is over half is a warning
    /// (`bloat`, `index_bloat`). Default: 100 MiB.
    pub bloat_min_bytes: i64,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            horizon_warning: Duration::from_secs(5 * 60),
            horizon_critical: Duration::from_secs(30 * 60),
            horizon_busy_warning: Duration::from_secs(60),
            pickup_lag_warning: Duration::from_secs(5 * 60),
            stuck_grace: Duration::from_secs(60),
            dead_rows_warning: 100_000,
            bloat_min_bytes: 100 * 1024 * 1024,
        }
    }
}

/// A replication slot holding the horizon back this many transactions is a warning (a slot has
/// no age in time): 1,000,000.
const SLOT_XID_WARNING: i32 = 1_000_000;

/// Counts in checks stop at this many: 10,000.
const CAP: i64 = 10_000;

/// Runs every health check. The checks, in order: `xmin_horizon`, `autovacuum`,
/// `dead_rows`, `bloat`, `index_bloat`, `table_sizes`, `stuck_jobs`, `unrunnable_jobs`,
/// `overdue_schedules`, `pickup_lag`, `migrations`. On a schema that is missing or behind
/// this skiplock, where the other checks' reads fail (they read what migrations add), the
/// report is the `migrations` check alone, critical, with its remedy.
///
/// # Errors
/// [`InspectError::Database`] when a statement fails (on a schema behind this skiplock, only
/// when reading the applied migrations does: any later failure gives the report above).
///
/// # Cancel safety
/// Cancel safe: it only reads.
pub async fn health<'c, A>(conn: A, options: &HealthOptions) -> Result<HealthReport, InspectError>
where
    A: Acquire<'c, Database = Postgres>,
{
    let mut tx = begin(conn, true).await?;
    let applied = if db::migration::bookkeeping_exists(&mut tx).await? {
        db::migration::applied_versions(&mut tx).await?
    } else {
        Vec::new()
    };
    let migrations = migrations_check(&applied);
    // Behind: the reads may need what the pending migrations add. In a savepoint, so that a
    // read that fails leaves the report to the migrations check instead of an SQL error.
    let reads = if migrations.severity == Severity::Critical {
        let mut savepoint = sqlx::Connection::begin(&mut *tx).await?;
        match read(&mut savepoint, options).await {
            Ok(reads) => {
                savepoint.commit().await?;
                reads
            }
            Err(InspectError::Database(_)) => {
                savepoint.rollback().await?;
                tx.commit().await?;
                return Ok(HealthReport {
                    checks: vec![migrations],
                });
            }
            Err(error) => return Err(error),
        }
    } else {
        read(&mut tx, options).await?
    };
    tx.commit().await?;

    let Reads {
        settings,
        holder,
        tables,
        indexes,
        stuck,
        orphaned,
        overdue,
        queues,
    } = reads;
    let held = holds(holder.as_ref(), options);
    let checks = vec![
        horizon_check(holder, &settings, &tables, options),
        autovacuum_check(&settings, &tables),
        dead_rows_check(&tables, &settings, held, options),
        bloat_check(&tables, options),
        index_bloat_check(&indexes, options),
        sizes_check(&tables),
        stuck_check(&stuck),
        orphaned_check(&orphaned),
        overdue_check(&overdue),
        lag_check(&queues, options),
        migrations,
    ];
    Ok(HealthReport { checks })
}

/// What the checks other than `migrations` read, in one transaction.
struct Reads {
    settings: db::inspect::ServerSettings,
    holder: Option<db::inspect::HorizonHolder>,
    tables: Vec<db::inspect::TableRow>,
    indexes: Vec<db::inspect::IndexRow>,
    stuck: db::inspect::Stuck,
    orphaned: Vec<db::inspect::Orphaned>,
    overdue: Vec<db::inspect::Overdue>,
    queues: Vec<super::QueueInfo>,
}

async fn read(conn: &mut PgConnection, options: &HealthOptions) -> Result<Reads, InspectError> {
    Ok(Reads {
        settings: db::inspect::server_settings(&mut *conn).await?,
        holder: db::inspect::horizon_holder(&mut *conn).await?,
        tables: db::inspect::tables(&mut *conn).await?,
        indexes: db::inspect::indexes(&mut *conn).await?,
        stuck: db::inspect::stuck_running(&mut *conn, options.stuck_grace.as_secs_f64(), CAP)
            .await?,
        orphaned: db::inspect::orphaned(&mut *conn, CAP).await?,
        overdue: db::inspect::overdue_schedules(&mut *conn).await?,
        queues: queues(&mut *conn).await?,
    })
}

fn horizon_check(
    holder: Option<db::inspect::HorizonHolder>,
    settings: &db::inspect::ServerSettings,
    tables: &[db::inspect::TableRow],
    options: &HealthOptions,
) -> Check {
    let unseen = (!settings.sees_all_sessions).then_some(
        " (this role sees only its own sessions: grant it pg_read_all_stats to see every one)",
    );
    let Some(holder) = holder else {
        return Check::new(
            "xmin_horizon",
            Severity::Ok,
            format!(
                "nothing holds back the xmin horizon{}",
                unseen.unwrap_or_default()
            ),
        );
    };
    // A transaction that began after this one's snapshot has a negative age against
    // `now()`: count it as zero rather than failing (or panicking) on it.
    let age = holder
        .age_secs
        .map(|secs| Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or(Duration::MAX));
    // What the holder keeps from being vacuumed, when the queue is busy enough to matter.
    let dead_rows: i64 = tables.iter().map(|table| table.dead_rows).sum();
    let busy = dead_rows > options.dead_rows_warning;
    let severity = match age {
        Some(age) if age >= options.horizon_critical => Severity::Critical,
        Some(age) if age >= options.horizon_warning => Severity::Warning,
        Some(age) if busy && age >= options.horizon_busy_warning => Severity::Warning,
        // Slots have no age in time; their transaction-id age speaks for them.
        None if holder.xid_age.unwrap_or(0) > 10_000_000 => Severity::Critical,
        None if holder.xid_age.unwrap_or(0) > SLOT_XID_WARNING => Severity::Warning,
        _ => Severity::Ok,
    };
    let who = match (holder.holder.as_str(), holder.pid) {
        ("transaction", Some(pid)) => format!(
            "pid {pid} ({}, {}, {})",
            holder
                .name
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or("no application name"),
            holder.client.as_deref().unwrap_or("local socket"),
            holder.state.as_deref().unwrap_or("state unknown"),
        ),
        (kind, _) => format!("{kind} {:?}", holder.name.as_deref().unwrap_or_default()),
    };
    let age_text = age.map_or_else(
        || format!("{} transactions", holder.xid_age.unwrap_or(0)),
        humanize,
    );
    let remedy = match holder.holder.as_str() {
        "transaction" => holder.pid.map_or_else(String::new, |pid| {
            format!(
                "end that transaction (SELECT pg_terminate_backend({pid})), and set idle_in_transaction_session_timeout"
            )
        }),
        "prepared transaction" => format!(
            "COMMIT PREPARED or ROLLBACK PREPARED '{}'",
            holder.name.as_deref().unwrap_or_default()
        ),
        _ => format!(
            "drop the replication slot if its consumer is gone (SELECT pg_drop_replication_slot('{}'))",
            holder.name.as_deref().unwrap_or_default()
        ),
    };
    let check = Check::new(
        "xmin_horizon",
        severity,
        format!(
            "oldest xmin holder: {who}, for {age_text}{}{}",
            if busy && severity > Severity::Ok {
                format!(", while skiplock's tables hold {dead_rows} dead rows")
            } else {
                String::new()
            },
            unseen.unwrap_or_default()
        ),
    )
    .details(json!({
        "holder": holder.holder,
        "pid": holder.pid,
        "name": holder.name,
        "client": holder.client,
        "age_secs": holder.age_secs,
        "xid_age": holder.xid_age,
        "state": holder.state,
        "query": holder.query,
    }));
    if severity > Severity::Ok {
        check.remedy(remedy)
    } else {
        check
    }
}

fn autovacuum_check(
    settings: &db::inspect::ServerSettings,
    tables: &[db::inspect::TableRow],
) -> Check {
    let disabled: Vec<&str> = tables
        .iter()
        .filter(|t| t.autovacuum_disabled)
        .map(|t| t.name.as_str())
        .collect();
    if !settings.autovacuum || !settings.track_counts {
        let setting = if settings.autovacuum {
            "track_counts"
        } else {
            "autovacuum"
        };
        return Check::new(
            "autovacuum",
            Severity::Warning,
            format!("{setting} is off for the server: nothing vacuums skiplock's tables"),
        )
        .remedy(format!(
            "set {setting} = on in postgresql.conf, or vacuum skiplock.jobs from cron"
        ));
    }
    if !disabled.is_empty() {
        return Check::new(
            "autovacuum",
            Severity::Warning,
            format!(
                "autovacuum is off for skiplock.{}",
                disabled.join(", skiplock.")
            ),
        )
        .remedy("ALTER TABLE ... RESET (autovacuum_enabled)");
    }
    Check::new("autovacuum", Severity::Ok, "autovacuum is on".to_owned())
}

fn stuck_check(stuck: &db::inspect::Stuck) -> Check {
    if stuck.jobs == 0 {
        return Check::new(
            "stuck_jobs",
            Severity::Ok,
            "no running job is past its lease".to_owned(),
        );
    }
    Check::new(
        "stuck_jobs",
        Severity::Critical,
        format!(
            "running jobs past their lease that nobody rescues: {} (the oldest expired {})",
            super::Count::capped(stuck.jobs, CAP),
            stuck.oldest_lease.map_or_else(String::new, |at| at
                .format("%Y-%m-%d %H:%M:%S UTC")
                .to_string())
        ),
    )
    .remedy("start a worker: every worker's maintenance leader runs the rescuer")
    .details(json!({ "jobs": stuck.jobs, "oldest_lease_expired_at": stuck.oldest_lease }))
}

fn orphaned_check(orphaned: &[db::inspect::Orphaned]) -> Check {
    if orphaned.is_empty() {
        return Check::new(
            "unrunnable_jobs",
            Severity::Ok,
            "every available job has a live worker for its queue and kind".to_owned(),
        );
    }
    let pairs: Vec<String> = orphaned
        .iter()
        .take(5)
        .map(|o| {
            format!(
                "{} {}/{}",
                super::Count::capped(o.jobs, CAP),
                o.queue,
                o.kind
            )
        })
        .collect();
    Check::new(
        "unrunnable_jobs",
        Severity::Warning,
        format!(
            "available jobs no live worker runs (queue/kind): {}",
            pairs.join(", ")
        ),
    )
    .remedy("start a worker that works the queue with a handler for the kind, or cancel the jobs")
    .details(json!(
        orphaned
            .iter()
            .map(|o| json!({"queue": o.queue, "kind": o.kind, "jobs": o.jobs}))
            .collect::<Vec<_>>()
    ))
}

fn overdue_check(overdue: &[db::inspect::Overdue]) -> Check {
    match overdue.first() {
        None => Check::new(
            "overdue_schedules",
            Severity::Ok,
            "no schedule is overdue".to_owned(),
        ),
        Some(first) => Check::new(
            "overdue_schedules",
            Severity::Warning,
            format!(
                "{} schedules are overdue; {:?} was due at {}",
                overdue.len(),
                first.name,
                first.next_fire_at.format("%Y-%m-%d %H:%M:%S UTC")
            ),
        )
        .remedy("run a worker (its maintenance leader runs the scheduler) or `skiplock scheduler`")
        .details(json!(
            overdue
                .iter()
                .map(|o| json!({"schedule": o.name, "next_fire_at": o.next_fire_at}))
                .collect::<Vec<_>>()
        )),
    }
}

fn lag_check(queues: &[super::QueueInfo], options: &HealthOptions) -> Check {
    let lagging: Vec<&super::QueueInfo> = queues
        .iter()
        // A paused queue lags on purpose.
        .filter(|q| {
            q.paused.is_none()
                && q.oldest_available_age
                    .is_some_and(|age| age >= options.pickup_lag_warning)
        })
        .collect();
    if lagging.is_empty() {
        let paused: Vec<&str> = queues
            .iter()
            .filter(|q| q.paused.is_some())
            .map(|q| q.name.as_str())
            .collect();
        let paused = if paused.is_empty() {
            String::new()
        } else {
            format!(" (paused, not counted: {})", paused.join(", "))
        };
        return Check::new(
            "pickup_lag",
            Severity::Ok,
            format!(
                "every queue picks up its jobs within {}{paused}",
                humanize(options.pickup_lag_warning)
            ),
        );
    }
    let text: Vec<String> = lagging
        .iter()
        .map(|q| {
            format!(
                "{} ({})",
                q.name,
                humanize(q.oldest_available_age.unwrap_or_default())
            )
        })
        .collect();
    Check::new(
        "pickup_lag",
        Severity::Warning,
        format!("jobs wait long to start in: {}", text.join(", ")),
    )
    .remedy("add workers or concurrency to these queues (or see `skiplock jobs explain` for one job)")
    .details(json!(
        lagging
            .iter()
            .map(|q| json!({"queue": q.name, "oldest_available_secs": q.oldest_available_age.map(|a| a.as_secs_f64())}))
            .collect::<Vec<_>>()
    ))
}

fn migrations_check(applied: &[i32]) -> Check {
    let pending: Vec<i32> = MIGRATIONS
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect();
    let known_max = MIGRATIONS.last().map_or(0, |m| m.version);
    let newer: Vec<i32> = applied.iter().copied().filter(|v| *v > known_max).collect();
    if !pending.is_empty() {
        return Check::new(
            "migrations",
            Severity::Critical,
            format!("migrations not applied: {pending:?}"),
        )
        .remedy("run `skiplock migrate` (or skiplock::migrate) as the schema's owner");
    }
    if !newer.is_empty() {
        return Check::new(
            "migrations",
            Severity::Info,
            format!("the schema is newer than this skiplock ({newer:?} applied)"),
        );
    }
    Check::new(
        "migrations",
        Severity::Ok,
        format!("the schema is current (version {known_max})"),
    )
}

/// `3h 5m`, `42s`.
pub(crate) fn humanize(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3600 if secs.is_multiple_of(60) => format!("{}m", secs / 60),
        60..3600 => format!("{}m {}s", secs / 60, secs % 60),
        3600..86_400 if secs % 3600 / 60 == 0 => format!("{}h", secs / 3600),
        3600..86_400 => format!("{}h {}m", secs / 3600, secs % 3600 / 60),
        _ if secs % 86_400 / 3600 == 0 => format!("{}d", secs / 86_400),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3600),
    }
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    match n {
        n if n >= 1024.0 * 1024.0 * 1024.0 => format!("{:.1} GiB", n / 1024.0 / 1024.0 / 1024.0),
        n if n >= 1024.0 * 1024.0 => format!("{:.1} MiB", n / 1024.0 / 1024.0),
        n => format!("{:.0} KiB", n / 1024.0),
    }
}
