//! Catalog entries from statements: the `SourceDef` a `CREATE STREAM|TABLE` declares, and
//! the one a `CREATE … AS SELECT` produces. Pure, so examples can be planned without Kafka.

use std::collections::HashSet;

use crate::catalog::{EventTime, SourceDef, SourceKind, ValueFormat};
use crate::error::{PlanError, Result};
use crate::planner::{check_time_column, value_schema};
use crate::statement::{ColumnSpec, Properties};
use crate::stream_plan::StreamPlan;
use crate::timestamp_format::TimestampFormat;

/// Properties Sluice accepts and ignores (they matter to ksqlDB but not here yet).
const IGNORED: [&str; 3] = ["KEY_FORMAT", "REPLICAS", "WRAP_SINGLE_VALUE"];

/// A declared source and the topic settings of its statement.
#[derive(Debug, Clone)]
pub struct DeclaredSource {
    /// The catalog entry.
    pub source: SourceDef,
    /// `PARTITIONS`, when given: create the topic with this many if it is missing.
    pub partitions: Option<i32>,
}

/// The catalog entry declared by `CREATE STREAM|TABLE name (columns) WITH (properties)`.
pub fn declare_source(
    kind: SourceKind,
    name: &str,
    columns: &[ColumnSpec],
    mut properties: Properties,
    statement: &str,
) -> Result<DeclaredSource> {
    let topic = properties.remove("KAFKA_TOPIC").ok_or_else(|| {
        PlanError::invalid(format!(
            "missing required property KAFKA_TOPIC for {} \"{name}\"; add WITH (KAFKA_TOPIC='topic', VALUE_FORMAT='JSON')",
            kind.as_str().to_lowercase()
        ))
    })?;
    let value_format = take_format(&mut properties)?;
    let partitions = take_partitions(&mut properties)?;
    let mut seen = HashSet::new();
    for c in columns {
        if !seen.insert(c.name.as_str()) {
            return Err(PlanError::invalid(format!(
                "column \"{}\" is declared twice",
                c.name
            )));
        }
    }
    let key_columns: Vec<String> = columns
        .iter()
        .filter(|c| c.key)
        .map(|c| c.name.clone())
        .collect();
    if kind == SourceKind::Table && key_columns.is_empty() {
        return Err(PlanError::invalid(format!(
            "table \"{name}\" needs a PRIMARY KEY column"
        )));
    }
    let schema = value_schema(
        &columns
            .iter()
            .map(|c| (c.name.clone(), c.data_type.clone()))
            .collect::<Vec<_>>(),
    );
    let mut source = SourceDef {
        name: name.to_string(),
        kind,
        topic,
        value_format,
        schema,
        key_columns,
        event_time: EventTime::RecordTimestamp,
        timestamp_format: None,
        window: None,
        statement: statement.to_string(),
    };
    if let Some(format) = properties.remove("TIMESTAMP_FORMAT") {
        TimestampFormat::parse(&format)?;
        source.timestamp_format = Some(format);
    }
    if let Some(ts) = properties.remove("TIMESTAMP") {
        let column = source
            .schema
            .fields()
            .iter()
            .find(|f| f.name().eq_ignore_ascii_case(&ts))
            .map(|f| f.name().clone())
            .unwrap_or(ts);
        check_time_column(&source, &column)?;
        source.event_time = EventTime::Column(column);
    }
    reject_unknown(&properties)?;
    Ok(DeclaredSource { source, partitions })
}

/// What `CREATE STREAM|TABLE name WITH (properties) AS SELECT …` adds to the catalog.
#[derive(Debug, Clone)]
pub struct QuerySink {
    /// The catalog entry of the result.
    pub sink: SourceDef,
    /// `PARTITIONS`, when given.
    pub partitions: Option<i32>,
}

/// The catalog entry for the result of `plan`, checking that streams do not aggregate and
/// tables do.
pub fn declare_sink(
    kind: SourceKind,
    name: &str,
    mut properties: Properties,
    plan: &StreamPlan,
    statement: &str,
) -> Result<QuerySink> {
    match (kind, plan.aggregates) {
        (SourceKind::Stream, true) => {
            return Err(PlanError::invalid(
                "an aggregation makes a table: use CREATE TABLE … AS SELECT for GROUP BY queries",
            ))
        }
        (SourceKind::Table, false) => return Err(PlanError::invalid(
            "CREATE TABLE … AS SELECT needs a GROUP BY; use CREATE STREAM … AS SELECT for a stream",
        )),
        _ => {}
    }
    let topic = properties
        .remove("KAFKA_TOPIC")
        .unwrap_or_else(|| name.to_string());
    let value_format = take_format(&mut properties)?;
    let partitions = take_partitions(&mut properties)?;
    reject_unknown(&properties)?;
    Ok(QuerySink {
        sink: SourceDef {
            name: name.to_string(),
            kind,
            topic,
            value_format,
            schema: plan.output_schema.clone(),
            key_columns: plan
                .key_columns
                .iter()
                .map(|&i| plan.output_schema.field(i).name().clone())
                .collect(),
            event_time: EventTime::RecordTimestamp,
            timestamp_format: None,
            window: plan.source.window.map(|w| w.spec),
            statement: statement.to_string(),
        },
        partitions,
    })
}

fn take_format(properties: &mut Properties) -> Result<ValueFormat> {
    match properties
        .remove("VALUE_FORMAT")
        .or_else(|| properties.remove("FORMAT"))
    {
        Some(f) => ValueFormat::parse(&f),
        None => Ok(ValueFormat::Json),
    }
}

fn take_partitions(properties: &mut Properties) -> Result<Option<i32>> {
    properties
        .remove("PARTITIONS")
        .map(|p| {
            p.parse::<i32>().ok().filter(|p| *p > 0).ok_or_else(|| {
                PlanError::invalid(format!(
                    "PARTITIONS must be a positive whole number, not '{p}'"
                ))
            })
        })
        .transpose()
}

fn reject_unknown(properties: &Properties) -> Result<()> {
    match properties.keys().find(|k| !IGNORED.contains(&k.as_str())) {
        Some(k) => Err(PlanError::invalid(format!(
            "unknown property {k}; Sluice knows KAFKA_TOPIC, VALUE_FORMAT, PARTITIONS, TIMESTAMP and TIMESTAMP_FORMAT"
        ))),
        None => Ok(()),
    }
}
