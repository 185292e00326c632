//! Exponentially decaying counters for a zone's demand, quotes and accepted trips: three
//! numbers and one clock position, so memory does not grow with traffic, nothing empties at
//! once (each unit halves every half-life), and the result does not depend on how often it
//! is read. Time is an argument.

/// Which counter of a [`Rates`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Rider sessions started.
    Demand = 0,
    /// Quotes issued.
    Quotes = 1,
    /// Trips accepted.
    Accepted = 2,
}

/// Counted values below this are zero: a zone whose demand has decayed away has exactly
/// none (and no subnormal arithmetic).
const NEGLIGIBLE: f64 = 1e-3;

/// `2^(−dt / half_life)`. A tick decays every zone of a shard by the same `dt` with the same
/// half-lives, so the last few results are remembered on this thread and one `exp2` serves
/// them all (a pure memo: the same arguments give the same bits either way).
#[inline]
pub(crate) fn decay_factor(dt_ms: u64, half_life_ms: u64) -> f64 {
    use std::cell::Cell;
    const SLOTS: usize = 4;
    thread_local! {
        static MEMO: [Cell<(u64, u64, u64)>; SLOTS] =
            const { [const { Cell::new((u64::MAX, 0, 0)) }; SLOTS] };
        static NEXT: Cell<usize> = const { Cell::new(0) };
    }
    let half_life_ms = half_life_ms.max(1);
    let hit = MEMO.with(|m| {
        m.iter().find_map(|c| {
            let (dt, h, bits) = c.get();
            (dt == dt_ms && h == half_life_ms).then(|| f64::from_bits(bits))
        })
    });
    if let Some(f) = hit {
        return f;
    }
    let f = (-(dt_ms as f64) / half_life_ms as f64).exp2();
    let slot = NEXT.with(|n| {
        let i = n.get();
        n.set((i + 1) % SLOTS);
        i
    });
    MEMO.with(|m| m[slot].set((dt_ms, half_life_ms, f.to_bits())));
    f
}

/// Three counters decaying with one half-life, as of one engine time.
///
/// A unit added at `t` counts `2^(−(now − t) / half_life)` at `now`: the sum is the number of
/// recent sessions (about rate × half-life / ln 2 in a steady stream), and it falls smoothly
/// when the stream stops.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Rates {
    /// Engine time the values are decayed to.
    at_ms: u64,
    values: [f64; 3],
}

impl Rates {
    /// Zero counters at `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            at_ms: now_ms,
            values: [0.0; 3],
        }
    }

    /// Decays the counters to `now_ms`. Time never runs backwards here: an earlier `now_ms`
    /// leaves them as they are (a late unit then counts as if it came at the newest time).
    #[inline]
    pub fn advance(&mut self, now_ms: u64, half_life_ms: u64) {
        if now_ms <= self.at_ms {
            return;
        }
        let dt_ms = now_ms - self.at_ms;
        self.at_ms = now_ms;
        if self.values == [0.0; 3] {
            return;
        }
        let f = decay_factor(dt_ms, half_life_ms);
        for v in &mut self.values {
            *v *= f;
            if *v < NEGLIGIBLE {
                *v = 0.0;
            }
        }
    }

    /// Adds `n` units to a counter at `now_ms`.
    pub fn add(&mut self, counter: Counter, now_ms: u64, half_life_ms: u64, n: f64) {
        self.advance(now_ms, half_life_ms);
        self.values[counter as usize] += n;
    }

    /// A counter's value as of the last `advance`/`add`.
    pub fn get(&self, counter: Counter) -> f64 {
        self.values[counter as usize]
    }

    /// The time the values are decayed to, and the values (for export).
    pub fn parts(&self) -> (u64, [f64; 3]) {
        (self.at_ms, self.values)
    }

    /// Counters from exported parts; `None` if a value is negative or not finite.
    pub fn from_parts(at_ms: u64, values: [f64; 3]) -> Option<Self> {
        values
            .iter()
            .all(|v| v.is_finite() && *v >= 0.0)
            .then_some(Self { at_ms, values })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_unit_halves_every_half_life() {
        let mut r = Rates::new(0);
        r.add(Counter::Demand, 0, 1000, 8.0);
        r.advance(1000, 1000);
        assert!((r.get(Counter::Demand) - 4.0).abs() < 1e-9);
        r.advance(3000, 1000);
        assert!((r.get(Counter::Demand) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn reading_often_or_rarely_gives_the_same_value() {
        let (mut a, mut b) = (Rates::new(0), Rates::new(0));
        a.add(Counter::Quotes, 0, 60_000, 10.0);
        b.add(Counter::Quotes, 0, 60_000, 10.0);
        for t in (0..=90_000).step_by(100) {
            a.advance(t, 60_000);
        }
        b.advance(90_000, 60_000);
        assert!((a.get(Counter::Quotes) - b.get(Counter::Quotes)).abs() < 1e-9);
    }

    #[test]
    fn the_memo_gives_the_same_bits_as_computing() {
        for (dt, h) in [
            (250, 90_000),
            (1, 60_000),
            (250, 90_000),
            (7, 1),
            (0, 5),
            (250, 60_000),
        ] {
            let want = (-(dt as f64) / h as f64).exp2();
            assert_eq!(decay_factor(dt, h).to_bits(), want.to_bits());
        }
    }

    #[test]
    fn decayed_away_is_exactly_zero() {
        let mut r = Rates::new(0);
        r.add(Counter::Accepted, 0, 1000, 1.0);
        r.advance(20_000, 1000);
        assert_eq!(r.get(Counter::Accepted), 0.0);
    }

    #[test]
    fn late_units_count_at_the_newest_time() {
        let mut r = Rates::new(10_000);
        r.add(Counter::Accepted, 9_000, 1000, 1.0);
        assert_eq!(r.get(Counter::Accepted), 1.0);
    }

    #[test]
    fn exported_parts_are_checked() {
        assert!(Rates::from_parts(0, [1.0, f64::NAN, 0.0]).is_none());
        assert!(Rates::from_parts(0, [-1.0, 0.0, 0.0]).is_none());
        assert_eq!(
            Rates::from_parts(5, [1.0, 2.0, 3.0]).map(|r| r.parts()),
            Some((5, [1.0, 2.0, 3.0]))
        );
    }
}
