//! Zone snapshots as stored in Redis: a zone's whole state ([`engine::ZoneExport`]) encoded as
//! an rkyv archive behind a format byte. Bytes read back from Redis are untrusted: they are
//! copied to an aligned buffer and validated (bytecheck), then checked against this node's
//! limits by [`engine::ZoneCore::import`]. Storage types here are separate from the engine's.

use engine::core::{ImportError, ZoneExport, ZoneLimits};
use engine::fare::{Currency, FareTable};
use engine::policy::PolicyState;
use engine::producer::ProducerState;
use engine::{ZoneCore, ZoneId};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// The first byte of every stored snapshot this build writes. Format 3 is format 2 and the
/// zone's producers (`engine::producer`); a format-2 snapshot is still read (as a zone
/// without producers), so a rolling upgrade keeps every zone. Format 2 (decaying demand
/// counters, rider sessions, a policy state in engine time) replaced format 1
/// (sliding-window buckets, a per-tick policy state); a format-1 snapshot is refused as an
/// unknown format, so a node of this build starts such a zone afresh.
pub const FORMAT: u8 = 3;

/// The older format this build still reads.
pub const FORMAT_2: u8 = 2;

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct StoredFare {
    version: u32,
    base_minor: u32,
    per_km_minor: u32,
    per_min_minor: u32,
    minimum_minor: u32,
    surge_cap_milli: u32,
    currency: [u8; 3],
}

#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct StoredEntry {
    id: u64,
    at_ms: u64,
}

#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct StoredZone {
    zone: u64,
    version: u64,
    last_event_ms: u64,
    rates_at_ms: u64,
    rates: [f64; 3],
    smoothed: f64,
    stepped_at_ms: u64,
    changed_at_ms: u64,
    fare: StoredFare,
    published_milli: u32,
    fare_history: Vec<StoredFare>,
    drivers: Vec<StoredEntry>,
    dedupe: Vec<StoredEntry>,
    riders: Vec<StoredEntry>,
}

/// One producer of a zone: its id, epoch, highest sequence, the 128-bit window as two
/// words (low word: the highest and the 63 below it), when it was last heard.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
struct StoredProducer {
    producer: u64,
    high: u64,
    window_lo: u64,
    window_hi: u64,
    last_ms: u64,
    epoch: u32,
}

/// Format 3: format 2's zone and its producers.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
struct StoredZoneV3 {
    zone: StoredZone,
    producers: Vec<StoredProducer>,
}

/// Why stored bytes do not restore a zone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PersistError {
    /// Empty, or a format byte this build does not know.
    #[error("unknown snapshot format {0:?}")]
    Format(Option<u8>),
    /// The archive does not validate.
    #[error("corrupt snapshot: {0}")]
    Corrupt(String),
    /// The zone id or the fare currency is invalid.
    #[error("invalid snapshot field: {0}")]
    Field(String),
    /// The state breaks this node's limits or invariants.
    #[error(transparent)]
    Import(#[from] ImportError),
}

fn stored_fare(f: &FareTable) -> StoredFare {
    StoredFare {
        version: f.version,
        base_minor: f.base_minor,
        per_km_minor: f.per_km_minor,
        per_min_minor: f.per_min_minor,
        minimum_minor: f.minimum_minor,
        surge_cap_milli: f.surge_cap_milli,
        currency: f.currency.bytes(),
    }
}

fn fare_of(f: &StoredFare) -> Result<FareTable, PersistError> {
    Ok(FareTable {
        version: f.version,
        base_minor: f.base_minor,
        per_km_minor: f.per_km_minor,
        per_min_minor: f.per_min_minor,
        minimum_minor: f.minimum_minor,
        surge_cap_milli: f.surge_cap_milli,
        currency: Currency::from_bytes(f.currency)
            .map_err(|e| PersistError::Field(e.to_string()))?,
    })
}

/// Encodes a zone's state for the store.
pub fn encode(e: &ZoneExport) -> Vec<u8> {
    let entries = |v: &[(u64, u64)]| {
        v.iter()
            .map(|&(id, at_ms)| StoredEntry { id, at_ms })
            .collect()
    };
    let s = StoredZone {
        zone: e.zone.raw(),
        version: e.version,
        last_event_ms: e.last_event_ms,
        rates_at_ms: e.rates_at_ms,
        rates: e.rates,
        smoothed: e.policy.smoothed,
        stepped_at_ms: e.policy.stepped_at_ms,
        changed_at_ms: e.policy.changed_at_ms,
        fare: stored_fare(&e.fare),
        published_milli: e.policy.published_milli,
        fare_history: e.fare_history.iter().map(stored_fare).collect(),
        drivers: entries(&e.drivers),
        dedupe: entries(&e.dedupe),
        riders: entries(&e.riders),
    };
    let s = StoredZoneV3 {
        zone: s,
        producers: e
            .producers
            .iter()
            .map(|p| StoredProducer {
                producer: p.producer,
                high: p.high,
                window_lo: p.window as u64,
                window_hi: (p.window >> 64) as u64,
                last_ms: p.last_ms,
                epoch: p.epoch,
            })
            .collect(),
    };
    let body = rkyv::to_bytes::<rancor::Error>(&s).expect("serialising plain data cannot fail");
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(FORMAT);
    out.extend_from_slice(&body);
    out
}

/// Restores a zone from stored bytes, validating them and checking them against `limits`.
pub fn decode(bytes: &[u8], limits: &ZoneLimits) -> Result<ZoneCore, PersistError> {
    Ok(ZoneCore::import(decode_export(bytes)?, limits)?)
}

/// A zone's exported state from stored bytes, validated (the limits are checked when it is
/// imported): for a restore that adjusts it first (its snapshot version, see
/// [`crate::lease::version_floor`]).
pub fn decode_export(bytes: &[u8]) -> Result<ZoneExport, PersistError> {
    let format = bytes.first().copied();
    if format != Some(FORMAT) && format != Some(FORMAT_2) {
        return Err(PersistError::Format(format));
    }
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes[1..]);
    let corrupt = |e: rancor::Error| PersistError::Corrupt(e.to_string());
    let (s, producers) = if format == Some(FORMAT) {
        let v3 = rkyv::from_bytes::<StoredZoneV3, rancor::Error>(&aligned).map_err(corrupt)?;
        (v3.zone, v3.producers)
    } else {
        let v2 = rkyv::from_bytes::<StoredZone, rancor::Error>(&aligned).map_err(corrupt)?;
        (v2, Vec::new())
    };
    let export = ZoneExport {
        zone: ZoneId::new(s.zone).map_err(|e| PersistError::Field(e.to_string()))?,
        fare: fare_of(&s.fare)?,
        fare_history: s
            .fare_history
            .iter()
            .map(fare_of)
            .collect::<Result<_, _>>()?,
        drivers: s.drivers.iter().map(|e| (e.id, e.at_ms)).collect(),
        dedupe: s.dedupe.iter().map(|e| (e.id, e.at_ms)).collect(),
        riders: s.riders.iter().map(|e| (e.id, e.at_ms)).collect(),
        producers: producers
            .iter()
            .map(|p| ProducerState {
                producer: p.producer,
                epoch: p.epoch,
                high: p.high,
                window: u128::from(p.window_lo) | (u128::from(p.window_hi) << 64),
                last_ms: p.last_ms,
            })
            .collect(),
        rates_at_ms: s.rates_at_ms,
        rates: s.rates,
        policy: PolicyState {
            smoothed: s.smoothed,
            published_milli: s.published_milli,
            stepped_at_ms: s.stepped_at_ms,
            changed_at_ms: s.changed_at_ms,
        },
        version: s.version,
        last_event_ms: s.last_event_ms,
    };
    Ok(export)
}

#[cfg(test)]
mod tests {
    use super::*;
    use engine::{Event, EventKind, Producer};

    #[test]
    fn a_format_2_snapshot_restores_as_a_zone_without_producers() {
        let limits = ZoneLimits::default();
        let zone = ZoneId::from_lat_lng(52.52, 13.405, 8).expect("valid");
        let fare = FareTable {
            version: 3,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 700,
            surge_cap_milli: 2500,
            currency: Currency::new("EUR").expect("valid"),
        };
        let mut core = ZoneCore::new(zone, fare, 0, &limits);
        let kind = EventKind::DriverAvailable { driver: 7 };
        core.apply(&Event { id: 11, zone, kind }, 5, &limits);
        let p = Producer { id: 9, epoch: 1 };
        core.apply_from(Some(p), &Event { id: 1, zone, kind }, 6, &limits);
        let e = core.export();
        assert_eq!(e.producers.len(), 1);
        // The same zone as a format-2 node wrote it: format 3 without its producers.
        let v3 = encode(&e);
        let mut aligned = AlignedVec::<16>::new();
        aligned.extend_from_slice(&v3[1..]);
        let full = rkyv::from_bytes::<StoredZoneV3, rancor::Error>(&aligned).expect("valid");
        let mut v2 = vec![FORMAT_2];
        v2.extend_from_slice(&rkyv::to_bytes::<rancor::Error>(&full.zone).expect("plain"));
        let restored = decode(&v2, &limits).expect("format 2 is read");
        assert_eq!(
            restored.export(),
            ZoneExport {
                producers: Vec::new(),
                ..e.clone()
            }
        );
        assert_eq!(decode(&v3, &limits).expect("format 3").export(), e);
    }
}
