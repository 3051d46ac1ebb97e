//! Reading a config file: TOML text → raw serde structs, with every problem located as `file:line:column`.
//!
//! Raw structs (`*File`, `deny_unknown_fields`) come out of [`parse_toml`]; the `node` and `lb` modules then
//! validate them into `*Config` types, collecting every [`Problem`] rather than stopping at the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A secret from a config file (a password, a token): used and compared, never printed — `Debug` and `Display`
/// show `***`, so a config struct can derive `Debug` and be logged whole. Every secret-bearing config field has
/// this type.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl Secret {
    /// The secret itself, for the one place that uses it (never for a log line).
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Reads a secret kept in a file of its own (a Kubernetes Secret mount, a `0600` file): the whole file
    /// without surrounding whitespace (the trailing newline editors add). An unreadable or empty file is an error
    /// that names the file, never its content.
    pub fn read_file(path: &Path) -> Result<Secret, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::single(Problem::whole_file(
                path,
                format!("cannot read secret file: {e}"),
            ))
        })?;
        let secret = text.trim();
        if secret.is_empty() {
            return Err(ConfigError::single(Problem::whole_file(
                path,
                "secret file is empty",
            )));
        }
        Ok(Secret(secret.to_string()))
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// One thing wrong with a config file, located in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The file the problem is in.
    pub file: PathBuf,
    /// 1-based line; 0 when the problem has no single place (e.g. a missing file).
    pub line: usize,
    /// 1-based column; 0 when the problem has no single place.
    pub column: usize,
    /// What is wrong, for an operator.
    pub message: String,
}

impl Problem {
    /// A problem at byte offset range `span` of `source`.
    pub(crate) fn at(
        file: &Path,
        source: &str,
        span: Option<Range<usize>>,
        message: impl Into<String>,
    ) -> Self {
        let (line, column) = span.map_or((0, 0), |s| line_column(source, s.start));
        Self {
            file: file.to_path_buf(),
            line,
            column,
            message: message.into(),
        }
    }

    /// A problem with the file as a whole.
    pub(crate) fn whole_file(file: &Path, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}:{}:{}: {}",
                self.file.display(),
                self.line,
                self.column,
                self.message
            )
        }
    }
}

/// Every problem found in a config file; displayed one per line as `file:line:column: message`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The problems, in file order where known.
    pub problems: Vec<Problem>,
}

impl ConfigError {
    /// An error made of one problem.
    pub fn single(problem: Problem) -> Self {
        Self {
            problems: vec![problem],
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{p}")?;
        }
        Ok(())
    }
}

impl From<Vec<Problem>> for ConfigError {
    fn from(problems: Vec<Problem>) -> Self {
        Self { problems }
    }
}

/// Reads a file into a string, as a located config error when it cannot be read.
pub fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| {
        ConfigError::single(Problem::whole_file(
            path,
            format!("cannot read config file: {e}"),
        ))
    })
}

/// Parses TOML `source` (read from `file`) into the raw serde type `T`.
pub(crate) fn parse_toml<T: DeserializeOwned>(file: &Path, source: &str) -> Result<T, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let message = e.message().trim().to_string();
        ConfigError::single(Problem::at(file, source, e.span(), message))
    })
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub(crate) fn line_column(source: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(source.len());
    let before = source.get(..offset).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |s| s.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        name: String,
        port: u16,
        password: Option<Secret>,
    }

    #[test]
    fn valid_text_parses() {
        let src = "name = \"x\"\nport = 1\npassword = \"hunter2\"\n";
        let sample = parse_toml::<Sample>(Path::new("s.toml"), src).unwrap();
        assert_eq!((sample.name.as_str(), sample.port), ("x", 1));
        let password = sample.password.as_ref().unwrap();
        assert_eq!(password.expose(), "hunter2");
        assert!(!format!("{sample:?}").contains("hunter2"), "{sample:?}");
        assert_eq!(password.to_string(), "***");
    }

    #[test]
    fn secret_files_are_trimmed_and_never_empty() {
        let dir = std::env::temp_dir().join(format!("fleetgate-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("token");
        std::fs::write(&path, "  t0ken\n").unwrap();
        assert_eq!(Secret::read_file(&path).unwrap().expose(), "t0ken");
        std::fs::write(&path, "\n").unwrap();
        let err = Secret::read_file(&path).unwrap_err().to_string();
        assert!(err.contains("secret file is empty"), "{err}");
        let err = Secret::read_file(&dir.join("missing"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot read secret file"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn line_column_counts_from_one() {
        let src = "a = 1\nbb = 2\n";
        assert_eq!(line_column(src, 0), (1, 1));
        assert_eq!(line_column(src, 6), (2, 1));
        assert_eq!(line_column(src, 8), (2, 3));
    }

    #[test]
    fn unknown_field_is_located() {
        let src = "name = \"x\"\nport = 1\nprot = 2\n";
        let err = parse_toml::<Sample>(Path::new("s.toml"), src).unwrap_err();
        assert_eq!(err.problems.len(), 1);
        let p = &err.problems[0];
        assert_eq!((p.line, p.column), (3, 1), "{p}");
        assert!(err.to_string().starts_with("s.toml:3:1: "), "{err}");
        assert!(p.message.contains("prot"), "{p}");
    }

    #[test]
    fn wrong_type_is_located() {
        let src = "name = \"x\"\nport = \"eighty\"\n";
        let err = parse_toml::<Sample>(Path::new("s.toml"), src).unwrap_err();
        assert_eq!(err.problems[0].line, 2, "{err}");
    }
}
