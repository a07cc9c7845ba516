//! librdkafka alone on a benchmark topic, with no engine: its consume rate, and the
//! ceiling of a query's Kafka work (reading as a query does and writing records back in
//! transactions). The ratios of the queries are taken against these.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Result};
use rdkafka::admin::AdminOptions;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::RDKafkaErrorCode;
use rdkafka::message::Message;
use rdkafka::producer::{DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use sluice_stream_exec::native::{FetchQueue, KeyValue, ProduceTopic};
use sluice_stream_exec::query_runner::producer_config;
use sluice_stream_exec::record::RawRecord;

use crate::kafka::now_ms;

/// How the raw consumer takes its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawMode {
    /// rust-rdkafka's `poll`, one message at a time.
    Poll,
    /// librdkafka's batch consume (`rd_kafka_consume_batch_queue`, 1024 at a time) from a
    /// queue the partition is forwarded to: what a query's reading thread does.
    Batch,
}

/// librdkafka's own consume rate on `topic`: a `BaseConsumer` reading from the beginning
/// as `mode` says, touching each payload (copying it out, in batch mode, as a query
/// does): messages per second, and the CPU time this process (the consumer and
/// librdkafka's threads) used per message, in µs.
pub fn raw_rate(bootstrap: &str, topic: &str, events: usize, mode: RawMode) -> Result<(f64, f64)> {
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("sluice_bench_raw_{}", now_ms()))
            .set("enable.auto.commit", "false")
            // As the query's consumer: with the default (1 s), a full prefetch queue stops
            // fetching for a second, and the rate depends on when that happens.
            .set("fetch.queue.backoff.ms", "10")
            .create()?,
    );
    let fetch = match mode {
        RawMode::Poll => None,
        RawMode::Batch => {
            let fetch = FetchQueue::new(consumer.clone())
                .ok_or_else(|| anyhow!("librdkafka made no queue"))?;
            // Before the assignment starts fetching, as a query's consumer does.
            ensure!(fetch.forward(topic, 0), "{topic} [0] not forwarded");
            Some(fetch)
        }
    };
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let (mut count, mut bytes) = (0usize, 0usize);
    let mut first = None;
    let mut cpu_at_first = 0.0;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut each = |payload: Option<usize>| {
        if first.is_none() {
            first = Some(Instant::now());
            cpu_at_first = sluice_bench::cpu_seconds("self");
        }
        bytes += payload.unwrap_or(0);
        count += 1;
    };
    let mut seen = 0;
    while seen < events {
        if Instant::now() > deadline {
            bail!("raw consume of {topic} read only {seen} of {events} messages");
        }
        match &fetch {
            None => {
                if let Some(m) = consumer.poll(Duration::from_millis(100)) {
                    each(Some(m?.payload().map_or(0, <[u8]>::len)));
                    seen += 1;
                }
            }
            Some(fetch) => {
                let mut failed = None;
                seen += fetch.take(Duration::from_millis(100), 1024, &mut |r| match r {
                    Ok(r) => each(r.value.as_deref().map(<[u8]>::len)),
                    Err(e) => failed = Some(e),
                });
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
        }
    }
    let seconds = first.map_or(1.0, |t| t.elapsed().as_secs_f64());
    let cpu = sluice_bench::cpu_seconds("self") - cpu_at_first;
    std::hint::black_box(bytes);
    Ok((count as f64 / seconds, cpu * 1e6 / count.max(1) as f64))
}

/// Records a [`raw_pipe`] transaction holds: a query's largest batch.
const PIPE_BATCH: usize = 524_288;

/// The ceiling of a query's Kafka work with no engine: librdkafka alone reading `topic`
/// as a query does (batch consume on a reading thread, payloads copied out) and writing
/// one in `every` of its records back, unchanged and keyed by their first 16 bytes, to a
/// new topic, in transactions of [`PIPE_BATCH`] records with the consumer offsets,
/// queued in batches by a producer set up as a query's. Reading the next batch overlaps
/// writing the one before, as in a query. Returns records read per second and the CPU
/// time this process used per record read, in µs.
pub async fn raw_pipe(
    bootstrap: &str,
    topic: &str,
    events: usize,
    every: usize,
) -> Result<(f64, f64)> {
    let sink = format!("bench_pipe_{}", now_ms());
    let admin = sluice_bench::admin(bootstrap)?;
    sluice_bench::create_topic(&admin, &sink, 1).await?;
    let (b, t, s) = (bootstrap.to_string(), topic.to_string(), sink.clone());
    let piped = tokio::task::spawn_blocking(move || pipe(&b, &t, &s, events, every)).await?;
    admin.delete_topics(&[&sink], &AdminOptions::new()).await?;
    piped
}

fn pipe(
    bootstrap: &str,
    topic: &str,
    sink: &str,
    events: usize,
    every: usize,
) -> Result<(f64, f64)> {
    let group = format!("sluice_{sink}");
    let consumer: Arc<BaseConsumer> = Arc::new(
        ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("fetch.queue.backoff.ms", "10")
            .create()?,
    );
    let fetch =
        FetchQueue::new(consumer.clone()).ok_or_else(|| anyhow!("librdkafka made no queue"))?;
    ensure!(fetch.forward(topic, 0), "{topic} [0] not forwarded");
    let mut list = TopicPartitionList::new();
    list.add_partition_offset(topic, 0, Offset::Beginning)?;
    consumer.assign(&list)?;
    let producer: ThreadedProducer<DefaultProducerContext> =
        producer_config(bootstrap, Some(&group)).create()?;
    producer.init_transactions(Duration::from_secs(30))?;
    let (batches, written) = std::sync::mpsc::sync_channel::<Vec<RawRecord>>(1);
    // From the first record read, as `raw_rate`.
    let first: Arc<OnceLock<(Instant, f64)>> = Arc::default();
    let started = first.clone();
    let reader = std::thread::spawn(move || -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let mut seen = 0;
        while seen < events {
            ensure!(
                Instant::now() < deadline,
                "the pipe read only {seen} of {events} records"
            );
            let mut batch = Vec::with_capacity(PIPE_BATCH.min(events - seen));
            while batch.len() < PIPE_BATCH && seen < events {
                let mut failed = None;
                seen += fetch.take(Duration::from_millis(100), 1024, &mut |r| match r {
                    Ok(r) => {
                        started.get_or_init(|| (Instant::now(), sluice_bench::cpu_seconds("self")));
                        batch.push(r);
                    }
                    Err(e) => failed = Some(e),
                });
                if let Some(e) = failed {
                    return Err(e.into());
                }
            }
            if batches.send(batch).is_err() {
                break;
            }
        }
        Ok(())
    });
    let handle = ProduceTopic::new(&producer, sink).ok_or_else(|| anyhow!("no topic handle"))?;
    let mut read = 0;
    for batch in written {
        producer.begin_transaction()?;
        let records: Vec<KeyValue<'_>> = batch
            .iter()
            .step_by(every)
            .map(|r| {
                let value = r.value.as_deref();
                (value.map(|v| &v[..v.len().min(16)]), value)
            })
            .collect();
        for chunk in records.chunks(4096) {
            let mut from = 0;
            while from < chunk.len() {
                let done = handle.queue(None, &chunk[from..], || ());
                from += done.queued;
                if let Some((_, code)) = done.failed {
                    ensure!(code == RDKafkaErrorCode::QueueFull, "producing: {code}");
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        let last = batch.last().map_or(0, |r| r.offset);
        let mut offsets = TopicPartitionList::new();
        offsets.add_partition_offset(topic, 0, Offset::Offset(last + 1))?;
        let metadata = consumer
            .group_metadata()
            .ok_or_else(|| anyhow!("no group metadata"))?;
        producer.send_offsets_to_transaction(&offsets, &metadata, Duration::from_secs(30))?;
        producer.commit_transaction(Duration::from_secs(30))?;
        read += batch.len();
    }
    reader
        .join()
        .map_err(|_| anyhow!("the pipe's reader panicked"))??;
    let (at, cpu_at) = *first
        .get()
        .ok_or_else(|| anyhow!("the pipe read nothing"))?;
    let seconds = at.elapsed().as_secs_f64();
    let cpu = sluice_bench::cpu_seconds("self") - cpu_at;
    Ok((read as f64 / seconds, cpu * 1e6 / read.max(1) as f64))
}
