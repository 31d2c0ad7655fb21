//! Who am I, stored users and API keys.

use serde_json::{Map, Value, json};

use super::{json_content, ok, problem, responses};

pub(super) fn paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
    let role = json!({"type": "string", "enum": ["admin", "user"]});
    let scopes = json!({"type": ["array", "null"], "items": {"type": "string", "enum": ["read", "write", "publish", "subscribe", "admin"]}});
    let name = json!({"type": "string", "minLength": 1, "maxLength": 64, "pattern": "^[^:\\s]+$"});
    schemas.insert(
        "User".into(),
        json!({"type": "object", "properties": {
            "name": {"type": "string"}, "role": role, "source": {"type": "string", "enum": ["config", "stored"]},
            "created_at": {"type": "integer"}, "updated_at": {"type": "integer"},
        }, "required": ["name", "role", "source"]}),
    );
    schemas.insert(
        "ApiKey".into(),
        json!({"type": "object", "properties": {
            "id": {"type": "string"}, "name": {"type": "string"}, "role": role, "scopes": scopes,
            "user": {"type": ["string", "null"]}, "created_at": {"type": "integer"},
            "expires_at": {"type": ["integer", "null"]},
            "key": {"type": "string", "description": "the key itself: in the creation answer only"},
        }, "required": ["id", "name", "role", "created_at"]}),
    );
    let user = json!({"$ref": "#/components/schemas/User"});
    let key = json!({"$ref": "#/components/schemas/ApiKey"});
    let list = |item: &Value| json!({"type": "object", "properties": {"items": {"type": "array", "items": item}}, "required": ["items"]});
    let denied = || problem("not an admin");
    let unauthenticated = || problem("not signed in");
    let name_param =
        json!({"name": "name", "in": "path", "required": true, "schema": {"type": "string"}});
    paths.insert(
        "/api/auth/me".into(),
        json!({"get": {"operationId": "whoAmI", "tags": ["auth"], "responses": responses(&[
            ("200", ok("the caller's identity", json!({"type": "object", "properties": {
                "id": {"type": ["string", "null"]}, "role": role, "admin": {"type": "boolean"},
                "anonymous": {"type": "boolean"}, "via": {"type": "object"}, "scopes": scopes,
                "claims": {"type": "object"},
            }, "required": ["id", "admin"]}))),
            ("401", unauthenticated()),
        ])}}),
    );
    paths.insert(
        "/api/auth/users".into(),
        json!({
            "get": {"operationId": "listUsers", "tags": ["auth"], "responses": responses(&[
                ("200", ok("users from polyport.toml and stored", list(&user))), ("401", unauthenticated()), ("403", denied()),
            ])},
            "post": {"operationId": "createUser", "tags": ["auth"],
                "requestBody": {"required": true, "content": json_content(json!({"type": "object", "properties": {
                    "name": name, "password": {"type": "string", "minLength": 8}, "role": role,
                }, "required": ["name", "password"], "additionalProperties": false}))},
                "responses": responses(&[
                    ("201", ok("created", user.clone())), ("400", problem("invalid")), ("401", unauthenticated()),
                    ("403", denied()), ("409", problem("exists")), ("413", problem("body too large")),
                    ("415", problem("not JSON")), ("422", problem("invalid name or password")),
                ])},
        }),
    );
    paths.insert(
        "/api/auth/users/{name}".into(),
        json!({
            "parameters": [name_param],
            "get": {"operationId": "getUser", "tags": ["auth"], "responses": responses(&[
                ("200", ok("the user", user.clone())), ("401", unauthenticated()), ("403", denied()), ("404", problem("no such user")),
            ])},
            "patch": {"operationId": "updateUser", "tags": ["auth"],
                "requestBody": {"required": true, "content": json_content(json!({"type": "object", "properties": {
                    "password": {"type": "string", "minLength": 8}, "role": role,
                }, "additionalProperties": false}))},
                "responses": responses(&[
                    ("200", ok("updated", user)), ("400", problem("invalid")), ("401", unauthenticated()), ("403", denied()),
                    ("404", problem("no such user")), ("409", problem("defined in polyport.toml")), ("413", problem("body too large")),
                    ("415", problem("not JSON")), ("422", problem("invalid password")),
                ])},
            "delete": {"operationId": "deleteUser", "tags": ["auth"], "responses": responses(&[
                ("204", json!({"description": "removed"})), ("401", unauthenticated()), ("403", denied()),
                ("404", problem("no such user")), ("409", problem("defined in polyport.toml")),
            ])},
        }),
    );
    paths.insert(
        "/api/auth/keys".into(),
        json!({
            "get": {"operationId": "listApiKeys", "tags": ["auth"], "responses": responses(&[
                ("200", ok("keys, never their secrets", list(&key))), ("401", unauthenticated()), ("403", denied()),
            ])},
            "post": {"operationId": "createApiKey", "tags": ["auth"],
                "requestBody": {"required": true, "content": json_content(json!({"type": "object", "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 200}, "role": role, "scopes": scopes,
                    "user": {"type": ["string", "null"]}, "expires_in": {"type": ["integer", "null"], "minimum": 0},
                }, "required": ["name"], "additionalProperties": false}))},
                "responses": responses(&[
                    ("201", ok("the key, shown this once", key)), ("400", problem("invalid")), ("401", unauthenticated()),
                    ("403", denied()), ("413", problem("body too large")), ("415", problem("not JSON")), ("422", problem("invalid")),
                ])},
        }),
    );
    paths.insert(
        "/api/auth/keys/{id}".into(),
        json!({"delete": {"operationId": "revokeApiKey", "tags": ["auth"],
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string"}}],
            "responses": responses(&[
                ("204", json!({"description": "revoked"})), ("401", unauthenticated()), ("403", denied()), ("404", problem("no such key")),
            ])}}),
    );
}
