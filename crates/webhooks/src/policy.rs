//! The delivery policy the registry enforces on every face: Standard Webhooks secrets
//! (`whsec_` + base64 of 24–64 bytes), the retry schedule and which URLs may be called.

use std::sync::Arc;

use base64::Engine as _;
use polyport_core::schema::{FieldError, Rule};
use polyport_core::webhook::{DeliveryPolicy, Endpoint, EndpointSpec};

use crate::ssrf;

/// Svix's schedule after the first attempt: 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 10 h.
pub const DEFAULT_RETRY_SCHEDULE: &[u64] = &[5, 300, 1800, 7200, 18000, 36000, 36000];

/// Most retries an endpoint may ask for, and the longest wait before one.
const MAX_RETRIES: usize = 20;
const MAX_RETRY_WAIT_SECS: u64 = 7 * 24 * 3600;

/// An endpoint's retry schedule in seconds.
pub(crate) fn retry_schedule(ep: &Endpoint) -> &[u64] {
    ep.spec
        .retry_schedule
        .as_deref()
        .unwrap_or(DEFAULT_RETRY_SCHEDULE)
}

/// `whsec_` + base64 of 24..=64 bytes.
pub fn valid_secret(s: &str) -> bool {
    s.strip_prefix("whsec_")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
        .is_some_and(|k| (24..=64).contains(&k.len()))
}

/// A fresh `whsec_` secret of 32 random bytes.
pub fn new_secret() -> String {
    let a = ulid::Ulid::new().0.to_le_bytes();
    let b = ulid::Ulid::new().0.to_le_bytes();
    let mut key = Vec::with_capacity(32);
    key.extend_from_slice(&a);
    key.extend_from_slice(&b);
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )
}

/// The engine's rules, as the Hub asks them at registration.
pub(crate) struct Rules(pub(crate) Arc<ssrf::Policy>);

#[async_trait::async_trait]
impl DeliveryPolicy for Rules {
    async fn check(&self, spec: &EndpointSpec) -> Vec<FieldError> {
        let mut errors = Vec::new();
        if let Some(s) = &spec.secret
            && !valid_secret(s)
        {
            errors.push(FieldError::new(
                "secret",
                Rule::Format,
                "must be whsec_ followed by base64 of 24 to 64 bytes",
            ));
        }
        if let Some(r) = &spec.retry_schedule
            && (r.len() > MAX_RETRIES || r.iter().any(|s| *s > MAX_RETRY_WAIT_SECS))
        {
            errors.push(FieldError::new(
                "retry_schedule",
                Rule::Format,
                "at most 20 retries, each at most 7 days",
            ));
        }
        if let Err(reason) = self.0.check_url(&spec.url).await {
            errors.push(FieldError::new(
                "url",
                Rule::Format,
                format!("is refused: {reason}"),
            ));
        }
        errors
    }

    fn new_secret(&self) -> String {
        new_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        let s = new_secret();
        assert!(valid_secret(&s), "{s}");
        assert_ne!(s, new_secret());
        assert!(!valid_secret("whsec_short"));
        assert!(!valid_secret("nope"));
    }
}
