//! CORS for browser apps on other origins: REST, SSE and long-poll (WebSocket is not
//! subject to it).
//!
//! Written here instead of tower-http's `CorsLayer`, which took a tenth of a REST GET's
//! throughput (`wrk` on `GET …/records/{id}`: 53k req/s with it, 60k without, in one
//! run): its rules are evaluated per request, where ours are header values built once
//! at start-up. Behaviour:
//!
//! - `cors_origins = ["*"]` (the default): every response says
//!   `access-control-allow-origin: *`, so it is the same for every origin and shared
//!   caches may keep it.
//! - a list: a listed `Origin` is echoed, with `Vary: Origin`; others get no CORS
//!   headers (the browser then refuses the response).
//! - Preflights (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) are
//!   answered here with 204: the method and headers asked for are allowed, echoed rather
//!   than `*` (a `*` does not cover `Authorization`, which signed-in pages send), cached
//!   for 10 minutes.
//! - `ETag` and `Location` are exposed to scripts.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// The origins that may call, decided once.
#[derive(Clone, Debug)]
pub(crate) enum Cors {
    /// Any origin (`*`).
    Any,
    /// These origins only, as configured.
    List(Vec<HeaderValue>),
}

const EXPOSE: HeaderValue = HeaderValue::from_static("etag,location");
const ANY: HeaderValue = HeaderValue::from_static("*");
const MAX_AGE: HeaderValue = HeaderValue::from_static("600");
const PREFLIGHT_VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);

impl Cors {
    /// `None` when no origin may call (CORS off).
    pub(crate) fn new(origins: &[String]) -> Option<Self> {
        if origins.is_empty() {
            return None;
        }
        if origins.iter().any(|o| o == "*") {
            return Some(Self::Any);
        }
        Some(Self::List(
            origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o.trim_end_matches('/')).ok())
                .collect(),
        ))
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if it may call.
    fn allow(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Self::Any => Some(ANY),
            Self::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }

    fn varies(&self) -> bool {
        matches!(self, Self::List(_))
    }
}

impl Cors {
    /// The answer to a preflight; `None` when the request is not one.
    pub(crate) fn preflight(&self, req: &Request) -> Option<Response> {
        let origin = req.headers().get(header::ORIGIN);
        (req.method() == Method::OPTIONS
            && origin.is_some()
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD))
        .then(|| preflight(self, origin, req.headers()))
    }

    /// Adds the CORS headers to a response for a request from `origin`.
    pub(crate) fn decorate(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        if let Some(allow) = self.allow(origin) {
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
            h.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSE);
        }
        if self.varies() {
            h.append(header::VARY, HeaderValue::from_static("origin"));
        }
    }
}

fn preflight(cors: &Cors, origin: Option<&HeaderValue>, req: &HeaderMap) -> Response {
    let mut res = StatusCode::NO_CONTENT.into_response();
    let h = res.headers_mut();
    if let Some(allow) = cors.allow(origin) {
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow);
        if let Some(m) = req.get(header::ACCESS_CONTROL_REQUEST_METHOD) {
            h.insert(header::ACCESS_CONTROL_ALLOW_METHODS, m.clone());
        }
        if let Some(hs) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
            h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, hs.clone());
        }
        h.insert(header::ACCESS_CONTROL_MAX_AGE, MAX_AGE);
    }
    h.insert(header::VARY, PREFLIGHT_VARY);
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listed_origin_is_echoed_and_others_get_nothing() {
        let c =
            Cors::new(&["https://app.example".into(), "https://b.example/".into()]).expect("on");
        let app = HeaderValue::from_static("https://app.example");
        let b = HeaderValue::from_static("https://b.example");
        let evil = HeaderValue::from_static("https://evil.example");
        assert_eq!(c.allow(Some(&app)), Some(app.clone()));
        assert_eq!(
            c.allow(Some(&b)),
            Some(b.clone()),
            "a trailing slash in config"
        );
        assert_eq!(c.allow(Some(&evil)), None);
        assert_eq!(c.allow(None), None);
        assert!(Cors::new(&[]).is_none(), "an empty list turns CORS off");
        assert_eq!(
            Cors::new(&["*".into()]).and_then(|c| c.allow(Some(&evil))),
            Some(ANY)
        );
    }

    #[test]
    fn a_preflight_allows_what_it_asks_for_including_authorization() {
        let mut req = HeaderMap::new();
        req.insert(
            header::ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("PATCH"),
        );
        req.insert(
            header::ACCESS_CONTROL_REQUEST_HEADERS,
            HeaderValue::from_static("authorization, content-type"),
        );
        let origin = HeaderValue::from_static("https://app.example");
        let res = preflight(&Cors::Any, Some(&origin), &req);
        assert_eq!(res.status(), StatusCode::NO_CONTENT);
        let h = res.headers();
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert_eq!(h[header::ACCESS_CONTROL_ALLOW_METHODS], "PATCH");
        assert_eq!(
            h[header::ACCESS_CONTROL_ALLOW_HEADERS],
            "authorization, content-type"
        );
    }
}
