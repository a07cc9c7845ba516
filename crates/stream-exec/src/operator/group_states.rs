//! `GroupStates`: the aggregates' state of many groups (one window's, or every open
//! session's), column by column, indexed by dense group numbers (a window's, of
//! [`super::key_groups::KeyGroups`], or session slots of
//! [`super::session_index::SessionIndex`]).
//!
//! The common aggregates whose DataFusion state is a few primitives (`COUNT`, `SUM`,
//! `MIN`, `MAX` of BIGINT or DOUBLE, `AVG`; see [`Kind`]) keep it in plain vectors and are
//! updated by one loop over a batch's rows. Their results and states are exactly what
//! DataFusion's accumulator for the same function gives: wrapping integer sums, a sum
//! that starts at 0 and adds each value in arrival order, `MIN`/`MAX` by total order, null
//! before any non-null input, `AVG` as sum / count. Every other aggregate keeps one
//! DataFusion `Accumulator` per group, fed with each group's rows of the batch.
//!
//! Results and states are read at any list of groups without consuming them: EMIT
//! CHANGES reads a window's touched groups after every batch. Two groups' states merge
//! as DataFusion's `merge_batch` would merge them (sessions that a record bridges), and a
//! group can be cleared for reuse.

use std::cmp::Ordering;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, ArrowPrimitiveType, AsArray, Float64Array, Int64Array, PrimitiveArray,
    UInt32Array, UInt64Array,
};
use datafusion::arrow::datatypes::{ArrowNativeType, FieldRef, Float64Type, Int64Type, UInt64Type};
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use super::aggregates::{Aggregates, BatchArgs, Fold, Kind};
use crate::error::Result;

/// A primitive that [`Kind::Int64`] and [`Kind::Float64`] fold.
trait Native: ArrowNativeType + Default {
    type Arrow: ArrowPrimitiveType<Native = Self>;
    /// `SUM`'s addition: wrapping for integers, as DataFusion's `add_wrapping`.
    fn add(self, other: Self) -> Self;
    /// `MIN`/`MAX`'s order: arrow's (total order for floats).
    fn order(&self, other: &Self) -> Ordering;
}

impl Native for i64 {
    type Arrow = Int64Type;
    fn add(self, other: Self) -> Self {
        self.wrapping_add(other)
    }
    fn order(&self, other: &Self) -> Ordering {
        self.cmp(other)
    }
}

impl Native for f64 {
    type Arrow = Float64Type;
    fn add(self, other: Self) -> Self {
        self + other
    }
    fn order(&self, other: &Self) -> Ordering {
        self.total_cmp(other)
    }
}

/// A `SUM`, `MIN` or `MAX` per group; `valid` is false until a non-null value came.
struct Folded<T> {
    fold: Fold,
    values: Vec<T>,
    valid: Vec<bool>,
}

impl<T: Native> Folded<T> {
    fn new(fold: Fold) -> Self {
        Self {
            fold,
            values: vec![],
            valid: vec![],
        }
    }

    fn heap_bytes(&self) -> usize {
        self.values.capacity() * size_of::<T>() + self.valid.capacity()
    }

    fn push(&mut self) {
        self.values.push(T::default());
        self.valid.push(false);
    }

    fn update(&mut self, arg: &dyn Array, rows: &[u32], groups: &[u32]) {
        let values: &[T] = arg.as_primitive::<T::Arrow>().values();
        let pairs = rows.iter().zip(groups);
        match arg.logical_nulls() {
            None => self.fold(values, pairs),
            Some(nulls) => self.fold(values, pairs.filter(|(r, _)| nulls.is_valid(**r as usize))),
        }
    }

    fn fold<'a>(&mut self, values: &[T], pairs: impl Iterator<Item = (&'a u32, &'a u32)>) {
        match self.fold {
            Fold::Sum => {
                for (&r, &g) in pairs {
                    let g = g as usize;
                    self.values[g] = self.values[g].add(values[r as usize]);
                    self.valid[g] = true;
                }
            }
            Fold::Min | Fold::Max => {
                let replace = if self.fold == Fold::Min {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                for (&r, &g) in pairs {
                    let (g, v) = (g as usize, values[r as usize]);
                    if !self.valid[g] || v.order(&self.values[g]) == replace {
                        self.values[g] = v;
                        self.valid[g] = true;
                    }
                }
            }
        }
    }

    /// Fold group `from`'s value, if any, into group `into`.
    fn merge(&mut self, into: usize, from: usize) {
        if self.valid[from] {
            let (value, into) = (self.values[from], into as u32);
            self.fold(&[value], std::iter::once((&0, &into)));
        }
    }

    fn clear(&mut self, g: usize) {
        self.values[g] = T::default();
        self.valid[g] = false;
    }

    fn array(&self, groups: &[u32]) -> ArrayRef {
        Arc::new(PrimitiveArray::<T::Arrow>::from_iter(groups.iter().map(
            |&g| {
                let g = g as usize;
                self.valid[g].then_some(self.values[g])
            },
        )))
    }

    fn restore(&mut self, g: u32, state: &dyn Array, row: usize) {
        let g = g as usize;
        self.valid[g] = state.is_valid(row);
        self.values[g] = if self.valid[g] {
            state.as_primitive::<T::Arrow>().value(row)
        } else {
            T::default()
        };
    }
}

/// One aggregate's state of every group.
enum Column {
    Count(Vec<i64>),
    Int64(Folded<i64>),
    Float64(Folded<f64>),
    Avg { count: Vec<u64>, sum: Folded<f64> },
    Accumulators(Vec<Box<dyn Accumulator>>),
}

/// Every aggregate's state of a window's groups. See the module docs.
pub(crate) struct GroupStates {
    columns: Vec<Column>,
}

impl GroupStates {
    /// No groups yet.
    pub(crate) fn new(aggregates: &Aggregates) -> Self {
        let columns = (0..aggregates.len())
            .map(|a| match aggregates.kind(a) {
                Kind::Count => Column::Count(vec![]),
                Kind::Int64(fold) => Column::Int64(Folded::new(fold)),
                Kind::Float64(fold) => Column::Float64(Folded::new(fold)),
                Kind::Avg => Column::Avg {
                    count: vec![],
                    sum: Folded::new(Fold::Sum),
                },
                Kind::Accumulator => Column::Accumulators(vec![]),
            })
            .collect();
        Self { columns }
    }

    /// The heap bytes it holds (allocated capacity; an accumulator's own estimate).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Count(counts) => counts.capacity() * size_of::<i64>(),
                Column::Int64(f) => f.heap_bytes(),
                Column::Float64(f) => f.heap_bytes(),
                Column::Avg { count, sum } => {
                    count.capacity() * size_of::<u64>() + sum.heap_bytes()
                }
                Column::Accumulators(accs) => {
                    accs.capacity() * size_of::<Box<dyn Accumulator>>()
                        + accs.iter().map(|a| a.size()).sum::<usize>()
                }
            })
            .sum()
    }

    /// Add a group with no input yet; it gets the next number.
    pub(crate) fn push(&mut self, aggregates: &Aggregates) -> Result<()> {
        for (a, column) in self.columns.iter_mut().enumerate() {
            match column {
                Column::Count(counts) => counts.push(0),
                Column::Int64(f) => f.push(),
                Column::Float64(f) => f.push(),
                Column::Avg { count, sum } => {
                    count.push(0);
                    sum.push();
                }
                Column::Accumulators(accs) => accs.push(aggregates.create_one(a)?),
            }
        }
        Ok(())
    }

    /// Fold group `from`'s state into group `into`'s (two sessions becoming one), as
    /// DataFusion's `merge_batch` of `from`'s state would; `from` is left to be cleared.
    pub(crate) fn merge(&mut self, aggregates: &Aggregates, into: u32, from: u32) -> Result<()> {
        let (into, from) = (into as usize, from as usize);
        for column in self.columns.iter_mut() {
            match column {
                Column::Count(counts) => counts[into] += counts[from],
                Column::Int64(f) => f.merge(into, from),
                Column::Float64(f) => f.merge(into, from),
                Column::Avg { count, sum } => {
                    count[into] += count[from];
                    sum.merge(into, from);
                }
                Column::Accumulators(accs) => {
                    let (into, from) = if into < from {
                        let (low, high) = accs.split_at_mut(from);
                        (&mut low[into], &mut high[0])
                    } else {
                        let (low, high) = accs.split_at_mut(into);
                        (&mut high[0], &mut low[from])
                    };
                    aggregates.merge_one(into, from)?;
                }
            }
        }
        Ok(())
    }

    /// Reset group `g` to no input, freeing what its state held, so its number can be
    /// given to a new group.
    pub(crate) fn clear(&mut self, aggregates: &Aggregates, g: u32) -> Result<()> {
        let g = g as usize;
        for (a, column) in self.columns.iter_mut().enumerate() {
            match column {
                Column::Count(counts) => counts[g] = 0,
                Column::Int64(f) => f.clear(g),
                Column::Float64(f) => f.clear(g),
                Column::Avg { count, sum } => {
                    count[g] = 0;
                    sum.clear(g);
                }
                Column::Accumulators(accs) => accs[g] = aggregates.create_one(a)?,
            }
        }
        Ok(())
    }

    /// Feed row `rows[i]` of the batch `args` came from to group `groups[i]`, for every
    /// `i`, in that order. The accumulators are fed by group number.
    pub(crate) fn update(
        &mut self,
        aggregates: &Aggregates,
        args: &BatchArgs,
        rows: &[u32],
        groups: &[u32],
    ) -> Result<()> {
        self.update_in(aggregates, args, rows, groups, false)
    }

    /// [`GroupStates::update`] for `rows` that come grouped (a group's rows one after
    /// another): the accumulators are fed group by group in that order, which matters
    /// when they are merged later (`LATEST_BY_OFFSET` stamps each update).
    pub(crate) fn update_grouped(
        &mut self,
        aggregates: &Aggregates,
        args: &BatchArgs,
        rows: &[u32],
        groups: &[u32],
    ) -> Result<()> {
        self.update_in(aggregates, args, rows, groups, true)
    }

    fn update_in(
        &mut self,
        aggregates: &Aggregates,
        args: &BatchArgs,
        rows: &[u32],
        groups: &[u32],
        grouped: bool,
    ) -> Result<()> {
        // Each group's rows in arrival order, for the accumulators; built once.
        let mut runs: Option<Vec<u32>> = None;
        for (a, column) in self.columns.iter_mut().enumerate() {
            let arg = aggregates.args(args, a).first().map(|a| a.as_ref());
            match (column, arg) {
                (Column::Count(counts), Some(arg)) => match arg.logical_nulls() {
                    None => groups.iter().for_each(|&g| counts[g as usize] += 1),
                    Some(nulls) => {
                        for (&r, &g) in rows.iter().zip(groups) {
                            counts[g as usize] += i64::from(nulls.is_valid(r as usize));
                        }
                    }
                },
                (Column::Int64(f), Some(arg)) => f.update(arg, rows, groups),
                (Column::Float64(f), Some(arg)) => f.update(arg, rows, groups),
                (Column::Avg { count, sum }, Some(arg)) => {
                    let nulls = arg.logical_nulls();
                    for (&r, &g) in rows.iter().zip(groups) {
                        let valid = nulls.as_ref().is_none_or(|n| n.is_valid(r as usize));
                        count[g as usize] += u64::from(valid);
                    }
                    sum.update(arg, rows, groups);
                }
                (Column::Accumulators(accs), _) => {
                    let order = runs.get_or_insert_with(|| {
                        let mut order: Vec<u32> = (0..rows.len() as u32).collect();
                        if !grouped {
                            order.sort_by_key(|&i| groups[i as usize]);
                        }
                        order
                    });
                    for run in order.chunk_by(|x, y| groups[*x as usize] == groups[*y as usize]) {
                        let g = groups[run[0] as usize] as usize;
                        let indices =
                            UInt32Array::from_iter_values(run.iter().map(|&i| rows[i as usize]));
                        aggregates.update_one(a, &mut accs[g], args, &indices)?;
                    }
                }
                _ => {
                    return Err(crate::error::ExecError::internal(
                        "WindowAggregate",
                        "an aggregate without its argument",
                    ))
                }
            }
        }
        Ok(())
    }

    /// The current results of `groups`, one column per aggregate, typed as `fields`.
    pub(crate) fn evaluate(
        &mut self,
        aggregates: &Aggregates,
        groups: &[u32],
        fields: &[FieldRef],
    ) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(self.columns.len());
        for (column, field) in self.columns.iter_mut().zip(fields) {
            out.push(match column {
                Column::Count(counts) => Arc::new(Int64Array::from_iter_values(
                    groups.iter().map(|&g| counts[g as usize]),
                )) as ArrayRef,
                Column::Int64(f) => f.array(groups),
                Column::Float64(f) => f.array(groups),
                Column::Avg { count, sum } => {
                    Arc::new(Float64Array::from_iter(groups.iter().map(|&g| {
                        let g = g as usize;
                        // As DataFusion's AvgAccumulator: null without a value.
                        (count[g] != 0 && sum.valid[g]).then(|| sum.values[g] / count[g] as f64)
                    })))
                }
                Column::Accumulators(accs) => {
                    let values = groups
                        .iter()
                        .map(|&g| accs[g as usize].evaluate())
                        .collect::<datafusion::error::Result<Vec<ScalarValue>>>()
                        .map_err(crate::error::ExecError::eval("WindowAggregate"))?;
                    aggregates.column(values, field)?
                }
            });
        }
        Ok(out)
    }

    /// The intermediate states of `groups`, laid out as [`Aggregates::state_fields`]
    /// (`fields`): DataFusion's `Accumulator::state` of each aggregate.
    pub(crate) fn checkpoint(
        &mut self,
        aggregates: &Aggregates,
        groups: &[u32],
        fields: &[FieldRef],
    ) -> Result<Vec<ArrayRef>> {
        let mut out = Vec::with_capacity(fields.len());
        for (a, column) in self.columns.iter_mut().enumerate() {
            match column {
                Column::Count(counts) => out.push(Arc::new(Int64Array::from_iter_values(
                    groups.iter().map(|&g| counts[g as usize]),
                )) as ArrayRef),
                Column::Int64(f) => out.push(f.array(groups)),
                Column::Float64(f) => out.push(f.array(groups)),
                Column::Avg { count, sum } => {
                    out.push(Arc::new(UInt64Array::from_iter_values(
                        groups.iter().map(|&g| count[g as usize]),
                    )));
                    out.push(sum.array(groups));
                }
                Column::Accumulators(accs) => {
                    let width = aggregates.state_width(a);
                    let mut values = vec![Vec::with_capacity(groups.len()); width];
                    for &g in groups {
                        let state = aggregates.checkpoint_one(a, &mut accs[g as usize])?;
                        for (column, v) in values.iter_mut().zip(state) {
                            column.push(v);
                        }
                    }
                    for column in values {
                        out.push(aggregates.column(column, &fields[out.len()])?);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Set group `g`'s state from row `row` of `state`, columns laid out as
    /// [`GroupStates::checkpoint`] writes them.
    pub(crate) fn restore(
        &mut self,
        aggregates: &Aggregates,
        g: u32,
        state: &[ArrayRef],
        row: usize,
    ) -> Result<()> {
        let mut at = 0;
        for (a, column) in self.columns.iter_mut().enumerate() {
            let width = aggregates.state_width(a);
            let cols = &state[at..at + width];
            at += width;
            match column {
                Column::Count(counts) => {
                    counts[g as usize] = value::<Int64Type>(&cols[0], row).unwrap_or(0)
                }
                Column::Int64(f) => f.restore(g, cols[0].as_ref(), row),
                Column::Float64(f) => f.restore(g, cols[0].as_ref(), row),
                Column::Avg { count, sum } => {
                    count[g as usize] = value::<UInt64Type>(&cols[0], row).unwrap_or(0);
                    sum.restore(g, cols[1].as_ref(), row);
                }
                Column::Accumulators(accs) => {
                    accs[g as usize] = aggregates.restore_one(a, cols, row)?
                }
            }
        }
        Ok(())
    }
}

/// Row `row` of a primitive column, `None` when null.
fn value<T: ArrowPrimitiveType>(column: &ArrayRef, row: usize) -> Option<T::Native> {
    column
        .is_valid(row)
        .then(|| column.as_primitive::<T>().value(row))
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::RecordBatch;
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::common::DFSchema;
    use datafusion::functions_aggregate::count::count_all;
    use datafusion::functions_aggregate::expr_fn::{avg, count, max, min, stddev, sum};
    use datafusion::logical_expr::{cast, col, Expr};

    use super::*;

    /// Columns `i` (BIGINT) and `f` (DOUBLE), and every fast aggregate over them, then
    /// `last`.
    fn fast_aggregates(last: Expr) -> (Schema, Vec<Expr>, Aggregates) {
        let schema = Schema::new(vec![
            Field::new("i", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
        ]);
        let input = DFSchema::try_from(schema.clone()).unwrap();
        let exprs: Vec<Expr> = vec![
            count_all(),
            count(col("i")),
            sum(col("i")),
            min(col("i")),
            max(col("i")),
            sum(col("f")),
            min(col("f")),
            max(col("f")),
            avg(col("f")),
            last,
        ];
        let aggregates = Aggregates::new(&exprs, &input, "test").unwrap();
        (schema, exprs, aggregates)
    }

    /// A batch of `fast_aggregates`' schema.
    fn ints_and_floats(
        schema: Schema,
        ints: &[Option<i64>],
        floats: &[Option<f64>],
    ) -> RecordBatch {
        RecordBatch::try_new(
            Arc::new(schema),
            vec![
                Arc::new(Int64Array::from(ints.to_vec())) as ArrayRef,
                Arc::new(Float64Array::from(floats.to_vec())),
            ],
        )
        .unwrap()
    }

    /// The fast states give DataFusion's accumulators' results and states exactly.
    #[test]
    fn fast_states_match_datafusion_accumulators() {
        let (schema, exprs, aggregates) = fast_aggregates(avg(cast(col("i"), DataType::Float64)));
        let kinds: Vec<Kind> = (0..exprs.len()).map(|a| aggregates.kind(a)).collect();
        assert!(!kinds.contains(&Kind::Accumulator), "{kinds:?}");
        let ints = [
            Some(3),
            None,
            Some(i64::MAX),
            Some(5),
            Some(-7),
            None,
            Some(i64::MIN),
            Some(0),
        ];
        let floats = [
            Some(1.5),
            Some(-0.0),
            None,
            Some(f64::NAN),
            Some(-2.25),
            Some(0.0),
            None,
            Some(f64::INFINITY),
        ];
        let batch = ints_and_floats(schema, &ints, &floats);
        let args = aggregates.evaluate_args(&batch).unwrap();
        // Four groups; group 3 gets no rows, group 2 only nulls and one value.
        let rows: Vec<u32> = (0..8).collect();
        let groups = [0, 1, 0, 1, 0, 2, 1, 0];
        let mut states = GroupStates::new(&aggregates);
        for _ in 0..4 {
            states.push(&aggregates).unwrap();
        }
        // In two batches, to check state carries over.
        states
            .update(&aggregates, &args, &rows[..5], &groups[..5])
            .unwrap();
        states
            .update(&aggregates, &args, &rows[5..], &groups[5..])
            .unwrap();
        let fields: Vec<FieldRef> = (0..exprs.len())
            .map(|a| Arc::new(Field::new(format!("a{a}"), DataType::Null, true)))
            .collect();
        let all = [0, 1, 2, 3, 2];
        let results = states.evaluate(&aggregates, &all, &fields).unwrap();
        let state_fields = aggregates.state_fields().unwrap();
        let checkpoint = states.checkpoint(&aggregates, &all, &state_fields).unwrap();
        for (i, &g) in all.iter().enumerate() {
            let mut column = 0;
            for (a, result) in results.iter().enumerate() {
                let mut acc = aggregates.create_one(a).unwrap();
                let mine: Vec<u32> = rows
                    .iter()
                    .copied()
                    .filter(|&r| groups[r as usize] == g)
                    .collect();
                if !mine.is_empty() {
                    aggregates
                        .update_one(a, &mut acc, &args, &UInt32Array::from(mine))
                        .unwrap();
                }
                let expected = acc.evaluate().unwrap();
                let got = ScalarValue::try_from_array(result, i).unwrap();
                assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{a} {g}");
                for expected in acc.state().unwrap() {
                    let got = ScalarValue::try_from_array(&checkpoint[column], i).unwrap();
                    assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{a} {g}");
                    column += 1;
                }
            }
        }
        // Restoring a checkpoint gives the same results.
        let mut restored = GroupStates::new(&aggregates);
        for (i, _) in all.iter().enumerate() {
            restored.push(&aggregates).unwrap();
            restored
                .restore(&aggregates, i as u32, &checkpoint, i)
                .unwrap();
        }
        let again = restored
            .evaluate(&aggregates, &[0, 1, 2, 3, 4], &fields)
            .unwrap();
        for (a, b) in results.iter().zip(&again) {
            assert_eq!(format!("{a:?}"), format!("{b:?}"));
        }
    }

    /// Merging two groups' fast states (two sessions becoming one) gives what DataFusion's
    /// accumulators give after `merge_batch`, results and states; a cleared group is new.
    #[test]
    fn merged_fast_states_match_datafusion_merged_accumulators() {
        let (schema, exprs, aggregates) = fast_aggregates(stddev(col("f")));
        assert_eq!(aggregates.kind(9), Kind::Accumulator);
        let ints = [Some(3), None, Some(i64::MAX), Some(-7), Some(2), None];
        let floats = [
            Some(1.5),
            None,
            Some(-0.0),
            Some(2.25),
            None,
            Some(f64::NAN),
        ];
        let batch = ints_and_floats(schema, &ints, &floats);
        let args = aggregates.evaluate_args(&batch).unwrap();
        // Pairs (into, from) with rows in both, only in `from`, only in `into`, in neither.
        let rows: Vec<u32> = (0..6).collect();
        let groups = [0, 1, 0, 1, 3, 5];
        let pairs = [(0, 1), (2, 3), (5, 4), (6, 7)];
        let mut states = GroupStates::new(&aggregates);
        for _ in 0..8 {
            states.push(&aggregates).unwrap();
        }
        states.update(&aggregates, &args, &rows, &groups).unwrap();
        for &(into, from) in &pairs {
            states.merge(&aggregates, into, from).unwrap();
        }
        let fields: Vec<FieldRef> = (0..exprs.len())
            .map(|a| Arc::new(Field::new(format!("a{a}"), DataType::Null, true)))
            .collect();
        // The accumulator's results are built as its type; the fast ones ignore it.
        let mut fields = fields;
        fields[9] = Arc::new(Field::new("a9", DataType::Float64, true));
        let into: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let results = states.evaluate(&aggregates, &into, &fields).unwrap();
        let state_fields = aggregates.state_fields().unwrap();
        let checkpoint = states
            .checkpoint(&aggregates, &into, &state_fields)
            .unwrap();
        let accumulator = |a: usize, g: u32| {
            let mut acc = aggregates.create_one(a).unwrap();
            let mine: Vec<u32> = rows
                .iter()
                .copied()
                .filter(|&r| groups[r as usize] == g)
                .collect();
            if !mine.is_empty() {
                aggregates
                    .update_one(a, &mut acc, &args, &UInt32Array::from(mine))
                    .unwrap();
            }
            acc
        };
        for (i, &(into, from)) in pairs.iter().enumerate() {
            let mut column = 0;
            for (a, result) in results.iter().enumerate() {
                let mut acc = accumulator(a, into);
                aggregates
                    .merge_one(&mut acc, &mut accumulator(a, from))
                    .unwrap();
                let expected = acc.evaluate().unwrap();
                let got = ScalarValue::try_from_array(result, i).unwrap();
                assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{a} {into}");
                for expected in acc.state().unwrap() {
                    let got = ScalarValue::try_from_array(&checkpoint[column], i).unwrap();
                    assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{a} {into}");
                    column += 1;
                }
            }
        }
        states.clear(&aggregates, 0).unwrap();
        let cleared = states.evaluate(&aggregates, &[0], &fields).unwrap();
        for (a, result) in cleared.iter().enumerate() {
            let expected = aggregates.create_one(a).unwrap().evaluate().unwrap();
            let got = ScalarValue::try_from_array(result, 0).unwrap();
            assert_eq!(format!("{got:?}"), format!("{expected:?}"), "{a}");
        }
    }
}
