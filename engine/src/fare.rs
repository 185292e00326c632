//! Fare tables and the fare formula, in integer minor units (cents); no floats touch money.
//!
//! # The formula and its one rounding rule
//!
//! ```text
//! pre_surge = max(minimum, base + per_km · km + per_min · minutes)
//! fare      = pre_surge · multiplier
//! ```
//!
//! Every term is computed **exactly** as a rational number (distance in metres, duration in
//! seconds, multiplier in thousandths), and the result is rounded **once**, at the end, to
//! the nearest minor unit, **halves rounding up** (away from zero; fares are never negative).
//! The minimum fare applies before surge, as in the brief. The multiplier has already been
//! capped by the zone's fare table (`surge_cap_milli`) and the policy when it reaches here.

use std::fmt;

/// Thousandths: `1000` is a multiplier of 1.0.
pub const MILLI: u32 = 1000;

/// An ISO-4217-style currency code, three ASCII upper-case letters.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    /// Validates three ASCII upper-case letters.
    pub fn new(code: &str) -> Result<Self, FareError> {
        let b = code.as_bytes();
        if b.len() == 3 && b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self([b[0], b[1], b[2]]))
        } else {
            Err(FareError::InvalidCurrency(code.to_owned()))
        }
    }

    /// From raw bytes (e.g. a decoded token); validates like [`Currency::new`].
    pub fn from_bytes(b: [u8; 3]) -> Result<Self, FareError> {
        if b.iter().all(u8::is_ascii_uppercase) {
            Ok(Self(b))
        } else {
            Err(FareError::InvalidCurrency(
                String::from_utf8_lossy(&b).into_owned(),
            ))
        }
    }

    /// Bytes that came from a validated `Currency` of this process (no re-validation).
    pub(crate) const fn from_trusted(b: [u8; 3]) -> Self {
        Self(b)
    }

    /// The three ASCII bytes.
    pub const fn bytes(self) -> [u8; 3] {
        self.0
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Invariant: always ASCII.
        std::str::from_utf8(&self.0).unwrap_or("???")
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A zone's fare table. Versioned: every change gets a higher version, which quotes carry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FareTable {
    /// Strictly increases with every change; quotes and snapshots name the version they used.
    pub version: u32,
    /// Flag fall, in minor units.
    pub base_minor: u32,
    /// Price per kilometre, in minor units.
    pub per_km_minor: u32,
    /// Price per minute, in minor units.
    pub per_min_minor: u32,
    /// The least a trip costs before surge, in minor units.
    pub minimum_minor: u32,
    /// The highest multiplier this zone may charge, in thousandths (≥ 1000).
    pub surge_cap_milli: u32,
    /// Currency of every amount above.
    pub currency: Currency,
}

/// Why a fare table or a trip is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FareError {
    /// Not three upper-case ASCII letters.
    #[error("invalid currency {0:?}: expected three upper-case letters such as \"EUR\"")]
    InvalidCurrency(String),
    /// A surge cap below 1.0 would discount, which surge pricing never does.
    #[error("surge cap {0} milli is below 1000 (1.0x)")]
    CapBelowOne(u32),
    /// Versions start at 1 so that 0 can mean "none" on the wire.
    #[error("fare table version must be at least 1")]
    ZeroVersion,
    /// A trip longer than the engine accepts.
    #[error("trip distance {0} m exceeds the limit of {TRIP_DISTANCE_M_MAX} m")]
    DistanceTooLong(u32),
    /// A trip longer in time than the engine accepts.
    #[error("trip duration {0} s exceeds the limit of {TRIP_DURATION_S_MAX} s")]
    DurationTooLong(u32),
}

/// The longest trip priced: 1,000 km. Longer requests are refused, not clamped.
pub const TRIP_DISTANCE_M_MAX: u32 = 1_000_000;
/// The longest trip duration priced: 24 hours.
pub const TRIP_DURATION_S_MAX: u32 = 86_400;

impl FareTable {
    /// Checks the table's invariants.
    pub fn validate(self) -> Result<Self, FareError> {
        if self.version == 0 {
            return Err(FareError::ZeroVersion);
        }
        if self.surge_cap_milli < MILLI {
            return Err(FareError::CapBelowOne(self.surge_cap_milli));
        }
        Ok(self)
    }

    /// The fare of a trip at a multiplier, per the module's rounding rule.
    ///
    /// `multiplier_milli` is used as given (callers cap it); the trip is validated.
    pub fn fare(&self, trip: Trip, multiplier_milli: u32) -> Result<u64, FareError> {
        let trip = trip.validate()?;
        Ok(fare_minor(self, trip, multiplier_milli))
    }
}

/// A trip to price: straight numbers, validated against the trip limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Trip {
    /// Expected distance, metres.
    pub distance_m: u32,
    /// Expected duration, seconds.
    pub duration_s: u32,
}

impl Trip {
    /// Checks the trip limits.
    pub fn validate(self) -> Result<Self, FareError> {
        if self.distance_m > TRIP_DISTANCE_M_MAX {
            return Err(FareError::DistanceTooLong(self.distance_m));
        }
        if self.duration_s > TRIP_DURATION_S_MAX {
            return Err(FareError::DurationTooLong(self.duration_s));
        }
        Ok(self)
    }
}

/// Denominator of the exact pre-surge amount: metres→km (1000) × seconds→minutes (60).
const PRE_DENOM: u128 = 60_000;
/// Denominator of the exact surged amount (multiplier in thousandths).
const DENOM: u128 = PRE_DENOM * MILLI as u128;

/// The fare formula on validated inputs. Exact rational arithmetic, one rounding (half up)
/// at the end. Allocation-free; used on the quote path.
///
/// Realistic fares fit in `u64` all the way (division by a constant there compiles to a
/// multiply and a shift); only extreme tables fall back to the slower `u128` path, which
/// computes the same value.
#[inline]
pub(crate) fn fare_minor(t: &FareTable, trip: Trip, multiplier_milli: u32) -> u64 {
    // Every term below fits u64: u32 · 60_000, u32 · 1_000_000 · 60, u32 · 86_400 · 1000.
    let base = u64::from(t.base_minor) * PRE_DENOM as u64;
    let dist = u64::from(t.per_km_minor) * u64::from(trip.distance_m) * 60;
    let time = u64::from(t.per_min_minor) * u64::from(trip.duration_s) * 1000;
    let minimum = u64::from(t.minimum_minor) * PRE_DENOM as u64;
    let pre = base
        .checked_add(dist)
        .and_then(|x| x.checked_add(time))
        .map(|x| x.max(minimum));
    match pre
        .and_then(|p| p.checked_mul(u64::from(multiplier_milli)))
        .and_then(|s| s.checked_add(DENOM as u64 / 2))
    {
        Some(scaled) => scaled / DENOM as u64,
        None => fare_minor_wide(t, trip, multiplier_milli),
    }
}

/// The same formula in `u128`, for tables whose products overflow `u64`.
#[cold]
fn fare_minor_wide(t: &FareTable, trip: Trip, multiplier_milli: u32) -> u64 {
    let base = u128::from(t.base_minor) * PRE_DENOM;
    let dist = u128::from(t.per_km_minor) * u128::from(trip.distance_m) * 60;
    let time = u128::from(t.per_min_minor) * u128::from(trip.duration_s) * 1000;
    let pre = (base + dist + time).max(u128::from(t.minimum_minor) * PRE_DENOM);
    let scaled = pre * u128::from(multiplier_milli);
    let rounded = (scaled + DENOM / 2) / DENOM;
    // With every input bounded (u32 prices, trip limits, u32 multiplier) the result fits.
    u64::try_from(rounded).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> FareTable {
        FareTable {
            version: 1,
            base_minor: 250,
            per_km_minor: 120,
            per_min_minor: 30,
            minimum_minor: 700,
            surge_cap_milli: 3000,
            currency: Currency::new("EUR").expect("valid"),
        }
    }

    fn trip(distance_m: u32, duration_s: u32) -> Trip {
        Trip {
            distance_m,
            duration_s,
        }
    }

    #[test]
    fn fare_is_base_plus_distance_plus_time_times_multiplier() {
        // 250 + 120·5.0 + 30·10 = 1150; ×1.5 = 1725.
        assert_eq!(table().fare(trip(5000, 600), 1500), Ok(1725));
    }

    #[test]
    fn minimum_fare_applies_before_surge() {
        // 250 + 120·0.1 + 30·1 = 292 < 700 → 700; ×2.0 = 1400.
        assert_eq!(table().fare(trip(100, 60), 2000), Ok(1400));
        assert_eq!(table().fare(trip(0, 0), 1000), Ok(700));
    }

    #[test]
    fn half_a_minor_unit_rounds_up_and_less_rounds_down() {
        let t = FareTable {
            base_minor: 1,
            per_km_minor: 0,
            per_min_minor: 0,
            minimum_minor: 0,
            ..table()
        };
        // 1 × 1.5 = 1.5 → 2 ; 1 × 1.499 = 1.499 → 1 ; 1 × 2.5 = 2.5 → 3.
        assert_eq!(t.fare(trip(0, 0), 1500), Ok(2));
        assert_eq!(t.fare(trip(0, 0), 1499), Ok(1));
        assert_eq!(t.fare(trip(0, 0), 2500), Ok(3));
        // Distance alone: 1 cent/km over 500 m = 0.5 → 1; over 499 m = 0.499 → 0.
        let d = FareTable {
            base_minor: 0,
            per_km_minor: 1,
            ..t
        };
        assert_eq!(d.fare(trip(500, 0), 1000), Ok(1));
        assert_eq!(d.fare(trip(499, 0), 1000), Ok(0));
        // Time alone: 1 cent/min over 30 s = 0.5 → 1; 29 s → 0.
        let m = FareTable {
            base_minor: 0,
            per_min_minor: 1,
            ..t
        };
        assert_eq!(m.fare(trip(0, 30), 1000), Ok(1));
        assert_eq!(m.fare(trip(0, 29), 1000), Ok(0));
    }

    #[test]
    fn rounding_happens_once_not_per_term() {
        // Two terms of 0.5 each: per-term rounding would give 2, exact sum 1.0 gives 1.
        let t = FareTable {
            base_minor: 0,
            per_km_minor: 1,
            per_min_minor: 1,
            minimum_minor: 0,
            ..table()
        };
        assert_eq!(t.fare(trip(500, 30), 1000), Ok(1));
    }

    #[test]
    fn the_fast_and_wide_paths_agree() {
        let t = table();
        for (d, s, m) in [
            (0, 0, 1000),
            (5000, 600, 1500),
            (1_000_000, 86_400, 3000),
            (123_457, 9_876, 2_345),
        ] {
            let trip = Trip {
                distance_m: d,
                duration_s: s,
            };
            assert_eq!(fare_minor(&t, trip, m), fare_minor_wide(&t, trip, m));
        }
    }

    #[test]
    fn largest_inputs_do_not_overflow() {
        let t = FareTable {
            base_minor: u32::MAX,
            per_km_minor: u32::MAX,
            per_min_minor: u32::MAX,
            minimum_minor: u32::MAX,
            surge_cap_milli: u32::MAX,
            ..table()
        };
        let f = t
            .fare(trip(TRIP_DISTANCE_M_MAX, TRIP_DURATION_S_MAX), 3000)
            .expect("valid");
        assert!(f > u64::from(u32::MAX));
    }

    #[test]
    fn oversized_trips_and_bad_tables_are_refused() {
        assert_eq!(
            table().fare(trip(TRIP_DISTANCE_M_MAX + 1, 0), 1000),
            Err(FareError::DistanceTooLong(1_000_001))
        );
        assert_eq!(
            table().fare(trip(0, 86_401), 1000),
            Err(FareError::DurationTooLong(86_401))
        );
        assert_eq!(
            FareTable {
                surge_cap_milli: 999,
                ..table()
            }
            .validate(),
            Err(FareError::CapBelowOne(999))
        );
        assert_eq!(
            FareTable {
                version: 0,
                ..table()
            }
            .validate(),
            Err(FareError::ZeroVersion)
        );
        assert!(Currency::new("eur").is_err());
        assert!(Currency::new("EURO").is_err());
    }
}
