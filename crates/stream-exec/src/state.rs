//! Durable operator state: the records a stateful operator writes to its changelog, and
//! how their values are encoded.
//!
//! A stateful operator keeps its state in memory and, after each batch, hands over the
//! entries that changed as [`StateChange`]s: a key (the group's JSON key) and the entry's
//! current state, or `None` once the entry is gone. The query writes them to a compacted
//! changelog topic in the same Kafka transaction as its results and consumer offsets, so
//! the changelog always matches the committed input position. At start (and after an
//! aborted transaction) the query reads the changelog back and the operator rebuilds its
//! entries from the latest value of each key.
//!
//! The operator knows the schema of its state rows (group key columns, each aggregate's
//! intermediate state as DataFusion's `Accumulator::state` gives it, and bookkeeping
//! columns), so values do not carry it. When every column is a plain one (numbers,
//! timestamps, booleans, strings) a value is in the compact encoding of
//! [`crate::state_rows`]; otherwise (a COLLECT_LIST's list, say) it is an Arrow IPC
//! record batch message, and [`StateCodec::decode`] puts the schema message in front of
//! the stored messages to read them back. Decoding takes either, so a changelog written
//! before the compact encoding existed still reads back.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::error::{ExecError, Result};
use crate::json_encoder::encode_keys;
use crate::state_rows::{RowCodec, FORMAT};

/// One changelog record: a state entry's key and its value, `None` when it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The entry's key (JSON, as the operator encodes its groups).
    pub key: Vec<u8>,
    /// The entry's state (see [`StateCodec`]); `None` deletes it.
    pub value: Option<Vec<u8>>,
}

/// The changelog key of each row of `columns` (named `names`): the columns as JSON, as a
/// result's Kafka key is written; `[]` when there are none (a single global group).
pub(crate) fn json_keys(
    columns: &[ArrayRef],
    names: &[String],
    rows: usize,
) -> Result<Vec<Vec<u8>>> {
    if columns.is_empty() {
        return Ok(vec![b"[]".to_vec(); rows]);
    }
    let fields: Vec<Field> = columns
        .iter()
        .zip(names)
        .map(|(c, n)| Field::new(n, c.data_type().clone(), true))
        .collect();
    let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns.to_vec())
        .map_err(ExecError::arrow("encoding state keys"))?;
    let all: Vec<usize> = (0..columns.len()).collect();
    Ok(encode_keys(&batch, &all)?
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect())
}

/// Encodes state rows of one schema as messages, and reads them back (see the module
/// docs for the two encodings).
pub(crate) struct StateCodec {
    schema: SchemaRef,
    /// The IPC stream header (the schema message).
    header: Vec<u8>,
    /// The compact encoding, when it covers every column.
    rows: Option<RowCodec>,
}

impl StateCodec {
    pub(crate) fn new(schema: SchemaRef) -> Result<Self> {
        let writer = StreamWriter::try_new(Vec::new(), &schema)
            .map_err(ExecError::arrow("encoding a state schema"))?;
        let header = writer.get_ref().clone();
        let rows = RowCodec::new(&schema);
        Ok(Self {
            schema,
            header,
            rows,
        })
    }

    pub(crate) fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// One message per range `(offset, length)` of `batch`'s rows.
    pub(crate) fn encode(
        &self,
        batch: &RecordBatch,
        ranges: &[(usize, usize)],
    ) -> Result<Vec<Vec<u8>>> {
        if let Some(rows) = &self.rows {
            return rows.encode(batch, ranges);
        }
        let mut writer = StreamWriter::try_new(Vec::new(), &self.schema)
            .map_err(ExecError::arrow("encoding state"))?;
        let mut messages = Vec::with_capacity(ranges.len());
        for &(offset, length) in ranges {
            let before = writer.get_ref().len();
            writer
                .write(&batch.slice(offset, length))
                .map_err(ExecError::arrow("encoding state"))?;
            messages.push(writer.get_ref()[before..].to_vec());
        }
        Ok(messages)
    }

    /// The rows of `messages`, in order, as one batch.
    pub(crate) fn decode<'a>(
        &self,
        messages: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<RecordBatch> {
        // Runs of messages in one encoding, in order.
        let mut runs: Vec<(bool, Vec<&[u8]>)> = vec![];
        for m in messages {
            let compact = m.first() == Some(&FORMAT);
            match runs.last_mut() {
                Some((c, run)) if *c == compact => run.push(m),
                _ => runs.push((compact, vec![m])),
            }
        }
        let mut batches = Vec::with_capacity(runs.len());
        for (compact, run) in runs {
            batches.push(match (compact, &self.rows) {
                (false, _) => self.decode_ipc(run)?,
                (true, Some(rows)) => rows.decode(run)?,
                (true, None) => {
                    return Err(ExecError::internal(
                        "StateCodec",
                        "a compact state record for a schema it does not cover",
                    ))
                }
            });
        }
        concat_batches(&self.schema, &batches).map_err(ExecError::arrow("reading state"))
    }

    fn decode_ipc(&self, messages: Vec<&[u8]>) -> Result<RecordBatch> {
        let mut stream = self.header.clone();
        for m in messages {
            stream.extend_from_slice(m);
        }
        let reader = StreamReader::try_new(std::io::Cursor::new(stream), None)
            .map_err(ExecError::arrow("reading state"))?;
        let batches = reader
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ExecError::arrow("reading state"))?;
        concat_batches(&self.schema, &batches).map_err(ExecError::arrow("reading state"))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Int64Array, StringArray};
    use datafusion::arrow::datatypes::DataType;

    use super::*;

    /// A batch of a non-null string key `k` and a nullable count `n`.
    fn keys_and_counts(keys: &[&str], counts: &[Option<i64>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, false),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(keys.to_vec())),
                Arc::new(Int64Array::from(counts.to_vec())),
            ],
        )
        .unwrap()
    }

    #[test]
    fn messages_read_back_as_the_rows_they_hold() {
        let batch = keys_and_counts(&["a", "b", "c"], &[Some(1), None, Some(3)]);
        let schema = batch.schema();
        let codec = StateCodec::new(schema).unwrap();
        let messages = codec.encode(&batch, &[(0, 1), (1, 2)]).unwrap();
        assert_eq!(messages.len(), 2);
        let back = codec
            .decode([messages[1].as_slice(), messages[0].as_slice()])
            .unwrap();
        let expected = keys_and_counts(&["b", "c", "a"], &[None, Some(3), Some(1)]);
        assert_eq!(back, expected);
        assert!(codec.decode([]).unwrap().num_rows() == 0);
    }

    #[test]
    fn ipc_records_of_an_older_changelog_still_read_back_beside_compact_ones() {
        let batch = keys_and_counts(&["a", "b"], &[Some(1), None]);
        let schema = batch.schema();
        let compact = StateCodec::new(schema.clone()).unwrap();
        let mut ipc = StateCodec::new(schema).unwrap();
        ipc.rows = None;
        let old = ipc.encode(&batch, &[(0, 1)]).unwrap().remove(0);
        let new = compact.encode(&batch, &[(1, 1)]).unwrap().remove(0);
        assert_eq!(old[0], 0xFF);
        assert_eq!(new[0], FORMAT);
        assert!(new.len() < old.len() / 4, "{} vs {}", new.len(), old.len());
        let back = compact.decode([old.as_slice(), new.as_slice()]).unwrap();
        assert_eq!(back, batch);
        assert!(ipc.decode([new.as_slice()]).is_err());
    }
}
