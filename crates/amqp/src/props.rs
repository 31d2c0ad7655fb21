//! AMQP basic properties ↔ the Hub's message attributes, following RabbitMQ's mapping
//! between its AMQP and MQTT sides: `expiration` ↔ expiry, `correlation_id` ↔
//! correlation data, `reply_to` ↔ response topic (`.` ↔ `/`), headers ↔ user headers.
//!
//! Header values that are not strings travel to other protocols as their text; AMQP
//! consumers get the original typed table back (kept in the `typed_headers` attribute),
//! so a Celery task's typed headers round-trip exactly.

use amq_protocol::protocol::BasicProperties;
use amq_protocol::types::{AMQPValue, FieldTable};
use chrono::{DateTime, TimeZone, Utc};
pub(crate) use polyport_broker::values::{short, value_text};
use polyport_core::{Attributes, Durability, EventDraft, Topic};

/// Fills a draft from a publish's properties, at `now`.
pub(crate) fn inbound(p: &BasicProperties, d: &mut EventDraft, now: DateTime<Utc>) {
    let a: &mut Attributes = &mut d.attrs;
    d.content_type = p.content_type().as_ref().map(|s| s.as_str().to_string());
    a.content_encoding = p
        .content_encoding()
        .as_ref()
        .map(|s| s.as_str().to_string());
    a.message_id = p.message_id().as_ref().map(|s| s.as_str().to_string());
    a.correlation_id = p
        .correlation_id()
        .as_ref()
        .map(|s| bytes::Bytes::copy_from_slice(s.as_str().as_bytes()));
    a.reply_to = p
        .reply_to()
        .as_ref()
        .and_then(|s| Topic::new(&s.as_str().replace('.', "/")).ok());
    a.priority = *p.priority();
    a.persistent = p.delivery_mode().map(|m| m == 2);
    a.timestamp = p
        .timestamp()
        .and_then(|t| Utc.timestamp_opt(t as i64, 0).single());
    a.expires_at = p
        .expiration()
        .as_ref()
        .and_then(|s| s.as_str().parse::<i64>().ok())
        .map(|ms| now + chrono::Duration::milliseconds(ms.max(0)));
    d.event_type = p.kind().as_ref().map(|s| s.as_str().to_string());
    if let Some(h) = p.headers() {
        d.headers = h
            .inner()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), value_text(v)))
            .collect();
        if h.inner()
            .values()
            .any(|v| !matches!(v, AMQPValue::LongString(_)))
        {
            d.attrs.typed_headers = serde_json::to_string(h).ok().map(Into::into);
        }
    }
    // Persistent messages wait for the disk; transient ones are logged without waiting
    // (RabbitMQ keeps them in memory only).
    d.durability = match p.delivery_mode() {
        Some(2) => Durability::Durable,
        _ => Durability::Logged,
    };
}

/// The properties a delivery of `e` carries, at `now`; `None` when it has expired.
pub(crate) fn outbound(e: &polyport_core::Event, now: DateTime<Utc>) -> Option<BasicProperties> {
    let a = &e.attrs;
    let mut p = BasicProperties::default();
    if let Some(ct) = &e.content_type {
        p = p.with_content_type(short(ct));
    }
    if let Some(ce) = &a.content_encoding {
        p = p.with_content_encoding(short(ce));
    }
    if let Some(m) = &a.message_id {
        p = p.with_message_id(short(m));
    }
    if let Some(c) = &a.correlation_id {
        p = p.with_correlation_id(short(&String::from_utf8_lossy(c)));
    }
    if let Some(r) = &a.reply_to {
        p = p.with_reply_to(short(&r.as_str().replace('/', ".")));
    }
    if let Some(pr) = a.priority {
        p = p.with_priority(pr);
    }
    if let Some(persistent) = a.persistent {
        p = p.with_delivery_mode(if persistent { 2 } else { 1 });
    }
    if let Some(t) = a.timestamp {
        p = p.with_timestamp(t.timestamp().max(0) as u64);
    }
    if let Some(at) = a.expires_at {
        let left = (at - now).num_milliseconds();
        if left <= 0 {
            return None;
        }
        p = p.with_expiration(short(&left.to_string()));
    }
    if e.event_type != polyport_core::event::DEFAULT_EVENT_TYPE {
        p = p.with_type(short(&e.event_type));
    }
    let typed = a
        .typed_headers
        .as_deref()
        .and_then(|j| serde_json::from_str::<FieldTable>(j).ok());
    if let Some(t) = typed {
        p = p.with_headers(t);
    } else if !e.headers.is_empty() {
        let mut t = FieldTable::default();
        for (k, v) in &e.headers {
            t.insert(
                short(k),
                AMQPValue::LongString(v.as_bytes().to_vec().into()),
            );
        }
        p = p.with_headers(t);
    }
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_round_trip_through_attributes() {
        let mut h = FieldTable::default();
        h.insert("k".into(), AMQPValue::LongString("v".into()));
        h.insert("n".into(), AMQPValue::LongInt(7));
        let p = BasicProperties::default()
            .with_content_type("text/plain".into())
            .with_message_id("m1".into())
            .with_correlation_id("c1".into())
            .with_reply_to("replies.client1".into())
            .with_priority(5)
            .with_delivery_mode(2)
            .with_expiration("60000".into())
            .with_headers(h);
        let now = Utc::now();
        let mut d = EventDraft::new(Topic::new("t").unwrap(), "x");
        inbound(&p, &mut d, now);
        assert_eq!(
            d.attrs.reply_to.as_ref().map(|t| t.as_str()),
            Some("replies/client1")
        );
        assert_eq!(d.durability, Durability::Durable);
        assert_eq!(
            d.headers,
            vec![("k".into(), "v".into()), ("n".into(), "7".into())]
        );
        let e = polyport_core::Event::new(
            Some(1),
            "e1".into(),
            d.topic.clone(),
            "polyport.message".into(),
            now,
            d.content_type.clone(),
            d.headers.clone(),
            d.payload.clone(),
            polyport_core::Origin("amqp"),
        )
        .with_attrs(d.attrs.clone(), None);
        let out = outbound(&e, now).unwrap();
        assert_eq!(out.message_id().as_ref().map(|s| s.as_str()), Some("m1"));
        assert_eq!(
            out.correlation_id().as_ref().map(|s| s.as_str()),
            Some("c1")
        );
        assert_eq!(
            out.reply_to().as_ref().map(|s| s.as_str()),
            Some("replies.client1")
        );
        assert_eq!(out.priority(), &Some(5));
        assert_eq!(out.delivery_mode(), &Some(2));
        assert_eq!(out.expiration().as_ref().map(|s| s.as_str()), Some("60000"));
        assert_eq!(
            out.headers()
                .as_ref()
                .and_then(|h| h.inner().get("n").cloned()),
            Some(AMQPValue::LongInt(7)),
            "typed headers come back typed"
        );
        assert!(
            outbound(&e, now + chrono::Duration::seconds(61)).is_none(),
            "expired"
        );
    }
}

#[cfg(test)]
mod typed_tests {
    use super::*;

    #[test]
    fn celery_like_headers_round_trip() {
        let mut h = FieldTable::default();
        h.insert("eta".into(), AMQPValue::Void);
        h.insert("retries".into(), AMQPValue::LongLongInt(0));
        h.insert(
            "stamps".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        h.insert(
            "timelimit".into(),
            AMQPValue::FieldArray(vec![AMQPValue::Void, AMQPValue::Void].into()),
        );
        let json = serde_json::to_string(&h).unwrap();
        let back: Result<FieldTable, _> = serde_json::from_str(&json);
        assert_eq!(back.as_ref().ok(), Some(&h), "{json} {back:?}");
    }
}
