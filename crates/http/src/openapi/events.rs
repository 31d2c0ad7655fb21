//! Topics and the realtime transports: publish, SSE, NDJSON, long-poll.

use serde_json::{Map, Value, json};

use super::{ok, problem, responses};

/// Publishing and the realtime transports.
pub(super) fn paths(paths: &mut Map<String, Value>) {
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
