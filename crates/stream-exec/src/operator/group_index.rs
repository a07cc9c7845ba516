//! `GroupIndex`: numbers distinct group keys densely (0, 1, 2, …): the keys of every
//! open window of a window aggregate, or the keys of a session aggregate. Numbers let
//! state live in plain vectors indexed by them (see [`super::group_states`]).
//!
//! Keys are arrow row-format bytes, stored back to back in one buffer; the hash table
//! ([`SlotTable`]) holds `u64` slots, each a key's number and 32 bits of its hash. A new
//! key therefore costs no allocation of its own, a lookup compares key bytes only when
//! those hash bits match, and dropping the index frees its keys all at once. While every
//! key has the same length (numbers, fixed-format ids), key `g` is found at `g` times that
//! length: a lookup then reads the table and the key, and not also where the key ends.
//! With 100,000 keys those are cache misses each.

use std::hash::BuildHasher;

use datafusion::common::hash_utils::RandomState;

use super::slot_table::SlotTable;
use crate::error::{ExecError, Result};

/// How many lookups ahead [`GroupIndex::prefetch_ahead`] brings a hash slot into the
/// cache, and how many the key a slot points to.
const PREFETCH_SLOTS: usize = 16;
const PREFETCH_KEYS: usize = 8;

/// Dense numbers for the distinct keys of one window. See the module docs.
#[derive(Debug)]
pub(crate) struct GroupIndex {
    /// Every key's bytes, in group order.
    bytes: Vec<u8>,
    /// The length of every key, while they all have one (and before the first).
    width: Option<usize>,
    /// Once keys differ in length: where each group's key ends in `bytes` (it starts
    /// where the previous one ends).
    ends: Vec<u32>,
    /// Number of groups.
    groups: u32,
    /// Per group: its key's hash tag (the hash's high 32 bits) and group + 1.
    table: SlotTable,
}

/// The hash table's hasher: the one DataFusion's own hash tables use.
pub(crate) fn hash_key(state: &RandomState, key: &[u8]) -> u64 {
    state.hash_one(key)
}

impl GroupIndex {
    /// An empty index.
    pub(crate) fn new() -> Self {
        Self::with_capacity(0)
    }

    /// An empty index with room for `groups` groups before its table grows.
    pub(crate) fn with_capacity(groups: usize) -> Self {
        Self {
            bytes: vec![],
            width: None,
            ends: vec![],
            groups: 0,
            table: SlotTable::with_capacity(groups),
        }
    }

    /// Number of groups.
    pub(crate) fn len(&self) -> usize {
        self.groups as usize
    }

    /// The heap bytes it holds (allocated capacity, not only what is in use).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.ends.capacity() * size_of::<u32>() + self.table.heap_bytes()
    }

    /// The key of group `g`.
    pub(crate) fn key(&self, g: u32) -> &[u8] {
        let g = g as usize;
        match self.width {
            Some(width) => &self.bytes[g * width..(g + 1) * width],
            None => {
                let start = if g == 0 { 0 } else { self.ends[g - 1] as usize };
                &self.bytes[start..self.ends[g] as usize]
            }
        }
    }

    /// The group of `key` (whose [`hash_key`] is `hash`), else the empty slot where it
    /// would go.
    #[inline]
    fn find(&self, hash: u64, key: &[u8]) -> std::result::Result<u32, usize> {
        self.table
            .find((hash >> 32) as u32, |g| self.key(g - 1) == key)
            .map(|g| g - 1)
    }

    /// Before looking up the key of `hashes[i]`: bring into the cache the slot where the
    /// lookup of a key further on starts, and the key that a nearer one's slot holds. With
    /// 100,000 groups each is a cache miss, now waited for during the lookups before it:
    /// 500,000 lookups in an index of 100,000 keys took 40–50 ns each instead of 77–200.
    #[inline]
    pub(crate) fn prefetch_ahead(&self, hashes: &[u64], i: usize) {
        if let Some(&ahead) = hashes.get(i + PREFETCH_SLOTS) {
            self.prefetch_slot(ahead);
        }
        if let Some(&ahead) = hashes.get(i + PREFETCH_KEYS) {
            self.prefetch_key(ahead);
        }
    }

    /// Bring the slot where a lookup of `hash` starts into the cache.
    #[inline]
    fn prefetch_slot(&self, hash: u64) {
        crate::native::prefetch(self.table.first((hash >> 32) as u32));
    }

    /// Bring the key of the group in the slot where a lookup of `hash` starts into the
    /// cache, when that slot's tag matches (best after [`GroupIndex::prefetch_slot`]).
    #[inline]
    fn prefetch_key(&self, hash: u64) {
        let tag = (hash >> 32) as u32;
        let slot = *self.table.first(tag);
        if slot != 0 && (slot >> 32) as u32 == tag {
            let g = (slot as u32 - 1) as usize;
            let at = match self.width {
                Some(width) => g * width,
                None if g == 0 => 0,
                None => self.ends[g - 1] as usize,
            };
            if let Some(byte) = self.bytes.get(at) {
                crate::native::prefetch(byte);
            }
        }
    }

    /// The group of `key` (whose [`hash_key`] is `hash`), if it has one.
    #[cfg(test)]
    pub(crate) fn get(&self, hash: u64, key: &[u8]) -> Option<u32> {
        self.find(hash, key).ok()
    }

    /// The group of `key` (whose [`hash_key`] is `hash`), and whether it was added now.
    pub(crate) fn intern(&mut self, hash: u64, key: &[u8]) -> Result<(u32, bool)> {
        let tag = (hash >> 32) as u32;
        let pos = match self.find(hash, key) {
            Ok(g) => return Ok((g, false)),
            Err(pos) => pos,
        };
        let g = self.groups;
        if g == u32::MAX {
            return Err(ExecError::internal("WindowAggregate", "too many keys"));
        }
        if u32::try_from(self.bytes.len() + key.len()).is_err() {
            return Err(ExecError::internal("WindowAggregate", "keys exceed 4 GiB"));
        }
        match self.width {
            None if g == 0 => self.width = Some(key.len()),
            Some(width) if width != key.len() => {
                // The first key of another length: from now on, where each key ends.
                self.ends = (1..=g).map(|g| g * width as u32).collect();
                self.width = None;
            }
            _ => {}
        }
        self.bytes.extend_from_slice(key);
        if self.width.is_none() {
            self.ends.push(self.bytes.len() as u32);
        }
        self.groups += 1;
        self.table.fill(pos, tag, g + 1, self.len());
        Ok((g, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_keys_get_one_group_and_groups_are_numbered_densely() {
        let state = RandomState::default();
        let mut index = GroupIndex::new();
        let keys: Vec<Vec<u8>> = (0..1000u32).map(|i| i.to_le_bytes().to_vec()).collect();
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(
                index.intern(hash_key(&state, k), k).unwrap(),
                (i as u32, true)
            );
        }
        for (i, k) in keys.iter().enumerate().rev() {
            assert_eq!(
                index.intern(hash_key(&state, k), k).unwrap(),
                (i as u32, false)
            );
            assert_eq!(index.key(i as u32), k.as_slice());
        }
        assert_eq!(index.len(), 1000);
        assert!(index.heap_bytes() < 1000 * 40);
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(index.get(hash_key(&state, k), k), Some(i as u32));
        }
        let absent = 5000u32.to_le_bytes();
        assert_eq!(index.get(hash_key(&state, &absent), &absent), None);
    }

    #[test]
    fn keys_of_one_length_then_another_keep_their_groups() {
        let state = RandomState::default();
        let mut index = GroupIndex::new();
        let keys: Vec<Vec<u8>> = (0..300u32)
            .map(|i| match i {
                0..100 => i.to_le_bytes().to_vec(),
                100..200 => vec![i as u8; 3],
                _ => (0..i % 7)
                    .map(|b| b as u8 ^ i as u8)
                    .chain([i as u8, 1])
                    .collect(),
            })
            .collect();
        let hashes: Vec<u64> = keys.iter().map(|k| hash_key(&state, k)).collect();
        let mut groups = vec![];
        for (i, k) in keys.iter().enumerate() {
            // Prefetching reads slots and keys of any width, and of keys not added yet.
            index.prefetch_ahead(&hashes, i);
            groups.push(index.intern(hashes[i], k).unwrap().0);
            // Every key interned so far keeps its group and its bytes.
            for (k, &g) in keys.iter().zip(&groups) {
                assert_eq!(index.key(g), k.as_slice());
                assert_eq!(index.get(hash_key(&state, k), k), Some(g));
            }
        }
        assert_eq!(index.len(), 300);
    }

    #[test]
    fn keys_with_equal_hashes_stay_apart() {
        let mut index = GroupIndex::new();
        for i in 0..100u8 {
            assert_eq!(index.intern(7, &[i]).unwrap(), (u32::from(i), true));
        }
        for i in 0..100u8 {
            assert_eq!(index.intern(7, &[i]).unwrap(), (u32::from(i), false));
        }
        assert_eq!(index.intern(7, &[]).unwrap(), (100, true));
    }
}
