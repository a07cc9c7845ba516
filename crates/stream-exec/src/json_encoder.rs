//! Arrow to JSON records: one Kafka value (a JSON object with every column, nulls
//! included) and key per result row.
//!
//! The key is the key columns as JSON: a single column is written as its JSON value
//! (`"card-7"`, `42`; ksqlDB's JSON key format for one column), several as a JSON object.
//! A tombstone has a key and no value.

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

/// Encode `batch` as one JSON value per row, keyed by `key_columns`.
pub fn encode_rows(batch: &ChangeBatch, key_columns: &[usize]) -> Result<Vec<EncodedRow>> {
    let rows = &batch.rows;
    let values = json_lines(rows)?;
    let keys = encode_keys(rows, key_columns)?;
    Ok(keys
        .into_iter()
        .zip(values)
        .enumerate()
        .map(|(i, (key, value))| EncodedRow {
            key,
            value: (!batch.is_tombstone(i)).then_some(value),
        })
        .collect())
}

/// The Kafka key of each row of `rows`: `key_columns` as JSON; `None` without key columns.
pub fn encode_keys(rows: &RecordBatch, key_columns: &[usize]) -> Result<Vec<Option<Vec<u8>>>> {
    Ok(match key_columns {
        [] => vec![None; rows.num_rows()],
        [one] => single_keys(rows, *one)?,
        many => {
            let keys = rows
                .project(many)
                .map_err(ExecError::arrow("projecting key columns"))?;
            json_lines(&keys)?.into_iter().map(Some).collect()
        }
    })
}

/// The JSON value of column `index` per row.
fn single_keys(rows: &RecordBatch, index: usize) -> Result<Vec<Option<Vec<u8>>>> {
    let column = rows.column(index);
    if let DataType::Utf8 = column.data_type() {
        let strings = column.as_string::<i32>();
        return Ok((0..strings.len())
            .map(|i| {
                Some(if strings.is_null(i) {
                    b"null".to_vec()
                } else {
                    serde_json::to_vec(strings.value(i)).unwrap_or_else(|_| b"null".to_vec())
                })
            })
            .collect());
    }
    // Each line is `{"<name>":<value>}`: the value is what lies between the two.
    let prefix = serde_json::to_vec(rows.schema().field(index).name())
        .map_err(|e| ExecError::internal("JsonEncoder", &format!("encoding a key name: {e}")))?
        .len()
        + 2;
    let projected = rows
        .project(&[index])
        .map_err(ExecError::arrow("projecting key columns"))?;
    json_lines(&projected)?
        .into_iter()
        .map(
            |line| match line.get(prefix..line.len().saturating_sub(1)) {
                Some(value) => Ok(Some(value.to_vec())),
                None => Err(ExecError::internal(
                    "JsonEncoder",
                    "an encoded key is not a one-field object",
                )),
            },
        )
        .collect()
}

fn json_lines(batch: &RecordBatch) -> Result<Vec<Vec<u8>>> {
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
    Ok(buf
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect())
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
