//! `slow-sink`: how much memory a persistent query holds while its sink is slow.
//!
//! Against the broker from `scripts/kafka-local` (or `SLUICE_BENCH_BOOTSTRAP`), it loads
//! 1,500,000 JSON events (about 140 MB) into a topic, starts a real `sluice server` (the binary
//! built beside this one), throttles every client's produce rate to 100 KB/s with a Kafka
//! client quota, and starts a stateless copy query (CSAS) from the beginning of the topic.
//! Every two seconds it prints the server's resident memory and the query's counters; after
//! 30 s it lifts the quota and lets the query catch up. Memory that stays flat while the
//! backlog is large is what the query loop promises: input waits in Kafka, not in Sluice.
//!
//! ```sh
//! scripts/kafka-local start
//! cargo build -p sluice-cli -p sluice-bench
//! cargo run -p sluice-bench --bin slow-sink
//! ```

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};
use sluice_bench::{broker, proc_mb, sluice_beside_me};

const RECORDS: i64 = 1_500_000;
const THROTTLED: Duration = Duration::from_secs(30);
const SINK_BYTES_PER_S: u64 = 100_000;
const SAMPLE_EVERY: Duration = Duration::from_secs(2);

/// The server process, killed when dropped.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The client quota, removed when dropped (also when the benchmark fails).
struct Quota<'a> {
    libs: &'a PathBuf,
    bootstrap: &'a str,
    set: bool,
}

impl Quota<'_> {
    fn set(&mut self) -> Result<()> {
        config_command(
            self.libs,
            self.bootstrap,
            &[
                "--add-config",
                &format!("producer_byte_rate={SINK_BYTES_PER_S}"),
            ],
        )?;
        self.set = true;
        Ok(())
    }

    fn lift(&mut self) -> Result<()> {
        if self.set {
            config_command(
                self.libs,
                self.bootstrap,
                &["--delete-config", "producer_byte_rate"],
            )?;
            self.set = false;
        }
        Ok(())
    }
}

impl Drop for Quota<'_> {
    fn drop(&mut self) {
        let _ = self.lift();
    }
}

/// Kafka's own `kafka-configs` tool (in the broker's jars), on every client by default.
fn config_command(libs: &std::path::Path, bootstrap: &str, change: &[&str]) -> Result<()> {
    let java = std::env::var("JAVA_HOME").map_or_else(
        |_| PathBuf::from("java"),
        |home| PathBuf::from(home).join("bin/java"),
    );
    let output = Command::new(java)
        .arg("-cp")
        .arg(format!("{}/*", libs.display()))
        .arg("kafka.admin.ConfigCommand")
        .args(["--bootstrap-server", bootstrap, "--alter"])
        .args(change)
        .args(["--entity-type", "clients", "--entity-default"])
        .output()
        .context("running java (Kafka's ConfigCommand)")?;
    if !output.status.success() {
        bail!(
            "kafka-configs failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

fn rss_mb(pid: u32) -> f64 {
    proc_mb(pid, "VmRSS:")
}

async fn ksql(url: &str, sql: &str) -> Result<Value> {
    let mut properties = serde_json::Map::new();
    properties.insert("auto.offset.reset".into(), "earliest".into());
    sluice_bench::ksql(url, sql, properties).await
}

/// The copy query's records in and out.
async fn counters(url: &str, sink: &str) -> Result<(u64, u64)> {
    let d = ksql(url, &format!("DESCRIBE {sink};")).await?;
    let s = &d[0]["sourceDescription"]["writeQueries"][0]["statistics"];
    Ok((
        s["records_in"].as_u64().unwrap_or(0),
        s["records_out"].as_u64().unwrap_or(0),
    ))
}

#[tokio::main]
async fn main() -> Result<()> {
    let bootstrap = broker()?;
    let sluice = sluice_beside_me("cargo build -p sluice-cli")?;
    let cache = std::env::var("SLUICE_CACHE").map_or_else(
        |_| PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/sluice"),
        PathBuf::from,
    );
    let libs = cache.join("kafka/libs");
    if !libs.exists() {
        bail!(
            "{} is missing: scripts/kafka-local start fetches it",
            libs.display()
        );
    }
    let run = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let topic = format!("slow_sink_in_{run}");

    // The input, loaded before anything reads it.
    let admin = sluice_bench::admin(&bootstrap)?;
    sluice_bench::create_topic(&admin, &topic, 2).await?;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("linger.ms", "20")
        .create()?;
    let mut bytes = 0usize;
    let started = Instant::now();
    for i in 0..RECORDS {
        let value = json!({
            "id": i, "card": format!("card-{:07}", i % 100_000), "amount": (i % 9_999) as f64 + 0.5,
            "merchant": format!("m-{:05}", i % 977), "ts": 1_700_000_000_000i64 + i,
        })
        .to_string();
        bytes += value.len();
        let key = format!("card-{:07}", i % 100_000);
        loop {
            match producer.send_result(FutureRecord::to(&topic).key(&key).payload(&value)) {
                Ok(_) => break,
                Err(_) => producer.poll(Duration::from_millis(10)),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    println!(
        "loaded {RECORDS} records, {:.1} MB of JSON, into {topic} in {:.1} s",
        bytes as f64 / 1e6,
        started.elapsed().as_secs_f64()
    );

    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let log = std::env::temp_dir().join(format!("slow-sink-{run}.log"));
    println!("server log: {}", log.display());
    let server = Server(
        Command::new(&sluice)
            .args(["server", "--bootstrap-servers", &bootstrap])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--service-id", &format!("bench_{run}_")])
            .arg("--state-dir")
            .arg(std::env::temp_dir().join(format!("slow-sink-{run}")))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(&log).context("the server log")?,
            ))
            .spawn()
            .context("starting sluice server")?,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while reqwest::get(format!("{url}/info")).await.is_err() {
        if Instant::now() > deadline {
            bail!("the server did not start");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let pid = server.0.id();
    let idle_rss = rss_mb(pid);
    let mut quota = Quota {
        libs: &libs,
        bootstrap: &bootstrap,
        set: false,
    };
    quota.set()?;
    let (src, sink) = (format!("SLOW_SRC_{run}"), format!("SLOW_OUT_{run}"));
    ksql(
        &url,
        &format!(
            "CREATE STREAM {src} (id BIGINT, card VARCHAR, amount DOUBLE, merchant VARCHAR, ts BIGINT) \
               WITH (KAFKA_TOPIC='{topic}', VALUE_FORMAT='JSON');\n\
             CREATE STREAM {sink} AS SELECT * FROM {src};"
        ),
    )
    .await?;

    println!(
        "\nsluice server pid {pid}, {idle_rss:.1} MB resident before the query; \
         produce quota {} KB/s on every client",
        SINK_BYTES_PER_S / 1000
    );
    println!("\n| phase | t (s) | RSS (MB) | records in | records out | waiting in Kafka |");
    println!("|---|---:|---:|---:|---:|---:|");
    let t0 = Instant::now();
    let mut peak_throttled = 0f64;
    while t0.elapsed() < THROTTLED {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let rss = rss_mb(pid);
        peak_throttled = peak_throttled.max(rss);
        let (inn, out) = counters(&url, &sink).await?;
        println!(
            "| slow sink | {:.0} | {rss:.1} | {inn} | {out} | {} |",
            t0.elapsed().as_secs_f64(),
            RECORDS - out as i64
        );
    }
    quota.lift()?;
    let mut peak_after = 0f64;
    let catch_up = Instant::now() + Duration::from_secs(180);
    loop {
        tokio::time::sleep(SAMPLE_EVERY).await;
        let rss = rss_mb(pid);
        peak_after = peak_after.max(rss);
        let (inn, out) = counters(&url, &sink).await?;
        println!(
            "| quota lifted | {:.0} | {rss:.1} | {inn} | {out} | {} |",
            t0.elapsed().as_secs_f64(),
            RECORDS - out as i64
        );
        if out as i64 >= RECORDS || Instant::now() > catch_up {
            break;
        }
    }
    println!(
        "\npeak resident memory: {peak_throttled:.1} MB while the sink was slow, \
         {peak_after:.1} MB catching up; {idle_rss:.1} MB idle; input {:.1} MB",
        bytes as f64 / 1e6
    );
    drop(server);
    Ok(())
}
