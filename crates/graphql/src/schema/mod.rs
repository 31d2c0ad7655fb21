//! Builds the dynamic schema from the collection map: one object type per collection,
//! Relay connections for lists, typed inputs for mutations, and the shared subscription
//! fields. Resolvers call the Hub; relations go through the batched loaders.
//!
//! This file assembles the schema and holds the argument and error helpers every
//! resolver shares; each noun's types and fields live in their own file.

mod events;
mod mutations;
mod queries;
mod records;
mod webhooks;

use async_graphql::dynamic::{InputObject, Object, ResolverContext, Scalar, Schema, SchemaError};
use async_graphql::{ErrorExtensions, Value};
use polyport_core::query::Filter;
use polyport_core::schema::CollectionMap;
use polyport_core::{AuthContext, Hub, HubError};

use crate::GraphqlConfig;
use crate::names::assign;

/// The caller of this request or connection (the HTTP gate's, or `connection_init`'s).
fn actx(ctx: &async_graphql::Context<'_>) -> async_graphql::Result<AuthContext> {
    ctx.data::<AuthContext>().cloned().map_err(|_| {
        gql_err(HubError::Unauthenticated(
            "no caller: sign in to use this GraphQL endpoint".into(),
        ))
    })
}

/// The single place a [`HubError`] becomes a GraphQL error: `extensions.code` is the
/// same stable code every face uses, plus `fieldErrors` for validation.
pub(crate) fn gql_err(e: HubError) -> async_graphql::Error {
    let code = e.code();
    let fields: Vec<serde_json::Value> = e
        .field_errors()
        .iter()
        .map(|f| serde_json::json!({"field": f.field, "rule": f.rule, "message": f.message}))
        .collect();
    async_graphql::Error::new(e.to_string()).extend_with(|_, ext| {
        ext.set("code", code);
        if !fields.is_empty()
            && let Ok(v) = Value::from_json(serde_json::Value::Array(fields.clone()))
        {
            ext.set("fieldErrors", v);
        }
    })
}

fn bad(msg: impl Into<String>) -> async_graphql::Error {
    gql_err(HubError::InvalidRequest(msg.into()))
}

/// A JSON value as GraphQL's, built directly: `Value::from_json` wants an owned value
/// (a deep copy first) and goes through serde, which for a subscription's `record` was
/// paid per subscriber per event.
fn json_value(v: &serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Boolean(*b),
        serde_json::Value::Number(n) => Value::Number(n.clone()),
        serde_json::Value::String(s) => Value::String(s.clone()),
        serde_json::Value::Array(a) => Value::List(a.iter().map(json_value).collect()),
        serde_json::Value::Object(o) => Value::Object(
            o.iter()
                .map(|(k, v)| (async_graphql::Name::new(k), json_value(v)))
                .collect(),
        ),
    }
}

/// An id argument: GraphQL `ID` accepts `123` and `"123"` alike.
fn id_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn arg_id(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<String> {
    let v = ctx.args.try_get(name)?;
    id_of(v.as_value()).ok_or_else(|| bad(format!("'{name}' must be an ID")))
}

/// An optional id argument; null and absent are the same.
fn opt_id(ctx: &ResolverContext<'_>, name: &str) -> Option<String> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => id_of(v.as_value()),
        _ => None,
    }
}

fn opt_u64(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Option<u64>> {
    match ctx.args.get(name) {
        // A negative number is the caller's mistake, not an internal error.
        Some(v) if !v.is_null() => v
            .u64()
            .map(Some)
            .map_err(|_| bad(format!("'{name}' must be a non-negative integer"))),
        _ => Ok(None),
    }
}

fn opt_str(ctx: &ResolverContext<'_>, name: &str) -> async_graphql::Result<Option<String>> {
    match ctx.args.get(name) {
        Some(v) if !v.is_null() => Ok(Some(v.string()?.to_string())),
        _ => Ok(None),
    }
}

/// The optional `filter` argument; blank means no filter.
fn opt_filter(ctx: &ResolverContext<'_>) -> async_graphql::Result<Option<Filter>> {
    match opt_str(ctx, "filter")? {
        Some(f) if !f.trim().is_empty() => {
            Ok(Some(Filter::parse(&f).map_err(|e| gql_err(e.into()))?))
        }
        _ => Ok(None),
    }
}

/// Builds the schema for the current collections.
pub(crate) fn build(
    hub: &Hub,
    colls: &CollectionMap,
    cfg: &GraphqlConfig,
) -> Result<Schema, SchemaError> {
    let names = assign(colls.keys().map(String::as_str));
    let mut query = Object::new("Query");
    let mut mutation = Object::new("Mutation");
    let mut types: Vec<Object> = Vec::new();
    let mut inputs: Vec<InputObject> = Vec::new();
    for (name, c) in colls.iter() {
        let Some(n) = names.get(name) else { continue };
        types.push(records::record_object(c, n, &names, colls));
        types.extend(queries::connection_types(n));
        inputs.extend(mutations::input_objects(c, n));
        query = queries::query_fields(hub, c, n, cfg.max_page_size, query);
        mutation = mutations::mutation_fields(hub, c, n, mutation);
    }
    query = query.field(queries::collections_field(colls));
    let (query, mutation) = webhooks::webhook_fields(hub, query, mutation);
    let mut b = Schema::build("Query", Some("Mutation"), Some("Subscription"))
        .register(Scalar::new("JSON").description("Any JSON value"))
        .register(Scalar::new("Long").description("A 64-bit integer, as a JSON number"))
        .register(Scalar::new("DateTime").description("RFC 3339 timestamp"))
        .register(queries::page_info_type())
        .register(events::event_type())
        .register(events::record_change_type())
        .register(webhooks::webhook_type())
        .register(events::subscription(hub))
        .register(query)
        .register(mutation)
        .data(hub.clone())
        .extension(crate::errors::ErrorShape)
        .limit_depth(cfg.max_depth)
        .limit_complexity(cfg.max_complexity);
    for t in types {
        b = b.register(t);
    }
    for i in inputs {
        b = b.register(i);
    }
    if !cfg.introspection {
        b = b.disable_introspection();
    }
    b.finish()
}

#[cfg(test)]
mod tests {
    #[test]
    fn json_values_convert_as_from_json_does() {
        let v = serde_json::json!({
            "s": "x", "n": 1, "f": 2.5, "big": 18446744073709551615u64, "neg": -3,
            "b": true, "z": null, "a": [1, "two", {"k": []}], "o": {"nested": {"deep": false}}
        });
        let direct = super::json_value(&v);
        assert_eq!(direct, async_graphql::Value::from_json(v.clone()).unwrap());
        assert_eq!(direct.into_json().unwrap(), v);
    }
}
