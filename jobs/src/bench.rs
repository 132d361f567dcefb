//! `almanac bench`: the tutorial's work at a stated scale, measured.
//!
//! - **features**: the transactions set's DSL (3- and 7-day count, sum and average per
//!   account) over the whole period, by Almanac's window operator and by DataFusion window
//!   functions, in the same run: source rows per second.
//! - **backfill**: the set materialized into a fresh offline store, one task per day (or per
//!   `task_days`), as `almanac backfill` does it: rows and files written, rows per second.
//! - **retrieve**: every tutorial feature joined point-in-time onto generated observations:
//!   observation rows per second.
//!
//! Data is generated once per folder and scale (a `bench-data.json` marker records the
//! scale), so repeated runs measure only the work. Peak memory is the process's peak
//! resident set size during each phase: the peak is reset before it (Linux `clear_refs`), so
//! it counts neither the generator nor an earlier phase.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::backfill::{BackfillOptions, backfill};
use crate::compute::{WindowPlan, plan_window_with};
use crate::engine::{Engine, EngineConfig};
use crate::error::{EngineResultExt, JobsError, Result};
use crate::manager::RunOptions;
use crate::materialize::DataStatus;
use crate::registry::Registry;
use crate::retrieve::{RetrieveOptions, parse_feature_list, retrieve};
use crate::sample_data::{SampleDataOptions, generate, write_parquet};
use crate::source::TimeRange;
use crate::spec::write_atomic;
use crate::spec::{EntitySpec, LoadedSpec};

const DAY: i64 = 86_400_000_000;
const MARKER: &str = "bench-data.json";
/// Observation rows per generated file.
const OBSERVATION_FILE_ROWS: usize = 250_000;

/// The tutorial's feature sets, written into the bench folder with paths to its data.
const TRANSACTIONS_SPEC: &str =
    include_str!("../../examples/fraud/featuresets/transactions/spec/FeatureSetSpec.yaml");
const ACCOUNTS_SPEC: &str =
    include_str!("../../examples/fraud/featuresets/accounts/spec/FeaturesetSpec.yaml");
const TRANSACTIONS_ASSET: &str =
    include_str!("../../examples/fraud/featuresets/transactions/featureset_asset.yaml");
const ACCOUNT_ENTITY: &str = include_str!("../../examples/fraud/entities/account.yaml");

/// Every feature of both sets.
const FEATURES: &str = "transactions:local:transaction_3d_count,\
transactions:local:transaction_amount_3d_sum,transactions:local:transaction_amount_3d_avg,\
transactions:local:transaction_7d_count,transactions:local:transaction_amount_7d_sum,\
transactions:local:transaction_amount_7d_avg,accounts:local:accountCountry,\
accounts:local:isUserRegistered,accounts:local:numPaymentRejects1dPerUser,accounts:local:accountAge";

/// The scale of a benchmark's data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BenchScale {
    pub observations: usize,
    pub transactions: usize,
    pub accounts: usize,
    pub days: u32,
    pub seed: u64,
    /// The share of transactions of one account (0: no hot key).
    #[serde(default)]
    pub hot_key_share: f64,
    /// The exponent of Zipf-distributed account activity, if any.
    #[serde(default)]
    pub zipf: Option<f64>,
}

/// Where and how a benchmark ran.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub build: &'static str,
    pub cores: usize,
    pub parallelism: usize,
    pub target_partitions: usize,
    pub memory_limit_bytes: Option<usize>,
}

impl Machine {
    pub fn new(config: &EngineConfig) -> Machine {
        Machine {
            build: if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            },
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            parallelism: config.parallelism,
            target_partitions: config.target_partitions,
            memory_limit_bytes: config.memory_limit,
        }
    }
}

/// Time and memory of one measured phase.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    pub elapsed_s: f64,
    /// Peak resident memory of the process during the phase.
    pub peak_rss_bytes: Option<u64>,
    /// Resident memory when it began.
    pub rss_before_bytes: Option<u64>,
}

/// Runs `work` as a measured phase.
async fn measured<T>(work: impl std::future::Future<Output = Result<T>>) -> Result<(T, Phase)> {
    reset_peak_memory();
    let (_, rss_before) = memory_status();
    let started = Instant::now();
    let value = work.await?;
    let elapsed_s = started.elapsed().as_secs_f64();
    let (peak, _) = memory_status();
    Ok((
        value,
        Phase {
            elapsed_s,
            peak_rss_bytes: peak,
            rss_before_bytes: rss_before,
        },
    ))
}

/// The retrieval phase.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieveBenchReport {
    pub observations: usize,
    pub account_rows: usize,
    pub features: usize,
    pub observation_rows_per_s: f64,
    #[serde(flatten)]
    pub phase: Phase,
    pub matches: Vec<(String, u64)>,
}

/// The feature-computation phase for one plan.
#[derive(Debug, Clone, Serialize)]
pub struct FeaturesBenchReport {
    /// `window_operator` or `window_functions`.
    pub plan: &'static str,
    pub source_rows: usize,
    pub output_rows: usize,
    pub source_rows_per_s: f64,
    #[serde(flatten)]
    pub phase: Phase,
}

/// The backfill phase.
#[derive(Debug, Clone, Serialize)]
pub struct BackfillBenchReport {
    pub tasks: usize,
    /// Days each task materializes; each also reads the set's source lookback before them.
    pub task_days: u32,
    pub rows_written: u64,
    pub files_written: usize,
    pub bytes_written: u64,
    pub rows_per_s: f64,
    #[serde(flatten)]
    pub phase: Phase,
}

/// The whole period of the generated transactions.
fn period(scale: &BenchScale) -> TimeRange {
    let start = SampleDataOptions::default().start;
    TimeRange {
        start,
        end: start + i64::from(scale.days) * DAY,
    }
}

/// Computes the transactions set's features over the whole period with `plan`, counting
/// the rows as they stream out (nothing is kept).
pub async fn run_features(
    engine: &Engine,
    dir: &Path,
    scale: &BenchScale,
    plan: WindowPlan,
) -> Result<FeaturesBenchReport> {
    use futures::StreamExt;
    let loaded = LoadedSpec::load(&dir.join("featuresets/transactions/spec"))?;
    let (output_rows, phase) = measured(async {
        let frame = plan_window_with(engine, &loaded, period(scale), plan).await?;
        let mut stream = frame
            .frame
            .execute_stream()
            .await
            .context(|| "computing the benchmark's features".to_string())?;
        let mut rows = 0;
        while let Some(batch) = stream.next().await {
            rows += batch
                .context(|| "computing the benchmark's features".to_string())?
                .num_rows();
        }
        Ok(rows)
    })
    .await?;
    Ok(FeaturesBenchReport {
        plan: plan_name(plan),
        source_rows: scale.transactions,
        output_rows,
        source_rows_per_s: scale.transactions as f64 / phase.elapsed_s.max(1e-9),
        phase,
    })
}

/// Files and bytes under `dir`, recursively.
fn files_under(dir: &Path, extension: &str) -> (usize, u64) {
    let mut found = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let (n, b) = files_under(&path, extension);
            found = (found.0 + n, found.1 + b);
        } else if path.extension().is_some_and(|e| e == extension) {
            found.0 += 1;
            found.1 += entry.metadata().map(|m| m.len()).unwrap_or(0);
        }
    }
    found
}

/// Backfills the transactions set over the whole period into a new store under `dir`, one
/// task per `task_days` days.
pub async fn run_backfill(
    engine: &Engine,
    dir: &Path,
    scale: &BenchScale,
    task_days: u32,
) -> Result<BackfillBenchReport> {
    if task_days == 0 {
        return Err(JobsError::InvalidInput(
            "the benchmark's task length must be at least 1 day".to_string(),
        ));
    }
    let home = dir.join("store");
    if home.exists() {
        std::fs::remove_dir_all(&home).map_err(|e| JobsError::io("cannot replace", &home, e))?;
    }
    let mut registry = Registry::open(&home)?;
    registry.create_entity(&EntitySpec::load(&dir.join("entities/account.yaml"))?)?;
    let (set, _) =
        registry.create_feature_set(&dir.join("featuresets/transactions/featureset_asset.yaml"))?;
    drop(registry);
    let options = BackfillOptions {
        feature_set: set.clone(),
        window: period(scale),
        statuses: vec![DataStatus::None, DataStatus::Incomplete],
        partition: i64::from(task_days) * DAY,
    };
    let (report, phase) = measured(async {
        backfill(engine, &home, &options, &RunOptions::default(), &|_| {}).await
    })
    .await?;
    if report.failed() > 0 {
        return Err(JobsError::InvalidInput(format!(
            "{} backfill task(s) of the benchmark failed; see `almanac --home {} job show`",
            report.failed(),
            home.display()
        )));
    }
    let table = home.join("offline").join(&set.name).join(&set.version);
    let (files_written, bytes_written) = files_under(&table, "parquet");
    let rows_written = report.rows();
    Ok(BackfillBenchReport {
        tasks: report.tasks.len(),
        task_days,
        rows_written,
        files_written,
        bytes_written,
        rows_per_s: rows_written as f64 / phase.elapsed_s.max(1e-9),
        phase,
    })
}

/// A benchmark run: its scale, where it ran, and the phases it measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub scale: BenchScale,
    pub machine: Machine,
    pub features: Vec<FeaturesBenchReport>,
    /// Window functions' time over the window operator's, when both ran.
    pub window_operator_speedup: Option<f64>,
    pub backfill: Option<BackfillBenchReport>,
    pub retrieve: Option<RetrieveBenchReport>,
}

/// The phases a benchmark run measures.
#[derive(Debug, Clone)]
pub struct BenchPhases {
    /// The feature plans to compute, in order; with both, the report has the speed-up.
    pub features: Vec<WindowPlan>,
    /// Backfill with tasks of this many days.
    pub backfill_task_days: Option<u32>,
    pub retrieve: bool,
}

/// Measures `phases`, one after another, on the data [`prepare`] made for `scale` in `dir`.
pub async fn run(
    engine: &Engine,
    config: &EngineConfig,
    dir: &Path,
    scale: &BenchScale,
    account_rows: usize,
    phases: &BenchPhases,
) -> Result<BenchReport> {
    let mut report = BenchReport {
        scale: scale.clone(),
        machine: Machine::new(config),
        features: Vec::new(),
        window_operator_speedup: None,
        backfill: None,
        retrieve: None,
    };
    for &plan in &phases.features {
        report
            .features
            .push(run_features(engine, dir, scale, plan).await?);
    }
    if let [native, functions] = &report.features[..]
        && native.plan == plan_name(WindowPlan::Native)
        && functions.plan == plan_name(WindowPlan::WindowFunctions)
    {
        report.window_operator_speedup =
            Some(functions.phase.elapsed_s / native.phase.elapsed_s.max(1e-9));
    }
    if let Some(days) = phases.backfill_task_days {
        report.backfill = Some(run_backfill(engine, dir, scale, days).await?);
    }
    if phases.retrieve {
        report.retrieve = Some(run_retrieve(engine, dir, scale, account_rows).await?);
    }
    Ok(report)
}

fn plan_name(plan: WindowPlan) -> &'static str {
    match plan {
        WindowPlan::Native => "window_operator",
        WindowPlan::WindowFunctions => "window_functions",
    }
}

/// Generates the data for `scale` under `dir` unless it is already there. Returns the number
/// of account rows.
pub fn prepare(dir: &Path, scale: &BenchScale) -> Result<usize> {
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Ok((existing, rows)) = serde_json::from_str::<(BenchScale, usize)>(&text)
        && existing == *scale
    {
        tracing::info!(dir = %dir.display(), "reusing benchmark data");
        return Ok(rows);
    }
    let _ = std::fs::remove_file(&marker);
    tracing::info!(
        transactions = scale.transactions,
        "generating benchmark data"
    );
    let options = SampleDataOptions {
        accounts: scale.accounts,
        transactions: scale.transactions,
        days: scale.days,
        seed: scale.seed,
        // One snapshot per account, as the stated scale has it.
        account_snapshot_days: scale.days + 7,
        hot_key_share: scale.hot_key_share,
        zipf: scale.zipf,
        ..SampleDataOptions::default()
    };
    let summary = generate(&dir.join("data"), &options, true)?;
    write_observations(&dir.join("observations"), scale, options.start)?;
    for (path, text) in [
        (
            "featuresets/transactions/spec/FeatureSetSpec.yaml",
            TRANSACTIONS_SPEC,
        ),
        (
            "featuresets/accounts/spec/FeaturesetSpec.yaml",
            ACCOUNTS_SPEC,
        ),
        (
            "featuresets/transactions/featureset_asset.yaml",
            TRANSACTIONS_ASSET,
        ),
        ("entities/account.yaml", ACCOUNT_ENTITY),
    ] {
        write_atomic(&dir.join(path), text.as_bytes())?;
    }
    let text = serde_json::to_string(&(scale, summary.account_snapshots))
        .map_err(|e| JobsError::InvalidInput(format!("cannot record the benchmark scale: {e}")))?;
    write_atomic(&marker, text.as_bytes())?;
    Ok(summary.account_snapshots)
}

/// Observation rows for random accounts at random times after the first week.
fn write_observations(dir: &Path, scale: &BenchScale, start: i64) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| JobsError::io("cannot replace", dir, e))?;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(scale.seed ^ 0x0b5e_4a71_0000_0001);
    let schema = Arc::new(Schema::new(vec![
        Field::new("observationID", DataType::Int64, false),
        Field::new("accountID", DataType::Utf8, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
        Field::new("is_fraud", DataType::Int64, false),
    ]));
    let from = start + 7 * DAY;
    let to = start + i64::from(scale.days) * DAY;
    let mut first = 0;
    let mut file = 0;
    while first < scale.observations {
        let n = OBSERVATION_FILE_ROWS.min(scale.observations - first);
        let ids = Int64Array::from_iter_values((first..first + n).map(|i| i as i64));
        let accounts = StringArray::from_iter_values(
            (0..n).map(|_| format!("A{:07}", 1_000_000 + rng.random_range(0..scale.accounts))),
        );
        let times =
            TimestampMicrosecondArray::from_iter_values((0..n).map(|_| rng.random_range(from..to)));
        let labels = Int64Array::from_iter_values((0..n).map(|_| i64::from(rng.random_bool(0.02))));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(ids),
                Arc::new(accounts),
                Arc::new(times),
                Arc::new(labels),
            ],
        )
        .map_err(|e| {
            JobsError::InvalidInput(format!("internal error building observations: {e}"))
        })?;
        write_parquet(&dir.join(format!("part-{file:05}.parquet")), &batch)?;
        first += n;
        file += 1;
    }
    Ok(())
}

/// `(VmHWM, VmRSS)` of this process in bytes, where the OS reports them.
fn memory_status() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Returns freed heap to the OS and restarts the peak-RSS count from the current size.
fn reset_peak_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory held by the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// Runs the retrieval of every tutorial feature onto the benchmark observations.
pub async fn run_retrieve(
    engine: &Engine,
    dir: &Path,
    scale: &BenchScale,
    account_rows: usize,
) -> Result<RetrieveBenchReport> {
    let requests = parse_feature_list(FEATURES)?;
    let features = requests.len();
    let spec = |name: &str| -> PathBuf { dir.join("featuresets").join(name).join("spec") };
    let options = RetrieveOptions {
        requests,
        local: [
            ("transactions".to_string(), spec("transactions")),
            ("accounts".to_string(), spec("accounts")),
        ]
        .into_iter()
        .collect(),
        observations: dir.join("observations").display().to_string(),
        observations_format: None,
        timestamp_column: "timestamp".to_string(),
        timestamp_format: None,
        output: dir.join("output"),
        overwrite: true,
        rows_per_file: crate::retrieve::DEFAULT_ROWS_PER_FILE,
        home: None,
    };
    let (summary, phase) = measured(retrieve(engine, &options)).await?;
    Ok(RetrieveBenchReport {
        observations: scale.observations,
        account_rows,
        features,
        observation_rows_per_s: summary.rows_in as f64 / phase.elapsed_s.max(1e-9),
        phase,
        matches: summary.matches,
    })
}
