//! Byte sizes in config files, written as operators write them: `"512MiB"`, `"1GiB"`, `"64KiB"`, `"100B"`, or a
//! plain integer of bytes.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

/// Why a byte size from a config file is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ByteSizeError {
    /// Not a number followed by a unit.
    #[error("invalid size {0:?}: expected a whole number followed by B, KiB, MiB or GiB")]
    Invalid(String),
    /// Above what the machine can address.
    #[error("invalid size {0:?}: out of range")]
    OutOfRange(String),
}

/// A size in bytes read from `"512MiB"` (units `B`, `KiB`, `MiB`, `GiB`, powers of 1024) or an integer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub usize);

impl ByteSize {
    /// The size in bytes.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Parses `"<whole number><unit>"` with unit `B`, `KiB`, `MiB` or `GiB`.
pub fn parse_byte_size(text: &str) -> Result<usize, ByteSizeError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let value: usize = number
        .parse()
        .map_err(|_| ByteSizeError::Invalid(text.to_string()))?;
    let scale: usize = match unit.trim() {
        "B" | "" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => return Err(ByteSizeError::Invalid(text.to_string())),
    };
    value
        .checked_mul(scale)
        .ok_or_else(|| ByteSizeError::OutOfRange(text.to_string()))
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct SizeVisitor;
        impl Visitor<'_> for SizeVisitor {
            type Value = ByteSize;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a size such as \"512MiB\" or a number of bytes")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
                parse_byte_size(v).map(ByteSize).map_err(E::custom)
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: must not be negative")))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
                usize::try_from(v)
                    .map(ByteSize)
                    .map_err(|_| E::custom(format!("invalid size {v}: out of range")))
            }
        }
        deserializer.deserialize_any(SizeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_errors() {
        assert_eq!(parse_byte_size("100"), Ok(100));
        assert_eq!(parse_byte_size("100B"), Ok(100));
        assert_eq!(parse_byte_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_byte_size(" 512 MiB"), Ok(512 << 20));
        assert_eq!(parse_byte_size("2GiB"), Ok(2 << 30));
        assert!(matches!(
            parse_byte_size("1.5MiB"),
            Err(ByteSizeError::Invalid(_))
        ));
        assert!(matches!(
            parse_byte_size("1MB"),
            Err(ByteSizeError::Invalid(_))
        ));
        assert!(matches!(
            parse_byte_size("MiB"),
            Err(ByteSizeError::Invalid(_))
        ));
        assert!(matches!(
            parse_byte_size("99999999999999999999GiB"),
            Err(ByteSizeError::Invalid(_) | ByteSizeError::OutOfRange(_))
        ));
    }

    #[test]
    fn from_toml_as_text_or_number() {
        #[derive(Deserialize)]
        struct T {
            a: ByteSize,
            b: ByteSize,
        }
        let t: T = toml::from_str("a = \"1KiB\"\nb = 7\n").expect("parses");
        assert_eq!((t.a.get(), t.b.get()), (1024, 7));
        assert!(toml::from_str::<T>("a = -1\nb = 1\n").is_err());
    }
}
