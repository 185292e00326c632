//! A bounded map from ids to the time they were last seen, with exact expiry and amortised
//! sweeping. Used for the set of available drivers and for event-id dedupe.

use crate::FixedMap as HashMap;

/// Ids with their last-seen time; an entry lives `ttl_ms` after it was last seen.
///
/// Sweeps are amortised: a sweep runs only when the oldest entry may have expired, and
/// finds the next oldest as it goes, so a sweep never does useless work twice.
#[derive(Clone, Debug, Default)]
pub(crate) struct ExpiringSet {
    seen: HashMap<u64, u64>,
    /// A lower bound on every entry's last-seen time.
    oldest_ms: u64,
}

/// The set is at its size limit and nothing in it has expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Full;

impl ExpiringSet {
    /// Removes entries last seen `ttl_ms` or more before `now_ms`.
    pub(crate) fn expire(&mut self, now_ms: u64, ttl_ms: u64) {
        if self.seen.is_empty() || self.oldest_ms.saturating_add(ttl_ms) > now_ms {
            return;
        }
        let mut oldest = u64::MAX;
        self.seen.retain(|_, &mut t| {
            let keep = t.saturating_add(ttl_ms) > now_ms;
            if keep {
                oldest = oldest.min(t);
            }
            keep
        });
        self.oldest_ms = if self.seen.is_empty() { 0 } else { oldest };
        if self.seen.capacity() > 4 * self.seen.len().max(4) {
            self.seen.shrink_to_fit();
        }
    }

    /// Whether `id` is present (call [`expire`](Self::expire) first for an exact answer).
    pub(crate) fn contains(&self, id: u64) -> bool {
        self.seen.contains_key(&id)
    }

    /// Records `id` as seen at `now_ms`, refusing a new id when `len_max` are present.
    pub(crate) fn touch(&mut self, id: u64, now_ms: u64, len_max: usize) -> Result<(), Full> {
        if self.seen.is_empty() {
            self.oldest_ms = now_ms;
        }
        let len = self.seen.len();
        match self.seen.get_mut(&id) {
            Some(t) => *t = (*t).max(now_ms),
            None if len >= len_max => return Err(Full),
            None => {
                self.seen.insert(id, now_ms);
                self.oldest_ms = self.oldest_ms.min(now_ms);
            }
        }
        Ok(())
    }

    /// Forgets `id`; true if it was present.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.seen.remove(&id).is_some()
    }

    /// Number of live entries (as of the last expiry).
    pub(crate) fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no entries are present.
    pub(crate) fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    /// Every entry (id, last seen), sorted by id (for export).
    pub(crate) fn entries(&self) -> Vec<(u64, u64)> {
        let mut v: Vec<(u64, u64)> = self.seen.iter().map(|(&k, &t)| (k, t)).collect();
        v.sort_unstable();
        v
    }

    /// A set holding exactly `entries`.
    pub(crate) fn from_entries(entries: &[(u64, u64)]) -> Self {
        let mut s = Self::default();
        for &(id, t) in entries {
            s.seen.insert(id, t);
        }
        s.oldest_ms = entries.iter().map(|e| e.1).min().unwrap_or(0);
        s
    }

    /// Heap bytes held by the map (for memory accounting).
    pub(crate) fn heap_bytes(&self) -> usize {
        self.seen.allocation_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_exactly_ttl_after_last_seen() {
        let mut s = ExpiringSet::default();
        s.touch(1, 0, 10).expect("room");
        s.touch(2, 500, 10).expect("room");
        s.touch(1, 800, 10).expect("room"); // refreshed
        s.expire(1499, 1000);
        assert_eq!(s.len(), 2);
        s.expire(1500, 1000); // 2 last seen at 500
        assert!(!s.contains(2) && s.contains(1));
        s.expire(1800, 1000);
        assert!(s.is_empty());
    }

    #[test]
    fn a_full_set_refuses_new_ids_but_refreshes_known_ones() {
        let mut s = ExpiringSet::default();
        s.touch(1, 0, 1).expect("room");
        assert_eq!(s.touch(2, 1, 1), Err(Full));
        assert_eq!(s.touch(1, 2, 1), Ok(()));
    }
}
