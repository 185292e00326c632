//! What the commands print, shared by the client and the admin commands: aligned tables,
//! JSON values, and how multipliers, zones, tokens and fare tables are written.

use protocol::msg;
use serde_json::{json, Value};

/// Rows of `label  value`, aligned.
#[derive(Debug, Default)]
pub(crate) struct Table(Vec<(&'static str, String)>);

impl Table {
    pub(crate) fn row(mut self, label: &'static str, value: impl std::fmt::Display) -> Self {
        self.0.push((label, value.to_string()));
        self
    }

    pub(crate) fn print(&self) {
        use std::io::Write as _;
        let w = self.0.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut out = std::io::stdout().lock();
        for (l, v) in &self.0 {
            // A closed pipe (`| head`) ends the output quietly instead of panicking.
            if writeln!(out, "{l:<w$}  {v}").is_err() {
                return;
            }
        }
    }
}

/// Prints one JSON value, pretty, on standard output.
pub(crate) fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    );
}

/// Thousandths as a multiplier: `1250` → `1.250x`.
pub(crate) fn milli(m: u32) -> String {
    format!("{}.{:03}x", m / 1000, m % 1000)
}

/// A zone id as printed everywhere: H3 hex.
pub(crate) fn zone_hex(z: u64) -> String {
    format!("{z:x}")
}

/// A fare table as JSON (the same fields as the wire's).
pub(crate) fn fare_json(f: &msg::WireFare) -> Value {
    json!({
        "version": f.version,
        "currency": String::from_utf8_lossy(&f.currency),
        "base_minor": f.base_minor,
        "per_km_minor": f.per_km_minor,
        "per_min_minor": f.per_min_minor,
        "minimum_minor": f.minimum_minor,
        "surge_cap_milli": f.surge_cap_milli,
    })
}

/// A verified token's contents as JSON.
pub(crate) fn token_json(t: &msg::TokenInfo) -> Value {
    json!({
        "quote_id": t.quote_id,
        "zone": zone_hex(t.zone),
        "amount_minor": t.amount_minor,
        "currency": String::from_utf8_lossy(&t.currency),
        "multiplier_milli": t.multiplier_milli,
        "snapshot_version": t.snapshot_version,
        "issued_at_ms": t.issued_at_ms,
        "expires_at_ms": t.expires_at_ms,
        "fare_version": t.fare_version,
        "policy_version": t.policy_version,
        "distance_m": t.distance_m,
        "duration_s": t.duration_s,
        "supply": t.supply,
        "demand": t.demand,
        "quotes": t.quotes,
        "neighbour_mean_milli": t.neighbour_mean_milli,
        "target_milli": t.target_milli,
        "confidence_permille": t.confidence_permille,
        "key_id": t.key_id,
    })
}

/// Bytes in lower-case hex.
pub(crate) fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}
