//! Cron expressions evaluated in an IANA time zone, with explicit daylight-saving rules.
//!
//! This is what the periodic-job scheduler uses to turn a [`CronSchedule`] into fire times. All
//! instants going in and out are UTC; the expression is matched against the wall clock of the
//! schedule's time zone.
//!
//! # Format
//!
//! * **5 fields**, as in crontab: `minute hour day-of-month month day-of-week`. The seconds are
//!   0. Day-of-week numbers count the crontab way: `0` and `7` are Sunday, `1` is Monday, …,
//!   `6` is Saturday, so `0 9 * * 1` is Mondays at 09:00 and `0 9 * * 1-5` is weekdays. Names
//!   (`MON`, `mon-fri`, `Sunday`) work too. As in crontab, when both the day-of-month and the
//!   day-of-week field are restricted (neither begins with `*` or `?`), a day matches if
//!   *either* matches: `0 0 13 * 5` fires on every 13th and on every Friday.
//! * **6 fields**, `second minute hour day-of-month month day-of-week`, and **7 fields** with a
//!   trailing `year` (1970–2100): the `cron` crate's own format, passed to it
//!   unchanged. There, day-of-week numbers run from `1` = Sunday to `7` = Saturday (prefer
//!   names), and a day must match both day fields.
//! * The shortcuts `@yearly`, `@monthly`, `@weekly`, `@daily` and `@hourly`: at the start of
//!   each year, month, week (Sunday 00:00), day and hour.
//!
//! Each field takes `*`, numbers, names (months and days of week), ranges `a-b`, steps `*/n`,
//! `a-b/n` and `a/n` (from `a` to the field's maximum), and comma lists. Fire times are whole
//! seconds; years outside 1970–2100 never fire.
//!
//! # Daylight saving time
//!
//! Every fire time is a wall-clock time of the schedule's zone mapped to an instant, with two
//! rules for the hours that a clock change skips or repeats:
//!
//! 1. **A skipped wall-clock time fires once, at the end of the gap.** When clocks spring
//!    forward (Europe/Brussels on 2026-03-29 goes from 02:00 straight to 03:00), a fire time in
//!    the gap (02:30) fires at the first instant after it: 03:00 local, 01:00 UTC. All the fire
//!    times of one gap, and a fire time right at its end (03:00), collapse into that one fire:
//!    `*/15 * * * *` fires once at 03:00 for 02:00, 02:15, 02:30, 02:45 and 03:00, then at
//!    03:15.
//! 2. **A wall-clock time fires at most once: a repeated one at its first occurrence.** When
//!    clocks fall back (Europe/Brussels on 2026-10-25 goes from 03:00 summer time back to 02:00
//!    winter time), 02:30 happens twice; it fires at the first, 02:30+02:00 (00:30 UTC). This
//!    holds for schedules more frequent than hourly too: `*/15 * * * *` or an every-second
//!    schedule fires through the first pass of the repeated hour and not at all during the
//!    second pass, then goes on at 03:00 winter time. No wall-clock time runs twice.
//!
//! The `cron` crate alone (0.17) does otherwise: it silently skips times in a gap, and
//! returns a repeated time twice, in an order that can go back in time for sub-hourly
//! schedules. This module only uses it to find matching wall-clock times, reading them as
//! naive times (in UTC, which has no transitions), and applies the rules above itself.

use std::str::FromStr;

use ::cron::Schedule;
use ::cron::error::Error as ParseError;
use chrono::{
    DateTime, Datelike, FixedOffset, LocalResult, NaiveDate, NaiveDateTime, Offset, TimeDelta,
    TimeZone, Timelike, Utc,
};
use chrono_tz::Tz;

/// The first year the `cron` crate knows.
const FIRST_YEAR: i32 = 1970;
/// The last year the `cron` crate knows.
const LAST_YEAR: i32 = 2100;
/// The longest expression accepted, in bytes: 256. Longer ones are refused with
/// [`CronError::TooLong`] (the `schedules_cron_length` constraint holds the same in SQL).
pub const MAX_CRON_LENGTH: usize = 256;
/// The shortcuts an expression may be.
const SHORTCUTS: [&str; 5] = ["@yearly", "@monthly", "@weekly", "@daily", "@hourly"];
/// Steps of the search for the end of a gap: 192 × 15 minutes covers gaps of up to 48 hours
/// (the longest on record is a whole day, Pacific/Apia on 2011-12-30).
const GAP_SEARCH_STEPS: i32 = 192;

/// A parsed cron expression in an IANA time zone.
///
/// The expression has 5 fields as in crontab (`minute hour day-of-month month day-of-week`,
/// with `0`/`7` = Sunday, `1` = Monday, and a day matching either day field when both are
/// restricted), or the `cron` crate's 6 fields (a leading `second`; `1` = Sunday, prefer
/// names) or 7 (plus a trailing `year`, 1970–2100), or `@hourly`, `@daily`, `@weekly`,
/// `@monthly`, `@yearly`. Fire times are whole seconds, returned in UTC.
///
/// Daylight saving time: a wall-clock time skipped when clocks spring forward fires once, at
/// the end of the gap (all the gap's fire times, and one right at its end, make one fire); a
/// wall-clock time repeated when clocks fall back fires once, at its first occurrence, so a
/// schedule more frequent than hourly fires through the first pass of the repeated hour and
/// not during the second.
#[derive(Clone, Debug)]
pub struct CronSchedule {
    expression: String,
    tz: Tz,
    /// The wall-clock times that fire are those any of these match (two for a 5-field
    /// expression whose day fields are both restricted, one otherwise). They are evaluated on
    /// naive local times, written as UTC.
    schedules: Vec<Schedule>,
}

/// The error of [`CronSchedule::parse`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CronError {
    /// The expression does not parse.
    #[error("invalid cron expression {expression:?}: {reason}")]
    InvalidExpression {
        /// The expression, as given.
        expression: String,
        /// What is wrong with it, on one line, e.g. `minute field: 60 is out of range 0-59`.
        reason: String,
    },
    /// The expression is longer than [`MAX_CRON_LENGTH`] bytes.
    #[error("cron expression is {length} bytes long; at most {MAX_CRON_LENGTH} are allowed")]
    TooLong {
        /// Its length in bytes.
        length: usize,
    },
    /// The time zone is not an IANA time zone name.
    #[error("unknown time zone {timezone:?} (expected an IANA name such as \"Europe/Brussels\")")]
    UnknownTimezone {
        /// The time zone, as given.
        timezone: String,
    },
}

impl CronSchedule {
    /// Parses `expression` (5 fields: `minute hour day-of-month month day-of-week`, as in
    /// crontab; or 6 fields with a leading seconds field; or 7 with a trailing year; or one of
    /// the shortcuts `@hourly`, `@daily`, `@weekly`, `@monthly`, `@yearly`) in the time zone
    /// `timezone`, an IANA name such as `"Europe/Brussels"` or `"UTC"` (case-sensitive).
    ///
    /// # Errors
    /// [`CronError::UnknownTimezone`] for an unknown zone, [`CronError::TooLong`] for an
    /// expression over [`MAX_CRON_LENGTH`] bytes, [`CronError::InvalidExpression`] for
    /// one that does not parse (an empty one included), whose message names the field and
    /// what is wrong with it on one line (`minute field: 60 is out of range 0-59`).
    pub fn parse(expression: &str, timezone: &str) -> Result<Self, CronError> {
        if expression.len() > MAX_CRON_LENGTH {
            return Err(CronError::TooLong {
                length: expression.len(),
            });
        }
        let tz = Tz::from_str(timezone).map_err(|_| CronError::UnknownTimezone {
            timezone: timezone.to_owned(),
        })?;
        let invalid = |reason: String| CronError::InvalidExpression {
            expression: expression.to_owned(),
            reason,
        };
        let fields: Vec<&str> = expression.split_whitespace().collect();
        if !(5..=7).contains(&fields.len()) && !expression.trim_start().starts_with('@') {
            let message = format!(
                "expected 5 fields (minute hour day-of-month month day-of-week), 6 (with a \
                 leading second) or 7 (and a trailing year), or a shortcut such as @daily; \
                 found {}",
                fields.len()
            );
            return Err(invalid(message));
        }
        let message = match fields.len() {
            _ if expression.trim_start().starts_with('@') => {
                let shortcut = expression.trim();
                (!SHORTCUTS.contains(&shortcut)).then(|| {
                    format!(
                        "unknown shortcut {shortcut:?} (expected @yearly, @monthly, @weekly, \
                         @daily or @hourly)"
                    )
                })
            }
            5 => check_fields(&fields, &CRONTAB_FIELDS),
            _ => check_fields(&fields, &SECONDS_FIELDS),
        };
        if let Some(message) = message {
            return Err(invalid(message));
        }
        let sources = if let [minute, hour, day, month, weekday] = fields[..] {
            let days = crontab_weekdays(weekday).map_err(&invalid)?;
            let restricted = |field: &str| !field.starts_with(['*', '?']);
            if restricted(day) && restricted(weekday) {
                vec![
                    format!("0 {minute} {hour} {day} {month} *"),
                    format!("0 {minute} {hour} * {month} {days}"),
                ]
            } else {
                vec![format!("0 {minute} {hour} {day} {month} {days}")]
            }
        } else {
            vec![expression.to_owned()]
        };
        let schedules = sources
            .iter()
            .map(|source| Schedule::from_str(source))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| invalid(reason(&error)))?;
        Ok(Self {
            expression: expression.to_owned(),
            tz,
            schedules,
        })
    }

    /// The expression, as given to [`parse`](Self::parse).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name, as given to [`parse`](Self::parse).
    pub fn timezone(&self) -> &str {
        self.tz.name()
    }

    /// The first fire time strictly after `after`, in UTC; `None` if there is none (the
    /// expression's years are past, or its dates never happen, such as 30 February).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if after.year() > LAST_YEAR + 1 {
            return None;
        }
        let after = after.max(year_start(FIRST_YEAR - 1)?);
        let local = self.latest_local_at(after)?;
        let next = self
            .schedules
            .iter()
            .filter_map(|schedule| schedule.after(&local.and_utc()).next())
            .min()?;
        self.fire_instant(next.naive_utc())
    }

    /// The fire times in `(after, until]`, in UTC and ascending: all of them, or the last
    /// `limit` if there are more (a misfire backfill wants the most recent ones).
    ///
    /// The search runs backwards from `until`, one step per fire time returned, so its cost is
    /// proportional to the length of the result (at most `limit`), whatever the frequency of
    /// the schedule and the length of the interval. The result agrees with repeated
    /// [`next_after`](Self::next_after) calls.
    pub fn fire_times(
        &self,
        after: DateTime<Utc>,
        until: DateTime<Utc>,
        limit: usize,
    ) -> Vec<DateTime<Utc>> {
        let mut times = Vec::new();
        let mut cursor = until;
        while times.len() < limit && cursor > after {
            // `at <= cursor` always holds; checking it makes termination plain.
            let Some(at) = self
                .last_at_or_before(cursor)
                .filter(|at| *at > after && *at <= cursor)
            else {
                break;
            };
            times.push(at);
            match at.checked_sub_signed(TimeDelta::nanoseconds(1)) {
                Some(before) => cursor = before,
                None => break,
            }
        }
        times.reverse();
        times
    }

    /// The last fire time at or before `until`.
    fn last_at_or_before(&self, until: DateTime<Utc>) -> Option<DateTime<Utc>> {
        if until.year() < FIRST_YEAR - 1 {
            return None;
        }
        let until = until.min(year_start(LAST_YEAR + 2)?);
        let local = self.latest_local_at(until)?;
        // The cron crate's search backwards is strict for a whole second, and matches are
        // whole seconds: the last match before the next whole second is the last one up to
        // `local`.
        let bound = local
            .with_nanosecond(0)?
            .checked_add_signed(TimeDelta::seconds(1))?;
        let last = self
            .schedules
            .iter()
            .filter_map(|schedule| schedule.after(&bound.and_utc()).next_back())
            .max()?;
        self.fire_instant(last.naive_utc())
    }

    /// The latest wall-clock time whose fire instant is at or before `at`: the local time of
    /// `at`, except during the second pass of a repeated hour, whose wall-clock times all fired
    /// in the first pass (rule 2): then the last moment of the repeated range.
    fn latest_local_at(&self, at: DateTime<Utc>) -> Option<NaiveDateTime> {
        let local = at.with_timezone(&self.tz).naive_local();
        let LocalResult::Ambiguous(first, _) = self.tz.from_local_datetime(&local) else {
            return Some(local);
        };
        if first.to_utc() == at {
            return Some(local);
        }
        // `at` is in the second pass. Find the transition, a whole second in (first, at], by
        // bisection on the offset (the first pass's before it, the second pass's from it).
        let first_offset = first.offset().fix();
        let (mut lo, mut hi) = (first.timestamp(), at.timestamp() + 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.offset_at(mid)? == first_offset {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let end_of_first_pass = DateTime::from_timestamp(hi, 0)? - TimeDelta::nanoseconds(1);
        Some(end_of_first_pass.with_timezone(&self.tz).naive_local())
    }

    /// The UTC offset of the zone at `timestamp` (seconds since the Unix epoch).
    fn offset_at(&self, timestamp: i64) -> Option<FixedOffset> {
        let at = DateTime::from_timestamp(timestamp, 0)?;
        Some(self.tz.offset_from_utc_datetime(&at.naive_utc()).fix())
    }

    /// The instant a matching wall-clock time `local` (a whole second) fires at: its only or
    /// first occurrence (rule 2), or the end of the gap it falls in (rule 1).
    fn fire_instant(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(at) | LocalResult::Ambiguous(at, _) => Some(at.to_utc()),
            LocalResult::None => self.gap_end(local),
        }
    }

    /// The first instant after the gap that the skipped wall-clock time `local` (a whole
    /// second) falls in: the earliest existing wall-clock time after it, found by stepping
    /// forward to an existing one and bisecting back to the gap's end (whole seconds, as
    /// transitions and offsets are).
    fn gap_end(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        let exists = |at: NaiveDateTime| self.tz.from_local_datetime(&at).earliest().is_some();
        let mut hi = (1..=GAP_SEARCH_STEPS)
            .filter_map(|step| local.checked_add_signed(TimeDelta::minutes(15 * i64::from(step))))
            .find(|at| exists(*at))?;
        let mut lo = local;
        while hi - lo > TimeDelta::seconds(1) {
            let mid = lo + TimeDelta::seconds((hi - lo).num_seconds() / 2);
            if exists(mid) {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        self.tz
            .from_local_datetime(&hi)
            .earliest()
            .map(|at| at.to_utc())
    }
}

/// One field of an expression: its name, its range, and whether it takes names and `?`.
struct FieldSpec {
    name: &'static str,
    min: u32,
    max: u32,
    names: bool,
    any: bool,
    note: &'static str,
}

const fn field(name: &'static str, min: u32, max: u32) -> FieldSpec {
    FieldSpec {
        name,
        min,
        max,
        names: false,
        any: false,
        note: "",
    }
}

const DAY_OF_MONTH: FieldSpec = FieldSpec {
    any: true,
    ..field("day-of-month", 1, 31)
};
const MONTH: FieldSpec = FieldSpec {
    names: true,
    ..field("month", 1, 12)
};

/// The fields of a 5-field (crontab) expression.
const CRONTAB_FIELDS: [FieldSpec; 5] = [
    field("minute", 0, 59),
    field("hour", 0, 23),
    DAY_OF_MONTH,
    MONTH,
    FieldSpec {
        names: true,
        any: true,
        note: " (0 and 7 are Sunday)",
        ..field("day-of-week", 0, 7)
    },
];

/// The fields of a 6- or 7-field expression (the `cron` crate's).
const SECONDS_FIELDS: [FieldSpec; 7] = [
    field("second", 0, 59),
    field("minute", 0, 59),
    field("hour", 0, 23),
    DAY_OF_MONTH,
    MONTH,
    FieldSpec {
        names: true,
        any: true,
        note: " (1 is Sunday)",
        ..field("day-of-week", 1, 7)
    },
    field("year", FIRST_YEAR as u32, LAST_YEAR as u32),
];

/// What is wrong with the first faulty field, on one line; `None` when every field is well
/// formed (names are checked by the `cron` crate).
fn check_fields(fields: &[&str], specs: &[FieldSpec]) -> Option<String> {
    fields.iter().zip(specs).find_map(|(field, spec)| {
        let message = check_field(field, spec).err()?;
        Some(format!("{} field: {message}", spec.name))
    })
}

/// Checks one field: a comma list of `*`, `?` (day fields), a value or a range `a-b`, each
/// with an optional step `/n`.
fn check_field(field: &str, spec: &FieldSpec) -> Result<(), String> {
    for item in field.split(',') {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if let Some(step) = step {
            match step.parse::<u32>() {
                Ok(n) if (1..=spec.max).contains(&n) => {}
                Ok(n) => return Err(format!("step {n} is out of range 1-{}", spec.max)),
                Err(_) => return Err(format!("step {step:?} is not a number")),
            }
        }
        match base {
            "" => return Err(format!("{item:?} is missing a value")),
            "*" => continue,
            "?" if spec.any => continue,
            "?" => return Err("? is only allowed in the day fields".to_owned()),
            _ => {}
        }
        match base.split_once('-') {
            Some((first, last)) => {
                let first = check_value(first, spec)?;
                let last = check_value(last, spec)?;
                if let (Some(first), Some(last)) = (first, last)
                    && first > last
                {
                    return Err(format!("range {base} runs backwards"));
                }
            }
            None => {
                check_value(base, spec)?;
            }
        }
    }
    Ok(())
}

/// A number in the field's range (`Some`), or a name in a field that takes names (`None`).
fn check_value(token: &str, spec: &FieldSpec) -> Result<Option<u32>, String> {
    if token.is_empty() {
        return Err("a range is missing a bound".to_owned());
    }
    if token.bytes().all(|byte| byte.is_ascii_digit()) {
        let (min, max, note) = (spec.min, spec.max, spec.note);
        return match token.parse::<u32>() {
            Ok(n) if (min..=max).contains(&n) => Ok(Some(n)),
            _ => Err(format!("{token} is out of range {min}-{max}{note}")),
        };
    }
    if spec.names && token.bytes().all(|byte| byte.is_ascii_alphabetic()) {
        return Ok(None);
    }
    Err(format!("{token:?} is not a valid value"))
}

/// The reason in a parse error, on one line: the `cron` crate's parser errors show the input
/// and a caret under the fault, then (not always) a message.
fn reason(error: &ParseError) -> String {
    let text = error.to_string();
    let lines: Vec<&str> = text.lines().collect();
    match lines.len() {
        0 | 1 => text,
        2 => "not valid cron syntax".to_owned(),
        _ => lines[2..].join(" "),
    }
}

/// Midnight UTC at the start of `year`.
fn year_start(year: i32) -> Option<DateTime<Utc>> {
    Some(
        NaiveDate::from_ymd_opt(year, 1, 1)?
            .and_hms_opt(0, 0, 0)?
            .and_utc(),
    )
}

/// Rewrites a crontab day-of-week field (`0`/`7` = Sunday … `6` = Saturday) for the cron crate
/// (`1` = Sunday … `7` = Saturday). Items with numbers become explicit lists; items without
/// (`*`, `*/2`, `MON-FRI`) mean the same in both and pass unchanged.
fn crontab_weekdays(field: &str) -> Result<String, String> {
    let items = field.split(',').map(|item| {
        let (base, step) = match item.split_once('/') {
            Some((base, step)) => (base, Some(step)),
            None => (item, None),
        };
        if !base.bytes().any(|byte| byte.is_ascii_digit()) {
            return Ok(item.to_owned());
        }
        let (first, last) = match base.split_once('-') {
            Some((first, last)) => (crontab_weekday(first)?, crontab_weekday(last)?),
            None => {
                let first = crontab_weekday(base)?;
                (first, if step.is_some() { 7 } else { first })
            }
        };
        if first > last {
            return Err(format!("day-of-week range {base:?} runs backwards"));
        }
        let step = match step {
            None => 1,
            Some(step) => step
                .parse::<usize>()
                .ok()
                .filter(|step| *step > 0)
                .ok_or_else(|| format!("invalid day-of-week step {step:?}"))?,
        };
        let days: Vec<String> = (first..=last)
            .step_by(step)
            .map(|day| (day % 7 + 1).to_string())
            .collect();
        Ok(days.join(","))
    });
    Ok(items.collect::<Result<Vec<_>, String>>()?.join(","))
}

/// A crontab day of week, number (0–7) or name (at least three letters), as 0 (Sunday) to 7.
fn crontab_weekday(token: &str) -> Result<u32, String> {
    const NAMES: [&str; 7] = [
        "sunday",
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
    ];
    if let Ok(number) = token.parse::<u32>() {
        return if number <= 7 {
            Ok(number)
        } else {
            Err(format!(
                "day of week {number} is out of range 0-7 (0 and 7 are Sunday)"
            ))
        };
    }
    let lower = token.to_ascii_lowercase();
    (0..)
        .zip(NAMES)
        .find(|(_, name)| lower.len() >= 3 && name.starts_with(&lower))
        .map(|(number, _)| number)
        .ok_or_else(|| format!("{token:?} is not a day of the week"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(rfc3339)
            .expect("test instant")
            .to_utc()
    }

    fn schedule(expression: &str, timezone: &str) -> CronSchedule {
        CronSchedule::parse(expression, timezone).expect("valid schedule")
    }

    /// The fire times in `(after, until]` as RFC 3339 UTC strings.
    fn fires(expression: &str, timezone: &str, after: &str, until: &str) -> Vec<String> {
        schedule(expression, timezone)
            .fire_times(at(after), at(until), usize::MAX)
            .iter()
            .map(|time| time.to_rfc3339())
            .collect()
    }

    fn utc_list(times: &[&str]) -> Vec<String> {
        times.iter().map(|time| at(time).to_rfc3339()).collect()
    }

    #[test]
    fn brussels_spring_forward_daily_0230_fires_once_at_0300() {
        let got = fires(
            "30 2 * * *",
            "Europe/Brussels",
            "2026-03-27T00:00:00Z",
            "2026-03-31T00:00:00Z",
        );
        let want = utc_list(&[
            "2026-03-27T01:30:00Z", // 02:30 CET
            "2026-03-28T01:30:00Z", // 02:30 CET
            "2026-03-29T01:00:00Z", // 02:30 skipped: 03:00 CEST
            "2026-03-30T00:30:00Z", // 02:30 CEST
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn brussels_spring_forward_quarter_hours_collapse_into_one() {
        let got = fires(
            "*/15 * * * *",
            "Europe/Brussels",
            "2026-03-29T00:30:00Z",
            "2026-03-29T01:30:00Z",
        );
        // 02:00, 02:15, 02:30, 02:45 (skipped) and 03:00 fire once, at 03:00 CEST.
        let want = utc_list(&[
            "2026-03-29T00:45:00Z",
            "2026-03-29T01:00:00Z",
            "2026-03-29T01:15:00Z",
            "2026-03-29T01:30:00Z",
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn brussels_fall_back_daily_0230_fires_at_first_occurrence() {
        let got = fires(
            "30 2 * * *",
            "Europe/Brussels",
            "2026-10-24T00:00:00Z",
            "2026-10-27T00:00:00Z",
        );
        let want = utc_list(&[
            "2026-10-24T00:30:00Z", // 02:30 CEST
            "2026-10-25T00:30:00Z", // first 02:30 (CEST), not the second (01:30 UTC)
            "2026-10-26T01:30:00Z", // 02:30 CET
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn brussels_fall_back_quarter_hours_fire_in_the_first_pass_only() {
        let cron = schedule("*/15 * * * *", "Europe/Brussels");
        let got: Vec<String> = cron
            .fire_times(at("2026-10-24T23:30:00Z"), at("2026-10-25T02:30:00Z"), 100)
            .iter()
            .map(|time| time.to_rfc3339())
            .collect();
        let want = utc_list(&[
            "2026-10-24T23:45:00Z", // 01:45 CEST
            "2026-10-25T00:00:00Z", // 02:00 CEST
            "2026-10-25T00:15:00Z",
            "2026-10-25T00:30:00Z",
            "2026-10-25T00:45:00Z", // 02:45 CEST; the second pass (01:00-02:00 UTC) is silent
            "2026-10-25T02:00:00Z", // 03:00 CET
            "2026-10-25T02:15:00Z",
            "2026-10-25T02:30:00Z",
        ]);
        assert_eq!(got, want);
        // From inside the second pass, the next fire is 03:00 CET.
        for inside in [
            "2026-10-25T01:00:00Z",
            "2026-10-25T01:20:00Z",
            "2026-10-25T01:59:59.5Z",
        ] {
            assert_eq!(
                cron.next_after(at(inside)),
                Some(at("2026-10-25T02:00:00Z"))
            );
        }
        assert_eq!(
            cron.next_after(at("2026-10-25T00:50:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            cron.next_after(at("2026-10-25T00:10:00Z")),
            Some(at("2026-10-25T00:15:00Z"))
        );
    }

    #[test]
    fn brussels_hourly_around_both_transitions() {
        let spring = fires(
            "0 * * * *",
            "Europe/Brussels",
            "2026-03-28T22:30:00Z",
            "2026-03-29T03:30:00Z",
        );
        let want = utc_list(&[
            "2026-03-28T23:00:00Z", // 00:00 CET
            "2026-03-29T00:00:00Z", // 01:00 CET
            "2026-03-29T01:00:00Z", // 02:00 (skipped) and 03:00 CEST, once
            "2026-03-29T02:00:00Z", // 04:00 CEST
            "2026-03-29T03:00:00Z",
        ]);
        assert_eq!(spring, want);
        let fall = fires(
            "0 * * * *",
            "Europe/Brussels",
            "2026-10-24T22:30:00Z",
            "2026-10-25T03:30:00Z",
        );
        let want = utc_list(&[
            "2026-10-24T23:00:00Z", // 01:00 CEST
            "2026-10-25T00:00:00Z", // 02:00 CEST; 02:00 CET (01:00 UTC) does not fire
            "2026-10-25T02:00:00Z", // 03:00 CET
            "2026-10-25T03:00:00Z",
        ]);
        assert_eq!(fall, want);
    }

    #[test]
    fn new_york_spring_forward() {
        // 2026-03-08: 02:00 EST becomes 03:00 EDT (07:00 UTC).
        let daily = fires(
            "30 2 * * *",
            "America/New_York",
            "2026-03-07T00:00:00Z",
            "2026-03-10T00:00:00Z",
        );
        let want = utc_list(&[
            "2026-03-07T07:30:00Z", // 02:30 EST
            "2026-03-08T07:00:00Z", // skipped: 03:00 EDT
            "2026-03-09T06:30:00Z", // 02:30 EDT
        ]);
        assert_eq!(daily, want);
        let quarters = fires(
            "*/15 * * * *",
            "America/New_York",
            "2026-03-08T06:30:00Z",
            "2026-03-08T07:30:00Z",
        );
        let want = utc_list(&[
            "2026-03-08T06:45:00Z",
            "2026-03-08T07:00:00Z",
            "2026-03-08T07:15:00Z",
            "2026-03-08T07:30:00Z",
        ]);
        assert_eq!(quarters, want);
        let hourly = fires(
            "0 * * * *",
            "America/New_York",
            "2026-03-08T05:30:00Z",
            "2026-03-08T08:30:00Z",
        );
        let want = utc_list(&[
            "2026-03-08T06:00:00Z", // 01:00 EST
            "2026-03-08T07:00:00Z", // 02:00 (skipped) and 03:00 EDT, once
            "2026-03-08T08:00:00Z", // 04:00 EDT
        ]);
        assert_eq!(hourly, want);
    }

    #[test]
    fn new_york_fall_back() {
        // 2026-11-01: 02:00 EDT becomes 01:00 EST (06:00 UTC): 01:00-01:59 happens twice.
        let daily = fires(
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T00:00:00Z",
            "2026-11-03T00:00:00Z",
        );
        let want = utc_list(&[
            "2026-10-31T05:30:00Z", // 01:30 EDT
            "2026-11-01T05:30:00Z", // first 01:30 (EDT)
            "2026-11-02T06:30:00Z", // 01:30 EST
        ]);
        assert_eq!(daily, want);
        let at_0230 = fires(
            "30 2 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            "2026-11-02T00:00:00Z",
        );
        assert_eq!(at_0230, utc_list(&["2026-11-01T07:30:00Z"]));
        let quarters = fires(
            "*/15 * * * *",
            "America/New_York",
            "2026-11-01T05:30:00Z",
            "2026-11-01T07:15:00Z",
        );
        let want = utc_list(&[
            "2026-11-01T05:45:00Z", // 01:45 EDT; the second pass (06:00-07:00 UTC) is silent
            "2026-11-01T07:00:00Z", // 02:00 EST
            "2026-11-01T07:15:00Z",
        ]);
        assert_eq!(quarters, want);
        let hourly = fires(
            "0 * * * *",
            "America/New_York",
            "2026-11-01T03:30:00Z",
            "2026-11-01T08:30:00Z",
        );
        let want = utc_list(&[
            "2026-11-01T04:00:00Z", // 00:00 EDT
            "2026-11-01T05:00:00Z", // 01:00 EDT; 01:00 EST (06:00 UTC) does not fire
            "2026-11-01T07:00:00Z", // 02:00 EST
            "2026-11-01T08:00:00Z",
        ]);
        assert_eq!(hourly, want);
    }

    #[test]
    fn every_second_across_transitions() {
        let every = schedule("* * * * * *", "Europe/Brussels");
        let spring = every.fire_times(
            at("2026-03-29T00:59:57Z"),
            at("2026-03-29T01:00:03Z"),
            usize::MAX,
        );
        // A steady one per second: the whole skipped hour (and 03:00:00) is the 01:00:00 fire.
        let want: Vec<_> = (-2..=3)
            .map(|second| at("2026-03-29T01:00:00Z") + TimeDelta::seconds(second))
            .collect();
        assert_eq!(spring, want);

        let fall = every.fire_times(
            at("2026-10-25T00:59:57Z"),
            at("2026-10-25T02:00:02Z"),
            usize::MAX,
        );
        let want = utc_list(&[
            "2026-10-25T00:59:58Z",
            "2026-10-25T00:59:59Z", // 02:59:59 CEST; the second pass is silent
            "2026-10-25T02:00:00Z", // 03:00:00 CET
            "2026-10-25T02:00:01Z",
            "2026-10-25T02:00:02Z",
        ]);
        let got: Vec<String> = fall.iter().map(|time| time.to_rfc3339()).collect();
        assert_eq!(got, want);
        assert_eq!(
            every.next_after(at("2026-10-25T01:30:00Z")),
            Some(at("2026-10-25T02:00:00Z"))
        );
        assert_eq!(
            every.next_after(at("2026-03-29T00:59:59.5Z")),
            Some(at("2026-03-29T01:00:00Z"))
        );
        assert_eq!(
            every.next_after(at("2026-03-29T01:00:00Z")),
            Some(at("2026-03-29T01:00:01Z"))
        );
        // The last 3 of the fall-back range.
        let last = every.fire_times(at("2026-10-25T00:59:57Z"), at("2026-10-25T02:00:02Z"), 3);
        assert_eq!(last, fall[2..].to_vec());
    }

    #[test]
    fn a_skipped_day_fires_once_at_its_end() {
        // Pacific/Apia skipped 2011-12-30 entirely (-10:00 to +14:00 at midnight).
        let got = fires(
            "0 12 * * *",
            "Pacific/Apia",
            "2011-12-29T00:00:00Z",
            "2011-12-31T00:00:00Z",
        );
        let want = utc_list(&[
            "2011-12-29T22:00:00Z", // 2011-12-29 12:00 -10:00
            "2011-12-30T10:00:00Z", // 2011-12-30 12:00 skipped: 2011-12-31 00:00 +14:00
            "2011-12-30T22:00:00Z", // 2011-12-31 12:00 +14:00
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn fire_times_limits_and_long_ranges() {
        let every = schedule("* * * * * *", "UTC");
        // A year of seconds: only the last 5 are computed.
        let last = every.fire_times(at("2025-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"), 5);
        let want: Vec<_> = (-4..=0)
            .map(|second| at("2026-01-01T00:00:00Z") + TimeDelta::seconds(second))
            .collect();
        assert_eq!(last, want);
        assert!(
            every
                .fire_times(at("2025-01-01T00:00:00Z"), at("2026-01-01T00:00:00Z"), 0)
                .is_empty()
        );
        let same = at("2026-01-01T00:00:00Z");
        assert!(every.fire_times(same, same, 10).is_empty());
        assert!(
            every
                .fire_times(same, same - TimeDelta::hours(1), 10)
                .is_empty()
        );
        // `after` excluded, `until` included.
        let hourly = schedule("0 * * * *", "UTC");
        assert_eq!(
            hourly.fire_times(at("2026-01-01T00:00:00Z"), at("2026-01-01T02:00:00Z"), 10),
            vec![at("2026-01-01T01:00:00Z"), at("2026-01-01T02:00:00Z")]
        );
        // Sub-second bounds.
        assert_eq!(
            hourly.fire_times(
                at("2026-01-01T00:59:59.9Z"),
                at("2026-01-01T01:00:00.1Z"),
                10
            ),
            vec![at("2026-01-01T01:00:00Z")]
        );
    }

    #[test]
    fn utc_schedules_and_crontab_weekdays() {
        let next = |expression: &str, after: &str| {
            schedule(expression, "UTC")
                .next_after(at(after))
                .map(|time| time.to_rfc3339())
        };
        // 2026-03-01 is a Sunday, 2026-03-02 a Monday.
        let monday = Some(at("2026-03-02T09:00:00Z").to_rfc3339());
        let sunday = Some(at("2026-03-08T09:00:00Z").to_rfc3339());
        for expression in ["0 9 * * 1", "0 9 * * MON", "0 9 * * mon-fri", "0 9 * * 1-5"] {
            assert_eq!(
                next(expression, "2026-03-01T12:00:00Z"),
                monday,
                "{expression}"
            );
        }
        for expression in ["0 9 * * 0", "0 9 * * 7", "0 9 * * SUN", "0 9 * * 0/7"] {
            assert_eq!(
                next(expression, "2026-03-02T00:00:00Z"),
                sunday,
                "{expression}"
            );
        }
        assert_eq!(
            next("0 9 * * 6-7", "2026-03-02T00:00:00Z"),
            Some(at("2026-03-07T09:00:00Z").to_rfc3339())
        );
        // */2 is Sunday, Tuesday, Thursday, Saturday; 1-5/2 Monday, Wednesday, Friday.
        let days = |expression: &str| -> Vec<u32> {
            schedule(expression, "UTC")
                .fire_times(at("2026-03-01T00:00:00Z"), at("2026-03-08T00:00:00Z"), 10)
                .iter()
                .map(|time| time.weekday().num_days_from_sunday())
                .collect()
        };
        assert_eq!(days("0 9 * * */2"), vec![0, 2, 4, 6]);
        assert_eq!(days("0 9 * * 1-5/2"), vec![1, 3, 5]);
        assert_eq!(days("0 9 * * 0,3,TUE"), vec![0, 2, 3]);
        // 6 fields: the cron crate's numbering, 2 = Monday.
        assert_eq!(next("0 0 9 * * 2", "2026-03-01T12:00:00Z"), monday);
        assert_eq!(next("0 0 9 * * Mon", "2026-03-01T12:00:00Z"), monday);
        // Both day fields restricted: either matches (every 13th and every Friday).
        let dates: Vec<u32> = schedule("0 0 13 * 5", "UTC")
            .fire_times(at("2026-03-01T00:00:00Z"), at("2026-04-15T00:00:00Z"), 20)
            .iter()
            .map(|time| time.month() * 100 + time.day())
            .collect();
        assert_eq!(dates, vec![306, 313, 320, 327, 403, 410, 413]);
        // One starting with `*`: both must match.
        let dates: Vec<u32> = schedule("0 0 */2 * 5", "UTC")
            .fire_times(at("2026-03-01T00:00:00Z"), at("2026-04-15T00:00:00Z"), 20)
            .iter()
            .map(|time| time.month() * 100 + time.day())
            .collect();
        assert_eq!(dates, vec![313, 327, 403]);
        // Seconds, shortcuts, years.
        assert_eq!(
            next("*/10 * * * * *", "2026-03-01T12:00:05Z"),
            Some(at("2026-03-01T12:00:10Z").to_rfc3339())
        );
        assert_eq!(
            next("@hourly", "2026-03-01T12:00:00Z"),
            Some(at("2026-03-01T13:00:00Z").to_rfc3339())
        );
        assert_eq!(
            next("@daily", "2026-03-01T12:00:00Z"),
            Some(at("2026-03-02T00:00:00Z").to_rfc3339())
        );
        assert_eq!(
            next("@weekly", "2026-03-02T12:00:00Z"),
            Some(at("2026-03-08T00:00:00Z").to_rfc3339())
        );
        assert_eq!(
            next("@monthly", "2026-03-02T12:00:00Z"),
            Some(at("2026-04-01T00:00:00Z").to_rfc3339())
        );
        assert_eq!(
            next("@yearly", "2026-03-02T12:00:00Z"),
            Some(at("2027-01-01T00:00:00Z").to_rfc3339())
        );
        assert_eq!(
            next("0 0 12 1 1 * 2027", "2026-03-02T12:00:00Z"),
            Some(at("2027-01-01T12:00:00Z").to_rfc3339())
        );
        assert_eq!(next("0 0 12 1 1 * 2025", "2026-03-02T12:00:00Z"), None);
        assert_eq!(next("0 0 30 2 *", "2026-03-02T12:00:00Z"), None);
        let yearly = schedule("@yearly", "UTC");
        assert!(
            yearly
                .fire_times(at("2026-03-02T12:00:00Z"), at("2027-01-01T00:00:00Z"), 5)
                .len()
                == 1
        );
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for expression in ["* * * * * *", "0 9 * * 1", "@yearly"] {
            for timezone in ["UTC", "Pacific/Kiritimati", "Pacific/Pago_Pago"] {
                let cron = schedule(expression, timezone);
                assert_eq!(cron.next_after(DateTime::<Utc>::MAX_UTC), None);
                assert!(cron.next_after(DateTime::<Utc>::MIN_UTC).is_some());
                assert!(
                    cron.fire_times(DateTime::<Utc>::MIN_UTC, at("1969-12-31T00:00:00Z"), 3)
                        .is_empty()
                );
                assert_eq!(
                    cron.fire_times(DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC, 1)
                        .len(),
                    1
                );
            }
        }
        let first = schedule("0 0 1 1 *", "UTC").next_after(DateTime::<Utc>::MIN_UTC);
        assert_eq!(first, Some(at("1970-01-01T00:00:00Z")));
        let last = schedule("0 0 1 1 *", "UTC").fire_times(
            at("2000-01-01T00:00:00Z"),
            DateTime::<Utc>::MAX_UTC,
            1,
        );
        assert_eq!(last, vec![at("2100-01-01T00:00:00Z")]);
    }

    #[test]
    fn invalid_input() {
        for expression in [
            "",
            "   ",
            "hello",
            "* * * *",
            "61 * * * *",
            "0 9 * * 8",
            "0 9 * * 5-1",
            "0 9 * * 1/0",
            "0 9 * * Funday",
            "0 0 30 2 * * * *",
            "@every_minute",
        ] {
            match CronSchedule::parse(expression, "UTC") {
                Err(error @ CronError::InvalidExpression { .. }) => {
                    let message = error.to_string();
                    assert!(
                        message.starts_with(&format!("invalid cron expression {expression:?}: ")),
                        "{message}"
                    );
                    assert!(!message.contains('\n'), "{message}");
                    assert!(std::error::Error::source(&error).is_none(), "said once");
                }
                other => panic!("{expression:?} gave {other:?}"),
            }
        }
        for timezone in ["", "Europe/Brusels", "CEST", "+02:00"] {
            match CronSchedule::parse("0 9 * * *", timezone) {
                Err(error @ CronError::UnknownTimezone { .. }) => assert_eq!(
                    error.to_string(),
                    format!(
                        "unknown time zone {timezone:?} (expected an IANA name such as \"Europe/Brussels\")"
                    )
                ),
                other => panic!("{timezone:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn parse_errors_are_one_line_and_name_the_field_and_its_range() {
        for (expression, reason) in [
            ("60 * * * *", "minute field: 60 is out of range 0-59"),
            ("0 24 * * *", "hour field: 24 is out of range 0-23"),
            ("0 0 0 * *", "day-of-month field: 0 is out of range 1-31"),
            ("0 0 1 13 *", "month field: 13 is out of range 1-12"),
            (
                "0 9 * * 8",
                "day-of-week field: 8 is out of range 0-7 (0 and 7 are Sunday)",
            ),
            (
                "0 0 9 * * 0",
                "day-of-week field: 0 is out of range 1-7 (1 is Sunday)",
            ),
            ("60 0 9 * * *", "second field: 60 is out of range 0-59"),
            (
                "0 0 0 1 1 * 2101",
                "year field: 2101 is out of range 1970-2100",
            ),
            ("*/0 * * * *", "minute field: step 0 is out of range 1-59"),
            ("*/x * * * *", "minute field: step \"x\" is not a number"),
            ("0 10-2 * * *", "hour field: range 10-2 runs backwards"),
            ("0 1- * * *", "hour field: a range is missing a bound"),
            ("1,,2 * * * *", "minute field: \"\" is missing a value"),
            (
                "? * * * *",
                "minute field: ? is only allowed in the day fields",
            ),
            ("0 noon * * *", "hour field: \"noon\" is not a valid value"),
            (
                "@every_minute",
                "unknown shortcut \"@every_minute\" (expected @yearly, @monthly, @weekly, \
                 @daily or @hourly)",
            ),
        ] {
            let error = CronSchedule::parse(expression, "UTC").expect_err(expression);
            assert_eq!(
                error.to_string(),
                format!("invalid cron expression {expression:?}: {reason}")
            );
        }
        // Every value the message says is in range parses.
        for expression in ["59 23 31 12 7", "0 59 23 31 12 7 2100", "0 0 * * 0"] {
            CronSchedule::parse(expression, "UTC").expect(expression);
        }
        let long = format!("0 0 * * {}", vec!["1"; 200].join(","));
        match CronSchedule::parse(&long, "UTC") {
            Err(error @ CronError::TooLong { length: 407 }) => assert_eq!(
                error.to_string(),
                "cron expression is 407 bytes long; at most 256 are allowed"
            ),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn accessors_return_the_input() {
        let cron = schedule("0 9 * * 1", "Europe/Brussels");
        assert_eq!(cron.expression(), "0 9 * * 1");
        assert_eq!(cron.timezone(), "Europe/Brussels");
        assert_eq!(schedule("@daily", "UTC").timezone(), "UTC");
    }

    /// A simple linear congruential generator (Knuth's MMIX constants).
    struct Lcg(u64);

    impl Lcg {
        fn below(&mut self, bound: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % bound
        }
    }

    /// Whether `time` fires for `cron` by the module's rules, read off the wall clock: its local
    /// time matches and this is that time's first occurrence, or it is the end of a gap in which
    /// (or at whose end) a matching time was skipped.
    fn fires_by_the_rules(cron: &CronSchedule, time: DateTime<Utc>) -> bool {
        let matches = |local: NaiveDateTime| {
            cron.schedules
                .iter()
                .any(|schedule| schedule.includes(local.and_utc()))
        };
        let local = time.with_timezone(&cron.tz).naive_local();
        let first = cron
            .tz
            .from_local_datetime(&local)
            .earliest()
            .map(|t| t.to_utc());
        if matches(local) && first == Some(time) {
            return true;
        }
        let before = (time - TimeDelta::seconds(1))
            .with_timezone(&cron.tz)
            .naive_local();
        let skipped = (local - before).num_seconds() - 1;
        skipped > 0 && (1..=skipped).any(|s| matches(before + TimeDelta::seconds(s)))
    }

    const EXPRESSIONS: [(&str, &str); 12] = [
        ("30 2 * * *", "Europe/Brussels"),
        ("*/15 * * * *", "Europe/Brussels"),
        ("0 * * * *", "America/New_York"),
        ("*/7 1-3 * * *", "America/New_York"),
        ("0 9 * * 1", "UTC"),
        ("0 0 13 * 5", "Europe/Brussels"),
        ("*/20 * * * * *", "Europe/Brussels"),
        ("15 2 * * 0", "Europe/Brussels"),
        ("@hourly", "Australia/Lord_Howe"),
        ("0 30 1 * * *", "America/New_York"),
        ("45 */2 1,15 * *", "Asia/Kolkata"),
        ("0 0 1 1,7 *", "Pacific/Apia"),
    ];

    #[test]
    fn property_next_after_and_fire_times_agree() {
        let mut rng = Lcg(0x5EED);
        let base = at("2025-01-01T00:00:00Z");
        let transitions = [
            at("2026-03-29T01:00:00Z"),
            at("2026-10-25T01:00:00Z"),
            at("2026-03-08T07:00:00Z"),
            at("2026-11-01T06:00:00Z"),
        ];
        for round in 0..400 {
            let (expression, timezone) = EXPRESSIONS[round % EXPRESSIONS.len()];
            let cron = schedule(expression, timezone);
            // Half the instants near a transition, half anywhere in 2025-2027.
            let after = if round % 2 == 0 {
                let near = transitions[rng.below(4) as usize];
                near + TimeDelta::seconds(rng.below(4 * 3600) as i64 - 2 * 3600)
            } else {
                base + TimeDelta::seconds(rng.below(3 * 365 * 86_400) as i64)
            } + TimeDelta::milliseconds(rng.below(2) as i64 * rng.below(1000) as i64);
            let Some(next) = cron.next_after(after) else {
                panic!("{expression} in {timezone}: no fire time after {after}");
            };
            assert!(next > after, "{expression}: {next} <= {after}");
            let until = after + TimeDelta::hours(6);
            let times = cron.fire_times(after, until, usize::MAX);
            let mut chained = Vec::new();
            let mut cursor = after;
            while let Some(time) = cron.next_after(cursor).filter(|time| *time <= until) {
                assert!(time > cursor && chained.len() < 30_000);
                chained.push(time);
                cursor = time;
            }
            assert_eq!(times, chained, "{expression} in {timezone} after {after}");
            assert!(times.windows(2).all(|pair| pair[0] < pair[1]));
            if next <= until {
                assert_eq!(times.first(), Some(&next));
            } else {
                assert!(times.is_empty());
            }
            let limit = rng.below(4) as usize;
            let last = cron.fire_times(after, until, limit);
            assert_eq!(last, times[times.len().saturating_sub(limit)..].to_vec());
            for time in &times {
                assert!(
                    fires_by_the_rules(&cron, *time),
                    "{expression} in {timezone}: {time} does not match"
                );
            }
        }
    }

    /// Checks every second of a few hours around each transition against the rules.
    #[test]
    fn exhaustive_around_transitions() {
        let windows = [
            ("Europe/Brussels", "2026-03-29T01:00:00Z"),
            ("Europe/Brussels", "2026-10-25T01:00:00Z"),
            ("America/New_York", "2026-03-08T07:00:00Z"),
            ("America/New_York", "2026-11-01T06:00:00Z"),
            // Half-hour shifts: 02:00 back to 01:30, and 02:00 on to 02:30.
            ("Australia/Lord_Howe", "2026-04-04T15:00:00Z"),
            ("Australia/Lord_Howe", "2026-10-03T15:30:00Z"),
        ];
        let expressions = [
            "30 2 * * *",
            "*/15 * * * *",
            "0 * * * *",
            "*/7 1-3 * * *",
            "0 2,3 * * *",
            "59 1 * * *",
            "*/20 * * * * *",
        ];
        for (timezone, transition) in windows {
            let start = at(transition) - TimeDelta::hours(3);
            let end = at(transition) + TimeDelta::hours(3);
            for expression in expressions {
                let cron = schedule(expression, timezone);
                let expected: Vec<_> = (1..=(end - start).num_seconds())
                    .map(|second| start + TimeDelta::seconds(second))
                    .filter(|time| fires_by_the_rules(&cron, *time))
                    .collect();
                assert_eq!(
                    cron.fire_times(start, end, usize::MAX),
                    expected,
                    "{expression} in {timezone} around {transition}"
                );
            }
        }
    }
}
