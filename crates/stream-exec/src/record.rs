//! `RawRecord`: a Kafka record as the source hands it to the pipeline.

use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// One record read from a source topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// Partition it was read from.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// The Kafka record timestamp in epoch milliseconds, when it has one.
    pub timestamp_ms: Option<i64>,
    /// The value bytes; `None` for a tombstone.
    pub value: Option<Payload>,
}

impl RawRecord {
    /// About how many bytes it holds.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>() + self.value.as_ref().map_or(0, |v| v.len())
    }
}

/// A record's value: a range of a buffer that the records taken from librdkafka in one
/// call share (see [`crate::native::FetchQueue::take`]), so a payload is no allocation
/// of its own. 16 bytes, which keeps a [`RawRecord`] at 48: a batch's vector of 524,288
/// records then stays under glibc's largest threshold for mapping a block afresh (32
/// MiB), and its memory is reused instead of faulted in again for every batch.
#[derive(Clone)]
pub struct Payload {
    buffer: Arc<Vec<u8>>,
    start: u32,
    len: u32,
}

impl Payload {
    /// Bytes `start..start + len` of `buffer`. The range must lie in the buffer, and a
    /// buffer is at most 4 GiB (a take of 1,024 records of Kafka's 1 MB default limit).
    pub(crate) fn slice(buffer: &Arc<Vec<u8>>, start: usize, len: usize) -> Self {
        assert!(
            start + len <= buffer.len(),
            "a payload's range lies in its buffer"
        );
        Self {
            buffer: buffer.clone(),
            start: u32::try_from(start).expect("a take's buffer is under 4 GiB"),
            len: u32::try_from(len).expect("a take's buffer is under 4 GiB"),
        }
    }
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        Self::slice(&Arc::new(bytes), 0, len)
    }
}

impl From<&[u8]> for Payload {
    fn from(bytes: &[u8]) -> Self {
        bytes.to_vec().into()
    }
}

impl Deref for Payload {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        let start = self.start as usize;
        &self.buffer[start..start + self.len as usize]
    }
}

impl PartialEq for Payload {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Payload {}

impl fmt::Debug for Payload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_48_bytes_and_a_payload_reads_its_range() {
        assert_eq!(std::mem::size_of::<RawRecord>(), 48);
        let buffer = Arc::new(b"onetwothree".to_vec());
        let two = Payload::slice(&buffer, 3, 3);
        assert_eq!(&*two, b"two");
        assert_eq!(two, Payload::from(&b"two"[..]));
        assert_eq!(&*Payload::slice(&buffer, 11, 0), b"");
        assert_eq!(format!("{two:?}"), format!("{:?}", b"two"));
    }
}
