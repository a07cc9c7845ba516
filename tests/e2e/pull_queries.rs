//! Pull queries over materialized tables, compared with DataFusion running the same SQL
//! over the same events as a batch query; their REST shapes; and the files they cannot
//! reach.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sluice_e2e::{batch_query, produce, unique, TestServer};

use crate::streams::{mixed, transactions, tx_schema, TX_COLUMNS};

const BASE: i64 = 1_764_000_000_000;

/// The two tables, as the server creates them and as the oracle computes them.
const PER_CARD: &str =
    "SELECT card_id, COUNT(*) AS n, SUM(amount) AS total FROM {S} GROUP BY card_id";
/// Selects no window bound: a windowed table carries WINDOWSTART and WINDOWEND anyway, as in
/// ksqlDB, so each window is a row.
const PER_WINDOW: &str = "SELECT card_id, COUNT(*) AS n FROM {S} \
                          WINDOW TUMBLING (SIZE 10 SECONDS) GROUP BY card_id";
const PER_WINDOW_BATCH: &str = "SELECT card_id, COUNT(*) AS n, ts - ts % 10000 AS windowstart, \
     ts - ts % 10000 + 10000 AS windowend FROM tx GROUP BY card_id, ts - ts % 10000";

struct Tables {
    server: TestServer,
    stream: String,
    per_card: String,
    per_window: String,
    events: Vec<Value>,
}

async fn tables() -> Tables {
    let server = TestServer::start().await;
    let topic = unique("ptx");
    let stream = unique("PTX").to_uppercase();
    let per_card = unique("PER_CARD").to_uppercase();
    let per_window = unique("PER_WINDOW").to_uppercase();
    let events = transactions(300, BASE, 60_000, 5);
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2, TIMESTAMP='ts');"
        ))
        .await;
    produce(&topic, &mixed(&events)).await;
    server
        .ok(&format!(
            "CREATE TABLE {per_card} AS {};\nCREATE TABLE {per_window} AS {};",
            PER_CARD.replace("{S}", &stream),
            PER_WINDOW.replace("{S}", &stream)
        ))
        .await;
    Tables {
        server,
        stream,
        per_card,
        per_window,
        events,
    }
}

/// POST `/query-stream` with `Accept: application/json`: (status, items).
async fn query_stream(server: &TestServer, sql: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/query-stream", server.url))
        .header("accept", "application/json")
        .json(&json!({"sql": sql, "properties": {}}))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON body"))
}

/// The oracle: the pull query over the tables computed from the events in one batch.
async fn oracle(t: &Tables, pull: &str) -> Vec<Value> {
    let sql = format!(
        "WITH per_card AS ({}), per_window AS ({PER_WINDOW_BATCH}) {}",
        PER_CARD.replace("{S}", "tx"),
        pull.replace("{C}", "per_card").replace("{W}", "per_window")
    );
    batch_query("tx", tx_schema(), &t.events, &sql).await
}

/// Rows of a `/query-stream` JSON answer as objects keyed by column name.
fn objects(items: &Value) -> Vec<Value> {
    let items = items.as_array().expect("a JSON array");
    let names: Vec<String> = items[0]["columnNames"]
        .as_array()
        .expect("column names")
        .iter()
        .map(|n| n.as_str().unwrap_or_default().to_string())
        .collect();
    items[1..]
        .iter()
        .map(|row| {
            let row = row.as_array().expect("a row array");
            Value::Object(names.iter().cloned().zip(row.iter().cloned()).collect())
        })
        .collect()
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|x| x.to_string());
    v
}

/// Run `pull` until it agrees with the oracle (the tables fill as the queries run).
async fn agrees(t: &Tables, pull: &str, ordered: bool) -> Vec<Value> {
    let want = oracle(t, pull).await;
    let sql = pull
        .replace("{C}", &t.per_card)
        .replace("{W}", &t.per_window);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = query_stream(&t.server, &sql).await;
        assert_eq!(status, 200, "{sql}: {body}");
        let got = objects(&body);
        let same = if ordered {
            got == want
        } else {
            sorted(got.clone()) == sorted(want.clone())
        };
        if same {
            return got;
        }
        assert!(
            Instant::now() < deadline,
            "{sql}\n got: {got:?}\nwant: {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_queries_agree_with_a_batch_engine() {
    let t = tables().await;
    // A key lookup, on a table and on a windowed table with a WINDOWSTART range.
    let one = agrees(
        &t,
        "SELECT card_id, n, ROUND(total, 2) AS total FROM {C} WHERE card_id = 'card-3'",
        false,
    )
    .await;
    assert_eq!(one.len(), 1);
    let range = format!(
        "SELECT card_id, WINDOWSTART, WINDOWEND, n FROM {{W}} WHERE card_id = 'card-2' \
         AND WINDOWSTART >= {} AND WINDOWEND <= {} ORDER BY WINDOWSTART",
        BASE + 10_000,
        BASE + 40_000
    );
    assert!(agrees(&t, &range, true).await.len() >= 2);
    // Beyond ksqlDB: filters on values, aggregates, ORDER BY with LIMIT, joins.
    agrees(
        &t,
        "SELECT COUNT(*) AS cards, SUM(n) AS txs FROM {C} WHERE n > 30",
        false,
    )
    .await;
    agrees(
        &t,
        "SELECT card_id, ROUND(total, 2) AS total FROM {C} ORDER BY total DESC LIMIT 3",
        true,
    )
    .await;
    let joined = agrees(
        &t,
        "SELECT c.card_id, c.n, w.windows, w.busiest FROM {C} c JOIN \
         (SELECT card_id, COUNT(*) AS windows, MAX(n) AS busiest FROM {W} GROUP BY card_id) w \
         ON c.card_id = w.card_id ORDER BY c.card_id",
        true,
    )
    .await;
    assert_eq!(joined.len(), 7, "every card: {joined:?}");
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_query_answers_in_each_ksqldb_shape() {
    let t = tables().await;
    let sql = format!("SELECT * FROM {} WHERE card_id = 'card-1';", t.per_card);
    // Wait until the table holds every event (totals are compared elsewhere, rounded).
    agrees(
        &t,
        "SELECT card_id, n FROM {C} WHERE card_id = 'card-1'",
        false,
    )
    .await;

    // /query-stream, delimited (the default): a metadata line, then one array per line.
    let r = reqwest::Client::new()
        .post(format!("{}/query-stream", t.server.url))
        .json(&json!({"sql": sql}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.ksqlapi.delimited.v1"
    );
    let text = r.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect();
    assert_eq!(lines[0]["columnNames"], json!(["card_id", "n", "total"]));
    assert_eq!(
        lines[0]["columnTypes"],
        json!(["STRING", "BIGINT", "DOUBLE"])
    );
    assert!(lines[0]["queryId"].is_string());
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[1][0], "card-1");

    // /query, the older shape: a header whose schema marks the key, then rows.
    let (status, body) = t
        .server
        .post_raw(
            "/query",
            json!({"ksql": sql, "streamsProperties": {}}).to_string(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body[0]["header"]["schema"],
        "`CARD_ID` STRING KEY, `N` BIGINT, `TOTAL` DOUBLE"
    );
    assert_eq!(body[1]["row"]["columns"][0], "card-1");
    assert_eq!(body.as_array().map(Vec::len), Some(2));

    // now() is the pull query's start time.
    let (status, body) = query_stream(&t.server, "SELECT now() IS NOT NULL AS ok;").await;
    assert_eq!((status, &body[1]), (200, &json!([true])), "{body}");

    // A SELECT sent to /ksql is refused with ksqlDB's code.
    let (status, body) = t.server.ksql(&sql).await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (400, Some(40002)),
        "{body}"
    );
    t.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_queries_refuse_streams_and_files() {
    let t = tables().await;
    let refused = [
        (format!("SELECT * FROM {};", t.stream), "is a stream"),
        ("SELECT * FROM nope;".to_string(), "does not exist"),
        ("SELECT * FROM '/etc/passwd';".to_string(), "does not exist"),
        (
            "SELECT * FROM read_csv('/etc/passwd');".to_string(),
            "table function read_csv(…) is not available",
        ),
        (
            "SELECT * FROM information_schema.tables;".to_string(),
            "schema",
        ),
        (
            "CREATE EXTERNAL TABLE leak STORED AS CSV LOCATION '/etc/passwd';".to_string(),
            "expected STREAM or TABLE, found EXTERNAL",
        ),
        (
            "COPY (SELECT 1) TO '/tmp/leak.csv';".to_string(),
            "unknown statement starting with COPY",
        ),
        (
            format!(
                "SELECT * FROM {} WHERE card_id = 'x' EMIT CHANGES;",
                t.per_card
            ),
            // Push queries read streams; a table's changes are its topic.
            "is a table",
        ),
    ];
    for (sql, message) in refused {
        let (status, body) = query_stream(&t.server, &sql).await;
        assert!(
            (400..500).contains(&status),
            "{sql} must be refused with a 4xx: {status} {body}"
        );
        assert!(body["error_code"].as_u64().is_some(), "{sql}: {body}");
        let text = body["message"].as_str().unwrap_or_default();
        assert!(text.contains(message), "{sql}: {text}");
    }
    assert!(!std::path::Path::new("/tmp/leak.csv").exists());
    // A malformed body is a 400 with a JSON error, never a 500.
    let (status, body) = t
        .server
        .post_raw("/query-stream", "{not json".to_string())
        .await;
    assert_eq!((status, body["error_code"].as_u64()), (400, Some(40000)));
    t.server.stop().await;
}
