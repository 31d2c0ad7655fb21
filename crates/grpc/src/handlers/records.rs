//! The generic `polyport.v1.Records` service, and the change stream shared with the
//! typed services' `Watch`.

use polyport_core::event::RenderKey;
use polyport_core::query::Filter;
use polyport_core::record::format_time;
use polyport_core::subscription::record_from_json;
use polyport_core::{Event, Record, RecordSelector, SubscribeRequest};
use prost_reflect::MessageDescriptor;
use serde_json::{Value, json};
use tonic::Status;

use super::{Handlers, MsgStream, Shape, map_items, nonempty};

use crate::convert::{status, str_field, u64_field};

/// `Records.Watch`'s change messages, encoded once per event.
static RECORD_CHANGE: RenderKey = RenderKey::new();

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

/// The `data` field of a create/update request.
fn request_data(v: &Value) -> serde_json::Map<String, Value> {
    v.get("data")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

impl Handlers {
    pub(super) async fn records_get(&self, v: &Value) -> Result<Value, Status> {
        let r = self
            .hub
            .get_record(&self.ctx, str_field(v, "collection"), str_field(v, "id"))
            .await
            .map_err(status)?;
        Ok(generic_record(&r))
    }

    pub(super) async fn records_list(&self, v: &Value) -> Result<Value, Status> {
        let q = self.list_query(v)?;
        let page = self
            .hub
            .list_records(&self.ctx, str_field(v, "collection"), &q)
            .await
            .map_err(status)?;
        Ok(json!({
            "records": page.items.iter().map(generic_record).collect::<Vec<_>>(),
            "next_page_token": page.next_cursor.unwrap_or_default(),
            "total": page.total,
        }))
    }

    pub(super) async fn records_create(&self, v: &Value) -> Result<Value, Status> {
        let data = request_data(v);
        let r = self
            .hub
            .create_record(
                &self.ctx,
                str_field(v, "collection"),
                nonempty(str_field(v, "id")),
                data,
            )
            .await
            .map_err(status)?;
        Ok(generic_record(&r))
    }

    pub(super) async fn records_update(&self, v: &Value) -> Result<Value, Status> {
        let (c, id) = (str_field(v, "collection"), str_field(v, "id"));
        let data = request_data(v);
        let expected = u64_field(v, "expected_version");
        let r = if v.get("replace").and_then(Value::as_bool).unwrap_or(false) {
            self.hub
                .replace_record(&self.ctx, c, id, data, expected)
                .await
                .map(|x| x.0)
        } else {
            self.hub
                .patch_record(&self.ctx, c, id, Value::Object(data), expected)
                .await
        }
        .map_err(status)?;
        Ok(generic_record(&r))
    }

    pub(super) async fn records_delete(&self, v: &Value) -> Result<Value, Status> {
        let r = self
            .hub
            .delete_record(
                &self.ctx,
                str_field(v, "collection"),
                str_field(v, "id"),
                u64_field(v, "expected_version"),
            )
            .await
            .map_err(status)?;
        Ok(generic_record(&r))
    }

    pub(super) async fn records_watch(
        &self,
        v: &Value,
        out: MessageDescriptor,
    ) -> Result<MsgStream, Status> {
        let sub = self.watch(str_field(v, "collection"), v).await?;
        let shape = Shape {
            key: &RECORD_CHANGE,
            id: 0,
        };
        Ok(map_items(
            sub,
            out,
            shape,
            |e| change_json(e, generic_record),
            |_| None,
        ))
    }

    pub(super) async fn watch(
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
        self.hub.subscribe(&self.ctx, req).await.map_err(status)
    }
}

pub(super) fn change_json(e: &Event, shape: impl Fn(&Record) -> Value) -> Option<Value> {
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
