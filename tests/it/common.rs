//! Shared helpers: engines, spec folders, running windows.

use std::path::{Path, PathBuf};

use almanac_jobs::compute::sample;
use almanac_jobs::engine::{Engine, EngineConfig};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::LoadedSpec;
use datafusion::arrow::array::RecordBatch;

/// An embedded Ballista engine with `partitions` slots and partitions.
pub async fn engine(partitions: usize) -> Engine {
    Engine::embedded(EngineConfig {
        parallelism: partitions,
        target_partitions: partitions,
        memory_limit: None,
    })
    .await
    .expect("embedded engine starts")
}

/// Writes `FeatureSetSpec.yaml` into `dir` and returns `dir`.
pub fn write_spec(dir: &Path, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join("FeatureSetSpec.yaml"), yaml).unwrap();
    dir.to_path_buf()
}

/// A DSL spec over `source_path` (parquet) with string index columns `keys`, a `timestamp`
/// column and window aggregations `(feature, aggregation, window in minutes)` of `amount`.
pub fn dsl_spec(
    source_path: &str,
    keys: &[&str],
    aggs: &[(&str, &str, u64)],
    lookback_minutes: u64,
) -> String {
    let mut y = format!(
        "source:\n  type: parquet\n  path: {source_path}\n  timestamp_column:\n    name: timestamp\n\
         source_lookback:\n  minutes: {lookback_minutes}\nindex_columns:\n"
    );
    for k in keys {
        y.push_str(&format!("  - name: {k}\n    type: string\n"));
    }
    y.push_str("features:\n");
    for (name, agg, _) in aggs {
        let ty = if *agg == "count" { "long" } else { "double" };
        y.push_str(&format!("  - name: {name}\n    type: {ty}\n"));
    }
    y.push_str("feature_transformation:\n  transformation_expressions:\n");
    for (name, agg, minutes) in aggs {
        y.push_str(&format!("    - feature_name: {name}\n      aggregation: {agg}\n      window:\n        minutes: {minutes}\n"));
        if *agg != "count" {
            y.push_str("      source_column: amount\n");
        }
    }
    y
}

/// Computes a spec's feature window, all rows.
pub async fn run_window(
    engine: &Engine,
    dir: &Path,
    start: i64,
    end: i64,
) -> almanac_jobs::Result<Vec<RecordBatch>> {
    let loaded = LoadedSpec::load(dir)?;
    sample(engine, &loaded, TimeRange { start, end }, None).await
}

/// How tests run backfills: two tasks at once, and a failed task is not retried (the tests of
/// retries set their own policy).
pub fn run_options() -> almanac_jobs::manager::RunOptions {
    almanac_jobs::manager::RunOptions {
        parallel_tasks: 2,
        retry: almanac_jobs::manager::RetryPolicy {
            max_attempts: 1,
            backoff: std::time::Duration::from_millis(100),
        },
    }
}

/// What a run of the CLI printed.
pub struct Output {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `almanac ARGS` through the CLI library: argument parsing, the command and its output,
/// everything the binary does but logging setup. (A separate package's binary is not built by
/// `cargo test`.) Relative paths resolve against the current folder.
pub fn run_cli(args: &[&str]) -> Output {
    use clap::Parser;
    let cli = match almanac_cli::Cli::try_parse_from(
        std::iter::once("almanac").chain(args.iter().copied()),
    ) {
        Ok(cli) => cli,
        Err(e) => {
            return Output {
                success: false,
                stdout: String::new(),
                stderr: e.to_string(),
            };
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut stdout = Vec::new();
    let result = runtime.block_on(almanac_cli::run(cli, &mut stdout));
    drop(runtime);
    Output {
        success: result.is_ok(),
        stdout: String::from_utf8(stdout).unwrap(),
        stderr: result
            .err()
            .map(|e| format!("error: {e}"))
            .unwrap_or_default(),
    }
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.success,
        "almanac failed:\nstdout: {}\nstderr: {}",
        out.stdout, out.stderr
    );
    out.stdout.clone()
}

pub fn failed(out: &Output) -> String {
    assert!(!out.success, "almanac should have failed:\n{}", out.stdout);
    out.stderr.clone()
}
