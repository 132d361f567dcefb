//! Computing a feature window (DESIGN.md §4): read `[start − source_lookback, end)` of the
//! source, transform, keep rows with timestamps in `[start, end)`.
//!
//! The output has the index columns, the timestamp and the features, in the spec's order and
//! with the declared types (strings as `Utf8`, timestamps as `Timestamp(µs, UTC)`).

use datafusion::arrow::array::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Expr, SortExpr, cast, lit};
use datafusion::prelude::DataFrame;
use datafusion::prelude::ident;

use crate::engine::Engine;
use crate::error::{EngineResultExt, JobsError, Result};
use crate::source::{Source, TimeRange};
use crate::spec::{FeatureType, LoadedSpec, describe_arrow_type};
use crate::timestamp::canonical_type;
use crate::transform;
pub use crate::transform::WindowPlan;

/// A planned (not yet run) feature window.
pub struct FeatureFrame {
    pub frame: DataFrame,
    pub source: Source,
    /// The source rows read: the window widened by the spec's `source_lookback`.
    pub read_range: TimeRange,
}

impl std::fmt::Debug for FeatureFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureFrame")
            .field("source", &self.source.location)
            .field("read_range", &self.read_range)
            .finish()
    }
}

impl FeatureFrame {
    /// Runs the plan and returns all rows, turning timestamp failures into a clear error.
    pub async fn collect(self) -> Result<Vec<RecordBatch>> {
        match self.frame.collect().await {
            Ok(b) => Ok(b),
            Err(e) => {
                let e = JobsError::engine(
                    format!("computing features from {}", self.source.location),
                    e,
                );
                Err(self.source.explain_failure(self.read_range, e).await)
            }
        }
    }
}

/// Plans the feature window `window` of a spec. Checks the transformation's output against the
/// declared index columns and features before anything runs.
pub async fn plan_window(
    engine: &Engine,
    loaded: &LoadedSpec,
    window: TimeRange,
) -> Result<FeatureFrame> {
    plan_window_with(engine, loaded, window, WindowPlan::Native).await
}

/// [`plan_window`] with the DSL planned as `plan` says (benchmarks and differential tests
/// compare the two).
pub async fn plan_window_with(
    engine: &Engine,
    loaded: &LoadedSpec,
    window: TimeRange,
    plan: WindowPlan,
) -> Result<FeatureFrame> {
    if window.start >= window.end {
        return Err(JobsError::InvalidInput(format!(
            "the window is empty: start {} is not before end {}",
            crate::time::format_instant(window.start),
            crate::time::format_instant(window.end)
        )));
    }
    let spec = &loaded.spec;
    let file = loaded.file.display().to_string();
    let ctx = engine.session();
    let source = Source::open(&ctx, &spec.source, &loaded.dir).await?;
    let read_range = TimeRange {
        start: window.start.saturating_sub(spec.source_lookback().micros()),
        end: window.end,
    };
    let prepared = source.prepared(read_range)?;
    let transformed = transform::apply(&ctx, spec, &file, prepared, plan).await?;
    let frame = conform(spec, &file, transformed, window)?;
    Ok(FeatureFrame {
        frame,
        source,
        read_range,
    })
}

/// Checks and casts the transformation output to the declared schema and keeps the window.
fn conform(
    spec: &crate::spec::FeatureSetSpec,
    file: &str,
    df: DataFrame,
    window: TimeRange,
) -> Result<DataFrame> {
    let schema = df.schema().clone();
    let mut problems = Vec::new();
    let mut columns: Vec<Expr> = Vec::new();
    let ts = spec.timestamp_name();
    let declared = spec
        .index_columns
        .iter()
        .map(|c| ("index column", c.name.as_str(), Some(c.data_type)))
        .chain(std::iter::once(("timestamp column", ts, None)))
        .chain(
            spec.features
                .iter()
                .map(|f| ("feature", f.name.as_str(), Some(f.data_type))),
        );
    for (what, name, declared_type) in declared {
        let Ok(field) = schema.field_with_unqualified_name(name) else {
            problems.push(format!(
                "{what} '{name}' is declared but the transformation does not produce it"
            ));
            continue;
        };
        let target = match declared_type {
            Some(t) if !t.accepts(field.data_type()) => {
                let suggestion = FeatureType::for_arrow(field.data_type())
                    .map(|s| format!(" (declare it as {s})"))
                    .unwrap_or_default();
                problems.push(format!(
                    "{what} '{name}' is declared {t} but the transformation produces {}{suggestion}",
                    describe_arrow_type(field.data_type())
                ));
                continue;
            }
            Some(t) => t.arrow_type(),
            None if matches!(
                field.data_type(),
                datafusion::arrow::datatypes::DataType::Timestamp(_, _)
            ) =>
            {
                canonical_type()
            }
            None => {
                problems.push(format!(
                    "timestamp column '{name}' must be a timestamp in the transformation's output, found {}",
                    field.data_type()
                ));
                continue;
            }
        };
        columns.push(cast(ident(name), target).alias(name));
    }
    if !problems.is_empty() {
        let produced: Vec<String> = schema
            .fields()
            .iter()
            .map(|f| format!("{} {}", f.name(), describe_arrow_type(f.data_type())))
            .collect();
        return Err(JobsError::Transformation {
            file: file.to_string(),
            message: format!(
                "{}. The transformation produces: {}",
                problems.join("; "),
                produced.join(", ")
            ),
        });
    }
    let bound = |micros: i64| {
        lit(ScalarValue::TimestampMicrosecond(
            Some(micros),
            Some("UTC".into()),
        ))
    };
    let ts_col = ident(ts);
    df.select(columns)
        .and_then(|df| {
            df.filter(
                ts_col
                    .clone()
                    .gt_eq(bound(window.start))
                    .and(ts_col.lt(bound(window.end))),
            )
        })
        .context(|| format!("cannot plan the feature window of {file}"))
}

/// Runs a window and returns up to `limit` rows ordered by timestamp, then index columns.
pub async fn sample(
    engine: &Engine,
    loaded: &LoadedSpec,
    window: TimeRange,
    limit: Option<usize>,
) -> Result<Vec<RecordBatch>> {
    let planned = plan_window(engine, loaded, window).await?;
    let mut order: Vec<SortExpr> = vec![ident(loaded.spec.timestamp_name()).sort(true, true)];
    order.extend(
        loaded
            .spec
            .index_names()
            .iter()
            .map(|k| ident(*k).sort(true, true)),
    );
    let frame = planned
        .frame
        .sort(order)
        .and_then(|df| df.limit(0, limit))
        .context(|| "cannot order the sample".to_string())?;
    FeatureFrame { frame, ..planned }.collect().await
}
