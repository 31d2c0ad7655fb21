//! One MQTT connection: version detection, CONNECT and session resumption, then a loop
//! over the transport, the outbound queue fed by this session's Hub subscriptions,
//! pending QoS 1/2 publishes (acknowledged only after the Hub has made them durable, in
//! the order received), the keep-alive deadline, takeover and shutdown.
//!
//! A persistent session's subscriptions are acknowledged Hub groups named after the
//! session: an outbound QoS 1/2 message is acknowledged to the group on PUBACK (or
//! PUBREC), so whatever the client has not acknowledged when it goes away — and
//! everything published while it is away — is replayed from the log when it returns,
//! across restarts too.

mod handshake;
mod publish;
mod subscribe;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use polyport_core::adapter::sleep_until;
use polyport_core::subscription::Acker;
use polyport_core::{AuthContext, HubError};
use rmqtt_codec::version::ProtocolVersion;
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::broker::Broker;
use crate::error::Reason;
use crate::framing::Conn;
use crate::session::{self, Inbound, Outbound};
use crate::state::SavedSession;
use crate::wire::{self, Ack, In, MsgProps, PublishIn, Ver};

/// A byte stream carrying MQTT: a TCP socket, TLS or a WebSocket.
pub(crate) use polyport_core::adapter::Stream as Transport;

/// How long a session's subscriptions wait for an acknowledgement before the group
/// would redeliver: effectively never while connected (MQTT redelivers only on a new
/// connection, which the group does when the member leaves).
const NO_REDELIVERY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Packets handled (or messages delivered) per step before the loop flushes and looks
/// at its other inputs again.
const BATCH: usize = 64;

/// How long a takeover waits for the previous connection to hand its session over.
const HANDOVER: Duration = Duration::from_secs(10);

/// How long one write may take before the client counts as gone (it stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// Unacknowledged sequences a parked session remembers for the DUP flag.
const MAX_REMEMBERED_UNACKED: usize = 65_536;

/// A message on its way to this client.
pub(crate) struct Outgoing {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    props: MsgProps,
    sub_ids: Vec<u32>,
    dup: bool,
    /// The group acknowledgement owed once the client has the message.
    ack: Option<(Acker, u64)>,
}

impl Outgoing {
    fn settle(&mut self) {
        if let Some((a, seq)) = self.ack.take() {
            a.ack(seq);
        }
    }
}

/// A live subscription: its forwarder task.
struct Sub {
    task: tokio::task::JoinHandle<()>,
}

type Pending =
    std::pin::Pin<Box<dyn std::future::Future<Output = (Ack, u16, Result<(), HubError>)> + Send>>;

struct Session {
    ver: Ver,
    broker: Arc<Broker>,
    conn: Conn,
    client_id: String,
    ctx: AuthContext,
    /// The caller's request-rate bucket: each PUBLISH waits its turn (read back-pressure,
    /// nothing dropped); `None` when unlimited.
    rate: Option<std::sync::Arc<polyport_core::rate::Bucket>>,
    /// What survives the connection when `saved.expiry > 0`.
    saved: SavedSession,
    /// Whether `saved` is in the Hub's adapter state now.
    persisted: bool,
    subs: HashMap<String, Sub>,
    out_tx: mpsc::Sender<Box<Outgoing>>,
    /// Packet ids, in-flight window and aliases towards the client.
    out: Outbound<(Acker, u64)>,
    /// Aliases and QoS 1/2 flows from the client.
    inb: Inbound,
    /// Inbound publishes on their way to the log, acknowledged in order.
    pending: FuturesOrdered<Pending>,
    /// Retained messages waiting for room under the client's receive maximum.
    backlog: std::collections::VecDeque<Box<Outgoing>>,
}

/// Why the loop ended; decides the will.
enum End {
    /// DISCONNECT received (no will unless asked for).
    Clean { with_will: bool },
    /// Socket closed, error, keep-alive, takeover: the will is published.
    Abnormal,
    /// Server shutdown.
    Shutdown,
}

fn max_codec(ver: ProtocolVersion, max: u32) -> MqttCodec {
    match ver {
        ProtocolVersion::MQTT3 => MqttCodec::V3(v3::Codec::new(max)),
        ProtocolVersion::MQTT5 => MqttCodec::V5(v5::Codec::new(max, max)),
    }
}

/// A connection past its CONNACK.
struct Accepted {
    s: Session,
    out_rx: mpsc::Receiver<Box<Outgoing>>,
    takeover: CancellationToken,
    done: CancellationToken,
    conn: u64,
    awaiting_comp: Vec<u16>,
    keep_alive: u16,
    will: Option<Box<PublishIn>>,
    will_delay: u32,
}

/// Serves one connection to the end.
///
/// The handshake and the ending run boxed: their temporaries would otherwise take space
/// in this future, which every connection carries for its whole life.
pub(crate) async fn run(
    stream: Transport,
    peer: polyport_core::adapter::Peer,
    broker: Arc<Broker>,
    stop: CancellationToken,
    refusal: Option<polyport_core::admission::Refusal>,
) {
    if let Some(r) = refusal {
        return Box::pin(handshake::refuse(stream, &broker, r)).await;
    }
    // Bound straight from the temporary: a named `Accepted` would keep its own slot.
    let Some(Accepted {
        mut s,
        out_rx,
        takeover,
        done,
        conn,
        awaiting_comp,
        keep_alive,
        will,
        will_delay,
    }) = Box::pin(handshake::accept(stream, &peer, &broker)).await
    else {
        return;
    };
    let end = if Box::pin(s.restore(awaiting_comp)).await {
        s.run(keep_alive, out_rx, takeover, stop).await
    } else {
        End::Abnormal
    };
    Box::pin(handshake::finish(s, end, conn, done, will, will_delay)).await;
}

impl Session {
    /// A 3.1.1 client cannot be told a receive maximum: past it we stop reading.
    fn inbound_full(&self) -> bool {
        self.pending.len() >= self.broker.cfg.receive_max as usize
    }

    /// Queues a packet; the run loop flushes once per step, so a batch is one write.
    async fn send(&mut self, p: MqttPacket) -> bool {
        self.conn.feed(p).is_ok()
    }

    async fn disconnect(&mut self, reason: Reason) {
        self.disconnect_because(reason, &reason.to_string()).await;
    }

    async fn disconnect_because(&mut self, reason: Reason, why: &str) {
        if let Some(p) = wire::disconnect(self.ver, reason.code(), why) {
            let _ = self.conn.feed(p);
        }
        // Best effort: a client that stopped reading must not hold the ending up.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.flush()).await;
    }

    async fn run(
        &mut self,
        keep_alive: u16,
        mut out_rx: mpsc::Receiver<Box<Outgoing>>,
        takeover: CancellationToken,
        stop: CancellationToken,
    ) -> End {
        let keep_alive = session::keep_alive_window(keep_alive);
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        let shutdown = self.broker.hub.shutdown_token();
        loop {
            // Whatever the last step queued goes out in one write. A client that stops
            // reading must not pin this task: the write is bounded and still yields to
            // takeover and shutdown.
            if self.conn.has_pending_writes() {
                tokio::select! {
                    r = tokio::time::timeout(WRITE_TIMEOUT, self.conn.flush()) => {
                        if !matches!(r, Ok(Ok(()))) {
                            return End::Abnormal;
                        }
                    }
                    _ = takeover.cancelled() => return Box::pin(self.taken_over()).await,
                    _ = stop.cancelled() => return End::Shutdown,
                    _ = shutdown.cancelled() => return End::Shutdown,
                }
            }
            let can_read = self.ver == Ver::V5 || !self.inbound_full();
            if !can_read && let Some(k) = keep_alive {
                // We are the ones not reading: the client is not silent.
                deadline = Some(Instant::now() + k);
            }
            let can_send = self.out.has_room();
            if can_send && !self.backlog.is_empty() {
                // Retained messages waiting for the client's receive maximum.
                while self.out.has_room() {
                    let Some(o) = self.backlog.pop_front() else {
                        break;
                    };
                    if !self.deliver(o).await {
                        return End::Abnormal;
                    }
                }
                continue;
            }
            tokio::select! {
                pkt = self.conn.next(), if can_read => {
                    if let Some(k) = keep_alive {
                        deadline = Some(Instant::now() + k);
                    }
                    // Packets that arrived together are handled together; the next one
                    // is only taken from the buffer when it will be handled.
                    let mut pkt = pkt;
                    for i in 0..BATCH {
                        match pkt {
                            Some(Ok(p)) => {
                                if let Some(end) = self.handle(wire::inbound(p)).await {
                                    return end;
                                }
                            }
                            Some(Err(e)) => {
                                let reason = match e {
                                    rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. } => Reason::TooLarge,
                                    _ => Reason::Malformed,
                                };
                                self.disconnect_because(reason, &e.to_string()).await;
                                return End::Abnormal;
                            }
                            None => return End::Abnormal,
                        }
                        if i + 1 == BATCH || (self.ver == Ver::V3 && self.inbound_full()) {
                            break;
                        }
                        match self.conn.try_next() {
                            Some(next) => pkt = Some(next),
                            None => break,
                        }
                    }
                }
                Some(done) = self.pending.next(), if !self.pending.is_empty() => {
                    let mut done = done;
                    loop {
                        if let Some(end) = self.complete(done).await {
                            return end;
                        }
                        match self.pending.next().now_or_never() {
                            Some(Some(d)) => done = d,
                            _ => break,
                        }
                    }
                }
                out = out_rx.recv(), if can_send => {
                    let Some(o) = out else { continue };
                    if !self.deliver(o).await {
                        return End::Abnormal;
                    }
                    for _ in 0..BATCH {
                        if !self.out.has_room() {
                            break;
                        }
                        let Ok(o) = out_rx.try_recv() else { break };
                        if !self.deliver(o).await {
                            return End::Abnormal;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    self.disconnect(Reason::KeepAliveTimeout).await;
                    return End::Abnormal;
                }
                _ = takeover.cancelled() => return Box::pin(self.taken_over()).await,
                _ = stop.cancelled() => {
                    self.disconnect(Reason::ShuttingDown).await;
                    return End::Shutdown;
                }
                _ = shutdown.cancelled() => {
                    self.disconnect(Reason::ShuttingDown).await;
                    return End::Shutdown;
                }
            }
        }
    }

    /// Another connection took this client id over. What the client sent before it
    /// reconnected (a last PUBACK, its DISCONNECT) has arrived — buffered here or still
    /// in the socket: it is honoured before the session is handed over.
    async fn taken_over(&mut self) -> End {
        for _ in 0..BATCH {
            let Some(Some(Ok(p))) = self.conn.next().now_or_never() else {
                break;
            };
            if let Some(end) = self.handle(wire::inbound(p)).await {
                return end;
            }
        }
        self.disconnect(Reason::TakenOver).await;
        End::Abnormal
    }

    async fn send_ack(&mut self, kind: Ack, id: u16, error: Option<Reason>) -> bool {
        match wire::ack(self.ver, kind, id, error.map(Reason::code)) {
            Some(p) => self.send(p).await,
            None => true,
        }
    }

    /// Handles one inbound packet; `Some` ends the connection.
    async fn handle(&mut self, p: In) -> Option<End> {
        match p {
            In::Publish(p) => self.on_publish(p).await,
            In::PubAck(id) => {
                if let Some((a, seq)) = self.out.puback(id) {
                    a.ack(seq);
                }
                None
            }
            // The rest is rarer: boxed, so its space is not carried by every connection.
            other => Box::pin(self.handle_control(other)).await,
        }
    }

    async fn handle_control(&mut self, p: In) -> Option<End> {
        match p {
            In::Publish(p) => return self.on_publish(p).await,
            In::PubAck(id) => {
                if let Some((a, seq)) = self.out.puback(id) {
                    a.ack(seq);
                }
            }
            In::PubRec(id) => {
                // The client has the message: from here on only the packet id handshake
                // remains, so the group may forget it.
                let err = match self.out.pubrec(id) {
                    Ok(ack) => {
                        if let Some((a, seq)) = ack {
                            a.ack(seq);
                        }
                        None
                    }
                    Err(r) => Some(r),
                };
                if !self.send_ack(Ack::Pubrel, id, err).await {
                    return Some(End::Abnormal);
                }
            }
            In::PubRel(id) => {
                let err = self.inb.pubrel(id).err();
                if !self.send_ack(Ack::Pubcomp, id, err).await {
                    return Some(End::Abnormal);
                }
            }
            In::PubComp(id) => self.out.pubcomp(id),
            In::Subscribe {
                pkid,
                sub_id,
                filters,
            } => {
                if !Box::pin(self.on_subscribe(pkid, sub_id, filters)).await {
                    return Some(End::Abnormal);
                }
            }
            In::Unsubscribe { pkid, filters } => {
                return Box::pin(self.on_unsubscribe(pkid, filters)).await;
            }
            In::Ping => {
                if !self.send(wire::pong(self.ver)).await {
                    return Some(End::Abnormal);
                }
            }
            In::Disconnect {
                with_will,
                session_expiry,
            } => {
                if let Some(e) = session_expiry {
                    if self.saved.expiry == 0 && e > 0 {
                        self.disconnect(Reason::ExpiryAtDisconnect).await;
                        return Some(End::Abnormal);
                    }
                    self.saved.expiry = e;
                }
                return Some(End::Clean { with_will });
            }
            In::Unexpected(what) => {
                self.disconnect_because(Reason::ProtocolError, &format!("protocol error: {what}"))
                    .await;
                return Some(End::Abnormal);
            }
        }
        None
    }
}

#[cfg(test)]
mod size_tests {
    /// Every connection carries its task's future for its whole life, so its size is
    /// per-connection memory: cold and per-message paths are boxed to keep it small.
    #[tokio::test]
    async fn connection_task_stays_small() {
        let dir = tempfile::tempdir().unwrap();
        let bus = polyport_core::Bus::new();
        let store = polyport_store::SqliteStore::open(
            polyport_store::StoreConfig::new(dir.path()),
            std::sync::Arc::new(bus.clone()),
        )
        .unwrap();
        let hub = polyport_core::Hub::new(std::sync::Arc::new(store), bus, Default::default());
        let broker = crate::broker::Broker::load(hub, crate::MqttConfig::default())
            .await
            .unwrap();
        let (a, _b) = tokio::io::duplex(64);
        let fut = super::run(
            Box::new(a),
            Default::default(),
            broker,
            Default::default(),
            None,
        );
        let size = std::mem::size_of_val(&fut);
        // It was 4.8 KB before the cold paths were boxed.
        assert!(size < 2048, "connection future grew to {size} bytes");
    }
}
