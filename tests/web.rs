//! The dashboard over HTTP, without a browser: authorization, CSRF and same-origin checks,
//! escaping, redaction, security headers, mounting under a prefix, the JSON API, and the
//! shared live poller (a hundred event streams cost the database what one does).
//! `tests/browser.rs` drives the same pages in a real Chromium.

// The load test prints its figures on stderr (docs/dashboard.md quotes them).
#![allow(clippy::print_stderr)]

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use common::database;
use skiplock::web::{Access, Dashboard, Field};
use sqlx::PgPool;
use tower::ServiceExt as _;

const SCRIPT: &str = "<script>window.__xss=1</script>";
const IMG: &str = "\"><img src=x onerror=\"window.__xss=1\">";

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, axum::http::HeaderMap, String) {
    let response: Response<Body> = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = axum::body::to_bytes(response.into_body(), 16 << 20)
        .await
        .expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

fn get(path: &str) -> Request<Body> {
    Request::get(path)
        .header(header::HOST, "dash.test")
        .body(Body::empty())
        .expect("request")
}

/// A job inserted the way another language might write it.
async fn insert(
    pool: &PgPool,
    kind: &str,
    queue: &str,
    state: &str,
    args: serde_json::Value,
) -> i64 {
    let finished = matches!(state, "completed" | "failed" | "cancelled");
    sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, queue, args, state, finished_at, tags, errors, attempt)
         VALUES ($1, $2, $3, $4::text::skiplock.job_state, CASE WHEN $5 THEN now() END, $6,
                 CASE WHEN $5 THEN jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(),
                      'kind', 'error', 'message', $7::text)) ELSE '[]' END,
                 CASE WHEN $5 THEN 1 ELSE 0 END)
         RETURNING id",
    )
    .bind(kind)
    .bind(queue)
    .bind(args)
    .bind(state)
    .bind(finished)
    .bind(vec![format!("tag{SCRIPT}")])
    .bind(format!("boom {IMG} Bearer sk_live_0123456789"))
    .fetch_one(pool)
    .await
    .expect("insert job")
}

async fn state_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("state")
}

fn full(pool: &PgPool) -> Router {
    Dashboard::new(pool.clone())
        .authorizer(|_| Access::Full)
        .router()
}

/// The CSRF cookie a page set, and the token its forms carry.
async fn token(app: &Router, path: &str) -> (String, String) {
    let (status, headers, body) = send(app, get(path)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .expect("a CSRF cookie")
        .split(';')
        .next()
        .expect("cookie pair")
        .to_owned();
    let (_, value) = cookie.split_once('=').expect("name=value");
    (cookie.clone(), value.to_owned())
}

/// Every page and API answer about job `id` answers 200 without `secret`.
async fn assert_secret_hidden(app: &Router, id: i64, secret: &str) {
    for path in [
        "/jobs".to_owned(),
        format!("/jobs/{id}"),
        "/api/v1/jobs".to_owned(),
        format!("/api/v1/jobs/{id}"),
        format!("/api/v1/jobs/{id}/explain"),
    ] {
        let (status, _, body) = send(app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.contains(secret), "{path} shows the secret: {body}");
    }
}

fn post_form(path: &str, cookie: Option<&str>, body: &str, origin: Option<&str>) -> Request<Body> {
    let mut request = Request::post(path)
        .header(header::HOST, "dash.test")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(cookie) = cookie {
        request = request.header(header::COOKIE, cookie);
    }
    if let Some(origin) = origin {
        request = request.header(header::ORIGIN, origin);
    }
    request.body(Body::from(body.to_owned())).expect("request")
}

#[tokio::test]
async fn without_an_authorizer_the_dashboard_is_read_only() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "email",
        "default",
        "available",
        serde_json::json!({"to": "a"}),
    )
    .await;
    let app = Dashboard::new(pool.clone()).router();
    for path in [
        "/",
        "/jobs",
        &format!("/jobs/{id}"),
        "/queues",
        "/workers",
        "/schedules",
        "/health",
        "/api/v1/overview",
        "/api/v1/jobs",
        &format!("/api/v1/jobs/{id}"),
    ] {
        let (status, _, body) = send(&app, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    let (_, body) = {
        let (s, _, b) = send(&app, get(&format!("/jobs/{id}"))).await;
        (s, b)
    };
    assert!(
        !body.contains("data-action=\"cancel\""),
        "a read-only page offers no action"
    );
    assert!(body.contains("read-only"));
    let (cookie, csrf) = token(&app, "/jobs").await;
    let (status, _, _) = send(
        &app,
        post_form(
            &format!("/jobs/{id}/cancel"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let json = Request::post(format!("/api/v1/jobs/{id}/cancel"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&app, json).await.0, StatusCode::FORBIDDEN);
    assert_eq!(state_of(pool, id).await, "available");
}

#[tokio::test]
async fn mutations_need_a_csrf_token_and_the_same_origin() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let app = full(pool);
    let (cookie, csrf) = token(&app, &format!("/jobs/{id}")).await;
    let path = format!("/jobs/{id}/cancel");
    let good = format!("csrf={csrf}");
    let wrong = format!("csrf={}", "0".repeat(64));
    let refused = [
        (
            "no token",
            post_form(&path, Some(&cookie), "", Some("http://dash.test")),
        ),
        (
            "no cookie",
            post_form(&path, None, &good, Some("http://dash.test")),
        ),
        (
            "wrong token",
            post_form(&path, Some(&cookie), &wrong, Some("http://dash.test")),
        ),
        (
            "another origin",
            post_form(&path, Some(&cookie), &good, Some("http://evil.test")),
        ),
        (
            "a null origin",
            post_form(&path, Some(&cookie), &good, Some("null")),
        ),
        ("cross-site fetch", {
            let mut r = post_form(&path, Some(&cookie), &good, None);
            r.headers_mut()
                .insert("sec-fetch-site", "cross-site".parse().expect("value"));
            r
        }),
        (
            "a text/plain body",
            Request::post(&path)
                .header(header::HOST, "dash.test")
                .header(header::COOKIE, &cookie)
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::from(good.clone()))
                .expect("request"),
        ),
        (
            "JSON from another origin",
            Request::post(format!("/api/v1/jobs/{id}/cancel"))
                .header(header::HOST, "dash.test")
                .header(header::ORIGIN, "http://evil.test")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::empty())
                .expect("request"),
        ),
        (
            "JSON from a browser without the token",
            Request::post(format!("/api/v1/jobs/{id}/cancel"))
                .header(header::HOST, "dash.test")
                .header(header::ORIGIN, "http://dash.test")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::empty())
                .expect("request"),
        ),
    ];
    for (what, request) in refused {
        let (status, _, body) = send(&app, request).await;
        assert!(
            status == StatusCode::FORBIDDEN || status == StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{what}: {status} {body}"
        );
        assert_eq!(
            state_of(pool, id).await,
            "available",
            "{what} changed the job"
        );
    }
    // No mutation through GET: the action paths answer GET with 405.
    assert_eq!(
        send(&app, get(&path)).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );
    assert_eq!(state_of(pool, id).await, "available");

    let (status, headers, _) = send(
        &app,
        post_form(&path, Some(&cookie), &good, Some("http://dash.test")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], format!("/jobs/{id}"));
    assert_eq!(state_of(pool, id).await, "cancelled");

    // A script (no Origin, no Sec-Fetch-Site) sends JSON.
    let retry = Request::post(format!("/api/v1/jobs/{id}/retry"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = send(&app, retry).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"changed":true}"#)
    );
    assert_eq!(state_of(pool, id).await, "available");
}

#[tokio::test]
async fn job_data_is_escaped_everywhere() {
    let db = database().await;
    let pool = db.pool();
    let hostile = serde_json::json!({ "html": SCRIPT, "attr": IMG });
    let queue = format!("q{IMG}");
    let kind = format!("k{SCRIPT}");
    let failed = insert(pool, &kind, &queue, "failed", hostile.clone()).await;
    let waiting = insert(pool, &kind, &queue, "available", hostile).await;
    let name = format!("s{SCRIPT}");
    match skiplock::Schedule::new(&name, "* * * * *", &common::Record { n: 0 }) {
        Ok(schedule) => skiplock::schedule::add(pool, &schedule)
            .await
            .expect("add schedule"),
        Err(error) => eprintln!("no schedule with a hostile name ({error}): pages still checked"),
    }
    let app = full(pool);
    for path in [
        "/".to_owned(),
        "/jobs".to_owned(),
        format!("/jobs/{failed}"),
        format!("/jobs/{waiting}"),
        "/queues".to_owned(),
        "/schedules".to_owned(),
        format!("/jobs?kind={}", urlencode(&kind)),
    ] {
        let (status, headers, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("type")
                .starts_with("text/html")
        );
        assert!(
            !body.contains("<script>window"),
            "{path} has a raw script tag"
        );
        assert!(!body.contains("<img src=x"), "{path} has a raw img tag");
        assert!(
            !body.to_lowercase().contains(" onerror=\"window"),
            "{path} has a raw handler"
        );
        let csp = headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("csp");
        assert!(
            csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
            "{csp}"
        );
        assert!(
            !body.contains("<script>") && !body.contains(" style="),
            "{path}: inline script or style"
        );
    }
    let (_, _, body) = send(&app, get(&format!("/jobs/{failed}"))).await;
    assert!(
        body.contains("&lt;script&gt;window.__xss=1&lt;/script&gt;"),
        "the payload shows as text"
    );
}

fn urlencode(value: &str) -> String {
    value
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test]
async fn a_redactor_keeps_secrets_from_every_page_and_answer() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "charge",
        "default",
        "failed",
        serde_json::json!({"card": {"api_token": "sk_live_0123456789"}, "amount": 5}),
    )
    .await;
    let app = Dashboard::new(pool.clone())
        .redact(|field, _kind, value| {
            if field == Field::Error {
                if let serde_json::Value::String(text) = value {
                    *text = text.replace("sk_live_0123456789", "[token]");
                }
            } else if let Some(card) = value.get_mut("card") {
                *card = serde_json::Value::String("[card]".into());
            }
        })
        .router();
    assert_secret_hidden(&app, id, "sk_live").await;
    let (_, _, body) = send(&app, get(&format!("/api/v1/jobs/{id}"))).await;
    assert!(
        body.contains("[card]") && body.contains("[token]") && body.contains("\"amount\":5"),
        "{body}"
    );
}

#[tokio::test]
async fn authorizers_hosts_and_headers_guard_every_route() {
    let db = database().await;
    let pool = db.pool();
    let forbidden = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Forbidden)
        .router();
    let asking = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Unauthenticated)
        .router();
    let local = Dashboard::new(pool.clone())
        .allowed_hosts(["localhost", "127.0.0.1"])
        .router();
    // Path tricks against route matching: each is refused or not found, never served past
    // the guard.
    for path in [
        "/",
        "/jobs",
        "/api/v1/jobs",
        "/api/v1/events",
        "/assets/app.js",
        "/api/v1/health/../jobs",
        "//jobs",
        "/%2e%2e/jobs",
    ] {
        let (status, headers, _) = send(&forbidden, get(path)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}");
        assert!(
            headers.contains_key(header::CONTENT_SECURITY_POLICY),
            "{path}"
        );
        let (status, headers, _) = send(&asking, get(path)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
        assert!(
            headers[header::WWW_AUTHENTICATE]
                .to_str()
                .expect("value")
                .starts_with("Basic")
        );
        let (status, _, _) = send(&local, get(path)).await;
        assert_eq!(
            status,
            StatusCode::MISDIRECTED_REQUEST,
            "{path} for host dash.test"
        );
    }
    let at_localhost = Request::get("/")
        .header(header::HOST, "localhost:8080")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&local, at_localhost).await.0, StatusCode::OK);
    let (_, headers, _) = send(
        &local,
        Request::get("/")
            .header(header::HOST, "127.0.0.1:9")
            .body(Body::empty())
            .expect("r"),
    )
    .await;
    for name in [
        "content-security-policy",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "cache-control",
    ] {
        assert!(headers.contains_key(name), "missing {name}");
    }
    let put = Request::put("/jobs/1/cancel")
        .header(header::HOST, "localhost")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&local, put).await.0, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn nested_under_a_prefix_links_cookies_and_redirects_keep_it() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "failed", serde_json::json!({})).await;
    let app = Router::new().nest("/admin/jobs", full(pool));
    let (status, headers, body) = send(&app, get("/admin/jobs")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("href=\"/admin/jobs/jobs\""),
        "links keep the prefix: {body}"
    );
    assert!(body.contains("/admin/jobs/assets/app.js"));
    let cookie = headers[header::SET_COOKIE].to_str().expect("cookie");
    assert!(
        cookie.contains("Path=/admin/jobs;")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let (cookie, csrf) = token(&app, &format!("/admin/jobs/jobs/{id}")).await;
    let (status, headers, _) = send(
        &app,
        post_form(
            &format!("/admin/jobs/jobs/{id}/retry"),
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(headers[header::LOCATION], format!("/admin/jobs/jobs/{id}"));
    assert_eq!(state_of(pool, id).await, "available");
    assert_eq!(
        send(&app, get("/admin/jobs/assets/app.css")).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_api_lists_filters_counts_and_acts_in_bulk() {
    let db = database().await;
    let pool = db.pool();
    for n in 0..5 {
        insert(
            pool,
            "email",
            "mail",
            "failed",
            serde_json::json!({"n": n, "user": 7}),
        )
        .await;
    }
    insert(
        pool,
        "email",
        "mail",
        "failed",
        serde_json::json!({"n": 9, "user": 8}),
    )
    .await;
    let app = full(pool);
    let (status, _, body) = send(
        &app,
        get("/api/v1/jobs?state=failed&args=%7B%22user%22%3A7%7D&limit=2"),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(page["jobs"].as_array().map(Vec::len), Some(2));
    let next = page["next"].as_i64().expect("a next page");
    let (_, _, body) = send(
        &app,
        get(&format!(
            "/api/v1/jobs?state=failed&args=%7B%22user%22%3A7%7D&limit=2&after={next}"
        )),
    )
    .await;
    let second: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(second["jobs"][0]["id"].as_i64().expect("id") < next);
    let (_, _, body) = send(&app, get("/api/v1/jobs/count?state=failed")).await;
    assert_eq!(body, r#"{"count":{"kind":"exact","value":6}}"#);
    for bad in [
        "/api/v1/jobs?state=nope",
        "/api/v1/jobs?limit=100000",
        "/api/v1/jobs?args=%7B",
        "/api/v1/jobs?order=random()",
    ] {
        assert_eq!(
            send(&app, get(bad)).await.0,
            StatusCode::BAD_REQUEST,
            "{bad}"
        );
    }
    let bulk = |body: &str| {
        Request::post("/api/v1/jobs/retry")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_owned()))
            .expect("request")
    };
    assert_eq!(
        send(&app, bulk(r#"{"filter": {}}"#)).await.0,
        StatusCode::BAD_REQUEST,
        "an empty filter is refused"
    );
    let (status, _, body) = send(
        &app,
        bulk(r#"{"filter": {"states": ["failed"], "args": {"user": 7}}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(report["changed"], 5);
    assert_eq!(common::count_state(pool, "failed").await, 1);
}

// ----- live updates, over real connections -----

/// Serves `app` on a free loopback port.
async fn serve(app: Router) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    address
}

/// Opens an event stream (blocking socket, read on its own thread).
fn open_stream(address: std::net::SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut stream = TcpStream::connect(address).expect("connect");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n"
    )
    .expect("request");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    BufReader::new(stream)
}

/// The data of the next event named `name`.
fn next_event(reader: &mut BufReader<TcpStream>, name: &str) -> serde_json::Value {
    let mut current = String::new();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).expect("read the stream");
        assert!(n > 0, "the stream ended");
        let line = line.trim_end();
        if let Some(event) = line.strip_prefix("event: ") {
            current = event.to_owned();
        } else if let Some(data) = line.strip_prefix("data: ")
            && current == name
        {
            return serde_json::from_str(data).expect("event data");
        }
    }
}

async fn transactions(pool: &PgPool) -> i64 {
    // Statistics are flushed when a session goes idle (at most every second): let them.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    sqlx::query_scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_database")
}

#[tokio::test]
async fn a_jobs_progress_streams_and_a_hundred_tabs_cost_what_one_does() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "import",
        "default",
        "available",
        serde_json::json!({}),
    )
    .await;
    // The dashboard's own pool: the test's queries must not count as the dashboard's.
    let dashboard_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.connect_options().clone())
        .await
        .expect("dashboard pool");
    let interval = Duration::from_millis(300);
    let address = serve(
        Dashboard::new(dashboard_pool.clone())
            .live_interval(interval)
            .router(),
    )
    .await;

    // Progress, as a handler's set_progress stores it, arrives on the job's stream.
    let path = format!("/api/v1/events?job={id}");
    let reader = std::thread::spawn({
        let path = path.clone();
        move || {
            let mut stream = open_stream(address, &path);
            let mut seen = Vec::new();
            loop {
                let event = next_event(&mut stream, "job");
                seen.push(event["percent"].as_f64());
                if event["finished"] == true {
                    return seen;
                }
            }
        }
    });
    for percent in [10, 40, 80] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        sqlx::query("UPDATE skiplock.jobs SET progress = jsonb_build_object('done', $2::int, 'total', 100) WHERE id = $1")
            .bind(id)
            .bind(percent)
            .execute(pool)
            .await
            .expect("progress");
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    sqlx::query("UPDATE skiplock.jobs SET state = 'completed', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .expect("complete");
    let seen = tokio::task::spawn_blocking(move || reader.join().expect("reader"))
        .await
        .expect("join");
    for percent in [Some(10.0), Some(40.0), Some(80.0), Some(100.0)] {
        assert!(seen.contains(&percent), "saw {seen:?}, not {percent:?}");
    }

    // The overview: one stream, then a hundred, each for the same time.
    let window = Duration::from_secs(6);
    let mut load = Vec::new();
    for tabs in [1_usize, 100] {
        let before = transactions(pool).await;
        let started = Instant::now();
        let readers: Vec<_> = (0..tabs)
            .map(|_| {
                std::thread::spawn(move || {
                    let mut stream = open_stream(address, "/api/v1/events");
                    let first = next_event(&mut stream, "overview");
                    assert!(first["queues"].is_array());
                    // Hold the stream open for the window.
                    let _ = stream
                        .get_ref()
                        .set_read_timeout(Some(Duration::from_millis(100)));
                    while started.elapsed() < window {
                        let mut line = String::new();
                        let _ = stream.read_line(&mut line);
                    }
                })
            })
            .collect();
        for reader in readers {
            tokio::task::spawn_blocking(move || reader.join().expect("reader"))
                .await
                .expect("join");
        }
        // Let the poller notice the streams are gone before the count ends.
        tokio::time::sleep(interval * 3).await;
        let after = transactions(pool).await;
        // The two reads of pg_stat_database are the test's own.
        load.push(after - before - 1);
    }
    eprintln!(
        "database transactions in {window:?} of live overview: 1 stream {}, 100 streams {}",
        load[0], load[1]
    );
    assert!(load[0] > 0, "the overview was polled");
    assert!(
        load[1] <= load[0] * 2 + 10,
        "100 streams cost {} transactions, 1 stream {}",
        load[1],
        load[0]
    );
}

#[tokio::test]
async fn every_documented_api_path_is_served() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "failed", serde_json::json!({})).await;
    let app = full(pool);
    let (status, headers, body) = send(&app, get("/api/v1/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let doc: serde_json::Value = serde_json::from_str(&body).expect("OpenAPI JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, operations) in paths {
        // The event stream never ends: tests above read it over a socket.
        if path == "/api/v1/events" {
            continue;
        }
        let concrete = path
            .replace("{id}", &id.to_string())
            .replace("{name}", "nightly");
        for method in operations.as_object().expect("operations").keys() {
            let request = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&concrete)
                .header(header::HOST, "dash.test")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(r#"{"filter": {"queues": ["nothing-here"]}}"#))
                .expect("request");
            let (status, _, body) = send(&app, request).await;
            // The router's own 404 and 405 have empty bodies; a handler's have JSON.
            assert!(
                !body.is_empty() && status != StatusCode::METHOD_NOT_ALLOWED,
                "{method} {concrete}: {status} {body:?}"
            );
        }
    }
}

// ----- the event hub: streams that end, a poller that holds nothing up -----

/// What reading an event stream gave.
#[derive(Debug, PartialEq)]
enum Sse {
    /// An event: its name and data.
    Event(String, String),
    /// The stream ended.
    End,
    /// Nothing within the time given.
    Silent,
}

/// An event stream read through `oneshot` (no socket).
struct EventBody {
    body: axum::body::BodyDataStream,
    buffer: String,
}

impl EventBody {
    async fn open(app: &Router, path: &str) -> Self {
        let response: Response<Body> = app.clone().oneshot(get(path)).await.expect("response");
        assert_eq!(response.status(), StatusCode::OK, "{path}");
        Self {
            body: response.into_body().into_data_stream(),
            buffer: String::new(),
        }
    }

    /// The next event (comments skipped), the end, or silence after `wait`.
    async fn next(&mut self, wait: Duration) -> Sse {
        use futures_util::StreamExt as _;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = None;
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event: ") {
                        name = value.to_owned();
                    } else if let Some(value) = line.strip_prefix("data: ") {
                        data = Some(value.to_owned());
                    }
                }
                if let Some(data) = data {
                    return Sse::Event(name, data);
                }
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Err(_) => return Sse::Silent,
                Ok(None) => return Sse::End,
                Ok(Some(chunk)) => {
                    let chunk = chunk.expect("a body chunk");
                    self.buffer.push_str(&String::from_utf8_lossy(&chunk));
                }
            }
        }
    }

    /// The data of the next event, which must come within `wait`.
    async fn event(&mut self, wait: Duration) -> serde_json::Value {
        match self.next(wait).await {
            Sse::Event(_, data) => serde_json::from_str(&data).expect("JSON data"),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_jobs_stream_ends_after_it_finished_and_unknown_jobs_are_not_found() {
    let db = database().await;
    let pool = db.pool();
    let done = insert(pool, "email", "default", "completed", serde_json::json!({})).await;
    let app = Dashboard::new(pool.clone())
        .live_interval(Duration::from_millis(200))
        .router();
    let mut stream = EventBody::open(&app, &format!("/api/v1/events?job={done}")).await;
    let event = stream.event(Duration::from_secs(10)).await;
    assert_eq!(event["finished"], true, "{event}");
    assert_eq!(
        stream.next(Duration::from_secs(5)).await,
        Sse::End,
        "the stream goes on after the job finished"
    );

    let (status, headers, body) = send(&app, get("/api/v1/events?job=987654321")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    let events = skiplock::web::JobEvents::new(pool.clone(), |_, _| true).router();
    assert_eq!(
        send(&events, get("/jobs/987654321")).await.0,
        StatusCode::NOT_FOUND
    );
    let mut stream = EventBody::open(&events, &format!("/jobs/{done}")).await;
    assert_eq!(
        stream.event(Duration::from_secs(10)).await["finished"],
        true
    );
    assert_eq!(stream.next(Duration::from_secs(5)).await, Sse::End);
}

#[tokio::test]
async fn an_unchanged_overview_is_sent_once() {
    let db = database().await;
    let app = Dashboard::new(db.pool().clone())
        .live_interval(Duration::from_millis(200))
        .router();
    let mut stream = EventBody::open(&app, "/api/v1/events").await;
    let first = stream.event(Duration::from_secs(10)).await;
    assert!(first["at"].is_string(), "{first}");
    // Ten rounds of the poller over a database where nothing happens. A minute may turn
    // (the last hour's buckets move): one more event then, not one a round.
    let mut more = 0;
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(2_000) {
        match stream.next(Duration::from_millis(300)).await {
            Sse::Event(..) => more += 1,
            Sse::End => panic!("the overview stream ended"),
            Sse::Silent => {}
        }
    }
    assert!(
        more <= 1,
        "{more} more overview events while nothing changed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poller_that_died_with_its_runtime_is_started_again() {
    let db = database().await;
    let pool = db.pool();
    let first = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let second = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let app = Dashboard::new(pool.clone())
        .live_interval(Duration::from_millis(200))
        .router();
    // A stream served on a runtime of its own starts the poller there; that runtime ends
    // (as a test's does), and the poller with it.
    let other = app.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async move {
            let mut stream = EventBody::open(&other, &format!("/api/v1/events?job={first}")).await;
            stream.event(Duration::from_secs(10)).await;
        });
    })
    .join()
    .expect("the other runtime");
    // This runtime's streams get a poller of their own.
    let mut stream = EventBody::open(&app, &format!("/api/v1/events?job={second}")).await;
    let event = stream.event(Duration::from_secs(10)).await;
    assert_eq!(event["id"], second);
}

#[tokio::test]
async fn more_jobs_than_one_statement_reads_are_watched() {
    let db = database().await;
    let pool = db.pool();
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO skiplock.jobs (kind, queue, args) SELECT 'email', 'default', '{}'
         FROM generate_series(1, 1001) RETURNING id",
    )
    .fetch_all(pool)
    .await
    .expect("jobs");
    let app = skiplock::web::JobEvents::new(pool.clone(), |_, _| true)
        .interval(Duration::from_millis(200))
        .router();
    let mut streams = Vec::new();
    for id in &ids {
        streams.push(EventBody::open(&app, &format!("/jobs/{id}")).await);
    }
    for (id, stream) in ids.iter().zip(&mut streams).rev().take(3) {
        assert_eq!(stream.event(Duration::from_secs(10)).await["id"], *id);
    }
    assert_eq!(
        streams[0].event(Duration::from_secs(10)).await["id"],
        ids[0]
    );
}

#[tokio::test]
async fn event_streams_end_on_shutdown_so_a_graceful_shutdown_finishes() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let stop = tokio_util::sync::CancellationToken::new();
    let dashboard = Dashboard::new(pool.clone())
        .live_interval(Duration::from_millis(200))
        .shutdown_on(stop.child_token());
    let events = skiplock::web::JobEvents::new(pool.clone(), |_, _| true)
        .interval(Duration::from_millis(200));
    let events_stop = events.shutdown_token();
    let app = Router::new()
        .nest("/admin", dashboard.router())
        .nest("/progress", events.router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listen");
    let address = listener.local_addr().expect("address");
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(stop.clone().cancelled_owned())
            .into_future(),
    );
    let readers: Vec<_> = [
        "/admin/api/v1/events".to_owned(),
        format!("/admin/api/v1/events?job={id}"),
        format!("/progress/jobs/{id}"),
    ]
    .into_iter()
    .map(|path| {
        std::thread::spawn(move || {
            let mut stream = open_stream(address, &path);
            let mut line = String::new();
            // The first event, then whatever comes until the server closes the connection.
            while stream.read_line(&mut line).expect("read") > 0 {
                line.clear();
            }
        })
    })
    .collect();
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    stop.cancel();
    events_stop.cancel();
    tokio::time::timeout(Duration::from_secs(5), server)
        .await
        .expect("the graceful shutdown waited for the open streams")
        .expect("server task")
        .expect("server");
    for reader in readers {
        tokio::task::spawn_blocking(move || reader.join().expect("reader"))
            .await
            .expect("join");
    }
}

// ----- origins, hosts and the CSRF cookie -----

/// A request as HTTP/2 gives it: no `Host` header, the authority and scheme in the URI.
fn h2(method: &str, uri: &str) -> axum::http::request::Builder {
    Request::builder().method(method).uri(uri)
}

#[tokio::test]
async fn http2_requests_without_a_host_header_pass_and_origins_match_scheme_host_and_port() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let app = full(pool);
    let (cookie, csrf) = token(&app, &format!("/jobs/{id}")).await;
    let cancel = |uri: String, origin: &str| {
        h2("POST", &uri)
            .header(header::COOKIE, &cookie)
            .header(header::ORIGIN, origin)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(Body::from(format!("csrf={csrf}")))
            .expect("request")
    };
    let path = format!("/jobs/{id}/cancel");
    // The wrong scheme, another port, a scheme no page has: refused.
    for (uri, origin) in [
        (format!("https://dash.test{path}"), "http://dash.test"),
        (format!("http://dash.test{path}"), "https://dash.test"),
        (format!("http://dash.test:8080{path}"), "http://dash.test"),
        (format!("http://dash.test{path}"), "ftp://dash.test"),
        (
            format!("http://dash.test{path}"),
            "http://dash.test.evil.test",
        ),
    ] {
        let (status, _, body) = send(&app, cancel(uri.clone(), origin)).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{uri} from {origin}: {body}");
        assert_eq!(state_of(pool, id).await, "available", "{uri} from {origin}");
    }
    // HTTP/2 from the dashboard's own page: accepted (the default port may be implied).
    let (status, _, body) = send(
        &app,
        cancel(format!("https://dash.test:443{path}"), "https://dash.test"),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(state_of(pool, id).await, "cancelled");

    // The host check reads the URI's authority when there is no Host header.
    let local = Dashboard::new(pool.clone())
        .allowed_hosts(["localhost"])
        .router();
    let at = |uri: &str| h2("GET", uri).body(Body::empty()).expect("request");
    assert_eq!(
        send(&local, at("https://localhost:8080/")).await.0,
        StatusCode::OK
    );
    assert_eq!(
        send(&local, at("https://dash.test/")).await.0,
        StatusCode::MISDIRECTED_REQUEST
    );
}

#[tokio::test]
async fn the_csrf_cookie_is_secure_over_https_and_its_path_cannot_be_forged() {
    let db = database().await;
    let pool = db.pool();
    let app = full(pool);
    let cookie_of = |headers: &axum::http::HeaderMap| {
        headers[header::SET_COOKIE]
            .to_str()
            .expect("cookie")
            .to_owned()
    };
    let (_, headers, _) = send(
        &app,
        h2("GET", "https://dash.test/jobs")
            .body(Body::empty())
            .expect("request"),
    )
    .await;
    let cookie = cookie_of(&headers);
    assert!(cookie.ends_with("; Secure"), "{cookie}");
    let (_, headers, _) = send(&app, get("/jobs")).await;
    let cookie = cookie_of(&headers);
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");

    // A prefix with a parameter puts the visitor's text in the cookie's path.
    let tenants = Router::new().nest("/t/{tenant}", full(pool));
    let (status, headers, body) = send(&tenants, get("/t/x;Domain=evil.test/jobs")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let cookie = cookie_of(&headers);
    assert!(
        cookie.contains("Path=/t/x%3BDomain=evil.test;") && !cookie.contains(";Domain"),
        "{cookie}"
    );
}

#[tokio::test]
async fn a_confirmed_bulk_action_redirects_so_a_reload_does_not_run_it_again() {
    let db = database().await;
    let pool = db.pool();
    for n in 0..3 {
        insert(pool, "email", "bulk", "failed", serde_json::json!({"n": n})).await;
    }
    let app = Router::new().nest("/admin", full(pool));
    let (cookie, csrf) = token(&app, "/admin/jobs?queue=bulk").await;
    let confirm = format!("csrf={csrf}&queue=bulk&state=failed&action=retry&confirm=yes");
    let (status, headers, body) = send(
        &app,
        post_form(
            "/admin/jobs/bulk",
            Some(&cookie),
            &confirm,
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    let location = headers[header::LOCATION].to_str().expect("location");
    assert_eq!(
        location,
        "/admin/jobs?state=failed&queue=bulk&done=3&batches=1&action=retry"
    );
    assert_eq!(common::count_state(pool, "available").await, 3);
    // The page it leads to says what was done, and loading it again does nothing.
    let (status, _, body) = send(&app, get(location)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("data-bulk-changed=\"3\"") && body.contains("jobs retried"),
        "{body}"
    );
    // A forged or odd result query is only text, or nothing.
    let (status, _, body) = send(&app, get("/admin/jobs?done=x&action=%3Cb%3E")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("data-bulk-changed"));
}

// ----- redaction gaps -----

#[tokio::test]
async fn redact_keys_covers_unparsed_json_and_error_messages() {
    let db = database().await;
    let pool = db.pool();
    // JSON serde_json cannot read (a number beyond f64): inspect gives its text.
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO skiplock.jobs (kind, queue, args, result, state, finished_at, attempt, errors)
           VALUES ('login', 'default', '{"password": "hunter2", "big": 1e400}',
                   '{"token": "hunter2", "big": 1e400}', 'completed', now(), 1,
                   jsonb_build_array(jsonb_build_object('attempt', 1, 'at', now(), 'kind', 'error',
                       'message', 'connect failed: password=hunter2 rejected')))
           RETURNING id"#,
    )
    .fetch_one(pool)
    .await
    .expect("job");
    let app = Dashboard::new(pool.clone())
        .redact_keys(["password", "token"])
        .router();
    assert_secret_hidden(&app, id, "hunter2").await;
    let (_, _, body) = send(&app, get(&format!("/api/v1/jobs/{id}"))).await;
    let job: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        job["args"]
            .as_str()
            .is_some_and(|a| a.ends_with("bytes, not shown)")),
        "{job}"
    );
    assert_eq!(
        job["errors"][0]["message"],
        "[redacted: the message mentions a redacted key]"
    );
    // Without a redactor, nothing is hidden.
    let (_, _, body) = send(&full(pool), get(&format!("/api/v1/jobs/{id}"))).await;
    assert!(body.contains("hunter2"));
}

#[tokio::test]
async fn hidden_values_cannot_be_tested_with_filters_or_unique_keys() {
    let db = database().await;
    let pool = db.pool();
    let id: i64 = sqlx::query_scalar(
        r#"INSERT INTO skiplock.jobs (kind, queue, args, unique_key, unique_states)
           VALUES ('login', 'default', '{"password": "hunter2", "user": 7}',
                   skiplock.unique_key_of('login', '{"password": "hunter2", "user": 7}'),
                   '{available}')
           RETURNING id"#,
    )
    .fetch_one(pool)
    .await
    .expect("job");
    let key: String = sqlx::query_scalar("SELECT unique_key FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("key");
    let app = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Full)
        .redact_keys(["password"])
        .router();
    let guess = urlencode(r#"{"password": "hunter2"}"#);
    for path in [
        format!("/jobs?args={guess}"),
        format!("/api/v1/jobs?args={guess}"),
        format!("/api/v1/jobs/count?args={guess}&kind=login"),
    ] {
        let (status, _, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path}: {body}");
        assert!(body.contains("redactor hides"), "{path}: {body}");
    }
    let bulk = Request::post("/api/v1/jobs/cancel")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(
            r#"{"filter": {"args": {"password": "hunter2"}}}"#,
        ))
        .expect("request");
    assert_eq!(send(&app, bulk).await.0, StatusCode::BAD_REQUEST);
    assert_eq!(state_of(pool, id).await, "available");
    // Filters on what is shown still work.
    let (status, _, body) = send(
        &app,
        get(&format!(
            "/api/v1/jobs/count?args={}",
            urlencode(r#"{"user": 7}"#)
        )),
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"count":{"kind":"exact","value":1}}"#)
    );
    // The unique key (a hash of the arguments) is hidden with them.
    for path in [format!("/jobs/{id}"), format!("/api/v1/jobs/{id}")] {
        let (status, _, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.contains(&key), "{path} shows the unique key");
        assert!(!body.contains("hunter2"), "{path}");
    }
}

/// A limit partitioned by an argument's key names the job's partition in the explanation of
/// why it waits: with a redactor, that value is hidden, as the arguments are.
#[tokio::test]
async fn a_limits_partition_is_hidden_with_the_arguments() {
    let db = database().await;
    let pool = db.pool();
    let args = serde_json::json!({"email": "alice@example.com"});
    let running = insert(pool, "send_mail", "default", "available", args.clone()).await;
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'running', attempt = 1, lease_token = 1,
                attempted_at = now(), lease_expires_at = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(running)
    .execute(pool)
    .await
    .expect("running");
    let waiting = insert(pool, "send_mail", "default", "available", args).await;
    let limit = skiplock::limits::Limit::kind("send_mail")
        .partition_by("email")
        .max_running(1);
    skiplock::limits::set(pool, &limit).await.expect("limit");
    let paths = [
        format!("/jobs/{waiting}"),
        format!("/api/v1/jobs/{waiting}/explain"),
    ];
    let (_, _, shown) = send(&full(pool), get(&paths[1])).await;
    assert!(
        shown.contains("alice@example.com"),
        "without a redactor: {shown}"
    );
    let app = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Full)
        .redact_keys(["email"])
        .router();
    for path in &paths {
        let (status, _, body) = send(&app, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(
            body.contains("held back by the limit") || body.contains("throttled"),
            "{path}: {body}"
        );
        assert!(!body.contains("alice@example.com"), "{path}: {body}");
    }
    let (_, _, explained) = send(&app, get(&paths[1])).await;
    let explained: serde_json::Value = serde_json::from_str(&explained).expect("json");
    let throttled = explained["reasons"]
        .as_array()
        .expect("reasons")
        .iter()
        .find(|reason| reason["reason"] == "throttled")
        .cloned();
    assert_eq!(
        throttled.map(|reason| reason["partition"].clone()),
        Some(serde_json::json!("[redacted]"))
    );
}

#[tokio::test]
async fn other_sessions_queries_and_addresses_are_for_full_access_only() {
    let db = database().await;
    let pool = db.pool();
    // Another application's session, idle in a transaction: the oldest horizon holder.
    let mut other = pool.acquire().await.expect("connection");
    sqlx::raw_sql("BEGIN; SELECT txid_current(); SELECT 'payroll query of another app'")
        .execute(&mut *other)
        .await
        .expect("transaction");
    let client: Option<String> = sqlx::query_scalar(
        "SELECT host(client_addr) FROM pg_stat_activity WHERE query LIKE '%payroll query%'
         AND pid <> pg_backend_pid()",
    )
    .fetch_one(pool)
    .await
    .expect("the other session");
    let read_only = Dashboard::new(pool.clone()).router();
    for path in ["/health", "/api/v1/health", "/"] {
        let (status, _, body) = send(&read_only, get(path)).await;
        assert_eq!(status, StatusCode::OK, "{path}");
        assert!(!body.contains("payroll query"), "{path} shows the query");
        if let Some(client) = &client {
            assert!(!body.contains(client.as_str()), "{path} shows {client}");
        }
    }
    let (_, _, body) = send(&full(pool), get("/api/v1/health")).await;
    assert!(
        body.contains("payroll query"),
        "full access sees it: {body}"
    );
    sqlx::raw_sql("ROLLBACK")
        .execute(&mut *other)
        .await
        .expect("rollback");
}

#[tokio::test]
async fn job_events_redact_the_progress_they_send() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "import",
        "default",
        "available",
        serde_json::json!({}),
    )
    .await;
    sqlx::query(
        r#"UPDATE skiplock.jobs SET progress = '{"done": 1, "total": 2, "api_token": "hunter2"}'
           WHERE id = $1"#,
    )
    .bind(id)
    .execute(pool)
    .await
    .expect("progress");
    let events = skiplock::web::JobEvents::new(pool.clone(), |_, _| true)
        .redact_keys(["token"])
        .router();
    let mut stream = EventBody::open(&events, &format!("/jobs/{id}")).await;
    let event = stream.event(Duration::from_secs(10)).await;
    assert_eq!(event["percent"], 50.0, "{event}");
    assert_eq!(event["progress"]["api_token"], "[redacted]", "{event}");
    assert!(!event.to_string().contains("hunter2"));
}

#[tokio::test]
async fn bulk_actions_refuse_filters_that_match_everything_and_long_arguments() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "email",
        "default",
        "failed",
        serde_json::json!({"n": 1}),
    )
    .await;
    let app = full(pool);
    let bulk = |body: String| {
        Request::post("/api/v1/jobs/retry")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body))
            .expect("request")
    };
    for filter in [r#"{"args": {}}"#, r#"{"args": []}"#, r#"{"args": null}"#] {
        let (status, _, body) = send(&app, bulk(format!(r#"{{"filter": {filter}}}"#))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{filter}: {body}");
        assert!(body.contains("matches every job"), "{filter}: {body}");
    }
    let long = "x".repeat(9 * 1024);
    let (status, _, body) = send(
        &app,
        bulk(format!(
            r#"{{"filter": {{"states": ["failed"], "args": {{"note": "{long}"}}}}}}"#
        )),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("8192 bytes"), "{body}");
    // The page's form: the same guard.
    let (cookie, csrf) = token(&app, "/jobs").await;
    let (status, _, body) = send(
        &app,
        post_form(
            "/jobs/bulk",
            Some(&cookie),
            &format!("csrf={csrf}&args=%7B%7D&action=retry&confirm=yes"),
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(state_of(pool, id).await, "failed");
    // With `args={}` alone, the list offers no bulk action.
    let (_, _, body) = send(&app, get("/jobs?args=%7B%7D")).await;
    assert!(!body.contains("data-action=\"bulk-retry\""), "{body}");
}

// ----- what the docs promise -----

#[tokio::test]
async fn api_refusals_are_json_and_get_on_an_action_path_is_405() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "default", "failed", serde_json::json!({})).await;
    let is_json_error = |headers: &axum::http::HeaderMap, body: &str| {
        headers[header::CONTENT_TYPE] == "application/json"
            && serde_json::from_str::<serde_json::Value>(body)
                .is_ok_and(|v| v["error"].as_str().is_some_and(|e| !e.is_empty()))
    };
    let forbidden = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Forbidden)
        .router();
    let asking = Dashboard::new(pool.clone())
        .authorizer(|_| Access::Unauthenticated)
        .router();
    let local = Dashboard::new(pool.clone())
        .allowed_hosts(["localhost"])
        .router();
    let read_only = Dashboard::new(pool.clone()).router();
    let cancel = || {
        Request::post(format!("/api/v1/jobs/{id}/cancel"))
            .header(header::HOST, "dash.test")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .expect("request")
    };
    for (what, app, request, status) in [
        (
            "forbidden",
            &forbidden,
            get("/api/v1/jobs"),
            StatusCode::FORBIDDEN,
        ),
        (
            "no credentials",
            &asking,
            get("/api/v1/jobs"),
            StatusCode::UNAUTHORIZED,
        ),
        (
            "unknown host",
            &local,
            get("/api/v1/jobs"),
            StatusCode::MISDIRECTED_REQUEST,
        ),
        ("read-only", &read_only, cancel(), StatusCode::FORBIDDEN),
        (
            "a text body",
            &full(pool),
            Request::post(format!("/api/v1/jobs/{id}/cancel"))
                .header(header::CONTENT_TYPE, "text/plain")
                .body(Body::empty())
                .expect("request"),
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
        ),
        (
            "an unknown API path",
            &full(pool),
            get("/api/v1/nothing"),
            StatusCode::NOT_FOUND,
        ),
    ] {
        let (got, headers, body) = send(app, request).await;
        assert_eq!(got, status, "{what}: {body}");
        assert!(is_json_error(&headers, &body), "{what}: {headers:?} {body}");
    }
    // Pages keep plain text.
    let (status, headers, _) = send(&forbidden, get("/jobs")).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .expect("type")
            .starts_with("text/plain")
    );

    // GET on every action path: 405, Allow: POST, and nothing changes.
    let app = full(pool);
    for path in [
        "/api/v1/jobs/cancel".to_owned(),
        "/api/v1/jobs/retry".to_owned(),
        "/api/v1/jobs/delete".to_owned(),
        format!("/api/v1/jobs/{id}/retry"),
        "/api/v1/schedules/nightly/run".to_owned(),
        format!("/jobs/{id}/retry"),
        "/jobs/bulk".to_owned(),
        "/schedules/nightly/pause".to_owned(),
    ] {
        let (status, headers, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{path}: {body}");
        assert_eq!(headers[header::ALLOW], "POST", "{path}");
        if path.starts_with("/api/") {
            assert!(is_json_error(&headers, &body), "{path}: {body}");
        }
    }
    assert_eq!(state_of(pool, id).await, "failed");
}

#[tokio::test]
async fn the_authorizer_sees_the_path_below_the_prefix_and_the_full_one_in_original_uri() {
    let db = database().await;
    let pool = db.pool();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let dashboard = Dashboard::new(pool.clone()).authorizer({
        let seen = seen.clone();
        move |parts: &axum::http::request::Parts| {
            let full = parts
                .extensions
                .get::<axum::extract::OriginalUri>()
                .map(|original| original.path().to_owned());
            if let Ok(mut seen) = seen.lock() {
                seen.push((parts.uri.path().to_owned(), full));
            }
            Access::ReadOnly
        }
    });
    let app = Router::new().nest("/admin/jobs", dashboard.router());
    assert_eq!(
        send(&app, get("/admin/jobs/queues")).await.0,
        StatusCode::OK
    );
    let seen = seen.lock().expect("seen").clone();
    assert_eq!(
        seen,
        vec![("/queues".to_owned(), Some("/admin/jobs/queues".to_owned()))]
    );
}

#[tokio::test]
async fn queues_pause_and_resume_from_the_page_and_the_api() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(pool, "email", "mail", "available", serde_json::json!({})).await;
    let app = full(pool);

    // The queues page offers Pause; the form (same origin, CSRF token) pauses the queue.
    let (cookie, csrf) = token(&app, "/queues").await;
    let (_, _, page) = send(&app, get("/queues")).await;
    assert!(page.contains(r#"action="/queues/mail/pause""#), "{page}");
    let (status, headers, body) = send(
        &app,
        post_form(
            "/queues/mail/pause",
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER, "{body}");
    assert_eq!(headers[header::LOCATION], "/queues");
    let paused = skiplock::queue::paused(pool).await.expect("paused");
    assert_eq!(paused.len(), 1);
    assert_eq!(
        paused[0].reason.as_deref(),
        Some("paused from the dashboard")
    );

    // Pages show it: the queue's badge, the job's explanation, a Resume button.
    let (_, _, page) = send(&app, get("/queues")).await;
    assert!(page.contains(r#"data-paused="true""#), "{page}");
    assert!(page.contains(r#"action="/queues/mail/resume""#), "{page}");
    let (_, _, job) = send(&app, get(&format!("/jobs/{id}"))).await;
    assert!(job.contains("is paused since"), "{job}");
    let (_, _, api) = send(&app, get("/api/v1/queues")).await;
    let queues: serde_json::Value = serde_json::from_str(&api).expect("json");
    assert_eq!(queues[0]["paused"]["reason"], "paused from the dashboard");

    // A script resumes it; read-only viewers can do neither.
    let resume = || {
        Request::post("/api/v1/queues/mail/resume")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .expect("request")
    };
    let read_only = Dashboard::new(pool.clone()).router();
    let (status, _, _) = send(&read_only, resume()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        skiplock::queue::paused(pool).await.expect("paused").len(),
        1
    );
    let (status, _, body) = send(&app, resume()).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"changed":true}"#)
    );
    assert!(
        skiplock::queue::paused(pool)
            .await
            .expect("paused")
            .is_empty()
    );
    let (status, _, _) = send(&app, get("/api/v1/queues/mail/pause")).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

// ----- workflows -----

/// A workflow named with a script tag: a job whose kind holds an `<img onerror>`, then a
/// group of two that wait for it. Returns its id and its jobs' ids.
async fn hostile_workflow(pool: &PgPool) -> (i64, Vec<i64>) {
    use skiplock::workflow::{Step, Workflow, chain, group};
    use skiplock::{EnqueueOptions, NewJob};
    let step = |kind: &str| {
        Step::from(NewJob::untyped(
            kind,
            serde_json::json!({}),
            EnqueueOptions::new(),
        ))
    };
    let flow = chain([
        step(&format!("k{IMG}")),
        group([step("resize"), step("resize")]),
    ]);
    let enqueued = Workflow::new(format!("w{SCRIPT}"), flow)
        .enqueue(pool)
        .await
        .expect("enqueue workflow");
    (enqueued.id, enqueued.jobs)
}

/// The ids of the job rows (`data-job="…"`) of a page.
fn job_rows(body: &str) -> Vec<i64> {
    body.split("data-job=\"")
        .skip(1)
        .filter_map(|rest| rest.split('"').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn workflow_pages_escape_names_and_kinds_and_link_jobs_both_ways() {
    let db = database().await;
    let pool = db.pool();
    let (id, jobs) = hostile_workflow(pool).await;
    let loose = insert(pool, "email", "default", "available", serde_json::json!({})).await;
    let app = full(pool);
    for path in [
        "/workflows".to_owned(),
        "/workflows?state=running".to_owned(),
        format!("/workflows/{id}"),
        format!("/jobs/{}", jobs[0]),
        format!("/jobs?workflow={id}"),
    ] {
        let (status, headers, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        assert!(
            headers[header::CONTENT_TYPE]
                .to_str()
                .expect("type")
                .starts_with("text/html")
        );
        assert!(!body.contains("<script>"), "{path} has a raw script tag");
        assert!(!body.contains("<img src=x"), "{path} has a raw img tag");
        assert!(!body.contains(" style="), "{path}: inline style");
        assert!(
            body.contains("href=\"/workflows\""),
            "{path}: no Workflows entry in the nav"
        );
    }
    let (_, _, list) = send(&app, get("/workflows")).await;
    assert!(
        list.contains("w&lt;script&gt;window.__xss=1&lt;/script&gt;"),
        "{list}"
    );
    assert!(list.contains(&format!("data-workflow=\"{id}\"")));
    assert!(list.contains("data-workflow-state=\"running\""));
    let (_, _, finished) = send(&app, get("/workflows?state=finished")).await;
    assert!(!finished.contains(&format!("data-workflow=\"{id}\"")));

    let (_, _, page) = send(&app, get(&format!("/workflows/{id}"))).await;
    assert!(page.contains("w&lt;script&gt;window.__xss=1&lt;/script&gt;"));
    assert!(
        page.contains("k&quot;&gt;&lt;img src=x onerror=&quot;window.__xss=1&quot;&gt;"),
        "the kind shows as text"
    );
    assert_eq!(job_rows(&page), jobs);
    for job in &jobs {
        assert!(
            page.contains(&format!("href=\"/jobs/{job}\"")),
            "no link to job {job}"
        );
    }
    // Both members of the group wait for the first job, and link to it.
    assert_eq!(
        page.matches(&format!("data-waits-for=\"{}\"", jobs[0]))
            .count(),
        2
    );
    assert!(page.contains("state state-pending"));
    assert!(page.contains("data-state-count=\"pending\""));
    assert!(page.contains(&format!("href=\"/jobs?workflow={id}&amp;state=pending\"")));
    assert!(
        page.contains("data-action=\"cancel\""),
        "full access sees the cancel button"
    );

    let (_, _, job) = send(&app, get(&format!("/jobs/{}", jobs[1]))).await;
    assert!(
        job.contains(&format!("href=\"/workflows/{id}\"")),
        "the job links its workflow"
    );
    let (_, _, plain) = send(&app, get(&format!("/jobs/{loose}"))).await;
    assert!(
        !plain.contains("href=\"/workflows/"),
        "a job outside workflows links none"
    );

    // The jobs list, its count and the API filter by workflow.
    let (_, _, filtered) = send(&app, get(&format!("/jobs?workflow={id}"))).await;
    let mut newest_first = jobs.clone();
    newest_first.reverse();
    assert_eq!(job_rows(&filtered), newest_first);
    assert!(
        filtered.contains("name=\"workflow\""),
        "the filter keeps the workflow"
    );
    let (status, _, body) = send(&app, get(&format!("/api/v1/jobs?workflow={id}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let page: serde_json::Value = serde_json::from_str(&body).expect("json");
    let listed: Vec<i64> = page["jobs"]
        .as_array()
        .expect("jobs")
        .iter()
        .filter_map(|j| j["id"].as_i64())
        .collect();
    assert_eq!(listed, newest_first);
    let (_, _, body) = send(
        &app,
        get(&format!("/api/v1/jobs/count?workflow={id}&state=pending")),
    )
    .await;
    assert_eq!(body, r#"{"count":{"kind":"exact","value":2}}"#);
    let (status, _, _) = send(&app, get("/api/v1/jobs?workflow=1%20OR%20true")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // The overview and the queues count pending jobs.
    let (_, _, overview) = send(&app, get("/")).await;
    assert!(overview.contains("tile tile-pending"));
    assert!(overview.contains("data-total=\"pending\">2<"), "{overview}");
    let (_, _, queues) = send(&app, get("/queues")).await;
    assert!(queues.contains("data-count=\"pending\""));

    // The API's shapes.
    let (status, _, body) = send(&app, get("/api/v1/workflows?state=running&limit=5")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(list["next"], serde_json::Value::Null);
    let first = &list["workflows"][0];
    assert_eq!(first["id"], id);
    assert_eq!(first["name"], format!("w{SCRIPT}"));
    assert_eq!(first["state"], "running");
    assert_eq!(
        (first["jobs"].as_u64(), first["unfinished"].as_u64()),
        (Some(3), Some(3))
    );
    assert_eq!(first["on_failure"], "propagate");
    assert!(first["created_at"].is_string() && first["finished_at"].is_null());
    let (status, _, body) = send(&app, get(&format!("/api/v1/workflows/{id}"))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let info: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["state"], "running");
    assert_eq!(
        info["states"],
        serde_json::json!([["pending", 2], ["available", 1]])
    );
    assert_eq!(
        info["members"][1]["depends_on"],
        serde_json::json!([jobs[0]])
    );
    assert_eq!(info["members"][0]["kind"], format!("k{IMG}"));
    let (status, _, body) = send(
        &app,
        get(&format!("/api/v1/workflows/{id}?after={}", jobs[1])),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let rest: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(rest["members"].as_array().map(Vec::len), Some(1));
    for (path, status) in [
        (
            format!("/api/v1/workflows/{}", id + 1000),
            StatusCode::NOT_FOUND,
        ),
        (
            "/api/v1/workflows?state=done".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
        (
            "/api/v1/workflows?limit=201".to_owned(),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (got, headers, body) = send(&app, get(&path)).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    }
    assert_eq!(
        send(&app, get(&format!("/workflows/{}", id + 1000)))
            .await
            .0,
        StatusCode::NOT_FOUND
    );
}

/// The state of every job of workflow `id`, and whether the workflow was marked cancelled.
async fn workflow_states(pool: &PgPool, id: i64) -> (Vec<String>, bool) {
    let states: Vec<String> = sqlx::query_scalar(
        "SELECT state::text FROM skiplock.jobs WHERE workflow_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(pool)
    .await
    .expect("states");
    let cancelled: bool =
        sqlx::query_scalar("SELECT cancelled_at IS NOT NULL FROM skiplock.workflows WHERE id = $1")
            .bind(id)
            .fetch_one(pool)
            .await
            .expect("workflow");
    (states, cancelled)
}

#[tokio::test]
async fn a_workflow_is_cancelled_only_with_full_access_the_same_origin_and_a_csrf_token() {
    let db = database().await;
    let pool = db.pool();
    let (id, _) = hostile_workflow(pool).await;
    let untouched = (
        vec![
            "available".to_owned(),
            "pending".to_owned(),
            "pending".to_owned(),
        ],
        false,
    );
    let path = format!("/workflows/{id}/cancel");

    // Read-only: no button, and the post is refused, by page and by API.
    let read_only = Dashboard::new(pool.clone()).router();
    let (status, _, page) = send(&read_only, get(&format!("/workflows/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        !page.contains("data-action=\"cancel\""),
        "a read-only page offers no cancel"
    );
    let (cookie, csrf) = token(&read_only, &format!("/workflows/{id}")).await;
    let (status, _, _) = send(
        &read_only,
        post_form(
            &path,
            Some(&cookie),
            &format!("csrf={csrf}"),
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let json = Request::post(format!("/api/v1/workflows/{id}/cancel"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .expect("request");
    assert_eq!(send(&read_only, json).await.0, StatusCode::FORBIDDEN);
    assert_eq!(workflow_states(pool, id).await, untouched);

    // Full access: every post without the token, or from elsewhere, is refused.
    let app = full(pool);
    let (cookie, csrf) = token(&app, &format!("/workflows/{id}")).await;
    let good = format!("csrf={csrf}");
    let wrong = format!("csrf={}", "0".repeat(64));
    let refused = [
        (
            "no token",
            post_form(&path, Some(&cookie), "", Some("http://dash.test")),
        ),
        (
            "no cookie",
            post_form(&path, None, &good, Some("http://dash.test")),
        ),
        (
            "wrong token",
            post_form(&path, Some(&cookie), &wrong, Some("http://dash.test")),
        ),
        (
            "another origin",
            post_form(&path, Some(&cookie), &good, Some("http://evil.test")),
        ),
        ("cross-site fetch", {
            let mut r = post_form(&path, Some(&cookie), &good, None);
            r.headers_mut()
                .insert("sec-fetch-site", "cross-site".parse().expect("value"));
            r
        }),
        (
            "JSON from a browser without the token",
            Request::post(format!("/api/v1/workflows/{id}/cancel"))
                .header(header::HOST, "dash.test")
                .header(header::ORIGIN, "http://dash.test")
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::empty())
                .expect("request"),
        ),
    ];
    for (what, request) in refused {
        let (status, _, body) = send(&app, request).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        assert_eq!(
            workflow_states(pool, id).await,
            untouched,
            "{what} cancelled"
        );
    }
    assert_eq!(
        send(&app, get(&path)).await.0,
        StatusCode::METHOD_NOT_ALLOWED
    );

    // The right post cancels every job, and says so on the page it redirects to.
    let (status, headers, _) = send(
        &app,
        post_form(&path, Some(&cookie), &good, Some("http://dash.test")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    let location = headers[header::LOCATION]
        .to_str()
        .expect("location")
        .to_owned();
    assert_eq!(location, format!("/workflows/{id}?cancelled=3&stopping=0"));
    assert_eq!(
        workflow_states(pool, id).await,
        (vec!["cancelled".to_owned(); 3], true)
    );
    let (_, _, page) = send(&app, get(&location)).await;
    assert!(page.contains("data-workflow-cancelled=\"3\""));
    assert!(page.contains("data-workflow-state=\"cancelled\""));
    assert!(
        !page.contains("data-action=\"cancel\""),
        "a finished workflow offers no cancel"
    );

    // A script cancels through the API; the answer is the counts.
    let (other, _) = hostile_workflow(pool).await;
    let script = |id: i64| {
        Request::post(format!("/api/v1/workflows/{id}/cancel"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::empty())
            .expect("request")
    };
    let (status, _, body) = send(&app, script(other)).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"cancelled":3,"stopping":0}"#)
    );
    assert_eq!(
        workflow_states(pool, other).await.0,
        vec!["cancelled".to_owned(); 3]
    );
    let (status, _, body) = send(&app, script(other + 1000)).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = send(
        &app,
        post_form(
            &format!("/workflows/{}/cancel", other + 1000),
            Some(&cookie),
            &good,
            Some("http://dash.test"),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The cancelled workflow offers a retry; posted without the token it is refused, with it
    // the workflow runs on (its first job available again, the rest waiting).
    assert!(
        page.contains("data-action=\"retry\""),
        "a cancelled workflow offers a retry"
    );
    let retry = format!("/workflows/{id}/retry");
    let (status, _, _) = send(
        &app,
        post_form(&retry, Some(&cookie), "", Some("http://dash.test")),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        workflow_states(pool, id).await.0,
        vec!["cancelled".to_owned(); 3]
    );
    let (status, headers, _) = send(
        &app,
        post_form(&retry, Some(&cookie), &good, Some("http://dash.test")),
    )
    .await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert_eq!(
        headers[header::LOCATION],
        format!("/workflows/{id}").as_str()
    );
    assert_eq!(
        workflow_states(pool, id).await,
        (
            vec![
                "available".to_owned(),
                "pending".to_owned(),
                "pending".to_owned()
            ],
            false
        )
    );
    let retried = Request::post(format!("/api/v1/workflows/{other}/retry"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .expect("request");
    let (status, _, body) = send(&app, retried).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::OK, r#"{"retried":3}"#)
    );
    let read_only_retry = Request::post(format!("/api/v1/workflows/{other}/retry"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::empty())
        .expect("request");
    assert_eq!(
        send(&read_only, read_only_retry).await.0,
        StatusCode::FORBIDDEN
    );
}

// ----- job streams pushed by notifications -----

async fn waiters_of(pool: &PgPool, id: i64) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM skiplock.job_waiters WHERE job_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("job_waiters")
}

#[tokio::test]
async fn a_jobs_stream_is_pushed_between_polls_and_its_registration_goes_with_it() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "import",
        "default",
        "available",
        serde_json::json!({}),
    )
    .await;
    // Polled once a minute: what arrives sooner was pushed.
    let app = Dashboard::new(pool.clone())
        .live_interval(Duration::from_secs(60))
        .router();
    let path = format!("/api/v1/events?job={id}");
    let mut tab = EventBody::open(&app, &path).await;
    let mut other_tab = EventBody::open(&app, &path).await;
    assert_eq!(
        tab.event(Duration::from_secs(5)).await["state"],
        "available"
    );
    assert_eq!(
        other_tab.event(Duration::from_secs(5)).await["state"],
        "available"
    );
    // Two tabs, one registration.
    assert_eq!(waiters_of(pool, id).await, 1);

    // A worker in another language claims the job and reports progress through the SQL
    // protocol, which notifies for awaited jobs.
    let token: i64 = sqlx::query_scalar(
        "SELECT lease_token FROM skiplock.claim('sql-worker', ARRAY['default'], ARRAY['import'])",
    )
    .fetch_one(pool)
    .await
    .expect("claim");
    for (done, percent) in [(1, 25.0), (3, 75.0)] {
        let stored: bool = sqlx::query_scalar(
            "SELECT skiplock.set_progress($1, $2, jsonb_build_object('done', $3::int, 'total', 4))",
        )
        .bind(id)
        .bind(token)
        .bind(done)
        .fetch_one(pool)
        .await
        .expect("set_progress");
        assert!(stored);
        for stream in [&mut tab, &mut other_tab] {
            // The claim's own event (running, no progress yet) may come apart from the first
            // progress's, or with it, as the notifications happen to arrive.
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            loop {
                let wait = deadline.saturating_duration_since(tokio::time::Instant::now());
                let event = stream.event(wait).await;
                let seen = (event["state"].as_str(), event["percent"].as_f64());
                if seen == (Some("running"), Some(percent)) {
                    break;
                }
                assert!(
                    seen.0 == Some("running") && seen.1.is_none_or(|earlier| earlier < percent),
                    "{event}"
                );
            }
        }
    }
    let completed: bool = sqlx::query_scalar("SELECT skiplock.complete($1, $2, '\"done\"')")
        .bind(id)
        .bind(token)
        .fetch_one(pool)
        .await
        .expect("complete");
    assert!(completed);
    for stream in [&mut tab, &mut other_tab] {
        let event = stream.event(Duration::from_secs(3)).await;
        assert_eq!(
            (event["finished"].as_bool(), event["percent"].as_f64()),
            (Some(true), Some(100.0)),
            "{event}"
        );
        assert!(
            event.get("result").is_none(),
            "a job event carries no result: {event}"
        );
        assert_eq!(stream.next(Duration::from_secs(3)).await, Sse::End);
    }
    drop((tab, other_tab));
    // The last stream gone, the dashboard's waiter registration goes too.
    common::eventually(
        Duration::from_secs(5),
        "the registration removed",
        || async { (waiters_of(pool, id).await == 0).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn a_hundred_streams_of_a_job_cost_what_one_does() {
    let db = database().await;
    let pool = db.pool();
    let id = insert(
        pool,
        "import",
        "default",
        "available",
        serde_json::json!({}),
    )
    .await;
    let dashboard_pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect_with(db.connect_options().clone())
        .await
        .expect("dashboard pool");
    let interval = Duration::from_millis(300);
    let address = serve(
        Dashboard::new(dashboard_pool.clone())
            .live_interval(interval)
            .router(),
    )
    .await;
    let path = format!("/api/v1/events?job={id}");
    let window = Duration::from_secs(4);
    let mut load = Vec::new();
    for tabs in [1_usize, 100] {
        let before = transactions(pool).await;
        let started = Instant::now();
        let readers: Vec<_> = (0..tabs)
            .map(|_| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let mut stream = open_stream(address, &path);
                    let first = next_event(&mut stream, "job");
                    assert_eq!(first["state"], "available");
                    let _ = stream
                        .get_ref()
                        .set_read_timeout(Some(Duration::from_millis(100)));
                    while started.elapsed() < window {
                        let mut line = String::new();
                        let _ = stream.read_line(&mut line);
                    }
                })
            })
            .collect();
        for reader in readers {
            tokio::task::spawn_blocking(move || reader.join().expect("reader"))
                .await
                .expect("join");
        }
        tokio::time::sleep(interval * 3).await;
        let after = transactions(pool).await;
        load.push(after - before - 1);
    }
    eprintln!(
        "database transactions in {window:?} of one job's stream: 1 stream {}, 100 streams {}",
        load[0], load[1]
    );
    assert!(load[0] > 0, "the job was read");
    assert!(
        load[1] <= load[0] * 2 + 10,
        "100 streams cost {} transactions, 1 stream {}",
        load[1],
        load[0]
    );
}

#[tokio::test]
async fn a_dashboard_connected_as_an_observer_shows_workflows_and_streams_pushed_progress() {
    let db = database().await;
    let pool = db.pool();
    let (workflow, jobs) = hostile_workflow(pool).await;
    let role = format!("{}_dashboard", db.name());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE ROLE {role} LOGIN")))
        .execute(pool)
        .await
        .expect("create role");
    sqlx::query("SELECT skiplock.grant_access($1::regrole, 'observer')")
        .bind(&role)
        .execute(pool)
        .await
        .expect("grant observer");
    let observer = sqlx::postgres::PgPoolOptions::new()
        .max_connections(3)
        .connect_with(db.connect_options().clone().username(&role))
        .await
        .expect("connect as the observer");
    let app = Dashboard::new(observer.clone())
        .live_interval(Duration::from_secs(60))
        .router();
    for path in [
        "/workflows".to_owned(),
        format!("/workflows/{workflow}"),
        format!("/jobs?workflow={workflow}"),
        format!("/api/v1/workflows/{workflow}"),
    ] {
        let (status, _, body) = send(&app, get(&path)).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
    }
    // The observer registers as a waiter (0017 lets it), so progress is pushed.
    let mut stream = EventBody::open(&app, &format!("/api/v1/events?job={}", jobs[0])).await;
    assert_eq!(
        stream.event(Duration::from_secs(5)).await["state"],
        "available"
    );
    let kind = format!("k{IMG}");
    let token: i64 = sqlx::query_scalar(
        "SELECT lease_token FROM skiplock.claim('sql-worker', ARRAY['default'], ARRAY[$1])",
    )
    .bind(&kind)
    .fetch_one(pool)
    .await
    .expect("claim");
    sqlx::query("SELECT skiplock.set_progress($1, $2, '{\"percent\": 40}')")
        .bind(jobs[0])
        .bind(token)
        .execute(pool)
        .await
        .expect("set_progress");
    let event = stream.event(Duration::from_secs(3)).await;
    assert_eq!(event["percent"], 40.0, "{event}");
    drop(stream);
    drop(app);
    common::eventually(
        Duration::from_secs(5),
        "the registration removed",
        || async { (waiters_of(pool, jobs[0]).await == 0).then_some(()) },
    )
    .await;
    tokio::time::timeout(Duration::from_secs(10), observer.close())
        .await
        .expect("the dashboard gave its connections back");
    for sql in [format!("DROP OWNED BY {role}"), format!("DROP ROLE {role}")] {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(pool)
            .await
            .expect("drop the role");
    }
}

/// The queues page lists the limits (escaped) with their running counts, `GET /api/v1/limits`
/// answers them, and a held job's page says which limit holds it back.
#[tokio::test]
async fn limits_are_listed_on_the_queues_page_and_in_the_api_and_explained_on_a_job() {
    let db = database().await;
    let pool = db.pool();
    let (_, _, page) = send(&full(pool), get("/queues")).await;
    assert!(page.contains("No concurrency or rate limit"), "{page}");
    let running = insert(pool, "email", "mail", "available", serde_json::json!({})).await;
    sqlx::query(
        "UPDATE skiplock.jobs SET state = 'running', attempt = 1, lease_token = 1,
                attempted_at = now(), lease_expires_at = now() + interval '1 hour' WHERE id = $1",
    )
    .bind(running)
    .execute(pool)
    .await
    .expect("running");
    let waiting = insert(pool, "email", "mail", "available", serde_json::json!({})).await;
    skiplock::limits::set(pool, &skiplock::limits::Limit::queue("mail").max_running(1))
        .await
        .expect("limit");
    skiplock::limits::set(
        pool,
        &skiplock::limits::Limit::kind(SCRIPT)
            .partition_by(IMG)
            .max_running(2),
    )
    .await
    .expect("limit");
    let app = full(pool);
    let (status, _, page) = send(&app, get("/queues")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(page.contains(r#"id="limits""#), "{page}");
    assert!(
        !page.contains(SCRIPT) && !page.contains(IMG),
        "escaped: {page}"
    );
    assert!(page.contains("full"), "the mail limit is reached: {page}");

    let (status, _, api) = send(&app, get("/api/v1/limits")).await;
    assert_eq!(status, StatusCode::OK);
    let limits: serde_json::Value = serde_json::from_str(&api).expect("json");
    assert_eq!(
        limits[0]["scope"],
        serde_json::json!({"type": "queue", "name": "mail"})
    );
    assert_eq!(limits[0]["max_running"], 1);
    assert_eq!(limits[0]["running"], 1);
    assert_eq!(limits[1]["partition_key"], IMG);

    let (_, _, job) = send(&app, get(&format!("/jobs/{waiting}"))).await;
    assert!(
        job.contains("held back by the limit on queue mail"),
        "{job}"
    );
    let (_, _, explained) = send(&app, get(&format!("/api/v1/jobs/{waiting}/explain"))).await;
    let explained: serde_json::Value = serde_json::from_str(&explained).expect("json");
    assert!(
        explained["reasons"]
            .as_array()
            .expect("reasons")
            .iter()
            .any(|r| r["reason"] == "throttled" && r["running"] == 1),
        "{explained}"
    );
}
