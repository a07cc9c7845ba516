//! `SlotTable`: the open-addressing hash table under [`super::group_index::GroupIndex`]
//! (key bytes to group numbers) and [`super::key_groups::KeyGroups`] (key numbers to a
//! window's groups).
//!
//! Each slot is a `u64`: 0 when empty, else a 32-bit tag in the high half and 32 bits of
//! its owner's in the low (never both 0). A lookup starts at the tag's Fibonacci hash and
//! probes on linearly; the table doubles when past 3/4 full, moving slots by their tags
//! alone.

/// Slots per entry at most, as a fraction: grow past 3/4 full.
const MAX_LOAD: (usize, usize) = (3, 4);

/// See the module docs.
#[derive(Debug)]
pub(crate) struct SlotTable {
    slots: Vec<u64>,
    /// log2 of `slots.len()`.
    bits: u32,
}

impl SlotTable {
    /// An empty table with room for `entries` before it grows.
    pub(crate) fn with_capacity(entries: usize) -> Self {
        let slots = (entries * MAX_LOAD.1 / MAX_LOAD.0 + 1)
            .next_power_of_two()
            .max(16);
        Self {
            slots: vec![0; slots],
            bits: slots.trailing_zeros(),
        }
    }

    /// The heap bytes it holds.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.capacity() * size_of::<u64>()
    }

    /// The first slot to probe for `tag`.
    #[inline]
    fn home(&self, tag: u32) -> usize {
        // Fibonacci hashing spreads the tag over the table; all 32 tag bits still tell
        // apart the entries that meet in one probe sequence.
        ((u64::from(tag).wrapping_mul(0x9E37_79B9_7F4A_7C15)) >> (64 - self.bits)) as usize
    }

    /// The low half of the first slot tagged `tag` whose low half `matches`, else the
    /// empty slot where such an entry would go.
    #[inline]
    pub(crate) fn find(
        &self,
        tag: u32,
        mut matches: impl FnMut(u32) -> bool,
    ) -> std::result::Result<u32, usize> {
        let mask = self.slots.len() - 1;
        let mut pos = self.home(tag);
        loop {
            let slot = self.slots[pos];
            if slot == 0 {
                return Err(pos);
            }
            if (slot >> 32) as u32 == tag && matches(slot as u32) {
                return Ok(slot as u32);
            }
            pos = (pos + 1) & mask;
        }
    }

    /// Fill the empty slot `pos` (from [`SlotTable::find`]) with `tag` and `low`, the
    /// table's `entries`-th entry; the table grows when past its load.
    pub(crate) fn fill(&mut self, pos: usize, tag: u32, low: u32, entries: usize) {
        self.slots[pos] = (u64::from(tag) << 32) | u64::from(low);
        if entries * MAX_LOAD.1 > self.slots.len() * MAX_LOAD.0 {
            let old = std::mem::take(&mut self.slots);
            self.bits += 1;
            self.slots = vec![0; old.len() * 2];
            for slot in old.into_iter().filter(|s| *s != 0) {
                self.place(slot);
            }
        }
    }

    /// Put `slot` (an entry not in the table) in the first empty slot from its tag's
    /// home, where a lookup finds it.
    pub(crate) fn place(&mut self, slot: u64) {
        let mask = self.slots.len() - 1;
        let mut pos = self.home((slot >> 32) as u32);
        while self.slots[pos] != 0 {
            pos = (pos + 1) & mask;
        }
        self.slots[pos] = slot;
    }

    /// The slot where a lookup of `tag` starts.
    #[inline]
    pub(crate) fn first(&self, tag: u32) -> &u64 {
        &self.slots[self.home(tag)]
    }

    /// Every filled slot's `(tag, low)`.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.slots
            .iter()
            .filter(|s| **s != 0)
            .map(|s| ((s >> 32) as u32, *s as u32))
    }
}
