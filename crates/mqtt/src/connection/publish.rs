//! PUBLISH both ways: inbound (aliases, QoS 1/2 flows, acknowledged once durable) and
//! outbound (alias, size and packet id decided by the session's [`Outbound`] window).
//!
//! [`Outbound`]: crate::session::Outbound

use futures::FutureExt;
use polyport_core::hot_metrics::HotCounter;
use polyport_core::{AuthContext, Durability, EventDraft, HubError, PendingPublish, Topic};

use super::{End, Outgoing, Session, Step};
use crate::attrs;
use crate::broker::{Broker, Retained, now_ms};
use crate::error::Reason;
use crate::session::{Admit, Message, Plan};
use crate::wire::{self, Ack, MsgProps, PublishIn, Ver};

impl Session {
    /// Sends one message to the client, or drops it when it is larger than the client
    /// takes (MQTT 5, 3.1.2.11.4) or than our own packet limit (messages from HTTP may
    /// be larger): discarded as if delivered, never a reason to drop the connection —
    /// it would only be redelivered on the next one.
    pub(super) fn deliver(&mut self, mut o: Outgoing) -> bool {
        let seq = o.ack.as_ref().map(|(_, seq)| *seq);
        let ack = o.ack.take();
        let m = Message {
            topic: o.topic.as_str(),
            payload_len: o.payload.len(),
            qos: o.qos,
            sub_ids: &o.sub_ids,
            seq,
        };
        let (plan, ack) = self.out.plan(m, &mut o.props, ack);
        o.ack = ack;
        let (id, elide_topic) = match plan {
            Plan::TooLarge { size, limit } => {
                tracing::warn!(client = %self.client_id, topic = %o.topic, size, limit, "message exceeds the maximum packet size; not delivered to this client");
                metrics::counter!("polyport_mqtt_oversized_dropped_total").increment(1);
                o.settle();
                return true;
            }
            Plan::Send { id, elide_topic } => (id, elide_topic),
        };
        static OUT: HotCounter = HotCounter::new("polyport_mqtt_messages_out_total");
        OUT.increment(1);
        self.broker
            .stats
            .messages_sent
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let topic = if elide_topic { "" } else { o.topic.as_str() };
        if wire::has_no_properties(&o.props, &o.sub_ids) {
            let ver = self.ver;
            self.conn.feed_with(|buf| {
                wire::encode_plain_publish(buf, ver, topic, &o.payload, o.qos, o.retain, o.dup, id);
            });
            return true;
        }
        let p = wire::publish(
            self.ver, topic, o.payload, o.qos, o.retain, o.dup, id, &o.props, &o.sub_ids,
        );
        self.conn.feed(p).is_ok()
    }

    /// Acknowledges a publish the Hub has finished with (or refuses it, on MQTT 5).
    pub(super) fn complete(
        &mut self,
        (kind, id, result): (Ack, u16, Result<(), HubError>),
    ) -> Option<Step> {
        self.inb.stored(kind, id, result.is_ok());
        let ok = match result {
            Ok(()) => self.send_ack(kind, id, None),
            Err(HubError::Unavailable(why)) => {
                // Not this message's fault: the node cannot store anything now. The
                // client is told so and can reconnect, to another node if there is one.
                tracing::warn!(client = %self.client_id, %why, "MQTT publish: the store is unavailable; disconnecting");
                return Some(Step::Refuse(
                    Reason::ServerBusy,
                    format!("the store is unavailable: {why}"),
                ));
            }
            Err(e) => {
                tracing::warn!(client = %self.client_id, error = %e, "MQTT publish refused by the hub");
                if self.ver == Ver::V3 {
                    // 3.1.1 has no negative acknowledgement: close instead.
                    return Some(Step::End(End::Abnormal));
                }
                self.send_ack(kind, id, Some(Reason::from_hub(&e)))
            }
        };
        (!ok).then_some(Step::End(End::Abnormal))
    }

    /// A QoS 0 publish that needs nothing awaited (no rate limit, no retained message,
    /// no alias, no durable QoS 0, a valid topic) goes out here; anything else comes
    /// back for [`Session::on_publish`], which checks and answers it fully.
    pub(super) fn publish_now(&mut self, p: Box<PublishIn>) -> Result<(), Box<PublishIn>> {
        let eligible = p.qos == 0
            && !p.retain
            && self.rate.is_none()
            && !self.broker.cfg.durable_qos0
            && p.props.topic_alias.is_none()
            && (!p.props.payload_is_utf8 || std::str::from_utf8(&p.payload).is_ok())
            && !p.topic.starts_with("$SYS")
            && valid_topic_name(&p.topic);
        if !eligible {
            return Err(p);
        }
        let Ok(topic) = Topic::new(&p.topic) else {
            return Err(p);
        };
        let d = draft(&self.broker, topic, *p);
        if let Err(e) = self.broker.hub.publish_ephemeral(&self.ctx, d) {
            tracing::debug!(error = %e, "MQTT QoS 0 publish dropped");
        }
        Ok(())
    }

    pub(super) async fn on_publish(&mut self, mut p: Box<PublishIn>) -> Option<End> {
        if let Some(bucket) = &self.rate {
            bucket.pace(polyport_core::Origin("mqtt")).await;
        }
        if let Err(r) = self.inb.resolve_alias(p.props.topic_alias, &mut p.topic) {
            self.disconnect(r).await;
            return Some(End::Abnormal);
        }
        let topic = match Topic::new(&p.topic) {
            Ok(t) if valid_topic_name(&p.topic) => t,
            _ => {
                self.disconnect(Reason::TopicInvalid).await;
                return Some(End::Abnormal);
            }
        };
        if p.props.payload_is_utf8 && std::str::from_utf8(&p.payload).is_err() {
            // MQTT 5 (3.3.2.3.2): a payload declared UTF-8 that is not.
            return match (p.pkid, p.qos) {
                (Some(id), 1 | 2) => {
                    let kind = if p.qos == 1 { Ack::Puback } else { Ack::Pubrec };
                    (!self.send_ack(kind, id, Some(Reason::PayloadFormat))).then_some(End::Abnormal)
                }
                _ => None,
            };
        }
        if p.topic.starts_with("$SYS") {
            // The broker's own statistics: clients may read, never write (as Mosquitto).
            tracing::debug!(client = %self.client_id, topic = %p.topic, "PUBLISH to $SYS refused");
            let err = (self.ver == Ver::V5).then_some(Reason::NotAuthorized);
            return match (p.pkid, p.qos) {
                (Some(id), 1) => (!self.send_ack(Ack::Puback, id, err)).then_some(End::Abnormal),
                (Some(id), 2) => {
                    if err.is_none() {
                        self.inb.expect_rel(id);
                    }
                    (!self.send_ack(Ack::Pubrec, id, err)).then_some(End::Abnormal)
                }
                _ => None,
            };
        }
        let (Some(id), true) = (p.pkid, p.qos > 0) else {
            // QoS 0: fire and forget, fanned out in memory unless configured durable.
            if !p.retain && !self.broker.cfg.durable_qos0 {
                // Nothing to store or wait for: no future at all.
                let d = draft(&self.broker, topic, *p);
                if let Err(e) = self.broker.hub.publish_ephemeral(&self.ctx, d) {
                    tracing::debug!(error = %e, "MQTT QoS 0 publish dropped");
                }
                return None;
            }
            // Boxed (as QoS 1/2 publishes are): the connection task would otherwise
            // carry this future's space for its whole life.
            let publish = Box::pin(publish_to_hub(&self.broker, &self.ctx, *p));
            if let Err(e) = publish.await {
                tracing::debug!(error = %e, "MQTT QoS 0 publish dropped");
            }
            return None;
        };
        let kind = match self.inb.admit(p.qos, id) {
            Ok(Admit::Publish(kind)) => kind,
            Ok(Admit::Wait) => return None,
            Ok(Admit::AckAgain(kind)) => {
                return (!self.send_ack(kind, id, None)).then_some(End::Abnormal);
            }
            Err(r) => {
                self.disconnect(r).await;
                return Some(End::Abnormal);
            }
        };
        Box::pin(self.submit(kind, id, p)).await;
        None
    }
}

impl Session {
    /// Queues a QoS 1/2 publish now, in arrival order; it is acknowledged, in order,
    /// once durable. Boxed by its caller: it runs once per message, and its space would
    /// otherwise be carried by every connection.
    async fn submit(&mut self, kind: Ack, id: u16, p: Box<PublishIn>) {
        let submitted = submit_to_hub(&self.broker, &self.ctx, *p).await;
        self.pending.get_or_insert_default().push_back(
            async move {
                let r = match submitted {
                    Ok(published) => published.await.map(|_| ()),
                    Err(e) => Err(e),
                };
                (kind, id, r)
            }
            .boxed(),
        );
    }
}

/// Publishes an MQTT message into the Hub (and the retained store).
pub(super) async fn publish_to_hub(
    broker: &Broker,
    ctx: &AuthContext,
    p: PublishIn,
) -> Result<(), HubError> {
    submit_to_hub(broker, ctx, p).await?.await.map(|_| ())
}

/// Queues an MQTT message for the Hub (storing a retained one first); the result
/// resolves once it is published. Submitted in arrival order, a client's messages keep
/// their order in the log.
pub(super) async fn submit_to_hub(
    broker: &Broker,
    ctx: &AuthContext,
    p: PublishIn,
) -> Result<PendingPublish, HubError> {
    let topic = Topic::new(&p.topic)?;
    if p.retain {
        let expires_at = p
            .props
            .message_expiry
            .map(|s| now_ms() + u64::from(s) * 1000);
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
    let d = draft(broker, topic, p);
    broker.hub.submit_publish(ctx, d).await
}

/// The Hub's draft of an MQTT message (counted as received). The topic name was
/// checked on arrival.
fn draft(broker: &Broker, topic: Topic, p: PublishIn) -> EventDraft {
    let mut d = EventDraft::new(topic, p.payload.clone());
    d.content_type = p.props.content_type.clone().or_else(|| {
        p.props
            .payload_is_utf8
            .then(|| "text/plain; charset=utf-8".into())
    });
    d.attrs = attrs::inbound(&p, chrono::Utc::now);
    d.headers = p.props.user_properties;
    d.durability = if p.qos == 0 && !broker.cfg.durable_qos0 {
        Durability::Ephemeral
    } else {
        Durability::Auto
    };
    static IN: HotCounter = HotCounter::new("polyport_mqtt_messages_in_total");
    IN.increment(1);
    broker
        .stats
        .messages_received
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    d
}

/// MQTT topic-name rules on top of the tree's own: no wildcards, not empty.
fn valid_topic_name(t: &str) -> bool {
    !t.is_empty() && !t.contains(['+', '#', '\0'])
}
