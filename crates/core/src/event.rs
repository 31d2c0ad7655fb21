//! Events: what flows on the topic tree, and their one wire envelope (CloudEvents 1.0 JSON).
//!
//! An event is immutable once published and shared by `Arc` between every subscriber, so
//! its CloudEvent rendering is computed at most once however many transports send it.

use std::sync::{Arc, OnceLock};

use base64::Engine as _;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::attributes::{Attributes, EXTENSIONS, Sender};
use crate::topic::Topic;

/// The protocol or component an event entered through, e.g. `http`, `ws`, `mqtt`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(transparent)]
pub struct Origin(pub &'static str);

impl Origin {
    /// Events produced by the hub itself (record changes carry the writer's origin instead).
    pub const HUB: Origin = Origin("hub");

    /// Maps a stored origin label back to a static string, keeping unknown labels generic.
    pub fn from_label(label: &str) -> Origin {
        const KNOWN: &[&str] = &[
            "hub", "http", "ws", "sse", "cli", "mqtt", "amqp", "stomp", "grpc", "graphql", "soap",
            "webhook", "demo",
        ];
        KNOWN
            .iter()
            .find(|k| **k == label)
            .map(|k| Origin(k))
            .unwrap_or(Origin("other"))
    }
}

/// Whether an event is appended to the durable event log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Let the hub's topic configuration decide (durable unless configured ephemeral).
    #[default]
    Auto,
    /// Appended to the log and given a sequence before it is acknowledged.
    Durable,
    /// Appended to the log with a sequence like a durable event, and acknowledged once
    /// written, without waiting for the disk to confirm it: it survives a crash of the
    /// process (`kill -9`), not of the machine. For what its sender marked transient
    /// (AMQP `delivery_mode` 1, STOMP without `persistent`), which RabbitMQ keeps in
    /// memory only; as `Auto`, `events.ephemeral_topics` makes it memory-only.
    Logged,
    /// Fanned out in memory only; never replayed.
    Ephemeral,
}

/// What a publisher hands the hub.
#[derive(Clone, Debug)]
pub struct EventDraft {
    /// Where it goes.
    pub topic: Topic,
    /// The exact bytes published.
    pub payload: Bytes,
    /// MIME type of the payload, when known.
    pub content_type: Option<String>,
    /// CloudEvents `type`; defaults to [`DEFAULT_EVENT_TYPE`].
    pub event_type: Option<String>,
    /// Typed attributes (reply-to, correlation, expiry, …).
    pub attrs: Attributes,
    /// User headers (MQTT user properties, AMQP headers, …): carried along, never read
    /// as an attribute.
    pub headers: Vec<(String, String)>,
    /// Requested durability.
    pub durability: Durability,
}

impl EventDraft {
    /// A draft with just a topic and payload.
    pub fn new(topic: Topic, payload: impl Into<Bytes>) -> Self {
        Self {
            topic,
            payload: payload.into(),
            content_type: None,
            event_type: None,
            attrs: Attributes::default(),
            headers: Vec::new(),
            durability: Durability::Auto,
        }
    }
}

/// CloudEvents `type` of a plain published message.
pub const DEFAULT_EVENT_TYPE: &str = "polyport.message";

/// One event on the topic tree.
#[derive(Debug)]
pub struct Event {
    /// Position in the event log; `None` for ephemeral events.
    pub seq: Option<u64>,
    /// Globally unique id (ULID), stable across replays.
    pub id: String,
    /// Topic it was published on.
    pub topic: Topic,
    /// CloudEvents `type`.
    pub event_type: String,
    /// When it was accepted.
    pub time: DateTime<Utc>,
    /// MIME type of the payload.
    pub content_type: Option<String>,
    /// Typed attributes.
    pub attrs: Attributes,
    /// User headers.
    pub headers: Vec<(String, String)>,
    /// Payload bytes, exactly as published.
    pub payload: Bytes,
    /// The adapter it came through.
    pub origin: Origin,
    /// The connection it came from, as the Hub knew it (not stored for record changes).
    pub sender: Option<Sender>,
    rendered: OnceLock<Bytes>,
    parsed: OnceLock<Option<Value>>,
    /// Adapters' wire renderings (see [`Event::rendered_as`]); allocated on first use.
    renderings: OnceLock<Box<[OnceLock<Bytes>; MAX_RENDERINGS]>>,
}

/// How many wire renderings an event can cache.
const MAX_RENDERINGS: usize = 8;

/// A wire rendering an adapter caches on events: an SSE frame, an NDJSON line, a
/// protocol's message body. Declared once as a `static`; each gets a slot on first use.
///
/// One event fanned out to 10,000 subscribers is then rendered once per wire format and
/// its bytes shared (a reference count per subscriber), not rendered 10,000 times.
/// Core stays protocol-neutral: it stores bytes under a key and never looks inside.
pub struct RenderKey {
    slot: OnceLock<Option<usize>>,
}

impl RenderKey {
    /// A key; give each wire format its own `static`.
    pub const fn new() -> Self {
        Self {
            slot: OnceLock::new(),
        }
    }

    /// The key's slot; `None` once every slot is taken (the rendering is then not cached).
    fn slot(&self) -> Option<usize> {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        *self.slot.get_or_init(|| {
            let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            (n < MAX_RENDERINGS).then_some(n)
        })
    }
}

impl Default for RenderKey {
    fn default() -> Self {
        Self::new()
    }
}

impl Event {
    /// Builds an event; the hub and stores use this, adapters receive finished events.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seq: Option<u64>,
        id: String,
        topic: Topic,
        event_type: String,
        time: DateTime<Utc>,
        content_type: Option<String>,
        headers: Vec<(String, String)>,
        payload: Bytes,
        origin: Origin,
    ) -> Self {
        Self {
            seq,
            id,
            topic,
            event_type,
            time,
            content_type,
            attrs: Attributes::default(),
            headers,
            payload,
            origin,
            sender: None,
            rendered: OnceLock::new(),
            parsed: OnceLock::new(),
            renderings: OnceLock::new(),
        }
    }

    /// The same event with its attributes and sender.
    pub fn with_attrs(mut self, attrs: Attributes, sender: Option<Sender>) -> Self {
        self.attrs = attrs;
        self.sender = sender;
        self
    }

    /// True when the payload is JSON (by content type).
    pub fn is_json(&self) -> bool {
        self.content_type.as_deref().is_some_and(is_json_type)
    }

    /// The payload parsed as JSON, when it is JSON; parsed once and cached.
    pub fn json_payload(&self) -> Option<&Value> {
        self.parsed
            .get_or_init(|| {
                if self.is_json() {
                    serde_json::from_slice(&self.payload).ok()
                } else {
                    None
                }
            })
            .as_ref()
    }

    /// The payload as text, when it is text: a textual content type (see
    /// [`is_text_type`]) or none at all, and valid UTF-8. Transports that distinguish text
    /// from binary (WebSocket frames, CloudEvents `data` vs `data_base64`) ask this.
    pub fn text_payload(&self) -> Option<&str> {
        if self.content_type.as_deref().is_none_or(is_text_type) {
            std::str::from_utf8(&self.payload).ok()
        } else {
            None
        }
    }

    /// This event as `key`'s wire format, rendered by `render` the first time any
    /// subscriber asks and shared after: the bytes are the same for every subscriber of
    /// that format.
    pub fn rendered_as(
        &self,
        key: &'static RenderKey,
        render: impl FnOnce(&Event) -> Bytes,
    ) -> Bytes {
        let Some(slot) = key.slot() else {
            return render(self);
        };
        self.renderings.get_or_init(Default::default)[slot]
            .get_or_init(|| render(self))
            .clone()
    }

    /// The CloudEvents 1.0 structured-mode JSON of this event, rendered once.
    pub fn cloudevent_json(&self) -> &Bytes {
        self.rendered.get_or_init(|| {
            let v = self.to_cloudevent();
            Bytes::from(serde_json::to_vec(&v).unwrap_or_default())
        })
    }

    /// The CloudEvents 1.0 structured-mode JSON value of this event.
    ///
    /// JSON payloads go in `data`, text payloads in `data` as a string, anything else in
    /// `data_base64`, per the JSON event format's rules.
    pub fn to_cloudevent(&self) -> Value {
        let mut m = Map::new();
        m.insert("specversion".into(), "1.0".into());
        m.insert("id".into(), self.id.clone().into());
        m.insert(
            "source".into(),
            format!("/polyport/{}", self.origin.0).into(),
        );
        m.insert("type".into(), self.event_type.clone().into());
        m.insert("subject".into(), self.topic.as_str().into());
        m.insert(
            "time".into(),
            self.time
                .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                .into(),
        );
        if let Some(seq) = self.seq {
            m.insert("sequence".into(), seq.into());
        }
        if let Some(ct) = &self.content_type {
            m.insert("datacontenttype".into(), ct.clone().into());
        }
        self.attrs.to_extensions(&mut m);
        for (k, v) in &self.headers {
            if let Some(name) = extension_name(k)
                && !EXTENSIONS.contains(&name.as_str())
            {
                m.entry(name).or_insert_with(|| v.clone().into());
            }
        }
        if let Some(v) = self.json_payload() {
            m.insert("data".into(), v.clone());
        } else if let Some(s) = self.text_payload() {
            m.insert("data".into(), s.into());
        } else {
            m.insert(
                "data_base64".into(),
                base64::engine::general_purpose::STANDARD
                    .encode(&self.payload)
                    .into(),
            );
        }
        Value::Object(m)
    }
}

/// CloudEvents extension names are lowercase ASCII letters and digits, at most 20 chars,
/// and must not shadow a context attribute; anything else is dropped from the envelope.
fn extension_name(header: &str) -> Option<String> {
    const RESERVED: &[&str] = &[
        "specversion",
        "id",
        "source",
        "type",
        "subject",
        "time",
        "sequence",
        "datacontenttype",
        "dataschema",
        "data",
    ];
    let name: String = header
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!name.is_empty() && name.len() <= 20 && !RESERVED.contains(&name.as_str())).then_some(name)
}

/// `application/json`, `application/cloudevents+json`, `text/json`, `…+json`.
pub fn is_json_type(ct: &str) -> bool {
    let essence = ct.split(';').next().unwrap_or("").trim();
    essence.eq_ignore_ascii_case("application/json")
        || essence.eq_ignore_ascii_case("text/json")
        || essence.to_ascii_lowercase().ends_with("+json")
}

/// A media type without its parameters, lowercased: `Text/Plain; charset=x` → `text/plain`.
pub fn media_essence(ct: &str) -> String {
    ct.split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Media types whose payload is text: `text/*`, JSON and XML (with their `+json` / `+xml`
/// suffixes), HTML forms (`curl -d`'s default), and the usual textual `application/*`s.
pub fn is_text_type(ct: &str) -> bool {
    const TEXTUAL: &[&str] = &[
        "application/json",
        "application/xml",
        "application/x-www-form-urlencoded",
        "application/javascript",
        "application/ecmascript",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/x-ndjson",
        "application/graphql",
        "application/sql",
    ];
    let essence = media_essence(ct);
    essence.starts_with("text/")
        || essence.ends_with("+json")
        || essence.ends_with("+xml")
        || TEXTUAL.contains(&essence.as_str())
}

/// A notice a subscription yields in-band, so no client silently misses a fact about its
/// stream (field notes 2 and 5).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "notice", rename_all = "snake_case")]
pub enum Notice {
    /// The requested position is no longer in the log; replay starts at `from`.
    ResumedFrom {
        /// The position the client asked to resume after.
        requested: u64,
        /// The first sequence that will be delivered.
        from: u64,
        /// The log's epoch.
        epoch: String,
    },
    /// Ephemeral events were dropped because this subscriber fell behind.
    Dropped {
        /// How many.
        count: u64,
    },
}

impl Notice {
    /// The CloudEvents `type` used when a transport renders this notice as an event.
    pub fn event_type(&self) -> &'static str {
        match self {
            Notice::ResumedFrom { .. } => "polyport.notice.resumed",
            Notice::Dropped { .. } => "polyport.notice.dropped",
        }
    }

    /// The notice as a CloudEvent (without `sequence`, so it never moves a resume cursor).
    pub fn to_cloudevent(&self) -> Value {
        serde_json::json!({
            "specversion": "1.0",
            "id": ulid::Ulid::new().to_string(),
            "source": "/polyport/hub",
            "type": self.event_type(),
            "time": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "datacontenttype": "application/json",
            "data": self,
        })
    }
}

/// Shared handle to an event.
pub type EventRef = Arc<Event>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(ct: Option<&str>, payload: &'static [u8]) -> Event {
        Event::new(
            Some(7),
            "01J".into(),
            Topic::new("a/b").unwrap(),
            DEFAULT_EVENT_TYPE.into(),
            Utc::now(),
            ct.map(String::from),
            vec![("X-Trace".into(), "t1".into())],
            Bytes::from_static(payload),
            Origin("http"),
        )
    }

    #[test]
    fn a_rendering_is_made_once_per_event_and_key_and_shared() {
        static A: RenderKey = RenderKey::new();
        static B: RenderKey = RenderKey::new();
        let e = ev(None, b"x");
        let calls = std::cell::Cell::new(0);
        let render = |tag: &'static str| {
            let calls = &calls;
            move |e: &Event| {
                calls.set(calls.get() + 1);
                Bytes::from(format!("{tag}:{}", e.seq.unwrap_or(0)))
            }
        };
        let first = e.rendered_as(&A, render("a"));
        let again = e.rendered_as(&A, render("a"));
        assert_eq!((first.as_ref(), calls.get()), (&b"a:7"[..], 1));
        assert_eq!(first.as_ptr(), again.as_ptr(), "the same bytes, not a copy");
        assert_eq!(e.rendered_as(&B, render("b")).as_ref(), b"b:7");
        assert_eq!(calls.get(), 2);
    }

    #[test]
    fn json_payload_goes_in_data() {
        let v = ev(Some("application/json"), br#"{"x":1}"#).to_cloudevent();
        assert_eq!(v["data"]["x"], 1);
        assert_eq!(v["sequence"], 7);
        assert_eq!(v["subject"], "a/b");
        assert_eq!(v["xtrace"], "t1");
    }

    #[test]
    fn binary_payload_goes_in_data_base64() {
        let v = ev(Some("application/octet-stream"), &[0xff, 0x00]).to_cloudevent();
        assert_eq!(v["data_base64"], "/wA=");
        assert!(v.get("data").is_none());
    }

    #[test]
    fn textual_media_types_go_in_data_as_a_string() {
        for ct in [
            "application/x-www-form-urlencoded",
            "text/csv; charset=utf-8",
            "application/xml",
            "application/soap+xml",
            "application/problem+json",
            "application/json",
        ] {
            let v = ev(Some(ct), "25°C".as_bytes()).to_cloudevent();
            assert_eq!(v["data"], "25°C", "{ct}");
            assert!(v.get("data_base64").is_none(), "{ct}");
        }
        let v = ev(Some("application/x-www-form-urlencoded"), &[0xff]).to_cloudevent();
        assert_eq!(v["data_base64"], "/w==", "invalid UTF-8 stays binary");
    }

    #[test]
    fn text_without_type_goes_in_data() {
        let v = ev(None, "25°C".as_bytes()).to_cloudevent();
        assert_eq!(v["data"], "25°C");
    }
}
