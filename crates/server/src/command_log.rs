//! The command topic: the catalog as a log of the statements that changed it.
//!
//! Every statement that changes the catalog or the running queries (CREATE, CSAS, CTAS,
//! INSERT INTO, TERMINATE, DROP) is appended, once it has succeeded, to a one-partition
//! topic named after the service id, with its request properties and command sequence
//! number. A server starting with the same `--service-id` replays the log in order, so
//! its streams, tables and persistent queries come back without anyone resubmitting them;
//! each query gets the same id, so the same consumer group, and resumes from its committed
//! offsets. This is ksqlDB's command topic.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use sluice_stream_exec::kafka::client_config;

use crate::error::ApiError;

/// One recorded statement.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Command {
    /// The statement's text, as sent.
    pub statement: String,
    /// The request's `streamsProperties`.
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Its `commandSequenceNumber`.
    pub sequence: u64,
}

/// The command topic of one service id.
pub struct CommandLog {
    topic: String,
    bootstrap_servers: String,
    producer: FutureProducer,
}

impl std::fmt::Debug for CommandLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandLog")
            .field("topic", &self.topic)
            .finish()
    }
}

impl CommandLog {
    /// The topic name for `service_id`.
    pub fn topic_name(service_id: &str) -> String {
        format!("_sluice-{service_id}command_topic")
    }

    /// The log of `service_id` on the cluster at `bootstrap_servers`.
    pub fn new(bootstrap_servers: &str, service_id: &str) -> Result<Self, ApiError> {
        let producer = client_config(bootstrap_servers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .create()
            .map_err(|e| ApiError::internal(format!("cannot create a Kafka producer: {e}")))?;
        Ok(Self {
            topic: Self::topic_name(service_id),
            bootstrap_servers: bootstrap_servers.to_string(),
            producer,
        })
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Append `command` and wait until the broker has it.
    pub async fn append(&self, command: &Command) -> Result<(), ApiError> {
        let value = serde_json::to_vec(command)
            .map_err(|e| ApiError::internal(format!("cannot encode a command: {e}")))?;
        let key = command.sequence.to_string();
        self.producer
            .send(
                FutureRecord::to(&self.topic).key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .map(|_| ())
            .map_err(|(e, _)| {
                ApiError::internal(format!(
                    "the statement ran but could not be recorded in {}: {e}",
                    self.topic
                ))
            })
    }

    /// Every command recorded so far, in order.
    pub async fn read_all(&self) -> Result<Vec<Command>, ApiError> {
        let (topic, bootstrap) = (self.topic.clone(), self.bootstrap_servers.clone());
        tokio::task::spawn_blocking(move || read(&topic, &bootstrap))
            .await
            .map_err(|e| ApiError::internal(format!("reading the command topic: {e}")))?
    }
}

fn read(topic: &str, bootstrap: &str) -> Result<Vec<Command>, ApiError> {
    let failed = |e: rdkafka::error::KafkaError| {
        ApiError::internal(format!("cannot read the command topic {topic}: {e}"))
    };
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", format!("{topic}_reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .map_err(failed)?;
    let (low, high) = consumer
        .fetch_watermarks(topic, 0, Duration::from_secs(10))
        .map_err(failed)?;
    if high <= low {
        return Ok(vec![]);
    }
    let mut assignment = TopicPartitionList::new();
    assignment
        .add_partition_offset(topic, 0, Offset::Offset(low))
        .map_err(failed)?;
    consumer.assign(&assignment).map_err(failed)?;
    let mut commands = vec![];
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut next = low;
    while next < high {
        if std::time::Instant::now() > deadline {
            return Err(ApiError::internal(format!(
                "reading the command topic {topic} took longer than 60 s"
            )));
        }
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => {
                next = m.offset() + 1;
                if let Some(payload) = m.payload() {
                    match serde_json::from_slice::<Command>(payload) {
                        Ok(c) => commands.push(c),
                        Err(e) => tracing::warn!(
                            topic,
                            offset = m.offset(),
                            error = %e,
                            "skipping a command that cannot be read"
                        ),
                    }
                }
            }
            Some(Err(e)) => return Err(failed(e)),
            None => {}
        }
    }
    Ok(commands)
}
