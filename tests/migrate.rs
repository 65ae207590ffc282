//! The schema: idempotent, concurrent migration in its own schema; the printed SQL.

mod common;

use std::time::{Duration, Instant};

use skiplock::MigrationKind;
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

/// The settings 0001 gives the job table, each with its measured reason in a comment there: a
/// change to one has to change its reason too (docs/performance.md has the runs).
#[tokio::test]
async fn the_job_table_carries_its_storage_settings() {
    let db = TestDatabase::new().await.expect("database");
    let mut settings: Vec<String> = sqlx::query_scalar(
        "SELECT unnest(reloptions) FROM pg_class WHERE oid = 'skiplock.jobs'::regclass",
    )
    .fetch_all(db.pool())
    .await
    .expect("reloptions");
    settings.sort();
    assert_eq!(
        settings,
        [
            "autovacuum_analyze_scale_factor=0.02",
            "autovacuum_vacuum_cost_delay=0",
            "autovacuum_vacuum_scale_factor=0.02",
        ]
    );
}

#[tokio::test]
async fn concurrent_migrations_on_a_fresh_database_apply_once() {
    let db = TestDatabase::new().await.expect("database");
    common::schema_at(db.pool(), 0).await;
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
    common::schema_at(pool, 0).await;
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

/// The first migration that builds an index concurrently: its version and index name.
fn first_concurrent_index() -> (i32, &'static str) {
    skiplock::MIGRATIONS
        .iter()
        .find_map(|m| match m.kind {
            MigrationKind::ConcurrentIndex { name } => Some((m.version, name)),
            _ => None,
        })
        .expect("a concurrent-index migration")
}

async fn index_valid(pool: &sqlx::PgPool, name: &str) -> Option<bool> {
    sqlx::query_scalar(
        "SELECT i.indisvalid FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE c.relname = $1",
    )
    .bind(name)
    .fetch_optional(pool)
    .await
    .expect("index")
}

#[tokio::test]
async fn an_interrupted_index_build_is_dropped_and_built_again() {
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool();
    let (version, name) = first_concurrent_index();
    common::schema_at(pool, version - 1).await;
    // What a CREATE INDEX CONCURRENTLY interrupted midway leaves: an invalid index of that name
    // (here from a unique build that fails on duplicates).
    sqlx::raw_sql("INSERT INTO skiplock.jobs (kind) VALUES ('k'), ('k')")
        .execute(pool)
        .await
        .expect("jobs");
    let failed = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE UNIQUE INDEX CONCURRENTLY {name} ON skiplock.jobs (kind)"
    )))
    .execute(pool)
    .await;
    assert!(failed.is_err());
    assert_eq!(index_valid(pool, name).await, Some(false));

    let report = skiplock::migrate(pool).await.expect("migrate");
    assert!(report.applied.contains(&version), "{report:?}");
    assert_eq!(index_valid(pool, name).await, Some(true));
    let unique: bool = sqlx::query_scalar(
        "SELECT i.indisunique FROM pg_index AS i JOIN pg_class AS c ON c.oid = i.indexrelid
         WHERE c.relname = $1",
    )
    .bind(name)
    .fetch_one(pool)
    .await
    .expect("index");
    assert!(!unique, "the migration's own index replaced the broken one");
}

/// A migration that cannot get its table lock gives up after `LOCK_TIMEOUT` and tries again
/// later, so the application's writes never queue behind it for longer than that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_waiting_for_a_lock_does_not_hold_up_writes() {
    // 0010 drops an index of skiplock.jobs: it needs the table's ACCESS EXCLUSIVE lock.
    const BEFORE: i32 = 9;
    const LOCKING: i32 = 10;
    let db = TestDatabase::new().await.expect("database");
    let pool = db.pool().clone();
    common::schema_at(&pool, BEFORE).await;

    // A long transaction (a report, say) holds a lock the migration's ALTER must wait for.
    let mut holder = pool.begin().await.expect("begin");
    sqlx::raw_sql("LOCK TABLE skiplock.jobs IN ACCESS SHARE MODE")
        .execute(&mut *holder)
        .await
        .expect("lock");
    let migration = tokio::spawn({
        let pool = pool.clone();
        async move { skiplock::migrate(&pool).await }
    });
    let mut slowest = Duration::ZERO;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3) {
        let insert = Instant::now();
        let enqueue = sqlx::query("SELECT skiplock.enqueue('k', '{}')").execute(&pool);
        // Queued behind a migration that waits for ever, it would never return.
        if let Ok(done) = tokio::time::timeout(Duration::from_secs(5), enqueue).await {
            done.expect("enqueue");
        }
        slowest = slowest.max(insert.elapsed());
        if slowest >= Duration::from_secs(5) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !migration.is_finished(),
        "the migration waited for the lock"
    );
    holder.commit().await.expect("release");
    let report = migration.await.expect("task").expect("migrate");
    assert!(report.applied.contains(&LOCKING), "{report:?}");
    assert!(
        slowest < skiplock::LOCK_TIMEOUT * 3,
        "an enqueue waited {slowest:?} behind the migration"
    );
}
