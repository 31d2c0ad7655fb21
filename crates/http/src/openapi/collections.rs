//! Collections and their records: the definition endpoints, and per collection its
//! record schemas and CRUD paths, typed from the schema the server enforces.

use polyport_core::schema::{Collection, FieldType};
use serde_json::{Map, Value, json};

use super::{id_param, if_match, json_content, ok, problem, record_ok, responses};

/// `/api/collections` and `/api/collections/{name}`, with their schemas.
pub(super) fn meta_paths(paths: &mut Map<String, Value>, schemas: &mut Map<String, Value>) {
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
    let rule =
        |what: &str| json!({"type": ["string", "null"], "maxLength": 4096, "description": what});
    schemas.insert(
        "Rules".into(),
        json!({
            "type": "object",
            "description": "filter expressions with @auth.id, @auth.role, @auth.claims.* and @request.body.*; missing, null or empty: admins only; \"true\": everyone",
            "properties": {
                "list": rule("which records a list returns"),
                "view": rule("which records can be read, and whose changes reach subscribers"),
                "create": rule("which new records may be created"),
                "update": rule("which records may be changed"),
                "delete": rule("which records may be deleted"),
            },
            "additionalProperties": false,
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
                "rules": {"$ref": "#/components/schemas/Rules"},
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
                "rules": {"$ref": "#/components/schemas/Rules"},
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

/// A collection's record schemas: the record as returned, and its create, replace and
/// patch bodies.
fn record_schemas(c: &Collection, schemas: &mut Map<String, Value>) {
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
}

/// A collection's paths and schemas.
pub(super) fn collection_paths(
    c: &Collection,
    paths: &mut Map<String, Value>,
    schemas: &mut Map<String, Value>,
    max_page: usize,
) {
    record_schemas(c, schemas);
    let name = c.name();
    let t = type_name(name);
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
    item_paths(name, &t, paths, rec, &common_write);
}

/// `/api/collections/{name}/records/{id}`: get, replace, patch, delete.
fn item_paths(
    name: &str,
    t: &str,
    paths: &mut Map<String, Value>,
    rec: Value,
    common_write: &[(&str, Value)],
) {
    let body = |schema: &str| {
        json!({"required": true, "content": {
            "application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}
        }})
    };
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
