//! The writer's transaction steps ([`Tx`]) in SQLite's SQL. Every statement goes through
//! the connection's statement cache (`db::exec`): the writer runs the same few for
//! every write.

use polyport_core::event::Event;
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, CollectionSpec, FieldError, Rule};
use polyport_core::{HubError, HubResult, Record};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde_json::Value;

use crate::db::{RECORD_COLS, exec, record_from_row};
use crate::sql::FieldIndex;
use crate::tx::{EventJson, Settle, Tx};

/// A database error in a write: a unique index refusing a value is the client's
/// conflict, anything else the store's failure.
pub(crate) fn sql_err(e: rusqlite::Error) -> HubError {
    if let Some((_, field)) = unique_violation(&e) {
        return HubError::Conflict(vec![FieldError::new(
            &field,
            Rule::Unique,
            "must be unique; the value is already used",
        )]);
    }
    tracing::error!(error = %e, "sqlite error in write");
    HubError::Storage(e.to_string())
}

/// Unique indexes are named `uq:{collection}:{field}`; identifiers cannot contain `:`,
/// so the name maps back to exactly one collection and field.
pub(crate) fn unique_index_name(collection: &str, field: &str) -> String {
    format!("uq:{collection}:{field}")
}

/// The `(collection, field)` of the unique index a constraint violation names, if any.
fn unique_violation(e: &rusqlite::Error) -> Option<(String, String)> {
    if let rusqlite::Error::SqliteFailure(err, Some(msg)) = e
        && err.code == rusqlite::ErrorCode::ConstraintViolation
    {
        let start = msg.find("uq:")?;
        let name = msg[start..].split(['\'', '"', ' ']).next()?;
        let mut parts = name.splitn(3, ':').skip(1);
        return Some((parts.next()?.to_string(), parts.next()?.to_string()));
    }
    None
}

/// The name of a relation field's index (see [`crate::sql::FieldIndex`]).
pub(crate) fn relation_index_name(collection: &str, field: &str) -> String {
    format!("ix:{collection}:{field}")
}

/// The index that serves equality lookups on `field`: a unique field's or a relation
/// field's. Its expression is the one the filter compiler writes for the field.
pub(crate) fn field_index(spec: &CollectionSpec, field: &str) -> Option<String> {
    Some(index_name(
        &spec.name,
        field,
        crate::sql::field_index(spec, field)?,
    ))
}

fn index_name(collection: &str, field: &str, kind: FieldIndex) -> String {
    match kind {
        FieldIndex::Unique => unique_index_name(collection, field),
        FieldIndex::Relation => relation_index_name(collection, field),
    }
}

/// The field indexes a collection has in the database.
fn field_indexes(conn: &Connection, collection: &str) -> HubResult<Vec<String>> {
    let mut names = Vec::new();
    for prefix in [
        unique_index_name(collection, ""),
        relation_index_name(collection, ""),
    ] {
        let mut stmt = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND substr(name, 1, ?2) = ?1",
            )
            .map_err(sql_err)?;
        let found = stmt
            .query_map(params![prefix, prefix.len() as i64], |r| {
                r.get::<_, String>(0)
            })
            .map_err(sql_err)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(sql_err)?;
        names.extend(found);
    }
    Ok(names)
}

/// Makes a collection's field indexes what its schema asks for. Unique fields are
/// enforced by partial expression indexes, so the database itself refuses a duplicate
/// even under concurrent writers; relation fields get a plain one (see
/// [`relation_index_name`]). Run on every schema change and, for collections made
/// before relation indexes existed, when the store opens.
pub(crate) fn ensure_field_indexes(conn: &Connection, spec: &CollectionSpec) -> HubResult<()> {
    let wanted: Vec<(String, &str, bool)> = crate::sql::field_indexes(spec)
        .map(|(f, kind)| {
            (
                index_name(&spec.name, f, kind),
                f,
                kind == FieldIndex::Unique,
            )
        })
        .collect();
    for idx in field_indexes(conn, &spec.name)? {
        if !wanted.iter().any(|(w, _, _)| *w == idx) {
            conn.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
                .map_err(sql_err)?;
        }
    }
    for (idx, field, unique) in wanted {
        // Names are validated identifiers, so interpolation is safe.
        let sql = format!(
            "CREATE {u}INDEX IF NOT EXISTS \"{idx}\" ON records (json_extract(data, '$.\"{field}\"')) WHERE collection = '{c}'",
            u = if unique { "UNIQUE " } else { "" },
            c = spec.name,
        );
        conn.execute_batch(&sql).map_err(sql_err)?;
    }
    Ok(())
}

impl Tx for Transaction<'_> {
    fn savepoint(&mut self) -> HubResult<()> {
        exec(self, "SAVEPOINT op", []).map(drop).map_err(sql_err)
    }

    fn release(&mut self) -> HubResult<()> {
        exec(self, "RELEASE op", []).map(drop).map_err(sql_err)
    }

    fn rollback(&mut self) -> HubResult<()> {
        exec(self, "ROLLBACK TO op", []).map_err(sql_err)?;
        exec(self, "RELEASE op", []).map(drop).map_err(sql_err)
    }

    fn load_record(&mut self, collection: &str, id: &str) -> HubResult<Option<Record>> {
        self.prepare_cached(&format!(
            "SELECT {RECORD_COLS} FROM records WHERE collection = ?1 AND id = ?2"
        ))
        .and_then(|mut s| {
            s.query_row(params![collection, id], record_from_row)
                .optional()
        })
        .map_err(sql_err)
    }

    fn insert_record(&mut self, r: &Record) -> HubResult<()> {
        exec(
            self,
            "INSERT INTO records (collection, id, data, created_at, updated_at, version)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![
                r.collection,
                r.id,
                Value::Object(r.data.clone()).to_string(),
                format_time(&r.created_at),
                format_time(&r.updated_at),
                r.version as i64
            ],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn update_record(&mut self, r: &Record) -> HubResult<()> {
        exec(
            self,
            "UPDATE records SET data = ?3, updated_at = ?4, version = ?5
             WHERE collection = ?1 AND id = ?2",
            params![
                r.collection,
                r.id,
                Value::Object(r.data.clone()).to_string(),
                format_time(&r.updated_at),
                r.version as i64
            ],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn delete_record(&mut self, collection: &str, id: &str) -> HubResult<()> {
        exec(
            self,
            "DELETE FROM records WHERE collection = ?1 AND id = ?2",
            params![collection, id],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn insert_event(&mut self, e: &Event) -> HubResult<()> {
        let j = EventJson::of(e);
        exec(
            self,
            "INSERT INTO events (seq, id, topic, type, time, content_type, headers, payload, origin, attrs, sender)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                e.seq.unwrap_or(0) as i64,
                e.id,
                e.topic.as_str(),
                e.event_type,
                e.time.timestamp_micros(),
                e.content_type,
                j.headers,
                &e.payload[..],
                e.origin.0,
                j.attrs,
                j.sender,
            ],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn event_heads(&mut self, after: u64, upto: u64) -> HubResult<Vec<(u64, String, String)>> {
        let mut stmt = self
            .prepare_cached(
                "SELECT seq, topic, type FROM events WHERE seq > ?1 AND seq <= ?2 ORDER BY seq",
            )
            .map_err(sql_err)?;
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        stmt.query_map(params![after as i64, upto], |r| {
            Ok((r.get::<_, i64>(0)? as u64, r.get(1)?, r.get(2)?))
        })
        .map_err(sql_err)?
        .collect::<Result<_, _>>()
        .map_err(sql_err)
    }

    fn put_collection(&mut self, c: &Collection) -> HubResult<()> {
        let spec = &c.spec;
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| HubError::Storage(format!("encoding collection: {e}")))?;
        self.execute(
            "INSERT INTO collections (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            params![
                spec.name,
                spec_json,
                format_time(&c.created_at),
                format_time(&c.updated_at)
            ],
        )
        .map_err(sql_err)?;
        ensure_field_indexes(self, spec)
    }

    fn delete_collection(&mut self, name: &str) -> HubResult<()> {
        self.execute("DELETE FROM records WHERE collection = ?1", params![name])
            .map_err(sql_err)?;
        self.execute("DELETE FROM collections WHERE name = ?1", params![name])
            .map_err(sql_err)?;
        for idx in field_indexes(self, name)? {
            self.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
                .map_err(sql_err)?;
        }
        Ok(())
    }

    fn put_state(&mut self, namespace: &str, key: &str, value: Option<&[u8]>) -> HubResult<()> {
        match value {
            Some(v) => exec(
                self,
                "INSERT INTO adapter_state (namespace, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                params![namespace, key, v],
            ),
            None => exec(
                self,
                "DELETE FROM adapter_state WHERE namespace = ?1 AND key = ?2",
                params![namespace, key],
            ),
        }
        .map(drop)
        .map_err(sql_err)
    }

    fn delete_consumers(&mut self, prefix: &str) -> HubResult<()> {
        // substr() rather than LIKE: group names may contain `%` and `_`.
        exec(
            self,
            "DELETE FROM consumers WHERE substr(key, 1, length(?1)) = ?1",
            params![prefix],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn save_consumer(&mut self, key: &str, position: u64, owner: Option<&str>) -> HubResult<()> {
        exec(
            self,
            "INSERT INTO consumers (key, position, owner) VALUES (?1, ?2, ?3)
             ON CONFLICT (key) DO UPDATE SET position = excluded.position",
            params![key, position as i64, owner],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn put_endpoint(&mut self, id: &str, body: &str) -> HubResult<()> {
        exec(
            self,
            "INSERT INTO webhook_endpoints (id, body) VALUES (?1, ?2)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            params![id, body],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn delete_endpoint(&mut self, id: &str) -> HubResult<()> {
        for t in ["webhook_attempts", "webhook_deliveries"] {
            exec(
                self,
                &format!("DELETE FROM {t} WHERE endpoint_id = ?1"),
                params![id],
            )
            .map_err(sql_err)?;
        }
        exec(
            self,
            "DELETE FROM webhook_endpoints WHERE id = ?1",
            params![id],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn queue_delivery(
        &mut self,
        endpoint_id: &str,
        seq: u64,
        event_type: &str,
        now: i64,
        reset: bool,
    ) -> HubResult<()> {
        let sql = match reset {
            false => {
                "INSERT INTO webhook_deliveries
                   (endpoint_id, seq, event_type, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4, ?4)
                 ON CONFLICT (endpoint_id, seq) DO NOTHING"
            }
            true => {
                "INSERT INTO webhook_deliveries
                   (endpoint_id, seq, event_type, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES (?1, ?2, ?3, 'pending', 0, ?4, ?4, ?4)
                 ON CONFLICT (endpoint_id, seq) DO UPDATE
                   SET status = 'pending', next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at"
            }
        };
        exec(self, sql, params![endpoint_id, seq as i64, event_type, now])
            .map(drop)
            .map_err(sql_err)
    }

    fn put_attempt(
        &mut self,
        endpoint_id: &str,
        seq: u64,
        number: u32,
        body: &str,
    ) -> HubResult<()> {
        exec(
            self,
            "INSERT OR REPLACE INTO webhook_attempts (endpoint_id, seq, number, body) VALUES (?1, ?2, ?3, ?4)",
            params![endpoint_id, seq as i64, number, body],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn settle_delivery(&mut self, d: &Settle<'_>) -> HubResult<()> {
        exec(
            self,
            "UPDATE webhook_deliveries SET
                 status = CASE WHEN updated_at > ?8 THEN 'pending' ELSE ?3 END,
                 next_attempt_at = CASE WHEN updated_at > ?8 THEN next_attempt_at ELSE ?5 END,
                 attempts = ?4, last_status = ?6, updated_at = ?7
             WHERE endpoint_id = ?1 AND seq = ?2",
            params![
                d.endpoint_id,
                d.seq as i64,
                d.status,
                d.attempts,
                d.next_attempt_at,
                d.last_status,
                d.now,
                d.attempt_at
            ],
        )
        .map(drop)
        .map_err(sql_err)
    }

    fn requeue_dead(&mut self, endpoint_id: &str, now: i64) -> HubResult<u64> {
        self.execute(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = ?2, updated_at = ?2
             WHERE endpoint_id = ?1 AND status = 'dead'",
            params![endpoint_id, now],
        )
        .map(|n| n as u64)
        .map_err(sql_err)
    }
}

/// The writer's SQLite connection.
pub(crate) struct SqliteDb {
    conn: rusqlite::Connection,
    /// Whether commits wait for the disk now (`PRAGMA synchronous=FULL`) or only write
    /// the WAL (`NORMAL`, for batches of logged-only publishes).
    syncing: bool,
}

impl SqliteDb {
    pub(crate) fn new(conn: rusqlite::Connection) -> Self {
        Self {
            conn,
            syncing: true,
        }
    }

    /// A logged-only batch is acknowledged once in the WAL, which a crash of the process
    /// keeps; a later syncing commit makes it durable too (the WAL is synced up to its
    /// end). `Err` when a batch that must wait for the disk cannot be made to.
    fn choose_sync(&mut self, sync: bool) -> Result<(), String> {
        if sync == self.syncing {
            return Ok(());
        }
        let mode = if sync { "FULL" } else { "NORMAL" };
        match self.conn.pragma_update(None, "synchronous", mode) {
            Ok(()) => {
                self.syncing = sync;
                Ok(())
            }
            // Not syncing when asked to would acknowledge what is not on disk.
            Err(e) if sync => Err(format!("cannot make the commit durable: {e}")),
            Err(e) => {
                tracing::warn!(error = %e, "commits stay synced");
                Ok(())
            }
        }
    }
}

impl crate::tx::Db for SqliteDb {
    type Tx<'a> = Transaction<'a>;

    fn begin(&mut self, sync: bool) -> HubResult<(Transaction<'_>, Option<crate::tx::Head>)> {
        self.choose_sync(sync).map_err(HubError::Storage)?;
        // The one writer owns the log: its position never moves under it.
        self.conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map(|tx| (tx, None))
            .map_err(|e| HubError::Storage(e.to_string()))
    }

    /// The log's last sequence is not written per commit: on open it is the newest
    /// event's, and retention, the only thing that deletes events, records it first.
    fn commit(tx: Transaction<'_>, _last_seq: u64, _schema: bool) -> HubResult<Option<u64>> {
        tx.commit()
            .map(|()| None)
            .map_err(|e| HubError::Storage(e.to_string()))
    }

    fn trim_log(
        &mut self,
        last: u64,
        upto: Option<u64>,
        older_than: Option<(i64, u64)>,
    ) -> HubResult<(u64, Option<u64>)> {
        let conn = &self.conn;
        let run = || -> rusqlite::Result<(u64, Option<u64>)> {
            exec(
                conn,
                "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
                 ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                params![last.to_string()],
            )?;
            let mut deleted = 0;
            if let Some(upto) = upto {
                deleted += conn
                    .execute("DELETE FROM events WHERE seq <= ?1", params![upto as i64])?
                    as u64;
            }
            if let Some((limit, max_seq)) = older_than {
                deleted += conn.execute(
                    "DELETE FROM events WHERE time < ?1 AND seq <= ?2",
                    params![limit, max_seq as i64],
                )? as u64;
            }
            let first = match deleted {
                0 => None,
                _ => conn
                    .query_row("SELECT min(seq) FROM events", [], |r| {
                        r.get::<_, Option<i64>>(0)
                    })?
                    .map(|s| s as u64),
            };
            Ok((deleted, first))
        };
        run().map_err(|e| HubError::Storage(e.to_string()))
    }

    fn close(&mut self) {
        if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
            tracing::warn!(error = %e, "checkpoint at close failed");
        }
    }
}
