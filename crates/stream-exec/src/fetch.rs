//! Taking a query's source records from librdkafka in batches: the one module with
//! `unsafe` code (STYLE.md allows it for a measured hot path).
//!
//! rust-rdkafka hands over one record per `poll`: a queue lock, an event, a clock read and
//! a reference count each. Measured by `throughput` on the 6M-event fraud topic, in the
//! same runs: `poll` read 2.0–2.1M records/s at 0.66–0.85 µs of CPU each, and
//! `rd_kafka_consume_batch_queue` (1024 at a time, each payload copied out) read
//! 3.8–4.4M records/s at 0.23 µs each. For a stateless query the reading thread was a
//! fifth of the server's CPU.
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
#![allow(unsafe_code)]

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

use crate::record::RawRecord;

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
        for &message in &messages {
            // SAFETY: each message is valid until it is destroyed, right after it is
            // read; its payload is `len` bytes (or null).
            let record = unsafe {
                let m = &*message;
                let record = if m.err == rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR {
                    Ok(raw(message, m))
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

/// The record `m` (at `message`) holds, its payload copied out.
///
/// # Safety
/// `message` must be a valid, not yet destroyed message, and `m` its contents.
unsafe fn raw(message: *const rd::rd_kafka_message_t, m: &rd::rd_kafka_message_t) -> RawRecord {
    let mut kind = rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE;
    // SAFETY: `message` is valid (the caller's promise).
    let timestamp = unsafe { rd::rd_kafka_message_timestamp(message, &mut kind) };
    let timestamp_ms = (kind != rd::rd_kafka_timestamp_type_t::RD_KAFKA_TIMESTAMP_NOT_AVAILABLE
        && timestamp != -1)
        .then_some(timestamp);
    let value = (!m.payload.is_null()).then(|| {
        // SAFETY: a non-null payload is `len` bytes that live as long as the message.
        unsafe { std::slice::from_raw_parts(m.payload.cast::<u8>(), m.len) }.to_vec()
    });
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
