//! `WindowAggregateOperator`: keyed aggregation per time window (tumbling, hopping) or
//! over all time, using DataFusion accumulators.
//!
//! Group keys (the GROUP BY values, window bounds among them) are encoded with arrow's
//! row format. Each group holds one DataFusion `Accumulator` per aggregate, fed with the
//! group's rows of each batch through `update_batch`. With `EMIT CHANGES` the groups a
//! batch touched are emitted after it; with `EMIT FINAL` a group is emitted once, when the
//! watermark passes its window's end plus grace. Either way a closed window's groups are
//! dropped, so state stays bounded on an unbounded stream.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{FieldRef, Int64Type, SchemaRef};
use datafusion::arrow::row::{OwnedRow, Row, RowConverter, SortField};
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::{Emit, StreamOperator};

use super::aggregates::{Accumulators, Aggregates};
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};

const NAME: &str = "WindowAggregate";

/// Keyed, windowed aggregation. See the module docs.
pub struct WindowAggregateOperator {
    group_exprs: Vec<Arc<dyn PhysicalExpr>>,
    aggregates: Aggregates,
    converter: RowConverter,
    schema: SchemaRef,
    aggregate_fields: Vec<FieldRef>,
    groups: HashMap<OwnedRow, Accumulators>,
    /// Groups by window end, to close them in order; empty when not windowed.
    by_end: BTreeMap<i64, Vec<OwnedRow>>,
    window_end: Option<usize>,
    grace_ms: i64,
    emit: Emit,
}

impl WindowAggregateOperator {
    /// Build from a `StreamOperator::WindowAggregate` plan step.
    pub fn new(op: &StreamOperator) -> Result<Self> {
        let StreamOperator::WindowAggregate {
            group_exprs,
            aggr_exprs,
            input,
            output,
            window_end,
            window,
            emit,
        } = op
        else {
            return Err(ExecError::internal(NAME, "not a WindowAggregate step"));
        };
        let group = group_exprs
            .iter()
            .map(|e| physical(e, input, NAME))
            .collect::<Result<Vec<_>>>()?;
        let arrow_input = input.as_arrow();
        let fields = group
            .iter()
            .map(|e| {
                e.data_type(arrow_input)
                    .map(SortField::new)
                    .map_err(ExecError::eval(NAME))
            })
            .collect::<Result<Vec<_>>>()?;
        let converter =
            RowConverter::new(fields).map_err(ExecError::arrow("encoding group keys"))?;
        Ok(Self {
            group_exprs: group,
            aggregates: Aggregates::new(aggr_exprs, input, NAME)?,
            converter,
            schema: Arc::new(output.as_arrow().clone()),
            aggregate_fields: output.fields()[group_exprs.len()..].to_vec(),
            groups: HashMap::new(),
            by_end: BTreeMap::new(),
            window_end: *window_end,
            grace_ms: window.map_or(0, |w| w.grace_ms),
            emit: *emit,
        })
    }

    /// The output rows of `keys`, in that order.
    fn emit_rows(&mut self, keys: &[OwnedRow]) -> Result<Option<ChangeBatch>> {
        if keys.is_empty() {
            return Ok(None);
        }
        let mut columns = self
            .converter
            .convert_rows(keys.iter().map(|k| k.row()))
            .map_err(ExecError::arrow("decoding group keys"))?;
        let mut values = vec![Vec::with_capacity(keys.len()); self.aggregates.len()];
        for k in keys {
            self.aggregates
                .evaluate_into(self.groups.get_mut(k), &mut values)?;
        }
        columns.extend(self.aggregates.columns(values, &self.aggregate_fields)?);
        RecordBatch::try_new(self.schema.clone(), columns)
            .map(|rows| Some(ChangeBatch::rows(rows)))
            .map_err(ExecError::arrow("building aggregate results"))
    }
}

impl Operator for WindowAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let batch = batch.rows;
        let n = batch.num_rows();
        let keys = self
            .group_exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(NAME))?;
        let rows = self
            .converter
            .convert_columns(&keys)
            .map_err(ExecError::arrow("encoding group keys"))?;
        // Rows of this batch per group, groups in order of first appearance.
        let mut batch_groups: HashMap<Row<'_>, usize> = HashMap::new();
        let mut order: Vec<(Row<'_>, Vec<u32>)> = vec![];
        for (i, row) in rows.iter().enumerate() {
            let slot = *batch_groups.entry(row).or_insert_with(|| {
                order.push((row, vec![]));
                order.len() - 1
            });
            order[slot].1.push(i as u32);
        }
        let args = self.aggregates.evaluate_args(&batch)?;
        let window_ends = self
            .window_end
            .map(|i| keys[i].as_primitive::<Int64Type>().clone());
        let mut touched = Vec::with_capacity(order.len());
        for (row, indices) in order {
            let owned = row.owned();
            if !self.groups.contains_key(&owned) {
                let group = self.aggregates.create()?;
                self.groups.insert(owned.clone(), group);
                if let Some(ends) = &window_ends {
                    let end = ends.value(indices[0] as usize);
                    self.by_end.entry(end).or_default().push(owned.clone());
                }
            }
            let group = self
                .groups
                .get_mut(&owned)
                .ok_or_else(|| ExecError::internal(NAME, "group vanished"))?;
            self.aggregates
                .update(group, &args, &UInt32Array::from(indices))?;
            touched.push(owned);
        }
        match self.emit {
            Emit::Changes => self.emit_rows(&touched),
            Emit::Final => Ok(None),
        }
    }

    fn advance_watermark(&mut self, watermark_ms: i64) -> Result<Option<ChangeBatch>> {
        let mut closed = vec![];
        while let Some(entry) = self.by_end.first_entry() {
            if entry.key().saturating_add(self.grace_ms) > watermark_ms {
                break;
            }
            closed.extend(entry.remove());
        }
        let out = match self.emit {
            Emit::Final => self.emit_rows(&closed)?,
            Emit::Changes => None,
        };
        for key in closed {
            self.groups.remove(&key);
        }
        Ok(out)
    }

    fn state_groups(&self) -> usize {
        self.groups.len()
    }
}
