//! Polyport's AMQP 0-9-1 broker, on the one event model: every publish is an event on
//! the shared topic tree, and every queue is a Hub group over the event log, so MQTT,
//! HTTP and record changes reach AMQP queues and AMQP publishes reach everyone else.
//!
//! | concern | file |
//! |---|---|
//! | frames: protocol header, `frame_max`, amq-protocol's parser and generator | `codec.rs` |
//! | basic properties ↔ message attributes | `props.rs` |
//! | reply codes; closing a channel or the connection | `error.rs` |
//! | header, start (capabilities), login, tune, open | `handshake.rs` |
//! | one connection: heartbeats, frame loop, publishes and confirms, blocking | `connection.rs` |
//! | one channel: basic.*, confirms, transactions, content assembly, acks | `channel/mod.rs` |
//! | `exchange.*` and `queue.*` | `channel/topology.rs` |
//!
//! Exchanges, queues, bindings, queue arguments and their mapping onto the tree are
//! `polyport-broker`'s, shared with STOMP; this crate is the AMQP wire and sessions.
//!
//! amq-protocol parses and generates every method; framing rules, the broker and its
//! mapping onto the Hub are ours (no maintained crate is an AMQP server).
//!
//! Where Polyport differs from RabbitMQ, deliberately or not yet:
//! - A message published to an exchange is always an event on the tree, also when no
//!   queue takes it (a `mandatory` one still comes back as `basic.return`).
//! - Queue contents live in the event log (the queue is a durable consumer over it),
//!   so transient messages are logged like persistent ones unless their topic is in
//!   `events.ephemeral_topics`; `delivery_mode` 2 forces a durable write.
//! - `message_count` counts what the queue has read ahead (up to its window), not the
//!   whole backlog in the log. A passive `queue.declare`, `queue.purge` and an if-empty
//!   `queue.delete` first wait briefly for what was published to the queue to arrive, so
//!   a count after the confirms includes them; an ordinary declare answers at once.
//! - Queue arguments: `x-message-ttl` and dead-lettering (`x-dead-letter-exchange`,
//!   `x-dead-letter-routing-key`, with `x-death`) and `x-expires` are honoured;
//!   `x-queue-type` (`classic`, `quorum`) is accepted (every queue is log-backed); any
//!   other is refused with `NOT_IMPLEMENTED` rather than ignored.
//!   Length limits (`x-max-length`, `x-max-length-bytes`, `x-overflow` `drop-head` or
//!   `reject-publish`) count ready messages; `reject-publish` drops the newest for that
//!   queue but does not nack the publisher (the message is on the tree for everyone
//!   else), where RabbitMQ would nack it.
//! - Exchange-to-exchange bindings are paths: a queue bound to `x` subscribes to the
//!   topics of every exchange that feeds `x` and checks each hop's rule on arrival
//!   (`queue/binding.rs`); a delivery names the exchange the message was published to.
//! - Not yet: priorities, `connection.blocked` (`NOT_IMPLEMENTED` where asked).

mod channel;
mod codec;
mod connection;
mod error;
mod handshake;
mod props;

use std::sync::Arc;

use polyport_broker::{Broker, BrokerConfig};
use polyport_core::adapter::Listener;
use polyport_core::{Hub, HubError};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// This face in the server's adapter list.
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "amqp",
    label: "AMQP",
    about: "AMQP 0-9-1 (RabbitMQ's clients: pika, amqplib, lapin, kombu)",
    default_addr: Some(polyport_core::adapter::loopback(5672)),
    tls: Some(polyport_core::adapter::TlsSpec {
        name: "amqps",
        default_addr: polyport_core::adapter::loopback(5671),
        alpn: &[],
    }),
};

/// Broker settings.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// Largest frame, offered in `connection.tune`.
    pub frame_max: u32,
    /// Most channels per connection.
    pub channel_max: u16,
    /// Heartbeat interval offered, seconds (the client may lower it; 0 turns it off).
    pub heartbeat: u16,
    /// Largest message body accepted.
    pub max_message: usize,
    /// Caps on open connections (per listener, per client address).
    pub connections: polyport_core::admission::ConnectionLimits,
    /// Consumers one connection may hold at once, over all its channels.
    pub max_consumers: usize,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self {
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat: 60,
            max_message: 16 << 20,
            connections: Default::default(),
            max_consumers: 10_000,
        }
    }
}

/// A running broker.
pub struct AmqpBroker {
    broker: Arc<Broker>,
    cfg: Arc<AmqpConfig>,
    tracker: TaskTracker,
}

impl AmqpBroker {
    /// The AMQP face of `broker` (which STOMP may share).
    pub fn new(broker: Arc<Broker>, cfg: AmqpConfig) -> Self {
        Self {
            broker,
            cfg: Arc::new(cfg),
            tracker: TaskTracker::new(),
        }
    }

    /// A broker of its own over `hub` (restoring the durable topology) with this face.
    pub async fn start(hub: Hub, cfg: AmqpConfig) -> Result<Self, HubError> {
        let broker = Broker::load(hub, BrokerConfig { queue_window: 1024 }).await?;
        Ok(Self::new(broker, cfg))
    }

    /// Accepts connections on `listener` until `stop` fires, then waits for them to close.
    pub async fn serve(&self, listener: impl Into<Listener>, stop: CancellationToken) {
        let shutdown = self.broker.hub.shutdown_token();
        let (broker, cfg, conn_stop) = (self.broker.clone(), self.cfg.clone(), stop.clone());
        let admission = polyport_core::admission::Admission::new("AMQP", cfg.connections);
        polyport_core::adapter::accept_loop(
            listener.into(),
            stop,
            shutdown,
            &self.tracker,
            &admission,
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

/// Decodes `data` as what a client sends after the protocol header — every frame the
/// codec can read, each as the connection would see it — for the fuzz target and the
/// no-panic property test; must never panic.
#[doc(hidden)]
pub fn fuzz_decode(data: &[u8], frame_max: usize) {
    use tokio_util::codec::Decoder as _;
    let mut codec = codec::Codec::new(frame_max.max(8));
    let mut buf = bytes::BytesMut::from(&codec::PROTOCOL_HEADER[..]);
    buf.extend_from_slice(data);
    while let Ok(Some(_)) = codec.decode(&mut buf) {}
}
