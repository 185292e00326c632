//! The node's readiness, as `/health` reports it to orchestrators: `200` while serving, `503`
//! otherwise, with a small JSON body saying why.

use std::sync::RwLock;

/// Where the node is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HealthState {
    /// Started, not yet accepting clients.
    Starting,
    /// Accepting and answering clients.
    Serving,
    /// Up but not ready to serve, and why (e.g. the cluster layer restoring zones on
    /// take-over: `"restoring"`, or `"joining"`).
    NotReady(&'static str),
    /// Draining: new requests are refused `shutting_down`.
    ShuttingDown,
}

impl HealthState {
    /// Whether `/health` answers 200.
    pub fn serving(self) -> bool {
        self == Self::Serving
    }

    /// The `status` field of the JSON body.
    pub fn name(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Serving => "serving",
            Self::NotReady(_) => "not_ready",
            Self::ShuttingDown => "shutting_down",
        }
    }
}

/// The node's readiness. Written a few times in a node's life, read once per `/health`.
#[derive(Debug)]
pub struct Health(RwLock<HealthState>);

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// `Starting`.
    pub fn new() -> Self {
        Self(RwLock::new(HealthState::Starting))
    }

    /// The state now.
    pub fn state(&self) -> HealthState {
        *self.0.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Moves to `state`. Once shutting down, a node stays so.
    pub fn set(&self, state: HealthState) {
        let mut s = self.0.write().unwrap_or_else(|p| p.into_inner());
        if *s != HealthState::ShuttingDown {
            *s = state;
        }
    }

    /// The `/health` answer: HTTP status and JSON body.
    pub fn answer(&self, node_id: u16, uptime_s: f64) -> (u16, String) {
        let state = self.state();
        let reason = match state {
            HealthState::NotReady(r) => format!(",\"reason\":\"{}\"", json_escape(r)),
            _ => String::new(),
        };
        let body = format!(
            "{{\"status\":\"{}\"{reason},\"node_id\":{node_id},\"uptime_s\":{uptime_s:.3}}}\n",
            state.name()
        );
        (if state.serving() { 200 } else { 503 }, body)
    }
}

fn json_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| match c {
            '"' | '\\' => vec!['\\', c],
            c if c.is_control() => vec![],
            c => vec![c],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_200_only_while_serving_and_shutdown_is_final() {
        let h = Health::new();
        assert_eq!(h.answer(1, 0.0).0, 503);
        h.set(HealthState::Serving);
        let (code, body) = h.answer(7, 1.5);
        assert_eq!(code, 200);
        assert_eq!(
            body,
            "{\"status\":\"serving\",\"node_id\":7,\"uptime_s\":1.500}\n"
        );
        h.set(HealthState::NotReady("restoring"));
        let (code, body) = h.answer(7, 1.5);
        assert_eq!(code, 503);
        assert!(body.contains("\"reason\":\"restoring\""), "{body}");
        h.set(HealthState::ShuttingDown);
        h.set(HealthState::Serving);
        assert_eq!(h.state(), HealthState::ShuttingDown);
    }
}
