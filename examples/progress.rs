//! The progress bar Celery users know: a person uploads a CSV of contacts, a job imports it row
//! by row, and the page shows a bar advancing live as the handler calls `set_progress`, then
//! the result. The page uses what skiplock ships (`skiplock::web::JobEvents` and its
//! `progress.js`): no polling loop of our own.
//!
//! ```text
//! cargo run --example progress
//! # open http://127.0.0.1:3000, download the sample CSV (10,000 contacts), upload it
//! cargo run --example progress -- --check   # does the same from a script and exits
//! ```
//!
//! Without `DATABASE_URL` it starts a throwaway PostgreSQL (removed at exit). `PORT` picks the
//! port (default 3000). The dashboard is mounted read-only at /admin/jobs, for loopback host
//! names only.
//!
//! Safe to copy: a browser may watch (and see the result of) only the imports it started,
//! which the app remembers per session cookie; on Ctrl-C the progress streams end, so open
//! pages do not hold the shutdown, and the server waits at most 5 seconds for the rest.
#![allow(clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::extract::{FromRef, Multipart, Path, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use skiplock::web::{Dashboard, JobEvents};
use skiplock::{Handler, Job, JobContext, JobError, Worker};
use skiplock_testing::embedded::EmbeddedPostgres;
use sqlx::PgPool;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// The largest upload accepted: 8 MiB.
const MAX_UPLOAD: usize = 8 << 20;
/// Progress is stored every this many rows (each store is one short UPDATE).
const PROGRESS_EVERY: usize = 100;
/// How long a shutdown waits for requests in flight once the progress streams have ended.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The cookie naming a browser's session.
const SESSION_COOKIE: &str = "import_session";

/// Which imports each browser session started: what decides who may watch a job. In memory,
/// for the example; your app knows its users, and keeps who owns what in its own tables
/// (then the check reads that, or a claim your auth middleware put in the request).
#[derive(Clone, Default)]
struct Owners(Arc<Mutex<HashMap<String, HashSet<i64>>>>);

impl Owners {
    fn add(&self, session: &str, job_id: i64) {
        let mut owners = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        owners.entry(session.to_owned()).or_default().insert(job_id);
    }

    /// Whether the request's session started job `job_id`.
    fn owns(&self, headers: &HeaderMap, job_id: i64) -> bool {
        let Some(session) = session_of(headers) else {
            return false;
        };
        let owners = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        owners
            .get(&session)
            .is_some_and(|jobs| jobs.contains(&job_id))
    }
}

/// The session cookie's value, when it looks like one of ours.
fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.to_owned())
        .filter(|value| value.len() == 32 && value.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// 16 random bytes from the operating system, as hex.
fn new_session() -> anyhow::Result<String> {
    let mut bytes = [0_u8; 16];
    getrandom::fill(&mut bytes).map_err(|error| anyhow::anyhow!("no randomness: {error}"))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

#[derive(Clone)]
struct AppState {
    pool: PgPool,
    owners: Owners,
}

impl FromRef<AppState> for PgPool {
    fn from_ref(state: &AppState) -> Self {
        state.pool.clone()
    }
}

impl FromRef<AppState> for Owners {
    fn from_ref(state: &AppState) -> Self {
        state.owners.clone()
    }
}

/// Import the CSV stored as upload `upload_id`. The file stays in its table: job arguments are
/// for ids, not megabytes.
#[derive(Serialize, Deserialize)]
struct ImportContacts {
    upload_id: i64,
}

impl Job for ImportContacts {
    const KIND: &'static str = "import_contacts";
    const QUEUE: &'static str = "imports";
}

#[derive(Serialize, Deserialize)]
struct Imported {
    imported: u64,
    skipped: u64,
}

#[derive(Serialize)]
struct Progress {
    done: usize,
    total: usize,
}

impl Handler<PgPool> for ImportContacts {
    type Output = Imported;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<Imported, JobError> {
        let csv: Option<String> = sqlx::query_scalar("SELECT body FROM uploads WHERE id = $1")
            .bind(self.upload_id)
            .fetch_optional(ctx.state())
            .await?;
        let csv = csv.ok_or_else(|| JobError::permanent("the upload is gone"))?;
        let rows: Vec<&str> = csv
            .lines()
            .skip(1)
            .filter(|line| !line.trim().is_empty())
            .collect();
        let total = rows.len();
        let (mut imported, mut skipped) = (0, 0);
        for (done, row) in rows.iter().enumerate() {
            let mut fields = row.splitn(2, ',').map(str::trim);
            match (fields.next(), fields.next()) {
                (Some(name), Some(email)) if email.contains('@') => {
                    // Row by row, as an import that validates and dedupes each contact would.
                    // A retried import skips what an earlier attempt inserted.
                    let inserted = sqlx::query(
                        "INSERT INTO contacts (upload_id, name, email) VALUES ($1, $2, $3)
                         ON CONFLICT (upload_id, email) DO NOTHING",
                    )
                    .bind(self.upload_id)
                    .bind(name)
                    .bind(email)
                    .execute(ctx.state())
                    .await?;
                    imported += inserted.rows_affected();
                }
                _ => skipped += 1,
            }
            if done % PROGRESS_EVERY == 0 {
                ctx.set_progress(&Progress { done, total }).await?;
            }
        }
        ctx.set_progress(&Progress { done: total, total }).await?;
        Ok(Imported { imported, skipped })
    }
}

struct AppError(anyhow::Error);

impl<E: Into<anyhow::Error>> From<E> for AppError {
    fn from(error: E) -> Self {
        Self(error.into())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        tracing::error!(error = %format!("{:#}", self.0), "request failed");
        (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
    }
}

fn page(title: &str, body: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <link rel=\"stylesheet\" href=\"/style.css\"></head><body><main>{body}</main>\
         <script src=\"/progress/progress.js\" defer></script></body></html>"
    ))
}

async fn home() -> Html<String> {
    page(
        "Import contacts",
        "<h1>Import contacts</h1>\
         <p>A CSV with a header line and <code>name,email</code> rows. \
         <a href=\"/sample.csv\">Download a sample of 10,000 contacts</a>.</p>\
         <form method=\"post\" action=\"/imports\" enctype=\"multipart/form-data\">\
         <input type=\"file\" name=\"file\" accept=\".csv,text/csv\" required> \
         <button type=\"submit\">Import</button></form>\
         <p class=\"muted\">Jobs: <a href=\"/admin/jobs\">dashboard</a> (read-only).</p>",
    )
}

async fn sample() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/csv"),
            (
                header::CONTENT_DISPOSITION,
                "attachment; filename=\"contacts.csv\"",
            ),
        ],
        sample_csv(10_000),
    )
}

fn sample_csv(rows: usize) -> String {
    let mut csv = String::from("name,email\n");
    for n in 0..rows {
        let _ = writeln!(csv, "Contact {n},contact{n}@example.com");
    }
    csv
}

/// Stores the upload and enqueues its import in ONE transaction, remembers that this session
/// started it, then shows its progress page.
async fn upload(
    State(pool): State<PgPool>,
    State(owners): State<Owners>,
    headers: HeaderMap,
    mut form: Multipart,
) -> Result<Response, AppError> {
    let mut body = None;
    while let Some(field) = form.next_field().await? {
        if field.name() == Some("file") {
            body = Some(field.text().await?);
        }
    }
    let Some(body) = body.filter(|b| !b.is_empty()) else {
        return Ok((StatusCode::UNPROCESSABLE_ENTITY, "choose a CSV file").into_response());
    };
    let mut tx = pool.begin().await?;
    let upload_id: i64 = sqlx::query_scalar("INSERT INTO uploads (body) VALUES ($1) RETURNING id")
        .bind(&body)
        .fetch_one(&mut *tx)
        .await?;
    let job_id = skiplock::enqueue(&mut *tx, &ImportContacts { upload_id }).await?;
    tx.commit().await?;
    let (session, new) = match session_of(&headers) {
        Some(session) => (session, false),
        None => (new_session()?, true),
    };
    owners.add(&session, job_id);
    let mut response = Redirect::to(&format!("/imports/{job_id}")).into_response();
    if new {
        let cookie = format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly; SameSite=Lax");
        response
            .headers_mut()
            .insert(header::SET_COOKIE, HeaderValue::from_str(&cookie)?);
    }
    Ok(response)
}

async fn show(
    State(pool): State<PgPool>,
    State(owners): State<Owners>,
    headers: HeaderMap,
    Path(job_id): Path<i64>,
) -> Result<Response, AppError> {
    // Another session's import is as absent as one that does not exist.
    if !owners.owns(&headers, job_id) {
        return Ok(StatusCode::NOT_FOUND.into_response());
    }
    let Some(job) = skiplock::get_job(&pool, job_id).await? else {
        return Ok(StatusCode::NOT_FOUND.into_response());
    };
    let body = if job.state.is_finished() {
        let result = job
            .result
            .and_then(|value| serde_json::from_value::<Imported>(value).ok())
            .map_or_else(
                || format!("The import ended {}.", job.state),
                |r| {
                    format!(
                        "Imported {} contacts, skipped {} rows.",
                        r.imported, r.skipped
                    )
                },
            );
        format!(
            "<h1>Import {job_id}</h1><p id=\"result\">{result}</p><p><a href=\"/\">Import another</a></p>"
        )
    } else {
        // JobEvents' script draws the bar from the job's event stream and reloads the page
        // when the job finishes, which then shows the result above.
        format!(
            "<h1>Import {job_id}</h1>\
             <div class=\"bar\" data-skiplock-job data-skiplock-events=\"/progress/jobs/{job_id}\" data-skiplock-reload>\
             <progress max=\"100\" value=\"0\"></progress> <span data-skiplock-label>waiting for a worker…</span></div>"
        )
    };
    Ok(page("Import", &body).into_response())
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css")],
        "body{font-family:system-ui,sans-serif;max-width:40rem;margin:3rem auto;padding:0 1rem}\
         progress{width:100%;height:1.2rem}.muted{color:#667}",
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "skiplock=info,progress=info".into()),
        )
        .init();
    let check = std::env::args().any(|arg| arg == "--check");
    let (url, _server) = match std::env::var("DATABASE_URL") {
        Ok(url) => (url, None),
        Err(_) => {
            let server = tokio::task::spawn_blocking(EmbeddedPostgres::start).await??;
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
        "CREATE TABLE IF NOT EXISTS uploads (id bigserial PRIMARY KEY, body text NOT NULL);
         CREATE TABLE IF NOT EXISTS contacts (
             upload_id bigint NOT NULL, name text NOT NULL, email text NOT NULL,
             PRIMARY KEY (upload_id, email))",
    )
    .execute(&pool)
    .await?;

    let worker = Worker::builder(pool.clone(), pool.clone())
        .register::<ImportContacts>()
        .build()?
        .start();
    let owners = Owners::default();
    // Ends the progress streams and the dashboard's on Ctrl-C (or when --check is done).
    let stop = CancellationToken::new();
    // Who may watch a job's progress: the session that started it (404 for anyone else).
    let events = JobEvents::new(pool.clone(), {
        let owners = owners.clone();
        move |request: &Parts, job_id| owners.owns(&request.headers, job_id)
    })
    .interval(Duration::from_millis(500))
    .shutdown_on(stop.clone());
    // Read-only (no authorizer), and only for requests addressed to this machine: a page
    // elsewhere cannot rebind a name of its own to 127.0.0.1 and read it.
    let dashboard = Dashboard::new(pool.clone())
        .allowed_hosts(["localhost", "127.0.0.1", "[::1]"])
        .shutdown_on(stop.clone());
    let app = Router::new()
        .route("/", get(home))
        .route("/style.css", get(style))
        .route("/sample.csv", get(sample))
        .route("/imports", axum::routing::post(upload))
        .route("/imports/{id}", get(show))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_UPLOAD))
        .with_state(AppState {
            pool: pool.clone(),
            owners,
        })
        .nest("/progress", events.router())
        .nest("/admin/jobs", dashboard.router());
    let port = if check {
        "0".to_owned()
    } else {
        std::env::var("PORT").unwrap_or_else(|_| "3000".into())
    };
    let listener = tokio::net::TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let address = listener.local_addr()?;
    println!("listening on http://{address}");

    let signal = stop.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            signal.cancel();
        }
    });
    let mut server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let outcome = if check {
        let outcome = tokio::task::spawn_blocking(move || check_end_to_end(address)).await?;
        stop.cancel();
        outcome
    } else {
        Ok(())
    };
    // Ctrl-C (or the end of the check) ends the progress streams and starts the graceful
    // shutdown; whatever else is in flight gets SHUTDOWN_GRACE.
    let served = tokio::select! {
        served = &mut server => Some(served),
        () = stop.cancelled() => None,
    };
    let served = match served {
        Some(served) => served,
        None => match tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await {
            Ok(served) => served,
            Err(_) => {
                tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}: closing them");
                server.abort();
                Ok(Ok(()))
            }
        },
    };
    served??;
    worker.shutdown().await?;
    pool.close().await;
    outcome
}

/// `--check`: what a person does, over HTTP: upload 10,000 contacts, follow the redirect,
/// watch the stream the page's script watches, and read the result.
fn check_end_to_end(address: std::net::SocketAddr) -> anyhow::Result<()> {
    let csv = sample_csv(10_000);
    let boundary = "skiplock-example-boundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"contacts.csv\"\r\n\
         Content-Type: text/csv\r\n\r\n{csv}\r\n--{boundary}--\r\n"
    );
    let response = http(
        address,
        &format!(
            "POST /imports HTTP/1.1\r\nHost: {address}\r\nContent-Type: multipart/form-data; boundary={boundary}\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )?;
    let location = header_of(&response, "location").context("the upload did not redirect")?;
    let cookie = header_of(&response, "set-cookie").context("the upload set no session")?;
    let cookie = cookie.split(';').next().unwrap_or_default().to_owned();
    let job_id = location.rsplit('/').next().context("a job id")?.to_owned();
    let get = |path: &str, cookie: &str| {
        http(
            address,
            &format!(
                "GET {path} HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
            ),
        )
    };
    let page = get(&location, &cookie)?;
    anyhow::ensure!(
        page.contains("data-skiplock-events"),
        "the page has no progress bar:\n{page}"
    );
    // Another browser sees neither the page nor the stream of this import.
    for path in [location.clone(), format!("/progress/jobs/{job_id}")] {
        let other = get(&path, "import_session=00000000000000000000000000000000")?;
        anyhow::ensure!(
            other.starts_with("HTTP/1.1 404"),
            "another session reads {path}:\n{other}"
        );
    }
    // The dashboard answers only for this machine's names.
    let rebound = http(
        address,
        "GET /admin/jobs HTTP/1.1\r\nHost: attacker.example\r\nConnection: close\r\n\r\n",
    )?;
    anyhow::ensure!(
        rebound.starts_with("HTTP/1.1 421"),
        "the dashboard answers another host name:\n{rebound}"
    );

    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    write!(
        stream,
        "GET /progress/jobs/{job_id} HTTP/1.1\r\nHost: {address}\r\nCookie: {cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )?;
    let mut percents = Vec::new();
    let mut finished = false;
    for line in BufReader::new(stream).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(data)?;
        if let Some(percent) = event["percent"].as_f64() {
            percents.push(percent);
        }
        if event["finished"] == true {
            anyhow::ensure!(
                event["state"] == "completed",
                "the import ended {}",
                event["state"]
            );
            finished = true;
            break;
        }
    }
    anyhow::ensure!(finished, "the stream ended before the import finished");
    let between = percents.iter().filter(|p| **p > 0.0 && **p < 100.0).count();
    anyhow::ensure!(between >= 2, "the bar did not advance live: {percents:?}");
    anyhow::ensure!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "the bar went back: {percents:?}"
    );
    let page = get(&location, &cookie)?;
    anyhow::ensure!(
        page.contains("Imported 10000 contacts, skipped 0 rows."),
        "no result:\n{page}"
    );
    println!(
        "check: imported 10,000 contacts; the bar showed {} values between 0 and 100%",
        between
    );
    Ok(())
}

/// The value of a response's header `name` (lowercase).
fn header_of(response: &str, name: &str) -> Option<String> {
    response
        .lines()
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.trim().to_owned())
}

/// One HTTP/1.1 exchange, the whole response as text.
fn http(address: std::net::SocketAddr, request: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(address)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    stream.write_all(request.as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}
