//! Backfill jobs: materialize a window of a registered feature set into its offline store.
//!
//! The window is planned against the feature set's data intervals (only the statuses asked
//! for, never Pending ones), split into whole-day tasks, recorded as a job whose tasks' windows
//! become Pending, and run several at a time on the engine. Each task commits its window once
//! (see [`crate::offline`]) and then marks it Complete, or Incomplete if it failed. A failed job
//! is retried by running the backfill again over Incomplete windows, or with [`retry_job`],
//! which reruns exactly the job's unfinished tasks under their original transaction ids.

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::engine::Engine;
use crate::error::{JobsError, Result};
use crate::materialize::{DataStatus, plan_backfill};
use crate::offline::{materialize_task, open_or_create, table_url};
use crate::registry::{FeatureSetRef, JobId, RegisteredFeatureSet, Registry, RunState};
use crate::source::TimeRange;

const DAY: i64 = 86_400_000_000;

#[derive(Debug, Clone)]
pub struct BackfillOptions {
    pub feature_set: FeatureSetRef,
    pub window: TimeRange,
    /// Data statuses to (re)materialize.
    pub statuses: Vec<DataStatus>,
    /// Task length in microseconds: whole days.
    pub partition: i64,
    /// Tasks running at once.
    pub parallel_tasks: usize,
}

/// How one task ended.
#[derive(Debug, Clone)]
pub struct TaskOutcome {
    pub index: i64,
    pub window: TimeRange,
    pub result: std::result::Result<(u64, Option<u64>), String>,
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

fn materialized_set(registry: &Registry, r: &FeatureSetRef) -> Result<RegisteredFeatureSet> {
    let fs = registry.require_feature_set(r)?;
    if !fs.offline_enabled {
        return Err(JobsError::InvalidInput(format!(
            "feature set {r} has offline materialization off, so there is nothing to backfill; \
             register a new version whose asset sets materialization_settings.offline_enabled: true"
        )));
    }
    Ok(fs)
}

/// Plans and runs a backfill. `on_task` hears of every task as it ends.
pub async fn backfill(
    engine: &Engine,
    home: &Path,
    options: &BackfillOptions,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<BackfillReport> {
    let started = Instant::now();
    let r = &options.feature_set;
    let mut registry = Registry::open(home)?;
    let fs = materialized_set(&registry, r)?;
    if options.partition < DAY || options.partition % DAY != 0 {
        return Err(JobsError::InvalidInput(
            "the offline store is partitioned by day: --partition must be whole days (1d, 2d, ...)"
                .to_string(),
        ));
    }
    let plan = plan_backfill(
        &registry.timeline(r)?,
        options.window,
        &options.statuses,
        options.partition,
    )?;
    if plan.tasks.is_empty() {
        return Ok(BackfillReport {
            job: None,
            state: None,
            tasks: Vec::new(),
            skipped_pending: plan.skipped_pending,
            elapsed: started.elapsed(),
        });
    }
    let job = registry.create_backfill_job(r, options.window, &plan.tasks)?;
    tracing::info!(job = %job, feature_set = %r, tasks = plan.tasks.len(), "backfill job created");
    let tasks: Vec<(i64, TimeRange)> = plan
        .tasks
        .iter()
        .enumerate()
        .map(|(i, t)| (i as i64, *t))
        .collect();
    let (state, outcomes) = run_tasks(
        engine,
        registry,
        &fs,
        &job,
        tasks,
        options.parallel_tasks,
        on_task,
    )
    .await?;
    Ok(BackfillReport {
        job: Some(job),
        state: Some(state),
        tasks: outcomes,
        skipped_pending: plan.skipped_pending,
        elapsed: started.elapsed(),
    })
}

/// Reruns the tasks of `job` that did not succeed, under their original transaction ids, so a
/// task that had in fact committed is not committed again.
pub async fn retry_job(
    engine: &Engine,
    home: &Path,
    job: &JobId,
    parallel_tasks: usize,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<BackfillReport> {
    let started = Instant::now();
    let registry = Registry::open(home)?;
    let info = registry.job(job)?.ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "unknown job {job} in {}",
            registry.home().display()
        ))
    })?;
    let fs = materialized_set(&registry, &info.feature_set)?;
    let tasks: Vec<(i64, TimeRange)> = info
        .tasks
        .iter()
        .filter(|t| t.state != RunState::Succeeded)
        .map(|t| (t.index, t.window))
        .collect();
    if tasks.is_empty() {
        return Err(JobsError::InvalidInput(format!(
            "job {job} has no unfinished task to retry"
        )));
    }
    let (state, outcomes) =
        run_tasks(engine, registry, &fs, job, tasks, parallel_tasks, on_task).await?;
    Ok(BackfillReport {
        job: Some(job.clone()),
        state: Some(state),
        tasks: outcomes,
        skipped_pending: Vec::new(),
        elapsed: started.elapsed(),
    })
}

#[allow(clippy::too_many_arguments)]
async fn run_tasks(
    engine: &Engine,
    registry: Registry,
    fs: &RegisteredFeatureSet,
    job: &JobId,
    tasks: Vec<(i64, TimeRange)>,
    parallel_tasks: usize,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<(RunState, Vec<TaskOutcome>)> {
    let r = &fs.reference;
    let url = table_url(&registry.offline_root()?, r)?;
    // Created once, before tasks race to create it.
    open_or_create(engine, &url, &fs.spec.spec).await?;
    let registry = Mutex::new(registry);
    let lock = || registry.lock().unwrap_or_else(|e| e.into_inner());
    let outcomes: Vec<Result<TaskOutcome>> = futures::stream::iter(tasks)
        .map(|(index, window)| {
            let url = &url;
            let registry = &lock;
            async move {
                let attempt = registry().start_task(job, index)?;
                let began = Instant::now();
                // One transaction id per task, whatever the attempt: a retry of a task that
                // committed finds its id in the log and commits nothing.
                let app_id = format!("almanac:{job}:{index}");
                let result = materialize_task(engine, url, &fs.spec, window, &app_id, 1)
                    .await
                    .map(|c| (c.rows, c.version))
                    .map_err(|e| e.to_string());
                if let Err(e) = &result {
                    tracing::warn!(job = %job, task = index, attempt, error = %e, "backfill task failed");
                }
                registry().finish_task(r, job, index, result.clone())?;
                let outcome = TaskOutcome {
                    index,
                    window,
                    result,
                    elapsed: began.elapsed(),
                };
                on_task(&outcome);
                Ok(outcome)
            }
        })
        .buffer_unordered(parallel_tasks.max(1))
        .collect()
        .await;
    let mut outcomes = outcomes.into_iter().collect::<Result<Vec<_>>>()?;
    outcomes.sort_by_key(|o| o.index);
    let state = lock().finish_job(job)?;
    Ok((state, outcomes))
}
