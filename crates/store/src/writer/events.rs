//! Appending to the event log: sequence numbers, published events and record changes.

use std::sync::Arc;

use polyport_core::engine::{ChangeKind, WriteOutcome, change_event};
use polyport_core::event::{DEFAULT_EVENT_TYPE, Event, EventDraft, EventRef, Origin};
use polyport_core::record::{Record, new_id};
use polyport_core::{HubResult, Sender};

use super::{State, now};
use crate::tx::Tx;
use crate::webhooks;

/// Appends a drafted event with the next sequence.
pub(super) fn publish(
    tx: &mut dyn Tx,
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
fn insert_event(tx: &mut dyn Tx, st: &State, e: &Event) -> HubResult<()> {
    tx.insert_event(e)?;
    webhooks::enqueue(tx, &st.endpoints, e)
}

/// Appends the change event of a record write.
pub(super) fn append_change(
    tx: &mut dyn Tx,
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
