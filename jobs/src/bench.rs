//! `almanac bench retrieve`: point-in-time retrieval at a stated scale, measured.
//!
//! Data is generated once per folder and scale (a `bench-data.json` marker records the
//! scale), so repeated runs measure only the retrieval. Peak memory is the process's peak
//! resident set size during the retrieval: the peak is reset after data generation (Linux
//! `clear_refs`), so it does not count the generator.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::engine::{Engine, EngineConfig};
use crate::error::{JobsError, Result};
use crate::retrieve::{RetrieveOptions, parse_feature_list, retrieve};
use crate::sample_data::{SampleDataOptions, generate, write_parquet};
use crate::spec::write_atomic;

const DAY: i64 = 86_400_000_000;
const MARKER: &str = "bench-data.json";
/// Observation rows per generated file.
const OBSERVATION_FILE_ROWS: usize = 250_000;

/// The tutorial's feature sets, written into the bench folder with paths to its data.
const TRANSACTIONS_SPEC: &str =
    include_str!("../../examples/fraud/featuresets/transactions/spec/FeatureSetSpec.yaml");
const ACCOUNTS_SPEC: &str =
    include_str!("../../examples/fraud/featuresets/accounts/spec/FeaturesetSpec.yaml");

/// Every feature of both sets.
const FEATURES: &str = "transactions:local:transaction_3d_count,\
transactions:local:transaction_amount_3d_sum,transactions:local:transaction_amount_3d_avg,\
transactions:local:transaction_7d_count,transactions:local:transaction_amount_7d_sum,\
transactions:local:transaction_amount_7d_avg,accounts:local:accountCountry,\
accounts:local:isUserRegistered,accounts:local:numPaymentRejects1dPerUser,accounts:local:accountAge";

/// The scale of a retrieval benchmark.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrieveBenchScale {
    pub observations: usize,
    pub transactions: usize,
    pub accounts: usize,
    pub days: u32,
    pub seed: u64,
}

/// What one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct RetrieveBenchReport {
    pub scale: RetrieveBenchScale,
    pub account_rows: usize,
    pub features: usize,
    pub elapsed_s: f64,
    pub observation_rows_per_s: f64,
    pub peak_rss_bytes: Option<u64>,
    pub rss_before_bytes: Option<u64>,
    pub memory_limit_bytes: Option<usize>,
    pub parallelism: usize,
    pub target_partitions: usize,
    pub build: &'static str,
    pub cores: usize,
    pub matches: Vec<(String, u64)>,
}

/// Generates the data for `scale` under `dir` unless it is already there. Returns the number
/// of account rows.
pub fn prepare(dir: &Path, scale: &RetrieveBenchScale) -> Result<usize> {
    let marker = dir.join(MARKER);
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Ok((existing, rows)) = serde_json::from_str::<(RetrieveBenchScale, usize)>(&text)
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
        ..SampleDataOptions::default()
    };
    let summary = generate(&dir.join("data"), &options, true)?;
    write_observations(&dir.join("observations"), scale, options.start)?;
    for (name, file, text) in [
        ("transactions", "FeatureSetSpec.yaml", TRANSACTIONS_SPEC),
        ("accounts", "FeaturesetSpec.yaml", ACCOUNTS_SPEC),
    ] {
        write_atomic(
            &dir.join("featuresets").join(name).join("spec").join(file),
            text.as_bytes(),
        )?;
    }
    let text = serde_json::to_string(&(scale, summary.account_snapshots))
        .map_err(|e| JobsError::InvalidInput(format!("cannot record the benchmark scale: {e}")))?;
    write_atomic(&marker, text.as_bytes())?;
    Ok(summary.account_snapshots)
}

/// Observation rows for random accounts at random times after the first week.
fn write_observations(dir: &Path, scale: &RetrieveBenchScale, start: i64) -> Result<()> {
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
pub async fn run(
    engine: &Engine,
    config: &EngineConfig,
    dir: &Path,
    scale: &RetrieveBenchScale,
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
    reset_peak_memory();
    let (_, rss_before) = memory_status();
    let started = Instant::now();
    let summary = retrieve(engine, &options).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (peak, _) = memory_status();
    Ok(RetrieveBenchReport {
        scale: scale.clone(),
        account_rows,
        features,
        elapsed_s: elapsed,
        observation_rows_per_s: summary.rows_in as f64 / elapsed.max(1e-9),
        peak_rss_bytes: peak,
        rss_before_bytes: rss_before,
        memory_limit_bytes: config.memory_limit,
        parallelism: config.parallelism,
        target_partitions: config.target_partitions,
        build: if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
        cores: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        matches: summary.matches,
    })
}
