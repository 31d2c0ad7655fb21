//! Polyport's MQTT broker: MQTT 3.1, 3.1.1 and 5.0 on one listener (the version is read
//! from CONNECT) and over WebSocket, bridged into the one event model — every PUBLISH is
//! an event on the shared topic tree, and every event (record changes included) reaches
//! MQTT subscribers.
//!
//! | concern | file |
//! |---|---|
//! | rmqtt-codec's v3/v5 packets ↔ version-neutral values | `wire.rs` |
//! | PUBLISH properties ↔ the Hub's typed message attributes | `attrs.rs` |
//! | MQTT 5 reason codes and the texts clients see, in one place | `error.rs` |
//! | session bookkeeping without I/O: packet ids, windows, aliases, QoS flows, timing | `session.rs` |
//! | one connection's I/O loop: keep-alive, batching, takeover, shutdown | `connection/mod.rs` |
//! | CONNECT, takeover, resumption, CONNACK; parking and the will at the end | `connection/handshake.rs` |
//! | PUBLISH both ways | `connection/publish.rs` |
//! | SUBSCRIBE / UNSUBSCRIBE, retained messages, forwarders | `connection/subscribe.rs` |
//! | shared state: takeover, parked sessions, retained messages, `$SYS` | `broker.rs` |
//! | what is kept in the Hub's adapter state, and its encoding | `state.rs` |
//! | MQTT over WebSocket (`/mqtt`, subprotocol `mqtt`) | `ws.rs` |
//!
//! Packets are encoded and decoded by rmqtt-codec; the broker logic is ours. QoS 1/2
//! PUBLISHes are acknowledged (PUBACK/PUBREC) only after the Hub has made them durable,
//! in the order received; QoS 0 is fanned out in memory unless configured durable.
//! Shared subscriptions (`$share/{group}/{filter}`) and the subscriptions of persistent
//! sessions are acknowledged Hub groups, so what a client has not acknowledged is
//! replayed from the event log when it (or, for shared ones, another member) comes back.

mod attrs;
mod broker;
mod claims;
mod connection;
mod error;
mod framing;
mod orphans;
mod session;
mod state;
mod wire;
mod ws;

use std::sync::Arc;
use std::time::Duration;

use polyport_core::adapter::Listener;
use polyport_core::admission::Admission;
use polyport_core::{Durability, EventDraft, Hub, HubError, Origin, Topic};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// This face in the server's adapter list.
pub const ADAPTER: polyport_core::adapter::Spec = polyport_core::adapter::Spec {
    name: "mqtt",
    label: "MQTT",
    about: "MQTT 3.1, 3.1.1 and 5.0",
    default_addr: Some(polyport_core::adapter::loopback(1883)),
    tls: Some(polyport_core::adapter::TlsSpec {
        name: "mqtts",
        default_addr: polyport_core::adapter::loopback(8883),
        alpn: &[],
    }),
};

/// Broker settings.
#[derive(Clone, Debug)]
pub struct MqttConfig {
    /// Largest packet accepted, in bytes.
    pub max_packet_size: u32,
    /// Time a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// QoS 1/2 messages a client may have unacknowledged towards us (MQTT 5 receive
    /// maximum); also our outbound queue depth per connection.
    pub receive_max: u16,
    /// Topic aliases a client may use.
    pub topic_alias_max: u16,
    /// Also log QoS 0 messages durably (default: memory only).
    pub durable_qos0: bool,
    /// How often `$SYS/broker/…` is republished (zero: never).
    pub sys_interval: Duration,
    /// Messages buffered per subscription for a client that reads slower than they
    /// arrive. Past it QoS 0 messages are dropped (logged and counted); durable ones are
    /// never dropped but re-read from the log.
    pub max_queued_messages: usize,
    /// Longest keep-alive a client may ask for, in seconds (0: any, including none).
    pub max_keep_alive: u16,
    /// Caps on open connections (per listener, per client address).
    pub connections: polyport_core::admission::ConnectionLimits,
    /// Subscriptions one connection may hold; more are refused in SUBACK (0x97).
    pub max_subscriptions: usize,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            receive_max: 1024,
            topic_alias_max: 64,
            durable_qos0: false,
            sys_interval: Duration::from_secs(10),
            max_queued_messages: 100_000,
            max_keep_alive: 0,
            connections: Default::default(),
            max_subscriptions: 10_000,
        }
    }
}

/// The broker, shared by its TCP listener and its WebSocket route.
#[derive(Clone)]
pub struct MqttBroker {
    broker: Arc<broker::Broker>,
    /// Tracks every connection, TCP or WebSocket, for a graceful stop.
    tracker: TaskTracker,
}

impl MqttBroker {
    /// Restores persistent sessions and retained messages, and starts session expiry and
    /// `$SYS` publishing (both end when the hub shuts down).
    pub async fn start(hub: Hub, cfg: MqttConfig) -> Result<Self, HubError> {
        let broker = broker::Broker::load(hub.clone(), cfg).await?;
        tokio::spawn(housekeeping(broker.clone()));
        if hub.engine() == "cluster" {
            tokio::spawn(follow_retained(broker.clone()));
        }
        if broker.shared {
            claims::follow(&broker).await?;
        }
        Ok(Self {
            broker,
            tracker: TaskTracker::new(),
        })
    }

    /// Accepts MQTT connections on `listener` until `stop` fires (or the hub shuts
    /// down), then waits for this broker's connections to close.
    pub async fn serve(&self, listener: impl Into<Listener>, stop: CancellationToken) {
        let shutdown = self.broker.hub.shutdown_token();
        // Connections watch one token for both reasons to end.
        let door = broker::Door::new(
            self.broker.clone(),
            polyport_core::adapter::either_cancelled(&stop, &shutdown),
        );
        let broker = self.broker.clone();
        let admission = Admission::new("MQTT", broker.cfg.connections);
        polyport_core::adapter::accept_loop(
            listener.into(),
            stop,
            shutdown,
            &self.tracker,
            &admission,
            move |s, peer, refusal| connection::run(s, peer, broker.clone(), door.clone(), refusal),
        )
        .await;
    }

    /// The `/mqtt` WebSocket route (subprotocols `mqtt`, `mqttv3.1`) to merge into the
    /// HTTP router; connections end when `stop` fires.
    pub fn websocket_routes(&self, stop: CancellationToken) -> axum::Router {
        let stop =
            polyport_core::adapter::either_cancelled(&stop, &self.broker.hub.shutdown_token());
        let door = broker::Door::new(self.broker.clone(), stop);
        ws::routes(self.tracker.clone(), door)
    }
}

/// Starts a broker and serves `listener` with it (see [`MqttBroker`]).
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    cfg: MqttConfig,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let broker = MqttBroker::start(hub, cfg)
        .await
        .map_err(std::io::Error::other)?;
    broker.serve(listener, stop).await;
    Ok(())
}

/// Expires parked sessions every second and republishes `$SYS` on its interval.
async fn housekeeping(broker: Arc<broker::Broker>) {
    let shutdown = broker.hub.shutdown_token();
    let mut expiry = tokio::time::interval(Duration::from_secs(1));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let sys_every = broker.cfg.sys_interval;
    let mut sys = tokio::time::interval(if sys_every.is_zero() {
        Duration::from_secs(3600)
    } else {
        sys_every
    });
    sys.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                broker.sweep();
                broker.expire_sessions().await;
                if broker.shared {
                    broker.expire_orphans().await;
                }
            }
            _ = sys.tick(), if !sys_every.is_zero() => publish_sys(&broker).await,
            _ = shutdown.cancelled() => return,
        }
    }
}

/// Publishes the `$SYS` values as retained, ephemeral messages: MQTT clients get the
/// latest on subscribe, and every other protocol can watch `$SYS/#` too.
async fn publish_sys(broker: &broker::Broker) {
    let ctx = polyport_core::AuthContext::system(Origin("mqtt"));
    for (topic, value) in broker.sys_values() {
        let Ok(t) = Topic::new(topic) else { continue };
        let payload = bytes::Bytes::from(value);
        let _ = broker
            .retain(
                topic,
                broker::Retained {
                    payload: payload.clone(),
                    qos: 0,
                    props: wire::MsgProps::default(),
                    expires_at: None,
                },
            )
            .await;
        let mut d = EventDraft::new(t, payload);
        d.content_type = Some("text/plain; charset=utf-8".into());
        d.durability = Durability::Ephemeral;
        d.attrs.retain = true;
        let _ = broker.hub.publish(&ctx, d).await;
    }
}

/// Decodes `bytes` as a client's side of a connection — version detection, CONNECT,
/// then packets — through rmqtt-codec and our normalisation, as a connection would, and
/// discards the result. For the fuzz target (`fuzz/`) and the no-panic property test:
/// whatever a client sends, decoding returns an error instead of panicking.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8], max_packet_size: u32) {
    use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
    use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
    use tokio_util::codec::Decoder;

    let mut buf = bytes::BytesMut::from(bytes);
    let mut codec = MqttCodec::Version(VersionCodec);
    let Ok(Some((MqttPacket::Version(v), _))) = codec.decode(&mut buf) else {
        return;
    };
    codec = match v {
        ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max_packet_size)),
        ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(max_packet_size, max_packet_size)),
    };
    let mut first = true;
    while let Ok(Some((p, _))) = codec.decode(&mut buf) {
        if first {
            first = false;
            if wire::connect_in(p).is_err() {
                return;
            }
        } else {
            let _ = wire::inbound(p);
        }
    }
}

/// On the cluster engine, retained messages published through other nodes: every node's
/// events reach this one (the log, or the relay for QoS 0), and a retained MQTT message
/// sets or clears the topic's retained message here as the publishing node did (which
/// also stored it). A message from a client connected here was set by its own publish.
async fn follow_retained(broker: Arc<broker::Broker>) {
    use polyport_core::{Item, Overflow, SubscribeRequest, TopicFilter};
    let Ok(all) = TopicFilter::new("#") else {
        return;
    };
    let req = SubscribeRequest {
        filters: vec![all],
        overflow: Overflow::Notify,
        ..SubscribeRequest::default()
    };
    let Ok(mut sub) = broker.hub.subscribe(&broker.ctx, req).await else {
        return;
    };
    while let Some(item) = sub.next().await {
        let e = match item {
            Ok(Item::Event(d)) => d.event,
            Ok(Item::Notice(_)) => continue,
            Err(_) => break,
        };
        if !e.attrs.retain || e.origin.0 != "mqtt" || e.topic.as_str().starts_with('$') {
            continue;
        }
        if e.sender
            .as_ref()
            .and_then(|s| s.client_id.as_deref())
            .is_some_and(|c| broker.is_live(c))
        {
            continue;
        }
        let Some(out) = attrs::outbound(&e, chrono::Utc::now) else {
            continue;
        };
        let r = broker::Retained {
            payload: e.payload.clone(),
            qos: out.published_qos,
            props: wire::MsgProps {
                topic_alias: None,
                message_expiry: None,
                ..out.props
            },
            expires_at: e
                .attrs
                .expires_at
                .map(|t| t.timestamp_millis().max(0) as u64),
        };
        broker.retain_in_memory(e.topic.as_str(), r);
    }
}

#[cfg(test)]
mod fuzz_tests {
    use proptest::prelude::*;

    /// A valid MQTT 5 CONNECT, so mutations reach the packets after it.
    const CONNECT5: &[u8] = b"\x10\x0e\x00\x04MQTT\x05\x02\x00\x3c\x00\x00\x01x";
    const CONNECT3: &[u8] = b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x3c\x00\x01x";

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(4000))]
        #[test]
        fn decoding_arbitrary_bytes_never_panics(
            v5 in any::<bool>(),
            tail in proptest::collection::vec(any::<u8>(), 0..512),
            flip in proptest::collection::vec((0usize..64, any::<u8>()), 0..4),
        ) {
            let mut input = if v5 { CONNECT5.to_vec() } else { CONNECT3.to_vec() };
            input.extend_from_slice(&tail);
            for (i, b) in flip {
                let n = input.len();
                input[i % n] ^= b;
            }
            super::fuzz_decode(&input, 1024);
        }
    }
}
