//! The single writer thread and its group commit.
//!
//! All writes funnel into one OS thread that owns the only read-write connection. It
//! drains whatever is queued (up to `max_batch`), applies each command inside its own
//! savepoint (so one bad write cannot fail its neighbours), commits once — one fsync for
//! the whole batch — and only then publishes the batch's events, in sequence order, and
//! answers the callers. Sequences are assigned here, so they are gap-free: a failed
//! command gives its number back, a failed commit gives the whole batch's back.

use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use chrono::{DateTime, SubsecRound, Utc};
use parking_lot::Mutex;
use polyport_core::engine::{
    ChangeKind, CollectionMap, EventSink, LogState, WriteCommand, WriteOutcome, change_event,
};
use polyport_core::event::{DEFAULT_EVENT_TYPE, Event, EventDraft, EventRef, Origin};
use polyport_core::record::{Record, format_time, merge_patch, new_id};
use polyport_core::schema::{Collection, CollectionSpec, FieldError, Rule};
use polyport_core::webhook::Endpoint;
use polyport_core::{Attributes, HubError, HubResult, Sender};
use rusqlite::{Connection, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::{Map, Value};
use tokio::sync::{mpsc, oneshot};

use crate::db::{RECORD_COLS, record_from_row};
use crate::webhooks;

/// Work for the writer thread.
pub(crate) enum Job {
    /// Boxed: a command (an event draft with its attributes) is much larger than the rest.
    Write(Box<WriteCommand>, oneshot::Sender<HubResult<WriteOutcome>>),
    /// Apply retention.
    Maintain,
    /// Checkpoint and stop.
    Close(oneshot::Sender<()>),
}

/// State the writer publishes for readers on the async side.
pub(crate) struct Shared {
    pub(crate) collections: ArcSwap<CollectionMap>,
    pub(crate) endpoints: ArcSwap<Vec<Arc<Endpoint>>>,
    pub(crate) log: Mutex<LogState>,
}

/// Event-log retention; `None` keeps forever.
#[derive(Clone, Copy, Debug, Default)]
pub struct Retention {
    /// Keep at most this many events.
    pub max_events: Option<u64>,
    /// Drop events older than this.
    pub max_age: Option<std::time::Duration>,
}

struct State {
    next_seq: u64,
    collections: CollectionMap,
    endpoints: Vec<Arc<Endpoint>>,
}

pub(crate) struct Writer {
    pub(crate) conn: Connection,
    pub(crate) shared: Arc<Shared>,
    pub(crate) sink: Arc<dyn EventSink>,
    pub(crate) retention: Retention,
    pub(crate) max_batch: usize,
    state: State,
}

type Reply = oneshot::Sender<HubResult<WriteOutcome>>;

impl Writer {
    pub(crate) fn new(
        conn: Connection,
        shared: Arc<Shared>,
        sink: Arc<dyn EventSink>,
        retention: Retention,
        max_batch: usize,
    ) -> Self {
        let (next_seq, collections, endpoints) = {
            let log = shared.log.lock();
            (
                log.last_seq + 1,
                (**shared.collections.load()).clone(),
                (**shared.endpoints.load()).clone(),
            )
        };
        Self {
            conn,
            shared,
            sink,
            retention,
            max_batch,
            state: State {
                next_seq,
                collections,
                endpoints,
            },
        }
    }

    pub(crate) fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut writes: Vec<(WriteCommand, Reply)> = Vec::new();
            let mut maintain = false;
            let mut close = None;
            let mut next = Some(first);
            while let Some(job) = next.take() {
                match job {
                    Job::Write(cmd, reply) => writes.push((*cmd, reply)),
                    Job::Maintain => maintain = true,
                    Job::Close(done) => {
                        close = Some(done);
                        break;
                    }
                }
                if writes.len() < self.max_batch {
                    next = rx.try_recv().ok();
                }
            }
            if !writes.is_empty() {
                self.commit_batch(writes);
            }
            if maintain {
                self.maintain();
            }
            if let Some(done) = close {
                if let Err(e) = self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)") {
                    tracing::warn!(error = %e, "checkpoint at close failed");
                }
                let _ = done.send(());
                break;
            }
        }
        tracing::debug!("store writer stopped");
    }

    fn commit_batch(&mut self, jobs: Vec<(WriteCommand, Reply)>) {
        let started = Instant::now();
        let size = jobs.len();
        let start_seq = self.state.next_seq;
        let start_collections = self.state.collections.clone();
        let start_endpoints = self.state.endpoints.clone();
        let tx = match self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
        {
            Ok(tx) => tx,
            Err(e) => {
                let msg = e.to_string();
                tracing::error!(error = %msg, "cannot begin write transaction");
                for (_, reply) in jobs {
                    let _ = reply.send(Err(HubError::Storage(msg.clone())));
                }
                return;
            }
        };
        let mut results: Vec<(Reply, HubResult<WriteOutcome>)> = Vec::with_capacity(size);
        let mut events: Vec<EventRef> = Vec::new();
        let mut collections_changed = false;
        for (cmd, reply) in jobs {
            let seq_before = self.state.next_seq;
            let is_collection_op = matches!(
                cmd,
                WriteCommand::CreateCollection(_)
                    | WriteCommand::ReplaceCollection(_)
                    | WriteCommand::DeleteCollection(_)
                    | WriteCommand::CreateRecord { .. }
                    | WriteCommand::ReplaceRecord { .. }
            );
            // A record write may auto-create its collection; if the write then fails, the
            // savepoint drops the collection's row and the in-memory map must follow.
            let new_collection = match &cmd {
                WriteCommand::CreateRecord { collection, .. }
                | WriteCommand::ReplaceRecord { collection, .. }
                    if !self.state.collections.contains_key(collection) =>
                {
                    Some(collection.clone())
                }
                _ => None,
            };
            let endpoints_before = self.state.endpoints.clone();
            let result = savepoint(&tx, |tx| apply(tx, &mut self.state, cmd));
            match &result {
                Ok(out) => {
                    if let Some(e) = outcome_event(out) {
                        events.push(e.clone());
                    }
                    collections_changed |= is_collection_op;
                }
                Err(_) => {
                    self.state.next_seq = seq_before;
                    self.state.endpoints = endpoints_before;
                    if let Some(name) = new_collection {
                        self.state.collections.remove(&name);
                    }
                }
            }
            results.push((reply, result));
        }
        let last_seq = self.state.next_seq - 1;
        let commit = (|| -> rusqlite::Result<()> {
            if !events.is_empty() {
                tx.execute(
                    "INSERT INTO meta (key, value) VALUES ('last_seq', ?1)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    params![last_seq.to_string()],
                )?;
            }
            tx.commit()
        })();
        if let Err(e) = commit {
            let msg = e.to_string();
            tracing::error!(error = %msg, "commit failed; batch rolled back");
            self.state.next_seq = start_seq;
            self.state.collections = start_collections;
            self.state.endpoints = start_endpoints;
            for (reply, _) in results {
                let _ = reply.send(Err(HubError::Storage(msg.clone())));
            }
            return;
        }
        metrics::histogram!("polyport_store_batch_size").record(size as f64);
        metrics::histogram!("polyport_store_commit_seconds")
            .record(started.elapsed().as_secs_f64());
        let endpoints_changed = start_endpoints.len() != self.state.endpoints.len()
            || start_endpoints
                .iter()
                .zip(&self.state.endpoints)
                .any(|(a, b)| !Arc::ptr_eq(a, b));
        if endpoints_changed {
            self.shared
                .endpoints
                .store(Arc::new(self.state.endpoints.clone()));
        }
        if collections_changed {
            self.shared
                .collections
                .store(Arc::new(self.state.collections.clone()));
        }
        if !events.is_empty() {
            self.shared.log.lock().last_seq = last_seq;
            self.sink.committed(&events);
        }
        for (reply, result) in results {
            let _ = reply.send(result);
        }
    }

    fn maintain(&mut self) {
        let Retention {
            max_events,
            max_age,
        } = self.retention;
        if max_events.is_none() && max_age.is_none() {
            return;
        }
        let last = self.state.next_seq - 1;
        let first = self.shared.log.lock().first_seq;
        // Bound the work per pass so writers are never stalled for long.
        let mut cutoff = first.saturating_add(50_000).saturating_sub(1);
        if let Some(n) = max_events {
            cutoff = cutoff.min(last.saturating_sub(n));
        } else {
            cutoff = cutoff.min(last);
        }
        let result = (|| -> rusqlite::Result<u64> {
            let mut deleted = 0;
            if max_events.is_some() && cutoff >= first {
                deleted += self
                    .conn
                    .execute("DELETE FROM events WHERE seq <= ?1", params![cutoff as i64])?
                    as u64;
            }
            if let Some(age) = max_age {
                let limit = Utc::now().timestamp_micros()
                    - i64::try_from(age.as_micros()).unwrap_or(i64::MAX);
                deleted += self.conn.execute(
                    "DELETE FROM events WHERE time < ?1 AND seq <= ?2",
                    params![limit, first.saturating_add(50_000) as i64],
                )? as u64;
            }
            Ok(deleted)
        })();
        match result {
            Ok(0) => {}
            Ok(n) => {
                let first_seq = self
                    .conn
                    .query_row("SELECT min(seq) FROM events", [], |r| {
                        r.get::<_, Option<i64>>(0)
                    })
                    .ok()
                    .flatten()
                    .map(|s| s as u64)
                    .unwrap_or(last + 1);
                self.shared.log.lock().first_seq = first_seq;
                tracing::debug!(deleted = n, first_seq, "event log retention applied");
            }
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
    }
}

fn outcome_event(out: &WriteOutcome) -> Option<&EventRef> {
    match out {
        WriteOutcome::Record { event, .. }
        | WriteOutcome::Deleted { event, .. }
        | WriteOutcome::Published(event) => Some(event),
        _ => None,
    }
}

/// Runs `f` in a savepoint: released on success, rolled back on error.
fn savepoint<T>(
    tx: &Transaction<'_>,
    f: impl FnOnce(&Transaction<'_>) -> HubResult<T>,
) -> HubResult<T> {
    tx.execute_batch("SAVEPOINT op").map_err(sql_err)?;
    match f(tx) {
        Ok(v) => {
            tx.execute_batch("RELEASE op").map_err(sql_err)?;
            Ok(v)
        }
        Err(e) => {
            tx.execute_batch("ROLLBACK TO op; RELEASE op")
                .map_err(sql_err)?;
            Err(e)
        }
    }
}

fn sql_err(e: rusqlite::Error) -> HubError {
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
fn unique_index_name(collection: &str, field: &str) -> String {
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

fn apply(tx: &Transaction<'_>, st: &mut State, cmd: WriteCommand) -> HubResult<WriteOutcome> {
    match cmd {
        WriteCommand::CreateCollection(spec) => {
            if st.collections.contains_key(&spec.name) {
                return Err(HubError::AlreadyExists(format!(
                    "collection '{}'",
                    spec.name
                )));
            }
            put_collection(tx, st, spec, None)
        }
        WriteCommand::ReplaceCollection(spec) => {
            let existing = st
                .collections
                .get(&spec.name)
                .cloned()
                .ok_or_else(|| HubError::CollectionNotFound(spec.name.clone()))?;
            put_collection(tx, st, spec, Some(&existing))
        }
        WriteCommand::DeleteCollection(name) => {
            if !st.collections.contains_key(&name) {
                return Err(HubError::CollectionNotFound(name));
            }
            tx.execute("DELETE FROM records WHERE collection = ?1", params![name])
                .map_err(sql_err)?;
            tx.execute("DELETE FROM collections WHERE name = ?1", params![name])
                .map_err(sql_err)?;
            for idx in unique_indexes(tx, &name)? {
                tx.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
                    .map_err(sql_err)?;
            }
            st.collections.remove(&name);
            Ok(WriteOutcome::Done)
        }
        WriteCommand::CreateRecord {
            collection,
            id,
            data,
            auto_create,
            origin,
        } => {
            let coll = ensure_collection(tx, st, &collection, auto_create)?;
            let id = id.unwrap_or_else(new_id);
            if load_record(tx, &collection, &id)?.is_some() {
                return Err(HubError::AlreadyExists(format!(
                    "record '{id}' in collection '{collection}'"
                )));
            }
            insert_new(tx, st, &coll, id, data, origin)
        }
        WriteCommand::ReplaceRecord {
            collection,
            id,
            data,
            expected_version,
            auto_create,
            origin,
        } => {
            let coll = ensure_collection(tx, st, &collection, auto_create)?;
            match load_record(tx, &collection, &id)? {
                None if expected_version.is_some() => {
                    Err(HubError::RecordNotFound { collection, id })
                }
                None => insert_new(tx, st, &coll, id, data, origin),
                Some(prev) => {
                    check_version(&prev, expected_version)?;
                    update_existing(tx, st, &coll, prev, data, true, origin)
                }
            }
        }
        WriteCommand::PatchRecord {
            collection,
            id,
            patch,
            expected_version,
            origin,
        } => {
            let coll = st
                .collections
                .get(&collection)
                .cloned()
                .ok_or_else(|| HubError::CollectionNotFound(collection.clone()))?;
            let prev = load_record(tx, &collection, &id)?
                .ok_or(HubError::RecordNotFound { collection, id })?;
            check_version(&prev, expected_version)?;
            if !patch.is_object() {
                return Err(HubError::InvalidRequest(
                    "a merge patch for a record must be a JSON object".into(),
                ));
            }
            let mut doc = Value::Object(prev.data.clone());
            merge_patch(&mut doc, &patch);
            let Value::Object(data) = doc else {
                return Err(HubError::InvalidRequest(
                    "patch must yield an object".into(),
                ));
            };
            update_existing(tx, st, &coll, prev, data, false, origin)
        }
        WriteCommand::DeleteRecord {
            collection,
            id,
            expected_version,
            origin,
        } => {
            if !st.collections.contains_key(&collection) {
                return Err(HubError::CollectionNotFound(collection));
            }
            let prev = load_record(tx, &collection, &id)?
                .ok_or(HubError::RecordNotFound { collection, id })?;
            check_version(&prev, expected_version)?;
            tx.execute(
                "DELETE FROM records WHERE collection = ?1 AND id = ?2",
                params![prev.collection, prev.id],
            )
            .map_err(sql_err)?;
            let event = append_change(tx, st, ChangeKind::Deleted, &prev, None, origin)?;
            Ok(WriteOutcome::Deleted {
                record: prev,
                event,
            })
        }
        WriteCommand::Publish {
            draft,
            origin,
            sender,
        } => {
            let seq = take_seq(st);
            let event = Arc::new(event_from_draft(draft, seq, origin, sender));
            insert_event(tx, st, &event)?;
            Ok(WriteOutcome::Published(event))
        }
        WriteCommand::PutEndpoint(ep) => webhooks::put_endpoint(tx, &mut st.endpoints, *ep),
        WriteCommand::DeleteEndpoint(id) => webhooks::delete_endpoint(tx, &mut st.endpoints, &id),
        WriteCommand::RecordAttempt {
            endpoint_id,
            seq,
            attempt,
            outcome,
        } => {
            let draft = webhooks::record_attempt(
                tx,
                &mut st.endpoints,
                &endpoint_id,
                seq,
                &attempt,
                &outcome,
            )?;
            match draft {
                Some(d) => {
                    let seq = take_seq(st);
                    let event = Arc::new(event_from_draft(d, seq, webhooks::ORIGIN, None));
                    insert_event(tx, st, &event)?;
                    Ok(WriteOutcome::Published(event))
                }
                None => Ok(WriteOutcome::Done),
            }
        }
        WriteCommand::Redeliver { endpoint_id, which } => {
            webhooks::redeliver(tx, &st.endpoints, &endpoint_id, &which)
        }
        WriteCommand::PutState {
            namespace,
            key,
            value,
        } => {
            match value {
                Some(v) => tx.execute(
                    "INSERT INTO adapter_state (namespace, key, value) VALUES (?1, ?2, ?3)
                     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    params![namespace, key, v.as_ref()],
                ),
                None => tx.execute(
                    "DELETE FROM adapter_state WHERE namespace = ?1 AND key = ?2",
                    params![namespace, key],
                ),
            }
            .map_err(sql_err)?;
            Ok(WriteOutcome::Done)
        }
        WriteCommand::DeleteConsumers { prefix } => {
            // substr() rather than LIKE: group names may contain `%` and `_`.
            tx.execute(
                "DELETE FROM consumers WHERE substr(key, 1, length(?1)) = ?1",
                params![prefix],
            )
            .map_err(sql_err)?;
            Ok(WriteOutcome::Done)
        }
        WriteCommand::SaveConsumer { key, position } => {
            tx.execute(
                "INSERT INTO consumers (key, position) VALUES (?1, ?2)
                 ON CONFLICT (key) DO UPDATE SET position = excluded.position",
                params![key, position as i64],
            )
            .map_err(sql_err)?;
            Ok(WriteOutcome::Done)
        }
    }
}

/// The current time at the precision timestamps are stored with (microseconds), so the
/// record or event a write returns equals the one later read back.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn take_seq(st: &mut State) -> u64 {
    let s = st.next_seq;
    st.next_seq += 1;
    s
}

fn event_from_draft(d: EventDraft, seq: u64, origin: Origin, sender: Option<Sender>) -> Event {
    Event::new(
        Some(seq),
        new_id(),
        d.topic,
        d.event_type
            .unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_string()),
        now(),
        d.content_type,
        d.headers,
        d.payload,
        origin,
    )
    .with_attrs(d.attrs, sender)
}

/// Appends an event and, in the same transaction, queues its webhook deliveries.
fn insert_event(tx: &Transaction<'_>, st: &State, e: &Event) -> HubResult<()> {
    let headers = if e.headers.is_empty() {
        None
    } else {
        serde_json::to_string(&e.headers).ok()
    };
    let attrs = (e.attrs != Attributes::default())
        .then(|| serde_json::to_string(&e.attrs).ok())
        .flatten();
    let sender = e
        .sender
        .as_ref()
        .and_then(|s| serde_json::to_string(s).ok());
    tx.prepare_cached(
        "INSERT INTO events (seq, id, topic, type, time, content_type, headers, payload, origin, attrs, sender)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )
    .and_then(|mut s| {
        s.execute(params![
            e.seq.unwrap_or(0) as i64,
            e.id,
            e.topic.as_str(),
            e.event_type,
            e.time.timestamp_micros(),
            e.content_type,
            headers,
            &e.payload[..],
            e.origin.0,
            attrs,
            sender,
        ])
    })
    .map_err(sql_err)?;
    webhooks::enqueue(tx, &st.endpoints, e)
}

fn append_change(
    tx: &Transaction<'_>,
    st: &mut State,
    kind: ChangeKind,
    record: &Record,
    previous: Option<&Record>,
    origin: Origin,
) -> HubResult<EventRef> {
    let seq = take_seq(st);
    let event = Arc::new(change_event(kind, record, previous, seq, origin, now()));
    insert_event(tx, st, &event)?;
    Ok(event)
}

fn check_version(rec: &Record, expected: Option<u64>) -> HubResult<()> {
    match expected {
        Some(v) if v != rec.version => Err(HubError::VersionMismatch {
            expected: v,
            current: rec.version,
        }),
        _ => Ok(()),
    }
}

fn load_record(tx: &Transaction<'_>, collection: &str, id: &str) -> HubResult<Option<Record>> {
    tx.prepare_cached(&format!(
        "SELECT {RECORD_COLS} FROM records WHERE collection = ?1 AND id = ?2"
    ))
    .and_then(|mut s| {
        s.query_row(params![collection, id], record_from_row)
            .optional()
    })
    .map_err(sql_err)
}

fn ensure_collection(
    tx: &Transaction<'_>,
    st: &mut State,
    name: &str,
    auto_create: bool,
) -> HubResult<Arc<Collection>> {
    if let Some(c) = st.collections.get(name) {
        return Ok(c.clone());
    }
    if !auto_create {
        return Err(HubError::CollectionNotFound(name.to_string()));
    }
    let spec = CollectionSpec {
        name: name.to_string(),
        fields: None,
        additional_fields: false,
        description: None,
    };
    spec.check().map_err(HubError::Validation)?;
    match put_collection(tx, st, spec, None)? {
        WriteOutcome::Collection(c) => Ok(c),
        _ => Err(HubError::Storage(
            "collection create returned nothing".into(),
        )),
    }
}

/// Validates a document and checks its relations exist.
fn validate(
    tx: &Transaction<'_>,
    st: &State,
    coll: &Collection,
    data: &mut Map<String, Value>,
    apply_defaults: bool,
) -> HubResult<()> {
    let relations = coll
        .validate(data, apply_defaults)
        .map_err(HubError::Validation)?;
    let mut errors = Vec::new();
    for r in relations {
        let exists = st.collections.contains_key(&r.collection)
            && load_record(tx, &r.collection, &r.id)?.is_some();
        if !exists {
            errors.push(FieldError::new(
                &r.field,
                Rule::Relation,
                format!(
                    "refers to '{}', which does not exist in '{}'",
                    r.id, r.collection
                ),
            ));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(HubError::Validation(errors))
    }
}

fn insert_new(
    tx: &Transaction<'_>,
    st: &mut State,
    coll: &Collection,
    id: String,
    mut data: Map<String, Value>,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    validate(tx, st, coll, &mut data, true)?;
    let now = now();
    let record = Record {
        collection: coll.name().to_string(),
        id,
        created_at: now,
        updated_at: now,
        version: 1,
        data,
    };
    let ts = format_time(&now);
    tx.prepare_cached(
        "INSERT INTO records (collection, id, data, created_at, updated_at, version)
         VALUES (?1, ?2, ?3, ?4, ?4, 1)",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.collection,
            record.id,
            Value::Object(record.data.clone()).to_string(),
            ts
        ])
    })
    .map_err(sql_err)?;
    let event = append_change(tx, st, ChangeKind::Created, &record, None, origin)?;
    Ok(WriteOutcome::Record {
        record,
        created: true,
        event,
    })
}

fn update_existing(
    tx: &Transaction<'_>,
    st: &mut State,
    coll: &Collection,
    prev: Record,
    mut data: Map<String, Value>,
    apply_defaults: bool,
    origin: Origin,
) -> HubResult<WriteOutcome> {
    validate(tx, st, coll, &mut data, apply_defaults)?;
    let now = now();
    let record = Record {
        collection: prev.collection.clone(),
        id: prev.id.clone(),
        created_at: prev.created_at,
        updated_at: now,
        version: prev.version + 1,
        data,
    };
    tx.prepare_cached(
        "UPDATE records SET data = ?3, updated_at = ?4, version = ?5
         WHERE collection = ?1 AND id = ?2",
    )
    .and_then(|mut s| {
        s.execute(params![
            record.collection,
            record.id,
            Value::Object(record.data.clone()).to_string(),
            format_time(&now),
            record.version as i64
        ])
    })
    .map_err(sql_err)?;
    let event = append_change(tx, st, ChangeKind::Updated, &record, Some(&prev), origin)?;
    Ok(WriteOutcome::Record {
        record,
        created: false,
        event,
    })
}

fn unique_indexes(tx: &Transaction<'_>, collection: &str) -> HubResult<Vec<String>> {
    let prefix = unique_index_name(collection, "");
    let mut stmt = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND substr(name, 1, ?2) = ?1")
        .map_err(sql_err)?;
    let names = stmt
        .query_map(params![prefix, prefix.len() as i64], |r| {
            r.get::<_, String>(0)
        })
        .map_err(sql_err)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_err)?;
    Ok(names)
}

fn put_collection(
    tx: &Transaction<'_>,
    st: &mut State,
    spec: CollectionSpec,
    existing: Option<&Collection>,
) -> HubResult<WriteOutcome> {
    let mut errors = Vec::new();
    for (i, f) in spec.fields.iter().flatten().enumerate() {
        if let Some(target) = f.ty.relation_target()
            && target != spec.name
            && !st.collections.contains_key(target)
        {
            errors.push(FieldError::new(
                &format!("fields[{i}].collection"),
                Rule::Relation,
                format!("refers to collection '{target}', which does not exist"),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(HubError::Validation(errors));
    }
    let now = now();
    let created_at = existing.map(|c| c.created_at).unwrap_or(now);
    let spec_json = serde_json::to_string(&spec)
        .map_err(|e| HubError::Storage(format!("encoding collection: {e}")))?;
    tx.execute(
        "INSERT INTO collections (name, spec, created_at, updated_at) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        params![
            spec.name,
            spec_json,
            format_time(&created_at),
            format_time(&now)
        ],
    )
    .map_err(sql_err)?;
    // Unique fields are enforced by partial expression indexes, so the database itself
    // refuses a duplicate even under concurrent writers.
    let wanted: Vec<String> = spec
        .fields
        .iter()
        .flatten()
        .filter(|f| f.unique)
        .map(|f| unique_index_name(&spec.name, &f.name))
        .collect();
    for idx in unique_indexes(tx, &spec.name)? {
        if !wanted.contains(&idx) {
            tx.execute_batch(&format!("DROP INDEX IF EXISTS \"{idx}\""))
                .map_err(sql_err)?;
        }
    }
    for f in spec.fields.iter().flatten().filter(|f| f.unique) {
        // Names are validated identifiers, so interpolation is safe.
        let sql = format!(
            "CREATE UNIQUE INDEX IF NOT EXISTS \"{idx}\" ON records (json_extract(data, '$.\"{f}\"')) WHERE collection = '{c}'",
            idx = unique_index_name(&spec.name, &f.name),
            c = spec.name,
            f = f.name
        );
        tx.execute_batch(&sql).map_err(sql_err)?;
    }
    let coll = Arc::new(Collection {
        spec,
        created_at,
        updated_at: now,
    });
    st.collections.insert(coll.spec.name.clone(), coll.clone());
    Ok(WriteOutcome::Collection(coll))
}
