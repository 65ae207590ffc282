//! `skiplock bench`: runs a scenario of `skiplock::bench` and prints its report.

#![allow(clippy::print_stdout, clippy::print_stderr)] // printing is this module's job

use std::io::{IsTerminal as _, Write as _};

use anyhow::Context as _;
use skiplock::bench::{
    self, BenchConfig, Drain, HoldSnapshot, Insert, InsertMode, Inspect, Latency, Progress, Report,
    Scenario, Steady,
};
use sqlx::postgres::PgConnectOptions;

use crate::cli::{BenchArgs, BenchMetrics, BenchScenario};

pub(crate) async fn run(server: PgConnectOptions, args: BenchArgs) -> anyhow::Result<()> {
    let scenario = scenario(args.scenario);
    let mut config = BenchConfig::new(server);
    config.async_commit = args.async_commit;
    let terminal = std::io::stderr().is_terminal();
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 0..args.repeat.max(1) {
        // Compared runs alternate which goes first (off-on, on-off, ...), so a drift of the
        // machine over the session weighs on both alike.
        let settings = match args.metrics {
            BenchMetrics::Off => vec![false],
            BenchMetrics::On => vec![true],
            BenchMetrics::Compare if round % 2 == 0 => vec![false, true],
            BenchMetrics::Compare => vec![true, false],
        };
        for metrics in settings {
            config.metrics = metrics;
            let report = once(&config, &scenario, terminal).await?;
            rates[usize::from(metrics)].push(report.jobs_per_s);
            if args.json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!("{}", sentence(&report));
            }
            std::io::stdout().flush()?;
        }
    }
    if args.metrics == BenchMetrics::Compare {
        let [off, on] = rates.map(|mut rates| {
            rates.sort_by(f64::total_cmp);
            rates
        });
        let summary = compare(&off, &on);
        if args.json {
            println!("{summary}");
        } else {
            println!(
                "metrics off: median {:.0} jobs/s (min {:.0}, max {:.0}); on: median {:.0} jobs/s \
                 (min {:.0}, max {:.0}); on/off {:+.1}% over {} runs each",
                summary["off"]["median"].as_f64().unwrap_or_default(),
                summary["off"]["min"].as_f64().unwrap_or_default(),
                summary["off"]["max"].as_f64().unwrap_or_default(),
                summary["on"]["median"].as_f64().unwrap_or_default(),
                summary["on"]["min"].as_f64().unwrap_or_default(),
                summary["on"]["max"].as_f64().unwrap_or_default(),
                summary["change_percent"].as_f64().unwrap_or_default(),
                off.len(),
            );
        }
    }
    Ok(())
}

/// Medians and spreads of jobs/s without (`off`) and with (`on`) metrics, both sorted.
fn compare(off: &[f64], on: &[f64]) -> serde_json::Value {
    let median = |rates: &[f64]| match rates.len() {
        0 => 0.0,
        n if n % 2 == 1 => rates[n / 2],
        n => (rates[n / 2 - 1] + rates[n / 2]) / 2.0,
    };
    let stats = |rates: &[f64]| {
        serde_json::json!({
            "median": median(rates),
            "min": rates.first().copied().unwrap_or_default(),
            "max": rates.last().copied().unwrap_or_default(),
            "runs": rates,
        })
    };
    let change = if median(off) > 0.0 {
        (median(on) / median(off) - 1.0) * 100.0
    } else {
        0.0
    };
    serde_json::json!({
        "scenario": "metrics_compare",
        "off": stats(off),
        "on": stats(on),
        "change_percent": change,
    })
}

/// One run of `scenario`, with a progress line on a terminal.
async fn once(config: &BenchConfig, scenario: &Scenario, terminal: bool) -> anyhow::Result<Report> {
    let report = bench::run(config, scenario, &|progress| {
        if terminal {
            show_progress(progress);
        }
    })
    .await;
    if terminal {
        // Clear the progress line.
        eprint!("\r\x1b[2K");
    }
    report.context("benchmark failed")
}

fn scenario(args: BenchScenario) -> Scenario {
    match args {
        BenchScenario::Insert(args) => Scenario::Insert(Insert {
            jobs: args.jobs,
            clients: args.clients,
            mode: if args.bulk {
                InsertMode::Bulk { batch: args.batch }
            } else {
                InsertMode::Single
            },
        }),
        BenchScenario::Drain(args) => Scenario::Drain(Drain {
            jobs: args.jobs,
            workers: args.workers,
            concurrency: args.concurrency,
            scheduled: args.scheduled,
            finished: args.finished,
            foreign: args.foreign,
            dashboard: args.dashboard,
            concurrency_limit: args.concurrency_limit,
        }),
        BenchScenario::Steady(args) => Scenario::Steady(Steady {
            rate: args.rate,
            duration: args.duration,
            workers: args.workers,
            concurrency: args.concurrency,
            hold_snapshot: args
                .hold_snapshot_at
                .zip(args.hold_snapshot_for)
                .map(|(at, hold)| HoldSnapshot { at, hold }),
            sample_every: args.sample_every,
            samples: args.samples,
            chart: args.chart,
            retention: args.retention,
            finished: args.finished,
            server_autovacuum: args.server_autovacuum,
        }),
        BenchScenario::Latency(args) => Scenario::Latency(Latency {
            samples: args.samples,
            notify: !args.no_notify,
            poll_interval: args.poll_interval,
            ..Latency::default()
        }),
        BenchScenario::Inspect(args) => Scenario::Inspect(Inspect {
            finished: args.finished,
            waiting: args.waiting,
            samples: args.samples,
        }),
    }
}

fn show_progress(progress: &Progress) {
    let total = progress
        .total
        .map(|total| format!(" of {total}"))
        .unwrap_or_default();
    eprint!(
        "\r\x1b[2K{}: {}{} ({:.1} s)",
        progress.phase,
        progress.done,
        total,
        progress.elapsed.as_secs_f64()
    );
    let _ = std::io::stderr().flush();
}

/// The report as one line for people (one line per call for `inspect`).
fn sentence(report: &Report) -> String {
    if let Some(calls) = report.details.get("calls").and_then(|c| c.as_array()) {
        let mut lines = format!(
            "inspect: {} jobs ({} finished, {} waiting); median and slowest of {} calls each:",
            report.jobs,
            report.details.get("finished").cloned().unwrap_or_default(),
            report.details.get("waiting").cloned().unwrap_or_default(),
            report.details.get("samples").cloned().unwrap_or_default(),
        );
        let name = |call: &serde_json::Value| {
            call.get("call")
                .and_then(|v| v.as_str())
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let width = calls.iter().map(|c| name(c).len()).max().unwrap_or(0);
        for call in calls {
            let ms = |key| call.get(key).and_then(|v| v.as_f64()).unwrap_or_default();
            lines.push_str(&format!(
                "\n  {:<width$} {:>8.2} ms {:>8.2} ms",
                call.get("call")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default(),
                ms("median_ms"),
                ms("max_ms"),
            ));
        }
        return lines;
    }
    let mut line = format!(
        "{}: {} jobs in {:.2} s = {:.0} jobs/s",
        report.scenario, report.jobs, report.seconds, report.jobs_per_s
    );
    if let (Some(p50), Some(p95), Some(p99)) = (report.p50_ms, report.p95_ms, report.p99_ms) {
        line.push_str(&format!(
            "; latency p50 {p50:.2} ms, p95 {p95:.2} ms, p99 {p99:.2} ms"
        ));
    }
    line.push_str(&format!(
        "; per job {:.3} commits, {:.0} WAL bytes; {} dead tuples left{}",
        report.commits_per_job,
        report.wal_bytes_per_job,
        report.dead_tuples,
        if report.async_commit {
            " (synchronous_commit off)"
        } else {
            ""
        }
    ));
    if report.metrics {
        line.push_str(" (metrics on)");
    }
    line
}
