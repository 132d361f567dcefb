//! The trigger loop: turns feature set schedules into scheduled materialization jobs.
//!
//! It runs in the scheduler service and in `almanac serve`, next to a
//! [`JobManager`](crate::manager::JobManager) that runs the jobs. Every tick, for each enabled
//! schedule:
//! - a schedule seen for the first time starts at the current time (history is for backfills);
//! - while the feature set's previous scheduled run is queued or running, a due trigger waits
//!   (and says so, once): runs of one feature set never overlap;
//! - after downtime, the missed triggers are caught up in order, one job at a time; beyond
//!   [`TriggerConfig::catch_up_limit`] the oldest are skipped, recorded and listed, and their
//!   windows stay unmaterialized for a backfill by status None;
//! - a due trigger is recorded together with its job and the schedule's cursor, in one registry
//!   transaction ([`Registry::submit_trigger`]), so a restart at any moment neither loses nor
//!   repeats it.
//!
//! A trigger at T materializes the window [`Schedule::window`] gives (from the previous trigger
//! to T, moved back by the source delay), split at UTC midnights into tasks like a backfill's.
//! Failed runs leave their windows Incomplete; consecutive failures are logged as such and
//! exported as a metric.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backfill::DAY_MICROS;
use crate::error::{JobsError, Result};
use crate::registry::{FeatureSetRef, JobId, Registry, ScheduleInfo, Submitted, TriggerState};
use crate::schedule::{Schedule, ScheduleDef};
use crate::source::TimeRange;
use crate::time::format_instant;

/// Where the trigger loop reads the time.
pub trait Clock: Send + Sync {
    /// Now, in µs since the epoch.
    fn now_micros(&self) -> Result<i64>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_micros(&self) -> Result<i64> {
        Ok(chrono::Utc::now().timestamp_micros())
    }
}

/// A clock read from a file holding an RFC 3339 instant, re-read at every tick: lets tests and
/// drills move a real scheduler through hours and days of schedule in seconds.
#[derive(Debug, Clone)]
pub struct FileClock(pub PathBuf);

impl Clock for FileClock {
    fn now_micros(&self) -> Result<i64> {
        let text = std::fs::read_to_string(&self.0)
            .map_err(|e| JobsError::io("cannot read the clock file", &self.0, e))?;
        chrono::DateTime::parse_from_rfc3339(text.trim())
            .map(|t| t.timestamp_micros())
            .map_err(|e| {
                JobsError::InvalidInput(format!(
                    "clock file {}: '{}' is not an RFC 3339 time: {e}",
                    self.0.display(),
                    text.trim()
                ))
            })
    }
}

/// The clock read from `file` if given (see [`FileClock`]), else the system clock.
pub fn clock(file: Option<&Path>) -> Box<dyn Clock> {
    match file {
        Some(file) => Box::new(FileClock(file.to_path_buf())),
        None => Box::new(SystemClock),
    }
}

/// The trigger loop's settings.
#[derive(Debug, Clone)]
pub struct TriggerConfig {
    /// Missed triggers run after downtime, newest first counted; older ones are skipped.
    pub catch_up_limit: usize,
    /// How often schedules are looked at.
    pub tick: Duration,
}

impl Default for TriggerConfig {
    fn default() -> Self {
        TriggerConfig {
            catch_up_limit: 10,
            tick: Duration::from_secs(1),
        }
    }
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TriggerMetrics {
    pub submitted: AtomicU64,
    pub skipped: AtomicU64,
    /// Times a due trigger was found waiting for a previous run (counted once per trigger).
    pub waited: AtomicU64,
}

/// What a scheduled job was submitted for; kept as its request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduledRun {
    pub trigger: i64,
    pub schedule: ScheduleDef,
}

/// Turns schedules into jobs; see the module docs.
pub struct TriggerLoop {
    home: PathBuf,
    clock: Box<dyn Clock>,
    config: TriggerConfig,
    pub metrics: TriggerMetrics,
    /// What was last said per feature set, so a waiting trigger or a failure is logged once.
    said: Mutex<HashMap<(FeatureSetRef, &'static str), String>>,
}

impl TriggerLoop {
    pub fn new(home: &Path, clock: Box<dyn Clock>, config: TriggerConfig) -> TriggerLoop {
        TriggerLoop {
            home: home.to_path_buf(),
            clock,
            config,
            metrics: TriggerMetrics::default(),
            said: Mutex::new(HashMap::new()),
        }
    }

    /// The loop's current time (µs).
    pub fn now(&self) -> Result<i64> {
        self.clock.now_micros()
    }

    /// Ticks until `shutdown` resolves; `submitted` hears of every job created.
    pub async fn run(
        &self,
        shutdown: impl std::future::Future<Output = ()>,
        submitted: &(dyn Fn(&JobId) + Sync),
    ) {
        tokio::pin!(shutdown);
        loop {
            match self.tick() {
                Ok(jobs) => jobs.iter().for_each(submitted),
                Err(e) => tracing::error!(error = %e, "cannot read the schedules"),
            }
            tokio::select! {
                _ = &mut shutdown => break,
                _ = tokio::time::sleep(self.config.tick) => {}
            }
        }
    }

    /// Looks at every enabled schedule once; returns the jobs it created. One schedule's
    /// trouble (say, a feature set whose spec no longer loads) is logged and does not stop
    /// the others.
    pub fn tick(&self) -> Result<Vec<JobId>> {
        let mut registry = Registry::open(&self.home)?;
        let now = self.clock.now_micros()?;
        let mut jobs = Vec::new();
        for r in registry.scheduled_feature_sets()? {
            match self.tick_one(&mut registry, &r, now) {
                Ok(Some(job)) => jobs.push(job),
                Ok(None) => {}
                Err(e) => self.say_once(&r, "error", e.to_string(), |m| {
                    tracing::error!(feature_set = %r, error = %m, "schedule cannot run");
                }),
            }
        }
        Ok(jobs)
    }

    fn tick_one(
        &self,
        registry: &mut Registry,
        r: &FeatureSetRef,
        now: i64,
    ) -> Result<Option<JobId>> {
        let Some(info) = registry.schedule(r)? else {
            return Ok(None);
        };
        let schedule = Schedule::from_def(&info.definition, &format!("the schedule of {r}"))?;
        self.report_failures(&info);
        let cursor = match info.cursor {
            Some(c) => c,
            None => {
                let c = registry.start_schedule(r, now)?;
                tracing::info!(
                    feature_set = %r, schedule = %info.definition,
                    next_trigger = %schedule.next_after(c).map(format_instant).unwrap_or_default(),
                    "schedule started"
                );
                c
            }
        };
        let Some(first_due) = schedule.next_after(cursor).filter(|t| *t <= now) else {
            return Ok(None);
        };
        if let Some(job) = info.running_job() {
            self.say_once(r, "wait", format!("{first_due}/{job}"), |_| {
                self.metrics.waited.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    feature_set = %r, trigger = %format_instant(first_due), job = %job,
                    "trigger waits: the previous scheduled run is still going"
                );
            });
            return Ok(None);
        }
        // The newest `catch_up_limit` due triggers run; any older ones are skipped.
        let mut kept = Vec::new();
        let mut before = now.saturating_add(1);
        while kept.len() < self.config.catch_up_limit.max(1) {
            match schedule.previous_before(before) {
                Some(t) if t > cursor => {
                    kept.push(t);
                    before = t;
                }
                _ => break,
            }
        }
        let Some(&trigger) = kept.last() else {
            return Ok(None);
        };
        let delay = registry
            .require_feature_set(r)?
            .spec
            .spec
            .source_delay()
            .micros();
        if trigger > first_due {
            self.skip(registry, r, &schedule, cursor, trigger, delay)?;
        }
        let window = schedule.window(trigger, delay);
        let request = serde_json::to_string(&ScheduledRun {
            trigger,
            schedule: info.definition.clone(),
        })
        .map_err(|e| JobsError::InvalidInput(format!("cannot record the trigger: {e}")))?;
        match registry.submit_trigger(r, trigger, window, &split_at_days(window), &request)? {
            Submitted::Job(job) => {
                self.metrics.submitted.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    feature_set = %r, trigger = %format_instant(trigger), job = %job,
                    window = %format!("[{}, {})", format_instant(window.start), format_instant(window.end)),
                    "scheduled run submitted"
                );
                Ok(Some(job))
            }
            Submitted::AlreadyHandled => Ok(None),
            Submitted::Blocked(held) => {
                self.say_once(r, "wait", format!("{trigger}/{held}"), |_| {
                    self.metrics.waited.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(
                        feature_set = %r, trigger = %format_instant(trigger), held = %held,
                        "trigger waits: part of its window is held by another job"
                    );
                });
                Ok(None)
            }
        }
    }

    /// Records the due triggers before `kept` as skipped and lists them.
    fn skip(
        &self,
        registry: &mut Registry,
        r: &FeatureSetRef,
        schedule: &Schedule,
        cursor: i64,
        kept: i64,
        delay: i64,
    ) -> Result<()> {
        // Listing is capped: a minute schedule down for a year misses half a million.
        const LISTED: usize = 100_000;
        let mut skipped = Vec::new();
        let mut at = cursor;
        while let Some(t) = schedule.next_after(at).filter(|t| *t < kept) {
            skipped.push(t);
            at = t;
            if skipped.len() == LISTED {
                break;
            }
        }
        let (Some(&first), Some(&last)) = (skipped.first(), skipped.last()) else {
            return Ok(());
        };
        let window = TimeRange {
            start: schedule.window(first, delay).start,
            end: schedule.window(last, delay).end,
        };
        if !registry.skip_triggers(r, cursor, last, skipped.len() as i64, window)? {
            return Ok(());
        }
        self.metrics
            .skipped
            .fetch_add(skipped.len() as u64, Ordering::Relaxed);
        let shown: Vec<String> = skipped
            .iter()
            .take(10)
            .map(|t| format_instant(*t))
            .collect();
        let more = skipped.len().saturating_sub(shown.len());
        tracing::warn!(
            feature_set = %r,
            skipped = skipped.len(),
            catch_up_limit = self.config.catch_up_limit,
            triggers = %format!("{}{}", shown.join(", "), if more > 0 { format!(" and {more} more") } else { String::new() }),
            window = %format!("[{}, {})", format_instant(window.start), format_instant(window.end)),
            "missed triggers beyond the catch-up limit are skipped; their window is not \
             materialized: backfill it with --data-status None"
        );
        Ok(())
    }

    /// Logs a schedule's newest failed run, once, with how many failed in a row.
    fn report_failures(&self, info: &ScheduleInfo) {
        let failures = info.consecutive_failures();
        let Some(latest) = info.recent.iter().find(|t| {
            t.state == TriggerState::Submitted && t.job_state.is_some_and(|s| s.is_final())
        }) else {
            return;
        };
        if failures == 0 {
            return;
        }
        let job = latest
            .job
            .as_ref()
            .map(|j| j.to_string())
            .unwrap_or_default();
        self.say_once(&info.feature_set, "failed", job.clone(), |_| {
            tracing::warn!(
                feature_set = %info.feature_set, job = %job, failed_in_a_row = failures,
                window = %format!("[{}, {})", format_instant(latest.window.start), format_instant(latest.window.end)),
                "scheduled run failed; its windows are Incomplete (backfill with --data-status Incomplete)"
            );
        });
    }

    /// Runs `say` unless the same `what` was last said about `r` with this `key`.
    fn say_once(&self, r: &FeatureSetRef, what: &'static str, key: String, say: impl FnOnce(&str)) {
        let mut said = self.said.lock().unwrap_or_else(|e| e.into_inner());
        let slot = said.entry((r.clone(), what)).or_default();
        if *slot != key {
            say(&key);
            *slot = key;
        }
    }
}

/// A window cut at UTC midnights: one task per day it touches, as the offline store is
/// partitioned by day.
pub fn split_at_days(window: TimeRange) -> Vec<TimeRange> {
    let mut tasks = Vec::new();
    let mut at = window.start;
    while at < window.end {
        let end = ((at.div_euclid(DAY_MICROS) + 1) * DAY_MICROS).min(window.end);
        tasks.push(TimeRange { start: at, end });
        at = end;
    }
    tasks
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000;

    #[test]
    fn windows_are_cut_at_utc_midnight() {
        let w = TimeRange {
            start: 20 * H,
            end: 2 * 24 * H + 3 * H,
        };
        assert_eq!(
            split_at_days(w),
            [
                TimeRange {
                    start: 20 * H,
                    end: 24 * H
                },
                TimeRange {
                    start: 24 * H,
                    end: 48 * H
                },
                TimeRange {
                    start: 48 * H,
                    end: 51 * H
                },
            ]
        );
        let inside = TimeRange {
            start: H,
            end: 2 * H,
        };
        assert_eq!(split_at_days(inside), [inside]);
    }
}
