//! What the engine says about its catalog: SHOW STREAMS / TABLES lists, DESCRIBE, and
//! the ksqlDB names of column types.

use serde_json::{json, Value};
use sluice_sql_planner::datafusion::arrow::datatypes::{DataType, Schema, TimeUnit};
use sluice_sql_planner::{EventTime, SourceKind};

use super::Engine;
use crate::error::ApiError;
use crate::query::PersistentQuery;

impl Engine {
    pub(super) fn source_list(&self, kind: SourceKind) -> Vec<Value> {
        self.catalog
            .sources()
            .filter(|s| s.kind == kind)
            .map(|s| {
                json!({
                    "type": kind.as_str(),
                    "name": s.name,
                    "topic": s.topic,
                    "keyFormat": "JSON",
                    "valueFormat": s.value_format.as_str(),
                    "isWindowed": s.window.is_some(),
                })
            })
            .collect()
    }

    pub(super) async fn describe(
        &self,
        text: &str,
        name: &str,
        extended: bool,
    ) -> Result<Value, ApiError> {
        let source = self.catalog.require(name)?;
        let read: Vec<&PersistentQuery> = self
            .queries
            .values()
            .filter(|q| q.source == source.name)
            .collect();
        let write: Vec<&PersistentQuery> = self
            .queries
            .values()
            .filter(|q| q.sink == source.name)
            .collect();
        let query_json = |q: &&PersistentQuery| {
            let stats = q.stats.snapshot();
            json!({
                "id": q.id,
                "queryString": q.statement,
                "sinks": [q.sink],
                "sinkKafkaTopics": [q.sink_topic],
                "state": q.state().as_str(),
                "queryType": "PERSISTENT",
                "statistics": stats,
            })
        };
        let totals = write
            .iter()
            .chain(read.iter())
            .fold((0u64, 0u64, 0u64, 0u64), |acc, q| {
                let s = q.stats.snapshot();
                (
                    acc.0 + s.records_in,
                    acc.1 + s.records_out,
                    acc.2 + s.malformed_records,
                    acc.3 + s.late_records,
                )
            });
        let mut fields = fields_json(&source.schema);
        for key in &source.key_columns {
            for f in fields.iter_mut() {
                if f["name"] == key.as_str() {
                    f["type"] = Value::String("KEY".into());
                }
            }
        }
        // Kafka may be down: DESCRIBE still answers, and says so.
        let mut warnings = vec![];
        let partitions = match tokio::time::timeout(
            std::time::Duration::from_secs(3),
            self.topics.partitions(&source.topic),
        )
        .await
        {
            Ok(Ok(p)) => p,
            Ok(Err(e)) => {
                warnings.push(json!({"message": format!("partitions unknown: {}", e.message)}));
                None
            }
            Err(_) => {
                warnings.push(
                    json!({"message": "partitions unknown: Kafka did not answer within 3 s"}),
                );
                None
            }
        };
        Ok(json!({
            "@type": "sourceDescription",
            "statementText": text,
            "sourceDescription": {
                "name": source.name,
                "windowType": source.window.map(|w| match w.kind {
                    sluice_sql_planner::WindowKind::Tumbling { .. } => "TUMBLING",
                    sluice_sql_planner::WindowKind::Hopping { .. } => "HOPPING",
                    sluice_sql_planner::WindowKind::Session { .. } => "SESSION",
                }),
                "readQueries": read.iter().map(query_json).collect::<Vec<_>>(),
                "writeQueries": write.iter().map(query_json).collect::<Vec<_>>(),
                "fields": fields,
                "type": source.kind.as_str(),
                "timestamp": match &source.event_time {
                    EventTime::RecordTimestamp => String::new(),
                    EventTime::Column(c) => c.clone(),
                },
                "statistics": format!("records-in: {} records-out: {}", totals.0, totals.1),
                "errorStats": format!("malformed-records: {} late-records: {}", totals.2, totals.3),
                "extended": extended,
                "keyFormat": "JSON",
                "valueFormat": source.value_format.as_str(),
                "topic": source.topic,
                "partitions": partitions,
                "replication": 1,
                "statement": source.statement,
            },
            "warnings": warnings,
        }))
    }
}

/// ksqlDB's name of an Arrow type.
pub fn sql_type(t: &DataType) -> String {
    match t {
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 => "INTEGER".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "BIGINT".into(),
        DataType::Float32 | DataType::Float64 => "DOUBLE".into(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "STRING".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "BYTES".into(),
        DataType::Date32 | DataType::Date64 => "DATE".into(),
        DataType::Timestamp(TimeUnit::Millisecond, _) | DataType::Timestamp(_, _) => {
            "TIMESTAMP".into()
        }
        DataType::Decimal128(p, s) => format!("DECIMAL({p}, {s})"),
        DataType::List(f) | DataType::LargeList(f) => format!("ARRAY<{}>", sql_type(f.data_type())),
        other => other.to_string().to_uppercase(),
    }
}

pub(super) fn fields_json(schema: &Schema) -> Vec<Value> {
    schema
        .fields()
        .iter()
        .map(|f| json!({ "name": f.name(), "schema": { "type": sql_type(f.data_type()) } }))
        .collect()
}
