//! Event time and the watermark through the pipeline: VARCHAR times with
//! `TIMESTAMP_FORMAT`, idle partitions, late records.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

use support::plan;

mod support;

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
            value: Some(v.to_string().into_bytes().into()),
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
        vec![
            json!({"user_id": "u1", "ws": 1_795_600_800_000i64, "n": 2, "windowend": 1_795_600_860_000i64})
        ]
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

fn record(partition: i32, offset: i64, v: Value) -> RawRecord {
    RawRecord {
        partition,
        offset,
        timestamp_ms: None,
        value: Some(v.to_string().into_bytes().into()),
    }
}

fn rows(out: &[sluice_stream_exec::operator::ChangeBatch]) -> Vec<Value> {
    out.iter()
        .flat_map(|b| {
            let mut buf = vec![];
            let mut w = datafusion::arrow::json::ArrayWriter::new(&mut buf);
            w.write(&b.rows).expect("write");
            w.finish().expect("finish");
            if buf.is_empty() {
                vec![]
            } else {
                serde_json::from_slice::<Vec<Value>>(&buf).expect("json")
            }
        })
        .collect()
}

const EVENTS: &str =
    "CREATE STREAM ev (k VARCHAR, ts BIGINT) WITH (KAFKA_TOPIC='ev', TIMESTAMP='ts');";
const PER_SECOND: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n FROM ev \
    WINDOW TUMBLING (SIZE 1 SECOND, GRACE PERIOD 0 SECONDS) GROUP BY k EMIT FINAL;";

#[test]
fn idle_partition_stops_holding_the_watermark_back() {
    let plan = plan(EVENTS, PER_SECOND);
    let stats = QueryStats::default();
    let timeout = Duration::from_secs(10);
    let mut pipeline = Pipeline::new("q", &plan, Some(timeout)).expect("pipeline");
    let start = Instant::now();
    pipeline.assign([0, 1], start);
    // Partition 1 never delivers: while it is not idle, no window closes.
    let out = pipeline
        .process_at(
            &[
                record(0, 0, json!({"k": "a", "ts": 1_000})),
                record(0, 1, json!({"k": "a", "ts": 5_000})),
            ],
            &stats,
            start,
        )
        .expect("process");
    assert!(rows(&out).is_empty(), "partition 1 holds the watermark");
    let out = pipeline
        .tick(start + Duration::from_secs(5), &stats)
        .expect("tick");
    assert!(rows(&out).is_empty(), "not idle yet");
    // Partition 0 keeps delivering; partition 1 has been silent for longer than the timeout.
    let later = start + Duration::from_secs(11);
    let out = pipeline
        .process_at(
            &[record(0, 2, json!({"k": "a", "ts": 6_000}))],
            &stats,
            later,
        )
        .expect("process");
    assert_eq!(
        rows(&out),
        vec![
            json!({"k": "a", "ws": 1_000, "n": 1, "windowend": 2_000}),
            json!({"k": "a", "ws": 5_000, "n": 1, "windowend": 6_000})
        ]
    );
    // Partition 1 wakes up with an old record: its window has closed, so it is late.
    let out = pipeline
        .process_at(
            &[record(1, 0, json!({"k": "b", "ts": 2_500}))],
            &stats,
            later,
        )
        .expect("process");
    assert!(rows(&out).is_empty());
    let snapshot = stats.snapshot();
    assert_eq!(snapshot.late_records, 1);
    let entry = &snapshot.recent_errors[0];
    assert_eq!((entry.partition, entry.offset), (1, 0));
    assert!(
        entry
            .message
            .starts_with("late by 3000 ms: event time 2500"),
        "{}",
        entry.message
    );
}

#[test]
fn closed_windows_leave_no_state() {
    let plan = plan(EVENTS, PER_SECOND);
    let stats = QueryStats::default();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    let mut emitted = 0;
    for i in 0..10_000i64 {
        let batch: Vec<RawRecord> = (0..10)
            .map(|k| {
                record(
                    0,
                    i * 10 + k,
                    json!({"k": format!("k{k}"), "ts": i * 1_000 + k}),
                )
            })
            .collect();
        emitted += rows(&pipeline.process(&batch, &stats).expect("process")).len();
        assert!(
            pipeline.state_groups() <= 20,
            "only the open second's groups are held, not {}",
            pipeline.state_groups()
        );
    }
    assert_eq!(emitted, 9_999 * 10, "every closed window was emitted once");
    assert_eq!(stats.snapshot().state_groups, 10);
}
