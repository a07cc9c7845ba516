//! A persistent query's producer, and writing its batches: the results to the sink topic
//! and the state changes to the changelog, then the consumer offsets, in one Kafka
//! transaction (exactly-once) or as produce, wait for the acknowledgements, commit
//! (at-least-once).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::TopicPartitionList;
use sluice_sql_planner::StreamPlan;
use tokio::sync::oneshot;

use crate::consumer::{next_offsets, QueryConsumer};
use crate::error::{ExecError, Result};
use crate::json_encoder::{encode_batch_into, EncodeBuffers, EncodedRows};
use crate::kafka::client_config;
use crate::native::{KeyValue, ProduceTopic};
use crate::operator::ChangeBatch;
use crate::query_runner::{QueryConfig, SLOW_ACKS, TRANSACTION_TIMEOUT};
use crate::record::RawRecord;
use crate::state::StateChange;
use crate::stats::QueryStats;

/// A persistent query's producer. Its records carry the [`Acks`] of their batch, so a
/// batch is one counter, not a future per record.
pub(crate) type QueryProducer = ThreadedProducer<AckContext>;

/// Hands each delivery report to the [`Acks`] of its record's batch.
pub(crate) struct AckContext;

impl ClientContext for AckContext {}

impl ProducerContext for AckContext {
    type DeliveryOpaque = Arc<Acks>;

    fn delivery(&self, result: &DeliveryResult<'_>, acks: Arc<Acks>) {
        acks.settle(result.as_ref().err().map(|(e, _)| e.clone()));
    }
}

/// The acknowledgements a batch waits for. The count starts at one, the writer's own,
/// which it gives up once every record is queued; the report that brings it to zero
/// says the batch is done.
pub(crate) struct Acks {
    left: AtomicUsize,
    failed: Mutex<Option<KafkaError>>,
    done: Mutex<Option<oneshot::Sender<()>>>,
}

impl Acks {
    fn new() -> (Arc<Self>, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let acks = Arc::new(Self {
            left: AtomicUsize::new(1),
            failed: Mutex::new(None),
            done: Mutex::new(Some(tx)),
        });
        (acks, rx)
    }

    fn settle(&self, error: Option<KafkaError>) {
        if let Some(e) = error {
            self.failed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(e);
        }
        if self.left.fetch_sub(1, Ordering::AcqRel) == 1 {
            if let Some(done) = self.done.lock().unwrap_or_else(|p| p.into_inner()).take() {
                let _ = done.send(());
            }
        }
    }

    fn error(&self) -> Option<KafkaError> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Spread keyed records as Kafka's Java producer does (murmur2 of the key bytes), so a
/// topic Sluice writes is partitioned like one ksqlDB, Kafka Streams or Flink writes, and
/// joins with them stay co-partitioned; librdkafka's default hashes with CRC32. Records
/// without a key go to a random partition each, rather than librdkafka's sticky
/// partition, which looks the partition up and reads the clock per record (6 % of a
/// stateless query's CPU).
pub fn use_java_partitioner(config: &mut ClientConfig) -> &mut ClientConfig {
    config
        .set("partitioner", "murmur2_random")
        .set("sticky.partitioning.linger.ms", "0")
}

/// How long librdkafka tries to deliver a record before it reports it failed
/// (`message.timeout.ms`).
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a batch waits for the delivery reports of its records before it is given up
/// as failed (then processed again from the last commit, with a new producer). Every
/// record should be reported within [`MESSAGE_TIMEOUT`]; this bounds the wait should
/// librdkafka hold a report back, as after a broker outage with a request in flight.
const ACK_DEADLINE: Duration = Duration::from_secs(MESSAGE_TIMEOUT.as_secs() + 15);

/// The configuration of a persistent query's producer; transactional when it has a
/// `transactional_id` (exactly-once).
///
/// Public for the `throughput` benchmark, whose raw pipe writes as a query does.
pub fn producer_config(bootstrap_servers: &str, transactional_id: Option<&str>) -> ClientConfig {
    let mut config = client_config(bootstrap_servers);
    config
        .set("linger.ms", "5")
        // A batch's result and changelog records (over 100,000 for a HOP query) are
        // queued at once; with the default (100,000) the writer waited for room.
        .set("queue.buffering.max.messages", "1000000")
        .set("acks", "all")
        // A broker outage fails a batch within this time (then it is retried), well
        // inside the transaction timeout.
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        );
    use_java_partitioner(&mut config);
    if let Some(id) = transactional_id {
        config
            .set("transactional.id", id)
            .set("transaction.timeout.ms", "60000");
    }
    config
}

/// The producer of a persistent query, its transactions not started yet (see
/// [`start_producer`]). Exactly-once: transactional, with the query's consumer group as
/// `transactional.id`.
pub(crate) fn create_producer(config: &QueryConfig) -> Result<QueryProducer> {
    let transactional_id = config.exactly_once.then_some(config.group_id.as_str());
    producer_config(&config.bootstrap_servers, transactional_id)
        .create_with_context(AckContext)
        .map_err(|e| ExecError::kafka("creating the producer", e))
}

/// Start the transactions of `producer` (exactly-once): this fences the producer it
/// replaces (of a run that died, or of this run before a Kafka failure) and completes or
/// aborts that one's open transaction, so it comes before the query's state is read back.
pub(crate) async fn start_producer(config: &QueryConfig, producer: &QueryProducer) -> Result<()> {
    if config.exactly_once {
        transaction(producer, "starting transactions", |p| {
            p.init_transactions(TRANSACTION_TIMEOUT)
        })
        .await?;
    }
    Ok(())
}

/// A persistent query's producer, started.
pub(crate) async fn new_producer(config: &QueryConfig) -> Result<QueryProducer> {
    let producer = create_producer(config)?;
    start_producer(config, &producer).await?;
    Ok(producer)
}

/// While the producer's queue is full, how long to wait before queueing again.
const QUEUE_FULL_WAIT: Duration = Duration::from_millis(1);

/// What writing a persistent query's batches needs; cheap to clone, so a batch can be
/// written on a task of its own while the next one is processed.
#[derive(Clone)]
pub(crate) struct Delivery {
    pub(crate) config: Arc<QueryConfig>,
    pub(crate) plan: Arc<StreamPlan>,
    pub(crate) changelog: Option<Arc<str>>,
    pub(crate) stats: Arc<QueryStats>,
    pub(crate) consumer: Arc<QueryConsumer>,
    /// The last batch's encoding buffers, for the next batch's.
    pub(crate) encode_buffers: Arc<Mutex<EncodeBuffers>>,
}

/// One batch to write: its results, its state changes, and the consumer offsets after
/// its records.
pub(crate) struct Outgoing {
    pub(crate) batches: Vec<ChangeBatch>,
    pub(crate) changes: Vec<StateChange>,
    pub(crate) offsets: TopicPartitionList,
}

impl Outgoing {
    pub(crate) fn new(
        topic: &str,
        records: &[RawRecord],
        batches: Vec<ChangeBatch>,
        changes: Vec<StateChange>,
    ) -> Result<Self> {
        Ok(Self {
            batches,
            changes,
            offsets: next_offsets(topic, records)?,
        })
    }
}

impl Delivery {
    /// Write the results and state changes of `batch`, and move the consumer offsets
    /// past its records: in one transaction (exactly-once), or produce, wait for the
    /// acks, then commit (at-least-once). Then the table's materialization sees the rows.
    /// `false` when the transaction was aborted and the batch must be processed again.
    pub(crate) async fn deliver(&self, producer: &QueryProducer, batch: Outgoing) -> Result<bool> {
        let config = &*self.config;
        let consumer = &*self.consumer;
        let Outgoing {
            batches,
            changes,
            offsets,
        } = batch;
        let (batches, changes) = (&batches[..], &changes[..]);
        // For the debug log: when the records were all queued, and acknowledged.
        let started = std::time::Instant::now();
        let (queued, acked);
        let encoded = if config.exactly_once {
            transaction(producer, "beginning a transaction", |p| {
                p.begin_transaction()
            })
            .await?;
            tracing::debug!(query_id = %config.query_id, "transaction begun");
            let encoded = match self.produce(producer, batches, changes).await {
                Ok((encoded, queued_at)) => {
                    (queued, acked) = (queued_at - started, started.elapsed());
                    encoded
                }
                Err(e) => {
                    let _ = transaction(producer, "aborting a transaction", |p| {
                        p.abort_transaction(TRANSACTION_TIMEOUT)
                    })
                    .await;
                    return Err(e);
                }
            };
            let group = consumer.group_metadata().ok_or_else(|| {
                ExecError::internal("query loop", "the consumer has no group metadata")
            })?;
            let committed = transaction(producer, "committing a transaction", move |p| {
                if offsets.count() > 0 {
                    p.send_offsets_to_transaction(&offsets, &group, TRANSACTION_TIMEOUT)?;
                }
                p.commit_transaction(TRANSACTION_TIMEOUT)
            })
            .await;
            match committed {
                Ok(()) => {}
                Err(ExecError::Kafka {
                    source: KafkaError::Transaction(e),
                    ..
                }) if e.txn_requires_abort() => {
                    tracing::warn!(query_id = %config.query_id, error = %e, "transaction aborted; the batch is processed again");
                    transaction(producer, "aborting a transaction", |p| {
                        p.abort_transaction(TRANSACTION_TIMEOUT)
                    })
                    .await?;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            }
            encoded
        } else {
            let (encoded, queued_at) = self.produce(producer, batches, changes).await?;
            (queued, acked) = (queued_at - started, started.elapsed());
            if offsets.count() > 0 {
                if let Err(e) = consumer.commit(&offsets, CommitMode::Async) {
                    tracing::warn!(query_id = %config.query_id, error = %e, "offset commit failed; records may be processed again");
                }
            }
            encoded
        };
        let before_table = std::time::Instant::now();
        materialize(config, batches, &encoded)?;
        let mut spare = self
            .encode_buffers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        encoded.into_iter().for_each(|rows| spare.give_back(rows));
        drop(spare);
        tracing::debug!(
            query_id = %config.query_id,
            rows = batches.iter().map(ChangeBatch::num_rows).sum::<usize>(),
            state_changes = changes.len(),
            queued_ms = queued.as_millis() as u64,
            acked_ms = acked.as_millis() as u64,
            table_ms = before_table.elapsed().as_millis() as u64,
            done_ms = started.elapsed().as_millis() as u64,
            "batch delivered"
        );
        Ok(true)
    }

    /// Write `batches` to the sink and `changes` to the changelog, and wait until the
    /// broker has them all. Returns the records written for `batches`, one per batch,
    /// and when the last record was queued.
    async fn produce(
        &self,
        producer: &QueryProducer,
        batches: &[ChangeBatch],
        changes: &[StateChange],
    ) -> Result<(Vec<EncodedRows>, std::time::Instant)> {
        let sink = self.config.sink_topic.as_str();
        let (acks, done) = Acks::new();
        let mut produced = 0u64;
        let mut encoded = Vec::with_capacity(batches.len());
        for batch in batches {
            let rows = {
                let mut spare = self
                    .encode_buffers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                encode_batch_into(batch, &self.plan.key_columns, &mut spare)?
            };
            let records = (0..rows.len()).map(|i| (rows.key(i), rows.value(i)));
            produced += queue_records(producer, &acks, sink, None, records).await?;
            encoded.push(rows);
        }
        if let Some(changelog) = self.changelog.as_deref() {
            // A changelog has one partition (see `changelog::ensure_changelog`).
            let records = changes
                .iter()
                .map(|c| (Some(&c.key[..]), c.value.as_deref()));
            queue_records(producer, &acks, changelog, Some(0), records).await?;
        }
        // Every record is queued: give up the writer's count.
        acks.settle(None);
        let queued = std::time::Instant::now();
        tracing::debug!(query_id = %self.config.query_id, records = produced, "records queued");
        tokio::pin!(done);
        let finished = tokio::select! {
            d = &mut done => d,
            _ = tokio::time::sleep(SLOW_ACKS) => {
                // Still waiting: the broker may be gone. Say so while waiting on.
                self.stats.kafka_failed(format!(
                    "no acknowledgement from Kafka for {} s while producing to {sink}",
                    SLOW_ACKS.as_secs()
                ));
                match tokio::time::timeout_at((queued + ACK_DEADLINE).into(), &mut done).await {
                    Ok(d) => d,
                    Err(_) => return Err(self.given_up(sink, &acks)),
                }
            }
        };
        if finished.is_err() {
            return Err(ExecError::kafka(
                format!("producing to {sink}"),
                KafkaError::Canceled,
            ));
        }
        if let Some(e) = acks.error() {
            return Err(ExecError::kafka(format!("producing to {sink}"), e));
        }
        self.stats.add_out(produced);
        Ok((encoded, queued))
    }

    /// The error for a batch whose records were not all reported within [`ACK_DEADLINE`].
    fn given_up(&self, sink: &str, acks: &Acks) -> ExecError {
        // The writer's own count is given up already: what is left is records.
        let unreported = acks.left.load(Ordering::Acquire);
        tracing::warn!(
            query_id = %self.config.query_id,
            unreported,
            "no delivery report for {unreported} records within {} s; the batch is given up",
            ACK_DEADLINE.as_secs()
        );
        ExecError::kafka(
            format!("producing to {sink}"),
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
        )
    }
}

/// Records queued per `rd_kafka_produce_batch` call.
const QUEUE_CHUNK: usize = 4096;

/// Queue `records` (key, value) for `topic` in their order (to `partition`, else where
/// the partitioner puts each key), each carrying `acks` to its delivery report; while the
/// producer's queue is full, wait for room. Returns how many were queued.
async fn queue_records<'r>(
    producer: &QueryProducer,
    acks: &Arc<Acks>,
    topic: &str,
    partition: Option<i32>,
    mut records: impl Iterator<Item = KeyValue<'r>>,
) -> Result<u64> {
    let handle = ProduceTopic::new(producer, topic).ok_or_else(|| {
        ExecError::kafka(
            format!("producing to {topic}"),
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidTopic),
        )
    })?;
    let mut chunk = Vec::with_capacity(QUEUE_CHUNK);
    let mut queued = 0u64;
    loop {
        chunk.clear();
        chunk.extend(records.by_ref().take(QUEUE_CHUNK));
        if chunk.is_empty() {
            return Ok(queued);
        }
        let mut from = 0;
        while from < chunk.len() {
            let rest = &chunk[from..];
            // Counted before they are queued, so a quick report cannot end the batch.
            acks.left.fetch_add(rest.len(), Ordering::AcqRel);
            let done = handle.queue(partition, rest, || acks.clone());
            // Those not queued will not be reported.
            acks.left
                .fetch_sub(rest.len() - done.queued, Ordering::AcqRel);
            queued += done.queued as u64;
            match done.failed {
                None => from = chunk.len(),
                Some((i, RDKafkaErrorCode::QueueFull)) => {
                    from += i;
                    tokio::time::sleep(QUEUE_FULL_WAIT).await;
                }
                Some((_, code)) => {
                    return Err(ExecError::kafka(
                        format!("producing to {topic}"),
                        KafkaError::MessageProduction(code),
                    ))
                }
            }
        }
    }
}

/// How long a blocking transaction call of librdkafka may take before the batch is given
/// up (then processed again from the last commit, with a new producer). The calls that
/// take a timeout get [`TRANSACTION_TIMEOUT`]; `begin_transaction` takes none, and a
/// query was seen waiting on its delivery for minutes after a broker outage without its
/// delivery reports' deadline ever firing.
const TRANSACTION_CALL_DEADLINE: Duration = Duration::from_secs(TRANSACTION_TIMEOUT.as_secs() + 15);

/// Run a blocking transaction call of librdkafka off the async threads, for at most
/// [`TRANSACTION_CALL_DEADLINE`] (the call itself goes on, on its blocking thread, until
/// librdkafka returns).
pub(crate) async fn transaction(
    producer: &QueryProducer,
    context: &'static str,
    call: impl FnOnce(&QueryProducer) -> rdkafka::error::KafkaResult<()> + Send + 'static,
) -> Result<()> {
    let producer = producer.clone();
    let call = tokio::task::spawn_blocking(move || call(&producer));
    match tokio::time::timeout(TRANSACTION_CALL_DEADLINE, call).await {
        Ok(done) => done
            .map_err(|_| ExecError::kafka(context, KafkaError::Canceled))?
            .map_err(|e| ExecError::kafka(context, e)),
        Err(_) => {
            tracing::warn!(
                "{context}: no answer from librdkafka within {} s; the batch is given up",
                TRANSACTION_CALL_DEADLINE.as_secs()
            );
            Err(ExecError::kafka(
                context,
                KafkaError::MessageProduction(RDKafkaErrorCode::MessageTimedOut),
            ))
        }
    }
}

/// Apply written `batches`, whose records were `encoded`, to the table's
/// materialization, if it has one.
fn materialize(
    config: &QueryConfig,
    batches: &[ChangeBatch],
    encoded: &[EncodedRows],
) -> Result<()> {
    if let Some(table) = &config.materialized {
        for (batch, records) in batches.iter().zip(encoded) {
            table.apply_encoded(batch, records)?;
        }
    }
    Ok(())
}
