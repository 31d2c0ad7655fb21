//! The webhook endpoint registry and the inbound hook receiver.

use serde_json::{Map, Value, json};

use super::{json_content, ok, problem, responses};

/// Schemas of the webhook nouns, then their paths.
pub(super) fn paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    schemas.insert(
        "EndpointSpec".into(),
        json!({
            "type": "object",
            "properties": {
                "url": {"type": "string", "description": "http(s) URL; internal addresses are refused (SSRF guard)"},
                "event_types": {"type": "array", "items": {"type": "string", "minLength": 1, "maxLength": 256}, "description": "e.g. posts.* (globs)"},
                "topics": {"type": "array", "items": {"type": "string"}, "description": "topic filters, e.g. sensors/#"},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "enabled": {"type": "boolean"},
                "description": {"type": "string"},
                "rate_limit": {"type": "integer", "minimum": 0, "maximum": u32::MAX, "description": "deliveries per second"},
                "retry_schedule": {"type": "array", "maxItems": 20, "items": {"type": "integer", "minimum": 0, "maximum": 604800}, "description": "seconds before each retry"},
                "concurrency": {"type": "integer", "minimum": 1, "maximum": polyport_core::webhook::MAX_CONCURRENCY, "description": "deliveries in flight at once; 1 (default) keeps strict order, more gives it up"},
                "secret": {"type": "string", "pattern": "^whsec_", "description": "signing secret; generated when absent"},
            },
            "required": ["url"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Endpoint".into(),
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string"},
                "url": {"type": "string"},
                "event_types": {"type": "array", "items": {"type": "string"}},
                "topics": {"type": "array", "items": {"type": "string"}},
                "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                "enabled": {"type": "boolean"},
                "description": {"type": "string"},
                "rate_limit": {"type": "integer"},
                "retry_schedule": {"type": "array", "items": {"type": "integer"}},
                "concurrency": {"type": "integer"},
                "secret": {"type": "string"},
                "previous_secret": {"type": "string"},
                "previous_until": {"type": "string", "format": "date-time"},
                "failing_since": {"type": "string", "format": "date-time"},
                "disabled_reason": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
            "required": ["id", "url", "event_types", "topics", "headers", "enabled", "created_at", "updated_at"],
        }),
    );
    let attempt = json!({
        "type": "object",
        "properties": {
            "delivery_id": {"type": "string"},
            "number": {"type": "integer"},
            "at": {"type": "string", "format": "date-time"},
            "status": {"type": "integer"},
            "latency_ms": {"type": "integer"},
            "response": {"type": "string"},
            "error": {"type": "string"},
        },
        "required": ["delivery_id", "number", "at", "latency_ms"],
    });
    schemas.insert(
        "Delivery".into(),
        json!({
            "type": "object",
            "properties": {
                "id": {"type": "string", "description": "the webhook-id header: stable across retries and replays"},
                "endpoint_id": {"type": "string"},
                "seq": {"type": "integer"},
                "event_type": {"type": "string"},
                "status": {"type": "string", "enum": ["pending", "delivered", "dead"]},
                "attempts": {"type": "integer"},
                "next_attempt_at": {"type": "string", "format": "date-time"},
                "last_status": {"type": "integer"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
                "attempt_log": {"type": "array", "items": attempt},
            },
            "required": ["id", "endpoint_id", "seq", "event_type", "status", "attempts", "created_at", "updated_at"],
        }),
    );
    registry_paths(paths);
}

/// The endpoint registry, deliveries, and the inbound hook receiver.
fn registry_paths(paths: &mut Map<String, Value>) {
    let ep = json!({"$ref": "#/components/schemas/Endpoint"});
    let id = json!({"name": "id", "in": "path", "required": true, "schema": {"type": "string"}});
    let seq = json!({"name": "seq", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 0}});
    let json_body = |schema: Value, required: bool| json!({"required": required, "content": json_content(schema)});
    paths.insert(
        "/api/webhooks/endpoints".into(),
        json!({
            "get": {"operationId": "listWebhookEndpoints", "tags": ["webhooks"], "responses": responses(&[
                ("200", ok("all endpoints", json!({"type": "object", "properties": {"items": {"type": "array", "items": ep}}, "required": ["items"]}))),
            ])},
            "post": {"operationId": "createWebhookEndpoint", "tags": ["webhooks"],
                "requestBody": json_body(json!({"$ref": "#/components/schemas/EndpointSpec"}), true),
                "responses": responses(&[
                    ("201", ok("registered (the response holds the signing secret)", ep.clone())),
                    ("400", problem("malformed")),
                    ("413", problem("body too large")),
                    ("415", problem("body is not JSON")),
                    ("422", problem("invalid, or the URL is refused by the SSRF guard")),
                ])},
        }),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}".into(),
        json!({
            "parameters": [id],
            "get": {"operationId": "getWebhookEndpoint", "tags": ["webhooks"], "responses": responses(&[("200", ok("the endpoint", ep.clone())), ("404", problem("not found"))])},
            "patch": {"operationId": "patchWebhookEndpoint", "tags": ["webhooks"],
                "description": "JSON Merge Patch; set enabled=true to re-enable a disabled endpoint",
                "requestBody": json_body(json!({"type": "object"}), true),
                "responses": responses(&[
                    ("200", ok("updated", ep.clone())),
                    ("400", problem("malformed")),
                    ("404", problem("not found")),
                    ("413", problem("body too large")),
                    ("415", problem("body is not JSON")),
                    ("422", problem("invalid")),
                ])},
            "delete": {"operationId": "deleteWebhookEndpoint", "tags": ["webhooks"], "responses": responses(&[("204", json!({"description": "deleted with its queue"})), ("404", problem("not found"))])},
        }),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}/rotate-secret".into(),
        json!({"post": {"operationId": "rotateWebhookSecret", "tags": ["webhooks"], "parameters": [id],
            "description": "New secret; the old one keeps signing (both signatures sent) for overlap_secs (default 24 h)",
            "requestBody": json_body(json!({"type": "object", "properties": {"secret": {"type": "string"}, "overlap_secs": {"type": "integer", "minimum": 0}}, "additionalProperties": false}), false),
            "responses": responses(&[
                ("200", ok("rotated", ep.clone())),
                ("400", problem("malformed")),
                ("404", problem("not found")),
                ("413", problem("body too large")),
                ("415", problem("body is not JSON")),
                ("422", problem("invalid secret")),
            ])}}),
    );
    let requeued = ok(
        "queued",
        json!({"type": "object", "properties": {"requeued": {"type": "integer"}}, "required": ["requeued"]}),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}/recover".into(),
        json!({"post": {"operationId": "recoverWebhookEndpoint", "tags": ["webhooks"], "parameters": [id],
            "description": "Without since: retry the dead-letter list. With since: resend every matching event after that sequence.",
            "requestBody": json_body(json!({"type": "object", "properties": {"since": {"type": "integer", "minimum": 0}}, "additionalProperties": false}), false),
            "responses": responses(&[
                ("202", requeued.clone()),
                ("400", problem("malformed")),
                ("404", problem("not found")),
                ("413", problem("body too large")),
                ("415", problem("body is not JSON")),
            ])}}),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}/deliveries".into(),
        json!({"get": {"operationId": "listWebhookDeliveries", "tags": ["webhooks"],
            "parameters": [id,
                {"name": "status", "in": "query", "schema": {"type": "string", "enum": ["pending", "delivered", "dead"]}},
                {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
                {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 0}}],
            "responses": responses(&[
                ("200", ok("newest first", json!({"type": "object", "properties": {
                    "items": {"type": "array", "items": {"$ref": "#/components/schemas/Delivery"}},
                    "next_before": {"type": ["integer", "null"]}}, "required": ["items", "next_before"]}))),
                ("400", problem("bad parameter")),
                ("404", problem("no such endpoint")),
            ])}}),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}/deliveries/{seq}".into(),
        json!({"get": {"operationId": "getWebhookDelivery", "tags": ["webhooks"], "parameters": [id, seq],
            "responses": responses(&[
                ("200", ok("the delivery with its attempt_log", json!({"$ref": "#/components/schemas/Delivery"}))),
                ("400", problem("bad parameter")),
                ("404", problem("not found")),
            ])}}),
    );
    paths.insert(
        "/api/webhooks/endpoints/{id}/deliveries/{seq}/retry".into(),
        json!({"post": {"operationId": "retryWebhookDelivery", "tags": ["webhooks"], "parameters": [id, seq],
            "responses": responses(&[
                ("202", requeued),
                ("400", problem("bad parameter, or the event is no longer in the log")),
                ("404", problem("no such endpoint")),
            ])}}),
    );
    paths.insert(
        "/hooks/{source}".into(),
        json!({"post": {"operationId": "inboundHook", "tags": ["webhooks"],
            "description": "Receives another service's webhook and publishes it durably on hooks/{source}. Configured sources verify their signature (Standard Webhooks, GitHub, Stripe or a token).",
            "parameters": [{"name": "source", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$"}}],
            "requestBody": {"content": {"*/*": {"schema": {}}}},
            "responses": responses(&[
                ("202", ok("stored", json!({"type": "object", "properties": {"id": {"type": "string"}, "sequence": {"type": "integer"}, "topic": {"type": "string"}}, "required": ["id", "sequence", "topic"]}))),
                ("400", problem("bad source name")),
                ("401", problem("signature missing or wrong")),
                ("404", problem("unknown source (when sources must be configured)")),
                ("413", problem("body too large")),
            ])}}),
    );
}
