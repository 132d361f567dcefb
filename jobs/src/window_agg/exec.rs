//! [`WindowAggExec`]: one forward pass per partition; see the module documentation.

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, Int64Builder, PrimitiveArray, RecordBatch,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::{SortOptions, cast, interleave, partition};
use datafusion::arrow::datatypes::{
    DataType, Float64Type, Int64Type, Schema, SchemaRef, TimestampMicrosecondType,
};
use datafusion::arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{DataFusionError, Result as DfResult, internal_err};
use datafusion::execution::TaskContext;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
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

use super::exact_sum::ExactSum;
use super::{WindowAggParams, WindowFunction, output_fields};

const ASCENDING_NULLS_FIRST: SortOptions = SortOptions {
    descending: false,
    nulls_first: true,
};

/// How a value column's values are held: integers exactly as `i64`, floats as `f64`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Float,
}

#[derive(Debug, Clone)]
struct ResolvedFeature {
    function: WindowFunction,
    /// Index into [`Resolved::columns`]; unused by `count`.
    column: usize,
    /// Index into [`Resolved::windows`].
    window: usize,
}

/// Column positions and the distinct windows, resolved against the input's schema.
#[derive(Debug, Clone)]
struct Resolved {
    keys: Vec<usize>,
    time: usize,
    /// Distinct value columns, with how their values are held.
    columns: Vec<(usize, Kind)>,
    windows: Vec<i64>,
    features: Vec<ResolvedFeature>,
}

impl Resolved {
    fn new(input: &Schema, params: &WindowAggParams) -> DfResult<Resolved> {
        let index = |name: &str| {
            input.index_of(name).map_err(|_| {
                DataFusionError::Plan(format!(
                    "window aggregation: the input has no column '{name}'"
                ))
            })
        };
        let keys = params
            .keys
            .iter()
            .map(|k| index(k))
            .collect::<DfResult<Vec<_>>>()?;
        let mut columns: Vec<(usize, Kind)> = Vec::new();
        let mut windows: Vec<i64> = Vec::new();
        let mut features = Vec::new();
        for f in &params.features {
            let column = match &f.column {
                Some(name) if f.function != WindowFunction::Count => {
                    let i = index(name)?;
                    let kind = if input.field(i).data_type().is_floating() {
                        Kind::Float
                    } else {
                        Kind::Int
                    };
                    match columns.iter().position(|(c, _)| *c == i) {
                        Some(p) => p,
                        None => {
                            columns.push((i, kind));
                            columns.len() - 1
                        }
                    }
                }
                _ => 0,
            };
            let window = match windows.iter().position(|w| *w == f.window) {
                Some(p) => p,
                None => {
                    windows.push(f.window);
                    windows.len() - 1
                }
            };
            features.push(ResolvedFeature {
                function: f.function,
                column,
                window,
            });
        }
        Ok(Resolved {
            keys,
            time: index(&params.time)?,
            columns,
            windows,
            features,
        })
    }

    fn sort_columns(&self) -> Vec<usize> {
        let mut c = self.keys.clone();
        c.push(self.time);
        c
    }
}

fn sort_exprs(schema: &Schema, columns: &[usize]) -> Vec<PhysicalSortExpr> {
    columns
        .iter()
        .map(|&i| {
            let column: Arc<dyn PhysicalExpr> = Arc::new(Column::new(schema.field(i).name(), i));
            PhysicalSortExpr::new(column, ASCENDING_NULLS_FIRST)
        })
        .collect()
}

/// The physical window aggregation. See the module documentation for the contract.
///
/// # Cancellation
/// Dropping the output stream drops the input stream; nothing runs in the background.
#[derive(Debug, Clone)]
pub struct WindowAggExec {
    input: Arc<dyn ExecutionPlan>,
    params: WindowAggParams,
    resolved: Resolved,
    schema: SchemaRef,
    cache: Arc<PlanProperties>,
    metrics: ExecutionPlanMetricsSet,
}

impl WindowAggExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, params: WindowAggParams) -> DfResult<Self> {
        let input_schema = input.schema();
        let schema = Arc::new(Schema::new(output_fields(&input_schema, &params)?));
        let resolved = Resolved::new(&input_schema, &params)?;
        // Rows leave sorted by (keys, time), the first columns of the output.
        let out_columns: Vec<usize> = (0..=params.keys.len()).collect();
        let eq = match LexOrdering::new(sort_exprs(&schema, &out_columns)) {
            Some(o) => EquivalenceProperties::new_with_orderings(Arc::clone(&schema), [o]),
            None => EquivalenceProperties::new(Arc::clone(&schema)),
        };
        let partitioning = if params.keys.is_empty() {
            datafusion::physical_plan::Partitioning::UnknownPartitioning(1)
        } else {
            input.output_partitioning().clone()
        };
        let cache = PlanProperties::new(
            eq,
            partitioning,
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(WindowAggExec {
            input,
            params,
            resolved,
            schema,
            cache: Arc::new(cache),
            metrics: ExecutionPlanMetricsSet::new(),
        })
    }

    pub fn params(&self) -> &WindowAggParams {
        &self.params
    }
}

impl DisplayAs for WindowAggExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "WindowAggExec: keys={:?}, time={}, features={}, windows={:?}",
            self.params.keys,
            self.params.time,
            self.params.features.len(),
            self.resolved.windows
        )
    }
}

impl ExecutionPlan for WindowAggExec {
    fn name(&self) -> &str {
        "WindowAggExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        let schema = self.input.schema();
        let distribution = if self.resolved.keys.is_empty() {
            Distribution::SinglePartition
        } else {
            Distribution::KeyPartitioned(
                self.resolved
                    .keys
                    .iter()
                    .map(|&i| {
                        Arc::new(Column::new(schema.field(i).name(), i)) as Arc<dyn PhysicalExpr>
                    })
                    .collect(),
            )
        };
        InputDistributionRequirements::new(vec![distribution])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let ordering = LexOrdering::new(sort_exprs(
            &self.input.schema(),
            &self.resolved.sort_columns(),
        ));
        vec![ordering.map(OrderingRequirements::from)]
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        // Columns are named in the parameters; there is no expression to visit.
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match (children.pop(), children.is_empty()) {
            (Some(input), true) => Ok(Arc::new(WindowAggExec::try_new(
                input,
                self.params.clone(),
            )?)),
            _ => internal_err!("WindowAggExec takes one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let input = self.input.execute(partition, Arc::clone(&context))?;
        let input_schema = self.input.schema();
        let key_fields = self
            .resolved
            .keys
            .iter()
            .map(|&i| {
                SortField::new_with_options(
                    input_schema.field(i).data_type().clone(),
                    ASCENDING_NULLS_FIRST,
                )
            })
            .collect();
        let reservation = MemoryConsumer::new(format!("WindowAggExec[{partition}]"))
            .register(context.memory_pool());
        let state = PartitionState::new(
            &self.resolved,
            RowConverter::new(key_fields)?,
            Arc::clone(&self.schema),
            reservation,
        );
        let baseline = BaselineMetrics::new(&self.metrics, partition);
        let stream = futures::stream::try_unfold(
            (input, state, baseline, false),
            |(mut input, mut state, baseline, mut done)| async move {
                loop {
                    if done {
                        return Ok(None);
                    }
                    let out = match input.next().await {
                        Some(batch) => {
                            let batch = batch?;
                            let _timer = baseline.elapsed_compute().timer();
                            state.push(batch)?;
                            state.flush()?
                        }
                        None => {
                            done = true;
                            let _timer = baseline.elapsed_compute().timer();
                            state.finish()?;
                            state.flush()?
                        }
                    };
                    if let Some(out) = out {
                        baseline.record_output(out.num_rows());
                        return Ok(Some((out, (input, state, baseline, done))));
                    }
                }
            },
        );
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(&self.schema),
            stream,
        )))
    }

    fn metrics(&self) -> Option<MetricsSet> {
        Some(self.metrics.clone_inner())
    }
}

/// One (key, timestamp) group's values of one column.
#[derive(Debug, Clone, Copy)]
struct Partial {
    /// Non-null values.
    n: i64,
    sum: i64,
    min_i: i64,
    max_i: i64,
    min_f: f64,
    max_f: f64,
    /// Where the group's float values start in the column's value queue (absolute).
    values_at: usize,
}

impl Partial {
    fn empty(values_at: usize) -> Partial {
        Partial {
            n: 0,
            sum: 0,
            min_i: i64::MAX,
            max_i: i64::MIN,
            min_f: f64::NAN,
            max_f: f64::NAN,
            values_at,
        }
    }
}

/// A feature's running state over its window.
#[derive(Debug)]
enum Accumulator {
    Count(i64),
    IntSum {
        sum: i64,
        n: i64,
    },
    FloatSum {
        sum: ExactSum,
        n: i64,
    },
    /// (group index, value), values strictly improving from front to back.
    IntExtreme {
        max: bool,
        deque: VecDeque<(usize, i64)>,
    },
    FloatExtreme {
        max: bool,
        deque: VecDeque<(usize, f64)>,
    },
    Latest,
}

/// Where an output row's key values are: a retained batch and a row in it.
#[derive(Debug, Clone, Copy)]
struct Source {
    batch: usize,
    row: usize,
}

/// A group still taking rows.
#[derive(Debug)]
struct Pending {
    ts: i64,
    rows: i64,
    first: Source,
}

/// Output columns being built.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
}

struct PartitionState {
    resolved: Resolved,
    converter: RowConverter,
    schema: SchemaRef,
    reservation: MemoryReservation,
    /// Batches output rows still take their keys from; the last is the newest.
    batches: Vec<RecordBatch>,
    /// The key of the last input row, to tell whether the next batch starts a new key.
    key: Option<OwnedRow>,
    /// A key boundary lies between the last row that joined a group and the next row.
    key_changed: bool,
    /// Absolute index of `times[0]`: the current key's groups, from the oldest any window
    /// still covers, are `times`, `rows` and `partials`.
    base: usize,
    times: VecDeque<i64>,
    rows: VecDeque<i64>,
    /// `partials[g * columns + c]`.
    partials: VecDeque<Partial>,
    /// Per float column, its non-null values in group order (absolute index `value_base[c]`
    /// for the front), so sums add and remove single values exactly.
    values: Vec<VecDeque<f64>>,
    value_base: Vec<usize>,
    /// Per column, the newest group with a value.
    last_valued: Vec<Option<usize>>,
    /// Per window, the first group it covers.
    tails: Vec<usize>,
    accumulators: Vec<Accumulator>,
    pending: Option<Pending>,
    pending_partials: Vec<Partial>,
    // The output under construction.
    out_sources: Vec<Source>,
    out_times: Vec<i64>,
    out_features: Vec<Builder>,
}

impl PartitionState {
    fn new(
        resolved: &Resolved,
        converter: RowConverter,
        schema: SchemaRef,
        reservation: MemoryReservation,
    ) -> PartitionState {
        let columns = resolved.columns.len();
        let mut state = PartitionState {
            resolved: resolved.clone(),
            converter,
            schema,
            reservation,
            batches: Vec::new(),
            key: None,
            key_changed: true,
            base: 0,
            times: VecDeque::new(),
            rows: VecDeque::new(),
            partials: VecDeque::new(),
            values: vec![VecDeque::new(); columns],
            value_base: vec![0; columns],
            last_valued: vec![None; columns],
            tails: vec![0; resolved.windows.len()],
            accumulators: Vec::new(),
            pending: None,
            pending_partials: Vec::new(),
            out_sources: Vec::new(),
            out_times: Vec::new(),
            out_features: Vec::new(),
        };
        state.reset_key();
        state.out_features = state.new_builders();
        state
    }

    fn new_builders(&self) -> Vec<Builder> {
        self.resolved
            .features
            .iter()
            .map(|f| {
                let float = match f.function {
                    WindowFunction::Count => false,
                    WindowFunction::Avg => true,
                    _ => self.resolved.columns[f.column].1 == Kind::Float,
                };
                if float {
                    Builder::Float(Float64Builder::new())
                } else {
                    Builder::Int(Int64Builder::new())
                }
            })
            .collect()
    }

    /// Forgets the previous key's groups: a new key starts with empty windows.
    fn reset_key(&mut self) {
        self.base = 0;
        self.times.clear();
        self.rows.clear();
        self.partials.clear();
        for v in &mut self.values {
            v.clear();
        }
        self.value_base.iter_mut().for_each(|b| *b = 0);
        self.last_valued.iter_mut().for_each(|l| *l = None);
        self.tails.iter_mut().for_each(|t| *t = 0);
        let columns = &self.resolved.columns;
        self.accumulators = self
            .resolved
            .features
            .iter()
            .map(|f| {
                let kind = columns.get(f.column).map(|c| c.1).unwrap_or(Kind::Int);
                match (f.function, kind) {
                    (WindowFunction::Count, _) => Accumulator::Count(0),
                    (WindowFunction::Sum | WindowFunction::Avg, Kind::Int) => {
                        Accumulator::IntSum { sum: 0, n: 0 }
                    }
                    (WindowFunction::Sum | WindowFunction::Avg, Kind::Float) => {
                        Accumulator::FloatSum {
                            sum: ExactSum::default(),
                            n: 0,
                        }
                    }
                    (WindowFunction::Min | WindowFunction::Max, Kind::Int) => {
                        Accumulator::IntExtreme {
                            max: f.function == WindowFunction::Max,
                            deque: VecDeque::new(),
                        }
                    }
                    (WindowFunction::Min | WindowFunction::Max, Kind::Float) => {
                        Accumulator::FloatExtreme {
                            max: f.function == WindowFunction::Max,
                            deque: VecDeque::new(),
                        }
                    }
                    (WindowFunction::Latest, _) => Accumulator::Latest,
                }
            })
            .collect();
    }

    /// Takes a batch of rows sorted by (keys, time), continuing the previous one.
    fn push(&mut self, batch: RecordBatch) -> DfResult<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let keys: Vec<ArrayRef> = self
            .resolved
            .keys
            .iter()
            .map(|&i| Arc::clone(batch.column(i)))
            .collect();
        // The input is sorted by key, so equal keys are contiguous and one vectorized pass
        // finds where each key begins (nulls equal nulls, as in the sort) instead of a
        // row-format comparison per row. Only the first row is compared with the previous
        // batch, and only the last row's key is kept for the next one. Without index columns
        // there is one key, which the first row with a timestamp starts (`key_changed`).
        let n = batch.num_rows();
        let mut boundary = vec![false; n];
        if !keys.is_empty() {
            for range in partition(&keys)?.ranges().iter().skip(1) {
                boundary[range.start] = true;
            }
            let key_of = |converter: &RowConverter, row: usize| -> DfResult<Rows> {
                let one: Vec<ArrayRef> = keys.iter().map(|k| k.slice(row, 1)).collect();
                Ok(converter.convert_columns(&one)?)
            };
            let first = key_of(&self.converter, 0)?;
            boundary[0] = self.key.as_ref().is_none_or(|k| k.row() != first.row(0));
            self.key = Some(key_of(&self.converter, n - 1)?.row(0).owned());
        }
        let times = batch
            .column(self.resolved.time)
            .as_primitive::<TimestampMicrosecondType>()
            .clone();
        let mut ints: Vec<Option<PrimitiveArray<Int64Type>>> = Vec::new();
        let mut floats: Vec<Option<PrimitiveArray<Float64Type>>> = Vec::new();
        for &(c, kind) in &self.resolved.columns {
            match kind {
                Kind::Int => {
                    ints.push(Some(
                        cast(batch.column(c), &DataType::Int64)?
                            .as_primitive::<Int64Type>()
                            .clone(),
                    ));
                    floats.push(None);
                }
                Kind::Float => {
                    floats.push(Some(
                        cast(batch.column(c), &DataType::Float64)?
                            .as_primitive::<Float64Type>()
                            .clone(),
                    ));
                    ints.push(None);
                }
            }
        }
        self.batches.push(batch);
        let slot = self.batches.len() - 1;
        for (row, &starts_key) in boundary.iter().enumerate() {
            self.key_changed |= starts_key;
            if times.is_null(row) {
                continue;
            }
            let ts = times.value(row);
            let same_key = !std::mem::replace(&mut self.key_changed, false);
            match &mut self.pending {
                Some(p) if same_key && p.ts == ts => p.rows += 1,
                Some(p) if same_key && ts < p.ts => {
                    return internal_err!(
                        "WindowAggExec: input not sorted by time within a key ({ts} after {})",
                        p.ts
                    );
                }
                _ => {
                    self.close_group()?;
                    if !same_key {
                        self.reset_key();
                    }
                    self.pending = Some(Pending {
                        ts,
                        rows: 1,
                        first: Source { batch: slot, row },
                    });
                    // Reused for every group: no allocation per (key, timestamp).
                    self.pending_partials.clear();
                    for c in 0..self.values.len() {
                        let end = self.value_base[c] + self.values[c].len();
                        self.pending_partials.push(Partial::empty(end));
                    }
                }
            }
            for (c, partial) in self.pending_partials.iter_mut().enumerate() {
                if let Some(a) = &ints[c] {
                    if a.is_valid(row) {
                        let v = a.value(row);
                        partial.n += 1;
                        partial.sum = partial.sum.wrapping_add(v);
                        partial.min_i = partial.min_i.min(v);
                        partial.max_i = partial.max_i.max(v);
                    }
                } else if let Some(a) = &floats[c]
                    && a.is_valid(row)
                {
                    let v = a.value(row);
                    if partial.n == 0 {
                        (partial.min_f, partial.max_f) = (v, v);
                    } else {
                        if v.total_cmp(&partial.min_f).is_lt() {
                            partial.min_f = v;
                        }
                        if v.total_cmp(&partial.max_f).is_gt() {
                            partial.max_f = v;
                        }
                    }
                    partial.n += 1;
                    self.values[c].push_back(v);
                }
            }
        }
        Ok(())
    }

    /// The input ended: the last group is complete.
    fn finish(&mut self) -> DfResult<()> {
        self.close_group()
    }

    /// Adds the pending group to every window, moves their tails, and outputs its row.
    fn close_group(&mut self) -> DfResult<()> {
        let Some(pending) = self.pending.take() else {
            return Ok(());
        };
        let columns = self.resolved.columns.len();
        let g = self.base + self.times.len();
        let ts = pending.ts;
        self.times.push_back(ts);
        self.rows.push_back(pending.rows);
        let partials = std::mem::take(&mut self.pending_partials);
        for (c, p) in partials.iter().enumerate() {
            if p.n > 0 {
                self.last_valued[c] = Some(g);
            }
        }
        self.partials.extend(partials.iter().copied());

        // The head: every feature takes the new group.
        for (f, acc) in self.resolved.features.iter().zip(&mut self.accumulators) {
            let p = partials.get(f.column);
            add(
                acc,
                g,
                pending.rows,
                p,
                &self.values,
                &self.value_base,
                f.column,
            );
        }
        self.pending_partials = partials;
        // The tails: groups older than `ts - window` leave.
        for (w, &length) in self.resolved.windows.iter().enumerate() {
            let lower = ts.saturating_sub(length);
            while self.tails[w] < g && self.times[self.tails[w] - self.base] < lower {
                let old = self.tails[w];
                let at = old - self.base;
                for (f, acc) in self.resolved.features.iter().zip(&mut self.accumulators) {
                    if f.window != w {
                        continue;
                    }
                    let p = self.partials.get(at * columns + f.column).copied();
                    remove(
                        acc,
                        self.rows[at],
                        p.as_ref(),
                        &self.values,
                        &self.value_base,
                        f.column,
                    );
                }
                self.tails[w] += 1;
            }
        }

        // The row.
        self.out_sources.push(pending.first);
        self.out_times.push(ts);
        for ((f, acc), builder) in self
            .resolved
            .features
            .iter()
            .zip(&mut self.accumulators)
            .zip(&mut self.out_features)
        {
            let tail = self.tails[f.window];
            match (acc, builder) {
                (Accumulator::Count(n), Builder::Int(b)) => b.append_value(*n),
                (Accumulator::IntSum { sum, n }, Builder::Int(b)) => {
                    b.append_option((*n > 0).then_some(*sum))
                }
                (Accumulator::IntSum { sum, n }, Builder::Float(b)) => {
                    b.append_option((*n > 0).then(|| *sum as f64 / *n as f64))
                }
                (Accumulator::FloatSum { sum, n }, Builder::Float(b)) => {
                    let total = sum.value();
                    b.append_option(match f.function {
                        WindowFunction::Avg => (*n > 0).then(|| total / *n as f64),
                        _ => (*n > 0).then_some(total),
                    })
                }
                (Accumulator::IntExtreme { deque, .. }, Builder::Int(b)) => {
                    while deque.front().is_some_and(|(i, _)| *i < tail) {
                        deque.pop_front();
                    }
                    b.append_option(deque.front().map(|(_, v)| *v))
                }
                (Accumulator::FloatExtreme { deque, .. }, Builder::Float(b)) => {
                    while deque.front().is_some_and(|(i, _)| *i < tail) {
                        deque.pop_front();
                    }
                    b.append_option(deque.front().map(|(_, v)| *v))
                }
                (Accumulator::Latest, builder) => {
                    let p = self.last_valued[f.column]
                        .filter(|&i| i >= tail)
                        .map(|i| self.partials[(i - self.base) * columns + f.column]);
                    match builder {
                        Builder::Int(b) => b.append_option(p.map(|p| p.max_i)),
                        Builder::Float(b) => b.append_option(p.map(|p| p.max_f)),
                    }
                }
                _ => return internal_err!("WindowAggExec: a feature's state and output disagree"),
            }
        }

        // Groups no window covers any more are dropped.
        let oldest = self.tails.iter().copied().min().unwrap_or(g + 1);
        while self.base < oldest && !self.times.is_empty() {
            self.times.pop_front();
            self.rows.pop_front();
            for c in 0..columns {
                let p = self.partials.pop_front().expect("a partial per column");
                if self.resolved.columns[c].1 == Kind::Float {
                    // The group's values are the front of the column's queue.
                    let end = p.values_at + p.n as usize;
                    while self.value_base[c] < end {
                        self.values[c].pop_front();
                        self.value_base[c] += 1;
                    }
                }
            }
            self.base += 1;
        }
        self.track_memory()
    }

    /// Keeps the memory pool told about the current key's groups.
    fn track_memory(&mut self) -> DfResult<()> {
        let groups = self.times.len();
        let bytes = groups * (16 + self.resolved.columns.len() * std::mem::size_of::<Partial>())
            + self.values.iter().map(|v| v.len() * 8).sum::<usize>()
            + self.accumulators.len() * groups.min(64) * 16;
        if bytes > self.reservation.size() {
            self.reservation.try_resize(bytes * 2).map_err(|e| {
                DataFusionError::ResourcesExhausted(format!(
                    "the windows of one key hold {groups} timestamps, more than the memory \
                     pool allows ({e}); raise the memory limit"
                ))
            })?;
        }
        Ok(())
    }

    /// The rows completed so far, as a batch; keeps only the batch the pending group needs.
    fn flush(&mut self) -> DfResult<Option<RecordBatch>> {
        let out = if self.out_sources.is_empty() {
            None
        } else {
            let mut columns: Vec<ArrayRef> = Vec::new();
            let indices: Vec<(usize, usize)> =
                self.out_sources.iter().map(|s| (s.batch, s.row)).collect();
            for &k in &self.resolved.keys {
                let arrays: Vec<&dyn Array> =
                    self.batches.iter().map(|b| b.column(k).as_ref()).collect();
                columns.push(interleave(&arrays, &indices)?);
            }
            let time_type = self.schema.field(self.resolved.keys.len()).data_type();
            let times = TimestampMicrosecondArray::from(std::mem::take(&mut self.out_times));
            columns.push(cast(&times, time_type)?);
            let fresh = self.new_builders();
            let builders = std::mem::replace(&mut self.out_features, fresh);
            let first_feature = self.resolved.keys.len() + 1;
            for (i, builder) in builders.into_iter().enumerate() {
                let array: ArrayRef = match builder {
                    Builder::Int(mut b) => Arc::new(b.finish()),
                    Builder::Float(mut b) => Arc::new(b.finish()),
                };
                let target = self.schema.field(first_feature + i).data_type();
                columns.push(if array.data_type() == target {
                    array
                } else {
                    cast(&array, target)?
                });
            }
            self.out_sources.clear();
            Some(RecordBatch::try_new(Arc::clone(&self.schema), columns)?)
        };
        // Only the pending group's first row is still needed.
        match &mut self.pending {
            Some(p) => {
                let keep = self.batches.swap_remove(p.first.batch);
                self.batches = vec![keep];
                p.first.batch = 0;
            }
            None => self.batches.clear(),
        }
        Ok(out)
    }
}

/// A feature's window takes group `g`.
fn add(
    acc: &mut Accumulator,
    g: usize,
    rows: i64,
    p: Option<&Partial>,
    values: &[VecDeque<f64>],
    value_base: &[usize],
    column: usize,
) {
    match acc {
        Accumulator::Count(n) => *n += rows,
        Accumulator::Latest => {}
        _ => {
            let Some(p) = p.filter(|p| p.n > 0) else {
                return;
            };
            match acc {
                Accumulator::IntSum { sum, n } => {
                    *sum = sum.wrapping_add(p.sum);
                    *n += p.n;
                }
                Accumulator::FloatSum { sum, n } => {
                    let start = p.values_at - value_base[column];
                    for v in values[column].range(start..start + p.n as usize) {
                        sum.add(*v);
                    }
                    *n += p.n;
                }
                Accumulator::IntExtreme { max, deque } => {
                    let v = if *max { p.max_i } else { p.min_i };
                    while deque
                        .back()
                        .is_some_and(|(_, b)| if *max { *b <= v } else { *b >= v })
                    {
                        deque.pop_back();
                    }
                    deque.push_back((g, v));
                }
                Accumulator::FloatExtreme { max, deque } => {
                    let v = if *max { p.max_f } else { p.min_f };
                    while deque.back().is_some_and(|(_, b)| {
                        if *max {
                            b.total_cmp(&v).is_le()
                        } else {
                            b.total_cmp(&v).is_ge()
                        }
                    }) {
                        deque.pop_back();
                    }
                    deque.push_back((g, v));
                }
                Accumulator::Count(_) | Accumulator::Latest => {}
            }
        }
    }
}

/// A feature's window lets a group go; `min`/`max` deques drop it when read.
fn remove(
    acc: &mut Accumulator,
    rows: i64,
    p: Option<&Partial>,
    values: &[VecDeque<f64>],
    value_base: &[usize],
    column: usize,
) {
    match acc {
        Accumulator::Count(n) => *n -= rows,
        Accumulator::IntSum { sum, n } => {
            if let Some(p) = p.filter(|p| p.n > 0) {
                *sum = sum.wrapping_sub(p.sum);
                *n -= p.n;
            }
        }
        Accumulator::FloatSum { sum, n } => {
            if let Some(p) = p.filter(|p| p.n > 0) {
                let start = p.values_at - value_base[column];
                for v in values[column].range(start..start + p.n as usize) {
                    sum.remove(*v);
                }
                *n -= p.n;
            }
        }
        Accumulator::IntExtreme { .. } | Accumulator::FloatExtreme { .. } | Accumulator::Latest => {
        }
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::compute::concat_batches;
    use datafusion::arrow::datatypes::{Field, TimeUnit};
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::prelude::SessionContext;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;
    use crate::window_agg::WindowFeature;

    const MINUTE: i64 = 60_000_000;

    /// key, timestamp, a double and a long.
    type Row = (Option<String>, Option<i64>, Option<f64>, Option<i64>);

    /// Rows sorted as the operator requires, (key, time) nulls first: few keys (and null
    /// keys), many tied and some null timestamps, null values.
    fn sorted_input(seed: u64) -> RecordBatch {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut rows: Vec<Row> = (0..600)
            .map(|_| {
                let key = (!rng.random_bool(0.1)).then(|| format!("k{}", rng.random_range(0..6)));
                let ts = (!rng.random_bool(0.05)).then(|| rng.random_range(0..48) * 15 * MINUTE);
                let f = (!rng.random_bool(0.2)).then(|| rng.random_range(-100..100) as f64 / 8.0);
                let i = (!rng.random_bool(0.2)).then(|| rng.random_range(-50..50));
                (key, ts, f, i)
            })
            .collect();
        // `None` orders first, as nulls do in the required sort.
        rows.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ),
            Field::new("f", DataType::Float64, true),
            Field::new("i", DataType::Int64, true),
        ]));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter(rows.iter().map(|r| r.0.clone()))),
            Arc::new(
                datafusion::arrow::array::TimestampMicrosecondArray::from_iter(
                    rows.iter().map(|r| r.1),
                )
                .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.2))),
            Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.3))),
        ];
        RecordBatch::try_new(schema, columns).unwrap()
    }

    fn params(keys: &[&str]) -> WindowAggParams {
        let feature = |name: &str, function, column: Option<&str>, minutes: i64| WindowFeature {
            name: name.to_string(),
            function,
            column: column.map(str::to_string),
            window: minutes * MINUTE,
        };
        WindowAggParams {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            time: "t".to_string(),
            features: vec![
                feature("c1h", WindowFunction::Count, None, 60),
                feature("s1h", WindowFunction::Sum, Some("f"), 60),
                feature("a3h", WindowFunction::Avg, Some("f"), 180),
                feature("n2h", WindowFunction::Min, Some("i"), 120),
                feature("x2h", WindowFunction::Max, Some("f"), 120),
                feature("l1h", WindowFunction::Latest, Some("i"), 60),
                feature("si0", WindowFunction::Sum, Some("i"), 0),
            ],
        }
    }

    async fn run(keys: &[&str], batches: Vec<RecordBatch>) -> RecordBatch {
        let schema = batches[0].schema();
        let input = MemorySourceConfig::try_new_exec(&[batches], schema, None).unwrap();
        let exec = WindowAggExec::try_new(input, params(keys)).unwrap();
        let stream = exec.execute(0, SessionContext::new().task_ctx()).unwrap();
        let out: Vec<RecordBatch> = stream.map(|b| b.unwrap()).collect().await;
        concat_batches(&exec.schema(), &out).unwrap()
    }

    /// Keys, groups and runs of null timestamps that cross batch boundaries give the same
    /// output as one batch: batch boundaries carry the key and whether it changed. Also
    /// without index columns (one key: the input sorted by time alone).
    #[tokio::test]
    async fn the_output_does_not_depend_on_how_the_input_is_batched() {
        for seed in [1, 2, 3] {
            let keyed = sorted_input(seed);
            let keyless = {
                let mut order: Vec<usize> = (0..keyed.num_rows()).collect();
                let ts = keyed.column(1).as_primitive::<TimestampMicrosecondType>();
                order.sort_by_key(|&r| (ts.is_valid(r).then(|| ts.value(r)), r));
                let indices = datafusion::arrow::array::UInt32Array::from_iter_values(
                    order.into_iter().map(|r| r as u32),
                );
                datafusion::arrow::compute::take_record_batch(&keyed, &indices).unwrap()
            };
            for (keys, input) in [(&["k"][..], keyed), (&[][..], keyless)] {
                let whole = run(keys, vec![input.clone()]).await;
                assert!(whole.num_rows() > 40, "{}", whole.num_rows());
                for size in [1, 2, 3, 5, 64] {
                    let batches = (0..input.num_rows())
                        .step_by(size)
                        .map(|at| input.slice(at, size.min(input.num_rows() - at)))
                        .collect();
                    assert_eq!(
                        run(keys, batches).await,
                        whole,
                        "seed {seed}, keys {keys:?}, batches of {size}"
                    );
                }
            }
        }
    }
}
