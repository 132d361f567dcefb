//! The offline store: windows materialized into Delta Lake, read back by delta-rs' own reader.

use std::path::{Path, PathBuf};

use almanac_jobs::compute::sample;
use almanac_jobs::offline::{CREATE_TIMESTAMP, DAY, materialize_task, table_url};
use almanac_jobs::registry::FeatureSetRef;
use almanac_jobs::sample_data::{SampleDataOptions, generate};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::LoadedSpec;
use almanac_tests::fixtures::{DAY as DAY_US, t};
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::util::display::array_value_to_string;
use datafusion::prelude::SessionContext;

use crate::common::engine;

pub(crate) fn example_transactions(root: &Path) -> PathBuf {
    let options = SampleDataOptions {
        accounts: 40,
        transactions: 3_000,
        days: 20,
        ..SampleDataOptions::default()
    };
    generate(&root.join("data"), &options, false).unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/fraud/featuresets/transactions/spec/FeatureSetSpec.yaml");
    let dir = root.join("featuresets/transactions/spec");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(from, dir.join("FeatureSetSpec.yaml")).unwrap();
    dir
}

/// Rows as text over the spec's columns, sorted: comparable whatever the file layout.
fn rows(batches: &[RecordBatch], columns: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for b in batches {
        for r in 0..b.num_rows() {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| array_value_to_string(b.column_by_name(c).unwrap(), r).unwrap())
                .collect();
            out.push(cells.join("|"));
        }
    }
    out.sort();
    out
}

/// Rows equal cell by cell, numbers to a relative 1e-9.
fn assert_close(got: &[String], expected: &[String]) {
    assert_eq!(got.len(), expected.len(), "row counts differ");
    for (g, e) in got.iter().zip(expected) {
        for (a, b) in g.split('|').zip(e.split('|')) {
            let same = a == b
                || matches!((a.parse::<f64>(), b.parse::<f64>()), (Ok(x), Ok(y))
                    if (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0));
            assert!(same, "rows differ:\n{g}\n{e}");
        }
    }
}

/// Reads a table with the `deltalake` Python package (installed by `.ci/run`): the rows as
/// text, in the same form as [`rows`].
fn python_delta_rows(url: &url::Url, columns: &[String]) -> Vec<String> {
    let script = r#"
import os, sys
from deltalake import DeltaTable
table = DeltaTable(sys.argv[1]).to_pyarrow_table()
columns = sys.argv[2].split(",")
data = table.to_pydict()
for i in range(table.num_rows):
    cells = []
    for c in columns:
        v = data[c][i]
        cells.append(v.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(v, "strftime") else str(v))
    print("|".join(cells))
sys.stdout.flush()
os._exit(0)  # the package's runtime can abort while tearing down
"#;
    let path = url.to_file_path().unwrap();
    let out = std::process::Command::new("python3")
        .args(["-c", script, path.to_str().unwrap(), &columns.join(",")])
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the Python Delta reader failed (install it with `pip install deltalake pyarrow`, as \
         .ci/run does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut rows: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    rows.sort();
    rows
}

/// Reads a table with delta-rs' DataFusion provider on a plain DataFusion session: nothing of
/// Almanac's reading code is involved.
async fn read_delta(url: &url::Url) -> (Vec<RecordBatch>, u64) {
    let table = deltalake::open_table(url.clone()).await.unwrap();
    let version = table.version().unwrap() as u64;
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT * FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    (batches, version)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_materialized_whole_by_day_or_in_parts_read_back_as_computed_and_commit_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let spec_dir = example_transactions(root);
    let loaded = LoadedSpec::load(&spec_dir).unwrap();
    let engine = engine(2).await;
    let r = FeatureSetRef::new("transactions", "1");
    let start = t("2023-01-08");
    let window = TimeRange {
        start,
        end: start + 3 * DAY_US,
    };
    let mut columns: Vec<String> = loaded
        .spec
        .index_names()
        .iter()
        .map(|s| s.to_string())
        .collect();
    columns.push("timestamp".into());
    columns.extend(loaded.spec.features.iter().map(|f| f.name.clone()));

    // One task over the window, and one task per day into another store.
    let dir_url = |name: &str| url::Url::from_directory_path(root.join(name)).unwrap();
    let whole = table_url(&dir_url("whole"), &r).unwrap();
    let commit = materialize_task(&engine, &whole, &loaded, window, "job-1:0", 1)
        .await
        .unwrap();
    assert!(commit.rows > 0 && commit.version == Some(1), "{commit:?}");
    let by_day = table_url(&dir_url("by_day"), &r).unwrap();
    for d in 0..3 {
        let day = TimeRange {
            start: start + d * DAY_US,
            end: start + (d + 1) * DAY_US,
        };
        materialize_task(&engine, &by_day, &loaded, day, &format!("job-2:{d}"), 1)
            .await
            .unwrap();
    }
    let computed = sample(&engine, &loaded, window, None).await.unwrap();
    let expected = rows(&computed, &columns);
    assert_eq!(expected.len() as u64, commit.rows);
    let (whole_rows, v1) = read_delta(&whole).await;
    let (day_rows, _) = read_delta(&by_day).await;
    assert_eq!(rows(&whole_rows, &columns), expected);
    // Computed over other source ranges, window sums may add in another order: equal up to
    // rounding.
    assert_close(&rows(&day_rows, &columns), &expected);
    let schema = whole_rows[0].schema();
    assert!(
        schema.field_with_name(CREATE_TIMESTAMP).is_ok() && schema.field_with_name(DAY).is_ok()
    );

    // A reader outside this process, built separately (delta-rs' Python release), agrees.
    assert_close(&python_delta_rows(&whole, &columns), &expected);

    // Rerunning a day replaces it: same rows, a new version.
    let middle = TimeRange {
        start: start + DAY_US,
        end: start + 2 * DAY_US,
    };
    let rerun = materialize_task(&engine, &whole, &loaded, middle, "job-3:0", 1)
        .await
        .unwrap();
    assert!(rerun.replaced >= 1, "{rerun:?}");
    let (after, v2) = read_delta(&whole).await;
    assert_eq!(v2, v1 + 1);
    // No duplicates after a rerun.
    assert_close(&rows(&after, &columns), &expected);

    // A retry of a committed task commits nothing.
    let retry = materialize_task(&engine, &whole, &loaded, middle, "job-3:0", 1)
        .await
        .unwrap();
    assert_eq!(retry.version, None);
    assert_eq!(read_delta(&whole).await.1, v2);

    // Disjoint windows committed at the same time both land.
    let day = |d: i64| TimeRange {
        start: start + d * DAY_US,
        end: start + (d + 1) * DAY_US,
    };
    let (a, b) = tokio::join!(
        materialize_task(&engine, &by_day, &loaded, day(0), "job-5:0", 1),
        materialize_task(&engine, &by_day, &loaded, day(2), "job-6:0", 1),
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.version, b.version);
    assert_close(&rows(&read_delta(&by_day).await.0, &columns), &expected);

    // A window of parts of days (01:00 on day 0 to 02:00 on day 1) replaces exactly itself:
    // the rest of both days is written again as it was, and only the window's rows count.
    let part = TimeRange {
        start: start + 3_600_000_000,
        end: start + DAY_US + 2 * 3_600_000_000,
    };
    let in_part: usize = sample(&engine, &loaded, part, None)
        .await
        .unwrap()
        .iter()
        .map(|b| b.num_rows())
        .sum();
    assert!(in_part > 0);
    let partial = materialize_task(&engine, &whole, &loaded, part, "job-4:0", 1)
        .await
        .unwrap();
    assert!(partial.replaced >= 2, "{partial:?}");
    assert_eq!(partial.rows as usize, in_part, "{partial:?}");
    assert_close(&rows(&read_delta(&whole).await.0, &columns), &expected);
    // An empty window is refused.
    let error = materialize_task(
        &engine,
        &whole,
        &loaded,
        TimeRange {
            start: part.end,
            end: part.end,
        },
        "job-7:0",
        1,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(error.contains("must not be empty"), "{error}");
}
