//! `explain`: the inputs behind a quote's price, re-derived and checked.

use std::fmt;

use crate::fare::{fare_minor, FareTable, MILLI};
use crate::policy::SurgePolicy;
use crate::quote::QuoteToken;

/// Why a price is what it is. Built from a verified token plus the fare table and policy of
/// the versions the token names (when the node still holds them).
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation {
    /// The verified quote.
    pub token: QuoteToken,
    /// `demand + quote_demand_weight · quotes` over `max(supply, supply_floor)` (from the
    /// token's rounded counts), when the policy version is known.
    pub ratio: Option<f64>,
    /// The fare table the quote used, if still retained.
    pub fare: Option<FareTable>,
    /// The policy the quote used, if it is the current one.
    pub policy: Option<SurgePolicy>,
    /// The amount recomputed from the fare table and the token's multiplier; equals the
    /// token's amount unless the pricing code changed.
    pub recomputed_minor: Option<u64>,
}

impl Explanation {
    /// Assembles an explanation; `fare` and `policy` must match the token's versions.
    pub fn new(token: QuoteToken, fare: Option<FareTable>, policy: Option<SurgePolicy>) -> Self {
        let fare = fare.filter(|f| f.version == token.fare_version);
        let policy = policy.filter(|p| p.version == token.policy_version);
        let ratio = policy.as_ref().map(|p| {
            (f64::from(token.demand) + p.quote_demand_weight * f64::from(token.quotes))
                / f64::from(token.supply.max(p.supply_floor))
        });
        let recomputed_minor = fare.map(|f| fare_minor(&f, token.trip, token.multiplier_milli));
        Self {
            token,
            ratio,
            fare,
            policy,
            recomputed_minor,
        }
    }

    /// True when the fare table was available and reproduces the quoted amount exactly.
    pub fn reproduces(&self) -> bool {
        self.recomputed_minor == Some(self.token.amount_minor)
    }
}

fn milli(m: u32) -> String {
    format!("{}.{:03}", m / MILLI, m % MILLI)
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = &self.token;
        writeln!(
            f,
            "quote {:#x} for zone {} ({} m, {} s)",
            t.quote_id, t.zone, t.trip.distance_m, t.trip.duration_s
        )?;
        writeln!(
            f,
            "  amount      {} {} (minor units)",
            t.amount_minor, t.currency
        )?;
        writeln!(
            f,
            "  multiplier  {}x from snapshot v{}",
            milli(t.multiplier_milli),
            t.snapshot_version
        )?;
        writeln!(f, "  supply      {} available drivers", t.supply)?;
        writeln!(
            f,
            "  demand      {} recent rider sessions + {} recent quotes (decaying counts)",
            t.demand, t.quotes
        )?;
        if let Some(r) = self.ratio {
            writeln!(f, "  ratio       {r:.3}")?;
        }
        writeln!(
            f,
            "  target      {}x before smoothing (balance and confidence)",
            milli(t.target_milli)
        )?;
        if t.neighbour_mean_milli > 0 {
            writeln!(f, "  neighbours  {}x mean", milli(t.neighbour_mean_milli))?;
        } else {
            writeln!(f, "  neighbours  none")?;
        }
        writeln!(
            f,
            "  confidence  {:.1}%",
            f64::from(t.confidence_permille) / 10.0
        )?;
        match &self.policy {
            Some(p) => writeln!(
                f,
                "  policy      v{}: dead band {} above balance, sensitivity {}, smoothing half-life {} s, hold {} s, at most {}x/min, neighbour weight {}, cap {}x",
                p.version,
                p.balance_dead_band,
                p.sensitivity,
                p.smoothing_half_life_s,
                p.hold_s,
                milli(p.change_per_min_max_milli),
                p.neighbour_weight,
                milli(p.cap_milli)
            )?,
            None => writeln!(f, "  policy      v{} (no longer current on this node)", t.policy_version)?,
        }
        match &self.fare {
            Some(fare) => {
                writeln!(
                    f,
                    "  fare table  v{}: base {}, per km {}, per min {}, minimum {}, cap {}x",
                    fare.version,
                    fare.base_minor,
                    fare.per_km_minor,
                    fare.per_min_minor,
                    fare.minimum_minor,
                    milli(fare.surge_cap_milli)
                )?;
                writeln!(
                    f,
                    "  formula     max({}, {} + {}·{:.3} km + {}·{:.3} min) · {} = {} → {}",
                    fare.minimum_minor,
                    fare.base_minor,
                    fare.per_km_minor,
                    f64::from(t.trip.distance_m) / 1000.0,
                    fare.per_min_minor,
                    f64::from(t.trip.duration_s) / 60.0,
                    milli(t.multiplier_milli),
                    self.recomputed_minor.unwrap_or_default(),
                    if self.reproduces() {
                        "matches the quote"
                    } else {
                        "DOES NOT match the quote"
                    }
                )?;
            }
            None => writeln!(
                f,
                "  fare table  v{} (not held by this node: ask the zone's owner, or it is no longer retained)",
                t.fare_version
            )?,
        }
        writeln!(
            f,
            "  valid       {} → {} (ms since epoch)",
            t.issued_at_ms, t.expires_at_ms
        )
    }
}
