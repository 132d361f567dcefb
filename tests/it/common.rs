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
