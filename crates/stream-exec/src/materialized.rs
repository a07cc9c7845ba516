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

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hash::BuildHasher;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::common::hash_utils::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;
use tokio::sync::watch;

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
    /// Whether the table holds its topic's rows (see [`MaterializedTable::restore`]).
    restored: watch::Sender<bool>,
}

/// One key's row.
struct Row {
    /// The key's hash: growing the table does not hash every key again (a windowed
    /// table grows by a window's keys each window).
    hash: u64,
    /// For a windowed table, the window end the row was inserted with (a key holds its
    /// window bounds, so an update never changes it; forgetting a window relies on that).
    end: i64,
    /// The key's length: `bytes` holds the key, then the row.
    key_len: u32,
    /// The key, then the row in arrow's row format, in one allocation. A row that
    /// replaces another is written into its buffer: updating a key allocates nothing.
    bytes: Vec<u8>,
}

impl Row {
    fn key(&self) -> &[u8] {
        &self.bytes[..self.key_len as usize]
    }

    fn row(&self) -> &[u8] {
        &self.bytes[self.key_len as usize..]
    }
}

#[derive(Default)]
struct Rows {
    by_key: HashTable<Row>,
    hasher: RandomState,
    /// For windowed tables, `(window end, key hash)` per row inserted, oldest end first:
    /// what to forget when a window ends more than the retention before the newest. A
    /// row deleted leaves its entry behind (finding it would cost more than forgetting
    /// it); see `stale`.
    by_end: BinaryHeap<Reverse<(i64, u64)>>,
    /// Entries of `by_end` whose row was deleted. When they outnumber the rows, `by_end`
    /// is made again from the rows: a session table, whose rows are deleted and inserted
    /// again as their sessions grow, would otherwise hold an entry per update for the
    /// whole retention (a day by default), not one per row.
    stale: usize,
    newest_end: i64,
    /// While the table is read back from its topic: the query's results written since
    /// the table was made, applied once the reading is done.
    pending: Option<Vec<(ChangeBatch, EncodedRows)>>,
    /// Why it could not be read back (see [`MaterializedTable::abandon_restore`]).
    failed: Option<String>,
}

impl Rows {
    /// No rows, read back from the topic next, with results that wait for that.
    fn restoring(pending: Vec<(ChangeBatch, EncodedRows)>) -> Self {
        Self {
            newest_end: i64::MIN,
            pending: Some(pending),
            ..Self::default()
        }
    }

    /// Insert or replace the row of `key`, whose window ends at `end` (windowed tables).
    fn upsert(&mut self, key: &[u8], row: &[u8], end: Option<i64>) {
        if let Some(end) = end {
            self.newest_end = self.newest_end.max(end);
        }
        let hash = self.hasher.hash_one(key);
        match self.by_key.entry(hash, |r| r.key() == key, |r| r.hash) {
            Entry::Occupied(mut e) => {
                let held = e.get_mut();
                held.bytes.truncate(held.key_len as usize);
                held.bytes.extend_from_slice(row);
            }
            Entry::Vacant(e) => {
                // Keys are far below 4 GiB (Kafka's record limit is 1 MB).
                let mut bytes = Vec::with_capacity(key.len() + row.len());
                bytes.extend_from_slice(key);
                bytes.extend_from_slice(row);
                e.insert(Row {
                    hash,
                    end: end.unwrap_or(i64::MIN),
                    key_len: key.len() as u32,
                    bytes,
                });
                if let Some(end) = end {
                    self.by_end.push(Reverse((end, hash)));
                }
            }
        }
    }

    /// Delete the row of `key`, if there is one.
    fn remove(&mut self, key: &[u8]) {
        let hash = self.hasher.hash_one(key);
        if let Ok(e) = self.by_key.find_entry(hash, |r| r.key() == key) {
            let (row, _) = e.remove();
            if row.end != i64::MIN {
                self.stale += 1;
                if self.stale > self.by_key.len() + STALE_SLACK {
                    self.by_end = self
                        .by_key
                        .iter()
                        .filter(|r| r.end != i64::MIN)
                        .map(|r| Reverse((r.end, r.hash)))
                        .collect();
                    self.stale = 0;
                }
            }
        }
    }

    /// Forget the rows whose window ended before `cutoff`.
    fn forget_before(&mut self, cutoff: i64) {
        while let Some(&Reverse((end, hash))) = self.by_end.peek() {
            if end >= cutoff {
                break;
            }
            self.by_end.pop();
            // The entry's row, or one of its hash and window (both go).
            match self
                .by_key
                .find_entry(hash, |r| r.hash == hash && r.end == end)
            {
                Ok(e) => drop(e.remove()),
                Err(_) => self.stale = self.stale.saturating_sub(1),
            }
        }
    }
}

/// Deleted rows' entries `Rows::by_end` holds beyond one per row before it is made again.
const STALE_SLACK: usize = 64 * 1024;

/// Records read back from a table's topic, applied a chunk at a time: the values decoded
/// together, then each record applied in order (a row upserts its key; a tombstone, or a
/// value that cannot be decoded, deletes it), as [`MaterializedTable::apply_encoded`]
/// applies what the query writes. Nothing is kept of a record after its chunk: reading a
/// topic back holds the table and one chunk.
pub struct TableRestore {
    table: Arc<MaterializedTable>,
    decoder: JsonDecoder,
    chunk: usize,
    /// The chunk's keys, one after the other.
    keys: Vec<u8>,
    /// The chunk's values, one after the other.
    values: Vec<u8>,
    /// Per record of the chunk: where its key ends in `keys`, and where its value ends in
    /// `values` (`None`: a tombstone).
    records: Vec<(usize, Option<usize>)>,
}

/// Records per chunk of a restore.
const RESTORE_CHUNK: usize = 16 * 1024;

impl TableRestore {
    /// Add the next record read back: its Kafka key and value (`None`: a tombstone).
    pub fn push(&mut self, key: &[u8], value: Option<&[u8]>) -> Result<()> {
        self.keys.extend_from_slice(key);
        let value_end = value.map(|v| {
            self.values.extend_from_slice(v);
            self.values.len()
        });
        self.records.push((self.keys.len(), value_end));
        if self.records.len() >= self.chunk {
            self.apply()?;
        }
        Ok(())
    }

    /// Apply what is left, then the results that waited; returns how many rows the table
    /// holds. From now on results apply to the table as they come.
    pub fn finish(mut self) -> Result<usize> {
        self.apply()?;
        let table = &self.table;
        let mut rows = table.rows.write().unwrap_or_else(|p| p.into_inner());
        for (batch, encoded) in rows.pending.take().unwrap_or_default() {
            table.apply_to(&mut rows, &batch, &encoded)?;
        }
        let held = rows.by_key.len();
        drop(rows);
        table.restored.send_replace(true);
        Ok(held)
    }

    /// Apply the chunk. Values that cannot be decoded are skipped and logged.
    fn apply(&mut self) -> Result<()> {
        let mut spans = Vec::with_capacity(self.records.len());
        let (mut key_start, mut value_start) = (0, 0);
        for &(key_end, value_end) in &self.records {
            spans.push((key_start..key_end, value_end.map(|end| value_start..end)));
            key_start = key_end;
            value_start = value_end.unwrap_or(value_start);
        }
        let values: Vec<&[u8]> = spans
            .iter()
            .filter_map(|(_, v)| v.clone().map(|v| &self.values[v]))
            .collect();
        let decoded = self.decoder.decode(&values)?;
        let (rows, ends) = self.table.encode(&decoded.batch)?;
        let ends = ends
            .as_ref()
            .map(|e| e.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
        // The decoded rows (and errors), by index among the values, in order.
        let mut decoded_rows = decoded.rows.iter().enumerate().peekable();
        let mut errors = decoded.errors.iter().peekable();
        let mut table = self.table.rows.write().unwrap_or_else(|p| p.into_inner());
        let mut value_index = 0;
        for (key, value) in &spans {
            let key = &self.keys[key.clone()];
            if value.is_none() {
                table.remove(key);
                continue;
            }
            let this = value_index;
            value_index += 1;
            if let Some((row, _)) = decoded_rows.next_if(|(_, &input)| input == this) {
                table.upsert(key, rows.row(row).data(), ends.map(|e| e.value(row)));
            } else if let Some((_, reason)) = errors.next_if(|(input, _)| *input == this) {
                // The topic's row for this key is this value: no older row stands in.
                table.remove(key);
                tracing::warn!(key = %String::from_utf8_lossy(key), reason, "a table row read back could not be decoded; skipped");
            }
        }
        self.table.evict(&mut table);
        drop(table);
        self.keys.clear();
        self.values.clear();
        self.records.clear();
        Ok(())
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
    /// table. It is not restored yet: results applied to it wait until it has been read
    /// back from its topic ([`MaterializedTable::restore`]), and [`is_restoring`] says so
    /// to pull queries.
    ///
    /// [`is_restoring`]: MaterializedTable::is_restoring
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
            rows: RwLock::new(Rows::restoring(vec![])),
            window,
            restored: watch::channel(false).0,
        })
    }

    /// Whether the table is still being read back from its topic: its rows are not all
    /// there yet.
    pub fn is_restoring(&self) -> bool {
        !*self.restored.borrow()
    }

    /// Why the table's rows could not be read back, if they could not: its query stopped
    /// or failed first. Its rows are then not the table's.
    pub fn restore_failed(&self) -> Option<String> {
        self.rows
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .failed
            .clone()
    }

    /// Give up reading the table back (its query has ended), for `why`.
    pub fn abandon_restore(&self, why: String) {
        let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
        table.pending = None;
        table.failed = Some(why);
        drop(table);
        self.restored.send_replace(true);
    }

    /// Wait up to `wait` until the table has been read back from its topic; whether it
    /// has.
    pub async fn wait_restored(&self, wait: Duration) -> bool {
        let mut restored = self.restored.subscribe();
        let waited = tokio::time::timeout(wait, restored.wait_for(|done| *done)).await;
        matches!(waited, Ok(Ok(_)))
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
        let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
        if let Some(pending) = &mut table.pending {
            pending.push((batch.clone(), encoded.clone()));
            return Ok(());
        }
        self.apply_to(&mut table, batch, encoded)
    }

    fn apply_to(&self, table: &mut Rows, batch: &ChangeBatch, encoded: &EncodedRows) -> Result<()> {
        let (rows, ends) = self.encode(&batch.rows)?;
        let ends = ends
            .as_ref()
            .map(|e| e.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
        for i in 0..batch.rows.num_rows() {
            let key = encoded.key(i).unwrap_or_default();
            if batch.is_tombstone(i) {
                table.remove(key);
                continue;
            }
            table.upsert(key, rows.row(i).data(), ends.map(|e| e.value(i)));
        }
        self.evict(table);
        Ok(())
    }

    /// Empty the table, to fill it again from its topic: records go to the
    /// [`TableRestore`] returned, in offset order. Until it is finished, results applied
    /// to the table wait (those that waited before, too: reading back may be retried).
    pub fn restore(self: &Arc<Self>) -> TableRestore {
        let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
        let pending = table.pending.take().unwrap_or_default();
        *table = Rows::restoring(pending);
        self.restored.send_replace(false);
        TableRestore {
            table: self.clone(),
            decoder: JsonDecoder::new(self.schema.clone()),
            chunk: RESTORE_CHUNK,
            keys: Vec::new(),
            values: Vec::new(),
            records: Vec::with_capacity(RESTORE_CHUNK),
        }
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
            table.forget_before(table.newest_end.saturating_sub(retention));
        }
    }

    /// The current rows, in key order.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let table = self.rows.read().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<(&[u8], &[u8])> =
            table.by_key.iter().map(|r| (r.key(), r.row())).collect();
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

    /// A table with no topic rows to read back: results apply as they come.
    fn ready(schema: SchemaRef, window: Option<(usize, i64)>) -> Arc<MaterializedTable> {
        let table = Arc::new(MaterializedTable::new(schema, window).expect("table"));
        table.restore().finish().expect("nothing to read back");
        table
    }

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
        let table = ready(first.rows.schema(), None);
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

    /// The rows of `table`, as (key column, n).
    fn contents(table: &MaterializedTable) -> Vec<(String, i64)> {
        let snap = table.snapshot().expect("snapshot");
        let keys = snap.column(0).as_string::<i32>();
        let n = snap
            .column(1)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        (0..snap.num_rows())
            .map(|i| (keys.value(i).to_string(), n.value(i)))
            .collect()
    }

    #[test]
    fn a_table_read_back_holds_its_topics_rows_then_what_was_written_meanwhile() {
        let batches = [
            batch(&["a", "b", "a"], &[1, 1, 2], None),
            batch(&["b", "c"], &[0, 5], Some(vec![true, false])),
            batch(&["d", "c", "b"], &[7, 6, 3], None),
            batch(&["b"], &[0], Some(vec![true])),
        ];
        let schema = batches[0].rows.schema();
        let written = ready(schema.clone(), None);
        apply(&written, &batches);
        // The records of the topic, as the query wrote them, with two that cannot be
        // decoded: one a later record of its key replaces, and one that is its key's last.
        let mut records: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
            (b"\"d\"".to_vec(), Some(b"{not json".to_vec())),
            (b"\"z\"".to_vec(), Some(br#"{"k":"z","n":9}"#.to_vec())),
        ];
        for b in &batches {
            let encoded = encode_batch(b, &[0]).expect("encode");
            for i in 0..b.num_rows() {
                let key = encoded.key(i).expect("key").to_vec();
                let value = (!b.is_tombstone(i)).then(|| encoded.value(i).expect("value").to_vec());
                records.push((key, value));
            }
        }
        records.push((b"\"z\"".to_vec(), Some(b"[1,".to_vec())));
        // The query runs while its table is read back: what it writes before and during the
        // reading waits, and applies after the topic's rows.
        let before = batch(&["a", "q"], &[40, 41], None);
        let during = batch(&["q", "c"], &[0, 42], Some(vec![true, false]));
        let table = Arc::new(MaterializedTable::new(schema, None).expect("table"));
        assert!(table.is_restoring());
        apply(&table, std::slice::from_ref(&before));
        assert_eq!(table.len(), 0);
        // A first reading fails halfway, and is done again.
        let mut failed = table.restore();
        failed.chunk = 2;
        for (key, value) in &records[..5] {
            failed.push(key, value.as_deref()).expect("push");
        }
        drop(failed);
        let mut restore = table.restore();
        restore.chunk = 2;
        for (i, (key, value)) in records.iter().enumerate() {
            if i == 4 {
                apply(&table, std::slice::from_ref(&during));
            }
            restore.push(key, value.as_deref()).expect("push");
        }
        assert!(table.is_restoring());
        assert_eq!(restore.finish().expect("finish"), 3);
        assert!(!table.is_restoring());
        apply(&written, &[before, during]);
        assert_eq!(contents(&table), contents(&written));
        assert_eq!(
            contents(&table),
            vec![("a".into(), 40), ("c".into(), 42), ("d".into(), 7),]
        );
    }

    #[tokio::test]
    async fn a_table_whose_query_ended_before_it_was_read_back_says_so() {
        let first = batch(&["a"], &[1], None);
        let table = Arc::new(MaterializedTable::new(first.rows.schema(), None).expect("table"));
        assert!(!table.wait_restored(Duration::from_millis(10)).await);
        apply(&table, &[first]);
        let waiting = {
            let table = table.clone();
            tokio::spawn(async move { table.wait_restored(Duration::from_secs(10)).await })
        };
        table.abandon_restore("its query failed: no broker".into());
        assert!(
            waiting.await.expect("waited"),
            "a waiting pull query is woken"
        );
        assert!(!table.is_restoring());
        assert_eq!(
            table.restore_failed().as_deref(),
            Some("its query failed: no broker")
        );
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn rows_deleted_and_inserted_again_hold_no_more_than_their_rows() {
        // A session table: each update deletes its session's row and inserts the grown
        // session under a new key (column 1 holds the window end).
        let retention = 1_000_000_000;
        let first = batch(&["s0"], &[0], None);
        let table = ready(first.rows.schema(), Some((1, retention)));
        apply(&table, &[first]);
        let updates = 3 * STALE_SLACK as i64;
        for chunk in (1..=updates).collect::<Vec<_>>().chunks(1000) {
            let mut keys = vec![];
            let mut ends = vec![];
            let mut tombstones = vec![];
            for &i in chunk {
                keys.extend([format!("s{}", i - 1), format!("s{i}")]);
                ends.extend([i - 1, i]);
                tombstones.extend([true, false]);
            }
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            apply(&table, &[batch(&keys, &ends, Some(tombstones))]);
        }
        assert_eq!(contents(&table), vec![(format!("s{updates}"), updates)]);
        let entries = table.rows.read().expect("rows").by_end.len();
        assert!(
            entries <= 1 + STALE_SLACK + 1,
            "{entries} entries for one row"
        );
        // Forgetting still finds the row after its entries were made again.
        let later = updates + retention + 1;
        apply(&table, &[batch(&["late"], &[later], None)]);
        assert_eq!(contents(&table), vec![("late".to_string(), later)]);
    }

    #[test]
    fn windows_older_than_the_retention_are_forgotten() {
        // Column 1 holds the window end here; the key is the window (column 0).
        let first = batch(&["w1", "w2"], &[1_000, 2_000], None);
        let table = ready(first.rows.schema(), Some((1, 1_500)));
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
