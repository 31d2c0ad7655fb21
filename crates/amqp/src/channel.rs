//! One channel: its methods (exchange, queue, basic, confirm), the publish being
//! assembled from method, header and body frames, its consumers and its unacknowledged
//! deliveries. Handlers queue frames into `out`; the connection writes them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use amq_protocol::frame::{AMQPContentHeader, AMQPFrame};
use amq_protocol::protocol::{
    AMQPClass, BasicProperties, basic, channel as chan, confirm, exchange, queue, tx,
};
use polyport_core::{EventDraft, HubError};

use crate::broker::{Broker, Exchange};
use crate::error::{Closing, Code};
use crate::naming::Kind;
use crate::props::{self, short};
use crate::queue::{Binding, Credit, Declared, Message, Out, Queue};

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

impl Channel {
    /// Handles one method; `Ok(Some(ready))` when a publish is complete.
    pub(crate) async fn method(&mut self, cx: &mut Ctx<'_>, m: AMQPClass) -> Result<(), Closing> {
        let fail = |code, text: String| channel_error(code, text, &m);
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

    async fn exchange(
        &mut self,
        cx: &mut Ctx<'_>,
        m: &exchange::AMQPMethod,
    ) -> Result<(), (Code, String)> {
        let b = cx.broker;
        match m {
            exchange::AMQPMethod::Declare(d) => {
                let name = d.exchange.as_str();
                let current = b.exchange(name);
                if d.passive {
                    if current.is_none() {
                        return Err(not_found("exchange", name));
                    }
                } else {
                    let kind = Kind::parse(d.kind.as_str()).ok_or_else(|| {
                        (
                            Code::CommandInvalid,
                            format!("COMMAND_INVALID - invalid exchange type '{}'", d.kind),
                        )
                    })?;
                    match current {
                        Some(x) if x.kind != kind.as_str() => {
                            return Err((
                                Code::PreconditionFailed,
                                format!(
                                    "PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{name}' in vhost '/': received '{}' but current is '{}'",
                                    kind.as_str(),
                                    x.kind
                                ),
                            ));
                        }
                        Some(_) => {}
                        None => {
                            if name.starts_with("amq.") {
                                return Err(reserved("exchange", name));
                            }
                            let x = Exchange {
                                kind: kind.as_str().into(),
                                durable: d.durable,
                                auto_delete: d.auto_delete,
                                internal: d.internal,
                            };
                            if d.durable {
                                b.save_exchange(name, Some(&x)).await.map_err(internal)?;
                            }
                            b.exchanges.lock().insert(name.to_string(), x);
                        }
                    }
                }
                if !d.nowait {
                    cx.send(AMQPClass::Exchange(exchange::AMQPMethod::DeclareOk(
                        exchange::DeclareOk {},
                    )));
                }
                Ok(())
            }
            exchange::AMQPMethod::Delete(d) => {
                let name = d.exchange.as_str();
                if name.is_empty() || name.starts_with("amq.") {
                    return Err(reserved("exchange", name));
                }
                let queues: Vec<Arc<Queue>> = b.queues.lock().values().cloned().collect();
                if d.if_unused && queues.iter().any(|q| q.bound_to(name)) {
                    return Err((
                        Code::PreconditionFailed,
                        format!("PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"),
                    ));
                }
                if b.exchanges.lock().remove(name).is_some() {
                    b.save_exchange(name, None).await.map_err(internal)?;
                    for q in queues {
                        if q.bound_to(name) {
                            q.forget_exchange(name);
                            b.save_queue(&q.name(), Some(&q)).await.map_err(internal)?;
                        }
                    }
                }
                if !d.nowait {
                    cx.send(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                        exchange::DeleteOk {},
                    )));
                }
                Ok(())
            }
            _ => Err((
                Code::NotImplemented,
                "NOT_IMPLEMENTED - exchange-to-exchange bindings are not supported yet".into(),
            )),
        }
    }

    /// A queue this connection may use.
    fn usable(cx: &Ctx<'_>, name: &str) -> Result<Arc<Queue>, (Code, String)> {
        let q = cx
            .broker
            .queue(name)
            .ok_or_else(|| not_found("queue", name))?;
        let owner = q.declared.lock().exclusive;
        match owner {
            Some(owner) if owner != cx.conn => Err(locked(name)),
            _ => Ok(q),
        }
    }

    async fn queue(
        &mut self,
        cx: &mut Ctx<'_>,
        m: &queue::AMQPMethod,
    ) -> Result<(), (Code, String)> {
        let b = cx.broker;
        match m {
            queue::AMQPMethod::Declare(d) => {
                let mut name = d.queue.as_str().to_string();
                if name.is_empty() {
                    name = format!("amq.gen-{}", polyport_core::record::new_id());
                } else if name.starts_with("amq.") && b.queue(&name).is_none() && !d.passive {
                    return Err(reserved("queue", &name));
                }
                let q = match b.queue(&name) {
                    Some(_) => {
                        let q = Self::usable(cx, &name)?;
                        let durable = q.declared.lock().durable;
                        if !d.passive && durable != d.durable {
                            return Err((
                                Code::PreconditionFailed,
                                format!(
                                    "PRECONDITION_FAILED - inequivalent arg 'durable' for queue '{name}' in vhost '/': received '{}' but current is '{durable}'",
                                    d.durable
                                ),
                            ));
                        }
                        q
                    }
                    None if d.passive => return Err(not_found("queue", &name)),
                    None => {
                        let args = queue_arguments(&d.arguments)?;
                        let declared = Declared {
                            name: name.clone(),
                            durable: d.durable,
                            auto_delete: d.auto_delete,
                            exclusive: d.exclusive.then_some(cx.conn),
                            since: b.hub.log_state().last_seq,
                            bindings: Vec::new(),
                            message_ttl: args.message_ttl,
                            dead_letter: args.dead_letter,
                            limits: args.limits,
                        };
                        let q = b.create_queue(declared);
                        b.save_queue(&name, Some(&q)).await.map_err(internal)?;
                        q
                    }
                };
                if !d.nowait {
                    cx.send(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(
                        queue::DeclareOk {
                            queue: short(&name),
                            message_count: q.message_count(),
                            consumer_count: q.consumer_count(),
                        },
                    )));
                }
                Ok(())
            }
            queue::AMQPMethod::Bind(d) => {
                let q = Self::usable(cx, d.queue.as_str())?;
                let xname = d.exchange.as_str();
                let x = b
                    .exchange(xname)
                    .ok_or_else(|| not_found("exchange", xname))?;
                if xname.is_empty() {
                    return Err((
                        Code::AccessRefused,
                        "ACCESS_REFUSED - operation not permitted on the default exchange".into(),
                    ));
                }
                let binding =
                    Binding::new(xname, x.kind(), d.routing_key.as_str(), d.arguments.clone())
                        .ok_or_else(|| {
                            (
                                Code::PreconditionFailed,
                                format!(
                                    "PRECONDITION_FAILED - invalid routing key '{}'",
                                    d.routing_key
                                ),
                            )
                        })?;
                q.bind(binding);
                b.save_queue(&q.name(), Some(&q)).await.map_err(internal)?;
                if !d.nowait {
                    cx.send(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                        queue::BindOk {},
                    )));
                }
                Ok(())
            }
            queue::AMQPMethod::Unbind(d) => {
                let q = Self::usable(cx, d.queue.as_str())?;
                q.unbind(d.exchange.as_str(), d.routing_key.as_str());
                b.save_queue(&q.name(), Some(&q)).await.map_err(internal)?;
                cx.send(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                    queue::UnbindOk {},
                )));
                Ok(())
            }
            queue::AMQPMethod::Purge(d) => {
                let q = Self::usable(cx, d.queue.as_str())?;
                let n = q.purge();
                if !d.nowait {
                    cx.send(AMQPClass::Queue(queue::AMQPMethod::PurgeOk(
                        queue::PurgeOk { message_count: n },
                    )));
                }
                Ok(())
            }
            queue::AMQPMethod::Delete(d) => {
                let name = d.queue.as_str();
                let n = match b.queue(name) {
                    None => 0,
                    Some(q) => {
                        Self::usable(cx, name)?;
                        if d.if_unused && q.consumer_count() > 0 {
                            return Err((
                                Code::PreconditionFailed,
                                format!("PRECONDITION_FAILED - queue '{name}' in vhost '/' in use"),
                            ));
                        }
                        if d.if_empty && q.message_count() > 0 {
                            return Err((
                                Code::PreconditionFailed,
                                format!(
                                    "PRECONDITION_FAILED - queue '{name}' in vhost '/' not empty"
                                ),
                            ));
                        }
                        b.delete_queue(name).await.map_err(internal)?
                    }
                };
                if !d.nowait {
                    cx.send(AMQPClass::Queue(queue::AMQPMethod::DeleteOk(
                        queue::DeleteOk { message_count: n },
                    )));
                }
                Ok(())
            }
            _ => Err((
                Code::CommandInvalid,
                "COMMAND_INVALID - unexpected queue method".into(),
            )),
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
        let draft = crate::naming::publish_topic(
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

/// The `x-*` queue arguments Polyport honours: `x-message-ttl`, `x-dead-letter-exchange`
/// and `x-dead-letter-routing-key`, `x-max-length`, `x-max-length-bytes`, `x-overflow`; `x-queue-type` `classic` / `quorum` and `x-expires`
/// are accepted (queues are always log-backed, and unused queues are not expired yet).
/// Any other is refused rather than silently ignored.
fn queue_arguments(args: &amq_protocol::types::FieldTable) -> Result<QueueArgs, (Code, String)> {
    use amq_protocol::types::AMQPValue as V;
    let mut out = QueueArgs::default();
    let mut dlx: Option<String> = None;
    let mut dlk: Option<String> = None;
    for (k, v) in args.inner() {
        let int = match v {
            V::ShortShortInt(n) => Some(i64::from(*n)),
            V::ShortShortUInt(n) => Some(i64::from(*n)),
            V::ShortInt(n) => Some(i64::from(*n)),
            V::ShortUInt(n) => Some(i64::from(*n)),
            V::LongInt(n) => Some(i64::from(*n)),
            V::LongUInt(n) => Some(i64::from(*n)),
            V::LongLongInt(n) => Some(*n),
            _ => None,
        };
        match (k.as_str(), int) {
            ("x-message-ttl", Some(n)) if n >= 0 => out.message_ttl = Some(n as u64),
            ("x-dead-letter-exchange", _) => dlx = Some(crate::props::value_text(v)),
            ("x-dead-letter-routing-key", _) => dlk = Some(crate::props::value_text(v)),
            ("x-max-length", Some(n)) if n >= 0 => out.limits.max_length = Some(n as usize),
            ("x-max-length-bytes", Some(n)) if n >= 0 => out.limits.max_bytes = Some(n as usize),
            ("x-overflow", _) => match crate::props::value_text(v).as_str() {
                "drop-head" => out.limits.reject_new = false,
                "reject-publish" | "reject-publish-dlx" => out.limits.reject_new = true,
                other => {
                    return Err((
                        Code::PreconditionFailed,
                        format!("PRECONDITION_FAILED - invalid arg 'x-overflow': '{other}'"),
                    ));
                }
            },
            ("x-expires", Some(n)) if n > 0 => {}
            ("x-queue-type", _) => {
                let kind = crate::props::value_text(v);
                if kind != "classic" && kind != "quorum" {
                    return Err((
                        Code::PreconditionFailed,
                        format!("PRECONDITION_FAILED - invalid arg 'x-queue-type': '{kind}'"),
                    ));
                }
            }
            ("x-message-ttl" | "x-expires" | "x-max-length" | "x-max-length-bytes", _) => {
                return Err((
                    Code::PreconditionFailed,
                    format!(
                        "PRECONDITION_FAILED - invalid arg '{k}': must be a non-negative integer"
                    ),
                ));
            }
            (other, _) => {
                return Err((
                    Code::NotImplemented,
                    format!("NOT_IMPLEMENTED - queue argument '{other}' is not supported yet"),
                ));
            }
        }
    }
    out.dead_letter = dlx.map(|x| (x, dlk));
    Ok(out)
}

/// The queue arguments that change behaviour.
#[derive(Default)]
struct QueueArgs {
    message_ttl: Option<u64>,
    dead_letter: Option<(String, Option<String>)>,
    limits: crate::queue::Limits,
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
