//! Who is calling over HTTP, checked through the Hub's authenticate seam (the same
//! users, API keys and JWTs MQTT, AMQP, STOMP and SOAP check), so `[auth]` holds on
//! every HTTP route too. The caller's `AuthContext` goes into the request's extensions,
//! where every handler (and the GraphQL and SOAP faces on this port) reads it.
//!
//! Credentials, first found wins: `Authorization: Basic` (a password, API key or JWT as
//! the password) or `Bearer` (an API key, a JWT or a sign-in token), `X-API-Key`, then
//! `?access_token=…` — for browsers' EventSource and WebSocket, which cannot send
//! headers: a signed-in page trades its credentials for a short-lived sign-in token at
//! `POST /api/auth/token` (RFC 6750's query form).
//!
//! Each admitted request counts against its caller's request rate (`[limits]
//! requests_per_second`, off by default): over it, 429 with `Retry-After`.
//!
//! A few paths authenticate some other way and pass untouched: `/healthz` and `/readyz`
//! (probes), `/hooks/{source}` (each sender's own signature), `/mqtt` and `/stomp` (their
//! CONNECT carries credentials), `POST /soap` (WS-Security in the envelope), and a
//! GraphQL WebSocket upgrade without credentials (its `connection_init` payload carries
//! them, as graphql-ws clients send them).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use polyport_core::adapter::Peer;
use polyport_core::{AuthContext, HubError, Origin};

use crate::AppState;
use crate::error::ApiError;

fn self_authenticating(req: &Request) -> bool {
    let path = req.uri().path();
    let h = req.headers();
    matches!(path, "/healthz" | "/readyz" | "/mqtt" | "/stomp")
        || path.starts_with("/hooks/")
        || (path == "/soap" && req.method() == Method::POST)
        || (path == "/graphql"
            && h.get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"))
            && !h.contains_key(header::AUTHORIZATION)
            && !h.contains_key("x-api-key")
            && access_token(req.uri().query()).is_none())
}

/// Admits a request (`None`: its caller's `AuthContext` is in its extensions), or says
/// how it is refused.
pub(crate) fn admit(st: &AppState, req: &mut Request) -> Option<Response> {
    if self_authenticating(req) {
        return None;
    }
    let peer = req.extensions().get::<Peer>();
    let addr = peer.and_then(|p| p.addr).map(|a| a.ip());
    let who = identify(st, req.headers(), req.uri().query(), peer)
        .and_then(|ctx| st.hub.admit_request(&ctx, addr).map(|()| ctx));
    let mut res = match who {
        Ok(ctx) => {
            req.extensions_mut().insert(ctx);
            return None;
        }
        Err(e @ HubError::RateLimited { .. }) => ApiError::from(e).into_response(),
        Err(e) => {
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
    };
    // The refused request's body is never read, so hyper cannot keep the connection:
    // saying so lets the client open a fresh one instead of sending its next request
    // down a socket that is about to close (httpx: "Server disconnected").
    if has_body(req) {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    Some(res)
}

fn has_body(req: &Request) -> bool {
    let h = req.headers();
    h.contains_key(header::TRANSFER_ENCODING)
        || h.get(header::CONTENT_LENGTH)
            .is_some_and(|n| n.as_bytes() != b"0")
}

const HTTP: Origin = Origin("http");

/// Who the request says it is: `Authorization: Basic` (a password, API key or JWT) or
/// `Bearer` (a browser token, API key or JWT), else `X-API-Key`, else `?access_token=`,
/// else a verified client certificate.
fn identify(
    st: &AppState,
    headers: &axum::http::HeaderMap,
    query: Option<&str>,
    peer: Option<&Peer>,
) -> Result<AuthContext, HubError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        return st.hub.authenticate_header(HTTP, text(h, "Authorization")?);
    }
    if let Some(k) = headers.get("x-api-key") {
        return st
            .hub
            .authenticate_bearer(HTTP, text(k, "X-API-Key")?.trim());
    }
    match access_token(query) {
        Some(t) => st.hub.authenticate_bearer(HTTP, &t),
        None => anonymous_or_certified(st, peer),
    }
}

fn text<'a>(v: &'a HeaderValue, name: &str) -> Result<&'a str, HubError> {
    v.to_str()
        .map_err(|_| HubError::Unauthenticated(format!("the {name} header is not text")))
}

fn access_token(query: Option<&str>) -> Option<String> {
    query.and_then(|q| {
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "access_token")
            .map(|(_, v)| v.into_owned())
    })
}

/// The request-rate bucket a long-lived connection (a WebSocket) keeps for its caller.
pub(crate) fn rate_bucket(
    st: &AppState,
    caller: &AuthContext,
    peer: Option<axum::Extension<Peer>>,
) -> Option<std::sync::Arc<polyport_core::rate::Bucket>> {
    let addr = peer.and_then(|axum::Extension(p)| p.addr).map(|a| a.ip());
    st.hub.rate_bucket(caller, addr)
}

/// The caller as the gate identified them; a handler behind no gate gets what an
/// anonymous caller would (refused where anonymous callers are).
pub(crate) struct Caller(pub(crate) AuthContext);

impl axum::extract::FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        st: &AppState,
    ) -> Result<Self, ApiError> {
        if let Some(c) = parts.extensions.get::<AuthContext>() {
            return Ok(Caller(c.clone()));
        }
        let peer = parts.extensions.get::<Peer>();
        Ok(Caller(anonymous_or_certified(st, peer)?))
    }
}

/// A caller without credentials: the client certificate the TLS listener verified, if
/// any, names them.
fn anonymous_or_certified(st: &AppState, peer: Option<&Peer>) -> Result<AuthContext, HubError> {
    match peer {
        Some(p) => st.hub.authenticate_peer(HTTP, p, None, None),
        None => st.hub.authenticate(HTTP, None, None),
    }
}

/// `POST /api/auth/token`: a short-lived token for the signed-in caller, for the query
/// strings of EventSource and WebSocket URLs.
pub(crate) async fn issue_token(State(st): State<AppState>, Caller(caller): Caller) -> Response {
    let (token, exp) = match st.hub.issue_token(&caller) {
        Ok(t) => t,
        Err(e) => return ApiError::from(e).into_response(),
    };
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({
            "token": token,
            "expires_at": exp,
            "expires_in": st.hub.identities().token_ttl().as_secs(),
            "use": "append ?access_token=<token> to EventSource and WebSocket URLs",
        })),
    )
        .into_response()
}
