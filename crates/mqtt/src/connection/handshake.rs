//! The two ends of a connection: CONNECT (authentication, takeover, session
//! resumption, CONNACK) and the ending (parking or dropping the session, the will).

use crate::session::{Map, Set};
use std::sync::Arc;

use polyport_core::{HubError, Origin};
use rmqtt_codec::version::VersionCodec;
use rmqtt_codec::{MqttCodec, MqttPacket};
use tokio::time::Instant;

use super::publish::publish_to_hub;
use super::{
    Accepted, End, HANDOVER, MAX_REMEMBERED_UNACKED, Session, Transport, max_codec, next_pending,
};
use crate::broker::{Broker, Parked, Watch};
use crate::error::Reason;
use crate::framing::Conn;
use crate::session::{self, Inbound, Outbound};
use crate::state::{self, SavedSession};
use crate::wire::{self, ConnectIn, PublishIn, Ver};

/// Answers the CONNECT of a connection over the listener's caps: MQTT 5 "Quota
/// exceeded" (0x97), 3.1.1 "Server unavailable" (3).
pub(super) async fn refuse(
    stream: Transport,
    broker: &Arc<Broker>,
    why: polyport_core::admission::Refusal,
) {
    let cfg = broker.cfg.clone();
    let mut framed = Conn::new(stream, MqttCodec::Version(VersionCodec));
    let Some((ver, c)) = read_connect(&mut framed, &cfg).await else {
        return;
    };
    tracing::info!(client = %c.client_id, reason = %why, "MQTT CONNECT refused: connection limit");
    let code = if ver == Ver::V3 { 3 } else { 0x97 };
    let _ = framed
        .send(wire::connack(
            ver,
            false,
            Some(code),
            None,
            &server_caps(ver, &c, &cfg),
        ))
        .await;
}

/// Reads CONNECT, authenticates, takes the client id over, resumes or starts the
/// session and answers CONNACK. Without a username and password, the client
/// certificate the TLS listener verified (if any) names the client.
pub(super) async fn accept(
    stream: Transport,
    peer: polyport_core::adapter::Peer,
    broker: &Arc<Broker>,
    door: u32,
) -> Option<Accepted> {
    let cfg = broker.cfg.clone();
    let mut framed = Conn::new(stream, MqttCodec::Version(VersionCodec));
    let (ver, mut c) = read_connect(&mut framed, &cfg).await?;
    let caps = server_caps(ver, &c, &cfg);
    let refuse = |code3: u8, code5: u8| {
        let code = if ver == Ver::V3 { code3 } else { code5 };
        wire::connack(ver, false, Some(code), None, &caps)
    };
    let (client_id, assigned) = match admit(ver, &mut c, &caps, &cfg) {
        Ok(v) => v,
        Err((code3, code5)) => {
            let _ = framed.send(refuse(code3, code5)).await;
            return None;
        }
    };
    let ctx = match broker.hub.authenticate_peer(
        Origin("mqtt"),
        &peer,
        c.username.as_deref(),
        c.password.as_deref(),
    ) {
        Ok(ctx) => ctx,
        Err(e) => {
            tracing::info!(client = %client_id, error = %e, "MQTT CONNECT refused");
            // No credentials at all: "not authorized"; wrong ones: "bad user name or
            // password", as Mosquitto answers.
            let (code3, code5) = match (&c.username, &c.password) {
                (None, None) => (5, 0x87),
                _ => (4, 0x86),
            };
            let _ = framed.send(refuse(code3, code5)).await;
            return None;
        }
    };
    let conn = broker.next_connection();
    // One allocation shared by the session, the broker's registry and the sender stamp.
    let client_id: Arc<str> = client_id.into();
    // The Hub stamps this on every event the client publishes (no-local reads it back).
    let ctx = ctx.with_sender(polyport_core::Sender {
        connection: conn,
        client_id: Some(client_id.clone()),
    });
    let Some(watch) = claim(broker, &client_id, conn, door).await else {
        let _ = framed
            .send(refuse(3, Reason::ServerUnavailable.code()))
            .await;
        return None;
    };
    if broker.shared {
        crate::claims::announce(broker, &client_id);
    }
    let resumed = match resume(broker, &client_id, &c).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(client = %client_id, error = %e, "MQTT session could not be stored");
            let _ = framed
                .send(refuse(3, Reason::ServerUnavailable.code()))
                .await;
            broker.release(&client_id, conn);
            watch.done.fire();
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
        watch.done.fire();
        return None;
    }
    metrics::gauge!("polyport_mqtt_connections").increment(1.0);
    framed.settle();
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
            Set::default(),
            Vec::new(),
            Map::default(),
            Set::default(),
        ),
    };
    let rate = broker.hub.rate_bucket(&ctx, peer.addr.map(|a| a.ip()));
    let s = Session {
        ver,
        broker: broker.clone(),
        conn: framed,
        ctx,
        rate,
        client_id: client_id.clone(),
        saved: Box::new(saved),
        persisted: resumed.persisted,
        subs: Map::default(),
        deliveries: None,
        out: Outbound::new(
            ver,
            c.receive_max,
            c.topic_alias_max,
            c.max_packet_size.min(cfg.max_packet_size),
            sent_before,
            reserved,
        ),
        inb: Inbound::new(ver, cfg.receive_max, cfg.topic_alias_max, awaiting_rel),
        pending: None,
        backlog: None,
    };
    Some(Accepted {
        s,
        watch,

        conn,
        awaiting_comp,
        keep_alive: c.keep_alive,
        will: c.will.map(Box::new),
        will_delay: c.will_delay,
    })
}

/// Registers this connection as the client id's, after the one it takes over (if any)
/// has parked its session and registered its will: resuming without it would silently
/// start an empty session. `None` when the old one did not hand over in time.
async fn claim(
    broker: &Arc<Broker>,
    client_id: &Arc<str>,
    conn: u64,
    door: u32,
) -> Option<Arc<Watch>> {
    let watch = Watch::new(door);
    if let Some(previous) = broker.claim(client_id, conn, watch.clone()) {
        if tokio::time::timeout(HANDOVER, previous.done.fired())
            .await
            .is_err()
        {
            tracing::warn!(client = %client_id, "previous connection did not hand its session over");
            // Stay registered until the old connection has parked, so the client's next
            // attempt still waits for it instead of starting an empty session.
            let (b, id) = (broker.clone(), client_id.to_string());
            tokio::spawn(async move {
                previous.done.fired().await;
                b.release(&id, conn);
                watch.done.fire();
            });
            return None;
        }
        broker.cancel_will(client_id);
    }
    Some(watch)
}

/// The protocol header and CONNECT, each in time: nothing is buffered for a silent
/// socket.
async fn read_connect(framed: &mut Conn, cfg: &crate::MqttConfig) -> Option<(Ver, ConnectIn)> {
    let version = match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok(MqttPacket::Version(v)))) => v,
        Ok(Some(Err(e))) => {
            tracing::debug!(error = %e, "MQTT handshake refused");
            return None;
        }
        _ => return None,
    };
    framed.codec = max_codec(version, cfg.max_packet_size);
    match tokio::time::timeout(cfg.connect_timeout, framed.next()).await {
        Ok(Some(Ok(p))) => wire::connect_in(p).ok(),
        _ => None,
    }
}

/// What CONNACK tells the client. Server keep-alive (MQTT 5): a client asking for none
/// or more than the maximum is told the maximum.
fn server_caps(ver: Ver, c: &ConnectIn, cfg: &crate::MqttConfig) -> wire::ServerCaps {
    let max_ka = cfg.max_keep_alive;
    let over = max_ka > 0 && (c.keep_alive == 0 || c.keep_alive > max_ka);
    wire::ServerCaps {
        receive_max: cfg.receive_max,
        max_packet_size: cfg.max_packet_size,
        topic_alias_max: cfg.topic_alias_max,
        keep_alive_override: (over && ver == Ver::V5).then_some(max_ka),
    }
}

/// The CONNECT rules before authentication: the keep-alive (a 3.1.1 client over the
/// maximum cannot be told, so it is refused as Mosquitto does) and the client id (an
/// empty one is assigned, except for a 3.1.1 persistent session). `Err` carries the
/// 3.1.1 and MQTT 5 return codes.
fn admit(
    ver: Ver,
    c: &mut ConnectIn,
    caps: &wire::ServerCaps,
    cfg: &crate::MqttConfig,
) -> Result<(String, Option<String>), (u8, u8)> {
    const IDENTIFIER_REJECTED: (u8, u8) = (2, 0x85);
    let max_ka = cfg.max_keep_alive;
    if ver == Ver::V3 && max_ka > 0 && (c.keep_alive == 0 || c.keep_alive > max_ka) {
        return Err(IDENTIFIER_REJECTED);
    }
    if let Some(k) = caps.keep_alive_override {
        c.keep_alive = k;
    }
    if c.client_id.is_empty() {
        if ver == Ver::V3 && !c.clean {
            return Err(IDENTIFIER_REJECTED);
        }
        let id = format!("auto-{}", polyport_core::record::new_id());
        return Ok((id.clone(), Some(id)));
    }
    if c.client_id.len() > 256 {
        return Err(IDENTIFIER_REJECTED);
    }
    Ok((c.client_id.clone(), None))
}

/// Ends a connection: parks or drops its session, then publishes the will if due.
pub(super) async fn finish(
    mut s: Session,
    end: End,
    conn: u64,
    watch: Arc<Watch>,
    will: Option<Box<PublishIn>>,
    will_delay: u32,
) {
    let broker = s.broker.clone();
    let client_id = s.client_id.clone();
    // Drop every subscription first, so its Hub subscriptions have left their groups
    // (handing what this connection never acknowledged back) before the session is
    // parked: a reconnect must not join a group its old member still holds, or its
    // first messages would overtake the ones being handed back.
    s.drop_subscriptions();
    // Publishes accepted but not yet acknowledged still complete: dropping one midway
    // could lose a QoS 2 message whose retransmission we would then refuse as a
    // duplicate. One that failed is forgotten, so a retransmission publishes it.
    while let Some((kind, id, result)) = next_pending(&mut s.pending).await {
        s.inb.stored(kind, id, result.is_ok());
    }
    metrics::gauge!("polyport_mqtt_connections").decrement(1.0);
    let expiry = s.saved.expiry;
    // The client came back through another node, which has the session now.
    let elsewhere = watch.kicked() == Some(crate::broker::Kick::Elsewhere);
    if !elsewhere && expiry > 0 {
        let out = s.out.park(MAX_REMEMBERED_UNACKED);
        broker.park(
            &client_id,
            Parked {
                saved: (*s.saved).clone(),
                awaiting_rel: s.inb.take_awaiting_rel(),
                awaiting_comp: out.awaiting_comp,
                unacked: out.unacked,
                reserved_ids: out.reserved,
                since: Instant::now(),
                expiring: None,
            },
        );
    } else if !elsewhere && s.persisted {
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
        let delay = session::will_delay(will_delay, expiry);
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
    watch.done.fire();
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
    let parked = match broker.shared {
        true => stored_session(broker, client_id, parked).await?,
        false => parked,
    };
    let fresh = SavedSession {
        generation: match c.session_expiry {
            0 => String::new(),
            _ => polyport_core::record::new_id(),
        },
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
                    Some(state::encode_session(&p.saved, &broker.holder())),
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
            let value =
                (c.session_expiry > 0).then(|| state::encode_session(&fresh, &broker.holder()));
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

/// On the cluster engine, the session as stored, which another node may have changed
/// since this one parked it: this node's parked copy (with its packet ids in flight) is
/// used only while the store still names this node its holder.
async fn stored_session(
    broker: &Broker,
    client_id: &str,
    parked: Option<Parked>,
) -> Result<Option<Parked>, HubError> {
    let Some(bytes) = broker
        .hub
        .get_state(&broker.ctx, state::SESSIONS, client_id)
        .await?
    else {
        return Ok(None);
    };
    let Some(saved) = state::decode_session(&bytes) else {
        tracing::warn!(client = %client_id, "unreadable stored MQTT session; starting a new one");
        return Ok(None);
    };
    let mine = state::session_holder(&bytes).is_some_and(|h| h == broker.instance);
    Ok(Some(match parked {
        Some(p) if mine && p.saved == saved => p,
        _ => Parked {
            saved,
            awaiting_rel: Default::default(),
            awaiting_comp: Vec::new(),
            unacked: Default::default(),
            reserved_ids: Default::default(),
            since: Instant::now(),
            expiring: None,
        },
    }))
}
