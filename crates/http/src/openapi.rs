//! `GET /openapi.json`: an OpenAPI 3.1 document generated from the live collections, so
//! the typed schema of every collection's records is always the one the server enforces.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use polyport_core::schema::{Collection, FieldType};
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::ApiResult;

pub(crate) async fn document(State(app): State<AppState>) -> ApiResult<Response> {
    let colls = app.hub.collections(&app.ctx())?;
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

fn field_schema(t: &FieldType) -> Value {
    match t {
        FieldType::Text => json!({"type": "string"}),
        FieldType::Number => json!({"type": "number"}),
        FieldType::Integer => json!({
            "type": "integer",
            "minimum": i64::MIN,
            "maximum": i64::MAX,
        }),
        FieldType::Bool => json!({"type": "boolean"}),
        FieldType::Datetime => json!({"type": "string", "format": "date-time"}),
        FieldType::Json => json!({}),
        FieldType::Relation { collection } => json!({
            "type": "string",
            "pattern": "^[A-Za-z0-9_-]{1,128}$",
            "description": format!("id of a record in '{collection}'"),
        }),
        FieldType::Array { items } => json!({"type": "array", "items": field_schema(items)}),
    }
}

/// Upper-camel type name for a collection (`blog_posts` → `BlogPosts`).
fn type_name(c: &str) -> String {
    c.split('_')
        .filter(|s| !s.is_empty())
        .map(|s| {
            let mut ch = s.chars();
            match ch.next() {
                Some(f) => f.to_ascii_uppercase().to_string() + ch.as_str(),
                None => String::new(),
            }
        })
        .collect()
}

fn problem(desc: &str) -> Value {
    json!({
        "description": desc,
        "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    })
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

fn ok(desc: &str, schema: Value) -> Value {
    json!({"description": desc, "content": json_content(schema)})
}

fn record_ok(desc: &str, schema: Value) -> Value {
    json!({
        "description": desc,
        "headers": {"ETag": {"description": "the record's version", "schema": {"type": "string"}}},
        "content": json_content(schema),
    })
}

fn id_param() -> Value {
    json!({
        "name": "id", "in": "path", "required": true,
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$"}
    })
}

fn if_match() -> Value {
    json!({
        "name": "If-Match", "in": "header", "required": false,
        "description": "the record's ETag (its version); a mismatch answers 412",
        "schema": {"type": "string", "pattern": "^(\\*|(W/)?\"[0-9]+\")$"}
    })
}

fn responses(pairs: &[(&str, Value)]) -> Value {
    let mut m = Map::new();
    for (k, v) in pairs {
        m.insert((*k).to_string(), v.clone());
    }
    Value::Object(m)
}

fn collection_paths(
    c: &Collection,
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
    max_page: usize,
) {
    let name = c.name();
    let t = type_name(name);
    let mut props = Map::new();
    props.insert("id".into(), json!({"type": "string"}));
    props.insert(
        "collection".into(),
        json!({"type": "string", "const": name}),
    );
    props.insert(
        "created_at".into(),
        json!({"type": "string", "format": "date-time"}),
    );
    props.insert(
        "updated_at".into(),
        json!({"type": "string", "format": "date-time"}),
    );
    props.insert("version".into(), json!({"type": "integer", "minimum": 1}));
    let mut input_props = Map::new();
    let mut required_in = Vec::new();
    for f in c.fields() {
        let mut s = field_schema(&f.ty);
        if let (Some(d), Value::Object(m)) = (&f.description, &mut s) {
            m.insert("description".into(), d.clone().into());
        }
        // Stored records may predate a schema change, so outputs also allow null.
        props.insert(
            f.name.clone(),
            json!({"anyOf": [s.clone(), {"type": "null"}]}),
        );
        let input = if f.required {
            s
        } else {
            json!({"anyOf": [s, {"type": "null"}]})
        };
        input_props.insert(f.name.clone(), input);
        if f.required {
            required_in.push(f.name.clone());
        }
    }
    props.insert("expand".into(), json!({"type": "object", "description": "related records, when ?expand= names relation fields"}));
    let strict = c.spec.fields.is_some() && !c.spec.additional_fields;
    schemas.insert(
        t.clone(),
        json!({
            "type": "object",
            "description": c.spec.description.clone().unwrap_or_else(|| format!("A record of '{name}'")),
            "properties": props,
            "required": ["id", "collection", "created_at", "updated_at", "version"],
            "additionalProperties": true,
        }),
    );
    let mut create_props = input_props.clone();
    create_props.insert(
        "id".into(),
        json!({"type": "string", "pattern": "^[A-Za-z0-9_-]{1,128}$", "description": "client-chosen id; generated when absent"}),
    );
    schemas.insert(
        format!("{t}Create"),
        json!({"type": "object", "properties": create_props, "required": required_in, "additionalProperties": !strict}),
    );
    schemas.insert(
        format!("{t}Input"),
        json!({"type": "object", "properties": input_props, "required": required_in, "additionalProperties": !strict}),
    );
    schemas.insert(
        format!("{t}Patch"),
        json!({"type": "object", "description": "JSON Merge Patch (RFC 7396): null removes a field", "properties": input_props, "additionalProperties": !strict}),
    );
    let rec = json!({"$ref": format!("#/components/schemas/{t}")});
    let page = json!({
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": rec},
            "next_cursor": {"type": ["string", "null"]},
            "total": {"type": "integer", "minimum": 0},
        },
        "required": ["items", "next_cursor"],
    });
    let body = |schema: &str| {
        json!({"required": true, "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}
        }})
    };
    let common_write = [
        ("400", problem("malformed request")),
        ("404", problem("collection or record not found")),
        ("409", problem("id or unique value already used")),
        ("413", problem("body too large")),
        ("415", problem("body is not JSON")),
        (
            "422",
            problem("validation failed; `errors` names each field and rule"),
        ),
    ];
    paths.insert(
        format!("/api/collections/{name}/records"),
        json!({
            "get": {
                "operationId": format!("list{t}"),
                "tags": [name],
                "summary": format!("List {name}"),
                "parameters": [
                    {"name": "filter", "in": "query", "schema": {"type": "string"}, "description": "e.g. title ~ \"rust\" && views > 10"},
                    {"name": "sort", "in": "query", "schema": {"type": "string"}, "description": "e.g. -created_at,title"},
                    {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": max_page}},
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                    {"name": "count", "in": "query", "schema": {"type": "boolean"}},
                    {"name": "expand", "in": "query", "schema": {"type": "string"}, "description": "comma-separated relation fields"},
                ],
                "responses": responses(&[
                    ("200", ok("a page", page)),
                    ("400", problem("bad filter, sort, cursor or limit")),
                    ("404", problem("collection not found")),
                ]),
            },
            "post": {
                "operationId": format!("create{t}"),
                "tags": [name],
                "summary": format!("Create a record in {name}"),
                "requestBody": body(&format!("{t}Create")),
                "responses": responses(&[&[("201", record_ok("created", rec.clone()))][..], &common_write[..]].concat()),
            },
        }),
    );
    let mut put_resps = vec![
        ("200", record_ok("replaced", rec.clone())),
        ("201", record_ok("created", rec.clone())),
        (
            "412",
            problem("If-Match does not match the current version"),
        ),
    ];
    put_resps.extend(common_write.iter().cloned());
    let mut patch_resps = vec![
        ("200", record_ok("updated", rec.clone())),
        (
            "412",
            problem("If-Match does not match the current version"),
        ),
    ];
    patch_resps.extend(common_write.iter().cloned());
    paths.insert(
        format!("/api/collections/{name}/records/{{id}}"),
        json!({
            "parameters": [id_param()],
            "get": {
                "operationId": format!("get{t}"),
                "tags": [name],
                "parameters": [
                    {"name": "expand", "in": "query", "schema": {"type": "string"}},
                    {"name": "If-None-Match", "in": "header", "schema": {"type": "string"}},
                ],
                "responses": responses(&[
                    ("200", record_ok("the record", rec.clone())),
                    ("304", json!({"description": "not modified"})),
                    ("400", problem("malformed id or expand")),
                    ("404", problem("not found")),
                ]),
            },
            "put": {
                "operationId": format!("replace{t}"),
                "tags": [name],
                "parameters": [if_match()],
                "requestBody": body(&format!("{t}Input")),
                "responses": responses(&put_resps),
            },
            "patch": {
                "operationId": format!("patch{t}"),
                "tags": [name],
                "parameters": [if_match()],
                "requestBody": {"required": true, "content": {
                    "application/merge-patch+json": {"schema": {"$ref": format!("#/components/schemas/{t}Patch")}},
                    "application/json": {"schema": {"$ref": format!("#/components/schemas/{t}Patch")}},
                }},
                "responses": responses(&patch_resps),
            },
            "delete": {
                "operationId": format!("delete{t}"),
                "tags": [name],
                "parameters": [if_match()],
                "responses": responses(&[
                    ("204", json!({"description": "deleted"})),
                    ("400", problem("malformed id")),
                    ("404", problem("not found")),
                    ("412", problem("If-Match does not match the current version")),
                ]),
            },
        }),
    );
}

fn webhook_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
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

fn stream_params() -> Value {
    json!([
        {"name": "topic", "in": "query", "schema": {"type": "array", "items": {"type": "string"}}, "style": "form", "explode": true, "description": "topic filter, repeatable; + and # wildcards"},
        {"name": "collection", "in": "query", "schema": {"type": "string"}, "description": "follow record changes of a collection"},
        {"name": "id", "in": "query", "schema": {"type": "string"}},
        {"name": "filter", "in": "query", "schema": {"type": "string"}, "description": "record filter, e.g. author = \"u1\""},
        {"name": "since", "in": "query", "schema": {"type": "integer", "minimum": 0}, "description": "resume after this sequence (0 = from the start of the log)"},
        {"name": "epoch", "in": "query", "schema": {"type": "string"}},
        {"name": "strict", "in": "query", "schema": {"type": "boolean"}},
        {"name": "group", "in": "query", "schema": {"type": "string"}},
        {"name": "overflow", "in": "query", "schema": {"type": "string", "enum": ["disconnect", "notify"]}},
    ])
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
    schemas.insert(
        "FieldDef".into(),
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]{0,63}$"},
                "type": {"type": "string", "enum": ["text", "number", "integer", "bool", "datetime", "json", "relation", "array"]},
                "collection": {"type": "string", "description": "target of a relation"},
                "items": {"type": "object", "description": "element type of an array, e.g. {\"type\": \"text\"}"},
                "required": {"type": "boolean"},
                "unique": {"type": "boolean"},
                "default": {},
                "description": {"type": "string"},
            },
            "required": ["name", "type"],
        }),
    );
    schemas.insert(
        "CollectionSpec".into(),
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string", "pattern": "^[A-Za-z][A-Za-z0-9_]{0,63}$"},
                "fields": {"type": "array", "items": {"$ref": "#/components/schemas/FieldDef"}},
                "additional_fields": {"type": "boolean"},
                "description": {"type": "string"},
            },
            "required": ["name"],
            "additionalProperties": false,
        }),
    );
    schemas.insert(
        "Collection".into(),
        json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "fields": {"type": "array", "items": {"$ref": "#/components/schemas/FieldDef"}},
                "additional_fields": {"type": "boolean"},
                "description": {"type": "string"},
                "created_at": {"type": "string", "format": "date-time"},
                "updated_at": {"type": "string", "format": "date-time"},
            },
            "required": ["name", "created_at", "updated_at"],
        }),
    );
    let coll_ref = json!({"$ref": "#/components/schemas/Collection"});
    let name_param = json!({
        "name": "name", "in": "path", "required": true,
        "schema": {"type": "string"}
    });
    paths.insert(
        "/api/collections".into(),
        json!({
            "get": {
                "operationId": "listCollections",
                "tags": ["collections"],
                "responses": responses(&[("200", ok("all collections", json!({
                    "type": "object",
                    "properties": {"items": {"type": "array", "items": coll_ref}},
                    "required": ["items"],
                })))]),
            },
            "post": {
                "operationId": "createCollection",
                "tags": ["collections"],
                "requestBody": {"required": true, "content": json_content(json!({"$ref": "#/components/schemas/CollectionSpec"}))},
                "responses": responses(&[
                    ("201", ok("created", coll_ref.clone())),
                    ("400", problem("malformed definition")),
                    ("409", problem("exists already")),
                    ("413", problem("body too large")),
                    ("415", problem("body is not JSON")),
                    ("422", problem("invalid definition")),
                ]),
            },
        }),
    );
    paths.insert(
        "/api/collections/{name}".into(),
        json!({
            "parameters": [name_param],
            "get": {
                "operationId": "getCollection",
                "tags": ["collections"],
                "responses": responses(&[("200", ok("the collection", coll_ref.clone())), ("404", problem("not found"))]),
            },
            "patch": {
                "operationId": "patchCollection",
                "tags": ["collections"],
                "description": "JSON Merge Patch of the definition; existing records are not rewritten",
                "requestBody": {"required": true, "content": json_content(json!({"type": "object"}))},
                "responses": responses(&[
                    ("200", ok("updated", coll_ref.clone())),
                    ("400", problem("malformed definition")),
                    ("404", problem("not found")),
                    ("409", problem("existing records violate a new unique field")),
                    ("413", problem("body too large")),
                    ("415", problem("body is not JSON")),
                    ("422", problem("invalid definition")),
                ]),
            },
            "delete": {
                "operationId": "deleteCollection",
                "tags": ["collections"],
                "responses": responses(&[("204", json!({"description": "deleted with all its records"})), ("404", problem("not found"))]),
            },
        }),
    );
    for c in colls {
        collection_paths(c, &mut paths, &mut schemas, max_page);
    }
    webhook_paths(&mut paths, &mut schemas);
    paths.insert(
        "/api/topics/{topic}".into(),
        json!({
            "post": {
                "operationId": "publish",
                "tags": ["events"],
                "description": "Publishes the body as-is on the topic (slashes allowed in the path). `ce-type` sets the CloudEvents type.",
                "parameters": [
                    {"name": "topic", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[^+#\\u0000]+$"}},
                    {"name": "durable", "in": "query", "schema": {"type": "boolean"}},
                ],
                "requestBody": {"content": {"*/*": {"schema": {}}}},
                "responses": responses(&[
                    ("202", ok("accepted (and on disk when durable)", json!({
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "topic": {"type": "string"},
                            "sequence": {"type": ["integer", "null"]},
                            "durable": {"type": "boolean"},
                        },
                        "required": ["id", "topic", "sequence", "durable"],
                    }))),
                    ("400", problem("invalid topic")),
                    ("413", problem("body too large")),
                ]),
            }
        }),
    );
    let gone = problem("resume position no longer available (strict)");
    paths.insert(
        "/api/events".into(),
        json!({"get": {
            "operationId": "sse",
            "tags": ["realtime"],
            "description": "Server-Sent Events; `id:` is the sequence; resume with Last-Event-ID or since",
            "parameters": stream_params(),
            "responses": responses(&[
                ("200", json!({"description": "event stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}})),
                ("400", problem("bad filter")),
                ("410", gone.clone()),
            ]),
        }}),
    );
    paths.insert(
        "/api/stream".into(),
        json!({"get": {
            "operationId": "ndjson",
            "tags": ["realtime"],
            "description": "One CloudEvent per line",
            "parameters": stream_params(),
            "responses": responses(&[
                ("200", json!({"description": "NDJSON stream", "content": {"application/x-ndjson": {"schema": {"type": "string"}}}})),
                ("400", problem("bad filter")),
                ("410", gone.clone()),
            ]),
        }}),
    );
    let mut poll_params = stream_params();
    if let Value::Array(a) = &mut poll_params {
        a.push(json!({"name": "wait", "in": "query", "schema": {"type": "integer", "minimum": 0, "maximum": 120}}));
        a.push(json!({"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}));
    }
    paths.insert(
        "/api/poll".into(),
        json!({"get": {
            "operationId": "poll",
            "tags": ["realtime"],
            "description": "Long-poll: returns as soon as at least one event exists, or empty after `wait` seconds",
            "parameters": poll_params,
            "responses": responses(&[
                ("200", ok("events and the next cursor", json!({
                    "type": "object",
                    "properties": {
                        "events": {"type": "array", "items": {"type": "object"}},
                        "cursor": {"type": "integer"},
                        "epoch": {"type": "string"},
                    },
                    "required": ["events", "cursor", "epoch"],
                }))),
                ("400", problem("bad filter")),
                ("410", gone),
            ]),
        }}),
    );
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
        "components": {"schemas": schemas},
    })
}
