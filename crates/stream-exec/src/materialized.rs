//! `MaterializedTable`: the current rows of a table a CTAS writes, queryable by pull
//! queries.
//!
//! It is fed the same result batches the query writes to its topic, after the broker has
//! acknowledged them, and keyed by the same Kafka key: a row replaces the row with its key,
//! a tombstone deletes it. So its content is what a reader of the compacted topic would
//! see. Rows are held in arrow's row format, one per key, in a hash map (applying a
//! batch's rows is on the query's path); a snapshot puts them in key order.
//!
//! A windowed table forgets windows that ended more than its retention before the newest
//! window end it has seen, so it stays bounded on an unbounded stream.

use std::collections::BTreeMap;
use std::hash::BuildHasher;
use std::sync::RwLock;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::error::{ExecError, Result};
use crate::json_decoder::JsonDecoder;
use crate::json_encoder::EncodedRows;
use crate::operator::ChangeBatch;

/// A table's current rows by key. Cheap to share; reads take a snapshot.
pub struct MaterializedTable {
    schema: SchemaRef,
    converter: RowConverter,
    rows: RwLock<Rows>,
    /// For windowed tables: the window end column and the retention in ms.
    window: Option<(usize, i64)>,
}

/// One key's row.
struct Row {
    /// The key's hash: growing the table does not hash every key again (a windowed
    /// table grows by a window's keys each window).
    hash: u64,
    key: Vec<u8>,
    /// In arrow's row format. A row that replaces another is written into its buffer:
    /// updating a key allocates nothing.
    row: Vec<u8>,
}

#[derive(Default)]
struct Rows {
    by_key: HashTable<Row>,
    hasher: RandomState,
    /// Keys by window end, for windowed tables.
    by_end: BTreeMap<i64, Vec<Vec<u8>>>,
    newest_end: i64,
}

impl Rows {
    /// Insert or replace the row of `key`, whose window ends at `end` (windowed tables).
    fn upsert(&mut self, key: &[u8], row: &[u8], end: Option<i64>) {
        if let Some(end) = end {
            self.newest_end = self.newest_end.max(end);
        }
        let hash = self.hasher.hash_one(key);
        match self.by_key.entry(hash, |r| r.key == key, |r| r.hash) {
            Entry::Occupied(mut e) => {
                let held = &mut e.get_mut().row;
                held.clear();
                held.extend_from_slice(row);
            }
            Entry::Vacant(e) => {
                e.insert(Row {
                    hash,
                    key: key.to_vec(),
                    row: row.to_vec(),
                });
                if let Some(end) = end {
                    self.by_end.entry(end).or_default().push(key.to_vec());
                }
            }
        }
    }

    /// Delete the row of `key`, if there is one.
    fn remove(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.by_key.find_entry(hash, |r| r.key == key) {
            e.remove();
        }
    }
}

impl std::fmt::Debug for MaterializedTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MaterializedTable")
            .field("schema", &self.schema)
            .field("rows", &self.len())
            .finish()
    }
}

impl MaterializedTable {
    /// An empty table of result rows with `schema`, keyed by the Kafka keys of the records
    /// they are written as; `window` is the window end column and retention of a windowed
    /// table.
    pub fn new(schema: SchemaRef, window: Option<(usize, i64)>) -> Result<Self> {
        let converter = RowConverter::new(
            schema
                .fields()
                .iter()
                .map(|f| SortField::new(f.data_type().clone()))
                .collect(),
        )
        .map_err(ExecError::arrow("encoding table rows"))?;
        Ok(Self {
            schema,
            converter,
            rows: RwLock::new(Rows {
                newest_end: i64::MIN,
                ..Rows::default()
            }),
            window,
        })
    }

    /// The schema of its rows.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.rows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// Whether it has no rows.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Apply one result batch whose Kafka records are `encoded` (as
    /// [`encode_batch`](crate::json_encoder::encode_batch) wrote them for this table's
    /// key columns): rows upsert by their records' keys, tombstones delete.
    pub fn apply_encoded(&self, batch: &ChangeBatch, encoded: &EncodedRows) -> Result<()> {
        let (rows, ends) = self.encode(&batch.rows)?;
        let ends = ends
            .as_ref()
            .map(|e| e.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
        let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
        for i in 0..batch.rows.num_rows() {
            let key = encoded.key(i).unwrap_or_default();
            if batch.is_tombstone(i) {
                table.remove(key);
                continue;
            }
            table.upsert(key, rows.row(i).data(), ends.map(|e| e.value(i)));
        }
        self.evict(&mut table);
        Ok(())
    }

    /// Fill the table from its topic read back: `latest` holds the latest value (a JSON
    /// result row) of each Kafka key. Values that cannot be decoded are skipped and
    /// logged. Returns how many rows it holds.
    pub fn restore(&self, latest: &std::collections::HashMap<Vec<u8>, Vec<u8>>) -> Result<usize> {
        let (keys, values): (Vec<&Vec<u8>>, Vec<&[u8]>) =
            latest.iter().map(|(k, v)| (k, v.as_slice())).unzip();
        let decoded = JsonDecoder::new(self.schema.clone()).decode(&values)?;
        for (i, reason) in &decoded.errors {
            tracing::warn!(key = %String::from_utf8_lossy(keys[*i]), reason, "a table row read back could not be decoded; skipped");
        }
        let (rows, ends) = self.encode(&decoded.batch)?;
        let ends = ends
            .as_ref()
            .map(|e| e.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
        let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
        for (row, &input) in decoded.rows.iter().enumerate() {
            table.upsert(
                keys[input],
                rows.row(row).data(),
                ends.map(|e| e.value(row)),
            );
        }
        self.evict(&mut table);
        Ok(table.by_key.len())
    }

    /// `batch` in the row format, and for a windowed table its window ends as BIGINT.
    fn encode(
        &self,
        batch: &RecordBatch,
    ) -> Result<(
        datafusion::arrow::row::Rows,
        Option<datafusion::arrow::array::ArrayRef>,
    )> {
        let rows = self
            .converter
            .convert_columns(batch.columns())
            .map_err(ExecError::arrow("encoding table rows"))?;
        let ends = match self.window {
            Some((column, _)) => Some(
                datafusion::arrow::compute::cast(
                    batch.column(column),
                    &datafusion::arrow::datatypes::DataType::Int64,
                )
                .map_err(ExecError::arrow("reading window ends"))?,
            ),
            None => None,
        };
        Ok((rows, ends))
    }

    /// A windowed table forgets windows that ended more than its retention before the
    /// newest window end.
    fn evict(&self, table: &mut Rows) {
        if let Some((_, retention)) = self.window {
            let cutoff = table.newest_end.saturating_sub(retention);
            while let Some(entry) = table.by_end.first_entry() {
                if *entry.key() >= cutoff {
                    break;
                }
                for key in entry.remove() {
                    table.remove(&key);
                }
            }
        }
    }

    /// The current rows, in key order.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let table = self.rows.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&Vec<u8>, &Vec<u8>)> =
            table.by_key.iter().map(|r| (&r.key, &r.row)).collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let parser = self.converter.parser();
        let columns = self
            .converter
            .convert_rows(rows.into_iter().map(|(_, r)| parser.parse(r)))
            .map_err(ExecError::arrow("decoding table rows"))?;
        drop(table);
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building a table snapshot"))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::*;
    use crate::json_encoder::encode_batch;

    /// Apply `batches` in order, keyed by `table`'s first column, as a query writes them.
    fn apply(table: &MaterializedTable, batches: &[ChangeBatch]) {
        for b in batches {
            let encoded = encode_batch(b, &[0]).expect("encode");
            table.apply_encoded(b, &encoded).expect("apply");
        }
    }

    fn batch(keys: &[&str], n: &[i64], tombstones: Option<Vec<bool>>) -> ChangeBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        ChangeBatch {
            rows: RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from(keys.to_vec())),
                    Arc::new(Int64Array::from(n.to_vec())),
                ],
            )
            .expect("batch"),
            tombstones: tombstones.map(BooleanArray::from),
        }
    }

    #[test]
    fn rows_upsert_by_key_and_tombstones_delete() {
        let first = batch(&["a", "b", "a"], &[1, 1, 2], None);
        let table = MaterializedTable::new(first.rows.schema(), None).expect("table");
        apply(&table, &[first]);
        apply(
            &table,
            &[batch(&["b", "c"], &[0, 5], Some(vec![true, false]))],
        );
        let snap = table.snapshot().expect("snapshot");
        let keys = snap
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        let n = snap
            .column(1)
            .as_any()
            .downcast_ref::<Int64Array>()
            .expect("ints");
        assert_eq!(
            (0..snap.num_rows())
                .map(|i| (keys.value(i).to_string(), n.value(i)))
                .collect::<Vec<_>>(),
            vec![("a".to_string(), 2), ("c".to_string(), 5)]
        );
    }

    #[test]
    fn windows_older_than_the_retention_are_forgotten() {
        // Column 1 holds the window end here; the key is the window (column 0).
        let first = batch(&["w1", "w2"], &[1_000, 2_000], None);
        let table = MaterializedTable::new(first.rows.schema(), Some((1, 1_500))).expect("table");
        apply(&table, &[first]);
        assert_eq!(table.len(), 2);
        apply(&table, &[batch(&["w3"], &[3_000], None)]);
        // Newest end 3000, retention 1500: w1 (ended 1000) is gone, w2 (2000) stays.
        assert_eq!(table.len(), 2);
        let snap = table.snapshot().expect("snapshot");
        let keys = snap
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .expect("strings");
        assert_eq!(keys.value(0), "w2");
    }
}
