//! The Kafka loop of one query: consume a batch of records, run them through the
//! [`Pipeline`], then hand the results on. A persistent query produces them to its sink
//! topic, waits for the broker to acknowledge them, then commits the consumer offsets
//! (at-least-once). A push query sends them to its client and commits nothing.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::Producer;
use rdkafka::{Offset, TopicPartitionList};
use sluice_sql_planner::StreamPlan;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout_at, Instant};

use crate::changelog::{changelog_topic, ensure_changelog, latest, read_topic};
use crate::delivery::{transaction, AckContext, Delivery, QueryProducer};
use crate::error::{ExecError, Result};
use crate::materialized::MaterializedTable;
use crate::operator::ChangeBatch;
use crate::pipeline::Pipeline;
use crate::record::RawRecord;
use crate::stats::QueryStats;

/// A batch ends when the commit interval has passed since its first record, when it
/// holds [`MAX_BATCH_BYTES`] of input, or at the record limit, which adapts between
/// [`MIN_BATCH`] and [`MAX_BATCH`]: it starts at [`FIRST_BATCH`], doubles after a full
/// batch delivered within [`FAST_DELIVERY`], and halves after a delivery slower than
/// [`SLOW_DELIVERY`] or a failed one. Large batches spread the cost of a transaction over
/// many records; a slow sink (a throttled or struggling broker) gets small ones, which
/// stay well inside the producer's delivery timeout.
const MIN_BATCH: usize = 1024;
const FIRST_BATCH: usize = 8192;
const MAX_BATCH: usize = 65_536;
const MAX_BATCH_BYTES: usize = 16 << 20;
const FAST_DELIVERY: Duration = Duration::from_millis(500);
const SLOW_DELIVERY: Duration = Duration::from_secs(3);
/// How long a push query's batch waits for more records after its first one.
pub const PUSH_BATCH_WAIT: Duration = Duration::from_millis(20);
/// The default commit interval under exactly-once (Kafka Streams' default for it).
pub const EXACTLY_ONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// The default commit interval under at-least-once: results go out with little delay.
pub const AT_LEAST_ONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(20);
/// How often a query with no new records checks the clock for idle partitions.
const TICK: Duration = Duration::from_millis(250);

/// What a persistent query needs besides its plan.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// The query id, e.g. `CTAS_FRAUD_1`.
    pub query_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// The consumer group of this query (service id + query id).
    pub group_id: String,
    /// Where results go.
    pub sink_topic: String,
    /// `earliest` or `latest`: where to start when the group has no committed offset.
    pub auto_offset_reset: String,
    /// A source partition that delivers nothing for this long stops holding the
    /// watermark back; `None` never.
    pub idle_timeout: Option<Duration>,
    /// For a table: where its current rows are kept for pull queries, updated once the
    /// broker has acknowledged them.
    pub materialized: Option<Arc<MaterializedTable>>,
    /// Exactly-once: each batch's results and consumer offsets are written in one Kafka
    /// transaction (`transactional.id` = the consumer group). Otherwise at-least-once.
    pub exactly_once: bool,
    /// `commit.interval.ms`: how long a batch collects records after its first one before
    /// its results, state changes and offsets are written and committed.
    pub commit_interval: Duration,
}

/// How long a transaction call may take.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a running query's results go.
enum Output {
    /// A persistent query: the sink topic, then a commit of the consumer offsets.
    Topic(QueryProducer),
    /// A push query: the client's channel; no offsets are committed.
    Client(mpsc::Sender<Result<ChangeBatch>>),
}

/// Run `plan` as a persistent query, writing to `config.sink_topic`, until `shutdown`
/// turns true. Returns an error when Kafka fails in a way the query cannot recover from;
/// bad records never stop it.
pub async fn run_query(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let producer = retry(
        &config.query_id,
        "creating a producer",
        &stats,
        &mut shutdown,
        || new_producer(&config),
    )
    .await?;
    match producer {
        Some(producer) => run(config, plan, stats, shutdown, Output::Topic(producer)).await,
        None => Ok(()),
    }
}

/// The producer of a persistent query. Exactly-once: transactional, with the query's
/// consumer group as `transactional.id`, so a new one fences the one it replaces (of a
/// run that died, or of this run before a Kafka failure) and aborts its open transaction.
async fn new_producer(config: &QueryConfig) -> Result<QueryProducer> {
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("linger.ms", "5")
        .set("acks", "all")
        // A broker outage fails a batch within this time (then it is retried), well
        // inside the transaction timeout.
        .set("message.timeout.ms", "30000");
    if config.exactly_once {
        producer_config
            .set("transactional.id", &config.group_id)
            .set("transaction.timeout.ms", "60000");
    }
    let producer: QueryProducer = producer_config
        .create_with_context(AckContext)
        .map_err(|e| ExecError::kafka("creating the producer", e))?;
    if config.exactly_once {
        transaction(&producer, "starting transactions", |p| {
            p.init_transactions(TRANSACTION_TIMEOUT)
        })
        .await?;
    }
    Ok(producer)
}

/// The first wait before retrying after a Kafka failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Waiting longer than this for the broker to acknowledge a batch is reported as a
/// Kafka failure in the query's statistics (it keeps waiting).
pub(crate) const SLOW_ACKS: Duration = Duration::from_secs(5);
/// While Kafka is failing a query that has nothing to commit, how often it asks Kafka
/// whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Run `plan` as a push query: its result batches go to `client` until `shutdown` turns
/// true or the client goes away (the receiver is dropped). Offsets are never committed.
/// An error that stops the query is sent to the client as the last item.
pub async fn run_push_query(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    shutdown: watch::Receiver<bool>,
    client: mpsc::Sender<Result<ChangeBatch>>,
) {
    let query_id = config.query_id.clone();
    if let Err(e) = run(
        config,
        plan,
        stats,
        shutdown,
        Output::Client(client.clone()),
    )
    .await
    {
        tracing::warn!(query_id, error = %e, "push query failed");
        let _ = client.send(Err(e)).await;
    }
}

async fn run(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    mut shutdown: watch::Receiver<bool>,
    mut output: Output,
) -> Result<()> {
    let query_id = config.query_id.as_str();
    let topic = plan.source.topic.as_str();
    let persistent = matches!(output, Output::Topic(_));
    let revocations = Arc::new(AtomicU64::new(0));
    let assignment = Arc::new(std::sync::Mutex::new(Assignment::default()));
    let mut consumer_config = ClientConfig::new();
    consumer_config
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", &config.auto_offset_reset)
        .set("session.timeout.ms", "10000")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "5000")
        // Prefetched input is capped: while a batch is written (a slow sink, a broker
        // outage), input waits in Kafka, not in memory.
        .set("queued.max.messages.kbytes", "32768")
        // Once that prefetch queue is full, librdkafka waits this long before fetching
        // again (default 1 s). A batch being written leaves the queue full, so the default
        // stalled the consumer for most of a second after each one.
        .set("fetch.queue.backoff.ms", "10");
    let consumer: Arc<QueryConsumer> = consumer_config
        .create_with_context(RebalanceWatch {
            revocations: revocations.clone(),
            stats: stats.clone(),
            topic: topic.to_string(),
            assignment: assignment.clone(),
        })
        .map(Arc::new)
        .map_err(|e| ExecError::kafka("creating the consumer", e))?;
    consumer
        .subscribe(&[topic])
        .map_err(|e| ExecError::kafka(format!("subscribing to {topic}"), e))?;
    let partitions: Vec<i32> = match consumer.fetch_metadata(Some(topic), Duration::from_secs(10)) {
        Ok(metadata) => metadata
            .topics()
            .iter()
            .flat_map(|t| t.partitions().iter().map(|p| p.id()))
            .collect(),
        Err(e) => {
            tracing::warn!(query_id, error = %e, "no partition list; the watermark follows the partitions that deliver");
            vec![]
        }
    };
    let stateful = Pipeline::new(query_id, &plan, config.idle_timeout)?.is_stateful();
    let changelog = (persistent && stateful).then(|| changelog_topic(&config.group_id));
    // Kafka may be down as the query starts (or restarts after a crash): wait for it.
    if let Some(changelog) = &changelog {
        let created = retry(
            query_id,
            "creating the changelog",
            &stats,
            &mut shutdown,
            || ensure_changelog(&config.bootstrap_servers, changelog),
        )
        .await?;
        if created.is_none() {
            return Ok(());
        }
    }
    let Some(mut pipeline) = retry(
        query_id,
        "reading state back",
        &stats,
        &mut shutdown,
        || start_pipeline(&config, &plan, &partitions, changelog.as_deref()),
    )
    .await?
    else {
        return Ok(());
    };
    if let (true, Some(table)) = (persistent, &config.materialized) {
        let Some(rows) = retry(
            query_id,
            "reading table rows back",
            &stats,
            &mut shutdown,
            || read_topic(&config.bootstrap_servers, &config.sink_topic),
        )
        .await?
        else {
            return Ok(());
        };
        let rows = table.restore(&latest(rows))?;
        tracing::info!(query_id, rows, sink = %config.sink_topic, "table rows read back");
    }
    tracing::info!(query_id, topic, sink = %config.sink_topic, "query started");
    let mut backoff = FIRST_BACKOFF;
    let mut last_probe = Instant::now();
    let mut consumer_errors = 0u32;
    let mut seen_assignment = None;
    let mut batch_limit = FIRST_BATCH;
    // Records read while the batch before was written: the start of the next batch.
    let mut read_ahead: Option<ReadAhead> = None;
    loop {
        sync_assignment(&mut pipeline, &assignment, &mut seen_assignment);
        let (generation, mut records, mut bytes) = match read_ahead.take() {
            Some(ahead) => (ahead.generation, ahead.records, ahead.bytes),
            None => (
                revocations.load(Ordering::SeqCst),
                Vec::with_capacity(256),
                0,
            ),
        };
        let first = if records.is_empty() {
            tokio::select! {
                _ = shutdown.changed() => break,
                m = consumer.recv() => Some(m),
                _ = tokio::time::sleep(TICK) => None,
            }
        } else {
            None
        };
        match first {
            Some(Ok(m)) => {
                consumer_errors = 0;
                let r = raw(&m);
                bytes += r.size();
                records.push(r);
            }
            Some(Err(e)) => {
                // While the broker is away this repeats: log the first and every 50th.
                if consumer_errors.is_multiple_of(50) {
                    tracing::warn!(query_id, error = %e, repeated = consumer_errors, "consumer error; retrying");
                }
                consumer_errors += 1;
                stats.kafka_failed(e.to_string());
                if !pause(&mut shutdown, Duration::from_millis(200)).await {
                    break;
                }
                continue;
            }
            None => {}
        }
        let read_started = Instant::now();
        if !records.is_empty() {
            let deadline = Instant::now() + config.commit_interval;
            while records.len() < batch_limit && bytes < MAX_BATCH_BYTES {
                match timeout_at(deadline, consumer.recv()).await {
                    Ok(Ok(m)) => {
                        let r = raw(&m);
                        bytes += r.size();
                        records.push(r);
                    }
                    Ok(Err(e)) => tracing::warn!(query_id, error = %e, "consumer error"),
                    Err(_) => break,
                }
            }
            if persistent && revocations.load(Ordering::SeqCst) != generation {
                // The partitions were taken away and given back while this batch was
                // read: they restart from the committed offsets, so it is read again.
                tracing::info!(
                    query_id,
                    "partitions were reassigned while a batch was read; reading it again"
                );
                reposition(&consumer, topic, &records, true);
                continue;
            }
        }
        if records.is_empty() && stats.kafka_failing() && last_probe.elapsed() > PROBE_EVERY {
            // Nothing to commit tells us Kafka is back: ask it.
            last_probe = Instant::now();
            let (probe, source) = (consumer.clone(), topic.to_string());
            let answered = tokio::task::spawn_blocking(move || {
                probe
                    .fetch_metadata(Some(&source), Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                stats.kafka_ok();
            }
        }
        let process_started = Instant::now();
        let batches = if records.is_empty() {
            pipeline.tick(std::time::Instant::now(), &stats)?
        } else {
            pipeline.process(&records, &stats)?
        };
        let go_on = match &mut output {
            Output::Topic(producer) => {
                let changes = match changelog {
                    Some(_) => pipeline.take_state_changes()?,
                    None => vec![],
                };
                if batches.is_empty() && changes.is_empty() && records.is_empty() {
                    continue;
                }
                let delivery = Delivery {
                    config: &config,
                    plan: &plan,
                    changelog: changelog.as_deref(),
                    stats: &stats,
                };
                let started = Instant::now();
                let mut ahead = ReadAhead {
                    generation: revocations.load(Ordering::SeqCst),
                    records: vec![],
                    bytes: 0,
                };
                let delivered = {
                    // While the batch is written, read the next one (at most one batch:
                    // a slow sink keeps input waiting in Kafka, not here).
                    let deliver =
                        delivery.deliver(producer, &consumer, &records, &batches, &changes);
                    tokio::pin!(deliver);
                    loop {
                        if ahead.records.len() >= batch_limit || ahead.bytes >= MAX_BATCH_BYTES {
                            break deliver.await;
                        }
                        tokio::select! {
                            biased;
                            d = &mut deliver => break d,
                            m = consumer.recv() => match m {
                                Ok(m) => {
                                    let r = raw(&m);
                                    ahead.bytes += r.size();
                                    ahead.records.push(r);
                                }
                                Err(e) => tracing::warn!(query_id, error = %e, "consumer error"),
                            },
                        }
                    }
                };
                let took = started.elapsed();
                tracing::debug!(
                    query_id,
                    records = records.len(),
                    read_ahead = ahead.records.len(),
                    read_ms = (process_started - read_started).as_millis() as u64,
                    process_ms = (started - process_started).as_millis() as u64,
                    deliver_ms = took.as_millis() as u64,
                    "batch written"
                );
                batch_limit = if delivered.is_err() || took > SLOW_DELIVERY {
                    (batch_limit / 2).max(MIN_BATCH)
                } else if took < FAST_DELIVERY && records.len() >= batch_limit {
                    (batch_limit * 2).min(MAX_BATCH)
                } else {
                    batch_limit
                };
                let committed = match delivered {
                    Ok(committed) => committed,
                    Err(e @ ExecError::Kafka { .. }) => {
                        // A broker outage, say: wait, then start again from the last
                        // commit with a new producer.
                        stats.kafka_failed(e.to_string());
                        tracing::warn!(query_id, error = %e, "writing a batch failed; retrying from the last commit in {backoff:?}");
                        if !pause(&mut shutdown, backoff).await {
                            break;
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        match retry(
                            query_id,
                            "creating a producer",
                            &stats,
                            &mut shutdown,
                            || new_producer(&config),
                        )
                        .await?
                        {
                            Some(fresh) => {
                                let old = std::mem::replace(producer, fresh);
                                tokio::task::spawn_blocking(move || drop(old));
                            }
                            None => break,
                        }
                        false
                    }
                    Err(e) => return Err(e),
                };
                if committed {
                    backoff = FIRST_BACKOFF;
                    stats.kafka_ok();
                }
                if revocations.load(Ordering::SeqCst) != generation || !committed {
                    // Partitions were reassigned during the batch: their positions went
                    // back to the committed offsets. Put them where this batch leaves
                    // them: after it when it was committed, at its start when not. What
                    // was read ahead is read again.
                    reposition(&consumer, topic, &ahead.records, true);
                    if committed {
                        reposition(&consumer, topic, &records, false);
                    } else {
                        reposition(&consumer, topic, &records, true);
                        match retry(
                            query_id,
                            "reading state back",
                            &stats,
                            &mut shutdown,
                            || start_pipeline(&config, &plan, &partitions, changelog.as_deref()),
                        )
                        .await?
                        {
                            Some(fresh) => {
                                pipeline = fresh;
                                seen_assignment = None;
                            }
                            None => break,
                        }
                    }
                } else if !ahead.records.is_empty() {
                    read_ahead = Some(ahead);
                }
                true
            }
            Output::Client(client) => send(client, batches, &stats, &mut shutdown).await,
        };
        if !go_on {
            break;
        }
    }
    tracing::info!(query_id, "query stopped");
    Ok(())
}

/// Records read while a batch was written: the start of the next batch, read since
/// revocation `generation`.
struct ReadAhead {
    generation: u64,
    records: Vec<RawRecord>,
    bytes: usize,
}

/// Wait `pause`; `false` when the query was stopped meanwhile.
async fn pause(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

/// Run `attempt` until it does not fail with a Kafka error (a broker outage, say),
/// waiting between attempts with backoff and reporting the failures in `stats`; `None`
/// when the query was stopped meanwhile. Other errors are returned.
async fn retry<T, F, Fut>(
    query_id: &str,
    what: &str,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(e @ ExecError::Kafka { .. }) => {
                stats.kafka_failed(e.to_string());
                tracing::warn!(query_id, error = %e, "{what} failed; retrying in {backoff:?}");
            }
            Err(e) => return Err(e),
        }
        if !pause(shutdown, backoff).await {
            return Ok(None);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// The source partitions the consumer holds, and a version that changes with them.
#[derive(Debug, Default)]
struct Assignment {
    version: u64,
    partitions: std::collections::HashSet<i32>,
}

/// Tell `pipeline` which partitions the consumer holds, when that changed since `seen`.
fn sync_assignment(
    pipeline: &mut Pipeline,
    assignment: &std::sync::Mutex<Assignment>,
    seen: &mut Option<u64>,
) {
    let a = assignment.lock().unwrap_or_else(|p| p.into_inner());
    if *seen != Some(a.version) {
        pipeline.set_assigned(&a.partitions, std::time::Instant::now());
        *seen = Some(a.version);
    }
}

/// Counts partition revocations, so a batch read or committed across a rebalance is
/// noticed; keeps the current assignment, so partitions held by another group member (a
/// dead one whose session has not expired yet, say) are not taken for idle; and reports
/// the consumer's Kafka errors (all brokers down, say) to the query's statistics.
pub(crate) struct RebalanceWatch {
    revocations: Arc<AtomicU64>,
    stats: Arc<QueryStats>,
    topic: String,
    assignment: Arc<std::sync::Mutex<Assignment>>,
}

impl RebalanceWatch {
    fn partitions<'a>(&'a self, list: &'a TopicPartitionList) -> impl Iterator<Item = i32> + 'a {
        list.elements()
            .into_iter()
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
    }
}

impl ClientContext for RebalanceWatch {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "consumer error");
        self.stats.kafka_failed(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for RebalanceWatch {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(list) = rebalance {
            self.revocations.fetch_add(1, Ordering::SeqCst);
            let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
            for p in self.partitions(list).collect::<Vec<_>>() {
                a.partitions.remove(&p);
            }
            a.version += 1;
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(list) = rebalance {
            let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
            a.partitions.extend(self.partitions(list));
            a.version += 1;
        }
    }
}

pub(crate) type QueryConsumer = StreamConsumer<RebalanceWatch>;

/// A fresh pipeline over `partitions`, its state read back from `changelog`.
async fn start_pipeline(
    config: &QueryConfig,
    plan: &StreamPlan,
    partitions: &[i32],
    changelog: Option<&str>,
) -> Result<Pipeline> {
    let mut pipeline = Pipeline::new(&config.query_id, plan, config.idle_timeout)?;
    let now = std::time::Instant::now();
    pipeline.assign(partitions.iter().copied(), now);
    if let Some(changelog) = changelog {
        let state = latest(read_topic(&config.bootstrap_servers, changelog).await?);
        pipeline.restore(&state, now)?;
        tracing::info!(query_id = %config.query_id, entries = state.len(), changelog, "state read back");
    }
    Ok(pipeline)
}

/// Per partition of `records`, the offsets of its first and last record in them.
fn offset_ranges(records: &[RawRecord]) -> BTreeMap<i32, (i64, i64)> {
    let mut ranges: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
    for r in records {
        let range = ranges.entry(r.partition).or_insert((r.offset, r.offset));
        range.0 = range.0.min(r.offset);
        range.1 = range.1.max(r.offset);
    }
    ranges
}

/// Per partition of `records`, the offset after its last record: what a commit records.
pub(crate) fn next_offsets(topic: &str, records: &[RawRecord]) -> Result<TopicPartitionList> {
    let mut list = TopicPartitionList::new();
    for (p, (_, last)) in offset_ranges(records) {
        list.add_partition_offset(topic, p, Offset::Offset(last + 1))
            .map_err(|e| ExecError::kafka("listing offsets", e))?;
    }
    Ok(list)
}

/// Move each partition of `records` back to its first record in them, to read them
/// again (`rewind`), or to just after its last one (not `rewind`). A partition no longer
/// assigned is skipped: its next owner starts from the committed offset.
fn reposition(consumer: &QueryConsumer, topic: &str, records: &[RawRecord], rewind: bool) {
    for (p, (first, last)) in offset_ranges(records) {
        let to = if rewind { first } else { last + 1 };
        if let Err(e) = consumer.seek(topic, p, Offset::Offset(to), Duration::from_secs(5)) {
            tracing::debug!(topic, partition = p, error = %e, "not repositioned");
        }
    }
}

/// Send a push query's `batches` to its client; `false` when the client has gone away or
/// the query was stopped while waiting for a slow client.
async fn send(
    client: &mpsc::Sender<Result<ChangeBatch>>,
    batches: Vec<ChangeBatch>,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    for batch in batches {
        let rows = batch.num_rows() as u64;
        tokio::select! {
            sent = client.send(Ok(batch)) => {
                if sent.is_err() {
                    return false;
                }
            }
            _ = shutdown.changed() => return false,
        }
        stats.add_out(rows);
    }
    !client.is_closed()
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        value: m.payload().map(<[u8]>::to_vec),
    }
}
