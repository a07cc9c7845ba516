//! `SessionAggregateOperator`: keyed aggregation per session window.
//!
//! A session holds a key's records whose gaps are at most the gap; its bounds are its
//! first and last record times. A [`SessionIndex`] numbers the keys densely and keeps
//! each key's open sessions, sorted by start and more than a gap apart, each in a slot
//! that indexes its aggregate states ([`GroupStates`]: plain vectors for `COUNT`, `SUM`,
//! `MIN`, `MAX`, `AVG`, a DataFusion `Accumulator` for the others). A batch's rows are
//! grouped by key, sorted by time per key and cut into runs wherever two neighbours are
//! more than a gap apart; each run joins every session within a gap of it, so a record
//! that bridges two sessions merges them (their states merge). Once the batch's merges are
//! known, its rows are fed to their sessions in arrival order, so order-sensitive
//! aggregates (LATEST_BY_OFFSET, COLLECT_LIST) do not depend on batch boundaries.
//!
//! With `EMIT CHANGES`, every session whose bounds or values changed is written after the
//! batch; the row it had been written as before ([`WrittenRows`]), and every session
//! merged away, get a tombstone first. HAVING is applied here: a row that fails it is not
//! written, and a session whose written row stops passing gets a tombstone, so only
//! written rows are ever deleted. With `EMIT FINAL`, a session is written once, when the
//! watermark passes its last record time plus gap plus grace. A closed session's slot is
//! reused.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::compute::{cast, concat, take};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::window::{WINDOWEND, WINDOWSTART, WINDOW_END, WINDOW_START};
use sluice_sql_planner::{Emit, StreamOperator, WindowKind};

use super::aggregates::{changes, Aggregates, BatchKeys, GroupKeys, Having, Outcome};
use super::group_states::GroupStates;
use super::session_index::{SessionIndex, CHANGED, NONE, WRITTEN};
use super::written_rows::WrittenRows;
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};
use crate::state::{json_keys, StateChange, StateCodec};

const NAME: &str = "SessionAggregate";

/// What a group column of the output holds.
#[derive(Debug, Clone, Copy)]
enum GroupColumn {
    /// The `i`-th key column.
    Key(usize),
    /// `WINDOWSTART` (BIGINT) or `window_start` (TIMESTAMP).
    Start { timestamp: bool },
    /// `WINDOWEND` or `window_end`: the last record time.
    End { timestamp: bool },
}

/// A row written before and no longer live: its session's slot, the bounds it was
/// written with, and its key's position among the batch's keys.
struct Tombstone {
    position: u32,
    slot: u32,
    bounds: (i64, i64),
}

/// A batch's rows grouped by key.
struct RowsByKey {
    /// The keys, in order of their first row, as (key, first row).
    keys: Vec<(u32, u32)>,
    /// Where the rows of the key at each position start in `rows`, and the end.
    starts: Vec<u32>,
    /// The row numbers, a key's after another's.
    rows: Vec<u32>,
}

impl RowsByKey {
    /// The rows of the key at position `p`.
    fn rows_mut(&mut self, p: usize) -> &mut [u32] {
        &mut self.rows[self.starts[p] as usize..self.starts[p + 1] as usize]
    }
}

/// Keyed aggregation per session window. See the module docs.
pub struct SessionAggregateOperator {
    keys: GroupKeys,
    /// Evaluates to each row's event time (the scan puts it in the window columns).
    time_expr: Arc<dyn PhysicalExpr>,
    columns: Vec<GroupColumn>,
    aggregates: Aggregates,
    aggregate_fields: Vec<FieldRef>,
    schema: SchemaRef,
    gap_ms: i64,
    emit: Emit,
    having: Option<Having>,
    index: SessionIndex,
    /// Aggregate states by session slot.
    states: GroupStates,
    /// Values of the rows last written, by session slot (EMIT CHANGES).
    written: WrittenRows,
    /// State rows, one per open session: the key columns, start, last, the aggregates'
    /// states, and the bounds and values it was last written with.
    codec: StateCodec,
    key_names: Vec<String>,
}

impl SessionAggregateOperator {
    /// Build from a `StreamOperator::WindowAggregate` step with a SESSION window.
    pub fn new(op: &StreamOperator) -> Result<Self> {
        let StreamOperator::WindowAggregate {
            group_exprs,
            aggr_exprs,
            input,
            output,
            window: Some(window),
            emit,
            having,
            ..
        } = op
        else {
            return Err(ExecError::internal(NAME, "not a windowed aggregation step"));
        };
        let WindowKind::Session { gap_ms } = window.spec.kind else {
            return Err(ExecError::internal(NAME, "not a SESSION window"));
        };
        let mut key_exprs = vec![];
        let mut columns = vec![];
        let mut time_expr = None;
        for e in group_exprs {
            let name = match e {
                Expr::Column(c) => Some(c.name.as_str()),
                _ => None,
            };
            let column = match name {
                Some(WINDOWSTART) => GroupColumn::Start { timestamp: false },
                Some(WINDOW_START) => GroupColumn::Start { timestamp: true },
                Some(WINDOWEND) => GroupColumn::End { timestamp: false },
                Some(WINDOW_END) => GroupColumn::End { timestamp: true },
                _ => {
                    key_exprs.push(physical(e, input, NAME)?);
                    GroupColumn::Key(key_exprs.len() - 1)
                }
            };
            if name == Some(WINDOWSTART) {
                time_expr = Some(physical(e, input, NAME)?);
            }
            columns.push(column);
        }
        let time_expr = time_expr
            .ok_or_else(|| ExecError::internal(NAME, "WINDOWSTART is missing from GROUP BY"))?;
        let keys = GroupKeys::new(key_exprs, input, NAME)?;
        let aggregates = Aggregates::new(aggr_exprs, input, NAME)?;
        let aggregate_fields = output.fields()[group_exprs.len()..].to_vec();
        let key_names: Vec<String> = (0..keys.types().len()).map(|i| format!("key{i}")).collect();
        let mut state_fields: Vec<Field> = keys
            .types()
            .iter()
            .zip(&key_names)
            .map(|(t, n)| Field::new(n, t.clone(), true))
            .collect();
        state_fields.push(Field::new("start", DataType::Int64, false));
        state_fields.push(Field::new("last", DataType::Int64, false));
        state_fields.extend(
            aggregates
                .state_fields()?
                .iter()
                .map(|f| f.as_ref().clone()),
        );
        state_fields.push(Field::new("written_start", DataType::Int64, true));
        state_fields.push(Field::new("written_last", DataType::Int64, true));
        for (i, f) in aggregate_fields.iter().enumerate() {
            state_fields.push(Field::new(
                format!("written{i}"),
                f.data_type().clone(),
                true,
            ));
        }
        let states = GroupStates::new(&aggregates);
        let written = WrittenRows::new(&aggregate_fields);
        Ok(Self {
            keys,
            time_expr,
            columns,
            aggregates,
            aggregate_fields,
            codec: StateCodec::new(Arc::new(Schema::new(state_fields)))?,
            key_names,
            schema: Arc::new(output.as_arrow().clone()),
            gap_ms,
            emit: *emit,
            index: SessionIndex::new(gap_ms, window.grace_ms),
            states,
            written,
            having: having
                .as_ref()
                .map(|h| Having::new(h, output, NAME))
                .transpose()?,
        })
    }

    /// Number the keys of `keys`' rows and group the rows by key.
    fn group_by_key(&mut self, keys: &BatchKeys) -> Result<RowsByKey> {
        let n = keys.rows.num_rows();
        let mut by_key = RowsByKey {
            keys: vec![],
            starts: vec![0],
            rows: vec![0; n],
        };
        // Each row's position among the batch's keys.
        let mut positions = Vec::with_capacity(n);
        let numbers = self
            .index
            .key_of_each((0..n).map(|r| keys.rows.row(r).data()))?;
        for (r, k) in numbers.into_iter().enumerate() {
            let mut p = self.index.batch_key(k);
            if p == NONE {
                p = by_key.keys.len() as u32;
                self.index.set_batch_key(k, p);
                by_key.keys.push((k, r as u32));
                by_key.starts.push(0);
            }
            by_key.starts[p as usize + 1] += 1;
            positions.push(p);
        }
        for &(k, _) in &by_key.keys {
            self.index.set_batch_key(k, NONE);
        }
        // A counting sort: a key's rows stay in arrival order.
        for i in 1..by_key.starts.len() {
            by_key.starts[i] += by_key.starts[i - 1];
        }
        let mut next = by_key.starts.clone();
        for (r, &p) in positions.iter().enumerate() {
            by_key.rows[next[p as usize] as usize] = r as u32;
            next[p as usize] += 1;
        }
        Ok(by_key)
    }

    /// Add the records of key `k` (at `position` among the batch's keys) from `first` to
    /// `last`, at most a gap apart, to its sessions, merging those within a gap; returns
    /// the session's slot. Rows written before and no longer live go to `tombstones`, the
    /// slots merged away to `merged`.
    fn add_run(
        &mut self,
        (k, position): (u32, u32),
        bounds: (i64, i64),
        merged: &mut Vec<u32>,
        tombstones: &mut Vec<Tombstone>,
    ) -> Result<u32> {
        let from = merged.len();
        let join = self.index.join(k, bounds, merged);
        let s = join.slot;
        if join.new_slot {
            self.states.push(&self.aggregates)?;
            self.written.push();
        }
        for &other in &merged[from..] {
            self.states.merge(&self.aggregates, s, other)?;
            self.tombstone(position, other, tombstones);
        }
        if self.index.has(s, WRITTEN) && self.index.written(s) != self.index.bounds(s) {
            self.tombstone(position, s, tombstones);
        }
        self.index.set(s, CHANGED);
        self.index.mark_dirty(k);
        Ok(s)
    }

    /// A tombstone for slot `s`'s written row, if it has one.
    fn tombstone(&mut self, position: u32, s: u32, tombstones: &mut Vec<Tombstone>) {
        if self.index.has(s, WRITTEN) {
            self.index.unset(s, WRITTEN);
            tombstones.push(Tombstone {
                position,
                slot: s,
                bounds: self.index.written(s),
            });
        }
    }

    /// The output rows of `tombstones` (with their written values) followed by the live
    /// sessions `live` (with their current values), given their key columns; HAVING
    /// decides which live rows are written. With EMIT CHANGES, what is written is
    /// remembered, so a later change can delete exactly that row.
    fn write(
        &mut self,
        keys: Vec<ArrayRef>,
        tombstones: &[Tombstone],
        live: &[u32],
    ) -> Result<Option<ChangeBatch>> {
        let n = tombstones.len() + live.len();
        if n == 0 {
            return Ok(None);
        }
        let mut starts = Vec::with_capacity(n);
        let mut ends = Vec::with_capacity(n);
        for (start, end) in tombstones
            .iter()
            .map(|t| t.bounds)
            .chain(live.iter().map(|&s| self.index.bounds(s)))
        {
            starts.push(start);
            ends.push(end);
        }
        let fields = &self.aggregate_fields;
        let mut values: Vec<ArrayRef> = self
            .states
            .evaluate(&self.aggregates, live, fields)?
            .into_iter()
            .zip(fields)
            .map(|(array, field)| self.fit(array, field))
            .collect::<Result<_>>()?;
        if !tombstones.is_empty() {
            let slots: Vec<u32> = tombstones.iter().map(|t| t.slot).collect();
            let old =
                self.written
                    .columns(&self.aggregates, &slots, &vec![true; slots.len()], fields)?;
            values = old
                .iter()
                .zip(&values)
                .map(|(old, new)| concat(&[old.as_ref(), new.as_ref()]))
                .collect::<std::result::Result<_, _>>()
                .map_err(ExecError::arrow("building session results"))?;
        }
        let mut columns: Vec<ArrayRef> = self
            .columns
            .iter()
            .map(|c| -> ArrayRef {
                match *c {
                    GroupColumn::Key(i) => keys[i].clone(),
                    GroupColumn::Start { timestamp: false } => {
                        Arc::new(Int64Array::from(starts.clone()))
                    }
                    GroupColumn::Start { timestamp: true } => {
                        Arc::new(TimestampMillisecondArray::from(starts.clone()))
                    }
                    GroupColumn::End { timestamp: false } => {
                        Arc::new(Int64Array::from(ends.clone()))
                    }
                    GroupColumn::End { timestamp: true } => {
                        Arc::new(TimestampMillisecondArray::from(ends.clone()))
                    }
                }
            })
            .collect();
        columns.extend(values);
        let rows = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building session results"))?;
        let passes = match &self.having {
            Some(h) => h.passes(&rows)?,
            None => vec![true; n],
        };
        let remember = self.emit == Emit::Changes;
        let values = &rows.columns()[self.columns.len()..];
        let mut outcomes = vec![Outcome::Tombstone; tombstones.len()];
        let mut written = vec![];
        for ((row, &s), pass) in (tombstones.len()..)
            .zip(live)
            .zip(&passes[tombstones.len()..])
        {
            outcomes.push(if *pass {
                if remember {
                    self.index.set_written(s, (starts[row], ends[row]));
                    written.push((s, row));
                }
                Outcome::Row
            } else if self.index.has(s, WRITTEN) {
                self.index.unset(s, WRITTEN);
                Outcome::Tombstone
            } else {
                Outcome::Dropped
            });
        }
        self.written.record(&written, values)?;
        changes(rows, &outcomes)
    }

    /// `array`, results of an aggregate, typed as its output `field`; nulls where the
    /// field cannot be null become the type's default (as [`Aggregates::column`]).
    fn fit(&self, array: ArrayRef, field: &FieldRef) -> Result<ArrayRef> {
        if array.data_type() == field.data_type()
            && (field.is_nullable() || array.null_count() == 0)
        {
            return Ok(array);
        }
        if field.is_nullable() {
            return cast(&array, field.data_type())
                .map_err(ExecError::arrow("typing aggregate results"));
        }
        let values = (0..array.len())
            .map(|i| ScalarValue::try_from_array(&array, i))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(NAME))?;
        self.aggregates.column(values, field)
    }

    /// The key columns of the batch rows `rows` (of `keys`), or else of the keys `ks`.
    fn key_columns(
        &self,
        keys: &BatchKeys,
        rows: impl Iterator<Item = u32>,
        ks: impl Iterator<Item = u32>,
    ) -> Result<Vec<ArrayRef>> {
        // Taken from the batch when their types are the output's.
        let same = self
            .columns
            .iter()
            .zip(self.schema.fields())
            .all(|(c, f)| match c {
                GroupColumn::Key(i) => keys.columns[*i].data_type() == f.data_type(),
                _ => true,
            });
        if !same {
            return self.keys.decode_bytes(ks.map(|k| self.index.key_bytes(k)));
        }
        let rows = UInt32Array::from_iter_values(rows);
        keys.columns
            .iter()
            .map(|c| take(c.as_ref(), &rows, None))
            .collect::<std::result::Result<_, _>>()
            .map_err(ExecError::arrow("selecting group keys"))
    }
}

impl Operator for SessionAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let batch = batch.rows;
        let n = batch.num_rows();
        let times = self
            .time_expr
            .evaluate(&batch)
            .and_then(|v| v.into_array(n))
            .map_err(ExecError::eval(NAME))?;
        let times = times.as_primitive::<Int64Type>().values();
        let keys = self.keys.evaluate(&batch)?;
        let args = self.aggregates.evaluate_args(&batch)?;
        let mut by_key = self.group_by_key(&keys)?;
        let batch_keys = std::mem::take(&mut by_key.keys);
        let time = |r: &u32| times[*r as usize];
        let mut slots = vec![NONE; n];
        let mut merged = vec![];
        let mut tombstones = vec![];
        for (p, &(k, _)) in batch_keys.iter().enumerate() {
            let rows = by_key.rows_mut(p);
            if rows.windows(2).any(|w| time(&w[0]) > time(&w[1])) {
                rows.sort_by_key(time);
            }
            // Runs of rows at most a gap apart.
            let mut i = 0;
            while i < rows.len() {
                let (first, mut last) = (time(&rows[i]), time(&rows[i]));
                let mut j = i + 1;
                while j < rows.len() && time(&rows[j]).saturating_sub(last) <= self.gap_ms {
                    last = time(&rows[j]);
                    j += 1;
                }
                let s = self.add_run((k, p as u32), (first, last), &mut merged, &mut tombstones)?;
                for &r in &rows[i..j] {
                    slots[r as usize] = s;
                }
                i = j;
            }
        }
        // Rows reach their sessions once the batch's merges are done: keys in batch
        // order, each key's sessions by start, each session's rows in arrival order.
        if !merged.is_empty() {
            for s in &mut slots {
                *s = self.index.resolve(*s);
            }
            self.index.end_batch(&merged);
        }
        for p in 0..batch_keys.len() {
            let rows = by_key.rows_mut(p);
            if rows.len() > 1 {
                rows.sort_unstable_by_key(|&r| (self.index.bounds(slots[r as usize]).0, r));
            }
        }
        let groups: Vec<u32> = by_key.rows.iter().map(|&r| slots[r as usize]).collect();
        self.states
            .update_grouped(&self.aggregates, &args, &by_key.rows, &groups)?;
        if self.emit == Emit::Final {
            return Ok(None);
        }
        let mut live = vec![];
        let mut positions = vec![];
        for (p, &(k, _)) in batch_keys.iter().enumerate() {
            for s in self.index.sessions(k) {
                if self.index.has(s, CHANGED) {
                    live.push(s);
                    positions.push(p);
                }
            }
        }
        for &s in &live {
            self.index.unset(s, CHANGED);
        }
        let positions = tombstones
            .iter()
            .map(|t| t.position as usize)
            .chain(positions);
        let key_columns = self.key_columns(
            &keys,
            positions.clone().map(|p| batch_keys[p].1),
            positions.map(|p| batch_keys[p].0),
        )?;
        self.write(key_columns, &tombstones, &live)
    }

    fn advance_watermark(&mut self, watermark_ms: i64) -> Result<Option<ChangeBatch>> {
        let (mut closed, mut released) = (vec![], vec![]);
        self.index.close(watermark_ms, &mut closed, &mut released);
        let out = match self.emit {
            Emit::Final if !closed.is_empty() => {
                // In order of close time, key and start.
                let index = &self.index;
                closed.sort_by(|&a, &b| {
                    let order = |s: u32| {
                        let (start, last) = index.bounds(s);
                        (index.close_time(last), index.key_bytes(index.key(s)), start)
                    };
                    order(a).cmp(&order(b))
                });
                let keys = self
                    .keys
                    .decode_bytes(closed.iter().map(|&s| index.key_bytes(index.key(s))))?;
                self.write(keys, &[], &closed)?
            }
            _ => None,
        };
        for &s in closed.iter().chain(&released) {
            self.states.clear(&self.aggregates, s)?;
            self.written.clear(s);
        }
        self.index.release(&closed);
        self.index.release(&released);
        self.index.compact()?;
        Ok(out)
    }

    fn state_groups(&self) -> usize {
        self.index.open()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn mark_all_changed(&mut self) {
        self.index.mark_all_dirty();
    }

    fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        let keys = self.index.take_dirty();
        if keys.is_empty() {
            return Ok(vec![]);
        }
        let key_columns = self
            .keys
            .decode_bytes(keys.iter().map(|&k| self.index.key_bytes(k)))?;
        let changelog_keys = json_keys(&key_columns, &self.key_names, keys.len())?;
        // One record per key holding all its open sessions; no sessions: deleted.
        let mut take_keys = vec![];
        let mut slots = vec![];
        let mut ranges: Vec<Option<(usize, usize)>> = vec![None; keys.len()];
        for (i, &k) in keys.iter().enumerate() {
            let from = slots.len();
            slots.extend(self.index.sessions(k));
            if slots.len() > from {
                ranges[i] = Some((from, slots.len() - from));
                take_keys.resize(slots.len(), i as u32);
            }
        }
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        if !slots.is_empty() {
            let indices = UInt32Array::from(take_keys);
            let mut columns: Vec<ArrayRef> = key_columns
                .iter()
                .map(|c| take(c, &indices, None))
                .collect::<std::result::Result<_, _>>()
                .map_err(ExecError::arrow("selecting state keys"))?;
            let bounds: Vec<(i64, i64)> = slots.iter().map(|&s| self.index.bounds(s)).collect();
            columns.push(Arc::new(Int64Array::from_iter_values(
                bounds.iter().map(|b| b.0),
            )));
            columns.push(Arc::new(Int64Array::from_iter_values(
                bounds.iter().map(|b| b.1),
            )));
            let fields = self.codec.schema().fields().clone();
            let first_state = key_columns.len() + 2;
            let n_states = fields.len() - first_state - 2 - self.aggregate_fields.len();
            columns.extend(self.states.checkpoint(
                &self.aggregates,
                &slots,
                &fields[first_state..first_state + n_states],
            )?);
            let written: Vec<bool> = slots.iter().map(|&s| self.index.has(s, WRITTEN)).collect();
            let written_bounds = |i: usize| written[i].then(|| self.index.written(slots[i]));
            columns.push(Arc::new(Int64Array::from_iter(
                (0..slots.len()).map(|i| written_bounds(i).map(|b| b.0)),
            )));
            columns.push(Arc::new(Int64Array::from_iter(
                (0..slots.len()).map(|i| written_bounds(i).map(|b| b.1)),
            )));
            columns.extend(self.written.columns(
                &self.aggregates,
                &slots,
                &written,
                &fields[first_state + n_states + 2..],
            )?);
            let batch = RecordBatch::try_new(self.codec.schema().clone(), columns)
                .map_err(ExecError::arrow("building state rows"))?;
            let live: Vec<(usize, (usize, usize))> = ranges
                .iter()
                .enumerate()
                .filter_map(|(k, r)| r.map(|r| (k, r)))
                .collect();
            let encoded = self
                .codec
                .encode(&batch, &live.iter().map(|(_, r)| *r).collect::<Vec<_>>())?;
            for ((k, _), message) in live.into_iter().zip(encoded) {
                values[k] = Some(message);
            }
        }
        self.index.compact()?;
        Ok(changelog_keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| StateChange { key, value })
            .collect())
    }

    fn restore_state(&mut self, entries: &[(&[u8], &[u8])], _watermark: Option<i64>) -> Result<()> {
        let values: Vec<&[u8]> = entries.iter().map(|(_, v)| *v).collect();
        let batch = self.codec.decode(values.iter().copied())?;
        let n_keys = self.key_names.len();
        let rows = self.keys.encode(&batch.columns()[..n_keys])?;
        let starts = batch.column(n_keys).as_primitive::<Int64Type>();
        let lasts = batch.column(n_keys + 1).as_primitive::<Int64Type>();
        let n_states = batch.num_columns() - n_keys - 4 - self.aggregate_fields.len();
        let state = &batch.columns()[n_keys + 2..n_keys + 2 + n_states];
        let written_starts = batch
            .column(n_keys + 2 + n_states)
            .as_primitive::<Int64Type>();
        let written_lasts = batch
            .column(n_keys + 3 + n_states)
            .as_primitive::<Int64Type>();
        let mut written = vec![];
        for (i, row) in rows.iter().enumerate() {
            let k = self.index.key_of(row.as_ref())?;
            let join = self.index.insert(k, (starts.value(i), lasts.value(i)));
            let s = join.slot;
            if join.new_slot {
                self.states.push(&self.aggregates)?;
                self.written.push();
            }
            self.states.restore(&self.aggregates, s, state, i)?;
            if written_starts.is_valid(i) {
                self.index
                    .set_written(s, (written_starts.value(i), written_lasts.value(i)));
                written.push((s, i));
            }
        }
        self.written
            .record(&written, &batch.columns()[n_keys + 4 + n_states..])
    }
}
