//! Who is calling over HTTP: `Authorization: Basic` checked through the Hub's
//! authenticate seam (the same `[auth]` users MQTT, AMQP, STOMP and SOAP check), so
//! `anonymous = false` holds on every HTTP route too. The caller's `AuthContext` goes into
//! the request's extensions.
//!
//! Browsers' EventSource and WebSocket cannot send that header, so a signed-in caller can
//! trade it for a short-lived token (`POST /api/auth/token`) and pass it as
//! `?access_token=…` (or, from a script, `Authorization: Bearer …`; RFC 6750's two ways).
//! Tokens are HMAC-SHA256 over the principal and an expiry with a key
//! each process draws at start: they end with the process, and a stream opened with one
//! lives on after it expires (only new requests need a fresh one).
//!
//! A few paths authenticate some other way and pass untouched: `/healthz` and `/readyz`
//! (probes), `/hooks/{source}` (each sender's own signature), `/mqtt` and `/stomp` (their
//! CONNECT carries credentials) and `POST /soap` (WS-Security in the envelope).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use hmac::{Hmac, Mac};
use polyport_core::auth::basic_credentials;
use polyport_core::{AuthContext, HubError, Origin};
use sha2::Sha256;

use crate::AppState;
use crate::error::ApiError;

fn self_authenticating(method: &Method, path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/mqtt" | "/stomp")
        || path.starts_with("/hooks/")
        || (path == "/soap" && method == Method::POST)
}

pub(crate) async fn authenticate(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    if self_authenticating(req.method(), req.uri().path()) {
        return next.run(req).await;
    }
    let header = req
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let token = match &header {
        None => req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        }),
        Some(_) => None,
    };
    let bearer = header
        .as_deref()
        .and_then(|h| h.strip_prefix("Bearer ").map(|t| t.trim().to_string()));
    let who = match (header, token.or(bearer)) {
        (_, Some(t)) => st.tokens.verify(&t).map(|principal| AuthContext {
            principal: Some(principal),
            origin: Origin("http"),
            sender: None,
        }),
        (Some(h), None) => basic_credentials(&h)
            .map_err(HubError::Unauthenticated)
            .and_then(|(user, pass)| {
                st.hub
                    .authenticate(Origin("http"), Some(&user), Some(&pass))
            }),
        (None, None) => st.hub.authenticate(Origin("http"), None, None),
    };
    match who {
        Ok(ctx) => {
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(e) => {
            metrics::counter!("polyport_auth_failures_total", "origin" => "http").increment(1);
            tracing::info!(path = %req.uri().path(), error = %e, "HTTP caller refused");
            // A Basic challenge makes a browser prompt for a password, even for a page's
            // fetch or EventSource: those (Sec-Fetch-Mode other than navigate) are told
            // Bearer, which is what their token is.
            let from_script = req
                .headers()
                .get("sec-fetch-mode")
                .is_some_and(|m| m.as_bytes() != b"navigate");
            let challenge = match from_script {
                true => "Bearer realm=\"Polyport\"",
                false => "Basic realm=\"Polyport\", charset=\"UTF-8\"",
            };
            let mut res = ApiError::from(e).into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
            res
        }
    }
}

/// Issues and checks browser tokens.
pub(crate) struct Tokens {
    key: [u8; 32],
    ttl: Duration,
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl Tokens {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            key: rand::random(),
            ttl,
        }
    }

    fn mac(&self, payload: &str) -> Vec<u8> {
        // HMAC takes keys of any length: `new_from_slice` cannot fail here.
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
        m.update(payload.as_bytes());
        m.finalize().into_bytes().to_vec()
    }

    /// A token for `principal`, and when it expires (Unix seconds).
    pub(crate) fn issue(&self, principal: &str) -> (String, u64) {
        let exp = unix_now() + self.ttl.as_secs();
        let payload = format!("{exp}.{}", B64.encode(principal));
        let sig = B64.encode(self.mac(&payload));
        (format!("pp1.{payload}.{sig}"), exp)
    }

    /// The principal a valid, unexpired token names.
    pub(crate) fn verify(&self, token: &str) -> Result<String, HubError> {
        let bad = || HubError::Unauthenticated("the access_token is not valid".into());
        let rest = token.strip_prefix("pp1.").ok_or_else(bad)?;
        let (payload, sig) = rest.rsplit_once('.').ok_or_else(bad)?;
        let sig = B64.decode(sig).map_err(|_| bad())?;
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(&self.key).map_err(|_| bad())?;
        m.update(payload.as_bytes());
        m.verify_slice(&sig).map_err(|_| bad())?;
        let (exp, who) = payload.split_once('.').ok_or_else(bad)?;
        let exp: u64 = exp.parse().map_err(|_| bad())?;
        if exp <= unix_now() {
            return Err(HubError::Unauthenticated(
                "the access_token has expired: get a new one from POST /api/auth/token".into(),
            ));
        }
        String::from_utf8(B64.decode(who).map_err(|_| bad())?).map_err(|_| bad())
    }
}

/// `POST /api/auth/token`: a short-lived token for the signed-in caller, for the query
/// strings of EventSource and WebSocket URLs.
pub(crate) async fn issue_token(
    State(st): State<AppState>,
    ctx: Option<axum::Extension<AuthContext>>,
) -> Response {
    let Some(principal) = ctx.and_then(|c| c.0.principal) else {
        let e =
            HubError::Unauthenticated("sign in with Authorization: Basic to get a token".into());
        return ApiError::from(e).into_response();
    };
    let (token, exp) = st.tokens.issue(&principal);
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "token": token,
            "expires_at": exp,
            "expires_in": st.tokens.ttl.as_secs(),
            "use": "append ?access_token=<token> to EventSource and WebSocket URLs",
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_as_issued_and_until_they_expire() {
        let t = Tokens::new(Duration::from_secs(60));
        let (tok, _) = t.issue("alice");
        assert_eq!(t.verify(&tok).ok().as_deref(), Some("alice"));
        let forged = tok.replace("pp1.", "pp1.9").to_string();
        assert!(t.verify(&forged).is_err());
        assert!(
            Tokens::new(Duration::from_secs(60)).verify(&tok).is_err(),
            "another key"
        );
        let expired = Tokens {
            key: t.key,
            ttl: Duration::ZERO,
        };
        let (old, _) = expired.issue("alice");
        assert!(t.verify(&old).is_err());
    }
}
