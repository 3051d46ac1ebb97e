//! Durations in config files, written as operators write them: `"250ms"`, `"10s"`, `"5m"`, `"1h"`.

use std::fmt;
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Largest duration accepted, in seconds (~31 years): anything above is a typo, and `Duration::from_secs_f64`
/// must never see an overflowing value.
const MAX_SECONDS: f64 = 1.0e9;

/// Why a duration from a config file is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// The text does not start with a number.
    #[error("invalid duration {0:?}: expected a number followed by ms, s, m or h")]
    NotANumber(String),
    /// A number without a unit.
    #[error("invalid duration {0:?}: missing unit (ms, s, m or h)")]
    MissingUnit(String),
    /// A unit other than `ms`, `s`, `m` or `h`.
    #[error("invalid duration {text:?}: unknown unit {unit:?} (use ms, s, m or h)")]
    UnknownUnit {
        /// The whole text.
        text: String,
        /// The unit as written.
        unit: String,
    },
    /// Negative, not finite, or above ~31 years.
    #[error("invalid duration {0:?}: out of range")]
    OutOfRange(String),
    /// Below the smallest value that makes sense for the setting (e.g. a `"0s"` timeout).
    #[error("must be at least {min:?}")]
    TooShort {
        /// The smallest accepted value.
        min: Duration,
    },
}

/// A [`Duration`] read from a string such as `"10s"` (units: `ms`, `s`, `m`, `h`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub(crate) struct ConfigDuration(pub Duration);

impl ConfigDuration {
    /// The wrapped duration.
    pub(crate) fn get(self) -> Duration {
        self.0
    }

    /// The duration, or [`DurationError::TooShort`] when it is below `min` (a `"0s"` timeout fails every attempt
    /// at once; a `"0s"` interval spins).
    pub(crate) fn at_least(self, min: Duration) -> Result<Duration, DurationError> {
        if self.0 < min {
            Err(DurationError::TooShort { min })
        } else {
            Ok(self.0)
        }
    }
}

impl From<Duration> for ConfigDuration {
    fn from(d: Duration) -> Self {
        Self(d)
    }
}

/// Parses `"<number><unit>"` with unit `ms`, `s`, `m` or `h`; the number may have a fraction (`"1.5s"`).
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| DurationError::NotANumber(text.to_string()))?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "" => return Err(DurationError::MissingUnit(text.to_string())),
        other => {
            return Err(DurationError::UnknownUnit {
                text: text.to_string(),
                unit: other.to_string(),
            });
        }
    };
    if !seconds.is_finite() || !(0.0..=MAX_SECONDS).contains(&seconds) {
        return Err(DurationError::OutOfRange(text.to_string()));
    }
    Ok(Duration::from_secs_f64(seconds))
}

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DurationVisitor;
        impl Visitor<'_> for DurationVisitor {
            type Value = ConfigDuration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"10s\" or \"250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                parse_duration(v).map(ConfigDuration).map_err(E::custom)
            }
        }
        deserializer.deserialize_str(DurationVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
    }

    #[test]
    fn rejects_bad_text() {
        assert_eq!(
            parse_duration("10"),
            Err(DurationError::MissingUnit("10".into()))
        );
        assert_eq!(
            parse_duration("ten s"),
            Err(DurationError::NotANumber("ten s".into()))
        );
        assert!(matches!(
            parse_duration("10 parsecs"),
            Err(DurationError::UnknownUnit { unit, .. }) if unit == "parsecs"
        ));
        assert!(matches!(
            parse_duration("-1s"),
            Err(DurationError::NotANumber(_))
        ));
        assert_eq!(
            parse_duration("2000000000s"),
            Err(DurationError::OutOfRange("2000000000s".into()))
        );
        assert!(
            parse_duration("10 parsecs")
                .unwrap_err()
                .to_string()
                .contains("unknown unit \"parsecs\"")
        );
    }

    #[test]
    fn at_least_refuses_short_values() {
        let ms = Duration::from_millis(1);
        assert_eq!(
            ConfigDuration(Duration::ZERO).at_least(ms),
            Err(DurationError::TooShort { min: ms })
        );
        assert_eq!(ConfigDuration(ms).at_least(ms), Ok(ms));
        assert_eq!(
            DurationError::TooShort { min: ms }.to_string(),
            "must be at least 1ms"
        );
    }
}
