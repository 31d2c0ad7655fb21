//! `exchange.*` and `queue.*`: declaring, binding and deleting the topology.

use std::sync::Arc;

use amq_protocol::protocol::{AMQPClass, exchange, queue};

use super::{Channel, Ctx, internal, locked, not_found, reserved};
use crate::error::Code;
use crate::props::short;
use polyport_broker::Exchange;
use polyport_broker::Kind;
use polyport_broker::arguments::{ArgumentError, queue_arguments};
use polyport_broker::{Binding, Queue};

impl Channel {
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
                            if d.durable {
                                b.save_exchange(name, Some(&x)).await.map_err(internal)?;
                            }
                            b.add_exchange(name, x);
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
                        let (q, created) = b.declare_queue_if_absent(
                            &name,
                            d.durable,
                            d.auto_delete,
                            d.exclusive.then_some(cx.conn),
                            args,
                        );
                        if created {
                            b.save_queue(&name, Some(&q)).await.map_err(internal)?;
                        }
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
                b.hub
                    .authorize_route(cx.auth, binding.filter())
                    .map_err(|e| (Code::AccessRefused, format!("ACCESS_REFUSED - {e}")))?;
                q.bind(binding).await;
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
                q.unbind(d.exchange.as_str(), d.routing_key.as_str()).await;
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
}
