//! Reading a query's source on a thread of its own.
//!
//! The thread polls the consumer and hands its records over in chunks (up to
//! [`CHUNK_RECORDS`] records or [`CHUNK_BYTES`] of payload, or fewer when no more are
//! waiting) through a channel of [`CHUNKS`] chunks. While the query processes and writes
//! a batch, the next one is read; when the channel is full the thread waits, and input
//! waits in Kafka, not in memory. The thread also serves the consumer's callbacks
//! (rebalances, commit results, errors), as its polls are the only ones; not while it
//! waits for room in the channel (see `docs/semantics.md` on a slow sink).
//!
//! When the query must read records again (a failed commit, a rebalance during a batch),
//! it asks the thread to move the partitions and starts a new *epoch*: the thread moves
//! them between two chunks, so everything it reads after belongs to the new epoch, and
//! chunks of older epochs (still in the channel, or read before it looked) are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;
use tokio::sync::mpsc;

use crate::consumer::QueryConsumer;
use crate::record::RawRecord;

/// A chunk holds at most this many records...
const CHUNK_RECORDS: usize = 1024;
/// ...and at most about this many payload bytes.
const CHUNK_BYTES: usize = 256 << 10;
/// Chunks read ahead: at most 64k records or 16 MB waiting in the channel.
const CHUNKS: usize = 64;
/// How long a poll waits when there is nothing to hand over.
const POLL_WAIT: Duration = Duration::from_millis(100);

/// What the thread hands over.
pub(crate) enum Polled {
    /// Records in the order the consumer returned them, read while the consumer's
    /// revocation count was `generation`.
    Records {
        generation: u64,
        records: Vec<RawRecord>,
    },
    /// A consumer error (the broker is away, say).
    Error(KafkaError),
}

struct Chunk {
    epoch: u64,
    polled: Polled,
    /// Handed over because it was full: more records were waiting.
    full: bool,
}

/// Move partitions to these offsets, and start `epoch`.
struct Reposition {
    epoch: u64,
    positions: BTreeMap<i32, i64>,
}

/// The query's side of the reading thread.
pub(crate) struct Reader {
    chunks: mpsc::Receiver<Chunk>,
    repositions: std_mpsc::Sender<Reposition>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    epoch: u64,
    /// Per partition, the offset after the last record taken in this epoch, and the
    /// revocation count it was read under.
    taken: BTreeMap<i32, (i64, u64)>,
    /// Records of a chunk beyond what the last [`Reader::next`] asked for.
    rest: Option<(u64, Vec<RawRecord>)>,
    /// Whether the last chunk taken was full: the thread had more records waiting.
    behind: bool,
}

impl Reader {
    /// Start reading `topic` through `consumer` (subscribed already); `revocations` is
    /// the consumer's count of partition revocations.
    pub(crate) fn start(
        consumer: Arc<QueryConsumer>,
        topic: &str,
        revocations: Arc<AtomicU64>,
    ) -> std::io::Result<Self> {
        let (tx, chunks) = mpsc::channel(CHUNKS);
        let (repositions, requests) = std_mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            let topic = topic.to_string();
            std::thread::Builder::new()
                .name("sluice-reader".into())
                .spawn(move || read(&consumer, &topic, &revocations, &stop, &tx, &requests))?
        };
        Ok(Self {
            chunks,
            repositions,
            stop,
            thread: Some(thread),
            epoch: 0,
            taken: BTreeMap::new(),
            rest: None,
            behind: false,
        })
    }

    /// Whether more records are waiting to be read: the query is behind its input (a
    /// backlog, a restart), not caught up with it.
    pub(crate) fn behind(&self) -> bool {
        self.behind || self.rest.is_some()
    }

    /// Up to `max` records of the current epoch (or an error), waiting for them; `None`
    /// when the thread has stopped.
    pub(crate) async fn next(&mut self, max: usize) -> Option<Polled> {
        let polled = match self.rest.take() {
            Some((generation, records)) => Polled::Records {
                generation,
                records,
            },
            None => loop {
                let chunk = self.chunks.recv().await?;
                if chunk.epoch == self.epoch {
                    self.behind = chunk.full;
                    break chunk.polled;
                }
            },
        };
        Some(match polled {
            Polled::Records {
                generation,
                mut records,
            } => {
                if records.len() > max.max(1) {
                    let rest = records.split_off(max.max(1));
                    self.rest = Some((generation, rest));
                }
                // Each partition's last record in the chunk (a chunk is mostly one
                // partition's run, so this is one map update, not one per record).
                for (i, r) in records.iter().enumerate() {
                    if records
                        .get(i + 1)
                        .is_none_or(|n| n.partition != r.partition)
                    {
                        self.taken.insert(r.partition, (r.offset + 1, generation));
                    }
                }
                Polled::Records {
                    generation,
                    records,
                }
            }
            error => error,
        })
    }

    /// Start a new epoch: read `again` again (each of its partitions goes back to its
    /// first record in it) and continue right after `committed` (each of its partitions
    /// goes to after its last record in it, whatever `again` says); any other partition
    /// goes back to after its last record taken under revocation count `generation`, or
    /// else to its first record read since. Whatever was read and not taken is read
    /// again.
    pub(crate) fn reposition(
        &mut self,
        generation: u64,
        again: &[RawRecord],
        committed: &[RawRecord],
    ) {
        // Taken under an older assignment: the partition may have moved on (or back to
        // its committed offset) since; where it is now is right.
        let mut positions: BTreeMap<i32, i64> = std::mem::take(&mut self.taken)
            .into_iter()
            .filter(|(_, (_, g))| *g == generation)
            .map(|(p, (offset, _))| (p, offset))
            .collect();
        for r in again.iter().rev() {
            positions.insert(r.partition, r.offset);
        }
        let mut after: BTreeMap<i32, i64> = BTreeMap::new();
        for r in committed {
            let next = after.entry(r.partition).or_insert(r.offset + 1);
            *next = (*next).max(r.offset + 1);
        }
        positions.extend(after);
        self.epoch += 1;
        self.rest = None;
        let _ = self.repositions.send(Reposition {
            epoch: self.epoch,
            positions,
        });
    }

    /// Stop the thread and wait for it (at most one poll).
    pub(crate) async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.chunks.close();
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// The reading thread: poll, hand over in chunks, move partitions when asked.
fn read(
    consumer: &QueryConsumer,
    topic: &str,
    revocations: &AtomicU64,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Chunk>,
    requests: &std_mpsc::Receiver<Reposition>,
) {
    let mut epoch = 0;
    // Per partition, the first offset read in this epoch and generation: where it goes
    // back to when the query has taken none of it.
    let mut first_read: HashMap<i32, i64> = HashMap::new();
    // The partition of the last record read, when `first_read` has it already.
    let mut noted: Option<i32> = None;
    let mut generation = revocations.load(Ordering::SeqCst);
    let mut records: Vec<RawRecord> = Vec::with_capacity(CHUNK_RECORDS);
    let mut bytes = 0;
    while !stop.load(Ordering::SeqCst) {
        // Between chunks only: what is read before a request is handled belongs to the
        // epoch before, and the query drops it.
        while records.is_empty() {
            let Ok(request) = requests.try_recv() else {
                break;
            };
            noted = None;
            let mut positions = request.positions;
            for (p, first) in first_read.drain() {
                positions.entry(p).or_insert(first);
            }
            for (p, offset) in positions {
                if let Err(e) =
                    consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(5))
                {
                    tracing::debug!(topic, partition = p, error = %e, "not repositioned");
                }
            }
            epoch = request.epoch;
        }
        let wait = if records.is_empty() {
            POLL_WAIT
        } else {
            Duration::ZERO
        };
        let polled = consumer.poll(wait);
        let now = revocations.load(Ordering::SeqCst);
        if now != generation {
            // A rebalance: what was read before is not part of what is read after.
            if !records.is_empty() && !hand_over(tx, epoch, generation, &mut records, false) {
                return;
            }
            bytes = 0;
            first_read.clear();
            noted = None;
            generation = now;
        }
        match polled {
            Some(Ok(m)) => {
                let r = raw(&m);
                if noted != Some(r.partition) {
                    first_read.entry(r.partition).or_insert(r.offset);
                    noted = Some(r.partition);
                }
                bytes += r.size();
                records.push(r);
                if records.len() >= CHUNK_RECORDS || bytes >= CHUNK_BYTES {
                    if !hand_over(tx, epoch, generation, &mut records, true) {
                        return;
                    }
                    bytes = 0;
                }
            }
            Some(Err(e)) => {
                if !records.is_empty() && !hand_over(tx, epoch, generation, &mut records, false) {
                    return;
                }
                bytes = 0;
                let error = Chunk {
                    epoch,
                    polled: Polled::Error(e),
                    full: false,
                };
                if tx.blocking_send(error).is_err() {
                    return;
                }
            }
            None => {
                if !records.is_empty() && !hand_over(tx, epoch, generation, &mut records, false) {
                    return;
                }
                bytes = 0;
            }
        }
    }
}

/// Send `records` as a chunk; `false` when the query has stopped listening.
fn hand_over(
    tx: &mpsc::Sender<Chunk>,
    epoch: u64,
    generation: u64,
    records: &mut Vec<RawRecord>,
    full: bool,
) -> bool {
    let records = std::mem::replace(records, Vec::with_capacity(CHUNK_RECORDS));
    tx.blocking_send(Chunk {
        epoch,
        polled: Polled::Records {
            generation,
            records,
        },
        full,
    })
    .is_ok()
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        value: m.payload().map(<[u8]>::to_vec),
    }
}
