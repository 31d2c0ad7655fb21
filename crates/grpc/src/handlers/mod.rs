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

use futures::{Stream, StreamExt};
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::schema::Collection;
use polyport_core::{AuthContext, Hub, Item};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::Value;
use tonic::Status;

use crate::catalog::{Op, Route};
use crate::convert::{from_json, status, str_field, to_json};

/// A boxed response stream.
pub(crate) type MsgStream = Pin<Box<dyn Stream<Item = Result<DynamicMessage, Status>> + Send>>;

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
    pub(crate) async fn unary(
        &self,
        route: &Route,
        req: DynamicMessage,
    ) -> Result<DynamicMessage, Status> {
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
        from_json(&route.output, out)
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

/// A subscription as a stream of messages; ends after the first error.
fn map_items<F>(sub: polyport_core::Subscription, out: MessageDescriptor, render: F) -> MsgStream
where
    F: Fn(Item) -> Option<Value> + Send + 'static,
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
            Ok(item) => render(item).map(|v| from_json(&out, v)),
            Err(s) => Some(Err(s)),
        };
        async move { res }
    });
    Box::pin(s)
}
