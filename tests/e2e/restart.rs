//! The catalog survives a restart: statements are recorded in the command topic and a
//! server started with the same service id runs every persistent query again.

use std::time::Duration;

use serde_json::{json, Value};
use sluice_e2e::{consume_until, produce, unique, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_runs_its_persistent_queries_again() {
    let service_id = format!("{}_", unique("restart"));
    let (topic, stream, big, dropped) = (
        unique("rs"),
        unique("RS").to_uppercase(),
        unique("RS_BIG").to_uppercase(),
        unique("RS_GONE").to_uppercase(),
    );
    let id = service_id.clone();
    let first = TestServer::start_with(move |c| c.service_id = id).await;
    first
        .ok(&format!(
            "CREATE STREAM {stream} (id VARCHAR, n BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);\n\
             CREATE STREAM {big} AS SELECT id, n FROM {stream} WHERE n > 10;\n\
             CREATE STREAM {dropped} AS SELECT id FROM {stream};"
        ))
        .await;
    let (_, queries) = first.ksql("SHOW QUERIES;").await;
    let gone = queries[0]["queries"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["sinks"][0] == dropped.as_str()))
        .and_then(|q| q["id"].as_str())
        .expect("the second query")
        .to_string();
    first
        .ok(&format!("TERMINATE {gone};\nDROP STREAM {dropped};"))
        .await;
    let record = |id: &str, n: i64| (None, json!({"id": id, "n": n}).to_string());
    produce(&topic, &[record("a", 5), record("b", 50)]).await;
    consume_until(&big, Duration::from_secs(60), |r| !r.is_empty()).await;
    first.stop().await;

    // A new server, same service id: nothing is resubmitted.
    let id = service_id.clone();
    let second = TestServer::start_with(move |c| c.service_id = id).await;
    let (_, streams) = second.ksql("SHOW STREAMS;").await;
    let names: Vec<&str> = streams[0]["streams"]
        .as_array()
        .expect("streams")
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert!(
        names.contains(&stream.as_str()) && names.contains(&big.as_str()),
        "{names:?}"
    );
    assert!(
        !names.contains(&dropped.as_str()),
        "DROP is replayed too: {names:?}"
    );
    let (_, queries) = second.ksql("SHOW QUERIES;").await;
    let running: Vec<Value> = queries[0]["queries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(running.len(), 1, "TERMINATE is replayed too: {running:?}");
    assert_eq!(running[0]["sinks"][0], big.as_str());
    // It resumes from its committed offsets: new records come out, old ones do not again.
    produce(&topic, &[record("c", 70)]).await;
    let out = consume_until(&big, Duration::from_secs(60), |r| r.len() >= 2).await;
    let ids: Vec<&str> = out.iter().filter_map(|c| c.value["id"].as_str()).collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = consume_until(&big, Duration::from_secs(5), |_| false).await;
    assert_eq!(ids, vec!["b", "c"]);
    assert_eq!(again.len(), 2, "no record processed twice: {again:?}");
    second.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_statement_may_choose_its_processing_guarantee_and_commit_interval() {
    let server = TestServer::start().await;
    let (topic, stream, out) = (
        unique("pg"),
        unique("PG").to_uppercase(),
        unique("PG_OUT").to_uppercase(),
    );
    server
        .ok(&format!(
            "CREATE STREAM {stream} (id VARCHAR) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);"
        ))
        .await;
    let csas = format!("CREATE STREAM {out} AS SELECT id FROM {stream};");
    let (status, body) = server
        .ksql_with(&csas, json!({"processing.guarantee": "sometimes"}))
        .await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (400, Some(40000)),
        "{body}"
    );
    for bad in [json!(0), json!("soon"), json!(600_000)] {
        let (status, body) = server
            .ksql_with(&csas, json!({"commit.interval.ms": bad}))
            .await;
        assert_eq!(
            (status, body["error_code"].as_u64()),
            (400, Some(40000)),
            "{body}"
        );
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("commit.interval.ms")),
            "{body}"
        );
    }
    let (status, body) = server
        .ksql_with(
            &csas,
            json!({"processing.guarantee": "at_least_once", "auto.offset.reset": "earliest", "commit.interval.ms": 250}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    produce(&topic, &[(None, json!({"id": "x"}).to_string())]).await;
    let got = consume_until(&out, Duration::from_secs(60), |r| !r.is_empty()).await;
    assert_eq!(got[0].value["id"], "x");
    server.stop().await;
}

/// A pull query's answer as (rows, events) of `SELECT COUNT(*), SUM(c)` (status, too).
async fn table_counts(server: &TestServer, table: &str) -> (u16, Value) {
    let sql = format!("SELECT COUNT(*) AS rows, SUM(c) AS events FROM {table};");
    let (status, body) = server
        .post_raw(
            "/query",
            json!({"ksql": sql, "streamsProperties": {}}).to_string(),
        )
        .await;
    (status, body[1]["row"]["columns"].clone())
}

/// Wait (up to 60 s) until `table_counts` answers `want`.
async fn wait_for_counts(server: &TestServer, table: &str, want: Value) {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let got = table_counts(server, table).await;
        if got == (200, want.clone()) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{table} answered {got:?}, not {want}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_table_answers_pull_queries_with_all_its_rows_at_once() {
    let service_id = format!("{}_", unique("restart_table"));
    let (topic, stream, table) = (
        unique("rt"),
        unique("RT").to_uppercase(),
        unique("RT_COUNTS").to_uppercase(),
    );
    let id = service_id.clone();
    let first = TestServer::start_with(move |c| c.service_id = id).await;
    first
        .ok(&format!(
            "CREATE STREAM {stream} (id VARCHAR, n BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);\n\
             CREATE TABLE {table} AS SELECT id, COUNT(*) AS c, SUM(n) AS total FROM {stream} GROUP BY id;"
        ))
        .await;
    let records: Vec<(Option<String>, String)> = (0..3000)
        .map(|i| {
            (
                None,
                json!({"id": format!("k{}", i % 1000), "n": i}).to_string(),
            )
        })
        .collect();
    produce(&topic, &records).await;
    wait_for_counts(&first, &table, json!([1000, 3000])).await;
    first.stop().await;

    // The first pull query after the restart already sees every row: a table still being
    // read back from its topic is waited for, not answered half-filled.
    let id = service_id.clone();
    let second = TestServer::start_with(move |c| c.service_id = id).await;
    assert_eq!(
        table_counts(&second, &table).await,
        (200, json!([1000, 3000]))
    );
    // The query runs on: a new event's row comes on top of those read back.
    produce(&topic, &[(None, json!({"id": "new", "n": 1}).to_string())]).await;
    wait_for_counts(&second, &table, json!([1001, 3001])).await;
    second.stop().await;
}
