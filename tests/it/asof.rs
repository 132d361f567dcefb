//! The as-of join operator on its own, planned by hand and run through Ballista (so through
//! Almanac's logical and physical codecs).

use std::collections::BTreeMap;
use std::sync::Arc;

use almanac_jobs::asof_join::{AsOfJoinNode, AsOfJoinParams};
use almanac_tests::fixtures::{HOUR, t, write_parquet};
use datafusion::arrow::array::{
    Array, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, TimeUnit};
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion::prelude::{DataFrame, ParquetReadOptions};

use crate::common::engine;

fn utc() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

fn stamps(values: Vec<Option<i64>>) -> TimestampMicrosecondArray {
    TimestampMicrosecondArray::from(values).with_timezone("UTC")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_creation_time_wins_a_timestamp_tie_whatever_the_values() {
    let tmp = tempfile::tempdir().unwrap();
    let t0 = t("2024-05-01 08:00");
    let obs = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("k", DataType::Utf8, true),
            Field::new("t", utc(), true),
        ])),
        vec![
            Arc::new(Int64Array::from(vec![0, 1, 2, 3])),
            Arc::new(StringArray::from(vec![
                Some("x"),
                Some("y"),
                Some("z"),
                Some("x"),
            ])),
            Arc::new(stamps(vec![Some(t0), Some(t0), Some(t0), None])),
        ],
    )
    .unwrap();
    // x: same timestamp, the later creation has the smaller value and must win.
    // y: same timestamp and creation: the greater value wins.
    // z: a null creation time is the earliest.
    let features = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("ts", utc(), false),
            Field::new("created", utc(), true),
            Field::new("v", DataType::Int64, true),
        ])),
        vec![
            Arc::new(StringArray::from(vec!["x", "x", "y", "y", "z", "z"])),
            Arc::new(stamps(vec![Some(t0 - HOUR); 6])),
            Arc::new(stamps(vec![
                Some(t0 - 10),
                Some(t0 - 5),
                Some(t0 - 5),
                Some(t0 - 5),
                None,
                Some(t0 - 50),
            ])),
            Arc::new(Int64Array::from(vec![9, 1, 3, 4, 100, 7])),
        ],
    )
    .unwrap();
    let obs_path = tmp.path().join("obs.parquet");
    let features_path = tmp.path().join("features.parquet");
    write_parquet(&obs_path, &obs);
    write_parquet(&features_path, &features);

    let engine = engine(2).await;
    let ctx = engine.session();
    let left = ctx
        .read_parquet(obs_path.to_str().unwrap(), ParquetReadOptions::default())
        .await
        .unwrap();
    let right = ctx
        .read_parquet(
            features_path.to_str().unwrap(),
            ParquetReadOptions::default(),
        )
        .await
        .unwrap();
    let params = AsOfJoinParams {
        left_keys: vec!["k".into()],
        right_keys: vec!["k".into()],
        left_time: "t".into(),
        right_time: "ts".into(),
        lookback: None,
        delay: 0,
        tiebreak: vec!["created".into(), "v".into()],
        outputs: vec![("v".into(), "value".into())],
        match_column: "matched".into(),
    };
    let node = AsOfJoinNode::try_new(
        left.into_unoptimized_plan(),
        right.into_unoptimized_plan(),
        params,
    )
    .unwrap();
    let plan = LogicalPlan::Extension(Extension {
        node: Arc::new(node),
    });
    let batches = DataFrame::new(ctx.state(), plan).collect().await.unwrap();
    let mut got = BTreeMap::new();
    for b in &batches {
        let ids = b.column_by_name("id").unwrap().as_primitive::<Int64Type>();
        let values = b
            .column_by_name("value")
            .unwrap()
            .as_primitive::<Int64Type>();
        let matched = b.column_by_name("matched").unwrap().as_boolean();
        for r in 0..b.num_rows() {
            let v = (!values.is_null(r)).then(|| values.value(r));
            got.insert(ids.value(r), (v, matched.value(r)));
        }
    }
    assert_eq!(
        got,
        BTreeMap::from([
            (0, (Some(1), true)),
            (1, (Some(4), true)),
            (2, (Some(7), true)),
            (3, (None, false)),
        ]),
        "a null observation time matches nothing"
    );
}
