//! JSON record values to Arrow: many records into one `RecordBatch`, with every record
//! that cannot be decoded reported by index instead of failing the batch.
//!
//! The fast path is `json_flat::FlatDecoder`: flat objects read in one pass straight into Arrow
//! builders, for schemas of plain types. It gives up on a batch unless its result is
//! certain to be arrow-json's. Then all values go to one arrow-json decoder, and only
//! when that fails is the batch decoded again record by record, to find and skip the bad
//! ones.

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::reader::{Decoder, ReaderBuilder};

use crate::error::{ExecError, Result};
use crate::json_flat::FlatDecoder;

/// Decodes JSON objects into batches of one schema.
#[derive(Debug, Clone)]
pub struct JsonDecoder {
    schema: SchemaRef,
    /// The fast path, when the schema's types allow it.
    flat: Option<FlatDecoder>,
}

/// The result of decoding a set of values.
#[derive(Debug)]
pub struct Decoded {
    /// One row per good value, in input order.
    pub batch: RecordBatch,
    /// For each row of `batch`, the index of its value in the input.
    pub rows: Vec<usize>,
    /// Values that could not be decoded: input index and the reason.
    pub errors: Vec<(usize, String)>,
}

impl JsonDecoder {
    /// A decoder for objects with the fields of `schema` (missing fields are null,
    /// extra fields are ignored).
    pub fn new(schema: SchemaRef) -> Self {
        let flat = FlatDecoder::for_schema(&schema);
        Self { schema, flat }
    }

    fn decoder(&self, batch_size: usize) -> Result<Decoder> {
        ReaderBuilder::new(self.schema.clone())
            .with_batch_size(batch_size.max(1))
            .build_decoder()
            .map_err(ExecError::arrow("building the JSON decoder"))
    }

    /// The schema of the batches it decodes.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Decode `values`; bad ones are listed in [`Decoded::errors`].
    pub fn decode(&self, values: &[&[u8]]) -> Result<Decoded> {
        match self.decode_fast(values)? {
            Some(batch) => Ok(all_rows(batch, values.len())),
            None => self.decode_with_arrow_json(values),
        }
    }

    /// The fast path alone: `None` when it gave up on `values` (or the schema). Public
    /// for tests and benches, which check that it is taken and agrees with arrow-json.
    #[doc(hidden)]
    pub fn decode_fast(&self, values: &[&[u8]]) -> Result<Option<RecordBatch>> {
        match &self.flat {
            Some(flat) => flat.decode(values),
            None => Ok(None),
        }
    }

    /// `values` decoded by arrow-json alone, as before the fast path. Public for tests
    /// and benches, which compare the two.
    #[doc(hidden)]
    pub fn decode_with_arrow_json(&self, values: &[&[u8]]) -> Result<Decoded> {
        if let Some(batch) = self.decode_all(values)? {
            return Ok(all_rows(batch, values.len()));
        }
        let mut batches = Vec::with_capacity(values.len());
        let mut rows = Vec::with_capacity(values.len());
        let mut errors = vec![];
        for (i, v) in values.iter().enumerate() {
            match self.decode_one(v)? {
                Ok(batch) => {
                    batches.push(batch);
                    rows.push(i);
                }
                Err(message) => errors.push((i, message)),
            }
        }
        let batch = concat_batches(&self.schema, &batches)
            .map_err(ExecError::arrow("joining decoded records"))?;
        Ok(Decoded {
            batch,
            rows,
            errors,
        })
    }

    /// All values at once; `None` when any of them is bad.
    fn decode_all(&self, values: &[&[u8]]) -> Result<Option<RecordBatch>> {
        let mut decoder = self.decoder(values.len())?;
        for (i, v) in values.iter().enumerate() {
            let consumed = match decoder.decode(v) {
                Ok(n) => n,
                Err(_) => return Ok(None),
            };
            // Exactly one complete object per value, or the values bleed into each other.
            if !fully_consumed(v, consumed) || decoder.len() != i + 1 {
                return Ok(None);
            }
        }
        match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == values.len() => Ok(Some(batch)),
            Ok(None) if values.is_empty() => Ok(Some(RecordBatch::new_empty(self.schema.clone()))),
            _ => Ok(None),
        }
    }

    /// One value; the inner error says what is wrong with it.
    fn decode_one(&self, value: &[u8]) -> Result<Result<RecordBatch, String>> {
        let mut decoder = self.decoder(1)?;
        let text = String::from_utf8_lossy(value);
        if text.trim().is_empty() {
            return Ok(Err("the value is empty".to_string()));
        }
        let consumed = match decoder.decode(value) {
            Ok(n) => n,
            Err(e) => return Ok(Err(describe(e))),
        };
        if decoder.len() != 1 || !fully_consumed(value, consumed) {
            return Ok(Err(if decoder.has_partial_record() {
                "the value is not complete JSON".to_string()
            } else {
                "the value must hold exactly one JSON object".to_string()
            }));
        }
        Ok(match decoder.flush() {
            Ok(Some(batch)) if batch.num_rows() == 1 => Ok(batch),
            Ok(_) => Err("the value must hold exactly one JSON object".to_string()),
            Err(e) => Err(describe(e)),
        })
    }
}

/// A batch that holds every one of `n` values, in order.
fn all_rows(batch: RecordBatch, n: usize) -> Decoded {
    Decoded {
        batch,
        rows: (0..n).collect(),
        errors: vec![],
    }
}

/// The decoder stops once its batch is full, so trailing bytes that are only whitespace
/// are fine; anything else is a second value.
fn fully_consumed(value: &[u8], consumed: usize) -> bool {
    value[consumed.min(value.len())..]
        .iter()
        .all(u8::is_ascii_whitespace)
}

fn describe(e: datafusion::arrow::error::ArrowError) -> String {
    let text = e.to_string();
    let text = text
        .strip_prefix("Json error: ")
        .or_else(|| text.strip_prefix("Parser error: "))
        .unwrap_or(&text);
    format!("invalid JSON value: {}", text.trim_end_matches('.'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Array, AsArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    fn decoder() -> JsonDecoder {
        JsonDecoder::new(Arc::new(Schema::new(vec![
            Field::new("id", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ])))
    }

    #[test]
    fn good_values_decode_in_one_batch() {
        let d = decoder()
            .decode(&[br#"{"id":"a","n":1}"#, br#"{"n":2,"extra":true}"#])
            .expect("decodes");
        assert_eq!(d.batch.num_rows(), 2);
        assert!(d.errors.is_empty());
        assert!(d.batch.column(0).is_null(1));
    }

    #[test]
    fn bad_values_are_skipped_and_reported_by_index() {
        let values: Vec<&[u8]> = vec![
            br#"{"id":"a","n":1}"#,
            b"not json",
            br#"{"id":"b","n":"seven"}"#,
            br#"{"id":"c""#,
            br#"{"id":"d","n":4}{"id":"e"}"#,
            br#"{"id":"f","n":6}"#,
        ];
        let d = decoder().decode(&values).expect("decodes");
        assert_eq!(d.rows, vec![0, 5]);
        let bad: Vec<usize> = d.errors.iter().map(|(i, _)| *i).collect();
        assert_eq!(bad, vec![1, 2, 3, 4]);
        let n = d.batch.column(1).as_primitive::<Int64Type>();
        assert_eq!((n.value(0), n.value(1)), (1, 6));
    }
}
