//! Appending to the event log: sequence numbers, published events and record changes.

use std::sync::Arc;

use polyport_core::engine::{ChangeKind, WriteOutcome, change_event};
use polyport_core::event::{DEFAULT_EVENT_TYPE, Event, EventDraft, EventRef, Origin};
use polyport_core::record::{Record, new_id};
use polyport_core::{Attributes, HubResult, Sender};
use rusqlite::{Transaction, params};

use super::{State, now, sql_err};
use crate::webhooks;

/// Appends a drafted event with the next sequence.
pub(super) fn publish(
    tx: &Transaction<'_>,
    st: &mut State,
    draft: EventDraft,
    origin: Origin,
    sender: Option<Sender>,
) -> HubResult<WriteOutcome> {
    let seq = take_seq(st);
    let event = Arc::new(event_from_draft(draft, seq, origin, sender));
    insert_event(tx, st, &event)?;
    Ok(WriteOutcome::Published(event))
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

/// Appends the change event of a record write.
pub(super) fn append_change(
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
