//! Which nodes serve this deployment: the membership seam.
//!
//! The embedded engine is one node ([`Alone`]); the cluster engine (`polyport-cluster`)
//! keeps a heartbeat per node in NATS JetStream KV and lists the nodes whose heartbeat
//! is fresh. Adapters read it through the [`crate::Hub`] (`GET /api/cluster`, `/readyz`,
//! `/metrics`) and cannot tell which one is underneath.

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::HubResult;

/// One node, as it announces itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique per process (a restarted node is a new one).
    pub id: String,
    /// Polyport's version on that node.
    pub version: String,
    /// When the process started.
    pub started_at: DateTime<Utc>,
    /// When its last heartbeat was written.
    pub seen_at: DateTime<Utc>,
    /// What it listens on, by face (`http`, `mqtt`, …): bound addresses.
    #[serde(default)]
    pub listeners: BTreeMap<String, String>,
}

impl Node {
    /// This process, started now, with a fresh id.
    pub fn this_process(listeners: BTreeMap<String, String>) -> Self {
        let now = Utc::now();
        Self {
            id: crate::record::new_id(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: now,
            seen_at: now,
            listeners,
        }
    }
}

/// The engine's view of the deployment.
#[async_trait]
pub trait Membership: Send + Sync + 'static {
    /// `embedded` or `cluster`.
    fn engine(&self) -> &'static str;
    /// This node.
    fn me(&self) -> Node;
    /// The nodes alive now, this one included while it is healthy, oldest first.
    async fn nodes(&self) -> HubResult<Vec<Node>>;
    /// `Err(reason)` while this node cannot reach what the engine needs.
    fn ready(&self) -> Result<(), String>;
}

/// The embedded engine: this process is the whole deployment.
#[derive(Debug, Clone)]
pub struct Alone(pub Node);

#[async_trait]
impl Membership for Alone {
    fn engine(&self) -> &'static str {
        "embedded"
    }

    fn me(&self) -> Node {
        Node {
            seen_at: Utc::now(),
            ..self.0.clone()
        }
    }

    async fn nodes(&self) -> HubResult<Vec<Node>> {
        Ok(vec![self.me()])
    }

    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Work only one node may do at a time (one webhook endpoint's deliveries): held while
/// [`Lease::held`] says so, given up when dropped. A node that dies loses its leases, and
/// another takes the work over.
pub trait Lease: Send + Sync {
    /// Still this node's: checked before each unit of work. After it turns false
    /// another node may hold it, so what follows must not be done here.
    fn held(&self) -> bool;
}

/// The embedded engine's lease: the one node holds them all.
pub struct Sole;

impl Lease for Sole {
    fn held(&self) -> bool {
        true
    }
}

/// Carries ephemeral events (never in the log) to the other nodes of a cluster; set on
/// the Hub once ([`crate::Hub::set_relay`]).
pub trait Relay: Send + Sync + 'static {
    /// Offers a local ephemeral event to the other nodes (at most once: it may drop).
    fn send(&self, e: &crate::event::EventRef);
}

pub use crate::group::{LinkCtl, LinkedMember, MemberLink, linked};
pub use crate::group_join::GroupJoin;

/// Carries a named group's members between nodes (the cluster engine with a bus).
///
/// A group's dispatcher runs on the one node holding the group's lease, exactly as on
/// the embedded engine; members on other nodes join it through the link, so every
/// node's members compete for one stream with one position.
#[async_trait]
pub trait GroupLink: Send + Sync + 'static {
    /// Starts answering other nodes' joins of the group `key` (this node has just taken
    /// its lease); they stop when the returned value is dropped.
    async fn host(&self, key: &str) -> HubResult<Box<dyn std::any::Any + Send + Sync>>;
    /// Joins the group on the node that runs it: `Ok(None)` when none does now.
    async fn join(&self, join: &GroupJoin, queue: usize) -> HubResult<Option<LinkedMember>>;
}
