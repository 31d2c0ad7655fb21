//! RabbitMQ's model on the one event model: exchanges, queues and bindings, with no wire
//! format. AMQP 0-9-1 and STOMP are fronts over the same [`Broker`], so a STOMP
//! `/queue/jobs` is the AMQP queue `jobs`, and both see the shared topic tree through
//! `amq.topic`.
//!
//! | concept | file |
//! |---|---|
//! | exchanges, the queue registry, durable topology, exchange-to-exchange bindings | `broker.rs` |
//! | exchange names and routing keys ↔ topics on the tree | `naming.rs` |
//! | a queue: a Hub group over the log, its consumers, acks, TTL, limits, dead letters | `queue/mod.rs` |
//! | how a queue reads the log (its feeder), and when a cluster node reads it at all | `queue/feeder.rs` |
//! | bindings and routing rules (keys, patterns, headers, paths) | `queue/binding.rs` |
//! | how a queue was declared, its saved bindings and limits | `queue/declared.rs` |
//! | `x-*` queue arguments | `arguments.rs` |
//! | the durable topology kept the same on every node of a cluster | `topology.rs` |
//!
//! Queues are Hub subscription groups with acks over the event log (the design's
//! JetStream model: a durable queue is a durable consumer), so nothing is stored twice;
//! per-queue state (ready messages, requeues, TTL, length limits) lives with the group's
//! one member on this node. Header values are AMQP field values (`amq-protocol-types`),
//! since AMQP is the protocol whose typed headers must round-trip exactly.

pub mod arguments;
mod broker;
pub mod naming;
pub mod queue;
mod topology;
pub mod values;

pub use broker::{Broker, BrokerConfig, Exchange, NewQueue};
pub use naming::Kind;
pub use queue::{Binding, Credit, Declared, Message, Out, Queue, Routed};
