//! librdkafka calls that rust-rdkafka does not offer: taking a query's source records in
//! batches, and queueing its output records in batches; and a cache prefetch. This is the
//! one module with `unsafe` code (STYLE.md allows it for a measured hot path).
//!
//! ## Taking records: [`FetchQueue`]
//! rust-rdkafka hands over one record per `poll`: a queue lock, an event, a clock read and
//! a reference count each. Measured by `throughput` on the 6M-event fraud topic, in the
//! same runs: `poll` read 2.0–2.1M records/s at 0.66–0.85 µs of CPU each, and
//! `rd_kafka_consume_batch_queue` (1024 at a time, each payload copied out) read
//! 3.8–4.4M records/s at 0.23 µs each. For a stateless query the reading thread was a
//! fifth of the server's CPU. The payloads of one call are copied into one buffer, which
//! the records' values share.
//!
//! The batch call cannot take from the consumer's own queue: that queue carries the
//! rebalance events too, and the batch call would serve them itself (librdkafka's default
//! assignment), so the consumer's context would never see them. So the source partitions'
//! records are forwarded to a queue of their own, a [`FetchQueue`]: the context forwards
//! each partition as it is assigned, before librdkafka starts fetching it. (librdkafka drops
//! the forwarding when a partition's fetching stops, at a revocation; the next assignment
//! sets it again.) The reading thread polls the consumer's queue for events, with no wait,
//! and takes records from this one. A partition that could not be forwarded delivers its
//! records through the consumer's queue, as before.
//!
//! ## Queueing records: [`ProduceTopic`]
//! rust-rdkafka's `send` calls `rd_kafka_producev` per record, which looks the topic up by
//! name, checks the transaction state and reads the clock each time (and rust-rdkafka
//! copies the topic name into a C string first). `rd_kafka_produce_batch` does those once
//! per batch of records, on a topic handle held for the batch.
//!
//! ## Prefetching: [`prefetch`]
//! Looking up groups in a window of 100,000 keys reads a hash slot, then the key it
//! points to: a cache miss each. [`prefetch`] asks for a line a few rows ahead.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void, CString};
use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, ProducerContext, ThreadedProducer};
use rdkafka::util::IntoOpaque;

use crate::record::{Payload, RawRecord};

/// A queue of a consumer's client that partitions' records are forwarded to. It keeps
/// the consumer alive, so it is destroyed before the client is.
///
/// Public for the `throughput` benchmark, which measures librdkafka's batch consume rate
/// with it.
pub struct FetchQueue {
    queue: NonNull<rd::rd_kafka_queue_t>,
    /// The client of `_consumer`.
    client: NonNull<rd::rd_kafka_t>,
    /// The consumer whose client the queue belongs to.
    _consumer: Arc<dyn Send + Sync>,
}

// SAFETY: a librdkafka queue handle may be used from any thread (its queue is locked
// inside librdkafka), and `take` is the only call that returns messages.
unsafe impl Send for FetchQueue {}
// SAFETY: as above; nothing here is mutated outside librdkafka's locks.
unsafe impl Sync for FetchQueue {}

impl FetchQueue {
    /// A new, empty queue on `consumer`'s client.
    pub fn new<C: ConsumerContext + 'static>(consumer: Arc<BaseConsumer<C>>) -> Option<Self> {
        let client = NonNull::new(consumer.client().native_ptr())?;
        // SAFETY: the client pointer is valid while `consumer` lives, and the queue is
        // destroyed (in `drop`) before this struct's reference to it is released.
        let queue = NonNull::new(unsafe { rd::rd_kafka_queue_new(client.as_ptr()) })?;
        Some(Self {
            queue,
            client,
            _consumer: consumer,
        })
    }

    /// Forward `topic`'s `partition` here: its records fetched from now on (and any
    /// waiting in its own queue) come out of [`FetchQueue::take`]. `false` when
    /// librdkafka has no such partition.
    pub fn forward(&self, topic: &str, partition: i32) -> bool {
        let Ok(topic) = CString::new(topic) else {
            return false;
        };
        // SAFETY: the client lives as long as `self._consumer`; the partition queue handle
        // is a new reference, released right after the forwarding is set (the forwarding
        // holds its own reference to this queue).
        unsafe {
            let partition_queue =
                rd::rd_kafka_queue_get_partition(self.client.as_ptr(), topic.as_ptr(), partition);
            if partition_queue.is_null() {
                return false;
            }
            rd::rd_kafka_queue_forward(partition_queue, self.queue.as_ptr());
            rd::rd_kafka_queue_destroy(partition_queue);
        }
        true
    }

    /// Wait up to `wait` for records, then take up to `max` of those waiting, in the
    /// order librdkafka fetched them; each goes to `each` (a consumer error as `Err`).
    /// Returns how many were taken.
    pub fn take(
        &self,
        wait: Duration,
        max: usize,
        each: &mut impl FnMut(Result<RawRecord, KafkaError>),
    ) -> usize {
        let mut messages: Vec<*mut rd::rd_kafka_message_t> = Vec::with_capacity(max);
        let timeout_ms = i32::try_from(wait.as_millis()).unwrap_or(i32::MAX);
        // SAFETY: `messages` has room for `max` pointers; librdkafka writes `n ≤ max` of
        // them and returns `n` (or -1 on an error, then none).
        let n = unsafe {
            rd::rd_kafka_consume_batch_queue(
                self.queue.as_ptr(),
                timeout_ms,
                messages.as_mut_ptr(),
                max,
            )
        };
        let n = usize::try_from(n).unwrap_or(0).min(max);
        // SAFETY: the first `n` entries were written by librdkafka just above.
        unsafe { messages.set_len(n) };
        // The records' payloads, copied into one buffer that their values share: a
        // buffer per payload was an allocation on this thread and a free on the query's
        // (see `docs/benchmarks.md`, "One buffer per take").
        // SAFETY: each message is valid until it is destroyed, below.
        let payloads = messages.iter().map(|&m| unsafe { payload(m) });
        let mut buffer = Vec::with_capacity(payloads.clone().flatten().map(<[u8]>::len).sum());
        for payload in payloads.flatten() {
            buffer.extend_from_slice(payload);
        }
        let buffer = Arc::new(buffer);
        let mut at = 0;
        for &message in &messages {
            // SAFETY: each message is valid until it is destroyed, right after it is
            // read.
            let record = unsafe {
                let m = &*message;
                let record = if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    let value = payload(message).map(|p| {
                        at += p.len();
                        Payload::slice(&buffer, at - p.len(), p.len())
                    });
                    Ok(raw(message, m, value))
                } else {
                    Err(KafkaError::MessageConsumption(RDKafkaErrorCode::from(
                        m.err,
                    )))
                };
                rd::rd_kafka_message_destroy(message);
                record
            };
            each(record);
        }
        n
    }
}

/// The payload of `message` when it is a record (not an error) with one.
///
/// # Safety
/// `message` must be a valid, not yet destroyed message; the slice lives as long as it.
unsafe fn payload<'m>(message: *const rd::rd_kafka_message_t) -> Option<&'m [u8]> {
    // SAFETY: `message` is valid (the caller's promise).
    let m = unsafe { &*message };
    (m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR && !m.payload.is_null())
        // SAFETY: a non-null payload is `len` bytes that live as long as the message.
        .then(|| unsafe { std::slice::from_raw_parts(m.payload.cast::<u8>(), m.len) })
}

/// The record `m` (at `message`) holds, with its payload `value`.
///
/// # Safety
/// `message` must be a valid, not yet destroyed message, and `m` its contents.
unsafe fn raw(
    message: *const rd::rd_kafka_message_t,
    m: &rd::rd_kafka_message_t,
    value: Option<Payload>,
) -> RawRecord {
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: `message` is valid (the caller's promise).
    let timestamp = unsafe { rd::rd_kafka_message_timestamp(message, &mut kind) };
    let timestamp_ms = (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        && timestamp != -1)
        .then_some(timestamp);
    RawRecord {
        partition: m.partition,
        offset: m.offset,
        timestamp_ms,
        value,
    }
}

impl Drop for FetchQueue {
    fn drop(&mut self) {
        // SAFETY: the queue was created by `rd_kafka_queue_new` and is destroyed once,
        // while the client still lives (`self._consumer` is released after this).
        // Partitions still forwarded here hold their own references; librdkafka stops
        // delivering to a destroyed queue.
        unsafe { rd::rd_kafka_queue_destroy(self.queue.as_ptr()) };
    }
}

/// A producer's handle on one topic, for queueing records in batches; it lives no longer
/// than the producer it was made from, and its records carry that producer's delivery
/// opaques.
///
/// Public for the `throughput` benchmark, whose raw pipe writes as a query does.
pub struct ProduceTopic<'a, C: ProducerContext> {
    topic: NonNull<rd::rd_kafka_topic_t>,
    producer: PhantomData<&'a ()>,
    opaque: PhantomData<fn() -> C>,
}

// SAFETY: a librdkafka topic handle may be used from any thread (the topic is locked
// inside librdkafka).
unsafe impl<C: ProducerContext> Send for ProduceTopic<'_, C> {}
// SAFETY: as above.
unsafe impl<C: ProducerContext> Sync for ProduceTopic<'_, C> {}

/// What [`ProduceTopic::queue`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Queued {
    /// How many records were queued.
    pub queued: usize,
    /// The first record not queued, and why. When that is `QueueFull`, no record after it
    /// was queued either.
    pub failed: Option<(usize, RDKafkaErrorCode)>,
}

/// A record to queue: its key and value.
pub type KeyValue<'r> = (Option<&'r [u8]>, Option<&'r [u8]>);

/// The partition librdkafka's partitioner chooses (`RD_KAFKA_PARTITION_UA`).
const UNASSIGNED: i32 = -1;

impl<'a, C: ProducerContext> ProduceTopic<'a, C> {
    /// A handle on `topic` for `producer`.
    pub fn new(producer: &'a ThreadedProducer<C>, topic: &str) -> Option<Self> {
        let topic = CString::new(topic).ok()?;
        // SAFETY: the client lives as long as `producer`, which outlives `'a`; a null
        // configuration takes the producer's defaults.
        let topic = unsafe {
            rd::rd_kafka_topic_new(
                producer.client().native_ptr(),
                topic.as_ptr(),
                std::ptr::null_mut(),
            )
        };
        NonNull::new(topic).map(|topic| Self {
            topic,
            producer: PhantomData,
            opaque: PhantomData,
        })
    }

    /// Queue `records` (key, value) in their order, to `partition`, or (`None`) where the
    /// partitioner puts each by its key. librdkafka copies them. Each record queued carries
    /// an `opaque()` to its delivery report; a record not queued gets none (its opaque is
    /// dropped here).
    pub fn queue(
        &self,
        partition: Option<i32>,
        records: &[KeyValue<'_>],
        opaque: impl Fn() -> C::DeliveryOpaque,
    ) -> Queued {
        let bytes = |b: Option<&[u8]>| {
            b.map_or((std::ptr::null_mut(), 0), |b| {
                (b.as_ptr().cast::<c_void>().cast_mut(), b.len())
            })
        };
        let mut messages: Vec<rd::rd_kafka_message_t> = records
            .iter()
            .map(|&(key, value)| {
                let (payload, len) = bytes(value);
                let (key, key_len) = bytes(key);
                rd::rd_kafka_message_t {
                    err: rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR,
                    rkt: std::ptr::null_mut(),
                    partition: 0,
                    payload,
                    len,
                    key,
                    key_len,
                    offset: 0,
                    _private: opaque().into_ptr(),
                }
            })
            .collect();
        let count = c_int::try_from(messages.len()).expect("a batch fits in an int");
        // SAFETY: the topic handle is valid for `'a`; `messages` holds `count` messages
        // whose payloads and keys point into `records`, which outlive the call, and which
        // librdkafka copies (`RD_KAFKA_MSG_F_COPY`) and does not write to.
        unsafe {
            rd::rd_kafka_produce_batch(
                self.topic.as_ptr(),
                partition.unwrap_or(UNASSIGNED),
                rd::RD_KAFKA_MSG_F_COPY,
                messages.as_mut_ptr(),
                count,
            );
        }
        let mut done = Queued {
            queued: 0,
            failed: None,
        };
        for (i, m) in messages.iter().enumerate() {
            if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                done.queued += 1;
            } else {
                // SAFETY: librdkafka took no ownership of a message it did not queue; its
                // opaque came from `into_ptr` above and is taken back once.
                drop(unsafe { C::DeliveryOpaque::from_ptr(m._private) });
                done.failed
                    .get_or_insert((i, RDKafkaErrorCode::from(m.err)));
            }
        }
        done
    }
}

impl<C: ProducerContext> Drop for ProduceTopic<'_, C> {
    fn drop(&mut self) {
        // SAFETY: the handle came from `rd_kafka_topic_new` and is released once; records
        // queued through it keep the topic itself alive.
        unsafe { rd::rd_kafka_topic_destroy(self.topic.as_ptr()) };
    }
}

/// Ask the CPU to bring the cache line holding `value` closer; it does nothing else (and
/// nothing at all off x86-64).
#[inline(always)]
pub(crate) fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch reads nothing the program sees and cannot fault; SSE, which the
    // instruction needs, is part of every x86-64 CPU.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rdkafka::config::ClientConfig;
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::{DeliveryResult, ProducerContext};
    use rdkafka::ClientContext;

    use super::*;
    use crate::EmbeddedBroker;

    /// Counts the delivery reports of records whose opaque is an `Arc<AtomicUsize>`.
    struct Reports;
    impl ClientContext for Reports {}
    impl ProducerContext for Reports {
        type DeliveryOpaque = Arc<AtomicUsize>;
        fn delivery(&self, result: &DeliveryResult<'_>, delivered: Arc<AtomicUsize>) {
            if result.is_ok() {
                delivered.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_full_queue_stops_a_batch_and_takes_back_the_opaques_of_what_was_not_queued() {
        let broker = EmbeddedBroker::start().expect("broker");
        broker.create_topic("produce_batches", 1).expect("topic");
        let producer: ThreadedProducer<Reports> = ClientConfig::new()
            .set("bootstrap.servers", broker.bootstrap_servers())
            .set("queue.buffering.max.messages", "10")
            .create_with_context(Reports)
            .expect("producer");
        let topic = ProduceTopic::new(&producer, "produce_batches").expect("handle");
        let values: Vec<String> = (0..25).map(|i| format!("value {i}")).collect();
        let records: Vec<KeyValue<'_>> = values
            .iter()
            .map(|v| (Some(&b"key"[..]), Some(v.as_bytes())))
            .collect();
        let delivered = Arc::new(AtomicUsize::new(0));

        let done = topic.queue(Some(0), &records, || delivered.clone());
        assert_eq!(done.queued, 10);
        assert_eq!(done.failed, Some((10, RDKafkaErrorCode::QueueFull)));
        // The 15 not queued gave their references back; the 10 queued hold theirs.
        assert_eq!(Arc::strong_count(&delivered), 11);
        producer.flush(Duration::from_secs(10)).expect("flushed");
        let (_, rest) = records.split_at(10);
        let done = topic.queue(None, &rest[..10], || delivered.clone());
        assert_eq!((done.queued, done.failed), (10, None));
        producer.flush(Duration::from_secs(10)).expect("flushed");
        assert_eq!(delivered.load(Ordering::SeqCst), 20);
        assert_eq!(
            Arc::strong_count(&delivered),
            1,
            "every report released its opaque"
        );

        // What was written, in order.
        let consumer: Arc<BaseConsumer> = Arc::new(
            ClientConfig::new()
                .set("bootstrap.servers", broker.bootstrap_servers())
                .set("group.id", "produce_batches")
                .create()
                .expect("consumer"),
        );
        let fetch = FetchQueue::new(consumer.clone()).expect("queue");
        assert!(fetch.forward("produce_batches", 0));
        let mut list = rdkafka::TopicPartitionList::new();
        list.add_partition_offset("produce_batches", 0, rdkafka::Offset::Beginning)
            .expect("listed");
        consumer.assign(&list).expect("assigned");
        let mut read = vec![];
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while read.len() < 20 && std::time::Instant::now() < deadline {
            fetch.take(Duration::from_millis(100), 100, &mut |r| {
                read.push(r.expect("record").value.expect("a value").to_vec());
            });
        }
        let expected: Vec<Vec<u8>> = values[..20]
            .iter()
            .map(|v| v.clone().into_bytes())
            .collect();
        assert_eq!(read, expected);
    }
}
