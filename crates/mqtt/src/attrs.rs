//! MQTT's row of the attribute table (README, "Message attributes"): PUBLISH properties
//! to the Hub's typed [`Attributes`] and back. The only place MQTT meaning crosses into
//! the shared model; nothing here reads another protocol's headers.
//!
//! | MQTT | attribute |
//! |---|---|
//! | QoS 0/1/2 | `guarantee` at-most/at-least/exactly-once |
//! | retain flag | `retain` |
//! | response topic | `reply_to` |
//! | correlation data | `correlation_id` |
//! | message expiry interval (s) | `expires_at` (absolute on arrival) |
//! | payload format indicator | `utf8` |
//! | content type | the event's content type |
//! | user properties | user headers |
//! | client id | the Hub's sender (no-local) |

use chrono::{DateTime, Duration, Utc};
use polyport_core::{Attributes, Event, Guarantee, Topic};

use crate::wire::{MsgProps, PublishIn};

pub(crate) fn guarantee(qos: u8) -> Guarantee {
    match qos {
        0 => Guarantee::AtMostOnce,
        1 => Guarantee::AtLeastOnce,
        _ => Guarantee::ExactlyOnce,
    }
}

fn qos_of(g: Guarantee) -> u8 {
    match g {
        Guarantee::AtMostOnce => 0,
        Guarantee::AtLeastOnce => 1,
        Guarantee::ExactlyOnce => 2,
    }
}

/// The attributes of an inbound PUBLISH arriving `now` (read only when it expires).
pub(crate) fn inbound(p: &PublishIn, now: impl FnOnce() -> DateTime<Utc>) -> Attributes {
    Attributes {
        guarantee: Some(guarantee(p.qos)),
        retain: p.retain,
        // A response topic that is no valid topic name cannot be replied to on the tree.
        reply_to: p
            .props
            .response_topic
            .as_deref()
            .and_then(|t| Topic::new(t).ok()),
        correlation_id: p.props.correlation_data.clone(),
        expires_at: p
            .props
            .message_expiry
            .map(|s| now() + Duration::seconds(i64::from(s))),
        utf8: p.props.payload_is_utf8,
        ..Attributes::default()
    }
}

/// How an event goes out to one MQTT subscriber.
pub(crate) struct Outbound {
    /// The QoS it was published with (capped by the subscription's later).
    pub(crate) published_qos: u8,
    pub(crate) retain: bool,
    pub(crate) props: MsgProps,
}

/// The PUBLISH properties of an event; `None` when it has expired. The clock is read
/// only for a message with an expiry: this runs once per delivery.
pub(crate) fn outbound(e: &Event, now: impl FnOnce() -> DateTime<Utc>) -> Option<Outbound> {
    let a = &e.attrs;
    let message_expiry = match a.expires_at {
        None => None,
        Some(at) => {
            let now = now();
            if at <= now {
                return None;
            }
            // Whole seconds left, rounded up: a message is never cut short.
            let ms = (at - now).num_milliseconds();
            Some(u32::try_from((ms + 999) / 1000).unwrap_or(u32::MAX))
        }
    };
    Some(Outbound {
        // Without a stated guarantee: durable events at least once, others at most once.
        published_qos: a
            .guarantee
            .map(qos_of)
            .unwrap_or(if e.seq.is_some() { 1 } else { 0 }),
        retain: a.retain,
        props: MsgProps {
            content_type: e.content_type.clone(),
            response_topic: a.reply_to.as_ref().map(|t| t.as_str().to_string()),
            correlation_data: a.correlation_id.clone(),
            user_properties: e.headers.clone(),
            payload_is_utf8: a.utf8,
            topic_alias: None,
            message_expiry,
        },
    })
}

/// Whether `e` was published by the MQTT client `client_id` (for no-local).
pub(crate) fn from_client(e: &Event, client_id: &str) -> bool {
    e.origin.0 == "mqtt"
        && e.sender
            .as_ref()
            .and_then(|s| s.client_id.as_deref())
            .is_some_and(|c| c == client_id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_publish_round_trips_through_the_attributes() {
        let now = Utc::now();
        let p = PublishIn {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"x"),
            qos: 2,
            retain: true,
            pkid: Some(1),
            props: MsgProps {
                content_type: Some("text/plain".into()),
                response_topic: Some("replies/1".into()),
                correlation_data: Some(Bytes::from_static(b"\x00c")),
                user_properties: vec![("k".into(), "v".into())],
                payload_is_utf8: true,
                topic_alias: None,
                message_expiry: Some(60),
            },
        };
        let e = Event::new(
            Some(1),
            "id".into(),
            Topic::new("a/b").unwrap(),
            "t".into(),
            now,
            p.props.content_type.clone(),
            p.props.user_properties.clone(),
            p.payload.clone(),
            polyport_core::Origin("mqtt"),
        )
        .with_attrs(inbound(&p, || now), None);
        let out = outbound(&e, || now).expect("not expired");
        assert_eq!((out.published_qos, out.retain), (2, true));
        assert_eq!(out.props, p.props);
        assert!(
            outbound(&e, || now + Duration::seconds(61)).is_none(),
            "expired"
        );
    }
}
