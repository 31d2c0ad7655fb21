//! The store: records, collections and the event log, on one of two engines.
//!
//! - `writer/`: the single writer thread with group commit (`mod.rs`); the only place
//!   sequences are assigned and the only place that calls the [`EventSink`]. Commands are
//!   applied per noun: `collections.rs`, `records.rs`, `events.rs`, `consumers.rs`
//!   (group positions, adapter state); `retention.rs` trims the log. It is written over
//!   `tx.rs`: the steps of one transaction (`Tx`) and the writer's connection (`Db`).
//! - The embedded engine, [`SqliteStore`] (this file): one SQLite database (WAL mode) in
//!   the data directory; `sqlite_tx.rs` is its `Tx`, `db.rs` its schema and row decoding,
//!   `sql.rs` the filter language compiled to its SQL, `cache.rs` hot records in memory,
//!   kept in commit order by the writer.
//! - The cluster engine, [`pg::PgStore`] (`pg/`): the same on PostgreSQL.
//! - `webhooks.rs`: the webhook outbox (endpoints, deliveries, attempts); `list.rs`
//!   paging whatever the engine; `pool.rs` the blocking read connections.
//!
//! Records and their change events are written in one transaction, so a change is never
//! visible without its event or the other way round, and after `kill -9` every
//! acknowledged write is there (the acknowledgement waits for the durable commit).

mod cache;
mod checkpoint;
mod db;
mod dispatch;
mod error;
mod list;
mod migrate;
pub mod pg;
mod pool;
mod sql;
mod sqlite_tx;
mod tx;
mod webhooks;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use polyport_core::engine::{
    CollectionMap, EventSink, LogState, Store, WriteCommand, WriteOutcome,
};
use polyport_core::event::EventRef;
use polyport_core::hot_metrics::HotCounter;
use polyport_core::query::{ListQuery, Page};
use polyport_core::webhook::{Attempt, Delivery, DeliveryStatus, Endpoint};
use polyport_core::{HubError, HubResult, Record};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};

pub use error::StoreError;
pub use writer::Retention;

use crate::db::{EVENT_COLS, RECORD_COLS, event_from_row, record_from_row};
use crate::sql::{after_condition, compile_filter, json_to_sql, sort_expr, sql_to_json};
use crate::writer::{Shared, Writer};

/// Settings for the embedded store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// Directory holding `polyport.db`.
    pub data_dir: PathBuf,
    /// Event-log retention.
    pub retention: Retention,
    /// Read-only connections (concurrent readers).
    pub readers: usize,
    /// Most writes committed together.
    pub max_batch: usize,
    /// Queued writes before writers wait.
    pub queue: usize,
    /// Records kept in memory for reads by id (0: off).
    pub record_cache: usize,
}

impl StoreConfig {
    /// Defaults for a data directory.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            retention: Retention::default(),
            readers: 4,
            max_batch: 512,
            queue: 8192,
            record_cache: 10_000,
        }
    }
}

/// The embedded SQLite store.
pub struct SqliteStore {
    writer: writer::Handle,
    shared: Arc<Shared>,
    readers: Arc<pool::Pool<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `config.data_dir`; committed events are
    /// handed to `sink` in order. Must be called inside a Tokio runtime (retention runs
    /// on a timer).
    pub fn open(config: StoreConfig, sink: Arc<dyn EventSink>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&config.data_dir)?;
        let path = config.data_dir.join("polyport.db");
        let conn = db::open_writer(&path)?;
        let log = read_log_state(&conn)?;
        let collections = db::load_collections(&conn)?;
        for c in collections.values() {
            // Collections from before relation fields were indexed get their indexes.
            sqlite_tx::ensure_field_indexes(&conn, &c.spec)
                .map_err(|e| StoreError::Schema(e.to_string()))?;
        }
        let endpoints = webhooks::load_endpoints(&conn)?;
        tracing::info!(
            path = %path.display(),
            epoch = %log.epoch,
            first_seq = log.first_seq,
            last_seq = log.last_seq,
            collections = collections.len(),
            "store opened"
        );
        let shared = Arc::new(Shared::new(
            collections,
            endpoints,
            log,
            cache::RecordCache::new(config.record_cache),
        ));
        let mut readers = Vec::with_capacity(config.readers.max(1));
        for _ in 0..config.readers.max(1) {
            readers.push(db::open_reader(&path)?);
        }
        let w = Writer::new(
            sqlite_tx::SqliteDb::new(conn),
            shared.clone(),
            Some(Arc::new(dispatch::Dispatch::start(sink))),
            config.retention,
            config.max_batch.max(1),
        );
        let checkpoints = checkpoint::Checkpointer::start(&path)?;
        // Stopped after the writer's last checkpoint at close.
        let writer = writer::Handle::start(w, config.queue, move || drop(checkpoints))?;
        Ok(Self {
            writer,
            shared,
            readers: Arc::new(pool::Pool::new(readers)),
        })
    }

    /// The database file inside a data directory.
    pub fn db_path(data_dir: &Path) -> PathBuf {
        data_dir.join("polyport.db")
    }

    /// Runs a read on a pooled connection on the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> HubResult<R> {
        self.readers.run(move |c| f(c)).await
    }
}

fn read_log_state(conn: &Connection) -> Result<LogState, StoreError> {
    let epoch: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let epoch = match epoch {
        Some(e) => e,
        None => {
            let e = ulid::Ulid::new().to_string().to_ascii_lowercase();
            conn.execute(
                "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
                params![e],
            )?;
            e
        }
    };
    let meta_last: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get(0)
        })
        .optional()?;
    let meta_last = meta_last.and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(seq), max(seq) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let last_seq = meta_last.max(max.unwrap_or(0) as u64);
    let first_seq = min.map(|m| m as u64).unwrap_or(last_seq + 1);
    Ok(LogState {
        epoch,
        first_seq,
        last_seq,
    })
}

#[async_trait]
impl Store for SqliteStore {
    async fn write(&self, cmd: WriteCommand) -> HubResult<WriteOutcome> {
        self.submit(cmd).await?.await
    }

    async fn submit(&self, cmd: WriteCommand) -> HubResult<polyport_core::engine::Submitted> {
        self.writer.submit(cmd).await
    }

    fn write_pressure(&self) -> f32 {
        self.writer.pressure()
    }

    async fn get_record(&self, collection: &str, id: &str) -> HubResult<Option<Arc<Record>>> {
        let cache = &self.shared.records;
        if let Some(hit) = cache.get(collection, id) {
            static HIT: HotCounter =
                HotCounter::labelled("polyport_record_cache_total", "result", "hit");
            HIT.increment(1);
            return Ok(Some(hit));
        }
        let ticket = cache.enabled().then(|| cache.ticket(collection, id));
        let (c, i) = (collection.to_string(), id.to_string());
        let found = self
            .read(move |conn| {
                conn.prepare_cached(&format!(
                    "SELECT {RECORD_COLS} FROM records WHERE collection = ?1 AND id = ?2"
                ))?
                .query_row(params![c, i], record_from_row)
                .optional()
            })
            .await?;
        let found = found.map(Arc::new);
        if let (Some(t), Some(r)) = (ticket, &found) {
            static MISS: HotCounter =
                HotCounter::labelled("polyport_record_cache_total", "result", "miss");
            MISS.increment(1);
            cache.fill(t, r.clone());
        }
        Ok(found)
    }

    async fn get_records(&self, collection: &str, ids: &[String]) -> HubResult<Vec<Record>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let c = collection.to_string();
        let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {RECORD_COLS} FROM records
                 WHERE collection = ?1 AND id IN (SELECT value FROM json_each(?2))"
            ))?;
            stmt.query_map(params![c, ids], record_from_row)?.collect()
        })
        .await
    }

    async fn list_records(&self, collection: &str, query: &ListQuery) -> HubResult<Page> {
        let index = query
            .filter
            .as_ref()
            .and_then(sql::lookup_field)
            .and_then(|f| sqlite_tx::field_index(&self.collections().get(collection)?.spec, f));
        let ListSql {
            sql,
            count_sql,
            params,
            count_params,
            from,
            spec,
            nkeys,
            limit,
        } = list_sql(collection, query, index)?;
        let want_count = query.count;
        let (rows, total) = self
            .read(move |conn| {
                let mut stmt = prepare_indexed(conn, &sql, &from)?;
                let rows = stmt
                    .query_map(params_from_iter(params.iter()), |row| {
                        let rec = record_from_row(row)?;
                        let mut keys = Vec::with_capacity(nkeys);
                        for i in 0..nkeys {
                            keys.push(sql_to_json(&row.get::<_, SqlValue>(6 + i)?));
                        }
                        Ok((rec, keys))
                    })?
                    .collect::<rusqlite::Result<Vec<_>>>()?;
                let total = if want_count {
                    Some(
                        prepare_indexed(conn, &count_sql, &from)?
                            .query_row(params_from_iter(count_params.iter()), |r| {
                                r.get::<_, i64>(0)
                            })? as u64,
                    )
                } else {
                    None
                };
                Ok((rows, total))
            })
            .await?;
        Ok(list::page(rows, limit, &spec, total))
    }

    async fn read_events(&self, after: u64, limit: usize) -> HubResult<Vec<EventRef>> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLS} FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2"
            ))?;
            stmt.query_map(params![after as i64, limit as i64], event_from_row)?
                .collect()
        })
        .await
    }

    async fn load_consumer(&self, key: &str) -> HubResult<Option<u64>> {
        let key = key.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT position FROM consumers WHERE key = ?1")?
                .query_row(params![key], |r| r.get::<_, i64>(0))
                .optional()
                .map(|o| o.map(|p| p as u64))
        })
        .await
    }

    async fn count_consumers_owned(&self, owner: &str) -> HubResult<usize> {
        let owner = owner.to_string();
        self.read(move |conn| {
            conn.prepare_cached("SELECT COUNT(*) FROM consumers WHERE owner = ?1")?
                .query_row(params![owner], |r| r.get::<_, i64>(0))
                .map(|n| n as usize)
        })
        .await
    }

    async fn load_state(&self, namespace: &str) -> HubResult<Vec<(String, Bytes)>> {
        let ns = namespace.to_string();
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT key, value FROM adapter_state WHERE namespace = ?1 ORDER BY key",
            )?;
            stmt.query_map(params![ns], |r| {
                Ok((r.get::<_, String>(0)?, Bytes::from(r.get::<_, Vec<u8>>(1)?)))
            })?
            .collect()
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
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT {} FROM webhook_deliveries
                 WHERE endpoint_id = ?1 AND (?2 IS NULL OR status = ?2) AND seq < ?3
                 ORDER BY seq DESC LIMIT ?4",
                webhooks::DELIVERY_COLS
            ))?;
            stmt.query_map(
                params![ep, status, before, limit as i64],
                webhooks::delivery_from_row,
            )?
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
        let ep = endpoint_id.to_string();
        self.read(move |conn| webhooks::next_deliveries(conn, &ep, limit, due_by))
            .await
    }

    async fn get_delivery(&self, endpoint_id: &str, seq: u64) -> HubResult<Option<Delivery>> {
        let ep = endpoint_id.to_string();
        self.read(move |conn| {
            conn.prepare_cached(&format!(
                "SELECT {} FROM webhook_deliveries WHERE endpoint_id = ?1 AND seq = ?2",
                webhooks::DELIVERY_COLS
            ))?
            .query_row(params![ep, seq as i64], webhooks::delivery_from_row)
            .optional()
        })
        .await
    }

    async fn list_attempts(&self, endpoint_id: &str, seq: u64) -> HubResult<Vec<Attempt>> {
        let ep = endpoint_id.to_string();
        self.read(move |conn| webhooks::attempts(conn, &ep, seq))
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
        self.writer.close().await;
    }
}

/// A list statement reading `from` (the records, perhaps through a field's index), or the
/// records without the index when it is gone: a schema change that drops one commits
/// before the collections a concurrent read looked at are replaced.
/// A list query compiled for SQLite.
struct ListSql {
    sql: String,
    count_sql: String,
    params: Vec<SqlValue>,
    count_params: Vec<SqlValue>,
    from: String,
    spec: String,
    nkeys: usize,
    limit: usize,
}

/// Compiles a list of `collection`, read through `index` when the filter looks a field up
/// by one. The collection is spelled out, not bound: a statement whose `collection = ?`
/// the planner matched against a partial index's `WHERE collection = 'c'` is re-prepared
/// at every run with a new binding (SQLite's plan depends on the bound value then), and
/// every field index is partial. Names are identifiers, so the literal needs no escaping
/// beyond quotes.
fn list_sql(collection: &str, query: &ListQuery, index: Option<String>) -> HubResult<ListSql> {
    let mut params: Vec<SqlValue> = Vec::new();
    let mut where_sql = format!("collection = '{}'", collection.replace('\'', "''"));
    // A lookup by a field with an index (unique, or a relation) reads that index: the
    // planner, knowing nothing of the data, prefers scanning the collection.
    let from = match &index {
        Some(idx) => format!("records INDEXED BY \"{idx}\""),
        None => "records".to_string(),
    };
    if let Some(f) = &query.filter {
        where_sql.push_str(" AND ");
        where_sql.push_str(&compile_filter(f, &mut params));
    }
    let count_sql = format!("SELECT count(*) FROM {from} WHERE {where_sql}");
    let count_params = params.clone();
    let (keys, spec) = list::sort_keys(query);
    let exprs: Vec<(String, bool)> = keys
        .iter()
        .map(|k| (sort_expr(k, &mut params), k.desc))
        .collect();
    if let Some(cur) = list::cursor(query, &spec, exprs.len())? {
        let values: Vec<SqlValue> = cur
            .k
            .iter()
            .map(json_to_sql)
            .collect::<Option<_>>()
            .ok_or_else(|| HubError::InvalidCursor("malformed cursor value".into()))?;
        where_sql.push_str(" AND ");
        where_sql.push_str(&after_condition(&exprs, &values, &cur.id, &mut params));
    }
    let order: Vec<String> = exprs
        .iter()
        .map(|(e, d)| format!("{e} {}", if *d { "DESC" } else { "ASC" }))
        .chain(std::iter::once("id ASC".to_string()))
        .collect();
    let select_keys: String = exprs.iter().map(|(e, _)| format!(", {e}")).collect();
    let limit = query.limit.max(1);
    let sql = format!(
        "SELECT {RECORD_COLS}{select_keys} FROM {from} WHERE {where_sql} ORDER BY {} LIMIT {}",
        order.join(", "),
        limit + 1
    );
    Ok(ListSql {
        sql,
        count_sql,
        params,
        count_params,
        from,
        spec,
        nkeys: exprs.len(),
        limit,
    })
}

fn prepare_indexed<'c>(
    conn: &'c rusqlite::Connection,
    sql: &str,
    from: &str,
) -> rusqlite::Result<rusqlite::CachedStatement<'c>> {
    match conn.prepare_cached(sql) {
        Err(e) if from != "records" && e.to_string().contains("no such index") => {
            conn.prepare_cached(&sql.replacen(from, "records", 1))
        }
        r => r,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn a_list_through_a_dropped_index_reads_the_records_instead() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE records (collection TEXT, id TEXT, data TEXT);
             INSERT INTO records VALUES ('posts', 'p1', '{}');",
        )
        .unwrap();
        let from = "records INDEXED BY \"ix:posts:author\"";
        let sql = format!("SELECT id FROM {from} WHERE collection = 'posts'");
        let mut stmt = super::prepare_indexed(&conn, &sql, from).unwrap();
        let ids: Vec<String> = stmt
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(ids, ["p1"]);
        // Any other failure is still one.
        assert!(super::prepare_indexed(&conn, "SELECT nope FROM records", from).is_err());
    }

    /// A list filtered by a relation, run again with other values, reuses its prepared
    /// statement as it is: binding a collection the planner matched against the partial
    /// index re-prepared it (parse and plan) at every run, a fifth of a GraphQL page's CPU.
    #[test]
    fn a_relation_lookup_is_not_re_prepared_at_every_run() {
        use polyport_core::query::{Filter, ListQuery};
        use polyport_core::schema::CollectionSpec;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("polyport.db");
        let w = crate::db::open_writer(&path).unwrap();
        let spec: CollectionSpec = serde_json::from_value(serde_json::json!({
            "name": "posts",
            "fields": [{"name": "author", "type": "relation", "collection": "users"}]
        }))
        .unwrap();
        crate::sqlite_tx::ensure_field_indexes(&w, &spec).unwrap();
        let index = crate::sqlite_tx::field_index(&spec, "author");
        assert!(index.is_some());
        let reader = crate::db::open_reader(&path).unwrap();
        let mut sqls = Vec::new();
        for who in ["u1", "u2", "u3", "u4"] {
            let q = ListQuery {
                filter: Some(
                    Filter::parse(&format!(r#"author = "{who}" || author = "x""#)).unwrap(),
                ),
                limit: 20,
                ..ListQuery::default()
            };
            let l = super::list_sql("posts", &q, index.clone()).unwrap();
            let mut stmt = super::prepare_indexed(&reader, &l.sql, &l.from).unwrap();
            let n = stmt
                .query_map(super::params_from_iter(l.params.iter()), |_| Ok(()))
                .unwrap()
                .count();
            assert_eq!(n, 0);
            let reprepared = stmt.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(reprepared, 0, "{}", l.sql);
            sqls.push(l.sql);
        }
        sqls.dedup();
        assert_eq!(sqls.len(), 1, "one statement for every value");
    }
}
