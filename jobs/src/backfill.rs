//! Backfill jobs: materialize a window of a registered feature set into its offline store.
//!
//! The window is planned against the feature set's data intervals (only the statuses asked
//! for, never Pending ones), split into whole-day tasks, and recorded as a job whose tasks'
//! windows become Pending ([`create_backfill`]). The job is then run by [`crate::manager`]:
//! in this process for the embedded CLI ([`backfill`]), or by the scheduler service. Each task
//! commits its window once (see [`crate::offline`]) and then marks it Complete, or Incomplete
//! if it failed for good. A failed job is retried by running the backfill again over
//! Incomplete windows, or with [`retry_job`], which reruns exactly the job's unfinished tasks
//! under their original transaction ids.

use std::path::Path;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::engine::Engine;
use crate::error::{JobsError, Result};
use crate::manager::{Cancel, RunOptions, run_job};
use crate::materialize::{DataStatus, plan_backfill};
use crate::registry::{FeatureSetRef, JobId, RegisteredFeatureSet, Registry, RunState};
use crate::source::TimeRange;

/// One day in microseconds: the offline store's partition, and the default task length.
pub const DAY_MICROS: i64 = 86_400_000_000;
const DAY: i64 = DAY_MICROS;

/// What to backfill; serialized into the job record so a restarted scheduler knows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackfillOptions {
    pub feature_set: FeatureSetRef,
    pub window: TimeRange,
    /// Data statuses to (re)materialize.
    pub statuses: Vec<DataStatus>,
    /// Task length in microseconds: whole days.
    pub partition: i64,
}

/// How one task ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub index: i64,
    pub window: TimeRange,
    /// Rows written and the Delta version committed (`None`: it had committed before).
    pub result: std::result::Result<(u64, Option<u64>), String>,
    pub attempts: i64,
    pub elapsed: Duration,
}

#[derive(Debug, Clone)]
pub struct BackfillReport {
    /// `None` when there was nothing to do.
    pub job: Option<JobId>,
    pub state: Option<RunState>,
    pub tasks: Vec<TaskOutcome>,
    pub skipped_pending: Vec<TimeRange>,
    pub elapsed: Duration,
}

impl BackfillReport {
    pub fn rows(&self) -> u64 {
        self.tasks
            .iter()
            .filter_map(|t| t.result.as_ref().ok().map(|(r, _)| *r))
            .sum()
    }

    pub fn failed(&self) -> usize {
        self.tasks.iter().filter(|t| t.result.is_err()).count()
    }
}

/// A planned backfill: the job, if there was anything to do.
#[derive(Debug, Clone)]
pub struct PlannedBackfill {
    pub job: Option<JobId>,
    pub tasks: usize,
    pub skipped_pending: Vec<TimeRange>,
}

pub(crate) fn materialized_set(
    registry: &Registry,
    r: &FeatureSetRef,
) -> Result<RegisteredFeatureSet> {
    let fs = registry.require_feature_set(r)?;
    if !fs.offline_enabled {
        return Err(JobsError::InvalidInput(format!(
            "feature set {r} has offline materialization off, so there is nothing to backfill; \
             register a new version whose asset sets materialization_settings.offline_enabled: true"
        )));
    }
    Ok(fs)
}

/// Checks and plans a backfill and records it as a queued job (its windows become Pending).
/// On any error nothing is recorded.
pub fn create_backfill(home: &Path, options: &BackfillOptions) -> Result<PlannedBackfill> {
    let r = &options.feature_set;
    let mut registry = Registry::open(home)?;
    materialized_set(&registry, r)?;
    if options.partition < DAY || options.partition % DAY != 0 {
        return Err(JobsError::InvalidInput(
            "the offline store is partitioned by day: --partition must be whole days (1d, 2d, ...)"
                .to_string(),
        ));
    }
    if options.statuses.contains(&DataStatus::Pending) {
        return Err(JobsError::InvalidInput(
            "data status Pending: windows held by a running job are never backfilled".to_string(),
        ));
    }
    let plan = plan_backfill(
        &registry.timeline(r)?,
        options.window,
        &options.statuses,
        options.partition,
    )?;
    if plan.tasks.is_empty() {
        return Ok(PlannedBackfill {
            job: None,
            tasks: 0,
            skipped_pending: plan.skipped_pending,
        });
    }
    let request = serde_json::to_string(options)
        .map_err(|e| JobsError::InvalidInput(format!("cannot record the backfill: {e}")))?;
    let job = registry.create_backfill_job(r, options.window, &plan.tasks, Some(&request))?;
    tracing::info!(job = %job, feature_set = %r, tasks = plan.tasks.len(), "backfill job created");
    Ok(PlannedBackfill {
        job: Some(job),
        tasks: plan.tasks.len(),
        skipped_pending: plan.skipped_pending,
    })
}

/// Plans and runs a backfill in this process. `on_task` hears of every task as it ends.
pub async fn backfill(
    engine: &Engine,
    home: &Path,
    options: &BackfillOptions,
    run: &RunOptions,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<BackfillReport> {
    let started = Instant::now();
    let planned = create_backfill(home, options)?;
    let Some(job) = planned.job else {
        return Ok(BackfillReport {
            job: None,
            state: None,
            tasks: Vec::new(),
            skipped_pending: planned.skipped_pending,
            elapsed: started.elapsed(),
        });
    };
    let (state, outcomes) = run_job(engine, home, &job, run, &Cancel::new(), on_task).await?;
    Ok(BackfillReport {
        job: Some(job),
        state: Some(state),
        tasks: outcomes,
        skipped_pending: planned.skipped_pending,
        elapsed: started.elapsed(),
    })
}

/// Reruns the tasks of `job` that did not succeed, under their original transaction ids, so a
/// task that had in fact committed is not committed again.
pub async fn retry_job(
    engine: &Engine,
    home: &Path,
    job: &JobId,
    run: &RunOptions,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<BackfillReport> {
    let started = Instant::now();
    let mut registry = Registry::open(home)?;
    let info = registry.job(job)?.ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "unknown job {job} in {}",
            registry.home().display()
        ))
    })?;
    materialized_set(&registry, &info.feature_set)?;
    registry.reopen_job(job)?;
    drop(registry);
    let (state, outcomes) = run_job(engine, home, job, run, &Cancel::new(), on_task).await?;
    Ok(BackfillReport {
        job: Some(job.clone()),
        state: Some(state),
        tasks: outcomes,
        skipped_pending: Vec::new(),
        elapsed: started.elapsed(),
    })
}
