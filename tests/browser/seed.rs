//! A realistic database for the screenshots: four queues of an imagined shop (mail, media,
//! billing, reports), jobs in every state (completed with results, failed and retrying with
//! error histories, cancelled, scheduled, waiting, running with progress), a day of throughput
//! history, schedules (one paused), two live workers and one that stopped.
//!
//! The arguments are what an application would pass; each handler derives what it does from
//! them (which mail bounces, which upstream times out), so no test switches show in the pages.
#![allow(unreachable_pub, dead_code)]

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiplock::{EnqueueOptions, Handler, Job, JobContext, JobError, Schedule, WorkerHandle};
use sqlx::PgPool;

/// A welcome mail: bounces for every 16th user.
#[derive(Debug, Serialize, Deserialize)]
pub struct SendEmail {
    pub user_id: i64,
    pub template: String,
}

impl Job for SendEmail {
    const KIND: &'static str = "mailer.send_welcome_email";
    const QUEUE: &'static str = "mailers";
    const MAX_ATTEMPTS: i32 = 3;
}

impl Handler<PgPool> for SendEmail {
    type Output = Value;

    async fn handle(self, _ctx: JobContext<PgPool>) -> Result<Value, JobError> {
        tokio::time::sleep(Duration::from_millis(30)).await;
        if self.user_id % 16 == 5 {
            return Err(JobError::permanent(format!(
                "smtp: 550 5.1.1 <user{}@example.org>: recipient address rejected: mailbox unavailable",
                self.user_id
            )));
        }
        Ok(json!({ "message_id": format!("<{}.7f3a@mail.example.com>", self.user_id) }))
    }
}

/// Renditions of an uploaded photo: 40 seconds, with progress.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResizeImage {
    pub bucket: String,
    pub key: String,
    pub sizes: Vec<u32>,
}

impl Job for ResizeImage {
    const KIND: &'static str = "media.resize_image";
    const QUEUE: &'static str = "media";
    const MAX_ATTEMPTS: i32 = 5;
}

impl Handler<PgPool> for ResizeImage {
    type Output = Value;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<Value, JobError> {
        let total = 400;
        for done in 1..=total {
            tokio::time::sleep(Duration::from_millis(100)).await;
            ctx.set_progress(&json!({ "done": done, "total": total }))
                .await?;
        }
        Ok(json!({ "renditions": self.sizes.len() }))
    }
}

/// Invoices from the payment provider: account 427's upstream keeps timing out.
#[derive(Debug, Serialize, Deserialize)]
pub struct SyncInvoices {
    pub account_id: i64,
    pub since: String,
}

impl Job for SyncInvoices {
    const KIND: &'static str = "billing.sync_invoices";
    const QUEUE: &'static str = "billing";
    const MAX_ATTEMPTS: i32 = 8;
}

impl Handler<PgPool> for SyncInvoices {
    type Output = Value;

    async fn handle(self, _ctx: JobContext<PgPool>) -> Result<Value, JobError> {
        tokio::time::sleep(Duration::from_millis(80)).await;
        if self.account_id == 427 {
            return Err(JobError::retryable(std::io::Error::other(
                "stripe: GET /v1/invoices?customer=cus_427: operation timed out after 30s",
            )));
        }
        Ok(json!({ "invoices": 12 + self.account_id % 7, "created": self.account_id % 3 }))
    }

    fn backoff(attempt: i32) -> Duration {
        // Two quick retries (so the page shows a history), then a long wait.
        if attempt < 3 {
            Duration::from_millis(200)
        } else {
            Duration::from_secs(900)
        }
    }
}

/// A monthly report: October's template is broken; others take a quarter of an hour.
#[derive(Debug, Serialize, Deserialize)]
pub struct BuildReport {
    pub month: String,
    pub team: String,
    pub format: String,
}

impl Job for BuildReport {
    const KIND: &'static str = "reports.build_monthly";
    const QUEUE: &'static str = "reports";
    const MAX_ATTEMPTS: i32 = 1;
}

impl Handler<PgPool> for BuildReport {
    type Output = Value;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<Value, JobError> {
        if self.month == "2024-10" {
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Err(JobError::permanent(
                "render: template \"monthly.html\": line 88: unknown variable `revenue_eur`",
            ));
        }
        for percent in 0..=100 {
            let stage = if percent < 40 {
                "querying"
            } else {
                "rendering"
            };
            ctx.set_progress(&json!({ "percent": percent, "stage": stage }))
                .await?;
            tokio::time::sleep(Duration::from_secs(9)).await;
        }
        Ok(json!({ "pages": 42, "url": format!("s3://reports/{}/{}.pdf", self.team, self.month) }))
    }
}

/// The seeded database: a few job ids to show, and the workers to stop.
pub struct Seeded {
    pub running: i64,
    pub failed: i64,
    pub retryable: i64,
    workers: Vec<WorkerHandle>,
}

impl Seeded {
    pub async fn stop(self) {
        for worker in self.workers {
            worker.shutdown().await.expect("shutdown");
        }
    }
}

async fn enqueue<J: Job>(pool: &PgPool, job: &J, options: EnqueueOptions) -> i64 {
    skiplock::enqueue_with(pool, job, options)
        .await
        .expect("enqueue")
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(pool)
        .await
        .expect("count")
}

/// A day of history in `skiplock.job_stats` (what the throughput charts read), up to the
/// minute before `until`: busier by day, a few failures and retries.
async fn history(pool: &PgPool, until: DateTime<Utc>) {
    sqlx::query(
        "INSERT INTO skiplock.job_stats (minute, queue, kind, outcome, jobs)
         SELECT m, q.queue, q.kind, o.outcome, n
         FROM generate_series($1::timestamptz - interval '24 hours',
                              $1::timestamptz - interval '1 minute',
                              interval '1 minute') AS m,
              (VALUES ('mailers', 'mailer.send_welcome_email', 9.0),
                      ('media', 'media.resize_image', 2.0),
                      ('billing', 'billing.sync_invoices', 4.0),
                      ('reports', 'reports.build_monthly', 0.2)) AS q(queue, kind, rate),
              (VALUES ('completed', 1.0, 1.0), ('retried', 0.04, 0.3), ('failed', 0.01, 0.08))
                  AS o(outcome, share, chance),
              LATERAL (SELECT round(q.rate * o.share / o.chance
                                    * (1.1 + sin(extract(epoch FROM m) / 86400 * 2 * pi()))
                                    * (0.6 + random() * 0.8))::bigint AS n
                       WHERE random() < o.chance) AS c
         WHERE n > 0
         ON CONFLICT (minute, queue, kind, outcome) DO UPDATE SET jobs = excluded.jobs",
    )
    .bind(until)
    .execute(pool)
    .await
    .expect("throughput history");
}

/// Whether the seeded jobs settled: mail and billing done but for what waits, media and
/// reports running with progress, and every finished attempt since `start` counted by its
/// worker (what the charts and rates show).
async fn settled(pool: &PgPool, start: DateTime<Utc>) -> Option<()> {
    let busy = count(
        pool,
        "SELECT count(*) FROM skiplock.jobs WHERE queue IN ('mailers', 'billing')
           AND (state IN ('available', 'running') OR (state = 'retryable' AND attempt < 3))",
    )
    .await;
    let progressing = count(
        pool,
        "SELECT count(*) FROM skiplock.jobs WHERE state = 'running' AND progress IS NOT NULL",
    )
    .await;
    let finished = count(
        pool,
        "SELECT count(*) FROM skiplock.jobs WHERE state IN ('completed', 'failed')",
    )
    .await;
    let counted: i64 = sqlx::query_scalar(
        "SELECT coalesce(sum(jobs), 0)::bigint FROM skiplock.job_stats
         WHERE minute >= $1 AND outcome IN ('completed', 'failed')",
    )
    .bind(start)
    .fetch_one(pool)
    .await
    .expect("counted outcomes");
    (busy == 0 && progressing >= 4 && counted >= finished).then_some(())
}

/// Fills `pool`'s database and starts the workers, returning once it looks like a busy
/// afternoon.
pub async fn realistic(pool: &PgPool) -> Seeded {
    let start: DateTime<Utc> = sqlx::query_scalar("SELECT date_trunc('minute', now())")
        .fetch_one(pool)
        .await
        .expect("the database's time");
    history(pool, start).await;
    // Mail: mostly delivered, a few bounced, a batch for later.
    for user in 0..48 {
        let job = SendEmail {
            user_id: 18_000 + user,
            template: "welcome-v3".into(),
        };
        enqueue(pool, &job, EnqueueOptions::new().tag("signup")).await;
    }
    for user in 0..12 {
        let job = SendEmail {
            user_id: 19_000 + user,
            template: "trial-ending".into(),
        };
        let delay = Duration::from_secs(3600 + 120 * u64::try_from(user).unwrap_or(0));
        let options = EnqueueOptions::new().delay(delay).tag("lifecycle");
        enqueue(pool, &job, options).await;
    }
    // Media: long resizes with progress, more waiting behind them.
    let mut running = 0;
    for image in 0..9 {
        let job = ResizeImage {
            bucket: "uploads".into(),
            key: format!("photos/2024/11/IMG_{}.heic", 3100 + image),
            sizes: vec![320, 960, 2048],
        };
        let id = enqueue(pool, &job, EnqueueOptions::new().priority(1)).await;
        if image == 0 {
            running = id;
        }
    }
    // Billing: syncs that complete, one upstream that keeps timing out, a cancelled one.
    let mut retryable = 0;
    for account in 420..434 {
        let job = SyncInvoices {
            account_id: account,
            since: "2024-11-01".into(),
        };
        let id = enqueue(pool, &job, EnqueueOptions::new().tag("nightly")).await;
        if account == 427 {
            retryable = id;
        }
    }
    let job = SyncInvoices {
        account_id: 999,
        since: "2024-10-01".into(),
    };
    let cancelled = enqueue(
        pool,
        &job,
        EnqueueOptions::new().delay(Duration::from_secs(600)),
    )
    .await;
    skiplock::cancel(pool, cancelled).await.expect("cancel");
    // Reports: October's failed for good, November's is running.
    let report = |month: &str, team: &str| BuildReport {
        month: month.into(),
        team: team.into(),
        format: "pdf".into(),
    };
    let failed = enqueue(pool, &report("2024-10", "finance"), EnqueueOptions::new()).await;
    enqueue(pool, &report("2024-11", "sales"), EnqueueOptions::new()).await;

    for (name, cron, paused) in [
        ("nightly-invoice-sync", "0 2 * * *", false),
        ("monthly-report", "0 6 1 * *", false),
        ("hourly-digest", "0 * * * *", true),
    ] {
        let schedule = Schedule::new(name, cron, &report("auto", "all"))
            .expect("schedule")
            .timezone("Europe/Berlin")
            .expect("time zone");
        skiplock::schedule::add(pool, &schedule)
            .await
            .expect("add schedule");
        if paused {
            skiplock::schedule::pause(pool, name).await.expect("pause");
        }
    }

    let builder = |id: &str| {
        super::common::worker(pool)
            .id(id)
            .register::<SendEmail>()
            .register::<ResizeImage>()
            .register::<SyncInvoices>()
            .register::<BuildReport>()
    };
    // A worker that ran earlier and stopped: the workers page keeps it an hour.
    let gone = builder("web-2.prod:3310:5d02")
        .queue("mailers", 2)
        .build()
        .expect("worker")
        .start();
    super::common::eventually(Duration::from_secs(10), "web-2 to register", || async {
        let rows = count(
            pool,
            "SELECT count(*) FROM skiplock.workers WHERE id = 'web-2.prod:3310:5d02'",
        )
        .await;
        (rows == 1).then_some(())
    })
    .await;
    gone.shutdown().await.expect("shutdown");
    let web = builder("web-1.prod:4127:a9f3")
        .queue("mailers", 4)
        .queue("billing", 2)
        .build()
        .expect("worker")
        .start();
    let batch = builder("batch-1.prod:880:c71e")
        .queue("media", 3)
        .queue("reports", 1)
        .build()
        .expect("worker")
        .start();
    super::common::eventually(Duration::from_secs(60), "the seeded jobs to settle", || {
        settled(pool, start)
    })
    .await;
    Seeded {
        running,
        failed,
        retryable,
        workers: vec![web, batch],
    }
}
