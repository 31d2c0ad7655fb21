//! A queue's bindings: the topic filter each subscribes to on the tree, and the AMQP
//! rule (exact key, topic pattern, headers) that decides whether a message routes.

use amq_protocol::types::{AMQPValue, FieldTable};
use polyport_core::TopicFilter;

use crate::naming::{self, Kind};

/// One binding of the queue.
#[derive(Clone, Debug)]
pub(crate) struct Binding {
    pub(crate) exchange: String,
    pub(crate) kind: Kind,
    pub(crate) key: String,
    pub(crate) filter: TopicFilter,
    /// A headers exchange binding's arguments (`x-match` and the headers to match).
    pub(crate) args: FieldTable,
}

/// What routing looks at in a message: its topic and its headers.
pub(crate) struct Routed<'a> {
    pub(crate) topic: &'a polyport_core::Topic,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) typed: Option<&'a str>,
}

impl<'a> Routed<'a> {
    pub(crate) fn event(e: &'a polyport_core::Event) -> Self {
        Self {
            topic: &e.topic,
            headers: &e.headers,
            typed: e.attrs.typed_headers.as_deref(),
        }
    }

    pub(crate) fn draft(d: &'a polyport_core::EventDraft) -> Self {
        Self {
            topic: &d.topic,
            headers: &d.headers,
            typed: d.attrs.typed_headers.as_deref(),
        }
    }

    /// A header's value, typed when the publisher typed it.
    fn header(&self, name: &str) -> Option<AMQPValue> {
        if let Some(t) = self
            .typed
            .and_then(|j| serde_json::from_str::<FieldTable>(j).ok())
        {
            return t.inner().get(name).cloned();
        }
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| AMQPValue::LongString(v.as_bytes().to_vec().into()))
    }
}

impl Binding {
    pub(crate) fn new(exchange: &str, kind: Kind, key: &str, args: FieldTable) -> Option<Self> {
        Some(Self {
            exchange: exchange.to_string(),
            kind,
            key: key.to_string(),
            filter: naming::binding_filter(exchange, kind, key)?,
            args,
        })
    }

    /// The routing key a message carries through this binding, if it routes here.
    pub(crate) fn route(&self, m: &Routed<'_>) -> Option<String> {
        if !self.filter.matches(m.topic) {
            return None;
        }
        let key = naming::routing_key(&self.exchange, self.kind, m.topic.as_str())?;
        let hit = match self.kind {
            Kind::Topic => naming::key_matches(&self.key, &key),
            Kind::Direct => key == self.key,
            Kind::Fanout => true,
            Kind::Headers => self.headers_match(m),
        };
        hit.then_some(key)
    }

    /// RabbitMQ's headers exchange: `x-match` `all` (the default) or `any` of the
    /// binding's other arguments; a void argument asks only that the header exists.
    /// Values compare by their text, so `5` matches `"5"`.
    fn headers_match(&self, m: &Routed<'_>) -> bool {
        let mode = self
            .args
            .inner()
            .get("x-match")
            .map(crate::props::value_text)
            .unwrap_or_else(|| "all".into());
        let mut wanted = self
            .args
            .inner()
            .iter()
            .filter(|(k, _)| !k.as_str().starts_with("x-"))
            .map(|(k, want)| match m.header(k.as_str()) {
                None => false,
                Some(_) if matches!(want, AMQPValue::Void) => true,
                Some(got) => crate::props::value_text(&got) == crate::props::value_text(want),
            });
        match mode.as_str() {
            "any" | "any-with-x" => wanted.any(|hit| hit),
            _ => wanted.all(|hit| hit),
        }
    }
}
