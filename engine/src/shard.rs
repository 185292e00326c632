//! A shard: the zones one actor owns, as a plain single-threaded struct. The actor shell
//! (`crate::shell`) feeds it messages and timer ticks; tests and benchmarks can drive it
//! directly. Time is an argument.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::core::{FareChangeError, HotState, ZoneCore, ZoneLimits};
use crate::event::{Event, EventOutcome, RejectReason};
use crate::fare::FareTable;
use crate::policy::SurgePolicy;
use crate::snapshot::{PriceSnapshot, SlotIdx, SnapshotTable};
use crate::zone::ZoneId;
use crate::FixedMap;

/// What a shard needs to know that does not change per call.
#[derive(Clone, Debug)]
pub struct ShardSettings {
    /// Zone limits and windows.
    pub limits: ZoneLimits,
    /// Fare table for new zones.
    pub default_fare: FareTable,
    /// Node-wide zone limit.
    pub zones_max: usize,
    /// Passivation delay.
    pub zone_idle_evict_ms: u64,
}

/// One zone as a shard holds it: its core plus where it and its neighbours publish.
#[derive(Debug)]
struct ZoneEntry {
    core: ZoneCore,
    slot: SlotIdx,
    /// Slots of the adjacent zones (reserved at creation), for price blending.
    neighbours: [Option<SlotIdx>; 6],
}

/// Counts from one tick.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TickStats {
    /// Zones ticked.
    pub zones: usize,
    /// New snapshots published.
    pub published: usize,
    /// Zones passivated.
    pub evicted: usize,
}

impl std::ops::AddAssign for TickStats {
    fn add_assign(&mut self, o: Self) {
        self.zones += o.zones;
        self.published += o.published;
        self.evicted += o.evicted;
    }
}

/// A set of zones owned by one actor.
#[derive(Debug)]
pub struct Shard {
    zones: FixedMap<ZoneId, ZoneEntry>,
    table: Arc<SnapshotTable>,
    zone_count: Arc<AtomicUsize>,
    settings: Arc<ShardSettings>,
    policy: Arc<SurgePolicy>,
    /// Reused between ticks: snapshots computed this tick, published after all are computed
    /// so every zone blends with its neighbours' previous prices, whatever the order.
    pending: Vec<(SlotIdx, Arc<PriceSnapshot>)>,
    evict: Vec<ZoneId>,
}

impl Shard {
    /// An empty shard publishing into `table`; `zone_count` is shared by the node's shards to
    /// enforce `zones_max`.
    pub fn new(
        table: Arc<SnapshotTable>,
        zone_count: Arc<AtomicUsize>,
        settings: Arc<ShardSettings>,
        policy: Arc<SurgePolicy>,
    ) -> Self {
        Self {
            zones: FixedMap::default(),
            table,
            zone_count,
            settings,
            policy,
            pending: Vec::new(),
            evict: Vec::new(),
        }
    }

    fn entry(&mut self, zone: ZoneId, now_ms: u64) -> Result<&mut ZoneEntry, RejectReason> {
        if !self.zones.contains_key(&zone) {
            self.create(zone, now_ms)?;
        }
        self.zones.get_mut(&zone).ok_or(RejectReason::ZoneLimit)
    }

    fn create(&mut self, zone: ZoneId, now_ms: u64) -> Result<(), RejectReason> {
        if self.zone_count.fetch_add(1, Ordering::AcqRel) >= self.settings.zones_max {
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::ZoneLimit);
        }
        let Ok(slot) = self.table.insert(zone) else {
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::ZoneLimit);
        };
        let mut neighbours = [None; 6];
        for (n, nb) in neighbours.iter_mut().zip(zone.neighbours().iter()) {
            *n = self.table.insert(nb).ok();
        }
        let mut core = ZoneCore::new(zone, self.settings.default_fare, now_ms, &self.settings.limits);
        let mean = neighbour_mean(&self.table, &neighbours);
        // A new zone gets a price at once: quotes need not wait for the next tick.
        if let Some(snap) = core.tick(now_ms, &self.policy, &self.settings.limits, 0, mean) {
            self.table.publish(slot, Arc::new(snap));
        }
        self.zones.insert(zone, ZoneEntry { core, slot, neighbours });
        Ok(())
    }

    /// Applies a batch of events (all routed to this shard) at `now_ms`, appending one
    /// outcome per event to `out`, in order.
    pub fn apply(&mut self, events: &[Event], now_ms: u64, out: &mut Vec<EventOutcome>) {
        out.reserve(events.len());
        let settings = Arc::clone(&self.settings);
        for ev in events {
            let outcome = match self.entry(ev.zone, now_ms) {
                Ok(e) => e.core.apply(ev, now_ms, &settings.limits),
                Err(r) => EventOutcome::Rejected(r),
            };
            out.push(outcome);
        }
    }

    /// One pricing tick over every zone of the shard; passivates idle zones.
    pub fn tick(&mut self, now_ms: u64) -> TickStats {
        let mut stats = TickStats::default();
        let (table, settings, policy) = (&self.table, &self.settings, &self.policy);
        for (zone, e) in self.zones.iter_mut() {
            stats.zones += 1;
            if e.core.is_idle(now_ms, settings.zone_idle_evict_ms) {
                self.evict.push(*zone);
                continue;
            }
            let quotes = table.take_quotes(e.slot);
            let mean = neighbour_mean(table, &e.neighbours);
            match e.core.tick(now_ms, policy, &settings.limits, quotes, mean) {
                Some(snap) => self.pending.push((e.slot, Arc::new(snap))),
                None => table.touch(e.slot, now_ms),
            }
        }
        stats.published = self.pending.len();
        for (slot, snap) in self.pending.drain(..) {
            table.publish(slot, snap);
        }
        for zone in self.evict.drain(..) {
            if let Some(e) = self.zones.remove(&zone) {
                table.clear(e.slot);
                self.zone_count.fetch_sub(1, Ordering::AcqRel);
                stats.evicted += 1;
            }
        }
        if self.zones.capacity() > 4 * self.zones.len().max(64) {
            self.zones.shrink_to_fit();
        }
        stats
    }

    /// Changes a zone's fare table (creating the zone if needed); effective next tick.
    pub fn set_fare(&mut self, zone: ZoneId, fare: FareTable, now_ms: u64) -> Result<(), FareSetError> {
        let settings = Arc::clone(&self.settings);
        let e = self.entry(zone, now_ms).map_err(|_| FareSetError::ZoneLimit)?;
        e.core.set_fare(fare, &settings.limits).map_err(FareSetError::Change)
    }

    /// The fare table of a zone at a version, if current or retained.
    pub fn fare_version(&self, zone: ZoneId, version: u32) -> Option<FareTable> {
        self.zones.get(&zone).and_then(|e| e.core.fare_version(version))
    }

    /// A zone's hot state, if it is live here.
    pub fn hot_state(&self, zone: ZoneId) -> Option<HotState> {
        self.zones.get(&zone).map(|e| e.core.hot_state())
    }

    /// Replaces the surge policy; effective next tick.
    pub fn set_policy(&mut self, policy: Arc<SurgePolicy>) {
        self.policy = policy;
    }

    /// Live zones in this shard.
    pub fn len(&self) -> usize {
        self.zones.len()
    }

    /// True when the shard holds no zone.
    pub fn is_empty(&self) -> bool {
        self.zones.is_empty()
    }

    /// Bytes of hot state: map buckets plus every zone's own allocations.
    pub fn bytes(&self) -> usize {
        self.zones.allocation_size()
            + self.zones.values().map(|e| e.core.bytes() - std::mem::size_of::<ZoneCore>()).sum::<usize>()
    }
}

/// Mean published multiplier of the neighbour slots that have a price.
fn neighbour_mean(table: &SnapshotTable, slots: &[Option<SlotIdx>; 6]) -> Option<u32> {
    let (mut sum, mut n) = (0u32, 0u32);
    for s in slots.iter().flatten() {
        let m = table.multiplier_milli(*s);
        if m > 0 {
            sum += m;
            n += 1;
        }
    }
    (n > 0).then(|| (sum + n / 2) / n)
}

/// A fare change refused by a shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FareSetError {
    /// The change itself is invalid.
    #[error(transparent)]
    Change(#[from] FareChangeError),
    /// The zone is not live and the node is at `zones_max`.
    #[error("zone limit reached; cannot create the zone to set its fare")]
    ZoneLimit,
}
