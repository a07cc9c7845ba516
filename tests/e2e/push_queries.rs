//! Push queries: `SELECT … EMIT CHANGES [LIMIT n]` streamed over HTTP, closed by LIMIT,
//! by `/close-query` or by the client going away, and capped per server.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{produce, unique, TestServer};

use crate::streams::{transactions, TX_COLUMNS};

async fn stream_with_events(server: &TestServer) -> (String, String, Vec<Value>) {
    let topic = unique("push");
    let stream = unique("PUSH").to_uppercase();
    let events = transactions(200, 1_764_000_000_000, 60_000, 3);
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2, TIMESTAMP='ts');"
        ))
        .await;
    let records: Vec<(Option<String>, String)> = events
        .iter()
        .map(|e| (e["card_id"].as_str().map(String::from), e.to_string()))
        .collect();
    produce(&topic, &records).await;
    (topic, stream, events)
}

fn post(server: &TestServer, path: &str, body: Value) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(format!("{}{path}", server.url))
        .json(&body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_query_with_limit_streams_rows_then_ends() {
    let server = TestServer::start().await;
    let (_, stream, events) = stream_with_events(&server).await;
    let big: HashSet<String> = events
        .iter()
        .filter(|e| e["amount"].as_f64().unwrap_or(0.0) > 1000.0)
        .map(|e| e["tx_id"].as_str().unwrap_or_default().to_string())
        .collect();
    let sql = format!(
        "SELECT tx_id, card_id, amount FROM {stream} WHERE amount > 1000 EMIT CHANGES LIMIT 5;"
    );
    let r = post(
        &server,
        "/query-stream",
        json!({"sql": sql, "properties": {"auto.offset.reset": "earliest"}}),
    )
    .send()
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let text = tokio::time::timeout(Duration::from_secs(60), r.text())
        .await
        .expect("the stream ends after LIMIT rows")
        .expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON lines"))
        .collect();
    assert_eq!(
        lines[0]["columnNames"],
        json!(["tx_id", "card_id", "amount"])
    );
    let query_id = lines[0]["queryId"].as_str().expect("query id").to_string();
    assert_eq!(lines.len(), 6, "a header and LIMIT rows: {text}");
    for row in &lines[1..] {
        assert!(big.contains(row[0].as_str().unwrap_or_default()), "{row}");
    }
    // The query is gone once its stream ended.
    let closed = post(&server, "/close-query", json!({"queryId": query_id}))
        .send()
        .await
        .expect("request");
    assert_eq!(closed.status().as_u16(), 404);

    // The older /query shape ends with ksqlDB's final message.
    let (status, body) = server
        .post_raw(
            "/query",
            json!({"ksql": sql, "streamsProperties": {"auto.offset.reset": "earliest"}})
                .to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let items = body.as_array().expect("a JSON array");
    assert!(items[0]["header"]["schema"]
        .as_str()
        .is_some_and(|s| s.starts_with("`TX_ID` STRING")));
    assert_eq!(items.len(), 7, "{body}");
    assert_eq!(items[6], json!({"finalMessage": "Limit Reached"}));
    assert!(items[1]["row"]["columns"][0].is_string());

    // A query that fails while running says so inside the stream, then ends.
    let failing = format!("SELECT card_id, CAST(card_id AS INT) AS n FROM {stream} EMIT CHANGES;");
    let r = post(
        &server,
        "/query-stream",
        json!({"sql": failing, "properties": {"auto.offset.reset": "earliest"}}),
    )
    .send()
    .await
    .expect("request");
    let text = tokio::time::timeout(Duration::from_secs(60), r.text())
        .await
        .expect("the stream ends when the query fails")
        .expect("body");
    let last: Value = serde_json::from_str(text.lines().last().unwrap_or_default()).expect("JSON");
    assert_eq!(last["@type"], "generic_error", "{text}");
    assert!(
        last["message"]
            .as_str()
            .is_some_and(|m| m.contains("card-")),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_query_delivers_new_rows_until_closed() {
    let server = TestServer::start().await;
    let (topic, stream, _) = stream_with_events(&server).await;
    // An aggregation, pushed as it changes; JSON-array format.
    let mut r = post(
        &server,
        "/query-stream",
        json!({
            "sql": format!("SELECT card_id, COUNT(*) AS n FROM {stream} GROUP BY card_id EMIT CHANGES;"),
            "properties": {"auto.offset.reset": "earliest"},
        }),
    )
    .header("accept", "application/json")
    .send()
    .await
    .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Until card-9's first (and only) transaction shows up as a row.
    let mut produced = false;
    while !text.contains("\"card-9\"") {
        assert!(Instant::now() < deadline, "no row for card-9 in {text}");
        if !produced && text.contains("card-") {
            let late = json!({"tx_id": "x", "card_id": "card-9", "merchant": "m", "amount": 1.0, "ts": 1_764_000_100_000i64});
            produce(&topic, &[(Some("card-9".into()), late.to_string())]).await;
            produced = true;
        }
        match tokio::time::timeout(Duration::from_secs(5), r.chunk()).await {
            Ok(Ok(Some(chunk))) => text.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Ok(None)) => panic!("the stream ended early: {text}"),
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => {}
        }
    }
    assert!(text.starts_with("[{"), "{text}");
    let query_id = serde_json::from_str::<Value>(
        text.trim_start_matches('[')
            .split(",\n")
            .next()
            .expect("a header"),
    )
    .expect("header JSON")["queryId"]
        .as_str()
        .expect("query id")
        .to_string();
    let closed = post(&server, "/close-query", json!({"queryId": query_id}))
        .send()
        .await
        .expect("request");
    assert_eq!(closed.status().as_u16(), 200);
    let rest = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(chunk)) = r.chunk().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
    })
    .await;
    assert!(rest.is_ok(), "the stream ends after /close-query");
    let all: Value = serde_json::from_str(&text).expect("a complete JSON array");
    assert!(all.as_array().is_some_and(|a| a.len() > 2));
    server.stop().await;
}

/// Start push query `sql`, retrying while the only slot is still taken by a client that
/// has just gone away.
async fn accepted(server: &TestServer, sql: &str) -> reqwest::Response {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = post(server, "/query-stream", json!({"sql": sql}))
            .send()
            .await
            .expect("request");
        if r.status().as_u16() == 200 {
            return r;
        }
        assert_eq!(r.status().as_u16(), 429);
        assert!(Instant::now() < deadline, "the slot was never freed");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queries_are_capped_and_freed_when_clients_leave() {
    let server = TestServer::start_with(|c| c.max_push_queries = 1).await;
    let (_, stream, _) = stream_with_events(&server).await;
    let sql = format!("SELECT * FROM {stream} EMIT CHANGES;");
    let first = post(&server, "/query-stream", json!({"sql": sql}))
        .send()
        .await
        .expect("request");
    assert_eq!(first.status().as_u16(), 200);
    let second = post(&server, "/query-stream", json!({"sql": sql}))
        .send()
        .await
        .expect("request");
    assert_eq!(second.status().as_u16(), 429);
    let body: Value = second.json().await.expect("a JSON error");
    assert!(body["message"]
        .as_str()
        .is_some_and(|m| m.contains("maximum of 1 push queries")));
    // The first client goes away: its query stops and frees the slot (the server notices
    // the closed connection soon, not at once).
    drop(first);
    let again = accepted(&server, &sql).await;
    drop(again);
    // A server stopping with a push query open ends its stream instead of waiting for
    // the client.
    let open = accepted(&server, &sql).await;
    tokio::time::timeout(Duration::from_secs(30), server.stop())
        .await
        .expect("the server stops with a push query open");
    drop(open);
}
