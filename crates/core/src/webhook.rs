//! Outbound webhooks as data: endpoints (the registry), deliveries (the durable outbox)
//! and attempts (the log). The store writes a delivery for every matching endpoint in the
//! same transaction as the event, so an acknowledged write can never lose its webhook;
//! the delivery engine (crates/webhooks) only reads and updates these through the Hub.
//! How deliveries are made — secret format, retry schedule, which URLs may be called,
//! what an attempt leads to — is the engine's policy, asked through [`DeliveryPolicy`].

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::event::Event;
use crate::schema::{FieldError, Rule};
use crate::topic::{Topic, TopicFilter};

/// What a client sends to register or change an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointSpec {
    /// Where to POST (http or https).
    pub url: String,
    /// Event types to deliver, with `*` globs (`posts.*`, `*.created`).
    #[serde(default)]
    pub event_types: Vec<String>,
    /// Topic filters to deliver (`sensors/#`).
    #[serde(default)]
    pub topics: Vec<String>,
    /// Extra headers sent with every delivery.
    #[serde(default)]
    pub headers: std::collections::BTreeMap<String, String>,
    /// Disabled endpoints keep their pending deliveries until re-enabled.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Most deliveries per second to this endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<u32>,
    /// Seconds to wait before each retry (default: the delivery engine's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_schedule: Option<Vec<u64>>,
    /// Deliveries in flight to this endpoint at once, up to [`MAX_CONCURRENCY`]. 1 (the
    /// default) keeps strict order: a failure holds back what follows until its retry
    /// succeeds. More gives up order for throughput to a slow receiver: deliveries go
    /// out side by side and each one retries on its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
    /// A signing secret to use instead of a generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

fn yes() -> bool {
    true
}

/// A registered endpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Endpoint {
    /// `ep_…`.
    pub id: String,
    /// The definition (its `secret` is the current signing secret).
    #[serde(flatten)]
    pub spec: EndpointSpec,
    /// The secret being rotated out, still signed with until `previous_until`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret: Option<String>,
    /// End of the rotation overlap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_until: Option<DateTime<Utc>>,
    /// Since when every attempt has failed (cleared by a success).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failing_since: Option<DateTime<Utc>>,
    /// Why it was disabled by the server (410, too long failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl Endpoint {
    /// The endpoint as every face shows it after creation: without its signing secrets.
    /// A secret is shown once, in the answer to the create or rotate that made it, so a
    /// caller who can list endpoints cannot forge their deliveries.
    pub fn redacted(&self) -> Self {
        let mut e = self.clone();
        e.spec.secret = None;
        e.previous_secret = None;
        e
    }

    /// The secrets to sign with now (two during a rotation overlap).
    pub fn signing_secrets(&self, now: DateTime<Utc>) -> Vec<&str> {
        let mut out = Vec::with_capacity(2);
        if let Some(s) = &self.spec.secret {
            out.push(s.as_str());
        }
        if let (Some(p), Some(until)) = (&self.previous_secret, self.previous_until)
            && now < until
        {
            out.push(p.as_str());
        }
        out
    }

    /// Whether an event is for this endpoint: any event-type glob or topic filter matches
    /// (no filters at all means every event).
    pub fn wants(&self, e: &Event) -> bool {
        self.wants_parts(&e.event_type, &e.topic)
    }

    /// [`Endpoint::wants`] from an event's type and topic.
    pub fn wants_parts(&self, event_type: &str, topic: &Topic) -> bool {
        let (types, topics) = (&self.spec.event_types, &self.spec.topics);
        if types.is_empty() && topics.is_empty() {
            return true;
        }
        types.iter().any(|g| glob(g, event_type))
            || topics
                .iter()
                .filter_map(|t| TopicFilter::new(t).ok())
                .any(|f| f.matches(topic))
    }
}

/// `*` matches any run of characters (including dots).
pub fn glob(pattern: &str, s: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == s;
    }
    let mut rest = s;
    for (i, p) in parts.iter().enumerate() {
        if i == 0 {
            match rest.strip_prefix(p) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if i == parts.len() - 1 {
            return rest.ends_with(p);
        } else {
            match rest.find(p) {
                Some(pos) => rest = &rest[pos + p.len()..],
                None => return false,
            }
        }
    }
    true
}

/// The most deliveries one endpoint may have in flight ([`EndpointSpec::concurrency`]).
pub const MAX_CONCURRENCY: u32 = 64;

impl EndpointSpec {
    /// Deliveries in flight at once (1: strictly in order).
    pub fn concurrency(&self) -> usize {
        self.concurrency.unwrap_or(1).clamp(1, MAX_CONCURRENCY) as usize
    }

    /// Checks the definition's shape; the delivery engine's [`DeliveryPolicy`] checks
    /// the rest (URL safety needs DNS; secrets and retries are its own format).
    pub fn check(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        let url = self.url.trim();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() > 2048 {
            errors.push(FieldError::new(
                "url",
                Rule::Format,
                "must be an http:// or https:// URL of at most 2048 characters",
            ));
        }
        for (i, t) in self.topics.iter().enumerate() {
            if TopicFilter::new(t).is_err() {
                errors.push(FieldError::new(
                    &format!("topics[{i}]"),
                    Rule::Format,
                    "is not a valid topic filter",
                ));
            }
        }
        for (i, t) in self.event_types.iter().enumerate() {
            if t.is_empty() || t.len() > 256 {
                errors.push(FieldError::new(
                    &format!("event_types[{i}]"),
                    Rule::Format,
                    "must be 1-256 characters",
                ));
            }
        }
        if self
            .concurrency
            .is_some_and(|c| !(1..=MAX_CONCURRENCY).contains(&c))
        {
            errors.push(FieldError::new(
                "concurrency",
                Rule::Format,
                format!("must be 1 to {MAX_CONCURRENCY}"),
            ));
        }
        for k in self.headers.keys() {
            let lower = k.to_ascii_lowercase();
            if lower.starts_with("webhook-") || lower == "content-type" || lower == "host" {
                errors.push(FieldError::new(
                    &format!("headers.{k}"),
                    Rule::Reserved,
                    "is set by the server",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

/// Where a delivery stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Waiting for its (next) attempt.
    Pending,
    /// A 2xx answer was received.
    Delivered,
    /// Retries are exhausted (the dead-letter list); `retry` puts it back.
    Dead,
}

impl DeliveryStatus {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryStatus::Pending => "pending",
            DeliveryStatus::Delivered => "delivered",
            DeliveryStatus::Dead => "dead",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(DeliveryStatus::Pending),
            "delivered" => Some(DeliveryStatus::Delivered),
            "dead" => Some(DeliveryStatus::Dead),
            _ => None,
        }
    }
}

/// One event to one endpoint. Its `id` (the `webhook-id` header) is derived from the
/// pair, so it is the same on every retry and every replay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// `msg_{endpoint}_{seq}`.
    pub id: String,
    /// The endpoint.
    pub endpoint_id: String,
    /// The event's sequence.
    pub seq: u64,
    /// The event's type.
    pub event_type: String,
    /// Status.
    pub status: DeliveryStatus,
    /// Attempts made.
    pub attempts: u32,
    /// When the next attempt is due (pending only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status of the last attempt.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

/// The `webhook-id` of an event for an endpoint.
pub fn delivery_id(endpoint_id: &str, seq: u64) -> String {
    format!("msg_{endpoint_id}_{seq}")
}

/// One attempt's outcome, recorded in the attempt log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    /// The delivery.
    pub delivery_id: String,
    /// 1, 2, …
    pub number: u32,
    /// When it was made.
    pub at: DateTime<Utc>,
    /// HTTP status, when a response arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// Round-trip time.
    pub latency_ms: u64,
    /// The first KiB of the response body.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<String>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the engine decided after an attempt: the transition the store records.
#[derive(Clone, Debug, PartialEq)]
pub enum AttemptOutcome {
    /// 2xx: done.
    Delivered,
    /// Try again at this time.
    RetryAt(DateTime<Utc>),
    /// Retries exhausted: dead-letter.
    Dead,
    /// The endpoint must be disabled (410 Gone, or failing too long); the delivery stays
    /// pending for when it is re-enabled.
    DisableEndpoint(String),
}

/// The delivery engine's rules for endpoint definitions, installed into the Hub so a
/// definition the engine could not deliver to is refused at registration, on every face.
#[async_trait::async_trait]
pub trait DeliveryPolicy: Send + Sync + 'static {
    /// What is wrong with a definition beyond its shape: a URL that must not be called,
    /// a secret the engine cannot sign with, a retry schedule out of range.
    async fn check(&self, spec: &EndpointSpec) -> Vec<FieldError>;
    /// A fresh signing secret.
    fn new_secret(&self) -> String;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("posts.*", "posts.created"));
        assert!(glob("*", "anything"));
        assert!(glob("*.created", "users.created"));
        assert!(!glob("posts.*", "users.created"));
        assert!(glob("posts.created", "posts.created"));
        assert!(!glob("posts.created", "posts.updated"));
        assert!(glob("a*c*e", "abcde"));
        assert!(!glob("a*c*e", "abde"));
    }
}

/// Which deliveries to queue again.
#[derive(Clone, Debug, PartialEq)]
pub enum Redeliver {
    /// One event.
    One(u64),
    /// Every dead-lettered delivery.
    Dead,
    /// Every matching event in the log after this sequence (recovery after an outage);
    /// existing deliveries are reset, missing ones created.
    Since(u64),
}
