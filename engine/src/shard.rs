//! A shard: the zones one actor owns, as a plain single-threaded struct. The actor shell
//! (`crate::shell`) feeds it messages and timer ticks; tests and benchmarks can drive it
//! directly. Time is an argument.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use crate::core::{FareChangeError, HotState, ZoneCore, ZoneExport, ZoneLimits};
use crate::event::{Event, EventOutcome, Origin, Producer, RejectReason};
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
    /// Slots of the adjacent zones, for price blending; `None` until that neighbour has a
    /// slot (it is looked up again every `NEIGHBOUR_RESOLVE_TICKS`).
    neighbours: [Option<SlotIdx>; 6],
    /// How many neighbours the zone has (6, or 5 around a pentagon).
    neighbours_len: u8,
    /// Each neighbour's weight in the blend, proportional to the inverse distance between
    /// the cells' centres (H3 cells are not all alike), summing to about 255.
    neighbour_weights: [u8; 6],
    /// The neighbours' weighted mean multiplier as last read (see `NEIGHBOUR_READ_TICKS`).
    neighbour_mean: Option<u32>,
    /// The slot's quote total at the last tick; the next tick counts the difference.
    quotes_seen: u32,
    /// Changed since the last [`Shard::export_dirty`] (an event applied, a fare set, a new
    /// snapshot published).
    dirty: bool,
}

/// What one tick of a shard hands to the [`TickSink`]: the snapshots it published, and
/// (every [`UNCHANGED_REPORT_TICKS`] ticks) the zones whose snapshot stayed current. The
/// cluster replicates the first and confirms the second to the other nodes.
#[derive(Debug)]
pub struct TickOutput<'a> {
    /// Engine time of the tick.
    pub now_ms: u64,
    /// Snapshots published by this tick.
    pub published: &'a [PriceSnapshot],
    /// Zones whose snapshot is unchanged and still current (empty on most ticks).
    pub unchanged: &'a [ZoneId],
}

/// Called by every shard after every tick (on the shard's thread: keep it short, e.g. a
/// `try_send` to a bounded channel).
pub type TickSink = Arc<dyn Fn(&TickOutput<'_>) + Send + Sync>;

/// The most recent published snapshots of every zone of a node, newest last, bounded: the
/// admin's zone history. Shards append once per tick (one short lock per shard per tick,
/// never on the quote path).
#[derive(Debug, Default)]
pub struct SnapshotLog {
    max: usize,
    ring: std::sync::Mutex<std::collections::VecDeque<PriceSnapshot>>,
}

impl SnapshotLog {
    /// A log keeping at most `max` snapshots (0: none).
    pub fn new(max: usize) -> Self {
        Self {
            max,
            ring: std::sync::Mutex::new(std::collections::VecDeque::new()),
        }
    }

    /// Appends snapshots, dropping the oldest beyond the bound.
    pub fn record(&self, snaps: &[PriceSnapshot]) {
        if self.max == 0 || snaps.is_empty() {
            return;
        }
        let mut r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        for s in snaps.iter().rev().take(self.max).rev() {
            if r.len() == self.max {
                r.pop_front();
            }
            r.push_back(*s);
        }
    }

    /// Up to `n` of `zone`'s remembered snapshots, newest first.
    pub fn of(&self, zone: ZoneId, n: usize) -> Vec<PriceSnapshot> {
        let r = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        r.iter()
            .rev()
            .filter(|s| s.zone == zone)
            .take(n)
            .copied()
            .collect()
    }
}

/// A tick reports the zones with unchanged snapshots once per this many ticks (1 s at the
/// default 250 ms tick).
pub const UNCHANGED_REPORT_TICKS: u64 = 4;

struct Sink(TickSink);

impl std::fmt::Debug for Sink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TickSink")
    }
}

/// A zone reads its neighbours' prices once per this many ticks (staggered by zone) and
/// reuses the mean in between: neighbours usually live far apart in the table, and reading
/// six of them every tick was most of a tick's cost. At 250 ms ticks the blend lags by at
/// most a second.
const NEIGHBOUR_READ_TICKS: u64 = 4;

/// Zones with a neighbour not yet in the table look it up again once per this many ticks
/// (staggered by zone), so zones created next to them are blended in within seconds.
const NEIGHBOUR_RESOLVE_TICKS: u64 = 64;

impl ZoneEntry {
    fn missing_neighbours(&self) -> bool {
        self.neighbours[..usize::from(self.neighbours_len)]
            .iter()
            .any(Option::is_none)
    }

    fn resolve_neighbours(&mut self, table: &SnapshotTable) {
        let zone = self.core.zone();
        let nbs = zone.neighbours();
        if self.neighbours_len == 0 {
            self.neighbours_len = nbs.len() as u8;
            self.neighbour_weights = neighbour_weights(zone, nbs.iter());
        }
        for (n, nb) in self.neighbours.iter_mut().zip(nbs.iter()) {
            if n.is_none() {
                *n = table.slot_of(nb);
            }
        }
    }

    fn neighbour_mean(&self, table: &SnapshotTable) -> Option<u32> {
        let len = usize::from(self.neighbours_len);
        neighbour_mean(
            table,
            &self.neighbours[..len],
            &self.neighbour_weights[..len],
        )
    }
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
    /// The zones, inline and contiguous: the tick walks memory sequentially, which the
    /// hardware prefetcher follows (boxing them cost a cache miss per zone per tick).
    zones: Vec<ZoneEntry>,
    /// Zone → position in `zones`.
    index: FixedMap<ZoneId, u32>,
    table: Arc<SnapshotTable>,
    zone_count: Arc<AtomicUsize>,
    settings: Arc<ShardSettings>,
    policy: Arc<SurgePolicy>,
    /// Reused between ticks: slots published this tick with their new multiplier. Snapshots
    /// are published as they are computed, but the multiplier that neighbours blend with is
    /// exposed only after the whole tick, so every zone blends with its neighbours' previous
    /// prices whatever the order.
    pending: Vec<(SlotIdx, u32)>,
    evict: Vec<ZoneId>,
    ticks: u64,
    sink: Option<Sink>,
    log: Option<Arc<SnapshotLog>>,
    published: Vec<PriceSnapshot>,
    /// Snapshots in `published` from zone creations before this tick (already logged).
    published_before_tick: usize,
    unchanged: Vec<ZoneId>,
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
            zones: Vec::new(),
            index: FixedMap::default(),
            table,
            zone_count,
            settings,
            policy,
            pending: Vec::new(),
            evict: Vec::new(),
            ticks: 0,
            sink: None,
            log: None,
            published: Vec::new(),
            published_before_tick: 0,
            unchanged: Vec::new(),
        }
    }

    /// Records every published snapshot in `log` from now on.
    pub fn set_log(&mut self, log: Arc<SnapshotLog>) {
        self.log = Some(log);
    }

    /// Reports every tick's output to `sink` from now on.
    pub fn set_sink(&mut self, sink: TickSink) {
        self.sink = Some(Sink(sink));
    }

    fn entry(&mut self, zone: ZoneId, now_ms: u64) -> Result<&mut ZoneEntry, RejectReason> {
        let i = match self.index.get(&zone) {
            Some(&i) => i,
            None => self.create(zone, now_ms)?,
        };
        Ok(&mut self.zones[i as usize])
    }

    fn create(&mut self, zone: ZoneId, now_ms: u64) -> Result<u32, RejectReason> {
        let core = ZoneCore::new(
            zone,
            self.settings.default_fare,
            now_ms,
            &self.settings.limits,
        );
        self.create_with(core, now_ms)
    }

    fn create_with(&mut self, core: ZoneCore, now_ms: u64) -> Result<u32, RejectReason> {
        let zone = core.zone();
        if self.zone_count.fetch_add(1, Ordering::AcqRel) >= self.settings.zones_max {
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::ZoneLimit);
        }
        let Ok(slot) = self.table.insert(zone) else {
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::ZoneLimit);
        };
        let mut e = ZoneEntry {
            core,
            slot,
            neighbours: [None; 6],
            neighbours_len: 0,
            neighbour_weights: [0; 6],
            neighbour_mean: None,
            // A passivated zone's slot keeps its old count: start from it.
            quotes_seen: self.table.quote_total(slot),
            dirty: true,
        };
        e.resolve_neighbours(&self.table);
        let mean = e.neighbour_mean(&self.table);
        e.neighbour_mean = mean;
        // A new zone gets a price at once: quotes need not wait for the next tick.
        if let Some(snap) = e
            .core
            .tick(now_ms, &self.policy, &self.settings.limits, 0, mean)
        {
            self.table.publish(slot, &snap);
            if let Some(log) = &self.log {
                log.record(&[snap]);
            }
            if self.sink.is_some() {
                self.published.push(snap);
            }
        }
        let i = self.zones.len() as u32;
        if self.zones.len() == self.zones.capacity() {
            // Grow by a quarter, not double: spare capacity is spare zones' worth of memory.
            self.zones.reserve_exact((self.zones.len() / 4).max(16));
        }
        self.zones.push(e);
        self.index.insert(zone, i);
        Ok(i)
    }

    /// Applies a batch of events (all routed to this shard) at `now_ms`, appending one
    /// outcome per event to `out`, in order.
    pub fn apply(&mut self, events: &[Event], now_ms: u64, out: &mut Vec<EventOutcome>) {
        self.apply_from(None, events, now_ms, out);
    }

    /// [`apply`](Self::apply) for a batch from `producer` (its events' ids are their
    /// sequences, see [`crate::producer`]), or without one.
    pub fn apply_from(
        &mut self,
        producer: Option<Producer>,
        events: &[Event],
        now_ms: u64,
        out: &mut Vec<EventOutcome>,
    ) {
        self.apply_as(producer.into(), events, now_ms, out);
    }

    /// [`apply_from`](Self::apply_from) for a batch from `origin` (its credential held to
    /// its share of each zone's capacities, [`crate::share`]).
    pub fn apply_as(
        &mut self,
        origin: Origin,
        events: &[Event],
        now_ms: u64,
        out: &mut Vec<EventOutcome>,
    ) {
        out.reserve(events.len());
        let settings = Arc::clone(&self.settings);
        for ev in events {
            let outcome = match self.entry(ev.zone, now_ms) {
                Ok(e) => {
                    let o = e.core.apply_as(origin, ev, now_ms, &settings.limits);
                    e.dirty |= o == EventOutcome::Applied;
                    o
                }
                Err(r) => EventOutcome::Rejected(r),
            };
            out.push(outcome);
        }
    }

    /// One pricing tick over every zone of the shard; passivates idle zones.
    pub fn tick(&mut self, now_ms: u64) -> TickStats {
        let mut stats = TickStats::default();
        self.ticks += 1;
        let (table, settings, policy, ticks) =
            (&self.table, &self.settings, &self.policy, self.ticks);
        let report = self.sink.is_some() || self.log.is_some();
        self.published_before_tick = self.published.len();
        let report_unchanged = report && ticks % UNCHANGED_REPORT_TICKS == 0;
        for e in self.zones.iter_mut() {
            stats.zones += 1;
            let zone = e.core.zone();
            if e.core.is_idle(now_ms, settings.zone_idle_evict_ms) {
                self.evict.push(zone);
                continue;
            }
            if (ticks + zone.raw()) % NEIGHBOUR_RESOLVE_TICKS == 0 && e.missing_neighbours() {
                e.resolve_neighbours(table);
            }
            if (ticks + zone.raw()) % NEIGHBOUR_READ_TICKS == 0 {
                e.neighbour_mean = e.neighbour_mean(table);
            }
            let total = table.quote_total(e.slot);
            let quotes = total.wrapping_sub(e.quotes_seen);
            e.quotes_seen = total;
            match e
                .core
                .tick(now_ms, policy, &settings.limits, quotes, e.neighbour_mean)
            {
                Some(snap) => {
                    table.publish_snapshot(e.slot, &snap);
                    self.pending.push((e.slot, snap.multiplier_milli));
                    e.dirty = true;
                    if report {
                        self.published.push(snap);
                    }
                }
                None => {
                    table.touch(e.slot, now_ms);
                    if report_unchanged {
                        self.unchanged.push(zone);
                    }
                }
            }
        }
        if let Some(log) = &self.log {
            // Creation snapshots were recorded as they were made; these are this tick's.
            log.record(&self.published[self.published_before_tick..]);
        }
        if let Some(Sink(sink)) = &self.sink {
            sink(&TickOutput {
                now_ms,
                published: &self.published,
                unchanged: &self.unchanged,
            });
        }
        self.published.clear();
        self.unchanged.clear();
        stats.published = self.pending.len();
        for (slot, m) in self.pending.drain(..) {
            table.expose_multiplier(slot, m);
        }
        for zone in self.evict.drain(..) {
            let Some(i) = self.index.remove(&zone) else {
                continue;
            };
            let e = self.zones.swap_remove(i as usize);
            if let Some(moved) = self.zones.get(i as usize) {
                self.index.insert(moved.core.zone(), i);
            }
            table.clear(e.slot);
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            stats.evicted += 1;
        }
        if self.zones.capacity() > 4 * self.zones.len().max(64) {
            self.zones.shrink_to_fit();
            self.index.shrink_to_fit();
        }
        stats
    }

    /// Changes a zone's fare table (creating the zone if needed); effective next tick.
    pub fn set_fare(
        &mut self,
        zone: ZoneId,
        fare: FareTable,
        now_ms: u64,
    ) -> Result<(), FareSetError> {
        let settings = Arc::clone(&self.settings);
        let e = self
            .entry(zone, now_ms)
            .map_err(|_| FareSetError::ZoneLimit)?;
        e.dirty = true;
        e.core
            .set_fare(fare, &settings.limits)
            .map_err(FareSetError::Change)
    }

    /// Installs restored zones (hand-over), replacing any live copy. Each publishes a
    /// snapshot at once. Returns how many could not be installed (zone limit).
    pub fn import(&mut self, cores: Vec<ZoneCore>, now_ms: u64) -> usize {
        let mut failed = 0;
        for core in cores {
            if let Some(&i) = self.index.get(&core.zone()) {
                let e = &mut self.zones[i as usize];
                e.core = core;
                e.dirty = true;
                continue;
            }
            if self.create_with(core, now_ms).is_err() {
                failed += 1;
            }
        }
        failed
    }

    /// Takes zones out of this shard (hand-over) and returns their final state. Their
    /// snapshots stay in the table, for quotes, until the new owner replaces them.
    pub fn remove(&mut self, zones: &[ZoneId]) -> Vec<ZoneExport> {
        let mut out = Vec::new();
        for zone in zones {
            let Some(i) = self.index.remove(zone) else {
                continue;
            };
            let e = self.zones.swap_remove(i as usize);
            if let Some(moved) = self.zones.get(i as usize) {
                self.index.insert(moved.core.zone(), i);
            }
            self.zone_count.fetch_sub(1, Ordering::AcqRel);
            out.push(e.core.export());
        }
        out
    }

    /// The state of every zone changed since the last call (`all`: of every zone), for
    /// persistence; clears the changed marks.
    pub fn export_dirty(&mut self, all: bool) -> Vec<ZoneExport> {
        let mut out = Vec::new();
        for e in &mut self.zones {
            if e.dirty || all {
                e.dirty = false;
                out.push(e.core.export());
            }
        }
        out
    }

    /// The state of the given zones that are live here.
    pub fn export(&self, zones: &[ZoneId]) -> Vec<ZoneExport> {
        zones
            .iter()
            .filter_map(|z| self.get(*z))
            .map(|e| e.core.export())
            .collect()
    }

    /// The zones live in this shard.
    pub fn zone_ids(&self) -> Vec<ZoneId> {
        self.zones.iter().map(|e| e.core.zone()).collect()
    }

    /// The fare table of a zone at a version, if current or retained.
    pub fn fare_version(&self, zone: ZoneId, version: u32) -> Option<FareTable> {
        self.get(zone).and_then(|e| e.core.fare_version(version))
    }

    /// A zone's hot state, if it is live here.
    pub fn hot_state(&self, zone: ZoneId) -> Option<HotState> {
        self.get(zone).map(|e| e.core.hot_state())
    }

    fn get(&self, zone: ZoneId) -> Option<&ZoneEntry> {
        self.index.get(&zone).map(|&i| &self.zones[i as usize])
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

    /// Memory held by this shard's zones, counted structure by structure.
    pub fn memory(&self) -> ShardMemory {
        let mut m = ShardMemory {
            zones: self.zones.len(),
            hot_bytes: self.index.allocation_size()
                + self.zones.capacity() * std::mem::size_of::<ZoneEntry>()
                + self.pending.capacity() * std::mem::size_of::<(SlotIdx, u32)>(),
            ..ShardMemory::default()
        };
        for e in &self.zones {
            let (hot, dedupe) = e.core.heap_bytes();
            m.hot_bytes += hot;
            m.dedupe_bytes += dedupe;
            m.dedupe_ids += e.core.hot_state().dedupe_ids;
        }
        m
    }
}

/// Memory held by a shard's zones.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ShardMemory {
    /// Live zones.
    pub zones: usize,
    /// Hot state: the zone index and entries, drivers and fare history. (Published snapshots
    /// live in the snapshot table, allocated once at start.)
    pub hot_bytes: usize,
    /// The dedupe logs (event ids in the window).
    pub dedupe_bytes: usize,
    /// Event ids held in the dedupe logs.
    pub dedupe_ids: usize,
}

impl std::ops::AddAssign for ShardMemory {
    fn add_assign(&mut self, o: Self) {
        self.zones += o.zones;
        self.hot_bytes += o.hot_bytes;
        self.dedupe_bytes += o.dedupe_bytes;
        self.dedupe_ids += o.dedupe_ids;
    }
}

/// Mean published multiplier of the neighbour slots that have a price.
/// The weighted mean of the neighbours' exposed multipliers, thousandths; a neighbour not
/// in the table or without a price counts as 1.0× (no data is no evidence of a surge).
/// `None` for a zone without neighbours.
fn neighbour_mean(table: &SnapshotTable, slots: &[Option<SlotIdx>], weights: &[u8]) -> Option<u32> {
    let (mut sum, mut total) = (0u64, 0u64);
    for (s, &w) in slots.iter().zip(weights) {
        let m = match s {
            Some(s) => table.multiplier_milli(*s),
            None => 0,
        };
        let m = if m == 0 { crate::fare::MILLI } else { m };
        sum += u64::from(w) * u64::from(m);
        total += u64::from(w);
    }
    (total > 0).then(|| ((sum + total / 2) / total) as u32)
}

/// Blend weights of a zone's neighbours: inverse distance between cell centres, scaled to
/// sum to about 255 (each at least 1).
fn neighbour_weights(zone: ZoneId, nbs: impl Iterator<Item = ZoneId>) -> [u8; 6] {
    let (lat0, lng0) = zone.center();
    let mut inv = [0f64; 6];
    for (w, nb) in inv.iter_mut().zip(nbs) {
        let (lat, lng) = nb.center();
        // Equirectangular distance: exact enough between adjacent cells.
        let dx = (lng - lng0) * lat0.to_radians().cos();
        let dy = lat - lat0;
        *w = 1.0 / (dx * dx + dy * dy).sqrt().max(1e-9);
    }
    let total: f64 = inv.iter().sum();
    let mut out = [0u8; 6];
    for (o, w) in out.iter_mut().zip(inv) {
        if w > 0.0 {
            *o = ((w / total * 255.0).round() as u8).max(1);
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::EngineConfig;
    use crate::event::EventKind;

    #[test]
    fn the_snapshot_log_keeps_the_newest_within_its_bound() {
        let table = Arc::new(SnapshotTable::with_capacity(16));
        let mut sh = shard(&table);
        let log = Arc::new(SnapshotLog::new(5));
        sh.set_log(Arc::clone(&log));
        let zone = ZoneId::from_lat_lng(52.52, 13.40, 8).expect("zone");
        let mut out = Vec::new();
        for i in 0..8u64 {
            let ev = Event {
                id: i,
                zone,
                kind: EventKind::RiderDemand { rider: 0 },
            };
            sh.apply(&[ev], i * 1_000, &mut out);
            sh.tick(i * 1_000 + 500);
        }
        let h = log.of(zone, 100);
        assert!(!h.is_empty() && h.len() <= 5, "{}", h.len());
        assert!(h.windows(2).all(|w| w[0].version > w[1].version));
        assert_eq!(h[0].version, table.get(zone).expect("published").version);
        assert!(SnapshotLog::new(0).of(zone, 3).is_empty());
    }

    fn shard(table: &Arc<SnapshotTable>) -> Shard {
        let cfg = EngineConfig::default();
        let settings = Arc::new(ShardSettings {
            limits: cfg.zone.clone(),
            default_fare: cfg.default_fare.to_table().expect("valid"),
            zones_max: 1000,
            zone_idle_evict_ms: cfg.actors.zone_idle_evict_ms,
        });
        Shard::new(
            Arc::clone(table),
            Arc::new(AtomicUsize::new(0)),
            settings,
            Arc::new(cfg.policy),
        )
    }

    fn demand(zone: ZoneId, from_id: u64, n: u64) -> Vec<Event> {
        (from_id..from_id + n)
            .map(|id| Event {
                id,
                zone,
                kind: EventKind::RiderDemand { rider: 0 },
            })
            .collect()
    }

    /// Feeds `n` new rider sessions (anonymous) every 10 s to each zone for `minutes`, ticking
    /// every second; a zone with `n` = 0 gets a driver's heartbeat instead (it stays live
    /// without demand).
    fn run_demand(s: &mut Shard, zones: &[(ZoneId, u64)], minutes: u64) {
        let mut out = Vec::new();
        let mut id = 0;
        for t in 0..minutes * 60 {
            if t % 10 == 0 {
                for &(z, n) in zones {
                    if n == 0 {
                        id += 1;
                        let hb = Event {
                            id,
                            zone: z,
                            kind: EventKind::DriverAvailable { driver: z.raw() },
                        };
                        s.apply(&[hb], t * 1000, &mut out);
                    }
                    s.apply(&demand(z, id, n), t * 1000, &mut out);
                    id += n;
                }
            }
            s.tick(t * 1000 + 500);
        }
    }

    #[test]
    fn a_calmer_zone_next_to_a_surging_one_is_lifted_but_one_without_demand_is_not() {
        let table = Arc::new(SnapshotTable::with_capacity(100));
        let mut s = shard(&table);
        let hot = ZoneId::from_lat_lng(48.8584, 2.2945, 8).expect("valid");
        let nb = hot.neighbours();
        let mut nbs = nb.iter();
        let calm = nbs.next().expect("has neighbours");
        let empty = nbs.next().expect("has neighbours");
        let far = ZoneId::from_lat_lng(48.95, 2.5, 8).expect("valid");
        // The empty zone exists (a driver is there) but has no rider.
        // 2 sessions per 10 s decay to about 2 · 180 / 10 / ln 2 ≈ 52 in a window: against the
        // floor of 1 driver, far above balance.
        run_demand(&mut s, &[(empty, 0), (hot, 2), (calm, 1), (far, 1)], 20);
        let price = |z: ZoneId| table.get(z).map(|s| s.multiplier_milli).expect("priced");
        assert!(price(hot) > 2000, "hot zone at {}", price(hot));
        assert!(
            price(calm) > price(far),
            "the calmer neighbour of a surging zone ({}) is not lifted above a lone zone ({})",
            price(calm),
            price(far)
        );
        assert_eq!(
            price(empty),
            1000,
            "a zone without demand surged from its neighbours"
        );
    }

    #[test]
    fn a_neighbour_without_a_price_counts_as_one() {
        let table = Arc::new(SnapshotTable::with_capacity(100));
        let mut s = shard(&table);
        let hot = ZoneId::from_lat_lng(48.8584, 2.2945, 8).expect("valid");
        run_demand(&mut s, &[(hot, 2)], 20);
        let snap = table.get(hot).expect("priced");
        // All six neighbours are unknown: the mean is exactly 1.0x, and it pulls the price
        // below the zone's own target.
        assert_eq!(snap.neighbour_mean_milli, 1000);
        assert!(snap.multiplier_milli < snap.target_milli);
    }

    #[test]
    fn neighbour_weights_follow_the_inverse_distance_and_sum_to_about_255() {
        let z = ZoneId::from_lat_lng(48.8584, 2.2945, 8).expect("valid");
        let w = neighbour_weights(z, z.neighbours().iter());
        let sum: u32 = w.iter().map(|&x| u32::from(x)).sum();
        assert!((250..=260).contains(&sum), "{w:?}");
        assert!(w.iter().all(|&x| (35..=50).contains(&x)), "{w:?}");
    }

    #[test]
    fn a_neighbour_created_later_is_blended_in_after_it_is_resolved() {
        let table = Arc::new(SnapshotTable::with_capacity(100));
        let mut s = shard(&table);
        let quiet = ZoneId::from_lat_lng(48.8584, 2.2945, 8).expect("valid");
        let hot = quiet.neighbours().iter().next().expect("has neighbours");
        let mut out = Vec::new();
        s.apply(&demand(quiet, 10_000_000, 1), 0, &mut out); // created first: its neighbour has no slot
        run_demand(&mut s, &[(quiet, 0), (hot, 2)], 20);
        let m = table
            .get(quiet)
            .map(|s| s.neighbour_mean_milli)
            .expect("priced");
        assert!(m > 1000, "late neighbour never blended in");
    }
}
