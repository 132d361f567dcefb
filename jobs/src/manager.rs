//! The job manager: runs durable jobs to their end, in the embedded CLI and in the scheduler.
//!
//! A job is recorded in the registry before anything runs ([`crate::backfill::create_backfill`],
//! [`create_retrieval`]). [`run_job`] then runs its unfinished tasks, a few at a time. A task
//! attempt that fails for a reason that may pass (an engine, IO or storage error, a lost
//! executor) is retried with exponential backoff up to [`RetryPolicy::max_attempts`]; a bad
//! request is not retried. Every attempt is recorded.
//!
//! [`JobManager`] is the long-running form the scheduler serves: it picks queued jobs in
//! submission order, runs at most `max_running_jobs` at once, cancels on request, and on
//! start resumes what a previous process left queued or running. Backfill tasks commit under
//! the transaction id `almanac:<job>:<task>`, so a task that had committed before a crash
//! commits nothing when it runs again: work is done exactly once.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use crate::backfill::{TaskOutcome, materialized_set};
use crate::engine::Engine;
use crate::error::{JobsError, Result};
use crate::offline::{materialize_task, open_or_create, table_url};
use crate::registry::{BACKFILL, JobId, JobInfo, RETRIEVAL, Registry, RunState, SCHEDULED};
use crate::retrieve::request::{FeatureRequest, parse_local};
use crate::retrieve::{RetrieveOptions, retrieve};
use crate::source::TimeRange;
use crate::spec::SourceKind;

/// How failed task attempts are retried.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per task, the first included.
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each later one, up to a minute.
    pub backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            backoff: Duration::from_secs(1),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, failed_attempt: i64) -> Duration {
        let doubling = failed_attempt.clamp(1, 16) as u32 - 1;
        self.backoff
            .saturating_mul(1 << doubling)
            .min(Duration::from_secs(60))
    }
}

/// How a job's tasks are run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Tasks of one job running at once.
    pub parallel_tasks: usize,
    pub retry: RetryPolicy,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            parallel_tasks: 2,
            retry: RetryPolicy::default(),
        }
    }
}

/// A cancellation signal shared by everything working on one job.
#[derive(Debug, Clone)]
pub struct Cancel(Arc<watch::Sender<bool>>);

impl Default for Cancel {
    fn default() -> Self {
        Cancel::new()
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        Cancel(Arc::new(watch::Sender::new(false)))
    }

    pub fn cancel(&self) {
        self.0.send_replace(true);
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.0.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|c| *c).await;
    }
}

/// A retrieval as submitted to a scheduler; kept with the job so it can be run again after a
/// restart. Paths are as the scheduler sees them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RetrievalRequest {
    /// `set:version:feature[=output_name]`.
    pub features: Vec<String>,
    /// `NAME` → spec folder, for `NAME:local` sets.
    pub local: BTreeMap<String, String>,
    pub observations: String,
    /// `parquet` or `csv`; `None`: from the file extension.
    pub observations_format: Option<String>,
    pub timestamp_column: String,
    pub timestamp_format: Option<String>,
    pub output: String,
    pub overwrite: bool,
    pub rows_per_file: u64,
}

impl RetrievalRequest {
    /// The request for `options`, made absolute against the current folder.
    pub fn from_options(options: &RetrieveOptions) -> Result<RetrievalRequest> {
        let absolute = |p: &Path| -> Result<String> {
            std::path::absolute(p)
                .map(|p| p.display().to_string())
                .map_err(|e| JobsError::io("cannot resolve", p, e))
        };
        let observations = if options.observations.contains("://") {
            options.observations.clone()
        } else {
            absolute(Path::new(&options.observations))?
        };
        Ok(RetrievalRequest {
            features: options.requests.iter().map(request_text).collect(),
            local: options
                .local
                .iter()
                .map(|(k, v)| Ok((k.clone(), absolute(v)?)))
                .collect::<Result<_>>()?,
            observations,
            observations_format: options.observations_format.map(|k| match k {
                SourceKind::Csv => "csv".to_string(),
                _ => "parquet".to_string(),
            }),
            timestamp_column: options.timestamp_column.clone(),
            timestamp_format: options.timestamp_format.clone(),
            output: absolute(&options.output)?,
            overwrite: options.overwrite,
            rows_per_file: options.rows_per_file,
        })
    }

    /// The options to run it with against the store at `home`.
    pub fn options(&self, home: &Path) -> Result<RetrieveOptions> {
        let mut requests = Vec::new();
        for f in &self.features {
            requests.push(FeatureRequest::parse(f)?);
        }
        let mut local = BTreeMap::new();
        for (name, dir) in &self.local {
            let (name, dir) = parse_local(&format!("{name}={dir}"))?;
            local.insert(name, dir);
        }
        let observations_format = match self.observations_format.as_deref() {
            None => None,
            Some("parquet") => Some(SourceKind::Parquet),
            Some("csv") => Some(SourceKind::Csv),
            Some(other) => {
                return Err(JobsError::InvalidInput(format!(
                    "observations format '{other}': expected parquet or csv"
                )));
            }
        };
        if self.output.trim().is_empty() {
            return Err(JobsError::InvalidInput(
                "a retrieval needs an output folder".to_string(),
            ));
        }
        if self.observations.trim().is_empty() || self.timestamp_column.trim().is_empty() {
            return Err(JobsError::InvalidInput(
                "a retrieval needs observations and their timestamp column".to_string(),
            ));
        }
        Ok(RetrieveOptions {
            requests,
            local,
            observations: self.observations.clone(),
            observations_format,
            timestamp_column: self.timestamp_column.clone(),
            timestamp_format: self.timestamp_format.clone(),
            output: PathBuf::from(&self.output),
            overwrite: self.overwrite,
            rows_per_file: self.rows_per_file,
            home: Some(home.to_path_buf()),
        })
    }
}

/// A requested feature as written on the command line: `set:version:feature[=name]`.
pub fn request_text(r: &FeatureRequest) -> String {
    match &r.output_name {
        Some(name) => format!("{r}={name}"),
        None => r.to_string(),
    }
}

/// Puts the features of the retrieval spec packaged with registered model `model` first in
/// `request` (batch inference with what the model was trained on).
pub fn add_model_features(home: &Path, model: &str, request: &mut RetrievalRequest) -> Result<()> {
    let r: crate::registry::ModelRef = model.parse()?;
    let registry = Registry::open(home)?;
    let info = registry.model(&r)?.ok_or_else(|| {
        JobsError::InvalidInput(format!(
            "unknown model {r} in {}",
            registry.home().display()
        ))
    })?;
    let spec = crate::spec::FeatureRetrievalSpec::load(&info.dir)?;
    let mut local = BTreeMap::new();
    let requests = crate::retrieve::requests_from_spec(&spec, &mut local)?;
    let mut features: Vec<String> = requests.iter().map(request_text).collect();
    features.append(&mut request.features);
    request.features = features;
    for (name, dir) in local {
        request
            .local
            .entry(name)
            .or_insert_with(|| dir.display().to_string());
    }
    Ok(())
}

/// Checks a retrieval and records it as a queued job. On any error nothing is recorded.
pub fn create_retrieval(home: &Path, request: &RetrievalRequest) -> Result<JobId> {
    if request.features.is_empty() {
        return Err(JobsError::InvalidInput(
            "a retrieval needs at least one feature".to_string(),
        ));
    }
    let options = request.options(home)?;
    crate::retrieve::check(&options)?;
    let json = serde_json::to_string(request)
        .map_err(|e| JobsError::InvalidInput(format!("cannot record the retrieval: {e}")))?;
    let job = Registry::open(home)?.create_retrieval_job(&json)?;
    tracing::info!(job = %job, output = %request.output, "retrieval job created");
    Ok(job)
}

/// Whether an attempt's error may pass on a second try. A bad spec or request will not.
fn retriable(e: &JobsError) -> bool {
    !matches!(
        e,
        JobsError::InvalidInput(_) | JobsError::Spec(_) | JobsError::Transformation { .. }
    )
}

/// The registry shared by a job's concurrent tasks; each use is short and synchronous.
struct SharedRegistry(Mutex<Registry>);

impl SharedRegistry {
    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Runs one task's attempts until one succeeds, the error is final or attempts run out.
/// `None`: cancelled before it ended. Failed attempts that will be retried are recorded here;
/// the final outcome is the caller's to record.
async fn attempts<T, F, Fut>(
    registry: &SharedRegistry,
    job: &JobId,
    index: i64,
    retry: &RetryPolicy,
    cancel: &Cancel,
    mut attempt_fn: F,
) -> Result<Option<(std::result::Result<T, String>, i64)>>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    loop {
        // A cancel may also come from another process, through the registry.
        if cancel.is_cancelled() || registry.lock().cancel_requested(job)? {
            cancel.cancel();
            return Ok(None);
        }
        let attempt = registry.lock().start_task(job, index)?;
        let result = tokio::select! {
            biased;
            _ = cancel.cancelled() => return Ok(None),
            r = attempt_fn(attempt) => r,
        };
        match result {
            Ok(value) => return Ok(Some((Ok(value), attempt))),
            Err(e) if retriable(&e) && attempt < retry.max_attempts as i64 => {
                let delay = retry.delay(attempt);
                tracing::warn!(
                    job = %job, task = index, attempt, retry_in_ms = delay.as_millis() as u64,
                    error = %e, "task attempt failed; retrying"
                );
                registry
                    .lock()
                    .retry_task(job, index, attempt, &e.to_string())?;
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(delay) => {}
                }
            }
            Err(e) => {
                tracing::warn!(job = %job, task = index, attempt, error = %e, "task failed");
                return Ok(Some((Err(e.to_string()), attempt)));
            }
        }
    }
}

/// Runs the unfinished tasks of a recorded job to the end and records how it ended.
pub async fn run_job(
    engine: &Engine,
    home: &Path,
    job: &JobId,
    run: &RunOptions,
    cancel: &Cancel,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<(RunState, Vec<TaskOutcome>)> {
    let registry = Registry::open(home)?;
    let info = registry
        .job(job)?
        .ok_or_else(|| JobsError::InvalidInput(format!("unknown job {job}")))?;
    if info.state.is_final() {
        return Ok((info.state, Vec::new()));
    }
    let registry = SharedRegistry(Mutex::new(registry));
    let outcomes = match info.kind.as_str() {
        BACKFILL | SCHEDULED => {
            run_backfill(engine, &registry, &info, run, cancel, on_task).await?
        }
        RETRIEVAL => run_retrieval(engine, home, &registry, &info, run, cancel, on_task).await?,
        other => {
            return Err(JobsError::InvalidInput(format!(
                "job {job} has unknown kind '{other}'"
            )));
        }
    };
    let mut registry = registry.lock();
    if cancel.is_cancelled() || registry.cancel_requested(job)? {
        registry.finish_cancelled(job)?;
        tracing::info!(job = %job, "job cancelled");
        return Ok((RunState::Cancelled, outcomes));
    }
    let state = registry.finish_job(job)?;
    tracing::info!(job = %job, state = %state, "job ended");
    Ok((state, outcomes))
}

fn unfinished(info: &JobInfo) -> Vec<(i64, TimeRange)> {
    info.tasks
        .iter()
        .filter(|t| !t.state.is_final())
        .map(|t| (t.index, t.window))
        .collect()
}

async fn run_backfill(
    engine: &Engine,
    registry: &SharedRegistry,
    info: &JobInfo,
    run: &RunOptions,
    cancel: &Cancel,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<Vec<TaskOutcome>> {
    let job = &info.id;
    let r = &info.feature_set;
    let (fs, url) = {
        let registry = registry.lock();
        let fs = materialized_set(&registry, r)?;
        (fs, table_url(&registry.offline_root()?, r)?)
    };
    // Created once, before the job's tasks race to create it (a race with another job's
    // creation resolves to one table).
    open_or_create(engine, &url, &fs.spec.spec).await?;
    let outcomes: Vec<Result<Option<TaskOutcome>>> = futures::stream::iter(unfinished(info))
        .map(|(index, window)| {
            let (url, fs) = (&url, &fs);
            async move {
                let began = Instant::now();
                // One transaction id per task, whatever the attempt: a retry of a task that
                // committed finds its id in the log and commits nothing.
                let app_id = format!("almanac:{job}:{index}");
                let ended = attempts(registry, job, index, &run.retry, cancel, |attempt| {
                    let named = engine.named(&format!("almanac/{job}/{index}/{attempt}"));
                    let app_id = app_id.clone();
                    async move {
                        materialize_task(&named, url, &fs.spec, window, &app_id, 1)
                            .await
                            .map(|c| (c.rows, c.version))
                    }
                })
                .await?;
                let Some((result, attempts)) = ended else {
                    return Ok(None);
                };
                registry.lock().finish_task(r, job, index, result.clone())?;
                let outcome = TaskOutcome {
                    index,
                    window,
                    result,
                    attempts,
                    elapsed: began.elapsed(),
                };
                on_task(&outcome);
                Ok(Some(outcome))
            }
        })
        .buffer_unordered(run.parallel_tasks.max(1))
        .collect()
        .await;
    let mut outcomes: Vec<TaskOutcome> = outcomes
        .into_iter()
        .collect::<Result<Vec<_>>>()?
        .into_iter()
        .flatten()
        .collect();
    outcomes.sort_by_key(|o| o.index);
    Ok(outcomes)
}

async fn run_retrieval(
    engine: &Engine,
    home: &Path,
    registry: &SharedRegistry,
    info: &JobInfo,
    run: &RunOptions,
    cancel: &Cancel,
    on_task: &(dyn Fn(&TaskOutcome) + Sync),
) -> Result<Vec<TaskOutcome>> {
    let job = &info.id;
    let request: RetrievalRequest = serde_json::from_str(info.request.as_deref().unwrap_or(""))
        .map_err(|e| {
            JobsError::InvalidInput(format!("job {job} has an unreadable request: {e}"))
        })?;
    let options = request.options(home)?;
    let began = Instant::now();
    let mut outcomes = Vec::new();
    for (index, window) in unfinished(info) {
        let ended = attempts(registry, job, index, &run.retry, cancel, |attempt| {
            let named = engine.named(&format!("almanac/{job}/{index}/{attempt}"));
            let options = &options;
            async move { retrieve(&named, options).await.map(|s| s.rows_out) }
        })
        .await?;
        let Some((result, attempts)) = ended else {
            break;
        };
        registry
            .lock()
            .finish_plain_task(job, index, result.clone())?;
        let outcome = TaskOutcome {
            index,
            window,
            result: result.map(|rows| (rows, None)),
            attempts,
            elapsed: began.elapsed(),
        };
        on_task(&outcome);
        outcomes.push(outcome);
    }
    Ok(outcomes)
}

/// Stops a job's queries on the cluster; the scheduler implements it with Ballista's job list.
#[async_trait::async_trait]
pub trait QueryCanceller: Send + Sync {
    /// Cancels every running query whose name starts with `prefix`.
    async fn cancel_queries(&self, prefix: &str);
}

/// The manager's limits.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    /// Jobs running at once; more wait, queued, in submission order.
    pub max_running_jobs: usize,
    pub run: RunOptions,
    /// How often the queue is looked at when nothing wakes the manager.
    pub poll: Duration,
    /// Run only jobs of this kind (`almanac serve` runs its scheduled jobs, and leaves the
    /// embedded CLI's backfills to the processes that run them).
    pub only_kind: Option<&'static str>,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            max_running_jobs: 4,
            run: RunOptions::default(),
            poll: Duration::from_secs(1),
            only_kind: None,
        }
    }
}

/// Task counters for `/metrics`.
#[derive(Debug, Default)]
pub struct TaskMetrics {
    pub succeeded: AtomicU64,
    pub failed: AtomicU64,
    pub rows_written: AtomicU64,
    /// Cumulative counts of task durations at most [`DURATION_BUCKETS`] seconds, then +Inf.
    pub duration_buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    pub duration_millis_sum: AtomicU64,
}

/// Upper bounds, in seconds, of the task duration histogram.
pub const DURATION_BUCKETS: [f64; 8] = [0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0];

impl TaskMetrics {
    fn record(&self, outcome: &TaskOutcome) {
        match &outcome.result {
            Ok((rows, _)) => {
                self.succeeded.fetch_add(1, Ordering::Relaxed);
                self.rows_written.fetch_add(*rows, Ordering::Relaxed);
            }
            Err(_) => {
                self.failed.fetch_add(1, Ordering::Relaxed);
            }
        }
        let secs = outcome.elapsed.as_secs_f64();
        for (i, bound) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *bound {
                self.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.duration_buckets[DURATION_BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.duration_millis_sum
            .fetch_add(outcome.elapsed.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Runs the jobs of one store: the heart of the scheduler service.
pub struct JobManager {
    engine: Engine,
    home: PathBuf,
    config: ManagerConfig,
    running: Mutex<HashMap<JobId, Cancel>>,
    wake: Notify,
    canceller: Option<Arc<dyn QueryCanceller>>,
    pub metrics: TaskMetrics,
}

impl JobManager {
    pub fn new(
        engine: Engine,
        home: PathBuf,
        config: ManagerConfig,
        canceller: Option<Arc<dyn QueryCanceller>>,
    ) -> JobManager {
        JobManager {
            engine,
            home,
            config,
            running: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            canceller,
            metrics: TaskMetrics::default(),
        }
    }

    pub fn home(&self) -> &Path {
        &self.home
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashMap<JobId, Cancel>> {
        self.running.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Jobs being run by this manager now.
    pub fn running_jobs(&self) -> usize {
        self.running().len()
    }

    /// Tells the manager new work was queued.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Cancels a job: a queued one ends at once; a running one stops its queries and commits
    /// nothing more. Returns its state after the request (running until it has stopped).
    pub async fn cancel(&self, job: &JobId) -> Result<RunState> {
        let state = Registry::open(&self.home)?.request_cancel(job)?;
        let signal = self.running().get(job).cloned();
        if let Some(signal) = signal {
            signal.cancel();
            if let Some(canceller) = &self.canceller {
                canceller.cancel_queries(&format!("almanac/{job}/")).await;
            }
        }
        self.wake();
        Ok(state)
    }

    /// The unfinished jobs this manager runs, oldest first.
    fn queue(&self, registry: &Registry) -> Result<Vec<JobId>> {
        let jobs = registry.unfinished_jobs()?;
        Ok(match self.config.only_kind {
            None => jobs,
            Some(kind) => jobs
                .into_iter()
                .filter(|j| j.as_str().starts_with(&format!("{kind}-")))
                .collect(),
        })
    }

    /// After a restart: attempts that were running are recorded as interrupted and their
    /// tasks queued again; jobs whose cancel was asked for are ended.
    fn recover(&self) -> Result<()> {
        let mut registry = Registry::open(&self.home)?;
        for job in self.queue(&registry)? {
            let requeued = registry.requeue_interrupted(&job)?;
            if registry.cancel_requested(&job)? {
                registry.finish_cancelled(&job)?;
                tracing::info!(job = %job, "cancelled while the scheduler was down");
            } else if requeued > 0 {
                tracing::info!(job = %job, tasks = requeued, "resuming interrupted tasks");
            }
        }
        Ok(())
    }

    /// Runs queued jobs until `shutdown` resolves. Jobs still running then are stopped; their
    /// tasks stay recorded as running and are resumed by the next start.
    pub async fn run(self: Arc<Self>, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.recover()?;
        let mut jobs: JoinSet<JobId> = JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            if let Err(e) = self.fill(&mut jobs) {
                tracing::error!(error = %e, "cannot read the job queue");
            }
            tokio::select! {
                _ = &mut shutdown => break,
                Some(done) = jobs.join_next() => {
                    match done {
                        Ok(job) => {
                            self.running().remove(&job);
                        }
                        Err(e) => tracing::error!(error = %e, "a job runner panicked"),
                    }
                }
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(self.config.poll) => {}
            }
        }
        jobs.shutdown().await;
        Ok(())
    }

    /// Starts queued jobs while there is room.
    fn fill(self: &Arc<Self>, jobs: &mut JoinSet<JobId>) -> Result<()> {
        let free = self
            .config
            .max_running_jobs
            .max(1)
            .saturating_sub(self.running_jobs());
        if free == 0 {
            return Ok(());
        }
        let queued = self.queue(&Registry::open(&self.home)?)?;
        let mut running = self.running();
        let starting: Vec<JobId> = queued
            .into_iter()
            .filter(|j| !running.contains_key(j))
            .take(free)
            .collect();
        for job in starting {
            let cancel = Cancel::new();
            running.insert(job.clone(), cancel.clone());
            let manager = Arc::clone(self);
            jobs.spawn(async move {
                manager.run_one(&job, &cancel).await;
                job
            });
        }
        Ok(())
    }

    async fn run_one(&self, job: &JobId, cancel: &Cancel) {
        tracing::info!(job = %job, "job started");
        let on_task = |t: &TaskOutcome| self.metrics.record(t);
        let result = run_job(
            &self.engine,
            &self.home,
            job,
            &self.config.run,
            cancel,
            &on_task,
        )
        .await;
        if let Err(e) = result {
            tracing::warn!(job = %job, error = %e, "job failed");
            let recorded =
                Registry::open(&self.home).and_then(|mut r| r.fail_job(job, &e.to_string()));
            if let Err(e) = recorded {
                tracing::error!(job = %job, error = %e, "cannot record the job's failure");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_the_first_retry_and_is_capped() {
        let policy = RetryPolicy {
            max_attempts: 10,
            backoff: Duration::from_millis(500),
        };
        let delays: Vec<u64> = (1..=9)
            .map(|a| policy.delay(a).as_millis() as u64)
            .collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
    }

    #[test]
    fn only_errors_that_may_pass_are_retried() {
        assert!(retriable(&JobsError::ExecutorLost("x".into())));
        assert!(!retriable(&JobsError::InvalidInput("x".into())));
    }

    #[test]
    fn a_retrieval_request_keeps_what_the_options_say() {
        let options = RetrieveOptions {
            requests: vec![
                FeatureRequest::parse("transactions:1:transaction_7d_count=n").unwrap(),
                FeatureRequest::parse("accounts:local:accountAge").unwrap(),
            ],
            local: BTreeMap::from([("accounts".to_string(), PathBuf::from("/specs/accounts"))]),
            observations: "s3://bucket/obs/*.parquet".to_string(),
            observations_format: Some(SourceKind::Csv),
            timestamp_column: "timestamp".to_string(),
            timestamp_format: Some("%Y-%m-%d".to_string()),
            output: PathBuf::from("/out/train"),
            overwrite: true,
            rows_per_file: 1000,
            home: None,
        };
        let request = RetrievalRequest::from_options(&options).unwrap();
        let json = serde_json::to_string(&request).unwrap();
        let back: RetrievalRequest = serde_json::from_str(&json).unwrap();
        let again = back.options(Path::new("/store")).unwrap();
        assert_eq!(again.requests, options.requests);
        assert_eq!(again.local, options.local);
        assert_eq!(again.observations, options.observations);
        assert_eq!(again.observations_format, Some(SourceKind::Csv));
        assert_eq!(again.timestamp_format, options.timestamp_format);
        assert_eq!(again.output, options.output);
        assert!(again.overwrite);
        assert_eq!(again.home, Some(PathBuf::from("/store")));
    }

    #[test]
    fn a_malformed_retrieval_request_is_refused() {
        let request = RetrievalRequest {
            features: vec!["transactions:1:n".into()],
            local: BTreeMap::new(),
            observations: "/obs".into(),
            observations_format: Some("json".into()),
            timestamp_column: "t".into(),
            timestamp_format: None,
            output: "/out".into(),
            overwrite: false,
            rows_per_file: 10,
        };
        let e = request
            .options(Path::new("/store"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("'json'"), "{e}");
        let e = create_retrieval(
            Path::new("/nonexistent-store"),
            &RetrievalRequest {
                features: vec![],
                ..request
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("at least one feature"), "{e}");
    }
}
