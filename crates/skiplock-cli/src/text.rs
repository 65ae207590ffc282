//! Text for people: aligned tables, short durations and times relative to now.

use std::io::Write as _;
use std::time::Duration;

use chrono::{DateTime, Utc};

/// Writes `text` to standard output, at once.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Writes `value` to standard output as indented JSON, its fields in their declared order.
pub(crate) fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    print(&text)
}

/// `42s`, `3m`, `2h 5m`, `3d 4h`: one unit under an hour, two above.
pub(crate) fn short(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0..60 => format!("{secs}s"),
        60..3_600 => format!("{}m", secs / 60),
        3_600..86_400 => format!("{}h {}m", secs / 3_600, secs % 3_600 / 60),
        _ => format!("{}d {}h", secs / 86_400, secs % 86_400 / 3_600),
    }
}

/// `1 job`, `3 jobs`: `word` with an `s` unless `n` is 1.
pub(crate) fn plural(n: impl std::fmt::Display, word: &str) -> String {
    let n = n.to_string();
    if n == "1" {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `3m ago` or `in 2h 5m`, from `now`.
pub(crate) fn relative(at: DateTime<Utc>, now: DateTime<Utc>) -> String {
    match (now - at).to_std() {
        Ok(past) => format!("{} ago", short(past)),
        Err(_) => format!("in {}", short((at - now).to_std().unwrap_or_default())),
    }
}

/// `2026-05-01 09:30:00 UTC (3m ago)`; `-` for none.
pub(crate) fn time(at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> String {
    at.map_or_else(
        || "-".to_owned(),
        |at| {
            format!(
                "{} ({})",
                at.format("%Y-%m-%d %H:%M:%S UTC"),
                relative(at, now)
            )
        },
    )
}

/// `text` on one line, cut to `max` characters with an ellipsis.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        return line;
    }
    let mut cut: String = line.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A table whose columns are as wide as their widest cell, two spaces apart.
pub(crate) struct Table {
    headers: Vec<&'static str>,
    right: Vec<bool>,
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these headers; a header starting with `>` is right-aligned (numbers).
    pub(crate) fn new(headers: &[&'static str]) -> Self {
        Self {
            right: headers.iter().map(|h| h.starts_with('>')).collect(),
            headers: headers.iter().map(|h| h.trim_start_matches('>')).collect(),
            rows: Vec::new(),
        }
    }

    pub(crate) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The lines, without trailing spaces, each ending in a newline.
    pub(crate) fn render(&self) -> String {
        let header: Vec<String> = self.headers.iter().map(|h| (*h).to_owned()).collect();
        let lines: Vec<&Vec<String>> = std::iter::once(&header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.headers.len())
            .map(|i| {
                lines
                    .iter()
                    .map(|cells| cells.get(i).map_or(0, |c| c.chars().count()))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for cells in lines {
            let mut line = String::new();
            for (i, width) in widths.iter().enumerate() {
                let cell = cells.get(i).map_or("", String::as_str);
                let pad = " ".repeat(width - cell.chars().count());
                if i > 0 {
                    line.push_str("  ");
                }
                if self.right[i] {
                    line.push_str(&pad);
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    line.push_str(&pad);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_relative_times_are_short() {
        assert_eq!(short(Duration::from_secs(42)), "42s");
        assert_eq!(short(Duration::from_secs(3 * 60 + 59)), "3m");
        assert_eq!(short(Duration::from_secs(2 * 3_600 + 5 * 60)), "2h 5m");
        assert_eq!(short(Duration::from_secs(3 * 86_400 + 4 * 3_600)), "3d 4h");
        let now = Utc::now();
        assert_eq!(relative(now - chrono::Duration::minutes(3), now), "3m ago");
        assert_eq!(relative(now + chrono::Duration::hours(2), now), "in 2h 0m");
        assert_eq!(relative(now, now), "0s ago");
    }

    #[test]
    fn tables_align_and_truncate() {
        let mut table = Table::new(&["id", "name", ">n"]);
        table.row(vec!["1".into(), "a".into(), "100".into()]);
        table.row(vec!["22".into(), "bbb".into(), "5".into()]);
        assert_eq!(
            table.render(),
            "id  name    n\n1   a     100\n22  bbb     5\n"
        );
        assert_eq!(truncate("a\nb  c", 10), "a b c");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
