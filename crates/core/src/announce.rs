//! Announcements between the nodes of a cluster: what one node changed that the others
//! must act on (stored identities, AMQP topology, an MQTT client id taken over).
//!
//! They travel as events on internal `$polyport/…` topics, so they need nothing the
//! engine does not already carry: a durable one commits after the change it announces
//! and reaches every node in log order (a node that reads the change after its
//! announcement sees the change), an ephemeral one is relayed at most once. `$`-topics
//! are out of reach of `#` subscribers, and only the server itself may publish on
//! `$polyport/` (see [`crate::auth::Roles`]).

use bytes::Bytes;

use crate::auth::AuthContext;
use crate::error::HubResult;
use crate::event::{Durability, EventDraft, EventRef, Origin};
use crate::hub::Hub;
use crate::subscription::{Item, Overflow, SubscribeRequest, Subscription};
use crate::topic::{Topic, TopicFilter};

/// Where announcements are published: `$polyport/{what}`.
pub(crate) const PREFIX: &str = "$polyport/";

fn ctx() -> AuthContext {
    AuthContext::system(Origin("cluster"))
}

impl Hub {
    /// Tells the other nodes about a change this node made, durably: it returns once
    /// the announcement is in the log. Nothing to do on the embedded engine.
    pub async fn announce(&self, what: &str, payload: impl Into<Bytes>) -> HubResult<()> {
        if self.engine() != "cluster" {
            return Ok(());
        }
        let mut d = EventDraft::new(Topic::new(&format!("{PREFIX}{what}"))?, payload);
        d.durability = Durability::Durable;
        d.content_type = Some("application/json".into());
        self.publish(&ctx(), d).await.map(|_| ())
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
    pub async fn announcements(&self, what: &str) -> HubResult<Option<Announcements>> {
        if self.engine() != "cluster" {
            return Ok(None);
        }
        let req = SubscribeRequest {
            filters: vec![TopicFilter::new(&format!("{PREFIX}{what}"))?],
            overflow: Overflow::Notify,
            ..SubscribeRequest::default()
        };
        Ok(Some(Announcements {
            sub: self.subscribe(&ctx(), req).await?,
        }))
    }
}

/// A node's view of other nodes' announcements on one topic.
pub struct Announcements {
    sub: Subscription,
}

impl Announcements {
    /// The next announcement; `None` once the hub shuts down. Announcements lost to a
    /// full queue (ephemeral ones only) are skipped: durable ones are replayed.
    pub async fn next(&mut self) -> Option<EventRef> {
        loop {
            match self.sub.next().await? {
                Ok(Item::Event(d)) => return Some(d.event),
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
        while let Some(Ok(_)) = self.sub.try_next().await {}
    }
}
