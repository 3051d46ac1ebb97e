//! Logging: the first thing a binary sets up; renders every `tracing` event as one JSON line (or text) on stderr.
//!
//! JSON lines are *flattened*: the event's fields sit at the top level beside the metadata, so a line looks like
//! `{"timestamp":"…","level":"INFO","message":"listening on mqtt 127.0.0.1:1883","event":"listening","role":"mqtt",
//! "addr":"127.0.0.1:1883","target":"fleetgate_broker::listener","span":{…}}` — `jq 'select(.event=="connect")'`
//! works without digging into a nested object. `span` (the current span's fields, e.g. `conn.id`) is present only
//! inside a span.

use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The filter used when `RUST_LOG` is unset or unparsable.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// One flattened JSON object per line (the default; what tests and log shippers read).
    #[default]
    Json,
    /// Human-readable text, for a terminal.
    Text,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "json" => Ok(Self::Json),
            "text" => Ok(Self::Text),
            other => Err(format!(
                "unknown log format {other:?} (expected \"json\" or \"text\")"
            )),
        }
    }
}

/// Installs the global `tracing` subscriber writing to stderr, filtered by `RUST_LOG` (default `info`).
///
/// Idempotent: if a subscriber is already installed (a second call, or a test harness), this does nothing and
/// returns `false`; `true` when this call installed it.
pub fn init(format: LogFormat) -> bool {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    result.is_ok()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn format_parses() {
        assert_eq!("json".parse::<LogFormat>().unwrap(), LogFormat::Json);
        assert_eq!("TEXT".parse::<LogFormat>().unwrap(), LogFormat::Text);
        assert!("xml".parse::<LogFormat>().is_err());
        assert_eq!(LogFormat::default(), LogFormat::Json);
    }

    #[test]
    fn init_is_idempotent() {
        let _first = init(LogFormat::Json);
        assert!(
            !init(LogFormat::Text),
            "a second init must not replace the subscriber"
        );
    }
}
