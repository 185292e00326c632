//! Equilibrium's traffic simulator (synthetic city, trace record/replay, SLA report).
//!
//! Not built yet: issue 5 delivers it (today `equilibrium demo` carries a small synthetic
//! city of its own). The crate exists so the workspace already has the shape of the
//! architecture; it has no code and nothing depends on it.

#![forbid(unsafe_code)]
