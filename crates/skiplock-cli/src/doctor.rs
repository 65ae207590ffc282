//! `skiplock doctor`: every health check with its verdict and remedy.

use std::fmt::Write as _;

use serde::Serialize;
use skiplock::inspect::{self, Check, HealthOptions, Severity};
use sqlx::PgPool;

use crate::cli_inspect::DoctorArgs;
use crate::exit::{self, Exit};
use crate::text::{print, print_json};

/// Prints each check; exit code 5 when one is critical, 4 with `--strict` when one gives a
/// warning.
pub(crate) async fn run(pool: &PgPool, args: DoctorArgs) -> anyhow::Result<()> {
    let mut options = HealthOptions::default();
    let thresholds = [
        (&mut options.horizon_warning, args.horizon_warning),
        (&mut options.horizon_critical, args.horizon_critical),
        (&mut options.horizon_busy_warning, args.horizon_busy_warning),
        (&mut options.pickup_lag_warning, args.pickup_lag_warning),
        (&mut options.stuck_grace, args.stuck_grace),
    ];
    for (option, given) in thresholds {
        if let Some(given) = given {
            *option = given;
        }
    }
    let report = inspect::health(pool, &options).await?;
    let worst = report.worst();
    if args.json {
        #[derive(Serialize)]
        struct Doctor<'a> {
            worst: Severity,
            checks: &'a [Check],
        }
        print_json(&Doctor {
            worst,
            checks: &report.checks,
        })?;
    } else {
        let mut out = String::new();
        for check in &report.checks {
            writeln!(
                out,
                "[{}] {}: {}",
                check.severity, check.name, check.summary
            )?;
            if let Some(remedy) = &check.remedy {
                writeln!(out, "  → {remedy}")?;
            }
        }
        let tally: Vec<String> = [
            Severity::Critical,
            Severity::Warning,
            Severity::Info,
            Severity::Ok,
        ]
        .iter()
        .filter_map(|severity| {
            let n = report
                .checks
                .iter()
                .filter(|check| check.severity == *severity)
                .count();
            (n > 0).then(|| format!("{n} {severity}"))
        })
        .collect();
        writeln!(out, "verdict: {worst} ({})", tally.join(", "))?;
        print(&out)?;
    }
    match worst {
        Severity::Critical => Err(Exit::silent(exit::CRITICAL).into()),
        Severity::Warning if args.strict => Err(Exit::silent(exit::WARNING).into()),
        _ => Ok(()),
    }
}
