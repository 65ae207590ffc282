//! How fast `skiplock::inspect` answers on a big table: `skiplock bench inspect`.

use std::time::Instant;

use serde_json::json;

use super::{BenchDatabase, BenchError, Progress, Report, reporting};
use crate::JobState;
use crate::db;
use crate::inspect::{self, HealthOptions, JobFilter, JobOrder, JobQuery};

/// A table of `finished` finished jobs and `waiting` waiting ones, then every inspection call
/// timed `samples` times (after one untimed warm-up). Reports each call's median and slowest
/// time, in milliseconds, under `details.calls`; the report's percentiles are over every call.
#[derive(Clone, Debug)]
pub struct Inspect {
    /// Finished jobs in the table. Default 10,000,000.
    pub finished: u64,
    /// Waiting jobs (60% available, 30% scheduled, 10% retryable). Default 1,000,000.
    pub waiting: u64,
    /// Times each call is timed. Default 5.
    pub samples: u32,
}

impl Default for Inspect {
    fn default() -> Self {
        Self {
            finished: 10_000_000,
            waiting: 1_000_000,
            samples: 5,
        }
    }
}

/// Jobs of a queue nothing else uses: a filter that matches few of millions.
const RARE: i64 = 100;

impl Inspect {
    pub(super) async fn run(
        &self,
        database: &BenchDatabase,
        progress: &(dyn Fn(&Progress) + Sync),
    ) -> Result<Report, BenchError> {
        let pool = database.pool(2).await?;
        let fill = async {
            let fill = BenchError::database("fill the jobs table");
            // Oldest first, newest last, as a queue that has run for a while: the history,
            // then the backlog, then a handful in a queue of their own.
            db::bench::fill_history(&pool, i64::try_from(self.finished).unwrap_or(i64::MAX))
                .await
                .map_err(fill)?;
            db::bench::fill_backlog(&pool, i64::try_from(self.waiting).unwrap_or(i64::MAX))
                .await
                .map_err(BenchError::database("fill the backlog"))?;
            db::bench::fill_available(&pool, "kind_rare", "rare", RARE)
                .await
                .map_err(BenchError::database("fill the rare queue"))?;
            db::bench::vacuum_jobs(&pool)
                .await
                .map_err(BenchError::database("vacuum the jobs table"))
        };
        reporting("filling", None, || 0, progress, fill).await?;

        let newest = JobQuery::new(JobFilter::new());
        let first = inspect::jobs(&pool, &newest).await.map_err(invalid)?;
        let some_id = first.jobs.first().map_or(1, |job| job.id);
        let after = first.next.unwrap_or(some_id);
        let available_id = inspect::jobs(
            &pool,
            &JobQuery::new(JobFilter::new().state(JobState::Available).queue("default")).limit(1),
        )
        .await
        .map_err(invalid)?
        .jobs
        .first()
        .map_or(some_id, |job| job.id);

        let lists: Vec<(&str, JobQuery)> = vec![
            ("jobs: newest", newest.clone()),
            ("jobs: newest, page 2", newest.clone().after(after)),
            (
                "jobs: oldest",
                JobQuery::new(JobFilter::new()).order(JobOrder::OldestFirst),
            ),
            (
                "jobs: scheduled",
                JobQuery::new(JobFilter::new().state(JobState::Scheduled)),
            ),
            (
                "jobs: failed",
                JobQuery::new(JobFilter::new().state(JobState::Failed)),
            ),
            (
                "jobs: available in default",
                JobQuery::new(JobFilter::new().state(JobState::Available).queue("default")),
            ),
            (
                "jobs: queue rare",
                JobQuery::new(JobFilter::new().queue("rare")),
            ),
            (
                "jobs: kind kind_3",
                JobQuery::new(JobFilter::new().kind("kind_3")),
            ),
            ("jobs: tag t7", JobQuery::new(JobFilter::new().tag("t7"))),
            (
                "jobs: args customer c17",
                JobQuery::new(JobFilter::new().args(json!({"customer": "c17"}))),
            ),
            (
                "jobs: args user_id 17 (one job)",
                JobQuery::new(JobFilter::new().args(json!({"user_id": 17}))),
            ),
        ];
        let counts: Vec<(&str, JobFilter)> = vec![
            ("count: all", JobFilter::new()),
            ("count: failed", JobFilter::new().state(JobState::Failed)),
            (
                "count: available in default",
                JobFilter::new().state(JobState::Available).queue("default"),
            ),
            ("count: queue rare", JobFilter::new().queue("rare")),
            (
                "count: failed with tag t7",
                JobFilter::new().state(JobState::Failed).tag("t7"),
            ),
            (
                "count: args customer c17",
                JobFilter::new().args(json!({"customer": "c17"})),
            ),
        ];

        let mut calls = Vec::new();
        let mut all = Vec::new();
        let mut record = |name: &str, times: Vec<f64>| {
            all.extend(times.iter().copied());
            let mut sorted = times;
            sorted.sort_by(f64::total_cmp);
            calls.push(json!({
                "call": name,
                "median_ms": sorted[sorted.len() / 2],
                "max_ms": sorted.last().copied().unwrap_or_default(),
            }));
        };
        let samples = self.samples.max(1);
        for (name, query) in &lists {
            let times = time(samples, || inspect::jobs(&pool, query)).await?;
            record(name, times);
        }
        for (name, filter) in &counts {
            let times = time(samples, || inspect::count_jobs(&pool, filter)).await?;
            record(name, times);
        }
        record("job", time(samples, || inspect::job(&pool, some_id)).await?);
        record(
            "explain: available job",
            time(samples, || inspect::explain(&pool, available_id)).await?,
        );
        record("queues", time(samples, || inspect::queues(&pool)).await?);
        record("workers", time(samples, || inspect::workers(&pool)).await?);
        record(
            "schedules",
            time(samples, || inspect::schedules(&pool)).await?,
        );
        let options = HealthOptions::default();
        record(
            "health",
            time(samples, || inspect::health(&pool, &options)).await?,
        );
        for (name, times) in time_pages(&pool, samples, some_id, available_id).await? {
            record(&name, times);
        }
        pool.close().await;

        let total = self.finished + self.waiting + RARE as u64;
        let seconds = all.iter().sum::<f64>() / 1e3;
        Ok(Report::new("inspect", total, seconds)
            .latencies(all)
            .detail("finished", self.finished)
            .detail("waiting", self.waiting)
            .detail("samples", samples)
            .detail("calls", calls))
    }
}

/// Every dashboard page and the overview's JSON, through the router (no network), each as
/// a browser would ask for it. The overview shows health warnings from a report it keeps for
/// 30 seconds (the warm-up call reads it); `/health` runs every check each time.
async fn time_pages(
    pool: &sqlx::PgPool,
    samples: u32,
    some_id: i64,
    available_id: i64,
) -> Result<Vec<(String, Vec<f64>)>, BenchError> {
    use tower::ServiceExt as _;

    let app = crate::web::Dashboard::new(pool.clone()).router();
    let paths = [
        "/".to_owned(),
        "/jobs".to_owned(),
        "/jobs?state=failed".to_owned(),
        "/jobs?state=available&queue=default".to_owned(),
        "/jobs?queue=rare".to_owned(),
        "/jobs?args=%7B%22customer%22%3A%22c17%22%7D".to_owned(),
        format!("/jobs/{some_id}"),
        format!("/jobs/{available_id}"),
        "/queues".to_owned(),
        "/workers".to_owned(),
        "/schedules".to_owned(),
        "/health".to_owned(),
        "/api/v1/overview".to_owned(),
    ];
    let mut timed = Vec::new();
    for path in paths {
        let get = || {
            let app = app.clone();
            let path = path.clone();
            async move {
                let request = axum::http::Request::get(&path)
                    .header("host", "bench")
                    .body(axum::body::Body::empty())
                    .map_err(|error| inspect::InspectError::Invalid(error.to_string()))?;
                let response = app
                    .oneshot(request)
                    .await
                    .map_err(|error| inspect::InspectError::Invalid(error.to_string()))?;
                let status = response.status();
                // The whole body: a page is ready when it has been rendered.
                axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .map_err(|error| inspect::InspectError::Invalid(error.to_string()))?;
                if status.is_success() {
                    Ok(())
                } else {
                    Err(inspect::InspectError::Invalid(format!(
                        "{path} answered {status}"
                    )))
                }
            }
        };
        timed.push((format!("page: {path}"), time(samples, get).await?));
    }
    Ok(timed)
}

fn invalid(error: inspect::InspectError) -> BenchError {
    BenchError::Invalid(format!("inspection failed: {error}"))
}

/// Runs `call` once untimed, then `samples` times; the times in milliseconds.
async fn time<T, F, Fut>(samples: u32, call: F) -> Result<Vec<f64>, BenchError>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<T, inspect::InspectError>>,
{
    call().await.map_err(invalid)?;
    let mut times = Vec::new();
    for _ in 0..samples {
        let started = Instant::now();
        call().await.map_err(invalid)?;
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    Ok(times)
}
