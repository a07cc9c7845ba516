//! ksqlDB client code runs unchanged against Sluice: the `ksqldb` Python client from PyPI
//! (HTTP/1.1 for /ksql and /close-query, cleartext HTTP/2 for /query-stream and
//! /inserts-stream) creates a stream and a table, inserts rows, and runs pull and push
//! queries. `scripts/test` installs the client (tests/clients/requirements.txt) into
//! `$SLUICE_CACHE/py` and points `SLUICE_PYTHON` at it.

use std::process::Command;

use serde_json::{json, Value};
use sluice_e2e::{test_file, unique, TestServer};

fn python() -> String {
    std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| {
        let home = std::env::var("HOME").unwrap_or_default();
        format!("{home}/.cache/sluice/py/bin/python")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ksqldb_python_client_works_unchanged() {
    let server = TestServer::start().await;
    let (stream, topic, table) = (
        unique("PYTX").to_uppercase(),
        unique("pytx"),
        unique("PY_PER_CARD").to_uppercase(),
    );
    let script = test_file("clients/ksqldb_python.py");
    let url = server.url.clone();
    let run = tokio::task::spawn_blocking(move || {
        Command::new(python())
            .arg(&script)
            .args([&url, &stream, &topic, &table])
            .output()
    });
    let output = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the client script finishes")
        .expect("task")
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} ({e}); scripts/test installs the ksqldb client, or set SLUICE_PYTHON",
                python()
            )
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the client script failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let out: Value = serde_json::from_str(stdout.trim()).expect("the script prints JSON");

    assert_eq!(
        out["create"][0]["commandStatus"]["status"], "SUCCESS",
        "{out}"
    );
    assert_eq!(
        out["ctas"][0]["commandStatus"]["status"], "SUCCESS",
        "{out}"
    );
    let acks = out["inserts"].as_array().expect("acks");
    assert_eq!(acks.len(), 9, "{out}");
    for (i, ack) in acks.iter().enumerate() {
        assert_eq!(ack, &json!({"status": "ok", "seq": i}));
    }
    let pull = out["pull"].as_array().expect("pull items");
    assert_eq!(pull[0]["columnNames"], json!(["card_id", "n", "total"]));
    assert_eq!(
        pull[1..].to_vec(),
        vec![
            json!(["card-0", 3, 9.0]),
            json!(["card-1", 3, 12.0]),
            json!(["card-2", 3, 15.0])
        ]
    );
    let push = out["push"].as_array().expect("push items");
    assert_eq!(push.len(), 4, "a header and LIMIT 3 rows: {out}");
    assert_eq!(push[0]["columnNames"], json!(["tx_id", "amount"]));
    assert_eq!(push[1], json!(["t0", 0.0]));
    let closed = out["closed"].as_array().expect("closed items");
    assert_eq!(closed[1], json!({"closed": true}), "{out}");
    server.stop().await;
}
