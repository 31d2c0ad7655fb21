//! Who is calling over HTTP: `Authorization: Basic` checked through the Hub's
//! authenticate seam (the same `[auth]` users MQTT, AMQP, STOMP and SOAP check), so
//! `anonymous = false` holds on every HTTP route too. The caller's `AuthContext` goes into
//! the request's extensions.
//!
//! A few paths authenticate some other way and pass untouched: `/healthz` and `/readyz`
//! (probes), `/hooks/{source}` (each sender's own signature), `/mqtt` and `/stomp` (their
//! CONNECT carries credentials) and `POST /soap` (WS-Security in the envelope).

use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use polyport_core::auth::basic_credentials;
use polyport_core::{HubError, Origin};

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
    let who = match header {
        Some(h) => basic_credentials(&h)
            .map_err(HubError::Unauthenticated)
            .and_then(|(user, pass)| {
                st.hub
                    .authenticate(Origin("http"), Some(&user), Some(&pass))
            }),
        None => st.hub.authenticate(Origin("http"), None, None),
    };
    match who {
        Ok(ctx) => {
            req.extensions_mut().insert(ctx);
            next.run(req).await
        }
        Err(e) => {
            metrics::counter!("polyport_auth_failures_total", "origin" => "http").increment(1);
            tracing::info!(path = %req.uri().path(), error = %e, "HTTP caller refused");
            let mut res = ApiError::from(e).into_response();
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"Polyport\", charset=\"UTF-8\""),
            );
            res
        }
    }
}
