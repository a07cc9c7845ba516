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

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use sluice_stream_exec::changelog::read_topic_each;
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

    /// Every command recorded so far, in order (read as a query's changelog is: to the
    /// topic's end as the reading starts, waiting for writes still in flight). A command
    /// that cannot be decoded is logged and skipped.
    pub async fn read_all(&self) -> Result<Vec<Command>, ApiError> {
        let topic = self.topic.clone();
        let each = move |commands: &mut Vec<Command>, key: &[u8], value: Option<&[u8]>| {
            let Some(value) = value else {
                return Ok(());
            };
            match serde_json::from_slice::<Command>(value) {
                Ok(c) => commands.push(c),
                Err(e) => tracing::warn!(
                    topic,
                    sequence = %String::from_utf8_lossy(key),
                    error = %e,
                    "skipping a command that cannot be read"
                ),
            }
            Ok(())
        };
        let (commands, _) = read_topic_each(&self.bootstrap_servers, &self.topic, (vec![], each))
            .await
            .map_err(|e| {
                ApiError::internal(format!("cannot read the command topic {}: {e}", self.topic))
            })?;
        Ok(commands)
    }
}
