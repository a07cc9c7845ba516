//! `ServerConfig`: what `sluice server` is started with.

use std::path::PathBuf;
use std::time::Duration;

/// Server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Kafka bootstrap servers; `None` runs the embedded, in-memory broker.
    pub bootstrap_servers: Option<String>,
    /// Where the server keeps local state.
    pub state_dir: PathBuf,
    /// Prefix of this server's consumer groups and internal topics (ksqlDB's
    /// `ksql.service.id`), so two services on one cluster stay apart.
    pub service_id: String,
    /// Default idle-partition timeout of queries: a source partition that delivers
    /// nothing for this long stops holding the watermark back. `None`: never.
    pub idle_timeout: Option<Duration>,
    /// How many push queries may run at once (ksqlDB's `ksql.max.push.queries`).
    pub max_push_queries: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            state_dir: PathBuf::from("sluice-state"),
            service_id: "default_".to_string(),
            idle_timeout: Some(Duration::from_secs(10)),
            max_push_queries: 100,
        }
    }
}
