//! Quotes: the fare of a trip from a zone's latest snapshot, and a signed token that any
//! holder of the cluster key can verify until it expires.
//!
//! # The quote path
//!
//! [`Quoter::quote`] looks the zone up in the [`SnapshotTable`] (lock-free), computes the
//! fare with the integer formula of [`crate::fare`], and writes a signed token into a
//! caller-provided `[u8; TOKEN_LEN]`. It takes no lock, sends no message and allocates
//! nothing (a test under a counting allocator holds it to that).
//!
//! # Token layout (`TOKEN_LEN` = 112 bytes, little-endian)
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 1 | format, `1` |
//! | 1 | 3 | currency, ASCII |
//! | 4 | 4 | multiplier, thousandths |
//! | 8 | 8 | zone (H3 index) |
//! | 16 | 8 | quote id (node id in the top 16 bits) |
//! | 24 | 8 | amount, minor units |
//! | 32 | 8 | snapshot version |
//! | 40 | 8 | issued at, ms since the Unix epoch |
//! | 48 | 8 | expires at, ms since the Unix epoch |
//! | 56 | 4 | fare table version |
//! | 60 | 4 | surge policy version |
//! | 64 | 4 | trip distance, m |
//! | 68 | 4 | trip duration, s |
//! | 72 | 4 | supply (available drivers) |
//! | 76 | 4 | demand in window |
//! | 80 | 4 | quotes in window |
//! | 84 | 4 | neighbours' mean multiplier, thousandths (0: none) |
//! | 88 | 4 | policy target before smoothing, thousandths |
//! | 92 | 2 | confidence, per mille |
//! | 94 | 2 | id of the key that signed |
//! | 96 | 16 | HMAC-SHA256(key, bytes 0..96), first 16 bytes |
//!
//! The token carries every input of the price, signed, so `explain` is auditable from the
//! token alone plus the fare table and policy of the versions it names.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::fare::{fare_minor, Currency, FareError, Trip};
use crate::mac::HmacKey;
use crate::snapshot::SnapshotTable;
use crate::zone::ZoneId;

/// Length of a quote token in bytes.
pub const TOKEN_LEN: usize = 112;
const PAYLOAD_LEN: usize = 96;
const MAC_LEN: usize = 16;
const FORMAT: u8 = 1;
/// Shortest accepted signing secret.
pub const KEY_LEN_MIN: usize = 16;

/// A cluster signing key with its id (ids let keys rotate: verifiers hold old and new).
#[derive(Clone)]
pub struct QuoteKey {
    id: u16,
    key: HmacKey,
}

impl std::fmt::Debug for QuoteKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuoteKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Problems with a signing key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Secrets shorter than [`KEY_LEN_MIN`] bytes are refused.
    #[error("quote signing secret is {0} bytes; at least {KEY_LEN_MIN} are required")]
    TooShort(usize),
    /// The hex text does not decode (odd length, or a character outside `0-9a-fA-F`).
    #[error("quote signing secret is not valid hex (expected an even number of 0-9a-f digits)")]
    NotHex,
    /// A key ring holds no key.
    #[error("no quote signing key configured")]
    NoKeys,
    /// Two keys of a ring share an id (a token names its key by id).
    #[error("quote signing key id {0} appears twice")]
    DuplicateId(u16),
    /// The ring's signing key id names no key of the ring.
    #[error("signing key id {0} is not among the configured keys")]
    UnknownSigningKey(u16),
}

impl QuoteKey {
    /// A key from a secret of at least [`KEY_LEN_MIN`] bytes.
    pub fn new(id: u16, secret: &[u8]) -> Result<Self, KeyError> {
        if secret.len() < KEY_LEN_MIN {
            return Err(KeyError::TooShort(secret.len()));
        }
        Ok(Self {
            id,
            key: HmacKey::new(secret),
        })
    }

    /// A key from a hex-encoded secret (as found in config files).
    pub fn from_hex(id: u16, hex: &str) -> Result<Self, KeyError> {
        let hex = hex.trim().as_bytes();
        // Checked byte by byte before decoding: a multi-byte character must be an error, not
        // a slice across a character boundary.
        if hex.len() % 2 != 0 || !hex.iter().all(u8::is_ascii_hexdigit) {
            return Err(KeyError::NotHex);
        }
        let nibble = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
        let bytes: Option<Vec<u8>> = hex
            .chunks_exact(2)
            .map(|p| Some(nibble(p[0])? << 4 | nibble(p[1])?))
            .collect();
        Self::new(id, &bytes.ok_or(KeyError::NotHex)?)
    }

    /// The key's id, written into every token it signs.
    pub fn id(&self) -> u16 {
        self.id
    }

    fn mac(&self, payload: &[u8]) -> [u8; MAC_LEN] {
        let tag = self.key.mac(payload);
        let mut out = [0; MAC_LEN];
        out.copy_from_slice(&tag[..MAC_LEN]);
        out
    }
}

/// The quote keys a node holds: one signs, every one verifies. Rotating the cluster key is
/// adding a key (first for verifying only, then signing) and, once every token it signed has
/// expired, removing the old one (SECURITY.md, "Rotating the cluster key").
#[derive(Clone, Debug)]
pub struct QuoteKeys {
    keys: Vec<QuoteKey>,
    signing: usize,
}

impl QuoteKeys {
    /// A ring of `keys` (distinct ids) signing with `signing_id`, or without it with the
    /// highest id (the newest, when ids grow with each rotation).
    pub fn new(keys: Vec<QuoteKey>, signing_id: Option<u16>) -> Result<Self, KeyError> {
        let mut seen = std::collections::BTreeSet::new();
        for k in &keys {
            if !seen.insert(k.id) {
                return Err(KeyError::DuplicateId(k.id));
            }
        }
        let id = match signing_id {
            Some(id) => id,
            None => *seen.last().ok_or(KeyError::NoKeys)?,
        };
        let signing = keys
            .iter()
            .position(|k| k.id == id)
            .ok_or(KeyError::UnknownSigningKey(id))?;
        Ok(Self { keys, signing })
    }

    /// The key new tokens are signed with.
    pub fn signing(&self) -> &QuoteKey {
        &self.keys[self.signing]
    }

    /// Every key a token may be signed with.
    pub fn all(&self) -> &[QuoteKey] {
        &self.keys
    }
}

impl From<QuoteKey> for QuoteKeys {
    fn from(key: QuoteKey) -> Self {
        Self {
            keys: vec![key],
            signing: 0,
        }
    }
}

/// Everything a quote token says, verified.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QuoteToken {
    /// Unique per node (node id in the top 16 bits).
    pub quote_id: u64,
    /// The zone of the pickup.
    pub zone: ZoneId,
    /// The price, minor units.
    pub amount_minor: u64,
    /// Its currency.
    pub currency: Currency,
    /// The multiplier applied, thousandths.
    pub multiplier_milli: u32,
    /// The snapshot the price came from.
    pub snapshot_version: u64,
    /// When it was issued, ms since the Unix epoch.
    pub issued_at_ms: u64,
    /// Honoured until this instant, ms since the Unix epoch.
    pub expires_at_ms: u64,
    /// The fare table used.
    pub fare_version: u32,
    /// The surge policy used.
    pub policy_version: u32,
    /// The trip priced.
    pub trip: Trip,
    /// Available drivers behind the multiplier.
    pub supply: u32,
    /// Demand in the window behind the multiplier.
    pub demand: u32,
    /// Quotes in the window behind the multiplier.
    pub quotes: u32,
    /// Neighbours' mean multiplier, thousandths (0: no neighbour had a price).
    pub neighbour_mean_milli: u32,
    /// The policy's target before smoothing, thousandths.
    pub target_milli: u32,
    /// Confidence, per mille.
    pub confidence_permille: u16,
    /// The key that signed.
    pub key_id: u16,
}

/// Why a token is not honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Tokens are exactly [`TOKEN_LEN`] bytes.
    #[error("quote token is {0} bytes; expected {TOKEN_LEN}")]
    WrongLength(usize),
    /// A format this build does not know.
    #[error("quote token format {0} is not supported")]
    UnknownFormat(u8),
    /// Signed by a key this verifier does not hold.
    #[error("quote token was signed by unknown key id {0}")]
    UnknownKey(u16),
    /// The signature does not match: the token was altered or forged.
    #[error("quote token signature does not match (altered or forged)")]
    BadSignature,
    /// Past its expiry.
    #[error("quote token expired at {expired_at_ms} ms (now {now_ms} ms)")]
    Expired {
        /// Expiry in the token.
        expired_at_ms: u64,
        /// The verifier's time.
        now_ms: u64,
    },
    /// Signed, but a field is out of range (a bug in the signer).
    #[error("quote token field {0} is invalid")]
    Malformed(&'static str),
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}
fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}
fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

/// Constant-time comparison, so verification time does not leak how much of a MAC matched.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl QuoteToken {
    /// Writes the token, signed with `key`, into `out`. Allocation-free.
    pub fn sign_into(&self, key: &QuoteKey, out: &mut [u8; TOKEN_LEN]) {
        out[0] = FORMAT;
        out[1..4].copy_from_slice(&self.currency.bytes());
        put_u32(out, 4, self.multiplier_milli);
        put_u64(out, 8, self.zone.raw());
        put_u64(out, 16, self.quote_id);
        put_u64(out, 24, self.amount_minor);
        put_u64(out, 32, self.snapshot_version);
        put_u64(out, 40, self.issued_at_ms);
        put_u64(out, 48, self.expires_at_ms);
        put_u32(out, 56, self.fare_version);
        put_u32(out, 60, self.policy_version);
        put_u32(out, 64, self.trip.distance_m);
        put_u32(out, 68, self.trip.duration_s);
        put_u32(out, 72, self.supply);
        put_u32(out, 76, self.demand);
        put_u32(out, 80, self.quotes);
        put_u32(out, 84, self.neighbour_mean_milli);
        put_u32(out, 88, self.target_milli);
        put_u16(out, 92, self.confidence_permille);
        put_u16(out, 94, key.id);
        let mac = key.mac(&out[..PAYLOAD_LEN]);
        out[PAYLOAD_LEN..].copy_from_slice(&mac);
    }

    /// Verifies a token's signature with whichever of `keys` signed it, and its expiry
    /// against `now_ms`. Any altered byte fails.
    pub fn verify(bytes: &[u8], keys: &[QuoteKey], now_ms: u64) -> Result<Self, TokenError> {
        if bytes.len() != TOKEN_LEN {
            return Err(TokenError::WrongLength(bytes.len()));
        }
        if bytes[0] != FORMAT {
            return Err(TokenError::UnknownFormat(bytes[0]));
        }
        let key_id = get_u16(bytes, 94);
        let key = keys
            .iter()
            .find(|k| k.id == key_id)
            .ok_or(TokenError::UnknownKey(key_id))?;
        if !ct_eq(&key.mac(&bytes[..PAYLOAD_LEN]), &bytes[PAYLOAD_LEN..]) {
            return Err(TokenError::BadSignature);
        }
        let mut cur = [0; 3];
        cur.copy_from_slice(&bytes[1..4]);
        let t = Self {
            currency: Currency::from_bytes(cur).map_err(|_| TokenError::Malformed("currency"))?,
            multiplier_milli: get_u32(bytes, 4),
            zone: ZoneId::new(get_u64(bytes, 8)).map_err(|_| TokenError::Malformed("zone"))?,
            quote_id: get_u64(bytes, 16),
            amount_minor: get_u64(bytes, 24),
            snapshot_version: get_u64(bytes, 32),
            issued_at_ms: get_u64(bytes, 40),
            expires_at_ms: get_u64(bytes, 48),
            fare_version: get_u32(bytes, 56),
            policy_version: get_u32(bytes, 60),
            trip: Trip {
                distance_m: get_u32(bytes, 64),
                duration_s: get_u32(bytes, 68),
            },
            supply: get_u32(bytes, 72),
            demand: get_u32(bytes, 76),
            quotes: get_u32(bytes, 80),
            neighbour_mean_milli: get_u32(bytes, 84),
            target_milli: get_u32(bytes, 88),
            confidence_permille: get_u16(bytes, 92),
            key_id,
        };
        if now_ms >= t.expires_at_ms {
            return Err(TokenError::Expired {
                expired_at_ms: t.expires_at_ms,
                now_ms,
            });
        }
        Ok(t)
    }
}

/// Why a quote could not be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    /// The zone has no live price on this node (never seen, or passivated).
    #[error("zone {0} has no price on this node")]
    UnknownZone(ZoneId),
    /// The trip is outside the accepted limits.
    #[error(transparent)]
    InvalidTrip(#[from] FareError),
}

/// A price without a token (the unsigned fast path).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    /// The fare, minor units.
    pub amount_minor: u64,
    /// Its currency.
    pub currency: Currency,
    /// The multiplier applied, thousandths.
    pub multiplier_milli: u32,
    /// The snapshot used.
    pub snapshot_version: u64,
    /// When that snapshot was computed.
    pub computed_at_ms: u64,
}

/// Issues quotes from the snapshot table. Shared by every thread that answers clients.
#[derive(Debug)]
pub struct Quoter {
    table: Arc<SnapshotTable>,
    keys: QuoteKeys,
    /// The next block of quote ids to hand to a thread (see `next_quote_id`).
    next_id: AtomicU64,
    /// Distinguishes quoters in the per-thread id cache.
    instance: u64,
    ttl_ms: u64,
}

/// Bits of a quote id below the node id.
const QUOTE_SEQ_BITS: u32 = 48;
/// Quote ids a thread takes from the shared counter at once.
const QUOTE_ID_BLOCK: u64 = 1024;

static QUOTER_INSTANCES: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's block of quote ids: (quoter instance, next id, end of block).
    static QUOTE_IDS: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

impl Quoter {
    /// A quoter for `node_id`. `first_seq` seeds the per-node quote counter: pass something
    /// that differs across restarts (the shell passes its start time), so ids stay unique.
    pub fn new(
        table: Arc<SnapshotTable>,
        keys: impl Into<QuoteKeys>,
        node_id: u16,
        first_seq: u64,
        ttl_ms: u64,
    ) -> Self {
        let seq = first_seq & ((1 << QUOTE_SEQ_BITS) - 1);
        Self {
            table,
            keys: keys.into(),
            next_id: AtomicU64::new(u64::from(node_id) << QUOTE_SEQ_BITS | seq),
            instance: QUOTER_INSTANCES.fetch_add(1, Ordering::Relaxed),
            ttl_ms,
        }
    }

    /// A node-unique quote id. Threads take ids from the shared counter in blocks, so the
    /// quote path does not pay a locked instruction (a full memory barrier) per quote.
    #[inline]
    fn next_quote_id(&self) -> u64 {
        QUOTE_IDS.with(|c| {
            let (instance, next, end) = c.get();
            if instance == self.instance && next < end {
                c.set((instance, next + 1, end));
                return next;
            }
            let start = self.next_id.fetch_add(QUOTE_ID_BLOCK, Ordering::Relaxed);
            c.set((self.instance, start + 1, start + QUOTE_ID_BLOCK));
            start
        })
    }

    /// The signing key (verifiers need it, or its twin, too).
    pub fn key(&self) -> &QuoteKey {
        self.keys.signing()
    }

    /// Every key this quoter verifies with (the signing key among them).
    pub fn keys(&self) -> &QuoteKeys {
        &self.keys
    }

    /// The table quotes are read from.
    pub fn table(&self) -> &Arc<SnapshotTable> {
        &self.table
    }

    /// How long a quote is honoured.
    pub fn ttl_ms(&self) -> u64 {
        self.ttl_ms
    }

    /// The price of a trip, unsigned and uncounted. Lock-free, allocation-free.
    #[inline]
    pub fn price(&self, zone: ZoneId, trip: Trip) -> Result<Price, QuoteError> {
        let trip = trip.validate()?;
        let slot = self
            .table
            .slot_of(zone)
            .ok_or(QuoteError::UnknownZone(zone))?;
        let snap = self
            .table
            .load_price(slot)
            .ok_or(QuoteError::UnknownZone(zone))?;
        Ok(Price {
            amount_minor: fare_minor(&snap.fare, trip, snap.multiplier_milli),
            currency: snap.fare.currency,
            multiplier_milli: snap.multiplier_milli,
            snapshot_version: snap.version,
            computed_at_ms: snap.computed_at_ms,
        })
    }

    /// A signed quote, written into `out`; counts as demand for the zone.
    /// Lock-free, allocation-free.
    pub fn quote(
        &self,
        zone: ZoneId,
        trip: Trip,
        now_ms: u64,
        out: &mut [u8; TOKEN_LEN],
    ) -> Result<QuoteToken, QuoteError> {
        self.quote_with_age(zone, trip, now_ms, out)
            .map(|(token, _)| token)
    }

    /// [`quote`](Self::quote), also returning how long ago (at `now_ms`) the zone's owner last
    /// confirmed the snapshot current: one table lookup serves both.
    pub fn quote_with_age(
        &self,
        zone: ZoneId,
        trip: Trip,
        now_ms: u64,
        out: &mut [u8; TOKEN_LEN],
    ) -> Result<(QuoteToken, u64), QuoteError> {
        let trip = trip.validate()?;
        let slot = self
            .table
            .slot_of(zone)
            .ok_or(QuoteError::UnknownZone(zone))?;
        let snap = self.table.load(slot).ok_or(QuoteError::UnknownZone(zone))?;
        debug_assert!(snap.is_intact() && snap.zone == zone);
        let token = QuoteToken {
            quote_id: self.next_quote_id(),
            zone,
            amount_minor: fare_minor(&snap.fare, trip, snap.multiplier_milli),
            currency: snap.fare.currency,
            multiplier_milli: snap.multiplier_milli,
            snapshot_version: snap.version,
            issued_at_ms: now_ms,
            expires_at_ms: now_ms.saturating_add(self.ttl_ms),
            fare_version: snap.fare.version,
            policy_version: snap.policy_version,
            trip,
            supply: snap.supply,
            demand: snap.demand,
            quotes: snap.quotes,
            neighbour_mean_milli: snap.neighbour_mean_milli,
            target_milli: snap.target_milli,
            confidence_permille: snap.confidence_permille,
            key_id: self.keys.signing().id,
        };
        token.sign_into(self.keys.signing(), out);
        self.table.note_quote(slot);
        let age_ms = now_ms.saturating_sub(self.table.fresh_at_ms(slot));
        Ok((token, age_ms))
    }

    /// Verifies a token with whichever of this quoter's keys signed it.
    pub fn verify(&self, bytes: &[u8], now_ms: u64) -> Result<QuoteToken, TokenError> {
        QuoteToken::verify(bytes, self.keys.all(), now_ms)
    }
}
