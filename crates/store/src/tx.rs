//! What the writer needs of a database transaction.
//!
//! The writer's logic (sequence numbers, validation, versions, unique-field conflicts,
//! the webhook outbox's transitions) is written once over this trait; each engine
//! implements it in its own SQL: SQLite in `sqlite_tx.rs`, PostgreSQL for the cluster
//! engine. Every method is one step inside the writer's open transaction, so nothing
//! here commits.

use std::sync::Arc;

use polyport_core::HubResult;
use polyport_core::Record;
use polyport_core::engine::CollectionMap;
use polyport_core::event::Event;
use polyport_core::schema::Collection;
use polyport_core::webhook::Endpoint;

/// One open write transaction.
pub(crate) trait Tx {
    /// Starts a nested unit of work that [`Tx::release`] keeps and [`Tx::rollback`]
    /// undoes, so one failed command does not fail its batch.
    fn savepoint(&mut self) -> HubResult<()>;
    /// Keeps what the unit since [`Tx::savepoint`] did.
    fn release(&mut self) -> HubResult<()>;
    /// Undoes what the unit since [`Tx::savepoint`] did, and ends it.
    fn rollback(&mut self) -> HubResult<()>;

    fn load_record(&mut self, collection: &str, id: &str) -> HubResult<Option<Record>>;
    fn insert_record(&mut self, r: &Record) -> HubResult<()>;
    /// Writes data, `updated_at` and version of an existing record.
    fn update_record(&mut self, r: &Record) -> HubResult<()>;
    fn delete_record(&mut self, collection: &str, id: &str) -> HubResult<()>;

    fn insert_event(&mut self, e: &Event) -> HubResult<()>;
    /// `(seq, topic, type)` of the logged events with `after < seq <= upto`, in order.
    fn event_heads(&mut self, after: u64, upto: u64) -> HubResult<Vec<(u64, String, String)>>;

    /// Writes a collection's definition and makes its unique indexes match its fields.
    fn put_collection(&mut self, c: &Collection) -> HubResult<()>;
    /// Deletes a collection with its records and unique indexes.
    fn delete_collection(&mut self, name: &str) -> HubResult<()>;

    /// Sets (`Some`) or removes (`None`) one entry of an adapter's state.
    fn put_state(&mut self, namespace: &str, key: &str, value: Option<&[u8]>) -> HubResult<()>;
    /// Forgets every consumer position whose key starts with `prefix`.
    fn delete_consumers(&mut self, prefix: &str) -> HubResult<()>;
    /// Saves a consumer position; `owner` is kept from the first save.
    fn save_consumer(&mut self, key: &str, position: u64, owner: Option<&str>) -> HubResult<()>;

    fn put_endpoint(&mut self, id: &str, body: &str) -> HubResult<()>;
    /// Deletes an endpoint with its deliveries and attempts.
    fn delete_endpoint(&mut self, id: &str) -> HubResult<()>;
    /// Queues a delivery of event `seq` to an endpoint. An existing one is left alone,
    /// or with `reset` put back to pending.
    fn queue_delivery(
        &mut self,
        endpoint_id: &str,
        seq: u64,
        event_type: &str,
        now: i64,
        reset: bool,
    ) -> HubResult<()>;
    /// Stores an attempt's log entry (replacing one with the same number).
    fn put_attempt(
        &mut self,
        endpoint_id: &str,
        seq: u64,
        number: u32,
        body: &str,
    ) -> HubResult<()>;
    /// Moves a delivery to what its attempt decided, unless a replay requested since the
    /// attempt started (`updated_at > attempt_at`) left it pending.
    fn settle_delivery(&mut self, d: &Settle<'_>) -> HubResult<()>;
    /// Puts an endpoint's dead deliveries back to pending; how many.
    fn requeue_dead(&mut self, endpoint_id: &str, now: i64) -> HubResult<u64>;
}

/// A delivery's state after an attempt (times in microseconds since the epoch).
pub(crate) struct Settle<'a> {
    pub(crate) endpoint_id: &'a str,
    pub(crate) seq: u64,
    pub(crate) status: &'a str,
    pub(crate) attempts: u32,
    pub(crate) next_attempt_at: Option<i64>,
    pub(crate) last_status: Option<u16>,
    pub(crate) now: i64,
    pub(crate) attempt_at: i64,
}

/// What other writers may have changed, seen when a batch begins.
pub(crate) struct Head {
    /// The log's last sequence.
    pub(crate) last_seq: u64,
    /// Collections and endpoints, when another writer changed them.
    pub(crate) schema: Option<Schema>,
}

/// Collections and webhook endpoints as of a schema version.
pub(crate) struct Schema {
    pub(crate) version: u64,
    pub(crate) collections: CollectionMap,
    pub(crate) endpoints: Vec<Arc<Endpoint>>,
}

/// The writer's connection: where its batches begin and commit.
pub(crate) trait Db: Send + 'static {
    type Tx<'a>: Tx
    where
        Self: 'a;

    /// Begins a batch's transaction. `sync`: its commit must wait for the disk (false
    /// only for batches of logged-only publishes, [`polyport_core::event::Durability`]).
    /// Returns the shared state when another writer may have moved it since this one's
    /// last batch (the cluster engine's nodes share one database), read under a lock
    /// held until commit.
    fn begin(&mut self, sync: bool) -> HubResult<(Self::Tx<'_>, Option<Head>)>;

    /// Commits a batch whose last event has `last_seq`; `schema_changed` when it changed
    /// collections or webhook endpoints. Returns the new schema version, when the engine
    /// counts them.
    fn commit(tx: Self::Tx<'_>, last_seq: u64, schema_changed: bool) -> HubResult<Option<u64>>;

    /// Trims the log (see `writer::retention`): records `last` as the log's position
    /// first, then deletes events with `seq <= upto` and those older than `older_than`
    /// (microseconds) among `seq <= max_seq`. Returns how many went and the new first
    /// sequence.
    fn trim_log(
        &mut self,
        last: u64,
        upto: Option<u64>,
        older_than: Option<(i64, u64)>,
    ) -> HubResult<(u64, Option<u64>)>;

    /// At close, after the last batch.
    fn close(&mut self);
}

/// An event's JSON columns as both engines store them: headers, attributes and sender,
/// each SQL NULL when empty.
pub(crate) struct EventJson {
    pub(crate) headers: Option<String>,
    pub(crate) attrs: Option<String>,
    pub(crate) sender: Option<String>,
}

impl EventJson {
    pub(crate) fn of(e: &polyport_core::event::Event) -> Self {
        fn json<T: serde::Serialize>(v: &T) -> Option<String> {
            serde_json::to_string(v).ok()
        }
        Self {
            headers: (!e.headers.is_empty()).then(|| json(&e.headers)).flatten(),
            attrs: (e.attrs != polyport_core::Attributes::default())
                .then(|| json(&e.attrs))
                .flatten(),
            sender: e.sender.as_ref().and_then(json),
        }
    }
}
