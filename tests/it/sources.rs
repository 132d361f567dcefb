//! Sources (parquet, csv, delta; files, folders, globs, URLs), timestamp columns of every
//! kind, SQL transformations, and the errors bad input gets.

use std::path::Path;
use std::sync::Arc;

use almanac_jobs::JobsError;
use almanac_tests::fixtures::{DAY, HOUR, result_map, rows_batch, t, write_parquet};
use almanac_tests::oracle::SourceRow;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampNanosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};

use crate::common::{dsl_spec, engine, run_window, write_spec};

fn sample_rows() -> Vec<SourceRow> {
    let base = t("2023-02-01T10:00:00Z");
    (0..6)
        .map(|i| SourceRow {
            keys: vec![Some(format!("k{}", i % 2))],
            ts: base + i * HOUR,
            value: Some(i as f64),
        })
        .collect()
}

/// A precomputed spec over `path` with one feature `amount`.
fn precomputed(kind: &str, path: &str, ts_format: Option<&str>, amount_type: &str) -> String {
    let format = ts_format
        .map(|f| format!("\n    format: '{f}'"))
        .unwrap_or_default();
    format!(
        "source:\n  type: {kind}\n  path: {path}\n  timestamp_column:\n    name: timestamp{format}\n\
         index_columns:\n  - name: k\n    type: string\nfeatures:\n  - name: amount\n    type: {amount_type}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_folders_globs_and_file_urls_read_the_same_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = sample_rows();
    write_parquet(
        &tmp.path().join("data/a.parquet"),
        &rows_batch(&["k"], &rows[..3]),
    );
    write_parquet(
        &tmp.path().join("data/b.parquet"),
        &rows_batch(&["k"], &rows[3..]),
    );
    std::fs::write(tmp.path().join("data/_SUCCESS"), "").unwrap();
    let abs = tmp.path().join("data").display().to_string();
    let engine = engine(2).await;
    let (start, end) = (t("2023-02-01"), t("2023-02-02"));
    let mut results = Vec::new();
    for (i, path) in [
        "../data",
        "../data/*.parquet",
        &format!("file://{abs}/"),
        &format!("{abs}/a.parquet"),
    ]
    .iter()
    .enumerate()
    {
        let dir = write_spec(
            &tmp.path().join(format!("spec{i}")),
            &precomputed("parquet", path, None, "double"),
        );
        let out = run_window(&engine, &dir, start, end)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e}"));
        results.push(result_map(&out, &["k"], "timestamp"));
    }
    assert_eq!(results[0].len(), 6);
    assert_eq!(results[0], results[1]);
    assert_eq!(results[0], results[2]);
    assert_eq!(results[3].len(), 3, "a single file reads only that file");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_engine_sees_files_that_land_in_a_source_later() {
    let tmp = tempfile::tempdir().unwrap();
    let rows = sample_rows();
    write_parquet(
        &tmp.path().join("data/a.parquet"),
        &rows_batch(&["k"], &rows[..3]),
    );
    let dir = write_spec(
        &tmp.path().join("spec"),
        &precomputed("parquet", "../data", None, "double"),
    );
    let engine = engine(2).await;
    let (start, end) = (t("2023-02-01"), t("2023-02-02"));
    let first = run_window(&engine, &dir, start, end).await.unwrap();
    assert_eq!(result_map(&first, &["k"], "timestamp").len(), 3);
    write_parquet(
        &tmp.path().join("data/b.parquet"),
        &rows_batch(&["k"], &rows[3..]),
    );
    let second = run_window(&engine, &dir, start, end).await.unwrap();
    assert_eq!(
        result_map(&second, &["k"], "timestamp").len(),
        6,
        "the new file is read: listings are not cached across queries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn csv_with_patterned_string_timestamps_and_a_sql_transformation() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("data")).unwrap();
    std::fs::write(
        tmp.path().join("data/tx.csv"),
        "accountID,ts,amount\nA,10/02/2023 09:00,5.5\nA,10/02/2023 10:30,4.5\nB,10/02/2023 11:00,100\nA,11/02/2023 00:00,1\n",
    )
    .unwrap();
    let spec = "source:\n  type: csv\n  path: ../data/tx.csv\n  timestamp_column:\n    name: ts\n    format: dd/MM/yyyy HH:mm\n\
                index_columns:\n  - name: accountID\n    type: string\nfeatures:\n  - name: big\n    type: boolean\n  - name: doubled\n    type: double\n\
                feature_transformation:\n  sql: SELECT accountID, ts, amount > 5 AS big, amount * 2 AS doubled FROM source\n";
    let dir = write_spec(&tmp.path().join("spec"), spec);
    let engine = engine(2).await;
    let out = run_window(&engine, &dir, t("2023-02-10"), t("2023-02-11"))
        .await
        .unwrap();
    let m = result_map(&out, &["accountID"], "ts");
    assert_eq!(m.len(), 3, "the 11/02 row is outside the window");
    assert_eq!(
        m[&(vec![Some("A".into())], t("2023-02-10T09:00:00Z"))],
        vec![Some(1.0), Some(11.0)]
    );
    assert_eq!(
        m[&(vec![Some("B".into())], t("2023-02-10T11:00:00Z"))],
        vec![Some(1.0), Some(200.0)]
    );
    // The output timestamp is Almanac's canonical type whatever the source held, and strings
    // are plain Utf8 (Ballista's Flight transport and the Delta writer expect them).
    assert_eq!(
        out[0]
            .schema()
            .field_with_name("accountID")
            .unwrap()
            .data_type(),
        &DataType::Utf8
    );
    assert_eq!(
        out[0].schema().field_with_name("ts").unwrap().data_type(),
        &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    );
}

fn ts_batch(ts: ArrayRef) -> RecordBatch {
    let n = ts.len();
    let schema = Schema::new(vec![
        Field::new("k", DataType::Utf8, false),
        Field::new("timestamp", ts.data_type().clone(), true),
        Field::new("amount", DataType::Int64, false),
    ]);
    RecordBatch::try_new(
        Arc::new(schema),
        vec![
            Arc::new(StringArray::from(vec!["a"; n])),
            ts,
            Arc::new(Int64Array::from_iter_values(0..n as i64)),
        ],
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamps_of_any_unit_zone_or_epoch_read_as_the_same_instants() {
    let tmp = tempfile::tempdir().unwrap();
    let instants = [
        t("2023-03-01T00:00:00Z"),
        t("2023-03-01T12:34:56Z"),
        t("2023-03-01T23:59:59Z"),
    ];
    let cases: Vec<(&str, ArrayRef, Option<&str>)> = vec![
        (
            "ns_tz",
            Arc::new(
                TimestampNanosecondArray::from_iter_values(instants.iter().map(|m| m * 1000))
                    .with_timezone("+05:00"),
            ),
            None,
        ),
        (
            "epoch_s",
            Arc::new(Int64Array::from_iter_values(
                instants.iter().map(|m| m / 1_000_000),
            )),
            None,
        ),
        (
            "epoch_ms",
            Arc::new(Int64Array::from_iter_values(
                instants.iter().map(|m| m / 1_000),
            )),
            Some("epoch_ms"),
        ),
        (
            "iso_offset",
            Arc::new(StringArray::from(vec![
                "2023-03-01T05:00:00+05:00",
                "2023-03-01 12:34:56",
                "2023-03-01T23:59:59Z",
            ])),
            None,
        ),
    ];
    let engine = engine(2).await;
    for (name, array, format) in cases {
        write_parquet(
            &tmp.path().join(name).join("data/x.parquet"),
            &ts_batch(array),
        );
        let dir = write_spec(
            &tmp.path().join(name).join("spec"),
            &precomputed("parquet", "../data", format, "long"),
        );
        let out = run_window(&engine, &dir, t("2023-03-01"), t("2023-03-02"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let got: Vec<i64> = result_map(&out, &["k"], "timestamp")
            .keys()
            .map(|(_, ts)| *ts)
            .collect();
        assert_eq!(got, instants.to_vec(), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_and_null_timestamps_are_counted_not_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let engine = engine(2).await;
    let strings: ArrayRef = Arc::new(StringArray::from(vec![
        Some("2023-03-01T00:00:00Z"),
        Some("not a time"),
        Some("2023-13-45"),
        Some("2023-03-01T01:00:00Z"),
        Some("01/03/2023"),
    ]));
    write_parquet(&tmp.path().join("s/data/x.parquet"), &ts_batch(strings));
    let dir = write_spec(
        &tmp.path().join("s/spec"),
        &precomputed("parquet", "../data", None, "long"),
    );
    let err = run_window(&engine, &dir, t("2023-03-01"), t("2023-03-02"))
        .await
        .unwrap_err();
    match &err {
        JobsError::BadTimestamps {
            failed,
            first,
            column,
            ..
        } => {
            assert_eq!(*failed, 3, "{err}");
            assert_eq!(column, "timestamp");
            assert_eq!(first, "'01/03/2023'", "the smallest bad value is shown");
        }
        other => panic!("expected BadTimestamps, got {other}"),
    }
    assert!(err.to_string().contains("ISO-8601"), "{err}");

    let nulls: ArrayRef = Arc::new(TimestampNanosecondArray::from(vec![
        Some(t("2023-03-01T02:00:00Z") * 1000),
        None,
    ]));
    write_parquet(&tmp.path().join("n/data/x.parquet"), &ts_batch(nulls));
    let dir = write_spec(
        &tmp.path().join("n/spec"),
        &precomputed("parquet", "../data", None, "long"),
    );
    let err = run_window(&engine, &dir, t("2023-03-01"), t("2023-03-02"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, JobsError::BadTimestamps { failed: 1, first, .. } if first == "null"),
        "{err}"
    );
}

async fn error_of(engine: &almanac_jobs::engine::Engine, dir: &Path) -> String {
    run_window(engine, dir, t("2023-02-01"), t("2023-02-02"))
        .await
        .expect_err("should fail")
        .to_string()
}

/// Runs each `(spec yaml, expected error text)` case in its own spec folder under `root` and
/// returns the errors, having checked each contains its expected text.
async fn failing_cases(
    engine: &almanac_jobs::engine::Engine,
    root: &Path,
    cases: &[(String, &str)],
) -> Vec<String> {
    let mut errors = Vec::new();
    for (i, (yaml, expected)) in cases.iter().enumerate() {
        let dir = write_spec(&root.join(format!("spec{i}")), yaml);
        let err = error_of(engine, &dir).await;
        assert!(
            err.contains(expected),
            "case {i}: expected '{expected}' in:\n{err}"
        );
        errors.push(err);
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_sources_and_columns_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &sample_rows()),
    );
    let engine = engine(2).await;
    let cases = [
        (
            precomputed("parquet", "../nowhere", None, "double"),
            "nowhere: does not exist",
        ),
        (
            precomputed("parquet", "../data/*.csv", None, "double"),
            "matches no files",
        ),
        (
            precomputed("parquet", "../nowhere/*.parquet", None, "double"),
            "does not exist",
        ),
        (
            precomputed("csv", "../data", None, "double"),
            "matches no .csv files",
        ),
        (
            precomputed("parquet", "../data", None, "integer"),
            "feature 'amount' is declared integer but the transformation produces double (Float64) (declare it as double)",
        ),
        (
            precomputed("parquet", "../data", None, "double")
                .replace("name: timestamp", "name: when"),
            "has no column 'when'",
        ),
        (
            precomputed("parquet", "../data", None, "double")
                .replace("- name: amount", "- name: price"),
            "the source has no column 'price'",
        ),
        (
            precomputed("delta", "../data", None, "double"),
            "is not a Delta Lake table",
        ),
        (
            precomputed("parquet", "../data", Some("epoch_ms"), "double"),
            "format 'epoch_ms' reads integers, but 'timestamp' is Timestamp",
        ),
    ];
    failing_cases(&engine, tmp.path(), &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_sql_and_dsl_columns_are_reported_against_the_spec() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &sample_rows()),
    );
    let engine = engine(2).await;
    let sql = |q: &str, feature_type: &str| {
        format!(
            "{}feature_transformation:\n  sql: \"{q}\"\n",
            precomputed("parquet", "../data", None, feature_type)
        )
    };
    let cases = [
        (
            sql("SELEC k FROM source", "double"),
            "feature_transformation.sql is not a valid query",
        ),
        (
            sql("SELECT k, timestamp, nope AS amount FROM source", "double"),
            "nope",
        ),
        (
            sql("SELECT k, timestamp FROM source", "double"),
            "feature 'amount' is declared but the transformation does not produce it",
        ),
        (
            sql(
                "SELECT k, timestamp, CAST(amount AS BIGINT) AS amount FROM source",
                "double",
            ),
            "declared double but the transformation produces long",
        ),
        (
            sql("CREATE TABLE x AS SELECT 1", "double"),
            "not a valid query",
        ),
        (
            sql("SELECT k, 5 AS timestamp, amount FROM source", "double"),
            "timestamp column 'timestamp' must be a timestamp",
        ),
        (
            dsl_spec("../data", &["k"], &[("s", "sum", 60)], 60)
                .replace("source_column: amount", "source_column: amt"),
            "transformation_expressions[0].source_column: the source has no column 'amt'",
        ),
        (
            dsl_spec("../data", &["k"], &[("s", "sum", 60)], 60)
                .replace("type: double", "type: long"),
            "declared long but the transformation produces double",
        ),
    ];
    for (i, err) in failing_cases(&engine, tmp.path(), &cases)
        .await
        .iter()
        .enumerate()
    {
        assert!(
            err.contains("FeatureSetSpec.yaml"),
            "case {i}: the spec file is named:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delta_sources_read_the_current_version_only() {
    let tmp = tempfile::tempdir().unwrap();
    let table = tmp.path().join("delta");
    std::fs::create_dir_all(&table).unwrap();
    let url = url::Url::from_directory_path(&table).unwrap();
    let rows = sample_rows();
    let batch = |r: &[SourceRow]| {
        // Delta stores timestamps as µs with a UTC zone.
        let b = rows_batch(&["k"], r);
        let ts = datafusion::arrow::compute::cast(
            b.column(1),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        )
        .unwrap();
        let schema = Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("timestamp", ts.data_type().clone(), false),
            Field::new("amount", DataType::Float64, true),
        ]);
        RecordBatch::try_new(
            Arc::new(schema),
            vec![b.column(0).clone(), ts, b.column(2).clone()],
        )
        .unwrap()
    };
    let t1 = deltalake::DeltaTable::try_from_url(url.clone())
        .await
        .unwrap()
        .write(vec![batch(&rows[..2])])
        .await
        .unwrap();
    t1.write(vec![batch(&rows[2..])])
        .with_save_mode(deltalake::protocol::SaveMode::Overwrite)
        .await
        .unwrap();
    let dir = write_spec(
        &tmp.path().join("spec"),
        &precomputed("delta", "../delta", None, "double"),
    );
    let engine = engine(2).await;
    let out = run_window(&engine, &dir, t("2023-02-01"), t("2023-02-01") + DAY)
        .await
        .unwrap();
    let m = result_map(&out, &["k"], "timestamp");
    assert_eq!(m.len(), 4, "the overwritten version's files are not read");
    assert!(m.keys().all(|(_, ts)| *ts >= rows[2].ts));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_time_range_is_pushed_into_the_parquet_scan() {
    let tmp = tempfile::tempdir().unwrap();
    write_parquet(
        &tmp.path().join("data/x.parquet"),
        &rows_batch(&["k"], &sample_rows()),
    );
    let dir = write_spec(
        &tmp.path().join("spec"),
        &precomputed("parquet", "../data", None, "double"),
    );
    let engine = engine(2).await;
    let loaded = almanac_jobs::spec::LoadedSpec::load(&dir).unwrap();
    let window = almanac_jobs::source::TimeRange {
        start: t("2023-02-01"),
        end: t("2023-02-02"),
    };
    let planned = almanac_jobs::compute::plan_window(&engine, &loaded, window)
        .await
        .unwrap();
    let plan = planned
        .frame
        .into_optimized_plan()
        .unwrap()
        .display_indent()
        .to_string();
    let scan = plan
        .lines()
        .find(|l| l.contains("TableScan"))
        .expect("a table scan");
    // The scan carries a filter on the raw timestamp column, so row groups outside the window
    // are skipped by their statistics.
    assert!(
        scan.contains("timestamp >= TimestampMicrosecond(1675209600000000"),
        "{plan}"
    );
    assert!(
        scan.contains("timestamp <= TimestampMicrosecond(1675296000000000"),
        "{plan}"
    );
}
