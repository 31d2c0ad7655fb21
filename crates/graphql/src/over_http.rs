//! GraphQL over HTTP as the GraphQL-over-HTTP spec (and graphql-http's audits) reads it:
//! which requests are GraphQL requests, and which media type and status answer them.
//!
//! - POST needs a `Content-Type`: `application/json` (or `+json`) with a `{query,
//!   operationName, variables, extensions}` object, or `application/graphql` with the
//!   document as the body; anything else is a 415, a body that is not such a request a
//!   400 — both with GraphQL-shaped `errors`.
//! - GET carries the request in the query string and runs queries only: a mutation (or a
//!   subscription, which belongs on the WebSocket) is a 405 with `Allow: POST`, so a link
//!   or an `<img>` on another site cannot write.
//! - The answer is `application/graphql-response+json` when the client accepts it, else
//!   `application/json` (also for `*/*` and a missing `Accept`). Under the former a request
//!   that never executed (parse or validation failure) is a 400 without a `data` entry;
//!   under the latter it stays a 200, as legacy clients expect.
//!
//! Written here rather than taken from async-graphql-axum's extractor and responder,
//! which always answer `application/graphql-response+json` and accept a POST with no
//! content type.

use async_graphql::parser::types::OperationType;
use async_graphql::{Request, Response as GqlResponse, ServerError};
use axum::body::Bytes;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::errors;

/// `application/graphql-response+json`.
const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// The media type the response is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Media {
    /// `application/graphql-response+json`: HTTP status codes carry meaning.
    GraphqlResponse,
    /// `application/json`: the legacy watershed, always 200 once parsed.
    Json,
}

impl Media {
    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(match self {
            Media::GraphqlResponse => "application/graphql-response+json; charset=utf-8",
            Media::Json => "application/json; charset=utf-8",
        })
    }
}

/// Picks the response media type from `Accept`: the GraphQL one when it is accepted
/// (q > 0), else JSON — also for `*/*`, no `Accept`, or only types we do not produce
/// (the spec lets a server answer those with JSON rather than 406).
pub(crate) fn negotiate(headers: &HeaderMap) -> Media {
    let accept = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    let mut json_q = 0.0f32;
    let mut gql_q = 0.0f32;
    for range in accept {
        let mut parts = range.split(';');
        let essence = parts.next().unwrap_or("").trim().to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.trim().strip_prefix("q="))
            .find_map(|q| q.trim().parse::<f32>().ok())
            .unwrap_or(1.0);
        match essence.as_str() {
            GRAPHQL_RESPONSE => gql_q = gql_q.max(q),
            JSON | "application/*" | "*/*" => json_q = json_q.max(q),
            _ => {}
        }
    }
    if gql_q > 0.0 && gql_q >= json_q {
        Media::GraphqlResponse
    } else {
        Media::Json
    }
}

/// A request that is not a GraphQL request, answered in GraphQL's shape.
pub(crate) struct Refusal {
    status: StatusCode,
    code: &'static str,
    message: String,
    allow: Option<&'static str>,
}

impl Refusal {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            allow: None,
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// A caller the server refused before running anything (401/403).
    pub(crate) fn from_hub(e: polyport_core::HubError) -> Self {
        let status = match &e {
            polyport_core::HubError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            polyport_core::HubError::Forbidden(_) => StatusCode::FORBIDDEN,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }

    pub(crate) fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "request body too large",
        )
    }

    pub(crate) fn into_response(self, media: Media) -> Response {
        let body = serde_json::json!({
            "errors": [{"message": self.message, "extensions": {"code": self.code}}]
        });
        let mut resp = (self.status, body.to_string()).into_response();
        resp.headers_mut()
            .insert(header::CONTENT_TYPE, media.content_type());
        if let Some(allow) = self.allow {
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

/// A POST body as a GraphQL request.
pub(crate) fn parse_post(headers: &HeaderMap, body: &Bytes) -> Result<Request, Refusal> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = polyport_core::event::media_essence(ct);
    if essence == "application/graphql" {
        let text = std::str::from_utf8(body)
            .map_err(|_| Refusal::bad_request("the request body is not UTF-8"))?;
        return Ok(Request::new(text));
    }
    if !polyport_core::event::is_json_type(&essence) {
        return Err(Refusal::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            if ct.is_empty() {
                "a GraphQL POST needs Content-Type: application/json (or application/graphql)"
                    .to_string()
            } else {
                format!("unsupported Content-Type '{ct}': use application/json")
            },
        ));
    }
    if body.is_empty() {
        return Err(Refusal::bad_request(
            "the request body is empty: send {\"query\": \"…\"}",
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| Refusal::bad_request(format!("the request body is not JSON: {e}")))?;
    let serde_json::Value::Object(ref obj) = value else {
        return Err(Refusal::bad_request(
            "a GraphQL request is a JSON object with a 'query' string",
        ));
    };
    if !obj.get("query").is_some_and(|q| q.is_string()) {
        return Err(Refusal::bad_request(
            "a GraphQL request needs a 'query' string",
        ));
    }
    serde_json::from_value(value)
        .map_err(|e| Refusal::bad_request(format!("invalid GraphQL request: {e}")))
}

/// A GET query string as a GraphQL request that may run: queries only.
pub(crate) fn parse_get(query: Option<&str>) -> Result<Request, Refusal> {
    let raw = query.unwrap_or("");
    let has_query = form_urlencoded::parse(raw.as_bytes()).any(|(k, _)| k == "query");
    if !has_query {
        return Err(Refusal::bad_request(
            "a GraphQL GET needs a 'query' parameter",
        ));
    }
    let req = async_graphql::http::parse_query_string(raw)
        .map_err(|e| Refusal::bad_request(format!("invalid GraphQL request: {e}")))?;
    // A document that does not parse is executed anyway, for the usual parse error.
    if let Ok(doc) = async_graphql::parser::parse_query(&req.query) {
        let op = doc.operations.iter().find(|(name, _)| {
            req.operation_name.is_none()
                || name.map(|n| n.as_str()) == req.operation_name.as_deref()
        });
        if let Some((_, op)) = op
            && op.node.ty != OperationType::Query
        {
            let mut r = Refusal::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                match op.node.ty {
                    OperationType::Subscription => {
                        "subscriptions run over the WebSocket at /graphql, not GET"
                    }
                    _ => "mutations must be sent with POST",
                },
            );
            r.allow = Some("POST");
            return Err(r);
        }
    }
    Ok(req)
}

fn has_code(e: &ServerError, code: &str) -> bool {
    e.extensions
        .as_ref()
        .and_then(|x| x.get("code"))
        .is_some_and(|c| *c == async_graphql::Value::from(code))
}

/// Renders an execution result in the negotiated media type.
pub(crate) fn respond(resp: GqlResponse, media: Media) -> Response {
    let never_executed = resp.data == async_graphql::Value::Null
        && resp
            .errors
            .iter()
            .any(|e| has_code(e, errors::PARSE_FAILED) || has_code(e, errors::VALIDATION_FAILED));
    let headers = resp.http_headers.clone();
    let mut body = serde_json::to_value(&resp).unwrap_or_default();
    let status = if never_executed && media == Media::GraphqlResponse {
        if let serde_json::Value::Object(m) = &mut body {
            m.remove("data");
        }
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    let mut out = (status, body.to_string()).into_response();
    out.headers_mut()
        .insert(header::CONTENT_TYPE, media.content_type());
    out.headers_mut().extend(headers);
    out
}
