//! Message attributes: what a message means beyond its payload, typed and
//! protocol-neutral, so that no protocol steers another through loose strings.
//!
//! Every adapter translates its own wire properties to and from [`Attributes`] through
//! one documented table (README, "Message attributes"): MQTT 5 properties, AMQP basic
//! properties, STOMP headers, CloudEvents attributes (`ce-*` over HTTP). User headers are
//! a separate list that never sets an attribute. Who sent a message ([`Sender`]) is set
//! by the Hub from the caller's [`crate::AuthContext`], never from anything in the
//! message.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::topic::Topic;

/// The delivery guarantee the publisher asked for (MQTT QoS 0/1/2, AMQP's confirms and
/// delivery mode, STOMP receipts).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Guarantee {
    /// Fire and forget (MQTT QoS 0).
    AtMostOnce,
    /// Redelivered until acknowledged; may arrive twice (MQTT QoS 1).
    AtLeastOnce,
    /// Delivered once (MQTT QoS 2).
    ExactlyOnce,
}

impl Guarantee {
    /// The CloudEvents / JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Guarantee::AtMostOnce => "at-most-once",
            Guarantee::AtLeastOnce => "at-least-once",
            Guarantee::ExactlyOnce => "exactly-once",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "at-most-once" => Some(Guarantee::AtMostOnce),
            "at-least-once" => Some(Guarantee::AtLeastOnce),
            "exactly-once" => Some(Guarantee::ExactlyOnce),
            _ => None,
        }
    }
}

/// Typed attributes of one message. Defaults mean "not given".
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Attributes {
    /// The publisher's own id for the message (AMQP `message-id`, STOMP `message-id` is
    /// ours); Polyport's event id is separate and always set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message_id: Option<String>,
    /// Correlates a reply with its request (MQTT correlation data, AMQP
    /// `correlation-id`).
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "opt_b64",
        rename = "correlation_id_base64"
    )]
    pub correlation_id: Option<Bytes>,
    /// Where replies go, on the shared tree (MQTT response topic, AMQP `reply-to` with
    /// `.` ↔ `/`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Topic>,
    /// After this instant the message is not delivered (MQTT message expiry, AMQP
    /// `expiration`, both relative on the wire and made absolute on arrival).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    /// 0 (lowest) to 9 (AMQP `priority`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// The guarantee the publisher asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guarantee: Option<Guarantee>,
    /// The publisher asked for the message to survive a restart (AMQP delivery mode 2,
    /// STOMP `persistent`); whether it is logged is still the topic's configuration.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub persistent: Option<bool>,
    /// The publisher asked for it to be the topic's retained message (MQTT retain).
    #[serde(skip_serializing_if = "is_false")]
    pub retain: bool,
    /// When the publisher says it made the message (AMQP `timestamp`); the event's own
    /// `time` is when Polyport accepted it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamp: Option<DateTime<Utc>>,
    /// Content encoding of the payload (AMQP `content-encoding`, e.g. `gzip`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content_encoding: Option<String>,
    /// The publisher declared the payload UTF-8 text (MQTT payload format indicator).
    #[serde(skip_serializing_if = "is_false")]
    pub utf8: bool,
    /// The user headers with their value types, as JSON, when the publishing protocol
    /// types them (AMQP field tables: integers, booleans, void, nested tables). Every
    /// protocol sees the string form in the event's headers; one that types header
    /// values gives them back exactly from this (a Celery task's `eta: None`, `retries:
    /// 0`). It never sets an attribute or steers delivery.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub typed_headers: Option<std::sync::Arc<str>>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

mod opt_b64 {
    use super::*;

    pub(super) fn serialize<S: serde::Serializer>(
        v: &Option<Bytes>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_str(&B64.encode(b)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Bytes>, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        s.map(|s| {
            B64.decode(s)
                .map(Bytes::from)
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

/// The connection a message came from; the Hub copies it from the caller's
/// [`crate::AuthContext`] (MQTT uses the client id for no-local).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// Unique per connection within one server process.
    pub connection: u64,
    /// The client's own id, where its protocol has one (MQTT client id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<Arc<str>>,
}

/// CloudEvents extension attributes that carry [`Attributes`], in the envelope and as
/// HTTP binary-mode `ce-*` headers. A user header with one of these names never reaches
/// the envelope: it cannot pass for an attribute.
pub const EXTENSIONS: &[&str] = &[
    "messageid",
    "correlationid",
    "replyto",
    "expirytime",
    "priority",
    "guarantee",
    "persistent",
    "retain",
    "senttime",
    "contentencoding",
];

/// A `ce-*` value that does not fit its attribute.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct AttributeError {
    /// The extension name.
    pub name: String,
    /// What is wrong.
    pub reason: String,
}

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

impl Attributes {
    /// Adds the given attributes to a CloudEvent as extension attributes.
    pub fn to_extensions(&self, m: &mut Map<String, Value>) {
        if let Some(v) = &self.message_id {
            m.insert("messageid".into(), v.clone().into());
        }
        if let Some(c) = &self.correlation_id {
            // Text correlation ids (the usual case) read as themselves; binary ones are
            // base64 with a `base64:` prefix, which no text id of ours starts with.
            let v = match std::str::from_utf8(c) {
                Ok(s) if !s.starts_with("base64:") => s.to_string(),
                _ => format!("base64:{}", B64.encode(c)),
            };
            m.insert("correlationid".into(), v.into());
        }
        if let Some(t) = &self.reply_to {
            m.insert("replyto".into(), t.as_str().into());
        }
        if let Some(t) = &self.expires_at {
            m.insert("expirytime".into(), rfc3339(t).into());
        }
        if let Some(p) = self.priority {
            m.insert("priority".into(), p.into());
        }
        if let Some(g) = self.guarantee {
            m.insert("guarantee".into(), g.as_str().into());
        }
        if let Some(p) = self.persistent {
            m.insert("persistent".into(), p.into());
        }
        if self.retain {
            m.insert("retain".into(), true.into());
        }
        if let Some(t) = &self.timestamp {
            m.insert("senttime".into(), rfc3339(t).into());
        }
        if let Some(e) = &self.content_encoding {
            m.insert("contentencoding".into(), e.clone().into());
        }
    }

    /// Sets the attribute a CloudEvents extension names (`name` lowercase, without
    /// `ce-`). Returns `Ok(false)` when the name is no attribute (a user header then).
    pub fn set_extension(&mut self, name: &str, value: &str) -> Result<bool, AttributeError> {
        let bad = |reason: &str| AttributeError {
            name: name.to_string(),
            reason: reason.to_string(),
        };
        let time = |v: &str| {
            DateTime::parse_from_rfc3339(v)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|_| bad("expected an RFC 3339 time, e.g. 2026-12-01T10:00:00Z"))
        };
        let flag = |v: &str| match v {
            "true" | "1" => Ok(true),
            "false" | "0" => Ok(false),
            _ => Err(bad("expected true or false")),
        };
        match name {
            "messageid" => self.message_id = Some(value.to_string()),
            "correlationid" => {
                self.correlation_id = Some(match value.strip_prefix("base64:") {
                    Some(b) => Bytes::from(B64.decode(b).map_err(|_| bad("invalid base64"))?),
                    None => Bytes::copy_from_slice(value.as_bytes()),
                })
            }
            "replyto" => {
                self.reply_to =
                    Some(Topic::new(value).map_err(|e| bad(&format!("not a topic: {e}")))?)
            }
            "expirytime" => self.expires_at = Some(time(value)?),
            "priority" => {
                self.priority = Some(
                    value
                        .parse::<u8>()
                        .ok()
                        .filter(|p| *p <= 9)
                        .ok_or_else(|| bad("expected a whole number from 0 to 9"))?,
                )
            }
            "guarantee" => {
                self.guarantee =
                    Some(Guarantee::parse(value).ok_or_else(|| {
                        bad("expected at-most-once, at-least-once or exactly-once")
                    })?)
            }
            "persistent" => self.persistent = Some(flag(value)?),
            "retain" => self.retain = flag(value)?,
            "senttime" => self.timestamp = Some(time(value)?),
            "contentencoding" => self.content_encoding = Some(value.to_string()),
            _ => return Ok(false),
        }
        Ok(true)
    }

    /// Sets attributes given by extension name, as a JSON `attributes` object (WebSocket,
    /// gRPC) carries them: a name that is no attribute is an error here, since such
    /// clients have a separate place for user headers.
    pub fn set_named<'a>(
        &mut self,
        pairs: impl IntoIterator<Item = (&'a str, String)>,
    ) -> Result<(), AttributeError> {
        for (name, value) in pairs {
            if !self.set_extension(name, &value)? {
                return Err(AttributeError {
                    name: name.to_string(),
                    reason: format!(
                        "not an attribute (one of {}); put other metadata in 'headers'",
                        EXTENSIONS.join(", ")
                    ),
                });
            }
        }
        Ok(())
    }

    /// Whether the message is past its expiry at `now`.
    pub fn expired(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Attributes {
        Attributes {
            message_id: Some("m-1".into()),
            correlation_id: Some(Bytes::from_static(b"\x00\xffbin")),
            reply_to: Some(Topic::new("replies/a").unwrap()),
            expires_at: Some(
                DateTime::parse_from_rfc3339("2030-01-02T03:04:05.123456Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            priority: Some(7),
            guarantee: Some(Guarantee::ExactlyOnce),
            persistent: Some(true),
            retain: true,
            timestamp: Some(
                DateTime::parse_from_rfc3339("2026-01-02T03:04:05Z")
                    .unwrap()
                    .with_timezone(&Utc),
            ),
            content_encoding: Some("gzip".into()),
            utf8: false,
            typed_headers: Some(r#"{"n":{"LongInt":5}}"#.into()),
        }
    }

    #[test]
    fn extensions_round_trip_every_attribute() {
        let a = full();
        let mut m = Map::new();
        a.to_extensions(&mut m);
        assert_eq!(m.len(), EXTENSIONS.len());
        let mut back = Attributes::default();
        for (k, v) in &m {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            assert_eq!(back.set_extension(k, &v), Ok(true), "{k}");
        }
        // Typed headers stay with the stored event: CloudEvents carry the string headers.
        let a = Attributes {
            typed_headers: None,
            ..a
        };
        assert_eq!(back, a);
    }

    #[test]
    fn text_correlation_ids_read_as_text() {
        let a = Attributes {
            correlation_id: Some(Bytes::from_static(b"req-42")),
            ..Attributes::default()
        };
        let mut m = Map::new();
        a.to_extensions(&mut m);
        assert_eq!(m["correlationid"], "req-42");
    }

    #[test]
    fn bad_values_are_named_and_unknown_names_are_user_headers() {
        let mut a = Attributes::default();
        assert!(a.set_extension("priority", "12").is_err());
        assert!(a.set_extension("expirytime", "soon").is_err());
        assert!(a.set_extension("replyto", "a/+").is_err());
        assert_eq!(a.set_extension("mqttclient", "x"), Ok(false));
        assert_eq!(a, Attributes::default());
    }

    #[test]
    fn stored_form_round_trips() {
        let a = full();
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<Attributes>(&json).unwrap(), a);
        assert_eq!(serde_json::to_string(&Attributes::default()).unwrap(), "{}");
    }
}
