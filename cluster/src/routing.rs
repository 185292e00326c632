//! Where a request goes and whose replica is accepted: pure rules over the node's view and
//! what it serves ([`Serving`]), so the shell only carries them out.
//!
//! - An event or a fare change is applied where its group is served; anywhere else it is
//!   forwarded, one hop, to the group's owner in this node's view; a forwarded request is
//!   never forwarded again ([`route`]).
//! - A replicated price is taken only for a group not served here, and only from the
//!   group's owner in this node's view, or, for a zone this node has no price for yet, from
//!   whoever sends it (a node that just joined may not know every member yet)
//!   ([`accepts_price`], [`accepts_still_current`]).
//! - Quotes answered from a replica are reported to the zone's owner; reports are taken only
//!   for groups served here ([`quote_report_to`], [`accepts_quote_counts`]).

use crate::coordinator::Serving;
use crate::ownership::{NodeId, View};

/// Where a request for a group goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// Served here: apply it.
    Local,
    /// Forward it to this owner (in this node's view).
    Forward(NodeId),
    /// Nobody can take it now (ownership is moving, this node owns it without serving it
    /// yet, or it was already forwarded once): answer `not serving`, nothing applied.
    NotServing,
}

/// Where a request for `group`, received by node `me` at node time `now_ms`, goes.
/// `forwarded`: it came from a peer.
pub fn route(
    me: NodeId,
    view: &View,
    serving: &Serving,
    group: u64,
    now_ms: u64,
    forwarded: bool,
) -> Route {
    if serving.serves(group, now_ms) {
        return Route::Local;
    }
    match view.owner_of_group(group) {
        Some(owner) if owner != me && !forwarded => Route::Forward(owner),
        _ => Route::NotServing,
    }
}

/// Whether a replicated price of a zone in `group`, sent by `from`, is taken. `priced`:
/// this node already has a price for the zone.
pub fn accepts_price(
    view: &View,
    serving: &Serving,
    group: u64,
    from: NodeId,
    now_ms: u64,
    priced: bool,
) -> bool {
    !serving.serves(group, now_ms) && (view.owner_of_group(group) == Some(from) || !priced)
}

/// Whether "this zone's price is still current" from `from` is taken for a zone in `group`.
pub fn accepts_still_current(
    view: &View,
    serving: &Serving,
    group: u64,
    from: NodeId,
    now_ms: u64,
) -> bool {
    !serving.serves(group, now_ms) && view.owner_of_group(group) == Some(from)
}

/// The node to report this node's quotes of a zone in `group` to: its owner, unless that
/// is this node or the group is served here (then the node's own tick counts them).
pub fn quote_report_to(
    me: NodeId,
    view: &View,
    serving: &Serving,
    group: u64,
    now_ms: u64,
) -> Option<NodeId> {
    if serving.serves(group, now_ms) {
        return None;
    }
    view.owner_of_group(group).filter(|&o| o != me)
}

/// Whether quote counts reported by another node for a zone in `group` are taken: only
/// while this node serves it (otherwise ownership moved and the count is dropped).
pub fn accepts_quote_counts(serving: &Serving, group: u64, now_ms: u64) -> bool {
    serving.serves(group, now_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coordinator::{Action, Coordinator, CoordinatorConfig};
    use crate::lease::{Reply, Request};
    use crate::ownership::Member;

    fn view(ids: &[NodeId]) -> View {
        let mut v = View::new(6);
        v.set_members(ids.iter().map(|&id| Member { id, weight: 1 }));
        v
    }

    /// Node 1's `Serving` with `group` restored under a lease granted at time 0.
    fn serving_group(group: u64) -> Serving {
        let mut c = Coordinator::new(1, CoordinatorConfig::default(), view(&[1]));
        c.handle_groups_seen([group]);
        c.tick(0);
        while let Some(a) = c.poll_action() {
            match a {
                Action::Lease {
                    request: request @ Request::Acquire { .. },
                    sent_at_ms,
                } => c.handle_lease_reply(
                    1,
                    Reply {
                        request,
                        sent_at_ms,
                        incarnation: 1,
                        result: Ok(1),
                    },
                ),
                Action::Restore { group, .. } => c.handle_restored(1, group, true),
                _ => {}
            }
        }
        c.serving(1)
    }

    /// A group owned by `owner` in `v`.
    fn group_of(v: &View, owner: NodeId) -> u64 {
        (0..)
            .find(|&g| v.owner_of_group(g) == Some(owner))
            .expect("a group")
    }

    #[test]
    fn a_request_is_applied_where_served_forwarded_once_to_the_owner_otherwise() {
        let v = view(&[1, 2]);
        let theirs = group_of(&v, 2);
        let mine = group_of(&v, 1);
        let nothing = Serving::default();
        assert_eq!(route(1, &v, &nothing, theirs, 5, false), Route::Forward(2));
        assert_eq!(route(1, &v, &nothing, theirs, 5, true), Route::NotServing);
        // Owned here but not served yet (no lease or not restored): not serving.
        assert_eq!(route(1, &v, &nothing, mine, 5, false), Route::NotServing);
        let served = serving_group(mine);
        assert_eq!(route(1, &v, &served, mine, 5, true), Route::Local);
    }

    #[test]
    fn replicas_come_from_the_owner_or_fill_a_zone_with_no_price_and_never_overwrite_a_served_group(
    ) {
        let v = view(&[1, 2, 3]);
        let g = group_of(&v, 2);
        let nothing = Serving::default();
        assert!(accepts_price(&v, &nothing, g, 2, 5, true));
        assert!(!accepts_price(&v, &nothing, g, 3, 5, true));
        assert!(accepts_price(&v, &nothing, g, 3, 5, false));
        assert!(!accepts_still_current(&v, &nothing, g, 3, 5));
        let served = serving_group(g);
        assert!(!accepts_price(&v, &served, g, 2, 5, false));
        assert!(!accepts_still_current(&v, &served, g, 2, 5));
        assert!(accepts_quote_counts(&served, g, 5));
        assert!(!accepts_quote_counts(&nothing, g, 5));
        assert_eq!(quote_report_to(1, &v, &nothing, g, 5), Some(2));
        assert_eq!(quote_report_to(1, &v, &served, g, 5), None);
    }
}
