//! Topic names and filters: validation (used by the codec on every PUBLISH/SUBSCRIBE), wildcard matching (the
//! broker's routing hot path) and `$share/{group}/{filter}` parsing.

/// Longest topic name or filter: MQTT strings carry a 16-bit length prefix.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Most levels (`/`-separated parts) in a topic name or filter. The broker's subscription trie and matchers walk
/// a topic level by level, some recursively; a 65,535-byte topic of bare `/` would be 65,536 levels deep and
/// overflow a task's stack. 128 is far above any real fleet topic (they have fewer than 10 levels) and small
/// enough that any recursive walk over the levels is safe.
pub const MAX_TOPIC_LEVELS: usize = 128;

/// Prefix of a shared subscription filter (MQTT 5 §4.8.2).
pub const SHARE_PREFIX: &str = "$share/";

/// Why a topic name or filter is invalid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Zero-length name or filter [MQTT-4.7.3-1].
    #[error("empty topic")]
    Empty,
    /// Longer than 65535 bytes.
    #[error("topic too long")]
    TooLong,
    /// More than [`MAX_TOPIC_LEVELS`] levels.
    #[error("topic has more than {MAX_TOPIC_LEVELS} levels")]
    TooDeep,
    /// Contains U+0000 [MQTT-4.7.3-2].
    #[error("U+0000 in topic")]
    NullChar,
    /// `+` or `#` in a topic name [MQTT-3.3.2-2].
    #[error("wildcard in topic name")]
    WildcardInName,
    /// `#` not alone in the last level, or `+` not alone in its level [MQTT-4.7.1-1], [MQTT-4.7.1-2].
    #[error("invalid wildcard in topic filter")]
    InvalidWildcard,
    /// `$share/` filter with an empty or wildcard share name, or without a filter [MQTT-4.8.2-1], [MQTT-4.8.2-2].
    #[error("invalid shared subscription")]
    InvalidShare,
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.as_bytes().contains(&0) {
        return Err(TopicError::NullChar);
    }
    if too_deep(s.as_bytes()) {
        return Err(TopicError::TooDeep);
    }
    Ok(())
}

/// True when `topic` has more than [`MAX_TOPIC_LEVELS`] levels (counted on the whole string, a `$share/{group}/`
/// prefix included). Stops counting at the limit.
pub fn too_deep(topic: &[u8]) -> bool {
    topic
        .iter()
        .filter(|&&b| b == b'/')
        .nth(MAX_TOPIC_LEVELS - 1)
        .is_some()
}

/// Validates a topic name (PUBLISH, will): non-empty, no U+0000, no wildcard characters, at most
/// [`MAX_TOPIC_LEVELS`] levels.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic)?;
    if topic.bytes().any(|b| b == b'+' || b == b'#') {
        return Err(TopicError::WildcardInName);
    }
    Ok(())
}

/// Validates a topic filter (SUBSCRIBE, UNSUBSCRIBE), including `$share/{group}/{filter}` ones; at most
/// [`MAX_TOPIC_LEVELS`] levels.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    match SharedSubscription::parse(filter)? {
        Some(shared) => validate_plain_filter(shared.filter),
        None => validate_plain_filter(filter),
    }
}

fn validate_plain_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter)?;
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(TopicError::InvalidWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(TopicError::InvalidWildcard);
        }
    }
    Ok(())
}

/// True when `topic` (a valid topic name) matches `filter` (a valid, non-shared filter).
///
/// `+` matches exactly one level, `#` the rest including the parent (`sport/#` matches `sport`), and a leading
/// wildcard never matches a topic starting with `$` [MQTT-4.7.2-1]. Allocation-free; strip a `$share/{group}/`
/// prefix with [`SharedSubscription::parse`] first.
pub fn matches(filter: &str, topic: &str) -> bool {
    let (f, t) = (filter.as_bytes(), topic.as_bytes());
    if t.first() == Some(&b'$') && matches!(f.first(), Some(b'+' | b'#')) {
        return false;
    }
    let (mut fi, mut ti) = (0usize, 0usize);
    loop {
        // At the start of a filter level and a topic level (ti may be == t.len() after a trailing '/').
        match f.get(fi) {
            Some(b'#') => return true,
            Some(b'+') => {
                // Skip exactly one topic level (possibly empty).
                if ti > t.len() {
                    return false;
                }
                while ti < t.len() && t[ti] != b'/' {
                    ti += 1;
                }
                fi += 1;
            }
            _ => {
                // Literal level: compare bytes up to the next '/' in the filter.
                if ti > t.len() {
                    return false;
                }
                while fi < f.len() && f[fi] != b'/' {
                    if ti >= t.len() || t[ti] != f[fi] {
                        return false;
                    }
                    fi += 1;
                    ti += 1;
                }
                if ti < t.len() && t[ti] != b'/' {
                    return false;
                }
            }
        }
        // Both at a level end: a '/' or the end of the string.
        let f_end = fi >= f.len();
        let t_end = ti >= t.len();
        match (f_end, t_end) {
            (true, true) => return true,
            (true, false) => return false,
            (false, true) => {
                // Topic exhausted; only "/#" may follow in the filter (matches the parent level).
                return &f[fi..] == b"/#";
            }
            (false, false) => {
                fi += 1;
                ti += 1;
            }
        }
    }
}

/// A parsed `$share/{group}/{filter}` subscription (MQTT 5 §4.8.2), borrowing from the original filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedSubscription<'a> {
    /// The share name (non-empty, no `/`, `+` or `#`).
    pub group: &'a str,
    /// The filter the group subscribes to (what [`matches`] takes).
    pub filter: &'a str,
}

impl<'a> SharedSubscription<'a> {
    /// `Ok(None)` for a filter that is not a shared subscription, `Err` for a malformed `$share/` one.
    pub fn parse(filter: &'a str) -> Result<Option<Self>, TopicError> {
        let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else {
            return Ok(None);
        };
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(TopicError::InvalidShare);
        };
        if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
            return Err(TopicError::InvalidShare);
        }
        validate_plain_filter(inner)?;
        Ok(Some(SharedSubscription {
            group,
            filter: inner,
        }))
    }
}

/// `$share/{group}/{filter}` → `(Some(group), filter)`; anything else → `(None, filter)`, a malformed `$share/`
/// filter included (the codec refuses those on the way in, so stored filters never are).
pub fn split_shared(filter: &str) -> (Option<&str>, &str) {
    match SharedSubscription::parse(filter) {
        Ok(Some(s)) => (Some(s.group), s.filter),
        _ => (None, filter),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // tests may unwrap (CONTRIBUTING)
mod tests {
    use super::*;

    #[test]
    fn matching_table() {
        let table: &[(&str, &str, bool)] = &[
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "/", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/+", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("sport/#", "sport", true),
            ("sport/#", "sport/", true),
            ("sport/#", "sport/tennis/player1", true),
            ("sport/#", "sports", false),
            ("sport/tennis/#", "sport", false),
            ("sport/+", "sport", false),
            ("sport/+", "sport/", true),
            ("sport/+", "sport/tennis", true),
            ("sport/+", "sport/tennis/x", false),
            ("+/+", "/finance", true),
            ("/+", "/finance", true),
            ("+", "/finance", false),
            ("+", "a", true),
            ("+", "", true),
            ("a/+/c", "a/b/c", true),
            ("a/+/c", "a//c", true),
            ("a/+/c", "a/b/d", false),
            ("a/+/+", "a/b", false),
            ("a/b", "a/b", true),
            ("a/b", "a/bc", false),
            ("a/bc", "a/b", false),
            ("a/b", "a/b/", false),
            ("a/b/", "a/b", false),
            ("a//b", "a//b", true),
            ("+/#", "a", true),
            ("+/#", "a/b/c", true),
            ("a/#", "a/b/c", true),
            ("a/+/#", "a/b", true),
            ("a/+/#", "a", false),
            ("a", "A", false),
        ];
        for &(filter, topic, expected) in table {
            assert_eq!(
                matches(filter, topic),
                expected,
                "filter {filter:?} topic {topic:?}"
            );
        }
    }

    #[test]
    fn filter_validation() {
        for ok in [
            "#",
            "+",
            "a/#",
            "a/+/b",
            "+/+",
            "/",
            "a//b",
            "$SYS/#",
            "$share/g/a/#",
            "$share/g/#",
        ] {
            assert_eq!(validate_topic_filter(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, TopicError)] = &[
            ("", TopicError::Empty),
            ("a/b#", TopicError::InvalidWildcard),
            ("a/#/b", TopicError::InvalidWildcard),
            ("a/+b", TopicError::InvalidWildcard),
            ("a+/b", TopicError::InvalidWildcard),
            ("##", TopicError::InvalidWildcard),
            ("a\0b", TopicError::NullChar),
            ("$share/", TopicError::InvalidShare),
            ("$share/g", TopicError::InvalidShare),
            ("$share/g/", TopicError::InvalidShare),
            ("$share//a", TopicError::InvalidShare),
            ("$share/g+/a", TopicError::InvalidShare),
            ("$share/#/a", TopicError::InvalidShare),
            ("$share/g/a#", TopicError::InvalidWildcard),
        ];
        for &(filter, err) in bad {
            assert_eq!(validate_topic_filter(filter), Err(err), "{filter:?}");
        }
        assert_eq!(
            validate_topic_filter(&"a".repeat(MAX_TOPIC_LEN + 1)),
            Err(TopicError::TooLong)
        );
    }

    #[test]
    fn depth_is_limited() {
        let at_limit = vec!["a"; MAX_TOPIC_LEVELS].join("/");
        let over = vec!["a"; MAX_TOPIC_LEVELS + 1].join("/");
        assert!(!too_deep(at_limit.as_bytes()));
        assert!(too_deep(over.as_bytes()));
        assert_eq!(validate_topic_name(&at_limit), Ok(()));
        assert_eq!(validate_topic_name(&over), Err(TopicError::TooDeep));
        assert_eq!(validate_topic_filter(&at_limit), Ok(()));
        assert_eq!(validate_topic_filter(&over), Err(TopicError::TooDeep));
        // Only slashes: the shape that overflowed the broker's recursive trie.
        let slashes = "/".repeat(MAX_TOPIC_LEN);
        assert_eq!(validate_topic_name(&slashes), Err(TopicError::TooDeep));
        assert_eq!(validate_topic_filter(&slashes), Err(TopicError::TooDeep));
        let shared = format!("$share/g/{}", "+/".repeat(MAX_TOPIC_LEVELS));
        assert_eq!(validate_topic_filter(&shared), Err(TopicError::TooDeep));
    }

    #[test]
    fn name_validation() {
        for ok in ["a", "/", "a/b", "$SYS/x", " "] {
            assert_eq!(validate_topic_name(ok), Ok(()));
        }
        assert_eq!(validate_topic_name(""), Err(TopicError::Empty));
        assert_eq!(validate_topic_name("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a/#"), Err(TopicError::WildcardInName));
        assert_eq!(validate_topic_name("a\0"), Err(TopicError::NullChar));
    }

    #[test]
    fn shared_parse() {
        assert_eq!(SharedSubscription::parse("a/b"), Ok(None));
        assert_eq!(
            SharedSubscription::parse("$share/grp/a/+"),
            Ok(Some(SharedSubscription {
                group: "grp",
                filter: "a/+"
            }))
        );
        assert_eq!(
            SharedSubscription::parse("$share/grp"),
            Err(TopicError::InvalidShare)
        );
        assert_eq!(SharedSubscription::parse("$shared/grp/a"), Ok(None));
        assert_eq!(split_shared("$share/grp/a/+"), (Some("grp"), "a/+"));
        assert_eq!(split_shared("a/+"), (None, "a/+"));
        assert_eq!(split_shared("$share/grp"), (None, "$share/grp"));
    }
}
