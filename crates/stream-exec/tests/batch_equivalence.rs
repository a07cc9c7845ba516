//! Property: after all input, a windowed aggregation's streaming result (the last update
//! per key and window) equals DataFusion's batch result for the same SQL over the same
//! events — whatever the batch sizes, and with records reordered within the grace period.
//! No Kafka: the pipeline is driven directly.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_sql_planner::ddl::declare_source;
use sluice_sql_planner::{parse_statements, Catalog, QueryPlanner, SourceKind, Statement};
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

fn plan(sql: &str) -> sluice_sql_planner::StreamPlan {
    let mut catalog = Catalog::new();
    let ddl = "CREATE STREAM ev (k VARCHAR, v BIGINT, ts BIGINT) WITH (KAFKA_TOPIC='ev', TIMESTAMP='ts');";
    let Statement::CreateSource {
        columns,
        properties,
        ..
    } = parse_statements(ddl).expect("ddl").remove(0).statement
    else {
        unreachable!("a CREATE STREAM")
    };
    catalog
        .insert(
            declare_source(SourceKind::Stream, "EV", &columns, properties, ddl)
                .expect("source")
                .source,
        )
        .expect("insert");
    let Statement::CreateAsSelect { query, .. } =
        parse_statements(sql).expect("sql").remove(0).statement
    else {
        unreachable!("a CTAS")
    };
    QueryPlanner::new().plan(&catalog, &query).expect("plans")
}

fn to_json(batches: &[RecordBatch]) -> Vec<Value> {
    let mut buf = vec![];
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        for b in batches {
            w.write(b).expect("write");
        }
        w.finish().expect("finish");
    }
    if buf.is_empty() {
        vec![]
    } else {
        serde_json::from_slice(&buf).expect("json")
    }
}

fn batch_result(events: &[Value], sql: &str) -> Vec<Value> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Utf8, true),
        Field::new("v", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
    ]));
    let mut d = ReaderBuilder::new(schema.clone())
        .build_decoder()
        .expect("decoder");
    let text: String = events.iter().map(|e| format!("{e}\n")).collect();
    d.decode(text.as_bytes()).expect("decode");
    let batch = d.flush().expect("flush").expect("rows");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let ctx = SessionContext::new();
        ctx.register_table(
            "ev",
            Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("mem")),
        )
        .expect("register");
        to_json(
            &ctx.sql(sql)
                .await
                .expect("sql")
                .collect()
                .await
                .expect("run"),
        )
    })
}

fn streaming_result(events: &[Value], chunks: &[usize], sql: &str) -> Vec<Value> {
    let plan = plan(sql);
    let mut pipeline = Pipeline::new("q", &plan).expect("pipeline");
    let stats = QueryStats::default();
    let records: Vec<RawRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| RawRecord {
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
            value: Some(e.to_string().into_bytes()),
        })
        .collect();
    let mut out = vec![];
    let mut rest = &records[..];
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        out.extend(pipeline.process(&rest[..n], &stats).expect("process"));
        rest = &rest[n..];
    }
    out.extend(pipeline.finish().expect("finish"));
    assert_eq!(
        stats.snapshot().late_records,
        0,
        "reordering stays within grace"
    );
    to_json(&out)
}

/// Last row per (k, ws), as a sorted map.
fn latest(rows: Vec<Value>) -> BTreeMap<(String, i64), Value> {
    rows.into_iter()
        .map(|r| {
            (
                (
                    r["k"].as_str().unwrap_or_default().to_string(),
                    r["ws"].as_i64().unwrap_or(-1),
                ),
                r,
            )
        })
        .collect()
}

/// Events in timestamp order, each shifted back by up to 2 s:
/// out of order, but far inside the grace.
fn events() -> impl Strategy<Value = Vec<Value>> {
    prop::collection::vec((0u8..4, -50i64..50, 0i64..2_000), 1..120).prop_map(|raw| {
        let mut t = 1_000_000i64;
        raw.into_iter()
            .enumerate()
            .map(|(i, (k, v, jitter))| {
                t += 700;
                json!({"k": format!("k{k}"), "v": v + i as i64, "ts": t - jitter})
            })
            .collect()
    })
}

const STREAMING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi \
    FROM ev WINDOW TUMBLING (SIZE 5 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k EMIT CHANGES;";
const BATCH: &str =
    "SELECT k, ts - ts % 5000 AS ws, COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi \
    FROM ev GROUP BY k, ts - ts % 5000";

const HOPPING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS s \
    FROM ev WINDOW HOPPING (SIZE 6 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k EMIT FINAL;";
/// Each event belongs to the three windows starting at its 2 s slot and the two before.
const HOPPING_BATCH: &str = "SELECT k, ws, COUNT(*) AS n, SUM(v) AS s FROM ( \
    SELECT k, v, ts - ts % 2000 AS ws FROM ev UNION ALL \
    SELECT k, v, ts - ts % 2000 - 2000 AS ws FROM ev UNION ALL \
    SELECT k, v, ts - ts % 2000 - 4000 AS ws FROM ev) GROUP BY k, ws";

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn tumbling_changelog_ends_at_the_batch_result(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let streamed = latest(streaming_result(&ev, &chunks, STREAMING));
        let batch = latest(batch_result(&ev, BATCH));
        prop_assert_eq!(streamed, batch);
    }

    #[test]
    fn hopping_final_rows_equal_the_batch_result(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let rows = streaming_result(&ev, &chunks, HOPPING);
        let n = rows.len();
        let streamed = latest(rows);
        prop_assert_eq!(n, streamed.len(), "EMIT FINAL sends one row per key and window");
        let batch = latest(batch_result(&ev, HOPPING_BATCH));
        prop_assert_eq!(streamed, batch);
    }
}
