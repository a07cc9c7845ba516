//! Push queries: `SELECT … FROM stream … EMIT CHANGES [LIMIT n];` streamed to one client.
//!
//! Each push query is a transient query with its own consumer group and no sink: the
//! executor's loop ([`run_push_query`]) sends its result batches through a channel to the
//! HTTP response. It stops when the client goes away (the response body is dropped), when
//! `LIMIT n` rows have been sent, or on `POST /close-query`. Offsets are never committed,
//! so each push query starts where `auto.offset.reset` says: `latest` unless asked.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::datatypes::SchemaRef;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};
use sluice_sql_planner::StreamPlan;
use sluice_stream_exec::kafka::client_config;
use sluice_stream_exec::operator::ChangeBatch;
use sluice_stream_exec::{run_push_query, ExecError, QueryConfig, QueryStats};
use tokio::sync::{mpsc, watch};

use crate::error::ApiError;

/// Result batches a push query may have in flight to a slow client.
const CHANNEL_BATCHES: usize = 16;

/// The running push queries of a server, and the cap on how many may run.
#[derive(Debug)]
pub struct PushQueries {
    running: Mutex<HashMap<String, watch::Sender<bool>>>,
    /// Set when the server shuts down: no new push query starts.
    closed: std::sync::atomic::AtomicBool,
    max: usize,
    next: AtomicU64,
}

/// A started push query: its id, columns and results. Dropping it stops the query.
#[derive(Debug)]
pub struct PushStream {
    /// The query id, for `/close-query`.
    pub query_id: String,
    /// Its result columns.
    pub schema: SchemaRef,
    /// At most this many rows are sent, then the response ends.
    pub limit: Option<u64>,
    /// Its result batches, as they are produced; an error ends them.
    pub results: mpsc::Receiver<Result<ChangeBatch, ExecError>>,
    _registration: Registration,
}

/// A started PRINT: its id, and the topic's records as text lines. Dropping it stops it.
#[derive(Debug)]
pub struct PrintStream {
    /// Its id, for `/close-query`.
    pub query_id: String,
    /// One line per record, as ksqlDB's PRINT writes them.
    pub lines: mpsc::Receiver<String>,
    _registration: Registration,
}

/// `rowtime: 2024/01/02 03:04:05.678 Z, key: …, value: …, partition: 0`, as ksqlDB prints
/// a record (`<null>` for a missing key or value).
fn print_line(m: &BorrowedMessage<'_>) -> String {
    let text = |b: Option<&[u8]>| {
        b.map_or_else(
            || "<null>".to_string(),
            |b| String::from_utf8_lossy(b).into_owned(),
        )
    };
    let rowtime = m
        .timestamp()
        .to_millis()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || "<none>".to_string(),
            |t| t.format("%Y/%m/%d %H:%M:%S%.3f Z").to_string(),
        );
    format!(
        "rowtime: {rowtime}, key: {}, value: {}, partition: {}",
        text(m.key()),
        text(m.payload()),
        m.partition()
    )
}

/// Removes a push query from the running set, and stops it, when dropped.
#[derive(Debug)]
struct Registration {
    query_id: String,
    registry: Arc<PushQueries>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.registry.close(&self.query_id);
    }
}

impl PushQueries {
    /// A registry allowing `max` push queries at once.
    pub fn new(max: usize) -> Self {
        Self {
            running: Mutex::new(HashMap::new()),
            closed: std::sync::atomic::AtomicBool::new(false),
            max,
            next: AtomicU64::new(1),
        }
    }

    /// How many push queries run now.
    pub fn len(&self) -> usize {
        self.running.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether none runs.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A slot for a new push query (or PRINT) named `prefix_<n>`, unless the server is
    /// shutting down or runs its maximum.
    fn reserve(
        self: &Arc<Self>,
        prefix: &str,
    ) -> Result<(String, watch::Receiver<bool>, Registration), ApiError> {
        let query_id = format!("{prefix}_{}", self.next.fetch_add(1, Ordering::Relaxed));
        let (shutdown, stop) = watch::channel(false);
        {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            if self.closed.load(Ordering::SeqCst) {
                return Err(ApiError {
                    status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    error_code: 50303,
                    ..ApiError::bad_request("the server is shutting down")
                });
            }
            if running.len() >= self.max {
                return Err(ApiError {
                    status: axum::http::StatusCode::TOO_MANY_REQUESTS,
                    error_code: 42900,
                    ..ApiError::bad_request(format!(
                        "the server runs its maximum of {} push queries; close one \
                         (POST /close-query) or try again later",
                        self.max
                    ))
                });
            }
            running.insert(query_id.clone(), shutdown);
        }
        let registration = Registration {
            query_id: query_id.clone(),
            registry: self.clone(),
        };
        Ok((query_id, stop, registration))
    }

    /// Start `plan` for one client. `config` needs no query id or group: they are made
    /// here.
    pub fn start(
        self: &Arc<Self>,
        mut config: QueryConfig,
        service_id: &str,
        plan: StreamPlan,
        limit: Option<u64>,
    ) -> Result<PushStream, ApiError> {
        let (query_id, stop, registration) = self.reserve("PUSH_QUERY")?;
        config.query_id = query_id.clone();
        config.group_id = format!("{service_id}transient_{query_id}");
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let schema = plan.output_schema.clone();
        let id = query_id.clone();
        tokio::spawn(async move {
            let stats = Arc::new(QueryStats::default());
            run_push_query(config, plan, stats, stop, tx).await;
            tracing::debug!(query_id = %id, "push query ended");
        });
        Ok(PushStream {
            query_id,
            schema,
            limit,
            results: rx,
            _registration: registration,
        })
    }

    /// Start `PRINT topic` for one client: the records of its `partitions` partitions (new
    /// ones, or all `from_beginning`) as text lines, up to `limit`. It counts as a push
    /// query (the cap, `/close-query`, shutdown).
    pub fn print(
        self: &Arc<Self>,
        bootstrap_servers: &str,
        service_id: &str,
        topic: &str,
        partitions: i32,
        from_beginning: bool,
        limit: Option<u64>,
    ) -> Result<PrintStream, ApiError> {
        let (query_id, stop, registration) = self.reserve("PRINT")?;
        let (tx, rx) = mpsc::channel(256);
        let consumer: BaseConsumer = client_config(bootstrap_servers)
            .set("group.id", format!("{service_id}transient_{query_id}"))
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| ApiError::internal(format!("cannot read topic \"{topic}\": {e}")))?;
        let mut assignment = TopicPartitionList::new();
        let start = if from_beginning {
            Offset::Beginning
        } else {
            Offset::End
        };
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p, start)
                .map_err(|e| ApiError::internal(format!("cannot read topic \"{topic}\": {e}")))?;
        }
        consumer
            .assign(&assignment)
            .map_err(|e| ApiError::internal(format!("cannot read topic \"{topic}\": {e}")))?;
        tokio::task::spawn_blocking(move || {
            let mut sent = 0u64;
            while !*stop.borrow() && !tx.is_closed() && limit.is_none_or(|n| sent < n) {
                match consumer.poll(std::time::Duration::from_millis(200)) {
                    Some(Ok(m)) => {
                        if tx.blocking_send(print_line(&m)).is_err() {
                            break;
                        }
                        sent += 1;
                    }
                    Some(Err(e)) => tracing::debug!(error = %e, "PRINT: consumer error"),
                    None => {}
                }
            }
        });
        Ok(PrintStream {
            query_id,
            lines: rx,
            _registration: registration,
        })
    }

    /// Stop every push query, so their responses end, and start no new one (the server
    /// is shutting down).
    pub fn close_all(&self) {
        let running: Vec<_> = {
            let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
            self.closed.store(true, Ordering::SeqCst);
            running.drain().collect()
        };
        for (_, shutdown) in running {
            let _ = shutdown.send(true);
        }
    }

    /// Stop push query `query_id`; `false` when no such query runs.
    pub fn close(&self, query_id: &str) -> bool {
        let stopped = self
            .running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(query_id);
        match stopped {
            Some(shutdown) => {
                let _ = shutdown.send(true);
                true
            }
            None => false,
        }
    }
}
