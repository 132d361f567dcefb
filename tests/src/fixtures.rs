//! Writing test inputs and reading engine outputs into plain values.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::parquet::arrow::ArrowWriter;

use crate::oracle::{RowKey, SourceRow};

/// Microseconds of an RFC 3339 / `YYYY-MM-DD HH:MM[:SS]` UTC time.
pub fn t(text: &str) -> i64 {
    almanac_jobs::time::parse_instant(text).expect("valid test time")
}

pub const MINUTE: i64 = 60_000_000;
pub const HOUR: i64 = 60 * MINUTE;
pub const DAY: i64 = 24 * HOUR;

/// Writes a batch to a parquet file, creating folders.
pub fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().expect("file has a folder")).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A batch of `(key columns..., timestamp, amount)` rows with string keys, µs timestamps without
/// a time zone and a nullable double `amount`.
pub fn rows_batch(key_names: &[&str], rows: &[SourceRow]) -> RecordBatch {
    let mut fields: Vec<Field> = key_names
        .iter()
        .map(|k| Field::new(*k, DataType::Utf8, true))
        .collect();
    fields.push(Field::new(
        "timestamp",
        DataType::Timestamp(TimeUnit::Microsecond, None),
        false,
    ));
    fields.push(Field::new("amount", DataType::Float64, true));
    let mut columns: Vec<ArrayRef> = (0..key_names.len())
        .map(|i| {
            Arc::new(
                rows.iter()
                    .map(|r| r.keys[i].clone())
                    .collect::<StringArray>(),
            ) as ArrayRef
        })
        .collect();
    columns.push(Arc::new(TimestampMicrosecondArray::from_iter_values(
        rows.iter().map(|r| r.ts),
    )));
    columns.push(Arc::new(
        rows.iter().map(|r| r.value).collect::<Float64Array>(),
    ));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap()
}

/// Reads engine output into the oracle's shape: keys as strings, the timestamp in µs and every
/// other column cast to double.
pub fn result_map(
    batches: &[RecordBatch],
    key_names: &[&str],
    ts_name: &str,
) -> BTreeMap<RowKey, Vec<Option<f64>>> {
    let mut out = BTreeMap::new();
    for b in batches {
        let schema = b.schema();
        let keys: Vec<ArrayRef> = key_names
            .iter()
            .map(|k| cast(b.column_by_name(k).expect("key column"), &DataType::Utf8).unwrap())
            .collect();
        let ts = cast(
            b.column_by_name(ts_name).expect("timestamp column"),
            &DataType::Int64,
        )
        .unwrap();
        let ts = ts.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let features: Vec<ArrayRef> = schema
            .fields()
            .iter()
            .filter(|f| !key_names.contains(&f.name().as_str()) && f.name() != ts_name)
            .map(|f| cast(b.column_by_name(f.name()).unwrap(), &DataType::Float64).unwrap())
            .collect();
        for row in 0..b.num_rows() {
            let k: Vec<Option<String>> = keys
                .iter()
                .map(|a| (!a.is_null(row)).then(|| a.as_string::<i32>().value(row).to_string()))
                .collect();
            let v: Vec<Option<f64>> = features
                .iter()
                .map(|a| {
                    (!a.is_null(row)).then(|| {
                        a.as_primitive::<datafusion::arrow::datatypes::Float64Type>()
                            .value(row)
                    })
                })
                .collect();
            let previous = out.insert((k, ts.value(row)), v);
            assert!(
                previous.is_none(),
                "engine returned a (key, timestamp) twice"
            );
        }
    }
    out
}

/// Reads a parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let file = std::fs::File::open(path).unwrap();
    datafusion::parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap()
        .map(|b| b.unwrap())
        .collect()
}

/// Reads every file of a folder, in file name order.
pub fn read_folder(dir: &Path) -> Vec<RecordBatch> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().flat_map(|f| read_parquet(f)).collect()
}
