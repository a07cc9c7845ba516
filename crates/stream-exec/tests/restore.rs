//! Property: a pipeline restarted from its changelog continues exactly as if it had never
//! stopped. After every batch the test keeps the latest value of each changelog key (what
//! a compacted changelog topic holds); at random batches it throws the pipeline away,
//! builds a new one from those values, and goes on. The result rows, tombstones included,
//! must equal an uninterrupted run's, row for row.

use std::collections::HashMap;

use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice_stream_exec::changelog::KeyedRecord;
use sluice_stream_exec::frames::Frames;
use sluice_stream_exec::{Pipeline, QueryStats, RawRecord};

mod support;

const EVENTS: &str =
    "CREATE STREAM ev (k VARCHAR, v BIGINT, ts BIGINT) WITH (KAFKA_TOPIC='ev', TIMESTAMP='ts');";

const AGGREGATES: &str = "COUNT(*) AS n, SUM(v) AS s, MIN(v) AS lo, MAX(v) AS hi, AVG(v) AS mean, \
    ROUND(STDDEV(v), 6) AS sd, APPROX_DISTINCT(v % 7) AS ad, COUNT(DISTINCT v % 5) AS cd, \
    COUNT(*) FILTER (WHERE v > 0) AS positive, LATEST_BY_OFFSET(v) AS last_v, \
    EARLIEST_BY_OFFSET(v) AS first_v, TOPK(v, 2) AS top2, COLLECT_LIST(v) AS vs";

fn queries() -> Vec<String> {
    vec![
        format!(
            "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, {AGGREGATES} FROM ev \
             WINDOW TUMBLING (SIZE 5 SECONDS, GRACE PERIOD 3 SECONDS) GROUP BY k EMIT CHANGES;"
        ),
        "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS n, SUM(v) AS s FROM ev \
         WINDOW HOPPING (SIZE 6 SECONDS, ADVANCE BY 2 SECONDS, GRACE PERIOD 1 SECOND) \
         GROUP BY k EMIT FINAL;"
            .into(),
        "CREATE TABLE t AS SELECT k, COUNT(*) AS n, SUM(v) AS s FROM ev GROUP BY k \
         HAVING SUM(v) % 3 <> 0 EMIT CHANGES;"
            .into(),
        format!(
            "CREATE TABLE t AS SELECT k, WINDOWSTART AS ws, WINDOWEND AS we, {AGGREGATES} FROM ev \
             WINDOW SESSION (1500 MILLISECONDS, GRACE PERIOD 2 SECONDS) GROUP BY k \
             HAVING SUM(v) % 3 <> 0 EMIT CHANGES;"
        ),
        "CREATE TABLE t AS SELECT k, window_start, window_end, COUNT(*) AS n, \
         LATEST_BY_OFFSET(v) AS last_v FROM ev GROUP BY k, SESSION(ts, INTERVAL '1500' MILLISECOND) \
         EMIT FINAL;"
            .into(),
    ]
}

/// Every result row as JSON, tombstones marked.
fn rows(out: Vec<sluice_stream_exec::operator::ChangeBatch>) -> Vec<Value> {
    let mut rows = vec![];
    for change in out {
        let mut buf = vec![];
        {
            let mut w = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, JsonArray>(&mut buf);
            w.write(&change.rows).expect("json");
            w.finish().expect("json");
        }
        let values: Vec<Value> = serde_json::from_slice(&buf).expect("json");
        for (i, mut v) in values.into_iter().enumerate() {
            if change.is_tombstone(i) {
                v["tombstone"] = json!(true);
            }
            rows.push(v);
        }
    }
    rows
}

/// Run `sql` over `records` in batches of `chunks` sizes, restarting from the changelog
/// before every batch whose index is in `restarts`.
fn run(sql: &str, records: &[RawRecord], chunks: &[usize], restarts: &[usize]) -> Vec<Value> {
    run_with_changelog(sql, records, chunks, restarts).0
}

/// Where a run keeps its pipeline's state between batches.
trait Changelog {
    /// After batch `batch`: take the pipeline's state changes.
    fn write(&mut self, batch: usize, pipeline: &mut Pipeline);
    /// At a restart: the entries to restore from.
    fn read(&mut self) -> HashMap<Vec<u8>, Vec<u8>>;
}

/// The latest value of each changelog key, as a compacted topic of one record per entry
/// holds them.
#[derive(Default)]
struct PerEntry(HashMap<Vec<u8>, Vec<u8>>);

impl Changelog for PerEntry {
    fn write(&mut self, _batch: usize, pipeline: &mut Pipeline) {
        for change in pipeline.take_state_changes().expect("state") {
            match change.value {
                Some(v) => self.0.insert(change.key, v),
                None => self.0.remove(&change.key),
            };
        }
    }

    fn read(&mut self) -> HashMap<Vec<u8>, Vec<u8>> {
        self.0.clone()
    }
}

/// The changelog as a query writes it exactly-once: frames, and a snapshot of the
/// operators' state after each batch whose index is in `snapshots`; read back as a query
/// reads it.
struct Framed {
    frames: Frames,
    log: Vec<KeyedRecord>,
    snapshots: Vec<usize>,
}

impl Changelog for Framed {
    fn write(&mut self, batch: usize, pipeline: &mut Pipeline) {
        let written = if self.snapshots.contains(&batch) {
            let snapshot = pipeline.take_state_snapshot().expect("snapshot");
            self.frames.pack_snapshot(&snapshot)
        } else {
            self.frames
                .pack(&pipeline.take_state_changes().expect("state"))
        };
        self.log
            .extend(written.into_iter().map(|c| (c.key, c.value)));
    }

    fn read(&mut self) -> HashMap<Vec<u8>, Vec<u8>> {
        let (entries, frames) = Frames::read_back(self.log.clone()).expect("read back");
        self.frames = frames;
        entries
    }
}

/// [`run`], and the changelog at the end: the latest value of each key.
fn run_with_changelog(
    sql: &str,
    records: &[RawRecord],
    chunks: &[usize],
    restarts: &[usize],
) -> (Vec<Value>, HashMap<Vec<u8>, Vec<u8>>) {
    let mut changelog = PerEntry::default();
    let rows = drive(sql, records, chunks, restarts, &mut changelog);
    (rows, changelog.0)
}

/// [`run`] with the changelog in frames, and snapshots after the batches in `snapshots`.
fn run_framed(
    sql: &str,
    records: &[RawRecord],
    chunks: &[usize],
    restarts: &[usize],
    snapshots: &[usize],
) -> Vec<Value> {
    let mut changelog = Framed {
        frames: Frames::default(),
        log: vec![],
        snapshots: snapshots.to_vec(),
    };
    drive(sql, records, chunks, restarts, &mut changelog)
}

/// Run `sql` over `records` in batches of `chunks` sizes, keeping its state in
/// `changelog`, and restarting from it before every batch whose index is in `restarts`.
fn drive(
    sql: &str,
    records: &[RawRecord],
    chunks: &[usize],
    restarts: &[usize],
    changelog: &mut impl Changelog,
) -> Vec<Value> {
    let plan = support::plan(EVENTS, sql);
    let stats = QueryStats::default();
    let now = std::time::Instant::now();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    pipeline.assign([0, 1], now);
    let mut out = vec![];
    let mut rest = records;
    let mut sizes = chunks.iter().cycle();
    let mut batch = 0;
    while !rest.is_empty() {
        if restarts.contains(&batch) {
            pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
            pipeline.assign([0, 1], now);
            pipeline.restore(&changelog.read(), now).expect("restore");
        }
        let n = (*sizes.next().unwrap_or(&1)).clamp(1, rest.len());
        out.extend(
            pipeline
                .process_at(&rest[..n], &stats, now)
                .expect("process"),
        );
        changelog.write(batch, &mut pipeline);
        rest = &rest[n..];
        batch += 1;
    }
    rows(out)
}

/// Record `offset` of `partition`: `{"k": k, "v": v, "ts": ts}`.
fn event(offset: i64, partition: i32, k: &str, v: i64, ts: i64) -> RawRecord {
    RawRecord {
        partition,
        offset,
        timestamp_ms: None,
        value: Some(
            json!({"k": k, "v": v, "ts": ts})
                .to_string()
                .into_bytes()
                .into(),
        ),
    }
}

/// Keyed events on two partitions, roughly in time order with some disorder; a few far
/// behind (late).
fn records() -> impl Strategy<Value = Vec<RawRecord>> {
    prop::collection::vec((0u8..5, -50i64..50, 0i64..2_500, 0i32..2, 0u8..25), 1..120).prop_map(
        |raw| {
            let mut t = 1_000_000i64;
            raw.into_iter()
                .enumerate()
                .map(|(i, (k, v, jitter, partition, dice))| {
                    t += 600;
                    let ts = if dice == 0 { t - 30_000 } else { t - jitter };
                    event(i as i64, partition, &format!("k{k}"), v + i as i64, ts)
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn a_restarted_pipeline_continues_exactly(
        records in records(),
        chunks in prop::collection::vec(1usize..30, 1..5),
        restarts in prop::collection::vec(1usize..12, 1..4),
    ) {
        for sql in queries() {
            let straight = run(&sql, &records, &chunks, &[]);
            let restarted = run(&sql, &records, &chunks, &restarts);
            prop_assert_eq!(&restarted, &straight, "{}", sql);
        }
    }

    /// The same through frames: a snapshot (which clears what was read before it) must
    /// hold every entry the operators need.
    #[test]
    fn a_pipeline_restarted_from_frames_and_snapshots_continues_exactly(
        records in records(),
        chunks in prop::collection::vec(1usize..30, 1..5),
        restarts in prop::collection::vec(1usize..12, 1..4),
        snapshots in prop::collection::vec(0usize..12, 1..4),
    ) {
        for sql in queries() {
            let straight = run(&sql, &records, &chunks, &[]);
            let restarted = run_framed(&sql, &records, &chunks, &restarts, &snapshots);
            prop_assert_eq!(&restarted, &straight, "{}", sql);
        }
    }
}

/// A snapshot after a batch that touched one key must still hold the others' state.
#[test]
fn a_snapshot_holds_the_keys_its_batch_did_not_touch() {
    let mut records = vec![];
    let mut at = |k: &str, v: i64, ts: i64| {
        let offset = records.len() as i64;
        records.push(event(offset, 0, k, v, ts));
    };
    for i in 0..5 {
        at(&format!("k{i}"), i + 1, 1_000_000 + i * 10);
    }
    at("k0", 7, 1_000_100);
    for i in 0..5 {
        at(&format!("k{i}"), i + 2, 1_000_200 + i * 10);
    }
    at("k0", 1, 1_020_000);
    for sql in queries() {
        let straight = run(&sql, &records, &[5, 1, 5, 1], &[]);
        // Batch 1 is the one event of k0: the snapshot after it, then a restart.
        let restarted = run_framed(&sql, &records, &[5, 1, 5, 1], &[2], &[1]);
        assert_eq!(restarted, straight, "{sql}");
    }
}

/// The test above would pass if restoring did nothing and every query were stateless;
/// this shows a restart without the changelog does change the result.
#[test]
fn a_pipeline_restarted_empty_differs() {
    let records: Vec<RawRecord> = (0..20)
        .map(|i| event(i, 0, "a", 1, 1_000_000 + i * 100))
        .collect();
    let sql = &queries()[0];
    let straight = run(sql, &records, &[5], &[]);
    let plan = support::plan(EVENTS, sql);
    let stats = QueryStats::default();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    let mut out = pipeline.process(&records[..10], &stats).expect("process");
    let mut fresh = Pipeline::new("q", &plan, None).expect("pipeline");
    out.extend(fresh.process(&records[10..], &stats).expect("process"));
    let last = |rows: &[Value]| rows.last().expect("rows")["n"].clone();
    assert_eq!(last(&straight), json!(20));
    assert_eq!(last(&rows(out)), json!(10));
}

/// A windowed aggregation keeps one changelog record per key, with the key's groups in
/// every open window; a key that has left every window is deleted (one window closing
/// later), so the changelog does not grow with the keys of windows long closed.
#[test]
fn the_changelog_holds_the_keys_of_open_windows_only() {
    // Key `k{w}` has events in window `w` only; 5 s tumbling windows, 30 of them; both
    // partitions deliver, so the watermark moves.
    let records: Vec<RawRecord> = (0..300)
        .map(|i| {
            event(
                i,
                (i % 2) as i32,
                &format!("k{}", i / 10),
                1,
                1_000_000 + i * 500,
            )
        })
        .collect();
    for sql in [&queries()[0], &queries()[1]] {
        let (rows, changelog) = run_with_changelog(sql, &records, &[7], &[]);
        assert!(rows.len() >= 30, "{sql}: {} rows", rows.len());
        let keys = group_keys(&changelog);
        assert!(
            !keys.is_empty() && keys.len() <= 4,
            "{sql}: the changelog holds {keys:?}"
        );
        // A restart from it goes on as if there had been none.
        let restarted = run(sql, &records, &[7], &[10, 25, 40]);
        assert_eq!(restarted, rows, "{sql}");
    }
}

/// Keys that have left every window are forgotten, not only deleted from the changelog:
/// on a stream whose keys never come back, the state stays the size of a few windows'.
#[test]
fn keys_that_left_every_window_are_forgotten() {
    // 500 seconds, a new key every 5 of them.
    let records: Vec<RawRecord> = (0..2000)
        .map(|i| {
            let key = format!("key-{}", i / 20);
            event(i, (i % 2) as i32, &key, 1, 1_000_000 + i * 250)
        })
        .collect();
    for sql in [&queries()[0], &queries()[1]] {
        let plan = support::plan(EVENTS, sql);
        let stats = QueryStats::default();
        let now = std::time::Instant::now();
        let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
        pipeline.assign([0, 1], now);
        let mut changelog = PerEntry::default();
        let mut bytes = vec![];
        for (batch, chunk) in records.chunks(40).enumerate() {
            pipeline.process_at(chunk, &stats, now).expect("process");
            changelog.write(batch, &mut pipeline);
            bytes.push(pipeline.state_bytes());
        }
        // The state after 20 windows' keys, and its largest after 100 windows' keys.
        let early = bytes[10..20].iter().max().copied().unwrap_or(0);
        let late = bytes[40..].iter().max().copied().unwrap_or(0);
        assert!(
            late < early * 2,
            "{sql}: {early} state bytes after 20 keys, up to {late} after 100"
        );
        assert!(group_keys(&changelog.0).len() <= 4, "{sql}");
        // And a restart goes on as if there had been none.
        let straight = run(sql, &records, &[40], &[]);
        let restarted = run(sql, &records, &[40], &[13, 29, 41]);
        assert_eq!(restarted, straight, "{sql}");
    }
}

/// EMIT FINAL writes a closed window's rows in key order, whatever order the keys came
/// in: with new keys arriving all along, and in windows holding few of the keys.
#[test]
fn a_closed_windows_rows_come_in_key_order() {
    let records: Vec<RawRecord> = (0..900)
        .map(|i| {
            // Scrambled keys from a set that grows; the last 20 seconds, one key only.
            let key = if i < 700 {
                format!("k{:03}", (i * 37) % (5 + i / 4))
            } else {
                "k500".to_string()
            };
            event(i, (i % 2) as i32, &key, 1, 1_000_000 + i * 100)
        })
        .collect();
    let sql = &queries()[1];
    let rows = run(sql, &records, &[50], &[]);
    let mut windows: Vec<(Value, Vec<String>)> = vec![];
    for row in &rows {
        let key = row["k"].as_str().expect("k").to_string();
        match windows.last_mut() {
            Some((ws, keys)) if *ws == row["ws"] => keys.push(key),
            _ => windows.push((row["ws"].clone(), vec![key])),
        }
    }
    assert!(windows.len() >= 20, "{} windows", windows.len());
    assert!(windows.iter().any(|(_, keys)| keys.len() == 1));
    assert!(windows.iter().any(|(_, keys)| keys.len() > 50));
    for (ws, keys) in &windows {
        assert!(keys.is_sorted(), "window {ws}: {keys:?}");
    }
}

/// A key's groups in several windows are one record: a hopping window's event is in
/// three windows, and their states are written together.
#[test]
fn a_keys_groups_in_several_windows_are_one_record() {
    let records: Vec<RawRecord> = (0..10)
        .map(|i| event(i, 0, "a", 1, 1_000_000 + i * 300))
        .collect();
    let (_, changelog) = run_with_changelog(&queries()[1], &records, &[4], &[]);
    assert_eq!(group_keys(&changelog).len(), 1, "{changelog:?}");
}

/// The changelog keys of groups (all but the stream time), as text.
fn group_keys(changelog: &HashMap<Vec<u8>, Vec<u8>>) -> Vec<String> {
    changelog
        .keys()
        .filter(|k| k.as_slice() != sluice_stream_exec::pipeline::STREAM_TIME_KEY)
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .collect()
}

/// 40 events of three keys on two partitions, 400 ms apart.
fn three_keys() -> Vec<RawRecord> {
    (0..40)
        .map(|i| {
            event(
                i,
                (i % 2) as i32,
                &format!("k{}", i % 3),
                i,
                1_000_000 + i * 400,
            )
        })
        .collect()
}

/// The name of the window bound among `sql`'s group columns (the one the old form of
/// changelog keys held).
fn window_bound(sql: &str) -> String {
    support::plan(EVENTS, sql)
        .operators
        .iter()
        .find_map(|op| match op {
            sluice_sql_planner::StreamOperator::WindowAggregate {
                group_exprs,
                output,
                ..
            } => output.fields()[..group_exprs.len()]
                .iter()
                .map(|f| f.name().clone())
                .find(|n| sluice_sql_planner::window::WINDOW_COLUMNS.contains(&n.as_str())),
            _ => None,
        })
        .expect("a window bound among the group columns")
}

/// A changelog of one record per group alone (written before records were per key): the
/// groups the first batch after the restore does not touch survive the next restart too.
#[test]
fn groups_of_a_changelog_of_the_old_form_survive_the_next_restart() {
    let sql = &queries()[1];
    let records = three_keys();
    let sorted = |mut rows: Vec<Value>| {
        rows.sort_by_key(|r| r.to_string());
        rows
    };
    let straight = sorted(run(sql, &records, &[5], &[]));
    let bound = window_bound(sql);
    let (mut out, per_key) = run_with_changelog(sql, &records[..20], &[5], &[]);
    // The same state under keys of the old form only (a window bound in the key).
    let mut changelog: HashMap<Vec<u8>, Vec<u8>> = per_key
        .into_iter()
        .map(
            |(key, value)| match key.as_slice() == sluice_stream_exec::pipeline::STREAM_TIME_KEY {
                true => (key, value),
                false => {
                    let key = String::from_utf8(key).expect("a JSON key");
                    let old = format!("{},\"{bound}\":0}}", key.trim_end_matches('}'));
                    (old.into_bytes(), value)
                }
            },
        )
        .collect();
    let mut restored = PerEntry(changelog.clone());
    // One event (of one key), then a restart from the changelog it left.
    out.extend(drive(sql, &records[20..21], &[1], &[0], &mut restored));
    changelog = restored.0;
    assert!(
        group_keys(&changelog)
            .iter()
            .all(|k| !k.contains(&format!("\"{bound}\""))),
        "the old records are deleted"
    );
    out.extend(drive(
        sql,
        &records[21..],
        &[5],
        &[0],
        &mut PerEntry(changelog),
    ));
    assert_eq!(sorted(out), straight);
}

/// A changelog written before records were per key holds one record per group, keyed
/// with the window bounds. A restore reads them, lets a key's newer record win, and
/// deletes them with its first state changes.
#[test]
fn records_of_one_group_each_are_read_then_deleted() {
    let sql = &queries()[1];
    let plan = support::plan(EVENTS, sql);
    let bound = window_bound(sql);
    let records = three_keys();
    let straight = run(sql, &records, &[5], &[]);
    let (_, early) = run_with_changelog(sql, &records[..10], &[5], &[]);
    let (before, mut changelog) = run_with_changelog(sql, &records[..20], &[5], &[]);
    // An older state of each key under a key of the old form.
    let mut old_keys = vec![];
    for key in group_keys(&early) {
        let value = early[key.as_bytes()].clone();
        let old = format!("{},\"{bound}\":0}}", key.trim_end_matches('}'));
        changelog.insert(old.clone().into_bytes(), value);
        old_keys.push(old);
    }
    assert!(!old_keys.is_empty());
    let stats = QueryStats::default();
    let now = std::time::Instant::now();
    let mut pipeline = Pipeline::new("q", &plan, None).expect("pipeline");
    pipeline.assign([0, 1], now);
    pipeline.restore(&changelog, now).expect("restore");
    let mut out = vec![];
    for chunk in records[20..].chunks(5) {
        out.extend(pipeline.process_at(chunk, &stats, now).expect("process"));
        for change in pipeline.take_state_changes().expect("state") {
            match change.value {
                Some(v) => changelog.insert(change.key, v),
                None => changelog.remove(&change.key),
            };
        }
    }
    let mut after = before;
    after.extend(rows(out));
    assert_eq!(after, straight);
    for old in &old_keys {
        assert!(!changelog.contains_key(old.as_bytes()), "{old} is deleted");
    }
}
