//! A queue's bindings: the topic filter each subscribes to on the tree, and the AMQP
//! rule (exact key, topic pattern, headers) that decides whether a message routes.

use amq_protocol_types::{AMQPValue, FieldTable};
use polyport_core::TopicFilter;

use crate::naming::{self, Kind};

/// One binding of the queue, or one path to it through exchange-to-exchange bindings:
/// `exchange` is where a message is published, `then` the rules of the exchanges it
/// passes on its way here (RabbitMQ keeps the routing key along the path).
#[derive(Clone, Debug)]
pub struct Binding {
    /// Where a message is published.
    pub exchange: String,
    /// That exchange's type.
    pub kind: Kind,
    /// The binding key there.
    pub key: String,
    pub(crate) filter: TopicFilter,
    /// A headers exchange binding's arguments (`x-match` and the headers to match).
    pub args: FieldTable,
    pub(crate) then: Vec<Rule>,
}

/// The routing rule of one exchange on a path: its type and the binding's key and
/// arguments.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Rule {
    pub kind: Kind,
    pub key: String,
    pub args: FieldTable,
}

impl Rule {
    fn admits(&self, key: &str, m: &Routed<'_>) -> bool {
        admits(self.kind, &self.key, &self.args, key, m)
    }
}

/// Whether an exchange of `kind` passes a message with routing `key` along a binding
/// with `pattern` and `args`.
fn admits(kind: Kind, pattern: &str, args: &FieldTable, key: &str, m: &Routed<'_>) -> bool {
    match kind {
        Kind::Topic => naming::key_matches(pattern, key),
        Kind::Direct => key == pattern,
        Kind::Fanout => true,
        Kind::Headers => headers_match(args, m),
    }
}

/// An exchange-to-exchange binding seen from its destination: the source exchange, its
/// type, and the binding's rule there.
pub(crate) type Source = (String, Kind, Rule);

/// Paths longer than this are not followed (RabbitMQ has no limit but visits each
/// exchange once; so do we).
const MAX_HOPS: usize = 16;

/// A queue's own bindings plus every path to them through exchange-to-exchange
/// bindings, given each exchange's sources (`exchange -> [(source, rule)]`).
pub(crate) fn expand(own: &[Binding], sources: &dyn Fn(&str) -> Vec<Source>) -> Vec<Binding> {
    let mut out = Vec::new();
    let mut stack: Vec<(Binding, Vec<String>)> = own
        .iter()
        .map(|b| (b.clone(), vec![b.exchange.clone()]))
        .collect();
    while let Some((b, visited)) = stack.pop() {
        if visited.len() < MAX_HOPS {
            for (source, source_kind, rule) in sources(&b.exchange) {
                if visited.contains(&source) {
                    continue;
                }
                let Some(filter) = naming::binding_filter(&source, source_kind, &rule.key) else {
                    continue;
                };
                let mut then = vec![Rule {
                    kind: b.kind,
                    key: b.key.clone(),
                    args: b.args.clone(),
                }];
                then.extend(b.then.iter().cloned());
                let mut seen = visited.clone();
                seen.push(source.clone());
                stack.push((
                    Binding {
                        exchange: source,
                        kind: source_kind,
                        key: rule.key,
                        filter,
                        args: rule.args,
                        then,
                    },
                    seen,
                ));
            }
        }
        out.push(b);
    }
    out
}

/// What routing looks at in a message: its topic and its headers.
pub struct Routed<'a> {
    pub(crate) topic: &'a polyport_core::Topic,
    pub(crate) headers: &'a [(String, String)],
    pub(crate) typed: Option<&'a str>,
}

impl<'a> Routed<'a> {
    /// What an event carries.
    pub fn event(e: &'a polyport_core::Event) -> Self {
        Self {
            topic: &e.topic,
            headers: &e.headers,
            typed: e.attrs.typed_headers.as_deref(),
        }
    }

    /// What a publish carries.
    pub fn draft(d: &'a polyport_core::EventDraft) -> Self {
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
    /// The topic filter it routes.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// A binding of `exchange` with `key`; `None` when the key cannot map to a filter.
    pub fn new(exchange: &str, kind: Kind, key: &str, args: FieldTable) -> Option<Self> {
        Some(Self {
            exchange: exchange.to_string(),
            kind,
            key: key.to_string(),
            filter: naming::binding_filter(exchange, kind, key)?,
            args,
            then: Vec::new(),
        })
    }

    /// The routing key a message carries through this binding, if it routes here.
    pub fn route(&self, m: &Routed<'_>) -> Option<String> {
        if !self.filter.matches(m.topic) {
            return None;
        }
        let key = naming::routing_key(&self.exchange, self.kind, m.topic.as_str())?;
        let hit = admits(self.kind, &self.key, &self.args, &key, m)
            && self.then.iter().all(|r| r.admits(&key, m));
        hit.then_some(key)
    }
}

/// RabbitMQ's headers exchange: `x-match` `all` (the default) or `any` of the
/// binding's other arguments; a void argument asks only that the header exists.
/// Values compare by their text, so `5` matches `"5"`.
fn headers_match(args: &FieldTable, m: &Routed<'_>) -> bool {
    let mode = args
        .inner()
        .get("x-match")
        .map(crate::values::value_text)
        .unwrap_or_else(|| "all".into());
    let mut wanted = args
        .inner()
        .iter()
        .filter(|(k, _)| !k.as_str().starts_with("x-"))
        .map(|(k, want)| match m.header(k.as_str()) {
            None => false,
            Some(_) if matches!(want, AMQPValue::Void) => true,
            Some(got) => crate::values::value_text(&got) == crate::values::value_text(want),
        });
    match mode.as_str() {
        "any" | "any-with-x" => wanted.any(|hit| hit),
        _ => wanted.all(|hit| hit),
    }
}
