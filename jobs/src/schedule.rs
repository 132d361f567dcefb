//! Materialization schedules: when a feature set version's materialization is triggered.
//!
//! A schedule is either a recurrence (`materialization_settings.schedule` of a feature set
//! asset: a frequency of Minute, Hour, Day, Week or Month, an interval, a start time and a time
//! zone) or a five-field cron expression (`minute hour day-of-month month day-of-week`) in a
//! time zone. Its triggers:
//!
//! - **Minute and Hour recurrences** count real time from the start: every `interval` minutes
//!   or hours, whatever the clocks do.
//! - **Day, Week and Month recurrences** follow the zone's wall clock: the start's local time of
//!   day, every `interval` days, weeks or months (a month day past the month's end is its last
//!   day).
//! - **Cron expressions** are matched against the zone's wall clock.
//!
//! Where the wall clock counts, clock changes are handled the same way:
//! - On the day the clock jumps forward, a time in the skipped hour fires as late as the jump
//!   (02:30 with clocks going 02:00 → 03:00 fires at 03:30 local): once that day. Should that
//!   instant also be a trigger in its own right, it fires once.
//! - On the day the clock goes back, a time that occurs twice fires at its first occurrence:
//!   once that day.
//!
//! A trigger at T materializes `[P − source_delay, T − source_delay)`, P being the trigger
//! before T (DESIGN.md §4 says `T − interval`; the previous trigger is the same on ordinary
//! days and keeps windows contiguous, with no gap or overlap, across clock changes). A
//! recurrence's first trigger's window is one nominal interval long.

use std::fmt;

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;
use croner::Cron;
use croner::parser::{CronParser, Seconds, Year};
use serde::{Deserialize, Serialize};

use crate::error::{JobsError, Result};
use crate::source::TimeRange;
use crate::spec::{Frequency, RecurrenceSchedule};

/// A schedule as written by its user: kept in the registry and shown back as it was given.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ScheduleDef {
    Recurrence {
        frequency: Frequency,
        interval: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        start_time: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
    },
    Cron {
        expression: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_zone: Option<String>,
    },
}

impl ScheduleDef {
    pub fn from_recurrence(r: &RecurrenceSchedule) -> ScheduleDef {
        ScheduleDef::Recurrence {
            frequency: r.frequency,
            interval: r.interval,
            start_time: r.start_time.clone(),
            time_zone: r.time_zone.clone(),
        }
    }

    /// A schedule from `featureset schedule`'s flags: `--every` (a count and a unit: 15m, 1h,
    /// 1d, 1w, 1mo) with an optional `--start`, or `--cron`; either in `--time-zone`. The
    /// result is checked ([`Schedule::from_def`]).
    pub fn from_flags(
        every: Option<&str>,
        cron: Option<&str>,
        start: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<ScheduleDef> {
        let time_zone = time_zone.map(str::to_string);
        let def = match (every, cron) {
            (Some(every), None) => {
                let text = every.trim();
                let split = text
                    .find(|c: char| !c.is_ascii_digit())
                    .unwrap_or(text.len());
                let (count, unit) = text.split_at(split);
                let frequency = match unit.trim().to_ascii_lowercase().as_str() {
                    "m" | "min" | "minute" | "minutes" => Some(Frequency::Minute),
                    "h" | "hour" | "hours" => Some(Frequency::Hour),
                    "d" | "day" | "days" => Some(Frequency::Day),
                    "w" | "week" | "weeks" => Some(Frequency::Week),
                    "mo" | "month" | "months" => Some(Frequency::Month),
                    _ => None,
                };
                let (Ok(interval), Some(frequency)) = (count.parse::<u64>(), frequency) else {
                    return Err(JobsError::InvalidInput(format!(
                        "--every '{every}' is not a count and a unit such as 15m, 1h, 1d, 1w or 1mo"
                    )));
                };
                ScheduleDef::Recurrence {
                    frequency,
                    interval,
                    start_time: start.map(str::to_string),
                    time_zone,
                }
            }
            (None, Some(expression)) => {
                if start.is_some() {
                    return Err(JobsError::InvalidInput(
                        "--start applies to --every; a cron expression says when it fires".into(),
                    ));
                }
                ScheduleDef::Cron {
                    expression: expression.trim().to_string(),
                    time_zone,
                }
            }
            _ => {
                return Err(JobsError::InvalidInput(
                    "give one of --every, --cron or --disable".into(),
                ));
            }
        };
        let field = match &def {
            ScheduleDef::Recurrence { .. } => "--every",
            ScheduleDef::Cron { .. } => "--cron",
        };
        Schedule::from_def(&def, field)?;
        Ok(def)
    }

    /// What a `featureset schedule` request asks for: `None` to disable, else the schedule its
    /// flags make ([`ScheduleDef::from_flags`]). Shared by the CLI and the scheduler's API.
    pub fn requested(
        disable: bool,
        every: Option<&str>,
        cron: Option<&str>,
        start: Option<&str>,
        time_zone: Option<&str>,
    ) -> Result<Option<ScheduleDef>> {
        if !disable {
            return ScheduleDef::from_flags(every, cron, start, time_zone).map(Some);
        }
        if every.is_some() || cron.is_some() {
            return Err(JobsError::InvalidInput(
                "disable goes without every or cron".into(),
            ));
        }
        Ok(None)
    }

    pub fn time_zone(&self) -> &str {
        match self {
            ScheduleDef::Recurrence { time_zone, .. } | ScheduleDef::Cron { time_zone, .. } => {
                time_zone.as_deref().unwrap_or("UTC")
            }
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a schedule serializes")
    }

    pub fn from_json(text: &str) -> Result<ScheduleDef> {
        serde_json::from_str(text)
            .map_err(|e| JobsError::InvalidInput(format!("unreadable schedule '{text}': {e}")))
    }
}

impl fmt::Display for ScheduleDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScheduleDef::Recurrence {
                frequency,
                interval,
                start_time,
                ..
            } => {
                let unit = Frequency::ALL
                    .iter()
                    .find(|(_, v)| v == frequency)
                    .map(|(n, _)| n.to_lowercase())
                    .unwrap_or_default();
                write!(
                    f,
                    "every {interval} {unit}{}",
                    if *interval == 1 { "" } else { "s" }
                )?;
                if let Some(start) = start_time {
                    write!(f, " from {start}")?;
                }
            }
            ScheduleDef::Cron { expression, .. } => write!(f, "cron '{expression}'")?,
        }
        write!(f, " ({})", self.time_zone())
    }
}

#[derive(Debug, Clone)]
enum Rule {
    Every {
        frequency: Frequency,
        interval: u32,
        /// The first trigger, as a wall-clock time in the zone.
        start: NaiveDateTime,
    },
    Cron(Box<Cron>),
}

/// A validated schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    rule: Rule,
    zone: Tz,
}

/// How far a wall-clock time can land from its instant's reading in the same zone: more than
/// any clock change, so searches that start this far out see every candidate.
const CLOCK_SLACK_HOURS: i64 = 3;

fn parse_zone(name: &str, field: &str) -> Result<Tz> {
    name.parse().map_err(|_| {
        JobsError::InvalidInput(format!(
            "{field}: unknown time zone '{name}'; expected an IANA name such as UTC, \
             Europe/Berlin or America/New_York"
        ))
    })
}

impl Schedule {
    /// Checks an asset's schedule: a known time zone, a readable start time, an interval of
    /// at least 1. `field` names the schedule in errors (e.g. the asset file).
    pub fn from_recurrence(r: &RecurrenceSchedule, field: &str) -> Result<Schedule> {
        Schedule::from_def(&ScheduleDef::from_recurrence(r), field)
    }

    /// Checks a schedule: a known time zone, a readable start time, an interval of at least 1,
    /// a cron expression that parses and ever fires. `field` names it in errors.
    pub fn from_def(def: &ScheduleDef, field: &str) -> Result<Schedule> {
        let zone = parse_zone(def.time_zone(), field)?;
        let rule = match def {
            ScheduleDef::Recurrence {
                frequency,
                interval,
                start_time,
                ..
            } => {
                if *interval == 0 || *interval > u32::MAX as u64 {
                    return Err(JobsError::InvalidInput(format!(
                        "{field}: interval {interval} must be between 1 and {}",
                        u32::MAX
                    )));
                }
                let start = match start_time.as_deref() {
                    None => NaiveDateTime::default(),
                    Some(text) => parse_local(text).ok_or_else(|| {
                        JobsError::InvalidInput(format!(
                            "{field}: start_time '{text}' is not a date and time such as \
                             2023-01-01T02:30:00 (local to time_zone)"
                        ))
                    })?,
                };
                Rule::Every {
                    frequency: *frequency,
                    interval: *interval as u32,
                    start,
                }
            }
            ScheduleDef::Cron { expression, .. } => {
                let parser = CronParser::builder()
                    .seconds(Seconds::Disallowed)
                    .year(Year::Disallowed)
                    .build();
                let cron = parser.parse(expression).map_err(|e| {
                    JobsError::InvalidInput(format!(
                        "{field}: cron expression '{expression}' does not parse ({e}); expected \
                         five fields: minute hour day-of-month month day-of-week, e.g. '30 2 * * *'"
                    ))
                })?;
                Rule::Cron(Box::new(cron))
            }
        };
        let schedule = Schedule { rule, zone };
        if let Rule::Cron(_) = &schedule.rule {
            // A pattern such as '0 0 30 2 *' parses but names no real day.
            let now = Utc::now().timestamp_micros();
            if schedule.next_after(now).is_none() {
                return Err(JobsError::InvalidInput(format!(
                    "{field}: {def} never fires: no date matches it"
                )));
            }
        }
        Ok(schedule)
    }

    /// The `n`-th trigger of a recurrence (0 is the start), in µs since the epoch.
    fn trigger(&self, n: u64) -> Option<i64> {
        let Rule::Every {
            frequency,
            interval,
            start,
        } = &self.rule
        else {
            return None;
        };
        let n = i64::try_from(n).ok()?;
        let every = *interval as i64;
        let instant = match frequency {
            Frequency::Minute => self.at_local(*start)? + Duration::minutes(n.checked_mul(every)?),
            Frequency::Hour => self.at_local(*start)? + Duration::hours(n.checked_mul(every)?),
            Frequency::Day => self.at_local(*start + Duration::days(n.checked_mul(every)?))?,
            Frequency::Week => self.at_local(*start + Duration::weeks(n.checked_mul(every)?))?,
            Frequency::Month => {
                let months = u32::try_from(n.checked_mul(every)?).ok()?;
                let date = start
                    .date()
                    .checked_add_months(chrono::Months::new(months))?;
                self.at_local(date.and_time(start.time()))?
            }
        };
        Some(instant.timestamp_micros())
    }

    /// The first trigger strictly after `t` (µs).
    pub fn next_after(&self, t: i64) -> Option<i64> {
        if let Rule::Cron(cron) = &self.rule {
            return self.cron_next_after(cron, t);
        }
        // A first guess from the nominal length, then a walk to the exact one: the guess is
        // off by at most a clock change or a month's length.
        let first = self.trigger(0)?;
        if t < first {
            return Some(first);
        }
        let nominal = self.nominal_micros();
        let mut n = ((t - first) / nominal).max(0) as u64;
        while n > 0 && self.trigger(n)? > t {
            n -= 1;
        }
        while self.trigger(n)? <= t {
            n += 1;
        }
        self.trigger(n)
    }

    /// Triggers in `(after, up_to]`, in order.
    pub fn triggers_between(&self, after: i64, up_to: i64) -> Vec<i64> {
        let mut out = Vec::new();
        let mut t = after;
        while let Some(next) = self.next_after(t) {
            if next > up_to {
                break;
            }
            out.push(next);
            t = next;
        }
        out
    }

    /// What the trigger at `t` materializes: from the previous trigger to `t`, both moved
    /// back by `source_delay` (µs).
    pub fn window(&self, t: i64, source_delay: i64) -> TimeRange {
        let previous = self.previous_before(t).unwrap_or(t - self.nominal_micros());
        TimeRange {
            start: previous - source_delay,
            end: t - source_delay,
        }
    }

    /// The last trigger strictly before `t` (µs).
    pub fn previous_before(&self, t: i64) -> Option<i64> {
        if let Rule::Cron(cron) = &self.rule {
            return self.cron_previous_before(cron, t);
        }
        let first = self.trigger(0)?;
        if t <= first {
            return None;
        }
        let mut n = ((t - first) / self.nominal_micros()).max(0) as u64 + 1;
        while n > 0 && self.trigger(n)? >= t {
            n -= 1;
        }
        self.trigger(n).filter(|p| *p < t)
    }

    /// One interval's nominal length in µs (a month counts 28 days: a lower bound). A cron
    /// schedule always has a previous trigger, so its length is never needed; a minute is a
    /// safe stand-in.
    fn nominal_micros(&self) -> i64 {
        let Rule::Every {
            frequency,
            interval,
            ..
        } = &self.rule
        else {
            return 60_000_000;
        };
        let unit: i64 = match frequency {
            Frequency::Minute => 60,
            Frequency::Hour => 3_600,
            Frequency::Day => 86_400,
            Frequency::Week => 7 * 86_400,
            Frequency::Month => 28 * 86_400,
        };
        unit * *interval as i64 * 1_000_000
    }

    /// The wall-clock reading of instant `t` (µs) in the zone.
    fn local(&self, t: i64) -> Option<NaiveDateTime> {
        let utc = DateTime::<Utc>::from_timestamp_micros(t)?;
        Some(utc.with_timezone(&self.zone).naive_local())
    }

    /// Cron triggers are the instants of the wall-clock times the expression matches (see
    /// [`Schedule::at_local`]). That map is not monotonic around a clock change, so the search
    /// starts a few hours early and keeps the earliest instant after `t` among the candidates
    /// up to a few hours past it.
    fn cron_next_after(&self, cron: &Cron, t: i64) -> Option<i64> {
        let slack = Duration::hours(CLOCK_SLACK_HOURS);
        let from = Utc.from_utc_datetime(&(self.local(t)? - slack));
        let mut best: Option<(i64, NaiveDateTime)> = None;
        for candidate in cron.iter_from(from, croner::Direction::Forward) {
            let wall = candidate.naive_utc();
            if best.is_some_and(|(_, b)| wall > b + slack) {
                break;
            }
            let instant = self.at_local(wall)?.timestamp_micros();
            if instant > t && best.is_none_or(|(b, _)| instant < b) {
                best = Some((instant, wall));
            }
        }
        best.map(|(instant, _)| instant)
    }

    fn cron_previous_before(&self, cron: &Cron, t: i64) -> Option<i64> {
        let slack = Duration::hours(CLOCK_SLACK_HOURS);
        let from = Utc.from_utc_datetime(&(self.local(t)? + slack));
        let mut best: Option<(i64, NaiveDateTime)> = None;
        for candidate in cron.iter_from(from, croner::Direction::Backward) {
            let wall = candidate.naive_utc();
            if best.is_some_and(|(_, b)| wall < b - slack) {
                break;
            }
            let instant = self.at_local(wall)?.timestamp_micros();
            if instant < t && best.is_none_or(|(b, _)| instant > b) {
                best = Some((instant, wall));
            }
        }
        best.map(|(instant, _)| instant)
    }

    /// A wall-clock time in the zone as an instant: a skipped time moves forward by the jump,
    /// a repeated one takes its first occurrence.
    fn at_local(&self, local: NaiveDateTime) -> Option<DateTime<Utc>> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) => Some(t.with_timezone(&Utc)),
            LocalResult::Ambiguous(first, _) => Some(first.with_timezone(&Utc)),
            LocalResult::None => {
                // The wall clock jumped over `local`: read it with the offset from before the
                // jump, which lands as far past the jump as `local` was into it.
                let before = self
                    .zone
                    .offset_from_utc_datetime(&(local - Duration::hours(12)))
                    .fix();
                let utc = local - Duration::seconds(before.local_minus_utc() as i64);
                Some(DateTime::<Utc>::from_naive_utc_and_offset(utc, Utc))
            }
        }
    }
}

fn parse_local(text: &str) -> Option<NaiveDateTime> {
    let text = text.trim();
    for format in [
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t);
        }
    }
    chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(frequency: Frequency, interval: u64, start: &str, zone: &str) -> Schedule {
        Schedule::from_recurrence(
            &RecurrenceSchedule {
                kind: "recurrence".into(),
                frequency,
                interval,
                start_time: Some(start.into()),
                time_zone: Some(zone.into()),
            },
            "schedule",
        )
        .unwrap()
    }

    fn utc(text: &str) -> i64 {
        DateTime::parse_from_rfc3339(text)
            .unwrap()
            .timestamp_micros()
    }

    #[test]
    fn hourly_triggers_count_real_time() {
        let s = schedule(Frequency::Hour, 2, "2024-03-30T23:00:00", "Europe/Berlin");
        let t = s.triggers_between(utc("2024-03-30T21:00:00Z"), utc("2024-03-31T04:00:00Z"));
        // 23:00 CET = 22:00Z, then every 2 h of real time across the jump to CEST.
        assert_eq!(
            t,
            [
                utc("2024-03-30T22:00:00Z"),
                utc("2024-03-31T00:00:00Z"),
                utc("2024-03-31T02:00:00Z"),
                utc("2024-03-31T04:00:00Z")
            ]
        );
    }

    #[test]
    fn a_daily_0230_fires_once_a_day_across_both_clock_changes() {
        let s = schedule(Frequency::Day, 1, "2024-03-01T02:30:00", "Europe/Berlin");
        let spring = s.triggers_between(utc("2024-03-29T12:00:00Z"), utc("2024-04-02T12:00:00Z"));
        assert_eq!(
            spring,
            [
                utc("2024-03-30T01:30:00Z"), // 02:30 CET
                utc("2024-03-31T01:30:00Z"), // 02:30 does not exist: 03:30 CEST
                utc("2024-04-01T00:30:00Z"), // 02:30 CEST
                utc("2024-04-02T00:30:00Z"),
            ]
        );
        let autumn = s.triggers_between(utc("2024-10-25T12:00:00Z"), utc("2024-10-28T12:00:00Z"));
        assert_eq!(
            autumn,
            [
                utc("2024-10-26T00:30:00Z"), // 02:30 CEST
                utc("2024-10-27T00:30:00Z"), // 02:30 happens twice: the first (CEST)
                utc("2024-10-28T01:30:00Z"), // 02:30 CET
            ]
        );
        // Windows tile: each starts where the previous ended, across the changes.
        let all = s.triggers_between(utc("2024-03-25T00:00:00Z"), utc("2024-11-05T00:00:00Z"));
        for pair in all.windows(2) {
            assert_eq!(s.window(pair[1], 0).start, s.window(pair[0], 0).end);
        }
        assert_eq!(
            s.window(utc("2024-03-31T01:30:00Z"), 20 * 60 * 1_000_000),
            TimeRange {
                start: utc("2024-03-30T01:10:00Z"),
                end: utc("2024-03-31T01:10:00Z"),
            }
        );
    }

    #[test]
    fn monthly_on_the_31st_takes_the_last_day_of_short_months() {
        let s = schedule(Frequency::Month, 1, "2024-01-31T00:00:00", "UTC");
        let t = s.triggers_between(utc("2024-01-01T00:00:00Z"), utc("2024-04-29T00:00:00Z"));
        assert_eq!(
            t,
            [
                utc("2024-01-31T00:00:00Z"),
                utc("2024-02-29T00:00:00Z"),
                utc("2024-03-31T00:00:00Z"),
            ]
        );
        assert_eq!(
            s.next_after(utc("2024-03-31T00:00:00Z")),
            Some(utc("2024-04-30T00:00:00Z"))
        );
    }

    #[test]
    fn next_after_is_exact_far_from_the_start() {
        let s = schedule(Frequency::Minute, 15, "2023-01-01T00:05:00", "UTC");
        assert_eq!(
            s.next_after(utc("2026-12-05T10:05:00Z")),
            Some(utc("2026-12-05T10:20:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2022-01-01T00:00:00Z")),
            Some(utc("2023-01-01T00:05:00Z"))
        );
        let w = schedule(
            Frequency::Week,
            2,
            "2024-01-01T06:00:00",
            "America/New_York",
        );
        let next = w.next_after(utc("2024-03-20T00:00:00Z")).unwrap();
        assert_eq!(next, utc("2024-03-25T10:00:00Z")); // 06:00 EDT, a Monday
    }

    fn cron(expression: &str, zone: &str) -> Schedule {
        Schedule::from_def(
            &ScheduleDef::Cron {
                expression: expression.into(),
                time_zone: Some(zone.into()),
            },
            "schedule",
        )
        .unwrap()
    }

    #[test]
    fn cron_fires_on_the_wall_clock_once_per_match_across_clock_changes() {
        let daily = cron("30 2 * * *", "Europe/Berlin");
        let spring =
            daily.triggers_between(utc("2024-03-29T12:00:00Z"), utc("2024-04-01T12:00:00Z"));
        assert_eq!(
            spring,
            [
                utc("2024-03-30T01:30:00Z"),
                utc("2024-03-31T01:30:00Z"), // skipped 02:30 fires as 03:30 CEST
                utc("2024-04-01T00:30:00Z"),
            ]
        );
        let autumn =
            daily.triggers_between(utc("2024-10-26T12:00:00Z"), utc("2024-10-28T12:00:00Z"));
        assert_eq!(
            autumn,
            [utc("2024-10-27T00:30:00Z"), utc("2024-10-28T01:30:00Z")]
        );
        // Every 15 minutes: each quarter hour of real time fires once, also in the hour that
        // the spring change skips; in the repeated autumn hour only the first pass fires.
        let quarter = cron("*/15 * * * *", "Europe/Berlin");
        let t = quarter.triggers_between(utc("2024-03-31T00:30:00Z"), utc("2024-03-31T02:00:00Z"));
        assert_eq!(t.len(), 6, "{t:?}");
        assert!(t.windows(2).all(|p| p[1] - p[0] == 15 * 60 * 1_000_000));
        let t = quarter.triggers_between(utc("2024-10-26T23:30:00Z"), utc("2024-10-27T02:00:00Z"));
        // 01:45, 02:00..02:45 CEST (00:00Z..00:45Z), then 03:00 CET = 02:00Z: the CET pass of
        // 02:xx is the repeat and does not fire.
        assert_eq!(t.first(), Some(&utc("2024-10-26T23:45:00Z")));
        assert!(t.contains(&utc("2024-10-27T00:45:00Z")));
        assert!(!t.contains(&utc("2024-10-27T01:00:00Z")));
        assert_eq!(t.last(), Some(&utc("2024-10-27T02:00:00Z")));
        // Windows tile through both changes.
        let all =
            quarter.triggers_between(utc("2024-03-30T20:00:00Z"), utc("2024-03-31T06:00:00Z"));
        for pair in all.windows(2) {
            assert_eq!(quarter.window(pair[1], 0).start, pair[0]);
        }
        assert_eq!(
            quarter.previous_before(utc("2024-10-27T02:00:00Z")),
            Some(utc("2024-10-27T00:45:00Z"))
        );
    }

    #[test]
    fn cron_weekdays_and_months_follow_the_usual_fields() {
        let s = cron("0 6 * * MON-FRI", "America/New_York");
        // Friday 2024-03-08 06:00 EST, then Monday 2024-03-11 06:00 EDT (after the change).
        assert_eq!(
            s.next_after(utc("2024-03-08T10:00:00Z")),
            Some(utc("2024-03-08T11:00:00Z"))
        );
        assert_eq!(
            s.next_after(utc("2024-03-08T11:00:00Z")),
            Some(utc("2024-03-11T10:00:00Z"))
        );
        let monthly = cron("0 0 1 * *", "UTC");
        assert_eq!(
            monthly.window(utc("2024-03-01T00:00:00Z"), 0),
            TimeRange {
                start: utc("2024-02-01T00:00:00Z"),
                end: utc("2024-03-01T00:00:00Z")
            }
        );
    }

    #[test]
    fn bad_cron_expressions_are_refused_with_the_expression() {
        let bad = |expression: &str, zone: &str| {
            Schedule::from_def(
                &ScheduleDef::Cron {
                    expression: expression.into(),
                    time_zone: Some(zone.into()),
                },
                "--cron",
            )
            .unwrap_err()
            .to_string()
        };
        let e = bad("every hour", "UTC");
        assert!(
            e.contains("--cron: cron expression 'every hour' does not parse"),
            "{e}"
        );
        assert!(bad("61 * * * *", "UTC").contains("'61 * * * *'"));
        assert!(bad("0 0 * * * *", "UTC").contains("five fields"));
        assert!(bad("0 0 30 2 *", "UTC").contains("never fires"));
        assert!(bad("0 * * * *", "Europe/Nowhere").contains("unknown time zone 'Europe/Nowhere'"));
    }

    #[test]
    fn flags_make_schedules_and_bad_flags_say_what_is_expected() {
        assert_eq!(
            ScheduleDef::from_flags(Some("15m"), None, None, Some("Europe/Berlin")).unwrap(),
            ScheduleDef::Recurrence {
                frequency: Frequency::Minute,
                interval: 15,
                start_time: None,
                time_zone: Some("Europe/Berlin".into())
            }
        );
        let e =
            |every: Option<&str>, cron: Option<&str>, start: Option<&str>, zone: Option<&str>| {
                ScheduleDef::from_flags(every, cron, start, zone)
                    .unwrap_err()
                    .to_string()
            };
        assert!(e(Some("0h"), None, None, None).contains("interval 0"));
        assert!(e(Some("hourly"), None, None, None).contains("--every 'hourly'"));
        assert!(e(Some("1h"), None, Some("soon"), None).contains("start_time 'soon'"));
        assert!(e(None, Some("* *"), None, None).contains("--cron: cron expression '* *'"));
        assert!(e(None, Some("0 * * * *"), None, Some("Moon/Base")).contains("'Moon/Base'"));
        assert!(e(None, None, None, None).contains("one of --every, --cron or --disable"));
    }

    #[test]
    fn schedules_show_and_store_as_given() {
        let def = ScheduleDef::Recurrence {
            frequency: Frequency::Hour,
            interval: 3,
            start_time: Some("2024-01-01T00:00:00".into()),
            time_zone: None,
        };
        assert_eq!(
            def.to_string(),
            "every 3 hours from 2024-01-01T00:00:00 (UTC)"
        );
        assert_eq!(ScheduleDef::from_json(&def.to_json()).unwrap(), def);
        let c = ScheduleDef::Cron {
            expression: "30 2 * * *".into(),
            time_zone: Some("Europe/Berlin".into()),
        };
        assert_eq!(c.to_string(), "cron '30 2 * * *' (Europe/Berlin)");
        assert_eq!(ScheduleDef::from_json(&c.to_json()).unwrap(), c);
    }

    #[test]
    fn bad_schedules_are_refused_with_the_value() {
        let bad = |zone: &str, start: &str, interval: u64| {
            Schedule::from_recurrence(
                &RecurrenceSchedule {
                    kind: "recurrence".into(),
                    frequency: Frequency::Day,
                    interval,
                    start_time: Some(start.into()),
                    time_zone: Some(zone.into()),
                },
                "asset.yaml: materialization_settings.schedule",
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad("Mars/Olympus", "2024-01-01", 1).contains("unknown time zone 'Mars/Olympus'"));
        assert!(bad("UTC", "yesterday", 1).contains("start_time 'yesterday'"));
        assert!(bad("UTC", "2024-01-01", 0).contains("interval 0"));
    }
}
