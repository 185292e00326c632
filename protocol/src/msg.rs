//! Message types. These are wire types: plain structs of fixed-size integers, floats, byte
//! arrays and vectors, so that their rkyv archives have a simple, documented layout (see
//! `PROTOCOL.md`). No enums, strings or maps cross the wire; text travels as UTF-8 bytes.

use rkyv::{Archive, Deserialize, Serialize};

use crate::TOKEN_LEN;

/// The kind byte of a frame header: which message type the body holds.
/// Requests have the high bit clear; their replies are `request | 0x80`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Client → node: authenticate ([`Hello`]). Must be the first request on a connection.
    Hello = 0x01,
    /// Client → node: price one trip ([`QuoteRequest`]).
    Quote = 0x02,
    /// Client → node: price several trips ([`QuoteBatch`]).
    QuoteBatch = 0x03,
    /// Client → node: apply events ([`EventBatch`]).
    EventBatch = 0x04,
    /// Client → node: verify a quote token ([`TokenRequest`]).
    Verify = 0x05,
    /// Client → node: explain a quote token ([`TokenRequest`]).
    Explain = 0x06,
    /// Admin (read) → node: a zone's hot state ([`ZoneRequest`]).
    ZoneState = 0x07,
    /// Admin (read) → node: a zone's fare table ([`ZoneRequest`]).
    FareGet = 0x08,
    /// Admin → node: replace a zone's fare table ([`FareSet`]).
    FareSet = 0x09,
    /// Admin (read) → node: the surge policy ([`Empty`]).
    PolicyGet = 0x0A,
    /// Admin → node: replace the surge policy ([`WirePolicy`]).
    PolicySet = 0x0B,
    /// Admin (read) → node: the node's status ([`Empty`]).
    Status = 0x0C,
    /// Admin (read) → node: the cluster as this node sees it ([`Empty`]).
    Cluster = 0x0D,
    /// Admin → node: drain a node: hand its zones over, then it leaves ([`DrainRequest`]).
    Drain = 0x0E,
    /// Admin (read) → node: a zone's recently published snapshots ([`ZoneRequest`]).
    ZoneHistory = 0x0F,
    /// Client → node: apply events from an idempotent producer ([`ProducerBatch`]).
    ProducerBatch = 0x10,
    /// Node → client: reply to `Hello` ([`Welcome`]).
    Welcome = 0x81,
    /// Node → client: reply to `Quote` ([`QuoteReply`]).
    QuoteOk = 0x82,
    /// Node → client: reply to `QuoteBatch` ([`QuoteBatchReply`]).
    QuoteBatchOk = 0x83,
    /// Node → client: reply to `EventBatch` ([`EventBatchReply`]).
    EventBatchOk = 0x84,
    /// Node → client: reply to `Verify` ([`TokenInfo`]).
    VerifyOk = 0x85,
    /// Node → client: reply to `Explain` ([`ExplainReply`]).
    ExplainOk = 0x86,
    /// Node → admin: reply to `ZoneState` ([`ZoneStateReply`]).
    ZoneStateOk = 0x87,
    /// Node → admin: reply to `FareGet` ([`WireFare`]).
    FareGetOk = 0x88,
    /// Node → admin: reply to `FareSet` ([`VersionReply`]): the change is applied.
    FareSetOk = 0x89,
    /// Node → admin: reply to `PolicyGet` ([`WirePolicy`]).
    PolicyGetOk = 0x8A,
    /// Node → admin: reply to `PolicySet` ([`VersionReply`]): the change is applied.
    PolicySetOk = 0x8B,
    /// Node → admin: reply to `Status` ([`StatusReply`]).
    StatusOk = 0x8C,
    /// Node → admin: reply to `Cluster` ([`ClusterReply`]).
    ClusterOk = 0x8D,
    /// Node → admin: reply to `Drain` ([`DrainReply`]): the node handed its zones over.
    DrainOk = 0x8E,
    /// Node → admin: reply to `ZoneHistory` ([`ZoneHistoryReply`]).
    ZoneHistoryOk = 0x8F,
    /// Node → client: reply to `ProducerBatch` ([`EventBatchReply`]).
    ProducerBatchOk = 0x90,
    /// Node → client: the request failed ([`ErrorReply`]).
    Error = 0xFF,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Self; 33] = [
        Self::Hello,
        Self::Quote,
        Self::QuoteBatch,
        Self::EventBatch,
        Self::Verify,
        Self::Explain,
        Self::ZoneState,
        Self::FareGet,
        Self::FareSet,
        Self::PolicyGet,
        Self::PolicySet,
        Self::Status,
        Self::Cluster,
        Self::Drain,
        Self::ZoneHistory,
        Self::ProducerBatch,
        Self::Welcome,
        Self::QuoteOk,
        Self::QuoteBatchOk,
        Self::EventBatchOk,
        Self::VerifyOk,
        Self::ExplainOk,
        Self::ZoneStateOk,
        Self::FareGetOk,
        Self::FareSetOk,
        Self::PolicyGetOk,
        Self::PolicySetOk,
        Self::StatusOk,
        Self::ClusterOk,
        Self::DrainOk,
        Self::ZoneHistoryOk,
        Self::ProducerBatchOk,
        Self::Error,
    ];

    /// The kind for a byte, if it is one.
    pub fn from_byte(b: u8) -> Option<Self> {
        Self::ALL.iter().copied().find(|k| *k as u8 == b)
    }

    /// True for messages a client sends.
    pub fn is_request(self) -> bool {
        (self as u8) & 0x80 == 0
    }
}

/// The longest `Hello::client_name`, bytes: a longer one is refused `invalid_value`.
pub const CLIENT_NAME_LEN_MAX: usize = 64;

/// Authenticates a connection. The node answers [`Welcome`] or closes the connection with
/// `bad_credentials`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Hello {
    /// The client's secret token, as configured on the node (maps to a tier).
    pub client_token: Vec<u8>,
    /// A name for logs (UTF-8), at most 64 bytes.
    pub client_name: Vec<u8>,
}

/// The node's answer to [`Hello`]: who you are talking to and the limits that apply.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Welcome {
    /// How long quotes are honoured.
    pub quote_ttl_ms: u64,
    /// Largest frame the node accepts (header included).
    pub frame_len_max: u32,
    /// Most items in one batch.
    pub batch_len_max: u32,
    /// Most requests in flight on this connection before `overloaded`.
    pub in_flight_max: u32,
    /// The answering node.
    pub node_id: u16,
    /// The client's tier: 0 premium, 1 shared.
    pub tier: u8,
    /// H3 resolution of zones.
    pub resolution: u8,
}

/// Where a quote starts: `origin` 0 uses `zone`; 1 uses `lat`/`lng` (degrees).
pub const ORIGIN_ZONE: u8 = 0;
/// See [`ORIGIN_ZONE`].
pub const ORIGIN_POINT: u8 = 1;

/// One trip to price.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct QuoteRequest {
    /// H3 cell of the pickup when `origin` is [`ORIGIN_ZONE`].
    pub zone: u64,
    /// Pickup latitude when `origin` is [`ORIGIN_POINT`].
    pub lat: f64,
    /// Pickup longitude when `origin` is [`ORIGIN_POINT`].
    pub lng: f64,
    /// Expected distance, metres.
    pub distance_m: u32,
    /// Expected duration, seconds.
    pub duration_s: u32,
    /// [`ORIGIN_ZONE`] or [`ORIGIN_POINT`].
    pub origin: u8,
}

impl QuoteRequest {
    /// A trip from a zone.
    pub fn from_zone(zone: u64, distance_m: u32, duration_s: u32) -> Self {
        Self {
            zone,
            lat: 0.0,
            lng: 0.0,
            distance_m,
            duration_s,
            origin: ORIGIN_ZONE,
        }
    }

    /// A trip from a point (its zone is found by the node).
    pub fn from_point(lat: f64, lng: f64, distance_m: u32, duration_s: u32) -> Self {
        Self {
            zone: 0,
            lat,
            lng,
            distance_m,
            duration_s,
            origin: ORIGIN_POINT,
        }
    }
}

/// Several trips to price; answered by one [`QuoteBatchReply`] in the same order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct QuoteBatch {
    /// The trips, at most `batch_len_max`.
    pub quotes: Vec<QuoteRequest>,
}

/// A priced trip.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteReply {
    /// The signed quote token (verify and explain take it back).
    pub token: [u8; TOKEN_LEN],
    /// The zone priced.
    pub zone: u64,
    /// The fare, minor units.
    pub amount_minor: u64,
    /// The snapshot the price came from.
    pub snapshot_version: u64,
    /// How old that snapshot was when the quote was made.
    pub snapshot_age_ms: u64,
    /// The quote is honoured until then (ms since the Unix epoch).
    pub expires_at_ms: u64,
    /// The multiplier applied, thousandths.
    pub multiplier_milli: u32,
    /// ISO-4217 currency code, ASCII.
    pub currency: [u8; 3],
}

impl QuoteReply {
    /// All zeroes: the `quote` of a failed [`QuoteResult`].
    pub const ZERO: Self = Self {
        token: [0; TOKEN_LEN],
        zone: 0,
        amount_minor: 0,
        snapshot_version: 0,
        snapshot_age_ms: 0,
        expires_at_ms: 0,
        multiplier_milli: 0,
        currency: [0; 3],
    };
}

/// One result of a quote batch: `error` 0 and a quote, or an error code and a zeroed quote.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteResult {
    /// The quote when `error` is 0.
    pub quote: QuoteReply,
    /// 0 on success, else an `ErrorCode`.
    pub error: u16,
}

/// The answer to a [`QuoteBatch`], one result per request, in order.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct QuoteBatchReply {
    /// The results.
    pub results: Vec<QuoteResult>,
}

/// Event kinds on the wire (`WireEvent::kind`).
pub mod event_kind {
    /// A driver is available (heartbeat).
    pub const DRIVER_AVAILABLE: u8 = 1;
    /// A driver started a trip.
    pub const DRIVER_BUSY: u8 = 2;
    /// A driver went offline.
    pub const DRIVER_OFFLINE: u8 = 3;
    /// A rider signalled demand.
    pub const RIDER_DEMAND: u8 = 4;
    /// A rider requested a trip.
    pub const TRIP_REQUESTED: u8 = 5;
    /// A driver accepted a trip.
    pub const TRIP_ACCEPTED: u8 = 6;
}

/// One event. `id` makes resends idempotent within the dedupe window.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireEvent {
    /// Sender-chosen unique id.
    pub id: u64,
    /// H3 cell the event happens in.
    pub zone: u64,
    /// Driver id for driver events, else 0.
    pub driver: u64,
    /// One of [`event_kind`].
    pub kind: u8,
}

/// Events to apply; answered by one [`EventBatchReply`].
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EventBatch {
    /// The events, at most `batch_len_max`.
    pub events: Vec<WireEvent>,
}

/// Events from an idempotent producer; answered by one [`EventBatchReply`]. Each event's
/// `id` is its sequence among this producer's events for its zone, from 1: the zone applies
/// each sequence once (a resend is `duplicate`), accepts sequences out of order by less than
/// 128, and remembers per producer only its highest sequence and that window, so there is
/// no dedupe window to fill. A producer keeps its `producer` id across restarts and raises
/// `epoch` at each start; events of an older epoch are refused `producer_fenced`.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProducerBatch {
    /// The producer's id (not 0).
    pub producer: u64,
    /// The producer's epoch.
    pub epoch: u32,
    /// The events, at most `batch_len_max`; `id` is the sequence per zone.
    pub events: Vec<WireEvent>,
}

/// Per-event outcomes on the wire (`EventBatchReply::outcomes`).
pub mod outcome {
    /// Applied.
    pub const APPLIED: u8 = 0;
    /// Already applied within the dedupe window; nothing changed.
    pub const DUPLICATE: u8 = 1;
    /// Rejected: the zone is not a valid H3 cell at the served resolution.
    pub const INVALID_ZONE: u8 = 2;
    /// Rejected: the node holds its maximum number of zones.
    pub const ZONE_LIMIT: u8 = 3;
    /// Rejected: the zone tracks its maximum number of drivers.
    pub const DRIVERS_FULL: u8 = 4;
    /// Rejected: the zone's dedupe window is full; retry later.
    pub const DEDUPE_FULL: u8 = 5;
    /// Rejected: the zone's shard is overloaded; retry with backoff.
    pub const OVERLOADED: u8 = 6;
    /// Rejected: the node is stopping.
    pub const STOPPED: u8 = 7;
    /// Rejected: unknown event kind.
    pub const UNKNOWN_KIND: u8 = 8;
    /// Not applied: the zone's owner is not serving it right now (ownership is moving, or
    /// the owner could not be reached); resend it (ids make resending safe).
    pub const NOT_SERVING: u8 = 9;
    /// Rejected: the batch's producer epoch is older than one the zone has seen (the
    /// producer restarted since); do not resend.
    pub const PRODUCER_FENCED: u8 = 10;
    /// Rejected: the sequence is 128 or more behind the producer's highest in the zone, so
    /// the zone cannot tell a resend from a first delivery; do not resend.
    pub const SEQUENCE_TOO_OLD: u8 = 11;
    /// Rejected: the zone remembers its maximum number of producers; retry later.
    pub const PRODUCERS_FULL: u8 = 12;
    /// Rejected: the sender's credential holds its share of the zone's dedupe window,
    /// drivers or producers (`zone_share_per_credential_percent`); other credentials still
    /// have room. Retry later, after some of its entries left the zone.
    pub const SHARE_FULL: u8 = 13;

    /// Stable snake_case names (CLI output, reports), indexed by code, then `other` for a
    /// code this version does not know.
    pub const NAMES: [&str; 15] = [
        "applied",
        "duplicate",
        "invalid_zone",
        "zone_limit",
        "drivers_full",
        "dedupe_full",
        "overloaded",
        "stopped",
        "unknown_kind",
        "not_serving",
        "producer_fenced",
        "sequence_too_old",
        "producers_full",
        "share_full",
        "other",
    ];

    /// How many counting slots outcomes have: one per known code, then `other`. Arrays
    /// counted by outcome are sized by it and indexed by [`slot`].
    pub const SLOTS: usize = NAMES.len();

    /// The index of a code in [`NAMES`]: unknown codes share the last, `other`.
    pub fn slot(code: u8) -> usize {
        usize::from(code).min(NAMES.len() - 1)
    }
}

/// One outcome per event of an [`EventBatch`], in order (see [`outcome`]).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EventBatchReply {
    /// The outcomes.
    pub outcomes: Vec<u8>,
}

/// A quote token to verify or explain.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenRequest {
    /// The token as returned in [`QuoteReply::token`].
    pub token: [u8; TOKEN_LEN],
}

/// A verified token's contents.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenInfo {
    /// Unique per node.
    pub quote_id: u64,
    /// Pickup zone.
    pub zone: u64,
    /// The fare, minor units.
    pub amount_minor: u64,
    /// The snapshot used.
    pub snapshot_version: u64,
    /// Issued at, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Honoured until, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// Multiplier, thousandths.
    pub multiplier_milli: u32,
    /// Fare table version.
    pub fare_version: u32,
    /// Surge policy version.
    pub policy_version: u32,
    /// Trip distance, m.
    pub distance_m: u32,
    /// Trip duration, s.
    pub duration_s: u32,
    /// Available drivers behind the price.
    pub supply: u32,
    /// Demand in the window.
    pub demand: u32,
    /// Quotes in the window.
    pub quotes: u32,
    /// Neighbours' mean multiplier, thousandths (0: none).
    pub neighbour_mean_milli: u32,
    /// Policy target before smoothing, thousandths.
    pub target_milli: u32,
    /// Confidence, per mille.
    pub confidence_permille: u16,
    /// The signing key's id.
    pub key_id: u16,
    /// Currency, ASCII.
    pub currency: [u8; 3],
}

/// A fare table on the wire.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireFare {
    /// Version.
    pub version: u32,
    /// Flag fall, minor units.
    pub base_minor: u32,
    /// Per km, minor units.
    pub per_km_minor: u32,
    /// Per minute, minor units.
    pub per_min_minor: u32,
    /// Minimum before surge, minor units.
    pub minimum_minor: u32,
    /// Highest multiplier, thousandths.
    pub surge_cap_milli: u32,
    /// Currency, ASCII.
    pub currency: [u8; 3],
}

impl WireFare {
    /// All zeroes: the `fare` of an [`ExplainReply`] whose fare table is no longer known.
    pub const ZERO: Self = Self {
        version: 0,
        base_minor: 0,
        per_km_minor: 0,
        per_min_minor: 0,
        minimum_minor: 0,
        surge_cap_milli: 0,
        currency: [0; 3],
    };
}

/// Why a quote's price is what it is.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ExplainReply {
    /// The verified token.
    pub token: TokenInfo,
    /// The fare table the quote used (valid when `fare_known` is 1).
    pub fare: WireFare,
    /// Demand/supply ratio under the quote's policy (valid when `policy_known` is 1).
    pub ratio: f64,
    /// The amount recomputed from the fare table (valid when `fare_known` is 1).
    pub recomputed_minor: u64,
    /// The whole explanation as text (UTF-8), for people.
    pub text: Vec<u8>,
    /// 1 when the node still holds the fare table version the token names.
    pub fare_known: u8,
    /// 1 when the token's policy version is the node's current one.
    pub policy_known: u8,
}

/// A request about one zone.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneRequest {
    /// The zone (H3 cell).
    pub zone: u64,
}

/// A request without parameters.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct Empty {
    /// Send 0; ignored.
    pub reserved: u32,
}

/// A zone's hot state, as its owner holds it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZoneStateReply {
    /// The zone.
    pub zone: u64,
    /// Latest snapshot version.
    pub version: u64,
    /// Engine time of the last applied event, ms since the Unix epoch.
    pub last_event_ms: u64,
    /// Distinct available drivers.
    pub drivers: u32,
    /// Demand in the window.
    pub demand: u32,
    /// Quotes in the window.
    pub quotes: u32,
    /// Accepted trips in the window.
    pub accepted: u32,
    /// Event ids remembered for dedupe.
    pub dedupe_ids: u32,
    /// Published multiplier, thousandths.
    pub multiplier_milli: u32,
    /// The fare table in force.
    pub fare: WireFare,
}

/// A new fare table for a zone.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct FareSet {
    /// The zone.
    pub zone: u64,
    /// The table; its version must be newer than the zone's current one.
    pub fare: WireFare,
}

/// The surge policy on the wire (meanings in `configs/engine.toml` and `engine::policy`).
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct WirePolicy {
    /// How far above balance the demand/supply ratio still prices 1.0x.
    pub balance_dead_band: f64,
    /// Multiplier added per unit of ratio beyond the dead band.
    pub sensitivity: f64,
    /// How much one (decayed) quote counts as demand.
    pub quote_demand_weight: f64,
    /// Weight of the neighbours' distance-weighted mean multiplier.
    pub neighbour_weight: f64,
    /// Own demand a zone needs before neighbours may lift its price.
    pub neighbour_demand_min: f64,
    /// Version; a change must increase it.
    pub version: u32,
    /// Supply counts as at least this many drivers.
    pub supply_floor: u32,
    /// Highest multiplier, thousandths.
    pub cap_milli: u32,
    /// Half-life of the smoothing, seconds.
    pub smoothing_half_life_s: u32,
    /// Least time between two changes of a published multiplier, seconds.
    pub hold_s: u32,
    /// Largest change per minute, thousandths.
    pub change_per_min_max_milli: u32,
    /// Published multipliers are 1.0x plus whole steps of this, thousandths.
    pub price_step_milli: u32,
    /// Observations for full confidence.
    pub confidence_full_at: u32,
}

/// A change was applied; its version.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct VersionReply {
    /// The version now in force.
    pub version: u32,
}

/// A node's status.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatusReply {
    /// Milliseconds since the node started.
    pub uptime_ms: u64,
    /// Requests shed so far, premium tier.
    pub shed_premium: u64,
    /// Requests shed so far, shared tier.
    pub shed_shared: u64,
    /// Zones live on the node.
    pub zones: u32,
    /// Requests in flight now.
    pub in_flight: u32,
    /// Surge policy version in force.
    pub policy_version: u32,
    /// The node.
    pub node_id: u16,
}

/// A cluster member as a node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct WireMember {
    /// Increases with each restart and rejoin.
    pub generation: u64,
    /// Ownership weight.
    pub weight: u32,
    /// Node id.
    pub node_id: u16,
    /// Where clients reach it (UTF-8 `ip:port`).
    pub client_addr: Vec<u8>,
    /// Its peer endpoint (UTF-8 `ip:port`).
    pub peer_addr: Vec<u8>,
}

/// Zones per owner, by the answering node's view.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerCount {
    /// Zones known to the answering node that its view gives to `node_id`.
    pub zones: u32,
    /// The owner.
    pub node_id: u16,
}

/// A zone's current price, for the hottest-zones list.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotZone {
    /// The zone.
    pub zone: u64,
    /// Its multiplier, thousandths.
    pub multiplier_milli: u32,
    /// Its owner by the answering node's view.
    pub owner: u16,
}

/// The cluster as one node sees it.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ClusterReply {
    /// Membership changes this node has applied (local; differs between nodes).
    pub view_epoch: u64,
    /// Hash of the member set: equal on nodes that agree on the membership.
    pub view_checksum: u64,
    /// Live members (this node included), by id.
    pub members: Vec<WireMember>,
    /// Zones known here (owned or replicated), per owner in this node's view.
    pub owners: Vec<OwnerCount>,
    /// The ten zones with the highest multiplier known here.
    pub hottest: Vec<HotZone>,
    /// Zones this node holds and serves now.
    pub zones_owned: u32,
    /// Zone groups whose lease this node holds now.
    pub groups_served: u32,
    /// The answering node.
    pub node_id: u16,
    /// Zones are owned in groups: their parent cell at this H3 resolution.
    pub group_resolution: u8,
    /// 1 when the node's last Redis operation succeeded.
    pub redis_up: u8,
    /// 1 when the node runs in a cluster; 0 for a standalone node (the rest is then its
    /// own view of itself).
    pub clustered: u8,
}

/// Drain a node: it hands its zones over and leaves the cluster.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainRequest {
    /// The node to drain (any node forwards the request to it).
    pub node_id: u16,
}

/// A node was drained.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct DrainReply {
    /// Zone groups it handed over.
    pub groups_handed_over: u32,
    /// Zone groups it still held when the drain timed out (0 on success).
    pub groups_left: u32,
    /// The drained node.
    pub node_id: u16,
}

/// One published snapshot, as the zone history shows it.
#[derive(Archive, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireSnapshot {
    /// Snapshot version.
    pub version: u64,
    /// When it was computed, ms since the epoch.
    pub computed_at_ms: u64,
    /// Multiplier, thousandths.
    pub multiplier_milli: u32,
    /// The policy's target before smoothing, thousandths.
    pub target_milli: u32,
    /// Available drivers.
    pub supply: u32,
    /// Demand in the window.
    pub demand: u32,
    /// Quotes in the window.
    pub quotes: u32,
    /// Fare table version in force.
    pub fare_version: u32,
    /// Policy version that priced it.
    pub policy_version: u32,
    /// Confidence, per mille.
    pub confidence_permille: u16,
}

/// A zone's recent snapshots, newest first (at most 32, from the last
/// `snapshot_history_max` the node published).
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ZoneHistoryReply {
    /// The zone.
    pub zone: u64,
    /// Newest first.
    pub snapshots: Vec<WireSnapshot>,
}

/// A failed request.
#[derive(Archive, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ErrorReply {
    /// An `ErrorCode`.
    pub code: u16,
    /// What went wrong, for people (UTF-8).
    pub message: Vec<u8>,
}

/// Any message, decoded and validated.
#[derive(Clone, Debug, PartialEq)]
#[allow(missing_docs)]
pub enum Message {
    Hello(Hello),
    Quote(QuoteRequest),
    QuoteBatch(QuoteBatch),
    EventBatch(EventBatch),
    Verify(TokenRequest),
    Explain(TokenRequest),
    ZoneState(ZoneRequest),
    FareGet(ZoneRequest),
    FareSet(FareSet),
    PolicyGet(Empty),
    PolicySet(WirePolicy),
    Status(Empty),
    Welcome(Welcome),
    QuoteOk(QuoteReply),
    QuoteBatchOk(QuoteBatchReply),
    EventBatchOk(EventBatchReply),
    VerifyOk(TokenInfo),
    ExplainOk(ExplainReply),
    ZoneStateOk(ZoneStateReply),
    FareGetOk(WireFare),
    FareSetOk(VersionReply),
    PolicyGetOk(WirePolicy),
    PolicySetOk(VersionReply),
    StatusOk(StatusReply),
    Cluster(Empty),
    Drain(DrainRequest),
    ClusterOk(ClusterReply),
    DrainOk(DrainReply),
    ZoneHistory(ZoneRequest),
    ZoneHistoryOk(ZoneHistoryReply),
    ProducerBatch(ProducerBatch),
    ProducerBatchOk(EventBatchReply),
    Error(ErrorReply),
}

impl Message {
    /// The kind byte this message travels under.
    pub fn kind(&self) -> Kind {
        match self {
            Self::Hello(_) => Kind::Hello,
            Self::Quote(_) => Kind::Quote,
            Self::QuoteBatch(_) => Kind::QuoteBatch,
            Self::EventBatch(_) => Kind::EventBatch,
            Self::Verify(_) => Kind::Verify,
            Self::Explain(_) => Kind::Explain,
            Self::ZoneState(_) => Kind::ZoneState,
            Self::FareGet(_) => Kind::FareGet,
            Self::FareSet(_) => Kind::FareSet,
            Self::PolicyGet(_) => Kind::PolicyGet,
            Self::PolicySet(_) => Kind::PolicySet,
            Self::Status(_) => Kind::Status,
            Self::Welcome(_) => Kind::Welcome,
            Self::QuoteOk(_) => Kind::QuoteOk,
            Self::QuoteBatchOk(_) => Kind::QuoteBatchOk,
            Self::EventBatchOk(_) => Kind::EventBatchOk,
            Self::VerifyOk(_) => Kind::VerifyOk,
            Self::ExplainOk(_) => Kind::ExplainOk,
            Self::ZoneStateOk(_) => Kind::ZoneStateOk,
            Self::FareGetOk(_) => Kind::FareGetOk,
            Self::FareSetOk(_) => Kind::FareSetOk,
            Self::PolicyGetOk(_) => Kind::PolicyGetOk,
            Self::PolicySetOk(_) => Kind::PolicySetOk,
            Self::StatusOk(_) => Kind::StatusOk,
            Self::Cluster(_) => Kind::Cluster,
            Self::Drain(_) => Kind::Drain,
            Self::ClusterOk(_) => Kind::ClusterOk,
            Self::DrainOk(_) => Kind::DrainOk,
            Self::ZoneHistory(_) => Kind::ZoneHistory,
            Self::ZoneHistoryOk(_) => Kind::ZoneHistoryOk,
            Self::ProducerBatch(_) => Kind::ProducerBatch,
            Self::ProducerBatchOk(_) => Kind::ProducerBatchOk,
            Self::Error(_) => Kind::Error,
        }
    }
}
