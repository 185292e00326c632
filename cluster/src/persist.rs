//! Zone snapshots as stored in Redis: a zone's whole state ([`engine::ZoneExport`]) encoded as
//! an rkyv archive behind a format byte. Bytes read back from Redis are untrusted: they are
//! copied to an aligned buffer and validated (bytecheck), then checked against this node's
//! limits by [`engine::ZoneCore::import`]. Storage types here are separate from the engine's.

use engine::core::{ImportError, ZoneExport, ZoneLimits};
use engine::fare::{Currency, FareTable};
use engine::policy::{PolicyState, Trend};
use engine::window::BUCKETS;
use engine::{ZoneCore, ZoneId};
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Serialize};

/// The first byte of every stored snapshot.
pub const FORMAT: u8 = 1;

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
    window_head: u64,
    smoothed: f64,
    fare: StoredFare,
    published_milli: u32,
    against_ticks: u16,
    trend: u8,
    window_counts: [[u16; BUCKETS]; 3],
    fare_history: Vec<StoredFare>,
    drivers: Vec<StoredEntry>,
    dedupe: Vec<StoredEntry>,
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
        window_head: e.window_head,
        smoothed: e.policy.smoothed,
        fare: stored_fare(&e.fare),
        published_milli: e.policy.published_milli,
        against_ticks: e.policy.against_ticks,
        trend: match e.policy.trend {
            Trend::Flat => 0,
            Trend::Up => 1,
            Trend::Down => 2,
        },
        window_counts: e.window_counts,
        fare_history: e.fare_history.iter().map(stored_fare).collect(),
        drivers: entries(&e.drivers),
        dedupe: entries(&e.dedupe),
    };
    let body = rkyv::to_bytes::<rancor::Error>(&s).expect("serialising plain data cannot fail");
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(FORMAT);
    out.extend_from_slice(&body);
    out
}

/// Restores a zone from stored bytes, validating them and checking them against `limits`.
pub fn decode(bytes: &[u8], limits: &ZoneLimits) -> Result<ZoneCore, PersistError> {
    match bytes.first() {
        Some(&FORMAT) => {}
        other => return Err(PersistError::Format(other.copied())),
    }
    let mut aligned = AlignedVec::<16>::with_capacity(bytes.len());
    aligned.extend_from_slice(&bytes[1..]);
    let s = rkyv::from_bytes::<StoredZone, rancor::Error>(&aligned)
        .map_err(|e| PersistError::Corrupt(e.to_string()))?;
    let trend = match s.trend {
        0 => Trend::Flat,
        1 => Trend::Up,
        2 => Trend::Down,
        t => return Err(PersistError::Field(format!("trend {t}"))),
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
        window_head: s.window_head,
        window_counts: s.window_counts,
        policy: PolicyState {
            smoothed: s.smoothed,
            published_milli: s.published_milli,
            trend,
            against_ticks: s.against_ticks,
        },
        version: s.version,
        last_event_ms: s.last_event_ms,
    };
    Ok(ZoneCore::import(export, limits)?)
}
