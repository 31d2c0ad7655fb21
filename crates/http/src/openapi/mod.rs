//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the live collections, so
//! the typed schema of every collection's records is always the one the server enforces.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
mod collections;
mod events;
mod identities;
mod webhooks;

use polyport_core::schema::Collection;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiResult;
use crate::gate::Caller;

pub(crate) async fn document(
    State(app): State<AppState>,
    Caller(caller): Caller,
) -> ApiResult<Response> {
    let colls = app.hub.collections(&caller)?;
    let doc = build(colls.values().map(|c| &**c), app.cfg.max_page_size);
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc.to_string(),
    )
        .into_response())
}

pub(super) fn problem(desc: &str) -> Value {
    json!({
        "description": desc,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

pub(super) fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

pub(super) fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": json_content(schema)})
}

pub(super) fn record_ok(desc: &str, schema: Value) -> Value {
    json!({
        "description": desc,
        "headers": {"ETag": {"description": "the record's version", "schema": {"type": "string"}}},
        "content": json_content(schema),
    })
}

pub(super) fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
    })
}

pub(super) fn if_match() -> Value {
    json!({
        "name": "If-Match", "in": "header", "required": false,
        "description": "the record's ETag (its version); a mismatch answers 412",
        "schema": {"type": "string", "pattern": "^(\\*|(W/)?\"[0-9]+\")$"}
    })
}

pub(super) fn responses(pairs: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

/// The whole document.
pub(crate) fn build<'a>(colls: impl Iterator<Item = &'a Collection>, max_page: usize) -> Value {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    schemas.insert(
        "Problem".into(),
        json!({
            "type": "object",
            "description": "RFC 9457 problem details",
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "code": {"type": "string"},
                "errors": {"type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "field": {"type": "string"},
                        "rule": {"type": "string", "enum": ["required", "type", "unique", "unknown", "reserved", "relation", "format"]},
                        "message": {"type": "string"},
                    },
                    "required": ["field", "rule", "message"],
                }},
            },
            "required": ["type", "title", "status", "code"],
        }),
    );
    collections::meta_paths(&mut paths, &mut schemas);
    for c in colls {
        collections::collection_paths(c, &mut paths, &mut schemas, max_page);
    }
    webhooks::paths(&mut paths, &mut schemas);
    identities::paths(&mut paths, &mut schemas);
    events::paths(&mut paths);
    for (p, op, desc) in [
        ("/healthz", "healthz", "the process is up"),
        ("/readyz", "readyz", "the store accepts requests"),
    ] {
        paths.insert(
            p.into(),
            json!({"get": {"operationId": op, "tags": ["ops"], "responses": responses(&[
                ("200", ok(desc, json!({"type": "object", "properties": {"status": {"type": "string"}}, "required": ["status"]}))),
                ("503", ok("not ready", json!({"type": "object"}))),
            ])}}),
        );
    }
    paths.insert(
        "/api/auth/token".into(),
        json!({"post": {
            "operationId": "issueToken",
            "tags": ["auth"],
            "summary": "A short-lived token for EventSource and WebSocket URLs (`?access_token=`)",
            "security": [{"basic": []}],
            "responses": responses(&[
                ("200", ok("the token", json!({"type": "object", "properties": {
                    "token": {"type": "string"},
                    "expires_at": {"type": "integer", "description": "Unix seconds"},
                    "expires_in": {"type": "integer", "description": "seconds"},
                    "use": {"type": "string"},
                }, "required": ["token", "expires_at", "expires_in"]}))),
                ("401", problem("not signed in")),
            ]),
        }}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {"operationId": "metrics", "tags": ["ops"], "responses": responses(&[
            ("200", json!({"description": "Prometheus text format", "content": {"text/plain": {"schema": {"type": "string"}}}})),
        ])}}),
    );
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Polyport",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Records, topics and events. Generated from the live collections.",
        },
        "paths": paths,
        // Anonymous callers are served unless `[auth] anonymous = false`.
        "security": [{}, {"basic": []}, {"bearer": []}, {"access_token": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "basic": {"type": "http", "scheme": "basic", "description": "a user's password, or an API key or JWT as the password"},
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API key, a JWT, or a sign-in token from POST /api/auth/token"},
                "api_key": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "an API key"},
                "access_token": {"type": "apiKey", "in": "query", "name": "access_token", "description": "the same token, for EventSource and WebSocket URLs"},
            },
        },
    })
}
