//! The database's cost of a run: commits, WAL bytes and dead tuples, from `pg_stat_*`, and the
//! job table's storage settings and the server's settings it ran with.

use std::time::Duration;

use sqlx::PgConnection;

use super::{BenchError, Report};
use crate::db::bench::{self, Counters};

/// How long backends may take to report their statistics: a busy backend reports at most once a
/// second, and an exiting one at once.
const STATS_DELAY: Duration = Duration::from_millis(1_100);

/// Counters and settings read before the timed part.
pub(super) struct Before {
    counters: Counters,
    /// `skiplock.jobs`' `reloptions` (`name=value`).
    settings: Vec<String>,
    /// The server's settings that matter most to a run (`name=value`).
    server: Vec<String>,
}

impl Before {
    /// Reads the counters and the job table's settings on `conn` (the benchmark's own
    /// connection, idle during the run).
    pub(super) async fn read(conn: &mut PgConnection) -> Result<Self, BenchError> {
        let settings = bench::jobs_settings(&mut *conn)
            .await
            .map_err(BenchError::database("read the job table's settings"))?;
        let server = bench::server_settings(&mut *conn)
            .await
            .map_err(BenchError::database("read the server's settings"))?;
        let counters = read(conn).await?;
        Ok(Self {
            counters,
            settings,
            server,
        })
    }

    /// Waits for the run's backends to report, reads the counters again and puts the
    /// difference, per job, into `report`, with the settings as `jobs_settings` and
    /// `server_settings`. Call it after
    /// the run's pools are closed.
    pub(super) async fn finish(
        self,
        conn: &mut PgConnection,
        report: Report,
    ) -> Result<Report, BenchError> {
        tokio::time::sleep(STATS_DELAY).await;
        let after = read(conn).await?;
        // Includes the handful of commits of the benchmark's own connection (its readings and,
        // reported late, its set-up): noise next to thousands of jobs.
        let commits = after.commits - self.counters.commits;
        let per_job = |total: i64| {
            if report.jobs == 0 {
                0.0
            } else {
                total as f64 / report.jobs as f64
            }
        };
        Ok(Report {
            commits_per_job: per_job(commits),
            wal_bytes_per_job: per_job(after.wal_bytes - self.counters.wal_bytes),
            dead_tuples: after.dead_tuples,
            ..report
                .detail("jobs_settings", self.settings)
                .detail("server_settings", self.server)
        })
    }
}

async fn read(conn: &mut PgConnection) -> Result<Counters, BenchError> {
    let action = "read pg_stat counters";
    bench::clear_stats_snapshot(&mut *conn)
        .await
        .map_err(BenchError::database(action))?;
    bench::counters(&mut *conn)
        .await
        .map_err(BenchError::database(action))
}
