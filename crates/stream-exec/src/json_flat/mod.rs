//! A fast path for [`JsonDecoder`](crate::json_decoder::JsonDecoder): flat JSON objects
//! decoded in one pass straight into Arrow builders, for schemas whose fields are all
//! Utf8, Int32, Int64, Float64, Boolean, Timestamp(Millisecond, None) or Date32.
//!
//! arrow-json first writes every value to a tape (copying each string and number text),
//! then walks the tape once per column; that was a third of a stateless query's CPU.
//! Here each value is read once and each field goes straight to its column's builder.
//!
//! The result must be exactly arrow-json's, so this decoder only succeeds when it is
//! certain to be. On anything else — a coercion arrow-json would make (a string for a
//! number, a number for a string), a value arrow-json rejects, a nested value in a schema
//! field, a repeated field, a null in a non-nullable field, invalid UTF-8, JSON that is
//! not strict, anything after the object — it gives up on the whole batch (`Ok(None)`),
//! and the caller decodes it with arrow-json, which also finds and reports bad records.
//! Fields not in the schema are skipped, nested or not.

mod column;
mod cursor;
#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::HashMap;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;

use crate::error::{ExecError, Result};
use column::{Column, Kind};
use cursor::Cursor;

/// With this many fields or more a field name is found by hash instead of by scan.
const HASH_LOOKUP_FIELDS: usize = 16;

/// The fast decoder for one schema; built only for schemas it can handle.
#[derive(Debug, Clone)]
pub struct FlatDecoder {
    schema: SchemaRef,
    fields: Vec<FlatField>,
    /// Field index by name, for wide schemas.
    by_name: Option<HashMap<String, usize>>,
}

#[derive(Debug, Clone)]
struct FlatField {
    name: String,
    /// The name holds no `"` or `\\`, so in JSON it can be written as it is.
    plain_name: bool,
    kind: Kind,
    nullable: bool,
}

impl FlatDecoder {
    /// A decoder for `schema`, or `None` when a field's type is not one this decoder
    /// handles, two fields share a name (arrow-json's choice between them is not worth
    /// copying), or there are no fields (a batch of no columns needs its row count).
    pub fn for_schema(schema: &SchemaRef) -> Option<Self> {
        let fields = schema
            .fields()
            .iter()
            .map(|f| {
                Some(FlatField {
                    name: f.name().clone(),
                    plain_name: !f.name().contains(['"', '\\']),
                    kind: Kind::of(f.data_type())?,
                    nullable: f.is_nullable(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        let mut by_name = HashMap::with_capacity(fields.len());
        for (i, f) in fields.iter().enumerate() {
            if by_name.insert(f.name.clone(), i).is_some() {
                return None;
            }
        }
        if fields.is_empty() {
            return None;
        }
        let by_name = (fields.len() >= HASH_LOOKUP_FIELDS).then_some(by_name);
        Some(Self {
            schema: schema.clone(),
            fields,
            by_name,
        })
    }

    /// All `values` (one JSON object each) as one batch, or `None` when any of them is
    /// beyond this decoder (see the module docs); then nothing is decided about them.
    pub fn decode(&self, values: &[&[u8]]) -> Result<Option<RecordBatch>> {
        let total: usize = values.iter().map(|v| v.len()).sum();
        // Past i32 offsets arrow-json fails the batch; leave such batches to it.
        if values.is_empty() || total >= i32::MAX as usize {
            return Ok(None);
        }
        let mut batch = BatchBuilder::new(self, values.len(), total);
        for value in values {
            if batch.record(value).is_none() {
                return Ok(None);
            }
        }
        batch.finish().map(Some)
    }

    /// `Some(hint)` when the key at the cursor is field `hint`'s name as it is, read
    /// with its closing quote; `None` (nothing read) otherwise. Records usually list
    /// their fields in one order, so this skips scanning and looking up most keys.
    #[inline]
    fn expected_key(&self, c: &mut Cursor<'_>, hint: usize) -> Option<usize> {
        let field = self.fields.get(hint)?;
        (field.plain_name && c.eat_plain_key(field.name.as_bytes())).then_some(hint)
    }

    /// The index of the field named `key`, trying `hint` first: records usually list
    /// their fields in one order, so the field after the last one found is likely next.
    #[inline]
    fn field_index(&self, key: &str, hint: usize) -> Option<usize> {
        if self.fields.get(hint).is_some_and(|f| f.name == key) {
            return Some(hint);
        }
        match &self.by_name {
            Some(map) => map.get(key).copied(),
            None => self.fields.iter().position(|f| f.name == key),
        }
    }
}

/// One batch being decoded: a column per field, and which fields the current record set.
struct BatchBuilder<'d> {
    decoder: &'d FlatDecoder,
    columns: Vec<Column>,
    /// For each field, the number (from 1) of the last record that set it.
    set_by: Vec<usize>,
    /// The current record's number, from 1.
    record: usize,
    /// Unescaped text of strings and keys that hold escapes; reused by every record.
    scratch: String,
}

impl<'d> BatchBuilder<'d> {
    fn new(decoder: &'d FlatDecoder, rows: usize, total_bytes: usize) -> Self {
        // A rough share of the input per field: string columns rarely need to grow.
        let string_bytes = total_bytes / decoder.fields.len();
        let columns = decoder
            .fields
            .iter()
            .map(|f| Column::new(f.kind, rows, string_bytes))
            .collect();
        Self {
            decoder,
            columns,
            set_by: vec![0; decoder.fields.len()],
            record: 0,
            scratch: String::new(),
        }
    }

    /// Decodes one value (a JSON object, whitespace around it allowed) into a row.
    fn record(&mut self, value: &[u8]) -> Option<()> {
        // arrow-json checks all string data is UTF-8; outside strings it takes only ASCII.
        let text = std::str::from_utf8(value).ok()?;
        self.record += 1;
        let mut c = Cursor::new(text);
        c.skip_ws();
        if !c.eat(b'{') {
            return None;
        }
        c.skip_ws();
        let mut set = 0;
        if !c.eat(b'}') {
            set = self.members(&mut c)?;
        }
        c.skip_ws();
        if !c.at_end() {
            return None;
        }
        if set < self.columns.len() {
            self.fill_missing()?;
        }
        Some(())
    }

    /// The members of an object after its `{`, through its `}`; returns how many
    /// schema fields were set.
    fn members(&mut self, c: &mut Cursor<'_>) -> Option<usize> {
        let mut set = 0;
        let mut hint = 0;
        loop {
            if !c.eat(b'"') {
                return None;
            }
            let field = match self.decoder.expected_key(c, hint) {
                Some(i) => Some(i),
                None => {
                    let key = c.string(&mut self.scratch)?;
                    self.decoder.field_index(key, hint)
                }
            };
            c.skip_ws();
            if !c.eat(b':') {
                return None;
            }
            c.skip_ws();
            match field {
                Some(i) => {
                    self.field_value(c, i)?;
                    set += 1;
                    hint = i + 1;
                }
                None => c.skip_value(&mut self.scratch)?,
            }
            c.skip_ws();
            if c.eat(b'}') {
                return Some(set);
            }
            if !c.eat(b',') {
                return None;
            }
            c.skip_ws();
        }
    }

    /// The value of schema field `i`. A field given twice is refused: arrow-json keeps
    /// the last, but by then this decoder has appended the first.
    fn field_value(&mut self, c: &mut Cursor<'_>, i: usize) -> Option<()> {
        if self.set_by[i] == self.record {
            return None;
        }
        self.set_by[i] = self.record;
        let column = &mut self.columns[i];
        if c.peek()? == b'n' {
            c.literal(b"null")?;
            return self.null(i);
        }
        column.append_value(c, &mut self.scratch)
    }

    /// A null in field `i`, refused when the field is not nullable (arrow-json fails
    /// the batch: "Encountered unmasked nulls in non-nullable StructArray child").
    fn null(&mut self, i: usize) -> Option<()> {
        if !self.decoder.fields[i].nullable {
            return None;
        }
        self.columns[i].append_null();
        Some(())
    }

    /// Nulls for the fields the current record did not set.
    fn fill_missing(&mut self) -> Option<()> {
        for i in 0..self.columns.len() {
            if self.set_by[i] != self.record {
                self.null(i)?;
            }
        }
        Some(())
    }

    /// The batch, with the decoder's schema (as arrow-json's `Decoder::flush` gives it).
    fn finish(mut self) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = self.columns.iter_mut().map(Column::finish).collect();
        RecordBatch::try_new(self.decoder.schema.clone(), columns)
            .map_err(ExecError::arrow("building the decoded batch"))
    }
}
