//! Feature transformations: precomputed columns, SQL over `source`, and the window-aggregation
//! DSL.
//!
//! # Window semantics (DESIGN.md §4)
//! At a row of key `k` at time `t`, a window `w` covers `k`'s source rows with timestamps in
//! `[t − w, t]`, both ends included, so rows sharing `t` are all in. `count` counts rows; the
//! other aggregations ignore nulls (`sum`/`avg`/`min`/`max` of no values is null). `latest` is
//! the non-null value with the greatest timestamp in the window; among several at that
//! timestamp, the greatest value, so the result never depends on file or partition order.
//! The DSL emits one row per distinct (key, timestamp) of the source, and rows with null keys
//! aggregate together as their own key.
//!
//! # Plan
//! The DSL first groups source rows by (key, timestamp), so ties and duplicates collapse, then
//! runs one window function per feature over the grouped rows ordered by the timestamp's
//! microseconds with an integer `RANGE` frame (exact, no interval arithmetic). `latest` finds
//! the frame's last timestamp with a value and joins back to the groups for it, because
//! `LAST_VALUE(.. IGNORE NULLS)` over a `RANGE` frame returned nulls in DataFusion 55 (caught by
//! the oracle tests). It remains for value types the single-pass operator
//! ([`crate::window_agg`]) does not take, and as the reference the operator is tested against.

use datafusion::logical_expr::Expr;
use datafusion::prelude::ident;
use datafusion::prelude::{DataFrame, SQLOptions, SessionContext};

use crate::error::{JobsError, Result};
use crate::spec::{Aggregation, FeatureSetSpec, Transformation, WindowAggregation};

/// Quotes an identifier for generated SQL; identifiers are case-sensitive as written.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn transformation_error(file: &str, message: impl Into<String>) -> JobsError {
    JobsError::Transformation {
        file: file.to_string(),
        message: message.into(),
    }
}

/// How the window-aggregation DSL is planned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowPlan {
    /// Almanac's single-pass operator where it takes the value types, else window functions.
    Native,
    /// DataFusion window functions with `RANGE` frames (the earlier plan).
    WindowFunctions,
}

/// Applies the spec's transformation to the prepared source rows.
///
/// `file` names the spec in error messages.
pub async fn apply(
    ctx: &SessionContext,
    spec: &FeatureSetSpec,
    file: &str,
    source: DataFrame,
    plan: WindowPlan,
) -> Result<DataFrame> {
    match &spec.feature_transformation {
        None => precomputed(spec, file, source),
        Some(Transformation::Sql(sql)) => {
            register_source(ctx, source, file)?;
            run_sql(ctx, sql, file).await
        }
        Some(Transformation::TransformationExpressions(exprs)) => {
            check_dsl_columns(spec, exprs, file, &source)?;
            if plan == WindowPlan::Native
                && let Some(df) = native(spec, exprs, file, &source)?
            {
                return Ok(df);
            }
            register_source(ctx, source, file)?;
            run_sql(ctx, &window_sql(spec, exprs), file).await
        }
    }
}

/// The DSL through [`crate::window_agg`], or `None` when a value column's type is one the
/// operator does not take.
fn native(
    spec: &FeatureSetSpec,
    exprs: &[WindowAggregation],
    file: &str,
    source: &DataFrame,
) -> Result<Option<DataFrame>> {
    use crate::window_agg::{
        WindowAggNode, WindowAggParams, WindowFeature, WindowFunction, supports,
    };
    let features: Vec<WindowFeature> = exprs
        .iter()
        .map(|e| WindowFeature {
            name: e.feature_name.clone(),
            function: match e.aggregation {
                Aggregation::Sum => WindowFunction::Sum,
                Aggregation::Avg => WindowFunction::Avg,
                Aggregation::Min => WindowFunction::Min,
                Aggregation::Max => WindowFunction::Max,
                Aggregation::Count => WindowFunction::Count,
                Aggregation::Latest => WindowFunction::Latest,
            },
            column: e.source_column.clone(),
            window: e.window.micros(),
        })
        .collect();
    let params = WindowAggParams {
        keys: spec.index_names().iter().map(|k| k.to_string()).collect(),
        time: spec.timestamp_name().to_string(),
        features,
    };
    // Only what the operator reads crosses the shuffle.
    let mut columns: Vec<&str> = params.keys.iter().map(String::as_str).collect();
    columns.push(&params.time);
    for f in &params.features {
        if let Some(c) = f.column.as_deref()
            && !columns.contains(&c)
        {
            columns.push(c);
        }
    }
    let projected = source
        .clone()
        .select(columns.iter().map(|c| ident(*c)).collect::<Vec<Expr>>())
        .map_err(|e| transformation_error(file, format!("cannot select the DSL's columns: {e}")))?;
    if !supports(projected.schema().as_arrow(), &params) {
        return Ok(None);
    }
    let (state, input) = projected.into_parts();
    let node = WindowAggNode::try_new(input, params)
        .map_err(|e| transformation_error(file, e.strip_backtrace()))?;
    let plan =
        datafusion::logical_expr::LogicalPlan::Extension(datafusion::logical_expr::Extension {
            node: std::sync::Arc::new(node),
        });
    Ok(Some(DataFrame::new(state, plan)))
}

fn precomputed(spec: &FeatureSetSpec, file: &str, source: DataFrame) -> Result<DataFrame> {
    let schema = source.schema().clone();
    let mut missing = Vec::new();
    let names = spec
        .index_names()
        .into_iter()
        .chain(std::iter::once(spec.timestamp_name()))
        .chain(spec.features.iter().map(|f| f.name.as_str()));
    let mut columns: Vec<Expr> = Vec::new();
    for name in names {
        if schema.field_with_unqualified_name(name).is_err() {
            missing.push(name.to_string());
        } else {
            columns.push(ident(name));
        }
    }
    if !missing.is_empty() {
        let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        return Err(transformation_error(
            file,
            format!(
                "the spec has no transformation, so every index column and feature must be a source column; \
                 the source has no column {}; its columns are: {}",
                missing
                    .iter()
                    .map(|m| format!("'{m}'"))
                    .collect::<Vec<_>>()
                    .join(", "),
                have.join(", ")
            ),
        ));
    }
    source
        .select(columns)
        .map_err(|e| transformation_error(file, e.to_string()))
}

/// Checks the DSL's columns against the source before any SQL is generated, so errors name
/// the spec's fields rather than generated SQL.
fn check_dsl_columns(
    spec: &FeatureSetSpec,
    exprs: &[WindowAggregation],
    file: &str,
    source: &DataFrame,
) -> Result<()> {
    let schema = source.schema();
    let have: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    let mut problems = Vec::new();
    for (i, key) in spec.index_names().iter().enumerate() {
        if !have.contains(key) {
            problems.push(format!(
                "index_columns[{i}]: the source has no column '{key}'"
            ));
        }
    }
    for (i, e) in exprs.iter().enumerate() {
        let Some(c) = e.source_column.as_deref() else {
            continue;
        };
        let path = format!("feature_transformation.transformation_expressions[{i}].source_column");
        match schema.field_with_unqualified_name(c) {
            Err(_) => problems.push(format!("{path}: the source has no column '{c}'")),
            Ok(f)
                if matches!(e.aggregation, Aggregation::Sum | Aggregation::Avg)
                    && !f.data_type().is_numeric() =>
            {
                problems.push(format!(
                    "{path}: {:?} needs a numeric column; '{c}' is {}",
                    e.aggregation,
                    f.data_type()
                ))
            }
            Ok(_) => {}
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(transformation_error(
        file,
        format!(
            "{}; the source's columns are: {}",
            problems.join("; "),
            have.join(", ")
        ),
    ))
}

fn register_source(ctx: &SessionContext, source: DataFrame, file: &str) -> Result<()> {
    ctx.register_table("source", source.into_view())
        .map(|_| ())
        .map_err(|e| transformation_error(file, format!("cannot register the source table: {e}")))
}

async fn run_sql(ctx: &SessionContext, sql: &str, file: &str) -> Result<DataFrame> {
    // A transformation is a query: no DDL, no writes, no SET.
    let options = SQLOptions::new()
        .with_allow_ddl(false)
        .with_allow_dml(false)
        .with_allow_statements(false);
    ctx.sql_with_options(sql, options).await.map_err(|e| {
        transformation_error(
            file,
            format!(
                "feature_transformation.sql is not a valid query over `source`: {}",
                e.strip_backtrace()
            ),
        )
    })
}

/// The DSL as SQL over `source`; see the module docs for the plan's shape.
pub fn window_sql(spec: &FeatureSetSpec, exprs: &[WindowAggregation]) -> String {
    let keys: Vec<String> = spec.index_names().iter().map(|k| quote_ident(k)).collect();
    let ts = quote_ident(spec.timestamp_name());
    let group_keys = keys
        .iter()
        .cloned()
        .chain(std::iter::once(ts.clone()))
        .collect::<Vec<_>>()
        .join(", ");

    // Per-(key, timestamp) partial aggregates, one set per source column, named by position so
    // arbitrary column names never collide.
    let mut columns: Vec<&str> = exprs
        .iter()
        .filter_map(|e| e.source_column.as_deref())
        .collect();
    columns.sort();
    columns.dedup();
    let mut partials = vec!["COUNT(*) AS \"__rows\"".to_string()];
    for (i, c) in columns.iter().enumerate() {
        let c = quote_ident(c);
        partials.push(format!("SUM({c}) AS \"__sum{i}\""));
        partials.push(format!("COUNT({c}) AS \"__n{i}\""));
        partials.push(format!("MIN({c}) AS \"__min{i}\""));
        partials.push(format!("MAX({c}) AS \"__max{i}\""));
    }
    let partition = if keys.is_empty() {
        String::new()
    } else {
        format!("PARTITION BY {} ", keys.join(", "))
    };
    let mut windowed = Vec::new();
    let mut selected = Vec::new();
    let mut joins = Vec::new();
    for (j, e) in exprs.iter().enumerate() {
        let frame = format!(
            "OVER ({partition}ORDER BY \"__t\" RANGE BETWEEN {} PRECEDING AND CURRENT ROW)",
            e.window.micros()
        );
        let i = e
            .source_column
            .as_deref()
            .and_then(|c| columns.iter().position(|x| *x == c))
            .unwrap_or(0);
        let name = quote_ident(&e.feature_name);
        let value = match e.aggregation {
            Aggregation::Count => format!("SUM(\"__rows\") {frame}"),
            Aggregation::Sum => format!("SUM(\"__sum{i}\") {frame}"),
            Aggregation::Avg => {
                format!(
                    "CAST(SUM(\"__sum{i}\") {frame} AS DOUBLE) / CAST(SUM(\"__n{i}\") {frame} AS DOUBLE)"
                )
            }
            Aggregation::Min => format!("MIN(\"__min{i}\") {frame}"),
            Aggregation::Max => format!("MAX(\"__max{i}\") {frame}"),
            Aggregation::Latest => {
                // The latest timestamp in the frame with a value, then that timestamp's value
                // (the greatest, if several rows share it) through a join back to the groups.
                windowed.push(format!("MAX(CASE WHEN \"__max{i}\" IS NOT NULL THEN \"__t\" END) {frame} AS \"__lt{j}\""));
                let on: Vec<String> = keys
                    .iter()
                    .map(|k| format!("(\"w\".{k} IS NOT DISTINCT FROM \"l{j}\".{k})"))
                    .chain(std::iter::once(format!(
                        "(\"l{j}\".\"__t\" = \"w\".\"__lt{j}\")"
                    )))
                    .collect();
                joins.push(format!(
                    "LEFT JOIN \"g\" AS \"l{j}\" ON {}",
                    on.join(" AND ")
                ));
                selected.push(format!("\"l{j}\".\"__max{i}\" AS {name}"));
                continue;
            }
        };
        windowed.push(format!("{value} AS {name}"));
        selected.push(format!("\"w\".{name}"));
    }
    let w_keys: Vec<String> = keys
        .iter()
        .chain(std::iter::once(&ts))
        .map(|k| format!("\"w\".{k}"))
        .collect();
    format!(
        "WITH \"g\" AS (SELECT {group_keys}, CAST({ts} AS BIGINT) AS \"__t\", {partials} FROM source GROUP BY {group_keys}), \
         \"w\" AS (SELECT {group_keys}, {windowed} FROM \"g\") \
         SELECT {w_keys}, {selected} FROM \"w\" {joins}",
        partials = partials.join(", "),
        windowed = windowed.join(", "),
        w_keys = w_keys.join(", "),
        selected = selected.join(", "),
        joins = joins.join(" "),
    )
}
