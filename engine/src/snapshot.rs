//! Immutable price snapshots and the lock-free table any thread reads them from.
//!
//! # The table
//!
//! Two arrays, allocated once at start:
//!
//! - an open-addressing hash index (linear probing) of 8-byte entries, a zone fingerprint
//!   beside its slot number (the slot holds the full zone id, checked on every lookup). An
//!   entry is written once, by
//!   compare-and-swap, and never changes afterwards: a zone keeps its slot for the life of the
//!   process (an evicted zone's slot keeps its key with no snapshot), so readers never see a
//!   slot change identity under them;
//! - dense slots, one per keyed zone, each holding the zone's latest snapshot inline in two
//!   cache lines (a price line, all an unsigned quote reads, and a detail line) behind a
//!   **sequence lock**: a writer makes the sequence odd, stores the words, makes it
//!   even again; a reader copies the words and retries if the sequence moved. Readers take no
//!   lock, never block a writer, send no message and allocate nothing; publishing allocates
//!   nothing either (the earlier `Arc` + `arc-swap` design spent most of a tick in `malloc`
//!   and in arc-swap's debt scan). Each snapshot also carries a checksum, which the
//!   concurrency test verifies on every read.
//!
//! Capacity is fixed at construction; inserting past it fails with [`TableFull`].

use std::sync::atomic::{fence, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use crate::fare::{Currency, FareTable};
use crate::zone::ZoneId;

/// What one tick of one zone computed: everything a quote needs. Sealed into a
/// [`PriceSnapshot`] before publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotFields {
    /// The zone priced.
    pub zone: ZoneId,
    /// Increases by one with every published change for this zone (starts at 1).
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
}

/// The immutable, published result of a tick: its fields (read through `Deref`) plus a
/// checksum that lets readers prove they never observe a torn or mixed-up snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceSnapshot {
    fields: SnapshotFields,
    /// 32 bits of a checksum over every field, set by [`PriceSnapshot::seal`].
    check: u32,
}

impl std::ops::Deref for PriceSnapshot {
    type Target = SnapshotFields;

    fn deref(&self) -> &SnapshotFields {
        &self.fields
    }
}

/// Mixes a word into a running checksum (splitmix64 finaliser).
fn mix(h: u64, x: u64) -> u64 {
    let mut z = h ^ x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl SnapshotFields {
    fn checksum(&self) -> u32 {
        let t = &self.fare;
        let c = t.currency.bytes();
        let h = [
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
        .fold(0x5eed, |h, &x| mix(h, x));
        h as u32
    }
}

impl PriceSnapshot {
    /// Seals a tick's fields: computes the checksum.
    pub fn seal(fields: SnapshotFields) -> Self {
        Self {
            fields,
            check: fields.checksum(),
        }
    }

    /// True when every field is as sealed.
    pub fn is_intact(&self) -> bool {
        self.check == self.fields.checksum()
    }
}

/// Index of a zone's slot in a [`SnapshotTable`]; stable for the life of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotIdx(u32);

/// The table cannot take another zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("snapshot table is full ({max} zones); raise zones_max")]
pub struct TableFull {
    /// Zones it holds.
    pub max: usize,
}

const EMPTY: u64 = 0;
/// Words of the price line (what an unsigned price needs).
const A_WORDS: usize = 6;
/// Words of the detail line (the inputs a signed token and `explain` also need).
const B_WORDS: usize = 4;

/// The first cache line of a zone's slot: everything an unsigned price reads.
#[derive(Debug, Default)]
#[repr(align(64))]
struct PriceLine {
    /// The zone this slot belongs to (written once, before the index points here); lookups
    /// confirm a fingerprint match against it.
    key: AtomicU64,
    /// Sequence lock over both lines. Even: stable; odd: a writer is storing.
    seq: AtomicU64,
    /// Version (0 when there is no snapshot), multiplier, fare table, computed-at.
    words: [AtomicU64; A_WORDS],
}

/// The second cache line of a zone's slot: explain inputs and the owner's counters.
#[derive(Debug, Default)]
#[repr(align(64))]
struct DetailLine {
    /// Target, policy version, supply, demand, quotes, neighbours, confidence, checksum.
    words: [AtomicU64; B_WORDS],
    /// Engine time at which the owner last confirmed the snapshot current.
    fresh_at_ms: AtomicU64,
    /// The multiplier exposed to neighbours' blending; 0 when there is no snapshot.
    multiplier_milli: AtomicU32,
    /// Running count of quotes issued against this zone, split in lanes (see
    /// [`QUOTE_LANES`]); the owner's tick sums them and takes the difference.
    quote_lanes: [AtomicU32; QUOTE_LANES],
}

/// Lanes of a slot's quote counter. Each of the first `QUOTE_LANES - 1` threads that quote
/// gets a lane of its own in every slot, which only it writes, so counting a quote is a
/// plain load and store instead of a locked read-modify-write (a full memory barrier that
/// made a signed quote pay its cache misses in full). Further threads share the last lane
/// with atomic adds. No count is ever lost.
pub const QUOTE_LANES: usize = 4;

static QUOTE_LANES_TAKEN: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    /// This thread's quote lane, assigned on its first quote.
    static QUOTE_LANE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
}

fn my_quote_lane() -> usize {
    QUOTE_LANE.with(|l| {
        if l.get() == usize::MAX {
            let n = QUOTE_LANES_TAKEN.fetch_add(1, Ordering::Relaxed);
            l.set(n.min(QUOTE_LANES - 1));
        }
        l.get()
    })
}

type Words = ([u64; A_WORDS], [u64; B_WORDS]);

fn lo_hi(lo: u32, hi: u32) -> u64 {
    u64::from(lo) | u64::from(hi) << 32
}
fn lo(x: u64) -> u32 {
    x as u32
}
fn hi(x: u64) -> u32 {
    (x >> 32) as u32
}

fn encode(s: &PriceSnapshot) -> Words {
    let c = s.fare.currency.bytes();
    let f = &s.fare;
    (
        [
            s.version,
            lo_hi(s.multiplier_milli, f.version),
            lo_hi(f.base_minor, f.per_km_minor),
            lo_hi(f.per_min_minor, f.minimum_minor),
            lo_hi(
                f.surge_cap_milli,
                u32::from(c[0]) | u32::from(c[1]) << 8 | u32::from(c[2]) << 16,
            ),
            s.computed_at_ms,
        ],
        [
            lo_hi(s.target_milli, s.policy_version),
            lo_hi(s.supply, s.demand),
            lo_hi(s.quotes, s.neighbour_mean_milli),
            lo_hi(u32::from(s.confidence_permille), s.check),
        ],
    )
}

/// The fields of the price line. The words come from this process's own writers, never from
/// the network, so nothing needs validating beyond "is there a snapshot".
fn decode_price(a: &[u64; A_WORDS]) -> Option<(u64, u32, FareTable, u64)> {
    if a[0] == 0 {
        return None;
    }
    let cur = hi(a[4]);
    let fare = FareTable {
        version: hi(a[1]),
        base_minor: lo(a[2]),
        per_km_minor: hi(a[2]),
        per_min_minor: lo(a[3]),
        minimum_minor: hi(a[3]),
        surge_cap_milli: lo(a[4]),
        currency: Currency::from_trusted([cur as u8, (cur >> 8) as u8, (cur >> 16) as u8]),
    };
    Some((a[0], lo(a[1]), fare, a[5]))
}

fn decode(zone: ZoneId, (a, b): &Words) -> Option<PriceSnapshot> {
    let (version, multiplier_milli, fare, computed_at_ms) = decode_price(a)?;
    Some(PriceSnapshot {
        fields: SnapshotFields {
            zone,
            version,
            multiplier_milli,
            target_milli: lo(b[0]),
            fare,
            policy_version: hi(b[0]),
            confidence_permille: lo(b[3]) as u16,
            supply: lo(b[1]),
            demand: hi(b[1]),
            quotes: lo(b[2]),
            neighbour_mean_milli: hi(b[2]),
            computed_at_ms,
        },
        check: hi(b[3]),
    })
}

/// The price part of a snapshot: all an unsigned quote needs (one cache line).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PriceView {
    /// Snapshot version.
    pub version: u64,
    /// Multiplier, thousandths.
    pub multiplier_milli: u32,
    /// Fare table in force.
    pub fare: FareTable,
    /// Engine time of the tick that computed it.
    pub computed_at_ms: u64,
}

/// The node-wide map zone → latest price snapshot. See the module docs.
#[derive(Debug)]
pub struct SnapshotTable {
    /// Hash index, 8 bytes a position: a 32-bit fingerprint of the zone (never 0) in the high
    /// half and its slot number in the low half; 0 when free. Written once, by one
    /// compare-and-swap, so a visible entry is always complete.
    index: Box<[AtomicU64]>,
    mask: usize,
    /// Slot halves, one pair per zone: prices (read by every quote) and details (read by
    /// signed quotes and ticks). Separate arrays keep the unsigned path's working set small.
    prices: Box<[PriceLine]>,
    details: Box<[DetailLine]>,
    /// Slots handed out so far.
    used: AtomicUsize,
}

impl SnapshotTable {
    /// A table for up to `zones` zones.
    pub fn with_capacity(zones: usize) -> Self {
        let zones = zones.clamp(8, u32::MAX as usize / 4);
        // The hash index is at most half full, so probe sequences stay short.
        let n = (zones * 2).next_power_of_two();
        Self {
            index: (0..n).map(|_| AtomicU64::new(EMPTY)).collect(),
            mask: n - 1,
            prices: (0..zones).map(|_| PriceLine::default()).collect(),
            details: (0..zones).map(|_| DetailLine::default()).collect(),
            used: AtomicUsize::new(0),
        }
    }

    /// Home position and fingerprint of a zone (splitmix64 spreads H3's structured bits).
    #[inline]
    fn hash(&self, zone: ZoneId) -> (usize, u64) {
        let mut z = zone.raw().wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z as usize) & self.mask, (z >> 32) | 1)
    }

    /// The slot an index entry points to, if that slot belongs to `key`.
    #[inline]
    fn candidate(&self, entry: u64, fingerprint: u64, key: u64) -> Option<SlotIdx> {
        let slot = entry as u32;
        ((entry >> 32) == fingerprint
            && self.prices[slot as usize].key.load(Ordering::Acquire) == key)
            .then_some(SlotIdx(slot))
    }

    /// The slot of a zone, if it has one.
    #[inline]
    pub fn slot_of(&self, zone: ZoneId) -> Option<SlotIdx> {
        let key = zone.raw();
        let (mut i, fp) = self.hash(zone);
        for _ in 0..self.index.len() {
            match self.index[i].load(Ordering::Acquire) {
                EMPTY => return None,
                e => match self.candidate(e, fp, key) {
                    Some(s) => return Some(s),
                    None => i = (i + 1) & self.mask,
                },
            }
        }
        None
    }

    /// The slot of a zone, giving it one if needed. Safe to call from several threads.
    ///
    /// A slot is reserved and stamped with the zone before the index entry is published, so a
    /// visible entry always leads to a complete slot. (Two threads inserting the *same* new
    /// zone at once would waste one slot; zones have a single owner, so that does not happen
    /// in practice.)
    pub fn insert(&self, zone: ZoneId) -> Result<SlotIdx, TableFull> {
        let key = zone.raw();
        let (mut i, fp) = self.hash(zone);
        let mut reserved: Option<u32> = None;
        for _ in 0..self.index.len() {
            let e = self.index[i].load(Ordering::Acquire);
            if e != EMPTY {
                if let Some(s) = self.candidate(e, fp, key) {
                    self.orphan(reserved);
                    return Ok(s);
                }
                i = (i + 1) & self.mask;
                continue;
            }
            let s = match reserved {
                Some(s) => s,
                None => {
                    let s = self.used.fetch_add(1, Ordering::AcqRel);
                    if s >= self.prices.len() {
                        self.used.fetch_sub(1, Ordering::AcqRel);
                        return Err(TableFull {
                            max: self.prices.len(),
                        });
                    }
                    self.prices[s].key.store(key, Ordering::Release);
                    reserved = Some(s as u32);
                    s as u32
                }
            };
            let entry = fp << 32 | u64::from(s);
            match self.index[i].compare_exchange(EMPTY, entry, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Ok(SlotIdx(s)),
                Err(other) => match self.candidate(other, fp, key) {
                    Some(existing) => {
                        self.orphan(reserved);
                        return Ok(existing);
                    }
                    None => i = (i + 1) & self.mask,
                },
            }
        }
        Err(TableFull {
            max: self.prices.len(),
        })
    }

    /// A slot reserved by an insert that another thread's insert of the same zone beat: its
    /// key is cleared, so [`Self::zones`] never lists the zone twice (it did, and a node then
    /// reported the difference between the two slots' quote totals, wrapped, as billions of
    /// quotes). The slot itself stays used: at most one per racing insert of a new zone.
    fn orphan(&self, reserved: Option<u32>) {
        if let Some(s) = reserved {
            self.prices[s as usize].key.store(0, Ordering::Release);
        }
    }

    /// Stores a snapshot's words under the slot's sequence lock. Writers of one slot may race
    /// (the lock is taken by compare-and-swap); readers never wait for a writer to finish
    /// other than by retrying their copy.
    fn write(&self, idx: SlotIdx, (a, b): &Words) {
        let (p, d) = (&self.prices[idx.0 as usize], &self.details[idx.0 as usize]);
        let mut spins = 0u32;
        let seq = loop {
            let s = p.seq.load(Ordering::Relaxed);
            if s & 1 == 0
                && p.seq
                    .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break s;
            }
            backoff(&mut spins);
        };
        fence(Ordering::Release);
        for (w, v) in p.words.iter().zip(a) {
            w.store(*v, Ordering::Relaxed);
        }
        for (w, v) in d.words.iter().zip(b) {
            w.store(*v, Ordering::Relaxed);
        }
        p.seq.store(seq + 2, Ordering::Release);
    }

    /// Copies words out under the sequence lock, retrying while a writer is active.
    #[inline]
    fn read<T>(&self, idx: SlotIdx, mut copy: impl FnMut(&PriceLine, &DetailLine) -> T) -> T {
        let (p, d) = (&self.prices[idx.0 as usize], &self.details[idx.0 as usize]);
        let mut spins = 0u32;
        loop {
            let before = p.seq.load(Ordering::Acquire);
            if before & 1 == 0 {
                let out = copy(p, d);
                fence(Ordering::Acquire);
                if p.seq.load(Ordering::Relaxed) == before {
                    return out;
                }
            }
            backoff(&mut spins);
        }
    }

    /// Publishes a zone's new snapshot, for quotes and for neighbours. Allocation-free.
    pub fn publish(&self, idx: SlotIdx, snap: &PriceSnapshot) {
        self.publish_snapshot(idx, snap);
        self.expose_multiplier(idx, snap.multiplier_milli);
    }

    /// Publishes a snapshot for quotes only; neighbours keep seeing the previous multiplier
    /// until [`expose_multiplier`](Self::expose_multiplier) (a tick exposes all of its new
    /// multipliers at once, after computing them all).
    pub fn publish_snapshot(&self, idx: SlotIdx, snap: &PriceSnapshot) {
        debug_assert_eq!(
            self.prices[idx.0 as usize].key.load(Ordering::Relaxed),
            snap.zone.raw()
        );
        self.write(idx, &encode(snap));
        self.details[idx.0 as usize]
            .fresh_at_ms
            .store(snap.computed_at_ms, Ordering::Release);
    }

    /// Makes a slot's multiplier visible to neighbours' blending.
    pub fn expose_multiplier(&self, idx: SlotIdx, multiplier_milli: u32) {
        self.details[idx.0 as usize]
            .multiplier_milli
            .store(multiplier_milli, Ordering::Release);
    }

    /// Removes a zone's snapshot (eviction); its slot stays keyed.
    pub fn clear(&self, idx: SlotIdx) {
        self.details[idx.0 as usize]
            .multiplier_milli
            .store(0, Ordering::Release);
        self.write(idx, &([0; A_WORDS], [0; B_WORDS]));
    }

    /// Records that the owner confirmed the snapshot current at `now_ms`.
    pub fn touch(&self, idx: SlotIdx, now_ms: u64) {
        self.details[idx.0 as usize]
            .fresh_at_ms
            .store(now_ms, Ordering::Release);
    }

    /// A consistent copy of the latest snapshot in a slot, `None` if there is none.
    /// Lock-free for readers, allocation-free.
    #[inline]
    pub fn load(&self, idx: SlotIdx) -> Option<PriceSnapshot> {
        let zone =
            ZoneId::from_raw_trusted(self.prices[idx.0 as usize].key.load(Ordering::Acquire))?;
        let words = self.read(idx, |p, d| {
            let mut a = [0u64; A_WORDS];
            let mut b = [0u64; B_WORDS];
            for (dst, src) in a.iter_mut().zip(&p.words) {
                *dst = src.load(Ordering::Relaxed);
            }
            for (dst, src) in b.iter_mut().zip(&d.words) {
                *dst = src.load(Ordering::Relaxed);
            }
            (a, b)
        });
        decode(zone, &words)
    }

    /// A consistent copy of the price part of a slot's snapshot (one cache line), `None` if
    /// there is none. Lock-free for readers, allocation-free.
    #[inline]
    pub fn load_price(&self, idx: SlotIdx) -> Option<PriceView> {
        let a = self.read(idx, |p, _| {
            let mut a = [0u64; A_WORDS];
            for (dst, src) in a.iter_mut().zip(&p.words) {
                *dst = src.load(Ordering::Relaxed);
            }
            a
        });
        decode_price(&a).map(
            |(version, multiplier_milli, fare, computed_at_ms)| PriceView {
                version,
                multiplier_milli,
                fare,
                computed_at_ms,
            },
        )
    }

    /// The latest snapshot of a zone, `None` if it has no slot or no snapshot.
    #[inline]
    pub fn get(&self, zone: ZoneId) -> Option<PriceSnapshot> {
        self.slot_of(zone).and_then(|i| self.load(i))
    }

    /// Every zone with a slot (live, replicated or passivated), in slot order. Not for the
    /// quote path: it walks the whole table.
    pub fn zones(&self) -> impl Iterator<Item = (ZoneId, SlotIdx)> + '_ {
        let used = self.used.load(Ordering::Acquire).min(self.prices.len());
        self.prices[..used].iter().enumerate().filter_map(|(i, p)| {
            ZoneId::from_raw_trusted(p.key.load(Ordering::Acquire)).map(|z| (z, SlotIdx(i as u32)))
        })
    }

    /// When the owner last confirmed this slot's snapshot current.
    pub fn fresh_at_ms(&self, idx: SlotIdx) -> u64 {
        self.details[idx.0 as usize]
            .fresh_at_ms
            .load(Ordering::Acquire)
    }

    /// The published multiplier of a slot, 0 when it has no snapshot.
    #[inline]
    pub fn multiplier_milli(&self, idx: SlotIdx) -> u32 {
        self.details[idx.0 as usize]
            .multiplier_milli
            .load(Ordering::Acquire)
    }

    /// Counts one quote against a slot (read back by the owner's tick). No locked
    /// instruction on the calling thread's own lane; see [`QUOTE_LANES`].
    #[inline]
    pub fn note_quote(&self, idx: SlotIdx) {
        let lanes = &self.details[idx.0 as usize].quote_lanes;
        let lane = my_quote_lane();
        if lane < QUOTE_LANES - 1 {
            // Only this thread ever writes this lane.
            let c = &lanes[lane];
            c.store(c.load(Ordering::Relaxed).wrapping_add(1), Ordering::Relaxed);
        } else {
            lanes[lane].fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Adds quotes counted elsewhere (another node answered them from its replica of this
    /// zone) to a slot, through the shared lane. Not for the quote path.
    pub fn add_quotes(&self, idx: SlotIdx, n: u32) {
        self.details[idx.0 as usize].quote_lanes[QUOTE_LANES - 1].fetch_add(n, Ordering::Relaxed);
    }

    /// The running total of quotes counted against a slot (wrapping). The owner keeps the
    /// total it saw last and takes the difference at each tick.
    #[inline]
    pub fn quote_total(&self, idx: SlotIdx) -> u32 {
        self.details[idx.0 as usize]
            .quote_lanes
            .iter()
            .fold(0u32, |acc, l| acc.wrapping_add(l.load(Ordering::Relaxed)))
    }

    /// Zones the table can hold (fixed).
    pub fn capacity(&self) -> usize {
        self.prices.len()
    }

    /// Bytes held by the table (index and slots; allocated once at start).
    pub fn bytes(&self) -> usize {
        self.index.len() * std::mem::size_of::<AtomicU64>()
            + self.prices.len()
                * (std::mem::size_of::<PriceLine>() + std::mem::size_of::<DetailLine>())
    }
}

/// Spin briefly, then yield: a writer preempted mid-store must not be starved by readers.
#[inline]
fn backoff(spins: &mut u32) {
    *spins += 1;
    if *spins < 64 {
        std::hint::spin_loop();
    } else {
        std::thread::yield_now();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fare::Currency;
    use std::sync::Arc;

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
        let mut t = s;
        t.fields.multiplier_milli += 1;
        assert!(!t.is_intact());
    }

    #[test]
    fn a_full_table_refuses_new_zones_but_finds_old_ones() {
        let t = SnapshotTable::with_capacity(8);
        let zones: Vec<ZoneId> = (0..9)
            .map(|i| ZoneId::from_lat_lng(10.0 + f64::from(i), 10.0, 8).expect("valid"))
            .collect();
        for z in &zones[..8] {
            t.insert(*z).expect("room");
        }
        assert_eq!(t.insert(zones[8]), Err(TableFull { max: 8 }));
        for z in &zones[..8] {
            assert_eq!(t.insert(*z), Ok(t.slot_of(*z).expect("present")));
        }
        assert_eq!(t.slot_of(zones[8]), None);
    }

    #[test]
    fn every_inserted_zone_is_found_at_its_own_slot_and_no_other_zone_is() {
        let t = SnapshotTable::with_capacity(6000);
        let zones: Vec<ZoneId> = (0..10_000)
            .map(|i| {
                ZoneId::from_lat_lng(
                    40.0 + f64::from(i % 100) * 0.01,
                    f64::from(i / 100) * 0.01,
                    8,
                )
                .expect("valid")
            })
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        let (inside, outside) = zones.split_at(zones.len() / 2);
        let slots: Vec<SlotIdx> = inside.iter().map(|z| t.insert(*z).expect("room")).collect();
        let distinct: std::collections::HashSet<_> = slots.iter().collect();
        assert_eq!(distinct.len(), inside.len());
        for (z, s) in inside.iter().zip(&slots) {
            assert_eq!(t.slot_of(*z), Some(*s));
            assert_eq!(t.insert(*z), Ok(*s), "re-inserting returns the same slot");
        }
        assert!(outside.iter().all(|z| t.slot_of(*z).is_none()));
    }

    #[test]
    fn zones_inserted_by_racing_threads_are_listed_once_each() {
        // Two threads insert the same new zones at the same moments (a replica arriving
        // while the shard creates the zone): the loser's reserved slot must not list the
        // zone a second time.
        let zones: Vec<ZoneId> = (0..2_000)
            .map(|i| ZoneId::from_lat_lng(40.0 + f64::from(i) * 0.001, -74.0, 9).expect("valid"))
            .collect();
        let mut zones = zones;
        zones.sort_unstable_by_key(|z| z.raw());
        zones.dedup();
        for round in 0..20 {
            let t = Arc::new(SnapshotTable::with_capacity(2 * zones.len()));
            let start = Arc::new(std::sync::Barrier::new(2));
            let handles: Vec<_> = (0..2)
                .map(|_| {
                    let (t, start, zones) = (Arc::clone(&t), Arc::clone(&start), zones.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        zones
                            .iter()
                            .map(|&z| t.insert(z).expect("room"))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            let slots: Vec<Vec<SlotIdx>> = handles
                .into_iter()
                .map(|h| h.join().expect("thread"))
                .collect();
            assert_eq!(slots[0], slots[1], "round {round}: both got the same slots");
            let mut listed: Vec<u64> = t.zones().map(|(z, _)| z.raw()).collect();
            listed.sort_unstable();
            let n = listed.len();
            listed.dedup();
            assert_eq!(n, listed.len(), "round {round}: a zone listed twice");
            assert_eq!(n, zones.len(), "round {round}");
        }
    }

    #[test]
    fn quotes_counted_from_many_threads_are_never_lost() {
        let t = Arc::new(SnapshotTable::with_capacity(8));
        let z = ZoneId::from_lat_lng(1.0, 1.0, 8).expect("valid");
        let slot = t.insert(z).expect("room");
        let before = t.quote_total(slot);
        // More threads than lanes: some share the last lane.
        let threads: Vec<_> = (0..2 * QUOTE_LANES)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for _ in 0..50_000 {
                        t.note_quote(slot);
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().expect("thread");
        }
        assert_eq!(
            t.quote_total(slot).wrapping_sub(before),
            2 * QUOTE_LANES as u32 * 50_000
        );
    }

    #[test]
    fn publish_then_get_returns_the_snapshot_and_clear_removes_it() {
        let t = SnapshotTable::with_capacity(8);
        let z = ZoneId::from_lat_lng(1.0, 1.0, 8).expect("valid");
        let i = t.insert(z).expect("room");
        assert_eq!(t.get(z), None);
        let snap = PriceSnapshot::seal(fields(z, 7));
        t.publish(i, &snap);
        assert_eq!(t.get(z), Some(snap));
        assert_eq!(t.multiplier_milli(i), 1200);
        t.clear(i);
        assert_eq!(t.get(z), None);
        assert_eq!(t.multiplier_milli(i), 0);
        assert_eq!(t.slot_of(z), Some(i));
    }
}
