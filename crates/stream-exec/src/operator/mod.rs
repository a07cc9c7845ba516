//! Stream operators: each turns input batches into output batches and may act when the
//! watermark advances. One operator per file, named as EXPLAIN names it.
//!
//! Batches travel as [`ChangeBatch`]es: rows plus, after an aggregation, a mask of the rows
//! that are tombstones (a result row that no longer exists: a session merged into another,
//! a group that stopped passing HAVING). Tombstones pass every filter and become Kafka
//! records with a null value.

mod aggregates;
mod filter;
mod group_index;
mod group_states;
mod key_groups;
mod project;
mod session_aggregate;
mod session_index;
mod slot_table;
mod window_aggregate;
mod window_keys;
mod written_rows;

pub use filter::FilterOperator;
pub use project::ProjectOperator;
pub use session_aggregate::SessionAggregateOperator;
pub use window_aggregate::WindowAggregateOperator;

use std::sync::Arc;

use datafusion::arrow::array::{BooleanArray, RecordBatch};
use datafusion::common::DFSchema;
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{create_physical_expr, PhysicalExpr};
use sluice_sql_planner::{StreamOperator, WindowKind};

use crate::error::{ExecError, Result};
use crate::state::StateChange;

/// Rows on their way through a query, some of which may be tombstones.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    /// The rows. A tombstone row holds the key of the row it deletes; its other columns
    /// hold that row's old or current values and are not written.
    pub rows: RecordBatch,
    /// Which rows are tombstones; `None` when none are.
    pub tombstones: Option<BooleanArray>,
    /// Hopping windows scanned one row per record (see [`crate::scan`]): per row, how
    /// many windows it is in, the one its window columns name and those after it. `None`
    /// when each row is in the one window its columns name.
    pub windows: Option<Vec<u32>>,
}

impl ChangeBatch {
    /// Rows without tombstones.
    pub fn rows(rows: RecordBatch) -> Self {
        Self {
            rows,
            tombstones: None,
            windows: None,
        }
    }

    /// Number of rows, tombstones included.
    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    /// Whether row `i` is a tombstone.
    pub fn is_tombstone(&self, i: usize) -> bool {
        self.tombstones.as_ref().is_some_and(|t| t.value(i))
    }
}

/// A step of a running query.
pub trait Operator: Send {
    /// The name EXPLAIN prints for it.
    fn name(&self) -> &'static str;

    /// Process one batch. Must return batches of the operator's output schema; `None`
    /// means nothing to pass on.
    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>>;

    /// The watermark reached `watermark_ms`. Operators with time state must drop what
    /// closed and may return the rows that closing produced.
    fn advance_watermark(&mut self, _watermark_ms: i64) -> Result<Option<ChangeBatch>> {
        Ok(None)
    }

    /// How many groups (key × window) the operator holds in state.
    fn state_groups(&self) -> usize {
        0
    }

    /// The heap bytes its state holds, counted from its data structures' capacities;
    /// 0 when it does not count them.
    fn state_bytes(&self) -> usize {
        0
    }

    /// Whether it keeps state that must survive a restart (see [`crate::state`]).
    fn is_stateful(&self) -> bool {
        false
    }

    /// The state entries that changed since the last call, as changelog records.
    fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        Ok(vec![])
    }

    /// Count every state entry as changed, so the next
    /// [`Operator::take_state_changes`] hands over all of them: a snapshot of the state
    /// (see [`crate::frames`]).
    fn mark_all_changed(&mut self) {}

    /// Rebuild the state from the latest value of each of its changelog keys (`(key,
    /// value)`, the key as it wrote it), on an operator that has processed nothing;
    /// `watermark` is the last one it saw before (windows it had closed may still be in
    /// those values).
    fn restore_state(
        &mut self,
        _entries: &[(&[u8], &[u8])],
        _watermark: Option<i64>,
    ) -> Result<()> {
        Ok(())
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
        StreamOperator::WindowAggregate { window, .. } => match window.map(|w| w.spec.kind) {
            Some(WindowKind::Session { .. }) => Box::new(SessionAggregateOperator::new(op)?),
            _ => Box::new(WindowAggregateOperator::new(op)?),
        },
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
