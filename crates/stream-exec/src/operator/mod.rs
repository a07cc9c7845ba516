//! Stream operators: each turns input batches into output batches and may act when the
//! watermark advances. One operator per file, named as EXPLAIN names it.

mod filter;
mod project;
mod window_aggregate;

pub use filter::FilterOperator;
pub use project::ProjectOperator;
pub use window_aggregate::WindowAggregateOperator;

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use sluice_sql_planner::StreamOperator;

use crate::error::{ExecError, Result};

/// A step of a running query.
pub trait Operator: Send {
    /// The name EXPLAIN prints for it.
    fn name(&self) -> &'static str;

    /// Process one batch. Must return batches of the operator's output schema; an empty
    /// result means nothing to pass on.
    fn process(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>>;

    /// The watermark reached `watermark_ms`. Operators with time state must drop what
    /// closed and may return the rows that closing produced.
    fn advance_watermark(&mut self, _watermark_ms: i64) -> Result<Option<RecordBatch>> {
        Ok(None)
    }
}

/// Build the operator for a plan step.
pub fn build(op: &StreamOperator) -> Result<Box<dyn Operator>> {
    Ok(match op {
        StreamOperator::Filter { predicate, input } => {
            Box::new(FilterOperator::new(physical(predicate, input, "Filter")?))
        }
        StreamOperator::Project {
            exprs,
            input,
            output,
        } => Box::new(ProjectOperator::new(
            exprs
                .iter()
                .map(|e| physical(e, input, "Project"))
                .collect::<Result<_>>()?,
            Arc::new(output.as_arrow().clone()),
        )),
        StreamOperator::WindowAggregate { .. } => Box::new(WindowAggregateOperator::new(op)?),
    })
}

/// A logical expression over `schema` as a physical one.
pub(crate) fn physical(
    expr: &Expr,
    schema: &DFSchema,
    operator: &'static str,
) -> Result<Arc<dyn PhysicalExpr>> {
    create_physical_expr(expr, schema, &ExecutionProps::new(), &Default::default())
        .map_err(ExecError::eval(operator))
}
