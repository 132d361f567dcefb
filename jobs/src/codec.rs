//! Almanac's Ballista codecs: how its plan nodes travel from the client to the scheduler
//! (logical) and from the scheduler to executors (physical).
//!
//! A codec set on the session replaces Ballista's own, so both wrap Ballista's: the physical
//! side through DataFusion's `ComposedPhysicalExtensionCodec` (Ballista's codec first, then
//! Almanac's), the logical side through [`AlmanacLogicalCodec`], which tags each payload
//! with who wrote it. Messages are protobuf (prost), so plans stay readable across versions.

use std::any::Any;
use std::sync::Arc;

use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::TableProvider;
use datafusion::common::config::TableOptions;
use datafusion::common::{DataFusionError, Result as DfResult, TableReference};
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{AggregateUDF, Extension, LogicalPlan, ScalarUDF, WindowUDF};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{
    ComposedPhysicalExtensionCodec, PhysicalExtensionCodec, PhysicalProtoConverterExtension,
};
use prost::Message;

use crate::asof_join::{AsOfJoinExec, AsOfJoinNode, AsOfJoinParams};
use crate::ordered_table::OrderedFileTable;
use crate::part_writer::{Layout, PartWriterExec, PartWriterNode, PartWriterParams};
use crate::spec::SourceKind;
use crate::window_agg::{
    WindowAggExec, WindowAggNode, WindowAggParams, WindowFeature, WindowFunction,
};

#[derive(Clone, PartialEq, Message)]
struct AsOfJoinProto {
    #[prost(string, repeated, tag = "1")]
    left_keys: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    right_keys: Vec<String>,
    #[prost(string, tag = "3")]
    left_time: String,
    #[prost(string, tag = "4")]
    right_time: String,
    #[prost(int64, optional, tag = "5")]
    lookback: Option<i64>,
    #[prost(int64, tag = "6")]
    delay: i64,
    #[prost(string, repeated, tag = "7")]
    tiebreak: Vec<String>,
    #[prost(string, repeated, tag = "8")]
    output_columns: Vec<String>,
    #[prost(string, repeated, tag = "9")]
    output_names: Vec<String>,
    #[prost(string, tag = "10")]
    match_column: String,
}

#[derive(Clone, PartialEq, Message)]
struct PartWriterProto {
    #[prost(string, tag = "1")]
    dir: String,
    /// Chunks layout; absent for the partitioned layout.
    #[prost(uint64, optional, tag = "2")]
    rows_per_file: Option<u64>,
    /// The row column (chunks) or partition column (partitioned).
    #[prost(string, tag = "3")]
    key_column: String,
    #[prost(string, repeated, tag = "4")]
    tally_columns: Vec<String>,
    #[prost(string, tag = "5")]
    file_prefix: String,
}

#[derive(Clone, PartialEq, Message)]
struct OrderedTableProto {
    #[prost(string, tag = "1")]
    url: String,
    #[prost(string, tag = "2")]
    extension: String,
    /// "parquet" or "csv".
    #[prost(string, tag = "3")]
    format: String,
}

#[derive(Clone, PartialEq, Message)]
struct WindowFeatureProto {
    #[prost(string, tag = "1")]
    name: String,
    /// `count`, `sum`, `avg`, `min`, `max` or `latest`.
    #[prost(string, tag = "2")]
    function: String,
    #[prost(string, optional, tag = "3")]
    column: Option<String>,
    #[prost(int64, tag = "4")]
    window: i64,
}

#[derive(Clone, PartialEq, Message)]
struct WindowAggProto {
    #[prost(string, repeated, tag = "1")]
    keys: Vec<String>,
    #[prost(string, tag = "2")]
    time: String,
    #[prost(message, repeated, tag = "3")]
    features: Vec<WindowFeatureProto>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum Node {
    #[prost(message, tag = "1")]
    AsOfJoin(AsOfJoinProto),
    #[prost(message, tag = "2")]
    PartWriter(PartWriterProto),
    #[prost(message, tag = "3")]
    OrderedTable(OrderedTableProto),
    #[prost(message, tag = "4")]
    WindowAgg(WindowAggProto),
}

/// Everything Almanac encodes is one of these.
#[derive(Clone, PartialEq, Message)]
struct AlmanacNode {
    #[prost(oneof = "Node", tags = "1, 2, 3, 4")]
    node: Option<Node>,
}

/// The logical envelope: which codec wrote `payload`.
#[derive(Clone, PartialEq, Message)]
struct Envelope {
    /// 0: Ballista's codec, 1: Almanac's.
    #[prost(uint32, tag = "1")]
    writer: u32,
    #[prost(bytes = "vec", tag = "2")]
    payload: Vec<u8>,
}

const BALLISTA: u32 = 0;
const ALMANAC: u32 = 1;

fn decode_error(what: &str, e: impl std::fmt::Display) -> DataFusionError {
    DataFusionError::Internal(format!("cannot decode {what}: {e}"))
}

impl From<&AsOfJoinParams> for AsOfJoinProto {
    fn from(p: &AsOfJoinParams) -> Self {
        AsOfJoinProto {
            left_keys: p.left_keys.clone(),
            right_keys: p.right_keys.clone(),
            left_time: p.left_time.clone(),
            right_time: p.right_time.clone(),
            lookback: p.lookback,
            delay: p.delay,
            tiebreak: p.tiebreak.clone(),
            output_columns: p.outputs.iter().map(|(c, _)| c.clone()).collect(),
            output_names: p.outputs.iter().map(|(_, n)| n.clone()).collect(),
            match_column: p.match_column.clone(),
        }
    }
}

impl From<AsOfJoinProto> for AsOfJoinParams {
    fn from(p: AsOfJoinProto) -> Self {
        AsOfJoinParams {
            left_keys: p.left_keys,
            right_keys: p.right_keys,
            left_time: p.left_time,
            right_time: p.right_time,
            lookback: p.lookback,
            delay: p.delay,
            tiebreak: p.tiebreak,
            outputs: p.output_columns.into_iter().zip(p.output_names).collect(),
            match_column: p.match_column,
        }
    }
}

impl From<&PartWriterParams> for PartWriterProto {
    fn from(p: &PartWriterParams) -> Self {
        let (rows_per_file, key_column, file_prefix) = match &p.layout {
            Layout::Chunks {
                row_column,
                rows_per_file,
            } => (Some(*rows_per_file), row_column.clone(), String::new()),
            Layout::Partitioned {
                column,
                file_prefix,
            } => (None, column.clone(), file_prefix.clone()),
        };
        PartWriterProto {
            dir: p.dir.clone(),
            rows_per_file,
            key_column,
            tally_columns: p.tally_columns.clone(),
            file_prefix,
        }
    }
}

impl From<PartWriterProto> for PartWriterParams {
    fn from(p: PartWriterProto) -> Self {
        let layout = match p.rows_per_file {
            Some(rows_per_file) => Layout::Chunks {
                row_column: p.key_column,
                rows_per_file,
            },
            None => Layout::Partitioned {
                column: p.key_column,
                file_prefix: p.file_prefix,
            },
        };
        PartWriterParams {
            dir: p.dir,
            layout,
            tally_columns: p.tally_columns,
        }
    }
}

impl From<&WindowAggParams> for WindowAggProto {
    fn from(p: &WindowAggParams) -> Self {
        WindowAggProto {
            keys: p.keys.clone(),
            time: p.time.clone(),
            features: p
                .features
                .iter()
                .map(|f| WindowFeatureProto {
                    name: f.name.clone(),
                    function: f.function.name().to_string(),
                    column: f.column.clone(),
                    window: f.window,
                })
                .collect(),
        }
    }
}

impl TryFrom<WindowAggProto> for WindowAggParams {
    type Error = DataFusionError;

    fn try_from(p: WindowAggProto) -> DfResult<Self> {
        let features = p
            .features
            .into_iter()
            .map(|f| {
                let function = WindowFunction::from_name(&f.function).ok_or_else(|| {
                    decode_error("a window aggregation", format!("function '{}'", f.function))
                })?;
                Ok(WindowFeature {
                    name: f.name,
                    function,
                    column: f.column,
                    window: f.window,
                })
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok(WindowAggParams {
            keys: p.keys,
            time: p.time,
            features,
        })
    }
}

fn encode_node(node: Node, buf: &mut Vec<u8>) -> DfResult<()> {
    AlmanacNode { node: Some(node) }
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("cannot encode an Almanac plan node: {e}")))
}

fn decode_node(buf: &[u8]) -> DfResult<Node> {
    AlmanacNode::decode(buf)
        .map_err(|e| decode_error("an Almanac plan node", e))?
        .node
        .ok_or_else(|| decode_error("an Almanac plan node", "it is empty"))
}

fn two<T: Clone>(inputs: &[T], what: &str) -> DfResult<(T, T)> {
    match inputs {
        [a, b] => Ok((a.clone(), b.clone())),
        _ => Err(decode_error(
            what,
            format!("expected 2 inputs, got {}", inputs.len()),
        )),
    }
}

fn one<T: Clone>(inputs: &[T], what: &str) -> DfResult<T> {
    match inputs {
        [a] => Ok(a.clone()),
        _ => Err(decode_error(
            what,
            format!("expected 1 input, got {}", inputs.len()),
        )),
    }
}

/// Ballista's logical codec plus Almanac's nodes and tables.
#[derive(Debug)]
pub struct AlmanacLogicalCodec {
    ballista: Arc<dyn LogicalExtensionCodec>,
}

impl Default for AlmanacLogicalCodec {
    fn default() -> Self {
        AlmanacLogicalCodec {
            ballista: Arc::new(BallistaLogicalExtensionCodec::default()),
        }
    }
}

fn seal(writer: u32, payload: Vec<u8>, buf: &mut Vec<u8>) -> DfResult<()> {
    Envelope { writer, payload }
        .encode(buf)
        .map_err(|e| DataFusionError::Internal(format!("cannot encode a plan envelope: {e}")))
}

fn open(buf: &[u8]) -> DfResult<Envelope> {
    Envelope::decode(buf).map_err(|e| decode_error("a plan envelope", e))
}

impl LogicalExtensionCodec for AlmanacLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> DfResult<Extension> {
        let envelope = open(buf)?;
        if envelope.writer == BALLISTA {
            return self.ballista.try_decode(&envelope.payload, inputs, ctx);
        }
        let node: Arc<dyn datafusion::logical_expr::UserDefinedLogicalNode> =
            match decode_node(&envelope.payload)? {
                Node::AsOfJoin(p) => {
                    let (left, right) = two(inputs, "an as-of join")?;
                    Arc::new(AsOfJoinNode::try_new(left, right, p.into())?)
                }
                Node::PartWriter(p) => {
                    let input = one(inputs, "a part writer")?;
                    Arc::new(PartWriterNode::try_new(input, p.into())?)
                }
                Node::WindowAgg(p) => {
                    let input = one(inputs, "a window aggregation")?;
                    Arc::new(WindowAggNode::try_new(input, p.try_into()?)?)
                }
                Node::OrderedTable(_) => {
                    return Err(decode_error("a plan node", "found a table instead"));
                }
            };
        Ok(Extension { node })
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> DfResult<()> {
        let any = node.node.as_any();
        let mut payload = Vec::new();
        if let Some(join) = any.downcast_ref::<AsOfJoinNode>() {
            encode_node(Node::AsOfJoin((&join.params).into()), &mut payload)?;
        } else if let Some(writer) = any.downcast_ref::<PartWriterNode>() {
            encode_node(Node::PartWriter((&writer.params).into()), &mut payload)?;
        } else if let Some(window) = any.downcast_ref::<WindowAggNode>() {
            encode_node(Node::WindowAgg((&window.params).into()), &mut payload)?;
        } else {
            self.ballista.try_encode(node, &mut payload)?;
            return seal(BALLISTA, payload, buf);
        }
        seal(ALMANAC, payload, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn TableProvider>> {
        let envelope = open(buf)?;
        if envelope.writer == BALLISTA {
            return self.ballista.try_decode_table_provider(
                &envelope.payload,
                table_ref,
                schema,
                ctx,
            );
        }
        match decode_node(&envelope.payload)? {
            Node::OrderedTable(t) => {
                let kind = match t.format.as_str() {
                    "csv" => SourceKind::Csv,
                    "parquet" => SourceKind::Parquet,
                    other => {
                        return Err(decode_error(
                            "an ordered table",
                            format!("format '{other}'"),
                        ));
                    }
                };
                let options =
                    TableOptions::default_from_session_config(ctx.session_config().options());
                Ok(Arc::new(OrderedFileTable::try_new(
                    &t.url,
                    &t.extension,
                    kind,
                    schema,
                    &options,
                )?))
            }
            _ => Err(decode_error("a table", "found a plan node instead")),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> DfResult<()> {
        let mut payload = Vec::new();
        if let Some(t) = (node.as_ref() as &dyn Any).downcast_ref::<OrderedFileTable>() {
            let format = match t.kind {
                SourceKind::Csv => "csv",
                _ => "parquet",
            };
            encode_node(
                Node::OrderedTable(OrderedTableProto {
                    url: t.url.clone(),
                    extension: t.extension.clone(),
                    format: format.to_string(),
                }),
                &mut payload,
            )?;
            return seal(ALMANAC, payload, buf);
        }
        self.ballista
            .try_encode_table_provider(table_ref, node, &mut payload)?;
        seal(BALLISTA, payload, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> DfResult<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> DfResult<()> {
        self.ballista.try_encode_file_format(buf, node)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<ScalarUDF>> {
        self.ballista.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.ballista.try_encode_udf(node, buf)
    }

    fn try_decode_udaf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<AggregateUDF>> {
        self.ballista.try_decode_udaf(name, buf)
    }

    fn try_encode_udaf(&self, node: &AggregateUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.ballista.try_encode_udaf(node, buf)
    }

    fn try_decode_udwf(&self, name: &str, buf: &[u8]) -> DfResult<Arc<WindowUDF>> {
        self.ballista.try_decode_udwf(name, buf)
    }

    fn try_encode_udwf(&self, node: &WindowUDF, buf: &mut Vec<u8>) -> DfResult<()> {
        self.ballista.try_encode_udwf(node, buf)
    }
}

/// Almanac's physical nodes; used composed after Ballista's codec ([`physical_codec`]).
#[derive(Debug, Default)]
pub struct AlmanacPhysicalCodec;

impl PhysicalExtensionCodec for AlmanacPhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match decode_node(buf)? {
            Node::AsOfJoin(p) => {
                let (left, right) = two(inputs, "an as-of join")?;
                Ok(Arc::new(AsOfJoinExec::try_new(left, right, p.into())?))
            }
            Node::PartWriter(p) => {
                let input = one(inputs, "a part writer")?;
                Ok(Arc::new(PartWriterExec::try_new(input, p.into())?))
            }
            Node::WindowAgg(p) => {
                let input = one(inputs, "a window aggregation")?;
                Ok(Arc::new(WindowAggExec::try_new(input, p.try_into()?)?))
            }
            Node::OrderedTable(_) => Err(decode_error("an execution plan", "found a table")),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        let any = node.as_ref() as &dyn Any;
        if let Some(join) = any.downcast_ref::<AsOfJoinExec>() {
            return encode_node(Node::AsOfJoin(join.params().into()), buf);
        }
        if let Some(writer) = any.downcast_ref::<PartWriterExec>() {
            return encode_node(Node::PartWriter(writer.params().into()), buf);
        }
        if let Some(window) = any.downcast_ref::<WindowAggExec>() {
            return encode_node(Node::WindowAgg(window.params().into()), buf);
        }
        Err(DataFusionError::NotImplemented(format!(
            "Almanac's codec does not encode {}",
            node.name()
        )))
    }
}

/// The physical codec every Almanac process uses: Ballista's nodes, then Almanac's.
pub fn physical_codec() -> Arc<dyn PhysicalExtensionCodec> {
    Arc::new(ComposedPhysicalExtensionCodec::new(vec![
        Arc::new(BallistaPhysicalExtensionCodec::default()),
        Arc::new(AlmanacPhysicalCodec),
    ]))
}

/// The logical codec every Almanac process uses.
pub fn logical_codec() -> Arc<dyn LogicalExtensionCodec> {
    Arc::new(AlmanacLogicalCodec::default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
    use datafusion::physical_plan::empty::EmptyExec;
    use datafusion::prelude::SessionContext;
    use datafusion_proto::physical_plan::DefaultPhysicalProtoConverter;

    fn utc() -> DataType {
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
    }

    fn params() -> AsOfJoinParams {
        AsOfJoinParams {
            left_keys: vec!["k".into()],
            right_keys: vec!["key".into()],
            left_time: "t".into(),
            right_time: "ts".into(),
            lookback: Some(3_600_000_000),
            delay: 60_000_000,
            tiebreak: vec!["v".into()],
            outputs: vec![("v".into(), "value".into())],
            match_column: "m".into(),
        }
    }

    /// Almanac's nodes survive the trip through the composed codec (Ballista's first), with
    /// every parameter intact; what Ballista does not know is not mistaken for its own.
    #[test]
    fn physical_nodes_round_trip_through_the_composed_codec() {
        let left = Arc::new(EmptyExec::new(Arc::new(Schema::new(vec![
            Field::new("row", DataType::UInt64, false),
            Field::new("k", DataType::Utf8, true),
            Field::new("t", utc(), false),
        ]))));
        let right = Arc::new(EmptyExec::new(Arc::new(Schema::new(vec![
            Field::new("key", DataType::Utf8, true),
            Field::new("ts", utc(), false),
            Field::new("v", DataType::Int64, true),
        ]))));
        let join: Arc<dyn ExecutionPlan> =
            Arc::new(AsOfJoinExec::try_new(left.clone(), right.clone(), params()).unwrap());
        let writer_params = PartWriterParams {
            dir: "file:///tmp/out/data/".into(),
            layout: Layout::Chunks {
                row_column: "row".into(),
                rows_per_file: 7,
            },
            tally_columns: vec!["m".into()],
        };
        let writer: Arc<dyn ExecutionPlan> =
            Arc::new(PartWriterExec::try_new(Arc::clone(&join), writer_params.clone()).unwrap());
        let codec = physical_codec();
        let converter = DefaultPhysicalProtoConverter {};
        let ctx = SessionContext::new();
        let task = ctx.task_ctx();

        let mut buf = Vec::new();
        codec
            .try_encode(Arc::clone(&join), &mut buf, &converter)
            .unwrap();
        let back = codec
            .try_decode(&buf, &[left, right], &task, &converter)
            .unwrap();
        let back = (back.as_ref() as &dyn Any)
            .downcast_ref::<AsOfJoinExec>()
            .expect("an as-of join comes back");
        assert_eq!(back.params(), &params());
        assert_eq!(back.schema(), join.schema());

        let mut buf = Vec::new();
        codec
            .try_encode(Arc::clone(&writer), &mut buf, &converter)
            .unwrap();
        let back = codec.try_decode(&buf, &[join], &task, &converter).unwrap();
        let back = (back.as_ref() as &dyn Any)
            .downcast_ref::<PartWriterExec>()
            .expect("a part writer comes back");
        assert_eq!(back.params(), &writer_params);

        let input = Arc::new(EmptyExec::new(Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("t", utc(), false),
            Field::new("v", DataType::Float64, true),
        ]))));
        let window_params = WindowAggParams {
            keys: vec!["k".into()],
            time: "t".into(),
            features: vec![
                WindowFeature {
                    name: "n".into(),
                    function: WindowFunction::Count,
                    column: None,
                    window: 3_600_000_000,
                },
                WindowFeature {
                    name: "top".into(),
                    function: WindowFunction::Max,
                    column: Some("v".into()),
                    window: 60_000_000,
                },
            ],
        };
        let window: Arc<dyn ExecutionPlan> =
            Arc::new(WindowAggExec::try_new(input.clone(), window_params.clone()).unwrap());
        let mut buf = Vec::new();
        codec
            .try_encode(Arc::clone(&window), &mut buf, &converter)
            .unwrap();
        let back = codec.try_decode(&buf, &[input], &task, &converter).unwrap();
        let back = (back.as_ref() as &dyn Any)
            .downcast_ref::<WindowAggExec>()
            .expect("a window aggregation comes back");
        assert_eq!(back.params(), &window_params);
        assert_eq!(back.schema(), window.schema());

        // Garbage is an error, not a wrong plan.
        assert!(
            AlmanacPhysicalCodec
                .try_decode(b"\xff\xff", &[], &task, &converter)
                .is_err()
        );
    }
}
