//! What the broker keeps in the Hub's adapter state, and its encoding (JSON, with
//! binary fields in base64, so an operator can read it with `sqlite3`).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::broker::Retained;
use crate::wire::{MsgProps, SubOpts};

/// Namespace of persistent sessions, keyed by client id.
pub(crate) const SESSIONS: &str = "mqtt.session";
/// Namespace of retained messages, keyed by topic.
pub(crate) const RETAINED: &str = "mqtt.retained";

/// One subscription of a session, as the client asked for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SubSpec {
    pub(crate) filter: String,
    pub(crate) qos: u8,
    #[serde(default)]
    pub(crate) no_local: bool,
    #[serde(default)]
    pub(crate) retain_as_published: bool,
    #[serde(default)]
    pub(crate) retain_handling: u8,
    #[serde(default)]
    pub(crate) id: Option<u32>,
    /// Names this subscription's Hub group within the session: new for a new
    /// subscription, so one made after an UNSUBSCRIBE starts live instead of resuming.
    #[serde(default)]
    pub(crate) nonce: String,
}

impl SubSpec {
    pub(crate) fn new(filter: String, o: SubOpts, id: Option<u32>, nonce: String) -> Self {
        Self {
            filter,
            qos: o.qos,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            retain_handling: o.retain_handling,
            id,
            nonce,
        }
    }

    pub(crate) fn opts(&self) -> SubOpts {
        SubOpts {
            qos: self.qos,
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: self.retain_handling,
        }
    }
}

/// A persistent session: what must survive the client being away (and a restart).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SavedSession {
    /// Names this session's Hub groups; new for every new session that keeps any
    /// (empty until then: most connections never need one).
    pub(crate) generation: String,
    /// Seconds the session outlives its connection (`u32::MAX`: forever).
    pub(crate) expiry: u32,
    pub(crate) subs: Vec<SubSpec>,
}

impl SavedSession {
    /// The generation, made on first use.
    pub(crate) fn generation(&mut self) -> &str {
        if self.generation.is_empty() {
            self.generation = polyport_core::record::new_id();
        }
        &self.generation
    }
}

/// A stored session and, on the cluster engine, the broker (node) that last took it:
/// only that node may expire it, and a node whose parked copy names another lets it go.
/// Kept out of [`SavedSession`], which every connection holds.
#[derive(Serialize)]
struct Stored<'a> {
    #[serde(flatten)]
    session: &'a SavedSession,
    #[serde(skip_serializing_if = "str::is_empty")]
    holder: &'a str,
}

#[derive(Deserialize)]
struct Holder {
    #[serde(default)]
    holder: String,
}

pub(crate) fn encode_session(s: &SavedSession, holder: &str) -> Bytes {
    let stored = Stored { session: s, holder };
    Bytes::from(serde_json::to_vec(&stored).unwrap_or_default())
}

/// The holder a stored session names (empty on one node).
pub(crate) fn session_holder(b: &[u8]) -> Option<String> {
    serde_json::from_slice::<Holder>(b).ok().map(|h| h.holder)
}

pub(crate) fn decode_session(b: &[u8]) -> Option<SavedSession> {
    serde_json::from_slice(b).ok()
}

#[derive(Serialize, Deserialize)]
struct RetainedDoc {
    qos: u8,
    payload: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    correlation_data: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    user_properties: Vec<(String, String)>,
    #[serde(default)]
    utf8: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<u64>,
}

pub(crate) fn encode_retained(r: &Retained) -> Bytes {
    let doc = RetainedDoc {
        qos: r.qos,
        payload: B64.encode(&r.payload),
        content_type: r.props.content_type.clone(),
        response_topic: r.props.response_topic.clone(),
        correlation_data: r.props.correlation_data.as_ref().map(|c| B64.encode(c)),
        user_properties: r.props.user_properties.clone(),
        utf8: r.props.payload_is_utf8,
        expires_at: r.expires_at,
    };
    Bytes::from(serde_json::to_vec(&doc).unwrap_or_default())
}

pub(crate) fn decode_retained(b: &[u8]) -> Option<Retained> {
    let d: RetainedDoc = serde_json::from_slice(b).ok()?;
    Some(Retained {
        payload: Bytes::from(B64.decode(d.payload).ok()?),
        qos: d.qos.min(2),
        props: MsgProps {
            content_type: d.content_type,
            response_topic: d.response_topic,
            correlation_data: match d.correlation_data {
                Some(c) => Some(Bytes::from(B64.decode(c).ok()?)),
                None => None,
            },
            user_properties: d.user_properties,
            payload_is_utf8: d.utf8,
            ..MsgProps::default()
        },
        expires_at: d.expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retained_round_trips_binary_payloads_and_properties() {
        let r = Retained {
            payload: Bytes::from(vec![0u8, 159, 146, 150, 255]),
            qos: 1,
            props: MsgProps {
                content_type: Some("application/octet-stream".into()),
                correlation_data: Some(Bytes::from_static(b"\x00\x01")),
                user_properties: vec![("k".into(), "v".into()), ("k".into(), "w".into())],
                ..MsgProps::default()
            },
            expires_at: Some(1_700_000_000_000),
        };
        assert_eq!(decode_retained(&encode_retained(&r)), Some(r));
        assert_eq!(decode_retained(b"{not json"), None);
    }

    #[test]
    fn sessions_round_trip() {
        let s = SavedSession {
            generation: "01J".into(),
            expiry: u32::MAX,
            subs: vec![SubSpec::new(
                "a/+/c".into(),
                SubOpts {
                    qos: 2,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: 1,
                },
                Some(7),
                "n1".into(),
            )],
        };
        assert_eq!(decode_session(&encode_session(&s, "")), Some(s.clone()));
        let held = encode_session(&s, "node-b");
        assert_eq!(decode_session(&held), Some(s));
        assert_eq!(session_holder(&held).as_deref(), Some("node-b"));
    }
}
