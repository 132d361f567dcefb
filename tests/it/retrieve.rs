//! Point-in-time retrieval: hand-built edge cases, a randomized comparison with an independent
//! oracle across partitionings, and bad input.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use almanac_jobs::engine::Engine;
use almanac_jobs::retrieve::{
    DEFAULT_ROWS_PER_FILE, RetrieveOptions, RetrieveSummary, parse_feature_list, retrieve,
};
use almanac_tests::fixtures::{HOUR, MINUTE, read_folder, t, write_parquet};
use almanac_tests::pit_oracle::{FeatureRow, Value, point_in_time};
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::common::engine;

/// A feature set for a test: a precomputed spec over one parquet file of `rows`.
struct SetDef {
    name: &'static str,
    /// (name, spec type): string, integer or long.
    keys: Vec<(&'static str, &'static str)>,
    /// (name, spec type): long or string.
    features: Vec<(&'static str, &'static str)>,
    lookback_minutes: Option<i64>,
    delay_minutes: i64,
    rows: Vec<FeatureRow>,
}

fn key_array(kind: &str, values: impl Iterator<Item = Option<String>>) -> ArrayRef {
    let values: Vec<Option<String>> = values.collect();
    match kind {
        "string" => Arc::new(values.into_iter().collect::<StringArray>()),
        "integer" => Arc::new(
            values
                .iter()
                .map(|v| v.as_ref().map(|s| s.parse::<i32>().unwrap()))
                .collect::<Int32Array>(),
        ),
        _ => Arc::new(
            values
                .iter()
                .map(|v| v.as_ref().map(|s| s.parse::<i64>().unwrap()))
                .collect::<Int64Array>(),
        ),
    }
}

fn arrow_type(kind: &str) -> DataType {
    match kind {
        "string" => DataType::Utf8,
        "integer" => DataType::Int32,
        _ => DataType::Int64,
    }
}

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Writes the set's data and spec under `root/<name>/` and returns the spec folder.
fn write_set(root: &Path, set: &SetDef) -> PathBuf {
    let dir = root.join(set.name);
    let mut fields: Vec<Field> = set
        .keys
        .iter()
        .map(|(k, kind)| Field::new(*k, arrow_type(kind), true))
        .collect();
    fields.push(Field::new("ts", utc(), false));
    let mut columns: Vec<ArrayRef> = set
        .keys
        .iter()
        .enumerate()
        .map(|(i, (_, kind))| key_array(kind, set.rows.iter().map(|r| r.keys[i].clone())))
        .collect();
    columns.push(Arc::new(
        TimestampMicrosecondArray::from_iter_values(set.rows.iter().map(|r| r.ts))
            .with_timezone("UTC"),
    ));
    for (j, (f, kind)) in set.features.iter().enumerate() {
        fields.push(Field::new(*f, arrow_type(kind), true));
        let column: ArrayRef = match kind {
            &"string" => Arc::new(
                set.rows
                    .iter()
                    .map(|r| match &r.values[j] {
                        Value::Str(s) => s.clone(),
                        other => panic!("{other:?} in a string feature"),
                    })
                    .collect::<StringArray>(),
            ),
            _ => Arc::new(
                set.rows
                    .iter()
                    .map(|r| match &r.values[j] {
                        Value::Int(v) => *v,
                        other => panic!("{other:?} in a long feature"),
                    })
                    .collect::<Int64Array>(),
            ),
        };
        columns.push(column);
    }
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
    write_parquet(&dir.join("data/part-0.parquet"), &batch);
    let mut y =
        "source:\n  type: parquet\n  path: data/*.parquet\n  timestamp_column:\n    name: ts\n"
            .to_string();
    y.push_str(&format!(
        "  source_delay:\n    minutes: {}\n",
        set.delay_minutes
    ));
    y.push_str("index_columns:\n");
    for (k, kind) in &set.keys {
        y.push_str(&format!("  - name: {k}\n    type: {kind}\n"));
    }
    y.push_str("features:\n");
    for (f, kind) in &set.features {
        y.push_str(&format!("  - name: {f}\n    type: {kind}\n"));
    }
    if let Some(l) = set.lookback_minutes {
        y.push_str(&format!("temporal_join_lookback:\n  minutes: {l}\n"));
    }
    let spec = dir.join("spec");
    std::fs::create_dir_all(&spec).unwrap();
    // The data path is relative to the spec folder.
    std::fs::write(
        spec.join("FeatureSetSpec.yaml"),
        y.replace("data/", "../data/"),
    )
    .unwrap();
    spec
}

/// An observation row: `obs_id` records input order.
#[derive(Debug, Clone)]
struct Obs {
    acct: Option<String>,
    merchant: Option<i64>,
    t: i64,
}

/// Writes observations split over `files` parquet files (path order = row order).
fn write_observations(dir: &Path, obs: &[Obs], files: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("obs_id", DataType::Int64, false),
        Field::new("acct", DataType::Utf8, true),
        Field::new("merchant", DataType::Int64, true),
        Field::new("event_time", utc(), false),
        Field::new("label", DataType::Float64, false),
    ]));
    let per_file = obs.len().div_ceil(files.max(1)).max(1);
    for (f, chunk) in obs.chunks(per_file).enumerate() {
        let first = f * per_file;
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (0..chunk.len()).map(|i| (first + i) as i64),
                )),
                Arc::new(
                    chunk
                        .iter()
                        .map(|o| o.acct.clone())
                        .collect::<StringArray>(),
                ),
                Arc::new(chunk.iter().map(|o| o.merchant).collect::<Int64Array>()),
                Arc::new(
                    TimestampMicrosecondArray::from_iter_values(chunk.iter().map(|o| o.t))
                        .with_timezone("UTC"),
                ),
                Arc::new(Float64Array::from_iter_values(
                    (0..chunk.len()).map(|i| (first + i) as f64 * 0.5),
                )),
            ],
        )
        .unwrap();
        write_parquet(&dir.join(format!("part-{f:03}.parquet")), &batch);
    }
}

fn options(
    observations: &Path,
    sets: &[(&str, &Path)],
    features: &str,
    output: &Path,
) -> RetrieveOptions {
    RetrieveOptions {
        requests: parse_feature_list(features).unwrap(),
        local: sets
            .iter()
            .map(|(n, d)| (n.to_string(), d.to_path_buf()))
            .collect::<BTreeMap<_, _>>(),
        observations: observations.display().to_string(),
        observations_format: None,
        timestamp_column: "event_time".to_string(),
        timestamp_format: None,
        output: output.to_path_buf(),
        overwrite: false,
        rows_per_file: DEFAULT_ROWS_PER_FILE,
        home: None,
    }
}

async fn run(engine: &Engine, o: &RetrieveOptions) -> RetrieveSummary {
    retrieve(engine, o)
        .await
        .unwrap_or_else(|e| panic!("retrieve failed: {e}"))
}

/// The whole output, in file order.
fn output(dir: &Path) -> RecordBatch {
    let batches = read_folder(&dir.join("data"));
    concat_batches(&batches[0].schema(), &batches).unwrap()
}

fn value(batch: &RecordBatch, column: &str, row: usize) -> Value {
    let a = batch
        .column_by_name(column)
        .unwrap_or_else(|| panic!("no output column {column}"));
    match a.data_type() {
        DataType::Utf8 => {
            Value::Str((!a.is_null(row)).then(|| a.as_string::<i32>().value(row).to_string()))
        }
        DataType::Int64 => {
            Value::Int((!a.is_null(row)).then(|| a.as_primitive::<Int64Type>().value(row)))
        }
        other => panic!("unexpected feature type {other}"),
    }
}

fn s(v: &str) -> Option<String> {
    Some(v.to_string())
}

fn row(key: &str, ts: i64, v: Option<i64>) -> FeatureRow {
    FeatureRow {
        keys: vec![s(key)],
        ts,
        created: None,
        values: vec![Value::Int(v)],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edges_of_the_join_window_ties_nulls_and_order() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let t0 = t("2024-03-10 12:00");
    // lookback 60 min, delay 10 min: a row counts when t0 − 60m <= ts <= t0 − 10m.
    let windowed = SetDef {
        name: "windowed",
        keys: vec![("acct", "string")],
        features: vec![("v", "long")],
        lookback_minutes: Some(60),
        delay_minutes: 10,
        rows: vec![
            row("at_upper", t0 - 10 * MINUTE, Some(1)),
            row("past_upper", t0 - 10 * MINUTE + 1, Some(2)),
            row("at_lower", t0 - HOUR, Some(3)),
            row("before_lower", t0 - HOUR - 1, Some(4)),
            row("future", t0 + MINUTE, Some(5)),
            row("tie", t0 - 20 * MINUTE, Some(5)),
            row("tie", t0 - 20 * MINUTE, Some(7)),
            row("tie", t0 - 20 * MINUTE, None),
            row("nullval", t0 - 30 * MINUTE, Some(8)),
            row("nullval", t0 - 15 * MINUTE, None),
            FeatureRow {
                keys: vec![None],
                ts: t0 - 30 * MINUTE,
                created: None,
                values: vec![Value::Int(Some(9))],
            },
        ],
    };
    // No lookback and no delay: a row exactly at t counts, and so does a very old one.
    let unbounded = SetDef {
        name: "unbounded",
        keys: vec![("acct", "string")],
        features: vec![("u", "long")],
        lookback_minutes: None,
        delay_minutes: 0,
        rows: vec![
            row("at_upper", t0, Some(10)),
            row("at_upper", t0 + 1, Some(11)),
            row("old", t0 - 3650 * 24 * HOUR, Some(12)),
        ],
    };
    let w = write_set(root, &windowed);
    let u = write_set(root, &unbounded);
    let keys = [
        "past_upper",
        "at_upper",
        "at_lower",
        "before_lower",
        "future",
        "none",
        "tie",
        "nullval",
        "old",
    ];
    let mut obs: Vec<Obs> = keys
        .iter()
        .map(|k| Obs {
            acct: s(k),
            merchant: None,
            t: t0,
        })
        .collect();
    obs.push(Obs {
        acct: None,
        merchant: None,
        t: t0,
    });
    // A duplicate row, and rows out of time order.
    obs.push(obs[1].clone());
    obs.push(Obs {
        acct: s("at_upper"),
        merchant: None,
        t: t0 + 2 * HOUR,
    });
    obs.push(Obs {
        acct: s("at_upper"),
        merchant: None,
        t: t0 - 5 * MINUTE,
    });
    write_observations(&root.join("obs"), &obs, 2);

    let engine = engine(2).await;
    let out = root.join("out");
    let summary = run(
        &engine,
        &options(
            &root.join("obs"),
            &[("windowed", &w), ("unbounded", &u)],
            "unbounded:local:u,windowed:local:v",
            &out,
        ),
    )
    .await;
    assert_eq!((summary.rows_in, summary.rows_out), (13, 13));
    let b = output(&out);
    let schema = b.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "obs_id",
            "acct",
            "merchant",
            "event_time",
            "label",
            "u",
            "v"
        ]
    );
    let ids: Vec<i64> = b.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(ids, (0..13).collect::<Vec<_>>(), "input order is kept");
    let v = |r: usize| value(&b, "v", r);
    let u = |r: usize| value(&b, "u", r);
    let int = |x: i64| Value::Int(Some(x));
    let null = Value::Int(None);
    assert_eq!(v(0), null, "1 µs after t − delay is too late");
    assert_eq!(v(1), int(1), "exactly t − delay counts");
    assert_eq!(v(2), int(3), "exactly t − lookback counts");
    assert_eq!(v(3), null, "1 µs before t − lookback is too old");
    assert_eq!(v(4), null, "a key with only future rows");
    assert_eq!(v(5), null, "a key with no history");
    assert_eq!(
        v(6),
        int(7),
        "equal timestamps: the greatest value wins, nulls lowest"
    );
    assert_eq!(v(7), null, "a null on the latest row stays null");
    assert_eq!(v(9), null, "a null key never matches, not even a null key");
    assert_eq!(
        v(10),
        v(1),
        "duplicate observation rows get the same features"
    );
    assert_eq!(
        v(11),
        null,
        "later observation: the row is now older than the lookback"
    );
    assert_eq!(
        v(12),
        null,
        "earlier observation: t − delay is before the row"
    );
    assert_eq!(
        u(1),
        int(10),
        "delay 0: a row exactly at t counts, 1 µs later does not"
    );
    assert_eq!(u(8), int(12), "no lookback: any age counts");
    assert_eq!(u(11), int(11));
    assert_eq!(
        u(12),
        null,
        "the observation is before every row of its key"
    );
    assert_eq!(
        summary.matches,
        vec![
            ("unbounded:local".to_string(), 4),
            ("windowed:local".to_string(), 5)
        ]
    );
    let spec = std::fs::read_to_string(out.join("feature_retrieval_spec.yaml")).unwrap();
    assert!(spec.contains("feature_set: windowed:local") && spec.contains("feature_name: u"));
    // Nothing but the output is left next to it.
    let leftovers: Vec<_> = std::fs::read_dir(root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// Random observations and feature rows over few keys and coarse times, so that matches, ties,
/// nulls and misses are all common.
fn random_case(seed: u64) -> (Vec<Obs>, Vec<SetDef>, usize) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let base = t("2024-01-01");
    let acct = |rng: &mut ChaCha8Rng, null_rate: f64| -> Option<String> {
        (!rng.random_bool(null_rate)).then(|| format!("a{}", rng.random_range(0..5)))
    };
    let n_obs = rng.random_range(1..80);
    let obs: Vec<Obs> = (0..n_obs)
        .map(|_| Obs {
            acct: acct(&mut rng, 0.1),
            merchant: (!rng.random_bool(0.1)).then(|| rng.random_range(1..4)),
            t: base + rng.random_range(0..96) * 30 * MINUTE,
        })
        .collect();
    let small = |rng: &mut ChaCha8Rng| -> Option<i64> {
        (!rng.random_bool(0.2)).then(|| rng.random_range(0..4))
    };
    let lookback_a = [None, Some(120), Some(600)][rng.random_range(0..3)];
    let delay_a = [0, 30][rng.random_range(0..2)];
    let a_rows = (0..rng.random_range(0..150))
        .map(|_| FeatureRow {
            keys: vec![acct(&mut rng, 0.05)],
            ts: base - 12 * HOUR + rng.random_range(0..140) * 30 * MINUTE,
            created: None,
            values: vec![
                Value::Int(small(&mut rng)),
                Value::Str(small(&mut rng).map(|v| format!("s{v}"))),
            ],
        })
        .collect();
    let lookback_b = [Some(60), Some(24 * 60)][rng.random_range(0..2)];
    let delay_b = [0, 10, 60][rng.random_range(0..3)];
    let b_rows = (0..rng.random_range(0..150))
        .map(|_| FeatureRow {
            keys: vec![
                acct(&mut rng, 0.05),
                (!rng.random_bool(0.05)).then(|| rng.random_range(1..4).to_string()),
            ],
            ts: base - 12 * HOUR
                + rng.random_range(0..140) * 30 * MINUTE
                + rng.random_range(0..2) * 10 * MINUTE,
            created: None,
            values: vec![Value::Int(small(&mut rng))],
        })
        .collect();
    let sets = vec![
        SetDef {
            name: "a",
            keys: vec![("acct", "string")],
            features: vec![("fa_long", "long"), ("fa_str", "string")],
            lookback_minutes: lookback_a,
            delay_minutes: delay_a,
            rows: a_rows,
        },
        SetDef {
            name: "b",
            // `integer` keys while the observations hold longs: the join casts them.
            keys: vec![("acct", "string"), ("merchant", "integer")],
            features: vec![("fb_long", "long")],
            lookback_minutes: lookback_b,
            delay_minutes: delay_b,
            rows: b_rows,
        },
    ];
    (obs, sets, rng.random_range(1..4))
}

fn check_against_oracle(seed: u64, obs: &[Obs], sets: &[SetDef], b: &RecordBatch) {
    assert_eq!(b.num_rows(), obs.len(), "seed {seed}: row count");
    let ids: Vec<i64> = b.column(0).as_primitive::<Int64Type>().values().to_vec();
    assert_eq!(
        ids,
        (0..obs.len() as i64).collect::<Vec<_>>(),
        "seed {seed}: order"
    );
    // (set, feature index, output column) in request order.
    let requested = [(0, 0, "fa_long"), (1, 0, "fb_long"), (0, 1, "fa_str")];
    let picks: Vec<Vec<Option<usize>>> = sets
        .iter()
        .enumerate()
        .map(|(i, set)| {
            let keys: Vec<(Vec<Option<String>>, i64)> = obs
                .iter()
                .map(|o| {
                    let mut k = vec![o.acct.clone()];
                    if i == 1 {
                        k.push(o.merchant.map(|m| m.to_string()));
                    }
                    (k, o.t)
                })
                .collect();
            point_in_time(
                &keys,
                &set.rows,
                set.lookback_minutes.map(|m| m * MINUTE),
                set.delay_minutes * MINUTE,
            )
        })
        .collect();
    for (r, _) in obs.iter().enumerate() {
        for (set, feature, column) in requested {
            let expected = match picks[set][r] {
                Some(i) => sets[set].rows[i].values[feature].clone(),
                None if column == "fa_str" => Value::Str(None),
                None => Value::Int(None),
            };
            assert_eq!(
                value(b, column, r),
                expected,
                "seed {seed}, observation row {r} ({:?}), {column}",
                obs[r]
            );
        }
    }
}

fn folder_bytes(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_retrievals_match_the_oracle_and_are_byte_identical_across_partitionings() {
    let engines = [engine(1).await, engine(2).await, engine(8).await];
    for seed in 0..12u64 {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let (obs, sets, files) = random_case(seed);
        let specs: Vec<PathBuf> = sets.iter().map(|s| write_set(root, s)).collect();
        write_observations(&root.join("obs"), &obs, files);
        let mut first: Option<Vec<(String, Vec<u8>)>> = None;
        for (e, engine) in engines.iter().enumerate() {
            let out = root.join(format!("out{e}"));
            let mut o = options(
                &root.join("obs"),
                &[("a", &specs[0]), ("b", &specs[1])],
                "a:local:fa_long,b:local:fb_long,a:local:fa_str",
                &out,
            );
            o.rows_per_file = 1 + seed % 17;
            let summary = run(engine, &o).await;
            assert_eq!(summary.rows_out, obs.len() as u64);
            check_against_oracle(seed, &obs, &sets, &output(&out));
            let bytes = folder_bytes(&out.join("data"));
            match &first {
                None => first = Some(bytes),
                Some(f) => assert!(
                    *f == bytes,
                    "seed {seed}: output differs between 1 and {} partitions",
                    [1, 2, 8][e]
                ),
            }
        }
    }
}

fn hidden_leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect()
}

/// Observations whose time column is written as text, in each column of `texts`.
fn write_text_times(path: &Path, acct: &str, texts: &[&str]) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("obs_id", DataType::Int64, false),
        Field::new("acct", DataType::Utf8, true),
        Field::new("event_time", DataType::Utf8, true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from_iter_values(0..texts.len() as i64)),
            Arc::new(StringArray::from_iter_values(texts.iter().map(|_| acct))),
            Arc::new(StringArray::from_iter_values(texts.iter().copied())),
        ],
    )
    .unwrap();
    write_parquet(path, &batch);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observation_times_in_any_common_form_mean_the_same_instant() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let t0 = t("2024-03-10 12:00");
    // One row per minute before and after 12:00 UTC, valued by its minute offset.
    let set = SetDef {
        name: "a",
        keys: vec![("acct", "string")],
        features: vec![("v", "long")],
        lookback_minutes: None,
        delay_minutes: 0,
        rows: (-3..=3)
            .map(|m| row("x", t0 + m * MINUTE, Some(m)))
            .collect(),
    };
    let spec = write_set(root, &set);
    let engine = engine(2).await;
    let expect_noon = |out: &Path, n: usize| {
        let b = output(out);
        assert_eq!(b.num_rows(), n);
        for r in 0..n {
            assert_eq!(value(&b, "v", r), Value::Int(Some(0)), "row {r}");
        }
    };

    // Strings: naive (read as UTC), UTC, with an offset, and with a date-only minute-free form.
    write_text_times(
        &root.join("text/obs.parquet"),
        "x",
        &[
            "2024-03-10 12:00:00",
            "2024-03-10T12:00:00Z",
            "2024-03-10T14:00:00+02:00",
            "2024-03-10T07:00:30-05:00",
        ],
    );
    let out = root.join("out_text");
    run(
        &engine,
        &options(&root.join("text"), &[("a", &spec)], "a:local:v", &out),
    )
    .await;
    expect_noon(&out, 4);

    // Epoch integers (seconds by default, or as told) and a naive millisecond timestamp column.
    let secs = t0 / 1_000_000;
    let schema = Arc::new(Schema::new(vec![
        Field::new("acct", DataType::Utf8, false),
        Field::new("event_time", DataType::Int64, false),
        Field::new(
            "naive_ms",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(vec!["x", "x"])),
            Arc::new(Int64Array::from(vec![secs, secs + 59])),
            Arc::new(datafusion::arrow::array::TimestampMillisecondArray::from(
                vec![t0 / 1000, t0 / 1000 + 59_999],
            )),
        ],
    )
    .unwrap();
    write_parquet(&root.join("epoch/obs.parquet"), &batch);
    let out = root.join("out_epoch");
    run(
        &engine,
        &options(&root.join("epoch"), &[("a", &spec)], "a:local:v", &out),
    )
    .await;
    expect_noon(&out, 2);
    let out = root.join("out_naive");
    let mut o = options(&root.join("epoch"), &[("a", &spec)], "a:local:v", &out);
    o.timestamp_column = "naive_ms".to_string();
    run(&engine, &o).await;
    expect_noon(&out, 2);
    // Csv observations, with the time as text.
    let csv = root.join("csv");
    std::fs::create_dir_all(&csv).unwrap();
    std::fs::write(
        csv.join("obs.csv"),
        "acct,event_time\nx,2024-03-10 12:00:00\nx,2024-03-10T13:00:00+01:00\n",
    )
    .unwrap();
    let out = root.join("out_csv");
    run(&engine, &options(&csv, &[("a", &spec)], "a:local:v", &out)).await;
    expect_noon(&out, 2);

    let out = root.join("out_epoch_ms");
    let mut o = options(&root.join("epoch"), &[("a", &spec)], "a:local:v", &out);
    o.timestamp_format = Some("epoch_ms".to_string());
    run(&engine, &o).await;
    let b = output(&out);
    // Read as milliseconds, the same numbers are in January 1970: before every feature row.
    assert_eq!(value(&b, "v", 0), Value::Int(None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_clearly_and_leaves_no_output() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let t0 = t("2024-03-10 12:00");
    let a = write_set(
        root,
        &SetDef {
            name: "a",
            keys: vec![("acct", "string")],
            features: vec![("fa_long", "long"), ("fa_str", "string")],
            lookback_minutes: Some(60),
            delay_minutes: 0,
            rows: vec![FeatureRow {
                keys: vec![s("x")],
                ts: t0,
                created: None,
                values: vec![Value::Int(Some(1)), Value::Str(s("one"))],
            }],
        },
    );
    let b = write_set(
        root,
        &SetDef {
            name: "b",
            keys: vec![("acct", "string"), ("shop", "string")],
            features: vec![("fa_long", "long")],
            lookback_minutes: Some(60),
            delay_minutes: 10,
            rows: vec![],
        },
    );
    let obs = root.join("obs");
    write_observations(
        &obs,
        &[Obs {
            acct: s("x"),
            merchant: Some(1),
            t: t0,
        }],
        1,
    );
    write_text_times(
        &root.join("bad_times/obs.parquet"),
        "x",
        &["2024-03-10 12:00:00", "yesterday", "soon"],
    );
    let engine = engine(2).await;
    let out = root.join("out");
    let sets: [(&str, &Path); 2] = [("a", &a), ("b", &b)];
    let cases: Vec<(&str, RetrieveOptions, &str)> = vec![
        (
            "unknown set",
            options(&obs, &sets, "nope:local:fa_long", &out),
            "unknown feature set nope:local; known feature sets: a:local, b:local",
        ),
        (
            "registered version",
            options(&obs, &sets, "a:1:fa_long", &out),
            "unknown feature set a:1",
        ),
        (
            "unknown feature",
            options(&obs, &sets, "a:local:nope", &out),
            "feature set a:local has no feature 'nope'; its features are: fa_long, fa_str",
        ),
        (
            "same output twice",
            options(&obs, &sets, "a:local:fa_long,a:local:fa_long", &out),
            "output name 'fa_long' is requested twice",
        ),
        (
            "collision with an observation column",
            options(&obs, &sets, "a:local:fa_long=label", &out),
            "would be written as 'label', which is already a column of the observations",
        ),
        (
            "missing index column",
            options(&obs, &sets, "a:local:fa_str,b:local:fa_long=b_long", &out),
            "there is no column 'shop', an index column of feature set b:local",
        ),
        (
            "missing timestamp column",
            {
                let mut o = options(&obs, &sets, "a:local:fa_long", &out);
                o.timestamp_column = "when".to_string();
                o
            },
            "has no column 'when'; its columns are: obs_id, acct, merchant, event_time, label",
        ),
        (
            "unreadable timestamp type",
            {
                let mut o = options(&obs, &sets, "a:local:fa_long", &out);
                o.timestamp_column = "label".to_string();
                o
            },
            "timestamp column 'label' is Float64",
        ),
        (
            "unreadable timestamps",
            options(&root.join("bad_times"), &sets, "a:local:fa_long", &out),
            "2 row(s) in the window have a timestamp in column 'event_time' that cannot be read",
        ),
        (
            "missing observations",
            options(&root.join("nowhere"), &sets, "a:local:fa_long", &out),
            "does not exist",
        ),
        (
            "no features",
            options(&obs, &sets, "", &out),
            "no features requested",
        ),
    ];
    for (what, o, expected) in cases {
        let error = match retrieve(&engine, &o).await {
            Ok(_) => panic!("{what}: retrieve should have failed"),
            Err(e) => e.to_string(),
        };
        assert!(
            error.contains(expected),
            "{what}: expected '{expected}' in:\n{error}"
        );
        assert!(!out.exists(), "{what}: an output folder was left behind");
        assert!(
            hidden_leftovers(root).is_empty(),
            "{what}: staging left behind"
        );
    }

    // A lookback shorter than the delay could never match anything.
    let short = write_set(
        &root.join("short"),
        &SetDef {
            name: "s",
            keys: vec![("acct", "string")],
            features: vec![("v", "long")],
            lookback_minutes: Some(5),
            delay_minutes: 10,
            rows: vec![],
        },
    );
    let error = retrieve(&engine, &options(&obs, &[("s", &short)], "s:local:v", &out))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("temporal_join_lookback (5m) is shorter than its source_delay (10m)"),
        "{error}"
    );
    assert!(!out.exists());

    // An existing output folder is kept unless --overwrite, and then replaced whole.
    std::fs::create_dir_all(out.join("data")).unwrap();
    std::fs::write(out.join("data/old.parquet"), b"old").unwrap();
    let error = retrieve(&engine, &options(&obs, &sets, "a:local:fa_long", &out))
        .await
        .unwrap_err()
        .to_string();
    assert!(error.contains("already exists"), "{error}");
    assert!(out.join("data/old.parquet").exists());
    let mut o = options(&obs, &sets, "a:local:fa_long", &out);
    o.overwrite = true;
    run(&engine, &o).await;
    assert!(!out.join("data/old.parquet").exists());
    assert_eq!(value(&output(&out), "fa_long", 0), Value::Int(Some(1)));
    assert!(hidden_leftovers(root).is_empty());
}
