//! Reading a config file: TOML text → raw serde structs, with every problem located as `file:line:column`.
//!
//! Raw structs (`*File`, `deny_unknown_fields`) come out of [`parse_toml`]; the `node` and `lb` modules then
//! validate them into `*Config` types, collecting every [`Problem`] rather than stopping at the first.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

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
    pub fn at(
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
    pub fn whole_file(file: &Path, message: impl Into<String>) -> Self {
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
pub fn parse_toml<T: DeserializeOwned>(file: &Path, source: &str) -> Result<T, ConfigError> {
    toml::from_str(source).map_err(|e| {
        let message = e.message().trim().to_string();
        ConfigError::single(Problem::at(file, source, e.span(), message))
    })
}

/// 1-based line and column (in characters) of byte `offset` in `source`.
pub fn line_column(source: &str, offset: usize) -> (usize, usize) {
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
    #[allow(dead_code)]
    struct Sample {
        name: String,
        port: u16,
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
