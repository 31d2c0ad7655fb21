//! Ephemeral events between nodes: core NATS publish/subscribe, at most once.
//!
//! Ephemeral events (MQTT QoS 0, `?durable=false`, ephemeral topics) never enter the log,
//! so the log cannot carry them to the other nodes. Each node publishes its own on the
//! deployment's subject (`polyport.{bucket}.ephemeral`) and hands what the other nodes
//! publish to its local subscribers, as the embedded engine hands a local publish: no
//! sequence, no replay, dropped rather than queued without bound (a full outbox counts
//! `polyport_cluster_relay_dropped_total`). The event's fields travel in one JSON
//! header and the payload as the message body, unchanged.

use std::sync::Arc;

use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::StreamExt;
use polyport_core::cluster::Relay;
use polyport_core::event::{Event, EventRef, Origin};
use polyport_core::{Attributes, Hub, Sender, Topic};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::ClusterError;

/// Events waiting for the NATS connection; past this they are dropped (at most once).
const OUTBOX: usize = 16_384;
/// The header holding everything but the payload.
const META: &str = "Polyport-Event";

/// The fields of an event on the wire.
#[derive(Serialize, Deserialize)]
struct Meta {
    node: String,
    /// Set on a durable event handed to a group member on another node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    id: String,
    topic: String,
    #[serde(rename = "type")]
    event_type: String,
    time: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    origin: String,
    #[serde(default, skip_serializing_if = "is_default")]
    attrs: Attributes,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    headers: Vec<(String, String)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sender: Option<Sender>,
}

fn is_default(a: &Attributes) -> bool {
    *a == Attributes::default()
}

/// This node's side of the relay.
pub struct NatsRelay {
    outbox: mpsc::Sender<EventRef>,
}

impl Relay for NatsRelay {
    fn send(&self, e: &EventRef) {
        if self.outbox.try_send(e.clone()).is_err() {
            metrics::counter!("polyport_cluster_relay_dropped_total").increment(1);
        }
    }
}

/// Starts relaying `hub`'s ephemeral events to and from the other nodes on `client`,
/// until the hub shuts down.
pub(crate) async fn start(
    client: async_nats::Client,
    subject: String,
    node: String,
    hub: Hub,
) -> Result<Arc<NatsRelay>, ClusterError> {
    let mut inbox = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ClusterError::Relay(e.to_string()))?;
    let (tx, mut rx) = mpsc::channel::<EventRef>(OUTBOX);
    let stop = hub.shutdown_token();
    let me = node.clone();
    let receiving = hub.clone();
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = inbox.next() => m,
                _ = stop.cancelled() => None,
            };
            let Some(msg) = msg else { break };
            match decode(msg.headers.as_ref(), msg.payload) {
                // A node's own events it has already.
                Ok((node, _)) if node == me => {}
                Ok((_, e)) => receiving.deliver_relayed(Arc::new(e)),
                Err(why) => tracing::warn!(error = %why, "unreadable relayed event dropped"),
            }
        }
    });
    tokio::spawn(async move {
        while let Some(e) = rx.recv().await {
            let Some(headers) = encode(&node, &e) else {
                continue;
            };
            if let Err(err) = client
                .publish_with_headers(subject.clone(), headers, e.payload.clone())
                .await
            {
                metrics::counter!("polyport_cluster_relay_dropped_total").increment(1);
                tracing::debug!(error = %err, "relaying an ephemeral event failed");
            }
        }
    });
    Ok(Arc::new(NatsRelay { outbox: tx }))
}

/// An event's fields as one header (its payload travels as the message body).
pub(crate) fn encode(node: &str, e: &Event) -> Option<HeaderMap> {
    let meta = Meta {
        node: node.to_string(),
        seq: e.seq,
        id: e.id.clone(),
        topic: e.topic.as_str().to_string(),
        event_type: e.event_type.clone(),
        time: e.time,
        content_type: e.content_type.clone(),
        origin: e.origin.0.to_string(),
        attrs: e.attrs.clone(),
        headers: e.headers.clone(),
        sender: e.sender.clone(),
    };
    // JSON escapes every control character: the header stays one line.
    let json = serde_json::to_string(&meta).ok()?;
    let mut h = HeaderMap::new();
    h.insert(META, json.as_str());
    Some(h)
}

/// An event [`encode`]d on a node, and that node's id.
pub(crate) fn decode(
    headers: Option<&HeaderMap>,
    payload: Bytes,
) -> Result<(String, Event), String> {
    let meta = headers
        .and_then(|h| h.get(META))
        .ok_or("no Polyport-Event header")?;
    let meta: Meta = serde_json::from_str(meta.as_str()).map_err(|e| e.to_string())?;
    let topic = Topic::new(&meta.topic).map_err(|e| e.to_string())?;
    Ok((
        meta.node,
        Event::new(
            meta.seq,
            meta.id,
            topic,
            meta.event_type,
            meta.time,
            meta.content_type,
            meta.headers,
            payload,
            Origin::from_label(&meta.origin),
        )
        .with_attrs(meta.attrs, meta.sender),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_crosses_unchanged_and_a_nodes_own_is_skipped() {
        let attrs = Attributes {
            retain: true,
            ..Attributes::default()
        };
        let e = Event::new(
            None,
            "01abc".into(),
            Topic::new("sensors/t1").unwrap_or_else(|e| panic!("{e}")),
            "reading".into(),
            Utc::now(),
            Some("text/plain".into()),
            vec![("x-k".into(), "line\r\nbreak".into())],
            Bytes::from_static(b"21.5\n"),
            Origin::from_label("mqtt"),
        )
        .with_attrs(attrs.clone(), None);
        let h = encode("node-a", &e).unwrap_or_else(|| panic!("encodes"));
        let (node, got) = decode(Some(&h), e.payload.clone()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(node, "node-a");
        assert_eq!(got.seq, None);
        assert_eq!(
            (
                got.id.as_str(),
                got.topic.as_str(),
                got.event_type.as_str(),
                got.time
            ),
            ("01abc", "sensors/t1", "reading", e.time)
        );
        assert_eq!(
            (got.attrs, got.headers, got.payload),
            (attrs, e.headers.clone(), e.payload.clone())
        );
        assert_eq!(got.origin.0, "mqtt");
        assert!(decode(None, Bytes::new()).is_err());
    }
}
