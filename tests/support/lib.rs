//! Support for Sluice's black-box tests: a real server on port 0 against the real broker
//! started by `scripts/kafka-local`, an HTTP client, Kafka produce/consume helpers, and
//! DataFusion batch queries to compare streaming results with.

use std::collections::HashMap;
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::json::writer::{JsonArray, WriterBuilder};
use datafusion::arrow::json::ReaderBuilder;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use sluice_server::{Server, ServerConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// The broker the tests use: `SLUICE_TEST_BOOTSTRAP`, else the tests' own one that
/// `scripts/test` starts on 127.0.0.1:9192 and leaves running.
pub fn bootstrap() -> String {
    let b = std::env::var("SLUICE_TEST_BOOTSTRAP").unwrap_or_else(|_| "127.0.0.1:9192".into());
    let reachable = b.split(',').any(|addr| {
        addr.parse()
            .is_ok_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
    });
    assert!(
        reachable,
        "no Kafka broker at {b}: `scripts/test` starts the tests' own on 127.0.0.1:9192; \
         or set SLUICE_TEST_BOOTSTRAP to a running one, such as `scripts/kafka-local start`'s \
         127.0.0.1:9092"
    );
    b
}

/// A name no earlier run used, for topics and streams (the broker keeps data).
pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}_{}_{}", std::process::id(), nanos % 1_000_000_000)
}

/// A Sluice server running in this process on a free port.
pub struct TestServer {
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    /// Start a server on the test broker with its own service id.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Start a server as [`TestServer::start`] does, with `adjust` applied to its config.
    pub async fn start_with(adjust: impl FnOnce(&mut ServerConfig)) -> Self {
        let state = std::env::temp_dir().join(unique("sluice-test-state"));
        let mut config = ServerConfig {
            bootstrap_servers: Some(bootstrap()),
            state_dir: state,
            service_id: format!("{}_", unique("test")),
            ..ServerConfig::default()
        };
        adjust(&mut config);
        let server = Server::start(config).expect("server starts");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(listener, async move {
            let _ = rx.await;
        }));
        Self {
            url,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// POST `/ksql` with `sql`, reading from the earliest offset; returns status and body.
    pub async fn ksql(&self, sql: &str) -> (u16, Value) {
        self.ksql_with(sql, serde_json::json!({"auto.offset.reset": "earliest"}))
            .await
    }

    /// POST `/ksql` with `sql` and `streamsProperties`.
    pub async fn ksql_with(&self, sql: &str, props: Value) -> (u16, Value) {
        let body = serde_json::json!({"ksql": sql, "streamsProperties": props});
        self.post_raw("/ksql", body.to_string()).await
    }

    /// POST `body` to `path` as JSON.
    pub async fn post_raw(&self, path: &str, body: String) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        let text = r.text().await.expect("body");
        let v =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("non-JSON body ({e}): {text}"));
        (status, v)
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.expect("json body"))
    }

    /// Run `sql` and fail the test unless it succeeds.
    pub async fn ok(&self, sql: &str) -> Value {
        let (status, body) = self.ksql(sql).await;
        assert_eq!(status, 200, "{sql} failed: {body}");
        body
    }

    /// Stop the server and its queries.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.await.expect("server task").expect("server");
        }
    }
}

/// Produce `values` (with optional keys) to `topic`, spread over partitions by key.
pub async fn produce(topic: &str, records: &[(Option<String>, String)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut pending = vec![];
    for (key, value) in records {
        let mut r = FutureRecord::<String, String>::to(topic).payload(value);
        if let Some(k) = key {
            r = r.key(k);
        }
        pending.push(producer.send(r, Duration::from_secs(10)));
    }
    for p in futures_join(pending).await {
        p.expect("produced");
    }
}

async fn futures_join<F: std::future::Future>(fs: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(fs.len());
    for f in fs {
        out.push(f.await);
    }
    out
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Consumed {
    /// Its key as text.
    pub key: Option<String>,
    /// Its value as JSON.
    pub value: Value,
    /// The partition it was read from.
    pub partition: i32,
}

/// The partition Kafka's Java producer (and so ksqlDB, Kafka Streams and Flink) picks for
/// `key` among `partitions`: murmur2 of the key bytes (Kafka's `Utils.murmur2`), made
/// positive, modulo the count.
pub fn java_partition(key: &[u8], partitions: i32) -> i32 {
    (murmur2(key) & 0x7fff_ffff) % partitions
}

fn murmur2(data: &[u8]) -> i32 {
    const M: u32 = 0x5bd1_e995;
    let mut h: u32 = 0x9747_b28c ^ data.len() as u32;
    let mut chunks = data.chunks_exact(4);
    for c in chunks.by_ref() {
        let mut k = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> 24;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M) ^ k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        for (i, &b) in tail.iter().enumerate().rev() {
            h ^= u32::from(b) << (8 * i);
        }
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// A file of the test crate (`tests/…`). The directory is read when the test runs (cargo
/// sets it), as the compile-time value can name another checkout sharing the target
/// directory.
pub fn test_file(relative: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
    )
    .join(relative)
}

/// Read `topic` from the beginning until `done` holds for what was read, or `timeout`.
pub async fn consume_until(
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Consumed]) -> bool + Send + 'static,
) -> Vec<Consumed> {
    consume_until_on(&bootstrap(), topic, timeout, done).await
}

/// [`consume_until`] on the broker at `bootstrap_servers`.
pub async fn consume_until_on(
    bootstrap_servers: &str,
    topic: &str,
    timeout: Duration,
    done: impl Fn(&[Consumed]) -> bool + Send + 'static,
) -> Vec<Consumed> {
    let topic = topic.to_string();
    let bootstrap = bootstrap_servers.to_string();
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .set("group.id", unique("reader"))
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            // Queries write exactly-once by default: read only committed transactions.
            .set("isolation.level", "read_committed")
            .create()
            .expect("consumer");
        consumer.subscribe(&[&topic]).expect("subscribe");
        let deadline = Instant::now() + timeout;
        let mut out = vec![];
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let value = m
                        .payload()
                        .map(|p| serde_json::from_slice(p).expect("sink values are JSON"))
                        .unwrap_or(Value::Null);
                    let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
                    out.push(Consumed {
                        key,
                        value,
                        partition: m.partition(),
                    });
                }
                Some(Err(_)) | None => {
                    if done(&out) {
                        break;
                    }
                }
            }
        }
        out
    })
    .await
    .expect("consumer task")
}

/// Run `sql` in DataFusion over `rows` (JSON objects) registered as table `name` with
/// `schema`; results as JSON objects.
pub async fn batch_query(name: &str, schema: SchemaRef, rows: &[Value], sql: &str) -> Vec<Value> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .build_decoder()
        .expect("decoder");
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    decoder.decode(text.as_bytes()).expect("decode");
    let batch = decoder
        .flush()
        .expect("flush")
        .unwrap_or_else(|| RecordBatch::new_empty(schema.clone()));
    let ctx = SessionContext::new();
    ctx.register_table(
        name,
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).expect("table")),
    )
    .expect("register");
    let batches = ctx
        .sql(sql)
        .await
        .expect("plan")
        .collect()
        .await
        .expect("run");
    let mut buf = vec![];
    {
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, JsonArray>(&mut buf);
        for b in &batches {
            w.write(b).expect("write");
        }
        w.finish().expect("finish");
    }
    if buf.is_empty() {
        return vec![];
    }
    serde_json::from_slice(&buf).expect("json")
}

/// The last value per key of a changelog, keyed by `key_of`.
pub fn latest_by<K: std::hash::Hash + Eq>(
    records: &[Consumed],
    key_of: impl Fn(&Value) -> K,
) -> HashMap<K, Value> {
    let mut out = HashMap::new();
    for r in records {
        out.insert(key_of(&r.value), r.value.clone());
    }
    out
}

/// A producer that keeps each partition's records in the order they are sent, however
/// many are in flight: it is idempotent.
pub fn ordered_producer() -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer")
}

/// Produce `(partition, key, value)` records, each to its own partition. Each partition
/// receives its records in list order: the producer is idempotent, which keeps one
/// partition's records in order while many are in flight. Panics unless all are delivered.
pub async fn produce_to_partitions(topic: &str, records: &[(i32, Option<String>, String)]) {
    use rdkafka::error::{KafkaError, RDKafkaErrorCode};
    use rdkafka::producer::Producer as _;
    let producer = ordered_producer();
    // Explicit partitions need the topic's metadata first.
    let wanted = records.iter().map(|r| r.0).max().unwrap_or(0);
    let (client, name) = (producer.clone(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let known = client
                .client()
                .fetch_metadata(Some(&name), Duration::from_secs(5))
                .ok()
                .and_then(|m| m.topics().first().map(|t| t.partitions().len() as i32));
            if known.is_some_and(|n| n > wanted) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{name} has no partition {wanted}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    })
    .await
    .expect("metadata task");
    let mut pending = Vec::with_capacity(records.len());
    for (partition, key, value) in records {
        let mut record = FutureRecord::<String, String>::to(topic)
            .payload(value)
            .partition(*partition);
        if let Some(k) = key {
            record = record.key(k);
        }
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push((*partition, delivery));
                    break;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err((e, _)) => panic!("producing to {topic}: {e}"),
            }
        }
    }
    for (partition, delivery) in pending {
        let delivered = delivery
            .await
            .expect("delivery report")
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}: {e}"));
        assert_eq!(delivered.partition, partition, "delivered to its partition");
    }
}

/// A window bound as epoch ms: a BIGINT bound as it is, a TIMESTAMP bound as arrow's JSON
/// writer spells it (`2025-11-24T16:00:00`, UTC, optionally with a fraction).
pub fn epoch_ms(v: &Value) -> Option<i64> {
    if let Some(n) = v.as_i64() {
        return Some(n);
    }
    datafusion::arrow::compute::kernels::cast_utils::string_to_timestamp_nanos(v.as_str()?)
        .ok()
        .map(|ns| ns / 1_000_000)
}

#[cfg(test)]
mod tests {
    #[test]
    fn murmur2_matches_kafkas_own_test_vectors() {
        // From Kafka's `UtilsTest.testMurmur2`.
        for (text, want) in [
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ] {
            assert_eq!(super::murmur2(text.as_bytes()), want, "{text}");
        }
    }
}
