//! The WebSocket JSON protocol at `/ws`: subscriptions, publishing, acks and record
//! operations over one connection, so a browser app needs nothing else.
//!
//! Requests carry an `id` that the matching `ok`/`error` reply echoes. Each subscription
//! runs in its own forwarder task writing into the connection's one bounded outbox, so a
//! slow socket pushes back on the forwarders, whose subscriptions then lag and replay
//! from the log instead of growing memory. A `subscribe` is answered only once the
//! subscription is live (field note 3).

use std::collections::HashMap;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use base64::Engine as _;
use futures::{SinkExt, StreamExt};
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::{
    AckPolicy, AuthContext, Durability, EventDraft, Hub, HubError, Item, Origin, RecordSelector,
    SubscribeRequest, Topic, TopicFilter,
};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::AppState;

/// One client request.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Subscribe {
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
    },
    Unsubscribe {
        subscription: String,
    },
    Publish {
        topic: String,
        #[serde(default)]
        data: Option<Value>,
        #[serde(default)]
        data_base64: Option<String>,
        #[serde(default)]
        content_type: Option<String>,
        #[serde(default, rename = "type")]
        event_type: Option<String>,
        #[serde(default)]
        durable: Option<bool>,
        /// Message attributes by their CloudEvents extension names (`replyto`, …).
        #[serde(default)]
        attributes: Map<String, Value>,
        /// User headers (string values).
        #[serde(default)]
        headers: Map<String, Value>,
    },
    Ack {
        subscription: String,
        sequence: u64,
    },
    Create {
        collection: String,
        record: Map<String, Value>,
    },
    Get {
        collection: String,
        record_id: String,
    },
    Update {
        collection: String,
        record_id: String,
        record: Map<String, Value>,
        #[serde(default = "yes")]
        merge: bool,
        #[serde(default)]
        version: Option<u64>,
    },
    Delete {
        collection: String,
        record_id: String,
        #[serde(default)]
        version: Option<u64>,
    },
    WebhookList {},
    WebhookCreate {
        endpoint: polyport_core::webhook::EndpointSpec,
    },
    WebhookUpdate {
        endpoint_id: String,
        patch: Value,
    },
    WebhookDelete {
        endpoint_id: String,
    },
    List {
        collection: String,
        #[serde(default)]
        filter: Option<String>,
        #[serde(default)]
        sort: Option<String>,
        #[serde(default)]
        limit: Option<usize>,
        #[serde(default)]
        cursor: Option<String>,
        #[serde(default)]
        count: bool,
    },
}

fn yes() -> bool {
    true
}

/// `GET /ws`.
pub(crate) async fn upgrade(State(app): State<AppState>, ws: WebSocketUpgrade) -> Response {
    let max = app.cfg.max_ws_message;
    ws.max_message_size(max)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(socket, app))
}

struct Session {
    hub: Hub,
    ctx: AuthContext,
    out: mpsc::Sender<Message>,
    subs: HashMap<String, (JoinHandle<()>, polyport_core::Acker)>,
    next_sub: u64,
    max_page: usize,
    max_subs: usize,
}

async fn session(socket: WebSocket, app: AppState) {
    let (mut sink, mut stream) = socket.split();
    let (out, mut outbox) = mpsc::channel::<Message>(256);
    let shutdown = app.hub.shutdown_token();
    let writer = tokio::spawn(async move {
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        ping.tick().await;
        loop {
            tokio::select! {
                m = outbox.recv() => match m {
                    Some(m) => if sink.send(m).await.is_err() { break },
                    None => break,
                },
                _ = ping.tick() => if sink.send(Message::Ping(Default::default())).await.is_err() { break },
            }
        }
        let _ = sink.close().await;
    });
    metrics::gauge!("polyport_ws_connections").increment(1.0);
    let mut s = Session {
        hub: app.hub.clone(),
        ctx: AuthContext::anonymous(Origin("ws")),
        out,
        subs: HashMap::new(),
        next_sub: 0,
        max_page: app.cfg.max_page_size,
        max_subs: app.cfg.max_ws_subscriptions,
    };
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.cancelled() => {
                let _ = s.out.send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1001,
                    reason: Utf8Bytes::from_static("server shutting down"),
                }))).await;
                break;
            }
        };
        let text = match msg {
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(Message::Binary(b))) => match Utf8Bytes::try_from(b) {
                Ok(t) => t,
                Err(_) => {
                    s.send_error(
                        None,
                        "bad_request",
                        "binary frames must be UTF-8 JSON",
                        None,
                    )
                    .await;
                    continue;
                }
            },
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
            Some(Ok(_)) => continue,
        };
        s.handle(text.as_str()).await;
    }
    for (_, (task, _)) in s.subs.drain() {
        task.abort();
    }
    drop(s);
    let _ = writer.await;
    metrics::gauge!("polyport_ws_connections").decrement(1.0);
}

impl Session {
    async fn send(&self, v: Value) {
        let _ = self.out.send(Message::Text(v.to_string().into())).await;
    }

    async fn send_error(
        &self,
        id: Option<&Value>,
        code: &str,
        message: &str,
        extra: Option<Value>,
    ) {
        let mut v = json!({"type": "error", "id": id, "code": code, "message": message});
        if let Some(Value::Object(m)) = extra
            && let Value::Object(o) = &mut v
        {
            o.extend(m);
        }
        self.send(v).await;
    }

    async fn hub_error(&self, id: Option<&Value>, e: HubError) {
        let api = crate::error::ApiError::from(e);
        let mut extra = api.body();
        if let Value::Object(m) = &mut extra {
            m.retain(|k, _| !matches!(k.as_str(), "type" | "title" | "status" | "detail" | "code"));
        }
        self.send_error(id, api.code, &api.detail, Some(extra))
            .await;
    }

    async fn ok(&self, id: Option<&Value>, mut body: Value) {
        if let Value::Object(m) = &mut body {
            m.insert("type".into(), "ok".into());
            m.insert("id".into(), id.cloned().unwrap_or(Value::Null));
        }
        self.send(body).await;
    }

    async fn handle(&mut self, text: &str) {
        let raw: Value = match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => {
                self.send_error(None, "bad_request", &format!("invalid JSON: {e}"), None)
                    .await;
                return;
            }
        };
        let id = raw.get("id").cloned();
        let req: Request = match serde_json::from_value(raw) {
            Ok(r) => r,
            Err(e) => {
                self.send_error(
                    id.as_ref(),
                    "bad_request",
                    &format!("invalid request: {e}"),
                    None,
                )
                .await;
                return;
            }
        };
        if let Err(e) = self.dispatch(id.as_ref(), req).await {
            self.hub_error(id.as_ref(), e).await;
        }
    }

    async fn dispatch(&mut self, id: Option<&Value>, req: Request) -> Result<(), HubError> {
        match req {
            Request::Subscribe {
                topic,
                topics,
                since,
                epoch,
                strict,
                group,
                ack,
                prefetch,
                ack_timeout_ms,
                collection,
                record_id,
                filter,
                overflow,
            } => {
                if self.subs.len() >= self.max_subs {
                    return Err(HubError::InvalidRequest(format!(
                        "at most {} subscriptions per connection",
                        self.max_subs
                    )));
                }
                let mut filters = Vec::new();
                for t in topic.iter().chain(topics.iter()) {
                    filters.push(TopicFilter::new(t)?);
                }
                let records = match collection {
                    Some(c) => Some(RecordSelector {
                        collection: c,
                        id: record_id,
                        filter: filter.as_deref().map(Filter::parse).transpose()?,
                    }),
                    None if filter.is_some() => {
                        return Err(HubError::InvalidRequest(
                            "'filter' applies to record changes: add 'collection'".into(),
                        ));
                    }
                    None => None,
                };
                let ack = ack.then(|| AckPolicy {
                    prefetch: prefetch.unwrap_or(100),
                    ack_timeout: Duration::from_millis(ack_timeout_ms.unwrap_or(30_000)),
                });
                let req = SubscribeRequest {
                    filters,
                    records,
                    since,
                    epoch,
                    strict,
                    group,
                    ack,
                    queue: None,
                    overflow: crate::realtime::overflow(overflow.as_deref())
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
                // Reply before the forwarder starts, so `ok` precedes the first event.
                self.ok(id, reply).await;
                let acker = sub.acker();
                let task = tokio::spawn(forward(sub, name.clone(), self.out.clone()));
                self.subs.insert(name, (task, acker));
                Ok(())
            }
            Request::Unsubscribe { subscription } => match self.subs.remove(&subscription) {
                Some((task, _)) => {
                    task.abort();
                    self.ok(id, json!({ "subscription": subscription })).await;
                    Ok(())
                }
                None => Err(HubError::InvalidRequest(format!(
                    "no subscription '{subscription}' on this connection"
                ))),
            },
            Request::Ack {
                subscription,
                sequence,
            } => match self.subs.get(&subscription) {
                Some((_, acker)) => {
                    acker.ack(sequence);
                    self.ok(id, json!({})).await;
                    Ok(())
                }
                None => Err(HubError::InvalidRequest(format!(
                    "no subscription '{subscription}' on this connection"
                ))),
            },
            Request::Publish {
                topic,
                data,
                data_base64,
                content_type,
                event_type,
                durable,
                attributes,
                headers,
            } => {
                let topic = Topic::new(&topic)?;
                let (payload, ct) = match (data, data_base64) {
                    (Some(_), Some(_)) => {
                        return Err(HubError::InvalidRequest(
                            "give either 'data' or 'data_base64', not both".into(),
                        ));
                    }
                    (_, Some(b)) => (
                        base64::engine::general_purpose::STANDARD
                            .decode(b.as_bytes())
                            .map_err(|e| HubError::InvalidRequest(format!("data_base64: {e}")))?,
                        content_type.or(Some("application/octet-stream".into())),
                    ),
                    (Some(Value::String(s)), None)
                        if content_type
                            .as_deref()
                            .is_some_and(|c| !polyport_core::event::is_json_type(c)) =>
                    {
                        (s.into_bytes(), content_type)
                    }
                    (Some(v), None) => (
                        serde_json::to_vec(&v).unwrap_or_default(),
                        content_type.or(Some("application/json".into())),
                    ),
                    (None, None) => (Vec::new(), content_type),
                };
                let mut draft = EventDraft::new(topic, payload);
                draft.content_type = ct;
                draft.event_type = event_type;
                draft
                    .attrs
                    .set_named(attributes.iter().map(|(k, v)| {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        };
                        (k.as_str(), text)
                    }))
                    .map_err(|e| HubError::InvalidRequest(format!("attributes.{e}")))?;
                for (k, v) in headers {
                    let Value::String(v) = v else {
                        return Err(HubError::InvalidRequest(format!(
                            "headers.{k}: header values are strings"
                        )));
                    };
                    draft.headers.push((k, v));
                }
                draft.durability = match durable {
                    Some(true) => Durability::Durable,
                    Some(false) => Durability::Ephemeral,
                    None => Durability::Auto,
                };
                let r = self.hub.publish(&self.ctx, draft).await?;
                self.ok(
                    id,
                    json!({ "sequence": r.event.seq, "event_id": r.event.id }),
                )
                .await;
                Ok(())
            }
            Request::Create {
                collection,
                mut record,
            } => {
                let rid = match record.remove("id") {
                    Some(Value::String(s)) => Some(s),
                    Some(Value::Number(n)) => Some(n.to_string()),
                    _ => None,
                };
                let r = self
                    .hub
                    .create_record(&self.ctx, &collection, rid, record)
                    .await?;
                self.ok(id, json!({ "record": r.to_json() })).await;
                Ok(())
            }
            Request::Get {
                collection,
                record_id,
            } => {
                let r = self
                    .hub
                    .get_record(&self.ctx, &collection, &record_id)
                    .await?;
                self.ok(id, json!({ "record": r.to_json() })).await;
                Ok(())
            }
            Request::Update {
                collection,
                record_id,
                mut record,
                merge,
                version,
            } => {
                for k in ["id", "collection", "created_at", "updated_at", "version"] {
                    record.remove(k);
                }
                let r = if merge {
                    self.hub
                        .patch_record(
                            &self.ctx,
                            &collection,
                            &record_id,
                            Value::Object(record),
                            version,
                        )
                        .await?
                } else {
                    self.hub
                        .replace_record(&self.ctx, &collection, &record_id, record, version)
                        .await?
                        .0
                };
                self.ok(id, json!({ "record": r.to_json() })).await;
                Ok(())
            }
            Request::Delete {
                collection,
                record_id,
                version,
            } => {
                let r = self
                    .hub
                    .delete_record(&self.ctx, &collection, &record_id, version)
                    .await?;
                self.ok(id, json!({ "record": r.to_json() })).await;
                Ok(())
            }
            Request::WebhookList {} => {
                let eps = self.hub.endpoints(&self.ctx)?;
                self.ok(id, json!({ "items": *eps })).await;
                Ok(())
            }
            Request::WebhookCreate { endpoint } => {
                let ep = self.hub.create_endpoint(&self.ctx, endpoint).await?;
                self.ok(id, json!({ "endpoint": ep })).await;
                Ok(())
            }
            Request::WebhookUpdate { endpoint_id, patch } => {
                let ep = self
                    .hub
                    .update_endpoint(&self.ctx, &endpoint_id, patch)
                    .await?;
                self.ok(id, json!({ "endpoint": ep })).await;
                Ok(())
            }
            Request::WebhookDelete { endpoint_id } => {
                self.hub.delete_endpoint(&self.ctx, &endpoint_id).await?;
                self.ok(id, json!({ "endpoint_id": endpoint_id })).await;
                Ok(())
            }
            Request::List {
                collection,
                filter,
                sort,
                limit,
                cursor,
                count,
            } => {
                let q = ListQuery {
                    filter: filter
                        .as_deref()
                        .filter(|f| !f.trim().is_empty())
                        .map(Filter::parse)
                        .transpose()?,
                    sort: match sort.as_deref().filter(|s| !s.trim().is_empty()) {
                        Some(s) => parse_sort(s)?,
                        None => Vec::new(),
                    },
                    limit: limit.unwrap_or(50).clamp(1, self.max_page),
                    cursor,
                    count,
                };
                let page = self.hub.list_records(&self.ctx, &collection, &q).await?;
                let items: Vec<Value> = page.items.iter().map(|r| r.to_json()).collect();
                self.ok(
                    id,
                    json!({ "items": items, "next_cursor": page.next_cursor, "total": page.total }),
                )
                .await;
                Ok(())
            }
        }
    }
}

/// Copies one subscription's items into the connection's outbox, pre-rendered: the
/// CloudEvent JSON is spliced in as bytes, not re-serialized per subscriber.
async fn forward(mut sub: polyport_core::Subscription, name: String, out: mpsc::Sender<Message>) {
    let prefix = format!("{{\"type\":\"event\",\"subscription\":\"{name}\",\"event\":");
    loop {
        let text = match sub.next().await {
            Some(Ok(Item::Event(d))) => {
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
            Some(Ok(Item::Notice(n))) => {
                json!({"type": "notice", "subscription": name, "notice": n}).to_string()
            }
            Some(Err(e)) => {
                let msg = json!({"type": "error", "id": null, "subscription": name, "code": e.code(), "message": e.to_string()});
                let _ = out.send(Message::Text(msg.to_string().into())).await;
                return;
            }
            None => return,
        };
        metrics::counter!("polyport_events_delivered_total").increment(1);
        if out.send(Message::Text(text.into())).await.is_err() {
            return;
        }
    }
}
