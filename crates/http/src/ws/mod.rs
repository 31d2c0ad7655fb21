//! The WebSocket JSON protocol at `/ws`: subscriptions, publishing, acks and record
//! operations over one connection, so a browser app needs nothing else.
//!
//! Requests carry an `id` that the matching `ok`/`error` reply echoes. The connection's
//! writer task sends the replies and polls every subscription itself: an event costs its
//! subscriber one task wake-up, and a slow socket stops the writer polling, so the
//! subscriptions lag and replay from the log instead of growing memory. A `subscribe` is
//! answered only once the subscription is live (field note 3).

mod publish;
mod records;
mod subscriptions;
mod webhooks;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::extract::State;
use axum::extract::ws::{Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use futures::stream::{AbortHandle, Abortable, BoxStream, SplitSink};
use futures::{FutureExt, SinkExt, StreamExt};
use polyport_core::adapter::Merge;
use polyport_core::adapter::Peer;
use polyport_core::rate::Bucket;
use polyport_core::{AuthContext, Hub, HubError, Origin};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::AppState;
use crate::gate::Caller;

/// One client request; each op family's fields live with its handler.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
enum Request {
    Subscribe(subscriptions::Subscribe),
    Unsubscribe(subscriptions::Unsubscribe),
    Ack(subscriptions::AckOp),
    Publish(publish::Publish),
    Create(records::Create),
    Get(records::Get),
    Update(records::Update),
    Delete(records::Delete),
    List(records::List),
    WebhookList(webhooks::List),
    WebhookCreate(webhooks::Create),
    WebhookUpdate(webhooks::Update),
    WebhookDelete(webhooks::Delete),
}

pub(super) fn yes() -> bool {
    true
}

/// `GET /ws`.
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    Caller(caller): Caller,
    peer: Option<Extension<Peer>>,
    ws: WebSocketUpgrade,
) -> Response {
    let max = app.cfg.max_ws_message;
    let ctx = AuthContext {
        origin: Origin("ws"),
        ..caller
    };
    let rate = crate::gate::rate_bucket(&app, &ctx, peer);
    ws.max_message_size(max)
        .read_buffer_size(polyport_core::adapter::WS_READ_BUFFER)
        .max_frame_size(max)
        .on_upgrade(move |socket| session(socket, app, ctx, rate))
}

/// What the reader hands the writer.
enum Out {
    /// A reply or notice.
    Send(Message),
    /// A subscription's frames, to send as they come until it ends or is aborted.
    Follow(Abortable<BoxStream<'static, Message>>),
}

struct Session {
    hub: Hub,
    ctx: AuthContext,
    out: mpsc::Sender<Out>,
    subs: HashMap<String, (AbortHandle, polyport_core::Acker)>,
    next_sub: u64,
    max_page: usize,
    max_subs: usize,
    /// The caller's request-rate bucket: each request waits its turn (the socket is not
    /// read meanwhile); `None` when unlimited.
    rate: Option<Arc<Bucket>>,
}

async fn session(socket: WebSocket, app: AppState, ctx: AuthContext, rate: Option<Arc<Bucket>>) {
    let (sink, mut stream) = socket.split();
    let (out, outbox) = mpsc::channel::<Out>(256);
    let shutdown = app.hub.shutdown_token();
    let writer = tokio::spawn(write(sink, outbox));
    metrics::gauge!("polyport_ws_connections").increment(1.0);
    let mut s = Session {
        hub: app.hub.clone(),
        ctx,
        out,
        subs: HashMap::new(),
        next_sub: 0,
        max_page: app.cfg.max_page_size,
        max_subs: app.cfg.max_ws_subscriptions,
        rate,
    };
    loop {
        let msg = tokio::select! {
            m = stream.next() => m,
            _ = shutdown.cancelled() => {
                let _ = s.out.send(Out::Send(Message::Close(Some(axum::extract::ws::CloseFrame {
                    code: 1001,
                    reason: Utf8Bytes::from_static("server shutting down"),
                })))).await;
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
    for (_, (abort, _)) in s.subs.drain() {
        abort.abort();
    }
    drop(s);
    let _ = writer.await;
    metrics::gauge!("polyport_ws_connections").decrement(1.0);
}

/// Frames of subscriptions written in one go, at most.
pub(crate) const WRITE_BATCH: usize = 64;

/// The connection's writer: replies from the reader, and every subscription's frames,
/// with what is ready at once written together (one flush).
async fn write(mut sink: SplitSink<WebSocket, Message>, mut outbox: mpsc::Receiver<Out>) {
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    let mut follows: Merge<Abortable<BoxStream<'static, Message>>> = Merge::default();
    loop {
        let sent = tokio::select! {
            m = outbox.recv() => match m {
                Some(Out::Send(m)) => sink.send(m).await,
                Some(Out::Follow(s)) => {
                    follows.push(s);
                    Ok(())
                }
                None => break,
            },
            Some(m) = follows.next(), if !follows.is_empty() => {
                let mut r = sink.feed(m).await;
                for _ in 1..WRITE_BATCH {
                    let Some(Some(m)) = follows.next().now_or_never() else { break };
                    if r.is_err() {
                        break;
                    }
                    r = sink.feed(m).await;
                }
                match r {
                    Ok(()) => sink.flush().await,
                    Err(e) => Err(e),
                }
            }
            _ = ping.tick() => sink.send(Message::Ping(Default::default())).await,
        };
        if sent.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
}

impl Session {
    async fn send(&self, v: Value) {
        let _ = self
            .out
            .send(Out::Send(Message::Text(v.to_string().into())))
            .await;
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
        if let Some(bucket) = &self.rate
            && !matches!(req, Request::Ack(_) | Request::Unsubscribe(_))
        {
            bucket.pace(Origin("ws")).await;
        }
        let reply = match req {
            Request::Subscribe(op) => return self.subscribe(id, op).await,
            Request::Unsubscribe(op) => self.unsubscribe(op)?,
            Request::Ack(op) => self.ack(op)?,
            Request::Publish(op) => self.publish(op).await?,
            Request::Create(op) => self.create(op).await?,
            Request::Get(op) => self.get(op).await?,
            Request::Update(op) => self.update(op).await?,
            Request::Delete(op) => self.delete(op).await?,
            Request::List(op) => self.list(op).await?,
            Request::WebhookList(_) => self.webhook_list()?,
            Request::WebhookCreate(op) => self.webhook_create(op).await?,
            Request::WebhookUpdate(op) => self.webhook_update(op).await?,
            Request::WebhookDelete(op) => self.webhook_delete(op).await?,
        };
        self.ok(id, reply).await;
        Ok(())
    }
}
