//! Each collection's record object type: the metadata every record has, the declared
//! fields, and forward and reverse relations (resolved through the batched loaders).

use std::collections::BTreeMap;
use std::sync::Arc;

use async_graphql::Value;
use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::{Field, FieldFuture, FieldValue, Object, ResolverContext, TypeRef};
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, CollectionMap, FieldDef, FieldType};
use polyport_core::{HubError, Record};

use super::{gql_err, id_of, json_value};
use crate::loaders::{RecordLoader, ReverseLoader};
use crate::names::Names;

fn parent_record<'a>(ctx: &'a ResolverContext<'_>) -> async_graphql::Result<&'a Record> {
    ctx.parent_value.try_downcast_ref::<Record>()
}

fn clone_err(e: &Arc<HubError>) -> HubError {
    match &**e {
        HubError::CollectionNotFound(c) => HubError::CollectionNotFound(c.clone()),
        other => HubError::Storage(other.to_string()),
    }
}

/// Output scalar (or scalar list) type of a non-relation field.
pub(super) fn scalar_type(t: &FieldType) -> TypeRef {
    match t {
        FieldType::Text => TypeRef::named(TypeRef::STRING),
        FieldType::Number => TypeRef::named(TypeRef::FLOAT),
        FieldType::Integer => TypeRef::named(TypeRef::INT),
        FieldType::Bool => TypeRef::named(TypeRef::BOOLEAN),
        FieldType::Datetime => TypeRef::named("DateTime"),
        FieldType::Json | FieldType::Relation { .. } => TypeRef::named("JSON"),
        FieldType::Array { items } => match &**items {
            FieldType::Text => TypeRef::named_nn_list(TypeRef::STRING),
            FieldType::Number => TypeRef::named_nn_list(TypeRef::FLOAT),
            FieldType::Integer => TypeRef::named_nn_list(TypeRef::INT),
            FieldType::Bool => TypeRef::named_nn_list(TypeRef::BOOLEAN),
            FieldType::Datetime => TypeRef::named_nn_list("DateTime"),
            FieldType::Relation { .. } => TypeRef::named_nn_list(TypeRef::ID),
            _ => TypeRef::named("JSON"),
        },
    }
}

/// A record's flat document value for a field.
fn data_field(
    name: String,
) -> impl for<'a> Fn(ResolverContext<'a>) -> FieldFuture<'a> + Send + Sync {
    move |ctx| {
        let name = name.clone();
        FieldFuture::new(async move {
            let r = parent_record(&ctx)?;
            Ok(r.data.get(&name).map(|v| FieldValue::value(json_value(v))))
        })
    }
}

pub(super) fn record_object(
    c: &Collection,
    names: &Names,
    all: &BTreeMap<String, Names>,
    colls: &CollectionMap,
) -> Object {
    let mut o = Object::new(&names.ty).description(
        c.spec
            .description
            .clone()
            .unwrap_or_else(|| format!("A record of '{}'", c.name())),
    );
    o = meta_fields(o, c);
    let mut used: Vec<String> = vec![
        "id".into(),
        "collection".into(),
        "created_at".into(),
        "updated_at".into(),
        "version".into(),
        "data".into(),
    ];
    for f in c.fields() {
        o = declared_field(o, f, all, &mut used);
        used.push(f.name.clone());
    }
    reverse_relations(o, c, all, colls, &mut used)
}

/// The fields every record has, whatever its collection; `data` only where the
/// document may hold undeclared fields.
fn meta_fields(o: Object, c: &Collection) -> Object {
    let o = o
        .field(Field::new("id", TypeRef::named_nn(TypeRef::ID), |ctx| {
            FieldFuture::new(async move { Ok(Some(Value::from(parent_record(&ctx)?.id.clone()))) })
        }))
        .field(Field::new(
            "collection",
            TypeRef::named_nn(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(Value::from(parent_record(&ctx)?.collection.clone())))
                })
            },
        ))
        .field(Field::new(
            "created_at",
            TypeRef::named_nn("DateTime"),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(Value::from(format_time(
                        &parent_record(&ctx)?.created_at,
                    ))))
                })
            },
        ))
        .field(Field::new(
            "updated_at",
            TypeRef::named_nn("DateTime"),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(Value::from(format_time(
                        &parent_record(&ctx)?.updated_at,
                    ))))
                })
            },
        ))
        .field(Field::new("version", TypeRef::named_nn("Long"), |ctx| {
            FieldFuture::new(async move { Ok(Some(Value::from(parent_record(&ctx)?.version))) })
        }));
    if c.spec.fields.is_none() || c.spec.additional_fields {
        return o.field(
            Field::new("data", TypeRef::named_nn("JSON"), |ctx| {
                FieldFuture::new(async move {
                    let r = parent_record(&ctx)?;
                    Ok(Some(json_value(&serde_json::Value::Object(r.data.clone()))))
                })
            })
            .description("the whole document"),
        );
    }
    o
}

/// One declared field: a relation becomes the related record (plus `{name}_id`), a
/// relation list the related records, anything else its scalar value.
fn declared_field(
    o: Object,
    f: &FieldDef,
    all: &BTreeMap<String, Names>,
    used: &mut Vec<String>,
) -> Object {
    let target =
        f.ty.relation_target()
            .and_then(|t| all.get(t).map(|n| (t, n)));
    match (&f.ty, target) {
        (FieldType::Relation { .. }, Some((tcoll, tnames))) => {
            used.push(format!("{}_id", f.name));
            o.field(relation_field(&f.name, tcoll, tnames))
                .field(relation_id_field(&f.name))
        }
        (FieldType::Array { items }, Some((tcoll, tnames)))
            if matches!(**items, FieldType::Relation { .. }) =>
        {
            o.field(relation_list_field(&f.name, tcoll, tnames))
        }
        _ => o.field(Field::new(
            &f.name,
            scalar_type(&f.ty),
            data_field(f.name.clone()),
        )),
    }
}

fn relation_field(field: &str, tcoll: &str, tnames: &Names) -> Field {
    let (name, tcoll) = (field.to_string(), tcoll.to_string());
    Field::new(field, TypeRef::named(&tnames.ty), move |ctx| {
        let (name, tcoll) = (name.clone(), tcoll.clone());
        FieldFuture::new(async move {
            let r = parent_record(&ctx)?;
            let Some(id) = r.data.get(&name).and_then(|v| id_of(&json_value(v))) else {
                return Ok(None);
            };
            let loader = ctx.data::<DataLoader<RecordLoader>>()?;
            let rec = loader
                .load_one((tcoll, id))
                .await
                .map_err(|e| gql_err(clone_err(&e)))?;
            Ok(rec.map(FieldValue::owned_any))
        })
    })
}

fn relation_id_field(field: &str) -> Field {
    let name = field.to_string();
    Field::new(
        format!("{field}_id"),
        TypeRef::named(TypeRef::ID),
        move |ctx| {
            let name = name.clone();
            FieldFuture::new(async move {
                let r = parent_record(&ctx)?;
                Ok(r.data
                    .get(&name)
                    .and_then(|v| id_of(&json_value(v)))
                    .map(Value::from))
            })
        },
    )
}

fn relation_list_field(field: &str, tcoll: &str, tnames: &Names) -> Field {
    let (name, tcoll) = (field.to_string(), tcoll.to_string());
    Field::new(field, TypeRef::named_nn_list(&tnames.ty), move |ctx| {
        let (name, tcoll) = (name.clone(), tcoll.clone());
        FieldFuture::new(async move {
            let r = parent_record(&ctx)?;
            let ids: Vec<String> = r
                .data
                .get(&name)
                .and_then(|v| v.as_array())
                .map(|a| a.iter().filter_map(|x| id_of(&json_value(x))).collect())
                .unwrap_or_default();
            let loader = ctx.data::<DataLoader<RecordLoader>>()?;
            let found = loader
                .load_many(ids.iter().map(|id| (tcoll.clone(), id.clone())))
                .await
                .map_err(|e| gql_err(clone_err(&e)))?;
            let list: Vec<FieldValue<'_>> = ids
                .iter()
                .filter_map(|id| found.get(&(tcoll.clone(), id.clone())).cloned())
                .map(FieldValue::owned_any)
                .collect();
            Ok(Some(FieldValue::list(list)))
        })
    })
}

/// Reverse relations: `user.posts` lists the posts whose `author` is this user.
fn reverse_relations(
    mut o: Object,
    c: &Collection,
    all: &BTreeMap<String, Names>,
    colls: &CollectionMap,
    used: &mut Vec<String>,
) -> Object {
    let mut reverse: Vec<(String, String, &Names)> = Vec::new();
    for (bname, b) in colls.iter() {
        for g in b.fields() {
            if matches!(g.ty, FieldType::Relation { .. })
                && g.ty.relation_target() == Some(c.name())
                && let Some(bn) = all.get(bname)
            {
                reverse.push((bname.clone(), g.name.clone(), bn));
            }
        }
    }
    for (bname, gname, bn) in &reverse {
        let plain = reverse.iter().filter(|(x, _, _)| x == bname).count() == 1;
        let field_name = if plain && !used.contains(bname) {
            bname.clone()
        } else {
            format!("{bname}_by_{gname}")
        };
        if used.contains(&field_name) {
            continue;
        }
        used.push(field_name.clone());
        o = o.field(reverse_field(field_name, bname, gname, bn));
    }
    o
}

fn reverse_field(field_name: String, bname: &str, gname: &str, bn: &Names) -> Field {
    let (bcoll, g) = (bname.to_string(), gname.to_string());
    Field::new(field_name, TypeRef::named_nn_list_nn(&bn.ty), move |ctx| {
        let (bcoll, g) = (bcoll.clone(), g.clone());
        FieldFuture::new(async move {
            let r = parent_record(&ctx)?;
            let loader = ctx.data::<DataLoader<ReverseLoader>>()?;
            let list = loader
                .load_one((bcoll, g, r.id.clone()))
                .await
                .map_err(|e| gql_err(clone_err(&e)))?
                .unwrap_or_default();
            Ok(Some(FieldValue::list(
                list.into_iter().map(FieldValue::owned_any),
            )))
        })
    })
    .description(format!(
        "records of '{bname}' whose '{gname}' is this record"
    ))
}
