//! Helpers shared by the engine's integration tests (each test file is its own crate and
//! includes this module).

use engine::ZoneId;

/// `n` distinct resolution-8 cells in a contiguous block (a grid stepped in latitude and
/// longitude, duplicates skipped), the same every run.
pub(crate) fn zones(n: usize) -> Vec<ZoneId> {
    let mut out = Vec::with_capacity(n);
    let mut seen = std::collections::HashSet::new();
    let mut i = 0u32;
    while out.len() < n {
        let lat = 30.0 + f64::from(i % 400) * 0.004;
        let lng = 10.0 + f64::from(i / 400) * 0.005;
        i += 1;
        let z = ZoneId::from_lat_lng(lat, lng, 8).expect("valid");
        if seen.insert(z) {
            out.push(z);
        }
    }
    out
}
