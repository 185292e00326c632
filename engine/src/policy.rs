//! The surge policy: a pure function from a zone's demand, supply, neighbours and previous
//! state to its next multiplier. No clock, no randomness, no I/O.
//!
//! One step, in order (every stage is monotone non-decreasing in the demand/supply ratio,
//! so the whole step is):
//!
//! 1. `ratio = demand / max(supply, supply_floor)`, where demand counts rider signals and
//!    trip requests in the sliding window plus `quote_demand_weight` × quotes issued.
//! 2. `target = 1 + sensitivity · max(0, ratio − ratio_threshold)`, clamped to `[1, cap]`.
//! 3. EWMA smoothing: `smoothed = α · target + (1 − α) · smoothed_prev`.
//! 4. Neighbour blending: `blended = (1 − w) · smoothed + w · mean(neighbours)` when any
//!    neighbour has a price, else `smoothed`.
//! 5. Quantise to thousandths and clamp to `[1000, cap]`.
//! 6. Hysteresis: the published multiplier follows the blended value freely in the direction
//!    of its last move, but reverses direction only when the blended value is at least
//!    `hysteresis_milli` away, or has stayed on the other side for `reversal_dwell_ticks`
//!    consecutive ticks. A ratio that oscillates quickly around a threshold therefore cannot
//!    make the price flap, while a steady input still converges exactly to its target
//!    (including all the way back to 1.0 when demand goes away).
//! 7. Rate limit: the change per tick is at most `step_max_milli`.
//!
//! `cap` is the smaller of the policy's `cap_milli` and the zone fare table's surge cap.

use serde::Deserialize;

use crate::fare::MILLI;

/// Tunable parameters of the surge policy. Every field has a documented default
/// (see `configs/engine.toml`); `validate` rejects nonsense.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SurgePolicy {
    /// Identifies this parameter set in snapshots and quotes. Bump it with every change.
    /// Default 1.
    pub version: u32,
    /// Demand/supply ratio at which surge starts. Default 1.0.
    pub ratio_threshold: f64,
    /// Multiplier added per unit of ratio above the threshold. Default 0.5.
    pub sensitivity: f64,
    /// Supply is counted as at least this many drivers, so that one rider and zero drivers
    /// does not mean an infinite ratio. Default 1.
    pub supply_floor: u32,
    /// How much one quote counts as demand (riders asking prices are a demand signal).
    /// Default 0.25.
    pub quote_demand_weight: f64,
    /// Highest multiplier the policy produces, thousandths. Default 3000 (3.0×).
    pub cap_milli: u32,
    /// EWMA weight of the newest target, in (0, 1]. Default 0.3.
    pub ewma_alpha: f64,
    /// Dead band: the published multiplier reverses direction only for a move at least this
    /// large, thousandths. Default 50 (0.05×).
    pub hysteresis_milli: u32,
    /// Consecutive ticks the blended value must stay on the other side before the published
    /// multiplier reverses by less than `hysteresis_milli`. Default 8 (2 s at 250 ms ticks).
    pub reversal_dwell_ticks: u16,
    /// Largest change of the published multiplier in one tick, thousandths. Default 100.
    pub step_max_milli: u32,
    /// Weight of the neighbours' mean multiplier, in [0, 1). Default 0.25.
    pub neighbour_weight: f64,
    /// Observations (drivers + demand) at which confidence reaches 100%. Default 20.
    pub confidence_full_at: u32,
}

impl Default for SurgePolicy {
    fn default() -> Self {
        Self {
            version: 1,
            ratio_threshold: 1.0,
            sensitivity: 0.5,
            supply_floor: 1,
            quote_demand_weight: 0.25,
            cap_milli: 3000,
            ewma_alpha: 0.3,
            hysteresis_milli: 50,
            reversal_dwell_ticks: 8,
            step_max_milli: 100,
            neighbour_weight: 0.25,
            confidence_full_at: 20,
        }
    }
}

/// A policy parameter out of range; names the field and the accepted range.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("surge policy field `{field}` = {value} is invalid: {expected}")]
pub struct PolicyError {
    /// The offending field.
    pub field: &'static str,
    /// Its value, as text.
    pub value: String,
    /// What is accepted.
    pub expected: &'static str,
}

fn check(
    ok: bool,
    field: &'static str,
    value: impl ToString,
    expected: &'static str,
) -> Result<(), PolicyError> {
    if ok {
        Ok(())
    } else {
        Err(PolicyError {
            field,
            value: value.to_string(),
            expected,
        })
    }
}

impl SurgePolicy {
    /// Checks every parameter's range.
    pub fn validate(self) -> Result<Self, PolicyError> {
        check(self.version >= 1, "version", self.version, "at least 1")?;
        check(
            self.ratio_threshold.is_finite() && self.ratio_threshold >= 0.0,
            "ratio_threshold",
            self.ratio_threshold,
            "a finite number >= 0",
        )?;
        check(
            self.sensitivity.is_finite() && self.sensitivity >= 0.0,
            "sensitivity",
            self.sensitivity,
            "a finite number >= 0",
        )?;
        check(
            self.supply_floor >= 1,
            "supply_floor",
            self.supply_floor,
            "at least 1",
        )?;
        check(
            self.quote_demand_weight.is_finite()
                && (0.0..=100.0).contains(&self.quote_demand_weight),
            "quote_demand_weight",
            self.quote_demand_weight,
            "within [0, 100]",
        )?;
        check(
            (MILLI..=100 * MILLI).contains(&self.cap_milli),
            "cap_milli",
            self.cap_milli,
            "within [1000, 100000] (1x to 100x)",
        )?;
        check(
            self.ewma_alpha.is_finite() && self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0,
            "ewma_alpha",
            self.ewma_alpha,
            "within (0, 1]",
        )?;
        check(
            self.hysteresis_milli <= MILLI,
            "hysteresis_milli",
            self.hysteresis_milli,
            "at most 1000",
        )?;
        check(
            self.step_max_milli >= 1,
            "step_max_milli",
            self.step_max_milli,
            "at least 1",
        )?;
        check(
            self.neighbour_weight.is_finite() && (0.0..1.0).contains(&self.neighbour_weight),
            "neighbour_weight",
            self.neighbour_weight,
            "within [0, 1)",
        )?;
        check(
            self.confidence_full_at >= 1,
            "confidence_full_at",
            self.confidence_full_at,
            "at least 1",
        )?;
        Ok(self)
    }

    /// One policy step. Pure: the same state and inputs give the same bits.
    pub fn step(&self, state: &PolicyState, input: &PolicyInput) -> (PolicyState, StepOutput) {
        let cap_milli = self.cap_milli.min(input.fare_cap_milli).max(MILLI);
        let cap = f64::from(cap_milli) / f64::from(MILLI);

        let demand = f64::from(input.demand) + self.quote_demand_weight * f64::from(input.quotes);
        let supply = f64::from(input.supply.max(self.supply_floor));
        let ratio = demand / supply;
        let target =
            (1.0 + self.sensitivity * (ratio - self.ratio_threshold).max(0.0)).clamp(1.0, cap);

        let smoothed = self.ewma_alpha * target + (1.0 - self.ewma_alpha) * state.smoothed;
        let blended = match input.neighbour_mean_milli {
            Some(nb) => {
                let nb = f64::from(nb) / f64::from(MILLI);
                (1.0 - self.neighbour_weight) * smoothed + self.neighbour_weight * nb
            }
            None => smoothed,
        };
        let blended_milli = quantise(blended, cap_milli);

        let prev = state.published_milli.clamp(MILLI, cap_milli);
        // Moving on in the last direction is free; turning back needs the dead band or dwell.
        let same_way = match state.trend {
            Trend::Down => blended_milli <= prev,
            Trend::Up | Trend::Flat => blended_milli >= prev,
        };
        let against = if same_way {
            0
        } else {
            state.against_ticks.saturating_add(1)
        };
        let wanted = if same_way
            || blended_milli.abs_diff(prev) >= self.hysteresis_milli
            || against >= self.reversal_dwell_ticks
        {
            blended_milli
        } else {
            prev
        };
        let published_milli = if wanted > prev {
            wanted.min(prev.saturating_add(self.step_max_milli))
        } else {
            wanted.max(prev.saturating_sub(self.step_max_milli))
        };

        let observations =
            u64::from(input.supply) + u64::from(input.demand) + u64::from(input.quotes);
        let confidence_permille = (observations.saturating_mul(1000)
            / u64::from(self.confidence_full_at))
        .min(1000) as u16;

        let trend = match published_milli.cmp(&prev) {
            std::cmp::Ordering::Greater => Trend::Up,
            std::cmp::Ordering::Less => Trend::Down,
            std::cmp::Ordering::Equal => state.trend,
        };
        let against_ticks = if published_milli == prev { against } else { 0 };
        let next = PolicyState {
            smoothed,
            published_milli,
            trend,
            against_ticks,
        };
        let out = StepOutput {
            multiplier_milli: published_milli,
            target_milli: quantise(target, cap_milli),
            confidence_permille,
        };
        (next, out)
    }
}

/// Round to thousandths (half up) and clamp to `[1000, cap_milli]`.
fn quantise(x: f64, cap_milli: u32) -> u32 {
    // Inputs are >= 1.0, so truncation is floor; `as` maps NaN to 0 and saturates.
    let m = (x * f64::from(MILLI) + 0.5) as u64;
    m.clamp(u64::from(MILLI), u64::from(cap_milli)) as u32
}

/// What the policy remembers between ticks for one zone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyState {
    /// The EWMA of targets (unquantised, so that smoothing does not stall on rounding).
    pub smoothed: f64,
    /// The multiplier last published, thousandths.
    pub published_milli: u32,
    /// Direction of the last change of the published multiplier.
    pub trend: Trend,
    /// Consecutive ticks the blended value has stayed against the trend without moving it.
    pub against_ticks: u16,
}

/// Direction of the last change of a published multiplier (for hysteresis).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Trend {
    /// Never changed.
    #[default]
    Flat,
    /// Last change was an increase.
    Up,
    /// Last change was a decrease.
    Down,
}

impl Default for PolicyState {
    fn default() -> Self {
        Self {
            smoothed: 1.0,
            published_milli: MILLI,
            trend: Trend::Flat,
            against_ticks: 0,
        }
    }
}

/// The inputs of one step for one zone.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PolicyInput {
    /// Rider demand signals and trip requests in the sliding window.
    pub demand: u32,
    /// Quotes issued in the sliding window.
    pub quotes: u32,
    /// Distinct available drivers.
    pub supply: u32,
    /// Mean multiplier of the neighbours that have a price, thousandths; `None` if none do.
    pub neighbour_mean_milli: Option<u32>,
    /// The zone's fare-table surge cap, thousandths.
    pub fare_cap_milli: u32,
}

/// The result of one step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StepOutput {
    /// The multiplier to publish, thousandths, within `[1000, cap]`.
    pub multiplier_milli: u32,
    /// The unsmoothed target from the ratio alone, thousandths (for `explain`).
    pub target_milli: u32,
    /// How much data backs the multiplier, per mille.
    pub confidence_permille: u16,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(demand: u32, supply: u32) -> PolicyInput {
        PolicyInput {
            demand,
            quotes: 0,
            supply,
            neighbour_mean_milli: None,
            fare_cap_milli: 3000,
        }
    }

    #[test]
    fn balanced_zone_stays_at_one() {
        let p = SurgePolicy::default();
        let (_, out) = p.step(&PolicyState::default(), &input(5, 5));
        assert_eq!(out.multiplier_milli, 1000);
        assert_eq!(out.target_milli, 1000);
    }

    #[test]
    fn sustained_excess_demand_converges_to_the_target() {
        let p = SurgePolicy::default();
        let mut s = PolicyState::default();
        // ratio 3 → target 1 + 0.5·2 = 2.0
        for _ in 0..200 {
            s = p.step(&s, &input(30, 10)).0;
        }
        assert_eq!(s.published_milli, 2000);
    }

    #[test]
    fn the_fare_tables_cap_wins_when_lower() {
        let p = SurgePolicy::default();
        let mut s = PolicyState::default();
        let i = PolicyInput {
            fare_cap_milli: 1500,
            ..input(1000, 1)
        };
        for _ in 0..100 {
            s = p.step(&s, &i).0;
        }
        assert_eq!(s.published_milli, 1500);
    }

    #[test]
    fn invalid_parameters_name_the_field() {
        let e = SurgePolicy {
            ewma_alpha: 0.0,
            ..SurgePolicy::default()
        }
        .validate()
        .expect_err("invalid");
        assert_eq!(e.field, "ewma_alpha");
        let e = SurgePolicy {
            cap_milli: 900,
            ..SurgePolicy::default()
        }
        .validate()
        .expect_err("invalid");
        assert_eq!(e.field, "cap_milli");
    }
}
