//! A real `sluice server` process, killed and stopped. SIGKILL under continuous input, with
//! exactly_once_v2 and a new, empty state directory on every restart:
//! - a stateless query's output, read `read_committed`, holds every input record exactly
//!   once, and the restarted server resubmits nothing: it replays its command topic;
//! - windowed aggregations keep their state (changelog topics): the EMIT CHANGES table ends
//!   at the input's values without ever going backwards, EMIT FINAL writes each closed
//!   window once, and pull queries see the whole table after a restart.
//!
//! SIGTERM: a clean exit that does not wait for open push queries.

use std::collections::{BTreeMap, HashMap};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{consume_until, produce, unique};

use crate::process::{free_port, start, Process};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_and_repeats_nothing() {
    let service_id = format!("{}_", unique("crash"));
    let (topic, stream, out) = (
        unique("crash_in"),
        unique("CRASH_IN").to_uppercase(),
        unique("CRASH_OUT").to_uppercase(),
    );
    let port = free_port();
    let mut server = start(&service_id, port).await;
    let sql = format!(
        "CREATE STREAM {stream} (id BIGINT, n BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2);\n\
         CREATE STREAM {out} AS SELECT id, n * 2 AS doubled FROM {stream} WHERE n >= 0;"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/ksql", server.url))
        .json(&json!({"ksql": sql, "streamsProperties": {"auto.offset.reset": "earliest"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);

    // Input keeps arriving, in small batches, while the server is killed and restarted
    // three times, so kills land in the middle of batches being processed.
    let total = 6_000i64;
    let feed_topic = topic.clone();
    let feeder = tokio::spawn(async move {
        for start in (0..total).step_by(60) {
            let chunk: Vec<(Option<String>, String)> = (start..(start + 60).min(total))
                .map(|i| (Some(i.to_string()), json!({"id": i, "n": i}).to_string()))
                .collect();
            produce(&feed_topic, &chunk).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    server = kill_and_restart(server, &service_id, port, 3).await;
    feeder.await.expect("all input produced");
    let got = consume_until(&out, Duration::from_secs(120), move |r| {
        r.len() as i64 >= total
    })
    .await;
    // Anything more would be a duplicate: give it a moment to show up.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let got = if got.len() as i64 == total {
        consume_until(&out, Duration::from_secs(10), move |r| {
            r.len() as i64 > total
        })
        .await
    } else {
        got
    };
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &got {
        let v: &Value = &r.value;
        *seen.entry(v["id"].as_i64().expect("id")).or_default() += 1;
        assert_eq!(v["doubled"].as_i64(), v["id"].as_i64().map(|i| i * 2));
    }
    let missing: Vec<i64> = (0..total)
        .filter(|i| !seen.contains_key(i))
        .take(10)
        .collect();
    let repeated: Vec<(&i64, &usize)> = seen.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(missing.is_empty(), "lost records, e.g. {missing:?}");
    assert!(repeated.is_empty(), "repeated records, e.g. {repeated:?}");
    assert_eq!(got.len() as i64, total);
    server.child.kill().expect("stop");
    let _ = server.child.wait();
}

/// SIGKILL the server `times` times at random moments (a few hundred ms to a second and a
/// half apart, while input arrives), restarting it each time with the same service id.
/// Every start gets a new, empty state directory: the state must come from Kafka.
async fn kill_and_restart(
    mut server: Process,
    service_id: &str,
    port: u16,
    times: usize,
) -> Process {
    let mut seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(7, |d| d.as_nanos() as u64);
    for _ in 0..times {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        tokio::time::sleep(Duration::from_millis(400 + (seed >> 33) % 1100)).await;
        server.child.kill().expect("SIGKILL");
        server.child.wait().expect("reaped");
        server = start(service_id, port).await;
    }
    server
}

/// Windowed aggregations keep their state across SIGKILLs: it is restored from the
/// changelog in the same transactions as the results and offsets. Read `read_committed`,
/// the EMIT CHANGES table never goes backwards for a window and ends at exactly the counts
/// and sums of the input; the EMIT FINAL stream holds each closed window once, with
/// those values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_keeps_window_state_exactly() {
    let service_id = format!("{}_", unique("crashw"));
    let (topic, stream, changes, finals) = (
        unique("crashw_in"),
        unique("CRASHW_IN").to_uppercase(),
        unique("CRASHW_CHANGES").to_uppercase(),
        unique("CRASHW_FINAL").to_uppercase(),
    );
    let port = free_port();
    let server = start(&service_id, port).await;
    let sql = format!(
        "CREATE STREAM {stream} (k VARCHAR, n BIGINT, ts BIGINT) \
           WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2, TIMESTAMP='ts');\n\
         CREATE TABLE {changes} AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS c, SUM(n) AS s \
           FROM {stream} WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY k EMIT CHANGES;\n\
         CREATE TABLE {finals} AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS c, SUM(n) AS s \
           FROM {stream} WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY k EMIT FINAL;"
    );
    let r = reqwest::Client::new()
        .post(format!("{}/ksql", server.url))
        .json(&json!({"ksql": sql, "streamsProperties": {"auto.offset.reset": "earliest"}}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200, "{:?}", r.text().await);

    // 8 keys; event time 10 ms per record, so each 10 s window gets 1000 records. Keys
    // pick their partition, so both partitions advance together.
    let total = 6_000i64;
    let base = 1_700_000_000_000i64;
    let event = move |i: i64| {
        let k = format!("k{}", i % 8);
        (
            Some(k.clone()),
            json!({"k": k, "n": i % 13, "ts": base + i * 10}).to_string(),
        )
    };
    let feed_topic = topic.clone();
    let feeder = tokio::spawn(async move {
        for start in (0..total).step_by(60) {
            let chunk: Vec<(Option<String>, String)> =
                (start..(start + 60).min(total)).map(event).collect();
            produce(&feed_topic, &chunk).await;
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    let server = kill_and_restart(server, &service_id, port, 3).await;
    feeder.await.expect("all input produced");

    // The oracle: count and sum per (key, window start).
    let mut expected: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for i in 0..total {
        let ws = (base + i * 10) - (base + i * 10) % 10_000;
        let e = expected.entry((format!("k{}", i % 8), ws)).or_default();
        e.0 += 1;
        e.1 += i % 13;
    }
    let key_of = |v: &Value| {
        (
            v["k"].as_str().expect("k").to_string(),
            v["ws"].as_i64().expect("ws"),
        )
    };
    let counts = |v: &Value| (v["c"].as_i64().expect("c"), v["s"].as_i64().expect("s"));

    let want = expected.clone();
    let got = consume_until(&changes, Duration::from_secs(120), move |rows| {
        let mut last = BTreeMap::new();
        for r in rows {
            last.insert(key_of(&r.value), counts(&r.value));
        }
        last == want
    })
    .await;
    let mut last: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for r in &got {
        let (key, now) = (key_of(&r.value), counts(&r.value));
        if let Some(before) = last.get(&key) {
            assert!(
                now.0 > before.0,
                "{key:?} went from {before:?} to {now:?}: state was lost or an update repeated"
            );
        }
        last.insert(key, now);
    }
    assert_eq!(
        last, expected,
        "final window values differ from the input's"
    );

    // EMIT FINAL: the windows closed by the watermark (all but the last), each once.
    let newest = expected.keys().map(|(_, ws)| *ws).max().expect("windows");
    let closed: BTreeMap<(String, i64), (i64, i64)> = expected
        .iter()
        .filter(|((_, ws), _)| *ws < newest)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    let n_closed = closed.len();
    consume_until(&finals, Duration::from_secs(60), move |rows| {
        rows.len() >= n_closed
    })
    .await;
    // Anything more would be a repeat: give it a moment to show up.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = consume_until(&finals, Duration::from_secs(10), move |rows| {
        rows.len() > n_closed
    })
    .await;
    let mut seen: BTreeMap<(String, i64), (i64, i64)> = BTreeMap::new();
    for r in &got {
        let key = key_of(&r.value);
        assert!(
            seen.insert(key.clone(), counts(&r.value)).is_none(),
            "{key:?} was emitted twice"
        );
    }
    assert_eq!(
        seen, closed,
        "EMIT FINAL rows differ from the input's closed windows"
    );

    // One more crash with all input processed: the new run reads nothing new, so what
    // pull queries see of the table is only what it read back from its topic.
    let mut server = kill_and_restart(server, &service_id, port, 1).await;
    let mut pulled = BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let r = reqwest::Client::new()
            .post(format!("{}/query", server.url))
            .json(&json!({"ksql": format!("SELECT k, ws, c, s FROM {changes};")}))
            .send()
            .await
            .expect("pull query");
        assert_eq!(r.status().as_u16(), 200);
        let items: Vec<Value> = r.json().await.expect("JSON");
        pulled = items
            .iter()
            .filter_map(|i| i["row"]["columns"].as_array())
            .map(|c| {
                (
                    (
                        c[0].as_str().expect("k").to_string(),
                        c[1].as_i64().expect("ws"),
                    ),
                    (c[2].as_i64().expect("c"), c[3].as_i64().expect("s")),
                )
            })
            .collect::<BTreeMap<(String, i64), (i64, i64)>>();
        if pulled == expected {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert_eq!(
        pulled, expected,
        "the table pull queries read after a restart"
    );
    server.child.kill().expect("stop");
    let _ = server.child.wait();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_server_cleanly_even_with_open_push_queries() {
    let service_id = format!("{}_", unique("term"));
    let (topic, stream, out) = (
        unique("term_in"),
        unique("TERM_IN").to_uppercase(),
        unique("TERM_OUT").to_uppercase(),
    );
    let port = free_port();
    let mut server = start(&service_id, port).await;
    let sql = format!(
        "CREATE STREAM {stream} (id BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);\n\
         CREATE STREAM {out} AS SELECT id FROM {stream};"
    );
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{}/ksql", server.url))
        .json(&json!({"ksql": sql}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    // A push query that would never end by itself.
    let push = client
        .post(format!("{}/query-stream", server.url))
        .json(&json!({"sql": format!("SELECT id FROM {stream} EMIT CHANGES;")}))
        .send()
        .await
        .expect("request");
    assert_eq!(push.status().as_u16(), 200);
    let status = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    // A hang detector, not a speed target: shutdown must not wait for the client.
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = server.child.try_wait().expect("wait") {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not stop on SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(exit.success(), "a clean exit: {exit:?}");
    // The push query's response ended (complete, or cut with the connection) instead of
    // hanging.
    let ended = tokio::time::timeout(Duration::from_secs(10), push.text()).await;
    assert!(
        ended.is_ok(),
        "the push response is still open after the server stopped"
    );
}
