//! One MQTT connection: version detection, CONNECT, then a loop over the socket, the
//! outbound queue fed by this session's Hub subscriptions, pending QoS 1/2 publishes
//! (acknowledged only after the Hub has made them durable, in the order received), the
//! keep-alive deadline, takeover and shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::stream::FuturesOrdered;
use futures::{FutureExt, SinkExt, StreamExt};
use polyport_core::{
    AuthContext, Durability, EventDraft, HubError, Item, Origin, Overflow, SubscribeRequest, Topic,
    TopicFilter,
};
use rmqtt_codec::version::{ProtocolVersion, VersionCodec};
use rmqtt_codec::{MqttCodec, MqttPacket, v3, v5};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, Retained};
use crate::wire::{self, Ack, ConnectIn, In, MsgProps, PublishIn, SubOpts, Ver};

/// Internal event headers that carry MQTT semantics through the Hub.
const H_QOS: &str = "mqtt-qos";
const H_CLIENT: &str = "mqtt-client";
const H_RETAIN: &str = "mqtt-retain";
const H_RESPONSE_TOPIC: &str = "mqtt-response-topic";
const H_CORRELATION: &str = "mqtt-correlation-data";

/// MQTT 5 reason codes used here.
mod rc {
    pub(crate) const UNSPECIFIED: u8 = 0x80;
    pub(crate) const MALFORMED: u8 = 0x81;
    pub(crate) const PROTOCOL_ERROR: u8 = 0x82;
    pub(crate) const NOT_AUTHORIZED: u8 = 0x87;
    pub(crate) const SHUTTING_DOWN: u8 = 0x8B;
    pub(crate) const KEEP_ALIVE: u8 = 0x8D;
    pub(crate) const TAKEN_OVER: u8 = 0x8E;
    pub(crate) const FILTER_INVALID: u8 = 0x8F;
    pub(crate) const TOPIC_INVALID: u8 = 0x90;
    pub(crate) const PKID_NOT_FOUND: u8 = 0x92;
    pub(crate) const ALIAS_INVALID: u8 = 0x94;
    pub(crate) const TOO_LARGE: u8 = 0x95;
    pub(crate) const QUOTA: u8 = 0x97;
}

/// A message on its way to this client.
#[derive(Debug)]
pub(crate) struct Outgoing {
    topic: String,
    payload: Bytes,
    qos: u8,
    retain: bool,
    props: MsgProps,
    sub_ids: Vec<u32>,
}

/// What an outbound QoS 1/2 message waits for next.
enum OutState {
    Ack,
    Rec,
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
    framed: Framed<TcpStream, MqttCodec>,
    client_id: String,
    ctx: AuthContext,
    subs: HashMap<String, Sub>,
    out_tx: mpsc::Sender<Outgoing>,
    inflight: HashMap<u16, OutState>,
    next_pkid: u16,
    awaiting_rel: HashSet<u16>,
    pending: FuturesOrdered<Pending>,
    aliases: HashMap<u16, String>,
    client_receive_max: usize,
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

/// Serves one connection to the end.
pub(crate) async fn run(stream: TcpStream, broker: Arc<Broker>, stop: CancellationToken) {
    let cfg = broker.cfg.clone();
    let mut framed = Framed::new(stream, MqttCodec::Version(VersionCodec));
    // The CONNECT must arrive in time; nothing is buffered for a silent socket.
    let version = match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok((MqttPacket::Version(v), _)))) => v,
        Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "MQTT handshake refused");
            return;
        }
        _ => return,
    };
    *framed.codec_mut() = max_codec(version, cfg.max_packet_size);
    let connect = match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok((p, _)))) => wire::connect_in(p),
        _ => return,
    };
    let Ok((ver, c)) = connect else { return };
    let caps = wire::ServerCaps {
        receive_max: cfg.receive_max,
        max_packet_size: cfg.max_packet_size,
        topic_alias_max: cfg.topic_alias_max,
        keep_alive_override: None,
    };
    let (client_id, assigned) = if c.client_id.is_empty() {
        if ver == Ver::V3 && !c.clean {
            // 3.1.1: a persistent session needs an identifier.
            let _ = framed
                .send(wire::connack(ver, false, Some(2), None, &caps))
                .await;
            return;
        }
        let id = format!("auto-{}", polyport_core::record::new_id());
        (id.clone(), Some(id))
    } else if c.client_id.len() > 256 {
        let refuse = if ver == Ver::V3 { 2 } else { 0x85 };
        let _ = framed
            .send(wire::connack(ver, false, Some(refuse), None, &caps))
            .await;
        return;
    } else {
        (c.client_id.clone(), None)
    };
    let conn = broker.next_connection();
    let takeover = CancellationToken::new();
    broker.claim(&client_id, conn, takeover.clone());
    if framed
        .send(wire::connack(ver, false, None, assigned.as_deref(), &caps))
        .await
        .is_err()
    {
        broker.release(&client_id, conn);
        return;
    }
    metrics::gauge!("polyport_mqtt_connections").increment(1.0);
    let (out_tx, out_rx) = mpsc::channel(cfg.receive_max.max(16) as usize);
    let mut s = Session {
        ver,
        broker: broker.clone(),
        framed,
        ctx: AuthContext {
            principal: c.username.clone(),
            origin: Origin("mqtt"),
        },
        client_id: client_id.clone(),
        subs: HashMap::new(),
        out_tx,
        inflight: HashMap::new(),
        next_pkid: 0,
        awaiting_rel: HashSet::new(),
        pending: FuturesOrdered::new(),
        aliases: HashMap::new(),
        client_receive_max: c.receive_max.max(1) as usize,
    };
    let end = s.run(&c, out_rx, takeover, stop).await;
    for (_, sub) in s.subs.drain() {
        sub.task.abort();
    }
    broker.release(&client_id, conn);
    metrics::gauge!("polyport_mqtt_connections").decrement(1.0);
    let publish_will = match end {
        End::Clean { with_will } => with_will,
        End::Abnormal => true,
        End::Shutdown => false,
    };
    if publish_will && let Some(w) = c.will {
        let delay = Duration::from_secs(u64::from(c.will_delay));
        let ctx = s.ctx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = publish_to_hub(&broker, &ctx, &client_id, w).await;
        });
    }
}

/// Publishes an MQTT message into the Hub (and the retained store).
async fn publish_to_hub(
    broker: &Broker,
    ctx: &AuthContext,
    client_id: &str,
    p: PublishIn,
) -> Result<(), HubError> {
    let topic = Topic::new(&p.topic)?;
    if p.retain {
        broker.retain(
            &p.topic,
            Retained {
                payload: p.payload.clone(),
                qos: p.qos,
                props: p.props.clone(),
            },
        );
    }
    let mut d = EventDraft::new(topic, p.payload);
    d.content_type = p.props.content_type.clone().or_else(|| {
        p.props
            .payload_is_utf8
            .then(|| "text/plain; charset=utf-8".into())
    });
    d.headers = p.props.user_properties.clone();
    d.headers.push((H_QOS.into(), p.qos.to_string()));
    d.headers.push((H_CLIENT.into(), client_id.to_string()));
    if p.retain {
        d.headers.push((H_RETAIN.into(), "1".into()));
    }
    if let Some(rt) = &p.props.response_topic {
        d.headers.push((H_RESPONSE_TOPIC.into(), rt.clone()));
    }
    if let Some(cd) = &p.props.correlation_data {
        d.headers.push((
            H_CORRELATION.into(),
            base64::engine::general_purpose::STANDARD.encode(cd),
        ));
    }
    d.durability = if p.qos == 0 && !broker.cfg.durable_qos0 {
        Durability::Ephemeral
    } else {
        Durability::Auto
    };
    metrics::counter!("polyport_mqtt_messages_in_total").increment(1);
    broker.hub.publish(ctx, d).await.map(|_| ())
}

fn header<'a>(e: &'a polyport_core::Event, name: &str) -> Option<&'a str> {
    e.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// Turns one Hub subscription into outgoing MQTT messages for this session.
async fn forward(
    mut sub: polyport_core::Subscription,
    opts: SubOpts,
    sub_id: Option<u32>,
    client_id: String,
    tx: mpsc::Sender<Outgoing>,
) {
    while let Some(item) = sub.next().await {
        let e = match item {
            Ok(Item::Event(d)) => d.event,
            Ok(Item::Notice(n)) => {
                tracing::debug!(client = %client_id, notice = ?n, "MQTT subscriber missed messages");
                continue;
            }
            Err(_) => break,
        };
        if opts.no_local && header(&e, H_CLIENT) == Some(client_id.as_str()) {
            continue;
        }
        let published_qos = header(&e, H_QOS)
            .and_then(|q| q.parse::<u8>().ok())
            .unwrap_or(if e.seq.is_some() { 1 } else { 0 });
        let user_properties = e
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("mqtt-"))
            .cloned()
            .collect();
        let out = Outgoing {
            topic: e.topic.as_str().to_string(),
            payload: e.payload.clone(),
            qos: published_qos.min(opts.qos),
            retain: opts.retain_as_published && header(&e, H_RETAIN) == Some("1"),
            props: MsgProps {
                content_type: e.content_type.clone(),
                response_topic: header(&e, H_RESPONSE_TOPIC).map(str::to_string),
                correlation_data: header(&e, H_CORRELATION).and_then(|c| {
                    base64::engine::general_purpose::STANDARD
                        .decode(c)
                        .ok()
                        .map(Bytes::from)
                }),
                user_properties,
                payload_is_utf8: false,
                topic_alias: None,
            },
            sub_ids: sub_id.into_iter().collect(),
        };
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
    async fn send(&mut self, p: MqttPacket) -> bool {
        self.framed.send(p).await.is_ok()
    }

    async fn disconnect(&mut self, reason: u8, why: &str) {
        if let Some(p) = wire::disconnect(self.ver, reason, why) {
            let _ = self.framed.send(p).await;
        }
    }

    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains_key(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }

    async fn deliver(&mut self, o: Outgoing) -> bool {
        let id = if o.qos > 0 { Some(self.pkid()) } else { None };
        if let Some(id) = id {
            let st = if o.qos == 1 {
                OutState::Ack
            } else {
                OutState::Rec
            };
            self.inflight.insert(id, st);
        }
        metrics::counter!("polyport_mqtt_messages_out_total").increment(1);
        let p = wire::publish(
            self.ver, &o.topic, o.payload, o.qos, o.retain, false, id, &o.props, &o.sub_ids,
        );
        self.send(p).await
    }

    async fn run(
        &mut self,
        c: &ConnectIn,
        mut out_rx: mpsc::Receiver<Outgoing>,
        takeover: CancellationToken,
        stop: CancellationToken,
    ) -> End {
        let keep_alive =
            (c.keep_alive > 0).then(|| Duration::from_millis(u64::from(c.keep_alive) * 1500));
        let mut deadline = keep_alive.map(|k| Instant::now() + k);
        let shutdown = self.broker.hub.shutdown_token();
        loop {
            let can_read = self.pending.len() < self.broker.cfg.receive_max as usize;
            let can_send = self.inflight.len() < self.client_receive_max;
            tokio::select! {
                pkt = self.framed.next(), if can_read => {
                    if let Some(k) = keep_alive {
                        deadline = Some(Instant::now() + k);
                    }
                    match pkt {
                        Some(Ok((p, _))) => {
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
                }
                Some((kind, id, result)) = self.pending.next(), if !self.pending.is_empty() => {
                    let ok = match result {
                        Ok(()) => self.send_ack(kind, id, None).await,
                        Err(e) => {
                            tracing::warn!(client = %self.client_id, error = %e, "MQTT publish refused by the hub");
                            if self.ver == Ver::V3 {
                                // 3.1.1 has no negative acknowledgement: close instead.
                                return End::Abnormal;
                            }
                            let code = match e {
                                HubError::Forbidden(_) => rc::NOT_AUTHORIZED,
                                HubError::InvalidTopic(_) => rc::TOPIC_INVALID,
                                _ => rc::UNSPECIFIED,
                            };
                            self.send_ack(kind, id, Some(code)).await
                        }
                    };
                    if !ok {
                        return End::Abnormal;
                    }
                }
                out = out_rx.recv(), if can_send => {
                    let Some(o) = out else { continue };
                    if !self.deliver(o).await {
                        return End::Abnormal;
                    }
                }
                _ = sleep_until(deadline) => {
                    self.disconnect(rc::KEEP_ALIVE, "keep-alive timeout").await;
                    return End::Abnormal;
                }
                _ = takeover.cancelled() => {
                    self.disconnect(rc::TAKEN_OVER, "another connection took over this client id").await;
                    return End::Abnormal;
                }
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

    async fn send_ack(&mut self, kind: Ack, id: u16, error: Option<u8>) -> bool {
        match wire::ack(self.ver, kind, id, error) {
            Some(p) => self.send(p).await,
            None => true,
        }
    }

    /// Handles one inbound packet; `Some` ends the connection.
    async fn handle(&mut self, p: In) -> Option<End> {
        match p {
            In::Publish(p) => return self.on_publish(p).await,
            In::PubAck(id) => {
                self.inflight.remove(&id);
            }
            In::PubRec(id) => {
                let known = matches!(self.inflight.get(&id), Some(OutState::Rec));
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
                self.inflight.remove(&id);
            }
            In::Subscribe {
                pkid,
                sub_id,
                filters,
            } => {
                if !self.on_subscribe(pkid, sub_id, filters).await {
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
            In::Disconnect { with_will } => return Some(End::Clean { with_will }),
            In::Unexpected(what) => {
                self.disconnect(rc::PROTOCOL_ERROR, &format!("protocol error: {what}"))
                    .await;
                return Some(End::Abnormal);
            }
        }
        None
    }

    async fn on_publish(&mut self, mut p: PublishIn) -> Option<End> {
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
        let (Some(id), true) = (p.pkid, p.qos > 0) else {
            // QoS 0: fire and forget, fanned out in memory unless configured durable.
            if let Err(e) = publish_to_hub(&self.broker, &self.ctx, &self.client_id, p).await {
                tracing::debug!(error = %e, "MQTT QoS 0 publish dropped");
            }
            return None;
        };
        if p.qos == 2 && self.awaiting_rel.contains(&id) {
            // A retransmission of a QoS 2 message already accepted: acknowledge again,
            // never publish twice (exactly once).
            return (!self.send_ack(Ack::Pubrec, id, None).await).then_some(End::Abnormal);
        }
        if self.pending.len() >= self.broker.cfg.receive_max as usize && self.ver == Ver::V5 {
            self.disconnect(rc::QUOTA, "receive maximum exceeded").await;
            return Some(End::Abnormal);
        }
        let kind = if p.qos == 1 { Ack::Puback } else { Ack::Pubrec };
        if p.qos == 2 {
            self.awaiting_rel.insert(id);
        }
        let broker = self.broker.clone();
        let (ctx, client) = (self.ctx.clone(), self.client_id.clone());
        self.pending.push_back(
            async move {
                let r = publish_to_hub(&broker, &ctx, &client, p).await;
                (kind, id, r)
            }
            .boxed(),
        );
        None
    }

    async fn on_subscribe(
        &mut self,
        pkid: u16,
        sub_id: Option<u32>,
        filters: Vec<(String, SubOpts)>,
    ) -> bool {
        let mut codes = Vec::with_capacity(filters.len());
        let mut retained = Vec::new();
        for (text, mut opts) in filters {
            opts.qos = opts.qos.min(2);
            // `$share/{group}/{filter}`: competing consumers, a Hub group.
            let (group, filter_text) = match text.strip_prefix("$share/") {
                Some(rest) => match rest.split_once('/') {
                    Some((g, f)) if !g.is_empty() && !g.contains(['+', '#']) => {
                        (Some(format!("mqtt-share:{g}")), f.to_string())
                    }
                    _ => {
                        codes.push(if self.ver == Ver::V5 {
                            rc::FILTER_INVALID
                        } else {
                            0x80
                        });
                        continue;
                    }
                },
                None => (None, text.clone()),
            };
            let Ok(filter) = TopicFilter::new(&filter_text) else {
                codes.push(if self.ver == Ver::V5 {
                    rc::FILTER_INVALID
                } else {
                    0x80
                });
                continue;
            };
            let is_new = !self.subs.contains_key(&text);
            if let Some(old) = self.subs.remove(&text) {
                old.task.abort();
            }
            let req = SubscribeRequest {
                filters: vec![filter.clone()],
                group: group.clone(),
                overflow: Overflow::Notify,
                ..SubscribeRequest::default()
            };
            match self.broker.hub.subscribe(&self.ctx, req).await {
                Ok(sub) => {
                    let task = tokio::spawn(forward(
                        sub,
                        opts,
                        sub_id,
                        self.client_id.clone(),
                        self.out_tx.clone(),
                    ));
                    self.subs.insert(text, Sub { task });
                    codes.push(opts.qos);
                    let send_retained = group.is_none()
                        && (opts.retain_handling == 0 || (opts.retain_handling == 1 && is_new));
                    if send_retained {
                        for (topic, r) in self.broker.retained_for(&filter) {
                            retained.push(Outgoing {
                                topic,
                                payload: r.payload,
                                qos: r.qos.min(opts.qos),
                                retain: true,
                                props: r.props,
                                sub_ids: sub_id.into_iter().collect(),
                            });
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "MQTT subscribe refused by the hub");
                    codes.push(if self.ver == Ver::V5 {
                        rc::UNSPECIFIED
                    } else {
                        0x80
                    });
                }
            }
        }
        let Some(ack) = wire::suback(self.ver, pkid, &codes) else {
            return true;
        };
        if !self.send(ack).await {
            return false;
        }
        for r in retained {
            if !self.deliver(r).await {
                return false;
            }
        }
        true
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
