//! Data intervals: which parts of time a feature set version has materialized.
//!
//! A timeline is a sorted list of non-overlapping intervals with a status; time not covered is
//! `None`, and adjacent intervals with the same status are merged, so every timeline has one
//! canonical form. Setting a status on a range splits the intervals it cuts.

use std::fmt;

use crate::error::{JobsError, Result};
use crate::source::TimeRange;
use crate::time::format_instant;

/// The materialization status of a stretch of time.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum DataStatus {
    /// Never materialized.
    None,
    /// A job is materializing it.
    Pending,
    /// A job tried and did not finish it.
    Incomplete,
    /// Materialized.
    Complete,
}

impl DataStatus {
    pub const ALL: [(&'static str, DataStatus); 4] = [
        ("None", DataStatus::None),
        ("Pending", DataStatus::Pending),
        ("Incomplete", DataStatus::Incomplete),
        ("Complete", DataStatus::Complete),
    ];

    pub fn name(self) -> &'static str {
        DataStatus::ALL
            .iter()
            .find(|(_, s)| *s == self)
            .map(|(n, _)| *n)
            .expect("every status is listed")
    }

    /// Parses a status name, case-insensitively.
    pub fn parse(text: &str) -> Result<DataStatus> {
        DataStatus::ALL
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(text.trim()))
            .map(|(_, s)| *s)
            .ok_or_else(|| {
                JobsError::InvalidInput(format!(
                    "'{text}' is not a data status; expected None, Pending, Incomplete or Complete"
                ))
            })
    }
}

impl fmt::Display for DataStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `[start, end)` with a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub start: i64,
    pub end: i64,
    pub status: DataStatus,
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "[{}, {}) {}",
            format_instant(self.start),
            format_instant(self.end),
            self.status
        )
    }
}

/// A feature set version's data intervals, in canonical form.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Timeline {
    /// Sorted, non-overlapping, non-empty, never `None`, adjacent equal statuses merged.
    intervals: Vec<Interval>,
}

impl Timeline {
    /// Builds a timeline from intervals in any order; later ones win where they overlap.
    pub fn from_intervals(intervals: impl IntoIterator<Item = Interval>) -> Timeline {
        let mut t = Timeline::default();
        for i in intervals {
            t.set(
                TimeRange {
                    start: i.start,
                    end: i.end,
                },
                i.status,
            );
        }
        t
    }

    /// The stored intervals (time not covered is `None`).
    pub fn intervals(&self) -> &[Interval] {
        &self.intervals
    }

    /// Gives `range` the status `status`.
    pub fn set(&mut self, range: TimeRange, status: DataStatus) {
        if range.start >= range.end {
            return;
        }
        let mut out: Vec<Interval> = Vec::with_capacity(self.intervals.len() + 2);
        for i in &self.intervals {
            // The parts of `i` outside `range` stay as they are.
            if i.start < range.start {
                out.push(Interval {
                    end: i.end.min(range.start),
                    ..*i
                });
            }
            if i.end > range.end {
                out.push(Interval {
                    start: i.start.max(range.end),
                    ..*i
                });
            }
        }
        if status != DataStatus::None {
            out.push(Interval {
                start: range.start,
                end: range.end,
                status,
            });
        }
        out.sort_by_key(|i| i.start);
        let mut merged: Vec<Interval> = Vec::with_capacity(out.len());
        for i in out {
            match merged.last_mut() {
                Some(last) if last.end == i.start && last.status == i.status => last.end = i.end,
                _ => merged.push(i),
            }
        }
        self.intervals = merged;
    }

    /// The statuses across `range`, gaps included as `None`, clipped to `range`.
    pub fn within(&self, range: TimeRange) -> Vec<Interval> {
        let mut out = Vec::new();
        let mut at = range.start;
        for i in &self.intervals {
            if i.end <= range.start || i.start >= range.end {
                continue;
            }
            let start = i.start.max(range.start);
            if start > at {
                out.push(Interval {
                    start: at,
                    end: start,
                    status: DataStatus::None,
                });
            }
            let end = i.end.min(range.end);
            out.push(Interval {
                start,
                end,
                status: i.status,
            });
            at = end;
        }
        if at < range.end {
            out.push(Interval {
                start: at,
                end: range.end,
                status: DataStatus::None,
            });
        }
        out
    }
}

/// What a backfill will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillPlan {
    /// One task per partition, in time order.
    pub tasks: Vec<TimeRange>,
    /// Parts of the window another job holds; never planned.
    pub skipped_pending: Vec<TimeRange>,
    /// Parts of the window whose status was not asked for.
    pub skipped_other: Vec<Interval>,
}

/// Plans a backfill of `window` over the intervals whose status is in `statuses`, one task per
/// `partition` (microseconds): sub-day partitions are aligned to the epoch; whole-day ones are
/// cut from the start of each stretch to plan, which must be at midnight UTC.
///
/// # Errors
/// An empty window, a window not on the partition grid (tasks replace whole partitions of the
/// offline store), a partition length that does not divide a day or is not a whole number of
/// days, or an empty status list.
pub fn plan_backfill(
    timeline: &Timeline,
    window: TimeRange,
    statuses: &[DataStatus],
    partition: i64,
) -> Result<BackfillPlan> {
    const DAY: i64 = 86_400_000_000;
    if window.start >= window.end {
        return Err(JobsError::InvalidInput(format!(
            "the window is empty: start {} is not before end {}",
            format_instant(window.start),
            format_instant(window.end)
        )));
    }
    if partition <= 0
        || (partition < DAY && DAY % partition != 0)
        || (partition >= DAY && partition % DAY != 0)
    {
        return Err(JobsError::InvalidInput(
            "the partition length must divide a day (e.g. 1h, 6h) or be whole days (e.g. 1d, 7d)"
                .to_string(),
        ));
    }
    // Multi-day tasks need only whole days: they are cut from the start of each stretch.
    let grid = partition.min(DAY);
    for (what, t) in [("start", window.start), ("end", window.end)] {
        if t.rem_euclid(grid) != 0 {
            return Err(JobsError::InvalidInput(format!(
                "the window {what} {} is not on the partition grid; with partitions of {} it must \
                 be a multiple of that length from 1970-01-01T00:00:00Z (e.g. midnight UTC for 1d)",
                format_instant(t),
                {
                    let minutes = (grid / 60_000_000) as u64;
                    crate::spec::Offset {
                        days: minutes / 1440,
                        hours: minutes % 1440 / 60,
                        minutes: minutes % 60,
                    }
                }
            )));
        }
    }
    if statuses.is_empty() {
        return Err(JobsError::InvalidInput(
            "no data status selected; expected some of None, Incomplete, Complete".to_string(),
        ));
    }
    let mut plan = BackfillPlan {
        tasks: Vec::new(),
        skipped_pending: Vec::new(),
        skipped_other: Vec::new(),
    };
    for piece in timeline.within(window) {
        if piece.status == DataStatus::Pending {
            plan.skipped_pending.push(TimeRange {
                start: piece.start,
                end: piece.end,
            });
            continue;
        }
        if !statuses.contains(&piece.status) {
            plan.skipped_other.push(piece);
            continue;
        }
        // Statuses change only at task boundaries, which are on the grid, so `piece` is too.
        let mut at = piece.start;
        while at < piece.end {
            let end = if partition >= DAY {
                at + partition
            } else {
                (at.div_euclid(partition) + 1) * partition
            };
            let end = end.min(piece.end);
            plan.tasks.push(TimeRange { start: at, end });
            at = end;
        }
    }
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    const H: i64 = 3_600_000_000;
    const D: i64 = 24 * H;

    fn r(start: i64, end: i64) -> TimeRange {
        TimeRange { start, end }
    }

    /// The naive model: a status per hour.
    fn model_status(model: &[DataStatus], hour: i64) -> DataStatus {
        model[hour as usize]
    }

    #[test]
    fn set_splits_and_merges_into_the_canonical_form() {
        let mut t = Timeline::default();
        t.set(r(0, 10 * H), DataStatus::Complete);
        t.set(r(3 * H, 5 * H), DataStatus::Pending);
        assert_eq!(t.intervals().len(), 3);
        t.set(r(3 * H, 5 * H), DataStatus::Complete);
        assert_eq!(
            t.intervals(),
            &[Interval {
                start: 0,
                end: 10 * H,
                status: DataStatus::Complete
            }]
        );
        t.set(r(-H, 2 * H), DataStatus::None);
        assert_eq!(t.intervals()[0].start, 2 * H);
    }

    #[test]
    fn random_edits_agree_with_an_hourly_model() {
        for seed in 0..300 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let hours = 48;
            let mut model = vec![DataStatus::None; hours];
            let mut t = Timeline::default();
            for _ in 0..rng.random_range(1..12) {
                let a = rng.random_range(0..hours as i64);
                let b = rng.random_range(a..=hours as i64);
                let status = DataStatus::ALL[rng.random_range(0..4)].1;
                t.set(r(a * H, b * H), status);
                for h in a..b {
                    model[h as usize] = status;
                }
            }
            // Canonical: sorted, disjoint, non-empty, no None, neighbours differ or have a gap.
            for w in t.intervals().windows(2) {
                assert!(w[0].end <= w[1].start, "seed {seed}: overlap");
                assert!(
                    w[0].end < w[1].start || w[0].status != w[1].status,
                    "seed {seed}: unmerged"
                );
            }
            assert!(
                t.intervals()
                    .iter()
                    .all(|i| i.start < i.end && i.status != DataStatus::None)
            );
            // `within` covers the range exactly and matches the model hour by hour.
            let a = rng.random_range(0..hours as i64);
            let b = rng.random_range(a + 1..=hours as i64);
            let pieces = t.within(r(a * H, b * H));
            assert_eq!(pieces.first().unwrap().start, a * H);
            assert_eq!(pieces.last().unwrap().end, b * H);
            for w in pieces.windows(2) {
                assert_eq!(w[0].end, w[1].start, "seed {seed}: gap in within()");
            }
            for p in &pieces {
                for h in p.start / H..p.end / H {
                    assert_eq!(p.status, model_status(&model, h), "seed {seed}, hour {h}");
                }
            }
            // A backfill plans exactly the selected hours, never Pending ones, once each.
            let selected = [DataStatus::None, DataStatus::Incomplete];
            let plan = plan_backfill(&t, r(a * H, b * H), &selected, H).unwrap();
            let mut covered = vec![false; hours];
            for task in &plan.tasks {
                assert!(task.end - task.start <= H);
                for h in task.start / H..task.end / H {
                    assert!(!covered[h as usize], "seed {seed}: hour {h} planned twice");
                    covered[h as usize] = true;
                }
            }
            for h in a..b {
                let wanted = selected.contains(&model[h as usize]);
                assert_eq!(covered[h as usize], wanted, "seed {seed}, hour {h}");
            }
            let pending: i64 = plan
                .skipped_pending
                .iter()
                .map(|p| (p.end - p.start) / H)
                .sum();
            let expected = (a..b)
                .filter(|h| model[*h as usize] == DataStatus::Pending)
                .count();
            assert_eq!(pending as usize, expected, "seed {seed}");
        }
    }

    #[test]
    fn backfill_windows_must_be_on_the_partition_grid() {
        let t = Timeline::default();
        let all = [DataStatus::None];
        assert_eq!(
            plan_backfill(&t, r(0, 3 * D), &all, D).unwrap().tasks.len(),
            3
        );
        let e = plan_backfill(&t, r(6 * H, 3 * D), &all, D)
            .unwrap_err()
            .to_string();
        assert!(e.contains("is not on the partition grid"), "{e}");
        let e = plan_backfill(&t, r(D, D), &all, D).unwrap_err().to_string();
        assert!(e.contains("the window is empty"), "{e}");
        let e = plan_backfill(&t, r(0, D), &all, 7 * H)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must divide a day"), "{e}");
        let e = plan_backfill(&t, r(0, D), &[], D).unwrap_err().to_string();
        assert!(e.contains("no data status"), "{e}");
        assert_eq!(
            DataStatus::parse("incomplete").unwrap(),
            DataStatus::Incomplete
        );
        assert!(DataStatus::parse("done").is_err());
    }
}
