//! `publish`: JSON or base64 data, message attributes and user headers.

use base64::Engine as _;
use polyport_core::{Durability, EventDraft, HubError, Topic};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Session;

#[derive(Deserialize)]
pub(super) struct Publish {
    topic: String,
    #[serde(default)]
    data: Option<Value>,
    #[serde(default)]
    data_base64: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, rename = "type")]
    event_type: Option<String>,
    #[serde(default)]
    durable: Option<bool>,
    /// Message attributes by their CloudEvents extension names (`replyto`, …).
    #[serde(default)]
    attributes: Map<String, Value>,
    /// User headers (string values).
    #[serde(default)]
    headers: Map<String, Value>,
}

impl Session {
    pub(super) async fn publish(&mut self, op: Publish) -> Result<Value, HubError> {
        let topic = Topic::new(&op.topic)?;
        let (payload, ct) = payload(op.data, op.data_base64, op.content_type)?;
        let mut draft = EventDraft::new(topic, payload);
        draft.content_type = ct;
        draft.event_type = op.event_type;
        draft
            .attrs
            .set_named(op.attributes.iter().map(|(k, v)| {
                let text = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.as_str(), text)
            }))
            .map_err(|e| HubError::InvalidRequest(format!("attributes.{e}")))?;
        for (k, v) in op.headers {
            let Value::String(v) = v else {
                return Err(HubError::InvalidRequest(format!(
                    "headers.{k}: header values are strings"
                )));
            };
            draft.headers.push((k, v));
        }
        draft.durability = match op.durable {
            Some(true) => Durability::Durable,
            Some(false) => Durability::Ephemeral,
            None => Durability::Auto,
        };
        let r = self.hub.publish(&self.ctx, draft).await?;
        Ok(json!({ "sequence": r.event.seq, "event_id": r.event.id }))
    }
}

/// The payload bytes and content type: base64 as given, a string as text when the
/// content type is not JSON, anything else as JSON.
fn payload(
    data: Option<Value>,
    data_base64: Option<String>,
    content_type: Option<String>,
) -> Result<(Vec<u8>, Option<String>), HubError> {
    Ok(match (data, data_base64) {
        (Some(_), Some(_)) => {
            return Err(HubError::InvalidRequest(
                "give either 'data' or 'data_base64', not both".into(),
            ));
        }
        (_, Some(b)) => (
            base64::engine::general_purpose::STANDARD
                .decode(b.as_bytes())
                .map_err(|e| HubError::InvalidRequest(format!("data_base64: {e}")))?,
            content_type.or(Some("application/octet-stream".into())),
        ),
        (Some(Value::String(s)), None)
            if content_type
                .as_deref()
                .is_some_and(|c| !polyport_core::event::is_json_type(c)) =>
        {
            (s.into_bytes(), content_type)
        }
        (Some(v), None) => (
            serde_json::to_vec(&v).unwrap_or_default(),
            content_type.or(Some("application/json".into())),
        ),
        (None, None) => (Vec::new(), content_type),
    })
}
