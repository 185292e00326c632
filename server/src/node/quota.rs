//! Per-credential quota on new zones: each credential (client token) may create zones at
//! `zones_new_per_credential_per_s`, with bursts up to `zones_new_per_credential_burst`, so no
//! credential can fill the node's `zones_max` and lock every other client out of new zones.
//! A zone is new when the node has no price slot for it (the engine publishes a zone's first
//! snapshot when it creates it). The bucket is pure (time is an argument); events beyond it
//! are answered outcome 3, `zone limit`, and nothing of them is applied.

use std::sync::Mutex;

use telemetry::ClientRefusal;

use super::*;

/// A token bucket in thousandths of a token, so refilling by the millisecond loses nothing.
#[derive(Clone, Copy, Debug)]
pub(super) struct Bucket {
    milli: u64,
    at_ms: u64,
}

impl Bucket {
    /// A full bucket at `now_ms`.
    pub(super) fn full(burst: u32, now_ms: u64) -> Self {
        Self {
            milli: u64::from(burst) * 1000,
            at_ms: now_ms,
        }
    }

    /// Takes up to `n` tokens at `now_ms`, refilled at `per_s` up to `burst`; returns how many
    /// it got.
    pub(super) fn take(&mut self, n: usize, now_ms: u64, per_s: u32, burst: u32) -> usize {
        let elapsed = now_ms.saturating_sub(self.at_ms);
        self.at_ms = self.at_ms.max(now_ms);
        self.milli = (self.milli + elapsed * u64::from(per_s)).min(u64::from(burst) * 1000);
        let got = (self.milli / 1000).min(n as u64);
        self.milli -= got * 1000;
        got as usize
    }
}

/// One bucket per credential (by its index in the node's client list).
#[derive(Debug)]
pub(super) struct ZoneQuotas {
    per_s: u32,
    burst: u32,
    buckets: Box<[Mutex<Bucket>]>,
}

impl ZoneQuotas {
    pub(super) fn new(l: &LimitsConfig, credentials: usize, now_ms: u64) -> Self {
        Self {
            per_s: l.zones_new_per_credential_per_s,
            burst: l.zones_new_per_credential_burst,
            buckets: (0..credentials)
                .map(|_| Mutex::new(Bucket::full(l.zones_new_per_credential_burst, now_ms)))
                .collect(),
        }
    }

    fn take(&self, credential: usize, n: usize, now_ms: u64) -> usize {
        match self.buckets.get(credential) {
            Some(b) => b
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .take(n, now_ms, self.per_s, self.burst),
            None => n,
        }
    }
}

/// Charges the zones of `valid` that the node has no state for to `credential`'s quota; the
/// events of zones beyond it are taken out of `valid` and answered `zone limit`.
pub(super) fn charge_new_zones(
    shared: &Shared,
    credential: usize,
    valid: &mut Vec<(usize, Event)>,
    outcomes: &mut [u8],
) {
    let table = shared.engine.table();
    let mut new: Vec<ZoneId> = valid
        .iter()
        .map(|(_, e)| e.zone)
        .filter(|z| table.slot_of(*z).is_none())
        .collect();
    if new.is_empty() {
        return;
    }
    new.sort_unstable_by_key(|z| z.raw());
    new.dedup();
    let granted = shared
        .zone_quotas
        .take(credential, new.len(), now_ms(shared));
    if granted == new.len() {
        return;
    }
    // The first `granted` new zones (in zone order) are created; the others are refused.
    let refused = &new[granted..];
    let before = valid.len();
    valid.retain(|(i, e)| {
        let out = refused
            .binary_search_by_key(&e.zone.raw(), |z| z.raw())
            .is_ok();
        if out {
            outcomes[*i] = outcome::ZONE_LIMIT;
        }
        !out
    });
    let n = (before - valid.len()) as u64;
    shared.metrics.guard.refused[ClientRefusal::CredentialZones as usize].add(n);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_grants_its_burst_then_its_rate() {
        let mut b = Bucket::full(10, 0);
        assert_eq!(b.take(25, 0, 100, 10), 10, "the burst");
        assert_eq!(b.take(25, 0, 100, 10), 0);
        assert_eq!(
            b.take(25, 55, 100, 10),
            5,
            "100 per second: 5.5 after 55 ms"
        );
        assert_eq!(b.take(25, 60, 100, 10), 1, "the half token was kept");
        assert_eq!(
            b.take(25, 100_000, 100, 10),
            10,
            "never more than the burst"
        );
    }
}
