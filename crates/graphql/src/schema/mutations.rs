//! Writes: each collection's create/update/delete mutations and the typed input
//! objects they take (declared collections) or the `JSON` document (schemaless ones).

use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputObject, InputValue, Object, TypeRef,
};
use polyport_core::Hub;
use polyport_core::schema::{Collection, FieldType};
use serde_json::Map;

use super::records::scalar_type;
use super::{actx, arg_id, bad, gql_err, id_of, json_value, opt_id, opt_u64};
use crate::names::Names;

/// Input type of a field (relations take ids).
fn input_type(t: &FieldType, required: bool) -> TypeRef {
    let name = match t {
        FieldType::Relation { .. } => TypeRef::ID.to_string(),
        FieldType::Array { items } => {
            let inner = match &**items {
                FieldType::Relation { .. } => TypeRef::ID,
                FieldType::Text => TypeRef::STRING,
                FieldType::Number => TypeRef::FLOAT,
                FieldType::Integer => TypeRef::INT,
                FieldType::Bool => TypeRef::BOOLEAN,
                FieldType::Datetime => "DateTime",
                _ => {
                    return if required {
                        TypeRef::named_nn("JSON")
                    } else {
                        TypeRef::named("JSON")
                    };
                }
            };
            return if required {
                TypeRef::named_nn_list_nn(inner)
            } else {
                TypeRef::named_nn_list(inner)
            };
        }
        other => scalar_type(other).type_name().to_string(),
    };
    if required {
        TypeRef::named_nn(name)
    } else {
        TypeRef::named(name)
    }
}

pub(super) fn input_objects(c: &Collection, names: &Names) -> Vec<InputObject> {
    let Some(fields) = &c.spec.fields else {
        return Vec::new();
    };
    let mut input = InputObject::new(names.input()).field(
        InputValue::new("id", TypeRef::named(TypeRef::ID))
            .description("client-chosen id; generated when absent"),
    );
    let mut patch = InputObject::new(names.patch())
        .description("only the fields given change; null removes a field (JSON Merge Patch)");
    for f in fields {
        input = input.field(InputValue::new(
            &f.name,
            input_type(&f.ty, f.required && f.default.is_none()),
        ));
        patch = patch.field(InputValue::new(&f.name, input_type(&f.ty, false)));
    }
    if c.spec.additional_fields {
        input = input.field(
            InputValue::new("extra", TypeRef::named("JSON")).description("undeclared fields"),
        );
    }
    vec![input, patch]
}

/// Converts an input object argument to a JSON document.
fn input_doc(
    v: async_graphql::dynamic::ValueAccessor<'_>,
) -> async_graphql::Result<Map<String, serde_json::Value>> {
    let json = v
        .as_value()
        .clone()
        .into_json()
        .map_err(|e| bad(format!("invalid input: {e}")))?;
    match json {
        serde_json::Value::Object(mut m) => {
            if let Some(serde_json::Value::Object(extra)) = m.remove("extra") {
                m.extend(extra);
            }
            Ok(m)
        }
        _ => Err(bad("input must be an object")),
    }
}

pub(super) fn mutation_fields(hub: &Hub, c: &Collection, names: &Names, m: Object) -> Object {
    let coll = c.name().to_string();
    let typed = c.spec.fields.is_some();
    m.field(create_field(hub, &coll, names, typed))
        .field(update_field(hub, &coll, names, typed))
        .field(delete_field(hub, &coll, names))
}

/// `createUser(input:)` for a declared collection, `create…(id:, data:)` otherwise.
fn create_field(hub: &Hub, coll: &str, names: &Names, typed: bool) -> Field {
    let (h, cn) = (hub.clone(), coll.to_string());
    let create = Field::new(names.create(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let (id, data) = if typed {
                let mut doc = input_doc(ctx.args.try_get("input")?)?;
                let id = doc.remove("id").and_then(|v| id_of(&json_value(&v)));
                (id, doc)
            } else {
                let id = opt_id(&ctx, "id");
                (id, input_doc(ctx.args.try_get("data")?)?)
            };
            let r = h
                .create_record(&actx(&ctx)?, &cn, id, data)
                .await
                .map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(r)))
        })
    });
    if typed {
        create.argument(InputValue::new("input", TypeRef::named_nn(names.input())))
    } else {
        create
            .argument(InputValue::new("id", TypeRef::named(TypeRef::ID)))
            .argument(InputValue::new("data", TypeRef::named_nn("JSON")))
    }
}

/// A merge patch; the patch argument is `input` when typed, `data` otherwise.
fn update_field(hub: &Hub, coll: &str, names: &Names, typed: bool) -> Field {
    let (h, cn) = (hub.clone(), coll.to_string());
    let update = Field::new(names.update(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let id = arg_id(&ctx, "id")?;
            let patch = input_doc(ctx.args.try_get(if typed { "input" } else { "data" })?)?;
            let expected = opt_u64(&ctx, "expectedVersion")?;
            let r = h
                .patch_record(
                    &actx(&ctx)?,
                    &cn,
                    &id,
                    serde_json::Value::Object(patch),
                    expected,
                )
                .await
                .map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(r)))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .argument(
        InputValue::new("expectedVersion", TypeRef::named("Long"))
            .description("fail with code version_mismatch unless the record is at this version"),
    );
    if typed {
        update.argument(InputValue::new("input", TypeRef::named_nn(names.patch())))
    } else {
        update.argument(InputValue::new("data", TypeRef::named_nn("JSON")))
    }
}

fn delete_field(hub: &Hub, coll: &str, names: &Names) -> Field {
    let (h, cn) = (hub.clone(), coll.to_string());
    Field::new(names.delete(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let id = arg_id(&ctx, "id")?;
            let expected = opt_u64(&ctx, "expectedVersion")?;
            let r = h
                .delete_record(&actx(&ctx)?, &cn, &id, expected)
                .await
                .map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(r)))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new("expectedVersion", TypeRef::named("Long")))
}
