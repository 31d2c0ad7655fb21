//! Client ids across nodes (the cluster engine with a bus).
//!
//! MQTT allows one connection per client id, and a client that reconnects takes its
//! session over. Behind a load balancer the reconnect may reach another node: each
//! connect announces its client id on an internal ephemeral topic, which the relay
//! carries to every node, and a node that has that client connected ends the connection
//! (`Session taken over`, 0x8E on MQTT 5) without parking or ending the session, drops
//! a parked copy and cancels a delayed will. The new node reads the session from the
//! store (`connection/handshake.rs`), so it resumes with its subscriptions and the
//! groups' positions; what the old connection had not acknowledged comes again. The
//! node named in the stored session expires it; if that node dies, the survivors do
//! (`orphans.rs`).
//!
//! Deliberately at most once and not awaited: a lost announcement leaves two
//! connections for a while (each receiving, as two clients sharing the session's
//! groups would), never a lost message.

use std::sync::Arc;

use polyport_core::HubError;
use serde::{Deserialize, Serialize};

use crate::broker::Broker;

/// What connects are announced as (`$polyport/mqtt/claims`).
const CLAIMS: &str = "mqtt/claims";

#[derive(Serialize, Deserialize)]
struct Claim {
    client_id: String,
    /// The announcing broker ([`Broker::instance`]).
    broker: String,
}

/// Tells the other nodes that `client_id` connected here.
pub(crate) fn announce(broker: &Broker, client_id: &str) {
    let claim = Claim {
        client_id: client_id.to_string(),
        broker: broker.instance.clone(),
    };
    let Ok(body) = serde_json::to_vec(&claim) else {
        return;
    };
    if let Err(e) = broker.hub.announce_ephemeral(CLAIMS, body) {
        tracing::warn!(client = %client_id, error = %e, "announcing an MQTT connect to the other nodes failed");
    }
}

/// Follows the other nodes' announcements until the hub shuts down; following when it
/// returns.
pub(crate) async fn follow(broker: &Arc<Broker>) -> Result<(), HubError> {
    let Some(mut claims) = broker.hub.announcements(CLAIMS).await? else {
        return Ok(());
    };
    let broker = broker.clone();
    tokio::spawn(async move {
        while let Some(e) = claims.next().await {
            match serde_json::from_slice::<Claim>(&e.payload) {
                Ok(c) if c.broker != broker.instance => broker.claimed_elsewhere(&c.client_id),
                Ok(_) => {}
                Err(err) => tracing::debug!(error = %err, "unreadable MQTT claim ignored"),
            }
        }
    });
    Ok(())
}
