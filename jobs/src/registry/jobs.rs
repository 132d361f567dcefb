//! Jobs, tasks, attempts and data intervals in the registry.
//!
//! A backfill job is created together with its tasks and with its tasks' windows marked
//! Pending, in one transaction that first re-reads the timeline: two backfills started at the
//! same moment cannot both claim a window. Each task attempt is recorded; a task's final end
//! updates the task and its window's status (Complete or Incomplete) in one transaction.
//!
//! Job state is durable: a scheduler that restarts finds its queued and running jobs here,
//! with the request each was submitted with, and resumes them (see [`crate::manager`]).

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
    Cancelled,
}

impl RunState {
    pub fn name(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Succeeded => "succeeded",
            RunState::Failed => "failed",
            RunState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> RunState {
        match s {
            "running" => RunState::Running,
            "succeeded" => RunState::Succeeded,
            "failed" => RunState::Failed,
            "cancelled" => RunState::Cancelled,
            _ => RunState::Queued,
        }
    }

    /// Succeeded, failed or cancelled: nothing more happens to it.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Succeeded | RunState::Failed | RunState::Cancelled
        )
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

/// (state, count) pairs.
pub type StateCounts = Vec<(String, i64)>;

/// Job kinds.
pub const BACKFILL: &str = "backfill";
pub const RETRIEVAL: &str = "retrieval";
/// A materialization triggered by a feature set's schedule: run like a backfill.
pub const SCHEDULED: &str = "scheduled";

/// Whether jobs of `kind` materialize windows of a feature set (and own their statuses).
pub fn is_materialization(kind: &str) -> bool {
    kind == BACKFILL || kind == SCHEDULED
}

#[derive(Debug, Clone)]
pub struct JobInfo {
    pub id: JobId,
    /// [`BACKFILL`], [`SCHEDULED`] or [`RETRIEVAL`].
    pub kind: String,
    /// The feature set a backfill materializes; empty name for a retrieval.
    pub feature_set: FeatureSetRef,
    pub window: TimeRange,
    pub state: RunState,
    pub created_at: String,
    pub updated_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub error: Option<String>,
    pub cancel_requested: bool,
    /// The submitted request (JSON), kept to resume the job after a restart.
    pub request: Option<String>,
    pub tasks: Vec<TaskInfo>,
}

impl JobInfo {
    pub fn tasks_done(&self) -> usize {
        self.tasks.iter().filter(|t| t.state.is_final()).count()
    }

    pub fn tasks_failed(&self) -> usize {
        self.tasks
            .iter()
            .filter(|t| t.state == RunState::Failed)
            .count()
    }

    pub fn rows(&self) -> u64 {
        self.tasks.iter().filter_map(|t| t.rows).sum::<i64>().max(0) as u64
    }
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
        request: Option<&str>,
    ) -> Result<JobId> {
        let context = format!("creating backfill job for {r}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        let id =
            insert_materialization_job(&tx, BACKFILL, r, window, tasks, request)?.map_err(|p| {
                JobsError::InvalidInput(format!(
                    "{p} of {r} was claimed by another job a moment ago; run the backfill again"
                ))
            })?;
        tx.commit().map_err(db_error(context))?;
        Ok(id)
    }

    /// Marks a task attempt as started; returns the attempt number (1, 2, ...).
    pub fn start_task(&mut self, job: &JobId, index: i64) -> Result<i64> {
        let context = format!("starting task {index} of job {job}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE tasks SET state = 'running', attempts = attempts + 1, updated_at = ?3
             WHERE job_id = ?1 AND idx = ?2",
            params![job.as_str(), index, now()],
        )
        .map_err(db_error(context.clone()))?;
        mark_job_running(&tx, job).map_err(db_error(context.clone()))?;
        let attempt: i64 = tx
            .query_row(
                "SELECT attempts FROM tasks WHERE job_id = ?1 AND idx = ?2",
                params![job.as_str(), index],
                |row| row.get(0),
            )
            .map_err(db_error(context.clone()))?;
        tx.execute(
            "INSERT OR REPLACE INTO task_attempts (job_id, idx, attempt, state, started_at)
             VALUES (?1, ?2, ?3, 'running', ?4)",
            params![job.as_str(), index, attempt, now()],
        )
        .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(attempt)
    }

    /// Records a failed attempt that will be retried: the task goes back to queued and its
    /// window stays Pending.
    pub fn retry_task(&mut self, job: &JobId, index: i64, attempt: i64, error: &str) -> Result<()> {
        let context = format!("recording attempt {attempt} of task {index} of job {job}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE tasks SET state = 'queued', error = ?3, updated_at = ?4 WHERE job_id = ?1 AND idx = ?2",
            params![job.as_str(), index, error, now()],
        )
        .map_err(db_error(context.clone()))?;
        end_attempt(&tx, job, index, attempt, RunState::Failed, Some(error))
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))
    }

    /// Creates a retrieval job with one task; `request` is what it runs (JSON).
    pub fn create_retrieval_job(&mut self, request: &str) -> Result<JobId> {
        let id = JobId::generate(RETRIEVAL);
        let context = "creating retrieval job".to_string();
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        let stamp = now();
        tx.execute(
            "INSERT INTO jobs (id, kind, feature_set, feature_set_version, start_us, end_us, state, created_at, updated_at, request)
             VALUES (?1, 'retrieval', '', '', 0, 0, 'queued', ?2, ?2, ?3)",
            params![id.as_str(), stamp, request],
        )
        .map_err(db_error(context.clone()))?;
        tx.execute(
            "INSERT INTO tasks (job_id, idx, start_us, end_us, state, attempts, updated_at)
             VALUES (?1, 0, 0, 0, 'queued', 0, ?2)",
            params![id.as_str(), stamp],
        )
        .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(id)
    }

    /// Records the end of a task that has no data window (a retrieval's).
    pub fn finish_plain_task(
        &mut self,
        job: &JobId,
        index: i64,
        outcome: std::result::Result<u64, String>,
    ) -> Result<()> {
        let context = format!("finishing task {index} of job {job}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        let (state, rows, error) = match outcome {
            Ok(rows) => (RunState::Succeeded, Some(rows as i64), None),
            Err(e) => (RunState::Failed, None, Some(e)),
        };
        tx.execute(
            "UPDATE tasks SET state = ?3, rows_written = ?4, error = ?5, updated_at = ?6
             WHERE job_id = ?1 AND idx = ?2",
            params![job.as_str(), index, state.name(), rows, error, now()],
        )
        .map_err(db_error(context.clone()))?;
        let attempt = current_attempt(&tx, job, index).map_err(db_error(context.clone()))?;
        end_attempt(&tx, job, index, attempt, state, error.as_deref())
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))
    }

    /// Asks for a job to stop. A queued job is cancelled at once (its tasks' windows are
    /// released as Incomplete); a running one is marked and stopped by whoever runs it.
    /// Returns the job's state after the request.
    pub fn request_cancel(&mut self, job: &JobId) -> Result<RunState> {
        let context = format!("cancelling job {job}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        let row: Option<(String, String, String, String)> = tx
            .query_row(
                "SELECT state, kind, feature_set, feature_set_version FROM jobs WHERE id = ?1",
                params![job.as_str()],
                |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
            )
            .optional()
            .map_err(db_error(context.clone()))?;
        let Some((state, kind, name, version)) = row else {
            return Err(JobsError::InvalidInput(format!("unknown job {job}")));
        };
        let state = RunState::parse(&state);
        if state.is_final() {
            return Ok(state);
        }
        tx.execute(
            "UPDATE jobs SET cancel_requested = 1, updated_at = ?2 WHERE id = ?1",
            params![job.as_str(), now()],
        )
        .map_err(db_error(context.clone()))?;
        let after = if state == RunState::Queued {
            let r = FeatureSetRef::new(name, version);
            end_unfinished_tasks(&tx, job, &kind, &r, RunState::Cancelled, None)?;
            set_job_final(&tx, job, RunState::Cancelled, Some("cancelled"))
                .map_err(db_error(context.clone()))?;
            RunState::Cancelled
        } else {
            state
        };
        tx.commit().map_err(db_error(context))?;
        Ok(after)
    }

    /// Whether a cancel was asked for.
    pub fn cancel_requested(&self, job: &JobId) -> Result<bool> {
        self.conn
            .query_row(
                "SELECT cancel_requested FROM jobs WHERE id = ?1",
                params![job.as_str()],
                |row| row.get::<_, i64>(0),
            )
            .optional()
            .map(|v| v.unwrap_or(0) != 0)
            .map_err(db_error(format!("reading job {job}")))
    }

    /// Ends a cancelled running job: its unfinished tasks become cancelled and their windows
    /// Incomplete (a commit may have landed just as the cancel came).
    pub fn finish_cancelled(&mut self, job: &JobId) -> Result<()> {
        let context = format!("cancelling job {job}");
        let info = self
            .job(job)?
            .ok_or_else(|| JobsError::InvalidInput(format!("unknown job {job}")))?;
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        end_unfinished_tasks(
            &tx,
            job,
            &info.kind,
            &info.feature_set,
            RunState::Cancelled,
            None,
        )?;
        set_job_final(&tx, job, RunState::Cancelled, Some("cancelled"))
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))
    }

    /// How many jobs and tasks are in each state: `(jobs, tasks)` as (state, count) pairs.
    pub fn state_counts(&self) -> Result<(StateCounts, StateCounts)> {
        let count = |table: &str| -> Result<Vec<(String, i64)>> {
            let context = format!("counting {table} by state");
            let mut stmt = self
                .conn
                .prepare(&format!(
                    "SELECT state, COUNT(*) FROM {table} GROUP BY state ORDER BY state"
                ))
                .map_err(db_error(context.clone()))?;
            stmt.query_map([], |row| Ok((row.get(0)?, row.get(1)?)))
                .map_err(db_error(context.clone()))?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(db_error(context))
        };
        Ok((count("jobs")?, count("tasks")?))
    }

    /// Jobs not yet ended, oldest first: what a scheduler resumes after a restart.
    pub fn unfinished_jobs(&self) -> Result<Vec<JobId>> {
        let context = "listing unfinished jobs";
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, id",
            )
            .map_err(db_error(context))?;
        stmt.query_map([], |row| Ok(JobId(row.get(0)?)))
            .map_err(db_error(context))?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(db_error(context))
    }

    /// After a restart: tasks that were running when the process died go back to queued, and
    /// their attempts are recorded as interrupted.
    pub fn requeue_interrupted(&mut self, job: &JobId) -> Result<usize> {
        let context = format!("resuming job {job}");
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE task_attempts SET state = 'interrupted', error = 'the scheduler stopped during this attempt', finished_at = ?2
             WHERE job_id = ?1 AND state = 'running'",
            params![job.as_str(), now()],
        )
        .map_err(db_error(context.clone()))?;
        let n = tx
            .execute(
                "UPDATE tasks SET state = 'queued', updated_at = ?2 WHERE job_id = ?1 AND state = 'running'",
                params![job.as_str(), now()],
            )
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(n)
    }

    /// Reopens an ended job so its unfinished tasks run again under their original
    /// transaction ids; a backfill's windows of them become Pending again.
    pub fn reopen_job(&mut self, job: &JobId) -> Result<usize> {
        let context = format!("reopening job {job}");
        let info = self
            .job(job)?
            .ok_or_else(|| JobsError::InvalidInput(format!("unknown job {job}")))?;
        if !info.state.is_final() {
            return Err(JobsError::InvalidInput(format!(
                "job {job} is still {}; wait for it to end (or cancel it) before retrying it",
                info.state
            )));
        }
        let reopened: Vec<&TaskInfo> = info
            .tasks
            .iter()
            .filter(|t| t.state != RunState::Succeeded)
            .collect();
        if reopened.is_empty() {
            return Err(JobsError::InvalidInput(format!(
                "job {job} has no unfinished task to retry"
            )));
        }
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        if is_materialization(&info.kind) {
            let mut timeline = load_timeline(&tx, &info.feature_set)?;
            for t in &reopened {
                if let Some(p) = timeline
                    .within(t.window)
                    .iter()
                    .find(|i| i.status == DataStatus::Pending)
                {
                    return Err(JobsError::InvalidInput(format!(
                        "{p} of {} is held by another job; retry once it ends",
                        info.feature_set
                    )));
                }
                timeline.set(t.window, DataStatus::Pending);
            }
            store_timeline(&tx, &info.feature_set, &timeline)?;
        }
        tx.execute(
            "UPDATE tasks SET state = 'queued', updated_at = ?2 WHERE job_id = ?1 AND state <> 'succeeded'",
            params![job.as_str(), now()],
        )
        .map_err(db_error(context.clone()))?;
        tx.execute(
            "UPDATE jobs SET state = 'queued', error = NULL, finished_at = NULL, cancel_requested = 0, updated_at = ?2
             WHERE id = ?1",
            params![job.as_str(), now()],
        )
        .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))?;
        Ok(reopened.len())
    }

    /// Records why a job failed before or outside its tasks, and ends it.
    pub fn fail_job(&mut self, job: &JobId, error: &str) -> Result<()> {
        let context = format!("failing job {job}");
        let info = self
            .job(job)?
            .ok_or_else(|| JobsError::InvalidInput(format!("unknown job {job}")))?;
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
        end_unfinished_tasks(
            &tx,
            job,
            &info.kind,
            &info.feature_set,
            RunState::Failed,
            Some(error),
        )?;
        set_job_final(&tx, job, RunState::Failed, Some(error))
            .map_err(db_error(context.clone()))?;
        tx.commit().map_err(db_error(context))
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
        let tx = self
            .write_transaction()
            .map_err(db_error(context.clone()))?;
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
        let attempt = current_attempt(&tx, job, index).map_err(db_error(context.clone()))?;
        end_attempt(&tx, job, index, attempt, state, error.as_deref())
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
        let error: Option<String> = self
            .conn
            .query_row(
                "SELECT error FROM tasks WHERE job_id = ?1 AND state = 'failed' ORDER BY idx LIMIT 1",
                params![job.as_str()],
                |row| row.get(0),
            )
            .optional()
            .map_err(db_error(context.clone()))?
            .flatten();
        set_job_final(&self.conn, job, state, error.as_deref()).map_err(db_error(context))?;
        Ok(state)
    }

    /// A job with its tasks.
    pub fn job(&self, id: &JobId) -> Result<Option<JobInfo>> {
        let context = format!("reading job {id}");
        let row = self
            .conn
            .query_row(
                "SELECT kind, feature_set, feature_set_version, start_us, end_us, state, created_at, updated_at,
                        started_at, finished_at, error, cancel_requested, request
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
                        started_at: row.get(8)?,
                        finished_at: row.get(9)?,
                        error: row.get(10)?,
                        cancel_requested: row.get::<_, i64>(11)? != 0,
                        request: row.get(12)?,
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

fn mark_job_running(tx: &rusqlite::Connection, job: &JobId) -> rusqlite::Result<usize> {
    tx.execute(
        "UPDATE jobs SET state = 'running', started_at = COALESCE(started_at, ?2), updated_at = ?2
         WHERE id = ?1 AND state IN ('queued', 'running')",
        params![job.as_str(), now()],
    )
}

fn set_job_final(
    conn: &rusqlite::Connection,
    job: &JobId,
    state: RunState,
    error: Option<&str>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE jobs SET state = ?2, error = ?3, finished_at = ?4, updated_at = ?4 WHERE id = ?1",
        params![job.as_str(), state.name(), error, now()],
    )
}

fn current_attempt(conn: &rusqlite::Connection, job: &JobId, index: i64) -> rusqlite::Result<i64> {
    conn.query_row(
        "SELECT attempts FROM tasks WHERE job_id = ?1 AND idx = ?2",
        params![job.as_str(), index],
        |row| row.get(0),
    )
}

/// Records a materialization job of `kind` over `tasks`, marking their windows Pending, inside
/// the caller's transaction. `Ok(Err(interval))` when part of a task's window is already
/// Pending (held by another job): nothing is written then.
pub(super) fn insert_materialization_job(
    tx: &rusqlite::Transaction<'_>,
    kind: &str,
    r: &FeatureSetRef,
    window: TimeRange,
    tasks: &[TimeRange],
    request: Option<&str>,
) -> Result<std::result::Result<JobId, Interval>> {
    let id = JobId::generate(kind);
    let context = format!("creating {kind} job for {r}");
    let mut timeline = load_timeline(tx, r)?;
    for t in tasks {
        if let Some(p) = timeline
            .within(*t)
            .into_iter()
            .find(|i| i.status == DataStatus::Pending)
        {
            return Ok(Err(p));
        }
    }
    let stamp = now();
    tx.execute(
        "INSERT INTO jobs (id, kind, feature_set, feature_set_version, start_us, end_us, state, created_at, updated_at, request)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?7, ?8)",
        params![id.as_str(), kind, r.name, r.version, window.start, window.end, stamp, request],
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
    store_timeline(tx, r, &timeline)?;
    Ok(Ok(id))
}

fn end_attempt(
    conn: &rusqlite::Connection,
    job: &JobId,
    index: i64,
    attempt: i64,
    state: RunState,
    error: Option<&str>,
) -> rusqlite::Result<usize> {
    conn.execute(
        "UPDATE task_attempts SET state = ?4, error = ?5, finished_at = ?6
         WHERE job_id = ?1 AND idx = ?2 AND attempt = ?3",
        params![job.as_str(), index, attempt, state.name(), error, now()],
    )
}

/// Ends a job's unfinished tasks (and their running attempts) as `state`, keeping `error` if
/// given; a backfill's windows of them become Incomplete (a commit may have landed just then).
fn end_unfinished_tasks(
    tx: &rusqlite::Transaction<'_>,
    job: &JobId,
    kind: &str,
    r: &FeatureSetRef,
    state: RunState,
    error: Option<&str>,
) -> Result<()> {
    let context = format!("ending the tasks of job {job}");
    let windows: Vec<TimeRange> = {
        let mut stmt = tx
            .prepare(
                "SELECT start_us, end_us FROM tasks WHERE job_id = ?1 AND state IN ('queued', 'running')",
            )
            .map_err(db_error(context.clone()))?;
        stmt.query_map(params![job.as_str()], |row| {
            Ok(TimeRange {
                start: row.get(0)?,
                end: row.get(1)?,
            })
        })
        .map_err(db_error(context.clone()))?
        .collect::<rusqlite::Result<Vec<_>>>()
        .map_err(db_error(context.clone()))?
    };
    tx.execute(
        "UPDATE tasks SET state = ?2, error = COALESCE(?3, error), updated_at = ?4
         WHERE job_id = ?1 AND state IN ('queued', 'running')",
        params![job.as_str(), state.name(), error, now()],
    )
    .map_err(db_error(context.clone()))?;
    tx.execute(
        "UPDATE task_attempts SET state = ?2, error = COALESCE(?3, error), finished_at = ?4
         WHERE job_id = ?1 AND state = 'running'",
        params![job.as_str(), state.name(), error, now()],
    )
    .map_err(db_error(context.clone()))?;
    if is_materialization(kind) && !windows.is_empty() {
        let mut timeline = load_timeline(tx, r)?;
        for w in windows {
            timeline.set(w, DataStatus::Incomplete);
        }
        store_timeline(tx, r, &timeline)?;
    }
    Ok(())
}
