//! `SessionAggregateOperator`: keyed aggregation per session window.
//!
//! A session holds a key's records whose gaps are at most the gap; its bounds are its
//! first and last record times. Per key the operator keeps its open sessions, sorted by
//! start and more than a gap apart. A batch's rows are sorted by time per key and cut
//! into runs no wider than the gap; each run joins every session within a gap of it, so a
//! record that bridges two sessions merges them (their accumulators merge through
//! `state` / `merge_batch`).
//!
//! With `EMIT CHANGES`, every session whose bounds or values changed is written after the
//! batch; the row it had been written as before, and every session merged away, get a
//! tombstone first. HAVING is applied here: a row that fails it is not written, and a
//! session whose written row stops passing gets a tombstone, so only written rows are
//! ever deleted. With `EMIT FINAL`, a session is written once, when the watermark passes
//! its last record time plus gap plus grace. A closed session's state is dropped.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::OwnedRow;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::PhysicalExpr;
use sluice_sql_planner::window::{WINDOWEND, WINDOWSTART, WINDOW_END, WINDOW_START};
use sluice_sql_planner::{Emit, StreamOperator, WindowKind};

use super::aggregates::{changes, Accumulators, Aggregates, BatchArgs, GroupKeys, Having, Outcome};
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

/// A row as last written: its bounds and aggregate values.
struct Written {
    bounds: (i64, i64),
    values: Vec<ScalarValue>,
}

struct Session {
    start: i64,
    last: i64,
    accumulators: Accumulators,
    /// The row this session was last written as (EMIT CHANGES).
    emitted: Option<Written>,
    /// Changed since last written.
    dirty: bool,
    /// Rows of the current batch that joined this session, not yet aggregated: they are
    /// fed in arrival order once the batch's merges are known, so order-sensitive
    /// aggregates (LATEST_BY_OFFSET, COLLECT_LIST) do not depend on batch boundaries.
    batch_rows: Vec<u32>,
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
    grace_ms: i64,
    emit: Emit,
    /// Open sessions per key, sorted by start.
    sessions: HashMap<OwnedRow, Vec<Session>>,
    session_count: usize,
    /// Every open session as (close time, key, start), in closing order.
    by_close: BTreeSet<(i64, OwnedRow, i64)>,
    having: Option<Having>,
    /// Keys whose sessions changed since their state was last taken.
    dirty: HashSet<OwnedRow>,
    /// State rows, one per open session: the key columns, start, last, the aggregates'
    /// states, and the bounds and values it was last written with.
    codec: StateCodec,
    key_names: Vec<String>,
}

/// One output row to build: a key's session bounds, live or deleted.
struct Pending {
    key: OwnedRow,
    bounds: (i64, i64),
    kind: PendingKind,
}

enum PendingKind {
    /// The current values of the session starting at this time.
    Live(i64),
    /// A tombstone of a row that was written, with the values it was written with.
    Tombstone(Vec<ScalarValue>),
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
        Ok(Self {
            keys,
            time_expr,
            columns,
            aggregates,
            aggregate_fields,
            dirty: HashSet::new(),
            codec: StateCodec::new(Arc::new(Schema::new(state_fields)))?,
            key_names,
            schema: Arc::new(output.as_arrow().clone()),
            gap_ms,
            grace_ms: window.grace_ms,
            emit: *emit,
            sessions: HashMap::new(),
            session_count: 0,
            by_close: BTreeSet::new(),
            having: having
                .as_ref()
                .map(|h| Having::new(h, output, NAME))
                .transpose()?,
        })
    }

    fn close_time(&self, last: i64) -> i64 {
        last.saturating_add(self.gap_ms)
            .saturating_add(self.grace_ms)
    }

    /// Add the rows `indices` (sorted by time, at most a gap apart, from `first` to
    /// `last`) of one key to its sessions, merging those within a gap. Rows written before
    /// and no longer live go to `tombstones`.
    fn add_run(
        &mut self,
        key: &OwnedRow,
        (first, last): (i64, i64),
        indices: Vec<u32>,
        tombstones: &mut Vec<Pending>,
    ) -> Result<()> {
        let gap = self.gap_ms;
        self.dirty.insert(key.clone());
        let list = self.sessions.entry(key.clone()).or_default();
        // Sessions within a gap of [first, last]: a contiguous range of the sorted list.
        let lo = list.partition_point(|s| s.last.saturating_add(gap) < first);
        let hi = list.partition_point(|s| s.start.saturating_sub(gap) <= last);
        let merged: Vec<Session> = list.drain(lo..hi.max(lo)).collect();
        for s in &merged {
            let close = self.close_time(s.last);
            self.by_close.remove(&(close, key.clone(), s.start));
        }
        let mut merged = merged.into_iter();
        let mut session = match merged.next() {
            None => {
                self.session_count += 1;
                Session {
                    start: first,
                    last,
                    accumulators: self.aggregates.create()?,
                    emitted: None,
                    dirty: true,
                    batch_rows: vec![],
                }
            }
            Some(mut base) => {
                for mut other in merged {
                    self.session_count -= 1;
                    self.aggregates
                        .merge(&mut base.accumulators, &mut other.accumulators)?;
                    base.start = base.start.min(other.start);
                    base.last = base.last.max(other.last);
                    base.batch_rows.append(&mut other.batch_rows);
                    if let Some(w) = other.emitted {
                        tombstones.push(Pending {
                            key: key.clone(),
                            bounds: w.bounds,
                            kind: PendingKind::Tombstone(w.values),
                        });
                    }
                }
                base.start = base.start.min(first);
                base.last = base.last.max(last);
                base
            }
        };
        session.batch_rows.extend(indices);
        session.dirty = true;
        if let Some(w) = session.emitted.take() {
            if w.bounds == (session.start, session.last) {
                session.emitted = Some(w);
            } else {
                tombstones.push(Pending {
                    key: key.clone(),
                    bounds: w.bounds,
                    kind: PendingKind::Tombstone(w.values),
                });
            }
        }
        let close = self.close_time(session.last);
        self.by_close.insert((close, key.clone(), session.start));
        let list = self.sessions.entry(key.clone()).or_default();
        list.insert(lo, session);
        Ok(())
    }

    /// Feed each of `key`'s sessions the batch rows that joined it, in arrival order.
    fn aggregate_batch_rows(&mut self, key: &OwnedRow, args: &BatchArgs) -> Result<()> {
        let Some(list) = self.sessions.get_mut(key) else {
            return Ok(());
        };
        for s in list.iter_mut().filter(|s| !s.batch_rows.is_empty()) {
            let mut rows = std::mem::take(&mut s.batch_rows);
            rows.sort_unstable();
            self.aggregates
                .update(&mut s.accumulators, args, &UInt32Array::from(rows))?;
        }
        Ok(())
    }

    /// Build the output rows for `pending`, in order.
    fn build(&mut self, pending: &[Pending]) -> Result<Option<ChangeBatch>> {
        if pending.is_empty() {
            return Ok(None);
        }
        let keys = self.keys.decode(pending.iter().map(|p| p.key.row()))?;
        let starts: Vec<i64> = pending.iter().map(|p| p.bounds.0).collect();
        let ends: Vec<i64> = pending.iter().map(|p| p.bounds.1).collect();
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
        let mut values = vec![Vec::with_capacity(pending.len()); self.aggregates.len()];
        let mut live_values = Vec::with_capacity(pending.len());
        for p in pending {
            let row = match &p.kind {
                PendingKind::Live(start) => {
                    let session = session_mut(&mut self.sessions, &p.key, *start)?;
                    let row = self.aggregates.evaluate_row(&mut session.accumulators)?;
                    live_values.push(Some(row.clone()));
                    row
                }
                PendingKind::Tombstone(old) => {
                    live_values.push(None);
                    old.clone()
                }
            };
            for (column, v) in values.iter_mut().zip(row) {
                column.push(v);
            }
        }
        columns.extend(self.aggregates.columns(values, &self.aggregate_fields)?);
        let rows = RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building session results"))?;
        let passes = match &self.having {
            Some(h) => h.passes(&rows)?,
            None => vec![true; rows.num_rows()],
        };
        // Remember what was written, so a later change can delete exactly that row.
        let remember = self.emit == Emit::Changes;
        let mut outcomes = Vec::with_capacity(pending.len());
        for ((p, pass), row) in pending.iter().zip(passes).zip(live_values) {
            let outcome = match (&p.kind, row) {
                (PendingKind::Tombstone(_), _) => Outcome::Tombstone,
                (PendingKind::Live(start), Some(values)) => {
                    let session = session_mut(&mut self.sessions, &p.key, *start)?;
                    if pass {
                        if remember {
                            session.emitted = Some(Written {
                                bounds: p.bounds,
                                values,
                            });
                        }
                        Outcome::Row
                    } else if session.emitted.take().is_some() {
                        Outcome::Tombstone
                    } else {
                        Outcome::Dropped
                    }
                }
                (PendingKind::Live(_), None) => Outcome::Dropped,
            };
            outcomes.push(outcome);
        }
        changes(rows, &outcomes)
    }
}

/// The open session of `key` starting at `start`.
fn session_mut<'a>(
    sessions: &'a mut HashMap<OwnedRow, Vec<Session>>,
    key: &OwnedRow,
    start: i64,
) -> Result<&'a mut Session> {
    sessions
        .get_mut(key)
        .and_then(|l| l.iter_mut().find(|s| s.start == start))
        .ok_or_else(|| ExecError::internal(NAME, "emitting a session that is gone"))
}

impl Operator for SessionAggregateOperator {
    fn name(&self) -> &'static str {
        NAME
    }

    fn process(&mut self, batch: ChangeBatch) -> Result<Option<ChangeBatch>> {
        let batch = batch.rows;
        let times = self
            .time_expr
            .evaluate(&batch)
            .and_then(|v| v.into_array(batch.num_rows()))
            .map_err(ExecError::eval(NAME))?;
        let times = times.as_primitive::<Int64Type>();
        let keys = self.keys.evaluate(&batch)?;
        let order = keys.groups();
        let args = self.aggregates.evaluate_args(&batch)?;
        let mut tombstones = vec![];
        let mut touched = Vec::with_capacity(order.len());
        for (row, mut indices) in order {
            let key = row.owned();
            indices.sort_by_key(|&i| times.value(i as usize));
            // Runs of rows at most a gap apart.
            let mut run: Vec<u32> = vec![];
            let (mut first, mut prev) = (0i64, 0i64);
            for i in indices {
                let t = times.value(i as usize);
                if !run.is_empty() && t.saturating_sub(prev) > self.gap_ms {
                    let done = std::mem::take(&mut run);
                    self.add_run(&key, (first, prev), done, &mut tombstones)?;
                }
                if run.is_empty() {
                    first = t;
                }
                prev = t;
                run.push(i);
            }
            if !run.is_empty() {
                self.add_run(&key, (first, prev), run, &mut tombstones)?;
            }
            self.aggregate_batch_rows(&key, &args)?;
            touched.push(key);
        }
        if self.emit == Emit::Final {
            return Ok(None);
        }
        let mut pending = tombstones;
        for key in touched {
            if let Some(list) = self.sessions.get_mut(&key) {
                for s in list.iter_mut() {
                    if s.dirty {
                        s.dirty = false;
                        pending.push(Pending {
                            key: key.clone(),
                            bounds: (s.start, s.last),
                            kind: PendingKind::Live(s.start),
                        });
                    }
                }
            }
        }
        self.build(&pending)
    }

    fn advance_watermark(&mut self, watermark_ms: i64) -> Result<Option<ChangeBatch>> {
        let mut closed: Vec<(OwnedRow, i64)> = vec![];
        // A session is closed once the watermark passes last + gap + grace; the end of
        // the stream (i64::MAX) closes every session, even one whose close time saturated.
        while let Some((close, _, _)) = self.by_close.first() {
            if *close >= watermark_ms && watermark_ms != i64::MAX {
                break;
            }
            if let Some((_, key, start)) = self.by_close.pop_first() {
                closed.push((key, start));
            }
        }
        let out = match self.emit {
            Emit::Final => {
                let pending: Vec<Pending> = closed
                    .iter()
                    .filter_map(|(key, start)| {
                        let s = self.sessions.get(key)?.iter().find(|s| s.start == *start)?;
                        Some(Pending {
                            key: key.clone(),
                            bounds: (s.start, s.last),
                            kind: PendingKind::Live(s.start),
                        })
                    })
                    .collect();
                self.build(&pending)?
            }
            Emit::Changes => None,
        };
        for (key, start) in closed {
            if let Some(list) = self.sessions.get_mut(&key) {
                list.retain(|s| s.start != start);
                self.session_count -= 1;
                if list.is_empty() {
                    self.sessions.remove(&key);
                }
            }
            self.dirty.insert(key);
        }
        Ok(out)
    }

    fn state_groups(&self) -> usize {
        self.session_count
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
        let changelog_keys = json_keys(&key_columns, &self.key_names, keys.len())?;
        // One record per key holding all its open sessions; no sessions: deleted.
        let n_states = self.codec.schema().fields().len()
            - key_columns.len()
            - 4
            - self.aggregate_fields.len();
        let mut take_keys = vec![];
        let (mut starts, mut lasts) = (vec![], vec![]);
        let mut states = vec![vec![]; n_states];
        let (mut written_starts, mut written_lasts) = (vec![], vec![]);
        let mut written = vec![vec![]; self.aggregate_fields.len()];
        let mut ranges: Vec<Option<(usize, usize)>> = vec![None; keys.len()];
        for (k, key) in keys.iter().enumerate() {
            let Some(list) = self.sessions.get_mut(key).filter(|l| !l.is_empty()) else {
                continue;
            };
            ranges[k] = Some((starts.len(), list.len()));
            for session in list.iter_mut() {
                take_keys.push(k as u32);
                starts.push(session.start);
                lasts.push(session.last);
                for (column, v) in states
                    .iter_mut()
                    .zip(self.aggregates.checkpoint(&mut session.accumulators)?)
                {
                    column.push(v);
                }
                written_starts.push(session.emitted.as_ref().map(|w| w.bounds.0));
                written_lasts.push(session.emitted.as_ref().map(|w| w.bounds.1));
                for (i, column) in written.iter_mut().enumerate() {
                    column.push(
                        session
                            .emitted
                            .as_ref()
                            .map_or(ScalarValue::Null, |w| w.values[i].clone()),
                    );
                }
            }
        }
        let mut values: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        if !starts.is_empty() {
            let indices = UInt32Array::from(take_keys);
            let mut columns: Vec<ArrayRef> = key_columns
                .iter()
                .map(|c| datafusion::arrow::compute::take(c, &indices, None))
                .collect::<std::result::Result<_, _>>()
                .map_err(ExecError::arrow("selecting state keys"))?;
            columns.push(Arc::new(Int64Array::from(starts)));
            columns.push(Arc::new(Int64Array::from(lasts)));
            let fields = self.codec.schema().fields().clone();
            let first_state = key_columns.len() + 2;
            columns.extend(
                self.aggregates
                    .columns(states, &fields[first_state..first_state + n_states])?,
            );
            columns.push(Arc::new(Int64Array::from(written_starts)));
            columns.push(Arc::new(Int64Array::from(written_lasts)));
            columns.extend(
                self.aggregates
                    .columns(written, &fields[first_state + n_states + 2..])?,
            );
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
        Ok(changelog_keys
            .into_iter()
            .zip(values)
            .map(|(key, value)| StateChange { key, value })
            .collect())
    }

    fn restore_state(&mut self, values: &[&[u8]]) -> Result<()> {
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
        let written = &batch.columns()[n_keys + 4 + n_states..];
        for (i, row) in rows.iter().enumerate() {
            let key = row.owned();
            let emitted = if written_starts.is_valid(i) {
                Some(Written {
                    bounds: (written_starts.value(i), written_lasts.value(i)),
                    values: written
                        .iter()
                        .map(|c| ScalarValue::try_from_array(c, i))
                        .collect::<datafusion::error::Result<_>>()
                        .map_err(ExecError::eval(NAME))?,
                })
            } else {
                None
            };
            let session = Session {
                start: starts.value(i),
                last: lasts.value(i),
                accumulators: self.aggregates.restore(state, i)?,
                emitted,
                dirty: false,
                batch_rows: vec![],
            };
            let close = self.close_time(session.last);
            self.by_close.insert((close, key.clone(), session.start));
            let list = self.sessions.entry(key).or_default();
            let at = list.partition_point(|s| s.start < session.start);
            list.insert(at, session);
            self.session_count += 1;
        }
        Ok(())
    }
}
