//! What `WindowAggregate` and `SessionAggregate` share: [`GroupKeys`], the GROUP BY
//! values of a batch in arrow's row format, and [`Aggregates`], the aggregate functions:
//! their arguments evaluated over a batch, the [`Kind`] of state each keeps (see
//! [`super::group_states`]), and DataFusion accumulators created per group, fed with a
//! group's rows of a batch, evaluated into result columns, and merged when sessions merge.

use std::sync::Arc;

use datafusion::arrow::array::{
    new_empty_array, Array, ArrayRef, AsArray, BooleanArray, RecordBatch, UInt32Array,
};
use datafusion::arrow::compute::{cast, take};
use datafusion::arrow::datatypes::{DataType, FieldRef};
use datafusion::arrow::row::{Row, RowConverter, Rows, SortField};
use datafusion::common::{DFSchema, ScalarValue};
use datafusion::logical_expr::execution_props::ExecutionProps;
use datafusion::logical_expr::{Accumulator, Expr};
use datafusion::physical_expr::aggregate::{AggregateFunctionExpr, LoweredAggregateBuilder};
use datafusion::physical_expr::PhysicalExpr;

use super::ChangeBatch;
use crate::error::{ExecError, Result};

/// Group key expressions and their row encoding.
pub(crate) struct GroupKeys {
    exprs: Vec<Arc<dyn PhysicalExpr>>,
    types: Vec<DataType>,
    converter: RowConverter,
    operator: &'static str,
}

/// A batch's group keys: the evaluated key columns and their encoded rows.
pub(crate) struct BatchKeys {
    /// The key columns, one per key expression.
    pub(crate) columns: Vec<ArrayRef>,
    /// The same, one encoded row per batch row.
    pub(crate) rows: Rows,
}

impl GroupKeys {
    /// Encode `exprs` (over `input`) for `operator`.
    pub(crate) fn new(
        exprs: Vec<Arc<dyn PhysicalExpr>>,
        input: &DFSchema,
        operator: &'static str,
    ) -> Result<Self> {
        let types = exprs
            .iter()
            .map(|e| {
                e.data_type(input.as_arrow())
                    .map_err(ExecError::eval(operator))
            })
            .collect::<Result<Vec<_>>>()?;
        let fields = types.iter().cloned().map(SortField::new).collect();
        let converter =
            RowConverter::new(fields).map_err(ExecError::arrow("encoding group keys"))?;
        Ok(Self {
            exprs,
            types,
            converter,
            operator,
        })
    }

    /// Evaluate and encode the keys of `batch`.
    pub(crate) fn evaluate(&self, batch: &RecordBatch) -> Result<BatchKeys> {
        let n = batch.num_rows();
        let columns = self
            .exprs
            .iter()
            .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(self.operator))?;
        let rows = self
            .converter
            .convert_columns(&columns)
            .map_err(ExecError::arrow("encoding group keys"))?;
        Ok(BatchKeys { columns, rows })
    }

    /// The types of the key columns.
    pub(crate) fn types(&self) -> &[DataType] {
        &self.types
    }

    /// Encode key columns (as [`GroupKeys::decode`] returns them).
    pub(crate) fn encode(&self, columns: &[ArrayRef]) -> Result<Rows> {
        self.converter
            .convert_columns(columns)
            .map_err(ExecError::arrow("encoding group keys"))
    }

    /// The key columns of `keys`, in that order.
    pub(crate) fn decode<'a>(
        &self,
        keys: impl IntoIterator<Item = Row<'a>>,
    ) -> Result<Vec<ArrayRef>> {
        self.converter
            .convert_rows(keys)
            .map_err(ExecError::arrow("decoding group keys"))
    }

    /// The key columns of encoded rows held as bytes (as `Row::as_ref` gives them).
    pub(crate) fn decode_bytes<'a>(
        &self,
        keys: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<ArrayRef>> {
        let parser = self.converter.parser();
        self.decode(keys.into_iter().map(|k| parser.parse(k)))
    }
}

/// HAVING, evaluated over an aggregation's result rows.
pub(crate) struct Having {
    predicate: Arc<dyn PhysicalExpr>,
    operator: &'static str,
}

impl Having {
    /// `predicate` over the aggregation's `output` schema.
    pub(crate) fn new(predicate: &Expr, output: &DFSchema, operator: &'static str) -> Result<Self> {
        Ok(Self {
            predicate: super::physical(predicate, output, operator)?,
            operator,
        })
    }

    /// Whether each row of `rows` passes; null fails.
    pub(crate) fn passes(&self, rows: &RecordBatch) -> Result<Vec<bool>> {
        let mask = self
            .predicate
            .evaluate(rows)
            .and_then(|v| v.into_array(rows.num_rows()))
            .map_err(ExecError::eval(self.operator))?;
        let mask = mask.as_boolean();
        Ok((0..mask.len())
            .map(|i| mask.is_valid(i) && mask.value(i))
            .collect())
    }
}

/// What becomes of one result row after HAVING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Written as a row.
    Row,
    /// Written as a tombstone of its key.
    Tombstone,
    /// Not written.
    Dropped,
}

/// The rows of `rows` that are written, as a [`ChangeBatch`]; `None` when none are.
pub(crate) fn changes(rows: RecordBatch, outcomes: &[Outcome]) -> Result<Option<ChangeBatch>> {
    let keep = BooleanArray::from_iter(outcomes.iter().map(|o| Some(*o != Outcome::Dropped)));
    let all = outcomes.iter().all(|o| *o != Outcome::Dropped);
    let rows = if all {
        rows
    } else {
        datafusion::arrow::compute::filter_record_batch(&rows, &keep)
            .map_err(ExecError::arrow("selecting result rows"))?
    };
    if rows.num_rows() == 0 {
        return Ok(None);
    }
    let tombstones = outcomes.contains(&Outcome::Tombstone).then(|| {
        BooleanArray::from_iter(
            outcomes
                .iter()
                .filter(|o| **o != Outcome::Dropped)
                .map(|o| Some(*o == Outcome::Tombstone)),
        )
    });
    Ok(Some(ChangeBatch {
        rows,
        tombstones,
        windows: None,
    }))
}

struct Aggregate {
    function: Arc<AggregateFunctionExpr>,
    args: Vec<Arc<dyn PhysicalExpr>>,
    filter: Option<Arc<dyn PhysicalExpr>>,
    kind: Kind,
    /// Number of intermediate state fields.
    state_width: usize,
}

/// How a group's state of one aggregate is kept (see [`super::group_states`]): as a few
/// primitives for the common aggregates whose DataFusion state is just that, or else as
/// DataFusion's own `Accumulator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `COUNT(x)` or `COUNT(*)`: state `[count: Int64]`.
    Count,
    /// `SUM`, `MIN` or `MAX` of a BIGINT: state `[value: Int64]`, null before any input.
    Int64(Fold),
    /// `SUM`, `MIN` or `MAX` of a DOUBLE: state `[value: Float64]`, null before any input.
    Float64(Fold),
    /// `AVG` of a DOUBLE (or of an integer, cast to DOUBLE by the planner): state
    /// `[count: UInt64, sum: Float64]`.
    Avg,
    /// Anything else: a DataFusion `Accumulator` per group.
    Accumulator,
}

/// How [`Kind::Int64`] and [`Kind::Float64`] fold a value into the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fold {
    Sum,
    Min,
    Max,
}

/// The [`Kind`] of `function`, checked against the types DataFusion gives its arguments,
/// result and state, so a fast state is only used where it holds exactly DataFusion's.
fn kind(
    function: &AggregateFunctionExpr,
    args: &[Arc<dyn PhysicalExpr>],
    filtered: bool,
    input: &datafusion::arrow::datatypes::Schema,
) -> datafusion::error::Result<Kind> {
    if filtered
        || args.len() != 1
        || function.is_distinct()
        || function.ignore_nulls()
        || !function.order_bys().is_empty()
    {
        return Ok(Kind::Accumulator);
    }
    let arg = args[0].data_type(input)?;
    let result = function.field().data_type().clone();
    let state: Vec<DataType> = function
        .state_fields()?
        .iter()
        .map(|f| f.data_type().clone())
        .collect();
    let fold = match function.fun().name() {
        "count" if result == DataType::Int64 && state == [DataType::Int64] => {
            return Ok(Kind::Count)
        }
        "avg"
            if arg == DataType::Float64
                && result == DataType::Float64
                && state == [DataType::UInt64, DataType::Float64] =>
        {
            return Ok(Kind::Avg)
        }
        "sum" => Fold::Sum,
        "min" => Fold::Min,
        "max" => Fold::Max,
        _ => return Ok(Kind::Accumulator),
    };
    if result != arg || state != [arg.clone()] {
        return Ok(Kind::Accumulator);
    }
    Ok(match arg {
        DataType::Int64 => Kind::Int64(fold),
        DataType::Float64 => Kind::Float64(fold),
        _ => Kind::Accumulator,
    })
}

/// The aggregates' arguments and FILTER masks evaluated over one batch.
pub(crate) struct BatchArgs {
    args: Vec<Vec<ArrayRef>>,
    filters: Vec<Option<BooleanArray>>,
}

/// The aggregate functions of one aggregation.
pub(crate) struct Aggregates {
    aggregates: Vec<Aggregate>,
    operator: &'static str,
}

impl Aggregates {
    /// Lower `exprs` (aggregate expressions over `input`) for `operator`.
    pub(crate) fn new(exprs: &[Expr], input: &DFSchema, operator: &'static str) -> Result<Self> {
        let arrow_input = input.as_arrow();
        let aggregates = exprs
            .iter()
            .map(|e| {
                let props = ExecutionProps::new();
                let planning = Default::default();
                let mut builder =
                    LoweredAggregateBuilder::new(e, input, arrow_input, &props, &planning);
                if let Expr::Alias(a) = e {
                    builder = builder.with_name(a.name.clone());
                }
                let lowered = builder.build().map_err(ExecError::eval(operator))?;
                let (function, filter) = (lowered.aggregate, lowered.filter);
                let args = function.expressions();
                let kind = kind(&function, &args, filter.is_some(), arrow_input)
                    .map_err(ExecError::eval(operator))?;
                let state_width = function
                    .state_fields()
                    .map_err(ExecError::eval(operator))?
                    .len();
                Ok(Aggregate {
                    function,
                    args,
                    filter,
                    kind,
                    state_width,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            aggregates,
            operator,
        })
    }

    /// Number of aggregates.
    pub(crate) fn len(&self) -> usize {
        self.aggregates.len()
    }

    /// How aggregate `a`'s state is kept.
    pub(crate) fn kind(&self, a: usize) -> Kind {
        self.aggregates[a].kind
    }

    /// Number of intermediate state fields of aggregate `a`.
    pub(crate) fn state_width(&self, a: usize) -> usize {
        self.aggregates[a].state_width
    }

    /// The values (one array per argument) of aggregate `a` over the batch of `args`.
    pub(crate) fn args<'a>(&self, args: &'a BatchArgs, a: usize) -> &'a [ArrayRef] {
        &args.args[a]
    }

    /// A fresh accumulator of aggregate `a`.
    pub(crate) fn create_one(&self, a: usize) -> Result<Box<dyn Accumulator>> {
        self.aggregates[a]
            .function
            .create_accumulator()
            .map_err(ExecError::eval(self.operator))
    }

    /// Evaluate every aggregate's arguments and filter over `batch`.
    pub(crate) fn evaluate_args(&self, batch: &RecordBatch) -> Result<BatchArgs> {
        let n = batch.num_rows();
        let args = self
            .aggregates
            .iter()
            .map(|a| {
                a.args
                    .iter()
                    .map(|e| e.evaluate(batch).and_then(|v| v.into_array(n)))
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .collect::<datafusion::error::Result<_>>()
            .map_err(ExecError::eval(self.operator))?;
        let filters = self
            .aggregates
            .iter()
            .map(|a| {
                a.filter
                    .as_ref()
                    .map(|f| {
                        f.evaluate(batch)
                            .and_then(|v| v.into_array(n))
                            .map(|a| a.as_boolean().clone())
                    })
                    .transpose()
            })
            .collect::<datafusion::error::Result<_>>()
            .map_err(ExecError::eval(self.operator))?;
        Ok(BatchArgs { args, filters })
    }

    /// Feed the rows `indices` of the batch `args` came from to `acc`, an accumulator of
    /// aggregate `a`.
    pub(crate) fn update_one(
        &self,
        a: usize,
        acc: &mut Box<dyn Accumulator>,
        args: &BatchArgs,
        indices: &UInt32Array,
    ) -> Result<()> {
        // Only aggregates with FILTER (WHERE …) need their own index array.
        let filtered;
        let idx = match &args.filters[a] {
            Some(mask) => {
                filtered = UInt32Array::from_iter_values(
                    indices
                        .values()
                        .iter()
                        .copied()
                        .filter(|&i| mask.is_valid(i as usize) && mask.value(i as usize)),
                );
                &filtered
            }
            None => indices,
        };
        if idx.is_empty() {
            return Ok(());
        }
        let values = args.args[a]
            .iter()
            .map(|arr| take(arr.as_ref(), idx, None))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ExecError::arrow("selecting group rows"))?;
        acc.update_batch(&values)
            .map_err(ExecError::eval(self.operator))
    }

    /// Merge `from`'s state into `into`, two accumulators of one aggregate; `from` may be
    /// left without its state.
    pub(crate) fn merge_one(
        &self,
        into: &mut Box<dyn Accumulator>,
        from: &mut Box<dyn Accumulator>,
    ) -> Result<()> {
        let state = from
            .state()
            .and_then(|s| {
                s.iter()
                    .map(|v| v.to_array())
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .map_err(ExecError::eval(self.operator))?;
        into.merge_batch(&state)
            .map_err(ExecError::eval(self.operator))
    }

    /// The intermediate state fields of each aggregate, flattened, nullable: the columns
    /// a group's state is stored in.
    pub(crate) fn state_fields(&self) -> Result<Vec<FieldRef>> {
        let mut fields = vec![];
        for (a, aggregate) in self.aggregates.iter().enumerate() {
            for (j, f) in aggregate
                .function
                .state_fields()
                .map_err(ExecError::eval(self.operator))?
                .into_iter()
                .enumerate()
            {
                let field = f.as_ref().clone().with_name(format!("state{a}_{j}"));
                fields.push(Arc::new(field.with_nullable(true)));
            }
        }
        Ok(fields)
    }

    /// The intermediate state of `acc`, an accumulator of aggregate `a`, which is
    /// replaced by a fresh one that merged the state back (see [`Aggregates::checkpoint`]).
    pub(crate) fn checkpoint_one(
        &self,
        a: usize,
        acc: &mut Box<dyn Accumulator>,
    ) -> Result<Vec<ScalarValue>> {
        let state = acc.state().map_err(ExecError::eval(self.operator))?;
        let mut fresh = self.create_one(a)?;
        let arrays = state
            .iter()
            .map(|v| v.to_array())
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(self.operator))?;
        fresh
            .merge_batch(&arrays)
            .map_err(ExecError::eval(self.operator))?;
        *acc = fresh;
        Ok(state)
    }

    /// An accumulator of aggregate `a` rebuilt from row `row` of its state columns.
    pub(crate) fn restore_one(
        &self,
        a: usize,
        state: &[ArrayRef],
        row: usize,
    ) -> Result<Box<dyn Accumulator>> {
        let mut acc = self.create_one(a)?;
        let arrays: Vec<ArrayRef> = state.iter().map(|c| c.slice(row, 1)).collect();
        acc.merge_batch(&arrays)
            .map_err(ExecError::eval(self.operator))?;
        Ok(acc)
    }

    /// One column of [`Aggregates::columns`].
    pub(crate) fn column(&self, values: Vec<ScalarValue>, field: &FieldRef) -> Result<ArrayRef> {
        let field_type = field.data_type();
        let column = values
            .into_iter()
            .map(|v| match (v.is_null(), field.is_nullable()) {
                (false, _) => Ok(v),
                (true, true) => ScalarValue::try_from(field_type),
                (true, false) => ScalarValue::new_default(field_type),
            })
            .collect::<datafusion::error::Result<Vec<_>>>()
            .map_err(ExecError::eval(self.operator))?;
        let array = if column.is_empty() {
            new_empty_array(field_type)
        } else {
            ScalarValue::iter_to_array(column).map_err(ExecError::eval(self.operator))?
        };
        if array.data_type() == field_type {
            Ok(array)
        } else {
            cast(&array, field_type).map_err(ExecError::arrow("typing aggregate results"))
        }
    }
}
