//! `MaterializedTable`: the current rows of a table a CTAS writes, queryable by pull
//! queries.
//!
//! It is fed the same result batches the query writes to its topic, after the broker has
//! acknowledged them, and keyed by the same Kafka key: a row replaces the row with its key,
//! a tombstone deletes it. So its content is what a reader of the compacted topic would
//! see. Rows stay in the batches they came in (their Arrow arrays are shared, not copied),
//! and a hash map points each key at its row (applying a batch's rows is on the query's
//! path: no allocation or conversion per row); a snapshot puts them in key order.
//!
//! A windowed table forgets windows that ended more than its retention before the newest
//! window end it has seen, so it stays bounded on an unbounded stream.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use datafusion::arrow::array::{Array, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::interleave;
use datafusion::arrow::datatypes::{DataType, Int64Type, SchemaRef};
use tokio::sync::watch;

use crate::error::{ExecError, Result};
use crate::json_decoder::JsonDecoder;
use crate::json_encoder::EncodedRows;
use crate::operator::ChangeBatch;

mod rows;
use rows::{Part, Rows};

/// A table's current rows by key. Cheap to share; reads take a snapshot.
pub struct MaterializedTable {
    schema: SchemaRef,
    rows: RwLock<Rows>,
    /// For windowed tables: the window end column and the retention in ms.
    window: Option<(usize, i64)>,
    /// Whether the table holds its topic's rows (see [`MaterializedTable::restore`]).
    restored: watch::Sender<bool>,
}

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
        rows.read_back_done();
        for (batch, encoded) in rows.pending.take().unwrap_or_default() {
            table.apply_to(&mut rows, &batch, &encoded)?;
        }
        let held = rows.len();
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
        let ends = self.table.window_ends(&decoded.batch)?;
        // The key of each value, by index among the values.
        let value_keys: Vec<&[u8]> = spans
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| &self.keys[k.clone()])
            .collect();
        let part = Part::new(
            decoded.batch.columns().to_vec(),
            decoded.batch.num_rows(),
            |row| value_keys[decoded.rows[row]],
        );
        // The decoded rows (and errors), by index among the values, in order.
        let mut decoded_rows = decoded.rows.iter().enumerate().peekable();
        let mut errors = decoded.errors.iter().peekable();
        let mut table = self.table.rows.write().unwrap_or_else(|p| p.into_inner());
        let number = table.add_part(part);
        let mut value_index = 0;
        for (key, value) in &spans {
            let key = &self.keys[key.clone()];
            if value.is_none() {
                table.remove(key, None);
                continue;
            }
            let this = value_index;
            value_index += 1;
            if let Some((row, _)) = decoded_rows.next_if(|(_, &input)| input == this) {
                table.upsert(number, row as u32, end_at(ends.as_ref(), row));
            } else if let Some((_, reason)) = errors.next_if(|(input, _)| *input == this) {
                // The topic's row for this key is this value: no older row stands in.
                table.remove(key, None);
                tracing::warn!(key = %String::from_utf8_lossy(key), reason, "a table row read back could not be decoded; skipped");
            }
        }
        table.unpin(number);
        table.compact()?;
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
        Ok(Self {
            schema,
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
        table.read_back_done();
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
        self.rows.read().unwrap_or_else(|p| p.into_inner()).len()
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
        let rows = &batch.rows;
        let ends = self.window_ends(rows)?;
        let number = table.add_part(Part::new(rows.columns().to_vec(), rows.num_rows(), |i| {
            encoded.key(i).unwrap_or_default()
        }));
        for i in 0..rows.num_rows() {
            let end = end_at(ends.as_ref(), i);
            if batch.is_tombstone(i) {
                table.remove(encoded.key(i).unwrap_or_default(), end);
                continue;
            }
            table.upsert(number, i as u32, end);
        }
        table.unpin(number);
        self.evict(table);
        table.compact()
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

    /// For a windowed table, the window end of each row of `batch`, as BIGINT.
    fn window_ends(&self, batch: &RecordBatch) -> Result<Option<Int64Array>> {
        let Some((column, _)) = self.window else {
            return Ok(None);
        };
        let ends = datafusion::arrow::compute::cast(batch.column(column), &DataType::Int64)
            .map_err(ExecError::arrow("reading window ends"))?;
        Ok(Some(ends.as_primitive::<Int64Type>().clone()))
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
        // The held parts, and where each one is in the list of them.
        let mut position = vec![0; table.parts.len()];
        let mut held: Vec<&Part> = vec![];
        for (number, part) in table.parts.iter().enumerate() {
            if let Some(part) = part {
                position[number] = held.len();
                held.push(part);
            }
        }
        let mut rows: Vec<(&[u8], (usize, usize))> = table
            .slots()
            .map(|s| {
                let part = position[s.part as usize];
                (held[part].key(s.row), (part, s.row as usize))
            })
            .collect();
        rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let picked: Vec<(usize, usize)> = rows.into_iter().map(|(_, at)| at).collect();
        let columns = match held.first() {
            Some(_) => (0..self.schema.fields().len())
                .map(|c| {
                    let arrays: Vec<&dyn Array> =
                        held.iter().map(|p| p.columns[c].as_ref()).collect();
                    interleave(&arrays, &picked)
                })
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(ExecError::arrow("reading table rows"))?,
            None => self
                .schema
                .fields()
                .iter()
                .map(|f| datafusion::arrow::array::new_empty_array(f.data_type()))
                .collect(),
        };
        drop(table);
        RecordBatch::try_new(self.schema.clone(), columns)
            .map_err(ExecError::arrow("building a table snapshot"))
    }
}

/// Row `row`'s window end among `ends` (see [`MaterializedTable::window_ends`]); `None`
/// for a table without windows, or a row without an end.
fn end_at(ends: Option<&Int64Array>, row: usize) -> Option<i64> {
    ends.and_then(|e| e.is_valid(row).then(|| e.value(row)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{BooleanArray, Int64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};

    use super::rows::{DEAD_SLACK, STALE_SLACK};
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
            windows: None,
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
        contents_with_n_at(table, 1)
    }

    /// The rows of `table`, as (key column, column `n`).
    fn contents_with_n_at(table: &MaterializedTable, n: usize) -> Vec<(String, i64)> {
        let snap = table.snapshot().expect("snapshot");
        let keys = snap.column(0).as_string::<i32>();
        let n = snap
            .column(n)
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
    fn a_row_a_batch_inserts_and_deletes_leaves_its_other_rows() {
        let first = batch(
            &["a", "a", "b", "c"],
            &[1, 0, 2, 3],
            Some(vec![false, true, false, false]),
        );
        let table = ready(first.rows.schema(), None);
        apply(&table, &[first]);
        apply(
            &table,
            &[batch(
                &["b", "c", "b", "d"],
                &[0, 0, 4, 5],
                Some(vec![true, true, false, false]),
            )],
        );
        assert_eq!(contents(&table), vec![("b".into(), 4), ("d".into(), 5)]);
    }

    #[test]
    fn the_parts_hold_at_most_about_twice_the_live_rows() {
        // Keys updated unevenly, batch after batch: a key's row moves to the newest part
        // and leaves a dead row behind, so old parts empty slowly.
        let table = ready(batch(&[], &[], None).rows.schema(), None);
        let mut expected = std::collections::BTreeMap::new();
        let mut rng = 7u64;
        for round in 0..40i64 {
            let mut keys = vec![];
            let mut n = vec![];
            let mut tombstones = vec![];
            for _ in 0..10_000 {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let key = format!("k{}", (rng >> 33) % 20_000);
                let delete = (rng >> 20).is_multiple_of(10);
                if delete {
                    expected.remove(&key);
                } else {
                    expected.insert(key.clone(), round);
                }
                keys.push(key);
                n.push(round);
                tombstones.push(delete);
            }
            let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
            apply(&table, &[batch(&keys, &n, Some(tombstones))]);
            let rows = table.rows.read().expect("rows");
            let held: usize = rows.parts.iter().flatten().map(Part::len).sum();
            let live = rows.len();
            assert_eq!(held, live + rows.dead, "dead rows counted");
            assert!(
                held <= 2 * live + DEAD_SLACK + 10_000,
                "{held} rows held for {live}"
            );
        }
        let want: Vec<(String, i64)> = expected.into_iter().collect();
        assert_eq!(contents(&table), want);
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

    proptest::proptest! {
        /// A windowed table whose windows fall in many shards (window ends minutes apart)
        /// holds what a compacted topic would: each key's last row unless a tombstone came
        /// after it, and no window that ended more than the retention before the newest.
        /// A table read back from the records written (tombstones carry no window end)
        /// holds the same.
        #[test]
        fn a_table_over_many_shards_holds_what_its_topic_does(
            ops in proptest::collection::vec((0usize..40, 0i64..100, proptest::bool::weighted(0.3)), 1..300),
            cut in 1usize..300,
        ) {
            // Key `k{i}` is in the window ending at minute i % 13 (a key's window never
            // changes); n tells its updates apart.
            let end_of = |key: usize| (key % 13) as i64 * 60_000 + 59_999;
            let retention = 5 * 60_000;
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Utf8, true),
                Field::new("end", DataType::Int64, true),
                Field::new("n", DataType::Int64, true),
            ]));
            let table = ready(schema.clone(), Some((1, retention)));
            let mut model: std::collections::BTreeMap<String, i64> = Default::default();
            let mut newest = i64::MIN;
            let mut written: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![];
            let cut = cut.min(ops.len());
            for chunk in [&ops[..cut], &ops[cut..]] {
                if chunk.is_empty() {
                    continue;
                }
                let keys: Vec<String> = chunk.iter().map(|(k, _, _)| format!("k{k:02}")).collect();
                let ends: Vec<i64> = chunk.iter().map(|&(k, _, _)| end_of(k)).collect();
                let n: Vec<i64> = chunk.iter().map(|&(_, u, _)| u).collect();
                let dead: Vec<bool> = chunk.iter().map(|&(_, _, d)| d).collect();
                let b = ChangeBatch {
                    rows: RecordBatch::try_new(
                        schema.clone(),
                        vec![
                            Arc::new(StringArray::from(keys.clone())),
                            Arc::new(Int64Array::from(ends.clone())),
                            Arc::new(Int64Array::from(n.clone())),
                        ],
                    )
                    .expect("batch"),
                    tombstones: Some(BooleanArray::from(dead.clone())),
                    windows: None,
                };
                let encoded = encode_batch(&b, &[0]).expect("encode");
                table.apply_encoded(&b, &encoded).expect("apply");
                for (i, key) in keys.iter().enumerate() {
                    let k = encoded.key(i).expect("a key").to_vec();
                    if dead[i] {
                        model.remove(key);
                        written.push((k, None));
                    } else {
                        newest = newest.max(ends[i]);
                        model.insert(key.clone(), n[i]);
                        written.push((k, Some(encoded.value(i).expect("a value").to_vec())));
                    }
                }
                model.retain(|key, _| {
                    let k: usize = key[1..].parse().expect("a number");
                    end_of(k) >= newest.saturating_sub(retention)
                });
            }
            let expected: Vec<(String, i64)> = model.into_iter().collect();
            let rows = |table: &MaterializedTable| contents_with_n_at(table, 2);
            proptest::prop_assert_eq!(rows(&table), expected.clone());

            let read_back = Arc::new(MaterializedTable::new(schema, Some((1, retention))).expect("table"));
            let mut restore = read_back.restore();
            for (key, value) in &written {
                restore.push(key, value.as_deref()).expect("pushed");
            }
            restore.finish().expect("read back");
            proptest::prop_assert_eq!(rows(&read_back), expected);
        }
    }
}
