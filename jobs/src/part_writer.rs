//! Parallel parquet output: every partition writes its own files and reports them.
//!
//! DataFusion's `DataSinkExec` writes from a single task. [`PartWriterExec`] instead runs
//! in every partition, in one of two layouts:
//!
//! - [`Layout::Chunks`]: rows are routed to partitions by *chunk* (`row / rows_per_file`,
//!   where `row` is a dense row number), sorted by row number within the partition, and each
//!   chunk becomes one file `part-<chunk>.parquet`. Reading the files in name order gives the
//!   rows in row-number order, and because chunk boundaries depend only on row numbers the
//!   files are byte-identical however many partitions wrote them (retrieval output).
//! - [`Layout::Partitioned`]: each partition sorts its rows by a string partition column and
//!   writes one file per value, `<column>=<value>/<prefix>-<partition>-<n>.parquet`, without
//!   the column (Delta Lake keeps partition values in its log: the offline store).
//!
//! The output is one row per file written: `file` (relative to the folder), `rows`, `bytes`,
//! `partition` (the partition value, or null), and for each tally column the number of `true`
//! values in it (tally columns, like the row number and the partition column, are not written).

use std::fmt;
use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, RecordBatch, StringBuilder, UInt64Builder};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{
    DFSchema, DFSchemaRef, DataFusionError, Result as DfResult, ScalarValue, internal_err, plan_err,
};
use datafusion::datasource::listing::ListingTableUrl;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, Operator, UserDefinedLogicalNodeCore};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use datafusion::physical_expr::expressions::{BinaryExpr, Column, Literal};
use datafusion::physical_expr::{
    Distribution, EquivalenceProperties, LexOrdering, OrderingRequirements, PhysicalExpr,
    PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties,
    InputDistributionRequirements, Partitioning, PlanProperties, SendableRecordBatchStream,
};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};

/// Rows handed to the parquet writer per call. Writing in fixed slices from the start of each
/// file keeps page boundaries independent of how the input happened to be batched.
const WRITE_SLICE: usize = 8192;

/// How rows are spread over files.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub enum Layout {
    /// `part-<row / rows_per_file>.parquet`, rows in row-number order.
    Chunks {
        /// The dense `UInt64` row number column that orders rows and picks their file.
        row_column: String,
        rows_per_file: u64,
    },
    /// `<column>=<value>/<file_prefix>-<partition>-<n>.parquet` for a `Utf8` column.
    Partitioned {
        column: String,
        /// Distinguishes this write's files from every other write's (e.g. a task attempt).
        file_prefix: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct PartWriterParams {
    /// URL of the folder the files go to (`file:///…`, `s3://…`, …).
    pub dir: String,
    pub layout: Layout,
    /// Boolean columns counted, not written.
    pub tally_columns: Vec<String>,
}

/// Column positions of the report: file, rows, bytes, partition, then the tallies.
pub const REPORT_TALLIES: usize = 4;

/// The writer's output schema: `file`, `rows`, `bytes`, `partition`, then one count per tally
/// column.
pub fn report_schema(params: &PartWriterParams) -> SchemaRef {
    let mut fields = vec![
        Field::new("file", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("bytes", DataType::UInt64, false),
        Field::new("partition", DataType::Utf8, true),
    ];
    fields.extend(
        params
            .tally_columns
            .iter()
            .map(|c| Field::new(c, DataType::UInt64, false)),
    );
    Arc::new(Schema::new(fields))
}

/// The logical plan node; planned into [`PartWriterExec`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PartWriterNode {
    pub input: LogicalPlan,
    pub params: PartWriterParams,
    schema: DFSchemaRef,
}

impl PartWriterNode {
    pub fn try_new(input: LogicalPlan, params: PartWriterParams) -> DfResult<Self> {
        if matches!(
            params.layout,
            Layout::Chunks {
                rows_per_file: 0,
                ..
            }
        ) {
            return plan_err!("rows per file must be at least 1");
        }
        let schema = Arc::new(DFSchema::try_from(report_schema(&params))?);
        Ok(PartWriterNode {
            input,
            params,
            schema,
        })
    }
}

impl PartialOrd for PartWriterNode {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        (&self.params, &self.input).partial_cmp(&(&other.params, &other.input))
    }
}

impl UserDefinedLogicalNodeCore for PartWriterNode {
    fn name(&self) -> &str {
        "PartWriter"
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
        write!(
            f,
            "PartWriter: dir={}, layout={:?}",
            self.params.dir, self.params.layout
        )
    }

    fn with_exprs_and_inputs(
        &self,
        _exprs: Vec<Expr>,
        mut inputs: Vec<LogicalPlan>,
    ) -> DfResult<Self> {
        match inputs.pop() {
            Some(input) if inputs.is_empty() => PartWriterNode::try_new(input, self.params.clone()),
            _ => plan_err!("PartWriter takes one input"),
        }
    }

    fn necessary_children_exprs(&self, _output_columns: &[usize]) -> Option<Vec<Vec<usize>>> {
        // Every input column is either written or counted.
        None
    }
}

/// The physical writer. See the module documentation.
///
/// # Errors
/// A failed upload fails the partition; files already written stay in `dir`, which the caller
/// treats as a temporary folder and discards.
#[derive(Debug, Clone)]
pub struct PartWriterExec {
    input: Arc<dyn ExecutionPlan>,
    params: PartWriterParams,
    /// The row number (chunks) or partition column.
    key_index: usize,
    tally_indices: Vec<usize>,
    written: Vec<usize>,
    cache: Arc<PlanProperties>,
}

impl PartWriterExec {
    pub fn try_new(input: Arc<dyn ExecutionPlan>, params: PartWriterParams) -> DfResult<Self> {
        let schema = input.schema();
        let find = |name: &str| {
            schema.index_of(name).map_err(|_| {
                DataFusionError::Plan(format!("part writer: the input has no column '{name}'"))
            })
        };
        let (key_column, key_type) = match &params.layout {
            Layout::Chunks { row_column, .. } => (row_column, DataType::UInt64),
            Layout::Partitioned { column, .. } => (column, DataType::Utf8),
        };
        let key_index = find(key_column)?;
        if schema.field(key_index).data_type() != &key_type {
            return plan_err!("part writer: column '{key_column}' must be {key_type}");
        }
        let tally_indices = params
            .tally_columns
            .iter()
            .map(|c| find(c))
            .collect::<DfResult<Vec<_>>>()?;
        let written = (0..schema.fields().len())
            .filter(|i| *i != key_index && !tally_indices.contains(i))
            .collect();
        let cache = PlanProperties::new(
            EquivalenceProperties::new(report_schema(&params)),
            Partitioning::UnknownPartitioning(input.output_partitioning().partition_count()),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(PartWriterExec {
            input,
            params,
            key_index,
            tally_indices,
            written,
            cache: Arc::new(cache),
        })
    }

    pub fn params(&self) -> &PartWriterParams {
        &self.params
    }

    fn key_expr(&self) -> Arc<dyn PhysicalExpr> {
        Arc::new(Column::new(
            self.input.schema().field(self.key_index).name(),
            self.key_index,
        ))
    }
}

impl DisplayAs for PartWriterExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(
            f,
            "PartWriterExec: dir={}, layout={:?}",
            self.params.dir, self.params.layout
        )
    }
}

impl ExecutionPlan for PartWriterExec {
    fn name(&self) -> &str {
        "PartWriterExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn input_distribution_requirements(&self) -> InputDistributionRequirements {
        let distribution = match &self.params.layout {
            Layout::Chunks { rows_per_file, .. } => {
                let chunk: Arc<dyn PhysicalExpr> = Arc::new(BinaryExpr::new(
                    self.key_expr(),
                    Operator::Divide,
                    Arc::new(Literal::new(ScalarValue::UInt64(Some(*rows_per_file)))),
                ));
                Distribution::KeyPartitioned(vec![chunk])
            }
            // Every partition writes its own files; a value may span partitions.
            Layout::Partitioned { .. } => Distribution::UnspecifiedDistribution,
        };
        InputDistributionRequirements::new(vec![distribution])
    }

    fn required_input_ordering(&self) -> Vec<Option<OrderingRequirements>> {
        let order = LexOrdering::new(vec![PhysicalSortExpr::new(
            self.key_expr(),
            datafusion::arrow::compute::SortOptions::default(),
        )]);
        vec![order.map(OrderingRequirements::from)]
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match children.pop() {
            Some(input) if children.is_empty() => Ok(Arc::new(PartWriterExec::try_new(
                input,
                self.params.clone(),
            )?)),
            _ => internal_err!("PartWriterExec takes one child"),
        }
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        let url = ListingTableUrl::parse(&self.params.dir)?;
        let store = context.runtime_env().object_store(&url)?;
        let input = self.input.execute(partition, context)?;
        let written_schema = Arc::new(self.input.schema().project(&self.written)?);
        let writer = Writer {
            store,
            prefix: url.prefix().clone(),
            layout: self.params.layout.clone(),
            partition,
            key_index: self.key_index,
            tally_indices: self.tally_indices.clone(),
            written: self.written.clone(),
            written_schema,
            open: None,
            report_schema: report_schema(&self.params),
            files: Vec::new(),
            sequence: 0,
            token: rand::random(),
        };
        let schema = report_schema(&self.params);
        let stream = futures::stream::once(async move { writer.run(input).await });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, stream)))
    }
}

/// Which file a row belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileKey {
    Chunk(u64),
    Value(String),
}

/// A file being filled.
struct OpenFile {
    key: FileKey,
    writer: ArrowWriter<Vec<u8>>,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    rows: u64,
    tallies: Vec<u64>,
}

struct Writer {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    layout: Layout,
    partition: usize,
    key_index: usize,
    tally_indices: Vec<usize>,
    written: Vec<usize>,
    written_schema: SchemaRef,
    open: Option<OpenFile>,
    report_schema: SchemaRef,
    files: Vec<WrittenFile>,
    /// Files written so far and a random token, for unique names.
    sequence: u64,
    token: u64,
}

struct WrittenFile {
    name: String,
    rows: u64,
    bytes: u64,
    partition: Option<String>,
    tallies: Vec<u64>,
}

impl Writer {
    /// The file key of every row of `batch`.
    fn keys(&self, batch: &RecordBatch) -> Vec<FileKey> {
        let column = batch.column(self.key_index);
        match &self.layout {
            Layout::Chunks { rows_per_file, .. } => column
                .as_primitive::<UInt64Type>()
                .values()
                .iter()
                .map(|r| FileKey::Chunk(r / rows_per_file))
                .collect(),
            Layout::Partitioned { .. } => {
                let values = column.as_string::<i32>();
                (0..batch.num_rows())
                    .map(|i| {
                        FileKey::Value(if values.is_null(i) {
                            // Delta Lake's name for a null partition value.
                            "__HIVE_DEFAULT_PARTITION__".to_string()
                        } else {
                            values.value(i).to_string()
                        })
                    })
                    .collect()
            }
        }
    }

    async fn run(mut self, mut input: SendableRecordBatchStream) -> DfResult<RecordBatch> {
        while let Some(batch) = input.next().await {
            let batch = batch?;
            let keys = self.keys(&batch);
            let mut start = 0;
            while start < batch.num_rows() {
                let key = &keys[start];
                let mut end = start + 1;
                while end < batch.num_rows() && keys[end] == *key {
                    end += 1;
                }
                if self.open.as_ref().is_some_and(|f| f.key != *key) {
                    self.finish().await?;
                }
                if self.open.is_none() {
                    self.open = Some(self.start(key.clone())?);
                }
                self.append(&batch.slice(start, end - start))?;
                start = end;
            }
        }
        self.finish().await?;
        let mut names = StringBuilder::new();
        let mut counts = UInt64Builder::new();
        let mut bytes = UInt64Builder::new();
        let mut partitions = StringBuilder::new();
        let mut tallies: Vec<UInt64Builder> = self
            .tally_indices
            .iter()
            .map(|_| UInt64Builder::new())
            .collect();
        for f in &self.files {
            names.append_value(&f.name);
            counts.append_value(f.rows);
            bytes.append_value(f.bytes);
            partitions.append_option(f.partition.as_deref());
            for (b, v) in tallies.iter_mut().zip(&f.tallies) {
                b.append_value(*v);
            }
        }
        let mut columns: Vec<Arc<dyn Array>> = vec![
            Arc::new(names.finish()),
            Arc::new(counts.finish()),
            Arc::new(bytes.finish()),
            Arc::new(partitions.finish()),
        ];
        columns.extend(
            tallies
                .into_iter()
                .map(|mut b| Arc::new(b.finish()) as Arc<dyn Array>),
        );
        Ok(RecordBatch::try_new(
            Arc::clone(&self.report_schema),
            columns,
        )?)
    }

    fn start(&self, key: FileKey) -> DfResult<OpenFile> {
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let writer =
            ArrowWriter::try_new(Vec::new(), Arc::clone(&self.written_schema), Some(props))?;
        Ok(OpenFile {
            key,
            writer,
            pending: Vec::new(),
            pending_rows: 0,
            rows: 0,
            tallies: vec![0; self.tally_indices.len()],
        })
    }

    fn append(&mut self, slice: &RecordBatch) -> DfResult<()> {
        let file = self.open.as_mut().expect("a file is open");
        for (t, &i) in file.tallies.iter_mut().zip(&self.tally_indices) {
            *t += slice.column(i).as_boolean().true_count() as u64;
        }
        file.rows += slice.num_rows() as u64;
        file.pending.push(slice.project(&self.written)?);
        file.pending_rows += slice.num_rows();
        if file.pending_rows >= WRITE_SLICE {
            flush(file, &self.written_schema, false)?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> DfResult<()> {
        let Some(mut file) = self.open.take() else {
            return Ok(());
        };
        flush(&mut file, &self.written_schema, true)?;
        file.writer.finish()?;
        let bytes = std::mem::take(file.writer.inner_mut());
        let (name, partition) = match (&file.key, &self.layout) {
            (FileKey::Chunk(chunk), _) => (format!("part-{chunk:05}.parquet"), None),
            (
                FileKey::Value(value),
                Layout::Partitioned {
                    column,
                    file_prefix,
                },
            ) => {
                self.sequence += 1;
                // The partition index alone does not make a name unique: Ballista may run the
                // same index in more than one task (e.g. a retried or re-planned task), so each
                // writer adds a random token.
                (
                    format!(
                        "{column}={value}/{file_prefix}-{:03}-{:016x}-{:03}.parquet",
                        self.partition, self.token, self.sequence
                    ),
                    Some(value.clone()),
                )
            }
            (FileKey::Value(_), Layout::Chunks { .. }) => {
                unreachable!("chunk layouts key rows by chunk")
            }
        };
        let mut path = self.prefix.clone();
        for part in name.split('/') {
            path = path.join(part);
        }
        let size = bytes.len() as u64;
        self.store
            .put(&path, bytes.into())
            .await
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        self.files.push(WrittenFile {
            name,
            rows: file.rows,
            bytes: size,
            partition,
            tallies: file.tallies,
        });
        Ok(())
    }
}

/// Writes the pending rows in `WRITE_SLICE`-row calls; the remainder waits unless `all`.
fn flush(file: &mut OpenFile, schema: &SchemaRef, all: bool) -> DfResult<()> {
    if file.pending.is_empty() {
        return Ok(());
    }
    let merged = concat_batches(schema, &file.pending)?;
    file.pending.clear();
    let full = merged.num_rows() / WRITE_SLICE * WRITE_SLICE;
    let mut offset = 0;
    while offset < full {
        file.writer.write(&merged.slice(offset, WRITE_SLICE))?;
        offset += WRITE_SLICE;
    }
    let rest = merged.num_rows() - full;
    if rest > 0 {
        if all {
            file.writer.write(&merged.slice(full, rest))?;
        } else {
            file.pending.push(merged.slice(full, rest));
        }
    }
    file.pending_rows = if all { 0 } else { rest };
    Ok(())
}
