//! `RawRecord`: a Kafka record as the source hands it to the pipeline.

use bytes::Bytes;

/// One record read from a source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The Kafka record timestamp in epoch milliseconds, when it has one.
    pub timestamp_ms: Option<i64>,
    /// The value bytes; `None` for a tombstone. The records taken from librdkafka in one
    /// call share one buffer (see [`crate::native::FetchQueue::take`]).
    pub value: Option<Bytes>,
}

impl RawRecord {
    /// About how many bytes it holds.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.value.as_ref().map_or(0, Bytes::len)
    }
}
