//! Jobs, tasks and data intervals in the registry.
//!
//! A backfill job is created together with its tasks and with its tasks' windows marked
//! Pending, in one transaction that first re-reads the timeline: two backfills started at the
//! same moment cannot both claim a window. Each task attempt's end updates the task and its
//! window's status (Complete or Incomplete) in one transaction.

use std::fmt;

use rusqlite::{OptionalExtension, params};

use super::{FeatureSetRef, Registry, db_error, now};
use crate::error::{JobsError, Result};
use crate::materialize::{DataStatus, Interval, Timeline};
use crate::source::TimeRange;

/// A job's id: `<kind>-<UTC time>-<random>`, sortable by creation time.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(String);

impl JobId {
    pub fn generate(kind: &str) -> JobId {
        JobId(format!(
            "{kind}-{}-{:04x}",
            chrono::Utc::now().format("%Y%m%d%H%M%S%3f"),
            rand::random::<u16>()
        ))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for JobId {
    type Err = JobsError;
    fn from_str(s: &str) -> Result<JobId> {
        if s.trim().is_empty() {
            return Err(JobsError::InvalidInput("a job id cannot be empty".into()));
        }
        Ok(JobId(s.trim().to_string()))
    }
}

/// States of jobs and tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    Queued,
    Running,
    Succeeded,
    Failed,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
        }
    }

    fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            _ => RunState::Queued,
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone)]
pub struct TaskInfo {
    pub index: i64,
    pub window: TimeRange,
    pub state: RunState,
    pub attempts: i64,
    pub rows: Option<i64>,
    pub table_version: Option<i64>,
    pub error: Option<String>,
}

#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    pub kind: String,
    pub feature_set: FeatureSetRef,
    pub window: TimeRange,
    pub state: RunState,
    pub created_at: String,
    pub updated_at: String,
    pub tasks: Vec<TaskInfo>,
}

fn load_timeline(conn: &rusqlite::Connection, r: &FeatureSetRef) -> Result<Timeline> {
    let context = format!("reading the data intervals of {r}");
    let mut stmt = conn
        .prepare(
            "SELECT start_us, end_us, status FROM data_intervals
             WHERE feature_set = ?1 AND feature_set_version = ?2 ORDER BY start_us",
        )
        .map_err(db_error(context.clone()))?;
    let rows = stmt
        .query_map(params![r.name, r.version], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, i64>(1)?,
                row.get::<_, String>(2)?,
            ))
        })
        .map_err(db_error(context.clone()))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_error(context))?;
    Ok(Timeline::from_intervals(rows.into_iter().map(
        |(start, end, s)| Interval {
            start,
            end,
            status: DataStatus::parse(&s).unwrap_or(DataStatus::None),
        },
    )))
}

fn store_timeline(tx: &rusqlite::Transaction<'_>, r: &FeatureSetRef, t: &Timeline) -> Result<()> {
    let context = format!("writing the data intervals of {r}");
    tx.execute(
        "DELETE FROM data_intervals WHERE feature_set = ?1 AND feature_set_version = ?2",
        params![r.name, r.version],
    )
    .map_err(db_error(context.clone()))?;
    for i in t.intervals() {
        tx.execute(
            "INSERT INTO data_intervals (feature_set, feature_set_version, start_us, end_us, status)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![r.name, r.version, i.start, i.end, i.status.name()],
        )
        .map_err(db_error(context.clone()))?;
    }
    Ok(())
}

impl Registry {
    /// The data intervals of a feature set version.
    pub fn timeline(&self, r: &FeatureSetRef) -> Result<Timeline> {
        load_timeline(&self.conn, r)
    }

    /// Creates a backfill job over `tasks`, marking their windows Pending. Fails, changing
    /// nothing, if any of them became Pending since the plan was made.
    pub fn create_backfill_job(
        &mut self,
        r: &FeatureSetRef,
        window: TimeRange,
        tasks: &[TimeRange],
    ) -> Result<JobId> {
        let id = JobId::generate("backfill");
        let context = format!("creating backfill job for {r}");
        let tx = self.conn.transaction().map_err(db_error(context.clone()))?;
        let mut timeline = load_timeline(&tx, r)?;
        for t in tasks {
            if let Some(p) = timeline
                .within(*t)
                .iter()
                .find(|i| i.status == DataStatus::Pending)
            {
                return Err(JobsError::InvalidInput(format!(
                    "{p} of {r} was claimed by another job a moment ago; run the backfill again"
                )));
            }
        }
        let stamp = now();
        tx.execute(
            "INSERT INTO jobs (id, kind, feature_set, feature_set_version, start_us, end_us, state, created_at, updated_at)
             VALUES (?1, 'backfill', ?2, ?3, ?4, ?5, 'queued', ?6, ?6)",
            params![id.as_str(), r.name, r.version, window.start, window.end, stamp],
        )
        .map_err(db_error(context.clone()))?;
        for (i, t) in tasks.iter().enumerate() {
            tx.execute(
                "INSERT INTO tasks (job_id, idx, start_us, end_us, state, attempts, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'queued', 0, ?5)",
                params![id.as_str(), i as i64, t.start, t.end, stamp],
            )
            .map_err(db_error(context.clone()))?;
            timeline.set(*t, DataStatus::Pending);
        }
        store_timeline(&tx, r, &timeline)?;
        tx.commit().map_err(db_error(context))?;
        Ok(id)
    }

    /// Marks a task attempt as started; returns the attempt number (1, 2, ...).
    pub fn start_task(&mut self, job: &JobId, index: i64) -> Result<i64> {
        let context = format!("starting task {index} of job {job}");
        let tx = self.conn.transaction().map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE tasks SET state = 'running', attempts = attempts + 1, updated_at = ?3
             WHERE job_id = ?1 AND idx = ?2",
            params![job.as_str(), index, now()],
        )
        .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE jobs SET state = 'running', updated_at = ?2 WHERE id = ?1",
            params![job.as_str(), now()],
        )
        .map_err(db_error(context.clone()))?;
        let attempt: i64 = tx
            .query_row(
                "SELECT attempts FROM tasks WHERE job_id = ?1 AND idx = ?2",
                params![job.as_str(), index],
                |row| row.get(0),
            )
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(attempt)
    }

    /// Records a task's end: its window becomes Complete, or Incomplete with the error.
    pub fn finish_task(
        &mut self,
        r: &FeatureSetRef,
        job: &JobId,
        index: i64,
        outcome: std::result::Result<(u64, Option<u64>), String>,
    ) -> Result<()> {
        let context = format!("finishing task {index} of job {job}");
        let tx = self.conn.transaction().map_err(db_error(context.clone()))?;
        let (start, end): (i64, i64) = tx
            .query_row(
                "SELECT start_us, end_us FROM tasks WHERE job_id = ?1 AND idx = ?2",
                params![job.as_str(), index],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .map_err(db_error(context.clone()))?;
        let (state, status) = match &outcome {
            Ok(_) => (RunState::Succeeded, DataStatus::Complete),
            Err(_) => (RunState::Failed, DataStatus::Incomplete),
        };
        let (rows, version, error) = match outcome {
            Ok((rows, version)) => (Some(rows as i64), version.map(|v| v as i64), None),
            Err(e) => (None, None, Some(e)),
        };
        tx.execute(
            "UPDATE tasks SET state = ?3, rows_written = ?4, table_version = ?5, error = ?6, updated_at = ?7
             WHERE job_id = ?1 AND idx = ?2",
            params![job.as_str(), index, state.name(), rows, version, error, now()],
        )
        .map_err(db_error(context.clone()))?;
        let mut timeline = load_timeline(&tx, r)?;
        timeline.set(TimeRange { start, end }, status);
        store_timeline(&tx, r, &timeline)?;
        tx.commit().map_err(db_error(context))
    }

    /// Sets a job's final state from its tasks'.
    pub fn finish_job(&mut self, job: &JobId) -> Result<RunState> {
        let context = format!("finishing job {job}");
        let failed: i64 = self
            .conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE job_id = ?1 AND state <> 'succeeded'",
                params![job.as_str()],
                |row| row.get(0),
            )
            .map_err(db_error(context.clone()))?;
        let state = if failed == 0 {
            RunState::Succeeded
        } else {
            RunState::Failed
        };
        self.conn
            .execute(
                "UPDATE jobs SET state = ?2, updated_at = ?3 WHERE id = ?1",
                params![job.as_str(), state.name(), now()],
            )
            .map_err(db_error(context))?;
        Ok(state)
    }

    /// A job with its tasks.
    pub fn job(&self, id: &JobId) -> Result<Option<JobInfo>> {
        let context = format!("reading job {id}");
        let row = self
            .conn
            .query_row(
                "SELECT kind, feature_set, feature_set_version, start_us, end_us, state, created_at, updated_at
                 FROM jobs WHERE id = ?1",
                params![id.as_str()],
                |row| {
                    Ok(JobInfo {
                        id: id.clone(),
                        kind: row.get(0)?,
                        feature_set: FeatureSetRef::new(row.get::<_, String>(1)?, row.get::<_, String>(2)?),
                        window: TimeRange {
                            start: row.get(3)?,
                            end: row.get(4)?,
                        },
                        state: RunState::parse(&row.get::<_, String>(5)?),
                        created_at: row.get(6)?,
                        updated_at: row.get(7)?,
                        tasks: Vec::new(),
                    })
                },
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        let Some(mut job) = row else {
            return Ok(None);
        };
        let mut stmt = self
            .conn
            .prepare(
                "SELECT idx, start_us, end_us, state, attempts, rows_written, table_version, error
                 FROM tasks WHERE job_id = ?1 ORDER BY idx",
            )
            .map_err(db_error(context.clone()))?;
        job.tasks = stmt
            .query_map(params![id.as_str()], |row| {
                Ok(TaskInfo {
                    index: row.get(0)?,
                    window: TimeRange {
                        start: row.get(1)?,
                        end: row.get(2)?,
                    },
                    state: RunState::parse(&row.get::<_, String>(3)?),
                    attempts: row.get(4)?,
                    rows: row.get(5)?,
                    table_version: row.get(6)?,
                    error: row.get(7)?,
                })
            })
            .map_err(db_error(context.clone()))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        Ok(Some(job))
    }

    /// Jobs, newest first; of one feature set if given.
    pub fn jobs(&self, feature_set: Option<&FeatureSetRef>, limit: usize) -> Result<Vec<JobInfo>> {
        let context = "listing jobs";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, feature_set, feature_set_version FROM jobs ORDER BY created_at DESC, id DESC",
            )
            .map_err(db_error(context))?;
        let ids = stmt
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    FeatureSetRef::new(row.get::<_, String>(1)?, row.get::<_, String>(2)?),
                ))
            })
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))?;
        let mut out = Vec::new();
        for (id, r) in ids {
            if feature_set.is_some_and(|f| *f != r) {
                continue;
            }
            if let Some(job) = self.job(&JobId(id))? {
                out.push(job);
            }
            if out.len() >= limit {
                break;
            }
        }
        Ok(out)
    }
}
