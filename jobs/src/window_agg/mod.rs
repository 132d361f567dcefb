//! The window-aggregation DSL's own operator: every window of every feature of a feature set
//! in one pass over rows sorted by (key, timestamp).
//!
//! # Contract (DESIGN.md §4)
//! For each distinct (key, timestamp) of the input, one output row: the index columns, the
//! timestamp, then each feature over the key's rows with timestamps in `[t − window, t]`, both
//! ends included, so rows sharing `t` are all in. `count` counts rows; `sum`, `avg`, `min`,
//! `max` ignore nulls and are null when the window holds no value; `latest` is the non-null
//! value with the greatest timestamp in the window, the greatest value among several at that
//! timestamp. Null keys form a key of their own. Rows without a timestamp are dropped.
//! Sums of doubles are exact, rounded once ([`exact_sum`]): a window's value depends only on
//! the rows in it, never on where reading started, so any task split or partitioning gives the
//! same bytes.
//!
//! # Plan
//! [`WindowAggExec`] asks for its input hash-partitioned by the index columns and sorted by
//! (index columns, timestamp); DataFusion adds the repartition (a shuffle in Ballista) and
//! the sort (which spills under memory pressure), once for all windows. Each partition is
//! then one forward pass: a window's sums and counts add each (key, timestamp) group as the
//! head reaches it and take it away as the tail passes it; `min`/`max` keep monotonic deques;
//! `latest` is the most recent group with a value. Every key costs O(rows), however hot, and
//! the operator holds only the current key's largest window (tracked in the memory pool).
//!
//! Value columns of signed integer or floating-point types are supported; for any other
//! type the DSL runs as window functions instead ([`supports`]).

mod exact_sum;
mod exec;

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};
use datafusion::common::{DFSchema, DFSchemaRef, Result as DfResult, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

pub use exec::WindowAggExec;

/// What a feature computes over its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WindowFunction {
    Count,
    Sum,
    Avg,
    Min,
    Max,
    Latest,
}

impl WindowFunction {
    pub fn name(self) -> &'static str {
        match self {
            WindowFunction::Count => "count",
            WindowFunction::Sum => "sum",
            WindowFunction::Avg => "avg",
            WindowFunction::Min => "min",
            WindowFunction::Max => "max",
            WindowFunction::Latest => "latest",
        }
    }

    pub fn from_name(name: &str) -> Option<WindowFunction> {
        [
            WindowFunction::Count,
            WindowFunction::Sum,
            WindowFunction::Avg,
            WindowFunction::Min,
            WindowFunction::Max,
            WindowFunction::Latest,
        ]
        .into_iter()
        .find(|f| f.name() == name)
    }
}

/// One output feature.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowFeature {
    pub name: String,
    pub function: WindowFunction,
    /// The value column; `None` for `count`.
    pub column: Option<String>,
    /// The window's length in microseconds.
    pub window: i64,
}

/// What the operator computes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WindowAggParams {
    pub keys: Vec<String>,
    /// A microsecond timestamp column.
    pub time: String,
    pub features: Vec<WindowFeature>,
}

/// The type a feature has, or why the operator cannot compute it.
fn feature_type(function: WindowFunction, column: Option<&DataType>) -> Result<DataType, String> {
    use DataType::*;
    let column = match (function, column) {
        (WindowFunction::Count, _) => return Ok(Int64),
        (_, Some(t)) => t,
        (f, None) => return Err(format!("{} needs a column", f.name())),
    };
    let integer = matches!(column, Int8 | Int16 | Int32 | Int64);
    let float = matches!(column, Float32 | Float64);
    if !integer && !float {
        return Err(format!("{} over a {column} column", function.name()));
    }
    Ok(match function {
        WindowFunction::Count => Int64,
        WindowFunction::Sum if integer => Int64,
        WindowFunction::Sum | WindowFunction::Avg => Float64,
        WindowFunction::Min | WindowFunction::Max | WindowFunction::Latest => column.clone(),
    })
}

/// The output's fields: keys and time as in the input, then the features (nullable).
fn output_fields(
    input: &datafusion::arrow::datatypes::Schema,
    params: &WindowAggParams,
) -> DfResult<Vec<Field>> {
    let field = |name: &str| match input.field_with_name(name) {
        Ok(f) => Ok(f.clone()),
        Err(_) => plan_err!("window aggregation: the input has no column '{name}'"),
    };
    let mut fields = Vec::new();
    for key in &params.keys {
        fields.push(field(key)?);
    }
    let time = field(&params.time)?;
    if !matches!(
        time.data_type(),
        DataType::Timestamp(TimeUnit::Microsecond, _)
    ) {
        return plan_err!(
            "window aggregation: the time column '{}' must be a microsecond timestamp, found {}",
            params.time,
            time.data_type()
        );
    }
    fields.push(time);
    for f in &params.features {
        let column = match &f.column {
            Some(c) => Some(field(c)?.data_type().clone()),
            None => None,
        };
        match feature_type(f.function, column.as_ref()) {
            Ok(t) => fields.push(Field::new(&f.name, t, true)),
            Err(e) => return plan_err!("window aggregation of '{}': {e}", f.name),
        }
    }
    Ok(fields)
}

/// Whether the operator computes these features over `input` (else the DSL runs as window
/// functions).
pub fn supports(input: &datafusion::arrow::datatypes::Schema, params: &WindowAggParams) -> bool {
    output_fields(input, params).is_ok()
}

/// The logical plan node; planned into [`WindowAggExec`] by Almanac's query planner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct WindowAggNode {
    pub input: LogicalPlan,
    pub params: WindowAggParams,
    schema: DFSchemaRef,
}

impl WindowAggNode {
    pub fn try_new(input: LogicalPlan, params: WindowAggParams) -> DfResult<Self> {
        let fields = output_fields(input.schema().as_arrow(), &params)?;
        let schema = Arc::new(DFSchema::from_unqualified_fields(
            fields.into(),
            Default::default(),
        )?);
        Ok(WindowAggNode {
            input,
            params,
            schema,
        })
    }
}

impl PartialOrd for WindowAggNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        // The schema follows from the input and parameters, so it takes no part.
        (&self.params, &self.input).partial_cmp(&(&other.params, &other.input))
    }
}

impl UserDefinedLogicalNodeCore for WindowAggNode {
    fn name(&self) -> &str {
        "WindowAgg"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let features: Vec<String> = self
            .params
            .features
            .iter()
            .map(|x| {
                format!(
                    "{}={}({:?}, {}us)",
                    x.name,
                    x.function.name(),
                    x.column,
                    x.window
                )
            })
            .collect();
        write!(
            f,
            "WindowAgg: keys={:?}, time={}, features=[{}]",
            self.params.keys,
            self.params.time,
            features.join(", ")
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        match (inputs.pop(), inputs.is_empty()) {
            (Some(input), true) => WindowAggNode::try_new(input, self.params.clone()),
            _ => plan_err!("window aggregation takes one input"),
        }
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // The input is projected to exactly what the operator reads when the plan is built.
        None
    }
}
