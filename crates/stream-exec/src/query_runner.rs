//! The Kafka loop of one query: consume a batch of records, run them through the
//! [`Pipeline`], then hand the results on. A persistent query produces them to its sink
//! topic, waits for the broker to acknowledge them, then commits the consumer offsets
//! (at-least-once). A push query sends them to its client and commits nothing.

use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use sluice_sql_planner::StreamPlan;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout_at, Instant};

use crate::error::{ExecError, Result};
use crate::json_encoder::encode_rows;
use crate::materialized::MaterializedTable;
use crate::operator::ChangeBatch;
use crate::pipeline::Pipeline;
use crate::record::RawRecord;
use crate::stats::QueryStats;

/// Most records processed as one batch.
const MAX_BATCH: usize = 4096;
/// How long a batch waits for more records after its first one.
const BATCH_WAIT: Duration = Duration::from_millis(20);
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
}

/// How long a transaction call may take.
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a running query's results go.
enum Output {
    /// A persistent query: the sink topic, then a commit of the consumer offsets.
    Topic(FutureProducer),
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
    shutdown: watch::Receiver<bool>,
) -> Result<()> {
    let mut producer_config = ClientConfig::new();
    producer_config
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("linger.ms", "5")
        .set("acks", "all");
    if config.exactly_once {
        // The same id after a restart fences the producer of the run that died.
        producer_config
            .set("transactional.id", &config.group_id)
            .set("transaction.timeout.ms", "60000");
    }
    let producer: FutureProducer = producer_config
        .create()
        .map_err(|e| ExecError::kafka("creating the producer", e))?;
    if config.exactly_once {
        transaction(&producer, "starting transactions", |p| {
            p.init_transactions(TRANSACTION_TIMEOUT)
        })
        .await?;
    }
    run(config, plan, stats, shutdown, Output::Topic(producer)).await
}

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
    output: Output,
) -> Result<()> {
    let query_id = config.query_id.as_str();
    let mut pipeline = Pipeline::new(query_id, &plan, config.idle_timeout)?;
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &config.bootstrap_servers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", &config.auto_offset_reset)
        .set("session.timeout.ms", "10000")
        .set("isolation.level", "read_committed")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .create()
        .map_err(|e| ExecError::kafka("creating the consumer", e))?;
    consumer
        .subscribe(&[&plan.source.topic])
        .map_err(|e| ExecError::kafka(format!("subscribing to {}", plan.source.topic), e))?;
    match consumer.fetch_metadata(Some(&plan.source.topic), Duration::from_secs(10)) {
        Ok(metadata) => {
            let partitions = metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()));
            pipeline.assign(partitions, std::time::Instant::now());
        }
        Err(e) => {
            tracing::warn!(query_id, error = %e, "no partition list; the watermark follows the partitions that deliver")
        }
    }
    tracing::info!(query_id, topic = %plan.source.topic, sink = %config.sink_topic, "query started");
    loop {
        let first = tokio::select! {
            _ = shutdown.changed() => break,
            m = consumer.recv() => Some(m),
            _ = tokio::time::sleep(TICK) => None,
        };
        let mut records = Vec::with_capacity(256);
        match first {
            Some(Ok(m)) => records.push(raw(&m)),
            Some(Err(e)) => {
                tracing::warn!(query_id, error = %e, "consumer error; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            None => {
                let batches = pipeline.tick(std::time::Instant::now(), &stats)?;
                let go_on = match &output {
                    Output::Topic(producer) => {
                        if !batches.is_empty() {
                            deliver(producer, &consumer, &config, &plan, &batches, &stats).await?;
                        }
                        true
                    }
                    Output::Client(client) => send(client, batches, &stats, &mut shutdown).await,
                };
                if !go_on {
                    break;
                }
                continue;
            }
        }
        let deadline = Instant::now() + BATCH_WAIT;
        while records.len() < MAX_BATCH {
            match timeout_at(deadline, consumer.recv()).await {
                Ok(Ok(m)) => records.push(raw(&m)),
                Ok(Err(e)) => tracing::warn!(query_id, error = %e, "consumer error"),
                Err(_) => break,
            }
        }
        let batches = pipeline.process(&records, &stats)?;
        let go_on = match &output {
            Output::Topic(producer) => {
                deliver(producer, &consumer, &config, &plan, &batches, &stats).await?;
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

/// Write a persistent query's `batches` and move its consumer offsets past what was read:
/// in one transaction (exactly-once), or produce, wait for the acks, then commit
/// (at-least-once). Then the table's materialization sees the rows.
async fn deliver(
    producer: &FutureProducer,
    consumer: &StreamConsumer,
    config: &QueryConfig,
    plan: &StreamPlan,
    batches: &[ChangeBatch],
    stats: &QueryStats,
) -> Result<()> {
    if config.exactly_once {
        transaction(producer, "beginning a transaction", |p| {
            p.begin_transaction()
        })
        .await?;
        if let Err(e) = produce(producer, config, plan, batches, stats).await {
            let _ = transaction(producer, "aborting a transaction", |p| {
                p.abort_transaction(TRANSACTION_TIMEOUT)
            })
            .await;
            return Err(e);
        }
        let offsets = consumer
            .position()
            .map_err(|e| ExecError::kafka("reading the consumer position", e))?;
        let group = consumer.group_metadata().ok_or_else(|| {
            ExecError::internal("query loop", "the consumer has no group metadata")
        })?;
        transaction(producer, "committing a transaction", move |p| {
            p.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)?;
            p.commit_transaction(TRANSACTION_TIMEOUT)
        })
        .await?;
    } else {
        produce(producer, config, plan, batches, stats).await?;
        if let Err(e) = consumer.commit_consumer_state(CommitMode::Async) {
            tracing::warn!(query_id = %config.query_id, error = %e, "offset commit failed; records may be processed again");
        }
    }
    materialize(config, batches)
}

/// Run a blocking transaction call of librdkafka off the async threads.
async fn transaction(
    producer: &FutureProducer,
    context: &'static str,
    call: impl FnOnce(&FutureProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> Result<()> {
    let producer = producer.clone();
    tokio::task::spawn_blocking(move || call(&producer))
        .await
        .map_err(|_| ExecError::kafka(context, rdkafka::error::KafkaError::Canceled))?
        .map_err(|e| ExecError::kafka(context, e))
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

/// Apply written `batches` to the table's materialization, if it has one.
fn materialize(config: &QueryConfig, batches: &[ChangeBatch]) -> Result<()> {
    match &config.materialized {
        Some(table) if !batches.is_empty() => table.apply(batches),
        _ => Ok(()),
    }
}

/// Write `batches` to the sink and wait until the broker has them all.
async fn produce(
    producer: &FutureProducer,
    config: &QueryConfig,
    plan: &StreamPlan,
    batches: &[ChangeBatch],
    stats: &QueryStats,
) -> Result<()> {
    let mut deliveries = vec![];
    for batch in batches {
        for row in encode_rows(batch, &plan.key_columns)? {
            let mut record = FutureRecord::<[u8], [u8]>::to(&config.sink_topic);
            if let Some(v) = &row.value {
                record = record.payload(v);
            }
            if let Some(k) = &row.key {
                record = record.key(k);
            }
            let send = producer.send_result(record).map_err(|(e, _)| {
                ExecError::kafka(format!("producing to {}", config.sink_topic), e)
            })?;
            deliveries.push(send);
        }
    }
    let produced = deliveries.len() as u64;
    for delivery in join_all(deliveries).await {
        match delivery {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(ExecError::kafka(
                    format!("producing to {}", config.sink_topic),
                    e,
                ))
            }
            Err(_) => {
                return Err(ExecError::kafka(
                    format!("producing to {}", config.sink_topic),
                    rdkafka::error::KafkaError::Canceled,
                ))
            }
        }
    }
    stats.add_out(produced);
    Ok(())
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        value: m.payload().map(<[u8]>::to_vec),
    }
}
