//! The Kafka loop of one query: consume a batch of records, run them through the
//! [`Pipeline`], then hand the results on. A persistent query produces them to its sink
//! topic, waits for the broker to acknowledge them, then commits the consumer offsets
//! (at-least-once). A push query sends them to its client and commits nothing.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use sluice_sql_planner::StreamPlan;
use tokio::sync::{mpsc, watch};
use tokio::time::{timeout_at, Instant};

use crate::changelog::{changelog_topic, Changelog};
use crate::consumer::{sync_assignment, Assignment, QueryConsumer, Subscribed};
use crate::delivery::{create_producer, new_producer, Delivery, Outgoing, QueryProducer};
pub use crate::delivery::{producer_config, use_java_partitioner};
use crate::error::{ExecError, Result};
use crate::frames::StateWriter;
use crate::materialized::MaterializedTable;
use crate::operator::ChangeBatch;
use crate::pipeline::Pipeline;
use crate::reader::{Polled, Reader};
use crate::record::RawRecord;
use crate::stats::QueryStats;

mod restore;
use restore::{restore_table, start_output, start_pipeline, subscribe_and_prepare};

/// A batch ends when the commit interval has passed since its first record, when it
/// holds [`MAX_BATCH_BYTES`] of input, or at the record limit, which adapts between
/// [`MIN_BATCH`] and [`MAX_BATCH`]: it starts at [`FIRST_BATCH`], doubles after a full
/// batch delivered within [`FAST_DELIVERY`], and halves after a delivery slower than
/// [`SLOW_DELIVERY`] or a failed one. A query with state behind its input (a backlog, a
/// restart: the reader hands over full chunks) does not stop at the commit interval, only
/// at the limits; caught up, nothing is waiting and its batches end on time. A stateless
/// query gains nothing from that (its output per event is the same) but memory, so it
/// stops at the commit interval.
///
/// Large batches spread the cost of a transaction over many records, and a windowed
/// query's state changes and `EMIT CHANGES` rows per changed group over more events: with
/// 100,000 keys, most groups change in every batch, so each batch writes about one
/// changelog record per group whatever its size. Going past the commit interval when
/// behind, with limits of 524,288 records and 64 MB rather than 262,144 and 32 MB, cut
/// the server's CPU per event over 6,000,000 events in `throughput` by about a quarter
/// for HOP ... EMIT FINAL (its rate rose by half) and a few percent for TUMBLE ... EMIT
/// CHANGES, left TUMBLE and SESSION ... EMIT FINAL as they were, and took 0.1–0.3 GB
/// more peak memory. Limits of 1M records and 128 MB did no better and took 0.1 GB more.
/// A slow sink (a throttled or struggling broker) gets small batches, which stay well
/// inside the producer's delivery timeout.
const MIN_BATCH: usize = 1024;
const FIRST_BATCH: usize = 8192;
const MAX_BATCH: usize = 524_288;
const MAX_BATCH_BYTES: usize = 64 << 20;
const FAST_DELIVERY: Duration = Duration::from_millis(500);
const SLOW_DELIVERY: Duration = Duration::from_secs(3);
/// How long a batch behind its input waits for the next chunk past the commit interval.
const BEHIND_WAIT: Duration = Duration::from_millis(20);
/// How long a push query's batch waits for more records after its first one.
pub const PUSH_BATCH_WAIT: Duration = Duration::from_millis(20);
/// The default commit interval under exactly-once (Kafka Streams' default for it).
pub const EXACTLY_ONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(100);
/// The default commit interval under at-least-once: results go out with little delay.
pub const AT_LEAST_ONCE_COMMIT_INTERVAL: Duration = Duration::from_millis(20);
/// How often a query with no new records checks the clock for idle partitions.
const TICK: Duration = Duration::from_millis(250);

/// What a persistent query needs besides its plan.
#[derive(Debug, Clone)]
pub struct QueryConfig {
    /// The query id, e.g. `CTAS_FRAUD_1`.
    pub query_id: String,
    /// Kafka bootstrap servers.
    pub bootstrap_servers: String,
    /// The consumer group of this query (service id + query id).
    pub group_id: String,
    /// Where results go.
    pub sink_topic: String,
    /// `earliest` or `latest`: where to start when the group has no committed offset.
    pub auto_offset_reset: String,
    /// A source partition that delivers nothing for this long stops holding the
    /// watermark back; `None` never.
    pub idle_timeout: Option<Duration>,
    /// For a table: where its current rows are kept for pull queries, updated once the
    /// broker has acknowledged them.
    pub materialized: Option<Arc<MaterializedTable>>,
    /// Exactly-once: each batch's results and consumer offsets are written in one Kafka
    /// transaction (`transactional.id` = the consumer group). Otherwise at-least-once.
    pub exactly_once: bool,
    /// `commit.interval.ms`: how long a batch collects records after its first one before
    /// its results, state changes and offsets are written and committed.
    pub commit_interval: Duration,
}

/// How long a transaction call may take.
pub(crate) const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a running query's results go.
enum Output {
    /// A persistent query: the sink topic, then a commit of the consumer offsets.
    Topic(QueryProducer),
    /// A push query: the client's channel; no offsets are committed.
    Client(mpsc::Sender<Result<ChangeBatch>>),
}

/// Run `plan` as a persistent query, writing to `config.sink_topic`, until `shutdown`
/// turns true. Returns an error when Kafka fails in a way the query cannot recover from;
/// bad records never stop it.
pub async fn run_query(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    // Its transactions start in `run`, alongside the query's other first requests.
    let producer = retry(
        &config.query_id,
        "creating a producer",
        &stats,
        &mut shutdown,
        || std::future::ready(create_producer(&config)),
    )
    .await?;
    let table = config.materialized.clone();
    let ran = match producer {
        Some(producer) => run(config, plan, stats, shutdown, Output::Topic(producer)).await,
        None => Ok(()),
    };
    // Pull queries are not left waiting for rows that will not come.
    if let Some(table) = table.filter(|t| t.is_restoring()) {
        let why = match &ran {
            Ok(()) => "its query stopped before they were read back".to_string(),
            Err(e) => format!("its query failed: {e}"),
        };
        table.abandon_restore(why);
    }
    ran
}

/// The first wait before retrying after a Kafka failure; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Waiting longer than this for the broker to acknowledge a batch is reported as a
/// Kafka failure in the query's statistics (it keeps waiting).
pub(crate) const SLOW_ACKS: Duration = Duration::from_secs(5);
/// While Kafka is failing a query that has nothing to commit, how often it asks Kafka
/// whether it is back.
const PROBE_EVERY: Duration = Duration::from_secs(2);

/// Run `plan` as a push query: its result batches go to `client` until `shutdown` turns
/// true or the client goes away (the receiver is dropped). Offsets are never committed.
/// An error that stops the query is sent to the client as the last item.
pub async fn run_push_query(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    shutdown: watch::Receiver<bool>,
    client: mpsc::Sender<Result<ChangeBatch>>,
) {
    let query_id = config.query_id.clone();
    if let Err(e) = run(
        config,
        plan,
        stats,
        shutdown,
        Output::Client(client.clone()),
    )
    .await
    {
        tracing::warn!(query_id, error = %e, "push query failed");
        let _ = client.send(Err(e)).await;
    }
}

async fn run(
    config: QueryConfig,
    plan: StreamPlan,
    stats: Arc<QueryStats>,
    mut shutdown: watch::Receiver<bool>,
    mut output: Output,
) -> Result<()> {
    let (config, plan) = (Arc::new(config), Arc::new(plan));
    let query_id = config.query_id.as_str();
    let topic = plan.source.topic.as_str();
    let persistent = matches!(output, Output::Topic(_));
    let stateful = Pipeline::new(query_id, &plan, config.idle_timeout)?.is_stateful();
    let changelog = (persistent && stateful).then(|| changelog_topic(&config.group_id));
    // Three starts at once, each some round trips to Kafka: the producer's transactions
    // (see `start_output`), a reader of the changelog, and the query's consumer with
    // its partitions and changelog topic.
    let mut producer_shutdown = shutdown.clone();
    let (started, opened, subscribed) = tokio::join!(
        start_output(&config, &stats, &mut producer_shutdown, &mut output),
        async {
            match &changelog {
                Some(changelog) => Changelog::open(&config.bootstrap_servers, changelog)
                    .await
                    .map(Some),
                None => Ok(None),
            }
        },
        subscribe_and_prepare(
            &config,
            &stats,
            &mut shutdown,
            (topic, changelog.as_deref())
        ),
    );
    let (Some(()), Some((subscribed, partitions))) = (started?, subscribed?) else {
        return Ok(());
    };
    let Subscribed {
        consumer,
        fetch,
        revocations,
        assignment,
    } = subscribed;
    // A changelog that could not be opened now is opened again, and retried, below.
    let mut opened = opened.ok().flatten();
    let Some((pipeline, writer)) = retry(
        query_id,
        "reading state back",
        &stats,
        &mut shutdown,
        || {
            start_pipeline(
                &config,
                &plan,
                &partitions,
                changelog.as_deref(),
                opened.take(),
            )
        },
    )
    .await?
    else {
        return Ok(());
    };
    // A table's rows are read back from its topic while the query runs: results written
    // meanwhile wait in the table and apply after them (see `MaterializedTable::restore`).
    let mut table_shutdown = shutdown.clone();
    let restoring = async {
        match (persistent, &config.materialized) {
            (true, Some(table)) => restore_table(&config, table, &stats, &mut table_shutdown).await,
            _ => Ok(()),
        }
    };
    tracing::info!(query_id, topic, sink = %config.sink_topic, "query started");
    let mut reader = Reader::start(
        query_id,
        consumer.clone(),
        fetch,
        topic,
        revocations.clone(),
    )
    .map_err(|e| ExecError::internal("query loop", &format!("starting the reader: {e}")))?;
    let stopped = {
        let processing = process(
            &config,
            &plan,
            &stats,
            &mut shutdown,
            &mut output,
            Source {
                consumer: &consumer,
                reader: &mut reader,
                revocations: &revocations,
                assignment: &assignment,
                partitions: &partitions,
            },
            changelog.as_deref(),
            (pipeline, writer),
        );
        tokio::pin!(processing, restoring);
        // A table that cannot be read back stops its query, as a failure to start would.
        tokio::select! {
            stopped = &mut processing => stopped,
            restored = &mut restoring => match restored {
                Ok(()) => processing.await,
                Err(e) => Err(e),
            },
        }
    };
    reader.stop().await;
    stopped?;
    tracing::info!(query_id, "query stopped");
    Ok(())
}

/// Where a running query's records come from.
struct Source<'a> {
    consumer: &'a Arc<QueryConsumer>,
    reader: &'a mut Reader,
    revocations: &'a AtomicU64,
    assignment: &'a std::sync::Mutex<Assignment>,
    partitions: &'a [i32],
}

/// A batch being written on a task of its own while the next one is read and processed.
struct InFlight {
    task: tokio::task::JoinHandle<(Result<bool>, Duration)>,
    records: Vec<RawRecord>,
    /// The consumer's revocation count when its records were read.
    generation: u64,
}

/// How writing a batch ended, for the query loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// Written and committed, and the partitions stayed put meanwhile.
    Committed,
    /// Written and committed, but the partitions were reassigned meanwhile.
    CommittedMoved,
    /// Not committed: its records must be processed again from the last commit.
    Failed,
}

/// What settling the batch being written means for the loop.
enum After {
    /// Nothing was being written, or it was committed with the partitions in place.
    Go,
    /// It was committed, but the partitions moved meanwhile: its records.
    Moved(Vec<RawRecord>),
    /// It was not committed: its records, to be processed again.
    Failed(Vec<RawRecord>),
}

/// The query loop's own state that settling a written batch changes.
struct Loop<'a> {
    query_id: &'a str,
    config: &'a QueryConfig,
    stats: &'a QueryStats,
    revocations: &'a AtomicU64,
    batch_limit: usize,
    backoff: Duration,
}

/// Read, process and hand on batches until the query is stopped (`Ok`) or fails.
///
/// A persistent query writes each batch on a task of its own and reads and processes
/// the next batch meanwhile; that one is written once the one before is committed. When
/// a batch was not committed, or the partitions moved while it was written, the batch
/// processed meanwhile goes with it: the state is read back from the changelog and both
/// are read again.
#[allow(clippy::too_many_arguments)]
async fn process(
    config: &Arc<QueryConfig>,
    plan: &Arc<StreamPlan>,
    stats: &Arc<QueryStats>,
    shutdown: &mut watch::Receiver<bool>,
    output: &mut Output,
    source: Source<'_>,
    changelog: Option<&str>,
    (mut pipeline, mut writer): (Pipeline, StateWriter),
) -> Result<()> {
    let query_id = config.query_id.as_str();
    let Source {
        consumer,
        reader,
        revocations,
        assignment,
        partitions,
    } = source;
    let persistent = matches!(output, Output::Topic(_));
    let delivery = Delivery {
        config: config.clone(),
        plan: plan.clone(),
        changelog: changelog.map(Arc::from),
        stats: stats.clone(),
        consumer: consumer.clone(),
        encode_buffers: Default::default(),
    };
    let mut state = Loop {
        query_id,
        config,
        stats,
        revocations,
        batch_limit: FIRST_BATCH,
        backoff: FIRST_BACKOFF,
    };
    let mut last_probe = Instant::now();
    let mut consumer_errors = 0u32;
    let mut seen_assignment = None;
    let mut in_flight: Option<InFlight> = None;
    // The records of the last batch committed, cleared: the next batch's, to save the
    // page faults of a new vector's pages (a batch's is up to 25 MB; see EncodeBuffers).
    let mut spare_records: Vec<RawRecord> = vec![];
    // Leave the loop with an error; the batch being written is still waited for.
    macro_rules! tri {
        ($result:expr) => {
            match $result {
                Ok(value) => value,
                Err(e) => break Err(e),
            }
        };
    }
    // The pipeline's state is read back from the changelog (its records are read again).
    macro_rules! read_state_back {
        () => {
            match tri!(
                retry(query_id, "reading state back", stats, shutdown, || {
                    start_pipeline(config, plan, partitions, changelog, None)
                })
                .await
            ) {
                Some(fresh) => {
                    (pipeline, writer) = fresh;
                    seen_assignment = None;
                }
                None => break Ok(()),
            }
        };
    }
    // Settle the batch being written (`written` is its outcome, once it is), if any.
    macro_rules! settle_in_flight {
        ($written:expr) => {{
            // `written` is evaluated only while something is being written, and before
            // it is taken out (waiting for it needs it in place).
            let written = match in_flight.is_some() {
                true => Some($written),
                false => None,
            };
            match (in_flight.take(), written) {
                (Some(before), Some(written)) => {
                    let Some(outcome) =
                        tri!(state.settle(&before, written, shutdown, output).await)
                    else {
                        break Ok(());
                    };
                    match outcome {
                        Settled::Committed => {
                            spare_records = before.records;
                            spare_records.clear();
                            After::Go
                        }
                        Settled::CommittedMoved => After::Moved(before.records),
                        Settled::Failed => After::Failed(before.records),
                    }
                }
                _ => After::Go,
            }
        }};
    }
    let result = loop {
        sync_assignment(&mut pipeline, assignment, &mut seen_assignment);
        let batch_limit = state.batch_limit;
        let first = tokio::select! {
            _ = shutdown.changed() => break Ok(()),
            p = reader.next(batch_limit) => Some(p),
            _ = tokio::time::sleep(TICK) => None,
            // Nothing new to read yet: settle the batch being written.
            written = joined(&mut in_flight), if in_flight.is_some() => {
                let now = revocations.load(Ordering::SeqCst);
                match settle_in_flight!(written) {
                    After::Go => {}
                    After::Moved(committed) => reader.reposition(now, &[], &committed),
                    After::Failed(failed) => {
                        reader.reposition(now, &failed, &[]);
                        read_state_back!();
                    }
                }
                continue;
            }
        };
        let read_started = Instant::now();
        let mut records: Vec<RawRecord> = vec![];
        // Each chunk is decoded as it arrives, while the reading thread reads the next.
        let mut parts = vec![];
        let mut generation = revocations.load(Ordering::SeqCst);
        match first {
            Some(Some(Polled::Records {
                generation: g,
                records: r,
            })) => {
                consumer_errors = 0;
                generation = g;
                records = r;
                if reader.behind() {
                    // The batch will likely fill: room for it now, not by doubling (each
                    // step a copy, and page faults on fresh memory), in the last batch's
                    // vector if it is larger.
                    if spare_records.capacity() > records.capacity() {
                        spare_records.append(&mut records);
                        std::mem::swap(&mut records, &mut spare_records);
                    }
                    records.reserve(batch_limit.saturating_sub(records.len()));
                }
                parts.push(tri!(pipeline.decode(&records, 0)));
            }
            Some(Some(Polled::Error(e))) => {
                // While the broker is away this repeats: log the first and every 50th.
                if consumer_errors.is_multiple_of(50) {
                    tracing::warn!(query_id, error = %e, repeated = consumer_errors, "consumer error; retrying");
                }
                consumer_errors += 1;
                stats.kafka_failed(e.to_string());
                if !pause(shutdown, Duration::from_millis(200)).await {
                    break Ok(());
                }
                continue;
            }
            Some(None) => break Err(ExecError::internal("query loop", "the reader stopped")),
            None => {}
        }
        if !records.is_empty() {
            let mut undecoded = None;
            let deadline = Instant::now() + config.commit_interval;
            let mut bytes: usize = records.iter().map(RawRecord::size).sum();
            while records.len() < batch_limit && bytes < MAX_BATCH_BYTES {
                // Behind its input (a backlog, a restart), a stateful query's batch goes
                // on past the commit interval up to its limits: larger batches merge more
                // updates per group. Caught up, it ends on time.
                let until = if changelog.is_some() && reader.behind() {
                    deadline.max(Instant::now() + BEHIND_WAIT)
                } else {
                    deadline
                };
                match timeout_at(until, reader.next(batch_limit - records.len())).await {
                    Ok(Some(Polled::Records { records: r, .. })) => {
                        bytes += r.iter().map(RawRecord::size).sum::<usize>();
                        match pipeline.decode(&r, records.len()) {
                            Ok(part) => parts.push(part),
                            Err(e) => {
                                undecoded = Some(e);
                                break;
                            }
                        }
                        records.extend(r);
                    }
                    Ok(Some(Polled::Error(e))) => {
                        tracing::warn!(query_id, error = %e, "consumer error")
                    }
                    Ok(None) => {
                        break;
                    }
                    Err(_) => break,
                }
            }
            if let Some(e) = undecoded {
                break Err(e);
            }
            if persistent && revocations.load(Ordering::SeqCst) != generation {
                // The partitions were taken away and given back while this batch was
                // read: they restart from the committed offsets, so it is read again
                // (with the batch before, if that one is not committed).
                tracing::info!(
                    query_id,
                    "partitions were reassigned while a batch was read; reading it again"
                );
                let now = revocations.load(Ordering::SeqCst);
                match settle_in_flight!(joined(&mut in_flight).await) {
                    After::Go => reader.reposition(now, &records, &[]),
                    After::Moved(committed) => reader.reposition(now, &records, &committed),
                    After::Failed(mut failed) => {
                        failed.extend(records);
                        reader.reposition(now, &failed, &[]);
                        read_state_back!();
                    }
                }
                continue;
            }
        }
        if records.is_empty() && stats.kafka_failing() && last_probe.elapsed() > PROBE_EVERY {
            // Nothing to commit tells us Kafka is back: ask it.
            last_probe = Instant::now();
            let (probe, source) = (consumer.clone(), plan.source.topic.clone());
            let answered = tokio::task::spawn_blocking(move || {
                probe
                    .fetch_metadata(Some(&source), Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if answered {
                stats.kafka_ok();
            }
        }
        let process_started = Instant::now();
        let batches = tri!(if records.is_empty() {
            pipeline.tick(std::time::Instant::now(), stats)
        } else {
            pipeline.process_parts(&records, parts, stats, std::time::Instant::now())
        });
        if let Output::Client(client) = output {
            if !send(client, batches, stats, shutdown).await {
                break Ok(());
            }
            continue;
        }
        let changes = match changelog {
            Some(_) => tri!(writer.take(&mut pipeline)),
            None => vec![],
        };
        let processed = process_started.elapsed();
        // The batch before must be committed before this one is written.
        let now = revocations.load(Ordering::SeqCst);
        match settle_in_flight!(joined(&mut in_flight).await) {
            After::Go => {}
            After::Moved(committed) => {
                // The partitions moved while the batch before was written: read this one
                // again, after it, from the state after it.
                reader.reposition(now, &records, &committed);
                read_state_back!();
                continue;
            }
            After::Failed(mut failed) => {
                // This batch was processed on top of one that was not committed.
                failed.extend(records);
                reader.reposition(now, &failed, &[]);
                read_state_back!();
                continue;
            }
        }
        if batches.is_empty() && changes.is_empty() && records.is_empty() {
            continue;
        }
        let Output::Topic(producer) = &*output else {
            continue;
        };
        tracing::debug!(
            query_id,
            records = records.len(),
            read_ms = (process_started - read_started).as_millis() as u64,
            process_ms = processed.as_millis() as u64,
            "batch processed"
        );
        let outgoing = tri!(Outgoing::new(
            &plan.source.topic,
            &records,
            batches,
            changes
        ));
        let (writer, producer) = (delivery.clone(), producer.clone());
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let delivered = writer.deliver(&producer, outgoing).await;
            (delivered, started.elapsed())
        });
        in_flight = Some(InFlight {
            task,
            records,
            generation,
        });
    };
    if let Some(before) = in_flight.take() {
        // Stopping: let the batch being written finish (or fail) first.
        let _ = before.task.await;
    }
    result
}

/// The outcome of the batch being written, once it is; never ready without one.
async fn joined(in_flight: &mut Option<InFlight>) -> (Result<bool>, Duration) {
    match in_flight {
        Some(f) => (&mut f.task).await.unwrap_or_else(|e| {
            (
                Err(ExecError::internal(
                    "query loop",
                    &format!("writing a batch: {e}"),
                )),
                Duration::ZERO,
            )
        }),
        None => std::future::pending().await,
    }
}

impl Loop<'_> {
    /// Settle a written batch: adapt the batch limit to how long it took; after a Kafka
    /// failure, wait and make a new producer. `None` when the query was stopped
    /// meanwhile.
    async fn settle(
        &mut self,
        before: &InFlight,
        (delivered, took): (Result<bool>, Duration),
        shutdown: &mut watch::Receiver<bool>,
        output: &mut Output,
    ) -> Result<Option<Settled>> {
        let query_id = self.query_id;
        tracing::debug!(
            query_id,
            records = before.records.len(),
            deliver_ms = took.as_millis() as u64,
            "batch written"
        );
        self.batch_limit = if delivered.is_err() || took > SLOW_DELIVERY {
            (self.batch_limit / 2).max(MIN_BATCH)
        } else if took < FAST_DELIVERY && before.records.len() >= self.batch_limit {
            (self.batch_limit * 2).min(MAX_BATCH)
        } else {
            self.batch_limit
        };
        let committed = match delivered {
            Ok(committed) => committed,
            Err(e @ ExecError::Kafka { .. }) => {
                // A broker outage, say: wait, then start again from the last commit with
                // a new producer.
                self.stats.kafka_failed(e.to_string());
                tracing::warn!(query_id, error = %e, "writing a batch failed; retrying from the last commit in {:?}", self.backoff);
                if !pause(shutdown, self.backoff).await {
                    return Ok(None);
                }
                self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                let Some(fresh) = retry(
                    query_id,
                    "creating a producer",
                    self.stats,
                    shutdown,
                    || new_producer(self.config),
                )
                .await?
                else {
                    return Ok(None);
                };
                if let Output::Topic(producer) = output {
                    let old = std::mem::replace(producer, fresh);
                    tokio::task::spawn_blocking(move || drop(old));
                }
                false
            }
            Err(e) => return Err(e),
        };
        if !committed {
            return Ok(Some(Settled::Failed));
        }
        self.backoff = FIRST_BACKOFF;
        self.stats.kafka_ok();
        Ok(Some(
            if self.revocations.load(Ordering::SeqCst) != before.generation {
                Settled::CommittedMoved
            } else {
                Settled::Committed
            },
        ))
    }
}

/// Wait `pause`; `false` when the query was stopped meanwhile.
async fn pause(shutdown: &mut watch::Receiver<bool>, pause: Duration) -> bool {
    tokio::select! {
        _ = shutdown.changed() => false,
        _ = tokio::time::sleep(pause) => true,
    }
}

/// Run `attempt` until it does not fail with a Kafka error (a broker outage, say),
/// waiting between attempts with backoff and reporting the failures in `stats`; `None`
/// when the query was stopped meanwhile. Other errors are returned.
async fn retry<T, F, Fut>(
    query_id: &str,
    what: &str,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
    mut attempt: F,
) -> Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    let mut backoff = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Ok(Some(value)),
            Err(e @ ExecError::Kafka { .. }) => {
                stats.kafka_failed(e.to_string());
                tracing::warn!(query_id, error = %e, "{what} failed; retrying in {backoff:?}");
            }
            Err(e) => return Err(e),
        }
        if !pause(shutdown, backoff).await {
            return Ok(None);
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Send a push query's `batches` to its client; `false` when the client has gone away or
/// the query was stopped while waiting for a slow client.
async fn send(
    client: &mpsc::Sender<Result<ChangeBatch>>,
    batches: Vec<ChangeBatch>,
    stats: &QueryStats,
    shutdown: &mut watch::Receiver<bool>,
) -> bool {
    for batch in batches {
        let rows = batch.num_rows() as u64;
        tokio::select! {
            sent = client.send(Ok(batch)) => {
                if sent.is_err() {
                    return false;
                }
            }
            _ = shutdown.changed() => return false,
        }
        stats.add_out(rows);
    }
    !client.is_closed()
}
