//! The checks of what vacuum keeps up with and what it leaves behind: dead rows, and the empty
//! space of tables and indexes.

use std::time::Duration;

use serde_json::{Value, json};

use super::{Check, HealthOptions, SLOT_XID_WARNING, Severity, bytes, humanize};
use crate::db;

/// The `autovacuum_naptime` above which the `dead_rows` check suggests a shorter one: 10 s.
const BUSY_TABLE_NAPTIME: f64 = 10.0;

pub(super) fn dead_rows_check(
    tables: &[db::inspect::TableRow],
    settings: &db::inspect::ServerSettings,
    held: bool,
    options: &HealthOptions,
) -> Check {
    let details: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "table": t.name, "live_rows": t.live_rows, "dead_rows": t.dead_rows,
                "last_vacuum": t.last_vacuum, "last_autovacuum": t.last_autovacuum,
                "autovacuum_count": t.autovacuum_count,
            })
        })
        .collect();
    let many = |t: &&db::inspect::TableRow| {
        t.dead_rows > options.dead_rows_warning && t.dead_rows * 5 > t.live_rows
    };
    let counts = |t: &db::inspect::TableRow| {
        format!(
            "skiplock.{} has {} dead rows to {} live",
            t.name, t.dead_rows, t.live_rows
        )
    };
    // Each table with many dead rows, and how long ago it was vacuumed if autovacuum keeps up
    // with it: a table kept up with must not hide one that is not.
    let busy: Vec<(&db::inspect::TableRow, Option<String>)> = tables
        .iter()
        .filter(many)
        .map(|t| (t, keeps_up(t, settings, held)))
        .collect();
    let worst = busy
        .iter()
        .filter(|(_, kept_up)| kept_up.is_none())
        .max_by_key(|(t, _)| t.dead_rows);
    let Some(&(t, _)) = worst else {
        let summary = match busy.iter().max_by_key(|(t, _)| t.dead_rows) {
            Some((t, Some(ago))) => format!(
                "{}, vacuumed {ago} ago: autovacuum keeps up with a busy table",
                counts(t)
            ),
            _ => "dead rows are being vacuumed away".to_owned(),
        };
        return Check::new("dead_rows", Severity::Ok, summary).details(Value::Array(details));
    };
    let counts = counts(t);
    Check::new(
        "dead_rows",
        Severity::Warning,
        format!(
            "{counts} (last autovacuum: {})",
            t.last_autovacuum
                .map_or_else(|| "never".to_owned(), |at| at.to_rfc3339())
        ),
    )
    .remedy(dead_rows_remedy(
        settings.autovacuum.then_some(settings.autovacuum_naptime_s),
    ))
    .details(Value::Array(details))
}

/// Whether a holder of the horizon has kept vacuum from removing rows long enough to matter:
/// a session or prepared transaction as old as the sooner of the two horizon warnings, a slot
/// past the transaction age `xmin_horizon` warns at (a slot has no age in time).
pub(super) fn holds(holder: Option<&db::inspect::HorizonHolder>, options: &HealthOptions) -> bool {
    let soon = options.horizon_busy_warning.min(options.horizon_warning);
    holder.is_some_and(|holder| match holder.age_secs {
        Some(secs) => secs >= soon.as_secs_f64(),
        None => holder.xid_age.unwrap_or(0) > SLOT_XID_WARNING,
    })
}

/// How long ago `table` was vacuumed, when its dead rows are what a busy table gathers
/// between autovacuum's passes rather than a problem: autovacuum is on, visits every
/// [`BUSY_TABLE_NAPTIME`] or more often (a longer naptime is worth a warning of its own, see
/// [`dead_rows_remedy`]), finished a pass over the table within two naptimes and a minute, and
/// nothing has held the horizon long ([`holds`]), which this role must be able to see
/// (`pg_read_all_stats`: otherwise another role's transaction is invisible to it).
///
/// At 14,000 jobs/s with a 10-s naptime, a healthy job table holds 0.7 million dead rows to
/// about a million live ones between passes (docs/performance.md): a warning there would never
/// go away.
fn keeps_up(
    table: &db::inspect::TableRow,
    settings: &db::inspect::ServerSettings,
    held: bool,
) -> Option<String> {
    let naptime = settings.autovacuum_naptime_s;
    let on = settings.autovacuum && settings.track_counts && !table.autovacuum_disabled;
    let held = held || !settings.sees_all_sessions;
    let ago = table.vacuumed_secs_ago?.max(0.0);
    (on && !held && naptime <= BUSY_TABLE_NAPTIME && ago <= 2.0 * naptime + 60.0)
        .then(|| humanize(Duration::from_secs_f64(ago)))
}

/// What to do about dead rows: the horizon first; then, if autovacuum is on and waits long
/// between passes (`naptime_s`), a shorter wait (a busy queue table gathers its dead rows for
/// a whole naptime).
fn dead_rows_remedy(naptime_s: Option<f64>) -> String {
    let first = "check the xmin_horizon check first (nothing can remove rows it holds), \
                 then VACUUM the table";
    let Some(naptime_s) = naptime_s.filter(|&n| n > BUSY_TABLE_NAPTIME) else {
        return first.to_owned();
    };
    format!(
        "{first}; if dead rows come back while the horizon is young, autovacuum may be visiting \
         the table too seldom: autovacuum_naptime is {naptime_s} s, and 10s keeps a busy queue \
         table smaller (docs/operations.md, Dead tuples)"
    )
}

/// The share of a table that holds no row, from its statistics (heap pages of 8 KiB with a
/// 24-byte header per row and a 4-byte pointer; `None` before ANALYZE). Dead rows count as
/// used: vacuum frees their room for new rows, and a busy queue table always has some (at
/// 14,000 jobs/s on a stock server, twice as many as live ones between autovacuum's passes).
fn bloat(table: &db::inspect::TableRow) -> Option<f64> {
    let width = table.row_width?;
    if table.table_bytes == 0 {
        return None;
    }
    let rows = (table.live_rows + table.dead_rows) as f64;
    let expected = rows * (width + 28) as f64 * 100.0 / f64::from(table.fillfactor.max(10));
    Some((1.0 - expected / table.table_bytes as f64).clamp(0.0, 1.0))
}

pub(super) fn bloat_check(tables: &[db::inspect::TableRow], options: &HealthOptions) -> Check {
    let bloated = tables.iter().find(|t| {
        t.table_bytes > options.bloat_min_bytes && bloat(t).is_some_and(|share| share > 0.5)
    });
    match bloated {
        Some(t) => Check::new(
            "bloat",
            Severity::Warning,
            format!(
                "skiplock.{} is about {:.0}% empty space ({} on disk)",
                t.name,
                bloat(t).unwrap_or_default() * 100.0,
                bytes(t.table_bytes)
            ),
        )
        .remedy(
            "vacuum gives back an emptied end of the table by itself, often within minutes; \
             if this stays through several autovacuum passes, pg_repack rebuilds the table \
             online, VACUUM FULL with every claim and enqueue waiting for it",
        ),
        None => Check::new(
            "bloat",
            Severity::Ok,
            "no table is mostly empty space".to_owned(),
        ),
    }
}

/// A B-tree page: 8 KiB, of which a 24-byte header and a 16-byte trailer are not for entries.
const INDEX_PAGE: f64 = 8192.0;
const INDEX_PAGE_ROOM: f64 = 8192.0 - 24.0 - 16.0;

/// The share of an index that holds no entry, from the statistics: an entry is an 8-byte
/// header and the key, aligned to 8 bytes, and a 4-byte pointer; pages are filled to the
/// fillfactor, and the smallest index has a metapage and a root. The entries of dead rows
/// count as used (vacuum frees their room for new ones). `None` without statistics.
fn index_bloat(index: &db::inspect::IndexRow) -> Option<f64> {
    let width = index.key_width?;
    let entries = index.entries? + index.dead_rows;
    if index.bytes == 0 {
        return None;
    }
    let entry = ((8 + width.max(0) + 7) / 8 * 8 + 4) as f64;
    let pages = entries as f64 * entry * 100.0
        / f64::from(index.fillfactor.clamp(10, 100))
        / INDEX_PAGE_ROOM;
    let expected = (pages.ceil() + 1.0).max(2.0) * INDEX_PAGE;
    Some((1.0 - expected / index.bytes as f64).clamp(0.0, 1.0))
}

pub(super) fn index_bloat_check(
    indexes: &[db::inspect::IndexRow],
    options: &HealthOptions,
) -> Check {
    let large = || indexes.iter().filter(|i| i.bytes > options.bloat_min_bytes);
    let mut bloated: Vec<(&db::inspect::IndexRow, f64)> = large()
        .filter_map(|i| index_bloat(i).map(|share| (i, share)))
        .filter(|&(_, share)| share > 0.5)
        .collect();
    // Most empty space first: where a rebuild gives the most back.
    bloated.sort_by(|(a, a_share), (b, b_share)| {
        (b.bytes as f64 * b_share).total_cmp(&(a.bytes as f64 * a_share))
    });
    let Some(&(worst, share)) = bloated.first() else {
        let unknown: Vec<&str> = large()
            .filter(|i| index_bloat(i).is_none())
            .map(|i| i.qualified.as_str())
            .collect();
        if unknown.is_empty() {
            return Check::new(
                "index_bloat",
                Severity::Ok,
                "no index is mostly empty space".to_owned(),
            );
        }
        return Check::new(
            "index_bloat",
            Severity::Info,
            format!(
                "no statistics to estimate {} by (not analyzed yet, or not readable by this \
                 role)",
                unknown.join(", ")
            ),
        )
        .remedy("ANALYZE the table, or run the doctor as its owner");
    };
    let details: Vec<Value> = bloated
        .iter()
        .map(|(i, share)| json!({"index": i.name, "bytes": i.bytes, "estimated_bloat": share}))
        .collect();
    let others = match bloated.len() {
        1 => String::new(),
        n => format!(", and {} more", n - 1),
    };
    Check::new(
        "index_bloat",
        Severity::Warning,
        format!(
            "{} is about {:.0}% empty space ({} on disk){others}",
            worst.qualified,
            share * 100.0,
            bytes(worst.bytes)
        ),
    )
    .remedy(format!(
        "REINDEX INDEX CONCURRENTLY {} rebuilds it without blocking the queue (it waits for \
         older transactions: end any long one first)",
        worst.qualified
    ))
    .details(Value::Array(details))
}

pub(super) fn sizes_check(tables: &[db::inspect::TableRow]) -> Check {
    let total: i64 = tables.iter().map(|t| t.table_bytes + t.index_bytes).sum();
    let details: Vec<Value> = tables
        .iter()
        .map(|t| {
            json!({
                "table": t.name, "table_bytes": t.table_bytes, "index_bytes": t.index_bytes,
                "estimated_bloat": bloat(t),
            })
        })
        .collect();
    Check::new(
        "table_sizes",
        Severity::Info,
        format!("skiplock's tables and indexes take {}", bytes(total)),
    )
    .details(Value::Array(details))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(dead_rows: i64, vacuumed_secs_ago: Option<f64>) -> db::inspect::TableRow {
        db::inspect::TableRow {
            name: "jobs".to_owned(),
            live_rows: 1_000_000,
            dead_rows,
            last_vacuum: None,
            last_autovacuum: None,
            vacuumed_secs_ago,
            autovacuum_count: 1,
            table_bytes: 0,
            index_bytes: 0,
            row_width: None,
            autovacuum_disabled: false,
            fillfactor: 100,
        }
    }

    fn server(autovacuum: bool, naptime_s: f64) -> db::inspect::ServerSettings {
        db::inspect::ServerSettings {
            autovacuum,
            track_counts: true,
            sees_all_sessions: true,
            autovacuum_naptime_s: naptime_s,
        }
    }

    fn severity(
        table: db::inspect::TableRow,
        server: db::inspect::ServerSettings,
        held: bool,
    ) -> Severity {
        dead_rows_check(&[table], &server, held, &HealthOptions::default()).severity
    }

    #[test]
    fn dead_rows_autovacuum_keeps_up_with_are_no_warning_and_the_rest_are() {
        // A busy job table between passes (0.7 million dead rows to a million live, vacuumed
        // 5 s ago, a pass every 10 s at most): healthy.
        let busy = || table(700_000, Some(5.0));
        assert_eq!(severity(busy(), server(true, 10.0), false), Severity::Ok);
        let check = dead_rows_check(&[busy()], &server(true, 10.0), false, &Default::default());
        assert!(
            check
                .summary
                .ends_with("vacuumed 5s ago: autovacuum keeps up with a busy table")
        );
        // Vacuumed up to two naptimes and a minute ago still is.
        assert_eq!(
            severity(table(700_000, Some(80.0)), server(true, 10.0), false),
            Severity::Ok
        );

        // Not when a transaction holds the horizon,
        assert_eq!(
            severity(busy(), server(true, 10.0), true),
            Severity::Warning
        );
        // when the last pass is older,
        let stale = table(700_000, Some(81.0));
        assert_eq!(
            severity(stale, server(true, 10.0), false),
            Severity::Warning
        );
        // never came,
        assert_eq!(
            severity(table(700_000, None), server(true, 10.0), false),
            Severity::Warning
        );
        // or cannot come;
        assert_eq!(
            severity(busy(), server(false, 10.0), false),
            Severity::Warning
        );
        let mut off = busy();
        off.autovacuum_disabled = true;
        assert_eq!(severity(off, server(true, 10.0), false), Severity::Warning);
        // and not with the server's 1-minute naptime, which the remedy names.
        let stock = dead_rows_check(&[busy()], &server(true, 60.0), false, &Default::default());
        assert_eq!(stock.severity, Severity::Warning);
        assert!(
            stock
                .remedy
                .unwrap_or_default()
                .contains("autovacuum_naptime is 60 s")
        );

        // Few dead rows are no news, vacuumed or not.
        assert_eq!(
            severity(table(1_000, None), server(false, 60.0), false),
            Severity::Ok
        );

        // A role that cannot see other sessions cannot tell that nothing holds the horizon.
        let mut blind = server(true, 10.0);
        blind.sees_all_sessions = false;
        assert_eq!(severity(busy(), blind, false), Severity::Warning);

        // A table autovacuum keeps up with does not hide one it does not.
        let mut neglected = table(200_000, None);
        neglected.name = "workflows".to_owned();
        neglected.live_rows = 100_000;
        let both = dead_rows_check(
            &[busy(), neglected],
            &server(true, 10.0),
            false,
            &Default::default(),
        );
        assert_eq!(both.severity, Severity::Warning);
        assert!(
            both.summary
                .starts_with("skiplock.workflows has 200000 dead rows")
        );
    }

    fn holder(age_secs: Option<f64>, xid_age: i32) -> db::inspect::HorizonHolder {
        db::inspect::HorizonHolder {
            holder: "transaction".to_owned(),
            pid: Some(1),
            name: None,
            client: None,
            age_secs,
            xid_age: Some(xid_age),
            state: None,
            query: None,
        }
    }

    #[test]
    fn a_holder_counts_from_the_sooner_horizon_warning_and_a_slot_by_its_transaction_age() {
        let mut options = HealthOptions::default();
        assert!(!holds(None, &options));
        assert!(!holds(Some(&holder(Some(59.0), 10)), &options));
        assert!(holds(Some(&holder(Some(60.0), 10)), &options));
        options.horizon_warning = Duration::from_secs(20);
        assert!(holds(Some(&holder(Some(30.0), 10)), &options));
        // Slots: no age in time.
        assert!(!holds(Some(&holder(None, 500_000)), &options));
        assert!(holds(Some(&holder(None, 2_000_000)), &options));
    }
}
