//! Window aggregation against hand-computed cases and the oracle (DESIGN.md §4).

use almanac_tests::fixtures::{DAY, HOUR, MINUTE, result_map, rows_batch, t, write_parquet};
use almanac_tests::oracle::{Agg, SourceRow, assert_same, window_features};
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
