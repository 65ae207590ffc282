//! The browser harness of tests/browser.rs: one `chromedriver` per test binary, one headless
//! Chromium session per test, the browser's console collected and any SEVERE entry a failure,
//! and axum servers on loopback for the pages under test.
//!
//! `chromedriver` is looked up on PATH, then at /usr/bin/chromedriver; Chromium likewise
//! (`chromium`, `chromium-browser`, `google-chrome`), or at `SKIPLOCK_CHROMIUM`. Without them a
//! test says why on stderr and passes, unless `SKIPLOCK_REQUIRE_BROWSER=1`.
#![allow(unreachable_pub, dead_code)]

use std::future::Future;
use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use axum::http::Method;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// Whether a missing browser fails the test instead of skipping it.
fn required() -> bool {
    std::env::var("SKIPLOCK_REQUIRE_BROWSER").is_ok_and(|v| v == "1")
}

/// The first of `names` found as a file on PATH, then in `fallback_dirs`.
fn find_binary(names: &[&str], fallback_dirs: &[&str]) -> Option<PathBuf> {
    let path_dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect())
        .unwrap_or_default();
    let dirs = path_dirs
        .into_iter()
        .chain(fallback_dirs.iter().map(PathBuf::from))
        .collect::<Vec<_>>();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|path| path.is_file())
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| output.stdout.trim_ascii() == b"0")
}

/// The chromedriver process the whole test binary shares.
struct Driver {
    url: String,
    chromium: PathBuf,
    log: PathBuf,
    /// The watchdog shell's stdin: when the test binary exits, however it exits, the pipe
    /// closes and the shell stops chromedriver (no process outlives the tests).
    _watchdog: Mutex<ChildStdin>,
    _child: Mutex<Child>,
}

static DRIVER: OnceLock<Result<Driver, String>> = OnceLock::new();

/// Starts chromedriver on a free port, or says why it cannot.
fn start_driver() -> Result<Driver, String> {
    let chromedriver = find_binary(&["chromedriver"], &["/usr/bin", "/usr/lib/chromium"])
        .ok_or("no chromedriver on PATH or in /usr/bin (apt-get install chromium-driver)")?;
    let chromium = match std::env::var_os("SKIPLOCK_CHROMIUM") {
        Some(path) => PathBuf::from(path),
        None => find_binary(
            &["chromium", "chromium-browser", "google-chrome"],
            &["/usr/bin"],
        )
        .ok_or("no chromium on PATH or in /usr/bin (apt-get install chromium)")?,
    };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map_err(|error| format!("no free port: {error}"))?
        .port();
    let log =
        std::env::temp_dir().join(format!("skiplock-chromedriver-{}.log", std::process::id()));
    // `sh` starts chromedriver in the background and waits for its own stdin to close.
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#""$0" --port="$1" --log-path="$2" --log-level=WARNING >/dev/null 2>&1 & read -r _; kill $!; rm -f "$2""#)
        .arg(&chromedriver)
        .arg(port.to_string())
        .arg(&log)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|error| format!("cannot start {}: {error}", chromedriver.display()))?;
    let watchdog = child
        .stdin
        .take()
        .ok_or("chromedriver's watchdog has no stdin")?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    while TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_err() {
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not listen on port {port} within 20 s; its log:\n{}",
                chromedriver.display(),
                log_tail(&log)
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(Driver {
        url: format!("http://127.0.0.1:{port}"),
        chromium,
        log,
        _watchdog: Mutex::new(watchdog),
        _child: Mutex::new(child),
    })
}

/// The last lines of chromedriver's log (removed when the test binary exits).
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

/// A browser console entry, as chromedriver reports it.
#[derive(Clone, Debug, Deserialize)]
pub struct LogEntry {
    pub level: String,
    pub message: String,
    #[serde(default)]
    pub source: String,
}

impl LogEntry {
    pub fn is_severe(&self) -> bool {
        self.level == "SEVERE"
    }
}

/// A POST to a chromedriver extension endpoint of the session (`se/log`, `goog/cdp/execute`).
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        let session = session_id.unwrap_or_default();
        base_url.join(&format!("session/{session}/{}", self.path))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (Method, Option<String>) {
        (Method::POST, Some(self.body.to_string()))
    }
}

static SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// One headless Chromium session. Clones share the session and the collected console.
#[derive(Clone)]
pub struct Browser {
    client: Client,
    /// Console entries read from chromedriver so far and not forgotten.
    console: Arc<Mutex<Vec<LogEntry>>>,
}

/// The chromedriver session's capabilities: headless Chromium, all console entries kept.
fn capabilities(chromium: &Path, user_data_dir: &Path) -> serde_json::Map<String, Value> {
    let mut args = vec![
        "--headless=new".to_owned(),
        "--disable-gpu".to_owned(),
        "--disable-dev-shm-usage".to_owned(),
        "--no-first-run".to_owned(),
        "--no-default-browser-check".to_owned(),
        "--disable-extensions".to_owned(),
        "--disable-background-networking".to_owned(),
        "--disable-component-update".to_owned(),
        "--disable-sync".to_owned(),
        "--lang=en-US".to_owned(),
        "--window-size=1440,900".to_owned(),
        "--force-color-profile=srgb".to_owned(),
        "--hide-scrollbars".to_owned(),
        format!("--user-data-dir={}", user_data_dir.display()),
    ];
    if running_as_root() {
        // Chromium's sandbox refuses to run as root.
        args.push("--no-sandbox".to_owned());
    }
    let capabilities = json!({
        "browserName": "chrome",
        "goog:loggingPrefs": { "browser": "ALL" },
        "goog:chromeOptions": {
            "binary": chromium,
            "args": args,
        },
    });
    match capabilities {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

impl Browser {
    /// A new session, or `None` (after saying why on stderr) when there is no browser here and
    /// `SKIPLOCK_REQUIRE_BROWSER` is not `1`. Panics when there is one that does not work.
    async fn start(user_data_dir: &Path) -> Option<Self> {
        let driver = match DRIVER.get_or_init(start_driver) {
            Ok(driver) => driver,
            Err(why) if !required() && why.starts_with("no ") => {
                eprintln!("skipped: {why}");
                return None;
            }
            Err(why) => panic!("no browser (SKIPLOCK_REQUIRE_BROWSER=1 requires one): {why}"),
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(capabilities(&driver.chromium, user_data_dir));
        let client = builder.connect(&driver.url).await.unwrap_or_else(|error| {
            panic!(
                "chromedriver at {} started no session: {error}; its log:\n{}",
                driver.url,
                log_tail(&driver.log)
            )
        });
        Some(Self {
            client,
            console: Arc::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|error| panic!("open {url}: {error}"));
    }

    /// Runs `script` (a function body: `return ...`) in the page and returns its value.
    pub async fn eval(&self, script: &str) -> Value {
        self.client
            .execute(script, Vec::new())
            .await
            .unwrap_or_else(|error| panic!("run `{script}` in the page: {error}"))
    }

    /// Runs a Chrome DevTools Protocol command in the session (e.g. emulating a media feature).
    pub async fn cdp(&self, command: &str, params: Value) -> Value {
        self.client
            .issue_cmd(SessionPost {
                path: "goog/cdp/execute",
                body: json!({ "cmd": command, "params": params }),
            })
            .await
            .unwrap_or_else(|error| panic!("CDP {command}: {error}"))
    }

    /// Reads the console entries logged since the last read, keeps them with the earlier ones,
    /// and returns all kept.
    pub async fn console(&self) -> Vec<LogEntry> {
        let fresh = self
            .client
            .issue_cmd(SessionPost {
                path: "se/log",
                body: json!({ "type": "browser" }),
            })
            .await
            .expect("read the browser's console from chromedriver (se/log)");
        let fresh: Vec<LogEntry> =
            serde_json::from_value(fresh).expect("chromedriver's log entries");
        let mut kept = self.console.lock().unwrap_or_else(PoisonError::into_inner);
        kept.extend(fresh);
        kept.clone()
    }

    /// Drops the kept console entries `expected` matches (an error the test provoked on
    /// purpose), and returns them.
    pub async fn forget_console(&self, expected: impl Fn(&LogEntry) -> bool) -> Vec<LogEntry> {
        self.console().await;
        let mut kept = self.console.lock().unwrap_or_else(PoisonError::into_inner);
        let (forgotten, rest) = kept.drain(..).partition(|entry| expected(entry));
        *kept = rest;
        forgotten
    }

    /// Panics when the console has a SEVERE entry (an uncaught exception, a `console.error`, a
    /// failed request, a CSP violation), naming `when`.
    pub async fn assert_no_console_errors(&self, when: &str) {
        let severe: Vec<LogEntry> = self
            .console()
            .await
            .into_iter()
            .filter(LogEntry::is_severe)
            .collect();
        assert!(
            severe.is_empty(),
            "console errors {when}:\n{}",
            severe
                .iter()
                .map(|entry| format!("  [{}] {}", entry.source, entry.message))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }

    /// The text of the element `css` finds, waiting for it up to 10 s.
    pub async fn text(&self, css: &str) -> String {
        self.element(css)
            .await
            .text()
            .await
            .unwrap_or_else(|error| panic!("text of {css}: {error}"))
    }

    /// The element `css` finds, waiting for it up to 10 s.
    pub async fn element(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .client
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(fantoccini::Locator::Css(css))
            .await
        {
            Ok(element) => element,
            Err(error) => panic!("no element {css} on {}: {error}", self.url().await),
        }
    }

    /// The page's URL.
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .map_or_else(|error| format!("(unknown: {error})"), |url| url.to_string())
    }

    /// A PNG of the viewport.
    pub async fn screenshot(&self) -> Vec<u8> {
        self.client.screenshot().await.expect("screenshot")
    }
}

/// Runs `body` with a fresh browser session, then fails the test on any SEVERE console entry
/// the session logged (unless `body` forgot it as expected). The session is closed whether
/// `body` passed or panicked. Without a browser (and not required) it says why and returns.
pub async fn with_browser<F, Fut>(body: F)
where
    F: FnOnce(Browser) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let number = SESSIONS.fetch_add(1, Ordering::Relaxed);
    let user_data_dir =
        std::env::temp_dir().join(format!("skiplock-chromium-{}-{number}", std::process::id()));
    let Some(browser) = Browser::start(&user_data_dir).await else {
        return;
    };
    // A task of its own, so that a panic in `body` still lets the session be closed.
    let outcome = tokio::spawn(body(browser.clone())).await;
    let console = if outcome.is_ok() {
        Some(browser.console().await)
    } else {
        None
    };
    let _ = browser.client.clone().close().await;
    let _ = std::fs::remove_dir_all(&user_data_dir);
    match outcome {
        Ok(()) => {}
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("the test's task did not finish: {error}"),
    }
    let severe: Vec<String> = console
        .unwrap_or_default()
        .into_iter()
        .filter(LogEntry::is_severe)
        .map(|entry| format!("  [{}] {}", entry.source, entry.message))
        .collect();
    assert!(
        severe.is_empty(),
        "the browser's console has errors:\n{}",
        severe.join("\n")
    );
}

/// An HTTP server on loopback, stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Serves `router` on `ip`, on a port the system picks.
    pub async fn start(ip: IpAddr, router: axum::Router) -> Self {
        let listener = tokio::net::TcpListener::bind((ip, 0))
            .await
            .unwrap_or_else(|error| panic!("bind {ip}:0: {error}"));
        let addr = listener.local_addr().expect("the server's address");
        let task = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                panic!("the test server stopped: {error}");
            }
        });
        Self { addr, task }
    }

    /// Serves `router` on 127.0.0.1.
    pub async fn local(router: axum::Router) -> Self {
        Self::start(IpAddr::V4(Ipv4Addr::LOCALHOST), router).await
    }

    /// `http://ADDR` followed by `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Writes `png` to `dir/name.png`, creating `dir`.
pub fn save_png(dir: &Path, name: &str, png: &[u8]) {
    std::fs::create_dir_all(dir)
        .unwrap_or_else(|error| panic!("create {}: {error}", dir.display()));
    let path = dir.join(format!("{name}.png"));
    let mut file = std::fs::File::create(&path)
        .unwrap_or_else(|error| panic!("create {}: {error}", path.display()));
    file.write_all(png)
        .unwrap_or_else(|error| panic!("write {}: {error}", path.display()));
    eprintln!("wrote {}", path.display());
}
