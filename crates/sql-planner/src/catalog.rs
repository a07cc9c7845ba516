//! Catalog types: the streams and tables Sluice knows, their columns, topics and time.
//!
//! Object names are case-insensitive and kept upper case, as ksqlDB shows them; column
//! names follow SQL rules (unquoted names are lower case, as DataFusion normalizes them).

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};

use crate::error::{PlanError, PlanErrorKind, Result};
use crate::window::{WindowSpec, WINDOWEND, WINDOWSTART, WINDOW_END, WINDOW_START};

/// `ROWTIME`: a record's event time in epoch milliseconds (BIGINT), on every stream.
pub const ROWTIME: &str = "rowtime";

/// Whether a source is a stream (append-only) or a table (latest value per key).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SourceKind {
    /// An unbounded sequence of independent events.
    Stream,
    /// A changelog: the latest value per key.
    Table,
}

impl SourceKind {
    /// `STREAM` or `TABLE`.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::Stream => "STREAM",
            SourceKind::Table => "TABLE",
        }
    }
}

/// The serialization of record values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueFormat {
    /// One JSON object per record.
    Json,
}

impl ValueFormat {
    /// Parse a `VALUE_FORMAT` property.
    pub fn parse(s: &str) -> Result<Self> {
        match s.to_ascii_uppercase().as_str() {
            "JSON" => Ok(ValueFormat::Json),
            other => Err(PlanError::unsupported(format!(
                "value format \"{other}\" is not supported; use 'JSON'"
            ))),
        }
    }

    /// The format's name as ksqlDB spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ValueFormat::Json => "JSON",
        }
    }
}

/// Where a source's event time comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventTime {
    /// The Kafka record timestamp (`ROWTIME`).
    RecordTimestamp,
    /// A column of the value: BIGINT epoch milliseconds, TIMESTAMP, or VARCHAR read with
    /// the source's `TIMESTAMP_FORMAT`.
    Column(String),
}

/// A stream or table in the catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SourceDef {
    /// Upper-case name.
    pub name: String,
    /// Stream or table.
    pub kind: SourceKind,
    /// The Kafka topic holding its records.
    pub topic: String,
    /// The value format.
    pub value_format: ValueFormat,
    /// The value columns (pseudo columns such as `ROWTIME` are not listed here).
    #[serde(skip, default = "empty_schema")]
    pub schema: SchemaRef,
    /// Names of the key columns (for tables made by CTAS: the GROUP BY columns).
    pub key_columns: Vec<String>,
    /// Where event time comes from.
    pub event_time: EventTime,
    /// `TIMESTAMP_FORMAT`, for a VARCHAR time column (a Java `DateTimeFormatter` pattern).
    #[serde(default)]
    pub timestamp_format: Option<String>,
    /// For windowed tables, the window they were aggregated over.
    pub window: Option<WindowSpec>,
    /// The statement that created it.
    pub statement: String,
}

fn empty_schema() -> SchemaRef {
    Arc::new(Schema::empty())
}

impl SourceDef {
    /// The schema a query over this source sees: the value columns, then `ROWTIME`, then,
    /// when `window` is given, the window bound columns.
    pub fn planning_schema(&self, window: bool) -> SchemaRef {
        let mut fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new(ROWTIME, DataType::Int64, false));
        if window {
            fields.extend(window_fields());
        }
        Arc::new(Schema::new(fields))
    }
}

/// The window bound columns a windowed source exposes.
pub fn window_fields() -> [Field; 4] {
    let ts = DataType::Timestamp(TimeUnit::Millisecond, None);
    [
        Field::new(WINDOWSTART, DataType::Int64, false),
        Field::new(WINDOWEND, DataType::Int64, false),
        Field::new(WINDOW_START, ts.clone(), false),
        Field::new(WINDOW_END, ts, false),
    ]
}

/// The set of streams and tables, by upper-case name.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    sources: BTreeMap<String, SourceDef>,
}

impl Catalog {
    /// An empty catalog.
    pub fn new() -> Self {
        Self::default()
    }

    /// The source called `name`: exactly (a quoted name), else in upper case.
    pub fn get(&self, name: &str) -> Option<&SourceDef> {
        self.sources
            .get(name)
            .or_else(|| self.sources.get(&name.to_ascii_uppercase()))
    }

    /// The source called `name`, or a not-found error naming it.
    pub fn require(&self, name: &str) -> Result<&SourceDef> {
        self.get(name).ok_or_else(|| {
            PlanError::not_found(format!(
                "stream or table \"{}\" does not exist",
                name.to_ascii_uppercase()
            ))
        })
    }

    /// Add `source`; fails when its name is taken.
    pub fn insert(&mut self, source: SourceDef) -> Result<()> {
        if let Some(existing) = self.sources.get(&source.name) {
            return Err(PlanError::new(
                PlanErrorKind::AlreadyExists,
                format!(
                    "cannot add {} \"{}\": a {} with the same name already exists",
                    source.kind.as_str().to_lowercase(),
                    source.name,
                    existing.kind.as_str().to_lowercase()
                ),
            ));
        }
        self.sources.insert(source.name.clone(), source);
        Ok(())
    }

    /// Remove the source called `name`, returning it.
    pub fn remove(&mut self, name: &str) -> Option<SourceDef> {
        let key = self.get(name)?.name.clone();
        self.sources.remove(&key)
    }

    /// All sources, ordered by name.
    pub fn sources(&self) -> impl Iterator<Item = &SourceDef> {
        self.sources.values()
    }
}
