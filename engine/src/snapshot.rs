//! Immutable price snapshots and the lock-free table any thread reads them from.
//!
//! # The table
//!
//! A fixed-capacity open-addressing hash table (linear probing) of [`Slot`]s, allocated once.
//! A slot's key is written once, by compare-and-swap, and never changes afterwards: a zone
//! keeps its slot for the life of the process (an evicted zone's slot keeps its key with no
//! snapshot). Readers therefore never see a slot change identity under them. Each slot holds
//! an [`ArcSwapOption`] of the zone's latest snapshot: publishing is one atomic swap, reading
//! is one atomic load that takes no lock, makes no mailbox round-trip and allocates nothing.
//!
//! Capacity is fixed at construction (`slots_for(zones_max)`); inserting past half of it
//! fails with [`TableFull`] so probe sequences stay short.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::{ArcSwapOption, Guard};

use crate::fare::FareTable;
use crate::zone::ZoneId;

/// The result of one tick of one zone: everything a quote needs, immutable once published.
#[derive(Clone, Debug, PartialEq)]
pub struct PriceSnapshot {
    /// The zone priced.
    pub zone: ZoneId,
    /// Increases by one with every published change for this zone.
    pub version: u64,
    /// The surge multiplier, thousandths.
    pub multiplier_milli: u32,
    /// The policy's unsmoothed target before smoothing, blending and hysteresis.
    pub target_milli: u32,
    /// The fare table in force (copied, so a quote needs nothing else).
    pub fare: FareTable,
    /// The surge-policy parameter set that produced the multiplier.
    pub policy_version: u32,
    /// How much data backs the multiplier, per mille.
    pub confidence_permille: u16,
    /// Distinct available drivers at the tick.
    pub supply: u32,
    /// Demand signals and trip requests in the window at the tick.
    pub demand: u32,
    /// Quotes issued in the window at the tick.
    pub quotes: u32,
    /// Mean multiplier of the priced neighbours, thousandths; 0 when none had a price.
    pub neighbour_mean_milli: u32,
    /// Engine time of the tick, milliseconds.
    pub computed_at_ms: u64,
    /// A checksum over every other field, set by [`PriceSnapshot::seal`]; lets readers prove
    /// they never observe a torn or mixed-up snapshot.
    check: u64,
}

/// Mixes a word into a running checksum (splitmix64 finaliser).
fn mix(h: u64, x: u64) -> u64 {
    let mut z = h ^ x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The inputs of a snapshot, before sealing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(missing_docs)]
pub struct SnapshotFields {
    pub zone: ZoneId,
    pub version: u64,
    pub multiplier_milli: u32,
    pub target_milli: u32,
    pub fare: FareTable,
    pub policy_version: u32,
    pub confidence_permille: u16,
    pub supply: u32,
    pub demand: u32,
    pub quotes: u32,
    pub neighbour_mean_milli: u32,
    pub computed_at_ms: u64,
}

impl PriceSnapshot {
    /// Builds a snapshot and computes its checksum.
    pub fn seal(f: SnapshotFields) -> Self {
        let mut s = Self {
            zone: f.zone,
            version: f.version,
            multiplier_milli: f.multiplier_milli,
            target_milli: f.target_milli,
            fare: f.fare,
            policy_version: f.policy_version,
            confidence_permille: f.confidence_permille,
            supply: f.supply,
            demand: f.demand,
            quotes: f.quotes,
            neighbour_mean_milli: f.neighbour_mean_milli,
            computed_at_ms: f.computed_at_ms,
            check: 0,
        };
        s.check = s.checksum();
        s
    }

    fn checksum(&self) -> u64 {
        let t = &self.fare;
        let c = t.currency.bytes();
        [
            self.zone.raw(),
            self.version,
            u64::from(self.multiplier_milli),
            u64::from(self.target_milli),
            u64::from(t.version),
            u64::from(t.base_minor),
            u64::from(t.per_km_minor),
            u64::from(t.per_min_minor),
            u64::from(t.minimum_minor),
            u64::from(t.surge_cap_milli),
            u64::from(c[0]) | u64::from(c[1]) << 8 | u64::from(c[2]) << 16,
            u64::from(self.policy_version),
            u64::from(self.confidence_permille),
            u64::from(self.supply),
            u64::from(self.demand),
            u64::from(self.quotes),
            u64::from(self.neighbour_mean_milli),
            self.computed_at_ms,
        ]
        .iter()
        .fold(0x5eed, |h, &x| mix(h, x))
    }

    /// True when every field is as sealed.
    pub fn is_intact(&self) -> bool {
        self.check == self.checksum()
    }

    /// The fields again (e.g. to persist or compare).
    pub fn fields(&self) -> SnapshotFields {
        SnapshotFields {
            zone: self.zone,
            version: self.version,
            multiplier_milli: self.multiplier_milli,
            target_milli: self.target_milli,
            fare: self.fare,
            policy_version: self.policy_version,
            confidence_permille: self.confidence_permille,
            supply: self.supply,
            demand: self.demand,
            quotes: self.quotes,
            neighbour_mean_milli: self.neighbour_mean_milli,
            computed_at_ms: self.computed_at_ms,
        }
    }
}

/// Index of a slot in a [`SnapshotTable`]; stable for the life of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotIdx(u32);

/// The table cannot take another zone (more than half its slots are keyed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("snapshot table is full ({slots} slots, at most {max} zones); raise zones_max")]
pub struct TableFull {
    /// Slots in the table.
    pub slots: usize,
    /// Keys it accepts.
    pub max: usize,
}

const EMPTY: u64 = 0;

#[derive(Debug, Default)]
struct Slot {
    /// The zone's raw id, or `EMPTY`. Written once.
    key: AtomicU64,
    /// The latest snapshot, `None` before the first and after eviction.
    snap: ArcSwapOption<PriceSnapshot>,
    /// Engine time at which the owner last confirmed the snapshot current.
    fresh_at_ms: AtomicU64,
    /// Quotes issued since the owner's last tick (the tick takes and resets it).
    quotes: AtomicU32,
    /// The snapshot's multiplier, for cheap neighbour reads; 0 when there is no snapshot.
    multiplier_milli: AtomicU32,
}

/// The node-wide map zone → latest price snapshot. See the module docs.
#[derive(Debug)]
pub struct SnapshotTable {
    slots: Box<[Slot]>,
    mask: usize,
    keys_max: usize,
    keys: AtomicUsize,
}

impl SnapshotTable {
    /// A table with room for at least `zones` keys.
    pub fn with_capacity(zones: usize) -> Self {
        let n = (zones.max(8) * 2).next_power_of_two();
        let slots: Box<[Slot]> = (0..n).map(|_| Slot::default()).collect();
        Self { slots, mask: n - 1, keys_max: n / 2, keys: AtomicUsize::new(0) }
    }

    #[inline]
    fn home(&self, zone: ZoneId) -> usize {
        // Fibonacci hashing spreads H3's structured bits.
        (zone.raw().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask
    }

    /// The slot of a zone, if it has one.
    #[inline]
    pub fn slot_of(&self, zone: ZoneId) -> Option<SlotIdx> {
        let key = zone.raw();
        let mut i = self.home(zone);
        for _ in 0..self.slots.len() {
            match self.slots[i].key.load(Ordering::Acquire) {
                k if k == key => return Some(SlotIdx(i as u32)),
                EMPTY => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
        None
    }

    /// The slot of a zone, keying a new one if needed. Safe to call from several threads.
    pub fn insert(&self, zone: ZoneId) -> Result<SlotIdx, TableFull> {
        let key = zone.raw();
        let mut i = self.home(zone);
        for _ in 0..self.slots.len() {
            let slot = &self.slots[i];
            match slot.key.load(Ordering::Acquire) {
                k if k == key => return Ok(SlotIdx(i as u32)),
                EMPTY => {
                    if self.keys.fetch_add(1, Ordering::AcqRel) >= self.keys_max {
                        self.keys.fetch_sub(1, Ordering::AcqRel);
                        return Err(self.full());
                    }
                    match slot.key.compare_exchange(EMPTY, key, Ordering::AcqRel, Ordering::Acquire) {
                        Ok(_) => return Ok(SlotIdx(i as u32)),
                        Err(k) => {
                            self.keys.fetch_sub(1, Ordering::AcqRel);
                            if k == key {
                                return Ok(SlotIdx(i as u32));
                            }
                            i = (i + 1) & self.mask;
                        }
                    }
                }
                _ => i = (i + 1) & self.mask,
            }
        }
        Err(self.full())
    }

    fn full(&self) -> TableFull {
        TableFull { slots: self.slots.len(), max: self.keys_max }
    }

    /// Publishes a zone's new snapshot (one atomic swap).
    pub fn publish(&self, idx: SlotIdx, snap: Arc<PriceSnapshot>) {
        let slot = &self.slots[idx.0 as usize];
        debug_assert_eq!(slot.key.load(Ordering::Relaxed), snap.zone.raw());
        slot.fresh_at_ms.store(snap.computed_at_ms, Ordering::Release);
        slot.multiplier_milli.store(snap.multiplier_milli, Ordering::Release);
        slot.snap.store(Some(snap));
    }

    /// Removes a zone's snapshot (eviction); its slot stays keyed.
    pub fn clear(&self, idx: SlotIdx) {
        let slot = &self.slots[idx.0 as usize];
        slot.multiplier_milli.store(0, Ordering::Release);
        slot.snap.store(None);
    }

    /// Records that the owner confirmed the snapshot current at `now_ms`.
    pub fn touch(&self, idx: SlotIdx, now_ms: u64) {
        self.slots[idx.0 as usize].fresh_at_ms.store(now_ms, Ordering::Release);
    }

    /// The latest snapshot in a slot. Lock-free, allocation-free.
    #[inline]
    pub fn load(&self, idx: SlotIdx) -> Guard<Option<Arc<PriceSnapshot>>> {
        self.slots[idx.0 as usize].snap.load()
    }

    /// The latest snapshot of a zone. Lock-free, allocation-free.
    #[inline]
    pub fn get(&self, zone: ZoneId) -> Option<Guard<Option<Arc<PriceSnapshot>>>> {
        self.slot_of(zone).map(|i| self.load(i))
    }

    /// When the owner last confirmed this slot's snapshot current.
    pub fn fresh_at_ms(&self, idx: SlotIdx) -> u64 {
        self.slots[idx.0 as usize].fresh_at_ms.load(Ordering::Acquire)
    }

    /// The published multiplier of a slot, 0 when it has no snapshot.
    #[inline]
    pub fn multiplier_milli(&self, idx: SlotIdx) -> u32 {
        self.slots[idx.0 as usize].multiplier_milli.load(Ordering::Acquire)
    }

    /// Counts one quote against a slot (read back by the owner's tick).
    #[inline]
    pub fn note_quote(&self, idx: SlotIdx) {
        self.slots[idx.0 as usize].quotes.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the quotes counted since the last call.
    pub fn take_quotes(&self, idx: SlotIdx) -> u32 {
        self.slots[idx.0 as usize].quotes.swap(0, Ordering::Relaxed)
    }

    /// Number of slots (fixed).
    pub fn slots(&self) -> usize {
        self.slots.len()
    }

    /// Bytes held by the table itself (slots; snapshots are counted by their owners).
    pub fn bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fare::Currency;

    fn fields(zone: ZoneId, version: u64) -> SnapshotFields {
        SnapshotFields {
            zone,
            version,
            multiplier_milli: 1200,
            target_milli: 1300,
            fare: FareTable {
                version: 1,
                base_minor: 100,
                per_km_minor: 100,
                per_min_minor: 10,
                minimum_minor: 500,
                surge_cap_milli: 3000,
                currency: Currency::new("USD").expect("valid"),
            },
            policy_version: 1,
            confidence_permille: 500,
            supply: 3,
            demand: 9,
            quotes: 4,
            neighbour_mean_milli: 0,
            computed_at_ms: 42,
        }
    }

    #[test]
    fn sealed_snapshots_detect_any_changed_field() {
        let z = ZoneId::from_lat_lng(1.0, 1.0, 8).expect("valid");
        let s = PriceSnapshot::seal(fields(z, 1));
        assert!(s.is_intact());
        let mut t = s.clone();
        t.multiplier_milli += 1;
        assert!(!t.is_intact());
    }

    #[test]
    fn a_full_table_refuses_new_zones_but_finds_old_ones() {
        let t = SnapshotTable::with_capacity(8); // 16 slots, 8 keys
        let zones: Vec<ZoneId> = (0..9)
            .map(|i| ZoneId::from_lat_lng(10.0 + f64::from(i), 10.0, 8).expect("valid"))
            .collect();
        for z in &zones[..8] {
            t.insert(*z).expect("room");
        }
        assert_eq!(t.insert(zones[8]), Err(TableFull { slots: 16, max: 8 }));
        for z in &zones[..8] {
            assert_eq!(t.insert(*z), Ok(t.slot_of(*z).expect("present")));
        }
        assert_eq!(t.slot_of(zones[8]), None);
    }

    #[test]
    fn publish_then_get_returns_the_snapshot_and_clear_removes_it() {
        let t = SnapshotTable::with_capacity(8);
        let z = ZoneId::from_lat_lng(1.0, 1.0, 8).expect("valid");
        let i = t.insert(z).expect("room");
        assert!(t.get(z).expect("keyed").is_none());
        t.publish(i, Arc::new(PriceSnapshot::seal(fields(z, 7))));
        assert_eq!(t.get(z).expect("keyed").as_ref().map(|s| s.version), Some(7));
        assert_eq!(t.multiplier_milli(i), 1200);
        t.clear(i);
        assert!(t.get(z).expect("keyed").is_none());
        assert_eq!(t.multiplier_milli(i), 0);
    }
}
