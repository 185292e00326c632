//! Equilibrium's cluster layer (membership, zone ownership, hand-off, Redis snapshots).
//!
//! Not built yet: issue 4 delivers it. The crate exists so the workspace already has the
//! shape of the architecture; it has no code and nothing depends on it.

#![forbid(unsafe_code)]
