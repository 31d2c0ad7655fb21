//! The GraphQL WebSocket protocols, `graphql-transport-ws` and the legacy `graphql-ws`
//! (subscriptions-transport-ws), served here rather than by async-graphql's
//! `http::WebSocket` for one reason: a shared subscription's response is serialised once
//! and the same bytes go to every member, where async-graphql serialises a `Response`
//! per subscriber. Client messages are async-graphql's [`ClientMessage`]; close codes
//! are those of graphql-ws's PROTOCOL.md (4400 bad message, 4401 subscribe before
//! `connection_ack`, 4403 refused `connection_init`, 4408 no `connection_init` within
//! [`INIT_WAIT`], 4409 a duplicate id, 4429 a second `connection_init`), where
//! async-graphql used 1002/1011 for some of them and had no wait limit. The legacy
//! protocol never had one either, so its sockets may wait; it refuses credentials with
//! `connection_error` and then closes (1011), as Apollo's server did.
//!
//! Every result, errors included, goes out as `next` (legacy: `data`) followed by
//! `complete`, as async-graphql sends them; a client's `complete`/`stop` is answered
//! with `complete` too. Messages ready together are flushed in one write.

use std::sync::Arc;

use async_graphql::http::{ClientMessage, WebSocketProtocols};
use async_graphql::{Data, Response};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::stream::BoxStream;
use futures::{FutureExt as _, SinkExt as _, StreamExt as _};
use tokio_stream::StreamMap;

use crate::shared::SharingExecutor;

/// One result of a subscription, as its members receive it.
pub(crate) enum Out {
    /// A shared execution's response, serialised once.
    Rendered(Arc<str>),
    /// A response of this subscriber's own.
    Response(Box<Response>),
}

/// How long a `graphql-transport-ws` socket may stay open without `connection_init`
/// (graphql-ws's `connectionInitWaitTimeout` default): an unidentified socket holds no
/// subscription, only a connection slot.
const INIT_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// A subscription's frames: its results, then `complete`.
type Results = BoxStream<'static, String>;

/// Serves one connection until either side closes it.
pub(crate) async fn serve<F, R>(
    socket: WebSocket,
    executor: SharingExecutor,
    protocol: WebSocketProtocols,
    on_connection_init: F,
) where
    F: FnOnce(serde_json::Value) -> R + Send + 'static,
    R: Future<Output = async_graphql::Result<Data>> + Send + 'static,
{
    let (mut sink, mut input) = socket.split();
    let mut on_init = Some(on_connection_init);
    let mut data: Option<Arc<Data>> = None;
    let mut subs: StreamMap<String, Results> = StreamMap::new();
    let legacy = protocol == WebSocketProtocols::SubscriptionsTransportWS;
    let init_wait = tokio::time::sleep(INIT_WAIT);
    tokio::pin!(init_wait);
    loop {
        let reply = tokio::select! {
            () = &mut init_wait, if !legacy && on_init.is_some() => {
                Reply::Close(4408, "Connection initialisation timeout".into())
            }
            m = input.next() => {
                let bytes = match m {
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m.into_data(),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                    Some(Ok(_)) => continue,
                };
                match ClientMessage::from_bytes(&bytes) {
                    Err(e) => Reply::Close(4400, format!("Invalid message received: {e}")),
                    Ok(msg) => {
                        match handle(msg, legacy, &mut on_init, &mut data, &mut subs, &executor).await {
                            Some(r) => r,
                            None => continue,
                        }
                    }
                }
            }
            Some((_, frame)) = subs.next(), if !subs.is_empty() => Reply::Text(frame),
        };
        let (text, close) = match reply {
            Reply::Text(t) => (Some(t), None),
            Reply::Close(code, reason) => (None, Some((code, reason))),
            Reply::Refuse(t, code, reason) => (Some(t), Some((code, reason))),
        };
        if let Some(t) = text
            && sink.feed(Message::Text(t.into())).await.is_err()
        {
            return;
        }
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code,
                reason: reason.into(),
            };
            let _ = sink.feed(Message::Close(Some(frame))).await;
            let _ = sink.flush().await;
            return;
        }
        // Whatever else is ready goes in the same write.
        while let Some(Some((_, frame))) = subs.next().now_or_never() {
            if sink.feed(Message::Text(frame.into())).await.is_err() {
                return;
            }
        }
        if sink.flush().await.is_err() {
            return;
        }
    }
}

/// What the server sends in answer.
enum Reply {
    Text(String),
    Close(u16, String),
    /// A message, then the close (the legacy protocol's `connection_error`).
    Refuse(String, u16, String),
}

/// Acts on one client message; `None` when nothing is sent back.
async fn handle<F, R>(
    msg: ClientMessage,
    legacy: bool,
    on_init: &mut Option<F>,
    data: &mut Option<Arc<Data>>,
    subs: &mut StreamMap<String, Results>,
    executor: &SharingExecutor,
) -> Option<Reply>
where
    F: FnOnce(serde_json::Value) -> R,
    R: Future<Output = async_graphql::Result<Data>>,
{
    match msg {
        ClientMessage::ConnectionInit { payload } => {
            let Some(init) = on_init.take() else {
                return Some(Reply::Close(
                    4429,
                    "Too many initialisation requests".into(),
                ));
            };
            Some(match init(payload.unwrap_or_default()).await {
                Ok(d) => {
                    *data = Some(Arc::new(d));
                    Reply::Text(r#"{"type":"connection_ack"}"#.into())
                }
                // As Apollo's server did: `connection_error`, then close with 1011.
                Err(e) if legacy => Reply::Refuse(
                    serde_json::json!({"type": "connection_error", "payload": {"message": e.message}})
                        .to_string(),
                    1011,
                    e.message,
                ),
                Err(e) => Reply::Close(4403, e.message),
            })
        }
        ClientMessage::Start { id, payload } => {
            let Some(data) = data.clone() else {
                return Some(Reply::Close(4401, "Unauthorized".into()));
            };
            if !legacy && subs.contains_key(&id) {
                return Some(Reply::Close(
                    4409,
                    format!("Subscriber for {id} already exists"),
                ));
            }
            // The frame's head is written once per subscription, not per result.
            let ty = if legacy { "data" } else { "next" };
            let head = format!(r#"{{"type":"{ty}","id":{},"payload":"#, json_string(&id));
            let results = executor
                .stream(payload, data)
                .map(move |out| frame(&head, out))
                .chain(futures::stream::once(futures::future::ready(complete(&id))))
                .boxed();
            subs.insert(id, results);
            None
        }
        ClientMessage::Stop { id } => subs.remove(&id).map(|_| Reply::Text(complete(&id))),
        ClientMessage::ConnectionTerminate => Some(Reply::Close(1000, String::new())),
        ClientMessage::Ping { .. } => Some(Reply::Text(r#"{"type":"pong"}"#.into())),
        ClientMessage::Pong { .. } => None,
    }
}

fn complete(id: &str) -> String {
    format!(r#"{{"type":"complete","id":{}}}"#, json_string(id))
}

/// `next` (legacy: `data`) with one result: `head` is the message up to its payload.
fn frame(head: &str, out: Out) -> String {
    let owned;
    let payload: &str = match &out {
        Out::Rendered(p) => p,
        Out::Response(r) => {
            owned = serde_json::to_string(r).unwrap_or_else(|e| {
                format!(
                    r#"{{"errors":[{{"message":{}}}]}}"#,
                    json_string(&e.to_string())
                )
            });
            &owned
        }
    };
    let mut s = String::with_capacity(head.len() + payload.len() + 1);
    s.push_str(head);
    s.push_str(payload);
    s.push('}');
    s
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
