//! The typed per-collection services (`polyport.collections.UserService`, …): the
//! generic Records behaviour with each record shaped as its collection's message.

use std::sync::Arc;

use polyport_core::Record;
use polyport_core::event::RenderKey;
use polyport_core::record::format_time;
use polyport_core::schema::{Collection, FieldType};
use prost_reflect::MessageDescriptor;
use serde_json::{Map, Value, json};
use tonic::Status;

use super::records::change_json;
use super::{Handlers, MsgStream, Shape, map_items, nonempty};

use crate::convert::{status, str_field, u64_field};

/// A typed `Watch{Plural}`'s change messages, encoded once per event.
static TYPED_CHANGE: RenderKey = RenderKey::new();

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

impl Handlers {
    pub(super) async fn typed_get(&self, c: &str, v: &Value) -> Result<Value, Status> {
        let coll = self.collection(c)?;
        let r = self
            .hub
            .get_record(&self.ctx, c, str_field(v, "id"))
            .await
            .map_err(status)?;
        Ok(typed_record(&coll, &r))
    }

    pub(super) async fn typed_list(&self, c: &str, v: &Value) -> Result<Value, Status> {
        let coll = self.collection(c)?;
        let q = self.list_query(v)?;
        let page = self
            .hub
            .list_records(&self.ctx, c, &q)
            .await
            .map_err(status)?;
        Ok(json!({
            "records": page.items.iter().map(|r| typed_record(&coll, r)).collect::<Vec<_>>(),
            "next_page_token": page.next_cursor.unwrap_or_default(),
            "total": page.total,
        }))
    }

    pub(super) async fn typed_create(&self, c: &str, v: Value) -> Result<Value, Status> {
        let coll = self.collection(c)?;
        let id = nonempty(str_field(&v, "id"));
        let r = self
            .hub
            .create_record(&self.ctx, c, id, typed_doc(&coll, v))
            .await
            .map_err(status)?;
        Ok(typed_record(&coll, &r))
    }

    pub(super) async fn typed_update(&self, c: &str, v: Value) -> Result<Value, Status> {
        let coll = self.collection(c)?;
        let id = str_field(&v, "id").to_string();
        let expected = u64_field(&v, "expected_version");
        let patch = Value::Object(typed_doc(&coll, v));
        let r = self
            .hub
            .patch_record(&self.ctx, c, &id, patch, expected)
            .await
            .map_err(status)?;
        Ok(typed_record(&coll, &r))
    }

    pub(super) async fn typed_delete(&self, c: &str, v: &Value) -> Result<Value, Status> {
        let coll = self.collection(c)?;
        let r = self
            .hub
            .delete_record(
                &self.ctx,
                c,
                str_field(v, "id"),
                u64_field(v, "expected_version"),
            )
            .await
            .map_err(status)?;
        Ok(typed_record(&coll, &r))
    }

    pub(super) async fn typed_watch(
        &self,
        c: &str,
        v: &Value,
        out: MessageDescriptor,
    ) -> Result<MsgStream, Status> {
        let coll = self.collection(c)?;
        let sub = self.watch(c, v).await?;
        let shape = Shape {
            key: &TYPED_CHANGE,
            id: Arc::as_ptr(&coll) as usize as u64,
        };
        Ok(map_items(
            sub,
            out,
            shape,
            move |e| change_json(e, |r| typed_record(&coll, r)),
            |_| None,
        ))
    }
}
