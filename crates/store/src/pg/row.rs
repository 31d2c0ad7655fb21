//! Row decoding for the Postgres engine, the same values the SQLite rows decode to.

use std::sync::Arc;

use bytes::Bytes;
use polyport_core::Record;
use polyport_core::event::{Event, Origin};
use polyport_core::record::parse_time;
use polyport_core::topic::Topic;
use polyport_core::webhook::{Delivery, DeliveryStatus, delivery_id};
use postgres::Row;
use serde_json::Value;

use crate::db::from_micros;

/// Columns of a record row, in [`record_from_row`]'s order.
pub(crate) const RECORD_COLS: &str = "collection, id, doc, created_at, updated_at, version";

pub(crate) fn record_from_row(row: &Row) -> Result<Record, postgres::Error> {
    let data = match serde_json::from_str::<Value>(row.try_get(2)?) {
        Ok(Value::Object(m)) => m,
        _ => Default::default(),
    };
    Ok(Record {
        collection: row.try_get(0)?,
        id: row.try_get(1)?,
        data,
        created_at: parse_time(row.try_get(3)?).unwrap_or_default(),
        updated_at: parse_time(row.try_get(4)?).unwrap_or_default(),
        version: u64::try_from(row.try_get::<_, i64>(5)?).unwrap_or(0),
    })
}

/// Columns of an event row, in [`event_from_row`]'s order.
pub(crate) const EVENT_COLS: &str =
    "seq, id, topic, type, time, content_type, headers, payload, origin, attrs, sender";

/// `None` for a row whose topic is not a topic (written by something else).
pub(crate) fn event_from_row(row: &Row) -> Result<Option<Arc<Event>>, postgres::Error> {
    let Ok(topic) = Topic::new(row.try_get::<_, &str>(2)?) else {
        return Ok(None);
    };
    let headers: Vec<(String, String)> = row
        .try_get::<_, Option<&str>>(6)?
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    let attrs = row
        .try_get::<_, Option<&str>>(9)?
        .and_then(|a| serde_json::from_str(a).ok())
        .unwrap_or_default();
    let sender = row
        .try_get::<_, Option<&str>>(10)?
        .and_then(|s| serde_json::from_str(s).ok());
    Ok(Some(Arc::new(
        Event::new(
            Some(u64::try_from(row.try_get::<_, i64>(0)?).unwrap_or(0)),
            row.try_get(1)?,
            topic,
            row.try_get(3)?,
            from_micros(row.try_get(4)?),
            row.try_get(5)?,
            headers,
            Bytes::copy_from_slice(row.try_get::<_, &[u8]>(7)?),
            Origin::from_label(row.try_get(8)?),
        )
        .with_attrs(attrs, sender),
    )))
}

/// Columns of a delivery row, in [`delivery_from_row`]'s order.
pub(crate) const DELIVERY_COLS: &str = crate::webhooks::DELIVERY_COLS;

pub(crate) fn delivery_from_row(r: &Row) -> Result<Delivery, postgres::Error> {
    let endpoint_id: String = r.try_get(0)?;
    let seq = r.try_get::<_, i64>(1)? as u64;
    Ok(Delivery {
        id: delivery_id(&endpoint_id, seq),
        endpoint_id,
        seq,
        event_type: r.try_get(2)?,
        status: DeliveryStatus::parse(r.try_get(3)?).unwrap_or(DeliveryStatus::Pending),
        attempts: r.try_get::<_, i32>(4)? as u32,
        next_attempt_at: r.try_get::<_, Option<i64>>(5)?.map(from_micros),
        last_status: r.try_get::<_, Option<i32>>(6)?.map(|s| s as u16),
        created_at: from_micros(r.try_get(7)?),
        updated_at: from_micros(r.try_get(8)?),
    })
}
