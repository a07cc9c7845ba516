//! A broker outage in the middle of a stream. The test runs a broker of its own
//! (`scripts/kafka-local` with its own port and directory), so stopping it does not
//! disturb the other tests: input keeps coming, the broker is stopped for several
//! seconds and started again. The server stays up and says Kafka is down
//! (`/healthcheck`, DESCRIBE); its queries wait, retry and resume, and their output,
//! read `read_committed`, holds every input record exactly once and window values equal
//! to the input's. The broker goes away in two ways: stopped (a clean shutdown), and
//! frozen with requests in flight and then killed, so that the query's batch was sent
//! and never answered.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};
use sluice_e2e::{consume_until_on, test_file, unique};
use sluice_stream_exec::changelog::read_topic;

use crate::process::{free_port, start_on};

/// A broker of this test's own, stopped when dropped.
struct Broker {
    dir: PathBuf,
    port: u16,
    controller_port: u16,
}

impl Broker {
    fn new() -> Self {
        Self {
            dir: std::env::temp_dir().join(unique("outage-broker")),
            port: free_port(),
            controller_port: free_port(),
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn run(&self, command: &str) {
        let script = test_file("../scripts/kafka-local");
        let status = Command::new("bash")
            .arg(&script)
            .arg(command)
            .env("KAFKA_LOCAL_PORT", self.port.to_string())
            .env(
                "KAFKA_LOCAL_CONTROLLER_PORT",
                self.controller_port.to_string(),
            )
            .env("KAFKA_LOCAL_DIR", &self.dir)
            .status()
            .expect("scripts/kafka-local");
        assert!(status.success(), "kafka-local {command} failed");
    }

    /// Freeze the broker (SIGSTOP): its connections stay open and nothing is answered,
    /// as when a host hangs. Then kill it.
    fn hang_then_die(&self, hang: Duration) {
        let pid = std::fs::read_to_string(self.dir.join("kafka.pid")).expect("the broker's pid");
        let signal = |name: &str| {
            let status = Command::new("kill")
                .args([name, pid.trim()])
                .status()
                .expect("kill");
            assert!(status.success(), "kill {name} {pid}");
        };
        signal("-STOP");
        std::thread::sleep(hang);
        signal("-KILL");
        // The script's own stop waits until it is gone and clears its pid file.
        self.run("stop");
    }
}

/// How the broker goes away.
#[derive(Debug, Clone, Copy)]
enum Outage {
    /// A clean shutdown.
    Stop,
    /// It stops answering for a while, then dies.
    HangThenDie,
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.run("stop");
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ksql(url: &str, sql: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{url}/ksql"))
        .json(&json!({"ksql": sql, "streamsProperties": {"auto.offset.reset": "earliest"}}))
        .timeout(Duration::from_secs(60))
        .send()
        .await
        .expect("request");
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_outage_pauses_queries_and_loses_nothing() {
    outage(Outage::Stop).await;
}

/// The broker hangs with the queries' requests in flight (their batches sent and never
/// acknowledged), then dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_hanging_then_dying_loses_nothing() {
    outage(Outage::HangThenDie).await;
}

async fn outage(how: Outage) {
    let broker = Broker::new();
    broker.run("start");
    let bootstrap = broker.bootstrap();
    let service_id = format!("{}_", unique("outage"));
    let server = start_on(&bootstrap, &service_id, free_port()).await;
    let (topic, stream, copy, counts) = (
        unique("outage_in"),
        unique("OUTAGE_IN").to_uppercase(),
        unique("OUTAGE_COPY").to_uppercase(),
        unique("OUTAGE_COUNTS").to_uppercase(),
    );
    let (status, body) = ksql(
        &server.url,
        &format!(
            "CREATE STREAM {stream} (id BIGINT, k VARCHAR, ts BIGINT) \
               WITH (KAFKA_TOPIC='{topic}', PARTITIONS=2, TIMESTAMP='ts');\n\
             CREATE STREAM {copy} AS SELECT id, k FROM {stream};\n\
             CREATE TABLE {counts} AS SELECT k, WINDOWSTART AS ws, COUNT(*) AS c \
               FROM {stream} WINDOW TUMBLING (SIZE 5 SECONDS) GROUP BY k EMIT CHANGES;"
        ),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    // Input keeps coming: the producer buffers while the broker is away and sends on
    // when it is back (idempotent, so its retries add no duplicates). It reconnects to
    // the broker on its own (`enable.sparse.connections=false`, as Sluice's clients do).
    // Even so, an idempotent producer that needs a new producer id after the outage has
    // twice (librdkafka 2.12.1) held no connection for nine minutes and more after the
    // broker was back, until its records timed out. So a record not delivered within a
    // minute is sent again by a new producer: a record this test gives up on is not one
    // the server lost, and the expected results come from what the topic holds.
    let total = 4_000i64;
    let base = 1_700_000_000_000i64;
    let feed_topic = topic.clone();
    let feed_bootstrap = bootstrap.clone();
    let feeder = tokio::spawn(async move {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        let mut unsent: Vec<i64> = (0..total).collect();
        let mut round = 0;
        while !unsent.is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "{} input records could not be delivered",
                unsent.len()
            );
            let producer: FutureProducer = ClientConfig::new()
                .set("bootstrap.servers", &feed_bootstrap)
                .set("enable.sparse.connections", "false")
                .set("enable.idempotence", "true")
                .set("message.timeout.ms", "60000")
                .set("linger.ms", "5")
                .create()
                .expect("producer");
            let mut pending = vec![];
            for (n, &i) in unsent.iter().enumerate() {
                let k = format!("k{}", i % 5);
                let value = json!({"id": i, "k": k, "ts": base + i * 10}).to_string();
                let record = FutureRecord::to(&feed_topic).key(&k).payload(&value);
                pending.push((i, producer.send_result(record).expect("queued")));
                if round == 0 && n % 50 == 49 {
                    tokio::time::sleep(Duration::from_millis(40)).await;
                }
            }
            let mut failed = vec![];
            for (i, p) in pending {
                if !matches!(p.await, Ok(Ok(_))) {
                    failed.push(i);
                }
            }
            if !failed.is_empty() {
                eprintln!(
                    "outage: {} input records not delivered; a new producer sends them again",
                    failed.len()
                );
            }
            unsent = failed;
            round += 1;
        }
    });

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t0 = std::time::Instant::now();
    match how {
        Outage::Stop => broker.run("stop"),
        Outage::HangThenDie => broker.hang_then_die(Duration::from_secs(3)),
    }
    eprintln!("outage ({how:?}): broker gone after {:?}", t0.elapsed());
    // The server notices: the health check and DESCRIBE say Kafka fails.
    let client = reqwest::Client::new();
    let mut health = Value::Null;
    let mut kafka_errors = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = client
            .get(format!("{}/healthcheck", server.url))
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .expect("the server answers during the outage");
        health = r.json().await.expect("JSON");
        let (_, describe) = ksql(&server.url, &format!("DESCRIBE {stream};")).await;
        kafka_errors = describe[0]["sourceDescription"]["readQueries"]
            .as_array()
            .map(|qs| {
                qs.iter()
                    .filter_map(|q| q["statistics"]["kafka_error"].as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        if health["isHealthy"] == false && kafka_errors.len() == 2 {
            break;
        }
    }
    assert_eq!(health["details"]["kafka"]["isHealthy"], false, "{health}");
    assert_eq!(
        kafka_errors.len(),
        2,
        "both queries report the outage: {kafka_errors:?}"
    );
    eprintln!("outage: reported by the server after {:?}", t0.elapsed());
    broker.run("start");
    eprintln!("outage: broker back after {:?}", t0.elapsed());
    feeder.await.expect("all input delivered");

    eprintln!("outage: all input delivered after {:?}", t0.elapsed());
    // The input as the broker holds it, to its end. The producer delivers each record at
    // least once: when the broker went away with a request in flight, it can have
    // written the request's records and then have them sent again under a new producer
    // epoch. The queries must turn each record in the topic into exactly one result, so
    // the expected results come from what the topic holds.
    let input: Vec<Value> = read_topic(&bootstrap, &topic)
        .await
        .expect("the input read back")
        .into_iter()
        .map(|(_, v)| serde_json::from_slice(&v.expect("a value")).expect("JSON"))
        .collect();
    let mut written: HashMap<i64, usize> = HashMap::new();
    for r in &input {
        *written.entry(r["id"].as_i64().expect("id")).or_default() += 1;
    }
    let unsent: Vec<i64> = (0..total)
        .filter(|i| !written.contains_key(i))
        .take(10)
        .collect();
    assert!(
        unsent.is_empty(),
        "the producer lost records, e.g. {unsent:?}"
    );
    let twice = input.len() - written.len();
    if twice > 0 {
        eprintln!("outage: the producer wrote {twice} records twice");
    }
    let records = input.len();
    let got = consume_until_on(&bootstrap, &copy, Duration::from_secs(120), move |r| {
        r.len() >= records
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = if got.len() == records {
        consume_until_on(&bootstrap, &copy, Duration::from_secs(10), move |r| {
            r.len() > records
        })
        .await
    } else {
        got
    };
    let mut seen: HashMap<i64, usize> = HashMap::new();
    for r in &got {
        *seen.entry(r.value["id"].as_i64().expect("id")).or_default() += 1;
    }
    let missing: Vec<i64> = (0..total)
        .filter(|i| seen.get(i) < written.get(i))
        .take(10)
        .collect();
    let repeated: Vec<_> = seen
        .iter()
        .filter(|(id, n)| Some(*n) > written.get(*id))
        .take(10)
        .collect();
    assert!(missing.is_empty(), "lost records, e.g. {missing:?}");
    assert!(
        repeated.is_empty(),
        "repeated records (id, times), e.g. {repeated:?}"
    );

    let mut expected: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for r in &input {
        let ts = r["ts"].as_i64().expect("ts");
        let k = r["k"].as_str().expect("k").to_string();
        *expected.entry((k, ts - ts % 5_000)).or_default() += 1;
    }
    let key_of = |v: &Value| {
        (
            v["k"].as_str().expect("k").to_string(),
            v["ws"].as_i64().expect("ws"),
        )
    };
    // As long a wait as for the copy: after the outage each query's consumer group
    // rejoins on its own, and the windowed query may be the later one.
    let want = expected.clone();
    let got = consume_until_on(&bootstrap, &counts, Duration::from_secs(120), move |rows| {
        let mut last = BTreeMap::new();
        for r in rows {
            last.insert(key_of(&r.value), r.value["c"].as_i64().expect("c"));
        }
        last == want
    })
    .await;
    let mut last: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for r in &got {
        let (key, c) = (key_of(&r.value), r.value["c"].as_i64().expect("c"));
        if let Some(before) = last.get(&key) {
            assert!(c > *before, "{key:?} went from {before} to {c}");
        }
        last.insert(key, c);
    }
    assert_eq!(last, expected, "window counts differ from the input's");

    // Back to normal: healthy, and the queries' Kafka errors are cleared.
    let r = client
        .get(format!("{}/healthcheck", server.url))
        .send()
        .await
        .expect("healthcheck");
    assert_eq!(r.status().as_u16(), 200);
    let (_, describe) = ksql(&server.url, &format!("DESCRIBE {stream};")).await;
    for q in describe[0]["sourceDescription"]["readQueries"]
        .as_array()
        .expect("queries")
    {
        assert_eq!(q["state"], "RUNNING", "{q}");
        assert_eq!(q["statistics"]["kafka_error"], Value::Null, "{q}");
    }
}
