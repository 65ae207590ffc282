//! The dashboard (`skiplock::web`) in a real browser: headless Chromium driven through
//! chromedriver (WebDriver), against a real server on loopback and a fresh database per test,
//! the dashboard nested under `/admin/jobs`. Any error in the browser's console fails the
//! test that caused it.
//!
//! Needs `chromium` and `chromium-driver` (Debian's names). Without them each test says why on
//! stderr and passes, unless `SKIPLOCK_REQUIRE_BROWSER=1` (set by .ci/run): then their absence
//! fails it. See tests/browser/harness.rs.
//!
//! `scripts/screenshots.sh` runs the ignored `screenshots` test, which writes a PNG of every
//! page (light and dark) into `SKIPLOCK_SCREENSHOTS` (default `docs/screenshots`).

// The tests say on stderr why they skipped, and where they wrote screenshots.
#![allow(clippy::print_stderr)]

mod common;
#[path = "browser/harness.rs"]
mod harness;
#[path = "browser/seed.rs"]
mod seed;

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::Html;
use axum::routing::get;
use common::{Fail, database, eventually, wait_for_state, worker};
use harness::{Browser, Server, save_png, with_browser};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use skiplock::web::{Access, Dashboard};
use skiplock::{EnqueueOptions, Handler, Job, JobContext, JobError, NewJob, Schedule};
use sqlx::PgPool;

/// Where the dashboard is mounted in the host application.
const PREFIX: &str = "/admin/jobs";

/// The host application: the dashboard (every request may act) nested under [`PREFIX`],
/// polling for live updates every 200 ms, plus `extra` routes of the test's own.
async fn serve_dashboard(pool: &PgPool, extra: axum::Router) -> Server {
    let dashboard = Dashboard::new(pool.clone())
        .authorizer(|_parts: &axum::http::request::Parts| Access::Full)
        .live_interval(Duration::from_millis(200))
        .router();
    Server::local(axum::Router::new().nest(PREFIX, dashboard).merge(extra)).await
}

/// The URL of the dashboard's `path` (`""` for its root).
fn page(server: &Server, path: &str) -> String {
    server.url(&format!("{PREFIX}{path}"))
}

/// The job's state, from the database.
async fn state_of(pool: &PgPool, id: i64) -> String {
    sqlx::query_scalar("SELECT state::text FROM skiplock.jobs WHERE id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .expect("the job's state")
}

/// Waits up to 10 s for job `id` to be in `want`: an action clicked on a page that posts back to
/// the same URL may be awaited before its navigation has begun.
async fn expect_state(pool: &PgPool, id: i64, want: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let state = state_of(pool, id).await;
        if state == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {id} is {state}, not {want}, after 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn paused(pool: &PgPool, name: &str) -> bool {
    sqlx::query_scalar("SELECT paused FROM skiplock.schedules WHERE name = $1")
        .bind(name)
        .fetch_one(pool)
        .await
        .expect("the schedule")
}

/// Enqueues `kind` with `args` and `options` (no worker runs it unless the test starts one).
async fn enqueue(pool: &PgPool, kind: &str, args: Value, options: EnqueueOptions) -> i64 {
    skiplock::enqueue_new(pool, &NewJob::untyped(kind, args, options))
        .await
        .expect("enqueue")
}

/// Clicks the button `data-action=action` (inside `scope`, a CSS selector), accepts the
/// confirmation the page may ask for, and waits until the browser shows `then` again.
async fn click_action(browser: &Browser, scope: &str, action: &str, then: &str) {
    let button = browser
        .element(&format!("{scope} button[data-action=\"{action}\"]"))
        .await;
    // Marks this document: the post may come back to the same URL, so only a document
    // without the mark is the answer.
    browser
        .eval("window.__skiplockBefore = true; return 'marked'")
        .await;
    button
        .click()
        .await
        .unwrap_or_else(|error| panic!("click {action}: {error}"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        // A confirm() the page's script opens: accept it (none is fine too).
        let _ = browser.client().accept_alert().await;
        let url = browser.url().await;
        if url == then
            && browser.eval("return document.readyState").await == "complete"
            && browser
                .eval("return window.__skiplockBefore === undefined ? 'new' : 'old'")
                .await
                == "new"
        {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let text = browser.eval("return document.body?.innerText ?? ''").await;
            panic!("{action}: still not back on {then} after 10 s, but on {url}, saying {text}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A job that reports progress in `steps` steps, `millis` apart, as `{done, total}`.
#[derive(Debug, Serialize, Deserialize)]
struct Steps {
    steps: u32,
    millis: u64,
}

impl Job for Steps {
    const KIND: &'static str = "steps";
}

impl Handler<PgPool> for Steps {
    type Output = ();

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<(), JobError> {
        for done in 1..=self.steps {
            tokio::time::sleep(Duration::from_millis(self.millis)).await;
            ctx.set_progress(&json!({ "done": done, "total": self.steps }))
                .await?;
        }
        Ok(())
    }
}

/// Fails for good with its message, or completes with it as its result.
#[derive(Debug, Serialize, Deserialize)]
struct Echo {
    message: String,
    fail: bool,
}

impl Job for Echo {
    const KIND: &'static str = "echo";
    const MAX_ATTEMPTS: i32 = 1;
}

impl Handler<PgPool> for Echo {
    type Output = String;

    async fn handle(self, ctx: JobContext<PgPool>) -> Result<String, JobError> {
        ctx.set_progress(&json!({ "step": self.message })).await?;
        if self.fail {
            Err(JobError::permanent(self.message))
        } else {
            Ok(self.message)
        }
    }
}

/// Checks the page the browser shows: no console error, its stylesheet and script loaded,
/// and every link of the dashboard's own stays below [`PREFIX`].
async fn check_page(browser: &Browser, what: &str) {
    browser.assert_no_console_errors(what).await;
    let report = browser
        .eval(
            "const sheets = [...document.styleSheets].filter(s => s.href && s.href.includes('/assets/'));
             const rules = sheets.reduce((n, s) => n + s.cssRules.length, 0);
             const scripts = [...document.scripts].map(s => s.src);
             const links = [...document.querySelectorAll('a[href], form[action]')]
                 .map(e => new URL(e.getAttribute('href') ?? e.getAttribute('action'), location.href))
                 .filter(u => u.origin === location.origin)
                 .map(u => u.pathname);
             return { title: document.title, rules, scripts, links,
                      h1: document.querySelector('h1')?.textContent ?? '' };",
        )
        .await;
    let rules = report["rules"].as_u64().unwrap_or(0);
    assert!(rules > 0, "{what}: the stylesheet did not load: {report}");
    let scripts = report["scripts"].as_array().cloned().unwrap_or_default();
    assert!(
        !scripts.is_empty()
            && scripts.iter().all(|src| src
                .as_str()
                .is_some_and(|src| src.contains(&format!("{PREFIX}/assets/")))),
        "{what}: scripts must be the dashboard's own, below {PREFIX}: {scripts:?}"
    );
    let links = report["links"].as_array().cloned().unwrap_or_default();
    let outside: Vec<&Value> = links
        .iter()
        .filter(|path| {
            !path
                .as_str()
                .is_some_and(|p| p == PREFIX || p.starts_with(&format!("{PREFIX}/")))
        })
        .collect();
    assert!(
        outside.is_empty(),
        "{what}: links leave the dashboard's prefix {PREFIX}: {outside:?}"
    );
    let title = report["title"].as_str().unwrap_or_default();
    assert!(
        !title.is_empty() && !title.starts_with("Error"),
        "{what}: an error page: {report}"
    );
}

#[tokio::test]
async fn every_page_loads_without_console_errors() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        // A bit of everything: finished, failed and waiting jobs, a schedule, a live worker.
        let running = common::start(
            worker(&pool)
                .id("browser-worker")
                .register::<Echo>()
                .register::<Steps>(),
        );
        skiplock::enqueue(
            &pool,
            &Echo {
                message: "done".into(),
                fail: false,
            },
        )
        .await
        .expect("enqueue");
        let failed = skiplock::enqueue(
            &pool,
            &Echo {
                message: "boom".into(),
                fail: true,
            },
        )
        .await
        .expect("enqueue");
        let slow = skiplock::enqueue(
            &pool,
            &Steps {
                steps: 50,
                millis: 200,
            },
        )
        .await
        .expect("enqueue");
        let waiting = enqueue(
            &pool,
            "nobody_runs_this",
            json!({ "n": 1 }),
            EnqueueOptions::new().queue("idle"),
        )
        .await;
        let schedule = Schedule::untyped(
            "nightly",
            "0 3 * * *",
            "echo",
            json!({ "message": "hi", "fail": false }),
        )
        .expect("schedule");
        skiplock::schedule::add(&pool, &schedule)
            .await
            .expect("add schedule");
        wait_for_state(&pool, "failed", 1, Duration::from_secs(10)).await;
        let flow = workflow_of(&pool, "nightly import").await;

        let server = serve_dashboard(&pool, axum::Router::new()).await;
        let pages = [
            ("overview", String::new()),
            ("jobs", "/jobs".to_owned()),
            (
                "failed jobs",
                "/jobs?state=failed&order=oldest&limit=5".to_owned(),
            ),
            ("a failed job", format!("/jobs/{failed}")),
            ("a running job", format!("/jobs/{slow}")),
            ("a waiting job", format!("/jobs/{waiting}")),
            ("a pending job", format!("/jobs/{}", flow.1[1])),
            ("workflows", "/workflows".to_owned()),
            ("a workflow", format!("/workflows/{}", flow.0)),
            ("a workflow's jobs", format!("/jobs?workflow={}", flow.0)),
            ("queues", "/queues".to_owned()),
            ("workers", "/workers".to_owned()),
            ("schedules", "/schedules".to_owned()),
            ("health", "/health".to_owned()),
        ];
        for (what, path) in pages {
            browser.goto(&page(&server, &path)).await;
            browser.eval("window.__loaded = true; return null").await;
            // Live pages get a few updates (every 200 ms) before the console is read, and
            // apply them in place: none of these reloads itself (no job finishes meanwhile).
            tokio::time::sleep(Duration::from_millis(600)).await;
            check_page(&browser, what).await;
            let reloaded = browser.eval("return window.__loaded !== true").await;
            assert_eq!(reloaded, false, "{what} reloaded itself");
        }
        // The navigation works by clicking, too: every entry leads to a page of its own.
        browser.goto(&page(&server, "")).await;
        let entries = browser
            .eval("return [...document.querySelectorAll('header nav a')].map(a => a.href)")
            .await;
        let entries: Vec<String> = serde_json::from_value(entries).expect("nav links");
        assert!(entries.len() >= 6, "the navigation: {entries:?}");
        for (index, href) in entries.iter().enumerate() {
            let link = browser
                .element(&format!("header nav a:nth-of-type({})", index + 1))
                .await;
            link.click().await.expect("click a navigation entry");
            eventually(
                Duration::from_secs(5),
                &format!("navigation to {href}"),
                || async { (browser.url().await == *href).then_some(()) },
            )
            .await;
            check_page(&browser, href).await;
        }
        running.shutdown().await.expect("shutdown");
    })
    .await;
}

#[tokio::test]
async fn actions_clicked_in_the_browser_change_the_database() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        // A failed job: one permanent failure under a real worker, which then stops.
        let failed = skiplock::enqueue(
            &pool,
            &Fail {
                mode: "permanent".into(),
            },
        )
        .await
        .expect("enqueue");
        common::with_worker(worker(&pool).register::<Fail>(), async {
            wait_for_state(&pool, "failed", 1, Duration::from_secs(10)).await;
        })
        .await;
        // An available job nobody runs, and a schedule.
        let waiting = enqueue(&pool, "nobody_runs_this", json!({}), EnqueueOptions::new()).await;
        let schedule = Schedule::untyped("nightly", "0 3 * * *", "record", json!({ "n": 1 }))
            .expect("schedule");
        skiplock::schedule::add(&pool, &schedule)
            .await
            .expect("add schedule");
        let server = serve_dashboard(&pool, axum::Router::new()).await;

        // Cancel the available job, after the overview was opened in another tab (which must
        // not replace the CSRF token the job page's forms carry).
        let url = page(&server, &format!("/jobs/{waiting}"));
        browser.goto(&url).await;
        let client = browser.client();
        let job_tab = client.window().await.expect("this tab");
        let tab = client.new_window(true).await.expect("a new tab");
        client
            .switch_to_window(tab.handle)
            .await
            .expect("to the new tab");
        browser.goto(&page(&server, "")).await;
        check_page(&browser, "the overview in a second tab").await;
        client.close_window().await.expect("close the tab");
        client
            .switch_to_window(job_tab)
            .await
            .expect("back to the job");
        expect_state(&pool, waiting, "available").await;
        click_action(&browser, "main", "cancel", &url).await;
        expect_state(&pool, waiting, "cancelled").await;
        // The page shows the new state (once the post's navigation has landed).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !browser.text("#job-state").await.contains("cancelled") {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page shows the new state"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Retry it, and the failed one.
        click_action(&browser, "main", "retry", &url).await;
        expect_state(&pool, waiting, "available").await;
        let url = page(&server, &format!("/jobs/{failed}"));
        browser.goto(&url).await;
        click_action(&browser, "main", "retry", &url).await;
        expect_state(&pool, failed, "available").await;

        // Pause the schedule, then resume it.
        let url = page(&server, "/schedules");
        browser.goto(&url).await;
        assert!(!paused(&pool, "nightly").await);
        click_action(&browser, "main", "pause", &url).await;
        assert!(paused(&pool, "nightly").await, "paused from the browser");
        click_action(&browser, "main", "resume", &url).await;
        assert!(!paused(&pool, "nightly").await, "resumed from the browser");
        browser.assert_no_console_errors("after the actions").await;
    })
    .await;
}

/// A workflow named `name` of jobs no worker runs: one, then two that wait for it. Its id and
/// its jobs' ids.
async fn workflow_of(pool: &PgPool, name: &str) -> (i64, Vec<i64>) {
    use skiplock::workflow::{Step, Workflow, chain, group};
    let step = |kind: &str| Step::from(NewJob::untyped(kind, json!({}), EnqueueOptions::new()));
    let flow = chain([
        step("nobody_runs_this"),
        group([step("nobody_runs_this"), step("nobody_runs_this")]),
    ]);
    let enqueued = Workflow::new(name, flow)
        .enqueue(pool)
        .await
        .expect("enqueue a workflow");
    (enqueued.id, enqueued.jobs)
}

#[tokio::test]
async fn a_workflow_is_found_from_its_job_and_cancelled_from_its_page() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        let (id, jobs) = workflow_of(&pool, PAYLOADS[0]).await;
        let server = serve_dashboard(&pool, axum::Router::new()).await;

        // From a pending job's page to its workflow, by its link.
        browser
            .goto(&page(&server, &format!("/jobs/{}", jobs[2])))
            .await;
        check_page(&browser, "a pending job").await;
        assert!(browser.text("#job-state").await.contains("pending"));
        let link = browser.element("a[data-workflow]").await;
        link.click().await.expect("click the workflow link");
        let url = page(&server, &format!("/workflows/{id}"));
        eventually(Duration::from_secs(5), "the workflow page", || async {
            (browser.url().await == url).then_some(())
        })
        .await;
        check_page(&browser, "the workflow").await;
        // The hostile name is text, and ran nothing.
        assert!(browser.text("h1").await.contains(PAYLOADS[0]));
        assert_eq!(
            browser.eval("return window.__xss ?? null").await,
            Value::Null
        );
        let waits = browser
            .eval(
                "return [...document.querySelectorAll('[data-waits-for]')].map(a => a.textContent)",
            )
            .await;
        assert_eq!(waits, json!([jobs[0].to_string(), jobs[0].to_string()]));

        // Cancel it: the confirmation is accepted, every job is cancelled.
        for job in &jobs {
            assert_ne!(state_of(&pool, *job).await, "cancelled");
        }
        let done = format!("{url}?cancelled=3&stopping=0");
        click_action(&browser, "main", "cancel", &done).await;
        for job in &jobs {
            expect_state(&pool, *job, "cancelled").await;
        }
        let cancelled: bool = sqlx::query_scalar(
            "SELECT cancelled_at IS NOT NULL FROM skiplock.workflows WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&pool)
        .await
        .expect("the workflow");
        assert!(cancelled);
        assert!(browser.text("#workflow-state").await.contains("cancelled"));
        assert!(browser.text(".flash").await.contains("3 jobs cancelled"));
        assert_eq!(
            browser
                .eval("return document.querySelectorAll('button[data-action=\"cancel\"]').length")
                .await,
            json!(0),
            "a finished workflow offers no cancel"
        );
        check_page(&browser, "the cancelled workflow").await;

        // The list shows it cancelled.
        browser.goto(&page(&server, "/workflows")).await;
        check_page(&browser, "the workflows").await;
        assert!(
            browser
                .text(&format!("tr[data-workflow=\"{id}\"]"))
                .await
                .contains("cancelled")
        );
    })
    .await;
}

#[tokio::test]
async fn progress_advances_live_while_the_job_runs() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        let server = serve_dashboard(&pool, axum::Router::new()).await;
        let id = skiplock::enqueue(
            &pool,
            &Steps {
                steps: 8,
                millis: 400,
            },
        )
        .await
        .expect("enqueue");
        browser.goto(&page(&server, &format!("/jobs/{id}"))).await;
        // Marks this document: a reload would lose the mark.
        browser
            .eval("window.__noReload = 'still here'; return null")
            .await;
        let running = common::start(worker(&pool).register::<Steps>());
        let mut seen: Vec<f64> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = browser
                .eval(
                    "const bar = document.getElementById('job-progress');
                     return { percent: bar && bar.getAttribute('data-percent'),
                              state: document.getElementById('job-state')?.textContent.trim(),
                              mark: window.__noReload ?? null };",
                )
                .await;
            let percent = now["percent"].as_str().and_then(|p| p.parse::<f64>().ok());
            if let Some(percent) = percent
                && seen.last() != Some(&percent)
            {
                seen.push(percent);
            }
            if now["state"]
                .as_str()
                .is_some_and(|state| state.contains("completed"))
            {
                // Then the page reloads itself, once, to show the outcome.
                break;
            }
            assert_eq!(
                now["mark"], "still here",
                "the page reloaded while the job ran: {now}"
            );
            assert!(
                tokio::time::Instant::now() < deadline,
                "the page never showed the job completed: {now}, progress seen {seen:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        running.shutdown().await.expect("shutdown");
        expect_state(&pool, id, "completed").await;
        // Several steps between 0 and 100 were shown as they happened, never going back.
        let between = seen.iter().filter(|p| **p > 0.0 && **p < 100.0).count();
        assert!(between >= 3, "too few live progress updates: {seen:?}");
        assert!(
            seen.windows(2).all(|pair| pair[0] < pair[1]),
            "progress went backwards: {seen:?}"
        );
    })
    .await;
}

const PAYLOADS: [&str; 2] = [
    "<script>window.__xss=1</script>",
    "\"><img src=x onerror=\"window.__xss=1\">",
];

/// Jobs whose every field carries `payload`.
async fn hostile_jobs(pool: &PgPool, payload: &str) -> Vec<i64> {
    let options = || {
        EnqueueOptions::new()
            .queue(payload)
            .tag(payload)
            .tag(format!("x{payload}"))
    };
    let waiting = enqueue(
        pool,
        payload,
        json!({ payload: payload, "note": payload }),
        options(),
    )
    .await;
    let failed = skiplock::enqueue_with(
        pool,
        &Echo {
            message: payload.into(),
            fail: true,
        },
        options(),
    )
    .await
    .expect("enqueue");
    let completed = skiplock::enqueue_with(
        pool,
        &Echo {
            message: payload.into(),
            fail: false,
        },
        options(),
    )
    .await
    .expect("enqueue");
    vec![waiting, failed, completed]
}

/// Nothing the page shows ran or became an element, and `payload` is shown as text.
async fn assert_inert(browser: &Browser, payload: &str, what: &str) {
    let report = browser
        .eval(
            "return { xss: typeof window.__xss,
                      injected: document.querySelectorAll('img[src=x], [onerror], script:not([src])').length,
                      text: document.body.innerText };",
        )
        .await;
    assert_eq!(report["xss"], "undefined", "{what}: a payload ran");
    assert_eq!(report["injected"], 0, "{what}: a payload became an element");
    let text = report["text"].as_str().unwrap_or_default();
    assert!(
        text.contains(payload),
        "{what}: {payload:?} is not shown as text:\n{text}"
    );
}

#[tokio::test]
async fn job_data_is_shown_as_text_and_never_runs() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        let mut jobs = Vec::new();
        for payload in PAYLOADS {
            jobs.push((payload, hostile_jobs(&pool, payload).await));
        }
        common::with_worker(
            worker(&pool)
                .queue(PAYLOADS[0], 2)
                .queue(PAYLOADS[1], 2)
                .register::<Echo>(),
            async {
                wait_for_state(&pool, "failed", 2, Duration::from_secs(10)).await;
                wait_for_state(&pool, "completed", 2, Duration::from_secs(10)).await;
            },
        )
        .await;
        let server = serve_dashboard(&pool, axum::Router::new()).await;
        for (payload, ids) in jobs {
            let encoded: String =
                url::form_urlencoded::byte_serialize(payload.as_bytes()).collect();
            let lists = [
                "/jobs".to_owned(),
                format!("/jobs?kind={encoded}"),
                format!("/jobs?queue={encoded}"),
                format!("/jobs?tag={encoded}"),
                format!("/jobs?state=failed&queue={encoded}"),
            ];
            for path in lists {
                browser.goto(&page(&server, &path)).await;
                assert_inert(&browser, payload, &path).await;
            }
            for id in ids {
                let path = format!("/jobs/{id}");
                browser.goto(&page(&server, &path)).await;
                assert_inert(&browser, payload, &path).await;
            }
        }
        for path in ["", "/queues"] {
            browser.goto(&page(&server, path)).await;
            tokio::time::sleep(Duration::from_millis(500)).await;
            for payload in PAYLOADS {
                assert_inert(&browser, payload, &format!("{PREFIX}{path}")).await;
            }
        }
    })
    .await;
}

/// The harness itself: a page's console errors (a `console.error` and an uncaught exception)
/// are read back, so a dashboard page that logs one fails its test.
#[tokio::test]
async fn harness_reads_the_browser_console() {
    let page = Html(
        "<!doctype html><title>t</title><p id=x>ok</p>\
         <script>console.error('deliberate'); undefinedFunction();</script>",
    );
    let server =
        Server::local(axum::Router::new().route("/", get(move || async move { page }))).await;
    let url = server.url("/");
    with_browser(|browser| async move {
        browser.goto(&url).await;
        assert_eq!(browser.text("#x").await, "ok");
        let errors = browser.forget_console(|entry| entry.is_severe()).await;
        let messages: Vec<&str> = errors.iter().map(|entry| entry.message.as_str()).collect();
        assert!(
            messages.iter().any(|m| m.contains("deliberate"))
                && messages.iter().any(|m| m.contains("undefinedFunction")),
            "expected both errors in the console, got {messages:?}"
        );
    })
    .await;
}

/// A page that posts a form to `action` with `csrf` as soon as it loads.
fn attacker_page(action: &str, csrf: &str) -> Html<String> {
    Html(format!(
        "<!doctype html><title>win a prize</title><link rel=icon href=\"data:,\">\
         <form id=f method=post action=\"{action}\">\
         <input type=hidden name=csrf value=\"{csrf}\"></form>\
         <script>document.getElementById('f').submit()</script>"
    ))
}

#[tokio::test]
async fn cross_site_form_posts_are_refused() {
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        let id = enqueue(&pool, "nobody_runs_this", json!({}), EnqueueOptions::new()).await;
        // The control: the same form, served by the host application on the dashboard's own
        // origin, does cancel (so the refusals below are the origin's doing, not the form's).
        let token: Arc<Mutex<String>> = Arc::default();
        let action: Arc<Mutex<String>> = Arc::default();
        let forged = {
            let (token, action) = (token.clone(), action.clone());
            move || {
                let token = token.lock().map(|t| t.clone()).unwrap_or_default();
                let action = action.lock().map(|a| a.clone()).unwrap_or_default();
                async move { attacker_page(&action, &token) }
            }
        };
        let server = serve_dashboard(
            &pool,
            axum::Router::new().route("/same-origin", get(forged.clone())),
        )
        .await;
        let cancel = page(&server, &format!("/jobs/{id}/cancel"));
        *action.lock().expect("action") = cancel.clone();
        // The victim has the dashboard open: the browser holds its CSRF cookie, which the
        // attacker is given too (the worst case: only the origin check is left).
        browser.goto(&page(&server, &format!("/jobs/{id}"))).await;
        let cookies = browser.client().get_all_cookies().await.expect("cookies");
        let csrf = cookies
            .iter()
            .find(|cookie| cookie.name() == "skiplock_csrf")
            .map(|cookie| cookie.value().to_owned())
            .expect("the dashboard set its CSRF cookie");
        *token.lock().expect("token") = csrf;

        // Another origin on the same site (another port), and another site (127.0.0.2).
        let other_port = Server::local(axum::Router::new().route("/", get(forged.clone()))).await;
        let other_site = Server::start(
            IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
            axum::Router::new().route("/", get(forged.clone())),
        )
        .await;
        for attacker in [&other_port, &other_site] {
            browser.goto(&attacker.url("/")).await;
            // The form posts as the page loads: then the browser shows the dashboard's answer.
            let dashboard = server.url("/");
            eventually(
                Duration::from_secs(10),
                "the forged form posted",
                || async {
                    let there = browser.url().await.starts_with(&dashboard);
                    (there && browser.eval("return document.readyState").await == "complete")
                        .then_some(())
                },
            )
            .await;
            let body = browser.text("body").await;
            assert_eq!(
                state_of(&pool, id).await,
                "available",
                "a post from {} cancelled the job (the page said {body:?})",
                attacker.url("/")
            );
        }
        // The refusals (403) are in the console as failed loads: expected. So is the favicon
        // the browser asks the dashboard's host for, as the refusal is plain text.
        let favicon = server.url("/favicon.ico");
        browser
            .forget_console(|entry| {
                (entry.message.contains(&cancel) && entry.message.contains("403"))
                    || entry.message.starts_with(&favicon)
            })
            .await;

        browser.goto(&server.url("/same-origin")).await;
        eventually(
            Duration::from_secs(10),
            "the same-origin form cancelled the job",
            || async { (state_of(&pool, id).await == "cancelled").then_some(()) },
        )
        .await;
    })
    .await;
}

/// Screenshots of every page, light and dark, at 1440×900, into `SKIPLOCK_SCREENSHOTS`
/// (default docs/screenshots): `scripts/screenshots.sh` runs it.
#[tokio::test]
#[ignore = "writes screenshots: run scripts/screenshots.sh"]
async fn screenshots() {
    let dir = std::env::var_os("SKIPLOCK_SCREENSHOTS").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/screenshots"),
        PathBuf::from,
    );
    let db = database().await;
    let pool = db.pool().clone();
    with_browser(|browser| async move {
        let seeded = seed::realistic(&pool).await;
        let server = serve_dashboard(&pool, axum::Router::new()).await;
        browser
            .cdp(
                "Emulation.setDeviceMetricsOverride",
                json!({ "width": 1440, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
            )
            .await;
        let pages = [
            ("overview", String::new()),
            ("jobs", "/jobs".to_owned()),
            ("jobs-failed", "/jobs?state=failed".to_owned()),
            ("job-running", format!("/jobs/{}", seeded.running)),
            ("job-failed", format!("/jobs/{}", seeded.failed)),
            ("job-retryable", format!("/jobs/{}", seeded.retryable)),
            ("queues", "/queues".to_owned()),
            ("workers", "/workers".to_owned()),
            ("schedules", "/schedules".to_owned()),
            ("health", "/health".to_owned()),
        ];
        for scheme in ["light", "dark"] {
            browser
                .cdp(
                    "Emulation.setEmulatedMedia",
                    json!({ "features": [{ "name": "prefers-color-scheme", "value": scheme }] }),
                )
                .await;
            for (name, path) in &pages {
                browser.goto(&page(&server, path)).await;
                // Live pages: let a few updates arrive first.
                tokio::time::sleep(Duration::from_millis(700)).await;
                save_png(
                    &dir,
                    &format!("{name}-{scheme}"),
                    &browser.screenshot().await,
                );
            }
        }
        browser
            .assert_no_console_errors("while taking screenshots")
            .await;
        seeded.stop().await;
    })
    .await;
}
