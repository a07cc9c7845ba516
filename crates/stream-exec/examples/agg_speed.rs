//! Engine-only speed of keyed window aggregation: events/s through
//! [`Pipeline::process_decoded`] for tumbling, hopping and session windows over 100k keys,
//! and the state bytes per group (resident memory grown per group held).
//!
//! `cargo run --release -p sluice-stream-exec --example agg_speed [events] [--changelog]
//! [--only=NAME] [--memory] [--keys=N]` (`--memory`: only the state size)
//! (`--changelog` also takes the state changes after every batch, as a persistent query
//! does).

use std::sync::Arc;
use std::time::Instant;

use datafusion::arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice_sql_planner::ddl::declare_source;
use sluice_sql_planner::{
    parse_statements, Catalog, QueryPlanner, SourceKind, Statement, StreamPlan,
};
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

const DDL: &str = "CREATE STREAM tx (card_id VARCHAR, merchant VARCHAR, amount DOUBLE, \
    country VARCHAR, ts BIGINT) WITH (KAFKA_TOPIC='tx', TIMESTAMP='ts');";
const BATCH: usize = 4096;

fn plan(sql: &str) -> StreamPlan {
    let mut catalog = Catalog::new();
    let Statement::CreateSource {
        name,
        columns,
        properties,
        ..
    } = parse_statements(DDL).expect("ddl").remove(0).statement
    else {
        unreachable!("a CREATE STREAM")
    };
    catalog
        .insert(
            declare_source(SourceKind::Stream, &name, &columns, properties, DDL)
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

/// `events` events in batches of [`BATCH`]: random keys among `keys`, 10 events per ms.
fn events(events: usize, keys: u64) -> Vec<(RecordBatch, Vec<RawRecord>)> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("card_id", DataType::Utf8, true),
        Field::new("merchant", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("country", DataType::Utf8, true),
        Field::new("ts", DataType::Int64, true),
    ]));
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    // On a minute boundary, so the first 600k events fall in one tumbling window.
    let base = 1_700_000_040_000_i64;
    (0..events)
        .step_by(BATCH)
        .map(|start| {
            let n = BATCH.min(events - start);
            let keys: Vec<String> = (0..n)
                .map(|_| format!("card-{:06}", next() % keys))
                .collect();
            let amounts: Vec<f64> = (0..n).map(|_| (next() % 100_000) as f64 / 100.0).collect();
            let ts: Vec<i64> = (start..start + n).map(|i| base + i as i64 / 10).collect();
            let batch = RecordBatch::try_new(
                schema.clone(),
                vec![
                    Arc::new(StringArray::from(keys)),
                    Arc::new(StringArray::from(vec!["m"; n])),
                    Arc::new(Float64Array::from(amounts)),
                    Arc::new(StringArray::from(vec!["NL"; n])),
                    Arc::new(Int64Array::from(ts)),
                ],
            )
            .expect("batch");
            let records = (start..start + n)
                .map(|i| RawRecord {
                    partition: 0,
                    offset: i as i64,
                    timestamp_ms: None,
                    value: None,
                })
                .collect();
            (batch, records)
        })
        .collect()
}

fn rss_kb() -> i64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// Events/s of `sql` over `input`, the output rows, and the groups held at the end.
fn run(sql: &str, input: &[(RecordBatch, Vec<RawRecord>)], changelog: bool) -> (f64, usize, usize) {
    let plan = plan(sql);
    let stats = QueryStats::default();
    let now = Instant::now();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    pipeline.assign([0], now);
    let mut rows = 0;
    let start = Instant::now();
    for (batch, records) in input {
        for out in pipeline
            .process_decoded(batch, records, &stats, now)
            .expect("process")
        {
            rows += out.num_rows();
        }
        if changelog {
            pipeline.take_state_changes().expect("changes");
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let events: usize = input.iter().map(|(b, _)| b.num_rows()).sum();
    (events as f64 / secs, rows, pipeline.state_groups())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args
        .iter()
        .find_map(|a| a.parse().ok())
        .unwrap_or(2_000_000);
    let changelog = args.iter().any(|a| a == "--changelog");
    let only = args.iter().find(|a| a.starts_with("--only=")).cloned();
    let keys: u64 = args
        .iter()
        .find_map(|a| a.strip_prefix("--keys=").and_then(|k| k.parse().ok()))
        .unwrap_or(100_000);
    let input = events(n, keys);
    let grace = "GRACE PERIOD 5 SECONDS";
    let select = "SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM tx";
    let queries = [
        (
            "TUMBLE CHANGES",
            format!("CREATE TABLE t AS {select} WINDOW TUMBLING (SIZE 1 MINUTE, {grace}) GROUP BY card_id EMIT CHANGES;"),
        ),
        (
            "TUMBLE FINAL",
            format!("CREATE TABLE t AS {select} WINDOW TUMBLING (SIZE 1 MINUTE, {grace}) GROUP BY card_id EMIT FINAL;"),
        ),
        (
            "HOP CHANGES",
            format!("CREATE TABLE t AS {select} WINDOW HOPPING (SIZE 1 MINUTE, ADVANCE BY 20 SECONDS, {grace}) GROUP BY card_id EMIT CHANGES;"),
        ),
        (
            "TUMBLE AVG/MIN/MAX",
            format!("CREATE TABLE t AS SELECT card_id, COUNT(amount) AS n, AVG(amount) AS mean, MIN(amount) AS lo, MAX(amount) AS hi FROM tx WINDOW TUMBLING (SIZE 1 MINUTE, {grace}) GROUP BY card_id EMIT CHANGES;"),
        ),
        (
            "SESSION CHANGES",
            format!("CREATE TABLE t AS {select} WINDOW SESSION (30 SECONDS, {grace}) GROUP BY card_id EMIT CHANGES;"),
        ),
    ];
    let memory_only = args.iter().any(|a| a == "--memory");
    for (name, sql) in queries.iter().filter(|_| !memory_only) {
        if only.as_ref().is_some_and(|o| !name.contains(&o[7..])) {
            continue;
        }
        let (rate, rows, groups) = run(sql, &input, changelog);
        println!(
            "{name:<20} {:>6.2}M events/s  ({rows} rows out, {groups} groups at end)",
            rate / 1e6
        );
    }
    // State size: every event in one window (measure in a fresh process with many keys,
    // `--memory --keys=1000000 1000000`, so the state outweighs freed transient memory).
    let one_window = input;
    let hour = (
        "TUMBLE 1 HOUR",
        format!("CREATE TABLE t AS {select} WINDOW TUMBLING (SIZE 1 HOUR) GROUP BY card_id EMIT CHANGES;"),
    );
    for (name, sql) in [&hour, &queries[4]] {
        if only.as_ref().is_some_and(|o| !name.contains(&o[7..])) {
            continue;
        }
        let plan = plan(sql);
        let stats = QueryStats::default();
        let now = Instant::now();
        let before = rss_kb();
        let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
        pipeline.assign([0], now);
        for (batch, records) in &one_window {
            pipeline
                .process_decoded(batch, records, &stats, now)
                .expect("process");
        }
        let grown = (rss_kb() - before) * 1024;
        let groups = pipeline.state_groups();
        println!(
            "{name:<20} state: {groups} groups, {:.0} bytes/group (RSS grew {} KiB)",
            grown as f64 / groups as f64,
            grown / 1024
        );
        drop(pipeline);
    }
}
