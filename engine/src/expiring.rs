//! A bounded map from ids to the time they were last seen, with exact expiry and amortised
//! sweeping. Used for the set of available drivers, for event-id dedupe and for rider
//! sessions. Each entry also names its [`Holder`] (the credential whose event made it,
//! `crate::share`), in the same word as its time, so holding costs no memory.

use std::collections::VecDeque;

use crate::FixedMap as HashMap;

/// Ids with their last-seen time; an entry lives `ttl_ms` after it was last seen.
///
/// A small set (under [`QUEUE_FROM`] entries) sweeps in full, only when its oldest entry may
/// have expired, and finds the next oldest as it goes; its expiry is exact whatever the
/// clock does. A large set would sweep thousands of entries every millisecond at a steady
/// event rate, so it queues every touch in time order instead, and expiring pops the queue's
/// front until it reaches an entry still alive: O(expired). A queued touch that a later touch
/// or a removal superseded is skipped when it reaches the front. In a large set a touch
/// earlier than the latest one (the wall clock stepped back) counts as the latest one: an
/// entry may then live a little longer than `ttl_ms`, never shorter.
#[derive(Clone, Debug)]
pub(crate) struct ExpiringSet {
    /// id -> last seen and holder.
    seen: HashMap<u64, Stamp>,
    sweep: Sweep,
}

/// Who holds an entry: 0 nobody (restored from a snapshot, or sent without a credential),
/// else a zone's holder slot plus one (`crate::share::Holders`).
pub(crate) type Holder = u16;

/// Bits of a [`Stamp`] that hold the time.
const AT_BITS: u32 = 48;
/// The latest time a set stores, ms: engine time is ms since the Unix epoch, so 2^48 - 1 is
/// the year 10889; a later time is stored as this one (an entry then lives longer, never
/// shorter).
pub(crate) const AT_MS_MAX: u64 = (1 << AT_BITS) - 1;

/// An entry's last-seen time (low 48 bits) and its holder (high 16) in one word: the driver
/// set and the dedupe log are a zone's largest structures, and its hot state has a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp(u64);

impl Stamp {
    fn new(at_ms: u64, holder: Holder) -> Self {
        Self(at_ms.min(AT_MS_MAX) | (u64::from(holder) << AT_BITS))
    }
    fn at_ms(self) -> u64 {
        self.0 & AT_MS_MAX
    }
    fn holder(self) -> Holder {
        (self.0 >> AT_BITS) as Holder
    }
    /// The same holder, seen at `at_ms`.
    fn at(self, at_ms: u64) -> Self {
        Self::new(at_ms, self.holder())
    }
}

/// How a set finds its expired entries. 16 bytes: a zone holds two sets, and its hot state
/// has a budget.
#[derive(Clone, Debug)]
enum Sweep {
    /// Small set: a full sweep when the oldest may have expired.
    Full {
        /// A lower bound on every entry's last-seen time.
        oldest_ms: u64,
    },
    /// Large set: the touches in time order.
    Queue(Box<Touches>),
}

/// (time, id) of every touch, oldest first, times never decreasing. An item is current while
/// the map holds its time for its id. Compacted when over twice the live entries, so it
/// stays bounded.
#[derive(Clone, Debug, Default)]
struct Touches(VecDeque<(u64, u64)>);

impl Touches {
    /// The live entries, in time order.
    fn of(seen: &HashMap<u64, Stamp>) -> Self {
        let mut live: Vec<(u64, u64)> = seen.iter().map(|(&id, t)| (t.at_ms(), id)).collect();
        live.sort_unstable();
        Self(live.into())
    }
}

impl Default for ExpiringSet {
    fn default() -> Self {
        Self {
            seen: HashMap::default(),
            sweep: Sweep::Full { oldest_ms: 0 },
        }
    }
}

/// The set is at its size limit and nothing in it has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

/// A set reaching this many entries starts queueing its touches.
pub(crate) const QUEUE_FROM: usize = 64;
/// A queueing set shrinking below this many entries goes back to full sweeps.
const SWEEP_BELOW: usize = 16;
/// Queue items tolerated beyond twice the live entries before compaction.
const ORDER_SLACK: usize = 64;

impl ExpiringSet {
    /// Removes entries last seen `ttl_ms` or more before `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        self.expire_with(now_ms, ttl_ms, |_| {});
    }

    /// [`expire`](Self::expire), telling `released` the holder of every entry removed.
    pub(crate) fn expire_with(
        &mut self,
        now_ms: u64,
        ttl_ms: u64,
        mut released: impl FnMut(Holder),
    ) {
        let now_ms = now_ms.min(AT_MS_MAX);
        match &mut self.sweep {
            Sweep::Full { oldest_ms } => {
                if self.seen.is_empty() || oldest_ms.saturating_add(ttl_ms) > now_ms {
                    return;
                }
                let mut oldest = u64::MAX;
                self.seen.retain(|_, t| {
                    let keep = t.at_ms().saturating_add(ttl_ms) > now_ms;
                    if keep {
                        oldest = oldest.min(t.at_ms());
                    } else {
                        released(t.holder());
                    }
                    keep
                });
                *oldest_ms = if self.seen.is_empty() { 0 } else { oldest };
            }
            Sweep::Queue(q) => {
                let before = q.0.len();
                while let Some(&(t, id)) = q.0.front() {
                    if t.saturating_add(ttl_ms) > now_ms {
                        break;
                    }
                    q.0.pop_front();
                    if let Some(s) = self.seen.get(&id).copied().filter(|s| s.at_ms() == t) {
                        self.seen.remove(&id);
                        released(s.holder());
                    }
                }
                if q.0.len() == before {
                    return;
                }
                if self.seen.len() < SWEEP_BELOW {
                    let oldest_ms = self.seen.values().map(|s| s.at_ms()).min().unwrap_or(0);
                    self.sweep = Sweep::Full { oldest_ms };
                } else if q.0.capacity() > 4 * q.0.len().max(4) {
                    q.0.shrink_to_fit();
                }
            }
        }
        if self.seen.capacity() > 4 * self.seen.len().max(4) {
            self.seen.shrink_to_fit();
        }
    }

    /// Whether `id` is present (call [`expire`](Self::expire) first for an exact answer).
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.seen.contains_key(&id)
    }

    /// Records `id` as seen at `now_ms`, refusing a new id when `len_max` are present.
    pub(crate) fn touch(&mut self, id: u64, now_ms: u64, len_max: usize) -> Result<(), Full> {
        self.touch_as(id, now_ms, len_max, 0).map(|_| ())
    }

    /// [`touch`](Self::touch), a new entry held by `holder` (a known one keeps its holder).
    /// True when the entry is new.
    pub(crate) fn touch_as(
        &mut self,
        id: u64,
        now_ms: u64,
        len_max: usize,
        holder: Holder,
    ) -> Result<bool, Full> {
        let now_ms = now_ms.min(AT_MS_MAX);
        let len = self.seen.len();
        match &mut self.sweep {
            Sweep::Full { oldest_ms } => {
                if len == 0 {
                    *oldest_ms = now_ms;
                }
                match self.seen.get_mut(&id) {
                    Some(t) => *t = t.at(t.at_ms().max(now_ms)),
                    None if len >= len_max => return Err(Full),
                    None => {
                        self.seen.insert(id, Stamp::new(now_ms, holder));
                        *oldest_ms = (*oldest_ms).min(now_ms);
                        if len + 1 >= QUEUE_FROM {
                            self.sweep = Sweep::Queue(Box::new(Touches::of(&self.seen)));
                        }
                        return Ok(true);
                    }
                }
            }
            Sweep::Queue(q) => {
                let now = q.0.back().map_or(now_ms, |&(t, _)| t.max(now_ms));
                let new = match self.seen.get_mut(&id) {
                    Some(t) if t.at_ms() == now => return Ok(false),
                    Some(t) => {
                        *t = t.at(now);
                        false
                    }
                    None if len >= len_max => return Err(Full),
                    None => {
                        self.seen.insert(id, Stamp::new(now, holder));
                        true
                    }
                };
                q.0.push_back((now, id));
                if q.0.len() > 2 * self.seen.len() + ORDER_SLACK {
                    **q = Touches::of(&self.seen);
                }
                return Ok(new);
            }
        }
        Ok(false)
    }

    /// Forgets `id`; its holder if it was present.
    pub(crate) fn take(&mut self, id: u64) -> Option<Holder> {
        self.seen.remove(&id).map(Stamp::holder)
    }

    /// Forgets `id`; true if it was present.
    #[cfg(test)]
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.take(id).is_some()
    }

    /// Number of live entries (as of the last expiry).
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no entries are present.
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Every entry (id, last seen), sorted by id (for export).
    pub(crate) fn entries(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.seen.iter().map(|(&k, t)| (k, t.at_ms())).collect();
        v.sort_unstable();
        v
    }

    /// A set holding exactly `entries`, held by nobody (times beyond [`AT_MS_MAX`] stored as
    /// it).
    pub(crate) fn from_entries(entries: &[(u64, u64)]) -> Self {
        let mut seen = HashMap::default();
        for &(id, t) in entries {
            seen.insert(id, Stamp::new(t, 0));
        }
        let sweep = if seen.len() >= QUEUE_FROM {
            Sweep::Queue(Box::new(Touches::of(&seen)))
        } else {
            Sweep::Full {
                oldest_ms: seen.values().map(|s| s.at_ms()).min().unwrap_or(0),
            }
        };
        Self { seen, sweep }
    }

    /// Heap bytes held by the map and its queue (for memory accounting).
    pub(crate) fn heap_bytes(&self) -> usize {
        let queue = match &self.sweep {
            Sweep::Full { .. } => 0,
            Sweep::Queue(q) => {
                std::mem::size_of::<Touches>() + q.0.capacity() * std::mem::size_of::<(u64, u64)>()
            }
        };
        self.seen.allocation_size() + queue
    }

    #[cfg(test)]
    fn queued(&self) -> bool {
        matches!(self.sweep, Sweep::Queue(_))
    }

    #[cfg(test)]
    fn queue_len(&self) -> usize {
        match &self.sweep {
            Sweep::Full { .. } => 0,
            Sweep::Queue(q) => q.0.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_exactly_ttl_after_last_seen() {
        let mut s = ExpiringSet::default();
        s.touch(1, 0, 10).expect("room");
        s.touch(2, 500, 10).expect("room");
        s.touch(1, 800, 10).expect("room"); // refreshed
        s.expire(1499, 1000);
        assert_eq!(s.len(), 2);
        s.expire(1500, 1000); // 2 last seen at 500
        assert!(!s.contains(2) && s.contains(1));
        s.expire(1800, 1000);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_set_refuses_new_ids_but_refreshes_known_ones() {
        let mut s = ExpiringSet::default();
        s.touch(1, 0, 1).expect("room");
        assert_eq!(s.touch(2, 1, 1), Err(Full));
        assert_eq!(s.touch(1, 2, 1), Ok(()));
    }

    proptest::proptest! {
        /// Against a plain map swept in full: same members after every operation, while the
        /// set grows past `QUEUE_FROM` and shrinks below `SWEEP_BELOW` again.
        #[test]
        fn matches_a_full_sweep(ops in proptest::collection::vec((0u8..8, 0u64..200, 0u64..100), 1..1500)) {
            const TTL: u64 = 150;
            const MAX: usize = 120;
            let mut s = ExpiringSet::default();
            let mut model: std::collections::BTreeMap<u64, u64> = Default::default();
            let mut now = 0u64;
            for (op, id, dt) in ops {
                // Mostly small steps; now and then a jump that empties most of the set.
                now += if dt == 99 { 120 } else { dt / 40 };
                s.expire(now, TTL);
                model.retain(|_, t| *t + TTL > now);
                match op {
                    0..=4 => {
                        let r = s.touch(id, now, MAX);
                        if model.contains_key(&id) || model.len() < MAX {
                            model.insert(id, now);
                            proptest::prop_assert!(r.is_ok());
                        } else {
                            proptest::prop_assert_eq!(r, Err(Full));
                        }
                    }
                    5 => {
                        proptest::prop_assert_eq!(s.remove(id), model.remove(&id).is_some());
                    }
                    _ => {
                        proptest::prop_assert_eq!(s.contains(id), model.contains_key(&id));
                    }
                }
                let want: Vec<(u64, u64)> = model.iter().map(|(&k, &v)| (k, v)).collect();
                proptest::prop_assert_eq!(s.entries(), want);
                proptest::prop_assert!(s.queue_len() <= 2 * s.len() + ORDER_SLACK);
            }
        }
    }

    #[test]
    fn a_clock_stepping_back_never_shortens_a_life() {
        // Small set: exact per entry.
        let mut s = ExpiringSet::default();
        s.touch(1, 10_000, usize::MAX).expect("room");
        s.touch(2, 1_000, usize::MAX).expect("room");
        s.expire(1_999, 1_000);
        assert!(s.contains(2));
        s.expire(2_000, 1_000);
        assert!(!s.contains(2) && s.contains(1));
        // Large set: an earlier touch counts as the latest.
        let mut s = ExpiringSet::default();
        for id in 0..QUEUE_FROM as u64 {
            s.touch(id, 10_000, usize::MAX).expect("room");
        }
        assert!(s.queued());
        s.touch(1_000, 1_000, usize::MAX).expect("room");
        s.expire(10_999, 1_000);
        assert!(s.contains(1_000));
        s.expire(11_000, 1_000);
        assert!(s.is_empty() && !s.queued());
    }

    #[test]
    fn a_steady_stream_keeps_the_queue_bounded() {
        let mut s = ExpiringSet::default();
        for i in 0..100_000u64 {
            s.expire(i, 1000);
            // Refresh a few ids over and over, and add a new one each millisecond.
            s.touch(i % 10, i, usize::MAX).expect("room");
            s.touch(1_000_000 + i, i, usize::MAX).expect("room");
            s.remove(1_000_000 + i - i % 3);
        }
        assert!(s.len() <= 1010, "{}", s.len());
        assert!(
            s.queue_len() <= 2 * s.len() + ORDER_SLACK,
            "{}",
            s.queue_len()
        );
    }
}
