//! Least privilege: the documented access levels (docs/security.md) are enough for their job and
//! no more, and `migrate` neither needs privileges it does not use nor adopts a schema another
//! role owns. Roles are cluster-wide: each test names its own after its database and drops them.

mod common;

use std::time::Duration;

use common::Record;
use serde_json::json;
use skiplock::{EnqueueOptions, JobState, MigrateError, NewJob, Retention, Unique, Worker};
use skiplock_testing::TestDatabase;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const ENQUEUE_SIGNATURE: &str = "skiplock.enqueue(text, jsonb, text, timestamptz, integer, \
    integer, text[], text, boolean, skiplock.job_state[], double precision, text)";

const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// A LOGIN role of this test, and a pool connected as it.
struct Role {
    name: String,
    pool: PgPool,
}

impl Role {
    /// Creates `<database>_<suffix>` and, unless `access` is `None`, grants it that access level
    /// with `skiplock.grant_access`.
    async fn new(db: &TestDatabase, suffix: &str, access: Option<&str>) -> Self {
        let name = format!("{}_{suffix}", db.name());
        exec(db.pool(), &format!("CREATE ROLE {name} LOGIN")).await;
        if let Some(access) = access {
            sqlx::query("SELECT skiplock.grant_access($1::regrole, $2)")
                .bind(&name)
                .bind(access)
                .execute(db.pool())
                .await
                .expect("grant access");
        }
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .connect_with(db.connect_options().clone().username(&name))
            .await
            .expect("connect as the role");
        Self { name, pool }
    }

    /// Closes the role's connections, revokes what it was granted and drops it.
    async fn remove(self, db: &TestDatabase) {
        self.pool.close().await;
        exec(db.pool(), &format!("DROP OWNED BY {}", self.name)).await;
        exec(db.pool(), &format!("DROP ROLE {}", self.name)).await;
    }
}

async fn exec(pool: &PgPool, sql: &str) {
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

/// The SQLSTATE `sql` fails with on `pool`.
async fn refused(pool: &PgPool, sql: &str) -> String {
    match sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(pool)
        .await
    {
        Ok(_) => panic!("{sql}: allowed"),
        Err(e) => e
            .as_database_error()
            .and_then(|db| db.code())
            .map(|code| code.into_owned())
            .unwrap_or_else(|| panic!("{sql}: {e}")),
    }
}

const DENIED: &str = "42501";
const CHECK: &str = "23514";

#[tokio::test]
async fn an_enqueuer_enqueues_cancels_and_retries_but_cannot_write_the_table() {
    let db = common::database().await;
    let enqueuer = Role::new(&db, "enqueuer", Some("enqueuer")).await;
    let pool = &enqueuer.pool;

    // Every enqueue path of the crate: a plain insert, a batch, a unique job.
    let id = skiplock::enqueue_new(
        pool,
        &NewJob::untyped("k", json!({"n": 1}), EnqueueOptions::new()),
    )
    .await
    .expect("enqueue");
    let ids = skiplock::enqueue_many(
        pool,
        (0..3).map(|n| NewJob::untyped("k", json!({ "n": n }), EnqueueOptions::new())),
    )
    .await
    .expect("enqueue_many");
    assert_eq!(ids.len(), 3);
    let options = || EnqueueOptions::new().unique(Unique::key("once"));
    let unique = skiplock::enqueue_new(pool, &NewJob::untyped("k", json!({}), options()))
        .await
        .expect("unique enqueue");
    let again = skiplock::enqueue_new(pool, &NewJob::untyped("k", json!({}), options()))
        .await
        .expect("unique enqueue again");
    assert_eq!(unique, again);
    // With trace context, from Rust and from SQL.
    let traced = EnqueueOptions::new().traceparent(TRACEPARENT.parse().expect("traceparent"));
    skiplock::enqueue_new(pool, &NewJob::untyped("k", json!({}), traced))
        .await
        .expect("enqueue with a traceparent");
    exec(
        pool,
        &format!("SELECT skiplock.enqueue('k', '{{}}', traceparent => '{TRACEPARENT}')"),
    )
    .await;
    // Cancel and retry, from Rust and from SQL.
    assert_eq!(
        skiplock::cancel(pool, id).await.expect("cancel"),
        Some(JobState::Cancelled)
    );
    assert!(skiplock::retry(pool, id).await.expect("retry"));
    exec(
        pool,
        &format!(
            "SELECT skiplock.enqueue('k', '{{}}'), skiplock.cancel({id}), skiplock.retry({id})"
        ),
    )
    .await;

    // No planted rows: a running job with a long lease, a finished one holding a unique key.
    let lease = "INSERT INTO skiplock.jobs (kind, state, lease_token, lease_expires_at)
                 VALUES ('k', 'running', 1, now() + interval '100 years')";
    assert_eq!(refused(pool, lease).await, DENIED);
    assert_eq!(
        refused(
            pool,
            "INSERT INTO skiplock.jobs (kind, state) VALUES ('k', 'running')"
        )
        .await,
        CHECK
    );
    assert_eq!(
        refused(
            pool,
            "INSERT INTO skiplock.jobs (kind, state) VALUES ('k', 'completed')"
        )
        .await,
        CHECK
    );
    let held = "INSERT INTO skiplock.jobs (kind, state, unique_key, unique_states)
                VALUES ('k', 'completed', 'once', '{completed}')";
    assert_eq!(refused(pool, held).await, DENIED);
    for sql in [
        "INSERT INTO skiplock.jobs (kind, created_at) VALUES ('k', '2000-01-01')",
        "INSERT INTO skiplock.jobs (kind, attempt) VALUES ('k', 1)",
        "UPDATE skiplock.jobs SET priority = -100",
        "DELETE FROM skiplock.jobs",
        "SELECT args FROM skiplock.jobs",
        "INSERT INTO skiplock.workers (id, host, pid, queues) VALUES ('w', 'h', 1, '{}')",
        "SELECT skiplock.set_limits(args_bytes => 1000000000)",
    ] {
        assert_eq!(refused(pool, sql).await, DENIED, "{sql}");
    }
    enqueuer.remove(&db).await;
}

/// 0013 replaced `skiplock.enqueue` (a new argument makes a new function) and added the
/// `metadata` column: roles granted access before it keep what they had, and may use both.
#[tokio::test]
async fn roles_granted_before_0013_keep_their_access_to_enqueue() {
    let db = common::database().await;
    common::schema_at(db.pool(), 11).await;
    let enqueuer = Role::new(&db, "early_enqueuer", Some("enqueuer")).await;
    let app = Role::new(&db, "early_app", None).await;
    exec(
        db.pool(),
        &format!(
            "GRANT USAGE ON SCHEMA skiplock TO {0};
             GRANT EXECUTE ON FUNCTION skiplock.enqueue(text, jsonb, text, timestamptz, integer,
                 integer, text[], text, boolean, skiplock.job_state[], double precision)
                 TO {0} WITH GRANT OPTION",
            app.name
        ),
    )
    .await;
    let report = skiplock::migrate(db.pool()).await.expect("migrate");
    assert!(report.applied.contains(&13), "{report:?}");

    let traced = || EnqueueOptions::new().traceparent(TRACEPARENT.parse().expect("traceparent"));
    skiplock::enqueue_new(&enqueuer.pool, &NewJob::untyped("k", json!({}), traced()))
        .await
        .expect("the enqueuer's Rust enqueue, metadata included");
    let sql = format!("SELECT skiplock.enqueue('k', '{{}}', traceparent => '{TRACEPARENT}')");
    exec(&enqueuer.pool, &sql).await;
    exec(&app.pool, &sql).await;
    let grantable: bool = sqlx::query_scalar(
        "SELECT has_function_privilege($1, $2::regprocedure, 'EXECUTE WITH GRANT OPTION')",
    )
    .bind(&app.name)
    .bind(ENQUEUE_SIGNATURE)
    .fetch_one(db.pool())
    .await
    .expect("privilege");
    assert!(grantable, "the grant option is kept");
    let old: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_proc WHERE proname = 'enqueue'
           AND pronamespace = 'skiplock'::regnamespace",
    )
    .fetch_one(db.pool())
    .await
    .expect("functions");
    assert_eq!(old, 1, "one skiplock.enqueue, the new one");
    enqueuer.remove(&db).await;
    app.remove(&db).await;
}

#[tokio::test]
async fn execute_on_the_functions_alone_is_enough_to_enqueue_cancel_and_retry() {
    let db = common::database().await;
    let app = Role::new(&db, "app", None).await;
    exec(
        db.pool(),
        &format!(
            "GRANT USAGE ON SCHEMA skiplock TO {0};
             GRANT EXECUTE ON FUNCTION {ENQUEUE_SIGNATURE}, skiplock.cancel(bigint),
                 skiplock.retry(bigint) TO {0}",
            app.name
        ),
    )
    .await;
    let pool = &app.pool;
    let id: i64 = sqlx::query_scalar("SELECT skiplock.enqueue('k', '{}', unique_by_args => true)")
        .fetch_one(pool)
        .await
        .expect("enqueue");
    let state: Option<String> = sqlx::query_scalar("SELECT skiplock.cancel($1)::text")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("cancel");
    assert_eq!(state.as_deref(), Some("cancelled"));
    let retried: bool = sqlx::query_scalar("SELECT skiplock.retry($1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("retry");
    assert!(retried);
    assert_eq!(
        refused(pool, "INSERT INTO skiplock.jobs (kind) VALUES ('k')").await,
        DENIED
    );
    assert_eq!(refused(pool, "SELECT * FROM skiplock.jobs").await, DENIED);
    app.remove(&db).await;
}

#[tokio::test]
async fn nobody_else_may_execute_the_functions_and_definers_pin_their_search_path() {
    let db = common::database().await;
    let bare = Role::new(&db, "bare", None).await;
    exec(
        db.pool(),
        &format!("GRANT USAGE ON SCHEMA skiplock TO {}", bare.name),
    )
    .await;
    assert_eq!(
        refused(&bare.pool, "SELECT skiplock.cancel(1)").await,
        DENIED
    );
    assert_eq!(
        refused(&bare.pool, "SELECT skiplock.wake('{q}')").await,
        DENIED
    );
    bare.remove(&db).await;

    // Every function of the schema, including later migrations' (docs/security.md):
    let public: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'skiplock'::regnamespace
           AND has_function_privilege('public', p.oid, 'EXECUTE')
         ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .expect("public functions");
    assert_eq!(
        public,
        [
            "skiplock.initial_state(timestamp with time zone)",
            "skiplock.metadata_valid(jsonb)",
            "skiplock.tags_fit(text[],integer)"
        ],
        "executable by PUBLIC"
    );
    let unpinned: Vec<String> = sqlx::query_scalar(
        "SELECT p.oid::regprocedure::text FROM pg_proc p
         WHERE p.pronamespace = 'skiplock'::regnamespace AND p.prosecdef
           AND NOT coalesce('search_path=pg_catalog, pg_temp' = ANY (p.proconfig), false)
         ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .expect("definers");
    assert!(
        unpinned.is_empty(),
        "SECURITY DEFINER without a pinned search_path: {unpinned:?}"
    );
    let definers: Vec<String> = sqlx::query_scalar(
        "SELECT p.proname::text FROM pg_proc p
         WHERE p.pronamespace = 'skiplock'::regnamespace AND p.prosecdef ORDER BY 1",
    )
    .fetch_all(db.pool())
    .await
    .expect("definers");
    // Each lets an enqueuer do one thing without rights on the tables behind it.
    assert_eq!(
        definers,
        [
            "cancel",
            "cancel_workflow",
            "enqueue",
            "enqueue_workflow",
            "retry",
            "retry_workflow"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_role_runs_a_worker_that_drains_its_jobs() {
    let db = common::database().await;
    let admin = db.pool();
    let worker_role = Role::new(&db, "worker", Some("worker")).await;
    let mut jobs: Vec<NewJob> = (0..20)
        .map(|n| NewJob::new(&Record { n }).expect("serialize"))
        .collect();
    // One the promoter must make runnable.
    jobs.push(
        NewJob::with_options(
            &Record { n: 99 },
            EnqueueOptions::new().delay(Duration::from_millis(300)),
        )
        .expect("serialize"),
    );
    skiplock::enqueue_many(admin, jobs).await.expect("enqueue");

    // The ledger is the application's table: handlers write it through their own state.
    let worker = Worker::builder(worker_role.pool.clone(), admin.clone())
        .id("least-privilege")
        .poll_interval(Duration::from_millis(200))
        .promote_interval(Duration::from_millis(100))
        .rescue_interval(Duration::from_millis(500))
        .prune_interval(Duration::from_millis(200))
        .retention(Retention {
            completed: Some(Duration::ZERO),
            ..Retention::default()
        })
        .shutdown_timeout(Duration::from_secs(5))
        .queue("default", 4)
        .register::<Record>()
        .build()
        .expect("worker")
        .start();
    // Every job ran once, and the pruner deleted each once it completed.
    common::eventually(Duration::from_secs(30), "the queue to drain", || async {
        let (ran, left): (i64, i64) = sqlx::query_as(
            "SELECT (SELECT count(*) FROM ledger), (SELECT count(*) FROM skiplock.jobs)",
        )
        .fetch_one(admin)
        .await
        .expect("counts");
        (ran == 21 && left == 0).then_some(())
    })
    .await;
    let registered: i64 =
        sqlx::query_scalar("SELECT count(*) FROM skiplock.workers WHERE id = 'least-privilege'")
            .fetch_one(admin)
            .await
            .expect("workers");
    assert_eq!(registered, 1, "the heartbeat registers the worker");
    worker.shutdown().await.expect("a clean shutdown");

    // The owner's functions run with the caller's rights: a worker cannot use them.
    let pool = &worker_role.pool;
    assert_eq!(
        refused(pool, "SELECT skiplock.set_limits(args_bytes => 2000000000)").await,
        DENIED
    );
    let escalate = format!(
        "SELECT skiplock.grant_access('{}', 'worker')",
        worker_role.name
    );
    assert_eq!(refused(pool, &escalate).await, DENIED);
    worker_role.remove(&db).await;
}

#[tokio::test]
async fn an_observer_reads_everything_and_writes_nothing() {
    let db = common::database().await;
    let id = skiplock::enqueue_new(
        db.pool(),
        &NewJob::untyped("k", json!({}), EnqueueOptions::new()),
    )
    .await
    .expect("enqueue");
    let observer = Role::new(&db, "observer", Some("observer")).await;
    let pool = &observer.pool;
    let job = skiplock::get_job(pool, id).await.expect("read a job");
    assert_eq!(job.map(|j| j.id), Some(id));
    for table in ["jobs", "workers", "schedules", "migrations"] {
        exec(pool, &format!("SELECT * FROM skiplock.{table}")).await;
    }
    for sql in [
        "INSERT INTO skiplock.jobs (kind) VALUES ('k')",
        "UPDATE skiplock.jobs SET priority = 1",
        "DELETE FROM skiplock.jobs",
        "SELECT skiplock.enqueue('k', '{}')",
        "SELECT skiplock.cancel(1)",
    ] {
        assert_eq!(refused(pool, sql).await, DENIED, "{sql}");
    }
    observer.remove(&db).await;
}

#[tokio::test]
async fn migrate_is_a_no_op_without_create_on_the_database_when_current() {
    let db = TestDatabase::new().await.expect("database");
    exec(db.pool(), "DROP SCHEMA skiplock CASCADE").await;
    let owner = Role::new(&db, "owner", None).await;
    let grant = format!("GRANT CREATE ON DATABASE {} TO {}", db.name(), owner.name);
    exec(db.pool(), &grant).await;
    let first = skiplock::migrate(&owner.pool)
        .await
        .expect("first migration");
    assert_eq!(first.applied.len(), skiplock::MIGRATIONS.len());

    exec(
        db.pool(),
        &format!(
            "REVOKE CREATE ON DATABASE {} FROM {}",
            db.name(),
            owner.name
        ),
    )
    .await;
    let again = skiplock::migrate(&owner.pool)
        .await
        .expect("migrate a current schema without CREATE on the database");
    assert!(again.applied.is_empty());
    owner.remove(&db).await;
}

#[tokio::test]
async fn migrate_refuses_a_schema_or_migrations_table_owned_by_another_role() {
    let db = TestDatabase::new().await.expect("database");
    let admin = db.pool();
    let other = Role::new(&db, "other", None).await;
    let user: String = sqlx::query_scalar("SELECT current_user::text")
        .fetch_one(admin)
        .await
        .expect("current user");

    // Somebody else created the schema first: nothing is created in it.
    exec(
        admin,
        &format!(
            "DROP SCHEMA skiplock CASCADE; CREATE SCHEMA skiplock AUTHORIZATION {}",
            other.name
        ),
    )
    .await;
    let error = skiplock::migrate(admin)
        .await
        .expect_err("a planted schema");
    match &error {
        MigrateError::ForeignOwner {
            object,
            owner,
            user: by,
        } => {
            assert_eq!(
                (*object, owner.as_str(), by.as_str()),
                ("schema skiplock", other.name.as_str(), user.as_str())
            );
        }
        other => panic!("expected ForeignOwner, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        !message.contains('\n') && message.contains(&other.name),
        "{message}"
    );
    let tables: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_class WHERE relnamespace = 'skiplock'::regnamespace",
    )
    .fetch_one(admin)
    .await
    .expect("tables");
    assert_eq!(tables, 0);

    // The schema is ours but the bookkeeping table is not.
    exec(admin, "DROP SCHEMA skiplock CASCADE").await;
    skiplock::migrate(admin).await.expect("fresh migration");
    exec(
        admin,
        &format!("ALTER TABLE skiplock.migrations OWNER TO {}", other.name),
    )
    .await;
    let error = skiplock::migrate(admin)
        .await
        .expect_err("a foreign migrations table");
    assert!(
        matches!(
            error,
            MigrateError::ForeignOwner {
                object: "table skiplock.migrations",
                ..
            }
        ),
        "{error:?}"
    );
    exec(
        admin,
        &format!("ALTER TABLE skiplock.migrations OWNER TO {user}"),
    )
    .await;

    // A role that does not own the schema does not migrate it, even when it is current.
    let error = skiplock::migrate(&other.pool)
        .await
        .expect_err("not the owner");
    assert!(
        matches!(
            error,
            MigrateError::ForeignOwner {
                object: "schema skiplock",
                ..
            }
        ),
        "{error:?}"
    );
    other.remove(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueuer_waits_on_its_jobs_but_cannot_read_their_args() {
    let db = common::database().await;
    // One enqueuer granted before 0017 (the migration extends its rights), one after.
    common::schema_at(db.pool(), 16).await;
    let early = Role::new(&db, "early_waiter", Some("enqueuer")).await;
    let early_observer = Role::new(&db, "early_watcher", Some("observer")).await;
    skiplock::migrate(db.pool()).await.expect("migrate");
    let late = Role::new(&db, "late_waiter", Some("enqueuer")).await;
    let running = common::start(
        common::worker(db.pool())
            .queue("default", 2)
            .register::<Record>(),
    );
    for (n, role) in [&early, &late, &early_observer].into_iter().enumerate() {
        let id = skiplock::enqueue(db.pool(), &Record { n: n as i64 })
            .await
            .expect("enqueue");
        let results = skiplock::results::Results::new(role.pool.clone());
        let outcome = results
            .wait::<i64>(id, Duration::from_secs(10))
            .await
            .unwrap_or_else(|error| panic!("{} waits: {error:?}", role.name));
        assert_eq!(outcome, skiplock::results::Outcome::Completed(n as i64 * 2));
    }
    running.shutdown().await.expect("shutdown");
    for role in [&early, &late] {
        assert_eq!(
            refused(&role.pool, "SELECT args FROM skiplock.jobs").await,
            DENIED,
            "{} reads args",
            role.name
        );
    }
    early.remove(&db).await;
    late.remove(&db).await;
    early_observer.remove(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enqueuer_enqueues_and_cancels_workflows_a_worker_role_runs_them() {
    use skiplock::workflow::{self, Step, Workflow, chord};
    let db = common::database().await;
    let enqueuer = Role::new(&db, "wf_enqueuer", Some("enqueuer")).await;
    let worker_role = Role::new(&db, "wf_worker", Some("worker")).await;
    let step = |n| Step::job(&Record { n }).expect("step");

    let flow = || chord((0..3).map(step), step(10));
    let run = Workflow::new("runs", flow())
        .enqueue(&enqueuer.pool)
        .await
        .expect("an enqueuer enqueues a workflow");
    let cancelled = Workflow::new("cancelled", flow())
        .enqueue(&enqueuer.pool)
        .await
        .expect("enqueue");
    let done = workflow::cancel(&enqueuer.pool, cancelled.id)
        .await
        .expect("an enqueuer cancels a workflow")
        .expect("found");
    assert_eq!(done.cancelled, 4);
    // The settings that steer the workflow triggers are the session's, so anyone can set them:
    // the SECURITY DEFINER functions reset them. An enqueuer asking the trigger to skip its
    // bookkeeping still cancels the callback with the member it cancels.
    let smuggled = Workflow::new("smuggled", flow())
        .enqueue(&enqueuer.pool)
        .await
        .expect("enqueue");
    let mut tx = enqueuer.pool.begin().await.expect("begin");
    sqlx::query("SELECT set_config('skiplock.workflow_settling', 'on', true), set_config('skiplock.workflow_changed', '1,2,x,', true)")
        .execute(&mut *tx)
        .await
        .expect("set");
    sqlx::query("SELECT skiplock.cancel($1)")
        .bind(smuggled.jobs[0])
        .execute(&mut *tx)
        .await
        .expect("an enqueuer cancels a member");
    tx.commit().await.expect("commit");
    let callback: String =
        sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = $1")
            .bind(smuggled.jobs[3])
            .fetch_one(db.pool())
            .await
            .expect("state");
    assert_eq!(callback, "cancelled");
    // The tables behind them are written only through the functions.
    for sql in [
        "INSERT INTO skiplock.workflows (name, jobs, unfinished) VALUES ('x', 1, 1)",
        "UPDATE skiplock.pending_jobs SET waiting_for = 0",
        "DELETE FROM skiplock.job_dependencies",
        "SELECT skiplock.settle_jobs('{1}')",
        "SELECT skiplock.settle_pending('{1}', '{1}')",
        "SELECT skiplock.end_downstream('{1}', 'failed', 1)",
        "SELECT skiplock.reconcile_workflows('{1}')",
        "SELECT skiplock.repair_workflows()",
        "UPDATE skiplock.jobs SET workflow_id = 1",
    ] {
        assert_eq!(refused(&enqueuer.pool, sql).await, DENIED, "{sql}");
    }

    // A worker connected as the worker role runs the chord: the trigger that releases the
    // callback works with its rights.
    let worker = Worker::builder(worker_role.pool.clone(), db.pool().clone())
        .poll_interval(Duration::from_millis(200))
        .shutdown_timeout(Duration::from_secs(5))
        .queue("default", 4)
        .register::<Record>()
        .build()
        .expect("worker")
        .start();
    common::eventually(
        Duration::from_secs(30),
        "the workflow to finish",
        || async {
            let open: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM skiplock.jobs WHERE id = ANY($1) AND finished_at IS NULL",
            )
            .bind(&run.jobs)
            .fetch_one(db.pool())
            .await
            .expect("count");
            (open == 0).then_some(())
        },
    )
    .await;
    worker.shutdown().await.expect("shutdown");
    let states: Vec<String> =
        sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = ANY($1) ORDER BY id")
            .bind(&run.jobs)
            .fetch_all(db.pool())
            .await
            .expect("states");
    assert_eq!(states, vec!["completed"; 4]);
    enqueuer.remove(&db).await;
    worker_role.remove(&db).await;
}

/// Limits (0020): a worker role (operators' level, as for pausing a queue) sets, lists and clears
/// them and claims under them from SQL; an observer reads them but cannot change them; an
/// enqueuer can do neither.
#[tokio::test]
async fn a_worker_role_sets_limits_an_observer_reads_them_an_enqueuer_neither() {
    let db = common::database().await;
    let worker = Role::new(&db, "limiter", Some("worker")).await;
    let observer = Role::new(&db, "limit_watcher", Some("observer")).await;
    let enqueuer = Role::new(&db, "limit_enqueuer", Some("enqueuer")).await;
    skiplock::limits::set(
        &worker.pool,
        &skiplock::limits::Limit::queue("q").max_running(1),
    )
    .await
    .expect("a worker role sets a limit");
    exec(
        &worker.pool,
        "SELECT skiplock.set_limit(kind => 'k', max_starts => 5, period_secs => 60)",
    )
    .await;
    exec(
        &worker.pool,
        "SELECT * FROM skiplock.claim('w', '{q}', '{k}', 5)",
    )
    .await;
    let listed = skiplock::limits::list(&observer.pool)
        .await
        .expect("an observer lists limits");
    assert_eq!(listed.len(), 2);
    for sql in [
        "SELECT skiplock.set_limit(queue => 'q', max_running => 9)",
        "SELECT skiplock.clear_limit(queue => 'q')",
        "SELECT * FROM skiplock.claim_throttled('q', '{k}', 1, 'w', 30)",
        "DELETE FROM skiplock.throttles",
        "UPDATE skiplock.throttle_buckets SET tokens = 1000",
    ] {
        assert_eq!(
            refused(&observer.pool, sql).await,
            DENIED,
            "observer: {sql}"
        );
        assert_eq!(
            refused(&enqueuer.pool, sql).await,
            DENIED,
            "enqueuer: {sql}"
        );
    }
    assert_eq!(
        refused(&enqueuer.pool, "SELECT * FROM skiplock.throttles").await,
        DENIED
    );
    exec(&worker.pool, "SELECT skiplock.clear_limit(queue => 'q')").await;
    worker.remove(&db).await;
    observer.remove(&db).await;
    enqueuer.remove(&db).await;
}
