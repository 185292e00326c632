//! Load scenarios: a number of logical users on a city, ramped up, each with request
//! rates; objectives that decide pass or fail; and the `capacity` search. The files in
//! `configs/scenarios/` document every field.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Context as _};
use protocol::msg::{event_kind, WireEvent};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::Deserialize;

use crate::city::{exponential, City, CityConfig};
use crate::trace::{Op, Record, Tier};

/// Most logical users in a scenario.
pub const USERS_MAX: u32 = 10_000_000;

/// A scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScenarioConfig {
    /// A name for reports.
    pub name: String,
    /// What the scenario is for.
    #[serde(default)]
    pub description: String,
    /// The city file, relative to the scenario file.
    pub city: PathBuf,
    /// Seed of the traffic.
    #[serde(default)]
    pub seed: u64,
    /// Logical users at full load.
    pub users: u32,
    /// Share of users on the premium tier, 0..=1.
    pub premium_share: f64,
    /// Users are added linearly over this long, seconds.
    pub ramp_up_s: f64,
    /// Time at full load after the ramp, seconds (`--duration` overrides).
    pub duration_s: f64,
    /// City hour whose hotspot weights place the traffic.
    pub city_hour: f64,
    /// Requests per user.
    pub per_user: PerUser,
    /// The riders behind the rider events: how many sessions start (each one unit of demand).
    #[serde(default)]
    pub market: Market,
    /// How the traffic reaches the nodes.
    #[serde(default)]
    pub traffic: Traffic,
    /// What must hold.
    #[serde(default)]
    pub objectives: Objectives,
    /// Present for a capacity search.
    #[serde(default)]
    pub capacity: Option<CapacitySearch>,
}

/// Per-user request rates (Poisson; the sum over users is what the nodes see).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PerUser {
    /// Quotes per second per user.
    pub quotes_per_s: f64,
    /// Events per second per user (sent in batches, see `traffic.event_batch_len`).
    pub events_per_s: f64,
}

/// Rider sessions in a scenario's events. A load scenario sends `per_user.events_per_s` events
/// per user; most are driver heartbeats (the bulk of a real event stream), the rest come from
/// rider sessions: each session is a `rider_demand` with its own rider id, then, for
/// `request_share` of them, a `trip_requested` with the same id and a `trip_accepted`. The
/// engine counts a session once, so demand is set by the session rate, not by the event rate.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Market {
    /// Rider sessions starting per second, city-wide, at full load; absent: two per driver of
    /// the city per hour (a plausible market: riders per driver-hour between 1.5 and 3).
    pub rider_sessions_per_s: Option<f64>,
    /// Share of sessions that request the trip.
    pub request_share: f64,
    /// Distinct drivers whose heartbeats the scenario sends (the available ones); absent:
    /// every driver of the city. A real fleet at rush hour has about half its drivers on
    /// trips, and they are not supply.
    pub available_drivers: Option<u32>,
}

impl Default for Market {
    fn default() -> Self {
        Self {
            rider_sessions_per_s: None,
            request_share: 0.5,
            available_drivers: None,
        }
    }
}

/// Rider sessions per driver-hour when a scenario does not say.
pub const SESSIONS_PER_DRIVER_HOUR_DEFAULT: f64 = 2.0;

/// Connections, batching and client-side limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Traffic {
    /// Most events in one `EVENT_BATCH`.
    pub event_batch_len: usize,
    /// An event waits at most this long for its batch to fill, ms.
    pub event_batch_window_ms: u64,
    /// Quote connections per node and tier (each with `lanes` pipelined streams).
    pub quote_connections_per_node: usize,
    /// Event connections per node and tier (one stream each, so a zone's events keep
    /// their order).
    pub event_connections_per_node: usize,
    /// Streams per quote connection.
    pub lanes: usize,
    /// Most requests the simulator keeps unanswered; a request due beyond it is not sent
    /// and counts as the error `sim_in_flight_limit`.
    pub in_flight_max: usize,
    /// A request unanswered this long fails with `timeout`, ms.
    pub request_timeout_ms: u64,
    /// After the warm-up events (one per city zone), wait this long, then until every node
    /// quotes every city zone (at most `run::WARMUP_READY_MAX_MS`), before the run starts, ms.
    pub warmup_ms: u64,
}

impl Default for Traffic {
    fn default() -> Self {
        Self {
            event_batch_len: 64,
            event_batch_window_ms: 5,
            quote_connections_per_node: 2,
            event_connections_per_node: 2,
            lanes: 4,
            in_flight_max: 100_000,
            request_timeout_ms: 5_000,
            warmup_ms: 600,
        }
    }
}

/// Objectives; an absent one is not judged.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Objectives {
    /// Premium quotes' p99 latency at most this, ms.
    pub premium_p99_ms: Option<f64>,
    /// Shared quotes' p99 latency at most this, ms.
    pub shared_p99_ms: Option<f64>,
    /// Failed requests over sent requests, all tiers, below this.
    pub error_rate_max: Option<f64>,
    /// Failed premium requests over sent premium requests below this.
    pub premium_error_rate_max: Option<f64>,
    /// Pricing realism: share of answered quotes priced above 1.0× at most this
    /// (quote-weighted; see `quote_prices` in sim/REPORT.md).
    #[serde(default)]
    pub quote_surging_share_max: Option<f64>,
    /// Pricing realism: the 99th percentile of quoted multipliers at most this, ×.
    #[serde(default)]
    pub quote_p99_multiplier_max: Option<f64>,
}

/// The capacity search: raise the users step by step until an objective breaks.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CapacitySearch {
    /// Users in the first step.
    pub start_users: u32,
    /// Each step has this many times the users of the previous one (> 1).
    pub step_factor: f64,
    /// Length of each step, seconds (no ramp within a step).
    pub step_s: f64,
    /// Most steps.
    pub steps_max: u32,
    /// A step that breaks an objective is run again this many times; it counts as broken
    /// only if every run breaks (a shared machine's hiccup does not end the search).
    #[serde(default = "default_confirm_runs")]
    pub confirm_runs: u32,
}

fn default_confirm_runs() -> u32 {
    1
}

impl ScenarioConfig {
    /// Parses and validates a scenario's text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let s: Self = toml::from_str(text)?;
        s.validate()?;
        Ok(s)
    }

    fn validate(&self) -> anyhow::Result<()> {
        ensure!(
            self.users >= 1 && self.users <= USERS_MAX,
            "users must be within 1..={USERS_MAX}"
        );
        ensure!(
            (0.0..=1.0).contains(&self.premium_share),
            "premium_share must be within [0, 1]"
        );
        ensure!(
            self.ramp_up_s >= 0.0 && self.duration_s > 0.0,
            "ramp_up_s must be >= 0 and duration_s > 0"
        );
        ensure!(
            self.per_user.quotes_per_s >= 0.0
                && self.per_user.events_per_s >= 0.0
                && self.per_user.quotes_per_s + self.per_user.events_per_s > 0.0,
            "per_user rates must be >= 0 and not both 0"
        );
        ensure!(
            self.market
                .rider_sessions_per_s
                .is_none_or(|r| r.is_finite() && r >= 0.0)
                && (0.0..=1.0).contains(&self.market.request_share),
            "market.rider_sessions_per_s must be >= 0 and market.request_share within [0, 1]"
        );
        let t = &self.traffic;
        ensure!(
            (1..=4096).contains(&t.event_batch_len),
            "traffic.event_batch_len must be within 1..=4096"
        );
        ensure!(
            t.quote_connections_per_node >= 1
                && t.event_connections_per_node >= 1
                && t.lanes >= 1
                && t.in_flight_max >= 1,
            "traffic: connections, lanes and in_flight_max must be at least 1"
        );
        ensure!(
            t.quote_connections_per_node + t.event_connections_per_node <= 64,
            "traffic: at most 64 connections per node and tier"
        );
        if let Some(c) = &self.capacity {
            ensure!(
                c.start_users >= 1 && c.step_factor > 1.0 && c.step_s > 0.0 && c.steps_max >= 1,
                "capacity: start_users >= 1, step_factor > 1, step_s > 0, steps_max >= 1"
            );
        }
        Ok(())
    }
}

/// A scenario with its city.
#[derive(Debug)]
pub struct Scenario {
    /// The scenario.
    pub config: ScenarioConfig,
    /// Its city.
    pub city: City,
}

impl Scenario {
    /// Reads a scenario file and the city it names.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let config =
            ScenarioConfig::from_toml(&text).with_context(|| format!("in {}", path.display()))?;
        let city_path = path.parent().unwrap_or(Path::new(".")).join(&config.city);
        let city = City::new(CityConfig::load(&city_path)?)
            .with_context(|| format!("city {}", city_path.display()))?;
        Ok(Self { config, city })
    }

    /// A copy (the city's zones are found again).
    pub fn try_clone(&self) -> anyhow::Result<Self> {
        Ok(Self {
            config: self.config.clone(),
            city: City::new(self.city.config().clone())?,
        })
    }

    /// Rider sessions starting per second at full load.
    pub fn rider_sessions_per_s(&self) -> f64 {
        self.config.market.rider_sessions_per_s.unwrap_or_else(|| {
            f64::from(self.city.config().drivers.count) * SESSIONS_PER_DRIVER_HOUR_DEFAULT / 3600.0
        })
    }

    /// Rider-session events per second at full load (a demand event per session, and a trip
    /// request and acceptance for those that book).
    pub fn rider_events_per_s(&self) -> f64 {
        self.rider_sessions_per_s() * (1.0 + 2.0 * self.config.market.request_share)
    }

    /// Offered requests per second at full load (quotes plus event batches).
    pub fn offered_per_s(&self) -> f64 {
        let c = &self.config;
        f64::from(c.users)
            * (c.per_user.quotes_per_s + c.per_user.events_per_s / c.traffic.event_batch_len as f64)
    }
}

fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A scenario's traffic as trace records: quotes and events from the users active at each
/// moment (Poisson arrivals, thinned during the ramp), placed by the city's hotspots at the
/// scenario's city hour. Events: rider sessions at `market.rider_sessions_per_s` (see
/// [`Market`]), origins placed by the hotspots; every other event is a driver heartbeat
/// (each driver in its own zone).
#[derive(Debug)]
pub struct ScenarioLoad {
    scenario: Scenario,
    rng: SmallRng,
    end_us: u64,
    next_quote_s: f64,
    next_event_s: f64,
    next_id: u64,
    /// Share of event slots that carry rider-session events.
    rider_share: f64,
    /// A session's later events (trip requested, trip accepted), sent in the next rider slots.
    pending: std::collections::VecDeque<WireEvent>,
}

impl ScenarioLoad {
    /// The scenario's traffic; event ids start at `id_base`.
    pub fn new(scenario: Scenario, id_base: u64) -> Self {
        let c = &scenario.config;
        let mut rng = SmallRng::seed_from_u64(c.seed);
        let users = f64::from(c.users);
        let next_quote_s = exponential(&mut rng, users * c.per_user.quotes_per_s);
        let next_event_s = exponential(&mut rng, users * c.per_user.events_per_s);
        let end_us = ((c.ramp_up_s + c.duration_s) * 1e6) as u64;
        let rider_share =
            (scenario.rider_events_per_s() / (users * c.per_user.events_per_s)).clamp(0.0, 1.0);
        Self {
            scenario,
            rng,
            end_us,
            next_quote_s,
            next_event_s,
            next_id: id_base,
            rider_share,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// Users active at `t_s`.
    fn active(&self, t_s: f64) -> f64 {
        let c = &self.scenario.config;
        if c.ramp_up_s <= 0.0 {
            return f64::from(c.users);
        }
        f64::from(c.users) * (t_s / c.ramp_up_s).clamp(0.0, 1.0)
    }

    fn user_tier(&mut self, t_s: f64) -> Tier {
        let active = self.active(t_s).max(1.0) as u64;
        let user = self.rng.random_range(0..active);
        let share = self.scenario.config.premium_share;
        if (mix(user) >> 11) as f64 / (1u64 << 53) as f64 > share {
            Tier::Shared
        } else {
            Tier::Premium
        }
    }
}

impl Iterator for ScenarioLoad {
    type Item = Record;

    fn next(&mut self) -> Option<Record> {
        let users = f64::from(self.scenario.config.users);
        loop {
            let c = &self.scenario.config;
            let quote = self.next_quote_s <= self.next_event_s;
            let t = if quote {
                self.next_quote_s
            } else {
                self.next_event_s
            };
            let at_us = (t * 1e6) as u64;
            if !t.is_finite() || at_us >= self.end_us {
                return None;
            }
            if quote {
                self.next_quote_s += exponential(&mut self.rng, users * c.per_user.quotes_per_s);
            } else {
                self.next_event_s += exponential(&mut self.rng, users * c.per_user.events_per_s);
            }
            // Thinning: a candidate counts with the share of users active at its time.
            if self.rng.random::<f64>() * users > self.active(t) {
                continue;
            }
            let tier = self.user_tier(t);
            let (c, city) = (&self.scenario.config, &self.scenario.city);
            let op = if quote {
                let zone = city.origin_zone(&mut self.rng, c.city_hour);
                let (distance_m, duration_s) = city.trip(&mut self.rng);
                Op::Quote {
                    zone,
                    distance_m,
                    duration_s,
                }
            } else {
                let id = self.next_id;
                self.next_id += 1;
                let rider_slot = self.rng.random::<f64>() < self.rider_share;
                if rider_slot {
                    if let Some(mut ev) = self.pending.pop_front() {
                        ev.id = id;
                        Op::Event(ev)
                    } else {
                        // A new session: its rider id is its first event's id (unique).
                        let zone = city.origin_zone(&mut self.rng, c.city_hour);
                        if self.rng.random::<f64>() < c.market.request_share {
                            for kind in [event_kind::TRIP_REQUESTED, event_kind::TRIP_ACCEPTED] {
                                let driver = if kind == event_kind::TRIP_ACCEPTED {
                                    0
                                } else {
                                    id
                                };
                                self.pending.push_back(WireEvent {
                                    id: 0,
                                    zone,
                                    driver,
                                    kind,
                                });
                            }
                        }
                        Op::Event(WireEvent {
                            id,
                            zone,
                            driver: id,
                            kind: event_kind::RIDER_DEMAND,
                        })
                    }
                } else {
                    let drivers = u64::from(
                        c.market
                            .available_drivers
                            .unwrap_or(city.config().drivers.count)
                            .max(1),
                    );
                    let d = self.rng.random_range(0..drivers);
                    let zones = city.zones();
                    let zone = zones[(mix(d) % zones.len() as u64) as usize];
                    Op::Event(WireEvent {
                        id,
                        zone,
                        driver: d + 1,
                        kind: event_kind::DRIVER_AVAILABLE,
                    })
                }
            };
            return Some(Record { at_us, tier, op });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario_for_test() -> Scenario {
        let city = City::new(
            CityConfig::from_toml(crate::city::tests_support::SMALL).expect("city config"),
        )
        .expect("city");
        let config = ScenarioConfig::from_toml(
            r#"
name = "t"
city = "city.toml"
users = 1000
premium_share = 0.25
ramp_up_s = 2.0
duration_s = 4.0
city_hour = 8.0
[per_user]
quotes_per_s = 1.0
events_per_s = 2.0
"#,
        )
        .expect("scenario");
        Scenario { config, city }
    }

    #[test]
    fn rider_events_come_from_sessions_each_with_its_own_rider_id() {
        let mut sc = scenario_for_test();
        sc.config.market.rider_sessions_per_s = Some(20.0);
        sc.config.market.request_share = 0.5;
        sc.config.ramp_up_s = 0.0;
        sc.config.duration_s = 20.0;
        let load = ScenarioLoad::new(sc, 1);
        let mut sessions = std::collections::HashMap::new();
        let (mut requested, mut heartbeats) = (0u64, 0u64);
        for r in load {
            if let Op::Event(e) = r.op {
                match e.kind {
                    event_kind::RIDER_DEMAND => {
                        assert_ne!(e.driver, 0, "a session has a rider id");
                        assert!(
                            sessions.insert(e.driver, e.zone).is_none(),
                            "one demand event per session"
                        );
                    }
                    event_kind::TRIP_REQUESTED => {
                        assert_eq!(
                            sessions.get(&e.driver),
                            Some(&e.zone),
                            "a request belongs to a session, in its zone"
                        );
                        requested += 1;
                    }
                    event_kind::DRIVER_AVAILABLE => heartbeats += 1,
                    _ => {}
                }
            }
        }
        // 20 sessions/s for 20 s, Poisson: 400 ± a few standard deviations.
        let n = sessions.len() as f64;
        assert!((320.0..=480.0).contains(&n), "{n} sessions");
        assert!(
            (0.35..=0.65).contains(&(requested as f64 / n)),
            "{requested} requests"
        );
        assert!(
            heartbeats as f64 > 10.0 * n,
            "the rest of the events are heartbeats: {heartbeats}"
        );
    }

    #[test]
    fn a_scenario_offers_its_rates_after_the_ramp() {
        let city = City::new(
            CityConfig::from_toml(crate::city::tests_support::SMALL).expect("city config"),
        )
        .expect("city");
        let config = ScenarioConfig::from_toml(
            r#"
name = "t"
city = "city.toml"
users = 1000
premium_share = 0.25
ramp_up_s = 2.0
duration_s = 4.0
city_hour = 8.0
[per_user]
quotes_per_s = 1.0
events_per_s = 2.0
"#,
        )
        .expect("scenario");
        let s = Scenario { config, city };
        let recs: Vec<Record> = ScenarioLoad::new(s, 1).collect();
        let steady = |quote: bool| {
            recs.iter()
                .filter(|r| r.at_us >= 2_000_000 && matches!(r.op, Op::Quote { .. }) == quote)
                .count() as f64
        };
        // 4 s at full load: 4,000 quotes and 8,000 events expected (Poisson: sd 63 and 89).
        assert!((steady(true) - 4_000.0).abs() < 400.0, "{}", steady(true));
        assert!((steady(false) - 8_000.0).abs() < 600.0, "{}", steady(false));
        // The ramp carries about half the full rate.
        let ramp = recs.iter().filter(|r| r.at_us < 2_000_000).count() as f64;
        assert!((ramp - 3_000.0).abs() < 400.0, "{ramp}");
        let premium = recs.iter().filter(|r| r.tier == Tier::Premium).count() as f64;
        let share = premium / recs.len() as f64;
        assert!((0.15..0.35).contains(&share), "{share}");
        assert!(recs.windows(2).all(|w| w[0].at_us <= w[1].at_us));
    }
}
