//! ACL topic templates rendered for one client: a rule's topic (a `TopicTemplate` the config crate parsed, with
//! `%c` / `%u` / `%cn` placeholders) becomes a plain [`Filter`] by [`render`].
//!
//! Safety rule: an identity value is substituted only if it is non-empty and free of `+`, `#`, `/` and NUL, and
//! never when it would make the first level start with `$` (a client named `$SYS` must not turn `%c/#` into a
//! grant of `$SYS/#`). When a value is unsafe or missing the rendering says so, and the caller decides: an allow
//! rule is skipped, a deny rule widens that level to `+` (skipping a deny would widen access instead).

use fleetgate_config::acl::topic::{Level, Piece, TemplateLevel, TopicTemplate, Var};

use crate::topic::Filter;

/// The values a template is rendered with; `None` when the client has no such (authenticated) value.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Values<'a> {
    /// Client ID.
    pub(crate) client_id: Option<&'a str>,
    /// Authenticated username.
    pub(crate) username: Option<&'a str>,
    /// Verified certificate CN.
    pub(crate) cn: Option<&'a str>,
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
pub(crate) fn is_safe_value(value: &str) -> bool {
    !value.is_empty() && !value.contains(['+', '#', '/', '\0'])
}

/// The result of rendering a template for one client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rendered {
    /// Every placeholder had a safe value (or there were none).
    Exact(Filter),
    /// Some placeholder was missing or unsafe; this is the filter with each such level replaced by `+` (a
    /// superset of anything the value could have produced).
    Unsafe(Filter),
}

/// Renders `template` with `values`.
pub(crate) fn render(template: &TopicTemplate, values: &Values<'_>) -> Rendered {
    let mut safe = true;
    let mut out = Vec::with_capacity(template.levels().len());
    for (i, level) in template.levels().iter().enumerate() {
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
        match render(&TopicTemplate::parse(t).unwrap(), v) {
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
                render(&t, &values(bad, None, None)),
                Rendered::Unsafe(Filter::parse("fleet/+/#").unwrap()),
                "{bad:?}"
            );
        }
        let u = TopicTemplate::parse("users/%u").unwrap();
        assert!(matches!(
            render(&u, &values("c", None, None)),
            Rendered::Unsafe(_)
        ));
    }

    #[test]
    fn identity_cannot_introduce_a_dollar_first_level() {
        let t = TopicTemplate::parse("%c/#").unwrap();
        assert!(matches!(
            render(&t, &values("$SYS", None, None)),
            Rendered::Unsafe(_)
        ));
        let d = TopicTemplate::parse("$devices/%c").unwrap();
        assert_eq!(
            exact("$devices/%c", &values("$a", None, None)),
            "$devices/$a"
        );
        assert!(matches!(
            render(&d, &values("ok", None, None)),
            Rendered::Exact(_)
        ));
    }
}
