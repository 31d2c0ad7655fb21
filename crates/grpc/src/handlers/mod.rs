//! What each method does, in terms of Hub calls. Requests and responses are handled in
//! their proto3 JSON form (see `convert.rs`), so the generic and the typed services share
//! this code and differ only in how a record is shaped.
//!
//! This file routes a call to its service's file and holds what they share.

mod records;
mod topics;
mod typed;
mod webhooks;

use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use futures::{Stream, StreamExt};
use polyport_core::event::RenderKey;
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::schema::Collection;
use polyport_core::{AuthContext, Event, Hub, Item, Notice};
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value;
use tonic::Status;

use crate::catalog::{Op, Route};
use crate::codec::Reply;
use crate::convert::{from_json, status, str_field, to_json};

/// A boxed response stream.
pub(crate) type MsgStream = Pin<Box<dyn Stream<Item = Result<Reply, Status>> + Send>>;

/// Method implementations over one Hub.
#[derive(Clone)]
pub(crate) struct Handlers {
    pub(crate) hub: Hub,
    pub(crate) max_page: usize,
    /// The caller of the call being served (each call gets its own copy).
    pub(crate) ctx: AuthContext,
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Handlers {
    fn collection(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.hub.collection(&self.ctx, name).map_err(status)
    }

    fn list_query(&self, v: &Value) -> Result<ListQuery, Status> {
        let size = v.get("page_size").and_then(Value::as_i64).unwrap_or(0);
        if size < 0 || size as usize > self.max_page {
            return Err(Status::invalid_argument(format!(
                "page_size must be between 1 and {}",
                self.max_page
            )));
        }
        Ok(ListQuery {
            filter: match str_field(v, "filter") {
                "" => None,
                f => Some(Filter::parse(f).map_err(|e| status(e.into()))?),
            },
            sort: match str_field(v, "sort") {
                "" => Vec::new(),
                s => parse_sort(s).map_err(|e| status(e.into()))?,
            },
            limit: if size == 0 { 50 } else { size as usize },
            cursor: nonempty(str_field(v, "page_token")),
            count: v.get("count").and_then(Value::as_bool).unwrap_or(false),
        })
    }

    /// Unary methods.
    pub(crate) async fn unary(&self, route: &Route, req: DynamicMessage) -> Result<Reply, Status> {
        let v = to_json(&req)?;
        let out = match &route.op {
            Op::RecordsGet => self.records_get(&v).await?,
            Op::RecordsList => self.records_list(&v).await?,
            Op::RecordsCreate => self.records_create(&v).await?,
            Op::RecordsUpdate => self.records_update(&v).await?,
            Op::RecordsDelete => self.records_delete(&v).await?,
            Op::TopicsPublish => self.topics_publish(&v).await?,
            Op::WebhooksList => self.webhooks_list()?,
            Op::WebhooksCreate => self.webhooks_create(&v).await?,
            Op::WebhooksUpdate => self.webhooks_update(&v).await?,
            Op::WebhooksDelete => self.webhooks_delete(&v).await?,
            Op::Get(c) => self.typed_get(c, &v).await?,
            Op::List(c) => self.typed_list(c, &v).await?,
            Op::Create(c) => self.typed_create(c, v).await?,
            Op::Update(c) => self.typed_update(c, v).await?,
            Op::Delete(c) => self.typed_delete(c, &v).await?,
            Op::RecordsWatch | Op::TopicsSubscribe | Op::TopicsChat | Op::Watch(_) => {
                return Err(Status::unimplemented("streaming method called as unary"));
            }
        };
        from_json(&route.output, out).map(Reply::Message)
    }

    /// Server-streaming methods: Watch and Subscribe.
    pub(crate) async fn server_stream(
        &self,
        route: &Route,
        req: DynamicMessage,
    ) -> Result<MsgStream, Status> {
        let v = to_json(&req)?;
        let out = route.output.clone();
        match &route.op {
            Op::RecordsWatch => self.records_watch(&v, out).await,
            Op::Watch(c) => self.typed_watch(c, &v, out).await,
            Op::TopicsSubscribe => self.topics_subscribe(&v, out).await,
            _ => Err(Status::unimplemented("unary method called as streaming")),
        }
    }
}

/// Which message a stream makes of an event. Streams of one shape send an event as the
/// same bytes, so it is encoded once per event and shared, as SSE frames are: 200
/// watchers of a collection otherwise turned each write into a protobuf message 200
/// times, most of the CPU such a fanout spent (`polyport bench grpc`).
#[derive(Clone, Copy)]
pub(super) struct Shape {
    /// The events' cache slot for this kind of stream.
    pub(super) key: &'static RenderKey,
    /// Which variant of the kind, when messages differ within it: a typed watch's
    /// collection definition (the address of its `Arc`, which the stream holds, so no
    /// live stream of another definition has it); 0 for the fixed messages.
    pub(super) id: u64,
}

/// A subscription as a stream of messages; ends after the first error. `event` renders an
/// event (`None`: not sent), `notice` an in-band notice.
fn map_items<F, N>(
    sub: polyport_core::Subscription,
    out: MessageDescriptor,
    shape: Shape,
    event: F,
    notice: N,
) -> MsgStream
where
    F: Fn(&Event) -> Option<Value> + Send + 'static,
    N: Fn(&Notice) -> Option<Value> + Send + 'static,
{
    let s = futures::stream::unfold(Some(sub), |state| async move {
        let mut sub = state?;
        match sub.next().await {
            Some(Ok(item)) => Some((Ok(item), Some(sub))),
            Some(Err(e)) => Some((Err(status(e)), None)),
            None => None,
        }
    })
    .filter_map(move |r| {
        let res = match r {
            Ok(Item::Event(d)) => encoded(&d.event, shape, &out, &event).transpose(),
            Ok(Item::Notice(n)) => notice(&n).map(|v| from_json(&out, v).map(Reply::Message)),
            Err(s) => Some(Err(s)),
        };
        async move { res }
    });
    Box::pin(s)
}

/// `ev` as `shape`'s message, encoded by the first stream that sends it and cached on the
/// event, tagged with the shape's id; a stream of another id (a watch opened across a
/// change of its collection) encodes its own.
fn encoded(
    ev: &Event,
    shape: Shape,
    out: &MessageDescriptor,
    render: &impl Fn(&Event) -> Option<Value>,
) -> Result<Option<Reply>, Status> {
    let build = |e: &Event| render(e).map(|v| from_json(out, v)).transpose();
    let tag = shape.id.to_be_bytes();
    let cached = ev.rendered_as(shape.key, |e| {
        let mut b = BytesMut::with_capacity(256);
        b.put_slice(&tag);
        match build(e) {
            Ok(Some(m)) => {
                b.put_u8(1);
                b.reserve(m.encoded_len());
                // Cannot fail: the buffer was given room for the whole message.
                let _ = m.encode(&mut b);
            }
            Ok(None) => b.put_u8(0),
            // Not cached: each stream meets the error itself (it ends the stream).
            Err(_) => b.put_u8(2),
        }
        b.freeze()
    });
    match (cached.get(..8) == Some(&tag[..]), cached.get(8)) {
        (true, Some(0)) => Ok(None),
        (true, Some(1)) => Ok(Some(Reply::Encoded(cached.slice(9..)))),
        _ => Ok(build(ev)?.map(Reply::Message)),
    }
}
