//! `exchange.*` and `queue.*`: declaring, binding and deleting the topology.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, basic, exchange, queue};

use super::{Channel, Ctx, internal, locked, not_found, reserved};
use crate::error::Code;
use crate::props::short;
use polyport_broker::Exchange;
use polyport_broker::Kind;
use polyport_broker::NewQueue;
use polyport_broker::arguments::{ArgumentError, queue_arguments};
use polyport_broker::{Binding, Queue};

impl Channel {
    /// On the cluster engine, what a method names is read from the store before it is
    /// handled, so it sees what clients did through other nodes (see
    /// `polyport_broker`'s `topology.rs`).
    pub(super) async fn learn(cx: &Ctx<'_>, m: &AMQPClass) -> Result<(), (Code, String)> {
        let (queue, exchanges): (Option<&str>, [Option<&str>; 2]) = match m {
            AMQPClass::Exchange(exchange::AMQPMethod::Declare(d)) => {
                (None, [Some(d.exchange.as_str()), None])
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Delete(d)) => {
                (None, [Some(d.exchange.as_str()), None])
            }
            AMQPClass::Exchange(exchange::AMQPMethod::Bind(d)) => (
                None,
                [Some(d.source.as_str()), Some(d.destination.as_str())],
            ),
            AMQPClass::Exchange(exchange::AMQPMethod::Unbind(d)) => (
                None,
                [Some(d.source.as_str()), Some(d.destination.as_str())],
            ),
            AMQPClass::Queue(queue::AMQPMethod::Declare(d)) => (Some(d.queue.as_str()), [None; 2]),
            AMQPClass::Queue(queue::AMQPMethod::Bind(d)) => {
                (Some(d.queue.as_str()), [Some(d.exchange.as_str()), None])
            }
            AMQPClass::Queue(queue::AMQPMethod::Unbind(d)) => {
                (Some(d.queue.as_str()), [Some(d.exchange.as_str()), None])
            }
            AMQPClass::Queue(queue::AMQPMethod::Purge(d)) => (Some(d.queue.as_str()), [None; 2]),
            AMQPClass::Queue(queue::AMQPMethod::Delete(d)) => (Some(d.queue.as_str()), [None; 2]),
            AMQPClass::Basic(basic::AMQPMethod::Consume(c)) => (Some(c.queue.as_str()), [None; 2]),
            AMQPClass::Basic(basic::AMQPMethod::Get(g)) => (Some(g.queue.as_str()), [None; 2]),
            AMQPClass::Basic(basic::AMQPMethod::Publish(p)) => {
                (None, [Some(p.exchange.as_str()), None])
            }
            _ => return Ok(()),
        };
        // Declarations, bindings and consumes read the store (they are rare, and a
        // client expects them to see what it did through another node); the message
        // paths only on a miss.
        let fresh = matches!(
            m,
            AMQPClass::Exchange(_)
                | AMQPClass::Queue(_)
                | AMQPClass::Basic(basic::AMQPMethod::Consume(_))
        );
        let b = cx.broker;
        for x in exchanges.into_iter().flatten() {
            if fresh {
                b.fresh_exchange(x).await.map_err(internal)?;
            } else if !b.has_exchange(x) {
                b.find_exchange(x).await.map_err(internal)?;
            }
        }
        match queue.filter(|q| !q.is_empty()) {
            Some(q) if fresh => {
                b.fresh_queue(q).await.map_err(internal)?;
            }
            Some(q) if b.queue(q).is_none() => {
                b.find_queue(q).await.map_err(internal)?;
            }
            _ => {}
        }
        Ok(())
    }

    pub(super) async fn exchange(
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
                                sources: Vec::new(),
                            };
                            b.declare_exchange(name, x).await.map_err(internal)?;
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
                if d.if_unused && b.in_use(name) {
                    return Err((
                        Code::PreconditionFailed,
                        format!("PRECONDITION_FAILED - exchange '{name}' in vhost '/' in use"),
                    ));
                }
                b.delete_exchange(name).await.map_err(internal)?;
                if !d.nowait {
                    cx.send(AMQPClass::Exchange(exchange::AMQPMethod::DeleteOk(
                        exchange::DeleteOk {},
                    )));
                }
                Ok(())
            }
            exchange::AMQPMethod::Bind(d) => {
                let (dst, src) = (d.destination.as_str(), d.source.as_str());
                Self::bindable(cx, dst, src)?;
                if let Some(x) = b.exchange(src)
                    && let Some(f) = polyport_broker::naming::binding_filter(
                        src,
                        x.kind(),
                        d.routing_key.as_str(),
                    )
                {
                    b.hub
                        .authorize_route(cx.auth, &f)
                        .map_err(|e| (Code::AccessRefused, format!("ACCESS_REFUSED - {e}")))?;
                }
                b.bind_exchange(dst, src, d.routing_key.as_str(), &d.arguments)
                    .await
                    .map_err(internal)?;
                if !d.nowait {
                    cx.send(AMQPClass::Exchange(exchange::AMQPMethod::BindOk(
                        exchange::BindOk {},
                    )));
                }
                Ok(())
            }
            exchange::AMQPMethod::Unbind(d) => {
                let (dst, src) = (d.destination.as_str(), d.source.as_str());
                Self::bindable(cx, dst, src)?;
                b.unbind_exchange(dst, src, d.routing_key.as_str(), &d.arguments)
                    .await
                    .map_err(internal)?;
                if !d.nowait {
                    cx.send(AMQPClass::Exchange(exchange::AMQPMethod::UnbindOk(
                        exchange::UnbindOk {},
                    )));
                }
                Ok(())
            }
            _ => Err((
                Code::CommandInvalid,
                "COMMAND_INVALID - unexpected exchange method".into(),
            )),
        }
    }

    /// Both ends of an exchange-to-exchange binding exist and neither is the default.
    fn bindable(cx: &Ctx<'_>, destination: &str, source: &str) -> Result<(), (Code, String)> {
        if destination.is_empty() || source.is_empty() {
            return Err((
                Code::AccessRefused,
                "ACCESS_REFUSED - operation not permitted on the default exchange".into(),
            ));
        }
        for name in [source, destination] {
            if cx.broker.exchange(name).is_none() {
                return Err(not_found("exchange", name));
            }
        }
        Ok(())
    }

    /// A queue this connection may use.
    pub(super) fn usable(cx: &Ctx<'_>, name: &str) -> Result<Arc<Queue>, (Code, String)> {
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

    pub(super) async fn queue(
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
                        if !d.passive {
                            q.touch(); // redeclaring renews an `x-expires` lease
                        }
                        q
                    }
                    None if d.passive => return Err(not_found("queue", &name)),
                    None => {
                        let args = queue_arguments(&d.arguments).map_err(|e| match e {
                            ArgumentError::Invalid(t) => (Code::PreconditionFailed, t),
                            ArgumentError::Unsupported(t) => (Code::NotImplemented, t),
                        })?;
                        let (q, _) = b
                            .declare_saved_queue(
                                &name,
                                NewQueue {
                                    durable: d.durable,
                                    auto_delete: d.auto_delete,
                                    exclusive: d.exclusive.then_some(cx.conn),
                                    args,
                                },
                            )
                            .await
                            .map_err(internal)?;
                        q
                    }
                };
                if !d.nowait {
                    // A passive declare is how a client asks for the count: taken once what
                    // was published to the queue has arrived, so a count after the confirms
                    // includes those messages, as on RabbitMQ. Not for every declare: the
                    // wait holds the connection's later frames (its acks too).
                    if d.passive {
                        q.settled().await;
                    }
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
                b.hub
                    .authorize_route(cx.auth, binding.filter())
                    .map_err(|e| (Code::AccessRefused, format!("ACCESS_REFUSED - {e}")))?;
                b.bind_queue(&q, binding).await.map_err(internal)?;
                if !d.nowait {
                    cx.send(AMQPClass::Queue(queue::AMQPMethod::BindOk(
                        queue::BindOk {},
                    )));
                }
                Ok(())
            }
            queue::AMQPMethod::Unbind(d) => {
                let q = Self::usable(cx, d.queue.as_str())?;
                b.unbind_queue(&q, d.exchange.as_str(), d.routing_key.as_str())
                    .await
                    .map_err(internal)?;
                cx.send(AMQPClass::Queue(queue::AMQPMethod::UnbindOk(
                    queue::UnbindOk {},
                )));
                Ok(())
            }
            queue::AMQPMethod::Purge(d) => {
                let q = Self::usable(cx, d.queue.as_str())?;
                // What was published before the purge goes with it, also what the
                // queue had not read from the log yet.
                q.settled().await;
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
                        if d.if_empty {
                            q.settled().await;
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
}
