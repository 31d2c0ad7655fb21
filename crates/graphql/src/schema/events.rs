//! Live data: the `events` (topics) and `recordChanged` subscriptions and the `Event`
//! and `RecordChange` types they deliver.

use async_graphql::Value;
use async_graphql::dynamic::{
    Field, FieldFuture, FieldValue, InputValue, Object, ResolverContext, Subscription,
    SubscriptionField, SubscriptionFieldFuture, TypeRef,
};
use futures::StreamExt;
use polyport_core::record::format_time;
use polyport_core::{EventRef, Hub, Item, Notice, RecordSelector, SubscribeRequest, TopicFilter};

use super::{actx, gql_err, json_value, opt_filter, opt_id, opt_u64};
use crate::shared::{ResumeAfter, SeqCell};

/// An event or an in-band notice, as the `Event` type.
enum Ev {
    Event(EventRef),
    Notice(Notice),
}

pub(super) fn event_type() -> Object {
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
            Ev::Event(e) => data(e),
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

/// `data` as the event's CloudEvent has it (the parsed JSON, else the text, else none),
/// without building the rest of the CloudEvent for every subscriber.
fn data(e: &polyport_core::Event) -> Option<Value> {
    match e.json_payload() {
        Some(v) => Some(json_value(v)),
        None => e.text_payload().map(Value::from),
    }
}

pub(super) fn record_change_type() -> Object {
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

pub(super) fn subscription(hub: &Hub) -> Subscription {
    Subscription::new("Subscription")
        .field(events_field(hub))
        .field(record_changed_field(hub))
}

/// `events(topic:, since:)`: every event on matching topics, notices included.
fn events_field(hub: &Hub) -> SubscriptionField {
    let h = hub.clone();
    SubscriptionField::new("events", TypeRef::named_nn("Event"), move |ctx| {
        let h = h.clone();
        SubscriptionFieldFuture::new(async move {
            let topic = ctx.args.try_get("topic")?.string()?.to_string();
            let filter = TopicFilter::new(&topic).map_err(|e| gql_err(e.into()))?;
            let cell = ctx.data_opt::<SeqCell>().cloned();
            let req = SubscribeRequest {
                filters: vec![filter],
                since: since(&ctx)?,
                strict: true,
                ..SubscribeRequest::default()
            };
            let sub = h.subscribe(&actx(&ctx)?, req).await.map_err(gql_err)?;
            Ok(item_stream(sub).map(move |r| {
                r.map(|it| match it {
                    Item::Event(d) => {
                        mark(&cell, d.event.seq);
                        FieldValue::owned_any(Ev::Event(d.event))
                    }
                    Item::Notice(n) => {
                        mark(&cell, None);
                        FieldValue::owned_any(Ev::Notice(n))
                    }
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
    )
}

/// `recordChanged(collection:, id:, filter:, since:)`: record changes only; notices
/// are dropped because `RecordChange` has no shape for them.
fn record_changed_field(hub: &Hub) -> SubscriptionField {
    let h = hub.clone();
    SubscriptionField::new(
        "recordChanged",
        TypeRef::named_nn("RecordChange"),
        move |ctx| {
            let h = h.clone();
            SubscriptionFieldFuture::new(async move {
                let collection = ctx.args.try_get("collection")?.string()?.to_string();
                let id = opt_id(&ctx, "id");
                let filter = opt_filter(&ctx)?;
                let cell = ctx.data_opt::<SeqCell>().cloned();
                let req = SubscribeRequest {
                    records: Some(RecordSelector {
                        collection,
                        id,
                        filter,
                    }),
                    since: since(&ctx)?,
                    strict: true,
                    ..SubscribeRequest::default()
                };
                let sub = h.subscribe(&actx(&ctx)?, req).await.map_err(gql_err)?;
                Ok(item_stream(sub).filter_map(move |r| {
                    let cell = cell.clone();
                    async move {
                        match r {
                            Ok(Item::Event(d)) => {
                                mark(&cell, d.event.seq);
                                Some(Ok(FieldValue::owned_any(d.event)))
                            }
                            Ok(Item::Notice(_)) => None,
                            Err(e) => Some(Err(e)),
                        }
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
    .argument(InputValue::new("since", TypeRef::named("Long")))
}

/// `since`, or where a subscriber that left a shared execution resumes.
fn since(ctx: &ResolverContext<'_>) -> async_graphql::Result<Option<u64>> {
    Ok(opt_u64(ctx, "since")?.or_else(|| ctx.data_opt::<ResumeAfter>().map(|r| r.0)))
}

/// Tells a shared execution the sequence behind the response being made.
fn mark(cell: &Option<SeqCell>, seq: Option<u64>) {
    if let Some(c) = cell {
        c.mark(seq);
    }
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

#[cfg(test)]
mod tests {
    use axum::body::Bytes;
    use polyport_core::{Event, Origin, Topic};

    #[test]
    fn data_is_the_cloudevents_data() {
        for (ct, payload) in [
            (
                Some("application/json"),
                &br#"{"t": 21.5, "ok": [true]}"#[..],
            ),
            (Some("text/plain"), b"hello"),
            (None, b"no type"),
            (Some("application/octet-stream"), b"\x00\x01"),
            (Some("application/json"), b"not json"),
        ] {
            let e = Event::new(
                Some(1),
                "01J".into(),
                Topic::new("a/b").unwrap(),
                "t".into(),
                Default::default(),
                ct.map(String::from),
                Vec::new(),
                Bytes::from_static(payload),
                Origin("http"),
            );
            let want = e.to_cloudevent().get("data").map(super::json_value);
            assert_eq!(super::data(&e), want, "{ct:?} {payload:?}");
        }
    }
}
