//! `WrittenRows`: the aggregate values each session's row was last written with (EMIT
//! CHANGES), indexed by session slot (see [`super::session_index`]), so that a later
//! change can write a tombstone holding exactly that row.
//!
//! BIGINT and DOUBLE values are kept in plain vectors; values of other types as
//! `ScalarValue`s.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array};
use datafusion::arrow::datatypes::{DataType, FieldRef, Float64Type, Int64Type};
use datafusion::common::ScalarValue;

use super::aggregates::Aggregates;
use crate::error::{ExecError, Result};

/// One aggregate's written values of every slot.
enum Column {
    Int64(Vec<i64>, Vec<bool>),
    Float64(Vec<f64>, Vec<bool>),
    Scalars(Vec<ScalarValue>),
}

/// The written values of every slot. See the module docs.
pub(crate) struct WrittenRows {
    columns: Vec<Column>,
}

impl WrittenRows {
    /// No slots yet, for aggregates whose results are typed as `fields`.
    pub(crate) fn new(fields: &[FieldRef]) -> Self {
        let columns = fields
            .iter()
            .map(|f| match f.data_type() {
                DataType::Int64 => Column::Int64(vec![], vec![]),
                DataType::Float64 => Column::Float64(vec![], vec![]),
                _ => Column::Scalars(vec![]),
            })
            .collect();
        Self { columns }
    }

    /// Add a slot; it gets the next number.
    pub(crate) fn push(&mut self) {
        for column in &mut self.columns {
            match column {
                Column::Int64(values, valid) => {
                    values.push(0);
                    valid.push(false);
                }
                Column::Float64(values, valid) => {
                    values.push(0.0);
                    valid.push(false);
                }
                Column::Scalars(values) => values.push(ScalarValue::Null),
            }
        }
    }

    /// Each slot `s` of `written` (slot, row) was written with row `row` of `arrays`, one
    /// array per aggregate, typed as the `fields` given to [`WrittenRows::new`].
    pub(crate) fn record(&mut self, written: &[(u32, usize)], arrays: &[ArrayRef]) -> Result<()> {
        for (column, array) in self.columns.iter_mut().zip(arrays) {
            match column {
                Column::Int64(values, valid) => {
                    let array = array.as_primitive::<Int64Type>();
                    for &(s, row) in written {
                        valid[s as usize] = array.is_valid(row);
                        values[s as usize] = array.value(row);
                    }
                }
                Column::Float64(values, valid) => {
                    let array = array.as_primitive::<Float64Type>();
                    for &(s, row) in written {
                        valid[s as usize] = array.is_valid(row);
                        values[s as usize] = array.value(row);
                    }
                }
                Column::Scalars(values) => {
                    for &(s, row) in written {
                        values[s as usize] = ScalarValue::try_from_array(array, row)
                            .map_err(ExecError::eval("SessionAggregate"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Forget slot `s`'s values (its session closed), freeing what they hold.
    pub(crate) fn clear(&mut self, s: u32) {
        for column in &mut self.columns {
            if let Column::Scalars(values) = column {
                values[s as usize] = ScalarValue::Null;
            }
        }
    }

    /// The written values of `slots`, one column per aggregate typed as `fields`; a slot
    /// whose `written` is false gets null, or the type's default where `fields` cannot
    /// be null (as [`Aggregates::column`]).
    pub(crate) fn columns(
        &self,
        aggregates: &Aggregates,
        slots: &[u32],
        written: &[bool],
        fields: &[FieldRef],
    ) -> Result<Vec<ArrayRef>> {
        self.columns
            .iter()
            .zip(fields)
            .map(|(column, field)| {
                let nullable = field.is_nullable();
                Ok(match column {
                    Column::Int64(values, valid) => Arc::new(Int64Array::from_iter(
                        slots.iter().enumerate().map(|(i, &s)| {
                            pick(
                                written[i] && valid[s as usize],
                                nullable,
                                values[s as usize],
                            )
                        }),
                    )) as ArrayRef,
                    Column::Float64(values, valid) => Arc::new(Float64Array::from_iter(
                        slots.iter().enumerate().map(|(i, &s)| {
                            pick(
                                written[i] && valid[s as usize],
                                nullable,
                                values[s as usize],
                            )
                        }),
                    )),
                    Column::Scalars(values) => aggregates.column(
                        slots
                            .iter()
                            .zip(written)
                            .map(|(&s, &w)| match w {
                                true => values[s as usize].clone(),
                                false => ScalarValue::Null,
                            })
                            .collect(),
                        field,
                    )?,
                })
            })
            .collect()
    }
}

/// A written value, null when not `present` or the type's default where the column
/// cannot be null (as [`Aggregates::column`]).
fn pick<T: Default>(present: bool, nullable: bool, value: T) -> Option<T> {
    match (present, nullable) {
        (true, _) => Some(value),
        (false, true) => None,
        (false, false) => Some(T::default()),
    }
}
