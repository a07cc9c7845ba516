//! A query's Kafka consumer: its settings, the context that watches its rebalances, and
//! the offsets a batch commits.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{ExecError, Result};
use crate::kafka::client_config;
use crate::native::FetchQueue;
use crate::pipeline::Pipeline;
use crate::query_runner::QueryConfig;
use crate::record::RawRecord;
use crate::stats::QueryStats;

/// A query's consumer, subscribed to its source, with what its context keeps up to date.
pub(crate) struct Subscribed {
    pub(crate) consumer: Arc<QueryConsumer>,
    /// Where the source partitions' records go, once assigned.
    pub(crate) fetch: Arc<FetchQueue>,
    /// Partition revocations so far.
    pub(crate) revocations: Arc<AtomicU64>,
    /// The partitions it holds.
    pub(crate) assignment: Arc<Mutex<Assignment>>,
}

/// The consumer of the query `config` describes, subscribed to `topic`.
pub(crate) fn subscribe(
    config: &QueryConfig,
    topic: &str,
    stats: &Arc<QueryStats>,
) -> Result<Subscribed> {
    let revocations = Arc::new(AtomicU64::new(0));
    let assignment = Arc::new(Mutex::new(Assignment::default()));
    let mut consumer_config = client_config(&config.bootstrap_servers);
    consumer_config
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
            query_id: config.query_id.clone(),
            revocations: revocations.clone(),
            stats: stats.clone(),
            topic: topic.to_string(),
            assignment: assignment.clone(),
            fetch: OnceLock::new(),
        })
        .map(Arc::new)
        .map_err(|e| ExecError::kafka("creating the consumer", e))?;
    let fetch = FetchQueue::new(consumer.clone())
        .map(Arc::new)
        .ok_or_else(|| ExecError::internal("creating the consumer", "librdkafka made no queue"))?;
    // Before subscribing, so every assignment is forwarded.
    let _ = consumer.context().fetch.set(Arc::downgrade(&fetch));
    consumer
        .subscribe(&[topic])
        .map_err(|e| ExecError::kafka(format!("subscribing to {topic}"), e))?;
    Ok(Subscribed {
        consumer,
        fetch,
        revocations,
        assignment,
    })
}

/// The source partitions the consumer holds, and a version that changes with them.
#[derive(Debug, Default)]
pub(crate) struct Assignment {
    version: u64,
    partitions: std::collections::HashSet<i32>,
}

/// Tell `pipeline` which partitions the consumer holds, when that changed since `seen`.
pub(crate) fn sync_assignment(
    pipeline: &mut Pipeline,
    assignment: &Mutex<Assignment>,
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
/// dead one whose session has not expired yet, say) are not taken for idle; forwards
/// each assigned partition's records to the query's [`FetchQueue`] before they are
/// fetched; and reports the consumer's Kafka errors (all brokers down, say) to the
/// query's statistics.
pub(crate) struct RebalanceWatch {
    query_id: String,
    revocations: Arc<AtomicU64>,
    stats: Arc<QueryStats>,
    topic: String,
    assignment: Arc<Mutex<Assignment>>,
    /// Not a strong reference: the queue holds the consumer.
    fetch: OnceLock<Weak<FetchQueue>>,
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
        let query_id = self.query_id.as_str();
        tracing::warn!(query_id, error = %error, reason, "consumer error");
        self.stats.kafka_failed(format!("{error}: {reason}"));
    }
}

impl ConsumerContext for RebalanceWatch {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let (query_id, topic) = (self.query_id.as_str(), self.topic.as_str());
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<i32> = self.partitions(list).collect();
                tracing::info!(query_id, topic, ?partitions, "partitions assigned");
                // Only the reading thread polls the consumer (and so runs this), and it
                // holds the queue: this is not the last reference.
                if let Some(fetch) = self.fetch.get().and_then(Weak::upgrade) {
                    for p in partitions {
                        if !fetch.forward(topic, p) {
                            tracing::warn!(
                                topic,
                                partition = p,
                                "partition not forwarded; its records are polled one at a time"
                            );
                        }
                    }
                }
            }
            Rebalance::Revoke(list) => {
                let partitions: Vec<i32> = self.partitions(list).collect();
                tracing::info!(query_id, topic, ?partitions, "partitions revoked");
                self.revocations.fetch_add(1, Ordering::SeqCst);
                let mut a = self.assignment.lock().unwrap_or_else(|p| p.into_inner());
                for p in &partitions {
                    a.partitions.remove(p);
                }
                a.version += 1;
            }
            Rebalance::Error(e) => tracing::warn!(query_id, topic, error = %e, "rebalance failed"),
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

pub(crate) type QueryConsumer = BaseConsumer<RebalanceWatch>;

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
