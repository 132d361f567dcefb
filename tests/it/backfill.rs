//! Backfill jobs against a registered feature set: intervals, a failing task and its retry,
//! reruns, Pending windows and bad input.

use std::path::Path;
use std::sync::Arc;

use almanac_jobs::backfill::{BackfillOptions, backfill, retry_job};
use almanac_jobs::materialize::{DataStatus, Interval};
use almanac_jobs::offline::table_url;
use almanac_jobs::registry::{FeatureSetRef, Registry, RunState};
use almanac_jobs::source::TimeRange;
use almanac_jobs::spec::EntitySpec;
use almanac_tests::fixtures::{DAY, HOUR, t, write_parquet};
use datafusion::arrow::array::{Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::prelude::SessionContext;

use crate::common::{engine, run_options};

/// Four days of rows for two accounts; `f = 100 / amount`, so a zero amount fails its day.
fn write_source(path: &Path, zero_on_day: Option<i64>) {
    let start = t("2024-02-01");
    let mut accounts = Vec::new();
    let mut stamps = Vec::new();
    let mut amounts = Vec::new();
    for d in 0..4 {
        for h in [1, 7, 13] {
            for a in ["a", "b"] {
                accounts.push(a);
                stamps.push(start + d * DAY + h * HOUR);
                let zero = zero_on_day == Some(d) && h == 7 && a == "b";
                amounts.push(if zero { 0 } else { d + h });
            }
        }
    }
    let batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("accountID", DataType::Utf8, false),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                false,
            ),
            Field::new("amount", DataType::Int64, false),
        ])),
        vec![
            Arc::new(StringArray::from(accounts)),
            Arc::new(TimestampMicrosecondArray::from(stamps)),
            Arc::new(Int64Array::from(amounts)),
        ],
    )
    .unwrap();
    write_parquet(path, &batch);
}

fn register(root: &Path, home: &Path, offline: bool) -> FeatureSetRef {
    let dir = root.join(if offline { "ratio" } else { "ratio_live" });
    std::fs::create_dir_all(dir.join("spec")).unwrap();
    std::fs::write(
        dir.join("spec/FeatureSetSpec.yaml"),
        "source:\n  type: parquet\n  path: ../../data/*.parquet\n  timestamp_column:\n    name: timestamp\n\
         index_columns:\n  - name: accountID\n    type: string\nfeatures:\n  - name: ratio\n    type: long\n\
         feature_transformation:\n  sql: SELECT accountID, timestamp, 100 / amount AS ratio FROM source\n",
    )
    .unwrap();
    let name = if offline { "ratio" } else { "ratio_live" };
    std::fs::write(
        dir.join("asset.yaml"),
        format!(
            "name: {name}\nversion: '1'\nentities: [account:1]\nspecification:\n  path: spec\n\
             materialization_settings:\n  offline_enabled: {offline}\n"
        ),
    )
    .unwrap();
    let mut registry = Registry::open(home).unwrap();
    registry
        .create_entity(
            &EntitySpec::from_yaml(
                "name: account\nversion: '1'\nindex_columns:\n  - name: accountID\n    type: string\n",
                Path::new("account.yaml"),
            )
            .unwrap(),
        )
        .unwrap();
    registry
        .create_feature_set(&dir.join("asset.yaml"))
        .unwrap()
        .0
}

/// (accountID, timestamp µs, ratio) rows of the offline table, read by delta-rs.
async fn offline_rows(home: &Path, r: &FeatureSetRef) -> Vec<(String, i64, i64)> {
    let root = Registry::open(home).unwrap().offline_root().unwrap();
    let table = deltalake::open_table(table_url(&root, r).unwrap())
        .await
        .unwrap();
    let ctx = SessionContext::new();
    ctx.register_table("t", table.table_provider().await.unwrap())
        .unwrap();
    let batches = ctx
        .sql("SELECT \"accountID\", CAST(timestamp AS BIGINT) AS ts, ratio FROM t ORDER BY 1, 2")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let mut out = Vec::new();
    for b in batches {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::Int64Type;
        let accounts = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
        let accounts = accounts.as_string::<i32>();
        let ts = b.column(1).as_primitive::<Int64Type>();
        let ratio = b.column(2).as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            out.push((accounts.value(i).to_string(), ts.value(i), ratio.value(i)));
        }
    }
    out
}

fn day(d: i64) -> TimeRange {
    let start = t("2024-02-01");
    TimeRange {
        start: start + d * DAY,
        end: start + (d + 1) * DAY,
    }
}

fn span(a: i64, b: i64) -> TimeRange {
    TimeRange {
        start: day(a).start,
        end: day(b).start,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_leaves_its_window_incomplete_and_a_retry_completes_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    write_source(&root.join("data/part-0.parquet"), Some(2));
    let r = register(root, &home, true);
    let engine = engine(2).await;
    let options = |window, statuses: &[DataStatus]| BackfillOptions {
        feature_set: r.clone(),
        window,
        statuses: statuses.to_vec(),
        partition: DAY,
    };
    let fresh = [DataStatus::None, DataStatus::Incomplete];

    let report = backfill(
        &engine,
        &home,
        &options(span(0, 4), &fresh),
        &run_options(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.state, Some(RunState::Failed));
    assert_eq!(report.failed(), 1);
    let failed = report.tasks.iter().find(|t| t.result.is_err()).unwrap();
    assert_eq!(failed.window, day(2));
    assert!(
        failed.result.as_ref().unwrap_err().contains("DivideByZero"),
        "{:?}",
        failed.result
    );
    let timeline = Registry::open(&home).unwrap().timeline(&r).unwrap();
    assert_eq!(
        timeline.intervals(),
        &[
            Interval {
                start: day(0).start,
                end: day(2).start,
                status: DataStatus::Complete
            },
            Interval {
                start: day(2).start,
                end: day(3).start,
                status: DataStatus::Incomplete
            },
            Interval {
                start: day(3).start,
                end: day(4).start,
                status: DataStatus::Complete
            },
        ]
    );
    // No row of the failed attempt is visible.
    let rows = offline_rows(&home, &r).await;
    assert_eq!(rows.len(), 18);
    assert!(
        rows.iter()
            .all(|(_, ts, _)| *ts < day(2).start || *ts >= day(3).start)
    );

    // Fix the data; retrying the job reruns exactly the failed task.
    write_source(&root.join("data/part-0.parquet"), None);
    let job = report.job.clone().unwrap();
    let retry = retry_job(&engine, &home, &job, &run_options(), &|_| {})
        .await
        .unwrap();
    assert_eq!(
        (retry.state, retry.tasks.len()),
        (Some(RunState::Succeeded), 1)
    );
    let registry = Registry::open(&home).unwrap();
    assert_eq!(
        registry.timeline(&r).unwrap().intervals(),
        &[Interval {
            start: day(0).start,
            end: day(4).start,
            status: DataStatus::Complete
        }],
        "adjacent Complete intervals merge"
    );
    let info = registry.job(&job).unwrap().unwrap();
    assert_eq!(info.state, RunState::Succeeded);
    assert_eq!(info.tasks[2].attempts, 2);
    drop(registry);
    let rows = offline_rows(&home, &r).await;
    assert_eq!(rows.len(), 24);
    assert!(rows.contains(&("b".to_string(), day(2).start + 7 * HOUR, 100 / 9)));

    // Rerunning Complete windows replaces them: the same rows, nothing duplicated.
    let rerun = backfill(
        &engine,
        &home,
        &options(span(1, 3), &[DataStatus::Complete]),
        &run_options(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(
        (rerun.state, rerun.tasks.len()),
        (Some(RunState::Succeeded), 2)
    );
    assert_eq!(offline_rows(&home, &r).await, rows);
    // Asking for None and Incomplete only: nothing left to do.
    let nothing = backfill(
        &engine,
        &home,
        &options(span(0, 4), &fresh),
        &run_options(),
        &|_| {},
    )
    .await
    .unwrap();
    assert!(nothing.job.is_none());

    // A window another job holds is skipped, and said so.
    let holder = Registry::open(&home)
        .unwrap()
        .create_backfill_job(&r, day(5), &[day(5)], None)
        .unwrap();
    let report = backfill(
        &engine,
        &home,
        &options(span(4, 7), &fresh),
        &run_options(),
        &|_| {},
    )
    .await
    .unwrap();
    assert_eq!(report.skipped_pending, vec![day(5)]);
    let windows: Vec<TimeRange> = report.tasks.iter().map(|t| t.window).collect();
    assert_eq!(windows, vec![day(4), day(6)]);
    assert!(
        Registry::open(&home)
            .unwrap()
            .job(&holder)
            .unwrap()
            .is_some()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_backfills_fail_clearly_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let home = root.join("store");
    write_source(&root.join("data/part-0.parquet"), None);
    let r = register(root, &home, true);
    let live = register(root, &home, false);
    let engine = engine(1).await;
    let run = |r: &FeatureSetRef, window, partition| {
        let options = BackfillOptions {
            feature_set: r.clone(),
            window,
            statuses: vec![DataStatus::None],
            partition,
        };
        let engine = &engine;
        let home = &home;
        async move {
            backfill(engine, home, &options, &run_options(), &|_| {})
                .await
                .unwrap_err()
                .to_string()
        }
    };
    let e = run(&live, span(0, 1), DAY).await;
    assert!(e.contains("has offline materialization off"), "{e}");
    let e = run(&FeatureSetRef::new("nope", "1"), span(0, 1), DAY).await;
    assert!(e.contains("unknown feature set nope:1"), "{e}");
    let e = run(&r, span(1, 1), DAY).await;
    assert!(e.contains("the window is empty"), "{e}");
    let e = run(&r, span(0, 1), 6 * HOUR).await;
    assert!(e.contains("must be whole days"), "{e}");
    let e = run(
        &r,
        TimeRange {
            start: day(0).start + HOUR,
            end: day(1).start,
        },
        DAY,
    )
    .await;
    assert!(e.contains("not on the partition grid"), "{e}");
    let registry = Registry::open(&home).unwrap();
    assert!(registry.timeline(&r).unwrap().intervals().is_empty());
    assert!(registry.jobs(None, 10).unwrap().is_empty());
}
