//! Announcements between the nodes of a cluster: what one node changed that the others
//! must act on (stored identities, AMQP topology, an MQTT client id taken over).
//!
//! They travel as events on internal `$polyport/…` topics, so they need nothing the
//! engine does not already carry: a durable one commits after the change it announces
//! and reaches every node in log order (a node that reads the change after its
//! announcement sees the change), an ephemeral one is relayed at most once. `$`-topics
//! are out of reach of `#` subscribers, and only the server itself may publish on
//! `$polyport/` (see [`crate::auth::Roles`]).
//!
//! A follower says when it has applied a durable announcement (an ephemeral
//! `$polyport/{what}/applied` naming its node and the announcement's sequence), so the
//! announcing node can hold its answer to the client until every other live node acts on
//! the change ([`Agreement::reached`]): a binding made through one node then routes a
//! publish through any node sent after the `bind-ok`, as in a RabbitMQ cluster, and a
//! revoked API key fails everywhere once the revoke is answered. The wait is bounded
//! ([`AGREE_WITHIN`]): a node that does not answer in time (dying, cut off, or its
//! answer lost) is left to catch up as before.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::auth::AuthContext;
use crate::error::HubResult;
use crate::event::{Durability, EventDraft, EventRef, Origin};
use crate::hub::Hub;
use crate::subscription::{Item, Overflow, SubscribeRequest, Subscription};
use crate::topic::{Topic, TopicFilter};

/// Where announcements are published: `$polyport/{what}`.
pub(crate) const PREFIX: &str = "$polyport/";

/// Where followers say what they applied: `$polyport/{what}/applied`.
const APPLIED: &str = "/applied";

/// How long an announcing node waits for the others to apply its change.
pub const AGREE_WITHIN: Duration = Duration::from_secs(2);

fn ctx() -> AuthContext {
    AuthContext::system(Origin("cluster"))
}

impl Hub {
    /// Tells the other nodes about a change this node made, durably: it returns once
    /// the announcement is in the log, with its sequence for [`Agreement::reached`].
    /// Nothing to do on the embedded engine (0).
    pub async fn announce(&self, what: &str, payload: impl Into<Bytes>) -> HubResult<u64> {
        if self.engine() != "cluster" {
            return Ok(0);
        }
        let mut d = EventDraft::new(Topic::new(&format!("{PREFIX}{what}"))?, payload);
        d.durability = Durability::Durable;
        d.content_type = Some("application/json".into());
        let receipt = self.publish(&ctx(), d).await?;
        Ok(receipt.event.seq.unwrap_or(0))
    }

    /// [`Hub::announce`] at most once, without waiting: for what is cheaper to miss
    /// now and then than to wait for.
    pub fn announce_ephemeral(&self, what: &str, payload: impl Into<Bytes>) -> HubResult<()> {
        if self.engine() != "cluster" {
            return Ok(());
        }
        let mut d = EventDraft::new(Topic::new(&format!("{PREFIX}{what}"))?, payload);
        d.content_type = Some("application/json".into());
        self.publish_ephemeral(&ctx(), d).map(|_| ())
    }

    /// What the nodes (this one included) announce about `what` from now on; `None` on
    /// the embedded engine, where there is nobody to hear from. Subscribed when it
    /// returns, so a state loaded after it misses no change announced after the load.
    /// It also follows the other nodes' word on what they applied (see
    /// [`Announcements::agreement`]) and tells them this node follows.
    pub async fn announcements(&self, what: &str) -> HubResult<Option<Announcements>> {
        if self.engine() != "cluster" {
            return Ok(None);
        }
        let subscribe = |topic: String| -> HubResult<SubscribeRequest> {
            Ok(SubscribeRequest {
                filters: vec![TopicFilter::new(&topic)?],
                overflow: Overflow::Notify,
                ..SubscribeRequest::default()
            })
        };
        let voice = Arc::new(Voice {
            hub: Arc::downgrade(&self.inner),
            topic: format!("{what}{APPLIED}"),
            mine: AtomicU64::new(0),
        });
        let acks = self
            .subscribe(&ctx(), subscribe(format!("{PREFIX}{}", voice.topic))?)
            .await?;
        let agreement = Agreement {
            voice,
            acks: Arc::default(),
        };
        agreement.follow(self.node_id(), acks);
        let sub = self
            .subscribe(&ctx(), subscribe(format!("{PREFIX}{what}"))?)
            .await?;
        // "Following from here", once the other nodes can hear it: they wait for this
        // node from now on, and answer, so this one waits for them.
        let (hub, voice) = (self.clone(), agreement.voice.clone());
        tokio::spawn(async move {
            hub.relay_ready().await;
            voice.tell();
        });
        Ok(Some(Announcements {
            sub,
            last: 0,
            agreement,
        }))
    }
}

/// A node's view of other nodes' announcements on one topic.
pub struct Announcements {
    sub: Subscription,
    /// The sequence of the last announcement handed out.
    last: u64,
    agreement: Agreement,
}

impl Announcements {
    /// The next announcement; `None` once the hub shuts down. Announcements lost to a
    /// full queue (ephemeral ones only) are skipped: durable ones are replayed.
    pub async fn next(&mut self) -> Option<EventRef> {
        loop {
            match self.sub.next().await? {
                Ok(Item::Event(d)) => {
                    self.last = self.last.max(d.event.seq.unwrap_or(0));
                    return Some(d.event);
                }
                Ok(Item::Notice(_)) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "following the other nodes' announcements stopped");
                    return None;
                }
            }
        }
    }

    /// Drops the announcements already waiting, for a caller about to reload
    /// everything they could have said.
    pub async fn skip_waiting(&mut self) {
        while let Some(Ok(item)) = self.sub.try_next().await {
            if let Item::Event(d) = item {
                self.last = self.last.max(d.event.seq.unwrap_or(0));
            }
        }
    }

    /// Tells the announcing nodes that this one has acted on everything handed out so
    /// far (at most once: a lost word only makes an announcer wait its bound).
    pub fn applied(&self) {
        let voice = &self.agreement.voice;
        voice.mine.fetch_max(self.last, Ordering::Relaxed);
        voice.tell();
    }

    /// What this node's announcements on the same topic wait on.
    pub fn agreement(&self) -> Agreement {
        self.agreement.clone()
    }
}

/// A follower's word: it has applied every announcement up to `seq`.
#[derive(Serialize, Deserialize)]
struct Applied {
    node: String,
    seq: u64,
}

/// What the other nodes following one topic have applied, by node.
#[derive(Default)]
struct Acks {
    by_node: Mutex<HashMap<String, u64>>,
    changed: Notify,
}

/// Waits, on the announcing node, for the other nodes to apply its announcements.
#[derive(Clone)]
pub struct Agreement {
    voice: Arc<Voice>,
    acks: Arc<Acks>,
}

/// This node's word on one topic.
struct Voice {
    /// Weak: the hub keeps its own agreements (identities).
    hub: Weak<crate::hub::HubInner>,
    /// `{what}/applied`.
    topic: String,
    /// What this node has applied.
    mine: AtomicU64,
}

impl Voice {
    /// Tells the other nodes what this one has applied.
    fn hub(&self) -> Option<Hub> {
        self.hub.upgrade().map(|inner| Hub { inner })
    }

    fn tell(&self) {
        let Some(hub) = self.hub() else { return };
        let ack = Applied {
            node: hub.node_id(),
            seq: self.mine.load(Ordering::Relaxed),
        };
        let sent = serde_json::to_vec(&ack)
            .map_err(|e| crate::error::HubError::Storage(e.to_string()))
            .and_then(|body| hub.announce_ephemeral(&self.topic, body));
        if let Err(e) = sent {
            tracing::debug!(error = %e, "telling the other nodes what was applied failed");
        }
    }
}

impl Agreement {
    fn follow(&self, me: String, mut sub: Subscription) {
        let voice = self.voice.clone();
        let acks = Arc::downgrade(&self.acks);
        tokio::spawn(async move {
            while let Some(Ok(item)) = sub.next().await {
                let Item::Event(d) = item else { continue };
                let Ok(ack) = serde_json::from_slice::<Applied>(&d.event.payload) else {
                    continue;
                };
                if ack.node == me {
                    continue;
                }
                let Some(acks) = acks.upgrade() else { return };
                let new = {
                    let mut by_node = acks.by_node.lock();
                    let new = !by_node.contains_key(&ack.node);
                    let seen = by_node.entry(ack.node).or_default();
                    *seen = (*seen).max(ack.seq);
                    new
                };
                acks.changed.notify_waiters();
                if new {
                    // A node that started following after this one: it learns of
                    // this one from the answer.
                    voice.tell();
                }
            }
        });
    }

    /// Returns once every other live node that follows this topic has applied the
    /// announcement `seq`, or after [`AGREE_WITHIN`] (then the nodes still behind are
    /// logged). At once on the embedded engine (`seq` 0) and without a membership to
    /// say who is alive.
    pub async fn reached(&self, seq: u64) {
        if seq == 0 {
            return;
        }
        let Some(hub) = self.voice.hub() else { return };
        let me = hub.node_id();
        let alive: Vec<String> = match hub.membership().nodes().await {
            Ok(nodes) => nodes
                .into_iter()
                .map(|n| n.id)
                .filter(|id| *id != me)
                .collect(),
            Err(_) => return,
        };
        let deadline = tokio::time::Instant::now() + AGREE_WITHIN;
        loop {
            let changed = self.acks.changed.notified();
            let behind: Vec<&String> = {
                let by_node = self.acks.by_node.lock();
                // A node never heard from is not waited for: it loads what it follows
                // from the store after it subscribed, so it has this change anyway.
                alive
                    .iter()
                    .filter(|id| by_node.get(*id).is_some_and(|s| *s < seq))
                    .collect()
            };
            if behind.is_empty() {
                return;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(seq, nodes = ?behind, "nodes did not apply an announcement in time");
                return;
            }
        }
    }
}
