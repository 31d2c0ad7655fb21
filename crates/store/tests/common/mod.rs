//! Shared harness for the Hub-over-store integration tests: a real `Hub` on a real store,
//! plus small helpers to read subscriptions with timeouts so a broken guarantee fails
//! the test instead of hanging it.
//!
//! The store is the embedded `SqliteStore` in a temporary directory, or with
//! `POLYPORT_TEST_STORE=postgres` the cluster engine's `PgStore` in a fresh schema of the
//! database `polyport_store::pg::test_url()` names (dropped after the test): the same
//! tests prove both engines.
// Each test file uses a different subset of the helpers.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::cmp::Ordering;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use polyport_core::query::parse_sort;
use polyport_core::schema::Rule;
use polyport_core::subscription::Delivery;
use polyport_core::{
    AuthContext, Bus, CollectionSpec, Durability, EventDraft, EventRef, Filter, Hub, HubConfig,
    HubError, Item, ListQuery, Origin, Record, SubscribeRequest, Subscription, Topic, TopicFilter,
};
use polyport_store::pg::{PgConfig, PgStore};
use polyport_store::{SqliteStore, StoreConfig};
use serde_json::{Map, Value};
use tempfile::TempDir;

/// How long any single expected item may take before the test fails.
pub(crate) const WAIT: Duration = Duration::from_secs(10);

/// One hub over one store in its own temporary data directory (or Postgres schema).
pub(crate) struct Env {
    pub(crate) dir: TempDir,
    /// The Postgres schema, when the tests run on that engine.
    schema: Option<String>,
    pub(crate) hub: Hub,
    pub(crate) ctx: AuthContext,
    hub_config: HubConfig,
    store_tweak: fn(&mut StoreConfig),
}

fn no_tweak(_: &mut StoreConfig) {}

/// Whether these tests run on the Postgres engine.
pub(crate) fn on_postgres() -> bool {
    std::env::var("POLYPORT_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// Opens a hub over the store in `dir`, or in Postgres `schema`.
pub(crate) fn open_hub(dir: &Path, hub_config: HubConfig, tweak: fn(&mut StoreConfig)) -> Hub {
    open_hub_on(dir, None, hub_config, tweak)
}

fn open_hub_on(
    dir: &Path,
    schema: Option<&str>,
    hub_config: HubConfig,
    tweak: fn(&mut StoreConfig),
) -> Hub {
    let bus = Bus::new();
    let mut cfg = StoreConfig::new(dir);
    tweak(&mut cfg);
    let sink = Arc::new(bus.clone());
    let store: Arc<dyn polyport_core::engine::Store> = match schema {
        Some(schema) => {
            let mut pg = PgConfig::new(polyport_store::pg::test_url());
            pg.schema = schema.to_string();
            pg.retention = cfg.retention;
            pg.max_batch = cfg.max_batch;
            pg.queue = cfg.queue;
            Arc::new(PgStore::open(pg, sink).expect("open postgres store"))
        }
        None => Arc::new(SqliteStore::open(cfg, sink).expect("open store")),
    };
    Hub::new(store, bus, hub_config)
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(schema) = self.schema.take() {
            // The blocking client cannot run on a thread driving Tokio.
            let _ = std::thread::spawn(move || {
                let _ = polyport_store::pg::drop_schema(&polyport_store::pg::test_url(), &schema);
            })
            .join();
        }
    }
}

impl Env {
    /// Default hub and store settings.
    pub(crate) fn new() -> Self {
        Self::with(HubConfig::default(), no_tweak)
    }

    /// Custom hub settings and a store-config tweak.
    pub(crate) fn with(hub_config: HubConfig, store_tweak: fn(&mut StoreConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let schema = on_postgres()
            .then(|| format!("t_{}", ulid::Ulid::new().to_string().to_ascii_lowercase()));
        let hub = open_hub_on(
            dir.path(),
            schema.as_deref(),
            hub_config.clone(),
            store_tweak,
        );
        Self {
            dir,
            schema,
            hub,
            ctx: AuthContext::anonymous(Origin("http")),
            hub_config,
            store_tweak,
        }
    }

    /// Two nodes of the cluster engine on one fresh Postgres schema, whatever
    /// `POLYPORT_TEST_STORE` says. The first owns the schema (drops it when dropped).
    pub(crate) fn postgres_pair() -> (Self, Self) {
        let schema = format!("t_{}", ulid::Ulid::new().to_string().to_ascii_lowercase());
        let node = |owner: bool| {
            let dir = tempfile::tempdir().expect("tempdir");
            let hub = open_hub_on(dir.path(), Some(&schema), HubConfig::default(), no_tweak);
            Self {
                dir,
                schema: owner.then(|| schema.clone()),
                hub,
                ctx: AuthContext::anonymous(Origin("http")),
                hub_config: HubConfig::default(),
                store_tweak: no_tweak,
            }
        };
        let a = node(true);
        (a, node(false))
    }

    /// Custom hub settings only.
    pub(crate) fn with_hub(hub_config: HubConfig) -> Self {
        Self::with(hub_config, no_tweak)
    }

    /// Shuts the hub down (flushing the store) and opens a fresh one on the same directory,
    /// as a process restart would.
    pub(crate) async fn reopen(&mut self) {
        self.hub.shutdown().await;
        self.hub = open_hub_on(
            self.dir.path(),
            self.schema.as_deref(),
            self.hub_config.clone(),
            self.store_tweak,
        );
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

pub(crate) fn spec(v: Value) -> CollectionSpec {
    serde_json::from_value(v).unwrap()
}

pub(crate) fn rules(e: &HubError) -> Vec<(String, Rule)> {
    e.field_errors()
        .iter()
        .map(|f| (f.field.clone(), f.rule))
        .collect()
}

pub(crate) fn query(filter: Option<&str>, sort: &str, limit: usize) -> ListQuery {
    ListQuery {
        filter: filter.map(|f| Filter::parse(f).unwrap()),
        sort: if sort.is_empty() {
            Vec::new()
        } else {
            parse_sort(sort).unwrap()
        },
        limit,
        cursor: None,
        count: false,
    }
}

pub(crate) fn ids(records: &[Record]) -> Vec<String> {
    records.iter().map(|r| r.id.clone()).collect()
}

/// Walks every page of a list with the given page size.
pub(crate) async fn walk(env: &Env, collection: &str, mut q: ListQuery) -> (Vec<Record>, usize) {
    let mut out = Vec::new();
    let mut pages = 0;
    loop {
        let page = env
            .hub
            .list_records(&env.ctx, collection, &q)
            .await
            .unwrap();
        pages += 1;
        assert!(page.items.len() <= q.limit, "page larger than the limit");
        out.extend(page.items);
        match page.next_cursor {
            Some(c) => q.cursor = Some(c),
            None => break,
        }
        assert!(pages < 10_000, "pagination does not terminate");
    }
    (out, pages)
}

pub(crate) fn subscribe_req(filter: &str) -> SubscribeRequest {
    SubscribeRequest {
        filters: vec![tf(filter)],
        ..Default::default()
    }
}

pub(crate) async fn subscribe(env: &Env, req: SubscribeRequest) -> Subscription {
    match env.hub.subscribe(&env.ctx, req).await {
        Ok(s) => s,
        Err(e) => panic!("subscribe failed: {e}"),
    }
}

/// Reads durable events until `n` have arrived; fails on notices.
pub(crate) async fn read_seqs(sub: &mut Subscription, n: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        out.push(seq(&next_delivery(sub).await.event));
    }
    out
}

/// Sort-key ordering as SQLite's `ORDER BY` sees `json_extract` values: NULL, then
/// numbers (bools are 0/1), then text by bytes.
#[derive(Clone, Debug, PartialEq, PartialOrd)]
enum SortVal {
    Null,
    Num(f64),
    Text(String),
}

fn sort_val(r: &Record, path: &[String]) -> SortVal {
    match r.lookup(path) {
        None | Some(Value::Null) => SortVal::Null,
        Some(Value::Bool(b)) => SortVal::Num(if b { 1.0 } else { 0.0 }),
        Some(Value::Number(n)) => SortVal::Num(n.as_f64().unwrap()),
        Some(Value::String(s)) => SortVal::Text(s),
        Some(other) => SortVal::Text(other.to_string()),
    }
}

pub(crate) fn model_order(records: &[Record], sort: &str) -> Vec<String> {
    let keys = parse_sort(sort).unwrap();
    let mut v = records.to_vec();
    v.sort_by(|a, b| {
        for k in &keys {
            let (x, y) = (sort_val(a, &k.path), sort_val(b, &k.path));
            let o = x.partial_cmp(&y).unwrap_or(Ordering::Equal);
            let o = if k.desc { o.reverse() } else { o };
            if o != Ordering::Equal {
                return o;
            }
        }
        a.id.cmp(&b.id)
    });
    ids(&v)
}
