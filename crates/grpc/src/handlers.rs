//! What each method does, in terms of Hub calls. Requests and responses are handled in
//! their proto3 JSON form (see `convert.rs`), so the generic and the typed services share
//! this code and differ only in how a record is shaped.

use std::pin::Pin;
use std::sync::Arc;

use base64::Engine as _;
use futures::{Stream, StreamExt};
use polyport_core::query::{Filter, ListQuery, parse_sort};
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, FieldType};
use polyport_core::subscription::record_from_json;
use polyport_core::{
    AuthContext, Durability, EventDraft, EventRef, Hub, HubError, Item, Notice, Origin, Record,
    RecordSelector, SubscribeRequest, Topic, TopicFilter,
};
use prost_reflect::{DynamicMessage, MessageDescriptor};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use crate::catalog::{Op, Route};
use crate::convert::{from_json, status, str_field, to_json, u64_field};

/// A boxed response stream.
pub(crate) type MsgStream = Pin<Box<dyn Stream<Item = Result<DynamicMessage, Status>> + Send>>;

/// Method implementations over one Hub.
#[derive(Clone)]
pub(crate) struct Handlers {
    pub(crate) hub: Hub,
    pub(crate) max_page: usize,
}

fn ctx() -> AuthContext {
    AuthContext::anonymous(Origin("grpc"))
}

fn generic_record(r: &Record) -> Value {
    json!({
        "id": r.id,
        "collection": r.collection,
        "created_at": format_time(&r.created_at),
        "updated_at": format_time(&r.updated_at),
        "version": r.version,
        "data": r.data,
    })
}

/// A record shaped as its collection's typed message. Values that no longer fit the
/// declared type (written before a schema change) are left out rather than failing.
fn typed_record(c: &Collection, r: &Record) -> Value {
    let mut m = Map::new();
    m.insert("id".into(), r.id.clone().into());
    m.insert("created_at".into(), format_time(&r.created_at).into());
    m.insert("updated_at".into(), format_time(&r.updated_at).into());
    m.insert("version".into(), r.version.into());
    if c.spec.fields.is_none() {
        m.insert("data".into(), Value::Object(r.data.clone()));
        return Value::Object(m);
    }
    for f in c.fields() {
        let Some(v) = r.data.get(&f.name).filter(|v| !v.is_null()) else {
            continue;
        };
        let v = match (&f.ty, v) {
            (FieldType::Relation { .. }, Value::Number(n)) => Value::String(n.to_string()),
            (FieldType::Array { items }, Value::Array(a))
                if matches!(**items, FieldType::Relation { .. }) =>
            {
                Value::Array(
                    a.iter()
                        .map(|x| match x {
                            Value::Number(n) => Value::String(n.to_string()),
                            other => other.clone(),
                        })
                        .collect(),
                )
            }
            _ => v.clone(),
        };
        m.insert(f.name.clone(), v);
    }
    Value::Object(m)
}

/// The document carried by a typed create/update request.
fn typed_doc(c: &Collection, mut req: Value) -> Map<String, Value> {
    if let Some(o) = req.as_object_mut() {
        o.remove("id");
        o.remove("expected_version");
        if c.spec.fields.is_none() {
            return match o.remove("data") {
                Some(Value::Object(d)) => d,
                _ => Map::new(),
            };
        }
        return std::mem::take(o);
    }
    Map::new()
}

fn nonempty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

impl Handlers {
    fn collection(&self, name: &str) -> Result<Arc<Collection>, Status> {
        self.hub.collection(&ctx(), name).map_err(status)
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
            Op::RecordsGet => {
                let r = self
                    .hub
                    .get_record(&ctx(), str_field(&v, "collection"), str_field(&v, "id"))
                    .await
                    .map_err(status)?;
                generic_record(&r)
            }
            Op::RecordsList => {
                let q = self.list_query(&v)?;
                let page = self
                    .hub
                    .list_records(&ctx(), str_field(&v, "collection"), &q)
                    .await
                    .map_err(status)?;
                json!({
                    "records": page.items.iter().map(generic_record).collect::<Vec<_>>(),
                    "next_page_token": page.next_cursor.unwrap_or_default(),
                    "total": page.total,
                })
            }
            Op::RecordsCreate => {
                let data = v
                    .get("data")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let r = self
                    .hub
                    .create_record(
                        &ctx(),
                        str_field(&v, "collection"),
                        nonempty(str_field(&v, "id")),
                        data,
                    )
                    .await
                    .map_err(status)?;
                generic_record(&r)
            }
            Op::RecordsUpdate => {
                let (c, id) = (str_field(&v, "collection"), str_field(&v, "id"));
                let data = v
                    .get("data")
                    .and_then(Value::as_object)
                    .cloned()
                    .unwrap_or_default();
                let expected = u64_field(&v, "expected_version");
                let r = if v.get("replace").and_then(Value::as_bool).unwrap_or(false) {
                    self.hub
                        .replace_record(&ctx(), c, id, data, expected)
                        .await
                        .map(|x| x.0)
                } else {
                    self.hub
                        .patch_record(&ctx(), c, id, Value::Object(data), expected)
                        .await
                }
                .map_err(status)?;
                generic_record(&r)
            }
            Op::RecordsDelete => {
                let r = self
                    .hub
                    .delete_record(
                        &ctx(),
                        str_field(&v, "collection"),
                        str_field(&v, "id"),
                        u64_field(&v, "expected_version"),
                    )
                    .await
                    .map_err(status)?;
                generic_record(&r)
            }
            Op::TopicsPublish => {
                let draft = publish_draft(&v)?;
                let r = self.hub.publish(&ctx(), draft).await.map_err(status)?;
                json!({"id": r.event.id, "sequence": r.event.seq})
            }
            Op::WebhooksList => {
                let eps = self.hub.endpoints(&ctx()).map_err(status)?;
                json!({ "endpoints": *eps })
            }
            Op::WebhooksCreate => {
                let spec = endpoint_spec(v.get("endpoint").cloned().unwrap_or(Value::Null))?;
                json!(
                    self.hub
                        .create_endpoint(&ctx(), spec)
                        .await
                        .map_err(status)?
                )
            }
            Op::WebhooksUpdate => {
                let patch = v.get("patch").cloned().unwrap_or_else(|| json!({}));
                json!(
                    self.hub
                        .update_endpoint(&ctx(), str_field(&v, "id"), patch)
                        .await
                        .map_err(status)?
                )
            }
            Op::WebhooksDelete => {
                self.hub
                    .delete_endpoint(&ctx(), str_field(&v, "id"))
                    .await
                    .map_err(status)?;
                json!({})
            }
            Op::Get(c) => {
                let coll = self.collection(c)?;
                let r = self
                    .hub
                    .get_record(&ctx(), c, str_field(&v, "id"))
                    .await
                    .map_err(status)?;
                typed_record(&coll, &r)
            }
            Op::List(c) => {
                let coll = self.collection(c)?;
                let q = self.list_query(&v)?;
                let page = self.hub.list_records(&ctx(), c, &q).await.map_err(status)?;
                json!({
                    "records": page.items.iter().map(|r| typed_record(&coll, r)).collect::<Vec<_>>(),
                    "next_page_token": page.next_cursor.unwrap_or_default(),
                    "total": page.total,
                })
            }
            Op::Create(c) => {
                let coll = self.collection(c)?;
                let id = nonempty(str_field(&v, "id"));
                let r = self
                    .hub
                    .create_record(&ctx(), c, id, typed_doc(&coll, v))
                    .await
                    .map_err(status)?;
                typed_record(&coll, &r)
            }
            Op::Update(c) => {
                let coll = self.collection(c)?;
                let id = str_field(&v, "id").to_string();
                let expected = u64_field(&v, "expected_version");
                let patch = Value::Object(typed_doc(&coll, v));
                let r = self
                    .hub
                    .patch_record(&ctx(), c, &id, patch, expected)
                    .await
                    .map_err(status)?;
                typed_record(&coll, &r)
            }
            Op::Delete(c) => {
                let coll = self.collection(c)?;
                let r = self
                    .hub
                    .delete_record(
                        &ctx(),
                        c,
                        str_field(&v, "id"),
                        u64_field(&v, "expected_version"),
                    )
                    .await
                    .map_err(status)?;
                typed_record(&coll, &r)
            }
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
            Op::RecordsWatch => {
                let sub = self.watch(str_field(&v, "collection"), &v).await?;
                Ok(map_items(sub, out, |item| match item {
                    Item::Event(d) => change_json(&d.event, generic_record),
                    Item::Notice(_) => None,
                }))
            }
            Op::Watch(c) => {
                let coll = self.collection(c)?;
                let sub = self.watch(c, &v).await?;
                Ok(map_items(sub, out, move |item| match item {
                    Item::Event(d) => change_json(&d.event, |r| typed_record(&coll, r)),
                    Item::Notice(_) => None,
                }))
            }
            Op::TopicsSubscribe => {
                let sub = self
                    .hub
                    .subscribe(&ctx(), topic_request(&v)?)
                    .await
                    .map_err(status)?;
                Ok(map_items(sub, out, |item| Some(event_json(&item))))
            }
            _ => Err(Status::unimplemented("unary method called as streaming")),
        }
    }

    async fn watch(
        &self,
        collection: &str,
        v: &Value,
    ) -> Result<polyport_core::Subscription, Status> {
        let filter = match str_field(v, "filter") {
            "" => None,
            f => Some(Filter::parse(f).map_err(|e| status(e.into()))?),
        };
        let req = SubscribeRequest {
            records: Some(RecordSelector {
                collection: collection.to_string(),
                id: nonempty(str_field(v, "id")),
                filter,
            }),
            since: u64_field(v, "since"),
            strict: true,
            ..SubscribeRequest::default()
        };
        // The collection must exist, so a typo is an error rather than a silent stream.
        self.collection(collection)?;
        self.hub.subscribe(&ctx(), req).await.map_err(status)
    }

    /// `Topics.Chat`: subscribe and publish actions in, every matching event out. The call
    /// lives until the client cancels it; closing the send side keeps the subscriptions.
    pub(crate) fn chat(&self, route: &Route, mut input: Streaming<DynamicMessage>) -> MsgStream {
        let (tx, rx) = mpsc::channel::<Result<DynamicMessage, Status>>(256);
        let hub = self.hub.clone();
        let out = route.output.clone();
        tokio::spawn(async move {
            let mut forwarders = Vec::new();
            loop {
                let msg = tokio::select! {
                    m = input.message() => m,
                    _ = tx.closed() => break,
                };
                let msg = match msg {
                    Ok(Some(m)) => m,
                    Ok(None) => break,
                    Err(s) => {
                        let _ = tx.send(Err(s)).await;
                        break;
                    }
                };
                let result = async {
                    let v = to_json(&msg)?;
                    if let Some(s) = v.get("subscribe") {
                        let sub = hub
                            .subscribe(&ctx(), topic_request(s)?)
                            .await
                            .map_err(status)?;
                        let (tx, out) = (tx.clone(), out.clone());
                        forwarders.push(tokio::spawn(async move {
                            let mut items = map_items(sub, out, |item| Some(event_json(&item)));
                            while let Some(m) = items.next().await {
                                if tx.send(m).await.is_err() {
                                    break;
                                }
                            }
                        }));
                    } else if let Some(p) = v.get("publish") {
                        hub.publish(&ctx(), publish_draft(p)?)
                            .await
                            .map_err(status)?;
                    } else {
                        return Err(Status::invalid_argument(
                            "a ChatRequest needs subscribe or publish",
                        ));
                    }
                    Ok::<(), Status>(())
                }
                .await;
                if let Err(s) = result
                    && tx.send(Err(s)).await.is_err()
                {
                    break;
                }
            }
            // Keep delivering until the client goes away.
            tx.closed().await;
            for f in forwarders {
                f.abort();
            }
        });
        Box::pin(ReceiverStream::new(rx))
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

fn change_json(e: &EventRef, shape: impl Fn(&Record) -> Value) -> Option<Value> {
    let p = e.json_payload()?;
    let record = record_from_json(p.get("record")?)?;
    let mut v = json!({
        "type": e.event_type,
        "operation": e.event_type.rsplit('.').next().unwrap_or(""),
        "sequence": e.seq,
        "record": shape(&record),
    });
    if let Some(prev) = p.get("previous").and_then(record_from_json) {
        v["previous"] = shape(&prev);
    }
    Some(v)
}

fn event_json(item: &Item) -> Value {
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    match item {
        Item::Event(d) => {
            let e = &d.event;
            let headers: Map<String, Value> = e
                .headers
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(v.clone())))
                .collect();
            let mut attributes = Map::new();
            e.attrs.to_extensions(&mut attributes);
            let attributes: Map<String, Value> = attributes
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => (k, Value::String(s)),
                    other => (k, Value::String(other.to_string())),
                })
                .collect();
            json!({
                "id": e.id,
                "sequence": e.seq,
                "topic": e.topic.as_str(),
                "type": e.event_type,
                "time": format_time(&e.time),
                "content_type": e.content_type.clone().unwrap_or_default(),
                "payload": b64(&e.payload),
                "headers": headers,
                "attributes": attributes,
            })
        }
        Item::Notice(n) => notice_json(
            n,
            b64(serde_json::to_string(n).unwrap_or_default().as_bytes()),
        ),
    }
}

fn notice_json(n: &Notice, payload_b64: String) -> Value {
    json!({
        "type": n.event_type(),
        "content_type": "application/json",
        "payload": payload_b64,
    })
}

/// The registry's spec from a `WebhookEndpoint` message (server-assigned fields and
/// proto3 empty values dropped).
fn endpoint_spec(v: Value) -> Result<polyport_core::webhook::EndpointSpec, Status> {
    const SPEC: &[&str] = &[
        "url",
        "event_types",
        "topics",
        "headers",
        "enabled",
        "description",
        "rate_limit",
        "retry_schedule",
        "secret",
    ];
    let mut m = match v {
        Value::Object(m) => m,
        _ => return Err(Status::invalid_argument("endpoint is required")),
    };
    m.retain(|k, v| SPEC.contains(&k.as_str()) && *v != json!("") && !v.is_null());
    serde_json::from_value(Value::Object(m))
        .map_err(|e| Status::invalid_argument(format!("invalid endpoint: {e}")))
}

fn topic_request(v: &Value) -> Result<SubscribeRequest, Status> {
    let mut filters = Vec::new();
    for f in v
        .get("filters")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = f.as_str().unwrap_or("");
        filters.push(TopicFilter::new(f).map_err(|e| status(e.into()))?);
    }
    Ok(SubscribeRequest {
        filters,
        since: u64_field(v, "since"),
        epoch: nonempty(str_field(v, "epoch")),
        group: nonempty(str_field(v, "group")),
        strict: true,
        ..SubscribeRequest::default()
    })
}

fn publish_draft(v: &Value) -> Result<EventDraft, Status> {
    let topic = Topic::new(str_field(v, "topic")).map_err(|e| status(HubError::from(e)))?;
    let payload = base64::engine::general_purpose::STANDARD
        .decode(str_field(v, "payload"))
        .map_err(|e| Status::internal(format!("payload: {e}")))?;
    let mut d = EventDraft::new(topic, payload);
    d.content_type = nonempty(str_field(v, "content_type"));
    d.event_type = nonempty(str_field(v, "type"));
    d.headers = v
        .get("headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default();
    if let Some(attrs) = v.get("attributes").and_then(Value::as_object) {
        d.attrs
            .set_named(
                attrs
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("").to_string())),
            )
            .map_err(|e| status(HubError::InvalidRequest(format!("attributes: {e}"))))?;
    }
    d.durability = match v.get("durable").and_then(Value::as_bool) {
        Some(true) => Durability::Durable,
        Some(false) => Durability::Ephemeral,
        None => Durability::Auto,
    };
    Ok(d)
}
