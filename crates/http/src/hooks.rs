//! Inbound webhooks: `POST /hooks/{source}` turns another service's webhook into a
//! durable event on `hooks/{source}`, so it fans out on every protocol. A source may be
//! configured with the signature scheme its sender uses; a bad signature is a 401 and
//! nothing is stored.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use polyport_core::{Durability, EventDraft, Origin, Topic};
use serde::Deserialize;
use serde_json::json;
use sha2::Sha256;

use crate::AppState;
use crate::error::{ApiError, ApiResult};
use crate::rest::{body, json_response};

/// How a source signs its requests.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HookScheme {
    /// `webhook-id` / `webhook-timestamp` / `webhook-signature` (Standard Webhooks, Svix).
    StandardWebhooks,
    /// GitHub's `X-Hub-Signature-256: sha256=<hex>`.
    Github,
    /// Stripe's `Stripe-Signature: t=…,v1=<hex>`.
    Stripe,
    /// A shared token: `Authorization: Bearer <token>` or `X-Hook-Token`.
    Token,
}

/// One configured inbound source.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookSource {
    /// Signature scheme.
    pub scheme: HookScheme,
    /// The shared secret (a `whsec_…` for Standard Webhooks and Stripe).
    pub secret: String,
    /// Largest clock difference accepted for timestamped schemes, in seconds.
    #[serde(default = "default_tolerance")]
    pub tolerance_secs: i64,
}

fn default_tolerance() -> i64 {
    300
}

/// Inbound hook settings.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HooksConfig {
    /// Sources with signature verification, by name.
    pub sources: BTreeMap<String, HookSource>,
    /// Refuse sources that are not configured (default: accept them unverified).
    pub require_known_sources: bool,
}

type HmacSha256 = Hmac<Sha256>;

fn unauthorized(why: &str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "bad_signature", why)
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn fresh(ts: i64, tolerance: i64) -> bool {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    (now - ts).abs() <= tolerance
}

fn mac(key: &[u8]) -> Result<HmacSha256, ApiError> {
    HmacSha256::new_from_slice(key).map_err(|_| unauthorized("unusable secret"))
}

/// Verifies a request against a source's scheme (constant-time comparisons).
fn verify(src: &HookSource, h: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    match src.scheme {
        HookScheme::StandardWebhooks => {
            let (Some(id), Some(ts), Some(sigs)) = (
                header(h, "webhook-id"),
                header(h, "webhook-timestamp"),
                header(h, "webhook-signature"),
            ) else {
                return Err(unauthorized(
                    "missing webhook-id, webhook-timestamp or webhook-signature",
                ));
            };
            let ts: i64 = ts
                .parse()
                .map_err(|_| unauthorized("bad webhook-timestamp"))?;
            if !fresh(ts, src.tolerance_secs) {
                return Err(unauthorized(
                    "webhook-timestamp is too old or in the future",
                ));
            }
            let key = base64::engine::general_purpose::STANDARD
                .decode(src.secret.trim_start_matches("whsec_"))
                .map_err(|_| unauthorized("the configured secret is not whsec_ base64"))?;
            let mut m = mac(&key)?;
            m.update(format!("{id}.{ts}.").as_bytes());
            m.update(body);
            let ok = sigs
                .split(' ')
                .filter_map(|s| s.strip_prefix("v1,"))
                .any(|s| {
                    base64::engine::general_purpose::STANDARD
                        .decode(s)
                        .is_ok_and(|sig| m.clone().verify_slice(&sig).is_ok())
                });
            ok.then_some(())
                .ok_or_else(|| unauthorized("no webhook-signature matches"))
        }
        HookScheme::Github => {
            let sig = header(h, "x-hub-signature-256")
                .and_then(|s| s.strip_prefix("sha256="))
                .and_then(|s| hex::decode(s).ok())
                .ok_or_else(|| unauthorized("missing or malformed X-Hub-Signature-256"))?;
            let mut m = mac(src.secret.as_bytes())?;
            m.update(body);
            m.verify_slice(&sig)
                .map_err(|_| unauthorized("X-Hub-Signature-256 does not match"))
        }
        HookScheme::Stripe => {
            let v = header(h, "stripe-signature")
                .ok_or_else(|| unauthorized("missing Stripe-Signature"))?;
            let mut ts = None;
            let mut sigs = Vec::new();
            for part in v.split(',') {
                match part.trim().split_once('=') {
                    Some(("t", t)) => ts = t.parse::<i64>().ok(),
                    Some(("v1", s)) => sigs.extend(hex::decode(s).ok()),
                    _ => {}
                }
            }
            let ts = ts.ok_or_else(|| unauthorized("Stripe-Signature has no timestamp"))?;
            if !fresh(ts, src.tolerance_secs) {
                return Err(unauthorized("Stripe-Signature timestamp is too old"));
            }
            let mut m = mac(src.secret.as_bytes())?;
            m.update(format!("{ts}.").as_bytes());
            m.update(body);
            sigs.iter()
                .any(|s| m.clone().verify_slice(s).is_ok())
                .then_some(())
                .ok_or_else(|| unauthorized("no Stripe-Signature v1 matches"))
        }
        HookScheme::Token => {
            let given = header(h, "authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .or_else(|| header(h, "x-hook-token"))
                .ok_or_else(|| unauthorized("missing Authorization: Bearer or X-Hook-Token"))?;
            // Compare MACs of both, so timing reveals nothing about the token.
            let mut a = mac(b"polyport-token")?;
            a.update(given.as_bytes());
            let mut b = mac(b"polyport-token")?;
            b.update(src.secret.as_bytes());
            a.verify_slice(&b.finalize().into_bytes())
                .map_err(|_| unauthorized("wrong token"))
        }
    }
}

/// The event type: GitHub's `X-GitHub-Event`, else a JSON body's `type`, else
/// `{source}.received`.
fn event_type(source: &str, h: &HeaderMap, body: &[u8]) -> String {
    if let Some(ev) = header(h, "x-github-event") {
        return format!("{source}.{ev}");
    }
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(t) = v.get("type").and_then(|t| t.as_str())
        && t.len() <= 128
    {
        return format!("{source}.{t}");
    }
    format!("{source}.received")
}

pub(crate) async fn receive(
    State(app): State<AppState>,
    Path(source): Path<String>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> ApiResult<Response> {
    let payload = body(b)?;
    let valid = !source.is_empty()
        && source.len() <= 64
        && source
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
    if !valid {
        return Err(ApiError::bad_request(
            "a hook source is 1-64 of A-Z a-z 0-9 _ -",
        ));
    }
    // A verified sender publishes as `hook:{source}`; an unverified one is an anonymous
    // caller, refused where anonymous callers are.
    let caller = match app.cfg.hooks.sources.get(&source) {
        Some(src) => {
            verify(src, &headers, &payload)?;
            polyport_core::AuthContext::identified(
                Origin("hooks"),
                Some(std::sync::Arc::new(polyport_core::auth::Identity {
                    id: format!("hook:{source}"),
                    role: polyport_core::auth::Role::User,
                    via: polyport_core::auth::Via::System,
                    scopes: None,
                    claims: Default::default(),
                })),
            )
        }
        None if app.cfg.hooks.require_known_sources => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no hook source '{source}'"),
            ));
        }
        None => app.hub.authenticate(Origin("hooks"), None, None)?,
    };
    let topic = Topic::new(&format!("hooks/{source}")).map_err(polyport_core::HubError::from)?;
    let mut draft = EventDraft::new(topic, payload.clone());
    draft.content_type = header(&headers, header::CONTENT_TYPE.as_str()).map(str::to_string);
    draft.event_type = Some(event_type(&source, &headers, &payload));
    for name in [
        "webhook-id",
        "x-github-delivery",
        "x-request-id",
        "idempotency-key",
    ] {
        if let Some(v) = header(&headers, name) {
            draft.headers.push((name.to_string(), v.to_string()));
        }
    }
    draft.durability = Durability::Durable;
    let r = app.hub.publish(&caller, draft).await?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        json!({"id": r.event.id, "sequence": r.event.seq, "topic": r.event.topic.as_str()}),
    ))
}
