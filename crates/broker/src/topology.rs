//! The durable topology across the nodes of a cluster.
//!
//! Every node serves every exchange and queue: a durable declaration, binding or
//! deletion made through one node is saved in the store, then announced
//! (`$polyport/amqp/topology`, naming what changed); each other node reads that one
//! entry back from the store and applies it — opens the queue, takes its new bindings,
//! closes it (its consumers get `basic.cancel`) — so the store stays the one truth and
//! an announcement carries no state of its own to go stale. A declare, bind or consume
//! reads what it names from the store first, and any other lookup that misses does so
//! before answering `NOT_FOUND`: a client that declared and bound through node A and
//! declares or consumes through node B a millisecond later finds its queue as A left it
//! (read-your-writes without waiting for the announcement). The node that made a change
//! answers the client (`declare-ok`, `bind-ok`, `delete-ok`) only once every other live
//! node has applied it ([`polyport_core::Agreement`], bounded by
//! [`polyport_core::AGREE_WITHIN`]): a publish through B sent after A's `bind-ok` is
//! routed by the new binding, as in a RabbitMQ cluster.
//!
//! Non-durable queues and exchanges are not stored, so they are known on the node that
//! declared them only (RabbitMQ shows them cluster-wide); messages routed to them
//! through another node still reach them, since every publish goes to the one log.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use polyport_core::{Announcements, HubError};
use serde::{Deserialize, Serialize};

use crate::broker::{Broker, EXCHANGES, Exchange, QUEUES};
use crate::queue::{Declared, Queue};

/// What topology changes are announced as.
const TOPOLOGY: &str = "amqp/topology";

/// One announced change: which entry to read again.
#[derive(Serialize, Deserialize)]
pub(crate) struct Changed {
    /// [`EXCHANGES`] or [`QUEUES`].
    namespace: String,
    name: String,
    /// The announcing broker, which has applied it already.
    node: String,
}

impl Broker {
    /// Tells the other nodes that a saved exchange or queue changed (the cluster
    /// engine; nothing otherwise).
    pub(crate) async fn announce(&self, namespace: &str, name: &str) -> Result<(), HubError> {
        if self.hub.engine() != "cluster" {
            return Ok(());
        }
        let c = Changed {
            namespace: namespace.into(),
            name: name.into(),
            node: self.node.clone(),
        };
        let body = serde_json::to_vec(&c).map_err(|e| HubError::Storage(e.to_string()))?;
        let seq = self.hub.announce(TOPOLOGY, body).await?;
        self.announced.fetch_max(seq, Ordering::AcqRel);
        Ok(())
    }

    /// The other nodes' changes from now on (the cluster engine): taken before the
    /// broker loads the topology, so nothing changed after the load is missed.
    pub(crate) async fn topology_changes(
        hub: &polyport_core::Hub,
    ) -> Result<Option<Announcements>, HubError> {
        hub.announcements(TOPOLOGY).await
    }

    /// Applies the other nodes' changes until the hub shuts down.
    pub(crate) fn follow_topology(self: &Arc<Self>, mut changes: Announcements) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            while let Some(e) = changes.next().await {
                let Some(broker) = weak.upgrade() else { return };
                let c = match serde_json::from_slice::<Changed>(&e.payload) {
                    Ok(c) if c.node != broker.node => c,
                    Ok(_) => {
                        changes.applied();
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, "unreadable AMQP topology change ignored");
                        changes.applied();
                        continue;
                    }
                };
                let r = match c.namespace.as_str() {
                    EXCHANGES => broker.refresh_exchange(&c.name).await.map(|_| ()),
                    QUEUES => broker.refresh_queue(&c.name).await.map(|_| ()),
                    _ => Ok(()),
                };
                match r {
                    Ok(()) => changes.applied(),
                    Err(err) => {
                        tracing::warn!(name = %c.name, error = %err, "applying another node's AMQP topology change failed")
                    }
                }
            }
        });
    }

    /// A queue by name; on a miss, one another node may have declared (the cluster
    /// engine).
    pub async fn find_queue(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Queue>>, HubError> {
        match self.queue(name) {
            Some(q) => Ok(Some(q)),
            None if self.hub.engine() == "cluster" => self.refresh_queue(name).await,
            None => Ok(None),
        }
    }

    /// An exchange by name; on a miss, one another node may have declared (the cluster
    /// engine).
    pub async fn find_exchange(&self, name: &str) -> Result<Option<Exchange>, HubError> {
        match self.exchange(name) {
            Some(x) => Ok(Some(x)),
            None if self.hub.engine() == "cluster" => self.refresh_exchange(name).await,
            None => Ok(None),
        }
    }

    /// On the cluster engine, makes this node's queue `name` what the store says now
    /// (as a declare or a consume does, so what a client changed through another node
    /// holds for it at once); the local queue otherwise.
    pub async fn fresh_queue(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Queue>>, HubError> {
        match self.hub.engine() {
            "cluster" => self.refresh_queue(name).await,
            _ => Ok(self.queue(name)),
        }
    }

    /// [`Broker::fresh_queue`] for an exchange.
    pub async fn fresh_exchange(&self, name: &str) -> Result<Option<Exchange>, HubError> {
        match self.hub.engine() {
            "cluster" if !builtin(name) => self.refresh_exchange(name).await,
            _ => Ok(self.exchange(name)),
        }
    }

    /// Makes this node's queue `name` what the store says: opened, rebound, or closed
    /// (a queue only this node knows, not durable, is left alone).
    async fn refresh_queue(self: &Arc<Self>, name: &str) -> Result<Option<Arc<Queue>>, HubError> {
        let _changing = self.changing().await;
        let stored = self.hub.get_state(&self.ctx, QUEUES, name).await?;
        let stored = match stored.map(|b| serde_json::from_slice::<Declared>(&b)) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                tracing::warn!(queue = %name, error = %e, "unreadable saved AMQP queue skipped");
                None
            }
            None => None,
        };
        let local = self.queue(name);
        match (stored, local) {
            (Some(d), Some(q)) => {
                let bindings = self.bindings_of(&d);
                q.rebind(d.bindings, bindings).await;
                Ok(Some(q))
            }
            (Some(d), None) => Ok(Some(self.open_saved(d))),
            (None, Some(q)) if q.declared.lock().durable => {
                self.queues.lock().remove(name);
                q.close().await;
                Ok(None)
            }
            (None, local) => Ok(local),
        }
    }

    /// Makes this node's exchange `name` what the store says.
    async fn refresh_exchange(&self, name: &str) -> Result<Option<Exchange>, HubError> {
        let _changing = self.changing().await;
        let stored = self.hub.get_state(&self.ctx, EXCHANGES, name).await?;
        let stored = stored.and_then(|b| match serde_json::from_slice::<Exchange>(&b) {
            Ok(x) => Some(x),
            Err(e) => {
                tracing::warn!(exchange = %name, error = %e, "unreadable saved AMQP exchange skipped");
                None
            }
        });
        let changed = {
            let mut xs = self.exchanges.lock();
            match &stored {
                Some(x) => xs.insert(name.to_string(), x.clone()).as_ref() != Some(x),
                None if xs.get(name).is_some_and(|x| x.durable) && !builtin(name) => {
                    xs.remove(name);
                    true
                }
                None => false,
            }
        };
        if changed {
            self.reroute_all().await;
        }
        Ok(stored.or_else(|| self.exchange(name)))
    }
}

/// The exchanges every broker has, never stored.
fn builtin(name: &str) -> bool {
    name.is_empty() || name.starts_with("amq.")
}
