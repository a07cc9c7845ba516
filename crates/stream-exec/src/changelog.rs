//! The topics a persistent query reads back when it starts: its state changelog (see
//! [`crate::state`]) and, for a table, its own result topic, which holds the rows pull
//! queries see.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{ExecError, Result};

/// How long reading a topic back may take before it counts as failed (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The changelog topic of the query whose consumer group is `group_id`.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}-changelog")
}

/// Create `topic` as a compacted, one-partition changelog, unless it exists.
pub async fn ensure_changelog(bootstrap_servers: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| ExecError::kafka("creating an admin client", e))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .map_err(|e| ExecError::kafka(format!("creating the changelog {topic}"), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(ExecError::kafka(
                    format!("creating the changelog {topic}"),
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// One record read back: its key and value (`None`: a tombstone).
pub type KeyedRecord = (Vec<u8>, Option<Vec<u8>>);

/// Every committed record of `topic`, from the beginning to its current end, in offset
/// order per partition (so in order per key). A topic that does not exist reads as empty.
pub async fn read_topic(bootstrap_servers: &str, topic: &str) -> Result<Vec<KeyedRecord>> {
    let bootstrap_servers = bootstrap_servers.to_string();
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || read_blocking(&bootstrap_servers, &topic))
        .await
        .map_err(|_| ExecError::kafka("reading a topic back", KafkaError::Canceled))?
}

fn read_blocking(bootstrap_servers: &str, topic: &str) -> Result<Vec<KeyedRecord>> {
    let context = || format!("reading {topic} back");
    let consumer: BaseConsumer<Quiet> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap_servers)
        .set("group.id", "sluice-restore")
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_committed")
        .set("allow.auto.create.topics", "false")
        .create_with_context(Quiet)
        .map_err(|e| ExecError::kafka(context(), e))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(30))
        .map_err(|e| ExecError::kafka(context(), e))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Ok(vec![]);
    }
    let mut assignment = TopicPartitionList::new();
    for p in &partitions {
        assignment
            .add_partition_offset(topic, *p, Offset::Beginning)
            .map_err(|e| ExecError::kafka(context(), e))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| ExecError::kafka(context(), e))?;
    let mut records = vec![];
    let mut at_end: HashSet<i32> = HashSet::new();
    let deadline = Instant::now() + READ_TIMEOUT;
    // The end of a partition (after the last committed record, past transaction markers)
    // is reported as a PartitionEOF event.
    while at_end.len() < partitions.len() {
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => records.push((
                m.key().map(<[u8]>::to_vec).unwrap_or_default(),
                m.payload().map(<[u8]>::to_vec),
            )),
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            // The caller retries (a broker outage, say) and reports it.
            Some(Err(e)) => return Err(ExecError::kafka(context(), e)),
            None => {}
        }
        if Instant::now() > deadline {
            return Err(ExecError::kafka(
                context(),
                KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
            ));
        }
    }
    Ok(records)
}

/// A client context that does not log the end of a partition as an error: reaching it
/// is the point.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::debug!(error = %error, reason, "reading back");
        }
    }
}

impl ConsumerContext for Quiet {}

/// The latest value of each key of `records`; a tombstone removes its key.
pub fn latest(records: Vec<KeyedRecord>) -> HashMap<Vec<u8>, Vec<u8>> {
    let mut out = HashMap::new();
    for (key, value) in records {
        match value {
            Some(v) => out.insert(key, v),
            None => out.remove(&key),
        };
    }
    out
}
