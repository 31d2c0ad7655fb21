//! `subscribe`, `unsubscribe`, `ack`: each subscription becomes a stream of rendered
//! frames that the connection's writer polls.

use std::time::Duration;

use axum::extract::ws::Message;
use futures::StreamExt;
use futures::stream::{AbortHandle, Abortable, BoxStream};
use polyport_core::query::Filter;
use polyport_core::{AckPolicy, HubError, Item, RecordSelector, SubscribeRequest, TopicFilter};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{Out, Session, yes};

#[derive(Deserialize)]
pub(super) struct Subscribe {
    #[serde(default)]
    topic: Option<String>,
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default = "yes")]
    strict: bool,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    ack: bool,
    #[serde(default)]
    prefetch: Option<usize>,
    #[serde(default)]
    ack_timeout_ms: Option<u64>,
    #[serde(default)]
    collection: Option<String>,
    #[serde(default)]
    record_id: Option<String>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    overflow: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Unsubscribe {
    subscription: String,
}

#[derive(Deserialize)]
pub(super) struct AckOp {
    subscription: String,
    sequence: u64,
}

impl Session {
    /// Answers only once the subscription is live, and before its first event.
    pub(super) async fn subscribe(
        &mut self,
        id: Option<&Value>,
        op: Subscribe,
    ) -> Result<(), HubError> {
        if self.subs.len() >= self.max_subs {
            polyport_core::admission::limit_hit("http.max_ws_subscriptions");
            return Err(HubError::LimitReached(format!(
                "at most {} subscriptions per connection ([http] max_ws_subscriptions); unsubscribe some first",
                self.max_subs
            )));
        }
        let mut filters = Vec::new();
        for t in op.topic.iter().chain(op.topics.iter()) {
            filters.push(TopicFilter::new(t)?);
        }
        let records = match op.collection {
            Some(c) => Some(RecordSelector {
                collection: c,
                id: op.record_id,
                filter: op.filter.as_deref().map(Filter::parse).transpose()?,
            }),
            None if op.filter.is_some() => {
                return Err(HubError::InvalidRequest(
                    "'filter' applies to record changes: add 'collection'".into(),
                ));
            }
            None => None,
        };
        let ack = op.ack.then(|| AckPolicy {
            prefetch: op.prefetch.unwrap_or(100),
            ack_timeout: Duration::from_millis(op.ack_timeout_ms.unwrap_or(30_000)),
        });
        let req = SubscribeRequest {
            position_by_name: false,
            filters,
            records,
            since: op.since,
            epoch: op.epoch,
            strict: op.strict,
            group: op.group,
            ack,
            queue: None,
            adapter_managed: false,
            durable_only: false,
            overflow: crate::realtime::overflow(op.overflow.as_deref())
                .map_err(|e| HubError::InvalidRequest(e.detail.clone()))?,
        };
        let sub = self.hub.subscribe(&self.ctx, req).await?;
        self.next_sub += 1;
        let name = format!("s{}", self.next_sub);
        let reply = json!({
            "subscription": name,
            "epoch": sub.epoch(),
            "position": sub.start_position(),
        });
        // Reply before the writer follows it, so `ok` precedes the first event.
        self.ok(id, reply).await;
        let acker = sub.acker();
        let (abort, reg) = AbortHandle::new_pair();
        let follow = Abortable::new(frames(sub, name.clone()), reg);
        let _ = self.out.send(Out::Follow(follow)).await;
        self.subs.insert(name, (abort, acker));
        Ok(())
    }

    pub(super) fn unsubscribe(&mut self, op: Unsubscribe) -> Result<Value, HubError> {
        match self.subs.remove(&op.subscription) {
            Some((abort, _)) => {
                abort.abort();
                Ok(json!({ "subscription": op.subscription }))
            }
            None => Err(no_such(&op.subscription)),
        }
    }

    pub(super) fn ack(&mut self, op: AckOp) -> Result<Value, HubError> {
        match self.subs.get(&op.subscription) {
            Some((_, acker)) => {
                acker.ack(op.sequence);
                Ok(json!({}))
            }
            None => Err(no_such(&op.subscription)),
        }
    }
}

fn no_such(subscription: &str) -> HubError {
    HubError::InvalidRequest(format!(
        "no subscription '{subscription}' on this connection"
    ))
}

/// One subscription's items as WebSocket frames, pre-rendered: the CloudEvent JSON is
/// spliced in as bytes, not re-serialized per subscriber. An error is the last frame.
fn frames(sub: polyport_core::Subscription, name: String) -> BoxStream<'static, Message> {
    let prefix = format!("{{\"type\":\"event\",\"subscription\":\"{name}\",\"event\":");
    let tally = polyport_core::hot_metrics::Tally::new(&crate::EVENTS_DELIVERED);
    futures::stream::unfold(Some((sub, name, prefix, tally)), |state| async move {
        let (mut sub, name, prefix, mut tally) = state?;
        let text = match sub.next().await? {
            Ok(Item::Event(d)) => {
                let ce = d.event.cloudevent_json();
                let mut s = String::with_capacity(prefix.len() + ce.len() + 32);
                s.push_str(&prefix);
                s.push_str(&String::from_utf8_lossy(ce));
                if d.redeliveries > 0 {
                    s.push_str(&format!(",\"redeliveries\":{}", d.redeliveries));
                }
                s.push('}');
                s
            }
            Ok(Item::Notice(n)) => {
                json!({"type": "notice", "subscription": name, "notice": n}).to_string()
            }
            Err(e) => {
                let msg = json!({"type": "error", "id": null, "subscription": name, "code": e.code(), "message": e.to_string()});
                return Some((Message::Text(msg.to_string().into()), None));
            }
        };
        tally.add();
        Some((Message::Text(text.into()), Some((sub, name, prefix, tally))))
    })
    .boxed()
}
