//! `WindowAggregateOperator`: keyed aggregation per time window (tumbling, hopping) or
//! over all time, using DataFusion accumulators.
//!
//! Group keys (the GROUP BY values, window bounds among them) are encoded with arrow's
//! row format. Each group holds one DataFusion `Accumulator` per aggregate, fed with the
//! group's rows of each batch through `update_batch`. With `EMIT CHANGES` the groups a
//! batch touched are emitted after it; with `EMIT FINAL` a group is emitted once, when the
//! watermark passes its window's end plus grace. Either way a closed window's groups are
//! dropped, so state stays bounded on an unbounded stream.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::OwnedRow;
use sluice_sql_planner::{Emit, StreamOperator};

use super::aggregates::{changes, Accumulators, Aggregates, GroupKeys, Having, Outcome};
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};
use crate::state::{json_keys, StateChange, StateCodec};

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
    /// Groups changed (or removed) since their state was last taken.
    dirty: HashSet<OwnedRow>,
    /// State rows: the group columns, the aggregates' states, `written`.
    codec: StateCodec,
    group_names: Vec<String>,
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
        let aggregates = Aggregates::new(aggr_exprs, input, NAME)?;
        let group_fields = &output.fields()[..group_exprs.len()];
        let mut state_fields: Vec<FieldRef> = group_fields.to_vec();
        state_fields.extend(aggregates.state_fields()?);
        state_fields.push(Arc::new(Field::new("written", DataType::Boolean, false)));
        Ok(Self {
            keys: GroupKeys::new(group, input, NAME)?,
            aggregates,
            dirty: HashSet::new(),
            codec: StateCodec::new(Arc::new(Schema::new(state_fields)))?,
            group_names: group_fields.iter().map(|f| f.name().clone()).collect(),
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
            self.dirty.insert(owned.clone());
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
            // In key order, so the output does not depend on arrival (or restore) order.
            let mut keys = entry.remove();
            keys.sort_unstable();
            closed.extend(keys);
        }
        let out = match self.emit {
            Emit::Final => self.emit_rows(&closed)?,
            Emit::Changes => None,
        };
        for key in closed {
            self.groups.remove(&key);
            self.dirty.insert(key);
        }
        Ok(out)
    }

    fn state_groups(&self) -> usize {
        self.groups.len()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        if self.dirty.is_empty() {
            return Ok(vec![]);
        }
        let keys: Vec<OwnedRow> = self.dirty.drain().collect();
        let key_columns = self.keys.decode(keys.iter().map(|k| k.row()))?;
        let changelog_keys = json_keys(&key_columns, &self.group_names, keys.len())?;
        // Live groups become state rows; the others are deleted.
        let mut live = vec![];
        let mut states = vec![vec![]; self.codec.schema().fields().len() - key_columns.len() - 1];
        let mut written = vec![];
        for (i, key) in keys.iter().enumerate() {
            if let Some(group) = self.groups.get_mut(key) {
                for (column, v) in states
                    .iter_mut()
                    .zip(self.aggregates.checkpoint(&mut group.accumulators)?)
                {
                    column.push(v);
                }
                written.push(group.written);
                live.push(i as u32);
            }
        }
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        if !live.is_empty() {
            let indices = UInt32Array::from(live.clone());
            let mut columns: Vec<ArrayRef> = key_columns
                .iter()
                .map(|c| datafusion::arrow::compute::take(c, &indices, None))
                .collect::<std::result::Result<_, _>>()
                .map_err(ExecError::arrow("selecting state keys"))?;
            let fields = self.codec.schema().fields();
            let state_fields = &fields[key_columns.len()..fields.len() - 1];
            columns.extend(self.aggregates.columns(states, state_fields)?);
            columns.push(Arc::new(BooleanArray::from(written)));
            let batch = RecordBatch::try_new(self.codec.schema().clone(), columns)
                .map_err(ExecError::arrow("building state rows"))?;
            let ranges: Vec<(usize, usize)> = (0..live.len()).map(|i| (i, 1)).collect();
            for (i, message) in live.iter().zip(self.codec.encode(&batch, &ranges)?) {
                values[*i as usize] = Some(message);
            }
        }
        Ok(changelog_keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| StateChange { key, value })
            .collect())
    }

    fn restore_state(&mut self, values: &[&[u8]]) -> Result<()> {
        let batch = self.codec.decode(values.iter().copied())?;
        let n_keys = self.group_names.len();
        let rows = self.keys.encode(&batch.columns()[..n_keys])?;
        let state = &batch.columns()[n_keys..batch.num_columns() - 1];
        let written = batch.column(batch.num_columns() - 1).as_boolean();
        let window_ends = self
            .window_end
            .map(|i| batch.column(i).as_primitive::<Int64Type>().clone());
        for (i, row) in rows.iter().enumerate() {
            let owned = row.owned();
            let group = Group {
                accumulators: self.aggregates.restore(state, i)?,
                written: written.value(i),
            };
            if self.groups.insert(owned.clone(), group).is_none() {
                if let Some(ends) = &window_ends {
                    self.by_end.entry(ends.value(i)).or_default().push(owned);
                }
            }
        }
        Ok(())
    }
}
