//! Builds the dynamic schema from the collection map: one object type per collection,
//! Relay connections for lists, typed inputs for mutations, and the shared subscription
//! fields. Resolvers call the Hub; relations go through the batched loaders.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_graphql::dataloader::DataLoader;
use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputObject, InputValue, Object, ResolverContext, Scalar,
    Schema, SchemaError, Subscription, SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use async_graphql::{ErrorExtensions, Value};
use futures::StreamExt;
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::record::format_time;
use polyport_core::schema::CollectionMap;
use polyport_core::schema::{Collection, FieldType};
use polyport_core::webhook::Endpoint;
use polyport_core::{
    AuthContext, EventRef, Hub, HubError, Item, Notice, Origin, Page, Record, RecordSelector,
    SubscribeRequest, TopicFilter,
};
use serde_json::Map;

use crate::GraphqlConfig;
use crate::loaders::{RecordLoader, ReverseLoader};
use crate::names::{Names, assign};

fn actx() -> AuthContext {
    AuthContext::anonymous(Origin("graphql"))
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

fn json_value(v: &serde_json::Value) -> Value {
    Value::from_json(v.clone()).unwrap_or(Value::Null)
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

fn parent_record<'a>(ctx: &'a ResolverContext<'_>) -> async_graphql::Result<&'a Record> {
    ctx.parent_value.try_downcast_ref::<Record>()
}

/// Output scalar (or scalar list) type of a non-relation field.
fn scalar_type(t: &FieldType) -> TypeRef {
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

fn record_object(
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
    o = o
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
        o = o.field(
            Field::new("data", TypeRef::named_nn("JSON"), |ctx| {
                FieldFuture::new(async move {
                    let r = parent_record(&ctx)?;
                    Ok(Some(json_value(&serde_json::Value::Object(r.data.clone()))))
                })
            })
            .description("the whole document"),
        );
    }
    let mut used: Vec<String> = vec![
        "id".into(),
        "collection".into(),
        "created_at".into(),
        "updated_at".into(),
        "version".into(),
        "data".into(),
    ];
    for f in c.fields() {
        let target =
            f.ty.relation_target()
                .and_then(|t| all.get(t).map(|n| (t, n)));
        match (&f.ty, target) {
            (FieldType::Relation { .. }, Some((tcoll, tnames))) => {
                let (name, tcoll) = (f.name.clone(), tcoll.to_string());
                o = o.field(Field::new(
                    &f.name,
                    TypeRef::named(&tnames.ty),
                    move |ctx| {
                        let (name, tcoll) = (name.clone(), tcoll.clone());
                        FieldFuture::new(async move {
                            let r = parent_record(&ctx)?;
                            let Some(id) = r.data.get(&name).and_then(|v| id_of(&json_value(v)))
                            else {
                                return Ok(None);
                            };
                            let loader = ctx.data::<DataLoader<RecordLoader>>()?;
                            let rec = loader
                                .load_one((tcoll, id))
                                .await
                                .map_err(|e| gql_err(clone_err(&e)))?;
                            Ok(rec.map(FieldValue::owned_any))
                        })
                    },
                ));
                o = o.field(Field::new(
                    format!("{}_id", f.name),
                    TypeRef::named(TypeRef::ID),
                    {
                        let name = f.name.clone();
                        move |ctx| {
                            let name = name.clone();
                            FieldFuture::new(async move {
                                let r = parent_record(&ctx)?;
                                Ok(r.data
                                    .get(&name)
                                    .and_then(|v| id_of(&json_value(v)))
                                    .map(Value::from))
                            })
                        }
                    },
                ));
                used.push(format!("{}_id", f.name));
            }
            (FieldType::Array { items }, Some((tcoll, tnames)))
                if matches!(**items, FieldType::Relation { .. }) =>
            {
                let (name, tcoll) = (f.name.clone(), tcoll.to_string());
                o = o.field(Field::new(
                    &f.name,
                    TypeRef::named_nn_list(&tnames.ty),
                    move |ctx| {
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
                    },
                ));
            }
            _ => {
                o = o.field(Field::new(
                    &f.name,
                    scalar_type(&f.ty),
                    data_field(f.name.clone()),
                ));
            }
        }
        used.push(f.name.clone());
    }
    // Reverse relations: `user.posts` lists the posts whose `author` is this user.
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
        let (bcoll, g) = (bname.clone(), gname.clone());
        o = o.field(
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
            )),
        );
    }
    o
}

fn clone_err(e: &Arc<HubError>) -> HubError {
    match &**e {
        HubError::CollectionNotFound(c) => HubError::CollectionNotFound(c.clone()),
        other => HubError::Storage(other.to_string()),
    }
}

/// The page behind a connection, with its collection.
struct Connection {
    page: Page,
}

struct Edge {
    cursor: String,
    record: Record,
}

fn connection_types(names: &Names) -> [Object; 2] {
    let conn = Object::new(names.connection())
        .field(Field::new(
            "edges",
            TypeRef::named_nn_list_nn(names.edge()),
            |ctx| {
                FieldFuture::new(async move {
                    let c = ctx.parent_value.try_downcast_ref::<Connection>()?;
                    let edges = c
                        .page
                        .items
                        .iter()
                        .zip(c.page.cursors.iter())
                        .map(|(r, cur)| {
                            FieldValue::owned_any(Edge {
                                cursor: cur.clone(),
                                record: r.clone(),
                            })
                        });
                    Ok(Some(FieldValue::list(edges.collect::<Vec<_>>())))
                })
            },
        ))
        .field(Field::new(
            "nodes",
            TypeRef::named_nn_list_nn(&names.ty),
            |ctx| {
                FieldFuture::new(async move {
                    let c = ctx.parent_value.try_downcast_ref::<Connection>()?;
                    Ok(Some(FieldValue::list(
                        c.page
                            .items
                            .iter()
                            .cloned()
                            .map(FieldValue::owned_any)
                            .collect::<Vec<_>>(),
                    )))
                })
            },
        ))
        .field(Field::new(
            "pageInfo",
            TypeRef::named_nn("PageInfo"),
            |ctx| {
                FieldFuture::new(async move {
                    let c = ctx.parent_value.try_downcast_ref::<Connection>()?;
                    Ok(Some(FieldValue::owned_any(PageInfo {
                        has_next: c.page.next_cursor.is_some(),
                        end_cursor: c.page.cursors.last().cloned(),
                    })))
                })
            },
        ))
        .field(Field::new("totalCount", TypeRef::named("Long"), |ctx| {
            FieldFuture::new(async move {
                let c = ctx.parent_value.try_downcast_ref::<Connection>()?;
                Ok(c.page.total.map(Value::from))
            })
        }));
    let edge = Object::new(names.edge())
        .field(Field::new(
            "cursor",
            TypeRef::named_nn(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(Value::from(
                        ctx.parent_value.try_downcast_ref::<Edge>()?.cursor.clone(),
                    )))
                })
            },
        ))
        .field(Field::new("node", TypeRef::named_nn(&names.ty), |ctx| {
            FieldFuture::new(async move {
                let e = ctx.parent_value.try_downcast_ref::<Edge>()?;
                Ok(Some(FieldValue::owned_any(e.record.clone())))
            })
        }));
    [conn, edge]
}

struct PageInfo {
    has_next: bool,
    end_cursor: Option<String>,
}

fn page_info_type() -> Object {
    Object::new("PageInfo")
        .field(Field::new(
            "hasNextPage",
            TypeRef::named_nn(TypeRef::BOOLEAN),
            |ctx| {
                FieldFuture::new(async move {
                    Ok(Some(Value::from(
                        ctx.parent_value.try_downcast_ref::<PageInfo>()?.has_next,
                    )))
                })
            },
        ))
        .field(Field::new(
            "endCursor",
            TypeRef::named(TypeRef::STRING),
            |ctx| {
                FieldFuture::new(async move {
                    let p = ctx.parent_value.try_downcast_ref::<PageInfo>()?;
                    Ok(p.end_cursor.clone().map(Value::from))
                })
            },
        ))
}

fn input_objects(c: &Collection, names: &Names) -> Vec<InputObject> {
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

fn query_fields(
    hub: &Hub,
    c: &Collection,
    names: &Names,
    max_page: usize,
    mut query: Object,
) -> Object {
    let coll = c.name().to_string();
    let (h, cn) = (hub.clone(), coll.clone());
    query = query.field(
        Field::new(&names.one, TypeRef::named(&names.ty), move |ctx| {
            let (h, cn) = (h.clone(), cn.clone());
            FieldFuture::new(async move {
                let id = arg_id(&ctx, "id")?;
                match h.get_record(&actx(), &cn, &id).await {
                    Ok(r) => Ok(Some(FieldValue::owned_any(r))),
                    Err(HubError::RecordNotFound { .. }) => Ok(None),
                    Err(e) => Err(gql_err(e)),
                }
            })
        })
        .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID))),
    );
    let (h, cn) = (hub.clone(), coll.clone());
    query.field(
        Field::new(
            names.list(),
            TypeRef::named_nn(names.connection()),
            move |ctx| {
                let (h, cn) = (h.clone(), cn.clone());
                FieldFuture::new(async move {
                    let first = opt_u64(&ctx, "first")?.unwrap_or(50) as usize;
                    if first > max_page || first == 0 {
                        return Err(bad(format!("'first' must be between 1 and {max_page}")));
                    }
                    let filter = match opt_str(&ctx, "filter")? {
                        Some(f) if !f.trim().is_empty() => {
                            Some(Filter::parse(&f).map_err(|e| gql_err(e.into()))?)
                        }
                        _ => None,
                    };
                    let sort = match opt_str(&ctx, "sort")? {
                        Some(s) if !s.trim().is_empty() => {
                            parse_sort(&s).map_err(|e| gql_err(e.into()))?
                        }
                        _ => Vec::new(),
                    };
                    let q = ListQuery {
                        filter,
                        sort,
                        limit: first,
                        cursor: opt_str(&ctx, "after")?,
                        count: ctx.look_ahead().field("totalCount").exists(),
                    };
                    let page = h.list_records(&actx(), &cn, &q).await.map_err(gql_err)?;
                    Ok(Some(FieldValue::owned_any(Connection { page })))
                })
            },
        )
        .argument(
            InputValue::new("filter", TypeRef::named(TypeRef::STRING))
                .description("e.g. title ~ \"rust\" && views > 10"),
        )
        .argument(
            InputValue::new("sort", TypeRef::named(TypeRef::STRING))
                .description("e.g. -created_at,title"),
        )
        .argument(InputValue::new("first", TypeRef::named(TypeRef::INT)))
        .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING))),
    )
}

fn mutation_fields(hub: &Hub, c: &Collection, names: &Names, mut m: Object) -> Object {
    let coll = c.name().to_string();
    let typed = c.spec.fields.is_some();
    let (h, cn) = (hub.clone(), coll.clone());
    let mut create = Field::new(names.create(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let (id, data) = if typed {
                let mut doc = input_doc(ctx.args.try_get("input")?)?;
                let id = doc.remove("id").and_then(|v| id_of(&json_value(&v)));
                (id, doc)
            } else {
                let id = match ctx.args.get("id") {
                    Some(v) if !v.is_null() => id_of(v.as_value()),
                    _ => None,
                };
                (id, input_doc(ctx.args.try_get("data")?)?)
            };
            let r = h
                .create_record(&actx(), &cn, id, data)
                .await
                .map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(r)))
        })
    });
    create = if typed {
        create.argument(InputValue::new("input", TypeRef::named_nn(names.input())))
    } else {
        create
            .argument(InputValue::new("id", TypeRef::named(TypeRef::ID)))
            .argument(InputValue::new("data", TypeRef::named_nn("JSON")))
    };
    let (h, cn) = (hub.clone(), coll.clone());
    let mut update = Field::new(names.update(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let id = arg_id(&ctx, "id")?;
            let patch = input_doc(ctx.args.try_get(if typed { "input" } else { "data" })?)?;
            let expected = opt_u64(&ctx, "expectedVersion")?;
            let r = h
                .patch_record(
                    &actx(),
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
    update = if typed {
        update.argument(InputValue::new("input", TypeRef::named_nn(names.patch())))
    } else {
        update.argument(InputValue::new("data", TypeRef::named_nn("JSON")))
    };
    let (h, cn) = (hub.clone(), coll);
    let delete = Field::new(names.delete(), TypeRef::named_nn(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let id = arg_id(&ctx, "id")?;
            let expected = opt_u64(&ctx, "expectedVersion")?;
            let r = h
                .delete_record(&actx(), &cn, &id, expected)
                .await
                .map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(r)))
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .argument(InputValue::new("expectedVersion", TypeRef::named("Long")));
    m = m.field(create).field(update).field(delete);
    m
}

/// An event or an in-band notice, as the `Event` type.
enum Ev {
    Event(EventRef),
    Notice(Notice),
}

fn event_type() -> Object {
    fn ev<'a>(ctx: &'a ResolverContext<'_>) -> async_graphql::Result<&'a Ev> {
        ctx.parent_value.try_downcast_ref::<Ev>()
    }
    let f = |name: &str, ty: TypeRef, get: fn(&Ev) -> Option<Value>| {
        Field::new(name, ty, move |ctx| {
            FieldFuture::new(async move { Ok(get(ev(&ctx)?)) })
        })
    };
    Object::new("Event")
        .description("A CloudEvent; notices (type polyport.notice.*) carry no sequence")
        .field(f("id", TypeRef::named_nn(TypeRef::STRING), |e| match e {
            Ev::Event(e) => Some(Value::from(e.id.clone())),
            Ev::Notice(_) => Some(Value::from("")),
        }))
        .field(f("sequence", TypeRef::named("Long"), |e| match e {
            Ev::Event(e) => e.seq.map(Value::from),
            Ev::Notice(_) => None,
        }))
        .field(f("type", TypeRef::named_nn(TypeRef::STRING), |e| match e {
            Ev::Event(e) => Some(Value::from(e.event_type.clone())),
            Ev::Notice(n) => Some(Value::from(n.event_type())),
        }))
        .field(f("subject", TypeRef::named(TypeRef::STRING), |e| match e {
            Ev::Event(e) => Some(Value::from(e.topic.as_str())),
            Ev::Notice(_) => None,
        }))
        .field(f("time", TypeRef::named("DateTime"), |e| match e {
            Ev::Event(e) => Some(Value::from(format_time(&e.time))),
            Ev::Notice(_) => None,
        }))
        .field(f(
            "datacontenttype",
            TypeRef::named(TypeRef::STRING),
            |e| match e {
                Ev::Event(e) => e.content_type.clone().map(Value::from),
                Ev::Notice(_) => Some(Value::from("application/json")),
            },
        ))
        .field(f("data", TypeRef::named("JSON"), |e| match e {
            Ev::Event(e) => {
                let ce = e.to_cloudevent();
                ce.get("data").map(json_value)
            }
            Ev::Notice(n) => serde_json::to_value(n).ok().as_ref().map(json_value),
        }))
        .field(f(
            "data_base64",
            TypeRef::named(TypeRef::STRING),
            |e| match e {
                Ev::Event(e) => e.to_cloudevent().get("data_base64").map(json_value),
                Ev::Notice(_) => None,
            },
        ))
        .field(
            f("attributes", TypeRef::named("JSON"), |e| match e {
                Ev::Event(e) => {
                    let mut m = serde_json::Map::new();
                    e.attrs.to_extensions(&mut m);
                    Some(json_value(&serde_json::Value::Object(m)))
                }
                Ev::Notice(_) => None,
            })
            .description("Message attributes by their CloudEvents extension names (replyto, correlationid, expirytime, …)"),
        )
        .field(
            f("headers", TypeRef::named("JSON"), |e| match e {
                Ev::Event(e) => Some(json_value(&serde_json::Value::Array(
                    e.headers
                        .iter()
                        .map(|(k, v)| serde_json::json!([k, v]))
                        .collect(),
                ))),
                Ev::Notice(_) => None,
            })
            .description("User headers as [name, value] pairs, in order (repeats kept)"),
        )
}

fn record_change_type() -> Object {
    fn payload<'a>(ctx: &'a ResolverContext<'_>) -> async_graphql::Result<&'a EventRef> {
        ctx.parent_value.try_downcast_ref::<EventRef>()
    }
    let f = |name: &str, ty: TypeRef, get: fn(&EventRef) -> Option<Value>| {
        Field::new(name, ty, move |ctx| {
            FieldFuture::new(async move { Ok(get(payload(&ctx)?)) })
        })
    };
    Object::new("RecordChange")
        .description("A record change, as delivered on collections/{collection}/{id}")
        .field(f("type", TypeRef::named_nn(TypeRef::STRING), |e| {
            Some(Value::from(e.event_type.clone()))
        }))
        .field(f("operation", TypeRef::named_nn(TypeRef::STRING), |e| {
            e.event_type.rsplit('.').next().map(Value::from)
        }))
        .field(f("sequence", TypeRef::named("Long"), |e| {
            e.seq.map(Value::from)
        }))
        .field(f("collection", TypeRef::named_nn(TypeRef::STRING), |e| {
            e.topic.segments().nth(1).map(Value::from)
        }))
        .field(f("id", TypeRef::named_nn(TypeRef::ID), |e| {
            e.topic.segments().nth(2).map(Value::from)
        }))
        .field(f("record", TypeRef::named("JSON"), |e| {
            e.json_payload()
                .and_then(|p| p.get("record"))
                .map(json_value)
        }))
        .field(f("previous", TypeRef::named("JSON"), |e| {
            e.json_payload()
                .and_then(|p| p.get("previous"))
                .map(json_value)
        }))
}

fn subscription(hub: &Hub) -> Subscription {
    let h = hub.clone();
    let events = SubscriptionField::new("events", TypeRef::named_nn("Event"), move |ctx| {
        let h = h.clone();
        SubscriptionFieldFuture::new(async move {
            let topic = ctx.args.try_get("topic")?.string()?.to_string();
            let filter = TopicFilter::new(&topic).map_err(|e| gql_err(e.into()))?;
            let req = SubscribeRequest {
                filters: vec![filter],
                since: opt_u64(&ctx, "since")?,
                strict: true,
                ..SubscribeRequest::default()
            };
            let sub = h.subscribe(&actx(), req).await.map_err(gql_err)?;
            Ok(item_stream(sub).map(|r| {
                r.map(|it| match it {
                    Item::Event(d) => FieldValue::owned_any(Ev::Event(d.event)),
                    Item::Notice(n) => FieldValue::owned_any(Ev::Notice(n)),
                })
            }))
        })
    })
    .argument(
        InputValue::new("topic", TypeRef::named_nn(TypeRef::STRING))
            .description("topic filter; + and # wildcards"),
    )
    .argument(
        InputValue::new("since", TypeRef::named("Long"))
            .description("replay events after this sequence first"),
    );
    let h = hub.clone();
    let changes = SubscriptionField::new(
        "recordChanged",
        TypeRef::named_nn("RecordChange"),
        move |ctx| {
            let h = h.clone();
            SubscriptionFieldFuture::new(async move {
                let collection = ctx.args.try_get("collection")?.string()?.to_string();
                let id = match ctx.args.get("id") {
                    Some(v) if !v.is_null() => id_of(v.as_value()),
                    _ => None,
                };
                let filter = match opt_str(&ctx, "filter")? {
                    Some(f) if !f.trim().is_empty() => {
                        Some(Filter::parse(&f).map_err(|e| gql_err(e.into()))?)
                    }
                    _ => None,
                };
                let req = SubscribeRequest {
                    records: Some(RecordSelector {
                        collection,
                        id,
                        filter,
                    }),
                    since: opt_u64(&ctx, "since")?,
                    strict: true,
                    ..SubscribeRequest::default()
                };
                let sub = h.subscribe(&actx(), req).await.map_err(gql_err)?;
                Ok(item_stream(sub).filter_map(|r| async move {
                    match r {
                        Ok(Item::Event(d)) => Some(Ok(FieldValue::owned_any(d.event))),
                        Ok(Item::Notice(_)) => None,
                        Err(e) => Some(Err(e)),
                    }
                }))
            })
        },
    )
    .argument(InputValue::new(
        "collection",
        TypeRef::named_nn(TypeRef::STRING),
    ))
    .argument(InputValue::new("id", TypeRef::named(TypeRef::ID)))
    .argument(
        InputValue::new("filter", TypeRef::named(TypeRef::STRING))
            .description("only changes whose record matches"),
    )
    .argument(InputValue::new("since", TypeRef::named("Long")));
    Subscription::new("Subscription")
        .field(events)
        .field(changes)
}

/// A subscription as a stream that ends after its first error.
fn item_stream(
    sub: polyport_core::Subscription,
) -> impl futures::Stream<Item = async_graphql::Result<Item>> + Send {
    futures::stream::unfold(Some(sub), |state| async move {
        let mut sub = state?;
        match sub.next().await {
            Some(Ok(item)) => Some((Ok(item), Some(sub))),
            Some(Err(e)) => Some((Err(gql_err(e)), None)),
            None => None,
        }
    })
}

fn webhook_type() -> Object {
    fn ep<'a>(ctx: &'a ResolverContext<'_>) -> async_graphql::Result<&'a Arc<Endpoint>> {
        ctx.parent_value.try_downcast_ref::<Arc<Endpoint>>()
    }
    let f = |name: &str, ty: TypeRef, get: fn(&Endpoint) -> Option<Value>| {
        Field::new(name, ty, move |ctx| {
            FieldFuture::new(async move { Ok(get(ep(&ctx)?)) })
        })
    };
    Object::new("WebhookEndpoint")
        .description("A registered webhook endpoint")
        .field(f("id", TypeRef::named_nn(TypeRef::ID), |e| {
            Some(Value::from(e.id.clone()))
        }))
        .field(f("url", TypeRef::named_nn(TypeRef::STRING), |e| {
            Some(Value::from(e.spec.url.clone()))
        }))
        .field(f(
            "event_types",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |e| {
                Some(Value::List(
                    e.spec
                        .event_types
                        .iter()
                        .map(|s| Value::from(s.clone()))
                        .collect(),
                ))
            },
        ))
        .field(f(
            "topics",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            |e| {
                Some(Value::List(
                    e.spec
                        .topics
                        .iter()
                        .map(|s| Value::from(s.clone()))
                        .collect(),
                ))
            },
        ))
        .field(f("enabled", TypeRef::named_nn(TypeRef::BOOLEAN), |e| {
            Some(Value::from(e.spec.enabled))
        }))
        .field(f("description", TypeRef::named(TypeRef::STRING), |e| {
            e.spec.description.clone().map(Value::from)
        }))
        .field(f("secret", TypeRef::named(TypeRef::STRING), |e| {
            e.spec.secret.clone().map(Value::from)
        }))
        .field(f("disabled_reason", TypeRef::named(TypeRef::STRING), |e| {
            e.disabled_reason.clone().map(Value::from)
        }))
        .field(f("created_at", TypeRef::named_nn("DateTime"), |e| {
            Some(Value::from(format_time(&e.created_at)))
        }))
        .field(f("updated_at", TypeRef::named_nn("DateTime"), |e| {
            Some(Value::from(format_time(&e.updated_at)))
        }))
}

fn webhook_fields(hub: &Hub, query: Object, mutation: Object) -> (Object, Object) {
    let h = hub.clone();
    let query = query.field(Field::new(
        "webhookEndpoints",
        TypeRef::named_nn_list_nn("WebhookEndpoint"),
        move |_| {
            let h = h.clone();
            FieldFuture::new(async move {
                let eps = h.endpoints(&actx()).map_err(gql_err)?;
                Ok(Some(FieldValue::list(
                    eps.iter()
                        .cloned()
                        .map(FieldValue::owned_any)
                        .collect::<Vec<_>>(),
                )))
            })
        },
    ));
    let h = hub.clone();
    let create = Field::new("createWebhookEndpoint", TypeRef::named_nn("WebhookEndpoint"), move |ctx| {
        let h = h.clone();
        FieldFuture::new(async move {
            let v = ctx.args.try_get("input")?.as_value().clone().into_json().map_err(|e| bad(e.to_string()))?;
            let spec: polyport_core::webhook::EndpointSpec =
                serde_json::from_value(v).map_err(|e| bad(format!("invalid endpoint: {e}")))?;
            let ep = h.create_endpoint(&actx(), spec).await.map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(ep)))
        })
    })
    .argument(InputValue::new("input", TypeRef::named_nn("JSON")).description("{url, event_types, topics, headers, enabled, description, rate_limit, retry_schedule, secret}"));
    let h = hub.clone();
    let update = Field::new(
        "updateWebhookEndpoint",
        TypeRef::named_nn("WebhookEndpoint"),
        move |ctx| {
            let h = h.clone();
            FieldFuture::new(async move {
                let id = arg_id(&ctx, "id")?;
                let patch = ctx
                    .args
                    .try_get("patch")?
                    .as_value()
                    .clone()
                    .into_json()
                    .map_err(|e| bad(e.to_string()))?;
                let ep = h
                    .update_endpoint(&actx(), &id, patch)
                    .await
                    .map_err(gql_err)?;
                Ok(Some(FieldValue::owned_any(ep)))
            })
        },
    )
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
    .argument(
        InputValue::new("patch", TypeRef::named_nn("JSON"))
            .description("JSON Merge Patch of the definition"),
    );
    let h = hub.clone();
    let delete = Field::new(
        "deleteWebhookEndpoint",
        TypeRef::named_nn(TypeRef::BOOLEAN),
        move |ctx| {
            let h = h.clone();
            FieldFuture::new(async move {
                let id = arg_id(&ctx, "id")?;
                h.delete_endpoint(&actx(), &id).await.map_err(gql_err)?;
                Ok(Some(Value::from(true)))
            })
        },
    )
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)));
    (query, mutation.field(create).field(update).field(delete))
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
        types.push(record_object(c, n, &names, colls));
        types.extend(connection_types(n));
        inputs.extend(input_objects(c, n));
        query = query_fields(hub, c, n, cfg.max_page_size, query);
        mutation = mutation_fields(hub, c, n, mutation);
    }
    let list: Vec<Value> = colls.keys().map(|k| Value::from(k.clone())).collect();
    query = query.field(
        Field::new(
            "collections",
            TypeRef::named_nn_list_nn(TypeRef::STRING),
            move |_| FieldFuture::from_value(Some(Value::List(list.clone()))),
        )
        .description("names of all collections"),
    );
    let (query, mutation) = webhook_fields(hub, query, mutation);
    let mut b = Schema::build("Query", Some("Mutation"), Some("Subscription"))
        .register(Scalar::new("JSON").description("Any JSON value"))
        .register(Scalar::new("Long").description("A 64-bit integer, as a JSON number"))
        .register(Scalar::new("DateTime").description("RFC 3339 timestamp"))
        .register(page_info_type())
        .register(event_type())
        .register(record_change_type())
        .register(webhook_type())
        .register(subscription(hub))
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
