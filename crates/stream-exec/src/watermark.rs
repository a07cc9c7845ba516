//! Stream time and watermarks.
//!
//! Each source partition's stream time is the largest event time seen on it. A record is
//! late when its window ended (plus grace) at or before its partition's stream time, as
//! ksqlDB judges lateness per partition. The watermark that closes windows is the minimum
//! stream time over the partitions that have delivered records, so a slow partition holds
//! windows open and a partition that never received a record does not.

use std::collections::HashMap;

/// Stream time per partition.
#[derive(Debug, Default, Clone)]
pub struct StreamTime {
    partitions: HashMap<i32, i64>,
}

impl StreamTime {
    /// Observe a record at `ts` on `partition`; returns the partition's stream time after it.
    pub fn observe(&mut self, partition: i32, ts: i64) -> i64 {
        let t = self.partitions.entry(partition).or_insert(i64::MIN);
        *t = (*t).max(ts);
        *t
    }

    /// The watermark: the minimum stream time over partitions that have seen records.
    pub fn watermark(&self) -> Option<i64> {
        self.partitions.values().copied().min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_slowest_active_partition() {
        let mut st = StreamTime::default();
        assert_eq!(st.watermark(), None);
        st.observe(0, 100);
        st.observe(1, 50);
        st.observe(0, 80);
        assert_eq!(st.watermark(), Some(50));
        st.observe(1, 200);
        assert_eq!(st.watermark(), Some(100));
    }
}
