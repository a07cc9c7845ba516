//! The topics a persistent query reads back when it starts: its state changelog (see
//! [`crate::state`]) and, for a table, its own result topic, which holds the rows pull
//! queries see.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::types::{RDKafkaErrorCode, RDKafkaRespErr};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::{ExecError, Result};
use crate::frames;
use crate::kafka::client_config;

/// How long reading a topic back may go without a record read (or a partition's end) before
/// it counts as failed (and is retried).
const READ_TIMEOUT: Duration = Duration::from_secs(120);

/// The changelog topic of the query whose consumer group is `group_id`.
pub fn changelog_topic(group_id: &str) -> String {
    format!("{group_id}-changelog")
}

/// Create `topic` as a compacted, one-partition changelog, unless it exists.
pub async fn ensure_changelog(bootstrap_servers: &str, topic: &str) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap_servers)
        .set("allow.auto.create.topics", "false")
        .create()
        .map_err(|e| ExecError::kafka("creating an admin client", e))?;
    let new = NewTopic::new(topic, 1, TopicReplication::Fixed(-1)).set("cleanup.policy", "compact");
    let results = admin
        .create_topics([&new], &AdminOptions::new())
        .await
        .map_err(|e| ExecError::kafka(format!("creating the changelog {topic}"), e))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(ExecError::kafka(
                    format!("creating the changelog {topic}"),
                    KafkaError::AdminOp(code),
                ))
            }
        }
    }
    Ok(())
}

/// Whether `topic` exists, as far as the metadata `consumer` gets from a broker it is
/// connected to says: asking is cheaper than [`ensure_changelog`]'s new admin client and
/// request to the controller. `false` when the metadata cannot be had.
pub fn topic_exists<C: ConsumerContext>(consumer: &BaseConsumer<C>, topic: &str) -> bool {
    consumer
        .fetch_metadata(Some(topic), Duration::from_secs(5))
        .is_ok_and(|m| {
            m.topics()
                .iter()
                .any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        })
}

/// One record read back: its key and value (`None`: a tombstone).
pub type KeyedRecord = (Vec<u8>, Option<Vec<u8>>);

/// Every committed record of `topic` written before the reading starts, in offset order per
/// partition (so in order per key). A transaction still open then (or committed, but its
/// markers not yet written, as just after a commit) is waited for. A topic that does not
/// exist reads as empty.
pub async fn read_topic(bootstrap_servers: &str, topic: &str) -> Result<Vec<KeyedRecord>> {
    let (records, _) = read_topic_each(bootstrap_servers, topic, (vec![], collect)).await?;
    Ok(records)
}

fn collect(records: &mut Vec<KeyedRecord>, key: &[u8], value: Option<&[u8]>) -> Result<()> {
    records.push((key.to_vec(), value.map(<[u8]>::to_vec)));
    Ok(())
}

/// Hand every committed record of `topic` (as [`read_topic`] reads them) to `each`, with
/// its key and value (`None`: a tombstone), without copying them; `each` gets `into` with
/// each record, and `into` is returned. An error from `each` ends the reading.
pub async fn read_topic_each<T, F>(
    bootstrap_servers: &str,
    topic: &str,
    into: (T, F),
) -> Result<(T, F)>
where
    T: Send + 'static,
    F: FnMut(&mut T, &[u8], Option<&[u8]>) -> Result<()> + Send + 'static,
{
    let bootstrap_servers = bootstrap_servers.to_string();
    let topic = topic.to_string();
    blocking(move || {
        let (mut into, mut each) = into;
        let back = ReadBack::open(&bootstrap_servers, &topic)?;
        back.read(&back.whole()?, |k, v| each(&mut into, k, v))?;
        Ok((into, each))
    })
    .await
}

/// A query's state changelog, opened to be read back: a consumer connected to the
/// cluster, and the topic's partitions.
pub struct Changelog(ReadBack);

impl Changelog {
    /// Open `topic` (a topic that does not exist reads as empty).
    pub async fn open(bootstrap_servers: &str, topic: &str) -> Result<Self> {
        let (bootstrap_servers, topic) = (bootstrap_servers.to_string(), topic.to_string());
        blocking(move || ReadBack::open(&bootstrap_servers, &topic).map(Self)).await
    }

    /// The records its state is read back from: from its last snapshot on
    /// ([`frames::last_snapshot`]), or all when it has none. The changelog is read
    /// backwards from its end, in growing stretches, until one holds a snapshot's start:
    /// the records before it, which compaction deletes only once their segment is closed
    /// (by default after 1 GB), are not read.
    pub async fn read(self) -> Result<Vec<KeyedRecord>> {
        blocking(move || {
            let Self(back) = self;
            let records = back.since_last_snapshot();
            // Closing the consumer can take a tenth of a second, which the query need
            // not wait for.
            std::thread::spawn(move || drop(back));
            records
        })
        .await
    }
}

/// The records of the state changelog `topic` that its state is read back from (see
/// [`Changelog::read`]).
pub async fn read_changelog(bootstrap_servers: &str, topic: &str) -> Result<Vec<KeyedRecord>> {
    Changelog::open(bootstrap_servers, topic)
        .await?
        .read()
        .await
}

/// Offsets read back first from the end of a changelog: a few frames' worth.
const FIRST_STRETCH: i64 = 256;
/// How long metadata and watermarks may take.
const METADATA_TIMEOUT: Duration = Duration::from_secs(30);

async fn blocking<T: Send + 'static>(
    read: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(read)
        .await
        .map_err(|_| ExecError::kafka("reading a topic back", KafkaError::Canceled))?
}

/// A consumer for reading a topic back, and the topic's partitions.
struct ReadBack {
    /// Reads committed records only.
    consumer: BaseConsumer<Quiet>,
    /// Asks for partitions' ends. `consumer` cannot: a consumer of committed records is
    /// told the last stable offset, which stops before the records of a transaction whose
    /// markers are not written yet, and a commit is answered before they are.
    ends: BaseConsumer<Quiet>,
    topic: String,
    partitions: Vec<i32>,
}

/// What to read of one partition: from `from` to before offset `until`.
struct Range {
    partition: i32,
    from: Offset,
    until: i64,
}

impl ReadBack {
    /// A consumer for `topic` (none of whose partitions are assigned yet).
    fn open(bootstrap_servers: &str, topic: &str) -> Result<Self> {
        let context = || format!("reading {topic} back");
        let ends: BaseConsumer<Quiet> = client_config(bootstrap_servers)
            .set("group.id", "sluice-restore")
            .set("isolation.level", "read_uncommitted")
            .set("allow.auto.create.topics", "false")
            .create_with_context(Quiet)
            .map_err(|e| ExecError::kafka(context(), e))?;
        let consumer: BaseConsumer<Quiet> = client_config(bootstrap_servers)
            .set("group.id", "sluice-restore")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("isolation.level", "read_committed")
            .set("allow.auto.create.topics", "false")
            // An offset the log no longer has (deleted meanwhile) reads from its start, not
            // from its end: what is left is read, not skipped.
            .set("auto.offset.reset", "earliest")
            // Once its prefetch queue is full, librdkafka waits this long before fetching
            // again (default 1 s): reading back drains the queue in well under that, so
            // with the default it read in bursts with most of a second between them.
            .set("fetch.queue.backoff.ms", "10")
            // The end of a partition is known from a fetch that finds nothing more, which
            // the broker holds this long (default 500 ms) for records that might come.
            .set("fetch.wait.max.ms", "10")
            .create_with_context(Quiet)
            .map_err(|e| ExecError::kafka(context(), e))?;
        let metadata = consumer
            .fetch_metadata(Some(topic), METADATA_TIMEOUT)
            .map_err(|e| ExecError::kafka(context(), e))?;
        let mut partitions = vec![];
        for t in metadata.topics() {
            match t.error() {
                None => partitions.extend(t.partitions().iter().map(|p| p.id())),
                // The topic does not exist (yet): it reads as empty.
                Some(RDKafkaRespErr::RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART) => {}
                // A leader being elected, say: the caller retries, rather than read nothing.
                Some(e) => {
                    return Err(ExecError::kafka(
                        context(),
                        KafkaError::MetadataFetch(e.into()),
                    ))
                }
            }
        }
        Ok(Self {
            consumer,
            ends,
            topic: topic.to_string(),
            partitions,
        })
    }

    /// The records of this changelog from its last snapshot on (see [`Changelog::read`]).
    fn since_last_snapshot(&self) -> Result<Vec<KeyedRecord>> {
        let &[partition] = self.partitions.as_slice() else {
            // Not a changelog Sluice created (it has one partition): read it all.
            let mut records = vec![];
            self.read(&self.whole()?, |k, v| collect(&mut records, k, v))?;
            return Ok(records);
        };
        let (low, high) = self.ends(partition)?;
        if high <= low {
            return Ok(vec![]);
        }
        let (mut records, mut until, mut stretch) = (vec![], high, FIRST_STRETCH);
        loop {
            let from = until.saturating_sub(stretch).max(low);
            let mut earlier = vec![];
            let range = Range {
                partition,
                from: Offset::Offset(from),
                until,
            };
            self.read(&[range], |k, v| collect(&mut earlier, k, v))?;
            let snapshot = frames::last_snapshot(&earlier);
            earlier.append(&mut records);
            records = earlier;
            if let Some(at) = snapshot {
                return Ok(records.split_off(at));
            }
            if from <= low {
                return Ok(records);
            }
            until = from;
            stretch = stretch.saturating_mul(4);
        }
    }

    /// Note `partition` as read to its end, and stop fetching it: a query writing to the
    /// topic meanwhile would keep it delivering.
    fn finished(&self, partition: i32, done: &mut HashSet<i32>) {
        done.insert(partition);
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        if let Err(e) = self.consumer.pause(&list) {
            tracing::debug!(topic = %self.topic, partition, error = %e, "not paused");
        }
    }

    /// Every partition, from the beginning to its end as of now: records written after
    /// this call (a query writing while its table is read back) are not read.
    fn whole(&self) -> Result<Vec<Range>> {
        let mut ranges = vec![];
        for &partition in &self.partitions {
            let (low, high) = self.ends(partition)?;
            if high > low {
                ranges.push(Range {
                    partition,
                    from: Offset::Beginning,
                    until: high,
                });
            }
        }
        Ok(ranges)
    }

    /// The first offset `partition` has, and the offset after the last record written to
    /// it, committed or not.
    fn ends(&self, partition: i32) -> Result<(i64, i64)> {
        self.ends
            .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            .map_err(|e| ExecError::kafka(self.context(), e))
    }

    /// The offset after the last record of `partition` this consumer has been handed (or
    /// skipped: an aborted record, a transaction marker); `None` before the first.
    fn position(&self, partition: i32) -> Result<Option<i64>> {
        let positions = self
            .consumer
            .position()
            .map_err(|e| ExecError::kafka(self.context(), e))?;
        Ok(positions
            .find_partition(&self.topic, partition)
            .and_then(|p| match p.offset() {
                Offset::Offset(at) => Some(at),
                _ => None,
            }))
    }

    /// Whether the end of `range` just reported (a PartitionEOF) is past its records.
    ///
    /// A consumer of committed records reaches an end at the partition's last stable
    /// offset: before the first record of a transaction still open. When that is before
    /// `until`, its records are not all read yet: the transaction is waited for (its
    /// markers move the end once written, which is reported again). `settled` holds the
    /// partitions read anew from where they were once no transaction before `until` was
    /// open: their next end is past it.
    fn past_until(&self, range: &Range, settled: &mut HashSet<i32>) -> Result<bool> {
        let partition = range.partition;
        let position = self.position(partition)?;
        if settled.contains(&partition) || position.is_some_and(|at| at >= range.until) {
            return Ok(true);
        }
        let (_, last_stable) = self
            .consumer
            .fetch_watermarks(&self.topic, partition, METADATA_TIMEOUT)
            .map_err(|e| ExecError::kafka(self.context(), e))?;
        if last_stable >= range.until {
            // Every transaction before `until` is over, but the end reported may have been
            // reached before: the records left (if any: the log can have a gap there, left
            // by compaction) are read by reading on anew, whose first end is past `until`.
            let from = position.map_or(range.from, Offset::Offset);
            self.consumer
                .seek(&self.topic, partition, from, METADATA_TIMEOUT)
                .map_err(|e| ExecError::kafka(self.context(), e))?;
            settled.insert(partition);
        } else {
            tracing::info!(
                topic = %self.topic,
                partition,
                last_stable,
                until = range.until,
                "reading back waits for an open transaction"
            );
        }
        Ok(false)
    }

    fn context(&self) -> String {
        format!("reading {} back", self.topic)
    }

    /// What reading `ranges` waited for when it stopped making progress: each partition
    /// not read to its end yet, where it was and where it was to stop.
    fn stalled(&self, ranges: &[Range], done: &HashSet<i32>, settled: &HashSet<i32>) -> String {
        let waiting: Vec<String> = ranges
            .iter()
            .filter(|r| !done.contains(&r.partition))
            .map(|r| {
                let at = match self.position(r.partition) {
                    Ok(Some(at)) => at.to_string(),
                    Ok(None) => "no record yet".to_string(),
                    Err(e) => e.to_string(),
                };
                let settled = if settled.contains(&r.partition) {
                    ", read anew"
                } else {
                    ""
                };
                format!(
                    "partition {}: read to {at}, to read to {}{settled}",
                    r.partition, r.until
                )
            })
            .collect();
        format!(
            "{}: nothing read for {} s ({})",
            self.context(),
            READ_TIMEOUT.as_secs(),
            waiting.join("; ")
        )
    }

    /// Hand the committed records of `ranges` to `each`, in offset order per partition.
    fn read<F>(&self, ranges: &[Range], mut each: F) -> Result<()>
    where
        F: FnMut(&[u8], Option<&[u8]>) -> Result<()>,
    {
        if ranges.is_empty() {
            return Ok(());
        }
        let mut assignment = TopicPartitionList::new();
        for r in ranges {
            assignment
                .add_partition_offset(&self.topic, r.partition, r.from)
                .map_err(|e| ExecError::kafka(self.context(), e))?;
        }
        self.consumer
            .assign(&assignment)
            .map_err(|e| ExecError::kafka(self.context(), e))?;
        // A partition paused at the end of an earlier range stays paused when assigned
        // again.
        self.consumer
            .resume(&assignment)
            .map_err(|e| ExecError::kafka(self.context(), e))?;
        let by_partition: HashMap<i32, &Range> = ranges.iter().map(|r| (r.partition, r)).collect();
        let (mut done, mut settled) = (HashSet::new(), HashSet::new());
        // Reading fails when it stops making progress, however long the topic.
        let mut deadline = Instant::now() + READ_TIMEOUT;
        let (mut read, mut seen) = (0u64, 0u64);
        // The end of a partition (see `past_until`) is reported as a PartitionEOF event.
        while done.len() < ranges.len() {
            match self.consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) if !done.contains(&m.partition()) => {
                    if by_partition
                        .get(&m.partition())
                        .is_some_and(|r| m.offset() >= r.until)
                    {
                        self.finished(m.partition(), &mut done);
                        read += 1;
                    } else {
                        each(m.key().unwrap_or_default(), m.payload())?;
                        read += 1;
                        // No clock read per record: it would cost as much as the record.
                        continue;
                    }
                }
                // Fetched before its partition was paused: not progress.
                Some(Ok(_)) => {}
                Some(Err(KafkaError::PartitionEOF(p))) if !done.contains(&p) => {
                    if let Some(range) = by_partition.get(&p) {
                        if self.past_until(range, &mut settled)? {
                            self.finished(p, &mut done);
                            read += 1;
                        }
                    }
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {}
                // The caller retries (a broker outage, say) and reports it.
                Some(Err(e)) => return Err(ExecError::kafka(self.context(), e)),
                None => {}
            }
            let now = Instant::now();
            if read != seen {
                seen = read;
                deadline = now + READ_TIMEOUT;
            } else if now > deadline {
                return Err(ExecError::kafka(
                    self.stalled(ranges, &done, &settled),
                    KafkaError::MessageConsumption(RDKafkaErrorCode::OperationTimedOut),
                ));
            }
        }
        Ok(())
    }
}

/// A client context that does not log the end of a partition as an error: reaching it
/// is the point.
struct Quiet;

impl ClientContext for Quiet {
    fn error(&self, error: KafkaError, reason: &str) {
        if !matches!(error, KafkaError::PartitionEOF(_)) {
            tracing::debug!(error = %error, reason, "reading back");
        }
    }
}

impl ConsumerContext for Quiet {}
