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

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, StreamExt};
use polyport_core::subscription::Acker;
use polyport_core::{
    AckPolicy, AuthContext, Durability, EventDraft, HubError, Item, Origin, Overflow,
    SubscribeRequest, Topic, TopicFilter,
};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::attrs;
use crate::broker::{Broker, Parked, Retained, now_ms, session_group};
use crate::framing::Conn;
use crate::state::{self, SavedSession, SubSpec};
use crate::wire::{self, Ack, ConnectIn, In, MsgProps, PublishIn, SubOpts, Ver};

/// A byte stream carrying MQTT: a TCP socket or a WebSocket.
pub(crate) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
pub(crate) type Transport = Box<dyn Io>;

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

/// MQTT 5 reason codes used here.
mod rc {
    pub(crate) const UNSPECIFIED: u8 = 0x80;
    pub(crate) const MALFORMED: u8 = 0x81;
    pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
    pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
    pub(crate) const SERVER_UNAVAILABLE: u8 = 0x88;
    pub(crate) const SHUTTING_DOWN: u8 = 0x8B;
    pub(crate) const KEEP_ALIVE: u8 = 0x8D;
    pub(crate) const TAKEN_OVER: u8 = 0x8E;
    pub(crate) const FILTER_INVALID: u8 = 0x8F;
    pub(crate) const TOPIC_INVALID: u8 = 0x90;
    pub(crate) const PKID_NOT_FOUND: u8 = 0x92;
    pub(crate) const ALIAS_INVALID: u8 = 0x94;
    pub(crate) const TOO_LARGE: u8 = 0x95;
    pub(crate) const RECEIVE_MAX: u8 = 0x93;
    pub(crate) const PAYLOAD_FORMAT: u8 = 0x99;
}

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

/// What an outbound QoS 1/2 message waits for next.
enum OutState {
    Ack(Option<(Acker, u64)>),
    Rec(Option<(Acker, u64)>),
    Comp,
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
    /// What survives the connection when `saved.expiry > 0`.
    saved: SavedSession,
    /// Whether `saved` is in the Hub's adapter state now.
    persisted: bool,
    subs: HashMap<String, Sub>,
    out_tx: mpsc::Sender<Box<Outgoing>>,
    inflight: HashMap<u16, OutState>,
    next_pkid: u16,
    awaiting_rel: HashSet<u16>,
    pending: FuturesOrdered<Pending>,
    aliases: HashMap<u16, String>,
    client_receive_max: usize,
    /// Topic aliases we assigned towards the client (MQTT 5), and how many it allows.
    out_aliases: HashMap<String, u16>,
    client_alias_max: u16,
    client_max_packet: u32,
    /// Sequences an earlier connection of this session sent without getting an
    /// acknowledgement, with the packet id used: sent again, they carry DUP and the
    /// same id (MQTT 4.4).
    sent_before: Arc<HashMap<u64, u16>>,
    /// Packet ids of `sent_before` not sent again yet: not handed to new messages.
    reserved: HashSet<u16>,
    /// Messages waiting for room under the client's receive maximum.
    backlog: std::collections::VecDeque<Box<Outgoing>>,
    /// QoS 2 packet ids whose publish is still on its way to the log.
    publishing: HashSet<u16>,
    /// QoS 1 packet ids whose publish is still on its way to the log.
    acking: HashSet<u16>,
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
pub(crate) async fn run(stream: Transport, broker: Arc<Broker>, stop: CancellationToken) {
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
    }) = Box::pin(accept(stream, &broker)).await
    else {
        return;
    };
    let end = if Box::pin(s.restore(awaiting_comp)).await {
        s.run(keep_alive, out_rx, takeover, stop).await
    } else {
        End::Abnormal
    };
    Box::pin(finish(s, end, conn, done, will, will_delay)).await;
}

/// Reads CONNECT, authenticates, takes the client id over, resumes or starts the
/// session and answers CONNACK.
async fn accept(stream: Transport, broker: &Arc<Broker>) -> Option<Accepted> {
    let cfg = broker.cfg.clone();
    let mut framed = Conn::new(stream, MqttCodec::Version(VersionCodec));
    // The CONNECT must arrive in time; nothing is buffered for a silent socket.
    let version = match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok(MqttPacket::Version(v)))) => v,
        Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "MQTT handshake refused");
            return None;
        }
        _ => return None,
    };
    framed.codec = max_codec(version, cfg.max_packet_size);
    let connect = match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok(p))) => wire::connect_in(p),
        _ => return None,
    };
    let Ok((ver, mut c)) = connect else {
        return None;
    };
    // Server keep-alive (MQTT 5): a client asking for none or more than the maximum is
    // told the maximum in CONNACK; a 3.1.1 client cannot be told, so it is refused
    // (identifier rejected), as Mosquitto does.
    let max_ka = cfg.max_keep_alive;
    let over = max_ka > 0 && (c.keep_alive == 0 || c.keep_alive > max_ka);
    let keep_alive_override = (over && ver == Ver::V5).then_some(max_ka);
    let caps = wire::ServerCaps {
        receive_max: cfg.receive_max,
        max_packet_size: cfg.max_packet_size,
        topic_alias_max: cfg.topic_alias_max,
        keep_alive_override,
    };
    let refuse = |code3: u8, code5: u8| {
        let code = if ver == Ver::V3 { code3 } else { code5 };
        wire::connack(ver, false, Some(code), None, &caps)
    };
    if over && ver == Ver::V3 {
        let _ = framed.send(refuse(2, 0x85)).await;
        return None;
    }
    if let Some(k) = keep_alive_override {
        c.keep_alive = k;
    }
    let (client_id, assigned) = if c.client_id.is_empty() {
        if ver == Ver::V3 && !c.clean {
            // 3.1.1: a persistent session needs an identifier.
            let _ = framed.send(refuse(2, 0x85)).await;
            return None;
        }
        let id = format!("auto-{}", polyport_core::record::new_id());
        (id.clone(), Some(id))
    } else if c.client_id.len() > 256 {
        let _ = framed.send(refuse(2, 0x85)).await;
        return None;
    } else {
        (c.client_id.clone(), None)
    };
    let ctx =
        match broker
            .hub
            .authenticate(Origin("mqtt"), c.username.as_deref(), c.password.as_deref())
        {
            Ok(ctx) => ctx,
            Err(e) => {
                tracing::info!(client = %client_id, error = %e, "MQTT CONNECT refused");
                let _ = framed.send(refuse(4, 0x86)).await;
                return None;
            }
        };
    let conn = broker.next_connection();
    // The Hub stamps this on every event the client publishes (no-local reads it back).
    let ctx = ctx.with_sender(polyport_core::Sender {
        connection: conn,
        client_id: Some(client_id.as_str().into()),
    });
    let takeover = CancellationToken::new();
    let done = CancellationToken::new();
    if let Some(previous) = broker.claim(&client_id, conn, takeover.clone(), done.clone()) {
        // Let the connection we took over park its session (and register its will)
        // first; resuming without it would silently start an empty session.
        if tokio::time::timeout(HANDOVER, previous.cancelled())
            .await
            .is_err()
        {
            tracing::warn!(client = %client_id, "previous connection did not hand its session over");
            let _ = framed.send(refuse(3, rc::SERVER_UNAVAILABLE)).await;
            // Stay registered until the old connection has parked, so the client's next
            // attempt still waits for it instead of starting an empty session.
            let (b, id) = (broker.clone(), client_id.clone());
            tokio::spawn(async move {
                previous.cancelled().await;
                b.release(&id, conn);
                done.cancel();
            });
            return None;
        }
        broker.cancel_will(&client_id);
    }
    let resumed = match resume(broker, &client_id, &c).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(client = %client_id, error = %e, "MQTT session could not be stored");
            let _ = framed.send(refuse(3, rc::SERVER_UNAVAILABLE)).await;
            broker.release(&client_id, conn);
            done.cancel();
            return None;
        }
    };
    if framed
        .send(wire::connack(
            ver,
            resumed.present,
            None,
            assigned.as_deref(),
            &caps,
        ))
        .await
        .is_err()
    {
        // The session is unchanged: park it again for a later attempt.
        if let Some(p) = resumed.parked {
            broker.park(&client_id, p);
        }
        broker.release(&client_id, conn);
        done.cancel();
        return None;
    }
    metrics::gauge!("polyport_mqtt_connections").increment(1.0);
    let (out_tx, out_rx) = mpsc::channel(cfg.receive_max.max(16) as usize);
    let (saved, awaiting_rel, awaiting_comp, sent_before, reserved) = match resumed.parked {
        Some(p) => (
            p.saved,
            p.awaiting_rel,
            p.awaiting_comp,
            p.unacked,
            p.reserved_ids,
        ),
        None => (
            resumed.fresh,
            HashSet::new(),
            Vec::new(),
            HashMap::new(),
            HashSet::new(),
        ),
    };
    let s = Session {
        ver,
        broker: broker.clone(),
        conn: framed,
        ctx,
        client_id: client_id.clone(),
        saved,
        persisted: resumed.persisted,
        subs: HashMap::new(),
        out_tx,
        inflight: HashMap::new(),
        next_pkid: 0,
        awaiting_rel,
        pending: FuturesOrdered::new(),
        aliases: HashMap::new(),
        client_receive_max: c.receive_max.max(1) as usize,
        out_aliases: HashMap::new(),
        client_alias_max: c.topic_alias_max,
        client_max_packet: c.max_packet_size,
        reserved,
        sent_before: Arc::new(sent_before),
        backlog: Default::default(),
        publishing: HashSet::new(),
        acking: HashSet::new(),
    };
    Some(Accepted {
        s,
        out_rx,
        takeover,
        done,
        conn,
        awaiting_comp,
        keep_alive: c.keep_alive,
        will: c.will.map(Box::new),
        will_delay: c.will_delay,
    })
}

/// Ends a connection: parks or drops its session, then publishes the will if due.
async fn finish(
    mut s: Session,
    end: End,
    conn: u64,
    done: CancellationToken,
    will: Option<Box<PublishIn>>,
    will_delay: u32,
) {
    let broker = s.broker.clone();
    let client_id = s.client_id.clone();
    // Wait for each forwarder to be gone, so its Hub subscriptions have left their groups
    // (handing what this connection never acknowledged back) before the session is
    // parked: a reconnect must not join a group its old member still holds, or its
    // first messages would overtake the ones being handed back.
    for (_, sub) in s.subs.drain() {
        sub.task.abort();
        let _ = sub.task.await;
    }
    // Publishes accepted but not yet acknowledged still complete: dropping one midway
    // could lose a QoS 2 message whose retransmission we would then refuse as a
    // duplicate. One that failed is forgotten, so a retransmission publishes it.
    while let Some((kind, id, result)) = s.pending.next().await {
        if result.is_err() && matches!(kind, Ack::Pubrec) {
            s.awaiting_rel.remove(&id);
        }
    }
    metrics::gauge!("polyport_mqtt_connections").decrement(1.0);
    let expiry = s.saved.expiry;
    if expiry > 0 {
        let awaiting_comp = s
            .inflight
            .iter()
            .filter(|(_, st)| matches!(st, OutState::Comp))
            .map(|(id, _)| *id)
            .collect();
        let unacked: HashMap<u64, u16> = s
            .inflight
            .iter()
            .filter_map(|(id, st)| match st {
                OutState::Ack(Some((_, seq))) | OutState::Rec(Some((_, seq))) => Some((*seq, *id)),
                _ => None,
            })
            .take(MAX_REMEMBERED_UNACKED)
            .collect();
        // Every id the client may still hold (overlapping subscriptions can send one
        // event under two ids; retained messages have no sequence) stays unused for the
        // next connection, which resends or releases them.
        let reserved_ids: HashSet<u16> = s
            .inflight
            .iter()
            .filter(|(_, st)| !matches!(st, OutState::Comp))
            .map(|(id, _)| *id)
            .collect();
        broker.park(
            &client_id,
            Parked {
                saved: s.saved.clone(),
                awaiting_rel: std::mem::take(&mut s.awaiting_rel),
                awaiting_comp,
                unacked,
                reserved_ids,
                since: Instant::now(),
                expiring: None,
            },
        );
    } else if s.persisted {
        broker.forget_session(&client_id, &s.saved).await;
    }
    let publish_will = match end {
        End::Clean { with_will } => with_will,
        End::Abnormal => true,
        End::Shutdown => false,
    };
    // The will is registered before the client id is released, so a reconnect (which
    // waits for `done`) can cancel a delayed one.
    if publish_will && let Some(w) = will {
        // MQTT 5: the will goes out after its delay or when the session ends, whichever
        // comes first; a reconnect before then cancels it.
        let delay = Duration::from_secs(u64::from(will_delay.min(expiry)));
        let ctx = s.ctx.clone();
        if delay.is_zero() {
            let _ = publish_to_hub(&broker, &ctx, *w).await;
        } else {
            let cancel = broker.delay_will(&client_id, conn);
            let (broker, client_id) = (broker.clone(), client_id.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {
                        let _ = publish_to_hub(&broker, &ctx, *w).await;
                    }
                    _ = cancel.cancelled() => {}
                }
                broker.will_done(&client_id, conn);
            });
        }
    }
    // Released only now: a reconnect that finds no live connection must find the
    // session parked.
    broker.release(&client_id, conn);
    done.cancel();
}

/// The session a CONNECT gets: the parked one (clean start off), or a fresh one.
struct Resumed {
    present: bool,
    parked: Option<Parked>,
    fresh: SavedSession,
    persisted: bool,
}

/// Resumes or replaces the client's session and stores what must outlive it, before the
/// CONNACK says so.
async fn resume(broker: &Broker, client_id: &str, c: &ConnectIn) -> Result<Resumed, HubError> {
    let parked = match broker.unpark(client_id) {
        // Expiring right now: it is gone once its deletion is done.
        Some(Parked {
            expiring: Some(t), ..
        }) => {
            t.cancelled().await;
            None
        }
        other => other,
    };
    let fresh = SavedSession {
        generation: polyport_core::record::new_id(),
        expiry: c.session_expiry,
        subs: Vec::new(),
    };
    match parked {
        Some(mut p) if !c.clean => {
            p.saved.expiry = c.session_expiry;
            // Stored even when the expiry became 0: it is dropped when this connection
            // ends, and a crash before then must not lose it.
            let stored = broker
                .hub
                .put_state(
                    &broker.ctx,
                    state::SESSIONS,
                    client_id,
                    Some(state::encode_session(&p.saved)),
                )
                .await;
            if let Err(e) = stored {
                broker.park(client_id, p);
                return Err(e);
            }
            Ok(Resumed {
                present: true,
                parked: Some(p),
                fresh,
                persisted: true,
            })
        }
        old => {
            let value = (c.session_expiry > 0).then(|| state::encode_session(&fresh));
            let persisted = value.is_some();
            if persisted || old.is_some() {
                broker
                    .hub
                    .put_state(&broker.ctx, state::SESSIONS, client_id, value)
                    .await?;
            }
            if let Some(old) = old {
                broker.forget_groups(client_id, &old.saved.generation).await;
            }
            Ok(Resumed {
                present: false,
                parked: None,
                fresh,
                persisted,
            })
        }
    }
}

/// Publishes an MQTT message into the Hub (and the retained store).
async fn publish_to_hub(broker: &Broker, ctx: &AuthContext, p: PublishIn) -> Result<(), HubError> {
    let topic = Topic::new(&p.topic)?;
    let now = chrono::Utc::now();
    let expires_at = p
        .props
        .message_expiry
        .map(|s| now_ms() + u64::from(s) * 1000);
    if p.retain {
        // No retained message for a publish the Hub would refuse.
        broker
            .hub
            .authorize(ctx, polyport_core::auth::Action::Publish(&p.topic))?;
        broker
            .retain(
                &p.topic,
                Retained {
                    payload: p.payload.clone(),
                    qos: p.qos,
                    props: MsgProps {
                        topic_alias: None,
                        message_expiry: None,
                        ..p.props.clone()
                    },
                    expires_at,
                },
            )
            .await?;
    }
    let mut d = EventDraft::new(topic, p.payload.clone());
    d.content_type = p.props.content_type.clone().or_else(|| {
        p.props
            .payload_is_utf8
            .then(|| "text/plain; charset=utf-8".into())
    });
    d.attrs = attrs::inbound(&p, now);
    d.headers = p.props.user_properties;
    d.durability = if p.qos == 0 && !broker.cfg.durable_qos0 {
        Durability::Ephemeral
    } else {
        Durability::Auto
    };
    metrics::counter!("polyport_mqtt_messages_in_total").increment(1);
    broker
        .stats
        .messages_received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    broker.hub.publish(ctx, d).await.map(|_| ())
}

/// Turns one Hub subscription into outgoing MQTT messages for this session.
async fn forward(
    mut sub: polyport_core::Subscription,
    opts: SubOpts,
    sub_id: Option<u32>,
    client_id: String,
    sent_before: Arc<HashMap<u64, u16>>,
    tx: mpsc::Sender<Box<Outgoing>>,
) {
    let acker = sub.acker();
    while let Some(item) = sub.next().await {
        let d = match item {
            Ok(Item::Event(d)) => d,
            Ok(Item::Notice(n)) => {
                tracing::debug!(client = %client_id, notice = ?n, "MQTT subscriber missed messages");
                continue;
            }
            Err(_) => break,
        };
        let e = &d.event;
        let ack = e.seq.map(|seq| (acker.clone(), seq));
        let settle = |ack: Option<(Acker, u64)>| {
            if let Some((a, seq)) = ack {
                a.ack(seq);
            }
        };
        if opts.no_local && attrs::from_client(e, &client_id) {
            settle(ack);
            continue;
        }
        let Some(out) = attrs::outbound(e, chrono::Utc::now) else {
            // Expired while queued (MQTT 5 message expiry).
            settle(ack);
            continue;
        };
        let qos = out.published_qos.min(opts.qos);
        let mut out = Box::new(Outgoing {
            topic: e.topic.as_str().to_string(),
            payload: e.payload.clone(),
            qos,
            retain: opts.retain_as_published && out.retain,
            props: out.props,
            sub_ids: sub_id.into_iter().collect(),
            dup: qos > 0
                && (d.redeliveries > 0 || e.seq.is_some_and(|s| sent_before.contains_key(&s))),
            ack,
        });
        if qos == 0 {
            // At most once: nothing to wait for.
            out.settle();
        }
        if tx.send(out).await.is_err() {
            break;
        }
    }
}

/// MQTT topic-name rules on top of the tree's own: no wildcards, not empty.
fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}

impl Session {
    /// Inbound QoS 1/2 publishes not yet finished: QoS 1 until its PUBACK is sent, QoS 2
    /// until its PUBREL arrives (and the PUBCOMP goes out at once).
    fn inbound_in_flight(&self) -> usize {
        self.acking.len() + self.awaiting_rel.len()
    }

    /// A 3.1.1 client cannot be told a receive maximum: past it we stop reading.
    fn inbound_full(&self) -> bool {
        self.pending.len() >= self.broker.cfg.receive_max as usize
    }

    /// Queues a packet; the run loop flushes once per step, so a batch is one write.
    async fn send(&mut self, p: MqttPacket) -> bool {
        self.conn.feed(p).is_ok()
    }

    async fn disconnect(&mut self, reason: u8, why: &str) {
        if let Some(p) = wire::disconnect(self.ver, reason, why) {
            let _ = self.conn.feed(p);
        }
        // Best effort: a client that stopped reading must not hold the ending up.
        let _ = tokio::time::timeout(Duration::from_secs(2), self.conn.flush()).await;
    }

    /// A packet id for `seq`: the one it had on an earlier connection if any, else a
    /// free one (not in flight, not reserved for such a resend).
    fn pkid(&mut self, seq: Option<u64>) -> u16 {
        if let Some(id) = seq.and_then(|s| self.sent_before.get(&s).copied())
            && self.reserved.remove(&id)
            && !self.inflight.contains_key(&id)
        {
            return id;
        }
        for _ in 0..=u16::MAX {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            let id = self.next_pkid;
            if id != 0 && !self.inflight.contains_key(&id) && !self.reserved.contains(&id) {
                return id;
            }
        }
        // Every id is in flight or reserved: give up the reservations (those messages
        // will be sent with new ids) rather than spin.
        self.reserved.clear();
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    /// Resubscribes a resumed session and resends the PUBRELs it still owes.
    async fn restore(&mut self, awaiting_comp: Vec<u16>) -> bool {
        for spec in self.saved.subs.clone() {
            match self.open_sub(&spec).await {
                Ok((_, sub)) => {
                    self.subs.insert(spec.filter.clone(), sub);
                }
                Err(e) => {
                    tracing::warn!(client = %self.client_id, filter = %spec.filter, error = %e, "restoring MQTT subscription failed");
                }
            }
        }
        for id in awaiting_comp {
            self.inflight.insert(id, OutState::Comp);
            if !self.send_ack(Ack::Pubrel, id, None).await {
                return false;
            }
        }
        true
    }

    async fn deliver(&mut self, mut o: Box<Outgoing>) -> bool {
        // The alias this message would use (MQTT 5), decided before the size check but
        // only committed once it is sent: a dropped message must not leave the client
        // without the mapping later ones rely on.
        let (alias, new_alias) = if self.ver == Ver::V5 && self.client_alias_max > 0 {
            match self.out_aliases.get(&o.topic) {
                Some(a) => (Some(*a), false),
                None if self.out_aliases.len() < usize::from(self.client_alias_max) => {
                    (Some(self.out_aliases.len() as u16 + 1), true)
                }
                None => (None, false),
            }
        } else {
            (None, false)
        };
        o.props.topic_alias = alias;
        let topic = if alias.is_some() && !new_alias {
            ""
        } else {
            o.topic.as_str()
        };
        // Larger than the client takes (MQTT 5, 3.1.2.11.4) or than our own packet limit
        // (messages from HTTP may be larger): discarded as if delivered, never a reason
        // to drop the connection — it would only be redelivered on the next one.
        let limit = self.client_max_packet.min(self.broker.cfg.max_packet_size) as usize;
        let size = wire::publish_size(
            self.ver,
            topic,
            o.payload.len(),
            o.qos,
            &o.props,
            &o.sub_ids,
        );
        if size > limit {
            tracing::warn!(client = %self.client_id, topic = %o.topic, size, limit, "message exceeds the maximum packet size; not delivered to this client");
            metrics::counter!("polyport_mqtt_oversized_dropped_total").increment(1);
            o.settle();
            return true;
        }
        if let (Some(a), true) = (alias, new_alias) {
            self.out_aliases.insert(o.topic.clone(), a);
        }
        let seq = o.ack.as_ref().map(|(_, seq)| *seq);
        let id = if o.qos > 0 {
            Some(self.pkid(seq))
        } else {
            None
        };
        if let Some(id) = id {
            let ack = o.ack.take();
            let st = if o.qos == 1 {
                OutState::Ack(ack)
            } else {
                OutState::Rec(ack)
            };
            self.inflight.insert(id, st);
        }
        metrics::counter!("polyport_mqtt_messages_out_total").increment(1);
        self.broker
            .stats
            .messages_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let topic = if alias.is_some() && !new_alias {
            ""
        } else {
            o.topic.as_str()
        };
        let p = wire::publish(
            self.ver, topic, o.payload, o.qos, o.retain, o.dup, id, &o.props, &o.sub_ids,
        );
        self.send(p).await
    }

    async fn run(
        &mut self,
        keep_alive: u16,
        mut out_rx: mpsc::Receiver<Box<Outgoing>>,
        takeover: CancellationToken,
        stop: CancellationToken,
    ) -> End {
        let keep_alive =
            (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
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
            let can_send = self.inflight.len() < self.client_receive_max;
            if can_send && !self.backlog.is_empty() {
                // Retained messages waiting for the client's receive maximum.
                while self.inflight.len() < self.client_receive_max {
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
                    let mut pkt = pkt;
                    // Packets that arrived together are handled together.
                    for _ in 0..BATCH {
                        match pkt {
                            Some(Ok(p)) => {
                                if let Some(end) = self.handle(wire::inbound(p)).await {
                                    return end;
                                }
                            }
                            Some(Err(e)) => {
                                let reason = match e {
                                    rmqtt_codec::error::DecodeError::MaxSizeExceeded { .. } => rc::TOO_LARGE,
                                    _ => rc::MALFORMED,
                                };
                                self.disconnect(reason, &e.to_string()).await;
                                return End::Abnormal;
                            }
                            None => return End::Abnormal,
                        }
                        if self.ver == Ver::V3 && self.inbound_full() {
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
                        if self.inflight.len() >= self.client_receive_max {
                            break;
                        }
                        let Ok(o) = out_rx.try_recv() else { break };
                        if !self.deliver(o).await {
                            return End::Abnormal;
                        }
                    }
                }
                _ = sleep_until(deadline) => {
                    self.disconnect(rc::KEEP_ALIVE, "keep-alive timeout").await;
                    return End::Abnormal;
                }
                _ = takeover.cancelled() => return Box::pin(self.taken_over()).await,
                _ = stop.cancelled() => {
                    self.disconnect(rc::SHUTTING_DOWN, "server shutting down").await;
                    return End::Shutdown;
                }
                _ = shutdown.cancelled() => {
                    self.disconnect(rc::SHUTTING_DOWN, "server shutting down").await;
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
        self.disconnect(
            rc::TAKEN_OVER,
            "another connection took over this client id",
        )
        .await;
        End::Abnormal
    }

    /// Acknowledges a publish the Hub has finished with (or refuses it, on MQTT 5).
    async fn complete(
        &mut self,
        (kind, id, result): (Ack, u16, Result<(), HubError>),
    ) -> Option<End> {
        match kind {
            Ack::Pubrec => self.publishing.remove(&id),
            _ => self.acking.remove(&id),
        };
        let ok = match result {
            Ok(()) => self.send_ack(kind, id, None).await,
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "MQTT publish refused by the hub");
                if matches!(kind, Ack::Pubrec) {
                    // The flow ends here: the packet id is free for a new message.
                    self.awaiting_rel.remove(&id);
                }
                if self.ver == Ver::V3 {
                    // 3.1.1 has no negative acknowledgement: close instead.
                    return Some(End::Abnormal);
                }
                let code = match e {
                    HubError::Forbidden(_) => rc::NOT_AUTHORIZED,
                    HubError::InvalidTopic(_) => rc::TOPIC_INVALID,
                    _ => rc::UNSPECIFIED,
                };
                self.send_ack(kind, id, Some(code)).await
            }
        };
        (!ok).then_some(End::Abnormal)
    }

    async fn send_ack(&mut self, kind: Ack, id: u16, error: Option<u8>) -> bool {
        match wire::ack(self.ver, kind, id, error) {
            Some(p) => self.send(p).await,
            None => true,
        }
    }

    /// Handles one inbound packet; `Some` ends the connection.
    async fn handle(&mut self, p: In) -> Option<End> {
        match p {
            In::Publish(p) => self.on_publish(p).await,
            In::PubAck(id) => {
                if let Some(OutState::Ack(Some((a, seq)))) = self.inflight.remove(&id) {
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
                if let Some(OutState::Ack(Some((a, seq)))) = self.inflight.remove(&id) {
                    a.ack(seq);
                }
            }
            In::PubRec(id) => {
                let known = match self.inflight.remove(&id) {
                    Some(OutState::Rec(ack)) => {
                        // The client has the message: from here on only the packet id
                        // handshake remains, so the group may forget it.
                        if let Some((a, seq)) = ack {
                            a.ack(seq);
                        }
                        true
                    }
                    Some(other) => {
                        self.inflight.insert(id, other);
                        false
                    }
                    None => false,
                };
                if known {
                    self.inflight.insert(id, OutState::Comp);
                }
                let err = (!known).then_some(rc::PKID_NOT_FOUND);
                if !self.send_ack(Ack::Pubrel, id, err).await {
                    return Some(End::Abnormal);
                }
            }
            In::PubRel(id) => {
                let known = self.awaiting_rel.remove(&id);
                let err = (!known).then_some(rc::PKID_NOT_FOUND);
                if !self.send_ack(Ack::Pubcomp, id, err).await {
                    return Some(End::Abnormal);
                }
            }
            In::PubComp(id) => {
                if matches!(self.inflight.get(&id), Some(OutState::Comp)) {
                    self.inflight.remove(&id);
                }
            }
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
                let found: Vec<bool> = filters
                    .iter()
                    .map(|f| match self.subs.remove(f) {
                        Some(s) => {
                            s.task.abort();
                            true
                        }
                        None => false,
                    })
                    .collect();
                if found.iter().any(|f| *f) {
                    let (gone, kept) = std::mem::take(&mut self.saved.subs)
                        .into_iter()
                        .partition(|s| filters.contains(&s.filter));
                    self.saved.subs = kept;
                    let gone: Vec<SubSpec> = gone;
                    if self.saved.expiry > 0 || self.persisted {
                        for g in &gone {
                            let name =
                                session_group(&self.client_id, &self.saved.generation, &g.nonce);
                            let _ = Box::pin(self.broker.hub.delete_group(&self.broker.ctx, &name))
                                .await;
                        }
                    }
                    if !Box::pin(self.store_session()).await {
                        self.disconnect(rc::SERVER_UNAVAILABLE, "session could not be stored")
                            .await;
                        return Some(End::Abnormal);
                    }
                }
                if let Some(p) = wire::unsuback(self.ver, pkid, &found)
                    && !self.send(p).await
                {
                    return Some(End::Abnormal);
                }
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
                        self.disconnect(
                            rc::PROTOCOL_ERROR,
                            "a session that expires at once cannot be made persistent at DISCONNECT",
                        )
                        .await;
                        return Some(End::Abnormal);
                    }
                    self.saved.expiry = e;
                }
                return Some(End::Clean { with_will });
            }
            In::Unexpected(what) => {
                self.disconnect(rc::PROTOCOL_ERROR, &format!("protocol error: {what}"))
                    .await;
                return Some(End::Abnormal);
            }
        }
        None
    }

    async fn on_publish(&mut self, mut p: Box<PublishIn>) -> Option<End> {
        if let Some(alias) = p.props.topic_alias {
            if alias == 0 || alias > self.broker.cfg.topic_alias_max {
                self.disconnect(rc::ALIAS_INVALID, "topic alias out of range")
                    .await;
                return Some(End::Abnormal);
            }
            if p.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(t) => p.topic = t.clone(),
                    None => {
                        self.disconnect(rc::ALIAS_INVALID, "unknown topic alias")
                            .await;
                        return Some(End::Abnormal);
                    }
                }
            } else {
                self.aliases.insert(alias, p.topic.clone());
            }
        }
        if !valid_topic_name(&p.topic) || Topic::new(&p.topic).is_err() {
            self.disconnect(
                rc::TOPIC_INVALID,
                "a PUBLISH topic must be non-empty and contain no wildcards",
            )
            .await;
            return Some(End::Abnormal);
        }
        if p.props.payload_is_utf8 && std::str::from_utf8(&p.payload).is_err() {
            // MQTT 5 (3.3.2.3.2): a payload declared UTF-8 that is not.
            return match (p.pkid, p.qos) {
                (Some(id), 1 | 2) => {
                    let kind = if p.qos == 1 { Ack::Puback } else { Ack::Pubrec };
                    (!self.send_ack(kind, id, Some(rc::PAYLOAD_FORMAT)).await)
                        .then_some(End::Abnormal)
                }
                _ => None,
            };
        }
        if p.topic.starts_with("$SYS") {
            // The broker's own statistics: clients may read, never write (as Mosquitto).
            tracing::debug!(client = %self.client_id, topic = %p.topic, "PUBLISH to $SYS refused");
            return match (p.pkid, p.qos) {
                (Some(id), 1) => {
                    let err = (self.ver == Ver::V5).then_some(rc::NOT_AUTHORIZED);
                    (!self.send_ack(Ack::Puback, id, err).await).then_some(End::Abnormal)
                }
                (Some(id), 2) => {
                    let err = (self.ver == Ver::V5).then_some(rc::NOT_AUTHORIZED);
                    if err.is_none() {
                        self.awaiting_rel.insert(id);
                    }
                    (!self.send_ack(Ack::Pubrec, id, err).await).then_some(End::Abnormal)
                }
                _ => None,
            };
        }
        let (Some(id), true) = (p.pkid, p.qos > 0) else {
            // QoS 0: fire and forget, fanned out in memory unless configured durable.
            // Boxed (as QoS 1/2 publishes are): the connection task would otherwise
            // carry this future's space for its whole life.
            let publish = Box::pin(publish_to_hub(&self.broker, &self.ctx, *p));
            if let Err(e) = publish.await {
                tracing::debug!(error = %e, "MQTT QoS 0 publish dropped");
            }
            return None;
        };
        if p.qos == 2 && self.awaiting_rel.contains(&id) {
            // A retransmission of a QoS 2 message already accepted: never publish twice
            // (exactly once). If the first copy is still being stored, its PUBREC follows
            // once it is durable; otherwise acknowledge again.
            if self.publishing.contains(&id) {
                return None;
            }
            return (!self.send_ack(Ack::Pubrec, id, None).await).then_some(End::Abnormal);
        }
        if p.qos == 1 && self.acking.contains(&id) {
            // A resend of a QoS 1 message still being stored: its PUBACK follows.
            return None;
        }
        if self.ver == Ver::V5 && self.inbound_in_flight() >= self.broker.cfg.receive_max as usize {
            // MQTT 5 §4.9: a client may have at most Receive Maximum QoS 1/2 publishes
            // unacknowledged (QoS 2 until PUBCOMP). We keep reading while it is full, so
            // the violation is seen rather than hidden by back-pressure.
            self.disconnect(rc::RECEIVE_MAX, "receive maximum exceeded")
                .await;
            return Some(End::Abnormal);
        }
        let kind = if p.qos == 1 { Ack::Puback } else { Ack::Pubrec };
        if p.qos == 2 {
            self.awaiting_rel.insert(id);
            self.publishing.insert(id);
        } else {
            self.acking.insert(id);
        }
        let broker = self.broker.clone();
        let ctx = self.ctx.clone();
        self.pending.push_back(
            async move {
                let r = publish_to_hub(&broker, &ctx, *p).await;
                (kind, id, r)
            }
            .boxed(),
        );
        None
    }

    /// Opens the Hub subscription behind one MQTT subscription and starts forwarding.
    /// Returns the filter (for retained messages, `None` for shared subscriptions).
    async fn open_sub(&mut self, spec: &SubSpec) -> Result<(Option<TopicFilter>, Sub), u8> {
        let invalid = if self.ver == Ver::V5 {
            rc::FILTER_INVALID
        } else {
            0x80
        };
        // `$share/{group}/{filter}`: competing consumers, a Hub group.
        let (share, filter_text) = match spec.filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((g, f)) if !g.is_empty() && !g.contains(['+', '#']) => (Some(g), f),
                _ => return Err(invalid),
            },
            None => (None, spec.filter.as_str()),
        };
        let filter = TopicFilter::new(filter_text).map_err(|_| invalid)?;
        let ack = AckPolicy {
            prefetch: self.client_receive_max,
            ack_timeout: NO_REDELIVERY,
        };
        let (group, ack) = match share {
            Some(g) => (Some(format!("mqtt-share:{g}")), Some(ack)),
            // A resumed session keeps reading from its saved positions even when this
            // CONNECT's expiry is 0 (that only decides what happens at the next
            // disconnect, [MQTT-3.1.2-5]): `persisted` says the groups exist.
            None if self.saved.expiry > 0 || self.persisted => (
                Some(session_group(
                    &self.client_id,
                    &self.saved.generation,
                    &spec.nonce,
                )),
                Some(ack),
            ),
            None => (None, None),
        };
        let req = SubscribeRequest {
            filters: vec![filter.clone()],
            group,
            ack,
            overflow: Overflow::Notify,
            queue: Some(self.broker.cfg.max_queued_messages),
            ..SubscribeRequest::default()
        };
        match self.broker.hub.subscribe(&self.ctx, req).await {
            Ok(sub) => {
                let task = tokio::spawn(forward(
                    sub,
                    spec.opts(),
                    spec.id,
                    self.client_id.clone(),
                    self.sent_before.clone(),
                    self.out_tx.clone(),
                ));
                Ok((share.is_none().then_some(filter), Sub { task }))
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "MQTT subscribe refused by the hub");
                Err(match (e, self.ver) {
                    (_, Ver::V3) => 0x80,
                    (HubError::Forbidden(_), _) => rc::NOT_AUTHORIZED,
                    _ => rc::UNSPECIFIED,
                })
            }
        }
    }

    /// Writes the session to the Hub's adapter state when it is persistent.
    async fn store_session(&mut self) -> bool {
        if self.saved.expiry == 0 {
            return true;
        }
        let value = state::encode_session(&self.saved);
        match self
            .broker
            .hub
            .put_state(
                &self.broker.ctx,
                state::SESSIONS,
                &self.client_id,
                Some(value),
            )
            .await
        {
            Ok(()) => {
                self.persisted = true;
                true
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "storing MQTT session failed");
                false
            }
        }
    }

    async fn on_subscribe(
        &mut self,
        pkid: u16,
        sub_id: Option<u32>,
        filters: Vec<(String, SubOpts)>,
    ) -> bool {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        let mut changed = false;
        for (text, mut opts) in filters {
            opts.qos = opts.qos.min(2);
            // A replaced subscription keeps its stream; a new one starts live.
            let nonce = self
                .saved
                .subs
                .iter()
                .find(|s| s.filter == text)
                .map(|s| s.nonce.clone())
                .unwrap_or_else(polyport_core::record::new_id);
            let spec = SubSpec::new(text.clone(), opts, sub_id, nonce);
            let is_new = !self.subs.contains_key(&text);
            if let Some(old) = self.subs.remove(&text) {
                old.task.abort();
            }
            match self.open_sub(&spec).await {
                Ok((filter, sub)) => {
                    self.subs.insert(text.clone(), sub);
                    self.saved.subs.retain(|s| s.filter != text);
                    self.saved.subs.push(spec);
                    changed = true;
                    codes.push(opts.qos);
                    let send_retained =
                        opts.retain_handling == 0 || (opts.retain_handling == 1 && is_new);
                    if let (Some(filter), true) = (filter, send_retained) {
                        for (topic, r) in self.broker.retained_for(&filter) {
                            let message_expiry = r
                                .expires_at
                                .map(|at| (at.saturating_sub(now_ms())).div_ceil(1000) as u32);
                            retained.push(Outgoing {
                                topic,
                                payload: r.payload,
                                qos: r.qos.min(opts.qos),
                                retain: true,
                                props: MsgProps {
                                    message_expiry,
                                    ..r.props
                                },
                                sub_ids: sub_id.into_iter().collect(),
                                dup: false,
                                ack: None,
                            });
                        }
                    }
                }
                Err(code) => {
                    if !is_new {
                        self.saved.subs.retain(|s| s.filter != text);
                        changed = true;
                    }
                    codes.push(code);
                }
            }
        }
        // A persistent session's subscriptions are stored before SUBACK promises them.
        if changed && !self.store_session().await {
            for c in &mut codes {
                if *c <= 2 {
                    *c = if self.ver == Ver::V5 {
                        rc::UNSPECIFIED
                    } else {
                        0x80
                    };
                }
            }
        }
        let Some(ack) = wire::suback(self.ver, pkid, &codes) else {
            return true;
        };
        if !self.send(ack).await {
            return false;
        }
        // Through the backlog, so the client's receive maximum holds for them too.
        self.backlog.extend(retained.into_iter().map(Box::new));
        true
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
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
        let broker = super::Broker::load(hub, crate::MqttConfig::default())
            .await
            .unwrap();
        let (a, _b) = tokio::io::duplex(64);
        let fut = super::run(Box::new(a), broker, Default::default());
        let size = std::mem::size_of_val(&fut);
        // It was 4.8 KB before the cold paths were boxed.
        assert!(size < 2048, "connection future grew to {size} bytes");
    }
}
