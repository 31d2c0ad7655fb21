//! What all connections share: the exchanges, the queues, and the durable topology in
//! the Hub's adapter state (namespaces `amqp.exchanges`, `amqp.queues`), kept the same
//! on every node of a cluster by `topology.rs`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::Mutex;
use polyport_core::{AuthContext, Hub, HubError, Origin};
use serde::{Deserialize, Serialize};

use crate::naming::Kind;
use crate::queue::{Binding, Declared, Queue, SavedBinding};

pub(crate) const EXCHANGES: &str = "amqp.exchanges";
pub(crate) const QUEUES: &str = "amqp.queues";

/// A declared exchange.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Exchange {
    /// `direct`, `fanout`, `topic` or `headers`.
    pub kind: String,
    /// Survives restarts.
    pub durable: bool,
    /// Declared auto-delete (accepted; not enforced yet).
    pub auto_delete: bool,
    /// Takes no publishes of its own, only exchange-to-exchange bindings.
    pub internal: bool,
    /// Exchange-to-exchange bindings that feed this exchange (`exchange` names the
    /// source); saved with the destination, durable when it is.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SavedBinding>,
}

impl Exchange {
    fn builtin(kind: Kind) -> Self {
        Self {
            kind: kind.as_str().into(),
            durable: true,
            auto_delete: false,
            internal: false,
            sources: Vec::new(),
        }
    }

    /// Its type (`direct` for anything unknown).
    pub fn kind(&self) -> Kind {
        Kind::parse(&self.kind).unwrap_or(Kind::Direct)
    }
}

/// How a new queue is declared.
#[derive(Clone, Debug, Default)]
pub struct NewQueue {
    /// Survives restarts (and is saved).
    pub durable: bool,
    /// Deleted when its last consumer leaves.
    pub auto_delete: bool,
    /// Owned by this connection: others may not consume, and it goes with it.
    pub exclusive: Option<u64>,
    /// Its `x-*` arguments.
    pub args: crate::arguments::QueueArgs,
}

/// What the broker needs to know.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// Messages a queue reads ahead of its consumers.
    pub queue_window: usize,
}

/// The exchanges and queues every AMQP and STOMP connection shares.
pub struct Broker {
    /// The Hub every queue reads from and publishes to.
    pub hub: Hub,
    /// Its settings.
    pub cfg: BrokerConfig,
    /// The broker's own identity, for its adapter state and queue groups.
    pub ctx: AuthContext,
    pub(crate) exchanges: Arc<Mutex<HashMap<String, Exchange>>>,
    pub(crate) queues: Mutex<HashMap<String, Arc<Queue>>>,
    /// Serialises [`Broker::declare_saved_queue`]: its check and its create are one step.
    declaring: Mutex<()>,
    /// Held by every change to the saved topology from its local change to its save,
    /// and while another node's change is applied (`topology.rs`): an entry read back
    /// from the store can then never undo a change this node made but has not saved
    /// yet, and reads are applied in the order they were made.
    pub(crate) changing: tokio::sync::Mutex<()>,
    next_conn: AtomicU64,
    /// This broker among the cluster's nodes, so it skips its own announcements.
    pub(crate) node: String,
    /// The sequence of the last change this broker announced.
    pub(crate) announced: AtomicU64,
    /// What the other nodes applied of its announcements (the cluster engine).
    agreement: Option<polyport_core::Agreement>,
}

impl Broker {
    /// The built-in exchanges plus the durable topology saved by earlier runs.
    pub async fn load(hub: Hub, cfg: BrokerConfig) -> Result<Arc<Self>, HubError> {
        let ctx = AuthContext::system(Origin("amqp"));
        let changes = Self::topology_changes(&hub).await?;
        let mut exchanges: HashMap<String, Exchange> = [
            ("", Kind::Direct),
            ("amq.direct", Kind::Direct),
            ("amq.fanout", Kind::Fanout),
            ("amq.topic", Kind::Topic),
            ("amq.headers", Kind::Headers),
            ("amq.match", Kind::Headers),
        ]
        .into_iter()
        .map(|(n, k)| (n.to_string(), Exchange::builtin(k)))
        .collect();
        for (name, bytes) in hub.load_state(&ctx, EXCHANGES).await? {
            match serde_json::from_slice::<Exchange>(&bytes) {
                Ok(x) => {
                    exchanges.insert(name, x);
                }
                Err(e) => {
                    tracing::warn!(exchange = %name, error = %e, "unreadable saved AMQP exchange skipped")
                }
            }
        }
        let broker = Arc::new(Self {
            hub: hub.clone(),
            cfg,
            ctx: ctx.clone(),
            exchanges: Arc::new(Mutex::new(exchanges)),
            queues: Mutex::new(HashMap::new()),
            declaring: Mutex::new(()),
            changing: tokio::sync::Mutex::new(()),
            next_conn: AtomicU64::new(1),
            node: hub.node_id(),
            announced: AtomicU64::new(0),
            agreement: changes.as_ref().map(|c| c.agreement()),
        });
        for (name, bytes) in hub.load_state(&ctx, QUEUES).await? {
            let d: Declared = match serde_json::from_slice(&bytes) {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(queue = %name, error = %e, "unreadable saved AMQP queue skipped");
                    continue;
                }
            };
            broker.open_saved(d);
        }
        broker.expire_unused_queues();
        if let Some(changes) = changes {
            broker.follow_topology(changes);
        }
        Ok(broker)
    }

    /// Opens a saved queue, unless one of its name is open already (then that one).
    pub(crate) fn open_saved(&self, d: Declared) -> Arc<Queue> {
        let mut queues = self.queues.lock();
        if let Some(q) = queues.get(&d.name) {
            return q.clone();
        }
        let bindings = self.bindings_of(&d);
        let name = d.name.clone();
        let q = Queue::open(
            self.hub.clone(),
            self.ctx.clone(),
            d,
            bindings,
            self.cfg.queue_window,
            self.exchanges.clone(),
        );
        queues.insert(name, q.clone());
        q
    }

    /// The topology-change lock on the cluster engine (see `changing`); nothing to
    /// wait for on one node, where no other node's change is ever applied.
    pub(crate) async fn changing(&self) -> Option<tokio::sync::MutexGuard<'_, ()>> {
        match self.hub.engine() {
            "cluster" => Some(self.changing.lock().await),
            _ => None,
        }
    }

    /// Runs one change to the saved topology under the change lock, then answers once
    /// the other nodes have applied what it announced (the cluster engine; see
    /// [`polyport_core::Agreement`]), so what the client does next through any node
    /// sees it. The wait is outside the lock: two nodes changing at once each apply
    /// the other's change while waiting.
    async fn change<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, HubError>>,
    ) -> Result<T, HubError> {
        let since = self.announced.load(Ordering::Acquire);
        let r = {
            let _changing = self.changing().await;
            f.await
        };
        let last = self.announced.load(Ordering::Acquire);
        if let (true, Some(agreement)) = (last > since, &self.agreement) {
            agreement.reached(last).await;
        }
        r
    }

    /// A new connection id (the owner of exclusive queues and consumers).
    pub fn next_connection(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn bindings_of(&self, d: &Declared) -> Vec<Binding> {
        d.bindings
            .iter()
            .filter_map(|b| {
                Binding::new(&b.exchange, Kind::parse(&b.kind)?, &b.key, b.args.clone())
            })
            .collect()
    }

    /// A declared exchange.
    pub fn exchange(&self, name: &str) -> Option<Exchange> {
        self.exchanges.lock().get(name).cloned()
    }

    /// Whether an exchange of that name is declared on this node (no copy made).
    pub fn has_exchange(&self, name: &str) -> bool {
        self.exchanges.lock().contains_key(name)
    }

    /// Adds a declared exchange (after [`Broker::save_exchange`] when durable).
    pub fn add_exchange(&self, name: &str, x: Exchange) {
        self.exchanges.lock().insert(name.to_string(), x);
    }

    /// A queue by name.
    pub fn queue(&self, name: &str) -> Option<Arc<Queue>> {
        self.queues.lock().get(name).cloned()
    }

    /// Declares an exchange (saved first when durable).
    pub async fn declare_exchange(&self, name: &str, x: Exchange) -> Result<(), HubError> {
        self.change(async {
            if x.durable {
                self.save_exchange(name, Some(&x)).await?;
            }
            self.add_exchange(name, x);
            Ok(())
        })
        .await
    }

    /// [`Broker::declare_queue`] unless a queue of that name exists, then that one; and
    /// whether it was created (then saved, when durable). Two connections declaring one
    /// queue at once (a STOMP SEND and a SUBSCRIBE to a new `/queue/x`) get the same
    /// queue, never one each.
    pub async fn declare_saved_queue(
        &self,
        name: &str,
        spec: NewQueue,
    ) -> Result<(Arc<Queue>, bool), HubError> {
        self.change(async {
            let q = {
                let _one_at_a_time = self.declaring.lock();
                if let Some(q) = self.queue(name) {
                    return Ok((q, false));
                }
                self.declare_queue(name, spec)
            };
            self.save_queue(name, Some(&q)).await?;
            Ok((q, true))
        })
        .await
    }

    /// Binds a queue (a no-op if bound so already) and saves it.
    pub async fn bind_queue(
        &self,
        q: &Arc<Queue>,
        b: crate::queue::Binding,
    ) -> Result<(), HubError> {
        self.change(async {
            q.bind(b).await;
            self.save_queue(&q.name(), Some(q)).await
        })
        .await
    }

    /// Unbinds a queue and saves it; `false` when there was no such binding.
    pub async fn unbind_queue(
        &self,
        q: &Arc<Queue>,
        exchange: &str,
        key: &str,
    ) -> Result<bool, HubError> {
        self.change(async {
            let had = q.unbind(exchange, key).await;
            self.save_queue(&q.name(), Some(q)).await?;
            Ok(had)
        })
        .await
    }

    /// Stores a durable exchange; removes it with `None`.
    pub async fn save_exchange(&self, name: &str, x: Option<&Exchange>) -> Result<(), HubError> {
        let value = match x {
            Some(x) => Some(Bytes::from(
                serde_json::to_vec(x).map_err(|e| HubError::Storage(e.to_string()))?,
            )),
            None => None,
        };
        self.hub
            .put_state(&self.ctx, EXCHANGES, name, value)
            .await?;
        self.announce(EXCHANGES, name).await
    }

    /// Stores a durable queue's declaration (and bindings); removes it with `None`.
    pub async fn save_queue(&self, name: &str, q: Option<&Queue>) -> Result<(), HubError> {
        let value = match q {
            Some(q) => {
                let d = q.declared.lock().clone();
                if !d.durable {
                    return Ok(());
                }
                Some(Bytes::from(
                    serde_json::to_vec(&d).map_err(|e| HubError::Storage(e.to_string()))?,
                ))
            }
            None => None,
        };
        self.hub.put_state(&self.ctx, QUEUES, name, value).await?;
        self.announce(QUEUES, name).await
    }

    /// Declares a queue that holds what is published from now on.
    pub fn declare_queue(&self, name: &str, spec: NewQueue) -> Arc<Queue> {
        let NewQueue {
            durable,
            auto_delete,
            exclusive,
            args,
        } = spec;
        self.create_queue(Declared {
            name: name.to_string(),
            durable,
            auto_delete,
            exclusive,
            since: self.hub.log_state().last_seq,
            bindings: Vec::new(),
            message_ttl: args.message_ttl,
            dead_letter: args.dead_letter,
            limits: args.limits,
            expires: args.expires,
        })
    }

    /// Opens a new queue.
    fn create_queue(&self, d: Declared) -> Arc<Queue> {
        let name = d.name.clone();
        let q = Queue::open(
            self.hub.clone(),
            self.ctx.clone(),
            d,
            Vec::new(),
            self.cfg.queue_window,
            self.exchanges.clone(),
        );
        self.queues.lock().insert(name, q.clone());
        q
    }

    /// Deletes a queue everywhere; returns the messages it held.
    pub async fn delete_queue(&self, name: &str) -> Result<u32, HubError> {
        self.change(async {
            let Some(q) = self.queues.lock().remove(name) else {
                return Ok(0);
            };
            let durable = q.declared.lock().durable;
            let n = q.delete().await?;
            if durable {
                self.save_queue(name, None).await?;
            }
            Ok(n)
        })
        .await
    }

    /// `exchange.bind`: `destination` receives what `source` routes with `key`/`args`.
    /// `false` when either exchange is missing.
    pub async fn bind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &amq_protocol_types::FieldTable,
    ) -> Result<bool, HubError> {
        self.change(async {
            let saved = {
                let mut xs = self.exchanges.lock();
                let Some(kind) = xs.get(source).map(|x| x.kind.clone()) else {
                    return Ok(false);
                };
                let Some(dst) = xs.get_mut(destination) else {
                    return Ok(false);
                };
                let b = SavedBinding {
                    exchange: source.to_string(),
                    kind,
                    key: key.to_string(),
                    args: args.clone(),
                };
                if !dst.sources.contains(&b) {
                    dst.sources.push(b);
                }
                dst.clone()
            };
            if saved.durable {
                self.save_exchange(destination, Some(&saved)).await?;
            }
            self.reroute_all().await;
            Ok(true)
        })
        .await
    }

    /// `exchange.unbind` (a no-op when there is no such binding, as RabbitMQ).
    pub async fn unbind_exchange(
        &self,
        destination: &str,
        source: &str,
        key: &str,
        args: &amq_protocol_types::FieldTable,
    ) -> Result<(), HubError> {
        self.change(async {
            let saved = {
                let mut xs = self.exchanges.lock();
                let Some(dst) = xs.get_mut(destination) else {
                    return Ok(());
                };
                let before = dst.sources.len();
                dst.sources
                    .retain(|b| !(b.exchange == source && b.key == key && &b.args == args));
                if dst.sources.len() == before {
                    return Ok(());
                }
                dst.clone()
            };
            if saved.durable {
                self.save_exchange(destination, Some(&saved)).await?;
            }
            self.reroute_all().await;
            Ok(())
        })
        .await
    }

    /// Whether any queue or exchange is bound to `exchange` (it is some binding's source).
    pub fn in_use(&self, exchange: &str) -> bool {
        self.queues.lock().values().any(|q| q.bound_to(exchange))
            || self
                .exchanges
                .lock()
                .values()
                .any(|x| x.sources.iter().any(|s| s.exchange == exchange))
    }

    /// Removes an exchange with every binding to or from it.
    pub async fn delete_exchange(&self, name: &str) -> Result<(), HubError> {
        self.change(async {
            let changed: Vec<(String, Exchange)> = {
                let mut xs = self.exchanges.lock();
                if xs.remove(name).is_none() {
                    return Ok(());
                }
                xs.iter_mut()
                    .filter(|(_, x)| x.sources.iter().any(|s| s.exchange == name))
                    .map(|(n, x)| {
                        x.sources.retain(|s| s.exchange != name);
                        (n.clone(), x.clone())
                    })
                    .collect()
            };
            self.save_exchange(name, None).await?;
            for (n, x) in changed {
                if x.durable {
                    self.save_exchange(&n, Some(&x)).await?;
                }
            }
            let queues: Vec<Arc<Queue>> = self.queues.lock().values().cloned().collect();
            for q in queues {
                if q.bound_to(name) {
                    q.forget_exchange(name).await;
                    self.save_queue(&q.name(), Some(&q)).await?;
                }
            }
            self.reroute_all().await;
            Ok(())
        })
        .await
    }

    /// Deletes the queues whose `x-expires` ran out, until the broker is dropped or the
    /// Hub shuts down.
    fn expire_unused_queues(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let shutdown = self.hub.shutdown_token();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let Some(broker) = weak.upgrade() else { return };
                let gone: Vec<String> = broker
                    .queues
                    .lock()
                    .values()
                    .filter(|q| q.unused_past_expiry())
                    .map(|q| q.name())
                    .collect();
                for name in gone {
                    tracing::debug!(queue = %name, "AMQP queue expired (x-expires)");
                    if let Err(e) = broker.delete_queue(&name).await {
                        tracing::warn!(queue = %name, error = %e, "deleting an expired AMQP queue failed");
                    }
                }
            }
        });
    }

    /// Every queue recomputes its paths after exchange bindings changed.
    pub(crate) async fn reroute_all(&self) {
        let queues: Vec<Arc<Queue>> = self.queues.lock().values().cloned().collect();
        for q in queues {
            q.reroute().await;
        }
    }

    /// The queues a message lands in.
    pub fn queues_for(&self, m: &crate::queue::Routed<'_>) -> Vec<Arc<Queue>> {
        self.queues
            .lock()
            .values()
            .filter(|q| q.routes(m))
            .cloned()
            .collect()
    }

    /// A connection ends: its exclusive queues go, its consumers leave.
    pub async fn connection_closed(&self, conn: u64) {
        let mut gone = Vec::new();
        let queues: Vec<Arc<Queue>> = self.queues.lock().values().cloned().collect();
        for q in queues {
            let exclusive = q.declared.lock().exclusive == Some(conn);
            if exclusive {
                gone.push(q.name());
                continue;
            }
            let had = q.consumers_of(conn);
            q.drop_connection(conn);
            if had && q.consumer_count() == 0 && q.declared.lock().auto_delete {
                gone.push(q.name());
            }
        }
        for name in gone {
            if let Err(e) = self.delete_queue(&name).await {
                tracing::warn!(queue = %name, error = %e, "deleting an AMQP queue failed");
            }
        }
    }
}
