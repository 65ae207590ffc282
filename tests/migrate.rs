//! The schema: idempotent, concurrent migration in its own schema; the printed SQL.

mod common;

use skiplock_testing::TestDatabase;
use sqlx::postgres::PgPoolOptions;

#[tokio::test]
async fn migrate_is_idempotent_and_keeps_to_its_schema() {
    let db = TestDatabase::new().await.expect("database"); // already migrated once
    let pool = db.pool();
    let report = skiplock::migrate(pool).await.expect("migrate again");
    assert!(report.applied.is_empty());
    assert!(report.unknown.is_empty());

    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM skiplock.migrations ORDER BY 1")
            .fetch_all(pool)
            .await
            .expect("versions");
    let known: Vec<i32> = skiplock::MIGRATIONS.iter().map(|m| m.version).collect();
    assert_eq!(versions, known);

    // Nothing outside the skiplock schema: no _sqlx_migrations, no public tables.
    let outside: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema || '.' || table_name FROM information_schema.tables
         WHERE table_schema NOT IN ('skiplock', 'pg_catalog', 'information_schema')",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    assert!(outside.is_empty(), "{outside:?}");
}

#[tokio::test]
async fn concurrent_migrations_on_a_fresh_database_apply_once() {
    let db = TestDatabase::new().await.expect("database");
    sqlx::raw_sql("DROP SCHEMA skiplock CASCADE")
        .execute(db.pool())
        .await
        .expect("reset");
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect_with(db.connect_options().clone())
        .await
        .expect("pool");
    let runs: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { skiplock::migrate(&pool).await })
        })
        .collect();
    let mut applied = 0;
    for run in runs {
        let report = run.await.expect("task").expect("migrate");
        applied += report.applied.len();
    }
    assert_eq!(
        applied,
        skiplock::MIGRATIONS.len(),
        "each migration applied exactly once"
    );
}

#[tokio::test]
async fn printed_sql_builds_the_same_schema_and_records_itself() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    sqlx::raw_sql("DROP SCHEMA skiplock CASCADE")
        .execute(pool)
        .await
        .expect("reset");
    sqlx::raw_sql(sqlx::AssertSqlSafe(skiplock::script(0)))
        .execute(pool)
        .await
        .expect("apply script");
    let report = skiplock::migrate(pool).await.expect("migrate");
    assert!(
        report.applied.is_empty(),
        "the script recorded its versions"
    );
    let id: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('k', '{}')")
        .fetch_one(pool)
        .await
        .expect("enqueue works");
    assert!(id > 0);

    let latest = skiplock::MIGRATIONS.last().expect("a migration").version;
    assert!(!skiplock::script(latest).contains("INSERT INTO skiplock.migrations"));
}

#[tokio::test]
async fn versions_from_a_newer_skiplock_are_reported_not_touched() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    sqlx::query("INSERT INTO skiplock.migrations (version, name) VALUES (9999, 'future')")
        .execute(pool)
        .await
        .expect("insert");
    let report = skiplock::migrate(pool).await.expect("migrate");
    assert_eq!(report.unknown, vec![9999]);
}

#[tokio::test]
async fn only_running_jobs_hold_a_lease() {
    let db = skiplock_testing::TestDatabase::new()
        .await
        .expect("database");
    let id: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('k', '{}')")
        .fetch_one(db.pool())
        .await
        .expect("enqueue");
    // A token without a running state, a running state without an expiry, a finished job
    // keeping its token: each would let a stale fence match, and each is refused.
    for update in [
        "UPDATE skiplock.jobs SET lease_token = 1 WHERE id = $1",
        "UPDATE skiplock.jobs SET state = 'running', lease_token = 1 WHERE id = $1",
        "UPDATE skiplock.jobs SET state = 'completed', finished_at = now(), lease_token = 1 \
         WHERE id = $1",
    ] {
        let refused = sqlx::query(update).bind(id).execute(db.pool()).await;
        assert!(refused.is_err(), "{update} was accepted");
    }
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'running', lease_token = 1,
                lease_expires_at = now() + interval '30 seconds' WHERE id = $1",
    )
    .bind(id)
    .execute(db.pool())
    .await
    .expect("a running job with a lease is fine");
}
