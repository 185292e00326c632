//! A credential's share of a zone's bounded capacities, so that no credential can fill one
//! for everybody.
//!
//! A zone bounds three things that senders fill: the dedupe log of events without a
//! producer (`dedupe_ids_max`), the available drivers (`drivers_max`) and the producers it
//! remembers (`producers_max`). Each entry of them remembers its [`Holder`]: the credential
//! whose event made it (a new dedupe id, a new driver, a new producer). A credential may hold
//! at most its share of each ([`share_max`] of `credential_share_percent`); an event that
//! would make it hold more is refused (`RejectReason::ShareFull`), while the other
//! credentials' events still find room. An entry stays held by the credential that made it
//! (a heartbeat for a driver another credential reported keeps it that credential's), and
//! leaves its holder's count when it leaves the zone (expired, driver busy or offline,
//! producer forgotten).
//!
//! The table has a slot per credential that holds something in the zone, found by a linear
//! scan (a zone hears from few credentials). A slot exists only while it holds an entry (a
//! free one is reused), so the table never has more slots than the zone has entries: the
//! state per credential per zone is bounded by the capacities it shares. It is not
//! persisted: a zone restored on another node holds its entries for nobody (they count
//! towards the zone's bounds, not towards any credential's share) until they leave.
//!
//! Pure: no clock, no I/O.

pub(crate) use crate::expiring::Holder;

/// Who sent an event: a compact, stable id of the client credential, the same on every node
/// of a cluster (the node derives it from the credential's token). Events without one (from
/// the engine's own callers, or restored) are held by nobody and limited only by the zone's
/// bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CredentialId(pub u64);

/// The capacities a credential has a share of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub(crate) enum Capacity {
    /// Event ids in the dedupe log (`dedupe_ids_max`).
    DedupeIds,
    /// Available drivers (`drivers_max`).
    Drivers,
    /// Producers remembered (`producers_max`).
    Producers,
}

/// How many [`Capacity`] kinds there are (the arrays indexed by them).
const CAPACITIES: usize = 3;

/// The most slots a zone's table has: holders are 16-bit, and 0 is nobody.
const SLOTS_MAX: usize = Holder::MAX as usize;

/// The most entries of one table a credential may hold, whatever the share: counts are
/// 16-bit, to keep a slot at 16 bytes.
pub const SHARE_ENTRIES_MAX: usize = u16::MAX as usize;

/// The most entries of a capacity of `max` one credential may hold at `percent` (at least
/// one, so that every credential can send something; at most [`SHARE_ENTRIES_MAX`]).
pub fn share_max(max: usize, percent: u8) -> usize {
    (max.saturating_mul(usize::from(percent)) / 100).clamp(1, SHARE_ENTRIES_MAX)
}

/// One credential's holdings in a zone. Free when it holds nothing. 16 bytes: a zone's hot
/// state has a budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Slot {
    credential: CredentialId,
    held: [u16; CAPACITIES],
}

impl Slot {
    fn is_free(&self) -> bool {
        self.held == [0; CAPACITIES]
    }
}

/// The credentials holding a zone's capacities, and how much each holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Holders {
    /// Slot `i` is holder `i + 1`. A boxed slice, exactly as long as the most credentials
    /// that held something in the zone at once (nothing allocated for none): 16 bytes in the
    /// zone, 16 a slot on the heap.
    slots: Box<[Slot]>,
}

impl Holders {
    /// The holder of `credential`'s slot, if it has one.
    fn find(&self, credential: CredentialId) -> Option<usize> {
        self.slots
            .iter()
            .position(|s| s.credential == credential && !s.is_free())
    }

    /// Whether `credential` may take one more entry of `cap`, of which a credential may hold
    /// `share_max`. Changes nothing.
    pub(crate) fn may_take(
        &self,
        credential: CredentialId,
        cap: Capacity,
        share_max: usize,
    ) -> bool {
        match self.find(credential) {
            Some(i) => (self.slots[i].held[cap as usize] as usize) < share_max,
            None => {
                share_max > 0
                    && (self.slots.len() < SLOTS_MAX || self.slots.iter().any(Slot::is_free))
            }
        }
    }

    /// Counts one more entry of `cap` for `credential` (after [`may_take`](Self::may_take)
    /// said yes, with nothing taken in between) and returns the holder to store with it.
    pub(crate) fn take(&mut self, credential: CredentialId, cap: Capacity) -> Holder {
        let i = match self.find(credential) {
            Some(i) => i,
            None => match self.slots.iter().position(Slot::is_free) {
                Some(i) => {
                    self.slots[i].credential = credential;
                    i
                }
                None => {
                    assert!(
                        self.slots.len() < SLOTS_MAX,
                        "holder table full: may_take first"
                    );
                    // Rare (a credential new to the zone while every slot is taken): the
                    // slice grows by one, exactly.
                    let mut v = std::mem::take(&mut self.slots).into_vec();
                    v.push(Slot {
                        credential,
                        held: [0; CAPACITIES],
                    });
                    self.slots = v.into_boxed_slice();
                    self.slots.len() - 1
                }
            },
        };
        self.slots[i].held[cap as usize] += 1;
        (i + 1) as Holder
    }

    /// An entry of `cap` held by `holder` left the zone.
    pub(crate) fn release(&mut self, holder: Holder, cap: Capacity) {
        let Some(i) = usize::from(holder).checked_sub(1) else {
            return;
        };
        let slot = self
            .slots
            .get_mut(i)
            .expect("an entry's holder has a slot while the entry lives");
        let n = &mut slot.held[cap as usize];
        assert!(*n > 0, "released an entry its holder did not hold");
        *n -= 1;
    }

    /// How many entries of `cap` `credential` holds.
    pub(crate) fn held(&self, credential: CredentialId, cap: Capacity) -> usize {
        self.find(credential)
            .map_or(0, |i| self.slots[i].held[cap as usize] as usize)
    }

    /// Frees the table's memory when nobody holds anything.
    pub(crate) fn shrink(&mut self) {
        if !self.slots.is_empty() && self.slots.iter().all(Slot::is_free) {
            self.slots = Box::default();
        }
    }

    /// True when nobody holds anything.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.iter().all(Slot::is_free)
    }

    /// Heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Slot>()
    }

    /// Slots in the table, free ones included (the bound on its memory).
    #[cfg(test)]
    pub(crate) fn slots(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: CredentialId = CredentialId(1);
    const B: CredentialId = CredentialId(2);

    #[test]
    fn a_share_is_a_percentage_of_the_bound_and_never_nothing() {
        assert_eq!(share_max(8_192, 25), 2_048);
        assert_eq!(share_max(64, 25), 16);
        assert_eq!(share_max(3, 25), 1);
        assert_eq!(share_max(2_048, 100), 2_048);
        assert_eq!(share_max(1_000_000, 50), SHARE_ENTRIES_MAX);
        assert_eq!(std::mem::size_of::<Slot>(), 16);
    }

    #[test]
    fn a_credential_at_its_share_is_refused_while_another_takes_room() {
        let mut h = Holders::default();
        let mut held = Vec::new();
        while h.may_take(A, Capacity::Drivers, 3) {
            held.push(h.take(A, Capacity::Drivers));
        }
        assert_eq!(held.len(), 3);
        assert!(
            h.may_take(A, Capacity::DedupeIds, 3),
            "each capacity has its own share"
        );
        assert!(h.may_take(B, Capacity::Drivers, 3));
        let b = h.take(B, Capacity::Drivers);
        assert_ne!(b, held[0]);
        h.release(held[0], Capacity::Drivers);
        assert!(
            h.may_take(A, Capacity::Drivers, 3),
            "a released entry is room again"
        );
        assert_eq!(h.held(A, Capacity::Drivers), 2);
    }

    #[test]
    fn a_slot_is_reused_once_its_credential_holds_nothing() {
        let mut h = Holders::default();
        let a = h.take(A, Capacity::Producers);
        h.release(a, Capacity::Producers);
        assert!(h.is_empty());
        let b = h.take(B, Capacity::Producers);
        assert_eq!(a, b, "the free slot was reused");
        assert_eq!(h.slots(), 1);
        assert_eq!(h.held(A, Capacity::Producers), 0);
    }
}
