//! Webhook endpoint management: the `WebhookEndpoint` type, the `webhookEndpoints`
//! query and the create/update/delete mutations.

use std::sync::Arc;

use async_graphql::Value;
use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputValue, Object, ResolverContext, TypeRef,
};
use polyport_core::Hub;
use polyport_core::record::format_time;
use polyport_core::webhook::Endpoint;

use super::{actx, arg_id, bad, gql_err};

pub(super) fn webhook_type() -> Object {
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

pub(super) fn webhook_fields(hub: &Hub, query: Object, mutation: Object) -> (Object, Object) {
    let h = hub.clone();
    let query = query.field(Field::new(
        "webhookEndpoints",
        TypeRef::named_nn_list_nn("WebhookEndpoint"),
        move |ctx| {
            let h = h.clone();
            FieldFuture::new(async move {
                let eps = h.endpoints(&actx(&ctx)?).map_err(gql_err)?;
                Ok(Some(FieldValue::list(
                    eps.iter()
                        .map(|e| FieldValue::owned_any(Arc::new(e.redacted())))
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
            let ep = h.create_endpoint(&actx(&ctx)?, spec).await.map_err(gql_err)?;
            Ok(Some(FieldValue::owned_any(ep)))
        })
    })
    .argument(InputValue::new("input", TypeRef::named_nn("JSON")).description("{url, event_types, topics, headers, enabled, description, rate_limit, retry_schedule, concurrency, secret}"));
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
                    .update_endpoint(&actx(&ctx)?, &id, patch)
                    .await
                    .map_err(gql_err)?;
                Ok(Some(FieldValue::owned_any(Arc::new(ep.redacted()))))
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
                h.delete_endpoint(&actx(&ctx)?, &id)
                    .await
                    .map_err(gql_err)?;
                Ok(Some(Value::from(true)))
            })
        },
    )
    .argument(InputValue::new("id", TypeRef::named_nn(TypeRef::ID)));
    (query, mutation.field(create).field(update).field(delete))
}
