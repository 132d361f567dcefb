//! Turns Almanac's logical nodes into their physical operators.
//!
//! The scheduler plans every job, so this planner must be in the session state the scheduler
//! is built from ([`crate::engine::almanac_session_state`]); the client's own planner is
//! Ballista's, which only ships the logical plan.

use std::sync::Arc;

use datafusion::catalog::Session;
use datafusion::common::Result as DfResult;
use datafusion::execution::context::QueryPlanner;
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{LogicalPlan, UserDefinedLogicalNode};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};

use crate::asof_join::{AsOfJoinExec, AsOfJoinNode};
use crate::part_writer::{PartWriterExec, PartWriterNode};
use crate::window_agg::{WindowAggExec, WindowAggNode};

/// Plans [`AsOfJoinNode`], [`PartWriterNode`] and [`WindowAggNode`].
#[derive(Debug, Default)]
pub struct AlmanacExtensionPlanner;

#[async_trait::async_trait]
impl ExtensionPlanner for AlmanacExtensionPlanner {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session: &dyn Session,
        _planning_ctx: &PhysicalPlanningContext,
    ) -> DfResult<Option<Arc<dyn ExecutionPlan>>> {
        let any = node.as_any();
        if let Some(join) = any.downcast_ref::<AsOfJoinNode>() {
            let [left, right] = physical_inputs else {
                return datafusion::common::internal_err!("as-of join planned without two inputs");
            };
            return Ok(Some(Arc::new(AsOfJoinExec::try_new(
                Arc::clone(left),
                Arc::clone(right),
                join.params.clone(),
            )?)));
        }
        if let Some(writer) = any.downcast_ref::<PartWriterNode>() {
            let [input] = physical_inputs else {
                return datafusion::common::internal_err!("part writer planned without its input");
            };
            return Ok(Some(Arc::new(PartWriterExec::try_new(
                Arc::clone(input),
                writer.params.clone(),
            )?)));
        }
        if let Some(window) = any.downcast_ref::<WindowAggNode>() {
            let [input] = physical_inputs else {
                return datafusion::common::internal_err!(
                    "window aggregation planned without its input"
                );
            };
            return Ok(Some(Arc::new(WindowAggExec::try_new(
                Arc::clone(input),
                window.params.clone(),
            )?)));
        }
        Ok(None)
    }
}

/// DataFusion's planner with [`AlmanacExtensionPlanner`].
#[derive(Debug, Default)]
pub struct AlmanacQueryPlanner;

#[async_trait::async_trait]
impl QueryPlanner for AlmanacQueryPlanner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session: &dyn Session,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(AlmanacExtensionPlanner)])
            .create_physical_plan(logical_plan, session)
            .await
    }
}
