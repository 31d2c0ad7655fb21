//! STOMP headers ↔ the Hub's message attributes, as RabbitMQ's STOMP plugin maps them to
//! AMQP properties: `content-type`, `correlation-id`, `reply-to`, `priority`,
//! `persistent`, `expiration` (a TTL in ms, RabbitMQ) or `expires` (an absolute time in
//! ms since the epoch, ActiveMQ), `type`, and any other header as a user header. STOMP's
//! `message-id` names a delivery, so an AMQP `message_id` travels as `amqp-message-id`.

use chrono::{DateTime, TimeZone, Utc};
use polyport_core::{Durability, Event, EventDraft, Topic};

use crate::codec::Frame;

/// Headers that are STOMP's own and never become user headers.
const PROTOCOL: &[&str] = &[
    "destination",
    "content-length",
    "receipt",
    "transaction",
    "message-id",
    "subscription",
    "ack",
    "id",
    "content-type",
    "correlation-id",
    "reply-to",
    "priority",
    "persistent",
    "expiration",
    "expires",
    "type",
    "amqp-message-id",
    "redelivered",
    "sequence",
];

/// A `reply-to` destination as a topic: its queue or routing key, `.` as `/`.
fn reply_topic(reply_to: &str) -> Option<Topic> {
    let name = [
        "/queue/",
        "/reply-queue/",
        "/amq/queue/",
        "/topic/",
        "/temp-queue/",
    ]
    .iter()
    .find_map(|p| reply_to.strip_prefix(p))
    .unwrap_or(reply_to);
    Topic::new(&name.replace('.', "/")).ok()
}

/// Fills `d`'s attributes from a SEND frame's headers, at `now`.
pub(crate) fn inbound(f: &Frame, d: &mut EventDraft, now: DateTime<Utc>) {
    let a = &mut d.attrs;
    d.content_type = f.get("content-type").map(str::to_string);
    a.message_id = f.get("amqp-message-id").map(str::to_string);
    a.correlation_id = f
        .get("correlation-id")
        .map(|c| bytes::Bytes::copy_from_slice(c.as_bytes()));
    a.reply_to = f.get("reply-to").and_then(reply_topic);
    a.priority = f.get("priority").and_then(|p| p.trim().parse().ok());
    a.persistent = f.get("persistent").map(|p| p.trim() == "true");
    a.expires_at = match (f.get("expiration"), f.get("expires")) {
        (Some(ttl), _) => ttl
            .trim()
            .parse::<i64>()
            .ok()
            .map(|ms| now + chrono::Duration::milliseconds(ms.max(0))),
        (None, Some(at)) => at
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|ms| *ms > 0)
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single()),
        (None, None) => None,
    };
    d.event_type = f.get("type").map(str::to_string);
    let mut seen: Vec<&str> = Vec::new();
    for (k, v) in &f.headers {
        if PROTOCOL.contains(&k.as_str()) || seen.contains(&k.as_str()) {
            continue;
        }
        seen.push(k);
        d.headers.push((k.clone(), v.clone()));
    }
    // `persistent:true` waits for the disk; other SENDs are logged without waiting.
    d.durability = match a.persistent {
        Some(true) => Durability::Durable,
        _ => Durability::Logged,
    };
}

/// The headers a MESSAGE of `e` carries besides the delivery's own; `None` when it has
/// expired at `now`.
pub(crate) fn outbound(e: &Event, now: DateTime<Utc>) -> Option<Vec<(String, String)>> {
    let a = &e.attrs;
    let mut h: Vec<(String, String)> = Vec::new();
    // The log position SSE, WebSocket and webhooks show, so a STOMP consumer can match them.
    if let Some(seq) = e.seq {
        h.push(("sequence".into(), seq.to_string()));
    }
    if let Some(at) = a.expires_at {
        if at <= now {
            return None;
        }
        h.push(("expires".into(), at.timestamp_millis().to_string()));
    }
    if let Some(ct) = &e.content_type {
        h.push(("content-type".into(), ct.clone()));
    }
    if let Some(m) = &a.message_id {
        h.push(("amqp-message-id".into(), m.clone()));
    }
    if let Some(c) = &a.correlation_id {
        h.push((
            "correlation-id".into(),
            String::from_utf8_lossy(c).into_owned(),
        ));
    }
    if let Some(r) = &a.reply_to {
        h.push((
            "reply-to".into(),
            format!("/queue/{}", r.as_str().replace('/', ".")),
        ));
    }
    if let Some(p) = a.priority {
        h.push(("priority".into(), p.to_string()));
    }
    if let Some(p) = a.persistent {
        h.push(("persistent".into(), p.to_string()));
    }
    if e.event_type != polyport_core::event::DEFAULT_EVENT_TYPE {
        h.push(("type".into(), e.event_type.clone()));
    }
    for (k, v) in &e.headers {
        if !PROTOCOL.contains(&k.as_str()) {
            h.push((k.clone(), v.clone()));
        }
    }
    Some(h)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::Command;

    #[test]
    fn headers_round_trip_through_attributes() {
        let f = Frame::new(Command::Send)
            .header("destination", "/queue/a")
            .header("content-type", "text/plain")
            .header("correlation-id", "c1")
            .header("reply-to", "/temp-queue/replies")
            .header("priority", "5")
            .header("persistent", "true")
            .header("expiration", "60000")
            .header("x-custom", "1")
            .header("x-custom", "2");
        let now = Utc::now();
        let mut d = EventDraft::new(Topic::new("t").expect("topic"), "x");
        inbound(&f, &mut d, now);
        assert_eq!(d.headers, vec![("x-custom".to_string(), "1".to_string())]);
        assert_eq!(d.durability, Durability::Durable);
        assert_eq!(
            d.attrs.reply_to.as_ref().map(|t| t.as_str()),
            Some("replies")
        );
        let e = Event::new(
            Some(1),
            "id".into(),
            d.topic,
            d.event_type
                .unwrap_or_else(|| polyport_core::event::DEFAULT_EVENT_TYPE.into()),
            now,
            d.content_type,
            d.headers,
            d.payload,
            polyport_core::Origin("stomp"),
        )
        .with_attrs(d.attrs, None);
        let h = outbound(&e, now).expect("not expired");
        let get = |k: &str| h.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("correlation-id"), Some("c1"));
        assert_eq!(get("priority"), Some("5"));
        assert_eq!(get("persistent"), Some("true"));
        assert_eq!(get("x-custom"), Some("1"));
        assert!(get("expires").is_some());
        assert!(outbound(&e, now + chrono::Duration::seconds(61)).is_none());
    }
}
