//! Filter/projection streams, INSERT INTO, and malformed records.

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Field, Schema};
use serde_json::{json, Value};
use sluice_e2e::{batch_query, consume_until, produce, unique, TestServer};

/// Deterministic pseudo-random numbers (no seed files, same events every run).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Card transactions with `ts` spread over `span_ms` from `base`, slightly out of order.
pub fn transactions(count: usize, base: i64, span_ms: i64, seed: u64) -> Vec<Value> {
    let mut rng = Lcg(seed);
    let merchants = ["grocer", "fuel", "books", "airline"];
    (0..count)
        .map(|i| {
            let ts = base + (i as i64 * span_ms) / count as i64 - rng.next(3000) as i64;
            json!({
                "tx_id": format!("t{i}"),
                "card_id": format!("card-{}", rng.next(7)),
                "merchant": merchants[rng.next(4) as usize],
                "amount": (rng.next(200_000) as f64) / 100.0,
                "ts": ts,
            })
        })
        .collect()
}

pub fn tx_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("tx_id", DataType::Utf8, true),
        Field::new("card_id", DataType::Utf8, true),
        Field::new("merchant", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("ts", DataType::Int64, true),
    ]))
}

pub const TX_COLUMNS: &str =
    "tx_id VARCHAR, card_id VARCHAR, merchant VARCHAR, amount DOUBLE, ts BIGINT";

/// Malformed values of every kind the issue names: not JSON, wrong type, missing time.
pub fn malformed() -> Vec<String> {
    vec![
        "this is not json".to_string(),
        r#"{"tx_id":"bad1","card_id":"card-1","amount":"lots","ts":1}"#.to_string(),
        r#"{"tx_id":"bad2","card_id":"card-1","amount":5.0}"#.to_string(),
        r#"{"tx_id":"bad3","#.to_string(),
        r#"[1,2,3]"#.to_string(),
    ]
}

/// Good events, with the malformed ones mixed in at fixed places.
pub fn mixed(good: &[Value]) -> Vec<(Option<String>, String)> {
    let bad = malformed();
    let mut out = vec![];
    for (i, v) in good.iter().enumerate() {
        if i % 37 == 5 {
            out.push((None, bad[(i / 37) % bad.len()].clone()));
        }
        out.push((v["card_id"].as_str().map(String::from), v.to_string()));
    }
    out
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_projection_stream_matches_batch_and_skips_malformed_records() {
    let server = TestServer::start().await;
    let topic = unique("tx");
    let stream = unique("TX").to_uppercase();
    let out = unique("BIG_TX").to_uppercase();
    let events = transactions(300, 1_764_000_000_000, 120_000, 7);
    let records = mixed(&events);
    let bad = records.len() - events.len();
    assert!(bad >= 5, "the test mixes in malformed records");

    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON', PARTITIONS=2, TIMESTAMP='ts');"
        ))
        .await;
    produce(&topic, &records).await;
    let select = "SELECT tx_id, UPPER(merchant) AS merchant, amount * 2 AS doubled, ts \
                  FROM {S} WHERE amount > 500 AND merchant <> 'books'";
    let body = server
        .ok(&format!(
            "CREATE STREAM {out} AS {} EMIT CHANGES;",
            select.replace("{S}", &stream)
        ))
        .await;
    assert_eq!(body[0]["@type"], "currentStatus");
    let query_id = body[0]["commandStatus"]["queryId"]
        .as_str()
        .expect("query id")
        .to_string();
    assert!(query_id.starts_with(&format!("CSAS_{out}_")), "{query_id}");

    let expected = batch_query("tx", tx_schema(), &events, &select.replace("{S}", "tx")).await;
    assert!(
        expected.len() > 50,
        "the filter keeps a fair share: {}",
        expected.len()
    );
    let n = expected.len();
    let got = consume_until(&out, Duration::from_secs(60), move |r| r.len() >= n).await;
    let got: Vec<Value> = got.into_iter().map(|c| c.value).collect();
    assert_eq!(sorted(got), sorted(expected));

    // The malformed records were skipped and counted, and the query still runs.
    let (_, desc) = server.ksql(&format!("DESCRIBE {stream};")).await;
    let q = &desc[0]["sourceDescription"]["readQueries"][0];
    assert_eq!(q["state"], "RUNNING", "{desc}");
    assert_eq!(q["statistics"]["malformed_records"], bad as u64, "{desc}");
    let logged = q["statistics"]["recent_errors"]
        .as_array()
        .expect("processing log");
    assert!(!logged.is_empty());
    assert_eq!(logged[0]["topic"], topic.as_str());
    assert!(logged[0]["offset"].as_i64().is_some());
    assert!(logged[0]["partition"].as_i64().is_some());

    let (_, queries) = server.ksql("SHOW QUERIES;").await;
    let listed = queries[0]["queries"].as_array().expect("queries");
    assert!(listed
        .iter()
        .any(|q| q["id"] == query_id.as_str() && q["state"] == "RUNNING"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insert_into_feeds_an_existing_stream_from_a_second_query() {
    let server = TestServer::start().await;
    let (t1, t2) = (unique("eu"), unique("us"));
    let (s1, s2, all) = (
        unique("EU").to_uppercase(),
        unique("US").to_uppercase(),
        unique("ALL").to_uppercase(),
    );
    for (s, t) in [(&s1, &t1), (&s2, &t2)] {
        server
            .ok(&format!(
                "CREATE STREAM {s} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{t}', PARTITIONS=1, TIMESTAMP='ts');"
            ))
            .await;
    }
    server
        .ok(&format!(
            "CREATE STREAM {all} AS SELECT tx_id, amount FROM {s1} EMIT CHANGES;"
        ))
        .await;
    let body = server
        .ok(&format!(
            "INSERT INTO {all} SELECT tx_id, amount FROM {s2};"
        ))
        .await;
    assert!(body[0]["commandStatus"]["queryId"]
        .as_str()
        .is_some_and(|id| id.starts_with("INSERTQUERY_")));
    // A query whose columns do not match the stream is refused.
    let (status, err) = server
        .ksql(&format!("INSERT INTO {all} SELECT tx_id FROM {s2};"))
        .await;
    assert_eq!(status, 400, "{err}");
    assert!(
        err["message"]
            .as_str()
            .unwrap_or("")
            .contains("do not match"),
        "{err}"
    );

    let a = transactions(20, 1_764_000_000_000, 10_000, 1);
    let b = transactions(30, 1_764_000_000_000, 10_000, 2);
    produce(
        &t1,
        &a.iter().map(|v| (None, v.to_string())).collect::<Vec<_>>(),
    )
    .await;
    produce(
        &t2,
        &b.iter().map(|v| (None, v.to_string())).collect::<Vec<_>>(),
    )
    .await;
    let got = consume_until(&all, Duration::from_secs(60), |r| r.len() >= 50).await;
    assert_eq!(got.len(), 50);
    let mut expected: Vec<Value> = a
        .iter()
        .chain(b.iter())
        .map(|v| json!({"tx_id": v["tx_id"], "amount": v["amount"]}))
        .collect();
    expected = sorted(expected);
    assert_eq!(sorted(got.into_iter().map(|c| c.value).collect()), expected);

    // TERMINATE ALL stops both; then the stream can be dropped.
    let (status, _) = server.ksql(&format!("DROP STREAM {all};")).await;
    assert_eq!(status, 400, "a stream written by queries cannot be dropped");
    server.ok("TERMINATE ALL;").await;
    let (_, q) = server.ksql("SHOW QUERIES;").await;
    assert_eq!(q[0]["queries"].as_array().map(Vec::len), Some(0));
    server.ok(&format!("DROP STREAM {all};")).await;
    let (_, streams) = server.ksql("SHOW STREAMS;").await;
    let names: Vec<&str> = streams[0]["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&s1.as_str()) && !names.contains(&all.as_str()),
        "{names:?}"
    );
    server.stop().await;
}
