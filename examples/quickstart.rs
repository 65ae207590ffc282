//! The skiplock quickstart: define jobs, enqueue them (one in the same transaction as an
//! application row), run a worker, and watch them complete — one fails once and succeeds on its
//! retry. Exits by itself in a few seconds.
//!
//! ```text
//! cargo run --example quickstart
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL from the server binaries installed on
//! this machine and removes it at exit; with `DATABASE_URL` it uses that database.
#![allow(clippy::print_stdout)]

use std::io::IsTerminal as _;
use std::time::Duration;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};
use skiplock::{Handler, Job, JobContext, JobError, JobState, NewJob, Worker};
use skiplock_testing::embedded::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;

/// Welcome a new user: enqueued in the same transaction that creates the user.
#[derive(Serialize, Deserialize)]
struct SendWelcome {
    signup_id: i64,
}

impl Job for SendWelcome {
    const KIND: &'static str = "send_welcome";
    const QUEUE: &'static str = "mail";
}

impl Handler<PgPool> for SendWelcome {
    type Output = String;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<String, JobError> {
        // The handler gets the application's pool as its state.
        let email: String =
            sqlx::query_scalar("SELECT email FROM quickstart_signups WHERE id = $1")
                .bind(self.signup_id)
                .fetch_one(ctx.state())
                .await?;
        Ok(format!("welcome mail sent to {email}"))
    }
}

/// Make a thumbnail; enqueued in bulk.
#[derive(Serialize, Deserialize)]
struct ResizeImage {
    image: String,
    width: u32,
}

impl Job for ResizeImage {
    const KIND: &'static str = "resize_image";
}

impl Handler<PgPool> for ResizeImage {
    type Output = String;

    async fn handle(self, _ctx: JobContext<PgPool>) -> Result<String, JobError> {
        tokio::time::sleep(Duration::from_millis(100)).await; // pretend to work
        Ok(format!("{} resized to {}px", self.image, self.width))
    }
}

/// Call a flaky service: the first attempt fails, the retry succeeds.
#[derive(Serialize, Deserialize)]
struct SyncInvoices {
    account: String,
}

impl Job for SyncInvoices {
    const KIND: &'static str = "sync_invoices";
    const MAX_ATTEMPTS: i32 = 3;
}

impl Handler<PgPool> for SyncInvoices {
    type Output = u32;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<u32, JobError> {
        if ctx.attempt() == 1 {
            return Err(JobError::retryable(std::io::Error::other(
                "billing service answered 503",
            )));
        }
        Ok(17) // invoices synced for `self.account`
    }

    fn backoff(_attempt: i32) -> Duration {
        Duration::from_secs(1) // retry quickly for the demo (the default starts at 2 s)
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skiplock=info".into()),
        )
        .with_target(false)
        .with_ansi(std::io::stdout().is_terminal())
        .compact()
        .init();

    // A database: DATABASE_URL, or a throwaway server removed when `_server` is dropped.
    let (url, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            println!("DATABASE_URL is not set: starting a throwaway PostgreSQL...");
            let server = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
            println!("  running on port {} (removed at exit)", server.port());
            (server.url(), Some(server))
        }
    };
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect(&url)
        .await
        .context("could not connect to the database")?;
    skiplock::migrate(&pool).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS quickstart_signups (id bigserial PRIMARY KEY, email text NOT NULL)",
    )
    .execute(&pool)
    .await?;

    // 1. Transactional enqueue: the signup row and its welcome job commit together.
    let mut tx = pool.begin().await?;
    let signup_id: i64 =
        sqlx::query_scalar("INSERT INTO quickstart_signups (email) VALUES ($1) RETURNING id")
            .bind("ada@example.com")
            .fetch_one(&mut *tx)
            .await?;
    let welcome = skiplock::enqueue(&mut *tx, &SendWelcome { signup_id }).await?;
    tx.commit().await?;

    // 2. Bulk enqueue: three jobs, one statement.
    let images = ["cat.png", "dog.png", "owl.png"].map(|image| ResizeImage {
        image: image.into(),
        width: 320,
    });
    let mut ids = skiplock::enqueue_many(
        &pool,
        images
            .iter()
            .map(NewJob::new)
            .collect::<Result<Vec<_>, _>>()?,
    )
    .await?;

    // 3. A job that fails once, then succeeds on retry.
    let invoices = SyncInvoices {
        account: "acme".into(),
    };
    ids.push(skiplock::enqueue(&pool, &invoices).await?);
    ids.insert(0, welcome);
    println!("enqueued jobs {ids:?}; starting a worker\n");

    // 4. A worker for both queues, with the pool as the handlers' state.
    let worker = Worker::builder(pool.clone(), pool.clone())
        .register::<SendWelcome>()
        .register::<ResizeImage>()
        .register::<SyncInvoices>()
        .poll_interval(Duration::from_millis(500))
        .build()?
        .start();

    // 5. Wait until every job is finished (at most 15 s), then stop the worker gracefully.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let mut finished = 0;
        for id in &ids {
            let job = skiplock::get_job(&pool, *id)
                .await?
                .context("job vanished")?;
            finished += usize::from(job.state.is_finished());
        }
        if finished == ids.len() {
            break;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "jobs did not finish within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    worker.shutdown().await?;

    println!(
        "\n{:<4} {:<14} {:<10} {:<8} result",
        "id", "kind", "state", "attempts"
    );
    for id in &ids {
        let job = skiplock::get_job(&pool, *id)
            .await?
            .context("job vanished")?;
        println!(
            "{:<4} {:<14} {:<10} {:<8} {}",
            job.id,
            job.kind,
            job.state,
            job.attempt,
            job.result.map(|r| r.to_string()).unwrap_or_default()
        );
        if job.state != JobState::Completed {
            anyhow::bail!("job {id} ended {}", job.state);
        }
    }
    println!("\nAll jobs completed. Inspect them with SQL: SELECT * FROM skiplock.jobs;");
    pool.close().await;
    Ok(())
}
