//! Read queries: the single-record and list fields of each collection, the Relay
//! connection types a list returns, and the `collections` field.

use async_graphql::Value;
use async_graphql::dynamic::{Field, FieldFuture, FieldValue, InputValue, Object, TypeRef};
use polyport_core::query::{ListQuery, parse_sort};
use polyport_core::schema::{Collection, CollectionMap};
use polyport_core::{Hub, HubError, Page, Record};

use super::{actx, arg_id, bad, gql_err, opt_filter, opt_str, opt_u64};
use crate::names::Names;

/// The page behind a connection, with its collection.
struct Connection {
    page: Page,
}

struct Edge {
    cursor: String,
    record: Record,
}

pub(super) fn connection_types(names: &Names) -> [Object; 2] {
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

pub(super) fn page_info_type() -> Object {
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

pub(super) fn query_fields(
    hub: &Hub,
    c: &Collection,
    names: &Names,
    max_page: usize,
    query: Object,
) -> Object {
    let coll = c.name().to_string();
    query
        .field(one_field(hub, &coll, names))
        .field(list_field(hub, &coll, names, max_page))
}

/// `user(id:)`: the record, or null when there is none.
fn one_field(hub: &Hub, coll: &str, names: &Names) -> Field {
    let (h, cn) = (hub.clone(), coll.to_string());
    Field::new(&names.one, TypeRef::named(&names.ty), move |ctx| {
        let (h, cn) = (h.clone(), cn.clone());
        FieldFuture::new(async move {
            let id = arg_id(&ctx, "id")?;
            match h.get_record(&actx(&ctx)?, &cn, &id).await {
                Ok(r) => Ok(Some(FieldValue::owned_any(
                    std::sync::Arc::unwrap_or_clone(r),
                ))),
                Err(HubError::RecordNotFound { .. }) => Ok(None),
                Err(e) => Err(gql_err(e)),
            }
        })
    })
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)))
}

/// `userList(filter:, sort:, first:, after:)`: one page as a connection; the total is
/// counted only when the query asks for `totalCount`.
fn list_field(hub: &Hub, coll: &str, names: &Names, max_page: usize) -> Field {
    let (h, cn) = (hub.clone(), coll.to_string());
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
                let filter = opt_filter(&ctx)?;
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
                let page = h
                    .list_records(&actx(&ctx)?, &cn, &q)
                    .await
                    .map_err(gql_err)?;
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
    .argument(InputValue::new("after", TypeRef::named(TypeRef::STRING)))
}

pub(super) fn collections_field(colls: &CollectionMap) -> Field {
    let list: Vec<Value> = colls.keys().map(|k| Value::from(k.clone())).collect();
    Field::new(
        "collections",
        TypeRef::named_nn_list_nn(TypeRef::STRING),
        move |_| FieldFuture::from_value(Some(Value::List(list.clone()))),
    )
    .description("names of all collections")
}
