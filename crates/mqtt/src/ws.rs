//! MQTT over WebSocket: binary frames carry the MQTT byte stream (packets may span
//! frames or share one), so the socket is turned into a byte stream and served by the
//! same connection code as TCP.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio_util::io::{CopyToBytes, SinkWriter, StreamReader};
use tokio_util::task::TaskTracker;

use crate::broker::Door;
use crate::connection;

#[derive(Clone)]
struct WsState {
    tracker: TaskTracker,
    door: Arc<Door>,
}

pub(crate) fn routes(tracker: TaskTracker, door: Arc<Door>) -> Router {
    Router::new()
        .route("/mqtt", get(upgrade))
        .with_state(WsState { tracker, door })
}

async fn upgrade(
    State(st): State<WsState>,
    peer: Option<axum::Extension<polyport_core::adapter::Peer>>,
    ws: WebSocketUpgrade,
) -> Response {
    let peer = peer.map(|p| p.0).unwrap_or_default();
    // A frame may carry several packets (or part of one): the packet limit is enforced
    // by the decoder, the frame limit only bounds buffering.
    let max = (st.door.broker().cfg.max_packet_size as usize)
        .saturating_mul(4)
        .max(64 * 1024);
    ws.protocols(["mqtt", "mqttv3.1"])
        .max_message_size(max)
        .read_buffer_size(polyport_core::adapter::WS_READ_BUFFER)
        .max_frame_size(max)
        .on_upgrade(move |socket| {
            let run = connection::run(
                transport(socket),
                peer,
                st.door.broker().clone(),
                st.door,
                None,
            );
            st.tracker.track_future(run)
        })
}

fn transport(socket: WebSocket) -> connection::Transport {
    let (sink, stream) = socket.split();
    let reader = StreamReader::new(stream.filter_map(|m| {
        futures::future::ready(match m {
            Ok(Message::Binary(b)) => Some(Ok(b)),
            // MQTT over WebSocket is binary only (MQTT 5, 6.0): a text frame ends it.
            Ok(Message::Text(_)) => Some(Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "MQTT over WebSocket uses binary frames",
            ))),
            Ok(_) => None,
            Err(e) => Some(Err(std::io::Error::other(e))),
        })
    }));
    let sink = sink
        .with(|b: Bytes| futures::future::ready(Ok::<_, axum::Error>(Message::Binary(b))))
        .sink_map_err(std::io::Error::other);
    let writer = SinkWriter::new(CopyToBytes::new(sink));
    Box::new(tokio::io::join(reader, writer))
}
