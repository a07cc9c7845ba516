//! Arrow to JSON records: one Kafka value (a JSON object with every column, nulls
//! included) and key per result row.
//!
//! The key is the key columns: a single column is written as its plain text (ksqlDB's
//! KAFKA key format), several as a JSON object.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::json::writer::{LineDelimited, WriterBuilder};
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::error::{ExecError, Result};

/// One encoded result row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedRow {
    /// The Kafka key, if the result has key columns.
    pub key: Option<Vec<u8>>,
    /// The JSON value.
    pub value: Vec<u8>,
}

/// Encode `batch` as one JSON value per row, keyed by `key_columns`.
pub fn encode_rows(batch: &RecordBatch, key_columns: &[usize]) -> Result<Vec<EncodedRow>> {
    let values = json_lines(batch)?;
    let keys: Vec<Option<Vec<u8>>> = match key_columns {
        [] => vec![None; batch.num_rows()],
        [one] => {
            let options = FormatOptions::default().with_null("");
            let formatter = ArrayFormatter::try_new(batch.column(*one).as_ref(), &options)
                .map_err(ExecError::arrow("formatting keys"))?;
            (0..batch.num_rows())
                .map(|i| Some(formatter.value(i).to_string().into_bytes()))
                .collect()
        }
        many => {
            let keys = batch
                .project(many)
                .map_err(ExecError::arrow("projecting key columns"))?;
            json_lines(&keys)?.into_iter().map(Some).collect()
        }
    };
    Ok(keys
        .into_iter()
        .zip(values)
        .map(|(key, value)| EncodedRow { key, value })
        .collect())
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
    use datafusion::arrow::array::{Float64Array, StringArray};
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
        let rows = encode_rows(&batch, &[0]).expect("encodes");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].key.as_deref(), Some(&b"c\n1"[..]));
        let v: serde_json::Value = serde_json::from_slice(&rows[0].value).expect("json");
        assert_eq!(v["amount"], 1.5);
        let v: serde_json::Value = serde_json::from_slice(&rows[1].value).expect("json");
        assert!(v["card"].is_null());
    }
}
