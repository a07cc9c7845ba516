//! Arrow to JSON records: one Kafka value (a JSON object with every column, nulls
//! included) and key per result row.
//!
//! The key is the key columns as JSON: a single column is written as its JSON value
//! (`"card-7"`, `42`; ksqlDB's JSON key format for one column), several as a JSON object.
//! A tombstone has a key and no value.

use std::ops::Range;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Float64Type, Int32Type, Int64Type};
use datafusion::arrow::json::writer::{make_encoder, EncoderOptions, NullableEncoder};

use crate::error::{ExecError, Result};
use crate::operator::ChangeBatch;

/// One encoded result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The Kafka key, if the result has key columns.
    pub key: Option<Vec<u8>>,
    /// The JSON value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A batch's encoded rows, held in one buffer for the values and one for the keys (no
/// allocation per row).
#[derive(Debug, Clone)]
pub struct EncodedRows {
    values: Lines,
    keys: Option<Lines>,
    tombstones: Vec<bool>,
}

impl EncodedRows {
    /// Number of rows.
    pub fn len(&self) -> usize {
        self.tombstones.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.tombstones.is_empty()
    }

    /// Row `i`'s Kafka key, if the result has key columns.
    pub fn key(&self, i: usize) -> Option<&[u8]> {
        self.keys.as_ref().map(|k| k.get(i))
    }

    /// Row `i`'s JSON value; `None` for a tombstone.
    pub fn value(&self, i: usize) -> Option<&[u8]> {
        (!self.tombstones[i]).then(|| self.values.get(i))
    }

    /// Every row, each with its own copies.
    pub fn to_vec(&self) -> Vec<EncodedRow> {
        (0..self.len())
            .map(|i| EncodedRow {
                key: self.key(i).map(<[u8]>::to_vec),
                value: self.value(i).map(<[u8]>::to_vec),
            })
            .collect()
    }
}

/// Pieces of one buffer, one per row.
#[derive(Debug, Clone, Default)]
pub(crate) struct Lines {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Lines {
    fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.ranges[i].clone()]
    }

    /// Each piece in a buffer of its own.
    pub(crate) fn into_vec(self) -> Vec<Vec<u8>> {
        self.ranges
            .iter()
            .map(|r| self.buf[r.clone()].to_vec())
            .collect()
    }
}

/// Buffers of encoded batches given back, for later batches to be encoded into.
///
/// A query's result batches are large (one of `hop_final`'s is 200,000 rows, 26 MB of
/// JSON), and glibc gives blocks that large back to the kernel when they are freed: a
/// new buffer per batch had every page faulted in again, a third of `hop_final`'s page
/// faults.
#[derive(Debug, Default)]
pub struct EncodeBuffers {
    values: Option<Lines>,
    keys: Option<Lines>,
    tombstones: Option<Vec<bool>>,
}

impl EncodeBuffers {
    /// Keep `rows`' buffers for the next batch, each only if the batch filled a quarter
    /// of it or more: when batches shrink (a query that has caught up with its input),
    /// the largest batch's buffers are let go rather than held while the query idles.
    pub fn give_back(&mut self, rows: EncodedRows) {
        let used = |len: usize, capacity: usize| len >= capacity / 4;
        self.values = Some(rows.values).filter(|l| used(l.buf.len(), l.buf.capacity()));
        if let Some(keys) = rows.keys {
            self.keys = Some(keys).filter(|l| used(l.buf.len(), l.buf.capacity()));
        }
        let tombstones = rows.tombstones;
        self.tombstones = Some(tombstones).filter(|t| used(t.len(), t.capacity()));
    }
}

/// `kept`, emptied, or a new one.
fn emptied(kept: &mut Option<Lines>) -> Lines {
    let mut lines = kept.take().unwrap_or_default();
    lines.buf.clear();
    lines.ranges.clear();
    lines
}

/// Encode `batch` as one JSON value per row, keyed by `key_columns`.
pub fn encode_batch(batch: &ChangeBatch, key_columns: &[usize]) -> Result<EncodedRows> {
    encode_batch_into(batch, key_columns, &mut EncodeBuffers::default())
}

/// [`encode_batch`], in buffers from `spare` where it has them.
pub fn encode_batch_into(
    batch: &ChangeBatch,
    key_columns: &[usize],
    spare: &mut EncodeBuffers,
) -> Result<EncodedRows> {
    let rows = &batch.rows;
    let mut tombstones = spare.tombstones.take().unwrap_or_default();
    tombstones.clear();
    tombstones.extend((0..rows.num_rows()).map(|i| batch.is_tombstone(i)));
    Ok(EncodedRows {
        values: json_objects_into(rows, emptied(&mut spare.values))?,
        keys: key_lines(rows, key_columns, spare)?,
        tombstones,
    })
}

/// Encode `batch` as one JSON value per row, keyed by `key_columns`, each row with its
/// own copies (see [`encode_batch`] for the batch in one buffer).
pub fn encode_rows(batch: &ChangeBatch, key_columns: &[usize]) -> Result<Vec<EncodedRow>> {
    Ok(encode_batch(batch, key_columns)?.to_vec())
}

/// The keys of `rows` in one buffer; `None` without key columns.
fn key_lines(
    rows: &RecordBatch,
    key_columns: &[usize],
    spare: &mut EncodeBuffers,
) -> Result<Option<Lines>> {
    Ok(match key_columns {
        [] => None,
        [one] => Some(single_keys(rows, *one, emptied(&mut spare.keys))?),
        many => {
            let keys = rows
                .project(many)
                .map_err(ExecError::arrow("projecting key columns"))?;
            Some(json_objects_into(&keys, emptied(&mut spare.keys))?)
        }
    })
}

/// The JSON value of column `index` per row, written into `lines` (empty).
fn single_keys(rows: &RecordBatch, index: usize, lines: Lines) -> Result<Lines> {
    let column = rows.column(index);
    if let DataType::Utf8 = column.data_type() {
        let strings = column.as_string::<i32>();
        let Lines {
            mut buf,
            mut ranges,
        } = lines;
        buf.reserve(strings.values().len() + strings.len() * 3);
        ranges.reserve(strings.len());
        for i in 0..strings.len() {
            let start = buf.len();
            if strings.is_null(i) {
                buf.extend_from_slice(b"null");
            } else {
                write_string(strings.value(i), &mut buf);
            }
            ranges.push(start..buf.len());
        }
        return Ok(Lines { buf, ranges });
    }
    // Each line is `{"<name>":<value>}`: the value is what lies between the two.
    let prefix = serde_json::to_vec(rows.schema().field(index).name())
        .map_err(|e| ExecError::internal("JsonEncoder", &format!("encoding a key name: {e}")))?
        .len()
        + 2;
    let projected = rows
        .project(&[index])
        .map_err(ExecError::arrow("projecting key columns"))?;
    let mut lines = json_objects_into(&projected, lines)?;
    for range in &mut lines.ranges {
        if range.len() < prefix + 1 {
            return Err(ExecError::internal(
                "JsonEncoder",
                "an encoded key is not a one-field object",
            ));
        }
        *range = range.start + prefix..range.end - 1;
    }
    Ok(lines)
}

/// Each row of `batch` as a JSON object, in one buffer: byte for byte what arrow's JSON
/// writer writes with explicit nulls (a test checks it on random batches). Strings,
/// integers, floats and booleans are written here, in one pass per row with the
/// field names written once; other types go through arrow's own encoder per value.
pub(crate) fn json_objects(batch: &RecordBatch) -> Result<Lines> {
    json_objects_into(batch, Lines::default())
}

/// [`json_objects`], written into `lines` (empty).
fn json_objects_into(batch: &RecordBatch, lines: Lines) -> Result<Lines> {
    let options = EncoderOptions::default().with_explicit_nulls(true);
    let schema = batch.schema();
    let mut columns = Vec::with_capacity(batch.num_columns());
    // A first guess at the bytes: names, and the string bytes or 20 per other value.
    let mut guess = 2;
    for (i, (field, array)) in schema.fields().iter().zip(batch.columns()).enumerate() {
        let mut prefix = if i == 0 { vec![] } else { vec![b','] };
        serde_json::to_writer(&mut prefix, field.name()).map_err(|e| {
            ExecError::internal("JsonEncoder", &format!("encoding a field name: {e}"))
        })?;
        prefix.push(b':');
        guess += prefix.len() + 20;
        let prefix = Padded::new(prefix);
        let values = match array.data_type() {
            DataType::Utf8 => {
                let strings = array.as_string::<i32>();
                guess += strings.values().len() / batch.num_rows().max(1);
                Values::Utf8(strings)
            }
            DataType::Int64 => Values::Int64(array.as_primitive::<Int64Type>()),
            DataType::Int32 => Values::Int32(array.as_primitive::<Int32Type>()),
            DataType::Float64 => Values::Float64(array.as_primitive::<Float64Type>()),
            DataType::Boolean => Values::Boolean(array.as_boolean()),
            _ => Values::Other(
                make_encoder(field, array.as_ref(), &options)
                    .map_err(ExecError::arrow("encoding JSON"))?,
            ),
        };
        columns.push((prefix, array.nulls().cloned(), values));
    }
    let Lines {
        mut buf,
        mut ranges,
    } = lines;
    buf.reserve(batch.num_rows() * guess);
    ranges.reserve(batch.num_rows());
    for row in 0..batch.num_rows() {
        let start = buf.len();
        buf.push(b'{');
        for (prefix, nulls, values) in &mut columns {
            prefix.write(&mut buf);
            let is_null = match values {
                Values::Other(encoder) => encoder.is_null(row),
                _ => nulls.as_ref().is_some_and(|n| n.is_null(row)),
            };
            if is_null {
                buf.extend_from_slice(b"null");
                continue;
            }
            match values {
                Values::Utf8(a) => write_string(a.value(row), &mut buf),
                Values::Int64(a) => write_number(a.value(row), &mut buf),
                Values::Int32(a) => write_number(a.value(row), &mut buf),
                Values::Float64(a) => {
                    let v = a.value(row);
                    if v.is_finite() {
                        write_number(v, &mut buf);
                    } else {
                        buf.extend_from_slice(b"null");
                    }
                }
                Values::Boolean(a) => {
                    buf.extend_from_slice(if a.value(row) { b"true" } else { b"false" })
                }
                Values::Other(encoder) => encoder.encode(row, &mut buf),
            }
        }
        buf.push(b'}');
        ranges.push(start..buf.len());
    }
    Ok(Lines { buf, ranges })
}

/// One column's values, typed where this module writes them itself.
enum Values<'a> {
    Utf8(&'a StringArray),
    Int64(&'a Int64Array),
    Int32(&'a Int32Array),
    Float64(&'a Float64Array),
    Boolean(&'a BooleanArray),
    Other(NullableEncoder<'a>),
}

/// `s` as a JSON string, escaped as serde_json (and so arrow) escapes it.
fn write_string(s: &str, out: &mut Vec<u8>) {
    if s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        // serde_json writes nothing but the string, into a Vec: it cannot fail.
        let _ = serde_json::to_writer(&mut *out, s);
        return;
    }
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Short byte runs (field names, numbers) are copied as a fixed [`PADDED`] bytes, which
/// the compiler turns into a few stores, and the surplus cut off again: a call to
/// `memmove` per run took 4 % of a SESSION ... EMIT CHANGES query's CPU.
const PADDED: usize = 32;
const _: () = assert!(lexical_core::BUFFER_SIZE >= PADDED);

/// Append `bytes[..len]` to `out`, where `bytes` holds at least [`PADDED`] bytes.
#[inline]
fn append_padded(bytes: &[u8], len: usize, out: &mut Vec<u8>) {
    if len <= PADDED {
        let end = out.len() + len;
        out.extend_from_slice(&bytes[..PADDED]);
        out.truncate(end);
    } else {
        out.extend_from_slice(&bytes[..len]);
    }
}

/// A run of bytes kept with zeros after it, to be appended by [`append_padded`].
struct Padded {
    bytes: Vec<u8>,
    len: usize,
}

impl Padded {
    fn new(mut bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        bytes.resize(len.max(PADDED), 0);
        Self { bytes, len }
    }

    #[inline]
    fn write(&self, out: &mut Vec<u8>) {
        append_padded(&self.bytes, self.len, out);
    }
}

/// `v` as arrow's JSON writer writes a number (with lexical-core).
#[inline]
fn write_number<N: lexical_core::ToLexical>(v: N, out: &mut Vec<u8>) {
    let mut digits = [0u8; lexical_core::BUFFER_SIZE];
    let len = lexical_core::write(v, &mut digits).len();
    append_padded(&digits, len, out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{BooleanArray, Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;

    #[test]
    fn rows_become_json_objects_keyed_by_the_key_column() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("card", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec![Some("c\n1"), None])),
                Arc::new(Float64Array::from(vec![Some(1.5), None])),
            ],
        )
        .expect("batch");
        let rows = encode_rows(&ChangeBatch::rows(batch.clone()), &[0]).expect("encodes");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.as_deref(), Some(&br#""c\n1""#[..]));
        let v: serde_json::Value =
            serde_json::from_slice(rows[0].value.as_deref().expect("value")).expect("json");
        assert_eq!(v["amount"], 1.5);
        let v: serde_json::Value =
            serde_json::from_slice(rows[1].value.as_deref().expect("value")).expect("json");
        assert!(v["card"].is_null());

        let rows = encode_rows(&ChangeBatch::rows(batch.clone()), &[1, 0]).expect("encodes");
        assert_eq!(
            rows[0].key.as_deref(),
            Some(&br#"{"amount":1.5,"card":"c\n1"}"#[..])
        );
        let rows = encode_rows(&ChangeBatch::rows(batch.clone()), &[1]).expect("encodes");
        assert_eq!(rows[0].key.as_deref(), Some(&b"1.5"[..]));
    }

    #[test]
    fn tombstones_have_a_key_and_no_value() {
        let schema = Arc::new(Schema::new(vec![Field::new("card", DataType::Utf8, true)]));
        let batch = RecordBatch::try_new(
            schema,
            vec![Arc::new(StringArray::from(vec![Some("a"), Some("b")]))],
        )
        .expect("batch");
        let change = ChangeBatch {
            rows: batch,
            tombstones: Some(BooleanArray::from(vec![true, false])),
            windows: None,
        };
        let rows = encode_rows(&change, &[0]).expect("encodes");
        assert_eq!(rows[0].key.as_deref(), Some(&br#""a""#[..]));
        assert_eq!(rows[0].value, None);
        assert!(rows[1].value.is_some());
    }

    #[test]
    fn batches_encoded_into_given_back_buffers_are_encoded_as_into_new_ones() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("card", DataType::Utf8, true),
            Field::new("amount", DataType::Float64, true),
        ]));
        let batch = |cards: Vec<Option<&str>>, tombstones: Option<Vec<bool>>| {
            let amounts: Vec<Option<f64>> = (0..cards.len()).map(|i| Some(i as f64)).collect();
            ChangeBatch {
                rows: RecordBatch::try_new(
                    schema.clone(),
                    vec![
                        Arc::new(StringArray::from(cards)),
                        Arc::new(Float64Array::from(amounts)),
                    ],
                )
                .expect("batch"),
                tombstones: tombstones.map(BooleanArray::from),
                windows: None,
            }
        };
        let long = batch(vec![Some("a-long-card-id"); 40], Some(vec![true; 40]));
        let short = batch(vec![Some("b"), None, Some("c")], None);
        // `batch` encoded into `spare`'s buffers, checked against a fresh encoding.
        let encode = |batch: &ChangeBatch, keys: &[usize], spare: &mut EncodeBuffers| {
            let rows = encode_batch_into(batch, keys, spare).expect("encodes");
            let fresh = encode_batch(batch, keys).expect("encodes");
            assert_eq!(rows.to_vec(), fresh.to_vec());
            assert_eq!(rows.values.buf, fresh.values.buf);
            let key_bytes = |rows: &EncodedRows| rows.keys.as_ref().map(|k| k.buf.clone());
            assert_eq!(key_bytes(&rows), key_bytes(&fresh));
            rows
        };
        for keys in [&[0][..], &[1, 0], &[1], &[]] {
            let mut spare = EncodeBuffers::default();
            let first = encode(&long, keys, &mut spare);
            let values = first.values.buf.as_ptr();
            spare.give_back(first);
            // Fewer, shorter rows, without tombstones, in the long batch's buffers.
            let second = encode(&short, keys, &mut spare);
            assert_eq!(second.values.buf.as_ptr(), values, "keys {keys:?}");
            // Filled less than a quarter: let go.
            spare.give_back(second);
            assert!(spare.values.is_none(), "keys {keys:?}");
            assert!(spare.tombstones.is_none(), "keys {keys:?}");
            let third = encode(&long, keys, &mut spare);
            let values = third.values.buf.as_ptr();
            spare.give_back(third);
            let fourth = encode(&long, keys, &mut spare);
            assert_eq!(fourth.values.buf.as_ptr(), values, "keys {keys:?}");
        }
    }

    mod differential {
        //! The rows written here equal arrow's JSON writer's, byte for byte, on random
        //! batches of every type this module writes itself and two it hands to arrow,
        //! with field names shorter and longer than a padded copy ([`PADDED`]).

        use datafusion::arrow::array::{ArrayRef, Int32Array, Int64Array, StringArray};
        use datafusion::arrow::array::{BooleanArray, Float64Array, TimestampMillisecondArray};
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
        use proptest::prelude::*;
        use std::sync::Arc;

        use super::super::*;

        fn arrow_lines(batch: &RecordBatch) -> Vec<Vec<u8>> {
            let mut buf = vec![];
            let mut writer = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut buf);
            writer.write(batch).expect("writes");
            writer.finish().expect("finishes");
            buf.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .map(<[u8]>::to_vec)
                .collect()
        }

        fn float() -> impl Strategy<Value = f64> {
            prop_oneof![
                any::<f64>(),
                Just(f64::NAN),
                Just(f64::INFINITY),
                Just(f64::NEG_INFINITY),
                Just(-0.0),
                Just(1e21),
                Just(1e-7),
                Just(f64::MIN_POSITIVE / 4.0),
                (-1e6f64..1e6).prop_map(|v| (v * 100.0).round() / 100.0),
            ]
        }

        fn text() -> impl Strategy<Value = String> {
            prop_oneof![
                "[a-z0-9-]{0,12}",
                "\\PC{0,8}",
                "[a-z\u{0}-\u{1f}\u{7f}]{0,8}",
                any::<String>(),
                Just("quote \" back \\ nl \n tab \t bell \u{7} del \u{7f} é 😀".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

            #[test]
            fn rows_equal_arrows_json_writers(
                rows in prop::collection::vec(
                    (
                        prop::option::weighted(0.8, text()),
                        prop::option::weighted(0.8, any::<i64>()),
                        prop::option::weighted(0.8, any::<i32>()),
                        prop::option::weighted(0.8, float()),
                        prop::option::weighted(0.8, any::<bool>()),
                        prop::option::weighted(0.8, -100_000_000_000i64..4_000_000_000_000),
                    ),
                    1..40,
                ),
                name in "[a-zA-Z_\"\\\\ é]{1,40}",
            ) {
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from(rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1).collect::<Vec<_>>())),
                    Arc::new(Int32Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
                    Arc::new(Float64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
                    Arc::new(BooleanArray::from(rows.iter().map(|r| r.4).collect::<Vec<_>>())),
                    Arc::new(TimestampMillisecondArray::from(rows.iter().map(|r| r.5).collect::<Vec<_>>())),
                    Arc::new(Int64Array::from(rows.iter().map(|r| r.1.map(|v| v / 3)).collect::<Vec<_>>()))
                        as ArrayRef,
                ];
                let types = [
                    DataType::Utf8,
                    DataType::Int64,
                    DataType::Int32,
                    DataType::Float64,
                    DataType::Boolean,
                    DataType::Timestamp(TimeUnit::Millisecond, None),
                    DataType::Int64,
                ];
                let fields: Vec<Field> = types
                    .iter()
                    .enumerate()
                    .map(|(i, t)| Field::new(format!("{name}{i}"), t.clone(), true))
                    .collect();
                let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                    .expect("batch");
                // Sliced too: the arrays' offsets must be honoured.
                for batch in [batch.clone(), batch.slice(rows.len() / 2, rows.len() - rows.len() / 2)] {
                    let ours = json_objects(&batch).expect("encodes");
                    let ours: Vec<Vec<u8>> =
                        (0..ours.ranges.len()).map(|i| ours.get(i).to_vec()).collect();
                    let text = |lines: &[Vec<u8>]| -> Vec<String> {
                        lines.iter().map(|l| String::from_utf8_lossy(l).into_owned()).collect()
                    };
                    prop_assert_eq!(text(&ours), text(&arrow_lines(&batch)));
                }
            }
        }
    }
}
