//! Stream time and watermarks.
//!
//! Each source partition's stream time is the largest event time seen on it. The
//! watermark that closes windows is the minimum stream time over the query's partitions:
//! the partitions it was assigned (a partition without records yet holds it back) and
//! every partition that delivered records. A partition that delivered nothing for longer
//! than the idle timeout stops holding the watermark back until it delivers again; when
//! every partition is idle, those with records count. The watermark never goes backwards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy)]
struct Partition {
    /// Largest event time seen; `None` before the first record.
    stream_time: Option<i64>,
    /// When the partition last delivered a record (or was assigned).
    active_at: Instant,
    /// Whether the consumer holds it now. A partition the consumer group has not given
    /// this query (yet, or again) cannot deliver, so it never counts as idle: its records
    /// are waiting, not missing.
    assigned: bool,
}

impl Partition {
    fn new(now: Instant) -> Self {
        Self {
            stream_time: None,
            active_at: now,
            assigned: true,
        }
    }
}

/// The stream time of each partition that delivered records, and the watermark.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct StreamTimeCheckpoint {
    /// (partition, stream time).
    pub partitions: Vec<(i32, i64)>,
    /// The watermark.
    pub watermark: Option<i64>,
}

/// Stream time per partition and the watermark over them.
#[derive(Debug, Clone)]
pub struct StreamTime {
    partitions: HashMap<i32, Partition>,
    idle_timeout: Option<Duration>,
    watermark: Option<i64>,
}

impl Default for StreamTime {
    fn default() -> Self {
        Self::new(None)
    }
}

impl StreamTime {
    /// Stream time with the given idle timeout (`None`: partitions never count as idle).
    pub fn new(idle_timeout: Option<Duration>) -> Self {
        Self {
            partitions: HashMap::new(),
            idle_timeout,
            watermark: None,
        }
    }

    /// The query reads `partitions` from `now` on; those without records hold the
    /// watermark back until they deliver or go idle.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = i32>, now: Instant) {
        for p in partitions {
            self.partitions.entry(p).or_insert(Partition::new(now));
        }
    }

    /// The consumer holds exactly `assigned` from `now` on. A partition given (back) to it
    /// starts its idle time afresh; the others hold the watermark until they come back.
    pub fn set_assigned(&mut self, assigned: &std::collections::HashSet<i32>, now: Instant) {
        for p in assigned {
            self.partitions.entry(*p).or_insert(Partition::new(now));
        }
        for (id, p) in self.partitions.iter_mut() {
            let now_assigned = assigned.contains(id);
            if now_assigned && !p.assigned {
                p.active_at = now;
            }
            p.assigned = now_assigned;
        }
    }

    /// Observe a record at `ts` on `partition`; returns the partition's stream time after it.
    pub fn observe(&mut self, partition: i32, ts: i64, now: Instant) -> i64 {
        let p = self
            .partitions
            .entry(partition)
            .or_insert(Partition::new(now));
        p.active_at = now;
        let t = p.stream_time.map_or(ts, |t| t.max(ts));
        p.stream_time = Some(t);
        t
    }

    /// The watermark as of `now`: the minimum stream time over partitions that are not
    /// idle (over all that have records when every partition is idle), never lower than
    /// before. `None` until that minimum exists.
    pub fn watermark(&mut self, now: Instant) -> Option<i64> {
        let is_idle = |p: &Partition| {
            p.assigned
                && self
                    .idle_timeout
                    .is_some_and(|t| now.saturating_duration_since(p.active_at) > t)
        };
        let all_idle = self.partitions.values().all(is_idle);
        let mut min: Option<i64> = None;
        for p in self.partitions.values() {
            if all_idle || !is_idle(p) {
                match p.stream_time {
                    Some(t) => min = Some(min.map_or(t, |m| m.min(t))),
                    // An active partition that has not delivered yet holds everything.
                    None if !all_idle => return self.watermark,
                    None => {}
                }
            }
        }
        if let Some(m) = min {
            self.watermark = Some(self.watermark.map_or(m, |w| w.max(m)));
        }
        self.watermark
    }

    /// What must survive a restart: each partition's stream time, and the watermark.
    pub fn checkpoint(&self) -> StreamTimeCheckpoint {
        let mut partitions: Vec<(i32, i64)> = self
            .partitions
            .iter()
            .filter_map(|(p, s)| s.stream_time.map(|t| (*p, t)))
            .collect();
        partitions.sort_unstable();
        StreamTimeCheckpoint {
            partitions,
            watermark: self.watermark,
        }
    }

    /// Continue from `checkpoint` at `now`: restored partitions count as active from now.
    pub fn restore(&mut self, checkpoint: &StreamTimeCheckpoint, now: Instant) {
        for &(p, t) in &checkpoint.partitions {
            let partition = self.partitions.entry(p).or_insert(Partition::new(now));
            partition.stream_time = Some(t);
            partition.active_at = now;
        }
        self.watermark = checkpoint.watermark;
    }

    /// The watermark last computed, without looking at the clock.
    pub fn current(&self) -> Option<i64> {
        self.watermark
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_is_the_slowest_active_partition() {
        let now = Instant::now();
        let mut st = StreamTime::default();
        assert_eq!(st.watermark(now), None);
        st.observe(0, 100, now);
        st.observe(1, 50, now);
        st.observe(0, 80, now);
        assert_eq!(st.watermark(now), Some(50));
        st.observe(1, 200, now);
        assert_eq!(st.watermark(now), Some(100));
    }

    #[test]
    fn assigned_partition_without_records_holds_the_watermark_until_idle() {
        let start = Instant::now();
        let mut st = StreamTime::new(Some(Duration::from_secs(10)));
        st.assign([0, 1], start);
        st.observe(0, 1_000, start);
        assert_eq!(st.watermark(start + Duration::from_secs(5)), None);
        assert_eq!(
            st.watermark(start + Duration::from_secs(11)),
            Some(1_000),
            "every partition is idle: those with records count"
        );
        st.observe(0, 2_000, start + Duration::from_secs(12));
        assert_eq!(st.watermark(start + Duration::from_secs(12)), Some(2_000));
    }

    #[test]
    fn a_partition_not_assigned_never_goes_idle() {
        let start = Instant::now();
        let mut st = StreamTime::new(Some(Duration::from_secs(10)));
        st.assign([0, 1], start);
        st.set_assigned(&[0].into_iter().collect(), start);
        st.observe(0, 1_000, start);
        let later = start + Duration::from_secs(30);
        st.observe(0, 50_000, later);
        assert_eq!(
            st.watermark(later),
            None,
            "partition 1 belongs to another group member for now: it holds the watermark"
        );
        st.set_assigned(&[0, 1].into_iter().collect(), later);
        assert_eq!(st.watermark(later + Duration::from_secs(5)), None);
        assert_eq!(
            st.watermark(later + Duration::from_secs(11)),
            Some(50_000),
            "assigned and silent past the timeout: idle"
        );
    }

    #[test]
    fn idle_partition_stops_holding_back_and_watermark_never_regresses() {
        let start = Instant::now();
        let mut st = StreamTime::new(Some(Duration::from_secs(10)));
        st.observe(0, 100, start);
        st.observe(1, 50, start);
        assert_eq!(st.watermark(start), Some(50));
        let later = start + Duration::from_secs(20);
        st.observe(0, 500, later);
        assert_eq!(st.watermark(later), Some(500), "partition 1 went idle");
        st.observe(1, 60, later);
        assert_eq!(st.watermark(later), Some(500), "never backwards");
    }
}
