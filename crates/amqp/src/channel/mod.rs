//! One channel: its methods (exchange, queue, basic, confirm), the publish being
//! assembled from method, header and body frames, its consumers and its unacknowledged
//! deliveries. Handlers queue frames into `out`; the connection writes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{AMQPClass, BasicProperties, basic, channel as chan, confirm, tx};
use polyport_core::{EventDraft, HubError};

use crate::error::{Closing, Code};
use crate::props::{self, short};
use polyport_broker::Broker;
use polyport_broker::Kind;
use polyport_broker::{Credit, Message, Out, Queue};

/// A publish waiting for its header and body.
pub(crate) struct Content {
    pub(crate) method: basic::Publish,
    pub(crate) kind: Kind,
    pub(crate) properties: Option<BasicProperties>,
    pub(crate) size: u64,
    pub(crate) body: Vec<u8>,
}

/// A publish ready for the Hub.
pub(crate) struct Ready {
    /// `None` when the routing key names no topic (an empty key on `amq.topic`).
    pub(crate) draft: Option<EventDraft>,
    /// The confirm delivery tag, in confirm mode.
    pub(crate) confirm: Option<u64>,
    pub(crate) method: basic::Publish,
    pub(crate) properties: BasicProperties,
    pub(crate) body: bytes::Bytes,
}

struct Unacked {
    queue: Arc<Queue>,
    message: Message,
    credit: Option<Arc<Credit>>,
}

struct ConsumerRef {
    queue: Arc<Queue>,
}

#[derive(Default)]
pub(crate) struct Channel {
    /// We sent `channel.close` and wait for `close-ok`: everything else is dropped.
    pub(crate) closing: bool,
    pub(crate) content: Option<Content>,
    next_tag: u64,
    unacked: BTreeMap<u64, Unacked>,
    consumers: HashMap<String, ConsumerRef>,
    prefetch: u16,
    global: Option<Arc<Credit>>,
    confirm: bool,
    published: u64,
    /// In transaction mode (`tx.select`): what waits for `tx.commit`.
    pub(crate) tx: Option<Tx>,
}

/// A transaction's publishes and acknowledgements, applied at commit, dropped at
/// rollback.
#[derive(Default)]
pub(crate) struct Tx {
    pub(crate) publishes: Vec<Ready>,
    acks: Vec<basic::AMQPMethod>,
}

/// What a channel method needs from its connection.
pub(crate) struct Ctx<'a> {
    pub(crate) broker: &'a Arc<Broker>,
    pub(crate) conn: u64,
    pub(crate) id: u16,
    pub(crate) out: &'a mut Vec<AMQPFrame>,
    pub(crate) deliveries: &'a tokio::sync::mpsc::Sender<Out>,
    pub(crate) frame_max: usize,
    /// Who the connection is, for what the channel routes on its behalf.
    pub(crate) auth: &'a polyport_core::AuthContext,
}

impl Ctx<'_> {
    fn send(&mut self, m: AMQPClass) {
        self.out.push(AMQPFrame::Method(self.id, m));
    }

    /// A method followed by a message's header and body frames, split by `frame_max`.
    pub(crate) fn send_content(&mut self, m: AMQPClass, props: BasicProperties, body: &[u8]) {
        self.send(m);
        self.out.push(AMQPFrame::Header(
            self.id,
            AMQPContentHeader {
                class_id: 60,
                body_size: body.len() as u64,
                properties: props,
            },
        ));
        let chunk = self.frame_max.saturating_sub(8).max(1);
        for part in body.chunks(chunk) {
            self.out.push(AMQPFrame::Body(self.id, part.to_vec()));
        }
    }
}

fn channel_error(code: Code, text: String, m: &AMQPClass) -> Closing {
    Closing::Channel {
        code,
        text,
        class_id: m.get_amqp_class_id(),
        method_id: m.get_amqp_method_id(),
    }
}

mod topology;

impl Channel {
    /// Handles one method; `Ok(Some(ready))` when a publish is complete.
    pub(crate) async fn method(&mut self, cx: &mut Ctx<'_>, m: AMQPClass) -> Result<(), Closing> {
        let fail = |code, text: String| channel_error(code, text, &m);
        Self::learn(cx, &m).await.map_err(|(c, t)| fail(c, t))?;
        match &m {
            AMQPClass::Exchange(x) => self.exchange(cx, x).await.map_err(|(c, t)| fail(c, t)),
            AMQPClass::Queue(q) => self.queue(cx, q).await.map_err(|(c, t)| fail(c, t)),
            AMQPClass::Basic(b) => self.basic(cx, b).await.map_err(|(c, t)| fail(c, t)),
            AMQPClass::Confirm(confirm::AMQPMethod::Select(s)) => {
                if self.tx.is_some() {
                    return Err(fail(
                        Code::PreconditionFailed,
                        "PRECONDITION_FAILED - cannot switch from tx to confirm mode".into(),
                    ));
                }
                self.confirm = true;
                if !s.nowait {
                    cx.send(AMQPClass::Confirm(confirm::AMQPMethod::SelectOk(
                        confirm::SelectOk {},
                    )));
                }
                Ok(())
            }
            AMQPClass::Channel(chan::AMQPMethod::Flow(f)) => {
                cx.send(AMQPClass::Channel(chan::AMQPMethod::FlowOk(chan::FlowOk {
                    active: f.active,
                })));
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Select(_)) => {
                if self.confirm {
                    return Err(fail(
                        Code::PreconditionFailed,
                        "PRECONDITION_FAILED - cannot switch from confirm to tx mode".into(),
                    ));
                }
                self.tx.get_or_insert_default();
                cx.send(AMQPClass::Tx(tx::AMQPMethod::SelectOk(tx::SelectOk {})));
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Rollback(_)) => {
                let Some(t) = &mut self.tx else {
                    return Err(fail(
                        Code::PreconditionFailed,
                        "PRECONDITION_FAILED - channel is not transactional".into(),
                    ));
                };
                *t = Tx::default();
                cx.send(AMQPClass::Tx(tx::AMQPMethod::RollbackOk(tx::RollbackOk {})));
                Ok(())
            }
            AMQPClass::Tx(tx::AMQPMethod::Commit(_)) => {
                let Some(t) = &mut self.tx else {
                    return Err(fail(
                        Code::PreconditionFailed,
                        "PRECONDITION_FAILED - channel is not transactional".into(),
                    ));
                };
                let acks = std::mem::take(&mut t.acks);
                for a in &acks {
                    self.acknowledge(a).map_err(|(c, t)| fail(c, t))?;
                }
                // The publishes go out through the connection, which answers
                // `commit-ok` once they are published.
                Ok(())
            }
            _ => Err(Closing::Connection {
                code: Code::CommandInvalid,
                text: format!("COMMAND_INVALID - unexpected method on channel {}", cx.id),
                class_id: m.get_amqp_class_id(),
                method_id: m.get_amqp_method_id(),
            }),
        }
    }

    async fn basic(
        &mut self,
        cx: &mut Ctx<'_>,
        m: &basic::AMQPMethod,
    ) -> Result<(), (Code, String)> {
        match m {
            basic::AMQPMethod::Publish(p) => {
                let x = p.exchange.as_str();
                let Some(exchange) = cx.broker.exchange(x) else {
                    return Err(not_found("exchange", x));
                };
                if exchange.internal {
                    return Err((
                        Code::AccessRefused,
                        format!(
                            "ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'"
                        ),
                    ));
                }
                self.content = Some(Content {
                    kind: exchange.kind(),
                    method: p.clone(),
                    properties: None,
                    size: 0,
                    body: Vec::new(),
                });
                Ok(())
            }
            basic::AMQPMethod::Qos(q) => {
                self.prefetch = q.prefetch_count;
                self.global = q.global.then(|| Credit::new(usize::from(q.prefetch_count)));
                cx.send(AMQPClass::Basic(basic::AMQPMethod::QosOk(basic::QosOk {})));
                Ok(())
            }
            basic::AMQPMethod::Consume(c) => self.consume(cx, c).await,
            basic::AMQPMethod::Cancel(c) => {
                let tag = c.consumer_tag.as_str();
                if let Some(r) = self.consumers.remove(tag)
                    && r.queue.cancel(cx.conn, cx.id, tag)
                {
                    let name = r.queue.name();
                    cx.broker.delete_queue(&name).await.map_err(internal)?;
                }
                if !c.nowait {
                    cx.send(AMQPClass::Basic(basic::AMQPMethod::CancelOk(
                        basic::CancelOk {
                            consumer_tag: c.consumer_tag.clone(),
                        },
                    )));
                }
                Ok(())
            }
            basic::AMQPMethod::Get(g) => {
                let q = Self::usable(cx, g.queue.as_str())?;
                q.settled().await;
                match q.get() {
                    None => cx.send(AMQPClass::Basic(basic::AMQPMethod::GetEmpty(
                        basic::GetEmpty {},
                    ))),
                    Some((message, left)) => {
                        let tag = self.tag();
                        let method = AMQPClass::Basic(basic::AMQPMethod::GetOk(basic::GetOk {
                            delivery_tag: tag,
                            redelivered: message.redelivered,
                            exchange: short(&message.exchange),
                            routing_key: short(&message.routing_key),
                            message_count: left,
                        }));
                        self.send_message(cx, method, &message);
                        if g.no_ack {
                            message.settle();
                        } else {
                            self.unacked.insert(
                                tag,
                                Unacked {
                                    queue: q,
                                    message,
                                    credit: None,
                                },
                            );
                        }
                    }
                }
                Ok(())
            }
            basic::AMQPMethod::Ack(_)
            | basic::AMQPMethod::Nack(_)
            | basic::AMQPMethod::Reject(_) => match &mut self.tx {
                Some(t) => {
                    let (tag, multiple) = match m {
                        basic::AMQPMethod::Ack(a) => (a.delivery_tag, a.multiple),
                        basic::AMQPMethod::Nack(n) => (n.delivery_tag, n.multiple),
                        basic::AMQPMethod::Reject(r) => (r.delivery_tag, false),
                        _ => (0, true),
                    };
                    if !multiple && !self.unacked.contains_key(&tag) {
                        return Err(unknown_tag(tag));
                    }
                    t.acks.push(m.clone());
                    Ok(())
                }
                None => self.acknowledge(m),
            },
            basic::AMQPMethod::Recover(r) => {
                self.recover(r.requeue);
                cx.send(AMQPClass::Basic(basic::AMQPMethod::RecoverOk(
                    basic::RecoverOk {},
                )));
                Ok(())
            }
            basic::AMQPMethod::RecoverAsync(r) => {
                self.recover(r.requeue);
                Ok(())
            }
            _ => Err((
                Code::CommandInvalid,
                "COMMAND_INVALID - unexpected basic method".into(),
            )),
        }
    }

    /// `basic.ack`, `nack` or `reject`, applied now.
    fn acknowledge(&mut self, m: &basic::AMQPMethod) -> Result<(), (Code, String)> {
        match m {
            basic::AMQPMethod::Ack(a) => {
                for u in self.take(a.delivery_tag, a.multiple)? {
                    u.message.settle();
                    if let Some(c) = &u.credit {
                        c.release();
                    }
                    u.queue.dispatch();
                }
            }
            basic::AMQPMethod::Nack(n) => {
                let taken = self.take(n.delivery_tag, n.multiple)?;
                self.settle_or_requeue(taken, n.requeue);
            }
            basic::AMQPMethod::Reject(r) => {
                let taken = self.take(r.delivery_tag, false)?;
                self.settle_or_requeue(taken, r.requeue);
            }
            _ => {}
        }
        Ok(())
    }

    async fn consume(
        &mut self,
        cx: &mut Ctx<'_>,
        c: &basic::Consume,
    ) -> Result<(), (Code, String)> {
        let q = Self::usable(cx, c.queue.as_str())?;
        q.settled().await;
        let tag = match c.consumer_tag.as_str() {
            "" => format!("amq.ctag-{}", polyport_core::record::new_id()),
            t => t.to_string(),
        };
        if self.consumers.contains_key(&tag) {
            return Err((
                Code::NotAllowed,
                format!("NOT_ALLOWED - attempt to reuse consumer tag '{tag}'"),
            ));
        }
        if c.exclusive && q.consumer_count() > 0 {
            return Err(locked(&q.name()));
        }
        if !c.nowait {
            cx.send(AMQPClass::Basic(basic::AMQPMethod::ConsumeOk(
                basic::ConsumeOk {
                    consumer_tag: short(&tag),
                },
            )));
        }
        let credit = match &self.global {
            Some(g) => g.clone(),
            None => Credit::new(usize::from(self.prefetch)),
        };
        self.consumers
            .insert(tag.clone(), ConsumerRef { queue: q.clone() });
        q.consume(
            &tag,
            cx.id,
            cx.conn,
            c.no_ack,
            credit,
            cx.deliveries.clone(),
        );
        Ok(())
    }

    fn tag(&mut self) -> u64 {
        self.next_tag += 1;
        self.next_tag
    }

    fn send_message(&mut self, cx: &mut Ctx<'_>, method: AMQPClass, m: &Message) {
        let props = props::outbound(&m.event, chrono::Utc::now()).unwrap_or_default();
        cx.send_content(method, props, &m.event.payload);
    }

    /// A delivery from one of this channel's consumers.
    pub(crate) fn deliver(
        &mut self,
        cx: &mut Ctx<'_>,
        consumer_tag: String,
        no_ack: bool,
        queue: Arc<Queue>,
        message: Message,
        credit: Arc<Credit>,
    ) {
        if self.closing || !self.consumers.contains_key(&consumer_tag) {
            // Cancelled meanwhile: back to the queue.
            if !no_ack {
                credit.release();
                queue.requeue(vec![message]);
            }
            return;
        }
        let Some(props) = props::outbound(&message.event, chrono::Utc::now()) else {
            // Expired while queued (per-message `expiration`).
            message.settle();
            if !no_ack {
                credit.release();
            }
            queue.dispatch();
            return;
        };
        let tag = self.tag();
        let method = AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: short(&consumer_tag),
            delivery_tag: tag,
            redelivered: message.redelivered,
            exchange: short(&message.exchange),
            routing_key: short(&message.routing_key),
        }));
        cx.send_content(method, props, &message.event.payload);
        if !no_ack {
            self.unacked.insert(
                tag,
                Unacked {
                    queue,
                    message,
                    credit: Some(credit),
                },
            );
        }
    }

    /// A consumer the server cancelled (its queue was deleted).
    pub(crate) fn cancelled(&mut self, cx: &mut Ctx<'_>, consumer_tag: &str) {
        if self.consumers.remove(consumer_tag).is_some() && !self.closing {
            cx.send(AMQPClass::Basic(basic::AMQPMethod::Cancel(basic::Cancel {
                consumer_tag: short(consumer_tag),
                nowait: true,
            })));
        }
    }

    fn take(&mut self, tag: u64, multiple: bool) -> Result<Vec<Unacked>, (Code, String)> {
        if multiple {
            let keep = if tag == 0 {
                BTreeMap::new()
            } else {
                self.unacked.split_off(&(tag + 1))
            };
            let taken = std::mem::replace(&mut self.unacked, keep);
            return Ok(taken.into_values().collect());
        }
        self.unacked
            .remove(&tag)
            .map(|u| vec![u])
            .ok_or_else(|| unknown_tag(tag))
    }

    fn settle_or_requeue(&mut self, taken: Vec<Unacked>, requeue: bool) {
        let mut by_queue: Vec<(Arc<Queue>, Vec<Message>)> = Vec::new();
        for u in taken {
            if let Some(c) = &u.credit {
                c.release();
            }
            if !requeue {
                u.queue.dead_letter(u.message, "rejected");
                u.queue.dispatch();
                continue;
            }
            match by_queue.iter_mut().find(|(q, _)| Arc::ptr_eq(q, &u.queue)) {
                Some((_, v)) => v.push(u.message),
                None => by_queue.push((u.queue, vec![u.message])),
            }
        }
        for (q, msgs) in by_queue {
            q.requeue(msgs);
        }
    }

    fn recover(&mut self, _requeue: bool) {
        // Redelivery to the same consumer is not tracked: both forms requeue.
        let all = std::mem::take(&mut self.unacked).into_values().collect();
        self.settle_or_requeue(all, true);
    }

    /// The channel ends: unacknowledged messages go back, consumers leave (an
    /// auto-delete queue left without any is deleted).
    pub(crate) async fn close(&mut self, broker: &Broker, conn: u64, id: u16) {
        self.recover(true);
        for (tag, r) in std::mem::take(&mut self.consumers) {
            if r.queue.cancel(conn, id, &tag)
                && let Err(e) = broker.delete_queue(&r.queue.name()).await
            {
                tracing::warn!(error = %e, "deleting an auto-delete AMQP queue failed");
            }
        }
    }

    /// Adds a body frame to the publish being assembled; `Some` once it is whole.
    pub(crate) fn body(&mut self, data: Vec<u8>) -> Result<Option<Ready>, Closing> {
        let Some(c) = &mut self.content else {
            return Err(unexpected_frame("a body frame without a publish"));
        };
        if c.properties.is_none() {
            return Err(unexpected_frame("a body frame before the content header"));
        }
        c.body.extend_from_slice(&data);
        if c.body.len() as u64 > c.size {
            return Err(unexpected_frame(
                "more body than the content header announced",
            ));
        }
        Ok(self.complete())
    }

    /// The content header of the publish being assembled.
    pub(crate) fn header(
        &mut self,
        h: AMQPContentHeader,
        max_message: usize,
    ) -> Result<Option<Ready>, Closing> {
        let Some(c) = &mut self.content else {
            return Err(unexpected_frame("a content header without a publish"));
        };
        if c.properties.is_some() {
            return Err(unexpected_frame("a second content header"));
        }
        if h.body_size > max_message as u64 {
            return Err(Closing::Connection {
                code: Code::FrameError,
                text: format!(
                    "FRAME_ERROR - message of {} bytes exceeds the maximum of {max_message}",
                    h.body_size
                ),
                class_id: 60,
                method_id: 40,
            });
        }
        c.size = h.body_size;
        c.body.reserve(h.body_size as usize);
        c.properties = Some(h.properties);
        Ok(self.complete())
    }

    fn complete(&mut self) -> Option<Ready> {
        let done = self
            .content
            .as_ref()
            .is_some_and(|c| c.properties.is_some() && c.body.len() as u64 == c.size);
        if !done {
            return None;
        }
        let c = self.content.take()?;
        let confirm = self.confirm.then(|| {
            self.published += 1;
            self.published
        });
        let body = bytes::Bytes::from(c.body);
        let properties = c.properties.unwrap_or_default();
        let draft = polyport_broker::naming::publish_topic(
            c.method.exchange.as_str(),
            c.kind,
            c.method.routing_key.as_str(),
        )
        .map(|topic| {
            let mut draft = EventDraft::new(topic, body.clone());
            props::inbound(&properties, &mut draft, chrono::Utc::now());
            draft
        });
        Some(Ready {
            draft,
            confirm,
            method: c.method,
            properties,
            body,
        })
    }

    /// Consumers open on this channel.
    pub(crate) fn consumer_count(&self) -> usize {
        self.consumers.len()
    }

    pub(crate) fn pending_publish(&self) -> Option<&basic::Publish> {
        self.content.as_ref().map(|c| &c.method)
    }
}

fn unexpected_frame(what: &str) -> Closing {
    Closing::Connection {
        code: Code::UnexpectedFrame,
        text: format!("UNEXPECTED_FRAME - {what}"),
        class_id: 60,
        method_id: 40,
    }
}

fn unknown_tag(tag: u64) -> (Code, String) {
    (
        Code::PreconditionFailed,
        format!("PRECONDITION_FAILED - unknown delivery tag {tag}"),
    )
}

fn not_found(what: &str, name: &str) -> (Code, String) {
    (
        Code::NotFound,
        format!("NOT_FOUND - no {what} '{name}' in vhost '/'"),
    )
}

fn reserved(what: &str, name: &str) -> (Code, String) {
    (
        Code::AccessRefused,
        format!("ACCESS_REFUSED - {what} name '{name}' contains reserved prefix 'amq.*'"),
    )
}

fn locked(name: &str) -> (Code, String) {
    (
        Code::ResourceLocked,
        format!(
            "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{name}' in vhost '/'"
        ),
    )
}

fn internal(e: HubError) -> (Code, String) {
    (Code::InternalError, format!("INTERNAL_ERROR - {e}"))
}
