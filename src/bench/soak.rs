//! What `skiplock bench steady` samples every few seconds for a soak, written as JSON lines
//! and drawn as an SVG chart, so a person sees at a glance whether the system is steady.

use std::collections::HashMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

use plotters::prelude::*;
use serde::Serialize;
use sqlx::PgConnection;

use super::BenchError;
use crate::db;

/// One sample of a soak.
#[derive(Clone, Debug, Default, Serialize)]
pub(super) struct Sample {
    /// Seconds since the offered load started.
    pub(super) t_s: f64,
    /// Jobs offered (enqueued) per second over the interval.
    pub(super) offered_per_s: f64,
    /// Jobs started per second over the interval.
    pub(super) started_per_s: f64,
    /// Jobs enqueued but not started at the sample.
    pub(super) backlog: u64,
    /// Pickup lag (insert commit to handler start) of the jobs started in the interval, ms.
    pub(super) lag_p50_ms: Option<f64>,
    pub(super) lag_p99_ms: Option<f64>,
    pub(super) lag_max_ms: Option<f64>,
    /// `skiplock.jobs`: heap (with TOAST and FSM) and index sizes, bytes.
    pub(super) table_bytes: i64,
    pub(super) index_bytes: i64,
    pub(super) live_rows: i64,
    pub(super) dead_rows: i64,
    /// Autovacuum and autoanalyze runs on the table so far.
    pub(super) autovacuums: i64,
    pub(super) autoanalyzes: i64,
    /// The xmin horizon: the age of the oldest snapshot held (transactions), and how long the
    /// transaction holding it has been open (s).
    pub(super) xmin_age: Option<i32>,
    pub(super) xmin_held_s: Option<f64>,
}

/// Insert commit times of jobs not started yet, by id: what turns a handler's start into a
/// pickup lag. Holds only the backlog, however long the run.
#[derive(Default)]
pub(super) struct Commits(Mutex<HashMap<i64, Instant>>);

impl Commits {
    pub(super) fn record(&self, ids: impl IntoIterator<Item = i64>, at: Instant) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.extend(ids.into_iter().map(|id| (id, at)));
    }

    /// The lags of `starts` in milliseconds, forgetting their commits.
    pub(super) fn lags(&self, starts: Vec<(i64, Instant)>) -> Vec<f64> {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        starts
            .into_iter()
            .filter_map(|(id, began)| {
                let committed = map.remove(&id)?;
                Some(began.saturating_duration_since(committed).as_secs_f64() * 1_000.0)
            })
            .collect()
    }
}

/// Sorts `lags` and returns p50, p99 and max.
pub(super) fn percentiles(lags: &mut [f64]) -> (Option<f64>, Option<f64>, Option<f64>) {
    if lags.is_empty() {
        return (None, None, None);
    }
    lags.sort_by(f64::total_cmp);
    let at = |q: f64| lags[((lags.len() - 1) as f64 * q).round() as usize];
    (Some(at(0.50)), Some(at(0.99)), lags.last().copied())
}

/// Fills the table and server columns of `sample` from the database.
pub(super) async fn read_table(
    conn: &mut PgConnection,
    sample: &mut Sample,
) -> Result<(), BenchError> {
    db::bench::clear_stats_snapshot(&mut *conn)
        .await
        .map_err(BenchError::database("clear the statistics snapshot"))?;
    let health = db::bench::table_health(&mut *conn)
        .await
        .map_err(BenchError::database("read the table's size and statistics"))?;
    sample.table_bytes = health.table_bytes;
    sample.index_bytes = health.index_bytes;
    sample.live_rows = health.live_rows;
    sample.dead_rows = health.dead_rows;
    sample.autovacuums = health.autovacuums;
    sample.autoanalyzes = health.autoanalyzes;
    sample.xmin_age = health.xmin_age;
    sample.xmin_held_s = health.xmin_held_secs;
    Ok(())
}

/// Writes each sample as one JSON line as soon as it is taken, so a run cut short keeps what
/// it measured.
pub(super) struct Lines(Option<BufWriter<File>>);

impl Lines {
    pub(super) fn create(path: Option<&Path>) -> Result<Self, BenchError> {
        path.map(|path| {
            File::create(path)
                .map(BufWriter::new)
                .map_err(|error| BenchError::Output(path.display().to_string(), error))
        })
        .transpose()
        .map(Self)
    }

    pub(super) fn write(&mut self, sample: &Sample) -> Result<(), BenchError> {
        let Some(out) = &mut self.0 else {
            return Ok(());
        };
        let line = serde_json::to_string(sample).map_err(BenchError::Json)?;
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .map_err(|error| BenchError::Output("samples".to_owned(), error))
    }
}

/// One line of a panel: its label, colour and points.
type Line<'a> = (&'a str, RGBColor, Vec<(f64, f64)>);

/// One panel of the chart: its caption, the unit of its y axis, its lines.
type Panel<'a> = (&'a str, &'a str, Vec<Line<'a>>);

/// Draws the soak as an SVG of four panels sharing the time axis: throughput (offered and
/// started), pickup lag (p50, p99), the table (heap and index MiB, dead rows in thousands) and
/// the xmin horizon (age of the oldest snapshot, in thousands of transactions) with autovacuum
/// runs.
pub(super) fn chart(path: &Path, title: &str, samples: &[Sample]) -> Result<(), BenchError> {
    let draw = || -> Result<(), Box<dyn std::error::Error>> {
        let root = SVGBackend::new(path, (1200, 1400)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(title, ("sans-serif", 22))?;
        let panels = root.split_evenly((4, 1));
        let end = samples.last().map_or(1.0, |s| s.t_s).max(1.0);
        let mib = |bytes: i64| bytes as f64 / 1_048_576.0;
        let thousands = |n: i64| n as f64 / 1_000.0;
        let series = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<(f64, f64)> {
            samples
                .iter()
                .filter_map(|s| f(s).map(|v| (s.t_s, v)))
                .collect()
        };
        let panel_specs: [Panel<'_>; 4] = [
            (
                "throughput",
                "jobs/s",
                vec![
                    ("offered", BLACK, series(&|s| Some(s.offered_per_s))),
                    ("started", BLUE, series(&|s| Some(s.started_per_s))),
                ],
            ),
            (
                "pickup lag",
                "ms",
                vec![
                    ("p50", BLUE, series(&|s| s.lag_p50_ms)),
                    ("p99", RED, series(&|s| s.lag_p99_ms)),
                ],
            ),
            (
                "skiplock.jobs",
                "MiB / thousand rows",
                vec![
                    ("heap MiB", BLUE, series(&|s| Some(mib(s.table_bytes)))),
                    ("indexes MiB", GREEN, series(&|s| Some(mib(s.index_bytes)))),
                    (
                        "dead rows (k)",
                        RED,
                        series(&|s| Some(thousands(s.dead_rows))),
                    ),
                    (
                        "backlog (k)",
                        BLACK,
                        series(&|s| Some(s.backlog as f64 / 1_000.0)),
                    ),
                ],
            ),
            (
                "xmin horizon and autovacuum",
                "k xids / runs",
                vec![
                    (
                        "oldest snapshot age (k xids)",
                        RED,
                        series(&|s| Some(s.xmin_age.map_or(0.0, |a| f64::from(a) / 1_000.0))),
                    ),
                    (
                        "autovacuum runs",
                        BLUE,
                        series(&|s| Some(s.autovacuums as f64)),
                    ),
                ],
            ),
        ];
        for (area, (caption, unit, lines)) in panels.iter().zip(panel_specs) {
            let top = lines
                .iter()
                .flat_map(|(_, _, points)| points.iter().map(|(_, y)| *y))
                .fold(0.0_f64, f64::max)
                .max(1.0)
                * 1.1;
            let mut chart = ChartBuilder::on(area)
                .caption(caption, ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(30)
                .y_label_area_size(70)
                .build_cartesian_2d(0.0..end, 0.0..top)?;
            chart
                .configure_mesh()
                .x_desc("seconds")
                .y_desc(unit)
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (label, color, points) in lines {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK)
                .draw()?;
        }
        root.present()?;
        Ok(())
    };
    draw().map_err(|error| BenchError::Chart(path.display().to_string(), error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_sample() {
        let mut lags: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(
            percentiles(&mut lags),
            (Some(51.0), Some(99.0), Some(100.0))
        );
        assert_eq!(percentiles(&mut []), (None, None, None));
    }

    #[test]
    fn the_chart_is_an_svg_with_every_panel() {
        let dir = std::env::temp_dir().join(format!("skiplock-soak-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("soak.svg");
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                t_s: f64::from(i) * 5.0,
                offered_per_s: 1_000.0,
                started_per_s: 990.0,
                lag_p50_ms: Some(2.0),
                lag_p99_ms: Some(9.0),
                table_bytes: 10 << 20,
                ..Sample::default()
            })
            .collect();
        chart(&path, "soak", &samples).expect("chart");
        let svg = std::fs::read_to_string(&path).expect("svg");
        assert!(svg.starts_with("<svg"));
        for caption in ["throughput", "pickup lag", "skiplock.jobs", "xmin horizon"] {
            assert!(svg.contains(caption), "{caption} missing");
        }
        std::fs::remove_dir_all(dir).expect("cleanup");
    }
}
