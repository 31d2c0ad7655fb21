//! Raw topic sockets at `/ws/topics/{topic…}`: plain WebSockets with no JSON protocol, for
//! the clients the seed articles show (send text, print what comes back) and for any
//! device that only speaks frames.
//!
//! - On a topic (no wildcards), every frame the client sends is published there (text
//!   frames as `text/plain; charset=utf-8`, binary ones as `application/octet-stream`,
//!   `?content_type=` overrides) and every event on the topic comes back as its raw
//!   payload, the sender's own included — so a room is just a topic and the socket
//!   behaves like an echo server to a lone client.
//! - On a filter (`+`, `%23` for `#`), the socket only follows; a frame sent on it closes
//!   it with 1008, since a filter names no one topic to publish on.
//! - Text payloads go out as text frames, everything else as binary frames.
//! - `?since=N` replays after sequence N first (`epoch`, `strict=false` as on the other
//!   transports). A raw socket cannot carry in-band notices, so an unavailable position or
//!   a subscriber cut off as too slow ends the socket with a close code and a reason
//!   rather than skipping silently.
//!
//! The subscription is made before the upgrade is answered: a client's first frame,
//! sent as soon as it is open, already finds it live, and a bad request is a problem+json
//! response instead of a socket that closes at once.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::{FutureExt, SinkExt, StreamExt};
use polyport_core::{
    AuthContext, Durability, EventDraft, Hub, HubError, Item, Origin, SubscribeRequest,
    Subscription, Topic, TopicFilter,
};

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::gate::Caller;
use crate::params::Params;

/// WebSocket close codes used here (RFC 6455 §7.4.1).
mod close {
    pub(super) const GOING_AWAY: u16 = 1001;
    pub(super) const POLICY: u16 = 1008;
    pub(super) const SERVER_ERROR: u16 = 1011;
}

/// What the socket does with frames the client sends.
struct Publishing {
    topic: Topic,
    /// For text frames; `None`: `text/plain; charset=utf-8`.
    content_type: Option<String>,
    durability: Durability,
}

/// `GET /ws/topics/{topic…}`.
pub(crate) async fn upgrade(
    State(app): State<AppState>,
    Caller(caller): Caller,
    peer: Option<axum::Extension<polyport_core::adapter::Peer>>,
    Path(path): Path<String>,
    RawQuery(q): RawQuery,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    let p = Params::parse(q.as_deref());
    let filter = TopicFilter::new(&path).map_err(HubError::from)?;
    let publishing = match Topic::new(&path) {
        Ok(topic) => Some(Publishing {
            topic,
            content_type: p
                .get("content_type")
                .filter(|c| !c.is_empty())
                .map(str::to_string),
            durability: match p.bool("durable")? {
                Some(true) => Durability::Durable,
                Some(false) => Durability::Ephemeral,
                None => Durability::Auto,
            },
        }),
        // A filter: follow only.
        Err(_) => None,
    };
    let req = SubscribeRequest {
        filters: vec![filter],
        since: p.u64("since", u64::MAX)?,
        epoch: p.get("epoch").filter(|e| !e.is_empty()).map(str::to_string),
        strict: p.bool("strict")?.unwrap_or(true),
        overflow: crate::realtime::overflow(p.get("overflow"))?,
        ..SubscribeRequest::default()
    };
    let ctx = AuthContext {
        origin: Origin("ws"),
        ..caller
    };
    let sub = app.hub.subscribe(&ctx, req).await.map_err(ApiError::from)?;
    let max = app.cfg.max_ws_message;
    let hub = app.hub.clone();
    let rate = crate::gate::rate_bucket(&app, &ctx, peer);
    Ok(ws
        .max_message_size(max)
        .read_buffer_size(polyport_core::adapter::WS_READ_BUFFER)
        .max_frame_size(max)
        .on_upgrade(move |socket| run(socket, hub, ctx, sub, publishing, rate))
        .into_response())
}

/// Why a socket ends, as the close frame the client gets.
fn closing(code: u16, reason: &str) -> Message {
    // A close reason is at most 123 bytes; cut on a character boundary.
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from(reason[..end].to_string()),
    }))
}

fn hub_close(e: &HubError) -> Message {
    let code = match e {
        HubError::Storage(_) | HubError::ShuttingDown | HubError::Unavailable(_) => {
            close::SERVER_ERROR
        }
        _ => close::POLICY,
    };
    closing(code, &format!("{}: {e}", e.code()))
}

/// The event's payload as the frame a raw socket sends.
fn frame(e: &polyport_core::Event) -> Message {
    // Text shares the payload's bytes (no copy per subscriber).
    match e
        .text_payload()
        .map(|_| Utf8Bytes::try_from(e.payload.clone()))
    {
        Some(Ok(t)) => Message::Text(t),
        _ => Message::Binary(e.payload.clone()),
    }
}

async fn run(
    socket: WebSocket,
    hub: Hub,
    ctx: AuthContext,
    mut sub: Subscription,
    publishing: Option<Publishing>,
    rate: Option<std::sync::Arc<polyport_core::rate::Bucket>>,
) {
    let (mut sink, mut stream) = socket.split();
    let shutdown = hub.shutdown_token();
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    ping.tick().await;
    metrics::gauge!("polyport_ws_connections").increment(1.0);
    let end = loop {
        tokio::select! {
            item = sub.next() => match item {
                Some(Ok(Item::Event(d))) => {
                    // What else is ready goes out in the same write (one flush).
                    let mut sent = sink.feed(frame(&d.event)).await;
                    let (mut n, mut after) = (1, None);
                    while n < crate::ws::WRITE_BATCH && sent.is_ok() {
                        match sub.next().now_or_never() {
                            Some(Some(Ok(Item::Event(d)))) => {
                                sent = sink.feed(frame(&d.event)).await;
                                n += 1;
                            }
                            Some(Some(Ok(Item::Notice(_)))) => {}
                            Some(Some(Err(e))) => {
                                after = Some(hub_close(&e));
                                break;
                            }
                            Some(None) => {
                                after = Some(closing(close::GOING_AWAY, "server shutting down"));
                                break;
                            }
                            None => break,
                        }
                    }
                    crate::EVENTS_DELIVERED.increment(n as u64);
                    if sent.is_err() || sink.flush().await.is_err() {
                        break None;
                    }
                    if after.is_some() {
                        break after;
                    }
                }
                // Notices have no place in a raw stream; what they report is ruled out
                // by how the subscription was made (strict resume, disconnect on overflow).
                Some(Ok(Item::Notice(_))) => {}
                Some(Err(e)) => break Some(hub_close(&e)),
                None => break Some(closing(close::GOING_AWAY, "server shutting down")),
            },
            msg = stream.next() => {
                let (payload, binary) = match msg {
                    Some(Ok(Message::Text(t))) => (Bytes::from(t), false),
                    Some(Ok(Message::Binary(b))) => (b, true),
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break None,
                    Some(Ok(_)) => continue,
                };
                let Some(p) = &publishing else {
                    break Some(closing(
                        close::POLICY,
                        "this socket follows a filter; publish on a socket for one topic (no + or #)",
                    ));
                };
                let mut d = EventDraft::new(p.topic.clone(), payload);
                d.content_type = Some(match (&p.content_type, binary) {
                    (Some(ct), _) => ct.clone(),
                    (None, false) => "text/plain; charset=utf-8".into(),
                    (None, true) => "application/octet-stream".into(),
                });
                d.durability = p.durability;
                if let Some(bucket) = &rate {
                    bucket.pace(Origin("ws")).await;
                }
                if let Err(e) = hub.publish(&ctx, d).await {
                    break Some(hub_close(&e));
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Bytes::new())).await.is_err() {
                    break None;
                }
            }
            _ = shutdown.cancelled() => break Some(closing(close::GOING_AWAY, "server shutting down")),
        }
    };
    if let Some(frame) = end {
        let _ = tokio::time::timeout(Duration::from_secs(2), sink.send(frame)).await;
    }
    let _ = sink.close().await;
    metrics::gauge!("polyport_ws_connections").decrement(1.0);
}
