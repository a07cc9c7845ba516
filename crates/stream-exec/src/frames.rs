//! Changelog frames: a query's state changes go to its changelog packed into few, large
//! records instead of one record per changed entry.
//!
//! A windowed query with 100,000 keys changes most of them in every batch, and producing a
//! record costs librdkafka more than twice what reading one does (the `throughput`
//! benchmark's raw pipe). So, under exactly-once, a batch's changed entries are written
//! back to back into *frames* of about [`FRAME_BYTES`], each one record: a batch of
//! 100,000 changed entries of 80 bytes is about 250 records, not 100,000.
//!
//! The changelog stays a compacted topic. A frame's key is `0xFF` and its sequence number
//! (entry keys are text, which never holds that byte), so compaction never merges frames;
//! instead, once the frames written since the last snapshot hold [`SNAPSHOT_AFTER`] times
//! the state of that snapshot, the query writes a *snapshot*: every live entry, taken
//! from the operators' own state ([`crate::Pipeline::take_state_snapshot`]), in frames the
//! first of which says "start from nothing", after a tombstone for every record written
//! before, which compaction then removes. The changelog thus holds a few times the state.
//! A snapshot's tombstones and frames are in one transaction, so a reader sees both or
//! neither. At-least-once, without transactions, a query writes one record per entry; one
//! that finds frames in its changelog first writes every entry it read back as a record
//! of its own, then tombstones for the records before ([`Frames::unpack`]); those of the
//! frames go with the batch after, once the entries' records are acknowledged.
//!
//! Read back in offset order, a record of one entry sets or deletes it, and a frame's
//! entries are applied over the entries before it (a snapshot's first frame clears them
//! first); a frame's tombstone changes no entry. So a changelog may hold both forms, in
//! any order (a query that changed its processing guarantee).
//!
//! A frame's value: a version byte, a flag byte (1: apply; 2: clear, then apply, the first
//! frame of a snapshot; 3: apply, a snapshot's next frame), then entries, each a key
//! length (`u32` little-endian), the key, a value length (`u32`, [`DELETED`] for a
//! deleted entry) and the value.

use std::collections::{HashMap, HashSet};

use crate::changelog::KeyedRecord;
use crate::error::{ExecError, Result};
use crate::pipeline::Pipeline;
use crate::state::StateChange;

/// About how many bytes a frame holds; one entry larger than this is a frame of its own.
/// Well inside Kafka's default record size limit (1 MB), and below glibc's 64 KiB, past
/// which freeing a buffer sweeps the allocator's small free lists: with frames of 256 KiB
/// that sweep, and the pages the allocator gave back and took again, cost more than the
/// records saved.
pub const FRAME_BYTES: usize = 32 << 10;
/// A snapshot is due once the frames since the last one hold this many times its bytes
/// (or [`MIN_SNAPSHOT_BYTES`], if more).
pub const SNAPSHOT_AFTER: usize = 4;
/// The least a snapshot counts as, so a tiny state is not written after every batch.
/// (Writing a small state again is cheap: its bytes, and a tombstone per frame since.)
pub const MIN_SNAPSHOT_BYTES: usize = 4 << 10;
/// The first byte of a frame's key.
const FRAME_KEY: u8 = 0xFF;
const VERSION: u8 = 1;
const APPLY: u8 = 1;
const CLEAR_THEN_APPLY: u8 = 2;
const SNAPSHOT_MORE: u8 = 3;
/// The value length of a deleted entry.
const DELETED: u32 = u32::MAX;

/// State entries read back: each entry key's latest value.
pub type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// How a query writes its pipeline's state to its changelog: in frames, with a snapshot
/// when one is due (exactly-once), or a record per entry (at-least-once).
#[derive(Debug, Default)]
pub struct StateWriter {
    frames: Frames,
    exactly_once: bool,
    /// Records to write before the next changes ([`Frames::unpack`]).
    pending: Vec<StateChange>,
    /// Records to write with the batch after those: the unpacking's tombstones for
    /// frames, only once its entries' records are acknowledged (at-least-once, records
    /// may land out of order within a batch).
    after: Vec<StateChange>,
}

impl StateWriter {
    /// For a changelog read back as `records` (in offset order): the entries to restore
    /// the pipeline from, and the writer that goes on from them.
    pub fn read_back(records: Vec<KeyedRecord>, exactly_once: bool) -> Result<(Entries, Self)> {
        let (entries, mut frames) = Frames::read_back(records)?;
        let (pending, after) = match !exactly_once && frames.has_frames() {
            true => frames.unpack(&entries),
            false => (vec![], vec![]),
        };
        let writer = Self {
            frames,
            exactly_once,
            pending,
            after,
        };
        Ok((entries, writer))
    }

    /// The changelog records of `pipeline`'s state changes since the last call.
    pub fn take(&mut self, pipeline: &mut Pipeline) -> Result<Vec<StateChange>> {
        let mut out = std::mem::replace(&mut self.pending, std::mem::take(&mut self.after));
        if !self.exactly_once {
            out.extend(pipeline.take_state_changes()?);
        } else if self.frames.wants_snapshot() {
            let snapshot = self.frames.pack_snapshot(&pipeline.take_state_snapshot()?);
            tracing::debug!(
                records = snapshot.len(),
                bytes = self.frames.snapshot_bytes,
                "a snapshot of the state goes to the changelog"
            );
            out.extend(snapshot);
        } else {
            out.extend(self.frames.pack(&pipeline.take_state_changes()?));
        }
        Ok(out)
    }
}

/// What a query has written to its changelog: enough to pack the next state changes
/// into frames, to know when a snapshot is due, and what a snapshot deletes.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Frames {
    /// Keys of the records in the changelog not yet deleted: what a snapshot deletes.
    records: HashSet<Vec<u8>>,
    /// Bytes of the entries in the last snapshot (or read back).
    snapshot_bytes: usize,
    /// Bytes written since the last snapshot (read back: in the changelog after it).
    since_snapshot: usize,
    /// The next frame's sequence number.
    next: u64,
}

impl Frames {
    /// The entries of a changelog read back (`records`, in offset order), and what was
    /// written to it.
    pub fn read_back(records: Vec<KeyedRecord>) -> Result<(Entries, Self)> {
        let mut frames = Self::default();
        let mut entries = Entries::new();
        // Entries before the last snapshot are cleared by it: only their keys count (what
        // the next snapshot deletes, the numbers used).
        let last_snapshot = last_snapshot(&records).unwrap_or(0);
        for (i, (key, value)) in records.into_iter().enumerate() {
            let framed = is_frame(&key);
            if framed {
                // A deleted frame's number too: numbers are not used twice.
                let after = sequence(&key)?
                    .checked_add(1)
                    .ok_or_else(|| malformed("the last sequence number"))?;
                frames.next = frames.next.max(after);
            }
            let applied = i >= last_snapshot;
            match value {
                None => {
                    frames.records.remove(&key);
                    if !framed && applied {
                        entries.remove(&key);
                    }
                }
                Some(value) => {
                    let bytes = key.len() + value.len();
                    if applied && framed {
                        match apply(&value, &mut entries)? {
                            CLEAR_THEN_APPLY => frames.since_snapshot = 0,
                            SNAPSHOT_MORE => {}
                            _ => frames.since_snapshot += bytes,
                        }
                    } else if applied {
                        entries.insert(key.clone(), value);
                        frames.since_snapshot += bytes;
                    }
                    frames.records.insert(key);
                }
            }
        }
        frames.snapshot_bytes = entries.iter().map(|(k, v)| entry_bytes(k, Some(v))).sum();
        Ok((entries, frames))
    }

    /// Whether the next records should be a snapshot ([`Frames::pack_snapshot`]).
    pub fn wants_snapshot(&self) -> bool {
        self.since_snapshot > SNAPSHOT_AFTER * self.snapshot_bytes.max(MIN_SNAPSHOT_BYTES)
    }

    /// The changelog records for `changes`, in order: frames holding them.
    pub fn pack(&mut self, changes: &[StateChange]) -> Vec<StateChange> {
        if changes.is_empty() {
            return vec![];
        }
        let mut out = Packer::new(self, APPLY, APPLY);
        for change in changes {
            out.entry(&change.key, change.value.as_deref());
        }
        let frames = out.finish();
        self.since_snapshot += frames.iter().map(written_bytes).sum::<usize>();
        self.records.extend(frames.iter().map(|f| f.key.clone()));
        frames
    }

    /// The changelog records of a snapshot of `entries`, every live entry (deleted ones
    /// are skipped): a tombstone for each record written before, then frames of the
    /// entries, the first of which clears what was read before it.
    pub fn pack_snapshot(&mut self, entries: &[StateChange]) -> Vec<StateChange> {
        let mut out = Packer::new(self, CLEAR_THEN_APPLY, SNAPSHOT_MORE);
        let mut bytes = 0;
        for entry in entries {
            if let Some(value) = &entry.value {
                out.entry(&entry.key, Some(value));
                bytes += entry_bytes(&entry.key, Some(value));
            }
        }
        let snapshot = out.finish();
        let before = std::mem::replace(
            &mut self.records,
            snapshot.iter().map(|f| f.key.clone()).collect(),
        );
        self.snapshot_bytes = bytes;
        self.since_snapshot = 0;
        let mut records: Vec<StateChange> = in_written_order(before.into_iter().collect())
            .into_iter()
            .map(|key| StateChange { key, value: None })
            .collect();
        records.extend(snapshot);
        records
    }

    /// Whether the changelog holds frames not yet deleted.
    pub fn has_frames(&self) -> bool {
        self.records.iter().any(|key| is_frame(key))
    }

    /// For a query that writes one record per entry (at-least-once), on a changelog with
    /// frames ([`Frames::has_frames`]), before anything else, in two parts:
    /// - the `entries` it read back as records of their own, in key order, and tombstones
    ///   for the older records of entries that are gone;
    /// - tombstones for the frames, in the order written, to write once the first part is
    ///   acknowledged.
    ///
    /// Written so, the changelog reads back whole wherever the writing stops; the next
    /// records can be of one entry each.
    pub fn unpack(&mut self, entries: &Entries) -> (Vec<StateChange>, Vec<StateChange>) {
        let gone: Vec<Vec<u8>> = std::mem::take(&mut self.records)
            .into_iter()
            .filter(|key| !entries.contains_key(key))
            .collect();
        self.records = entries.keys().cloned().collect();
        let (frames, records): (Vec<_>, Vec<_>) = in_written_order(gone)
            .into_iter()
            .partition(|key| is_frame(key));
        let tombstone = |key| StateChange { key, value: None };
        let mut first = in_key_order(entries);
        first.extend(records.into_iter().map(tombstone));
        (first, frames.into_iter().map(tombstone).collect())
    }

    /// The key of the next frame.
    fn next_key(&mut self) -> Vec<u8> {
        let mut key = Vec::with_capacity(9);
        key.push(FRAME_KEY);
        key.extend_from_slice(&self.next.to_be_bytes());
        self.next += 1;
        key
    }
}

/// Record keys in the order their tombstones go: entries' records before frames, and
/// frames in the order written. So the compaction that removes a frame holding an entry's
/// deletion has removed the frames before it, which may hold the entry.
fn in_written_order(mut keys: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    keys.sort_by(|a, b| (is_frame(a), a).cmp(&(is_frame(b), b)));
    keys
}

/// `entries` as changes that set them, in key order.
fn in_key_order(entries: &Entries) -> Vec<StateChange> {
    let mut out: Vec<StateChange> = entries
        .iter()
        .map(|(key, value)| StateChange {
            key: key.clone(),
            value: Some(value.clone()),
        })
        .collect();
    out.sort_by(|a, b| a.key.cmp(&b.key));
    out
}

/// Bytes of a record as written.
fn written_bytes(record: &StateChange) -> usize {
    record.key.len() + record.value.as_ref().map_or(0, Vec::len)
}

/// Writes entries into frames of about [`FRAME_BYTES`].
struct Packer<'a> {
    frames: &'a mut Frames,
    /// The frame being filled: its header, then entries.
    value: Vec<u8>,
    /// The flag of the frames after the first.
    more: u8,
    out: Vec<StateChange>,
}

/// A frame's header: the version and the flag.
const HEADER: usize = 2;

impl<'a> Packer<'a> {
    /// A packer whose first frame has `first` for its flag, and the others `more`.
    fn new(frames: &'a mut Frames, first: u8, more: u8) -> Self {
        Self {
            frames,
            value: new_frame(first),
            more,
            out: vec![],
        }
    }

    fn entry(&mut self, key: &[u8], value: Option<&[u8]>) {
        let size = entry_bytes(key, value);
        if self.value.len() > HEADER && self.value.len() + size > FRAME_BYTES {
            self.flush();
        }
        // Entry keys and values are far below 4 GiB (Kafka's record limit is 1 MB).
        self.value
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.value.extend_from_slice(key);
        match value {
            Some(v) => {
                self.value
                    .extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.value.extend_from_slice(v);
            }
            None => self.value.extend_from_slice(&DELETED.to_le_bytes()),
        }
    }

    fn flush(&mut self) {
        let value = std::mem::replace(&mut self.value, new_frame(self.more));
        let key = self.frames.next_key();
        self.out.push(StateChange {
            key,
            value: Some(value),
        });
    }

    /// The frames, with one (clearing, or empty) when the first says to clear.
    fn finish(mut self) -> Vec<StateChange> {
        if self.value.len() > HEADER || self.value[1] == CLEAR_THEN_APPLY {
            self.flush();
        }
        self.out
    }
}

/// An empty frame with `flag`.
fn new_frame(flag: u8) -> Vec<u8> {
    let mut value = Vec::with_capacity(FRAME_BYTES);
    value.extend_from_slice(&[VERSION, flag]);
    value
}

/// Where the last snapshot of a changelog (`records`, in offset order) starts, if it has
/// one. Read back from there, a changelog gives what it gives read whole: a snapshot
/// deletes every record before it, so they count for nothing after it.
pub fn last_snapshot(records: &[KeyedRecord]) -> Option<usize> {
    records.iter().rposition(|(key, value)| {
        is_frame(key) && value.as_ref().and_then(|v| v.get(1)) == Some(&CLEAR_THEN_APPLY)
    })
}

/// Bytes an entry takes in a frame.
fn entry_bytes(key: &[u8], value: Option<&[u8]>) -> usize {
    8 + key.len() + value.map_or(0, <[u8]>::len)
}

fn is_frame(key: &[u8]) -> bool {
    key.first() == Some(&FRAME_KEY)
}

fn sequence(key: &[u8]) -> Result<u64> {
    key.get(1..9)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| ExecError::State("a changelog frame with a malformed key".into()))
}

/// Apply the frame `value` to `entries`; returns its flag.
fn apply(value: &[u8], entries: &mut HashMap<Vec<u8>, Vec<u8>>) -> Result<u8> {
    let mut r = Reader(value);
    let version = r.take(1)?[0];
    if version != VERSION {
        return Err(malformed(&format!(
            "version {version}; this build reads {VERSION}"
        )));
    }
    let flag = r.take(1)?[0];
    match flag {
        APPLY | SNAPSHOT_MORE => {}
        CLEAR_THEN_APPLY => entries.clear(),
        _ => return Err(malformed(&format!("flag {flag}"))),
    }
    while !r.0.is_empty() {
        let key_len = r.len()?;
        let key = r.take(key_len as usize)?;
        match r.len()? {
            DELETED => {
                entries.remove(key);
            }
            n => {
                let value = r.take(n as usize)?;
                // A tail updates the same entries over and over: an entry's value is
                // overwritten in place, without allocating its key and value again.
                match entries.get_mut(key) {
                    Some(old) => {
                        old.clear();
                        old.extend_from_slice(value);
                    }
                    None => {
                        entries.insert(key.to_vec(), value.to_vec());
                    }
                }
            }
        }
    }
    Ok(flag)
}

fn malformed(what: &str) -> ExecError {
    ExecError::State(format!("a malformed changelog frame: {what}"))
}

/// The bytes of a frame not read yet.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.0.len() < n {
            return Err(malformed("cut short"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }

    fn len(&mut self) -> Result<u32> {
        let bytes = self.take(4)?;
        Ok(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn change(key: &str, value: Option<&str>) -> StateChange {
        StateChange {
            key: key.as_bytes().to_vec(),
            value: value.map(|v| v.as_bytes().to_vec()),
        }
    }

    fn records(changes: &[StateChange]) -> Vec<KeyedRecord> {
        changes
            .iter()
            .map(|c| (c.key.clone(), c.value.clone()))
            .collect()
    }

    /// What Kafka's compaction leaves of `log` once it has cleaned the records before
    /// `end`, and tombstones before `expired` (at most `end`) are past
    /// `delete.retention.ms`: a record goes when a later one of its key is before `end`,
    /// and so does a tombstone before `expired` that is the last of its key. (The cleaner
    /// goes from the start of the log up to the active segment; it removes every record
    /// with a later one of its key in what it read, and a tombstone after its retention.)
    fn compacted(log: &[KeyedRecord], end: usize, expired: usize) -> Vec<KeyedRecord> {
        let mut next: Vec<Option<usize>> = vec![None; log.len()];
        let mut last: HashMap<&[u8], usize> = HashMap::new();
        for (i, (key, _)) in log.iter().enumerate() {
            if let Some(before) = last.insert(key, i) {
                next[before] = Some(i);
            }
        }
        log.iter()
            .enumerate()
            .filter(|(i, (_, value))| match next[*i] {
                Some(later) => later >= end,
                None => value.is_some() || *i >= expired,
            })
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// The live entries of `expected` as a snapshot takes them, in key order.
    fn snapshot_of(expected: &Entries) -> Vec<StateChange> {
        in_key_order(expected)
    }

    fn apply_changes(expected: &mut HashMap<Vec<u8>, Vec<u8>>, changes: &[StateChange]) {
        for c in changes {
            match &c.value {
                Some(v) => expected.insert(c.key.clone(), v.clone()),
                None => expected.remove(&c.key),
            };
        }
    }

    /// `log` read back whole, once it has read back the same from its last snapshot on,
    /// as a query reads it (`changelog::Changelog::read`).
    fn read_back_both_ways(log: &[KeyedRecord]) -> Result<(Entries, Frames), TestCaseError> {
        let whole = Frames::read_back(log.to_vec()).unwrap();
        let from = last_snapshot(log).unwrap_or(0);
        let suffix = Frames::read_back(log[from..].to_vec()).unwrap();
        prop_assert_eq!(&suffix, &whole, "read from the last snapshot on");
        Ok(whole)
    }

    #[test]
    fn a_batch_of_many_changes_is_a_few_records() {
        let mut frames = Frames::default();
        let changes: Vec<StateChange> = (0..100_000)
            .map(|i| change(&format!("0:{{\"card\":\"c{i:06}\"}}"), Some("[1,2.5,17]")))
            .collect();
        let written = frames.pack(&changes);
        assert!(written.len() <= 200, "{} records", written.len());
        let (entries, _) = Frames::read_back(records(&written)).unwrap();
        assert_eq!(entries.len(), 100_000);
        assert_eq!(
            entries[&b"0:{\"card\":\"c004711\"}"[..]],
            b"[1,2.5,17]".to_vec()
        );
    }

    #[test]
    fn a_snapshot_deletes_every_record_before_it_and_stands_for_them() {
        // A changelog written before frames (or at-least-once): one record per entry.
        let mut log = records(&[
            change("0:a", Some("1")),
            change("0:b", Some("2")),
            change("0:a", None),
            change("0:c", Some("3")),
        ]);
        let (entries, mut frames) = Frames::read_back(log.clone()).unwrap();
        let mut expected: HashMap<Vec<u8>, Vec<u8>> = [("0:b", "2"), ("0:c", "3")]
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), v.as_bytes().to_vec()))
            .collect();
        assert_eq!(entries, expected);
        // Frames until a snapshot is due: with this little state, past 16 KiB.
        let big = "x".repeat(1000);
        let mut batches = 0;
        while !frames.wants_snapshot() {
            let changes = vec![change(&format!("0:k{}", batches % 3), Some(&big))];
            log.extend(records(&frames.pack(&changes)));
            apply_changes(&mut expected, &changes);
            batches += 1;
        }
        assert_eq!(batches, 17);
        apply_changes(&mut expected, &[change("0:b", None)]);
        let snapshot = frames.pack_snapshot(&snapshot_of(&expected));
        // Tombstones first: of the two entry records left and of the 17 frames.
        let tombstones = snapshot.iter().take_while(|r| r.value.is_none()).count();
        assert_eq!(tombstones, 2 + 17);
        assert!(snapshot[..tombstones]
            .iter()
            .any(|r| r.key == b"0:c" && r.value.is_none()));
        assert!(snapshot[tombstones..].iter().all(|r| is_frame(&r.key)));
        assert!(!frames.wants_snapshot());
        log.extend(records(&snapshot));
        // A record of one entry after frames (the query went at-least-once) still counts.
        log.extend(records(&[change("0:c", Some("4"))]));
        expected.insert(b"0:c".to_vec(), b"4".to_vec());
        let (entries, read) = Frames::read_back(log.clone()).unwrap();
        assert_eq!(entries, expected);
        assert_eq!(read.next, frames.next);
        assert!(
            !read.wants_snapshot(),
            "the snapshot read back is not counted again"
        );
        let left = compacted(&log, log.len(), log.len());
        assert!(left.len() < 10, "{} records left", left.len());
        let (entries, _) = Frames::read_back(left).unwrap();
        assert_eq!(entries, expected);
    }

    #[test]
    fn a_malformed_frame_is_an_error_not_a_panic() {
        let mut frames = Frames::default();
        let written = frames.pack(&[change("0:a", Some("1"))]);
        let (key, value) = records(&written).remove(0);
        let value = value.unwrap();
        for bad in [
            &value[..value.len() - 1],
            &value[..1],
            &[9, 1][..],
            &[1, 7][..],
        ] {
            let got = Frames::read_back(vec![(key.clone(), Some(bad.to_vec()))]);
            assert!(
                matches!(&got, Err(ExecError::State(m)) if m.contains("malformed changelog frame")),
                "{got:?}"
            );
        }
        assert!(Frames::read_back(vec![(vec![FRAME_KEY, 1], Some(value))]).is_err());
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        /// Batches of changes written as a query writes them: exactly-once, frames and a
        /// snapshot when one is due; at-least-once, records of one entry each (after
        /// unpacking frames). Restarts among them (read back, go on), and at some the
        /// query changes its guarantee. The changelog reads back as the changes applied in
        /// order, whole and after any compaction, and compaction leaves it at most a few
        /// times the largest state.
        #[test]
        fn the_changelog_reads_back_as_the_changes_applied(
            batches in prop::collection::vec(
                (
                    prop::collection::vec((0u8..40, prop::option::of(0usize..40_000)), 0..60),
                    0u8..10,
                ),
                1..40,
            ),
            cleaned in 0usize..=100,
            expired in 0usize..=100,
        ) {
            let mut frames = Frames::default();
            let mut log: Vec<KeyedRecord> = vec![];
            let mut expected: HashMap<Vec<u8>, Vec<u8>> = HashMap::new();
            let mut exactly_once = true;
            let (mut largest, mut largest_batch) = (0, 0);
            for (batch, how) in batches {
                if how <= 1 {
                    // A restart; at 1 with the other guarantee.
                    let (entries, read) = read_back_both_ways(&log)?;
                    prop_assert_eq!(&entries, &expected, "at a restart");
                    frames = read;
                    exactly_once ^= how == 1;
                    if !exactly_once && frames.has_frames() {
                        let (first, then) = frames.unpack(&entries);
                        log.extend(records(&first));
                        log.extend(records(&then));
                    }
                }
                let changes: Vec<StateChange> = batch
                    .iter()
                    .map(|(key, size)| StateChange {
                        key: format!("0:{{\"k\":{key}}}").into_bytes(),
                        value: size.map(|n| vec![b'a' + (n % 26) as u8; n]),
                    })
                    .collect();
                apply_changes(&mut expected, &changes);
                largest = largest.max(expected.iter().map(|(k, v)| entry_bytes(k, Some(v))).sum());
                let written = match exactly_once {
                    true if frames.wants_snapshot() => frames.pack_snapshot(&snapshot_of(&expected)),
                    true => frames.pack(&changes),
                    false => changes,
                };
                largest_batch = largest_batch.max(written.iter().map(written_bytes).sum());
                log.extend(records(&written));
            }
            let (entries, _) = Frames::read_back(log.clone()).unwrap();
            prop_assert_eq!(&entries, &expected, "whole");
            let end = log.len() * cleaned / 100;
            let left = compacted(&log, end, end * expired / 100);
            let (entries, _) = read_back_both_ways(&left)?;
            prop_assert_eq!(&entries, &expected, "compacted");
            if exactly_once {
                let all = compacted(&log, log.len(), log.len());
                let kept: usize = all.iter().map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len)).sum();
                // The last snapshot, the frames after it (one batch past the threshold at
                // most), and entry records (40 keys) with tombstones.
                let bound = (SNAPSHOT_AFTER + 1) * largest.max(MIN_SNAPSHOT_BYTES)
                    + largest_batch
                    + 40 * 40_100;
                prop_assert!(kept <= bound, "{} bytes kept, {} at most", kept, bound);
            }
        }
    }
}
