//! [`AsOfJoinExec`]: the physical as-of join, one forward merge per partition.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::make_comparator;
use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanBuilder, RecordBatch, new_null_array,
};
use datafusion::arrow::compute::{SortOptions, interleave};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimestampMicrosecondType};
use datafusion::arrow::row::{Row, RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, internal_err, plan_err};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::{BaselineMetrics, ExecutionPlanMetricsSet, MetricsSet};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;

use super::AsOfJoinParams;

/// Column positions resolved from [`AsOfJoinParams`] against the inputs' schemas.
#[derive(Debug, Clone)]
struct Resolved {
    left_keys: Vec<usize>,
    right_keys: Vec<usize>,
    left_time: usize,
    right_time: usize,
    tiebreak: Vec<usize>,
    outputs: Vec<usize>,
    lookback: Option<i64>,
    delay: i64,
}

fn index_of(schema: &Schema, side: &str, name: &str) -> DfResult<usize> {
    schema.index_of(name).map_err(|_| {
        DataFusionError::Plan(format!(
            "as-of join: the {side} input has no column '{name}'"
        ))
    })
}

const ASCENDING_NULLS_FIRST: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

fn sort_exprs(schema: &Schema, columns: &[usize]) -> Vec<PhysicalSortExpr> {
    columns
        .iter()
        .map(|&i| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(schema.field(i).name(), i));
            PhysicalSortExpr::new(column, ASCENDING_NULLS_FIRST)
        })
        .collect()
}

fn columns(schema: &Schema, indices: &[usize]) -> Vec<Arc<dyn PhysicalExpr>> {
    indices
        .iter()
        .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>)
        .collect()
}

/// The physical as-of join. See the module documentation for the contract.
///
/// # Cancellation
/// Dropping the output stream drops both input streams; nothing runs in the background.
#[derive(Debug, Clone)]
pub struct AsOfJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    params: AsOfJoinParams,
    resolved: Resolved,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl AsOfJoinExec {
    pub fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        params: AsOfJoinParams,
    ) -> DfResult<Self> {
        let ls = left.schema();
        let rs = right.schema();
        let resolve = |schema: &Schema, side: &str, names: &[String]| {
            names
                .iter()
                .map(|n| index_of(schema, side, n))
                .collect::<DfResult<Vec<_>>>()
        };
        let resolved = Resolved {
            left_keys: resolve(&ls, "left", &params.left_keys)?,
            right_keys: resolve(&rs, "right", &params.right_keys)?,
            left_time: index_of(&ls, "left", &params.left_time)?,
            right_time: index_of(&rs, "right", &params.right_time)?,
            tiebreak: resolve(&rs, "right", &params.tiebreak)?,
            outputs: params
                .outputs
                .iter()
                .map(|(c, _)| index_of(&rs, "right", c))
                .collect::<DfResult<Vec<_>>>()?,
            lookback: params.lookback,
            delay: params.delay,
        };
        for (l, r) in resolved.left_keys.iter().zip(&resolved.right_keys) {
            let (lt, rt) = (ls.field(*l).data_type(), rs.field(*r).data_type());
            if lt != rt {
                return plan_err!(
                    "as-of join keys '{}' ({lt}) and '{}' ({rt}) must have the same type",
                    ls.field(*l).name(),
                    rs.field(*r).name()
                );
            }
        }
        for (side, schema, i) in [
            ("left", &ls, resolved.left_time),
            ("right", &rs, resolved.right_time),
        ] {
            if !matches!(
                schema.field(i).data_type(),
                DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Microsecond, _)
            ) {
                return plan_err!(
                    "as-of join: the {side} time column '{}' must be a microsecond timestamp, found {}",
                    schema.field(i).name(),
                    schema.field(i).data_type()
                );
            }
        }
        let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
        for (i, (_, name)) in resolved.outputs.iter().zip(&params.outputs) {
            fields.push(Field::new(name, rs.field(*i).data_type().clone(), true));
        }
        fields.push(Field::new(&params.match_column, DataType::Boolean, false));
        let schema = Arc::new(Schema::new_with_metadata(fields, ls.metadata().clone()));

        // Rows leave in the order the left input was required to have, so a following join
        // on the same keys needs no new sort.
        let ordering = LexOrdering::new(sort_exprs(&ls, &left_sort_columns(&resolved)));
        let eq = match ordering {
            Some(o) => EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [o]),
            None => EquivalenceProperties::new(Arc::clone(&schema)),
        };
        let cache = PlanProperties::new(
            eq,
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(AsOfJoinExec {
            left,
            right,
            params,
            resolved,
            schema,
            cache: Arc::new(cache),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn params(&self) -> &AsOfJoinParams {
        &self.params
    }
}

fn left_sort_columns(r: &Resolved) -> Vec<usize> {
    let mut c = r.left_keys.clone();
    c.push(r.left_time);
    c
}

fn right_sort_columns(r: &Resolved) -> Vec<usize> {
    let mut c = r.right_keys.clone();
    c.push(r.right_time);
    c
}

impl DisplayAs for AsOfJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "AsOfJoinExec: keys={:?}={:?}, lookback={:?}, delay={}, outputs={}",
            self.params.left_keys,
            self.params.right_keys,
            self.params.lookback,
            self.params.delay,
            self.params.outputs.len()
        )
    }
}

impl ExecutionPlan for AsOfJoinExec {
    fn name(&self) -> &str {
        "AsOfJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        InputDistributionRequirements::co_partitioned(vec![
            Distribution::KeyPartitioned(columns(&self.left.schema(), &self.resolved.left_keys)),
            Distribution::KeyPartitioned(columns(&self.right.schema(), &self.resolved.right_keys)),
        ])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let left = LexOrdering::new(sort_exprs(
            &self.left.schema(),
            &left_sort_columns(&self.resolved),
        ));
        let right = LexOrdering::new(sort_exprs(
            &self.right.schema(),
            &right_sort_columns(&self.resolved),
        ));
        vec![
            left.map(OrderingRequirements::from),
            right.map(OrderingRequirements::from),
        ]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true, false]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        // Keys are plain columns named in the parameters; there is no expression to visit.
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        if children.len() != 2 {
            return internal_err!("AsOfJoinExec takes two children, got {}", children.len());
        }
        let right = children.pop().expect("two children");
        let left = children.pop().expect("two children");
        Ok(Arc::new(AsOfJoinExec::try_new(
            left,
            right,
            self.params.clone(),
        )?))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let left_parts = self.left.output_partitioning().partition_count();
        let right_parts = self.right.output_partitioning().partition_count();
        if left_parts != right_parts {
            return internal_err!(
                "AsOfJoinExec inputs are not co-partitioned: {left_parts} and {right_parts} partitions"
            );
        }
        let left = self.left.execute(partition, Arc::clone(&context))?;
        let right = self.right.execute(partition, context)?;
        let key_fields = self
            .resolved
            .left_keys
            .iter()
            .map(|&i| {
                SortField::new_with_options(
                    self.left.schema().field(i).data_type().clone(),
                    ASCENDING_NULLS_FIRST,
                )
            })
            .collect();
        let state = MergeState {
            left,
            right,
            right_done: false,
            current: None,
            pos: 0,
            next_seq: 0,
            candidate: None,
            converter: RowConverter::new(key_fields)?,
            resolved: self.resolved.clone(),
            schema: Arc::clone(&self.schema),
            right_schema: self.right.schema(),
            baseline: BaselineMetrics::new(&self.metrics, partition),
        };
        let stream = futures::stream::try_unfold(state, |mut state| async move {
            let batch = state.next_batch().await?;
            Ok(batch.map(|b| (b, state)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// A right batch with its keys in row format, so keys of any types compare as bytes in the
/// same order the sort produced.
struct RightBatch {
    seq: u64,
    batch: RecordBatch,
    keys: Rows,
}

impl RightBatch {
    fn time(&self, column: usize, row: usize) -> Option<i64> {
        let times = self
            .batch
            .column(column)
            .as_primitive::<TimestampMicrosecondType>();
        times.is_valid(row).then(|| times.value(row))
    }
}

/// One partition's merge: a cursor over the sorted right input and the best right row seen
/// for the current key.
struct MergeState {
    left: SendableRecordBatchStream,
    right: SendableRecordBatchStream,
    right_done: bool,
    current: Option<Arc<RightBatch>>,
    pos: usize,
    next_seq: u64,
    candidate: Option<(Arc<RightBatch>, usize)>,
    converter: RowConverter,
    resolved: Resolved,
    schema: SchemaRef,
    right_schema: SchemaRef,
    baseline: BaselineMetrics,
}

impl MergeState {
    async fn next_batch(&mut self) -> DfResult<Option<RecordBatch>> {
        let batch = loop {
            match self.left.next().await {
                None => return Ok(None),
                Some(b) => {
                    let b = b?;
                    if b.num_rows() > 0 {
                        break b;
                    }
                }
            }
        };
        let keys: Vec<ArrayRef> = self
            .resolved
            .left_keys
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        let rows = self.converter.convert_columns(&keys)?;
        let times = batch
            .column(self.resolved.left_time)
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        let n = batch.num_rows();
        let mut slots: Vec<Arc<RightBatch>> = Vec::new();
        let mut slot_of: HashMap<u64, usize> = HashMap::new();
        let mut indices: Vec<(usize, usize)> = Vec::with_capacity(n);
        let mut matched = BooleanBuilder::with_capacity(n);
        for i in 0..n {
            let usable = times.is_valid(i) && keys.iter().all(|k| k.is_valid(i));
            if !usable {
                indices.push((0, 0));
                matched.append_value(false);
                continue;
            }
            let t = times.value(i);
            let key = rows.row(i);
            self.advance(key, t.saturating_sub(self.resolved.delay))
                .await?;
            let lower = self.resolved.lookback.map(|l| t.saturating_sub(l));
            let hit = self.candidate.as_ref().filter(|(rb, r)| {
                rb.keys.row(*r) == key
                    && match (lower, rb.time(self.resolved.right_time, *r)) {
                        (_, None) => false,
                        (None, Some(_)) => true,
                        (Some(lo), Some(ts)) => ts >= lo,
                    }
            });
            match hit {
                Some((rb, r)) => {
                    let slot = *slot_of.entry(rb.seq).or_insert_with(|| {
                        slots.push(Arc::clone(rb));
                        slots.len()
                    });
                    indices.push((slot, *r));
                    matched.append_value(true);
                }
                None => {
                    indices.push((0, 0));
                    matched.append_value(false);
                }
            }
        }
        let mut columns = batch.columns().to_vec();
        for &c in &self.resolved.outputs {
            let none = new_null_array(self.right_schema.field(c).data_type(), 1);
            let mut arrays: Vec<&dyn Array> = vec![none.as_ref()];
            arrays.extend(slots.iter().map(|s| s.batch.column(c).as_ref()));
            columns.push(interleave(&arrays, &indices)?);
        }
        columns.push(Arc::new(matched.finish()));
        let out = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        self.baseline.record_output(out.num_rows());
        Ok(Some(out))
    }

    /// Moves the right cursor past every row with a key below `key`, and past rows with
    /// `key` at or before `upper`, keeping the best of the latter as the candidate.
    async fn advance(&mut self, key: Row<'_>, upper: i64) -> DfResult<()> {
        loop {
            let Some(cur) = self
                .current
                .as_ref()
                .filter(|c| self.pos < c.batch.num_rows())
            else {
                if !self.fetch_right().await? {
                    return Ok(());
                }
                continue;
            };
            let pos = self.pos;
            match cur.keys.row(pos).cmp(&key) {
                std::cmp::Ordering::Less => self.pos += 1,
                std::cmp::Ordering::Greater => return Ok(()),
                std::cmp::Ordering::Equal => {
                    let Some(ts) = cur.time(self.resolved.right_time, pos) else {
                        self.pos += 1;
                        continue;
                    };
                    if ts > upper {
                        return Ok(());
                    }
                    let replace = match &self.candidate {
                        Some((c, r))
                            if c.keys.row(*r) == key
                                && c.time(self.resolved.right_time, *r) == Some(ts) =>
                        {
                            beats(cur, pos, c, *r, &self.resolved.tiebreak)?
                        }
                        _ => true,
                    };
                    if replace {
                        self.candidate = Some((Arc::clone(cur), pos));
                    }
                    self.pos += 1;
                }
            }
        }
    }

    /// Loads the next non-empty right batch; false when the right input is exhausted.
    async fn fetch_right(&mut self) -> DfResult<bool> {
        while !self.right_done {
            match self.right.next().await {
                None => self.right_done = true,
                Some(b) => {
                    let batch = b?;
                    if batch.num_rows() == 0 {
                        continue;
                    }
                    let keys: Vec<ArrayRef> = self
                        .resolved
                        .right_keys
                        .iter()
                        .map(|&i| Arc::clone(batch.column(i)))
                        .collect();
                    let keys = self.converter.convert_columns(&keys)?;
                    self.next_seq += 1;
                    self.current = Some(Arc::new(RightBatch {
                        seq: self.next_seq,
                        batch,
                        keys,
                    }));
                    self.pos = 0;
                    return Ok(true);
                }
            }
        }
        self.current = None;
        Ok(false)
    }
}

/// Whether right row `a` wins a timestamp tie against `b`: greater on the first tiebreak
/// column that differs, nulls lowest. Equal rows keep the earlier one; they are identical
/// on every emitted column, so the choice cannot show.
fn beats(
    a: &RightBatch,
    a_row: usize,
    b: &RightBatch,
    b_row: usize,
    tiebreak: &[usize],
) -> DfResult<bool> {
    for &c in tiebreak {
        let compare = make_comparator(
            a.batch.column(c).as_ref(),
            b.batch.column(c).as_ref(),
            ASCENDING_NULLS_FIRST,
        )?;
        match compare(a_row, b_row) {
            std::cmp::Ordering::Greater => return Ok(true),
            std::cmp::Ordering::Less => return Ok(false),
            std::cmp::Ordering::Equal => {}
        }
    }
    Ok(false)
}
