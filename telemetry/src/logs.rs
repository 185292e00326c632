//! Log set-up: one `tracing` subscriber writing to standard error, human-readable or one JSON
//! object per line, at a configured level that `RUST_LOG` overrides.
//!
//! In JSON every line carries the event's fields and the spans it happened in (`span` and
//! `spans`), so work done under a span (`tracing::info_span!("handoff", group = %g)`) can be
//! found by its fields. Human lines are coloured only when standard error is a terminal.

use std::io::IsTerminal as _;

/// How log lines look.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: `2025-01-01T00:00:00Z  INFO target: message key=value`.
    #[default]
    Human,
    /// For machines: one JSON object per line.
    Json,
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The level (or `RUST_LOG`) is not a valid filter.
    #[error("invalid log level {directive:?}: {reason} (use error, warn, info, debug, trace or directives like `info,server=debug`)")]
    Level {
        /// What was given.
        directive: String,
        /// Why it does not parse.
        reason: String,
    },
    /// A subscriber was already installed in this process.
    #[error("logging was already set up")]
    AlreadySet,
}

/// Installs the process's subscriber. `level` is a filter directive (`info`,
/// `warn,server=debug`); a non-empty `RUST_LOG` replaces it.
pub fn init(format: LogFormat, level: &str) -> Result<(), LogError> {
    use tracing_subscriber::EnvFilter;
    let directive = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v,
        _ => level.to_owned(),
    };
    let filter = EnvFilter::try_new(&directive).map_err(|e| LogError::Level {
        directive: directive.clone(),
        reason: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
    }
    .map_err(|_| LogError::AlreadySet)
}
