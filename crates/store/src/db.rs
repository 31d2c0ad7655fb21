//! Opening connections, the schema, and row decoding shared by the writer and readers.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use polyport_core::Record;
use polyport_core::event::{Event, Origin};
use polyport_core::record::parse_time;
use polyport_core::schema::{Collection, CollectionSpec};
use polyport_core::topic::Topic;
use rusqlite::{Connection, OpenFlags, Row};

use crate::error::StoreError;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS collections (
    name       TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS records (
    collection TEXT NOT NULL,
    id         TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    version    INTEGER NOT NULL,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS records_created ON records (collection, created_at, id);
CREATE TABLE IF NOT EXISTS events (
    seq          INTEGER PRIMARY KEY,
    id           TEXT NOT NULL,
    topic        TEXT NOT NULL,
    type         TEXT NOT NULL,
    time         INTEGER NOT NULL,
    content_type TEXT,
    headers      TEXT,
    payload      BLOB NOT NULL,
    origin       TEXT NOT NULL,
    attrs        TEXT,
    sender       TEXT
);
CREATE TABLE IF NOT EXISTS consumers (
    key      TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    owner    TEXT
);
CREATE TABLE IF NOT EXISTS adapter_state (
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL,
    value     BLOB NOT NULL,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
"#;

/// Opens the writer connection and creates the schema.
pub(crate) fn open_writer(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    // WAL lets readers run beside the one writer; synchronous=FULL fsyncs the WAL at every
    // commit, which is what makes an acknowledgement mean "on disk".
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoints run on their own thread (`checkpoint.rs`), never inside a commit.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "foreign_keys", "OFF")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.execute_batch(SCHEMA)?;
    conn.execute_batch(crate::webhooks::SCHEMA)?;
    crate::migrate::run(&conn)?;
    Ok(conn)
}

/// Opens a read-only connection.
pub(crate) fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    Ok(conn)
}

/// Prepared statements kept per connection: more than the store's distinct statements,
/// so none is parsed again (rusqlite keeps 16 by default).
const STATEMENT_CACHE: usize = 128;

/// Runs a statement through the connection's statement cache: the writer runs the same
/// few statements for every write, and parsing their SQL each time was a tenth of a
/// webhook delivery's CPU (`polyport bench webhooks`, perf).
pub(crate) fn exec(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute(params)
}

/// Columns of a record row, in this order.
pub(crate) const RECORD_COLS: &str = "collection, id, data, created_at, updated_at, version";

pub(crate) fn record_from_row(row: &Row<'_>) -> rusqlite::Result<Record> {
    let data: String = row.get(2)?;
    let created: String = row.get(3)?;
    let updated: String = row.get(4)?;
    let version: i64 = row.get(5)?;
    let data = match serde_json::from_str::<serde_json::Value>(&data) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => Default::default(),
    };
    Ok(Record {
        collection: row.get(0)?,
        id: row.get(1)?,
        data,
        created_at: parse_time(&created).unwrap_or_default(),
        updated_at: parse_time(&updated).unwrap_or_default(),
        version: u64::try_from(version).unwrap_or(0),
    })
}

/// Columns of an event row, in this order.
pub(crate) const EVENT_COLS: &str =
    "seq, id, topic, type, time, content_type, headers, payload, origin, attrs, sender";

pub(crate) fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Arc<Event>> {
    let seq: i64 = row.get(0)?;
    let topic: String = row.get(2)?;
    let micros: i64 = row.get(4)?;
    let headers: Option<String> = row.get(6)?;
    let payload: Vec<u8> = row.get(7)?;
    let origin: String = row.get(8)?;
    let attrs: Option<String> = row.get(9)?;
    let sender: Option<String> = row.get(10)?;
    let topic = Topic::new(&topic).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, Box::new(e))
    })?;
    let headers: Vec<(String, String)> = headers
        .and_then(|h| serde_json::from_str(&h).ok())
        .unwrap_or_default();
    Ok(Arc::new(
        Event::new(
            Some(u64::try_from(seq).unwrap_or(0)),
            row.get(1)?,
            topic,
            row.get(3)?,
            from_micros(micros),
            row.get(5)?,
            headers,
            Bytes::from(payload),
            Origin::from_label(&origin),
        )
        .with_attrs(
            attrs
                .and_then(|a| serde_json::from_str(&a).ok())
                .unwrap_or_default(),
            sender.and_then(|s| serde_json::from_str(&s).ok()),
        ),
    ))
}

pub(crate) fn from_micros(m: i64) -> DateTime<Utc> {
    Utc.timestamp_micros(m).single().unwrap_or_default()
}

pub(crate) fn load_collections(
    conn: &Connection,
) -> Result<polyport_core::engine::CollectionMap, StoreError> {
    let mut stmt = conn.prepare("SELECT spec, created_at, updated_at FROM collections")?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
        ))
    })?;
    let mut map = polyport_core::engine::CollectionMap::new();
    for row in rows {
        let (spec, created, updated) = row?;
        let spec: CollectionSpec = serde_json::from_str(&spec)
            .map_err(|e| StoreError::Corrupt(format!("collection spec: {e}")))?;
        map.insert(
            spec.name.clone(),
            Arc::new(Collection {
                spec,
                created_at: parse_time(&created).unwrap_or_default(),
                updated_at: parse_time(&updated).unwrap_or_default(),
            }),
        );
    }
    Ok(map)
}
