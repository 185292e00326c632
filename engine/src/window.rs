//! Fixed-size sliding-window counter: a ring of time buckets, so memory does not grow with
//! traffic. Time is an argument.

/// Number of buckets in a window. The window's resolution is `window_ms / BUCKETS`.
pub const BUCKETS: usize = 12;

/// Counts events over the last `window_ms` (to within one bucket).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlidingCounter {
    counts: [u32; BUCKETS],
    /// Index (time / bucket_ms) of the newest bucket.
    head: u64,
    total: u32,
}

impl SlidingCounter {
    /// An empty window positioned at `now_ms`.
    pub fn new(now_ms: u64, bucket_ms: u64) -> Self {
        Self { counts: [0; BUCKETS], head: now_ms / bucket_ms.max(1), total: 0 }
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
            self.counts = [0; BUCKETS];
            self.total = 0;
        } else {
            for i in 1..=steps {
                let slot = ((self.head + i) % BUCKETS as u64) as usize;
                self.total -= self.counts[slot];
                self.counts[slot] = 0;
            }
        }
        self.head = idx;
    }

    /// Adds `n` at `now_ms`.
    pub fn add(&mut self, now_ms: u64, bucket_ms: u64, n: u32) {
        self.advance(now_ms, bucket_ms);
        let slot = (self.head % BUCKETS as u64) as usize;
        self.counts[slot] = self.counts[slot].saturating_add(n);
        self.total = self.total.saturating_add(n);
    }

    /// The count in the window as of the last `advance`/`add`.
    pub fn total(&self) -> u32 {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_expire_after_the_window() {
        let b = 1000;
        let mut c = SlidingCounter::new(0, b);
        c.add(0, b, 5);
        c.add(5_500, b, 2);
        assert_eq!(c.total(), 7);
        c.advance(11_999, b);
        assert_eq!(c.total(), 7);
        c.advance(12_000, b); // bucket 0 leaves
        assert_eq!(c.total(), 2);
        c.advance(100_000, b);
        assert_eq!(c.total(), 0);
    }

    #[test]
    fn late_timestamps_count_in_the_newest_bucket() {
        let mut c = SlidingCounter::new(10_000, 1000);
        c.add(9_000, 1000, 1);
        assert_eq!(c.total(), 1);
    }
}
