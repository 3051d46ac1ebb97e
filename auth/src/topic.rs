//! Topic filters as authorization sees them: parsed with the ACL file's syntax (`fleetgate_config::acl::topic`),
//! matching a concrete topic, and the two relations between filters that subscription checks need — `covers`
//! (every topic of one is a topic of the other) and `intersects` (some topic is matched by both).
//!
//! Matching follows MQTT 5 §4.7 exactly, including the two rules that are easy to forget:
//! - `#` also matches its parent level (`a/#` matches `a`), and `+` matches an empty level;
//! - a filter whose first level is a wildcard never matches a topic that starts with `$` (§4.7.2), so `#` does
//!   not grant `$SYS/...`; only a filter that names a `$` first level literally does.
//!
//! `covers` and `intersects` are defined over the set of all topics with those matching rules, and are checked in
//! the tests against brute-force enumeration.

use std::fmt;

use fleetgate_config::acl::topic::{FilterError, Level, parse_filter};

/// A valid MQTT topic filter (a concrete topic is a filter without wildcards).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Filter {
    levels: Vec<Level>,
}

impl fmt::Debug for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Filter({self})")
    }
}

impl fmt::Display for Filter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, level) in self.levels.iter().enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            match level {
                Level::Literal(s) => f.write_str(s)?,
                Level::Plus => f.write_str("+")?,
                Level::Hash => f.write_str("#")?,
            }
        }
        Ok(())
    }
}

impl Filter {
    /// Parses and validates a topic filter (the syntax is the config crate's, the same for ACL rules).
    pub(crate) fn parse(text: &str) -> Result<Self, FilterError> {
        parse_filter(text).map(|levels| Self { levels })
    }

    /// Builds a filter from levels already checked by the caller (`#` only last, literals free of `/+#` and NUL).
    pub(crate) fn from_levels(levels: Vec<Level>) -> Self {
        Self { levels }
    }

    /// The levels with a lone `#` written as `+/#`: the same topics (every topic has at least one level), but
    /// in this form a level-by-level walk never mistakes the lone `#` for a parent-level match of zero levels.
    fn canonical(&self) -> &[Level] {
        static ANY: [Level; 2] = [Level::Plus, Level::Hash];
        if self.levels == [Level::Hash] {
            &ANY
        } else {
            &self.levels
        }
    }

    /// True when the first level is a literal starting with `$` (the filter only matches `$` topics).
    fn names_dollar(&self) -> bool {
        matches!(self.levels.first(), Some(Level::Literal(s)) if s.starts_with('$'))
    }

    /// True when the first level is `+` or `#` (the filter matches no `$` topic).
    fn leading_wildcard(&self) -> bool {
        self.levels.first().is_some_and(Level::is_wildcard)
    }

    /// Does this filter match the concrete topic `topic`? A "topic" containing `+`, `#` or NUL, or an empty one,
    /// matches nothing (the broker rejects such a PUBLISH; refusing here too keeps a codec bug from widening access).
    pub(crate) fn matches(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.contains(['+', '#', '\0']) {
            return false;
        }
        if topic.starts_with('$') && self.leading_wildcard() {
            return false;
        }
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Hash => return true,
                Level::Plus => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Level::Literal(want) => match parts.next() {
                    Some(got) if got == want => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }

    /// True when every topic matched by `other` is also matched by `self`.
    pub(crate) fn covers(&self, other: &Filter) -> bool {
        // `other` matches some `$` topics that `self` cannot (a leading wildcard never matches `$`).
        if self.leading_wildcard() && other.names_dollar() {
            return false;
        }
        // Both filters consume one level each until `self` ends or reaches `#`.
        let mut mine = self.canonical().iter();
        let mut theirs = other.canonical().iter();
        loop {
            match (mine.next(), theirs.next()) {
                // `#` matches any remainder, including none.
                (Some(Level::Hash), _) => return true,
                (None, None) => return true,
                // `self` ended but `other` matches longer topics (or, with `#`, longer ones too).
                (None, Some(_)) => return false,
                // `other` matches a topic that ends here; `self` needs another level.
                (Some(_), None) => return false,
                // `other` matches topics ending here and longer; `self` (not `#`) needs exactly one more.
                (Some(_), Some(Level::Hash)) => return false,
                (Some(Level::Plus), Some(_)) => {}
                // A literal covers only itself, never `+`.
                (Some(Level::Literal(_)), Some(Level::Plus)) => return false,
                (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                    if a != b {
                        return false;
                    }
                }
            }
        }
    }

    /// True when at least one topic is matched by both filters.
    pub(crate) fn intersects(&self, other: &Filter) -> bool {
        // One matches only `$` topics, the other none.
        if (self.leading_wildcard() && other.names_dollar())
            || (other.leading_wildcard() && self.names_dollar())
        {
            return false;
        }
        let mut mine = self.canonical().iter();
        let mut theirs = other.canonical().iter();
        loop {
            match (mine.next(), theirs.next()) {
                (Some(Level::Hash), _) | (_, Some(Level::Hash)) => return true,
                (None, None) => return true,
                (None, Some(_)) | (Some(_), None) => return false,
                (Some(Level::Literal(a)), Some(Level::Literal(b))) => {
                    if a != b {
                        return false;
                    }
                }
                // `+` against anything: pick that level's value (a literal, or any value for `+`/`+`).
                (Some(_), Some(_)) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleetgate_config::acl::topic::MAX_FILTER_LEN;

    use super::*;

    fn f(s: &str) -> Filter {
        Filter::parse(s).unwrap()
    }

    #[test]
    fn parse_rejects_invalid_filters() {
        assert_eq!(Filter::parse(""), Err(FilterError::Empty));
        assert_eq!(Filter::parse("a/#/b"), Err(FilterError::MisplacedHash));
        assert_eq!(Filter::parse("a#"), Err(FilterError::MisplacedHash));
        assert_eq!(Filter::parse("a/b+"), Err(FilterError::MisplacedPlus));
        assert_eq!(Filter::parse("a\0b"), Err(FilterError::Nul));
        assert_eq!(
            Filter::parse(&"a".repeat(MAX_FILTER_LEN + 1)),
            Err(FilterError::TooLong)
        );
        for ok in ["#", "+", "a//b", "/", "+/+/#", "$SYS/#", "a/+/c"] {
            assert_eq!(f(ok).to_string(), ok);
        }
    }

    #[test]
    fn matching_follows_the_spec() {
        assert!(f("a/#").matches("a"));
        assert!(f("a/#").matches("a/b/c"));
        assert!(f("a/+").matches("a/"));
        assert!(!f("a/+").matches("a"));
        assert!(!f("a/+").matches("a/b/c"));
        assert!(f("+/+").matches("/x"));
        assert!(f("#").matches("a/b"));
        assert!(!f("#").matches("$SYS/broker"));
        assert!(!f("+/broker").matches("$SYS/broker"));
        assert!(f("$SYS/#").matches("$SYS/broker"));
        assert!(
            f("a/+").matches("a/$x"),
            "`$` is only special at the first level"
        );
        assert!(
            !f("a/#").matches("a/+"),
            "a wildcard in a topic name matches nothing"
        );
        assert!(!f("#").matches(""));
    }

    #[test]
    fn covers_examples() {
        let allowed = f("fleet/dev-1/#");
        assert!(allowed.covers(&f("fleet/dev-1/#")));
        assert!(allowed.covers(&f("fleet/dev-1")));
        assert!(allowed.covers(&f("fleet/dev-1/+/x")));
        assert!(!allowed.covers(&f("fleet/#")));
        assert!(!allowed.covers(&f("+/+/#")));
        assert!(!allowed.covers(&f("#")));
        assert!(!allowed.covers(&f("fleet/+/#")));
        assert!(!allowed.covers(&f("fleet/+")));
        assert!(!f("#").covers(&f("$SYS/#")));
        assert!(f("#").covers(&f("+/#")));
        assert!(f("$SYS/broker/#").covers(&f("$SYS/broker/load/+")));
        assert!(!f("a/+").covers(&f("a/#")));
        assert!(f("a/+/#").covers(&f("a/+/+")));
    }

    #[test]
    fn intersects_examples() {
        assert!(f("fleet/+/secret").intersects(&f("fleet/#")));
        assert!(f("a/#").intersects(&f("a")));
        assert!(!f("a/+").intersects(&f("a")));
        assert!(!f("#").intersects(&f("$SYS/x")));
        assert!(f("+/x").intersects(&f("+/+")));
        assert!(!f("a/b").intersects(&f("a/c")));
    }

    /// Every filter over `{a, b, $x}` up to three levels (`#` only last).
    fn all_filters() -> Vec<Filter> {
        let inner = ["a", "b", "$x", "+"];
        let last = ["a", "b", "$x", "+", "#"];
        let mut out: Vec<Vec<&str>> = last.iter().map(|l| vec![*l]).collect();
        let mut prefixes: Vec<Vec<&str>> = vec![vec![]];
        for depth in 2..=3 {
            prefixes = prefixes
                .iter()
                .flat_map(|p| inner.iter().map(move |l| [p.as_slice(), &[*l]].concat()))
                .collect();
            debug_assert!(prefixes.iter().all(|p| p.len() == depth - 1));
            for p in &prefixes {
                for l in last {
                    out.push([p.as_slice(), &[l]].concat());
                }
            }
        }
        out.iter().map(|levels| f(&levels.join("/"))).collect()
    }

    /// Every topic over `{a, b, c, $x, ""}` up to four levels: `c` appears in no filter, so a literal can never
    /// pass for `+`, and the empty level exercises `+` matching "".
    fn all_topics() -> Vec<String> {
        let alphabet = ["a", "b", "c", "$x", ""];
        let mut out = Vec::new();
        let mut current: Vec<String> = vec![String::new()];
        for depth in 1..=4 {
            current = current
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |l| {
                        if depth == 1 {
                            (*l).to_string()
                        } else {
                            format!("{p}/{l}")
                        }
                    })
                })
                .collect();
            out.extend(current.iter().filter(|t| !t.is_empty()).cloned());
        }
        out
    }

    /// Property test by exhaustion: for every pair of small filters, `covers` and `intersects` agree with
    /// enumerating every topic up to depth 4 (one more than the deepest filter, enough to witness `#` vs `+`).
    #[test]
    fn covers_and_intersects_agree_with_enumeration() {
        let filters = all_filters();
        let topics = all_topics();
        let matched: Vec<Vec<bool>> = filters
            .iter()
            .map(|flt| topics.iter().map(|t| flt.matches(t)).collect())
            .collect();
        assert_eq!(filters.len(), 105);
        for (i, a) in filters.iter().enumerate() {
            for (j, s) in filters.iter().enumerate() {
                let brute_covers = (0..topics.len()).all(|t| !matched[j][t] || matched[i][t]);
                let brute_meets = (0..topics.len()).any(|t| matched[j][t] && matched[i][t]);
                assert_eq!(a.covers(s), brute_covers, "covers({a}, {s})");
                assert_eq!(a.intersects(s), brute_meets, "intersects({a}, {s})");
            }
        }
    }
}
