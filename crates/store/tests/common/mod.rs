//! Shared harness for the Hub-over-SQLite integration tests: a real `Hub` on a real
//! `SqliteStore` in a temporary directory, plus small helpers to read subscriptions with
//! timeouts so a broken guarantee fails the test instead of hanging it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use polyport_core::subscription::Delivery;
use polyport_core::{
    AuthContext, Bus, Durability, EventDraft, EventRef, Hub, HubConfig, Item, Origin, Subscription,
    Topic, TopicFilter,
};
use polyport_store::{SqliteStore, StoreConfig};
use serde_json::{Map, Value};
use tempfile::TempDir;

/// How long any single expected item may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// One hub over one store in its own temporary data directory.
pub(crate) struct Env {
    pub(crate) dir: TempDir,
    pub(crate) hub: Hub,
    pub(crate) ctx: AuthContext,
    hub_config: HubConfig,
    store_tweak: fn(&mut StoreConfig),
}

fn no_tweak(_: &mut StoreConfig) {}

/// Opens a hub over the store in `dir`.
pub(crate) fn open_hub(dir: &Path, hub_config: HubConfig, tweak: fn(&mut StoreConfig)) -> Hub {
    let bus = Bus::new();
    let mut cfg = StoreConfig::new(dir);
    tweak(&mut cfg);
    let store = Arc::new(SqliteStore::open(cfg, Arc::new(bus.clone())).expect("open store"));
    Hub::new(store, bus, hub_config)
}

impl Env {
    /// Default hub and store settings.
    pub(crate) fn new() -> Self {
        Self::with(HubConfig::default(), no_tweak)
    }

    /// Custom hub settings and a store-config tweak.
    pub(crate) fn with(hub_config: HubConfig, store_tweak: fn(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let hub = open_hub(dir.path(), hub_config.clone(), store_tweak);
        Self {
            dir,
            hub,
            ctx: AuthContext::anonymous(Origin("http")),
            hub_config,
            store_tweak,
        }
    }

    /// Custom hub settings only.
    pub(crate) fn with_hub(hub_config: HubConfig) -> Self {
        Self::with(hub_config, no_tweak)
    }

    /// Shuts the hub down (flushing the store) and opens a fresh one on the same directory,
    /// as a process restart would.
    pub(crate) async fn reopen(&mut self) {
        self.hub.shutdown().await;
        self.hub = open_hub(self.dir.path(), self.hub_config.clone(), self.store_tweak);
    }

    /// Publishes a durable event and returns it.
    pub(crate) async fn publish(&self, topic: &str, payload: &str) -> EventRef {
        self.hub
            .publish(&self.ctx, draft(topic, payload, Durability::Durable))
            .await
            .expect("publish")
            .event
    }
}

/// An event draft.
pub(crate) fn draft(topic: &str, payload: &str, durability: Durability) -> EventDraft {
    let mut d = EventDraft::new(Topic::new(topic).expect("topic"), payload.to_string());
    d.content_type = Some("text/plain".into());
    d.durability = durability;
    d
}

/// A topic filter.
pub(crate) fn tf(s: &str) -> TopicFilter {
    TopicFilter::new(s).expect("topic filter")
}

/// A JSON object literal as a document map.
pub(crate) fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// The next item, failing the test on timeout, end of stream or error.
pub(crate) async fn next_item(sub: &mut Subscription) -> Item {
    match tokio::time::timeout(WAIT, sub.next()).await {
        Ok(Some(Ok(item))) => item,
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => panic!("no item within {WAIT:?}"),
    }
}

/// The next item, which must be an event.
pub(crate) async fn next_delivery(sub: &mut Subscription) -> Delivery {
    match next_item(sub).await {
        Item::Event(d) => d,
        Item::Notice(n) => panic!("expected an event, got notice {n:?}"),
    }
}

/// The next item if one arrives within `ms`.
pub(crate) async fn try_next(sub: &mut Subscription, ms: u64) -> Option<Item> {
    match tokio::time::timeout(Duration::from_millis(ms), sub.next()).await {
        Ok(Some(Ok(item))) => Some(item),
        Ok(Some(Err(e))) => panic!("subscription failed: {e}"),
        Ok(None) => panic!("subscription ended"),
        Err(_) => None,
    }
}

/// Asserts nothing arrives within `ms`.
pub(crate) async fn assert_quiet(sub: &mut Subscription, ms: u64) {
    if let Some(item) = try_next(sub, ms).await {
        panic!("expected no more items, got {item:?}");
    }
}

/// The sequence of a durable event.
pub(crate) fn seq(e: &EventRef) -> u64 {
    e.seq.expect("durable event has a seq")
}

/// `(event type, record id)` of a record-change event.
pub(crate) fn change(e: &EventRef) -> (String, String) {
    let p = e.json_payload().expect("change payload is JSON");
    (
        p["type"].as_str().expect("type").to_string(),
        p["record"]["id"].as_str().expect("record id").to_string(),
    )
}
