//! Topic filters and topic templates as an ACL file writes them — syntax only: [`parse_filter`] splits a filter
//! into [`Level`]s (MQTT 5 §4.7 rules for `+` and `#`), [`TopicTemplate::parse`] also reads the `%c` / `%u` /
//! `%cn` placeholders. What a filter matches (`covers`, `intersects`) and how a template is rendered safely for
//! one client are `fleetgate_auth`'s (`topic`, `template`); its SUBSCRIBE checks parse filters with the same
//! [`parse_filter`], so a filter means one thing in a rule and in a request.

use std::fmt;

/// Longest filter or topic accepted, in bytes: the MQTT UTF-8 string limit.
pub const MAX_FILTER_LEN: usize = 65_535;

/// One level of a filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Level {
    /// A level that must equal this text (may be empty).
    Literal(String),
    /// `+`: any single level.
    Plus,
    /// `#`: any number of levels, including none; always last.
    Hash,
}

impl Level {
    /// True for `+` and `#`.
    pub fn is_wildcard(&self) -> bool {
        !matches!(self, Level::Literal(_))
    }
}

/// Why a filter is not valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// The filter is the empty string.
    #[error("topic filter is empty")]
    Empty,
    /// Longer than [`MAX_FILTER_LEN`].
    #[error("topic filter is longer than 65535 bytes")]
    TooLong,
    /// Contains U+0000.
    #[error("topic filter contains U+0000")]
    Nul,
    /// `#` somewhere other than as the whole last level.
    #[error("`#` must be the whole last level of a topic filter")]
    MisplacedHash,
    /// `+` sharing a level with other characters.
    #[error("`+` must be a whole level of a topic filter")]
    MisplacedPlus,
}

/// Parses and validates a topic filter (a concrete topic is a filter without wildcards) into its levels.
pub fn parse_filter(text: &str) -> Result<Vec<Level>, FilterError> {
    if text.is_empty() {
        return Err(FilterError::Empty);
    }
    if text.len() > MAX_FILTER_LEN {
        return Err(FilterError::TooLong);
    }
    if text.contains('\0') {
        return Err(FilterError::Nul);
    }
    let parts: Vec<&str> = text.split('/').collect();
    let last = parts.len() - 1;
    let mut levels = Vec::with_capacity(parts.len());
    for (i, part) in parts.into_iter().enumerate() {
        levels.push(match part {
            "#" if i == last => Level::Hash,
            "#" => return Err(FilterError::MisplacedHash),
            "+" => Level::Plus,
            p if p.contains('#') => return Err(FilterError::MisplacedHash),
            p if p.contains('+') => return Err(FilterError::MisplacedPlus),
            p => Level::Literal(p.to_string()),
        });
    }
    Ok(levels)
}

/// An identity value an ACL topic can refer to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Var {
    /// `%c`: the MQTT client ID.
    ClientId,
    /// `%u`: the authenticated username.
    Username,
    /// `%cn`: the verified certificate's CN.
    Cn,
}

/// A piece of a level with placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Text copied as written.
    Text(String),
    /// A placeholder.
    Var(Var),
}

/// One level of a [`TopicTemplate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateLevel {
    /// A level without placeholders (a literal or a wildcard).
    Fixed(Level),
    /// A level with at least one placeholder: text and placeholders in order.
    Substituted(Vec<Piece>),
}

/// Why a template is not valid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// The filter itself is invalid.
    #[error("{0}")]
    Filter(#[from] FilterError),
    /// `%` not followed by `c`, `u` or `cn`.
    #[error("unknown placeholder at byte {0} (use %c, %u or %cn)")]
    UnknownPlaceholder(usize),
}

/// One topic of an ACL rule, possibly with placeholders, such as `fleet/%c/#`.
#[derive(Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<TemplateLevel>,
}

impl fmt::Debug for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicTemplate({})", self.text)
    }
}

impl TopicTemplate {
    /// Parses a rule topic such as `fleet/%c/#`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        // Syntax check with every placeholder replaced by a plain letter.
        let mut levels = Vec::new();
        let mut plain = String::with_capacity(text.len());
        let mut offset = 0;
        for (i, part) in text.split('/').enumerate() {
            if i > 0 {
                plain.push('/');
                offset += 1;
            }
            let pieces = parse_pieces(part, offset)?;
            offset += part.len();
            if pieces.iter().any(|p| matches!(p, Piece::Var(_))) {
                // Keep the level's own text so that `a/%c+` is still caught as a misplaced `+`.
                for piece in &pieces {
                    match piece {
                        Piece::Text(t) => plain.push_str(t),
                        Piece::Var(_) => plain.push('x'),
                    }
                }
                levels.push(TemplateLevel::Substituted(pieces));
            } else {
                plain.push_str(part);
                levels.push(TemplateLevel::Fixed(Level::Literal(part.to_string())));
            }
        }
        let checked = parse_filter(&plain)?;
        // Take the wildcard levels from the checked filter.
        for (slot, level) in levels.iter_mut().zip(checked) {
            if let TemplateLevel::Fixed(fixed) = slot {
                *fixed = level;
            }
        }
        Ok(Self {
            text: text.to_string(),
            levels,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The levels, in order.
    pub fn levels(&self) -> &[TemplateLevel] {
        &self.levels
    }

    /// True when some level has the `%c` (client ID) placeholder.
    pub fn uses_client_id(&self) -> bool {
        self.levels.iter().any(|l| match l {
            TemplateLevel::Substituted(pieces) => pieces.contains(&Piece::Var(Var::ClientId)),
            TemplateLevel::Fixed(_) => false,
        })
    }
}

/// Splits one level into text and placeholders; `offset` is the level's byte offset in the whole topic.
fn parse_pieces(part: &str, offset: usize) -> Result<Vec<Piece>, TemplateError> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut rest = part;
    while let Some(pos) = rest.find('%') {
        text.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        let (var, len) = if after.starts_with("cn") {
            (Var::Cn, 2)
        } else if after.starts_with('c') {
            (Var::ClientId, 1)
        } else if after.starts_with('u') {
            (Var::Username, 1)
        } else {
            return Err(TemplateError::UnknownPlaceholder(
                offset + (part.len() - rest.len()) + pos,
            ));
        };
        if !text.is_empty() {
            pieces.push(Piece::Text(std::mem::take(&mut text)));
        }
        pieces.push(Piece::Var(var));
        rest = &after[len..];
    }
    text.push_str(rest);
    if !text.is_empty() {
        pieces.push(Piece::Text(text));
    }
    Ok(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_into_levels() {
        assert_eq!(
            parse_filter("a/+/#"),
            Ok(vec![Level::Literal("a".into()), Level::Plus, Level::Hash])
        );
        assert_eq!(
            parse_filter("a//b").map(|l| l.len()),
            Ok(3),
            "an empty level is a level"
        );
        assert_eq!(parse_filter(""), Err(FilterError::Empty));
        assert_eq!(parse_filter("a/#/b"), Err(FilterError::MisplacedHash));
        assert_eq!(parse_filter("a/b+"), Err(FilterError::MisplacedPlus));
        assert_eq!(parse_filter("a\0b"), Err(FilterError::Nul));
    }

    #[test]
    fn templates_keep_placeholders_per_level() {
        let t = TopicTemplate::parse("fleet/%u-%c/+/#").unwrap();
        assert_eq!(t.as_str(), "fleet/%u-%c/+/#");
        assert_eq!(
            t.levels(),
            [
                TemplateLevel::Fixed(Level::Literal("fleet".into())),
                TemplateLevel::Substituted(vec![
                    Piece::Var(Var::Username),
                    Piece::Text("-".into()),
                    Piece::Var(Var::ClientId),
                ]),
                TemplateLevel::Fixed(Level::Plus),
                TemplateLevel::Fixed(Level::Hash),
            ]
        );
        assert_eq!(
            TopicTemplate::parse("certs/%cn").unwrap().levels()[1],
            TemplateLevel::Substituted(vec![Piece::Var(Var::Cn)])
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert!(matches!(
            TopicTemplate::parse("a/%x"),
            Err(TemplateError::UnknownPlaceholder(2))
        ));
        assert!(matches!(
            TopicTemplate::parse("a/%"),
            Err(TemplateError::UnknownPlaceholder(2))
        ));
        assert!(matches!(
            TopicTemplate::parse("a/#/%c"),
            Err(TemplateError::Filter(FilterError::MisplacedHash))
        ));
        assert!(matches!(
            TopicTemplate::parse("a/%c+"),
            Err(TemplateError::Filter(FilterError::MisplacedPlus))
        ));
    }
}
