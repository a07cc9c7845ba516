//! `SessionIndex`: the open sessions of every key of a session aggregation (see
//! [`super::session_aggregate`]), without their aggregate states.
//!
//! Keys are numbered densely by a [`GroupIndex`]; sessions by slot, a number the
//! aggregate states ([`super::group_states::GroupStates`]) and written rows
//! ([`super::written_rows::WrittenRows`]) are indexed by too. A slot's bounds, key and
//! flags live in plain vectors; a key's sessions form a list through the slots, sorted by
//! start, so no session costs an allocation of its own and a slot is reused once its
//! session closed.
//!
//! Closing is driven by one entry per slot in use, the session's close time when the
//! entry was made, kept in buckets of about a second of close times in time order. A
//! session's close time only grows, so an entry that comes due with a stale time is filed
//! again with the current one, instead of moving an entry on every record. A session
//! merged into another keeps its slot until its entry comes due, so no slot ever has two
//! entries.

use std::collections::BTreeMap;

use datafusion::common::hash_utils::RandomState;

use super::group_index::{hash_key, GroupIndex};
use crate::error::Result;

/// No slot, no key.
pub(crate) const NONE: u32 = u32::MAX;

/// Slot flags: an open session.
const OPEN: u8 = 1;
/// Merged into another session; freed when its closing entry comes due.
const MERGED: u8 = 2;
/// Changed by the current batch, not yet written (EMIT CHANGES).
pub(crate) const CHANGED: u8 = 4;
/// Its row was written and passed HAVING (EMIT CHANGES); `written` holds its bounds.
pub(crate) const WRITTEN: u8 = 8;

/// log2 of the width of a bucket of close times, in milliseconds.
const BUCKET_BITS: u32 = 10;

/// Compact the key index once at least half its keys are unused, and it has this many.
const COMPACT_MIN_KEYS: usize = 4096;

/// Where records went: the slot of the session now holding them.
pub(crate) struct Join {
    pub(crate) slot: u32,
    /// The slot is new: the per-slot states must grow by one.
    pub(crate) new_slot: bool,
}

/// One session slot, its fields together since they are read together.
#[derive(Debug, Clone, Copy)]
struct Slot {
    start: i64,
    last: i64,
    /// The bounds its row was last written with (`WRITTEN`).
    written: (i64, i64),
    key: u32,
    /// The next session of its key, by start.
    next: u32,
    /// The session it was merged into during the current batch.
    merged_into: u32,
    flags: u8,
}

/// The open sessions of every key. See the module docs.
pub(crate) struct SessionIndex {
    gap_ms: i64,
    grace_ms: i64,
    keys: GroupIndex,
    hasher: RandomState,
    /// Per key: its first session (by start), or `NONE`.
    head: Vec<u32>,
    /// Per key: changed since its state was last taken.
    key_dirty: Vec<bool>,
    /// The keys with `key_dirty` set.
    dirty: Vec<u32>,
    /// Per key: its position among the current batch's keys, or `NONE`.
    batch_key: Vec<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// (close time when pushed, slot), one per slot in use, in buckets by close time.
    closing: BTreeMap<i64, Vec<(i64, u32)>>,
    open: usize,
    keys_with_sessions: usize,
}

impl SessionIndex {
    /// No sessions, for sessions of `gap_ms` closing `grace_ms` after they end.
    pub(crate) fn new(gap_ms: i64, grace_ms: i64) -> Self {
        Self {
            gap_ms,
            grace_ms,
            keys: GroupIndex::new(),
            hasher: RandomState::default(),
            head: vec![],
            key_dirty: vec![],
            dirty: vec![],
            batch_key: vec![],
            slots: vec![],
            free: vec![],
            closing: BTreeMap::new(),
            open: 0,
            keys_with_sessions: 0,
        }
    }

    /// Number of open sessions.
    pub(crate) fn open(&self) -> usize {
        self.open
    }

    /// The number of `key` (arrow row-format bytes), added if new.
    pub(crate) fn key_of(&mut self, key: &[u8]) -> Result<u32> {
        self.number(hash_key(&self.hasher, key), key)
    }

    /// The number of `key`, whose hash is `hash`, added if new.
    fn number(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        let (k, new) = self.keys.intern(hash, key)?;
        if new {
            self.head.push(NONE);
            self.key_dirty.push(false);
            self.batch_key.push(NONE);
        }
        Ok(k)
    }

    /// The number of each key of `keys` (arrow row-format bytes), added if new, in
    /// order. Its lookups prefetch ([`GroupIndex::prefetch_ahead`]).
    pub(crate) fn key_of_each<'a>(
        &mut self,
        keys: impl ExactSizeIterator<Item = &'a [u8]> + Clone,
    ) -> Result<Vec<u32>> {
        let hashes: Vec<u64> = keys
            .clone()
            .map(|key| hash_key(&self.hasher, key))
            .collect();
        let mut numbers = Vec::with_capacity(hashes.len());
        for (i, key) in keys.enumerate() {
            self.keys.prefetch_ahead(&hashes, i);
            numbers.push(self.number(hashes[i], key)?);
        }
        Ok(numbers)
    }

    /// The bytes of key `k`.
    pub(crate) fn key_bytes(&self, k: u32) -> &[u8] {
        self.keys.key(k)
    }

    /// Key `k`'s position among the current batch's keys, or `NONE`.
    pub(crate) fn batch_key(&self, k: u32) -> u32 {
        self.batch_key[k as usize]
    }

    /// Set key `k`'s position among the current batch's keys (`NONE` after the batch).
    pub(crate) fn set_batch_key(&mut self, k: u32, position: u32) {
        self.batch_key[k as usize] = position;
    }

    /// Mark key `k` as changed since its state was last taken.
    pub(crate) fn mark_dirty(&mut self, k: u32) {
        if !self.key_dirty[k as usize] {
            self.key_dirty[k as usize] = true;
            self.dirty.push(k);
        }
    }

    /// Mark every key with open sessions as changed.
    pub(crate) fn mark_all_dirty(&mut self) {
        for k in 0..self.head.len() {
            if self.head[k] != NONE {
                self.mark_dirty(k as u32);
            }
        }
    }

    /// The keys changed since the last call.
    pub(crate) fn take_dirty(&mut self) -> Vec<u32> {
        for &k in &self.dirty {
            self.key_dirty[k as usize] = false;
        }
        std::mem::take(&mut self.dirty)
    }

    /// Key `k`'s open sessions, by start.
    pub(crate) fn sessions(&self, k: u32) -> impl Iterator<Item = u32> + '_ {
        let some = |s: u32| (s != NONE).then_some(s);
        std::iter::successors(some(self.head[k as usize]), move |&s| {
            some(self.slots[s as usize].next)
        })
    }

    /// Slot `s`'s key.
    pub(crate) fn key(&self, s: u32) -> u32 {
        self.slots[s as usize].key
    }

    /// Slot `s`'s session bounds: its first and last record times.
    pub(crate) fn bounds(&self, s: u32) -> (i64, i64) {
        let slot = &self.slots[s as usize];
        (slot.start, slot.last)
    }

    /// When a session whose last record is at `last` closes.
    pub(crate) fn close_time(&self, last: i64) -> i64 {
        last.saturating_add(self.gap_ms)
            .saturating_add(self.grace_ms)
    }

    /// Whether slot `s` has all of `flags`.
    pub(crate) fn has(&self, s: u32, flags: u8) -> bool {
        self.slots[s as usize].flags & flags == flags
    }

    /// Set `flags` on slot `s`.
    pub(crate) fn set(&mut self, s: u32, flags: u8) {
        self.slots[s as usize].flags |= flags;
    }

    /// Clear `flags` on slot `s`.
    pub(crate) fn unset(&mut self, s: u32, flags: u8) {
        self.slots[s as usize].flags &= !flags;
    }

    /// The bounds slot `s`'s row was last written with.
    pub(crate) fn written(&self, s: u32) -> (i64, i64) {
        self.slots[s as usize].written
    }

    /// Slot `s`'s row was written with `bounds` (sets `WRITTEN`).
    pub(crate) fn set_written(&mut self, s: u32, bounds: (i64, i64)) {
        let slot = &mut self.slots[s as usize];
        slot.written = bounds;
        slot.flags |= WRITTEN;
    }

    /// The session that slot `s` ended up in after the current batch's merges.
    pub(crate) fn resolve(&self, mut s: u32) -> u32 {
        while self.slots[s as usize].merged_into != NONE {
            s = self.slots[s as usize].merged_into;
        }
        s
    }

    /// Forget the current batch's merges of `slots`.
    pub(crate) fn end_batch(&mut self, merged: &[u32]) {
        for &s in merged {
            self.slots[s as usize].merged_into = NONE;
        }
    }

    /// Schedule a look at slot `s` once the watermark passes `close`.
    fn schedule(&mut self, close: i64, s: u32) {
        self.closing
            .entry(close >> BUCKET_BITS)
            .or_default()
            .push((close, s));
    }

    /// A slot for a new session of key `k` from `start` to `last`, not yet in its key's
    /// list; closing is scheduled.
    fn allocate(&mut self, k: u32, (start, last): (i64, i64)) -> Join {
        let slot = Slot {
            start,
            last,
            written: (0, 0),
            key: k,
            next: NONE,
            merged_into: NONE,
            flags: OPEN,
        };
        let join = match self.free.pop() {
            Some(s) => {
                self.slots[s as usize] = slot;
                Join {
                    slot: s,
                    new_slot: false,
                }
            }
            None => {
                self.slots.push(slot);
                Join {
                    slot: self.slots.len() as u32 - 1,
                    new_slot: true,
                }
            }
        };
        self.schedule(self.close_time(last), join.slot);
        self.open += 1;
        join
    }

    /// Link slot `s` into key `k`'s list after `prev` (`NONE`: first), before `next`.
    fn link(&mut self, k: u32, prev: u32, s: u32, next: u32) {
        self.slots[s as usize].next = next;
        if prev == NONE {
            if self.head[k as usize] == NONE {
                self.keys_with_sessions += 1;
            }
            self.head[k as usize] = s;
        } else {
            self.slots[prev as usize].next = s;
        }
    }

    /// Add records of key `k` from `first` to `last` (at most a gap apart) to its
    /// sessions: every session within a gap of them merges into the first of those,
    /// which takes the records; without one, a new session does. The merged-away slots
    /// go to `merged`, in start order.
    pub(crate) fn join(
        &mut self,
        k: u32,
        (first, last): (i64, i64),
        merged: &mut Vec<u32>,
    ) -> Join {
        let gap = self.gap_ms;
        let (mut prev, mut cur) = (NONE, self.head[k as usize]);
        while cur != NONE && self.slots[cur as usize].last.saturating_add(gap) < first {
            prev = cur;
            cur = self.slots[cur as usize].next;
        }
        if cur == NONE || self.slots[cur as usize].start.saturating_sub(gap) > last {
            let join = self.allocate(k, (first, last));
            self.link(k, prev, join.slot, cur);
            return join;
        }
        let base = cur;
        let mut bounds = self.bounds(base);
        cur = self.slots[base as usize].next;
        while cur != NONE && self.slots[cur as usize].start.saturating_sub(gap) <= last {
            let slot = &mut self.slots[cur as usize];
            bounds = (bounds.0.min(slot.start), bounds.1.max(slot.last));
            slot.flags = (slot.flags & !OPEN) | MERGED;
            slot.merged_into = base;
            self.open -= 1;
            merged.push(cur);
            cur = slot.next;
        }
        let slot = &mut self.slots[base as usize];
        slot.next = cur;
        slot.start = bounds.0.min(first);
        slot.last = bounds.1.max(last);
        Join {
            slot: base,
            new_slot: false,
        }
    }

    /// Add a session of key `k` restored from a checkpoint, keeping the list by start.
    pub(crate) fn insert(&mut self, k: u32, bounds: (i64, i64)) -> Join {
        let (mut prev, mut cur) = (NONE, self.head[k as usize]);
        while cur != NONE && self.slots[cur as usize].start < bounds.0 {
            prev = cur;
            cur = self.slots[cur as usize].next;
        }
        let join = self.allocate(k, bounds);
        self.link(k, prev, join.slot, cur);
        join
    }

    /// Take the sessions out that the watermark closed: those whose close time is
    /// before `watermark_ms` (all at `i64::MAX`, the end of the stream). They go to
    /// `closed`, removed from their keys (which are marked dirty) but with their slots
    /// still held; slots of merged-away sessions whose time came go to `released`. Both
    /// must be handed back to [`SessionIndex::release`].
    pub(crate) fn close(
        &mut self,
        watermark_ms: i64,
        closed: &mut Vec<u32>,
        released: &mut Vec<u32>,
    ) {
        let due = |close: i64| close < watermark_ms || watermark_ms == i64::MAX;
        // Entries to look at again later: not due yet, or due with a stale close time.
        let mut later = vec![];
        while let Some(entry) = self.closing.first_entry() {
            if !due(*entry.key() << BUCKET_BITS) {
                break;
            }
            for (close, s) in entry.remove() {
                if !due(close) {
                    later.push((close, s));
                    continue;
                }
                if self.has(s, MERGED) {
                    released.push(s);
                    continue;
                }
                let now = self.close_time(self.slots[s as usize].last);
                if !due(now) {
                    later.push((now, s));
                    continue;
                }
                self.unlink(s);
                closed.push(s);
            }
        }
        for (close, s) in later {
            self.schedule(close, s);
        }
    }

    /// Take open slot `s` out of its key's list; the key is marked dirty.
    fn unlink(&mut self, s: u32) {
        let Slot { key: k, next, .. } = self.slots[s as usize];
        let (mut prev, mut cur) = (NONE, self.head[k as usize]);
        while cur != s {
            prev = cur;
            cur = self.slots[cur as usize].next;
        }
        if prev == NONE {
            self.head[k as usize] = next;
            if next == NONE {
                self.keys_with_sessions -= 1;
            }
        } else {
            self.slots[prev as usize].next = next;
        }
        self.slots[s as usize].flags &= !OPEN;
        self.open -= 1;
        self.mark_dirty(k);
    }

    /// Free `slots` (from [`SessionIndex::close`]) for new sessions.
    pub(crate) fn release(&mut self, slots: &[u32]) {
        for &s in slots {
            self.slots[s as usize].flags = 0;
            self.free.push(s);
        }
    }

    /// Renumber the keys without dropping any that have sessions or are dirty, once at
    /// least half of them are neither, so the keys of closed sessions do not pile up.
    pub(crate) fn compact(&mut self) -> Result<()> {
        let n = self.keys.len();
        let unused = n.saturating_sub(self.keys_with_sessions + self.dirty.len());
        if n < COMPACT_MIN_KEYS || unused * 2 < n {
            return Ok(());
        }
        let mut keys = GroupIndex::new();
        let mut renumber = vec![NONE; n];
        let (mut head, mut key_dirty) = (vec![], vec![]);
        for k in 0..n as u32 {
            let ku = k as usize;
            if self.head[ku] == NONE && !self.key_dirty[ku] {
                continue;
            }
            let bytes = self.keys.key(k);
            renumber[ku] = keys.intern(hash_key(&self.hasher, bytes), bytes)?.0;
            head.push(self.head[ku]);
            key_dirty.push(self.key_dirty[ku]);
        }
        for slot in &mut self.slots {
            if slot.flags & OPEN != 0 {
                slot.key = renumber[slot.key as usize];
            }
        }
        for k in &mut self.dirty {
            *k = renumber[*k as usize];
        }
        self.batch_key = vec![NONE; head.len()];
        self.keys = keys;
        self.head = head;
        self.key_dirty = key_dirty;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds(index: &SessionIndex, k: u32) -> Vec<(i64, i64)> {
        index.sessions(k).map(|s| index.bounds(s)).collect()
    }

    #[test]
    fn a_run_bridging_two_sessions_merges_them_into_the_first() {
        let mut index = SessionIndex::new(10, 0);
        let k = index.key_of(b"a").unwrap();
        let mut merged = vec![];
        let a = index.join(k, (0, 5), &mut merged).slot;
        let b = index.join(k, (20, 20), &mut merged).slot;
        let c = index.join(k, (100, 100), &mut merged).slot;
        assert_eq!(bounds(&index, k), [(0, 5), (20, 20), (100, 100)]);
        let joined = index.join(k, (12, 25), &mut merged);
        assert_eq!((joined.slot, joined.new_slot), (a, false));
        assert_eq!(merged, [b]);
        assert_eq!(index.resolve(b), a);
        assert_eq!(bounds(&index, k), [(0, 25), (100, 100)]);
        assert_eq!(index.open(), 2);
        // b's entry (close 30) frees its slot; a's (made at 15) finds a closing at 35.
        let (mut closed, mut released) = (vec![], vec![]);
        index.close(31, &mut closed, &mut released);
        assert_eq!(
            (closed.as_slice(), released.as_slice()),
            (&[][..], &[b][..])
        );
        index.close(i64::MAX, &mut closed, &mut released);
        closed.sort_unstable();
        assert_eq!(closed, [a, c]);
        index.release(&closed);
        index.release(&released);
        assert_eq!(index.open(), 0);
        assert_eq!(index.sessions(k).count(), 0);
        assert_eq!(index.take_dirty(), [k]);
        // Freed slots are reused.
        assert!(!index.join(k, (200, 200), &mut merged).new_slot);
    }

    #[test]
    fn compacting_keeps_the_keys_with_sessions() {
        let mut index = SessionIndex::new(10, 0);
        let mut merged = vec![];
        for i in 0..10_000u32 {
            let k = index.key_of(&i.to_le_bytes()).unwrap();
            index.join(k, (i64::from(i), i64::from(i)), &mut merged);
        }
        let (mut closed, mut released) = (vec![], vec![]);
        index.close(9_000, &mut closed, &mut released);
        index.release(&closed);
        index.take_dirty();
        index.compact().unwrap();
        assert_eq!(index.keys.len(), 1_010);
        let k = index.key_of(&9_999u32.to_le_bytes()).unwrap();
        assert_eq!(bounds(&index, k), [(9_999, 9_999)]);
        let s = index.sessions(k).next().unwrap();
        assert_eq!(index.key(s), k);
    }
}
