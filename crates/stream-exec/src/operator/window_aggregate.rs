//! `WindowAggregateOperator`: keyed aggregation per time window (tumbling, hopping) or
//! over all time.
//!
//! Group keys (the GROUP BY values but the window bounds, which are the same for all of a
//! window's groups and kept once per window) are encoded with arrow's row format and
//! numbered once for every open window together ([`WindowKeys`]): a hopping window's
//! event hashes and looks up its key once, not once per window. The event is mostly one
//! row, naming its first open window, with the count of its windows beside the batch
//! ([`ChangeBatch::windows`], see [`crate::scan`]): the row goes into each, a later
//! window's bounds the first's plus the advance. State is kept per window,
//! by window end: [`KeyGroups`] maps a key's number to the window's dense group number,
//! and [`GroupStates`] holds every aggregate's state of its groups in vectors indexed by
//! that number (plain primitives for `COUNT`, `SUM`, `MIN`, `MAX`, `AVG`; a DataFusion
//! `Accumulator` per group for the others). A batch's rows are mapped to their groups'
//! numbers, then each aggregate folds the whole batch in one pass.
//!
//! With `EMIT CHANGES` the groups a batch touched are emitted after it, in order of their
//! first row in the batch; with `EMIT FINAL` a group is emitted once, when the watermark
//! passes its window's end plus grace, a window's groups in key order. Either way a
//! closed window is dropped whole, so state stays bounded on an unbounded stream.
//!
//! State changes go to the changelog as one record per key (the GROUP BY values but the
//! window bounds), holding the key's groups in every open window, whenever one of them
//! changed: a hopping window's event changes three windows but writes one record. A
//! window's closing writes nothing. A key that has left every window is deleted when
//! windows next close, unless it is in a window again by then (most keys are: a key's
//! next window opens right after its last one closes). A record may so hold groups of
//! windows already closed; a restore skips them, by the watermark restored with them.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{concat_batches, take, take_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::window::WINDOW_COLUMNS;
use sluice_sql_planner::{Emit, StreamOperator, WindowKind};

use super::aggregates::{changes, Aggregates, GroupKeys, Having, Outcome};
use super::group_states::GroupStates;
use super::key_groups::KeyGroups;
use super::window_keys::WindowKeys;
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};
use crate::state::{json_keys, StateChange, StateCodec};

const NAME: &str = "WindowAggregate";

/// The one "window" of an aggregation over all time.
const ALL_TIME: i64 = i64::MAX;

/// Group flags, one byte per group: its last row was written and passed HAVING (EMIT
/// CHANGES); touched by the current batch.
const WRITTEN: u8 = 1;
const TOUCHED: u8 = 2;
/// How many keys ahead the changed keys' groups are brought into the cache.
const PREFETCH_KEYS: usize = 16;
/// Bytes a state row of one group is taken to need, to size a key's changelog value (a
/// COUNT+SUM group of a `card-012345` key takes about 70); larger rows grow it.
const ROW_BYTES_GUESS: usize = 96;

/// The groups of one window.
struct Window {
    /// The window's values of the window bound columns ([`Bounds`]).
    bounds: Vec<ScalarValue>,
    /// Its group of each of its keys, by key number; groups are numbered densely.
    groups: KeyGroups,
    states: GroupStates,
    /// Per group: `WRITTEN`, `TOUCHED`.
    flags: Vec<u8>,
}

impl Window {
    fn new(aggregates: &Aggregates, bounds: Vec<ScalarValue>) -> Self {
        Self {
            bounds,
            groups: KeyGroups::new(),
            states: GroupStates::new(aggregates),
            flags: vec![],
        }
    }

    /// The group of key `k`, added (with a fresh state) when the window has none; and
    /// whether it was added.
    fn group(&mut self, aggregates: &Aggregates, k: u32) -> Result<(u32, bool)> {
        let (g, new) = self.groups.get_or_insert(k, self.groups.len() as u32);
        if new {
            self.states.push(aggregates)?;
            self.flags.push(0);
        }
        Ok((g, new))
    }

    fn heap_bytes(&self) -> usize {
        self.groups.heap_bytes() + self.states.heap_bytes() + self.flags.capacity()
    }
}

/// Where the GROUP BY columns go: the window bounds (`WINDOWSTART`, `window_end`, …) are
/// not part of the encoded keys but kept once per window.
struct Bounds {
    /// Positions in GROUP BY order of the key columns (the others), in key order.
    keys: Vec<usize>,
    /// Positions of the window bound columns, and their expressions.
    positions: Vec<usize>,
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    /// Which bound is `WINDOWEND`, when windowed.
    end: Option<usize>,
}

impl Bounds {
    /// The GROUP BY columns of `rows` groups: `keys` and the window's `bounds`.
    fn columns(
        &self,
        keys: Vec<ArrayRef>,
        bounds: &[ScalarValue],
        rows: usize,
    ) -> Result<Vec<ArrayRef>> {
        let bounds = bounds
            .iter()
            .map(|b| b.to_array_of_size(rows).map_err(ExecError::eval(NAME)))
            .collect::<Result<Vec<_>>>()?;
        self.in_group_order(keys, bounds)
    }

    /// Key and bound columns (each in its own order) put in GROUP BY order.
    fn in_group_order<T>(
        &self,
        keys: impl IntoIterator<Item = T>,
        bounds: impl IntoIterator<Item = T>,
    ) -> Result<Vec<T>> {
        let mut columns: Vec<Option<T>> = Vec::new();
        columns.resize_with(self.keys.len() + self.positions.len(), || None);
        for (&p, c) in self.keys.iter().zip(keys) {
            columns[p] = Some(c);
        }
        for (&p, b) in self.positions.iter().zip(bounds) {
            columns[p] = Some(b);
        }
        columns
            .into_iter()
            .map(|c| c.ok_or_else(|| ExecError::internal(NAME, "a group column is missing")))
            .collect()
    }

    /// Row `row`'s values of the bound columns among `columns` (in GROUP BY order).
    fn of_row(&self, columns: &[ArrayRef], row: usize) -> Result<Vec<ScalarValue>> {
        self.positions
            .iter()
            .map(|&p| ScalarValue::try_from_array(&columns[p], row).map_err(ExecError::eval(NAME)))
            .collect()
    }
}

/// `bound` moved `by` ms: a window bound of a later hopping window.
fn shifted(bound: ScalarValue, by: i64) -> Result<ScalarValue> {
    Ok(match bound {
        _ if by == 0 => bound,
        ScalarValue::Int64(Some(v)) => ScalarValue::Int64(Some(v.saturating_add(by))),
        ScalarValue::TimestampMillisecond(Some(v), zone) => {
            ScalarValue::TimestampMillisecond(Some(v.saturating_add(by)), zone)
        }
        other => {
            return Err(ExecError::internal(
                NAME,
                &format!("the window bound {other} cannot be moved to a later window"),
            ))
        }
    })
}

/// Result rows of one window, before they are put together.
struct Part {
    rows: RecordBatch,
    outcomes: Vec<Outcome>,
    /// Per row, its position in the output (EMIT CHANGES: its first batch row, and its
    /// window among that row's).
    order: Vec<u64>,
}

/// Keyed, windowed aggregation. See the module docs.
pub struct WindowAggregateOperator {
    keys: GroupKeys,
    bounds: Bounds,
    aggregates: Aggregates,
    schema: SchemaRef,
    aggregate_fields: Vec<FieldRef>,
    having: Option<Having>,
    /// Open windows by end; `ALL_TIME` when not windowed.
    windows: BTreeMap<i64, Window>,
    /// The keys of the open windows, numbered.
    keys_held: WindowKeys,
    /// Changelog keys read at restore in the form before records were per key: deleted
    /// with the next state changes.
    superseded: Vec<Vec<u8>>,
    groups: usize,
    window_end: Option<usize>,
    grace_ms: i64,
    /// Whether the windows hop: a record's row per window come one after the other
    /// (unless the batch counts a row's windows, [`ChangeBatch::windows`]).
    hopping: bool,
    /// A hopping window's advance (0 for others): the distance from a window's bounds to
    /// the next one's.
    advance_ms: i64,
    /// The most windows a record is in.
    most_windows: u64,
    emit: Emit,
    /// State rows: the group columns, the aggregates' states, `written`.
    codec: StateCodec,
    group_names: Vec<String>,
    /// The names of the key columns (GROUP BY but the window bounds), in key order: the
    /// changelog key.
    key_names: Vec<String>,
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
        let is_bound = |e: &Expr| matches!(e, Expr::Column(c) if window.is_some() && WINDOW_COLUMNS.contains(&c.name.as_str()));
        let mut group = vec![];
        let mut bounds = Bounds {
            keys: vec![],
            positions: vec![],
            exprs: vec![],
            end: None,
        };
        for (i, e) in group_exprs.iter().enumerate() {
            let expr = physical(e, input, NAME)?;
            if is_bound(e) {
                if Some(i) == *window_end {
                    bounds.end = Some(bounds.exprs.len());
                }
                bounds.positions.push(i);
                bounds.exprs.push(expr);
            } else {
                bounds.keys.push(i);
                group.push(expr);
            }
        }
        if window_end.is_some() && bounds.end.is_none() {
            return Err(ExecError::internal(
                NAME,
                "the window end is not a window column",
            ));
        }
        let aggregates = Aggregates::new(aggr_exprs, input, NAME)?;
        let group_fields = &output.fields()[..group_exprs.len()];
        let key_names = bounds
            .keys
            .iter()
            .map(|&p| group_fields[p].name().clone())
            .collect();
        let mut state_fields: Vec<FieldRef> = group_fields.to_vec();
        state_fields.extend(aggregates.state_fields()?);
        state_fields.push(Arc::new(Field::new("written", DataType::Boolean, false)));
        Ok(Self {
            keys: GroupKeys::new(group, input, NAME)?,
            bounds,
            aggregates,
            codec: StateCodec::new(Arc::new(Schema::new(state_fields)))?,
            group_names: group_fields.iter().map(|f| f.name().clone()).collect(),
            key_names,
            schema: Arc::new(output.as_arrow().clone()),
            aggregate_fields: output.fields()[group_exprs.len()..].to_vec(),
            having: having
                .as_ref()
                .map(|h| Having::new(h, output, NAME))
                .transpose()?,
            windows: BTreeMap::new(),
            keys_held: WindowKeys::new(),
            superseded: vec![],
            groups: 0,
            window_end: *window_end,
            grace_ms: window.map_or(0, |w| w.grace_ms),
            hopping: window.is_some_and(|w| matches!(w.spec.kind, WindowKind::Hopping { .. })),
            advance_ms: match window.map(|w| w.spec.kind) {
                Some(WindowKind::Hopping { advance_ms, .. }) => advance_ms,
                _ => 0,
            },
            most_windows: window.map_or(1, |w| w.spec.most_windows()),
            emit: *emit,
        })
    }

    /// The result rows of `groups` of `window` with their key columns `key_columns`,
    /// after HAVING; `order` is passed through.
    fn part(
        &self,
        window: &mut Window,
        groups: &[u32],
        mut columns: Vec<ArrayRef>,
        order: Vec<u64>,
    ) -> Result<Part> {
        columns.extend(
            window
                .states
                .evaluate(&self.aggregates, groups, &self.aggregate_fields)?,
        );
        let rows = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building aggregate results"))?;
        let outcomes = match &self.having {
            None => vec![Outcome::Row; groups.len()],
            // A row that stops passing HAVING deletes the row written before, if any.
            Some(having) => having
                .passes(&rows)?
                .into_iter()
                .zip(groups)
                .map(|(pass, &g)| {
                    let flags = &mut window.flags[g as usize];
                    match pass {
                        true => {
                            *flags |= WRITTEN;
                            Outcome::Row
                        }
                        false if *flags & WRITTEN != 0 => {
                            *flags &= !WRITTEN;
                            Outcome::Tombstone
                        }
                        false => Outcome::Dropped,
                    }
                })
                .collect(),
        };
        Ok(Part {
            rows,
            outcomes,
            order,
        })
    }

    /// Whether `key` names one group of one window (it holds window bounds): the
    /// changelog's form before records were per key.
    fn is_per_group_key(&self, key: &[u8]) -> bool {
        if self.bounds.positions.is_empty() {
            return false;
        }
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(key).is_ok_and(
            |fields| {
                self.bounds
                    .positions
                    .iter()
                    .any(|&p| fields.contains_key(&self.group_names[p]))
            },
        )
    }

    /// Deletes for the records of keys that have left every window (see
    /// [`WindowKeys::take_gone`]), and for the records superseded at restore.
    fn deleted_keys(&mut self) -> Result<Vec<StateChange>> {
        let mut out: Vec<StateChange> = std::mem::take(&mut self.superseded)
            .into_iter()
            .map(|key| StateChange { key, value: None })
            .collect();
        let gone = self.keys_held.take_gone();
        if !gone.is_empty() {
            let keys = self
                .keys
                .decode_bytes(gone.iter().map(|&k| self.keys_held.key(k)))?;
            out.extend(
                json_keys(&keys, &self.key_names, gone.len())?
                    .into_iter()
                    .map(|key| StateChange { key, value: None }),
            );
        }
        Ok(out)
    }

    /// Number the keys again without the deleted ones, when it is time to.
    fn drop_deleted_keys(&mut self) -> Result<()> {
        if let Some(numbers) = self.keys_held.drop_deleted()? {
            for window in self.windows.values_mut() {
                window.groups.renumber(&numbers);
            }
        }
        Ok(())
    }

    /// `parts` as one change batch, rows by their `order`.
    fn put_together(&self, mut parts: Vec<Part>) -> Result<Option<ChangeBatch>> {
        if parts.len() <= 1 {
            return match parts.pop() {
                Some(p) => changes(p.rows, &p.outcomes),
                None => Ok(None),
            };
        }
        let rows = concat_batches(&self.schema, parts.iter().map(|p| &p.rows))
            .map_err(ExecError::arrow("building aggregate results"))?;
        let outcomes: Vec<Outcome> = parts.iter().flat_map(|p| p.outcomes.clone()).collect();
        let order: Vec<u64> = parts.iter().flat_map(|p| p.order.iter().copied()).collect();
        if order.windows(2).all(|w| w[0] <= w[1]) {
            return changes(rows, &outcomes);
        }
        let mut permutation: Vec<u32> = (0..order.len() as u32).collect();
        permutation.sort_by_key(|&i| order[i as usize]);
        let rows = take_record_batch(&rows, &UInt32Array::from(permutation.clone()))
            .map_err(ExecError::arrow("ordering aggregate results"))?;
        let outcomes: Vec<Outcome> = permutation.iter().map(|&i| outcomes[i as usize]).collect();
        changes(rows, &outcomes)
    }
}

impl Operator for WindowAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let fan_out = batch.windows;
        let batch = batch.rows;
        let keys = self.keys.evaluate(&batch)?;
        let n = batch.num_rows();
        let bounds = self
            .bounds
            .exprs
            .iter()
            .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(NAME))?;
        let args = self.aggregates.evaluate_args(&batch)?;
        let numbers = self
            .keys_held
            .numbers(&keys.rows, self.hopping && fan_out.is_none())?;
        // The batch's rows per window, windows in order of their first row.
        let mut segments: Vec<(i64, Vec<u32>)> = vec![];
        let first_ends = self
            .bounds
            .end
            .map(|i| bounds[i].as_primitive::<Int64Type>().values().clone());
        match &first_ends {
            None => segments.push((ALL_TIME, (0..batch.num_rows() as u32).collect())),
            Some(ends) => {
                let mut last = 0;
                for (row, &first_end) in ends.iter().enumerate() {
                    let windows = fan_out.as_ref().map_or(1, |w| w[row]);
                    for k in 0..i64::from(windows) {
                        let end = first_end.saturating_add(k * self.advance_ms);
                        if segments.get(last).is_none_or(|s| s.0 != end) {
                            last = match segments.iter().position(|s| s.0 == end) {
                                Some(s) => s,
                                None => {
                                    segments.push((end, vec![]));
                                    segments.len() - 1
                                }
                            };
                        }
                        segments[last].1.push(row as u32);
                    }
                }
            }
        }
        // Row `r`'s window ending at `end`: which of the row's windows it is.
        let nth_window = |r: u32, end: i64| -> i64 {
            match (&first_ends, self.advance_ms) {
                (Some(ends), advance) if advance > 0 => (end - ends[r as usize]) / advance,
                _ => 0,
            }
        };
        // Key columns of the output come from the batch (taken at each group's first
        // row) when their types are the output's, else from the encoded keys.
        let take_keys = keys
            .columns
            .iter()
            .zip(&self.bounds.keys)
            .all(|(c, &p)| c.data_type() == self.schema.field(p).data_type());
        let mut parts = vec![];
        for (end, rows) in segments {
            let mut window = match self.windows.remove(&end) {
                Some(window) => window,
                None => {
                    let first = rows[0];
                    let shift = nth_window(first, end) * self.advance_ms;
                    let values = bounds
                        .iter()
                        .map(|b| {
                            ScalarValue::try_from_array(b, first as usize)
                                .map_err(ExecError::eval(NAME))
                                .and_then(|v| shifted(v, shift))
                        })
                        .collect::<Result<Vec<_>>>()?;
                    Window::new(&self.aggregates, values)
                }
            };
            let mut groups = Vec::with_capacity(rows.len());
            // (first row, group) of each group the batch touched.
            let mut touched: Vec<(u32, u32)> = vec![];
            for (i, &r) in rows.iter().enumerate() {
                if let Some(&ahead) = rows.get(i + PREFETCH_KEYS) {
                    window.groups.prefetch(numbers[ahead as usize]);
                }
                let k = numbers[r as usize];
                let (g, new) = window.group(&self.aggregates, k)?;
                if new {
                    self.groups += 1;
                    self.keys_held.hold(k);
                }
                let flags = &mut window.flags[g as usize];
                if *flags & TOUCHED == 0 {
                    *flags |= TOUCHED;
                    touched.push((r, g));
                }
                groups.push(g);
            }
            window
                .states
                .update(&self.aggregates, &args, &rows, &groups)?;
            for &(_, g) in &touched {
                window.flags[g as usize] &= !TOUCHED;
            }
            if self.emit == Emit::Changes {
                let (first, groups): (Vec<u32>, Vec<u32>) = touched.into_iter().unzip();
                let key_columns = if take_keys {
                    let first_rows = UInt32Array::from(first.clone());
                    keys.columns
                        .iter()
                        .map(|c| take(c.as_ref(), &first_rows, None))
                        .collect::<std::result::Result<Vec<_>, _>>()
                        .map_err(ExecError::arrow("selecting group keys"))?
                } else {
                    self.keys.decode_bytes(
                        first
                            .iter()
                            .map(|&r| self.keys_held.key(numbers[r as usize])),
                    )?
                };
                let columns = self
                    .bounds
                    .columns(key_columns, &window.bounds, groups.len())?;
                let order = first
                    .iter()
                    .map(|&r| u64::from(r) * self.most_windows + nth_window(r, end) as u64)
                    .collect();
                parts.push(self.part(&mut window, &groups, columns, order)?);
            }
            self.windows.insert(end, window);
        }
        self.put_together(parts)
    }

    fn advance_watermark(&mut self, watermark_ms: i64) -> Result<Option<ChangeBatch>> {
        if self.window_end.is_none() {
            return Ok(None);
        }
        let mut parts = vec![];
        while let Some(entry) = self.windows.first_entry() {
            if entry.key().saturating_add(self.grace_ms) > watermark_ms {
                break;
            }
            let mut window = entry.remove();
            self.groups -= window.groups.len();
            if self.emit == Emit::Final {
                // In key order, so the output does not depend on arrival (or restore) order.
                let (numbers, groups): (Vec<u32>, Vec<u32>) = self
                    .keys_held
                    .in_key_order(&window.groups)
                    .into_iter()
                    .unzip();
                let keys = self
                    .keys
                    .decode_bytes(numbers.iter().map(|&k| self.keys_held.key(k)))?;
                let columns = self.bounds.columns(keys, &window.bounds, groups.len())?;
                let order = vec![0; groups.len()];
                parts.push(self.part(&mut window, &groups, columns, order)?);
            }
            for (k, _) in window.groups.iter() {
                self.keys_held.release(k);
            }
            self.keys_held.window_closed();
        }
        self.put_together(parts)
    }

    fn state_groups(&self) -> usize {
        self.groups
    }

    fn state_bytes(&self) -> usize {
        self.windows.values().map(Window::heap_bytes).sum::<usize>() + self.keys_held.heap_bytes()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn mark_all_changed(&mut self) {
        self.keys_held.mark_all_changed();
    }

    fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        let mut out = self.deleted_keys()?;
        // One record per key with a changed group, holding its groups in every open
        // window (a closed window's group may linger in a record until the key changes
        // again; a restore skips it). Per window, `(position in written, group)` of the
        // keys' groups in it.
        let changed = self.keys_held.take_changed();
        let mut windows: Vec<&mut Window> = self.windows.values_mut().collect();
        let mut members: Vec<Vec<(u32, u32)>> = windows
            .iter()
            .map(|_| Vec::with_capacity(changed.len()))
            .collect();
        // The changed keys still in a window (a key's window may have closed since).
        let mut written: Vec<u32> = Vec::with_capacity(changed.len());
        for (i, &k) in changed.iter().enumerate() {
            if let Some(&ahead) = changed.get(i + PREFETCH_KEYS) {
                for window in &windows {
                    window.groups.prefetch(ahead);
                }
            }
            if !self.keys_held.is_held(k) {
                continue;
            }
            let at = written.len() as u32;
            for (window, members) in windows.iter().zip(&mut members) {
                if let Some(g) = window.groups.get(k) {
                    members.push((at, g));
                }
            }
            written.push(k);
        }
        let n = written.len();
        if n == 0 {
            self.drop_deleted_keys()?;
            return Ok(out);
        }
        let keys = self
            .keys
            .decode_bytes(written.iter().map(|&k| self.keys_held.key(k)))?;
        let fields = self.codec.schema().fields().clone();
        let n_keys = self.group_names.len();
        let state_fields = &fields[n_keys..fields.len() - 1];
        // Each key's value sized for its rows: one per window where it has a group.
        let mut rows_per_key = vec![0usize; n];
        for &(k, _) in members.iter().flatten() {
            rows_per_key[k as usize] += 1;
        }
        let mut values: Vec<Vec<u8>> = rows_per_key
            .into_iter()
            .map(|rows| self.codec.message_with_capacity(ROW_BYTES_GUESS * rows))
            .collect();
        for (window, members) in windows.iter_mut().zip(members) {
            if members.is_empty() {
                continue;
            }
            let (owners, groups): (Vec<usize>, Vec<u32>) =
                members.into_iter().map(|(k, g)| (k as usize, g)).unzip();
            let rows = UInt32Array::from_iter_values(owners.iter().map(|&k| k as u32));
            let key_columns = keys
                .iter()
                .map(|c| take(c.as_ref(), &rows, None))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(ExecError::arrow("selecting state keys"))?;
            let mut columns = self
                .bounds
                .columns(key_columns, &window.bounds, groups.len())?;
            columns.extend(
                window
                    .states
                    .checkpoint(&self.aggregates, &groups, state_fields)?,
            );
            let was_written: Vec<bool> = groups
                .iter()
                .map(|&g| window.flags[g as usize] & WRITTEN != 0)
                .collect();
            columns.push(Arc::new(BooleanArray::from(was_written)));
            let batch = RecordBatch::try_new(self.codec.schema().clone(), columns)
                .map_err(ExecError::arrow("building state rows"))?;
            self.codec.append(&batch, &owners, &mut values)?;
        }
        // Changelog keys: the keys' JSON without the window bounds, so one record holds a
        // key's groups in every window.
        let changelog_keys = json_keys(&keys, &self.key_names, n)?;
        out.extend(
            changelog_keys
                .into_iter()
                .zip(values)
                .map(|(key, value)| StateChange {
                    key,
                    value: Some(value),
                }),
        );
        self.drop_deleted_keys()?;
        Ok(out)
    }

    fn restore_state(&mut self, entries: &[(&[u8], &[u8])], watermark: Option<i64>) -> Result<()> {
        // Records of one group each, keyed with its window bounds, as written before
        // records were per key: read first, so a key's newer record wins, and deleted.
        let (per_group, per_key): (Vec<_>, Vec<_>) = entries
            .iter()
            .partition(|(key, _)| self.is_per_group_key(key));
        self.superseded = per_group.iter().map(|(key, _)| key.to_vec()).collect();
        let values = per_group.iter().chain(&per_key).map(|(_, value)| *value);
        let batch = self.codec.decode(values)?;
        let n_keys = self.group_names.len();
        let group_columns = &batch.columns()[..n_keys];
        let key_columns: Vec<ArrayRef> = self
            .bounds
            .keys
            .iter()
            .map(|&p| group_columns[p].clone())
            .collect();
        let rows = self.keys.encode(&key_columns)?;
        let state = &batch.columns()[n_keys..batch.num_columns() - 1];
        let written = batch.column(batch.num_columns() - 1).as_boolean();
        let all_time = Int64Array::from_value(ALL_TIME, batch.num_rows());
        let ends = match self.window_end {
            Some(i) => batch.column(i).as_primitive::<Int64Type>(),
            None => &all_time,
        };
        for (i, row) in rows.iter().enumerate() {
            let key = row.as_ref();
            let k = self.keys_held.number(key)?;
            let end = ends.value(i);
            let closed_before = self.window_end.is_some()
                && watermark.is_some_and(|wm| end.saturating_add(self.grace_ms) <= wm);
            if closed_before {
                // Its record is deleted when windows next close, unless the key is in a
                // window again by then.
                self.keys_held.retire(k);
                continue;
            }
            let window = match self.windows.entry(end) {
                std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(Window::new(
                    &self.aggregates,
                    self.bounds.of_row(group_columns, i)?,
                )),
            };
            let (g, new) = window.group(&self.aggregates, k)?;
            if new {
                self.groups += 1;
                self.keys_held.hold(k);
            }
            window.states.restore(&self.aggregates, g, state, i)?;
            window.flags[g as usize] = if written.value(i) { WRITTEN } else { 0 };
        }
        if !self.superseded.is_empty() {
            // The old records are deleted with the next changes: every group goes into
            // the per-key records then, not only the ones the next batch touches.
            self.mark_all_changed();
        }
        Ok(())
    }
}
