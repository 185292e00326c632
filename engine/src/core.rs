//! One zone's state machine: events in, price snapshots out. No I/O, no clock: every
//! method takes `now_ms`.

use serde::Deserialize;

use crate::event::{Event, EventKind, EventOutcome, Origin, Producer, RejectReason};
use crate::expiring::ExpiringSet;
use crate::fare::{FareTable, MILLI};
use crate::policy::{PolicyInput, PolicyState, SurgePolicy};
use crate::producer::{ProducerState, Producers, Sequence, Verdict};
use crate::share::{share_max, Capacity, CredentialId, Holder, Holders};
use crate::snapshot::{PriceSnapshot, SnapshotFields};
use crate::window::{Counter, Rates};
use crate::zone::ZoneId;

/// Per-zone limits and windows. Defaults are documented in `configs/engine.toml`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ZoneLimits {
    /// A driver not seen (no `DriverAvailable`) for this long stops counting as supply.
    /// Default 30,000 ms.
    pub driver_ttl_ms: u64,
    /// Most distinct available drivers tracked per zone; more are rejected. Default 2,048.
    pub drivers_max: usize,
    /// Half-life of the demand, quote and accepted-trip counters, seconds: a rider session
    /// counts 1 when it starts and half as much this much later. Default 90.
    pub demand_half_life_s: u32,
    /// A rider (session id) seen again within this long is the same session and does not
    /// count as demand again. Default 600,000 ms (10 minutes).
    pub rider_session_ttl_ms: u64,
    /// Most rider sessions remembered per zone. Beyond it a new rider's events still count
    /// as demand, but the zone cannot tell that rider's later events apart, so each of them
    /// counts again (demand is over-counted, never refused). Default 4,096.
    pub riders_max: usize,
    /// An event id seen again within this long is a duplicate. Default 60,000 ms.
    pub dedupe_window_ms: u64,
    /// Most event ids remembered per zone; events beyond are rejected (`dedupe_full`) until
    /// the window slides, never applied twice. Default 8,192.
    pub dedupe_ids_max: usize,
    /// Most producers (senders numbering their events, `crate::producer`) remembered per
    /// zone; a new one beyond it is refused (`producers_full`) until one expires, never
    /// forgotten while live. Default 64.
    pub producers_max: usize,
    /// A producer that sent nothing to a zone for this long is forgotten there; a resend
    /// after that could be applied twice, so it bounds how long a producer may retry.
    /// Default 900,000 ms (15 minutes).
    pub producer_idle_ms: u64,
    /// Previous fare tables kept per zone so `explain` can show the table a quote used.
    /// Default 4.
    pub fare_history_max: usize,
    /// The most of each of a zone's dedupe log, drivers and producers one credential may
    /// hold, percent of its bound (at least one entry; `crate::share`). Set by the node from
    /// its `[limits] zone_share_per_credential_percent`, not in the engine's file: credentials
    /// are the node's. Default 25.
    #[serde(skip, default = "credential_share_percent_default")]
    pub credential_share_percent: u8,
}

fn credential_share_percent_default() -> u8 {
    25
}

impl Default for ZoneLimits {
    fn default() -> Self {
        Self {
            driver_ttl_ms: 30_000,
            drivers_max: 2_048,
            demand_half_life_s: 90,
            rider_session_ttl_ms: 600_000,
            riders_max: 4_096,
            dedupe_window_ms: 60_000,
            dedupe_ids_max: 8_192,
            producers_max: 64,
            producer_idle_ms: 900_000,
            fare_history_max: 4,
            credential_share_percent: credential_share_percent_default(),
        }
    }
}

impl ZoneLimits {
    fn half_life_ms(&self) -> u64 {
        (u64::from(self.demand_half_life_s) * 1000).max(1)
    }

    /// The most entries of a capacity one credential may hold.
    fn share(&self, cap: Capacity) -> usize {
        let max = match cap {
            Capacity::DedupeIds => self.dedupe_ids_max,
            Capacity::Drivers => self.drivers_max,
            Capacity::Producers => self.producers_max,
        };
        share_max(max, self.credential_share_percent)
    }
}

/// A fare-table change refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FareChangeError {
    /// Versions must increase so that quotes name tables unambiguously.
    #[error("fare table version {proposed} is not newer than the current version {current}")]
    StaleVersion {
        /// The zone's current version.
        current: u32,
        /// The version offered.
        proposed: u32,
    },
    /// The table breaks an invariant.
    #[error(transparent)]
    Invalid(#[from] crate::fare::FareError),
}

/// What changed at the last tick, to decide whether a new snapshot is worth publishing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Published {
    multiplier_milli: u32,
    target_milli: u32,
    confidence_permille: u16,
    supply: u32,
    demand: u32,
    quotes: u32,
    neighbour_mean_milli: u32,
    fare_version: u32,
    policy_version: u32,
}

/// A zone's hot state and pricing state machine.
#[derive(Clone, Debug)]
pub struct ZoneCore {
    zone: ZoneId,
    fare: FareTable,
    /// Previous fare tables, oldest first: a boxed slice, exactly as long as it is (fare
    /// changes are rare; the hot state has a budget per zone).
    fare_history: Box<[FareTable]>,
    drivers: ExpiringSet,
    dedupe: ExpiringSet,
    /// Rider sessions seen within `rider_session_ttl_ms` (a rider counts once per session).
    /// Boxed and made on the first known rider: most zones of a city hear few riders, and
    /// the hot state has a budget per zone.
    riders: Option<Box<ExpiringSet>>,
    /// The producers that numbered events for this zone (boxed and made on the first, for
    /// the same budget).
    producers: Option<Box<Producers>>,
    /// Which credential holds how much of the dedupe log, drivers and producers (nothing
    /// allocated until an event with a credential; freed when nobody holds anything).
    holders: Holders,
    /// Demand, quotes and accepted trips, decaying.
    rates: Rates,
    policy: PolicyState,
    version: u64,
    last: Option<Published>,
    last_event_ms: u64,
}

/// Everything a zone's state machine holds, as plain data: what a snapshot store persists and
/// a node restores on takeover. Derived state (window totals, sweep hints, the change detector)
/// is rebuilt on import.
#[derive(Clone, Debug, PartialEq)]
pub struct ZoneExport {
    /// The zone.
    pub zone: ZoneId,
    /// Current fare table.
    pub fare: FareTable,
    /// Previous fare tables, oldest first.
    pub fare_history: Vec<FareTable>,
    /// Available drivers and when each was last seen, sorted by id.
    pub drivers: Vec<(u64, u64)>,
    /// Event ids in the dedupe window and when each was seen, sorted by id.
    pub dedupe: Vec<(u64, u64)>,
    /// Rider sessions and when each was last seen, sorted by id.
    pub riders: Vec<(u64, u64)>,
    /// The producers remembered, sorted by id.
    pub producers: Vec<ProducerState>,
    /// Engine time the decaying counters are decayed to.
    pub rates_at_ms: u64,
    /// The decaying counters: demand, quotes, accepted.
    pub rates: [f64; 3],
    /// The policy's memory.
    pub policy: PolicyState,
    /// Latest snapshot version (the next one is higher).
    pub version: u64,
    /// Engine time of the last applied event.
    pub last_event_ms: u64,
}

/// Why exported state cannot be imported (corrupt or from an incompatible configuration).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// A fare table is invalid or the history is not older than the current table.
    #[error("fare tables: {0}")]
    Fare(String),
    /// More drivers or event ids than this node's limits allow.
    #[error("{what}: {len} entries exceed the limit of {max}")]
    TooMany {
        /// Which list.
        what: &'static str,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The policy state is out of range.
    #[error("policy state out of range: {0}")]
    Policy(String),
    /// A decaying counter is negative or not a number.
    #[error("demand counters out of range: {0:?}")]
    Rates([f64; 3]),
}

/// How much of a zone's bounded capacities one credential holds ([`crate::share`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Holdings {
    /// Event ids of its in the dedupe log.
    pub dedupe_ids: usize,
    /// Available drivers it reported first.
    pub drivers: usize,
    /// Producers it brought to the zone.
    pub producers: usize,
}

/// A read-only view of a zone's hot state, for admins and tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HotState {
    /// The zone.
    pub zone: ZoneId,
    /// Distinct available drivers.
    pub drivers: usize,
    /// Recent rider sessions (decaying counter, rounded).
    pub demand: u32,
    /// Recent quotes (decaying counter, rounded).
    pub quotes: u32,
    /// Recent accepted trips (decaying counter, rounded).
    pub accepted: u32,
    /// Rider sessions remembered (seen within `rider_session_ttl_ms`).
    pub riders: usize,
    /// Event ids remembered for dedupe.
    pub dedupe_ids: usize,
    /// Producers remembered.
    pub producers: usize,
    /// Current fare table.
    pub fare: FareTable,
    /// Published multiplier, thousandths.
    pub multiplier_milli: u32,
    /// Latest snapshot version.
    pub version: u64,
    /// Engine time of the last applied event.
    pub last_event_ms: u64,
}

impl ZoneCore {
    /// A fresh zone at `now_ms` with a fare table.
    pub fn new(zone: ZoneId, fare: FareTable, now_ms: u64, _limits: &ZoneLimits) -> Self {
        Self {
            zone,
            fare,
            fare_history: Box::default(),
            drivers: ExpiringSet::default(),
            dedupe: ExpiringSet::default(),
            riders: None,
            producers: None,
            holders: Holders::default(),
            rates: Rates::new(now_ms),
            policy: PolicyState::new(now_ms),
            version: 0,
            last: None,
            last_event_ms: now_ms,
        }
    }

    /// The zone this core prices.
    pub fn zone(&self) -> ZoneId {
        self.zone
    }

    /// Applies one event without a producer: at most once per id within the dedupe window.
    ///
    /// The caller routes events to the right zone; an event for another zone is a bug.
    pub fn apply(&mut self, ev: &Event, now_ms: u64, limits: &ZoneLimits) -> EventOutcome {
        self.apply_from(None, ev, now_ms, limits)
    }

    /// Applies one event at most once: from a producer, by its sequence (`ev.id`, see
    /// [`crate::producer`]); without one, by its id within the dedupe window.
    pub fn apply_from(
        &mut self,
        producer: Option<Producer>,
        ev: &Event,
        now_ms: u64,
        limits: &ZoneLimits,
    ) -> EventOutcome {
        self.apply_as(producer.into(), ev, now_ms, limits)
    }

    /// [`apply_from`](Self::apply_from) for an event from `origin`: a new place the event
    /// takes in the dedupe log, the drivers or the producers counts towards its credential's
    /// share ([`crate::share`]), and is refused `share_full` beyond it.
    pub fn apply_as(
        &mut self,
        origin: Origin,
        ev: &Event,
        now_ms: u64,
        limits: &ZoneLimits,
    ) -> EventOutcome {
        assert_eq!(ev.zone, self.zone, "event routed to the wrong zone");
        let credential = origin.credential;
        let Some(p) = origin.producer else {
            let holders = &mut self.holders;
            self.dedupe
                .expire_with(now_ms, limits.dedupe_window_ms, |h| {
                    release(holders, h, Capacity::DedupeIds)
                });
            if self.dedupe.contains(ev.id) {
                return EventOutcome::Duplicate;
            }
            if !self.may_take(credential, Capacity::DedupeIds, limits) {
                return EventOutcome::Rejected(RejectReason::ShareFull);
            }
            if self.dedupe.len() >= limits.dedupe_ids_max {
                return EventOutcome::Rejected(RejectReason::DedupeFull);
            }
            let outcome = self.apply_kind(credential, ev, now_ms, limits);
            if outcome == EventOutcome::Applied {
                let holder = self.take(credential, Capacity::DedupeIds);
                // Room was checked above and the id is new, so this cannot fail.
                let _ = self.dedupe.touch_as(ev.id, now_ms, usize::MAX, holder);
            }
            return outcome;
        };
        let seq = Sequence {
            producer: p.id,
            epoch: p.epoch,
            seq: ev.id,
        };
        let producers = self.producers.get_or_insert_with(Box::default);
        let holders = &mut self.holders;
        producers.expire_with(now_ms, limits.producer_idle_ms, |h| {
            release(holders, h, Capacity::Producers)
        });
        let known = producers.contains(p.id);
        match producers.check(seq, limits.producers_max) {
            Verdict::New => {}
            Verdict::Duplicate => return EventOutcome::Duplicate,
            Verdict::Fenced => return EventOutcome::Rejected(RejectReason::ProducerFenced),
            Verdict::TooOld => return EventOutcome::Rejected(RejectReason::SequenceTooOld),
            Verdict::Full => {
                return EventOutcome::Rejected(
                    if self.may_take(credential, Capacity::Producers, limits) {
                        RejectReason::ProducersFull
                    } else {
                        RejectReason::ShareFull
                    },
                );
            }
        }
        if !known && !self.may_take(credential, Capacity::Producers, limits) {
            return EventOutcome::Rejected(RejectReason::ShareFull);
        }
        let outcome = self.apply_kind(credential, ev, now_ms, limits);
        if outcome == EventOutcome::Applied {
            let holder = if known {
                0
            } else {
                self.take(credential, Capacity::Producers)
            };
            if let Some(producers) = self.producers.as_mut() {
                producers.record_as(seq, now_ms, holder);
            }
        }
        outcome
    }

    /// Whether `credential` may take one more place of `cap` (always, without one).
    fn may_take(&self, credential: Option<CredentialId>, cap: Capacity, l: &ZoneLimits) -> bool {
        match credential {
            Some(c) => self.holders.may_take(c, cap, l.share(cap)),
            None => true,
        }
    }

    /// Counts a place of `cap` for `credential` (after [`may_take`](Self::may_take)); the
    /// holder to store with it (nobody, without a credential).
    fn take(&mut self, credential: Option<CredentialId>, cap: Capacity) -> Holder {
        match credential {
            Some(c) => self.holders.take(c, cap),
            None => 0,
        }
    }

    /// What an event does to the zone, once it is known to be new.
    fn apply_kind(
        &mut self,
        credential: Option<CredentialId>,
        ev: &Event,
        now_ms: u64,
        limits: &ZoneLimits,
    ) -> EventOutcome {
        let h = limits.half_life_ms();
        match ev.kind {
            EventKind::DriverAvailable { driver } => {
                let holders = &mut self.holders;
                self.drivers.expire_with(now_ms, limits.driver_ttl_ms, |h| {
                    release(holders, h, Capacity::Drivers)
                });
                let mut holder = 0;
                if !self.drivers.contains(driver) {
                    if !self.may_take(credential, Capacity::Drivers, limits) {
                        return EventOutcome::Rejected(RejectReason::ShareFull);
                    }
                    if self.drivers.len() >= limits.drivers_max {
                        return EventOutcome::Rejected(RejectReason::DriversFull);
                    }
                    holder = self.take(credential, Capacity::Drivers);
                }
                // Room was checked above for a new driver; a known one keeps its holder.
                let _ = self.drivers.touch_as(driver, now_ms, usize::MAX, holder);
            }
            EventKind::DriverBusy { driver } | EventKind::DriverOffline { driver } => {
                if let Some(holder) = self.drivers.take(driver) {
                    release(&mut self.holders, holder, Capacity::Drivers);
                }
            }
            EventKind::RiderDemand { rider } | EventKind::TripRequested { rider } => {
                if self.new_session(rider, now_ms, limits) {
                    self.rates.add(Counter::Demand, now_ms, h, 1.0);
                }
            }
            EventKind::TripAccepted => self.rates.add(Counter::Accepted, now_ms, h, 1.0),
        }
        self.last_event_ms = self.last_event_ms.max(now_ms);
        EventOutcome::Applied
    }

    /// Whether a rider event starts a new session (and so counts as demand): an unknown
    /// rider (0) always does; a known one unless seen within the session TTL. Seeing a rider
    /// renews its session.
    fn new_session(&mut self, rider: u64, now_ms: u64, limits: &ZoneLimits) -> bool {
        if rider == 0 {
            return true;
        }
        let riders = self.riders.get_or_insert_with(Box::default);
        riders.expire(now_ms, limits.rider_session_ttl_ms);
        let known = riders.contains(rider);
        // A full set forgets nobody: the rider is simply not remembered.
        let _ = riders.touch(rider, now_ms, limits.riders_max);
        !known
    }

    /// Replaces the fare table; the next tick publishes it.
    pub fn set_fare(
        &mut self,
        fare: FareTable,
        limits: &ZoneLimits,
    ) -> Result<(), FareChangeError> {
        let fare = fare.validate()?;
        if fare.version <= self.fare.version {
            return Err(FareChangeError::StaleVersion {
                current: self.fare.version,
                proposed: fare.version,
            });
        }
        if limits.fare_history_max > 0 {
            let mut h = std::mem::take(&mut self.fare_history).into_vec();
            if h.len() >= limits.fare_history_max {
                h.remove(0);
            }
            h.push(self.fare);
            self.fare_history = h.into_boxed_slice();
        }
        self.fare = fare;
        Ok(())
    }

    /// The fare table with a given version, if it is current or still in the history.
    pub fn fare_version(&self, version: u32) -> Option<FareTable> {
        if self.fare.version == version {
            return Some(self.fare);
        }
        self.fare_history
            .iter()
            .find(|f| f.version == version)
            .copied()
    }

    /// One pricing tick. Returns a new snapshot when anything a quote or an audit would see
    /// changed since the last one, else `None` (the previous snapshot stays current).
    ///
    /// `quotes` are the quotes issued since the previous tick; `neighbour_mean_milli` the mean
    /// multiplier of the neighbours that have one.
    pub fn tick(
        &mut self,
        now_ms: u64,
        policy: &SurgePolicy,
        limits: &ZoneLimits,
        quotes: u32,
        neighbour_mean_milli: Option<u32>,
    ) -> Option<PriceSnapshot> {
        let h = limits.half_life_ms();
        let holders = &mut self.holders;
        self.drivers.expire_with(now_ms, limits.driver_ttl_ms, |h| {
            release(holders, h, Capacity::Drivers)
        });
        self.dedupe
            .expire_with(now_ms, limits.dedupe_window_ms, |h| {
                release(holders, h, Capacity::DedupeIds)
            });
        if let Some(p) = &mut self.producers {
            p.expire_with(now_ms, limits.producer_idle_ms, |h| {
                release(holders, h, Capacity::Producers)
            });
        }
        self.holders.shrink();
        if let Some(riders) = &mut self.riders {
            riders.expire(now_ms, limits.rider_session_ttl_ms);
            if riders.is_empty() {
                self.riders = None;
            }
        }
        self.rates.advance(now_ms, h);
        if quotes > 0 {
            self.rates
                .add(Counter::Quotes, now_ms, h, f64::from(quotes));
        }

        let supply = u32::try_from(self.drivers.len()).unwrap_or(u32::MAX);
        let input = PolicyInput {
            now_ms,
            demand: self.rates.get(Counter::Demand),
            quotes: self.rates.get(Counter::Quotes),
            supply,
            neighbour_mean_milli,
            fare_cap_milli: self.fare.surge_cap_milli,
        };
        let (state, out) = policy.step(&self.policy, &input);
        self.policy = state;

        let now = Published {
            multiplier_milli: out.multiplier_milli,
            target_milli: out.target_milli,
            confidence_permille: out.confidence_permille,
            supply,
            demand: rounded(input.demand),
            quotes: rounded(input.quotes),
            neighbour_mean_milli: neighbour_mean_milli.unwrap_or(0),
            fare_version: self.fare.version,
            policy_version: policy.version,
        };
        if self.last == Some(now) {
            return None;
        }
        self.last = Some(now);
        self.version += 1;
        Some(PriceSnapshot::seal(SnapshotFields {
            zone: self.zone,
            version: self.version,
            multiplier_milli: now.multiplier_milli,
            target_milli: now.target_milli,
            fare: self.fare,
            policy_version: now.policy_version,
            confidence_permille: now.confidence_permille,
            supply,
            demand: now.demand,
            quotes: now.quotes,
            neighbour_mean_milli: now.neighbour_mean_milli,
            computed_at_ms: now_ms,
        }))
    }

    /// True when the zone saw no event for `idle_ms` and tracks no available driver, so it
    /// can be passivated without losing anything a quote depends on.
    pub fn is_idle(&self, now_ms: u64, idle_ms: u64) -> bool {
        self.drivers.is_empty() && now_ms.saturating_sub(self.last_event_ms) >= idle_ms
    }

    /// A view of the hot state.
    pub fn hot_state(&self) -> HotState {
        HotState {
            zone: self.zone,
            drivers: self.drivers.len(),
            demand: rounded(self.rates.get(Counter::Demand)),
            quotes: rounded(self.rates.get(Counter::Quotes)),
            accepted: rounded(self.rates.get(Counter::Accepted)),
            riders: self.riders.as_ref().map_or(0, |r| r.len()),
            dedupe_ids: self.dedupe.len(),
            producers: self.producers.as_ref().map_or(0, |p| p.len()),
            fare: self.fare,
            multiplier_milli: self.policy.published_milli,
            version: self.version,
            last_event_ms: self.last_event_ms,
        }
    }

    /// How much of this zone's capacities `credential` holds.
    pub fn holdings(&self, credential: CredentialId) -> Holdings {
        let held = |cap| self.holders.held(credential, cap);
        Holdings {
            dedupe_ids: held(Capacity::DedupeIds),
            drivers: held(Capacity::Drivers),
            producers: held(Capacity::Producers),
        }
    }

    /// Everything this zone holds, for persistence.
    pub fn export(&self) -> ZoneExport {
        let (rates_at_ms, rates) = self.rates.parts();
        ZoneExport {
            zone: self.zone,
            fare: self.fare,
            fare_history: self.fare_history.to_vec(),
            drivers: self.drivers.entries(),
            dedupe: self.dedupe.entries(),
            riders: self.riders.as_ref().map_or_else(Vec::new, |r| r.entries()),
            producers: self
                .producers
                .as_ref()
                .map_or_else(Vec::new, |p| p.states().to_vec()),
            rates_at_ms,
            rates,
            policy: self.policy,
            version: self.version,
            last_event_ms: self.last_event_ms,
        }
    }

    /// A zone restored from exported state, checked against this node's limits. The next
    /// tick publishes a snapshot (with a higher version than the exported one).
    pub fn import(e: ZoneExport, limits: &ZoneLimits) -> Result<Self, ImportError> {
        let fare = e
            .fare
            .validate()
            .map_err(|x| ImportError::Fare(x.to_string()))?;
        for h in &e.fare_history {
            h.validate().map_err(|x| ImportError::Fare(x.to_string()))?;
            if h.version >= fare.version {
                return Err(ImportError::Fare(format!(
                    "history version {} is not older than {}",
                    h.version, fare.version
                )));
            }
        }
        let too_many = |what, len, max| {
            if len > max {
                Err(ImportError::TooMany { what, len, max })
            } else {
                Ok(())
            }
        };
        too_many("drivers", e.drivers.len(), limits.drivers_max)?;
        too_many("dedupe ids", e.dedupe.len(), limits.dedupe_ids_max)?;
        too_many("riders", e.riders.len(), limits.riders_max)?;
        too_many("producers", e.producers.len(), limits.producers_max)?;
        too_many(
            "fare history",
            e.fare_history.len(),
            limits.fare_history_max,
        )?;
        let p = e.policy;
        let in_range = p.smoothed.is_finite()
            && (1.0..=1000.0).contains(&p.smoothed)
            && (MILLI..=1_000_000).contains(&p.published_milli);
        if !in_range {
            return Err(ImportError::Policy(format!(
                "smoothed {}, published {}",
                p.smoothed, p.published_milli
            )));
        }
        let rates = Rates::from_parts(e.rates_at_ms, e.rates).ok_or(ImportError::Rates(e.rates))?;
        Ok(Self {
            zone: e.zone,
            fare,
            fare_history: e.fare_history.into_boxed_slice(),
            drivers: ExpiringSet::from_entries(&e.drivers),
            dedupe: ExpiringSet::from_entries(&e.dedupe),
            riders: (!e.riders.is_empty()).then(|| Box::new(ExpiringSet::from_entries(&e.riders))),
            producers: (!e.producers.is_empty())
                .then(|| Box::new(Producers::from_states(e.producers))),
            // Who held what is not persisted: restored entries are held by nobody.
            holders: Holders::default(),
            rates,
            policy: p,
            version: e.version,
            last: None,
            last_event_ms: e.last_event_ms,
        })
    }

    /// The policy's internal state (for determinism checks and persistence).
    pub fn policy_state(&self) -> PolicyState {
        self.policy
    }

    /// Heap bytes this zone holds beyond its own struct: `(hot state, dedupe log)`.
    ///
    /// The dedupe log is reported apart: it grows with the event rate (one entry per event
    /// id in the window), while the hot state grows only with the drivers present.
    pub fn heap_bytes(&self) -> (usize, usize) {
        let hot = self.drivers.heap_bytes()
            + self
                .riders
                .as_ref()
                .map_or(0, |r| std::mem::size_of::<ExpiringSet>() + r.heap_bytes())
            + self
                .producers
                .as_ref()
                .map_or(0, |p| std::mem::size_of::<Producers>() + p.heap_bytes())
            + self.holders.heap_bytes()
            + self.fare_history.len() * std::mem::size_of::<FareTable>();
        (hot, self.dedupe.heap_bytes())
    }
}

/// An entry held by `holder` left the zone: it no longer counts towards its credential's
/// share.
fn release(holders: &mut Holders, holder: Holder, cap: Capacity) {
    holders.release(holder, cap);
}

/// A decaying count as a whole number, for snapshots and admin views.
fn rounded(x: f64) -> u32 {
    // Counts are finite and non-negative: adding a half and truncating rounds half up, as
    // `round` would, without a libm call on every tick; `as` saturates.
    (x + 0.5) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fare::Currency;

    fn fare(version: u32) -> FareTable {
        FareTable {
            version,
            base_minor: 200,
            per_km_minor: 100,
            per_min_minor: 20,
            minimum_minor: 500,
            surge_cap_milli: 3000,
            currency: Currency::new("EUR").expect("valid"),
        }
    }

    fn zone() -> ZoneId {
        ZoneId::from_lat_lng(48.8584, 2.2945, 8).expect("valid")
    }

    fn ev(id: u64, kind: EventKind) -> Event {
        Event {
            id,
            zone: zone(),
            kind,
        }
    }

    #[test]
    fn drivers_are_counted_once_and_expire_when_not_seen() {
        let l = ZoneLimits::default();
        let p = SurgePolicy::default();
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        assert_eq!(
            z.apply(&ev(1, EventKind::DriverAvailable { driver: 7 }), 0, &l),
            EventOutcome::Applied
        );
        assert_eq!(
            z.apply(&ev(2, EventKind::DriverAvailable { driver: 7 }), 10_000, &l),
            EventOutcome::Applied
        );
        assert_eq!(
            z.apply(&ev(3, EventKind::DriverAvailable { driver: 8 }), 1_000, &l),
            EventOutcome::Applied
        );
        assert_eq!(z.tick(20_000, &p, &l, 0, None).map(|s| s.supply), Some(2));
        // Driver 8 last seen at 1 s expires at 31 s; driver 7 (seen at 10 s) at 40 s.
        assert_eq!(z.tick(31_000, &p, &l, 0, None).map(|s| s.supply), Some(1));
        assert_eq!(z.tick(40_000, &p, &l, 0, None).map(|s| s.supply), Some(0));
    }

    #[test]
    fn busy_and_offline_drivers_leave_supply() {
        let l = ZoneLimits::default();
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        z.apply(&ev(1, EventKind::DriverAvailable { driver: 1 }), 0, &l);
        z.apply(&ev(2, EventKind::DriverAvailable { driver: 2 }), 0, &l);
        z.apply(&ev(3, EventKind::DriverBusy { driver: 1 }), 0, &l);
        z.apply(&ev(4, EventKind::DriverOffline { driver: 2 }), 0, &l);
        assert_eq!(z.hot_state().drivers, 0);
    }

    #[test]
    fn a_zone_at_its_driver_limit_rejects_new_drivers() {
        let l = ZoneLimits {
            drivers_max: 1,
            ..ZoneLimits::default()
        };
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        z.apply(&ev(1, EventKind::DriverAvailable { driver: 1 }), 0, &l);
        assert_eq!(
            z.apply(&ev(2, EventKind::DriverAvailable { driver: 2 }), 0, &l),
            EventOutcome::Rejected(RejectReason::DriversFull)
        );
        // The rejected id was not recorded: a retry once there is room is applied.
        z.apply(&ev(3, EventKind::DriverOffline { driver: 1 }), 0, &l);
        assert_eq!(
            z.apply(&ev(2, EventKind::DriverAvailable { driver: 2 }), 0, &l),
            EventOutcome::Applied
        );
    }

    #[test]
    fn a_full_dedupe_window_rejects_rather_than_forgets() {
        let l = ZoneLimits {
            dedupe_ids_max: 2,
            ..ZoneLimits::default()
        };
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        z.apply(&ev(1, EventKind::RiderDemand { rider: 0 }), 0, &l);
        z.apply(&ev(2, EventKind::RiderDemand { rider: 0 }), 0, &l);
        assert_eq!(
            z.apply(&ev(3, EventKind::RiderDemand { rider: 0 }), 0, &l),
            EventOutcome::Rejected(RejectReason::DedupeFull)
        );
        assert_eq!(
            z.apply(&ev(1, EventKind::RiderDemand { rider: 0 }), 0, &l),
            EventOutcome::Duplicate
        );
        // After the window slides, there is room again.
        assert_eq!(
            z.apply(&ev(3, EventKind::RiderDemand { rider: 0 }), 60_000, &l),
            EventOutcome::Applied
        );
    }

    #[test]
    fn a_producers_events_apply_once_however_many_arrive_and_a_refused_one_can_be_resent() {
        let l = ZoneLimits {
            drivers_max: 1,
            dedupe_ids_max: 1,
            producers_max: 1,
            ..ZoneLimits::default()
        };
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        let p = Some(Producer { id: 5, epoch: 1 });
        // Far more events than the dedupe log holds: producers need none of it.
        for seq in 1..=1_000 {
            let e = ev(seq, EventKind::RiderDemand { rider: seq });
            assert_eq!(z.apply_from(p, &e, seq, &l), EventOutcome::Applied);
            assert_eq!(z.apply_from(p, &e, seq, &l), EventOutcome::Duplicate);
        }
        assert_eq!(z.hot_state().dedupe_ids, 0);
        let d1 = ev(1_001, EventKind::DriverAvailable { driver: 1 });
        let d2 = ev(1_002, EventKind::DriverAvailable { driver: 2 });
        assert_eq!(z.apply_from(p, &d1, 2_000, &l), EventOutcome::Applied);
        // Refused for another reason: not recorded, so its resend is not a duplicate.
        let full = EventOutcome::Rejected(RejectReason::DriversFull);
        assert_eq!(z.apply_from(p, &d2, 2_000, &l), full);
        z.apply_from(
            p,
            &ev(1_003, EventKind::DriverOffline { driver: 1 }),
            2_000,
            &l,
        );
        assert_eq!(z.apply_from(p, &d2, 2_001, &l), EventOutcome::Applied);
        // A restart fences the old incarnation; a second producer waits for room.
        let p2 = Some(Producer { id: 5, epoch: 2 });
        assert_eq!(
            z.apply_from(p2, &ev(1, EventKind::TripAccepted), 2_002, &l),
            EventOutcome::Applied
        );
        assert_eq!(
            z.apply_from(p, &ev(1_004, EventKind::TripAccepted), 2_002, &l),
            EventOutcome::Rejected(RejectReason::ProducerFenced)
        );
        let other = Some(Producer { id: 6, epoch: 1 });
        assert_eq!(
            z.apply_from(other, &ev(1, EventKind::TripAccepted), 2_003, &l),
            EventOutcome::Rejected(RejectReason::ProducersFull)
        );
        let later = 2_002 + l.producer_idle_ms;
        assert_eq!(
            z.apply_from(other, &ev(1, EventKind::TripAccepted), later, &l),
            EventOutcome::Applied
        );
    }

    #[test]
    fn fare_versions_must_increase_and_old_ones_stay_explainable() {
        let l = ZoneLimits::default();
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        assert_eq!(
            z.set_fare(fare(1), &l),
            Err(FareChangeError::StaleVersion {
                current: 1,
                proposed: 1
            })
        );
        z.set_fare(fare(2), &l).expect("newer");
        assert_eq!(z.fare_version(1).map(|f| f.version), Some(1));
        assert_eq!(z.fare_version(2).map(|f| f.version), Some(2));
        let snap = z
            .tick(0, &SurgePolicy::default(), &l, 0, None)
            .expect("first tick publishes");
        assert_eq!(snap.fare.version, 2);
    }

    #[test]
    fn an_unchanged_zone_publishes_nothing_new() {
        let l = ZoneLimits::default();
        let p = SurgePolicy::default();
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        assert!(z.tick(0, &p, &l, 0, None).is_some());
        assert!(z.tick(250, &p, &l, 0, None).is_none());
        z.apply(&ev(1, EventKind::RiderDemand { rider: 0 }), 300, &l);
        assert_eq!(z.tick(500, &p, &l, 0, None).map(|s| s.version), Some(2));
    }

    fn from(credential: u64, producer: Option<u64>) -> Origin {
        Origin {
            credential: Some(CredentialId(credential)),
            producer: producer.map(|id| Producer { id, epoch: 1 }),
        }
    }

    #[test]
    fn one_credential_filling_a_zone_gets_share_full_while_another_is_still_applied() {
        let l = ZoneLimits::default();
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        let share = EventOutcome::Rejected(RejectReason::ShareFull);
        // The plain path: 8,192 ids from one credential; it holds a quarter of the log.
        let mut applied = 0;
        for id in 1..=8_192 {
            match z.apply_as(from(1, None), &ev(id, EventKind::TripAccepted), 0, &l) {
                EventOutcome::Applied => applied += 1,
                o => assert_eq!(o, share),
            }
        }
        assert_eq!(applied, 2_048);
        assert_eq!(z.holdings(CredentialId(1)).dedupe_ids, 2_048);
        // Drivers and producers alike.
        for d in 1..=2_048 {
            let e = ev(100_000 + d, EventKind::DriverAvailable { driver: d });
            z.apply_as(from(1, Some(7)), &e, 0, &l);
        }
        for p in 1..=64 {
            z.apply_as(
                from(1, Some(1_000 + p)),
                &ev(1, EventKind::TripAccepted),
                0,
                &l,
            );
        }
        let held = z.holdings(CredentialId(1));
        assert_eq!((held.drivers, held.producers), (512, 16));
        // A second credential is applied everywhere, up to its own share.
        for id in 0..512 {
            let o = z.apply_as(
                from(2, None),
                &ev(50_000 + id, EventKind::TripAccepted),
                0,
                &l,
            );
            assert_eq!(o, EventOutcome::Applied);
            let d = EventKind::DriverAvailable { driver: 9_000 + id };
            assert_eq!(
                z.apply_as(from(2, Some(8)), &ev(id + 1, d), 0, &l),
                EventOutcome::Applied
            );
        }
        // Its producer 8 and 15 more: its 16.
        for p in 1..=15 {
            let o = z.apply_as(
                from(2, Some(2_000 + p)),
                &ev(1, EventKind::TripAccepted),
                0,
                &l,
            );
            assert_eq!(o, EventOutcome::Applied);
        }
        // A heartbeat for a driver it holds is applied; its drivers leaving make room.
        let hb = ev(200_000, EventKind::DriverAvailable { driver: 1 });
        assert_eq!(
            z.apply_as(from(1, None), &hb, 1, &l),
            share,
            "a new id: the log share"
        );
        let hb = ev(1_000_000, EventKind::DriverAvailable { driver: 1 });
        assert_eq!(
            z.apply_as(from(1, Some(7)), &hb, 1, &l),
            EventOutcome::Applied
        );
        let off = ev(1_000_001, EventKind::DriverOffline { driver: 2 });
        assert_eq!(
            z.apply_as(from(1, Some(7)), &off, 1, &l),
            EventOutcome::Applied
        );
        let new = ev(1_000_002, EventKind::DriverAvailable { driver: 5_000 });
        assert_eq!(
            z.apply_as(from(1, Some(7)), &new, 1, &l),
            EventOutcome::Applied
        );
        // After the window slides, its ids are released.
        z.tick(l.dedupe_window_ms, &SurgePolicy::default(), &l, 0, None);
        assert_eq!(z.holdings(CredentialId(1)).dedupe_ids, 0);
        assert_eq!(
            z.apply_as(
                from(1, None),
                &ev(300_000, EventKind::TripAccepted),
                l.dedupe_window_ms,
                &l
            ),
            EventOutcome::Applied
        );
    }

    #[test]
    fn restored_entries_are_held_by_nobody() {
        let l = ZoneLimits {
            drivers_max: 4,
            ..ZoneLimits::default()
        };
        let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
        let d = |id| ev(id, EventKind::DriverAvailable { driver: id });
        assert_eq!(
            z.apply_as(from(1, None), &d(1), 0, &l),
            EventOutcome::Applied
        );
        let mut r = ZoneCore::import(z.export(), &l).expect("imports");
        assert_eq!(r.holdings(CredentialId(1)), Holdings::default());
        assert_eq!(
            r.apply_as(from(1, None), &d(2), 0, &l),
            EventOutcome::Applied
        );
        // Driver 1 leaving releases nobody's count.
        r.apply_as(
            from(1, None),
            &ev(3, EventKind::DriverBusy { driver: 1 }),
            0,
            &l,
        );
        assert_eq!(r.holdings(CredentialId(1)).drivers, 1);
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

        /// Any history of events from three credentials (and some without one): no credential
        /// ever holds more than its share of a capacity; what the credentials hold adds up to
        /// what the zone holds for them, entry by entry, as entries come and go; a credential
        /// is refused `share_full` only when it holds its share.
        #[test]
        fn holdings_stay_within_the_share_and_account_for_every_entry(
            ops in proptest::collection::vec(
                (0u64..4, 0u8..6, 0u64..40, 0u64..6, 0u64..3_000), 1..600),
            percent in 10u8..=100,
        ) {
            let l = ZoneLimits {
                drivers_max: 12,
                dedupe_ids_max: 16,
                producers_max: 6,
                driver_ttl_ms: 5_000,
                dedupe_window_ms: 4_000,
                producer_idle_ms: 9_000,
                credential_share_percent: percent,
                ..ZoneLimits::default()
            };
            let mut z = ZoneCore::new(zone(), fare(1), 0, &l);
            let (mut now, mut id, mut seq) = (0u64, 0u64, 0u64);
            let creds = [CredentialId(11), CredentialId(22), CredentialId(33)];
            let mut anonymous = false;
            for (c, kind, x, p, dt) in ops {
                now += dt / 10;
                id += 1;
                seq += 1;
                let credential = creds.get(c as usize).copied();
                anonymous |= credential.is_none();
                let kind = match kind {
                    0 | 1 => EventKind::DriverAvailable { driver: x },
                    2 => EventKind::DriverOffline { driver: x },
                    3 => EventKind::RiderDemand { rider: x },
                    _ => EventKind::TripAccepted,
                };
                // Half the events come from producers (0..6), half on the plain path.
                let producer = (p < 6 && x % 2 == 0).then_some(Producer { id: p + 1, epoch: 1 });
                let e = Event { id: if producer.is_some() { seq } else { id }, zone: zone(), kind };
                let before = credential.map(|c| z.holdings(c));
                let o = z.apply_as(Origin { credential, producer }, &e, now, &l);
                if o == EventOutcome::Rejected(RejectReason::ShareFull) {
                    let h = before.expect("only a credential is refused its share");
                    proptest::prop_assert!(
                        h.dedupe_ids >= l.share(Capacity::DedupeIds)
                            || h.drivers >= l.share(Capacity::Drivers)
                            || h.producers >= l.share(Capacity::Producers),
                        "refused at {:?}", h
                    );
                }
                if now % 7 == 0 {
                    z.tick(now, &SurgePolicy::default(), &l, 0, None);
                }
                let mut sum = Holdings::default();
                for c in creds {
                    let h = z.holdings(c);
                    proptest::prop_assert!(h.dedupe_ids <= l.share(Capacity::DedupeIds));
                    proptest::prop_assert!(h.drivers <= l.share(Capacity::Drivers));
                    proptest::prop_assert!(h.producers <= l.share(Capacity::Producers));
                    sum.dedupe_ids += h.dedupe_ids;
                    sum.drivers += h.drivers;
                    sum.producers += h.producers;
                }
                let hot = z.hot_state();
                let total = (hot.dedupe_ids, hot.drivers, hot.producers);
                let held = (sum.dedupe_ids, sum.drivers, sum.producers);
                if anonymous {
                    proptest::prop_assert!(held.0 <= total.0 && held.1 <= total.1 && held.2 <= total.2);
                } else {
                    proptest::prop_assert_eq!(held, total);
                }
                proptest::prop_assert!(z.holders.slots() <= total.0 + total.1 + total.2 + 3);
            }
        }
    }
}
