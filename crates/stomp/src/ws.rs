//! STOMP over WebSocket (`/stomp`, subprotocols `v12.stomp`, `v11.stomp`, `v10.stomp`):
//! text or binary messages carry the STOMP byte stream (one frame per message or
//! several, or part of one), served by the same connection code as TCP. What the server
//! writes goes out as text when it is UTF-8 (what browsers' stompjs expects), else binary.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use polyport_broker::Broker;
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{StompConfig, connection};

#[derive(Clone)]
struct WsState {
    broker: Arc<Broker>,
    cfg: Arc<StompConfig>,
    tracker: TaskTracker,
    stop: CancellationToken,
}

pub(crate) fn routes(
    broker: Arc<Broker>,
    cfg: Arc<StompConfig>,
    tracker: TaskTracker,
    stop: CancellationToken,
) -> Router {
    Router::new()
        .route("/stomp", get(upgrade))
        .with_state(WsState {
            broker,
            cfg,
            tracker,
            stop,
        })
}

async fn upgrade(
    State(st): State<WsState>,
    peer: Option<axum::Extension<polyport_core::adapter::Peer>>,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|p| p.0).unwrap_or_default();
    // The frame limit is the decoder's; the message limit only bounds buffering.
    let max = st.cfg.limits.max_frame.saturating_add(64 * 1024);
    ws.protocols(["v12.stomp", "v11.stomp", "v10.stomp", "stomp"])
        .max_message_size(max)
        .read_buffer_size(polyport_core::adapter::WS_READ_BUFFER)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let run = connection::run(transport(socket), peer, st.broker, st.cfg, st.stop, None);
            st.tracker.track_future(run)
        })
}

fn transport(socket: WebSocket) -> polyport_core::adapter::Stream {
    let (sink, stream) = socket.split();
    let reader = StreamReader::new(stream.filter_map(|m| {
        futures::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            Ok(Message::Text(t)) => Some(Ok(Bytes::from(t.as_str().as_bytes().to_vec()))),
            Ok(_) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    }));
    let sink = sink
        .with(|b: Bytes| {
            futures::future::ready(Ok::<_, axum::Error>(match std::str::from_utf8(&b) {
                Ok(text) => Message::Text(text.into()),
                Err(_) => Message::Binary(b),
            }))
        })
        .sink_map_err(std::io::Error::other);
    let writer = SinkWriter::new(CopyToBytes::new(sink));
    Box::new(tokio::io::join(reader, writer))
}
