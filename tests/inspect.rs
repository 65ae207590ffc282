//! `skiplock::inspect` against a real database: lists and pages, counts, one job, queues,
//! workers, schedules, bulk actions, every explain reason and every health check.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Fail, Record, database, eventually, start, worker};
use serde_json::json;
use skiplock::JobState;
use skiplock::inspect::{
    self, Count, HealthOptions, InspectError, JobFilter, JobOrder, JobQuery, Reason, Severity,
    WorkerStatus,
};
use sqlx::PgPool;

/// Inserts one job row with SQL, as any client could; returns its id.
async fn insert(pool: &PgPool, columns: &str, values: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "INSERT INTO skiplock.jobs ({columns}) VALUES ({values}) RETURNING id"
    )))
    .fetch_one(pool)
    .await
    .expect("insert")
}

/// An available job of `kind` in `queue`.
async fn available(pool: &PgPool, queue: &str, kind: &str) -> i64 {
    insert(
        pool,
        "queue, kind, state",
        &format!("'{queue}', '{kind}', 'available'"),
    )
    .await
}

/// A live worker's row, as its heartbeat writes it.
async fn live_worker(pool: &PgPool, id: &str, queues: &str, concurrency: &str, kinds: &str) {
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO skiplock.workers (id, host, pid, queues, concurrency, kinds, version, alive_until)
         VALUES ('{id}', 'h', 1, '{queues}', '{concurrency}', '{kinds}', 'test', now() + interval '1 hour')"
    )))
    .execute(pool)
    .await
    .expect("worker row");
}

async fn ids(pool: &PgPool, query: &JobQuery) -> Vec<i64> {
    let page = inspect::jobs(pool, query).await.expect("jobs");
    page.jobs.iter().map(|job| job.id).collect()
}

/// Every id a query lists, following `next` page after page.
async fn all_pages(pool: &PgPool, mut query: JobQuery) -> (Vec<i64>, usize) {
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = inspect::jobs(pool, &query).await.expect("jobs");
        pages += 1;
        seen.extend(page.jobs.iter().map(|job| job.id));
        match page.next {
            Some(next) => query = query.after(next),
            None => return (seen, pages),
        }
        assert!(pages < 1_000, "paging does not end");
    }
}

#[tokio::test]
async fn lists_filter_and_page_through_every_job() {
    let db = database().await;
    let pool = db.pool();
    let mut expected = Vec::new();
    for n in 0..30_i64 {
        let (queue, kind) = if n % 3 == 0 {
            ("mail", "send")
        } else {
            ("default", "report")
        };
        let state = match n % 5 {
            0 => "'failed', now()",
            1 => "'completed', now()",
            2 => "'scheduled', NULL",
            _ => "'available', NULL",
        };
        let run_at = if n % 5 == 2 {
            "now() + interval '1 hour'"
        } else {
            "now()"
        };
        expected.push(
            insert(
                pool,
                "queue, kind, args, tags, state, finished_at, run_at, schedule",
                &format!(
                    "'{queue}', '{kind}', '{{\"n\": {n}, \"user\": {{\"id\": {}}}}}', \
                     ARRAY['t{}'], {state}, {run_at}, {}",
                    n % 4,
                    n % 2,
                    if n == 7 { "'nightly'" } else { "NULL" }
                ),
            )
            .await,
        );
    }

    // Newest first by default; every page follows on from the last, nothing twice.
    let (listed, pages) = all_pages(pool, JobQuery::new(JobFilter::new()).limit(7)).await;
    let mut newest_first = expected.clone();
    newest_first.reverse();
    assert_eq!(listed, newest_first);
    assert_eq!(pages, 5);
    let (oldest, _) = all_pages(
        pool,
        JobQuery::new(JobFilter::new())
            .order(JobOrder::OldestFirst)
            .limit(4),
    )
    .await;
    assert_eq!(oldest, expected);

    // Index-answered filters.
    let failed = ids(
        pool,
        &JobQuery::new(JobFilter::new().state(JobState::Failed)),
    )
    .await;
    assert_eq!(failed.len(), 6);
    let mail_available = JobFilter::new()
        .state(JobState::Available)
        .queue("mail")
        .kind("send");
    let got = ids(pool, &JobQuery::new(mail_available)).await;
    let want: Vec<i64> = (0..30_usize)
        .rev()
        .filter(|n| n % 3 == 0 && n % 5 >= 3)
        .map(|n| expected[n])
        .collect();
    assert_eq!(got, want);
    let two_states = JobFilter::new()
        .state(JobState::Scheduled)
        .state(JobState::Completed);
    assert_eq!(ids(pool, &JobQuery::new(two_states)).await.len(), 12);

    // Row-tested filters: tags, arguments (containment), schedule, ids, times.
    let tagged = ids(pool, &JobQuery::new(JobFilter::new().tag("t1"))).await;
    assert_eq!(tagged.len(), 15);
    let by_args = JobFilter::new().args(json!({"user": {"id": 3}}));
    let got: BTreeSet<i64> = ids(pool, &JobQuery::new(by_args))
        .await
        .into_iter()
        .collect();
    let want: BTreeSet<i64> = (0..30)
        .filter(|n| n % 4 == 3)
        .map(|n| expected[n])
        .collect();
    assert_eq!(got, want);
    let nightly = ids(pool, &JobQuery::new(JobFilter::new().schedule("nightly"))).await;
    assert_eq!(nightly, vec![expected[7]]);
    let range = JobFilter::new().ids(expected[3], expected[5]);
    assert_eq!(
        ids(pool, &JobQuery::new(range)).await,
        vec![expected[5], expected[4], expected[3]]
    );
    let due_later = JobFilter::new().run_at(Some(chrono::Utc::now()), None);
    assert_eq!(ids(pool, &JobQuery::new(due_later)).await.len(), 6);

    // A summary carries what a table row shows.
    let page = inspect::jobs(pool, &JobQuery::new(JobFilter::new()).limit(1))
        .await
        .expect("jobs");
    let job = &page.jobs[0];
    assert_eq!(
        (job.queue.as_str(), job.kind.as_str()),
        ("default", "report")
    );
    assert_eq!(job.tags, vec!["t1".to_owned()]);
    assert!(
        job.args_preview.starts_with("{\"n\": 29"),
        "{}",
        job.args_preview
    );

    let zero = inspect::jobs(pool, &JobQuery::new(JobFilter::new()).limit(0)).await;
    assert!(matches!(zero, Err(InspectError::Invalid(_))), "{zero:?}");
    let huge = inspect::jobs(pool, &JobQuery::new(JobFilter::new()).limit(1_001)).await;
    assert!(matches!(huge, Err(InspectError::Invalid(_))), "{huge:?}");
}

#[tokio::test]
async fn a_rare_argument_is_found_window_by_window() {
    let db = database().await;
    let pool = db.pool();
    // Three needles in 2.5 scan windows of hay, the first and the last at the table's ends.
    let hay = inspect::SCAN_WINDOW * 5 / 2;
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, args, state, finished_at)
         SELECT 'hay', jsonb_build_object('n', g,
                    'needle', g IN (1, $1::bigint / 2, $1::bigint)),
                'completed', now()
         FROM generate_series(1, $1::bigint) AS g",
    )
    .bind(hay)
    .execute(pool)
    .await
    .expect("hay");
    let needles = JobFilter::new().args(json!({"needle": true}));
    let first = inspect::jobs(pool, &JobQuery::new(needles.clone()).limit(10))
        .await
        .expect("jobs");
    assert_eq!(first.jobs.len(), 1, "one needle in the newest window");
    assert!(first.window_ended, "the page stopped at its window");
    let (found, pages) = all_pages(pool, JobQuery::new(needles.clone()).limit(10)).await;
    assert_eq!(found.len(), 3, "{found:?}");
    assert_eq!(pages, 3, "one page per window");
    let (oldest, _) = all_pages(
        pool,
        JobQuery::new(needles).order(JobOrder::OldestFirst).limit(2),
    )
    .await;
    let mut reversed = found.clone();
    reversed.reverse();
    assert_eq!(oldest, reversed);
}

#[tokio::test]
async fn counts_are_exact_when_small_and_estimates_when_large() {
    let db = database().await;
    let pool = db.pool();
    for _ in 0..7 {
        insert(
            pool,
            "kind, state, finished_at, tags",
            "'k', 'failed', now(), '{x}'",
        )
        .await;
    }
    let failed = JobFilter::new().state(JobState::Failed);
    assert_eq!(
        inspect::count_jobs(pool, &failed).await.expect("count"),
        Count::Exact(7)
    );
    let tagged = failed.clone().tag("x");
    assert_eq!(
        inspect::count_jobs(pool, &tagged).await.expect("count"),
        Count::Exact(7)
    );
    let bulk = inspect::COUNT_EXACT_UP_TO * 2;
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, state, finished_at)
         SELECT 'k', 'completed', now() FROM generate_series(1, $1::bigint)",
    )
    .bind(bulk)
    .execute(pool)
    .await
    .expect("completed jobs");
    sqlx::raw_sql("ANALYZE skiplock.jobs")
        .execute(pool)
        .await
        .expect("analyze");
    let completed = JobFilter::new().state(JobState::Completed);
    let count = inspect::count_jobs(pool, &completed).await.expect("count");
    assert!(matches!(count, Count::Estimate(_)), "{count:?}");
    let value = count.value() as i64;
    assert!(
        value >= inspect::COUNT_EXACT_UP_TO && value <= bulk * 2,
        "estimate {value} for {bulk} rows"
    );
    assert_eq!(count.to_string(), format!("~{value}"));
    // The failed ones are still counted exactly however many completed ones there are.
    assert_eq!(
        inspect::count_jobs(pool, &failed).await.expect("count"),
        Count::Exact(7)
    );
}

#[tokio::test]
async fn one_job_reads_whatever_another_client_wrote() {
    let db = database().await;
    let pool = db.pool();
    // Valid in PostgreSQL, odd for Rust: a number beyond f64, an infinite time, a NULL tag.
    let id = insert(
        pool,
        "kind, args, state, created_at, tags, errors, progress",
        "'odd', '{\"big\": 1e400}', 'available', 'infinity', ARRAY['a', NULL], \
         '[{\"attempt\": 1, \"kind\": \"oom_killed\", \"message\": \"killed\"}]', '{\"done\": 3}'",
    )
    .await;
    let job = inspect::job(pool, id).await.expect("job").expect("found");
    assert_eq!(job.created_at, None);
    assert_eq!(job.tags, vec!["a".to_owned()]);
    let text = job.args.as_str().expect("unreadable JSON stays text");
    assert!(text.starts_with("{\"big\": 1000"), "{text}");
    assert_eq!(job.progress, Some(json!({"done": 3})));
    assert_eq!(job.errors[0].kind.as_str(), "oom_killed");
    let page = inspect::jobs(pool, &JobQuery::new(JobFilter::new()))
        .await
        .expect("the list reads it too");
    assert_eq!(page.jobs[0].id, id);
    assert_eq!(
        page.jobs[0].last_error.as_ref().map(|e| e.message.as_str()),
        Some("killed")
    );
    assert!(inspect::job(pool, id + 1).await.expect("job").is_none());
}

#[tokio::test]
async fn queues_workers_and_their_figures() {
    let db = database().await;
    let pool = db.pool();
    for n in 0..4 {
        skiplock::enqueue(pool, &Record { n })
            .await
            .expect("enqueue");
    }
    skiplock::enqueue(
        pool,
        &Fail {
            mode: "permanent".into(),
        },
    )
    .await
    .expect("enqueue");
    // A queue nobody works, with a job waiting ten minutes.
    insert(
        pool,
        "queue, kind, state, run_at",
        "'orphans', 'k', 'available', now() - interval '10 minutes'",
    )
    .await;
    let running = start(
        worker(pool)
            .id("inspected")
            .queue("default", 3)
            .lease(Duration::from_secs(3))
            .register::<Record>()
            .register::<Fail>(),
    );
    common::wait_for_state(pool, "completed", 4, Duration::from_secs(10)).await;
    // Outcome counts reach skiplock.job_stats with the next heartbeat (a third of the lease).
    let queue = eventually(Duration::from_secs(10), "outcome counts", || async {
        let queues = inspect::queues(pool).await.expect("queues");
        queues
            .into_iter()
            .find(|q| q.name == "default" && q.completed_last_hour == 4 && q.failed_last_hour == 1)
    })
    .await;
    assert_eq!(queue.completed, Count::Exact(4));
    assert_eq!(queue.failed, Count::Exact(1));
    assert_eq!(queue.available, Count::Exact(0));
    assert_eq!((queue.workers, queue.concurrency), (1, 3));
    assert_eq!(queue.oldest_available_age, None);
    let queues = inspect::queues(pool).await.expect("queues");
    let orphans = queues
        .iter()
        .find(|q| q.name == "orphans")
        .expect("orphans");
    assert_eq!(orphans.available, Count::Exact(1));
    assert_eq!(orphans.workers, 0);
    let lag = orphans.oldest_available_age.expect("lag");
    assert!(lag >= Duration::from_secs(590), "{lag:?}");

    let workers = inspect::workers(pool).await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.id == "inspected")
        .expect("worker");
    assert_eq!(me.status, WorkerStatus::Alive);
    assert_eq!(me.queues.len(), 1);
    assert_eq!(
        (me.queues[0].name.as_str(), me.queues[0].concurrency),
        ("default", Some(3))
    );
    assert_eq!(me.version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    let mut kinds = me.kinds.clone().expect("kinds");
    kinds.sort();
    assert_eq!(kinds, vec!["fail".to_owned(), "record".to_owned()]);

    // A worker whose heartbeat is late is unresponsive (the rescuer, at twice the 3 s lease,
    // has not declared it lost yet), then lost once a rescuer sees it.
    sqlx::query(
        "INSERT INTO skiplock.workers (id, host, pid, queues, heartbeat_at, alive_until)
         VALUES ('silent', 'h', 2, '{default}', now() - interval '2 seconds', now() - interval '1 second')",
    )
    .execute(pool)
    .await
    .expect("silent worker");
    let silent = inspect::workers(pool).await.expect("workers");
    let status = silent.iter().find(|w| w.id == "silent").map(|w| w.status);
    assert_eq!(status, Some(WorkerStatus::Unresponsive));
    sqlx::query(
        "UPDATE skiplock.workers SET heartbeat_at = now() - interval '1 hour' WHERE id = 'silent'",
    )
    .execute(pool)
    .await
    .expect("older");
    eventually(
        Duration::from_secs(10),
        "the rescuer to mark it lost",
        || async {
            let workers = inspect::workers(pool).await.expect("workers");
            workers
                .iter()
                .any(|w| w.id == "silent" && w.status == WorkerStatus::Lost)
                .then_some(())
        },
    )
    .await;
    running.shutdown().await.expect("shutdown");
    let workers = inspect::workers(pool).await.expect("workers");
    let me = workers
        .iter()
        .find(|w| w.id == "inspected")
        .expect("kept an hour");
    assert_eq!(me.status, WorkerStatus::Stopped);
    assert!(me.stopped_at.is_some());
}

#[tokio::test]
async fn schedules_show_their_last_job_and_when_they_are_overdue() {
    let db = database().await;
    let pool = db.pool();
    let nightly =
        skiplock::Schedule::untyped("nightly", "0 3 * * *", "report", json!({})).expect("schedule");
    skiplock::schedule::add(pool, &nightly).await.expect("add");
    let hourly =
        skiplock::Schedule::untyped("hourly", "0 * * * *", "report", json!({})).expect("schedule");
    skiplock::schedule::add(pool, &hourly).await.expect("add");
    sqlx::query("UPDATE skiplock.schedules SET next_fire_at = now() - interval '10 minutes' WHERE name = 'nightly'")
        .execute(pool)
        .await
        .expect("overdue");
    let job = insert(
        pool,
        "kind, state, finished_at, schedule, run_at",
        "'report', 'completed', now(), 'nightly', now() - interval '1 day'",
    )
    .await;
    let schedules = inspect::schedules(pool).await.expect("schedules");
    let names: Vec<&str> = schedules.iter().map(|s| s.schedule.name.as_str()).collect();
    assert_eq!(names, vec!["hourly", "nightly"]);
    assert!(!schedules[0].overdue);
    assert!(schedules[0].last_job.is_none());
    assert!(schedules[1].overdue);
    let last = schedules[1].last_job.as_ref().expect("last job");
    assert_eq!((last.id, last.state), (job, JobState::Completed));
}

#[tokio::test]
async fn bulk_actions_change_what_the_filter_matches_and_nothing_else() {
    let db = database().await;
    let pool = db.pool();
    let mut waiting = Vec::new();
    for _ in 0..5 {
        waiting.push(available(pool, "mail", "send").await);
    }
    let other = available(pool, "default", "send").await;
    let running = insert(
        pool,
        "queue, kind, state, attempt, lease_token, lease_expires_at",
        "'mail', 'send', 'running', 1, nextval('skiplock.lease_token_seq'), now() + interval '1 minute'",
    )
    .await;
    let report = inspect::cancel_jobs(pool, &JobFilter::new().queue("mail"))
        .await
        .expect("cancel");
    assert_eq!(report.changed, 6, "five cancelled, one asked to stop");
    assert_eq!(common::count_state(pool, "cancelled").await, 5);
    let job = inspect::job(pool, running)
        .await
        .expect("job")
        .expect("found");
    assert!(job.cancel_requested_at.is_some());
    assert_eq!(common::job(pool, other).await.state, JobState::Available);

    let report = inspect::retry_jobs(pool, &JobFilter::new().state(JobState::Cancelled))
        .await
        .expect("retry");
    assert_eq!(report.changed, 5);
    assert_eq!(common::count_state(pool, "available").await, 6);

    // Delete: finished jobs only, whatever the filter says.
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'completed', finished_at = now() WHERE id = ANY($1)",
    )
    .bind(&waiting[..2])
    .execute(pool)
    .await
    .expect("complete two");
    let report = inspect::delete_jobs(pool, &JobFilter::new().queue("mail"))
        .await
        .expect("delete");
    assert_eq!(report.changed, 2);
    assert!(
        !inspect::delete_job(pool, other).await.expect("delete one"),
        "not finished"
    );
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM skiplock.jobs")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(left, 5);
    // Many batches: every match, each batch its own transaction.
    sqlx::query(
        "INSERT INTO skiplock.jobs (kind, state, finished_at)
         SELECT 'old', 'failed', now() FROM generate_series(1, 2500)",
    )
    .execute(pool)
    .await
    .expect("failed jobs");
    let report = inspect::delete_jobs(pool, &JobFilter::new().kind("old"))
        .await
        .expect("delete");
    assert_eq!(report.changed, 2500);
    assert!(report.batches >= 3, "{report:?}");
}

/// What a bulk action must not trip over: a finished job of a workflow (deleted, its result
/// was gone for the job after it, and a retry of the workflow cancelled what depended on it),
/// and a unique job whose key a duplicate holds (its retry failed the whole batch, every time).
#[tokio::test]
async fn bulk_actions_keep_workflow_jobs_and_pass_over_held_unique_keys() {
    let db = database().await;
    let pool = db.pool();
    // a -> b, a completed: b reads a's result.
    let (_, ids): (i64, Vec<i64>) = sqlx::query_as(
        r#"SELECT workflow_id, job_ids
           FROM skiplock.enqueue_workflow('wf', '[{"kind": "a"}, {"kind": "b", "depends_on": [0]}]')"#,
    )
    .fetch_one(pool)
    .await
    .expect("workflow");
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'completed', attempt = 1, finished_at = now(),
                result = '42' WHERE id = $1",
    )
    .bind(ids[0])
    .execute(pool)
    .await
    .expect("a completed");
    let report = inspect::delete_jobs(pool, &JobFilter::new().state(JobState::Completed))
        .await
        .expect("delete");
    assert_eq!(report.changed, 0);
    assert!(!inspect::delete_job(pool, ids[0]).await.expect("delete one"));
    assert_eq!(common::job(pool, ids[0]).await.state, JobState::Completed);

    // A failed unique job whose duplicate waits, and a failed job without a key.
    let key = "unique_key, unique_states, kind, state, attempt, finished_at";
    let failed_unique = insert(pool, key, "'u1', '{available}', 'u', 'failed', 1, now()").await;
    insert(
        pool,
        "unique_key, unique_states, kind",
        "'u1', '{available}', 'u'",
    )
    .await;
    let failed = insert(
        pool,
        "kind, state, attempt, finished_at",
        "'u', 'failed', 1, now()",
    )
    .await;
    let report = inspect::retry_jobs(pool, &JobFilter::new().state(JobState::Failed))
        .await
        .expect("retry");
    assert_eq!(report.changed, 1);
    assert_eq!(common::job(pool, failed).await.state, JobState::Available);
    assert_eq!(
        common::job(pool, failed_unique).await.state,
        JobState::Failed
    );
    assert!(
        !skiplock::retry(pool, failed_unique)
            .await
            .expect("retry one")
    );
}

/// On a schema behind this skiplock (or none), the health report is the migrations check,
/// critical, with its remedy: the other checks read what later migrations add, and failed with
/// an SQL error (`skiplock doctor` exited 1 where it should say "run skiplock migrate"). And a
/// running job whose lease was written by hand as `-infinity` is reported stuck: decoding it
/// failed the whole report.
#[tokio::test]
async fn health_on_an_old_or_missing_schema_says_to_migrate() {
    let db = database().await;
    let pool = db.pool();
    insert(
        pool,
        "kind, state, attempt, lease_token, lease_expires_at",
        "'k', 'running', 1, 1, '-infinity'",
    )
    .await;
    // And an available job due since -infinity, for the queues' oldest job.
    insert(
        pool,
        "kind, created_at, run_at",
        "'k', '2020-01-01', '-infinity'",
    )
    .await;
    let queues = inspect::queues(pool).await.expect("queues");
    assert_eq!(queues.len(), 1, "{queues:?}");
    let report = inspect::health(pool, &HealthOptions::default())
        .await
        .expect("health");
    let stuck = report
        .checks
        .iter()
        .find(|check| check.name == "stuck_jobs")
        .expect("stuck_jobs");
    assert_eq!(stuck.severity, Severity::Critical, "{stuck:?}");

    for version in [18, 0] {
        common::schema_at(pool, version).await;
        let report = inspect::health(pool, &HealthOptions::default())
            .await
            .expect("health");
        let names: Vec<&str> = report.checks.iter().map(|check| check.name).collect();
        assert_eq!(names, ["migrations"], "version {version}");
        assert_eq!(report.checks[0].severity, Severity::Critical);
        assert!(report.checks[0].remedy.is_some());
    }
}

/// `skiplock.claim()` stores the queues and kinds its caller passes, from any language: a NULL
/// element or a second dimension failed the queue listing, the workers' and the dashboard's
/// fleet pages for as long as the row was kept.
#[tokio::test]
async fn a_sql_workers_odd_arrays_do_not_break_the_fleet_views() {
    let db = database().await;
    let pool = db.pool();
    for claim in [
        "SELECT count(*) FROM skiplock.claim('nulls', ARRAY['qa', NULL], ARRAY['zz', NULL])",
        "SELECT count(*) FROM skiplock.claim('square', '{{qa,qb},{qc,qd}}', '{{zz,yy}}')",
    ] {
        sqlx::raw_sql(claim).execute(pool).await.expect(claim);
    }
    let workers = inspect::workers(pool).await.expect("workers");
    let mut seen: Vec<(String, Vec<String>)> = workers
        .into_iter()
        .map(|worker| {
            let names = worker.queues.into_iter().map(|queue| queue.name).collect();
            (worker.id, names)
        })
        .collect();
    seen.sort();
    assert_eq!(
        seen,
        [
            ("nulls".to_owned(), vec!["qa".to_owned()]),
            (
                "square".to_owned(),
                ["qa", "qb", "qc", "qd"].map(str::to_owned).to_vec()
            )
        ]
    );
    let queues = inspect::queues(pool).await.expect("queues");
    assert!(queues.iter().any(|queue| queue.name == "qd"), "{queues:?}");
}

async fn reasons(pool: &PgPool, id: i64) -> Vec<Reason> {
    inspect::explain(pool, id)
        .await
        .expect("explain")
        .expect("job")
        .reasons
}

#[tokio::test]
async fn explain_gives_every_reason_with_its_figure() {
    let db = database().await;
    let pool = db.pool();

    // Finished: how, with the last error.
    let failed = insert(
        pool,
        "kind, state, finished_at, attempt, errors",
        "'k', 'failed', now(), 3, '[{\"attempt\": 3, \"kind\": \"permanent\", \"message\": \"bad input\"}]'",
    )
    .await;
    let got = reasons(pool, failed).await;
    assert!(
        matches!(&got[..], [Reason::Finished { state: JobState::Failed, last_error: Some(e), .. }] if e.message == "bad input"),
        "{got:?}"
    );
    assert!(got[0].to_string().contains("bad input"), "{}", got[0]);

    // Nobody works the queue at all.
    let orphan = available(pool, "nowhere", "k").await;
    assert_eq!(
        reasons(pool, orphan).await,
        vec![Reason::NoWorkerForQueue {
            queue: "nowhere".into()
        }]
    );
    // Not yet due, and nothing promotes jobs: no live worker.
    let later = insert(
        pool,
        "queue, kind, state, run_at",
        "'q', 'k', 'scheduled', now() + interval '1 hour'",
    )
    .await;
    assert!(matches!(
        reasons(pool, later).await[0],
        Reason::NotYetDue { .. }
    ));
    let overdue = insert(
        pool,
        "queue, kind, state, run_at",
        "'q', 'k', 'scheduled', now() - interval '1 hour'",
    )
    .await;
    assert!(matches!(
        reasons(pool, overdue).await[0],
        Reason::NotPromoted { .. }
    ));
    // Backing off after attempt 2, with that attempt's error.
    let backing_off = insert(
        pool,
        "queue, kind, state, run_at, attempt, errors",
        "'q', 'k', 'retryable', now() + interval '5 minutes', 2, \
         '[{\"attempt\": 2, \"kind\": \"error\", \"message\": \"upstream timed out\"}]'",
    )
    .await;
    let got = reasons(pool, backing_off).await;
    assert!(
        matches!(&got[0], Reason::BackingOff { attempt: 2, last_error: Some(e), .. } if e.message == "upstream timed out"),
        "{got:?}"
    );

    // A worker works queue q, but not kind k.
    live_worker(pool, "other-kinds", "{q}", "{1}", "{not_k}").await;
    let wrong_kind = available(pool, "q", "k").await;
    assert!(
        reasons(pool, wrong_kind)
            .await
            .contains(&Reason::NoWorkerForKind {
                queue: "q".into(),
                kind: "k".into()
            })
    );
    // Every slot busy, and jobs ahead of it.
    live_worker(pool, "busy", "{slots}", "{1}", "{k}").await;
    insert(
        pool,
        "queue, kind, state, attempt, attempted_by, lease_token, lease_expires_at",
        "'slots', 'k', 'running', 1, '{busy}', nextval('skiplock.lease_token_seq'), now() + interval '1 minute'",
    )
    .await;
    available(pool, "slots", "k").await;
    available(pool, "slots", "k").await;
    let third = available(pool, "slots", "k").await;
    assert_eq!(
        reasons(pool, third).await,
        vec![
            Reason::SlotsBusy {
                running: Count::Exact(1),
                slots: 1
            },
            Reason::JobsAhead {
                jobs: Count::Exact(2)
            },
        ]
    );
    // Held by a worker, alive or not.
    let held = insert(
        pool,
        "queue, kind, state, attempt, attempted_by, lease_token, lease_expires_at",
        "'slots', 'k', 'running', 1, '{gone-worker}', nextval('skiplock.lease_token_seq'), now() + interval '1 minute'",
    )
    .await;
    let got = reasons(pool, held).await;
    assert!(
        matches!(&got[..], [Reason::HeldByWorker { worker, status: None, .. }] if worker == "gone-worker"),
        "{got:?}"
    );
    let held_alive = insert(
        pool,
        "queue, kind, state, attempt, attempted_by, lease_token, lease_expires_at",
        "'slots', 'k', 'running', 1, '{busy}', nextval('skiplock.lease_token_seq'), now() + interval '1 minute'",
    )
    .await;
    assert!(matches!(
        reasons(pool, held_alive).await[0],
        Reason::HeldByWorker {
            status: Some(WorkerStatus::Alive),
            ..
        }
    ));
    // Due, but its unique key is held by a duplicate.
    let holder = insert(
        pool,
        "queue, kind, state, unique_key, unique_states",
        "'slots', 'k', 'available', 'report:7', '{available,retryable,running}'",
    )
    .await;
    let blocked = insert(
        pool,
        "queue, kind, state, run_at, attempt, unique_key, unique_states",
        "'slots', 'k', 'retryable', now() - interval '1 minute', 1, 'report:7', '{available,running}'",
    )
    .await;
    assert_eq!(
        reasons(pool, blocked).await[0],
        Reason::UniqueKeyHeld {
            key: "report:7".into(),
            holder
        }
    );
    assert!(
        inspect::explain(pool, blocked + 1000)
            .await
            .expect("explain")
            .is_none()
    );
}

/// A session left idle in a transaction that holds an xid: the horizon's holder.
async fn idle_in_transaction(db: &skiplock_testing::TestDatabase) -> (sqlx::PgConnection, i32) {
    use sqlx::Connection as _;
    let mut conn = sqlx::PgConnection::connect_with(db.connect_options())
        .await
        .expect("connect");
    sqlx::raw_sql("SET application_name = 'held-open-by-test'; BEGIN; SELECT txid_current();")
        .execute(&mut conn)
        .await
        .expect("begin");
    let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(&mut conn)
        .await
        .expect("pid");
    (conn, pid)
}

#[tokio::test]
async fn health_finds_every_problem_for_real() {
    let db = database().await;
    let pool = db.pool();
    let clean = inspect::health(pool, &HealthOptions::default())
        .await
        .expect("health");
    for check in &clean.checks {
        // The machine's own server may run with autovacuum off; everything else is fine.
        if !matches!(check.name, "autovacuum" | "table_sizes" | "xmin_horizon") {
            assert_eq!(check.severity, Severity::Ok, "{check:?}");
        }
    }

    let (held, pid) = idle_in_transaction(&db).await;
    // A running job whose lease ran out ten minutes ago, with nobody to rescue it.
    insert(
        pool,
        "kind, state, attempt, lease_token, lease_expires_at",
        "'k', 'running', 1, nextval('skiplock.lease_token_seq'), now() - interval '10 minutes'",
    )
    .await;
    // Waiting ten minutes, in a queue nobody works.
    insert(
        pool,
        "queue, kind, state, run_at",
        "'orphans', 'lonely', 'available', now() - interval '10 minutes'",
    )
    .await;
    let nightly =
        skiplock::Schedule::untyped("nightly", "0 3 * * *", "report", json!({})).expect("schedule");
    skiplock::schedule::add(pool, &nightly).await.expect("add");
    // `bloated` is never autovacuumed: its dead rows are a warning on any server, even one
    // whose autovacuum would keep up with them.
    sqlx::raw_sql(
        "UPDATE skiplock.schedules SET next_fire_at = now() - interval '10 minutes';
         ALTER TABLE skiplock.jobs SET (autovacuum_enabled = false);
         DELETE FROM skiplock.migrations WHERE version = (SELECT max(version) FROM skiplock.migrations);
         CREATE TABLE skiplock.bloated (n int, pad text) WITH (autovacuum_enabled = false);
         INSERT INTO skiplock.bloated SELECT g, repeat('x', 200) FROM generate_series(1, 5000) g;
         ANALYZE skiplock.bloated;
         DELETE FROM skiplock.bloated WHERE n > 100;",
    )
    .execute(pool)
    .await
    .expect("problems");
    for statement in [
        "VACUUM skiplock.bloated",
        "UPDATE skiplock.bloated SET n = n + 1",
    ] {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .expect(statement);
    }
    let mut options = HealthOptions::default();
    options.horizon_warning = Duration::ZERO;
    options.dead_rows_warning = 50;
    options.bloat_min_bytes = 0;
    // Dead-row counts reach the statistics views within a second or so.
    let report = eventually(
        Duration::from_secs(15),
        "dead rows to be counted",
        || async {
            let report = inspect::health(pool, &options).await.expect("health");
            (report.check("dead_rows").map(|c| c.severity) == Some(Severity::Warning))
                .then_some(report)
        },
    )
    .await;
    let check = |name: &str| report.check(name).expect(name).clone();

    let horizon = check("xmin_horizon");
    assert!(horizon.severity >= Severity::Warning, "{horizon:?}");
    assert!(
        horizon.summary.contains(&format!("pid {pid}")),
        "{}",
        horizon.summary
    );
    assert!(
        horizon.summary.contains("held-open-by-test"),
        "{}",
        horizon.summary
    );
    assert!(
        horizon
            .remedy
            .as_deref()
            .unwrap_or_default()
            .contains(&pid.to_string())
    );
    // Younger than the plain threshold, the holder is a warning only while dead rows pile up.
    let mut busy = options.clone();
    busy.horizon_warning = Duration::from_secs(3600);
    busy.horizon_busy_warning = Duration::ZERO;
    let horizon = inspect::health(pool, &busy).await.expect("health");
    let horizon = horizon.check("xmin_horizon").expect("horizon");
    assert_eq!(horizon.severity, Severity::Warning, "{horizon:?}");
    assert!(horizon.summary.contains("dead rows"), "{}", horizon.summary);
    busy.dead_rows_warning = i64::MAX;
    let quiet = inspect::health(pool, &busy).await.expect("health");
    let quiet = quiet.check("xmin_horizon").expect("horizon");
    assert_eq!(quiet.severity, Severity::Ok, "{quiet:?}");

    assert_eq!(check("autovacuum").severity, Severity::Warning);
    let dead_rows = check("dead_rows");
    assert!(dead_rows.summary.contains("bloated"));
    // The naptime is named only where autovacuum is on and waits longer than 10 s between
    // passes (the server's default is 1 min).
    let (autovacuum, naptime): (bool, String) = sqlx::query_as(
        "SELECT current_setting('autovacuum')::bool,
                extract(epoch FROM current_setting('autovacuum_naptime')::interval)::float8::text",
    )
    .fetch_one(pool)
    .await
    .expect("naptime");
    let remedy = dead_rows.remedy.unwrap_or_default();
    let long = autovacuum && naptime.parse::<f64>().expect("seconds") > 10.0;
    assert_eq!(
        remedy.contains(&format!("autovacuum_naptime is {naptime} s")),
        long,
        "{remedy}"
    );
    // Rows the holder keeps are dead rows, not empty space: vacuum reuses their room once the
    // horizon moves (bloat_names_what_vacuum_emptied_and_not_what_it_will).
    let bloat = check("bloat");
    assert_eq!(bloat.severity, Severity::Ok, "{bloat:?}");
    assert_eq!(check("table_sizes").severity, Severity::Info);
    let stuck = check("stuck_jobs");
    assert_eq!(stuck.severity, Severity::Critical);
    assert!(
        stuck.summary.contains("nobody rescues: 1 "),
        "{}",
        stuck.summary
    );
    let orphans = check("unrunnable_jobs");
    assert_eq!(orphans.severity, Severity::Warning);
    assert!(
        orphans.summary.contains("orphans/lonely"),
        "{}",
        orphans.summary
    );
    let overdue = check("overdue_schedules");
    assert_eq!(overdue.severity, Severity::Warning);
    assert!(overdue.summary.contains("nightly"));
    let lag = check("pickup_lag");
    assert_eq!(lag.severity, Severity::Warning);
    assert!(lag.summary.contains("orphans"), "{}", lag.summary);
    let migrations = check("migrations");
    assert_eq!(migrations.severity, Severity::Critical);
    assert_eq!(report.worst(), Severity::Critical);
    drop(held);
}

#[tokio::test]
async fn bloat_names_what_vacuum_emptied_and_not_what_it_will() {
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql(
        "CREATE TABLE skiplock.emptied (n int) WITH (autovacuum_enabled = false);
         CREATE INDEX \"emptied N idx\" ON skiplock.emptied (n);
         CREATE TABLE skiplock.unvacuumed (n int) WITH (autovacuum_enabled = false);
         CREATE INDEX unvacuumed_n_idx ON skiplock.unvacuumed (n);
         INSERT INTO skiplock.emptied SELECT generate_series(1, 20000);
         INSERT INTO skiplock.unvacuumed SELECT generate_series(1, 20000);
         DELETE FROM skiplock.emptied WHERE n % 200 <> 0;
         DELETE FROM skiplock.unvacuumed WHERE n % 200 <> 0;",
    )
    .execute(pool)
    .await
    .expect("tables");
    // The deletes' dead rows must reach the statistics before VACUUM resets them: counted
    // after, they would stand for entries the VACUUM removed.
    eventually(
        Duration::from_secs(15),
        "the deletes to be counted",
        || async {
            let dead: i64 = sqlx::query_scalar(
                "SELECT min(n_dead_tup) FROM pg_stat_user_tables
             WHERE relname IN ('emptied', 'unvacuumed')",
            )
            .fetch_one(pool)
            .await
            .expect("dead rows");
            (dead >= 19_900).then_some(())
        },
    )
    .await;
    // Both tables and their indexes keep 20,000 rows' pages for 100 live rows, one in every
    // page (so VACUUM cannot cut the table short); vacuum emptied one, and the other's room is
    // taken by dead rows that vacuum has yet to remove.
    for statement in [
        "VACUUM (ANALYZE) skiplock.emptied",
        "ANALYZE skiplock.unvacuumed",
    ] {
        sqlx::raw_sql(statement)
            .execute(pool)
            .await
            .expect(statement);
    }
    let mut options = HealthOptions::default();
    let report = inspect::health(pool, &options).await.expect("health");
    for name in ["bloat", "index_bloat"] {
        let check = report.check(name).expect(name);
        assert_eq!(check.severity, Severity::Ok, "small: {check:?}");
    }

    options.bloat_min_bytes = 0;
    let report = inspect::health(pool, &options).await.expect("health");
    let check = report.check("bloat").expect("bloat");
    assert_eq!(check.severity, Severity::Warning, "{check:?}");
    assert!(
        check.summary.starts_with("skiplock.emptied is about "),
        "{}",
        check.summary
    );
    let sizes = report.check("table_sizes").expect("table_sizes");
    let estimate = |table: &str| {
        sizes
            .details
            .as_array()
            .expect("details")
            .iter()
            .find(|t| t["table"] == table)
            .expect(table)["estimated_bloat"]
            .as_f64()
            .expect("estimate")
    };
    assert!(estimate("unvacuumed") < 0.5, "{sizes:?}");
    let check = report.check("index_bloat").expect("index_bloat");
    assert_eq!(check.severity, Severity::Warning, "{check:?}");
    assert!(
        check
            .summary
            .starts_with(r#"skiplock."emptied N idx" is about "#),
        "{}",
        check.summary
    );
    assert_eq!(
        check
            .remedy
            .as_deref()
            .unwrap_or_default()
            .split(" rebuilds")
            .next(),
        Some(r#"REINDEX INDEX CONCURRENTLY skiplock."emptied N idx""#),
        "{check:?}"
    );
    let flagged: Vec<&str> = check
        .details
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|index| index["index"].as_str())
        .collect();
    assert_eq!(flagged, ["emptied N idx"], "{check:?}");

    // Rebuilt, it is what its rows need.
    sqlx::raw_sql(r#"REINDEX INDEX CONCURRENTLY skiplock."emptied N idx""#)
        .execute(pool)
        .await
        .expect("reindex");
    let report = inspect::health(pool, &options).await.expect("health");
    let check = report.check("index_bloat").expect("index_bloat");
    // What is left unknown: skiplock's own tables, never analyzed here.
    assert_eq!(check.severity, Severity::Info, "rebuilt: {check:?}");
    assert!(
        check.summary.starts_with("no statistics to estimate ")
            && check.summary.contains("skiplock.jobs_pkey")
            && !check.summary.contains("emptied"),
        "{}",
        check.summary
    );
}
