//! The Kafka mode: topics preloaded on the broker, then each query in a fresh `sluice
//! server` process, read from the beginning (librdkafka's own rates are in `raw`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use rdkafka::admin::AdminOptions;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::workload::{bid_json, BenchQuery, BidGenerator, FraudGenerator, Source, FRAUD_STEP_US};

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The event time span of `events` events of `source`, in ms.
fn span_ms(source: Source, events: usize) -> i64 {
    match source {
        Source::Fraud => events as i64 * FRAUD_STEP_US / 1000,
        // The Nexmark generator makes 10,000 events a second of event time, 46 in 50 bids.
        Source::Nexmark => events as i64 * 50 / 46 / 10,
    }
}

fn producer(bootstrap: &str) -> Result<ThreadedProducer<DefaultProducerContext>> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("queue.buffering.max.messages", "1000000")
        .create()?)
}

fn send(
    producer: &ThreadedProducer<DefaultProducerContext>,
    topic: &str,
    key: &[u8],
    value: &[u8],
    ts: i64,
) {
    let mut record = BaseRecord::to(topic).key(key).payload(value).timestamp(ts);
    loop {
        match producer.send(record) {
            Ok(()) => return,
            Err((_, back)) => {
                record = back;
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

/// The messages a topic's partition 0 holds; `None` when the topic does not exist.
fn topic_size(bootstrap: &str, topic: &str) -> Result<Option<i64>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let exists = metadata
        .topics()
        .iter()
        .any(|t| t.error().is_none() && !t.partitions().is_empty());
    if !exists {
        return Ok(None);
    }
    let (low, high) = consumer.fetch_watermarks(topic, 0, Duration::from_secs(10))?;
    Ok(Some(high - low))
}

/// The offset a consumer group has committed on partition 0 of a topic.
struct Committed {
    consumer: BaseConsumer,
    partitions: TopicPartitionList,
    topic: String,
}

impl Committed {
    fn new(bootstrap: &str, group: &str, topic: &str) -> Result<Self> {
        let mut partitions = TopicPartitionList::new();
        partitions.add_partition(topic, 0);
        Ok(Self {
            consumer: ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("group.id", group)
                .create()?,
            partitions,
            topic: topic.to_string(),
        })
    }

    /// The partition's end: the offset the next record written will get.
    fn end(&self) -> Result<i64> {
        Ok(self
            .consumer
            .fetch_watermarks(&self.topic, 0, Duration::from_secs(10))?
            .1)
    }

    /// The committed offset; 0 before the first commit.
    fn get(&self) -> Result<i64> {
        let committed = self
            .consumer
            .committed_offsets(self.partitions.clone(), Duration::from_secs(10))?;
        Ok(
            match committed.find_partition(&self.topic, 0).map(|p| p.offset()) {
                Some(Offset::Offset(offset)) => offset,
                _ => 0,
            },
        )
    }
}

/// Earlier runs' latency events a preloaded topic may hold, as a share of its events
/// (one in this many), before it is loaded again.
const LATENCY_TAIL_SHARE: usize = 10;

/// The preloaded topic of `events` events of `source`: made once, kept for later runs
/// until their latency events grow past a tenth of it.
pub async fn preload(bootstrap: &str, source: Source, events: usize) -> Result<String> {
    let topic = format!("sluice_bench_{}_{events}_v1", source.name());
    let admin = sluice_bench::admin(bootstrap)?;
    match topic_size(bootstrap, &topic)? {
        // Later runs' latency events follow the preloaded ones, each run's at its own
        // wall-clock time. Every query reads them after its timed span (and its last
        // timed batch reads into them), so they are let grow to a tenth of the events.
        Some(n) if n >= events as i64 && n <= (events + events / LATENCY_TAIL_SHARE) as i64 => {
            println!("{topic}: already holds its {events} events");
            return Ok(topic);
        }
        Some(n) => {
            if n < events as i64 {
                println!("{topic}: an interrupted load ({n} of {events} events); loading again");
            } else {
                println!(
                    "{topic}: earlier runs' latency events grew to {} after its {events} events; loading again",
                    n - events as i64
                );
            }
            admin.delete_topics(&[&topic], &AdminOptions::new()).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        None => {}
    }
    sluice_bench::create_topic(&admin, &topic, 1).await?;
    let started = Instant::now();
    let first_ts = now_ms() - span_ms(source, events);
    let (bootstrap, name) = (bootstrap.to_string(), topic.clone());
    let bytes = tokio::task::spawn_blocking(move || -> Result<usize> {
        let producer = producer(&bootstrap)?;
        let mut bytes = 0;
        match source {
            Source::Fraud => {
                let mut generator = FraudGenerator::new(first_ts);
                for _ in 0..events {
                    let e = generator.next_event();
                    let value = e.json();
                    bytes += value.len();
                    send(&producer, &name, e.key().as_bytes(), &value, e.ts);
                }
            }
            Source::Nexmark => {
                let mut generator = BidGenerator::new(first_ts);
                for _ in 0..events {
                    let b = generator.next_bid();
                    let value = bid_json(&b);
                    bytes += value.len();
                    send(
                        &producer,
                        &name,
                        b.auction.to_string().as_bytes(),
                        &value,
                        b.date_time as i64,
                    );
                }
            }
        }
        producer.flush(Duration::from_secs(120))?;
        Ok(bytes)
    })
    .await??;
    println!(
        "{topic}: loaded {events} events, {:.0} bytes each, in {:.1} s",
        bytes as f64 / events as f64,
        started.elapsed().as_secs_f64()
    );
    Ok(topic)
}

/// Delete the topics benchmark runs left behind: each query's sink (`<QUERY>_<run>`,
/// `STARTUP_<run>`), changelog and its server's command topic (named after its service
/// id, `bench_<run>_…`). A run leaves gigabytes (the HOP changelogs most); the preloaded
/// input topics stay. Returns how many were deleted.
pub async fn delete_leftovers(bootstrap: &str, query_names: &[&str]) -> Result<usize> {
    let admin = sluice_bench::admin(bootstrap)?;
    let metadata = admin
        .inner()
        .fetch_metadata(None, Duration::from_secs(10))?;
    let is_run = |s: &str| s.len() >= 10 && s.bytes().all(|b| b.is_ascii_digit());
    let sink = |name: &str| {
        name.rsplit_once('_').is_some_and(|(query, run)| {
            is_run(run)
                && (query == "STARTUP" || query_names.iter().any(|q| q.to_uppercase() == query))
        })
    };
    let leftovers: Vec<String> = metadata
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .filter(|n| n.starts_with("bench_") || n.starts_with("_sluice-bench_") || sink(n))
        .collect();
    if leftovers.is_empty() {
        return Ok(0);
    }
    let names: Vec<&str> = leftovers.iter().map(String::as_str).collect();
    for result in admin.delete_topics(&names, &AdminOptions::new()).await? {
        if let Err((topic, e)) = result {
            eprintln!("could not delete the leftover topic {topic}: {e}");
        }
    }
    Ok(leftovers.len())
}

/// A `sluice server` process, killed when dropped.
pub struct Server {
    child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Start the server beside this binary with `service_id`; returns once it answers.
    pub async fn start(
        sluice: &Path,
        bootstrap: &str,
        service_id: &str,
        log: &Path,
    ) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let child = Command::new(sluice)
            .args(["server", "--bootstrap-servers", bootstrap])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--service-id", service_id])
            .arg("--state-dir")
            .arg(std::env::temp_dir().join(format!("sluice-bench-{service_id}")))
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .context("the server log")?,
            ))
            .spawn()
            .context("starting sluice server")?;
        let server = Server {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while reqwest::get(format!("{}/info", server.url)).await.is_err() {
            if Instant::now() > deadline {
                bail!("the server did not start; see {}", log.display());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(server)
    }

    /// Stop as an operator would (SIGTERM), and wait for it to exit.
    pub fn stop(mut self) -> Result<()> {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()?;
        self.child.wait()?;
        Ok(())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn ksql(&self, sql: &str) -> Result<Value> {
        self.ksql_with(sql, "earliest", &[]).await
    }

    /// Run `sql`; its queries start at `reset` (`earliest`, `latest`), with `properties`.
    pub async fn ksql_with(
        &self,
        sql: &str,
        reset: &str,
        properties: &[(String, String)],
    ) -> Result<Value> {
        let mut props = serde_json::Map::new();
        props.insert("auto.offset.reset".into(), reset.into());
        for (k, v) in properties {
            props.insert(k.clone(), v.clone().into());
        }
        sluice_bench::ksql(&self.url, sql, props).await
    }

    /// Records the query writing `sink` has read.
    pub async fn records_in(&self, sink: &str) -> Result<u64> {
        self.statistic(sink, "records_in").await
    }

    /// The id of the query writing `sink`.
    pub async fn query_id(&self, sink: &str) -> Result<String> {
        let d = self.ksql(&format!("DESCRIBE {sink};")).await?;
        d[0]["sourceDescription"]["writeQueries"][0]["id"]
            .as_str()
            .map(str::to_string)
            .with_context(|| format!("no query writes {sink}: {d}"))
    }

    async fn statistic(&self, sink: &str, name: &str) -> Result<u64> {
        let d = self.ksql(&format!("DESCRIBE {sink};")).await?;
        Ok(
            d[0]["sourceDescription"]["writeQueries"][0]["statistics"][name]
                .as_u64()
                .unwrap_or(0),
        )
    }
}

/// What one query measured against Kafka.
pub struct QueryResult {
    pub events_per_s: f64,
    /// The server's CPU time per event while it read them, in µs.
    pub cpu_us_per_event: f64,
    pub peak_rss_mb: f64,
    pub latency: Option<(f64, f64, usize)>,
    /// Records written per event, once every event was committed: to the sink, and to
    /// the query's changelog (both count a transaction marker per batch, a few dozen).
    pub results_per_event: f64,
    pub changelog_per_event: f64,
    /// For a windowed EMIT CHANGES query: ms from restarting its server (SIGTERM) after
    /// all of that to a new event's result.
    pub restart_ms: Option<f64>,
}

/// How long a restarted windowed query may take to run again: it reads back its state and
/// its table's rows first.
const RESTART_WAIT: Duration = Duration::from_secs(300);

/// What a benchmark run against Kafka needs.
pub struct KafkaBench {
    pub bootstrap: String,
    pub sluice: PathBuf,
    pub run: String,
    pub events: usize,
    pub latency_seconds: u64,
    pub latency_rate: u64,
    pub log: PathBuf,
    /// Request properties of every benchmark query (`--set key=value`).
    pub properties: Vec<(String, String)>,
}

impl KafkaBench {
    /// Run `query` over `topic` (which holds `self.events` events) from the beginning in a
    /// fresh server, then measure its latency on paced new events. Each `nth` run of a
    /// query has a service id and sink of its own.
    pub async fn run_query(
        &self,
        query: &BenchQuery,
        topic: &str,
        nth: usize,
    ) -> Result<QueryResult> {
        let run = match nth {
            0 => self.run.clone(),
            n => format!("{}{n}", self.run),
        };
        let service_id = format!("bench_{run}_{}_", query.name);
        let server = Server::start(&self.sluice, &self.bootstrap, &service_id, &self.log).await?;
        let sink = format!("{}_{run}", query.name).to_uppercase();
        server.ksql(&query.source.ddl(topic)).await?;
        let submitted = Instant::now();
        server
            .ksql_with(&query.statement(&sink), "earliest", &self.properties)
            .await?;
        let pid = server.pid().to_string();
        let deadline = submitted + Duration::from_secs(600);
        // From the first record read (the query's `records_in`)...
        let mut previous = (submitted, sluice_bench::cpu_seconds(&pid));
        let (first, cpu_at_first) = loop {
            let seen = server.records_in(&sink).await?;
            let now = (Instant::now(), sluice_bench::cpu_seconds(&pid));
            if seen > 0 {
                // Between this sample and the one before.
                break (
                    previous.0 + (now.0 - previous.0) / 2,
                    (previous.1 + now.1) / 2.0,
                );
            }
            if now.0 > deadline {
                bail!("{}: read nothing in 600 s", query.name);
            }
            previous = now;
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // ...to the commit of the last preloaded one: its results are written then. (A
        // batch counts its records in when it starts; a windowed query's last batch can
        // take over a second to process and write.)
        let group = format!("{service_id}query_{}", server.query_id(&sink).await?);
        let offsets = Committed::new(&self.bootstrap, &group, topic)?;
        let (finished, cpu_at_end) = loop {
            let committed = offsets.get()?;
            let now = (Instant::now(), sluice_bench::cpu_seconds(&pid));
            if committed >= self.events as i64 {
                break now;
            }
            if now.0 > deadline {
                bail!(
                    "{}: committed {committed} of {} events in 600 s",
                    query.name,
                    self.events
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let seconds = (finished - first).as_secs_f64();
        let peak_rss_mb = sluice_bench::proc_mb(server.pid(), "VmHWM:");
        let per_event = |topic: &str| -> Result<f64> {
            Ok(topic_size(&self.bootstrap, topic)?.unwrap_or(0) as f64 / self.events as f64)
        };
        let results_per_event = per_event(&sink)?;
        let changelog_per_event = per_event(&format!("{group}-changelog"))?;
        // Earlier runs' latency events follow the preloaded ones: the query commits them
        // too before the latency phase starts.
        let end = offsets.end()?;
        while offsets.get()? < end {
            if Instant::now() > deadline {
                bail!("{}: did not catch up with {topic}", query.name);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let latency = self.latency(query, &sink).await?;
        // A new event's result shows when a windowed query runs again after a restart,
        // with the state and table rows of all those events to read back first.
        let restart_ms = match latency.is_some() && query.sql.contains(" WINDOW ") {
            true => {
                server.stop()?;
                let started_ms = now_ms();
                let server =
                    Server::start(&self.sluice, &self.bootstrap, &service_id, &self.log).await?;
                let running = self
                    .first_output(&sink, topic, started_ms, RESTART_WAIT)
                    .await?;
                drop(server);
                Some((running - started_ms) as f64)
            }
            false => None,
        };
        Ok(QueryResult {
            events_per_s: self.events as f64 / seconds,
            cpu_us_per_event: (cpu_at_end - cpu_at_first) * 1e6 / self.events as f64,
            peak_rss_mb,
            latency,
            results_per_event,
            changelog_per_event,
            restart_ms,
        })
    }

    /// p50 and p99 latency (ms) from a record's event time to its result read by a
    /// consumer (read_committed), over new events produced at `latency_rate` for
    /// `latency_seconds` with the current time as event time. A result row carries the
    /// newest event time it reflects (`ts`, `date_time` or `MAX(…) AS last_ts`); rows of
    /// windows that closed with older events are left out.
    async fn latency(&self, query: &BenchQuery, sink: &str) -> Result<Option<(f64, f64, usize)>> {
        let consumer = tail(&self.bootstrap, sink)?;
        let started_ms = now_ms();
        let done = Arc::new(AtomicBool::new(false));
        let producing = {
            let (bootstrap, topic, done) = (self.bootstrap.clone(), query.source, done.clone());
            let (rate, seconds) = (self.latency_rate, self.latency_seconds);
            let source_topic = self.source_topic(query.source);
            std::thread::spawn(move || {
                paced(&bootstrap, &source_topic, topic, rate, seconds, &done)
            })
        };
        let mut latencies = vec![];
        let mut drain_until = None;
        loop {
            if done.load(Ordering::SeqCst) && drain_until.is_none() {
                drain_until = Some(Instant::now() + Duration::from_secs(3));
            }
            if drain_until.is_some_and(|t| Instant::now() > t) {
                break;
            }
            let Some(m) = consumer.poll(Duration::from_millis(5)) else {
                continue;
            };
            let received = now_ms();
            let Ok(m) = m else { continue };
            let Some(value) = m.payload() else { continue };
            let Ok(Value::Object(row)) = serde_json::from_slice::<Value>(value) else {
                continue;
            };
            let newest = row.iter().find_map(|(k, v)| {
                ["ts", "date_time", "last_ts"]
                    .iter()
                    .any(|name| k.eq_ignore_ascii_case(name))
                    .then(|| v.as_i64())
                    .flatten()
            });
            if let Some(ts) = newest.filter(|ts| *ts >= started_ms) {
                latencies.push((received - ts) as f64);
            }
        }
        producing
            .join()
            .map_err(|_| anyhow::anyhow!("the paced producer panicked"))??;
        if latencies.is_empty() {
            return Ok(None);
        }
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
        Ok(Some((at(0.5), at(0.99), latencies.len())))
    }

    fn source_topic(&self, source: Source) -> String {
        format!("sluice_bench_{}_{}_v1", source.name(), self.events)
    }
}

/// Produce new events of `source` to `topic`, `rate` a second for `seconds`, each with
/// the current time as event time; then set `done`.
fn paced(
    bootstrap: &str,
    topic: &str,
    source: Source,
    rate: u64,
    seconds: u64,
    done: &AtomicBool,
) -> Result<()> {
    let producer: ThreadedProducer<DefaultProducerContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "1")
        .create()?;
    let mut fraud = FraudGenerator::new(0);
    let mut bids = BidGenerator::new(0);
    let started = Instant::now();
    let mut sent = 0u64;
    while started.elapsed() < Duration::from_secs(seconds) {
        let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let ts = now_ms();
            match source {
                Source::Fraud => {
                    let mut e = fraud.next_event();
                    e.ts = ts;
                    send(&producer, topic, e.key().as_bytes(), &e.json(), ts);
                }
                Source::Nexmark => {
                    let mut b = bids.next_bid();
                    b.date_time = ts as u64;
                    send(
                        &producer,
                        topic,
                        b.auction.to_string().as_bytes(),
                        &bid_json(&b),
                        ts,
                    );
                }
            }
            sent += 1;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    producer.flush(Duration::from_secs(30))?;
    done.store(true, Ordering::SeqCst);
    Ok(())
}

/// A consumer of `topic`'s new records (read_committed), at the end of every partition.
fn tail(bootstrap: &str, topic: &str) -> Result<BaseConsumer> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", format!("sluice_bench_tail_{}", now_ms()))
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        // The sink's last catch-up batch may still come in after the end offset is looked
        // up, and fill the prefetch queue: with the default (1 s), fetching would then
        // stop for a second, and the latency events' results wait for it.
        .set("fetch.queue.backoff.ms", "10")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut list = TopicPartitionList::new();
    for t in metadata.topics() {
        for p in t.partitions() {
            list.add_partition_offset(topic, p.id(), Offset::End)?;
        }
    }
    consumer.assign(&list)?;
    for _ in 0..20 {
        consumer.poll(Duration::from_millis(10));
    }
    Ok(consumer)
}

impl KafkaBench {
    /// How long a restarted server takes until its persistent query runs: a server with a
    /// stateless query is stopped (SIGTERM), started again (its catalog is read back from Kafka),
    /// and a new event is produced every 20 ms from the moment it is started. Returns the
    /// ms from starting the process to its REST API answering, and to the first of those
    /// events appearing in the query's sink.
    pub async fn startup(&self, topic: &str) -> Result<(f64, f64)> {
        let service_id = format!("bench_{}_startup_", self.run);
        let sink = format!("STARTUP_{}", self.run);
        let statement = format!("CREATE STREAM {sink} AS SELECT card_id, amount, ts FROM tx;");
        {
            let server =
                Server::start(&self.sluice, &self.bootstrap, &service_id, &self.log).await?;
            server.ksql(&Source::Fraud.ddl(topic)).await?;
            server.ksql_with(&statement, "latest", &[]).await?;
            // Running: a new event comes out.
            self.first_output(&sink, topic, now_ms(), Duration::from_secs(60))
                .await?;
            server.stop()?;
        }
        let started = Instant::now();
        let started_ms = now_ms();
        let server = Server::start(&self.sluice, &self.bootstrap, &service_id, &self.log).await?;
        let answering = started.elapsed().as_secs_f64() * 1000.0;
        let running = self
            .first_output(&sink, topic, started_ms, Duration::from_secs(60))
            .await?
            - started_ms;
        drop(server);
        Ok((answering, running as f64))
    }

    /// Produce a new event to `topic` every 20 ms until one with an event time at or
    /// after `since_ms` comes out of `sink` (as `ts`, or a window's `last_ts`), within
    /// `wait`; returns when (epoch ms).
    async fn first_output(
        &self,
        sink: &str,
        topic: &str,
        since_ms: i64,
        wait: Duration,
    ) -> Result<i64> {
        let (bootstrap, sink, topic) =
            (self.bootstrap.clone(), sink.to_string(), topic.to_string());
        tokio::task::spawn_blocking(move || -> Result<i64> {
            let consumer = tail(&bootstrap, &sink)?;
            let producer = producer(&bootstrap)?;
            let mut fraud = FraudGenerator::new(0);
            let deadline = Instant::now() + wait;
            let mut last_sent = Instant::now() - Duration::from_secs(1);
            while Instant::now() < deadline {
                if last_sent.elapsed() >= Duration::from_millis(20) {
                    let mut e = fraud.next_event();
                    e.ts = now_ms().max(since_ms);
                    send(&producer, &topic, e.key().as_bytes(), &e.json(), e.ts);
                    producer.flush(Duration::from_secs(5))?;
                    last_sent = Instant::now();
                }
                let Some(Ok(m)) = consumer.poll(Duration::from_millis(5)) else {
                    continue;
                };
                let row: Value = m
                    .payload()
                    .and_then(|v| serde_json::from_slice(v).ok())
                    .unwrap_or(Value::Null);
                let ts = row
                    .as_object()
                    .and_then(|o| {
                        o.iter().find(|(k, _)| {
                            k.eq_ignore_ascii_case("ts") || k.eq_ignore_ascii_case("last_ts")
                        })
                    })
                    .and_then(|(_, v)| v.as_i64());
                if ts.is_some_and(|ts| ts >= since_ms) {
                    return Ok(now_ms());
                }
            }
            bail!(
                "no new event came out of {sink} within {} s",
                wait.as_secs()
            )
        })
        .await?
    }
}

/// Total memory of this machine in GiB.
pub fn proc_meminfo_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0)
}
