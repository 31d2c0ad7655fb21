//! State shared by all MQTT connections: who is connected (for session takeover), the
//! retained messages, and limits. Connections talk to each other only through this and
//! the Hub.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use polyport_core::{Hub, Topic, TopicFilter};
use tokio_util::sync::CancellationToken;

use crate::MqttConfig;
use crate::wire::MsgProps;

/// A retained message.
#[derive(Clone, Debug)]
pub(crate) struct Retained {
    pub(crate) payload: Bytes,
    pub(crate) qos: u8,
    pub(crate) props: MsgProps,
}

pub(crate) struct Broker {
    pub(crate) hub: Hub,
    pub(crate) cfg: MqttConfig,
    /// client id → (connection number, token that ends that connection on takeover).
    sessions: Mutex<HashMap<String, (u64, CancellationToken)>>,
    retained: RwLock<BTreeMap<String, Retained>>,
    next_conn: AtomicU64,
}

impl Broker {
    pub(crate) fn new(hub: Hub, cfg: MqttConfig) -> Arc<Self> {
        Arc::new(Self {
            hub,
            cfg,
            sessions: Mutex::new(HashMap::new()),
            retained: RwLock::new(BTreeMap::new()),
            next_conn: AtomicU64::new(1),
        })
    }

    pub(crate) fn next_connection(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection under its client id, ending any earlier connection with
    /// the same id (MQTT session takeover). Returns whether one was taken over.
    pub(crate) fn claim(&self, client_id: &str, conn: u64, token: CancellationToken) -> bool {
        let old = self
            .sessions
            .lock()
            .insert(client_id.to_string(), (conn, token));
        match old {
            Some((_, t)) => {
                t.cancel();
                true
            }
            None => false,
        }
    }

    /// Removes the registration if it is still this connection's.
    pub(crate) fn release(&self, client_id: &str, conn: u64) {
        let mut s = self.sessions.lock();
        if s.get(client_id).is_some_and(|(c, _)| *c == conn) {
            s.remove(client_id);
        }
    }

    /// Sets (or, with an empty payload, clears) the retained message of a topic.
    pub(crate) fn retain(&self, topic: &str, r: Retained) {
        let mut map = self.retained.write();
        if r.payload.is_empty() {
            map.remove(topic);
        } else {
            map.insert(topic.to_string(), r);
        }
    }

    /// Retained messages matching a filter.
    pub(crate) fn retained_for(&self, filter: &TopicFilter) -> Vec<(String, Retained)> {
        self.retained
            .read()
            .iter()
            .filter(|(t, _)| Topic::new(t).is_ok_and(|t| filter.matches(&t)))
            .map(|(t, r)| (t.clone(), r.clone()))
            .collect()
    }
}
