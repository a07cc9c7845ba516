//! One output column of the fast decoder: its Arrow builder and the rule that turns a
//! JSON value into it, each rule copied from arrow-json 59's array decoders
//! (`primitive_array.rs`, `timestamp_array.rs`, `string_array.rs`, `boolean_array.rs`)
//! for the JSON types it accepts. Values arrow-json would coerce (a string for a number,
//! a number for a string) or reject are refused (`None`), and the batch goes to
//! arrow-json.

use std::sync::Arc;

use datafusion::arrow::array::{
    ArrayRef, BooleanBuilder, Date32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder, TimestampMillisecondBuilder,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};

use super::cursor::Cursor;

/// The column types the fast decoder handles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Kind {
    Utf8,
    Int32,
    Int64,
    Float64,
    Boolean,
    /// `Timestamp(Millisecond, None)`: numbers only (arrow-json parses strings as dates).
    TimestampMs,
    /// `Date32`: numbers only, as Int32 (arrow-json parses strings as dates).
    Date32,
}

impl Kind {
    /// The kind for `data_type`, or `None` when the fast decoder leaves it to arrow-json.
    pub(super) fn of(data_type: &DataType) -> Option<Kind> {
        Some(match data_type {
            DataType::Utf8 => Kind::Utf8,
            DataType::Int32 => Kind::Int32,
            DataType::Int64 => Kind::Int64,
            DataType::Float64 => Kind::Float64,
            DataType::Boolean => Kind::Boolean,
            DataType::Timestamp(TimeUnit::Millisecond, None) => Kind::TimestampMs,
            DataType::Date32 => Kind::Date32,
            _ => return None,
        })
    }
}

/// A column being built: the same builder type arrow-json uses for it, so the arrays
/// come out alike (values, validity, and no validity buffer when nothing is null).
pub(super) enum Column {
    Utf8(StringBuilder),
    Int32(Int32Builder),
    Int64(Int64Builder),
    Float64(Float64Builder),
    Boolean(BooleanBuilder),
    TimestampMs(TimestampMillisecondBuilder),
    Date32(Date32Builder),
}

impl Column {
    /// An empty column for `rows` rows; a string column reserves `string_bytes`.
    pub(super) fn new(kind: Kind, rows: usize, string_bytes: usize) -> Self {
        match kind {
            Kind::Utf8 => Column::Utf8(StringBuilder::with_capacity(rows, string_bytes)),
            Kind::Int32 => Column::Int32(Int32Builder::with_capacity(rows)),
            Kind::Int64 => Column::Int64(Int64Builder::with_capacity(rows)),
            Kind::Float64 => Column::Float64(Float64Builder::with_capacity(rows)),
            Kind::Boolean => Column::Boolean(BooleanBuilder::with_capacity(rows)),
            Kind::TimestampMs => {
                Column::TimestampMs(TimestampMillisecondBuilder::with_capacity(rows))
            }
            Kind::Date32 => Column::Date32(Date32Builder::with_capacity(rows)),
        }
    }

    /// Appends a null (a missing field or JSON `null`).
    pub(super) fn append_null(&mut self) {
        match self {
            Column::Utf8(b) => b.append_null(),
            Column::Int32(b) => b.append_null(),
            Column::Int64(b) => b.append_null(),
            Column::Float64(b) => b.append_null(),
            Column::Boolean(b) => b.append_null(),
            Column::TimestampMs(b) => b.append_null(),
            Column::Date32(b) => b.append_null(),
        }
    }

    /// Reads one non-null value at the cursor and appends it; `None` when arrow-json
    /// would coerce or reject it.
    pub(super) fn append_value(&mut self, c: &mut Cursor<'_>, scratch: &mut String) -> Option<()> {
        match self {
            Column::Utf8(b) => {
                if !c.eat(b'"') {
                    return None;
                }
                b.append_value(c.string(scratch)?);
            }
            Column::Int32(b) => b.append_value(parse_i32(c.number()?)?),
            Column::Int64(b) => b.append_value(parse_i64(c.number()?)?),
            Column::Float64(b) => b.append_value(parse_f64(c.number()?)?),
            Column::Boolean(b) => b.append_value(parse_bool(c)?),
            Column::TimestampMs(b) => b.append_value(parse_timestamp(c.number()?)?),
            Column::Date32(b) => b.append_value(parse_i32(c.number()?)?),
        }
        Some(())
    }

    /// The finished array.
    pub(super) fn finish(&mut self) -> ArrayRef {
        match self {
            Column::Utf8(b) => Arc::new(b.finish()),
            Column::Int32(b) => Arc::new(b.finish()),
            Column::Int64(b) => Arc::new(b.finish()),
            Column::Float64(b) => Arc::new(b.finish()),
            Column::Boolean(b) => Arc::new(b.finish()),
            Column::TimestampMs(b) => Arc::new(b.finish()),
            Column::Date32(b) => Arc::new(b.finish()),
        }
    }
}

/// `true` or `false`; arrow-json's boolean decoder takes nothing else.
fn parse_bool(c: &mut Cursor<'_>) -> Option<bool> {
    match c.peek()? {
        b't' => c.literal(b"true").map(|_| true),
        b'f' => c.literal(b"false").map(|_| false),
        _ => None,
    }
}

/// arrow-json's `ParseJsonNumber` for `f64`: `lexical_core` on the number's text.
pub(super) fn parse_f64(text: &[u8]) -> Option<f64> {
    lexical_core::parse::<f64>(text).ok()
}

/// arrow-json's `ParseJsonNumber` for `i64`: `lexical_core` as an integer, else as an
/// `f64` cast with `NumCast` (num-traits 0.2: truncation, for values in `[-2^63, 2^63)`;
/// so `1.9` is 1 and `1e3` is 1000).
pub(super) fn parse_i64(text: &[u8]) -> Option<i64> {
    if let Ok(v) = lexical_core::parse::<i64>(text) {
        return Some(v);
    }
    let f = parse_f64(text)?;
    // -2^63 and 2^63, exact in f64; NaN is in no range.
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0)
        .contains(&f)
        .then_some(f as i64)
}

/// arrow-json's `ParseJsonNumber` for `i32` (Int32, and Date32 whose native type it
/// is): as [`parse_i64`], with `NumCast`'s range for a wider float, `(-2^31-1, 2^31)`.
pub(super) fn parse_i32(text: &[u8]) -> Option<i32> {
    if let Ok(v) = lexical_core::parse::<i32>(text) {
        return Some(v);
    }
    let f = parse_f64(text)?;
    (f > -2_147_483_649.0 && f < 2_147_483_648.0).then_some(f as i32)
}

/// arrow-json's timestamp decoder for a number: `lexical_core` as an `i64`, else as an
/// `f64` cast with `as` (which saturates, and takes NaN to 0).
pub(super) fn parse_timestamp(text: &[u8]) -> Option<i64> {
    match lexical_core::parse::<i64>(text) {
        Ok(v) => Some(v),
        Err(_) => parse_f64(text).map(|f| f as i64),
    }
}
