//! Idempotent producers: each event applied once, without remembering each event.
//!
//! The model is Kafka's idempotent producer. A producer (an app backend instance, a device
//! gateway) has an id, an epoch that grows each time it restarts, and numbers its events
//! for each zone 1, 2, 3, … A zone keeps, per producer, only the highest sequence applied
//! and a bitmap of the [`WINDOW`] sequences at and below it. So its memory grows with the
//! producers that send to it, not with its event rate:
//!
//! - a sequence above the highest is new (gaps are allowed: the producer may have given up
//!   on some numbers, or they are still in flight);
//! - a sequence within the window is new unless its bit is set (pipelined batches may
//!   arrive out of order, by at most [`WINDOW`] sequences of one zone);
//! - a sequence below the window is refused [`Verdict::TooOld`]: the zone cannot tell a
//!   resend from a first delivery, so it refuses rather than guess;
//! - a higher epoch starts the producer afresh (its older incarnation is fenced: every
//!   event of a lower epoch is refused [`Verdict::Fenced`]);
//! - a producer idle for `idle_ms` is forgotten; a zone remembers at most `max` producers
//!   and refuses a new one beyond that ([`Verdict::Full`]) rather than forget a live one.
//!
//! Two steps, because an event can still be refused for other reasons after its sequence
//! was found new (e.g. its zone's driver set is full): [`Producers::check`] decides,
//! [`Producers::record`] remembers, and a refused event is simply not recorded (it may be
//! sent again).
//!
//! Pure: time is an argument.

use crate::share::Holder;

/// How many sequences at and below a producer's highest a zone remembers, one bit each.
pub const WINDOW: u64 = 128;

/// The producer fields of one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Sequence {
    /// The producer's id (chosen by it, e.g. random at first start and kept).
    pub producer: u64,
    /// The producer's incarnation: higher on every restart (e.g. its start time in ms).
    pub epoch: u32,
    /// The event's number among the producer's events for this zone, from 1.
    pub seq: u64,
}

/// What [`Producers::check`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Not applied before: apply it, then [`Producers::record`] it.
    New,
    /// Applied before; nothing to do.
    Duplicate,
    /// From an older incarnation of the producer than one already seen.
    Fenced,
    /// Below the producer's window: cannot be told from a duplicate, so refused.
    TooOld,
    /// An unknown producer, and the zone remembers its maximum number of producers.
    Full,
}

/// One producer as a zone remembers it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProducerState {
    /// The producer's id.
    pub producer: u64,
    /// Its epoch.
    pub epoch: u32,
    /// Highest sequence applied (0: none yet in this epoch).
    pub high: u64,
    /// Bit `i` set: sequence `high - i` applied.
    pub window: u128,
    /// When an event of it was last recorded.
    pub last_ms: u64,
}

/// The producers of one zone, sorted by id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Producers {
    entries: Vec<ProducerState>,
    /// Who holds each entry (`crate::share`), parallel to `entries`.
    holders: Vec<Holder>,
    /// A lower bound on every entry's `last_ms` (`u64::MAX` when empty): nothing can have
    /// expired before this plus the idle time, so expiring is free until then.
    oldest_ms: u64,
}

impl Default for Producers {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
            holders: Vec::new(),
            oldest_ms: u64::MAX,
        }
    }
}

impl Producers {
    /// Rebuilds a zone's producers from exported state (any order; later duplicates of an
    /// id are dropped).
    pub fn from_states(mut states: Vec<ProducerState>) -> Self {
        states.sort_by_key(|s| s.producer);
        states.dedup_by_key(|s| s.producer);
        let oldest_ms = states.iter().map(|s| s.last_ms).min().unwrap_or(u64::MAX);
        Self {
            holders: vec![0; states.len()],
            entries: states,
            oldest_ms,
        }
    }

    /// The producers remembered, sorted by id.
    pub fn states(&self) -> &[ProducerState] {
        &self.entries
    }

    /// How many producers are remembered.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no producer is remembered.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * std::mem::size_of::<ProducerState>()
            + self.holders.capacity() * std::mem::size_of::<Holder>()
    }

    /// Whether `producer` is remembered (a new one takes a place of `producers_max`).
    pub fn contains(&self, producer: u64) -> bool {
        self.entries
            .binary_search_by_key(&producer, |e| e.producer)
            .is_ok()
    }

    /// Forgets producers idle for `idle_ms` or longer. Free while none can have expired.
    pub fn expire(&mut self, now_ms: u64, idle_ms: u64) {
        self.expire_with(now_ms, idle_ms, |_| {});
    }

    /// [`expire`](Self::expire), telling `released` the holder of every producer forgotten.
    pub(crate) fn expire_with(
        &mut self,
        now_ms: u64,
        idle_ms: u64,
        mut released: impl FnMut(Holder),
    ) {
        if now_ms.saturating_sub(self.oldest_ms) < idle_ms {
            return;
        }
        // Kept entries move down in order, with their holders.
        let mut kept = 0;
        for i in 0..self.entries.len() {
            if now_ms.saturating_sub(self.entries[i].last_ms) < idle_ms {
                self.entries.swap(kept, i);
                self.holders.swap(kept, i);
                kept += 1;
            } else {
                released(self.holders[i]);
            }
        }
        self.entries.truncate(kept);
        self.holders.truncate(kept);
        self.oldest_ms = self
            .entries
            .iter()
            .map(|e| e.last_ms)
            .min()
            .unwrap_or(u64::MAX);
    }

    /// Whether `s` would be new, without remembering anything. `max`: the most producers
    /// remembered.
    pub fn check(&self, s: Sequence, max: usize) -> Verdict {
        match self
            .entries
            .binary_search_by_key(&s.producer, |e| e.producer)
        {
            Err(_) if self.entries.len() >= max => Verdict::Full,
            Err(_) => Verdict::New,
            Ok(i) => {
                let e = &self.entries[i];
                if s.epoch < e.epoch {
                    Verdict::Fenced
                } else if s.epoch > e.epoch || s.seq > e.high {
                    Verdict::New
                } else {
                    let back = e.high - s.seq;
                    if back >= WINDOW {
                        Verdict::TooOld
                    } else if e.window & (1u128 << back) != 0 {
                        Verdict::Duplicate
                    } else {
                        Verdict::New
                    }
                }
            }
        }
    }

    /// Remembers `s` as applied at `now_ms`. Call only after [`check`](Self::check) said
    /// [`Verdict::New`] (with nothing recorded in between).
    pub fn record(&mut self, s: Sequence, now_ms: u64) {
        self.record_as(s, now_ms, 0);
    }

    /// [`record`](Self::record); a producer new to the zone is held by `holder`.
    pub(crate) fn record_as(&mut self, s: Sequence, now_ms: u64, holder: Holder) {
        let i = match self
            .entries
            .binary_search_by_key(&s.producer, |e| e.producer)
        {
            Ok(i) => i,
            Err(i) => {
                self.oldest_ms = self.oldest_ms.min(now_ms);
                self.entries.insert(
                    i,
                    ProducerState {
                        producer: s.producer,
                        epoch: s.epoch,
                        high: 0,
                        window: 0,
                        last_ms: now_ms,
                    },
                );
                self.holders.insert(i, holder);
                i
            }
        };
        if s.epoch > self.entries[i].epoch {
            self.oldest_ms = self.oldest_ms.min(now_ms);
        }
        let e = &mut self.entries[i];
        if s.epoch > e.epoch {
            *e = ProducerState {
                producer: s.producer,
                epoch: s.epoch,
                high: 0,
                window: 0,
                last_ms: now_ms,
            };
        }
        if s.seq > e.high {
            let shift = s.seq - e.high;
            e.window = if shift >= 128 { 0 } else { e.window << shift };
            e.window |= 1;
            e.high = s.seq;
        } else {
            e.window |= 1u128 << (e.high - s.seq);
        }
        e.last_ms = e.last_ms.max(now_ms);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn s(producer: u64, epoch: u32, seq: u64) -> Sequence {
        Sequence {
            producer,
            epoch,
            seq,
        }
    }

    /// Check then record, as a zone does with an event that is otherwise fine.
    fn offer(p: &mut Producers, x: Sequence, now: u64, max: usize) -> Verdict {
        let v = p.check(x, max);
        if v == Verdict::New {
            p.record(x, now);
        }
        v
    }

    #[test]
    fn resends_reorders_gaps_epochs_and_the_window() {
        let mut p = Producers::default();
        assert_eq!(offer(&mut p, s(7, 1, 1), 0, 4), Verdict::New);
        assert_eq!(offer(&mut p, s(7, 1, 1), 0, 4), Verdict::Duplicate);
        assert_eq!(offer(&mut p, s(7, 1, 3), 0, 4), Verdict::New, "a gap");
        assert_eq!(
            offer(&mut p, s(7, 1, 2), 0, 4),
            Verdict::New,
            "the gap filled"
        );
        assert_eq!(offer(&mut p, s(7, 1, 2), 0, 4), Verdict::Duplicate);
        assert_eq!(offer(&mut p, s(7, 1, 3 + WINDOW), 0, 4), Verdict::New);
        assert_eq!(offer(&mut p, s(7, 1, 3), 0, 4), Verdict::TooOld);
        assert_eq!(offer(&mut p, s(7, 1, 4), 0, 4), Verdict::New, "inside");
        assert_eq!(offer(&mut p, s(7, 2, 1), 0, 4), Verdict::New, "restarted");
        assert_eq!(offer(&mut p, s(7, 1, 999), 0, 4), Verdict::Fenced);
        assert_eq!(p.len(), 1);
    }

    #[test]
    fn a_full_zone_refuses_a_new_producer_until_one_expires() {
        let mut p = Producers::default();
        assert_eq!(offer(&mut p, s(1, 1, 1), 0, 2), Verdict::New);
        assert_eq!(offer(&mut p, s(2, 1, 1), 10, 2), Verdict::New);
        assert_eq!(offer(&mut p, s(3, 1, 1), 20, 2), Verdict::Full);
        assert_eq!(
            offer(&mut p, s(1, 1, 2), 20, 2),
            Verdict::New,
            "known ones go on"
        );
        p.expire(1_015, 1_000);
        assert_eq!(
            p.len(),
            1,
            "producer 2 (idle since 10) expired, 1 (20) kept"
        );
        assert_eq!(offer(&mut p, s(3, 1, 1), 1_015, 2), Verdict::New);
    }

    /// The model: every sequence applied remembered for ever (no window), epochs per
    /// producer, the same expiry and bound.
    #[derive(Default)]
    struct Model {
        producers: HashMap<u64, (u32, u64, HashSet<u64>, u64)>,
    }

    impl Model {
        fn expire(&mut self, now: u64, idle: u64) {
            self.producers.retain(|_, e| now.saturating_sub(e.3) < idle);
        }

        fn offer(&mut self, x: Sequence, now: u64, max: usize) -> Verdict {
            let full = self.producers.len() >= max;
            match self.producers.get_mut(&x.producer) {
                None if full => Verdict::Full,
                None => {
                    self.producers
                        .insert(x.producer, (x.epoch, x.seq, HashSet::from([x.seq]), now));
                    Verdict::New
                }
                Some(e) => {
                    if x.epoch < e.0 {
                        return Verdict::Fenced;
                    }
                    if x.epoch > e.0 {
                        *e = (x.epoch, 0, HashSet::new(), now);
                    }
                    if x.seq + WINDOW <= e.1 {
                        return Verdict::TooOld;
                    }
                    if e.2.contains(&x.seq) {
                        return Verdict::Duplicate;
                    }
                    e.1 = e.1.max(x.seq);
                    e.2.insert(x.seq);
                    e.3 = e.3.max(now);
                    Verdict::New
                }
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Step {
        /// Deliver (producer, epoch, seq).
        Deliver(u64, u32, u64),
        /// Time passes (ms).
        Wait(u64),
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            8 => (0u64..4, 1u32..4, 1u64..400).prop_map(|(p, e, q)| Step::Deliver(p, e, q)),
            1 => (0u64..3_000).prop_map(Step::Wait),
        ]
    }

    /// A producer's own stream: its sequences 1..=n, shuffled within blocks of half the
    /// window (so none arrives a window or more behind the highest), and some sent again a
    /// little later.
    fn reordered(n: u64, swaps: &[(u64, u64)], dups: &[u64]) -> Vec<u64> {
        let block = (WINDOW / 2) as usize;
        let mut v: Vec<u64> = (1..=n).collect();
        for &(i, d) in swaps {
            let i = (i % n) as usize;
            let j = ((i / block) * block + (d as usize % block)).min(v.len() - 1);
            v.swap(i, j);
        }
        for &d in dups {
            let at = (d % n) as usize;
            let x = v[at];
            v.insert((at + 1 + (d as usize % 40)).min(v.len()), x);
        }
        v
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2_000))]

        /// The bitmap agrees with the unbounded model on every delivery of every history.
        #[test]
        fn agrees_with_the_unbounded_model(steps in proptest::collection::vec(step(), 1..300)) {
            let (mut p, mut m, mut now) = (Producers::default(), Model::default(), 0u64);
            let (max, idle) = (3usize, 5_000u64);
            for st in steps {
                match st {
                    Step::Wait(d) => now += d,
                    Step::Deliver(pr, e, q) => {
                        p.expire(now, idle);
                        m.expire(now, idle);
                        let x = s(pr, e, q);
                        prop_assert_eq!(offer(&mut p, x, now, max), m.offer(x, now, max), "{:?}", x);
                    }
                }
            }
        }

        /// Exactly once: a producer whose sends are duplicated and reordered within the
        /// window has each of its events applied once, and no first delivery refused.
        #[test]
        fn exactly_once_within_the_window(
            n in 1u64..600,
            swaps in proptest::collection::vec((0u64..600, 0u64..WINDOW), 0..50),
            dups in proptest::collection::vec(0u64..10_000, 0..80),
        ) {
            let mut p = Producers::default();
            let mut applied = HashSet::new();
            for q in reordered(n, &swaps, &dups) {
                match offer(&mut p, s(42, 1, q), 0, 8) {
                    Verdict::New => prop_assert!(applied.insert(q), "{} applied twice", q),
                    // A resend a window behind cannot be told from a first delivery: refused,
                    // which is right only for one applied already.
                    Verdict::Duplicate | Verdict::TooOld => prop_assert!(applied.contains(&q)),
                    v => prop_assert!(false, "{} refused: {:?}", q, v),
                }
            }
            prop_assert_eq!(applied.len() as u64, n);
        }
    }
}
