//! Finding what a STOMP destination names: on the cluster engine, what another node
//! declared is read from the store (`polyport_broker`'s `topology.rs`). Free functions
//! taking the broker, not the session, which is not `Sync`, across their awaits.

use std::sync::Arc;

use polyport_broker::{Broker, Queue};

use super::{Fatal, bad, internal};

/// A queue declared here or, on the cluster engine, through another node.
pub(super) async fn queue(broker: &Arc<Broker>, name: &str) -> Result<Option<Arc<Queue>>, Fatal> {
    broker.find_queue(name).await.map_err(internal)
}

pub(super) async fn exchange(
    broker: &Broker,
    name: &str,
) -> Result<polyport_broker::Exchange, Fatal> {
    let x = broker.find_exchange(name).await.map_err(internal)?;
    x.ok_or_else(|| {
        bad(
            "not_found",
            format!("NOT_FOUND - no exchange '{name}' in vhost '/'"),
        )
    })
}

pub(super) async fn existing_queue(
    broker: &Arc<Broker>,
    conn: u64,
    name: &str,
) -> Result<Arc<Queue>, Fatal> {
    let q = queue(broker, name).await?.ok_or_else(|| {
        bad(
            "not_found",
            format!("NOT_FOUND - no queue '{name}' in vhost '/'"),
        )
    })?;
    match q.declared.lock().exclusive {
        Some(owner) if owner != conn => Err(bad(
            "access_refused",
            format!("RESOURCE_LOCKED - queue '{name}' is exclusive to another connection"),
        )),
        _ => Ok(q.clone()),
    }
}
