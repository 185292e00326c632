//! Fixed-size sliding-window counters: rings of time buckets sharing one clock position, so
//! memory does not grow with traffic and a tick advances all of them with one division.
//! Time is an argument.

/// Number of buckets in a window. The window's resolution is `window_ms / BUCKETS`.
pub const BUCKETS: usize = 12;

/// Which counter of a [`Windows`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Rider demand signals and trip requests.
    Demand = 0,
    /// Quotes issued.
    Quotes = 1,
    /// Trips accepted.
    Accepted = 2,
}

/// Three counters over the same sliding window (to within one bucket).
///
/// Buckets are `u16` and saturate at 65,535 events per bucket per counter (6,553 per second
/// per zone at the default 10 s buckets); totals are exact sums of the buckets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Windows {
    /// Index (time / bucket_ms) of the newest bucket.
    head: u64,
    counts: [[u16; BUCKETS]; 3],
    totals: [u32; 3],
}

impl Windows {
    /// Empty windows positioned at `now_ms`.
    pub fn new(now_ms: u64, bucket_ms: u64) -> Self {
        Self {
            head: now_ms / bucket_ms.max(1),
            counts: [[0; BUCKETS]; 3],
            totals: [0; 3],
        }
    }

    /// Drops buckets that fell out of the window by `now_ms`. Time never runs backwards here:
    /// an earlier `now_ms` counts into the newest bucket.
    pub fn advance(&mut self, now_ms: u64, bucket_ms: u64) {
        let idx = now_ms / bucket_ms.max(1);
        if idx <= self.head {
            return;
        }
        let steps = idx - self.head;
        if steps >= BUCKETS as u64 {
            *self = Self {
                head: idx,
                counts: [[0; BUCKETS]; 3],
                totals: [0; 3],
            };
            return;
        }
        for i in 1..=steps {
            let slot = ((self.head + i) % BUCKETS as u64) as usize;
            for c in 0..3 {
                self.totals[c] -= u32::from(self.counts[c][slot]);
                self.counts[c][slot] = 0;
            }
        }
        self.head = idx;
    }

    /// Adds `n` to a counter at `now_ms`.
    pub fn add(&mut self, counter: Counter, now_ms: u64, bucket_ms: u64, n: u32) {
        self.advance(now_ms, bucket_ms);
        let slot = (self.head % BUCKETS as u64) as usize;
        let c = counter as usize;
        let before = self.counts[c][slot];
        let after = before.saturating_add(u16::try_from(n).unwrap_or(u16::MAX));
        self.counts[c][slot] = after;
        self.totals[c] += u32::from(after - before);
    }

    /// The newest bucket's index and every bucket (for export).
    pub fn parts(&self) -> (u64, [[u16; BUCKETS]; 3]) {
        (self.head, self.counts)
    }

    /// Windows from exported parts (totals are recomputed).
    pub fn from_parts(head: u64, counts: [[u16; BUCKETS]; 3]) -> Self {
        let mut totals = [0u32; 3];
        for (t, c) in totals.iter_mut().zip(&counts) {
            *t = c.iter().map(|&x| u32::from(x)).sum();
        }
        Self {
            head,
            counts,
            totals,
        }
    }

    /// A counter's total in the window as of the last `advance`/`add`.
    pub fn total(&self, counter: Counter) -> u32 {
        self.totals[counter as usize]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_after_the_window() {
        let b = 1000;
        let mut w = Windows::new(0, b);
        w.add(Counter::Demand, 0, b, 5);
        w.add(Counter::Demand, 5_500, b, 2);
        w.add(Counter::Quotes, 5_500, b, 1);
        assert_eq!(w.total(Counter::Demand), 7);
        w.advance(11_999, b);
        assert_eq!(w.total(Counter::Demand), 7);
        w.advance(12_000, b); // bucket 0 leaves
        assert_eq!((w.total(Counter::Demand), w.total(Counter::Quotes)), (2, 1));
        w.advance(100_000, b);
        assert_eq!(w.total(Counter::Demand), 0);
        assert_eq!(w.total(Counter::Quotes), 0);
    }

    #[test]
    fn late_timestamps_count_in_the_newest_bucket() {
        let mut w = Windows::new(10_000, 1000);
        w.add(Counter::Accepted, 9_000, 1000, 1);
        assert_eq!(w.total(Counter::Accepted), 1);
    }

    #[test]
    fn a_bucket_saturates_instead_of_wrapping() {
        let mut w = Windows::new(0, 1000);
        w.add(Counter::Quotes, 0, 1000, 70_000);
        w.add(Counter::Quotes, 0, 1000, 10);
        assert_eq!(w.total(Counter::Quotes), 65_535);
        w.advance(12_000, 1000);
        assert_eq!(w.total(Counter::Quotes), 0);
    }
}
