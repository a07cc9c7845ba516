//! `WindowKeys`: the keys of a window aggregate's open windows, numbered once for all of
//! them (see [`super::window_aggregate`]), and what the changelog needs to know of each:
//! whether a group of it changed since state was last taken, how many open windows hold
//! it, and whether its record is due to be deleted.
//!
//! A key whose last window closed is deleted from the changelog when windows next close,
//! unless it is in a window again by then. Deleted keys stay numbered until they
//! outnumber the others, then the keys are numbered again without them; the windows
//! renumber their maps with the numbers [`WindowKeys::drop_deleted`] gives.

use datafusion::arrow::row::Rows;
use datafusion::common::hash_utils::RandomState;

use super::group_index::{hash_key, GroupIndex};
use super::key_groups::KeyGroups;
use crate::error::Result;

/// Key flags, one byte per key: in the `changed`, `left`, `retired` lists; its record was
/// deleted and no window has held it since.
const CHANGED: u8 = 1;
const LEFT: u8 = 2;
const RETIRED: u8 = 4;
const DELETED: u8 = 8;
/// Deleted keys stay numbered until there are more of them than of the others and than
/// this. Small in debug builds, so that every test with a few keys leaving windows also
/// numbers keys again.
const DELETED_SLACK: usize = if cfg!(debug_assertions) { 2 } else { 1 << 16 };

/// See the module docs.
pub(super) struct WindowKeys {
    /// Every key with a group in an open window, or whose changelog record may yet be
    /// deleted, numbered; and keys deleted since it was last built.
    index: GroupIndex,
    /// Per key: how many open windows have a group of it.
    held: Vec<u32>,
    /// Per key: `CHANGED`, `LEFT`, `RETIRED`, `DELETED`.
    flags: Vec<u8>,
    /// Keys with a group changed since state was last taken.
    changed: Vec<u32>,
    /// Whether a window closed since state was last taken.
    window_closed: bool,
    /// Keys that left every window (their last one closed) since state was last taken.
    left: Vec<u32>,
    /// Keys that left every window before that (or, after a restore, keys whose record
    /// held only closed windows): their records are deleted when windows next close
    /// unless the key is in a window again by then.
    retired: Vec<u32>,
    /// Keys marked `DELETED`.
    deleted: usize,
    /// Key numbers in key order, of the keys numbered before `sorted.len()` (see
    /// [`WindowKeys::in_key_order`]).
    sorted: Vec<u32>,
    hasher: RandomState,
}

impl WindowKeys {
    pub(super) fn new() -> Self {
        Self {
            index: GroupIndex::new(),
            held: vec![],
            flags: vec![],
            changed: vec![],
            window_closed: false,
            left: vec![],
            retired: vec![],
            deleted: 0,
            sorted: vec![],
            hasher: RandomState::default(),
        }
    }

    /// The bytes (arrow's row format) of key `k`.
    #[inline]
    pub(super) fn key(&self, k: u32) -> &[u8] {
        self.index.key(k)
    }

    /// The heap bytes it holds.
    pub(super) fn heap_bytes(&self) -> usize {
        self.index.heap_bytes()
            + self.held.capacity() * size_of::<u32>()
            + self.flags.capacity()
            + (self.changed.capacity()
                + self.left.capacity()
                + self.retired.capacity()
                + self.sorted.capacity())
                * size_of::<u32>()
    }

    /// The number of each row's key, each key counted as changed (a row changes its
    /// key's group in its window). With `hopping` windows, a row with the key of the row
    /// before (a record's rows, one per window, come one after the other) takes its
    /// number without hashing or a lookup.
    pub(super) fn numbers(&mut self, rows: &Rows, hopping: bool) -> Result<Vec<u32>> {
        let n = rows.num_rows();
        let firsts: Vec<usize> = if hopping {
            (0..n)
                .filter(|&r| r == 0 || rows.row(r).as_ref() != rows.row(r - 1).as_ref())
                .collect()
        } else {
            (0..n).collect()
        };
        let hashes: Vec<u64> = firsts
            .iter()
            .map(|&r| hash_key(&self.hasher, rows.row(r).as_ref()))
            .collect();
        let mut numbers = Vec::with_capacity(n);
        for (i, &first) in firsts.iter().enumerate() {
            self.index.prefetch_ahead(&hashes, i);
            let k = self.number_hashed(hashes[i], rows.row(first).as_ref())?;
            self.mark_changed(k);
            let end = firsts.get(i + 1).copied().unwrap_or(n);
            numbers.resize(end, k);
        }
        Ok(numbers)
    }

    /// The number of `key`, numbered now if it had none.
    pub(super) fn number(&mut self, key: &[u8]) -> Result<u32> {
        self.number_hashed(hash_key(&self.hasher, key), key)
    }

    /// The number of `key` (whose [`hash_key`] is `hash`), numbered now if it had none.
    fn number_hashed(&mut self, hash: u64, key: &[u8]) -> Result<u32> {
        let (k, new) = self.index.intern(hash, key)?;
        if new {
            self.held.push(0);
            self.flags.push(0);
        }
        Ok(k)
    }

    /// Key `k` got a group in a window.
    #[inline]
    pub(super) fn hold(&mut self, k: u32) {
        let k = k as usize;
        if self.flags[k] & DELETED != 0 {
            self.flags[k] &= !DELETED;
            self.deleted -= 1;
        }
        self.held[k] += 1;
    }

    /// Key `k`'s group in a window that closed is gone.
    pub(super) fn release(&mut self, k: u32) {
        let at = k as usize;
        self.held[at] -= 1;
        if self.held[at] == 0 && self.flags[at] & LEFT == 0 {
            self.flags[at] |= LEFT;
            self.left.push(k);
        }
    }

    /// A window closed (its keys each [`WindowKeys::release`]d).
    pub(super) fn window_closed(&mut self) {
        self.window_closed = true;
    }

    /// Key `k`'s record held only windows closed before a restore: it is deleted when
    /// windows next close, unless the key is in a window again by then.
    pub(super) fn retire(&mut self, k: u32) {
        if self.flags[k as usize] & RETIRED == 0 {
            self.flags[k as usize] |= RETIRED;
            self.retired.push(k);
        }
    }

    /// Whether an open window has a group of key `k`.
    #[inline]
    pub(super) fn is_held(&self, k: u32) -> bool {
        self.held[k as usize] > 0
    }

    /// A group of key `k` changed.
    #[inline]
    fn mark_changed(&mut self, k: u32) {
        let flags = &mut self.flags[k as usize];
        if *flags & CHANGED == 0 {
            *flags |= CHANGED;
            self.changed.push(k);
        }
    }

    /// Count every key an open window holds as changed.
    pub(super) fn mark_all_changed(&mut self) {
        for k in 0..self.held.len() as u32 {
            if self.is_held(k) {
                self.mark_changed(k);
            }
        }
    }

    /// The keys with a group changed since the last call, in order of their first change.
    pub(super) fn take_changed(&mut self) -> Vec<u32> {
        let changed = std::mem::take(&mut self.changed);
        for &k in &changed {
            self.flags[k as usize] &= !CHANGED;
        }
        changed
    }

    /// The keys whose records are to be deleted now: checked when windows closed since
    /// the last call, for the keys that left every window the time before. A key with
    /// events in every window (most, with a key's next window opening right after) is
    /// written again with its new window rather than deleted and written again.
    pub(super) fn take_gone(&mut self) -> Vec<u32> {
        if !std::mem::take(&mut self.window_closed) {
            return vec![];
        }
        let mut gone = vec![];
        for k in std::mem::take(&mut self.retired) {
            let flags = &mut self.flags[k as usize];
            *flags &= !RETIRED;
            // Not when it left again since: it is retired anew below.
            if self.held[k as usize] == 0 && *flags & (LEFT | DELETED) == 0 {
                *flags |= DELETED;
                self.deleted += 1;
                gone.push(k);
            }
        }
        for &k in &self.left {
            self.flags[k as usize] = (self.flags[k as usize] & !LEFT) | RETIRED;
        }
        self.retired = std::mem::take(&mut self.left);
        gone
    }

    /// The `(key, group)`s of a window (its `groups`) in key order. A window holding a
    /// good share of the keys (as every window does over a steady key set) takes them
    /// from the keys in order, kept across windows; another sorts its own.
    pub(super) fn in_key_order(&mut self, groups: &KeyGroups) -> Vec<(u32, u32)> {
        if groups.len() * 4 >= self.index.len() {
            self.sort_keys();
            return self
                .sorted
                .iter()
                .filter_map(|&k| groups.get(k).map(|g| (k, g)))
                .collect();
        }
        let mut sorted: Vec<(&[u8], u32, u32)> = groups
            .iter()
            .map(|(k, g)| (self.index.key(k), k, g))
            .collect();
        sorted.sort_unstable();
        sorted.into_iter().map(|(_, k, g)| (k, g)).collect()
    }

    /// Bring `sorted` up to every key numbered: the keys numbered since, sorted, merged
    /// in.
    fn sort_keys(&mut self) {
        let (from, to) = (self.sorted.len() as u32, self.index.len() as u32);
        if from == to {
            return;
        }
        let index = &self.index;
        let mut new: Vec<(&[u8], u32)> = (from..to).map(|k| (index.key(k), k)).collect();
        new.sort_unstable();
        let old = std::mem::take(&mut self.sorted);
        let mut merged = Vec::with_capacity(to as usize);
        let mut old = old.into_iter().peekable();
        for (key, k) in new {
            while let Some(&o) = old.peek() {
                if index.key(o) > key {
                    break;
                }
                merged.push(o);
                old.next();
            }
            merged.push(k);
        }
        merged.extend(old);
        self.sorted = merged;
    }

    /// Number the keys again without the deleted ones, once they outnumber the others
    /// (by [`DELETED_SLACK`]), so the index stays bounded on an unbounded key space.
    /// Then, per old number, the new one (`u32::MAX` for a deleted key): the windows'
    /// maps must be renumbered with it.
    pub(super) fn drop_deleted(&mut self) -> Result<Option<Vec<u32>>> {
        let n = self.index.len();
        if self.deleted <= (n - self.deleted).max(DELETED_SLACK) {
            return Ok(None);
        }
        let mut index = GroupIndex::with_capacity(n - self.deleted);
        let mut numbers = vec![u32::MAX; n];
        let mut held = Vec::with_capacity(n - self.deleted);
        let mut flags = Vec::with_capacity(n - self.deleted);
        for (k, number) in numbers.iter_mut().enumerate() {
            if self.flags[k] & DELETED != 0 {
                continue;
            }
            let key = self.index.key(k as u32);
            *number = index.intern(hash_key(&self.hasher, key), key)?.0;
            held.push(self.held[k]);
            flags.push(self.flags[k]);
        }
        for k in self
            .retired
            .iter_mut()
            .chain(&mut self.left)
            .chain(&mut self.changed)
        {
            *k = numbers[*k as usize];
        }
        self.index = index;
        self.sorted.clear();
        self.held = held;
        self.flags = flags;
        self.deleted = 0;
        Ok(Some(numbers))
    }
}
