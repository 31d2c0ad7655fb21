//! Collection definitions: create, replace and delete, the auto-create path of record
//! writes, and the unique indexes that enforce `unique` fields.

use std::sync::Arc;

use super::{State, now};
use crate::tx::Tx;
use polyport_core::engine::WriteOutcome;
use polyport_core::schema::{Collection, CollectionSpec, FieldError, Rule};
use polyport_core::{HubError, HubResult};

pub(super) fn create(
    tx: &mut dyn Tx,
    st: &mut State,
    spec: CollectionSpec,
) -> HubResult<WriteOutcome> {
    if st.collections.contains_key(&spec.name) {
        return Err(HubError::AlreadyExists(format!(
            "collection '{}'",
            spec.name
        )));
    }
    put_collection(tx, st, spec, None)
}

pub(super) fn replace(
    tx: &mut dyn Tx,
    st: &mut State,
    spec: CollectionSpec,
) -> HubResult<WriteOutcome> {
    let existing = st
        .collections
        .get(&spec.name)
        .cloned()
        .ok_or_else(|| HubError::CollectionNotFound(spec.name.clone()))?;
    put_collection(tx, st, spec, Some(&existing))
}

/// Deletes a collection with its records and unique indexes.
pub(super) fn delete(tx: &mut dyn Tx, st: &mut State, name: String) -> HubResult<WriteOutcome> {
    if !st.collections.contains_key(&name) {
        return Err(HubError::CollectionNotFound(name));
    }
    tx.delete_collection(&name)?;
    st.collections.remove(&name);
    Ok(WriteOutcome::Done)
}

pub(super) fn ensure_collection(
    tx: &mut dyn Tx,
    st: &mut State,
    name: &str,
    auto_create: bool,
) -> HubResult<Arc<Collection>> {
    if let Some(c) = st.collections.get(name) {
        return Ok(c.clone());
    }
    if !auto_create {
        return Err(HubError::CollectionNotFound(name.to_string()));
    }
    let spec = CollectionSpec {
        name: name.to_string(),
        fields: None,
        additional_fields: false,
        description: None,
        rules: None,
    };
    spec.check().map_err(HubError::Validation)?;
    match put_collection(tx, st, spec, None)? {
        WriteOutcome::Collection(c) => Ok(c),
        _ => Err(HubError::Storage(
            "collection create returned nothing".into(),
        )),
    }
}

fn put_collection(
    tx: &mut dyn Tx,
    st: &mut State,
    spec: CollectionSpec,
    existing: Option<&Collection>,
) -> HubResult<WriteOutcome> {
    let mut errors = Vec::new();
    for (i, f) in spec.fields.iter().flatten().enumerate() {
        if let Some(target) = f.ty.relation_target()
            && target != spec.name
            && !st.collections.contains_key(target)
        {
            errors.push(FieldError::new(
                &format!("fields[{i}].collection"),
                Rule::Relation,
                format!("refers to collection '{target}', which does not exist"),
            ));
        }
    }
    if !errors.is_empty() {
        return Err(HubError::Validation(errors));
    }
    let now = now();
    let created_at = existing.map(|c| c.created_at).unwrap_or(now);
    let coll = Arc::new(Collection {
        spec,
        created_at,
        updated_at: now,
    });
    tx.put_collection(&coll)?;
    st.collections.insert(coll.spec.name.clone(), coll.clone());
    Ok(WriteOutcome::Collection(coll))
}
