//! Point-in-time retrieval (DESIGN.md §4): observation rows, each joined to the latest known
//! feature values of every requested feature set, written as parquet.
//!
//! The plan, run as one Ballista job:
//!
//! ```text
//! observations (one partition, input order) ── ROW_NUMBER ── parse timestamp
//!     └─ AsOfJoin(set 1 features) ── AsOfJoin(set 2 features) ── …
//!          └─ project: observation columns, features in request order
//!               └─ PartWriter: chunk = row / rows_per_file → part-<chunk>.parquet
//! ```
//!
//! Feature sets are computed from their specs over only the time the observations need:
//! `[min(t) − temporal_join_lookback, max(t) − source_delay]`. The result is written to a
//! staging folder next to the output and renamed into place only once everything succeeded.

pub mod request;
mod staging;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Int64Type, TimestampMicrosecondType, UInt64Type};
use datafusion::functions_aggregate::expr_fn::{count, max, min};
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, lit, try_cast};
use datafusion::prelude::{DataFrame, ident};

use crate::asof_join::{AsOfJoinNode, AsOfJoinParams};
use crate::compute::plan_window;
use crate::engine::Engine;
use crate::error::{EngineResultExt, JobsError, Result};
use crate::materialize::{DataStatus, Interval};
use crate::part_writer::{Layout, PartWriterNode, PartWriterParams, REPORT_TALLIES};
use crate::source::{Source, TimeRange};
use crate::spec::{
    RETRIEVAL_SPEC_FILE_NAME, SourceKind, SourceSpec, TimestampColumn, write_atomic,
};

use request::ResolvedSet;
pub use request::{
    FeatureRequest, LOCAL_VERSION, parse_feature_list, parse_local, registered_spec,
    requests_from_spec,
};
use staging::Staging;

/// Prefix of the columns Almanac adds while planning; observations may not use it.
const HIDDEN: &str = "__almanac_";
const ROW: &str = "__almanac_row";
const TIME: &str = "__almanac_t";

/// Default rows per output file.
pub const DEFAULT_ROWS_PER_FILE: u64 = 250_000;

/// A retrieval to run.
#[derive(Debug, Clone)]
pub struct RetrieveOptions {
    pub requests: Vec<FeatureRequest>,
    /// `--local NAME=DIR`: spec folders known as `NAME:local`.
    pub local: BTreeMap<String, PathBuf>,
    /// A parquet or csv file, folder or glob; local or object storage.
    pub observations: String,
    /// Format of the observations; `None`: from the file extension.
    pub observations_format: Option<SourceKind>,
    pub timestamp_column: String,
    /// How to read the timestamp column (see `TimestampFormat`); `None`: ISO / epoch seconds.
    pub timestamp_format: Option<String>,
    /// Local output folder.
    pub output: PathBuf,
    pub overwrite: bool,
    pub rows_per_file: u64,
    /// The feature store whose registered sets may be requested (`name:version`).
    pub home: Option<PathBuf>,
}

/// What a retrieval did.
#[derive(Debug, Clone)]
pub struct RetrieveSummary {
    pub output: PathBuf,
    pub rows_in: u64,
    pub rows_out: u64,
    pub files: usize,
    /// Observation rows that found a feature row, per feature set (`name:version`).
    pub matches: Vec<(String, u64)>,
    /// Per feature set read from the offline store, the stretches of the time it needed that
    /// are not Complete there.
    pub incomplete: Vec<(String, Vec<Interval>)>,
    pub elapsed: Duration,
}

/// Runs a retrieval. On any error nothing is left at `options.output`.
pub async fn retrieve(engine: &Engine, options: &RetrieveOptions) -> Result<RetrieveSummary> {
    let started = Instant::now();
    let (output, sets) = check_request(options)?;
    let fence = engine.fence_mark().await;

    let ctx = engine.session();
    let kind = observation_kind(&options.observations, options.observations_format);
    let obs_spec = SourceSpec {
        kind,
        path: options.observations.clone(),
        timestamp_column: TimestampColumn {
            name: options.timestamp_column.clone(),
            format: options.timestamp_format.clone(),
        },
        source_delay: None,
    };
    // Only a relative observation path needs the working folder.
    let cwd = match std::env::current_dir() {
        Ok(dir) => dir,
        Err(_)
            if Path::new(&options.observations).is_absolute()
                || options.observations.contains("://") =>
        {
            PathBuf::new()
        }
        Err(e) => return Err(JobsError::io("cannot resolve a path against", ".", e)),
    };
    let obs = Source::open_ordered(&ctx, &obs_spec, &cwd)
        .await
        .map_err(as_observation_error)?;
    let obs_columns: Vec<String> = obs
        .raw_schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let left_keys = check_observations(&obs, &obs_columns, &sets)?;

    let everything = TimeRange {
        start: i64::MIN,
        end: i64::MAX,
    };
    let (rows_in, span) = match observation_span(&obs).await {
        Ok(s) => s,
        Err(e) => return Err(obs.explain_failure(everything, e).await),
    };
    tracing::info!(rows = rows_in, sets = sets.len(), "retrieving features");

    // Observations in input order, numbered, with their instants and any cast key columns.
    let mut select: Vec<Expr> = obs_columns.iter().map(ident).collect();
    select.push(ident(ROW));
    select.push(obs.parsed_ts().alias(TIME));
    for keys in &left_keys {
        for key in keys {
            if let LeftKey::Cast { column, name, to } = key {
                select.push(try_cast(ident(column), to.clone()).alias(name));
            }
        }
    }
    let mut plan = obs
        .table()
        .window(vec![row_number().alias(ROW)])
        .and_then(|df| df.select(select))
        .context(|| "cannot plan reading the observations".to_string())?
        .into_unoptimized_plan();

    let mut sources: Vec<(Source, TimeRange)> = Vec::new();
    let mut incomplete: Vec<(String, Vec<Interval>)> = Vec::new();
    let mut match_columns = Vec::new();
    for (i, (set, keys)) in sets.iter().zip(&left_keys).enumerate() {
        let spec = &set.loaded.spec;
        let lookback = spec.temporal_join_lookback.map(|o| o.micros());
        let delay = spec.source_delay().micros();
        let window = match span {
            Some((lo, hi)) => TimeRange {
                start: lookback.map_or(i64::MIN, |l| lo.saturating_sub(l)),
                end: hi.saturating_sub(delay).saturating_add(1),
            },
            // No observations: the plan still needs the feature set's schema.
            None => TimeRange { start: 0, end: 1 },
        };
        let window = TimeRange {
            end: window.end.max(window.start.saturating_add(1)),
            ..window
        };
        let mut features: Vec<&str> = Vec::new();
        for f in &spec.features {
            if set.requests.iter().any(|r| r.feature == f.name) {
                features.push(&f.name);
            }
        }
        let mut right_columns: Vec<Expr> = spec.index_names().into_iter().map(ident).collect();
        right_columns.push(ident(spec.timestamp_name()));
        right_columns.extend(features.iter().map(|f| ident(*f)));
        let mut tiebreak: Vec<String> = features.iter().map(|f| f.to_string()).collect();
        let match_column = format!("{HIDDEN}match_{i}");
        let frame = match &set.offline {
            // Registered with offline materialization: read what was materialized, and say
            // where that is not Complete rather than return nulls silently.
            Some(offline) => {
                let first_needed = span.map_or(window.end, |(lo, _)| lo.saturating_sub(delay));
                if let Some(gaps) = coverage_gaps(offline, window, lookback.is_none(), first_needed)
                {
                    incomplete.push((set.reference.clone(), gaps));
                }
                right_columns.push(ident(crate::offline::CREATE_TIMESTAMP));
                // The row written last wins a timestamp tie.
                tiebreak.insert(0, crate::offline::CREATE_TIMESTAMP.to_string());
                match crate::offline::read_range(engine, &offline.table, spec, window).await? {
                    Some(frame) => frame,
                    None => {
                        // Nothing materialized in range: every row gets nulls, no join needed.
                        plan = without_matches(plan, set, &match_column)?;
                        match_columns.push(match_column);
                        continue;
                    }
                }
            }
            None => {
                let frame = plan_window(engine, &set.loaded, window).await?;
                sources.push((frame.source.clone(), frame.read_range));
                frame.frame
            }
        };
        let right = frame
            .select(right_columns)
            .context(|| format!("cannot plan feature set {}", set.reference))?
            .into_unoptimized_plan();
        let params = AsOfJoinParams {
            left_keys: keys.iter().map(|k| k.name().to_string()).collect(),
            right_keys: spec.index_names().iter().map(|s| s.to_string()).collect(),
            left_time: TIME.to_string(),
            right_time: spec.timestamp_name().to_string(),
            lookback,
            delay,
            tiebreak,
            outputs: set
                .requests
                .iter()
                .map(|r| (r.feature.clone(), r.output().to_string()))
                .collect(),
            match_column: match_column.clone(),
        };
        match_columns.push(match_column);
        let node = AsOfJoinNode::try_new(plan, right, params)
            .context(|| format!("cannot plan the join with feature set {}", set.reference))?;
        plan = LogicalPlan::Extension(Extension {
            node: Arc::new(node),
        });
    }

    // Observation columns untouched, then features in request order.
    let mut final_columns: Vec<Expr> = obs_columns.iter().map(ident).collect();
    final_columns.extend(options.requests.iter().map(|r| ident(r.output())));
    final_columns.push(ident(ROW));
    final_columns.extend(match_columns.iter().map(ident));
    let projected = DataFrame::new(ctx.state(), plan)
        .select(final_columns)
        .context(|| "cannot plan the retrieval output".to_string())?;
    let written_schema = {
        let arrow = projected.schema().as_arrow().clone();
        let keep: Vec<usize> = (0..arrow.fields().len())
            .filter(|i| !arrow.field(*i).name().starts_with(HIDDEN))
            .collect();
        Arc::new(
            arrow
                .project(&keep)
                .map_err(datafusion::error::DataFusionError::from)
                .context(|| "cannot plan the retrieval output".to_string())?,
        )
    };

    let staging = Staging::create(&output)?;
    let writer = PartWriterNode::try_new(
        projected.into_unoptimized_plan(),
        PartWriterParams {
            dir: staging.data_url()?,
            layout: Layout::Chunks {
                row_column: ROW.to_string(),
                rows_per_file: options.rows_per_file,
            },
            tally_columns: match_columns.clone(),
        },
    )
    .context(|| "cannot plan writing the output".to_string())?;
    let report = DataFrame::new(
        ctx.state(),
        LogicalPlan::Extension(Extension {
            node: Arc::new(writer),
        }),
    );
    let batches = match report.collect().await {
        Ok(b) => b,
        Err(e) => {
            let error = JobsError::engine("retrieving features", e);
            return Err(explain(error, &obs, everything, &sources).await);
        }
    };

    let (files, rows_out, tallies) = read_report(&batches, match_columns.len());
    if rows_out != rows_in {
        return Err(JobsError::InvalidInput(format!(
            "internal error: {rows_in} observation rows were read but {rows_out} were written; \
             nothing was published. Please report this."
        )));
    }
    if files == 0 {
        // No observation rows: an empty file still tells readers the columns.
        crate::sample_data::write_parquet(
            &staging.data_dir().join("part-00000.parquet"),
            &RecordBatch::new_empty(written_schema),
        )?;
    }
    let used = request::used_spec(&sets);
    write_atomic(
        &staging.path().join(RETRIEVAL_SPEC_FILE_NAME),
        used.to_yaml().as_bytes(),
    )?;
    engine.check_fence(&fence).await?;
    staging.publish(&output, options.overwrite)?;
    let summary = RetrieveSummary {
        output,
        rows_in,
        rows_out,
        files: files.max(1),
        matches: sets
            .iter()
            .map(|s| s.reference.clone())
            .zip(tallies)
            .collect(),
        incomplete,
        elapsed: started.elapsed(),
    };
    tracing::info!(
        rows = summary.rows_out,
        files = summary.files,
        elapsed_ms = summary.elapsed.as_millis() as u64,
        "retrieval written"
    );
    Ok(summary)
}

/// Adds a set's requested features as nulls and its match flag as false.
fn without_matches(
    plan: LogicalPlan,
    set: &ResolvedSet,
    match_column: &str,
) -> Result<LogicalPlan> {
    let mut columns: Vec<Expr> = plan
        .schema()
        .columns()
        .into_iter()
        .map(Expr::Column)
        .collect();
    for r in &set.requests {
        let feature = set
            .loaded
            .spec
            .features
            .iter()
            .find(|f| f.name == r.feature)
            .expect("requests were checked against the spec");
        columns.push(
            datafusion::logical_expr::cast(
                lit(datafusion::common::ScalarValue::Null),
                feature.data_type.arrow_type(),
            )
            .alias(r.output()),
        );
    }
    columns.push(lit(false).alias(match_column));
    datafusion::logical_expr::LogicalPlanBuilder::from(plan)
        .project(columns)
        .and_then(|b| b.build())
        .context(|| format!("cannot plan feature set {}", set.reference))
}

/// The parts of `window` the offline store does not hold as Complete. With an unbounded
/// lookback, time before the first materialized interval is history that was never asked for,
/// not a gap.
fn coverage_gaps(
    offline: &request::OfflineSource,
    window: TimeRange,
    unbounded: bool,
    first_needed: i64,
) -> Option<Vec<Interval>> {
    // With an unbounded lookback, `window` starts at the beginning of time; gaps matter from the
    // first observation's own upper bound `first_needed`, or from the first materialized
    // interval if that is earlier.
    let start = match (unbounded, offline.timeline.intervals().first()) {
        (true, Some(first)) => first.start.min(first_needed),
        (true, None) => first_needed,
        (false, _) => window.start,
    };
    let gaps: Vec<Interval> = offline
        .timeline
        .within(TimeRange {
            start,
            end: window.end,
        })
        .into_iter()
        .filter(|i| i.status != DataStatus::Complete)
        .collect();
    (!gaps.is_empty()).then_some(gaps)
}

/// Rejects feature sets whose join window `[t − lookback, t − delay]` is empty.
/// The checks that need no data: the output target, the requested features and their
/// windows. A scheduler runs them before it accepts a retrieval job.
pub fn check(options: &RetrieveOptions) -> Result<()> {
    check_request(options).map(|_| ())
}

fn check_request(options: &RetrieveOptions) -> Result<(PathBuf, Vec<ResolvedSet>)> {
    if options.rows_per_file == 0 {
        return Err(JobsError::InvalidInput(
            "rows per file must be at least 1".to_string(),
        ));
    }
    let output = std::path::absolute(&options.output)
        .map_err(|e| JobsError::io("cannot resolve", &options.output, e))?;
    staging::check_target(&output, options.overwrite)?;
    let sets = request::resolve(&options.requests, &options.local, options.home.as_deref())?;
    check_windows(&sets)?;
    Ok((output, sets))
}

fn check_windows(sets: &[ResolvedSet]) -> Result<()> {
    let problems: Vec<String> = sets
        .iter()
        .filter_map(|set| {
            let spec = &set.loaded.spec;
            let lookback = spec.temporal_join_lookback?;
            (lookback.micros() < spec.source_delay().micros()).then(|| {
                format!(
                    "feature set {} ({}): its temporal_join_lookback ({lookback}) is shorter than \
                     its source_delay ({}), so no feature row could ever be joined; lengthen the lookback",
                    set.reference,
                    set.loaded.file.display(),
                    spec.source_delay()
                )
            })
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(JobsError::InvalidInput(problems.join("\n")))
    }
}

/// How an index column of a feature set is read from the observations.
#[derive(Debug, Clone)]
enum LeftKey {
    /// Same type as the feature set's column.
    Same(String),
    /// Cast to the feature set's type; values that do not convert match nothing.
    Cast {
        column: String,
        name: String,
        to: DataType,
    },
}

impl LeftKey {
    fn name(&self) -> &str {
        match self {
            LeftKey::Same(n) => n,
            LeftKey::Cast { name, .. } => name,
        }
    }
}

fn is_stringy(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// Checks the observations against the requested sets: hidden names, index columns, output
/// name collisions. Returns how each set's keys are read.
fn check_observations(
    obs: &Source,
    columns: &[String],
    sets: &[ResolvedSet],
) -> Result<Vec<Vec<LeftKey>>> {
    let mut problems = Vec::new();
    if let Some(c) = columns.iter().find(|c| c.starts_with(HIDDEN)) {
        problems.push(format!(
            "column '{c}' uses the prefix {HIDDEN}, which Almanac reserves; rename it"
        ));
    }
    let mut keys_per_set = Vec::new();
    for (i, set) in sets.iter().enumerate() {
        let mut keys = Vec::new();
        for (j, index) in set.loaded.spec.index_columns.iter().enumerate() {
            let Ok(obs_type) = obs.column_type(&index.name) else {
                problems.push(format!(
                    "there is no column '{}', an index column of feature set {}; the columns are: {}",
                    index.name,
                    set.reference,
                    columns.join(", ")
                ));
                continue;
            };
            let want = index.data_type.arrow_type();
            if obs_type == want {
                keys.push(LeftKey::Same(index.name.clone()));
            } else if (obs_type.is_integer() || is_stringy(&obs_type))
                && (want.is_integer() || is_stringy(&want))
            {
                keys.push(LeftKey::Cast {
                    column: index.name.clone(),
                    name: format!("{HIDDEN}key_{i}_{j}"),
                    to: want,
                });
            } else {
                problems.push(format!(
                    "column '{}' is {obs_type}, but feature set {} declares its index column as {}",
                    index.name, set.reference, index.data_type
                ));
            }
        }
        keys_per_set.push(keys);
        for r in &set.requests {
            if columns.iter().any(|c| c == r.output()) {
                problems.push(format!(
                    "feature {r} would be written as '{}', which is already a column of the \
                     observations; rename it with {r}=NEW_NAME (or output_name in a retrieval spec)",
                    r.output()
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(keys_per_set)
    } else {
        Err(JobsError::InvalidInput(format!(
            "observations {}: {}",
            obs.location,
            problems.join("; ")
        )))
    }
}

fn as_observation_error(e: JobsError) -> JobsError {
    match e {
        JobsError::Source { path, message } => {
            JobsError::InvalidInput(format!("observations {path}: {message}"))
        }
        other => other,
    }
}

/// Parquet unless the path names csv files, or is a local folder holding only csv files.
fn observation_kind(path: &str, explicit: Option<SourceKind>) -> SourceKind {
    if let Some(k) = explicit {
        return k;
    }
    let lower = path.to_ascii_lowercase();
    if lower.ends_with(".csv") {
        return SourceKind::Csv;
    }
    let dir = Path::new(path);
    if !lower.ends_with(".parquet") && dir.is_dir() {
        let exts: Vec<String> = std::fs::read_dir(dir)
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| {
                        e.path()
                            .extension()
                            .map(|x| x.to_string_lossy().to_ascii_lowercase())
                    })
                    .collect()
            })
            .unwrap_or_default();
        if exts.iter().any(|e| e == "csv") && !exts.iter().any(|e| e == "parquet") {
            return SourceKind::Csv;
        }
    }
    SourceKind::Parquet
}

/// Row count and the first and last instant of the observations.
async fn observation_span(obs: &Source) -> Result<(u64, Option<(i64, i64)>)> {
    let batches = obs
        .table()
        .select(vec![obs.parsed_ts().alias(TIME)])
        .and_then(|df| {
            df.aggregate(
                vec![],
                vec![
                    count(lit(1)).alias("n"),
                    min(ident(TIME)).alias("lo"),
                    max(ident(TIME)).alias("hi"),
                ],
            )
        })
        .context(|| format!("cannot plan reading observations {}", obs.location))?
        .collect()
        .await
        .context(|| format!("cannot read observations {}", obs.location))?;
    let Some(b) = batches.iter().find(|b| b.num_rows() > 0) else {
        return Ok((0, None));
    };
    let n = b.column(0).as_primitive::<Int64Type>().value(0) as u64;
    let lo = b.column(1).as_primitive::<TimestampMicrosecondType>();
    let hi = b.column(2).as_primitive::<TimestampMicrosecondType>();
    let span = (lo.is_valid(0) && hi.is_valid(0)).then(|| (lo.value(0), hi.value(0)));
    Ok((n, span))
}

/// Files written, rows written and the match count per feature set.
fn read_report(batches: &[RecordBatch], sets: usize) -> (usize, u64, Vec<u64>) {
    let mut files = 0;
    let mut rows = 0;
    let mut tallies = vec![0u64; sets];
    for b in batches {
        files += b.num_rows();
        rows += b
            .column(1)
            .as_primitive::<UInt64Type>()
            .values()
            .iter()
            .sum::<u64>();
        for (i, t) in tallies.iter_mut().enumerate() {
            *t += b
                .column(REPORT_TALLIES + i)
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .sum::<u64>();
        }
    }
    (files, rows, tallies)
}

/// Turns an unreadable-timestamp failure into the error naming the file and column.
async fn explain(
    error: JobsError,
    obs: &Source,
    everything: TimeRange,
    sources: &[(Source, TimeRange)],
) -> JobsError {
    let mut error = obs.explain_failure(everything, error).await;
    for (source, range) in sources {
        if matches!(error, JobsError::BadTimestamps { .. }) {
            break;
        }
        error = source.explain_failure(*range, error).await;
    }
    error
}
