//! Window aggregation against hand-computed cases and the oracle (DESIGN.md §4).

use std::sync::Arc;

use almanac_jobs::compute::{WindowPlan, plan_window_with};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::LoadedSpec;
use almanac_tests::fixtures::{DAY, HOUR, MINUTE, result_map, rows_batch, t, write_parquet};
use almanac_tests::oracle::{Agg, SourceRow, assert_same, window_features};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{SortColumn, concat_batches, lexsort_to_indices, take};
use datafusion::arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::{dsl_spec, engine, run_window, write_spec};

fn row(key: &str, ts: i64, value: Option<f64>) -> SourceRow {
    SourceRow {
        keys: vec![Some(key.to_string())],
        ts,
        value,
    }
}

fn feature(
    map: &std::collections::BTreeMap<almanac_tests::oracle::RowKey, Vec<Option<f64>>>,
    key: &str,
    ts: i64,
) -> Vec<Option<f64>> {
    map.get(&(vec![Some(key.to_string())], ts))
        .unwrap_or_else(|| panic!("no row for {key} at {ts}"))
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tutorial_worked_example() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = vec![
        row("user1", t("2022-12-10T06:00:00Z"), Some(12.0)),
        row("user1", t("2022-12-11T01:00:00Z"), Some(10.0)),
        row("user2", t("2022-12-10T03:00:00Z"), Some(56.0)),
        row("user2", t("2022-12-11T20:00:00Z"), Some(10.0)),
        row("user2", t("2022-12-12T02:00:00Z"), Some(100.0)),
    ];
    write_parquet(
        &tmp.path().join("data/part-0.parquet"),
        &rows_batch(&["user"], &rows),
    );
    let spec = dsl_spec(
        "../data",
        &["user"],
        &[("sum_1d", "sum", 24 * 60), ("sum_3d", "sum", 3 * 24 * 60)],
        3 * 24 * 60,
    );
    let dir = write_spec(&tmp.path().join("spec"), &spec);
    let engine = engine(2).await;
    let out = run_window(&engine, &dir, t("2022-12-01"), t("2023-01-01"))
        .await
        .unwrap();
    let m = result_map(&out, &["user"], "timestamp");
    assert_eq!(m.len(), 5);
    assert_eq!(
        feature(&m, "user1", t("2022-12-10T06:00:00Z")),
        vec![Some(12.0), Some(12.0)]
    );
    assert_eq!(
        feature(&m, "user1", t("2022-12-11T01:00:00Z")),
        vec![Some(22.0), Some(22.0)]
    );
    assert_eq!(
        feature(&m, "user2", t("2022-12-10T03:00:00Z"))[1],
        Some(56.0)
    );
    assert_eq!(
        feature(&m, "user2", t("2022-12-11T20:00:00Z"))[1],
        Some(66.0)
    );
    assert_eq!(
        feature(&m, "user2", t("2022-12-12T02:00:00Z"))[1],
        Some(166.0)
    );
    // 12-12 02:00 minus one day is 12-11 02:00: the 12-11 20:00 row is in, 12-10 03:00 is not.
    assert_eq!(
        feature(&m, "user2", t("2022-12-12T02:00:00Z"))[0],
        Some(110.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn window_edges_are_included_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let base = t("2023-03-10T12:00:00Z");
    let rows = vec![
        row("a", base - 60 * MINUTE - 1, Some(1.0)), // one microsecond too old
        row("a", base - 60 * MINUTE, Some(2.0)),     // exactly t − window: counts
        row("a", base - 30 * MINUTE, Some(4.0)),
        row("a", base, Some(8.0)),
        row("a", base, Some(16.0)), // same timestamp: both count
    ];
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &rows),
    );
    let spec = dsl_spec(
        "../data/x.parquet",
        &["k"],
        &[
            ("s", "sum", 60),
            ("c", "count", 60),
            ("mn", "min", 60),
            ("mx", "max", 60),
            ("l", "latest", 60),
            ("a", "avg", 60),
        ],
        120,
    );
    let dir = write_spec(&tmp.path().join("spec"), &spec);
    let engine = engine(2).await;
    let out = run_window(&engine, &dir, base, base + 1).await.unwrap();
    let m = result_map(&out, &["k"], "timestamp");
    assert_eq!(m.len(), 1, "one row per (key, timestamp)");
    assert_eq!(
        feature(&m, "a", base),
        vec![
            Some(30.0),
            Some(4.0),
            Some(2.0),
            Some(16.0),
            Some(16.0),
            Some(7.5)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feature_window_keeps_start_drops_end_and_reads_lookback() {
    let tmp = tempfile::tempdir().unwrap();
    let start = t("2023-01-10");
    let end = t("2023-01-11");
    let rows = vec![
        row("a", start - DAY, Some(100.0)), // lookback only: feeds the sum, not output
        row("a", start - 1, Some(1.0)),
        row("a", start, Some(2.0)),              // at start: output
        row("a", end - 1, Some(4.0)),            // last microsecond: output
        row("a", end, Some(8.0)),                // at end: not output, and not read
        row("a", start - 3 * DAY, Some(1000.0)), // older than the lookback: never read
    ];
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &rows),
    );
    let spec = dsl_spec(
        "../data/x.parquet",
        &["k"],
        &[("s", "sum", 2 * 24 * 60), ("c", "count", 2 * 24 * 60)],
        2 * 24 * 60,
    );
    let dir = write_spec(&tmp.path().join("spec"), &spec);
    let engine = engine(2).await;
    let out = run_window(&engine, &dir, start, end).await.unwrap();
    let m = result_map(&out, &["k"], "timestamp");
    let keys: Vec<i64> = m.keys().map(|(_, ts)| *ts).collect();
    assert_eq!(keys, vec![start, end - 1]);
    assert_eq!(feature(&m, "a", start), vec![Some(103.0), Some(3.0)]);
    assert_eq!(feature(&m, "a", end - 1), vec![Some(107.0), Some(4.0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nulls_are_ignored_except_by_count_and_null_keys_group_together() {
    let tmp = tempfile::tempdir().unwrap();
    let base = t("2023-05-01T00:00:00Z");
    let rows = vec![
        row("a", base, None),
        row("a", base + MINUTE, Some(5.0)),
        row("a", base + 2 * MINUTE, None),
        row("b", base, None),
        SourceRow {
            keys: vec![None],
            ts: base,
            value: Some(1.0),
        },
        SourceRow {
            keys: vec![None],
            ts: base + MINUTE,
            value: Some(2.0),
        },
    ];
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &rows),
    );
    let aggs = [
        ("s", "sum", 10),
        ("c", "count", 10),
        ("a", "avg", 10),
        ("mn", "min", 10),
        ("l", "latest", 10),
    ];
    let dir = write_spec(
        &tmp.path().join("spec"),
        &dsl_spec("../data/x.parquet", &["k"], &aggs, 10),
    );
    let engine = engine(2).await;
    let m = result_map(
        &run_window(&engine, &dir, base, base + DAY).await.unwrap(),
        &["k"],
        "timestamp",
    );
    assert_eq!(
        feature(&m, "a", base),
        vec![None, Some(1.0), None, None, None]
    );
    assert_eq!(
        feature(&m, "a", base + MINUTE),
        vec![Some(5.0), Some(2.0), Some(5.0), Some(5.0), Some(5.0)]
    );
    // A null value on the latest row does not hide the earlier non-null one.
    assert_eq!(
        feature(&m, "a", base + 2 * MINUTE),
        vec![Some(5.0), Some(3.0), Some(5.0), Some(5.0), Some(5.0)]
    );
    assert_eq!(
        feature(&m, "b", base),
        vec![None, Some(1.0), None, None, None]
    );
    assert_eq!(
        m[&(vec![None], base + MINUTE)],
        vec![Some(3.0), Some(2.0), Some(1.5), Some(1.0), Some(2.0)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_index_columns_aggregate_per_combination() {
    let tmp = tempfile::tempdir().unwrap();
    let base = t("2023-05-01T00:00:00Z");
    let r = |a: &str, b: &str, ts: i64, v: f64| SourceRow {
        keys: vec![Some(a.into()), Some(b.into())],
        ts,
        value: Some(v),
    };
    let rows = vec![
        r("x", "1", base, 1.0),
        r("x", "2", base, 10.0),
        r("y", "1", base, 100.0),
        r("x", "1", base + HOUR, 2.0),
    ];
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["ka", "kb"], &rows),
    );
    let dir = write_spec(
        &tmp.path().join("spec"),
        &dsl_spec(
            "../data/x.parquet",
            &["ka", "kb"],
            &[("s", "sum", 120)],
            120,
        ),
    );
    let engine = engine(2).await;
    let m = result_map(
        &run_window(&engine, &dir, base, base + DAY).await.unwrap(),
        &["ka", "kb"],
        "timestamp",
    );
    let key = |a: &str, b: &str| vec![Some(a.to_string()), Some(b.to_string())];
    assert_eq!(m.len(), 4);
    assert_eq!(m[&(key("x", "1"), base + HOUR)], vec![Some(3.0)]);
    assert_eq!(m[&(key("x", "2"), base)], vec![Some(10.0)]);
    assert_eq!(m[&(key("y", "1"), base)], vec![Some(100.0)]);
}

/// Random rows with many ties, nulls and rows on exact window edges.
fn random_rows(seed: u64, n: usize, keys: usize) -> Vec<SourceRow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = t("2023-06-01");
    (0..n)
        .map(|_| {
            let key = if rng.random_bool(0.03) {
                None
            } else {
                Some(format!("k{}", rng.random_range(0..keys)))
            };
            // Whole minutes within three days, so equal timestamps and exact edges are common.
            let ts = base + rng.random_range(0..3 * 24 * 60) * MINUTE;
            let value = if rng.random_bool(0.1) {
                None
            } else {
                Some(f64::from(rng.random_range(-50..500)))
            };
            SourceRow {
                keys: vec![key],
                ts,
                value,
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_data_matches_the_oracle_at_any_partitioning() {
    let tmp = tempfile::tempdir().unwrap();
    let aggs = [
        ("c60", "count", 60u64),
        ("s60", "sum", 60),
        ("a180", "avg", 180),
        ("mn30", "min", 30),
        ("mx720", "max", 720),
        ("l90", "latest", 90),
        ("s1d", "sum", 24 * 60),
    ];
    let oracle_aggs: Vec<(Agg, i64)> = aggs
        .iter()
        .map(|(_, a, m)| {
            let agg = match *a {
                "count" => Agg::Count,
                "sum" => Agg::Sum,
                "avg" => Agg::Avg,
                "min" => Agg::Min,
                "max" => Agg::Max,
                _ => Agg::Latest,
            };
            (agg, *m as i64 * MINUTE)
        })
        .collect();
    let start = t("2023-06-02");
    let end = t("2023-06-03T12:00:00Z");
    let lookback = 24 * 60;
    let mut previous: Option<Vec<datafusion::arrow::array::RecordBatch>> = None;
    for (seed, partitions) in [(1u64, 1usize), (1, 2), (1, 8), (2, 2), (3, 4)] {
        let rows = random_rows(seed, 1500, 12);
        let case = tmp.path().join(format!("s{seed}p{partitions}"));
        // Several files, so scans are split too.
        for (i, chunk) in rows.chunks(400).enumerate() {
            write_parquet(
                &case.join(format!("data/part-{i}.parquet")),
                &rows_batch(&["k"], chunk),
            );
        }
        let dir = write_spec(
            &case.join("spec"),
            &dsl_spec("../data", &["k"], &aggs, lookback),
        );
        let engine = engine(partitions).await;
        let out = run_window(&engine, &dir, start, end).await.unwrap();
        let expected = window_features(&rows, &oracle_aggs, start, end, lookback as i64 * MINUTE);
        assert!(expected.len() > 500, "the case should be substantial");
        assert_same(&result_map(&out, &["k"], "timestamp"), &expected);
        // Same inputs, same output, whatever the partitioning (values here are whole numbers,
        // so summation order cannot change a bit).
        if seed == 1 {
            if let Some(prev) = &previous {
                assert_eq!(prev, &out, "output differs between partitionings");
            }
            previous = Some(out);
        }
    }
}

/// Random source rows for the differential test: a string and an integer index column (both
/// sometimes null), whole-minute timestamps over three days (many ties and exact window
/// edges), a double value (`fractional`: with fractions, else whole numbers) and a long value,
/// both sometimes null.
fn differential_source(seed: u64, n: usize, fractional: bool) -> RecordBatch {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = t("2023-06-01");
    let mut k = Vec::new();
    let mut nn = Vec::new();
    let mut ts = Vec::new();
    let mut amount = Vec::new();
    let mut qty = Vec::new();
    for _ in 0..n {
        k.push((!rng.random_bool(0.03)).then(|| format!("k{}", rng.random_range(0..6))));
        nn.push((!rng.random_bool(0.03)).then(|| rng.random_range(0..3)));
        ts.push(base + rng.random_range(0..3 * 24 * 60) * MINUTE);
        amount.push((!rng.random_bool(0.1)).then(|| {
            let whole = f64::from(rng.random_range(-50..500));
            if fractional {
                whole * 0.37 + rng.random::<f64>() * 1e-3
            } else {
                whole
            }
        }));
        qty.push((!rng.random_bool(0.1)).then(|| rng.random_range(-1_000i64..1_000_000)));
    }
    RecordBatch::try_from_iter(vec![
        ("k", Arc::new(StringArray::from(k)) as ArrayRef),
        ("n", Arc::new(Int32Array::from(nn)) as ArrayRef),
        (
            "timestamp",
            Arc::new(TimestampMicrosecondArray::from(ts).with_timezone("UTC")) as ArrayRef,
        ),
        ("amount", Arc::new(Float64Array::from(amount)) as ArrayRef),
        ("qty", Arc::new(Int64Array::from(qty)) as ArrayRef),
    ])
    .unwrap()
}

const DIFFERENTIAL_SPEC: &str = "source:\n  type: parquet\n  path: ../data\n  timestamp_column:\n    name: timestamp\n\
source_lookback:\n  days: 1\nindex_columns:\n  - name: k\n    type: string\n  - name: n\n    type: integer\n\
features:\n";

/// (feature, aggregation, column, window in minutes, declared type)
const DIFFERENTIAL_FEATURES: [(&str, &str, &str, u64, &str); 11] = [
    ("c1", "count", "", 1, "long"),
    ("c1d", "count", "", 1440, "long"),
    ("s30", "sum", "amount", 30, "double"),
    ("q30", "sum", "qty", 30, "long"),
    ("a1d", "avg", "amount", 1440, "double"),
    ("qa1d", "avg", "qty", 1440, "double"),
    ("mn60", "min", "amount", 60, "double"),
    ("mx60", "max", "qty", 60, "long"),
    ("mx1", "max", "amount", 1, "double"),
    ("l90", "latest", "amount", 90, "double"),
    ("ql90", "latest", "qty", 90, "long"),
];

fn differential_spec() -> String {
    let mut y = DIFFERENTIAL_SPEC.to_string();
    for (name, _, _, _, ty) in DIFFERENTIAL_FEATURES {
        y.push_str(&format!("  - name: {name}\n    type: {ty}\n"));
    }
    y.push_str("feature_transformation:\n  transformation_expressions:\n");
    for (name, agg, column, minutes, _) in DIFFERENTIAL_FEATURES {
        y.push_str(&format!(
            "    - feature_name: {name}\n      aggregation: {agg}\n      window:\n        minutes: {minutes}\n"
        ));
        if !column.is_empty() {
            y.push_str(&format!("      source_column: {column}\n"));
        }
    }
    y
}

/// All rows in one batch, sorted by (k, n, timestamp).
fn sorted(batches: &[RecordBatch]) -> RecordBatch {
    let batch = concat_batches(&batches[0].schema(), batches).unwrap();
    let columns: Vec<SortColumn> = ["k", "n", "timestamp"]
        .iter()
        .map(|c| SortColumn {
            values: Arc::clone(batch.column_by_name(c).unwrap()),
            options: None,
        })
        .collect();
    let indices = lexsort_to_indices(&columns, None).unwrap();
    let columns = batch
        .columns()
        .iter()
        .map(|c| take(c, &indices, None).unwrap())
        .collect();
    RecordBatch::try_new(batch.schema(), columns).unwrap()
}

async fn window_with(
    engine: &almanac_jobs::engine::Engine,
    dir: &std::path::Path,
    start: i64,
    end: i64,
    plan: WindowPlan,
) -> RecordBatch {
    let loaded = LoadedSpec::load(dir).unwrap();
    let frame = plan_window_with(engine, &loaded, TimeRange { start, end }, plan)
        .await
        .unwrap();
    let explained = frame
        .frame
        .clone()
        .create_physical_plan()
        .await
        .map(|p| {
            datafusion::physical_plan::displayable(p.as_ref())
                .indent(true)
                .to_string()
        })
        .unwrap_or_default();
    let native = plan == WindowPlan::Native;
    assert_eq!(
        explained.contains("WindowAgg:"),
        native,
        "the plan should {}use the operator:\n{explained}",
        if native { "" } else { "not " }
    );
    sorted(&frame.collect().await.unwrap())
}

/// The single-pass operator against the window-function plan on random data with ties,
/// nulls, exact window edges and two index columns, at 1, 2 and 8 partitions: the same rows;
/// the same values, bit for bit, except that sums and averages of doubles with fractions may
/// differ in the last bits (the window functions round as they slide, the operator rounds an
/// exact sum once). The operator's own output is the same bytes at every partitioning and
/// whatever earlier rows were read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_window_operator_equals_window_functions_on_random_data() {
    let tmp = tempfile::tempdir().unwrap();
    let (start, end) = (t("2023-06-02"), t("2023-06-04"));
    for (seed, fractional) in [(11u64, false), (12, true)] {
        let case = tmp.path().join(format!("case-{seed}"));
        let source = differential_source(seed, 3_000, fractional);
        for (i, at) in [0usize, 1_000, 2_000].into_iter().enumerate() {
            write_parquet(
                &case.join(format!("data/part-{i}.parquet")),
                &source.slice(at, 1_000),
            );
        }
        let dir = write_spec(&case.join("spec"), &differential_spec());
        let mut first: Option<RecordBatch> = None;
        for partitions in [1usize, 2, 8] {
            let engine = engine(partitions).await;
            let native = window_with(&engine, &dir, start, end, WindowPlan::Native).await;
            let functions =
                window_with(&engine, &dir, start, end, WindowPlan::WindowFunctions).await;
            assert!(native.num_rows() > 1_500, "{}", native.num_rows());
            assert_eq!(native.schema(), functions.schema());
            assert_eq!(native.num_rows(), functions.num_rows());
            for (i, field) in native.schema().fields().iter().enumerate() {
                let (a, b) = (native.column(i), functions.column(i));
                let inexact = fractional && ["s30", "a1d"].contains(&field.name().as_str());
                if !inexact {
                    assert_eq!(
                        a,
                        b,
                        "{} differs (seed {seed}, {partitions} partitions)",
                        field.name()
                    );
                    continue;
                }
                let (a, b) = (
                    a.as_primitive::<Float64Type>(),
                    b.as_primitive::<Float64Type>(),
                );
                for r in 0..a.len() {
                    assert_eq!(a.is_null(r), b.is_null(r), "{} row {r}", field.name());
                    let (x, y) = (a.value(r), b.value(r));
                    assert!(
                        (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
                        "{} row {r}: {x} vs {y}",
                        field.name()
                    );
                }
            }
            match &first {
                Some(f) => assert_eq!(f, &native, "the operator's output depends on partitioning"),
                None => first = Some(native),
            }
        }
        // A later start reads fewer earlier rows; the rows both cover are the same bytes.
        let engine = engine(2).await;
        let later = window_with(&engine, &dir, start + DAY, end, WindowPlan::Native).await;
        let all = first.unwrap();
        let ts = all
            .column_by_name("timestamp")
            .unwrap()
            .as_primitive::<TimestampMicrosecondType>();
        let from = (0..all.num_rows())
            .filter(|&r| ts.value(r) >= start + DAY)
            .collect::<Vec<_>>();
        let indices = datafusion::arrow::array::UInt32Array::from(
            from.iter().map(|&r| r as u32).collect::<Vec<_>>(),
        );
        let columns = all
            .columns()
            .iter()
            .map(|c| take(c, &indices, None).unwrap())
            .collect();
        let overlap = sorted(&[RecordBatch::try_new(all.schema(), columns).unwrap()]);
        assert_eq!(
            overlap, later,
            "a window's value depends on where reading started"
        );
    }
}
