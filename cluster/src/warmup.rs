//! When a node is *warming*: it has just started (or restarted) and may not yet hold a price
//! for a zone that exists elsewhere in the cluster, so answering `unknown_zone` would tell a
//! client the zone does not exist when the node is merely not ready. While warming, a quote
//! for a zone without a price here is answered `unavailable` (retryable) instead.
//!
//! # Definition
//!
//! A node is warming from its start until all of these hold at once:
//!
//! - **it has heard from the cluster**: its view holds a member other than itself, or it was
//!   given no peers to join (a cluster of one);
//! - **every other member has announced all its prices**: each member in its view has sent it
//!   a full replica announce since it started (`wire::KIND_REPLICATION_FULL_V1`: every price
//!   that member serves, sent once to a member new to it; an empty announce counts);
//! - **every group it owns is served**: each group its view gives it is restored here under a
//!   lease ([`crate::coordinator::Coordinator::owns_all_served`]);
//!
//! or until `warmup_max_ms` has passed since its first step (a member that never announces,
//! or a group that cannot be restored, must not keep the node warming for ever). Once warm,
//! a node stays warm until it stops: later joins and fail-overs are covered by replicas and
//! the staleness bound (`stale`), not by warming.

use std::collections::BTreeSet;

use crate::ownership::{NodeId, View};

/// The warm-up state of one node. Owned by its [`crate::coordinator::Coordinator`].
#[derive(Clone, Debug)]
pub struct Warmup {
    me: NodeId,
    max_ms: u64,
    expects_peers: bool,
    started_ms: Option<u64>,
    announced: BTreeSet<NodeId>,
    warm: bool,
}

impl Warmup {
    /// Warming for node `me`: at most `max_ms` after the first step; `expects_peers` when it
    /// was given peers to join (seeds).
    pub fn new(me: NodeId, max_ms: u64, expects_peers: bool) -> Self {
        Self {
            me,
            max_ms,
            expects_peers,
            started_ms: None,
            announced: BTreeSet::new(),
            warm: false,
        }
    }

    /// Member `from` sent all of its prices.
    pub fn handle_full_announce(&mut self, from: NodeId) {
        self.announced.insert(from);
    }

    /// One step at node time `now_ms`, with the current view and whether every group this
    /// node owns is served. Returns [`Self::is_warm`].
    pub fn tick(&mut self, now_ms: u64, view: &View, owns_all_served: bool) -> bool {
        if self.warm {
            return true;
        }
        let started = *self.started_ms.get_or_insert(now_ms);
        let others: Vec<NodeId> = view
            .members()
            .map(|m| m.id)
            .filter(|&id| id != self.me)
            .collect();
        let heard = !others.is_empty() || !self.expects_peers;
        let announced = others.iter().all(|id| self.announced.contains(id));
        self.warm = (heard && announced && owns_all_served)
            || now_ms.saturating_sub(started) >= self.max_ms;
        self.warm
    }

    /// False while warming (see the module documentation).
    pub fn is_warm(&self) -> bool {
        self.warm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ownership::Member;

    fn view(ids: &[NodeId]) -> View {
        let mut v = View::new(6);
        v.set_members(ids.iter().map(|&id| Member { id, weight: 1 }));
        v
    }

    #[test]
    fn a_node_is_warm_once_every_member_announced_and_its_groups_are_served() {
        let mut w = Warmup::new(1, 10_000, true);
        assert!(
            !w.tick(0, &view(&[1]), true),
            "warm before hearing from anyone"
        );
        assert!(!w.tick(100, &view(&[1, 2, 3]), true));
        w.handle_full_announce(2);
        assert!(
            !w.tick(200, &view(&[1, 2, 3]), true),
            "node 3 has not announced"
        );
        w.handle_full_announce(3);
        assert!(
            !w.tick(300, &view(&[1, 2, 3]), false),
            "its own groups not served"
        );
        assert!(w.tick(400, &view(&[1, 2, 3]), true));
        // And it stays warm.
        assert!(w.tick(500, &view(&[1, 2, 3, 4]), false));
    }

    #[test]
    fn a_node_stops_warming_after_warmup_max_ms_whatever_is_missing() {
        let mut w = Warmup::new(1, 1_000, true);
        assert!(!w.tick(5, &view(&[1]), false));
        assert!(!w.tick(1_004, &view(&[1]), false));
        assert!(w.tick(1_005, &view(&[1]), false));
    }

    #[test]
    fn a_node_without_peers_is_warm_once_its_groups_are_served() {
        let mut w = Warmup::new(1, 10_000, false);
        assert!(!w.tick(0, &view(&[1]), false));
        assert!(w.tick(1, &view(&[1]), true));
    }
}
