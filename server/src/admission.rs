//! Admission control: bounded in-flight requests per connection and per node, with the shared
//! tier shed before the premium one. Plain atomics; no I/O.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use crate::config::Tier;

/// Node-wide in-flight accounting.
#[derive(Debug)]
pub struct Admission {
    in_flight: AtomicU32,
    /// Premium requests are admitted up to this many in flight on the node.
    premium_max: u32,
    /// Shared requests are admitted only below this many.
    shared_max: u32,
    per_connection_max: u32,
    /// Requests refused, by tier (premium, shared).
    shed: [AtomicU64; 2],
}

/// A connection's in-flight count.
#[derive(Debug, Default)]
pub struct ConnectionLoad(AtomicU32);

impl Admission {
    /// Limits: `node_max` in flight on the node; shared traffic shed from `shared_percent` of
    /// it; `per_connection_max` per connection.
    pub fn new(node_max: u32, shared_percent: u32, per_connection_max: u32) -> Self {
        let shared_max = (u64::from(node_max) * u64::from(shared_percent) / 100).max(1) as u32;
        Self {
            in_flight: AtomicU32::new(0),
            premium_max: node_max,
            shared_max,
            per_connection_max,
            shed: [AtomicU64::new(0), AtomicU64::new(0)],
        }
    }

    /// Admits one request of `tier` on `conn`, or refuses it (counted as shed).
    pub fn try_admit(&self, conn: &ConnectionLoad, tier: Tier) -> bool {
        if conn.0.fetch_add(1, Ordering::AcqRel) >= self.per_connection_max {
            conn.0.fetch_sub(1, Ordering::AcqRel);
            self.shed[tier as usize].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let limit = match tier {
            Tier::Premium => self.premium_max,
            Tier::Shared => self.shared_max,
        };
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= limit {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            conn.0.fetch_sub(1, Ordering::AcqRel);
            self.shed[tier as usize].fetch_add(1, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Releases `n` admitted requests of `conn`.
    pub fn release(&self, conn: &ConnectionLoad, n: u32) {
        conn.0.fetch_sub(n, Ordering::AcqRel);
        self.in_flight.fetch_sub(n, Ordering::AcqRel);
    }

    /// Requests in flight on the node.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Requests shed so far: (premium, shared).
    pub fn shed(&self) -> (u64, u64) {
        (
            self.shed[0].load(Ordering::Relaxed),
            self.shed[1].load(Ordering::Relaxed),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_traffic_is_shed_before_premium() {
        let a = Admission::new(10, 50, 100);
        let (c1, c2) = (ConnectionLoad::default(), ConnectionLoad::default());
        let shared = (0..10).filter(|_| a.try_admit(&c1, Tier::Shared)).count();
        assert_eq!(
            shared, 5,
            "shared stops at 50% of the node's in-flight limit"
        );
        let premium = (0..10).filter(|_| a.try_admit(&c2, Tier::Premium)).count();
        assert_eq!(premium, 5, "premium fills the rest");
        assert_eq!(a.shed(), (5, 5));
        a.release(&c1, 5);
        assert!(a.try_admit(&c2, Tier::Premium));
    }

    #[test]
    fn one_connection_cannot_take_the_whole_node() {
        let a = Admission::new(100, 100, 3);
        let c = ConnectionLoad::default();
        assert_eq!(
            (0..10).filter(|_| a.try_admit(&c, Tier::Premium)).count(),
            3
        );
        assert_eq!(a.in_flight(), 3);
    }
}
