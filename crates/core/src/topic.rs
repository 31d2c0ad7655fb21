//! Topic names and filters: the one `/`-separated tree every protocol maps onto.
//!
//! Semantics are MQTT's (`+` matches one segment, `#` the rest, `$`-prefixed first
//! segments are not matched by a leading wildcard) because MQTT is the strictest of the
//! protocols we translate; AMQP and STOMP naming is converted in their adapters.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Longest topic or filter accepted, in bytes (MQTT's own limit).
pub const MAX_TOPIC_LEN: usize = 65_535;

/// Why a topic name or filter was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Empty string.
    #[error("topic must not be empty")]
    Empty,
    /// Longer than [`MAX_TOPIC_LEN`].
    #[error("topic is longer than {MAX_TOPIC_LEN} bytes")]
    TooLong,
    /// Contains a NUL character.
    #[error("topic must not contain NUL")]
    Nul,
    /// A publish topic containing `+` or `#`.
    #[error("wildcards (+, #) are not allowed in a topic name, only in filters")]
    WildcardInName,
    /// `+` or `#` not occupying a whole segment, or `#` not last.
    #[error(
        "invalid wildcard in filter segment {segment}: '+' and '#' must fill a whole segment and '#' must be last"
    )]
    BadWildcard {
        /// Zero-based index of the offending segment.
        segment: usize,
    },
}

/// A concrete topic an event is published on, e.g. `sensors/temperature`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Topic(Arc<str>);

impl Topic {
    /// Validates a topic name.
    pub fn new(name: &str) -> Result<Self, TopicError> {
        check_common(name)?;
        if name.contains(['+', '#']) {
            return Err(TopicError::WildcardInName);
        }
        Ok(Self(Arc::from(name)))
    }

    /// The topic a record change is published on.
    pub fn for_record(collection: &str, id: &str) -> Self {
        Self(Arc::from(format!("collections/{collection}/{id}")))
    }

    /// The name as a string slice.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The segments between `/`.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

impl<'de> Deserialize<'de> for Topic {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Topic::new(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Topic({:?})", &*self.0)
    }
}

fn check_common(s: &str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty);
    }
    if s.len() > MAX_TOPIC_LEN {
        return Err(TopicError::TooLong);
    }
    if s.contains('\0') {
        return Err(TopicError::Nul);
    }
    Ok(())
}

/// One parsed filter segment.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
enum Seg {
    Lit(Box<str>),
    One,
    Rest,
}

/// A topic filter such as `sensors/+/temperature` or `collections/posts/#`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct TopicFilter {
    raw: Arc<str>,
    segs: Arc<[Seg]>,
}

impl TopicFilter {
    /// Parses and validates a filter.
    pub fn new(filter: &str) -> Result<Self, TopicError> {
        check_common(filter)?;
        let parts: Vec<&str> = filter.split('/').collect();
        let last = parts.len() - 1;
        let mut segs = Vec::with_capacity(parts.len());
        for (i, p) in parts.into_iter().enumerate() {
            let seg = match p {
                "+" => Seg::One,
                "#" if i == last => Seg::Rest,
                _ if p.contains(['+', '#']) => return Err(TopicError::BadWildcard { segment: i }),
                _ => Seg::Lit(p.into()),
            };
            segs.push(seg);
        }
        Ok(Self {
            raw: Arc::from(filter),
            segs: segs.into(),
        })
    }

    /// The filter that matches every change of one collection.
    pub fn for_collection(collection: &str) -> Self {
        // Collection names are validated identifiers, so this cannot fail.
        Self {
            raw: Arc::from(format!("collections/{collection}/+")),
            segs: vec![
                Seg::Lit("collections".into()),
                Seg::Lit(collection.into()),
                Seg::One,
            ]
            .into(),
        }
    }

    /// The filter text.
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// True when the filter contains no wildcard.
    pub fn is_exact(&self) -> bool {
        self.segs.iter().all(|s| matches!(s, Seg::Lit(_)))
    }

    /// The literal leading part before the first wildcard, useful to narrow log scans.
    pub fn literal_prefix(&self) -> String {
        let mut out = String::new();
        for s in self.segs.iter() {
            match s {
                Seg::Lit(l) => {
                    out.push_str(l);
                    out.push('/');
                }
                _ => {
                    out.pop();
                    return out;
                }
            }
        }
        out.pop();
        out
    }

    /// MQTT matching: `+` one segment, `#` zero or more trailing segments (so `a/#`
    /// matches `a`), and a leading wildcard never matches a `$`-topic.
    pub fn matches(&self, topic: &Topic) -> bool {
        let name = topic.as_str();
        if name.starts_with('$') && !matches!(self.segs.first(), Some(Seg::Lit(_))) {
            return false;
        }
        let mut parts = name.split('/');
        for seg in self.segs.iter() {
            match seg {
                Seg::Rest => return true,
                Seg::One => {
                    if parts.next().is_none() {
                        return false;
                    }
                }
                Seg::Lit(l) => match parts.next() {
                    Some(p) if p == &**l => {}
                    _ => return false,
                },
            }
        }
        parts.next().is_none()
    }
}

impl fmt::Display for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl fmt::Debug for TopicFilter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicFilter({:?})", &*self.raw)
    }
}

impl Serialize for TopicFilter {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for TopicFilter {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        TopicFilter::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(f: &str, t: &str) -> bool {
        TopicFilter::new(f)
            .unwrap()
            .matches(&Topic::new(t).unwrap())
    }

    #[test]
    fn mqtt_spec_examples() {
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1"));
        assert!(m("sport/tennis/player1/#", "sport/tennis/player1/ranking"));
        assert!(m("sport/#", "sport"));
        assert!(m("#", "a/b/c"));
        assert!(m("sport/tennis/+", "sport/tennis/player1"));
        assert!(!m("sport/tennis/+", "sport/tennis/player1/ranking"));
        assert!(!m("sport/+", "sport"));
        assert!(m("sport/+", "sport/"));
        assert!(m("+/+", "/finance"));
        assert!(m("/+", "/finance"));
        assert!(!m("+", "/finance"));
        assert!(!m("#", "$SYS/broker"));
        assert!(!m("+/monitor", "$SYS/monitor"));
        assert!(m("$SYS/#", "$SYS/broker"));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(Topic::new("a/+"), Err(TopicError::WildcardInName));
        assert_eq!(Topic::new(""), Err(TopicError::Empty));
        assert_eq!(
            TopicFilter::new("a/#/b").map(|_| ()),
            Err(TopicError::BadWildcard { segment: 1 })
        );
        assert_eq!(
            TopicFilter::new("a/b+").map(|_| ()),
            Err(TopicError::BadWildcard { segment: 1 })
        );
        assert!(TopicFilter::new("a\0").is_err());
    }

    #[test]
    fn literal_prefix() {
        assert_eq!(TopicFilter::new("a/b/+/c").unwrap().literal_prefix(), "a/b");
        assert_eq!(TopicFilter::new("a/b").unwrap().literal_prefix(), "a/b");
        assert_eq!(TopicFilter::new("#").unwrap().literal_prefix(), "");
    }

    fn seg() -> impl Strategy<Value = String> {
        prop_oneof!["[a-c]{0,2}", Just("$x".to_string())]
    }

    proptest! {
        #[test]
        fn exact_filter_matches_only_itself(a in prop::collection::vec(seg(), 1..5), b in prop::collection::vec(seg(), 1..5)) {
            let ta = a.join("/");
            let tb = b.join("/");
            prop_assume!(!ta.is_empty() && !tb.is_empty());
            prop_assert_eq!(m(&ta, &tb), ta == tb);
        }

        #[test]
        fn hash_matches_every_non_dollar_topic(a in prop::collection::vec(seg(), 1..5)) {
            let t = a.join("/");
            prop_assume!(!t.is_empty());
            prop_assert_eq!(m("#", &t), !t.starts_with('$'));
        }

        #[test]
        fn plus_replacement_matches(a in prop::collection::vec("[a-c]{1,2}", 1..5), i in 0usize..5) {
            let i = i % a.len();
            let mut f = a.clone();
            f[i] = "+".into();
            prop_assert!(m(&f.join("/"), &a.join("/")));
            // One extra segment never matches a filter without '#'.
            let longer = format!("{}/z", a.join("/"));
            prop_assert!(!m(&f.join("/"), &longer));
        }

        #[test]
        fn prefix_hash_matches_descendants(a in prop::collection::vec("[a-c]{1,2}", 1..5), k in 0usize..5) {
            let k = k % a.len();
            let f = format!("{}/#", a[..k.max(1)].join("/"));
            prop_assert!(m(&f, &a.join("/")));
        }
    }
}
