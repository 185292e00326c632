//! Ownership leases with fencing epochs: the rules the store enforces and the node's side of
//! them, both sans-IO (time is an argument).
//!
//! A node may apply events for a zone group only while it holds a **valid lease** on it. The
//! store (Redis, through a Lua script with these rules; [`StoreModel`] is the same rules in
//! memory, for the simulation) grants a lease with an **epoch** that increases with every new
//! holder, and accepts a snapshot write only with the current epoch (**fencing**): a node that
//! was paused, partitioned or slow cannot overwrite a newer holder's state.
//!
//! Safety does not rest on synchronized clocks. A node counts its lease from the moment it
//! *sent* the request (the store granted it later, so the store's expiry is later still), and
//! shortens it by the worst clock-rate drift and a margin ([`LeaseConfig::local_validity_ms`]).
//! With clock *rates* within `drift_ppm_max` of each other, a node's lease always ends, in
//! real time, before the store would grant the group to anyone else.

use std::collections::BTreeMap;

use crate::ownership::NodeId;

/// Lease timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Lease length at the store. Default 3,000 ms.
    pub ttl_ms: u64,
    /// A held lease is renewed once it is this old (local time). Default 1,000 ms.
    pub renew_after_ms: u64,
    /// Largest difference between two clocks' rates, parts per million. Default 10,000 (1%).
    pub drift_ppm_max: u64,
    /// Subtracted from every local validity, for scheduling jitter. Default 100 ms.
    pub margin_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            ttl_ms: 3_000,
            renew_after_ms: 1_000,
            drift_ppm_max: 10_000,
            margin_ms: 100,
        }
    }
}

impl LeaseConfig {
    /// How long, on the node's own clock from the moment it sent the request, a granted lease
    /// may be used.
    pub fn local_validity_ms(&self) -> u64 {
        let shrunk = self.ttl_ms - self.ttl_ms * self.drift_ppm_max / 1_000_000;
        shrunk.saturating_sub(self.margin_ms)
    }
}

/// What the store holds for one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StoreLease {
    /// Fencing token: increases with every new holder, never decreases.
    pub epoch: u64,
    /// Current holder.
    pub holder: NodeId,
    /// Store time at which the lease lapses.
    pub expires_at_ms: u64,
}

/// Why the store refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreError {
    /// Another node holds a lease that has not lapsed.
    Held {
        /// The holder.
        holder: NodeId,
    },
    /// The epoch is not the current one, or the lease lapsed (a stale writer).
    Stale {
        /// The store's current epoch.
        current: u64,
    },
    /// The store restarted empty less than a lease length ago: leases granted before the
    /// restart may still be in use, so nothing is granted until they have all lapsed.
    Recovering,
}

/// The store's rules, in memory. The Redis shell runs the same rules as Lua scripts.
#[derive(Clone, Debug, Default)]
pub struct StoreModel {
    /// Changes when the store restarts empty; nodes notice and re-seed epochs.
    pub incarnation: u64,
    leases: BTreeMap<u64, StoreLease>,
    /// Snapshot writes accepted / rejected as stale.
    pub writes: (u64, u64),
    /// Store time before which nothing is granted (set when the store restarts empty).
    quiet_until_ms: u64,
}

impl StoreModel {
    /// A store with an incarnation id.
    pub fn new(incarnation: u64) -> Self {
        Self {
            incarnation,
            ..Self::default()
        }
    }

    /// Grants `group` to `node` if it is free, lapsed, or already `node`'s. A new holder gets
    /// an epoch above both the stored one and `min_epoch` (what the node last saw), so a store
    /// restarted empty never hands out an old epoch again.
    pub fn acquire(
        &mut self,
        group: u64,
        node: NodeId,
        min_epoch: u64,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<u64, StoreError> {
        if now_ms < self.quiet_until_ms {
            return Err(StoreError::Recovering);
        }
        let current = self.leases.get(&group).copied();
        let epoch = match current {
            Some(l) if l.holder == node && l.expires_at_ms > now_ms => l.epoch,
            Some(l) if l.expires_at_ms > now_ms => {
                return Err(StoreError::Held { holder: l.holder })
            }
            Some(l) => l.epoch.max(min_epoch) + 1,
            None => min_epoch + 1,
        };
        self.leases.insert(
            group,
            StoreLease {
                epoch,
                holder: node,
                expires_at_ms: now_ms + ttl_ms,
            },
        );
        Ok(epoch)
    }

    /// Extends a lease its holder still holds at `epoch`.
    pub fn renew(
        &mut self,
        group: u64,
        node: NodeId,
        epoch: u64,
        now_ms: u64,
        ttl_ms: u64,
    ) -> Result<(), StoreError> {
        match self.leases.get_mut(&group) {
            Some(l) if l.holder == node && l.epoch == epoch && l.expires_at_ms > now_ms => {
                l.expires_at_ms = now_ms + ttl_ms;
                Ok(())
            }
            Some(l) => Err(StoreError::Stale { current: l.epoch }),
            None => Err(StoreError::Stale { current: 0 }),
        }
    }

    /// Ends a lease early (graceful hand-off), if `node` still holds it at `epoch`.
    pub fn release(&mut self, group: u64, node: NodeId, epoch: u64) {
        if let Some(l) = self.leases.get_mut(&group) {
            if l.holder == node && l.epoch == epoch {
                l.expires_at_ms = 0;
            }
        }
    }

    /// A fenced snapshot write by `node`: accepted only with the current epoch of a lease
    /// that has not lapsed, held by `node` (after a restart empty, epoch numbers start again
    /// from what each asking node has seen, so the number alone may be an earlier holder's).
    pub fn write(
        &mut self,
        group: u64,
        node: NodeId,
        epoch: u64,
        now_ms: u64,
    ) -> Result<(), StoreError> {
        match self.leases.get(&group) {
            Some(l) if l.epoch == epoch && l.holder == node && l.expires_at_ms > now_ms => {
                self.writes.0 += 1;
                Ok(())
            }
            other => {
                self.writes.1 += 1;
                Err(StoreError::Stale {
                    current: other.map_or(0, |l| l.epoch),
                })
            }
        }
    }

    /// The lease on a group, if any.
    pub fn lease(&self, group: u64) -> Option<StoreLease> {
        self.leases.get(&group).copied()
    }

    /// The store restarted empty (a new incarnation) at `now_ms`: it grants nothing for a
    /// lease length, so leases granted before the restart lapse first.
    pub fn reset(&mut self, incarnation: u64, now_ms: u64, ttl_ms: u64) {
        *self = Self {
            incarnation,
            writes: self.writes,
            quiet_until_ms: now_ms + ttl_ms,
            ..Self::default()
        };
    }
}

/// A request a node sends to the store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Request {
    /// Take the group.
    Acquire {
        /// The group.
        group: u64,
        /// The highest epoch this node has seen for it.
        min_epoch: u64,
    },
    /// Extend a held lease.
    Renew {
        /// The group.
        group: u64,
        /// The epoch held.
        epoch: u64,
    },
    /// Give the group up (after the final snapshot write).
    Release {
        /// The group.
        group: u64,
        /// The epoch held.
        epoch: u64,
    },
}

/// The store's answer to a request sent at `sent_at_ms` (node time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reply {
    /// The request answered.
    pub request: Request,
    /// When the node sent it, on its own clock.
    pub sent_at_ms: u64,
    /// The store's incarnation.
    pub incarnation: u64,
    /// The outcome: the epoch granted or kept, or why not.
    pub result: Result<u64, StoreError>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Held {
    epoch: u64,
    /// Node time until which the lease may be used.
    valid_until_ms: u64,
    /// Node time of the last successful acquire or renew request.
    since_ms: u64,
}

/// Bits of a snapshot version below its lease epoch.
pub const VERSION_EPOCH_SHIFT: u32 = 32;

/// The lowest snapshot version a zone may carry once restored under lease `epoch`: the epoch
/// in the high 32 bits, a count in the low 32. A group's epochs only grow (a new holder gets a
/// higher one; a store restarted empty never hands out one below what the asking node has
/// seen), so versions published under different leases never meet and each owner's are
/// above its predecessors': a `(zone, version)` pair names exactly one price. It holds while a
/// zone publishes fewer than 2^32 snapshots under one lease (136 years at one per second) and
/// epochs stay below 2^32 (beyond, the floor stays at its largest value and versions still
/// grow, but may repeat across owners).
pub fn version_floor(epoch: u64) -> u64 {
    epoch.min(u64::from(u32::MAX)) << VERSION_EPOCH_SHIFT
}

/// One node's leases: what it holds, what it asked for, what it must ask next.
#[derive(Clone, Debug)]
pub struct Leases {
    cfg: LeaseConfig,
    held: BTreeMap<u64, Held>,
    /// Highest epoch seen per group (to re-seed a store restarted empty).
    seen: BTreeMap<u64, u64>,
    /// Acquires in flight: group → node time sent (not re-sent while pending, up to a timeout).
    pending: BTreeMap<u64, u64>,
    incarnation: Option<u64>,
    /// The epoch of the last lease this node was granted, per group (kept after it lapses,
    /// for a last fenced write the store may refuse).
    last_held: BTreeMap<u64, u64>,
}

impl Leases {
    /// An empty lease table.
    pub fn new(cfg: LeaseConfig) -> Self {
        Self {
            cfg,
            held: BTreeMap::new(),
            seen: BTreeMap::new(),
            pending: BTreeMap::new(),
            incarnation: None,
            last_held: BTreeMap::new(),
        }
    }

    /// The store incarnation of the last reply (none before the first).
    pub fn incarnation(&self) -> Option<u64> {
        self.incarnation
    }

    /// The epoch of the last lease this node was granted on `group`, even if lapsed. Never
    /// an epoch merely seen from another holder: a write with it is fenced correctly.
    pub fn last_epoch(&self, group: u64) -> Option<u64> {
        self.last_held.get(&group).copied()
    }

    /// True when the node may apply events and write snapshots for `group` at node time `now`.
    pub fn is_valid(&self, group: u64, now_ms: u64) -> bool {
        self.held
            .get(&group)
            .is_some_and(|h| now_ms < h.valid_until_ms)
    }

    /// The epoch to fence writes with, while valid.
    pub fn epoch(&self, group: u64, now_ms: u64) -> Option<u64> {
        self.held
            .get(&group)
            .filter(|h| now_ms < h.valid_until_ms)
            .map(|h| h.epoch)
    }

    /// Node time until which a held lease may be used, if one is held and valid at `now`.
    pub fn valid_until(&self, group: u64, now_ms: u64) -> Option<u64> {
        self.held
            .get(&group)
            .filter(|h| now_ms < h.valid_until_ms)
            .map(|h| h.valid_until_ms)
    }

    /// Groups held and valid at `now`.
    pub fn valid_groups(&self, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.held
            .iter()
            .filter(move |(_, h)| now_ms < h.valid_until_ms)
            .map(|(g, _)| *g)
    }

    /// One step: given the groups this node should own now, the requests to send. Lapsed
    /// leases are dropped; wanted groups without a lease are acquired; held ones renewed when
    /// due; held ones no longer wanted released.
    pub fn tick(&mut self, now_ms: u64, wanted: &[u64]) -> Vec<Request> {
        let mut out = Vec::new();
        self.held.retain(|_, h| now_ms < h.valid_until_ms);
        let timeout = self.cfg.ttl_ms;
        self.pending
            .retain(|_, sent| now_ms.saturating_sub(*sent) < timeout);
        for (&group, h) in &self.held {
            if !wanted.contains(&group) {
                out.push(Request::Release {
                    group,
                    epoch: h.epoch,
                });
            } else if now_ms.saturating_sub(h.since_ms) >= self.cfg.renew_after_ms {
                out.push(Request::Renew {
                    group,
                    epoch: h.epoch,
                });
            }
        }
        for r in &out {
            if let Request::Release { group, .. } = r {
                self.held.remove(group);
            }
        }
        for &group in wanted {
            if !self.held.contains_key(&group) && !self.pending.contains_key(&group) {
                self.pending.insert(group, now_ms);
                out.push(Request::Acquire {
                    group,
                    min_epoch: self.seen.get(&group).copied().unwrap_or(0),
                });
            }
        }
        out
    }

    /// Gives `group` up now (the hand-off's final write is done): the release to send, if
    /// a lease is held. Like a release from [`tick`](Self::tick), the lease stops being
    /// valid at once.
    pub fn release(&mut self, group: u64) -> Option<Request> {
        self.held.remove(&group).map(|h| Request::Release {
            group,
            epoch: h.epoch,
        })
    }

    /// Takes a store reply in, at node time `now`.
    pub fn on_reply(&mut self, now_ms: u64, r: Reply) {
        if self.incarnation.is_some_and(|i| i != r.incarnation) {
            // The store restarted empty: nothing it said before holds. Keep the epochs seen
            // (they seed the next acquires) and start over.
            self.held.clear();
            self.pending.clear();
        }
        self.incarnation = Some(r.incarnation);
        let valid_until = r.sent_at_ms + self.cfg.local_validity_ms();
        match (r.request, r.result) {
            (Request::Acquire { group, .. }, Ok(epoch)) => {
                self.pending.remove(&group);
                self.note_epoch(group, epoch);
                self.last_held.insert(group, epoch);
                if valid_until > now_ms {
                    self.held.insert(
                        group,
                        Held {
                            epoch,
                            valid_until_ms: valid_until,
                            since_ms: r.sent_at_ms,
                        },
                    );
                }
            }
            (Request::Renew { group, epoch }, Ok(_)) => {
                if let Some(h) = self.held.get_mut(&group) {
                    if h.epoch == epoch && valid_until > h.valid_until_ms {
                        h.valid_until_ms = valid_until;
                        h.since_ms = r.sent_at_ms;
                    }
                }
            }
            (Request::Acquire { group, .. }, Err(e)) => {
                self.pending.remove(&group);
                if let StoreError::Stale { current } = e {
                    self.note_epoch(group, current);
                }
            }
            (Request::Renew { group, epoch }, Err(e)) => {
                if self.held.get(&group).is_some_and(|h| h.epoch == epoch) {
                    self.held.remove(&group);
                }
                if let StoreError::Stale { current } = e {
                    self.note_epoch(group, current);
                }
            }
            (Request::Release { .. }, _) => {}
        }
    }

    fn note_epoch(&mut self, group: u64, epoch: u64) {
        let e = self.seen.entry(group).or_insert(0);
        *e = (*e).max(epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lapsed_lease_goes_to_another_node_with_a_higher_epoch_and_fences_the_old_one() {
        let mut s = StoreModel::new(1);
        assert_eq!(s.acquire(7, 1, 0, 0, 3_000), Ok(1));
        assert_eq!(
            s.acquire(7, 2, 0, 1_000, 3_000),
            Err(StoreError::Held { holder: 1 })
        );
        assert_eq!(s.acquire(7, 2, 0, 3_000, 3_000), Ok(2));
        assert_eq!(
            s.write(7, 1, 1, 3_001),
            Err(StoreError::Stale { current: 2 })
        );
        assert_eq!(s.write(7, 2, 2, 3_001), Ok(()));
        // The right number from the wrong holder is fenced too.
        assert_eq!(
            s.write(7, 1, 2, 3_001),
            Err(StoreError::Stale { current: 2 })
        );
        assert_eq!(
            s.renew(7, 1, 1, 3_002, 3_000),
            Err(StoreError::Stale { current: 2 })
        );
    }

    #[test]
    fn a_store_restarted_empty_does_not_hand_out_old_epochs() {
        let mut s = StoreModel::new(1);
        let mut n = Leases::new(LeaseConfig::default());
        let reqs = n.tick(0, &[7]);
        assert_eq!(
            reqs,
            vec![Request::Acquire {
                group: 7,
                min_epoch: 0
            }]
        );
        for _ in 0..5 {
            // Five holders in turn push the epoch up.
            let e = s.lease(7).map_or(0, |l| l.epoch);
            s.reset(1, 0, 0);
            s.acquire(7, 9, e, 0, 1).expect("free");
        }
        let before = s.lease(7).expect("held").epoch;
        let r = s.acquire(7, 1, 0, 10, 3_000);
        n.on_reply(
            10,
            Reply {
                request: reqs[0],
                sent_at_ms: 0,
                incarnation: 1,
                result: r,
            },
        );
        assert!(n.epoch(7, 10).expect("held") > before);
        // Restart empty: the node notices the new incarnation and asks with the epoch it knows.
        s.reset(2, 20, 3_000);
        let e_known = n.epoch(7, 10).expect("held");
        assert_eq!(
            s.acquire(7, 1, e_known, 20, 3_000),
            Err(StoreError::Recovering)
        );
        let again = s.acquire(7, 1, e_known, 3_020, 3_000).expect("free");
        assert!(
            again > e_known,
            "epoch went backwards after a store restart"
        );
    }

    #[test]
    fn local_validity_is_shorter_than_the_store_ttl_by_drift_and_margin() {
        let c = LeaseConfig::default();
        assert_eq!(c.local_validity_ms(), 3_000 - 30 - 100);
    }
}
