//! Event time read from a VARCHAR column with `TIMESTAMP_FORMAT`, through the pipeline.

use serde_json::{json, Value};
use sluice_sql_planner::ddl::declare_source;
use sluice_sql_planner::{parse_statements, Catalog, QueryPlanner, SourceKind, Statement};
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

fn plan(ddl: &str, sql: &str) -> sluice_sql_planner::StreamPlan {
    let mut catalog = Catalog::new();
    let Statement::CreateSource {
        name,
        columns,
        properties,
        ..
    } = parse_statements(ddl).expect("ddl").remove(0).statement
    else {
        unreachable!("a CREATE STREAM")
    };
    catalog
        .insert(
            declare_source(
                SourceKind::Stream,
                &name.to_uppercase(),
                &columns,
                properties,
                ddl,
            )
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

#[test]
fn varchar_times_with_a_format_place_records_in_their_windows() {
    let plan = plan(
        "CREATE STREAM clicks (user_id VARCHAR, at VARCHAR) WITH (KAFKA_TOPIC='clicks', \
         TIMESTAMP='at', TIMESTAMP_FORMAT='yyyy-MM-dd''T''HH:mm:ssX');",
        "CREATE TABLE per_minute AS SELECT user_id, WINDOWSTART AS ws, COUNT(*) AS n FROM clicks \
         WINDOW TUMBLING (SIZE 1 MINUTE, GRACE PERIOD 0 SECONDS) GROUP BY user_id EMIT FINAL;",
    );
    let values = [
        json!({"user_id": "u1", "at": "2026-11-25T10:00:05Z"}),
        json!({"user_id": "u1", "at": "2026-11-25T11:00:59+01:00"}),
        json!({"user_id": "u1", "at": "25/11/2026 10:00"}),
        json!({"user_id": "u1", "at": "2026-11-25T10:01:00Z"}),
    ];
    let records: Vec<RawRecord> = values
        .iter()
        .enumerate()
        .map(|(i, v)| RawRecord {
            partition: 0,
            offset: i as i64,
            timestamp_ms: None,
            value: Some(v.to_string().into_bytes()),
        })
        .collect();
    let stats = QueryStats::default();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    let out = pipeline.process(&records, &stats).expect("process");
    let rows: Vec<Value> = out
        .iter()
        .flat_map(|b| {
            let mut buf = vec![];
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
            w.write(&b.rows).expect("write");
            w.finish().expect("finish");
            serde_json::from_slice::<Vec<Value>>(&buf).expect("json")
        })
        .collect();
    // 10:00 UTC = 1 795 600 800 000 ms; both 10:00:05Z and 11:00:59+01:00 are in that minute.
    assert_eq!(
        rows,
        vec![json!({"user_id": "u1", "ws": 1_795_600_800_000i64, "n": 2})]
    );
    let snapshot = stats.snapshot();
    assert_eq!(
        snapshot.malformed_records, 1,
        "the value in another pattern is skipped"
    );
    assert!(snapshot.recent_errors[0]
        .message
        .contains("does not match TIMESTAMP_FORMAT"));
}
