//! `skiplock dashboard --listen`: the web dashboard, standalone.
//!
//! Without credentials it is read-only, answers only requests addressed to a loopback name
//! (a DNS-rebinding page cannot read it), and refuses an address other machines can reach
//! unless `--insecure-public`. With `--token` or `--basic-auth`, every request must carry
//! them, and actions are allowed (unless `--read-only`).

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use axum::http::header;
use axum::http::request::Parts;
use base64::Engine as _;
use skiplock::web::{Access, Dashboard, constant_time_eq};

use crate::cli::DashboardArgs;

/// How long a shutdown waits for requests in flight once the event streams have ended: 5 s.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What a request must present.
#[derive(Clone)]
enum Credentials {
    None,
    /// `Authorization: Bearer T`, or basic auth with any user name and T as the password.
    Token(String),
    /// Basic auth with this user and password.
    Basic {
        user: String,
        password: String,
    },
}

impl Credentials {
    fn from_args(args: &DashboardArgs) -> anyhow::Result<Self> {
        match (&args.token, &args.basic_auth) {
            (Some(_), Some(_)) => anyhow::bail!("give --token or --basic-auth, not both"),
            (Some(token), None) => {
                anyhow::ensure!(token.len() >= 16, "a token must be at least 16 characters");
                Ok(Self::Token(token.clone()))
            }
            (None, Some(pair)) => {
                let (user, password) = pair
                    .split_once(':')
                    .context("--basic-auth takes USER:PASSWORD")?;
                anyhow::ensure!(!user.is_empty(), "--basic-auth needs a user name");
                anyhow::ensure!(
                    password.len() >= 8,
                    "a password must be at least 8 characters"
                );
                Ok(Self::Basic {
                    user: user.to_owned(),
                    password: password.to_owned(),
                })
            }
            (None, None) => Ok(Self::None),
        }
    }

    /// Whether the request carries these credentials.
    fn admit(&self, parts: &Parts) -> bool {
        let Some(header) = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return matches!(self, Self::None);
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        let basic = || -> Option<(String, String)> {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            let (user, password) = text.split_once(':')?;
            Some((user.to_owned(), password.to_owned()))
        };
        match self {
            Self::None => true,
            Self::Token(token) => {
                if scheme.eq_ignore_ascii_case("bearer") {
                    constant_time_eq(value.trim().as_bytes(), token.as_bytes())
                } else if scheme.eq_ignore_ascii_case("basic") {
                    basic().is_some_and(|(_, password)| {
                        constant_time_eq(password.as_bytes(), token.as_bytes())
                    })
                } else {
                    false
                }
            }
            Self::Basic { user, password } => {
                scheme.eq_ignore_ascii_case("basic")
                    && basic().is_some_and(|(u, p)| {
                        // Both compared, whatever the first says.
                        let user_ok = constant_time_eq(u.as_bytes(), user.as_bytes());
                        let password_ok = constant_time_eq(p.as_bytes(), password.as_bytes());
                        user_ok & password_ok
                    })
            }
        }
    }
}

/// Refuses an address other machines can reach without credentials, unless `insecure`.
fn check_address(address: SocketAddr, credentials: bool, insecure: bool) -> anyhow::Result<()> {
    if !address.ip().is_loopback() && !credentials && !insecure {
        anyhow::bail!(
            "refusing to serve the dashboard on {address}, which other machines can reach, \
             without credentials: pass --token or --basic-auth (or SKIPLOCK_DASHBOARD_TOKEN), \
             or --insecure-public to serve it read-only to anyone who can reach it"
        );
    }
    Ok(())
}

/// The dashboard these arguments describe.
fn dashboard(pool: sqlx::PgPool, args: &DashboardArgs) -> anyhow::Result<Dashboard> {
    let credentials = Credentials::from_args(args)?;
    let with_credentials = !matches!(credentials, Credentials::None);
    check_address(args.listen, with_credentials, args.insecure_public)?;
    let read_only = args.read_only || !with_credentials;
    let mut dashboard =
        Dashboard::new(pool)
            .title(args.title.clone())
            .authorizer(move |parts: &Parts| {
                if !credentials.admit(parts) {
                    Access::Unauthenticated
                } else if read_only {
                    Access::ReadOnly
                } else {
                    Access::Full
                }
            });
    if !with_credentials && args.listen.ip().is_loopback() {
        let mut hosts = vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
            "[::1]".to_owned(),
        ];
        hosts.push(match args.listen.ip() {
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        });
        dashboard = dashboard.allowed_hosts(hosts);
    }
    if !args.redact.is_empty() {
        dashboard = dashboard.redact_keys(args.redact.clone());
    }
    Ok(dashboard)
}

/// Checks the arguments, connects, and serves until SIGINT or SIGTERM.
pub(crate) async fn run(database_url: Option<String>, args: DashboardArgs) -> anyhow::Result<()> {
    // Checked before connecting: a refused address should not wait for a database.
    let credentials = Credentials::from_args(&args)?;
    check_address(
        args.listen,
        !matches!(credentials, Credentials::None),
        args.insecure_public,
    )?;
    // Two for pages and the overview's poller, one for the `LISTEN` connection job streams
    // hold while open.
    let pool = crate::connect_with(database_url, 3).await?;
    let dashboard = dashboard(pool, &args)?;
    let stop = crate::schedules::stop_signal()?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let address = listener.local_addr().context("could not listen")?;
    let mode = match (&credentials, args.read_only) {
        (Credentials::None, _) => "read-only: pass --token or --basic-auth to allow actions",
        (_, true) => "read-only, credentials required",
        _ => "credentials required; actions allowed",
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "serving the dashboard on http://{address}/ ({mode})")?;
    out.flush()?;
    drop(out);
    serve(listener, dashboard, stop).await
}

/// Serves `dashboard` until `stop`, then ends its event streams (an open browser tab would
/// otherwise hold the shutdown forever) and waits at most [`SHUTDOWN_GRACE`] for the
/// requests still in flight.
async fn serve(
    listener: tokio::net::TcpListener,
    dashboard: Dashboard,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let streams = dashboard.shutdown_token();
    let stopping = streams.clone();
    let server = axum::serve(listener, dashboard.router())
        .with_graceful_shutdown(async move {
            stop.await;
            stopping.cancel();
        })
        .into_future();
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return result.context("the dashboard server failed"),
        () = streams.cancelled() => {}
    }
    match tokio::time::timeout(SHUTDOWN_GRACE, server).await {
        Ok(result) => result.context("the dashboard server failed"),
        Err(_) => {
            tracing::warn!(
                grace = ?SHUTDOWN_GRACE,
                "dashboard: requests still in flight after the shutdown grace: closing them"
            );
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Wrap {
        #[command(flatten)]
        args: DashboardArgs,
    }

    fn args(line: &[&str]) -> DashboardArgs {
        let mut argv = vec!["dashboard"];
        argv.extend_from_slice(line);
        Wrap::try_parse_from(argv).expect("arguments").args
    }

    fn parts(authorization: Option<&str>) -> Parts {
        let mut request = axum::http::Request::builder().uri("/");
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value);
        }
        request.body(()).expect("request").into_parts().0
    }

    /// An open event stream (a browser tab) does not hold the shutdown: the stream ends and
    /// the server returns well within its grace.
    #[tokio::test]
    async fn a_shutdown_ends_open_event_streams() {
        use std::io::{Read as _, Write as _};
        // Nothing here needs the database: the overview stream stays open, unanswered.
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .expect("a lazy pool");
        let dashboard = dashboard(pool, &args(&[])).expect("dashboard");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("listen");
        let address = listener.local_addr().expect("address");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, dashboard, async {
            let _ = stopped.await;
        }));
        let tab = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(address).expect("connect");
            stream
                .set_read_timeout(Some(Duration::from_secs(20)))
                .expect("timeout");
            write!(
                stream,
                "GET /api/v1/events HTTP/1.1\r\nHost: localhost\r\nAccept: text/event-stream\r\n\r\n"
            )
            .expect("request");
            let mut head = [0_u8; 12];
            stream.read_exact(&mut head).expect("a response");
            assert_eq!(&head, b"HTTP/1.1 200", "the stream opened");
            // Until the server closes the connection.
            let mut rest = Vec::new();
            stream.read_to_end(&mut rest).expect("the stream ends");
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = std::time::Instant::now();
        stop.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the shutdown waited for the open stream")
            .expect("server task")
            .expect("server");
        assert!(started.elapsed() < SHUTDOWN_GRACE);
        tab.await.expect("the tab's connection closed");
    }

    #[test]
    fn public_addresses_need_credentials_or_the_insecure_flag() {
        let parse = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert!(check_address(parse("127.0.0.1:8080"), false, false).is_ok());
        let refused = check_address(parse("0.0.0.0:8080"), false, false).expect_err("refused");
        assert!(refused.to_string().contains("--token"), "{refused}");
        assert!(check_address(parse("0.0.0.0:8080"), true, false).is_ok());
        assert!(check_address(parse("0.0.0.0:8080"), false, true).is_ok());
    }

    #[test]
    fn credentials_are_checked_exactly() {
        let token =
            Credentials::from_args(&args(&["--token", "0123456789abcdef0123"])).expect("token");
        assert!(token.admit(&parts(Some("Bearer 0123456789abcdef0123"))));
        assert!(!token.admit(&parts(Some("Bearer 0123456789abcdef012"))));
        assert!(!token.admit(&parts(None)));
        let basic = base64::engine::general_purpose::STANDARD.encode("anyone:0123456789abcdef0123");
        assert!(token.admit(&parts(Some(&format!("Basic {basic}")))));

        let pair =
            Credentials::from_args(&args(&["--basic-auth", "ops:correct horse"])).expect("basic");
        let good = base64::engine::general_purpose::STANDARD.encode("ops:correct horse");
        let bad = base64::engine::general_purpose::STANDARD.encode("ops:correct horsE");
        assert!(pair.admit(&parts(Some(&format!("Basic {good}")))));
        assert!(!pair.admit(&parts(Some(&format!("Basic {bad}")))));
        assert!(!pair.admit(&parts(Some("Basic !!!"))));
        assert!(!pair.admit(&parts(None)));

        assert!(Credentials::from_args(&args(&["--token", "short"])).is_err());
        assert!(Credentials::from_args(&args(&["--basic-auth", "nopassword"])).is_err());
    }
}
