//! The lease coordinator's decisions, sans-IO: which groups this node wants, when it asks
//! the store for them, when it restores and serves a group, when it hands one over or gives
//! it up. Inputs come in as `handle_*` calls and [`Coordinator::tick`], time as an argument;
//! outputs are polled as [`Action`]s (as quinn-proto's `Connection` or raft-rs's `Ready`).
//! The node's shell (`server::cluster`) owns one `Coordinator` in one task, carries out its
//! actions against Redis and the engine, and publishes [`Coordinator::serving`] for the
//! request path; the simulation (`tests/simulation.rs`) drives the same type.
//!
//! # The rules it keeps
//!
//! - **Serve only under a valid lease.** A group is served (its events applied) only once
//!   it was restored under a lease, and only while that lease is valid on the node's clock
//!   ([`Serving::serves`] checks the deadline at event time).
//! - **Stop serving before handing over.** A group the view moves away (or every group, when
//!   leaving) leaves the served set in the same step that emits [`Action::HandOff`].
//! - **The final write precedes the release.** A group being handed over keeps its lease
//!   (renewed if due) until the shell reports the final fenced write done
//!   ([`Coordinator::handle_handed_off`]); only then is the release sent.
//! - **A lapsed lease stops serving at once** ([`Action::Abandon`]), whatever else is
//!   under way.
//! - **Nothing is written under a lease before its restore.** A lease granted but not yet
//!   restored gives no epoch to write with ([`Serving::epoch`]): this node's memory of the
//!   group may be older than the store's (it was paused, an interim owner served the group
//!   and handed it back), and a write of that memory under the new epoch would be accepted
//!   and put the older state back over the interim owner's hand-off. The restore reads the
//!   store first ([`Action::Restore`]), so a node that regains a group serves the latest
//!   fenced state, never its own memory of an earlier lease.
//! - **A store restarted empty is rewritten at once.** A lease reply from a new store
//!   incarnation marks every group for rewriting: each is restored again under a new lease,
//!   and a restore writes every zone the store does not hold before the group is served.
//!   Once every owned group is served again, [`Action::StoreRewritten`] reports how long it
//!   took.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use crate::lease::{LeaseConfig, Leases, Reply, Request};
use crate::ownership::{NodeId, View};
use crate::warmup::Warmup;

/// The coordinator's timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoordinatorConfig {
    /// Lease timing (the store's rules are in [`crate::lease`]).
    pub lease: LeaseConfig,
    /// How often to ask for the groups that have snapshots in the store
    /// ([`Action::ListGroups`]).
    pub groups_refresh_ms: u64,
    /// How often to drop zones of groups neither served nor owned here
    /// ([`Action::SweepStray`]).
    pub stray_sweep_ms: u64,
    /// Longest a node warms after its first step ([`crate::warmup`]).
    pub warmup_max_ms: u64,
    /// The node was given peers to join: it warms until it has heard from one.
    pub expects_peers: bool,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            lease: LeaseConfig::default(),
            groups_refresh_ms: 5_000,
            stray_sweep_ms: 1_000,
            warmup_max_ms: 10_000,
            expects_peers: false,
        }
    }
}

/// What the shell must do next, in the order polled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send a lease request to the store, stamped with the node time it was decided at;
    /// answer with [`Coordinator::handle_lease_reply`] (a request that got no answer needs
    /// none: the lease table times it out).
    Lease {
        /// The request.
        request: Request,
        /// Node time the request counts from (the reply's `sent_at_ms`).
        sent_at_ms: u64,
    },
    /// Read the groups that have snapshots in the store; answer with
    /// [`Coordinator::handle_groups_seen`].
    ListGroups,
    /// Read the group's snapshots from the store and load them into the engine; answer with
    /// [`Coordinator::handle_restored`]. The group is served once that says it worked.
    Restore {
        /// The group.
        group: u64,
        /// The epoch of the lease it is restored under.
        epoch: u64,
    },
    /// The group is no longer served: take its zones out of the engine and write them with
    /// `epoch` (the final fenced write); answer with [`Coordinator::handle_handed_off`]
    /// whether or not the write succeeded. The lease is released only after that answer.
    HandOff {
        /// The group.
        group: u64,
        /// The epoch of the lease still held.
        epoch: u64,
    },
    /// The group's lease lapsed: it is no longer served. Write its zones with
    /// `last_epoch` if there is one (the store refuses it if someone else took the group);
    /// keep them in the engine (for quotes) when `keep_zones`, since the group is still this
    /// node's in its view and may come back, else take them out.
    Abandon {
        /// The group.
        group: u64,
        /// The epoch of the last lease this node was granted on it.
        last_epoch: Option<u64>,
        /// Whether the zones stay live in the engine.
        keep_zones: bool,
    },
    /// Drop from the engine every zone whose group [`Coordinator::keeps`] is false for.
    SweepStray,
    /// The store restarted empty (seen at node time `reset_seen_at_ms`) and every group this
    /// node owns is served again, each rewritten by its restore: report it (log, metric).
    StoreRewritten {
        /// Node time the new store incarnation was first seen in a lease reply.
        reset_seen_at_ms: u64,
        /// Node time every owned group was served again.
        rewritten_at_ms: u64,
        /// Groups served again.
        groups: usize,
    },
}

/// A lease as the request path and the writers see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct HeldLease {
    epoch: u64,
    valid_until_ms: u64,
    served: bool,
}

/// What this node serves, as of one coordinator step: an immutable value the shell publishes
/// (e.g. behind an `ArcSwap`) for the request path, which never waits on the coordinator.
#[derive(Clone, Debug, Default)]
pub struct Serving {
    leases: HashMap<u64, HeldLease>,
    known: Arc<HashSet<u64>>,
}

impl Serving {
    /// True when events of `group` may be applied here at node time `now_ms`: restored,
    /// and its lease still valid.
    pub fn serves(&self, group: u64, now_ms: u64) -> bool {
        self.leases
            .get(&group)
            .is_some_and(|l| l.served && now_ms < l.valid_until_ms)
    }

    /// The epoch to fence a snapshot or fare write of `group` with: only while it is
    /// served (restored under this lease, the lease still valid). A lease not yet restored
    /// gives none, so no memory older than the store's is written under it (module
    /// documentation).
    pub fn epoch(&self, group: u64, now_ms: u64) -> Option<u64> {
        self.leases
            .get(&group)
            .filter(|l| l.served && now_ms < l.valid_until_ms)
            .map(|l| l.epoch)
    }

    /// Groups served at `now_ms`.
    pub fn served_count(&self, now_ms: u64) -> usize {
        self.leases
            .values()
            .filter(|l| l.served && now_ms < l.valid_until_ms)
            .count()
    }

    /// Groups served at `now_ms`, in no particular order.
    pub fn served(&self, now_ms: u64) -> impl Iterator<Item = u64> + '_ {
        self.leases
            .iter()
            .filter(move |(_, l)| l.served && now_ms < l.valid_until_ms)
            .map(|(g, _)| *g)
    }

    /// True when the coordinator already knows `group` exists (so the request path need not
    /// report it, see [`Coordinator::handle_groups_seen`]).
    pub fn knows(&self, group: u64) -> bool {
        self.known.contains(&group)
    }
}

/// One node's lease coordinator. See the module documentation.
#[derive(Debug)]
pub struct Coordinator {
    me: NodeId,
    cfg: CoordinatorConfig,
    view: View,
    leaving: bool,
    /// Groups known to exist (in the store, or seen in a request or a replica).
    known: BTreeSet<u64>,
    /// The same, shared with the published [`Serving`]s; rebuilt when `known` grows.
    known_shared: Arc<HashSet<u64>>,
    /// Known groups this node owns in its view (empty while leaving), as of the last tick.
    wanted: BTreeSet<u64>,
    leases: Leases,
    /// Restored under the current lease: served while the lease is valid.
    ready: BTreeSet<u64>,
    /// [`Action::Restore`] emitted, not yet answered.
    restoring: BTreeSet<u64>,
    /// [`Action::HandOff`] emitted, not yet answered: group → epoch. Their leases are kept.
    handing_off: BTreeMap<u64, u64>,
    /// When the groups were last listed (none yet: the first tick lists them, so a node that
    /// just started knows every stored group at once).
    listed_at_ms: Option<u64>,
    swept_at_ms: u64,
    /// Node time a lease reply first showed a new store incarnation, until every owned group
    /// is served again ([`Action::StoreRewritten`]).
    store_reset_at_ms: Option<u64>,
    /// A lease was granted to this node at least once (a quiet period seen afterwards means
    /// the store restarted empty).
    granted_before: bool,
    warmup: Warmup,
    actions: VecDeque<Action>,
}

impl Coordinator {
    /// A coordinator for node `me`, owning nothing, knowing no group, with `view`.
    pub fn new(me: NodeId, cfg: CoordinatorConfig, view: View) -> Self {
        Self {
            me,
            cfg,
            view,
            leaving: false,
            known: BTreeSet::new(),
            known_shared: Arc::default(),
            wanted: BTreeSet::new(),
            leases: Leases::new(cfg.lease),
            ready: BTreeSet::new(),
            restoring: BTreeSet::new(),
            handing_off: BTreeMap::new(),
            listed_at_ms: None,
            swept_at_ms: 0,
            store_reset_at_ms: None,
            granted_before: false,
            warmup: Warmup::new(me, cfg.warmup_max_ms, cfg.expects_peers),
            actions: VecDeque::new(),
        }
    }

    /// The view the coordinator decides by.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The membership view changed.
    pub fn handle_view(&mut self, view: View) {
        self.view = view;
    }

    /// Groups seen to exist (listed in the store, or named by an event, a fare change or a
    /// replica). Only known groups are ever wanted.
    pub fn handle_groups_seen(&mut self, groups: impl IntoIterator<Item = u64>) {
        let before = self.known.len();
        self.known.extend(groups);
        if self.known.len() != before {
            self.known_shared = Arc::new(self.known.iter().copied().collect());
        }
    }

    /// This node is leaving: from the next tick it wants nothing, so it hands every group
    /// over.
    pub fn handle_leave(&mut self) {
        self.leaving = true;
    }

    /// A store reply to an [`Action::Lease`] request, at node time `now_ms`. A grant of a
    /// wanted group is followed by its [`Action::Restore`].
    pub fn handle_lease_reply(&mut self, now_ms: u64, reply: Reply) {
        let before = self.leases.incarnation();
        self.leases.on_reply(now_ms, reply);
        // A store restarted empty shows a new incarnation, or (when the node that bootstraps
        // it happens to write the same incarnation id again) its quiet period to a node that
        // had been granted leases before.
        let recovering = matches!(reply.result, Err(crate::lease::StoreError::Recovering));
        let reset =
            before.is_some_and(|b| b != reply.incarnation) || (recovering && self.granted_before);
        if matches!(
            (reply.request, reply.result),
            (Request::Acquire { .. }, Ok(_))
        ) {
            self.granted_before = true;
        }
        if reset {
            // The store restarted empty: every lease is gone (the table dropped them), and
            // what it held is lost. Each owned group is restored again under a new lease,
            // which rewrites it; count from now.
            self.store_reset_at_ms.get_or_insert(now_ms);
            for group in std::mem::take(&mut self.ready) {
                self.actions.push_back(Action::Abandon {
                    group,
                    last_epoch: None,
                    keep_zones: self.wanted.contains(&group),
                });
            }
        }
        if let Request::Acquire { group, .. } = reply.request {
            self.queue_restore(group, now_ms);
        }
    }

    /// The answer to an [`Action::Restore`], at node time `now_ms`: the group's zones are
    /// loaded and every zone the store lacked written (`ok`), so it is served while its
    /// lease is valid; or not, and the next tick asks again.
    pub fn handle_restored(&mut self, now_ms: u64, group: u64, ok: bool) {
        self.restoring.remove(&group);
        if ok {
            self.ready.insert(group);
            self.note_rewritten(now_ms);
        }
    }

    /// After a store restart: once every owned group is served again, reports it.
    fn note_rewritten(&mut self, now_ms: u64) {
        let Some(at) = self.store_reset_at_ms else {
            return;
        };
        if self.owns_all_served(now_ms) {
            self.store_reset_at_ms = None;
            self.actions.push_back(Action::StoreRewritten {
                reset_seen_at_ms: at,
                rewritten_at_ms: now_ms,
                groups: self.wanted.len(),
            });
        }
    }

    /// The answer to an [`Action::HandOff`]: the final write is done (or failed). The
    /// lease, if still held, is released now.
    pub fn handle_handed_off(&mut self, now_ms: u64, group: u64) {
        if self.handing_off.remove(&group).is_none() {
            return;
        }
        if self.wanted.contains(&group) {
            // The view gave it back meanwhile: keep the lease; the next tick restores it.
            return;
        }
        if let Some(request) = self.leases.release(group) {
            self.actions.push_back(Action::Lease {
                request,
                sent_at_ms: now_ms,
            });
        }
    }

    /// One step at node time `now_ms`: decide what is wanted, stop serving what must stop,
    /// and queue the lease requests, restores and periodic reads that follow.
    pub fn tick(&mut self, now_ms: u64) {
        self.wanted = if self.leaving {
            BTreeSet::new()
        } else {
            self.known
                .iter()
                .copied()
                .filter(|&g| self.view.owner_of_group(g) == Some(self.me))
                .collect()
        };
        // Stop serving what is no longer ours (hand over: final write, then release) and
        // what lost its lease (abandon).
        let ready: Vec<u64> = self.ready.iter().copied().collect();
        for group in ready {
            match self.leases.epoch(group, now_ms) {
                None => {
                    self.ready.remove(&group);
                    self.actions.push_back(Action::Abandon {
                        group,
                        last_epoch: self.leases.last_epoch(group),
                        keep_zones: self.wanted.contains(&group),
                    });
                }
                Some(epoch) if !self.wanted.contains(&group) => {
                    self.ready.remove(&group);
                    self.handing_off.insert(group, epoch);
                    self.actions.push_back(Action::HandOff { group, epoch });
                }
                Some(_) => {}
            }
        }
        if now_ms.saturating_sub(self.swept_at_ms) >= self.cfg.stray_sweep_ms {
            self.swept_at_ms = now_ms;
            self.actions.push_back(Action::SweepStray);
        }
        // A group being handed over keeps its lease until its final write is done.
        let keep: Vec<u64> = self
            .wanted
            .iter()
            .chain(self.handing_off.keys())
            .copied()
            .collect::<BTreeSet<u64>>()
            .into_iter()
            .collect();
        for request in self.leases.tick(now_ms, &keep) {
            self.actions.push_back(Action::Lease {
                request,
                sent_at_ms: now_ms,
            });
        }
        // Held and wanted but not restored (a restore that failed is retried).
        let held: Vec<u64> = self.leases.valid_groups(now_ms).collect();
        for group in held {
            self.queue_restore(group, now_ms);
        }
        if self
            .listed_at_ms
            .is_none_or(|at| now_ms.saturating_sub(at) >= self.cfg.groups_refresh_ms)
        {
            self.listed_at_ms = Some(now_ms);
            self.actions.push_back(Action::ListGroups);
        }
        // Owning nothing (or nothing left to restore) after a store restart.
        self.note_rewritten(now_ms);
        let all_served = self.owns_all_served(now_ms);
        self.warmup.tick(now_ms, &self.view, all_served);
    }

    /// True when every group this node owns in its view (as of the last tick) is restored
    /// and its lease valid at `now_ms`.
    pub fn owns_all_served(&self, now_ms: u64) -> bool {
        self.wanted
            .iter()
            .all(|g| self.ready.contains(g) && self.leases.is_valid(*g, now_ms))
    }

    /// Member `from` sent this node all of its prices ([`crate::warmup`]).
    pub fn handle_full_announce(&mut self, from: NodeId) {
        self.warmup.handle_full_announce(from);
    }

    /// False while this node is warming, as of the last tick ([`crate::warmup`]).
    pub fn is_warm(&self) -> bool {
        self.warmup.is_warm()
    }

    fn queue_restore(&mut self, group: u64, now_ms: u64) {
        let Some(epoch) = self.leases.epoch(group, now_ms) else {
            return;
        };
        if self.wanted.contains(&group)
            && !self.ready.contains(&group)
            && !self.handing_off.contains_key(&group)
            && self.restoring.insert(group)
        {
            self.actions.push_back(Action::Restore { group, epoch });
        }
    }

    /// The next action, in the order decided.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What is served and which leases are held at `now_ms`, for the request path and the
    /// snapshot writers.
    pub fn serving(&self, now_ms: u64) -> Serving {
        let leases = self
            .leases
            .valid_groups(now_ms)
            .filter_map(|g| {
                let epoch = self.leases.epoch(g, now_ms)?;
                let valid_until_ms = self.leases.valid_until(g, now_ms)?;
                Some((
                    g,
                    HeldLease {
                        epoch,
                        valid_until_ms,
                        served: self.ready.contains(&g),
                    },
                ))
            })
            .collect();
        Serving {
            leases,
            known: Arc::clone(&self.known_shared),
        }
    }

    /// True when zones of `group` belong in this node's engine: it is served, or this node
    /// owns it in its view (as of the last tick).
    pub fn keeps(&self, group: u64) -> bool {
        self.ready.contains(&group) || self.wanted.contains(&group)
    }

    /// True while a hand-off is waiting for its final write.
    pub fn is_handing_off(&self) -> bool {
        !self.handing_off.is_empty()
    }

    /// The node's lease table (read only: for checks and status).
    pub fn leases(&self) -> &Leases {
        &self.leases
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

    fn drain(c: &mut Coordinator) -> Vec<Action> {
        std::iter::from_fn(|| c.poll_action()).collect()
    }

    /// Grants every acquire at epoch 1 and answers every restore.
    fn grant_all(c: &mut Coordinator, now: u64, actions: &[Action]) {
        for a in actions {
            match *a {
                Action::Lease {
                    request: request @ Request::Acquire { .. },
                    sent_at_ms,
                } => c.handle_lease_reply(
                    now,
                    Reply {
                        request,
                        sent_at_ms,
                        incarnation: 1,
                        result: Ok(1),
                    },
                ),
                Action::Restore { group, .. } => c.handle_restored(now, group, true),
                _ => {}
            }
        }
    }

    #[test]
    fn a_group_is_served_only_after_its_lease_and_its_restore() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7]);
        c.tick(10);
        let first = drain(&mut c);
        assert!(first.contains(&Action::Lease {
            request: Request::Acquire {
                group: 7,
                min_epoch: 0
            },
            sent_at_ms: 10
        }));
        assert!(!c.serving(10).serves(7, 10));
        grant_all(&mut c, 11, &first);
        let restore = drain(&mut c);
        assert_eq!(restore, vec![Action::Restore { group: 7, epoch: 1 }]);
        assert!(!c.serving(11).serves(7, 11), "served before its restore");
        grant_all(&mut c, 12, &restore);
        assert!(c.serving(12).serves(7, 12));
        let until = 10 + LeaseConfig::default().local_validity_ms();
        assert!(!c.serving(12).serves(7, until), "served past its lease");
    }

    #[test]
    fn a_lease_not_yet_restored_gives_no_epoch_to_write_with() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7]);
        c.tick(10);
        let first = drain(&mut c);
        for a in &first {
            if let Action::Lease {
                request: request @ Request::Acquire { .. },
                sent_at_ms,
            } = *a
            {
                c.handle_lease_reply(
                    11,
                    Reply {
                        request,
                        sent_at_ms,
                        incarnation: 1,
                        result: Ok(4),
                    },
                );
            }
        }
        // Granted, restore pending: this node's memory of the group may predate the store's.
        assert_eq!(c.serving(11).epoch(7, 11), None);
        c.handle_restored(12, 7, true);
        assert_eq!(c.serving(12).epoch(7, 12), Some(4));
    }

    #[test]
    fn a_store_restarted_empty_is_reported_rewritten_once_every_owned_group_is_restored_again() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7, 8]);
        c.tick(10);
        let a = drain(&mut c);
        grant_all(&mut c, 11, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 12, &a);
        assert_eq!(c.serving(12).served_count(12), 2);
        // A renewal answered by a new incarnation (refused: the store forgot the lease).
        c.handle_lease_reply(
            600,
            Reply {
                request: Request::Renew { group: 7, epoch: 1 },
                sent_at_ms: 600,
                incarnation: 2,
                result: Err(crate::lease::StoreError::Stale { current: 0 }),
            },
        );
        assert_eq!(
            c.serving(600).served_count(600),
            0,
            "served after the reset"
        );
        let a = drain(&mut c);
        assert_eq!(
            a.iter()
                .filter(|x| matches!(
                    x,
                    Action::Abandon {
                        keep_zones: true,
                        ..
                    }
                ))
                .count(),
            2
        );
        c.tick(3_000);
        let a = drain(&mut c);
        grant_all(&mut c, 3_001, &a);
        let a = drain(&mut c);
        assert!(!a.iter().any(|x| matches!(x, Action::StoreRewritten { .. })));
        let restores: Vec<u64> = a
            .iter()
            .filter_map(|x| match x {
                Action::Restore { group, .. } => Some(*group),
                _ => None,
            })
            .collect();
        assert_eq!(restores, vec![7, 8]);
        c.handle_restored(3_010, 7, true);
        assert!(
            drain(&mut c).is_empty(),
            "reported before every group was back"
        );
        c.handle_restored(3_020, 8, true);
        assert_eq!(
            drain(&mut c),
            vec![Action::StoreRewritten {
                reset_seen_at_ms: 600,
                rewritten_at_ms: 3_020,
                groups: 2
            }]
        );
    }

    #[test]
    fn a_quiet_period_after_a_grant_counts_as_a_store_restarted_empty() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7]);
        c.tick(10);
        let a = drain(&mut c);
        grant_all(&mut c, 11, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 12, &a);
        // The same incarnation id again (the same node bootstrapped the new store), but in
        // its quiet period.
        c.handle_lease_reply(
            3_000,
            Reply {
                request: Request::Acquire {
                    group: 7,
                    min_epoch: 1,
                },
                sent_at_ms: 3_000,
                incarnation: 1,
                result: Err(crate::lease::StoreError::Recovering),
            },
        );
        assert!(drain(&mut c)
            .iter()
            .any(|x| matches!(x, Action::Abandon { group: 7, .. })));
        c.tick(6_000);
        let a = drain(&mut c);
        grant_all(&mut c, 6_001, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 6_002, &a);
        assert_eq!(
            drain(&mut c),
            vec![Action::StoreRewritten {
                reset_seen_at_ms: 3_000,
                rewritten_at_ms: 6_002,
                groups: 1
            }]
        );
    }

    #[test]
    fn a_hand_off_stops_serving_at_once_and_releases_only_after_the_final_write() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7]);
        c.tick(10);
        let a = drain(&mut c);
        grant_all(&mut c, 11, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 12, &a);
        assert!(c.serving(12).serves(7, 12));
        // Node 2 joins and wins group 7 (or not: pick the view that moves it).
        let mut other = 2;
        while view(&[1, other]).owner_of_group(7) != Some(other) {
            other += 1;
        }
        c.handle_view(view(&[1, other]));
        c.tick(20);
        let a = drain(&mut c);
        assert!(a.contains(&Action::HandOff { group: 7, epoch: 1 }));
        assert!(!c.serving(20).serves(7, 20));
        assert!(
            !a.iter().any(|x| matches!(
                x,
                Action::Lease {
                    request: Request::Release { .. },
                    ..
                }
            )),
            "released before the final write: {a:?}"
        );
        // Ticks while the write is in flight keep the lease.
        c.tick(1_500);
        assert!(!drain(&mut c).iter().any(|x| matches!(
            x,
            Action::Lease {
                request: Request::Release { .. },
                ..
            }
        )));
        c.handle_handed_off(1_600, 7);
        assert_eq!(
            drain(&mut c),
            vec![Action::Lease {
                request: Request::Release { group: 7, epoch: 1 },
                sent_at_ms: 1_600
            }]
        );
    }

    #[test]
    fn a_lapsed_lease_abandons_the_group_and_keeps_its_zones_while_it_is_still_ours() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7]);
        c.tick(10);
        let a = drain(&mut c);
        grant_all(&mut c, 11, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 12, &a);
        let late = 10 + LeaseConfig::default().local_validity_ms();
        c.tick(late);
        let a = drain(&mut c);
        assert!(a.contains(&Action::Abandon {
            group: 7,
            last_epoch: Some(1),
            keep_zones: true
        }));
        assert!(c.keeps(7));
    }

    #[test]
    fn a_leaving_node_hands_every_group_over() {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([7, 8]);
        c.tick(10);
        let a = drain(&mut c);
        grant_all(&mut c, 11, &a);
        let a = drain(&mut c);
        grant_all(&mut c, 12, &a);
        assert_eq!(c.serving(12).served_count(12), 2);
        c.handle_leave();
        c.tick(20);
        let handoffs = drain(&mut c)
            .into_iter()
            .filter(|a| matches!(a, Action::HandOff { .. }))
            .count();
        assert_eq!(handoffs, 2);
        assert_eq!(c.serving(20).served_count(20), 0);
        assert!(c.is_handing_off());
    }
}
