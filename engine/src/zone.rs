//! Zone identifiers: H3 cells, as the reference H3 library computes them (via `h3o`).

use std::fmt;

use h3o::{CellIndex, LatLng, Resolution};

/// The H3 resolution a zone uses unless configured otherwise (~0.74 km² per cell).
pub const RESOLUTION_DEFAULT: u8 = 8;

/// A zone: one H3 cell, carried as its 64-bit index.
///
/// A `ZoneId` is always a valid H3 cell index: the constructors validate.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ZoneId(u64);

/// Why a value is not a zone.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ZoneError {
    /// Latitude outside [-90, 90] degrees or not a finite number.
    #[error("invalid latitude {0}: must be a finite number within [-90, 90] degrees")]
    InvalidLatitude(f64),
    /// Longitude outside [-180, 180] degrees or not a finite number.
    #[error("invalid longitude {0}: must be a finite number within [-180, 180] degrees")]
    InvalidLongitude(f64),
    /// The resolution is not an H3 resolution (0..=15).
    #[error("invalid H3 resolution {0}: must be within 0..=15")]
    InvalidResolution(u8),
    /// The integer is not a valid H3 cell index.
    #[error("{0:#x} is not a valid H3 cell index")]
    InvalidCell(u64),
    /// The cell is valid but at another resolution than this engine serves.
    #[error("zone {zone:#x} is at resolution {actual}, this engine serves resolution {expected}")]
    WrongResolution {
        /// The offending zone.
        zone: u64,
        /// Its resolution.
        actual: u8,
        /// The resolution configured for the engine.
        expected: u8,
    },
}

impl ZoneId {
    /// Validates a raw H3 cell index.
    pub fn new(raw: u64) -> Result<Self, ZoneError> {
        CellIndex::try_from(raw)
            .map(|c| Self(u64::from(c)))
            .map_err(|_| ZoneError::InvalidCell(raw))
    }

    /// The zone containing a point, as the reference H3 library's `latLngToCell`.
    pub fn from_lat_lng(lat: f64, lng: f64, resolution: u8) -> Result<Self, ZoneError> {
        if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
            return Err(ZoneError::InvalidLatitude(lat));
        }
        if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
            return Err(ZoneError::InvalidLongitude(lng));
        }
        let res = Resolution::try_from(resolution)
            .map_err(|_| ZoneError::InvalidResolution(resolution))?;
        let ll = LatLng::new(lat, lng).map_err(|_| ZoneError::InvalidLatitude(lat))?;
        Ok(Self(u64::from(ll.to_cell(res))))
    }

    /// A zone from an index this process validated earlier (e.g. stored in the snapshot
    /// table); `None` for 0. Never use on untrusted input: it skips validation.
    pub(crate) fn from_raw_trusted(raw: u64) -> Option<Self> {
        (raw != 0).then_some(Self(raw))
    }

    /// The raw 64-bit H3 index.
    pub const fn raw(self) -> u64 {
        self.0
    }

    fn cell(self) -> CellIndex {
        // Invariant: constructed only from valid cells.
        CellIndex::try_from(self.0).expect("ZoneId holds a valid cell")
    }

    /// The H3 resolution of this zone.
    pub fn resolution(self) -> u8 {
        u8::from(self.cell().resolution())
    }

    /// Checks that this zone is at the resolution an engine serves.
    pub fn check_resolution(self, expected: u8) -> Result<Self, ZoneError> {
        let actual = self.resolution();
        if actual == expected {
            Ok(self)
        } else {
            Err(ZoneError::WrongResolution {
                zone: self.0,
                actual,
                expected,
            })
        }
    }

    /// The centre of the cell, in degrees (lat, lng).
    pub fn center(self) -> (f64, f64) {
        let ll = LatLng::from(self.cell());
        (ll.lat(), ll.lng())
    }

    /// The adjacent cells (6 for a hexagon, 5 for a pentagon), used to blend prices
    /// across borders.
    pub fn neighbours(self) -> Neighbours {
        let mut out = Neighbours {
            ids: [0; 6],
            len: 0,
        };
        for c in self.cell().grid_disk_safe(1) {
            let raw = u64::from(c);
            if raw != self.0 && (out.len as usize) < out.ids.len() {
                out.ids[out.len as usize] = raw;
                out.len += 1;
            }
        }
        out
    }
}

/// The ring of cells adjacent to a zone, stored inline (no allocation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbours {
    ids: [u64; 6],
    len: u8,
}

impl Neighbours {
    /// The neighbouring zones.
    pub fn iter(&self) -> impl Iterator<Item = ZoneId> + '_ {
        self.ids[..self.len as usize].iter().map(|&r| ZoneId(r))
    }

    /// How many neighbours (6, or 5 around a pentagon).
    pub fn len(&self) -> usize {
        self.len as usize
    }

    /// Always false for a real cell; present for API symmetry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for ZoneId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ZoneId({:x})", self.0)
    }
}

impl fmt::Display for ZoneId {
    /// H3's canonical textual form: lower-case hex without prefix.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

impl std::str::FromStr for ZoneId {
    type Err = ZoneError;

    /// Parses H3's hex form, with or without a `0x` prefix.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let hex = s.trim().trim_start_matches("0x");
        let raw = u64::from_str_radix(hex, 16).map_err(|_| ZoneError::InvalidCell(0))?;
        Self::new(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_coordinates_are_rejected_with_the_offending_value() {
        assert_eq!(
            ZoneId::from_lat_lng(91.0, 0.0, 8),
            Err(ZoneError::InvalidLatitude(91.0))
        );
        assert_eq!(
            ZoneId::from_lat_lng(0.0, -180.5, 8),
            Err(ZoneError::InvalidLongitude(-180.5))
        );
        assert!(matches!(
            ZoneId::from_lat_lng(f64::NAN, 0.0, 8),
            Err(ZoneError::InvalidLatitude(_))
        ));
        assert_eq!(
            ZoneId::from_lat_lng(0.0, 0.0, 16),
            Err(ZoneError::InvalidResolution(16))
        );
    }

    #[test]
    fn invalid_cell_indexes_are_rejected() {
        assert_eq!(ZoneId::new(0), Err(ZoneError::InvalidCell(0)));
        assert_eq!(ZoneId::new(u64::MAX), Err(ZoneError::InvalidCell(u64::MAX)));
    }

    #[test]
    fn hexagons_have_six_neighbours_that_are_adjacent_cells() {
        let z = ZoneId::from_lat_lng(40.758, -73.9855, 8).expect("valid");
        let n = z.neighbours();
        assert_eq!(n.len(), 6);
        let mut got: Vec<u64> = n.iter().map(ZoneId::raw).collect();
        got.sort_unstable();
        // From the reference library: h3.grid_disk('882a100d67fffff', 1) minus the centre.
        let want = [
            0x882a100d29fffff,
            0x882a100d2dfffff,
            0x882a100d61fffff,
            0x882a100d63fffff,
            0x882a100d65fffff,
            0x882a10725bfffff,
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn zone_ids_round_trip_through_their_hex_form() {
        let z = ZoneId::from_lat_lng(51.5007, -0.1246, 8).expect("valid");
        assert_eq!(z.to_string().parse::<ZoneId>(), Ok(z));
        assert_eq!(format!("0x{z}").parse::<ZoneId>(), Ok(z));
        assert_eq!(z.check_resolution(8), Ok(z));
        assert!(matches!(
            z.check_resolution(9),
            Err(ZoneError::WrongResolution { actual: 8, .. })
        ));
    }
}
