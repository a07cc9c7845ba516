//! The rows of a [`MaterializedTable`](super::MaterializedTable): result batches as they
//! came, and hash tables from each Kafka key to its row in them.
//!
//! A windowed table keeps one hash table per minute of window ends (a shard): a window's
//! rows go into a table of about one window's keys, which stays in the cache while a
//! batch fills it, instead of a table of every window of the retention (a day of
//! 1-minute windows advancing by 20 s over 100,000 keys is 432 million slots), where each
//! insertion was a cache miss and growing it moved every slot. A table without windows has one shard.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::hash::BuildHasher;

use datafusion::arrow::array::{Array, ArrayRef};
use datafusion::arrow::compute::interleave;
use datafusion::common::hash_utils::RandomState;
use hashbrown::hash_table::Entry;
use hashbrown::HashTable;

use crate::error::{ExecError, Result};
use crate::json_encoder::EncodedRows;
use crate::operator::ChangeBatch;

/// Where one key's row is.
pub(super) struct Slot {
    /// The key's hash: growing the table does not hash every key again (a windowed
    /// table grows by a window's keys each window).
    pub(super) hash: u64,
    /// For a windowed table, the window end the row was inserted with (a key holds its
    /// window bounds, so an update never changes it; forgetting a window relies on
    /// that); `i64::MIN` for a table without windows.
    end: i64,
    /// The row: row `row` of part `part`, whose key is the slot's key.
    pub(super) part: u32,
    pub(super) row: u32,
}

/// Rows as one result batch (or one chunk read back) brought them: its arrays, shared
/// with the batch, and its rows' keys. A row no slot points at (replaced, deleted,
/// forgotten, or a tombstone's) is dead. A part whose rows are all dead is dropped, and
/// parts mostly dead are compacted (see [`Rows::compact`]), so the parts hold at most
/// about twice the live rows.
pub(super) struct Part {
    pub(super) columns: Vec<ArrayRef>,
    /// The rows' keys, one after the other; row `i`'s ends at `key_ends[i]`.
    keys: Vec<u8>,
    key_ends: Vec<usize>,
    /// Rows a slot points at, plus one while the part is pinned (see [`Rows::add_part`]).
    live: usize,
}

impl Part {
    /// A part of `columns` (of `rows` rows), whose row `i` has key `key(i)`.
    pub(super) fn new<'a>(
        columns: Vec<ArrayRef>,
        rows: usize,
        key: impl Fn(usize) -> &'a [u8],
    ) -> Self {
        let mut keys = Vec::with_capacity((0..rows).map(|i| key(i).len()).sum());
        let mut key_ends = Vec::with_capacity(rows);
        for i in 0..rows {
            keys.extend_from_slice(key(i));
            key_ends.push(keys.len());
        }
        Self {
            columns,
            keys,
            key_ends,
            live: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.key_ends.len()
    }

    pub(super) fn key(&self, row: u32) -> &[u8] {
        let row = row as usize;
        let start = if row == 0 { 0 } else { self.key_ends[row - 1] };
        &self.keys[start..self.key_ends[row]]
    }
}

/// Window ends per shard, in ms.
const SHARD_MS: i64 = 60_000;

/// In [`Rows::read_back`]: keys of this hash are in more than one shard.
const AMBIGUOUS: i64 = i64::MAX;

/// The shard of a row whose window ends at `end` (`None`: a table without windows).
fn shard_of(end: Option<i64>) -> i64 {
    end.map_or(i64::MIN, |end| end.div_euclid(SHARD_MS))
}

#[derive(Default)]
pub(super) struct Rows {
    /// Each key's slot, in the shard of its window end.
    shards: BTreeMap<i64, HashTable<Slot>>,
    /// Slots in all shards.
    live: usize,
    /// While the table is read back: the shard of each windowed key's hash upserted, for
    /// the topic's tombstones, which carry no window end ([`AMBIGUOUS`] when two keys
    /// with one hash are in different shards). A key's window end never changes.
    read_back: Option<hashbrown::HashMap<u64, i64>>,
    hasher: RandomState,
    /// The parts rows are in, by number; `None`: a number free for the next part.
    pub(super) parts: Vec<Option<Part>>,
    free_parts: Vec<u32>,
    /// Rows of the parts that no slot points at.
    pub(super) dead: usize,
    /// For windowed tables, `(window end, key hash)` per row inserted, oldest end first:
    /// what to forget when a window ends more than the retention before the newest. A
    /// row deleted leaves its entry behind (finding it would cost more than forgetting
    /// it); see `stale`.
    pub(super) by_end: BinaryHeap<Reverse<(i64, u64)>>,
    /// Entries of `by_end` whose row was deleted. When they outnumber the rows, `by_end`
    /// is made again from the rows: a session table, whose rows are deleted and inserted
    /// again as their sessions grow, would otherwise hold an entry per update for the
    /// whole retention (a day by default), not one per row.
    stale: usize,
    pub(super) newest_end: i64,
    /// While the table is read back from its topic: the query's results written since
    /// the table was made, applied once the reading is done.
    pub(super) pending: Option<Vec<(ChangeBatch, EncodedRows)>>,
    /// Why it could not be read back (see
    /// [`MaterializedTable::abandon_restore`](super::MaterializedTable::abandon_restore)).
    pub(super) failed: Option<String>,
}

impl Rows {
    /// No rows, read back from the topic next, with results that wait for that.
    pub(super) fn restoring(pending: Vec<(ChangeBatch, EncodedRows)>) -> Self {
        Self {
            newest_end: i64::MIN,
            pending: Some(pending),
            read_back: Some(hashbrown::HashMap::new()),
            ..Self::default()
        }
    }

    /// The table's topic is read back: from now on every tombstone comes with its window
    /// end.
    pub(super) fn read_back_done(&mut self) {
        self.read_back = None;
    }

    /// Add `part`, its rows all dead until [`Rows::upsert`] points keys at them; returns
    /// its number. The part is pinned: it stays, even with no row live, until
    /// [`Rows::unpin`] (a batch's tombstone may delete a row the batch inserted before
    /// the batch's next rows go into the part).
    pub(super) fn add_part(&mut self, mut part: Part) -> u32 {
        self.dead += part.len();
        part.live += 1;
        match self.free_parts.pop() {
            Some(number) => {
                self.parts[number as usize] = Some(part);
                number
            }
            None => {
                self.parts.push(Some(part));
                (self.parts.len() - 1) as u32
            }
        }
    }

    /// A row of part `number` is no longer pointed at; the part goes once none is.
    fn release(&mut self, number: u32) {
        self.dead += 1;
        self.unpin(number);
    }

    /// Take away one of part `number`'s live rows or its pin, dropping the part when
    /// none is left.
    pub(super) fn unpin(&mut self, number: u32) {
        let slot = &mut self.parts[number as usize];
        let part = slot.as_mut().expect("a slot points into a held part");
        part.live -= 1;
        if part.live == 0 {
            self.dead -= part.len();
            *slot = None;
            self.free_parts.push(number);
        }
    }

    /// How many keys have a row.
    pub(super) fn len(&self) -> usize {
        self.live
    }

    /// Every key's slot, shard by shard (the same order each time while no slot is
    /// added or removed).
    pub(super) fn slots(&self) -> impl Iterator<Item = &Slot> {
        self.shards.values().flat_map(HashTable::iter)
    }

    /// Point the key of row `row` of part `part` at that row, replacing the key's row if
    /// it has one; its window ends at `end` (windowed tables).
    pub(super) fn upsert(&mut self, part: u32, row: u32, end: Option<i64>) {
        if let Some(end) = end {
            self.newest_end = self.newest_end.max(end);
        }
        let Rows {
            shards,
            live,
            read_back,
            hasher,
            parts,
            by_end,
            ..
        } = self;
        let key = parts[part as usize].as_ref().expect("held").key(row);
        let hash = hasher.hash_one(key);
        let shard = shard_of(end);
        if let Some(read_back) = read_back.as_mut().filter(|_| end.is_some()) {
            let held = read_back.entry(hash).or_insert(shard);
            if *held != shard {
                *held = AMBIGUOUS;
            }
        }
        let table = match shards.get_mut(&shard) {
            Some(table) => table,
            None => {
                // Sized as the newest shard: a window's keys are mostly the last one's.
                let size = shards.last_key_value().map_or(0, |(_, t)| t.len());
                shards
                    .entry(shard)
                    .or_insert(HashTable::with_capacity(size))
            }
        };
        let replaced = match table.entry(hash, |s| same_key(parts, s, hash, key), |s| s.hash) {
            Entry::Occupied(mut e) => {
                let slot = e.get_mut();
                let old = slot.part;
                slot.part = part;
                slot.row = row;
                Some(old)
            }
            Entry::Vacant(e) => {
                e.insert(Slot {
                    hash,
                    end: end.unwrap_or(i64::MIN),
                    part,
                    row,
                });
                *live += 1;
                if let Some(end) = end {
                    by_end.push(Reverse((end, hash)));
                }
                None
            }
        };
        let new = self.parts[part as usize].as_mut().expect("held");
        new.live += 1;
        self.dead -= 1;
        if let Some(old) = replaced {
            self.release(old);
        }
    }

    /// Delete the row of `key`, if there is one; its window ends at `end` when that is
    /// known (else every shard is looked in).
    pub(super) fn remove(&mut self, key: &[u8], end: Option<i64>) {
        let hash = self.hasher.hash_one(key);
        let parts = &self.parts;
        let found = |s: &Slot| same_key(parts, s, hash, key);
        let slot = match end {
            Some(end) => take_slot(&mut self.shards, shard_of(Some(end)), hash, found),
            None => {
                // Read back, a windowed key's shard is remembered; any other key is in
                // the one shard of a table without windows, if anywhere.
                let remembered = self
                    .read_back
                    .as_ref()
                    .map(|r| r.get(&hash).copied().unwrap_or(i64::MIN));
                let shard = remembered.filter(|&s| s != AMBIGUOUS).or_else(|| {
                    self.shards
                        .iter()
                        .find(|(_, t)| t.find(hash, found).is_some())
                        .map(|(&shard, _)| shard)
                });
                shard.and_then(|shard| take_slot(&mut self.shards, shard, hash, found))
            }
        };
        let Some(slot) = slot else {
            return;
        };
        self.live -= 1;
        self.release(slot.part);
        if slot.end != i64::MIN {
            self.stale += 1;
            if self.stale > self.live + STALE_SLACK {
                self.by_end = self
                    .slots()
                    .filter(|s| s.end != i64::MIN)
                    .map(|s| Reverse((s.end, s.hash)))
                    .collect();
                self.stale = 0;
            }
        }
    }

    /// Forget the rows whose window ended before `cutoff`.
    pub(super) fn forget_before(&mut self, cutoff: i64) {
        while let Some(&Reverse((end, hash))) = self.by_end.peek() {
            if end >= cutoff {
                break;
            }
            self.by_end.pop();
            // The entry's row, or one of its hash and window (both go).
            let found = |s: &Slot| s.hash == hash && s.end == end;
            match take_slot(&mut self.shards, shard_of(Some(end)), hash, found) {
                Some(slot) => {
                    self.live -= 1;
                    self.release(slot.part);
                }
                None => self.stale = self.stale.saturating_sub(1),
            }
        }
    }

    /// When the dead rows outnumber the live ones by more than [`DEAD_SLACK`], copy the
    /// live rows of the parts that are mostly dead into one new part. Those parts then
    /// go, and every part left is at least half live: the parts hold at most about twice
    /// the live rows. Each row copied was in a part at least half dead, so the copying
    /// costs less than the rows that died there.
    pub(super) fn compact(&mut self) -> Result<()> {
        if self.dead <= self.live + DEAD_SLACK {
            return Ok(());
        }
        // Parts at most half live, and where each one's rows go in the list of them.
        let mut position = vec![u32::MAX; self.parts.len()];
        let mut sparse: Vec<&Part> = vec![];
        for (number, part) in self.parts.iter().enumerate() {
            if let Some(part) = part.as_ref().filter(|p| p.live * 2 <= p.len()) {
                position[number] = sparse.len() as u32;
                sparse.push(part);
            }
        }
        // Their live rows, in the order of the slots (walked again below, unchanged).
        let picked: Vec<(usize, usize)> = self
            .slots()
            .filter(|s| position[s.part as usize] != u32::MAX)
            .map(|s| (position[s.part as usize] as usize, s.row as usize))
            .collect();
        let Some(first) = sparse.first() else {
            return Ok(());
        };
        let columns = (0..first.columns.len())
            .map(|c| {
                let arrays: Vec<&dyn Array> =
                    sparse.iter().map(|p| p.columns[c].as_ref()).collect();
                interleave(&arrays, &picked)
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(ExecError::arrow("compacting table rows"))?;
        let part = Part::new(columns, picked.len(), |i| {
            let (p, row) = picked[i];
            sparse[p].key(row as u32)
        });
        // The sparse parts go; the new one holds their live rows, all live.
        let mut gone = 0;
        for (number, &at) in position.iter().enumerate() {
            if at != u32::MAX {
                gone += self.parts[number].take().expect("held").len();
                self.free_parts.push(number as u32);
            }
        }
        let moved = picked.len();
        let number = self.add_part(Part {
            live: moved,
            ..part
        });
        self.dead -= gone;
        self.unpin(number);
        let mut next = 0;
        for slot in self.shards.values_mut().flat_map(HashTable::iter_mut) {
            if position[slot.part as usize] != u32::MAX {
                slot.part = number;
                slot.row = next;
                next += 1;
            }
        }
        Ok(())
    }
}

/// Take the slot of `shard` that has `hash` and is `found`, if any, dropping the shard
/// when it is left empty.
fn take_slot(
    shards: &mut BTreeMap<i64, HashTable<Slot>>,
    shard: i64,
    hash: u64,
    found: impl Fn(&Slot) -> bool,
) -> Option<Slot> {
    let table = shards.get_mut(&shard)?;
    let (slot, _) = table.find_entry(hash, found).ok()?.remove();
    if table.is_empty() {
        shards.remove(&shard);
    }
    Some(slot)
}

/// Whether `slot` holds `key`, whose hash is `hash`. The hashes are compared first: a
/// slot whose hash's top bits merely match `hash`'s (hashbrown's first filter) would
/// otherwise cost a read of its key from its part, a cache miss in a large table.
fn same_key(parts: &[Option<Part>], slot: &Slot, hash: u64, key: &[u8]) -> bool {
    slot.hash == hash && held_key(parts, slot) == key
}

/// The key of the row `slot` points at.
fn held_key<'a>(parts: &'a [Option<Part>], slot: &Slot) -> &'a [u8] {
    parts[slot.part as usize]
        .as_ref()
        .expect("a slot points into a held part")
        .key(slot.row)
}

/// Deleted rows' entries `Rows::by_end` holds beyond one per row before it is made again.
pub(super) const STALE_SLACK: usize = 64 * 1024;

/// Dead rows the parts hold beyond one per live row before they are compacted.
pub(super) const DEAD_SLACK: usize = 64 * 1024;
