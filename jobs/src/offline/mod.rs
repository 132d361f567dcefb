//! The offline store (DESIGN.md §5): one Delta Lake table per feature set version, at
//! `<home>/offline/<name>/<version>/`, partitioned by `day` (the UTC date of the feature
//! timestamp). Rows: index columns, timestamp, features and `create_timestamp` (when the task
//! that wrote them ran); at most one row per (index key, timestamp).
//!
//! A task materializes a window. Executors write its parquet files directly into the table
//! folder (a partitioned [`PartWriterExec`](crate::part_writer::PartWriterExec)); then one Delta
//! transaction adds them, removes every file the table had in the window's days, and records
//! the task's application transaction id. A window that does not cover whole days (a
//! schedule's hour, say) rewrites the days it touches: their rows outside the window are read
//! from the snapshot the commit builds on and written again next to the window's new rows, so
//! the commit replaces exactly the window. Two tasks rewriting one day conflict in Delta's
//! commit check, and the loser's retry builds on the winner's rows. A retried task whose transaction is already
//! in the log commits nothing, so a window is never materialized twice; files of an attempt
//! that never committed are not in the log, so no reader sees them.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::common::ScalarValue;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, ExprFunctionExt, Extension, LogicalPlan, cast, lit};
use datafusion::prelude::{DataFrame, ident};
use deltalake::kernel::transaction::{CommitBuilder, CommitProperties};
use deltalake::kernel::{
    Action, Add, DataType as DeltaType, PrimitiveType, Remove, StructField, Transaction,
};
use deltalake::protocol::{DeltaOperation, SaveMode};
use deltalake::{DeltaTable, DeltaTableBuilder, DeltaTableError};
use url::Url;

use crate::compute::plan_window;
use crate::engine::Engine;
use crate::error::{EngineResultExt, JobsError, Result};
use crate::part_writer::{Layout, PartWriterNode, PartWriterParams};
use crate::registry::FeatureSetRef;
use crate::source::TimeRange;
use crate::spec::{FeatureSetSpec, FeatureType, LoadedSpec, Transformation};
use crate::time::format_instant;

/// The partition column.
pub const DAY: &str = "day";
/// When the row was written.
pub const CREATE_TIMESTAMP: &str = "create_timestamp";
const DAY_MICROS: i64 = 86_400_000_000;
/// A tally column of the writer (counted, not written): true for the window's rows, false for
/// the rows of its days kept from before.
const NEW_ROW: &str = "__almanac_new_row";

/// The table of a feature set version under the offline store root (a folder URL).
pub fn table_url(root: &Url, r: &FeatureSetRef) -> Result<Url> {
    root.join(&format!("{}/{}/", r.name, r.version))
        .map_err(|e| JobsError::InvalidInput(format!("offline store root {root}: {e}")))
}

fn delta_type(t: FeatureType) -> DeltaType {
    DeltaType::Primitive(match t {
        FeatureType::String => PrimitiveType::String,
        FeatureType::Integer => PrimitiveType::Integer,
        FeatureType::Long => PrimitiveType::Long,
        FeatureType::Float => PrimitiveType::Float,
        FeatureType::Double => PrimitiveType::Double,
        FeatureType::Binary => PrimitiveType::Binary,
        FeatureType::Boolean => PrimitiveType::Boolean,
        FeatureType::Datetime => PrimitiveType::Timestamp,
    })
}

/// The table's columns: index columns, timestamp, features, creation time, day.
fn columns(spec: &FeatureSetSpec) -> Vec<StructField> {
    let mut fields: Vec<StructField> = spec
        .index_columns
        .iter()
        .map(|c| StructField::nullable(&c.name, delta_type(c.data_type)))
        .collect();
    fields.push(StructField::not_null(
        spec.timestamp_name(),
        DeltaType::Primitive(PrimitiveType::Timestamp),
    ));
    fields.extend(
        spec.features
            .iter()
            .map(|f| StructField::nullable(&f.name, delta_type(f.data_type))),
    );
    fields.push(StructField::not_null(
        CREATE_TIMESTAMP,
        DeltaType::Primitive(PrimitiveType::Timestamp),
    ));
    fields.push(StructField::not_null(
        DAY,
        DeltaType::Primitive(PrimitiveType::String),
    ));
    fields
}

fn delta_error(url: &Url) -> impl Fn(DeltaTableError) -> JobsError + '_ {
    move |e| JobsError::Delta {
        uri: url.to_string(),
        source: Box::new(e),
    }
}

/// Opens the table, creating it if there is none yet.
pub async fn open_or_create(
    engine: &Engine,
    url: &Url,
    spec: &FeatureSetSpec,
) -> Result<DeltaTable> {
    let err = delta_error(url);
    let table = match load(engine, url).await? {
        Loaded::Table(table) => return Ok(table),
        Loaded::Missing(table) => table,
    };
    if let Ok(dir) = url.to_file_path() {
        // delta-rs wants a local table folder to exist before it writes a log in it.
        std::fs::create_dir_all(&dir)
            .map_err(|e| JobsError::io("cannot create the offline store folder", &dir, e))?;
    }
    let created = deltalake::operations::create::CreateBuilder::new()
        .with_log_store(table.log_store())
        .with_columns(columns(spec))
        .with_partition_columns([DAY])
        .with_save_mode(SaveMode::Ignore)
        // Creation is version 0 or nothing. delta-rs would otherwise retry a losing create
        // as version 1, and its conflict check lets that second table definition through
        // (seen in the concurrent-commit tests): every writer that read version 0 then fails.
        .with_commit_properties(CommitProperties::default().with_max_retries(0))
        .await;
    match created {
        Ok(created) => {
            tracing::info!(table = %url, "offline store table created");
            Ok(created)
        }
        // Two jobs creating the table at once: the loser's commit conflicts, and the
        // winner's table is the one to use.
        Err(e) => match load(engine, url).await? {
            Loaded::Table(table) => Ok(table),
            Loaded::Missing(_) => Err(err(e)),
        },
    }
}

/// A table's state: loaded, or not created yet (an unloaded handle to create it with).
enum Loaded {
    Table(DeltaTable),
    Missing(DeltaTable),
}

/// Loads the table at `url` without creating anything.
async fn load(engine: &Engine, url: &Url) -> Result<Loaded> {
    crate::storage::register_delta_log_stores();
    let ctx = engine.session();
    let listing = datafusion::datasource::listing::ListingTableUrl::parse(url.as_str())
        .context(|| format!("offline store {url}"))?;
    let store = ctx
        .runtime_env()
        .object_store(&listing)
        .context(|| format!("offline store {url}"))?;
    let err = delta_error(url);
    let mut table = DeltaTableBuilder::from_url(url.clone())
        .map_err(&err)?
        .with_storage_backend(store, url.clone())
        .build()
        .map_err(&err)?;
    // A local folder without a log is no table yet: skip the load that would fail (and log
    // an error) on it.
    if url
        .to_file_path()
        .is_ok_and(|dir| !dir.join("_delta_log").exists())
    {
        return Ok(Loaded::Missing(table));
    }
    match table.load().await {
        Ok(()) => Ok(Loaded::Table(table)),
        Err(DeltaTableError::NotATable(_)) => Ok(Loaded::Missing(table)),
        Err(e) => Err(err(e)),
    }
}

/// What a task's commit did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskCommit {
    /// Rows of the window written (not counting the rows of its days outside it that a window
    /// of part of a day writes again).
    pub rows: u64,
    pub files: usize,
    /// Files of earlier commits the window replaced.
    pub replaced: usize,
    /// The table version committed; `None` when this task's transaction was already in the
    /// log (a retry of a task that had committed).
    pub version: Option<u64>,
}

/// The UTC days (`YYYY-MM-DD`) a window touches.
fn days(window: TimeRange) -> Vec<String> {
    let mut out = Vec::new();
    let mut d = window.start.div_euclid(DAY_MICROS) * DAY_MICROS;
    while d < window.end {
        out.push(format_instant(d)[..10].to_string());
        d += DAY_MICROS;
    }
    out
}

/// Materializes `window` of a spec into its offline table and commits it as application
/// transaction `(app_id, txn_version)`.
pub async fn materialize_task(
    engine: &Engine,
    url: &Url,
    loaded: &LoadedSpec,
    window: TimeRange,
    app_id: &str,
    txn_version: i64,
) -> Result<TaskCommit> {
    if window.start >= window.end {
        return Err(JobsError::InvalidInput(format!(
            "an offline store window must not be empty; got [{}, {})",
            format_instant(window.start),
            format_instant(window.end)
        )));
    }
    let spec = &loaded.spec;
    let mut table = open_or_create(engine, url, spec).await?;
    let err = delta_error(url);
    let snapshot = table.snapshot().map_err(&err)?;
    let committed = snapshot
        .transaction_version(table.log_store().as_ref(), app_id)
        .await
        .map_err(&err)?;
    if committed.is_some_and(|v| v >= txn_version) {
        tracing::info!(table = %url, app_id, "task already committed; nothing to do");
        return Ok(TaskCommit {
            rows: 0,
            files: 0,
            replaced: 0,
            version: None,
        });
    }

    let fence = engine.fence_mark().await;
    let ctx = engine.session();
    let planned = plan_window(engine, loaded, window).await?;
    let source = planned.source.clone();
    let read_range = planned.read_range;
    // The DSL emits one row per (index key, timestamp) by construction (it groups by them), so
    // only SQL and precomputed sets pay for a second shuffle and sort to deduplicate.
    let frame = match spec.feature_transformation {
        Some(Transformation::TransformationExpressions(_)) => planned.frame,
        _ => deduplicated(planned.frame, spec)?,
    };
    let now = chrono::Utc::now().timestamp_micros();
    let mut select: Vec<Expr> = spec.index_names().into_iter().map(ident).collect();
    select.push(ident(spec.timestamp_name()));
    select.extend(spec.features.iter().map(|f| ident(&f.name)));
    select.push(
        lit(ScalarValue::TimestampMicrosecond(
            Some(now),
            Some("UTC".into()),
        ))
        .alias(CREATE_TIMESTAMP),
    );
    select.push(day_expr(spec));
    select.push(lit(true).alias(NEW_ROW));
    let mut rows = frame
        .select(select)
        .context(|| format!("cannot plan materializing {}", loaded.file.display()))?;
    let window_days = days(window);
    if window.start.rem_euclid(DAY_MICROS) != 0 || window.end.rem_euclid(DAY_MICROS) != 0 {
        let files = snapshot_files(
            snapshot,
            url,
            window_days.first().expect("non-empty window"),
            window_days.last().expect("non-empty window"),
        )?;
        if let Some(kept) = scan_files(engine, url, files, spec).await? {
            let ts = spec.timestamp_name();
            let kept = kept
                .filter(
                    ident(ts)
                        .lt(utc_literal(window.start))
                        .or(ident(ts).gt_eq(utc_literal(window.end))),
                )
                .and_then(|df| {
                    df.select(
                        offline_columns(spec)
                            .into_iter()
                            .chain([day_expr(spec), lit(false).alias(NEW_ROW)])
                            .collect::<Vec<_>>(),
                    )
                })
                .and_then(|kept| rows.union(kept))
                .context(|| format!("cannot plan rewriting the days of {url} around the window"))?;
            rows = kept;
        }
    }
    let prefix = format!("{}-{txn_version}-{now}", sanitize(app_id));
    let writer = PartWriterNode::try_new(
        rows.into_unoptimized_plan(),
        PartWriterParams {
            dir: url.to_string(),
            layout: Layout::Partitioned {
                column: DAY.to_string(),
                file_prefix: prefix,
            },
            tally_columns: vec![NEW_ROW.to_string()],
        },
    )
    .context(|| "cannot plan writing the offline store".to_string())?;
    let report = DataFrame::new(
        ctx.state(),
        LogicalPlan::Extension(Extension {
            node: Arc::new(writer),
        }),
    )
    .collect()
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            let e = JobsError::engine(format!("materializing {}", loaded.file.display()), e);
            return Err(source.explain_failure(read_range, e).await);
        }
    };

    let mut actions: Vec<Action> = Vec::new();
    let millis = now / 1000;
    let mut total = 0u64;
    let mut files = 0usize;
    for batch in &report {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::UInt64Type;
        let names = batch.column(0).as_string::<i32>();
        let sizes = batch.column(2).as_primitive::<UInt64Type>();
        let parts = batch.column(3).as_string::<i32>();
        let new_rows = batch.column(4).as_primitive::<UInt64Type>();
        for i in 0..batch.num_rows() {
            let day = parts.value(i).to_string();
            if !window_days.contains(&day) {
                return Err(JobsError::InvalidInput(format!(
                    "internal error: a row of day {day} was computed for the window [{}, {})",
                    format_instant(window.start),
                    format_instant(window.end)
                )));
            }
            total += new_rows.value(i);
            files += 1;
            actions.push(Action::Add(Add {
                path: names.value(i).to_string(),
                partition_values: HashMap::from([(DAY.to_string(), Some(day))]),
                size: sizes.value(i) as i64,
                modification_time: millis,
                data_change: true,
                stats: None,
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
                clustering_provider: None,
            }));
        }
    }
    let mut replaced = 0;
    for file in snapshot.log_data().iter() {
        let partition = file.partition_values_map();
        let day = partition.get(DAY).cloned().flatten();
        if day.as_ref().is_some_and(|d| window_days.contains(d)) {
            replaced += 1;
            actions.push(Action::Remove(Remove {
                path: file.path().to_string(),
                data_change: true,
                deletion_timestamp: Some(millis),
                extended_file_metadata: Some(true),
                partition_values: Some(partition),
                size: Some(file.size()),
                tags: None,
                deletion_vector: None,
                base_row_id: None,
                default_row_commit_version: None,
            }));
        }
    }
    let predicate = format!(
        "{DAY} >= '{}' AND {DAY} <= '{}'",
        window_days.first().expect("non-empty window"),
        window_days.last().expect("non-empty window")
    );
    // The last moment to refuse a result computed across a lost executor.
    engine.check_fence(&fence).await?;
    // readVersion (a standard commitInfo field delta-rs leaves out) tells a reader of the log
    // which version this task read, so a commit rebased past a concurrent one shows as such.
    let read_version = snapshot.version();
    let properties = CommitProperties::default()
        .with_application_transaction(Transaction::new(app_id, txn_version))
        .with_metadata([("readVersion".to_string(), serde_json::json!(read_version))]);
    let commit = CommitBuilder::from(properties)
        .with_actions(actions)
        .build(
            Some(snapshot),
            table.log_store(),
            DeltaOperation::Write {
                mode: SaveMode::Overwrite,
                partition_by: Some(vec![DAY.to_string()]),
                predicate: Some(predicate),
            },
        )
        .await
        .map_err(&err)?;
    let version = commit.version();
    table.update_state().await.ok();
    tracing::info!(table = %url, version, rows = total, files, replaced, app_id, "offline store commit");
    Ok(TaskCommit {
        rows: total,
        files,
        replaced,
        version: Some(version),
    })
}

/// File-name-safe form of an id.
fn sanitize(id: &str) -> String {
    id.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// One row per (index key, timestamp): where a source has several, the one with the greatest
/// features (compared in spec order, nulls lowest) is kept, so the choice never depends on
/// file order or partitioning.
fn deduplicated(frame: DataFrame, spec: &FeatureSetSpec) -> Result<DataFrame> {
    const RANK: &str = "__almanac_rank";
    let mut partition: Vec<Expr> = spec.index_names().into_iter().map(ident).collect();
    partition.push(ident(spec.timestamp_name()));
    let order = spec
        .features
        .iter()
        .map(|f| ident(&f.name).sort(false, false))
        .collect();
    let rank = row_number()
        .partition_by(partition)
        .order_by(order)
        .build()
        .context(|| "cannot plan deduplication".to_string())?
        .alias(RANK);
    let columns: Vec<Expr> = frame
        .schema()
        .fields()
        .iter()
        .map(|f| ident(f.name()))
        .collect();
    frame
        .window(vec![rank])
        .and_then(|df| df.filter(ident(RANK).eq(lit(1u64))))
        .and_then(|df| df.select(columns))
        .context(|| "cannot plan deduplication".to_string())
}

/// The partition column's value: the UTC date of the feature timestamp as YYYY-MM-DD, by casts
/// alone (no function the executors must know).
fn day_expr(spec: &FeatureSetSpec) -> Expr {
    cast(
        cast(ident(spec.timestamp_name()), DataType::Date32),
        DataType::Utf8,
    )
    .alias(DAY)
}

/// The stored columns but the partition: index columns, timestamp, features, creation time.
fn offline_columns(spec: &FeatureSetSpec) -> Vec<Expr> {
    let mut columns: Vec<Expr> = spec.index_names().into_iter().map(ident).collect();
    columns.push(ident(spec.timestamp_name()));
    columns.extend(spec.features.iter().map(|f| ident(&f.name)));
    columns.push(ident(CREATE_TIMESTAMP));
    columns
}

fn utc_literal(micros: i64) -> Expr {
    lit(ScalarValue::TimestampMicrosecond(
        Some(micros),
        Some("UTC".into()),
    ))
}

/// The data files of a snapshot in the days `first..=last` (`YYYY-MM-DD`).
fn snapshot_files(
    snapshot: &deltalake::table::state::DeltaTableState,
    url: &Url,
    first: &str,
    last: &str,
) -> Result<Vec<datafusion::datasource::listing::ListingTableUrl>> {
    let mut files = Vec::new();
    for f in snapshot.log_data().iter() {
        let day = f.partition_values_map().get(DAY).cloned().flatten();
        if day.is_some_and(|d| d.as_str() >= first && d.as_str() <= last) {
            let file = url.join(&f.path()).map_err(|e| {
                JobsError::InvalidInput(format!("offline store {url}: bad file path: {e}"))
            })?;
            files.push(
                datafusion::datasource::listing::ListingTableUrl::parse(file.as_str())
                    .context(|| format!("offline store {url}"))?,
            );
        }
    }
    Ok(files)
}

/// The stored rows of `files` (index columns, timestamp, features, creation time); `None` for
/// no file. The files are scanned as plain parquet, so executors need no Delta reader.
async fn scan_files(
    engine: &Engine,
    url: &Url,
    files: Vec<datafusion::datasource::listing::ListingTableUrl>,
    spec: &FeatureSetSpec,
) -> Result<Option<DataFrame>> {
    let Some(first) = files.first() else {
        return Ok(None);
    };
    let ctx = engine.session();
    let state = ctx.state();
    let options = datafusion::datasource::listing::ListingOptions::new(Arc::new(
        datafusion::datasource::file_format::parquet::ParquetFormat::default()
            .with_options(state.table_options().parquet.clone()),
    ));
    let schema = options
        .infer_schema(&state, first)
        .await
        .context(|| format!("cannot read the offline store {url}"))?;
    let config = datafusion::datasource::listing::ListingTableConfig::new_with_multi_paths(files)
        .with_listing_options(options)
        .with_schema(schema);
    let table = datafusion::datasource::listing::ListingTable::try_new(config)
        .context(|| format!("cannot read the offline store {url}"))?;
    ctx.read_table(Arc::new(table))
        .and_then(|df| df.select(offline_columns(spec)))
        .context(|| format!("cannot read the offline store {url}"))
        .map(Some)
}

/// The materialized rows of `range` (index columns, timestamp, features, creation time), read
/// from only the day partitions the range touches; `None` when no day in range has any.
pub async fn read_range(
    engine: &Engine,
    url: &Url,
    spec: &FeatureSetSpec,
    range: TimeRange,
) -> Result<Option<DataFrame>> {
    // Reading never creates a table: none yet means nothing materialized.
    let table = match load(engine, url).await? {
        Loaded::Table(table) => table,
        Loaded::Missing(_) => return Ok(None),
    };
    let range_days = days(range);
    let (Some(first), Some(last)) = (range_days.first(), range_days.last()) else {
        return Ok(None);
    };
    let files = snapshot_files(
        table.snapshot().map_err(delta_error(url))?,
        url,
        first,
        last,
    )?;
    let Some(frame) = scan_files(engine, url, files, spec).await? else {
        return Ok(None);
    };
    let ts = spec.timestamp_name();
    frame
        .filter(
            ident(ts)
                .gt_eq(utc_literal(range.start))
                .and(ident(ts).lt(utc_literal(range.end))),
        )
        .context(|| format!("cannot read the offline store {url}"))
        .map(Some)
}
