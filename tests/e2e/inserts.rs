//! `/inserts-stream`, and every query endpoint over cleartext HTTP/2 as well as HTTP/1.1.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{consume_until, unique, TestServer};

use crate::streams::TX_COLUMNS;

/// HTTP/1.1, and HTTP/2 with prior knowledge (h2c), as ksqlDB clients use it.
fn clients() -> [(&'static str, reqwest::Client); 2] {
    [
        (
            "HTTP/1.1",
            reqwest::Client::builder()
                .http1_only()
                .build()
                .expect("client"),
        ),
        (
            "HTTP/2",
            reqwest::Client::builder()
                .http2_prior_knowledge()
                .build()
                .expect("client"),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inserts_stream_writes_good_rows_and_acks_each_over_http1_and_http2() {
    let server = TestServer::start().await;
    let topic = unique("ins");
    let stream = unique("INS").to_uppercase();
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1, TIMESTAMP='ts');"
        ))
        .await;
    let mut written = 0;
    for (name, client) in clients() {
        let row = |i: i64, amount: Value| {
            json!({"tx_id": format!("{name}-{i}"), "card_id": "card-1", "merchant": "m", "amount": amount, "ts": 1_000 + i})
                .to_string()
        };
        let body = [
            json!({"target": stream.to_lowercase(), "properties": {}}).to_string(),
            row(0, json!(10.5)),
            row(1, json!("lots")),
            "[1, 2]".to_string(),
            String::new(),
            row(2, json!(7)),
        ]
        .join("\n");
        let r = client
            .post(format!("{}/inserts-stream", server.url))
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(r.status().as_u16(), 200, "{name}");
        if name == "HTTP/2" {
            assert_eq!(r.version(), reqwest::Version::HTTP_2);
        }
        let acks: Vec<Value> = r
            .text()
            .await
            .expect("body")
            .lines()
            .map(|l| serde_json::from_str(l).expect("each ack is JSON"))
            .collect();
        assert_eq!(acks.len(), 4, "{name}: {acks:?}");
        assert_eq!(acks[0], json!({"status": "ok", "seq": 0}));
        assert_eq!(
            (acks[1]["status"].as_str(), acks[1]["seq"].as_u64()),
            (Some("error"), Some(1))
        );
        assert!(
            acks[1]["message"]
                .as_str()
                .is_some_and(|m| m.contains("does not fit")),
            "{acks:?}"
        );
        assert_eq!(
            (acks[2]["status"].as_str(), acks[2]["seq"].as_u64()),
            (Some("error"), Some(2))
        );
        assert_eq!(acks[3], json!({"status": "ok", "seq": 3}));
        written += 2;
    }
    let got = consume_until(&topic, Duration::from_secs(30), move |r| r.len() >= written).await;
    let ids: Vec<&str> = got
        .iter()
        .filter_map(|c| c.value["tx_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec!["HTTP/1.1-0", "HTTP/1.1-2", "HTTP/2-0", "HTTP/2-2"]
    );

    // A target that is not a stream: a JSON error, no acks.
    let (status, body) = server
        .post_raw("/inserts-stream", json!({"target": "nope"}).to_string())
        .await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (400, Some(40000)),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksql_and_query_endpoints_answer_over_http2() {
    let server = TestServer::start().await;
    let stream = unique("H2").to_uppercase();
    let [_, (_, h2)] = clients();
    let r = h2
        .post(format!("{}/ksql", server.url))
        .json(&json!({"ksql": format!("CREATE STREAM {stream} (a INT) WITH (KAFKA_TOPIC='{}', PARTITIONS=1);", unique("h2"))}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let r = h2
        .post(format!("{}/query-stream", server.url))
        .json(&json!({"sql": format!("SELECT * FROM {stream} EMIT CHANGES LIMIT 1;")}))
        .send()
        .await
        .expect("request");
    assert_eq!(
        (r.version(), r.status().as_u16()),
        (reqwest::Version::HTTP_2, 200)
    );
    let mut first = String::new();
    let mut r = r;
    while !first.contains('\n') {
        let chunk = tokio::time::timeout(Duration::from_secs(30), r.chunk())
            .await
            .expect("the header arrives at once")
            .expect("chunk")
            .expect("not the end");
        first.push_str(&String::from_utf8_lossy(&chunk));
    }
    let header: Value =
        serde_json::from_str(first.lines().next().unwrap_or_default()).expect("JSON");
    assert_eq!(header["columnNames"], json!(["a", "rowtime"]), "{header}");
    server.stop().await;
}
