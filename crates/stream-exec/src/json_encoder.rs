//! Arrow to JSON records: one Kafka value (a JSON object with every column, nulls
//! included) and key per result row.
//!
//! The key is the key columns as JSON: a single column is written as its JSON value
//! (`"card-7"`, `42`; ksqlDB's JSON key format for one column), several as a JSON object.
//! A tombstone has a key and no value.

use std::ops::Range;

use datafusion::arrow::array::{Array, AsArray, RecordBatch};
use datafusion::arrow::datatypes::DataType;
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};

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
#[derive(Debug)]
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
#[derive(Debug)]
struct Lines {
    buf: Vec<u8>,
    ranges: Vec<Range<usize>>,
}

impl Lines {
    fn get(&self, i: usize) -> &[u8] {
        &self.buf[self.ranges[i].clone()]
    }
}

/// Encode `batch` as one JSON value per row, keyed by `key_columns`.
pub fn encode_batch(batch: &ChangeBatch, key_columns: &[usize]) -> Result<EncodedRows> {
    let rows = &batch.rows;
    Ok(EncodedRows {
        values: json_lines(rows)?,
        keys: key_lines(rows, key_columns)?,
        tombstones: (0..rows.num_rows())
            .map(|i| batch.is_tombstone(i))
            .collect(),
    })
}

/// Encode `batch` as one JSON value per row, keyed by `key_columns`, each row with its
/// own copies (see [`encode_batch`] for the batch in one buffer).
pub fn encode_rows(batch: &ChangeBatch, key_columns: &[usize]) -> Result<Vec<EncodedRow>> {
    Ok(encode_batch(batch, key_columns)?.to_vec())
}

/// The keys of `rows` in one buffer; `None` without key columns.
fn key_lines(rows: &RecordBatch, key_columns: &[usize]) -> Result<Option<Lines>> {
    Ok(match key_columns {
        [] => None,
        [one] => Some(single_keys(rows, *one)?),
        many => {
            let keys = rows
                .project(many)
                .map_err(ExecError::arrow("projecting key columns"))?;
            Some(json_lines(&keys)?)
        }
    })
}

/// The JSON value of column `index` per row.
fn single_keys(rows: &RecordBatch, index: usize) -> Result<Lines> {
    let column = rows.column(index);
    if let DataType::Utf8 = column.data_type() {
        let strings = column.as_string::<i32>();
        let mut buf = Vec::with_capacity(strings.values().len() + strings.len() * 3);
        let mut ranges = Vec::with_capacity(strings.len());
        for i in 0..strings.len() {
            let start = buf.len();
            if strings.is_null(i) {
                buf.extend_from_slice(b"null");
            } else {
                serde_json::to_writer(&mut buf, strings.value(i)).map_err(|e| {
                    ExecError::internal("JsonEncoder", &format!("encoding a key: {e}"))
                })?;
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
    let mut lines = json_lines(&projected)?;
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

/// Each row of `batch` as a JSON object, in one buffer.
fn json_lines(batch: &RecordBatch) -> Result<Lines> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    {
        let mut writer = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut buf);
        writer
            .write(batch)
            .map_err(ExecError::arrow("encoding JSON"))?;
        writer.finish().map_err(ExecError::arrow("encoding JSON"))?;
    }
    // JSON escapes newlines inside strings, so each line is one row.
    let mut ranges = Vec::with_capacity(batch.num_rows());
    let mut start = 0;
    for end in memchr::memchr_iter(b'\n', &buf) {
        if end > start {
            ranges.push(start..end);
        }
        start = end + 1;
    }
    if ranges.len() != batch.num_rows() {
        return Err(ExecError::internal(
            "JsonEncoder",
            "the JSON writer did not write one line per row",
        ));
    }
    Ok(Lines { buf, ranges })
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
        };
        let rows = encode_rows(&change, &[0]).expect("encodes");
        assert_eq!(rows[0].key.as_deref(), Some(&br#""a""#[..]));
        assert_eq!(rows[0].value, None);
        assert!(rows[1].value.is_some());
    }
}
