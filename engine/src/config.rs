//! The engine's configuration file (`configs/engine.toml`): every limit named, with its unit,
//! and every default documented.

use serde::Deserialize;

use crate::core::ZoneLimits;
use crate::fare::{Currency, FareError, FareTable};
use crate::policy::{PolicyError, SurgePolicy};

/// Everything the engine needs to start, besides a signing key and a clock.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EngineConfig {
    /// H3 resolution of zones; events and quotes for other resolutions are refused.
    /// Default 8 (~0.74 km² per zone).
    pub resolution: u8,
    /// This node's id, written into quote ids (top 16 bits). Default 1.
    pub node_id: u16,
    /// The actor shell.
    pub actors: ActorConfig,
    /// Quote issuing.
    pub quotes: QuoteConfig,
    /// Per-zone limits and windows.
    pub zone: ZoneLimits,
    /// The surge policy.
    pub policy: SurgePolicy,
    /// The fare table a zone starts with.
    pub default_fare: FareConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            resolution: crate::zone::RESOLUTION_DEFAULT,
            node_id: 1,
            actors: ActorConfig::default(),
            quotes: QuoteConfig::default(),
            zone: ZoneLimits::default(),
            policy: SurgePolicy::default(),
            default_fare: FareConfig::default(),
        }
    }
}

/// The actor shell's sizes and rates.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActorConfig {
    /// Zone shards (actors), each owning a disjoint set of zones. 0: one per CPU core.
    /// Default 0.
    pub shards: usize,
    /// Arbiter threads the shards run on. 0: one per CPU core. Default 0.
    pub arbiters: usize,
    /// Messages a shard's mailbox holds before senders get `overloaded`. Default 1,024.
    pub mailbox_capacity: usize,
    /// Pricing tick period; 0 disables the timer (ticks then come only on request, as in
    /// tests and benchmarks). Default 250 ms.
    pub tick_interval_ms: u64,
    /// Most zones live on this node; events creating more are rejected (`zone_limit`).
    /// Default 100,000.
    pub zones_max: usize,
    /// Most events in one batch; larger batches are refused whole. Default 4,096.
    pub batch_events_max: usize,
    /// A zone with no event for this long and no available driver is passivated (its
    /// memory freed). Must be at least the dedupe window. Default 600,000 ms.
    pub zone_idle_evict_ms: u64,
    /// Published snapshots the node remembers (all zones together, newest kept) for the
    /// admin's zone history; 0 keeps none. Default 65,536 (about 8 MiB).
    pub snapshot_history_max: usize,
}

impl Default for ActorConfig {
    fn default() -> Self {
        Self {
            shards: 0,
            arbiters: 0,
            mailbox_capacity: 1_024,
            tick_interval_ms: 250,
            zones_max: 100_000,
            batch_events_max: 4_096,
            zone_idle_evict_ms: 600_000,
            snapshot_history_max: 65_536,
        }
    }
}

/// Quote issuing.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QuoteConfig {
    /// How long a quote is honoured. Default 120,000 ms.
    pub ttl_ms: u64,
}

impl Default for QuoteConfig {
    fn default() -> Self {
        Self { ttl_ms: 120_000 }
    }
}

/// A fare table as written in config.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FareConfig {
    /// Version. Default 1.
    pub version: u32,
    /// Flag fall, minor units. Default 250.
    pub base_minor: u32,
    /// Per kilometre, minor units. Default 120.
    pub per_km_minor: u32,
    /// Per minute, minor units. Default 30.
    pub per_min_minor: u32,
    /// Minimum before surge, minor units. Default 700.
    pub minimum_minor: u32,
    /// Highest multiplier, thousandths. Default 3,000.
    pub surge_cap_milli: u32,
    /// Three-letter currency code. Default "EUR".
    pub currency: String,
}

impl Default for FareConfig {
    fn default() -> Self {
        Self {
            version: 1,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 700,
            surge_cap_milli: 3_000,
            currency: "EUR".to_owned(),
        }
    }
}

impl FareConfig {
    /// The validated fare table.
    pub fn to_table(&self) -> Result<FareTable, FareError> {
        FareTable {
            version: self.version,
            base_minor: self.base_minor,
            per_km_minor: self.per_km_minor,
            per_min_minor: self.per_min_minor,
            minimum_minor: self.minimum_minor,
            surge_cap_milli: self.surge_cap_milli,
            currency: Currency::new(&self.currency)?,
        }
        .validate()
    }
}

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML does not parse or has unknown fields.
    #[error("engine config: {0}")]
    Parse(#[from] toml::de::Error),
    /// A policy parameter is out of range.
    #[error("engine config: {0}")]
    Policy(#[from] PolicyError),
    /// The default fare table is invalid.
    #[error("engine config: default_fare: {0}")]
    Fare(#[from] FareError),
    /// Another field is out of range.
    #[error("engine config: `{field}` {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

impl EngineConfig {
    /// Parses and validates TOML text.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Self = toml::from_str(text)?;
        cfg.validate()
    }

    /// Checks every field and relation between fields.
    pub fn validate(self) -> Result<Self, ConfigError> {
        self.policy.clone().validate()?;
        self.default_fare.to_table()?;
        if self.resolution > 15 {
            return Err(invalid(
                "resolution",
                format!("= {} is not an H3 resolution (0..=15)", self.resolution),
            ));
        }
        let a = &self.actors;
        if a.shards > 1024 {
            return Err(invalid("actors.shards", "must be at most 1024"));
        }
        if a.arbiters > 256 {
            return Err(invalid("actors.arbiters", "must be at most 256"));
        }
        if a.mailbox_capacity == 0 {
            return Err(invalid("actors.mailbox_capacity", "must be at least 1"));
        }
        if a.zones_max == 0 || a.zones_max > 10_000_000 {
            return Err(invalid("actors.zones_max", "must be within 1..=10,000,000"));
        }
        if a.batch_events_max == 0 || a.batch_events_max > 1_000_000 {
            return Err(invalid(
                "actors.batch_events_max",
                "must be within 1..=1,000,000",
            ));
        }
        let z = &self.zone;
        if a.zone_idle_evict_ms < z.dedupe_window_ms.max(z.driver_ttl_ms) {
            return Err(invalid(
                "actors.zone_idle_evict_ms",
                "must be at least zone.dedupe_window_ms and zone.driver_ttl_ms (evicting sooner would forget event ids)",
            ));
        }
        if z.demand_half_life_s == 0 || z.demand_half_life_s > 3600 {
            return Err(invalid(
                "zone.demand_half_life_s",
                "must be within 1..=3600 (seconds)",
            ));
        }
        if z.riders_max > 1_000_000 {
            return Err(invalid("zone.riders_max", "must be at most 1,000,000"));
        }
        if z.drivers_max == 0 || z.dedupe_ids_max == 0 {
            return Err(invalid(
                "zone.drivers_max / zone.dedupe_ids_max",
                "must be at least 1",
            ));
        }
        if z.credential_share_percent == 0 || z.credential_share_percent > 100 {
            return Err(invalid(
                "zone.credential_share_percent",
                "must be within 1..=100 (percent)",
            ));
        }
        if self.quotes.ttl_ms == 0 {
            return Err(invalid("quotes.ttl_ms", "must be at least 1"));
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_parses_to_the_documented_defaults() {
        let text = include_str!("../../configs/engine.toml");
        let cfg = EngineConfig::from_toml(text).expect("configs/engine.toml is valid");
        assert_eq!(cfg, EngineConfig::default());
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused_with_their_name() {
        let e = EngineConfig::from_toml("[policy]\newma_alfa = 0.2").expect_err("typo");
        assert!(e.to_string().contains("ewma_alfa"), "{e}");
        let e = EngineConfig::from_toml("[policy]\newma_alpha = 2.0").expect_err("range");
        assert!(e.to_string().contains("ewma_alpha"), "{e}");
        let e = EngineConfig::from_toml("[actors]\nzone_idle_evict_ms = 10").expect_err("relation");
        assert!(e.to_string().contains("zone_idle_evict_ms"), "{e}");
        let e =
            EngineConfig::from_toml("[default_fare]\ncurrency = \"euro\"").expect_err("currency");
        assert!(e.to_string().contains("currency"), "{e}");
    }
}
