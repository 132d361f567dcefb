//! Materialization schedules and their triggers in the registry.
//!
//! A feature set version has at most one schedule: from its asset at registration, or set and
//! disabled later (`featureset schedule`). Its `cursor` is the last trigger time handled:
//! triggers after it are due. A schedule's cursor starts when a trigger loop first sees it
//! (so a schedule whose start lies in the past does not replay history: backfills do that),
//! and moves only in the transaction that records a trigger, together with the job the
//! trigger submitted. A trigger is therefore handled exactly once, whatever crashes: either
//! its row, its job and the cursor are all there, or none of them is.

use rusqlite::{OptionalExtension, params};

use super::jobs::{JobId, RunState, SCHEDULED, insert_materialization_job};
use super::{FeatureSetRef, Registry, db_error, now};
use crate::error::{JobsError, Result};
use crate::materialize::Interval;
use crate::schedule::{Schedule, ScheduleDef};
use crate::source::TimeRange;

/// How a trigger was handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TriggerState {
    /// Its job was created.
    Submitted,
    /// Passed over after downtime, beyond the catch-up limit: its window was not materialized.
    Skipped,
}

impl TriggerState {
    pub fn name(self) -> &'static str {
        match self {
            TriggerState::Submitted => "submitted",
            TriggerState::Skipped => "skipped",
        }
    }
}

/// A handled trigger. Skipped triggers are recorded as one row per catch-up: `trigger` is the
/// last of them, `skipped` how many, `window` what they would have materialized.
#[derive(Debug, Clone)]
pub struct TriggerInfo {
    pub trigger: i64,
    pub state: TriggerState,
    pub job: Option<JobId>,
    /// The job's state now.
    pub job_state: Option<RunState>,
    pub window: TimeRange,
    pub skipped: i64,
}

/// A feature set version's schedule.
#[derive(Debug, Clone)]
pub struct ScheduleInfo {
    pub feature_set: FeatureSetRef,
    pub definition: ScheduleDef,
    pub enabled: bool,
    /// The last trigger handled; `None` until a trigger loop has seen the schedule.
    pub cursor: Option<i64>,
    pub updated_at: String,
    /// The most recent triggers, newest first.
    pub recent: Vec<TriggerInfo>,
}

impl ScheduleInfo {
    /// The scheduled job still queued or running, if any.
    pub fn running_job(&self) -> Option<&JobId> {
        self.recent
            .iter()
            .find(|t| t.job_state.is_some_and(|s| !s.is_final()))
            .and_then(|t| t.job.as_ref())
    }

    /// Scheduled runs that failed since the last one that succeeded.
    pub fn consecutive_failures(&self) -> usize {
        self.recent
            .iter()
            .filter(|t| t.state == TriggerState::Submitted)
            .filter(|t| t.job_state.is_some_and(|s| s.is_final()))
            .take_while(|t| t.job_state != Some(RunState::Succeeded))
            .filter(|t| t.job_state == Some(RunState::Failed))
            .count()
    }

    /// The next trigger after `now` (µs) and after the cursor.
    pub fn next_trigger(&self, now: i64) -> Option<i64> {
        if !self.enabled {
            return None;
        }
        let schedule = Schedule::from_def(&self.definition, "schedule").ok()?;
        schedule.next_after(self.cursor.map_or(now, |c| c.max(now)))
    }
}

/// What recording a trigger did.
#[derive(Debug, Clone, PartialEq)]
pub enum Submitted {
    Job(JobId),
    /// The cursor was already at or past it (another loop, or a restart, handled it).
    AlreadyHandled,
    /// Part of the window is held by another job.
    Blocked(Interval),
}

/// How many recent triggers a schedule shows.
const RECENT: usize = 20;

impl Registry {
    /// Sets (`Some`) or disables (`None`) a feature set version's schedule. A new or changed
    /// schedule starts afresh: its first trigger is the first after a trigger loop sees it.
    /// Setting the schedule it already has changes nothing.
    pub fn set_schedule(&mut self, r: &FeatureSetRef, def: Option<&ScheduleDef>) -> Result<()> {
        let fs = self.require_feature_set(r)?;
        let context = format!("setting the schedule of {r}");
        match def {
            Some(def) => {
                Schedule::from_def(def, &format!("the schedule of {r}"))?;
                if !fs.offline_enabled {
                    return Err(no_offline(r));
                }
                let tx = self
                    .write_transaction()
                    .map_err(db_error(context.clone()))?;
                let current: Option<(String, bool)> = tx
                    .query_row(
                        "SELECT definition, enabled FROM schedules
                         WHERE feature_set = ?1 AND feature_set_version = ?2",
                        params![r.name, r.version],
                        |row| Ok((row.get(0)?, row.get(1)?)),
                    )
                    .optional()
                    .map_err(db_error(context.clone()))?;
                if current.is_some_and(|(d, enabled)| enabled && d == def.to_json()) {
                    return Ok(());
                }
                upsert_schedule(&tx, r, def, &context)?;
                tx.commit().map_err(db_error(context))
            }
            None => {
                let changed = self
                    .conn
                    .execute(
                        "UPDATE schedules SET enabled = 0, updated_at = ?3
                         WHERE feature_set = ?1 AND feature_set_version = ?2",
                        params![r.name, r.version, now()],
                    )
                    .map_err(db_error(context))?;
                if changed == 0 {
                    return Err(JobsError::InvalidInput(format!(
                        "feature set {r} has no schedule to disable"
                    )));
                }
                Ok(())
            }
        }
    }

    /// A feature set version's schedule, with its recent triggers.
    pub fn schedule(&self, r: &FeatureSetRef) -> Result<Option<ScheduleInfo>> {
        let context = format!("reading the schedule of {r}");
        let row: Option<(String, bool, Option<i64>, String)> = self
            .conn
            .query_row(
                "SELECT definition, enabled, cursor_us, updated_at FROM schedules
                 WHERE feature_set = ?1 AND feature_set_version = ?2",
                params![r.name, r.version],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        let Some((definition, enabled, cursor, updated_at)) = row else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT t.trigger_us, t.state, t.job_id, j.state, t.start_us, t.end_us, t.skipped
                 FROM schedule_triggers t LEFT JOIN jobs j ON j.id = t.job_id
                 WHERE t.feature_set = ?1 AND t.feature_set_version = ?2
                 ORDER BY t.trigger_us DESC LIMIT ?3",
            )
            .map_err(db_error(context.clone()))?;
        let recent = stmt
            .query_map(params![r.name, r.version, RECENT as i64], |row| {
                let state: String = row.get(1)?;
                let job: Option<String> = row.get(2)?;
                let job_state: Option<String> = row.get(3)?;
                Ok(TriggerInfo {
                    trigger: row.get(0)?,
                    state: if state == "skipped" {
                        TriggerState::Skipped
                    } else {
                        TriggerState::Submitted
                    },
                    job: job.and_then(|j| j.parse().ok()),
                    job_state: job_state.map(|s| RunState::parse(&s)),
                    window: TimeRange {
                        start: row.get(4)?,
                        end: row.get(5)?,
                    },
                    skipped: row.get(6)?,
                })
            })
            .map_err(db_error(context.clone()))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        Ok(Some(ScheduleInfo {
            feature_set: r.clone(),
            definition: ScheduleDef::from_json(&definition)?,
            enabled,
            cursor,
            updated_at,
            recent,
        }))
    }

    /// The feature set versions with an enabled schedule.
    pub fn scheduled_feature_sets(&self) -> Result<Vec<FeatureSetRef>> {
        let context = "listing schedules";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT feature_set, feature_set_version FROM schedules WHERE enabled = 1
                 ORDER BY feature_set, feature_set_version",
            )
            .map_err(db_error(context))?;
        stmt.query_map([], |row| {
            Ok(FeatureSetRef::new(
                row.get::<_, String>(0)?,
                row.get::<_, String>(1)?,
            ))
        })
        .map_err(db_error(context))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_error(context))
    }

    /// Starts a schedule's cursor at `now` if it has none; returns the cursor.
    pub fn start_schedule(&mut self, r: &FeatureSetRef, now_us: i64) -> Result<i64> {
        let context = format!("starting the schedule of {r}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE schedules SET cursor_us = ?3
             WHERE feature_set = ?1 AND feature_set_version = ?2 AND cursor_us IS NULL",
            params![r.name, r.version, now_us],
        )
        .map_err(db_error(context.clone()))?;
        let cursor: i64 = tx
            .query_row(
                "SELECT cursor_us FROM schedules WHERE feature_set = ?1 AND feature_set_version = ?2",
                params![r.name, r.version],
                |row| row.get(0),
            )
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(cursor)
    }

    /// Records `count` missed triggers up to `last` as skipped, with the window they covered,
    /// and moves the cursor past them. Returns false if the cursor had already moved.
    pub fn skip_triggers(
        &mut self,
        r: &FeatureSetRef,
        expected_cursor: i64,
        last: i64,
        count: i64,
        window: TimeRange,
    ) -> Result<bool> {
        let context = format!("recording skipped triggers of {r}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        if cursor(&tx, r, &context)? != Some(expected_cursor) {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO schedule_triggers
               (feature_set, feature_set_version, trigger_us, state, job_id, start_us, end_us, skipped, recorded_at)
             VALUES (?1, ?2, ?3, 'skipped', NULL, ?4, ?5, ?6, ?7)",
            params![r.name, r.version, last, window.start, window.end, count, now()],
        )
        .map_err(db_error(context.clone()))?;
        move_cursor(&tx, r, last, &context)?;
        tx.commit().map_err(db_error(context))?;
        Ok(true)
    }

    /// Records the trigger at `trigger` and the scheduled job over `tasks` it submits, and
    /// moves the cursor to it, all in one transaction.
    pub fn submit_trigger(
        &mut self,
        r: &FeatureSetRef,
        trigger: i64,
        window: TimeRange,
        tasks: &[TimeRange],
        request: &str,
    ) -> Result<Submitted> {
        let context = format!("recording the trigger of {r}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        if cursor(&tx, r, &context)?.is_some_and(|c| c >= trigger) {
            return Ok(Submitted::AlreadyHandled);
        }
        let job = match insert_materialization_job(&tx, SCHEDULED, r, window, tasks, Some(request))?
        {
            Ok(job) => job,
            Err(held) => return Ok(Submitted::Blocked(held)),
        };
        tx.execute(
            "INSERT INTO schedule_triggers
               (feature_set, feature_set_version, trigger_us, state, job_id, start_us, end_us, skipped, recorded_at)
             VALUES (?1, ?2, ?3, 'submitted', ?4, ?5, ?6, 0, ?7)",
            params![r.name, r.version, trigger, job.as_str(), window.start, window.end, now()],
        )
        .map_err(db_error(context.clone()))?;
        move_cursor(&tx, r, trigger, &context)?;
        tx.commit().map_err(db_error(context))?;
        Ok(Submitted::Job(job))
    }

    /// Scheduled jobs per state, and the runs that failed in a row per feature set version:
    /// what `/metrics` shows of schedules.
    pub fn schedule_overview(&self) -> Result<Vec<ScheduleInfo>> {
        let mut out = Vec::new();
        for r in self.scheduled_feature_sets()? {
            if let Some(s) = self.schedule(&r)? {
                out.push(s);
            }
        }
        Ok(out)
    }
}

fn no_offline(r: &FeatureSetRef) -> JobsError {
    JobsError::InvalidInput(format!(
        "feature set {r} has offline materialization off, so a schedule would have nothing to \
         materialize; register a new version whose asset sets \
         materialization_settings.offline_enabled: true"
    ))
}

/// Inserts or replaces a schedule, enabled, with no cursor yet.
pub(super) fn upsert_schedule(
    tx: &rusqlite::Transaction<'_>,
    r: &FeatureSetRef,
    def: &ScheduleDef,
    context: &str,
) -> Result<()> {
    tx.execute(
        "INSERT INTO schedules (feature_set, feature_set_version, definition, enabled, cursor_us, updated_at)
         VALUES (?1, ?2, ?3, 1, NULL, ?4)
         ON CONFLICT (feature_set, feature_set_version)
         DO UPDATE SET definition = excluded.definition, enabled = 1, cursor_us = NULL,
                       updated_at = excluded.updated_at",
        params![r.name, r.version, def.to_json(), now()],
    )
    .map_err(db_error(context))?;
    Ok(())
}

fn cursor(tx: &rusqlite::Transaction<'_>, r: &FeatureSetRef, context: &str) -> Result<Option<i64>> {
    tx.query_row(
        "SELECT cursor_us FROM schedules WHERE feature_set = ?1 AND feature_set_version = ?2",
        params![r.name, r.version],
        |row| row.get(0),
    )
    .optional()
    .map(Option::flatten)
    .map_err(db_error(context))
}

fn move_cursor(
    tx: &rusqlite::Transaction<'_>,
    r: &FeatureSetRef,
    to: i64,
    context: &str,
) -> Result<()> {
    tx.execute(
        "UPDATE schedules SET cursor_us = ?3 WHERE feature_set = ?1 AND feature_set_version = ?2",
        params![r.name, r.version, to],
    )
    .map_err(db_error(context))?;
    Ok(())
}
