//! Workflows: chains, groups and chords enqueued in one statement, their jobs released by the
//! database when what they wait for finishes, failures propagated (or not), cancellation,
//! inspection, retention and repair; and the exactly-once release of chord callbacks whose
//! members finish at the same instant in several worker processes.
#![allow(clippy::print_stderr)]

mod common;

use std::time::Duration;

use common::child;
use common::{database, eventually, start, with_worker, worker};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiplock::inspect::{self, Reason, WorkflowState};
use skiplock::workflow::{self, EnqueuedWorkflow, OnFailure, Step, Workflow, chain, chord, group};
use skiplock::{
    EnqueueOptions, Handler, Job, JobContext, JobError, JobState, NewJob, PrunerConfig, Retention,
    Worker,
};
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

const CHILD_ENV: &str = "SKIPLOCK_WORKFLOW_CHILD";

/// Returns `n + 1`, or fails for good when `n` is negative.
#[derive(Debug, Serialize, Deserialize)]
struct Add {
    n: i64,
}

impl Job for Add {
    const KIND: &'static str = "add";
}

impl Handler<PgPool> for Add {
    type Output = i64;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<i64, JobError> {
        common::record(&ctx).await?;
        if self.n < 0 {
            return Err(JobError::permanent(std::io::Error::other("negative")));
        }
        Ok(self.n + 1)
    }
}

/// A chain step: adds `by` to the previous step's output.
#[derive(Debug, Serialize, Deserialize)]
struct AddInput {
    by: i64,
}

impl Job for AddInput {
    const KIND: &'static str = "add_input";
}

impl Handler<PgPool> for AddInput {
    type Output = i64;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<i64, JobError> {
        common::record(&ctx).await?;
        let previous: i64 = ctx.input().await?;
        Ok(previous + self.by)
    }
}

/// A chord callback: returns its inputs as they came, and records its run with how many.
#[derive(Debug, Serialize, Deserialize)]
struct Collect;

impl Job for Collect {
    const KIND: &'static str = "collect";
}

impl Handler<PgPool> for Collect {
    type Output = Vec<i64>;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<Vec<i64>, JobError> {
        common::record(&ctx).await?;
        // A failed input cannot turn into one by retrying.
        ctx.inputs().await.map_err(JobError::permanent)
    }
}

/// A callback of a workflow that runs whatever happened: returns the states it saw.
#[derive(Debug, Serialize, Deserialize)]
struct Report;

impl Job for Report {
    const KIND: &'static str = "report";
}

impl Handler<PgPool> for Report {
    type Output = Vec<String>;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<Vec<String>, JobError> {
        common::record(&ctx).await?;
        Ok(ctx
            .dependencies()
            .await?
            .into_iter()
            .map(|d| d.state.map_or("gone".to_owned(), |s| s.to_string()))
            .collect())
    }
}

fn step<J: Job>(job: &J) -> Step {
    Step::job(job).expect("step")
}

fn workers(pool: &PgPool) -> skiplock::WorkerBuilder<PgPool> {
    worker(pool)
        .queue("default", 8)
        .register::<Add>()
        .register::<AddInput>()
        .register::<Collect>()
        .register::<Report>()
}

async fn state(pool: &PgPool, id: i64) -> JobState {
    common::job(pool, id).await.state
}

async fn result(pool: &PgPool, id: i64) -> Value {
    common::job(pool, id).await.result.unwrap_or(Value::Null)
}

async fn finished(pool: &PgPool, ids: &[i64]) {
    finished_within(pool, ids, Duration::from_secs(30), "the workflow to finish").await;
}

/// Waits until every job of `ids` is finished; panics after `timeout`.
async fn finished_within(pool: &PgPool, ids: &[i64], timeout: Duration, what: &str) {
    eventually(timeout, what, || async {
        let unfinished: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM skiplock.jobs WHERE id = ANY($1) AND finished_at IS NULL",
        )
        .bind(ids)
        .fetch_one(pool)
        .await
        .expect("count");
        (unfinished == 0).then_some(())
    })
    .await;
}

/// Job `id`, which must have ended in `state` because of a job it depended on.
async fn ended_by_dependency(pool: &PgPool, id: i64, state: JobState) -> skiplock::JobRow {
    let row = common::job(pool, id).await;
    assert_eq!(row.state, state);
    assert_eq!(
        row.errors.last().expect("error").kind.as_str(),
        "dependency"
    );
    row
}

/// Enqueues workflow `name`, which runs `flow`.
async fn enqueue_flow(pool: &PgPool, name: &str, flow: Step) -> EnqueuedWorkflow {
    Workflow::new(name, flow)
        .enqueue(pool)
        .await
        .expect("enqueue")
}

/// What inspection shows of workflow `id`.
async fn workflow_info(pool: &PgPool, id: i64) -> inspect::WorkflowInfo {
    inspect::workflow(pool, id, 0)
        .await
        .expect("inspect")
        .expect("workflow")
}

/// The runs of jobs of `kind` the ledger recorded.
async fn runs_of(pool: &PgPool, kind: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM ledger WHERE kind = $1")
        .bind(kind)
        .fetch_one(pool)
        .await
        .expect("ledger")
}

/// Deletes job `id` by hand.
async fn delete_job(pool: &PgPool, id: i64) {
    sqlx::query("DELETE FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .expect("delete");
}

/// The rows of `skiplock.pending_jobs`: jobs that wait for others.
async fn pending_rows(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.pending_jobs")
        .fetch_one(pool)
        .await
        .expect("pending rows")
}

/// `skiplock.retry_workflow(id)`, from SQL: how many jobs it put back.
async fn retry_workflow_sql(pool: &PgPool, id: i64) -> Option<i32> {
    sqlx::query_scalar("SELECT skiplock.retry_workflow($1)")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("retry workflow")
}

/// A workflow's first jobs wake idle workers, as an enqueue does: with polling an hour apart,
/// a chain runs at once. (Its first job waited for the next poll.)
#[tokio::test]
async fn a_workflows_first_jobs_wake_idle_workers() {
    let db = database().await;
    let pool = db.pool();
    let idle = workers(pool).poll_interval(Duration::from_secs(3600));
    with_worker(idle, async {
        let warm = skiplock::enqueue(pool, &Add { n: 0 })
            .await
            .expect("enqueue");
        finished(pool, &[warm]).await;
        // Past the claim that follows a completion: the worker now waits for a wake-up.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let flow = chain([step(&Add { n: 1 }), step(&AddInput { by: 10 })]);
        let enqueued = enqueue_flow(pool, "woken", flow).await;
        finished_within(
            pool,
            &enqueued.jobs,
            Duration::from_secs(10),
            "the chain to run without a poll",
        )
        .await;
    })
    .await;
}

#[tokio::test]
async fn a_chain_passes_each_output_to_the_next_step() {
    let db = database().await;
    let pool = db.pool();
    let flow = chain([
        step(&Add { n: 1 }),
        step(&AddInput { by: 10 }),
        step(&AddInput { by: 100 }),
    ]);
    let enqueued = enqueue_flow(pool, "sum", flow).await;
    let jobs = enqueued.jobs.clone();
    assert_eq!(state(pool, jobs[0]).await, JobState::Available);
    assert_eq!(state(pool, jobs[1]).await, JobState::Pending);
    assert_eq!(enqueued.last_jobs(), vec![jobs[2]]);

    // Explained while it waits.
    let explanation = inspect::explain(pool, jobs[2])
        .await
        .expect("explain")
        .expect("job");
    assert!(matches!(
        &explanation.reasons[..],
        [Reason::WaitingForJobs { jobs: awaited, total: 1 }] if awaited[0].id == jobs[1]
    ));

    with_worker(workers(pool), finished(pool, &jobs)).await;
    assert_eq!(result(pool, jobs[2]).await, json!(112));
    // Each step ran after the one before it.
    let order: Vec<i64> = sqlx::query_scalar("SELECT job_id FROM ledger ORDER BY seq")
        .fetch_all(pool)
        .await
        .expect("ledger");
    assert_eq!(order, jobs);

    let info = workflow_info(pool, enqueued.id).await;
    assert_eq!(info.state, WorkflowState::Completed);
    assert_eq!((info.jobs, info.unfinished), (3, 0));
    assert_eq!(info.members[2].depends_on, vec![jobs[1]]);
    assert!(info.finished_at.is_some());
}

#[tokio::test]
async fn a_chord_callback_gets_every_output_in_order_and_nests_in_a_chain() {
    let db = database().await;
    let pool = db.pool();
    // add(0) → [add_input +1, +2, +3, +4, +5] → collect; then a group of two after it.
    let members = (1..=5).map(|by| step(&AddInput { by }));
    let flow = chain([
        step(&Add { n: 0 }),
        chord(members, step(&Collect)),
        group([step(&Report), step(&Report)]),
    ]);
    let enqueued = enqueue_flow(pool, "fan", flow).await;
    assert_eq!(enqueued.jobs.len(), 9);
    with_worker(workers(pool), finished(pool, &enqueued.jobs)).await;
    let callback = enqueued.jobs[6];
    assert_eq!(result(pool, callback).await, json!([2, 3, 4, 5, 6]));
    let last = enqueued.last_jobs();
    assert_eq!(last, vec![enqueued.jobs[7], enqueued.jobs[8]]);
    // The steps after the chord waited for its callback alone.
    assert_eq!(result(pool, last[0]).await, json!(["completed"]));
    assert_eq!(result(pool, last[1]).await, json!(["completed"]));
    assert_eq!(runs_of(pool, "collect").await, 1);
}

#[tokio::test]
async fn a_failed_member_fails_what_waits_on_it_downstream_unless_the_workflow_runs_anyway() {
    let db = database().await;
    let pool = db.pool();
    let flow = || {
        chain([
            chord([step(&Add { n: 1 }), step(&Add { n: -1 })], step(&Collect)),
            step(&Report),
        ])
    };
    let failing = enqueue_flow(pool, "fails", flow()).await;
    let running = Workflow::new("runs anyway", flow())
        .on_failure(OnFailure::Run)
        .enqueue(pool)
        .await
        .expect("enqueue");
    let mut all = failing.jobs.clone();
    all.extend(&running.jobs);
    with_worker(workers(pool), finished(pool, &all)).await;

    // Propagated: the callback and the step after it failed without running.
    let (callback, after) = (failing.jobs[2], failing.jobs[3]);
    for id in [callback, after] {
        let row = ended_by_dependency(pool, id, JobState::Failed).await;
        assert_eq!(row.attempt, 0, "never ran");
    }
    let info = workflow_info(pool, failing.id).await;
    assert_eq!(info.state, WorkflowState::Failed);

    // Run anyway: the callback ran and could not read a failed input; the report after it
    // ran and saw the callback's failure.
    assert_eq!(state(pool, running.jobs[2]).await, JobState::Failed);
    assert_eq!(result(pool, running.jobs[3]).await, json!(["failed"]));
    assert_eq!(runs_of(pool, "report").await, 1);
}

#[tokio::test]
async fn cancelling_a_workflow_cancels_its_unfinished_jobs_and_a_cancelled_job_cancels_its_dependents()
 {
    let db = database().await;
    let pool = db.pool();
    let flow = || {
        chain([
            step(&Add { n: 1 }),
            step(&AddInput { by: 1 }),
            step(&AddInput { by: 1 }),
        ])
    };
    let enqueued = enqueue_flow(pool, "cancel me", flow()).await;
    let cancelled = workflow::cancel(pool, enqueued.id)
        .await
        .expect("cancel")
        .expect("found");
    assert_eq!((cancelled.cancelled, cancelled.stopping), (3, 0));
    for &id in &enqueued.jobs {
        assert_eq!(state(pool, id).await, JobState::Cancelled);
    }
    assert!(
        workflow::cancel(pool, enqueued.id + 1000)
            .await
            .expect("cancel")
            .is_none()
    );

    // One job cancelled by hand: the rest of the chain is cancelled with it.
    let enqueued = enqueue_flow(pool, "cancel one", flow()).await;
    assert_eq!(
        skiplock::cancel(pool, enqueued.jobs[0])
            .await
            .expect("cancel"),
        Some(JobState::Cancelled)
    );
    for &id in &enqueued.jobs[1..] {
        ended_by_dependency(pool, id, JobState::Cancelled).await;
    }
    let info = workflow_info(pool, enqueued.id).await;
    assert_eq!(info.state, WorkflowState::Cancelled);
}

/// Marks every unfinished job of workflow `id` finished in `state`, as workers would.
async fn finish_all(pool: &PgPool, id: i64, state: &str) {
    sqlx::query(
        "UPDATE skiplock.jobs SET state = $2::text::skiplock.job_state, finished_at = now(),
                lease_token = NULL, lease_expires_at = NULL
         WHERE workflow_id = $1 AND finished_at IS NULL",
    )
    .bind(id)
    .bind(state)
    .execute(pool)
    .await
    .expect("finish");
}

#[tokio::test]
async fn workflows_are_listed_newest_first_by_phase_and_jobs_filter_by_workflow() {
    let db = database().await;
    let pool = db.pool();
    let three = || {
        chain([
            step(&Add { n: 1 }),
            group([step(&AddInput { by: 1 }), step(&AddInput { by: 2 })]),
        ])
    };
    let mut ids = Vec::new();
    let mut jobs = Vec::new();
    for name in ["done", "failed", "cancelled", "running"] {
        // The failed one's dependents run anyway: one failure among completions.
        let on_failure = if name == "failed" {
            OnFailure::Run
        } else {
            OnFailure::Propagate
        };
        let enqueued = Workflow::new(name, three())
            .on_failure(on_failure)
            .enqueue(pool)
            .await
            .expect("enqueue");
        ids.push(enqueued.id);
        jobs.push(enqueued.jobs);
    }
    // A job outside any workflow, which no workflow filter may match.
    let loose = skiplock::enqueue(pool, &Add { n: 0 })
        .await
        .expect("enqueue");
    finish_all(pool, ids[0], "completed").await;
    sqlx::query("UPDATE skiplock.jobs SET state = 'failed', finished_at = now() WHERE id = $1")
        .bind(jobs[1][0])
        .execute(pool)
        .await
        .expect("fail");
    finish_all(pool, ids[1], "completed").await;
    workflow::cancel(pool, ids[2]).await.expect("cancel");

    let page = inspect::workflows(pool, &inspect::WorkflowQuery::new())
        .await
        .expect("list");
    let listed: Vec<(i64, &str, WorkflowState, u64, u64)> = page
        .workflows
        .iter()
        .map(|w| (w.id, w.name.as_str(), w.state, w.jobs, w.unfinished))
        .collect();
    assert_eq!(
        listed,
        vec![
            (ids[3], "running", WorkflowState::Running, 3, 3),
            (ids[2], "cancelled", WorkflowState::Cancelled, 3, 0),
            (ids[1], "failed", WorkflowState::Failed, 3, 0),
            (ids[0], "done", WorkflowState::Completed, 3, 0),
        ]
    );
    assert_eq!(page.next, None);
    assert!(page.workflows[1].cancelled_at.is_some());
    assert!(page.workflows[0].finished_at.is_none());

    // Keyset pages of two, then the phases.
    let first = inspect::workflows(pool, &inspect::WorkflowQuery::new().limit(2))
        .await
        .expect("page");
    assert_eq!(first.next, Some(ids[2]));
    let second = inspect::workflows(pool, &inspect::WorkflowQuery::new().limit(2).after(ids[2]))
        .await
        .expect("page");
    let second: Vec<i64> = second.workflows.iter().map(|w| w.id).collect();
    assert_eq!(second, vec![ids[1], ids[0]]);
    let of = |phase| async move {
        inspect::workflows(pool, &inspect::WorkflowQuery::new().phase(phase))
            .await
            .expect("phase")
            .workflows
            .iter()
            .map(|w| w.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(of(inspect::WorkflowPhase::Running).await, vec![ids[3]]);
    assert_eq!(
        of(inspect::WorkflowPhase::Finished).await,
        vec![ids[2], ids[1], ids[0]]
    );
    for limit in [0, inspect::MAX_WORKFLOWS_PAGE + 1] {
        assert!(matches!(
            inspect::workflows(pool, &inspect::WorkflowQuery::new().limit(limit)).await,
            Err(inspect::InspectError::Invalid(_))
        ));
    }

    // The jobs filter: lists, counts and bulk actions see one workflow's jobs only, in any
    // state (pending included).
    let filter = inspect::JobFilter::new().workflow(ids[3]);
    let listed = inspect::jobs(pool, &inspect::JobQuery::new(filter.clone()))
        .await
        .expect("jobs");
    let mut expected = jobs[3].clone();
    expected.reverse();
    assert_eq!(
        listed.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        expected
    );
    assert!(!listed.window_ended);
    assert_eq!(
        inspect::count_jobs(pool, &filter).await.expect("count"),
        inspect::Count::Exact(3)
    );
    let pending = filter.clone().state(JobState::Pending);
    assert_eq!(
        inspect::count_jobs(pool, &pending).await.expect("count"),
        inspect::Count::Exact(2)
    );
    let oldest = inspect::jobs(
        pool,
        &inspect::JobQuery::new(pending.clone())
            .order(inspect::JobOrder::OldestFirst)
            .limit(1),
    )
    .await
    .expect("jobs");
    assert_eq!(oldest.jobs[0].id, jobs[3][1]);
    assert_eq!(oldest.next, Some(jobs[3][1]));
    let finished = inspect::JobFilter::new()
        .workflow(ids[1])
        .state(JobState::Failed);
    assert_eq!(
        inspect::count_jobs(pool, &finished).await.expect("count"),
        inspect::Count::Exact(1)
    );
    let report = inspect::cancel_jobs(pool, &filter).await.expect("cancel");
    assert_eq!(report.changed, 3);
    for &id in &jobs[3] {
        assert_eq!(state(pool, id).await, JobState::Cancelled);
    }
    assert_eq!(state(pool, loose).await, JobState::Available);
    assert_eq!(
        inspect::count_jobs(pool, &inspect::JobFilter::new().workflow(ids[3] + 100))
            .await
            .expect("count"),
        inspect::Count::Exact(0)
    );
}

#[tokio::test]
async fn a_workflow_is_enqueued_with_the_transaction_and_a_group_of_ten_thousand_in_one_statement()
{
    let db = database().await;
    let pool = db.pool();
    let mut tx = pool.begin().await.expect("begin");
    Workflow::new("rolled back", chain([step(&Add { n: 1 }), step(&Collect)]))
        .enqueue(&mut *tx)
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    let left: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM skiplock.jobs) + (SELECT count(*) FROM skiplock.workflows)
              + (SELECT count(*) FROM skiplock.job_dependencies)
              + (SELECT count(*) FROM skiplock.pending_jobs)",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(left, 0, "a rolled back workflow leaves nothing");

    let members = (0..10_000).map(|n| step(&Add { n }));
    let enqueued = enqueue_flow(pool, "big", chord(members, step(&Collect))).await;
    assert_eq!(enqueued.jobs.len(), 10_001);
    let pending: i32 =
        sqlx::query_scalar("SELECT waiting_for FROM skiplock.pending_jobs WHERE job_id = $1")
            .bind(enqueued.jobs[10_000])
            .fetch_one(pool)
            .await
            .expect("pending");
    assert_eq!(pending, 10_000);

    // Refused before anything is sent.
    let error = Workflow::new("empty", group([]))
        .enqueue(pool)
        .await
        .expect_err("empty");
    assert!(matches!(error, skiplock::workflow::WorkflowError::Empty(_)));
}

#[tokio::test]
async fn sql_clients_enqueue_workflows_and_bad_input_is_refused() {
    let db = database().await;
    let pool = db.pool();
    let (id, jobs): (i64, Vec<i64>) = sqlx::query_as(
        r#"SELECT * FROM skiplock.enqueue_workflow('from sql',
               '[{"kind": "add", "args": {"n": 4}},
                 {"kind": "add_input", "args": {"by": 1}, "depends_on": [0]}]')"#,
    )
    .fetch_one(pool)
    .await
    .expect("enqueue");
    assert!(id > 0);
    with_worker(workers(pool), finished(pool, &jobs)).await;
    assert_eq!(result(pool, jobs[1]).await, json!(6));

    for bad in [
        r#"[]"#,
        r#"{"kind": "x"}"#,
        r#"[{"args": {}}]"#,
        r#"[{"kind": "x", "depends_on": [0]}]"#,
        r#"[{"kind": "x"}, {"kind": "y", "depends_on": [2]}]"#,
        r#"[{"kind": "x"}, {"kind": "y", "depends_on": [-1]}]"#,
        r#"[{"kind": "x"}, {"kind": "y", "depends_on": [0.5]}]"#,
        r#"[{"kind": "x"}, {"kind": "y", "depends_on": "0"}]"#,
        r#"[{"kind": "x"}, {"kind": "y", "depends_on": [0, 0]}]"#,
        r#"[{"kind": "x", "tags": [null]}]"#,
        r#"[{"kind": "x", "tags": [1]}]"#,
        r#"[{"kind": "x", "queue": 5}]"#,
        r#"[{"kind": "x", "timeout_secs": "NaN"}]"#,
        r#"[{"kind": "x", "timeout_secs": "Infinity"}]"#,
        r#"[{"kind": "x", "delay_secs": "1"}]"#,
        r#"[{"kind": "x", "priority": "1"}]"#,
        r#"[{"kind": "x", "metadata": [1]}]"#,
    ] {
        let refused = sqlx::query("SELECT skiplock.enqueue_workflow('bad', $1::jsonb)")
            .bind(bad)
            .execute(pool)
            .await;
        assert!(refused.is_err(), "{bad} was accepted");
    }
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM skiplock.workflows")
        .fetch_one(pool)
        .await
        .expect("count");
    assert_eq!(count, 1);
}

#[tokio::test]
async fn retention_prunes_a_workflow_whole_and_a_deleted_dependency_is_repaired() {
    let db = database().await;
    let pool = db.pool();
    let two_steps = || chain([step(&Add { n: 1 }), step(&AddInput { by: 1 })]);
    let done = enqueue_flow(pool, "done", two_steps()).await;
    let open = enqueue_flow(pool, "open", group([step(&Add { n: 1 }), step(&Collect)])).await;
    // `done` finishes; of `open`, only the add completes (collect's kind has no worker).
    let builder = worker(pool)
        .queue("default", 4)
        .register::<Add>()
        .register::<AddInput>();
    with_worker(builder, async {
        finished(pool, &done.jobs).await;
        finished(pool, &open.jobs[..1]).await;
    })
    .await;
    let pruner = skiplock::Pruner::new(
        pool.clone(),
        PrunerConfig {
            retention: Retention {
                completed: Some(Duration::ZERO),
                failed: Some(Duration::ZERO),
                cancelled: Some(Duration::ZERO),
            },
            ..PrunerConfig::default()
        },
    );
    pruner.run_once().await.expect("prune");
    let left: Vec<i64> = sqlx::query_scalar("SELECT id FROM skiplock.jobs ORDER BY id")
        .fetch_all(pool)
        .await
        .expect("jobs");
    assert_eq!(
        left, open.jobs,
        "the finished workflow went whole; the open one stays whole"
    );
    let workflows: Vec<i64> = sqlx::query_scalar("SELECT id FROM skiplock.workflows")
        .fetch_all(pool)
        .await
        .expect("workflows");
    assert_eq!(workflows, vec![open.id]);
    let edges: i64 =
        sqlx::query_scalar("SELECT count(*) FROM skiplock.job_dependencies WHERE workflow_id = $1")
            .bind(done.id)
            .fetch_one(pool)
            .await
            .expect("edges");
    assert_eq!(edges, 0);

    // A dependency deleted by hand while its dependent waits: the rescuer resolves it (as
    // cancelled), and the dependent does not wait forever.
    let stranded = enqueue_flow(pool, "stranded", two_steps()).await;
    delete_job(pool, stranded.jobs[0]).await;
    let running = start(worker(pool).queue("other", 1).register::<Add>());
    eventually(
        Duration::from_secs(20),
        "the rescuer to repair the workflow",
        || async { (state(pool, stranded.jobs[1]).await == JobState::Cancelled).then_some(()) },
    )
    .await;
    running.shutdown().await.expect("shutdown");
}

/// A chord member for the race: returns its index at the next 10 ms tick of the wall clock,
/// so that the members running in every process finish at the same instant and their
/// completions commit together.
#[derive(Debug, Serialize, Deserialize)]
struct Member {
    i: i64,
}

impl Job for Member {
    const KIND: &'static str = "member";
}

impl Handler<PgPool> for Member {
    type Output = i64;

    async fn handle(self, _ctx: JobContext<PgPool>) -> Result<i64, JobError> {
        let since_epoch = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let tick = Duration::from_millis(10);
        let into_tick = Duration::from_nanos((since_epoch.as_nanos() % tick.as_nanos()) as u64);
        tokio::time::sleep(tick - into_tick).await;
        Ok(self.i)
    }
}

/// The race's callback: records its run and whether its inputs were 0..n in order.
#[derive(Debug, Serialize, Deserialize)]
struct Callback {
    n: i64,
}

impl Job for Callback {
    const KIND: &'static str = "callback";
}

impl Handler<PgPool> for Callback {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        let inputs: Vec<i64> = ctx.inputs().await?;
        let in_order = inputs == (0..self.n).collect::<Vec<_>>();
        sqlx::query("INSERT INTO callbacks (job_id, in_order) VALUES ($1, $2)")
            .bind(ctx.id())
            .bind(in_order)
            .execute(ctx.state())
            .await?;
        Ok(())
    }
}

/// The worker process of the race test; does nothing unless that test started it.
#[test]
#[ignore = "entry point of the worker processes the workflow race test starts"]
fn child_worker() {
    child::run(CHILD_ENV, |url| {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .connect_lazy(&url)
            .expect("url");
        Worker::builder(pool.clone(), pool)
            .queue("default", 25)
            .poll_interval(Duration::from_millis(100))
            .shutdown_timeout(Duration::from_secs(5))
            .register::<Member>()
            .register::<Callback>()
    });
}

/// The issue's test: 1,000-member chords whose members finish on 4 worker processes at once,
/// 50 runs: every callback runs exactly once, with all 1,000 outputs in order.
#[tokio::test]
async fn chord_callbacks_run_exactly_once_when_members_finish_together_on_four_processes() {
    const CHORDS: usize = 50;
    const MEMBERS: i64 = 1_000;
    let db = database().await;
    let pool = db.pool();
    sqlx::raw_sql("CREATE TABLE callbacks (job_id bigint NOT NULL, in_order boolean NOT NULL)")
        .execute(pool)
        .await
        .expect("table");
    // The four processes are up first; every chord is then committed at once, so their
    // members race from the first claim.
    let children = child::start_live(pool, 4, "child_worker", CHILD_ENV, &db.url()).await;
    let mut tx = pool.begin().await.expect("begin");
    let mut callbacks = Vec::new();
    for run in 0..CHORDS {
        let members = (0..MEMBERS).map(|i| step(&Member { i }));
        let flow = chord(members, step(&Callback { n: MEMBERS }));
        let enqueued = Workflow::new(format!("race {run}"), flow)
            .enqueue(&mut *tx)
            .await
            .expect("enqueue");
        callbacks.extend(enqueued.last_jobs());
    }
    tx.commit().await.expect("commit");
    finished_within(
        pool,
        &callbacks,
        Duration::from_secs(240),
        "every callback to finish",
    )
    .await;
    drop(children);
    let runs: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT j.id, count(c.job_id), count(*) FILTER (WHERE c.in_order)
         FROM unnest($1::bigint[]) AS j(id) LEFT JOIN callbacks AS c ON c.job_id = j.id
         GROUP BY j.id",
    )
    .bind(&callbacks)
    .fetch_all(pool)
    .await
    .expect("callbacks");
    assert_eq!(runs.len(), CHORDS);
    for (id, ran, in_order) in runs {
        assert_eq!(
            (ran, in_order),
            (1, 1),
            "callback {id} ran {ran} times ({in_order} in order)"
        );
    }
    let states: Vec<(String, i64)> =
        sqlx::query_as("SELECT state::text, count(*) FROM skiplock.jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await
            .expect("states");
    assert_eq!(
        states,
        vec![("completed".to_owned(), CHORDS as i64 * (MEMBERS + 1))]
    );
    // The processes really did finish members of the same chords together.
    let spread: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT workflow_id FROM skiplock.jobs WHERE kind = 'member'
                               GROUP BY 1 HAVING count(DISTINCT attempted_by[1]) >= 2) AS w",
    )
    .fetch_one(pool)
    .await
    .expect("spread");
    let per_process: Vec<(String, i64)> =
        sqlx::query_as("SELECT attempted_by[1], count(*) FROM skiplock.jobs GROUP BY 1 ORDER BY 1")
            .fetch_all(pool)
            .await
            .expect("per process");
    eprintln!(
        "{spread} of {CHORDS} chords finished on several processes; jobs per process: {per_process:?}"
    );
    assert!(
        spread >= 1 && per_process.len() >= 2,
        "no chord had members finish on several processes: {per_process:?}"
    );
}

/// The interleaving that a release test reading the dependency rows would get wrong, forced:
/// two transactions finish a chord's last two members; the second blocks on a row the first
/// holds (the workflow's, then the callback's counter) and goes on once the first commits. The
/// callback is released once, by the second. (With the workflow row's update removed and the
/// count read from the dependency rows, this fails: both miss each other's write.)
#[tokio::test]
async fn the_last_two_members_finishing_in_concurrent_transactions_release_the_callback_once() {
    let db = database().await;
    let pool = db.pool();
    let enqueued = enqueue_flow(
        pool,
        "pair",
        chord([step(&Add { n: 1 }), step(&Add { n: 2 })], step(&Collect)),
    )
    .await;
    let (a, b, callback) = (enqueued.jobs[0], enqueued.jobs[1], enqueued.jobs[2]);
    let finish = "UPDATE skiplock.jobs SET state = 'completed', finished_at = now(), result = '1'
                  WHERE id = $1";
    let mut first = pool.begin().await.expect("begin");
    sqlx::query(finish)
        .bind(a)
        .execute(&mut *first)
        .await
        .expect("finish a");
    let second = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut tx = pool.begin().await.expect("begin");
            sqlx::query(finish)
                .bind(b)
                .execute(&mut *tx)
                .await
                .expect("finish b");
            tx.commit().await.expect("commit b");
        })
    };
    // The second waits for the first's lock on the callback's counter.
    eventually(
        Duration::from_secs(10),
        "the second to wait for the lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(pool)
            .await
            .expect("activity");
            (waiting == 1).then_some(())
        },
    )
    .await;
    assert_eq!(state(pool, callback).await, JobState::Pending);
    first.commit().await.expect("commit a");
    second.await.expect("second");
    assert_eq!(state(pool, callback).await, JobState::Available);
    assert_eq!(pending_rows(pool).await, 0);
}

#[tokio::test]
async fn retrying_a_failed_workflow_runs_it_on_from_where_it_stopped() {
    let db = database().await;
    let pool = db.pool();
    // The failing member fails for good on its first attempt, failing the two reports.
    let flaky = NewJob::with_options(
        &common::Fail {
            mode: "once".to_owned(),
        },
        EnqueueOptions::new().max_attempts(1),
    )
    .expect("job");
    let flow = chain([
        chord([step(&Add { n: 1 }), Step::from(flaky)], step(&Report)),
        step(&Report),
    ]);
    let enqueued = enqueue_flow(pool, "flaky", flow).await;
    let builder = || workers(pool).register::<common::Fail>();
    with_worker(builder(), finished(pool, &enqueued.jobs)).await;
    let states = |ids: Vec<i64>| async move {
        let mut states = Vec::new();
        for id in ids {
            states.push(state(pool, id).await);
        }
        states
    };
    use JobState::{Completed, Failed, Pending};
    assert_eq!(
        states(enqueued.jobs.clone()).await,
        [Completed, Failed, Failed, Failed]
    );

    assert_eq!(
        workflow::retry(pool, enqueued.id).await.expect("retry"),
        Some(3)
    );
    assert_eq!(
        states(enqueued.jobs.clone()).await,
        [Completed, JobState::Available, Pending, Pending]
    );
    assert_eq!(
        workflow::retry(pool, enqueued.id + 99)
            .await
            .expect("retry"),
        None
    );
    with_worker(builder(), finished(pool, &enqueued.jobs)).await;
    assert_eq!(states(enqueued.jobs.clone()).await, [Completed; 4]);
    assert_eq!(
        result(pool, enqueued.jobs[2]).await,
        json!(["completed", "completed"])
    );
    // The completed member did not run again.
    assert_eq!(runs_of(pool, "add").await, 1);
    let info = workflow_info(pool, enqueued.id).await;
    assert_eq!((info.state, info.unfinished), (WorkflowState::Completed, 0));
}

/// Enqueues `jobs` (JSON, as `skiplock.enqueue_workflow` takes them) from SQL.
async fn enqueue_sql(pool: &PgPool, jobs: Value) -> (i64, Vec<i64>) {
    sqlx::query_as("SELECT * FROM skiplock.enqueue_workflow('sql', $1)")
        .bind(jobs)
        .fetch_one(pool)
        .await
        .expect("enqueue")
}

/// Ends jobs as a worker would, in one statement.
async fn end(pool: &PgPool, ids: &[i64], state: &str) {
    sqlx::query(
        "UPDATE skiplock.jobs SET state = $2::skiplock.job_state, finished_at = now() WHERE id = ANY($1)",
    )
    .bind(ids)
    .bind(state)
    .execute(pool)
    .await
    .expect("end");
}

async fn workflow_row(pool: &PgPool, id: i64) -> (i32, bool) {
    sqlx::query_as(
        "SELECT unfinished, finished_at IS NOT NULL FROM skiplock.workflows WHERE id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .expect("workflow")
}

#[tokio::test]
async fn retrying_one_job_respects_its_dependencies() {
    let db = database().await;
    let pool = db.pool();
    let (id, jobs) = enqueue_sql(
        pool,
        json!([{"kind": "a"}, {"kind": "b", "depends_on": [0]}, {"kind": "c", "depends_on": [1]}]),
    )
    .await;
    end(pool, &jobs[..1], "failed").await;
    assert_eq!(state(pool, jobs[2]).await, JobState::Failed, "propagated");
    let retry = |job: i64| async move {
        sqlx::query_scalar::<_, bool>("SELECT skiplock.retry($1)")
            .bind(job)
            .fetch_one(pool)
            .await
            .expect("retry")
    };
    assert!(
        !retry(jobs[1]).await,
        "a job whose dependency failed is not put back while the workflow propagates failures"
    );
    assert_eq!(state(pool, jobs[1]).await, JobState::Failed);
    assert!(retry(jobs[0]).await);
    assert_eq!(state(pool, jobs[0]).await, JobState::Available);
    assert!(retry(jobs[1]).await, "its dependency runs again now");
    assert_eq!(
        state(pool, jobs[1]).await,
        JobState::Pending,
        "it waits for the dependency put back before it"
    );
    assert_eq!(workflow_row(pool, id).await, (2, false));
    end(pool, &jobs[..1], "completed").await;
    assert_eq!(state(pool, jobs[1]).await, JobState::Available);
    end(pool, &jobs[1..2], "completed").await;
    // c was failed by propagation and not put back: the workflow is finished again.
    assert_eq!(state(pool, jobs[2]).await, JobState::Failed);
    assert_eq!(workflow_row(pool, id).await, (0, true));
    assert_eq!(retry_workflow_sql(pool, id).await, Some(1));
    assert_eq!(
        state(pool, jobs[2]).await,
        JobState::Available,
        "b completed"
    );
}

#[tokio::test]
async fn unfinished_jobs_deleted_by_hand_finish_their_workflow_and_release_what_waited() {
    let db = database().await;
    let pool = db.pool();
    let (id, jobs) = enqueue_sql(
        pool,
        json!([{"kind": "a"}, {"kind": "b"}, {"kind": "c", "depends_on": [0, 1]}]),
    )
    .await;
    end(pool, &jobs[..1], "completed").await;
    delete_job(pool, jobs[1]).await;
    // A deleted dependency counts as cancelled: the callback is cancelled in turn.
    assert_eq!(state(pool, jobs[2]).await, JobState::Cancelled);
    assert_eq!(workflow_row(pool, id).await, (0, true));

    let (id, jobs) = enqueue_sql(pool, json!([{"kind": "a"}, {"kind": "b"}])).await;
    end(pool, &jobs[..1], "completed").await;
    delete_job(pool, jobs[1]).await;
    assert_eq!(
        workflow_row(pool, id).await,
        (0, true),
        "its last job deleted"
    );
}

#[tokio::test]
async fn long_chains_are_cancelled_failed_and_retried_in_one_pass() {
    let db = database().await;
    let pool = db.pool();
    let n = 20_000;
    let chain: Vec<Value> = (0..n)
        .map(|i| match i {
            0 => json!({"kind": "x"}),
            i => json!({"kind": "x", "depends_on": [i - 1]}),
        })
        .collect();
    let (id, jobs) = enqueue_sql(pool, Value::Array(chain.clone())).await;
    end(pool, &jobs[..1], "failed").await;
    let counts: Vec<(String, i64)> = sqlx::query_as(
        "SELECT state::text, count(*) FROM skiplock.jobs WHERE workflow_id = $1 GROUP BY 1",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("counts");
    assert_eq!(counts, vec![("failed".to_owned(), i64::from(n))]);
    assert_eq!(workflow_row(pool, id).await, (0, true));
    assert_eq!(retry_workflow_sql(pool, id).await, Some(n));
    assert_eq!(state(pool, jobs[0]).await, JobState::Available);
    assert_eq!(state(pool, jobs[1]).await, JobState::Pending);
    assert_eq!(workflow_row(pool, id).await, (n, false));

    let (id, _) = enqueue_sql(pool, Value::Array(chain)).await;
    let cancelled: (Option<i32>, Option<i32>) =
        sqlx::query_as("SELECT cancelled, stopping FROM skiplock.cancel_workflow($1)")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("cancel");
    assert_eq!(cancelled, (Some(n), Some(0)));
    assert_eq!(workflow_row(pool, id).await, (0, true));
    assert_eq!(
        pending_rows(pool).await,
        i64::from(n) - 1,
        "the retried chain waits, the cancelled one does not"
    );
}

/// Two statements finishing jobs of the same two workflows, listed in opposite orders, while
/// a third transaction holds the first workflow's row. With a row per finished job taking its
/// workflow's lock in turn, the second statement would take B then wait for A, the first would
/// take A then wait for B: a deadlock. Settled per statement, both take A first.
#[tokio::test]
async fn statements_finishing_jobs_of_the_same_workflows_in_opposite_orders_do_not_deadlock() {
    let db = database().await;
    let pool = db.pool();
    let (a, a_jobs) = enqueue_sql(
        pool,
        json!([{"kind": "x"}, {"kind": "x"}, {"kind": "y", "depends_on": [0, 1]}]),
    )
    .await;
    let (_, b_jobs) = enqueue_sql(
        pool,
        json!([{"kind": "x"}, {"kind": "x"}, {"kind": "y", "depends_on": [0, 1]}]),
    )
    .await;
    let mut holder = pool.begin().await.expect("begin");
    sqlx::query("SELECT FROM skiplock.workflows WHERE id = $1 FOR UPDATE")
        .bind(a)
        .execute(&mut *holder)
        .await
        .expect("lock");
    // Rows are updated (and their row triggers fire) in the order of the VALUES list.
    let finish = |first: i64, second: i64| {
        let pool = pool.clone();
        tokio::spawn(async move {
            sqlx::query(
                "UPDATE skiplock.jobs AS j SET state = 'completed', finished_at = now()
                 FROM (VALUES (1, $1::bigint), (2, $2::bigint)) AS o(n, id)
                 WHERE j.id = o.id",
            )
            .bind(first)
            .bind(second)
            .execute(&pool)
            .await
        })
    };
    let one = finish(a_jobs[0], b_jobs[0]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let two = finish(b_jobs[1], a_jobs[1]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    holder.commit().await.expect("release");
    one.await.expect("join").expect("the first statement");
    two.await
        .expect("join")
        .expect("the second statement (no deadlock)");
    assert_eq!(state(pool, a_jobs[2]).await, JobState::Available);
    assert_eq!(state(pool, b_jobs[2]).await, JobState::Available);
}

#[tokio::test]
async fn the_jobs_table_refuses_a_timeout_that_is_not_a_number_and_pending_jobs_outside_workflows()
{
    let db = database().await;
    let pool = db.pool();
    for sql in [
        "INSERT INTO skiplock.jobs (kind, timeout_secs) VALUES ('x', 'NaN')",
        "INSERT INTO skiplock.jobs (kind, timeout_secs) VALUES ('x', 'Infinity')",
        "INSERT INTO skiplock.jobs (kind, state) VALUES ('x', 'pending')",
    ] {
        let refused = sqlx::query(sql).execute(pool).await;
        assert!(refused.is_err(), "{sql} was accepted");
    }
}
