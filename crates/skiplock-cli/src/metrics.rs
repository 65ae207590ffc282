//! `skiplock metrics --listen`: a standalone exporter of the database metrics.

use std::io::Write as _;
use std::net::SocketAddr;

use anyhow::Context as _;
use skiplock::metrics::Metrics;
use sqlx::PgPool;

use crate::cli::MetricsArgs;

/// Refuses an address other machines can reach, unless `allow_public`.
pub(crate) fn check_address(address: SocketAddr, allow_public: bool) -> anyhow::Result<()> {
    if !address.ip().is_loopback() && !allow_public {
        anyhow::bail!(
            "refusing to serve metrics on {address}, which other machines can reach: pass \
             --allow-public to mean it (/metrics has no authentication)"
        );
    }
    Ok(())
}

/// Checks the address, connects, and serves `GET /metrics` until SIGINT or SIGTERM.
pub(crate) async fn run(database_url: Option<String>, args: MetricsArgs) -> anyhow::Result<()> {
    check_address(args.listen, args.allow_public)?;
    serve(crate::connect(database_url).await?, args).await
}

async fn serve(pool: PgPool, args: MetricsArgs) -> anyhow::Result<()> {
    let stop = crate::schedules::stop_signal()?;
    let metrics = Metrics::new()
        .with_database(pool)
        .database_timeout(args.timeout);
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("could not listen on {}", args.listen))?;
    let address = listener.local_addr().context("could not listen")?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "serving metrics on http://{address}/metrics")?;
    out.flush()?;
    drop(out);
    let app: axum::Router = skiplock::metrics::router(metrics);
    axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await
        .context("the metrics server failed")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_unless_allowed() {
        let parse = |s: &str| s.parse::<SocketAddr>().expect("address");
        assert!(check_address(parse("127.0.0.1:9187"), false).is_ok());
        assert!(check_address(parse("[::1]:9187"), false).is_ok());
        for public in ["0.0.0.0:9187", "[::]:9187", "192.168.1.10:9187"] {
            let refused = check_address(parse(public), false).expect_err(public);
            assert!(refused.to_string().contains("--allow-public"), "{refused}");
            assert!(check_address(parse(public), true).is_ok());
        }
    }
}
