//! ksqlDB's aggregate functions as DataFusion [`AggregateUDF`]s, for continuous queries.
//!
//! - `latest_by_offset(col)`: the value of the most recently received row whose `col` is
//!   not null; null when no such row was seen. Nulls never replace a value.
//! - `earliest_by_offset(col)`: the first non-null value received; null when none was.
//! - `topk(col, k)`: the `k` largest non-null values, largest first, as a list of the
//!   input type. `k` must be a positive integer literal. Numeric and string columns only.
//! - `collect_list(col)`: every value, nulls included, in the order received, as a list.
//!
//! `topk` and `collect_list` give an empty list, not null, when nothing was collected.
//!
//! Rows are assumed to reach `update_batch` in offset order. Two accumulators can be merged
//! (session windows merging) through `state` and `merge_batch`. For the two `*_by_offset`
//! functions the state carries a stamp from a process-wide counter, taken afresh for each
//! `update_batch` call that changes the value, so a merge keeps the value that really arrived
//! last (or first) whichever accumulator the other is merged into. `collect_list` appends
//! merged lists in the order `merge_batch` receives them.

use std::cmp::Ordering;
use std::mem::size_of_val;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;

use datafusion::arrow::array::{new_empty_array, Array, ArrayRef, AsArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, UInt64Type};
use datafusion::common::utils::SingleRowListArrayBuilder;
use datafusion::common::{plan_err, ScalarValue};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::session_state::SessionState;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::registry::FunctionRegistry;
use datafusion::logical_expr::utils::{format_state_name, AggregateOrderSensitivity};
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, Signature, Volatility,
};
use datafusion::physical_expr::expressions::Literal;

/// The error for a `topk` whose second argument is not a positive integer literal.
const TOPK_K_ERROR: &str = "TOPK's second argument must be a positive integer literal";

/// The ksqlDB aggregate functions of this module, ready to register with DataFusion.
pub fn udafs() -> Vec<Arc<AggregateUDF>> {
    vec![
        Arc::new(AggregateUDF::from(ByOffset::new(Which::Latest))),
        Arc::new(AggregateUDF::from(ByOffset::new(Which::Earliest))),
        Arc::new(AggregateUDF::from(TopK::new())),
        Arc::new(AggregateUDF::from(CollectList::new())),
    ]
}

/// Registers every function of [`udafs`] with `state`, replacing any of the same name.
pub fn register(state: &mut SessionState) -> Result<()> {
    for udaf in udafs() {
        state.register_udaf(udaf)?;
    }
    Ok(())
}

/// Source of the stamps that order `update_batch` calls across all accumulators.
static NEXT_STAMP: AtomicU64 = AtomicU64::new(1);

/// A stamp greater than every stamp handed out before.
fn next_stamp() -> u64 {
    NEXT_STAMP.fetch_add(1, AtomicOrdering::Relaxed)
}

/// Whether row `i` holds a value. Uses logical nulls, so null-typed, dictionary and
/// run-end encoded arrays count their nulls too.
fn is_valid(nulls: Option<&NullBuffer>, i: usize) -> bool {
    nulls.is_none_or(|n| n.is_valid(i))
}

/// The argument array at `index`, or an internal error naming `function`.
fn argument<'a>(arrays: &'a [ArrayRef], index: usize, function: &str) -> Result<&'a ArrayRef> {
    arrays.get(index).ok_or_else(|| {
        DataFusionError::Internal(format!(
            "{function} expected at least {} input arrays, got {}",
            index + 1,
            arrays.len()
        ))
    })
}

/// The type of the first argument, or an internal error naming `function`.
fn first_type<'a>(types: &'a [DataType], function: &str) -> Result<&'a DataType> {
    types.first().ok_or_else(|| {
        DataFusionError::Internal(format!("{function} was called without arguments"))
    })
}

/// `List<item: data_type>`, the type of the lists this module returns.
fn list_type(data_type: &DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(data_type.clone(), true)))
}

/// A one-row list scalar holding `values`, whose element type is `data_type`.
fn list_scalar(values: ArrayRef, data_type: &DataType) -> Result<ScalarValue> {
    let values = if values.data_type() == data_type {
        values
    } else {
        cast(&values, data_type)?
    };
    Ok(SingleRowListArrayBuilder::new(values)
        .with_nullable(true)
        .build_list_scalar())
}

/// A one-row list scalar holding the scalars `values`, whose element type is `data_type`.
fn list_scalar_from(values: &[ScalarValue], data_type: &DataType) -> Result<ScalarValue> {
    let array = if values.is_empty() {
        new_empty_array(data_type)
    } else {
        ScalarValue::iter_to_array(values.iter().cloned())?
    };
    list_scalar(array, data_type)
}

// ---------------------------------------------------------------------------------------
// latest_by_offset / earliest_by_offset
// ---------------------------------------------------------------------------------------

/// Which end of the offset order a [`ByOffset`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Which {
    Latest,
    Earliest,
}

/// `latest_by_offset(col)` and `earliest_by_offset(col)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ByOffset {
    which: Which,
    signature: Signature,
}

impl ByOffset {
    fn new(which: Which) -> Self {
        Self {
            which,
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for ByOffset {
    fn name(&self) -> &str {
        match self.which {
            Which::Latest => "latest_by_offset",
            Which::Earliest => "earliest_by_offset",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        first_type(arg_types, self.name()).cloned()
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(ByOffsetAccumulator::try_new(
            self.which,
            acc_args.return_field.data_type(),
        )?))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "value"),
                args.return_field.data_type().clone(),
                true,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "stamp"),
                DataType::UInt64,
                true,
            )),
        ])
    }
}

/// Keeps one value and the stamp of the `update_batch` call (or merged state) it came from.
#[derive(Debug)]
struct ByOffsetAccumulator {
    which: Which,
    /// A typed null until a non-null value is seen.
    value: ScalarValue,
    /// `None` exactly when no value was seen.
    stamp: Option<u64>,
}

impl ByOffsetAccumulator {
    fn try_new(which: Which, data_type: &DataType) -> Result<Self> {
        Ok(Self {
            which,
            value: ScalarValue::try_from(data_type)?,
            stamp: None,
        })
    }

    fn function(&self) -> &'static str {
        match self.which {
            Which::Latest => "latest_by_offset",
            Which::Earliest => "earliest_by_offset",
        }
    }

    /// Whether a value stamped `stamp` should replace the current one.
    fn prefers(&self, stamp: u64) -> bool {
        match (self.which, self.stamp) {
            (_, None) => true,
            (Which::Latest, Some(current)) => stamp > current,
            (Which::Earliest, Some(current)) => stamp < current,
        }
    }
}

impl Accumulator for ByOffsetAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = argument(values, 0, self.function())?;
        let nulls = array.logical_nulls();
        let row = match self.which {
            Which::Latest => (0..array.len())
                .rev()
                .find(|&i| is_valid(nulls.as_ref(), i)),
            // Whatever this accumulator holds arrived before this batch.
            Which::Earliest if self.stamp.is_some() => None,
            Which::Earliest => (0..array.len()).find(|&i| is_valid(nulls.as_ref(), i)),
        };
        if let Some(row) = row {
            self.value = ScalarValue::try_from_array(array, row)?;
            self.stamp = Some(next_stamp());
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(self.value.clone())
    }

    fn size(&self) -> usize {
        size_of_val(self) + self.value.size() - size_of_val(&self.value)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.value.clone(), ScalarValue::UInt64(self.stamp)])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let values = argument(states, 0, self.function())?;
        let stamps = argument(states, 1, self.function())?
            .as_primitive_opt::<UInt64Type>()
            .ok_or_else(|| {
                DataFusionError::Internal(format!(
                    "{} expected a UInt64 stamp in its state",
                    self.function()
                ))
            })?;
        for row in 0..stamps.len() {
            if stamps.is_null(row) {
                continue;
            }
            let stamp = stamps.value(row);
            if self.prefers(stamp) {
                self.value = ScalarValue::try_from_array(values, row)?;
                self.stamp = Some(stamp);
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// topk
// ---------------------------------------------------------------------------------------

/// `topk(col, k)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct TopK {
    signature: Signature,
}

impl TopK {
    fn new() -> Self {
        Self {
            signature: Signature::user_defined(Volatility::Immutable),
        }
    }

    /// The type `topk` ranks values of `data_type` as, if it can.
    fn value_type(data_type: &DataType) -> Option<DataType> {
        match data_type {
            t if t.is_integer() || t.is_floating() => Some(t.clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(data_type.clone()),
            DataType::Dictionary(_, values) => Self::value_type(values),
            _ => None,
        }
    }
}

impl AggregateUDFImpl for TopK {
    fn name(&self) -> &str {
        "topk"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> Result<Vec<DataType>> {
        let [value, k] = arg_types else {
            return plan_err!(
                "topk takes two arguments, a column and a positive integer literal, got {}",
                arg_types.len()
            );
        };
        let Some(value) = Self::value_type(value) else {
            return plan_err!("topk needs a numeric or string column, got {value}");
        };
        if !k.is_integer() {
            return plan_err!("{TOPK_K_ERROR}");
        }
        Ok(vec![value, DataType::Int64])
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_type(first_type(arg_types, self.name())?))
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let k = acc_args
            .exprs
            .get(1)
            .and_then(|expr| expr.downcast_ref::<Literal>())
            .and_then(|literal| match literal.value() {
                ScalarValue::Int64(Some(k)) if *k > 0 => usize::try_from(*k).ok(),
                _ => None,
            });
        let Some(k) = k else {
            return plan_err!("{TOPK_K_ERROR}");
        };
        let data_type = acc_args
            .expr_fields
            .first()
            .ok_or_else(|| DataFusionError::Internal("topk was called without arguments".into()))?
            .data_type()
            .clone();
        Ok(Box::new(TopKAccumulator::new(k, data_type)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "topk"),
            args.return_field.data_type().clone(),
            true,
        ))])
    }

    fn order_sensitivity(&self) -> AggregateOrderSensitivity {
        AggregateOrderSensitivity::Insensitive
    }
}

/// The `k` largest values seen so far, largest first.
#[derive(Debug)]
struct TopKAccumulator {
    k: usize,
    data_type: DataType,
    values: Vec<ScalarValue>,
}

impl TopKAccumulator {
    fn new(k: usize, data_type: DataType) -> Self {
        Self {
            k,
            data_type,
            values: Vec::new(),
        }
    }

    fn compare(a: &ScalarValue, b: &ScalarValue) -> Ordering {
        // Same-typed non-null numbers and strings always compare; floats use total order.
        a.partial_cmp(b).unwrap_or(Ordering::Equal)
    }

    /// Inserts `value` in place, then drops whatever falls past the `k`th.
    fn insert(&mut self, value: ScalarValue) {
        if self.values.len() >= self.k {
            match self.values.last() {
                Some(smallest) if Self::compare(&value, smallest) == Ordering::Greater => {}
                _ => return,
            }
        }
        let at = self
            .values
            .partition_point(|v| Self::compare(v, &value) != Ordering::Less);
        self.values.insert(at, value);
        self.values.truncate(self.k);
    }

    /// Inserts every non-null value of `array`.
    fn insert_all(&mut self, array: &dyn Array) -> Result<()> {
        let nulls = array.logical_nulls();
        for row in 0..array.len() {
            if is_valid(nulls.as_ref(), row) {
                self.insert(ScalarValue::try_from_array(array, row)?);
            }
        }
        Ok(())
    }

    fn list(&self) -> Result<ScalarValue> {
        list_scalar_from(&self.values, &self.data_type)
    }
}

impl Accumulator for TopKAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        self.insert_all(argument(values, 0, "topk")?)
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.list()
    }

    fn size(&self) -> usize {
        size_of_val(self) + ScalarValue::size_of_vec(&self.values) - size_of_val(&self.values)
            + self.data_type.size()
            - size_of_val(&self.data_type)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.list()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = argument(states, 0, "topk")?
            .as_list_opt::<i32>()
            .ok_or_else(|| DataFusionError::Internal("topk expected a list state".into()))?;
        for list in lists.iter().flatten() {
            self.insert_all(&list)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// collect_list
// ---------------------------------------------------------------------------------------

/// `collect_list(col)`.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CollectList {
    signature: Signature,
}

impl CollectList {
    fn new() -> Self {
        Self {
            signature: Signature::any(1, Volatility::Immutable),
        }
    }
}

impl AggregateUDFImpl for CollectList {
    fn name(&self) -> &str {
        "collect_list"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> Result<DataType> {
        Ok(list_type(first_type(arg_types, self.name())?))
    }

    fn accumulator(&self, acc_args: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        let data_type = acc_args
            .expr_fields
            .first()
            .ok_or_else(|| {
                DataFusionError::Internal("collect_list was called without arguments".into())
            })?
            .data_type()
            .clone();
        Ok(Box::new(CollectListAccumulator {
            data_type,
            chunks: Vec::new(),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![Arc::new(Field::new(
            format_state_name(args.name, "collect_list"),
            args.return_field.data_type().clone(),
            true,
        ))])
    }
}

/// The input arrays as received; concatenated only when a list is asked for.
#[derive(Debug)]
struct CollectListAccumulator {
    data_type: DataType,
    chunks: Vec<ArrayRef>,
}

impl CollectListAccumulator {
    fn list(&self) -> Result<ScalarValue> {
        let values = match self.chunks.as_slice() {
            [] => new_empty_array(&self.data_type),
            [only] => Arc::clone(only),
            chunks => {
                let chunks: Vec<&dyn Array> = chunks.iter().map(|c| c.as_ref()).collect();
                concat(&chunks)?
            }
        };
        list_scalar(values, &self.data_type)
    }
}

impl Accumulator for CollectListAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let array = argument(values, 0, "collect_list")?;
        if !array.is_empty() {
            self.chunks.push(Arc::clone(array));
        }
        Ok(())
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        self.list()
    }

    fn size(&self) -> usize {
        size_of_val(self)
            + self.chunks.capacity() * size_of::<ArrayRef>()
            + self
                .chunks
                .iter()
                .map(|c| c.get_array_memory_size())
                .sum::<usize>()
            + self.data_type.size()
            - size_of_val(&self.data_type)
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![self.list()?])
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> Result<()> {
        let lists = argument(states, 0, "collect_list")?
            .as_list_opt::<i32>()
            .ok_or_else(|| {
                DataFusionError::Internal("collect_list expected a list state".into())
            })?;
        for list in lists.iter().flatten() {
            if !list.is_empty() {
                self.chunks.push(list);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
