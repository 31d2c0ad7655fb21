//! Exchanges and routing keys on the shared topic tree.
//!
//! - `amq.topic` is the tree itself, as RabbitMQ's MQTT plugin maps it: routing key
//!   `a.b.c` is topic `a/b/c`, binding pattern `*` is `+` and `#` is `#`.
//! - The default exchange `""` with key `q` is `amqp/q/{q}`: every queue is bound to it
//!   under its own name.
//! - Any other exchange `x` is `amqp/x/{x}/…`: a topic exchange's key words become levels,
//!   a direct or fanout exchange's key is one level.
//!
//! A direct or fanout key (one level) is percent-encoded where it holds what a level
//! cannot (`/`, `+`, `#`, `%`, NUL), so every key survives the round trip. In a topic
//! key, as in RabbitMQ's MQTT plugin, a `.` inside a topic level is `%2E` in the routing
//! key and a `/`, `+` or `#` inside a key word is `%2F`, `%2B`, `%23` in the topic.

use polyport_core::{Topic, TopicFilter};

/// The prefix of messages published to exchanges other than `amq.topic`.
pub const PREFIX: &str = "amqp";

/// An exchange's routing behaviour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Routes by exact routing key.
    Direct,
    /// Routes to every binding.
    Fanout,
    /// Routes by `*` / `#` key patterns.
    Topic,
    /// Routed by the message's headers against the binding's arguments.
    Headers,
}

impl Kind {
    /// From its AMQP name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "direct" => Some(Kind::Direct),
            "fanout" => Some(Kind::Fanout),
            "topic" => Some(Kind::Topic),
            "headers" => Some(Kind::Headers),
            _ => None,
        }
    }

    /// Its AMQP name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::Fanout => "fanout",
            Kind::Topic => "topic",
            Kind::Headers => "headers",
        }
    }
}

fn encode(level: &str) -> String {
    let mut out = String::with_capacity(level.len());
    for c in level.chars() {
        match c {
            '/' | '+' | '#' | '%' | '\0' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

fn decode(level: &str) -> String {
    let b = level.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Some(hex) = b.get(i + 1..i + 3)
            && let Ok(hex) = std::str::from_utf8(hex)
            && let Ok(v) = u8::from_str_radix(hex, 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A topic key's word as a topic level.
fn word_to_level(w: &str) -> String {
    w.replace('/', "%2F")
        .replace('+', "%2B")
        .replace('#', "%23")
        .replace("%2E", ".")
}

/// A topic level as a topic key's word.
fn level_to_word(l: &str) -> String {
    l.replace('.', "%2E")
        .replace("%2F", "/")
        .replace("%2B", "+")
        .replace("%23", "#")
}

fn words(key: &str) -> String {
    key.split('.')
        .map(word_to_level)
        .collect::<Vec<_>>()
        .join("/")
}

fn levels(topic: &str) -> String {
    topic
        .split('/')
        .map(level_to_word)
        .collect::<Vec<_>>()
        .join(".")
}

/// Where a message published to `exchange` with `key` goes on the tree.
pub fn publish_topic(exchange: &str, kind: Kind, key: &str) -> Option<Topic> {
    let name = match (exchange, kind) {
        ("", _) => format!("{PREFIX}/q/{}", encode(key)),
        ("amq.topic", _) => words(key),
        (x, Kind::Topic) => format!("{PREFIX}/x/{}/{}", encode(x), words(key)),
        (x, _) => format!("{PREFIX}/x/{}/{}", encode(x), encode(key)),
    };
    Topic::new(&name).ok()
}

/// What a binding of `exchange` with `key` subscribes to. For a topic exchange a `#`
/// that is not the last word has no MQTT equivalent: the filter then covers the whole
/// exchange and [`key_matches`] decides.
pub fn binding_filter(exchange: &str, kind: Kind, key: &str) -> Option<TopicFilter> {
    let pattern = |key: &str| -> String {
        let ws: Vec<&str> = key.split('.').collect();
        let last = ws.len() - 1;
        if ws[..last].contains(&"#") {
            return "#".into();
        }
        ws.iter()
            .map(|w| match *w {
                "*" => "+".to_string(),
                "#" => "#".to_string(),
                w => word_to_level(w),
            })
            .collect::<Vec<_>>()
            .join("/")
    };
    let name = match (exchange, kind) {
        ("", _) => format!("{PREFIX}/q/{}", encode(key)),
        ("amq.topic", _) => pattern(key),
        (x, Kind::Topic) => format!("{PREFIX}/x/{}/{}", encode(x), pattern(key)),
        (x, Kind::Fanout | Kind::Headers) => format!("{PREFIX}/x/{}/#", encode(x)),
        (x, Kind::Direct) => format!("{PREFIX}/x/{}/{}", encode(x), encode(key)),
    };
    TopicFilter::new(&name).ok()
}

/// The routing key a topic carries for `exchange` (the key it was published with, or
/// for `amq.topic` the topic's levels as words); `None` when the topic is not one of
/// that exchange's.
pub fn routing_key(exchange: &str, kind: Kind, topic: &str) -> Option<String> {
    match (exchange, kind) {
        ("", _) => topic.strip_prefix(&format!("{PREFIX}/q/")).map(decode),
        ("amq.topic", _) => Some(levels(topic)),
        (x, Kind::Topic) => topic
            .strip_prefix(&format!("{PREFIX}/x/{}/", encode(x)))
            .map(levels),
        (x, _) => topic
            .strip_prefix(&format!("{PREFIX}/x/{}/", encode(x)))
            .map(decode),
    }
}

/// AMQP topic matching: `*` is exactly one word, `#` zero or more.
pub fn key_matches(pattern: &str, key: &str) -> bool {
    fn go(p: &[&str], k: &[&str]) -> bool {
        match (p.first(), k.first()) {
            (None, None) => true,
            (Some(&"#"), _) => go(&p[1..], k) || (!k.is_empty() && go(p, &k[1..])),
            (Some(&"*"), Some(_)) => go(&p[1..], &k[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &k[1..]),
            _ => false,
        }
    }
    let p: Vec<&str> = pattern.split('.').collect();
    let k: Vec<&str> = key.split('.').collect();
    go(&p, &k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amq_topic_is_the_tree() {
        let t = publish_topic("amq.topic", Kind::Topic, "sensors.temperature").unwrap();
        assert_eq!(t.as_str(), "sensors/temperature");
        let f = binding_filter("amq.topic", Kind::Topic, "sensors.*").unwrap();
        assert!(f.matches(&t));
        assert_eq!(
            routing_key("amq.topic", Kind::Topic, "sensors/temperature").as_deref(),
            Some("sensors.temperature")
        );
        assert!(
            binding_filter("amq.topic", Kind::Topic, "collections.#")
                .unwrap()
                .matches(&Topic::new("collections/posts/p1").unwrap())
        );
    }

    #[test]
    fn other_exchanges_live_under_the_prefix_and_keys_round_trip() {
        for key in ["", "a/b", "x+y#z", "50%", "plain"] {
            let t = publish_topic("logs", Kind::Direct, key).unwrap();
            assert!(t.as_str().starts_with("amqp/x/logs/"), "{t:?}");
            assert_eq!(
                routing_key("logs", Kind::Direct, t.as_str()).as_deref(),
                Some(key)
            );
            assert!(
                binding_filter("logs", Kind::Direct, key)
                    .unwrap()
                    .matches(&t)
            );
            assert!(
                binding_filter("logs", Kind::Fanout, "ignored")
                    .unwrap()
                    .matches(&t)
            );
        }
        let q = publish_topic("", Kind::Direct, "hello").unwrap();
        assert_eq!(q.as_str(), "amqp/q/hello");
        assert_eq!(
            routing_key("", Kind::Direct, "amqp/q/hello").as_deref(),
            Some("hello")
        );
    }

    #[test]
    fn dots_in_levels_and_slashes_in_words_are_escaped() {
        let t = Topic::new("v1.2/a%2Fb").unwrap();
        let key = routing_key("amq.topic", Kind::Topic, t.as_str()).unwrap();
        assert_eq!(key, "v1%2E2.a/b");
        assert_eq!(publish_topic("amq.topic", Kind::Topic, &key).unwrap(), t);
    }

    #[test]
    fn topic_patterns() {
        assert!(key_matches("a.*.c", "a.b.c"));
        assert!(!key_matches("a.*.c", "a.c"));
        assert!(key_matches("#.c", "a.b.c"));
        assert!(key_matches("#", ""));
        assert!(key_matches("a.#", "a"));
        assert!(!key_matches("a.#.z", "a.b"));
        assert!(key_matches("a.#.z", "a.b.c.z"));
        let f = binding_filter("t", Kind::Topic, "#.c").unwrap();
        assert!(
            f.matches(&publish_topic("t", Kind::Topic, "x.y").unwrap()),
            "widened"
        );
    }
}
