//! The cluster engine's store on PostgreSQL (issue 16, `docs/cluster.md`): records,
//! collections, the event log's outbox, consumer positions, adapter state and the
//! webhook outbox, for any number of Polyport nodes sharing one database.
//!
//! **No dual write.** A record change and its event are written in one Postgres
//! transaction, by the same writer logic as the embedded engine (`crate::writer` over
//! [`crate::tx::Tx`]): a change is never visible without its event or the other way
//! round. Events get their sequence in that transaction, under the row lock of
//! `log_head` that every node's batch takes first, so the log is gap-free and in commit
//! order across nodes, and a write's answer carries its sequence as on the embedded
//! engine. The `events` table is the outbox that a relay publishes to a JetStream stream
//! with `Nats-Msg-Id` deduplication and the expected last sequence, so the stream's
//! sequence is the event's. The other order (JetStream first, Postgres as a projection)
//! was rejected: an optimistic-lock check (`If-Match`) or a unique field must be decided
//! against the current records before the event exists, which a projection that lags
//! the stream cannot do without a second lock anyway.
//!
//! This store serves any number of nodes (`polyport serve --store postgres://…`): each
//! node's subscribers are fed every node's events in `seq` order by its log follower
//! (`follow.rs`, `LISTEN`/`NOTIFY` on Postgres; `polyport-cluster` relays the same log to
//! a JetStream stream for NATS clients, see `docs/cluster.md` on why nodes follow
//! Postgres), with collections and endpoints another node changed. There is no record
//! cache here: a read after another node's acknowledged write must see it, and a cache
//! invalidated by the follower would lag it.
//!
//! Blocking clients (the `postgres` crate): the writer is one thread, as the embedded
//! engine's, and reads run on Tokio's blocking pool, each on a pooled connection.

mod filter;
mod follow;
mod lease;
mod list;
mod row;
mod schema;
mod tx;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use polyport_core::engine::{
    CollectionMap, EventSink, LogState, Store, Submitted, WriteCommand, WriteOutcome,
};
use polyport_core::event::EventRef;
use polyport_core::query::{ListQuery, Page};
use polyport_core::schema::{Collection, CollectionSpec};
use polyport_core::webhook::{Attempt, Delivery, DeliveryStatus, Endpoint};
use polyport_core::{HubResult, Record};
use postgres::types::ToSql;
use postgres::{Client, GenericClient, NoTls};
use serde_json::Value;

pub use filter::{PgParam, compile_filter};

use crate::error::StoreError;
use crate::pool::Pool;
use crate::writer::{Handle, Retention, Shared, Writer};
use row::{DELIVERY_COLS, EVENT_COLS, RECORD_COLS, delivery_from_row, event_from_row};

/// Settings for the Postgres store.
#[derive(Clone, Debug)]
pub struct PgConfig {
    /// `postgres://user@host:port/database` (libpq's URL or key=value form).
    pub url: String,
    /// The schema holding Polyport's tables, created when missing: several deployments,
    /// or tests, can share a database. Lowercase letters, digits and `_`.
    pub schema: String,
    /// Event-log retention.
    pub retention: Retention,
    /// Connections for reads.
    pub readers: usize,
    /// Most writes committed together.
    pub max_batch: usize,
    /// Queued writes before writers wait.
    pub queue: usize,
}

impl PgConfig {
    /// Defaults for a database URL, in schema `polyport`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: "polyport".into(),
            retention: Retention::default(),
            // Each read holds its connection for a round trip to the server.
            readers: 16,
            max_batch: 512,
            queue: 8192,
        }
    }
}

/// Whether this node reaches Postgres, as its writer and log follower last found:
/// `/readyz` says not ready while it does not.
#[derive(Default)]
pub(crate) struct Health {
    down: parking_lot::Mutex<Option<String>>,
}

impl Health {
    pub(crate) fn failed(&self, e: &polyport_core::HubError) {
        if let polyport_core::HubError::Unavailable(why) = e {
            *self.down.lock() = Some(format!("PostgreSQL cannot be reached: {why}"));
        }
    }

    pub(crate) fn reached(&self) {
        *self.down.lock() = None;
    }

    fn ready(&self) -> Result<(), String> {
        self.down.lock().clone().map_or(Ok(()), Err)
    }
}

/// The Postgres store.
pub struct PgStore {
    health: Arc<Health>,
    leases: Arc<lease::Leases>,
    writer: Handle,
    /// Stops following the log when the store goes.
    follower: follow::Follower,
    shared: Arc<Shared>,
    readers: Arc<Pool<Reader>>,
}

/// A reader's connection, made again when the server closed it (a Postgres restart).
struct Reader {
    client: Option<Client>,
    url: String,
    schema: String,
    /// Statements prepared on `client`, by text: a read is then one round trip.
    stmts: std::collections::HashMap<String, postgres::Statement>,
}

impl Drop for Reader {
    /// A blocking client closes through a runtime of its own, which must not happen on a
    /// thread driving Tokio's (the store is often dropped there).
    fn drop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = std::thread::Builder::new()
                .name("polyport-pg-close".into())
                .spawn(move || drop(c));
        }
    }
}

impl Reader {
    /// The connection with its statements, made again when the server closed it (its
    /// statements went with it).
    fn conn(&mut self) -> Result<Conn<'_>, postgres::Error> {
        let c = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.stmts.clear();
                connect(&self.url, &self.schema)?
            }
        };
        Ok(Conn {
            client: self.client.insert(c),
            stmts: &mut self.stmts,
        })
    }
}

/// Statements kept per reader; past this (lists compile a statement per filter shape)
/// the cache starts over.
const READER_STATEMENTS: usize = 256;

/// A reader's connection for one read: queries by text, each prepared once.
struct Conn<'a> {
    client: &'a mut Client,
    stmts: &'a mut std::collections::HashMap<String, postgres::Statement>,
}

type Args<'a> = &'a [&'a (dyn ToSql + Sync)];

impl Conn<'_> {
    fn stmt(&mut self, sql: &str) -> Result<postgres::Statement, postgres::Error> {
        if let Some(s) = self.stmts.get(sql) {
            return Ok(s.clone());
        }
        if self.stmts.len() >= READER_STATEMENTS {
            self.stmts.clear();
        }
        let s = self.client.prepare(sql)?;
        self.stmts.insert(sql.to_string(), s.clone());
        Ok(s)
    }

    fn query(&mut self, sql: &str, args: Args<'_>) -> Result<Vec<postgres::Row>, postgres::Error> {
        let s = self.stmt(sql)?;
        self.client.query(&s, args)
    }

    fn query_opt(
        &mut self,
        sql: &str,
        args: Args<'_>,
    ) -> Result<Option<postgres::Row>, postgres::Error> {
        let s = self.stmt(sql)?;
        self.client.query_opt(&s, args)
    }

    fn query_one(&mut self, sql: &str, args: Args<'_>) -> Result<postgres::Row, postgres::Error> {
        let s = self.stmt(sql)?;
        self.client.query_one(&s, args)
    }
}

fn connect(url: &str, schema: &str) -> Result<Client, postgres::Error> {
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(&format!("SET search_path TO \"{schema}\""))?;
    Ok(c)
}

type Params = Vec<Box<dyn ToSql + Sync + Send>>;

fn bind(params: &[PgParam]) -> Params {
    params.iter().map(PgParam::to_sql).collect()
}

fn refs(params: &Params) -> Vec<&(dyn ToSql + Sync)> {
    params
        .iter()
        .map(|p| p.as_ref() as &(dyn ToSql + Sync))
        .collect()
}

/// What the node loads at start: the log's position and the schema.
fn load(
    client: &mut Client,
    epoch: String,
) -> Result<(LogState, CollectionMap, Vec<Arc<Endpoint>>), StoreError> {
    let last_seq = client
        .query_one("SELECT last_seq FROM log_head", &[])?
        .try_get::<_, i64>(0)? as u64;
    let first: Option<i64> = client
        .query_one("SELECT min(seq) FROM events", &[])?
        .try_get(0)?;
    let log = LogState {
        epoch,
        first_seq: first.map(|f| f as u64).unwrap_or(last_seq + 1),
        last_seq,
    };
    let (collections, endpoints) = load_schema(client)?;
    Ok((log, collections, endpoints))
}

/// Collections and webhook endpoints as committed.
fn load_schema(
    client: &mut impl GenericClient,
) -> Result<(CollectionMap, Vec<Arc<Endpoint>>), StoreError> {
    let mut collections = CollectionMap::new();
    for row in client.query("SELECT spec, created_at, updated_at FROM collections", &[])? {
        let spec: CollectionSpec = serde_json::from_str(row.try_get(0)?)
            .map_err(|e| StoreError::Corrupt(format!("collection spec: {e}")))?;
        let time = |i: usize| -> Result<_, StoreError> {
            Ok(polyport_core::record::parse_time(row.try_get(i)?).unwrap_or_default())
        };
        let c = Collection {
            created_at: time(1)?,
            updated_at: time(2)?,
            spec,
        };
        collections.insert(c.spec.name.clone(), Arc::new(c));
    }
    let mut endpoints = Vec::new();
    for row in client.query("SELECT body FROM webhook_endpoints ORDER BY id", &[])? {
        match serde_json::from_str::<Endpoint>(row.try_get(0)?) {
            Ok(ep) => endpoints.push(Arc::new(ep)),
            Err(e) => tracing::error!(error = %e, "unreadable webhook endpoint skipped"),
        }
    }
    Ok((collections, endpoints))
}

impl PgStore {
    /// Connects, creates or upgrades the tables, and starts the writer; committed events
    /// are handed to `sink` in order. Blocks while it connects (as the embedded store
    /// blocks opening its file); must be called inside a Tokio runtime.
    pub fn open(config: PgConfig, sink: Arc<dyn EventSink>) -> Result<Self, StoreError> {
        if !schema::valid_schema(&config.schema) {
            return Err(StoreError::Schema(format!(
                "'{}' is not a schema name Polyport uses (lowercase letters, digits, _)",
                config.schema
            )));
        }
        let cfg = &config;
        // The blocking client runs a runtime of its own, which cannot start on a thread
        // that is driving Tokio's.
        let opened = std::thread::scope(|s| {
            s.spawn(move || -> Result<_, StoreError> {
                let mut admin = Client::connect(&cfg.url, NoTls)?;
                let epoch = schema::migrate(&mut admin, &cfg.schema)?;
                drop(admin);
                let mut writer = connect(&cfg.url, &cfg.schema)?;
                let (log, collections, endpoints) = load(&mut writer, epoch)?;
                // Connected on first use: a node holds as many as its reads overlap.
                let readers = (0..cfg.readers.max(1))
                    .map(|_| Reader {
                        client: None,
                        url: cfg.url.clone(),
                        schema: cfg.schema.clone(),
                        stmts: Default::default(),
                    })
                    .collect::<Vec<_>>();
                Ok((writer, readers, log, collections, endpoints))
            })
            .join()
        });
        let (writer_client, readers, log, collections, endpoints) =
            opened.map_err(|_| StoreError::Corrupt("opening the store panicked".into()))??;
        tracing::info!(
            schema = %config.schema,
            epoch = %log.epoch,
            first_seq = log.first_seq,
            last_seq = log.last_seq,
            collections = collections.len(),
            "postgres store opened"
        );
        let last_seq = log.last_seq;
        let shared = Arc::new(Shared::new(
            collections,
            endpoints,
            log,
            crate::cache::RecordCache::new(0),
        ));
        // The writer starts at schema version 0, so its first batch reads the current
        // one (and what this load saw) under the lock.
        let health = Arc::new(Health::default());
        let w = Writer::new(
            tx::PgDb {
                client: Some(writer_client),
                url: config.url.clone(),
                schema: config.schema.clone(),
                stmts: tx::Statements::default(),
                schema_version: 0,
                used: std::time::Instant::now(),
                channel: schema::channel(&config.schema),
                health: health.clone(),
            },
            shared.clone(),
            None,
            config.retention,
            config.max_batch.max(1),
        );
        let follower = follow::Follower::start(
            config.url.clone(),
            config.schema.clone(),
            shared.clone(),
            Arc::new(crate::dispatch::Dispatch::start(sink)),
            last_seq,
            health.clone(),
        )?;
        Ok(Self {
            leases: lease::Leases::new(config.url.clone(), config.schema.clone()),
            health,
            follower,
            writer: Handle::start(w, config.queue, || {})?,
            shared,
            readers: Arc::new(Pool::new(readers)),
        })
    }

    /// Runs a read on a pooled connection on the blocking pool. A pooled connection the
    /// server ended since its last use (a Postgres restart; the client learns it only
    /// from the next query) is replaced and the read tried once more, so the first
    /// reads after the database is back do not fail for it.
    async fn read<R: Send + 'static>(
        &self,
        f: impl Fn(&mut Conn<'_>) -> Result<R, postgres::Error> + Send + 'static,
    ) -> HubResult<R> {
        self.readers
            .run(move |r: &mut Reader| match f(&mut r.conn()?) {
                Err(e) if crate::error::pg_unreachable(&e) => {
                    r.client = None;
                    f(&mut r.conn()?)
                }
                other => other,
            })
            .await
    }
}

#[async_trait]
impl Store for PgStore {
    async fn write(&self, cmd: WriteCommand) -> HubResult<WriteOutcome> {
        self.submit(cmd).await?.await
    }

    async fn submit(&self, cmd: WriteCommand) -> HubResult<Submitted> {
        self.writer.submit(cmd).await
    }

    fn write_pressure(&self) -> f32 {
        self.writer.pressure()
    }

    async fn get_record(&self, collection: &str, id: &str) -> HubResult<Option<Arc<Record>>> {
        let (c, i) = (collection.to_string(), id.to_string());
        self.read(move |client| {
            let row = client.query_opt(
                &format!("SELECT {RECORD_COLS} FROM records WHERE collection = $1 AND id = $2"),
                &[&c, &i],
            )?;
            row.as_ref()
                .map(row::record_from_row)
                .transpose()
                .map(|r| r.map(Arc::new))
        })
        .await
    }

    async fn get_records(&self, collection: &str, ids: &[String]) -> HubResult<Vec<Record>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let (c, ids) = (collection.to_string(), ids.to_vec());
        self.read(move |client| {
            client
                .query(
                    &format!(
                        "SELECT {RECORD_COLS} FROM records WHERE collection = $1 AND id = ANY($2)"
                    ),
                    &[&c, &ids],
                )?
                .iter()
                .map(row::record_from_row)
                .collect()
        })
        .await
    }

    async fn list_records(&self, collection: &str, query: &ListQuery) -> HubResult<Page> {
        let indexed = query
            .filter
            .as_ref()
            .and_then(crate::sql::lookup_field)
            .zip(self.collections().get(collection).cloned())
            .is_some_and(|(f, c)| crate::sql::field_index(&c.spec, f).is_some());
        let l = list::compile(collection, query, indexed)?;
        let (sql, params, count, kinds) = (l.sql, bind(&l.params), l.count, l.kinds);
        let (rows, total) = self
            .read(move |client| {
                let rows = client.query(&sql, &refs(&params))?;
                let mut out = Vec::with_capacity(rows.len());
                for r in &rows {
                    let rec = row::record_from_row(r)?;
                    let mut keys = Vec::with_capacity(kinds.len());
                    for (i, k) in kinds.iter().enumerate() {
                        keys.push(match k {
                            list::Kind::Num => Value::from(r.try_get::<_, f64>(6 + i)?),
                            list::Kind::Text => Value::from(r.try_get::<_, String>(6 + i)?),
                        });
                    }
                    out.push((rec, keys));
                }
                let total = match &count {
                    Some((sql, params)) => {
                        let params = bind(params);
                        let n: i64 = client.query_one(sql, &refs(&params))?.try_get(0)?;
                        Some(n as u64)
                    }
                    None => None,
                };
                Ok((out, total))
            })
            .await?;
        Ok(crate::list::page(rows, l.limit, &l.spec, total))
    }

    async fn read_events(&self, after: u64, limit: usize) -> HubResult<Vec<EventRef>> {
        self.read(move |client| {
            let rows = client.query(
                &format!("SELECT {EVENT_COLS} FROM events WHERE seq > $1 ORDER BY seq LIMIT $2"),
                &[&(after as i64), &(limit as i64)],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.extend(event_from_row(r)?);
            }
            Ok(out)
        })
        .await
    }

    async fn load_consumer(&self, key: &str) -> HubResult<Option<u64>> {
        let key = key.to_string();
        self.read(move |client| {
            client
                .query_opt(
                    "SELECT position FROM consumers WHERE key = $1",
                    &[&key.as_bytes()],
                )?
                .map(|r| r.try_get::<_, i64>(0).map(|p| p as u64))
                .transpose()
        })
        .await
    }

    async fn count_consumers_owned(&self, owner: &str) -> HubResult<usize> {
        let owner = owner.to_string();
        self.read(move |client| {
            let n: i64 = client
                .query_one("SELECT count(*) FROM consumers WHERE owner = $1", &[&owner])?
                .try_get(0)?;
            Ok(n as usize)
        })
        .await
    }

    async fn load_state(&self, namespace: &str) -> HubResult<Vec<(String, Bytes)>> {
        let ns = namespace.to_string();
        self.read(move |client| {
            client
                .query(
                    "SELECT key, value FROM adapter_state WHERE namespace = $1 ORDER BY key",
                    &[&ns],
                )?
                .iter()
                .map(|r| {
                    let key = String::from_utf8_lossy(r.try_get::<_, &[u8]>(0)?).into_owned();
                    Ok((key, Bytes::from(r.try_get::<_, Vec<u8>>(1)?)))
                })
                .collect()
        })
        .await
    }

    async fn get_state(&self, namespace: &str, key: &str) -> HubResult<Option<Bytes>> {
        let (ns, key) = (namespace.to_string(), key.as_bytes().to_vec());
        self.read(move |client| {
            client
                .query_opt(
                    "SELECT value FROM adapter_state WHERE namespace = $1 AND key = $2",
                    &[&ns, &key],
                )?
                .map(|r| Ok(Bytes::from(r.try_get::<_, Vec<u8>>(0)?)))
                .transpose()
        })
        .await
    }

    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        status: Option<DeliveryStatus>,
        before: Option<u64>,
        limit: usize,
    ) -> HubResult<Vec<Delivery>> {
        let ep = endpoint_id.to_string();
        let status = status.map(|s| s.as_str().to_string());
        let before = before.map(|b| b as i64).unwrap_or(i64::MAX);
        self.read(move |client| {
            client
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLS} FROM webhook_deliveries
                         WHERE endpoint_id = $1 AND ($2::text IS NULL OR status = $2) AND seq < $3
                         ORDER BY seq DESC LIMIT $4"
                    ),
                    &[&ep, &status, &before, &(limit as i64)],
                )?
                .iter()
                .map(delivery_from_row)
                .collect()
        })
        .await
    }

    async fn next_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        due_by: Option<chrono::DateTime<chrono::Utc>>,
    ) -> HubResult<Vec<Delivery>> {
        // Without a time, every pending one is due.
        let due = due_by.map_or(i64::MAX, |t| t.timestamp_micros());
        let ep = endpoint_id.to_string();
        self.read(move |client| {
            client
                .query(
                    &format!(
                        "SELECT {DELIVERY_COLS} FROM webhook_deliveries
                         WHERE endpoint_id = $1 AND status = 'pending'
                           AND (next_attempt_at IS NULL OR next_attempt_at <= $3)
                         ORDER BY seq LIMIT $2"
                    ),
                    &[&ep, &(limit as i64), &due],
                )?
                .iter()
                .map(delivery_from_row)
                .collect()
        })
        .await
    }

    async fn get_delivery(&self, endpoint_id: &str, seq: u64) -> HubResult<Option<Delivery>> {
        let ep = endpoint_id.to_string();
        self.read(move |client| {
            client
                .query_opt(
                    &format!(
                        "SELECT {DELIVERY_COLS} FROM webhook_deliveries WHERE endpoint_id = $1 AND seq = $2"
                    ),
                    &[&ep, &(seq as i64)],
                )?
                .as_ref()
                .map(delivery_from_row)
                .transpose()
        })
        .await
    }

    async fn list_attempts(&self, endpoint_id: &str, seq: u64) -> HubResult<Vec<Attempt>> {
        let ep = endpoint_id.to_string();
        self.read(move |client| {
            let rows = client.query(
                "SELECT body FROM webhook_attempts WHERE endpoint_id = $1 AND seq = $2 ORDER BY number",
                &[&ep, &(seq as i64)],
            )?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                if let Ok(a) = serde_json::from_str(r.try_get(0)?) {
                    out.push(a);
                }
            }
            Ok(out)
        })
        .await
    }

    fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.shared.endpoints.load_full()
    }

    fn collections(&self) -> Arc<CollectionMap> {
        self.shared.collections.load_full()
    }

    fn log_state(&self) -> LogState {
        self.shared.log.lock().clone()
    }

    async fn close(&self) {
        self.follower.stop();
        self.writer.close().await;
    }

    fn ready(&self) -> Result<(), String> {
        self.health.ready()
    }

    fn engine(&self) -> &'static str {
        "cluster"
    }

    async fn try_lease(
        &self,
        name: &str,
    ) -> HubResult<Option<Box<dyn polyport_core::cluster::Lease>>> {
        let (leases, name) = (self.leases.clone(), name.to_string());
        tokio::task::spawn_blocking(move || leases.try_take(&name))
            .await
            .map_err(|e| polyport_core::HubError::Storage(format!("lease task failed: {e}")))?
    }
}

/// The database tests use: `POLYPORT_TEST_POSTGRES`, or this machine's.
#[doc(hidden)]
pub fn test_url() -> String {
    std::env::var("POLYPORT_TEST_POSTGRES")
        .unwrap_or_else(|_| "host=127.0.0.1 user=postgres dbname=test".into())
}

/// FNV-1a over bytes: names derived from it (unique-index names, lease keys) persist in
/// the database, so the hash must not change between releases as std's may.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Drops a schema with everything in it (benchmarks' and tests' throw-away schemas).
/// Blocking: call it off Tokio's worker threads.
pub fn drop_schema(url: &str, schema: &str) -> Result<(), StoreError> {
    if !schema::valid_schema(schema) {
        return Err(StoreError::Schema(format!(
            "'{schema}' is not a schema name"
        )));
    }
    let mut c = Client::connect(url, NoTls)?;
    c.batch_execute(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))?;
    Ok(())
}
