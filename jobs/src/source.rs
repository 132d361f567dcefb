//! Reading a feature set's source: parquet, csv or Delta Lake, from a file, folder or glob on
//! the local disk or in object storage.
//!
//! A source becomes a DataFusion listing table (which Ballista ships to executors as a plan
//! node), and then a *prepared* frame whose timestamp column holds instants in the canonical
//! type. Reads are restricted to a time range with a filter on the raw column where its type
//! allows, so parquet row groups and pages outside the range are skipped.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use datafusion::common::ScalarValue;
use datafusion::datasource::file_format::FileFormat;
use datafusion::datasource::file_format::csv::CsvFormat;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::functions_aggregate::expr_fn::{count, min};
use datafusion::logical_expr::{Expr, cast, lit};
use datafusion::prelude::ident;
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;

use crate::error::{EngineResultExt, JobsError, Result};
use crate::ordered_table::OrderedFileTable;
use crate::spec::{SourceKind, SourceSpec};
use crate::timestamp::{
    PARSE_ERROR_MARKER, ParseTimestamp, TimestampCheck, TimestampFormat, is_timestamp_capable,
};

/// A half-open time range `[start, end)` in microseconds since the epoch (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TimeRange {
    pub start: i64,
    pub end: i64,
}

/// Where a source's files are, resolved from the spec's `path`.
#[derive(Debug, Clone)]
pub struct SourceLocation {
    /// What users see in messages: the path as resolved (absolute for local files).
    pub display: String,
    pub urls: Vec<ListingTableUrl>,
    /// The text `urls[0]` was parsed from, glob included.
    pub text: String,
    /// Only files with this extension are read from a folder.
    pub extension: String,
}

fn has_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn source_error(path: &str, message: impl Into<String>) -> JobsError {
    JobsError::Source {
        path: path.to_string(),
        message: message.into(),
    }
}

/// Resolves a spec path: relative paths are relative to `base_dir` (the spec's folder).
pub fn resolve_path(path: &str, base_dir: &Path) -> Result<(String, bool)> {
    if let Some(rest) = path.strip_prefix("file://") {
        return Ok((rest.to_string(), true));
    }
    if path.contains("://") {
        let url = url::Url::parse(path)
            .map_err(|e| source_error(path, format!("not a valid URL: {e}")))?;
        return Ok((url.to_string(), false));
    }
    let p = PathBuf::from(path);
    let abs = if p.is_absolute() { p } else { base_dir.join(p) };
    Ok((normalize(&abs).to_string_lossy().into_owned(), true))
}

/// Removes `.` and `..` components without touching the file system (globs may not exist).
fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .components()
    {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

pub(crate) async fn locate(
    ctx: &SessionContext,
    spec: &SourceSpec,
    base_dir: &Path,
) -> Result<SourceLocation> {
    let (resolved, local) = resolve_path(&spec.path, base_dir)?;
    let display = resolved.clone();
    let ext = match spec.kind {
        SourceKind::Parquet => ".parquet",
        SourceKind::Csv => ".csv",
        SourceKind::Delta => "",
    };
    let mut url_text = resolved.clone();
    let mut extension = String::new();
    if local && !has_glob(&resolved) {
        let p = Path::new(&resolved);
        if !p.exists() {
            return Err(source_error(&display, "does not exist"));
        }
        if p.is_dir() {
            if !url_text.ends_with('/') {
                url_text.push('/');
            }
            extension = ext.to_string();
        }
    } else if local {
        let base: PathBuf = Path::new(&resolved)
            .ancestors()
            .find(|a| !has_glob(&a.to_string_lossy()))
            .map(Path::to_path_buf)
            .unwrap_or_default();
        if !base.is_dir() {
            return Err(source_error(
                &display,
                format!("the folder {} does not exist", base.display()),
            ));
        }
    } else if resolved.ends_with('/') {
        extension = ext.to_string();
    }
    let url = crate::storage::listing_url(&url_text)
        .map_err(|e| source_error(&display, e.to_string()))?;
    if spec.kind == SourceKind::Delta {
        return Ok(SourceLocation {
            display,
            urls: vec![url],
            text: url_text,
            extension,
        });
    }
    let state = ctx.state();
    let store = state
        .runtime_env()
        .object_store(&url)
        .map_err(|e| source_error(&display, e.to_string()))?;
    let files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), &extension)
        .await
        .map_err(|e| source_error(&display, e.to_string()))?
        .try_collect()
        .await
        .map_err(|e| source_error(&display, format!("cannot list files: {e}")))?;
    if files.is_empty() {
        let what = if extension.is_empty() {
            "files".to_string()
        } else {
            format!("{extension} files")
        };
        return Err(source_error(&display, format!("matches no {what}")));
    }
    Ok(SourceLocation {
        display,
        urls: vec![url],
        text: url_text,
        extension,
    })
}

/// The file format with the session's options, so settings Ballista needs (such as reading
/// strings as `Utf8` rather than views, which Arrow Flight cannot always carry) apply.
fn format_for(
    kind: SourceKind,
    state: &datafusion::execution::SessionState,
) -> Arc<dyn FileFormat> {
    format_with(kind, state.table_options())
}

/// The file format for `kind` with the given table options (csv files have a header).
pub(crate) fn format_with(
    kind: SourceKind,
    options: &datafusion::common::config::TableOptions,
) -> Arc<dyn FileFormat> {
    match kind {
        SourceKind::Csv => Arc::new(
            CsvFormat::default()
                .with_options(options.csv.clone())
                .with_has_header(true),
        ),
        SourceKind::Parquet | SourceKind::Delta => {
            Arc::new(ParquetFormat::default().with_options(options.parquet.clone()))
        }
    }
}

/// A source opened for reading.
#[derive(Debug, Clone)]
pub struct Source {
    pub location: String,
    pub spec: SourceSpec,
    pub format: TimestampFormat,
    table: DataFrame,
}

impl Source {
    /// Opens the source and checks that its timestamp column exists and can hold timestamps.
    pub async fn open(ctx: &SessionContext, spec: &SourceSpec, base_dir: &Path) -> Result<Source> {
        Source::open_with(ctx, spec, base_dir, false).await
    }

    /// Like [`Source::open`], but read as one partition with files in path order and rows in
    /// file order ([`OrderedFileTable`]), for data whose row order is part of the contract.
    pub async fn open_ordered(
        ctx: &SessionContext,
        spec: &SourceSpec,
        base_dir: &Path,
    ) -> Result<Source> {
        if spec.kind == SourceKind::Delta {
            return Err(source_error(
                &spec.path,
                "only parquet and csv files can be read in order",
            ));
        }
        Source::open_with(ctx, spec, base_dir, true).await
    }

    async fn open_with(
        ctx: &SessionContext,
        spec: &SourceSpec,
        base_dir: &Path,
        ordered: bool,
    ) -> Result<Source> {
        let location = locate(ctx, spec, base_dir).await?;
        let (urls, extension) = if spec.kind == SourceKind::Delta {
            (
                crate::delta::data_file_urls(ctx, &location).await?,
                String::new(),
            )
        } else {
            (location.urls.clone(), location.extension.clone())
        };
        let state = ctx.state();
        let options = ListingOptions::new(format_for(spec.kind, &state))
            .with_file_extension(extension.clone());
        let schema = options
            .infer_schema(&state, &urls[0])
            .await
            .map_err(|e| source_error(&location.display, format!("cannot read its schema: {e}")))?;
        let provider: Arc<dyn datafusion::catalog::TableProvider> = if ordered {
            Arc::new(
                OrderedFileTable::try_new(
                    &location.text,
                    &extension,
                    spec.kind,
                    schema,
                    state.table_options(),
                )
                .map_err(|e| source_error(&location.display, e.to_string()))?,
            )
        } else {
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema);
            Arc::new(
                ListingTable::try_new(config)
                    .map_err(|e| source_error(&location.display, e.to_string()))?,
            )
        };
        let table = ctx
            .read_table(provider)
            .context(|| format!("cannot read source {}", location.display))?;
        let format = TimestampFormat::parse(spec.timestamp_column.format.as_deref())
            .map_err(|m| source_error(&location.display, m))?;
        let source = Source {
            location: location.display,
            spec: spec.clone(),
            format,
            table,
        };
        let ts_type = source.column_type(&spec.timestamp_column.name)?;
        if !is_timestamp_capable(&ts_type) {
            return Err(source_error(
                &source.location,
                format!(
                    "timestamp column '{}' is {ts_type}; expected a timestamp, date, string or integer epoch",
                    spec.timestamp_column.name
                ),
            ));
        }
        let mismatch = match (&source.format, &ts_type) {
            (TimestampFormat::Pattern(p), t) if t.is_integer() => Some(format!(
                "format '{p}' reads strings, but '{}' is {t}; for epochs use epoch_s, epoch_ms, epoch_us or epoch_ns",
                spec.timestamp_column.name
            )),
            (TimestampFormat::Epoch(_), t) if !t.is_integer() => Some(format!(
                "format '{}' reads integers, but '{}' is {t}",
                source.format.to_arg(),
                spec.timestamp_column.name
            )),
            _ => None,
        };
        if let Some(message) = mismatch {
            return Err(source_error(&source.location, message));
        }
        Ok(source)
    }

    /// The source's columns as stored.
    pub fn raw_schema(&self) -> SchemaRef {
        self.table.schema().inner().clone()
    }

    pub fn column_type(&self, name: &str) -> Result<DataType> {
        let schema = self.raw_schema();
        match schema.field_with_name(name) {
            Ok(f) => Ok(f.data_type().clone()),
            Err(_) => {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                Err(source_error(
                    &self.location,
                    format!(
                        "has no column '{name}'; its columns are: {}",
                        names.join(", ")
                    ),
                ))
            }
        }
    }

    fn ts_name(&self) -> &str {
        &self.spec.timestamp_column.name
    }

    /// A filter on the raw timestamp column that parquet can prune with, when the column's
    /// type orders like time. Nulls are let through so that they are reported, not dropped.
    fn raw_range_filter(&self, range: TimeRange) -> Result<Option<Expr>> {
        let raw = self.column_type(self.ts_name())?;
        let bound = |micros: i64| -> Option<ScalarValue> {
            match &raw {
                DataType::Timestamp(unit, tz) => {
                    let v = match unit {
                        TimeUnit::Second => micros.div_euclid(1_000_000),
                        TimeUnit::Millisecond => micros.div_euclid(1_000),
                        TimeUnit::Microsecond => micros,
                        TimeUnit::Nanosecond => micros.checked_mul(1_000)?,
                    };
                    Some(match unit {
                        TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz.clone()),
                        TimeUnit::Millisecond => {
                            ScalarValue::TimestampMillisecond(Some(v), tz.clone())
                        }
                        TimeUnit::Microsecond => {
                            ScalarValue::TimestampMicrosecond(Some(v), tz.clone())
                        }
                        TimeUnit::Nanosecond => {
                            ScalarValue::TimestampNanosecond(Some(v), tz.clone())
                        }
                    })
                }
                DataType::Int64 => {
                    let (per_unit, scale_up) = match self.format {
                        TimestampFormat::Epoch(TimeUnit::Millisecond) => (1_000, 1),
                        TimestampFormat::Epoch(TimeUnit::Microsecond) => (1, 1),
                        TimestampFormat::Epoch(TimeUnit::Nanosecond) => (1, 1_000),
                        _ => (1_000_000, 1),
                    };
                    Some(ScalarValue::Int64(Some(
                        micros.div_euclid(per_unit).checked_mul(scale_up)?,
                    )))
                }
                _ => None,
            }
        };
        // The lower bound rounds down and the upper bound is widened by one unit so that the
        // exact filter on parsed instants, applied after this one, decides the edges.
        let (Some(lo), Some(hi)) = (bound(range.start), bound(range.end)) else {
            return Ok(None);
        };
        let c = ident(self.ts_name());
        Ok(Some(
            c.clone()
                .gt_eq(lit(lo))
                .and(c.clone().lt_eq(lit(hi)))
                .or(c.is_null()),
        ))
    }

    /// The source's rows as stored, unfiltered.
    pub fn table(&self) -> DataFrame {
        self.table.clone()
    }

    /// The timestamp column read as instants (`Timestamp(µs, UTC)`).
    pub fn parsed_ts(&self) -> Expr {
        ParseTimestamp::udf().call(vec![ident(self.ts_name()), lit(self.format.to_arg())])
    }

    /// The source's rows with timestamps in `range`, the timestamp column converted to
    /// instants and every other column as stored.
    pub fn prepared(&self, range: TimeRange) -> Result<DataFrame> {
        let mut df = self.table.clone();
        if let Some(filter) = self.raw_range_filter(range)? {
            df = df
                .filter(filter)
                .context(|| format!("cannot filter source {}", self.location))?;
        }
        let ts = self.ts_name().to_string();
        let projection: Vec<Expr> = self
            .raw_schema()
            .fields()
            .iter()
            .map(|f| {
                if f.name() == &ts {
                    self.parsed_ts().alias(&ts)
                } else {
                    ident(f.name())
                }
            })
            .collect();
        let bounds = |micros: i64| {
            lit(ScalarValue::TimestampMicrosecond(
                Some(micros),
                Some("UTC".into()),
            ))
        };
        df.select(projection)
            .and_then(|df| {
                df.filter(
                    ident(&ts)
                        .gt_eq(bounds(range.start))
                        .and(ident(&ts).lt(bounds(range.end))),
                )
            })
            .context(|| format!("cannot read source {}", self.location))
    }

    /// Turns an engine failure into a [`JobsError::BadTimestamps`] with the number of bad rows
    /// and one of them, when the failure came from an unreadable timestamp.
    pub async fn explain_failure(&self, range: TimeRange, error: JobsError) -> JobsError {
        if !error_chain(&error).contains(PARSE_ERROR_MARKER) {
            return error;
        }
        match self.count_bad_timestamps(range).await {
            Ok(Some((failed, first))) => JobsError::BadTimestamps {
                path: self.location.clone(),
                column: self.ts_name().to_string(),
                expected: self
                    .format
                    .describe(&self.column_type(self.ts_name()).unwrap_or(DataType::Null)),
                failed,
                first,
            },
            _ => error,
        }
    }

    async fn count_bad_timestamps(&self, range: TimeRange) -> Result<Option<(u64, String)>> {
        let mut df = self.table.clone();
        if let Some(filter) = self.raw_range_filter(range)? {
            df = df.filter(filter).context(|| "filter".to_string())?;
        }
        let ok = TimestampCheck::udf().call(vec![ident(self.ts_name()), lit(self.format.to_arg())]);
        let batches = df
            .filter(!ok)
            .and_then(|df| {
                df.aggregate(
                    vec![],
                    vec![
                        count(lit(1)).alias("n"),
                        min(cast(ident(self.ts_name()), DataType::Utf8)).alias("first"),
                    ],
                )
            })
            .context(|| "cannot count unreadable timestamps".to_string())?
            .collect()
            .await
            .context(|| "cannot count unreadable timestamps".to_string())?;
        let Some(batch) = batches.first().filter(|b| b.num_rows() > 0) else {
            return Ok(None);
        };
        let n = datafusion::arrow::util::display::array_value_to_string(batch.column(0), 0)
            .unwrap_or_default();
        let first = if batch.column(1).is_null(0) {
            "null".to_string()
        } else {
            format!(
                "'{}'",
                datafusion::arrow::util::display::array_value_to_string(batch.column(1), 0)
                    .unwrap_or_default()
            )
        };
        Ok(n.parse::<u64>().ok().filter(|n| *n > 0).map(|n| (n, first)))
    }
}

/// The text of an error and all its causes, for recognising failures that crossed a process
/// boundary as text.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
