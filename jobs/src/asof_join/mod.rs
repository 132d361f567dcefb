//! The point-in-time ("as-of") join: for every left (observation) row, the right (feature) row
//! with the same key and the latest timestamp in `[t − lookback, t − delay]`.
//!
//! ```text
//!            AsOfJoinExec            one output row per left row, left columns untouched,
//!           /            \           then the requested right columns and a match flag
//!   sort (key, t)     sort (key, ts)         ← SortExec, spilling under the memory pool
//!        |                 |
//!   hash(key) shuffle  hash(key) shuffle     ← inserted by the optimizer / Ballista stages
//!        |                 |
//!   observations        feature rows
//! ```
//!
//! Both inputs are hash-partitioned on the key and sorted by (key, time) within a partition,
//! so each partition is merged in one forward pass that holds one candidate right row: memory
//! does not grow with history length or key skew, unlike a range join followed by a
//! `ROW_NUMBER` (the plan other feature stores use and run out of memory with).
//!
//! # Contract
//! - The right row's timestamp must lie in `[t − lookback, t − delay]`, both ends included;
//!   no lookback means unbounded.
//! - Ties on timestamp: the right row that is greatest on the `tiebreak` columns wins
//!   (compared in order, nulls lowest). Almanac passes the creation time first (when there is
//!   one) and then every emitted feature, so equal keys give identical output whatever order
//!   the rows arrived in.
//! - A left row with a null in any key column, or a null time, matches nothing.
//! - A matched right row whose value is null gives null; no match gives nulls and
//!   `match_column = false`.

mod exec;

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{DFSchema, DFSchemaRef, Result as DfResult, plan_err};
use datafusion::logical_expr::{Expr, LogicalPlan, UserDefinedLogicalNodeCore};

pub use exec::AsOfJoinExec;

/// What an as-of join computes, by column name. Names refer to the left and right inputs'
/// unqualified field names.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct AsOfJoinParams {
    pub left_keys: Vec<String>,
    pub right_keys: Vec<String>,
    /// Left time column, `Timestamp(µs, UTC)`.
    pub left_time: String,
    /// Right time column, `Timestamp(µs, UTC)`.
    pub right_time: String,
    /// Microseconds; `None` = unbounded.
    pub lookback: Option<i64>,
    /// Microseconds (the feature set's `source_delay`).
    pub delay: i64,
    /// Right columns that decide ties on (key, timestamp), most significant first.
    pub tiebreak: Vec<String>,
    /// (right column, output name), in output order.
    pub outputs: Vec<(String, String)>,
    /// Name of the boolean output column saying whether a right row was found.
    pub match_column: String,
}

/// The output schema: left fields as they are, then the outputs (nullable), then the flag.
fn output_schema(left: &DFSchema, right: &DFSchema, params: &AsOfJoinParams) -> DfResult<DFSchema> {
    let mut fields: Vec<_> = left
        .iter()
        .map(|(q, f)| (q.cloned(), Arc::clone(f)))
        .collect();
    for (column, name) in &params.outputs {
        let Ok(field) = right.field_with_unqualified_name(column) else {
            return plan_err!("as-of join: the right input has no column '{column}'");
        };
        fields.push((
            None,
            Arc::new(Field::new(name, field.data_type().clone(), true)),
        ));
    }
    fields.push((
        None,
        Arc::new(Field::new(&params.match_column, DataType::Boolean, false)),
    ));
    DFSchema::new_with_metadata(fields, left.metadata().clone())
}

/// The logical plan node; planned into [`AsOfJoinExec`] by Almanac's query planner.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsOfJoinNode {
    pub left: LogicalPlan,
    pub right: LogicalPlan,
    pub params: AsOfJoinParams,
    schema: DFSchemaRef,
}

impl AsOfJoinNode {
    pub fn try_new(
        left: LogicalPlan,
        right: LogicalPlan,
        params: AsOfJoinParams,
    ) -> DfResult<Self> {
        if params.left_keys.len() != params.right_keys.len() || params.left_keys.is_empty() {
            return plan_err!(
                "as-of join needs the same non-zero number of keys on both sides, got {:?} and {:?}",
                params.left_keys,
                params.right_keys
            );
        }
        let schema = Arc::new(output_schema(left.schema(), right.schema(), &params)?);
        Ok(AsOfJoinNode {
            left,
            right,
            params,
            schema,
        })
    }
}

impl PartialOrd for AsOfJoinNode {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        // The schema follows from the inputs and parameters, so it takes no part.
        (&self.params, &self.left, &self.right).partial_cmp(&(
            &other.params,
            &other.left,
            &other.right,
        ))
    }
}

impl UserDefinedLogicalNodeCore for AsOfJoinNode {
    fn name(&self) -> &str {
        "AsOfJoin"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.left, &self.right]
    }

    fn schema(&self) -> &DFSchemaRef {
        &self.schema
    }

    fn expressions(&self) -> Vec<Expr> {
        vec![]
    }

    fn fmt_for_explain(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AsOfJoin: keys={:?}={:?}, time={}>={}, lookback={:?}, delay={}, outputs={:?}",
            self.params.left_keys,
            self.params.right_keys,
            self.params.left_time,
            self.params.right_time,
            self.params.lookback,
            self.params.delay,
            self.params.outputs
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        if inputs.len() != 2 {
            return plan_err!("as-of join takes two inputs, got {}", inputs.len());
        }
        let right = inputs.pop().expect("two inputs");
        let left = inputs.pop().expect("two inputs");
        AsOfJoinNode::try_new(left, right, self.params.clone())
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Every left column is passed through, and the right side is already projected by the
        // planner to exactly what the join reads.
        None
    }
}
