//! The database layer: every SQL statement skiplock runs outside `migrations/`.
//!
//! One named function per statement, each checked at compile time by `sqlx::query!` against the
//! schema (the offline cache lives in `.sqlx/`). Functions are named noun-first
//! (`job::claim`, `job::complete_many`) and take any executor, so callers decide whether a
//! statement runs on the pool, a connection or the caller's own transaction.
//!
//! Time is always the database's `now()`: leases, schedules and backoff never depend on the
//! clock of the machine a worker happens to run on.

#[cfg(feature = "bench")]
pub(crate) mod bench;
#[cfg(feature = "bench")]
pub(crate) mod database;
pub(crate) mod inspect;
pub(crate) mod job;
pub(crate) mod job_list;
pub(crate) mod leader;
#[cfg(feature = "metrics")]
pub(crate) mod metrics;
pub(crate) mod migration;
pub(crate) mod queue;
pub(crate) mod schedule;
pub(crate) mod session;
pub(crate) mod throttle;
pub(crate) mod waiter;
pub(crate) mod workflow;

/// Whether the database refused a statement for its data, which retrying cannot fix: SQLSTATE
/// class 22 (data exception: a NUL in a JSON string, an interval out of range) or 23 (integrity:
/// a `CHECK` of `skiplock.jobs`, a unique job whose duplicate holds its key).
pub(crate) fn is_data_error(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .and_then(|error| error.code())
        .is_some_and(|code| code.starts_with("22") || code.starts_with("23"))
}

/// The database's time: that of the transaction `executor` is in, or of the statement.
pub(crate) async fn now<'e>(
    executor: impl sqlx::PgExecutor<'e>,
) -> Result<chrono::DateTime<chrono::Utc>, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT now() AS "now!""#)
        .fetch_one(executor)
        .await
}

/// Begins a transaction on a connection of `pool`; cancel safe, unlike `pool.begin()`.
///
/// sqlx (0.9) counts a transaction as open only once the server has confirmed its `BEGIN`. A
/// `begin()` future dropped while that confirmation is on its way (a deadline, a stop signal, a
/// client that went away) therefore returns the connection to the pool inside a transaction
/// sqlx does not know about, and every later autocommit statement on that connection runs in
/// it and is never committed: the completer's outcomes vanished that way when a worker stopped
/// while its scheduler was beginning a round. Here the `BEGIN` runs on a task of its own: if
/// the caller goes away, the task still finishes it and drops the transaction, which rolls it
/// back before the connection is reused.
pub(crate) async fn begin(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let pool = pool.clone();
    // A panic inside sqlx, or a runtime shutting down: either way no transaction was handed out.
    tokio::spawn(async move { pool.begin().await })
        .await
        .unwrap_or(Err(sqlx::Error::WorkerCrashed))
}

/// The channel idle workers LISTEN on; the payload of each notification is a queue name.
pub(crate) const WAKE_CHANNEL: &str = "skiplock_wake";

/// The channel outcome and progress writes notify for jobs registered in
/// `skiplock.job_waiters`; the payload is the job's id.
pub(crate) const JOB_CHANNEL: &str = "skiplock_job";

/// The channel `skiplock.cancel()` notifies when it asks a running job to stop; the payload is
/// the job's id.
pub(crate) const CANCEL_CHANNEL: &str = "skiplock_cancel";

#[cfg(test)]
mod tests {
    use skiplock_testing::TestDatabase;
    use sqlx::postgres::PgPoolOptions;

    /// A `begin` abandoned midway (its `BEGIN` perhaps sent, the answer not yet read) leaves
    /// no transaction open on the pooled connection: a statement run next on that same
    /// connection commits. With `pool.begin()` in place of [`super::begin`], rows go missing.
    #[tokio::test]
    async fn an_abandoned_begin_leaves_no_transaction_behind() {
        let db = TestDatabase::new().await.expect("database");
        sqlx::query("CREATE TABLE public.written (n int)")
            .execute(db.pool())
            .await
            .expect("table");
        // One connection: the statement after each abandoned begin runs on the same one.
        let options = (*db.pool().connect_options()).clone();
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("pool");
        // Given up after 0, 1, 2, ... scheduler turns: at some of them the `BEGIN` is on the
        // wire; a transaction that did begin is dropped unfinished.
        for n in 0..200_i32 {
            let yields = async {
                for _ in 0..n % 40 {
                    tokio::task::yield_now().await;
                }
            };
            tokio::select! {
                biased;
                _ = super::begin(&pool) => {}
                () = yields => {}
            }
            sqlx::query("INSERT INTO public.written VALUES ($1)")
                .bind(n)
                .execute(&pool)
                .await
                .expect("insert");
            let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM public.written")
                .fetch_one(db.pool())
                .await
                .expect("count");
            assert_eq!(
                seen,
                i64::from(n) + 1,
                "the insert after abandoned begin {n}"
            );
        }
    }
}
