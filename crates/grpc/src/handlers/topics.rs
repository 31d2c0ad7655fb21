//! The `polyport.v1.Topics` service: Publish, Subscribe and the bidirectional Chat.

use base64::Engine as _;
use futures::StreamExt;
use polyport_core::event::RenderKey;
use polyport_core::record::format_time;
use polyport_core::{
    Durability, Event, EventDraft, HubError, Notice, SubscribeRequest, Topic, TopicFilter,
};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::{Handlers, MsgStream, Shape, map_items, nonempty};
use crate::codec::Reply;

use crate::catalog::Route;
use crate::convert::{status, str_field, to_json, u64_field};

/// `Topics.Subscribe` and `Chat`'s event messages, encoded once per event.
static TOPIC_EVENTS: RenderKey = RenderKey::new();
const TOPIC_EVENT: Shape = Shape {
    key: &TOPIC_EVENTS,
    id: 0,
};

impl Handlers {
    pub(super) async fn topics_publish(&self, v: &Value) -> Result<Value, Status> {
        let draft = publish_draft(v)?;
        let r = self.hub.publish(&self.ctx, draft).await.map_err(status)?;
        Ok(json!({"id": r.event.id, "sequence": r.event.seq}))
    }

    pub(super) async fn topics_subscribe(
        &self,
        v: &Value,
        out: MessageDescriptor,
    ) -> Result<MsgStream, Status> {
        let sub = self
            .hub
            .subscribe(&self.ctx, topic_request(v)?)
            .await
            .map_err(status)?;
        Ok(map_items(sub, out, TOPIC_EVENT, event_json, notice_json))
    }

    /// `Topics.Chat`: subscribe and publish actions in, every matching event out. The call
    /// lives until the client cancels it; closing the send side keeps the subscriptions.
    pub(crate) fn chat(&self, route: &Route, mut input: Streaming<DynamicMessage>) -> MsgStream {
        let (tx, rx) = mpsc::channel::<Result<Reply, Status>>(256);
        let hub = self.hub.clone();
        let ctx = self.ctx.clone();
        let out = route.output.clone();
        tokio::spawn(async move {
            let mut forwarders = Vec::new();
            loop {
                let msg = tokio::select! {
                    m = input.message() => m,
                    _ = tx.closed() => break,
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                };
                let result = async {
                    let v = to_json(&msg)?;
                    if let Some(s) = v.get("subscribe") {
                        let sub = hub
                            .subscribe(&ctx, topic_request(s)?)
                            .await
                            .map_err(status)?;
                        let (tx, out) = (tx.clone(), out.clone());
                        forwarders.push(tokio::spawn(async move {
                            let mut items =
                                map_items(sub, out, TOPIC_EVENT, event_json, notice_json);
                            while let Some(m) = items.next().await {
                                if tx.send(m).await.is_err() {
                                    break;
                                }
                            }
                        }));
                    } else if let Some(p) = v.get("publish") {
                        hub.publish(&ctx, publish_draft(p)?).await.map_err(status)?;
                    } else {
                        return Err(Status::invalid_argument(
                            "a ChatRequest needs subscribe or publish",
                        ));
                    }
                    Ok::<(), Status>(())
                }
                .await;
                if let Err(s) = result
                    && tx.send(Err(s)).await.is_err()
                {
                    break;
                }
            }
            // Keep delivering until the client goes away.
            tx.closed().await;
            for f in forwarders {
                f.abort();
            }
        });
        Box::pin(ReceiverStream::new(rx))
    }
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn event_json(e: &Event) -> Option<Value> {
    let headers: Map<String, Value> = e
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    let mut attributes = Map::new();
    e.attrs.to_extensions(&mut attributes);
    let attributes: Map<String, Value> = attributes
        .into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => (k, Value::String(s)),
            other => (k, Value::String(other.to_string())),
        })
        .collect();
    Some(json!({
        "id": e.id,
        "sequence": e.seq,
        "topic": e.topic.as_str(),
        "type": e.event_type,
        "time": format_time(&e.time),
        "content_type": e.content_type.clone().unwrap_or_default(),
        "payload": b64(&e.payload),
        "headers": headers,
        "attributes": attributes,
    }))
}

fn notice_json(n: &Notice) -> Option<Value> {
    Some(json!({
        "type": n.event_type(),
        "content_type": "application/json",
        "payload": b64(serde_json::to_string(n).unwrap_or_default().as_bytes()),
    }))
}

fn topic_request(v: &Value) -> Result<SubscribeRequest, Status> {
    let mut filters = Vec::new();
    for f in v
        .get("filters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = f.as_str().unwrap_or("");
        filters.push(TopicFilter::new(f).map_err(|e| status(e.into()))?);
    }
    Ok(SubscribeRequest {
        filters,
        since: u64_field(v, "since"),
        epoch: nonempty(str_field(v, "epoch")),
        group: nonempty(str_field(v, "group")),
        strict: true,
        ..SubscribeRequest::default()
    })
}

fn publish_draft(v: &Value) -> Result<EventDraft, Status> {
    let topic = Topic::new(str_field(v, "topic")).map_err(|e| status(HubError::from(e)))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(str_field(v, "payload"))
        .map_err(|e| Status::internal(format!("payload: {e}")))?;
    let mut d = EventDraft::new(topic, payload);
    d.content_type = nonempty(str_field(v, "content_type"));
    d.event_type = nonempty(str_field(v, "type"));
    d.headers = v
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(attrs) = v.get("attributes").and_then(Value::as_object) {
        d.attrs
            .set_named(
                attrs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("").to_string())),
            )
            .map_err(|e| status(HubError::InvalidRequest(format!("attributes: {e}"))))?;
    }
    d.durability = match v.get("durable").and_then(Value::as_bool) {
        Some(true) => Durability::Durable,
        Some(false) => Durability::Ephemeral,
        None => Durability::Auto,
    };
    Ok(d)
}
