//! Equilibrium's wire protocol (framing, message types, error codes, limits).
//!
//! Not built yet: issue 3 delivers it. The crate exists so the workspace already has the
//! shape of the architecture; it has no code and nothing depends on it.

#![forbid(unsafe_code)]
