//! `MaterializedTable`: the current rows of a table a CTAS writes, queryable by pull
//! queries.
//!
//! It is fed the same result batches the query writes to its topic, after the broker has
//! acknowledged them, and keyed by the same Kafka key: a row replaces the row with its key,
//! a tombstone deletes it. So its content is what a reader of the compacted topic would
//! see. Rows are held in arrow's row format, one per key.

use std::collections::BTreeMap;
use std::sync::RwLock;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{OwnedRow, RowConverter, SortField};

use crate::error::{ExecError, Result};
use crate::json_encoder::encode_keys;
use crate::operator::ChangeBatch;

/// A table's current rows by key. Cheap to share; reads take a snapshot.
pub struct MaterializedTable {
    schema: SchemaRef,
    key_columns: Vec<usize>,
    converter: RowConverter,
    rows: RwLock<BTreeMap<Vec<u8>, OwnedRow>>,
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
    /// An empty table of result rows with `schema`, keyed by `key_columns`.
    pub fn new(schema: SchemaRef, key_columns: Vec<usize>) -> Result<Self> {
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
            key_columns,
            converter,
            rows: RwLock::new(BTreeMap::new()),
        })
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

    /// Apply result batches, in order: rows upsert by key, tombstones delete.
    pub fn apply(&self, batches: &[ChangeBatch]) -> Result<()> {
        for batch in batches {
            let keys = encode_keys(&batch.rows, &self.key_columns)?;
            let rows = self
                .converter
                .convert_columns(batch.rows.columns())
                .map_err(ExecError::arrow("encoding table rows"))?;
            let mut table = self.rows.write().unwrap_or_else(|p| p.into_inner());
            for (i, key) in keys.into_iter().enumerate() {
                let key = key.unwrap_or_default();
                if batch.is_tombstone(i) {
                    table.remove(&key);
                } else {
                    table.insert(key, rows.row(i).owned());
                }
            }
        }
        Ok(())
    }

    /// The current rows, in key order.
    pub fn snapshot(&self) -> Result<RecordBatch> {
        let table = self.rows.read().unwrap_or_else(|p| p.into_inner());
        let columns = self
            .converter
            .convert_rows(table.values().map(|r| r.row()))
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
        let table = MaterializedTable::new(first.rows.schema(), vec![0]).expect("table");
        table.apply(&[first]).expect("apply");
        table
            .apply(&[batch(&["b", "c"], &[0, 5], Some(vec![true, false]))])
            .expect("apply");
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
}
