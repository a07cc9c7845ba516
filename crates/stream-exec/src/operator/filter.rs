//! `FilterOperator`: keeps the rows whose predicate is true (WHERE, HAVING).

use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::physical_expr::PhysicalExpr;

use super::Operator;
use crate::error::{ExecError, Result};

/// Keeps rows where `predicate` is true; null counts as false.
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

    fn process(&mut self, batch: RecordBatch) -> Result<Option<RecordBatch>> {
        let mask = self
            .predicate
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(ExecError::eval("Filter"))?;
        let out = filter_record_batch(&batch, mask.as_boolean())
            .map_err(ExecError::arrow("filtering rows"))?;
        Ok((out.num_rows() > 0).then_some(out))
    }
}
