//! The REST API's shapes and its errors: 4xx with a JSON body for every bad request.

use sluice_e2e::{unique, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_and_healthcheck_answer_in_ksqldb_shape() {
    let server = TestServer::start().await;
    let (status, info) = server.get("/info").await;
    assert_eq!(status, 200);
    assert!(info["KsqlServerInfo"]["ksqlServiceId"]
        .as_str()
        .is_some_and(|s| s.starts_with("test_")));
    let (status, health) = server.get("/healthcheck").await;
    assert_eq!(status, 200, "{health}");
    assert_eq!(health["isHealthy"], true);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_4xx_with_a_json_body() {
    let server = TestServer::start().await;
    let stream = unique("S").to_uppercase();
    let topic = unique("t");
    server
        .ok(&format!(
            "CREATE STREAM {stream} (id VARCHAR, n BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);"
        ))
        .await;

    // Invalid SQL names the problem and its position.
    let (status, e) = server
        .ksql("SHOW STREAMS;\nCREATE STREAM x (a INT WITH (KAFKA_TOPIC='x');")
        .await;
    assert_eq!(status, 400);
    assert_eq!(e["@type"], "statement_error");
    assert_eq!(e["error_code"], 40001);
    let message = e["message"].as_str().unwrap_or_default();
    assert!(message.contains("line 2"), "{message}");
    assert_eq!(
        e["entities"].as_array().map(Vec::len),
        Some(0),
        "nothing runs when a statement does not parse"
    );

    // Unknown stream, unknown column, missing KAFKA_TOPIC, missing topic, unsupported.
    let cases = [
        ("CREATE STREAM o AS SELECT * FROM nope;".to_string(), "does not exist"),
        (format!("CREATE STREAM o AS SELECT missing_col FROM {stream};"), "missing_col"),
        ("CREATE STREAM s2 (a INT) WITH (VALUE_FORMAT='JSON');".to_string(), "KAFKA_TOPIC"),
        (format!("CREATE STREAM s3 (a INT) WITH (KAFKA_TOPIC='{}');", unique("absent")), "PARTITIONS"),
        (format!("CREATE STREAM o AS SELECT id FROM {stream} ORDER BY id;"), "ORDER BY"),
        (format!("CREATE STREAM o AS SELECT id, COUNT(*) FROM {stream} GROUP BY id;"), "CREATE TABLE"),
        (format!("CREATE TABLE o AS SELECT id FROM {stream};"), "GROUP BY"),
        (format!("CREATE TABLE o AS SELECT id, COUNT(*) FROM {stream} WINDOW TUMBLING (SIZE 5 FORTNIGHTS) GROUP BY id;"), "time unit"),
        (format!("CREATE STREAM {stream} (a INT) WITH (KAFKA_TOPIC='{topic}');"), "already exists"),
        (format!("CREATE STREAM o WITH (KAFKA_TOPIC='{topic}') AS SELECT id FROM {stream};"), "which its query reads"),
        ("TERMINATE NO_SUCH_QUERY;".to_string(), "does not exist"),
        ("DROP STREAM nope;".to_string(), "does not exist"),
        ("FROB;".to_string(), "unknown statement"),
    ];
    for (sql, needle) in cases {
        let (status, e) = server.ksql(&sql).await;
        assert_eq!(status, 400, "{sql}: {e}");
        assert_eq!(e["error_code"], 40001, "{sql}: {e}");
        let m = e["message"].as_str().unwrap_or_default();
        assert!(m.contains(needle), "{sql}: expected '{needle}' in '{m}'");
    }

    // SELECT belongs to /query.
    let (status, e) = server
        .ksql(&format!("SELECT * FROM {stream} EMIT CHANGES;"))
        .await;
    assert_eq!(
        (status, e["error_code"].as_u64()),
        (400, Some(40002)),
        "{e}"
    );

    // Bodies that are not requests.
    for body in [
        "not json",
        "{}",
        r#"{"ksql": 5}"#,
        r#"{"ksql":"SHOW STREAMS;","streamsProperties":{"auto.offset.reset":"sometimes"}}"#,
    ] {
        let (status, e) = server.post_raw("/ksql", body.to_string()).await;
        assert_eq!(status, 400, "{body}: {e}");
        assert_eq!(e["@type"], "generic_error");
        assert_eq!(e["error_code"], 40000);
    }
    let (status, e) = server.post_raw("/nowhere", "{}".into()).await;
    assert_eq!((status, e["error_code"].as_u64()), (404, Some(40400)));
    let (status, _) = server.get("/ksql").await;
    assert_eq!(status, 405);

    // The server still works after all that.
    let (status, _) = server.ksql("SHOW STREAMS;").await;
    assert_eq!(status, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_every_endpoint_and_large_bodies_get_413() {
    let server = TestServer::start().await;
    let (status, doc) = server.get("/openapi.json").await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.0.3");
    for path in [
        "/ksql",
        "/query-stream",
        "/query",
        "/close-query",
        "/inserts-stream",
        "/info",
        "/healthcheck",
        "/openapi.json",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is described");
        // ... and served: a bad request there is never a 404.
        let (status, _) = if path == "/info" || path == "/healthcheck" || path == "/openapi.json" {
            server.get(path).await
        } else {
            server.post_raw(path, "{}".to_string()).await
        };
        assert_ne!(status, 404, "{path}");
    }
    // A body over the limit: 413 with a JSON error, not a dropped connection.
    let big = format!("{{\"ksql\": \"{}\"}}", "x".repeat(2 << 20));
    let (status, body) = server.post_raw("/ksql", big).await;
    assert_eq!(
        (status, body["error_code"].as_u64()),
        (413, Some(41300)),
        "{body}"
    );
    server.stop().await;
}
