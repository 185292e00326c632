//! Events that change a zone's hot state, and what became of each.

use crate::share::CredentialId;
use crate::zone::ZoneId;

/// One event from a driver or rider app. `id` makes resends idempotent. From a [`Producer`]
/// (the batch names one), `id` is the event's sequence among that producer's events for
/// the zone, from 1 (see [`crate::producer`]); otherwise it is a sender-chosen unique id,
/// and an id seen again within the zone's dedupe window is not applied twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// The producer's sequence for this zone; without a producer, a sender-chosen unique id
    /// (e.g. a random u64 or a per-device counter).
    pub id: u64,
    /// The zone the event happens in.
    pub zone: ZoneId,
    /// What happened.
    pub kind: EventKind,
}

/// An idempotent producer: the sender of a batch whose events are numbered per zone (an
/// app backend instance, a device gateway). See [`crate::producer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Producer {
    /// The producer's id, kept across its restarts (0 is not a producer).
    pub id: u64,
    /// Its incarnation, higher after every restart (e.g. its start time in seconds).
    pub epoch: u32,
}

/// Who sent a batch of events: the credential (its share of each zone's capacities,
/// `crate::share`) and the producer numbering them, each when there is one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Origin {
    /// The sender's credential; `None` (the engine's own callers) is limited by the zones'
    /// bounds only.
    pub credential: Option<CredentialId>,
    /// The producer numbering the events; `None`: ids deduplicated in the dedupe window.
    pub producer: Option<Producer>,
}

impl From<Option<Producer>> for Origin {
    fn from(producer: Option<Producer>) -> Self {
        Self {
            credential: None,
            producer,
        }
    }
}

/// What happened in a zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A driver is free to take a ride here (sent again periodically as a heartbeat).
    DriverAvailable {
        /// Stable driver id.
        driver: u64,
    },
    /// A driver started a trip: no longer available.
    DriverBusy {
        /// Stable driver id.
        driver: u64,
    },
    /// A driver went offline.
    DriverOffline {
        /// Stable driver id.
        driver: u64,
    },
    /// A rider opened the app or searched here. Demand counts rider *sessions*: a rider seen
    /// again within the zone's `rider_session_ttl_ms` is not counted again.
    RiderDemand {
        /// The rider's session id (stable while the app is open); 0 when the sender does
        /// not know it, and then every such event counts as a new session.
        rider: u64,
    },
    /// A rider requested a trip from here. Part of the same session as the rider's
    /// `RiderDemand` (same `rider`), so it does not count twice.
    TripRequested {
        /// The rider's session id, as for `RiderDemand`; 0 when unknown.
        rider: u64,
    },
    /// A driver accepted a trip from here.
    TripAccepted,
}

/// What the engine did with one event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventOutcome {
    /// Applied to the zone's state.
    Applied,
    /// Its id was already applied within the dedupe window; nothing changed.
    Duplicate,
    /// Not applied; the reason says why and whether a retry can succeed.
    Rejected(RejectReason),
}

/// Why an event was not applied. Nothing is recorded for a rejected event, so its id may be
/// sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// The zone is not at the engine's H3 resolution.
    WrongResolution,
    /// The node holds its maximum number of zones (`zones_max`); retry later or elsewhere.
    ZoneLimit,
    /// The zone tracks its maximum number of available drivers (`drivers_max`).
    DriversFull,
    /// The zone's dedupe window holds `dedupe_ids_max` ids; retry after it slides.
    DedupeFull,
    /// The zone's shard mailbox is full (`mailbox_capacity`); retry with backoff.
    Overloaded,
    /// The engine is shutting down.
    Stopped,
    /// The producer restarted: its batch came from an older epoch than one already seen.
    ProducerFenced,
    /// The sequence is a window or more behind the producer's highest in the zone, so the
    /// zone cannot tell a resend from a first delivery (the producer reordered too far).
    SequenceTooOld,
    /// A producer new to the zone, which remembers `producers_max` producers already.
    ProducersFull,
    /// The sender's credential holds its share (`credential_share_percent`) of the zone's
    /// dedupe log, drivers or producers, whichever the event needed a new place in; other
    /// credentials still have room. Retry after some of its entries left the zone.
    ShareFull,
}

impl RejectReason {
    /// A short stable name, for logs, metrics and wire error messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::WrongResolution => "wrong_resolution",
            Self::ZoneLimit => "zone_limit",
            Self::DriversFull => "drivers_full",
            Self::DedupeFull => "dedupe_full",
            Self::Overloaded => "overloaded",
            Self::Stopped => "stopped",
            Self::ProducerFenced => "producer_fenced",
            Self::SequenceTooOld => "sequence_too_old",
            Self::ProducersFull => "producers_full",
            Self::ShareFull => "share_full",
        }
    }
}
