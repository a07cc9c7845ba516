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
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

mod support;

const EVENTS: &str =
    "CREATE STREAM ev (k VARCHAR, v BIGINT, ts BIGINT) WITH (KAFKA_TOPIC='ev', TIMESTAMP='ts');";

fn plan(sql: &str) -> sluice_sql_planner::StreamPlan {
    support::plan(EVENTS, sql)
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
        // One partition, so order-sensitive aggregates see the events in input order.
        let ctx = SessionContext::new_with_config(
            datafusion::prelude::SessionConfig::new().with_target_partitions(1),
        );
        for f in sluice_sql_planner::functions::udafs() {
            ctx.register_udaf(f.as_ref().clone());
        }
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

/// One generated input record: its JSON value, source partition, and whether it was made
/// late on purpose (far behind its partition's stream time).
#[derive(Debug, Clone)]
struct Event {
    value: Value,
    partition: i32,
    late: bool,
}

/// The records holding `events`, at offsets from 0 on.
fn records_of(events: &[Event]) -> Vec<RawRecord> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| RawRecord {
            partition: e.partition,
            offset: i as i64,
            timestamp_ms: None,
            value: Some(e.value.to_string().into_bytes().into()),
        })
        .collect()
}

/// Run `sql` over `events` in batches of `chunks` sizes; returns every result row (a
/// tombstone as `{"k":…, "ws":…, "we":…, "tombstone":true}`) and the late count.
fn streaming_result(events: &[Event], chunks: &[usize], sql: &str) -> (Vec<Value>, u64) {
    let plan = plan(sql);
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    let stats = QueryStats::default();
    let records = records_of(events);
    let mut out = vec![];
    let mut rest = &records[..];
    let mut sizes = chunks.iter().cycle();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        out.extend(pipeline.process(&rest[..n], &stats).expect("process"));
        rest = &rest[n..];
    }
    out.extend(pipeline.finish().expect("finish"));
    let mut rows = vec![];
    for change in out {
        let values = to_json(std::slice::from_ref(&change.rows));
        for (i, mut v) in values.into_iter().enumerate() {
            if change.is_tombstone(i) {
                v["tombstone"] = json!(true);
            }
            rows.push(v);
        }
    }
    (rows, stats.snapshot().late_records)
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

/// A changelog applied as a table keyed by (k, ws, we): rows upsert, tombstones delete.
fn apply_changelog(rows: Vec<Value>) -> BTreeMap<(String, i64, i64), Value> {
    let mut table = BTreeMap::new();
    for r in rows {
        let key = (
            r["k"].as_str().unwrap_or_default().to_string(),
            r["ws"].as_i64().unwrap_or(-1),
            r["we"].as_i64().unwrap_or(-1),
        );
        if r.get("tombstone").is_some() {
            assert!(
                table.remove(&key).is_some(),
                "tombstone for a row never written: {r}"
            );
        } else {
            table.insert(key, r);
        }
    }
    table
}

/// The plain reference sessionizer over events in arrival order: per key, sort by time
/// and cut where the gap between neighbours exceeds `gap`; each session as
/// (k, start, end) → {n, s, and the values that arrived first and last}.
fn sessions(events: &[Value], gap: i64) -> BTreeMap<(String, i64, i64), Value> {
    let mut by_key: BTreeMap<String, Vec<(i64, usize, i64)>> = BTreeMap::new();
    for (arrival, e) in events.iter().enumerate() {
        let k = e["k"].as_str().unwrap_or_default().to_string();
        by_key.entry(k).or_default().push((
            e["ts"].as_i64().unwrap_or(0),
            arrival,
            e["v"].as_i64().unwrap_or(0),
        ));
    }
    let mut out = BTreeMap::new();
    for (k, mut rows) in by_key {
        rows.sort();
        let mut i = 0;
        while i < rows.len() {
            let (start, mut end, mut n, mut s) = (rows[i].0, rows[i].0, 0, 0);
            let (mut first, mut last) = ((usize::MAX, 0), (0, 0));
            let mut seen = false;
            while i < rows.len() && rows[i].0 - end <= gap {
                let (ts, arrival, v) = rows[i];
                end = ts;
                n += 1;
                s += v;
                first = first.min((arrival, v));
                last = if seen {
                    last.max((arrival, v))
                } else {
                    (arrival, v)
                };
                seen = true;
                i += 1;
            }
            out.insert(
                (k.clone(), start, end),
                json!({"k": k, "ws": start, "we": end, "n": n, "s": s, "first_v": first.1, "last_v": last.1}),
            );
        }
    }
    out
}

/// The sessions a streaming query must produce, by the documented rules, followed
/// plainly: events are read in batches of `chunks` sizes; a record is late when a session
/// holding only it would be closed by its partition's stream time or the watermark
/// before the batch; after each batch the watermark (the minimum stream time over the
/// partitions that delivered) closes sessions with `last + gap + grace < watermark`, and
/// a later record within a gap of a closed session starts a new one. Returns the sessions
/// (keyed as [`sessions`]), the late count, and how many records came within a gap of a
/// closed session: when none did, the result must equal the plain sessionizer's.
fn sessions_as_streamed(
    events: &[Event],
    chunks: &[usize],
    gap: i64,
    grace: i64,
) -> (BTreeMap<(String, i64, i64), Value>, u64, usize) {
    /// start, end, n, s, (first arrival, v), (last arrival, v).
    type Session = (i64, i64, i64, i64, (usize, i64), (usize, i64));
    let mut open: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    let mut closed: BTreeMap<String, Vec<Session>> = BTreeMap::new();
    let mut stream_time: BTreeMap<i32, i64> = BTreeMap::new();
    let (mut watermark, mut late, mut bridging) = (i64::MIN, 0u64, 0usize);
    let mut sizes = chunks.iter().cycle();
    let mut rest = events.iter().enumerate().collect::<Vec<_>>();
    while !rest.is_empty() {
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        for (arrival, e) in rest.drain(..n) {
            let (k, ts, v) = (
                e.value["k"].as_str().unwrap_or_default().to_string(),
                e.value["ts"].as_i64().unwrap_or(0),
                e.value["v"].as_i64().unwrap_or(0),
            );
            let st = stream_time.entry(e.partition).or_insert(ts);
            *st = (*st).max(ts);
            if ts + gap + grace < (*st).max(watermark) {
                late += 1;
                continue;
            }
            let near = |s: &Session| s.0 - gap <= ts && ts <= s.1 + gap;
            if closed.get(&k).is_some_and(|c| c.iter().any(near)) {
                bridging += 1;
            }
            let sessions = open.entry(k).or_default();
            let mut merged: Session = (ts, ts, 1, v, (arrival, v), (arrival, v));
            sessions.retain(|s| {
                if !near(s) {
                    return true;
                }
                merged = (
                    merged.0.min(s.0),
                    merged.1.max(s.1),
                    merged.2 + s.2,
                    merged.3 + s.3,
                    merged.4.min(s.4),
                    merged.5.max(s.5),
                );
                false
            });
            sessions.push(merged);
        }
        if let Some(min) = stream_time.values().min() {
            watermark = watermark.max(*min);
        }
        for (k, sessions) in open.iter_mut() {
            let done = closed.entry(k.clone()).or_default();
            sessions.retain(|s| {
                let keep = s.1 + gap + grace >= watermark;
                if !keep {
                    done.push(*s);
                }
                keep
            });
        }
    }
    let mut out = BTreeMap::new();
    for (k, sessions) in open.into_iter().chain(closed) {
        for (start, end, n, s, first, last) in sessions {
            out.insert(
                (k.clone(), start, end),
                json!({"k": k, "ws": start, "we": end, "n": n, "s": s, "first_v": first.1, "last_v": last.1}),
            );
        }
    }
    (out, late, bridging)
}

fn on_time(events: &[Event]) -> Vec<Value> {
    events
        .iter()
        .filter(|e| !e.late)
        .map(|e| e.value.clone())
        .collect()
}

/// Events on three partitions in roughly timestamp order, each shifted back by up to 2 s
/// (out of order, but far inside the grace); some, after the first few and on a partition
/// that already delivered, are made a minute late, beyond any window's end plus grace.
fn events() -> impl Strategy<Value = Vec<Event>> {
    prop::collection::vec((0u8..4, -50i64..50, 0i64..2_000, 0i32..3, 0u8..20), 1..150).prop_map(
        |raw| {
            let mut t = 1_000_000i64;
            let mut seen = [false; 3];
            raw.into_iter()
                .enumerate()
                .map(|(i, (k, v, jitter, partition, dice))| {
                    t += 700;
                    // Late by its own partition's stream time, whatever the batch sizes.
                    let late = i >= 12 && dice == 0 && seen[partition as usize];
                    seen[partition as usize] = true;
                    let ts = if late { t - 60_000 } else { t - jitter };
                    Event {
                        value: json!({"k": format!("k{k}"), "v": v + i as i64, "ts": ts}),
                        partition,
                        late,
                    }
                })
                .collect()
        },
    )
}

/// Aggregates of every kind: plain, distinct, statistical, approximate, order-sensitive
/// (ksqlDB's), with FILTER.
const AGGREGATES: &str = "COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean, \
    ROUND(STDDEV(v), 6) AS sd, APPROX_DISTINCT(v % 7) AS ad, COUNT(DISTINCT v % 5) AS cd, \
    COUNT(*) FILTER (WHERE v > 0) AS positive, LATEST_BY_OFFSET(v) AS last_v, \
    EARLIEST_BY_OFFSET(v) AS first_v, TOPK(v, 2) AS top2, COLLECT_LIST(v) AS vs";

fn streaming_sql() -> String {
    format!(
        "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, {AGGREGATES} \
         FROM ev WINDOW TUMBLING (SIZE 5 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k EMIT CHANGES;"
    )
}

fn batch_sql() -> String {
    // The streaming result adds `windowend`, as the query selects no end bound.
    format!(
        "SELECT k, ts - ts % 5000 AS ws, {AGGREGATES}, ts - ts % 5000 + 5000 AS windowend \
         FROM ev GROUP BY k, ts - ts % 5000"
    )
}

const HOPPING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS s \
    FROM ev WINDOW HOPPING (SIZE 6 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k EMIT FINAL;";
/// Each event belongs to the three windows starting at its 2 s slot and the two before.
const HOPPING_BATCH: &str =
    "SELECT k, ws, COUNT(*) AS n, SUM(v) AS s, ws + 6000 AS windowend FROM ( \
    SELECT k, v, ts - ts % 2000 AS ws FROM ev UNION ALL \
    SELECT k, v, ts - ts % 2000 - 2000 AS ws FROM ev UNION ALL \
    SELECT k, v, ts - ts % 2000 - 4000 AS ws FROM ev) GROUP BY k, ws";

const SESSION_CHANGES: &str =
    "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, COUNT(*) AS n, SUM(v) AS s, EARLIEST_BY_OFFSET(v) AS first_v, LATEST_BY_OFFSET(v) AS last_v \
    FROM ev WINDOW SESSION (1500 MILLISECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k EMIT CHANGES;";
const SESSION_FINAL: &str =
    "CREATE TABLE t AS SELECT k, window_start, window_end, COUNT(*) AS n, SUM(v) AS s, EARLIEST_BY_OFFSET(v) AS first_v, LATEST_BY_OFFSET(v) AS last_v \
    FROM ev GROUP BY k, SESSION(ts, INTERVAL '1500' MILLISECOND) EMIT FINAL;";

const SESSION_HAVING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, COUNT(*) AS n, SUM(v) AS s, EARLIEST_BY_OFFSET(v) AS first_v, LATEST_BY_OFFSET(v) AS last_v \
    FROM ev WINDOW SESSION (1500 MILLISECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k HAVING SUM(v) % 3 <> 0 EMIT CHANGES;";

/// A HAVING that rows pass and fail as they update.
const TUMBLING_HAVING: &str = "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS s \
    FROM ev WINDOW TUMBLING (SIZE 5 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY k HAVING SUM(v) % 3 <> 0 EMIT CHANGES;";
const TUMBLING_HAVING_BATCH: &str = "SELECT k, ts - ts % 5000 AS ws, COUNT(*) AS n, SUM(v) AS s, ts - ts % 5000 + 5000 AS windowend \
    FROM ev GROUP BY k, ts - ts % 5000 HAVING SUM(v) % 3 <> 0";

/// A hopping aggregation with a WHERE clause and a grace shorter than the events'
/// jitter, so that a record's first windows may have closed; `sum` is its `s`.
fn hopping_where(emit: &str, sum: &str) -> String {
    format!(
        "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, COUNT(*) AS n, \
         {sum} AS s, MAX(ts) AS last_ts FROM ev \
         WINDOW HOPPING (SIZE 6 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 1 SECOND) \
         WHERE v % 4 <> 1 GROUP BY k EMIT {emit};"
    )
}

fn late_count(ev: &[Event]) -> u64 {
    ev.iter().filter(|e| e.late).count() as u64
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn tumbling_changelog_ends_at_the_batch_result(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let (rows, late) = streaming_result(&ev, &chunks, &streaming_sql());
        prop_assert_eq!(late, late_count(&ev));
        let batch = latest(batch_result(&on_time(&ev), &batch_sql()));
        prop_assert_eq!(latest(rows), batch);
    }

    #[test]
    fn a_batch_decoded_in_parts_is_processed_as_if_decoded_at_once(
        ev in events(),
        cuts in prop::collection::vec(0usize..150, 0..6),
        bad in prop::collection::vec(0usize..150, 0..5),
        empty in prop::collection::vec(0usize..150, 0..3),
    ) {
        // The Kafka loop decodes each chunk of a batch as it arrives.
        let mut records = records_of(&ev);
        let n = records.len();
        for &i in bad.iter().filter(|&&i| i < n) {
            records[i].value = Some(br#"{"k": "k1", "v": tru"#.to_vec().into());
        }
        for &i in empty.iter().filter(|&&i| i < n) {
            records[i].value = None;
        }
        let plan = plan(&streaming_sql());
        let now = std::time::Instant::now();
        let (at_once, in_parts) = (QueryStats::default(), QueryStats::default());
        let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
        let expected = pipeline.process_at(&records, &at_once, now).expect("process");
        let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
        let mut bounds: Vec<usize> = cuts.into_iter().filter(|&c| c < n).collect();
        bounds.extend([0, n]);
        bounds.sort_unstable();
        bounds.dedup();
        let parts = bounds
            .windows(2)
            .map(|w| pipeline.decode(&records[w[0]..w[1]], w[0]).expect("decodes"))
            .collect();
        let got = pipeline.process_parts(&records, parts, &in_parts, now).expect("process");
        let rows = |out: &[sluice_stream_exec::operator::ChangeBatch]| {
            to_json(&out.iter().map(|c| c.rows.clone()).collect::<Vec<_>>())
        };
        prop_assert_eq!(rows(&got), rows(&expected));
        let (a, b) = (at_once.snapshot(), in_parts.snapshot());
        prop_assert_eq!(b.malformed_records, a.malformed_records);
        prop_assert_eq!(b.late_records, a.late_records);
        prop_assert_eq!(b.records_in, a.records_in);
        // The same records skipped, for the same reasons.
        let skipped = |log: &[sluice_stream_exec::stats::ProcessingLogEntry]| {
            log.iter()
                .map(|e| (e.partition, e.offset, e.message.clone()))
                .collect::<Vec<_>>()
        };
        prop_assert_eq!(skipped(&b.recent_errors), skipped(&a.recent_errors));
    }

    #[test]
    fn hopping_final_rows_equal_the_batch_result(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let (rows, late) = streaming_result(&ev, &chunks, HOPPING);
        prop_assert_eq!(late, late_count(&ev));
        let n = rows.len();
        let streamed = latest(rows);
        prop_assert_eq!(n, streamed.len(), "EMIT FINAL sends one row per key and window");
        let batch = latest(batch_result(&on_time(&ev), HOPPING_BATCH));
        prop_assert_eq!(streamed, batch);
    }

    #[test]
    fn hopping_rows_scanned_once_per_record_are_the_rows_scanned_per_window(
        ev in events(),
        chunks in prop::collection::vec(1usize..40, 1..6),
        emit in prop::sample::select(vec!["CHANGES", "FINAL"]),
    ) {
        // Reading WINDOWSTART in an aggregate makes the scan write a row per window.
        let per_record = hopping_where(emit, "SUM(v)");
        let per_window = hopping_where(emit, "SUM(CASE WHEN WINDOWSTART >= 0 THEN v END)");
        let (once, late_once) = streaming_result(&ev, &chunks, &per_record);
        let (each, late_each) = streaming_result(&ev, &chunks, &per_window);
        prop_assert_eq!(late_once, late_each);
        prop_assert_eq!(once, each);
    }

    #[test]
    fn session_changelog_ends_at_the_reference_sessions(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let (rows, late) = streaming_result(&ev, &chunks, SESSION_CHANGES);
        prop_assert_eq!(late, late_count(&ev));
        prop_assert_eq!(apply_changelog(rows), sessions(&on_time(&ev), 1500));
    }

    #[test]
    fn session_changelog_with_having_deletes_only_rows_it_wrote(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        // apply_changelog fails on a tombstone for a row never written.
        let (rows, _) = streaming_result(&ev, &chunks, SESSION_HAVING);
        let mut expected = sessions(&on_time(&ev), 1500);
        expected.retain(|_, v| v["s"].as_i64().unwrap_or(0) % 3 != 0);
        prop_assert_eq!(apply_changelog(rows), expected);
    }

    #[test]
    fn tumbling_changelog_with_having_ends_at_the_batch_result(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        // Groups pass and fail HAVING as they update: a row that stops passing is deleted.
        let (rows, _) = streaming_result(&ev, &chunks, TUMBLING_HAVING);
        let batch: BTreeMap<(String, i64, i64), Value> = batch_result(&on_time(&ev), TUMBLING_HAVING_BATCH)
            .into_iter()
            .map(|r| ((r["k"].as_str().unwrap_or_default().to_string(), r["ws"].as_i64().unwrap_or(-1), -1), r))
            .collect();
        prop_assert_eq!(apply_changelog(rows), batch);
    }

    #[test]
    fn session_final_rows_equal_the_reference_sessions(ev in events(), chunks in prop::collection::vec(1usize..40, 1..6)) {
        let (rows, late) = streaming_result(&ev, &chunks, SESSION_FINAL);
        prop_assert_eq!(late, late_count(&ev));
        let n = rows.len();
        let streamed: BTreeMap<(String, i64, i64), Value> = rows
            .into_iter()
            .map(|r| {
                prop_assert!(r.get("tombstone").is_none(), "EMIT FINAL writes no tombstones");
                let (ws, we) = (iso_ms(&r["window_start"]), iso_ms(&r["window_end"]));
                let k = r["k"].as_str().unwrap_or_default().to_string();
                Ok(((k.clone(), ws, we), json!({"k": k, "ws": ws, "we": we, "n": r["n"], "s": r["s"], "first_v": r["first_v"], "last_v": r["last_v"]})))
            })
            .collect::<Result<_, TestCaseError>>()?;
        prop_assert_eq!(n, streamed.len(), "EMIT FINAL sends one row per session");
        // The function spelling's grace is 0: a session can close while a record that
        // bridges to it is still on its way (from a partition behind the others).
        let (expected, expected_late, bridging) = sessions_as_streamed(&ev, &chunks, 1500, 0);
        prop_assert_eq!(expected_late, late_count(&ev));
        if bridging == 0 {
            prop_assert_eq!(&expected, &sessions(&on_time(&ev), 1500));
        }
        prop_assert_eq!(streamed, expected);
    }
}

/// A TIMESTAMP as arrow's JSON writer prints it (`1970-01-01T00:16:40.700`), in epoch ms.
fn iso_ms(v: &Value) -> i64 {
    let text = v.as_str().unwrap_or_default();
    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(text)
        .expect("a timestamp")
        / 1_000_000
}
