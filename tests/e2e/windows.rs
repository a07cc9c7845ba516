//! Tumbling-window tables in both spellings, compared with DataFusion's batch result.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sluice_e2e::{batch_query, consume_until, latest_by, produce, unique, TestServer};

use crate::streams::{mixed, transactions, tx_schema, TX_COLUMNS};

/// Base time aligned to no window in particular; events span several 10 s windows and
/// arrive up to 3 s out of order (well within the default grace).
const BASE: i64 = 1_764_000_003_217;

fn key(v: &Value, start: &str) -> (String, i64) {
    (
        v["card_id"].as_str().unwrap_or_default().to_string(),
        v[start].as_i64().unwrap_or(-1),
    )
}

async fn windowed_table_matches_batch(select_for: impl Fn(&str) -> String, start_column: &str) {
    let server = TestServer::start().await;
    let topic = unique("wtx");
    let stream = unique("WTX").to_uppercase();
    let table = unique("PER_CARD").to_uppercase();
    let events = transactions(400, BASE, 60_000, 11);
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=3, TIMESTAMP='ts');"
        ))
        .await;
    produce(&topic, &mixed(&events)).await;
    server
        .ok(&format!("CREATE TABLE {table} AS {};", select_for(&stream)))
        .await;

    let expected = batch_query(
        "tx",
        tx_schema(),
        &events,
        "SELECT card_id, (ts - ts % 10000) AS ws, COUNT(*) AS n, SUM(amount) AS total, MAX(amount) AS biggest \
         FROM tx GROUP BY card_id, (ts - ts % 10000)",
    )
    .await;
    let expected: HashMap<(String, i64), Value> =
        expected.into_iter().map(|v| (key(&v, "ws"), v)).collect();
    assert!(
        expected.len() > 30,
        "several keys and windows: {}",
        expected.len()
    );

    let start = start_column.to_string();
    let want = expected.clone();
    let records = consume_until(&table, Duration::from_secs(90), move |r| {
        let latest = latest_by(r, |v| key(&norm(v, &start), "ws"));
        want.iter()
            .all(|(k, v)| latest.get(k).is_some_and(|g| g["n"] == v["n"]))
    })
    .await;
    let start = start_column.to_string();
    let latest = latest_by(&records, |v| key(&norm(v, &start), "ws"));
    assert_eq!(latest.len(), expected.len(), "one row per card and window");
    for (k, want) in &expected {
        let got = &latest[k];
        assert_eq!(got["n"], want["n"], "count of {k:?}");
        let (g, w) = (
            got["total"].as_f64().unwrap_or(f64::NAN),
            want["total"].as_f64().unwrap_or(0.0),
        );
        assert!((g - w).abs() < 1e-6, "sum of {k:?}: {g} vs {w}");
        assert_eq!(got["biggest"], want["biggest"], "max of {k:?}");
    }
    // Changelog keys name the card and the window.
    assert!(records
        .iter()
        .all(|r| r.key.as_deref().is_some_and(|k| k.contains("card-"))));
    server.stop().await;
}

/// Window start as epoch ms under the name `ws`, whichever spelling the table used.
fn norm(v: &Value, start: &str) -> Value {
    let mut v = v.clone();
    let ws = match &v[start] {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => parse_ts(s),
        _ => None,
    };
    v["ws"] = ws.map_or(Value::Null, Value::from);
    v
}

/// `2025-11-24T16:00:00` (UTC, as arrow writes TIMESTAMP) to epoch ms.
fn parse_ts(s: &str) -> Option<i64> {
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|x| x.parse::<i64>());
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let mut t = time.trim_end_matches('Z').split(':');
    let (hh, mm) = (
        t.next()?.parse::<i64>().ok()?,
        t.next()?.parse::<i64>().ok()?,
    );
    let secs: f64 = t.next()?.parse().ok()?;
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 86_400 + hh * 3600 + mm * 60) as f64 * 1000.0 + secs * 1000.0).round() as i64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_window_table_in_ksql_spelling_matches_batch() {
    windowed_table_matches_batch(
        |s| {
            format!(
                "SELECT card_id, WINDOWSTART AS wstart, WINDOWEND AS wend, COUNT(*) AS n, \
                 SUM(amount) AS total, MAX(amount) AS biggest \
                 FROM {s} WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY card_id EMIT CHANGES"
            )
        },
        "wstart",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumble_function_spelling_matches_batch() {
    windowed_table_matches_batch(
        |s| {
            format!(
                "SELECT card_id, window_start, window_end, COUNT(*) AS n, SUM(amount) AS total, \
                 MAX(amount) AS biggest \
                 FROM {s} GROUP BY card_id, TUMBLE(ts, INTERVAL '10' SECOND) EMIT CHANGES"
            )
        },
        "window_start",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_after_grace_is_dropped_and_counted() {
    let server = TestServer::start().await;
    let topic = unique("late");
    let stream = unique("LATE").to_uppercase();
    let table = unique("LATE_COUNTS").to_uppercase();
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1, TIMESTAMP='ts');"
        ))
        .await;
    server
        .ok(&format!(
            "CREATE TABLE {table} AS SELECT card_id, WINDOWSTART AS ws, COUNT(*) AS n FROM {stream} \
             WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 2 SECONDS) GROUP BY card_id EMIT CHANGES;"
        ))
        .await;
    let at = |ts: i64| {
        (
            None,
            serde_json::json!({"tx_id": "x", "card_id": "c", "merchant": "m", "amount": 1.0, "ts": ts}).to_string(),
        )
    };
    // [0,10 s) closes at stream time 12 s: the record at 9 s after 12 s is late; one at
    // 9.5 s before that is in time (out of order by 1.5 s).
    produce(
        &topic,
        &[
            at(1_000),
            at(11_000),
            at(9_500),
            at(12_000),
            at(9_000),
            at(25_000),
        ],
    )
    .await;
    let records = consume_until(&table, Duration::from_secs(60), |r| {
        r.iter().any(|c| c.value["ws"] == 20_000)
    })
    .await;
    let latest = latest_by(&records, |v| v["ws"].as_i64().unwrap_or(-1));
    assert_eq!(latest[&0]["n"], 2, "{records:?}");
    assert_eq!(latest[&10_000]["n"], 2);
    let (_, desc) = server.ksql(&format!("DESCRIBE {table};")).await;
    let stats = &desc[0]["sourceDescription"]["writeQueries"][0]["statistics"];
    assert_eq!(stats["late_records"], 1, "{desc}");
    assert_eq!(stats["malformed_records"], 0, "{desc}");
    server.stop().await;
}
