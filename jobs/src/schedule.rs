//! Recurrence schedules: when a feature set version's materialization is triggered.
//!
//! A schedule is `materialization_settings.schedule` of a feature set asset: a frequency
//! (Minute, Hour, Day, Week, Month), an interval, a start time and a time zone. Its triggers:
//!
//! - **Minute and Hour** count real time from the start: every `interval` minutes or hours,
//!   whatever the clocks do.
//! - **Day, Week and Month** follow the zone's wall clock: the start's local time of day, every
//!   `interval` days, weeks or months (a month day past the month's end is its last day).
//!   - On the day the clock jumps forward, a time in the skipped hour fires as late as the jump
//!     (02:30 with clocks going 02:00 → 03:00 fires at 03:30 local): once that day.
//!   - On the day the clock goes back, a time that occurs twice fires at its first occurrence:
//!     once that day.
//!
//! A trigger at T materializes `[P − source_delay, T − source_delay)`, P being the trigger
//! before T (DESIGN.md §4 says `T − interval`; the previous trigger is the same on ordinary
//! days and keeps windows contiguous, with no gap or overlap, across clock changes). The
//! first trigger's window is one nominal interval long.

use chrono::{DateTime, Duration, LocalResult, NaiveDateTime, Offset, TimeZone, Utc};
use chrono_tz::Tz;

use crate::error::{JobsError, Result};
use crate::source::TimeRange;
use crate::spec::{Frequency, RecurrenceSchedule};

/// A validated recurrence schedule.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    frequency: Frequency,
    interval: u32,
    /// The first trigger, as a wall-clock time in `zone`.
    start: NaiveDateTime,
    zone: Tz,
}

impl Schedule {
    /// Checks an asset's schedule: a known time zone, a readable start time, an interval of
    /// at least 1. `field` names the schedule in errors (e.g. the asset file).
    pub fn from_recurrence(r: &RecurrenceSchedule, field: &str) -> Result<Schedule> {
        if r.interval == 0 || r.interval > u32::MAX as u64 {
            return Err(JobsError::InvalidInput(format!(
                "{field}: interval {} must be between 1 and {}",
                r.interval,
                u32::MAX
            )));
        }
        let zone_name = r.time_zone.as_deref().unwrap_or("UTC");
        let zone: Tz = zone_name.parse().map_err(|_| {
            JobsError::InvalidInput(format!(
                "{field}: unknown time zone '{zone_name}'; expected an IANA name such as UTC, \
                 Europe/Berlin or America/New_York"
            ))
        })?;
        let start = match r.start_time.as_deref() {
            None => NaiveDateTime::default(),
            Some(text) => parse_local(text).ok_or_else(|| {
                JobsError::InvalidInput(format!(
                    "{field}: start_time '{text}' is not a date and time such as \
                     2023-01-01T02:30:00 (local to time_zone)"
                ))
            })?,
        };
        Ok(Schedule {
            frequency: r.frequency,
            interval: r.interval as u32,
            start,
            zone,
        })
    }

    /// The `n`-th trigger (0 is the start), in µs since the epoch.
    pub fn trigger(&self, n: u64) -> Option<i64> {
        let n = i64::try_from(n).ok()?;
        let every = self.interval as i64;
        let instant = match self.frequency {
            Frequency::Minute => self.first()? + Duration::minutes(n.checked_mul(every)?),
            Frequency::Hour => self.first()? + Duration::hours(n.checked_mul(every)?),
            Frequency::Day => self.at_local(self.start + Duration::days(n.checked_mul(every)?))?,
            Frequency::Week => {
                self.at_local(self.start + Duration::weeks(n.checked_mul(every)?))?
            }
            Frequency::Month => {
                let months = u32::try_from(n.checked_mul(every)?).ok()?;
                let date = self
                    .start
                    .date()
                    .checked_add_months(chrono::Months::new(months))?;
                self.at_local(date.and_time(self.start.time()))?
            }
        };
        Some(instant.timestamp_micros())
    }

    /// The first trigger strictly after `t` (µs).
    pub fn next_after(&self, t: i64) -> Option<i64> {
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

    fn previous_before(&self, t: i64) -> Option<i64> {
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

    /// One interval's nominal length in µs (a month counts 28 days: a lower bound).
    fn nominal_micros(&self) -> i64 {
        let unit: i64 = match self.frequency {
            Frequency::Minute => 60,
            Frequency::Hour => 3_600,
            Frequency::Day => 86_400,
            Frequency::Week => 7 * 86_400,
            Frequency::Month => 28 * 86_400,
        };
        unit * self.interval as i64 * 1_000_000
    }

    fn first(&self) -> Option<DateTime<Utc>> {
        self.at_local(self.start)
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
