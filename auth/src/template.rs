//! ACL topic templates: a rule's topic filter with `%c` / `%u` / `%cn` placeholders, and its safe rendering for
//! one client into a plain [`Filter`].
//!
//! Safety rule: an identity value is substituted only if it is non-empty and free of `+`, `#`, `/` and NUL, and
//! never when it would make the first level start with `$` (a client named `$SYS` must not turn `%c/#` into a
//! grant of `$SYS/#`). When a value is unsafe or missing the rendering says so, and the caller decides: an allow
//! rule is skipped, a deny rule widens that level to `+` (skipping a deny would widen access instead).

use std::fmt;

use crate::topic::{Filter, FilterError, Level};

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

/// The values a template is rendered with; `None` when the client has no such (authenticated) value.
#[derive(Debug, Clone, Copy, Default)]
pub struct Values<'a> {
    /// Client ID.
    pub client_id: Option<&'a str>,
    /// Authenticated username.
    pub username: Option<&'a str>,
    /// Verified certificate CN.
    pub cn: Option<&'a str>,
}

impl<'a> Values<'a> {
    fn get(&self, var: Var) -> Option<&'a str> {
        match var {
            Var::ClientId => self.client_id,
            Var::Username => self.username,
            Var::Cn => self.cn,
        }
    }
}

/// Is `value` safe to put inside a topic level?
pub fn is_safe_value(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0'])
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum TemplateLevel {
    Fixed(Level),
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

/// One topic of an ACL rule, possibly with placeholders.
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

/// The result of rendering a template for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rendered {
    /// Every placeholder had a safe value (or there were none).
    Exact(Filter),
    /// Some placeholder was missing or unsafe; this is the filter with each such level replaced by `+` (a
    /// superset of anything the value could have produced).
    Unsafe(Filter),
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
        let checked = Filter::parse(&plain)?;
        // Take the wildcard levels from the checked filter.
        for (slot, level) in levels.iter_mut().zip(checked.levels()) {
            if let TemplateLevel::Fixed(fixed) = slot {
                *fixed = level.clone();
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

    /// True when the template has a placeholder.
    pub fn has_placeholders(&self) -> bool {
        self.levels
            .iter()
            .any(|l| matches!(l, TemplateLevel::Substituted(_)))
    }

    /// Renders the template with `values`.
    pub fn render(&self, values: &Values<'_>) -> Rendered {
        let mut safe = true;
        let mut out = Vec::with_capacity(self.levels.len());
        for (i, level) in self.levels.iter().enumerate() {
            match level {
                TemplateLevel::Fixed(l) => out.push(l.clone()),
                TemplateLevel::Substituted(pieces) => match render_level(pieces, values, i == 0) {
                    Some(text) => out.push(Level::Literal(text)),
                    None => {
                        safe = false;
                        out.push(Level::Plus);
                    }
                },
            }
        }
        let filter = Filter::from_levels(out);
        if safe {
            Rendered::Exact(filter)
        } else {
            Rendered::Unsafe(filter)
        }
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

/// Renders one substituted level, or `None` when a value is missing or unsafe.
fn render_level(pieces: &[Piece], values: &Values<'_>, first_level: bool) -> Option<String> {
    let mut out = String::new();
    for piece in pieces {
        match piece {
            Piece::Text(t) => out.push_str(t),
            Piece::Var(v) => {
                let value = values.get(*v).filter(|v| is_safe_value(v))?;
                out.push_str(value);
            }
        }
    }
    // Only a literal `$` written in the rule may produce a `$` first level.
    let literal_dollar = matches!(pieces.first(), Some(Piece::Text(t)) if t.starts_with('$'));
    if first_level && out.starts_with('$') && !literal_dollar {
        return None;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values<'a>(c: &'a str, u: Option<&'a str>, cn: Option<&'a str>) -> Values<'a> {
        Values {
            client_id: Some(c),
            username: u,
            cn,
        }
    }

    fn exact(t: &str, v: &Values<'_>) -> String {
        match TopicTemplate::parse(t).unwrap().render(v) {
            Rendered::Exact(f) => f.to_string(),
            Rendered::Unsafe(f) => panic!("unsafe: {f}"),
        }
    }

    #[test]
    fn substitutes_each_placeholder() {
        let v = values("dev-1", Some("alice"), Some("vehicle-7"));
        assert_eq!(exact("fleet/%c/#", &v), "fleet/dev-1/#");
        assert_eq!(exact("users/%u/+", &v), "users/alice/+");
        assert_eq!(exact("certs/%cn/x", &v), "certs/vehicle-7/x");
        assert_eq!(exact("mix/%u-%c/%cn", &v), "mix/alice-dev-1/vehicle-7");
        assert_eq!(exact("plain/+/#", &v), "plain/+/#");
    }

    #[test]
    fn unsafe_or_missing_values_widen_to_plus() {
        let t = TopicTemplate::parse("fleet/%c/#").unwrap();
        for bad in ["", "+", "#", "a/b", "a\0b", "x+y"] {
            assert_eq!(
                t.render(&values(bad, None, None)),
                Rendered::Unsafe(Filter::parse("fleet/+/#").unwrap()),
                "{bad:?}"
            );
        }
        let u = TopicTemplate::parse("users/%u").unwrap();
        assert!(matches!(
            u.render(&values("c", None, None)),
            Rendered::Unsafe(_)
        ));
    }

    #[test]
    fn identity_cannot_introduce_a_dollar_first_level() {
        let t = TopicTemplate::parse("%c/#").unwrap();
        assert!(matches!(
            t.render(&values("$SYS", None, None)),
            Rendered::Unsafe(_)
        ));
        let d = TopicTemplate::parse("$devices/%c").unwrap();
        assert_eq!(
            exact("$devices/%c", &values("$a", None, None)),
            "$devices/$a"
        );
        assert!(matches!(
            d.render(&values("ok", None, None)),
            Rendered::Exact(_)
        ));
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
        assert!(TopicTemplate::parse("a/%c").unwrap().has_placeholders());
        assert!(!TopicTemplate::parse("a/b").unwrap().has_placeholders());
    }
}
