//! The writer's transaction steps ([`Tx`]) and connection ([`Db`]) in PostgreSQL.
//!
//! Every batch takes the row lock on `log_head` first and reads the log's last sequence
//! under it: the nodes of a cluster write one after another, each numbering its events
//! from where the previous commit left the log, so sequences stay gap-free and in commit
//! order across nodes. The lock is held for one batch's transaction, not per write.

use std::collections::HashMap;
use std::sync::Arc;

use polyport_core::event::Event;
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, FieldError, Rule};
use polyport_core::{HubError, HubResult, Record};
use postgres::types::ToSql;
use postgres::{Client, Statement, Transaction};
use serde_json::Value;

use super::row::record_from_row;
use crate::tx::{Db, EventJson, Head, Schema, Settle, Tx};

type Params<'a> = &'a [&'a (dyn ToSql + Sync)];

/// A write's database error: a unique index refusing a value is the client's conflict.
pub(crate) fn pg_err(e: postgres::Error) -> HubError {
    if let Some(db) = e.as_db_error()
        && *db.code() == postgres::error::SqlState::UNIQUE_VIOLATION
        && let Some(field) = db.detail().and_then(unique_field)
    {
        return HubError::Conflict(vec![FieldError::new(
            field,
            Rule::Unique,
            "must be unique; the value is already used",
        )]);
    }
    if e.code() == Some(&postgres::error::SqlState::UNTRANSLATABLE_CHARACTER) {
        return HubError::InvalidRequest(
            "the PostgreSQL store cannot hold the character U+0000 in a JSON string".into(),
        );
    }
    let msg = crate::error::pg_message(&e);
    if crate::error::pg_unreachable(&e) {
        tracing::warn!(error = %msg, "postgres unreachable in write");
        return HubError::Unavailable(msg);
    }
    tracing::error!(error = %msg, "postgres error in write");
    HubError::Storage(msg)
}

/// The field a unique index refused, from Postgres's detail
/// `Key ((data -> 'email'::text))=("a@b") already exists.` (field names are identifiers,
/// so they hold no quote).
fn unique_field(detail: &str) -> Option<&str> {
    let start = detail.find("(data -> '")? + "(data -> '".len();
    let len = detail[start..].find('\'')?;
    Some(&detail[start..start + len])
}

/// Statements prepared once per connection: the writer runs the same few for every write.
#[derive(Default)]
pub(crate) struct Statements(HashMap<&'static str, Statement>);

/// One batch's transaction.
pub(crate) struct PgTx<'a> {
    tx: Transaction<'a>,
    stmts: &'a mut Statements,
    /// The log's last sequence when the batch began.
    head: u64,
    schema_version: &'a mut u64,
    channel: &'a str,
    /// A kept savepoint not released yet: released together with the next one's start,
    /// one round trip per command instead of two (COMMIT releases the last).
    unreleased: bool,
    /// The current command's savepoint, not sent until it runs a statement: a command
    /// that only appends events (a publish) costs no round trip of its own.
    pending: bool,
    /// The current command's savepoint was sent.
    sent: bool,
    /// Events appended and not inserted yet: inserted together, in one statement, when
    /// the batch commits (or before a statement that reads them).
    events: Vec<Row>,
    /// Where the current command's events start in `events`.
    mark: usize,
}

/// An event as the `events` table holds it.
struct Row {
    seq: i64,
    id: String,
    topic: String,
    event_type: String,
    time: i64,
    content_type: Option<String>,
    json: EventJson,
    payload: bytes::Bytes,
    origin: &'static str,
}

/// Inserts rows of `events` from arrays, one statement for many.
const INSERT_EVENTS: &str = "INSERT INTO events (seq, id, topic, type, time, content_type, headers, payload, origin, attrs, sender)
     SELECT * FROM unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                          $7::text[], $8::bytea[], $9::text[], $10::text[], $11::text[])";

impl PgTx<'_> {
    /// Before a command's first statement: the events of earlier commands are inserted,
    /// its savepoint is sent, then its own events (so a rollback takes them back).
    fn open(&mut self) -> HubResult<()> {
        if !std::mem::take(&mut self.pending) {
            return Ok(());
        }
        let mine = self.events.split_off(self.mark);
        self.flush()?;
        let sql = match std::mem::take(&mut self.unreleased) {
            true => "RELEASE SAVEPOINT op; SAVEPOINT op",
            false => "SAVEPOINT op",
        };
        self.tx.batch_execute(sql).map_err(pg_err)?;
        self.sent = true;
        self.events = mine;
        self.flush()?;
        self.mark = 0;
        Ok(())
    }

    /// Inserts the appended events.
    fn flush(&mut self) -> HubResult<()> {
        if self.events.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.events);
        let s = self.cached(INSERT_EVENTS)?;
        let a = EventArrays::of(&rows);
        self.tx.execute(&s, &a.params()).map(drop).map_err(pg_err)
    }

    fn stmt(&mut self, sql: &'static str) -> HubResult<Statement> {
        self.open()?;
        self.cached(sql)
    }

    fn cached(&mut self, sql: &'static str) -> HubResult<Statement> {
        if let Some(s) = self.stmts.0.get(sql) {
            return Ok(s.clone());
        }
        let s = self.tx.prepare(sql).map_err(pg_err)?;
        self.stmts.0.insert(sql, s.clone());
        Ok(s)
    }

    fn exec(&mut self, sql: &'static str, params: Params<'_>) -> HubResult<u64> {
        let s = self.stmt(sql)?;
        self.tx.execute(&s, params).map_err(pg_err)
    }

    /// Statements whose text is made at run time (index names): not cached.
    fn batch(&mut self, sql: &str) -> HubResult<()> {
        self.open()?;
        self.tx.batch_execute(sql).map_err(pg_err)
    }

    /// The field indexes `collection` has in the database.
    fn field_indexes(&mut self, collection: &str) -> HubResult<Vec<String>> {
        let s = self.stmt(
            "SELECT indexname::text FROM pg_indexes
             WHERE schemaname = current_schema() AND tablename = 'records'
               AND left(indexname, length($1)) IN ($1, $2)",
        )?;
        let [unique, relation] = super::schema::index_prefixes(collection);
        let rows = self.tx.query(&s, &[&unique, &relation]).map_err(pg_err)?;
        rows.iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()
            .map_err(pg_err)
    }
}

impl Tx for PgTx<'_> {
    fn savepoint(&mut self) -> HubResult<()> {
        self.pending = true;
        self.sent = false;
        self.mark = self.events.len();
        Ok(())
    }

    fn release(&mut self) -> HubResult<()> {
        self.pending = false;
        if std::mem::take(&mut self.sent) {
            self.unreleased = true;
        }
        Ok(())
    }

    fn rollback(&mut self) -> HubResult<()> {
        self.pending = false;
        self.events.truncate(self.mark);
        if std::mem::take(&mut self.sent) {
            self.unreleased = false;
            self.tx
                .batch_execute("ROLLBACK TO SAVEPOINT op; RELEASE SAVEPOINT op")
                .map_err(pg_err)?;
        }
        Ok(())
    }

    fn load_record(&mut self, collection: &str, id: &str) -> HubResult<Option<Record>> {
        let s = self.stmt(
            "SELECT collection, id, doc, created_at, updated_at, version FROM records
             WHERE collection = $1 AND id = $2",
        )?;
        let row = self.tx.query_opt(&s, &[&collection, &id]).map_err(pg_err)?;
        row.as_ref()
            .map(record_from_row)
            .transpose()
            .map_err(pg_err)
    }

    fn insert_record(&mut self, r: &Record) -> HubResult<()> {
        let doc = Value::Object(r.data.clone()).to_string();
        self.exec(
            "INSERT INTO records (collection, id, data, doc, created_at, updated_at, version)
             VALUES ($1, $2, $3::text::jsonb, $3, $4, $5, $6)",
            &[
                &r.collection,
                &r.id,
                &doc,
                &format_time(&r.created_at),
                &format_time(&r.updated_at),
                &(r.version as i64),
            ],
        )
        .map(drop)
    }

    fn update_record(&mut self, r: &Record) -> HubResult<()> {
        let doc = Value::Object(r.data.clone()).to_string();
        self.exec(
            "UPDATE records SET data = $3::text::jsonb, doc = $3, updated_at = $4, version = $5
             WHERE collection = $1 AND id = $2",
            &[
                &r.collection,
                &r.id,
                &doc,
                &format_time(&r.updated_at),
                &(r.version as i64),
            ],
        )
        .map(drop)
    }

    fn delete_record(&mut self, collection: &str, id: &str) -> HubResult<()> {
        self.exec(
            "DELETE FROM records WHERE collection = $1 AND id = $2",
            &[&collection, &id],
        )
        .map(drop)
    }

    fn insert_event(&mut self, e: &Event) -> HubResult<()> {
        self.events.push(Row {
            seq: e.seq.unwrap_or(0) as i64,
            id: e.id.clone(),
            topic: e.topic.as_str().to_string(),
            event_type: e.event_type.clone(),
            time: e.time.timestamp_micros(),
            content_type: e.content_type.clone(),
            json: EventJson::of(e),
            payload: e.payload.clone(),
            origin: e.origin.0,
        });
        Ok(())
    }

    fn event_heads(&mut self, after: u64, upto: u64) -> HubResult<Vec<(u64, String, String)>> {
        let s = self.stmt(
            "SELECT seq, topic, type FROM events WHERE seq > $1 AND seq <= $2 ORDER BY seq",
        )?;
        // Inside the command's savepoint now: its own events go in too.
        self.flush()?;
        let upto = i64::try_from(upto).unwrap_or(i64::MAX);
        let rows = self
            .tx
            .query(&s, &[&(after as i64), &upto])
            .map_err(pg_err)?;
        rows.iter()
            .map(|r| Ok((r.try_get::<_, i64>(0)? as u64, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, postgres::Error>>()
            .map_err(pg_err)
    }

    fn put_collection(&mut self, c: &Collection) -> HubResult<()> {
        let spec = &c.spec;
        let spec_json = serde_json::to_string(spec)
            .map_err(|e| HubError::Storage(format!("encoding collection: {e}")))?;
        self.exec(
            "INSERT INTO collections (name, spec, created_at, updated_at) VALUES ($1, $2, $3, $4)
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            &[
                &spec.name,
                &spec_json,
                &format_time(&c.created_at),
                &format_time(&c.updated_at),
            ],
        )?;
        let wanted = super::schema::field_index_ddl(spec);
        for idx in self.field_indexes(&spec.name)? {
            if !wanted.iter().any(|(w, _)| *w == idx) {
                self.batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))?;
            }
        }
        for (_, ddl) in wanted {
            self.batch(&ddl)?;
        }
        Ok(())
    }

    fn delete_collection(&mut self, name: &str) -> HubResult<()> {
        self.exec("DELETE FROM records WHERE collection = $1", &[&name])?;
        self.exec("DELETE FROM collections WHERE name = $1", &[&name])?;
        for idx in self.field_indexes(name)? {
            self.batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))?;
        }
        Ok(())
    }

    fn put_state(&mut self, namespace: &str, key: &str, value: Option<&[u8]>) -> HubResult<()> {
        match value {
            Some(v) => self.exec(
                "INSERT INTO adapter_state (namespace, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                &[&namespace, &key.as_bytes(), &v],
            ),
            None => self.exec(
                "DELETE FROM adapter_state WHERE namespace = $1 AND key = $2",
                &[&namespace, &key.as_bytes()],
            ),
        }
        .map(drop)
    }

    fn delete_consumers(&mut self, prefix: &str) -> HubResult<()> {
        self.exec(
            "DELETE FROM consumers WHERE substring(key FROM 1 FOR octet_length($1::bytea)) = $1::bytea",
            &[&prefix.as_bytes()],
        )
        .map(drop)
    }

    fn save_consumer(&mut self, key: &str, position: u64, owner: Option<&str>) -> HubResult<()> {
        self.exec(
            "INSERT INTO consumers (key, position, owner) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET position = excluded.position",
            &[&key.as_bytes(), &(position as i64), &owner],
        )
        .map(drop)
    }

    fn put_endpoint(&mut self, id: &str, body: &str) -> HubResult<()> {
        self.exec(
            "INSERT INTO webhook_endpoints (id, body) VALUES ($1, $2)
             ON CONFLICT (id) DO UPDATE SET body = excluded.body",
            &[&id, &body],
        )
        .map(drop)
    }

    fn delete_endpoint(&mut self, id: &str) -> HubResult<()> {
        self.exec(
            "DELETE FROM webhook_attempts WHERE endpoint_id = $1",
            &[&id],
        )?;
        self.exec(
            "DELETE FROM webhook_deliveries WHERE endpoint_id = $1",
            &[&id],
        )?;
        self.exec("DELETE FROM webhook_endpoints WHERE id = $1", &[&id])
            .map(drop)
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
                 VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)
                 ON CONFLICT (endpoint_id, seq) DO NOTHING"
            }
            true => {
                "INSERT INTO webhook_deliveries
                   (endpoint_id, seq, event_type, status, attempts, next_attempt_at, created_at, updated_at)
                 VALUES ($1, $2, $3, 'pending', 0, $4, $4, $4)
                 ON CONFLICT (endpoint_id, seq) DO UPDATE
                   SET status = 'pending', next_attempt_at = excluded.next_attempt_at, updated_at = excluded.updated_at"
            }
        };
        self.exec(sql, &[&endpoint_id, &(seq as i64), &event_type, &now])
            .map(drop)
    }

    fn put_attempt(
        &mut self,
        endpoint_id: &str,
        seq: u64,
        number: u32,
        body: &str,
    ) -> HubResult<()> {
        self.exec(
            "INSERT INTO webhook_attempts (endpoint_id, seq, number, body) VALUES ($1, $2, $3, $4)
             ON CONFLICT (endpoint_id, seq, number) DO UPDATE SET body = excluded.body",
            &[&endpoint_id, &(seq as i64), &(number as i32), &body],
        )
        .map(drop)
    }

    fn settle_delivery(&mut self, d: &Settle<'_>) -> HubResult<()> {
        self.exec(
            "UPDATE webhook_deliveries SET
                 status = CASE WHEN updated_at > $8 THEN 'pending' ELSE $3 END,
                 next_attempt_at = CASE WHEN updated_at > $8 THEN next_attempt_at ELSE $5 END,
                 attempts = $4, last_status = $6, updated_at = $7
             WHERE endpoint_id = $1 AND seq = $2",
            &[
                &d.endpoint_id,
                &(d.seq as i64),
                &d.status,
                &(d.attempts as i32),
                &d.next_attempt_at,
                &d.last_status.map(i32::from),
                &d.now,
                &d.attempt_at,
            ],
        )
        .map(drop)
    }

    fn requeue_dead(&mut self, endpoint_id: &str, now: i64) -> HubResult<u64> {
        self.exec(
            "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $2, updated_at = $2
             WHERE endpoint_id = $1 AND status = 'dead'",
            &[&endpoint_id, &now],
        )
    }
}

/// The writer's Postgres connection.
/// A writer connection idle at least this long is checked before its next batch.
const IDLE_CHECK: std::time::Duration = std::time::Duration::from_secs(1);

pub(crate) struct PgDb {
    /// `None` after the connection broke: the next batch connects again.
    pub(crate) client: Option<Client>,
    pub(crate) url: String,
    pub(crate) schema: String,
    pub(crate) stmts: Statements,
    /// The schema version this writer's collections and endpoints are at.
    pub(crate) schema_version: u64,
    /// When the connection last began a batch.
    pub(crate) used: std::time::Instant,
    /// Where commits are announced (`LISTEN`ed to by every node's log follower).
    pub(crate) channel: String,
    pub(crate) health: Arc<super::Health>,
}

impl PgDb {
    /// The connection, made again when the last one broke (a Postgres restart); its
    /// prepared statements went with it. One left idle for a while is checked first
    /// (one round trip): a restart while it idled is known to the client only from its
    /// next statement, and the first write after the database is back must not fail
    /// for it. (A batch's `BEGIN` cannot simply be retried here: the transaction
    /// borrows the connection.)
    fn client(&mut self) -> HubResult<&mut Client> {
        let idle = std::mem::replace(&mut self.used, std::time::Instant::now()).elapsed();
        if idle >= IDLE_CHECK
            && let Some(c) = self.client.as_mut()
            && c.is_valid(std::time::Duration::from_secs(2)).is_err()
        {
            self.client = None;
        }
        let c = match self.client.take() {
            Some(c) if !c.is_closed() => c,
            _ => {
                self.stmts.0.clear();
                super::connect(&self.url, &self.schema).map_err(|e| {
                    let e = pg_err(e);
                    self.health.failed(&e);
                    e
                })?
            }
        };
        Ok(self.client.insert(c))
    }
}

impl Db for PgDb {
    type Tx<'a> = PgTx<'a>;

    fn begin(&mut self, sync: bool) -> HubResult<(PgTx<'_>, Option<Head>)> {
        let health = self.health.clone();
        let failed = move |e: postgres::Error| {
            let e = pg_err(e);
            health.failed(&e);
            e
        };
        self.client()?;
        let Some(client) = self.client.as_mut() else {
            return Err(HubError::Unavailable("no connection to Postgres".into()));
        };
        let mut tx = client.transaction().map_err(&failed)?;
        if !sync {
            // Logged-only publishes: acknowledged before the WAL reaches the disk, as the
            // embedded engine's WAL-only commits are.
            tx.batch_execute("SET LOCAL synchronous_commit = off")
                .map_err(&failed)?;
        }
        let row = tx
            .query_one("SELECT last_seq, schema FROM log_head FOR UPDATE", &[])
            .map_err(&failed)?;
        let head = row.try_get::<_, i64>(0).map_err(&failed)? as u64;
        let version = row.try_get::<_, i64>(1).map_err(&failed)? as u64;
        let schema = match version != self.schema_version {
            true => {
                let (collections, endpoints) = super::load_schema(&mut tx)?;
                self.schema_version = version;
                Some(Schema {
                    version,
                    collections,
                    endpoints,
                })
            }
            false => None,
        };
        let tx = PgTx {
            tx,
            stmts: &mut self.stmts,
            head,
            schema_version: &mut self.schema_version,
            channel: &self.channel,
            unreleased: false,
            pending: false,
            sent: false,
            events: Vec::new(),
            mark: 0,
        };
        Ok((
            tx,
            Some(Head {
                last_seq: head,
                schema,
            }),
        ))
    }

    fn commit(mut tx: PgTx<'_>, last_seq: u64, schema_changed: bool) -> HubResult<Option<u64>> {
        // The last command's savepoint, if never sent, is not needed any more.
        tx.pending = false;
        tx.flush()?;
        let mut version = None;
        if schema_changed {
            let s = tx.stmt("UPDATE log_head SET schema = schema + 1 RETURNING schema")?;
            let v = tx
                .tx
                .query_one(&s, &[])
                .and_then(|r| r.try_get::<_, i64>(0))
                .map_err(pg_err)?;
            version = Some(v as u64);
        }
        // The notification is delivered to the listeners when (and only if) this commits.
        let channel = tx.channel.to_string();
        if last_seq != tx.head {
            tx.exec(
                "WITH head AS (UPDATE log_head SET last_seq = $1) SELECT pg_notify($2, '')",
                &[&(last_seq as i64), &channel],
            )?;
        } else if schema_changed {
            tx.exec("SELECT pg_notify($1, '')", &[&channel])?;
        }
        tx.tx.commit().map_err(pg_err)?;
        if let Some(v) = version {
            *tx.schema_version = v;
        }
        Ok(version)
    }

    fn trim_log(
        &mut self,
        _last: u64,
        upto: Option<u64>,
        older_than: Option<(i64, u64)>,
    ) -> HubResult<(u64, Option<u64>)> {
        // `log_head` already holds the log's position, whatever is deleted.
        let c = self.client()?;
        let mut deleted = 0;
        if let Some(upto) = upto {
            deleted += c
                .execute("DELETE FROM events WHERE seq <= $1", &[&(upto as i64)])
                .map_err(pg_err)?;
        }
        if let Some((limit, max_seq)) = older_than {
            deleted += c
                .execute(
                    "DELETE FROM events WHERE time < $1 AND seq <= $2",
                    &[&limit, &(max_seq as i64)],
                )
                .map_err(pg_err)?;
        }
        if deleted == 0 {
            return Ok((0, None));
        }
        let first: Option<i64> = c
            .query_one("SELECT min(seq) FROM events", &[])
            .and_then(|r| r.try_get(0))
            .map_err(pg_err)?;
        Ok((deleted, first.map(|s| s as u64)))
    }

    fn close(&mut self) {}
}

/// The buffered events as one array per column, for [`INSERT_EVENTS`].
struct EventArrays<'a> {
    seq: Vec<i64>,
    id: Vec<&'a str>,
    topic: Vec<&'a str>,
    event_type: Vec<&'a str>,
    time: Vec<i64>,
    content_type: Vec<Option<&'a str>>,
    headers: Vec<Option<&'a str>>,
    payload: Vec<&'a [u8]>,
    origin: Vec<&'a str>,
    attrs: Vec<Option<&'a str>>,
    sender: Vec<Option<&'a str>>,
}

impl<'a> EventArrays<'a> {
    fn of(rows: &'a [Row]) -> Self {
        Self {
            seq: rows.iter().map(|r| r.seq).collect(),
            id: rows.iter().map(|r| r.id.as_str()).collect(),
            topic: rows.iter().map(|r| r.topic.as_str()).collect(),
            event_type: rows.iter().map(|r| r.event_type.as_str()).collect(),
            time: rows.iter().map(|r| r.time).collect(),
            content_type: rows.iter().map(|r| r.content_type.as_deref()).collect(),
            headers: rows.iter().map(|r| r.json.headers.as_deref()).collect(),
            payload: rows.iter().map(|r| &r.payload[..]).collect(),
            origin: rows.iter().map(|r| r.origin).collect(),
            attrs: rows.iter().map(|r| r.json.attrs.as_deref()).collect(),
            sender: rows.iter().map(|r| r.json.sender.as_deref()).collect(),
        }
    }

    fn params(&self) -> [&(dyn postgres::types::ToSql + Sync); 11] {
        [
            &self.seq,
            &self.id,
            &self.topic,
            &self.event_type,
            &self.time,
            &self.content_type,
            &self.headers,
            &self.payload,
            &self.origin,
            &self.attrs,
            &self.sender,
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_refused_field_is_read_from_the_detail() {
        assert_eq!(
            unique_field("Key ((data -> 'email'::text))=(\"a@b\") already exists."),
            Some("email")
        );
        assert_eq!(unique_field("Key (id)=(x) already exists."), None);
    }

    #[test]
    fn index_names_fit_postgres_and_share_a_prefix_per_collection() {
        use super::super::schema::{index_name, index_prefixes};
        use crate::sql::FieldIndex;
        let long = "c".repeat(64);
        for (kind, i) in [(FieldIndex::Unique, 0), (FieldIndex::Relation, 1)] {
            let n = index_name(&long, &"f".repeat(64), kind);
            assert!(n.len() <= 63, "{n}");
            assert!(n.starts_with(&index_prefixes(&long)[i]));
            assert_ne!(index_name("a", "b", kind), index_name("a", "c", kind));
        }
        assert_ne!(
            index_name("a", "b", FieldIndex::Unique),
            index_name("a", "b", FieldIndex::Relation)
        );
    }
}
