//! Reading a query's source on a thread of its own.
//!
//! The thread takes the consumer's records in batches (from a [`FetchQueue`] the
//! assigned partitions are forwarded to) and hands them over in chunks (up to
//! [`CHUNK_RECORDS`] records or [`CHUNK_BYTES`] of payload, or fewer when no more are
//! waiting) through a channel of [`CHUNKS`] chunks. While the query processes and writes
//! a batch, the next one is read; when the channel is full the thread waits, and input
//! waits in Kafka, not in memory. The thread also serves the consumer's callbacks
//! (rebalances, commit results, errors), polling its queue between batches, as its polls
//! are the only ones; not while it waits for room in the channel (see
//! `docs/semantics.md` on a slow sink).
//!
//! When the query must read records again (a failed commit, a rebalance during a batch),
//! it asks the thread to move the partitions and starts a new *epoch*: the thread moves
//! them between two chunks, so everything it reads after belongs to the new epoch, and
//! chunks of older epochs (still in the channel, or read before it looked) are dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc as std_mpsc, Arc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::Offset;
use tokio::sync::mpsc;

use crate::consumer::QueryConsumer;
use crate::native::FetchQueue;
use crate::record::{Payload, RawRecord};

/// A chunk holds at most this many records...
const CHUNK_RECORDS: usize = 1024;
/// ...and at most about this many payload bytes.
const CHUNK_BYTES: usize = 256 << 10;
/// Chunks read ahead: at most 64k records or 16 MB waiting in the channel.
const CHUNKS: usize = 64;
/// How long a poll waits when there is nothing to hand over.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// How often the assigned partitions are forwarded to the fetch queue again. The context
/// forwards each partition as it is assigned; this is a safety net should librdkafka ever
/// drop a forwarding after that (it does when a partition's fetching stops), so that a
/// partition cannot stall.
const FORWARD_AGAIN: Duration = Duration::from_secs(1);

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
    /// The query and its source topic, for the log.
    query_id: String,
    topic: String,
}

impl Reader {
    /// Start reading `topic` for query `query_id` through `consumer` (subscribed
    /// already); `revocations` is the consumer's count of partition revocations.
    pub(crate) fn start(
        query_id: &str,
        consumer: Arc<QueryConsumer>,
        fetch: Arc<FetchQueue>,
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
                .spawn(move || {
                    read(
                        &consumer,
                        &fetch,
                        &topic,
                        &revocations,
                        &stop,
                        &tx,
                        &requests,
                    );
                })?
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
            query_id: query_id.to_string(),
            topic: topic.to_string(),
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
                let dropped = drop_repeats(&self.taken, generation, &mut records);
                if dropped > 0 {
                    tracing::warn!(
                        query_id = %self.query_id,
                        topic = %self.topic,
                        dropped,
                        "the consumer went back to records this query has read already, \
                         with no rebalance and no request to read them again; they are \
                         dropped, not processed twice"
                    );
                }
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

/// Drop from `records` (read under revocation count `generation`) those at or before a
/// record of their partition taken already under the same count, or before a record
/// ahead of them in `records`; returns how many were dropped.
///
/// Within an epoch and an assignment a partition's offsets only grow: the query moves
/// partitions back only by starting a new epoch, and a rebalance changes the count. A
/// consumer that goes back anyway (should librdkafka reset a partition's position, say
/// after a broker restart) would have the query process records twice; they are dropped
/// instead. Cheap when nothing goes back: one comparison per record, and per run of a
/// partition's records one lookup among the chunk's few partitions.
fn drop_repeats(
    taken: &BTreeMap<i32, (i64, u64)>,
    generation: u64,
    records: &mut Vec<RawRecord>,
) -> usize {
    let next_of = |p: i32| match taken.get(&p) {
        Some(&(next, g)) if g == generation => next,
        _ => i64::MIN,
    };
    // Each partition's next offset so far in this chunk: a partition can come in more
    // than one run.
    let mut runs: Vec<(i32, i64)> = vec![];
    let mut back = false;
    let mut i = 0;
    while i < records.len() && !back {
        let partition = records[i].partition;
        let run = match runs.iter().position(|(p, _)| *p == partition) {
            Some(run) => run,
            None => {
                runs.push((partition, next_of(partition)));
                runs.len() - 1
            }
        };
        let mut next = runs[run].1;
        while i < records.len() && records[i].partition == partition {
            back |= records[i].offset < next;
            next = records[i].offset + 1;
            i += 1;
        }
        runs[run].1 = next;
    }
    if !back {
        return 0;
    }
    let before = records.len();
    let mut next: HashMap<i32, i64> = HashMap::new();
    records.retain(|r| {
        let n = next
            .entry(r.partition)
            .or_insert_with(|| next_of(r.partition));
        let keep = r.offset >= *n;
        if keep {
            *n = r.offset + 1;
        }
        keep
    });
    before - records.len()
}

/// The reading thread: take records, hand them over in chunks, move partitions when asked.
fn read(
    consumer: &QueryConsumer,
    fetch: &FetchQueue,
    topic: &str,
    revocations: &AtomicU64,
    stop: &AtomicBool,
    tx: &mpsc::Sender<Chunk>,
    requests: &std_mpsc::Receiver<Reposition>,
) {
    let mut chunker = Chunker {
        tx,
        epoch: 0,
        generation: revocations.load(Ordering::SeqCst),
        records: Vec::with_capacity(CHUNK_RECORDS),
        bytes: 0,
        first_read: HashMap::new(),
        noted: None,
        closed: false,
    };
    let mut forwarded = Instant::now();
    while !stop.load(Ordering::SeqCst) && !chunker.closed {
        if forwarded.elapsed() >= FORWARD_AGAIN {
            forwarded = Instant::now();
            if let Ok(assigned) = consumer.assignment() {
                for e in assigned.elements_for_topic(topic) {
                    fetch.forward(topic, e.partition());
                }
            }
        }
        // Between chunks only: what is read before a request is handled belongs to the
        // epoch before, and the query drops it.
        while chunker.records.is_empty() {
            let Ok(request) = requests.try_recv() else {
                break;
            };
            chunker.noted = None;
            let mut positions = request.positions;
            for (p, first) in chunker.first_read.drain() {
                positions.entry(p).or_insert(first);
            }
            for (p, offset) in positions {
                if let Err(e) =
                    consumer.seek(topic, p, Offset::Offset(offset), Duration::from_secs(5))
                {
                    tracing::debug!(topic, partition = p, error = %e, "not repositioned");
                }
            }
            chunker.epoch = request.epoch;
        }
        // The consumer's own queue, without waiting: rebalances (its context forwards
        // newly assigned partitions to `fetch`), errors, commit results, and the records
        // of a partition that could not be forwarded.
        let polled = consumer.poll(Duration::ZERO).map(|p| p.map(|m| raw(&m)));
        let now = revocations.load(Ordering::SeqCst);
        if now != chunker.generation {
            // A rebalance: what was read before is not part of what is read after.
            chunker.send(false);
            chunker.first_read.clear();
            chunker.noted = None;
            chunker.generation = now;
        }
        let polled_any = polled.is_some();
        if let Some(polled) = polled {
            chunker.take(polled);
        }
        if chunker.closed {
            return;
        }
        // Whatever is waiting, up to a full chunk, without waiting.
        let room = CHUNK_RECORDS - chunker.records.len();
        if fetch.take(Duration::ZERO, room, &mut |r| chunker.take(r)) == 0 && !polled_any {
            if chunker.records.is_empty() {
                // Nothing to hand over: wait for one record (a batch take waits until
                // it has all it asked for), then take the rest of what came.
                fetch.take(POLL_WAIT, 1, &mut |r| chunker.take(r));
            } else {
                // Nothing more is waiting.
                chunker.send(false);
            }
        }
    }
}

/// Records read and not handed over yet, and where they were read.
struct Chunker<'a> {
    tx: &'a mpsc::Sender<Chunk>,
    epoch: u64,
    /// The consumer's revocation count the records were read under.
    generation: u64,
    records: Vec<RawRecord>,
    /// Payload bytes in `records`, about.
    bytes: usize,
    /// Per partition, the first offset read in this epoch and generation: where it goes
    /// back to when the query has taken none of it.
    first_read: HashMap<i32, i64>,
    /// The partition of the last record read, when `first_read` has it already.
    noted: Option<i32>,
    /// The query stopped listening.
    closed: bool,
}

impl Chunker<'_> {
    /// Add a record read (handing the chunk over once full), or hand over what was read
    /// and then the consumer error.
    fn take(&mut self, polled: Result<RawRecord, KafkaError>) {
        match polled {
            Ok(r) => {
                if self.noted != Some(r.partition) {
                    self.first_read.entry(r.partition).or_insert(r.offset);
                    self.noted = Some(r.partition);
                }
                self.bytes += r.size();
                self.records.push(r);
                if self.records.len() >= CHUNK_RECORDS || self.bytes >= CHUNK_BYTES {
                    self.send(true);
                }
            }
            Err(e) => {
                self.send(false);
                let error = Chunk {
                    epoch: self.epoch,
                    polled: Polled::Error(e),
                    full: false,
                };
                if !self.closed && self.tx.blocking_send(error).is_err() {
                    self.closed = true;
                }
            }
        }
    }

    /// Hand the records read over as a chunk, if there are any; `full` when more were
    /// waiting.
    fn send(&mut self, full: bool) {
        self.bytes = 0;
        if self.records.is_empty() || self.closed {
            return;
        }
        let records = std::mem::replace(&mut self.records, Vec::with_capacity(CHUNK_RECORDS));
        let chunk = Chunk {
            epoch: self.epoch,
            polled: Polled::Records {
                generation: self.generation,
                records,
            },
            full,
        };
        if self.tx.blocking_send(chunk).is_err() {
            self.closed = true;
        }
    }
}

fn raw(m: &BorrowedMessage<'_>) -> RawRecord {
    RawRecord {
        partition: m.partition(),
        offset: m.offset(),
        timestamp_ms: m.timestamp().to_millis(),
        value: m.payload().map(Payload::from),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(partition: i32, offsets: std::ops::Range<i64>) -> Vec<RawRecord> {
        offsets
            .map(|offset| RawRecord {
                partition,
                offset,
                timestamp_ms: Some(0),
                value: None,
            })
            .collect()
    }

    fn offsets(records: &[RawRecord]) -> Vec<(i32, i64)> {
        records.iter().map(|r| (r.partition, r.offset)).collect()
    }

    #[test]
    fn records_ahead_of_those_taken_are_kept() {
        let taken = BTreeMap::from([(0, (10, 1)), (1, (5, 1))]);
        let mut records = [at(0, 10..13), at(1, 5..7), at(2, 0..2)].concat();
        let all = offsets(&records);
        assert_eq!(drop_repeats(&taken, 1, &mut records), 0);
        assert_eq!(offsets(&records), all);
    }

    #[test]
    fn a_partition_gone_back_loses_what_was_taken_already() {
        // Partition 0 was taken up to offset 9; the consumer starts it again at 0.
        let taken = BTreeMap::from([(0, (10, 1))]);
        let mut records = [at(1, 0..2), at(0, 0..12)].concat();
        assert_eq!(drop_repeats(&taken, 1, &mut records), 10);
        assert_eq!(offsets(&records), [(1, 0), (1, 1), (0, 10), (0, 11)]);
    }

    #[test]
    fn going_back_within_a_chunk_is_caught_too() {
        let mut records = [at(0, 0..4), at(0, 2..6)].concat();
        assert_eq!(drop_repeats(&BTreeMap::new(), 1, &mut records), 2);
        assert_eq!(
            offsets(&records),
            (0..6).map(|o| (0, o)).collect::<Vec<_>>()
        );
    }

    #[test]
    fn going_back_in_a_later_run_of_the_same_chunk_is_caught_too() {
        let mut records = [at(0, 0..4), at(1, 0..2), at(0, 1..5)].concat();
        assert_eq!(drop_repeats(&BTreeMap::new(), 1, &mut records), 3);
        assert_eq!(
            offsets(&records),
            [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0), (1, 1), (0, 4)]
        );
    }

    #[test]
    fn after_a_rebalance_a_partition_may_start_again_earlier() {
        // Taken under revocation count 1; read again under count 2 (from the commit).
        let taken = BTreeMap::from([(0, (10, 1))]);
        let mut records = at(0, 3..8);
        assert_eq!(drop_repeats(&taken, 2, &mut records), 0);
        assert_eq!(records.len(), 5);
    }
}
