//! The webhook outbox inside the store: endpoints, deliveries and attempts. Deliveries
//! are inserted by `enqueue` from the writer's event-append path, in the same
//! transaction as the event, so an acknowledged event always has its deliveries.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use polyport_core::engine::{Redeliver, WriteOutcome};
use polyport_core::event::{Event, EventDraft, Origin};
use polyport_core::topic::Topic;
use polyport_core::webhook::{
    Attempt, AttemptOutcome, Delivery, DeliveryStatus, Endpoint, delivery_id,
};
use polyport_core::{HubError, HubResult};
use rusqlite::{Connection, Row, params};

use crate::db::from_micros;
use crate::tx::{Settle, Tx};

pub(crate) const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS webhook_endpoints (
    id   TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    endpoint_id     TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    event_type      TEXT NOT NULL,
    status          TEXT NOT NULL,
    attempts        INTEGER NOT NULL,
    next_attempt_at INTEGER,
    last_status     INTEGER,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    PRIMARY KEY (endpoint_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS webhook_deliveries_status ON webhook_deliveries (endpoint_id, status, seq);
CREATE TABLE IF NOT EXISTS webhook_attempts (
    endpoint_id TEXT NOT NULL,
    seq         INTEGER NOT NULL,
    number      INTEGER NOT NULL,
    body        TEXT NOT NULL,
    PRIMARY KEY (endpoint_id, seq, number)
) WITHOUT ROWID;
"#;

pub(crate) fn load_endpoints(conn: &Connection) -> rusqlite::Result<Vec<Arc<Endpoint>>> {
    let mut stmt = conn.prepare("SELECT body FROM webhook_endpoints ORDER BY id")?;
    let rows = stmt.query_map([], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for body in rows {
        match serde_json::from_str::<Endpoint>(&body?) {
            Ok(ep) => out.push(Arc::new(ep)),
            Err(e) => tracing::error!(error = %e, "unreadable webhook endpoint skipped"),
        }
    }
    Ok(out)
}

/// Queues a delivery of `e` for every enabled endpoint that wants it.
pub(crate) fn enqueue(tx: &mut dyn Tx, endpoints: &[Arc<Endpoint>], e: &Event) -> HubResult<()> {
    let Some(seq) = e.seq else { return Ok(()) };
    let now = Utc::now().timestamp_micros();
    for ep in endpoints.iter().filter(|ep| ep.spec.enabled && ep.wants(e)) {
        tx.queue_delivery(&ep.id, seq, &e.event_type, now, false)?;
    }
    Ok(())
}

pub(crate) fn put_endpoint(
    tx: &mut dyn Tx,
    endpoints: &mut Vec<Arc<Endpoint>>,
    ep: Endpoint,
) -> HubResult<WriteOutcome> {
    let body = serde_json::to_string(&ep).map_err(|e| HubError::Storage(e.to_string()))?;
    tx.put_endpoint(&ep.id, &body)?;
    let ep = Arc::new(ep);
    match endpoints.iter_mut().find(|e| e.id == ep.id) {
        Some(slot) => *slot = ep.clone(),
        None => endpoints.push(ep.clone()),
    }
    Ok(WriteOutcome::Endpoint(ep))
}

pub(crate) fn delete_endpoint(
    tx: &mut dyn Tx,
    endpoints: &mut Vec<Arc<Endpoint>>,
    id: &str,
) -> HubResult<WriteOutcome> {
    if !endpoints.iter().any(|e| e.id == id) {
        return Err(HubError::NotFound(format!("webhook endpoint '{id}'")));
    }
    tx.delete_endpoint(id)?;
    endpoints.retain(|e| e.id != id);
    Ok(WriteOutcome::Done)
}

/// Records an attempt. Disabling an endpoint also returns the `webhook.endpoint.disabled`
/// event draft for the caller to append (it owns sequence numbering).
pub(crate) fn record_attempt(
    tx: &mut dyn Tx,
    endpoints: &mut [Arc<Endpoint>],
    endpoint_id: &str,
    seq: u64,
    attempt: &Attempt,
    outcome: &AttemptOutcome,
) -> HubResult<Option<EventDraft>> {
    let now = Utc::now();
    let body = serde_json::to_string(attempt).map_err(|e| HubError::Storage(e.to_string()))?;
    tx.put_attempt(endpoint_id, seq, attempt.number, &body)?;
    let (status, next): (&str, Option<i64>) = match outcome {
        AttemptOutcome::Delivered => ("delivered", None),
        AttemptOutcome::RetryAt(t) => ("pending", Some(t.timestamp_micros())),
        AttemptOutcome::Dead => ("dead", None),
        // Stays queued for when the endpoint is enabled again.
        AttemptOutcome::DisableEndpoint(_) => ("pending", Some(now.timestamp_micros())),
    };
    // A replay (`redeliver`) that lands while this attempt was in flight moved
    // `updated_at` past the attempt's start: it stays queued as the replay left it, or
    // the outcome would silently swallow the requested resend.
    tx.settle_delivery(&Settle {
        endpoint_id,
        seq,
        status,
        attempts: attempt.number,
        next_attempt_at: next,
        last_status: attempt.status,
        now: now.timestamp_micros(),
        attempt_at: attempt.at.timestamp_micros(),
    })?;
    let Some(slot) = endpoints.iter_mut().find(|e| e.id == endpoint_id) else {
        return Ok(None);
    };
    let mut ep = (**slot).clone();
    let mut draft = None;
    match outcome {
        AttemptOutcome::Delivered => ep.failing_since = None,
        AttemptOutcome::DisableEndpoint(reason) => {
            ep.spec.enabled = false;
            ep.disabled_reason = Some(reason.clone());
            ep.failing_since.get_or_insert(now);
            let payload =
                serde_json::json!({"endpoint_id": ep.id, "url": ep.spec.url, "reason": reason});
            let topic = Topic::new(&format!("webhooks/endpoints/{}", ep.id))
                .map_err(|e| HubError::Storage(e.to_string()))?;
            let mut d = EventDraft::new(topic, serde_json::to_vec(&payload).unwrap_or_default());
            d.content_type = Some("application/json".into());
            d.event_type = Some("webhook.endpoint.disabled".into());
            draft = Some(d);
        }
        AttemptOutcome::RetryAt(_) | AttemptOutcome::Dead => {
            ep.failing_since.get_or_insert(now);
        }
    }
    if ep != **slot {
        ep.updated_at = now;
        let body = serde_json::to_string(&ep).map_err(|e| HubError::Storage(e.to_string()))?;
        tx.put_endpoint(&ep.id, &body)?;
        *slot = Arc::new(ep);
    }
    Ok(draft)
}

/// The origin of events the webhook engine produces.
pub(crate) const ORIGIN: Origin = Origin("webhook");

pub(crate) fn redeliver(
    tx: &mut dyn Tx,
    endpoints: &[Arc<Endpoint>],
    endpoint_id: &str,
    which: &Redeliver,
) -> HubResult<WriteOutcome> {
    let Some(ep) = endpoints.iter().find(|e| e.id == endpoint_id) else {
        return Err(HubError::NotFound(format!(
            "webhook endpoint '{endpoint_id}'"
        )));
    };
    let now = Utc::now().timestamp_micros();
    let n = match which {
        Redeliver::Dead => tx.requeue_dead(endpoint_id, now)?,
        Redeliver::One(seq) => requeue_from_log(tx, ep, *seq - 1, Some(*seq), now, false)?,
        Redeliver::Since(after) => requeue_from_log(tx, ep, *after, None, now, true)?,
    };
    Ok(WriteOutcome::Requeued(n))
}

/// Queues events from the log with `seq > after` (up to `only`) for `ep`, resetting
/// existing deliveries. `filter` applies the endpoint's filters (replay by range);
/// a single named event is queued whatever the filters say.
fn requeue_from_log(
    tx: &mut dyn Tx,
    ep: &Endpoint,
    after: u64,
    only: Option<u64>,
    now: i64,
    filter: bool,
) -> HubResult<u64> {
    let rows = tx.event_heads(after, only.unwrap_or(u64::MAX))?;
    if only.is_some() && rows.is_empty() {
        return Err(HubError::InvalidRequest(
            "that event is no longer in the log (retention)".into(),
        ));
    }
    let mut n = 0;
    for (seq, topic, ty) in rows {
        let Ok(topic) = Topic::new(&topic) else {
            continue;
        };
        if filter && !ep.wants_parts(&ty, &topic) {
            continue;
        }
        tx.queue_delivery(&ep.id, seq, &ty, now, true)?;
        n += 1;
    }
    Ok(n)
}

pub(crate) const DELIVERY_COLS: &str = "endpoint_id, seq, event_type, status, attempts, next_attempt_at, last_status, created_at, updated_at";

pub(crate) fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let endpoint_id: String = r.get(0)?;
    let seq: i64 = r.get(1)?;
    let status: String = r.get(3)?;
    Ok(Delivery {
        id: delivery_id(&endpoint_id, seq as u64),
        endpoint_id,
        seq: seq as u64,
        event_type: r.get(2)?,
        status: DeliveryStatus::parse(&status).unwrap_or(DeliveryStatus::Pending),
        attempts: r.get::<_, i64>(4)? as u32,
        next_attempt_at: r.get::<_, Option<i64>>(5)?.map(from_micros),
        last_status: r.get::<_, Option<i64>>(6)?.map(|s| s as u16),
        created_at: from_micros(r.get(7)?),
        updated_at: from_micros(r.get(8)?),
    })
}

pub(crate) fn next_deliveries(
    conn: &Connection,
    endpoint_id: &str,
    limit: usize,
    due_by: Option<DateTime<Utc>>,
) -> rusqlite::Result<Vec<Delivery>> {
    // Without a time, every pending one is due (`i64::MAX`).
    let due = due_by.map_or(i64::MAX, |t| t.timestamp_micros());
    conn.prepare_cached(&format!(
        "SELECT {DELIVERY_COLS} FROM webhook_deliveries
         WHERE endpoint_id = ?1 AND status = 'pending'
           AND (next_attempt_at IS NULL OR next_attempt_at <= ?3)
         ORDER BY seq LIMIT ?2"
    ))?
    .query_map(params![endpoint_id, limit as i64, due], delivery_from_row)?
    .collect()
}

pub(crate) fn attempts(
    conn: &Connection,
    endpoint_id: &str,
    seq: u64,
) -> rusqlite::Result<Vec<Attempt>> {
    let mut stmt = conn.prepare_cached(
        "SELECT body FROM webhook_attempts WHERE endpoint_id = ?1 AND seq = ?2 ORDER BY number",
    )?;
    let rows = stmt.query_map(params![endpoint_id, seq as i64], |r| r.get::<_, String>(0))?;
    let mut out = Vec::new();
    for b in rows {
        if let Ok(a) = serde_json::from_str(&b?) {
            out.push(a);
        }
    }
    Ok(out)
}
