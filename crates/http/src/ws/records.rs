//! `create`, `get`, `update`, `delete`, `list`: record operations, each answered with
//! the record (or page) as REST returns it.

use polyport_core::HubError;
use polyport_core::query::{Filter, ListQuery, parse_sort};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Session, yes};

#[derive(Deserialize)]
pub(super) struct Create {
    collection: String,
    record: Map<String, Value>,
}

#[derive(Deserialize)]
pub(super) struct Get {
    collection: String,
    record_id: String,
}

#[derive(Deserialize)]
pub(super) struct Update {
    collection: String,
    record_id: String,
    record: Map<String, Value>,
    #[serde(default = "yes")]
    merge: bool,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct Delete {
    collection: String,
    record_id: String,
    #[serde(default)]
    version: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct List {
    collection: String,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    sort: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    cursor: Option<String>,
    #[serde(default)]
    count: bool,
}

impl Session {
    pub(super) async fn create(&mut self, op: Create) -> Result<Value, HubError> {
        let mut record = op.record;
        let rid = match record.remove("id") {
            Some(Value::String(s)) => Some(s),
            Some(Value::Number(n)) => Some(n.to_string()),
            _ => None,
        };
        let r = self
            .hub
            .create_record(&self.ctx, &op.collection, rid, record)
            .await?;
        Ok(json!({ "record": r.to_json() }))
    }

    pub(super) async fn get(&mut self, op: Get) -> Result<Value, HubError> {
        let r = self
            .hub
            .get_record(&self.ctx, &op.collection, &op.record_id)
            .await?;
        Ok(json!({ "record": r.to_json() }))
    }

    pub(super) async fn update(&mut self, op: Update) -> Result<Value, HubError> {
        let mut record = op.record;
        for k in ["id", "collection", "created_at", "updated_at", "version"] {
            record.remove(k);
        }
        let (c, rid) = (&op.collection, &op.record_id);
        let r = if op.merge {
            self.hub
                .patch_record(&self.ctx, c, rid, Value::Object(record), op.version)
                .await?
        } else {
            self.hub
                .replace_record(&self.ctx, c, rid, record, op.version)
                .await?
                .0
        };
        Ok(json!({ "record": r.to_json() }))
    }

    pub(super) async fn delete(&mut self, op: Delete) -> Result<Value, HubError> {
        let r = self
            .hub
            .delete_record(&self.ctx, &op.collection, &op.record_id, op.version)
            .await?;
        Ok(json!({ "record": r.to_json() }))
    }

    pub(super) async fn list(&mut self, op: List) -> Result<Value, HubError> {
        let q = ListQuery {
            filter: op
                .filter
                .as_deref()
                .filter(|f| !f.trim().is_empty())
                .map(Filter::parse)
                .transpose()?,
            sort: match op.sort.as_deref().filter(|s| !s.trim().is_empty()) {
                Some(s) => parse_sort(s)?,
                None => Vec::new(),
            },
            limit: op.limit.unwrap_or(50).clamp(1, self.max_page),
            cursor: op.cursor,
            count: op.count,
        };
        let page = self.hub.list_records(&self.ctx, &op.collection, &q).await?;
        let items: Vec<Value> = page.items.iter().map(|r| r.to_json()).collect();
        Ok(json!({ "items": items, "next_cursor": page.next_cursor, "total": page.total }))
    }
}
