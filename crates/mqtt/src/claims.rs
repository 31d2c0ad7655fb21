//! Client ids across nodes (the cluster engine with a bus).
//!
//! MQTT allows one connection per client id, and a client that reconnects takes its
//! session over. Behind a load balancer the reconnect may reach another node: each
//! connect announces its client id on an internal ephemeral topic, which the relay
//! carries to every node, and a node that has that client connected ends the connection
//! (`Session taken over`, 0x8E on MQTT 5) without parking or ending the session, drops
//! a parked copy and cancels a delayed will. The new node reads the session from the
//! store (`connection/handshake.rs`), so it resumes with its subscriptions and the
//! groups' positions; what the old connection had not acknowledged comes again.
//!
//! Deliberately at most once and not awaited: a lost announcement leaves two
//! connections for a while (each receiving, as two clients sharing the session's
//! groups would), never a lost message.

use std::sync::Arc;

use polyport_core::{EventDraft, HubError, Item, Overflow, SubscribeRequest, Topic, TopicFilter};
use serde::{Deserialize, Serialize};

use crate::broker::Broker;

/// Where connects are announced. `$`-topics are out of reach of `#` subscribers.
const TOPIC: &str = "$polyport/mqtt/claims";

#[derive(Serialize, Deserialize)]
struct Claim {
    client_id: String,
    /// The announcing broker ([`Broker::instance`]).
    broker: String,
}

/// Tells the other nodes that `client_id` connected here.
pub(crate) fn announce(broker: &Broker, client_id: &str) {
    let Ok(topic) = Topic::new(TOPIC) else {
        return;
    };
    let claim = Claim {
        client_id: client_id.to_string(),
        broker: broker.instance.clone(),
    };
    let Ok(body) = serde_json::to_vec(&claim) else {
        return;
    };
    let mut d = EventDraft::new(topic, body);
    d.content_type = Some("application/json".into());
    if let Err(e) = broker.hub.publish_ephemeral(&broker.ctx, d) {
        tracing::warn!(client = %client_id, error = %e, "announcing an MQTT connect to the other nodes failed");
    }
}

/// Follows the other nodes' announcements until the hub shuts down; subscribed before
/// it returns.
pub(crate) async fn follow(broker: &Arc<Broker>) -> Result<(), HubError> {
    let req = SubscribeRequest {
        filters: vec![TopicFilter::new(TOPIC)?],
        overflow: Overflow::Notify,
        ..SubscribeRequest::default()
    };
    let mut sub = broker.hub.subscribe(&broker.ctx, req).await?;
    let broker = broker.clone();
    tokio::spawn(async move {
        while let Some(item) = sub.next().await {
            let e = match item {
                Ok(Item::Event(d)) => d.event,
                Ok(Item::Notice(_)) => continue,
                Err(_) => break,
            };
            match serde_json::from_slice::<Claim>(&e.payload) {
                Ok(c) if c.broker != broker.instance => broker.claimed_elsewhere(&c.client_id),
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "unreadable MQTT claim ignored"),
            }
        }
    });
    Ok(())
}
