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
    /// The default processing guarantee of persistent queries.
    pub processing_guarantee: ProcessingGuarantee,
}

/// How persistent queries write their results (`processing.guarantee`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessingGuarantee {
    /// Results and consumer offsets in one Kafka transaction per batch.
    ExactlyOnceV2,
    /// Results acknowledged, then offsets committed: nothing lost, repeats possible.
    AtLeastOnce,
}

impl ProcessingGuarantee {
    /// From ksqlDB's spelling: `exactly_once_v2` (or `exactly_once`) or `at_least_once`.
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "exactly_once_v2" | "exactly_once" => Some(Self::ExactlyOnceV2),
            "at_least_once" => Some(Self::AtLeastOnce),
            _ => None,
        }
    }

    /// ksqlDB's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ExactlyOnceV2 => "exactly_once_v2",
            Self::AtLeastOnce => "at_least_once",
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: None,
            state_dir: PathBuf::from("sluice-state"),
            service_id: "default_".to_string(),
            idle_timeout: Some(Duration::from_secs(10)),
            max_push_queries: 100,
            processing_guarantee: ProcessingGuarantee::ExactlyOnceV2,
        }
    }
}
