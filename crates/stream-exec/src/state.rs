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

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch, RecordBatchOptions};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{Field, FieldRef, Schema, SchemaRef};
use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;

use crate::error::{ExecError, Result};
use crate::json_encoder;
use crate::state_rows::{RowCodec, FORMAT};

/// One changelog record: a state entry's key and its value, `None` when it was removed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    /// The entry's key (JSON, as the operator encodes its groups).
    pub key: Vec<u8>,
    /// The entry's state (see [`StateCodec`]); `None` deletes it.
    pub value: Option<Vec<u8>>,
}

/// The changelog key of each of `rows` rows: the `columns` (named `names`) as one JSON
/// object, byte for byte as arrow's JSON writer writes a row with explicit nulls (keys
/// written before must still match); `[]` when there are none (a single global group).
pub(crate) fn json_keys(
    columns: &[ArrayRef],
    names: &[String],
    rows: usize,
) -> Result<Vec<Vec<u8>>> {
    if columns.is_empty() {
        return Ok(vec![b"[]".to_vec(); rows]);
    }
    let fields: Vec<FieldRef> = columns
        .iter()
        .zip(names)
        .map(|(array, name)| Arc::new(Field::new(name, array.data_type().clone(), true)))
        .collect();
    let batch = RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        columns.to_vec(),
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
    .map_err(ExecError::arrow("encoding keys"))?;
    Ok(json_encoder::json_objects(&batch)?.into_vec())
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

    /// A message of no rows, to [`StateCodec::append`] rows to, with room for `bytes`
    /// more.
    pub(crate) fn message_with_capacity(&self, bytes: usize) -> Vec<u8> {
        let mut message = Vec::with_capacity(1 + bytes);
        if self.rows.is_some() {
            message.push(FORMAT);
        }
        message
    }

    /// Row `i` of `batch` appended to `messages[owners[i]]`, each message begun as
    /// [`StateCodec::message_with_capacity`]: so one message can hold rows of several batches.
    pub(crate) fn append(
        &self,
        batch: &RecordBatch,
        owners: &[usize],
        messages: &mut [Vec<u8>],
    ) -> Result<()> {
        if let Some(rows) = &self.rows {
            rows.append(batch, owners, messages);
            return Ok(());
        }
        // IPC: a message of one row per row; messages read back one after another.
        let ranges: Vec<(usize, usize)> = (0..owners.len()).map(|i| (i, 1)).collect();
        for (message, &owner) in self.encode(batch, &ranges)?.into_iter().zip(owners) {
            messages[owner].extend_from_slice(&message);
        }
        Ok(())
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
    use datafusion::arrow::array::TimestampMillisecondArray;
    use datafusion::arrow::array::{Float64Array, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Schema};
    use datafusion::common::ScalarValue;

    use super::*;
    use crate::json_encoder::encode_batch;
    use crate::operator::ChangeBatch;

    #[test]
    fn keys_are_written_as_arrows_json_writer_writes_rows() {
        let k: ArrayRef = Arc::new(StringArray::from(vec![
            Some("card-1"),
            None,
            Some("quote \" and \\ and \n and \u{1} and é"),
        ]));
        let n: ArrayRef = Arc::new(Int64Array::from(vec![Some(-7), Some(0), None]));
        let x: ArrayRef = Arc::new(Float64Array::from(vec![Some(1.5), Some(f64::NAN), None]));
        let start = ScalarValue::TimestampMillisecond(Some(1_700_000_040_700), None);
        let end = ScalarValue::Int64(Some(1_700_000_100_000));
        let none = ScalarValue::Utf8(None);
        let names: Vec<String> = ["K", "ws", "N", "WINDOWEND", "x", "nothing"]
            .map(String::from)
            .to_vec();
        // The same bytes as the writer that made the keys before.
        let columns: Vec<ArrayRef> = vec![
            k.clone(),
            start.to_array_of_size(3).unwrap(),
            n.clone(),
            end.to_array_of_size(3).unwrap(),
            x.clone(),
            none.to_array_of_size(3).unwrap(),
        ];
        let fields: Vec<Field> = columns
            .iter()
            .zip(&names)
            .map(|(c, name)| Field::new(name, c.data_type().clone(), true))
            .collect();
        let keys = json_keys(&columns, &names, 3).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&keys[0]),
            r#"{"K":"card-1","ws":"2023-11-14T22:14:00.700","N":-7,"WINDOWEND":1700000100000,"x":1.5,"nothing":null}"#
        );
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).unwrap();
        let written = encode_batch(&ChangeBatch::rows(batch), &[0, 1, 2, 3, 4, 5]).unwrap();
        let before: Vec<Vec<u8>> = (0..written.len())
            .map(|i| written.key(i).unwrap_or_default().to_vec())
            .collect();
        assert_eq!(keys, before);
        let ts: ArrayRef = Arc::new(TimestampMillisecondArray::from(vec![
            Some(0),
            None,
            Some(1),
        ]));
        let rows = json_keys(&[ts], &names[1..2], 3).unwrap();
        assert_eq!(rows[0], br#"{"ws":"1970-01-01T00:00:00"}"#.to_vec());
        assert_eq!(rows[1], br#"{"ws":null}"#.to_vec());
        assert_eq!(json_keys(&[], &[], 2).unwrap(), vec![b"[]".to_vec(); 2]);
    }

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
