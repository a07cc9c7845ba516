//! Differential tests: windowed tables computed by the server from a 3-partition topic on
//! the real broker, compared with DataFusion batch queries (time windows) or a plain
//! reference sessionizer (sessions) over the records that are not late.
//!
//! Lateness is computed here, not assumed: per partition, stream time is the largest event
//! time produced to it so far (the record itself included), and a record is late when the
//! last window it belongs to closes at or before that. The engine judges a record by
//! max(its partition's stream time, watermark); the watermark is a minimum over partitions,
//! so it never exceeds that partition's stream time as long as no partition counts as idle.
//! The queries therefore get a long `sluice.idle.timeout.ms`, which makes the late set, and
//! the content of every window, independent of how the consumer interleaves partitions.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{
    batch_query, consume_until, epoch_ms, latest_by, produce_to_partitions, unique, Consumed,
    TestServer,
};

use crate::streams::{tx_schema, Lcg, TX_COLUMNS};

/// Not aligned to any window; events span three minutes from here.
const BASE: i64 = 1_764_000_003_217;
const SPAN: i64 = 180_000;
const CARDS: u64 = 6;
const PARTITIONS: i32 = 3;
/// Injected late records are this far behind their partition's stream time: beyond any
/// window end + grace (or gap + grace) used here.
const LATE_BY: i64 = 300_000;
/// Records whose arrival key (event time + disorder) is at or after this are produced in
/// the second phase (only the session changelog test uses two phases).
const SPLIT: i64 = BASE + 90_000;
/// Bridges of two sessions across SPLIT, per card: how far before SPLIT the first
/// session's last record, the bridging record and the second session's first record are.
/// Bridge minus last is 20 s (the gap exactly), 19.5 s and 18.9 s.
const BRIDGES: [(i64, i64, i64); 3] = [
    (21_500, 1_500, 500),
    (21_000, 1_500, 500),
    (20_800, 1_900, 300),
];
const FLUSH: &str = "flush";

#[derive(Debug, Clone)]
struct Ev {
    card: String,
    ts: i64,
    amount: f64,
    partition: i32,
    /// Produced in the second phase.
    second: bool,
    /// Injected late on purpose.
    late: bool,
}

/// Events in produce order: partitions interleaved, each partition in arrival order.
/// On-time events are out of order by < 2 s against their partition's stream time; a
/// card's consecutive events are < 15 s or ≥ 25 s apart (so no on-time record lands near
/// a 20 s session gap); ~5 % injected late events; one flush record per partition at the
/// end, 10 minutes after everything, to close every window.
fn generate(seed: u64, bridges: bool) -> Vec<Ev> {
    let mut rng = Lcg(seed);
    // (card, event time, partition, arrival key)
    let mut raw: Vec<(u64, i64, i32, i64)> = vec![];
    for c in 0..CARDS {
        let mut t = BASE + rng.next(5_000) as i64;
        while t < BASE + SPAN {
            let cleared = bridges
                && (c as usize) < BRIDGES.len()
                && (SPLIT - 50_000..SPLIT + 10_000).contains(&t);
            let (p, jitter) = (rng.next(3) as i32, rng.next(2_000) as i64);
            if !cleared {
                raw.push((c, t, p, t + jitter));
            }
            t += match rng.next(20) {
                0 => 25_000 + rng.next(10_000),
                1 | 2 => 5_000 + rng.next(10_000),
                _ => 100 + rng.next(2_500),
            } as i64;
        }
    }
    if bridges {
        for (c, &(last, bridge, first)) in BRIDGES.iter().enumerate() {
            let (c, p) = (c as u64, c as i32 % PARTITIONS);
            let (last, bridge, first) = (SPLIT - last, SPLIT - bridge, SPLIT - first);
            for t in [last - 4_000, last - 2_000, last] {
                raw.push((c, t, rng.next(3) as i32, t + rng.next(2_000) as i64));
            }
            // The second session starts before SPLIT; the bridge arrives after SPLIT, on
            // the same partition, so after that start and within 2 s of it.
            raw.push((c, first, p, first));
            raw.push((c, bridge, p, bridge + 1_999));
            for t in [first + 1_000, first + 3_000] {
                raw.push((c, t, p, t + rng.next(2_000) as i64));
            }
        }
    }
    raw.sort_by_key(|r| (r.3, r.1, r.0));
    let mut parts: Vec<VecDeque<Ev>> = vec![VecDeque::new(); PARTITIONS as usize];
    let mut stream = [i64::MIN; PARTITIONS as usize];
    for (c, ts, p, arrival) in raw {
        let second = arrival >= SPLIT;
        let ev = |card: String, ts: i64, late: bool, rng: &mut Lcg| Ev {
            card,
            ts,
            amount: rng.next(40_000) as f64 / 4.0, // quarters: sums are exact in any order
            partition: p,
            second,
            late,
        };
        parts[p as usize].push_back(ev(format!("card-{c}"), ts, false, &mut rng));
        stream[p as usize] = stream[p as usize].max(ts);
        if rng.next(20) == 0 {
            let card = format!("card-{}", rng.next(CARDS));
            let late = ev(card, stream[p as usize] - LATE_BY, true, &mut rng);
            parts[p as usize].push_back(late);
        }
    }
    let mut out = vec![];
    while parts.iter().any(|q| !q.is_empty()) {
        let p = rng.next(PARTITIONS as u64) as usize;
        out.extend(parts[p].pop_front());
    }
    let end = out.iter().map(|e| e.ts).max().unwrap_or(BASE) + 600_000;
    for partition in 0..PARTITIONS {
        out.push(Ev {
            card: FLUSH.into(),
            ts: end,
            amount: 0.0,
            partition,
            second: true,
            late: false,
        });
    }
    out
}

fn to_records<'a>(evs: impl IntoIterator<Item = &'a Ev>) -> Vec<(i32, Option<String>, String)> {
    evs.into_iter()
        .enumerate()
        .map(|(i, e)| (e.partition, Some(e.card.clone()), row(i, e).to_string()))
        .collect()
}

fn row(i: usize, e: &Ev) -> Value {
    json!({"tx_id": format!("t{i}"), "card_id": e.card, "merchant": "m", "amount": e.amount, "ts": e.ts})
}

/// Per event, whether the engine must drop it as late, when the last window an event at
/// `t` belongs to closes at `closes_at(t)`.
fn dropped(evs: &[Ev], closes_at: impl Fn(i64) -> i64) -> Vec<bool> {
    let mut stream = [i64::MIN; PARTITIONS as usize];
    evs.iter()
        .map(|e| {
            let s = &mut stream[e.partition as usize];
            *s = (*s).max(e.ts);
            closes_at(e.ts) <= *s
        })
        .collect()
}

/// The events a query keeps, without the flush records.
fn kept<'a>(evs: &'a [Ev], dropped: &[bool]) -> Vec<&'a Ev> {
    evs.iter()
        .zip(dropped)
        .filter(|(e, d)| !**d && e.card != FLUSH)
        .map(|(e, _)| e)
        .collect()
}

fn injected(evs: &[Ev]) -> Vec<bool> {
    evs.iter().map(|e| e.late).collect()
}

/// A stream over a new topic that the server creates with 3 partitions (a regression
/// check too: its existence check once auto-created the topic with 1).
async fn source(server: &TestServer) -> (String, String) {
    let topic = unique("diff");
    let stream = unique("DIFF").to_uppercase();
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS={PARTITIONS}, TIMESTAMP='ts');"
        ))
        .await;
    let d = server.ok(&format!("DESCRIBE {stream};")).await;
    assert_eq!(d[0]["sourceDescription"]["partitions"], PARTITIONS, "{d}");
    (topic, stream)
}

/// `CREATE TABLE table AS select`, from the earliest offset, partitions never idle.
async fn create(server: &TestServer, table: &str, select: &str) {
    let props = json!({"auto.offset.reset": "earliest", "sluice.idle.timeout.ms": 600_000});
    let sql = format!("CREATE TABLE {table} AS {select};");
    let (status, body) = server.ksql_with(&sql, props).await;
    assert_eq!(status, 200, "{sql}: {body}");
}

/// The statistics of the query writing `table`, once it has read `records_in` records
/// (or after 60 s).
async fn statistics(server: &TestServer, table: &str, records_in: usize) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let desc = server.ok(&format!("DESCRIBE {table} EXTENDED;")).await;
        let stats = desc[0]["sourceDescription"]["writeQueries"][0]["statistics"].clone();
        let read = stats["records_in"].as_u64().unwrap_or(0);
        if read >= records_in as u64 || Instant::now() > deadline {
            return stats;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn count(flags: &[bool]) -> u64 {
    flags.iter().filter(|&&f| f).count() as u64
}

/// Sink records other than the flush key's (tombstones included).
fn data(records: &[Consumed]) -> impl Iterator<Item = &Consumed> {
    records.iter().filter(|c| {
        c.value["card_id"] != FLUSH && !c.key.as_deref().is_some_and(|k| k.contains(FLUSH))
    })
}

/// The record key is a JSON object of the card and the selected window bounds.
fn assert_key(c: &Consumed, columns: &[&str]) {
    let key: Value = serde_json::from_str(c.key.as_deref().unwrap_or("")).expect("JSON key");
    assert_eq!(
        key.as_object().map(|o| o.len()),
        Some(columns.len()),
        "{c:?}"
    );
    for col in columns {
        assert_eq!(key[col], c.value[col], "key column {col} of {c:?}");
    }
}

/// (card, window start) → (count, sum, max).
type WindowRows = BTreeMap<(String, i64), (i64, f64, f64)>;

fn window_entry(v: &Value, start: &str) -> ((String, i64), (i64, f64, f64)) {
    let card = v["card_id"].as_str().unwrap_or_default().to_string();
    let ws = epoch_ms(&v[start]).unwrap_or(i64::MIN);
    let n = v["n"].as_i64().unwrap_or(-1);
    let f = |c: &str| v[c].as_f64().unwrap_or(f64::NAN);
    ((card, ws), (n, f("total"), f("biggest")))
}

async fn batch_windows(evs: &[&Ev], sql: &str) -> WindowRows {
    let rows: Vec<Value> = evs.iter().enumerate().map(|(i, e)| row(i, e)).collect();
    let out = batch_query("tx", tx_schema(), &rows, sql).await;
    out.iter().map(|v| window_entry(v, "ws")).collect()
}

const TUMBLE_BATCH: &str = "SELECT card_id, ts - ts % 10000 AS ws, COUNT(*) AS n, \
    SUM(amount) AS total, MAX(amount) AS biggest FROM tx GROUP BY card_id, ts - ts % 10000";

/// Each event expanded into the (up to) three 30 s windows starting at multiples of 10 s
/// that contain it; no negative starts.
const HOP_BATCH: &str = "SELECT card_id, ws, COUNT(*) AS n, SUM(amount) AS total, \
    MAX(amount) AS biggest FROM ( \
    SELECT card_id, amount, ts - ts % 10000 AS ws FROM tx UNION ALL \
    SELECT card_id, amount, ts - ts % 10000 - 10000 AS ws FROM tx UNION ALL \
    SELECT card_id, amount, ts - ts % 10000 - 20000 AS ws FROM tx) WHERE ws >= 0 \
    GROUP BY card_id, ws";

const TUMBLING: &str =
    "WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY card_id";
const HOPPING: &str = "WINDOW HOPPING (SIZE 30 SECONDS, ADVANCE BY 10 SECONDS, \
    GRACE PERIOD 10 SECONDS) GROUP BY card_id";
const HOP: &str = "GROUP BY card_id, HOP(ts, INTERVAL '10' SECOND, INTERVAL '30' SECOND)";

/// A spelling: the window and GROUP BY clauses and the grace in force.
type Spelling = (&'static str, i64);

/// The selected window start and its column: `WINDOWSTART AS ws` for the clause spelling,
/// `window_start` (a TIMESTAMP) for the function spelling.
fn start_of(window: &str) -> (&'static str, &'static str) {
    match window.starts_with("WINDOW ") {
        true => ("WINDOWSTART AS ws", "ws"),
        false => ("window_start", "window_start"),
    }
}

/// Both `spellings` over one 3-partition stream of `generate(seed)` equal `batch` over the
/// records each keeps; windows are `size` ms long and start at multiples of 10 s.
async fn time_windows_match_batch(
    seed: u64,
    size: i64,
    emit: &str,
    spellings: [Spelling; 2],
    batch: &str,
) {
    let server = TestServer::start().await;
    let evs = generate(seed, false);
    let (topic, stream) = source(&server).await;
    produce_to_partitions(&topic, &to_records(&evs)).await;
    let mut tables = vec![];
    for (window, _) in &spellings {
        let select_start = start_of(window).0;
        let table = unique("WINDOWS").to_uppercase();
        let select = format!(
            "SELECT card_id, {select_start}, COUNT(*) AS n, SUM(amount) AS total, \
             MAX(amount) AS biggest FROM {stream} {window} EMIT {emit}"
        );
        create(&server, &table, &select).await;
        tables.push(table);
    }
    for ((window, grace), table) in spellings.iter().zip(&tables) {
        let start = start_of(window).1;
        // An event's last window starts at its 10 s boundary.
        let late = dropped(&evs, |t| t - t.rem_euclid(10_000) + size + grace);
        match grace {
            // Out-of-order records across a window end are late too.
            0 => assert!(count(&late) > count(&injected(&evs))),
            g if *g < LATE_BY => assert_eq!(late, injected(&evs)),
            _ => assert_eq!(count(&late), 0),
        }
        let expected = batch_windows(&kept(&evs, &late), batch).await;
        assert!(expected.len() > 60, "windows: {}", expected.len());
        let (want, col) = (expected.clone(), start.to_string());
        let records = consume_until(table, Duration::from_secs(90), move |r| {
            let rows: Vec<Consumed> = data(r).cloned().collect();
            let latest = latest_by(&rows, |v| window_entry(v, &col).0);
            want.iter()
                .all(|(k, v)| latest.get(k).is_some_and(|g| g["n"] == v.0))
        })
        .await;
        let rows: Vec<Consumed> = data(&records).cloned().collect();
        rows.iter().for_each(|c| assert_key(c, &["card_id", start]));
        let latest = latest_by(&rows, |v| window_entry(v, start).0);
        let got: WindowRows = latest.values().map(|v| window_entry(v, start)).collect();
        assert_eq!(got, expected, "{table}");
        if emit == "FINAL" {
            assert_eq!(rows.len(), got.len(), "EMIT FINAL writes each window once");
        }
        let stats = statistics(&server, table, evs.len()).await;
        assert_eq!(stats["records_in"], evs.len() as u64, "{stats}");
        assert_eq!(stats["late_records"], count(&late), "{stats}");
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumble_final_matches_batch_in_both_spellings() {
    // The function spelling has grace 0 under EMIT FINAL: a record out of order across a
    // window end its partition's stream time already reached is late as well. `dropped`
    // finds those, so both spellings run over the same out-of-order data.
    time_windows_match_batch(
        1,
        10_000,
        "FINAL",
        [
            (TUMBLING, 10_000),
            ("GROUP BY card_id, TUMBLE(ts, INTERVAL '10' SECOND)", 0),
        ],
        TUMBLE_BATCH,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_matches_batch_in_both_spellings() {
    // The function spelling has ksqlDB's default grace under EMIT CHANGES (24 h - size):
    // it keeps the records injected 5 minutes late.
    time_windows_match_batch(
        2,
        30_000,
        "CHANGES",
        [(HOPPING, 10_000), (HOP, 86_400_000 - 30_000)],
        HOP_BATCH,
    )
    .await;
}

/// (card, start, end) → (count, sum).
type Sessions = BTreeMap<(String, i64, i64), (i64, f64)>;

/// Per card, sorted by time, a new session whenever the gap to the previous event > `gap`.
fn reference_sessions(evs: &[&Ev], gap: i64) -> Sessions {
    let mut by_card: BTreeMap<&str, Vec<&Ev>> = BTreeMap::new();
    for e in evs {
        by_card.entry(&e.card).or_default().push(e);
    }
    let mut out = Sessions::new();
    for (card, mut list) in by_card {
        list.sort_by_key(|e| e.ts);
        let mut open: Option<(i64, i64, i64, f64)> = None;
        for e in list {
            if let Some((s, last, n, sum)) = open {
                if e.ts - last <= gap {
                    open = Some((s, e.ts, n + 1, sum + e.amount));
                    continue;
                }
                out.insert((card.to_string(), s, last), (n, sum));
            }
            open = Some((e.ts, e.ts, 1, e.amount));
        }
        if let Some((s, last, n, sum)) = open {
            out.insert((card.to_string(), s, last), (n, sum));
        }
    }
    out
}

fn session_entry(v: &Value, start: &str, end: &str) -> ((String, i64, i64), (i64, f64)) {
    let card = v["card_id"].as_str().unwrap_or_default().to_string();
    let bound = |c: &str| epoch_ms(&v[c]).unwrap_or(i64::MIN);
    let total = v["total"].as_f64().unwrap_or(f64::NAN);
    let n = v["n"].as_i64().unwrap_or(-1);
    ((card, bound(start), bound(end)), (n, total))
}

/// The changelog applied as a table keyed by the Kafka key (a tombstone deletes).
fn session_table(records: &[Consumed]) -> Sessions {
    let mut table: HashMap<&str, &Value> = HashMap::new();
    for c in data(records) {
        let key = c.key.as_deref().unwrap_or_default();
        match &c.value {
            Value::Null => table.remove(key),
            v => table.insert(key, v),
        };
    }
    let rows = table.values();
    rows.map(|v| session_entry(v, "ws", "we")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_matches_reference_sessionizer() {
    let server = TestServer::start().await;
    // EMIT FINAL, function spelling (grace 0), everything produced up front. Without
    // bridges: a bridge arrives within 2 s of the gap, where grace 0 would make the
    // outcome depend on how the consumer interleaves partitions.
    let final_evs = generate(4, false);
    let (final_topic, final_stream) = source(&server).await;
    produce_to_partitions(&final_topic, &to_records(&final_evs)).await;
    let final_table = unique("SESSION_FINAL").to_uppercase();
    let select = format!(
        "SELECT card_id, window_start, window_end, COUNT(*) AS n, SUM(amount) AS total \
         FROM {final_stream} GROUP BY card_id, SESSION(ts, INTERVAL '20' SECOND) EMIT FINAL"
    );
    create(&server, &final_table, &select).await;

    // EMIT CHANGES with bridges. The first phase is produced before the query starts and
    // fully read before the second, so the sessions a bridge merges were written earlier
    // and the merge must show as tombstones.
    let evs = generate(3, true);
    let (topic, stream) = source(&server).await;
    let (first, second): (Vec<&Ev>, Vec<&Ev>) = evs.iter().partition(|e| !e.second);
    produce_to_partitions(&topic, &to_records(first.iter().copied())).await;
    let table = unique("SESSIONS").to_uppercase();
    let select = format!(
        "SELECT card_id, WINDOWSTART AS ws, WINDOWEND AS we, COUNT(*) AS n, \
         SUM(amount) AS total FROM {stream} \
         WINDOW SESSION (20 SECONDS, GRACE PERIOD 10 SECONDS) GROUP BY card_id EMIT CHANGES"
    );
    create(&server, &table, &select).await;
    let stats = statistics(&server, &table, first.len()).await;
    assert_eq!(stats["records_in"], first.len() as u64, "{stats}");
    produce_to_partitions(&topic, &to_records(second.iter().copied())).await;

    let late = dropped(&evs, |t| t + 20_000 + 10_000 + 1);
    assert_eq!(late, injected(&evs));
    let expected = reference_sessions(&kept(&evs, &late), 20_000);
    let first_session = |c: usize| {
        let last = SPLIT - BRIDGES[c].0;
        json!({"card_id": format!("card-{c}"), "ws": last - 4_000, "we": last})
    };
    for (c, &(_, _, second)) in BRIDGES.iter().enumerate() {
        let old = first_session(c);
        let merged = expected.keys().any(|(k, s, e)| {
            old["card_id"] == k.as_str() && old["ws"] == *s && *e > SPLIT - second
        });
        assert!(merged, "the reference merges bridge {c}");
    }
    let want = expected.clone();
    let records = consume_until(&table, Duration::from_secs(90), move |r| {
        session_table(r) == want
    })
    .await;
    assert_eq!(session_table(&records), expected, "{table}");
    let mut tombstones = vec![];
    for c in data(&records) {
        if c.value.is_null() {
            let key = c.key.as_deref().unwrap_or("");
            tombstones.push(serde_json::from_str::<Value>(key).expect("JSON key"));
        } else {
            assert_key(c, &["card_id", "ws", "we"]);
        }
    }
    // Each bridge deletes the first session's row, written in the first phase.
    for old in (0..BRIDGES.len()).map(first_session) {
        assert!(tombstones.contains(&old), "tombstone {old}: {tombstones:?}");
    }
    let stats = statistics(&server, &table, evs.len()).await;
    assert_eq!(stats["records_in"], evs.len() as u64, "{stats}");
    assert_eq!(stats["late_records"], count(&late), "{stats}");

    // EMIT FINAL: one row per session, no tombstones, equal to the reference.
    let late = dropped(&final_evs, |t| t + 20_000 + 1);
    assert_eq!(late, injected(&final_evs));
    let expected = reference_sessions(&kept(&final_evs, &late), 20_000);
    let n = expected.len();
    let records = consume_until(&final_table, Duration::from_secs(90), move |r| {
        data(r).count() >= n
    })
    .await;
    let rows: Vec<&Consumed> = data(&records).collect();
    for c in &rows {
        assert!(!c.value.is_null(), "EMIT FINAL writes no tombstones");
        assert_key(c, &["card_id", "window_start", "window_end"]);
    }
    let got: Sessions = rows
        .iter()
        .map(|c| session_entry(&c.value, "window_start", "window_end"))
        .collect();
    assert_eq!(rows.len(), got.len(), "one row per session");
    assert_eq!(got, expected, "{final_table}");
    let stats = statistics(&server, &final_table, final_evs.len()).await;
    assert_eq!(stats["late_records"], count(&late), "{stats}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_window_state_is_freed() {
    const KEYS: i64 = 20;
    const WINDOWS: i64 = 3_000;
    let server = TestServer::start().await;
    let (topic, stream) = source(&server).await;
    // One record per card in each 1 s window; partitions advance together, in order.
    let base = 1_764_000_000_000;
    let total = (KEYS * WINDOWS) as usize;
    let records: Vec<(i32, Option<String>, String)> = (0..total as i64)
        .map(|i| {
            let card = format!("card-{}", i % KEYS);
            let v = json!({"tx_id": format!("t{i}"), "card_id": card, "merchant": "m",
                           "amount": 1.0, "ts": base + i * 1000 / KEYS});
            ((i % 3) as i32, Some(card), v.to_string())
        })
        .collect();
    produce_to_partitions(&topic, &records).await;
    let table = unique("STATE").to_uppercase();
    server
        .ok(&format!(
            "CREATE TABLE {table} AS SELECT card_id, WINDOWSTART AS ws, COUNT(*) AS n FROM {stream} \
             WINDOW TUMBLING (SIZE 1 SECOND, GRACE PERIOD 0 SECONDS) GROUP BY card_id EMIT CHANGES;"
        ))
        .await;
    // Every (card, window) group existed: each wrote a row under its own key.
    let records = consume_until(&table, Duration::from_secs(90), move |r| {
        r.len() >= total && r.iter().map(|c| &c.key).collect::<HashSet<_>>().len() >= total
    })
    .await;
    let keys: HashSet<_> = records.iter().map(|c| &c.key).collect();
    assert_eq!(keys.len(), total, "one group per card and window");
    // Yet the query holds only the groups of the windows still open.
    let stats = statistics(&server, &table, total).await;
    assert_eq!(stats["records_in"], total as u64, "{stats}");
    assert_eq!(stats["late_records"], 0, "{stats}");
    let groups = stats["state_groups"].as_u64().unwrap_or(u64::MAX);
    assert!(
        groups <= 5 * KEYS as u64,
        "closed windows are dropped: {stats}"
    );
    server.stop().await;
}
