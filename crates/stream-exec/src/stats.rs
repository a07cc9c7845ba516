//! Per-query counters and the processing log: what a query read, wrote, and skipped.
//!
//! The processing log is the `sluice::processing_log` tracing target plus the last few
//! entries kept here, so DESCRIBE can show them without a log search.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How many processing-log entries a query keeps for DESCRIBE.
const KEPT_ENTRIES: usize = 20;

/// Why a record was skipped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SkipReason {
    /// The value could not be decoded (bad JSON, wrong type, missing time).
    Malformed,
    /// The record arrived after its window closed (end + grace).
    Late,
}

/// One processing-log entry.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ProcessingLogEntry {
    /// Why the record was skipped.
    pub reason: SkipReason,
    /// The record's topic.
    pub topic: String,
    /// The record's partition.
    pub partition: i32,
    /// The record's offset.
    pub offset: i64,
    /// What was wrong.
    pub message: String,
}

/// Counters of one running query; shared between the query task and the API.
#[derive(Debug, Default)]
pub struct QueryStats {
    records_in: AtomicU64,
    records_out: AtomicU64,
    malformed: AtomicU64,
    late: AtomicU64,
    state_groups: AtomicU64,
    recent: Mutex<VecDeque<ProcessingLogEntry>>,
    kafka_error: Mutex<Option<KafkaTrouble>>,
}

#[derive(Debug, Clone)]
struct KafkaTrouble {
    message: String,
    since: chrono::DateTime<chrono::Utc>,
}

/// A copy of a query's counters at one moment.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StatsSnapshot {
    /// Records read from the source topic.
    pub records_in: u64,
    /// Records written to the sink.
    pub records_out: u64,
    /// Records skipped because they could not be decoded.
    pub malformed_records: u64,
    /// Records dropped because their window had closed.
    pub late_records: u64,
    /// Groups (key × window) the query holds in state.
    pub state_groups: u64,
    /// The last processing-log entries, oldest first.
    pub recent_errors: Vec<ProcessingLogEntry>,
    /// While Kafka fails the query (a broker outage, say), the last error and since
    /// when; `null` once the query has committed a batch again, or Kafka answers it.
    pub kafka_error: Option<String>,
}

impl QueryStats {
    /// Count `n` records read.
    pub fn add_in(&self, n: u64) {
        self.records_in.fetch_add(n, Ordering::Relaxed);
    }

    /// Count `n` records written.
    pub fn add_out(&self, n: u64) {
        self.records_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Set how many groups the query holds in state.
    pub fn set_state_groups(&self, n: u64) {
        self.state_groups.store(n, Ordering::Relaxed);
    }

    /// Kafka failed the query; it retries. Kept (with the time of the first failure)
    /// until [`QueryStats::kafka_ok`].
    pub fn kafka_failed(&self, message: String) {
        let mut trouble = self.kafka_error.lock().unwrap_or_else(|p| p.into_inner());
        let since = trouble.as_ref().map_or_else(chrono::Utc::now, |t| t.since);
        *trouble = Some(KafkaTrouble { message, since });
    }

    /// Whether Kafka is failing the query now.
    pub fn kafka_failing(&self) -> bool {
        self.kafka_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Kafka works for the query again.
    pub fn kafka_ok(&self) {
        *self.kafka_error.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Record a skipped record: count it, log it, keep it for DESCRIBE.
    pub fn skip(&self, query_id: &str, entry: ProcessingLogEntry) {
        match entry.reason {
            SkipReason::Malformed => self.malformed.fetch_add(1, Ordering::Relaxed),
            SkipReason::Late => self.late.fetch_add(1, Ordering::Relaxed),
        };
        tracing::warn!(
            target: "sluice::processing_log",
            query_id,
            topic = %entry.topic,
            partition = entry.partition,
            offset = entry.offset,
            reason = ?entry.reason,
            "record skipped: {}",
            entry.message
        );
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        if recent.len() == KEPT_ENTRIES {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The counters now.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records_in: self.records_in.load(Ordering::Relaxed),
            records_out: self.records_out.load(Ordering::Relaxed),
            malformed_records: self.malformed.load(Ordering::Relaxed),
            late_records: self.late.load(Ordering::Relaxed),
            state_groups: self.state_groups.load(Ordering::Relaxed),
            recent_errors: self
                .recent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .cloned()
                .collect(),
            kafka_error: self
                .kafka_error
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .as_ref()
                .map(|t| {
                    format!(
                        "{} (failing since {})",
                        t.message,
                        t.since.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
                    )
                }),
        }
    }
}
