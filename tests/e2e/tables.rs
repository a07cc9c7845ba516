//! GROUP BY without a window: an updating table, keyed by the group columns as JSON.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::Value;
use sluice_e2e::{batch_query, consume_until, java_partition, produce, unique, TestServer};

use crate::streams::{mixed, transactions, tx_schema, TX_COLUMNS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unwindowed_aggregation_is_an_updating_table_keyed_by_its_group_columns() {
    let server = TestServer::start().await;
    let topic = unique("ttx");
    let stream = unique("TTX").to_uppercase();
    let table = unique("PER_CARD_MERCHANT").to_uppercase();
    let events = transactions(500, 1_764_000_000_000, 600_000, 23);
    server
        .ok(&format!(
            "CREATE STREAM {stream} ({TX_COLUMNS}) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=3, TIMESTAMP='ts');"
        ))
        .await;
    let (first, second) = events.split_at(events.len() / 2);
    produce(&topic, &mixed(first)).await;
    let aggregates = "COUNT(*) AS n, ROUND(SUM(amount), 2) AS total, \
                      COUNT(*) FILTER (WHERE amount > 1000) AS big";
    server
        .ok(&format!(
            "CREATE TABLE {table} AS SELECT card_id, UPPER(merchant) AS merchant, {aggregates} \
             FROM {stream} GROUP BY card_id, UPPER(merchant) HAVING COUNT(*) > 1;"
        ))
        .await;
    let expected = batch_query(
        "tx",
        tx_schema(),
        &events,
        &format!(
            "SELECT card_id, UPPER(merchant) AS merchant, {aggregates} FROM tx \
             GROUP BY card_id, UPPER(merchant) HAVING COUNT(*) > 1"
        ),
    )
    .await;
    assert!(expected.len() > 10, "several groups: {}", expected.len());
    // The second half arrives after the first results: groups update.
    consume_until(&table, Duration::from_secs(60), |r| !r.is_empty()).await;
    produce(&topic, &mixed(second)).await;
    let key_of = |v: &Value| {
        serde_json::json!({"card_id": v["card_id"], "merchant": v["merchant"]}).to_string()
    };
    let want: HashMap<String, Value> = expected.iter().map(|v| (key_of(v), v.clone())).collect();
    let target = want.clone();
    let records = consume_until(&table, Duration::from_secs(90), move |r| {
        let mut latest = HashMap::new();
        for c in r {
            latest.insert(c.key.clone().unwrap_or_default(), c.value.clone());
        }
        target
            .iter()
            .all(|(k, v)| latest.get(k).is_some_and(|g| g["n"] == v["n"]))
    })
    .await;
    // The record key is the group columns as a JSON object; the latest row per key is
    // the table's row.
    let mut latest: HashMap<String, Value> = HashMap::new();
    for c in &records {
        let key = c.key.clone().expect("aggregation results have a key");
        assert_eq!(key, key_of(&c.value), "the key holds the group columns");
        assert_eq!(
            c.partition,
            java_partition(key.as_bytes(), 3),
            "a key goes where Kafka's Java producer would put it: {key}"
        );
        latest.insert(key, c.value.clone());
    }
    assert_eq!(latest, want);
    assert!(
        records.len() > want.len(),
        "an updating table writes every change, not only the last: {}",
        records.len()
    );
    server.stop().await;
}

/// `topic`'s `cleanup.policy`, as the broker describes it.
async fn cleanup_policy(topic: &str) -> String {
    use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::config::ClientConfig;
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", sluice_e2e::bootstrap())
        .create()
        .expect("admin client");
    let described = admin
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("described");
    let resource = described
        .into_iter()
        .next()
        .expect("one resource")
        .expect("its configs");
    resource
        .get("cleanup.policy")
        .and_then(|e| e.value.clone())
        .expect("a cleanup.policy")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tables_topic_is_compacted_as_ksqldb_creates_it() {
    let server = TestServer::start().await;
    let topic = unique("tcp");
    let (stream, copy, table, windowed) = (
        unique("TCP").to_uppercase(),
        unique("TCP_COPY").to_uppercase(),
        unique("TCP_TABLE").to_uppercase(),
        unique("TCP_WINDOWED").to_uppercase(),
    );
    server
        .ok(&format!(
            "CREATE STREAM {stream} (id VARCHAR, n BIGINT) WITH (KAFKA_TOPIC='{topic}', PARTITIONS=1);\n\
             CREATE STREAM {copy} AS SELECT id, n FROM {stream};\n\
             CREATE TABLE {table} AS SELECT id, COUNT(*) AS c FROM {stream} GROUP BY id;\n\
             CREATE TABLE {windowed} AS SELECT id, COUNT(*) AS c FROM {stream} \
             WINDOW TUMBLING (SIZE 1 MINUTE) GROUP BY id;"
        ))
        .await;
    assert_eq!(cleanup_policy(&copy).await, "delete");
    assert_eq!(cleanup_policy(&table).await, "compact");
    assert_eq!(cleanup_policy(&windowed).await, "compact,delete");
    // A topic that exists keeps its configs: the source's, here, the broker's default.
    assert_eq!(cleanup_policy(&topic).await, "delete");
    server.stop().await;
}
