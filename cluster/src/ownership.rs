//! Zone ownership: a pure function of the live member set, computed identically on every node.
//!
//! **Weighted rendezvous hashing** keyed by a zone's **parent cell** at a coarser H3
//! resolution (`group_resolution`): every zone of a group goes to the member with the highest
//! score `weight / -ln(u)`, where `u ∈ (0, 1)` is a hash of (group, member). So:
//!
//! - neighbouring zones mostly share a parent and an owner (blending reads stay local);
//! - when a member joins, only the groups it now wins move, about `weight / total` of them;
//!   when one leaves, only its own groups move; nothing else changes hands;
//! - every node holding the same member set computes the same owners, whatever the order it
//!   learnt them in, and the same [`View::checksum`], which admins compare across nodes.

use std::collections::BTreeMap;

use engine::ZoneId;
use h3o::{CellIndex, Resolution};

/// A cluster member's stable id (e.g. the node id from its config).
pub type NodeId = u16;

/// A live member as ownership sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its id.
    pub id: NodeId,
    /// Its share of zones relative to the others (e.g. cores). At least 1.
    pub weight: u32,
}

/// One node's view of the membership: who is live, a local epoch counting changes, and a
/// checksum of the member set that is equal on every node with the same set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct View {
    members: BTreeMap<NodeId, u32>,
    epoch: u64,
    group_resolution: u8,
}

/// splitmix64: a fast, well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl View {
    /// An empty view grouping zones by their parent at `group_resolution` (0..=15; a zone at
    /// a coarser resolution than that is its own group).
    pub fn new(group_resolution: u8) -> Self {
        Self {
            members: BTreeMap::new(),
            epoch: 0,
            group_resolution: group_resolution.min(15),
        }
    }

    /// Adds or re-weights a member; bumps the epoch if anything changed.
    pub fn upsert(&mut self, m: Member) {
        let w = m.weight.max(1);
        if self.members.insert(m.id, w) != Some(w) {
            self.epoch += 1;
        }
    }

    /// Removes a member; bumps the epoch if it was present.
    pub fn remove(&mut self, id: NodeId) {
        if self.members.remove(&id).is_some() {
            self.epoch += 1;
        }
    }

    /// Makes `live` the member set: members not in it are removed, the others added or
    /// re-weighted (the epoch counts each change). How a node follows its membership.
    pub fn set_members(&mut self, live: impl IntoIterator<Item = Member>) {
        let live: BTreeMap<NodeId, Member> = live.into_iter().map(|m| (m.id, m)).collect();
        let gone: Vec<NodeId> = self
            .members
            .keys()
            .copied()
            .filter(|id| !live.contains_key(id))
            .collect();
        for id in gone {
            self.remove(id);
        }
        for m in live.into_values() {
            self.upsert(m);
        }
    }

    /// The live members, by id.
    pub fn members(&self) -> impl Iterator<Item = Member> + '_ {
        self.members
            .iter()
            .map(|(&id, &weight)| Member { id, weight })
    }

    /// Number of live members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// True when no member is live.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Changes applied to this view (local; differs between nodes that saw different histories).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// A hash of the member set and weights: equal on every node with the same set.
    pub fn checksum(&self) -> u64 {
        self.members
            .iter()
            .fold(mix(u64::from(self.group_resolution)), |h, (&id, &w)| {
                mix(h ^ mix(u64::from(id) << 32 | u64::from(w)))
            })
    }

    /// The group (parent cell) a zone belongs to.
    pub fn group_of(&self, zone: ZoneId) -> u64 {
        let cell = CellIndex::try_from(zone.raw()).expect("ZoneId holds a valid cell");
        let res = Resolution::try_from(self.group_resolution).unwrap_or(Resolution::Zero);
        cell.parent(res).map_or(zone.raw(), u64::from)
    }

    /// The owner of a zone, or `None` when no member is live.
    pub fn owner(&self, zone: ZoneId) -> Option<NodeId> {
        self.owner_of_group(self.group_of(zone))
    }

    /// The owner of a group.
    pub fn owner_of_group(&self, group: u64) -> Option<NodeId> {
        let g = mix(group);
        let mut best: Option<(f64, NodeId)> = None;
        for (&id, &weight) in &self.members {
            let h = mix(g ^ mix(u64::from(id)));
            // u in (0, 1): never 0 or 1, so the logarithm is finite and negative.
            let u = ((h >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = f64::from(weight) / -u.ln();
            // Ties (practically impossible) go to the lower id, deterministically.
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, id));
            }
        }
        best.map(|(_, id)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A contiguous block of resolution-8 zones (a city of about `n` zones).
    fn city(n: usize) -> Vec<ZoneId> {
        let mut out = std::collections::BTreeSet::new();
        let side = (n as f64).sqrt() as u32 * 2 + 2;
        let mut i = 0u32;
        while out.len() < n {
            let lat = 48.0 + f64::from(i % side) * 0.004;
            let lng = 11.0 + f64::from(i / side) * 0.006;
            out.insert(ZoneId::from_lat_lng(lat, lng, 8).expect("valid"));
            i += 1;
        }
        out.into_iter().collect()
    }

    fn view(ids: &[NodeId]) -> View {
        let mut v = View::new(6);
        for &id in ids {
            v.upsert(Member { id, weight: 1 });
        }
        v
    }

    #[test]
    fn the_same_members_give_the_same_owners_and_checksum_whatever_the_order() {
        let zones = city(2_000);
        let (a, b) = (view(&[1, 2, 3]), view(&[3, 1, 2]));
        assert_eq!(a.checksum(), b.checksum());
        assert!(zones.iter().all(|z| a.owner(*z) == b.owner(*z)));
        assert_ne!(a.checksum(), view(&[1, 2]).checksum());
    }

    #[test]
    fn a_join_moves_about_its_share_and_only_to_the_newcomer() {
        let zones = city(20_000);
        let three = view(&[1, 2, 3]);
        let four = view(&[1, 2, 3, 4]);
        let moved: Vec<_> = zones
            .iter()
            .filter(|z| three.owner(**z) != four.owner(**z))
            .collect();
        assert!(
            moved.iter().all(|z| four.owner(**z) == Some(4)),
            "zones moved between old members"
        );
        let share = moved.len() as f64 / zones.len() as f64;
        assert!(
            (0.15..=0.35).contains(&share),
            "a fourth member took {share:.2} of the zones"
        );
    }

    #[test]
    fn a_leave_moves_only_the_leavers_zones() {
        let zones = city(20_000);
        let four = view(&[1, 2, 3, 4]);
        let three = view(&[1, 2, 4]);
        for z in &zones {
            if four.owner(*z) != Some(3) {
                assert_eq!(four.owner(*z), three.owner(*z));
            } else {
                assert_ne!(three.owner(*z), Some(3));
            }
        }
    }

    #[test]
    fn zones_spread_evenly_enough_and_neighbours_mostly_share_an_owner() {
        let zones = city(20_000);
        let v = view(&[1, 2, 3]);
        let mut counts = BTreeMap::new();
        for z in &zones {
            *counts
                .entry(v.owner(*z).expect("members"))
                .or_insert(0usize) += 1;
        }
        let mean = zones.len() as f64 / 3.0;
        assert!(
            counts.values().all(|&c| (c as f64) < 1.5 * mean),
            "{counts:?}"
        );
        // Adjacent pairs with one owner: about 1/3 if zones were spread at random over three
        // members; grouping by parent keeps most neighbours together.
        let (mut same, mut pairs) = (0usize, 0usize);
        for z in &zones {
            for n in z.neighbours().iter() {
                pairs += 1;
                same += usize::from(v.owner(n) == v.owner(*z));
            }
        }
        let share = same as f64 / pairs as f64;
        assert!(
            share > 0.8,
            "only {share:.2} of adjacent pairs share an owner"
        );
    }

    #[test]
    fn weights_skew_the_share() {
        let zones = city(20_000);
        let mut v = View::new(6);
        v.upsert(Member { id: 1, weight: 1 });
        v.upsert(Member { id: 2, weight: 3 });
        let heavy =
            zones.iter().filter(|z| v.owner(**z) == Some(2)).count() as f64 / zones.len() as f64;
        assert!(
            (0.65..=0.85).contains(&heavy),
            "weight 3 of 4 took {heavy:.2}"
        );
    }

    #[test]
    fn epochs_count_changes_and_nobody_owns_anything_in_an_empty_view() {
        let mut v = View::new(6);
        assert_eq!(v.owner(city(1)[0]), None);
        v.upsert(Member { id: 1, weight: 1 });
        v.upsert(Member { id: 1, weight: 1 }); // no change
        v.remove(9); // absent
        assert_eq!(v.epoch(), 1);
        v.remove(1);
        assert_eq!((v.epoch(), v.is_empty()), (2, true));
    }

    proptest! {
        #[test]
        fn ownership_depends_only_on_the_member_set(ids in prop::collection::btree_set(0u16..50, 1..8), zi in 0usize..500) {
            let zones = city(500);
            let ids: Vec<_> = ids.into_iter().collect();
            let mut rev = ids.clone();
            rev.reverse();
            let (a, b) = (view(&ids), view(&rev));
            prop_assert_eq!(a.owner(zones[zi]), b.owner(zones[zi]));
            prop_assert!(ids.contains(&a.owner(zones[zi]).expect("members")));
        }
    }
}
