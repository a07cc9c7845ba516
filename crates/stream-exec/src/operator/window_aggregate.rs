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
use datafusion::arrow::row::OwnedRow;
use sluice_sql_planner::{Emit, StreamOperator};

use super::aggregates::{changes, Accumulators, Aggregates, GroupKeys, Having, Outcome};
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};

const NAME: &str = "WindowAggregate";

struct Group {
    accumulators: Accumulators,
    /// Its last row was written and passed HAVING (EMIT CHANGES).
    written: bool,
}

/// Keyed, windowed aggregation. See the module docs.
pub struct WindowAggregateOperator {
    keys: GroupKeys,
    aggregates: Aggregates,
    schema: SchemaRef,
    aggregate_fields: Vec<FieldRef>,
    groups: HashMap<OwnedRow, Group>,
    having: Option<Having>,
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
            having,
        } = op
        else {
            return Err(ExecError::internal(NAME, "not a WindowAggregate step"));
        };
        let group = group_exprs
            .iter()
            .map(|e| physical(e, input, NAME))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            keys: GroupKeys::new(group, input, NAME)?,
            aggregates: Aggregates::new(aggr_exprs, input, NAME)?,
            schema: Arc::new(output.as_arrow().clone()),
            aggregate_fields: output.fields()[group_exprs.len()..].to_vec(),
            groups: HashMap::new(),
            having: having
                .as_ref()
                .map(|h| Having::new(h, output, NAME))
                .transpose()?,
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
        let mut columns = self.keys.decode(keys.iter().map(|k| k.row()))?;
        let mut values = vec![Vec::with_capacity(keys.len()); self.aggregates.len()];
        for k in keys {
            self.aggregates.evaluate_into(
                self.groups.get_mut(k).map(|g| &mut g.accumulators),
                &mut values,
            )?;
        }
        columns.extend(self.aggregates.columns(values, &self.aggregate_fields)?);
        let rows = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building aggregate results"))?;
        let Some(having) = &self.having else {
            return Ok(Some(ChangeBatch::rows(rows)));
        };
        // A row that stops passing HAVING deletes the row written before, if any.
        let passes = having.passes(&rows)?;
        let outcomes: Vec<Outcome> = keys
            .iter()
            .zip(passes)
            .map(|(k, pass)| {
                let group = self.groups.get_mut(k);
                match (pass, group) {
                    (true, Some(g)) => {
                        g.written = true;
                        Outcome::Row
                    }
                    (false, Some(g)) if g.written => {
                        g.written = false;
                        Outcome::Tombstone
                    }
                    (true, None) => Outcome::Row,
                    _ => Outcome::Dropped,
                }
            })
            .collect();
        changes(rows, &outcomes)
    }
}

impl Operator for WindowAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let batch = batch.rows;
        let keys = self.keys.evaluate(&batch)?;
        let order = keys.groups();
        let args = self.aggregates.evaluate_args(&batch)?;
        let window_ends = self
            .window_end
            .map(|i| keys.columns[i].as_primitive::<Int64Type>().clone());
        let mut touched = Vec::with_capacity(order.len());
        for (row, indices) in order {
            let owned = row.owned();
            if !self.groups.contains_key(&owned) {
                let group = Group {
                    accumulators: self.aggregates.create()?,
                    written: false,
                };
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
                .update(&mut group.accumulators, &args, &UInt32Array::from(indices))?;
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
