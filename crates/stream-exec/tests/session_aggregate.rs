//! `SessionAggregate` tables in, tables out: records go in as batches of (key, value,
//! time), result rows come out as text, `-` marking a tombstone.

use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use serde_json::{json, Value};
use sluice_stream_exec::operator::ChangeBatch;
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

mod support;

const EVENTS: &str =
    "CREATE STREAM ev (k VARCHAR, v BIGINT, ts BIGINT) WITH (KAFKA_TOPIC='ev', TIMESTAMP='ts');";

/// Sessions of 2 seconds, every aggregate that has a fast state and two that see rows in
/// arrival order.
const CHANGES: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, \
    COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean, \
    LATEST_BY_OFFSET(v) AS last_v, COLLECT_LIST(v) AS vs FROM ev \
    WINDOW SESSION (2 SECONDS, GRACE PERIOD 1 SECOND) GROUP BY k EMIT CHANGES;";

const FINAL: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, \
    COUNT(*) AS n, SUM(v) AS s, COLLECT_LIST(v) AS vs FROM ev \
    WINDOW SESSION (2 SECONDS, GRACE PERIOD 5 SECONDS) GROUP BY k EMIT FINAL;";

const HAVING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, \
    COUNT(*) AS n, SUM(v) AS s FROM ev WINDOW SESSION (2 SECONDS, GRACE PERIOD 1 SECOND) \
    GROUP BY k HAVING SUM(v) > 0 EMIT CHANGES;";

/// Run `sql` over `batches` of (key, value, time); the result rows of each batch, then of
/// the end of the stream, as `key start end aggregates…`. The watermark stays put (a
/// second partition holds it back) unless `watermark`.
fn run(sql: &str, watermark: bool, batches: &[&[(&str, i64, i64)]]) -> Vec<Vec<String>> {
    let plan = support::plan(EVENTS, sql);
    let stats = QueryStats::default();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    if !watermark {
        pipeline.assign([0, 1], std::time::Instant::now());
    }
    let mut offset = 0;
    let mut out = vec![];
    for batch in batches {
        let records: Vec<RawRecord> = batch
            .iter()
            .map(|(k, v, ts)| {
                offset += 1;
                RawRecord {
                    partition: 0,
                    offset,
                    timestamp_ms: None,
                    value: Some(
                        json!({"k": k, "v": v, "ts": ts})
                            .to_string()
                            .into_bytes()
                            .into(),
                    ),
                }
            })
            .collect();
        out.push(text(pipeline.process(&records, &stats).expect("process")));
    }
    out.push(text(pipeline.finish().expect("finish")));
    out
}

fn text(batches: Vec<ChangeBatch>) -> Vec<String> {
    let mut rows = vec![];
    for change in batches {
        let mut buf = vec![];
        let mut w = WriterBuilder::new().build::<_, JsonArray>(&mut buf);
        w.write(&change.rows).expect("json");
        w.finish().expect("json");
        let values: Vec<serde_json::Map<String, Value>> =
            serde_json::from_slice(&buf).expect("json");
        let names: Vec<&String> = change
            .rows
            .schema_ref()
            .fields()
            .iter()
            .map(|f| f.name())
            .collect();
        for (i, row) in values.into_iter().enumerate() {
            let cells: Vec<String> = names
                .iter()
                .map(|n| {
                    row.get(*n)
                        .map_or("null".into(), |v| v.to_string().replace('"', ""))
                })
                .collect();
            let mark = if change.is_tombstone(i) { "-" } else { "" };
            rows.push(format!("{mark}{}", cells.join(" ")));
        }
    }
    rows
}

#[test]
fn a_record_bridging_two_sessions_of_an_earlier_batch_merges_them() {
    let out = run(
        CHANGES,
        false,
        &[&[("a", 1, 1000), ("a", 2, 5000)], &[("a", 4, 3000)]],
    );
    assert_eq!(
        out[0],
        [
            "a 1000 1000 1 1 1 1 1.0 1 [1]",
            "a 5000 5000 1 2 2 2 2.0 2 [2]",
        ]
    );
    assert_eq!(
        out[1],
        [
            "-a 5000 5000 1 2 2 2 2.0 2 [2]",
            "-a 1000 1000 1 1 1 1 1.0 1 [1]",
            "a 1000 5000 3 7 1 4 2.3333333333333335 4 [1,2,4]",
        ]
    );
}

#[test]
fn an_out_of_order_record_moves_the_start_back_and_is_aggregated_in_arrival_order() {
    let out = run(
        CHANGES,
        false,
        &[
            &[("a", 5, 5000), ("b", 1, 5000)],
            &[("a", 7, 6000), ("a", 3, 4000)],
        ],
    );
    assert_eq!(
        out[1],
        [
            "-a 5000 5000 1 5 5 5 5.0 5 [5]",
            "a 4000 6000 3 15 3 7 5.0 3 [5,7,3]",
        ]
    );
}

#[test]
fn a_record_inside_a_session_rewrites_its_row_without_a_tombstone() {
    let out = run(
        CHANGES,
        false,
        &[&[("a", 1, 1000), ("a", 2, 3000)], &[("a", 3, 2000)]],
    );
    assert_eq!(out[0], ["a 1000 3000 2 3 1 2 1.5 2 [1,2]"]);
    assert_eq!(out[1], ["a 1000 3000 3 6 1 3 2.0 3 [1,2,3]"]);
}

#[test]
fn one_batch_can_open_several_sessions_of_several_keys() {
    let out = run(
        CHANGES,
        false,
        &[&[
            ("b", 1, 1000),
            ("a", 1, 3900),
            ("b", 2, 3500),
            ("a", 2, 1200),
            ("a", 3, 1500),
        ]],
    );
    // Keys in order of their first row, each key's sessions by start.
    assert_eq!(
        out[0],
        [
            "b 1000 1000 1 1 1 1 1.0 1 [1]",
            "b 3500 3500 1 2 2 2 2.0 2 [2]",
            "a 1200 1500 2 5 2 3 2.5 3 [2,3]",
            "a 3900 3900 1 1 1 1 1.0 1 [1]",
        ]
    );
}

#[test]
fn emit_final_writes_each_session_once_when_it_closes_merges_included() {
    let out = run(
        FINAL,
        true,
        &[
            &[("a", 1, 1000), ("b", 1, 1500), ("a", 2, 4000)],
            &[("a", 3, 2500), ("b", 2, 2000)],
            &[("c", 1, 11500)],
        ],
    );
    assert!(out[0].is_empty() && out[1].is_empty(), "{out:?}");
    // The watermark 11500 closes b (last 2000 + 2000 gap + 5000 grace) and a (4000 +
    // 7000), in that order; a's list is its two sessions' lists, merged, and then the
    // bridging record.
    assert_eq!(out[2], ["b 1500 2000 2 3 [1,2]", "a 1000 4000 3 6 [1,2,3]"]);
    assert_eq!(out[3], ["c 11500 11500 1 1 [1]"]);
}

#[test]
fn having_deletes_only_rows_it_wrote() {
    let out = run(
        HAVING,
        false,
        &[
            &[("a", -1, 1000), ("b", 5, 1000)],
            &[("a", 3, 1500), ("b", -9, 1200)],
            &[("a", -5, 1600)],
        ],
    );
    assert_eq!(out[0], ["b 1000 1000 1 5"]);
    // Tombstones first: b's written row; b's new row fails HAVING and is not written.
    assert_eq!(out[1], ["-b 1000 1000 1 5", "a 1000 1500 2 2"]);
    assert_eq!(out[2], ["-a 1000 1500 2 2"]);
}
