//! `WindowAggregateOperator`: keyed aggregation per time window (tumbling, hopping) or
//! over all time.
//!
//! Group keys (the GROUP BY values but the window bounds, which are the same for all of a
//! window's groups and kept once per window) are encoded with arrow's row format. State
//! is kept per window, by window end: a [`GroupIndex`] numbers the window's keys densely and [`GroupStates`] holds every aggregate's state of its groups
//! in vectors indexed by that number (plain primitives for `COUNT`, `SUM`, `MIN`, `MAX`,
//! `AVG`; a DataFusion `Accumulator` per group for the others). A batch's rows are mapped
//! to their groups' numbers, then each aggregate folds the whole batch in one pass.
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
use datafusion::common::hash_utils::RandomState;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::window::WINDOW_COLUMNS;
use sluice_sql_planner::{Emit, StreamOperator};

use super::aggregates::{changes, Aggregates, GroupKeys, Having, Outcome};
use super::group_index::{hash_key, GroupIndex};
use super::group_states::GroupStates;
use super::{physical, ChangeBatch, Operator};
use crate::error::{ExecError, Result};
use crate::state::{json_keys, StateChange, StateCodec};

const NAME: &str = "WindowAggregate";

/// The one "window" of an aggregation over all time.
const ALL_TIME: i64 = i64::MAX;

/// Group flags, one byte per group.
const WRITTEN: u8 = 1;
const DIRTY: u8 = 2;
const TOUCHED: u8 = 4;
/// Bytes a state row of one group is taken to need, to size a key's changelog value (a
/// COUNT+SUM group of a `card-012345` key takes about 70); larger rows grow it.
const ROW_BYTES_GUESS: usize = 96;

/// The groups of one window.
struct Window {
    /// The window's values of the window bound columns ([`Bounds`]).
    bounds: Vec<ScalarValue>,
    index: GroupIndex,
    states: GroupStates,
    /// Per group: its last row was written and passed HAVING (`WRITTEN`, EMIT CHANGES);
    /// changed since its state was last taken (`DIRTY`); touched by the current batch.
    flags: Vec<u8>,
    /// The `DIRTY` groups.
    dirty: Vec<u32>,
}

impl Window {
    fn new(aggregates: &Aggregates, bounds: Vec<ScalarValue>) -> Self {
        Self {
            bounds,
            index: GroupIndex::new(),
            states: GroupStates::new(aggregates),
            flags: vec![],
            dirty: vec![],
        }
    }

    fn heap_bytes(&self) -> usize {
        self.index.heap_bytes()
            + self.states.heap_bytes()
            + self.flags.capacity()
            + self.dirty.capacity() * size_of::<u32>()
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

/// Result rows of one window, before they are put together.
struct Part {
    rows: RecordBatch,
    outcomes: Vec<Outcome>,
    /// Per row, its position in the output (EMIT CHANGES: its first batch row).
    order: Vec<u32>,
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
    /// Keys of the windows closed since state was last taken.
    closed: Vec<GroupIndex>,
    /// Keys of the windows closed before that (or, after a restore, keys whose record
    /// held only closed windows): their records are deleted at the next closing unless
    /// the key is in a window again by then.
    retired: Vec<GroupIndex>,
    /// Changelog keys read at restore in the form before records were per key: deleted
    /// with the next state changes.
    superseded: Vec<Vec<u8>>,
    groups: usize,
    window_end: Option<usize>,
    grace_ms: i64,
    emit: Emit,
    hasher: RandomState,
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
            closed: vec![],
            retired: vec![],
            superseded: vec![],
            groups: 0,
            window_end: *window_end,
            grace_ms: window.map_or(0, |w| w.grace_ms),
            emit: *emit,
            hasher: RandomState::default(),
        })
    }

    /// The result rows of `groups` of `window` with their key columns `key_columns`,
    /// after HAVING; `order` is passed through.
    fn part(
        &self,
        window: &mut Window,
        groups: &[u32],
        mut columns: Vec<ArrayRef>,
        order: Vec<u32>,
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

    /// Deletes for the records of keys that have left every window. Checked when windows
    /// close, for the keys of the windows that closed the time before: a key with events
    /// in every window (most, with a key's next window opening right after) is
    /// written again with its new window rather than deleted and written again.
    fn deleted_keys(&mut self) -> Result<Vec<StateChange>> {
        let superseded = std::mem::take(&mut self.superseded)
            .into_iter()
            .map(|key| StateChange { key, value: None });
        if self.closed.is_empty() {
            return Ok(superseded.collect());
        }
        let closed = std::mem::take(&mut self.closed);
        let mut gone = GroupIndex::new();
        for index in std::mem::replace(&mut self.retired, closed) {
            for g in 0..index.len() as u32 {
                let key = index.key(g);
                let hash = hash_key(&self.hasher, key);
                let held = self
                    .windows
                    .values()
                    .map(|w| &w.index)
                    .chain(&self.retired)
                    .any(|i| i.get(hash, key).is_some());
                if !held {
                    gone.intern(hash, key)?;
                }
            }
        }
        let mut out: Vec<StateChange> = superseded.collect();
        if gone.len() > 0 {
            let keys = self
                .keys
                .decode_bytes((0..gone.len() as u32).map(|g| gone.key(g)))?;
            out.extend(
                json_keys(&keys, &self.key_names, gone.len())?
                    .into_iter()
                    .map(|key| StateChange { key, value: None }),
            );
        }
        Ok(out)
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
        let order: Vec<u32> = parts.iter().flat_map(|p| p.order.iter().copied()).collect();
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
        // The batch's rows per window, windows in order of their first row.
        let mut segments: Vec<(i64, Vec<u32>)> = vec![];
        match self.bounds.end {
            None => segments.push((ALL_TIME, (0..batch.num_rows() as u32).collect())),
            Some(i) => {
                let ends = bounds[i].as_primitive::<Int64Type>();
                let mut last = 0;
                for (row, end) in ends.values().iter().enumerate() {
                    if segments.get(last).is_none_or(|s| s.0 != *end) {
                        last = match segments.iter().position(|s| s.0 == *end) {
                            Some(s) => s,
                            None => {
                                segments.push((*end, vec![]));
                                segments.len() - 1
                            }
                        };
                    }
                    segments[last].1.push(row as u32);
                }
            }
        }
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
                    let first = rows[0] as usize;
                    let values = bounds
                        .iter()
                        .map(|b| ScalarValue::try_from_array(b, first))
                        .collect::<datafusion::error::Result<Vec<_>>>()
                        .map_err(ExecError::eval(NAME))?;
                    Window::new(&self.aggregates, values)
                }
            };
            let mut groups = Vec::with_capacity(rows.len());
            // (first row, group) of each group the batch touched.
            let mut touched: Vec<(u32, u32)> = vec![];
            let hashes: Vec<u64> = rows
                .iter()
                .map(|&r| hash_key(&self.hasher, keys.rows.row(r as usize).as_ref()))
                .collect();
            for (i, &r) in rows.iter().enumerate() {
                window.index.prefetch_ahead(&hashes, i);
                let key = keys.rows.row(r as usize);
                let key = key.as_ref();
                let (g, new) = window.index.intern(hashes[i], key)?;
                if new {
                    window.states.push(&self.aggregates)?;
                    window.flags.push(0);
                    self.groups += 1;
                }
                let flags = &mut window.flags[g as usize];
                if *flags & DIRTY == 0 {
                    window.dirty.push(g);
                }
                if *flags & TOUCHED == 0 {
                    touched.push((r, g));
                }
                *flags |= DIRTY | TOUCHED;
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
                    self.keys
                        .decode_bytes(groups.iter().map(|&g| window.index.key(g)))?
                };
                let columns = self
                    .bounds
                    .columns(key_columns, &window.bounds, groups.len())?;
                parts.push(self.part(&mut window, &groups, columns, first)?);
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
            self.groups -= window.index.len();
            if self.emit == Emit::Final {
                // In key order, so the output does not depend on arrival (or restore) order.
                let mut groups: Vec<u32> = (0..window.index.len() as u32).collect();
                groups.sort_unstable_by(|a, b| window.index.key(*a).cmp(window.index.key(*b)));
                let keys = self
                    .keys
                    .decode_bytes(groups.iter().map(|&g| window.index.key(g)))?;
                let columns = self.bounds.columns(keys, &window.bounds, groups.len())?;
                let order = vec![0; groups.len()];
                parts.push(self.part(&mut window, &groups, columns, order)?);
            }
            self.closed.push(window.index);
        }
        self.put_together(parts)
    }

    fn state_groups(&self) -> usize {
        self.groups
    }

    fn state_bytes(&self) -> usize {
        self.windows.values().map(Window::heap_bytes).sum::<usize>()
            + self
                .closed
                .iter()
                .chain(&self.retired)
                .map(GroupIndex::heap_bytes)
                .sum::<usize>()
    }

    fn is_stateful(&self) -> bool {
        true
    }

    fn mark_all_changed(&mut self) {
        for window in self.windows.values_mut() {
            for (g, flags) in window.flags.iter_mut().enumerate() {
                if *flags & DIRTY == 0 {
                    *flags |= DIRTY;
                    window.dirty.push(g as u32);
                }
            }
        }
    }

    fn take_state_changes(&mut self) -> Result<Vec<StateChange>> {
        let mut out = self.deleted_keys()?;
        // One record per key with a changed group, holding its groups in every open
        // window (a closed window's group may linger in a record until the key changes
        // again; a restore skips it). The keys are numbered in order of first sight;
        // per window, `(key number, group)` of the keys' groups in it.
        let mut windows: Vec<&mut Window> = self.windows.values_mut().collect();
        let mut members: Vec<Vec<(u32, u32)>> = vec![vec![]; windows.len()];
        let changed = if let [window] = windows.as_mut_slice() {
            // One window: its changed groups are the changed keys.
            let dirty = std::mem::take(&mut window.dirty);
            for &g in &dirty {
                window.flags[g as usize] &= !DIRTY;
            }
            members[0] = dirty
                .iter()
                .enumerate()
                .map(|(k, &g)| (k as u32, g))
                .collect();
            None
        } else {
            // At least this many distinct keys changed (a key may be in many windows).
            let least = windows.iter().map(|w| w.dirty.len()).max().unwrap_or(0);
            let mut changed = GroupIndex::with_capacity(least);
            let mut hashes = Vec::with_capacity(least);
            for (window, members) in windows.iter_mut().zip(&mut members) {
                for g in std::mem::take(&mut window.dirty) {
                    window.flags[g as usize] &= !DIRTY;
                    let key = window.index.key(g);
                    let hash = hash_key(&self.hasher, key);
                    let (k, new) = changed.intern(hash, key)?;
                    if new {
                        hashes.push(hash);
                    }
                    members.push((k, g));
                }
            }
            // A changed key's groups in the windows where it did not change.
            let mut seen = vec![false; hashes.len()];
            for (window, members) in windows.iter().zip(&mut members) {
                seen.fill(false);
                for &(k, _) in members.iter() {
                    seen[k as usize] = true;
                }
                for (k, &hash) in hashes.iter().enumerate() {
                    window.index.prefetch_ahead(&hashes, k);
                    if !seen[k] {
                        if let Some(g) = window.index.get(hash, changed.key(k as u32)) {
                            members.push((k as u32, g));
                        }
                    }
                }
            }
            Some(changed)
        };
        let n = match &changed {
            Some(changed) => changed.len(),
            None => members[0].len(),
        };
        if n == 0 {
            return Ok(out);
        }
        let keys = match &changed {
            Some(changed) => self
                .keys
                .decode_bytes((0..n as u32).map(|k| changed.key(k)))?,
            None => self
                .keys
                .decode_bytes(members[0].iter().map(|&(_, g)| windows[0].index.key(g)))?,
        };
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
            let written: Vec<bool> = groups
                .iter()
                .map(|&g| window.flags[g as usize] & WRITTEN != 0)
                .collect();
            columns.push(Arc::new(BooleanArray::from(written)));
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
        // Keys of groups in windows that had closed: their records are deleted later,
        // unless the key is in a window again by then.
        let mut closed = GroupIndex::new();
        for (i, row) in rows.iter().enumerate() {
            let key = row.as_ref();
            let end = ends.value(i);
            let closed_before = self.window_end.is_some()
                && watermark.is_some_and(|wm| end.saturating_add(self.grace_ms) <= wm);
            if closed_before {
                closed.intern(hash_key(&self.hasher, key), key)?;
                continue;
            }
            let window = match self.windows.entry(end) {
                std::collections::btree_map::Entry::Occupied(w) => w.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => v.insert(Window::new(
                    &self.aggregates,
                    self.bounds.of_row(group_columns, i)?,
                )),
            };
            let (g, new) = window.index.intern(hash_key(&self.hasher, key), key)?;
            if new {
                window.states.push(&self.aggregates)?;
                window.flags.push(0);
                self.groups += 1;
            }
            window.states.restore(&self.aggregates, g, state, i)?;
            window.flags[g as usize] = if written.value(i) { WRITTEN } else { 0 };
        }
        if closed.len() > 0 {
            self.retired.push(closed);
        }
        if !self.superseded.is_empty() {
            // The old records are deleted with the next changes: every group goes into
            // the per-key records then, not only the ones the next batch touches.
            self.mark_all_changed();
        }
        Ok(())
    }
}
