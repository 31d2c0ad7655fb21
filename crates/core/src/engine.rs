//! The seams behind the Hub: [`Store`] (records, collections and the event log, written
//! atomically together) and [`EventSink`] (where committed events go, in order).
//!
//! Only engines (the embedded SQLite store, later the cluster store) implement these;
//! adapters never see them — they hold a [`crate::Hub`].

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::HubResult;
use crate::event::{Event, EventDraft, EventRef, Origin};
use crate::query::{ListQuery, Page};
use crate::record::Record;
use crate::schema::{Collection, CollectionSpec};
use crate::topic::Topic;
use crate::webhook::{Attempt, AttemptOutcome, Delivery, DeliveryStatus, Endpoint};

pub use crate::schema::CollectionMap;
pub use crate::webhook::Redeliver;

/// Where the event log stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogState {
    /// Fixed when the log was created; changes only if history is lost.
    pub epoch: String,
    /// First sequence still retained (`last + 1` when the log is empty).
    pub first_seq: u64,
    /// Last sequence written (0 when nothing was ever written).
    pub last_seq: u64,
}

/// One atomic write. Validation, merge patching and event construction happen inside the
/// engine's write transaction so they see the same state they change.
#[derive(Debug)]
pub enum WriteCommand {
    /// Create a collection.
    CreateCollection(CollectionSpec),
    /// Replace a collection's definition (existing records are not rewritten).
    ReplaceCollection(CollectionSpec),
    /// Delete a collection and its records.
    DeleteCollection(String),
    /// Create a record (id given or generated).
    CreateRecord {
        /// Collection.
        collection: String,
        /// Client-given id.
        id: Option<String>,
        /// Document.
        data: Map<String, Value>,
        /// Create the collection schemaless when missing.
        auto_create: bool,
        /// Who wrote.
        origin: Origin,
    },
    /// Replace a record's document; creates it when missing and no version is expected.
    ReplaceRecord {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
        /// Document.
        data: Map<String, Value>,
        /// Optimistic lock.
        expected_version: Option<u64>,
        /// Create the collection schemaless when missing.
        auto_create: bool,
        /// Who wrote.
        origin: Origin,
    },
    /// Apply an RFC 7396 merge patch.
    PatchRecord {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
        /// The patch document.
        patch: Value,
        /// Optimistic lock.
        expected_version: Option<u64>,
        /// Who wrote.
        origin: Origin,
    },
    /// Delete a record.
    DeleteRecord {
        /// Collection.
        collection: String,
        /// Id.
        id: String,
        /// Optimistic lock.
        expected_version: Option<u64>,
        /// Who wrote.
        origin: Origin,
    },
    /// Append an event to the log.
    Publish {
        /// The event.
        draft: EventDraft,
        /// Who published.
        origin: Origin,
        /// The connection that published, from the caller's auth context.
        sender: Option<crate::attributes::Sender>,
    },
    /// Create or replace a webhook endpoint (the Hub fills id, secret and times).
    PutEndpoint(Box<Endpoint>),
    /// Delete a webhook endpoint with its deliveries and attempts.
    DeleteEndpoint(String),
    /// Record one delivery attempt and what follows from it.
    RecordAttempt {
        /// The endpoint.
        endpoint_id: String,
        /// The event's sequence.
        seq: u64,
        /// The attempt log entry.
        attempt: Attempt,
        /// The decision.
        outcome: AttemptOutcome,
    },
    /// Put deliveries of an endpoint (back) in the queue, due now.
    Redeliver {
        /// The endpoint.
        endpoint_id: String,
        /// Which.
        which: Redeliver,
    },
    /// Set (`Some`) or remove (`None`) one entry of an adapter's durable state.
    PutState {
        /// Whose state (`mqtt.session`, `mqtt.retained`, …).
        namespace: String,
        /// Entry key.
        key: String,
        /// Opaque bytes owned by the adapter.
        value: Option<Bytes>,
    },
    /// Forget the saved positions of every consumer group whose key starts with `prefix`.
    DeleteConsumers {
        /// Key prefix: a group name followed by `\n` for one group, or the start of
        /// group names.
        prefix: String,
    },
    /// Persist a consumer group's acknowledged position.
    SaveConsumer {
        /// Group key.
        key: String,
        /// Everything up to and including this sequence is acknowledged.
        position: u64,
        /// The identity that created the group (kept from the first save on).
        owner: Option<std::sync::Arc<str>>,
    },
}

/// What a write produced.
#[derive(Debug)]
pub enum WriteOutcome {
    /// A collection was created or changed.
    Collection(Arc<Collection>),
    /// A record was written (`created` tells create from update).
    Record {
        /// The stored record.
        record: Record,
        /// True when the write created it.
        created: bool,
        /// The change event.
        event: EventRef,
    },
    /// A record was deleted.
    Deleted {
        /// The record as it was.
        record: Record,
        /// The change event.
        event: EventRef,
    },
    /// An event was appended.
    Published(EventRef),
    /// A webhook endpoint was written.
    Endpoint(Arc<Endpoint>),
    /// How many deliveries were (re)queued.
    Requeued(u64),
    /// Nothing to return.
    Done,
}

/// A queued write's outcome, once it is durable.
pub type Submitted =
    std::pin::Pin<Box<dyn std::future::Future<Output = HubResult<WriteOutcome>> + Send>>;

/// Records, collections and the event log.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Executes one write; returns only after it is durable.
    async fn write(&self, cmd: WriteCommand) -> HubResult<WriteOutcome>;
    /// Queues one write and returns once it is queued, with what resolves when it is
    /// durable. Writes queued one after another by one caller are applied in that order,
    /// so an adapter can pipeline a client's writes and still keep them in order. The
    /// default queues nothing ahead: it finishes the write first.
    async fn submit(&self, cmd: WriteCommand) -> HubResult<Submitted> {
        let out = self.write(cmd).await;
        Ok(Box::pin(std::future::ready(out)))
    }
    /// How full the queue of writes waiting for the disk is, from 0 (empty) to 1 (full:
    /// writers wait), so that adapters can tell their clients to slow down.
    fn write_pressure(&self) -> f32 {
        0.0
    }
    /// One record.
    /// One record; shared, so a cached one is handed out without a copy.
    async fn get_record(&self, collection: &str, id: &str) -> HubResult<Option<Arc<Record>>>;
    /// Several records of one collection by id (missing ones are skipped).
    async fn get_records(&self, collection: &str, ids: &[String]) -> HubResult<Vec<Record>>;
    /// A filtered, sorted page.
    async fn list_records(&self, collection: &str, query: &ListQuery) -> HubResult<Page>;
    /// Durable events with `seq > after`, in order, at most `limit`.
    async fn read_events(&self, after: u64, limit: usize) -> HubResult<Vec<EventRef>>;
    /// A consumer group's saved position.
    async fn load_consumer(&self, key: &str) -> HubResult<Option<u64>>;
    /// How many saved groups `owner` created.
    async fn count_consumers_owned(&self, owner: &str) -> HubResult<usize>;
    /// Every entry of one namespace of adapter state, by key.
    async fn load_state(&self, namespace: &str) -> HubResult<Vec<(String, Bytes)>>;
    /// One entry of adapter state (engines shared by nodes read it by key).
    async fn get_state(&self, namespace: &str, key: &str) -> HubResult<Option<Bytes>> {
        Ok(self
            .load_state(namespace)
            .await?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v))
    }
    /// Deliveries of an endpoint, newest first, optionally of one status, before `before`
    /// (a sequence) for paging.
    async fn list_deliveries(
        &self,
        endpoint_id: &str,
        status: Option<DeliveryStatus>,
        before: Option<u64>,
        limit: usize,
    ) -> HubResult<Vec<Delivery>>;
    /// The oldest pending deliveries of an endpoint, at most `limit`, in sequence order
    /// (deliveries are ordered per endpoint); with `due_by`, only those due by then (an
    /// endpoint that gives up order skips what waits for a retry).
    async fn next_deliveries(
        &self,
        endpoint_id: &str,
        limit: usize,
        due_by: Option<DateTime<Utc>>,
    ) -> HubResult<Vec<Delivery>>;
    /// One delivery.
    async fn get_delivery(&self, endpoint_id: &str, seq: u64) -> HubResult<Option<Delivery>>;
    /// The attempt log of a delivery, oldest first.
    async fn list_attempts(&self, endpoint_id: &str, seq: u64) -> HubResult<Vec<Attempt>>;
    /// All webhook endpoints, as of now.
    fn endpoints(&self) -> Arc<Vec<Arc<Endpoint>>>;
    /// All collections, as of now.
    fn collections(&self) -> Arc<CollectionMap>;
    /// Where the log stands, as of now.
    fn log_state(&self) -> LogState;
    /// Flushes and stops accepting writes.
    async fn close(&self);

    /// The lease on `name` when no other node holds it (see
    /// [`crate::cluster::Lease`]); the embedded engine's node holds every lease.
    async fn try_lease(&self, name: &str) -> HubResult<Option<Box<dyn crate::cluster::Lease>>> {
        let _ = name;
        Ok(Some(Box::new(crate::cluster::Sole)))
    }

    /// `embedded` (this process's own store) or `cluster` (shared with other nodes).
    fn engine(&self) -> &'static str {
        "embedded"
    }

    /// Whether the engine can take writes now; the reason when not (`/readyz`).
    fn ready(&self) -> Result<(), String> {
        Ok(())
    }
}

/// Receives every committed durable event exactly once, in sequence order, from the
/// engine's commit path. Must not block.
pub trait EventSink: Send + Sync + 'static {
    /// Called after the commit that made these events durable.
    fn committed(&self, events: &[EventRef]);
}

/// Which kind of change a record event reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new record.
    Created,
    /// An existing record was written.
    Updated,
    /// A record was removed.
    Deleted,
}

impl ChangeKind {
    /// `created`, `updated` or `deleted`.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        }
    }
}

/// Builds the event for a record change: CloudEvents type `{collection}.{kind}` on topic
/// `collections/{collection}/{id}`, payload `{"type", "record", "previous"?, "seq"}` — the
/// payload repeats type and seq because protocols without an envelope (MQTT) see only it.
pub fn change_event(
    kind: ChangeKind,
    record: &Record,
    previous: Option<&Record>,
    seq: u64,
    origin: Origin,
    time: DateTime<Utc>,
) -> Event {
    let event_type = format!("{}.{}", record.collection, kind.as_str());
    // Serialized from the records in place: building a `Value` first deep-copied each
    // document on the writer thread, once per write.
    let payload = serde_json::to_vec(&ChangePayload {
        event_type: &event_type,
        record: record.json(None),
        seq,
        previous: previous.map(|p| p.json(None)),
    })
    .unwrap_or_default();
    Event::new(
        Some(seq),
        crate::record::new_id(),
        Topic::for_record(&record.collection, &record.id),
        event_type,
        time,
        Some("application/json".into()),
        Vec::new(),
        Bytes::from(payload),
        origin,
    )
}

/// A record change's payload, in the order it has always been written: type, record,
/// seq, then previous when there is one.
#[derive(serde::Serialize)]
struct ChangePayload<'a> {
    #[serde(rename = "type")]
    event_type: &'a str,
    record: crate::record::RecordJson<'a>,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    previous: Option<crate::record::RecordJson<'a>>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn record(version: u64, data: Value) -> Record {
        let at = DateTime::parse_from_rfc3339("2026-12-07T05:00:00.123456Z")
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_default();
        Record {
            collection: "orders".into(),
            id: "o1".into(),
            created_at: at,
            updated_at: at,
            version,
            data: match data {
                Value::Object(m) => m,
                _ => Map::new(),
            },
        }
    }

    /// The bytes subscribers have always received: the payload as a `Value`.
    fn as_before(kind: ChangeKind, r: &Record, previous: Option<&Record>, seq: u64) -> Vec<u8> {
        let mut payload = json!({
            "type": format!("{}.{}", r.collection, kind.as_str()),
            "record": r.to_json(),
            "seq": seq,
        });
        if let Some(p) = previous {
            payload["previous"] = p.to_json();
        }
        serde_json::to_vec(&payload).unwrap_or_default()
    }

    #[test]
    fn a_change_payload_is_byte_for_byte_what_it_was() {
        let now = Utc::now();
        let old = record(
            1,
            json!({"total": 3, "lines": [{"sku": "a"}], "note": null}),
        );
        let new = record(
            2,
            json!({"total": 4, "lines": [{"sku": "a"}, {"sku": "b"}]}),
        );
        for (kind, r, previous) in [
            (ChangeKind::Created, &old, None),
            (ChangeKind::Updated, &new, Some(&old)),
            (ChangeKind::Deleted, &new, None),
        ] {
            let e = change_event(kind, r, previous, 42, Origin::HUB, now);
            assert_eq!(
                e.payload.as_ref(),
                as_before(kind, r, previous, 42).as_slice()
            );
        }
    }
}
