//! Polyport's MQTT broker: MQTT 3.1, 3.1.1 and 5.0 on one listener (the version is read
//! from CONNECT), bridged into the one event model — every PUBLISH is an event on the
//! shared topic tree, and every event (record changes included) reaches MQTT
//! subscribers.
//!
//! | concern | file |
//! |---|---|
//! | rmqtt-codec's v3/v5 packets ↔ version-neutral values | `wire.rs` |
//! | one connection: CONNECT, QoS 0/1/2 flows, subscriptions, keep-alive, will | `connection.rs` |
//! | shared state: session takeover, retained messages | `broker.rs` |
//!
//! Packets are encoded and decoded by rmqtt-codec; the broker logic is ours. QoS 1/2
//! PUBLISHes are acknowledged (PUBACK/PUBREC) only after the Hub has made them durable,
//! in the order received; QoS 0 is fanned out in memory unless configured durable.
//! Shared subscriptions (`$share/{group}/{filter}`) are Hub groups.
//!
//! Not yet: persistent sessions (every session behaves as clean; `session_present` is
//! always false), retained messages surviving a restart, `$SYS` statistics, MQTT over
//! WebSocket, topic aliases from server to client, and authentication.

mod broker;
mod connection;
mod wire;

use std::time::Duration;

use polyport_core::Hub;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            receive_max: 1024,
            topic_alias_max: 64,
            durable_qos0: false,
        }
    }
}

/// Accepts MQTT connections on `listener` until `stop` fires (or the hub shuts down),
/// then waits for connections to close.
pub async fn serve(
    hub: Hub,
    listener: TcpListener,
    cfg: MqttConfig,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let broker = broker::Broker::new(hub.clone(), cfg);
    let tracker = TaskTracker::new();
    let shutdown = hub.shutdown_token();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => break,
            _ = shutdown.cancelled() => break,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let _ = stream.set_nodelay(true);
                tracker.spawn(connection::run(stream, broker.clone(), stop.clone()));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "MQTT accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}
