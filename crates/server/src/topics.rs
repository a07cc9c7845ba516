//! `Topics`: creating, describing and deleting topics on the real cluster (Kafka's admin
//! API) or on the embedded broker (its own API, as the mock cluster ignores CreateTopics).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;
use sluice_stream_exec::kafka::client_config;
use sluice_stream_exec::EmbeddedBroker;

use crate::error::ApiError;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// Topic administration for one cluster.
#[derive(Clone)]
pub struct Topics {
    admin: Arc<AdminClient<DefaultClientContext>>,
    embedded: Option<Arc<EmbeddedBroker>>,
    bootstrap_servers: String,
}

impl std::fmt::Debug for Topics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Topics")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .finish()
    }
}

impl Topics {
    /// Administration of the cluster at `bootstrap_servers`; `embedded` when it is the
    /// in-process broker.
    pub fn new(
        bootstrap_servers: &str,
        embedded: Option<Arc<EmbeddedBroker>>,
    ) -> Result<Self, ApiError> {
        // The admin client runs on a producer handle, and a producer's metadata request
        // would create a missing topic with the broker's defaults (1 partition) before
        // Sluice creates it with the partitions asked for.
        let admin: AdminClient<DefaultClientContext> = client_config(bootstrap_servers)
            .set("allow.auto.create.topics", "false")
            .create()
            .map_err(|e| ApiError::internal(format!("cannot create a Kafka admin client: {e}")))?;
        Ok(Self {
            admin: Arc::new(admin),
            embedded,
            bootstrap_servers: bootstrap_servers.to_string(),
        })
    }

    /// The cluster's bootstrap servers.
    pub fn bootstrap_servers(&self) -> &str {
        &self.bootstrap_servers
    }

    /// The partition count of `topic`, or `None` if it does not exist.
    pub async fn partitions(&self, topic: &str) -> Result<Option<i32>, ApiError> {
        let admin = self.admin.clone();
        let name = topic.to_string();
        tokio::task::spawn_blocking(move || {
            let md = admin
                .inner()
                .fetch_metadata(Some(&name), METADATA_TIMEOUT)
                .map_err(|e| {
                    ApiError::internal(format!("cannot read metadata of topic \"{name}\": {e}"))
                })?;
            Ok(md
                .topics()
                .iter()
                .find(|t| t.name() == name && t.error().is_none() && !t.partitions().is_empty())
                .map(|t| t.partitions().len() as i32))
        })
        .await
        .map_err(|e| ApiError::internal(format!("metadata task failed: {e}")))?
    }

    /// Whether the cluster answers a metadata request.
    pub async fn healthy(&self) -> bool {
        let admin = self.admin.clone();
        tokio::task::spawn_blocking(move || {
            admin
                .inner()
                .fetch_metadata(None, Duration::from_secs(3))
                .is_ok()
        })
        .await
        .unwrap_or(false)
    }

    /// Create `topic` with `partitions` partitions; Ok when it already exists.
    pub async fn create(&self, topic: &str, partitions: i32) -> Result<(), ApiError> {
        self.create_with(topic, partitions, &[]).await
    }

    /// Create `topic` with `partitions` partitions and the topic configs `config` (the
    /// embedded broker ignores them); Ok, with its configs unchanged, when it already
    /// exists.
    pub async fn create_with(
        &self,
        topic: &str,
        partitions: i32,
        config: &[(&str, &str)],
    ) -> Result<(), ApiError> {
        if let Some(broker) = &self.embedded {
            return match broker.create_topic(topic, partitions) {
                Ok(()) => Ok(()),
                // The mock cluster answers "already exists" as a plain failure.
                Err(_) if self.partitions(topic).await?.is_some() => Ok(()),
                Err(e) => Err(ApiError::internal(e.to_string())),
            };
        }
        let new = config.iter().fold(
            NewTopic::new(topic, partitions, TopicReplication::Fixed(-1)),
            |new, (key, value)| new.set(key, value),
        );
        let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = self
            .admin
            .create_topics([&new], &opts)
            .await
            .map_err(|e| ApiError::internal(format!("cannot create topic \"{topic}\": {e}")))?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(ApiError::statement(format!(
                        "cannot create topic \"{name}\": {code}"
                    )))
                }
            }
        }
        // Creation is asynchronous in Kafka: wait until metadata shows the topic. A broker
        // just started on a busy machine took more than 5 s once (in CI, 2026-11-27).
        let deadline = tokio::time::Instant::now() + METADATA_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if self.partitions(topic).await?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(ApiError::internal(format!(
            "topic \"{topic}\" was created but does not appear in the cluster's metadata"
        )))
    }

    /// Delete `topic`.
    pub async fn delete(&self, topic: &str) -> Result<(), ApiError> {
        let opts = AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT));
        let results = self
            .admin
            .delete_topics(&[topic], &opts)
            .await
            .map_err(|e| ApiError::internal(format!("cannot delete topic \"{topic}\": {e}")))?;
        for r in results {
            if let Err((name, code)) = r {
                if code != RDKafkaErrorCode::UnknownTopicOrPartition {
                    return Err(ApiError::statement(format!(
                        "cannot delete topic \"{name}\": {code}"
                    )));
                }
            }
        }
        Ok(())
    }
}
