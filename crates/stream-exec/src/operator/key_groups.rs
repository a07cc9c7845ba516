//! `KeyGroups`: one window's groups by key number. The window aggregate numbers every key
//! once, in a [`super::group_index::GroupIndex`] that all its open windows share; each
//! window maps a key's number to its own group of that key here.
//!
//! A window holding most keys (a tumbling or hopping window over a steady key set) keeps
//! an array indexed by key number: a lookup is one read. A sparse window (a few keys of
//! many, as with many windows open at once) keeps a hash table ([`SlotTable`]) tagged
//! with the key number + 1, holding the group: a lookup hashes a number (one
//! multiplication) and reads slots. Either way no key's bytes are
//! read, and the memory follows the window's groups (the array is used while it has at
//! most [`DENSE_SLOTS`] entries per group), not the number of keys.

use super::slot_table::SlotTable;

/// Array entries per group at most, in the array form.
const DENSE_SLOTS: usize = 4;
/// Groups a window has before it may take the array form.
const DENSE_MIN: usize = 64;

/// One window's group of each of its keys. See the module docs.
#[derive(Debug)]
pub(crate) struct KeyGroups {
    /// The array form (when not empty): per key number, its group + 1, or 0.
    dense: Vec<u32>,
    /// The table form (when `dense` is empty): tagged with key + 1, holding the group.
    table: SlotTable,
    len: usize,
    /// The largest key number held, plus one.
    keys_below: usize,
}

impl KeyGroups {
    /// An empty map.
    pub(crate) fn new() -> Self {
        Self {
            dense: vec![],
            table: SlotTable::with_capacity(0),
            len: 0,
            keys_below: 0,
        }
    }

    /// How many keys (groups) it holds.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Every `(key, group)` it holds, in no particular order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        let dense = self
            .dense
            .iter()
            .enumerate()
            .filter(|(_, g)| **g != 0)
            .map(|(k, g)| (k as u32, g - 1));
        let table = self.table.iter().map(|(tag, g)| (tag - 1, g));
        dense.chain(table)
    }

    /// The heap bytes it holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.dense.capacity() * size_of::<u32>() + self.table.heap_bytes()
    }

    /// The group of `key` in the table form, else the empty slot where it would go.
    #[inline]
    fn find(&self, key: u32) -> std::result::Result<u32, usize> {
        self.table.find(key + 1, |_| true)
    }

    /// The group of `key`, if the window has one.
    #[inline]
    pub(crate) fn get(&self, key: u32) -> Option<u32> {
        if self.dense.is_empty() {
            self.find(key).ok()
        } else {
            match self.dense.get(key as usize) {
                Some(&g) if g != 0 => Some(g - 1),
                _ => None,
            }
        }
    }

    /// The group of `key`, else `group`, now its group; and whether it was added.
    #[inline]
    pub(crate) fn get_or_insert(&mut self, key: u32, group: u32) -> (u32, bool) {
        let at = key as usize;
        if let Some(&g) = self.dense.get(at) {
            if g != 0 {
                return (g - 1, false);
            }
            self.dense[at] = group + 1;
            self.len += 1;
            return (group, true);
        }
        if !self.dense.is_empty() {
            if (self.len + 1) * DENSE_SLOTS > at {
                // Room in the array form: grow it, by an eighth at least (exactly: the
                // array's size counts in the state's bytes per group).
                let grown = (at + 1)
                    .max(self.dense.len() + self.dense.len() / 8)
                    .min((self.len + 1) * DENSE_SLOTS);
                self.dense.reserve_exact(grown - self.dense.len());
                self.dense.resize(grown, 0);
                self.dense[at] = group + 1;
                self.len += 1;
                self.keys_below = self.keys_below.max(at + 1);
                return (group, true);
            }
            self.make_table();
        }
        match self.find(key) {
            Ok(g) => (g, false),
            Err(pos) => {
                self.len += 1;
                self.table.fill(pos, key + 1, group, self.len);
                self.keys_below = self.keys_below.max(at + 1);
                if self.len >= DENSE_MIN && self.len * DENSE_SLOTS >= self.keys_below {
                    self.make_array();
                }
                (group, true)
            }
        }
    }

    /// Bring where a lookup of `key` reads into the cache.
    #[inline]
    pub(crate) fn prefetch(&self, key: u32) {
        if self.dense.is_empty() {
            crate::native::prefetch(self.table.first(key + 1));
        } else if let Some(entry) = self.dense.get(key as usize) {
            crate::native::prefetch(entry);
        }
    }

    /// The same groups under new key numbers: key `k` is now `numbers[k]`.
    pub(crate) fn renumber(&mut self, numbers: &[u32]) {
        let pairs: Vec<(u32, u32)> = self.iter().collect();
        *self = Self::new();
        for (key, g) in pairs {
            self.get_or_insert(numbers[key as usize], g);
        }
    }

    /// From the table form to the array form.
    fn make_array(&mut self) {
        let mut dense = vec![0; self.keys_below];
        for (tag, g) in self.table.iter() {
            dense[tag as usize - 1] = g + 1;
        }
        self.dense = dense;
        self.table = SlotTable::with_capacity(0);
    }

    /// From the array form to the table form.
    fn make_table(&mut self) {
        let dense = std::mem::take(&mut self.dense);
        self.table = SlotTable::with_capacity(self.len);
        for (key, &g) in dense.iter().enumerate().filter(|(_, g)| **g != 0) {
            self.table
                .place(((key as u64 + 1) << 32) | u64::from(g - 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_keys_keep_their_groups_as_the_table_grows() {
        let mut map = KeyGroups::new();
        // Sparse and dense key numbers, key 0 and the largest among them.
        let keys: Vec<u32> = (0..5000u32)
            .map(|i| if i % 3 == 0 { i * 7919 } else { i })
            .chain([u32::MAX - 1])
            .collect();
        let mut unique = vec![];
        for &k in &keys {
            let next = unique.len() as u32;
            let (g, new) = map.get_or_insert(k, next);
            if new {
                unique.push(k);
            }
            assert_eq!(unique[g as usize], k);
        }
        for (g, &k) in unique.iter().enumerate() {
            assert_eq!(map.get(k), Some(g as u32));
        }
        assert_eq!(map.get(3), None);
        assert!(map.dense.is_empty(), "sparse keys are in the table form");
        assert!(map.heap_bytes() <= unique.len() * 8 * 8 / 3 + 128);
        let mut pairs: Vec<(u32, u32)> = map.iter().collect();
        pairs.sort_unstable_by_key(|&(_, g)| g);
        let expected: Vec<(u32, u32)> = (0..).zip(&unique).map(|(g, &k)| (k, g)).collect();
        assert_eq!(pairs, expected);
    }

    #[test]
    fn dense_then_sparse_then_dense_keys_change_form_and_keep_their_groups() {
        let mut map = KeyGroups::new();
        let mut held: Vec<u32> = vec![];
        let check = |map: &KeyGroups, held: &[u32]| {
            for (g, &k) in held.iter().enumerate() {
                assert_eq!(map.get(k), Some(g as u32), "key {k}");
            }
            assert!(
                map.heap_bytes() <= held.len() * 24 + 256,
                "{}",
                map.heap_bytes()
            );
        };
        let mut add = |map: &mut KeyGroups, keys: &mut dyn Iterator<Item = u32>| {
            for k in keys {
                let next = held.len() as u32;
                assert_eq!(map.get_or_insert(k, next), (next, true), "key {k}");
                held.push(k);
                assert_eq!(map.get_or_insert(k, next + 1), (next, false), "key {k}");
            }
            check(map, &held);
        };
        add(&mut map, &mut (0..1000).rev());
        assert!(
            !map.dense.is_empty(),
            "1000 of the first 1000 numbers: the array form"
        );
        add(&mut map, &mut [1_000_000].into_iter());
        assert!(map.dense.is_empty(), "one far key: the table form");
        add(&mut map, &mut (1001..1_200_000).step_by(3));
        assert!(
            !map.dense.is_empty(),
            "a third of the numbers: the array form again"
        );
        assert_eq!(map.get(1000), None);
        assert_eq!(map.get(1002), None);
        assert_eq!(map.get(5_000_000), None);
        assert_eq!(map.len(), held.len());
        // Key `held[g]` becomes `g`.
        let mut numbers = vec![u32::MAX; 1_200_000];
        for (g, &k) in held.iter().enumerate() {
            numbers[k as usize] = g as u32;
        }
        map.renumber(&numbers);
        for g in 0..held.len() as u32 {
            assert_eq!(map.get(g), Some(g));
        }
    }
}
