//! Numbering events as an idempotent producer (PROTOCOL.md, `PRODUCER_BATCH`).
//!
//! A [`Producer`] is a sender's identity (an id kept across restarts, an epoch raised at
//! each start) and one sequence counter per zone. [`Producer::number`] gives each event the
//! next sequence of its zone, once: a resend of the same numbered events (after a lost
//! acknowledgement, a reconnect, a fail-over to another node) is then applied at most once
//! by whichever node owns the zone. Keep fewer than 128 unacknowledged events per zone:
//! a zone accepts sequences out of order only by less than that.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use protocol::msg;

/// An idempotent producer: who it is, and the next sequence of each zone it sent to.
#[derive(Clone, Debug)]
pub struct Producer {
    id: u64,
    epoch: u32,
    next: HashMap<u64, u64>,
}

impl Producer {
    /// A producer `id` (not 0) in `epoch`. A restarted producer must use a higher epoch
    /// than any it used before (its zones fence the older one).
    ///
    /// # Panics
    /// If `id` is 0 (the wire's "no producer").
    pub fn new(id: u64, epoch: u32) -> Self {
        assert_ne!(id, 0, "producer id 0 is reserved");
        Self {
            id,
            epoch,
            next: HashMap::new(),
        }
    }

    /// A producer `id` starting now: its epoch is the wall clock in seconds, so each start
    /// (at most one a second) fences the one before.
    pub fn starting_now(id: u64) -> Self {
        let secs = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs());
        Self::new(id, u32::try_from(secs).unwrap_or(u32::MAX))
    }

    /// The producer's id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The producer's epoch.
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// Numbers fresh events: each event's `id` becomes the next sequence of its zone (1 for
    /// a zone's first). Number an event once; resend it with the number it got.
    pub fn number(&mut self, events: &mut [msg::WireEvent]) {
        for e in events {
            let n = self.next.entry(e.zone).or_insert(1);
            e.id = *n;
            *n += 1;
        }
    }

    /// The batch header for these events.
    pub(crate) fn batch(&self, events: Vec<msg::WireEvent>) -> msg::ProducerBatch {
        msg::ProducerBatch {
            producer: self.id,
            epoch: self.epoch,
            events,
        }
    }

    /// Zones this producer has numbered events for.
    pub fn zones(&self) -> usize {
        self.next.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequences_count_per_zone_from_one() {
        let ev = |zone| msg::WireEvent {
            id: 0,
            zone,
            driver: 0,
            kind: msg::event_kind::TRIP_ACCEPTED,
        };
        let mut p = Producer::new(3, 1);
        let mut events = vec![ev(10), ev(20), ev(10), ev(10)];
        p.number(&mut events);
        let ids: Vec<u64> = events.iter().map(|e| e.id).collect();
        assert_eq!(ids, [1, 1, 2, 3]);
        let mut more = vec![ev(20)];
        p.number(&mut more);
        assert_eq!(more[0].id, 2);
        assert_eq!(p.zones(), 2);
    }
}
