//! `FilterOperator`: keeps the rows whose predicate is true (WHERE, HAVING).

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, BooleanArray};
use datafusion::arrow::compute::{filter, filter_record_batch, or_kleene};
use datafusion::physical_expr::PhysicalExpr;

use super::{ChangeBatch, Operator};
use crate::error::{ExecError, Result};

/// Keeps rows where `predicate` is true; null counts as false. Tombstones always pass:
/// a deletion must reach the sink. (A HAVING right after an aggregation is not a filter: the
/// planner moves it into the aggregation, which knows which rows it wrote.)
pub struct FilterOperator {
    predicate: Arc<dyn PhysicalExpr>,
}

impl FilterOperator {
    /// A filter on `predicate`, a boolean expression over the input.
    pub fn new(predicate: Arc<dyn PhysicalExpr>) -> Self {
        Self { predicate }
    }
}

impl Operator for FilterOperator {
    fn name(&self) -> &'static str {
        "Filter"
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let mask = self
            .predicate
            .evaluate(&batch.rows)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(ExecError::eval("Filter"))?;
        let mut mask: BooleanArray = mask.as_boolean().clone();
        if let Some(t) = &batch.tombstones {
            mask = or_kleene(&mask, t).map_err(ExecError::arrow("filtering rows"))?;
        }
        let mask = &mask;
        let rows =
            filter_record_batch(&batch.rows, mask).map_err(ExecError::arrow("filtering rows"))?;
        if rows.num_rows() == 0 {
            return Ok(None);
        }
        let tombstones = match &batch.tombstones {
            Some(t) => Some(
                filter(t, mask)
                    .map_err(ExecError::arrow("filtering rows"))?
                    .as_boolean()
                    .clone(),
            ),
            None => None,
        };
        let windows = batch.windows.map(|w| {
            w.into_iter()
                .zip(mask.iter())
                .filter(|(_, keep)| keep == &Some(true))
                .map(|(w, _)| w)
                .collect()
        });
        Ok(Some(ChangeBatch {
            rows,
            tombstones,
            windows,
        }))
    }
}
