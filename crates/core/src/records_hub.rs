//! The Hub's collection and record verbs: schemas, CRUD, lists and relation expansion.

use std::sync::Arc;

use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::auth::{Action, AuthContext};
use crate::engine::{CollectionMap, WriteCommand, WriteOutcome};
use crate::error::{HubError, HubResult};
use crate::hub::{ExpectedVersion, Hub, unexpected};
use crate::query::{ListQuery, Page};
use crate::record::{Record, validate_id};
use crate::rules::RuleKind;
use crate::schema::{Collection, CollectionSpec};

/// What a change under rules is checked against.
enum Pin {
    Free,
    Absent,
    Current(Record),
}

/// See [`Hub::collection_changes`].
pub struct CollectionChanges {
    hub: Hub,
    watch: watch::Receiver<u64>,
}

impl CollectionChanges {
    /// The next snapshot of the collections, after a change; `None` once the hub stops.
    pub async fn next(&mut self) -> Option<Arc<CollectionMap>> {
        let shutdown = self.hub.shutdown_token();
        tokio::select! {
            r = self.watch.changed() => r.ok()?,
            _ = shutdown.cancelled() => return None,
        }
        Some(self.hub.inner.store.collections())
    }
}

impl Hub {
    // ----- collections -----

    /// All collections.
    pub fn collections(&self, ctx: &AuthContext) -> HubResult<Arc<CollectionMap>> {
        self.authorize(ctx, Action::Read("*"))?;
        Ok(self.inner.store.collections())
    }

    /// One collection.
    pub fn collection(&self, ctx: &AuthContext, name: &str) -> HubResult<Arc<Collection>> {
        self.authorize(ctx, Action::Read(name))?;
        self.inner
            .store
            .collections()
            .get(name)
            .cloned()
            .ok_or_else(|| HubError::CollectionNotFound(name.to_string()))
    }

    /// Ticks whenever a collection definition changes (for generated schemas).
    pub fn watch_collections(&self) -> watch::Receiver<u64> {
        self.inner.collections_gen.subscribe()
    }

    /// The collections after each change, for a face that regenerates a schema from
    /// them: `next()` waits for a change and yields the new snapshot, or `None` once the
    /// hub shuts down.
    pub fn collection_changes(&self) -> CollectionChanges {
        CollectionChanges {
            hub: self.clone(),
            watch: self.watch_collections(),
        }
    }

    fn bump_collections(&self) {
        self.inner.collections_gen.send_modify(|g| *g += 1);
    }

    /// Creates a collection.
    pub async fn create_collection(
        &self,
        ctx: &AuthContext,
        spec: CollectionSpec,
    ) -> HubResult<Arc<Collection>> {
        self.define_collection(
            ctx,
            spec,
            WriteCommand::CreateCollection,
            "create_collection",
        )
        .await
    }

    /// Replaces a collection's definition.
    pub async fn replace_collection(
        &self,
        ctx: &AuthContext,
        spec: CollectionSpec,
    ) -> HubResult<Arc<Collection>> {
        self.define_collection(
            ctx,
            spec,
            WriteCommand::ReplaceCollection,
            "replace_collection",
        )
        .await
    }

    async fn define_collection(
        &self,
        ctx: &AuthContext,
        spec: CollectionSpec,
        cmd: fn(CollectionSpec) -> WriteCommand,
        op: &'static str,
    ) -> HubResult<Arc<Collection>> {
        self.authorize(ctx, Action::Admin)?;
        spec.check().map_err(HubError::Validation)?;
        let name = spec.name.clone();
        let out = self.write(cmd(spec)).await?;
        self.bump_collections();
        self.audit_admin(ctx, op, &name);
        expect_collection(out)
    }

    /// Deletes a collection and all its records (no change events are emitted per record).
    pub async fn delete_collection(&self, ctx: &AuthContext, name: &str) -> HubResult<()> {
        self.authorize(ctx, Action::Admin)?;
        self.write(WriteCommand::DeleteCollection(name.to_string()))
            .await?;
        self.bump_collections();
        self.audit_admin(ctx, "delete_collection", name);
        Ok(())
    }

    // ----- records -----

    /// Creates a record.
    pub async fn create_record(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: Option<String>,
        data: Map<String, Value>,
    ) -> HubResult<Record> {
        self.authorize(ctx, Action::Write(collection))?;
        if let Some(id) = &id {
            validate_id(id)?;
        }
        self.check_create(ctx, collection, id.as_deref(), &data)?;
        let auto_create = self.check_auto_create(collection)?;
        let out = self
            .write(WriteCommand::CreateRecord {
                collection: collection.to_string(),
                id,
                data,
                auto_create,
                origin: ctx.origin,
            })
            .await?;
        self.after_record_write(auto_create);
        expect_record(out).map(|(r, _)| r)
    }

    /// Replaces a record's document (creating it when absent and no version is expected).
    /// Returns the record and whether it was created.
    pub async fn replace_record(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: &str,
        data: Map<String, Value>,
        expected_version: ExpectedVersion,
    ) -> HubResult<(Record, bool)> {
        self.authorize(ctx, Action::Write(collection))?;
        validate_id(id)?;
        let auto_create = self.check_auto_create(collection)?;
        let body = Value::Object(data.clone());
        let data = &data;
        let on_absent = || self.check_create(ctx, collection, Some(id), data);
        let out = self
            .ruled_write(
                ctx,
                collection,
                id,
                expected_version,
                RuleKind::Update,
                Some(&body),
                on_absent,
                move |v| {
                    self.write(WriteCommand::ReplaceRecord {
                        collection: collection.to_string(),
                        id: id.to_string(),
                        data: data.clone(),
                        expected_version: v,
                        auto_create,
                        origin: ctx.origin,
                    })
                },
            )
            .await;
        self.after_record_write(auto_create);
        expect_record(out?)
    }

    /// Applies a JSON merge patch to a record.
    pub async fn patch_record(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: &str,
        patch: Value,
        expected_version: ExpectedVersion,
    ) -> HubResult<Record> {
        self.authorize(ctx, Action::Write(collection))?;
        validate_id(id)?;
        let p = &patch;
        let out = self
            .ruled_write(
                ctx,
                collection,
                id,
                expected_version,
                RuleKind::Update,
                Some(p),
                || Ok(()),
                move |v| {
                    self.write(WriteCommand::PatchRecord {
                        collection: collection.to_string(),
                        id: id.to_string(),
                        patch: p.clone(),
                        expected_version: v,
                        origin: ctx.origin,
                    })
                },
            )
            .await?;
        expect_record(out).map(|(r, _)| r)
    }

    /// Deletes a record, returning it as it was.
    pub async fn delete_record(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: &str,
        expected_version: ExpectedVersion,
    ) -> HubResult<Record> {
        self.authorize(ctx, Action::Write(collection))?;
        validate_id(id)?;
        let out = self
            .ruled_write(
                ctx,
                collection,
                id,
                expected_version,
                RuleKind::Delete,
                None,
                || Ok(()),
                move |v| {
                    self.write(WriteCommand::DeleteRecord {
                        collection: collection.to_string(),
                        id: id.to_string(),
                        expected_version: v,
                        origin: ctx.origin,
                    })
                },
            )
            .await?;
        match out {
            WriteOutcome::Deleted { record, .. } => Ok(record),
            other => Err(unexpected(other)),
        }
    }

    /// One record.
    pub async fn get_record(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: &str,
    ) -> HubResult<Arc<Record>> {
        self.authorize(ctx, Action::Read(collection))?;
        self.require_collection(collection)?;
        validate_id(id)?;
        let view = self.rule(ctx, collection, RuleKind::View, None)?;
        self.inner
            .store
            .get_record(collection, id)
            .await?
            .filter(|r| view.as_ref().is_none_or(|v| v.admits(r)))
            .ok_or_else(|| HubError::RecordNotFound {
                collection: collection.to_string(),
                id: id.to_string(),
            })
    }

    /// A page of records.
    pub async fn list_records(
        &self,
        ctx: &AuthContext,
        collection: &str,
        query: &ListQuery,
    ) -> HubResult<Page> {
        self.authorize(ctx, Action::Read(collection))?;
        self.require_collection(collection)?;
        let Some(rule) = self.rule(ctx, collection, RuleKind::List, None)? else {
            return self.inner.store.list_records(collection, query).await;
        };
        match rule.narrow(query.filter.clone()) {
            // A list never reveals a record the rule hides, not even in its count.
            None => Ok(Page {
                items: Vec::new(),
                cursors: Vec::new(),
                next_cursor: None,
                total: query.count.then_some(0),
            }),
            Some(filter) => {
                let q = ListQuery {
                    filter,
                    ..query.clone()
                };
                self.inner.store.list_records(collection, &q).await
            }
        }
    }

    fn check_create(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: Option<&str>,
        data: &Map<String, Value>,
    ) -> HubResult<()> {
        let body = Value::Object(data.clone());
        let Some(rule) = self.rule(ctx, collection, RuleKind::Create, Some(&body))? else {
            return Ok(());
        };
        let now = chrono::Utc::now();
        let new = Record {
            collection: collection.to_string(),
            id: id.unwrap_or_default().to_string(),
            created_at: now,
            updated_at: now,
            version: 1,
            data: data.clone(),
        };
        match rule.admits(&new) {
            true => Ok(()),
            false => Err(HubError::Forbidden(format!(
                "the create rule of '{collection}' does not admit this record"
            ))),
        }
    }

    /// A change to one record under its collection's rules: checks `kind` (or, when
    /// the record is absent, `on_absent`) and writes pinned to the version it checked,
    /// checking again when the record changed in between.
    #[allow(clippy::too_many_arguments)]
    async fn ruled_write<W, Fut>(
        &self,
        ctx: &AuthContext,
        collection: &str,
        id: &str,
        expected: ExpectedVersion,
        kind: RuleKind,
        body: Option<&Value>,
        on_absent: impl Fn() -> HubResult<()>,
        write: W,
    ) -> HubResult<WriteOutcome>
    where
        W: Fn(ExpectedVersion) -> Fut,
        Fut: std::future::Future<Output = HubResult<WriteOutcome>>,
    {
        let mut attempts = 0;
        loop {
            let pinned = match self.pin_for_rules(ctx, collection, id).await? {
                Pin::Free => None,
                Pin::Absent => {
                    on_absent()?;
                    None
                }
                Pin::Current(cur) => {
                    self.check_change(ctx, &cur, kind, body)?;
                    Some(cur.version)
                }
            };
            let out = write(expected.or(pinned)).await;
            if matches!(out, Err(HubError::VersionMismatch { .. }))
                && expected.is_none()
                && pinned.is_some()
                && attempts < 3
            {
                attempts += 1;
                continue;
            }
            return out;
        }
    }

    /// For a change under rules: the record as it is now (`Absent` when there is
    /// none), or `Free` when no rule applies and nothing need be read first.
    async fn pin_for_rules(&self, ctx: &AuthContext, collection: &str, id: &str) -> HubResult<Pin> {
        let ruled = !ctx.is_admin()
            && self
                .inner
                .store
                .collections()
                .get(collection)
                .is_some_and(|c| c.spec.rules.is_some());
        if !ruled {
            return Ok(Pin::Free);
        }
        Ok(match self.inner.store.get_record(collection, id).await? {
            Some(r) => Pin::Current(Arc::unwrap_or_clone(r)),
            None => Pin::Absent,
        })
    }

    /// Resolves relation fields of `records` named in `fields`: returns, per record, a
    /// map from field name to the related record(s). One store query per field, whatever
    /// the page size (no N+1).
    pub async fn expand(
        &self,
        ctx: &AuthContext,
        collection: &str,
        records: &[Record],
        fields: &[String],
    ) -> HubResult<Vec<Map<String, Value>>> {
        let coll = self.collection(ctx, collection)?;
        let mut out = vec![Map::new(); records.len()];
        for field in fields {
            let def = coll.field(field).ok_or_else(|| {
                HubError::InvalidRequest(format!(
                    "cannot expand '{field}': not a field of '{collection}'"
                ))
            })?;
            let target = def.ty.relation_target().ok_or_else(|| {
                HubError::InvalidRequest(format!("cannot expand '{field}': not a relation"))
            })?;
            self.authorize(ctx, Action::Read(target))?;
            let is_array = matches!(def.ty, crate::schema::FieldType::Array { .. });
            let mut ids: Vec<String> = records
                .iter()
                .filter_map(|r| r.data.get(field))
                .flat_map(|v| match v {
                    Value::Array(a) => a.iter().filter_map(relation_id).collect(),
                    other => relation_id(other).into_iter().collect::<Vec<_>>(),
                })
                .collect();
            ids.sort();
            ids.dedup();
            let mut related = self.inner.store.get_records(target, &ids).await?;
            // An expanded relation shows only what the caller could read directly.
            match self.rule(ctx, target, RuleKind::View, None) {
                Ok(None) => {}
                Ok(Some(view)) => related.retain(|r| view.admits(r)),
                Err(_) => related.clear(),
            }
            let by_id: std::collections::HashMap<&str, Value> = related
                .iter()
                .map(|r| (r.id.as_str(), r.to_json()))
                .collect();
            for (i, r) in records.iter().enumerate() {
                let Some(v) = r.data.get(field) else { continue };
                let expanded = if is_array {
                    Value::Array(
                        v.as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|x| relation_id(x).and_then(|id| by_id.get(id.as_str())))
                            .cloned()
                            .collect(),
                    )
                } else {
                    match relation_id(v).and_then(|id| by_id.get(id.as_str())) {
                        Some(x) => x.clone(),
                        None => continue,
                    }
                };
                out[i].insert(field.clone(), expanded);
            }
        }
        Ok(out)
    }

    fn require_collection(&self, name: &str) -> HubResult<()> {
        if self.inner.store.collections().contains_key(name) {
            Ok(())
        } else {
            Err(HubError::CollectionNotFound(name.to_string()))
        }
    }

    /// Returns whether this write may create the collection.
    fn check_auto_create(&self, collection: &str) -> HubResult<bool> {
        if self.inner.store.collections().contains_key(collection) {
            return Ok(false);
        }
        if !self.inner.config.auto_create_collections {
            return Err(HubError::AutoCreateDisabled(collection.to_string()));
        }
        let max = self.inner.config.max_auto_collections;
        if self.inner.store.collections().len() >= max {
            crate::admission::limit_hit("limits.max_auto_collections");
            return Err(HubError::LimitReached(format!(
                "there are {max} collections, the most a write creates by itself; create '{collection}' explicitly (POST /api/collections) or raise [limits] max_auto_collections"
            )));
        }
        if !crate::schema::is_identifier(collection, 64) {
            return Err(HubError::InvalidRequest(format!(
                "invalid collection name '{collection}': start with a letter, then letters, digits or _ (at most 64)"
            )));
        }
        Ok(true)
    }

    fn after_record_write(&self, maybe_created_collection: bool) {
        if maybe_created_collection {
            self.bump_collections();
        }
    }
}

fn relation_id(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn expect_collection(out: WriteOutcome) -> HubResult<Arc<Collection>> {
    match out {
        WriteOutcome::Collection(c) => Ok(c),
        other => Err(unexpected(other)),
    }
}

fn expect_record(out: WriteOutcome) -> HubResult<(Record, bool)> {
    match out {
        WriteOutcome::Record {
            record, created, ..
        } => Ok((record, created)),
        other => Err(unexpected(other)),
    }
}
