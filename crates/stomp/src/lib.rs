//! A STOMP 1.0 / 1.1 / 1.2 broker on the one event model, fronting the same exchanges
//! and queues as AMQP ([`polyport_broker`]): `/queue/jobs` is the AMQP queue `jobs`,
//! `/topic/a.b` is `amq.topic` with key `a.b`, which is the shared topic `a/b`.
//!
//! | concept | file |
//! |---|---|
//! | frames, header escaping, `content-length`, limits | `codec.rs` |
//! | destinations as RabbitMQ maps them | `destination.rs` |
//! | headers ↔ message attributes | `props.rs` |
//! | CONNECT, heart-beats, the frame loop, receipts, ERROR | `connection.rs` |
//! | SEND, SUBSCRIBE, ACK / NACK, transactions | `session.rs` |
//! | STOMP over WebSocket (`/stomp`) | `ws.rs` |
//!
//! The codec is written here: no maintained Rust crate decodes STOMP server-side. It is
//! public so that `polyport bench stomp` can drive Polyport and RabbitMQ with the same
//! frames.
//!
//! Where Polyport differs from RabbitMQ's STOMP plugin (deliberately):
//! - `host` names the virtual host only when it starts with `/` (only `/` exists);
//!   any other value is taken as the server name the client dialled (stomp.py sends
//!   it by default), where RabbitMQ refuses it.
//! - A message's `message-id` names the delivery (as in RabbitMQ); an AMQP
//!   `message_id` travels as `amqp-message-id`.
//! - A SEND to a durable queue (`/queue/…`, or `/amq/queue/…` naming one) is on disk
//!   before it is delivered or receipted, `persistent:true` or not; RabbitMQ keeps one
//!   without `persistent:true` in memory (checked on its STOMP plugin: the queue counts
//!   it among `messages`, not `messages_persistent`). That costs latency
//!   (`polyport bench stomp`: the `/queue` latency row against the `/topic` one). A
//!   queue whose topic (`amqp/q/{name}`) is in `events.ephemeral_topics` is memory-only
//!   instead, RabbitMQ's semantics (the bench's memory-only row), unless a SEND says
//!   `persistent:true`.

pub mod codec;
mod connection;
mod destination;
mod props;
mod session;
mod ws;

use std::sync::Arc;

use polyport_broker::Broker;
use polyport_core::adapter::Listener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use codec::Limits;

/// This face in the server's adapter list.
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "stomp",
    label: "STOMP",
    about: "STOMP 1.0, 1.1 and 1.2 (stomp.py, stompjs)",
    default_addr: Some(polyport_core::adapter::loopback(61613)),
    tls: Some(polyport_core::adapter::TlsSpec {
        name: "stomps",
        default_addr: polyport_core::adapter::loopback(61614),
        alpn: &[],
    }),
};

/// Broker settings.
#[derive(Clone, Debug)]
pub struct StompConfig {
    /// Frame size, header count and header length limits.
    pub limits: Limits,
    /// Heart-beat interval the server offers both ways, ms (0 turns it off).
    pub heartbeat_ms: u64,
    /// Caps on open connections (per listener, per client address).
    pub connections: polyport_core::admission::ConnectionLimits,
    /// Subscriptions one connection may hold at once (each holds a queue and a task).
    pub max_subscriptions: usize,
}

impl Default for StompConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            heartbeat_ms: 10_000,
            connections: Default::default(),
            max_subscriptions: 10_000,
        }
    }
}

/// The STOMP face of a broker.
pub struct StompServer {
    broker: Arc<Broker>,
    cfg: Arc<StompConfig>,
    tracker: TaskTracker,
}

impl StompServer {
    /// The STOMP face of `broker` (shared with AMQP).
    pub fn new(broker: Arc<Broker>, cfg: StompConfig) -> Self {
        Self {
            broker,
            cfg: Arc::new(cfg),
            tracker: TaskTracker::new(),
        }
    }

    /// The WebSocket endpoint (`GET /stomp`) for the HTTP listener.
    pub fn websocket_routes(&self, stop: CancellationToken) -> axum::Router {
        ws::routes(
            self.broker.clone(),
            self.cfg.clone(),
            self.tracker.clone(),
            stop,
        )
    }

    /// Accepts connections on `listener` until `stop` fires, then waits for them to close.
    pub async fn serve(&self, listener: impl Into<Listener>, stop: CancellationToken) {
        let shutdown = self.broker.hub.shutdown_token();
        let (broker, cfg, conn_stop) = (self.broker.clone(), self.cfg.clone(), stop.clone());
        polyport_core::adapter::accept_loop(
            listener.into(),
            stop,
            shutdown,
            &self.tracker,
            &polyport_core::admission::Admission::new("STOMP", cfg.connections),
            move |s, peer, refusal| {
                connection::run(
                    s,
                    peer,
                    broker.clone(),
                    cfg.clone(),
                    conn_stop.clone(),
                    refusal,
                )
            },
        )
        .await;
    }
}

/// Decodes `data` as a client's byte stream, for the fuzz target; must never panic.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8]) {
    use tokio_util::codec::Decoder as _;
    let mut c = codec::Codec::new(Limits {
        max_frame: 64 * 1024,
        max_headers: 64,
        max_header_line: 4096,
    });
    let mut buf = bytes::BytesMut::from(data);
    while let Ok(Some(_)) = c.decode(&mut buf) {}
}
