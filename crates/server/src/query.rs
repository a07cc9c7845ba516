//! `PersistentQuery`: a running continuous query, its task and its counters.

use std::sync::{Arc, Mutex};

use sluice_stream_exec::QueryStats;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The state SHOW QUERIES reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryState {
    /// Processing records.
    Running,
    /// Stopped by an error it could not recover from.
    Error(String),
}

impl QueryState {
    /// `RUNNING` or `ERROR`, as ksqlDB.
    pub fn as_str(&self) -> &'static str {
        match self {
            QueryState::Running => "RUNNING",
            QueryState::Error(_) => "ERROR",
        }
    }
}

/// A persistent query (CSAS, CTAS or INSERT INTO).
#[derive(Debug)]
pub struct PersistentQuery {
    /// e.g. `CTAS_FRAUD_ALERTS_3`.
    pub id: String,
    /// The statement that started it.
    pub statement: String,
    /// The source it reads.
    pub source: String,
    /// The stream or table it writes.
    pub sink: String,
    /// The topic it writes.
    pub sink_topic: String,
    /// The plan, as EXPLAIN prints it.
    pub plan: String,
    /// Its counters.
    pub stats: Arc<QueryStats>,
    /// Its state.
    pub state: Arc<Mutex<QueryState>>,
    pub(crate) shutdown: watch::Sender<bool>,
    pub(crate) task: Option<JoinHandle<()>>,
}

impl PersistentQuery {
    /// The current state.
    pub fn state(&self) -> QueryState {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stop the query and wait for its task to end.
    pub async fn stop(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}
